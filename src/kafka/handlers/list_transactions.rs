//! ListTransactions (key 66), v0–v2 (KIP-664, KIP-994): the transactional ids of every
//! coordinator shard with their producer id and state, filtered by state names (unknown
//! names are echoed in `unknown_state_filters`), producer ids, v1+ a minimum duration
//! (only transactions running at least that long, ms; -1: no filter) and v2+ a regular
//! expression the whole id must match (INVALID_REGULAR_EXPRESSION when it does not
//! compile). Only ids the client may DESCRIBE are listed, as Kafka.
//!
//! Runs on the connection's shard and asks every shard's coordinator (`Shard::txn_on`).

use std::rc::Rc;

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::ResponseError;

use super::{count_error, deferred, frame, str_bytes, Conn, Pending};
use crate::kafka::txn::state::{TxnMeta, TxnState};
use crate::kafka::txn::{Reply, Request};
use crate::security::acl::{Operation, ResourceType};

pub fn handle(
    conn: &Rc<Conn>,
    req: ListTransactionsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, move |conn| async move {
        let mut unknown = Vec::new();
        let mut states = Vec::new();
        for f in &req.state_filters {
            match TxnState::from_name(f) {
                Some(s) => states.push(s),
                None => unknown.push(f.clone()),
            }
        }
        let pattern = match req
            .transactional_id_pattern
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            None => None,
            Some(p) => match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(r) => Some(r),
                Err(_) => {
                    let code = ResponseError::InvalidRegularExpression.code();
                    count_error(code);
                    return frame(
                        correlation_id,
                        version,
                        &ListTransactionsResponse::default().with_error_code(code),
                    );
                }
            },
        };
        let now = crate::storage::log::now_ms();
        let wanted = |m: &TxnMeta| {
            (states.is_empty() || states.contains(&m.state))
                && (req.producer_id_filters.is_empty()
                    || req.producer_id_filters.contains(&ProducerId(m.producer_id)))
                && (req.duration_filter < 0
                    || (m.start_ms >= 0 && now - m.start_ms >= req.duration_filter))
                && pattern.as_ref().is_none_or(|r| r.is_match(&m.id))
                && conn.may(Operation::Describe, ResourceType::TransactionalId, &m.id)
        };
        let mut listed = Vec::new();
        let mut error = 0;
        for owner in 0..conn.shard.count {
            match conn.shard.txn_on(owner, Request::List).await {
                Reply::Listed(all) => {
                    listed.extend(all.into_iter().filter(|m| wanted(m)).map(|m| {
                        TransactionState::default()
                            .with_transactional_id(TransactionalId(str_bytes(m.id)))
                            .with_producer_id(ProducerId(m.producer_id))
                            .with_transaction_state(str_bytes(m.state.name()))
                    }))
                }
                _ => error = ResponseError::CoordinatorNotAvailable.code(),
            }
        }
        count_error(error);
        frame(
            correlation_id,
            version,
            &ListTransactionsResponse::default()
                .with_error_code(error)
                .with_unknown_state_filters(unknown)
                .with_transaction_states(listed),
        )
    })
}
