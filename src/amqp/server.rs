//! The AMQP listeners of one shard: `amqp.addr`, and `amqp.tls_addr` (amqps) when set.
//! Every shard binds them (SO_REUSEPORT, the kernel spreads connections) and each accepted
//! connection runs on this shard until it ends (`connection::run`, `connection::run_tls`).

use std::rc::Rc;

use glommio::net::TcpListener;

use crate::broker::Shard;

pub fn bind(shard: &Shard) -> std::io::Result<TcpListener> {
    TcpListener::bind(shard.config.amqp.addr.as_str()).map_err(std::io::Error::from)
}

/// The amqps listener, when `amqp.tls_addr` is set.
pub fn bind_tls(shard: &Shard) -> std::io::Result<Option<TcpListener>> {
    let addr = shard.config.amqp.tls_addr.as_str();
    if addr.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .map(Some)
        .map_err(std::io::Error::from)
}

/// Accepts until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::runtime::listener::accept_loop(shard, listener, "amqp", super::connection::run).await
}

/// Accepts amqps connections until the shard stops.
pub async fn accept_tls_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::runtime::listener::accept_loop(shard, listener, "amqp", super::connection::run_tls).await
}
