//! Catalog persistence under `<data_dir>/0/catalog/`: `snapshot` (one rkyv `CatalogState`)
//! and `log` (rkyv `Change` records appended after it). Every record is framed as
//! `len u32 | crc32 u32 | payload` (crc32fast over the payload; `storage::frame`, the
//! broker's one framing), so a torn last record is detected and dropped on load.
//!
//! Loaded once in `main` before the shards start; afterwards only shard 0's writer appends,
//! from a blocking-pool thread (`spawn_blocking`) so the reactor never waits on fsync.
//!
//! Full disks: loading writes nothing (a torn tail is cut with `set_len`, which frees
//! space). An append the disk refuses is cut back off the log, so the log never holds a
//! torn record that would hide the records after it. `reserve` is a small file of zeros
//! kept beside the log while space allows; when a change that frees space (deleting a
//! topic, queue or exchange, unbinding) cannot be appended for want of space, the reserve
//! is deleted and the append retried, so an operator can always free space through the
//! broker. It is re-created after a later append when space allows. Snapshots are an
//! optimisation: one that cannot be written leaves the log as it is (already durable).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{CatalogError, CatalogState, Change};
use crate::storage::frame::{framed as frame, split as unframe};

const SNAPSHOT: &str = "snapshot";
const LOG: &str = "log";
const RESERVE: &str = "reserve";
/// Bytes set aside for catalog appends that free space: many delete records, and the
/// blocks a filesystem may need to grow the log file.
const RESERVE_BYTES: usize = 256 << 10;
/// Log records after which the writer folds the log into a new snapshot.
const SNAPSHOT_EVERY: usize = 256;

pub struct CatalogStore {
    dir: PathBuf,
    log: File,
    /// Bytes of whole records in the log.
    log_len: u64,
    records: usize,
    /// The reserve file is in place.
    reserved: bool,
}

fn is_no_space(e: &std::io::Error) -> bool {
    crate::storage::disk::is_no_space(e)
}

/// Writes the reserve file (zeros, synced); false when the disk cannot hold it now.
fn make_reserve(dir: &Path) -> bool {
    let path = dir.join(RESERVE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize >= RESERVE_BYTES) {
        return true;
    }
    let made = File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; RESERVE_BYTES])
            .and_then(|_| f.sync_all())
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made.is_ok()
}

fn storage(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Storage(e.to_string())
}

fn decode<T>(payload: &[u8]) -> Result<T, CatalogError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).map_err(storage)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl CatalogStore {
    /// Opens (creating if needed) the catalog in `dir` and returns its latest state.
    pub fn open(dir: &Path) -> Result<(CatalogStore, CatalogState), CatalogError> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let mut state = CatalogState::default();
        if let Ok(data) = std::fs::read(dir.join(SNAPSHOT)) {
            let (records, _) = unframe(&data);
            match records.first() {
                Some(p) => {
                    state = decode(p)?;
                    // The security state follows as a record of its own (absent in
                    // snapshots written before it existed).
                    if let Some(security) = records.get(1) {
                        state.security = decode(security)?;
                    }
                }
                None if !data.is_empty() => {
                    return Err(CatalogError::Storage(format!(
                        "{}: snapshot is corrupt",
                        dir.join(SNAPSHOT).display()
                    )))
                }
                None => {}
            }
        }
        let log_path = dir.join(LOG);
        let mut data = Vec::new();
        if let Ok(mut f) = File::open(&log_path) {
            f.read_to_end(&mut data).map_err(storage)?;
        }
        let (records, valid) = unframe(&data);
        let mut count = 0;
        for payload in &records {
            let (version, change): (u64, Change) = decode(payload)?;
            if version > state.version {
                state.apply(&change);
                // Versions of transient (unpersisted) AMQP changes leave gaps.
                if state.version > version {
                    return Err(CatalogError::Storage(format!(
                        "catalog log out of sequence at version {version}"
                    )));
                }
                state.version = version;
            }
            count += 1;
        }
        if valid < data.len() {
            log::warn!(
                "catalog log: dropping a torn tail of {} bytes at byte {valid}",
                data.len() - valid
            );
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(storage)?;
        log.set_len(valid as u64).map_err(storage)?;
        // Made now when space allows; a full disk only means none for now.
        let reserved = make_reserve(dir);
        Ok((
            CatalogStore {
                dir: dir.to_owned(),
                log,
                log_len: valid as u64,
                records: count,
                reserved,
            },
            state,
        ))
    }

    /// Appends changes, each with the version it produced, and syncs once; `state` is the
    /// state after the last. Folds the log into a snapshot every `SNAPSHOT_EVERY` records.
    /// With `may_use_reserve` (changes that free space), a full disk gives up the reserve
    /// for this append. On error the log is as it was before.
    pub fn append(
        &mut self,
        records: &[(u64, Change)],
        state: &CatalogState,
        may_use_reserve: bool,
    ) -> Result<(), CatalogError> {
        let mut buf = Vec::new();
        for record in records {
            let payload = rkyv::to_bytes::<rkyv::rancor::Error>(record).map_err(storage)?;
            buf.extend_from_slice(&frame(&payload));
        }
        let mut written = self.write_records(&buf);
        if let Err(e) = &written {
            if may_use_reserve && is_no_space(e) && self.reserved {
                log::warn!(
                    "catalog: disk full; releasing the {RESERVE_BYTES}-byte reserve for a change that frees space"
                );
                let _ = std::fs::remove_file(self.dir.join(RESERVE));
                self.reserved = false;
                written = self.write_records(&buf);
            }
        }
        written.map_err(|e| {
            if is_no_space(&e) {
                CatalogError::NoSpace(e.to_string())
            } else {
                storage(e)
            }
        })?;
        self.records += records.len();
        if self.records >= SNAPSHOT_EVERY {
            if let Err(e) = self.snapshot(state) {
                // The records are durable in the log; the fold is retried next time.
                log::warn!("catalog: snapshot not written ({e}); the log keeps the changes");
                let _ = std::fs::remove_file(self.dir.join("snapshot.tmp"));
            }
        }
        if !self.reserved {
            self.reserved = make_reserve(&self.dir);
        }
        Ok(())
    }

    /// Appends framed records and syncs; on failure cuts the log back to its whole records.
    fn write_records(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let r = self.log.write_all(buf).and_then(|_| self.log.sync_data());
        match r {
            Ok(()) => {
                self.log_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.log.set_len(self.log_len) {
                    log::error!("catalog: cutting a failed append off the log: {cut}");
                }
                let _ = self.log.sync_data();
                Err(e)
            }
        }
    }

    /// Writes `state` as the new snapshot (temp file, fsync, rename) and empties the log.
    pub fn snapshot(&mut self, state: &CatalogState) -> Result<(), CatalogError> {
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(state).map_err(storage)?;
        let security = rkyv::to_bytes::<rkyv::rancor::Error>(&state.security).map_err(storage)?;
        let tmp = self.dir.join("snapshot.tmp");
        let mut f = File::create(&tmp).map_err(storage)?;
        let mut both = frame(&payload);
        both.extend_from_slice(&frame(&security));
        f.write_all(&both).map_err(storage)?;
        f.sync_all().map_err(storage)?;
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT)).map_err(storage)?;
        sync_dir(&self.dir);
        self.log.set_len(0).map_err(storage)?;
        self.log.sync_all().map_err(storage)?;
        self.log_len = 0;
        self.records = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Topic;
    use std::collections::BTreeMap;

    fn topic(name: &str) -> Topic {
        Topic {
            name: name.into(),
            id: [7; 16],
            partitions: 3,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn survives_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut state) = CatalogStore::open(dir.path()).unwrap();
        for name in ["a", "b"] {
            let c = Change::CreateTopic(topic(name));
            state.apply(&c);
            store.append(&[(state.version, c)], &state, false).unwrap();
        }
        drop(store);
        // A torn record at the end is dropped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
        drop(f);
        let (mut store, mut reopened) = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(reopened, state);
        reopened.apply(&Change::DeleteTopic("a".into()));
        store.snapshot(&reopened).unwrap();
        let c = Change::SetPartitions("b".into(), 5);
        reopened.apply(&c);
        store
            .append(&[(reopened.version, c)], &reopened, false)
            .unwrap();
        let (_, again) = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(again, reopened);
        // The reserve for deletes on a full disk is in place.
        assert_eq!(
            std::fs::metadata(dir.path().join(RESERVE)).unwrap().len() as usize,
            RESERVE_BYTES
        );
        assert_eq!(again.topics["b"].partitions, 5);
        assert!(!again.topics.contains_key("a"));
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;
    use crate::catalog::security::{AclBinding, ScramCredential, SecurityChange};

    fn acl() -> AclBinding {
        AclBinding {
            resource_type: 2,
            resource_name: "alice.".into(),
            pattern_type: 4,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: 2,
            permission_type: 3,
        }
    }

    #[test]
    fn acls_and_credentials_survive_the_log_and_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut state) = CatalogStore::open(dir.path()).unwrap();
        let changes = [
            SecurityChange::AddAcls(vec![acl()]),
            SecurityChange::SetScram {
                user: "alice".into(),
                credential: ScramCredential {
                    mechanism: 2,
                    salt: vec![1; 16],
                    iterations: 4096,
                    stored_key: vec![2; 64],
                    server_key: vec![3; 64],
                },
            },
        ];
        for c in changes {
            let c = Change::Security(Box::new(c));
            state.apply(&c);
            store.append(&[(state.version, c)], &state, false).unwrap();
        }
        let (mut store, reopened) = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(reopened, state);
        assert_eq!(reopened.security.acls, vec![acl()]);
        store.snapshot(&reopened).unwrap();
        let (_, again) = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(again, state);
        assert_eq!(again.security.scram["alice"][0].iterations, 4096);
    }

    #[test]
    fn a_snapshot_without_the_security_record_still_loads() {
        // Snapshots written before the security state existed hold the main record only.
        let dir = tempfile::tempdir().unwrap();
        let mut state = CatalogState::default();
        state.apply(&Change::SetBrokerConfigs(
            [("retention.ms".to_owned(), "1000".to_owned())].into(),
        ));
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&state).unwrap();
        std::fs::write(dir.path().join(SNAPSHOT), frame(&payload)).unwrap();
        let (_, loaded) = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(loaded, state);
        assert!(loaded.security.acls.is_empty());
    }
}
