//! `Notify`: a single-shard wake-up for tasks waiting on local state (new data in a
//! partition, a catalog version, a finished sync).
//!
//! Lives inside one shard only (`Rc`, `Cell`, no atomics). A waiter holds a `Listener`; when
//! the listener is dropped its slot dies, so a partition nobody writes to does not collect
//! stale wakers from long polls that timed out.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Slot {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Something tasks on this shard can wait for.
#[derive(Default)]
pub struct Notify {
    slots: RefCell<Vec<Weak<Slot>>>,
    /// The length at which `register` next drops dead slots: twice what was live after the
    /// last sweep (at least 32). A `Notify` that thousands of tasks stay registered on
    /// (every idle connection listens to its shard's `stop`) is swept once per that many
    /// registrations, not scanned whole at each one.
    sweep_at: Cell<usize>,
}

impl Notify {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every listener registered so far.
    pub fn notify(&self) {
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.fired.set(true);
            if let Some(w) = slot.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    fn register(&self, slot: &Rc<Slot>) {
        let mut slots = self.slots.borrow_mut();
        if slots.len() >= self.sweep_at.get().max(32) {
            slots.retain(|w| w.strong_count() > 0);
            self.sweep_at.set(slots.len() * 2);
        }
        slots.push(Rc::downgrade(slot));
    }
}

/// A registration on one or more `Notify`s; resolves once any of them fires after it was
/// made.
pub struct Listener {
    slot: Rc<Slot>,
}

impl Listener {
    pub fn new() -> Self {
        Listener {
            slot: Rc::new(Slot::default()),
        }
    }

    /// Adds one more source; call before awaiting.
    pub fn listen(&self, notify: &Notify) {
        notify.register(&self.slot);
    }

    pub fn fired(&self) -> bool {
        self.slot.fired.get()
    }
}

impl Default for Listener {
    fn default() -> Self {
        Self::new()
    }
}

impl Future for Listener {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.fired.get() {
            return Poll::Ready(());
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_registrations_are_swept_in_amortised_constant_time() {
        let n = Notify::new();
        let live: Vec<Listener> = (0..1000)
            .map(|_| {
                let l = Listener::new();
                l.listen(&n);
                l
            })
            .collect();
        // Registrations that die at once (a read that completed) do not pile up, and a
        // sweep happens at most once per `live` registrations.
        let mut sweeps = 0;
        let mut last = n.slots.borrow().len();
        for _ in 0..10_000 {
            Listener::new().listen(&n);
            let len = n.slots.borrow().len();
            if len < last {
                sweeps += 1;
            }
            last = len;
            assert!(len <= 2 * live.len() + 1, "{len} slots");
        }
        assert!(sweeps <= 10_000 / live.len() + 1, "{sweeps} sweeps");
        n.notify();
        assert!(live.iter().all(Listener::fired));
    }
}
