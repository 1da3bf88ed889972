//! `Message`: one published message as it travels between shards and sits in queues —
//! exchange, routing key, the publisher's raw property bytes, the body — plus the few
//! properties the broker acts on, read once at publish.
//!
//! A message routed to several queues, or crossing the mesh, is never copied: `Message`
//! is shared (`Arc`), so a delivery's clone or a move into a queue, its unacked ledger or
//! an op between shards is one pointer and one reference count. A published message's
//! parts lie one after the other in one buffer (`Parts::Joined`): one allocation, read
//! through the accessors as slices, with no reference count of its own while nothing asks
//! for a part as `Bytes`. Messages read back from disk or a log keep their parts as the
//! `Bytes` they were read into (`Parts::Apart`). Dead-lettering is the one place
//! properties are re-encoded (the `x-death` header changes).

use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use bytes::Bytes;

use crate::catalog::amqp::tables::{int_value, str_value};

/// A message, shared: a clone (a delivery, a copy per queue reached) or a move (into a
/// queue, its unacked ledger, an op between shards) is one pointer and one reference
/// count. `Deref` reads the parts; `edit` changes them (copying first if shared).
#[derive(Debug, Clone)]
pub struct Message(Arc<Shared>);

/// What a `Message` shares: its data, and for a message routed to several queues, each
/// shard's tally of its queues holding it.
#[derive(Debug)]
struct Shared {
    data: MessageData,
    /// Several queues took this allocation: a shard counts it once against its memory
    /// budget however many of its queues hold it (`queue::held`).
    many: bool,
    /// Per shard (the first `HELD_SLOTS`), written only by that shard: how many of its
    /// queues hold this message (`queue::held`).
    held: [AtomicU32; HELD_SLOTS],
}

/// Shards with a tally in a shared message; queues of later shards count it in full.
pub const HELD_SLOTS: usize = 8;

impl Shared {
    fn new(data: MessageData) -> Shared {
        Shared {
            data,
            many: false,
            held: Default::default(),
        }
    }
}

impl Clone for Shared {
    /// A copy (`edit` of a message others hold) is one holder's own.
    fn clone(&self) -> Shared {
        Shared::new(self.data.clone())
    }
}

impl Message {
    pub fn new(data: MessageData) -> Message {
        Message(Arc::new(Shared::new(data)))
    }

    /// The parts to change, copied first if another holder shares them.
    pub fn edit(&mut self) -> &mut MessageData {
        &mut Arc::make_mut(&mut self.0).data
    }

    /// The parts, taken without a copy unless another holder shares them.
    pub fn into_data(self) -> MessageData {
        Arc::try_unwrap(self.0)
            .map(|s| s.data)
            .unwrap_or_else(|shared| shared.data.clone())
    }

    /// Marks a message about to be handed to several queues (before the clones are made;
    /// a message another holder already shares stays unmarked, counted in full by each
    /// queue).
    pub fn routed_to_many(&mut self) {
        if let Some(shared) = Arc::get_mut(&mut self.0) {
            shared.many = true;
        }
    }

    /// For a message routed to several queues, shard `slot`'s tally of its queues holding
    /// it (`None` for a message one queue took, or a shard past `HELD_SLOTS`).
    pub fn held_tally(&self, slot: usize) -> Option<&AtomicU32> {
        self.0.many.then(|| self.0.held.get(slot)).flatten()
    }
}

impl std::ops::Deref for Message {
    type Target = MessageData;

    fn deref(&self) -> &MessageData {
        &self.0.data
    }
}

#[derive(Debug, Clone)]
pub struct MessageData {
    pub parts: Parts,
    /// delivery-mode 2.
    pub persistent: bool,
    pub priority: u8,
    /// The per-message `expiration` property, in milliseconds.
    pub expiration: Option<u64>,
}

/// A message's exchange, routing key, properties (flags and list exactly as the publisher
/// sent them) and body, read through `MessageData`'s accessors.
#[derive(Debug, Clone)]
pub enum Parts {
    /// The four one after the other in one buffer (a publish whose body came in one
    /// frame), with the ends of the first three. The buffer is one `Bytes` that is never
    /// sliced while the message lives: no shared reference count is made for it, and the
    /// message's bytes are one allocation, freed in one go.
    Joined { buf: Bytes, ends: [u32; 3] },
    /// Each part its own `Bytes` (slices of buffers they may share).
    Apart([Bytes; 4]),
}

const EXCHANGE: usize = 0;
const ROUTING_KEY: usize = 1;
const PROPERTIES: usize = 2;
const BODY: usize = 3;

impl Parts {
    /// Parts that are `Bytes` already (read back from disk or a log, built by the broker).
    pub fn apart(exchange: Bytes, routing_key: Bytes, properties: Bytes, body: Bytes) -> Parts {
        Parts::Apart([exchange, routing_key, properties, body])
    }

    /// A published message's parts: copied into one buffer with a `Body::Copy`; with a
    /// body of its own, the names and properties share a buffer beside it.
    pub fn published(
        exchange: &[u8],
        routing_key: &[u8],
        properties: &[u8],
        body: Body<'_>,
    ) -> Parts {
        match body {
            Body::Copy(b) => {
                let (buf, [e, r, p, _]) = concat([exchange, routing_key, properties, b]);
                Parts::Joined {
                    buf,
                    ends: [e, r, p].map(|end| end as u32),
                }
            }
            Body::Own(b) => {
                let [e, r, p] = one_buffer([exchange, routing_key, properties]);
                Parts::apart(e, r, p, b)
            }
        }
    }

    /// Part `i`'s range in a joined buffer of `len` bytes.
    fn range(ends: &[u32; 3], len: usize, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { ends[i - 1] as usize };
        let end = ends.get(i).map_or(len, |&e| e as usize);
        start..end
    }

    fn get(&self, i: usize) -> &[u8] {
        match self {
            Parts::Joined { buf, ends } => &buf[Parts::range(ends, buf.len(), i)],
            Parts::Apart(parts) => &parts[i],
        }
    }

    /// Part `i` as `Bytes` (a slice of the joined buffer: the first one makes its shared
    /// count).
    fn bytes(&self, i: usize) -> Bytes {
        match self {
            Parts::Joined { buf, ends } => buf.slice(Parts::range(ends, buf.len(), i)),
            Parts::Apart(parts) => parts[i].clone(),
        }
    }

    /// Replaces part `i`, the others kept (as slices of the joined buffer, if they were).
    fn set(&mut self, i: usize, part: Bytes) {
        if let Parts::Joined { .. } = self {
            let parts = std::array::from_fn(|j| self.bytes(j));
            *self = Parts::Apart(parts);
        }
        if let Parts::Apart(parts) = self {
            parts[i] = part;
        }
    }
}

impl MessageData {
    pub fn exchange(&self) -> &[u8] {
        self.parts.get(EXCHANGE)
    }

    pub fn routing_key(&self) -> &[u8] {
        self.parts.get(ROUTING_KEY)
    }

    /// Property flags and list exactly as the publisher sent them.
    pub fn properties(&self) -> &[u8] {
        self.parts.get(PROPERTIES)
    }

    pub fn body(&self) -> &[u8] {
        self.parts.get(BODY)
    }

    pub fn exchange_bytes(&self) -> Bytes {
        self.parts.bytes(EXCHANGE)
    }

    pub fn routing_key_bytes(&self) -> Bytes {
        self.parts.bytes(ROUTING_KEY)
    }

    pub fn properties_bytes(&self) -> Bytes {
        self.parts.bytes(PROPERTIES)
    }

    pub fn body_bytes(&self) -> Bytes {
        self.parts.bytes(BODY)
    }

    pub fn set_exchange(&mut self, exchange: Bytes) {
        self.parts.set(EXCHANGE, exchange);
    }

    pub fn set_routing_key(&mut self, routing_key: Bytes) {
        self.parts.set(ROUTING_KEY, routing_key);
    }

    pub fn set_properties(&mut self, properties: Bytes) {
        self.parts.set(PROPERTIES, properties);
    }

    pub fn set_body(&mut self, body: Bytes) {
        self.parts.set(BODY, body);
    }
}

impl Message {
    /// Bytes this message holds in memory.
    pub fn size(&self) -> usize {
        match &self.parts {
            Parts::Joined { buf, .. } => buf.len(),
            Parts::Apart(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }

    /// Lets go of the body (it was paged out to disk). The other parts move to a buffer
    /// of their own: they may share the body's, which would stay alive with them.
    pub fn drop_body(&mut self) {
        let [exchange, routing_key, properties] =
            one_buffer([self.exchange(), self.routing_key(), self.properties()]);
        self.edit().parts = Parts::apart(exchange, routing_key, properties, Bytes::new());
    }
}

/// A published body on its way into a `Message`: bytes to copy into the message's one
/// buffer (a single body frame: a slice of the socket's read buffer, which must not be
/// kept), or a buffer of its own (assembled from several frames, or from the HTTP API).
pub enum Body<'a> {
    Copy(&'a [u8]),
    Own(Bytes),
}

/// `parts` copied one after the other into one new buffer, with where each ends.
fn concat<const N: usize>(parts: [&[u8]; N]) -> (Bytes, [usize; N]) {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    let ends = parts.map(|p| {
        buf.extend_from_slice(p);
        buf.len()
    });
    (Bytes::from(buf), ends)
}

/// `parts` copied one after the other into one new buffer, each given back as its slice.
fn one_buffer<const N: usize>(parts: [&[u8]; N]) -> [Bytes; N] {
    let (all, ends) = concat(parts);
    let mut start = 0;
    ends.map(|end| {
        let s = all.slice(start..end);
        start = end;
        s
    })
}

/// The properties the broker looks at, found by walking the raw bytes without allocating.
#[derive(Debug, Default, Clone)]
pub struct PropsView<'a> {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub expiration: Option<&'a [u8]>,
    pub user_id: Option<&'a [u8]>,
    /// The encoded header table (with its length prefix), if present.
    pub headers: Option<&'a [u8]>,
}

/// Decodes properties with amq-protocol once `scan_properties` accepted them (which
/// bounds the nesting of the headers table).
pub fn parse_props(raw: &[u8]) -> Option<AMQPProperties> {
    scan_properties(raw)?;
    parse_properties(raw).ok().map(|(_, p)| p)
}

/// Bits of the first property-flags word (AMQP 0-9-1 basic properties, highest first:
/// content-type is bit 15).
const HEADERS_FLAG: u16 = 1 << 13;
const REPLY_TO_FLAG: u16 = 1 << 9;

fn flagged(raw: &[u8], flag: u16) -> bool {
    raw.get(..2)
        .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & flag != 0)
}

/// Whether the property flags say a `reply-to` follows (without decoding anything).
pub fn has_reply_to(raw: &[u8]) -> bool {
    flagged(raw, REPLY_TO_FLAG)
}

/// Whether the property flags say a `headers` table follows (without decoding anything).
pub fn has_headers(raw: &[u8]) -> bool {
    flagged(raw, HEADERS_FLAG)
}

/// Walks property bytes: `None` when they are malformed (headers nested deeper than
/// `catalog::amqp::tables::MAX_DEPTH` included).
pub fn scan_properties(raw: &[u8]) -> Option<PropsView<'_>> {
    let f = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    let mut at = 2usize;
    // Continuation flag words (bit 0 set) carry no property this version knows.
    let mut last = f;
    while last & 1 != 0 {
        last = u16::from_be_bytes([*raw.get(at)?, *raw.get(at + 1)?]);
        at += 2;
    }
    let mut v = PropsView::default();
    // A short string's range, past it.
    let short = |at: &mut usize| -> Option<std::ops::Range<usize>> {
        let n = *raw.get(*at)? as usize;
        let r = *at + 1..*at + 1 + n;
        raw.get(r.clone())?;
        *at += 1 + n;
        Some(r)
    };
    let bit = |i: u32| f & (1 << (15 - i)) != 0;
    if bit(0) {
        short(&mut at)?;
    }
    if bit(1) {
        short(&mut at)?;
    }
    if bit(2) {
        let len = u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
        let table = raw.get(at..at + 4 + len)?;
        if !crate::catalog::amqp::tables::table_ok(table) {
            return None;
        }
        v.headers = Some(table);
        at += 4 + len;
    }
    if bit(3) {
        v.delivery_mode = Some(*raw.get(at)?);
        at += 1;
    }
    if bit(4) {
        v.priority = Some(*raw.get(at)?);
        at += 1;
    }
    if bit(5) {
        short(&mut at)?;
    }
    if bit(6) {
        short(&mut at)?;
    }
    if bit(7) {
        v.expiration = Some(&raw[short(&mut at)?]);
    }
    if bit(8) {
        short(&mut at)?;
    }
    if bit(9) {
        raw.get(at..at + 8)?;
        at += 8;
    }
    if bit(10) {
        short(&mut at)?;
    }
    if bit(11) {
        v.user_id = Some(&raw[short(&mut at)?]);
    }
    if bit(12) {
        short(&mut at)?;
    }
    if bit(13) {
        short(&mut at)?;
    }
    Some(v)
}

/// Parses the `expiration` property: a non-negative integer of milliseconds.
pub fn parse_expiration(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
}

pub fn decode_headers(encoded: &[u8]) -> FieldTable {
    crate::catalog::amqp::tables::decode_table(encoded)
}

/// Why a message was dead-lettered, as the `x-death` header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    /// Requeued more often than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn table_str(t: &FieldTable, k: &str) -> Option<String> {
    t.inner().get(k).and_then(str_value)
}

/// The message as the dead-letter exchange receives it: an `x-death` entry for
/// (queue, reason) added or counted up and moved first, `x-first-death-*` set once,
/// `x-last-death-*` updated, the per-message expiration removed (kept as
/// `original-expiration`), and the routing key replaced when the queue says so.
pub fn dead_lettered(
    msg: &Message,
    reason: DeathReason,
    queue: &str,
    dl_exchange: &str,
    dl_routing_key: Option<&str>,
    now_secs: u64,
) -> Message {
    let props: AMQPProperties = parse_props(msg.properties()).unwrap_or_default();
    let mut headers = props.headers().clone().unwrap_or_default();
    let exchange = String::from_utf8_lossy(msg.exchange()).into_owned();
    let routing_key = String::from_utf8_lossy(msg.routing_key()).into_owned();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let mut count = 1i64;
    let existing = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            table_str(t, "queue").as_deref() == Some(queue)
                && table_str(t, "reason").as_deref() == Some(reason.as_str())
        }
        _ => false,
    });
    let mut entry = FieldTable::default();
    if let Some(i) = existing {
        if let AMQPValue::FieldTable(t) = deaths.remove(i) {
            count = t.inner().get("count").and_then(int_value).unwrap_or(0) + 1;
            entry = t;
        }
    } else {
        entry.insert("queue".into(), AMQPValue::LongString(queue.into()));
        entry.insert(
            "reason".into(),
            AMQPValue::LongString(reason.as_str().into()),
        );
        entry.insert(
            "exchange".into(),
            AMQPValue::LongString(exchange.clone().into()),
        );
        entry.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                LongString::from(routing_key.clone()),
            )])),
        );
        if let Some(e) = props.expiration() {
            entry.insert(
                "original-expiration".into(),
                AMQPValue::LongString(e.as_str().into()),
            );
        }
    }
    entry.insert("count".into(), AMQPValue::LongLongInt(count));
    entry.insert("time".into(), AMQPValue::Timestamp(now_secs));
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !headers.contains_key("x-first-death-reason") {
        headers.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString(reason.as_str().into()),
        );
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString(queue.into()),
        );
        headers.insert(
            "x-first-death-exchange".into(),
            AMQPValue::LongString(exchange.clone().into()),
        );
    }
    headers.insert(
        "x-last-death-reason".into(),
        AMQPValue::LongString(reason.as_str().into()),
    );
    headers.insert(
        "x-last-death-queue".into(),
        AMQPValue::LongString(queue.into()),
    );
    headers.insert(
        "x-last-death-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    let rebuilt = rebuild(&props, headers);
    let properties = encode_properties(&rebuilt).unwrap_or_else(|| msg.properties_bytes());
    let routing_key = match dl_routing_key {
        Some(k) => Bytes::copy_from_slice(k.as_bytes()),
        None => msg.routing_key_bytes(),
    };
    Message::new(MessageData {
        parts: Parts::apart(
            Bytes::copy_from_slice(dl_exchange.as_bytes()),
            routing_key,
            properties,
            msg.body_bytes(),
        ),
        persistent: msg.persistent,
        priority: msg.priority,
        expiration: None,
    })
}

/// The message with header `key` set to `value` (every other property unchanged).
pub fn with_header(msg: &Message, key: &str, value: AMQPValue) -> Message {
    edit_headers(msg, |h| {
        h.insert(key.into(), value);
    })
}

/// The message without header `key` (every other property unchanged).
pub fn without_header(msg: &Message, key: &str) -> Message {
    edit_headers(msg, |h| {
        let mut kept = h.inner().clone();
        kept.remove(key);
        *h = FieldTable::from(kept);
    })
}

fn edit_headers(msg: &Message, edit: impl FnOnce(&mut FieldTable)) -> Message {
    let Some(props) = parse_props(msg.properties()) else {
        return msg.clone();
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    edit(&mut headers);
    match encode_properties(&props.with_headers(headers)) {
        Some(properties) => {
            let mut data = MessageData::clone(msg);
            data.set_properties(properties);
            Message::new(data)
        }
        None => msg.clone(),
    }
}

/// Properties as they travel in a content header (flags and list).
pub fn encode_properties(props: &AMQPProperties) -> Option<Bytes> {
    let buf = gen_properties(props)(Vec::new().into()).ok()?;
    Some(Bytes::from(buf.into_inner().0))
}

/// The same properties with new headers and no expiration.
fn rebuild(p: &AMQPProperties, headers: FieldTable) -> AMQPProperties {
    let mut out = AMQPProperties::default().with_headers(headers);
    let s = |v: &Option<ShortString>| v.clone();
    if let Some(v) = s(p.content_type()) {
        out = out.with_content_type(v);
    }
    if let Some(v) = s(p.content_encoding()) {
        out = out.with_content_encoding(v);
    }
    if let Some(v) = *p.delivery_mode() {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = *p.priority() {
        out = out.with_priority(v);
    }
    if let Some(v) = s(p.correlation_id()) {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = s(p.reply_to()) {
        out = out.with_reply_to(v);
    }
    if let Some(v) = s(p.message_id()) {
        out = out.with_message_id(v);
    }
    if let Some(v) = *p.timestamp() {
        out = out.with_timestamp(v);
    }
    if let Some(v) = s(p.kind()) {
        out = out.with_type(v);
    }
    if let Some(v) = s(p.user_id()) {
        out = out.with_user_id(v);
    }
    if let Some(v) = s(p.app_id()) {
        out = out.with_app_id(v);
    }
    if let Some(v) = s(p.cluster_id()) {
        out = out.with_cluster_id(v);
    }
    out
}

/// Whether the dead-letter path would loop: the message already died in `queue` and
/// every death on record was automatic (no client rejected it), RabbitMQ's cycle rule.
pub fn dead_letter_cycle(msg: &Message, queue: &str) -> bool {
    let Some(view) = scan_properties(msg.properties()) else {
        return false;
    };
    let Some(h) = view.headers else {
        return false;
    };
    let headers = decode_headers(h);
    let Some(AMQPValue::FieldArray(a)) = headers.inner().get("x-death") else {
        return false;
    };
    let mut seen = false;
    for d in a.as_slice() {
        if let AMQPValue::FieldTable(t) = d {
            if table_str(t, "reason").as_deref() == Some("rejected") {
                return false;
            }
            if table_str(t, "queue").as_deref() == Some(queue) {
                seen = true;
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(p: &AMQPProperties) -> Bytes {
        Bytes::from(gen_properties(p)(Vec::new().into()).unwrap().into_inner().0)
    }

    /// A transient message of priority 0.
    fn transient(parts: Parts) -> Message {
        Message::new(MessageData {
            parts,
            persistent: false,
            priority: 0,
            expiration: None,
        })
    }

    fn all_parts(m: &MessageData) -> [&[u8]; 4] {
        [m.exchange(), m.routing_key(), m.properties(), m.body()]
    }

    const PARTS: [&[u8]; 4] = [b"ex", b"key", &[0, 0], b"the body"];

    /// A published message's parts lie in one buffer (the body too, unless it has one of
    /// its own), and a paged-out message keeps none of it.
    #[test]
    fn the_parts_share_one_buffer_until_the_body_is_dropped() {
        for body in [
            Body::Copy(b"the body"),
            Body::Own(Bytes::from_static(b"the body")),
        ] {
            let own = matches!(body, Body::Own(_));
            let mut msg = transient(Parts::published(b"ex", b"key", &[0, 0], body));
            assert_eq!(all_parts(&msg), PARTS);
            assert_eq!(msg.size(), 15);
            assert_eq!(matches!(msg.parts, Parts::Joined { .. }), !own);
            // One after the other in one allocation (a body of its own stays apart).
            let head = msg.exchange().as_ptr() as usize;
            assert_eq!(msg.routing_key().as_ptr() as usize, head + 2);
            assert_eq!(msg.properties().as_ptr() as usize, head + 5);
            assert_eq!(msg.body().as_ptr() as usize == head + 7, !own);
            // As `Bytes`, the same bytes in the same place.
            let old = [
                msg.exchange_bytes(),
                msg.routing_key_bytes(),
                msg.properties_bytes(),
                msg.body_bytes(),
            ];
            assert_eq!(old.each_ref().map(|b| &b[..]), PARTS);
            assert_eq!(old[0].as_ptr() as usize, head);
            // `old` is held here, so the new buffer cannot be given the old one's address.
            msg.drop_body();
            assert!(msg.body().is_empty());
            assert_eq!(all_parts(&msg)[..3], PARTS[..3]);
            assert_eq!(msg.size(), 7);
            // The names and properties no longer point into the old buffer.
            for part in &all_parts(&msg)[..3] {
                let at = part.as_ptr() as usize;
                assert!(!(head..head + 15).contains(&at), "{part:?}");
            }
            drop(old);
        }
    }

    /// Replacing one part of a joined message keeps the other three as they were.
    #[test]
    fn a_part_set_leaves_the_others() {
        let setters: [fn(&mut MessageData, Bytes); 4] = [
            MessageData::set_exchange,
            MessageData::set_routing_key,
            MessageData::set_properties,
            MessageData::set_body,
        ];
        for (i, set) in setters.into_iter().enumerate() {
            let mut msg = transient(Parts::published(
                b"ex",
                b"key",
                &[0, 0],
                Body::Copy(b"the body"),
            ));
            set(msg.edit(), Bytes::from_static(b"new"));
            let mut want = PARTS;
            want[i] = b"new";
            assert_eq!(all_parts(&msg), want, "part {i}");
            assert_eq!(msg.size(), 15 - PARTS[i].len() + 3);
        }
    }

    /// A message shared by two holders (a fanout's queues) is changed for one only: the
    /// queue that pages its copy out lets go of the body, the other still delivers it.
    #[test]
    fn a_shared_message_is_changed_for_one_holder_only() {
        let mut paged = transient(Parts::published(
            b"ex",
            b"key",
            &[0, 0],
            Body::Copy(b"the body"),
        ));
        let kept = paged.clone();
        paged.drop_body();
        assert!(paged.body().is_empty());
        assert_eq!(kept.body(), b"the body");
        paged.edit().set_body(Bytes::from_static(b"read back"));
        assert_eq!(all_parts(&kept), PARTS);
        assert_eq!(paged.body(), b"read back");
        assert_eq!(paged.routing_key(), b"key");
    }

    /// The flag tests agree with a full decode, whatever else the properties carry.
    #[test]
    fn the_reply_to_and_headers_flags_are_read_without_decoding() {
        let mut h = FieldTable::default();
        h.insert("a".into(), AMQPValue::LongInt(1));
        let without = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(h)
            .with_correlation_id("c".into())
            .with_expiration("60000".into())
            .with_app_id("app".into());
        let with = without
            .clone()
            .with_reply_to("amq.rabbitmq.reply-to".into());
        for (p, expected) in [
            (&without, false),
            (&with, true),
            (&AMQPProperties::default(), false),
        ] {
            let raw = props(p);
            assert_eq!(has_reply_to(&raw), expected);
            let decoded = parse_props(&raw).expect("decodes");
            assert_eq!(decoded.reply_to().is_some(), expected);
        }
        let no_headers = AMQPProperties::default().with_reply_to("r".into());
        for (p, expected) in [(&without, true), (&with, true), (&no_headers, false)] {
            let raw = props(p);
            assert_eq!(has_headers(&raw), expected);
            assert_eq!(scan_properties(&raw).unwrap().headers.is_some(), expected);
        }
        assert!(!has_reply_to(&[]) && !has_headers(&[]));
        assert!(!has_reply_to(&[0x02]) && !has_headers(&[0x20]));
    }

    #[test]
    fn scan_finds_what_the_broker_needs() {
        let mut h = FieldTable::default();
        h.insert("a".into(), AMQPValue::LongInt(1));
        let p = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(h)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_expiration("1500".into())
            .with_timestamp(99)
            .with_user_id("guest".into())
            .with_cluster_id("c".into());
        let raw = props(&p);
        let v = scan_properties(&raw).unwrap();
        assert_eq!(v.delivery_mode, Some(2));
        assert_eq!(v.priority, Some(7));
        assert_eq!(parse_expiration(v.expiration.unwrap()), Some(1500));
        assert_eq!(v.user_id.unwrap(), b"guest");
        assert_eq!(
            decode_headers(v.headers.unwrap()).inner().get("a"),
            Some(&AMQPValue::LongInt(1))
        );
        assert!(scan_properties(&Bytes::from_static(&[0x80])).is_none());
    }

    #[test]
    fn x_death_counts_and_detects_cycles() {
        let p = AMQPProperties::default().with_expiration("10".into());
        let m = Message::new(MessageData {
            parts: Parts::apart(
                Bytes::from_static(b"ex"),
                Bytes::from_static(b"rk"),
                props(&p),
                Bytes::from_static(b"x"),
            ),
            persistent: false,
            priority: 0,
            expiration: Some(10),
        });
        let d1 = dead_lettered(&m, DeathReason::Expired, "q", "dlx", None, 5);
        assert!(dead_letter_cycle(&d1, "q"));
        let d2 = dead_lettered(&d1, DeathReason::Expired, "q", "dlx", Some("k2"), 6);
        assert_eq!(d2.routing_key(), b"k2");
        let v = scan_properties(d2.properties()).unwrap();
        assert!(v.expiration.is_none());
        let h = decode_headers(v.headers.unwrap());
        let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
            panic!()
        };
        assert_eq!(a.as_slice().len(), 1);
        let AMQPValue::FieldTable(t) = &a.as_slice()[0] else {
            panic!()
        };
        assert_eq!(t.inner().get("count").and_then(int_value), Some(2));
        assert_eq!(table_str(t, "original-expiration").as_deref(), Some("10"));
    }
}
