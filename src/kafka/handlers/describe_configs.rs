//! DescribeConfigs (key 32), v1–v4: the effective configs of topics and of the broker, with
//! their sources (topic override, run-time broker default, file default) and types.
//! ACLs: DESCRIBE_CONFIGS on the topic (TOPIC_AUTHORIZATION_FAILED) or the cluster, for a
//! broker (CLUSTER_AUTHORIZATION_FAILED).
//!
//! Runs on the connection's shard from its catalog replica.

use std::rc::Rc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{frame, ready, str_bytes, Conn, Pending};
use crate::kafka::configs;
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: DescribeConfigsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    let state = conn.shard.catalog.current();
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .map(|k| k.iter().map(|s| s.to_string()).collect());
            let base = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            if let Err(code) =
                conn.authorize_config(Operation::DescribeConfigs, r.resource_type, &name)
            {
                return base
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes("DESCRIBE_CONFIGS refused by the ACLs")));
            }
            match configs::describe(
                &conn.shard.config,
                &state,
                r.resource_type,
                &name,
                keys.as_deref(),
            ) {
                Ok(list) => base.with_configs(
                    list.into_iter()
                        .map(|d| {
                            let mut c = DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(d.name))
                                .with_value(d.value.map(str_bytes))
                                .with_read_only(d.read_only)
                                .with_config_source(d.source);
                            if version >= 3 {
                                c.config_type = d.config_type;
                            }
                            c
                        })
                        .collect(),
                ),
                Err(e) => {
                    let (code, msg) = configs::error(&e);
                    base.with_error_code(code)
                        .with_error_message(Some(str_bytes(msg)))
                }
            }
        })
        .collect();
    ready(frame(
        correlation_id,
        version,
        &DescribeConfigsResponse::default().with_results(results),
    ))
}
