//! What the coordinator knows in memory: every job, the live workers with their leases,
//! which tasks each worker holds, and the gangs meeting. The decisions that read only this
//! are here, pure: what a worker should run or stop, a gang's rendezvous, who lost its
//! lease, which workers may be given tasks. The control plane persists and applies them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use feral_common::ids::{Attempt, JobId, Round, WorkerId};
use feral_common::task::{Assignment, Device, TaskKey};

use super::{JobRecord, TaskRecord, TaskState, WorkerRecord, WorkerState};
use crate::error::CoordinatorError;

/// A worker with what only memory knows of it.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveWorker {
    pub record: WorkerRecord,
    pub last_heartbeat_ms: u64,
    /// The tasks it said it runs in its last heartbeat.
    pub running: Vec<TaskKey>,
    /// Set when a gang this worker held a rank of failed: until it heartbeats again after
    /// that moment it gets no task, so a retried gang is not placed on a rank that died
    /// and is still "live" within its lease.
    pub unproven_since_ms: Option<u64>,
    /// Devices it said, in its last heartbeat, it offers no task on (a task there did not
    /// stop when told to).
    pub withheld: Vec<Device>,
}

impl LiveWorker {
    pub fn new(record: WorkerRecord, now_ms: u64) -> Self {
        Self { record, last_heartbeat_ms: now_ms, running: Vec::new(), unproven_since_ms: None, withheld: Vec::new() }
    }
}

/// What a worker should start and what it should stop, as its heartbeat is answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Orders {
    pub assignments: Vec<Assignment>,
    pub cancel: Vec<TaskKey>,
}

/// A finished rendezvous: every rank's address, and rank 0's NCCL id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GangPeers {
    pub addresses: Vec<String>,
    pub nccl_unique_id: Vec<u8>,
}

/// Ranks that joined a gang so far, by rank: (address, NCCL id). In memory only: after a
/// coordinator restart, ranks still waiting simply join again.
type Rendezvous = Vec<Option<(String, Vec<u8>)>>;

#[derive(Debug, Default)]
pub struct Cluster {
    /// Changed only through [`Cluster::put_job`], which keeps `assigned` in step.
    jobs: BTreeMap<JobId, JobRecord>,
    /// The tasks assigned to each worker: a heartbeat reads its own worker's, however many
    /// jobs are queued or done.
    assigned: HashMap<WorkerId, BTreeSet<TaskKey>>,
    pub workers: BTreeMap<WorkerId, LiveWorker>,
    /// Gang rendezvous by (job, round, attempt).
    gangs: HashMap<(JobId, Round, Attempt), Rendezvous>,
}

impl Cluster {
    pub fn jobs(&self) -> &BTreeMap<JobId, JobRecord> {
        &self.jobs
    }

    pub fn job(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Stores `job`, replacing its earlier record, and updates the index of assigned tasks.
    /// A final job's gangs are forgotten.
    pub fn put_job(&mut self, job: JobRecord) {
        let assigned = |job: &JobRecord| -> Vec<(WorkerId, TaskKey)> { job.tasks.iter().filter_map(|t| Some((t.worker()?.clone(), t.key(&job.id)))).collect() };
        if let Some(old) = self.jobs.get(&job.id) {
            for (worker, task) in assigned(old) {
                if let Some(tasks) = self.assigned.get_mut(&worker) {
                    tasks.remove(&task);
                    if tasks.is_empty() {
                        self.assigned.remove(&worker);
                    }
                }
            }
        }
        for (worker, task) in assigned(&job) {
            self.assigned.entry(worker).or_default().insert(task);
        }
        if job.state.is_final() {
            self.gangs.retain(|(id, _, _), _| id != &job.id);
        }
        self.jobs.insert(job.id.clone(), job);
    }

    /// The task a report names, found by its job's key. `None` when the job does not know
    /// it, or the report is from another attempt than the task's: a stale report.
    pub fn task(&self, task: &TaskKey) -> Option<&TaskRecord> {
        self.jobs.get(&task.job)?.task(task)
    }

    /// Whether `task` is assigned to `worker` now.
    pub fn is_assigned_to(&self, task: &TaskKey, worker: &WorkerId) -> bool {
        self.assigned.get(worker).is_some_and(|tasks| tasks.contains(task))
    }

    /// Every assigned task, with its worker and job.
    pub fn assigned_tasks(&self) -> impl Iterator<Item = (&WorkerId, &JobRecord, &TaskRecord)> {
        self.assigned.iter().flat_map(move |(worker, tasks)| {
            tasks.iter().filter_map(move |task| {
                let job = self.jobs.get(&task.job)?;
                Some((worker, job, job.task(task)?))
            })
        })
    }

    /// The jobs with a task on `worker`.
    pub fn jobs_on(&self, worker: &WorkerId) -> BTreeSet<JobId> {
        self.assigned.get(worker).into_iter().flatten().map(|task| task.job.clone()).collect()
    }

    /// What `worker`, running `running`, should start (its assigned tasks it does not run
    /// yet) and stop (what it runs that is no longer assigned to it).
    pub fn orders(&self, worker: &WorkerId, running: &[TaskKey]) -> Orders {
        let mut orders = Orders::default();
        let mine = self.assigned.get(worker).into_iter().flatten().filter(|key| !running.contains(key));
        for (key, job, task) in mine.filter_map(|key| self.jobs.get(&key.job).and_then(|j| Some((key, j, j.task(key)?)))) {
            let TaskState::Assigned { device, .. } = task.state else { continue };
            orders.assignments.push(Assignment {
                key: key.clone(),
                world_size: task.world_size,
                spec_toml: job.spec_toml.clone(),
                artifact_dir: job.artifact_dir.clone(),
                owner: job.owner.clone().unwrap_or_default(),
                device,
                inputs: job.task_inputs(task),
            });
        }
        orders.cancel = running.iter().filter(|task| !self.is_assigned_to(task, worker)).cloned().collect();
        orders
    }

    /// Records where rank `task` listens; answers every rank's address once all have joined.
    pub fn join_gang(&mut self, worker: &WorkerId, task: &TaskKey, address: String, nccl_unique_id: Vec<u8>) -> Result<Option<GangPeers>, CoordinatorError> {
        let record = self.task(task).ok_or_else(|| CoordinatorError::InvalidArgument(format!("task {task} is not a task of job {}", task.job)))?;
        if record.worker() != Some(worker) {
            return Err(CoordinatorError::NotAssigned { task: task.clone(), worker: worker.clone() });
        }
        let (rank, world_size) = (record.rank.0 as usize, record.world_size as usize);
        let gang = self.gangs.entry((task.job.clone(), record.round, record.attempt)).or_insert_with(|| vec![None; world_size]);
        if let Some(slot) = gang.get_mut(rank) {
            *slot = Some((address, nccl_unique_id));
        }
        if gang.iter().any(Option::is_none) {
            return Ok(None);
        }
        let addresses = gang.iter().flatten().map(|(a, _)| a.clone()).collect();
        let nccl_unique_id = gang.first().and_then(|g| g.as_ref()).map(|(_, id)| id.clone()).unwrap_or_default();
        Ok(Some(GangPeers { addresses, nccl_unique_id }))
    }

    /// When `worker` reports its rank of a gang failed: every worker of that gang gets no
    /// task until it heartbeats after `now_ms`, since the rank that reports a broken ring is
    /// often not the one that died.
    pub fn distrust_gang_of(&mut self, worker: &WorkerId, task: &TaskKey, now_ms: u64) {
        let Some(failed) = self.task(task).filter(|t| t.world_size > 1 && t.worker() == Some(worker)) else { return };
        let key = failed.gang_key();
        let gang: Vec<WorkerId> = self.jobs[&task.job].tasks.iter().filter(|t| t.gang_key() == key).filter_map(|t| t.worker().cloned()).collect();
        for id in &gang {
            if let Some(member) = self.workers.get_mut(id) {
                member.unproven_since_ms = Some(now_ms);
            }
        }
    }

    /// Live workers whose last heartbeat is more than `ttl_ms` before `now_ms`.
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> Vec<WorkerId> {
        self.workers
            .values()
            .filter(|w| w.record.state == WorkerState::Live && now_ms.saturating_sub(w.last_heartbeat_ms) > ttl_ms)
            .map(|w| w.record.id.clone())
            .collect()
    }

    /// How many tasks `worker` holds (each takes one of its slots).
    pub fn assigned_count(&self, worker: &WorkerId) -> usize {
        self.assigned.get(worker).map_or(0, BTreeSet::len)
    }

    /// The workers the scheduler may give tasks, with the slots it may use: all but those
    /// a failed gang left unproven, less the slots each withholds.
    pub fn schedulable_workers(&self) -> Vec<WorkerRecord> {
        self.workers
            .values()
            .filter(|w| w.unproven_since_ms.is_none())
            .map(|w| {
                let mut record = w.record.clone();
                record.slots.retain(|slot| !w.withheld.contains(&slot.device));
                record
            })
            .collect()
    }
}
