//! `basic.consume(queue, consumer-tag, no-local, no-ack, exclusive, nowait, arguments)` →
//! `consume-ok(consumer-tag)`, and `basic.cancel(consumer-tag, nowait)` → `cancel-ok`.
//!
//! The consumer is registered on the queue's owner shard, which then delivers to it
//! round-robin by `x-priority`, honouring the channel's prefetch. An empty tag gets a
//! server tag `amq.ctag-s<shard>-…`; reusing a tag on the channel is 530 NOT_ALLOWED; an exclusive
//! consumer on a queue with consumers (or any consumer on a queue with an exclusive one)
//! is 403. Deliveries that arrive before consume-ok is written wait in the channel.

use std::rc::Rc;
use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};

use super::{allowed, lookup_queue, random_suffix, Access};
use crate::amqp::channel::ChannelRef;
use crate::amqp::connection::Connection;
use crate::amqp::direct_reply;
use crate::amqp::mesh::{ConsumerSpec, QueueOp};
use crate::amqp::{outbox, reply, AmqpError};
use crate::catalog::amqp::tables::int_value;

pub async fn consume(
    conn: &Rc<Connection>,
    ch: &ChannelRef,
    c: basic::Consume,
) -> Result<(), AmqpError> {
    let queue_name = c.queue.as_str().to_owned();
    let actor = conn.actor();
    let direct = queue_name == direct_reply::PSEUDO_QUEUE;
    let qref = if direct {
        None
    } else {
        allowed(&actor, Access::Read, "queue", &queue_name)?;
        Some(lookup_queue(&actor, &queue_name).await?)
    };
    // A stream consumer (RabbitMQ's rules): a prefetch and manual acks, and where to
    // start, the Kafka group its acks commit and the filter values it wants;
    // `x-stream-offset`, `x-consumer-group` and `x-stream-filter` on any other queue are
    // ignored.
    let (stream_offset, stream_group, stream_filter) = match &qref {
        Some((q, def)) if def.is_stream() => {
            let refuse = |what: &str| {
                AmqpError::channel(
                    reply::PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - {what} for stream queue '{}' in vhost '{}'",
                        q.name, q.vhost
                    ),
                )
            };
            if c.no_ack {
                return Err(refuse(
                    "consumer no-ack (automatic acknowledgement) is not supported",
                ));
            }
            let prefetch = {
                let chm = ch.borrow();
                (chm.prefetch_count, chm.global_prefetch_count())
            };
            if prefetch == (0, 0) {
                return Err(refuse("consumer prefetch count is not set"));
            }
            // The queue is a Kafka topic: its READ ACL holds for AMQP readers too.
            crate::stream::acl::check(
                &conn.shard,
                conn.user(),
                conn.peer.ip(),
                crate::security::acl::Operation::Read,
                &crate::stream::queue::topic_of(&conn.shard, q).0,
            )?;
            let at = crate::stream::offset::parse(
                c.arguments.inner().get("x-stream-offset"),
                crate::util::now_ms(),
            )
            .map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
            let group = crate::stream::group::parse(
                c.arguments.inner().get("x-consumer-group"),
                c.arguments.inner().contains_key("x-stream-offset"),
            )
            .map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
            let filter = crate::stream::filter::parse(&c.arguments)
                .map_err(|text| AmqpError::channel(reply::PRECONDITION_FAILED, text))?;
            (Some(at), group, filter)
        }
        _ => (None, None, None),
    };
    let qref = qref.map(|(q, _)| q);
    let mut tag = c.consumer_tag.as_str().to_owned();
    if tag.is_empty() {
        // The shard is in the tag so an operator (and the tests) can see where a
        // consumer's connection lives.
        tag = format!("amq.ctag-s{}-{}", conn.shard.id, random_suffix(&queue_name));
    }
    if ch.borrow().has_tag(&tag) {
        return Err(AmqpError::connection(
            reply::NOT_ALLOWED,
            format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
        ));
    }
    let Some(qref) = qref else {
        direct_reply::consume(conn, ch, &tag, c.no_ack)?;
        if !c.nowait {
            let channel = ch.borrow().id;
            conn.send_method(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_str().into(),
                })),
            );
        }
        return Ok(());
    };
    let priority = match c.arguments.inner().get("x-priority") {
        Some(v) => int_value(v).ok_or_else(|| {
            AmqpError::channel(
                reply::PRECONDITION_FAILED,
                "PRECONDITION_FAILED - x-priority must be an integer",
            )
        })? as i32,
        None => 0,
    };
    let cid = conn.shard.amqp.next_id();
    let tag: Arc<str> = Arc::from(tag.as_str());
    let (channel, limits, active) = {
        let mut chm = ch.borrow_mut();
        chm.add_consumer(cid, tag.clone(), qref.clone(), c.no_ack);
        let limits = chm.initial_limits(cid);
        (chm.id, limits, chm.flow)
    };
    let spec = ConsumerSpec {
        cid,
        shard: conn.shard.id,
        conn: conn.id,
        channel,
        tag: tag.clone(),
        no_ack: c.no_ack,
        prefetch_count: limits.0,
        prefetch_bytes: limits.1,
        priority,
        exclusive: c.exclusive,
        stream_offset,
        stream_group,
        stream_filter,
    };
    let (reply, answer) = conn.shard.expect();
    let owner = qref.owner;
    outbox::push(
        &conn.shard,
        owner,
        QueueOp::Consume {
            queue: qref.clone(),
            consumer: spec,
            reply,
        },
    );
    if !active {
        outbox::push(
            &conn.shard,
            owner,
            QueueOp::Limits {
                queue: qref.clone(),
                cid,
                prefetch_count: limits.0,
                prefetch_bytes: limits.1,
                active,
            },
        );
    }
    let refused = match answer.await {
        Some(Ok(())) => None,
        Some(Err((code, text))) => Some(AmqpError::from_code(code, text)),
        None => Some(AmqpError::connection(
            reply::INTERNAL_ERROR,
            "INTERNAL_ERROR - queue owner unreachable",
        )),
    };
    if let Some(e) = refused {
        ch.borrow_mut().remove_consumer(conn, cid);
        return Err(e);
    }
    if !c.nowait {
        conn.send_method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.as_ref().into(),
            })),
        );
    }
    ch.borrow_mut().consumer_ready(conn, cid);
    Ok(())
}

pub fn cancel(conn: &Rc<Connection>, ch: &ChannelRef, c: basic::Cancel) -> Result<(), AmqpError> {
    let tag = c.consumer_tag.as_str().to_owned();
    let id = {
        let mut chm = ch.borrow_mut();
        if chm.direct_reply.as_ref().map(|(t, _)| **t == *tag) == Some(true) {
            chm.direct_reply = None;
        }
        if let Some(cid) = chm.cid_of(&tag) {
            if let Some(queue) = chm.remove_consumer(conn, cid) {
                let owner = queue.owner;
                outbox::push(&conn.shard, owner, QueueOp::Cancel { queue, cid });
            }
            chm.release_held(conn);
        }
        chm.id
    };
    if !c.nowait {
        conn.send_method(
            id,
            AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                consumer_tag: tag.as_str().into(),
            })),
        );
    }
    Ok(())
}
