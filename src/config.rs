//! The broker's configuration: one `Config` with embedded defaults, layered with a TOML
//! file, `PORTASK_*` environment variables and command-line flags, in that order.
//!
//! Built once in `main` before any shard starts, then cloned into every shard (it is plain
//! data). Every key has a default here; an unknown key or a bad value is a startup error
//! that names the key. `Provenance` remembers where each effective value came from so
//! `--print-config` can say it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors building a configuration; each names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// One shard pinned to each core of the process's affinity mask.
    Pinned,
    /// Shards float over the affinity mask (tests, shared machines).
    Unpinned,
}

/// How `acks=1` / unconfirmed writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fdatasync only for `acks=all` and on `flush_messages` / `flush_ms`.
    OnDemand,
    /// fdatasync after every write round, whatever the client asked for.
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of all data: `<data_dir>/<shard>/...`.
    pub data_dir: PathBuf,
    /// Number of shards; 0 means one per core of the affinity mask.
    pub shards: usize,
    pub placement: Placement,
    /// The broker id reported in Kafka metadata.
    pub node_id: i32,
    pub kafka: KafkaConfig,
    pub amqp: AmqpConfig,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub network: NetworkConfig,
    /// The one set of users of all three protocols (`[[users]]`): Kafka SASL, AMQP
    /// PLAIN/AMQPLAIN and HTTP basic authentication check these. `amqp.users`, the older
    /// place, is still read and merged in with a warning. With none at all the built-in
    /// `guest`/`guest` (loopback only, see `amqp.loopback_users`) is the one user.
    pub users: Vec<User>,
    /// Certificates of every TLS listener (Kafka `SSL`/`SASL_SSL`, `amqp.tls_addr`,
    /// `http.tls_addr`); reloaded from the same files on SIGHUP.
    pub tls: TlsConfig,
    /// Kafka's authorizer: ACLs (CreateAcls/DescribeAcls/DeleteAcls) and their enforcement.
    pub acl: AclConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub addr: String,
    /// Host advertised in Metadata; empty means the address the client connected to.
    pub advertised_host: String,
    /// Port advertised in Metadata; 0 means the port the client connected to.
    pub advertised_port: u16,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic.
    pub num_partitions: i32,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is
    /// created (first start); later changes do not repartition it, as in Kafka.
    pub offsets_topic_num_partitions: i32,
    /// `message.max.bytes`: default `max.message.bytes` of a topic (one record batch).
    pub max_message_bytes: i64,
    /// `socket.request.max.bytes`: the largest request frame accepted.
    pub max_request_bytes: usize,
    /// The largest frame of any request other than Produce. Those decode into structures
    /// of up to ~157x their frame (a Produce request keeps its records as the frame's
    /// bytes), so they get a smaller limit than `max_request_bytes`; 4 MiB holds a
    /// Metadata request for ~100 000 topics.
    pub max_nonproduce_request_bytes: usize,
    /// Requests a connection may have in flight before the broker stops reading it.
    pub max_inflight_requests: usize,
    /// `connections.max.idle.ms`: a connection that sends nothing for this long, with no
    /// answer owed to it, is closed (as is one that stalls inside a request frame, or
    /// reads none of its answers for this long).
    pub connections_max_idle_ms: u64,
    /// A request must arrive whole within this many ms of its first byte (size prefix to
    /// last byte), or the connection is closed: a client trickling a frame (slowloris)
    /// cannot hold a connection and its buffer for `connections_max_idle_ms`. Time the
    /// broker itself holds the read back (in-flight budgets) does not count; a connection
    /// between requests (a long-poll Fetch included) is not timed by it.
    pub request_read_timeout_ms: u64,
    /// A connection whose Produce and Fetch requests all go to the partitions of one other
    /// shard moves to that shard, when it is not busy (`kafka::placement`); false: every
    /// connection stays on the shard that accepted it.
    pub connections_follow_partitions: bool,
    /// `log.segment.bytes`
    pub segment_bytes: i64,
    /// `log.roll.ms`
    pub segment_ms: i64,
    /// `log.retention.ms` (-1: forever)
    pub retention_ms: i64,
    /// `log.retention.bytes` (-1: unbounded)
    pub retention_bytes: i64,
    /// `log.retention.check.interval.ms`
    pub retention_check_interval_ms: u64,
    /// `log.flush.interval.messages`: fdatasync after this many unsynced messages.
    pub flush_messages: i64,
    /// `log.flush.interval.ms`: fdatasync data older than this (-1: never by time).
    pub flush_ms: i64,
    /// `log.message.timestamp.type`: CreateTime or LogAppendTime.
    pub message_timestamp_type: String,
    /// `log.index.interval.bytes`
    pub index_interval_bytes: u32,
    /// `delete.topic.enable`
    pub delete_topic_enable: bool,
    pub cluster_id: String,
    /// `log.cleaner.backoff.ms`: pause between compaction passes over compacted topics.
    pub compaction_interval_ms: u64,
    /// `group.initial.rebalance.delay.ms`: how long a new group waits for more members.
    pub group_initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`
    pub group_min_session_timeout_ms: u64,
    /// `group.max.session.timeout.ms`
    pub group_max_session_timeout_ms: u64,
    /// `group.consumer.session.timeout.ms`: a consumer-protocol member (KIP-848) that sends
    /// no heartbeat for this long is removed from its group.
    pub group_consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms`: how often consumer-protocol members are told
    /// to heartbeat.
    pub group_consumer_heartbeat_interval_ms: u64,
    /// `group.consumer.max.size`: the most members a consumer-protocol group takes
    /// (GROUP_MAX_SIZE_REACHED beyond).
    pub group_consumer_max_size: u32,
    /// `group.consumer.migration.policy`: online migration between classic and
    /// consumer-protocol groups with members: `bidirectional` (both ways), `upgrade`
    /// (classic → consumer only), `downgrade` (consumer → classic only) or `disabled`.
    pub group_consumer_migration_policy: String,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a transactional
    /// producer may ask for (InitProducerId answers INVALID_TRANSACTION_TIMEOUT above it).
    pub transaction_max_timeout_ms: u64,
    /// `listeners` with `listener.security.protocol.map` and `advertised.listeners`: each
    /// `[[kafka.listeners]]` has a name, an address, a security protocol (`PLAINTEXT`,
    /// `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`; the name when left out) and what Metadata
    /// advertises to clients that connected through it. Empty (the default): one
    /// `PLAINTEXT` listener on `kafka.addr`, advertising `advertised_host`/`_port`.
    pub listeners: Vec<KafkaListener>,
    /// `sasl.enabled.mechanisms` of the `SASL_*` listeners.
    pub sasl_enabled_mechanisms: Vec<String>,
    /// `connections.max.reauth.ms` (KIP-368): a SASL session lasts this long, after which
    /// the client must authenticate again on the same connection or have it closed; 0
    /// (Kafka's default) = sessions do not expire.
    pub connections_max_reauth_ms: u64,
}

/// One Kafka listener (`[[kafka.listeners]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaListener {
    /// The listener's name, as in Kafka's `listeners` (`SASL_SSL://…`, `INTERNAL://…`).
    pub name: String,
    pub addr: String,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`; empty = the listener's name.
    #[serde(default)]
    pub security_protocol: String,
    /// Host advertised in Metadata to clients of this listener; empty = the address the
    /// client connected to.
    #[serde(default)]
    pub advertised_host: String,
    /// Port advertised in Metadata; 0 = the port the client connected to.
    #[serde(default)]
    pub advertised_port: u16,
    /// `listener.name.<name>.ssl.client.auth`: this TLS listener's own client-certificate
    /// rule (an `SSL` listener for mutual TLS beside a `SASL_SSL` one); unset =
    /// `tls.client_auth`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// How a listener authenticates and protects its connections (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn parse(name: &str) -> Option<SecurityProtocol> {
        Some(match name.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Connections are wrapped in TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Clients authenticate with SASL before anything else.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl KafkaListener {
    /// The listener's security protocol (validated by `Config::validate`).
    pub fn protocol(&self) -> SecurityProtocol {
        let name = if self.security_protocol.is_empty() {
            &self.name
        } else {
            &self.security_protocol
        };
        SecurityProtocol::parse(name).unwrap_or(SecurityProtocol::Plaintext)
    }
}

impl KafkaConfig {
    /// The listeners in effect: `listeners`, or the one `PLAINTEXT` listener on `addr`.
    pub fn effective_listeners(&self) -> Vec<KafkaListener> {
        if !self.listeners.is_empty() {
            return self.listeners.clone();
        }
        vec![KafkaListener {
            name: "PLAINTEXT".into(),
            addr: self.addr.clone(),
            security_protocol: "PLAINTEXT".into(),
            advertised_host: self.advertised_host.clone(),
            advertised_port: self.advertised_port,
            client_auth: None,
        }]
    }
}

/// SASL mechanisms the Kafka listeners can offer.
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub addr: String,
    /// Largest message body accepted (RabbitMQ's default is 128 MiB).
    pub max_message_bytes: usize,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_secs: u16,
    pub default_prefetch: u16,
    /// Deliveries a consumer may have on their way to its socket (sent by the queue's
    /// shard, not yet written by its connection's shard), whatever its prefetch...
    pub consumer_window: u32,
    /// ...and their body bytes (one message always goes when nothing is in flight).
    pub consumer_window_bytes: u64,
    /// A delivery not acknowledged for this long closes its channel with 406 and goes
    /// back to its queue (RabbitMQ's `consumer_timeout`, 30 minutes); 0 = never.
    pub consumer_timeout_ms: u64,
    /// A connection at rest whose publishes all go to the queues of one other shard moves
    /// to that shard, when it is not busy (`amqp::connection::moving`); false: every
    /// connection stays on the shard that accepted it.
    pub connections_follow_queues: bool,
    /// A frame must arrive whole within this many ms of its first byte, or the connection
    /// is closed (a client trickling a frame cannot hold a connection and its buffer);
    /// a connection between frames is bounded by heartbeats instead. During the handshake
    /// the shorter handshake timeout (10 s) applies.
    pub frame_read_timeout_ms: u64,
    /// Users, the older place for them: merged into the top-level `[[users]]` with a
    /// warning at startup.
    pub users: Vec<AmqpUser>,
    /// Users that may connect only from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    pub vhosts: Vec<String>,
    /// Per-user, per-vhost configure/write/read regular expressions.
    pub permissions: Vec<AmqpPermission>,
    /// Bytes of messages the queues of one shard keep in memory (a body several of them
    /// share counts once); past it, transient messages are paged to the queue's files.
    pub memory_budget_bytes: usize,
    /// Size at which a queue's message segment file is rolled.
    pub segment_bytes: u64,
    /// The `amqps://` listener (5671 by convention); empty = none. Uses `[tls]`.
    pub tls_addr: String,
    /// SASL mechanisms offered in connection.start, as RabbitMQ's `auth_mechanisms`.
    /// `EXTERNAL` (the user named by the client certificate's subject, as RabbitMQ's
    /// `rabbitmq_auth_mechanism_ssl`) is offered only on TLS connections whose client
    /// presented a certificate the CA verified.
    pub auth_mechanisms: Vec<String>,
    /// Which part of a client certificate names the `EXTERNAL` user, as RabbitMQ's
    /// `ssl_cert_login_from`: `distinguished_name` (RabbitMQ's default, RFC 4514 form) or
    /// `common_name`.
    pub ssl_cert_login_from: String,
}

/// One user of every protocol (`[[users]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// base64(salt(4 bytes) ++ sha256(salt ++ password)), as `rabbitmqctl hash_password`;
    /// empty = no password login except through SCRAM credentials.
    #[serde(default)]
    pub password_hash: String,
    /// SCRAM-SHA-256 credentials as Kafka stores them:
    /// `salt=<base64>,stored_key=<base64>,server_key=<base64>,iterations=<n>`.
    #[serde(default)]
    pub scram_sha_256: String,
    /// SCRAM-SHA-512 credentials, in the same form.
    #[serde(default)]
    pub scram_sha_512: String,
    /// RabbitMQ management tags (`administrator`, `monitoring`, `management`, …).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The older name of `User`, from when only AMQP had users (`amqp.users`).
pub type AmqpUser = User;

/// Whether TLS listeners ask clients for a certificate (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for and verified against `ca_file` when given.
    Requested,
    /// A certificate verified against `ca_file` is required.
    Required,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates client certificates are verified against.
    pub ca_file: PathBuf,
    pub client_auth: ClientAuth,
    /// A TLS handshake must complete within this many ms of the connection, or it is
    /// closed.
    pub handshake_timeout_ms: u64,
}

impl TlsConfig {
    /// A certificate and key are configured.
    pub fn configured(&self) -> bool {
        !self.cert_file.as_os_str().is_empty() && !self.key_file.as_os_str().is_empty()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_auth: ClientAuth::None,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Kafka's authorizer settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AclConfig {
    /// Enforce ACLs (Kafka's `authorizer.class.name` set), on Kafka and on the HTTP API's
    /// topics. Off (the default), every principal may do everything and the ACL APIs answer
    /// SECURITY_DISABLED, as in a Kafka without an authorizer.
    pub enabled: bool,
    /// `super.users`: principals (`User:admin`) allowed everything whatever the ACLs say.
    pub super_users: Vec<String>,
    /// `allow.everyone.if.no.acl.found`: a resource no ACL matches is open to everyone.
    pub allow_everyone_if_no_acl_found: bool,
    /// ACLs that hold from startup (`[[acl.bindings]]`), beside those created with
    /// CreateAcls (kept in the catalog). DescribeAcls lists them; DeleteAcls cannot remove
    /// them (change the file instead).
    pub bindings: Vec<AclBindingConfig>,
}

/// One ACL in the configuration file, in the words of `kafka-acls.sh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclBindingConfig {
    /// `topic`, `group`, `cluster` or `transactional_id`.
    pub resource_type: String,
    /// The resource's name (`kafka-cluster` for the cluster); `*` for every one.
    #[serde(default)]
    pub resource_name: String,
    /// `literal` (the default) or `prefixed`.
    #[serde(default = "literal")]
    pub pattern_type: String,
    /// `User:alice`, or `User:*` for every principal.
    pub principal: String,
    /// A client address, or `*` (the default) for any.
    #[serde(default = "any_host")]
    pub host: String,
    /// Kafka's operations: `all`, `read`, `write`, `create`, `delete`, `alter`,
    /// `describe`, `cluster_action`, `describe_configs`, `alter_configs`,
    /// `idempotent_write`.
    pub operations: Vec<String>,
    /// `allow` (the default) or `deny`.
    #[serde(default = "allow")]
    pub permission: String,
}

/// `Kind:name`, as Kafka writes a principal.
fn principal_like(text: &str) -> bool {
    text.split_once(':')
        .is_some_and(|(kind, _)| !kind.is_empty())
}

fn literal() -> String {
    "literal".into()
}

fn any_host() -> String {
    "*".into()
}

fn allow() -> String {
    "allow".into()
}

impl Config {
    /// Every configured user: `[[users]]`, then `amqp.users` (the older place); with none,
    /// the built-in `guest`.
    pub fn all_users(&self) -> Vec<User> {
        let mut users: Vec<User> = self.users.clone();
        for u in &self.amqp.users {
            if !users.iter().any(|x| x.name == u.name) {
                users.push(u.clone());
            }
        }
        if users.is_empty() {
            users.push(User {
                name: "guest".into(),
                // "guest"
                password_hash: "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe".into(),
                scram_sha_256: String::new(),
                scram_sha_512: String::new(),
                tags: vec!["administrator".into()],
            });
        }
        users
    }
}

/// What one user may do in one vhost (regular expressions over resource names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpPermission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// The `https://` listener; empty = none. Uses `[tls]`.
    pub tls_addr: String,
    /// Read buffer for a request's head (request line and headers); hyper answers 431
    /// above it. At least 8192.
    pub max_header_bytes: usize,
    /// Ask credentials for `/health` and `/health/ready` (open by default, for probes).
    pub auth_health: bool,
    /// Ask credentials for `/metrics` (open by default, for Prometheus).
    pub auth_metrics: bool,
    /// How long `/health` waits for each shard's executor to answer.
    pub health_deadline_ms: u64,
    /// How long a request's head may take to arrive whole, and then its body: past it the
    /// connection is closed (head) or answered 408 and closed (body). Whole, not per read,
    /// so a client trickling a byte at a time cannot hold a connection.
    pub read_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes of recent record batches each partition keeps in memory for tailing consumers.
    pub tail_cache_bytes: usize,
    /// Bytes all the tail caches of one shard may hold together (the shard's memory
    /// budget for Kafka data); over it every partition's cache is cut to an equal share.
    pub shard_tail_cache_bytes: usize,
    pub fsync: FsyncPolicy,
    /// Largest single write submitted to the disk, in bytes.
    pub max_write_bytes: usize,
    /// Free bytes the data directory's filesystem must keep (RabbitMQ's
    /// `disk_free_limit`): below it AMQP publishers are blocked and Kafka/REST produce is
    /// refused, before the disk is actually full. 0 turns the watermark off.
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections_per_shard: usize,
    /// `max.connections.per.ip`: connections one client address may hold open, over all
    /// shards and the Kafka, AMQP and HTTP ports together; more are closed at accept.
    /// 0 (the default) is no limit, as Kafka's default (Integer.MAX_VALUE) is: behind a
    /// load balancer or NAT every client shows as one address, and a default limit would
    /// refuse them, while `max_connections_per_shard` and `nofile` already bound the total.
    pub max_connections_per_ip: usize,
    /// `max.connections.per.ip.overrides`: other limits for some addresses, as Kafka writes
    /// them: `"10.0.0.5:1000,::1:50"` (address, colon, limit; 0 = none for that address).
    /// Addresses only, no host names. Empty by default.
    pub max_connections_per_ip_overrides: String,
    /// Request bytes a connection may have in flight before the broker stops reading it
    /// (AMQP: also its output waiting for the socket).
    pub connection_inflight_bytes: usize,
    /// Request bytes all connections of a shard may have in flight.
    pub shard_inflight_bytes: usize,
    /// On SIGTERM: how long in-flight requests may take to finish before the logs are
    /// flushed and the process exits anyway.
    pub drain_deadline_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub tcp_nodelay: bool,
    /// SO_SNDBUF for accepted sockets; 0 leaves the kernel default.
    pub socket_send_buffer_bytes: usize,
    /// SO_RCVBUF for accepted sockets; 0 leaves the kernel default.
    pub socket_receive_buffer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./shards"),
            shards: 0,
            placement: Placement::Pinned,
            node_id: 0,
            kafka: KafkaConfig::default(),
            amqp: AmqpConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            network: NetworkConfig::default(),
            users: Vec::new(),
            tls: TlsConfig::default(),
            acl: AclConfig::default(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            addr: "0.0.0.0:9092".into(),
            advertised_host: String::new(),
            advertised_port: 0,
            auto_create_topics: true,
            num_partitions: 1,
            offsets_topic_num_partitions: 50,
            max_message_bytes: 1_048_588,
            max_request_bytes: 104_857_600,
            max_nonproduce_request_bytes: 4 << 20,
            max_inflight_requests: 256,
            connections_max_idle_ms: 600_000,
            request_read_timeout_ms: 30_000,
            connections_follow_partitions: true,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_check_interval_ms: 300_000,
            flush_messages: i64::MAX,
            flush_ms: -1,
            message_timestamp_type: "CreateTime".into(),
            index_interval_bytes: 4096,
            delete_topic_enable: true,
            cluster_id: "portask-cluster".into(),
            compaction_interval_ms: 15_000,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            group_consumer_max_size: i32::MAX as u32,
            group_consumer_migration_policy: "bidirectional".into(),
            transaction_max_timeout_ms: 900_000,
            listeners: Vec::new(),
            sasl_enabled_mechanisms: SASL_MECHANISMS.iter().map(|m| (*m).to_owned()).collect(),
            connections_max_reauth_ms: 0,
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            addr: "0.0.0.0:5672".into(),
            max_message_bytes: 128 << 20,
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            default_prefetch: 0,
            consumer_window: 2000,
            consumer_window_bytes: 16 << 20,
            consumer_timeout_ms: 1_800_000,
            connections_follow_queues: true,
            frame_read_timeout_ms: 30_000,
            users: Vec::new(),
            loopback_users: vec!["guest".into()],
            vhosts: vec!["/".into()],
            permissions: vec![AmqpPermission {
                user: "guest".into(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }],
            memory_budget_bytes: 256 << 20,
            segment_bytes: 16 << 20,
            tls_addr: String::new(),
            auth_mechanisms: vec!["PLAIN".into(), "AMQPLAIN".into(), "EXTERNAL".into()],
            ssl_cert_login_from: "distinguished_name".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "0.0.0.0:8080".into(),
            tls_addr: String::new(),
            max_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            auth_health: false,
            auth_metrics: false,
            health_deadline_ms: 1000,
            read_timeout_ms: 30_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            tail_cache_bytes: 8 << 20,
            shard_tail_cache_bytes: 256 << 20,
            fsync: FsyncPolicy::OnDemand,
            max_write_bytes: 1 << 20,
            min_free_bytes: 50 << 20,
        }
    }
}

impl LimitsConfig {
    /// `max_connections_per_ip_overrides`, parsed: (address, limit) pairs.
    pub fn per_ip_overrides(&self) -> Result<Vec<(std::net::IpAddr, usize)>, String> {
        self.max_connections_per_ip_overrides
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let parsed = item.rsplit_once(':').and_then(|(ip, n)| {
                    let ip = ip.trim_start_matches('[').trim_end_matches(']');
                    Some((ip.parse().ok()?, n.trim().parse().ok()?))
                });
                parsed.ok_or_else(|| format!("'{item}' is not <address>:<limit>"))
            })
            .collect()
    }

    /// The connection limit for one client address (0: none).
    pub fn per_ip_limit(&self, ip: std::net::IpAddr) -> usize {
        if !self.max_connections_per_ip_overrides.is_empty() {
            if let Ok(overrides) = self.per_ip_overrides() {
                if let Some((_, n)) = overrides.iter().find(|(a, _)| *a == ip) {
                    return *n;
                }
            }
        }
        self.max_connections_per_ip
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections_per_shard: 10_000,
            max_connections_per_ip: 0,
            max_connections_per_ip_overrides: String::new(),
            connection_inflight_bytes: 64 << 20,
            shard_inflight_bytes: 512 << 20,
            drain_deadline_ms: 10_000,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            tcp_nodelay: true,
            socket_send_buffer_bytes: 0,
            socket_receive_buffer_bytes: 0,
        }
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// The source of every key that did not keep its default.
#[derive(Debug, Clone, Default)]
pub struct Provenance(BTreeMap<String, Source>);

impl Provenance {
    pub fn source_of(&self, key: &str) -> Source {
        self.0.get(key).copied().unwrap_or(Source::Default)
    }
}

/// `PORTASK_*` variables that are not configuration keys: the file's path, and those read
/// by the scripts in `scripts/`.
const TOOL_VARIABLES: &[&str] = &[
    // The configuration file itself (`--config`).
    "PORTASK_CONFIG",
    "PORTASK_BIN",
    "PORTASK_SYS_ROOT",
    "PORTASK_SYSCTL_ROOT",
    // The fuzz tests' duration, seed and case (fuzz-tests/tests/fuzz/engine.rs).
    "PORTASK_FUZZ_SECS",
    "PORTASK_FUZZ_SEED",
    "PORTASK_FUZZ_CASE",
];

/// The configuration as layers of TOML values, merged then checked in one place.
pub struct ConfigBuilder {
    table: toml::Table,
    provenance: Provenance,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    pub fn new() -> Self {
        ConfigBuilder {
            table: toml::Table::new(),
            provenance: Provenance::default(),
        }
    }

    /// Layers a TOML file over what is there.
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let mut keys = Vec::new();
        collect_keys("", &table, &mut keys);
        for key in keys {
            self.provenance.0.insert(key, Source::File);
        }
        merge(&mut self.table, table);
        // Catch a misspelt key now, naming the file (keys that depend on each other, which
        // the environment may complete, are checked by `build`).
        self.parse()
            .and_then(|c| c.validate_values())
            .map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(self)
    }

    /// Layers `PORTASK_<SECTION>__<KEY>` (or `PORTASK_<KEY>` for top-level keys) variables.
    pub fn env<I: IntoIterator<Item = (String, String)>>(
        mut self,
        vars: I,
    ) -> Result<Self, ConfigError> {
        for (var, value) in vars {
            let Some(rest) = var.strip_prefix("PORTASK_") else {
                continue;
            };
            if TOOL_VARIABLES.contains(&var.as_str()) {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            self.set(&key, &value, Source::Env)
                .map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message,
                })?;
        }
        Ok(self)
    }

    /// Sets one dotted key from a command-line flag.
    pub fn flag(mut self, key: &str, value: &str) -> Result<Self, ConfigError> {
        self.set(key, value, Source::Flag)
            .map_err(ConfigError::Invalid)?;
        Ok(self)
    }

    fn set(&mut self, key: &str, raw: &str, source: Source) -> Result<(), String> {
        // A value is parsed as TOML when it can be (numbers, booleans), else taken as a string.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().ok_or_else(|| "empty key".to_owned())?;
        let mut table = &mut self.table;
        for part in parts {
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| format!("`{part}` is not a section"))?;
        }
        table.insert(last.to_owned(), value);
        self.provenance.0.insert(key.to_owned(), source);
        // The security keys depend on each other (a TLS listener needs `tls.cert_file`),
        // and the variables of one environment come in no set order: those are checked
        // once everything is layered (`build`).
        self.parse()
            .and_then(|c| c.validate_values())
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn parse(&self) -> Result<Config, ConfigError> {
        toml::Value::Table(self.table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))
    }

    fn check(&self) -> Result<Config, ConfigError> {
        let config = self.parse()?;
        config.validate()?;
        Ok(config)
    }

    pub fn build(self) -> Result<(Config, Provenance), ConfigError> {
        let config = self.check()?;
        Ok((config, self.provenance))
    }
}

fn collect_keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => collect_keys(&key, t, out),
            _ => out.push(key),
        }
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Checks values a type cannot: ranges and enumerated strings, then the security keys
    /// that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_values()?;
        self.validate_security()
    }

    /// Ranges and enumerated strings, each key on its own.
    fn validate_values(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if self.kafka.num_partitions < 1 {
            return bad("kafka.num_partitions", "must be at least 1");
        }
        if self.kafka.offsets_topic_num_partitions < 1 {
            return bad("kafka.offsets_topic_num_partitions", "must be at least 1");
        }
        if self.kafka.segment_bytes < 1024 {
            return bad("kafka.segment_bytes", "must be at least 1024");
        }
        if self.kafka.max_message_bytes < 64 {
            return bad("kafka.max_message_bytes", "must be at least 64");
        }
        if self.kafka.max_request_bytes < 1024 {
            return bad("kafka.max_request_bytes", "must be at least 1024");
        }
        if self.kafka.max_inflight_requests == 0 {
            return bad("kafka.max_inflight_requests", "must be at least 1");
        }
        if self.kafka.connections_max_idle_ms == 0 {
            return bad("kafka.connections_max_idle_ms", "must be at least 1");
        }
        if self.kafka.max_nonproduce_request_bytes < 1024 {
            return bad(
                "kafka.max_nonproduce_request_bytes",
                "must be at least 1024",
            );
        }
        if self.kafka.request_read_timeout_ms == 0 {
            return bad("kafka.request_read_timeout_ms", "must be at least 1");
        }
        if self.amqp.frame_read_timeout_ms == 0 {
            return bad("amqp.frame_read_timeout_ms", "must be at least 1");
        }
        if self.kafka.flush_messages < 1 {
            return bad("kafka.flush_messages", "must be at least 1");
        }
        if !matches!(
            self.kafka.message_timestamp_type.as_str(),
            "CreateTime" | "LogAppendTime"
        ) {
            return bad(
                "kafka.message_timestamp_type",
                "must be CreateTime or LogAppendTime",
            );
        }
        if !matches!(
            self.kafka.group_consumer_migration_policy.as_str(),
            "bidirectional" | "upgrade" | "downgrade" | "disabled"
        ) {
            return bad(
                "kafka.group_consumer_migration_policy",
                "must be bidirectional, upgrade, downgrade or disabled",
            );
        }
        for (key, addr) in [
            ("kafka.addr", &self.kafka.addr),
            ("amqp.addr", &self.amqp.addr),
            ("http.addr", &self.http.addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(key, "must be an address like 0.0.0.0:9092");
            }
        }
        if self.http.max_header_bytes < 8192 {
            return bad("http.max_header_bytes", "must be at least 8192");
        }
        if self.http.max_body_bytes == 0 {
            return bad("http.max_body_bytes", "must be at least 1");
        }
        if self.http.read_timeout_ms == 0 {
            return bad("http.read_timeout_ms", "must be at least 1");
        }
        if self.amqp.frame_max < 4096 {
            return bad("amqp.frame_max", "must be at least 4096");
        }
        if self.amqp.consumer_window == 0 {
            return bad("amqp.consumer_window", "must be at least 1");
        }
        if self.amqp.consumer_window_bytes == 0 {
            return bad("amqp.consumer_window_bytes", "must be at least 1");
        }
        if self.amqp.segment_bytes < 4096 {
            return bad("amqp.segment_bytes", "must be at least 4096");
        }
        if self.amqp.vhosts.is_empty() {
            return bad("amqp.vhosts", "must name at least one vhost");
        }
        for p in &self.amqp.permissions {
            for re in [&p.configure, &p.write, &p.read] {
                if regex::Regex::new(re).is_err() {
                    return bad(
                        "amqp.permissions",
                        &format!("'{re}' is not a regular expression"),
                    );
                }
            }
        }
        if self.limits.max_connections_per_shard == 0 {
            return bad("limits.max_connections_per_shard", "must be at least 1");
        }
        if let Err(e) = self.limits.per_ip_overrides() {
            return bad("limits.max_connections_per_ip_overrides", &e);
        }
        if self.storage.max_write_bytes < 4096 {
            return bad("storage.max_write_bytes", "must be at least 4096");
        }
        Ok(())
    }

    /// Listeners, TLS files, users and SASL mechanisms.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let mut names = std::collections::BTreeSet::new();
        let mut tls_needed = Vec::new();
        for l in &self.kafka.listeners {
            if !names.insert(l.name.to_ascii_uppercase()) {
                return bad(
                    "kafka.listeners",
                    format!("listener name '{}' is used twice", l.name),
                );
            }
            if l.addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(
                    "kafka.listeners",
                    format!(
                        "listener '{}': addr must be an address like 0.0.0.0:9092",
                        l.name
                    ),
                );
            }
            let protocol = if l.security_protocol.is_empty() {
                &l.name
            } else {
                &l.security_protocol
            };
            match SecurityProtocol::parse(protocol) {
                None => {
                    return bad(
                        "kafka.listeners",
                        format!(
                            "listener '{}': security_protocol '{protocol}' is not one of \
                             PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
                            l.name
                        ),
                    )
                }
                Some(p) if p.tls() => tls_needed.push(format!("kafka listener '{}'", l.name)),
                Some(_) => {}
            }
        }
        for (key, addr) in [
            ("amqp.tls_addr", &self.amqp.tls_addr),
            ("http.tls_addr", &self.http.tls_addr),
        ] {
            if addr.is_empty() {
                continue;
            }
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(key, "must be an address like 0.0.0.0:5671, or empty".into());
            }
            tls_needed.push(key.to_owned());
        }
        if let Some(first) = tls_needed.first() {
            if !self.tls.configured() {
                return bad(
                    "tls.cert_file",
                    format!("{first} uses TLS: set tls.cert_file and tls.key_file"),
                );
            }
        }
        let required = self.tls.client_auth == ClientAuth::Required
            || self
                .kafka
                .listeners
                .iter()
                .any(|l| l.client_auth.is_some_and(|c| c != ClientAuth::None));
        if required && self.tls.ca_file.as_os_str().is_empty() {
            return bad(
                "tls.ca_file",
                "client certificates (tls.client_auth or a listener's client_auth) need a CA file"
                    .into(),
            );
        }
        if self.tls.handshake_timeout_ms == 0 {
            return bad("tls.handshake_timeout_ms", "must be at least 1".into());
        }
        for m in &self.kafka.sasl_enabled_mechanisms {
            if !SASL_MECHANISMS.contains(&m.as_str()) {
                return bad(
                    "kafka.sasl_enabled_mechanisms",
                    format!("'{m}' is not one of {}", SASL_MECHANISMS.join(", ")),
                );
            }
        }
        for m in &self.amqp.auth_mechanisms {
            if !["PLAIN", "AMQPLAIN", "EXTERNAL"].contains(&m.as_str()) {
                return bad(
                    "amqp.auth_mechanisms",
                    format!("'{m}' is not one of PLAIN, AMQPLAIN, EXTERNAL"),
                );
            }
        }
        let mut users = std::collections::BTreeSet::new();
        for u in &self.users {
            if u.name.is_empty() || !users.insert(u.name.as_str()) {
                return bad(
                    "users",
                    format!("user name '{}' is empty or used twice", u.name),
                );
            }
        }
        if !matches!(
            self.amqp.ssl_cert_login_from.as_str(),
            "distinguished_name" | "common_name"
        ) {
            return bad(
                "amqp.ssl_cert_login_from",
                "must be distinguished_name or common_name".into(),
            );
        }
        for b in &self.acl.bindings {
            let known = |v: &str, of: &[&str]| of.contains(&v.to_ascii_lowercase().as_str());
            let ok = known(
                &b.resource_type,
                &["topic", "group", "cluster", "transactional_id"],
            ) && known(&b.pattern_type, &["literal", "prefixed"])
                && known(&b.permission, &["allow", "deny"])
                && !b.operations.is_empty()
                && b.operations.iter().all(|o| {
                    known(
                        o,
                        &[
                            "all",
                            "read",
                            "write",
                            "create",
                            "delete",
                            "alter",
                            "describe",
                            "cluster_action",
                            "describe_configs",
                            "alter_configs",
                            "idempotent_write",
                        ],
                    )
                })
                && principal_like(&b.principal);
            // As CreateAcls: a named resource (an empty prefix would match every one), and
            // the cluster only as `kafka-cluster`.
            let name_ok = if b.resource_type.eq_ignore_ascii_case("cluster") {
                matches!(b.resource_name.as_str(), "" | "kafka-cluster")
            } else {
                !b.resource_name.is_empty()
            };
            if !ok || !name_ok {
                return bad("acl.bindings", format!("{b:?} is not a valid ACL"));
            }
        }
        for u in self.all_users() {
            crate::security::users::config_credentials(&u)
                .map_err(|why| ConfigError::Invalid(format!("users: {why}")))?;
        }
        for p in &self.acl.super_users {
            if !principal_like(p) {
                return bad(
                    "acl.super_users",
                    format!("'{p}' is not a principal like User:admin"),
                );
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, each key annotated with its source.
    pub fn render(&self, provenance: &Provenance) -> String {
        let value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(toml::Table::new()));
        let mut out = String::new();
        if let toml::Value::Table(table) = value {
            render_table("", &table, provenance, &mut out);
        }
        out
    }
}

fn render_table(prefix: &str, table: &toml::Table, provenance: &Provenance, out: &mut String) {
    let mut sections = Vec::new();
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => sections.push((key, t)),
            other => out.push_str(&format!(
                "{k} = {other}    # {}\n",
                provenance.source_of(&key).as_str()
            )),
        }
    }
    for (key, t) in sections {
        out.push_str(&format!("\n[{key}]\n"));
        render_table(&key, t, provenance, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let (config, _) = ConfigBuilder::new().build().unwrap();
        assert_eq!(config.kafka.addr, "0.0.0.0:9092");
        assert_eq!(config.data_dir, PathBuf::from("./shards"));
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = ConfigBuilder::new()
            .env([("PORTASK_KAFKA__NOPE".to_owned(), "1".to_owned())])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("PORTASK_KAFKA__NOPE"), "{err}");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn tls_settings_from_the_environment_work_in_any_order() {
        let vars = [
            ("PORTASK_AMQP__TLS_ADDR", "\"127.0.0.1:5671\""),
            ("PORTASK_TLS__CLIENT_AUTH", "\"required\""),
            ("PORTASK_TLS__CERT_FILE", "/etc/portask/server.crt"),
            ("PORTASK_TLS__KEY_FILE", "/etc/portask/server.key"),
            ("PORTASK_TLS__CA_FILE", "/etc/portask/ca.crt"),
        ];
        let (config, _) = ConfigBuilder::new()
            .env(vars.map(|(k, v)| (k.to_owned(), v.to_owned())))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.amqp.tls_addr, "127.0.0.1:5671");
        // Still checked once everything is in.
        let err = ConfigBuilder::new()
            .env([vars[0]].map(|(k, v)| (k.to_owned(), v.to_owned())))
            .unwrap()
            .build()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.cert_file"), "{err}");
    }

    #[test]
    fn env_and_flag_layer_with_provenance() {
        let (config, prov) = ConfigBuilder::new()
            .env([("PORTASK_KAFKA__NUM_PARTITIONS".to_owned(), "6".to_owned())])
            .unwrap()
            .flag("shards", "2")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.kafka.num_partitions, 6);
        assert_eq!(config.shards, 2);
        assert_eq!(prov.source_of("kafka.num_partitions"), Source::Env);
        assert_eq!(prov.source_of("shards"), Source::Flag);
        assert_eq!(prov.source_of("kafka.addr"), Source::Default);
        let text = config.render(&prov);
        assert!(text.contains("num_partitions = 6    # env"), "{text}");
    }

    #[test]
    fn per_ip_overrides_parse_as_kafka_writes_them() {
        let mut limits = LimitsConfig {
            max_connections_per_ip: 10,
            max_connections_per_ip_overrides: "10.0.0.5:1000, ::1:0,[fe80::2]:3".into(),
            ..LimitsConfig::default()
        };
        assert_eq!(limits.per_ip_limit("10.0.0.5".parse().unwrap()), 1000);
        assert_eq!(limits.per_ip_limit("::1".parse().unwrap()), 0);
        assert_eq!(limits.per_ip_limit("fe80::2".parse().unwrap()), 3);
        assert_eq!(limits.per_ip_limit("10.0.0.6".parse().unwrap()), 10);
        limits.max_connections_per_ip_overrides = "broker-host:5".into();
        assert!(limits.per_ip_overrides().is_err());
        let err = ConfigBuilder::new()
            .flag("limits.max_connections_per_ip_overrides", "10.0.0.5")
            .and_then(|b| b.build())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("limits.max_connections_per_ip_overrides"),
            "{err}"
        );
    }

    #[test]
    fn acl_bindings_name_their_resource() {
        let binding = |resource_type: &str, resource_name: &str| {
            format!(
                "[{{resource_type = \"{resource_type}\", resource_name = \"{resource_name}\", \
                 principal = \"User:a\", operations = [\"read\"]}}]"
            )
        };
        let build = |bindings: String| {
            ConfigBuilder::new()
                .env([("PORTASK_ACL__BINDINGS".to_owned(), bindings)])
                .and_then(|b| b.build())
        };
        assert!(build(binding("topic", "orders")).is_ok());
        assert!(build(binding("cluster", "")).is_ok());
        assert!(build(binding("cluster", "kafka-cluster")).is_ok());
        for (t, n) in [("topic", ""), ("group", ""), ("cluster", "other")] {
            let err = build(binding(t, n)).unwrap_err().to_string();
            assert!(err.contains("acl.bindings"), "{t} '{n}': {err}");
        }
    }

    #[test]
    fn bad_value_names_key() {
        let err = ConfigBuilder::new()
            .flag("kafka.num_partitions", "0")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("kafka.num_partitions"), "{err}");
        let err = ConfigBuilder::new()
            .flag("kafka.addr", "nowhere")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("kafka.addr"), "{err}");
    }
}
