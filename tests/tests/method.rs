//! The method's reason to exist, end to end: with few labels and a large unlabelled pool,
//! a teacher plus two student rounds of online debiased consistency beat supervised
//! training on the same labels with the same number of optimiser steps, on the `test`
//! split that chooses nothing.

use std::time::Duration;

use feral_common::prepare::{prepare_synthetic, SyntheticSplits};
use feral_common::synthetic::SyntheticConfig;
use feral_proto::v1 as pb;
use feral_tests::*;

/// 1,200 steps of batches of 32, in fp32 on one thread, so the numbers do not depend on
/// the machine's bf16 support or thread count.
fn spec(data: &std::path::Path, name: &str, rounds: u32, epochs_per_round: u32) -> String {
    format!(
        "version = 1\nname = \"{name}\"\ndataset = {:?}\n\n[model]\nwidth = 16\n\n[train]\nepochs = {epochs_per_round}\nbatch_size = 32\n\
         steps_per_epoch = 25\nthreads = 1\nseed = 2\n\n[semi_supervised]\nrounds = {rounds}\npatience = 0\n",
        data.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_method_beats_supervised_training_at_the_same_budget() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // 3,000 faces, 4% of the training images labelled (80, about 11 a class), 1,993 in
    // the pool; val and test are halves of the 30% held out.
    let config = SyntheticConfig { samples: 3000, image_size: 32, imbalance_ratio: 2.0, label_noise: 0.0, seed: 3 };
    let splits = SyntheticSplits { val_fraction: 0.3, labeled_fraction: 0.04, test_fraction: 0.5, shard_size: 1000 };
    prepare_synthetic(&data, &config, &splits)?;

    let coordinator = RunningCoordinator::in_memory(dir.path()).await?;
    let workers = coordinator.tch_workers(2);
    let mut jobs = coordinator.jobs().await?;
    // The same 1,200 steps: 48 epochs in one round, or 16 for the teacher and each student.
    let supervised = submit(&mut jobs, spec(&data, "supervised", 0, 48)).await?;
    let method = submit(&mut jobs, spec(&data, "method", 2, 16)).await?;
    let finished = [pb::JobState::Succeeded, pb::JobState::Failed];
    let supervised = wait_for_state(&jobs, &supervised.id, &finished, Duration::from_secs(1200)).await?;
    let method = wait_for_state(&jobs, &method.id, &finished, Duration::from_secs(1200)).await?;
    for job in [&supervised, &method] {
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "job {} failed: {}", job.id, job.state_reason);
    }

    let test_f1 = |job: &pb::Job| job.result.as_ref().and_then(|r| r.test.as_ref()).map(|t| t.macro_f1).expect("test metrics of the chosen model");
    let (supervised_f1, method_f1) = (test_f1(&supervised), test_f1(&method));
    eprintln!("test macro-F1: method {method_f1:.3}, supervised {supervised_f1:.3}");
    // Measured: 0.745 against 0.829 (and 0.726 against 0.792 with bf16 and another seed);
    // runs of one setting on other seeds differ by about 0.02.
    assert!(method_f1 > supervised_f1 + 0.03, "test macro-F1: method {method_f1:.3}, supervised {supervised_f1:.3}");

    // Every student round learnt from the pool, mostly right labels (chance is 1/7).
    assert_eq!(method.rounds.len(), 3, "teacher and two rounds");
    for round in &method.rounds[1..] {
        let online = round.online.as_ref().expect("an online student round reports its masks");
        assert!(online.masked_in > 0, "round {} learnt no pool label", round.round);
        let precision = online.correct as f64 / online.with_hidden_label.max(1) as f64;
        assert!(precision > 0.6, "round {} online pseudo-label precision {precision}", round.round);
    }

    for worker in workers {
        worker.stop().await?;
    }
    coordinator.stop().await
}
