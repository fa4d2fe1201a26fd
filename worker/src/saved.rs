//! Using a model a job saved, outside any job: the `feral-model` binary behind `feral
//! predict`, `feral eval` and `feral export`. A model directory holds `model.json` (the
//! card: files, input shape and normalisation, class names in output order, scores),
//! `model.pt` (TorchScript, what runs here) and `model.safetensors`. Inputs are scaled as
//! the card says, so a model is used exactly as it was trained; datasets are matched to
//! the model by class name, never by index.

use std::path::{Path, PathBuf};
use std::process::Command;

use feral_common::dataset::{Dataset, DatasetError, ImageShape, Split};
use feral_common::files;
use feral_common::metrics::{ConfusionMatrix, MetricsSummary};
use tch::{CModule, Device, Kind, Tensor};

use crate::train::card::{ModelCard, CARD_FORMAT};

/// Images per forward pass.
const BATCH: usize = 256;
/// The largest `model.json` read.
const MAX_CARD_BYTES: u64 = 16 << 20;

/// Why a saved model could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{0} is not a model directory: it has no model.json (`feral status JOB` prints where the job's model is)")]
    NotAModel(PathBuf),
    #[error("cannot read the model card {path}: {problem}")]
    Card { path: PathBuf, problem: String },
    #[error("cannot load the TorchScript model {path}: {source}")]
    Load { path: PathBuf, source: tch::TchError },
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("image {path} {problem}")]
    Image { path: PathBuf, problem: String },
    #[error("{0} holds no JPEG or PNG image")]
    NoImages(PathBuf),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("dataset {dataset} has no `{split}` split (it has: {has})")]
    NoSplit { dataset: PathBuf, split: Split, has: String },
    #[error("dataset {dataset} has images of {dataset_shape}, the model takes {model_shape}")]
    Shape { dataset: PathBuf, dataset_shape: String, model_shape: String },
    #[error("dataset {dataset} has classes the model does not know: {missing} (the model's: {known})")]
    UnknownClasses { dataset: PathBuf, missing: String, known: String },
    #[error("dataset {dataset}'s `{split}` split has no labels to evaluate against")]
    Unlabelled { dataset: PathBuf, split: Split },
    #[error("ONNX export failed: {0}")]
    Export(String),
}

/// A saved model, loaded for inference on the CPU.
pub struct SavedModel {
    dir: PathBuf,
    card: ModelCard,
    module: CModule,
}

/// One input's prediction: the model's class and the probability of every class.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prediction {
    /// The image file, or `split:index` for a dataset's sample.
    pub input: String,
    /// The sample's own label (by name) where a dataset gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub class: String,
    pub index: usize,
    pub probability: f64,
    /// Every class's probability, in the model's class order.
    pub probabilities: Vec<f64>,
}

/// A model's metrics on a dataset split, over the model's classes in its output order.
#[derive(Debug, serde::Serialize)]
pub struct Evaluation {
    pub dataset: PathBuf,
    pub split: Split,
    pub classes: Vec<String>,
    pub samples: u64,
    pub accuracy: f64,
    /// The mean F1 over the classes the dataset has (all of the model's, usually).
    pub macro_f1: f64,
    pub per_class_f1: Vec<f64>,
    /// Row-major, `confusion[truth * classes + predicted]`, in the model's class order.
    pub confusion: Vec<u64>,
}

impl SavedModel {
    /// Opens the model in `path`: its directory, or any file in it (`model.json`,
    /// `model.pt`, `model.safetensors` as `feral status` prints it).
    pub fn open(path: &Path) -> Result<Self, SavedError> {
        let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
        let card_path = dir.join("model.json");
        if !card_path.is_file() {
            return Err(SavedError::NotAModel(path.to_path_buf()));
        }
        let problem = |problem: String| SavedError::Card { path: card_path.clone(), problem };
        let text = files::read_text(&card_path, MAX_CARD_BYTES, "model card").map_err(|e| problem(e.to_string()))?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| problem(e.to_string()))?;
        if card.format != CARD_FORMAT {
            return Err(problem(format!("format {} is not the {CARD_FORMAT} this feral reads", card.format)));
        }
        let module_path = dir.join(&card.files.torchscript);
        let mut module = CModule::load_on_device(&module_path, Device::Cpu).map_err(|source| SavedError::Load { path: module_path.clone(), source })?;
        module.set_eval();
        Ok(Self { dir, card, module })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn classes(&self) -> &[String] {
        &self.card.classes
    }

    /// The image shape the model takes.
    pub fn shape(&self) -> ImageShape {
        self.card.input.shape()
    }

    /// The class probabilities of `count` images, `pixels` holding them one after another
    /// as height × width × channels bytes.
    pub fn probabilities(&self, pixels: &[u8], count: usize) -> Result<Vec<Vec<f64>>, SavedError> {
        let shape = self.shape();
        let (h, w, c) = (i64::from(shape.height), i64::from(shape.width), i64::from(shape.channels));
        let image_bytes = shape.pixels();
        let _no_grad = tch::no_grad_guard();
        let mut out = Vec::with_capacity(count);
        for start in (0..count).step_by(BATCH) {
            let n = BATCH.min(count - start);
            let bytes = &pixels[start * image_bytes..(start + n) * image_bytes];
            let images =
                Tensor::from_slice(bytes).view([n as i64, h, w, c]).permute([0, 3, 1, 2]).to_kind(Kind::Float) * self.card.input.scale + self.card.input.offset;
            let logits = self.module.forward_ts(&[images])?;
            let probabilities = logits.to_kind(Kind::Double).softmax(-1, Kind::Double);
            out.extend(Vec::<Vec<f64>>::try_from(probabilities)?);
        }
        Ok(out)
    }

    fn prediction(&self, input: String, label: Option<String>, probabilities: Vec<f64>) -> Prediction {
        let (index, probability) = most_likely(&probabilities);
        Prediction { input, label, class: self.card.classes[index].clone(), index, probability, probabilities }
    }

    /// Predictions for image files (JPEG or PNG) and folders of them (searched
    /// recursively, in path order). An image of another size or colour than the model's is
    /// refused unless `resize`.
    pub fn predict_images(&self, inputs: &[PathBuf], resize: bool) -> Result<Vec<Prediction>, SavedError> {
        let mut paths = Vec::new();
        for input in inputs {
            if input.is_dir() {
                let found = feral_common::import::list_image_files(input).map_err(|e| SavedError::Image { path: input.clone(), problem: e.to_string() })?;
                if found.is_empty() {
                    return Err(SavedError::NoImages(input.clone()));
                }
                paths.extend(found);
            } else {
                paths.push(input.clone());
            }
        }
        let mut pixels = Vec::with_capacity(paths.len() * self.shape().pixels());
        for path in &paths {
            let image = feral_common::import::read_image_as(path, self.shape(), resize).map_err(|problem| SavedError::Image { path: path.clone(), problem })?;
            pixels.extend(image);
        }
        let probabilities = self.probabilities(&pixels, paths.len())?;
        Ok(paths.iter().zip(probabilities).map(|(path, p)| self.prediction(path.display().to_string(), None, p)).collect())
    }

    /// Predictions for every sample of a prepared dataset's `split`, each with its label.
    pub fn predict_split(&self, dataset: &Path, split: Split) -> Result<Vec<Prediction>, SavedError> {
        let (data, names) = self.read_split(dataset, split)?;
        let probabilities = self.probabilities(&data.images.to_vec(), data.len())?;
        Ok(probabilities
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let label = usize::try_from(data.labels[i]).ok().and_then(|l| names.get(l)).cloned();
                self.prediction(format!("{split}:{i}"), label, p)
            })
            .collect())
    }

    /// Accuracy, macro-F1, per-class F1 and the confusion matrix on a dataset's `split`,
    /// its classes matched to the model's by name.
    pub fn evaluate(&self, dataset: &Path, split: Split) -> Result<Evaluation, SavedError> {
        let (data, names) = self.read_split(dataset, split)?;
        let to_model: Vec<usize> = names.iter().map(|name| self.class_index(name).expect("checked by read_split")).collect();
        let probabilities = self.probabilities(&data.images.to_vec(), data.len())?;
        let classes = self.classes().len();
        let mut confusion = ConfusionMatrix::new(classes);
        let mut labelled = 0;
        for (label, p) in data.labels.iter().zip(&probabilities) {
            let Some(&truth) = usize::try_from(*label).ok().and_then(|l| to_model.get(l)) else { continue };
            let predicted = most_likely(p).0;
            confusion.record(truth as i64, predicted as i64);
            labelled += 1;
        }
        if labelled == 0 {
            return Err(SavedError::Unlabelled { dataset: dataset.to_path_buf(), split });
        }
        let MetricsSummary { accuracy, per_class_f1, confusion: counts, samples, .. } = confusion.summary();
        let macro_f1 = to_model.iter().map(|&c| per_class_f1[c]).sum::<f64>() / to_model.len() as f64;
        Ok(Evaluation { dataset: dataset.to_path_buf(), split, classes: self.classes().to_vec(), samples, accuracy, macro_f1, per_class_f1, confusion: counts })
    }

    /// The model's output index of class `name` (case-insensitive).
    fn class_index(&self, name: &str) -> Option<usize> {
        self.classes().iter().position(|c| c.eq_ignore_ascii_case(name))
    }

    /// A dataset split the model can take: the model's image shape, and no class the model
    /// does not know. Returns the samples and the dataset's class names.
    fn read_split(&self, dir: &Path, split: Split) -> Result<(feral_common::dataset::ShardData, Vec<String>), SavedError> {
        let dataset = Dataset::open(dir)?;
        let manifest = dataset.manifest();
        if !manifest.splits.contains_key(&split) {
            let has = manifest.splits.keys().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(SavedError::NoSplit { dataset: dir.to_path_buf(), split, has });
        }
        let (got, want) = (manifest.image, self.shape());
        if got != want {
            let show = |s: ImageShape| format!("{}×{}×{}", s.height, s.width, s.channels);
            return Err(SavedError::Shape { dataset: dir.to_path_buf(), dataset_shape: show(got), model_shape: show(want) });
        }
        let missing: Vec<&str> = manifest.classes.iter().filter(|c| self.class_index(c).is_none()).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(SavedError::UnknownClasses { dataset: dir.to_path_buf(), missing: missing.join(", "), known: self.classes().join(", ") });
        }
        Ok((dataset.read_split(split)?, manifest.classes.clone()))
    }

    /// Writes the model as ONNX to `out`, converted from its TorchScript by the PyTorch of
    /// `python` (the project's venv), which checks the result with `onnx` when it has it.
    pub fn export_onnx(&self, python: &Path, out: &Path) -> Result<(), SavedError> {
        let shape = self.shape();
        let output = Command::new(python)
            .arg("-c")
            .arg(EXPORT_ONNX)
            .arg(self.dir.join(&self.card.files.torchscript))
            .arg(out)
            .args([shape.channels, shape.height, shape.width].map(|d| d.to_string()))
            .output()
            .map_err(|e| SavedError::Export(format!("cannot run {}: {e} (pass --python, or set FERAL_PYTHON, to a Python with PyTorch)", python.display())))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no error output");
            return Err(SavedError::Export(format!("{} exited with {}: {last}", python.display(), output.status)));
        }
        Ok(())
    }
}

/// The most likely class and its probability (the first of equals).
fn most_likely(probabilities: &[f64]) -> (usize, f64) {
    probabilities.iter().copied().enumerate().fold((0, f64::MIN), |best, (i, p)| if p > best.1 { (i, p) } else { best })
}

/// Converts `argv[1]` (TorchScript) to ONNX at `argv[2]` for inputs `[N, argv[3..6]]`,
/// with a dynamic batch dimension; opset 17, the TorchScript-based exporter.
const EXPORT_ONNX: &str = r#"
import sys, torch
model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
example = torch.zeros(2, *[int(d) for d in sys.argv[3:6]])
torch.onnx.export(model, (example,), sys.argv[2], input_names=["images"], output_names=["logits"],
                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
"#;

/// The Python whose PyTorch exports ONNX: `FERAL_PYTHON`, else the venv of the libtorch
/// this binary was built against (`scripts/bootstrap.sh` makes it), else `python3`.
pub fn default_python() -> PathBuf {
    if let Some(python) = std::env::var_os("FERAL_PYTHON") {
        return PathBuf::from(python);
    }
    // LIBTORCH is <venv>/lib/python3.X/site-packages/torch.
    let venv = option_env!("LIBTORCH").map(Path::new).and_then(|torch| torch.ancestors().nth(4)).map(|venv| venv.join("bin/python"));
    venv.filter(|python| python.is_file()).unwrap_or_else(|| PathBuf::from("python3"))
}
