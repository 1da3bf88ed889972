//! The payloads of a queue's records (framed by `storage::frame`, written by the shard's
//! journal): message records in `<base>.log`, ack and delivered marks in `<base>.marks`.
//! Pure encoding, no I/O; the layout is documented in `shards/README.md`.

use bytes::{Buf, BufMut, Bytes};

use crate::amqp::message::{Message, MessageData, Parts};

pub const REC_MESSAGE: u8 = 1;
pub const REC_ACK: u8 = 2;
pub const REC_DELIVERED: u8 = 3;
/// Flag of a message record written only to page a transient message out of memory:
/// recovery skips it.
pub const FLAG_TRANSIENT: u8 = 1;

/// A decoded message record.
pub struct MessageRecord {
    pub flags: u8,
    pub seq: u64,
    pub expires_at: Option<i64>,
    pub msg: Message,
}

pub fn encode_message(seq: u64, expires_at: Option<i64>, m: &Message, flags: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + m.size());
    p.put_u8(REC_MESSAGE);
    p.put_u8(flags);
    p.put_u64(seq);
    p.put_u8(m.priority);
    p.put_i64(expires_at.unwrap_or(-1));
    p.put_i64(m.expiration.map(|e| e as i64).unwrap_or(-1));
    p.put_u16(m.exchange().len() as u16);
    p.extend_from_slice(m.exchange());
    p.put_u16(m.routing_key().len() as u16);
    p.extend_from_slice(m.routing_key());
    p.put_u32(m.properties().len() as u32);
    p.extend_from_slice(m.properties());
    p.put_u32(m.body().len() as u32);
    p.extend_from_slice(m.body());
    p
}

/// The sequence number of a message record, read from its header only.
pub fn message_seq(p: &[u8]) -> Option<u64> {
    if p.len() < 10 || p[0] != REC_MESSAGE {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&p[2..10]);
    Some(u64::from_be_bytes(seq))
}

pub fn decode_message(mut p: &[u8]) -> Option<MessageRecord> {
    fn take(p: &mut &[u8], n: usize) -> Option<Bytes> {
        if p.len() < n {
            return None;
        }
        let b = Bytes::copy_from_slice(&p[..n]);
        p.advance(n);
        Some(b)
    }
    if p.len() < 2 + 8 + 1 + 8 + 8 || p[0] != REC_MESSAGE {
        return None;
    }
    p.advance(1);
    let flags = p.get_u8();
    let seq = p.get_u64();
    let priority = p.get_u8();
    let expires_at = p.get_i64();
    let expiration = p.get_i64();
    if p.len() < 2 {
        return None;
    }
    let n = p.get_u16() as usize;
    let exchange = take(&mut p, n)?;
    if p.len() < 2 {
        return None;
    }
    let n = p.get_u16() as usize;
    let routing_key = take(&mut p, n)?;
    if p.len() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    let properties = take(&mut p, n)?;
    if p.len() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    let body = take(&mut p, n)?;
    Some(MessageRecord {
        flags,
        seq,
        expires_at: (expires_at >= 0).then_some(expires_at),
        msg: Message::new(MessageData {
            parts: Parts::apart(exchange, routing_key, properties, body),
            persistent: true,
            priority,
            expiration: (expiration >= 0).then_some(expiration as u64),
        }),
    })
}

/// One marks record: `kind u8 | count u32 | seq u64 * count`.
pub fn encode_marks(kind: u8, seqs: &[u64]) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + seqs.len() * 8);
    p.put_u8(kind);
    p.put_u32(seqs.len() as u32);
    for s in seqs {
        p.put_u64(*s);
    }
    p
}

/// A marks record's kind and sequence numbers (a count past the payload is cut to it).
pub fn decode_marks(mut p: &[u8]) -> Option<(u8, Vec<u64>)> {
    if p.len() < 5 {
        return None;
    }
    let kind = p.get_u8();
    let n = p.get_u32() as usize;
    let seqs = (0..n.min(p.len() / 8)).map(|_| p.get_u64()).collect();
    Some((kind, seqs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::frame;

    #[test]
    fn records_round_trip() {
        let m = Message::new(MessageData {
            parts: Parts::apart(
                Bytes::from_static(b"ex"),
                Bytes::from_static(b"rk"),
                Bytes::from_static(&[0, 0]),
                Bytes::from_static(b"hello"),
            ),
            persistent: true,
            priority: 3,
            expiration: Some(5),
        });
        let mut file = Vec::new();
        frame::put(&encode_message(7, Some(99), &m, 0), &mut file);
        frame::put(&encode_message(8, None, &m, FLAG_TRANSIENT), &mut file);
        let (records, _) = frame::split(&file);
        let r = decode_message(records[0]).unwrap();
        assert_eq!((r.flags, r.seq, r.expires_at), (0, 7, Some(99)));
        assert_eq!(r.msg.body(), m.body());
        assert_eq!(r.msg.priority, 3);
        assert_eq!(r.msg.expiration, Some(5));
        assert_eq!(message_seq(records[0]), Some(7));
        let t = decode_message(records[1]).unwrap();
        assert_eq!((t.flags, t.expires_at), (FLAG_TRANSIENT, None));
        // A truncated message is not a message.
        assert!(decode_message(&records[0][..records[0].len() - 1]).is_none());
        let marks = encode_marks(REC_ACK, &[1, 5, 9]);
        assert_eq!(decode_marks(&marks), Some((REC_ACK, vec![1, 5, 9])));
        assert_eq!(
            decode_marks(&marks[..marks.len() - 4]),
            Some((REC_ACK, vec![1, 5]))
        );
    }
}
