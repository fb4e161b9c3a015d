//! The accept loop under both warp route trees (the public intake, the admin console).
//!
//! warp 0.4's own `serve` takes only a bare `TcpListener` and cannot set `TCP_NODELAY` on what
//! it accepts, which warp 0.3 did. Small JSON answers on keep-alive connections would then wait
//! on Nagle's algorithm, so the loop is ours: hyper 1 through hyper-util (HTTP/1 and prior
//! knowledge HTTP/2 on one port, as before), with hyper-util's graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use warp::Filter;

/// Binds `addr` and returns the bound address and the server future. The future serves until
/// `shutdown` resolves, then stops accepting and resolves once every open connection has
/// finished its in-flight request (idle keep-alive connections are closed at once).
pub async fn serve<F>(
    filter: F,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, impl Future<Output = ()>)>
where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, run(listener, filter, shutdown)))
}

async fn run<F>(listener: TcpListener, filter: F, shutdown: impl Future<Output = ()>)
where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait for some to close instead of
                // spinning (what hyper 0.14's listener did).
                tracing::error!(error = %crate::error_chain::chain(&e), "accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(warp::service(filter.clone()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                // Clients that hang up mid-request are routine, not the server's failure.
                tracing::debug!(error = %crate::error_chain::chain(&*e), "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one connection that surface at accept; the listener itself is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn routes() -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
        warp::path::full().then(|path: warp::path::FullPath| async move {
            if path.as_str() == "/slow" {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            warp::reply::Response::new(path.as_str().to_string().into())
        })
    }

    /// The drain the service relies on: an idle keep-alive connection does not hold shutdown
    /// up, a request in flight still gets its answer, and nothing new is accepted.
    #[tokio::test]
    async fn shutdown_finishes_in_flight_requests_and_closes_idle_keep_alive() {
        let (tx, rx) = oneshot::channel::<()>();
        let (addr, server) = serve(routes(), "127.0.0.1:0".parse().unwrap(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        let server = tokio::spawn(server);
        let client = reqwest::Client::new();
        let base = format!("http://{addr}");

        // Leaves an idle pooled connection behind.
        let r = client.get(format!("{base}/warm")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "/warm");

        let slow = tokio::spawn({
            let client = reqwest::Client::new();
            let url = format!("{base}/slow");
            async move { client.get(url).send().await?.text().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(()).unwrap();

        assert_eq!(slow.await.unwrap().unwrap(), "/slow");
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("shutdown waited on the idle keep-alive connection")
            .unwrap();
        assert!(reqwest::Client::new()
            .get(format!("{base}/late"))
            .send()
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_not_a_panic() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(routes(), addr, std::future::pending())
            .await
            .err()
            .expect("bind must fail");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
