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
        if slots.len() >= 32 {
            slots.retain(|w| w.strong_count() > 0);
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
