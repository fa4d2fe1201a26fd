//! The job spec: a versioned TOML file (`feral submit job.toml`) parsed once into a typed
//! [`JobSpec`]. Every count is read into the unsigned type its users take (`u32`, `usize`)
//! and refused outside its bounds as it is read, and durations are `Duration`s, so no code
//! after [`JobSpec::from_toml`] casts a spec value or falls back on a default; the rules
//! between fields are [`JobSpec::validate`]'s. Unknown fields are rejected, and every error
//! names the field that was wrong (through `serde_path_to_error`).
//! (Long on purpose: every section and field with its default, bounds and check, in the
//! order of the file a user writes, so one place answers "what may I put here".)
//!
//! ```toml
//! version = 1
//! name = "fer-baseline"
//! dataset = "/data/fer2013-prepared"
//!
//! [train]
//! epochs = 8
//! batch_size = 64
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The only spec format version this build understands.
pub const SPEC_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("job spec is not valid TOML: {0}")]
    Syntax(String),
    #[error("job spec field `{field}` {problem}")]
    Invalid { field: &'static str, problem: String },
    /// A field that does not read as its type or lies outside its bounds.
    #[error("job spec field `{field}`: {problem}")]
    Value { field: String, problem: String },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid { field, problem: problem.into() }
}

/// A validated job spec. Build it with [`JobSpec::from_toml`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub version: u32,
    #[serde(default = "default_name")]
    pub name: String,
    /// A prepared dataset directory (with `manifest.json`) that every worker can read.
    pub dataset: PathBuf,
    /// The directory under which the job's own directory, named by its id, is made; by
    /// default the coordinator's artifact root. Jobs never share a directory.
    #[serde(default)]
    pub artifacts: Option<PathBuf>,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub train: TrainSpec,
    #[serde(default)]
    pub resources: ResourceSpec,
    #[serde(default)]
    pub semi_supervised: SemiSupervisedSpec,
}

/// The method of docs/design.md §1: rounds of debiased pseudo-labelling with feedback.
/// Every constant is a field with the design's default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemiSupervisedSpec {
    /// Pseudo-labelling rounds after the teacher (round 0); 0 trains the teacher only.
    #[serde(deserialize_with = "int::<_, _, 0, { MAX_ROUNDS as u64 }>")]
    pub rounds: u16,
    /// Stop when validation macro-F1 has not improved for this many rounds; 0 never stops early.
    #[serde(deserialize_with = "int::<_, _, 0, { MAX_ROUNDS as u64 }>")]
    pub patience: usize,
    /// t: the global confidence threshold.
    pub threshold: f64,
    /// t_min: no class threshold goes below this.
    pub min_threshold: f64,
    /// τ: strength of debiasing (z − τ·log p̂ for labels, z + τ·log p̂ as the student's margin).
    pub tau: f64,
    /// Per-class cap on pseudo-labels: this many times the median selected count; 0 disables.
    pub cap_factor: f64,
    /// λ: how much per-class validation F1 shifts the labelled class sampling weights.
    pub feedback_lambda: f64,
    /// γ: the exponent of (1 − F1 + ε) in the feedback weights.
    pub feedback_gamma: f64,
    /// μ: unlabelled (online) or pseudo-labelled (offline) samples per labelled sample in
    /// a student batch.
    pub mu: f64,
    /// λ_u: weight of the pseudo-label loss.
    pub lambda_u: f64,
    /// Initialise each student from its teacher (true) or from scratch.
    pub init_from_teacher: bool,
    /// Debias pseudo-labels and the student's loss with the pool's class prior.
    pub debias: bool,
    /// The class distribution debiasing moves the pseudo-labels toward: `uniform`
    /// (DebiasPL: z − τ·log p̂) or `labelled`, the labelled split's class frequencies π
    /// (distribution alignment, as ReMixMatch's: z − τ·log(p̂/π), and the margin
    /// τ·log(q̂/π)), for pools whose classes are as imbalanced as the labelled ones.
    pub debias_toward: DebiasTarget,
    /// Feed per-class validation F1 back into the class sampling weights.
    pub feedback: bool,
    /// Online debiased consistency in every student round (FixMatch + DebiasPL): each step
    /// the EMA model labels a weak view of μ·B images drawn from the whole unlabelled pool
    /// and the student learns those labels on their strong view. `false`: the offline
    /// rounds only (the student learns the round's selected pseudo-labels on weak views).
    pub online: bool,
    /// m of the online prior q̂ ← m·q̂ + (1 − m)·mean softmax(weak), and of the running
    /// means behind the online thresholds.
    pub prior_momentum: f64,
    /// The lowest online class threshold. The thresholds are self-adaptive (FreeMatch):
    /// t_c = max(online_min_threshold, t̄ · p̃_c / max_k p̃_k), with t̄ the running mean of
    /// the debiased confidence and p̃ of the debiased class probabilities, both started
    /// from the round's pass over the whole pool.
    pub online_min_threshold: f64,
    /// SoftMatch's soft mask: a label below its threshold t still counts, with weight
    /// exp(−(t − p)²/(2·(σ/2)²)) for confidence p, σ² the running variance of the
    /// confidence. `false`: labels below their threshold are dropped (FixMatch).
    pub soft_mask: bool,
    /// The EMA model labels the weak view and its mirror image and averages the two
    /// (their log-probabilities), as MixMatch's label guessing averages its views: one
    /// more forward pass without gradients per step. `false`: the weak view alone.
    pub online_flip_labels: bool,
    /// T of soft (sharpened) online targets: the student's strong view learns the whole
    /// debiased distribution softmax((z_w − τ·log q̂)/T) of the weak view, as UDA's and
    /// MixMatch's sharpened targets, instead of its argmax; the mask is unchanged. 0: hard
    /// labels (FixMatch). At most 1 (1: the debiased distribution itself, unsharpened).
    pub target_temperature: f64,
    /// The teacher (round 0) also learns online consistency on the pool, as FixMatch does
    /// from its first step, when the job plans rounds. `false`: the teacher learns from the
    /// labelled images alone. A job with `rounds = 0` is supervised either way.
    pub online_teacher: bool,
    /// K: frames in the temporal encoder's centred window (odd). On video datasets (frames
    /// with video ids) a small transformer over the backbone features of K neighbouring
    /// frames predicts the centre frame, for evaluation and to smooth pseudo-labels over
    /// time. 1 turns it off; datasets without video ids never use it.
    #[serde(deserialize_with = "int::<_, _, 1, { MAX_TEMPORAL_WINDOW as u64 }>")]
    pub temporal_window: usize,
    /// Epochs of temporal-encoder training per round, on the round's frozen backbone.
    #[serde(deserialize_with = "int::<_, _, 1, { MAX_EPOCHS as u64 }>")]
    pub temporal_epochs: usize,
}

/// `[semi_supervised] debias_toward`: see [`SemiSupervisedSpec::debias_toward`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DebiasTarget {
    /// Every class equally likely (DebiasPL).
    #[default]
    Uniform,
    /// The labelled split's class frequencies.
    Labelled,
}

impl SemiSupervisedSpec {
    /// Whether round `round`'s training learns online consistency on the pool.
    pub fn online_in_round(&self, round: u32) -> bool {
        self.online && self.rounds > 0 && (round > 0 || self.online_teacher)
    }
}

impl Default for SemiSupervisedSpec {
    fn default() -> Self {
        Self {
            rounds: 0,
            patience: 2,
            threshold: 0.95,
            min_threshold: 0.5,
            tau: 0.4,
            cap_factor: 4.0,
            feedback_lambda: 0.5,
            feedback_gamma: 1.0,
            mu: 2.0,
            lambda_u: 1.0,
            init_from_teacher: true,
            debias: true,
            debias_toward: DebiasTarget::Uniform,
            feedback: true,
            online: true,
            prior_momentum: 0.999,
            online_min_threshold: 0.8,
            soft_mask: true,
            online_flip_labels: false,
            target_temperature: 0.0,
            online_teacher: false,
            temporal_window: 5,
            temporal_epochs: 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub arch: Arch,
    /// Channels of the compact CNN's first convolution; later stages double it. The
    /// ResNets keep their standard widths (64, 128, 256, 512), so that pretrained weights fit.
    #[serde(default = "default_width", deserialize_with = "int::<_, _, 4, { MAX_WIDTH as u64 }>")]
    pub width: u16,
    /// Dropout before the linear classifier.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// CBAM attention (Woo et al., ECCV 2018) in every residual block; ResNets only.
    #[serde(default)]
    pub cbam: bool,
    /// A `.safetensors` file every worker can read: the variables whose names and shapes
    /// match are loaded before training (e.g. ImageNet weights converted from torchvision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Whether `init` may match only some of the backbone's tensors (e.g. ImageNet weights
    /// for a 3-channel stem under a grayscale model). Without it, a file that leaves any
    /// backbone tensor unmatched fails the job before training, naming the first one.
    #[serde(default)]
    pub init_partial: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// A compact CNN for 48x48 grayscale faces that trains well on CPU.
    #[default]
    CompactCnn,
    /// Softmax regression on the pixels: a baseline, and a model without batch
    /// statistics or dropout, so data-parallel runs can be compared with single-rank ones
    /// number for number.
    Linear,
    /// ResNet-18 (He et al., CVPR 2016): BasicBlocks [2, 2, 2, 2], about 11.2 M parameters.
    Resnet18,
    /// ResNet-34: BasicBlocks [3, 4, 6, 3], about 21.3 M parameters.
    Resnet34,
}

impl Arch {
    /// The name a spec gives it (`[model] arch`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::CompactCnn => "compact-cnn",
            Arch::Linear => "linear",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
        }
    }

    /// Whether the network is a ResNet (and so can take CBAM attention).
    pub fn is_resnet(self) -> bool {
        matches!(self, Arch::Resnet18 | Arch::Resnet34)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "default_epochs", deserialize_with = "int::<_, _, 1, { MAX_EPOCHS as u64 }>")]
    pub epochs: u32,
    #[serde(default = "default_batch_size", deserialize_with = "int::<_, _, 1, { MAX_BATCH_SIZE as u64 }>")]
    pub batch_size: usize,
    /// Optimiser steps per epoch; by default the labelled training set size / batch size.
    #[serde(default, deserialize_with = "optional_int::<_, _, 1, { MAX_STEPS_PER_EPOCH as u64 }>")]
    pub steps_per_epoch: Option<usize>,
    #[serde(default)]
    pub optimizer: Optimizer,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// The same as `train.loss.label_smoothing`, kept for older specs: set at most one.
    #[serde(default)]
    pub label_smoothing: f64,
    /// The supervised loss on labelled samples.
    #[serde(default)]
    pub loss: LossSpec,
    #[serde(default)]
    pub sampling: Sampling,
    /// The weak view of every labelled image: flip, pad-crop, small rotation, brightness
    /// and contrast jitter. `false`: images as they are.
    #[serde(default = "default_true")]
    pub augment: bool,
    /// The strong view (`[train.strong]`): what the student learns unlabelled images from,
    /// and optionally the labelled ones too.
    #[serde(default)]
    pub strong: StrongViewSpec,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// libtorch intra-op threads for this task; 0 keeps libtorch's default.
    #[serde(default, deserialize_with = "int::<_, _, 0, { MAX_THREADS as u64 }>")]
    pub threads: u16,
    /// Arithmetic of the forward pass: `fp32`, or `bf16` autocast (matrix products and
    /// convolutions in bfloat16 on the task's device, CUDA or CPU; weights, optimiser
    /// state and gradients stay fp32).
    #[serde(default)]
    pub precision: Precision,
}

/// The strong view (RandAugment-style, Cubuk et al. 2020, as FixMatch uses it): the weak
/// view, then `ops` operations drawn at random (affine, autocontrast, equalize, posterize,
/// sharpness, contrast, brightness) of strength up to `magnitude`, then Cutout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrongViewSpec {
    /// Operations per image.
    #[serde(deserialize_with = "int::<_, _, 0, { MAX_STRONG_OPS as u64 }>")]
    pub ops: u8,
    /// Strength of each operation, 0..=30 (torchvision's RandAugment scale).
    #[serde(deserialize_with = "int::<_, _, 0, { MAX_MAGNITUDE as u64 }>")]
    pub magnitude: u8,
    /// Cutout: a gray square whose side is drawn up to this fraction of the image side; 0: none.
    pub cutout: f64,
    /// Labelled batches get the strong view too (a supervised run with strong augmentation).
    pub labelled: bool,
}

impl Default for StrongViewSpec {
    fn default() -> Self {
        Self { ops: 2, magnitude: 10, cutout: 0.5, labelled: false }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    #[default]
    Adamw,
    Sgd,
}

/// The supervised loss (`[train.loss]`): which one, and every parameter with its default.
/// A parameter that the chosen kind does not use must keep its default, so that a spec
/// never carries a setting that silently does nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossSpec {
    pub kind: LossKind,
    /// ε: targets become (1 − ε)·one-hot + ε/C (Szegedy et al., CVPR 2016). Every kind but focal.
    pub label_smoothing: f64,
    /// β of `weighted-ce`: class weights ∝ 1/n_c^β, normalised to mean 1 (1: inverse frequency).
    pub class_weight_beta: f64,
    /// γ of `focal`: the focusing exponent of (1 − p_t)^γ (0: cross-entropy).
    pub focal_gamma: f64,
    /// α of `focal`: one weight per class, in the dataset's class order; none: all 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub focal_alpha: Option<Vec<f64>>,
    /// The margin of the rarest class under `ldam`; the others get max_margin·(n_min/n_c)^¼.
    pub ldam_max_margin: f64,
    /// s of `ldam`: the factor on the margin-adjusted logits.
    pub ldam_scale: f64,
    /// `ldam`'s deferred re-weighting: class-balanced weights from this epoch on (epochs
    /// count from 1); 0 never re-weights.
    #[serde(deserialize_with = "int::<_, _, 0, { MAX_EPOCHS as u64 }>")]
    pub drw_epoch: u32,
    /// β of the class-balanced DRW weights (1 − β)/(1 − β^n_c) (Cui et al., CVPR 2019).
    pub drw_beta: f64,
    /// τ of `logit-adjusted`: training logits become z + τ·log π_c.
    pub la_tau: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Cross-entropy.
    #[default]
    Ce,
    /// Cross-entropy with class weights from the class counts.
    WeightedCe,
    /// Focal loss (Lin et al., ICCV 2017).
    Focal,
    /// Label-distribution-aware margin loss (Cao et al., NeurIPS 2019), optionally with
    /// deferred re-weighting.
    Ldam,
    /// Logit-adjusted cross-entropy (Menon et al., ICLR 2021).
    LogitAdjusted,
}

impl LossKind {
    /// The name a spec uses for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            LossKind::Ce => "ce",
            LossKind::WeightedCe => "weighted-ce",
            LossKind::Focal => "focal",
            LossKind::Ldam => "ldam",
            LossKind::LogitAdjusted => "logit-adjusted",
        }
    }
}

impl Default for LossSpec {
    fn default() -> Self {
        Self {
            kind: LossKind::Ce,
            label_smoothing: 0.0,
            class_weight_beta: 1.0,
            focal_gamma: 2.0,
            focal_alpha: None,
            ldam_max_margin: 0.5,
            ldam_scale: 30.0,
            drw_epoch: 0,
            drw_beta: 0.9999,
            la_tau: 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Draw a class uniformly, then a sample of that class (docs/design.md §1, step 1).
    #[default]
    ClassUniform,
    /// Draw samples uniformly, so classes appear at their natural frequency.
    Natural,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// How often a task is tried before the job fails.
    #[serde(default = "default_max_attempts", deserialize_with = "int::<_, _, 1, { MAX_ATTEMPTS as u64 }>")]
    pub max_attempts: u16,
    /// Ranks of each training gang (data parallel, one device slot each).
    #[serde(default = "default_workers", deserialize_with = "int::<_, _, 1, { MAX_GANG as u64 }>")]
    pub workers: u16,
    /// An elastic gang's full size (the same as `workers`; set one of the two). The global
    /// batch is always `train.batch_size × max_workers`, whatever the ranks live.
    #[serde(default, deserialize_with = "optional_int::<_, _, 1, { MAX_GANG as u64 }>")]
    pub max_workers: Option<u16>,
    /// The fewest ranks a gang may train with: one that loses a rank restarts from its
    /// checkpoint with the ranks left while at least this many are live, and grows back
    /// at an epoch boundary. Unset: the full size (a fixed gang).
    #[serde(default, deserialize_with = "optional_int::<_, _, 1, { MAX_GANG as u64 }>")]
    pub min_workers: Option<u16>,
    /// Seconds before the second attempt of a failed task; each later attempt waits twice
    /// as long as the one before, up to `retry_backoff_max_s`, times a jitter in [0.5, 1).
    #[serde(default = "default_retry_backoff_s", with = "seconds")]
    pub retry_backoff_s: Duration,
    /// The longest wait before an attempt.
    #[serde(default = "default_retry_backoff_max_s", with = "seconds")]
    pub retry_backoff_max_s: Duration,
}

impl ResourceSpec {
    /// The ranks of a whole gang: `max_workers`, or `workers`.
    pub fn full_gang(&self) -> u16 {
        self.max_workers.unwrap_or(self.workers)
    }

    /// How long to wait before attempt `attempt + 1` of a task whose attempt `attempt`
    /// failed (`failures` failures so far): `retry_backoff_s · 2^(failures − 1)`, capped at
    /// `retry_backoff_max_s`, times `jitter` (in [0, 1), mapped onto [0.5, 1)).
    pub fn retry_delay(&self, failures: u32, jitter: f64) -> std::time::Duration {
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1));
        let capped = self.retry_backoff_s.saturating_mul(doubling).min(self.retry_backoff_max_s);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// The fewest ranks a gang may train with (`min_workers`, or the whole gang).
    pub fn min_gang(&self) -> u16 {
        self.min_workers.unwrap_or(self.full_gang())
    }
}

fn default_name() -> String {
    "job".to_owned()
}
fn default_width() -> u16 {
    32
}
fn default_dropout() -> f64 {
    0.3
}
fn default_epochs() -> u32 {
    10
}
fn default_batch_size() -> usize {
    64
}
fn default_learning_rate() -> f64 {
    0.002
}
fn default_weight_decay() -> f64 {
    5e-4
}
fn default_momentum() -> f64 {
    0.9
}
fn default_true() -> bool {
    true
}
fn default_seed() -> u64 {
    7
}
fn default_max_attempts() -> u16 {
    3
}
fn default_workers() -> u16 {
    1
}
fn default_retry_backoff_s() -> Duration {
    Duration::from_secs(2)
}
fn default_retry_backoff_max_s() -> Duration {
    Duration::from_secs(60)
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self { arch: Arch::default(), width: default_width(), dropout: default_dropout(), cbam: false, init: None, init_partial: false }
    }
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            steps_per_epoch: None,
            optimizer: Optimizer::default(),
            learning_rate: default_learning_rate(),
            weight_decay: default_weight_decay(),
            momentum: default_momentum(),
            label_smoothing: 0.0,
            loss: LossSpec::default(),
            sampling: Sampling::default(),
            augment: true,
            strong: StrongViewSpec::default(),
            seed: default_seed(),
            threads: 0,
            precision: Precision::Fp32,
        }
    }
}

impl Default for ResourceSpec {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            workers: default_workers(),
            max_workers: None,
            min_workers: None,
            retry_backoff_s: default_retry_backoff_s(),
            retry_backoff_max_s: default_retry_backoff_max_s(),
        }
    }
}

/// A `u32` spec value (epochs) as a `usize`: lossless, since Feral builds for targets whose
/// `usize` has at least 32 bits (checked here at compile time).
pub const fn to_usize(value: u32) -> usize {
    const _: () = assert!(usize::BITS >= u32::BITS);
    value as usize
}

impl TrainSpec {
    /// The loss to train with: `train.loss`, with the older `train.label_smoothing` folded in.
    pub fn effective_loss(&self) -> LossSpec {
        let mut loss = self.loss.clone();
        if loss.label_smoothing == 0.0 {
            loss.label_smoothing = self.label_smoothing;
        }
        loss
    }
}

impl JobSpec {
    /// A spec for `dataset` with every other field at its default.
    pub fn for_dataset(dataset: impl Into<PathBuf>) -> Self {
        Self {
            version: SPEC_VERSION,
            name: default_name(),
            dataset: dataset.into(),
            artifacts: None,
            model: ModelSpec::default(),
            train: TrainSpec::default(),
            resources: ResourceSpec::default(),
            semi_supervised: SemiSupervisedSpec::default(),
        }
    }

    /// Parses and validates a spec.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(invalid("spec_toml", format!("must be at most {MAX_SPEC_BYTES} bytes, got {}", text.len())));
        }
        let document = toml::Deserializer::parse(text).map_err(|e| SpecError::Syntax(e.to_string()))?;
        let spec: JobSpec = serde_path_to_error::deserialize(document).map_err(|e| match e.path().to_string() {
            field if field == "." => SpecError::Syntax(e.into_inner().to_string()),
            field => SpecError::Value { field, problem: e.into_inner().message().to_owned() },
        })?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# spec could not be written: {e}"))
    }

    /// Checks the rules between fields and the bounds of fractions and names, which reading
    /// the spec does not (the bounds of counts and durations are checked as they are read).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(invalid("version", format!("must be {SPEC_VERSION}, got {}", self.version)));
        }
        text_field("name", &self.name, MAX_NAME_CHARS)?;
        path_field("dataset", &self.dataset, "must name a prepared dataset directory")?;
        if let Some(artifacts) = &self.artifacts {
            path_field("artifacts", artifacts, "must name a directory")?;
        }
        fraction("model.dropout", self.model.dropout)?;
        if self.model.cbam && !self.model.arch.is_resnet() {
            return Err(invalid("model.cbam", "applies to the resnet18 and resnet34 architectures only"));
        }
        if let Some(init) = &self.model.init {
            path_field("model.init", init, "must name a .safetensors file")?;
        } else if self.model.init_partial {
            return Err(invalid("model.init_partial", "applies only with model.init"));
        }
        let train = &self.train;
        bounded("train.learning_rate", train.learning_rate, f64::MIN_POSITIVE, 10.0)?;
        bounded("train.weight_decay", train.weight_decay, 0.0, 10.0)?;
        fraction("train.momentum", train.momentum)?;
        fraction("train.label_smoothing", train.label_smoothing)?;
        bounded("train.strong.cutout", train.strong.cutout, 0.0, 1.0)?;
        validate_loss(&train.loss, train.label_smoothing, train.epochs)?;
        let resources = &self.resources;
        if let Some(max) = resources.max_workers {
            if resources.workers != default_workers() && resources.workers != max {
                return Err(invalid("resources.max_workers", format!("disagrees with resources.workers ({max} != {}): set one of the two", resources.workers)));
            }
        }
        if let Some(min) = resources.min_workers {
            let full = resources.max_workers.unwrap_or(resources.workers);
            if min > full {
                return Err(invalid("resources.min_workers", format!("must be in 1..={full}, got {min}")));
            }
        }
        let semi = &self.semi_supervised;
        fraction("semi_supervised.threshold", semi.threshold)?;
        fraction("semi_supervised.min_threshold", semi.min_threshold)?;
        if semi.min_threshold > semi.threshold {
            return Err(invalid("semi_supervised.min_threshold", format!("must not exceed threshold ({} > {})", semi.min_threshold, semi.threshold)));
        }
        bounded("semi_supervised.tau", semi.tau, 0.0, 10.0)?;
        bounded("semi_supervised.cap_factor", semi.cap_factor, 0.0, 1e6)?;
        if !(0.0..=1.0).contains(&semi.feedback_lambda) {
            return Err(invalid("semi_supervised.feedback_lambda", format!("must be in [0, 1], got {}", semi.feedback_lambda)));
        }
        bounded("semi_supervised.feedback_gamma", semi.feedback_gamma, 0.0, 10.0)?;
        bounded("semi_supervised.mu", semi.mu, 0.0, MAX_MU)?;
        bounded("semi_supervised.lambda_u", semi.lambda_u, 0.0, 100.0)?;
        fraction("semi_supervised.prior_momentum", semi.prior_momentum)?;
        fraction("semi_supervised.online_min_threshold", semi.online_min_threshold)?;
        bounded("semi_supervised.target_temperature", semi.target_temperature, 0.0, 1.0)?;
        if semi.temporal_window.is_multiple_of(2) {
            return Err(invalid("semi_supervised.temporal_window", format!("must be odd (a window centred on its frame), got {}", semi.temporal_window)));
        }
        Ok(())
    }
}

/// The checks of `[train.loss]`; `legacy_smoothing` is `train.label_smoothing`.
fn validate_loss(loss: &LossSpec, legacy_smoothing: f64, epochs: u32) -> Result<(), SpecError> {
    use LossKind::*;
    fraction("train.loss.label_smoothing", loss.label_smoothing)?;
    bounded("train.loss.class_weight_beta", loss.class_weight_beta, 0.0, 10.0)?;
    bounded("train.loss.focal_gamma", loss.focal_gamma, 0.0, 10.0)?;
    if let Some(alpha) = &loss.focal_alpha {
        if alpha.len() > MAX_CLASSES {
            return Err(invalid("train.loss.focal_alpha", format!("must have at most {MAX_CLASSES} weights (one per class), got {}", alpha.len())));
        }
        if alpha.is_empty() || alpha.iter().any(|a| !(a.is_finite() && *a >= 0.0)) || alpha.iter().all(|a| *a == 0.0) {
            return Err(invalid("train.loss.focal_alpha", format!("must be one weight of zero or more per class, not all zero, got {alpha:?}")));
        }
    }
    bounded("train.loss.ldam_max_margin", loss.ldam_max_margin, f64::MIN_POSITIVE, 10.0)?;
    bounded("train.loss.ldam_scale", loss.ldam_scale, f64::MIN_POSITIVE, 1000.0)?;
    if loss.drw_epoch > epochs {
        return Err(invalid("train.loss.drw_epoch", format!("must not exceed train.epochs ({} > {epochs}), or re-weighting never starts", loss.drw_epoch)));
    }
    fraction("train.loss.drw_beta", loss.drw_beta)?;
    bounded("train.loss.la_tau", loss.la_tau, 0.0, 10.0)?;

    let default = LossSpec::default();
    let parameters: [(&'static str, bool, &[LossKind]); 9] = [
        ("train.loss.label_smoothing", loss.label_smoothing != default.label_smoothing, &[Ce, WeightedCe, Ldam, LogitAdjusted]),
        ("train.loss.class_weight_beta", loss.class_weight_beta != default.class_weight_beta, &[WeightedCe]),
        ("train.loss.focal_gamma", loss.focal_gamma != default.focal_gamma, &[Focal]),
        ("train.loss.focal_alpha", loss.focal_alpha != default.focal_alpha, &[Focal]),
        ("train.loss.ldam_max_margin", loss.ldam_max_margin != default.ldam_max_margin, &[Ldam]),
        ("train.loss.ldam_scale", loss.ldam_scale != default.ldam_scale, &[Ldam]),
        ("train.loss.drw_epoch", loss.drw_epoch != default.drw_epoch, &[Ldam]),
        ("train.loss.drw_beta", loss.drw_beta != default.drw_beta, &[Ldam]),
        ("train.loss.la_tau", loss.la_tau != default.la_tau, &[LogitAdjusted]),
    ];
    for (field, set, kinds) in parameters {
        if set && !kinds.contains(&loss.kind) {
            return Err(invalid(field, format!("does not apply to train.loss.kind = \"{}\"", loss.kind.as_str())));
        }
    }
    if legacy_smoothing != 0.0 {
        if loss.label_smoothing != 0.0 {
            return Err(invalid("train.label_smoothing", "must be 0 when train.loss.label_smoothing is set (set it in one place)"));
        }
        if loss.kind == Focal {
            return Err(invalid("train.label_smoothing", "does not apply to train.loss.kind = \"focal\""));
        }
    }
    Ok(())
}

/// The widest temporal window a job may ask for (frames).
pub const MAX_TEMPORAL_WINDOW: usize = 65;
/// The largest spec a coordinator takes (bytes of TOML).
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// The longest job name (characters).
pub const MAX_NAME_CHARS: usize = 128;
/// The longest path a spec may name (bytes).
pub const MAX_PATH_BYTES: usize = 4096;
/// `model.width`: the compact CNN's first convolution (its last stage has 8× as many).
pub const MAX_WIDTH: u16 = 512;
/// `train.epochs` and `semi_supervised.temporal_epochs`.
pub const MAX_EPOCHS: u32 = 100_000;
/// `train.batch_size`: images per rank and step (the unlabelled batch is μ times more).
pub const MAX_BATCH_SIZE: usize = 4096;
/// `train.steps_per_epoch`.
pub const MAX_STEPS_PER_EPOCH: usize = 1_000_000;
/// `train.threads`.
pub const MAX_THREADS: u16 = 256;
/// `train.strong.ops`: operations drawn per image.
pub const MAX_STRONG_OPS: u8 = 16;
/// `train.strong.magnitude`: torchvision's RandAugment scale.
pub const MAX_MAGNITUDE: u8 = 30;
/// `resources.max_attempts`.
pub const MAX_ATTEMPTS: u16 = 100;
/// `resources.retry_backoff_s` and `retry_backoff_max_s`: an hour.
pub const MAX_RETRY_BACKOFF_S: f64 = 3600.0;
/// `resources.workers`: ranks of one gang.
pub const MAX_GANG: u16 = 256;
/// `semi_supervised.rounds` and `semi_supervised.patience`.
pub const MAX_ROUNDS: u16 = 100;
/// `semi_supervised.mu`: unlabelled images per labelled one in a step.
pub const MAX_MU: f64 = 16.0;
/// Classes a dataset may have (and so weights `train.loss.focal_alpha` may list).
pub const MAX_CLASSES: usize = 1000;

/// Reads an integer field into `T`, refusing a value outside `MIN..=MAX` (the field's name
/// is added by `serde_path_to_error`).
fn int<'de, D: Deserializer<'de>, T: TryFrom<u64>, const MIN: u64, const MAX: u64>(deserializer: D) -> Result<T, D::Error> {
    struct Integer<const MIN: u64, const MAX: u64>;
    impl<const MIN: u64, const MAX: u64> serde::de::Visitor<'_> for Integer<MIN, MAX> {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an integer in {MIN}..={MAX}")
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }
        // JSON (a stored job record) reads non-negative numbers as u64.
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::custom(format!("must be in {MIN}..={MAX}, got {value}")))
        }
    }
    let value = deserializer.deserialize_i64(Integer::<MIN, MAX>)?;
    let in_range = u64::try_from(value).ok().filter(|v| (MIN..=MAX).contains(v));
    in_range.and_then(|v| T::try_from(v).ok()).ok_or_else(|| serde::de::Error::custom(format!("must be in {MIN}..={MAX}, got {value}")))
}

/// [`int`] for a field that may be left out (or, in a stored job record, be `null`).
fn optional_int<'de, D: Deserializer<'de>, T: TryFrom<u64>, const MIN: u64, const MAX: u64>(deserializer: D) -> Result<Option<T>, D::Error> {
    struct Optional<T, const MIN: u64, const MAX: u64>(std::marker::PhantomData<T>);
    impl<'de, T: TryFrom<u64>, const MIN: u64, const MAX: u64> serde::de::Visitor<'de> for Optional<T, MIN, MAX> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an integer in {MIN}..={MAX}")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<S: Deserializer<'de>>(self, deserializer: S) -> Result<Option<T>, S::Error> {
            int::<S, T, MIN, MAX>(deserializer).map(Some)
        }
    }
    deserializer.deserialize_option(Optional::<T, MIN, MAX>(std::marker::PhantomData))
}

/// A duration written as seconds (`2.0`), at most [`MAX_RETRY_BACKOFF_S`].
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(duration.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        (0.0..=super::MAX_RETRY_BACKOFF_S)
            .contains(&seconds)
            .then(|| Duration::from_secs_f64(seconds))
            .ok_or_else(|| serde::de::Error::custom(format!("must be a number of seconds in [0, {}], got {seconds}", super::MAX_RETRY_BACKOFF_S)))
    }
}

/// A finite number in `[minimum, maximum]`.
fn bounded(field: &'static str, value: f64, minimum: f64, maximum: f64) -> Result<(), SpecError> {
    if !(value.is_finite() && (minimum..=maximum).contains(&value)) {
        let low = if minimum == f64::MIN_POSITIVE { "0 (exclusive)".to_owned() } else { minimum.to_string() };
        return Err(invalid(field, format!("must be a number in [{low}, {maximum}], got {value}")));
    }
    Ok(())
}

/// A name a person reads: not blank, at most `maximum` characters, no control characters
/// (which a terminal would act on).
fn text_field(field: &'static str, value: &str, maximum: usize) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > maximum {
        return Err(invalid(field, format!("must be at most {maximum} characters, got {chars}")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(field, format!("must not contain control characters, got {c:?}")));
    }
    Ok(())
}

fn path_field(field: &'static str, path: &std::path::Path, empty: &str) -> Result<(), SpecError> {
    let bytes = path.as_os_str().len();
    if bytes == 0 {
        return Err(invalid(field, empty.to_owned()));
    }
    if bytes > MAX_PATH_BYTES {
        return Err(invalid(field, format!("must be at most {MAX_PATH_BYTES} bytes, got {bytes}")));
    }
    if path.to_string_lossy().chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    // Workers would resolve a relative path against their own working directory, not the
    // submitter's: the `feral` CLI makes such paths absolute before it submits.
    if !path.is_absolute() {
        return Err(invalid(
            field,
            format!("must be an absolute path, got {path:?} (`feral submit` makes relative paths absolute against its working directory)"),
        ));
    }
    Ok(())
}

fn fraction(field: &'static str, value: f64) -> Result<(), SpecError> {
    if !(0.0..1.0).contains(&value) {
        return Err(invalid(field, format!("must be in [0, 1), got {value}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n").expect("valid spec");
        assert_eq!(spec, JobSpec::for_dataset("/d"));
        assert_eq!(JobSpec::from_toml(&spec.to_toml()), Ok(spec));
    }

    #[test]
    fn online_consistency_runs_in_student_rounds_and_in_the_teacher_only_when_asked() {
        let semi = |text: &str| JobSpec::from_toml(&format!("version = 1\ndataset = \"/d\"\n[semi_supervised]\n{text}")).expect("valid spec").semi_supervised;
        let students_only = semi("rounds = 2\n");
        assert_eq!([0, 1, 2].map(|r| students_only.online_in_round(r)), [false, true, true]);
        let from_the_start = semi("rounds = 2\nonline_teacher = true\n");
        assert_eq!([0, 1, 2].map(|r| from_the_start.online_in_round(r)), [true, true, true]);
        // A supervised job stays supervised, and offline rounds stay offline.
        assert!(!semi("rounds = 0\nonline_teacher = true\n").online_in_round(0));
        assert!(!semi("rounds = 2\nonline = false\nonline_teacher = true\n").online_in_round(0));
        assert!(!semi("rounds = 2\nonline = false\n").online_in_round(1));
    }

    #[test]
    fn debiasing_goes_toward_uniform_unless_told_the_labelled_frequencies() {
        let semi = |text: &str| JobSpec::from_toml(&format!("version = 1\ndataset = \"/d\"\n[semi_supervised]\n{text}")).map(|s| s.semi_supervised);
        assert_eq!(semi("").expect("valid").debias_toward, DebiasTarget::Uniform);
        let labelled = semi("debias_toward = \"labelled\"\nonline_flip_labels = true\n").expect("valid");
        assert_eq!((labelled.debias_toward, labelled.online_flip_labels), (DebiasTarget::Labelled, true));
        let err = semi("debias_toward = \"balanced\"\n").expect_err("unknown target").to_string();
        assert!(err.contains("balanced") && err.contains("labelled"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = |text: &str| JobSpec::from_toml(text).expect_err("spec must be rejected").to_string();
        let base = "version = 1\ndataset = \"/d\"\n";
        assert!(err(&format!("{base}[train]\nepochs = -3\n")).contains("train.epochs"));
        assert!(err(&format!("{base}[train]\nbatch_size = 0\n")).contains("train.batch_size"));
        assert!(err(&format!("{base}[train]\nlearning_rate = -0.1\n")).contains("train.learning_rate"));
        assert!(err(&format!("{base}[train]\nepochs = 2\nepochz = 3\n")).contains("epochz"));
        assert!(err(&format!("{base}colour = \"red\"\n")).contains("colour"));
        assert!(err("version = 1\n").contains("dataset"));
        assert!(err("version = 2\ndataset = \"/d\"\n").contains("version"));
        assert!(err("version = 1\ndataset = \"/d\"\n[train\n").contains("not valid TOML"));
        assert!(err(&format!("{base}[model]\narch = \"vgg\"\n")).contains("vgg"));
        assert!(err(&format!("{base}[semi_supervised]\nrounds = -1\n")).contains("semi_supervised.rounds"));
        assert!(err(&format!("{base}[semi_supervised]\nthreshold = 1.5\n")).contains("semi_supervised.threshold"));
        assert!(err(&format!("{base}[semi_supervised]\nthreshold = 0.6\nmin_threshold = 0.7\n")).contains("min_threshold"));
        assert!(err(&format!("{base}[semi_supervised]\nfeedback_lambda = 2\n")).contains("feedback_lambda"));
        assert!(err(&format!("{base}[semi_supervised]\nroundz = 2\n")).contains("roundz"));
        assert!(err(&format!("{base}[semi_supervised]\ntemporal_window = 4\n")).contains("temporal_window"));
        let precision = err(&format!("{base}[train]\nprecision = \"fp16\"\n"));
        assert!(precision.contains("fp16") && precision.contains("bf16"), "{precision}");
        assert!(err(&format!("{base}[semi_supervised]\ntemporal_window = 0\n")).contains("temporal_window"));
        assert!(err(&format!("{base}[semi_supervised]\ntemporal_window = 67\n")).contains("1..=65"));
        assert!(err(&format!("{base}[semi_supervised]\ntemporal_epochs = 0\n")).contains("temporal_epochs"));
        assert!(err(&format!("{base}[train.strong]\nmagnitude = 31\n")).contains("train.strong.magnitude"));
        assert!(err(&format!("{base}[train.strong]\ncutout = 1.5\n")).contains("train.strong.cutout"));
        assert!(err(&format!("{base}[train.strong]\nops = -1\n")).contains("train.strong.ops"));
        assert!(err(&format!("{base}[train.strong]\nopz = 1\n")).contains("opz"));
        assert!(err(&format!("{base}[semi_supervised]\nprior_momentum = 1.0\n")).contains("prior_momentum"));
        assert!(err(&format!("{base}[semi_supervised]\nonline_min_threshold = 1.2\n")).contains("online_min_threshold"));
        assert!(err(&format!("{base}[semi_supervised]\ntarget_temperature = 1.5\n")).contains("target_temperature"));
        assert!(err(&format!("{base}[semi_supervised]\ntarget_temperature = -0.1\n")).contains("target_temperature"));
    }

    #[test]
    fn an_elastic_gang_is_bounded_by_min_and_max_workers() {
        let base = "version = 1\ndataset = \"/d\"\n[resources]\n";
        let spec = |extra: &str| JobSpec::from_toml(&format!("{base}{extra}"));
        let gang = |extra: &str| spec(extra).map(|s| (s.resources.min_gang(), s.resources.full_gang())).expect("valid");
        assert_eq!(gang(""), (1, 1));
        assert_eq!(gang("workers = 4\n"), (4, 4), "a fixed gang by default");
        assert_eq!(gang("workers = 4\nmin_workers = 2\n"), (2, 4));
        assert_eq!(gang("max_workers = 4\nmin_workers = 1\n"), (1, 4));
        assert_eq!(gang("workers = 4\nmax_workers = 4\n"), (4, 4));
        let err = |extra: &str| spec(extra).expect_err("invalid").to_string();
        assert!(err("workers = 2\nmax_workers = 4\n").contains("disagrees with resources.workers"));
        assert!(err("workers = 2\nmin_workers = 3\n").contains("resources.min_workers` must be in 1..=2"));
        assert!(err("max_workers = 4\nmin_workers = 0\n").contains("resources.min_workers"));
        assert!(err("max_workers = 257\n").contains("resources.max_workers"));
    }

    #[test]
    fn numbers_beyond_their_range_are_refused_not_truncated() {
        let base = "version = 1\ndataset = \"/d\"\n";
        let cases = [
            ("[train]\nepochs = 4294967296\n", "train.epochs", "1..=100000"),
            ("[train]\nbatch_size = 1099511627776\n", "train.batch_size", "1..=4096"),
            ("[train]\nsteps_per_epoch = 9223372036854775807\n", "train.steps_per_epoch", "1..=1000000"),
            ("[train]\nthreads = 2147483648\n", "train.threads", "0..=256"),
            ("[train]\nlearning_rate = 1e300\n", "train.learning_rate", "10"),
            ("[train.strong]\nops = 1000\n", "train.strong.ops", "0..=16"),
            ("[model]\nwidth = 1099511627776\n", "model.width", "4..=512"),
            ("[resources]\nworkers = 4294967295\n", "resources.workers", "1..=256"),
            ("[resources]\nworkers = 99999999999\n", "resources.workers", "1..=256"),
            ("[resources]\nmax_attempts = 4294967297\n", "resources.max_attempts", "1..=100"),
            ("[semi_supervised]\nrounds = 4294967297\n", "semi_supervised.rounds", "0..=100"),
            ("[semi_supervised]\nmu = 1e9\n", "semi_supervised.mu", "16"),
            ("[semi_supervised]\ntemporal_epochs = 4294967296\n", "semi_supervised.temporal_epochs", "1..=100000"),
            ("[train.loss]\nkind = \"ldam\"\nldam_scale = inf\n", "train.loss.ldam_scale", "1000"),
        ];
        for (text, field, limit) in cases {
            let error = JobSpec::from_toml(&format!("{base}{text}")).expect_err(text).to_string();
            assert!(error.contains(field) && error.contains(limit), "{text:?}: {error}");
        }
        // The largest values in range are taken as they are.
        let spec = JobSpec::from_toml(&format!("{base}[train]\nepochs = 100000\n[resources]\nworkers = 256\n")).expect("in range");
        assert_eq!((spec.train.epochs, spec.resources.workers), (100_000, 256));
    }

    #[test]
    fn counts_and_durations_are_read_into_their_types_once() {
        let base = "version = 1\ndataset = \"/d\"\n";
        let spec = |text: &str| JobSpec::from_toml(&format!("{base}{text}"));
        let read = spec(
            "[train]\nsteps_per_epoch = 40\nthreads = 2\n[resources]\nmin_workers = 2\nmax_workers = 4\nretry_backoff_s = 0.25\nretry_backoff_max_s = 90\n",
        )
        .expect("valid");
        assert_eq!((read.train.steps_per_epoch, read.train.threads), (Some(40), 2));
        assert_eq!((read.resources.min_gang(), read.resources.full_gang()), (2, 4));
        assert_eq!((read.resources.retry_backoff_s, read.resources.retry_backoff_max_s), (Duration::from_millis(250), Duration::from_secs(90)));
        assert_eq!(JobSpec::from_toml(&read.to_toml()), Ok(read.clone()), "written back as the numbers a user writes");
        assert!(read.to_toml().contains("retry_backoff_s = 0.25"), "{}", read.to_toml());
        for spec in [read.clone(), JobSpec::for_dataset("/d")] {
            let stored = serde_json::to_string(&spec).expect("a job record holds its spec");
            assert_eq!(serde_json::from_str::<JobSpec>(&stored).expect("and reads it back"), spec, "{stored}");
        }
        // The wait before each attempt doubles from the first, up to the longest.
        let waits: Vec<Duration> = (1..=4).map(|failures| read.resources.retry_delay(failures, 1.0)).collect();
        assert_eq!(waits, [250, 500, 1000, 2000].map(Duration::from_millis));
        assert_eq!(read.resources.retry_delay(40, 0.0), Duration::from_secs(45), "capped, then halved by the lowest jitter");

        let err = |text: &str| spec(text).expect_err(text).to_string();
        let cases = [
            ("[train]\nepochs = \"ten\"\n", "`train.epochs`", "an integer in 1..=100000"),
            ("[train]\nthreads = 1.5\n", "`train.threads`", "an integer in 0..=256"),
            ("[resources]\nretry_backoff_s = -1\n", "`resources.retry_backoff_s`", "[0, 3600]"),
            ("[resources]\nretry_backoff_max_s = nan\n", "`resources.retry_backoff_max_s`", "[0, 3600]"),
            ("[resources]\nmin_workers = -2\n", "`resources.min_workers`", "1..=256"),
            ("[semi_supervised]\npatience = -1\n", "`semi_supervised.patience`", "0..=100"),
            ("[train.loss]\nkind = \"ldam\"\ndrw_epoch = 100001\n", "`train.loss.drw_epoch`", "0..=100000"),
        ];
        for (text, field, bound) in cases {
            let error = err(text);
            assert!(error.contains(field) && error.contains(bound), "{text:?}: {error}");
        }
    }

    #[test]
    fn names_paths_and_the_spec_itself_are_bounded() {
        let err = |text: &str| JobSpec::from_toml(text).expect_err("spec must be rejected").to_string();
        let long_name = format!("version = 1\ndataset = \"/d\"\nname = \"{}\"\n", "x".repeat(129));
        assert!(err(&long_name).contains("`name` must be at most 128 characters"));
        assert!(err("version = 1\ndataset = \"/d\"\nname = \"ok\\u001b[2J\"\n").contains("`name` must not contain control characters"));
        let long_path = format!("version = 1\ndataset = \"/{}\"\n", "d".repeat(5000));
        assert!(err(&long_path).contains("`dataset` must be at most 4096 bytes"));
        let huge = format!("version = 1\ndataset = \"/d\"\n# {}\n", "x".repeat(3 << 20));
        assert!(err(&huge).contains("`spec_toml` must be at most 65536 bytes"));
        let name = "é".repeat(128);
        let spec = JobSpec::from_toml(&format!("version = 1\ndataset = \"/d\"\nname = \"{name}\"\n")).expect("128 characters");
        assert_eq!(spec.name, name);
    }

    #[test]
    fn model_options_parse_and_validate() {
        let base = "version = 1\ndataset = \"/d\"\n";
        let spec = JobSpec::from_toml(&format!("{base}[model]\narch = \"resnet18\"\ncbam = true\ninit = \"/w/resnet18.safetensors\"\n")).expect("valid spec");
        assert_eq!(spec.model.arch, Arch::Resnet18);
        assert!(spec.model.cbam);
        assert_eq!(spec.model.init, Some(PathBuf::from("/w/resnet18.safetensors")));
        assert_eq!(JobSpec::from_toml(&spec.to_toml()), Ok(spec));
        let spec = JobSpec::from_toml(&format!("{base}[model]\narch = \"resnet34\"\n")).expect("valid spec");
        assert_eq!((spec.model.arch, spec.model.cbam, spec.model.init), (Arch::Resnet34, false, None));

        let err = |text: &str| JobSpec::from_toml(&format!("{base}{text}")).expect_err("spec must be rejected").to_string();
        assert!(err("[model]\ncbam = true\n").contains("model.cbam"), "compact-cnn takes no CBAM");
        assert!(err("[model]\narch = \"linear\"\ncbam = true\n").contains("model.cbam"));
        assert!(err("[model]\narch = \"resnet18\"\ninit = \"\"\n").contains("model.init"));
        assert!(err("[model]\narch = \"resnet50\"\n").contains("resnet50"));
    }

    #[test]
    fn loss_defaults_to_cross_entropy() {
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n").expect("valid spec");
        assert_eq!(spec.train.loss, LossSpec::default());
        assert_eq!(spec.train.loss.kind, LossKind::Ce);
        let loss = LossSpec::default();
        assert_eq!((loss.label_smoothing, loss.class_weight_beta, loss.focal_gamma), (0.0, 1.0, 2.0));
        assert_eq!((loss.ldam_max_margin, loss.ldam_scale, loss.drw_epoch, loss.drw_beta, loss.la_tau), (0.5, 30.0, 0, 0.9999, 1.0));
        assert_eq!(loss.focal_alpha, None);
        // A table with only the kind takes every default.
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n[train.loss]\nkind = \"ce\"\n").expect("valid spec");
        assert_eq!(spec, JobSpec::for_dataset("/d"));
    }

    #[test]
    fn every_loss_kind_parses_with_its_parameters() {
        let parse = |table: &str| {
            let spec = JobSpec::from_toml(&format!("version = 1\ndataset = \"/d\"\n[train]\nepochs = 30\n[train.loss]\n{table}")).expect("valid spec");
            assert_eq!(JobSpec::from_toml(&spec.to_toml()).as_ref(), Ok(&spec), "round trip of {table}");
            spec.train.loss
        };
        let loss = parse("kind = \"ce\"\nlabel_smoothing = 0.1\n");
        assert_eq!((loss.kind, loss.label_smoothing), (LossKind::Ce, 0.1));
        let loss = parse("kind = \"weighted-ce\"\nclass_weight_beta = 0.5\n");
        assert_eq!((loss.kind, loss.class_weight_beta), (LossKind::WeightedCe, 0.5));
        let loss = parse("kind = \"focal\"\nfocal_gamma = 1.5\nfocal_alpha = [0.25, 1.0, 2.0]\n");
        assert_eq!((loss.kind, loss.focal_gamma, loss.focal_alpha), (LossKind::Focal, 1.5, Some(vec![0.25, 1.0, 2.0])));
        let loss = parse("kind = \"ldam\"\nldam_max_margin = 0.3\nldam_scale = 16\ndrw_epoch = 20\ndrw_beta = 0.999\n");
        assert_eq!((loss.kind, loss.ldam_max_margin, loss.ldam_scale, loss.drw_epoch, loss.drw_beta), (LossKind::Ldam, 0.3, 16.0, 20, 0.999));
        let loss = parse("kind = \"logit-adjusted\"\nla_tau = 0.5\n");
        assert_eq!((loss.kind, loss.la_tau), (LossKind::LogitAdjusted, 0.5));
    }

    #[test]
    fn loss_errors_name_the_field() {
        let err = |table: &str| {
            let text = format!("version = 1\ndataset = \"/d\"\n[train]\nepochs = 10\n{table}");
            JobSpec::from_toml(&text).expect_err("spec must be rejected").to_string()
        };
        let cases = [
            ("[train.loss]\nkind = \"hinge\"\n", "hinge"),
            ("[train.loss]\nfocal_gama = 2\n", "focal_gama"),
            ("[train.loss]\nlabel_smoothing = 1.0\n", "train.loss.label_smoothing"),
            ("[train.loss]\nkind = \"weighted-ce\"\nclass_weight_beta = -1\n", "train.loss.class_weight_beta"),
            ("[train.loss]\nkind = \"focal\"\nfocal_gamma = -0.5\n", "train.loss.focal_gamma"),
            ("[train.loss]\nkind = \"focal\"\nfocal_alpha = []\n", "train.loss.focal_alpha"),
            ("[train.loss]\nkind = \"focal\"\nfocal_alpha = [1.0, -1.0]\n", "train.loss.focal_alpha"),
            ("[train.loss]\nkind = \"focal\"\nfocal_alpha = [0.0, 0.0]\n", "train.loss.focal_alpha"),
            ("[train.loss]\nkind = \"ldam\"\nldam_max_margin = 0\n", "train.loss.ldam_max_margin"),
            ("[train.loss]\nkind = \"ldam\"\nldam_scale = -30\n", "train.loss.ldam_scale"),
            ("[train.loss]\nkind = \"ldam\"\ndrw_epoch = -1\n", "train.loss.drw_epoch"),
            ("[train.loss]\nkind = \"ldam\"\ndrw_epoch = 11\n", "train.loss.drw_epoch"),
            ("[train.loss]\nkind = \"ldam\"\ndrw_beta = 1.0\n", "train.loss.drw_beta"),
            ("[train.loss]\nkind = \"logit-adjusted\"\nla_tau = -1\n", "train.loss.la_tau"),
            // A parameter the chosen kind ignores must keep its default.
            ("[train.loss]\nfocal_gamma = 3\n", "train.loss.focal_gamma"),
            ("[train.loss]\nkind = \"focal\"\nla_tau = 0.5\n", "train.loss.la_tau"),
            ("[train.loss]\nkind = \"ce\"\ndrw_epoch = 5\n", "train.loss.drw_epoch"),
            ("[train.loss]\nkind = \"ldam\"\nclass_weight_beta = 0.5\n", "train.loss.class_weight_beta"),
            ("[train.loss]\nkind = \"focal\"\nlabel_smoothing = 0.1\n", "train.loss.label_smoothing"),
            // Label smoothing is set in one place.
            ("label_smoothing = 0.1\n[train.loss]\nlabel_smoothing = 0.2\n", "train.label_smoothing"),
            ("label_smoothing = 0.1\n[train.loss]\nkind = \"focal\"\n", "train.label_smoothing"),
        ];
        for (table, field) in cases {
            let message = err(table);
            assert!(message.contains(field), "{table:?}: {message:?} should name {field}");
        }
    }

    #[test]
    fn older_label_smoothing_folds_into_the_loss() {
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n[train]\nlabel_smoothing = 0.1\n").expect("valid spec");
        assert_eq!(spec.train.label_smoothing, 0.1);
        assert_eq!(spec.train.effective_loss(), LossSpec { label_smoothing: 0.1, ..LossSpec::default() });
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n[train.loss]\nlabel_smoothing = 0.2\n").expect("valid spec");
        assert_eq!(spec.train.effective_loss().label_smoothing, 0.2);
    }
}
