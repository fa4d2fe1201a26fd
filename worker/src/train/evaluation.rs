//! Evaluating a model on a split: each rank of a gang predicts its share of the samples and
//! the confusion matrices are summed, so every rank gets the whole split's metrics.

use feral_common::dataset::ShardData;
use feral_common::metrics::{ConfusionMatrix, MetricsSummary};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::batches::to_tensors;
use super::model::by_name;
use crate::collective::{self, Collective, CollectiveError};
use crate::error::TaskError;

/// [`evaluate`] with rank 0's EMA weights and batch-norm statistics on every rank: each
/// rank's running statistics come from its own slices of the batches, and rank 0's model is
/// the one saved, so that is the one every rank evaluates (and extracts features with).
pub(crate) fn evaluate_model(
    ema_vs: &nn::VarStore,
    net: &dyn ModuleT,
    data: &ShardData,
    classes: usize,
    device: Device,
    collective: &mut dyn Collective,
) -> Result<MetricsSummary, TaskError> {
    if collective.world_size() > 1 {
        collective::broadcast_from_rank0(collective, &mut by_name(ema_vs))?;
    }
    evaluate(net, data, classes, device, collective)
}

/// Accuracy, macro-F1 and the rest on `data`, in evaluation mode. The ranks of a gang
/// each predict every `world`-th sample and add their confusion matrices, so every rank
/// gets the metrics of the whole split for 1/world of the work.
pub fn evaluate(net: &dyn ModuleT, data: &ShardData, classes: usize, device: Device, collective: &mut dyn Collective) -> Result<MetricsSummary, TaskError> {
    let _guard = tch::no_grad_guard();
    let mut confusion = ConfusionMatrix::new(classes);
    let (rank, world) = (collective.rank(), collective.world_size());
    let mine: Vec<usize> = (rank..data.len()).step_by(world).collect();
    for chunk in mine.chunks(256) {
        let (images, targets) = to_tensors(data, chunk, &data.labels, device, None);
        let predicted = net.forward_t(&images, false).argmax(-1, false).to_device(Device::Cpu);
        let predicted: Vec<i64> = Vec::try_from(&predicted)?;
        let truth: Vec<i64> = Vec::try_from(&targets.to_device(Device::Cpu))?;
        for (t, p) in truth.iter().zip(&predicted) {
            confusion.record(*t, *p);
        }
    }
    Ok(collective_confusion(confusion, collective)?.summary())
}

/// The sum of every rank's confusion matrix (each rank counted its own samples).
pub(crate) fn collective_confusion(confusion: ConfusionMatrix, collective: &mut dyn Collective) -> Result<ConfusionMatrix, TaskError> {
    if collective.world_size() == 1 {
        return Ok(confusion);
    }
    let counts: Vec<i64> = confusion.counts().iter().map(|&c| c as i64).collect();
    let mut total = Tensor::from_slice(&counts);
    collective.all_reduce_sum(&mut total)?;
    let summed: Vec<i64> = Vec::try_from(&total)?;
    ConfusionMatrix::from_counts(summed.into_iter().map(|c| c.max(0) as u64).collect())
        .ok_or_else(|| TaskError::Collective(CollectiveError::Mismatch("confusion matrix is not square".into())))
}
