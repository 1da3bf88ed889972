//! Nesting limits for the field tables of AMQP methods, checked before amq-protocol parses
//! them: `method_ok` finds the table argument of every method that has one and applies
//! `catalog::amqp::tables::table_ok` (the walker and its `MAX_DEPTH`, with the reason) to
//! it. Runs on whichever shard reads the bytes.

use crate::catalog::amqp::tables::table_ok;

/// Whether a method frame's table argument, if the method has one, passes `table_ok`.
/// Payloads too short to reach the table are left to the method parser to refuse.
pub fn method_ok(payload: &[u8]) -> bool {
    let (Some(c), Some(m)) = (payload.get(0..2), payload.get(2..4)) else {
        return true;
    };
    let id = (
        u16::from_be_bytes([c[0], c[1]]),
        u16::from_be_bytes([m[0], m[1]]),
    );
    // What precedes the table, after the class and method ids: fixed bytes, then short
    // strings, then fixed bytes again.
    let (before, short_strings, after) = match id {
        (10, 10) => (2, 0, 0),            // connection.start: version major, minor
        (10, 11) => (0, 0, 0),            // connection.start-ok: client-properties first
        (40, 10) => (2, 2, 1),            // exchange.declare: exchange, type, bits
        (40, 30) | (40, 40) => (2, 3, 1), // exchange.bind/unbind
        (50, 10) => (2, 1, 1),            // queue.declare: queue, bits
        (50, 20) => (2, 3, 1),            // queue.bind: queue, exchange, routing key, no-wait
        (50, 50) => (2, 3, 0),            // queue.unbind
        (60, 20) => (2, 2, 1),            // basic.consume: queue, consumer tag, bits
        _ => return true,
    };
    let mut at = 4 + before;
    for _ in 0..short_strings {
        let Some(n) = payload.get(at) else {
            return true;
        };
        at += 1 + *n as usize;
    }
    at += after;
    match payload.get(at..) {
        Some(rest) if rest.len() >= 4 => table_ok(rest),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::amqp::tables::tests::nested;

    #[test]
    fn method_tables_are_found() {
        // queue.declare(reserved, "q", bits, arguments).
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        declare.extend_from_slice(&nested(3));
        assert!(method_ok(&declare));
        let mut deep = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        deep.extend_from_slice(&nested(1000));
        assert!(!method_ok(&deep));
        // connection.start-ok: client-properties first.
        let mut start_ok = vec![0, 10, 0, 11];
        start_ok.extend_from_slice(&nested(1000));
        assert!(!method_ok(&start_ok));
        // Methods without tables and short payloads are left alone.
        assert!(method_ok(&[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(method_ok(&[0, 50]));
    }
}
