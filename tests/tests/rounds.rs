//! The method end to end: a teacher, then pseudo-labelling rounds over the unlabelled
//! pool on two workers, with the class prior, selection and feedback of docs/design.md §1.

use std::sync::Arc;
use std::time::Duration;

use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_common::task::TaskKind;
use feral_proto::v1 as pb;
use feral_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rounds_select_pseudo_labels_better_than_chance() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // 20% labelled: the pool is large, so pseudo-labels matter.
    let config = SyntheticConfig { samples: 4000, image_size: 32, imbalance_ratio: 4.0, label_noise: 0.05, seed: 5 };
    let splits = SyntheticSplits { val_fraction: 0.2, labeled_fraction: 0.2, shard_size: 800, ..SyntheticSplits::default() };
    let manifest = prepare_synthetic(&data, &config, &splits)?;
    let pool_shards = manifest.splits[&feral_common::dataset::Split::Unlabeled].shards.len();
    assert!(pool_shards >= 3, "the pool spans several shards");

    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let runners = [Arc::new(Recording::default()), Arc::new(Recording::default())];
    let workers: Vec<RunningWorker> =
        runners.iter().enumerate().map(|(i, runner)| RunningWorker::start(&coordinator.url(), &format!("w{}", i + 1), runner.clone())).collect();
    let mut jobs = coordinator.jobs().await?;
    let spec = format!("{}steps_per_epoch = 40\n\n[semi_supervised]\nrounds = 2\npatience = 0\nthreshold = 0.9\n", job_spec(&data, 5));
    let job = submit(&mut jobs, spec).await?;

    let labelling = wait_for_state(&jobs, &job.id, &[pb::JobState::PseudoLabeling, pb::JobState::Failed], Duration::from_secs(300)).await?;
    assert_eq!(labelling.state, pb::JobState::PseudoLabeling as i32, "{}", labelling.state_reason);

    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(600)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "job failed: {}", done.state_reason);
    assert_eq!(done.rounds.len(), 3, "teacher and two rounds");
    for round in &done.rounds[1..] {
        assert_eq!(round.shards_predicted as usize, pool_shards, "every shard predicted once");
        let prior_sum: f64 = round.class_prior.iter().sum();
        assert!((prior_sum - 1.0).abs() < 1e-6, "the prior is a distribution: {:?}", round.class_prior);
        assert_eq!(round.class_weights.len(), 7, "feedback weights from the previous round");
        let selection = round.selection.as_ref().expect("a selection");
        assert!(selection.selected > 0, "round {} selected nothing", round.round);
        assert_eq!(selection.with_hidden_label, selection.selected, "synthetic data keeps every true label");
        let precision = selection.correct as f64 / selection.selected as f64;
        // Chance is about 1/7; the teacher's confident, debiased picks must be far better.
        assert!(precision > 0.5, "round {} pseudo-label precision {precision}", round.round);
        assert!(round.validation.is_some(), "round {} was trained and evaluated", round.round);
    }
    let predicted = runners.each_ref().map(|r| r.finished(TaskKind::Infer));
    assert!(predicted.iter().all(|&n| n > 0), "both workers predict shards of the pool: {predicted:?}");
    assert_eq!(predicted.iter().sum::<usize>(), 2 * pool_shards, "each round predicts every shard once");
    let result = done.result.expect("result");
    let best = done.rounds.iter().filter_map(|r| r.validation.as_ref().map(|v| v.macro_f1)).fold(0.0, f64::max);
    let final_f1 = result.validation.as_ref().map(|v| v.macro_f1).unwrap_or_default();
    assert_eq!(final_f1, best, "the final model is the best round's");
    assert!(final_f1 > 0.3, "macro-F1 {final_f1}");
    assert!(std::path::Path::new(&result.model_path).is_file());

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
