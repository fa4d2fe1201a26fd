//! Opening a file that a job names (docs/design.md §2, Files): a dataset's manifest and
//! shards, a model to start from, a checkpoint. Whatever the path names (a device such as
//! `/dev/zero`, a named pipe, a directory, a file larger than its format allows), the
//! open neither blocks nor reads without bound: the file is opened non-blocking, must be a
//! regular file (checked on the open descriptor, so nothing can be swapped in between the
//! check and the read), and is read only up to its bound.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest `.safetensors` file (a model to start from, a round's model, optimizer
/// state, predictions, a selection) a task reads: a ResNet-34 in 32-bit floats is about
/// 85 MB, the predictions of a million pool images 28 MB.
pub const MAX_TENSORS_BYTES: u64 = 2 << 30;

/// The largest JSON file (a dataset manifest, a checkpoint's manifest) a task reads.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is {bytes} bytes, more than the {limit} a {what} may be")]
    TooLarge { path: PathBuf, bytes: u64, limit: u64, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// Opens `path` for reading if it is a regular file of at most `limit` bytes (`what` names
/// the kind of file in the error), and returns it with its size.
pub fn open_regular(path: &Path, limit: u64, what: &'static str) -> Result<(File, u64), FileError> {
    // O_NONBLOCK: opening a named pipe with no writer returns at once instead of waiting
    // for one (it is then refused below). It changes nothing for a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| FileError::Open { path: path.into(), source })?;
    let metadata = file.metadata().map_err(|source| FileError::Read { path: path.into(), source })?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a named pipe"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(FileError::NotRegular { path: path.into(), kind });
    }
    if metadata.len() > limit {
        return Err(FileError::TooLarge { path: path.into(), bytes: metadata.len(), limit, what });
    }
    Ok((file, metadata.len()))
}

/// Reads the whole of `path`, a regular file of at most `limit` bytes (a file that grows
/// while it is read is cut at the limit and refused).
pub fn read_regular(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_regular(path, limit, what)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|source| FileError::Read { path: path.into(), source })?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { path: path.into(), bytes: bytes.len() as u64, limit, what });
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64, what: &'static str) -> Result<String, FileError> {
    let bytes = read_regular(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| FileError::Read { path: path.into(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_pipes_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pipe = dir.path().join("pipe");
        let c_path = std::ffi::CString::new(pipe.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo reads a NUL-terminated path and nothing else.
        #[allow(unsafe_code)]
        let made = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(made, 0, "mkfifo");
        // With no writer, a blocking open of the pipe would never return.
        let err = read_regular(&pipe, 1 << 20, "model").expect_err("a pipe");
        assert!(err.to_string().contains("a named pipe, not a regular file"), "{err}");
        let err = read_regular(Path::new("/dev/zero"), 1 << 20, "model").expect_err("a device");
        assert!(err.to_string().contains("/dev/zero is a character device"), "{err}");
        let err = read_regular(dir.path(), 1 << 20, "model").expect_err("a directory");
        assert!(err.to_string().contains("a directory"), "{err}");
        let err = read_regular(&dir.path().join("missing"), 1 << 20, "model").expect_err("missing");
        assert!(matches!(err, FileError::Open { .. }), "{err}");
    }

    #[test]
    fn a_file_is_read_whole_within_its_bound_and_refused_beyond_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.json");
        std::fs::write(&file, "0123456789").expect("write");
        assert_eq!(read_text(&file, 10, "manifest").expect("within"), "0123456789");
        let err = read_regular(&file, 9, "manifest").expect_err("beyond");
        assert_eq!(err.to_string(), format!("{} is 10 bytes, more than the 9 a manifest may be", file.display()));
    }
}
