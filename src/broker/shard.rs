//! `Shard`: the composition of one executor's state — the protocol-free runtime `Core`
//! (id, mesh, replies, connections, stop), this shard's storage, its catalog replica (and, on
//! shard 0, the catalog writer), the consumer groups and transactional ids it coordinates,
//! its Kafka in-flight budget, its AMQP state and its copy of the user store.
//!
//! Created inside the shard's executor by `broker::run_shard` and registered with its `Core`
//! as the shard's local, so work sent from another shard (`Core::invoke_on::<Shard, ..>`)
//! finds it. Each protocol writes its own "ask the owner" calls as methods on `Shard` in its
//! own module (`kafka::owner`, `kafka::groups`, `amqp::ask`); the catalog's are here.

use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use crate::catalog::writer::{CatalogReply, CatalogWriter};
use crate::catalog::{self, CatalogError, CatalogState, Change, Replica};
use crate::kafka::groups::Coordinator;
use crate::runtime::core::Core;
use crate::security::users::UserStore;
use crate::storage::Storage;
use crate::util::partition_owner;

pub struct Shard {
    pub core: Rc<Core>,
    pub storage: Rc<Storage>,
    /// The consumer groups this shard coordinates.
    pub groups: Rc<Coordinator>,
    /// The transactional ids this shard coordinates.
    pub txn: Rc<crate::kafka::txn::Coordinator>,
    pub catalog: Replica,
    writer: Option<CatalogWriter>,
    /// Kafka request bytes read and not yet answered, over all connections of the shard.
    pub kafka_budget: crate::kafka::InflightBudget,
    /// AMQP state of this shard: owned queues, connections, outbox (`crate::amqp`).
    pub amqp: crate::amqp::ShardAmqp,
    /// Kafka's authorizer, with the configuration's ACLs parsed once; the catalog's ACLs
    /// are passed to it on each check.
    pub acl: crate::security::acl::Authorizer,
    /// The users every protocol logs in against, rebuilt when an installed catalog
    /// changes the stored SCRAM credentials (`users`).
    users: std::cell::RefCell<Rc<UserStore>>,
}

impl Deref for Shard {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Shard {
    pub fn new(
        core: Rc<Core>,
        storage: Rc<Storage>,
        groups: Rc<Coordinator>,
        txn: Rc<crate::kafka::txn::Coordinator>,
        state: Arc<CatalogState>,
        writer: Option<CatalogWriter>,
    ) -> Shard {
        let amqp = crate::amqp::ShardAmqp::new(&core.config, core.id, core.count);
        let acl = crate::security::acl::Authorizer::new(&core.config.acl);
        let users = Rc::new(UserStore::build(&core.config, &state.security));
        Shard {
            users: std::cell::RefCell::new(users),
            core,
            storage,
            groups,
            txn,
            catalog: Replica::new(state),
            writer,
            kafka_budget: Default::default(),
            amqp,
            acl,
        }
    }

    /// This shard's user store (cheap: shared until the next credential change).
    pub fn users(&self) -> Rc<UserStore> {
        self.users.borrow().clone()
    }

    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        partition_owner(topic, partition, self.count)
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
                .core
                .invoke_on::<Shard, _, _, _>(0, move |writer: &Rc<Shard>| {
                    let writer = writer.clone();
                    async move { writer.write_catalog(changes, validate_only).await }
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
            // Every shard has the new state before the change is answered, so whatever a
            // client does next, on any connection and any shard, sees it (a binding made
            // over REST routes the next publish of an AMQP connection on another shard, as
            // in RabbitMQ, where bind-ok means the binding is in place). Handed to the peers
            // in order, then awaited together.
            let mut installed = Vec::new();
            for peer in (0..self.count).filter(|p| *p != self.id) {
                let state = reply.state.clone();
                installed.push(
                    self.core
                        .dispatch_on::<Shard, _, _, _>(peer, move |shard: &Rc<Shard>| {
                            shard.install_catalog(state);
                            async {}
                        })
                        .await,
                );
            }
            futures::future::join_all(installed).await;
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
        if state.security.scram != old.security.scram {
            *self.users.borrow_mut() = Rc::new(UserStore::build(&self.config, &state.security));
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
}
