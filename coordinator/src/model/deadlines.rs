//! Task deadlines (docs/design.md §3, Deadlines): a worker that heartbeats but never starts
//! its assignment, or starts it and then shows no progress, would otherwise hold its job
//! for as long as it heartbeats. Every assigned task has a clock, kept in memory (a new
//! leader starts them afresh, which only extends a deadline): it runs from the assignment
//! until the worker's heartbeat lists the task as running (the acknowledgement), then from
//! that moment or the task's gang's last epoch report. A task past its deadline is failed
//! as stuck, a failure like any other: retried within the job's attempts, its reason shown.

use std::collections::{HashMap, HashSet};

use feral_common::ids::{JobId, Round, WorkerId};
use feral_common::task::{TaskKey, TaskKind};
use serde::Deserialize;

use super::{Cluster, TaskState};

/// How long a task may go without a sign of life, per kind, in seconds (the coordinator
/// file's `[task_deadlines]`). Training is timed per epoch; the other kinds report only
/// their end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskDeadlines {
    /// From the assignment to the worker's heartbeat that lists the task.
    pub ack_s: u64,
    pub prepare_s: u64,
    pub infer_s: u64,
    pub select_s: u64,
    /// From the start of a training task, or its last epoch, to its next epoch.
    pub epoch_s: u64,
}

impl Default for TaskDeadlines {
    fn default() -> Self {
        Self { ack_s: 60, prepare_s: 3600, infer_s: 3600, select_s: 3600, epoch_s: 6 * 3600 }
    }
}

impl TaskDeadlines {
    /// The longest deadline this file allows: a week.
    pub const MAX_S: u64 = 7 * 24 * 3600;

    /// The first value outside 1..=[`MAX_S`](Self::MAX_S), by its key.
    pub fn invalid(&self) -> Option<(&'static str, u64)> {
        [("ack_s", self.ack_s), ("prepare_s", self.prepare_s), ("infer_s", self.infer_s), ("select_s", self.select_s), ("epoch_s", self.epoch_s)]
            .into_iter()
            .find(|(_, value)| !(1..=Self::MAX_S).contains(value))
    }

    /// The deadline for a running task of `kind`, and its key.
    fn progress(&self, kind: TaskKind) -> (u64, &'static str) {
        match kind {
            TaskKind::Prepare => (self.prepare_s, "prepare_s"),
            TaskKind::Infer => (self.infer_s, "infer_s"),
            TaskKind::Select => (self.select_s, "select_s"),
            TaskKind::Train => (self.epoch_s, "epoch_s"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Clock {
    since_ms: u64,
    acknowledged: bool,
}

/// A task past its deadline: whose it is, and why it is failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub worker: WorkerId,
    pub task: TaskKey,
    pub reason: String,
}

/// The clocks of the assigned tasks.
#[derive(Debug, Default)]
pub struct TaskClocks(HashMap<TaskKey, Clock>);

impl TaskClocks {
    /// An epoch of `job`'s round `round` was reported: every rank of its gang is alive.
    pub fn progressed(&mut self, cluster: &Cluster, job: &JobId, round: Round, now_ms: u64) {
        let Some(record) = cluster.job(job) else { return };
        for task in record.tasks.iter().filter(|t| t.kind == TaskKind::Train && t.round == round) {
            if let Some(clock) = self.0.get_mut(&task.key(job)) {
                *clock = Clock { since_ms: now_ms, acknowledged: true };
            }
        }
    }

    /// Starts a clock for each newly assigned task, marks those their worker now lists,
    /// forgets tasks no longer assigned, and answers the tasks past their deadline (their
    /// clocks removed: the failure ends them).
    pub fn check(&mut self, cluster: &Cluster, deadlines: &TaskDeadlines, now_ms: u64) -> Vec<Stuck> {
        let mut live = HashSet::new();
        let mut stuck = Vec::new();
        for (worker, job, task) in cluster.assigned_tasks() {
            let TaskState::Assigned { .. } = task.state else { continue };
            let key = task.key(&job.id);
            let listed = cluster.workers.get(worker).is_some_and(|w| w.running.contains(&key));
            live.insert(key.clone());
            let clock = self.0.entry(key.clone()).or_insert(Clock { since_ms: now_ms, acknowledged: false });
            if listed && !clock.acknowledged {
                *clock = Clock { since_ms: now_ms, acknowledged: true };
            }
            let waited_s = now_ms.saturating_sub(clock.since_ms) / 1000;
            let reason = if !clock.acknowledged && waited_s >= deadlines.ack_s {
                format!(
                    "worker {worker} did not start its {} task within {waited_s} s of the assignment (task_deadlines.ack_s = {}): failed as stuck",
                    task.kind.name(),
                    deadlines.ack_s
                )
            } else if clock.acknowledged && waited_s >= deadlines.progress(task.kind).0 {
                let (limit, key) = deadlines.progress(task.kind);
                let what = if task.kind == TaskKind::Train { "no epoch" } else { "no end" };
                format!("worker {worker} reported {what} of its {} task for {waited_s} s (task_deadlines.{key} = {limit}): failed as stuck", task.kind.name())
            } else {
                continue;
            };
            stuck.push(Stuck { worker: worker.clone(), task: key, reason });
        }
        self.0.retain(|id, _| live.contains(id));
        for s in &stuck {
            self.0.remove(&s.task);
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobEvent, JobRecord, LiveWorker, WorkerRecord, WorkerState};
    use feral_common::spec::JobSpec;
    use feral_common::task::Device;

    fn cluster_with_an_assigned_prepare() -> (Cluster, WorkerId, TaskKey) {
        let mut cluster = Cluster::default();
        let worker = WorkerId::new("w1");
        let record = WorkerRecord {
            id: worker.clone(),
            hostname: "h".into(),
            slots: vec![crate::model::Slot { device: Device::Cpu, name: "cpu".into() }],
            state: WorkerState::Live,
            registered_at_ms: 0,
        };
        cluster.workers.insert(worker.clone(), LiveWorker::new(record, 0));
        let spec = JobSpec::from_toml("version = 1\ndataset = \"/d\"\n").expect("spec");
        let job = JobRecord::submitted(JobId::new("job-1"), spec, String::new(), "/a/job-1".into(), 0);
        let task = job.tasks[0].key(&job.id);
        let assigned = job.on_event(&JobEvent::TaskAssigned { task: task.clone(), worker: worker.clone(), device: Device::Cpu }, 0).expect("assigned");
        cluster.put_job(assigned);
        (cluster, worker, task)
    }

    #[test]
    fn an_assignment_never_started_and_a_task_without_progress_are_stuck_at_their_deadlines() {
        let deadlines = TaskDeadlines { ack_s: 10, prepare_s: 100, ..TaskDeadlines::default() };
        let (mut cluster, worker, task) = cluster_with_an_assigned_prepare();
        let mut clocks = TaskClocks::default();
        assert!(clocks.check(&cluster, &deadlines, 1_000).is_empty(), "the clock starts");
        assert!(clocks.check(&cluster, &deadlines, 10_999).is_empty(), "9.999 s");
        let stuck = clocks.check(&cluster, &deadlines, 11_000);
        assert_eq!(stuck.len(), 1);
        assert_eq!((&stuck[0].worker, &stuck[0].task), (&worker, &task));
        assert!(stuck[0].reason.contains("did not start its prepare task within 10 s") && stuck[0].reason.contains("ack_s"), "{}", stuck[0].reason);

        // Listed by a heartbeat: acknowledged, then timed by its kind's deadline.
        let mut clocks = TaskClocks::default();
        clocks.check(&cluster, &deadlines, 0);
        cluster.workers.get_mut(&worker).expect("worker").running = vec![task.clone()];
        assert!(clocks.check(&cluster, &deadlines, 5_000).is_empty(), "acknowledged at 5 s");
        assert!(clocks.check(&cluster, &deadlines, 104_999).is_empty(), "99.999 s after");
        let stuck = clocks.check(&cluster, &deadlines, 105_000);
        assert!(stuck[0].reason.contains("reported no end of its prepare task for 100 s (task_deadlines.prepare_s = 100)"), "{}", stuck[0].reason);
    }

    #[test]
    fn values_outside_their_range_are_named() {
        assert_eq!(TaskDeadlines::default().invalid(), None);
        assert_eq!(TaskDeadlines { infer_s: 0, ..TaskDeadlines::default() }.invalid(), Some(("infer_s", 0)));
    }
}
