//! Answers to cross-shard requests, carried back over the channel mesh: `ReplyTo` (what a
//! request carries), `Awaited` (what the asking task awaits) and `Replies` (the asking
//! shard's table of tasks waiting for an answer).
//!
//! Why not a `futures::channel::oneshot` per request: its receiver, awaited by a glommio
//! task on the asking shard, hands that task's `Waker` to the sender, which then clones,
//! wakes and drops it on the answering shard's thread. glommio 0.9 lets a task's waker be
//! used from another thread ("foreign wakes", `task/raw.rs`), but that path races with the
//! task being cancelled or finishing on its own thread (its reference count and state are
//! not updated atomically against it): under consumer-group load this aborted the process
//! with `free(): double free detected in tcache 2` (issue 13).
//!
//! Here no waker ever leaves its thread. A request carries a `ReplyTo` naming the asking
//! shard and an id in that shard's `Replies`; the answering shard sends the value back as
//! `Message::Reply` over the mesh, whose shared channels keep every waker on the reactor
//! that registered it (the remote side only writes an eventfd); the asking shard's
//! `Core::serve` hands the value to the waiting task through a oneshot that lives on that
//! shard alone. A waiter dropped before its answer (the client left, a timeout) removes its
//! entry; the late answer is then offered to the hooks protocols registered
//! (`Replies::on_unclaimed`: a basic.get's message goes back to its queue) and dropped. A
//! `ReplyTo` dropped unanswered answers "nothing" (`None`), so the asker does not wait
//! forever.
//!
//! Everything else that wakes a task was audited for the same fault (issue 13); none wakes
//! a task from another thread:
//! - one-shot channels whose two ends stay on one shard: storage's sync waiters (the
//!   flusher completes them on the partition's shard), the offset store's commit waiters
//!   and the group state machine's join/sync waiters (on the coordinator shard), the HTTP
//!   publish's `ConfirmWaits` (on the request's shard), and the waiter table here;
//! - `spawn_blocking` (catalog, offsets, compaction, deletes): glommio's pool thread
//!   returns the result through its reactor and an eventfd, never through a waker;
//! - `Shutdown` (`Arc`, atomics): the signal thread only sets a flag, which shards poll on
//!   a timer, and the drain barrier is polled too;
//! - `Notify`, hyper's sleeps (`http::io`, see its SAFETY note), timers and sockets: local
//!   to the shard by construction (`Rc`, not `Send`).
//!
//! Runs on every shard; `bind` ties this thread to its `Core` once the shard exists, and
//! `ReplyTo::send` never awaits (a full mesh channel hands the answer to a spawned task), so
//! the mesh receive loop that calls it never blocks on a send.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

// Only ever used inside one shard: sender (in `Replies`) and receiver (in `Awaited`) are
// both created, completed and dropped on the asking shard's thread.
use futures::channel::oneshot;

use super::core::Core;

/// An answer in flight: `None` when the request was dropped without one.
pub type Answer = Option<Box<dyn Any + Send>>;

thread_local! {
    /// The shard this thread runs, for `ReplyTo::send` and `ReplyTo`'s drop.
    static SHARD: RefCell<Weak<Core>> = const { RefCell::new(Weak::new()) };
}

/// Makes `shard` the one this thread's answers leave from (called once per shard thread).
pub fn bind(shard: &Rc<Core>) {
    SHARD.with(|s| *s.borrow_mut() = Rc::downgrade(shard));
}

fn this_shard() -> Option<Rc<Core>> {
    SHARD.try_with(|s| s.borrow().upgrade()).ok().flatten()
}

/// Where the answer of one request goes: the asking shard and its waiter's id. Carried
/// inside mesh messages and AMQP ops; plain data, so it may cross threads.
#[must_use = "an unanswered request is answered with nothing when this drops"]
pub struct ReplyTo<T> {
    shard: usize,
    id: u64,
    answered: bool,
    _answer: PhantomData<fn(T)>,
}

impl<T: Send + 'static> ReplyTo<T> {
    /// Answers the request. Never waits: a full mesh channel leaves the answer to a task.
    pub fn send(mut self, value: T) {
        self.answered = true;
        deliver(self.shard, self.id, Some(Box::new(value)));
    }
}

impl<T> ReplyTo<T> {
    /// The shard that asked.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

impl<T> Drop for ReplyTo<T> {
    fn drop(&mut self) {
        if !self.answered {
            deliver(self.shard, self.id, None);
        }
    }
}

/// Hands `answer` to the waiter `id` of shard `to`: directly when that is this shard,
/// else as a `Message::Reply` over the mesh.
fn deliver(to: usize, id: u64, answer: Answer) {
    let Some(shard) = this_shard() else {
        return; // the shard is gone (its thread is ending): nobody waits any more
    };
    if to == shard.id {
        if let Some(unclaimed) = shard.replies.complete(id, answer) {
            shard.replies.unclaimed(unclaimed);
        }
    } else {
        // A request dropped unanswered while the shard stops may be dropped by the
        // executor's teardown, when no task can be spawned any more: then only a send
        // that needs no waiting is tried.
        let may_wait = answer.is_some() || !shard.stopping.get();
        shard.post(to, super::mesh::Message::Reply(id, answer), may_wait);
    }
}

/// The tasks of this shard waiting for an answer from another shard (or from this one,
/// for AMQP ops the outbox applies locally).
#[derive(Default)]
pub struct Replies {
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    /// What the protocols do with an answer nobody waits for (`on_unclaimed`).
    unclaimed: RefCell<Vec<UnclaimedHook>>,
}

/// Takes an unclaimed answer it knows (returning `None`), or hands it back.
pub type UnclaimedHook = Box<dyn Fn(Box<dyn Any + Send>) -> Option<Box<dyn Any + Send>>>;

impl Replies {
    /// A new waiter on this shard (`me`): the `ReplyTo` to put into the request and the
    /// future that resolves to its answer.
    pub fn expect<T: Send + 'static>(self: &Rc<Self>, me: usize) -> (ReplyTo<T>, Awaited<T>) {
        let id = self.next.get();
        self.next.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, tx);
        (
            ReplyTo {
                shard: me,
                id,
                answered: false,
                _answer: PhantomData,
            },
            Awaited {
                rx,
                id,
                table: self.clone(),
                _answer: PhantomData,
            },
        )
    }

    /// An answer arrived for `id`: wakes its waiter. Returns the answer when nobody waits
    /// for it any more (the caller hands it to `unclaimed`).
    pub fn complete(&self, id: u64, answer: Answer) -> Option<Box<dyn Any + Send>> {
        let waiter = self.waiting.borrow_mut().remove(&id);
        match waiter {
            Some(tx) => tx.send(answer).err().flatten(),
            None => answer,
        }
    }

    /// Requests waiting for an answer (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }
}

impl Replies {
    /// Registers what to do with an unclaimed answer of some kind (a protocol's, e.g. a
    /// message a basic.get took for an asker that left goes back to its queue).
    pub fn on_unclaimed(&self, hook: UnclaimedHook) {
        self.unclaimed.borrow_mut().push(hook);
    }

    /// An answer nobody waits for any more: offered to each hook; dropped when none takes it.
    pub fn unclaimed(&self, mut answer: Box<dyn Any + Send>) {
        for hook in self.unclaimed.borrow().iter() {
            match hook(answer) {
                Some(back) => answer = back,
                None => return,
            }
        }
    }
}

/// The answer to one request, awaited on the asking shard: `None` when the request was
/// dropped unanswered. Dropping it withdraws the waiter, so a late answer is discarded.
pub struct Awaited<T> {
    rx: oneshot::Receiver<Answer>,
    id: u64,
    table: Rc<Replies>,
    _answer: PhantomData<fn() -> T>,
}

impl<T: 'static> Future for Awaited<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(v))) => Poll::Ready(v.downcast::<T>().ok().map(|b| *b)),
            Poll::Ready(_) => Poll::Ready(None),
        }
    }
}

impl<T> Drop for Awaited<T> {
    fn drop(&mut self) {
        self.table.waiting.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn an_answer_reaches_its_waiter_once() {
        let replies = Rc::new(Replies::default());
        let (reply, answer) = replies.expect::<u32>(0);
        std::mem::forget(reply); // answered by hand below, as `Core::serve` would
        assert_eq!(replies.waiting(), 1);
        assert!(replies.complete(0, Some(Box::new(7u32))).is_none());
        assert_eq!(block_on(answer), Some(7));
        assert_eq!(replies.waiting(), 0);
        // A second answer for the same id finds nobody.
        assert!(replies.complete(0, Some(Box::new(8u32))).is_some());
    }

    #[test]
    fn a_dropped_waiter_leaves_its_answer_unclaimed() {
        let replies = Rc::new(Replies::default());
        let (reply, answer) = replies.expect::<String>(0);
        std::mem::forget(reply);
        drop(answer);
        assert_eq!(replies.waiting(), 0, "the guard withdrew the waiter");
        let late = replies.complete(0, Some(Box::new("late".to_string())));
        let late = late.and_then(|b| b.downcast::<String>().ok());
        assert_eq!(late.as_deref().map(String::as_str), Some("late"));
    }

    #[test]
    fn a_request_dropped_unanswered_answers_nothing() {
        let replies = Rc::new(Replies::default());
        let (reply, answer) = replies.expect::<u32>(0);
        std::mem::forget(reply);
        assert!(replies.complete(0, None).is_none());
        assert_eq!(block_on(answer), None);
    }

    #[test]
    fn an_answer_of_another_type_is_nothing() {
        let replies = Rc::new(Replies::default());
        let (reply, answer) = replies.expect::<u32>(0);
        std::mem::forget(reply);
        assert!(replies.complete(0, Some(Box::new("x"))).is_none());
        assert_eq!(block_on(answer), None);
    }

    #[test]
    fn an_unclaimed_answer_goes_to_the_hook_that_knows_its_kind() {
        let replies = Rc::new(Replies::default());
        let taken = Rc::new(Cell::new(0u32));
        let seen = taken.clone();
        replies.on_unclaimed(Box::new(move |answer| match answer.downcast::<u32>() {
            Ok(n) => {
                seen.set(*n);
                None
            }
            Err(other) => Some(other),
        }));
        let (reply, answer) = replies.expect::<u32>(0);
        std::mem::forget(reply);
        drop(answer); // the asker left
        if let Some(late) = replies.complete(0, Some(Box::new(42u32))) {
            replies.unclaimed(late);
        }
        assert_eq!(taken.get(), 42, "the hook took the late answer");
        // An answer of a kind no hook knows is dropped, and the hook is not called.
        replies.unclaimed(Box::new("other"));
        assert_eq!(taken.get(), 42);
    }
}
