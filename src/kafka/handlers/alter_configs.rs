//! AlterConfigs (key 33), v0–v2: replace all overrides of a topic or the broker's run-time
//! defaults with the given set (or only check them). Takes effect live on every shard and
//! survives restart (it is a catalog change). ACLs: ALTER_CONFIGS on the topic
//! (TOPIC_AUTHORIZATION_FAILED) or the cluster, for a broker (CLUSTER_AUTHORIZATION_FAILED).
//!
//! Runs on the connection's shard; the change goes to shard 0's catalog writer.

use std::rc::Rc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::{deferred, frame, str_bytes, Conn, Pending};
use crate::kafka::configs::{self, Edit};
use crate::security::acl::Operation;

pub fn handle(
    conn: &Rc<Conn>,
    req: AlterConfigsRequest,
    correlation_id: i32,
    version: i16,
) -> Pending {
    deferred(conn, |conn| async move {
        let shard = &conn.shard;
        let mut responses = Vec::new();
        for r in req.resources {
            let name = r.resource_name.to_string();
            let edits = r
                .configs
                .into_iter()
                .map(|c| {
                    let edit = match c.value {
                        Some(v) => Edit::Set(v.to_string()),
                        None => Edit::Delete,
                    };
                    (c.name.to_string(), edit)
                })
                .collect();
            let state = shard.catalog.current();
            let outcome =
                match conn.authorize_config(Operation::AlterConfigs, r.resource_type, &name) {
                    Err(code) => Err((code, "ALTER_CONFIGS refused by the ACLs".to_owned())),
                    Ok(()) => {
                        let validate_only = req.validate_only;
                        configs::apply(
                            shard,
                            &state,
                            r.resource_type,
                            &name,
                            edits,
                            true,
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
            &AlterConfigsResponse::default().with_responses(responses),
        )
    })
}
