//! Feral's wire API: the `feral.v1` gRPC package, generated at build time from
//! `proto/feral/v1/feral.proto`, and the one place where the shared domain types of
//! `feral-common` (the task contract of `feral_common::task`, metrics, selections, online
//! pseudo-label masks) are converted to and from its messages, for the coordinator and the
//! workers alike. A message that lacks what the contract needs is refused with the field
//! named ([`ContractError`]).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("feral.v1");
}

mod contract;
pub mod credentials;
pub mod https;
pub mod leader;
pub mod limits;

pub use contract::{required, task_kind, task_ref, ContractError};

mod convert {
    use feral_common::method::{MaskAudit, SelectionSummary};
    use feral_common::metrics::MetricsSummary;

    use crate::v1 as pb;

    impl From<&MetricsSummary> for pb::Metrics {
        fn from(m: &MetricsSummary) -> Self {
            pb::Metrics { accuracy: m.accuracy, macro_f1: m.macro_f1, per_class_f1: m.per_class_f1.clone(), confusion: m.confusion.clone(), samples: m.samples }
        }
    }

    impl From<pb::Metrics> for MetricsSummary {
        fn from(m: pb::Metrics) -> Self {
            MetricsSummary { accuracy: m.accuracy, macro_f1: m.macro_f1, per_class_f1: m.per_class_f1, confusion: m.confusion, samples: m.samples }
        }
    }

    impl From<&SelectionSummary> for pb::SelectOutcome {
        fn from(s: &SelectionSummary) -> Self {
            pb::SelectOutcome {
                selected_per_class: s.selected_per_class.clone(),
                thresholds: s.thresholds.clone(),
                confident_per_class: s.confident_per_class.clone(),
                selected: s.selected,
                pool: s.pool,
                correct: s.correct,
                with_hidden_label: s.with_hidden_label,
                selection_file: s.selection_file.clone(),
                cap: s.cap,
            }
        }
    }

    impl From<pb::SelectOutcome> for SelectionSummary {
        fn from(s: pb::SelectOutcome) -> Self {
            SelectionSummary {
                selected_per_class: s.selected_per_class,
                thresholds: s.thresholds,
                confident_per_class: s.confident_per_class,
                selected: s.selected,
                pool: s.pool,
                correct: s.correct,
                with_hidden_label: s.with_hidden_label,
                selection_file: s.selection_file,
                cap: s.cap,
            }
        }
    }

    impl From<&MaskAudit> for pb::OnlineMask {
        fn from(a: &MaskAudit) -> Self {
            pb::OnlineMask { seen: a.seen, masked_in: a.masked_in, with_hidden_label: a.with_hidden_label, correct: a.correct }
        }
    }

    impl From<pb::OnlineMask> for MaskAudit {
        fn from(m: pb::OnlineMask) -> Self {
            MaskAudit { seen: m.seen, masked_in: m.masked_in, with_hidden_label: m.with_hidden_label, correct: m.correct }
        }
    }
}
