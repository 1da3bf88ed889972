//! SaslHandshake (key 17), v0–v1: the client names the SASL mechanism it will use; the
//! answer lists the mechanisms the listener offers (`kafka.sasl_enabled_mechanisms`).
//! After v0 the tokens follow as bare length-prefixed frames (`server`); after v1, as
//! SaslAuthenticate requests.
//!
//! Errors: UNSUPPORTED_SASL_MECHANISM with the enabled list (the connection then closes,
//! as Kafka's does); ILLEGAL_SASL_STATE mid-exchange, and on a listener without SASL, which
//! answers rather than closing (Kafka's `KafkaApis` does the same).
//!
//! Runs on the connection's shard; changes only the connection's SASL session, before the
//! next request is read.

use std::rc::Rc;

use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::ResponseError;

use super::{count_error, frame, ready, str_bytes, Conn, Pending};

pub fn handle(
    conn: &Rc<Conn>,
    req: SaslHandshakeRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let resp = if !conn.listener.protocol().sasl() {
        SaslHandshakeResponse::default().with_error_code(ResponseError::IllegalSaslState.code())
    } else {
        let enabled = &conn.shard.config.kafka.sasl_enabled_mechanisms;
        let resp = SaslHandshakeResponse::default()
            .with_mechanisms(enabled.iter().map(|m| str_bytes(m.as_str())).collect());
        let chosen = conn
            .sasl
            .borrow_mut()
            .handshake(&req.mechanism, version, enabled);
        match chosen {
            Ok(()) => resp,
            Err(f) => {
                log::info!(
                    "kafka SaslHandshake from {} refused: {}",
                    conn.peer,
                    f.message
                );
                resp.with_error_code(f.code)
            }
        }
    };
    count_error(resp.error_code);
    ready(frame(correlation_id, version, &resp))
}
