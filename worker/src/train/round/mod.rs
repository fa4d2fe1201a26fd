//! One round's training on the calling OS thread (see [`super`]): what
//! [`RoundTraining::set_up`] opens, loads or resumes, each [`RoundTraining::epoch`] trains,
//! validates and checkpoints, and [`RoundTraining::finish`] evaluates and saves: the three
//! in three files (`set_up.rs`, here, `finish.rs`), over the state they pass along.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use feral_common::dataset::{Dataset, Manifest, ShardData};
use feral_common::ids::Round;
use feral_common::metrics::MetricsSummary;
use feral_common::task::{CheckpointRef, EpochReport, TaskInputs, TrainedModel};
use tch::nn;
use tch::{Kind, Tensor};

use super::consistency::{self, MaskAudit, OnlineCheckpoint, OnlineLabeller};
use super::evaluation::evaluate_model;
use super::loader::Loader;
use super::model::{by_name, Network};
use super::schedule::learning_rate;
use super::seeds::mix;
use super::share::ShareWeight;
use super::{checkpoint, ema, losses, optim, precision};
use crate::artifacts::write_json;
use crate::collective::{self, Collective};
use crate::error::TaskError;
use crate::metrics::WorkerMetrics;
use crate::task::TaskContext;

mod finish;
mod set_up;

/// What a training task needs to know: where it runs, and the round's inputs (the model
/// to start from, the class weights and prior, the selected pseudo-labels).
#[derive(Clone, Debug)]
pub struct TrainTask {
    pub context: TaskContext,
    pub inputs: TaskInputs,
}

/// Runs the task as one rank of `collective` (world size 1: alone). Every rank draws the
/// same global batch of `batch_size × ` the gang's full size (`resources.max_workers`, even
/// while an elastic gang runs short) and trains on its share, its losses weighted by that
/// share; gradients are averaged across ranks, so the ranks' models stay identical and
/// equal what one rank would train on the whole global batch. Rank 0 reports epochs
/// (`on_epoch`, with the round's epoch count) and writes checkpoints and the model.
/// `stop` is checked every step.
pub fn train(
    task: &TrainTask,
    collective: &mut dyn Collective,
    on_epoch: &mut dyn FnMut(EpochReport, u32),
    stop: &AtomicBool,
    metrics: &WorkerMetrics,
) -> Result<TrainedModel, TaskError> {
    let mut round = RoundTraining::set_up(task, collective)?;
    for epoch in round.first_epoch..=round.epochs {
        if let Some(report) = round.epoch(epoch, collective, stop, metrics)? {
            on_epoch(report, round.epochs);
        }
    }
    round.finish(collective, stop)
}

/// One round's training as it goes: what [`RoundTraining::set_up`] opened, loaded or
/// resumed, changed by each [`RoundTraining::epoch`] and saved by [`RoundTraining::finish`].
pub(crate) struct RoundTraining<'t> {
    task: &'t TrainTask,
    rank: usize,
    /// The ranks of the whole gang (more than train now while an elastic gang runs short).
    full_world: usize,
    dataset: Dataset,
    manifest: Manifest,
    train_data: Arc<ShardData>,
    val_data: ShardData,
    classes: usize,
    image: [i64; 3],
    round_dir: PathBuf,
    vs: nn::VarStore,
    net: Box<dyn Network>,
    ema_vs: nn::VarStore,
    ema_net: Box<dyn Network>,
    optimizer: optim::Optimizer,
    trainable: Vec<Tensor>,
    /// The first epoch this attempt trains (after a resumed checkpoint's), and the last.
    pub first_epoch: u32,
    pub epochs: u32,
    steps: usize,
    total_steps: usize,
    step_offset: usize,
    loss_fn: losses::Loss,
    /// Online student rounds: the EMA model's labeller of the pool, and what it passed.
    labeller: Option<OnlineLabeller>,
    mask_audit: MaskAudit,
    /// Offline student rounds with debiasing: τ·log p̂, added to the pseudo-labelled logits.
    margin: Option<Tensor>,
    /// The latest epoch's validation metrics.
    validation: MetricsSummary,
    loader: Loader,
}

impl<'t> RoundTraining<'t> {
    /// Trains epoch `epoch`, validates, and on rank 0 writes the checkpoint and returns the
    /// epoch's report.
    pub fn epoch(&mut self, epoch: u32, collective: &mut dyn Collective, stop: &AtomicBool, metrics: &WorkerMetrics) -> Result<Option<EpochReport>, TaskError> {
        let Self {
            task,
            rank,
            full_world,
            val_data,
            classes,
            round_dir,
            vs,
            net,
            ema_vs,
            ema_net,
            optimizer,
            trainable,
            steps,
            total_steps,
            step_offset,
            loss_fn,
            labeller,
            mask_audit,
            margin,
            validation,
            loader,
            ..
        } = self;
        let (context, steps, total_steps, step_offset, classes, rank) = (&task.context, *steps, *total_steps, *step_offset, *classes, *rank);
        let spec = &context.spec;
        let semi = &spec.semi_supervised;
        // Each loss is a mean over this rank's share of its global batch. Weighted by that
        // share (1 when the shares are equal), the gradient the gang averages is the mean
        // gradient over the whole global batch, however it was split.
        let batch = spec.train.batch_size;
        let unlabelled_batch = (semi.mu * batch as f64).round() as usize;
        let share_weight = ShareWeight { rank, world: collective.world_size(), full_world: *full_world, batch, unlabelled_batch };
        let started = Instant::now();
        // Dropout draws from libtorch's generator: seeding it per epoch makes a resumed
        // epoch draw what the uninterrupted run drew.
        tch::manual_seed(mix(spec.train.seed ^ u64::from(context.round), u64::from(epoch)) as i64);
        let (mut loss_sum, mut correct, mut seen, mut images_trained) = (0.0, 0i64, 0usize, 0i64);
        for step in 0..steps {
            if stop.load(Ordering::Relaxed) {
                return Err(TaskError::Stopped);
            }
            let global_step = step_offset + (epoch as usize - 1) * steps + step;
            optimizer.set_lr(learning_rate(spec.train.learning_rate, global_step, total_steps));
            // This rank's slice of the step's global batch (see `loader`).
            let step_started = Instant::now();
            let loaded = loader.next_batch()?;
            let indices = &loaded.indices;
            let (images, targets) = (loaded.images.to_device(context.device), loaded.labels.to_device(context.device));
            // bf16 autocast (when asked) covers the forward passes; losses are fp32.
            let autocast = precision::Autocast::enter(spec.train.precision, context.device);
            let (logits, loss) = match (&loaded.pool, labeller.as_mut()) {
                (Some(pool), Some(labeller)) => {
                    // The EMA model labels the weak views; labelled and strong images then
                    // go through the student in one forward pass.
                    let weak_logits = consistency::weak_view_logits(ema_net.as_ref(), &pool.weak.to_device(context.device), semi.online_flip_labels);
                    let pseudo_targets = labeller.label(&weak_logits, collective)?;
                    consistency::audit(mask_audit, &pseudo_targets, &pool.hidden_labels)?;
                    let both = Tensor::cat(&[images.shallow_clone(), pool.strong.to_device(context.device)], 0);
                    let all_logits = net.forward_t(&both, true).to_kind(Kind::Float);
                    let labelled_count = images.size()[0];
                    let logits = all_logits.narrow(0, 0, labelled_count);
                    let strong_logits = all_logits.narrow(0, labelled_count, all_logits.size()[0] - labelled_count);
                    let unlabelled_loss = share_weight.unlabelled(consistency::consistency_loss(&strong_logits, &pseudo_targets));
                    let loss = share_weight.labelled(loss_fn.compute(&logits, &targets, epoch)) + unlabelled_loss * semi.lambda_u;
                    (logits, loss)
                }
                _ => {
                    let logits = net.forward_t(&images, true).to_kind(Kind::Float);
                    let loss = share_weight.labelled(loss_fn.compute(&logits, &targets, epoch));
                    (logits, loss)
                }
            };
            // (Tensors' `+=` adds in place, which the graph must not see: every sum here is a new tensor.)
            let loss = match &loaded.pseudo {
                Some(pseudo) => {
                    let (images, targets) = (pseudo.images.to_device(context.device), pseudo.labels.to_device(context.device));
                    let confidences = pseudo.confidences.to_device(context.device);
                    let logits = net.forward_t(&images, true).to_kind(Kind::Float);
                    let logits = match &margin {
                        Some(margin) => logits + margin,
                        None => logits,
                    };
                    let per_sample = logits.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::None, -100, 0.0);
                    loss + share_weight.unlabelled((per_sample * confidences).mean(Kind::Float)) * spec.semi_supervised.lambda_u
                }
                None => loss,
            };
            drop(autocast);
            optimizer.zero_grad();
            loss.backward();
            let reducing = Instant::now();
            let reduced = collective::average_gradients(collective, trainable, collective::DEFAULT_BUCKET_BYTES)?;
            if reduced > 0 {
                metrics.all_reduce(reducing.elapsed().as_secs_f64(), reduced as u64);
            }
            optimizer.step();
            ema::update(ema_vs, vs, global_step);
            loss_sum += loss.double_value(&[]);
            correct += logits.argmax(-1, false).eq_tensor(&targets).sum(Kind::Int64).int64_value(&[]);
            seen += indices.len();
            let step_images =
                images.size()[0] + loaded.pool.as_ref().map_or(0, |p| p.strong.size()[0]) + loaded.pseudo.as_ref().map_or(0, |p| p.images.size()[0]);
            images_trained += step_images;
            metrics.step(step_started.elapsed().as_secs_f64(), step_images as u64, loader.ready());
        }
        let train_loss = loss_sum / steps.max(1) as f64;
        if !train_loss.is_finite() {
            // Weights that went through a non-finite loss are not worth a checkpoint, and the
            // same spec diverges again: the task fails, not retried, with the reason.
            return Err(TaskError::Diverged { round: context.round, epoch, loss: train_loss });
        }
        let images_per_second = (images_trained * collective.world_size() as i64) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        metrics.epoch(images_per_second / collective.world_size() as f64);
        *validation = evaluate_model(ema_vs, ema_net.as_ref(), val_data, classes, context.device, collective)?;
        // evaluate_model gave every rank rank 0's EMA; rank 0's raw weights and batch-norm
        // statistics follow, so every rank ends the epoch with what rank 0 checkpoints, and a
        // resumed attempt (which starts every rank from that checkpoint) trains what this
        // one goes on to train. (Each rank's running statistics otherwise come from its own
        // slices of the batches, and feed its EMA labeller's weak-view predictions.)
        if collective.world_size() > 1 {
            collective::broadcast_from_rank0(collective, &mut by_name(vs))?;
        }
        if let Some(labeller) = labeller {
            tracing::info!(
                round = context.round,
                epoch,
                mask_rate = mask_audit.rate(),
                mask_precision = mask_audit.precision().unwrap_or(f64::NAN),
                prior = ?labeller.prior(),
                "online pseudo-labels"
            );
        }
        if rank > 0 {
            return Ok(None);
        }
        // The whole checkpoint before the report: once the coordinator records the epoch,
        // a new attempt may resume from it.
        let (vs, ema_vs, optimizer) = (&*vs, &*ema_vs, &*optimizer);
        let mut parts: Vec<checkpoint::PartWriter<'_>> = vec![
            (checkpoint::WEIGHTS, Box::new(move |p: &Path| Ok(vs.save(p)?))),
            (checkpoint::EMA, Box::new(move |p: &Path| Ok(ema_vs.save(p)?))),
            (checkpoint::OPTIMIZER, Box::new(move |p: &Path| Ok(optimizer.save(p)?))),
        ];
        if let Some(labeller) = labeller {
            let state = OnlineCheckpoint { labeller: labeller.state(), audit: *mask_audit };
            parts.push((checkpoint::ONLINE, Box::new(move |p: &Path| write_json(p, &state))));
        }
        checkpoint::write(round_dir, context.round, CheckpointRef { attempt: context.attempt, epoch }, parts)?;
        let report = EpochReport {
            round: Round(context.round),
            epoch,
            train_loss,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            validation: validation.clone(),
            seconds: started.elapsed().as_secs_f64(),
            images_per_second,
        };
        Ok(Some(report))
    }
}
