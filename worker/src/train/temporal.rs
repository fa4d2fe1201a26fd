//! The temporal encoder (docs/design.md §1, step 9): on video datasets, a small
//! transformer reads the backbone's features of K neighbouring frames (a centred window in
//! the frame's own video) and predicts the centre frame. Each round trains it on the
//! round's frozen backbone, after the backbone's epochs: the round's validation metrics
//! are then the encoder's, and the next round's pseudo-labels come from it, smoothed over
//! time ([`crate::tasks::infer`]).
//!
//! Training runs data-parallel like the backbone: every rank extracts the features of
//! every `world`-th frame and an all-reduce assembles the whole matrix on every rank;
//! then every rank draws the same global batch of windows (class-uniform over labelled
//! centre frames) and trains on its slice, gradients averaged.

use std::sync::atomic::{AtomicBool, Ordering};

use feral_common::dataset::ShardData;
use feral_common::metrics::{ConfusionMatrix, MetricsSummary};
use feral_common::spec::{JobSpec, Optimizer as OptimizerKind, Sampling};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::batches::{channels_last_images, normalised_images, to_tensors, Sampler, View};
use super::evaluation::collective_confusion;
use super::model::{by_name, Network};
use super::optim;
use super::schedule::learning_rate;
use super::seeds::{mix, SEEDED_INIT};
use super::share::ShareWeight;
use super::strong::StrongAugmentation;
use super::weak::Augmentation;
use crate::artifacts::load_var_store;
use crate::collective::{self, Collective};
use crate::error::TaskError;

/// Width of the encoder's tokens.
const DIM: i64 = 64;
const HEADS: i64 = 4;
const LAYERS: usize = 2;
/// Windows per rank in a training step.
const BATCH: usize = 128;
/// Probability of hiding the centre frame's features from the encoder in a training
/// step: the backbone has fitted its own training frames, so their features are more
/// telling than unseen frames' will be; hiding the centre makes the encoder use the rest.
const HIDE_CENTRE: f64 = 0.3;
const DROPOUT: f64 = 0.1;
/// Strongly perturbed copies of the training frames' features the encoder learns from.
pub const TRAIN_VIEWS: usize = 4;

/// Whether `spec` asks for the temporal encoder and `data` is a video dataset.
pub fn wanted(spec: &JobSpec, data: &ShardData) -> bool {
    spec.semi_supervised.temporal_window > 1 && data.video_ids.as_ref().is_some_and(|v| v.iter().any(|&id| id >= 0))
}

/// The file beside a round's `model.safetensors` that holds its temporal encoder.
pub const FILE: &str = "temporal.safetensors";

/// A pre-norm transformer encoder over a window of frame features, read out at the centre.
#[derive(Debug)]
pub struct TemporalEncoder {
    input_norm: nn::LayerNorm,
    input: nn::Linear,
    position: Tensor,
    layers: Vec<Layer>,
    norm: nn::LayerNorm,
    head: nn::Linear,
    window: usize,
}

#[derive(Debug)]
struct Layer {
    attention_norm: nn::LayerNorm,
    qkv: nn::Linear,
    out: nn::Linear,
    mlp_norm: nn::LayerNorm,
    up: nn::Linear,
    down: nn::Linear,
}

impl TemporalEncoder {
    pub fn new(path: &nn::Path, features: i64, window: usize, classes: i64) -> Self {
        let layers = (0..LAYERS)
            .map(|i| {
                let p = path / format!("layer{i}");
                Layer {
                    attention_norm: nn::layer_norm(&p / "attention_norm", vec![DIM], Default::default()),
                    qkv: nn::linear(&p / "qkv", DIM, 3 * DIM, Default::default()),
                    out: nn::linear(&p / "out", DIM, DIM, Default::default()),
                    mlp_norm: nn::layer_norm(&p / "mlp_norm", vec![DIM], Default::default()),
                    up: nn::linear(&p / "up", DIM, 2 * DIM, Default::default()),
                    down: nn::linear(&p / "down", 2 * DIM, DIM, Default::default()),
                }
            })
            .collect();
        Self {
            input_norm: nn::layer_norm(path / "input_norm", vec![features], Default::default()),
            input: nn::linear(path / "input", features, DIM, Default::default()),
            position: path.var("position", &[window as i64, DIM], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            layers,
            norm: nn::layer_norm(path / "norm", vec![DIM], Default::default()),
            head: nn::linear(path / "head", DIM, classes, Default::default()),
            window,
        }
    }

    /// Logits of the centre frames, N×C, from N×K×F window features.
    pub fn forward_t(&self, windows: &Tensor, train: bool) -> Tensor {
        let mut h = windows.apply(&self.input_norm).dropout(DROPOUT, train).apply(&self.input) + &self.position;
        for layer in &self.layers {
            h = &h + layer.attend(&h.apply(&layer.attention_norm)).dropout(DROPOUT, train);
            h = &h + h.apply(&layer.mlp_norm).apply(&layer.up).gelu("none").apply(&layer.down).dropout(DROPOUT, train);
        }
        h.select(1, (self.window / 2) as i64).apply(&self.norm).apply(&self.head)
    }
}

impl Layer {
    /// Multi-head self-attention over the K tokens of each window.
    fn attend(&self, h: &Tensor) -> Tensor {
        let (n, k) = (h.size()[0], h.size()[1]);
        let per_head = DIM / HEADS;
        let qkv = h.apply(&self.qkv).view([n, k, 3, HEADS, per_head]).permute([2, 0, 3, 1, 4]);
        let (q, key, value) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let scores = q.matmul(&key.transpose(-2, -1)) / (per_head as f64).sqrt();
        let mixed = scores.softmax(-1, Kind::Float).matmul(&value);
        mixed.transpose(1, 2).reshape([n, k, DIM]).apply(&self.out)
    }
}

/// Frame features with the windows around each frame.
pub struct Windows {
    /// V·N×F features of every frame (on the task's device): V views of the N frames,
    /// view-major. Evaluation has one view, the frames as they are; training has several
    /// strongly perturbed views.
    pub features: Tensor,
    /// N, the frames.
    pub frames: usize,
    /// N×K frame indices (row-major), see [`feral_common::temporal::windows`].
    pub rows: Vec<usize>,
    pub window: usize,
}

impl Windows {
    /// `backbone`'s features (averaged with the mirror image's, as pseudo-labelling
    /// predicts) of every frame of `data`, shared across the ranks of `collective`.
    pub fn extract(backbone: &dyn Network, data: &ShardData, window: usize, device: Device, collective: &mut dyn Collective) -> Result<Self, TaskError> {
        Self::extract_views(backbone, data, window, device, collective, None)
    }

    /// Like [`Windows::extract`], with `views` copies of every frame's features drawn
    /// under `view.0` (the k-th frame of copy v seeded by `view.1`, v and k) when `view` is
    /// set: the backbone has fitted its training frames, and perturbed frames look more like
    /// the frames it has not seen.
    pub fn extract_views(
        backbone: &dyn Network,
        data: &ShardData,
        window: usize,
        device: Device,
        collective: &mut dyn Collective,
        view: Option<(&StrongAugmentation, u64, usize)>,
    ) -> Result<Self, TaskError> {
        let _guard = tch::no_grad_guard();
        let (rank, world) = (collective.rank(), collective.world_size());
        let n = data.len();
        let copies = view.map_or(1, |(_, _, views)| views.max(1));
        let mut features = Tensor::zeros([(copies * n) as i64, backbone.feature_dim()], (Kind::Float, device));
        let mine: Vec<usize> = (rank..n).step_by(world).collect();
        let weak = Augmentation::default();
        for copy in 0..copies {
            let perturbed = view.map(|(strong, seed, _)| View { weak: &weak, strong: Some(strong), seed: mix(seed, copy as u64), offset: 0 });
            for chunk in mine.chunks(256) {
                let images = match perturbed {
                    // Seeded by frame index, so that every rank draws what one rank would.
                    Some(v) => {
                        let floats: Vec<f32> = chunk.iter().flat_map(|&i| normalised_images(data, &[i], Some(View { offset: i, ..v }))).collect();
                        channels_last_images(&floats, chunk.len(), data.shape)?.to_device(device)
                    }
                    None => to_tensors(data, chunk, &data.labels, device, None).0,
                };
                let f = (backbone.features_t(&images, false) + backbone.features_t(&images.flip([3]), false)) / 2.0;
                let rows: Vec<i64> = chunk.iter().map(|&i| (copy * n + i) as i64).collect();
                let _ = features.index_copy_(0, &Tensor::from_slice(&rows).to_device(device), &f.to_kind(Kind::Float));
            }
        }
        if world > 1 {
            // Rows of other ranks are zero here: the sum is every rank's rows.
            collective.all_reduce_sum(&mut features)?;
        }
        let none = vec![-1; n];
        let rows = feral_common::temporal::windows(data.video_ids.as_deref().unwrap_or(&none), data.frame_indices.as_deref().unwrap_or(&none), window);
        Ok(Self { features, frames: n, rows, window })
    }

    /// V, the copies of each frame's features.
    pub fn views(&self) -> usize {
        self.features.size()[0] as usize / self.frames.max(1)
    }

    /// The N×K×F features of the windows centred on `centres`, in the first view.
    pub fn gather(&self, centres: &[usize]) -> Tensor {
        self.gather_views(centres, |_| 0)
    }

    /// The N×K×F features of the windows centred on `centres`, each token in the view
    /// `view(token)` chooses (tokens counted row-major).
    fn gather_views(&self, centres: &[usize], mut view: impl FnMut(usize) -> usize) -> Tensor {
        let views = self.views();
        let indices: Vec<i64> = centres
            .iter()
            .flat_map(|&c| self.rows[c * self.window..(c + 1) * self.window].iter())
            .enumerate()
            .map(|(token, &i)| ((view(token) % views) * self.frames + i) as i64)
            .collect();
        let device = self.features.device();
        self.features.index_select(0, &Tensor::from_slice(&indices).to_device(device)).view([centres.len() as i64, self.window as i64, -1])
    }

    /// The encoder's logits for every frame, N×C (on the CPU).
    pub fn predict(&self, encoder: &TemporalEncoder) -> Tensor {
        let _guard = tch::no_grad_guard();
        let all: Vec<usize> = (0..self.rows.len() / self.window).collect();
        let parts: Vec<Tensor> = all.chunks(1024).map(|chunk| encoder.forward_t(&self.gather(chunk), false).to_device(Device::Cpu)).collect();
        Tensor::cat(&parts, 0)
    }
}

/// Trains a temporal encoder for round `round` on the labelled frames of `train`, and
/// evaluates it on `val` (both split across the ranks). Returns the encoder, its variables
/// and its validation metrics.
pub fn train(
    spec: &JobSpec,
    round: u32,
    classes: usize,
    (train, train_labels): (&Windows, &[i64]),
    (val, val_labels): (&Windows, &[i64]),
    collective: &mut dyn Collective,
    stop: &AtomicBool,
) -> Result<(nn::VarStore, TemporalEncoder, MetricsSummary), TaskError> {
    let device = train.features.device();
    let features = train.features.size()[1];
    let (vs, encoder) = {
        let _seeded = SEEDED_INIT.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(mix(spec.train.seed ^ 0x7e6d, u64::from(round)) as i64);
        let vs = nn::VarStore::new(device);
        let encoder = TemporalEncoder::new(&vs.root(), features, train.window, classes as i64);
        (vs, encoder)
    };
    collective::broadcast_from_rank0(collective, &mut by_name(&vs))?;
    let trainable = vs.trainable_variables();
    let settings = feral_common::spec::TrainSpec { optimizer: OptimizerKind::Adamw, learning_rate: 2e-3, weight_decay: 1e-2, ..spec.train.clone() };
    let mut optimizer = optim::Optimizer::new(&settings, vs.trainable_variables());

    let (rank, world) = (collective.rank(), collective.world_size());
    let sampler = Sampler::new(train_labels, classes, Sampling::ClassUniform, None, 0);
    let labelled = train_labels.iter().filter(|&&l| l >= 0).count();
    // Global batches of the whole gang, even while an elastic gang runs short.
    let full_world = usize::from(spec.resources.full_gang()).max(world);
    let global = BATCH * full_world;
    let share = super::loader::share(global, rank, world);
    let share_weight = ShareWeight { rank, world, full_world, batch: BATCH, unlabelled_batch: 0 };
    let steps = labelled.div_ceil(global).max(1);
    let epochs = spec.semi_supervised.temporal_epochs;
    for epoch in 0..epochs {
        tch::manual_seed(mix(spec.train.seed ^ u64::from(round), 1000 + epoch as u64) as i64);
        for step in 0..steps {
            if stop.load(Ordering::Relaxed) {
                return Err(TaskError::Stopped);
            }
            let global_step = epoch * steps + step;
            optimizer.set_lr(learning_rate(settings.learning_rate, global_step, epochs * steps));
            // The same global batch on every rank, each training on its slice.
            let seed = mix(mix(spec.train.seed, u64::from(round) << 32 | 0x7e), global_step as u64);
            let drawn = sampler.draw(global, seed);
            let mine = &drawn[share.clone()];
            let mut rng = SmallRng::seed_from_u64(mix(seed, rank as u64));
            // Every token in a view of its own, so that no two steps see one window alike.
            let views = train.views();
            let windows = train.gather_views(mine, |_| rng.random_range(0..views));
            // Hide the centre frame wherever it stands in its window (edge padding repeats it).
            let mut keep = vec![1f32; mine.len() * train.window];
            for (row, &frame) in mine.iter().enumerate() {
                if rng.random_bool(HIDE_CENTRE) {
                    let window = &train.rows[frame * train.window..(frame + 1) * train.window];
                    for (slot, &neighbour) in window.iter().enumerate() {
                        if neighbour == frame {
                            keep[row * train.window + slot] = 0.0;
                        }
                    }
                }
            }
            let windows = windows * Tensor::from_slice(&keep).view([mine.len() as i64, train.window as i64, 1]).to_device(device);
            let targets: Vec<i64> = mine.iter().map(|&i| train_labels[i]).collect();
            let targets = Tensor::from_slice(&targets).to_device(device);
            let loss = share_weight.labelled(encoder.forward_t(&windows, true).cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Mean, -100, 0.1));
            optimizer.zero_grad();
            loss.backward();
            collective::average_gradients(collective, &trainable, collective::DEFAULT_BUCKET_BYTES)?;
            optimizer.step();
        }
    }
    let validation = evaluate(&encoder, val, val_labels, classes, collective)?;
    Ok((vs, encoder, validation))
}

/// The encoder's validation metrics on the labelled frames of `data`, split across ranks.
pub fn evaluate(
    encoder: &TemporalEncoder,
    data: &Windows,
    labels: &[i64],
    classes: usize,
    collective: &mut dyn Collective,
) -> Result<MetricsSummary, TaskError> {
    let _guard = tch::no_grad_guard();
    let (rank, world) = (collective.rank(), collective.world_size());
    let mut confusion = ConfusionMatrix::new(classes);
    let mine: Vec<usize> = (rank..labels.len()).step_by(world).filter(|&i| labels[i] >= 0).collect();
    for chunk in mine.chunks(1024) {
        let predicted = encoder.forward_t(&data.gather(chunk), false).argmax(-1, false).to_device(Device::Cpu);
        for (&index, p) in chunk.iter().zip(Vec::<i64>::try_from(&predicted)?) {
            confusion.record(labels[index], p);
        }
    }
    Ok(collective_confusion(confusion, collective)?.summary())
}

/// Loads a round's encoder from `path` for features of width `features`.
pub fn load(path: &std::path::Path, features: i64, window: usize, classes: i64, device: Device) -> Result<(nn::VarStore, TemporalEncoder), TaskError> {
    let vs = nn::VarStore::new(device);
    let encoder = TemporalEncoder::new(&vs.root(), features, window, classes);
    load_var_store(&vs, path, "temporal encoder")?;
    Ok((vs, encoder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Single;

    /// Frames whose own features say their class only half the time (otherwise noise),
    /// in videos of one class: the window sees what one frame cannot.
    fn clips(videos: usize, frames: usize, seed: u64) -> (Windows, Vec<i64>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut values, mut labels, mut video_ids, mut frame_indices) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for video in 0..videos {
            let class = video % 3;
            for frame in 0..frames {
                let clear = rng.random_bool(0.5);
                for f in 0..6 {
                    let signal = if clear && f == class { 2.0 } else { 0.0 };
                    values.push(signal + rng.random::<f32>() - 0.5);
                }
                labels.push(class as i64);
                video_ids.push(video as i64);
                frame_indices.push(frame as i64);
            }
        }
        let features = Tensor::from_slice(&values).view([-1, 6]);
        let rows = feral_common::temporal::windows(&video_ids, &frame_indices, 5);
        (Windows { features, frames: videos * frames, rows, window: 5 }, labels)
    }

    #[test]
    fn the_encoder_reads_the_window_not_just_the_frame() {
        let (train_set, train_labels) = clips(60, 20, 1);
        let (val_set, val_labels) = clips(30, 20, 2);
        let mut spec = JobSpec::for_dataset("/unused");
        spec.semi_supervised.temporal_epochs = 6;
        let (_vs, encoder, metrics) =
            train(&spec, 1, 3, (&train_set, &train_labels), (&val_set, &val_labels), &mut Single, &AtomicBool::new(false)).expect("train");
        // One frame alone is right at most about 1/2 + 1/2·1/3 of the time; five frames
        // almost always hold a clear one.
        assert!(metrics.accuracy > 0.9, "{metrics:?}");
        let logits = val_set.predict(&encoder);
        assert_eq!(logits.size(), [600, 3]);
    }
}
