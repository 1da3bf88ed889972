//! `Shard`: everything one executor owns — its config copy, storage, catalog replica (and,
//! on shard 0, the catalog writer), its end of the channel mesh and its connection count.
//!
//! Created inside the shard's executor and shared with its tasks by `Rc`. Work for another
//! shard leaves through `Shard::send`; work from another shard arrives in `Shard::serve`.
//! Answers come back the same way, as `Message::Reply` (see `runtime::reply`): no task's
//! waker is ever handed to another shard's thread.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use super::mesh::{CatalogReply, Message};
use super::notify::Notify;
use super::reply::{Awaited, Replies, ReplyTo};
use super::shutdown::Shutdown;
use crate::catalog::writer::CatalogWriter;
use crate::catalog::{self, CatalogError, CatalogState, Change, Replica};
use crate::config::Config;
use crate::kafka::groups::{self, Coordinator};
use crate::kafka::owner;
use crate::storage::Storage;

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Rc<Config>,
    pub storage: Rc<Storage>,
    /// The consumer groups this shard coordinates.
    pub groups: Rc<Coordinator>,
    pub catalog: Replica,
    writer: Option<CatalogWriter>,
    senders: Senders<Message>,
    pub shutdown: Arc<Shutdown>,
    /// Open client connections on this shard.
    pub clients: super::listener::Clients,
    pub connections_changed: Notify,
    /// Kafka request bytes read and not yet answered, over all connections of the shard.
    pub kafka_inflight: Cell<usize>,
    pub kafka_released: Notify,
    /// Set once this shard has begun to stop; listeners stop accepting.
    pub stopping: Cell<bool>,
    pub stop: Notify,
    /// AMQP state of this shard: owned queues, connections, outbox (`crate::amqp`).
    pub amqp: crate::amqp::ShardAmqp,
    /// Tasks of this shard waiting for an answer from another shard.
    pub replies: Rc<Replies>,
}

/// FNV-1a: a hash that never changes between builds or runs, for ownership.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The owner shard of a topic partition: the topic's hash picks a starting shard and the
/// partitions of one topic follow round-robin, so a topic spreads evenly.
pub fn partition_owner(topic: &str, partition: i32, shards: usize) -> usize {
    ((stable_hash(topic.as_bytes()) % shards as u64 + partition.max(0) as u64) % shards as u64)
        as usize
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        count: usize,
        config: Rc<Config>,
        storage: Rc<Storage>,
        groups: Rc<Coordinator>,
        state: Arc<CatalogState>,
        writer: Option<CatalogWriter>,
        senders: Senders<Message>,
        shutdown: Arc<Shutdown>,
    ) -> Shard {
        let amqp = crate::amqp::ShardAmqp::new(&config, id, count);
        Shard {
            id,
            count,
            config,
            storage,
            groups,
            catalog: Replica::new(state),
            writer,
            senders,
            shutdown,
            clients: super::listener::Clients::new(id),
            connections_changed: Notify::new(),
            kafka_inflight: Cell::new(0),
            kafka_released: Notify::new(),
            stopping: Cell::new(false),
            stop: Notify::new(),
            amqp,
            replies: Rc::new(Replies::default()),
        }
    }

    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        partition_owner(topic, partition, self.count)
    }

    /// Sends one envelope to another shard: the only place work crosses shards.
    pub async fn send(&self, to: usize, msg: Message) -> Result<(), CatalogError> {
        self.senders
            .send_to(to, msg)
            .await
            .map_err(|_| CatalogError::Storage(format!("shard {to} is not reachable")))
    }

    /// Sends without waiting (answers: the mesh receive loop sends them, and must never
    /// wait for room). When the channel to `to` is full, a task waits for room instead,
    /// unless `may_wait` is false (then the message is dropped).
    pub(super) fn post(self: &Rc<Self>, to: usize, msg: Message, may_wait: bool) {
        match self.senders.try_send_to(to, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) if may_wait => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    let _ = me.senders.send_to(to, msg).await;
                })
                .detach();
            }
            // The peer has stopped (or cannot take it now): nobody waits for it.
            Err(_) => {}
        }
    }

    /// A waiter for one answer: the `ReplyTo` to carry in the request, and its answer.
    pub fn expect<T: Send + 'static>(&self) -> (ReplyTo<T>, Awaited<T>) {
        self.replies.expect(self.id)
    }

    /// Sends the request `ask` makes to shard `to` and waits for its answer; `None` when
    /// the shard cannot be reached or drops the request unanswered.
    pub async fn ask<T: Send + 'static>(
        self: &Rc<Self>,
        to: usize,
        ask: impl FnOnce(ReplyTo<T>) -> Message,
    ) -> Option<T> {
        let (reply, answer) = self.expect();
        self.send(to, ask(reply)).await.ok()?;
        answer.await
    }

    /// Asks partition work of `owner`, locally or across the mesh.
    pub async fn kafka(self: &Rc<Self>, owner: usize, req: owner::Request) -> owner::Reply {
        if owner == self.id {
            return owner::serve(self, req).await;
        }
        self.ask(owner, |reply| Message::Kafka(req, reply))
            .await
            .unwrap_or(owner::Reply::Unavailable)
    }

    /// Asks the coordinator shard of a consumer group, locally or across the mesh.
    pub async fn group(self: &Rc<Self>, group: &str, req: groups::Request) -> groups::Reply {
        self.group_on(groups::group_owner(group, self.count), req)
            .await
    }

    /// Asks one shard's group coordinator (ListGroups asks them all).
    pub async fn group_on(self: &Rc<Self>, owner: usize, req: groups::Request) -> groups::Reply {
        if owner == self.id {
            return self.groups.start(req).await;
        }
        self.ask(owner, |reply| Message::Group(req, reply))
            .await
            .unwrap_or(groups::Reply::Unavailable)
    }

    /// Starts partition work on `owner` and returns its completion; the synchronous part
    /// (e.g. the append of a produce) has happened, in call order, when this resolves.
    pub async fn kafka_dispatch(
        self: &Rc<Self>,
        owner: usize,
        req: owner::Request,
    ) -> futures::future::LocalBoxFuture<'static, owner::Reply> {
        if owner == self.id {
            return owner::start(self, req);
        }
        let (reply, answer) = self.expect();
        if self.send(owner, Message::Kafka(req, reply)).await.is_err() {
            return Box::pin(async { owner::Reply::Unavailable });
        }
        Box::pin(async move { answer.await.unwrap_or(owner::Reply::Unavailable) })
    }

    /// AMQP ops for `owner`, locally or across the mesh: the one place AMQP work crosses
    /// shards (called by the outbox's flush, one envelope per destination).
    pub async fn amqp(
        self: &Rc<Self>,
        owner: usize,
        req: crate::amqp::mesh::Request,
    ) -> crate::amqp::mesh::Reply {
        if owner == self.id {
            let r = crate::amqp::owner::serve(self, req);
            crate::amqp::owner::relieve(self).await;
            return r;
        }
        self.ask(owner, |reply| Message::Amqp(req, reply))
            .await
            .unwrap_or(crate::amqp::mesh::Reply::Unavailable)
    }

    /// Applies catalog changes through shard 0's writer and installs the resulting state
    /// here before returning (read-your-writes).
    pub async fn change_catalog(
        self: &Rc<Self>,
        changes: Vec<Change>,
        validate_only: bool,
    ) -> Vec<Result<(), CatalogError>> {
        let n = changes.len();
        let reply = if self.id == 0 {
            self.write_catalog(changes, validate_only).await
        } else {
            let answer = self
                .ask(0, |reply| Message::Catalog {
                    changes,
                    validate_only,
                    reply,
                })
                .await;
            match answer {
                Some(reply) => reply,
                None => {
                    let e = CatalogError::Storage("catalog writer unreachable".into());
                    return vec![Err(e); n];
                }
            }
        };
        self.install_catalog(reply.state);
        reply.results
    }

    /// Shard 0 only: runs the writer, installs and broadcasts the new state.
    async fn write_catalog(
        self: &Rc<Self>,
        changes: Vec<Change>,
        validate_only: bool,
    ) -> CatalogReply {
        let Some(writer) = &self.writer else {
            let e = CatalogError::Storage("not the catalog writer".into());
            return CatalogReply {
                results: vec![Err(e); changes.len()],
                state: self.catalog.current(),
            };
        };
        let me = self.clone();
        let reply = writer
            .apply(
                &self.config,
                move || me.catalog.current(),
                changes,
                validate_only,
            )
            .await;
        if self.install_catalog(reply.state.clone()) {
            for peer in (0..self.count).filter(|p| *p != self.id) {
                let _ = self
                    .send(peer, Message::CatalogState(reply.state.clone()))
                    .await;
            }
        }
        reply
    }

    /// Installs a newer catalog state and brings local storage in line with it: partitions
    /// of deleted (or re-created) topics are removed, changed configs applied.
    pub fn install_catalog(self: &Rc<Self>, state: Arc<CatalogState>) -> bool {
        let old = self.catalog.current();
        if !self.catalog.install(state.clone()) {
            return false;
        }
        for (name, topic) in &old.topics {
            match state.topics.get(name) {
                Some(t) if t.id == topic.id => {
                    if t.configs != topic.configs || state.broker_configs != old.broker_configs {
                        let settings = catalog::log_settings(&self.config, &state, t);
                        self.storage.update_settings(name, &settings);
                    }
                }
                _ => {
                    for p in 0..topic.partitions {
                        if self.owner_of(name, p) == self.id {
                            let storage = self.storage.clone();
                            let name = name.clone();
                            glommio::spawn_local(async move { storage.delete(&name, p).await })
                                .detach();
                        }
                    }
                }
            }
        }
        crate::amqp::catalog_installed(self);
        true
    }

    /// Handles one envelope from another shard.
    pub fn serve(self: &Rc<Self>, msg: Message) {
        match msg {
            Message::Catalog {
                changes,
                validate_only,
                reply,
            } => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    let r = me.write_catalog(changes, validate_only).await;
                    reply.send(r);
                })
                .detach();
            }
            Message::CatalogState(state) => {
                self.install_catalog(state);
            }
            Message::Group(req, reply) => {
                let done = self.groups.start(req);
                glommio::spawn_local(async move {
                    reply.send(done.await);
                })
                .detach();
            }
            Message::Amqp(req, reply) => {
                // Applied now, in arrival order; the ops' own replies travel in them.
                crate::amqp::owner::serve_remote(self, req, reply);
            }
            Message::Ping(reply) => {
                reply.send(());
            }
            Message::Stats(reply) => {
                reply.send(Box::new(crate::metrics::snapshot(self)));
            }
            Message::CloseConnection(id, reply) => {
                reply.send(self.clients.shutdown(id));
            }
            Message::Kafka(req, reply) => {
                // The synchronous part runs now, in arrival order.
                let done = owner::start(self, req);
                glommio::spawn_local(async move {
                    reply.send(done.await);
                })
                .detach();
            }
            Message::Reply(id, answer) => {
                // Wakes the waiting task of this shard (or cleans up after one that left).
                if let Some(unclaimed) = self.replies.complete(id, answer) {
                    super::reply::unclaimed(self, unclaimed);
                }
            }
        }
    }

    /// Gathers every shard's metrics and state, this one's included (the hop of a scrape).
    pub async fn stats_all(self: &Rc<Self>) -> Vec<crate::metrics::ShardStats> {
        let asks = (0..self.count).map(|to| async move {
            if to == self.id {
                return Some(crate::metrics::snapshot(self));
            }
            self.ask(to, Message::Stats).await.map(|b| *b)
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Whether shard `to`'s executor answers within `deadline`.
    pub async fn ping(self: &Rc<Self>, to: usize, deadline: std::time::Duration) -> bool {
        if to == self.id {
            return true;
        }
        let ask = async { self.ask(to, Message::Ping).await.is_some() };
        let timer = glommio::timer::sleep(deadline);
        match futures::future::select(Box::pin(ask), Box::pin(timer)).await {
            futures::future::Either::Left((answered, _)) => answered,
            futures::future::Either::Right(_) => false,
        }
    }

    /// Closes the client connection `id` wherever it lives (its shard is in the id).
    pub async fn close_connection(self: &Rc<Self>, id: u64) -> bool {
        let to = (id >> 48) as usize;
        if to == self.id {
            return self.clients.shutdown(id);
        }
        if to >= self.count {
            return false;
        }
        self.ask(to, |reply| Message::CloseConnection(id, reply))
            .await
            .unwrap_or(false)
    }

    pub fn connection_list(&self) -> Vec<crate::metrics::ConnectionStats> {
        self.clients.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_a_topic_spread_over_shards() {
        let owners: Vec<usize> = (0..6).map(|p| partition_owner("orders", p, 2)).collect();
        assert_eq!(owners.iter().filter(|o| **o == 0).count(), 3);
        assert_eq!(
            partition_owner("orders", 3, 2),
            partition_owner("orders", 3, 2)
        );
        assert!((0..100).all(|p| partition_owner("x", p, 1) == 0));
    }
}
