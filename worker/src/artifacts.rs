//! The files a task reads and writes: bounded tensor reads (a device, a pipe or an
//! oversized file named by a spec is refused before anything is read) and atomic writes (a
//! crash leaves the previous file or the new one whole). A leaf with an error of its own.

use std::path::{Path, PathBuf};

use feral_common::files::{self, FileError};
use serde::Serialize;

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("file {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {problem}")]
    Unserialisable { path: PathBuf, problem: String },
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
}

impl ArtifactError {
    /// A write that failed (a full disk) or libtorch failing at run time may succeed on
    /// another attempt; a file that is corrupt, missing or not a regular file, or a value
    /// that does not serialise, will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ArtifactError::Write { .. } | ArtifactError::Torch(_))
    }

    /// A file at `path` that is not what it should be.
    pub fn corrupt(path: &Path, problem: impl Into<String>) -> Self {
        ArtifactError::Corrupt { path: path.to_path_buf(), problem: problem.into() }
    }
}

/// Creates `dir` with its parents, naming it on failure.
pub fn create_dir(dir: &Path) -> Result<(), ArtifactError> {
    std::fs::create_dir_all(dir).map_err(|source| ArtifactError::Write { path: dir.to_path_buf(), source })
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ArtifactError> {
    // A value that does not serialise fails the write, naming the file; nothing is written.
    let text = serde_json::to_string_pretty(value).map_err(|e| ArtifactError::Unserialisable { path: path.to_path_buf(), problem: e.to_string() })?;
    write_atomically(path, |partial| std::fs::write(partial, text).map_err(|source| ArtifactError::Write { path: partial.to_path_buf(), source }))
}

/// Writes `path` by `write` under a temporary name beside it (`.partial-<name>`, which
/// keeps the extension that libtorch chooses its format by), then renames it into place:
/// a crash leaves the previous file or the new one whole, never a torn one, and a write that
/// fails removes what it wrote.
pub fn write_atomically<E: Into<ArtifactError>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), ArtifactError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".partial-{name}"));
    let written = write(&partial)
        .map_err(Into::into)
        .and_then(|()| std::fs::rename(&partial, path).map_err(|source| ArtifactError::Write { path: path.to_path_buf(), source }));
    if written.is_err() {
        // A failed write (a full disk) leaves nothing that holds the space.
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// The named tensors of the `.safetensors` file at `path`, a regular file of at most
/// `limit` bytes (`what` names it in errors): unlike `Tensor::read_safetensors`, a device,
/// a pipe or an oversized file named by a spec is refused before anything is read.
pub fn read_tensors(path: &Path, limit: u64, what: &'static str) -> Result<Vec<(String, tch::Tensor)>, ArtifactError> {
    let bytes = files::read_regular(path, limit, what)?;
    let corrupt = |problem: String| ArtifactError::corrupt(path, problem);
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
        let size = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d).map_err(|_| corrupt(format!("tensor `{name}` has a dimension of {d}"))))
            .collect::<Result<Vec<_>, _>>()?;
        tensors.push((name, tch::Tensor::f_from_data_size(view.data(), &size, kind)?));
    }
    Ok(tensors)
}

/// Loads every variable of `vs` from the `.safetensors` file at `path` (as
/// `VarStore::load`, read through [`read_tensors`]): a tensor missing or of another shape
/// is an error naming it.
pub fn load_var_store(vs: &tch::nn::VarStore, path: &Path, what: &'static str) -> Result<(), ArtifactError> {
    let mut tensors: std::collections::HashMap<String, tch::Tensor> = read_tensors(path, files::MAX_TENSORS_BYTES, what)?.into_iter().collect();
    let corrupt = |problem: String| ArtifactError::corrupt(path, problem);
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

/// The tensor `name` of a file's tensors (from [`read_tensors`] of `path`).
pub fn named(tensors: &[(String, tch::Tensor)], name: &str, path: &Path) -> Result<tch::Tensor, ArtifactError> {
    tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).ok_or_else(|| ArtifactError::corrupt(path, format!("it has no `{name}` tensor")))
}
