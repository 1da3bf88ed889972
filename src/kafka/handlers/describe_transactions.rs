//! DescribeTransactions (key 65), v0 (KIP-664): the state, producer id and epoch, timeout,
//! start time and partitions of each transactional id asked for. ACLs: DESCRIBE on the id
//! (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED for it); partitions of topics the client
//! may not DESCRIBE are left out. An id no coordinator knows: TRANSACTIONAL_ID_NOT_FOUND.
//!
//! Runs on the connection's shard; one `Shard::txn_on` per coordinator shard asked.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::ResponseError;

use super::details::authorize::transactional_id_denied;
use super::{count_error, deferred, frame, str_bytes, topic_name, Conn, Pending};
use crate::kafka::txn::state::TxnMeta;
use crate::kafka::txn::{txn_owner, Reply, Request};
use crate::security::acl::{Operation, ResourceType};

fn described(conn: &Conn, m: &TxnMeta) -> TransactionState {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in &m.partitions {
        topics.entry(t).or_default().push(*p);
    }
    let topics = topics
        .into_iter()
        .filter(|(t, _)| conn.may(Operation::Describe, ResourceType::Topic, t))
        .map(|(t, ps)| {
            TopicData::default()
                .with_topic(topic_name(t))
                .with_partitions(ps)
        })
        .collect();
    TransactionState::default()
        .with_transactional_id(TransactionalId(str_bytes(m.id.clone())))
        .with_transaction_state(str_bytes(m.state.name()))
        .with_transaction_timeout_ms(m.timeout_ms)
        .with_transaction_start_time_ms(m.start_ms)
        .with_producer_id(ProducerId(m.producer_id))
        .with_producer_epoch(m.producer_epoch)
        .with_topics(topics)
}

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeTransactionsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, move |conn| async move {
        let ids: Vec<String> = req
            .transactional_ids
            .iter()
            .map(|t| t.to_string())
            .collect();
        let mut answers: Vec<Option<TransactionState>> = vec![None; ids.len()];
        let mut by_owner: BTreeMap<usize, Vec<(usize, String)>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            if conn.authorize(Operation::Describe, ResourceType::TransactionalId, id) {
                by_owner
                    .entry(txn_owner(id, conn.shard.count))
                    .or_default()
                    .push((i, id.clone()));
            } else {
                answers[i] = Some(
                    TransactionState::default()
                        .with_transactional_id(TransactionalId(str_bytes(id.clone())))
                        .with_error_code(transactional_id_denied()),
                );
            }
        }
        for (owner, asked) in by_owner {
            let reply = conn
                .shard
                .txn_on(
                    owner,
                    Request::Describe(asked.iter().map(|(_, id)| id.clone()).collect()),
                )
                .await;
            let found = match reply {
                Reply::Described(found) => found,
                _ => Vec::new(),
            };
            for (k, (i, id)) in asked.into_iter().enumerate() {
                answers[i] = Some(match found.get(k) {
                    Some((_, Some(m))) => described(&conn, m),
                    Some((_, None)) => TransactionState::default()
                        .with_transactional_id(TransactionalId(str_bytes(id)))
                        .with_error_code(ResponseError::TransactionalIdNotFound.code()),
                    None => TransactionState::default()
                        .with_transactional_id(TransactionalId(str_bytes(id)))
                        .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
                });
            }
        }
        let states: Vec<TransactionState> = answers.into_iter().flatten().collect();
        for s in &states {
            count_error(s.error_code);
        }
        frame(
            correlation_id,
            version,
            &DescribeTransactionsResponse::default().with_transaction_states(states),
        )
    })
}
