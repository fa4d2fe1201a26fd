//! CBAM, the Convolutional Block Attention Module (Woo, Park, Lee and Kweon, ECCV 2018,
//! arXiv 1807.06521): channel attention, then spatial attention, each a sigmoid mask
//! multiplied into the feature map, so the output has the input's shape.
//!
//! - Channel: M_c = σ(MLP(AvgPool(F)) + MLP(MaxPool(F))), the MLP shared between the two
//!   pooled descriptors, C → C/r → C with a ReLU between and reduction r = 16.
//! - Spatial: M_s = σ(conv7×7([mean over channels; max over channels])), a 2 → 1
//!   convolution with padding 3, as in the paper (the authors' code adds a batch norm there;
//!   we keep the paper's form).

use tch::nn::{self, Module};
use tch::Tensor;

/// The channel reduction of the shared MLP.
pub const REDUCTION: i64 = 16;
/// The spatial attention's kernel size.
const SPATIAL_KERNEL: i64 = 7;

/// Channel then spatial attention over a `[N, C, H, W]` feature map.
#[derive(Debug)]
pub struct Cbam {
    mlp_in: nn::Linear,
    mlp_out: nn::Linear,
    spatial: nn::Conv2D,
}

impl Cbam {
    /// Attention for `channels`-channel maps, its variables `mlp_in`, `mlp_out` and
    /// `spatial` under `path`.
    pub fn new(path: &nn::Path, channels: i64) -> Self {
        let hidden = (channels / REDUCTION).max(1);
        let config = nn::ConvConfig { padding: SPATIAL_KERNEL / 2, ..Default::default() };
        Self {
            mlp_in: nn::linear(path / "mlp_in", channels, hidden, Default::default()),
            mlp_out: nn::linear(path / "mlp_out", hidden, channels, Default::default()),
            spatial: nn::conv2d(path / "spatial", 2, 1, SPATIAL_KERNEL, config),
        }
    }

    fn mlp(&self, descriptor: &Tensor) -> Tensor {
        descriptor.apply(&self.mlp_in).relu().apply(&self.mlp_out)
    }
}

impl Module for Cbam {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (batch, channels) = (xs.size()[0], xs.size()[1]);
        let average = xs.mean_dim([2_i64, 3].as_slice(), false, None);
        let maximum = xs.amax([2, 3], false);
        let channel_mask = (self.mlp(&average) + self.mlp(&maximum)).sigmoid().view([batch, channels, 1, 1]);
        let refined = xs * channel_mask;
        let descriptors = Tensor::cat(&[refined.mean_dim(1, true, None), refined.amax(1, true)], 1);
        let spatial_mask = descriptors.apply(&self.spatial).sigmoid();
        refined * spatial_mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn attention_keeps_the_shape_and_only_rescales() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cbam = Cbam::new(&vs.root(), 32);
        let input = Tensor::rand([3, 32, 6, 5], (Kind::Float, Device::Cpu));
        let output = cbam.forward(&input);
        assert_eq!(output.size(), input.size());
        // Both masks are in (0, 1): every output lies between 0 and its (non-negative) input.
        assert_eq!(output.ge(0.0).all().int64_value(&[]), 1);
        assert_eq!(output.le_tensor(&input).all().int64_value(&[]), 1);
        assert_eq!(vs.variables().len(), 6, "two linear layers and one convolution, each with a bias");
    }
}
