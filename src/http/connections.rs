//! `/api/v1/connections`: every open client connection of every shard (gathered through
//! the mesh), and `DELETE /api/v1/connections/{id}` to close one. The id carries its shard,
//! so the close goes straight to that shard (`Shard::close_connection`), which shuts the
//! socket down; the connection's own task then ends as when a peer leaves.

use std::rc::Rc;

use http::Method;

use super::{no_content, ok_json, ApiError, ApiResult, Req};
use crate::broker::Shard;

pub async fn route(shard: &Rc<Shard>, req: &Req, rest: &[&str]) -> ApiResult {
    match (rest, &req.method) {
        ([], &Method::GET) => {
            let mut all: Vec<_> = shard
                .stats_all()
                .await
                .into_iter()
                .flat_map(|s| s.connections)
                .collect();
            all.sort_by_key(|c| c.id);
            ok_json(&all)
        }
        ([id], &Method::DELETE) => {
            let id: u64 = id
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("'{id}' is not a connection id")))?;
            if shard.core.close_connection(id).await {
                no_content()
            } else {
                Err(ApiError::NotFound(format!("no open connection {id}")))
            }
        }
        ([] | [_], _) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound("no such endpoint".into())),
    }
}
