//! How the gRPC adapter says where a reader starts (`channels::start`): the request fields
//! (`StartPosition`, `AutoReset`), the report of a reset in the initial metadata, and
//! refusals as statuses with machine-readable details: a `google.rpc.Status` carrying a
//! `google.rpc.ErrorInfo` in the `grpc-status-details-bin` trailer, as clients of Google's
//! error model read it (`grpcio-status`' `rpc_status.from_call`, tonic-types, grpc-go's
//! `status.Details`).
//!
//! The three Google messages are declared here by their published field numbers instead of
//! pulling in a crate of generated Google API types for them.

use std::collections::BTreeMap;

use prost::Message as _;
use tonic::{Code, Response, Status};

use super::grpc::pb;
use super::start::{Refused, Reset, Start};

/// The `ErrorInfo.domain` of the hub's errors.
pub const DOMAIN: &str = "fhir-hub";

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(btree_map = "string, string", tag = "3")]
    metadata: BTreeMap<String, String>,
}

/// A status whose details are one `ErrorInfo` (`reason`, the hub's domain, `metadata`).
pub fn with_error_info(
    code: Code,
    message: String,
    reason: &str,
    metadata: &[(&str, String)],
) -> Status {
    let info = ErrorInfo {
        reason: reason.to_owned(),
        domain: DOMAIN.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    };
    let status = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// A refused start as `OUT_OF_RANGE`, naming the first event available and the head.
pub fn out_of_range(id: &str, refused: &Refused) -> Status {
    let bounds = refused.bounds();
    let after = match refused {
        Refused::BeyondHead { after, .. } | Refused::Purged { after, .. } => *after,
    };
    with_error_info(
        Code::OutOfRange,
        refused.message(id),
        refused.reason(),
        &[
            ("subscription_id", id.to_owned()),
            ("after", after.to_string()),
            ("first_available", bounds.first.to_string()),
            ("head", bounds.head.to_string()),
        ],
    )
}

/// The asked start of a `Subscribe`: `start` when set, else `from_event_number` (0: live,
/// 1: everything still in the log, N: from N).
pub(super) fn subscribe_start(r: &pb::SubscribeRequest) -> Result<Start, Status> {
    use pb::start_position::Position;
    let position = r.start.as_ref().and_then(|s| s.position.clone());
    let Some(position) = position else {
        return match r.from_event_number {
            0 => Ok(Start::Latest),
            1 => Ok(Start::Earliest),
            n if n > 1 => Ok(Start::From(n)),
            n => Err(Status::invalid_argument(format!(
                "from_event_number {n} is negative"
            ))),
        };
    };
    if r.from_event_number != 0 {
        return Err(Status::invalid_argument(
            "give either start or from_event_number, not both",
        ));
    }
    match position {
        Position::Earliest(true) => Ok(Start::Earliest),
        Position::Latest(true) => Ok(Start::Latest),
        Position::EventNumber(n) if n >= 1 => Ok(Start::From(n)),
        Position::EventNumber(n) => Err(Status::invalid_argument(format!(
            "start.event_number {n} must be 1 or more"
        ))),
        Position::LoggedAt(t) => Start::at_time(&t).map_err(Status::invalid_argument),
        Position::Earliest(false) | Position::Latest(false) => Err(Status::invalid_argument(
            "start.earliest and start.latest are set with true",
        )),
    }
}

/// A request's auto-reset policy; `unspecified` where it was not given.
pub(super) fn auto_reset(value: i32, unspecified: Reset) -> Result<Reset, Status> {
    match pb::AutoReset::try_from(value) {
        Ok(pb::AutoReset::Unspecified) => Ok(unspecified),
        Ok(pb::AutoReset::Earliest) => Ok(Reset::Earliest),
        Ok(pb::AutoReset::Latest) => Ok(Reset::Latest),
        Ok(pb::AutoReset::Fail) => Ok(Reset::Fail),
        Err(_) => Err(Status::invalid_argument(format!(
            "auto_reset {value} is not an AutoReset"
        ))),
    }
}

/// The initial metadata that reports starts moved by the auto-reset policy: one
/// `fhir-hub-reset` entry per subscription, "<id> <asked position> <resumes after>".
pub(super) fn report_resets<T>(response: &mut Response<T>, resets: &[(String, i64, i64)]) {
    for (id, asked, after) in resets {
        if let Ok(v) = format!("{id} {asked} {after}").parse() {
            response.metadata_mut().append("fhir-hub-reset", v);
        }
    }
}

/// The status that ends a stream whose following events were purged while it read.
pub(super) fn history_gone(id: &str, after: i64, available: i64) -> Status {
    with_error_info(
        Code::OutOfRange,
        format!(
            "Subscription/{id}: events after {after} were purged by retention; the first still available is {available}"
        ),
        "HISTORY_GONE",
        &[
            ("subscription_id", id.to_owned()),
            ("after", after.to_string()),
            ("first_available", available.to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::start::Bounds;

    #[test]
    fn details_decode_as_a_google_rpc_status_with_error_info() {
        let s = out_of_range(
            "s1",
            &Refused::BeyondHead {
                after: 12,
                bounds: Bounds { first: 3, head: 9 },
            },
        );
        assert_eq!(s.code(), Code::OutOfRange);
        let status = RpcStatus::decode(s.details()).expect("a google.rpc.Status");
        assert_eq!(status.code, Code::OutOfRange as i32);
        assert_eq!(status.details.len(), 1);
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        let info = ErrorInfo::decode(status.details[0].value.as_slice()).expect("an ErrorInfo");
        assert_eq!(info.reason, "BEYOND_HEAD");
        assert_eq!(info.domain, DOMAIN);
        assert_eq!(info.metadata["first_available"], "3");
        assert_eq!(info.metadata["head"], "9");
    }
}
