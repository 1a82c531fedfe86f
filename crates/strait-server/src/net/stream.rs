//! What components (XEP-0114) and interop links (s2s) share: an XML stream over any byte
//! stream (plain TCP, or TLS after STARTTLS) read through the wire parser, and their accept
//! loop. Client connections have their own, leaner path (`c2s`, `net::transport`): they are
//! the many; these are the few.

use crate::server::ServerState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_wire::{Event, Limits, StreamError, StreamParser};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A stream's bytes and its parser.
pub struct XmlStream<S> {
    pub io: S,
    pub parser: StreamParser,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> XmlStream<S> {
    pub fn new(io: S, limits: Limits) -> Self {
        XmlStream {
            io,
            parser: StreamParser::new(limits),
            buf: Vec::new(),
        }
    }

    /// The next parser event, reading as needed; `Err` carries the stream error to send
    /// (`None`: the peer went away).
    pub async fn next(&mut self) -> Result<Event, Option<StreamError>> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(Some(e)),
            }
            self.buf.clear();
            self.buf.reserve(16 * 1024);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => self.parser.feed(&self.buf),
            }
        }
    }

    pub async fn write(&mut self, xml: &str) -> bool {
        self.io.write_all(xml.as_bytes()).await.is_ok() && self.io.flush().await.is_ok()
    }

    /// Sends the stream error and closes the stream.
    pub async fn fail(&mut self, e: &StreamError) {
        let _ = self.write(&format!("{}</stream:stream>", e.to_xml())).await;
        let _ = self.io.shutdown().await;
    }

    /// Closes the stream without an error.
    pub async fn close(&mut self) {
        let _ = self.write("</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

/// Accepts connections on `listener` until shutdown, each served by `serve` in a task of its
/// own while it holds one of the server's connection permits (shared with clients); `what`
/// names them in the logs.
pub async fn accept_each<F, Fut>(
    state: Arc<ServerState>,
    listener: TcpListener,
    what: &'static str,
    serve: F,
) where
    F: Fn(Arc<ServerState>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = state.connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "{what} connection refused: connection limit");
                    continue;
                };
                let task = serve(state.clone(), tcp, peer);
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("{what} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
