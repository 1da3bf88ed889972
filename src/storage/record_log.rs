//! A small durable record log for coordinator state: `<dir>/<name>`, an append-only file of
//! framed records (`storage::frame`: `len u32 | crc32 u32 | payload`), group-committed and
//! fdatasync'ed before any append resolves, folded into the live records (temp file, fsync,
//! rename) when it grows to several times their number.
//!
//! The payloads are opaque here; each user encodes its own rkyv records (`decode` reads
//! one back): the groups' committed offsets (`groups::store`, `groups/offsets.log`), the
//! transaction coordinator (`txn::Coordinator`, `transactions/transactions.log`) and the
//! pending transactional offsets (`groups::txn_offsets`, `groups/txn-offsets.log`). One log
//! per user per shard, used only on that shard; the blocking-pool thread that writes the
//! file never sees a waiter.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::channel::oneshot;

use crate::util::notify::{Listener, Notify};

type Waiter = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// One rkyv record read back from a payload (copied to an aligned buffer first); `None`
/// when it does not decode.
pub fn decode<T>(payload: &[u8]) -> Option<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).ok()
}

pub struct RecordLog {
    dir: PathBuf,
    name: &'static str,
    file: RefCell<Option<File>>,
    pending: RefCell<Vec<Waiter>>,
    wake: Notify,
    /// Records in the file, to decide when to fold it.
    records: Cell<usize>,
}

impl RecordLog {
    /// Opens (creating) `dir/name` and returns the payloads of its intact records, oldest
    /// first; a torn tail is cut off and logged.
    pub fn open(dir: &Path, name: &'static str) -> std::io::Result<(RecordLog, Vec<Vec<u8>>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let mut data = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut data)?;
        }
        let (payloads, valid) = crate::storage::frame::split(&data);
        let payloads: Vec<Vec<u8>> = payloads.into_iter().map(|p| p.to_vec()).collect();
        if valid < data.len() {
            log::warn!(
                "{}: dropping a torn tail of {} bytes",
                path.display(),
                data.len() - valid
            );
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(valid as u64)?;
        let n = payloads.len();
        Ok((
            RecordLog {
                dir: dir.to_owned(),
                name,
                file: RefCell::new(Some(file)),
                pending: RefCell::new(Vec::new()),
                wake: Notify::new(),
                records: Cell::new(n),
            },
            payloads,
        ))
    }

    /// Appends `payloads` as one write; resolves once they are on disk (fdatasync).
    pub async fn append(&self, payloads: &[Vec<u8>]) -> Result<(), String> {
        let mut bytes = Vec::new();
        for p in payloads {
            crate::storage::frame::put(p, &mut bytes);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().push((bytes, tx));
        self.wake.notify();
        rx.await
            .unwrap_or_else(|_| Err(format!("{} writer stopped", self.name)))
    }

    /// The writer task (one per log, runs until the executor ends): one write and one
    /// fdatasync per round for every waiting append; folds the file into `live()` (the
    /// payloads that rebuild the current state) when it holds over four times as many
    /// records plus 1024.
    pub async fn run_writer(self: Rc<Self>, live: impl Fn() -> Vec<Vec<u8>>) {
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
                    let _ = tx.send(Err(format!("{} unavailable", self.name)));
                }
                continue;
            };
            let (file, result) = glommio::executor()
                .spawn_blocking(move || {
                    // A round the disk refuses is cut back off: a torn record in the middle
                    // would hide every later one on reload.
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
                log::error!("writing {}: {e}", self.name);
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
                self.fold(live_records).await;
            }
        }
    }

    /// Rewrites the file as just `live` (temp file, fsync, rename, directory fsync).
    async fn fold(&self, live: Vec<Vec<u8>>) {
        let dir = self.dir.clone();
        let name = self.name;
        let n = live.len();
        let Some(old) = self.file.borrow_mut().take() else {
            return;
        };
        let result = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<File> {
                let tmp = dir.join(format!("{name}.tmp"));
                let mut f = File::create(&tmp)?;
                let mut buf = Vec::new();
                for p in &live {
                    crate::storage::frame::put(p, &mut buf);
                }
                f.write_all(&buf)?;
                f.sync_all()?;
                std::fs::rename(&tmp, dir.join(name))?;
                if let Ok(d) = File::open(&dir) {
                    let _ = d.sync_all();
                }
                drop(old);
                OpenOptions::new().append(true).open(dir.join(name))
            })
            .await;
        match result {
            Ok(f) => {
                *self.file.borrow_mut() = Some(f);
                self.records.set(n);
            }
            Err(e) => {
                log::error!("folding {}: {e}", self.name);
                match OpenOptions::new()
                    .append(true)
                    .open(self.dir.join(self.name))
                {
                    Ok(f) => *self.file.borrow_mut() = Some(f),
                    Err(e) => log::error!("reopening {}: {e}", self.name),
                }
            }
        }
    }
}
