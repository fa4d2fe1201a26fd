//! The networks a job can train, chosen by `[model] arch`: a compact CNN for small
//! grayscale faces (the default), softmax regression (a baseline with no batch statistics),
//! and BasicBlock ResNet-18/34 with optional CBAM attention ([`resnet`], [`cbam`]). Every
//! network's variables sit under the path it is given, with stable names: saved models
//! and checkpoints depend on them. [`load_initial_weights`] starts a model from a
//! `.safetensors` file (`[model] init`), loading what matches by name and shape.

pub mod cbam;
pub mod resnet;
mod weights;

use feral_common::spec::{Arch, ModelSpec};
use tch::nn::{self, ModuleT};
use tch::Tensor;

pub use weights::{check_initial_weights, load_initial_weights, InitError};

/// PyTorch's default initialisation of convolution and linear weights (`kaiming_uniform_`
/// with `a = √5`): uniform in ±1/√fan_in. tch's own default is He's (±√(6/fan_in)), √6 ≈ 2.45
/// times larger, and AdamW's steps of about the learning rate then move every weight that a
/// batch norm follows 2.45 times less relative to its size: the same job learned
/// measurably slower than in PyTorch (BENCHMARKS.md, "Time to accuracy").
pub const TORCH_DEFAULT_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Uniform,
    fan: nn::init::FanInOut::FanIn,
    non_linearity: nn::init::NonLinearity::ExplicitGain(0.577_350_269_189_625_8),
};

/// Batch norm as PyTorch starts it: scale 1, shift 0. (tch draws each scale uniformly from
/// [0, 1), which starts many channels near zero.)
pub fn batch_norm_config() -> nn::BatchNormConfig {
    nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() }
}

/// [`nn::LinearConfig`] with PyTorch's default weights (its bias is already PyTorch's).
pub fn linear_config() -> nn::LinearConfig {
    nn::LinearConfig { ws_init: TORCH_DEFAULT_INIT, ..Default::default() }
}

/// A classifier whose penultimate features can be read: what the temporal encoder sees.
/// `forward_t` is `classifier(dropout(features_t(x)))`.
pub trait Network: ModuleT {
    /// The pooled features before dropout and the classifier, N×[`Network::feature_dim`].
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor;
    fn feature_dim(&self) -> i64;
}

/// The network `spec` describes for `[C, H, W]` images, its variables under `path`.
pub fn build_model(path: &nn::Path, spec: &ModelSpec, image: [i64; 3], classes: i64) -> Box<dyn Network> {
    match spec.arch {
        Arch::CompactCnn => Box::new(CompactCnn::new(path, image[0], classes, i64::from(spec.width), spec.dropout)),
        Arch::Linear => Box::new(Linear::new(path, image.iter().product(), classes)),
        Arch::Resnet18 => Box::new(resnet::ResNet::new(path, &resnet::ResNetConfig::new(resnet::RESNET18_BLOCKS, image, classes, spec))),
        Arch::Resnet34 => Box::new(resnet::ResNet::new(path, &resnet::ResNetConfig::new(resnet::RESNET34_BLOCKS, image, classes, spec))),
    }
}

/// Floats one training sample's forward pass through the network `spec` describes keeps
/// for the backward pass (each convolution, normalisation and activation output). A
/// step needs at least this times its batch, in 4-byte floats: what the worker checks
/// before it allocates (see [`super::memory`]).
pub fn activation_floats(spec: &ModelSpec, image: [i64; 3]) -> u64 {
    let [channels, height, width] = image.map(|d| d.max(1) as u64);
    match spec.arch {
        Arch::Linear => channels * height * width,
        Arch::CompactCnn => {
            let (mut floats, mut side) = (0u64, (height, width));
            for out in [1, 2, 4].map(|m| u64::from(spec.width) * m) {
                // Two convolutions with batch norm and ReLU, then the 2×2 max-pool's output.
                floats = floats.saturating_add(6 * out * side.0 * side.1);
                side = (side.0 / 2, side.1 / 2);
                floats = floats.saturating_add(out * side.0 * side.1);
            }
            floats
        }
        Arch::Resnet18 => resnet::ResNetConfig::new(resnet::RESNET18_BLOCKS, image, 1, spec).activation_floats([height, width]),
        Arch::Resnet34 => resnet::ResNetConfig::new(resnet::RESNET34_BLOCKS, image, 1, spec).activation_floats([height, width]),
    }
}

/// Lays every 4-D variable of `vs` (convolution weights) out channels-last, like the input
/// batches, keeping its values and shape: with bf16, cuDNN's fastest convolutions on
/// tensor cores want NHWC. Done on CUDA only; the CPU keeps libtorch's default layout.
pub fn use_channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut variable) in vs.variables() {
            if variable.dim() == 4 {
                let nhwc = variable.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                variable.set_data(&nhwc);
            }
        }
    });
}

/// Softmax regression on the flattened pixels (its "features" are the pixels).
#[derive(Debug)]
pub struct Linear {
    classifier: nn::Linear,
    inputs: i64,
}

impl Linear {
    pub fn new(path: &nn::Path, inputs: i64, classes: i64) -> Self {
        Self { classifier: nn::linear(path / "classifier", inputs, classes, Default::default()), inputs }
    }
}

impl ModuleT for Linear {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train).apply(&self.classifier)
    }
}

impl Network for Linear {
    fn features_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        xs.flatten(1, -1)
    }

    fn feature_dim(&self) -> i64 {
        self.inputs
    }
}

/// Three stages of two 3×3 convolutions (batch norm, ReLU) and a 2×2 max-pool, widths
/// `w, 2w, 4w`, then global average pooling, dropout and a linear classifier. About
/// 0.3 M parameters at `w = 32`; any input size of at least 8×8 works.
#[derive(Debug)]
pub struct CompactCnn {
    body: nn::SequentialT,
    dropout: f64,
    classifier: nn::Linear,
    channels: i64,
}

impl CompactCnn {
    pub fn new(path: &nn::Path, in_channels: i64, classes: i64, width: i64, dropout: f64) -> Self {
        let mut body = nn::seq_t();
        let mut channels = in_channels;
        for (stage, out) in [width, width * 2, width * 4].into_iter().enumerate() {
            for conv in 0..2 {
                let name = format!("stage{stage}_conv{conv}");
                let config = nn::ConvConfig { padding: 1, bias: false, ws_init: TORCH_DEFAULT_INIT, ..Default::default() };
                body = body
                    .add(nn::conv2d(path / name.as_str(), channels, out, 3, config))
                    .add(nn::batch_norm2d(path / format!("{name}_bn").as_str(), out, batch_norm_config()))
                    .add_fn(Tensor::relu);
                channels = out;
            }
            body = body.add_fn(|x| x.max_pool2d_default(2));
        }
        let body = body.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        let classifier = nn::linear(path / "classifier", channels, classes, linear_config());
        Self { body, dropout, classifier, channels }
    }
}

impl ModuleT for CompactCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train).dropout(self.dropout, train).apply(&self.classifier)
    }
}

impl Network for CompactCnn {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply_t(&self.body, train)
    }

    fn feature_dim(&self) -> i64 {
        self.channels
    }
}

/// Every variable of `vs`, in name order (the same on every rank).
pub fn by_name(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn spec(arch: Arch) -> ModelSpec {
        ModelSpec { arch, ..ModelSpec::default() }
    }

    #[test]
    fn channels_last_weights_keep_their_values_and_outputs() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build_model(&vs.root(), &spec(Arch::CompactCnn), [1, 16, 16], 7);
        let images = Tensor::randn([2, 1, 16, 16], (Kind::Float, Device::Cpu));
        let before = net.forward_t(&images, false);
        use_channels_last(&vs);
        let weight = &vs.variables()["stage1_conv0.weight"];
        let [o, i, h, w] = weight.size()[..] else { panic!("4-D") };
        assert_eq!(weight.stride(), [h * w * i, 1, w * i, i], "channels-last strides");
        assert_eq!(weight.size(), [o, i, h, w]);
        assert!(net.forward_t(&images, false).allclose(&before, 1e-5, 1e-5, false));
    }

    #[test]
    fn compact_cnn_and_linear_keep_their_variable_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build_model(&vs.root(), &spec(Arch::CompactCnn), [1, 48, 48], 7);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names.len(), 6 * 5 + 2, "six convolutions with batch norm, one classifier");
        for name in ["stage0_conv0.weight", "stage2_conv1_bn.running_var", "classifier.weight", "classifier.bias"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let images = Tensor::zeros([2, 1, 48, 48], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&images, false).size(), [2, 7]);
        assert_eq!(net.features_t(&images, false).size(), [2, net.feature_dim()]);
        assert_eq!(net.feature_dim(), 4 * i64::from(ModelSpec::default().width));

        let vs = nn::VarStore::new(Device::Cpu);
        let net = build_model(&vs.root(), &spec(Arch::Linear), [1, 8, 8], 3);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names, ["classifier.bias", "classifier.weight"]);
        assert_eq!(net.forward_t(&Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu)), false).size(), [2, 3]);
    }

    #[test]
    fn the_compact_cnn_starts_as_pytorch_starts_it() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = build_model(&vs.root(), &spec(Arch::CompactCnn), [1, 48, 48], 7);
        let variables = vs.variables();
        for (name, fan_in) in [("stage0_conv0.weight", 9.0), ("stage2_conv1.weight", 128.0 * 9.0), ("classifier.weight", 128.0)] {
            let weight = &variables[name];
            let bound = 1.0 / f64::sqrt(fan_in);
            let largest = weight.abs().max().double_value(&[]);
            assert!(largest <= bound && largest > 0.9 * bound, "{name}: uniform in ±{bound}, largest {largest}");
            let std = weight.std(true).double_value(&[]);
            assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.15, "{name}: std {std} for ±{bound}");
        }
        for name in ["stage0_conv0_bn.weight", "stage2_conv1_bn.weight"] {
            assert!(variables[name].eq(1.0).all().int64_value(&[]) == 1, "{name}: batch-norm scales start at 1");
        }
    }
}
