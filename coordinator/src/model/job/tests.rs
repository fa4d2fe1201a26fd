use super::*;
use feral_common::task::ShardRef;

fn spec(rounds: u16, max_attempts: u16) -> JobSpec {
    let mut spec = JobSpec::for_dataset("/d");
    spec.resources.max_attempts = max_attempts;
    spec.semi_supervised.rounds = rounds;
    spec
}

fn job(rounds: u16, max_attempts: u16) -> JobRecord {
    JobRecord::submitted(JobId::new("j"), spec(rounds, max_attempts), String::new(), PathBuf::from("/a"), 0)
}

fn w(id: &str) -> WorkerId {
    WorkerId::new(id)
}

/// The keys of the live tasks of `kind`.
fn live(job: &JobRecord, kind: TaskKind) -> Vec<TaskKey> {
    job.live_tasks().filter(|t| t.kind == kind).map(|t| t.key(&job.id)).collect()
}

fn run(job: JobRecord, task: &TaskKey, worker: &str, outcome: TaskOutcome) -> JobRecord {
    let assign = JobEvent::TaskAssigned { task: task.clone(), worker: w(worker), device: Device::Cpu };
    let assigned = job.on_event(&assign, 1).expect("assignment changes the job");
    let finish = JobEvent::TaskFinished { task: task.clone(), worker: w(worker), outcome };
    assigned.on_event(&finish, 2).expect("finish changes the job")
}

fn dataset(shards: usize) -> TaskOutcome {
    let unlabeled_shards = (0..shards).map(|i| ShardRef { file: format!("unlabeled-{i:05}.safetensors"), samples: 10 }).collect();
    TaskOutcome::Prepared(DatasetSummary { class_names: vec!["a".into(), "b".into()], train_samples: 5, val_samples: 5, unlabeled_shards })
}

fn trained(round: u32, macro_f1: f64, per_class_f1: Vec<f64>) -> TaskOutcome {
    let validation = MetricsSummary { macro_f1, per_class_f1, ..MetricsSummary::default() };
    TaskOutcome::Trained(TrainedModel {
        validation,
        model_path: format!("/a/r{round}/model.safetensors"),
        class_names: vec![],
        frame_validation: None,
        test: None,
        online: None,
    })
}

/// [`trained`] with test-split metrics of macro-F1 `test_f1`.
fn trained_with_test(round: u32, macro_f1: f64, test_f1: f64) -> TaskOutcome {
    let validation = MetricsSummary { macro_f1, per_class_f1: vec![macro_f1; 2], ..MetricsSummary::default() };
    let test = Some(MetricsSummary { macro_f1: test_f1, accuracy: test_f1, samples: 9, ..MetricsSummary::default() });
    let model_path = format!("/a/r{round}/model.safetensors");
    TaskOutcome::Trained(TrainedModel { validation, model_path, class_names: vec![], frame_validation: None, test, online: None })
}

fn inferred(sums: Vec<f64>, samples: u64) -> TaskOutcome {
    TaskOutcome::Inferred(InferPartial { probability_sums: sums, samples, predictions_file: String::new() })
}

fn selected() -> TaskOutcome {
    TaskOutcome::Selected(SelectionSummary { selected: 3, pool: 20, ..SelectionSummary::default() })
}

fn prepared(rounds: u16, shards: usize) -> JobRecord {
    let job = job(rounds, 3);
    let prepare = live(&job, TaskKind::Prepare)[0].clone();
    run(job, &prepare, "w1", dataset(shards))
}

#[test]
fn a_supervised_job_prepares_trains_and_succeeds() {
    let queued = job(0, 3);
    assert_eq!(queued.state, JobState::Queued);
    let ready = prepared(0, 0);
    assert_eq!(ready.state, JobState::Training);
    let train = live(&ready, TaskKind::Train);
    assert_eq!(train.len(), 1);
    let done = run(ready, &train[0], "w2", trained(0, 0.7, vec![0.6, 0.8]));
    assert_eq!(done.state, JobState::Succeeded);
    let result = done.result.as_ref().expect("result");
    assert_eq!((result.best_round, result.model_path.as_str()), (0, "/a/r0/model.safetensors"));
    let again = JobEvent::TaskFinished { task: train[0].clone(), worker: w("w2"), outcome: trained(0, 0.9, vec![]) };
    assert_eq!(done.on_event(&again, 9), None, "a repeated report changes nothing");
}

#[test]
fn rounds_predict_every_shard_then_select_then_train_a_student() {
    let ready = prepared(2, 2);
    let teacher = live(&ready, TaskKind::Train)[0].clone();
    let labelling = run(ready, &teacher, "w1", trained(0, 0.5, vec![0.9, 0.1]));
    assert_eq!((labelling.state.clone(), labelling.round), (JobState::PseudoLabeling, Round(1)));
    let infer = live(&labelling, TaskKind::Infer);
    assert_eq!(infer.len(), 2, "one inference task per unlabelled shard");

    // Shard 0: 10 samples, probability sums [7, 3]; shard 1: 30 samples, [9, 21].
    let half = run(labelling, &infer[0], "w1", inferred(vec![7.0, 3.0], 10));
    assert_eq!(half.state, JobState::PseudoLabeling, "waits for every shard");
    let again = JobEvent::TaskFinished { task: infer[0].clone(), worker: w("w1"), outcome: inferred(vec![7.0, 3.0], 10) };
    assert_eq!(half.on_event(&again, 3), None, "a repeated shard report is not counted twice");
    let selecting = run(half, &infer[1], "w2", inferred(vec![9.0, 21.0], 30));
    assert_eq!(selecting.state, JobState::Selecting);
    let prior = &selecting.round_record(Round(1)).expect("round 1").class_prior;
    // (7 + 9) / 40 = 0.4 and (3 + 21) / 40 = 0.6
    assert!((prior[0] - 0.4).abs() < 1e-12 && (prior[1] - 0.6).abs() < 1e-12, "{prior:?}");

    let select = live(&selecting, TaskKind::Select)[0].clone();
    let student = run(selecting, &select, "w2", selected());
    assert_eq!((student.state.clone(), student.round), (JobState::Training, Round(1)));
    let round1 = student.round_record(Round(1)).expect("round 1");
    assert_eq!(round1.selection.as_ref().map(|s| s.selected), Some(3));
    // Feedback from round 0's F1 [0.9, 0.1]: the weak class is sampled more.
    assert_eq!(round1.class_weights.len(), 2);
    assert!(round1.class_weights[1] > round1.class_weights[0], "{:?}", round1.class_weights);
}

#[test]
fn the_best_round_is_final_and_patience_stops_early() {
    // Rounds: teacher 0.6, round 1 0.8, round 2 0.7, round 3 0.65 -> with patience 2, stop after round 3.
    let mut job = prepared(5, 1);
    job.spec.semi_supervised.patience = 2;
    for (round, f1) in [(0u32, 0.6), (1, 0.8), (2, 0.7), (3, 0.65)] {
        if round > 0 {
            let infer = live(&job, TaskKind::Infer)[0].clone();
            job = run(job, &infer, "w1", inferred(vec![1.0, 1.0], 2));
            let select = live(&job, TaskKind::Select)[0].clone();
            job = run(job, &select, "w1", selected());
        }
        let train = live(&job, TaskKind::Train)[0].clone();
        job = run(job, &train, "w1", trained(round, f1, vec![f1, f1]));
    }
    assert_eq!(job.state, JobState::Succeeded, "no improvement for 2 rounds stops before round 5");
    let result = job.result.expect("result");
    assert_eq!(result.best_round, 1);
    assert_eq!(result.model_path, "/a/r1/model.safetensors");
}

#[test]
fn the_result_carries_the_best_rounds_test_metrics_which_choose_nothing() {
    // Round 1 wins on validation (0.8 over 0.6) although round 0 scores better on test.
    let mut job = prepared(1, 1);
    let train = live(&job, TaskKind::Train)[0].clone();
    job = run(job, &train, "w1", trained_with_test(0, 0.6, 0.9));
    let infer = live(&job, TaskKind::Infer)[0].clone();
    job = run(job, &infer, "w1", inferred(vec![1.0, 1.0], 2));
    let select = live(&job, TaskKind::Select)[0].clone();
    job = run(job, &select, "w1", selected());
    let train = live(&job, TaskKind::Train)[0].clone();
    job = run(job, &train, "w1", trained_with_test(1, 0.8, 0.4));
    assert_eq!(job.state, JobState::Succeeded);
    let result = job.result.as_ref().expect("result");
    assert_eq!(result.best_round, 1, "validation chooses the round");
    assert_eq!(result.test.as_ref().map(|t| t.macro_f1), Some(0.4), "the chosen round's test metrics are reported");
    assert_eq!(job.rounds[0].model.as_ref().and_then(|m| m.test.as_ref()).map(|t| t.macro_f1), Some(0.9));

    let supervised = prepared(0, 0);
    let train = live(&supervised, TaskKind::Train)[0].clone();
    let done = run(supervised, &train, "w1", trained(0, 0.5, vec![0.5, 0.5]));
    assert_eq!(done.result.expect("result").test, None, "no test metrics without a test split");
}

#[test]
fn rounds_without_an_unlabelled_split_fail_clearly() {
    let failed = prepared(2, 0);
    assert!(matches!(&failed.state, JobState::Failed { reason } if reason.contains("unlabeled") && reason.contains("semi_supervised.rounds")));
}

#[test]
fn a_lost_worker_requeues_its_task_until_attempts_are_spent() {
    let ready = prepared(0, 0);
    let train = live(&ready, TaskKind::Train)[0].clone();
    let mut job = ready.on_event(&JobEvent::TaskAssigned { task: train, worker: w("w1"), device: Device::Cpu }, 1).expect("assign");
    job.spec.resources.max_attempts = 2;
    let requeued = job.on_event(&JobEvent::WorkerLost { worker: w("w1") }, 2).expect("loss changes the job");
    assert_eq!(requeued.state, JobState::Training, "the phase goes on with a new attempt");
    let second = live(&requeued, TaskKind::Train);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, Attempt(2), "{second:?}");

    let event = JobEvent::TaskAssigned { task: second[0].clone(), worker: w("w2"), device: Device::Cpu };
    let retraining = requeued.on_event(&event, 3).expect("assign");
    let failed = retraining.on_event(&JobEvent::WorkerLost { worker: w("w2") }, 4).expect("loss");
    assert!(matches!(&failed.state, JobState::Failed { reason } if reason.contains("w2") && reason.contains("2 attempts")), "{:?}", failed.state);
    assert_eq!(failed.live_tasks().count(), 0);
}

#[test]
fn a_lost_worker_only_moves_its_own_shards() {
    let ready = prepared(1, 3);
    let teacher = live(&ready, TaskKind::Train)[0].clone();
    let mut job = run(ready, &teacher, "w1", trained(0, 0.5, vec![0.5, 0.5]));
    let infer = live(&job, TaskKind::Infer);
    for (task, worker) in infer.iter().zip(["w1", "w2", "w1"]) {
        job = job.on_event(&JobEvent::TaskAssigned { task: task.clone(), worker: w(worker), device: Device::Cpu }, 1).expect("assign");
    }
    let finish = JobEvent::TaskFinished { task: infer[0].clone(), worker: w("w1"), outcome: inferred(vec![1.0, 1.0], 2) };
    job = job.on_event(&finish, 2).expect("finish");
    let after = job.on_event(&JobEvent::WorkerLost { worker: w("w1") }, 3).expect("loss");
    let pending: Vec<&TaskRecord> = after.live_tasks().filter(|t| t.state == TaskState::Pending).collect();
    assert_eq!(pending.len(), 1, "only the unfinished shard of the lost worker is redone");
    assert_eq!(pending[0].shard, Some(ShardId::new("unlabeled-00002.safetensors")));
    assert_eq!(after.round_record(Round(1)).expect("round").partials.len(), 1, "the finished shard is kept");
}

#[test]
fn a_non_retryable_failure_fails_the_job_with_its_reason() {
    let job = job(0, 3);
    let prepare = live(&job, TaskKind::Prepare)[0].clone();
    let assigned = job.on_event(&JobEvent::TaskAssigned { task: prepare.clone(), worker: w("w1"), device: Device::Cpu }, 1).expect("assign");
    let event = JobEvent::TaskFailed { task: prepare, worker: w("w1"), reason: "cannot read dataset file /d/manifest.json".into(), retryable: false };
    let failed = assigned.on_event(&event, 2).expect("failure changes the job");
    assert_eq!(failed.state, JobState::Failed { reason: "cannot read dataset file /d/manifest.json".into() });
}

#[test]
fn reports_from_the_wrong_worker_or_of_the_wrong_kind_are_ignored() {
    let job = job(0, 3);
    let prepare = live(&job, TaskKind::Prepare)[0].clone();
    let assigned = job.on_event(&JobEvent::TaskAssigned { task: prepare.clone(), worker: w("w1"), device: Device::Cpu }, 1).expect("assign");
    let stray = JobEvent::TaskFinished { task: prepare.clone(), worker: w("w2"), outcome: dataset(0) };
    assert_eq!(assigned.on_event(&stray, 2), None);
    let wrong_kind = JobEvent::TaskFinished { task: prepare, worker: w("w1"), outcome: selected() };
    assert_eq!(assigned.on_event(&wrong_kind, 2), None);
}

#[test]
fn cancel_abandons_live_tasks_and_is_final() {
    let ready = prepared(0, 0);
    let cancelled = ready.on_event(&JobEvent::CancelRequested { reason: "by user".into() }, 2).expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled { reason: "by user".into() });
    assert_eq!(cancelled.live_tasks().count(), 0);
    assert_eq!(cancelled.on_event(&JobEvent::CancelRequested { reason: "again".into() }, 3), None);
}

#[test]
fn a_resumed_attempt_replaces_the_epochs_it_repeats() {
    let ready = prepared(0, 0);
    let train = live(&ready, TaskKind::Train)[0].clone();
    let mut job = ready.on_event(&JobEvent::TaskAssigned { task: train.clone(), worker: w("w1"), device: Device::Cpu }, 1).expect("assign");
    let epoch = |n| EpochReport {
        round: Round(0),
        epoch: n,
        train_loss: 1.0,
        train_accuracy: 0.5,
        validation: MetricsSummary::default(),
        seconds: 1.0,
        images_per_second: 0.0,
    };
    for n in [1, 2, 3, 2] {
        let event = JobEvent::TaskProgress { task: train.clone(), worker: w("w1"), epoch: epoch(n), epochs_total: 5 };
        job = job.on_event(&event, 2).expect("progress");
    }
    let epochs: Vec<u32> = job.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![1, 2]);
}

#[test]
fn a_gang_trains_when_every_rank_is_done_and_restarts_whole_when_one_is_lost() {
    let mut job = job(0, 3);
    job.spec.resources.workers = 2;
    let prepare = live(&job, TaskKind::Prepare)[0].clone();
    let ready = run(job, &prepare, "w1", dataset(0));
    let ranks: Vec<TaskRecord> = ready.live_tasks().filter(|t| t.kind == TaskKind::Train).cloned().collect();
    assert_eq!(ranks.iter().map(|t| (t.rank.0, t.world_size)).collect::<Vec<_>>(), vec![(0, 2), (1, 2)]);

    // Rank 1 is lost: both ranks are abandoned and a new gang of two is queued.
    let mut gang = ready.clone();
    for (task, worker) in ranks.iter().zip(["w1", "w2"]) {
        gang = gang.on_event(&JobEvent::TaskAssigned { task: task.key(&gang.id), worker: w(worker), device: Device::Cpu }, 1).expect("assign");
    }
    let restarted = gang.on_event(&JobEvent::WorkerLost { worker: w("w2") }, 2).expect("loss");
    let second: Vec<&TaskRecord> = restarted.live_tasks().collect();
    assert_eq!(second.len(), 2, "one new gang, not one per lost rank");
    assert!(second.iter().all(|t| t.attempt == Attempt(2) && t.state == TaskState::Pending));

    // Rank 1 finishes first; the round is trained only when rank 0 (with the model) is done too.
    let mut done = gang;
    let finish = |task: &TaskRecord, worker: &str| JobEvent::TaskFinished {
        task: task.key(&JobId::new("j")),
        worker: w(worker),
        outcome: trained(0, 0.7, vec![0.7, 0.7]),
    };
    done = done.on_event(&finish(&ranks[1], "w2"), 3).expect("rank 1");
    assert_eq!(done.state, JobState::Training);
    done = done.on_event(&finish(&ranks[0], "w1"), 4).expect("rank 0");
    assert_eq!(done.state, JobState::Succeeded);
}

#[test]
fn an_elastic_gang_shrinks_to_the_ranks_left_and_grows_back_without_spending_attempts() {
    let mut job = job(0, 2);
    job.spec.resources.workers = 3;
    job.spec.resources.min_workers = Some(1);
    let prepare = live(&job, TaskKind::Prepare)[0].clone();
    let ready = run(job, &prepare, "w1", dataset(0));
    let assign = |job: JobRecord, ranks: &[(TaskKey, &str)]| {
        ranks.iter().fold(job, |job, (task, worker)| {
            job.on_event(&JobEvent::TaskAssigned { task: task.clone(), worker: w(worker), device: Device::Cpu }, 1).expect("assign")
        })
    };
    let gang = |job: &JobRecord| -> Vec<(u32, u32, u32)> { job.live_tasks().map(|t| (t.attempt.0, t.rank.0, t.world_size)).collect() };
    assert_eq!(gang(&ready), vec![(1, 0, 3), (1, 1, 3), (1, 2, 3)]);

    // Placed with two free slots: rank 2 goes, the two left train as a gang of two.
    let rank = |job: &JobRecord, r: u32| job.live_tasks().find(|t| t.rank == Rank(r)).map(|t| t.key(&job.id)).expect("rank");
    let short = ready.on_event(&JobEvent::GangShrunk { task: rank(&ready, 0), world_size: 2 }, 1).expect("shrink");
    assert_eq!(gang(&short), vec![(1, 0, 2), (1, 1, 2)]);
    assert_eq!(short.on_event(&JobEvent::GangShrunk { task: rank(&short, 0), world_size: 0 }, 1), None, "never below min_workers");
    let running = assign(short.clone(), &[(rank(&short, 0), "w1"), (rank(&short, 1), "w2")]);
    assert!(running.is_short_gang(running.task(&rank(&running, 0)).expect("rank 0")));

    // w2 is lost: the next attempt is queued whole (placing it decides its size) ...
    let lost = running.on_event(&JobEvent::WorkerLost { worker: w("w2") }, 2).expect("loss");
    assert_eq!(gang(&lost), vec![(2, 0, 3), (2, 1, 3), (2, 2, 3)]);
    let alone = lost.on_event(&JobEvent::GangShrunk { task: rank(&lost, 0), world_size: 1 }, 3).expect("shrink");
    let alone = assign(alone.clone(), &[(rank(&alone, 0), "w1")]);
    assert_eq!(gang(&alone), vec![(2, 0, 1)]);

    // ... and grows back whole at an epoch boundary: a new attempt that spends nothing.
    let grown = alone.on_event(&JobEvent::GangGrows { task: rank(&alone, 0) }, 4).expect("grow");
    assert_eq!(gang(&grown), vec![(3, 0, 3), (3, 1, 3), (3, 2, 3)]);
    assert!(grown.live_tasks().all(|t| t.state == TaskState::Pending && t.regrowths == 1));
    let whole = assign(grown.clone(), &[(rank(&grown, 0), "w1"), (rank(&grown, 1), "w2"), (rank(&grown, 2), "w3")]);
    assert!(!whole.is_short_gang(whole.task(&rank(&whole, 0)).expect("rank 0")), "a whole gang does not grow");
    assert_eq!(whole.on_event(&JobEvent::GangGrows { task: rank(&whole, 0) }, 5), None);

    // One loss was spent of max_attempts = 2: the next loss fails the job, the regrowth
    // did not count.
    let failed = whole.on_event(&JobEvent::WorkerLost { worker: w("w3") }, 6).expect("loss");
    match &failed.state {
        JobState::Failed { reason } => assert!(reason.contains("gave up after 2 attempts"), "{reason}"),
        other => panic!("the second loss fails the job: {other:?}"),
    }
}

fn epoch_report(n: u32) -> EpochReport {
    EpochReport { round: Round(0), epoch: n, train_loss: 1.0, train_accuracy: 0.5, validation: MetricsSummary::default(), seconds: 1.0, images_per_second: 0.0 }
}

fn assign_to(job: &JobRecord, task: &TaskKey, worker: &str, now_ms: u64) -> JobRecord {
    job.on_event(&JobEvent::TaskAssigned { task: task.clone(), worker: w(worker), device: Device::Cpu }, now_ms).expect("assign")
}

fn report(job: &JobRecord, task: &TaskKey, worker: &str, epochs: &[u32]) -> JobRecord {
    let mut job = job.clone();
    for &n in epochs {
        let event = JobEvent::TaskProgress { task: task.clone(), worker: w(worker), epoch: epoch_report(n), epochs_total: 5 };
        job = job.on_event(&event, 3).expect("progress");
    }
    job
}

#[test]
fn a_retry_resumes_only_from_the_checkpoints_its_round_recorded_newest_first() {
    let ready = prepared(0, 0);
    let first = live(&ready, TaskKind::Train)[0].clone();
    let training = report(&assign_to(&ready, &first, "w1", 1), &first, "w1", &[1, 2]);
    let retried = training.on_event(&JobEvent::WorkerLost { worker: w("w1") }, 4).expect("loss");
    let second = retried.task(&live(&retried, TaskKind::Train)[0]).expect("attempt 2").clone();
    let inputs = retried.task_inputs(&second);
    assert_eq!(inputs.resume_from, [CheckpointRef { attempt: Attempt(1), epoch: 2 }, CheckpointRef { attempt: Attempt(1), epoch: 1 }]);

    // Attempt 2 resumes from epoch 2 and reports 3; attempt 1, paused and replaced, wakes and
    // reports epochs 3 and 4 of its own: they change nothing, and are never resumed from.
    let second = second.key(&retried.id);
    let after = report(&assign_to(&retried, &second, "w2", 5), &second, "w2", &[3]);
    for n in [3, 4] {
        let stale = JobEvent::TaskProgress { task: first.clone(), worker: w("w1"), epoch: epoch_report(n), epochs_total: 5 };
        assert_eq!(after.on_event(&stale, 6), None, "a replaced attempt's epoch {n} is not recorded");
    }
    let third = after.on_event(&JobEvent::WorkerLost { worker: w("w2") }, 7).expect("loss");
    let task = third.task(&live(&third, TaskKind::Train)[0]).expect("attempt 3").clone();
    let resume: Vec<(u32, u32)> = third.task_inputs(&task).resume_from.iter().map(|c| (c.attempt.0, c.epoch)).collect();
    assert_eq!(resume, [(2, 3), (1, 2), (1, 1)]);
    let epochs: Vec<u32> = third.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [1, 2, 3], "every epoch of the kept model, once");
}

#[test]
fn retries_back_off_exponentially_up_to_the_cap_and_say_why() {
    let mut ready = prepared(0, 0);
    ready.spec.resources.max_attempts = 10;
    ready.spec.resources.retry_backoff_s = std::time::Duration::from_secs(2);
    ready.spec.resources.retry_backoff_max_s = std::time::Duration::from_secs(5);
    let mut job = ready;
    let mut waits = Vec::new();
    let mut now = 1_000;
    for _ in 0..4 {
        let task = live(&job, TaskKind::Train)[0].clone();
        let pending = job.task(&task).expect("task");
        assert!(!pending.is_placeable(pending.not_before_ms.saturating_sub(1)) || pending.not_before_ms == 0, "not placed during its back-off");
        now = now.max(pending.not_before_ms);
        job = assign_to(&job, &task, "w1", now);
        let failed = JobEvent::TaskFailed { task, worker: w("w1"), reason: "cannot write /a/j/r0/a1: no space left on device".into(), retryable: true };
        job = job.on_event(&failed, now).expect("failure");
        let retry = job.task(&live(&job, TaskKind::Train)[0]).expect("retry").clone();
        assert!(retry.is_placeable(retry.not_before_ms) && !retry.is_placeable(retry.not_before_ms - 1));
        assert_eq!(job.retry_at_ms(), Some(retry.not_before_ms));
        waits.push(retry.not_before_ms - now);
    }
    // 2 s, 4 s, then the 5 s cap, each times a jitter in [0.5, 1).
    for (wait, full) in waits.iter().zip([2_000u64, 4_000, 5_000, 5_000]) {
        assert!((full / 2..full).contains(wait), "waited {wait} ms of at most {full}: {waits:?}");
    }
    let reason = job.last_failure.as_deref().expect("the last failure is kept");
    assert!(reason.contains("no space left on device") && reason.contains("attempt 4"), "{reason}");
}

#[test]
fn a_failed_job_resumes_from_its_last_checkpoint_with_a_fresh_budget() {
    let ready = prepared(0, 0);
    let first = live(&ready, TaskKind::Train)[0].clone();
    let training = report(&assign_to(&ready, &first, "w1", 1), &first, "w1", &[1, 2]);
    assert!(training.resumed(4).expect_err("a running job").to_string().contains("only a failed or cancelled job"));
    let mut failing = training.on_event(&JobEvent::WorkerLost { worker: w("w1") }, 4).expect("loss");
    failing.spec.resources.max_attempts = 2;
    let second = live(&failing, TaskKind::Train)[0].clone();
    let assigned = assign_to(&failing, &second, "w2", 5);
    let event = JobEvent::TaskFailed { task: second, worker: w("w2"), reason: "cannot write: no space left on device".into(), retryable: true };
    let failed = assigned.on_event(&event, 6).expect("failure");
    assert!(matches!(&failed.state, JobState::Failed { reason } if reason.contains("gave up after 2 attempts")), "{:?}", failed.state);

    let resumed = failed.resumed(7).expect("a failed job resumes");
    assert_eq!(resumed.state, JobState::Training);
    let third = resumed.task(&live(&resumed, TaskKind::Train)[0]).expect("attempt 3").clone();
    assert_eq!((third.attempt, third.not_before_ms), (Attempt(3), 7), "a new attempt, at once");
    assert_eq!(resumed.task_inputs(&third).resume_from.first(), Some(&CheckpointRef { attempt: Attempt(1), epoch: 2 }));
    // A fresh budget: it may fail once more before the job fails again.
    let assigned = assign_to(&resumed, &third.key(&resumed.id), "w2", 8);
    let again = assigned.on_event(&JobEvent::WorkerLost { worker: w("w2") }, 9).expect("loss");
    assert_eq!(again.state, JobState::Training, "attempts before the resume do not count");

    let cancelled = ready.on_event(&JobEvent::CancelRequested { reason: "by user".into() }, 2).expect("cancel");
    let resumed = cancelled.resumed(3).expect("a cancelled job resumes");
    assert_eq!((resumed.state.clone(), live(&resumed, TaskKind::Train).len()), (JobState::Training, 1));
}

#[test]
fn a_job_failed_between_its_tasks_cannot_be_resumed() {
    let job = job(1, 3);
    let prepare = live(&job, TaskKind::Prepare)[0].clone();
    let failed = run(job, &prepare, "w1", dataset(0));
    assert!(matches!(failed.state, JobState::Failed { .. }));
    assert!(failed.resumed(3).expect_err("nothing to resume").to_string().contains("submit it again"));
}

mod stored_records {
    use super::*;
    use feral_common::task::MaskAudit;

    const METRICS: &str = r#"{ "accuracy": 0.5, "macro_f1": 0.4, "per_class_f1": [0.3, 0.5], "confusion": [2, 1, 1, 2], "samples": 6 }"#;

    #[test]
    fn records_stored_before_test_metrics_and_online_masks_load_without_them() {
        let old_model = format!(r#"{{ "validation": {METRICS}, "model_path": "/a/r0/model.safetensors", "class_names": ["a", "b"] }}"#);
        let model: TrainedModel = serde_json::from_str(&old_model).expect("an old trained model loads");
        assert_eq!((model.test, model.frame_validation, model.validation.samples), (None, None, 6));
        let old_round = format!(r#"{{ "round": 0, "class_weights": [], "partials": {{}}, "class_prior": [], "selection": null, "model": {old_model} }}"#);
        let round: RoundRecord = serde_json::from_str(&old_round).expect("an old round loads");
        assert_eq!(round.model.as_ref().and_then(|m| m.test.as_ref()), None);
        assert_eq!(round.model.and_then(|m| m.online), None, "no online mask in an old round");
        let old_result = format!(r#"{{ "validation": {METRICS}, "model_path": "/a/r0/model.safetensors", "class_names": ["a", "b"], "best_round": 0 }}"#);
        let result: JobResult = serde_json::from_str(&old_result).expect("an old job result loads");
        assert_eq!(result.test, None);

        let with_test = old_model.replacen('{', &format!(r#"{{ "test": {METRICS},"#), 1);
        let model: TrainedModel = serde_json::from_str(&with_test).expect("a model with test metrics loads");
        assert_eq!(model.test.map(|t| t.macro_f1), Some(0.4));
        assert_eq!(model.online, None);

        let online = r#"{ "seen": 100, "masked_in": 40, "with_hidden_label": 30, "correct": 27 }"#;
        let with_online = old_model.replacen('{', &format!(r#"{{ "online": {online},"#), 1);
        let model: TrainedModel = serde_json::from_str(&with_online).expect("a model with an online mask loads");
        assert_eq!(model.online, Some(MaskAudit { seen: 100, masked_in: 40, with_hidden_label: 30, correct: 27 }));
        let stored = serde_json::to_string(&model).expect("a model serialises");
        assert_eq!(serde_json::from_str::<TrainedModel>(&stored).expect("and loads back"), model);
    }
}

#[test]
fn training_time_left_counts_this_round_and_the_planned_ones_at_the_mean_epoch_time() {
    let ready = prepared(2, 1);
    assert_eq!(ready.training_seconds_left(), None, "no epoch yet, no estimate");
    let teacher = live(&ready, TaskKind::Train)[0].clone();
    // Epochs of 1 s; epochs_total 5 in the reports, 10 (the default) per student round.
    let training = report(&assign_to(&ready, &teacher, "w1", 1), &teacher, "w1", &[1, 2]);
    assert_eq!(training.training_seconds_left(), Some(3.0 + 2.0 * 10.0));
    let cancelled = training.on_event(&JobEvent::CancelRequested { reason: "by test".into() }, 9).expect("cancel");
    assert_eq!(cancelled.training_seconds_left(), None, "a final job has nothing left");
}
