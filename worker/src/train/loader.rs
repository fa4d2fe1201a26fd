//! The batch loader: threads that sample, augment and convert batches into ready CPU
//! tensors ahead of the training step, through bounded channels, so that data work
//! overlaps with forward and backward passes. The batch at a [`Cursor`] (epoch, step)
//! depends only on the seed, round, epoch, step, rank and world size, never on the batches
//! before it: a loader started at any cursor yields what a loader started earlier yields
//! from there on (a resumed epoch trains on the same batches), and any number of loader
//! threads (zero: each batch made on the caller's thread when asked) give the same
//! sequence. Each rank draws the same global batch of `batch × full_world` indices (the
//! gang's full size, even while an elastic gang runs short) and keeps its [`share`] of
//! it; a sample's augmentation is seeded by the step and its place in the global batch, so
//! ranks together see exactly what one rank sees on the whole global batch, whatever
//! their number.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use feral_common::dataset::ShardData;
use feral_common::spec::Sampling;
use tch::{Kind, Tensor};

use super::batches::{channels_last_images, normalised_images, Sampler, View};
use super::seeds::mix;
use super::strong::StrongAugmentation;
pub use super::weak::Augmentation;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Which batch: 1-based epoch and 0-based step within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub epoch: u32,
    pub step: usize,
}

impl Cursor {
    pub fn new(epoch: u32, step: usize) -> Self {
        Self { epoch, step }
    }

    /// The cursor `count` steps after this one, with `steps_per_epoch` steps per epoch.
    fn advanced(self, count: usize, steps_per_epoch: usize) -> Self {
        let step = self.step + count;
        Self { epoch: self.epoch + (step / steps_per_epoch) as u32, step: step % steps_per_epoch }
    }
}

/// What the loader produces and how.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// The job's training seed; with the round and epoch it seeds every draw.
    pub seed: u64,
    pub round: u32,
    pub rank: usize,
    /// The ranks training now.
    pub world: usize,
    /// The ranks of the whole gang (at least `world`): global batches are this many times
    /// the per-rank sizes below.
    pub full_world: usize,
    /// Labelled samples per rank and step.
    pub batch: usize,
    /// Pseudo-labelled samples per rank and step (0: none).
    pub pseudo_batch: usize,
    pub steps_per_epoch: usize,
    /// The last epoch (1-based, inclusive); the loader ends after its last step.
    pub last_epoch: u32,
    pub classes: usize,
    pub sampling: Sampling,
    /// Sampling weight per class of the labelled data; none: as `sampling` says.
    pub class_weights: Option<Vec<f64>>,
    /// The weak view; none: images as they are.
    pub augmentation: Option<Augmentation>,
    /// The strong view (on top of the weak one) of the unlabelled pool's images.
    pub strong: Option<StrongAugmentation>,
    /// Labelled images get the strong view too.
    pub strong_labelled: bool,
    /// Unlabelled pool samples per rank and step, each in a weak and a strong view (0: none).
    pub pool_batch: usize,
    /// Threads that make batches (1 is plenty for small images); 0 makes each batch on
    /// the caller's thread when it is asked for, which costs less where the training step
    /// already keeps every core busy.
    pub threads: usize,
    /// Ready batches held ahead of the training step, over all threads.
    pub depth: usize,
}

impl LoaderConfig {
    pub const DEFAULT_THREADS: usize = 1;
    pub const DEFAULT_DEPTH: usize = 4;

    /// This rank's share of a global batch of `global` samples.
    fn share_of(&self, global: usize) -> std::ops::Range<usize> {
        share(global, self.rank, self.world)
    }
}

/// Rank `rank`'s contiguous share of `global` samples split over `world` ranks: the first
/// `global mod world` ranks take one more than the others. With `world` dividing `global`
/// every rank takes `global / world`, the slice `[rank·n, (rank+1)·n)`.
pub fn share(global: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let (each, extra) = (global / world.max(1), global % world.max(1));
    let start = rank * each + rank.min(extra);
    start..start + each + usize::from(rank < extra)
}

/// The selected pseudo-labelled samples and their confidences.
#[derive(Clone, Debug)]
pub struct PseudoSource {
    pub data: Arc<ShardData>,
    pub confidences: Arc<Vec<f32>>,
}

/// Samples of the unlabelled pool, for online consistency: the weak view the EMA model
/// labels and the strong view the student learns that label on.
#[derive(Debug)]
pub struct PoolBatch {
    pub indices: Vec<usize>,
    pub weak: Tensor,
    pub strong: Tensor,
    /// The hidden true labels where the dataset keeps them (-1: unknown), for audits only.
    pub hidden_labels: Vec<i64>,
}

/// One rank's batch for one step, on the CPU.
#[derive(Debug)]
pub struct Batch {
    pub cursor: Cursor,
    /// This rank's labelled samples (indices into the labelled data).
    pub indices: Vec<usize>,
    /// `[batch, C, H, W]` floats, `pixels / 127.5 − 1`, channels-last in memory.
    pub images: Tensor,
    /// `[batch]` i64 labels.
    pub labels: Tensor,
    pub pseudo: Option<PseudoBatch>,
    pub pool: Option<PoolBatch>,
}

/// The pseudo-labelled part of a step.
#[derive(Debug)]
pub struct PseudoBatch {
    pub indices: Vec<usize>,
    pub images: Tensor,
    pub labels: Tensor,
    /// `[pseudo_batch]` f32 confidences, one per sample.
    pub confidences: Tensor,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("loader setting {name} is invalid: {problem}")]
    Config { name: &'static str, problem: String },
    #[error("the labelled data has no sample of any class that can be drawn")]
    NothingToDraw,
    #[error("cannot start a loader thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot build a batch tensor: {0}")]
    Torch(#[from] tch::TchError),
    #[error("a loader thread ended before its last batch")]
    ThreadEnded,
    #[error("no batch after epoch {last_epoch}: the loader is exhausted")]
    Exhausted { last_epoch: u32 },
}

/// Everything a loader thread needs to make any batch.
struct Plan {
    config: LoaderConfig,
    labelled: Arc<ShardData>,
    sampler: Sampler,
    pseudo: Option<(PseudoSource, Sampler)>,
    pool: Option<Arc<ShardData>>,
    /// Batches made and not yet taken (in a channel, or made and waiting to enter one).
    ready: AtomicUsize,
}

impl Plan {
    /// The batch at `cursor`: a pure function of the plan and the cursor.
    fn batch(&self, cursor: Cursor) -> Result<Batch, LoaderError> {
        let config = &self.config;
        let epoch_seed = config.seed ^ (u64::from(config.round) << 32) ^ u64::from(cursor.epoch);
        let global_step = (cursor.epoch as usize - 1) * config.steps_per_epoch + cursor.step;
        let step_seed = mix(epoch_seed, global_step as u64);
        let augmentation = config.augmentation.as_ref();
        let strong = config.strong.as_ref();
        let view = |weak, strong, seed, offset| Some(View { weak, strong, seed, offset });

        let global = self.sampler.draw(config.batch * config.full_world, mix(step_seed, 2));
        let mine = config.share_of(global.len());
        let offset = mine.start;
        let indices = global.get(mine).ok_or(LoaderError::NothingToDraw)?.to_vec();
        let labelled_strong = strong.filter(|_| config.strong_labelled);
        let floats = normalised_images(&self.labelled, &indices, augmentation.and_then(|a| view(a, labelled_strong, step_seed, offset)));
        let (images, labels) = tensors(&self.labelled, &floats, &indices)?;

        let pseudo_batch = config.pseudo_batch;
        let pseudo = match &self.pseudo {
            Some((source, sampler)) if pseudo_batch > 0 => {
                let global = sampler.draw(pseudo_batch * config.full_world, mix(step_seed, 3));
                let mine = config.share_of(global.len());
                let offset = mine.start;
                match global.get(mine) {
                    Some(chosen) => {
                        let chosen = chosen.to_vec();
                        let aug = augmentation.and_then(|a| view(a, None, mix(step_seed, 1), offset));
                        let floats = normalised_images(&source.data, &chosen, aug);
                        let (images, labels) = tensors(&source.data, &floats, &chosen)?;
                        let confidences: Vec<f32> = chosen.iter().map(|&i| source.confidences.get(i).copied().unwrap_or(0.0)).collect();
                        let confidences = Tensor::f_from_slice(&confidences)?.f_to_kind(Kind::Float)?;
                        Some(PseudoBatch { indices: chosen, images, labels, confidences })
                    }
                    None => None, // no pseudo-label that can be drawn
                }
            }
            _ => None,
        };
        let pool = match &self.pool {
            Some(pool) if config.pool_batch > 0 && !pool.is_empty() => Some(self.pool_batch(pool, step_seed)?),
            _ => None,
        };
        Ok(Batch { cursor, indices, images, labels, pseudo, pool })
    }

    /// This rank's slice of the step's global draw from the unlabelled pool (uniform, with
    /// replacement), in a weak view and in a strong view drawn independently of it (a weak
    /// view of its own, then the strong ops), as FixMatch draws its two views.
    fn pool_batch(&self, pool: &ShardData, step_seed: u64) -> Result<PoolBatch, LoaderError> {
        let config = &self.config;
        let mut rng = SmallRng::seed_from_u64(mix(step_seed, 4));
        let global: Vec<usize> = (0..config.pool_batch * config.full_world).map(|_| rng.random_range(0..pool.len())).collect();
        let mine = config.share_of(global.len());
        let (offset, size) = (mine.start, mine.len());
        let indices = global[mine].to_vec();
        let weak_settings = config.augmentation.unwrap_or(Augmentation { flip: false, pad: 0, max_rotation_degrees: 0.0, brightness: 0.0, contrast: 0.0 });
        let seed = mix(step_seed, 5);
        let weak = normalised_images(pool, &indices, Some(View { weak: &weak_settings, strong: None, seed, offset }));
        let strong = normalised_images(pool, &indices, Some(View { weak: &weak_settings, strong: config.strong.as_ref(), seed: mix(step_seed, 6), offset }));
        let hidden_labels = indices.iter().map(|&i| pool.hidden_labels.as_ref().and_then(|h| h.get(i)).copied().unwrap_or(-1)).collect();
        Ok(PoolBatch { weak: channels_last_images(&weak, size, pool.shape)?, strong: channels_last_images(&strong, size, pool.shape)?, indices, hidden_labels })
    }
}

/// `floats` as `[N, C, H, W]` and the labels of `indices` in `data`.
fn tensors(data: &ShardData, floats: &[f32], indices: &[usize]) -> Result<(Tensor, Tensor), LoaderError> {
    let images = channels_last_images(floats, indices.len(), data.shape)?;
    let labels: Vec<i64> = indices.iter().map(|&i| data.labels[i]).collect();
    Ok((images, Tensor::f_from_slice(&labels)?))
}

type Channel = Receiver<Result<Batch, LoaderError>>;

/// Batches from `start` to the end of `last_epoch`, made ahead by `threads` threads. Thread
/// `t` makes every `threads`-th batch into a channel of its own, and the batches are read
/// round-robin, so they come in cursor order. Dropping the loader stops its threads.
pub struct Loader {
    plan: Arc<Plan>,
    channels: Vec<Channel>,
    threads: Vec<JoinHandle<()>>,
    /// The next batch's cursor.
    cursor: Cursor,
    /// Batches handed out so far.
    taken: usize,
    steps_per_epoch: usize,
    last_epoch: u32,
}

impl Loader {
    /// Starts the threads at `start`. `labelled` are the labelled data (samples labelled
    /// -1 are never drawn); `pseudo` the selected pseudo-labels, if any; `pool` the
    /// unlabelled pool for online consistency, if any.
    pub fn start(
        config: LoaderConfig,
        labelled: Arc<ShardData>,
        pseudo: Option<PseudoSource>,
        pool: Option<Arc<ShardData>>,
        start: Cursor,
    ) -> Result<Self, LoaderError> {
        let invalid = |name, problem: &str| Err(LoaderError::Config { name, problem: problem.to_owned() });
        if config.batch == 0 || config.steps_per_epoch == 0 || config.world == 0 {
            return invalid("batch, steps_per_epoch, world", "must all be at least 1");
        }
        if config.rank >= config.world {
            return invalid("rank", "must be below the world size");
        }
        if config.full_world < config.world {
            return invalid("full_world", "must be at least the world size");
        }
        if config.threads > 16 {
            return invalid("threads", "must be at most 16");
        }
        if start.epoch == 0 || start.step >= config.steps_per_epoch {
            return invalid("start", "epochs count from 1 and steps stay below steps_per_epoch");
        }
        let weights = config.class_weights.as_deref().filter(|w| w.len() == config.classes);
        let sampler = Sampler::new(&labelled.labels, config.classes, config.sampling, weights, config.seed);
        if sampler.draw(1, 0).is_empty() {
            return Err(LoaderError::NothingToDraw);
        }
        let pseudo = pseudo.map(|source| {
            let sampler = Sampler::new(&source.data.labels, config.classes, Sampling::Natural, None, config.seed);
            (source, sampler)
        });
        let (threads, depth, steps_per_epoch, last_epoch) = (config.threads, config.depth, config.steps_per_epoch, config.last_epoch);
        let plan = Arc::new(Plan { config, labelled, sampler, pseudo, pool, ready: AtomicUsize::new(0) });
        let mut loader = Self { plan: Arc::clone(&plan), channels: Vec::new(), threads: Vec::new(), cursor: start, taken: 0, steps_per_epoch, last_epoch };
        for thread in 0..threads {
            let (sender, receiver) = sync_channel(depth.div_ceil(threads).max(1));
            let plan = Arc::clone(&plan);
            let handle = std::thread::Builder::new()
                .name(format!("feral-loader-{thread}"))
                .spawn(move || produce(&plan, start, thread, threads, &sender))
                .map_err(LoaderError::Spawn)?;
            loader.channels.push(receiver);
            loader.threads.push(handle);
        }
        Ok(loader)
    }

    /// The cursor of the batch that [`Loader::next_batch`] returns next.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// How many batches the loader threads have ready.
    pub fn ready(&self) -> usize {
        self.plan.ready.load(Ordering::Relaxed)
    }

    /// The next batch, in cursor order; an error once past the last epoch.
    pub fn next_batch(&mut self) -> Result<Batch, LoaderError> {
        if self.cursor.epoch > self.last_epoch {
            return Err(LoaderError::Exhausted { last_epoch: self.last_epoch });
        }
        let batch = match self.channels.get(self.taken % self.channels.len().max(1)) {
            Some(channel) => {
                let batch = channel.recv().map_err(|_| LoaderError::ThreadEnded)?;
                self.plan.ready.fetch_sub(1, Ordering::Relaxed);
                batch?
            }
            None => self.plan.batch(self.cursor)?,
        };
        self.taken += 1;
        self.cursor = batch.cursor.advanced(1, self.steps_per_epoch);
        Ok(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channels makes each thread's next send fail, which ends it.
        self.channels.clear();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Thread `thread` of `threads`: the batches `start + thread`, `start + thread + threads`,
/// ... until the plan's last epoch or until the loader is dropped.
fn produce(plan: &Plan, start: Cursor, thread: usize, threads: usize, sender: &SyncSender<Result<Batch, LoaderError>>) {
    let steps = plan.config.steps_per_epoch;
    let mut cursor = start.advanced(thread, steps);
    while cursor.epoch <= plan.config.last_epoch {
        let batch = plan.batch(cursor);
        let failed = batch.is_err();
        // Counted before it is sent, so that the count never goes below what is in the channel.
        plan.ready.fetch_add(1, Ordering::Relaxed);
        if sender.send(batch).is_err() || failed {
            return;
        }
        cursor = cursor.advanced(threads, steps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feral_common::dataset::ImageShape;

    fn data(samples: usize, seed: usize) -> Arc<ShardData> {
        let mut data = ShardData::empty(ImageShape { height: 8, width: 6, channels: 1 });
        data.images.extend_from_slice(&(0..samples * 48).map(|i| ((i * 31 + seed * 7) % 253) as u8).collect::<Vec<u8>>());
        data.labels = (0..samples).map(|i| if i % 7 == 6 { -1 } else { (i % 3) as i64 }).collect();
        data.sample_ids = (0..samples as i64).collect();
        Arc::new(data)
    }

    fn config(world: usize, rank: usize, batch: usize, threads: usize) -> LoaderConfig {
        LoaderConfig {
            seed: 11,
            round: 1,
            rank,
            world,
            full_world: world,
            batch,
            pseudo_batch: batch,
            steps_per_epoch: 5,
            last_epoch: 3,
            classes: 3,
            sampling: Sampling::ClassUniform,
            class_weights: None,
            augmentation: Some(Augmentation::default()),
            strong: Some(StrongAugmentation::default()),
            strong_labelled: false,
            pool_batch: batch,
            threads,
            depth: LoaderConfig::DEFAULT_DEPTH,
        }
    }

    fn pseudo() -> Option<PseudoSource> {
        let data = data(30, 3);
        let confidences = Arc::new((0..30).map(|i| i as f32 / 30.0).collect());
        Some(PseudoSource { data, confidences })
    }

    fn start(config: LoaderConfig, at: Cursor) -> Loader {
        Loader::start(config, data(40, 1), pseudo(), Some(data(25, 5)), at).expect("loader starts")
    }

    fn same(a: &Batch, b: &Batch) -> bool {
        let (pa, pb) = (a.pseudo.as_ref().expect("pseudo"), b.pseudo.as_ref().expect("pseudo"));
        a.cursor == b.cursor
            && a.indices == b.indices
            && a.images.equal(&b.images)
            && a.labels.equal(&b.labels)
            && pa.indices == pb.indices
            && pa.images.equal(&pb.images)
            && pa.confidences.equal(&pb.confidences)
            && match (&a.pool, &b.pool) {
                (Some(qa), Some(qb)) => qa.indices == qb.indices && qa.weak.equal(&qb.weak) && qa.strong.equal(&qb.strong),
                _ => false,
            }
    }

    #[test]
    fn starting_at_a_cursor_gives_the_batches_of_a_run_skipped_to_it() {
        let mut from_start = start(config(1, 0, 4, 1), Cursor::new(2, 0));
        let all: Vec<Batch> = (0..10).map(|_| from_start.next_batch().expect("batch")).collect();
        assert_eq!(all[0].cursor, Cursor::new(2, 0));
        assert_eq!(all[5].cursor, Cursor::new(3, 0));
        for skipped in [0, 3, 4, 7] {
            let at = Cursor::new(2, 0).advanced(skipped, 5);
            let mut resumed = start(config(1, 0, 4, 1), at);
            assert_eq!(resumed.cursor(), at);
            for want in &all[skipped..] {
                assert!(same(&resumed.next_batch().expect("batch"), want), "batch at {:?} after starting at {at:?}", want.cursor);
            }
            assert!(matches!(resumed.next_batch(), Err(LoaderError::Exhausted { last_epoch: 3 })));
        }
        let mut from_one = start(config(1, 0, 4, 1), Cursor::new(1, 0));
        let epoch_one: Vec<Batch> = (0..5).map(|_| from_one.next_batch().expect("batch")).collect();
        assert!(!same(&epoch_one[0], &all[0]), "epochs differ");
        assert!(!same(&epoch_one[0], &epoch_one[1]), "steps differ");
    }

    #[test]
    fn zero_one_and_two_threads_give_the_same_batches() {
        let mut none = start(config(1, 0, 6, 0), Cursor::new(1, 2));
        let mut one = start(config(1, 0, 6, 1), Cursor::new(1, 2));
        let mut two = start(config(1, 0, 6, 2), Cursor::new(1, 2));
        for _ in 0..13 {
            let batch = one.next_batch().expect("batch");
            assert!(same(&batch, &two.next_batch().expect("batch")));
            assert!(same(&batch, &none.next_batch().expect("batch")));
        }
        assert!(two.next_batch().is_err(), "exhausted after epoch 3");
        assert!(none.next_batch().is_err(), "exhausted after epoch 3");
    }

    #[test]
    fn ranks_split_the_batch_of_one_rank() {
        let alone = start(config(1, 0, 8, 1), Cursor::new(1, 0));
        let ranks = vec![start(config(2, 0, 4, 2), Cursor::new(1, 0)), start(config(2, 1, 4, 1), Cursor::new(1, 0))];
        assert_split_the_batch_of_one_rank(alone, ranks);
    }

    #[test]
    fn a_short_gang_splits_the_global_batch_of_the_whole_gang_unevenly() {
        // A gang of three ranks (5 samples each) running on two: 8 and 7 samples of 15.
        let short = |rank, threads| start(LoaderConfig { full_world: 3, ..config(2, rank, 5, threads) }, Cursor::new(2, 3));
        let (first, second) = (short(0, 1), short(1, 0));
        let alone = start(config(1, 0, 15, 1), Cursor::new(2, 3));
        assert_eq!((share(15, 0, 2), share(15, 1, 2)), (0..8, 8..15));
        assert_split_the_batch_of_one_rank(alone, vec![first, second]);
    }

    #[test]
    fn shares_cover_the_global_batch_once() {
        for (global, world) in [(64, 1), (64, 2), (64, 3), (7, 4), (3, 5), (192, 7)] {
            let shares: Vec<std::ops::Range<usize>> = (0..world).map(|rank| share(global, rank, world)).collect();
            assert_eq!(shares.first().map(|s| s.start), Some(0));
            assert_eq!(shares.last().map(|s| s.end), Some(global));
            assert!(shares.windows(2).all(|w| w[0].end == w[1].start), "{shares:?}");
            let sizes: Vec<usize> = shares.iter().map(|s| s.len()).collect();
            let (largest, smallest) = (sizes.iter().max().expect("a share per rank"), sizes.iter().min().expect("a share per rank"));
            assert!(largest - smallest <= 1, "{sizes:?}");
        }
    }

    /// The ranks' batches, side by side, are the batches of `alone`.
    fn assert_split_the_batch_of_one_rank(mut alone: Loader, mut ranks: Vec<Loader>) {
        for _ in 0..6 {
            let whole = alone.next_batch().expect("batch");
            let parts: Vec<Batch> = ranks.iter_mut().map(|r| r.next_batch().expect("batch")).collect();
            let indices: Vec<usize> = parts.iter().flat_map(|p| p.indices.clone()).collect();
            assert_eq!(indices, whole.indices);
            let joined = |part: fn(&Batch) -> &Tensor| Tensor::cat(&parts.iter().map(part).collect::<Vec<_>>(), 0);
            assert!(joined(|b| &b.images).equal(&whole.images));
            assert!(joined(|b| &b.labels).equal(&whole.labels));
            let whole_pseudo = whole.pseudo.as_ref().expect("pseudo");
            assert!(joined(|b| &b.pseudo.as_ref().expect("pseudo").images).equal(&whole_pseudo.images));
            assert!(joined(|b| &b.pseudo.as_ref().expect("pseudo").confidences).equal(&whole_pseudo.confidences));
            let whole_pool = whole.pool.as_ref().expect("pool");
            let pool_indices: Vec<usize> = parts.iter().flat_map(|p| p.pool.as_ref().expect("pool").indices.clone()).collect();
            assert_eq!(pool_indices, whole_pool.indices);
            assert!(joined(|b| &b.pool.as_ref().expect("pool").weak).equal(&whole_pool.weak));
            assert!(joined(|b| &b.pool.as_ref().expect("pool").strong).equal(&whole_pool.strong));
        }
    }

    #[test]
    fn pool_samples_come_in_a_weak_and_a_different_strong_view() {
        let mut loader = start(config(1, 0, 6, 1), Cursor::new(1, 0));
        let batch = loader.next_batch().expect("batch");
        let pool = batch.pool.expect("pool batch");
        assert_eq!(pool.weak.size(), [6, 1, 8, 6]);
        assert_eq!(pool.strong.size(), [6, 1, 8, 6]);
        assert!(pool.indices.iter().all(|&i| i < 25), "indices into the pool: {:?}", pool.indices);
        assert!(!pool.weak.equal(&pool.strong), "the strong view differs from the weak one");
        let weak_mean = pool.weak.mean(Kind::Float).double_value(&[]);
        assert!(weak_mean.is_finite() && pool.strong.abs().max().double_value(&[]) <= 1.0 + 1e-6, "normalised to [-1, 1]");
        assert_eq!(pool.hidden_labels, vec![-1; 6], "no hidden labels in this pool");
    }

    #[test]
    fn batches_have_the_promised_shapes_and_labels() {
        let mut loader = start(config(1, 0, 5, 1), Cursor::new(1, 0));
        let batch = loader.next_batch().expect("batch");
        assert_eq!(batch.images.size(), [5, 1, 8, 6]);
        assert_eq!(batch.images.kind(), Kind::Float);
        let labels: Vec<i64> = Vec::try_from(&batch.labels).expect("labels");
        assert!(labels.iter().all(|l| (0..3).contains(l)), "unlabelled samples are never drawn: {labels:?}");
        let pseudo = batch.pseudo.expect("pseudo");
        assert_eq!(pseudo.confidences.size(), [5]);
        assert_eq!(loader.cursor(), Cursor::new(1, 1));
        drop(loader); // threads blocked on a full channel end
    }

    #[test]
    fn bad_settings_are_refused() {
        let refused = |config: LoaderConfig, at| Loader::start(config, data(10, 0), None, None, at).is_err();
        assert!(refused(config(2, 2, 4, 1), Cursor::new(1, 0)));
        assert!(refused(config(1, 0, 4, 17), Cursor::new(1, 0)));
        assert!(refused(config(1, 0, 0, 1), Cursor::new(1, 0)));
        assert!(refused(config(1, 0, 4, 1), Cursor::new(1, 5)));
        let unlabelled = Arc::new(ShardData { labels: vec![-1; 10], ..(*data(10, 0)).clone() });
        assert!(matches!(Loader::start(config(1, 0, 4, 1), unlabelled, None, None, Cursor::new(1, 0)), Err(LoaderError::NothingToDraw)));
    }
}
