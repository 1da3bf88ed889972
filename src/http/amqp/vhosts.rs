//! `GET /vhosts[/{vhost}]`: the configured vhosts (`amqp.vhosts`) the caller sees, with
//! their queues' message counts summed. Vhosts are configuration, not created over HTTP.
//! Runs on the shard serving the request.

use std::rc::Rc;

use serde_json::{json, Value};

use super::{listing, queues};
use crate::broker::Shard;
use crate::http::{ok_json, ApiResult, Req};

pub(super) async fn list(shard: &Rc<Shard>, req: &Req, one: Option<&str>) -> ApiResult {
    let (names, state) = listing(shard, req, one).await?;
    let stats = shard.stats_all().await;
    let figures = queues::figures(&stats);
    let rows: Vec<Value> = names
        .iter()
        .map(|v| {
            let queues = state.amqp.get(*v).map(|t| &t.queues);
            let (mut ready, mut unacked) = (0u64, 0u64);
            for name in queues.into_iter().flat_map(|q| q.keys()) {
                if let Some(f) = figures.get(&(v.to_string(), name.clone())) {
                    ready += f.messages_ready;
                    unacked += f.messages_unacknowledged;
                }
            }
            json!({
                "name": v,
                "tracing": false,
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            })
        })
        .collect();
    match one {
        Some(_) => ok_json(&rows.first()),
        None => ok_json(&rows),
    }
}
