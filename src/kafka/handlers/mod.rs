//! One file per Kafka API. Each decodes its request, acts, and returns a `Pending`: the
//! future of its encoded response frame (or `None` when the protocol sends none, as for
//! produce with acks=0).
//!
//! `dispatch` runs on the connection's shard. It is awaited in request order, so whatever a
//! handler does before returning its `Pending` (the appends of a produce) happens in the
//! order the client sent the requests; the connection then writes the responses in that
//! same order.
//!
//! `SUPPORTED`, the API names of the metric labels and the dispatch match are generated
//! from the one list of APIs, `apis::kafka_apis`; what several handlers share (the
//! partition fan-out, the group preamble) is in `details/`.

// One module per row of `apis::kafka_apis` (which also names it in the dispatch match, so a
// row without its module does not compile; `tests::every_handler_file_has_a_row` checks
// the converse). Declared here rather than by the table's macro so that rustfmt, which
// follows only the `mod` items it can see, formats them.
pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_transactions;
pub mod describe_user_scram_credentials;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sasl_authenticate;
pub mod sasl_handshake;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

pub mod details;

use std::net::SocketAddr;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, HeaderVersion, Message, StrBytes};

use super::apis::kafka_apis;
use super::codec::{self, CodecError, Frame, Request};
use crate::broker::Shard;
use crate::metrics::Protocol;

/// What a handler knows of its connection.
pub struct Conn {
    pub shard: Rc<Shard>,
    /// The address the client connected to (advertised back in Metadata by default).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The listener the client came through: its security protocol and what Metadata
    /// advertises to it.
    pub listener: Rc<crate::config::KafkaListener>,
    /// Who the client is: `User:ANONYMOUS` until it authenticates (SASL, or a verified
    /// client certificate on an `SSL` listener). ACLs are checked against it.
    pub principal: std::cell::RefCell<crate::security::Principal>,
    /// The SASL session on a `SASL_*` listener (`kafka::sasl`): what the next token is
    /// for, and when the authentication expires.
    pub sasl: std::cell::RefCell<super::sasl::Session>,
    /// Which shard's partitions its Produce and Fetch requests go to: it moves there
    /// (`runtime::placement`, `server::move_to`).
    pub follow: crate::runtime::placement::Follow,
}

pub type Pending = LocalBoxFuture<'static, Option<Answer>>;

pub use super::codec::Answer;

/// Encodes a response frame. An encoding failure is our bug: it is logged and answered
/// with an empty frame, on which the connection closes (the client reconnects rather
/// than waiting for an answer that never comes).
pub fn frame<R: Encodable + HeaderVersion + Message + 'static>(
    correlation_id: i32,
    version: i16,
    response: &R,
) -> Option<Answer> {
    framed(
        correlation_id,
        version,
        codec::encode_response(correlation_id, version, response).map(Answer::from),
    )
}

/// `frame`, with the record sections in `sections` written as their pieces.
pub fn frame_passing<R: Encodable + HeaderVersion + Message + 'static>(
    correlation_id: i32,
    version: i16,
    response: &R,
    sections: &[codec::Section],
) -> Option<Answer> {
    framed(
        correlation_id,
        version,
        codec::encode_passing(correlation_id, version, response, sections),
    )
}

fn framed(
    correlation_id: i32,
    version: i16,
    encoded: Result<Answer, codec::CodecError>,
) -> Option<Answer> {
    match encoded {
        Ok(a) => Some(a),
        Err(e) => {
            log::error!("encoding response (correlation {correlation_id}, v{version}): {e}");
            Some(Answer::default())
        }
    }
}

/// The usual shape of a handler: `work` gets its own handle on the connection and runs as
/// the `Pending` the connection awaits, in request order, once `dispatch` has returned.
pub fn deferred<F>(conn: &Rc<Conn>, work: impl FnOnce(Rc<Conn>) -> F) -> Pending
where
    F: std::future::Future<Output = Option<Answer>> + 'static,
{
    Box::pin(work(conn.clone()))
}

pub fn ready(frame: Option<Answer>) -> Pending {
    Box::pin(async move { frame })
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub fn uuid(id: &[u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*id)
}

/// Counts a Kafka error code returned to a client (`portask_errors_total`).
pub fn count_error(code: i16) {
    if code != 0 {
        crate::metrics::with(|m| m.error(Protocol::Kafka, code as i32));
    }
}

macro_rules! served {
    ($( ($key:ident, $req:ident, $resp:ident, $min:literal ..= $max:literal, $module:ident, $call:ident), )*) => {
        /// The APIs this broker serves, in the order ApiVersions lists them.
        pub const SUPPORTED: &[ApiKey] = &[ $( ApiKey::$key, )* ];

        /// The API's name for metric labels (`Produce`, `Fetch`, …).
        fn api_name(api: ApiKey) -> &'static str {
            match api {
                $( ApiKey::$key => stringify!($key), )*
                api => unserved_api_name(api),
            }
        }

        /// Runs the handler of a decoded request, as its row's `call` says.
        async fn run(conn: &Rc<Conn>, header: &RequestHeader, request: Request, c: i32, v: i16) -> Pending {
            match request {
                $( Request::$key(r) => call!($call, $module, conn, r, header, c, v), )*
            }
        }
    };
}

/// One handler call of each `call` form of `apis::kafka_apis`.
macro_rules! call {
    (staged, $module:ident, $conn:ident, $r:ident, $header:ident, $c:ident, $v:ident) => {
        $module::handle($conn, $r, $c, $v).await
    };
    (conn, $module:ident, $conn:ident, $r:ident, $header:ident, $c:ident, $v:ident) => {
        $module::handle($conn, $r, $c, $v)
    };
    (bare, $module:ident, $conn:ident, $r:ident, $header:ident, $c:ident, $v:ident) => {
        $module::handle($r, $c, $v)
    };
    (client_id, $module:ident, $conn:ident, $r:ident, $header:ident, $c:ident, $v:ident) => {
        $module::handle($conn, $r, client_id($header), $c, $v)
    };
}

kafka_apis!(served);

/// The request header's client id ("" when null).
fn client_id(header: &RequestHeader) -> String {
    header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default()
}

thread_local! {
    static API_NAMES: std::cell::RefCell<std::collections::HashMap<i16, &'static str>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The name of an API the broker does not serve (its request is counted before it is
/// refused). Each name is made once per shard and kept for the life of the process (there
/// are fewer than 100 API keys).
fn unserved_api_name(api: ApiKey) -> &'static str {
    API_NAMES.with(|names| {
        *names
            .borrow_mut()
            .entry(api as i16)
            .or_insert_with(|| Box::leak(format!("{api:?}").into_boxed_str()))
    })
}

/// Decodes the request body for `frame.api` (`codec::decode_request`, the pure decoder the
/// fuzz tests drive) and runs its handler; also gives what the decoded request holds beyond
/// its frame (`codec::held_beyond_frame`), for the connection's in-flight budgets.
pub async fn dispatch(conn: &Rc<Conn>, frame: Frame) -> Result<(Pending, usize), CodecError> {
    let c = frame.header.correlation_id;
    let v = frame.version;
    crate::metrics::with(|m| m.request(Protocol::Kafka, api_name(frame.api)));
    let body_len = frame.body.len();
    let request = codec::decode_request(frame.api, frame.body, v)?;
    let held = codec::held_beyond_frame(&request, body_len, v);
    Ok((run(conn, &frame.header, request, c, v).await, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every handler file is the module of a row of `apis::kafka_apis` (a row without its
    /// module does not compile).
    #[test]
    fn every_handler_file_has_a_row() {
        macro_rules! modules {
            ($( ($key:ident, $req:ident, $resp:ident, $min:literal ..= $max:literal, $module:ident, $call:ident), )*) => {
                [$( stringify!($module), )*]
            };
        }
        let rows = kafka_apis!(modules);
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/kafka/handlers");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("handlers directory")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let module = name.strip_suffix(".rs")?;
                (module != "mod").then(|| module.to_owned())
            })
            .collect();
        files.sort();
        let mut rows: Vec<String> = rows.iter().map(|m| m.to_string()).collect();
        rows.sort();
        assert_eq!(files, rows);
        assert_eq!(SUPPORTED.len(), rows.len());
    }
}
