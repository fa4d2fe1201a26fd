//! Where a task may read and write (docs/design.md §2, Paths). A worker is given the roots
//! its tasks may touch (`allowed_roots`; by default its working directory). Before a task
//! runs, the worker checks its paths, resolved after symbolic links:
//!
//! - the job's directory (the coordinator names it `<artifacts>/<job id>`) lies inside a
//!   root and inside no other job's directory. The worker creates it and marks it
//!   ([`JOB_MARK`]: the job's id and owner); one that exists must be a directory, not a
//!   link, marked for this job, with no symbolic link, device or pipe anywhere below it.
//!   Feral never makes one there: a link planted in a job's directory is how another job's
//!   checkpoint would be read or its model replaced.
//! - the dataset and `[model] init` lie inside a root, and when inside a job's directory,
//!   of a job of the same owner.
//!
//! The checks run when the task starts; someone who can change the worker's disk while a
//! task runs is outside what this guards against.

use std::path::{Component, Path, PathBuf};

use feral_common::files::{self, MAX_JSON_BYTES};
use feral_common::spec::JobSpec;
use feral_common::task::Assignment;
use serde::{Deserialize, Serialize};

/// The file that marks a job's directory, written by the worker that creates it.
pub const JOB_MARK: &str = ".feral-job";

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    job: String,
    owner: String,
}

/// A path a task may not use, and the rule it breaks; or one the worker could not prepare
/// (a full disk), which another attempt may find usable.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path} is refused: {rule}")]
pub struct PathRefused {
    pub what: &'static str,
    pub path: PathBuf,
    pub rule: String,
    pub retryable: bool,
}

/// Why the worker's allowed roots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("allowed root {}: {source}", path.display())]
    Unresolvable { path: PathBuf, source: std::io::Error },
    #[error("allowed root {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("no allowed root is given")]
    NoRoot,
    #[error("cannot read the working directory: {0}")]
    WorkingDirectory(#[source] std::io::Error),
}

/// The directories a worker's tasks may read and write under, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots(Vec<PathBuf>);

impl Roots {
    /// Each of `paths` must be an existing directory.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Result<Self, RootsError> {
        let mut roots = Vec::new();
        for path in paths {
            let resolved = match std::fs::canonicalize(&path) {
                Ok(resolved) => resolved,
                Err(source) => return Err(RootsError::Unresolvable { path, source }),
            };
            if !resolved.is_dir() {
                return Err(RootsError::NotADirectory { path });
            }
            roots.push(resolved);
        }
        if roots.is_empty() {
            return Err(RootsError::NoRoot);
        }
        Ok(Self(roots))
    }

    /// The default: the working directory alone.
    pub fn working_directory() -> Result<Self, RootsError> {
        let here = std::env::current_dir().map_err(RootsError::WorkingDirectory)?;
        Self::new([here])
    }

    fn root_of(&self, resolved: &Path) -> Option<&Path> {
        self.0.iter().map(PathBuf::as_path).find(|root| resolved.starts_with(root))
    }

    fn listed(&self) -> String {
        self.0.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Checks `task`'s paths and makes its job's directory; the error names the path and
    /// the rule it breaks. A spec that does not parse is left to the task to report.
    pub fn admit(&self, task: &Assignment) -> Result<(), PathRefused> {
        self.job_directory(task)?;
        if let Ok(spec) = JobSpec::from_toml(&task.spec_toml) {
            self.readable("dataset", &spec.dataset, &task.owner)?;
            if let Some(init) = &spec.model.init {
                self.readable("model.init", init, &task.owner)?;
            }
        }
        Ok(())
    }

    fn job_directory(&self, task: &Assignment) -> Result<(), PathRefused> {
        let given = &task.artifact_dir;
        let refuse = |rule: String| PathRefused { what: "the job's directory", path: given.clone(), rule, retryable: false };
        let failed = |rule: String| PathRefused { what: "the job's directory", path: given.clone(), rule, retryable: true };
        let resolved = resolve_beyond_existing(given).map_err(refuse)?;
        let root = self.root_of(&resolved).ok_or_else(|| refuse(format!("it is outside the worker's allowed roots ({})", self.listed())))?;
        if resolved == root || resolved.file_name() != Some(task.key.job.as_str().as_ref()) {
            return Err(refuse(format!("it must be a directory named by the job's id ({}) under an allowed root", task.key.job)));
        }
        if let Some(other) = enclosing_job(resolved.parent().unwrap_or(root), root) {
            return Err(refuse(format!("it lies inside another job's directory ({})", other.display())));
        }
        let parent = resolved.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).map_err(|e| failed(format!("cannot create {}: {e}", parent.display())))?;
        let mark = Mark { job: task.key.job.to_string(), owner: task.owner.clone() };
        match std::fs::symlink_metadata(&resolved) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&resolved).map_err(|e| failed(format!("cannot create it: {e}")))?;
                write_mark(&resolved, &mark).map_err(failed)?;
            }
            Err(e) => return Err(failed(format!("cannot read it: {e}"))),
            Ok(metadata) if metadata.is_dir() => match read_mark(&resolved) {
                Some(found) if found.job == mark.job => {}
                Some(found) => return Err(refuse(format!("it is marked as job {}'s directory", found.job))),
                // Made before jobs were marked: this job's, by its name.
                None => write_mark(&resolved, &mark).map_err(failed)?,
            },
            Ok(_) => return Err(refuse("it is a symbolic link or a file, not a directory".into())),
        }
        only_files_and_directories(&resolved).map_err(refuse)
    }

    fn readable(&self, what: &'static str, given: &Path, owner: &str) -> Result<(), PathRefused> {
        let refuse = |rule: String| PathRefused { what, path: given.to_path_buf(), rule, retryable: false };
        let resolved = std::fs::canonicalize(absolute(given)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => refuse("it does not exist".into()),
            _ => refuse(format!("it cannot be resolved: {e}")),
        })?;
        let root = self
            .root_of(&resolved)
            .ok_or_else(|| refuse(format!("it resolves to {}, outside the worker's allowed roots ({})", resolved.display(), self.listed())))?;
        if let Some(job_dir) = enclosing_job(&resolved, root) {
            let mark = read_mark(&job_dir);
            if owner.is_empty() || mark.as_ref().is_none_or(|m| m.owner != owner) {
                return Err(refuse("it lies inside the directory of a job with another owner".into()));
            }
        }
        Ok(())
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` made absolute with its longest existing ancestor resolved (links followed) and
/// the rest appended; a `..` is refused, since it could climb out of what was resolved.
fn resolve_beyond_existing(path: &Path) -> Result<PathBuf, String> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("it must not contain `..`".into());
    }
    let path = absolute(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(resolved) => return Ok(rest.iter().rev().fold(resolved, |at, name| at.join(name))),
            Err(_) => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else { return Err("no part of it exists".into()) };
                rest.push(name.to_owned());
                existing = parent;
            }
        }
    }
}

/// The job directory `path` lies in (itself, or an ancestor below `root`), if any.
fn enclosing_job(path: &Path, root: &Path) -> Option<PathBuf> {
    path.ancestors().take_while(|a| *a != root && a.starts_with(root)).find(|a| a.join(JOB_MARK).exists()).map(Path::to_path_buf)
}

fn read_mark(job_dir: &Path) -> Option<Mark> {
    let text = files::read_text(&job_dir.join(JOB_MARK), MAX_JSON_BYTES, "job mark").ok()?;
    serde_json::from_str(&text).ok()
}

fn write_mark(job_dir: &Path, mark: &Mark) -> Result<(), String> {
    let path = job_dir.join(JOB_MARK);
    let text = serde_json::to_string(mark).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Refuses a symbolic link, device, pipe or socket anywhere under `dir`.
fn only_files_and_directories(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let kind = entry.file_type().map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
        if kind.is_dir() {
            only_files_and_directories(&entry.path())?;
        } else if !kind.is_file() {
            let what = if kind.is_symlink() { "a symbolic link" } else { "a device, pipe or socket" };
            return Err(format!("{} is {what}, which Feral never makes in a job's directory", entry.path().display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use feral_common::ids::{Attempt, JobId, Rank, Round};
    use feral_common::task::{Device, TaskInputs, TaskKey, TaskKind};

    fn task(job: &str, owner: &str, artifact_dir: &Path, spec_toml: String) -> Assignment {
        Assignment {
            key: TaskKey { job: JobId::new(job), round: Round(0), kind: TaskKind::Train, shard: None, attempt: Attempt::FIRST, rank: Rank(0) },
            world_size: 1,
            spec_toml,
            artifact_dir: artifact_dir.to_path_buf(),
            owner: owner.into(),
            device: Device::Cpu,
            inputs: TaskInputs::default(),
        }
    }

    fn spec(dataset: &Path, init: Option<&Path>) -> String {
        let init = init.map(|p| format!("[model]\ninit = {:?}\n", p.display().to_string())).unwrap_or_default();
        format!("version = 1\ndataset = {:?}\n{init}", dataset.display().to_string())
    }

    #[test]
    fn a_job_writes_only_in_its_own_marked_directory_under_a_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        for d in [&root, &outside, &root.join("data")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let roots = Roots::new([root.clone()]).expect("roots");
        let data = root.join("data");
        let admit = |job: &str, owner: &str, artifacts: &Path| roots.admit(&task(job, owner, artifacts, spec(&data, None)));

        admit("job-a", "alice", &root.join("artifacts/job-a")).expect("a fresh job directory");
        assert!(root.join("artifacts/job-a").join(JOB_MARK).is_file(), "marked");
        admit("job-a", "alice", &root.join("artifacts/job-a")).expect("again, for the next task");

        let refused = |job: &str, artifacts: &Path| admit(job, "bob", artifacts).expect_err("refused").to_string();
        assert!(refused("job-b", &outside.join("job-b")).contains("outside the worker's allowed roots"));
        assert!(refused("job-b", &root.join("artifacts/job-a/../job-b")).contains("must not contain `..`"));
        assert!(refused("job-b", &root.join("artifacts/job-a/job-b")).contains("inside another job's directory"));
        assert!(refused("job-b", &root.join("artifacts/other-name")).contains("named by the job's id"));
        // A link to another job's directory under the right name, or planted inside one.
        std::os::unix::fs::symlink(root.join("artifacts/job-a"), root.join("artifacts/job-b")).expect("link");
        assert!(refused("job-b", &root.join("artifacts/job-b")).contains("named by the job's id"), "resolved, it is job-a's");
        std::fs::create_dir_all(root.join("artifacts/job-c")).expect("mkdir");
        admit("job-c", "bob", &root.join("artifacts/job-c")).expect("bob's job");
        std::os::unix::fs::symlink(root.join("artifacts/job-a"), root.join("artifacts/job-c/r0")).expect("link");
        let err = admit("job-c", "bob", &root.join("artifacts/job-c")).expect_err("a planted link").to_string();
        assert!(err.contains("job-c/r0 is a symbolic link"), "{err}");
    }

    #[test]
    fn a_dataset_or_init_must_resolve_inside_a_root_and_not_into_another_owners_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("data")).expect("mkdir");
        let roots = Roots::new([root.clone()]).expect("roots");
        let artifacts = root.join("artifacts");
        roots.admit(&task("job-a", "alice", &artifacts.join("job-a"), spec(&root.join("data"), None))).expect("alice's job");
        let model = artifacts.join("job-a/model.safetensors");
        std::fs::write(&model, b"weights").expect("write");

        let admit = |job: &str, owner: &str, dataset: &Path, init: Option<&Path>| roots.admit(&task(job, owner, &artifacts.join(job), spec(dataset, init)));
        admit("job-b", "alice", &root.join("data"), Some(&model)).expect("alice starts from her own model");
        let err = admit("job-c", "bob", &root.join("data"), Some(&model)).expect_err("bob from alice's model").to_string();
        assert!(err.starts_with("model.init") && err.contains("another owner"), "{err}");
        let err = admit("job-c", "bob", &artifacts.join("job-a"), None).expect_err("bob reads alice's directory").to_string();
        assert!(err.starts_with("dataset") && err.contains("another owner"), "{err}");
        let err = admit("job-c", "bob", Path::new("/etc"), None).expect_err("outside").to_string();
        assert!(err.contains("outside the worker's allowed roots"), "{err}");
        std::os::unix::fs::symlink("/dev/zero", root.join("data/zero.safetensors")).expect("link");
        let err = admit("job-c", "bob", &root.join("data"), Some(&root.join("data/zero.safetensors"))).expect_err("a link out").to_string();
        assert!(err.contains("resolves to /dev/zero"), "{err}");
    }
}
