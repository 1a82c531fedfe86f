//! Accept loops: a global connection cap (a semaphore taken before `accept`, so excess
//! connections wait in the kernel's backlog) and one task per connection.

use crate::c2s;
use crate::server::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener, direct_tls: bool) {
    let mut shutdown = state.shutdown.clone();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = state.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
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
