//! DescribeLogDirs (key 35), v1–v4: the data directory and the size of every partition in
//! it (or of those asked), with the disk's total and usable bytes (v4). ACLs: DESCRIBE on
//! the cluster.
//!
//! Runs on the connection's shard and asks every shard for its partitions (one envelope
//! each).

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use super::details::authorize::cluster_denied;
use super::{deferred, frame, str_bytes, topic_name, Conn, Pending};
use crate::kafka::owner::{PartitionInfo, Reply, Request};
use crate::security::acl::Operation;

/// (total, usable) bytes of the filesystem holding `path`.
fn disk_space(path: &std::path::Path) -> (i64, i64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (-1, -1);
    };
    // SAFETY: `libc::statvfs` is plain integers, so all-zero is a valid value; statvfs
    // reads the NUL-terminated path `c` owns (alive for the call) and writes one
    // `statvfs` into our local.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return (-1, -1);
        }
        let bs = st.f_frsize as i64;
        (st.f_blocks as i64 * bs, st.f_bavail as i64 * bs)
    }
}

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeLogDirsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        // DESCRIBE on the cluster, else no directories (and, v3+,
        // CLUSTER_AUTHORIZATION_FAILED), as Kafka.
        if !conn.authorize_cluster(Operation::Describe) {
            let mut resp = DescribeLogDirsResponse::default();
            if version >= 3 {
                resp.error_code = cluster_denied();
            }
            return frame(correlation_id, version, &resp);
        }
        let shard = conn.shard.clone();
        let wanted: Option<Vec<(String, i32)>> = req.topics.map(|ts| {
            ts.into_iter()
                .flat_map(|t| {
                    let n = t.topic.to_string();
                    t.partitions.into_iter().map(move |p| (n.clone(), p))
                })
                .collect()
        });
        let replies = join_all((0..shard.count).map(|owner| {
            let shard = shard.clone();
            let parts = wanted.as_ref().map(|w| {
                w.iter()
                    .filter(|(t, p)| shard.owner_of(t, *p) == owner)
                    .cloned()
                    .collect()
            });
            async move { shard.kafka(owner, Request::Describe { parts }).await }
        }))
        .await;
        let mut infos: Vec<PartitionInfo> = replies
            .into_iter()
            .flat_map(|r| match r {
                Reply::Describe(i) => i,
                _ => Vec::new(),
            })
            .filter(|i| i.error == 0)
            .collect();
        infos.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
        for i in infos {
            let p = DescribeLogDirsPartition::default()
                .with_partition_index(i.partition)
                .with_partition_size(i.size as i64)
                .with_offset_lag(0);
            match topics.last_mut() {
                Some(t) if t.name.to_string() == i.topic => t.partitions.push(p),
                _ => topics.push(
                    DescribeLogDirsTopic::default()
                        .with_name(topic_name(&i.topic))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let dir = std::fs::canonicalize(&shard.config.data_dir)
            .unwrap_or_else(|_| shard.config.data_dir.clone());
        let mut result = DescribeLogDirsResult::default()
            .with_log_dir(str_bytes(dir.to_string_lossy().into_owned()))
            .with_topics(topics);
        if version >= 4 {
            let (total, usable) = disk_space(&dir);
            result.total_bytes = total;
            result.usable_bytes = usable;
        }
        frame(
            correlation_id,
            version,
            &DescribeLogDirsResponse::default().with_results(vec![result]),
        )
    })
}
