//! Kafka's ACLs on stream queues: a stream queue is a Kafka topic, so with `acl.enabled`
//! an AMQP user reading or writing one must also be allowed to by the topic's ACLs, as
//! the principal `User:<AMQP user name>` from the connection's address — the same
//! principal a Kafka client authenticated (SASL) with that user name is, and the one the
//! HTTP API's topic routes use (`http::acl`). Consuming needs READ on the topic,
//! publishing a message that reaches a stream WRITE; a refusal is AMQP's 403
//! ACCESS_REFUSED (a channel error), counted and logged as a Kafka one
//! (`security::audit::acl_denied`, protocol `amqp`). AMQP's own permissions (configure,
//! write, read in the vhost) are checked first, unchanged. With `acl.enabled = false`
//! (the default) nothing more is checked.
//!
//! Runs on the AMQP connection's shard, from its catalog replica.

use std::net::IpAddr;

use crate::amqp::routing::QueueRef;
use crate::amqp::{reply, AmqpError};
use crate::broker::Shard;
use crate::metrics::Protocol;
use crate::security::acl::{host_of, Operation, Requester, ResourceType};
use crate::security::Principal;

/// `op` on topic `topic` for AMQP user `user` from `peer`, or the 403 channel error.
pub fn check(
    shard: &Shard,
    user: &str,
    peer: IpAddr,
    op: Operation,
    topic: &str,
) -> Result<(), AmqpError> {
    if !shard.acl.enabled() {
        return Ok(());
    }
    let state = shard.catalog.current();
    let principal = Principal::user(user.to_owned());
    let host = host_of(peer);
    let who = Requester {
        principal: &principal,
        host: &host,
    };
    if shard
        .acl
        .authorize(&state.security.acls, &who, op, ResourceType::Topic, topic)
    {
        return Ok(());
    }
    crate::security::audit::acl_denied(Protocol::Amqp, op.name(), "topic", || {
        format!(
            "AMQP: user '{user}' from {host} denied {} on stream queue '{topic}' by the Kafka ACLs of its topic",
            op.name()
        )
    });
    Err(AmqpError::channel(
        reply::ACCESS_REFUSED,
        format!(
            "ACCESS_REFUSED - access to stream queue '{topic}' in vhost '/' refused for user '{user}' by the Kafka ACLs of topic '{topic}' ({})",
            op.name()
        ),
    ))
}

/// WRITE on the topic of every stream queue among `targets` (a publish's queues).
pub fn check_targets(
    shard: &Shard,
    user: &str,
    peer: IpAddr,
    targets: &[QueueRef],
) -> Result<(), AmqpError> {
    if !shard.acl.enabled() {
        return Ok(());
    }
    for q in targets {
        if super::queue::is_stream(shard, q) {
            check(
                shard,
                user,
                peer,
                Operation::Write,
                &super::queue::topic_of(shard, q).0,
            )?;
        }
    }
    Ok(())
}
