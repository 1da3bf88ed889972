//! The process: one glommio executor (shard) per core of the CPU affinity mask, joined by a
//! channel mesh; startup (data-dir lock, ownership migration, catalog load, recovery,
//! listeners) and the clean stop.
//!
//! `start` runs on the main thread and blocks until every shard has stopped. Everything
//! after `LocalExecutorBuilder::spawn` runs on the shard's own thread.

pub mod listener;
pub mod mesh;
pub mod notify;
pub mod preflight;
pub mod reply;
pub mod shard;
pub mod shutdown;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement as GlommioPlacement};

use crate::catalog::store::CatalogStore;
use crate::catalog::writer::CatalogWriter;
use crate::catalog::{self, CatalogState};
use crate::config::{Config, Placement};
use crate::storage::Storage;
use mesh::Message;
use shard::{partition_owner, Shard};
use shutdown::Shutdown;

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
    AddrInUse(&'static str, String),
}

/// Refuses addresses something already listens on. The shards bind with SO_REUSEPORT,
/// which would let a second Portask share a port silently (the kernel would split the
/// connections between the two), so the listening sockets of the host (`/proc/net/tcp`,
/// `tcp6`) are checked first. Connections a previous run left closing do not count, and
/// port 0 (any free port) is not checked.
///
/// A Portask killed with `kill -9` releases its data directory at once, but the kernel
/// tears its io_uring rings down afterwards, and their pending accepts keep its listening
/// sockets open for a moment (accepting connections nobody serves). A clash is therefore
/// re-checked for up to `PORT_GRACE` before it is an error.
fn check_addresses_free(config: &Config) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    loop {
        match clashing_address(config) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() >= PORT_GRACE => return Err(e),
            Err(e) => {
                if started.elapsed() < PORT_POLL {
                    log::info!("{e}; waiting up to {PORT_GRACE:?} in case an exiting process still holds it");
                }
                std::thread::sleep(PORT_POLL);
            }
        }
    }
}

/// How long a clash may last before start-up gives up (see `check_addresses_free`).
const PORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
const PORT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

fn clashing_address(config: &Config) -> Result<(), StartError> {
    let listening = listening_sockets();
    for (key, addr) in [
        ("kafka.addr", &config.kafka.addr),
        ("amqp.addr", &config.amqp.addr),
        ("http.addr", &config.http.addr),
    ] {
        let Ok(wanted) = addr.parse::<std::net::SocketAddr>() else {
            continue;
        };
        if wanted.port() == 0 {
            continue;
        }
        let clash = listening.iter().any(|l| {
            l.port() == wanted.port()
                && (l.ip().is_unspecified()
                    || wanted.ip().is_unspecified()
                    || l.ip() == wanted.ip())
        });
        if clash {
            return Err(StartError::AddrInUse(key, addr.clone()));
        }
    }
    Ok(())
}

/// Every TCP socket in LISTEN state in this network namespace.
fn listening_sockets() -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            if fields.len() < 4 || fields[3] != "0A" {
                continue;
            }
            if let Some(a) = parse_proc_addr(fields[1], v6) {
                out.push(a);
            }
        }
    }
    out
}

/// `0100007F:2384` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word of the
/// address in the kernel's byte order (little-endian here), the port in hex.
fn parse_proc_addr(s: &str, v6: bool) -> Option<std::net::SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| {
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()
                .map(u32::to_le_bytes)
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    let ip = if v6 {
        let b: [u8; 16] = bytes.try_into().ok()?;
        std::net::IpAddr::from(b)
    } else {
        let b: [u8; 4] = bytes.try_into().ok()?;
        std::net::IpAddr::from(b)
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// Holds the data directory's lock file for the life of the process.
pub struct DataDirLock {
    _file: File,
}

/// Takes an exclusive `flock` on `<data_dir>/.lock`, refusing a second broker.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, StartError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir(dir.to_owned(), e))?;
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(|e| StartError::DataDir(dir.to_owned(), e))?;
    // SAFETY: flock takes a descriptor and flags, no pointers; `file` is ours and open for
    // the call (and stays open, holding the lock, as long as `DataDirLock`).
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(StartError::Locked(dir.to_owned(), path));
    }
    Ok(DataDirLock { _file: file })
}

/// The numbered shard directories under the data root, as (shard id, path).
pub fn shard_dirs(data_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<usize>().ok()?, e.path())))
        .collect()
}

/// Moves partition directories to their owner shard when the shard count changed since
/// the last run (ownership is a hash onto the shard count).
fn migrate_ownership(data_dir: &Path, shards: usize) -> std::io::Result<()> {
    for (from, dir) in shard_dirs(data_dir) {
        let kafka = dir.join("kafka");
        let Ok(parts) = std::fs::read_dir(&kafka) else {
            continue;
        };
        for part in parts.filter_map(|e| e.ok()) {
            let name = part.file_name();
            let Some((topic, p)) = name.to_str().and_then(Storage::parse_dir_name) else {
                continue;
            };
            let to = partition_owner(&topic, p, shards);
            if to != from {
                let dest_dir = data_dir.join(to.to_string()).join("kafka");
                std::fs::create_dir_all(&dest_dir)?;
                log::info!("moving {topic}-{p} from shard {from} to shard {to}");
                std::fs::rename(part.path(), dest_dir.join(&name))?;
                // The marker no longer describes the moved files' shard: force recovery.
                let _ = std::fs::remove_file(data_dir.join(to.to_string()).join(".clean_shutdown"));
            }
        }
    }
    Ok(())
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
    run(config, shutdown)
}

/// Runs the broker until `shutdown` is requested.
pub fn run(config: Config, shutdown: Arc<Shutdown>) -> Result<(), StartError> {
    let data_dir = config.data_dir.clone();
    let _lock = lock_data_dir(&data_dir)?;
    check_addresses_free(&config)?;
    let (placement, count) = layout(&config);
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
    migrate_ownership(&data_dir, count).map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
    crate::amqp::store::migrate(&data_dir, count)
        .map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
    let (store, mut state) = CatalogStore::open(&data_dir.join("0").join("catalog"))?;
    // Transient AMQP topology (and exclusive queues) does not outlive the process.
    crate::amqp::topology::after_restart(&mut state.amqp);
    let state = Arc::new(state);
    let mut store = Some(store);
    let mesh = MeshBuilder::<Message, _>::full(count, 1024);

    let mut handles = Vec::new();
    for (id, core) in placement.into_iter().enumerate() {
        let config = config.clone();
        let state: Arc<CatalogState> = state.clone();
        let mesh = mesh.clone();
        let shutdown = shutdown.clone();
        let store = if id == 0 { store.take() } else { None };
        let glommio_placement = match core {
            Some(c) => GlommioPlacement::Fixed(c),
            None => GlommioPlacement::Unbound,
        };
        let handle = LocalExecutorBuilder::new(glommio_placement)
            .name(&format!("shard-{id}"))
            .spawn(move || async move {
                run_shard(id, count, core, config, state, store, mesh, shutdown).await
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

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: usize,
    count: usize,
    core: Option<usize>,
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
    groups.spawn_tasks();
    let shard = Rc::new(Shard::new(
        id,
        count,
        config.clone(),
        storage.clone(),
        groups,
        state.clone(),
        writer,
        senders,
        shutdown.clone(),
    ));
    reply::bind(&shard);

    // HTTP first, so /health/ready can say "starting" while recovery runs.
    let http = crate::http::bind(&shard)
        .map_err(|e| format!("http listener {}: {e}", config.http.addr))?;
    let http_task = glommio::spawn_local(crate::http::accept_loop(shard.clone(), http));
    let ticker = glommio::spawn_local(crate::metrics::run_ticker(shard.clone()));

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
    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.serve(msg);
            }
        })
        .detach();
    }
    let flusher = glommio::spawn_local(storage.clone().run_flusher());
    // The free-space watermark: read every second, refuses writes below it.
    let disk_guard = {
        let disk = storage.disk.clone();
        glommio::spawn_local(async move { disk.run().await })
    };
    let retention = {
        let storage = storage.clone();
        let every = Duration::from_millis(config.kafka.retention_check_interval_ms.max(10));
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                storage.apply_retention().await;
            }
        })
    };

    let compactor = {
        let storage = storage.clone();
        let every = Duration::from_millis(config.kafka.compaction_interval_ms.max(10));
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                storage.apply_compaction().await;
            }
        })
    };

    let kafka = crate::kafka::server::bind(&shard)
        .map_err(|e| format!("kafka listener {}: {e}", config.kafka.addr))?;
    let amqp_queues = crate::amqp::store::recover(&shard)
        .await
        .map_err(|e| format!("amqp recovery: {e}"))?;
    let amqp = crate::amqp::server::bind(&shard)
        .map_err(|e| format!("amqp listener {}: {e}", config.amqp.addr))?;
    log::info!(
        "shard {id}/{count} on {}: kafka {}, amqp {} ({amqp_queues} queues), http {}, data {}, {recovered} partitions recovered in {:?}{}",
        core.map(|c| format!("core {c}"))
            .unwrap_or_else(|| "any core".into()),
        config.kafka.addr,
        config.amqp.addr,
        config.http.addr,
        config.data_dir.join(id.to_string()).display(),
        started.elapsed(),
        if clean {
            " (clean start)"
        } else {
            " (after unclean stop)"
        }
    );
    let kafka_task = glommio::spawn_local(crate::kafka::server::accept_loop(shard.clone(), kafka));
    let amqp_task = glommio::spawn_local(crate::amqp::server::accept_loop(shard.clone(), amqp));
    shutdown.mark_ready();

    // Run until asked to stop.
    shutdown.wait_requested().await;
    shard.stopping.set(true);
    shard.stop.notify();
    kafka_task.await;
    amqp_task.await;
    http_task.await;
    // Let in-flight requests finish.
    let deadline = Instant::now() + Duration::from_millis(config.limits.drain_deadline_ms);
    while !shard.clients.is_empty() && Instant::now() < deadline {
        let l = notify::Listener::new();
        l.listen(&shard.connections_changed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_are_read_in_kernel_byte_order() {
        assert_eq!(
            parse_proc_addr("0100007F:2384", false),
            Some("127.0.0.1:9092".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:1F90", true),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1", false), None);
    }
}
