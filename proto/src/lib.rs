//! Feral's wire API: the `feral.v1` gRPC package, generated at build time from
//! `proto/feral/v1/feral.proto`, and the conversions of the shared domain types of
//! `feral-common` that both the coordinator and the workers send (metrics).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("feral.v1");
}

mod convert {
    use feral_common::metrics::MetricsSummary;

    use crate::v1 as pb;

    impl From<&MetricsSummary> for pb::Metrics {
        fn from(m: &MetricsSummary) -> Self {
            pb::Metrics {
                accuracy: m.accuracy,
                macro_f1: m.macro_f1,
                per_class_f1: m.per_class_f1.clone(),
                confusion: m.confusion.clone(),
                samples: m.samples,
            }
        }
    }

    impl From<pb::Metrics> for MetricsSummary {
        fn from(m: pb::Metrics) -> Self {
            MetricsSummary { accuracy: m.accuracy, macro_f1: m.macro_f1, per_class_f1: m.per_class_f1, confusion: m.confusion, samples: m.samples }
        }
    }
}
