//! The messages shards send each other over the glommio channel mesh.
//!
//! One envelope per destination shard per client request, each carrying its reply channel.
//! Record batches travel as `bytes::Bytes`, so they cross shards without a copy. The mesh
//! itself (`glommio::channels::channel_mesh`) is built in `runtime::start`; `Shard::send`
//! is the one place a message leaves its shard, and `Shard::serve` the one place one
//! arrives.

use std::sync::Arc;

use futures::channel::oneshot;

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
        reply: oneshot::Sender<CatalogReply>,
    },
    /// From shard 0 to every shard: a new catalog version.
    CatalogState(Arc<CatalogState>),
    /// To a partition's owner shard: Kafka partition work.
    Kafka(owner::Request, oneshot::Sender<owner::Reply>),
    /// To a consumer group's coordinator shard.
    Group(groups::Request, oneshot::Sender<groups::Reply>),
    /// Answered at once: the shard's executor is alive (`/health`).
    Ping(oneshot::Sender<()>),
    /// A copy of the shard's metrics and state (served by `metrics::snapshot`).
    Stats(oneshot::Sender<Box<crate::metrics::ShardStats>>),
    /// Shut down one client connection of the shard; answers whether it was open there.
    CloseConnection(u64, oneshot::Sender<bool>),
    /// AMQP ops for a shard (queue work for an owner, deliveries for a connection).
    Amqp(
        crate::amqp::mesh::Request,
        oneshot::Sender<crate::amqp::mesh::Reply>,
    ),
}
