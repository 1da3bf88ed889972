//! Per-shard counters and latency histograms, and the plain records (`PartitionStats`,
//! `QueueStats`, `ConnectionStats`) the HTTP side copies into its per-shard snapshot.
//!
//! Each shard's executor thread has its own `ShardMetrics` (a thread local: one per shard,
//! never shared, never locked); the code that does the work records into it with
//! `metrics::with`. A 1-second ticker on each shard (`run_ticker`) turns the running totals
//! into per-second rates, rotates the "last second" latency histograms and measures how
//! busy the shard's executor was. `http::stats` gathers all of it, with the shard's
//! partitions, queues, groups and connections, from every shard when scraped. Nothing here
//! names a protocol's state.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// The protocols a shard serves; indexes the per-protocol counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Kafka = 0,
    Amqp = 1,
    Http = 2,
}

pub const PROTOCOLS: [Protocol; 3] = [Protocol::Kafka, Protocol::Amqp, Protocol::Http];

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Kafka => "kafka",
            Protocol::Amqp => "amqp",
            Protocol::Http => "http",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        PROTOCOLS.into_iter().find(|p| p.name() == name)
    }
}

/// A latency histogram in microseconds (1 µs to 1 hour, 3 significant figures) with the
/// exact sum Prometheus wants.
#[derive(Clone)]
pub struct Latency {
    pub hdr: hdrhistogram::Histogram<u64>,
    pub sum_micros: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            // 1 µs .. 1 h at 3 significant figures: constant bounds that are valid.
            hdr: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            sum_micros: 0,
        }
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        self.hdr.saturating_record(us);
        self.sum_micros += us;
    }

    pub fn add(&mut self, other: &Latency) {
        // Both have the same bounds, so adding cannot fail; a failure would only lose
        // this one merge.
        let _ = self.hdr.add(&other.hdr);
        self.sum_micros += other.sum_micros;
    }

    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// The value at quantile `q` (0..=1) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hdr.is_empty() {
            return 0.0;
        }
        self.hdr.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.hdr.is_empty() {
            return 0.0;
        }
        self.sum_micros as f64 / self.count() as f64 / 1000.0
    }

    /// Observations at or below `seconds` (a Prometheus bucket's cumulative count).
    pub fn count_at_or_below(&self, seconds: f64) -> u64 {
        let us = (seconds * 1e6) as u64;
        self.hdr.count_between(0, us)
    }
}

/// FNV-1a, for the maps the per-message counters look names up in (topics, exchanges,
/// queues, vhosts, API names). Those names are few, short and made by operators or the
/// broker, not by each request, so a fast hash serves better than SipHash's resistance
/// to crafted keys: one AMQP message takes several of these lookups.
#[derive(Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by name, hashed with `NameHasher`.
pub type Names<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// Messages and bytes of one topic (Kafka) or exchange/queue (AMQP).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    pub messages_in: u64,
    pub messages_out: u64,
}

/// The counters of one protocol on one shard.
#[derive(Clone, Default)]
pub struct ProtocolMetrics {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_active: u64,
    pub connections_total: u64,
    /// Connections this shard took over from another shard (Kafka: to be with the
    /// partitions they use), counted here and not in `connections_total`.
    pub connections_moved: u64,
    /// Connections refused at accept: `limits.max_connections_per_shard` reached on the
    /// shard, `limits.max_connections_per_ip` reached for the client's address.
    pub refused_per_shard: u64,
    pub refused_per_ip: u64,
    /// Times a connection stopped reading (Kafka) or was blocked (AMQP) on its in-flight
    /// budget.
    pub throttled: u64,
    pub requests: HashMap<&'static str, u64, BuildHasherDefault<NameHasher>>,
    pub errors: HashMap<i32, u64>,
    /// Per topic (Kafka) or exchange / queue (AMQP): messages in and out.
    pub flows: Names<Flow>,
    /// TLS handshakes completed on this protocol's TLS listeners, and those that failed,
    /// by reason (`security::audit`).
    pub tls_handshakes: u64,
    pub tls_failures: HashMap<&'static str, u64>,
    /// Failed authentications by mechanism (`PLAIN`, `SCRAM-SHA-512`, `EXTERNAL`, `basic`…).
    pub auth_failures: HashMap<&'static str, u64>,
    /// Requests refused by an ACL, by (operation, resource type).
    pub acl_denials: HashMap<(&'static str, &'static str), u64>,
    /// Request to acknowledgement of produce / publish.
    pub publish: Latency,
    /// Fetch / delivery latency.
    pub fetch: Latency,
}

/// Per-second rates computed by the ticker.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rates {
    pub messages_in: f64,
    pub messages_out: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
}

/// Everything one shard counts.
#[derive(Default)]
pub struct ShardMetrics {
    pub protocols: [ProtocolMetrics; 3],
    pub fsync: Latency,
    /// Publish / fetch latency of the last full second (all protocols).
    pub publish_recent: Latency,
    pub fetch_recent: Latency,
    publish_window: Latency,
    fetch_window: Latency,
    pub rates: Rates,
    /// Per (protocol, flow name): messages in and out per second.
    pub flow_rates: HashMap<(Protocol, String), (f64, f64)>,
    /// AMQP queues this shard owns, by vhost then queue: messages enqueued and delivered.
    queues: Names<Names<Flow>>,
    /// Per (vhost, queue): messages enqueued and delivered per second.
    pub queue_rates: HashMap<(String, String), (f64, f64)>,
    pub busy_ratio: f64,
    /// Time the executor ran tasks since the last tick, read early by `busy_lately` (the
    /// executor's counters reset when read); the tick adds it to its own reading.
    busy_since_tick: Duration,
    last: Option<(Instant, Totals)>,
}

/// Running totals the ticker differentiates.
#[derive(Clone, Default)]
struct Totals {
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    flows: HashMap<(Protocol, String), Flow>,
    queues: HashMap<(String, String), Flow>,
}

/// Per-second in/out rates of every flow in `now` against `before`.
fn flow_rates<K: Clone + Eq + std::hash::Hash>(
    now: &HashMap<K, Flow>,
    before: &HashMap<K, Flow>,
    secs: f64,
) -> HashMap<K, (f64, f64)> {
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    now.iter()
        .map(|(k, f)| {
            let b = before.get(k).copied().unwrap_or_default();
            (
                k.clone(),
                (
                    per(f.messages_in, b.messages_in),
                    per(f.messages_out, b.messages_out),
                ),
            )
        })
        .collect()
}

thread_local! {
    static METRICS: RefCell<ShardMetrics> = RefCell::new(ShardMetrics::default());
}

/// Runs `f` on this shard's metrics.
pub fn with<R>(f: impl FnOnce(&mut ShardMetrics) -> R) -> R {
    METRICS.with(|m| f(&mut m.borrow_mut()))
}

impl ShardMetrics {
    pub fn protocol(&mut self, p: Protocol) -> &mut ProtocolMetrics {
        &mut self.protocols[p as usize]
    }

    /// `n` messages of `bytes` came in for `flow` (a topic, an exchange).
    pub fn produced(&mut self, p: Protocol, flow: &str, n: u64, bytes: u64) {
        let m = self.protocol(p);
        m.bytes_in += bytes;
        count(&mut m.flows, flow, |f| f.messages_in += n);
    }

    /// `n` messages of `bytes` went out of `flow` (a topic, a queue).
    pub fn consumed(&mut self, p: Protocol, flow: &str, n: u64, bytes: u64) {
        let m = self.protocol(p);
        m.bytes_out += bytes;
        count(&mut m.flows, flow, |f| f.messages_out += n);
    }

    /// `n` messages entered the queue `vhost`/`queue` (on its owner shard).
    pub fn enqueued(&mut self, vhost: &str, queue: &str, n: u64) {
        self.queue(vhost, queue, |f| f.messages_in += n);
    }

    /// `n` messages of the queue went to consumers or basic.get (on its owner shard).
    pub fn dequeued(&mut self, vhost: &str, queue: &str, n: u64) {
        self.queue(vhost, queue, |f| f.messages_out += n);
    }

    fn queue(&mut self, vhost: &str, queue: &str, f: impl FnOnce(&mut Flow)) {
        match self.queues.get_mut(vhost) {
            Some(queues) => count(queues, queue, f),
            None => {
                let mut queues = Names::default();
                count(&mut queues, queue, f);
                self.queues.insert(vhost.to_owned(), queues);
            }
        }
    }

    /// Forgets a deleted queue's counters.
    pub fn queue_deleted(&mut self, vhost: &str, queue: &str) {
        if let Some(queues) = self.queues.get_mut(vhost) {
            queues.remove(queue);
        }
    }

    pub fn request(&mut self, p: Protocol, api: &'static str) {
        *self.protocol(p).requests.entry(api).or_default() += 1;
    }

    pub fn error(&mut self, p: Protocol, code: i32) {
        *self.protocol(p).errors.entry(code).or_default() += 1;
    }

    pub fn publish_latency(&mut self, p: Protocol, d: Duration) {
        self.protocol(p).publish.record(d);
        self.publish_window.record(d);
    }

    pub fn fetch_latency(&mut self, p: Protocol, d: Duration) {
        self.protocol(p).fetch.record(d);
        self.fetch_window.record(d);
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for p in PROTOCOLS {
            let m = &self.protocols[p as usize];
            t.bytes_in += m.bytes_in;
            t.bytes_out += m.bytes_out;
            for (name, f) in &m.flows {
                t.messages_in += f.messages_in;
                t.messages_out += f.messages_out;
                t.flows.insert((p, name.clone()), *f);
            }
        }
        for (vhost, queues) in &self.queues {
            for (name, f) in queues {
                t.queues.insert((vhost.clone(), name.clone()), *f);
            }
        }
        t
    }

    /// One tick: rates since the last tick, latency windows rotated.
    fn tick(&mut self, now: Instant, busy: Duration) {
        let totals = self.totals();
        if let Some((at, last)) = &self.last {
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            self.rates = Rates {
                messages_in: per(totals.messages_in, last.messages_in),
                messages_out: per(totals.messages_out, last.messages_out),
                bytes_in: per(totals.bytes_in, last.bytes_in),
                bytes_out: per(totals.bytes_out, last.bytes_out),
            };
            self.flow_rates = flow_rates(&totals.flows, &last.flows, secs);
            self.queue_rates = flow_rates(&totals.queues, &last.queues, secs);
            self.busy_ratio = (busy.as_secs_f64() / secs).clamp(0.0, 1.0);
        }
        self.last = Some((now, totals));
        self.publish_recent = std::mem::take(&mut self.publish_window);
        self.fetch_recent = std::mem::take(&mut self.fetch_window);
    }
}

/// Applies `f` to the flow `name`: one lookup by `&str` when it exists (the common
/// case, which allocates nothing), an insert the first time.
fn count(flows: &mut Names<Flow>, name: &str, f: impl FnOnce(&mut Flow)) {
    match flows.get_mut(name) {
        Some(flow) => f(flow),
        None => f(flows.entry(name.to_owned()).or_default()),
    }
}

/// Every second until the shard stops: rates, latency windows and the busy ratio (time
/// the executor spent running tasks over wall time).
pub async fn run_ticker(stopping: impl Fn() -> bool) {
    // The first call resets the executor's counters; they are read only here and by
    // `busy_lately`, which keeps what it read for the tick.
    let _ = glommio::executor().executor_stats();
    with(|m| {
        m.busy_since_tick = Duration::ZERO;
        m.tick(Instant::now(), Duration::ZERO)
    });
    while !stopping() {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        tick_now();
    }
}

/// One tick, with the time the executor ran tasks since the last one.
fn tick_now() {
    let ran = glommio::executor().executor_stats().total_runtime();
    with(|m| {
        let busy = ran + std::mem::take(&mut m.busy_since_tick);
        m.tick(Instant::now(), busy)
    });
}

/// The time since the last tick after which `busy_lately` counts it.
const LATELY: Duration = Duration::from_millis(100);

/// How busy this shard is now, for deciding whether it takes more work
/// (`runtime::placement::offer`): the busy ratio of the last whole tick, or that of the
/// time since it when that is at least `LATELY` long and busier, so a load that began
/// after the tick counts at once. Called on the shard it measures.
pub fn busy_lately() -> f64 {
    let ran = glommio::executor().executor_stats().total_runtime();
    with(|m| {
        m.busy_since_tick += ran;
        let since = m.last.as_ref().map(|(at, _)| at.elapsed());
        match since {
            Some(since) if since >= LATELY => {
                let recent = m.busy_since_tick.as_secs_f64() / since.as_secs_f64();
                m.busy_ratio.max(recent.clamp(0.0, 1.0))
            }
            _ => m.busy_ratio,
        }
    })
}

/// One partition as the metrics see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionStats {
    pub topic: String,
    pub partition: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub size_bytes: u64,
}

/// One AMQP queue as the metrics see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStats {
    pub vhost: String,
    pub name: String,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub consumers: u64,
    pub durable: bool,
}

/// One open client connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionStats {
    pub id: u64,
    pub protocol: &'static str,
    pub shard: usize,
    pub peer: String,
    pub local: String,
    pub connected_at_ms: i64,
    /// The authenticated user (AMQP and HTTP), if any.
    pub user: Option<String>,
}

/// What the operating system says of the process and its data directory.
#[derive(Debug, Clone, Default)]
pub struct Process {
    pub memory_bytes: u64,
    /// CPU used since the previous reading on this shard, in cores (1.0 = one core busy).
    pub cpu_ratio: f64,
    pub start_time_seconds: u64,
    pub data_dir: String,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    /// Free space is below `storage.min_free_bytes` (set by the scraping shard).
    pub disk_alarm: bool,
    pub disk_min_free_bytes: u64,
}

thread_local! {
    static SYSTEM: RefCell<sysinfo::System> = RefCell::new(sysinfo::System::new());
}

/// Reads the process's memory and CPU (sysinfo) and the data directory's filesystem.
pub fn process(data_dir: &std::path::Path) -> Process {
    let mut p = Process {
        data_dir: data_dir.display().to_string(),
        ..Process::default()
    };
    if let Ok(pid) = sysinfo::get_current_pid() {
        SYSTEM.with(|sys| {
            let mut sys = sys.borrow_mut();
            sys.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&[pid]),
                true,
                sysinfo::ProcessRefreshKind::nothing()
                    .with_cpu()
                    .with_memory(),
            );
            if let Some(me) = sys.process(pid) {
                p.memory_bytes = me.memory();
                p.cpu_ratio = me.cpu_usage() as f64 / 100.0;
                p.start_time_seconds = me.start_time();
            }
        });
    }
    if let Ok(path) = std::ffi::CString::new(p.data_dir.as_bytes()) {
        // SAFETY: `libc::statvfs` is plain integers, so all-zero is a valid value; statvfs
        // reads the NUL-terminated path `path` owns (alive for the call) and writes one
        // `statvfs` into our local.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(path.as_ptr(), &mut st) == 0 {
                p.disk_free_bytes = st.f_bavail as u64 * st.f_frsize as u64;
                p.disk_total_bytes = st.f_blocks as u64 * st.f_frsize as u64;
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard that got busy after its last tick says so at once, and the tick after
    /// still counts the time read early.
    #[test]
    fn a_load_since_the_last_tick_counts_at_once_and_in_the_next_tick() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let _ = glommio::executor().executor_stats();
                with(|m| m.tick(Instant::now(), Duration::ZERO));
                glommio::timer::sleep(Duration::from_millis(150)).await;
                let idle = busy_lately();
                assert!(idle < 0.2, "idle since the tick: {idle}");
                // A task that runs 150 ms without yielding, then a pause that ends the
                // task queue's run (its time is counted when the run ends).
                glommio::spawn_local(async {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_millis(150) {
                        std::hint::spin_loop();
                    }
                })
                .await;
                glommio::timer::sleep(Duration::from_millis(1)).await;
                let busy = busy_lately();
                assert!(busy > 0.3, "busy half the time since the tick: {busy}");
                assert_eq!(with(|m| m.busy_ratio), 0.0, "the last whole tick was idle");
                tick_now();
                let ticked = with(|m| m.busy_ratio);
                assert!(
                    ticked > 0.3,
                    "the tick counts what was read early: {ticked}"
                );
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn ticks_turn_totals_into_rates() {
        let mut m = ShardMetrics::default();
        let t0 = Instant::now();
        m.tick(t0, Duration::ZERO);
        m.produced(Protocol::Kafka, "orders", 500, 50_000);
        m.consumed(Protocol::Kafka, "orders", 250, 25_000);
        m.tick(t0 + Duration::from_secs(2), Duration::from_millis(500));
        assert_eq!(m.rates.messages_in, 250.0);
        assert_eq!(m.rates.messages_out, 125.0);
        assert_eq!(m.rates.bytes_in, 25_000.0);
        assert_eq!(m.busy_ratio, 0.25);
        assert_eq!(
            m.flow_rates.get(&(Protocol::Kafka, "orders".to_string())),
            Some(&(250.0, 125.0))
        );
    }

    #[test]
    fn queue_counters_by_vhost_are_forgotten_with_their_queue() {
        let mut m = ShardMetrics::default();
        m.enqueued("/", "jobs", 3);
        m.enqueued("staging", "jobs", 1);
        m.dequeued("/", "jobs", 2);
        let t = m.totals();
        let f = t.queues[&("/".to_string(), "jobs".to_string())];
        assert_eq!((f.messages_in, f.messages_out), (3, 2));
        m.queue_deleted("/", "jobs");
        let t = m.totals();
        assert!(!t
            .queues
            .contains_key(&("/".to_string(), "jobs".to_string())));
        assert!(t
            .queues
            .contains_key(&("staging".to_string(), "jobs".to_string())));
    }

    #[test]
    fn latency_quantiles_and_buckets() {
        let mut l = Latency::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 100);
        assert!((l.quantile_ms(0.99) - 99.0).abs() < 0.5);
        assert_eq!(l.count_at_or_below(0.0505), 50);
        assert!((l.mean_ms() - 50.5).abs() < 0.01);
    }
}
