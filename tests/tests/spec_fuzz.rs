//! Arbitrary job specs, within and far outside every field's range, against a running
//! coordinator with a scripted worker: each is queued and runs, or is refused with an
//! error that names a field it set; afterwards the coordinator and the worker still serve.

use std::sync::Arc;
use std::time::Duration;

use feral_proto::v1 as pb;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRng, TestRunner};

/// Every numeric field of a spec: (table, key, integer?).
const FIELDS: &[(&str, &str, bool)] = &[
    ("", "version", true),
    ("model", "width", true),
    ("model", "dropout", false),
    ("train", "epochs", true),
    ("train", "batch_size", true),
    ("train", "steps_per_epoch", true),
    ("train", "learning_rate", false),
    ("train", "weight_decay", false),
    ("train", "momentum", false),
    ("train", "label_smoothing", false),
    ("train", "seed", true),
    ("train", "threads", true),
    ("train.strong", "ops", true),
    ("train.strong", "magnitude", true),
    ("train.strong", "cutout", false),
    ("train.loss", "drw_epoch", true),
    ("resources", "max_attempts", true),
    ("resources", "workers", true),
    ("semi_supervised", "rounds", true),
    ("semi_supervised", "patience", true),
    ("semi_supervised", "threshold", false),
    ("semi_supervised", "min_threshold", false),
    ("semi_supervised", "tau", false),
    ("semi_supervised", "cap_factor", false),
    ("semi_supervised", "mu", false),
    ("semi_supervised", "lambda_u", false),
    ("semi_supervised", "prior_momentum", false),
    ("semi_supervised", "temporal_window", true),
    ("semi_supervised", "temporal_epochs", true),
];

fn integer() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..=8).prop_map(|v| v.to_string()),
        Just("-1".to_owned()),
        Just("4294967295".to_owned()),
        Just("4294967296".to_owned()),
        Just("1099511627776".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        any::<i64>().prop_map(|v| v.to_string()),
    ]
}

fn float() -> impl Strategy<Value = String> {
    prop_oneof![
        (0.0f64..1.0).prop_map(|v| format!("{v:?}")),
        Just("0.0".to_owned()),
        Just("1.0".to_owned()),
        Just("-0.5".to_owned()),
        Just("1e300".to_owned()),
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
    ]
}

/// A spec with some of [`FIELDS`] set, and the keys it set.
fn spec(dataset: String) -> impl Strategy<Value = (String, Vec<&'static str>)> {
    let fields = proptest::sample::subsequence(FIELDS.to_vec(), 0..=6);
    fields
        .prop_flat_map(|chosen| {
            let values: Vec<BoxedStrategy<String>> = chosen.iter().map(|&(_, _, int)| if int { integer().boxed() } else { float().boxed() }).collect();
            (Just(chosen), values)
        })
        .prop_map(move |(chosen, values)| {
            let mut top = format!("name = \"fuzz\"\ndataset = {dataset:?}\n");
            let mut tables: Vec<(&str, String)> = Vec::new();
            let mut version = "version = 1\n".to_owned();
            for (&(table, key, _), value) in chosen.iter().zip(&values) {
                match table {
                    "" => version = format!("{key} = {value}\n"),
                    _ => match tables.iter_mut().find(|(t, _)| *t == table) {
                        Some((_, body)) => body.push_str(&format!("{key} = {value}\n")),
                        None => tables.push((table, format!("{key} = {value}\n"))),
                    },
                }
            }
            top.insert_str(0, &version);
            for (table, body) in tables {
                top.push_str(&format!("\n[{table}]\n{body}"));
            }
            (top, chosen.iter().map(|&(_, key, _)| key).collect())
        })
}

#[test]
fn arbitrary_specs_are_run_or_refused_by_field_and_nothing_stops_serving() -> anyhow::Result<()> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let coordinator = runtime.block_on(RunningCoordinator::in_memory(dir.path()))?;
    let worker = runtime.block_on(async { RunningWorker::start(&coordinator.url(), "w1", Arc::new(ScriptedRunner::fast(2))) });
    let jobs = runtime.block_on(coordinator.jobs())?;
    let dataset = dir.path().join("data").display().to_string();

    let (accepted, refused) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0usize));
    // A fixed seed: the same 400 specs on every run, so that CI is repeatable.
    let config = Config { cases: 400, failure_persistence: None, ..Config::default() };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let outcome = runner.run(&spec(dataset), |(text, keys)| {
        let mut jobs = jobs.clone();
        match runtime.block_on(jobs.submit_job(pb::SubmitJobRequest { spec_toml: text.clone() })) {
            Ok(_) => accepted.set(accepted.get() + 1),
            Err(status) => {
                refused.set(refused.get() + 1);
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", text);
                prop_assert!(keys.iter().any(|k| status.message().contains(k)), "{:?} names none of {:?}:\n{}", status.message(), keys, text);
            }
        }
        Ok(())
    });
    outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    let (accepted, refused) = (accepted.get(), refused.get());
    eprintln!("{accepted} specs accepted, {refused} refused");
    assert!(accepted > 20 && refused > 20, "both kinds were tried: {accepted} accepted, {refused} refused");

    // Still serving: a plain job runs to the end on the same worker, and every job
    // accepted above has ended or is still queued behind it, none lost.
    runtime.block_on(async {
        let mut jobs = jobs.clone();
        let job = submit(&mut jobs, job_spec(dir.path(), 2)).await?;
        let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(300)).await?;
        anyhow::ensure!(done.state == pb::JobState::Succeeded as i32, "{}", done.state_reason);
        let listed = jobs.list_jobs(pb::ListJobsRequest { page_size: 1000, page_token: String::new() }).await?.into_inner().jobs;
        anyhow::ensure!(listed.len() == accepted + 1, "{} listed, {} accepted + 1", listed.len(), accepted);
        worker.stop().await?;
        coordinator.stop().await
    })
}
