//! Start-up checks of the host: each finding is logged as a warning that says how to fix
//! it. (A data directory that cannot be written or is held by another Portask stops the
//! start instead: see `lock_data_dir`.)
//!
//! Runs once on the main thread before any shard starts. The checks are pure functions of
//! the values read, so they are tested without touching the host.

use std::path::Path;

use crate::config::Config;

/// io_uring registers buffers in locked memory; below this glommio falls back to slower
/// unregistered I/O.
const MEMLOCK_RECOMMENDED: u64 = 512 << 20;
const SOMAXCONN_RECOMMENDED: u64 = 4096;

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    // SAFETY: `libc::rlimit` is two integers, so all-zero is a valid value; getrlimit
    // writes at most one `rlimit` through the pointer, which names our local for the call.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(resource, &mut r) == 0).then_some(r.rlim_cur)
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn memlock_warning(soft: u64) -> Option<String> {
    (soft != libc::RLIM_INFINITY && soft < MEMLOCK_RECOMMENDED).then(|| {
        format!(
            "locked-memory limit is {} KiB, below the {} MiB io_uring wants: run scripts/limits.sh --apply \
             (or LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited`)",
            soft / 1024,
            MEMLOCK_RECOMMENDED >> 20
        )
    })
}

/// Descriptors one connection holds: its socket, shared by its reader, its writer and the
/// connection list (`runtime::transport::Socket`).
pub const DESCRIPTORS_PER_CONNECTION: u64 = 1;

pub fn nofile_warning(soft: u64, shards: usize, max_connections: usize) -> Option<String> {
    let need = (shards * max_connections) as u64 * DESCRIPTORS_PER_CONNECTION + 1024;
    (soft != libc::RLIM_INFINITY && soft < need).then(|| {
        format!(
            "open-file limit is {soft}, below the {need} that {shards} shards × {max_connections} connections \
             (a descriptor each) need: \
             run scripts/limits.sh --apply (or LimitNOFILE=1048576 in the systemd unit)"
        )
    })
}

pub fn io_uring_warning(disabled: Option<u64>) -> Option<String> {
    match disabled {
        Some(v) if v != 0 => Some(format!(
            "kernel.io_uring_disabled is {v}: io_uring is off and Portask cannot run its shards; \
             set it to 0 (scripts/sysctl.sh --apply)"
        )),
        _ => None,
    }
}

pub fn somaxconn_warning(value: Option<u64>) -> Option<String> {
    match value {
        Some(v) if v < SOMAXCONN_RECOMMENDED => Some(format!(
            "net.core.somaxconn is {v}, below {SOMAXCONN_RECOMMENDED}: bursts of new connections may be dropped; \
             run scripts/sysctl.sh (--apply to fix)"
        )),
        _ => None,
    }
}

/// NUMA nodes whose CPUs the shards run on, when the process is not pinned to one.
pub fn numa_warning(nodes_used: usize, pinned: bool) -> Option<String> {
    (nodes_used > 1 && !pinned).then(|| {
        format!(
            "the process may run on {nodes_used} NUMA nodes and its shards are not pinned: \
             memory will often be remote; pin it with scripts/pin.sh (or one process per node: --per-node)"
        )
    })
}

/// How many NUMA nodes have CPUs in `cores`.
fn nodes_spanned(cores: &[usize]) -> usize {
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/node") else {
        return 1;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("node"))
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cpulist"))
                .map(|list| cores.iter().any(|c| cpulist_contains(&list, *c)))
                .unwrap_or(false)
        })
        .count()
        .max(1)
}

fn cpulist_contains(list: &str, cpu: usize) -> bool {
    list.trim().split(',').any(|range| match range.split_once('-') {
        Some((a, b)) => matches!((a.parse::<usize>(), b.parse::<usize>()), (Ok(a), Ok(b)) if a <= cpu && cpu <= b),
        None => range.parse::<usize>() == Ok(cpu),
    })
}

/// Runs every check and logs what it finds.
pub fn run(config: &Config, shards: usize, cores: &[usize]) {
    let pinned = config.placement == crate::config::Placement::Pinned;
    let findings = [
        rlimit(libc::RLIMIT_MEMLOCK).and_then(memlock_warning),
        rlimit(libc::RLIMIT_NOFILE)
            .and_then(|n| nofile_warning(n, shards, config.limits.max_connections_per_shard)),
        io_uring_warning(read_u64(Path::new("/proc/sys/kernel/io_uring_disabled"))),
        somaxconn_warning(read_u64(Path::new("/proc/sys/net/core/somaxconn"))),
        numa_warning(nodes_spanned(cores), pinned),
    ];
    for f in findings.into_iter().flatten() {
        log::warn!("preflight: {f}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_name_the_fix() {
        assert!(memlock_warning(8 << 20).unwrap().contains("limits.sh"));
        assert!(memlock_warning(libc::RLIM_INFINITY).is_none());
        assert!(memlock_warning(1 << 30).is_none());
        assert!(nofile_warning(1024, 2, 10_000)
            .unwrap()
            .contains("LimitNOFILE"));
        assert!(nofile_warning(1 << 20, 2, 10_000).is_none());
        assert!(io_uring_warning(Some(2))
            .unwrap()
            .contains("io_uring_disabled"));
        assert!(io_uring_warning(Some(0)).is_none() && io_uring_warning(None).is_none());
        assert!(somaxconn_warning(Some(128)).unwrap().contains("sysctl.sh"));
        assert!(somaxconn_warning(Some(65535)).is_none());
        assert!(numa_warning(2, false).unwrap().contains("pin.sh"));
        assert!(numa_warning(2, true).is_none() && numa_warning(1, false).is_none());
        assert!(
            cpulist_contains("0-3,8", 8)
                && cpulist_contains("0-3,8", 2)
                && !cpulist_contains("0-3,8", 5)
        );
    }
}
