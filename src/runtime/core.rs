//! `Core`: the protocol-free part of one shard — its id and the shard count, its config
//! copy, its end of the channel mesh, the table of its tasks waiting for answers, its open
//! connections, and the stop signal. Everything a protocol keeps per shard lives in the
//! protocol's own state, registered here as a *local* (`Core::provide`), so the runtime
//! never names a protocol.
//!
//! Work crosses shards only as a call: `ask`/`ask_on` send a closure that runs on the
//! destination shard's thread, in arrival order, with that shard's local of the named type,
//! and answers through a `ReplyTo` (Seastar's `invoke_on`/`submit_to` shape). `invoke_on`
//! is the same with an async body whose result is the answer. The closure and everything it
//! captures cross threads (`Send`); its answer comes back as `Message::Reply` (see
//! `runtime::reply`).
//!
//! Created inside the shard's executor (by `broker`) and shared with its tasks by `Rc`.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use super::listener::Clients;
use super::mesh::{Message, Work};
use super::reply::{Awaited, Replies, ReplyTo};
use super::shutdown::Shutdown;
use crate::config::Config;
use crate::util::notify::Notify;

pub struct Core {
    pub id: usize,
    pub count: usize,
    pub config: Rc<Config>,
    senders: Senders<Message>,
    pub shutdown: Arc<Shutdown>,
    /// Open client connections on this shard.
    pub clients: Clients,
    /// Set once this shard has begun to stop; listeners stop accepting.
    pub stopping: Cell<bool>,
    pub stop: Notify,
    /// Tasks of this shard waiting for an answer from another shard.
    pub replies: Rc<Replies>,
    /// The per-shard state each layer registered, by type (held weakly: their owner keeps
    /// them alive, and they may hold this `Core`).
    locals: RefCell<HashMap<TypeId, Weak<dyn Any>>>,
}

/// Why a cross-shard call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable(pub usize);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} is not reachable", self.0)
    }
}

impl Core {
    pub fn new(
        id: usize,
        count: usize,
        config: Rc<Config>,
        senders: Senders<Message>,
        shutdown: Arc<Shutdown>,
    ) -> Core {
        Core {
            id,
            count,
            config,
            senders,
            shutdown,
            clients: Clients::new(id),
            stopping: Cell::new(false),
            stop: Notify::new(),
            replies: Rc::new(Replies::default()),
            locals: RefCell::new(HashMap::new()),
        }
    }

    /// Registers this shard's `T` (one per type), found by work arriving for it.
    pub fn provide<T: 'static>(&self, local: &Rc<T>) {
        let weak: Weak<dyn Any> = Rc::downgrade(local) as Weak<dyn Any>;
        self.locals.borrow_mut().insert(TypeId::of::<T>(), weak);
    }

    /// This shard's registered `T`, while its owner keeps it.
    pub fn local<T: 'static>(&self) -> Option<Rc<T>> {
        let weak = self.locals.borrow().get(&TypeId::of::<T>())?.clone();
        weak.upgrade()?.downcast::<T>().ok()
    }

    /// Sends one envelope to another shard: the only place work leaves its shard.
    async fn send(&self, to: usize, msg: Message) -> Result<(), Unreachable> {
        self.senders
            .send_to(to, msg)
            .await
            .map_err(|_| Unreachable(to))
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

    /// Runs `work` on shard `to` (this one included: then at once) with that shard's
    /// `Core`, and waits for the answer it sends; `None` when the shard cannot be reached
    /// or the work drops its `ReplyTo` unanswered.
    pub async fn ask<R: Send + 'static>(
        self: &Rc<Self>,
        to: usize,
        work: impl FnOnce(&Rc<Core>, ReplyTo<R>) + Send + 'static,
    ) -> Option<R> {
        self.ask_started(to, work).await.ok()?.await
    }

    /// Like `ask`, but returns once the work has been handed over (run, when `to` is this
    /// shard): its synchronous part happens in call order; the answer is awaited after.
    pub async fn ask_started<R: Send + 'static>(
        self: &Rc<Self>,
        to: usize,
        work: impl FnOnce(&Rc<Core>, ReplyTo<R>) + Send + 'static,
    ) -> Result<Awaited<R>, Unreachable> {
        let (reply, answer) = self.expect();
        if to == self.id {
            work(self, reply);
        } else {
            let work: Work = Box::new(move |core: &Rc<Core>| work(core, reply));
            self.send(to, Message::Run(work)).await?;
        }
        Ok(answer)
    }

    /// `ask` with the destination shard's local `T` (unanswered when it has none).
    pub async fn ask_on<T: 'static, R: Send + 'static>(
        self: &Rc<Self>,
        to: usize,
        work: impl FnOnce(&Rc<T>, ReplyTo<R>) + Send + 'static,
    ) -> Option<R> {
        self.ask(to, move |core, reply| {
            if let Some(local) = core.local::<T>() {
                work(&local, reply);
            }
        })
        .await
    }

    /// Runs `work` with shard `to`'s local `T` and awaits the future it returns: the
    /// synchronous part (the call) in arrival order on `to`, then the future as a task
    /// there. This shard's own work runs inline, without a task.
    pub async fn invoke_on<T, R, F, Fut>(self: &Rc<Self>, to: usize, work: F) -> Option<R>
    where
        T: 'static,
        R: Send + 'static,
        F: FnOnce(&Rc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        self.dispatch_on(to, work).await.await
    }

    /// Starts `invoke_on`'s work and returns its answer to await: when this resolves, the
    /// synchronous part has run (here) or been handed to `to`, in call order.
    pub async fn dispatch_on<T, R, F, Fut>(
        self: &Rc<Self>,
        to: usize,
        work: F,
    ) -> LocalBoxFuture<'static, Option<R>>
    where
        T: 'static,
        R: Send + 'static,
        F: FnOnce(&Rc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if to == self.id {
            let Some(local) = self.local::<T>() else {
                return Box::pin(async { None });
            };
            let done = work(&local);
            return Box::pin(async move { Some(done.await) });
        }
        let started = self
            .ask_started(to, move |core: &Rc<Core>, reply: ReplyTo<R>| {
                let Some(local) = core.local::<T>() else {
                    return;
                };
                let done = work(&local);
                glommio::spawn_local(async move { reply.send(done.await) }).detach();
            })
            .await;
        match started {
            Ok(answer) => Box::pin(answer),
            Err(_) => Box::pin(async { None }),
        }
    }

    /// Runs `work` on shard `to` with its local `T` without waiting for anything
    /// (announcements such as a new catalog version). Dropped if `to` cannot be reached.
    pub async fn submit_to<T: 'static>(
        self: &Rc<Self>,
        to: usize,
        work: impl FnOnce(&Rc<T>) + Send + 'static,
    ) {
        let work: Work = Box::new(move |core: &Rc<Core>| {
            if let Some(local) = core.local::<T>() {
                work(&local);
            }
        });
        if to == self.id {
            work(self);
        } else {
            let _ = self.send(to, Message::Run(work)).await;
        }
    }

    /// `submit_to` for another shard, saying whether the envelope was handed over.
    pub async fn tell_on<T: 'static>(
        self: &Rc<Self>,
        to: usize,
        work: impl FnOnce(&Rc<T>) + Send + 'static,
    ) -> Result<(), Unreachable> {
        let work: Work = Box::new(move |core: &Rc<Core>| {
            if let Some(local) = core.local::<T>() {
                work(&local);
            }
        });
        self.send(to, Message::Run(work)).await
    }

    /// Starts one task per peer that serves what that peer sends, until it stops sending.
    pub fn serve_mesh(self: &Rc<Self>, receivers: &mut Receivers<Message>) {
        for (_, rx) in receivers.streams() {
            let core = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    core.serve(msg);
                }
            })
            .detach();
        }
    }

    /// Handles one envelope from another shard (the mesh receive loop's body).
    pub fn serve(self: &Rc<Self>, msg: Message) {
        match msg {
            Message::Run(work) => work(self),
            Message::Reply(id, answer) => {
                // Wakes the waiting task of this shard (or cleans up after one that left).
                if let Some(unclaimed) = self.replies.complete(id, answer) {
                    self.replies.unclaimed(unclaimed);
                }
            }
        }
    }

    /// Whether shard `to`'s executor answers within `deadline`.
    pub async fn ping(self: &Rc<Self>, to: usize, deadline: std::time::Duration) -> bool {
        if to == self.id {
            return true;
        }
        let ask = async { self.ask(to, |_, reply| reply.send(())).await.is_some() };
        let timer = glommio::timer::sleep(deadline);
        match futures::future::select(Box::pin(ask), Box::pin(timer)).await {
            futures::future::Either::Left((answered, _)) => answered,
            futures::future::Either::Right(_) => false,
        }
    }

    /// Closes the client connection `id` wherever it lives (its shard is in the id).
    pub async fn close_connection(self: &Rc<Self>, id: u64) -> bool {
        let to = crate::util::ShardIds::shard_of(id);
        if to >= self.count {
            return false;
        }
        self.ask(to, move |core, reply| reply.send(core.clients.shutdown(id)))
            .await
            .unwrap_or(false)
    }

    /// Gathers one answer from every shard, this one's included, in shard order; shards
    /// that cannot be reached are left out.
    pub async fn gather<T, R, F, Fut>(self: &Rc<Self>, work: F) -> Vec<R>
    where
        T: 'static,
        R: Send + 'static,
        F: Fn(&Rc<T>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let asks = (0..self.count).map(|to| self.invoke_on::<T, R, F, Fut>(to, work.clone()));
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::channels::channel_mesh::MeshBuilder;
    use glommio::{LocalExecutorBuilder, Placement};

    /// A layer's per-shard state, as a protocol would register it.
    struct Counter {
        shard: usize,
        hits: Cell<u32>,
    }

    /// Runs `body` on each of two shards joined by a mesh, each with its `Counter`
    /// registered; returns what each shard's body returned.
    fn two_shards<R: Send + 'static, Fut: Future<Output = R> + 'static>(
        body: fn(Rc<Core>, Rc<Counter>) -> Fut,
    ) -> Vec<R> {
        let mesh = MeshBuilder::<Message, _>::full(2, 16);
        let shutdown = Shutdown::new();
        let handles: Vec<_> = (0..2)
            .map(|id| {
                let (mesh, shutdown) = (mesh.clone(), shutdown.clone());
                LocalExecutorBuilder::new(Placement::Unbound)
                    .spawn(move || async move {
                        let (senders, mut receivers) = mesh.join().await.expect("mesh");
                        let config = Rc::new(Config::default());
                        let core = Rc::new(Core::new(id, 2, config, senders, shutdown));
                        super::super::reply::bind(&core);
                        let counter = Rc::new(Counter {
                            shard: id,
                            hits: Cell::new(0),
                        });
                        core.provide(&counter);
                        core.serve_mesh(&mut receivers);
                        let out = body(core.clone(), counter.clone()).await;
                        // Both shards keep serving until both bodies are done.
                        core.shutdown.mark_ready();
                        while !core.shutdown.all_ready(2) {
                            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                        out
                    })
                    .expect("executor")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("shard"))
            .collect()
    }

    #[test]
    fn work_runs_on_the_named_shard_with_its_local_and_answers() {
        let out = two_shards(|core, _| async move {
            let other = 1 - core.id;
            // invoke_on: runs with the other shard's Counter, answer comes back.
            let seen = core
                .invoke_on::<Counter, _, _, _>(other, |c: &Rc<Counter>| {
                    c.hits.set(c.hits.get() + 1);
                    let shard = c.shard;
                    async move { shard }
                })
                .await;
            // ask_on: the work answers through its ReplyTo.
            let asked = core
                .ask_on::<Counter, usize>(other, |c, reply| reply.send(c.shard * 10))
                .await;
            // This shard's own work runs inline.
            let mine = core
                .invoke_on::<Counter, _, _, _>(core.id, |c: &Rc<Counter>| {
                    let s = c.shard;
                    async move { s }
                })
                .await;
            (seen, asked, mine)
        });
        assert_eq!(out[0], (Some(1), Some(10), Some(0)));
        assert_eq!(out[1], (Some(0), Some(0), Some(1)));
    }

    #[test]
    fn work_for_a_missing_local_or_dropped_reply_answers_nothing() {
        struct Unregistered;
        let out = two_shards(|core, _| async move {
            let other = 1 - core.id;
            let missing = core
                .ask_on::<Unregistered, u8>(other, |_, reply| reply.send(1))
                .await;
            let dropped = core
                .ask_on::<Counter, u8>(other, |_, reply| drop(reply))
                .await;
            let unreachable = core.ask::<u8>(7, |_, reply| reply.send(1)).await;
            (missing, dropped, unreachable)
        });
        assert!(out.iter().all(|o| *o == (None, None, None)));
    }

    #[test]
    fn submitted_work_arrives_in_order_and_gather_asks_every_shard() {
        let out = two_shards(|core, counter| async move {
            let other = 1 - core.id;
            for _ in 0..5 {
                core.submit_to::<Counter>(other, |c| c.hits.set(c.hits.get() + 1))
                    .await;
            }
            // A call sent after the submissions runs after them (one ordered channel).
            let hits = core
                .ask_on::<Counter, u32>(other, |c, reply| reply.send(c.hits.get()))
                .await;
            let shards = core
                .gather::<Counter, _, _, _>(|c: &Rc<Counter>| {
                    let s = c.shard;
                    async move { s }
                })
                .await;
            let _ = counter;
            (hits, shards)
        });
        for (hits, shards) in out {
            assert_eq!(hits, Some(5));
            assert_eq!(shards, vec![0, 1]);
        }
    }
}
