//! Weighing a rank's losses by its share of a global batch, so that a gang that runs short
//! (an elastic gang) still trains what the whole gang would.

use tch::Tensor;

use super::loader;

/// The weight of a rank's mean loss over its share of a global batch, share × world /
/// global, so that the gang's average of its ranks' gradients is the global mean's.
pub(crate) struct ShareWeight {
    pub rank: usize,
    pub world: usize,
    pub full_world: usize,
    /// Labelled and unlabelled samples per rank of the whole gang.
    pub batch: usize,
    pub unlabelled_batch: usize,
}

impl ShareWeight {
    pub fn labelled(&self, loss: Tensor) -> Tensor {
        self.weigh(loss, self.batch)
    }

    pub fn unlabelled(&self, loss: Tensor) -> Tensor {
        self.weigh(loss, self.unlabelled_batch)
    }

    fn weigh(&self, loss: Tensor, per_rank: usize) -> Tensor {
        if self.world == self.full_world || per_rank == 0 {
            return loss; // equal shares: nothing to weigh (and no extra operation)
        }
        let global = per_rank * self.full_world;
        let taken = loader::share(global, self.rank, self.world).len();
        loss * ((taken * self.world) as f64 / global as f64)
    }
}
