//! Starting a model from saved weights (`[model] init`): a partial load by name and shape,
//! so a file saved from another head, another input channel count or another stem (e.g.
//! torchvision's ImageNet ResNet-18 converted to safetensors) still gives every layer it
//! can. Tensors are converted to the variable's device and precision.

use std::path::{Path, PathBuf};

use feral_common::spec::ModelSpec;
use tch::nn;

use crate::artifacts::{read_tensors, ArtifactError};

/// Why `[model] init` cannot start the model.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("`[model] init` file {0} not found")]
    NotFound(PathBuf),
    #[error(transparent)]
    Unreadable(#[from] ArtifactError),
    #[error(
        "`[model] init` file {path} matches {matched} of the backbone's {backbone} tensors by name and shape; the first it does not: {first} (set `[model] init_partial = true` to train from the tensors that match)"
    )]
    Partial { path: PathBuf, matched: usize, backbone: usize, first: String },
    #[error(
        "`[model] init` file {path} matches no variable of the model by name and shape ({tensors} tensors in the file, {variables} variables in the model)"
    )]
    NoMatch { path: PathBuf, tensors: usize, variables: usize },
}

/// The variables of the classifier head, which a model for other classes does not share:
/// what `init` need not match.
fn is_head(name: &str) -> bool {
    name.starts_with("classifier.") || name.starts_with("fc.")
}

/// Copies into `vs` every tensor of the `.safetensors` file at `path` whose name and shape
/// match a variable, and returns how many did. Unless `partial`, the file must match every
/// variable of the backbone (all but the classifier head; every variable of a model that
/// is only a head); otherwise nothing is loaded and the error names the first variable it
/// misses. A file that is missing, cannot be read, or matches no variable is an error
/// naming it.
pub fn load_initial_weights(vs: &mut nn::VarStore, path: &Path, partial: bool) -> Result<usize, InitError> {
    let corrupt = |problem: String| ArtifactError::corrupt(path, problem);
    let file = path.display();
    if !path.exists() {
        return Err(InitError::NotFound(path.to_path_buf()));
    }
    let tensors = read_tensors(path, feral_common::files::MAX_TENSORS_BYTES, "model to start from (`[model] init`)")?;
    let tensors: std::collections::BTreeMap<_, _> = tensors.into_iter().collect();
    let variables = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let backbone: Vec<&String> = if names.iter().all(|n| is_head(n)) { names.clone() } else { names.iter().copied().filter(|n| !is_head(n)).collect() };
    let fits = |name: &str| tensors.get(name).is_some_and(|t| t.size() == variables[name].size());
    let matched_backbone = backbone.iter().filter(|n| fits(n)).count();
    if !partial && matched_backbone < backbone.len() {
        let first = backbone.iter().find(|n| !fits(n)).expect("a backbone variable does not fit");
        let first = match tensors.get(first.as_str()) {
            Some(t) => format!("{first} is {:?} in the file, {:?} in the model", t.size(), variables[first.as_str()].size()),
            None => format!("{first} is not in the file"),
        };
        if names.iter().any(|n| fits(n)) {
            return Err(InitError::Partial { path: path.to_path_buf(), matched: matched_backbone, backbone: backbone.len(), first });
        }
    }
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
        return Err(InitError::NoMatch { path: path.to_path_buf(), tensors: tensors.len(), variables: variables.len() });
    }
    tracing::info!(file = %file, matched, variables = variables.len(), tensors = tensors.len(), "loaded initial weights");
    if !wrong_shape.is_empty() {
        tracing::info!(file = %file, skipped = ?wrong_shape, "initial weights with a different shape were not loaded");
    }
    Ok(matched)
}

/// Whether `[model] init` of `spec` starts the model a dataset of `image` shape and
/// `classes` classes gives, checked on a CPU copy before anything is trained (the job's
/// preparing step): the same errors as [`load_initial_weights`] at the round's start.
pub fn check_initial_weights(spec: &ModelSpec, image: [i64; 3], classes: i64) -> Result<(), InitError> {
    let Some(path) = &spec.init else { return Ok(()) };
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let _net = super::build_model(&vs.root(), spec, image, classes);
    load_initial_weights(&mut vs, path, spec.init_partial).map(drop)
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
        assert_eq!(load_initial_weights(&mut fresh, &file, false).expect("loads"), fresh.variables().len());
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
        assert_eq!(load_initial_weights(&mut other_head, &file, false).expect("loads"), other_head.variables().len() - 2);
        // Colour input too: conv1.weight is [64, 3, 3, 3], not [64, 1, 3, 3].
        let (mut colour, _net) = resnet(2, [3, 48, 48], 5);
        let before = colour.variables()["layer1.0.conv1.weight"].copy();
        let error = load_initial_weights(&mut colour, &file, false).expect_err("a partial match is refused").to_string();
        let backbone = colour.variables().len() - 2;
        assert!(error.contains(&format!("matches {} of the backbone's {backbone} tensors", backbone - 1)), "{error}");
        assert!(error.contains("conv1.weight is [64, 1, 3, 3] in the file, [64, 3, 3, 3] in the model") && error.contains("init_partial"), "{error}");
        assert!(colour.variables()["layer1.0.conv1.weight"].equal(&before), "a refused file loads nothing");
        assert_eq!(load_initial_weights(&mut colour, &file, true).expect("loads"), colour.variables().len() - 3);
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
        let error = load_initial_weights(&mut compact, &file, false).expect_err("no variable matches").to_string();
        assert!(error.contains("resnet.safetensors") && error.contains("matches no variable"), "{error}");

        let missing = dir.path().join("missing.safetensors");
        let error = load_initial_weights(&mut compact, &missing, true).expect_err("no such file").to_string();
        assert!(error.contains("missing.safetensors") && error.ends_with("not found") && !error.contains("corrupt"), "{error}");
        std::fs::write(&missing, b"not tensors").expect("write");
        let error = load_initial_weights(&mut compact, &missing, true).expect_err("not safetensors").to_string();
        assert!(error.contains("missing.safetensors") && error.contains("corrupt"), "{error}");
    }
}
