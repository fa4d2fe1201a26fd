//! One round's training on the calling OS thread (see [`super`]): what
//! [`RoundTraining::set_up`] opens, loads or resumes, each [`RoundTraining::epoch`] trains,
//! validates and checkpoints, and [`RoundTraining::finish`] evaluates and saves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use feral_common::dataset::{Dataset, Manifest, ShardData, Split};
use feral_common::ids::Round;
use feral_common::metrics::MetricsSummary;
use feral_common::spec::DebiasTarget;
use feral_common::task::{CheckpointRef, EpochReport, TaskInputs, TrainedModel};
use tch::nn;
use tch::{Kind, Tensor};

use super::card::{ModelCard, OnlineCard, TemporalCard};
use super::consistency::{self, MaskAudit, OnlineCheckpoint, OnlineLabeller, OnlineParams};
use super::evaluation::evaluate_model;
use super::inputs::{load_pseudo_set, read_threshold_seed, strong_view, teacher_file};
use super::loader::{Augmentation, Cursor, Loader, LoaderConfig, PseudoSource};
use super::model::{self, build_model, by_name, Network};
use super::schedule::learning_rate;
use super::seeds::{mix, SEEDED_INIT};
use super::share::ShareWeight;
use super::{checkpoint, ema, export, losses, memory, optim, precision, temporal};
use crate::artifacts::{create_dir, load_var_store, write_atomically, write_json, ArtifactError};
use crate::collective::{self, Collective};
use crate::error::TaskError;
use crate::metrics::WorkerMetrics;
use crate::selection::labelled_frequencies;
use crate::task::TaskContext;

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
    /// Opens the dataset, builds the model and its EMA, starts them from the teacher, the
    /// user's weights or this round's last checkpoint, and starts the batch loader.
    pub fn set_up(task: &'t TrainTask, collective: &mut dyn Collective) -> Result<Self, TaskError> {
        let (rank, world) = (collective.rank(), collective.world_size());
        let context = &task.context;
        let spec = &context.spec;
        let dataset = Dataset::open(&spec.dataset)?;
        let manifest = dataset.manifest().clone();
        let train_data = dataset.read_split(Split::Train)?;
        let val_data = dataset.read_split(Split::Val)?;
        let classes = manifest.classes.len();
        let unusable = |problem: &str| TaskError::UnusableDataset { dir: spec.dataset.clone(), problem: problem.to_owned() };
        if train_data.labels.iter().all(|&l| l < 0) {
            return Err(unusable("its train split has no labelled samples"));
        }
        if val_data.is_empty() {
            return Err(unusable("its val split is empty"));
        }
        let semi = &spec.semi_supervised;
        let online = semi.online_in_round(context.round);
        let (pseudo, pool) = match &task.inputs.selection_file {
            _ if online => (None, Some(Arc::new(dataset.read_split(Split::Unlabeled)?))),
            Some(path) => (Some(load_pseudo_set(&dataset, path)?), None),
            None => (None, None),
        };
        let round_dir = context.round_dir();
        create_dir(&round_dir)?;
        if rank == 0 {
            // What an interrupted write of an earlier attempt left (rank 0 alone writes).
            checkpoint::remove_partials(&round_dir);
        }
        if spec.train.threads > 0 {
            tch::set_num_threads(spec.train.threads as i32);
        }
        let image = [manifest.image.channels as i64, manifest.image.height as i64, manifest.image.width as i64];
        // An elastic gang running short still steps through global batches of the whole
        // gang, so each rank takes a larger share.
        let full_world = (spec.resources.full_gang() as usize).max(world);
        let mut per_rank = spec.clone();
        per_rank.train.batch_size = (spec.train.batch_size as usize * full_world).div_ceil(world) as i64;
        memory::check_step_fits(&per_rank, image, context.round, context.device).map_err(TaskError::TooLarge)?;
        let (mut vs, net, mut ema_vs, ema_net) = {
            // libtorch's generator is global: seeding and initialising under one lock makes the
            // initial weights depend on the seed alone, even with several tasks in a process.
            let _seeded = SEEDED_INIT.lock().unwrap_or_else(|p| p.into_inner());
            tch::manual_seed(spec.train.seed as i64 + i64::from(context.round));
            let vs = nn::VarStore::new(context.device);
            let net = build_model(&vs.root(), &spec.model, image, classes as i64);
            let ema_vs = nn::VarStore::new(context.device);
            let ema_net = build_model(&ema_vs.root(), &spec.model, image, classes as i64);
            if context.device.is_cuda() {
                model::use_channels_last(&vs);
                model::use_channels_last(&ema_vs);
            }
            (vs, net, ema_vs, ema_net)
        };
        match (&task.inputs.init_model, &spec.model.init) {
            // A student continues its teacher's raw weights (its EMA and optimiser state are
            // loaded below); a teacher starts from the user's weights, if any.
            (Some(teacher), _) => load_var_store(&vs, &teacher_file(teacher, "checkpoint.safetensors"), "teacher's checkpoint")?,
            (None, Some(weights)) => {
                model::load_initial_weights(&mut vs, weights)?;
            }
            (None, None) => {}
        }
        let mut optimizer = optim::Optimizer::new(&spec.train, vs.trainable_variables());

        // Only a checkpoint the coordinator recorded, and only a whole one (see `checkpoint`).
        let resumed = checkpoint::find_whole(&round_dir, context.round, &task.inputs.resume_from);
        if let Some((at, dir)) = &resumed {
            load_var_store(&vs, &dir.join(checkpoint::WEIGHTS), "checkpoint's weights")?;
            load_var_store(&ema_vs, &dir.join(checkpoint::EMA), "checkpoint's EMA weights")?;
            optimizer.load(&dir.join(checkpoint::OPTIMIZER))?;
            tracing::info!(round = context.round, epoch = at.epoch, from_attempt = at.attempt, "resuming from checkpoint");
        } else if !task.inputs.resume_from.is_empty() {
            tracing::warn!(round = context.round, "no recorded checkpoint of the round is whole: it starts again from its beginning");
        }
        let first_epoch = resumed.as_ref().map_or(0, |(at, _)| at.epoch) + 1;
        if first_epoch == 1 {
            match &task.inputs.init_model {
                Some(teacher) => {
                    ema_vs.load(teacher)?;
                    let state = teacher_file(teacher, "checkpoint-optimizer.safetensors");
                    if state != *teacher {
                        optimizer.load(&state)?;
                    }
                }
                None => ema_vs.copy(&vs)?,
            }
        }
        // Every rank starts from rank 0's weights (and running statistics).
        let mut weights = by_name(&vs);
        collective::broadcast_from_rank0(collective, &mut weights)?;
        let mut averages = by_name(&ema_vs);
        collective::broadcast_from_rank0(collective, &mut averages)?;
        let trainable = vs.trainable_variables();

        let epochs = spec.train.epochs as u32;
        let batch = spec.train.batch_size as usize;
        let unlabelled_batch = (semi.mu * batch as f64).round() as usize;
        let pseudo_batch = pseudo.as_ref().filter(|p| !p.data.is_empty()).map_or(0, |_| unlabelled_batch);
        let pool_batch = pool.as_ref().filter(|p| !p.is_empty()).map_or(0, |_| unlabelled_batch);
        let labelled = train_data.labels.iter().filter(|&&l| l >= 0).count();
        let loss_fn =
            losses::Loss::new(&spec.train.effective_loss(), &losses::class_counts(&train_data.labels, classes)).map_err(|e| unusable(&e.to_string()))?;
        let steps = spec.train.steps_per_epoch.map_or(labelled.div_ceil(batch * full_world), |s| s as usize);
        // One schedule over every round the job plans (see the module's documentation).
        let round_steps = steps * epochs as usize;
        let total_steps = (round_steps * (semi.rounds.max(0) as usize + 1)).max(1);
        let step_offset = round_steps * context.round as usize;
        let mut labeller = (pool_batch > 0).then(|| {
            // A student's prior comes from its round's pass over the pool; the teacher's
            // starts uniform and follows the EMA model's predictions.
            let params = OnlineParams {
                tau: if semi.debias { semi.tau } else { 0.0 },
                momentum: semi.prior_momentum,
                min_threshold: semi.online_min_threshold,
                soft: semi.soft_mask,
                temperature: semi.target_temperature,
            };
            let seed = task.inputs.selection_file.as_deref().and_then(read_threshold_seed);
            let labeller = OnlineLabeller::new(params, classes, &task.inputs.class_prior, seed);
            match (semi.debias_toward, labelled_frequencies(&manifest)) {
                (DebiasTarget::Labelled, Some(target)) => labeller.toward(target),
                _ => labeller,
            }
        });
        let mut mask_audit = MaskAudit::default();
        if let (Some(labeller), Some((_, dir))) = (labeller.as_mut(), &resumed) {
            let path = dir.join(checkpoint::ONLINE);
            let text = feral_common::files::read_text(&path, feral_common::files::MAX_JSON_BYTES, "checkpoint's online state").map_err(ArtifactError::from)?;
            let saved = serde_json::from_str::<OnlineCheckpoint>(&text).map_err(|e| ArtifactError::corrupt(&path, e.to_string()))?;
            labeller.restore(saved.labeller);
            mask_audit = saved.audit;
        }
        let margin = (task.inputs.class_prior.len() == classes && pseudo_batch > 0).then(|| {
            let log_prior: Vec<f32> = task.inputs.class_prior.iter().map(|p| (spec.semi_supervised.tau * p.max(1e-12).ln()) as f32).collect();
            Tensor::from_slice(&log_prior).to_device(context.device)
        });
        let validation = MetricsSummary::default();
        // Batches are sampled, augmented and converted on loader threads, ahead of the step.
        let loader_config = LoaderConfig {
            seed: spec.train.seed,
            round: context.round,
            rank,
            world,
            full_world,
            batch,
            pseudo_batch,
            steps_per_epoch: steps,
            last_epoch: epochs,
            classes,
            sampling: spec.train.sampling,
            class_weights: (task.inputs.class_weights.len() == classes).then(|| task.inputs.class_weights.clone()),
            augmentation: spec.train.augment.then(Augmentation::default),
            strong: Some(strong_view(&spec.train.strong)),
            strong_labelled: spec.train.strong.labelled,
            pool_batch,
            threads: LoaderConfig::DEFAULT_THREADS,
            depth: LoaderConfig::DEFAULT_DEPTH,
        };
        let pseudo_source = pseudo.map(|p| PseudoSource { data: std::sync::Arc::new(p.data), confidences: std::sync::Arc::new(p.confidences) });
        let train_data = Arc::new(train_data);
        let loader = Loader::start(loader_config, train_data.clone(), pseudo_source, pool, Cursor::new(first_epoch, 0))?;
        Ok(Self {
            rank,
            full_world,
            dataset,
            manifest,
            train_data,
            val_data,
            classes,
            image,
            round_dir,
            vs,
            net,
            ema_vs,
            ema_net,
            optimizer,
            trainable,
            first_epoch,
            epochs,
            steps,
            total_steps,
            step_offset,
            loss_fn,
            labeller,
            mask_audit,
            margin,
            validation,
            loader,
            task,
        })
    }

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
        let batch = spec.train.batch_size as usize;
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

    /// Evaluates the test split, trains the temporal encoder on video datasets, and on
    /// rank 0 saves the model, its TorchScript export and its card.
    pub fn finish(self, collective: &mut dyn Collective, stop: &AtomicBool) -> Result<TrainedModel, TaskError> {
        let Self {
            task,
            rank,
            dataset,
            manifest,
            train_data,
            val_data,
            classes,
            image,
            round_dir,
            vs,
            mut ema_vs,
            ema_net,
            optimizer,
            first_epoch,
            epochs,
            labeller,
            mask_audit,
            mut validation,
            loader,
            ..
        } = self;
        let context = &task.context;
        let spec = &context.spec;
        if first_epoch > epochs {
            // Every epoch was done before a restart: evaluate the checkpoint we resumed.
            validation = evaluate_model(&ema_vs, ema_net.as_ref(), &val_data, classes, context.device, collective)?;
        }
        drop(loader);

        // The `test` split, where there is one: evaluated once, with the model that is saved.
        let test_data = match dataset.split(Split::Test) {
            Ok(_) => Some(dataset.read_split(Split::Test)?).filter(|d| !d.is_empty()),
            Err(_) => None,
        };
        let mut test = match &test_data {
            Some(data) => Some(evaluate_model(&ema_vs, ema_net.as_ref(), data, classes, context.device, collective)?),
            None => None,
        };

        // Video datasets: a temporal encoder over the finished backbone's features.
        let (mut frame_validation, mut temporal_vs) = (None, None);
        if temporal::wanted(spec, &train_data) {
            let window = spec.semi_supervised.temporal_window as usize;
            let strong = strong_view(&spec.train.strong);
            let seed = mix(spec.train.seed ^ 0x7e6d_0000, u64::from(context.round));
            let train_windows = temporal::Windows::extract_views(
                ema_net.as_ref(),
                &train_data,
                window,
                context.device,
                collective,
                Some((&strong, seed, temporal::TRAIN_VIEWS)),
            )?;
            let val_windows = temporal::Windows::extract(ema_net.as_ref(), &val_data, window, context.device, collective)?;
            let (vs, encoder, temporal_validation) =
                temporal::train(spec, context.round, classes, (&train_windows, &train_data.labels), (&val_windows, &val_data.labels), collective, stop)?;
            if let Some(data) = &test_data {
                let test_windows = temporal::Windows::extract(ema_net.as_ref(), data, window, context.device, collective)?;
                test = Some(temporal::evaluate(&encoder, &test_windows, &data.labels, classes, collective)?);
            }
            tracing::info!(
                round = context.round,
                frame_macro_f1 = validation.macro_f1,
                temporal_macro_f1 = temporal_validation.macro_f1,
                "temporal encoder trained"
            );
            frame_validation = Some(std::mem::replace(&mut validation, temporal_validation));
            temporal_vs = Some(vs);
        }

        // The model goes beside this attempt's checkpoints: only the attempt whose finish the
        // coordinator accepts is the round's model.
        let attempt_dir = checkpoint::attempt_dir(&round_dir, context.attempt);
        let model_path = attempt_dir.join("model.safetensors");
        if rank > 0 {
            return Ok(TrainedModel {
                validation,
                frame_validation,
                test,
                online: labeller.is_some().then_some(mask_audit),
                model_path: model_path.display().to_string(),
                class_names: manifest.classes,
            });
        }
        create_dir(&attempt_dir)?;
        if let Some(vs) = &temporal_vs {
            write_atomically(&attempt_dir.join(temporal::FILE), |p| vs.save(p))?;
        }
        write_atomically(&model_path, |p| ema_vs.save(p))?;
        // The last raw weights and optimiser state, which the next round's student continues.
        write_atomically(&attempt_dir.join("checkpoint.safetensors"), |p| vs.save(p))?;
        write_atomically(&attempt_dir.join("checkpoint-optimizer.safetensors"), |p| optimizer.save(p))?;
        write_atomically(&attempt_dir.join("model.pt"), |p| export::export_torchscript(&mut ema_vs, ema_net.as_ref(), image, context.device, p))?;
        let card = ModelCard {
            arch: format!("{:?}", spec.model.arch),
            cbam: spec.model.cbam,
            width: spec.model.width,
            classes: manifest.classes.clone(),
            image: manifest.image,
            normalisation: "pixels / 127.5 - 1, layout N×C×H×W".into(),
            torchscript: "model.pt".into(),
            round: context.round,
            validation: validation.clone(),
            test: test.clone(),
            temporal: temporal_vs.is_some().then(|| TemporalCard {
                file: temporal::FILE.into(),
                window: spec.semi_supervised.temporal_window,
                frame_validation: frame_validation.clone().unwrap_or_default(),
            }),
            online: labeller.as_ref().map(|labeller| OnlineCard {
                mask_rate: mask_audit.rate(),
                mask_precision: mask_audit.precision(),
                prior: labeller.prior().to_vec(),
                thresholds: labeller.thresholds(),
            }),
        };
        write_json(&attempt_dir.join("model.json"), &card)?;
        Ok(TrainedModel {
            validation,
            frame_validation,
            test,
            online: labeller.is_some().then_some(mask_audit),
            model_path: model_path.display().to_string(),
            class_names: manifest.classes,
        })
    }
}
