//! The accept loop: a global connection cap (a permit is taken before accepting, so excess
//! connections wait in the kernel's backlog instead of costing us memory) and one task per
//! connection. One loop serves every listener, so that no permit sits idle in a listener
//! that has nobody to accept.

use crate::c2s;
use crate::server::ServerState;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpListener;

/// A listening socket and whether it speaks direct TLS (XEP-0368).
pub struct Listener {
    pub socket: TcpListener,
    pub direct_tls: bool,
}

pub async fn accept_loop(state: Arc<ServerState>, listeners: Vec<Listener>) {
    if listeners.is_empty() {
        return;
    }
    let mut shutdown = state.shutdown.clone();
    let mut backoff = Duration::from_millis(10);
    let mut next = 0usize;
    loop {
        let permit = tokio::select! {
            p = state.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        // Poll every listener, starting from a rotating one so none is starved.
        let accept = std::future::poll_fn(|cx| {
            let n = listeners.len();
            for i in 0..n {
                let l = &listeners[(next + i) % n];
                if let Poll::Ready(r) = l.socket.poll_accept(cx) {
                    next = (next + i + 1) % n;
                    return Poll::Ready((r, l.direct_tls));
                }
            }
            Poll::Pending
        });
        let (accepted, direct_tls) = tokio::select! {
            a = accept => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(10);
                let _ = tcp.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    c2s::serve_connection(state, tcp, peer, direct_tls).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
