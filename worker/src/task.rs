//! What every task of the worker shares, below both the short tasks (`crate::tasks`) and
//! training (`crate::train`): the context a task runs in, its error type with the one rule
//! for which failures are worth another attempt, bounded tensor reads and atomic file
//! writes.

use std::path::{Path, PathBuf};

use feral_common::dataset::DatasetError;
use feral_common::files::{self, FileError};
use feral_common::spec::{JobSpec, SpecError};
use feral_common::task::Device;
use serde::Serialize;

use crate::collective::CollectiveError;
use crate::gang::GangError;
use crate::train::LoaderError;

/// What every task knows: the job, its round, where to write, where to compute.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub spec: JobSpec,
    pub round: u32,
    /// Which attempt of its task this is (1 for the first): a training task writes under
    /// its own `a<attempt>` directory of the round.
    pub attempt: u32,
    pub artifact_dir: PathBuf,
    pub device: tch::Device,
}

impl TaskContext {
    /// `<artifacts>/r<round>`: everything a round writes.
    pub fn round_dir(&self) -> PathBuf {
        self.artifact_dir.join(format!("r{}", self.round))
    }
}

/// The libtorch device of a slot.
pub fn torch_device(device: Device) -> tch::Device {
    match device {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(index) => tch::Device::Cuda(index as usize),
    }
}

/// Why a task did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the job spec cannot be used: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("dataset {dir} cannot be used: {problem}")]
    UnusableDataset { dir: PathBuf, problem: String },
    #[error("file {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("the task lacks its input: {0}")]
    MissingInput(&'static str),
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("gradient exchange failed: {0}")]
    Collective(#[from] CollectiveError),
    #[error("cannot join the gang: {0}")]
    Gang(#[from] GangError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("batch loader failed: {0}")]
    Loader(#[from] LoaderError),
    #[error("the job is too large for this worker: {0}")]
    TooLarge(String),
    #[error("cannot start a task thread: {0}")]
    Thread(std::io::Error),
    #[error("the task panicked: {0}")]
    Panicked(String),
    #[error("training diverged: the loss became {loss} in round {round}, epoch {epoch} (lower train.learning_rate, or check train.loss)")]
    Diverged { round: u32, epoch: u32, loss: f64 },
    /// Asked to stop (cancel, reassignment, shutdown): nothing to report.
    #[error("stopped before the end")]
    Stopped,
}

impl TaskError {
    /// Whether another attempt could succeed where this one failed: the one place that
    /// decides. A lost peer, a full disk, a port or a thread the machine could not give,
    /// libtorch failing at run time: yes. A bad spec or dataset, a missing input, a job too
    /// large for the worker, a panic: the same input fails the same way, so no.
    pub fn is_retryable(&self) -> bool {
        match self {
            TaskError::Torch(_) | TaskError::Collective(_) | TaskError::Write { .. } | TaskError::Thread(_) => true,
            TaskError::Gang(error) => error.is_retryable(),
            TaskError::Spec(_)
            | TaskError::Dataset(_)
            | TaskError::UnusableDataset { .. }
            | TaskError::Corrupt { .. }
            | TaskError::File(_)
            | TaskError::MissingInput(_)
            | TaskError::Loader(_)
            | TaskError::TooLarge(_)
            | TaskError::Panicked(_)
            | TaskError::Diverged { .. }
            | TaskError::Stopped => false,
        }
    }
}

/// Creates `dir` with its parents, naming it on failure.
pub fn create_dir(dir: &Path) -> Result<(), TaskError> {
    std::fs::create_dir_all(dir).map_err(|source| TaskError::Write { path: dir.to_path_buf(), source })
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TaskError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TaskError::Write { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) })?;
    write_atomically(path, |partial| std::fs::write(partial, text).map_err(|source| TaskError::Write { path: partial.to_path_buf(), source }))
}

/// Writes `path` by `write` under a temporary name beside it (`.partial-<name>`, which
/// keeps the extension that libtorch chooses its format by), then renames it into place:
/// a crash leaves the previous file or the new one whole, never a torn one, and a write that
/// fails removes what it wrote.
pub fn write_atomically<E: Into<TaskError>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), TaskError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".partial-{name}"));
    let written = write(&partial).map_err(Into::into).and_then(|()| std::fs::rename(&partial, path).map_err(|source| TaskError::Write { path: path.to_path_buf(), source }));
    if written.is_err() {
        // A failed write (a full disk) leaves nothing that holds the space.
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// The named tensors of the `.safetensors` file at `path`, a regular file of at most
/// `limit` bytes (`what` names it in errors): unlike `Tensor::read_safetensors`, a device,
/// a pipe or an oversized file named by a spec is refused before anything is read.
pub fn read_tensors(path: &Path, limit: u64, what: &'static str) -> Result<Vec<(String, tch::Tensor)>, TaskError> {
    let bytes = files::read_regular(path, limit, what)?;
    let corrupt = |problem: String| TaskError::Corrupt { path: path.to_path_buf(), problem };
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.tensors() {
        use safetensors::Dtype;
        let kind = match view.dtype() {
            Dtype::BOOL => tch::Kind::Bool,
            Dtype::U8 => tch::Kind::Uint8,
            Dtype::I8 => tch::Kind::Int8,
            Dtype::I16 => tch::Kind::Int16,
            Dtype::I32 => tch::Kind::Int,
            Dtype::I64 => tch::Kind::Int64,
            Dtype::F16 => tch::Kind::Half,
            Dtype::BF16 => tch::Kind::BFloat16,
            Dtype::F32 => tch::Kind::Float,
            Dtype::F64 => tch::Kind::Double,
            other => return Err(corrupt(format!("tensor `{name}` has dtype {other:?}, which Feral does not read"))),
        };
        let size = view.shape().iter().map(|&d| i64::try_from(d).map_err(|_| corrupt(format!("tensor `{name}` has a dimension of {d}")))).collect::<Result<Vec<_>, _>>()?;
        tensors.push((name, tch::Tensor::f_from_data_size(view.data(), &size, kind)?));
    }
    Ok(tensors)
}

/// Loads every variable of `vs` from the `.safetensors` file at `path` (as
/// `VarStore::load`, read through [`read_tensors`]): a tensor missing or of another shape
/// is an error naming it.
pub fn load_var_store(vs: &tch::nn::VarStore, path: &Path, what: &'static str) -> Result<(), TaskError> {
    let mut tensors: std::collections::HashMap<String, tch::Tensor> = read_tensors(path, files::MAX_TENSORS_BYTES, what)?.into_iter().collect();
    let corrupt = |problem: String| TaskError::Corrupt { path: path.to_path_buf(), problem };
    let _no_grad = tch::no_grad_guard();
    for (name, mut variable) in vs.variables() {
        let saved = tensors.remove(&name).ok_or_else(|| corrupt(format!("the {what} has no tensor `{name}`")))?;
        if saved.size() != variable.size() {
            return Err(corrupt(format!("the {what}'s `{name}` is {:?}, the model's {:?}", saved.size(), variable.size())));
        }
        variable.f_copy_(&saved.f_to_device(variable.device())?)?;
    }
    Ok(())
}
