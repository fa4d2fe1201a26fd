//! The task contract's messages as a peer may send them: an assignment (coordinator to
//! worker), a finished task's outcome and an epoch report (worker to coordinator). Each
//! converts, or is refused naming its field; an accepted assignment, sent again as the
//! coordinator would send it, converts to the same assignment.
#![no_main]

use feral_common::task::{Assignment, EpochReport, TaskOutcome};
use feral_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = pb::TaskAssignment::decode(data) {
        match Assignment::try_from(message.clone()) {
            Ok(assignment) => {
                let sent = pb::TaskAssignment::from(&assignment);
                let again = Assignment::try_from(sent.clone()).expect("an assignment the coordinator sends converts");
                assert_eq!(pb::TaskAssignment::from(&again).encode_to_vec(), sent.encode_to_vec());
            }
            Err(error) => assert!(error.to_string().starts_with("field `")),
        }
    }
    if let Ok(pb::FinishTaskRequest { outcome: Some(outcome), .. }) = pb::FinishTaskRequest::decode(data) {
        if let Err(error) = TaskOutcome::try_from(outcome) {
            assert!(error.to_string().starts_with("field `"));
        }
    }
    if let Ok(message) = pb::EpochMetrics::decode(data) {
        if let Err(error) = EpochReport::try_from(message) {
            assert!(error.to_string().starts_with("field `"));
        }
    }
});
