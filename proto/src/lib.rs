//! Feral's wire API: the `feral.v1` gRPC package, generated at build time from
//! `proto/feral/v1/feral.proto`, and the one place where the shared domain types of
//! `feral-common` (the task contract of `feral_common::task`, metrics, selections, online
//! pseudo-label masks) are converted to and from its messages, for the coordinator and the
//! workers alike. A message that lacks what the contract needs is refused with the field
//! named ([`ContractError`]).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("feral.v1");
}

mod contract;
pub mod credentials;
pub mod https;
pub mod leader;
pub mod limits;

pub use contract::{required, task_key, task_kind, ContractError};
