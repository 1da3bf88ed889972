//! Committed offsets on disk: `<data_dir>/<shard>/groups/offsets.log`, an append-only log of
//! framed rkyv `OffsetRecord`s (`len u32 | crc32 u32 | payload`, `storage::frame`), compacted by rewriting
//! the live offsets when the log grows to several times their number.
//!
//! One `OffsetStore` per shard, used only by that shard's group coordinator. Appends are
//! group-committed: every commit waiting when the writer wakes is written and fsynced in
//! one go on a blocking-pool thread, and no commit is answered before its fsync.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::channel::oneshot;
use rkyv::{Archive, Deserialize, Serialize};

use crate::util::notify::{Listener, Notify};

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

fn frame(record: &OffsetRecord) -> Result<Vec<u8>, String> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(record).map_err(|e| e.to_string())?;
    Ok(crate::storage::frame::framed(&payload))
}

/// Reads every intact record; returns them and the length of the intact prefix.
fn read_records(data: &[u8]) -> (Vec<OffsetRecord>, usize) {
    let mut out = Vec::new();
    let mut valid = 0;
    for (at, payload) in crate::storage::frame::records(data) {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<OffsetRecord, rkyv::rancor::Error>(&aligned) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        valid = at + crate::storage::frame::HEADER + payload.len();
    }
    (out, valid)
}

/// A commit waiting for its fsync. The sender stays on the coordinator shard (the writer
/// task completes it there; the blocking thread that writes the file never sees it).
type Waiter = (Vec<u8>, oneshot::Sender<Result<(), String>>);

pub struct OffsetStore {
    dir: PathBuf,
    file: RefCell<Option<File>>,
    pending: RefCell<Vec<Waiter>>,
    wake: Notify,
    /// Records in the file, to decide when to compact.
    records: Cell<usize>,
}

const LOG: &str = "offsets.log";

impl OffsetStore {
    /// Opens the store and returns the offsets it holds; a torn tail is cut off.
    pub fn open(dir: &Path) -> std::io::Result<(OffsetStore, Offsets)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG);
        let mut data = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut data)?;
        }
        let (records, valid) = read_records(&data);
        if valid < data.len() {
            log::warn!(
                "{}: dropping a torn tail of {} bytes",
                path.display(),
                data.len() - valid
            );
        }
        let mut offsets = Offsets::new();
        for r in &records {
            apply(&mut offsets, r);
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(valid as u64)?;
        Ok((
            OffsetStore {
                dir: dir.to_owned(),
                file: RefCell::new(Some(file)),
                pending: RefCell::new(Vec::new()),
                wake: Notify::new(),
                records: Cell::new(records.len()),
            },
            offsets,
        ))
    }

    /// Appends records; resolves once they are fsynced.
    pub async fn append(&self, records: &[OffsetRecord]) -> Result<(), String> {
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend(frame(r)?);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().push((bytes, tx));
        self.wake.notify();
        rx.await
            .unwrap_or_else(|_| Err("offset store stopped".into()))
    }

    /// The writer task: one write and one fsync per round for every waiting commit; folds
    /// the log into the live offsets (`live` gives them) when it grows.
    pub async fn run_writer(self: Rc<Self>, live: impl Fn() -> Vec<OffsetRecord>) {
        loop {
            let l = Listener::new();
            l.listen(&self.wake);
            if self.pending.borrow().is_empty() {
                l.await;
            }
            let batch: Vec<Waiter> = std::mem::take(&mut *self.pending.borrow_mut());
            if batch.is_empty() {
                continue;
            }
            let mut buf = Vec::new();
            let mut senders = Vec::new();
            for (bytes, tx) in batch {
                buf.extend(bytes);
                senders.push(tx);
            }
            let Some(mut file) = self.file.borrow_mut().take() else {
                for tx in senders {
                    let _ = tx.send(Err("offset store unavailable".into()));
                }
                continue;
            };
            let (file, result) = glommio::executor()
                .spawn_blocking(move || {
                    // A round the disk refuses (ENOSPC) is cut back off the file: a torn
                    // record left in the middle would hide every later commit on reload.
                    let start = file.metadata().map(|m| m.len());
                    let r = file.write_all(&buf).and_then(|_| file.sync_data());
                    if let (Err(_), Ok(start)) = (&r, start) {
                        let _ = file.set_len(start);
                    }
                    (file, r)
                })
                .await;
            *self.file.borrow_mut() = Some(file);
            let result = result.map_err(|e| {
                log::error!("writing committed offsets: {e}");
                e.to_string()
            });
            if result.is_ok() {
                self.records.set(self.records.get() + senders.len());
            }
            for tx in senders {
                let _ = tx.send(result.clone());
            }
            let live_records = live();
            if self.records.get() > 4 * live_records.len() + 1024 {
                self.compact(live_records).await;
            }
        }
    }

    /// Rewrites the log as just the live offsets (temp file, fsync, rename).
    async fn compact(&self, live: Vec<OffsetRecord>) {
        let dir = self.dir.clone();
        let n = live.len();
        let Some(old) = self.file.borrow_mut().take() else {
            return;
        };
        let result = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<File> {
                let tmp = dir.join("offsets.log.tmp");
                let mut f = File::create(&tmp)?;
                for r in &live {
                    let bytes = frame(r).map_err(std::io::Error::other)?;
                    f.write_all(&bytes)?;
                }
                f.sync_all()?;
                std::fs::rename(&tmp, dir.join(LOG))?;
                if let Ok(d) = File::open(&dir) {
                    let _ = d.sync_all();
                }
                drop(old);
                OpenOptions::new().append(true).open(dir.join(LOG))
            })
            .await;
        match result {
            Ok(f) => {
                *self.file.borrow_mut() = Some(f);
                self.records.set(n);
            }
            Err(e) => {
                log::error!("compacting committed offsets: {e}");
                match OpenOptions::new().append(true).open(self.dir.join(LOG)) {
                    Ok(f) => *self.file.borrow_mut() = Some(f),
                    Err(e) => log::error!("reopening committed offsets: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_and_stop_at_damage() {
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
        let mut data = Vec::new();
        data.extend(frame(&c(5)).unwrap());
        data.extend(frame(&c(9)).unwrap());
        let good = data.len();
        data.extend(frame(&OffsetRecord::DeleteGroup { group: "g".into() }).unwrap());
        data.truncate(data.len() - 2);
        let (records, valid) = read_records(&data);
        assert_eq!(valid, good);
        let mut offsets = Offsets::new();
        records.iter().for_each(|r| apply(&mut offsets, r));
        assert_eq!(offsets["g"][&("t".to_string(), 0)].offset, 9);
    }
}
