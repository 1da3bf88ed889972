//! DescribeCluster (key 60), v0–v2: the cluster id, the controller and the brokers — this
//! one broker, at the address the client reached (or the advertised one); when asked,
//! the cluster's authorized operations: those of the principal when it may DESCRIBE the
//! cluster, else none (Kafka refuses nothing else here: clients call it to find brokers).
//!
//! Runs on the connection's shard; touches no state.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::metadata::{advertised, cluster_operations};
use super::{frame, ready, str_bytes, Conn, Pending};

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeClusterRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let (host, port) = advertised(conn);
    let node = BrokerId(conn.shard.config.node_id);
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(conn.shard.config.kafka.cluster_id.clone()))
        .with_controller_id(node)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node)
            .with_host(str_bytes(host))
            .with_port(port)])
        .with_cluster_authorized_operations(if req.include_cluster_authorized_operations {
            cluster_operations(conn)
        } else {
            i32::MIN
        });
    if version >= 1 {
        resp.endpoint_type = req.endpoint_type;
    }
    ready(frame(correlation_id, version, &resp))
}
