//! A loopback TCP proxy that a test or the drill can cut: the network between two processes
//! (an edge's leaf connection to its hub) as a thing to break on purpose.
//!
//! Every accepted connection gets a fresh connection to the upstream address, and bytes are
//! copied both ways. [`TcpProxy::cut`] drops every proxied connection at once (both sides see
//! the socket close, as on a broken link) and, until [`TcpProxy::restore`], closes each new
//! connection as soon as it is accepted, so the client's reconnects fail like they would against
//! an unreachable peer. The listener stays bound throughout: the port is never released for
//! something else to take.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::HarnessError;

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Connections accepted and joined to the upstream.
    pub proxied: u64,
    /// Connections closed on accept because the link was cut.
    pub refused: u64,
    /// Connections joined now.
    pub open: u64,
    /// Bytes copied client -> upstream, and upstream -> client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Cuts so far.
    pub cuts: u64,
}

#[derive(Default)]
struct Counters {
    proxied: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// The link's state as the connection tasks watch it: cut or not, and how many cuts so far
/// (a connection made before the latest cut must go even if the link is open again by the
/// time it looks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    cut: bool,
    cuts: u64,
    /// The proxy was dropped: every task ends.
    closed: bool,
}

/// The proxy; dropping it ends the listener and every connection.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    link: watch::Sender<Link>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a loopback port of its own and forwards to `upstream` (which need not be up
    /// yet: a connection accepted while it is down is closed, as a dead peer would).
    pub async fn start(upstream: SocketAddr) -> Result<TcpProxy, HarnessError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(HarnessError::NoPort)?;
        let addr = listener.local_addr().map_err(HarnessError::NoPort)?;
        let (link, rx) = watch::channel(Link {
            cut: false,
            cuts: 0,
            closed: false,
        });
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, upstream, rx, counters.clone()));
        tracing::debug!(%addr, %upstream, "TCP proxy listening");
        Ok(TcpProxy {
            addr,
            upstream,
            link,
            counters,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Drops every proxied connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.link.send_modify(|l| {
            l.cut = true;
            l.cuts += 1;
        });
        tracing::info!(addr = %self.addr, "proxy: link cut");
    }

    /// Accepts and joins connections again.
    pub fn restore(&self) {
        self.link.send_modify(|l| l.cut = false);
        tracing::info!(addr = %self.addr, "proxy: link restored");
    }

    /// Cuts the link for `d`, then restores it.
    pub async fn cut_for(&self, d: Duration) {
        self.cut();
        tokio::time::sleep(d).await;
        self.restore();
    }

    pub fn is_cut(&self) -> bool {
        self.link.borrow().cut
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            proxied: c.proxied.load(Relaxed),
            refused: c.refused.load(Relaxed),
            open: c.open.load(Relaxed),
            bytes_up: c.bytes_up.load(Relaxed),
            bytes_down: c.bytes_down.load(Relaxed),
            cuts: self.link.borrow().cuts,
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.link.send_modify(|l| l.closed = true);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    link: watch::Receiver<Link>,
    counters: Arc<Counters>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like pass; a listener that keeps failing is not ours to fix.
                tracing::warn!(error = %e, "proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = *link.borrow();
        if now.closed {
            return;
        }
        if now.cut {
            counters.refused.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "proxy: link cut, connection closed on accept");
            drop(client);
            continue;
        }
        tokio::spawn(join(
            client,
            upstream,
            link.clone(),
            counters.clone(),
            now.cuts,
        ));
    }
}

/// One proxied connection, until either side closes or the link is cut.
async fn join(
    client: TcpStream,
    upstream: SocketAddr,
    mut link: watch::Receiver<Link>,
    counters: Arc<Counters>,
    born_after_cuts: u64,
) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%upstream, error = %e, "proxy: upstream refused; closing the client");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    counters.proxied.fetch_add(1, Relaxed);
    counters.open.fetch_add(1, Relaxed);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let copy = async {
        tokio::join!(
            pump(cr, sw, &counters.bytes_up),
            pump(sr, cw, &counters.bytes_down)
        )
    };
    // A cut made after this connection was joined ends it, even if the link is already open
    // again when this task gets to look.
    let cut = link.wait_for(|l| l.closed || l.cuts > born_after_cuts);
    tokio::select! {
        _ = copy => {}
        _ = cut => {}
    }
    counters.open.fetch_sub(1, Relaxed);
    // Both halves of both sockets drop here: the peers see the connection close.
}

/// Copies `from` into `to` until `from` ends (then half-closes `to`) or either fails.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, count: &AtomicU64) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        count.fetch_add(n as u64, Relaxed);
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .map_err(|_| std::io::Error::other("echo timed out"))??;
        Ok(got)
    }

    /// The connection is closed by the far side: a read ends (0 bytes) or fails (reset).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn bytes_flow_a_cut_breaks_connections_and_service_resumes() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");
        let s = proxy.stats();
        assert_eq!((s.proxied, s.open, s.bytes_up, s.bytes_down), (1, 1, 5, 5));

        proxy.cut();
        assert!(proxy.is_cut());
        assert!(closed(&mut a).await, "a cut drops the joined connection");
        // While cut, a new connection is accepted by the kernel and closed at once.
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed(&mut b).await, "no service while cut");
        let s = proxy.stats();
        assert_eq!((s.refused, s.open, s.cuts), (1, 0, 1));

        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"again").await.unwrap(), b"again");
        assert_eq!(proxy.stats().proxied, 2);

        // A timed cut ends on its own, and breaks what was joined before it.
        proxy.cut_for(Duration::from_millis(100)).await;
        assert!(!proxy.is_cut());
        assert!(closed(&mut c).await);
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut d, b"back").await.unwrap(), b"back");
    }

    #[tokio::test]
    async fn an_upstream_that_is_down_closes_the_client() {
        // A port nothing listens on: bound, then released.
        let gone = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = TcpProxy::start(gone).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed(&mut a).await);
        assert_eq!(proxy.stats().proxied, 0);
    }
}
