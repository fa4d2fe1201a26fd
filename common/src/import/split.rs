//! Split planning: which samples are held out for validation, which keep their labels and
//! which join the unlabelled pool. Pure functions of the labels and a seed, stratified per
//! class (or per video group), so an import is reproducible and testable without files.

use std::collections::BTreeMap;

use crate::dataset::Split;

use super::SplitOptions;

/// Salts that make the validation and labelled choices independent under one seed.
const VAL_SALT: u64 = 0x7661_6c5f_686f_6c64;
const LABELED_SALT: u64 = 0x6c61_6265_6c6c_6564;

/// Per class, picks exactly `round(fraction * n_c)` of the class's `n_c` members by a
/// seeded shuffle. Negative labels (unknown) are never picked.
pub fn stratified_pick(labels: &[i64], fraction: f64, seed: u64) -> Vec<bool> {
    let mut members_by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (index, &label) in labels.iter().enumerate().filter(|(_, label)| **label >= 0) {
        members_by_class.entry(label).or_default().push(index);
    }
    let mut picked = vec![false; labels.len()];
    for (class, mut members) in members_by_class {
        let take = rounded_share(members.len(), fraction);
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

/// Splits of labelled samples: those marked `given_val` go to val; when none is marked, a
/// stratified `val_fraction` is held out instead. Of the rest, a stratified
/// `labeled_fraction` goes to train and the others to unlabeled.
pub fn assign_labelled(labels: &[i64], given_val: &[bool], options: &SplitOptions) -> Vec<Split> {
    debug_assert_eq!(labels.len(), given_val.len());
    let val = if given_val.iter().any(|v| *v) {
        given_val.to_vec()
    } else {
        stratified_pick(labels, options.val_fraction, mix(options.seed, VAL_SALT))
    };
    let rest: Vec<i64> = labels.iter().zip(&val).map(|(&label, &in_val)| if in_val { -1 } else { label }).collect();
    let keep = stratified_pick(&rest, options.labeled_fraction, mix(options.seed, LABELED_SALT));
    val.iter()
        .zip(keep)
        .map(|(&in_val, kept)| match (in_val, kept) {
            (true, _) => Split::Val,
            (false, true) => Split::Train,
            (false, false) => Split::Unlabeled,
        })
        .collect()
}

/// Which of `videos` groups hold validation and which keep their labels: a seeded
/// `val_fraction` of the labelled videos (at least one when the fraction is positive and two
/// or more are labelled, never all of them) goes to val; of the remaining labelled videos a
/// seeded `labeled_fraction` (at least one when positive) keeps its labels.
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
    let mut roles = vec![VideoRole::Hidden; labelled.len()];
    for (i, &video) in candidates.iter().enumerate() {
        if in_val[i] {
            roles[video] = VideoRole::Val;
        }
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
    /// Labelled frames go to train; unlabelled frames to the unlabeled pool.
    Labelled,
    /// Every frame goes to the unlabeled pool, known labels hidden.
    Hidden,
}

/// `round(fraction * count)`, within `0..=count`.
fn rounded_share(count: usize, fraction: f64) -> usize {
    ((fraction * count as f64).round().max(0.0) as usize).min(count)
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
        let splits = assign_labelled(&labels, &given_val, &options);
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
        let splits = assign_labelled(&labels, &vec![false; labels.len()], &options);
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
}
