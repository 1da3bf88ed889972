//! `GET /health` and `GET /health/ready`, served by whichever shard accepted the request.
//!
//! `/health` is 200 while every shard's executor answers a ping through the mesh within
//! `http.health_deadline_ms` (a stalled reactor makes it 503), with each shard's answer
//! time. `/health/ready` is 503 until every shard has recovered its data and bound its
//! Kafka, AMQP and HTTP listeners, and again once the broker is stopping.

use std::rc::Rc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Serialize;

use super::{json, ApiResult};
use crate::broker::Shard;

#[derive(Serialize)]
struct ShardHealth {
    id: usize,
    status: &'static str,
    response_ms: f64,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    ready: bool,
    shards: Vec<ShardHealth>,
}

pub async fn health(shard: &Rc<Shard>) -> ApiResult {
    let deadline = Duration::from_millis(shard.config.http.health_deadline_ms.max(1));
    let checks = (0..shard.count).map(|to| async move {
        let started = Instant::now();
        let alive = shard.core.ping(to, deadline).await;
        ShardHealth {
            id: to,
            status: if alive { "ok" } else { "unresponsive" },
            response_ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    });
    let shards = futures::future::join_all(checks).await;
    let healthy = shards.iter().all(|s| s.status == "ok");
    let body = Health {
        status: if healthy { "ok" } else { "unhealthy" },
        ready: is_ready(shard),
        shards,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(status, &body))
}

fn is_ready(shard: &Shard) -> bool {
    shard.shutdown.all_ready(shard.count) && !shard.stopping.get()
}

pub fn ready(shard: &Rc<Shard>) -> ApiResult {
    let (status, text) = if shard.stopping.get() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if is_ready(shard) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    Ok(json(status, &serde_json::json!({ "status": text })))
}
