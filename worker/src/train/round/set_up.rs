//! [`RoundTraining::set_up`]: the dataset opened, the model and its EMA built and started
//! (from the teacher, the user's weights or the round's last whole checkpoint), and the
//! batch loader started.

use std::sync::Arc;

use feral_common::dataset::{Dataset, Split};
use feral_common::metrics::MetricsSummary;
use feral_common::spec::{to_usize, DebiasTarget};
use tch::nn;
use tch::Tensor;

use crate::artifacts::{create_dir, load_var_store, ArtifactError};
use crate::collective::{self, Collective};
use crate::error::TaskError;
use crate::selection::labelled_frequencies;
use crate::train::consistency::{MaskAudit, OnlineCheckpoint, OnlineLabeller, OnlineParams};
use crate::train::inputs::{load_pseudo_set, read_threshold_seed, strong_view, teacher_file};
use crate::train::loader::{Augmentation, Cursor, Loader, LoaderConfig, PseudoSource};
use crate::train::model::{self, build_model, by_name};
use crate::train::seeds::SEEDED_INIT;
use crate::train::{checkpoint, losses, memory, optim};

use super::{RoundTraining, TrainTask};

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
            tch::set_num_threads(i32::from(spec.train.threads));
        }
        let image = [manifest.image.channels as i64, manifest.image.height as i64, manifest.image.width as i64];
        // An elastic gang running short still steps through global batches of the whole
        // gang, so each rank takes a larger share.
        let full_world = usize::from(spec.resources.full_gang()).max(world);
        let mut per_rank = spec.clone();
        per_rank.train.batch_size = (spec.train.batch_size * full_world).div_ceil(world);
        memory::check_step_fits(&per_rank, image, context.round, context.device)?;
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
                model::load_initial_weights(&mut vs, weights, spec.model.init_partial)?;
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
            tracing::info!(round = context.round, epoch = at.epoch, from_attempt = at.attempt.0, "resuming from checkpoint");
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

        let epochs = spec.train.epochs;
        let batch = spec.train.batch_size;
        let unlabelled_batch = (semi.mu * batch as f64).round() as usize;
        let pseudo_batch = pseudo.as_ref().filter(|p| !p.data.is_empty()).map_or(0, |_| unlabelled_batch);
        let pool_batch = pool.as_ref().filter(|p| !p.is_empty()).map_or(0, |_| unlabelled_batch);
        let labelled = train_data.labels.iter().filter(|&&l| l >= 0).count();
        let loss_fn =
            losses::Loss::new(&spec.train.effective_loss(), &losses::class_counts(&train_data.labels, classes)).map_err(|e| unusable(&e.to_string()))?;
        let steps = spec.train.steps_per_epoch.unwrap_or_else(|| labelled.div_ceil(batch * full_world));
        // One schedule over every round the job plans (see the module's documentation).
        let round_steps = steps * to_usize(epochs);
        let total_steps = (round_steps * (usize::from(semi.rounds) + 1)).max(1);
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
}
