//! `DiskGuard`: the free-space watermark of one shard (`storage.min_free_bytes`, RabbitMQ's
//! `disk_free_limit`).
//!
//! Each shard owns one (inside its `Storage`) and runs `DiskGuard::run`, which reads
//! statvfs on the data directory every second; a failed write asks for a reading at once
//! (`DiskGuard::check`). While free space is below the watermark the alarm is on: Kafka and
//! REST produce are refused (KAFKA_STORAGE_ERROR, 507), AMQP connections that publish are
//! sent `connection.blocked` and not read until `changed` fires with the alarm off.
//! Reads, consumer acks, deletes and retention are never refused, so an operator can free
//! space through the broker. Shard-local `Cell`s only: every shard reads the same
//! filesystem, so each decides on its own reading.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::notify::Notify;

/// How often the free space is read when nothing failed.
const INTERVAL: Duration = Duration::from_secs(1);
/// At most one "refused" log line per this many milliseconds.
const LOG_EVERY_MS: i64 = 10_000;

pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    free: Cell<u64>,
    alarm: Cell<bool>,
    last_refusal_log_ms: Cell<i64>,
    /// Fired when the alarm turns on or off.
    pub changed: Notify,
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we pass by pointer, and `c` is a
    // NUL-terminated path that outlives the call.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// Whether an I/O error means the filesystem is out of space (or quota).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl DiskGuard {
    pub fn new(dir: PathBuf, min_free: u64) -> DiskGuard {
        DiskGuard {
            dir,
            min_free,
            free: Cell::new(u64::MAX),
            alarm: Cell::new(false),
            last_refusal_log_ms: Cell::new(i64::MIN / 2),
            changed: Notify::new(),
        }
    }

    /// Below the watermark: new data is refused.
    pub fn alarm(&self) -> bool {
        self.alarm.get()
    }

    /// Free bytes at the last reading.
    pub fn free(&self) -> u64 {
        self.free.get()
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Reads the free space now and turns the alarm on or off.
    pub fn check(&self) {
        // The data directory may not exist yet on a fresh start: read its parent then.
        let free = free_bytes(&self.dir)
            .or_else(|| self.dir.parent().and_then(free_bytes))
            .unwrap_or(u64::MAX);
        self.free.set(free);
        let alarm = self.min_free > 0 && free < self.min_free;
        if alarm != self.alarm.get() {
            self.alarm.set(alarm);
            if alarm {
                log::warn!(
                    "disk alarm: {} bytes free on {} is below storage.min_free_bytes {}; publishes are blocked and produce is refused until space is freed",
                    free,
                    self.dir.display(),
                    self.min_free
                );
            } else {
                log::warn!(
                    "disk alarm cleared: {} bytes free on {}; writes resume",
                    free,
                    self.dir.display()
                );
            }
            self.changed.notify();
        }
    }

    /// Whether to refuse a write now; says why in a log line (at most one per 10 s).
    pub fn refuse(&self, what: &str) -> bool {
        if !self.alarm.get() {
            return false;
        }
        let now = crate::storage::log::now_ms();
        if now - self.last_refusal_log_ms.get() >= LOG_EVERY_MS {
            self.last_refusal_log_ms.set(now);
            log::warn!(
                "{what} refused: {} bytes free on {}, below storage.min_free_bytes {} (free space to resume)",
                self.free.get(),
                self.dir.display(),
                self.min_free
            );
        }
        true
    }

    /// A write failed for want of space: read the free space again now.
    pub fn write_failed(&self) {
        self.check();
    }

    /// The periodic reading; runs for the shard's life.
    pub async fn run(&self) {
        loop {
            self.check();
            glommio::timer::sleep(INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_zero_never_alarms_and_a_huge_one_always_does() {
        let dir = tempfile::tempdir().unwrap();
        let off = DiskGuard::new(dir.path().to_owned(), 0);
        off.check();
        assert!(!off.alarm());
        assert!(off.free() > 0);
        let on = DiskGuard::new(dir.path().to_owned(), u64::MAX);
        on.check();
        assert!(on.alarm());
        assert!(on.refuse("test write"));
    }

    #[test]
    fn no_space_errors_are_recognised() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(
            libc::ENOSPC
        )));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(libc::EIO)));
    }
}
