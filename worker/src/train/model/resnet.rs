//! BasicBlock ResNets (He et al., "Deep Residual Learning for Image Recognition",
//! CVPR 2016) for any channel count and input size, with optional CBAM attention in every
//! block. Variables are named as in torchvision (`conv1`, `bn1`, `layer2.0.downsample.0`,
//! `fc`), so ImageNet weights converted to safetensors load by name through
//! [`super::load_initial_weights`].
//!
//! The stem depends on the image side (the smaller of height and width):
//! - side ≥ 96: the standard 7×7 stride-2 convolution and 3×3 stride-2 max-pool (÷4), as
//!   for ImageNet's 224×224 images;
//! - side < 96: one 3×3 stride-1 convolution and no max-pool, the CIFAR-style stem, so a
//!   48×48 face keeps enough resolution: its feature maps are 48, 48, 24, 12 and 6 pixels
//!   wide after the stem and the four stages (the standard stem would leave 2×2).
//!
//! The head is global average pooling, dropout (`[model] dropout`) and a linear layer.
//! Widths are the standard 64, 128, 256 and 512 channels whatever `[model] width` says.

use super::Network;
use feral_common::spec::ModelSpec;
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::cbam::Cbam;

/// BasicBlocks per stage of ResNet-18.
pub const RESNET18_BLOCKS: [i64; 4] = [2, 2, 2, 2];
/// BasicBlocks per stage of ResNet-34.
pub const RESNET34_BLOCKS: [i64; 4] = [3, 4, 6, 3];
/// Images whose smaller side is below this get the small 3×3 stride-1 stem.
pub const SMALL_STEM_BELOW: i64 = 96;
/// Output channels of the four stages.
const STAGE_WIDTHS: [i64; 4] = [64, 128, 256, 512];

/// What a [`ResNet`] is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    /// BasicBlocks in each of the four stages.
    pub blocks: [i64; 4],
    pub in_channels: i64,
    /// The 3×3 stride-1 stem without max-pool instead of the 7×7 stride-2 one with it.
    pub small_stem: bool,
    pub classes: i64,
    /// Dropout probability before the classifier.
    pub dropout: f64,
    /// CBAM attention in every block.
    pub cbam: bool,
}

impl ResNetConfig {
    /// The network with `blocks` for `[C, H, W]` images, with `spec`'s dropout and CBAM.
    pub fn new(blocks: [i64; 4], image: [i64; 3], classes: i64, spec: &ModelSpec) -> Self {
        Self { blocks, in_channels: image[0], small_stem: image[1].min(image[2]) < SMALL_STEM_BELOW, classes, dropout: spec.dropout, cbam: spec.cbam }
    }
}

impl ResNetConfig {
    /// Floats one `height × width` sample keeps for the backward pass: the stem's
    /// convolution, batch norm and ReLU (and max-pool); per block conv, bn, ReLU, conv, bn,
    /// the sum and its ReLU, three more for CBAM and two for a projection shortcut.
    pub fn activation_floats(&self, [height, width]: [u64; 2]) -> u64 {
        let half = |(h, w): (u64, u64)| (h.div_ceil(2), w.div_ceil(2));
        let mut side = if self.small_stem { (height, width) } else { half((height, width)) };
        let mut floats = 3 * STAGE_WIDTHS[0] as u64 * side.0 * side.1;
        if !self.small_stem {
            side = half(side);
            floats += STAGE_WIDTHS[0] as u64 * side.0 * side.1;
        }
        for (stage, (&channels, &count)) in STAGE_WIDTHS.iter().zip(&self.blocks).enumerate() {
            for index in 0..count {
                // The first block of stages 2 to 4 halves the side and projects its shortcut.
                let projected = stage > 0 && index == 0;
                if projected {
                    side = half(side);
                }
                let per_map = 7 + if self.cbam { 3 } else { 0 } + if projected { 2 } else { 0 };
                floats = floats.saturating_add(per_map * channels as u64 * side.0 * side.1);
            }
        }
        floats
    }
}

/// Two 3×3 convolutions with batch norm on the residual branch (CBAM after the second,
/// before the addition, as in Woo et al.'s Fig. 3), and a 1×1 projection on the shortcut
/// where the shape changes.
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    cbam: Option<Cbam>,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

fn conv(path: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> nn::Conv2D {
    let config = nn::ConvConfig { stride, padding: kernel / 2, bias: false, ..Default::default() };
    nn::conv2d(path, c_in, c_out, kernel, config)
}

impl BasicBlock {
    fn new(path: &nn::Path, c_in: i64, c_out: i64, stride: i64, cbam: bool) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let path = path / "downsample";
            (conv(&path / "0", c_in, c_out, 1, stride), nn::batch_norm2d(&path / "1", c_out, super::batch_norm_config()))
        });
        Self {
            conv1: conv(path / "conv1", c_in, c_out, 3, stride),
            bn1: nn::batch_norm2d(path / "bn1", c_out, super::batch_norm_config()),
            conv2: conv(path / "conv2", c_out, c_out, 3, 1),
            bn2: nn::batch_norm2d(path / "bn2", c_out, super::batch_norm_config()),
            cbam: cbam.then(|| Cbam::new(&(path / "cbam"), c_out)),
            downsample,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut residual = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu().apply(&self.conv2).apply_t(&self.bn2, train);
        if let Some(cbam) = &self.cbam {
            residual = residual.apply(cbam);
        }
        let sum = match &self.downsample {
            Some((conv, bn)) => residual + xs.apply(conv).apply_t(bn, train),
            None => residual + xs,
        };
        sum.relu()
    }
}

/// A BasicBlock ResNet; see the module documentation for its stem and head.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    small_stem: bool,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
    dropout: f64,
}

impl ResNet {
    /// The network `config` describes, its variables under `path`.
    pub fn new(path: &nn::Path, config: &ResNetConfig) -> Self {
        let (kernel, stride) = if config.small_stem { (3, 1) } else { (7, 2) };
        let conv1 = conv(path / "conv1", config.in_channels, STAGE_WIDTHS[0], kernel, stride);
        let mut blocks = Vec::new();
        let mut channels = STAGE_WIDTHS[0];
        for (stage, (&width, &count)) in STAGE_WIDTHS.iter().zip(&config.blocks).enumerate() {
            let layer = path / format!("layer{}", stage + 1);
            for index in 0..count {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(&(&layer / index), channels, width, stride, config.cbam));
                channels = width;
            }
        }
        Self {
            conv1,
            bn1: nn::batch_norm2d(path / "bn1", STAGE_WIDTHS[0], super::batch_norm_config()),
            small_stem: config.small_stem,
            blocks,
            fc: nn::linear(path / "fc", channels, config.classes, Default::default()),
            dropout: config.dropout,
        }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train).dropout(self.dropout, train).apply(&self.fc)
    }
}

impl Network for ResNet {
    fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut features = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        if !self.small_stem {
            features = features.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in &self.blocks {
            features = features.apply_t(block, train);
        }
        features.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    fn feature_dim(&self) -> i64 {
        self.fc.ws.size()[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feral_common::spec::Arch;
    use tch::{Device, Kind};

    fn parameters(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    fn model_spec(arch: Arch, cbam: bool) -> ModelSpec {
        ModelSpec { arch, cbam, ..ModelSpec::default() }
    }

    #[test]
    fn output_shapes_for_small_grayscale_and_larger_colour_faces() {
        let _guard = tch::no_grad_guard();
        for (arch, image) in [(Arch::Resnet18, [1, 48, 48]), (Arch::Resnet18, [3, 112, 112]), (Arch::Resnet34, [1, 48, 48])] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = super::super::build_model(&vs.root(), &model_spec(arch, false), image, 7);
            let input = Tensor::randn([2, image[0], image[1], image[2]], (Kind::Float, Device::Cpu));
            assert_eq!(net.forward_t(&input, false).size(), [2, 7], "{arch:?} on {image:?}");
        }
    }

    #[test]
    fn the_stem_depends_on_the_image_side() {
        let spec = ModelSpec::default();
        assert!(ResNetConfig::new(RESNET18_BLOCKS, [1, 48, 48], 7, &spec).small_stem);
        assert!(ResNetConfig::new(RESNET18_BLOCKS, [3, 224, 64], 7, &spec).small_stem, "the smaller side decides");
        assert!(!ResNetConfig::new(RESNET18_BLOCKS, [3, 96, 96], 7, &spec).small_stem);
        assert!(!ResNetConfig::new(RESNET18_BLOCKS, [3, 112, 112], 7, &spec).small_stem);
    }

    /// torchvision's resnet18 (3 channels, 1000 classes) has 11,689,512 parameters and
    /// resnet34 21,797,672: with the standard stem ours match exactly. The small stem's
    /// 3×3 convolution has 64·3·3·3 = 1,728 weights instead of 64·3·7·7 = 9,408, so
    /// 7,680 fewer: 11,681,832. Batch-norm running statistics are buffers, not parameters.
    #[test]
    fn parameter_counts_match_torchvision() {
        let count = |blocks, image| {
            let vs = nn::VarStore::new(Device::Cpu);
            let _net = ResNet::new(&vs.root(), &ResNetConfig::new(blocks, image, 1000, &ModelSpec::default()));
            parameters(&vs)
        };
        assert_eq!(count(RESNET18_BLOCKS, [3, 224, 224]), 11_689_512);
        assert_eq!(count(RESNET34_BLOCKS, [3, 224, 224]), 21_797_672);
        assert_eq!(count(RESNET18_BLOCKS, [3, 48, 48]), 11_689_512 - 7_680);
        // Grayscale: the stem sees one channel, 64·1·3·3 = 576 weights.
        assert_eq!(count(RESNET18_BLOCKS, [1, 48, 48]), 11_689_512 - 9_408 + 576);
    }

    #[test]
    fn cbam_adds_attention_to_every_block_and_keeps_shapes() {
        let _guard = tch::no_grad_guard();
        let plain = nn::VarStore::new(Device::Cpu);
        let _net = super::super::build_model(&plain.root(), &model_spec(Arch::Resnet18, false), [1, 48, 48], 7);
        let attended = nn::VarStore::new(Device::Cpu);
        let net = super::super::build_model(&attended.root(), &model_spec(Arch::Resnet18, true), [1, 48, 48], 7);
        // Per block of c channels: the shared MLP c→c/16→c with biases, and a 7×7 conv 2→1 with a bias.
        let cbam = |c: i64| (c * (c / 16) + c / 16) + (c / 16 * c + c) + (2 * 49 + 1);
        let expected: i64 = STAGE_WIDTHS.iter().map(|&c| 2 * cbam(c)).sum();
        assert_eq!(parameters(&attended) - parameters(&plain), expected);
        assert!(attended.variables().contains_key("layer3.1.cbam.spatial.weight"));
        let input = Tensor::randn([2, 1, 48, 48], (Kind::Float, Device::Cpu));
        assert_eq!(net.forward_t(&input, false).size(), [2, 7]);
    }
}
