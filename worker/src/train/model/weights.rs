//! Starting a model from saved weights (`[model] init`): a partial load by name and shape,
//! so a file saved from another head, another input channel count or another stem (e.g.
//! torchvision's ImageNet ResNet-18 converted to safetensors) still gives every layer it
//! can. Tensors are converted to the variable's device and precision.

use std::path::Path;

use tch::nn;

use crate::artifacts::{read_tensors, ArtifactError};

/// Copies into `vs` every tensor of the `.safetensors` file at `path` whose name and shape
/// match a variable, and returns how many did. A file that cannot be read, or that matches
/// no variable at all, is an error naming the file.
pub fn load_initial_weights(vs: &mut nn::VarStore, path: &Path) -> Result<usize, ArtifactError> {
    let corrupt = |problem: String| ArtifactError::corrupt(path, problem);
    let file = path.display();
    let tensors = read_tensors(path, feral_common::files::MAX_TENSORS_BYTES, "model to start from (`[model] init`)")?;
    let variables = vs.variables();
    let _no_grad = tch::no_grad_guard();
    let (mut matched, mut wrong_shape) = (0, Vec::new());
    for (name, source) in &tensors {
        let Some(variable) = variables.get(name) else { continue };
        if variable.size() != source.size() {
            wrong_shape.push(format!("{name} {:?} (model {:?})", source.size(), variable.size()));
            continue;
        }
        let converted = source
            .f_to_device(variable.device())
            .and_then(|t| t.f_to_kind(variable.kind()))
            .map_err(|e| corrupt(format!("cannot convert {name} of initial weights {file}: {e}")))?;
        variable.shallow_clone().f_copy_(&converted).map_err(|e| corrupt(format!("cannot load {name} of initial weights {file}: {e}")))?;
        matched += 1;
    }
    if matched == 0 {
        return Err(corrupt(format!(
            "initial weights {file} match no variable of the model by name and shape ({} tensors in the file, {} variables in the model)",
            tensors.len(),
            variables.len()
        )));
    }
    tracing::info!(file = %file, matched, variables = variables.len(), tensors = tensors.len(), "loaded initial weights");
    if !wrong_shape.is_empty() {
        tracing::info!(file = %file, skipped = ?wrong_shape, "initial weights with a different shape were not loaded");
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::build_model;
    use feral_common::spec::{Arch, ModelSpec};
    use tch::nn::ModuleT;
    use tch::{Device, Kind, Tensor};

    fn resnet(seed: i64, image: [i64; 3], classes: i64) -> (nn::VarStore, Box<dyn ModuleT>) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ModelSpec { arch: Arch::Resnet18, cbam: true, ..ModelSpec::default() };
        let net = build_model(&vs.root(), &spec, image, classes);
        (vs, net)
    }

    #[test]
    fn saved_weights_load_into_a_fresh_model_whole() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("model.safetensors");
        let (saved, net) = resnet(1, [1, 48, 48], 7);
        // A training-mode pass moves the batch-norm running statistics away from 0 and 1.
        let _ = net.forward_t(&Tensor::randn([4, 1, 48, 48], (Kind::Float, Device::Cpu)), true);
        saved.save(&file).expect("model saved");

        let (mut fresh, fresh_net) = resnet(2, [1, 48, 48], 7);
        let input = Tensor::randn([2, 1, 48, 48], (Kind::Float, Device::Cpu));
        let expected = tch::no_grad(|| net.forward_t(&input, false));
        assert!(!tch::no_grad(|| fresh_net.forward_t(&input, false)).allclose(&expected, 1e-5, 1e-6, false), "different seeds differ");
        assert_eq!(load_initial_weights(&mut fresh, &file).expect("loads"), fresh.variables().len());
        assert!(tch::no_grad(|| fresh_net.forward_t(&input, false)).allclose(&expected, 0.0, 0.0, false));
    }

    #[test]
    fn only_matching_names_and_shapes_load() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("model.safetensors");
        let (saved, _net) = resnet(1, [1, 48, 48], 7);
        saved.save(&file).expect("model saved");

        // Another head: fc.weight and fc.bias have other shapes.
        let (mut other_head, _net) = resnet(2, [1, 48, 48], 5);
        assert_eq!(load_initial_weights(&mut other_head, &file).expect("loads"), other_head.variables().len() - 2);
        // Colour input too: conv1.weight is [64, 3, 3, 3], not [64, 1, 3, 3].
        let (mut colour, _net) = resnet(2, [3, 48, 48], 5);
        assert_eq!(load_initial_weights(&mut colour, &file).expect("loads"), colour.variables().len() - 3);
        let loaded = colour.variables();
        assert!(loaded["layer1.0.conv1.weight"].equal(&saved.variables()["layer1.0.conv1.weight"]));
    }

    #[test]
    fn a_file_without_matches_or_unreadable_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("resnet.safetensors");
        let (saved, _net) = resnet(1, [1, 48, 48], 7);
        saved.save(&file).expect("model saved");
        let mut compact = nn::VarStore::new(Device::Cpu);
        let _net = build_model(&compact.root(), &ModelSpec::default(), [1, 48, 48], 7);
        let error = load_initial_weights(&mut compact, &file).expect_err("no variable matches").to_string();
        assert!(error.contains("resnet.safetensors") && error.contains("match no variable"), "{error}");

        let missing = dir.path().join("missing.safetensors");
        let error = load_initial_weights(&mut compact, &missing).expect_err("no such file").to_string();
        assert!(error.contains("missing.safetensors"), "{error}");
    }
}
