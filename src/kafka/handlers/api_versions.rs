//! ApiVersions (key 18), v0–v4: the APIs and version ranges this broker accepts.
//!
//! A client asking a version we do not know gets a v0 response with UNSUPPORTED_VERSION and
//! our ranges, so it can retry with one we do (see `unsupported`). Runs on the
//! connection's shard; touches no state.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{frame, ready, Pending, SUPPORTED};

fn versions() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|api| {
            let r = crate::kafka::codec::versions(*api);
            ApiVersion::default()
                .with_api_key(*api as i16)
                .with_min_version(r.min)
                .with_max_version(r.max)
        })
        .collect()
}

pub fn handle(_req: ApiVersionsRequest, correlation_id: i32, version: i16) -> Pending {
    let resp = ApiVersionsResponse::default().with_api_keys(versions());
    ready(frame(correlation_id, version, &resp))
}

/// The v0 answer to an ApiVersions request of a version we do not support.
pub fn unsupported(correlation_id: i32) -> Option<super::Answer> {
    let resp = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(versions());
    frame(correlation_id, 0, &resp)
}
