//! Exporting a trained model for inference outside Feral: TorchScript, traced from the
//! model's evaluation-mode forward pass. `torch.jit.load("model.pt")(images)` returns the
//! logits for normalised `[N, C, H, W]` float images (see `model.json`).

use std::path::Path;

use tch::nn::{self, ModuleT};
use tch::{CModule, Device, Kind, Tensor};

/// Traces `net` on an example batch of `image`-shaped inputs and saves it to `path`. The
/// weights become constants of the trace, so `vs` (the store of `net`) is frozen first.
pub fn export_torchscript(vs: &mut nn::VarStore, net: &dyn ModuleT, image: [i64; 3], device: Device, path: &Path) -> Result<(), tch::TchError> {
    vs.freeze();
    let _no_grad = tch::no_grad_guard();
    let example = Tensor::zeros([2, image[0], image[1], image[2]], (Kind::Float, device));
    let mut forward = |inputs: &[Tensor]| vec![net.forward_t(&inputs[0], false)];
    let module = CModule::create_by_tracing("FeralModel", "forward", &[example], &mut forward)?;
    module.save(path)
}

#[cfg(test)]
mod tests {
    use feral_common::spec::ModelSpec;

    use super::*;
    use crate::train::build_model;

    #[test]
    fn the_exported_model_computes_what_the_model_computes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.pt");
        let mut vs = nn::VarStore::new(Device::Cpu);
        let spec = ModelSpec { width: 8, ..ModelSpec::default() };
        let net = build_model(&vs.root(), &spec, [1, 32, 32], 7);
        export_torchscript(&mut vs, net.as_ref(), [1, 32, 32], Device::Cpu, &path).expect("export");

        let loaded = CModule::load(&path).expect("load");
        let images = Tensor::randn([5, 1, 32, 32], (Kind::Float, Device::Cpu));
        let expected = tch::no_grad(|| net.forward_t(&images, false));
        let got = tch::no_grad(|| loaded.forward_ts(&[&images])).expect("forward");
        assert_eq!(got.size(), vec![5, 7], "any batch size works");
        let difference = (got - expected).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "exported logits differ by {difference}");
    }
}
