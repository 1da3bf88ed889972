//! The tx class: `tx.select` → `select-ok`, `tx.commit` → `commit-ok`, `tx.rollback` →
//! `rollback-ok`.
//!
//! In a transaction, publishes and acks/nacks/rejects are buffered on the channel. Commit
//! routes the publishes, sends them and the settles to the owner shards, and answers once
//! every queue has taken every message (persistent ones fdatasync'ed) — the same tracking
//! confirm mode uses, without sending confirms. Rollback drops the buffer; the messages
//! it acked are unacked again.

use std::rc::Rc;
use std::time::Duration;

use amq_protocol::protocol::{tx as txm, AMQPClass};

use super::basic_publish::deliver;
use crate::amqp::channel::{self, ChannelRef, Tx};
use crate::amqp::connection::Connection;
use crate::amqp::{reply, AmqpError};
use crate::util::notify::Listener;

pub fn select(conn: &Rc<Connection>, ch: &ChannelRef) -> Result<(), AmqpError> {
    let id = {
        let mut c = ch.borrow_mut();
        if c.confirm {
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            ));
        }
        if c.tx.is_none() {
            c.tx = Some(Tx::default());
        }
        c.id
    };
    conn.send_method(
        id,
        AMQPClass::Tx(txm::AMQPMethod::SelectOk(txm::SelectOk {})),
    );
    Ok(())
}

fn not_tx() -> AmqpError {
    AmqpError::channel(
        reply::PRECONDITION_FAILED,
        "PRECONDITION_FAILED - channel is not transactional",
    )
}

pub async fn commit(conn: &Rc<Connection>, ch: &ChannelRef) -> Result<(), AmqpError> {
    let work = {
        let mut c = ch.borrow_mut();
        let Some(tx) = c.tx.as_mut() else {
            return Err(not_tx());
        };
        std::mem::take(tx)
    };
    let mut last = None;
    for p in work.publishes {
        let seq = deliver(
            conn,
            ch,
            &p.exchange,
            &p.routing_key,
            p.msg,
            p.mandatory,
            None,
        )
        .await?;
        if seq.is_some() {
            last = seq;
        }
    }
    for (queue, ids, how) in work.settles {
        channel::settle(conn, vec![(queue, ids)], how);
    }
    ch.borrow_mut().compact();
    if let Some(seq) = last {
        loop {
            let progress = ch.borrow().confirm_progress.clone();
            let l = Listener::new();
            l.listen(&progress);
            if ch.borrow().settled_through(seq) {
                break;
            }
            if conn.shard.stopping.get() {
                return Err(AmqpError::connection(
                    reply::INTERNAL_ERROR,
                    "INTERNAL_ERROR - broker stopping",
                ));
            }
            let _ = glommio::timer::timeout(Duration::from_millis(200), async {
                l.await;
                Ok(())
            })
            .await;
        }
        ch.borrow_mut().forget_confirms_through(seq);
    }
    let id = ch.borrow().id;
    conn.send_method(
        id,
        AMQPClass::Tx(txm::AMQPMethod::CommitOk(txm::CommitOk {})),
    );
    Ok(())
}

pub fn rollback(conn: &Rc<Connection>, ch: &ChannelRef) -> Result<(), AmqpError> {
    let id = {
        let mut c = ch.borrow_mut();
        let Some(tx) = c.tx.as_mut() else {
            return Err(not_tx());
        };
        let undone = std::mem::take(tx);
        // The messages acked in the transaction are unacked again.
        c.unsettle(&undone.tags);
        c.id
    };
    conn.send_method(
        id,
        AMQPClass::Tx(txm::AMQPMethod::RollbackOk(txm::RollbackOk {})),
    );
    Ok(())
}
