//! AMQP field tables as the catalog stores them (declare and binding arguments, encoded
//! as on the wire), the values it reads from them, and the nesting limit checked before
//! amq-protocol parses a table: its parser recurses once per level, so a table nested
//! thousands deep (a few kilobytes of input, even in an unauthenticated
//! `connection.start-ok`) would overflow the shard thread's stack and abort the process.
//!
//! `table_ok` walks an encoded table with an explicit stack, never recursing, and accepts
//! it when it is well formed and nests at most `MAX_DEPTH` tables and arrays deep
//! (`amqp::nesting::method_ok` applies it to the table argument of every method that has
//! one). Pure functions, run on whichever shard reads the bytes.

use amq_protocol::types::{AMQPValue, FieldTable};

/// Encodes a field table the way it travels on the wire (with its length prefix).
pub fn encode_table(table: &FieldTable) -> Vec<u8> {
    use amq_protocol::types::generation::gen_field_table;
    match gen_field_table(table)(Vec::new().into()) {
        Ok(ctx) => ctx.into_inner().0,
        Err(_) => vec![0, 0, 0, 0],
    }
}

/// Decodes `encode_table`'s output; bytes that do not parse (or nest deeper than
/// `MAX_DEPTH`) give an empty table.
pub fn decode_table(bytes: &[u8]) -> FieldTable {
    if !table_ok(bytes) {
        return FieldTable::default();
    }
    amq_protocol::types::parsing::parse_field_table(bytes)
        .map(|(_, t)| t)
        .unwrap_or_default()
}

/// An integer argument of any AMQP integer width.
pub fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        AMQPValue::Timestamp(x) => i64::try_from(*x).ok()?,
        _ => return None,
    })
}

pub fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// Deepest nesting of tables and arrays accepted (the outermost table is level 1). Real
/// clients use a handful of levels (`x-death` is three).
pub const MAX_DEPTH: usize = 64;

/// Whether the field table encoded at the start of `b` (length prefix included) is well
/// formed and nests at most `MAX_DEPTH` deep. Bytes after the table are ignored.
pub fn table_ok(b: &[u8]) -> bool {
    walk(b, |_| false).is_some()
}

/// Whether the encoded table `b` (with its length prefix; accepted by `table_ok`) has an
/// entry named `key` at its top level, found without decoding it.
pub fn has_key(b: &[u8], key: &str) -> bool {
    let mut found = false;
    let _ = walk(b, |name| {
        found = name == key.as_bytes();
        found
    });
    found
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// The table's length in bytes, if acceptable. `name` sees each top-level entry's name;
/// the walk stops early (`None`) when it returns true.
fn walk(b: &[u8], mut name: impl FnMut(&[u8]) -> bool) -> Option<usize> {
    let end = 4usize.checked_add(u32_at(b, 0)?)?;
    if end > b.len() {
        return None;
    }
    // Open containers: (where each ends, whether it is a table, whose entries have names).
    let mut open = [(0usize, false); MAX_DEPTH + 1];
    open[0] = (end, true);
    let mut depth = 1usize;
    let mut at = 4usize;
    while depth > 0 {
        let (end, table) = open[depth - 1];
        if at == end {
            depth -= 1;
            continue;
        }
        if table {
            let n = *b.get(at)? as usize;
            let next = at.checked_add(1 + n)?;
            if depth == 1 && name(b.get(at + 1..next)?) {
                return None;
            }
            at = next;
        }
        let kind = *b.get(at)?;
        at += 1;
        let size = match kind {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' => 4usize.checked_add(u32_at(b, at)?)?,
            b'A' | b'F' => {
                let inner_end = at.checked_add(4)?.checked_add(u32_at(b, at)?)?;
                if inner_end > end || depth >= MAX_DEPTH {
                    return None;
                }
                at += 4;
                open[depth] = (inner_end, kind == b'F');
                depth += 1;
                continue;
            }
            _ => return None,
        };
        at = at.checked_add(size)?;
        if at > end {
            return None;
        }
    }
    Some(end)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use amq_protocol::types::FieldArray;

    fn encode(t: &FieldTable) -> Vec<u8> {
        encode_table(t)
    }

    /// A table holding a table holding … `depth` levels in all.
    pub(crate) fn nested(depth: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = Vec::new();
        for _ in 1..depth {
            let mut level = vec![1, b'k', b'F'];
            level.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            level.extend_from_slice(&inner);
            inner = level;
        }
        let mut out = (inner.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&inner);
        out
    }

    #[test]
    fn every_value_type_is_walked() {
        let mut inner = FieldTable::default();
        inner.insert("x".into(), AMQPValue::LongString("v".into()));
        let mut t = FieldTable::default();
        t.insert("bool".into(), AMQPValue::Boolean(true));
        t.insert("i8".into(), AMQPValue::ShortShortInt(-1));
        t.insert("u8".into(), AMQPValue::ShortShortUInt(1));
        t.insert("i16".into(), AMQPValue::ShortInt(-2));
        t.insert("u16".into(), AMQPValue::ShortUInt(2));
        t.insert("i32".into(), AMQPValue::LongInt(-3));
        t.insert("u32".into(), AMQPValue::LongUInt(3));
        t.insert("i64".into(), AMQPValue::LongLongInt(-4));
        t.insert("f32".into(), AMQPValue::Float(1.5));
        t.insert("f64".into(), AMQPValue::Double(2.5));
        t.insert(
            "dec".into(),
            AMQPValue::DecimalValue(amq_protocol::types::DecimalValue { scale: 2, value: 5 }),
        );
        t.insert("str".into(), AMQPValue::LongString("hello".into()));
        t.insert("ts".into(), AMQPValue::Timestamp(7));
        t.insert("bytes".into(), AMQPValue::ByteArray(vec![1, 2, 3].into()));
        t.insert("void".into(), AMQPValue::Void);
        t.insert(
            "array".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(inner.clone()),
                AMQPValue::LongLongInt(1),
            ])),
        );
        t.insert("table".into(), AMQPValue::FieldTable(inner));
        let bytes = encode(&t);
        assert_eq!(walk(&bytes, |_| false), Some(bytes.len()));
        assert!(table_ok(&encode(&FieldTable::default())));
    }

    #[test]
    fn depth_is_limited_and_malformed_input_refused() {
        assert!(table_ok(&nested(MAX_DEPTH)));
        assert!(!table_ok(&nested(MAX_DEPTH + 1)));
        assert!(!table_ok(&nested(10_000)));
        // Cut anywhere: refused, never a panic.
        let good = nested(5);
        for n in 0..good.len() {
            assert!(!table_ok(&good[..n]), "cut at {n}");
        }
        // Lengths pointing past the end, an unknown type, a huge length.
        assert!(!table_ok(&[0, 0, 0, 9, 1, b'k', b't', 1]));
        assert!(!table_ok(&[0, 0, 0, 3, 1, b'k', b'?']));
        assert!(!table_ok(&[0, 0, 0, 7, 1, b'k', b'S', 255, 255, 255, 255]));
        assert!(!table_ok(&[255, 255, 255, 255]));
    }
}
