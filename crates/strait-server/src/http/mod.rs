//! The server's HTTPS side. For now it serves XEP-0363 uploads and downloads ([`upload`]);
//! media proxying and the admin API will live here too. HTTP/1.1 over TLS (rustls, the same
//! certificates as the client listeners, chosen by SNI), through hyper.
//!
//! Bounded like the client listeners: at most `upload.max_connections` connections (more are
//! closed at once), a TLS handshake and a request's headers must arrive within
//! [`HANDSHAKE_TIMEOUT`] and [`HEADER_TIMEOUT`] (which also ends an idle kept-alive
//! connection), an upload that stalls for [`upload::BODY_IDLE`] is dropped, and a refused
//! upload's body is read for at most [`upload::DRAIN_DEADLINE`]. On shutdown, requests under
//! way get [`SHUTDOWN_GRACE`] to finish.

pub mod metrics;
pub mod upload;

use crate::features::upload::Uploads;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests under way may go on once the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts HTTPS connections on `listener` until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    uploads: Arc<Uploads>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("accepting an HTTPS connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTPS connection refused: {max_connections} connections open");
            continue;
        };
        tokio::spawn(serve(
            tcp,
            peer,
            acceptor.clone(),
            uploads.clone(),
            shutdown.clone(),
            permit,
        ));
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    uploads: Arc<Uploads>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "HTTPS TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTPS TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let uploads = uploads.clone();
        async move { Ok::<_, Infallible>(upload::respond(&uploads, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "HTTPS connection ended: {e}");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}
