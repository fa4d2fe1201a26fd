//! Text for people: job and worker tables, job details, the line printed per finished
//! epoch, and the progress bar's message. Pure functions of proto values and `now_ms`.
//! Names, ids, reasons and paths come from other users and workers: they are printed
//! through [`printable`] (tables do that themselves).

use feral_common::text::printable;
use feral_proto::v1 as pb;

use crate::table::{f1, percent, Align, Table};

/// A job state in lower case, as the CLI prints it.
pub fn job_state_name(state: pb::JobState) -> &'static str {
    match state {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Queued => "queued",
        pb::JobState::Preparing => "preparing",
        pb::JobState::Training => "training",
        pb::JobState::Evaluating => "evaluating",
        pb::JobState::PseudoLabeling => "pseudo-labeling",
        pb::JobState::Selecting => "selecting",
        pb::JobState::Finalizing => "finalizing",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

/// Whether a job in `state` will change no more.
pub fn is_final(state: pb::JobState) -> bool {
    matches!(state, pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
}

fn worker_state_name(state: pb::WorkerState) -> &'static str {
    match state {
        pb::WorkerState::Unspecified => "unknown",
        pb::WorkerState::Live => "live",
        pb::WorkerState::Lost => "lost",
    }
}

/// A duration in milliseconds as its largest whole unit: `42s`, `3m`, `5h`, `2d`.
pub fn format_age(milliseconds: u64) -> String {
    let seconds = milliseconds / 1000;
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn validation(epoch: &pb::EpochMetrics) -> pb::Metrics {
    epoch.validation.clone().unwrap_or_default()
}

/// The saved model's validation macro-F1 (marked `!` when the coordinator has a warning
/// about it), and the last epoch's, as the coordinator summarises them (listings carry
/// no epochs); `-` for each the job does not have yet.
fn model_and_last_f1(job: &pb::Job) -> (String, String) {
    let warned = job.result.as_ref().is_some_and(|r| !r.warnings.is_empty());
    let model = job.model_macro_f1.map_or_else(|| "-".to_owned(), |v| format!("{}{}", f1(v), if warned { "!" } else { "" }));
    (model, job.last_macro_f1.map_or_else(|| "-".to_owned(), f1))
}

/// `feral status`: one row per job.
pub fn jobs_table(jobs: &[pb::Job], now_ms: u64) -> String {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("OWNER", Align::Left),
        ("STATE", Align::Left),
        ("ROUND", Align::Right),
        ("EPOCHS", Align::Right),
        ("MODEL F1", Align::Right),
        ("LAST F1", Align::Right),
        ("AGE", Align::Right),
    ]);
    let mut warnings = String::new();
    for job in jobs {
        let (model, last) = model_and_last_f1(job);
        for warning in job.result.iter().flat_map(|r| &r.warnings) {
            warnings.push_str(&format!("{}: {}\n", printable(&job.id), printable(warning)));
        }
        table.push(vec![
            job.id.clone(),
            job.name.clone(),
            if job.owner.is_empty() { "-".to_owned() } else { job.owner.clone() },
            job_state_name(job.state()).to_owned(),
            job.round.to_string(),
            format!("{}/{}", job.epochs_done, job.epochs_total),
            model,
            last,
            format_age(now_ms.saturating_sub(job.created_at_ms)),
        ]);
    }
    if table.is_empty() {
        return "no jobs\n".to_owned();
    }
    table.render() + &warnings
}

/// The per-epoch table of one job; a round column appears once the job has several rounds.
pub fn epochs_table(epochs: &[pb::EpochMetrics]) -> String {
    let with_rounds = epochs.iter().any(|e| e.round > 0);
    let mut headers = vec![];
    if with_rounds {
        headers.push(("ROUND", Align::Right));
    }
    headers.extend([
        ("EPOCH", Align::Right),
        ("TRAIN LOSS", Align::Right),
        ("TRAIN ACC", Align::Right),
        ("VAL ACC", Align::Right),
        ("VAL MACRO-F1", Align::Right),
        ("SECONDS", Align::Right),
    ]);
    let mut table = Table::new(&headers);
    for epoch in epochs {
        let val = validation(epoch);
        let mut row = vec![];
        if with_rounds {
            row.push(epoch.round.to_string());
        }
        row.extend([
            epoch.epoch.to_string(),
            format!("{:.4}", epoch.train_loss),
            percent(epoch.train_accuracy),
            percent(val.accuracy),
            f1(val.macro_f1),
            format!("{:.1}", epoch.seconds),
        ]);
        table.push(row);
    }
    table.render()
}

/// The final validation metrics of a succeeded job, with per-class F1 by class name; the
/// round whose model won is named when the job planned several rounds. Where the dataset
/// has a test split, a `final test:` line gives the same model's test metrics.
pub fn final_metrics(result: &pb::JobResult, rounds_planned: u32) -> String {
    let metrics = result.validation.clone().unwrap_or_default();
    let source = if rounds_planned > 0 { format!(" (model of round {})", result.best_round) } else { String::new() };
    let mut out =
        format!("final validation{source}: accuracy {}, macro-F1 {} ({} samples)\n", percent(metrics.accuracy), f1(metrics.macro_f1), metrics.samples);
    let mut table = Table::new(&[("CLASS", Align::Left), ("F1", Align::Right)]);
    for (index, score) in metrics.per_class_f1.iter().enumerate() {
        let name = result.class_names.get(index).cloned().unwrap_or_else(|| format!("class {index}"));
        table.push(vec![name, f1(*score)]);
    }
    if !table.is_empty() {
        out.push_str(&table.render());
    }
    if let Some(test) = &result.test {
        out.push_str(&format!("final test: accuracy {}, macro-F1 {} ({} samples)\n", percent(test.accuracy), f1(test.macro_f1), test.samples));
    }
    for warning in &result.warnings {
        out.push_str(&format!("warning: {}\n", printable(warning)));
    }
    let path = std::path::Path::new(&result.model_path);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(path).display().to_string();
    out.push_str(&format!("model: {}\n", printable(&dir)));
    out.push_str(&format!(
        "  model.pt (TorchScript) and model.json (input, normalisation, classes in output order); use it with:\n  feral predict {0} IMAGE… | feral eval {0} DATASET | feral export {0} --format onnx\n",
        printable(&dir)
    ));
    out
}

/// `feral status JOB`, and the summary at the end of `feral watch`.
pub fn job_details(job: &pb::Job, now_ms: u64) -> String {
    let state = job.state();
    let id = printable(&job.id);
    let mut out = format!("job {id} ({})\n", printable(&job.name));
    if !job.owner.is_empty() {
        out.push_str(&format!("owner: {}\n", printable(&job.owner)));
    }
    out.push_str(&format!("state: {}", job_state_name(state)));
    if !job.state_reason.is_empty() {
        out.push_str(&format!(" ({})", printable(&job.state_reason)));
    }
    out.push('\n');
    let planned = if job.rounds_planned > 0 { format!(" of {}", job.rounds_planned) } else { String::new() };
    out.push_str(&format!(
        "round {}{planned}, epochs {}/{}, created {} ago\n",
        job.round,
        job.epochs_done,
        job.epochs_total,
        format_age(now_ms.saturating_sub(job.created_at_ms))
    ));
    if !job.worker_ids.is_empty() {
        out.push_str(&format!("workers: {}\n", printable(&job.worker_ids.join(", "))));
    }
    if job.gang_size > 1 && job.gang_ranks > 0 {
        let short = if job.gang_ranks < job.gang_size { " (elastic: short of ranks until a slot is free)" } else { "" };
        out.push_str(&format!("training gang: {} of {} ranks{short}\n", job.gang_ranks, job.gang_size));
    }
    if !job.last_failure.is_empty() && !is_final(state) {
        let retry = if job.retry_at_ms > now_ms { format!(" (next attempt in {})", format_age(job.retry_at_ms - now_ms)) } else { String::new() };
        out.push_str(&format!("retrying{retry}; last failure: {}\n", printable(&job.last_failure)));
    } else if !job.last_failure.is_empty() && state != pb::JobState::Succeeded {
        out.push_str(&format!("last failure: {}\n", printable(&job.last_failure)));
    }
    if matches!(state, pb::JobState::Failed | pb::JobState::Cancelled) {
        out.push_str(&format!("resume it from its last checkpoint: feral resume {id}\n"));
    }
    if !job.epochs.is_empty() {
        out.push('\n');
        out.push_str(&epochs_table(&job.epochs));
    }
    if job.rounds_planned > 0 && !job.rounds.is_empty() {
        let classes = job.result.as_ref().map(|r| r.class_names.clone()).unwrap_or_default();
        out.push('\n');
        out.push_str(&crate::rounds::rounds_tables(job, &classes));
    }
    if let Some(result) = job.result.as_ref().filter(|_| state == pb::JobState::Succeeded) {
        out.push('\n');
        out.push_str(&final_metrics(result, job.rounds_planned));
    }
    out
}

/// The line printed when an epoch finishes; `epochs_total` is shown when known.
pub fn epoch_line(epoch: &pb::EpochMetrics, epochs_total: Option<u32>) -> String {
    let val = validation(epoch);
    let number = match epochs_total {
        Some(total) if total > 0 => format!("{}/{}", epoch.epoch, total),
        _ => epoch.epoch.to_string(),
    };
    let round = if epoch.round > 0 { format!("round {} ", epoch.round) } else { String::new() };
    // Workers older than the field report 0.
    let rate = if epoch.images_per_second > 0.0 { format!(", {:.0} images/s", epoch.images_per_second) } else { String::new() };
    format!(
        "{round}epoch {number}: train loss {:.4}, train acc {}, val acc {}, val macro-F1 {} ({:.1}s{rate})",
        epoch.train_loss,
        percent(epoch.train_accuracy),
        percent(val.accuracy),
        f1(val.macro_f1),
        epoch.seconds
    )
}

/// The progress bar's message: the state and the latest validation macro-F1.
pub fn progress_message(job: &pb::Job) -> String {
    let state = job_state_name(job.state());
    match job.epochs.last() {
        Some(epoch) => format!("{state}, val macro-F1 {}", f1(validation(epoch).macro_f1)),
        None => state.to_owned(),
    }
}

/// `feral workers`: one row per registered worker.
pub fn workers_table(workers: &[pb::Worker], now_ms: u64) -> String {
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("HOSTNAME", Align::Left),
        ("STATE", Align::Left),
        ("DEVICES", Align::Left),
        ("TASKS", Align::Right),
        ("HEARTBEAT", Align::Right),
    ]);
    for worker in workers {
        let devices: Vec<&str> = worker.slots.iter().map(|slot| slot.device.as_str()).collect();
        let since = now_ms.saturating_sub(worker.last_heartbeat_ms) as f64 / 1000.0;
        table.push(vec![
            worker.id.clone(),
            worker.hostname.clone(),
            worker_state_name(worker.state()).to_owned(),
            devices.join(","),
            worker.tasks.len().to_string(),
            format!("{since:.1}s ago"),
        ]);
    }
    if table.is_empty() {
        return "no workers\n".to_owned();
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(round: u32, number: u32, macro_f1: f64) -> pb::EpochMetrics {
        pb::EpochMetrics {
            round,
            epoch: number,
            train_loss: 1.23456,
            train_accuracy: 0.5,
            validation: Some(pb::Metrics { accuracy: 0.625, macro_f1, ..pb::Metrics::default() }),
            seconds: 12.34,
            images_per_second: 0.0,
        }
    }

    fn job(state: pb::JobState) -> pb::Job {
        pb::Job {
            id: "job-abc".into(),
            name: "demo".into(),
            state: state as i32,
            created_at_ms: 1_000,
            epochs_done: 2,
            epochs_total: 6,
            epochs: vec![epoch(0, 1, 0.4), epoch(0, 2, 0.35)],
            best_macro_f1: Some(0.4),
            last_macro_f1: Some(0.35),
            worker_ids: vec!["w-1".into()],
            owner: "alice".into(),
            ..pb::Job::default()
        }
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(format_age(999), "0s");
        assert_eq!(format_age(59_000), "59s");
        assert_eq!(format_age(61_000), "1m");
        assert_eq!(format_age(7_300_000), "2h");
        assert_eq!(format_age(3 * 86_400_000), "3d");
    }

    #[test]
    fn jobs_table_shows_best_and_last_f1_and_age() {
        let text = jobs_table(&[job(pb::JobState::Training)], 91_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"), "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells, ["job-abc", "demo", "alice", "training", "0", "2/6", "-", "0.350", "1m"], "no model yet");
        assert_eq!(jobs_table(&[], 0), "no jobs\n");
    }

    #[test]
    fn jobs_table_shows_the_saved_models_f1_and_its_warnings() {
        let mut done = job(pb::JobState::Succeeded);
        // The best epoch scored 0.400; the model saved scores what its card says.
        done.model_macro_f1 = Some(0.015);
        done.result = Some(pb::JobResult { warnings: vec!["the saved model predicts `happy` for 97%".into()], ..pb::JobResult::default() });
        let text = jobs_table(&[done], 91_000);
        let cells: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(&cells[6..8], ["0.015!", "0.350"], "{text}");
        assert!(text.ends_with("job-abc: the saved model predicts `happy` for 97%\n"), "{text}");
    }

    #[test]
    fn job_without_epochs_shows_dashes() {
        let mut queued = job(pb::JobState::Queued);
        queued.epochs.clear();
        (queued.best_macro_f1, queued.last_macro_f1) = (None, None);
        let text = jobs_table(&[queued], 1_000);
        let cells: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(&cells[3..], ["queued", "0", "2/6", "-", "-", "0s"]);
    }

    #[test]
    fn epoch_line_names_every_metric() {
        let line = epoch_line(&epoch(0, 3, 0.5123), Some(6));
        assert_eq!(line, "epoch 3/6: train loss 1.2346, train acc 50.0%, val acc 62.5%, val macro-F1 0.512 (12.3s)");
        assert!(epoch_line(&epoch(2, 1, 0.5), None).starts_with("round 2 epoch 1: "));
        let fast = pb::EpochMetrics { images_per_second: 1234.4, ..epoch(0, 3, 0.5123) };
        assert!(epoch_line(&fast, Some(6)).ends_with("(12.3s, 1234 images/s)"));
    }

    #[test]
    fn a_short_elastic_gang_says_so() {
        let gang = |ranks, size| job_details(&pb::Job { gang_ranks: ranks, gang_size: size, ..job(pb::JobState::Training) }, 5_000);
        assert!(gang(1, 2).contains("training gang: 1 of 2 ranks (elastic: short of ranks until a slot is free)\n"), "{}", gang(1, 2));
        assert!(gang(2, 2).contains("training gang: 2 of 2 ranks\n"), "{}", gang(2, 2));
        assert!(!gang(1, 1).contains("training gang"), "one rank is no gang");
        assert!(!gang(0, 2).contains("training gang"), "nothing training");
    }

    #[test]
    fn succeeded_job_details_show_class_f1_and_model() {
        let mut done = job(pb::JobState::Succeeded);
        done.result = Some(pb::JobResult {
            validation: Some(pb::Metrics { accuracy: 0.7, macro_f1: 0.55, per_class_f1: vec![0.9, 0.2], samples: 100, ..pb::Metrics::default() }),
            model_path: "/art/model.safetensors".into(),
            class_names: vec!["happy".into(), "sad".into()],
            ..pb::JobResult::default()
        });
        let text = job_details(&done, 5_000);
        assert!(text.contains("state: succeeded\n"), "{text}");
        assert!(text.contains("workers: w-1"), "{text}");
        assert!(text.contains("final validation: accuracy 70.0%, macro-F1 0.550 (100 samples)"), "{text}");
        assert!(text.lines().any(|l| l.split_whitespace().eq(["happy", "0.900"])), "{text}");
        assert!(text.lines().any(|l| l.split_whitespace().eq(["sad", "0.200"])), "{text}");
        assert!(text.contains("\nmodel: /art\n  model.pt (TorchScript)"), "{text}");
        assert!(text.ends_with("feral predict /art IMAGE… | feral eval /art DATASET | feral export /art --format onnx\n"), "{text}");
        let header = text.lines().find(|l| l.contains("EPOCH")).unwrap_or_default();
        assert!(!header.contains("ROUND"), "one round needs no round column: {header}");
    }

    #[test]
    fn multi_round_job_names_the_winning_round() {
        let mut done = job(pb::JobState::Succeeded);
        done.round = 2;
        done.rounds_planned = 3;
        done.result = Some(pb::JobResult { best_round: 1, validation: Some(pb::Metrics::default()), ..pb::JobResult::default() });
        let text = job_details(&done, 5_000);
        assert!(text.contains("round 2 of 3, epochs 2/6"), "{text}");
        assert!(text.contains("final validation (model of round 1): accuracy 0.0%"), "{text}");
        assert!(!text.contains("final test"), "no test line without test metrics: {text}");
        assert!(!text.contains("ONLINE"), "no online columns without online rounds: {text}");
    }

    #[test]
    fn status_of_a_job_with_online_student_rounds_shows_the_online_columns() {
        let mut running = job(pb::JobState::Training);
        running.round = 1;
        running.rounds_planned = 2;
        let online = pb::OnlineMask { seen: 60_000, masked_in: 41_230, with_hidden_label: 41_230, correct: 37_107 };
        running.rounds = vec![
            pb::RoundSummary { round: 0, validation: Some(pb::Metrics { macro_f1: 0.5, ..pb::Metrics::default() }), ..pb::RoundSummary::default() },
            pb::RoundSummary {
                round: 1,
                validation: Some(pb::Metrics { macro_f1: 0.6, ..pb::Metrics::default() }),
                online: Some(online),
                ..pb::RoundSummary::default()
            },
        ];
        let text = job_details(&running, 5_000);
        let header = text.lines().find(|l| l.trim_start().starts_with("ROUND  VAL ACC")).unwrap_or_default();
        assert!(header.ends_with("ONLINE PL  ONLINE RATE  ONLINE PRECISION"), "{text}");
        let student = text.lines().skip_while(|l| *l != header).nth(2).unwrap_or_default();
        let cells: Vec<&str> = student.split_whitespace().collect();
        assert_eq!((cells[0], &cells[cells.len() - 3..]), ("1", &["41,230", "68.7%", "90.0%"][..]), "{text}");
    }

    #[test]
    fn a_result_with_test_metrics_shows_a_final_test_line() {
        let mut done = job(pb::JobState::Succeeded);
        done.result = Some(pb::JobResult {
            validation: Some(pb::Metrics { accuracy: 0.7, macro_f1: 0.55, samples: 100, ..pb::Metrics::default() }),
            test: Some(pb::Metrics { accuracy: 0.64, macro_f1: 0.512, samples: 90, ..pb::Metrics::default() }),
            model_path: "/art/model.safetensors".into(),
            ..pb::JobResult::default()
        });
        let text = job_details(&done, 5_000);
        assert!(text.contains("final validation: accuracy 70.0%, macro-F1 0.550 (100 samples)\n"), "{text}");
        assert!(text.contains("final test: accuracy 64.0%, macro-F1 0.512 (90 samples)\nmodel: /art\n"), "{text}");
    }

    #[test]
    fn names_ids_and_reasons_from_others_cannot_drive_the_terminal() {
        let hostile = "\u{1b}]0;title\u{7}\u{1b}[2J\u{202e}lin";
        let mut failed = job(pb::JobState::Failed);
        (failed.id, failed.name, failed.state_reason, failed.last_failure) = (hostile.into(), hostile.into(), hostile.into(), hostile.into());
        failed.worker_ids = vec![hostile.into()];
        failed.result = Some(pb::JobResult {
            validation: Some(pb::Metrics { per_class_f1: vec![0.9, 0.2], ..pb::Metrics::default() }),
            class_names: vec![hostile.into(), "惊讶 é".into()],
            model_path: hostile.into(),
            ..pb::JobResult::default()
        });
        let escaped = "\\u{1b}]0;title\\u{7}\\u{1b}[2J\\u{202e}lin";
        let mut done = failed.clone();
        done.state = pb::JobState::Succeeded as i32;
        let worker = pb::Worker {
            id: hostile.into(),
            hostname: hostile.into(),
            slots: vec![pb::Slot { device: hostile.into(), name: "x".into() }],
            ..pb::Worker::default()
        };
        for text in [job_details(&failed, 5_000), job_details(&done, 5_000), jobs_table(&[failed.clone()], 5_000), workers_table(&[worker], 5_000)] {
            assert!(!text.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{text:?}");
            assert!(text.contains(escaped), "{text}");
        }
        let details = job_details(&done, 5_000);
        assert!(details.contains(&format!("job {escaped} ({escaped})\n")), "{details}");
        assert!(details.contains(&format!("model: {escaped}\n")), "{details}");
        assert!(details.lines().any(|l| l.split_whitespace().eq(["惊讶", "é", "0.200"])), "ordinary Unicode is kept: {details}");
    }

    #[test]
    fn failed_job_details_show_the_reason_and_no_result() {
        let mut failed = job(pb::JobState::Failed);
        failed.state_reason = "dataset missing".into();
        let text = job_details(&failed, 5_000);
        assert!(text.contains("state: failed (dataset missing)"), "{text}");
        assert!(!text.contains("final validation"), "{text}");
    }

    #[test]
    fn epochs_table_gets_a_round_column_with_several_rounds() {
        let text = epochs_table(&[epoch(0, 1, 0.3), epoch(1, 1, 0.4)]);
        assert!(text.starts_with("ROUND  EPOCH"), "{text}");
        let last: Vec<&str> = text.lines().last().unwrap_or_default().split_whitespace().collect();
        assert_eq!(last, ["1", "1", "1.2346", "50.0%", "62.5%", "0.400", "12.3"]);
    }

    #[test]
    fn progress_message_has_state_and_latest_f1() {
        assert_eq!(progress_message(&job(pb::JobState::Training)), "training, val macro-F1 0.350");
        let mut queued = job(pb::JobState::Queued);
        queued.epochs.clear();
        assert_eq!(progress_message(&queued), "queued");
    }

    #[test]
    fn workers_table_lists_devices_tasks_and_heartbeat_age() {
        let worker = pb::Worker {
            id: "demo-worker-1".into(),
            hostname: "box".into(),
            state: pb::WorkerState::Live as i32,
            slots: vec![pb::Slot { device: "cpu".into(), name: "cpu".into() }, pb::Slot { device: "cuda:0".into(), name: "gpu".into() }],
            last_heartbeat_ms: 10_000,
            tasks: vec![feral_proto::v1::TaskKey { job_id: "job-abc".into(), kind: feral_proto::v1::TaskKind::Train as i32, attempt: 1, ..Default::default() }],
            ..pb::Worker::default()
        };
        let text = workers_table(&[worker], 12_500);
        let cells: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(cells, ["demo-worker-1", "box", "live", "cpu,cuda:0", "1", "2.5s", "ago"]);
        assert_eq!(workers_table(&[], 0), "no workers\n");
    }

    #[test]
    fn final_states_are_final() {
        assert!(is_final(pb::JobState::Succeeded) && is_final(pb::JobState::Failed) && is_final(pb::JobState::Cancelled));
        assert!(!is_final(pb::JobState::Training) && !is_final(pb::JobState::Queued));
    }
}
