//! `SmallDisk`: a small ext4 filesystem in a loop-mounted image (root only), for tests that
//! need a disk that fills up. `fill_leaving` takes the free space down to an exact level
//! with a filler file outside the broker's data directory; `free_filler` gives it back.
//! Dropping it unmounts the filesystem and deletes the image.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    pub mount: PathBuf,
    image: PathBuf,
    filler: PathBuf,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Bytes free on the filesystem holding `path` (what ext4 will allocate to a file).
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs fills the zeroed struct we pass; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs");
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl SmallDisk {
    /// A fresh ext4 filesystem of `mib` MiB (no blocks reserved for root), or `None` with
    /// the reason printed when this machine cannot loop-mount (not root, no loop device).
    pub fn new(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        let made = (|| {
            std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
            run(Command::new("truncate")
                .arg("-s")
                .arg(format!("{mib}M"))
                .arg(&image))?;
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image))?;
            run(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&image)
                .arg(&mount))
        })();
        if let Err(e) = made {
            eprintln!("SKIPPED: cannot make a small loop-mounted filesystem here: {e}");
            return None;
        }
        let filler = mount.join("filler");
        Some(SmallDisk {
            mount,
            image,
            filler,
            _dir: dir,
        })
    }

    /// The broker's data directory on this filesystem, reached through a symlink beside
    /// the image, so the broker's log (`<data>.log`, see `Broker`) is written off the
    /// small filesystem and keeps growing while it is full.
    pub fn data_dir(&self) -> PathBuf {
        let link = self._dir.path().join("data");
        if !link.exists() {
            let real = self.mount.join("data");
            std::fs::create_dir_all(&real).expect("data dir");
            std::os::unix::fs::symlink(&real, &link).expect("symlink");
        }
        link
    }

    pub fn free(&self) -> u64 {
        free_bytes(&self.mount)
    }

    /// Grows the filler file until at most `leave` bytes are free (to the block).
    pub fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        use std::os::unix::io::AsRawFd;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("filler");
        // Big steps first (fallocate), then block by block, so the level is exact.
        const STEP: u64 = 4 << 20;
        while self.free() > leave + 2 * STEP {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            // SAFETY: fallocate on a file descriptor we own, for a range past its end.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, len as i64, STEP as i64) };
            if r != 0 {
                break;
            }
        }
        let block = vec![0x46u8; 4096];
        while self.free() > leave {
            if f.write_all(&block).and_then(|_| f.sync_all()).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
    }

    /// Fills the filesystem completely (again while blocks freed by a journal commit
    /// keep turning up).
    pub fn fill(&self) {
        use std::io::Write;
        for _ in 0..20 {
            self.fill_leaving(0);
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.filler)
                .expect("filler");
            let byte = [0x46u8; 512];
            while f.write_all(&byte).and_then(|_| f.sync_all()).is_ok() {}
            std::thread::sleep(std::time::Duration::from_millis(100));
            if self.free() < 16 << 10 {
                return;
            }
        }
    }

    /// Removes the filler file: the space comes back.
    pub fn free_filler(&self) {
        let _ = std::fs::remove_file(&self.filler);
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
        let _ = std::fs::remove_file(&self.image);
    }
}
