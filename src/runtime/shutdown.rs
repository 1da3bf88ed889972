//! Process-wide stop signal: SIGINT/SIGTERM set a flag and wake every shard; a second
//! signal exits at once.
//!
//! A shard waits for the stop on a socket pair: it reads one end through its reactor, and
//! `request` (the signal thread, or a shard that failed to start) closes the other ends,
//! so an idle shard is woken once, by the stop, and not by a polling timer. `drained` counts shards that have finished serving, so
//! no shard flushes and leaves while another may still send it work; `ready` counts shards
//! that have finished starting, for `/health/ready`.

use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncReadExt;

#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    drained: AtomicUsize,
    /// Shards that have recovered and bound every listener (`/health/ready`).
    ready: AtomicUsize,
    /// The far ends of the socket pairs shards wait on (`wait_requested`): dropping them
    /// ends those waits.
    waiting: Mutex<Vec<UnixStream>>,
}

impl Shutdown {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs SIGINT/SIGTERM handlers: the first requests a clean stop, the second
    /// forces exit.
    pub fn install_signals(self: &Arc<Self>) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if me.request() {
                        log::warn!("second signal {sig}: exiting now");
                        std::process::exit(130);
                    }
                    log::info!("signal {sig}: stopping (send again to force)");
                }
            })?;
        Ok(())
    }

    /// This shard has recovered and its listeners are bound.
    pub fn mark_ready(&self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
    }

    /// Every one of `shards` has recovered and bound its listeners.
    pub fn all_ready(&self, shards: usize) -> bool {
        self.ready.load(Ordering::SeqCst) >= shards
    }

    /// Asks every shard to stop; returns whether a stop had been asked already.
    pub fn request(&self) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.requested.swap(true, Ordering::SeqCst);
        // Each waiting shard reads end-of-file and wakes.
        waiting.clear();
        before
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once a stop has been requested; waits on a socket the stop closes (polls
    /// every 50 ms only if no socket pair can be made).
    pub async fn wait_requested(&self) {
        match UnixStream::pair() {
            Ok((near, far)) => {
                {
                    let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                    if self.requested() {
                        return;
                    }
                    waiting.push(far);
                }
                // SAFETY: `into_raw_fd` hands over the only owner of a descriptor this
                // function just created, so the glommio stream becomes its sole owner and
                // closes it exactly once.
                let mut near = unsafe { glommio::net::UnixStream::from_raw_fd(near.into_raw_fd()) };
                // End of file once `request` drops the far end (an error ends it too).
                let mut byte = [0u8; 1];
                let _ = near.read(&mut byte).await;
            }
            Err(e) => log::warn!("no socket pair to wait for a stop on ({e}); polling"),
        }
        while !self.requested() {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks this shard drained and waits until every shard is (or the deadline passes).
    pub async fn drained_barrier(&self, shards: usize, deadline: std::time::Instant) {
        self.drained.fetch_add(1, Ordering::SeqCst);
        while self.drained.load(Ordering::SeqCst) < shards && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}
