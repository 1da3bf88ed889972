//! The handshake of a connection: the protocol header (answered with connection.start,
//! offering PLAIN and AMQPLAIN, and EXTERNAL on TLS with a verified client certificate), start-ok (authentication, the client's capabilities),
//! tune/tune-ok (channel_max, frame_max, heartbeat) and open (vhost and permissions). A
//! client has `HANDSHAKE_TIMEOUT` for all of it (the reader's deadline).
//!
//! Runs on the connection's shard, in its reader task.

use std::rc::Rc;

use crate::runtime::transport::pool::Reader;
use crate::runtime::transport::ReadHalf;
use amq_protocol::protocol::{connection as conn_m, AMQPClass};
use bytes::BytesMut;

use super::{channels, io, Connection, Phase, HANDSHAKE_TIMEOUT};
use crate::amqp::auth::{self, Permissions};
use crate::amqp::codec::{self, Frame};
use crate::amqp::{reply, AmqpError};

/// Reads the protocol header and answers with connection.start; false when the
/// connection ends instead (EOF, timeout, stop, or another protocol's header, which is
/// answered with ours as the specification asks).
pub(super) async fn greet(
    conn: &Rc<Connection>,
    stream: &mut Reader<ReadHalf>,
    buf: &mut BytesMut,
) -> std::io::Result<bool> {
    // Protocol header.
    while buf.len() < 8 {
        if !io::fill(conn, stream, buf, Some(HANDSHAKE_TIMEOUT), true).await? {
            return Ok(false);
        }
    }
    if buf[..8] != codec::PROTOCOL_HEADER {
        log::info!(
            "amqp connection from {}: unsupported protocol header {:?}",
            conn.peer,
            &buf[..8]
        );
        conn.write(|out| out.extend_from_slice(&codec::PROTOCOL_HEADER));
        return Ok(false);
    }
    let _ = buf.split_to(8);
    conn.send_method(
        0,
        AMQPClass::Connection(conn_m::AMQPMethod::Start(conn_m::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: auth::server_properties(),
            mechanisms: mechanisms(conn).into(),
            locales: "en_US".into(),
        })),
    );
    Ok(true)
}

/// The mechanisms connection.start offers: PLAIN and AMQPLAIN, and EXTERNAL on a TLS
/// connection whose client certificate the CA verified (when `amqp.auth_mechanisms` lists
/// it).
fn mechanisms(conn: &Connection) -> String {
    let mut offered = String::from("PLAIN AMQPLAIN");
    if offers_external(conn) {
        offered.push_str(" EXTERNAL");
    }
    offered
}

fn offers_external(conn: &Connection) -> bool {
    conn.tls
        && conn.peer_subject.is_some()
        && conn
            .shard
            .config
            .amqp
            .auth_mechanisms
            .iter()
            .any(|m| m == "EXTERNAL")
}

/// EXTERNAL, as RabbitMQ's `rabbitmq_auth_mechanism_ssl`: the user is named by the
/// verified client certificate (its RFC 4514 subject, or its CN with
/// `amqp.ssl_cert_login_from = "common_name"`); the response is not read and no password
/// is checked, but the user must exist (and a loopback-only user must come from
/// loopback). Otherwise ACCESS_REFUSED, counted as an authentication failure.
fn external_login(conn: &Connection) -> Result<String, AmqpError> {
    let cfg = &conn.shard.config.amqp;
    let subject = conn.peer_subject.as_ref();
    let name = match cfg.ssl_cert_login_from.as_str() {
        "common_name" => subject.and_then(|s| s.cn.clone()),
        _ => subject.map(|s| s.dn.clone()),
    };
    let refuse = |why: String| {
        crate::security::audit::auth_failure(crate::metrics::Protocol::Amqp, "EXTERNAL", || {
            format!("amqp login from {} refused: {why}", conn.peer)
        });
        AmqpError::connection(
            reply::ACCESS_REFUSED,
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. \
             For details see the broker logfile.",
        )
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(refuse(format!(
            "the client certificate has no {}",
            cfg.ssl_cert_login_from
        )));
    };
    if !conn.shard.users().exists(&name) {
        return Err(refuse(format!(
            "EXTERNAL: no user '{name}' (named by the client certificate)"
        )));
    }
    if cfg.loopback_users.contains(&name) && !conn.peer.ip().is_loopback() {
        return Err(AmqpError::connection(
            reply::ACCESS_REFUSED,
            format!("ACCESS_REFUSED - user '{name}' can only connect via localhost"),
        ));
    }
    Ok(name)
}

fn send_tune(conn: &Connection) {
    let cfg = &conn.shard.config.amqp;
    conn.send_method(
        0,
        AMQPClass::Connection(conn_m::AMQPMethod::Tune(conn_m::Tune {
            channel_max: cfg.channel_max,
            frame_max: cfg.frame_max,
            heartbeat: cfg.heartbeat_secs,
        })),
    );
}

fn expect_method(conn: &Connection, frame: &Frame) -> Result<AMQPClass, AmqpError> {
    if frame.kind != codec::FRAME_METHOD || frame.channel != 0 {
        return Err(AmqpError::connection(
            reply::UNEXPECTED_FRAME,
            "UNEXPECTED_FRAME - expected a method frame on channel 0 during the handshake",
        ));
    }
    conn.method_received(&frame.payload);
    codec::decode_method(&frame.payload).ok_or_else(|| {
        AmqpError::connection(reply::SYNTAX_ERROR, "SYNTAX_ERROR - malformed method frame")
    })
}

/// A method of the handshake, in `phase` (start-ok, tune-ok or open; a close at any
/// point). Ok(false) ends the connection.
pub(super) fn method(
    conn: &Rc<Connection>,
    phase: &mut Phase,
    frame: Frame,
) -> Result<bool, AmqpError> {
    let method = expect_method(conn, &frame)?;
    let cfg = &conn.shard.config.amqp;
    match (*phase, method) {
        (_, AMQPClass::Connection(conn_m::AMQPMethod::Close(_))) => {
            conn.send_close_ok();
            *phase = Phase::Closed;
            Ok(true)
        }
        (Phase::StartOk, AMQPClass::Connection(conn_m::AMQPMethod::StartOk(ok))) => {
            let mech = ok.mechanism.as_str().to_owned();
            if let Some(amq_protocol::types::AMQPValue::FieldTable(caps)) =
                ok.client_properties.inner().get("capabilities")
            {
                conn.blocked_capable.set(matches!(
                    caps.inner().get("connection.blocked"),
                    Some(amq_protocol::types::AMQPValue::Boolean(true))
                ));
            }
            if mech == "EXTERNAL" && offers_external(conn) {
                let user = external_login(conn)?;
                let _ = conn.user.set(user);
                send_tune(conn);
                *phase = Phase::TuneOk;
                return Ok(true);
            }
            if mech != "PLAIN" && mech != "AMQPLAIN" {
                return Err(AmqpError::connection(
                    reply::ACCESS_REFUSED,
                    format!("ACCESS_REFUSED - unsupported authentication mechanism '{mech}'"),
                ));
            }
            match auth::authenticate(
                &conn.shard.users(),
                cfg,
                &mech,
                ok.response.as_bytes(),
                conn.peer,
            ) {
                Ok(user) => {
                    let _ = conn.user.set(user);
                }
                Err(e) => {
                    let mechanism = if mech == "PLAIN" { "PLAIN" } else { "AMQPLAIN" };
                    crate::security::audit::auth_failure(
                        crate::metrics::Protocol::Amqp,
                        mechanism,
                        || format!("amqp login from {} refused: {e}", conn.peer),
                    );
                    // authentication_failure_close: a connection.close with 403.
                    return Err(AmqpError::connection(reply::ACCESS_REFUSED, e.to_string()));
                }
            }
            send_tune(conn);
            *phase = Phase::TuneOk;
            Ok(true)
        }
        (Phase::TuneOk, AMQPClass::Connection(conn_m::AMQPMethod::TuneOk(t))) => {
            let channel_max = match (t.channel_max, cfg.channel_max) {
                (0, s) => s,
                (c, s) => c.min(s),
            };
            let frame_max = match t.frame_max {
                0 => cfg.frame_max,
                f => f.min(cfg.frame_max),
            };
            if frame_max < 4096 {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - frame_max={frame_max} < 4096 min size"),
                ));
            }
            conn.channel_max.set(channel_max);
            conn.frame_max.set(frame_max);
            conn.heartbeat.set(t.heartbeat);
            io::start_heartbeats(conn);
            *phase = Phase::Open;
            Ok(true)
        }
        (Phase::Open, AMQPClass::Connection(conn_m::AMQPMethod::Open(o))) => {
            let mut vhost = o.virtual_host.as_str().to_owned();
            // `amqp://host:5672/` names the empty vhost in some clients (lapin): that is
            // the default one.
            if vhost.is_empty() {
                vhost = "/".into();
            }
            if !cfg.vhosts.contains(&vhost) {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - vhost {vhost} not found"),
                ));
            }
            let user = conn.user();
            let Some(perms) = Permissions::shared(cfg, user, &vhost) else {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'"),
                ));
            };
            let _ = conn.perms.set(perms);
            let _ = conn.vhost.set(vhost);
            conn.send_method(
                0,
                AMQPClass::Connection(conn_m::AMQPMethod::OpenOk(conn_m::OpenOk {})),
            );
            *phase = Phase::Running;
            channels::start_consumer_timeouts(conn);
            Ok(true)
        }
        _ => Err(AmqpError::connection(
            reply::COMMAND_INVALID,
            "COMMAND_INVALID - unexpected method during the handshake",
        )),
    }
}
