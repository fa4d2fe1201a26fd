//! The shard planner: a pure function from the shards to place, the ranks present and the
//! previous assignment to a new assignment of shards to ranks. Shards of one group (the
//! frames of one video) form a unit that always lands on one rank. Units keep their
//! previous rank while it is present; the rest are placed largest first on the least
//! loaded rank; then the smallest units move off the most loaded rank while it is above
//! the target (the ceiling of the mean) and a move strictly lowers it. Moving kept units
//! is rationed: one largest unit's worth, plus a mean share for each rank that kept
//! nothing (a newcomer); beyond that only while the most loaded rank exceeds the mean by
//! more than the largest unit. So, starting from a previous plan, a rank leaving moves
//! its own load plus at most one unit and a rank joining pulls about its share; and the
//! most loaded rank never exceeds the mean by more than the largest unit. No ranks
//! means an empty assignment.

use std::collections::{BTreeMap, BTreeSet};

/// One unit of work the planner places: a shard file, its sample count, and the group it
/// must stay with (e.g. the video whose frames it holds; shards of one group always go to
/// the same rank). `None` = no constraint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLoad {
    pub shard: String,
    pub samples: u64,
    pub group: Option<String>,
}

/// What to place and where: shard names are expected to be unique (a repeated name is
/// planned once, from its smallest entry); ranks are worker ids in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanProblem {
    pub shards: Vec<ShardLoad>,
    pub ranks: Vec<String>,
}

/// shard -> rank
pub type Assignment = BTreeMap<String, String>;

/// A group, or a shard without a group: the thing the planner moves as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum UnitKey<'a> {
    Group(&'a str),
    Shard(&'a str),
}

struct Unit<'a> {
    key: UnitKey<'a>,
    shards: Vec<&'a str>,
    samples: u128,
}

/// Plans which rank reads which shard. Pure and deterministic: the same inputs give the
/// same output, whatever the order of `shards` and `ranks`. Every shard is assigned to
/// exactly one present rank, unless there are no ranks, in which case the assignment is
/// empty. A unit keeps its previous rank when that rank is present and every shard of
/// the unit that had a previous rank had that one (new shards of a video follow it).
pub fn plan(problem: &PlanProblem, previous: &Assignment) -> Assignment {
    let ranks: BTreeSet<&str> = problem.ranks.iter().map(String::as_str).collect();
    let units = units_of(problem);
    let mut loads: BTreeMap<&str, u128> = ranks.iter().map(|rank| (*rank, 0)).collect();
    let kept: Vec<Option<&str>> = units.iter().map(|unit| kept_rank(unit, previous, &ranks)).collect();
    for (unit, rank) in units.iter().zip(&kept) {
        if let Some(load) = rank.and_then(|rank| loads.get_mut(rank)) {
            *load += unit.samples;
        }
    }

    let mut placed = kept.clone();
    let mut pending: Vec<usize> = (0..units.len()).filter(|i| kept[*i].is_none()).collect();
    pending.sort_by(|a, b| {
        let (a, b) = (&units[*a], &units[*b]);
        b.samples.cmp(&a.samples).then_with(|| a.key.cmp(&b.key))
    });
    for index in pending {
        if let Some((rank, _)) = least_loaded(&loads) {
            placed[index] = Some(rank);
            *loads.entry(rank).or_default() += units[index].samples;
        }
    }

    rebalance(&units, &kept, &mut placed, &mut loads);

    let mut assignment = Assignment::new();
    for (unit, rank) in units.iter().zip(&placed) {
        let Some(rank) = rank else { continue };
        assignment.extend(unit.shards.iter().map(|shard| (shard.to_string(), rank.to_string())));
    }
    assignment
}

/// Max rank load / mean rank load (1.0 = perfect), counting only shards assigned to
/// present ranks. 1.0 when there are no ranks or no samples.
pub fn imbalance(problem: &PlanProblem, assignment: &Assignment) -> f64 {
    let mut loads: BTreeMap<&str, u128> = problem.ranks.iter().map(|rank| (rank.as_str(), 0)).collect();
    for shard in distinct_shards(problem) {
        let rank = assignment.get(&shard.shard);
        if let Some(load) = rank.and_then(|rank| loads.get_mut(rank.as_str())) {
            *load += u128::from(shard.samples);
        }
    }
    let total: u128 = loads.values().sum();
    match loads.values().max() {
        Some(max) if total > 0 => *max as f64 * loads.len() as f64 / total as f64,
        _ => 1.0,
    }
}

/// The shards sorted by name, one entry per name (the smallest, so the choice does not
/// depend on input order).
fn distinct_shards(problem: &PlanProblem) -> Vec<&ShardLoad> {
    let mut shards: Vec<&ShardLoad> = problem.shards.iter().collect();
    shards.sort_by(|a, b| (&a.shard, a.samples, &a.group).cmp(&(&b.shard, b.samples, &b.group)));
    shards.dedup_by(|later, earlier| later.shard == earlier.shard);
    shards
}

/// The units, sorted by key, each with its shards sorted by name.
fn units_of(problem: &PlanProblem) -> Vec<Unit<'_>> {
    let mut units: BTreeMap<UnitKey<'_>, Unit<'_>> = BTreeMap::new();
    for shard in distinct_shards(problem) {
        let key = match &shard.group {
            Some(group) => UnitKey::Group(group),
            None => UnitKey::Shard(&shard.shard),
        };
        let unit = units.entry(key).or_insert_with(|| Unit { key, shards: Vec::new(), samples: 0 });
        unit.shards.push(&shard.shard);
        unit.samples += u128::from(shard.samples);
    }
    units.into_values().collect()
}

/// The present rank a unit stays on, if its shards that were placed before agree on one.
fn kept_rank<'a>(unit: &Unit<'_>, previous: &Assignment, ranks: &BTreeSet<&'a str>) -> Option<&'a str> {
    let mut before = unit.shards.iter().filter_map(|shard| previous.get(*shard));
    let first = before.next()?;
    if before.any(|rank| rank != first) {
        return None;
    }
    ranks.get(first.as_str()).copied()
}

/// The rank with the largest load, ties to the smallest rank id.
fn most_loaded<'a>(loads: &BTreeMap<&'a str, u128>) -> Option<(&'a str, u128)> {
    loads.iter().map(|(rank, load)| (*rank, *load)).max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
}

/// The rank with the smallest load, ties to the smallest rank id.
fn least_loaded<'a>(loads: &BTreeMap<&'a str, u128>) -> Option<(&'a str, u128)> {
    loads.iter().map(|(rank, load)| (*rank, *load)).min_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)))
}

/// Moves the smallest unit of the most loaded rank to the least loaded one while the most
/// loaded is above the target and the move strictly lowers it (light + unit < heavy), and
/// either the churn of kept units (samples away from their previous rank) stays within
/// the allowance, or the most loaded rank exceeds the mean by more than the largest unit.
/// The allowance is the largest unit plus the floor of the mean for each rank that kept
/// nothing. Each move strictly lowers the sum of squared loads, so the loop ends; when it
/// ends, heavy <= target, or heavy <= light + unit <= mean + largest.
fn rebalance<'a>(units: &[Unit<'_>], kept: &[Option<&'a str>], placed: &mut [Option<&'a str>], loads: &mut BTreeMap<&'a str, u128>) {
    let ranks = loads.len().max(1) as u128;
    let total: u128 = loads.values().sum();
    let largest = units.iter().map(|unit| unit.samples).max().unwrap_or(0);
    let target = total.div_ceil(ranks);
    let newcomers = loads.keys().filter(|rank| !kept.contains(&Some(**rank))).count() as u128;
    let allowance = largest + total / ranks * newcomers;
    let mut churn: u128 = 0;
    while let (Some((heavy, heavy_load)), Some((light, light_load))) = (most_loaded(loads), least_loaded(loads)) {
        if heavy_load <= target || heavy == light {
            return;
        }
        let out_of_bound = heavy_load * ranks > total + largest * ranks;
        let churn_after = |index: usize| match kept[index] {
            home if home == placed[index] => churn + units[index].samples,
            home if home == Some(light) => churn.saturating_sub(units[index].samples),
            _ => churn,
        };
        let movable = (0..units.len())
            .filter(|i| placed[*i] == Some(heavy) && units[*i].samples > 0)
            .filter(|i| light_load + units[*i].samples < heavy_load)
            .filter(|i| out_of_bound || churn_after(*i) <= allowance)
            .min_by(|a, b| {
                let (a, b) = (&units[*a], &units[*b]);
                a.samples.cmp(&b.samples).then_with(|| a.key.cmp(&b.key))
            });
        let Some(index) = movable else {
            return;
        };
        churn = churn_after(index);
        placed[index] = Some(light);
        *loads.entry(heavy).or_default() -= units[index].samples;
        *loads.entry(light).or_default() += units[index].samples;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `"a:5 v0:2@v"`: shard a with 5 samples, shard v0 with 2 samples in group v.
    fn problem(shards: &str, ranks: &str) -> PlanProblem {
        let shards = shards.split_whitespace().map(|item| {
            let (shard, rest) = item.split_once(':').expect("name:samples");
            let (samples, group) = rest.split_once('@').map_or((rest, None), |(s, g)| (s, Some(g)));
            let samples = samples.parse().expect("samples");
            ShardLoad { shard: shard.into(), samples, group: group.map(Into::into) }
        });
        let ranks = ranks.split_whitespace().map(Into::into).collect();
        PlanProblem { shards: shards.collect(), ranks }
    }

    /// `"a>r1 b>r2"`: shard a on rank r1, shard b on rank r2.
    fn assignment(pairs: &str) -> Assignment {
        let pairs = pairs.split_whitespace().filter_map(|pair| pair.split_once('>'));
        pairs.map(|(shard, rank)| (shard.into(), rank.into())).collect()
    }

    fn loads(problem: &PlanProblem, assignment: &Assignment) -> BTreeMap<String, u64> {
        let mut loads: BTreeMap<String, u64> = problem.ranks.iter().map(|rank| (rank.clone(), 0)).collect();
        for shard in &problem.shards {
            *loads.entry(assignment[&shard.shard].clone()).or_default() += shard.samples;
        }
        loads
    }

    /// The largest unit (group, or shard without one), computed independently of `plan`.
    fn largest_unit(problem: &PlanProblem) -> u64 {
        let mut sizes: BTreeMap<(bool, &String), u64> = BTreeMap::new();
        for shard in &problem.shards {
            let key = shard.group.as_ref().map_or((false, &shard.shard), |group| (true, group));
            *sizes.entry(key).or_default() += shard.samples;
        }
        sizes.into_values().max().unwrap_or(0)
    }

    fn moved_samples(problem: &PlanProblem, before: &Assignment, after: &Assignment) -> u64 {
        let moved = problem.shards.iter().filter(|s| before.get(&s.shard) != after.get(&s.shard));
        moved.map(|shard| shard.samples).sum()
    }

    #[test]
    fn fresh_plan_places_largest_first_on_least_loaded() {
        let p = problem("a:5 b:4 c:3 d:3 e:2", "r2 r1");
        let got = plan(&p, &Assignment::new());
        assert_eq!(got, assignment("a>r1 b>r2 c>r2 d>r1 e>r2"));
        assert!((imbalance(&p, &got) - 9.0 / 8.5).abs() < 1e-12);
    }

    #[test]
    fn shards_of_one_video_stay_together() {
        let p = problem("v0:2@v v1:2@v v2:2@v x:3 y:3", "r1 r2");
        let got = plan(&p, &Assignment::new());
        assert_eq!(got, assignment("v0>r1 v1>r1 v2>r1 x>r2 y>r2"));
        assert_eq!(imbalance(&p, &got), 1.0);
    }

    #[test]
    fn no_ranks_or_no_shards_give_an_empty_assignment() {
        let p = problem("a:1", "");
        assert!(plan(&p, &assignment("a>r1")).is_empty());
        assert_eq!(imbalance(&p, &Assignment::new()), 1.0);
        assert!(plan(&problem("", "r1"), &Assignment::new()).is_empty());
    }

    #[test]
    fn departed_rank_shards_move_and_the_others_stay() {
        // c goes to the least loaded rank (r1 by id); 8 against 4 no single move improves.
        let p = problem("a:4 b:4 c:4", "r1 r2");
        let got = plan(&p, &assignment("a>r1 b>r2 c>r3"));
        assert_eq!(got, assignment("a>r1 b>r2 c>r1"));
    }

    #[test]
    fn a_newcomer_takes_the_smallest_units_until_balanced() {
        // 10/0 -> d, c, b move to r2 (4/6), then d goes back home: 5/5.
        let p = problem("a:4 b:3 c:2 d:1", "r1 r2");
        let previous = assignment("a>r1 b>r1 c>r1 d>r1");
        let got = plan(&p, &previous);
        assert_eq!(got, assignment("a>r1 b>r2 c>r2 d>r1"));
        assert_eq!(moved_samples(&p, &previous, &got), 5);
    }

    #[test]
    fn stability_wins_once_the_churn_allowance_is_spent() {
        // 6/1/1: a (3, the whole allowance) moves to r2; c on to r3 would exceed it.
        let p = problem("a:3 b:3 c:1 d:1", "r1 r2 r3");
        let got = plan(&p, &assignment("a>r1 b>r1 c>r2 d>r3"));
        assert_eq!(got, assignment("a>r2 b>r1 c>r2 d>r3"));
    }

    #[test]
    fn a_split_group_is_placed_afresh_and_new_shards_follow_their_video() {
        // v was split, so it is placed again (largest first, on r1); w1 joins w0 on r2.
        let p = problem("v0:3@v v1:3@v w0:2@w w1:2@w", "r1 r2");
        let got = plan(&p, &assignment("v0>r1 v1>r2 w0>r2"));
        assert_eq!(got, assignment("v0>r1 v1>r1 w0>r2 w1>r2"));
    }

    /// Up to 40 shards, some in up to 6 videos, over `ranks` ranks, with a previous
    /// assignment that may split groups and name ranks that are not present.
    fn scenario(ranks: std::ops::Range<usize>) -> impl Strategy<Value = (PlanProblem, Assignment)> {
        let shard = (0u64..1000, prop::option::weighted(0.4, 0u8..6), prop::option::of(0u8..8));
        (prop::collection::vec(shard, 0..40), ranks).prop_map(|(shards, rank_count)| {
            let mut previous = Assignment::new();
            let shards = shards.into_iter().enumerate().map(|(i, (samples, group, before))| {
                let shard = format!("s{i:02}");
                if let Some(rank) = before {
                    previous.insert(shard.clone(), format!("r{rank}"));
                }
                ShardLoad { shard, samples, group: group.map(|g| format!("v{g}")) }
            });
            let ranks = (0..rank_count).map(|r| format!("r{r}")).collect();
            (PlanProblem { shards: shards.collect(), ranks }, previous)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_shard_once_on_a_present_rank_groups_whole_and_balanced(
            (p, previous) in scenario(1..6),
        ) {
            for start in [Assignment::new(), previous] {
                let got = plan(&p, &start);
                prop_assert_eq!(got.len(), p.shards.len());
                let mut group_rank: BTreeMap<&String, &String> = BTreeMap::new();
                for shard in &p.shards {
                    let rank = &got[&shard.shard];
                    prop_assert!(p.ranks.contains(rank));
                    if let Some(group) = &shard.group {
                        prop_assert_eq!(*group_rank.entry(group).or_insert(rank), rank);
                    }
                }
                let loads = loads(&p, &got);
                let max = loads.values().copied().max().unwrap_or(0) as f64;
                let mean = loads.values().sum::<u64>() as f64 / p.ranks.len() as f64;
                prop_assert!(max <= mean + largest_unit(&p) as f64 + 1e-9, "{:?}", loads);
            }
        }

        #[test]
        fn independent_of_input_order(
            (p, previous, shards, ranks) in scenario(1..6).prop_flat_map(|(p, previous)| {
                let shards = Just(p.shards.clone()).prop_shuffle();
                let ranks = Just(p.ranks.clone()).prop_shuffle();
                (Just(p), Just(previous), shards, ranks)
            })
        ) {
            let shuffled = PlanProblem { shards, ranks };
            let got = plan(&p, &previous);
            prop_assert_eq!(&got, &plan(&shuffled, &previous));
            prop_assert_eq!(plan(&p, &Assignment::new()), plan(&shuffled, &Assignment::new()));
            prop_assert_eq!(imbalance(&p, &got), imbalance(&shuffled, &got));
        }

        #[test]
        fn replanning_the_same_problem_changes_nothing((p, _) in scenario(1..6)) {
            let first = plan(&p, &Assignment::new());
            prop_assert_eq!(plan(&p, &first), first);
        }

        #[test]
        fn a_departing_rank_moves_its_load_and_at_most_one_unit_more(
            (p, _) in scenario(2..6), leaving in any::<prop::sample::Index>(),
        ) {
            let before = plan(&p, &Assignment::new());
            let departed = p.ranks[leaving.index(p.ranks.len())].clone();
            let ranks = p.ranks.iter().filter(|rank| **rank != departed).cloned().collect();
            let after = plan(&PlanProblem { shards: p.shards.clone(), ranks }, &before);
            let departed_load = loads(&p, &before)[&departed];
            let moved = moved_samples(&p, &before, &after);
            prop_assert!(after.values().all(|rank| *rank != departed));
            prop_assert!(moved >= departed_load);
            prop_assert!(moved <= departed_load + largest_unit(&p), "moved {}", moved);
        }

        #[test]
        fn a_joining_rank_moves_about_its_share((p, _) in scenario(1..6)) {
            let before = plan(&p, &Assignment::new());
            let mut ranks = p.ranks.clone();
            ranks.push("joined".into());
            let share = p.shards.iter().map(|s| s.samples).sum::<u64>() as f64 / ranks.len() as f64;
            let after = plan(&PlanProblem { shards: p.shards.clone(), ranks }, &before);
            let moved = moved_samples(&p, &before, &after) as f64;
            prop_assert!(moved <= share + largest_unit(&p) as f64 + 1e-9, "moved {}", moved);
        }
    }
}
