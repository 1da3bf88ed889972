//! The AMQP listener of one shard. Every shard binds the AMQP port (SO_REUSEPORT, the
//! kernel spreads connections) and each accepted connection runs on this shard until it
//! ends (`connection::run`).

use std::rc::Rc;

use futures::future::{select, Either};
use glommio::net::TcpListener;

use crate::runtime::notify::Listener;
use crate::runtime::shard::Shard;

pub fn bind(shard: &Shard) -> std::io::Result<TcpListener> {
    TcpListener::bind(shard.config.amqp.addr.as_str()).map_err(std::io::Error::from)
}

/// Accepts until the shard stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stop = Listener::new();
        stop.listen(&shard.stop);
        if shard.stopping.get() {
            break;
        }
        let accepted = match select(Box::pin(listener.accept()), stop).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::warn!("amqp accept: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let max = shard.config.limits.max_connections_per_shard;
        if shard.connections.get() >= max {
            log::warn!(
                "shard {}: refusing amqp connection from {:?}: {max} connections already open",
                shard.id,
                stream.peer_addr().ok()
            );
            drop(stream);
            continue;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            shard.connection_opened();
            if let Err(e) = super::connection::run(shard.clone(), stream).await {
                log::debug!("amqp connection ended: {e}");
            }
            shard.connection_closed();
        })
        .detach();
    }
}
