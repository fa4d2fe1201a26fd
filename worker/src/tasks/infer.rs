//! Pseudo-labelling, step one: the previous round's model predicts one unlabelled shard
//! (each image and its mirror image, logits averaged). On video datasets the previous
//! round's temporal encoder (saved beside its model) predicts instead, from the features of each frame's window within
//! the shard, so that pseudo-labels are smoothed over time. The logits go to a predictions file
//! in the round's directory; the coordinator gets only the shard's per-class sums of
//! predicted probabilities, from which it computes the pool's class prior exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use feral_common::dataset::{read_shard, Dataset, Split};
use tch::nn;
use tch::{Device, Kind, Tensor};

use feral_common::task::InferPartial;

use crate::artifacts::{create_dir, load_var_store, write_atomically};
use crate::collective::Single;
use crate::error::TaskError;
use crate::task::TaskContext;
use crate::train::{build_model, temporal, to_tensors};

/// The predictions file of `shard` in `round_dir`.
fn predictions_path(round_dir: &Path, shard: &str) -> PathBuf {
    round_dir.join(format!("pred-{}", shard))
}

pub fn infer(context: &TaskContext, model_path: &Path, shard: &str, stop: &AtomicBool) -> Result<InferPartial, TaskError> {
    let dataset = Dataset::open(&context.spec.dataset)?;
    let manifest = dataset.manifest();
    let info = dataset
        .split(Split::Unlabeled)?
        .shards
        .iter()
        .find(|s| s.file == shard)
        .ok_or_else(|| TaskError::UnusableDataset { dir: context.spec.dataset.clone(), problem: format!("it has no unlabeled shard {shard}") })?;
    let data = read_shard(dataset.dir(), info, manifest.image, manifest.classes.len(), true)?;
    let classes = manifest.classes.len();

    let vs = nn::VarStore::new(context.device);
    let image = [manifest.image.channels as i64, manifest.image.height as i64, manifest.image.width as i64];
    let net = build_model(&vs.root(), &context.spec.model, image, classes as i64);
    load_var_store(&vs, model_path, "round's model")?;
    let _no_grad = tch::no_grad_guard();
    let encoder_path = model_path.with_file_name(temporal::FILE);
    // A round trains an encoder when its train split has videos; a pool with videos beside
    // a train split without them is predicted frame by frame.
    let logits = if temporal::wanted(&context.spec, &data) && encoder_path.is_file() {
        let window = context.spec.semi_supervised.temporal_window;
        let (_vs, encoder) = temporal::load(&encoder_path, net.feature_dim(), window, classes as i64, context.device)?;
        temporal::Windows::extract(net.as_ref(), &data, window, context.device, &mut Single)?.predict(&encoder)
    } else {
        let mut all_logits = Vec::with_capacity(data.len());
        let indices: Vec<usize> = (0..data.len()).collect();
        for chunk in indices.chunks(256) {
            if stop.load(Ordering::Relaxed) {
                return Err(TaskError::Stopped);
            }
            let (images, _) = to_tensors(&data, chunk, &data.labels, context.device, None);
            let logits = (net.forward_t(&images, false) + net.forward_t(&images.flip([3]), false)) / 2.0;
            all_logits.push(logits.to_device(Device::Cpu));
        }
        Tensor::cat(&all_logits, 0)
    }
    .to_kind(Kind::Float);
    let sums = logits.softmax(-1, Kind::Double).sum_dim_intlist(0, false, Kind::Double);

    let round_dir = context.round_dir();
    create_dir(&round_dir)?;
    let predictions_file = predictions_path(&round_dir, shard);
    let mut tensors = vec![("sample_ids", Tensor::from_slice(&data.sample_ids)), ("logits", logits)];
    if let Some(hidden) = &data.hidden_labels {
        tensors.push(("hidden_labels", Tensor::from_slice(hidden)));
    }
    write_atomically(&predictions_file, |p| Tensor::write_safetensors(&tensors, p))?;
    let probability_sums = Vec::<f64>::try_from(&sums)?;
    Ok(InferPartial { probability_sums, samples: data.len() as u64, predictions_file: predictions_file.display().to_string() })
}
