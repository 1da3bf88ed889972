//! The fuzz binary's global allocator: the system allocator, counting what the current
//! thread asks for while it decodes one input (`measure`): the largest single request and
//! the peak of live bytes. A request above `ABORT_BYTES` is never passed on: the input
//! being decoded is printed (hex, with the seed that made it) and the process aborts, so a
//! decoder that pre-allocates from a wire count fails the test loudly instead of taking
//! the machine's memory or dying in the allocator with no input to reproduce it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A request this large made by a decoder is a bug whatever the input (the broker's
/// largest frame is `kafka.max_request_bytes`, 100 MiB by default).
pub const ABORT_BYTES: usize = 1 << 30;

pub struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static INPUT: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
    static SEED: Cell<u64> = const { Cell::new(0) };
    static CASE: Cell<u64> = const { Cell::new(0) };
}

/// What one decode allocated.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// The largest single allocation (or reallocation) asked for, in bytes.
    pub largest: usize,
    /// The most bytes the decode held at once (its own allocations less its frees).
    pub peak: usize,
}

/// Runs `f` counting this thread's allocations; `input`, `seed` and `case` are what gets
/// printed should `f` ask for more than `ABORT_BYTES` at once.
pub fn measure<R>(input: &[u8], (seed, case): (u64, u64), f: impl FnOnce() -> R) -> (R, Usage) {
    INPUT.with(|i| i.set((input.as_ptr(), input.len())));
    SEED.with(|s| s.set(seed));
    CASE.with(|s| s.set(case));
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    ON.with(|c| c.set(true));
    let r = f();
    ON.with(|c| c.set(false));
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
    };
    INPUT.with(|i| i.set((std::ptr::null(), 0)));
    (r, usage)
}

fn grow(size: usize) {
    if !ON.with(Cell::get) {
        return;
    }
    if size > ABORT_BYTES {
        too_large(size);
    }
    LARGEST.with(|c| c.set(c.get().max(size)));
    let live = LIVE.with(|c| {
        c.set(c.get() + size as isize);
        c.get()
    });
    PEAK.with(|c| c.set(c.get().max(live)));
}

fn shrink(size: usize) {
    if ON.with(Cell::get) {
        LIVE.with(|c| c.set(c.get() - size as isize));
    }
}

/// Writes to stderr without allocating (we are inside the allocator).
fn say(bytes: &[u8]) {
    // SAFETY: write(2) reads `bytes.len()` bytes from the live slice `bytes` and nothing
    // else; descriptor 2 (stderr) is the process's for its whole life.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

fn say_number(mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    say(&digits[at..]);
}

fn too_large(size: usize) -> ! {
    ON.with(|c| c.set(false));
    say(b"\nfuzz: a decode asked the allocator for ");
    say_number(size as u64);
    say(b" bytes at once (limit ");
    say_number(ABORT_BYTES as u64);
    say(b"); replay with PORTASK_FUZZ_SEED=");
    say_number(SEED.with(Cell::get));
    say(b" PORTASK_FUZZ_CASE=");
    say_number(CASE.with(Cell::get));
    say(b"; input (hex):\n");
    let (ptr, len) = INPUT.with(Cell::get);
    if !ptr.is_null() {
        // SAFETY: `measure` sets this thread-local from its `input` slice before the decode
        // and clears it before returning; we are inside that decode, on the same thread,
        // so the slice is still borrowed by `measure` and alive.
        let input = unsafe { std::slice::from_raw_parts(ptr, len) };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for chunk in input.chunks(256) {
            let mut line = [0u8; 512];
            for (i, b) in chunk.iter().enumerate() {
                line[2 * i] = HEX[(b >> 4) as usize];
                line[2 * i + 1] = HEX[(b & 15) as usize];
            }
            say(&line[..2 * chunk.len()]);
        }
    }
    say(b"\nfuzz: aborting\n");
    std::process::abort()
}

// SAFETY: every call is passed to `System` with the same arguments; the bookkeeping only
// touches const-initialised thread-locals (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: the caller's layout, unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: the caller's layout, unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout` (every path above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size);
        shrink(layout.size());
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
