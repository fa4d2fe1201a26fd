//! Epoch-end checkpoints as one atomic unit (docs/design.md §3, Checkpoints).
//!
//! A checkpoint is a directory, `<artifacts>/r<round>/a<attempt>/checkpoint-e<epoch>`, that
//! holds every part of the training state (raw weights, EMA, optimiser, and the online
//! labeller's state in online rounds) and a `manifest.json` that names each part with its
//! size and SHA-256. It is written as `.partial-checkpoint-e<epoch>` beside it: each part
//! and the manifest are written and fsynced, then one rename makes the whole directory
//! current and the attempt's directory is fsynced. A crash or a full disk at any point
//! leaves the previous checkpoints as they were and, at worst, a `.partial-` directory
//! that the failed write or the next attempt removes.
//!
//! Each attempt writes under its own directory, so an attempt that was replaced (a paused
//! rank, a stalled leader) never writes into the files another attempt resumes from. A new
//! attempt resumes only from the checkpoints the coordinator recorded (an epoch reported
//! by the attempt that wrote it), newest first, and only from one whose manifest and
//! parts verify: no mix of epochs or attempts can load.

use std::io::Read;
use std::path::{Path, PathBuf};

use feral_common::ids::Attempt;
use feral_common::task::CheckpointRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifacts::{write_json, ArtifactError};

/// The raw weights of the model being trained.
pub const WEIGHTS: &str = "weights.safetensors";
/// The exponential moving average of the weights (what is evaluated and saved).
pub const EMA: &str = "ema.safetensors";
/// The optimiser's state.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// Online rounds: the labeller's prior, thresholds and mask audit.
pub const ONLINE: &str = "online.json";
const MANIFEST: &str = "manifest.json";
/// Checkpoints an attempt keeps of its own (the newest); older ones are removed.
const KEPT: u32 = 2;

/// What `manifest.json` says: whose checkpoint this is, and every part with its checksum.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    round: u32,
    attempt: Attempt,
    epoch: u32,
    parts: Vec<Part>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Part {
    file: String,
    bytes: u64,
    sha256: String,
}

/// `<round_dir>/a<attempt>`: everything one attempt of a training task writes.
pub fn attempt_dir(round_dir: &Path, attempt: Attempt) -> PathBuf {
    round_dir.join(format!("a{attempt}"))
}

/// The directory of a (whole) checkpoint.
pub fn checkpoint_dir(round_dir: &Path, checkpoint: CheckpointRef) -> PathBuf {
    attempt_dir(round_dir, checkpoint.attempt).join(format!("checkpoint-e{}", checkpoint.epoch))
}

/// One part of a checkpoint: its file name in the checkpoint directory, and how to write it.
pub type PartWriter<'a> = (&'static str, Box<dyn FnOnce(&Path) -> Result<(), ArtifactError> + 'a>);

/// Writes the checkpoint of `round`'s epoch `checkpoint.epoch` by attempt
/// `checkpoint.attempt`, part by part, and makes it current with one rename. On failure
/// nothing of it is left behind, and the checkpoints written before are untouched.
pub fn write(round_dir: &Path, round: u32, checkpoint: CheckpointRef, parts: Vec<PartWriter<'_>>) -> Result<PathBuf, ArtifactError> {
    let attempt_dir = attempt_dir(round_dir, checkpoint.attempt);
    std::fs::create_dir_all(&attempt_dir).map_err(|source| write_error(&attempt_dir, source))?;
    let whole = checkpoint_dir(round_dir, checkpoint);
    let partial = attempt_dir.join(format!(".partial-checkpoint-e{}", checkpoint.epoch));
    remove_dir(&partial)?;
    let written = write_parts(&partial, round, checkpoint, parts).and_then(|()| {
        // The same epoch written again by the same attempt (never in practice): replace it.
        remove_dir(&whole)?;
        std::fs::rename(&partial, &whole).map_err(|source| write_error(&whole, source))?;
        stage("rename")?;
        sync(&attempt_dir)
    });
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    // Older checkpoints of this attempt are not needed once a newer one is whole.
    for epoch in 1..=checkpoint.epoch.saturating_sub(KEPT) {
        let _ = std::fs::remove_dir_all(checkpoint_dir(round_dir, CheckpointRef { epoch, ..checkpoint }));
    }
    Ok(whole)
}

fn write_parts(partial: &Path, round: u32, checkpoint: CheckpointRef, parts: Vec<PartWriter<'_>>) -> Result<(), ArtifactError> {
    std::fs::create_dir_all(partial).map_err(|source| write_error(partial, source))?;
    let mut manifest = Manifest { round, attempt: checkpoint.attempt, epoch: checkpoint.epoch, parts: Vec::new() };
    for (file, write) in parts {
        let path = partial.join(file);
        write(&path)?;
        sync(&path)?;
        let (bytes, sha256) = digest(&path).map_err(|source| write_error(&path, source))?;
        manifest.parts.push(Part { file: file.to_owned(), bytes, sha256 });
        stage(file)?;
    }
    // The manifest last: a directory without one (or with one that does not match its
    // parts) is never loaded.
    let path = partial.join(MANIFEST);
    write_json(&path, &manifest)?;
    sync(&path)?;
    stage(MANIFEST)?;
    sync(partial)
}

/// A fault injected after a stage of the write (the `fail` crate's fail points
/// `checkpoint::<part file>`, `checkpoint::manifest.json` and `checkpoint::rename`; set by
/// tests, or by `FAILPOINTS` in a worker's environment): the write fails there as a full
/// disk would.
fn stage(name: &str) -> Result<(), ArtifactError> {
    fail::fail_point!(&format!("checkpoint::{name}"), |_| Err(write_error(
        Path::new(name),
        std::io::Error::new(std::io::ErrorKind::StorageFull, format!("fault injected after writing {name}"))
    )));
    Ok(())
}

/// The first of `recorded` (newest first) that is whole: its manifest names this round,
/// attempt and epoch, and every part it lists is there with its size and checksum. Each
/// one passed over is logged with why. `None`: the round starts from its beginning.
pub fn find_whole(round_dir: &Path, round: u32, recorded: &[CheckpointRef]) -> Option<(CheckpointRef, PathBuf)> {
    for &checkpoint in recorded {
        let dir = checkpoint_dir(round_dir, checkpoint);
        match verify(&dir, round, checkpoint) {
            Ok(()) => return Some((checkpoint, dir)),
            Err(problem) => tracing::warn!(
                round,
                attempt = checkpoint.attempt.0,
                epoch = checkpoint.epoch,
                dir = %dir.display(),
                %problem,
                "a recorded checkpoint is not whole: trying the one before"
            ),
        }
    }
    None
}

/// Whether `dir` holds the whole checkpoint `checkpoint` of `round`.
fn verify(dir: &Path, round: u32, checkpoint: CheckpointRef) -> Result<(), String> {
    let text = feral_common::files::read_text(&dir.join(MANIFEST), feral_common::files::MAX_JSON_BYTES, "checkpoint manifest")
        .map_err(|e| format!("no readable {MANIFEST}: {e}"))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| format!("{MANIFEST} does not parse: {e}"))?;
    let (saved, wanted) = ((manifest.round, manifest.attempt.0, manifest.epoch), (round, checkpoint.attempt.0, checkpoint.epoch));
    if saved != wanted {
        return Err(format!("{MANIFEST} is of round, attempt, epoch {saved:?}, not {wanted:?}"));
    }
    for required in [WEIGHTS, EMA, OPTIMIZER] {
        if !manifest.parts.iter().any(|p| p.file == required) {
            return Err(format!("{MANIFEST} lists no {required}"));
        }
    }
    if let Some(outside) = manifest.parts.iter().find(|p| p.file.contains(['/', '\\']) || p.file.starts_with('.')) {
        return Err(format!("{MANIFEST} names a part outside the checkpoint: {:?}", outside.file));
    }
    for part in &manifest.parts {
        let (bytes, sha256) = digest(&dir.join(&part.file)).map_err(|e| format!("{}: {e}", part.file))?;
        if (bytes, sha256.as_str()) != (part.bytes, part.sha256.as_str()) {
            return Err(format!("{} is {bytes} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}", part.file, part.bytes, part.sha256));
        }
    }
    Ok(())
}

/// Removes what an interrupted write left in `round_dir` (`.partial-*` files and
/// directories, in it and in its attempts' directories): called by a new attempt before it
/// writes anything.
pub fn remove_partials(round_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(round_dir) else { return };
    for entry in entries.flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if name.starts_with(".partial-") {
            let removed = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            match removed {
                Ok(()) => tracing::info!(path = %path.display(), "removed what an interrupted write left"),
                Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove what an interrupted write left"),
            }
        } else if is_dir && name.starts_with('a') && name[1..].parse::<u32>().is_ok() {
            remove_partials(&path);
        }
    }
}

fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, hex))
}

/// Flushes a file, or a directory's entries, to the disk.
fn sync(path: &Path) -> Result<(), ArtifactError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|source| write_error(path, source))
}

fn remove_dir(dir: &Path) -> Result<(), ArtifactError> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(write_error(dir, error)),
        _ => Ok(()),
    }
}

fn write_error(path: &Path, source: std::io::Error) -> ArtifactError {
    ArtifactError::Write { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_part(file: &'static str, text: &'static str) -> PartWriter<'static> {
        (file, Box::new(move |path: &Path| std::fs::write(path, text).map_err(|source| write_error(path, source))))
    }

    fn parts(epoch: &'static str) -> Vec<PartWriter<'static>> {
        vec![text_part(WEIGHTS, epoch), text_part(EMA, epoch), text_part(OPTIMIZER, epoch)]
    }

    fn at(attempt: u32, epoch: u32) -> CheckpointRef {
        CheckpointRef { attempt: Attempt(attempt), epoch }
    }

    #[test]
    fn a_written_checkpoint_is_found_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let written = write(dir.path(), 0, at(1, 1), parts("one")).expect("written");
        assert_eq!(find_whole(dir.path(), 0, &[at(1, 1)]), Some((at(1, 1), written.clone())));
        assert_eq!(std::fs::read_to_string(written.join(WEIGHTS)).expect("weights"), "one");
        // Another round's, another attempt's or an unrecorded epoch's: not this one.
        assert_eq!(find_whole(dir.path(), 1, &[at(1, 1)]), None);
        assert_eq!(find_whole(dir.path(), 0, &[at(2, 1), at(1, 2)]), None);
    }

    #[test]
    fn a_write_failing_at_any_part_leaves_the_previous_checkpoint_current_and_nothing_behind() {
        // (The stages after the parts, by fail points, in tests/tests/resume.rs: fail points
        // are process-wide, and this binary runs its tests side by side.)
        for failing in 0..3 {
            let dir = tempfile::tempdir().expect("dir");
            write(dir.path(), 0, at(1, 1), parts("one")).expect("epoch 1");
            let mut second = parts("two");
            second[failing].1 = Box::new(|path: &Path| {
                std::fs::write(path, "tw").map_err(|source| write_error(path, source))?;
                Err(write_error(path, std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full")))
            });
            let failed = write(dir.path(), 0, at(1, 2), second);
            assert!(matches!(failed, Err(ArtifactError::Write { .. })), "part {failing}: {failed:?}");
            let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a1")).expect("a1").flatten().map(|e| e.file_name()).collect();
            assert!(leftovers.iter().all(|name| !name.to_string_lossy().starts_with(".partial")), "part {failing}: {leftovers:?}");
            // The coordinator recorded epoch 1 only (epoch 2 was never reported).
            let (found, found_dir) = find_whole(dir.path(), 0, &[at(1, 2), at(1, 1)]).expect("epoch 1 is whole");
            assert_eq!(found, at(1, 1), "part {failing}");
            for file in [WEIGHTS, EMA, OPTIMIZER] {
                assert_eq!(std::fs::read_to_string(found_dir.join(file)).expect("part"), "one", "part {failing}");
            }
        }
    }

    #[test]
    fn a_damaged_checkpoint_is_passed_over_for_the_one_before() {
        let dir = tempfile::tempdir().expect("dir");
        write(dir.path(), 0, at(1, 1), parts("one")).expect("epoch 1");
        let second = write(dir.path(), 0, at(2, 2), parts("two")).expect("epoch 2");
        std::fs::write(second.join(EMA), "tw0").expect("damage");
        assert_eq!(find_whole(dir.path(), 0, &[at(2, 2), at(1, 1)]).map(|(c, _)| c), Some(at(1, 1)));
        std::fs::remove_file(second.join(OPTIMIZER)).expect("remove");
        assert_eq!(find_whole(dir.path(), 0, &[at(2, 2)]), None);
        // A manifest whose parts name a file outside the checkpoint is refused.
        let manifest = second.join(MANIFEST);
        let mut read: Manifest = serde_json::from_str(&std::fs::read_to_string(&manifest).expect("manifest")).expect("parses");
        read.parts.push(Part { file: "../../a1/checkpoint-e1/weights.safetensors".into(), bytes: 0, sha256: String::new() });
        std::fs::write(&manifest, serde_json::to_string(&read).expect("json")).expect("rewrite");
        assert!(verify(&second, 0, at(2, 2)).expect_err("outside").contains("outside"));
    }

    #[test]
    fn an_attempt_keeps_its_newest_checkpoints_and_partials_are_removed_at_start() {
        let dir = tempfile::tempdir().expect("dir");
        for (epoch, text) in [(1, "one"), (2, "two"), (3, "three")] {
            write(dir.path(), 0, at(1, epoch), parts(text)).expect("written");
        }
        let kept: Vec<bool> = (1..=3).map(|epoch| checkpoint_dir(dir.path(), at(1, epoch)).exists()).collect();
        assert_eq!(kept, [false, true, true]);
        std::fs::create_dir_all(dir.path().join("a1/.partial-checkpoint-e4")).expect("partial dir");
        std::fs::write(dir.path().join(".partial-model.safetensors"), "x").expect("partial file");
        remove_partials(dir.path());
        assert!(!dir.path().join("a1/.partial-checkpoint-e4").exists());
        assert!(!dir.path().join(".partial-model.safetensors").exists());
        assert!(checkpoint_dir(dir.path(), at(1, 3)).exists(), "whole checkpoints stay");
    }
}
