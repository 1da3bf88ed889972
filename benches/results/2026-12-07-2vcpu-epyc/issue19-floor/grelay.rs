//! relay.c's relay on glommio 0.9, as Portask runs it: one executor pinned to CPU 0 (as a
//! shard is), glommio's own TcpStream, each socket borrowed for one poll at a time (as
//! `runtime::transport::Socket` does). A publisher's bytes go to the consumer; the
//! consumer's acks are read and dropped. No protocol, no queue: what is left per message is
//! the runtime's. A bench artifact (it unwraps), not broker code.
use futures_lite::AsyncReadExt;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::rc::Rc;
use std::cell::RefCell;

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(39998);
    LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let mut publ = None;
            let mut sub = None;
            while publ.is_none() || sub.is_none() {
                let mut c = l.accept().await.unwrap();
                c.set_nodelay(true).unwrap();
                let mut h = [0u8; 1];
                c.read_exact(&mut h).await.unwrap();
                if h[0] == b'P' { publ = Some(c) } else { sub = Some(c) }
            }
            let (mut publ, sub) = (publ.unwrap(), Rc::new(RefCell::new(sub.unwrap())));
            let acks = sub.clone();
            glommio::spawn_local(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let r = futures_lite::future::poll_fn(|cx| {
                        futures_lite::AsyncRead::poll_read(std::pin::Pin::new(&mut *acks.borrow_mut()), cx, &mut buf)
                    }).await;
                    if !matches!(r, Ok(n) if n > 0) { break; }
                }
            }).detach();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = publ.read(&mut buf).await.unwrap();
                if n == 0 { break; }
                let mut off = 0;
                while off < n {
                    let w = futures_lite::future::poll_fn(|cx| {
                        futures_lite::AsyncWrite::poll_write(std::pin::Pin::new(&mut *sub.borrow_mut()), cx, &buf[off..n])
                    }).await.unwrap();
                    off += w;
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
