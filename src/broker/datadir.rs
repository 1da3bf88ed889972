//! The data directory as a whole: its lock (one broker per directory), its numbered shard
//! directories, and moving partition directories to their owner when the shard count
//! changed since the last run.
//!
//! Runs once on the main thread before any shard starts.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::StartError;
use crate::storage::Storage;
use crate::util::partition_owner;

/// Holds the data directory's lock file for the life of the process.
pub struct DataDirLock {
    _file: File,
}

/// Takes an exclusive `flock` on `<data_dir>/.lock`, refusing a second broker.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, StartError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir(dir.to_owned(), e))?;
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(|e| StartError::DataDir(dir.to_owned(), e))?;
    // SAFETY: flock takes a descriptor and flags, no pointers; `file` is ours and open for
    // the call (and stays open, holding the lock, as long as `DataDirLock`).
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(StartError::Locked(dir.to_owned(), path));
    }
    Ok(DataDirLock { _file: file })
}

/// The numbered shard directories under the data root, as (shard id, path).
pub fn shard_dirs(data_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<usize>().ok()?, e.path())))
        .collect()
}

/// Moves partition directories to their owner shard when the shard count changed since
/// the last run (ownership is a hash onto the shard count).
pub fn migrate_ownership(data_dir: &Path, shards: usize) -> std::io::Result<()> {
    for (from, dir) in shard_dirs(data_dir) {
        let kafka = dir.join("kafka");
        let Ok(parts) = std::fs::read_dir(&kafka) else {
            continue;
        };
        for part in parts.filter_map(|e| e.ok()) {
            let name = part.file_name();
            let Some((topic, p)) = name.to_str().and_then(Storage::parse_dir_name) else {
                continue;
            };
            let to = partition_owner(&topic, p, shards);
            if to != from {
                let dest_dir = data_dir.join(to.to_string()).join("kafka");
                std::fs::create_dir_all(&dest_dir)?;
                log::info!("moving {topic}-{p} from shard {from} to shard {to}");
                std::fs::rename(part.path(), dest_dir.join(&name))?;
                // The marker no longer describes the moved files' shard: force recovery.
                let _ = std::fs::remove_file(data_dir.join(to.to_string()).join(".clean_shutdown"));
            }
        }
    }
    Ok(())
}
