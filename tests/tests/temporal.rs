//! Video datasets end to end: each round trains a temporal encoder over its backbone's
//! features of neighbouring frames; the encoder's metrics are the round's, the backbone's
//! frame-by-frame metrics are shown beside them, and the next round's pseudo-labels come
//! from the encoder.

use std::time::Duration;

use feral_common::dataset::Split;
use feral_common::prepare::{prepare_synthetic_video, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_proto::v1 as pb;
use feral_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_job_trains_a_temporal_encoder_and_smooths_pseudo_labels() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // 600 clips of 8 frames; in a third of its frames a face barely shows its expression.
    let config = SyntheticConfig { samples: 4800, image_size: 32, imbalance_ratio: 3.0, label_noise: 0.0, seed: 3 };
    let splits = SyntheticSplits { val_fraction: 0.25, labeled_fraction: 0.5, shard_size: 640, ..SyntheticSplits::default() };
    let manifest = prepare_synthetic_video(&data, &config, &splits, 8)?;
    let pool_shards = manifest.splits[&Split::Unlabeled].shards.len();

    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let workers = coordinator.tch_workers(2);
    let mut jobs = coordinator.jobs().await?;
    let spec = format!(
        "{}steps_per_epoch = 40\n\n[semi_supervised]\nrounds = 1\npatience = 0\nthreshold = 0.9\ntemporal_window = 5\ntemporal_epochs = 6\n\n[resources]\nworkers = 2\n",
        job_spec(&data, 12)
    );
    // Both workers train each round as one gang of two ranks: features are extracted
    // half by each and all-reduced, the encoder's gradients averaged.
    let job = submit(&mut jobs, spec).await?;
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(600)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    assert_eq!(done.rounds.len(), 2, "teacher and one round");
    for round in &done.rounds {
        let (temporal, frame) = (round.validation.as_ref().expect("trained"), round.frame_validation.as_ref().expect("frame metrics"));
        eprintln!("round {}: temporal macro-F1 {:.3}, frame macro-F1 {:.3}", round.round, temporal.macro_f1, frame.macro_f1);
        // Chance is about 0.1 (seven classes, imbalanced).
        assert!(temporal.macro_f1 > 0.3, "round {}: temporal macro-F1 {}", round.round, temporal.macro_f1);
        // The window sees the clear frames around a blank one: it must not be clearly worse
        // (runs measured +0.04 to +0.09; a broken encoder falls towards chance, about 0.1).
        assert!(temporal.macro_f1 >= frame.macro_f1 - 0.05, "round {}: temporal {} < frame {}", round.round, temporal.macro_f1, frame.macro_f1);
        let model = std::path::Path::new(&round.model_path);
        assert!(model.with_file_name("temporal.safetensors").is_file(), "the encoder is saved beside {}", model.display());
    }
    let student = &done.rounds[1];
    assert_eq!(student.shards_predicted as usize, pool_shards);
    let selection = student.selection.as_ref().expect("a selection");
    let precision = selection.correct as f64 / selection.selected.max(1) as f64;
    eprintln!("pseudo-labels: {} selected of {}, precision {precision:.3}", selection.selected, selection.pool);
    // Chance is about 1/7.
    assert!(selection.selected > 0 && precision > 0.3, "{} selected, precision {precision}", selection.selected);

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
