//! Evaluation metrics of the FER literature: accuracy, macro-F1 (the ABAW metric),
//! per-class precision, recall and F1, from a confusion matrix that ranks can add up.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Counts of (true class, predicted class) pairs. Adding two matrices merges evaluations
/// made on disjoint data, which is how ranks combine their shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    /// Row-major: `counts[truth * classes + predicted]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        Self { classes, counts: vec![0; classes * classes] }
    }

    /// Rebuilds a matrix from its row-major counts; `None` when the length is not a square.
    pub fn from_counts(counts: Vec<u64>) -> Option<Self> {
        let classes = (counts.len() as f64).sqrt().round() as usize;
        (classes * classes == counts.len()).then_some(Self { classes, counts })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Records one prediction. Labels outside `0..classes` (such as -1, unlabelled) are ignored.
    pub fn record(&mut self, truth: i64, predicted: i64) {
        let in_range = |label: i64| label >= 0 && (label as usize) < self.classes;
        if in_range(truth) && in_range(predicted) {
            self.counts[truth as usize * self.classes + predicted as usize] += 1;
        }
    }

    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(self.classes, other.classes, "merging confusion matrices of different sizes");
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn cell(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.cell(c, c)).sum();
        ratio(correct, self.total())
    }

    /// Precision of class `c`: of the samples predicted `c`, how many are `c`.
    pub fn precision(&self, c: usize) -> f64 {
        let predicted: u64 = (0..self.classes).map(|t| self.cell(t, c)).sum();
        ratio(self.cell(c, c), predicted)
    }

    /// Recall of class `c`: of the samples that are `c`, how many were predicted `c`.
    pub fn recall(&self, c: usize) -> f64 {
        let actual: u64 = (0..self.classes).map(|p| self.cell(c, p)).sum();
        ratio(self.cell(c, c), actual)
    }

    /// F1 of class `c`; 0 when the class was neither present nor predicted.
    pub fn f1(&self, c: usize) -> f64 {
        let (p, r) = (self.precision(c), self.recall(c));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    pub fn per_class_f1(&self) -> Vec<f64> {
        (0..self.classes).map(|c| self.f1(c)).collect()
    }

    /// Unweighted mean of the per-class F1 scores over all classes.
    pub fn macro_f1(&self) -> f64 {
        if self.classes == 0 {
            return 0.0;
        }
        self.per_class_f1().iter().sum::<f64>() / self.classes as f64
    }

    pub fn summary(&self) -> MetricsSummary {
        MetricsSummary {
            accuracy: self.accuracy(),
            macro_f1: self.macro_f1(),
            per_class_f1: self.per_class_f1(),
            confusion: self.counts.clone(),
            samples: self.total(),
        }
    }
}

/// The metrics a job reports for one evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class_f1: Vec<f64>,
    /// Row-major confusion counts, see [`ConfusionMatrix`].
    pub confusion: Vec<u64>,
    pub samples: u64,
}

/// A model that predicts one class for almost everything: at least this share of the
/// samples, while fewer than half of them hold it.
pub const COLLAPSE_SHARE: f64 = 0.9;

/// A model that gives one class to almost every sample (see [`MetricsSummary::collapse`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Collapse {
    pub class: usize,
    /// The share of the samples the model gives that class.
    pub predicted: f64,
    /// The share of the samples that hold it.
    pub actual: f64,
}

impl Collapse {
    /// What a user is told, with the class named.
    pub fn describe(&self, names: &[String]) -> String {
        let name = names.get(self.class).cloned().unwrap_or_else(|| format!("class {}", self.class));
        format!(
            "the saved model predicts `{name}` for {:.0}% of the validation images ({:.0}% are {name}): it has collapsed to one class",
            100.0 * self.predicted,
            100.0 * self.actual
        )
    }
}

impl MetricsSummary {
    /// The class the model predicts for at least [`COLLAPSE_SHARE`] of the samples while
    /// fewer than half hold it, if any: a model that learnt (almost) nothing. `None`
    /// without a confusion matrix.
    pub fn collapse(&self) -> Option<Collapse> {
        let classes = self.per_class_f1.len();
        let total: u64 = self.confusion.iter().sum();
        if classes == 0 || total == 0 || self.confusion.len() != classes * classes {
            return None;
        }
        let predicted = |c: usize| (0..classes).map(|t| self.confusion[t * classes + c]).sum::<u64>();
        let class = (0..classes).max_by_key(|&c| predicted(c))?;
        let actual = self.confusion[class * classes..(class + 1) * classes].iter().sum::<u64>() as f64 / total as f64;
        let share = predicted(class) as f64 / total as f64;
        (share >= COLLAPSE_SHARE && actual < 0.5).then_some(Collapse { class, predicted: share, actual })
    }

    /// Whether these could be a real evaluation's metrics over `classes` classes (when
    /// known): every rate finite and in [0, 1], one F1 per class and a square confusion
    /// matrix whose counts add up to the samples (either may be left empty). The error
    /// names the first field that is not.
    pub fn check(&self, classes: Option<usize>) -> Result<(), MetricsError> {
        let rate =
            |rate: Rate, value: f64| if value.is_finite() && (0.0..=1.0).contains(&value) { Ok(()) } else { Err(MetricsError::OutOfRange { rate, value }) };
        rate(Rate::Accuracy, self.accuracy)?;
        rate(Rate::MacroF1, self.macro_f1)?;
        for (class, f1) in self.per_class_f1.iter().enumerate() {
            rate(Rate::ClassF1(class), *f1)?;
        }
        if let Some(classes) = classes {
            if !self.per_class_f1.is_empty() && self.per_class_f1.len() != classes {
                return Err(MetricsError::ClassF1Count { values: self.per_class_f1.len(), classes });
            }
            if !self.confusion.is_empty() && self.confusion.len() != classes * classes {
                return Err(MetricsError::ConfusionSize { counts: self.confusion.len(), classes });
            }
        }
        let counted = self.confusion.iter().try_fold(0u64, |sum, c| sum.checked_add(*c));
        if !self.confusion.is_empty() && counted != Some(self.samples) {
            return Err(MetricsError::ConfusionTotal { counted, samples: self.samples });
        }
        Ok(())
    }
}

/// A rate of [`MetricsSummary`], as [`MetricsError`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    Accuracy,
    MacroF1,
    /// The F1 of one class, by its index.
    ClassF1(usize),
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Accuracy => f.write_str("accuracy"),
            Rate::MacroF1 => f.write_str("macro_f1"),
            Rate::ClassF1(class) => write!(f, "per_class_f1[{class}]"),
        }
    }
}

/// Why a [`MetricsSummary`] cannot be a real evaluation's (see [`MetricsSummary::check`]):
/// each names the field and the values that do not fit.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("{rate} {value} is not in [0, 1]")]
    OutOfRange { rate: Rate, value: f64 },
    #[error("per_class_f1 has {values} values for {classes} classes")]
    ClassF1Count { values: usize, classes: usize },
    #[error("confusion has {counts} counts for {classes} classes")]
    ConfusionSize { counts: usize, classes: usize },
    /// `counted` is `None` when the counts overflow a `u64`.
    #[error("confusion counts add up to {}, not to samples {samples}", counted.map_or_else(|| "more than u64::MAX".to_owned(), |c| c.to_string()))]
    ConfusionTotal { counted: Option<u64>, samples: u64 },
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        // truth:     0 0 0 1 1 2
        // predicted: 0 0 1 1 2 2
        let mut m = ConfusionMatrix::new(3);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)] {
            m.record(t, p);
        }
        assert!(close(m.accuracy(), 4.0 / 6.0));
        // class 0: p = 2/2, r = 2/3 -> f1 = 0.8
        assert!(close(m.f1(0), 0.8));
        // class 1: p = 1/2, r = 1/2 -> 0.5
        assert!(close(m.f1(1), 0.5));
        // class 2: p = 1/2, r = 1/1 -> 2/3
        assert!(close(m.f1(2), 2.0 / 3.0));
        assert!(close(m.macro_f1(), (0.8 + 0.5 + 2.0 / 3.0) / 3.0));
    }

    #[test]
    fn unlabelled_and_out_of_range_labels_are_ignored() {
        let mut m = ConfusionMatrix::new(2);
        m.record(-1, 0);
        m.record(0, 5);
        assert_eq!(m.total(), 0);
        assert_eq!(m.accuracy(), 0.0);
    }

    #[test]
    fn merging_equals_recording_everything_in_one_matrix() {
        let pairs = [(0, 1), (1, 1), (2, 0), (2, 2), (0, 0)];
        let (mut a, mut b, mut all) = (ConfusionMatrix::new(3), ConfusionMatrix::new(3), ConfusionMatrix::new(3));
        for (i, (t, p)) in pairs.iter().enumerate() {
            if i % 2 == 0 {
                a.record(*t, *p)
            } else {
                b.record(*t, *p)
            }
            all.record(*t, *p);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(ConfusionMatrix::from_counts(all.counts().to_vec()), Some(all));
        assert_eq!(ConfusionMatrix::from_counts(vec![1, 2, 3]), None);
    }

    #[test]
    fn check_names_the_field_and_values_that_do_not_fit() {
        let good = MetricsSummary { accuracy: 0.5, macro_f1: 0.5, per_class_f1: vec![0.5, 0.5], confusion: vec![1, 1, 1, 1], samples: 4 };
        assert_eq!(good.check(Some(2)), Ok(()));
        let f1 = MetricsSummary { per_class_f1: vec![0.5, f64::NAN], ..good.clone() };
        assert!(matches!(f1.check(None), Err(MetricsError::OutOfRange { rate: Rate::ClassF1(1), .. })));
        assert_eq!(f1.check(None).expect_err("NaN").to_string(), "per_class_f1[1] NaN is not in [0, 1]");
        let macro_f1 = MetricsSummary { macro_f1: -3.0, ..good.clone() };
        assert!(macro_f1.check(None).expect_err("negative").to_string().contains("macro_f1 -3"));
        assert_eq!(good.check(Some(3)), Err(MetricsError::ClassF1Count { values: 2, classes: 3 }));
        let confusion = MetricsSummary { per_class_f1: vec![], ..good.clone() };
        assert_eq!(confusion.check(Some(3)), Err(MetricsError::ConfusionSize { counts: 4, classes: 3 }));
        let overflow = MetricsSummary { confusion: vec![u64::MAX, 1, 0, 0], ..good.clone() };
        let error = overflow.check(Some(2)).expect_err("overflow");
        assert_eq!(error, MetricsError::ConfusionTotal { counted: None, samples: 4 });
        assert!(error.to_string().contains("more than u64::MAX"), "{error}");
        let total = MetricsSummary { samples: 5, ..good };
        assert_eq!(total.check(Some(2)).expect_err("total").to_string(), "confusion counts add up to 4, not to samples 5");
    }

    #[test]
    fn a_model_that_predicts_one_class_for_almost_everything_is_a_collapse() {
        let mut collapsed = ConfusionMatrix::new(3);
        for truth in 0..3 {
            for i in 0..10 {
                collapsed.record(truth, if i == 0 { truth } else { 1 });
            }
        }
        let collapse = collapsed.summary().collapse().expect("collapsed");
        assert_eq!((collapse.class, collapse.actual), (1, 1.0 / 3.0));
        assert!((collapse.predicted - 28.0 / 30.0).abs() < 1e-12);
        let names = ["a", "b", "c"].map(String::from);
        assert!(collapse.describe(&names).contains("predicts `b` for 93%"), "{}", collapse.describe(&names));

        // A class that most samples hold, predicted for most of them, is not a collapse.
        let mut skewed = ConfusionMatrix::new(2);
        (0..95).for_each(|_| skewed.record(0, 0));
        (0..5).for_each(|_| skewed.record(1, 0));
        assert_eq!(skewed.summary().collapse(), None);
        assert_eq!(MetricsSummary::default().collapse(), None);
    }
}
