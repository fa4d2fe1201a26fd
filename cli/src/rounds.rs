//! Per-round results of a semi-supervised job: what each round's model scored, what its
//! pseudo-labelling selected (offline, and online during training), and how precise the
//! pseudo-labels were where the dataset kept the true labels of its unlabelled pool.

use feral_proto::v1 as pb;

use crate::table::{count, f1, percent, Align, Table};

fn class_headers<'a>(first: &'a str, classes: &'a [String]) -> Vec<(&'a str, Align)> {
    std::iter::once((first, Align::Right)).chain(classes.iter().map(|c| (c.as_str(), Align::Right))).collect()
}

/// The three round tables: summary, per-class validation F1, pseudo-label histogram.
/// On video datasets the validation columns are the temporal encoder's, and a last column
/// shows the backbone's frame-by-frame macro-F1 beside them. Where the dataset has a test
/// split, a TEST MACRO-F1 column follows the validation ones (only reported: validation
/// chooses the best round). Where student rounds trained with online pseudo-labels, ONLINE
/// PL (pool labels that passed the thresholds and were learnt), ONLINE RATE (their share of
/// the pool labels the EMA model made) and ONLINE PRECISION follow the offline selection's.
pub fn rounds_tables(job: &pb::Job, classes: &[String]) -> String {
    let video = job.rounds.iter().any(|r| r.frame_validation.is_some());
    let with_test = job.rounds.iter().any(|r| r.test.is_some());
    let with_online = job.rounds.iter().any(|r| r.online.is_some());
    let mut columns = vec![("ROUND", Align::Right), ("VAL ACC", Align::Right), ("VAL MACRO-F1", Align::Right)];
    if with_test {
        columns.push(("TEST MACRO-F1", Align::Right));
    }
    columns.extend([("SHARDS", Align::Right), ("SELECTED", Align::Right), ("POOL", Align::Right), ("PL PRECISION", Align::Right)]);
    if with_online {
        columns.extend([("ONLINE PL", Align::Right), ("ONLINE RATE", Align::Right), ("ONLINE PRECISION", Align::Right)]);
    }
    if video {
        columns.push(("FRAME MACRO-F1", Align::Right));
    }
    let mut summary = Table::new(&columns);
    let mut per_class = Table::new(&class_headers("F1 BY ROUND", classes));
    let mut histogram = Table::new(&class_headers("PSEUDO-LABELS", classes));
    for round in &job.rounds {
        let validation = round.validation.as_ref();
        let selection = round.selection.as_ref();
        let dash = || "-".to_owned();
        let mut row = vec![round.round.to_string(), validation.map_or_else(dash, |v| percent(v.accuracy)), validation.map_or_else(dash, |v| f1(v.macro_f1))];
        if with_test {
            row.push(round.test.as_ref().map_or_else(dash, |t| f1(t.macro_f1)));
        }
        row.extend([
            if round.round == 0 { dash() } else { format!("{}/{}", round.shards_predicted, round.shards_total) },
            selection.map_or_else(dash, |s| s.selected.to_string()),
            selection.map_or_else(dash, |s| s.pool.to_string()),
            selection.and_then(precision).map_or_else(dash, percent),
        ]);
        if with_online {
            let online = round.online.as_ref();
            row.extend([
                online.map_or_else(dash, |o| count(o.masked_in)),
                online.map_or_else(dash, |o| percent(online_rate(o))),
                online.and_then(online_precision).map_or_else(dash, percent),
            ]);
        }
        if video {
            row.push(round.frame_validation.as_ref().map_or_else(dash, |v| f1(v.macro_f1)));
        }
        summary.push(row);
        if let Some(v) = validation {
            per_class.push(std::iter::once(round.round.to_string()).chain(v.per_class_f1.iter().map(|x| f1(*x))).collect());
        }
        if let Some(s) = selection {
            histogram.push(std::iter::once(round.round.to_string()).chain(s.selected_per_class.iter().map(u64::to_string)).collect());
        }
    }
    let mut out = summary.render();
    for table in [per_class, histogram] {
        if !table.is_empty() {
            out.push('\n');
            out.push_str(&table.render());
        }
    }
    out
}

/// Pseudo-label precision where true labels were known.
pub fn precision(selection: &pb::SelectOutcome) -> Option<f64> {
    (selection.with_hidden_label > 0).then(|| selection.correct as f64 / selection.with_hidden_label as f64)
}

/// The share of the pool labels made online that passed the thresholds.
pub fn online_rate(online: &pb::OnlineMask) -> f64 {
    feral_common::method::MaskAudit::from(*online).rate()
}

/// Precision of the online pseudo-labels that were learnt, where true labels were known.
pub fn online_precision(online: &pb::OnlineMask) -> Option<f64> {
    feral_common::method::MaskAudit::from(*online).precision()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(macro_f1: f64) -> pb::Metrics {
        pb::Metrics { accuracy: 0.5, macro_f1, per_class_f1: vec![0.25, 0.75], confusion: vec![], samples: 10 }
    }

    #[test]
    fn rounds_show_scores_selection_histogram_and_precision() {
        let classes = vec!["happy".to_owned(), "sad".to_owned()];
        let selection =
            pb::SelectOutcome { selected_per_class: vec![30, 10], selected: 40, pool: 100, correct: 30, with_hidden_label: 40, ..Default::default() };
        let job = pb::Job {
            rounds: vec![
                pb::RoundSummary { round: 0, validation: Some(metrics(0.5)), ..Default::default() },
                pb::RoundSummary {
                    round: 1,
                    validation: Some(metrics(0.6)),
                    shards_predicted: 3,
                    shards_total: 3,
                    selection: Some(selection),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = rounds_tables(&job, &classes);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("VAL MACRO-F1") && lines[0].contains("PL PRECISION"));
        assert!(lines[1].trim_start().starts_with('0') && lines[1].contains("0.500") && lines[1].ends_with('-'), "{}", lines[1]);
        assert!(lines[2].contains("3/3") && lines[2].contains("40") && lines[2].contains("100") && lines[2].contains("75.0%"), "{}", lines[2]);
        assert!(text.contains("F1 BY ROUND") && text.contains("0.750"));
        assert!(text.contains("PSEUDO-LABELS") && text.contains("happy"));
        let histogram = text.lines().last().unwrap_or_default();
        assert!(histogram.contains("30") && histogram.contains("10"), "{histogram}");
    }

    #[test]
    fn video_jobs_show_the_frame_by_frame_score_beside_the_temporal_one() {
        let job = pb::Job {
            rounds: vec![pb::RoundSummary { round: 0, validation: Some(metrics(0.8)), frame_validation: Some(metrics(0.6)), ..Default::default() }],
            ..Default::default()
        };
        let text = rounds_tables(&job, &["a".to_owned(), "b".to_owned()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("FRAME MACRO-F1"), "{}", lines[0]);
        assert!(lines[1].contains("0.800") && lines[1].ends_with("0.600"), "{}", lines[1]);
        assert!(!rounds_tables(&pb::Job { rounds: vec![pb::RoundSummary::default()], ..Default::default() }, &[]).contains("FRAME"));
    }

    #[test]
    fn rounds_with_test_metrics_show_them_beside_validation() {
        let job = pb::Job {
            rounds: vec![
                pb::RoundSummary { round: 0, validation: Some(metrics(0.5)), test: Some(metrics(0.45)), ..Default::default() },
                pb::RoundSummary { round: 1, validation: Some(metrics(0.6)), shards_predicted: 1, shards_total: 2, ..Default::default() },
            ],
            ..Default::default()
        };
        let text = rounds_tables(&job, &["a".to_owned(), "b".to_owned()]);
        let lines: Vec<Vec<&str>> = text.lines().take(3).map(|l| l.split_whitespace().collect()).collect();
        let header = text.lines().next().unwrap_or_default();
        assert!(header.contains("VAL MACRO-F1  TEST MACRO-F1  SHARDS"), "{header}");
        assert_eq!(&lines[1][..5], ["0", "50.0%", "0.500", "0.450", "-"], "{text}");
        assert_eq!(&lines[2][..5], ["1", "50.0%", "0.600", "-", "1/2"], "an untrained round's test cell is a dash: {text}");
        let without = pb::Job { rounds: vec![pb::RoundSummary { round: 0, validation: Some(metrics(0.5)), ..Default::default() }], ..Default::default() };
        assert!(!rounds_tables(&without, &[]).contains("TEST"), "no test column without a test split");
    }

    #[test]
    fn rounds_with_online_pseudo_labels_show_them_after_the_offline_selection() {
        let selection = pb::SelectOutcome { selected: 40, pool: 100, ..Default::default() };
        let online = pb::OnlineMask { seen: 100_000, masked_in: 41_230, with_hidden_label: 40_000, correct: 36_000 };
        let blind = pb::OnlineMask { seen: 2_000, masked_in: 500, ..Default::default() };
        let job = pb::Job {
            rounds: vec![
                pb::RoundSummary { round: 0, validation: Some(metrics(0.5)), ..Default::default() },
                pb::RoundSummary {
                    round: 1,
                    validation: Some(metrics(0.6)),
                    shards_predicted: 3,
                    shards_total: 3,
                    selection: Some(selection.clone()),
                    online: Some(online),
                    ..Default::default()
                },
                pb::RoundSummary {
                    round: 2,
                    validation: Some(metrics(0.7)),
                    shards_predicted: 3,
                    shards_total: 3,
                    selection: Some(selection),
                    online: Some(blind),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = rounds_tables(&job, &["a".to_owned(), "b".to_owned()]);
        let header = text.lines().next().unwrap_or_default();
        assert!(header.ends_with("PL PRECISION  ONLINE PL  ONLINE RATE  ONLINE PRECISION"), "{header}");
        let lines: Vec<Vec<&str>> = text.lines().take(4).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[1], ["0", "50.0%", "0.500", "-", "-", "-", "-", "-", "-", "-"], "the teacher learns no online labels: {text}");
        assert_eq!(lines[2], ["1", "50.0%", "0.600", "3/3", "40", "100", "-", "41,230", "41.2%", "90.0%"], "{text}");
        assert_eq!(lines[3][7..], ["500", "25.0%", "-"], "precision is unknown without hidden labels: {text}");
        let offline =
            pb::Job { rounds: vec![pb::RoundSummary { round: 1, selection: Some(pb::SelectOutcome::default()), ..Default::default() }], ..Default::default() };
        assert!(!rounds_tables(&offline, &[]).contains("ONLINE"), "no online columns when no round trained online");
    }

    #[test]
    fn precision_is_unknown_without_hidden_labels() {
        assert_eq!(precision(&pb::SelectOutcome::default()), None);
        assert_eq!(online_precision(&pb::OnlineMask::default()), None);
        assert_eq!(online_rate(&pb::OnlineMask::default()), 0.0, "an empty mask has rate 0, not NaN");
    }
}
