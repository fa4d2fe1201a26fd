//! From a trained job to a model people use (`feral-model`, behind `feral predict`, `feral
//! eval` and `feral export`): a real job trains on synthetic faces through a real
//! `feral-worker` process; then predictions on the test split add up to `eval`'s
//! confusion matrix, `eval` on the same faces imported with another class order gives the
//! same metrics by class name, the ONNX export computes what `model.pt` computes
//! (onnxruntime), and a `[model] init` that fits only part of the backbone, or is missing,
//! fails its job before training with the reason.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use feral_common::dataset::{Dataset, DatasetWriter, Sample, Split};
use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_proto::v1 as pb;
use serde_json::Value;

mod support;

use support::Cluster;

fn spec(dataset: &Path, model: &str) -> String {
    format!(
        "version = 1\nname = \"use\"\ndataset = {:?}\n\n[model]\nwidth = 8\n{model}\n[train]\nepochs = 12\nbatch_size = 32\nseed = 3\n",
        dataset.display().to_string()
    )
}

/// Generous: a dozen epochs of a small CNN on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(600);

/// `feral-model ARGS`: its stdout, or the test fails with its stderr.
fn feral_model(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_feral-model")).args(args).output()?;
    anyhow::ensure!(output.status.success(), "feral-model {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?)
}

/// `feral-model ARGS`'s error, which must fail.
fn feral_model_error(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_feral-model")).args(args).output()?;
    anyhow::ensure!(!output.status.success(), "feral-model {args:?} succeeded");
    Ok(String::from_utf8(output.stderr)?)
}

/// The `test` split of `original` again, its classes listed in reverse order (as another
/// importer might list them) and every label renumbered to match.
fn reordered_copy(original: &Path, out: &Path) -> anyhow::Result<Vec<String>> {
    let dataset = Dataset::open(original)?;
    let manifest = dataset.manifest();
    let classes: Vec<String> = manifest.classes.iter().rev().cloned().collect();
    let n = classes.len() as i64;
    let test = dataset.read_split(Split::Test)?;
    let mut writer = DatasetWriter::create(out, "reordered", classes.clone(), manifest.image, 1000)?;
    for i in 0..test.len() {
        let sample =
            Sample { pixels: test.image(i), label: n - 1 - test.labels[i], sample_id: i as i64, hidden_label: None, video_id: None, frame_index: None };
        writer.push(Split::Test, sample)?;
    }
    writer.finish("reordered for a test", "-")?;
    Ok(classes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_model_predicts_evaluates_by_class_name_and_exports_to_onnx() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let dataset = root.join("faces");
    let config = SyntheticConfig { samples: 1200, image_size: 24, imbalance_ratio: 1.0, label_noise: 0.0, seed: 5 };
    prepare_synthetic(&dataset, &config, &SyntheticSplits { val_fraction: 0.3, test_fraction: 0.5, labeled_fraction: 1.0, ..SyntheticSplits::default() })?;

    let mut cluster = Cluster::start(root, "user").await?;

    let (done, _) = cluster.run_job(spec(&dataset, ""), LIMIT).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
    let result = done.result.as_ref().expect("a succeeded job has a result");
    assert_eq!(done.model_macro_f1, result.validation.as_ref().map(|v| v.macro_f1), "the job's F1 is the saved model's");
    let model_dir = Path::new(&result.model_path).parent().expect("the model's directory").to_path_buf();
    let model = model_dir.to_str().expect("a UTF-8 path");
    let card: Value = serde_json::from_str(&std::fs::read_to_string(model_dir.join("model.json"))?)?;
    assert_eq!(card["input"]["layout"], "NCHW");
    assert_eq!((card["input"]["channels"].as_u64(), card["input"]["height"].as_u64()), (Some(1), Some(24)));
    assert_eq!(card["files"]["torchscript"], "model.pt");

    // Every test face predicted, and eval's confusion matrix is what the predictions add up to.
    let dataset_arg = dataset.to_str().expect("a UTF-8 path");
    let predictions: Vec<Value> = serde_json::from_str(&feral_model(&["predict", model, dataset_arg, "--split", "test", "--format", "json"])?)?;
    let evaluation: Value = serde_json::from_str(&feral_model(&["eval", model, dataset_arg, "--split", "test", "--format", "json"])?)?;
    let classes: Vec<String> = serde_json::from_value(evaluation["classes"].clone())?;
    let k = classes.len();
    let mut confusion = vec![0u64; k * k];
    for p in &predictions {
        let truth = classes.iter().position(|c| p["label"] == c.as_str()).expect("every test face has a label");
        confusion[truth * k + p["index"].as_u64().expect("an index") as usize] += 1;
    }
    assert_eq!(predictions.len() as u64, evaluation["samples"].as_u64().expect("samples"));
    assert_eq!(serde_json::to_value(&confusion)?, evaluation["confusion"], "predict and eval agree");
    let accuracy = evaluation["accuracy"].as_f64().expect("accuracy");
    assert!(accuracy > 3.0 / k as f64, "the model learnt: test accuracy {accuracy} over {k} classes");
    // The card's test accuracy came from the training code's forward pass, in other batches:
    // the same predictions, but for a face or two on a float tie.
    let carded = card["test"]["accuracy"].as_f64().expect("the card has test metrics");
    assert!((accuracy - carded).abs() <= 2.0 / predictions.len() as f64, "eval {accuracy} against the card's {carded}");

    // The same faces with the classes in another order: the same metrics, class by class.
    let reordered = root.join("reordered");
    let reversed = reordered_copy(&dataset, &reordered)?;
    assert_ne!(reversed, classes);
    let again: Value = serde_json::from_str(&feral_model(&["eval", model, reordered.to_str().expect("UTF-8"), "--format", "json"])?)?;
    for key in ["accuracy", "confusion", "classes"] {
        assert_eq!(again[key], evaluation[key], "{key} by class name");
    }
    // The same scores, summed in another order: equal but for the last bits.
    let scores =
        |v: &Value| -> Vec<f64> { std::iter::once(&v["macro_f1"]).chain(v["per_class_f1"].as_array().expect("F1s")).filter_map(Value::as_f64).collect() };
    let (a, b) = (scores(&again), scores(&evaluation));
    assert!(a.len() == k + 1 && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12), "F1 by class name: {a:?} against {b:?}");
    // A dataset with a class the model does not know is refused, naming it.
    let renamed = root.join("renamed");
    std::fs::create_dir_all(&renamed)?;
    for entry in std::fs::read_dir(&reordered)? {
        let entry = entry?;
        std::fs::copy(entry.path(), renamed.join(entry.file_name()))?;
    }
    let manifest = std::fs::read_to_string(renamed.join("manifest.json"))?.replacen(&format!("\"{}\"", reversed[0]), "\"contempt\"", 1);
    std::fs::write(renamed.join("manifest.json"), manifest)?;
    let error = feral_model_error(&["eval", model, renamed.to_str().expect("UTF-8")])?;
    assert!(error.contains("classes the model does not know: contempt"), "{error}");

    // ONNX: onnxruntime computes what model.pt computes, on the same inputs.
    let onnx = root.join("model.onnx");
    let python = feral_worker::saved::default_python();
    let written = feral_model(&["export", model, "--format", "onnx", "--out", onnx.to_str().expect("UTF-8"), "--python", python.to_str().expect("UTF-8")])?;
    assert!(written.contains("wrote"), "{written}");
    let check = Command::new(&python)
        .arg("-c")
        .arg(
            "import sys, numpy as np, torch, onnxruntime as ort\n\
             x = torch.rand(9, 1, 24, 24) * 2 - 1\n\
             want = torch.jit.load(sys.argv[1]).eval()(x).detach().numpy()\n\
             got = ort.InferenceSession(sys.argv[2]).run(['logits'], {'images': x.numpy()})[0]\n\
             print(float(np.abs(got - want).max()))",
        )
        .arg(model_dir.join("model.pt"))
        .arg(&onnx)
        .output()?;
    anyhow::ensure!(check.status.success(), "the ONNX check failed: {}", String::from_utf8_lossy(&check.stderr));
    let difference: f64 = String::from_utf8(check.stdout)?.trim().parse()?;
    assert!(difference <= 1e-4, "ONNX and TorchScript differ by {difference}");

    // `[model] init`: a file that leaves part of the backbone out is refused before training,
    // unless init_partial; a missing file is "not found".
    let weights = tch::Tensor::read_safetensors(model_dir.join("model.safetensors"))?;
    let dropped = weights.iter().map(|(name, _)| name.clone()).filter(|n| !n.starts_with("classifier.")).min().expect("backbone tensors");
    let backbone = weights.iter().filter(|(n, _)| !n.starts_with("classifier.")).count();
    let partial = root.join("partial.safetensors");
    tch::Tensor::write_safetensors(&weights.iter().filter(|(n, _)| *n != dropped).map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>(), &partial)?;
    let init = |extra: &str| format!("init = {:?}\n{extra}", partial.display().to_string());
    let (refused, _) = cluster.run_job(spec(&dataset, &init("")), LIMIT).await?;
    assert_eq!(refused.state, pb::JobState::Failed as i32);
    let reason = &refused.state_reason;
    assert!(reason.contains(&format!("matches {} of the backbone's {backbone} tensors", backbone - 1)), "{reason}");
    assert!(reason.contains(&format!("{dropped} is not in the file")) && reason.contains("init_partial = true"), "{reason}");
    assert!(refused.epochs.is_empty(), "nothing was trained: {:?}", refused.epochs);
    let (accepted, _) = cluster.run_job(spec(&dataset, &init("init_partial = true\n")), LIMIT).await?;
    assert_eq!(accepted.state, pb::JobState::Succeeded as i32, "{}", accepted.state_reason);
    let (missing, _) = cluster.run_job(spec(&dataset, &format!("init = {:?}\n", root.join("nowhere.safetensors").display().to_string())), LIMIT).await?;
    assert_eq!(missing.state, pb::JobState::Failed as i32);
    let reason = &missing.state_reason;
    assert!(reason.contains("nowhere.safetensors") && reason.contains("does not exist") && !reason.contains("corrupt"), "{reason}");

    cluster.stop().await
}

#[test]
fn a_directory_without_a_model_is_refused_with_a_pointer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let error = feral_model_error(&["eval", dir.path().to_str().expect("UTF-8"), "/nowhere"])?;
    assert!(error.contains("is not a model directory") && error.contains("feral status JOB"), "{error}");
    Ok(())
}
