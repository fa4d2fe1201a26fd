//! The vocabulary every Feral process shares and that needs no libtorch and no network:
//! typed ids, the job spec and its validation, the task contract between the coordinator
//! and its workers, evaluation metrics, and (feature `data`, which the coordinator leaves
//! out) the dataset format (manifest plus safetensors shards) with its reader and writer,
//! the importers, and the synthetic expression dataset used by the demo and the tests.
// `deny`, not `forbid`: the one function that memory-maps a shard allows it.
#![deny(unsafe_code)]

#[cfg(feature = "data")]
pub mod dataset;
pub mod errors;
pub mod files;
pub mod ids;
#[cfg(feature = "data")]
pub mod import;
pub mod method;
pub mod metrics;
#[cfg(test)]
mod mutate;
pub mod plan;
#[cfg(feature = "data")]
pub mod prepare;
pub mod signals;
pub mod spec;
#[cfg(feature = "data")]
pub mod synthetic;
pub mod task;
pub mod temporal;
pub mod text;
pub mod time;
