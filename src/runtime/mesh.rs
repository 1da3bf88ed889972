//! The messages shards send each other over the glommio channel mesh.
//!
//! One envelope per destination shard per client request, each carrying where its answer
//! goes (`ReplyTo`); the answer comes back as `Message::Reply` over the same mesh, never
//! through a channel that would wake the asking task from this shard's thread (see
//! `runtime::reply`). Record batches travel as `bytes::Bytes`, so they cross shards without
//! a copy. The mesh itself (`glommio::channels::channel_mesh`) is built in `runtime::start`;
//! `Shard::send` (and `Shard::post` for answers) is the one place a message leaves its
//! shard, and `Shard::serve` the one place one arrives.
//!
//! Nothing in a message may hold a task's `Waker` or anything that wakes one (a
//! `futures::channel` end, a glommio `local_channel`): a message is dropped or consumed on
//! another thread.

use std::sync::Arc;

use super::reply::{Answer, ReplyTo};
use crate::catalog::{CatalogError, CatalogState, Change};
use crate::kafka::{groups, owner};

/// The answer of shard 0's catalog writer: one result per change, and the state after.
pub struct CatalogReply {
    pub results: Vec<Result<(), CatalogError>>,
    pub state: Arc<CatalogState>,
}

pub enum Message {
    /// To shard 0: apply these catalog changes (or only check them).
    Catalog {
        changes: Vec<Change>,
        validate_only: bool,
        reply: ReplyTo<CatalogReply>,
    },
    /// From shard 0 to every shard: a new catalog version.
    CatalogState(Arc<CatalogState>),
    /// To a partition's owner shard: Kafka partition work.
    Kafka(owner::Request, ReplyTo<owner::Reply>),
    /// To a consumer group's coordinator shard.
    Group(groups::Request, ReplyTo<groups::Reply>),
    /// Answered at once: the shard's executor is alive (`/health`).
    Ping(ReplyTo<()>),
    /// A copy of the shard's metrics and state (served by `metrics::snapshot`).
    Stats(ReplyTo<Box<crate::metrics::ShardStats>>),
    /// Shut down one client connection of the shard; answers whether it was open there.
    CloseConnection(u64, ReplyTo<bool>),
    /// AMQP ops for a shard (queue work for an owner, deliveries for a connection).
    Amqp(
        crate::amqp::mesh::Request,
        ReplyTo<crate::amqp::mesh::Reply>,
    ),
    /// The answer to request `id` of the receiving shard (`runtime::reply`).
    Reply(u64, Answer),
}
