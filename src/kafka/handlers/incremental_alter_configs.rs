//! IncrementalAlterConfigs (key 44), v0–v1: set, delete, append to or subtract from single
//! configs of a topic or the broker's run-time defaults. Takes effect live on every shard
//! and survives restart (it is a catalog change). ACLs: ALTER_CONFIGS on the topic
//! (TOPIC_AUTHORIZATION_FAILED) or the cluster, for a broker (CLUSTER_AUTHORIZATION_FAILED).
//!
//! Runs on the connection's shard; the change goes to shard 0's catalog writer.

use std::rc::Rc;

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::ResponseError;

use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::kafka::configs::{self, Edit};
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: IncrementalAlterConfigsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = &conn.shard;
        let mut responses = Vec::new();
        for r in req.resources {
            let name = r.resource_name.to_string();
            let mut edits = Vec::new();
            let mut bad_op = None;
            for c in r.configs {
                let value = c.value.map(|v| v.to_string()).unwrap_or_default();
                let edit = match c.config_operation {
                    0 => Edit::Set(value),
                    1 => Edit::Delete,
                    2 => Edit::Append(value),
                    3 => Edit::Subtract(value),
                    op => {
                        bad_op = Some(op);
                        break;
                    }
                };
                edits.push((c.name.to_string(), edit));
            }
            let allowed = conn.authorize_config(Operation::AlterConfigs, r.resource_type, &name);
            let outcome = match (allowed, bad_op) {
                (Err(code), _) => Err((code, "ALTER_CONFIGS refused by the ACLs".to_owned())),
                (Ok(()), Some(op)) => Err((
                    ResponseError::InvalidRequest.code(),
                    format!("unknown config operation {op}"),
                )),
                (Ok(()), None) => {
                    let state = shard.catalog.current();
                    let validate_only = req.validate_only;
                    configs::apply(
                        shard,
                        &state,
                        r.resource_type,
                        &name,
                        edits,
                        false,
                        validate_only,
                    )
                    .await
                }
            };
            let mut resp = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            if let Err((code, msg)) = outcome {
                resp = resp
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(msg)));
            }
            responses.push(resp);
        }
        frame(
            correlation_id,
            version,
            &IncrementalAlterConfigsResponse::default().with_responses(responses),
        )
    })
}
