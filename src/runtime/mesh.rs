//! What shards send each other over the glommio channel mesh: work to run on the
//! destination shard, and answers.
//!
//! `Message::Run` carries a closure built by `Core::ask`/`invoke_on`/`submit_to`: it runs on
//! the destination shard's thread, in arrival order, and answers (if asked) through the
//! `ReplyTo` it captured; the answer comes back as `Message::Reply` over the same mesh, never
//! through a channel that would wake the asking task from the other shard's thread (see
//! `runtime::reply`). Record batches travel as `bytes::Bytes`, so they cross shards without
//! a copy. The mesh itself (`glommio::channels::channel_mesh`) is built by `broker::run`;
//! `Core::send` (and `Core::post` for answers) is the one place a message leaves its shard,
//! and `Core::serve` the one place one arrives. The runtime names no protocol: each protocol
//! writes its own "ask the owner" call on top of these.
//!
//! Nothing in a message may hold a task's `Waker` or anything that wakes one (a
//! `futures::channel` end, a glommio `local_channel`): a message is dropped or consumed on
//! another thread.

use std::rc::Rc;

use super::core::Core;
use super::reply::Answer;

/// Work for another shard: called once, on that shard's thread, with its `Core`.
pub type Work = Box<dyn FnOnce(&Rc<Core>) + Send>;

pub enum Message {
    /// Run this on the receiving shard, now (in arrival order).
    Run(Work),
    /// The answer to request `id` of the receiving shard (`runtime::reply`).
    Reply(u64, Answer),
}
