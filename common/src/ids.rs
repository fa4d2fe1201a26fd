//! Newtype ids, so that a job id can never be passed where a worker id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A job, e.g. `job-4f1c2a9e`.
    JobId
);
string_id!(
    /// A worker process; stable across its restarts.
    WorkerId
);
string_id!(
    /// An unlabelled shard of a dataset, by its file name in the manifest, e.g.
    /// `unlabeled-0003.safetensors`.
    ShardId
);

impl JobId {
    /// A fresh random job id.
    pub fn generate() -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("job-{}", &uuid[..12]))
    }
}

/// The longest worker id, in characters.
pub const MAX_WORKER_ID_CHARS: usize = 128;

/// Why a text is not a worker id (read after "worker id … ").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkerIdError {
    #[error("must be 1 to {MAX_WORKER_ID_CHARS} characters, got {0}")]
    Length(usize),
    #[error("may hold only letters, digits and . - _ : @, got {0:?}")]
    Character(char),
}

impl WorkerId {
    /// `text` as a worker id: 1 to [`MAX_WORKER_ID_CHARS`] letters, digits and `.`, `_`,
    /// `-`, `:`, `@`, so that an id is safe to print, log and use in a store key.
    pub fn parse(text: &str) -> Result<Self, WorkerIdError> {
        let chars = text.chars().count();
        if chars == 0 || chars > MAX_WORKER_ID_CHARS {
            return Err(WorkerIdError::Length(chars));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || ".-_:@".contains(*c))) {
            return Err(WorkerIdError::Character(c));
        }
        Ok(Self(text.to_owned()))
    }

    /// A fresh random worker id for a worker started without `--id`.
    pub fn generate(hostname: &str) -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{hostname}-{}", &uuid[..8]))
    }
}

/// A round of the method: 0 is the teacher, r >= 1 a pseudo-labelling round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Round(pub u32);

/// Which attempt of a task, from 1: a retry, a gang regrown whole or a resumed job runs a
/// new attempt, and a report from an attempt that has been replaced changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl Attempt {
    pub const FIRST: Attempt = Attempt(1);

    pub fn next(self) -> Self {
        Attempt(self.0.saturating_add(1))
    }
}

/// A rank of a data-parallel gang, from 0 (rank 0 writes the model); 0 for a task that
/// runs alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rank(pub u32);

macro_rules! number_display {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

number_display!(Round, Attempt, Rank);
