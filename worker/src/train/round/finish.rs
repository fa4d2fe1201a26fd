//! [`RoundTraining::finish`]: the test split evaluated, the temporal encoder trained on
//! video datasets, and on rank 0 the model, its TorchScript export and its card saved.

use std::sync::atomic::AtomicBool;

use feral_common::dataset::Split;
use feral_common::task::TrainedModel;

use crate::artifacts::{create_dir, write_atomically, write_json};
use crate::collective::Collective;
use crate::error::TaskError;
use crate::train::card::{FilesCard, InputCard, ModelCard, OnlineCard, TemporalCard, CARD_FORMAT};
use crate::train::evaluation::evaluate_model;
use crate::train::inputs::strong_view;
use crate::train::seeds::mix;
use crate::train::{checkpoint, export, temporal};

use super::RoundTraining;

impl RoundTraining<'_> {
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
            let window = spec.semi_supervised.temporal_window;
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
            format: CARD_FORMAT,
            files: FilesCard { torchscript: "model.pt".into(), weights: "model.safetensors".into() },
            input: InputCard::of(manifest.image),
            output: "logits, one per class, in the order of `classes`".into(),
            classes: manifest.classes.clone(),
            arch: spec.model.arch.name().into(),
            cbam: spec.model.cbam,
            width: spec.model.width,
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
