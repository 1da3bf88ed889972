//! `CatalogWriter`: the catalog's single writer, on shard 0.
//!
//! Changes arrive from any shard (over the mesh, or directly on shard 0), are checked
//! against the current state one request at a time, persisted with one fsync per request,
//! installed on shard 0 and broadcast to every other shard. The requester installs the
//! returned state before answering its client (read-your-writes).
//!
//! A change that changes nothing (re-declaring an identical exchange, queue or binding,
//! unbinding or deleting what is not there) is answered at once and writes nothing: clients
//! re-declare their topology on every connect, and must not need disk space or an fsync
//! for it. Changes that free space (deletes, unbinds) may use the store's reserve on a full
//! disk (`CatalogStore::append`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;

use super::store::CatalogStore;
use super::{
    is_internal_topic, validate_config, validate_topic_name, CatalogError, CatalogState, Change,
};
use crate::config::Config;

/// The answer of shard 0's catalog writer: one result per change, and the state after.
pub struct CatalogReply {
    pub results: Vec<Result<(), CatalogError>>,
    pub state: Arc<CatalogState>,
}

pub struct CatalogWriter {
    store: RefCell<Option<CatalogStore>>,
    one_at_a_time: Semaphore,
}

/// Checks one change against `state`.
pub fn check(config: &Config, state: &CatalogState, change: &Change) -> Result<(), CatalogError> {
    let configs_ok = |configs: &std::collections::BTreeMap<String, String>| {
        configs.iter().try_for_each(|(k, v)| validate_config(k, v))
    };
    match change {
        Change::CreateTopic(t) => {
            validate_topic_name(&t.name)?;
            if state.topics.contains_key(&t.name) {
                return Err(CatalogError::TopicExists(t.name.clone()));
            }
            if t.partitions < 1 || t.partitions > 100_000 {
                return Err(CatalogError::InvalidPartitions(t.partitions));
            }
            configs_ok(&t.configs)
        }
        Change::DeleteTopic(name) if is_internal_topic(name) => Err(CatalogError::InvalidTopic(
            name.clone(),
            "an internal topic cannot be deleted",
        )),
        Change::SetPartitions(name, _) if is_internal_topic(name) => Err(
            CatalogError::InvalidTopic(name.clone(), "an internal topic cannot be repartitioned"),
        ),
        Change::DeleteTopic(name) => {
            if !config.kafka.delete_topic_enable {
                return Err(CatalogError::DeleteDisabled);
            }
            if !state.topics.contains_key(name) {
                return Err(CatalogError::UnknownTopic(name.clone()));
            }
            Ok(())
        }
        Change::SetPartitions(name, n) => {
            let t = state
                .topics
                .get(name)
                .ok_or_else(|| CatalogError::UnknownTopic(name.clone()))?;
            if *n <= t.partitions || *n > 100_000 {
                return Err(CatalogError::InvalidPartitions(*n));
            }
            Ok(())
        }
        Change::SetConfigs(name, configs) => {
            if !state.topics.contains_key(name) {
                return Err(CatalogError::UnknownTopic(name.clone()));
            }
            configs_ok(configs)
        }
        Change::SetBrokerConfigs(configs) => configs_ok(configs),
        Change::Amqp(c) => super::amqp::check(&state.amqp, c),
        Change::Security(_) => Ok(()),
    }
}

/// Whether `change`, accepted by `check`, would leave `state` as it is (apart from the
/// version): then nothing is persisted, replicated or versioned.
pub fn changes_nothing(state: &CatalogState, change: &Change) -> bool {
    use super::amqp::{same_binding, TopologyChange as T};
    let Change::Amqp(c) = change else {
        return false;
    };
    let vhost = match c {
        T::DeclareExchange { vhost, .. }
        | T::DeleteExchange { vhost, .. }
        | T::DeclareQueue { vhost, .. }
        | T::DeleteQueues { vhost, .. }
        | T::Bind { vhost, .. }
        | T::Unbind { vhost, .. } => vhost,
    };
    let Some(t) = state.amqp.get(vhost) else {
        return false;
    };
    match c {
        // `check` accepted it, so an existing one is equivalent (apply keeps the old).
        T::DeclareExchange { exchange, .. } => t.exchange(&exchange.name).is_some(),
        T::DeclareQueue { queue, .. } => t.queues.contains_key(&queue.name),
        T::Bind { binding, .. } => t.bindings.iter().any(|b| same_binding(b, binding)),
        T::Unbind { binding, .. } => !t.bindings.iter().any(|b| same_binding(b, binding)),
        T::DeleteExchange { name, .. } => !t.exchanges.contains_key(name),
        T::DeleteQueues { queues, .. } => queues
            .iter()
            .all(|(n, id)| t.queues.get(n).map(|q| q.id) != Some(*id)),
    }
}

/// Changes that give space back: they may spend the store's reserve on a full disk.
fn frees_space(change: &Change) -> bool {
    use super::amqp::TopologyChange as T;
    matches!(
        change,
        Change::DeleteTopic(_)
            | Change::Amqp(T::DeleteExchange { .. })
            | Change::Amqp(T::DeleteQueues { .. })
            | Change::Amqp(T::Unbind { .. })
    )
}

impl CatalogWriter {
    pub fn new(store: CatalogStore) -> Self {
        CatalogWriter {
            store: RefCell::new(Some(store)),
            one_at_a_time: Semaphore::new(1),
        }
    }

    /// Checks, persists and returns the new state; `current` gives the latest state
    /// (shard 0's replica) at the moment the request's turn comes.
    pub async fn apply(
        &self,
        config: &Rc<Config>,
        current: impl Fn() -> Arc<CatalogState>,
        changes: Vec<Change>,
        validate_only: bool,
    ) -> CatalogReply {
        let _turn = self.one_at_a_time.acquire_permit(1).await;
        let base = current();
        let mut state = (*base).clone();
        let mut results = Vec::with_capacity(changes.len());
        let mut records = Vec::new();
        let mut changed = false;
        let mut may_use_reserve = true;
        for change in changes {
            let r = check(config, &state, &change);
            if r.is_ok() && !validate_only && !changes_nothing(&state, &change) {
                may_use_reserve &= frees_space(&change);
                // Transient AMQP topology is replicated but never written.
                let persist = match &change {
                    Change::Amqp(c) => super::amqp::persisted(&state.amqp, c),
                    _ => true,
                };
                state.apply(&change);
                changed = true;
                if persist {
                    records.push((state.version, change));
                }
            }
            results.push(r);
        }
        if !changed {
            return CatalogReply {
                results,
                state: base,
            };
        }
        if records.is_empty() {
            return CatalogReply {
                results,
                state: Arc::new(state),
            };
        }
        let Some(mut store) = self.store.borrow_mut().take() else {
            let e = CatalogError::Storage("catalog store unavailable".into());
            return CatalogReply {
                results: results.into_iter().map(|_| Err(e.clone())).collect(),
                state: base,
            };
        };
        let snapshot = state.clone();
        let (store, persisted) = glommio::executor()
            .spawn_blocking(move || {
                let r = store.append(&records, &snapshot, may_use_reserve);
                (store, r)
            })
            .await;
        *self.store.borrow_mut() = Some(store);
        match persisted {
            Ok(()) => CatalogReply {
                results,
                state: Arc::new(state),
            },
            Err(e) => {
                log::error!("persisting catalog change: {e}");
                CatalogReply {
                    results: results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
                    state: base,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::amqp::arguments::QueueArgs;
    use crate::catalog::amqp::tables::encode_table;
    use crate::catalog::amqp::{Binding, DestKind, Queue, TopologyChange as T};

    fn queue(name: &str, id: u64) -> Queue {
        Queue {
            name: name.into(),
            id,
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: encode_table(&Default::default()),
            args: QueueArgs::default(),
        }
    }

    fn binding(key: &str) -> Binding {
        Binding {
            source: "amq.direct".into(),
            destination: "jobs".into(),
            dest_kind: DestKind::Queue,
            routing_key: key.into(),
            arguments: encode_table(&Default::default()),
        }
    }

    #[test]
    fn redeclares_and_deletes_of_nothing_change_nothing() {
        let v = "/".to_string();
        let mut state = CatalogState::default();
        let declare = Change::Amqp(T::DeclareQueue {
            vhost: v.clone(),
            queue: queue("jobs", 7),
        });
        assert!(
            !changes_nothing(&state, &declare),
            "a new queue is a change"
        );
        state.apply(&declare);
        assert!(changes_nothing(&state, &declare), "the same declare again");
        let bind = Change::Amqp(T::Bind {
            vhost: v.clone(),
            binding: binding("k"),
        });
        assert!(!changes_nothing(&state, &bind));
        state.apply(&bind);
        assert!(changes_nothing(&state, &bind));
        let unbind_other = Change::Amqp(T::Unbind {
            vhost: v.clone(),
            binding: binding("other"),
        });
        assert!(changes_nothing(&state, &unbind_other));
        // Deleting another incarnation of the queue changes nothing; this one does.
        let delete_old = Change::Amqp(T::DeleteQueues {
            vhost: v.clone(),
            queues: vec![("jobs".into(), 6)],
        });
        assert!(changes_nothing(&state, &delete_old));
        let delete = Change::Amqp(T::DeleteQueues {
            vhost: v.clone(),
            queues: vec![("jobs".into(), 7)],
        });
        assert!(!changes_nothing(&state, &delete));
        assert!(frees_space(&delete) && !frees_space(&declare));
        // Kafka changes always count.
        assert!(!changes_nothing(&state, &Change::DeleteTopic("t".into())));
    }
}
