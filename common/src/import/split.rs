//! Split planning: which samples are held out for validation or test, which keep their
//! labels and which join the unlabelled pool. Pure functions of the labels and a seed, stratified per
//! class (or per video group), so an import is reproducible and testable without files.

use std::collections::BTreeMap;

use crate::dataset::Split;

use super::SplitOptions;

/// Salts that make the validation, test and labelled choices independent under one seed.
const VAL_SALT: u64 = 0x7661_6c5f_686f_6c64;
const LABELED_SALT: u64 = 0x6c61_6265_6c6c_6564;
const TEST_SALT: u64 = 0x7465_7374_5f68_6f6c;

/// Per class, picks exactly `round(fraction * n_c)` of the class's `n_c` members by a
/// seeded shuffle. Negative labels (unknown) are never picked.
pub fn stratified_pick(labels: &[i64], fraction: f64, seed: u64) -> Vec<bool> {
    pick_per_class(labels, seed, |n| rounded_share(n, fraction))
}

/// Of the samples marked `in_val`, picks per class the seeded share `fraction` that moves
/// to the test split: `round(fraction * n_c)` of a class's `n_c` validation samples, but at
/// least one and never all of them when `n_c >= 2`, and none of a class with a single one
/// (validation keeps it: val chooses the best round). Nothing is picked at fraction 0.
pub fn split_off_test(labels: &[i64], in_val: &[bool], fraction: f64, seed: u64) -> Vec<bool> {
    debug_assert_eq!(labels.len(), in_val.len());
    if fraction <= 0.0 {
        return vec![false; labels.len()];
    }
    let val_labels: Vec<i64> = labels.iter().zip(in_val).map(|(&label, &v)| if v { label } else { -1 }).collect();
    pick_per_class(&val_labels, seed, |n| test_share(n, fraction))
}

/// Per class, picks `take(n_c)` of the class's `n_c` members by a seeded shuffle; negative
/// labels are never picked.
fn pick_per_class(labels: &[i64], seed: u64, take: impl Fn(usize) -> usize) -> Vec<bool> {
    let mut members_by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (index, &label) in labels.iter().enumerate().filter(|(_, label)| **label >= 0) {
        members_by_class.entry(label).or_default().push(index);
    }
    let mut picked = vec![false; labels.len()];
    for (class, mut members) in members_by_class {
        let take = take(members.len()).min(members.len());
        shuffle(&mut members, mix(seed, class as u64));
        for &index in &members[..take] {
            picked[index] = true;
        }
    }
    picked
}

/// Picks `take` of `count` groups (videos) by a seeded shuffle.
pub fn pick_groups(count: usize, take: usize, seed: u64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..count).collect();
    shuffle(&mut order, mix(seed, count as u64));
    let mut picked = vec![false; count];
    for &group in &order[..take.min(count)] {
        picked[group] = true;
    }
    picked
}

/// Splits of labelled samples: those marked `given_test` go to test, those marked
/// `given_val` to val; when none is marked val, a stratified `val_fraction` of the others is
/// held out instead. When none is marked test, [`split_off_test`] moves a stratified
/// `test_fraction` of val to test (the train and unlabeled choices do not depend on it). Of
/// the rest, a stratified `labeled_fraction` goes to train and the others to unlabeled.
pub fn assign_labelled(labels: &[i64], given_val: &[bool], given_test: &[bool], options: &SplitOptions) -> Vec<Split> {
    debug_assert_eq!(labels.len(), given_val.len());
    debug_assert_eq!(labels.len(), given_test.len());
    let without = |excluded: &[bool]| -> Vec<i64> { labels.iter().zip(excluded).map(|(&label, &out)| if out { -1 } else { label }).collect() };
    let has_given_test = given_test.iter().any(|t| *t);
    let mut val = if given_val.iter().any(|v| *v) {
        given_val.iter().zip(given_test).map(|(&v, &t)| v && !t).collect()
    } else {
        stratified_pick(&without(given_test), options.val_fraction, mix(options.seed, VAL_SALT))
    };
    let test = if has_given_test { given_test.to_vec() } else { split_off_test(labels, &val, options.test_fraction, mix(options.seed, TEST_SALT)) };
    let held_out: Vec<bool> = val.iter().zip(&test).map(|(&v, &t)| v || t).collect();
    let keep = stratified_pick(&without(&held_out), options.labeled_fraction, mix(options.seed, LABELED_SALT));
    for (in_val, &in_test) in val.iter_mut().zip(&test) {
        *in_val &= !in_test;
    }
    (0..labels.len())
        .map(|i| match (test[i], val[i], keep[i]) {
            (true, _, _) => Split::Test,
            (false, true, _) => Split::Val,
            (false, false, true) => Split::Train,
            (false, false, false) => Split::Unlabeled,
        })
        .collect()
}

/// Which of `videos` groups hold validation and which keep their labels: a seeded
/// `val_fraction` of the labelled videos (at least one when the fraction is positive and two
/// or more are labelled, never all of them) goes to val; of the remaining labelled videos a
/// seeded `labeled_fraction` (at least one when positive) keeps its labels. A seeded
/// `test_fraction` of the val videos then moves to test (at least one and never all when
/// the fraction is positive and two or more are val; none of a single val video), which
/// changes no other video's role.
pub fn plan_videos(labelled: &[bool], options: &SplitOptions) -> Vec<VideoRole> {
    let candidates: Vec<usize> = (0..labelled.len()).filter(|&v| labelled[v]).collect();
    let n = candidates.len();
    let mut val_count = rounded_share(n, options.val_fraction);
    if options.val_fraction > 0.0 && n >= 2 {
        val_count = val_count.clamp(1, n - 1);
    }
    let in_val = pick_groups(n, val_count, mix(options.seed, VAL_SALT));
    let rest: Vec<usize> = (0..n).filter(|&i| !in_val[i]).map(|i| candidates[i]).collect();
    let mut keep_count = rounded_share(rest.len(), options.labeled_fraction);
    if options.labeled_fraction > 0.0 && !rest.is_empty() {
        keep_count = keep_count.max(1);
    }
    let kept = pick_groups(rest.len(), keep_count, mix(options.seed, LABELED_SALT));
    let val_videos: Vec<usize> = (0..n).filter(|&i| in_val[i]).map(|i| candidates[i]).collect();
    let test_count = if options.test_fraction > 0.0 { test_share(val_videos.len(), options.test_fraction) } else { 0 };
    let in_test = pick_groups(val_videos.len(), test_count, mix(options.seed, TEST_SALT));
    let mut roles = vec![VideoRole::Hidden; labelled.len()];
    for (i, &video) in val_videos.iter().enumerate() {
        roles[video] = if in_test[i] { VideoRole::Test } else { VideoRole::Val };
    }
    for (i, &video) in rest.iter().enumerate() {
        if kept[i] {
            roles[video] = VideoRole::Labelled;
        }
    }
    roles
}

/// What a whole video contributes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoRole {
    /// Labelled frames go to val; its unlabelled frames are left out.
    Val,
    /// Labelled frames go to test; its unlabelled frames are left out.
    Test,
    /// Labelled frames go to train; unlabelled frames to the unlabeled pool.
    Labelled,
    /// Every frame goes to the unlabeled pool, known labels hidden.
    Hidden,
}

/// `round(fraction * count)`, within `0..=count`.
fn rounded_share(count: usize, fraction: f64) -> usize {
    ((fraction * count as f64).round().max(0.0) as usize).min(count)
}

/// How many of `count` validation members move to test: `round(fraction * count)` within
/// `1..=count - 1` when `count >= 2`, else none.
fn test_share(count: usize, fraction: f64) -> usize {
    if count < 2 {
        return 0;
    }
    rounded_share(count, fraction).clamp(1, count - 1)
}

/// Fisher-Yates with a splitmix64 stream: stable across dependency versions.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let j = ((u128::from(mix(state, 0)) * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}

/// A 64-bit mix of two numbers (splitmix64's finaliser of their combination).
fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(counts: &[usize]) -> Vec<i64> {
        // Interleaved, so classes are not contiguous.
        let mut labels = Vec::new();
        let mut left = counts.to_vec();
        while left.iter().any(|&c| c > 0) {
            for (class, c) in left.iter_mut().enumerate() {
                if *c > 0 {
                    *c -= 1;
                    labels.push(class as i64);
                }
            }
        }
        labels
    }

    #[test]
    fn stratified_pick_takes_the_rounded_share_of_every_class() {
        let labels = labels(&[40, 3, 17, 1, 0, 25]);
        for fraction in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0] {
            let picked = stratified_pick(&labels, fraction, 11);
            for (class, n) in [(0, 40), (1, 3), (2, 17), (3, 1), (5, 25)] {
                let got = labels.iter().zip(&picked).filter(|(l, p)| **l == class && **p).count();
                assert_eq!(got, (fraction * n as f64).round() as usize, "class {class} at {fraction}");
            }
        }
        let with_unknown = vec![-1, 0, -1, 0];
        assert_eq!(stratified_pick(&with_unknown, 1.0, 1), vec![false, true, false, true]);
    }

    #[test]
    fn picks_depend_on_the_seed_and_only_on_it() {
        let labels = labels(&[100, 100]);
        assert_eq!(stratified_pick(&labels, 0.3, 5), stratified_pick(&labels, 0.3, 5));
        assert_ne!(stratified_pick(&labels, 0.3, 5), stratified_pick(&labels, 0.3, 6));
        assert_eq!(pick_groups(10, 4, 3).iter().filter(|p| **p).count(), 4);
        assert_ne!(pick_groups(30, 15, 3), pick_groups(30, 15, 4));
    }

    #[test]
    fn given_validation_is_kept_and_the_rest_is_stratified() {
        let labels = labels(&[20, 20, 10]);
        let given_val: Vec<bool> = (0..labels.len()).map(|i| i % 5 == 0).collect();
        let options = SplitOptions { labeled_fraction: 0.5, ..SplitOptions::default() };
        let splits = assign_labelled(&labels, &given_val, &vec![false; labels.len()], &options);
        for (i, split) in splits.iter().enumerate() {
            assert_eq!(*split == Split::Val, given_val[i], "sample {i}");
        }
        for class in 0..3 {
            let rest = (0..labels.len()).filter(|&i| labels[i] == class && !given_val[i]).count();
            let train = (0..labels.len()).filter(|&i| labels[i] == class && splits[i] == Split::Train).count();
            assert_eq!(train, (0.5 * rest as f64).round() as usize, "class {class}");
        }
    }

    #[test]
    fn without_given_validation_a_stratified_share_is_held_out() {
        let labels = labels(&[50, 30, 20]);
        let options = SplitOptions { val_fraction: 0.2, labeled_fraction: 1.0, ..SplitOptions::default() };
        let none = vec![false; labels.len()];
        let splits = assign_labelled(&labels, &none, &none, &options);
        for (class, n) in [(0, 50), (1, 30), (2, 20)] {
            let val = (0..labels.len()).filter(|&i| labels[i] == class && splits[i] == Split::Val).count();
            assert_eq!(val, n / 5, "class {class}");
        }
        assert!(!splits.contains(&Split::Unlabeled), "all labels kept at fraction 1");
    }

    #[test]
    fn videos_are_planned_whole() {
        let labelled = vec![true, true, false, true, true];
        let options = SplitOptions { val_fraction: 0.1, labeled_fraction: 0.5, ..SplitOptions::default() };
        let roles = plan_videos(&labelled, &options);
        assert_eq!(roles[2], VideoRole::Hidden, "an unlabelled video is never val or labelled");
        assert_eq!(roles.iter().filter(|r| **r == VideoRole::Val).count(), 1, "at least one val video");
        assert_eq!(roles.iter().filter(|r| **r == VideoRole::Labelled).count(), 2, "half of the other three, rounded");
        let one = plan_videos(&[true], &options);
        assert_eq!(one, vec![VideoRole::Labelled], "a single video is never all validation");
    }

    #[test]
    fn test_is_split_off_validation_per_class_and_changes_nothing_else() {
        let labels = labels(&[20, 20, 10, 3]);
        let given_val: Vec<bool> = (0..labels.len()).map(|i| i % 4 == 0).collect();
        let none = vec![false; labels.len()];
        let before = SplitOptions { labeled_fraction: 0.5, ..SplitOptions::default() };
        let after = SplitOptions { test_fraction: 0.5, ..before.clone() };
        let (old, new) = (assign_labelled(&labels, &given_val, &none, &before), assign_labelled(&labels, &given_val, &none, &after));
        assert!(!old.contains(&Split::Test), "no test split at fraction 0");
        for i in 0..labels.len() {
            match old[i] {
                Split::Val => assert!(matches!(new[i], Split::Val | Split::Test), "sample {i}: test comes out of val"),
                other => assert_eq!(new[i], other, "sample {i}: train and unlabeled do not move"),
            }
        }
        for class in 0..4 {
            let in_split = |split| (0..labels.len()).filter(|&i| labels[i] == class && new[i] == split).count();
            let val_before = (0..labels.len()).filter(|&i| labels[i] == class && old[i] == Split::Val).count();
            let expected = if val_before < 2 { 0 } else { ((0.5 * val_before as f64).round() as usize).clamp(1, val_before - 1) };
            assert_eq!(in_split(Split::Test), expected, "class {class}");
            assert_eq!(in_split(Split::Val) + in_split(Split::Test), val_before, "class {class}");
        }
        let given_test: Vec<bool> = (0..labels.len()).map(|i| i % 4 == 1).collect();
        let with_given = assign_labelled(&labels, &given_val, &given_test, &after);
        for i in 0..labels.len() {
            assert_eq!(with_given[i] == Split::Test, given_test[i], "sample {i}: a given test split is kept as it is");
        }
        let picked = split_off_test(&labels, &given_val, 0.9, 3);
        assert!(picked.iter().zip(&given_val).all(|(p, v)| !p || *v), "only validation samples move");
        assert_eq!(split_off_test(&labels, &given_val, 0.0, 3), none);
    }

    #[test]
    fn test_videos_come_out_of_the_val_videos() {
        let labelled = vec![true; 10];
        let options = SplitOptions { val_fraction: 0.4, labeled_fraction: 0.5, ..SplitOptions::default() };
        let before = plan_videos(&labelled, &options);
        let after = plan_videos(&labelled, &SplitOptions { test_fraction: 0.5, ..options.clone() });
        assert_eq!(after.iter().filter(|r| **r == VideoRole::Test).count(), 2, "half of the four val videos");
        for (old, new) in before.iter().zip(&after) {
            match old {
                VideoRole::Val => assert!(matches!(new, VideoRole::Val | VideoRole::Test)),
                other => assert_eq!(new, other),
            }
        }
        let one_val = SplitOptions { val_fraction: 0.1, test_fraction: 0.9, ..options };
        assert!(!plan_videos(&labelled, &one_val).contains(&VideoRole::Test), "a single val video stays val");
    }
}
