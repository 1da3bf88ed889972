//! The message store of this shard's durable queues (stub: persistence lands in step 3).

use std::path::PathBuf;
use std::rc::Rc;

use super::mesh::ConfirmTo;
use super::queue::{confirm_to, Entry};
use super::routing::QueueRef;
use crate::config::Config;
use crate::runtime::shard::Shard;

pub struct Store {
    #[allow(dead_code)]
    root: PathBuf,
}

impl Store {
    pub fn new(config: &Config, shard: usize) -> Store {
        Store {
            root: config.data_dir.join(shard.to_string()).join("amqp"),
        }
    }

    pub fn append(&self, shard: &Rc<Shard>, _q: &QueueRef, _e: &Entry, confirm: Option<ConfirmTo>) {
        if let Some(c) = confirm {
            confirm_to(shard, c, true);
        }
    }

    pub fn ack(&self, _q: &QueueRef, _seq: u64) {}

    pub fn delivered(&self, _q: &QueueRef, _seq: u64) {}

    pub fn remove_queue(&self, _shard: &Rc<Shard>, _q: &QueueRef) {}
}

/// Recovers this shard's durable queues; returns how many.
pub async fn recover(_shard: &Rc<Shard>) -> std::io::Result<usize> {
    Ok(0)
}

impl Store {
    pub async fn shutdown(&self) {}
}
