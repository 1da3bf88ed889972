//! The composition root: the one place that knows every layer. It starts the process (one
//! glommio executor — shard — per core of the CPU affinity mask, joined by a channel mesh),
//! and on each shard builds the runtime `Core`, the storage, the catalog replica, the
//! consumer-group coordinator and the AMQP state into a `Shard`, recovers data, binds the
//! listeners and starts **every background task** (`run_shard`); then it stops them all in
//! order on a clean stop.
//!
//! `start` runs on the main thread and blocks until every shard has stopped. Everything
//! after `LocalExecutorBuilder::spawn` runs on the shard's own thread.

pub mod addresses;
pub mod datadir;
pub mod shard;

pub use datadir::{lock_data_dir, shard_dirs, DataDirLock};
pub use shard::Shard;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement as GlommioPlacement};

use crate::catalog::store::CatalogStore;
use crate::catalog::writer::CatalogWriter;
use crate::catalog::{self, CatalogState};
use crate::config::{Config, Placement};
use crate::runtime::core::Core;
use crate::runtime::mesh::Message;
use crate::runtime::shutdown::Shutdown;
use crate::runtime::{preflight, reply};
use crate::storage::Storage;
use crate::util::notify;
use crate::util::partition_owner;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("data directory {0} is in use by another Portask (lock file {1} is held)")]
    Locked(PathBuf, PathBuf),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("shard {0}: {1}")]
    Shard(usize, String),
    #[error("{0} {1} is already in use (another Portask, or another program, listens there)")]
    AddrInUse(String, String),
    #[error("{0} and {1} both listen on {2}")]
    SamePort(String, String, String),
    #[error("TLS: {0}")]
    Tls(crate::security::tls::TlsError),
}

/// The cores shards run on, and how many shards.
fn layout(config: &Config) -> (Vec<Option<usize>>, usize) {
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let available = cores.len().max(1);
    let count = if config.shards == 0 {
        available
    } else {
        config.shards
    };
    let placement = (0..count)
        .map(|i| match config.placement {
            Placement::Pinned if !cores.is_empty() => Some(cores[i % cores.len()]),
            _ => None,
        })
        .collect();
    (placement, count)
}

/// Runs the broker until a signal stops it.
pub fn start(config: Config) -> Result<(), StartError> {
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.install_signals() {
        log::warn!("cannot install signal handlers: {e}");
    }
    if let Err(e) = crate::security::tls::reload_on_sighup(&config) {
        log::warn!("cannot install the SIGHUP handler (TLS certificate reload): {e}");
    }
    run(config, shutdown)
}

/// Runs the broker until `shutdown` is requested.
pub fn run(config: Config, shutdown: Arc<Shutdown>) -> Result<(), StartError> {
    let data_dir = config.data_dir.clone();
    let _lock = lock_data_dir(&data_dir)?;
    addresses::check_addresses_free(&config)?;
    crate::security::tls::install(&config).map_err(StartError::Tls)?;
    let (placement, count) = layout(&config);
    if !config.amqp.users.is_empty() {
        log::warn!(
            "amqp.users has moved to [[users]] (one set of users for Kafka, AMQP and HTTP); \
             its entries are still read"
        );
    }
    if config.placement == Placement::Pinned && count > placement.iter().flatten().count() {
        log::warn!("{count} shards but fewer cores in the affinity mask: shards will share cores");
    }
    let cores: Vec<usize> = placement.iter().flatten().copied().collect();
    let all_cores: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    preflight::run(
        &config,
        count,
        if cores.is_empty() { &all_cores } else { &cores },
    );
    datadir::migrate_ownership(&data_dir, count)
        .map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
    crate::amqp::store::migrate(&data_dir, count)
        .map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
    let (store, mut state) = CatalogStore::open(&data_dir.join("0").join("catalog"))?;
    // Transient AMQP topology (and exclusive queues) does not outlive the process.
    crate::catalog::amqp::after_restart(&mut state.amqp);
    let state = Arc::new(state);
    let mut store = Some(store);
    let mesh = MeshBuilder::<Message, _>::full(count, 1024);

    let mut handles = Vec::new();
    for (id, cpu) in placement.into_iter().enumerate() {
        let config = config.clone();
        let state: Arc<CatalogState> = state.clone();
        let mesh = mesh.clone();
        let shutdown = shutdown.clone();
        let store = if id == 0 { store.take() } else { None };
        let glommio_placement = match cpu {
            Some(c) => GlommioPlacement::Fixed(c),
            None => GlommioPlacement::Unbound,
        };
        let handle = LocalExecutorBuilder::new(glommio_placement)
            .name(&format!("shard-{id}"))
            .spawn(move || async move {
                run_shard(id, count, cpu, config, state, store, mesh, shutdown).await
            })
            .map_err(|e| StartError::Shard(id, e.to_string()))?;
        handles.push(handle);
    }
    let mut first_error = None;
    for (id, h) in handles.into_iter().enumerate() {
        let r = match h.join() {
            Ok(r) => r,
            Err(e) => Err(format!("executor failed: {e}")),
        };
        if let Err(e) = r {
            log::error!("shard {id}: {e}");
            // One shard failing to start stops the others.
            shutdown.request();
            first_error.get_or_insert(StartError::Shard(id, e));
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            log::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// `addr`, and `tls_addr` with its scheme when there is one (for the start-up line).
fn with_tls(addr: &str, tls_addr: &str, scheme: &str) -> String {
    if tls_addr.is_empty() {
        addr.to_owned()
    } else {
        format!("{addr} + {scheme} {tls_addr}")
    }
}

/// A task that runs `work` every `ms` milliseconds (at least 10) until cancelled.
fn every_ms<F, Fut>(ms: u64, work: F) -> glommio::Task<()>
where
    F: Fn() -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let period = Duration::from_millis(ms.max(10));
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(period).await;
            work().await;
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: usize,
    count: usize,
    cpu: Option<usize>,
    config: Config,
    state: Arc<CatalogState>,
    store: Option<CatalogStore>,
    mesh: MeshBuilder<Message, glommio::channels::channel_mesh::Full>,
    shutdown: Arc<Shutdown>,
) -> Result<(), String> {
    let config = Rc::new(config);
    // First DMA open of this thread: lets glommio detect iopoll support correctly.
    crate::storage::probe_dma(&config.data_dir.join(id.to_string())).await;
    let storage = Rc::new(Storage::new(&config, id));
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| "joining the mesh".to_owned())?;
    let writer = store.map(CatalogWriter::new);
    let groups = crate::kafka::groups::Coordinator::open(
        &config.data_dir.join(id.to_string()).join("groups"),
        &config,
    )
    .map_err(|e| format!("loading committed offsets: {e}"))?;
    glommio::spawn_local(groups.run_offset_writer()).detach();
    glommio::spawn_local(groups.clone().run_clock()).detach();
    glommio::spawn_local(groups.run_txn_offsets_writer()).detach();
    let txn = crate::kafka::txn::Coordinator::open(
        &config.data_dir.join(id.to_string()).join("transactions"),
        &config,
        id,
    )
    .map_err(|e| format!("loading the transaction log: {e}"))?;
    glommio::spawn_local(txn.run_log_writer()).detach();
    let core = Rc::new(Core::new(
        id,
        count,
        config.clone(),
        senders,
        shutdown.clone(),
    ));
    let shard = Rc::new(Shard::new(
        core.clone(),
        storage.clone(),
        groups,
        txn,
        state.clone(),
        writer,
    ));
    // Work from other shards finds this shard's state; answers leave from its core.
    core.provide(&shard);
    reply::bind(&core);
    crate::amqp::ask::register(&shard);

    // HTTP first, so /health/ready can say "starting" while recovery runs.
    let http = crate::http::bind(&shard)
        .map_err(|e| format!("http listener {}: {e}", config.http.addr))?;
    let http_task = glommio::spawn_local(crate::http::accept_loop(shard.clone(), http));
    let https = crate::http::bind_tls(&shard)
        .map_err(|e| format!("http.tls_addr {}: {e}", config.http.tls_addr))?;
    let https_task =
        https.map(|tcp| glommio::spawn_local(crate::http::accept_tls_loop(shard.clone(), tcp)));
    let ticker = {
        let core = core.clone();
        glommio::spawn_local(crate::metrics::run_ticker(move || core.stopping.get()))
    };

    // Recovery: every partition directory this shard owns and the catalog knows.
    let started = Instant::now();
    let clean = storage
        .recover(|topic, p| {
            let t = state.topic(topic)?;
            (p < t.partitions && partition_owner(topic, p, count) == id)
                .then(|| catalog::log_settings(&config, &state, t))
        })
        .await
        .map_err(|e| format!("recovery: {e}"))?;
    let recovered = storage.partitions().len();

    // Mesh: one receiving task per peer.
    core.serve_mesh(&mut receivers);
    let flusher = glommio::spawn_local(storage.clone().run_flusher());
    // The free-space watermark: read every second, refuses writes below it.
    let disk_guard = {
        let disk = storage.disk.clone();
        glommio::spawn_local(async move { disk.run().await })
    };
    let retention = every_ms(config.kafka.retention_check_interval_ms, {
        let storage = storage.clone();
        move || {
            let storage = storage.clone();
            async move { storage.apply_retention().await }
        }
    });
    let compactor = every_ms(config.kafka.compaction_interval_ms, {
        let storage = storage.clone();
        move || {
            let storage = storage.clone();
            async move { storage.apply_compaction().await }
        }
    });

    let kafka = crate::kafka::server::bind(&shard)?;
    let amqp_queues = crate::amqp::store::recover(&shard)
        .await
        .map_err(|e| format!("amqp recovery: {e}"))?;
    let amqp = crate::amqp::server::bind(&shard)
        .map_err(|e| format!("amqp listener {}: {e}", config.amqp.addr))?;
    let amqps = crate::amqp::server::bind_tls(&shard)
        .map_err(|e| format!("amqp.tls_addr {}: {e}", config.amqp.tls_addr))?;
    let kafka_addrs: Vec<_> = kafka.iter().map(|(l, _)| l.clone()).collect();
    let kafka_tasks: Vec<_> = kafka
        .into_iter()
        .map(|(listener, tcp)| {
            glommio::spawn_local(crate::kafka::server::accept_loop(
                shard.clone(),
                listener,
                tcp,
            ))
        })
        .collect();
    let amqp_task = glommio::spawn_local(crate::amqp::server::accept_loop(shard.clone(), amqp));
    let amqps_task = amqps
        .map(|tcp| glommio::spawn_local(crate::amqp::server::accept_tls_loop(shard.clone(), tcp)));
    crate::kafka::offsets_topic::start(&shard).await;
    crate::kafka::txn::start(&shard);
    shutdown.mark_ready();
    // Logged once this shard is ready: seeing every shard's line, a client (or a test)
    // knows the HTTP API no longer answers 503 "starting".
    log::info!(
        "shard {id}/{count} on {}: kafka {}, amqp {} ({amqp_queues} queues), http {}, data {}, {recovered} partitions recovered in {:?}{}",
        cpu.map(|c| format!("core {c}"))
            .unwrap_or_else(|| "any core".into()),
        kafka_addrs
            .iter()
            .map(|l| format!("{} {}", l.addr, l.protocol().name()))
            .collect::<Vec<_>>()
            .join(" + "),
        with_tls(&config.amqp.addr, &config.amqp.tls_addr, "amqps"),
        with_tls(&config.http.addr, &config.http.tls_addr, "https"),
        config.data_dir.join(id.to_string()).display(),
        started.elapsed(),
        if clean {
            " (clean start)"
        } else {
            " (after unclean stop)"
        }
    );

    // Run until asked to stop.
    shutdown.wait_requested().await;
    core.stopping.set(true);
    core.stop.notify();
    for task in kafka_tasks {
        task.await;
    }
    amqp_task.await;
    if let Some(task) = amqps_task {
        task.await;
    }
    http_task.await;
    if let Some(task) = https_task {
        task.await;
    }
    // Let in-flight requests finish.
    let deadline = Instant::now() + Duration::from_millis(config.limits.drain_deadline_ms);
    while !core.clients.is_empty() && Instant::now() < deadline {
        let l = notify::Listener::new();
        l.listen(&core.clients.changed);
        let _ = glommio::timer::timeout(Duration::from_millis(100), async {
            l.await;
            Ok(())
        })
        .await;
    }
    shutdown.drained_barrier(count, deadline).await;
    ticker.cancel().await;
    retention.cancel().await;
    compactor.cancel().await;
    disk_guard.cancel().await;
    storage.stop_flusher();
    flusher.await;
    storage.shutdown().await;
    shard.amqp.store.shutdown(&shard).await;
    log::info!("shard {id} stopped: logs flushed and synced");
    Ok(())
}
