//! Process-wide stop signal: SIGINT/SIGTERM set a flag that every shard polls; a second
//! signal exits at once.
//!
//! The signal thread is the only writer; shards read the flag from a timer on the control
//! path (never on the data path). `drained` counts shards that have finished serving, so
//! no shard flushes and leaves while another may still send it work; `ready` counts shards
//! that have finished starting, for `/health/ready`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    drained: AtomicUsize,
    /// Shards that have recovered and bound every listener (`/health/ready`).
    ready: AtomicUsize,
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
                    if me.requested.swap(true, Ordering::SeqCst) {
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

    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once a stop has been requested.
    pub async fn wait_requested(&self) {
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
