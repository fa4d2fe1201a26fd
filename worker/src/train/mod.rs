//! Training one round's model on the calling OS thread: the teacher on labelled data
//! (round 0), or a student (rounds >= 1). Batches hold B labelled samples, drawn class by
//! class with the round's feedback weights, and μ·B unlabelled ones. Online (the default),
//! these are drawn from the whole pool: the EMA model labels their weak view, debiased by
//! the online prior, and the student learns the labels that pass the class-aware thresholds
//! on their strong view (see [`consistency`]); the loss is CE_L + λ_u·L_U, with labelled
//! and strong images in one forward pass. Offline, they are the round's selected
//! pseudo-labels on weak views, CE_L + λ_u·mean(conf·CE(z + τ·log p̂, ŷ)).
//!
//! One learning-rate schedule spans the whole job: round r trains steps
//! `[r·E·S, (r+1)·E·S)` of the `(R+1)·E·S` planned (E epochs of S steps a round), and a
//! student continues its teacher's raw weights, EMA and optimiser state, so the rounds of
//! a job train like one run that changes its data. An exponential moving average of the
//! weights is what gets evaluated and saved. Every epoch ends with a validation pass and a
//! checkpoint that a new attempt resumes from; a dataset's `test` split is evaluated once
//! at the end, and only reported.

mod batches;
pub mod card;
pub mod checkpoint;
pub mod consistency;
mod ema;
mod evaluation;
mod export;
mod inputs;
pub mod loader;
pub mod losses;
mod memory;
mod model;
mod optim;
mod pixels;
pub mod precision;
mod round;
mod schedule;
mod seeds;
mod share;
pub mod strong;
pub mod temporal;
mod weak;

pub use batches::{to_tensors, Sampler};
pub use evaluation::evaluate;
pub use loader::{Augmentation, Batch, Cursor, Loader, LoaderConfig, LoaderError, PseudoBatch, PseudoSource};
pub use memory::StepTooLarge;
pub use model::{build_model, check_initial_weights, use_channels_last, InitError, Network};
pub use round::{train, TrainTask};
