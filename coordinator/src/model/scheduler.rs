//! Pairs pending tasks with free worker slots. Pure: the same jobs and workers always give
//! the same assignments.

use feral_common::ids::WorkerId;
use feral_common::plan::{plan, PlanProblem, ShardLoad};

use feral_common::task::{Device, TaskKey, TaskKind};

use super::{JobRecord, TaskRecord, TaskState, WorkerRecord, WorkerState};

#[derive(Clone, Debug, PartialEq, Eq)]
/// A pending task placed on a worker's free device slot.
pub struct Placement {
    pub task: TaskKey,
    pub worker: WorkerId,
    pub device: Device,
    /// The ranks its gang is placed with (1: no gang): below the task's own `world_size`
    /// when an elastic gang is placed short.
    pub world_size: u32,
}

/// Assigns pending tasks, oldest job first, each to the free slot of the live worker that
/// runs the fewest tasks (ties go to the lower worker id). A slot runs one task at a time.
/// The ranks of a gang are placed all at once or not at all; an elastic gang (see
/// `resources.min_workers`) with as many ranks as there are free slots, when that is at
/// least its minimum. Inference tasks first go to
/// the worker the job's shard plan gives their shard ([`replan`] keeps it current); only a
/// slot left free after that takes another worker's shard, so no worker idles while shards
/// wait.
pub fn schedule(jobs: &[&JobRecord], workers: &[&WorkerRecord], now_ms: u64) -> Vec<Placement> {
    let mut ordered: Vec<&&JobRecord> = jobs.iter().filter(|j| !j.state.is_final()).collect();
    let mut busy = busy_devices(jobs, workers);
    let mut free = free_slots(workers, &busy);
    ordered.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));

    let mut assignments = Vec::new();
    for job in ordered {
        // A full cluster places nothing more: the jobs behind wait without being looked at,
        // so a long queue costs nothing here.
        if free == 0 {
            break;
        }
        // A retry waiting out its back-off is not placed yet.
        let mut pending: Vec<&TaskRecord> = job.tasks.iter().filter(|t| t.is_placeable(now_ms)).collect();
        if pending.iter().any(|t| t.shard.is_some()) {
            pending.retain(|task| {
                let Some(worker) = task.shard.as_ref().and_then(|s| job.shard_plan.get(s.as_str())) else { return true };
                let Some(index) = workers.iter().position(|w| w.id.as_str() == worker) else { return true };
                let Some(slot) = workers[index].slots.iter().find(|s| !busy[index].contains(&s.device)) else { return true };
                busy[index].push(slot.device);
                let (worker, device) = (workers[index].id.clone(), slot.device);
                assignments.push(Placement { task: task.key(&job.id), worker, device, world_size: 1 });
                false
            });
        }
        let mut placed_gangs = Vec::new();
        for task in &pending {
            if placed_gangs.contains(&task.gang_key()) {
                continue;
            }
            placed_gangs.push(task.gang_key());
            let gang: Vec<&&TaskRecord> = pending.iter().filter(|t| t.gang_key() == task.gang_key()).collect();
            let mut trial = busy.clone();
            let mut placed = Vec::new();
            for member in &gang {
                let Some((index, device)) = free_slot(workers, &trial) else { break };
                trial[index].push(device);
                placed.push(Placement { task: member.key(&job.id), worker: workers[index].id.clone(), device, world_size: 0 });
            }
            // Ranks come in rank order, so the ranks placed are 0..placed. At least 1.
            let least = if task.kind == TaskKind::Train { elastic_minimum(job).unwrap_or(gang.len()) } else { gang.len() };
            if placed.len() >= least {
                let world_size = u32::try_from(placed.len()).unwrap_or(u32::MAX);
                busy = trial;
                assignments.extend(placed.into_iter().map(|p| Placement { world_size, ..p }));
            }
        }
        free = free_slots(workers, &busy);
    }
    assignments
}

/// The fewest ranks an elastic job's training gang may be placed with; `None` for a
/// fixed gang.
fn elastic_minimum(job: &JobRecord) -> Option<usize> {
    let resources = &job.spec.resources;
    (resources.min_gang() < resources.full_gang()).then_some(usize::from(resources.min_gang()))
}

/// Free device slots of the live workers, when `jobs` hold the slots they hold now.
pub fn free_slot_count(jobs: &[&JobRecord], workers: &[&WorkerRecord]) -> usize {
    free_slots(workers, &busy_devices(jobs, workers))
}

/// The devices each worker (by its place in `workers`) is busy on: one pass over the
/// tasks of the jobs still running.
fn busy_devices(jobs: &[&JobRecord], workers: &[&WorkerRecord]) -> Vec<Vec<Device>> {
    let position: std::collections::HashMap<&WorkerId, usize> = workers.iter().enumerate().map(|(i, w)| (&w.id, i)).collect();
    let mut busy: Vec<Vec<Device>> = vec![Vec::new(); workers.len()];
    for task in jobs.iter().filter(|j| !j.state.is_final()).flat_map(|j| &j.tasks) {
        if let TaskState::Assigned { worker, device } = &task.state {
            if let Some(&i) = position.get(worker) {
                busy[i].push(*device);
            }
        }
    }
    busy
}

fn free_slots(workers: &[&WorkerRecord], busy: &[Vec<Device>]) -> usize {
    workers.iter().zip(busy).filter(|(w, _)| w.state == WorkerState::Live).map(|(w, b)| w.slots.iter().filter(|s| !b.contains(&s.device)).count()).sum()
}

/// Why `job` waits, when it waits for more than is free now: a training gang larger than
/// all the device slots of the live workers together (an elastic one: its minimum) can
/// never be placed until workers join, nor can any other task while no live worker has a
/// slot. `None` when its pending tasks could run on the cluster as it is.
pub fn waiting_reason(job: &JobRecord, workers: &[&WorkerRecord]) -> Option<String> {
    let pending: Vec<&TaskRecord> = job.tasks.iter().filter(|t| t.state == TaskState::Pending).collect();
    let live: Vec<&&WorkerRecord> = workers.iter().filter(|w| w.state == WorkerState::Live).collect();
    let slots: usize = live.iter().map(|w| w.slots.len()).sum();
    let waits_for = |need: u32, what: String| {
        (need as usize > slots).then(|| format!("waiting for {need} device slots for {what}; {} live workers have {slots}", live.len()))
    };
    match pending.iter().filter(|t| t.kind == TaskKind::Train).map(|t| t.world_size).max() {
        Some(gang) => {
            let (need, field) = match elastic_minimum(job) {
                Some(least) => (least as u32, "min_workers"),
                None => (gang, "workers"),
            };
            waits_for(need, format!("its training gang (resources.{field} = {need})"))
        }
        // Preparing, predicting and selecting are one-slot tasks.
        None => pending.first().and_then(|task| waits_for(1, format!("its {} task", task.kind.name()))),
    }
}

/// The job's next shard plan, when it has inference tasks waiting and the plan it holds is
/// not the planner's answer for the live workers: which worker should predict each
/// unlabelled shard, balanced by sample count, starting from the job's previous plan. So
/// while the same workers are live every round predicts a shard on the same worker (whose
/// page cache or local disk already holds it), and a worker joining or leaving moves only
/// its own share. `None`: keep the plan as it is.
pub fn replan(job: &JobRecord, workers: &[&WorkerRecord]) -> Option<feral_common::plan::Assignment> {
    if !job.tasks.iter().any(|t| t.state == TaskState::Pending && t.shard.is_some()) {
        return None;
    }
    let shards = job.dataset.iter().flat_map(|d| &d.unlabeled_shards);
    let problem = PlanProblem {
        shards: shards.map(|s| ShardLoad { shard: s.file.clone(), samples: s.samples, group: None }).collect(),
        ranks: workers.iter().filter(|w| w.state == WorkerState::Live).map(|w| w.id.to_string()).collect(),
    };
    Some(plan(&problem, &job.shard_plan)).filter(|next| next != &job.shard_plan)
}

/// The free slot of the live worker running the fewest tasks (lower id on ties).
fn free_slot(workers: &[&WorkerRecord], busy: &[Vec<Device>]) -> Option<(usize, Device)> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.state == WorkerState::Live)
        .filter_map(|(i, w)| {
            let free = w.slots.iter().find(|s| !busy[i].contains(&s.device))?;
            Some((busy[i].len(), &w.id, i, free.device))
        })
        .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
        .map(|(_, _, index, device)| (index, device))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use feral_common::spec::JobSpec;

    use super::*;
    use crate::model::Slot;

    fn worker(id: &str, slots: u32, state: WorkerState) -> WorkerRecord {
        let slots = (0..slots).map(|i| Slot { device: Device::Cuda(i), name: String::new() }).collect();
        WorkerRecord { id: WorkerId::new(id), hostname: id.into(), slots, state, registered_at_ms: 0 }
    }

    fn job(id: &str, created: u64) -> JobRecord {
        JobRecord::submitted(feral_common::ids::JobId::new(id), JobSpec::for_dataset("/d"), String::new(), PathBuf::new(), created)
    }

    #[test]
    fn oldest_job_first_and_load_spread_over_workers() {
        let (old, new, newest) = (job("b", 1), job("a", 2), job("c", 3));
        let (w1, w2) = (worker("w1", 2, WorkerState::Live), worker("w2", 1, WorkerState::Live));
        let assignments = schedule(&[&new, &newest, &old], &[&w1, &w2], 0);
        let pairs: Vec<(&str, &str, Device)> = assignments.iter().map(|a| (a.task.job.as_str(), a.worker.as_str(), a.device)).collect();
        assert_eq!(pairs, vec![("b", "w1", Device::Cuda(0)), ("a", "w2", Device::Cuda(0)), ("c", "w1", Device::Cuda(1))]);
    }

    #[test]
    fn a_gang_is_placed_whole_or_not_at_all() {
        let mut gang_job = job("g", 1);
        let mut spec = gang_job.spec.clone();
        spec.resources.workers = 3;
        gang_job.spec = spec;
        gang_job.tasks = TaskRecord::gang_for_test(3);
        let small = job("s", 2);
        // Two free slots: the gang of three waits, the later single task runs.
        let (w1, w2) = (worker("w1", 1, WorkerState::Live), worker("w2", 1, WorkerState::Live));
        let assignments = schedule(&[&gang_job, &small], &[&w1, &w2], 0);
        assert_eq!(assignments.len(), 1);
        assert_eq!(assignments[0].task.job.as_str(), "s");
        // Three free slots on two workers: all three ranks are placed.
        let w3 = worker("w3", 2, WorkerState::Live);
        let assignments = schedule(&[&gang_job], &[&w1, &w3], 0);
        assert_eq!(assignments.len(), 3);
        let mut slots: Vec<(String, Device)> = assignments.iter().map(|a| (a.worker.to_string(), a.device)).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 3, "each rank has its own slot");
    }

    #[test]
    fn an_elastic_gang_takes_the_free_slots_down_to_its_minimum() {
        let mut elastic = job("e", 1);
        elastic.spec.resources.workers = 4;
        elastic.spec.resources.min_workers = Some(2);
        elastic.tasks = TaskRecord::gang_for_test(4);
        let (w1, w2, w3) = (worker("w1", 1, WorkerState::Live), worker("w2", 2, WorkerState::Live), worker("w3", 1, WorkerState::Lost));
        // One free slot: below the minimum, nothing is placed, and the job says why.
        let placed = schedule(&[&elastic], &[&w1, &w3], 0);
        assert!(placed.is_empty(), "{placed:?}");
        let reason = waiting_reason(&elastic, &[&w1, &w3]).expect("waits");
        assert!(reason.contains("waiting for 2 device slots") && reason.contains("resources.min_workers = 2"), "{reason}");
        // Three free slots: ranks 0, 1 and 2 are placed as a gang of three.
        let placed = schedule(&[&elastic], &[&w1, &w2, &w3], 0);
        let ranks: Vec<(u32, u32)> = placed.iter().map(|p| (elastic.task(&p.task).expect("task").rank.0, p.world_size)).collect();
        assert_eq!(ranks, vec![(0, 3), (1, 3), (2, 3)]);
        assert_eq!(waiting_reason(&elastic, &[&w1, &w2]), None);
        // A fixed gang of four waits for four.
        elastic.spec.resources.min_workers = None;
        assert!(schedule(&[&elastic], &[&w1, &w2, &w3], 0).is_empty());
        // Free slots are counted over what every job holds.
        assert_eq!(free_slot_count(&[&elastic], &[&w1, &w2, &w3]), 3);
        elastic.tasks[0].state = TaskState::Assigned { worker: WorkerId::new("w2"), device: Device::Cuda(1) };
        assert_eq!(free_slot_count(&[&elastic], &[&w1, &w2, &w3]), 2);
    }

    #[test]
    fn inference_follows_the_shard_plan_and_free_slots_take_what_is_left() {
        use feral_common::task::{DatasetSummary, ShardRef};
        let mut labelling = job("p", 1);
        let shards: Vec<ShardRef> = (0..6).map(|i| ShardRef { file: format!("u{i}.safetensors"), samples: 100 }).collect();
        labelling.dataset = Some(DatasetSummary { class_names: vec![], train_samples: 1, val_samples: 1, unlabeled_shards: shards.clone() });
        labelling.tasks = shards.iter().map(|s| TaskRecord::infer_for_test(&s.file)).collect();
        let (w1, w2) = (worker("w1", 1, WorkerState::Live), worker("w2", 1, WorkerState::Live));
        let planned = replan(&labelling, &[&w1, &w2]).expect("a first plan");
        labelling.shard_plan = planned.clone();
        let first = schedule(&[&labelling], &[&w1, &w2], 0);
        assert_eq!(first.len(), 2, "one task per free slot");
        for a in &first {
            let shard = labelling.task(&a.task).and_then(|t| t.shard.clone()).expect("an inference task");
            assert_eq!(planned[shard.as_str()], a.worker.as_str(), "{shard} runs where the plan puts it");
        }
        // The same live workers keep the plan (the next round predicts each shard on the
        // same worker); a worker with nothing of its own left takes another's shard.
        assert_eq!(replan(&labelling, &[&w2, &w1]), None);
        let w1_shards: Vec<String> = planned.iter().filter(|(_, w)| w.as_str() == "w1").map(|(s, _)| s.clone()).collect();
        for task in labelling.tasks.iter_mut().filter(|t| !w1_shards.iter().any(|s| Some(s.as_str()) == t.shard.as_ref().map(|s| s.as_str()))) {
            task.state = TaskState::Finished;
        }
        let stolen = schedule(&[&labelling], &[&w1, &w2], 0);
        assert_eq!(stolen.len(), 2, "w2 helps with w1's shards");
        assert!(stolen.iter().any(|a| a.worker.as_str() == "w2"));
    }

    #[test]
    fn a_worker_joining_or_leaving_moves_only_its_own_share_of_the_shards() {
        use feral_common::task::{DatasetSummary, ShardRef};
        let mut labelling = job("p", 1);
        let shards: Vec<ShardRef> = (0..12).map(|i| ShardRef { file: format!("u{i:02}.safetensors"), samples: 100 }).collect();
        labelling.dataset = Some(DatasetSummary { class_names: vec![], train_samples: 1, val_samples: 1, unlabeled_shards: shards.clone() });
        labelling.tasks = shards.iter().map(|s| TaskRecord::infer_for_test(&s.file)).collect();
        let [w1, w2, w3] = ["w1", "w2", "w3"].map(|id| worker(id, 1, WorkerState::Live));
        labelling.shard_plan = replan(&labelling, &[&w1, &w2]).expect("a first plan");
        let count = |plan: &feral_common::plan::Assignment, id: &str| plan.values().filter(|w| w.as_str() == id).count();
        assert_eq!((count(&labelling.shard_plan, "w1"), count(&labelling.shard_plan, "w2")), (6, 6));

        // w3 joins: it takes its third, and every shard that moves moves to it.
        let joined = replan(&labelling, &[&w1, &w2, &w3]).expect("w3 joined");
        let moved: Vec<&String> = joined.keys().filter(|s| joined[*s] != labelling.shard_plan[*s]).collect();
        assert_eq!(moved.len(), 4, "{joined:?}");
        assert!(moved.iter().all(|s| joined[*s] == "w3"), "{joined:?}");

        // w1 leaves: only w1's shards move, and they are shared between the two left.
        labelling.shard_plan = joined.clone();
        let left = replan(&labelling, &[&w2, &w3]).expect("w1 left");
        for (shard, before) in &joined {
            if before != "w1" {
                assert_eq!(&left[shard], before, "{shard} stays on {before}");
            }
        }
        assert_eq!((count(&left, "w2"), count(&left, "w3")), (6, 6), "{left:?}");

        // No inference waiting: no plan is made.
        for task in &mut labelling.tasks {
            task.state = TaskState::Finished;
        }
        assert_eq!(replan(&labelling, &[&w1]), None);
    }

    #[test]
    fn a_gang_larger_than_every_live_slot_says_what_it_waits_for() {
        let mut gang = job("j1", 1);
        gang.tasks = TaskRecord::gang_for_test(5);
        let one = worker("w1", 1, WorkerState::Live);
        let lost = worker("w2", 8, WorkerState::Lost);
        let reason = waiting_reason(&gang, &[&one, &lost]).expect("5 ranks cannot fit in 1 slot");
        assert!(reason.contains("waiting for 5 device slots") && reason.contains("1 live workers have 1"), "{reason}");
        let big = worker("w3", 4, WorkerState::Live);
        assert_eq!(waiting_reason(&gang, &[&one, &big]), None, "5 slots live: it only waits its turn");
    }

    #[test]
    fn a_one_slot_task_without_a_live_worker_says_so_without_naming_the_gang() {
        let mut labelling = job("j1", 1);
        labelling.tasks = vec![TaskRecord::infer_for_test("unlabeled-00000.safetensors")];
        let lost = worker("w1", 8, WorkerState::Lost);
        let reason = waiting_reason(&labelling, &[&lost]).expect("no live slot");
        assert_eq!(reason, "waiting for 1 device slots for its infer task; 0 live workers have 0");
        let one = worker("w2", 1, WorkerState::Live);
        assert_eq!(waiting_reason(&labelling, &[&one]), None);
    }

    #[test]
    fn lost_workers_and_busy_slots_get_nothing() {
        let mut running = job("a", 1);
        let task = running.tasks[0].key(&running.id);
        running.tasks[0].state = TaskState::Assigned { worker: WorkerId::new("w1"), device: Device::Cuda(0) };
        let waiting = job("b", 2);
        let (w1, w2) = (worker("w1", 1, WorkerState::Live), worker("w2", 4, WorkerState::Lost));
        assert!(schedule(&[&running, &waiting], &[&w1, &w2], 0).is_empty());
        assert!(running.task(&task).is_some());
    }
}
