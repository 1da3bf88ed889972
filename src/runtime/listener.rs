//! The accept loop every protocol listener of a shard runs: accept until the shard stops,
//! refuse connections past `limits.max_connections_per_shard` with a log line, and run each
//! accepted connection as a task on this shard, counted in `Shard::connections`.

use std::future::Future;
use std::rc::Rc;

use futures::future::{select, Either};
use glommio::net::{TcpListener, TcpStream};

use super::notify::Listener;
use super::shard::Shard;

/// Accepts `protocol` connections on `listener` until the shard stops; `serve` runs one.
pub async fn accept_loop<F, Fut, E>(
    shard: Rc<Shard>,
    listener: TcpListener,
    protocol: &'static str,
    serve: F,
) where
    F: Fn(Rc<Shard>, TcpStream) -> Fut + 'static,
    Fut: Future<Output = Result<(), E>> + 'static,
    E: std::fmt::Display,
{
    let serve = Rc::new(serve);
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
                log::warn!("{protocol} accept: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let max = shard.config.limits.max_connections_per_shard;
        if shard.connections.get() >= max {
            log::warn!(
                "shard {}: refusing {protocol} connection from {:?}: {max} connections already open",
                shard.id,
                stream.peer_addr().ok()
            );
            drop(stream);
            continue;
        }
        let shard = shard.clone();
        let serve = serve.clone();
        glommio::spawn_local(async move {
            shard.connection_opened();
            if let Err(e) = serve(shard.clone(), stream).await {
                log::debug!("{protocol} connection ended: {e}");
            }
            shard.connection_closed();
        })
        .detach();
    }
}
