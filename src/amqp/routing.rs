//! Exchange routing: which queues a published message goes to, computed on the publishing
//! connection's shard from its catalog replica (direct, fanout, topic with `*`/`#`,
//! headers with x-match all/any, exchange-to-exchange bindings, alternate exchanges).
//!
//! A `Router` is an index derived from one catalog version (hash maps for direct keys and
//! queue names, binding lists for the rest). Each shard builds one lazily when it routes
//! with a newer catalog than its cached router (`ShardAmqp::router`), so routing never
//! leaves the shard and never locks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::queue_owner;
use crate::catalog::amqp::tables::decode_table;
use crate::catalog::amqp::{DestKind, ExchangeKind, BUILTIN_EXCHANGES};
use crate::catalog::CatalogState;

/// A queue as ops name it: vhost, name, incarnation id and owner shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueRef {
    pub vhost: Arc<str>,
    pub name: Arc<str>,
    pub id: u64,
    pub owner: usize,
}

#[derive(Debug, Clone)]
enum Dest {
    Queue(QueueRef),
    Exchange(Arc<str>),
}

#[derive(Debug, Clone)]
struct HeadersPattern {
    any: bool,
    fields: Vec<(String, AMQPValue)>,
}

#[derive(Debug)]
struct ExchangeRoutes {
    kind: ExchangeKind,
    internal: bool,
    alternate: Option<Arc<str>>,
    direct: HashMap<String, Vec<Dest>>,
    fanout: Vec<Dest>,
    /// Topic bindings' destinations, indexed by `topic_trie`.
    topic: Vec<Dest>,
    topic_trie: TopicTrie,
    headers: Vec<(HeadersPattern, Dest)>,
    /// A super stream's partition queues by partition (`stream::superstream`): a direct
    /// exchange that routes by the murmur2 partition of the routing key, not by binding
    /// key. Empty for every other exchange.
    partitions: Vec<Option<Dest>>,
}

/// Topic binding patterns as a trie over words, with `*` and `#` as their own edges, so
/// routing one key costs the key's length and the patterns that share its prefixes, not
/// the number of bindings.
#[derive(Debug, Default)]
struct TopicTrie {
    words: HashMap<String, TopicTrie>,
    star: Option<Box<TopicTrie>>,
    hash: Option<Box<TopicTrie>>,
    /// Bindings (indices into `ExchangeRoutes::topic`) whose pattern ends here.
    ends: Vec<usize>,
}

impl TopicTrie {
    fn insert(&mut self, pattern: &[String], binding: usize) {
        match pattern.split_first() {
            None => self.ends.push(binding),
            Some((w, rest)) => {
                let child: &mut TopicTrie = match w.as_str() {
                    "*" => self.star.get_or_insert_with(Default::default),
                    "#" => self.hash.get_or_insert_with(Default::default),
                    _ => self.words.entry(w.clone()).or_default(),
                };
                child.insert(rest, binding)
            }
        }
    }

    /// Adds every binding whose pattern matches `key` (may repeat one: callers dedup).
    fn matches(&self, key: &[&str], out: &mut Vec<usize>) {
        if let Some(h) = &self.hash {
            // `#` takes zero or more words.
            for skip in 0..=key.len() {
                h.matches(&key[skip..], out);
            }
        }
        match key.split_first() {
            None => out.extend_from_slice(&self.ends),
            Some((k, rest)) => {
                if let Some(c) = self.words.get(*k) {
                    c.matches(rest, out);
                }
                if let Some(c) = &self.star {
                    c.matches(rest, out);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct VhostRoutes {
    exchanges: HashMap<String, ExchangeRoutes>,
    queues: HashMap<String, QueueRef>,
}

/// Why routing could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NoExchange,
    /// The exchange is internal: only exchange-to-exchange bindings may reach it.
    Internal,
}

#[derive(Debug)]
pub struct Router {
    pub version: u64,
    vhosts: HashMap<String, VhostRoutes>,
    /// How many queues each shard owns (`placement::choose` weighs them).
    owned: Vec<usize>,
}

/// Splits a topic routing key or binding key into words ("" has none, as in RabbitMQ).
pub fn topic_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Topic matching: `*` is exactly one word, `#` zero or more.
pub fn topic_match<P: AsRef<str>>(pattern: &[P], key: &[&str]) -> bool {
    match pattern.first().map(|p| p.as_ref()) {
        None => key.is_empty(),
        Some("#") => {
            // Collapse runs of '#'.
            let rest = &pattern[1..];
            (0..=key.len()).any(|skip| topic_match(rest, &key[skip..]))
        }
        Some(p) => match key.first() {
            Some(k) if p == "*" || p == *k => topic_match(&pattern[1..], &key[1..]),
            _ => false,
        },
    }
}

/// Comparable form of a header value: integers of any width are one class, as are
/// floats and strings (RabbitMQ compares type classes).
fn normalize(v: &AMQPValue) -> AMQPValue {
    if let Some(i) = crate::catalog::amqp::tables::int_value(v) {
        return AMQPValue::LongLongInt(i);
    }
    match v {
        AMQPValue::Float(f) => AMQPValue::Double(*f as f64),
        AMQPValue::ShortString(s) => AMQPValue::LongString(s.as_str().into()),
        other => other.clone(),
    }
}

fn headers_pattern(args: &FieldTable) -> HeadersPattern {
    let mode = args
        .inner()
        .get("x-match")
        .and_then(crate::catalog::amqp::tables::str_value)
        .unwrap_or_else(|| "all".into());
    let with_x = mode.ends_with("-with-x");
    let fields = args
        .inner()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k != "x-match" && (with_x || !k.starts_with("x-"))
        })
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect();
    HeadersPattern {
        any: mode.starts_with("any"),
        fields,
    }
}

/// RabbitMQ's headers-exchange rule: a `void` pattern value only needs the header to be
/// present; otherwise type class and value must be equal. `all` needs every field, `any`
/// at least one.
fn headers_match(p: &HeadersPattern, headers: &FieldTable) -> bool {
    let field_ok = |(k, v): &(String, AMQPValue)| match headers.inner().get(k.as_str()) {
        None => false,
        Some(_) if matches!(v, AMQPValue::Void) => true,
        Some(h) => normalize(h) == normalize(v),
    };
    if p.any {
        p.fields.iter().any(field_ok)
    } else {
        p.fields.iter().all(field_ok)
    }
}

impl Router {
    pub fn build(state: &CatalogState, shards: usize) -> Router {
        let mut vhosts = HashMap::new();
        let mut owned = vec![0; shards.max(1)];
        for (vhost, t) in &state.amqp {
            let vh: Arc<str> = Arc::from(vhost.as_str());
            let mut v = VhostRoutes::default();
            for (name, q) in &t.queues {
                let owner = queue_owner(q.id, shards);
                if let Some(n) = owned.get_mut(owner) {
                    *n += 1;
                }
                v.queues.insert(
                    name.clone(),
                    QueueRef {
                        vhost: vh.clone(),
                        name: Arc::from(name.as_str()),
                        id: q.id,
                        owner,
                    },
                );
            }
            let mut add_exchange = |name: &str, kind, internal, alternate: Option<&String>| {
                v.exchanges.insert(
                    name.to_owned(),
                    ExchangeRoutes {
                        kind,
                        internal,
                        alternate: alternate.map(|a| Arc::from(a.as_str())),
                        direct: HashMap::new(),
                        fanout: Vec::new(),
                        topic: Vec::new(),
                        topic_trie: TopicTrie::default(),
                        headers: Vec::new(),
                        partitions: Vec::new(),
                    },
                );
            };
            for (name, kind) in BUILTIN_EXCHANGES {
                add_exchange(name, *kind, false, None);
            }
            for (name, e) in &t.exchanges {
                add_exchange(name, e.kind, e.internal, e.alternate.as_ref());
            }
            for (name, q) in &t.queues {
                let Some((topic, k)) = crate::stream::superstream::partition_of_queue(q) else {
                    continue;
                };
                let n = state.topic(&topic).map_or(0, |t| t.partitions);
                let (Some(ex), Some(qref)) = (v.exchanges.get_mut(&topic), v.queues.get(name))
                else {
                    continue;
                };
                let super_stream = t
                    .exchanges
                    .get(&topic)
                    .is_some_and(|e| crate::stream::superstream::is_super_exchange(&e.arguments));
                if super_stream && k < n {
                    ex.partitions.resize(n as usize, None);
                    ex.partitions[k as usize] = Some(Dest::Queue(qref.clone()));
                }
            }
            for b in &t.bindings {
                let dest = match b.dest_kind {
                    DestKind::Queue => match v.queues.get(&b.destination) {
                        Some(q) => Dest::Queue(q.clone()),
                        None => continue,
                    },
                    DestKind::Exchange => Dest::Exchange(Arc::from(b.destination.as_str())),
                };
                let Some(ex) = v.exchanges.get_mut(&b.source) else {
                    continue;
                };
                match ex.kind {
                    ExchangeKind::Direct => ex
                        .direct
                        .entry(b.routing_key.clone())
                        .or_default()
                        .push(dest),
                    ExchangeKind::Fanout => ex.fanout.push(dest),
                    ExchangeKind::Topic => {
                        let words: Vec<String> = topic_words(&b.routing_key)
                            .into_iter()
                            .map(str::to_owned)
                            .collect();
                        ex.topic_trie.insert(&words, ex.topic.len());
                        ex.topic.push(dest);
                    }
                    ExchangeKind::Headers => ex
                        .headers
                        .push((headers_pattern(&decode_table(&b.arguments)), dest)),
                }
            }
            vhosts.insert(vhost.clone(), v);
        }
        Router {
            version: state.version,
            vhosts,
            owned,
        }
    }

    /// How many queues each shard owns, by shard.
    pub fn owned(&self) -> &[usize] {
        &self.owned
    }

    /// The queue `name` of `vhost`, if declared.
    pub fn queue(&self, vhost: &str, name: &str) -> Option<&QueueRef> {
        self.vhosts.get(vhost)?.queues.get(name)
    }

    /// The queues a message published to `exchange` with `routing_key` reaches, each once.
    /// `headers` is decoded only if a headers exchange is on the path. Publishing to an
    /// internal exchange is `RouteError::Internal`.
    pub fn route(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        headers: &mut dyn FnMut() -> FieldTable,
    ) -> Result<Targets, RouteError> {
        let Some(v) = self.vhosts.get(vhost) else {
            // A vhost with nothing declared yet: only the builtin exchanges exist, and
            // they have no bindings.
            return if BUILTIN_EXCHANGES.iter().any(|(n, _)| *n == exchange) {
                Ok(Targets::new())
            } else {
                Err(RouteError::NoExchange)
            };
        };
        if exchange.is_empty() {
            // The default exchange (the common case; every vhost has it, and it is never
            // internal): the queue named by the key. Tested before the map lookup, which
            // would compare "" with "" (see `util::same_name`).
            return Ok(v.queues.get(routing_key).cloned().into_iter().collect());
        }
        let Some(first) = v.exchanges.get(exchange) else {
            return Err(RouteError::NoExchange);
        };
        if first.internal {
            return Err(RouteError::Internal);
        }
        let mut out = Reached::default();
        let mut visited: Vec<&str> = Vec::new();
        let mut decoded: Option<FieldTable> = None;
        let mut rk_words: Option<Vec<&str>> = None;
        let mut stack: Vec<&str> = vec![exchange];
        while let Some(name) = stack.pop() {
            if visited.contains(&name) {
                continue;
            }
            visited.push(name);
            let Some(ex) = v.exchanges.get(name) else {
                continue;
            };
            let before = out.len() + stack.len();
            let mut dests: Vec<&Dest> = Vec::new();
            if name.is_empty() {
                // The default exchange as an exchange-to-exchange destination.
                if let Some(q) = v.queues.get(routing_key) {
                    out.push(q);
                }
                continue;
            }
            match ex.kind {
                ExchangeKind::Direct if !ex.partitions.is_empty() => {
                    let n = ex.partitions.len() as i32;
                    let p = crate::kafka::partitioner::partition_for(routing_key.as_bytes(), n);
                    if let Some(Some(d)) = ex.partitions.get(p as usize) {
                        dests.push(d);
                    }
                }
                ExchangeKind::Direct => {
                    if let Some(ds) = ex.direct.get(routing_key) {
                        dests.extend(ds.iter());
                    }
                }
                ExchangeKind::Fanout => dests.extend(ex.fanout.iter()),
                ExchangeKind::Topic => {
                    let words = rk_words.get_or_insert_with(|| topic_words(routing_key));
                    let mut hits = Vec::new();
                    ex.topic_trie.matches(words, &mut hits);
                    hits.sort_unstable();
                    hits.dedup();
                    dests.extend(hits.into_iter().filter_map(|i| ex.topic.get(i)));
                }
                ExchangeKind::Headers => {
                    if !ex.headers.is_empty() {
                        let h = decoded.get_or_insert_with(&mut *headers);
                        dests.extend(
                            ex.headers
                                .iter()
                                .filter(|(p, _)| headers_match(p, h))
                                .map(|(_, d)| d),
                        );
                    }
                }
            }
            for d in dests {
                match d {
                    Dest::Queue(q) => out.push(q),
                    Dest::Exchange(e) => stack.push(e),
                }
            }
            // Nothing matched at this exchange: try its alternate exchange.
            if out.len() + stack.len() == before {
                if let Some(ae) = &ex.alternate {
                    stack.push(ae);
                }
            }
        }
        Ok(out.queues)
    }
}

/// The queues a publish reached. Inline while one (the common case: no allocation per
/// publish).
pub type Targets = smallvec::SmallVec<[QueueRef; 1]>;

/// The queues a route reached, each once: a scan while few, a set past that (fanouts to
/// many queues).
#[derive(Default)]
struct Reached {
    queues: Targets,
    seen: Option<HashSet<u64>>,
}

impl Reached {
    fn len(&self) -> usize {
        self.queues.len()
    }

    fn push(&mut self, q: &QueueRef) {
        const SCAN: usize = 16;
        let new = match &mut self.seen {
            Some(seen) => seen.insert(q.id),
            None if self.queues.len() < SCAN => !self.queues.iter().any(|x| x.id == q.id),
            None => {
                let mut seen: HashSet<u64> = self.queues.iter().map(|x| x.id).collect();
                let new = seen.insert(q.id);
                self.seen = Some(seen);
                new
            }
        };
        if new {
            self.queues.push(q.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::amqp::arguments::QueueArgs;
    use crate::catalog::amqp::tables::encode_table;
    use crate::catalog::amqp::{apply, Binding, Exchange, Queue, TopologyChange};

    #[test]
    fn topic_edge_cases() {
        let m = |p: &str, k: &str| topic_match(&topic_words(p), &topic_words(k));
        assert!(m("#", ""));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#.c", "c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.b.c"));
        assert!(!m("a.#.c", "a.b.b"));
        assert!(m("*.b", "a.b"));
        assert!(!m("*.b", "b"));
        assert!(!m("*", ""));
        assert!(m("*", "a"));
        assert!(!m("*", "a.b"));
        assert!(m("a.*.#", "a.b"));
        assert!(!m("a.*.#", "a"));
        assert!(m("#.#", ""));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a..b", "a..b"));
        assert!(m("a.*.b", "a..b"));
    }

    #[test]
    fn topic_trie_agrees_with_topic_match() {
        let patterns = [
            "#", "a.#", "#.c", "a.#.c", "*.b", "*", "a.*.#", "#.#", "", "a..b", "a.*.b", "a.b.c",
            "#.b.#",
        ];
        let keys = [
            "", "a", "a.b", "a.b.c", "a.c", "a.b.b.c", "a.b.b", "b", "a..b", "c", "x.b.y",
        ];
        let mut trie = TopicTrie::default();
        let words: Vec<Vec<String>> = patterns
            .iter()
            .map(|p| topic_words(p).into_iter().map(str::to_owned).collect())
            .collect();
        for (i, w) in words.iter().enumerate() {
            trie.insert(w, i);
        }
        for k in keys {
            let key = topic_words(k);
            let mut hits = Vec::new();
            trie.matches(&key, &mut hits);
            hits.sort_unstable();
            hits.dedup();
            let want: Vec<usize> = (0..patterns.len())
                .filter(|i| topic_match(&words[*i], &key))
                .collect();
            assert_eq!(hits, want, "key {k:?}");
        }
    }

    #[test]
    fn headers_rules() {
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("any".into()));
        args.insert("a".into(), AMQPValue::LongInt(1));
        args.insert("b".into(), AMQPValue::Void);
        let p = headers_pattern(&args);
        let mut h = FieldTable::default();
        h.insert("a".into(), AMQPValue::ShortShortInt(1));
        assert!(headers_match(&p, &h));
        let mut all = args.clone();
        all.insert("x-match".into(), AMQPValue::LongString("all".into()));
        assert!(!headers_match(&headers_pattern(&all), &h));
        h.insert("b".into(), AMQPValue::LongString("anything".into()));
        assert!(headers_match(&headers_pattern(&all), &h));
        let empty_any = headers_pattern(&{
            let mut t = FieldTable::default();
            t.insert("x-match".into(), AMQPValue::LongString("any".into()));
            t
        });
        assert!(!headers_match(&empty_any, &h));
        assert!(headers_match(&headers_pattern(&FieldTable::default()), &h));
    }

    #[test]
    fn routes_through_exchanges_and_alternates() {
        let mut s = CatalogState::default();
        let v = "/".to_string();
        let ex = |name: &str, kind, alt: Option<&str>| Exchange {
            name: name.into(),
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: encode_table(&FieldTable::default()),
            alternate: alt.map(str::to_owned),
        };
        let q = |name: &str, id| Queue {
            name: name.into(),
            id,
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: encode_table(&FieldTable::default()),
            args: QueueArgs::default(),
        };
        let bind = |s: &str, d: &str, k: DestKind, rk: &str| Binding {
            source: s.into(),
            destination: d.into(),
            dest_kind: k,
            routing_key: rk.into(),
            arguments: encode_table(&FieldTable::default()),
        };
        for c in [
            TopologyChange::DeclareExchange {
                vhost: v.clone(),
                exchange: ex("d", ExchangeKind::Direct, Some("ae")),
            },
            TopologyChange::DeclareExchange {
                vhost: v.clone(),
                exchange: ex("ae", ExchangeKind::Fanout, None),
            },
            TopologyChange::DeclareExchange {
                vhost: v.clone(),
                exchange: ex("t", ExchangeKind::Topic, None),
            },
            TopologyChange::DeclareQueue {
                vhost: v.clone(),
                queue: q("q1", 1),
            },
            TopologyChange::DeclareQueue {
                vhost: v.clone(),
                queue: q("q2", 2),
            },
            TopologyChange::Bind {
                vhost: v.clone(),
                binding: bind("d", "q1", DestKind::Queue, "k"),
            },
            TopologyChange::Bind {
                vhost: v.clone(),
                binding: bind("ae", "q2", DestKind::Queue, ""),
            },
            TopologyChange::Bind {
                vhost: v.clone(),
                binding: bind("t", "d", DestKind::Exchange, "x.*"),
            },
        ] {
            apply(&mut s.amqp, &c);
        }
        let r = Router::build(&s, 2);
        let names = |res: Result<Targets, RouteError>| -> Vec<String> {
            res.unwrap()
                .into_iter()
                .map(|q| q.name.to_string())
                .collect()
        };
        let mut none = FieldTable::default;
        assert_eq!(names(r.route("/", "d", "k", &mut none)), vec!["q1"]);
        assert_eq!(names(r.route("/", "d", "other", &mut none)), vec!["q2"]);
        assert_eq!(names(r.route("/", "", "q2", &mut none)), vec!["q2"]);
        assert_eq!(names(r.route("/", "t", "x.y", &mut none)), vec!["q2"]);
        assert!(names(r.route("/", "t", "z", &mut none)).is_empty());
        assert_eq!(
            r.route("/", "nope", "k", &mut none),
            Err(RouteError::NoExchange)
        );
    }
}
