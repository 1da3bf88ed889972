//! The AMQP listener of one shard. Every shard binds the AMQP port (SO_REUSEPORT, the
//! kernel spreads connections) and each accepted connection runs on this shard until it
//! ends (`connection::run`).

use std::rc::Rc;

use glommio::net::TcpListener;

use crate::broker::Shard;

pub fn bind(shard: &Shard) -> std::io::Result<TcpListener> {
    TcpListener::bind(shard.config.amqp.addr.as_str()).map_err(std::io::Error::from)
}

/// Accepts until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::runtime::listener::accept_loop(shard, listener, "amqp", super::connection::run).await
}
