//! The worker's conversation with the coordinator: register, heartbeat, start assigned
//! tasks on OS threads, forward their progress, report how they ended, stop them when told.
//! A lost coordinator is retried with backoff; reports wait until it is back. Given several
//! coordinators, every call goes to the one believed to lead, and a standby's answer moves
//! the worker to the leader it names ([`Coordinators`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use feral_common::task::{Assignment, EpochReport, TaskKey, TaskKind, TaskOutcome};
use feral_proto::credentials::{AuthedChannel, BearerToken};
use feral_proto::leader::Coordinators;
use feral_proto::v1 as pb;
use feral_proto::v1::worker_service_client::WorkerServiceClient;
use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::ClientTlsConfig;
use tonic::Code;
use tracing::{info, warn};

use crate::confine::Roots;
use crate::error::TaskError;
use crate::gang::{self, TaskControl};
use crate::runner::TaskRunner;

/// Who this worker is and where its coordinator listens.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// e.g. `http://10.0.0.1:7070`, or several separated by commas.
    pub coordinator: String,
    pub worker_id: String,
    pub hostname: String,
    /// The host name or address other workers reach this one at (gang peers).
    pub advertise_host: String,
    pub slots: Vec<pb::Slot>,
    /// Sent with every call (none for a coordinator without tokens).
    pub token: BearerToken,
    /// TLS for `https://` coordinator addresses.
    pub tls: Option<ClientTlsConfig>,
    /// Where tasks may read and write (`crate::confine`).
    pub roots: Roots,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    BadAddress(#[from] feral_proto::leader::CoordinatorsError),
    /// The coordinator refused this worker's credential: no retry can fix that.
    #[error("the coordinator at {coordinator} refused this worker's credential: {message}")]
    Refused { coordinator: String, message: String },
}

/// Tasks running now, by key, with what stops them.
type Running = Arc<Mutex<HashMap<TaskKey, Arc<TaskControl>>>>;

enum TaskMessage {
    /// An epoch, and the round's epoch count.
    Epoch(EpochReport, u32),
    Ended(Result<TaskOutcome, TaskError>),
}

/// Runs the worker until `shutdown` resolves; running tasks are then asked to stop.
pub async fn run(config: AgentConfig, runner: Arc<dyn TaskRunner>, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let coordinators = Coordinators::parse_with_tls(&config.coordinator, config.tls.as_ref()).map_err(AgentError::BadAddress)?.with_token(config.token.clone());
    let running: Running = Arc::default();
    let ended = tokio::select! {
        _ = shutdown => Ok(()),
        refused = converse(&config, coordinators, runner, Arc::clone(&running)) => Err(refused),
    };
    for control in lock(&running).values() {
        control.stop();
    }
    info!(worker_id = %config.worker_id, "worker stopped");
    ended
}

fn lock(running: &Running) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Arc<TaskControl>>> {
    running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The devices of running tasks that were told to stop: withheld until those tasks end (a
/// task told to stop holds its slot until it has stopped, so no two tasks share a slot).
fn stopping_devices(running: &HashMap<TaskKey, Arc<TaskControl>>) -> Vec<String> {
    let mut devices: Vec<String> = Vec::new();
    for control in running.values().filter(|c| c.stopping()) {
        if !devices.contains(&control.device) {
            devices.push(control.device.clone());
        }
    }
    devices
}

/// Registers and heartbeats until the coordinator refuses this worker's credential.
async fn converse(config: &AgentConfig, coordinators: Coordinators, runner: Arc<dyn TaskRunner>, running: Running) -> AgentError {
    // The keys of the assignments started, as they came on the wire (a key this worker
    // cannot read is failed once, not at every heartbeat that repeats it).
    let mut started: HashSet<Vec<u8>> = HashSet::new();
    // Tasks already logged as stuck.
    let mut reported_stuck: HashSet<TaskKey> = HashSet::new();
    loop {
        let interval = match register(config, &coordinators).await {
            Ok(interval) => interval,
            Err(refused) => return refused,
        };
        let mut ticks = tokio::time::interval(interval);
        let mut failing = false;
        loop {
            ticks.tick().await;
            let (running_keys, withheld_devices) = {
                let running = lock(&running);
                let running = &*running;
                for (id, control) in running.iter().filter(|(_, c)| c.stuck(STOP_BOUND)) {
                    if reported_stuck.insert(id.clone()) {
                        warn!(task_id = %id, device = %control.device, bound_s = STOP_BOUND.as_secs(), "a task did not stop within its bound after it was told to: its slot stays withheld until it ends");
                    }
                }
                reported_stuck.retain(|id| running.contains_key(id));
                (running.keys().map(pb::TaskKey::from).collect(), stopping_devices(running))
            };
            let mut request = tonic::Request::new(pb::HeartbeatRequest { worker_id: config.worker_id.clone(), running: running_keys, withheld_devices });
            request.set_timeout(heartbeat_deadline(interval));
            let (at, mut client) = client(&coordinators);
            match client.heartbeat(request).await {
                Ok(reply) => {
                    if failing {
                        info!("coordinator reachable again");
                        failing = false;
                    }
                    let reply = reply.into_inner();
                    for key in reply.cancel.into_iter().filter_map(|key| TaskKey::try_from(key).ok()) {
                        if let Some(control) = lock(&running).get(&key) {
                            info!(task_id = %key, "stopping task at the coordinator's request");
                            control.stop();
                        }
                    }
                    // A slot whose task is still stopping takes no new task yet: the
                    // assignment comes again with the next heartbeat.
                    let stopping = stopping_devices(&lock(&running));
                    for assignment in reply.assignments {
                        if stopping.contains(&assignment.device) {
                            continue;
                        }
                        if started.insert(assignment.key.as_ref().map(Message::encode_to_vec).unwrap_or_default()) {
                            start_task(config, &coordinators, &runner, &running, assignment);
                        }
                    }
                }
                Err(status) if status.code() == Code::NotFound => {
                    info!("coordinator does not know this worker; registering again");
                    break;
                }
                Err(status) => {
                    if coordinators.failed_at(at, &status) {
                        // A standby named the leader: register with it (it knows this
                        // worker from the store, or learns it now).
                        info!(coordinator = %coordinators.current(), "following the leader");
                        break;
                    }
                    if !failing {
                        warn!(error = %status.message(), "heartbeat failed; retrying");
                        failing = true;
                    }
                }
            }
        }
    }
}

/// How long a task may go on after it was told to stop (cancelled, reassigned, its gang
/// regrowing) before the worker logs it as stuck. Its slot is withheld from the
/// coordinator from the moment it is told to stop until it ends; tasks check their stop
/// flag every step and read only regular files, so only a hung read (a broken network
/// filesystem) lasts this long.
pub const STOP_BOUND: Duration = Duration::from_secs(30);

/// How long a registration waits for its answer (one store write on the coordinator).
const REGISTER_DEADLINE: Duration = Duration::from_secs(2);

/// How long a heartbeat waits for its answer: two intervals, at least a second, at most
/// the deadline of every call. A paused leader then holds a worker for about two
/// heartbeats before it tries the next coordinator, well inside its lease (which the
/// coordinator sets to many intervals).
fn heartbeat_deadline(interval: Duration) -> Duration {
    (interval * 2).clamp(Duration::from_secs(1), feral_proto::credentials::REQUEST_TIMEOUT)
}

/// Registers, retrying with backoff until the coordinator answers; returns the heartbeat
/// interval, or the refusal of this worker's credential.
async fn register(config: &AgentConfig, coordinators: &Coordinators) -> Result<Duration, AgentError> {
    let mut backoff = Backoff::default();
    loop {
        let mut request =
            tonic::Request::new(pb::RegisterRequest { worker_id: config.worker_id.clone(), hostname: config.hostname.clone(), slots: config.slots.clone() });
        // A standby names the leader it knows, which may be the paused one this worker has
        // just left: a short deadline keeps that round trip short.
        request.set_timeout(REGISTER_DEADLINE);
        let (at, mut client) = client(coordinators);
        match client.register(request).await {
            Ok(reply) => {
                let interval = reply.into_inner().heartbeat_interval_ms.max(10);
                info!(worker_id = %config.worker_id, coordinator = %coordinators.current(), "registered");
                return Ok(Duration::from_millis(interval));
            }
            Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                return Err(AgentError::Refused { coordinator: coordinators.current().to_owned(), message: status.message().to_owned() });
            }
            Err(status) => {
                let hint = feral_proto::credentials::tls_hint(&config.coordinator, true, &format!("transport error: {}", status.message())).await.unwrap_or("");
                warn!(error = %status.message(), coordinator = %coordinators.current(), hint, "cannot register with the coordinator; retrying");
                if !coordinators.failed_at(at, &status) {
                    backoff.wait().await;
                }
            }
        }
    }
}

/// A client of the coordinator believed to lead, with its place for `failed_at`.
fn client(coordinators: &Coordinators) -> (usize, WorkerServiceClient<AuthedChannel>) {
    let (at, channel) = coordinators.channel_at();
    (at, WorkerServiceClient::new(channel))
}

fn start_task(config: &AgentConfig, coordinators: &Coordinators, runner: &Arc<dyn TaskRunner>, running: &Running, assignment: pb::TaskAssignment) {
    let key = assignment.key.clone();
    let task = match Assignment::try_from(assignment) {
        Ok(task) => task,
        Err(error) => {
            // Failed, not ignored, so that its job does not wait for it (the coordinator
            // refuses the report itself if the key is what is wrong). The key goes back as
            // it came.
            let reason = format!("the worker cannot run this assignment: {error}");
            warn!(task = ?key, %reason, "refusing an assignment");
            let request = pb::FailTaskRequest { worker_id: config.worker_id.clone(), task: key, reason, retryable: false };
            tokio::spawn(report_failure(coordinators.clone(), request));
            return;
        }
    };
    if let Err(refused) = config.roots.admit(&task) {
        // The same paths are refused on every worker with these roots: not retried (a
        // directory that could not be made, on a full disk, may be the next time).
        warn!(task_id = %task.key, reason = %refused, "refusing a task's paths");
        let request = pb::FailTaskRequest { worker_id: config.worker_id.clone(), task: key, reason: refused.to_string(), retryable: refused.retryable };
        tokio::spawn(report_failure(coordinators.clone(), request));
        return;
    }
    info!(task_id = %task.key, device = %task.device, "starting task");
    let control = Arc::new(TaskControl::on_device(task.device.to_string()));
    lock(running).insert(task.key.clone(), Arc::clone(&control));
    let (sender, receiver) = mpsc::unbounded_channel();
    let reporter = Reporter { coordinators: coordinators.clone(), worker_id: config.worker_id.clone(), task: task.key.clone() };
    tokio::spawn(reporter.forward(receiver, Arc::clone(&control), Arc::clone(running)));

    let runner = Arc::clone(runner);
    let (coordinators, worker_id, advertise_host) = (coordinators.clone(), config.worker_id.clone(), config.advertise_host.clone());
    // Everything the task logs, on the runtime and on its thread, names its job, task and attempt.
    let key = &task.key;
    let span = tracing::info_span!("task", job = %key.job, round = key.round.0, kind = key.kind.name(), attempt = key.attempt.0, rank = key.rank.0);
    let thread_span = span.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let setup = if task.key.kind == TaskKind::Train && task.world_size > 1 {
                match gang::rendezvous(&coordinators, &worker_id, &advertise_host, &task, &control).await {
                    Ok(setup) => Some(setup),
                    Err(failure) => {
                        let _ = sender.send(TaskMessage::Ended(Err(failure.into())));
                        return;
                    }
                }
            } else {
                None
            };
            let thread_sender = sender.clone();
            let spawned = std::thread::Builder::new().name(format!("task-{}-{}", task.key.attempt, task.key.rank)).spawn(move || {
                let _entered = thread_span.enter();
                let progress = thread_sender.clone();
                let mut on_epoch = move |report: EpochReport, epochs_total: u32| {
                    let _ = progress.send(TaskMessage::Epoch(report, epochs_total));
                };
                // A panic inside the task (libtorch refusing a size, a bug) fails this attempt
                // with its message and frees the slot; the worker serves on. The same input
                // would panic again, so the attempt is not retried.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    gang::connect(&task, setup, &control)
                        .map_err(TaskError::from)
                        .and_then(|mut collective| runner.run(&task, collective.as_mut(), &mut on_epoch, control.flag()))
                }))
                .unwrap_or_else(|panic| Err(TaskError::Panicked(panic_message(panic.as_ref()).to_owned())));
                let _ = thread_sender.send(TaskMessage::Ended(outcome));
            });
            if let Err(error) = spawned {
                let _ = sender.send(TaskMessage::Ended(Err(TaskError::Thread(error))));
            }
        },
        span,
    ));
}

/// The message a panic was raised with (`panic!` passes a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("no message")
}

/// Sends one task's reports in order, retrying through coordinator outages.
struct Reporter {
    coordinators: Coordinators,
    worker_id: String,
    task: TaskKey,
}

impl Reporter {
    async fn forward(mut self, mut messages: mpsc::UnboundedReceiver<TaskMessage>, control: Arc<TaskControl>, running: Running) {
        while let Some(message) = messages.recv().await {
            match message {
                TaskMessage::Epoch(report, epochs_total) => {
                    info!(task_id = %self.task, epoch = report.epoch, loss = report.train_loss, val_macro_f1 = report.validation.macro_f1, "epoch finished");
                    if self.report_epoch(&report, epochs_total).await {
                        control.stop();
                    }
                }
                TaskMessage::Ended(outcome) => {
                    self.report_end(outcome).await;
                    break;
                }
            }
        }
        lock(&running).remove(&self.task);
    }

    /// Returns whether the coordinator wants the task stopped.
    async fn report_epoch(&mut self, report: &EpochReport, epochs_total: u32) -> bool {
        let request = pb::ReportProgressRequest {
            worker_id: self.worker_id.clone(),
            task: Some(pb::TaskKey::from(&self.task)),
            epoch: Some(pb::EpochMetrics::from(report)),
            epochs_total,
        };
        retry("progress report", &self.coordinators, |mut client| {
            let request = request.clone();
            async move { client.report_progress(request).await.map(|r| r.into_inner().stop) }
        })
        .await
        .unwrap_or(false)
    }

    async fn report_end(&mut self, outcome: Result<TaskOutcome, TaskError>) {
        let (worker_id, task_id, task) = (self.worker_id.clone(), &self.task, Some(pb::TaskKey::from(&self.task)));
        match outcome {
            Ok(outcome) => {
                info!(task_id = %task_id, "task finished");
                let request = pb::FinishTaskRequest { worker_id, task, outcome: Some((&outcome).into()) };
                let _ = retry("finish report", &self.coordinators, |mut client| {
                    let request = request.clone();
                    async move { client.finish_task(request).await.map(|_| ()) }
                })
                .await;
            }
            Err(TaskError::Stopped) => info!(task_id = %task_id, "task stopped"),
            Err(error) => {
                let (reason, retryable) = (error.to_string(), error.is_retryable());
                warn!(task_id = %task_id, %reason, retryable, "task failed");
                report_failure(self.coordinators.clone(), pb::FailTaskRequest { worker_id, task, reason, retryable }).await;
            }
        }
    }
}

/// Reports a failed task, retrying through coordinator outages.
async fn report_failure(coordinators: Coordinators, request: pb::FailTaskRequest) {
    let _ = retry("failure report", &coordinators, |mut client| {
        let request = request.clone();
        async move { client.fail_task(request).await.map(|_| ()) }
    })
    .await;
}

/// Calls the coordinator believed to lead until one answers. Errors that another try cannot
/// fix (the request was refused as invalid) end the retries.
async fn retry<T, F, Fut>(what: &str, coordinators: &Coordinators, mut call: F) -> Option<T>
where
    F: FnMut(WorkerServiceClient<AuthedChannel>) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut backoff = Backoff::default();
    loop {
        let (at, client) = client(coordinators);
        match call(client).await {
            Ok(value) => return Some(value),
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::PermissionDenied | Code::Unauthenticated
                ) =>
            {
                warn!(error = %status.message(), "{what} refused by the coordinator");
                return None;
            }
            Err(status) => {
                if backoff.attempts == 0 {
                    warn!(error = %status.message(), "{what} failed; retrying until the coordinator is back");
                }
                if !coordinators.failed_at(at, &status) {
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    async fn wait(&mut self) {
        let millis = (100u64 << self.attempts.min(6)).min(5000);
        self.attempts += 1;
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
}
