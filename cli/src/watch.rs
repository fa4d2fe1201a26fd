//! `feral watch`: follows a job over the `WatchJob` stream until it reaches a final state,
//! with a progress bar on terminals, one line per finished epoch, and reconnection with
//! backoff when the stream breaks (a coordinator restart).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use feral_common::text::printable;
use feral_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_stream::StreamExt;
use tracing::debug;

use crate::client::{connect, rpc_error, Target};
use crate::render;

/// How long the watch keeps trying to reconnect before it gives up.
const RECONNECT_WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows job `job_id` on the coordinator at `url` and returns it in its final state.
pub async fn watch_job(url: &Target, job_id: &str) -> anyhow::Result<pb::Job> {
    let mut display = WatchDisplay::new(std::io::stderr().is_terminal());
    let outcome = follow(url, job_id, &mut display).await;
    display.finish();
    outcome
}

/// Why one stream ended without a final job.
enum Break {
    /// Worth reconnecting: the coordinator went away or the stream ended early.
    Retry(String),
    /// Reconnecting cannot help (unknown job, bad request).
    Fatal(anyhow::Error),
}

async fn follow(url: &Target, job_id: &str, display: &mut WatchDisplay) -> anyhow::Result<pb::Job> {
    let mut ever_connected = false;
    let mut broken_since: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut received = false;
        let problem = match follow_once(url, job_id, display, &mut received, ever_connected).await {
            Ok(job) => return Ok(job),
            Err(Break::Fatal(error)) => return Err(error),
            Err(Break::Retry(problem)) => problem,
        };
        ever_connected = true;
        if received {
            broken_since = None;
            backoff = FIRST_BACKOFF;
        }
        let since = *broken_since.get_or_insert_with(|| {
            display.line(&format!("lost the coordinator ({}); reconnecting", printable(&problem)));
            display.reconnecting = true;
            Instant::now()
        });
        if since.elapsed() >= RECONNECT_WINDOW {
            anyhow::bail!("lost the coordinator at {url} while watching job {job_id} and could not reconnect for {} s: {problem}", RECONNECT_WINDOW.as_secs());
        }
        debug!(%problem, backoff_ms = backoff.as_millis() as u64, "watch stream broke; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One `WatchJob` stream from connection to its end. The first connection failing is fatal
/// (a wrong address should not make the user wait); later ones are retried.
async fn follow_once(url: &Target, job_id: &str, display: &mut WatchDisplay, received: &mut bool, ever_connected: bool) -> Result<pb::Job, Break> {
    let mut client = match connect(url).await {
        Ok(client) => client,
        Err(error) if ever_connected => return Err(Break::Retry(format!("{error:#}"))),
        Err(error) => return Err(Break::Fatal(error)),
    };
    let request = pb::WatchJobRequest { job_id: job_id.to_owned() };
    let mut stream = client.watch_job(request).await.map_err(classify)?.into_inner();
    while let Some(item) = stream.next().await {
        let event = item.map_err(classify)?;
        let Some(job) = event.job else { continue };
        *received = true;
        display.update(&job);
        if render::is_final(job.state()) {
            return Ok(job);
        }
    }
    Err(Break::Retry("the watch stream ended before the job finished".to_owned()))
}

fn classify(status: tonic::Status) -> Break {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => {
            Break::Retry(status.message().to_owned())
        }
        _ => Break::Fatal(rpc_error(status)),
    }
}

/// The progress bar (terminals only) and the lines printed above it.
struct WatchDisplay {
    bar: ProgressBar,
    printed_epochs: usize,
    last_phase: Option<(pb::JobState, u32)>,
    /// Set while the coordinator is lost; the next update says it is back.
    reconnecting: bool,
}

impl WatchDisplay {
    fn new(terminal: bool) -> Self {
        let bar = if terminal {
            let bar = ProgressBar::new(0);
            let template = "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} epochs  {msg}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
        };
        Self { bar, printed_epochs: 0, last_phase: None, reconnecting: false }
    }

    /// Prints a line on stdout, above the bar when there is one.
    fn line(&self, text: &str) {
        self.bar.suspend(|| println!("{text}"));
    }

    fn update(&mut self, job: &pb::Job) {
        for line in self.new_lines(job) {
            self.line(&line);
        }
        self.bar.set_length(u64::from(job.epochs_total));
        self.bar.set_position(u64::from(job.epochs_done));
        self.bar.set_message(render::progress_message(job));
    }

    /// What is new in `job` since the last update: a reconnection, a change of state or
    /// round, and the epochs finished since. After a reconnect the job arrives whole again,
    /// so epochs already printed are skipped.
    fn new_lines(&mut self, job: &pb::Job) -> Vec<String> {
        let mut lines = Vec::new();
        if std::mem::take(&mut self.reconnecting) {
            lines.push("reconnected to the coordinator".to_owned());
        }
        let phase = (job.state(), job.round);
        if self.last_phase != Some(phase) {
            let mut text = format!("job {}: {}", printable(&job.id), render::job_state_name(phase.0));
            if phase.1 > 0 {
                text.push_str(&format!(" (round {})", phase.1));
            }
            if !job.state_reason.is_empty() {
                text.push_str(&format!(": {}", printable(&job.state_reason)));
            }
            lines.push(text);
            self.last_phase = Some(phase);
        }
        self.printed_epochs = self.printed_epochs.min(job.epochs.len());
        for epoch in &job.epochs[self.printed_epochs..] {
            let total = (epoch.round == job.round).then_some(job.epochs_total);
            lines.push(render::epoch_line(epoch, total));
        }
        self.printed_epochs = job.epochs.len();
        lines
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(number: u32) -> pb::EpochMetrics {
        pb::EpochMetrics { epoch: number, validation: Some(pb::Metrics::default()), ..pb::EpochMetrics::default() }
    }

    fn job(state: pb::JobState, epochs: u32) -> pb::Job {
        pb::Job {
            id: "job-1".into(),
            state: state as i32,
            epochs_done: epochs,
            epochs_total: 3,
            epochs: (1..=epochs).map(epoch).collect(),
            ..pb::Job::default()
        }
    }

    #[test]
    fn each_state_change_and_epoch_is_printed_once() {
        let mut display = WatchDisplay::new(false);
        assert_eq!(display.new_lines(&job(pb::JobState::Queued, 0)), ["job job-1: queued"]);
        assert!(display.new_lines(&job(pb::JobState::Queued, 0)).is_empty());
        let lines = display.new_lines(&job(pb::JobState::Training, 2));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "job job-1: training");
        assert!(lines[1].starts_with("epoch 1/3: ") && lines[2].starts_with("epoch 2/3: "), "{lines:?}");
        // A reconnect delivers the whole job again: only the new epoch is printed.
        display.reconnecting = true;
        let lines = display.new_lines(&job(pb::JobState::Training, 3));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "reconnected to the coordinator");
        assert!(lines[1].starts_with("epoch 3/3: "), "{lines:?}");
        let mut failed = job(pb::JobState::Failed, 3);
        failed.state_reason = "out of memory".into();
        assert_eq!(display.new_lines(&failed), ["job job-1: failed: out of memory"]);
    }

    #[test]
    fn ids_and_reasons_are_printed_escaped() {
        let mut display = WatchDisplay::new(false);
        let mut failed = job(pb::JobState::Failed, 0);
        (failed.id, failed.state_reason) = ("job-\u{1b}[2J".into(), "\u{202e}yromem fo tuo".into());
        assert_eq!(display.new_lines(&failed), ["job job-\\u{1b}[2J: failed: \\u{202e}yromem fo tuo"]);
    }

    #[test]
    fn a_new_round_is_announced() {
        let mut display = WatchDisplay::new(false);
        display.new_lines(&job(pb::JobState::Training, 3));
        let mut student = job(pb::JobState::Training, 3);
        student.round = 1;
        student.epochs.push(pb::EpochMetrics { round: 1, ..epoch(1) });
        let lines = display.new_lines(&student);
        assert_eq!(lines[0], "job job-1: training (round 1)");
        assert!(lines[1].starts_with("round 1 epoch 1/3: "), "{lines:?}");
    }
}
