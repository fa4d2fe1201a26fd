//! The short tasks of a round: preparing (checking) the dataset, predicting one unlabelled
//! shard, and selecting the round's pseudo-labels. Training lives in `crate::train`.

mod infer;
mod prepare;
mod select;

pub use infer::infer;
pub use prepare::prepare;
pub use select::select;
