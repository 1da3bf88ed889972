//! What every message carries: a 16-byte header (magic, producer, sequence, send time)
//! and filler up to the message size; and the clock that stamps it.
//!
//! Producers write headers, consumers read them back on their own threads; both only touch
//! their own buffers. Parsing never panics on foreign input (a message some other tool put
//! on the topic or queue comes back as `None` and is counted as foreign).
//!
//! Layout (big-endian): magic u16 `0x504C` ("PL") | producer u16 | sequence u32 |
//! send time u64 (nanoseconds on the harness clock).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const HEADER_LEN: usize = 16;
const MAGIC: u16 = 0x504C;

/// Nanoseconds since the Unix epoch, advanced by a monotonic clock from one reading of the
/// wall clock, so stamps taken on different threads compare without wall-clock jumps.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            start_unix_ns,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start_unix_ns + self.start.elapsed().as_nanos() as u64
    }
}

/// The identity and send time a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u16,
    pub sequence: u32,
    pub sent_ns: u64,
}

/// A message body of `size` bytes (at least `HEADER_LEN`) with filler after the header.
pub fn body(size: usize) -> Vec<u8> {
    (0..size.max(HEADER_LEN)).map(|i| (i % 251) as u8).collect()
}

/// Writes the header into the first `HEADER_LEN` bytes of `buf`.
pub fn write(buf: &mut [u8], stamp: Stamp) {
    buf[0..2].copy_from_slice(&MAGIC.to_be_bytes());
    buf[2..4].copy_from_slice(&stamp.producer.to_be_bytes());
    buf[4..8].copy_from_slice(&stamp.sequence.to_be_bytes());
    buf[8..16].copy_from_slice(&stamp.sent_ns.to_be_bytes());
}

/// Reads a header written by `write`; `None` for anything else.
pub fn read(buf: &[u8]) -> Option<Stamp> {
    let h = buf.get(..HEADER_LEN)?;
    if u16::from_be_bytes([h[0], h[1]]) != MAGIC {
        return None;
    }
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&h[8..16]);
    Some(Stamp {
        producer: u16::from_be_bytes([h[2], h[3]]),
        sequence: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        sent_ns: u64::from_be_bytes(sent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_input() {
        let mut b = body(16);
        let s = Stamp {
            producer: 7,
            sequence: 123_456,
            sent_ns: 1 << 60,
        };
        write(&mut b, s);
        assert_eq!(read(&b), Some(s));
        assert_eq!(read(&b[..15]), None);
        assert_eq!(read(b"hello, world, 16"), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let c = Clock::new();
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        assert!(a > 1_600_000_000 * 1_000_000_000);
    }
}
