//! SaslAuthenticate (key 36), v0–v2: one token of the SASL exchange SaslHandshake chose
//! (PLAIN in one step, SCRAM in two). v1+ answers carry the session lifetime
//! (`kafka.connections_max_reauth_ms`, KIP-368) once authenticated; re-authenticating on
//! the same connection must name the same user.
//!
//! Errors: SASL_AUTHENTICATION_FAILED with Kafka's message ("Authentication failed:
//! Invalid username or password", "… Invalid user credentials"), counted and logged
//! (`security::audit`), after which the connection closes; ILLEGAL_SASL_STATE without a
//! handshake, or on a listener without SASL (answered, not closed).
//!
//! `raw_token` is the same step for a bare token after a v0 handshake (`server` reads it).
//! Runs on the connection's shard; changes the connection's session and principal before
//! the next request is read.

use std::rc::Rc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::ResponseError;

use super::{count_error, frame, ready, str_bytes, Conn, Pending};
use crate::kafka::sasl::{Failure, Step};
use crate::metrics::Protocol;
use crate::security::{audit, scram, Principal};

/// Runs one token through the connection's session; on success the connection's principal
/// becomes the user.
fn step(conn: &Conn, token: &[u8]) -> Result<Step, Failure> {
    let users = conn.shard.users();
    let reauth_ms = conn.shard.config.kafka.connections_max_reauth_ms;
    let result = conn.sasl.borrow_mut().authenticate(
        token,
        &users,
        Instant::now(),
        reauth_ms,
        scram::server_nonce,
    );
    match &result {
        Ok(Step::Done { user, .. }) => *conn.principal.borrow_mut() = Principal::user(user),
        Ok(Step::Continue(_)) => {}
        Err(f) => {
            let peer = conn.peer;
            audit::auth_failure(Protocol::Kafka, f.mechanism, || {
                format!(
                    "kafka SASL {} authentication from {peer} failed: {}",
                    f.mechanism, f.message
                )
            });
        }
    }
    result
}

pub fn handle(
    conn: &Rc<Conn>,
    req: SaslAuthenticateRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let resp = SaslAuthenticateResponse::default();
    let resp = if !conn.listener.protocol().sasl() {
        resp.with_error_code(ResponseError::IllegalSaslState.code())
            .with_error_message(Some(str_bytes(format!(
                "SaslAuthenticate on listener '{}', which does not use SASL",
                conn.listener.name
            ))))
    } else {
        match step(conn, &req.auth_bytes) {
            Ok(Step::Continue(reply)) => resp.with_auth_bytes(Bytes::from(reply)),
            Ok(Step::Done {
                reply, lifetime_ms, ..
            }) => resp
                .with_auth_bytes(Bytes::from(reply))
                .with_session_lifetime_ms(if version >= 1 { lifetime_ms } else { 0 }),
            Err(f) => resp
                .with_error_code(f.code)
                .with_error_message(Some(str_bytes(f.message))),
        }
    };
    count_error(resp.error_code);
    ready(frame(correlation_id, version, &resp))
}

/// A bare token after a v0 SaslHandshake: the answer as a bare length-prefixed frame, or
/// `None` when the exchange failed (the session is then closing; a v0 client learns of a
/// failure only by the connection closing, as with Kafka).
pub fn raw_token(conn: &Conn, token: &[u8]) -> Option<Bytes> {
    let reply = match step(conn, token).ok()? {
        Step::Continue(reply) | Step::Done { reply, .. } => reply,
    };
    let mut out = BytesMut::with_capacity(4 + reply.len());
    out.put_u32(reply.len() as u32);
    out.put_slice(&reply);
    Some(out.freeze())
}
