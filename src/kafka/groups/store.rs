//! Committed offsets on disk: `<data_dir>/<shard>/groups/offsets.log`, a
//! `storage::record_log::RecordLog` of rkyv `OffsetRecord`s, folded into the live offsets
//! when the log grows to several times their number.
//!
//! One `OffsetStore` per shard, used only by that shard's group coordinator. Appends are
//! group-committed: every commit waiting when the writer wakes is written and fsynced in
//! one go on a blocking-pool thread, and no commit is answered before its fsync.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use rkyv::{Archive, Deserialize, Serialize};

use crate::storage::record_log::{self, RecordLog};

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum OffsetRecord {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        value: Committed,
    },
    Delete {
        group: String,
        topic: String,
        partition: i32,
    },
    DeleteGroup {
        group: String,
    },
}

/// group → (topic, partition) → committed offset
pub type Offsets = HashMap<String, HashMap<(String, i32), Committed>>;

pub fn apply(offsets: &mut Offsets, record: &OffsetRecord) {
    match record {
        OffsetRecord::Commit {
            group,
            topic,
            partition,
            value,
        } => {
            offsets
                .entry(group.clone())
                .or_default()
                .insert((topic.clone(), *partition), value.clone());
        }
        OffsetRecord::Delete {
            group,
            topic,
            partition,
        } => {
            if let Some(g) = offsets.get_mut(group) {
                g.remove(&(topic.clone(), *partition));
                if g.is_empty() {
                    offsets.remove(group);
                }
            }
        }
        OffsetRecord::DeleteGroup { group } => {
            offsets.remove(group);
        }
    }
}

fn encode(record: &OffsetRecord) -> Result<Vec<u8>, String> {
    rkyv::to_bytes::<rkyv::rancor::Error>(record)
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// The records of a log's payloads, in order; one that does not decode is skipped with a
/// log line (its frame was intact, so the records after it are still good).
fn read_records(payloads: &[Vec<u8>]) -> Vec<OffsetRecord> {
    payloads
        .iter()
        .filter_map(|p| {
            let r = record_log::decode(p);
            if r.is_none() {
                log::warn!("{LOG}: skipping a record that does not decode");
            }
            r
        })
        .collect()
}

pub struct OffsetStore {
    log: Rc<RecordLog>,
}

const LOG: &str = "offsets.log";

impl OffsetStore {
    /// Opens the store and returns the offsets it holds; a torn tail is cut off.
    pub fn open(dir: &Path) -> std::io::Result<(OffsetStore, Offsets)> {
        let (log, payloads) = RecordLog::open(dir, LOG)?;
        let mut offsets = Offsets::new();
        for r in &read_records(&payloads) {
            apply(&mut offsets, r);
        }
        Ok((OffsetStore { log: Rc::new(log) }, offsets))
    }

    /// Appends records; resolves once they are fsynced.
    pub async fn append(&self, records: &[OffsetRecord]) -> Result<(), String> {
        let payloads = records.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        self.log.append(&payloads).await
    }

    /// The writer task: one write and one fsync per round for every waiting commit; folds
    /// the log into the live offsets (`live` gives them) when it grows.
    pub async fn run_writer(self: Rc<Self>, live: impl Fn() -> Vec<OffsetRecord>) {
        self.log
            .clone()
            .run_writer(move || live().iter().filter_map(|r| encode(r).ok()).collect())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store reopened on a file with a record that does not decode in the middle and a
    /// torn one at the end: the intact records replay (the undecodable one skipped), and
    /// the torn tail is cut off.
    #[test]
    fn records_replay_skip_what_does_not_decode_and_cut_a_torn_tail() {
        let c = |o| OffsetRecord::Commit {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Committed {
                offset: o,
                leader_epoch: -1,
                metadata: String::new(),
                commit_ms: 0,
            },
        };
        let frame = |r: &OffsetRecord| crate::storage::frame::framed(&encode(r).unwrap());
        let mut data = Vec::new();
        data.extend(frame(&c(5)));
        data.extend(crate::storage::frame::framed(b"not an offset record"));
        data.extend(frame(&c(9)));
        let good = data.len();
        data.extend(frame(&OffsetRecord::DeleteGroup { group: "g".into() }));
        data.truncate(data.len() - 2);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG), &data).unwrap();
        let (_store, offsets) = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(offsets["g"][&("t".to_string(), 0)].offset, 9);
        let len = std::fs::metadata(dir.path().join(LOG)).unwrap().len();
        assert_eq!(len as usize, good);
    }
}
