//! The connection's byte stream: plain TCP until STARTTLS, then TLS.
//!
//! TLS runs on rustls's unbuffered API rather than a buffered `ServerConnection`, so that an
//! idle connection holds no I/O buffers: reads go through a buffer on the stack of the poll
//! that makes them, decrypted records go straight to the caller, and the two buffers the
//! transport owns (an incomplete incoming record, encrypted bytes not yet written) are freed
//! as soon as they are empty. A buffered `ServerConnection` keeps a 4 KiB read buffer and
//! its own queues for the connection's whole life.

use super::tls13::{Opened, Records};
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time, into a buffer on the stack: a whole TLS record
/// (16 KiB of plaintext plus its overhead) fits.
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Most bytes handed to the reader per read, as a 4 KiB read buffer would: the reader's
/// shaping (a token bucket) then paces a large stanza instead of taking it in one gulp.
/// The rest of a larger TLS record waits in `stash`, allocated only then.
const DELIVER_MAX: usize = 4096;
/// Plaintext encrypted at a time when writing, so that what waits for the socket stays
/// around one record.
const WRITE_CHUNK: usize = 16 * 1024;

/// A client connection, before or after TLS.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// Only while STARTTLS moves the TCP stream into TLS; any I/O on it is an error.
    Upgrading,
}

/// Who protects the records of a TLS session.
enum Engine {
    /// rustls: during the handshake, and for the whole of a TLS 1.2 session.
    Rustls(Box<UnbufferedServerConnection>),
    /// An established TLS 1.3 session: our record layer, with the keys rustls negotiated.
    Tls13(Records),
    /// Only while the session moves from rustls to `Tls13`.
    HandingOver,
}

fn handing_over() -> io::Error {
    io::Error::other("I/O while the TLS session is handed over")
}

/// Moves an established TLS 1.3 session from rustls to our record layer (see `tls13.rs` for
/// why); a TLS 1.2 session stays with rustls.
fn hand_over(conn: Box<UnbufferedServerConnection>) -> io::Result<Engine> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Ok(Engine::Rustls(conn));
    }
    let (secrets, kernel) = (*conn)
        .dangerous_into_kernel_connection()
        .map_err(tls_error)?;
    let records = Records::new(secrets, kernel).map_err(io::Error::other)?;
    Ok(Engine::Tls13(records))
}

/// A TLS server connection over TCP: rustls's unbuffered API for the handshake, then (TLS
/// 1.3) the record layer in `tls13.rs`.
pub struct TlsStream {
    tcp: TcpStream,
    engine: Engine,
    /// Received bytes of a TLS record not complete yet; empty (no allocation) otherwise.
    incoming: Vec<u8>,
    /// Encrypted bytes not written to the socket yet; empty (no allocation) otherwise.
    outgoing: Vec<u8>,
    /// Decrypted bytes not handed to the reader yet: the rest of a record beyond
    /// `DELIVER_MAX`, or records that came while writing. Empty (no allocation) when idle.
    stash: Vec<u8>,
    /// The peer sent close_notify (or closed TCP): reads return end of stream.
    read_closed: bool,
    /// We queued our close_notify.
    sent_close: bool,
    /// The pin of the certificate the client presented, if any (a provider's proxy).
    client_pin: Option<Box<[u8; 32]>>,
}

/// What processing the buffered TLS records led to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Everything complete was processed; more bytes from the peer are needed.
    NeedData,
    /// The peer closed the TLS session (close_notify).
    Closed,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn upgrading() -> io::Error {
    io::Error::other("I/O during the TLS upgrade")
}

/// Runs rustls over the records in `data` (its front `*used` bytes already consumed),
/// handing decrypted bytes to `sink`, queueing what rustls wants sent in `outgoing`.
/// Stops when more bytes are needed, or, with `until_ready`, as soon as the handshake is
/// over and nothing is left to send (application data then stays with rustls for the next
/// call). Returns how far `data` was consumed through `used`, also on errors.
fn process(
    engine: &mut Engine,
    outgoing: &mut Vec<u8>,
    data: &mut [u8],
    used: &mut usize,
    sink: &mut dyn FnMut(&[u8]),
    until_ready: bool,
) -> io::Result<Flow> {
    match engine {
        Engine::Rustls(conn) => process_rustls(conn, outgoing, data, used, sink, until_ready),
        Engine::Tls13(records) => match records.open(data, used, outgoing, sink)? {
            Opened::NeedData => Ok(Flow::NeedData),
            Opened::Closed => Ok(Flow::Closed),
        },
        Engine::HandingOver => Err(handing_over()),
    }
}

fn process_rustls(
    conn: &mut UnbufferedServerConnection,
    outgoing: &mut Vec<u8>,
    data: &mut [u8],
    used: &mut usize,
    sink: &mut dyn FnMut(&[u8]),
    until_ready: bool,
) -> io::Result<Flow> {
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut data[*used..]);
        let flow = match state {
            Err(e) => {
                *used += discard;
                return Err(tls_error(e));
            }
            Ok(ConnectionState::ReadTraffic(mut read)) => {
                let mut extra = 0;
                let mut failed = None;
                while let Some(record) = read.next_record() {
                    match record {
                        Ok(record) => {
                            extra += record.discard;
                            sink(record.payload);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                *used += extra;
                if let Some(e) = failed {
                    *used += discard;
                    return Err(tls_error(e));
                }
                None
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                let start = outgoing.len();
                let mut want = 1024;
                loop {
                    outgoing.resize(start + want, 0);
                    match enc.encode(&mut outgoing[start..]) {
                        Ok(n) => {
                            outgoing.truncate(start + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(s)) => want = s.required_size,
                        Err(EncodeError::AlreadyEncoded) => {
                            outgoing.truncate(start);
                            break;
                        }
                    }
                }
                None
            }
            // What was encoded is in `outgoing`, which is written before anything else.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                None
            }
            Ok(ConnectionState::BlockedHandshake) => Some(Flow::NeedData),
            Ok(ConnectionState::WriteTraffic(_)) => Some(Flow::NeedData),
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Flow::Closed),
            // Early data is never enabled in the server config.
            Ok(ConnectionState::ReadEarlyData(_)) => {
                *used += discard;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS early data",
                ));
            }
            Ok(_) => {
                *used += discard;
                return Err(io::Error::other("unexpected TLS connection state"));
            }
        };
        *used += discard;
        if let Some(flow) = flow {
            return Ok(flow);
        }
        if until_ready && !conn.is_handshaking() && outgoing.is_empty() {
            return Ok(Flow::NeedData);
        }
    }
}

/// One read from the socket into `buf`: `Ok(0)` at the end of the stream. Through tokio's
/// `AsyncRead` rather than `poll_read_ready` + `try_read`: a read that fills only part of
/// the buffer shows the socket drained (epoll is edge-triggered), and tokio then clears the
/// readiness itself, so the next poll waits for the next edge instead of spending a
/// `recvfrom` on `EWOULDBLOCK`: one system call fewer per stanza that arrives on its own.
/// Reads what the socket has into `rb`. The buffer behind `rb` need not be initialized:
/// tokio reads straight into it, so a read costs no zeroing of the whole buffer (16.5 KiB
/// under TLS: about 1 % of the server's time at 40,000 msg/s).
fn read_some(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    rb: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    Pin::new(tcp).poll_read(cx, rb)
}

/// Hands `bytes` to `sink` up to `DELIVER_MAX` in all (`delivered` so far); the rest is
/// stashed for the next reads.
fn deliver(bytes: &[u8], delivered: &mut usize, sink: &mut dyn FnMut(&[u8]), stash: &mut Vec<u8>) {
    let n = bytes.len().min(DELIVER_MAX.saturating_sub(*delivered));
    if n > 0 {
        sink(&bytes[..n]);
        *delivered += n;
    }
    stash.extend_from_slice(&bytes[n..]);
}

impl TlsStream {
    /// Performs the server side of a TLS handshake on `tcp`.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = TlsStream {
            tcp,
            engine: Engine::Rustls(Box::new(conn)),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            stash: Vec::new(),
            read_closed: false,
            sent_close: false,
            client_pin: None,
        };
        loop {
            let mut used = 0;
            let stash = &mut s.stash;
            let result = process(
                &mut s.engine,
                &mut s.outgoing,
                &mut s.incoming,
                &mut used,
                &mut |b| stash.extend_from_slice(b),
                true,
            );
            s.incoming.drain(..used);
            if let Err(e) = result {
                // Best effort: the alert rustls queued tells the client why.
                let _ = s.send_queued_alert().await;
                return Err(e);
            }
            if !s.outgoing.is_empty() {
                s.tcp.write_all(&s.outgoing).await?;
                s.outgoing = Vec::new();
                continue;
            }
            if !s.is_handshaking() {
                break;
            }
            let mut buf = [0u8; 4096];
            s.tcp.readable().await?;
            match s.tcp.try_read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during the TLS handshake",
                    ));
                }
                Ok(n) => s.incoming.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if s.incoming.is_empty() {
            s.incoming = Vec::new();
        }
        if let Engine::Rustls(conn) = &s.engine {
            s.client_pin = conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(crate::tls::spki_pin)
                .map(Box::new);
        }
        s.engine = match std::mem::replace(&mut s.engine, Engine::HandingOver) {
            Engine::Rustls(conn) => hand_over(conn)?,
            other => other,
        };
        Ok(s)
    }

    fn is_handshaking(&self) -> bool {
        match &self.engine {
            Engine::Rustls(conn) => conn.is_handshaking(),
            _ => false,
        }
    }

    /// Lets rustls encode into `outgoing` whatever it still has to send, with no new input
    /// (an alert after an error, a handshake record before close_notify). Errors are left to
    /// the caller's next step: this only collects bytes.
    fn encode_pending(&mut self) {
        let mut used = 0;
        let _ = process(
            &mut self.engine,
            &mut self.outgoing,
            &mut [],
            &mut used,
            &mut |_| {},
            false,
        );
    }

    /// Encodes whatever rustls still has to send (an alert after an error) and writes it.
    async fn send_queued_alert(&mut self) -> io::Result<()> {
        self.encode_pending();
        if !self.outgoing.is_empty() {
            let out = std::mem::take(&mut self.outgoing);
            tokio::time::timeout(std::time::Duration::from_secs(1), self.tcp.write_all(&out))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        }
        Ok(())
    }

    /// Writes what is queued in `outgoing` without waiting; the rest stays queued.
    fn try_send_outgoing(&mut self) -> io::Result<()> {
        while !self.outgoing.is_empty() {
            match self.tcp.try_write(&self.outgoing) {
                Ok(n) => {
                    self.outgoing.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        Ok(())
    }

    fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<usize>> {
        if !self.stash.is_empty() {
            let n = self.stash.len().min(DELIVER_MAX);
            sink(&self.stash[..n]);
            if n == self.stash.len() {
                self.stash = Vec::new();
            } else {
                self.stash.drain(..n);
            }
            return Poll::Ready(Ok(n));
        }
        let mut delivered = 0;
        if !self.incoming.is_empty() {
            // Records that arrived with the end of the handshake, or a partial one.
            let r = self.process_incoming(&mut delivered, sink);
            if self.after_read(r)? == Flow::Closed {
                self.read_closed = true;
            }
            if delivered > 0 {
                let _ = self.try_send_outgoing();
                return Poll::Ready(Ok(delivered));
            }
        }
        loop {
            if self.read_closed {
                return Poll::Ready(Ok(0));
            }
            // A KeyUpdate answer or other record rustls produced while reading.
            self.try_send_outgoing()?;
            let mut raw = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut raw);
            ready!(read_some(&mut self.tcp, cx, &mut rb))?;
            let buf = rb.filled_mut();
            let n = buf.len();
            if n == 0 {
                // TCP closed without close_notify: the end of the stream all the same.
                self.read_closed = true;
                return Poll::Ready(Ok(0));
            }
            let mut used = 0;
            let r = if self.incoming.is_empty() {
                let r = process(
                    &mut self.engine,
                    &mut self.outgoing,
                    &mut buf[..n],
                    &mut used,
                    &mut |b| deliver(b, &mut delivered, sink, &mut self.stash),
                    false,
                );
                if used < n {
                    self.incoming.extend_from_slice(&buf[used..n]);
                }
                r
            } else {
                self.incoming.extend_from_slice(&buf[..n]);
                self.process_incoming(&mut delivered, sink)
            };
            if self.after_read(r)? == Flow::Closed {
                self.read_closed = true;
            }
            if delivered > 0 {
                let _ = self.try_send_outgoing();
                return Poll::Ready(Ok(delivered));
            }
        }
    }

    /// On a failed read, sends what tells the peer why (the alert rustls or the record
    /// layer queued) without waiting, before the error goes up.
    fn after_read(&mut self, r: io::Result<Flow>) -> io::Result<Flow> {
        if r.is_err() {
            if let Engine::Rustls(_) = self.engine {
                self.encode_pending();
            }
            let _ = self.try_send_outgoing();
        }
        r
    }

    /// Processes the records buffered in `incoming`, handing plaintext to `sink` (at most
    /// `DELIVER_MAX` in all, the rest stashed); keeps only the incomplete rest of a record,
    /// and frees the buffer when nothing is left.
    fn process_incoming(
        &mut self,
        delivered: &mut usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Flow> {
        let TlsStream {
            engine,
            outgoing,
            incoming,
            stash,
            ..
        } = self;
        let mut used = 0;
        let r = process(
            engine,
            outgoing,
            incoming,
            &mut used,
            &mut |b| deliver(b, delivered, sink, stash),
            false,
        );
        incoming.drain(..used);
        if incoming.is_empty() {
            *incoming = Vec::new();
        }
        r
    }

    /// Encrypts `data` into `outgoing`.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        let conn = match &mut self.engine {
            Engine::Rustls(conn) => conn,
            Engine::Tls13(records) => return records.seal(data, &mut self.outgoing),
            Engine::HandingOver => return Err(handing_over()),
        };
        let stash = &mut self.stash;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut self.incoming);
            let done = match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => {
                    let start = self.outgoing.len();
                    let mut want = data.len() + 64;
                    loop {
                        self.outgoing.resize(start + want, 0);
                        match w.encrypt(data, &mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(s)) => want = s.required_size,
                            Err(e) => {
                                self.outgoing.truncate(start);
                                return Err(io::Error::other(e));
                            }
                        }
                    }
                    true
                }
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        stash.extend_from_slice(record.map_err(tls_error)?.payload);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    let start = self.outgoing.len();
                    let mut want = 1024;
                    loop {
                        self.outgoing.resize(start + want, 0);
                        match enc.encode(&mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(s)) => want = s.required_size,
                            Err(EncodeError::AlreadyEncoded) => {
                                self.outgoing.truncate(start);
                                break;
                            }
                        }
                    }
                    false
                }
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    false
                }
                ConnectionState::PeerClosed => false,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS session is closed",
                    ));
                }
            };
            self.incoming.drain(..discard);
            if done {
                return Ok(());
            }
        }
    }

    async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        loop {
            if !self.outgoing.is_empty() {
                self.tcp.write_all(&self.outgoing).await?;
                self.outgoing = Vec::new();
            }
            if data.is_empty() {
                return Ok(());
            }
            let (now, rest) = data.split_at(data.len().min(WRITE_CHUNK));
            self.encrypt(now)?;
            data = rest;
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if !self.sent_close {
            self.sent_close = true;
            self.encode_pending();
            let conn = match &mut self.engine {
                Engine::Rustls(conn) => conn,
                Engine::Tls13(records) => {
                    records.close_notify(&mut self.outgoing);
                    return self.finish_shutdown().await;
                }
                Engine::HandingOver => return Err(handing_over()),
            };
            if let Ok(ConnectionState::WriteTraffic(mut w)) =
                conn.process_tls_records(&mut []).state
            {
                let start = self.outgoing.len();
                self.outgoing.resize(start + 64, 0);
                match w.queue_close_notify(&mut self.outgoing[start..]) {
                    Ok(n) => self.outgoing.truncate(start + n),
                    Err(_) => self.outgoing.truncate(start),
                }
            }
        }
        self.finish_shutdown().await
    }

    async fn finish_shutdown(&mut self) -> io::Result<()> {
        self.write_all(&[]).await?;
        self.tcp.shutdown().await
    }
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The pin of the certificate the client presented in the TLS handshake, if any.
    pub fn client_pin(&self) -> Option<&[u8; 32]> {
        match self {
            Transport::Tls(s) => s.client_pin.as_deref(),
            _ => None,
        }
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Transport::Tls(s) => match &s.engine {
                Engine::Rustls(conn) => conn.protocol_version(),
                Engine::Tls13(_) => Some(rustls::ProtocolVersion::TLSv1_3),
                Engine::HandingOver => None,
            },
            _ => None,
        }
    }

    /// Performs the STARTTLS upgrade in place.
    pub async fn upgrade(&mut self, config: Arc<ServerConfig>) -> io::Result<()> {
        match std::mem::replace(self, Transport::Upgrading) {
            Transport::Plain(tcp) => {
                let tls = TlsStream::accept(tcp, config).await?;
                *self = Transport::Tls(Box::new(tls));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other(
                    "STARTTLS on a stream that is not plain TCP",
                ))
            }
        }
    }

    /// Reads what the peer sent and hands it to `sink`, through a buffer that lives only
    /// during this call. `Ok(n)`: `n` bytes were handed over, 0 at the end of the stream.
    /// Cancel-safe: nothing read is held back between polls.
    pub fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(tcp) => {
                let mut raw = [MaybeUninit::<u8>::uninit(); DELIVER_MAX];
                let mut rb = ReadBuf::uninit(&mut raw);
                ready!(read_some(tcp, cx, &mut rb))?;
                sink(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            }
            Transport::Tls(s) => s.poll_read_with(cx, sink),
            Transport::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    /// Writes all of `data` (encrypted under TLS).
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.write_all(data).await,
            Transport::Tls(s) => s.write_all(data).await,
            Transport::Upgrading => Err(upgrading()),
        }
    }

    /// Closes the stream: close_notify under TLS, then the TCP write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
            Transport::Upgrading => Err(upgrading()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The TLS transport against rustls's client (a TLS implementation we did not write):
    //! key updates both ways, our own key update at the confidentiality limit, a forged
    //! record, a plaintext record after the handshake, close_notify both ways, TLS 1.2.
    use super::*;
    use rustls::version::{TLS12, TLS13};
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcp;
    use std::time::Duration;

    struct Setup {
        _dir: tempfile::TempDir,
        server: Arc<ServerConfig>,
        roots: rustls::RootCertStore,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config {
            domains: vec!["example.test".into()],
            data_dir: dir.path().to_owned(),
            ..crate::Config::default()
        };
        let tls = crate::tls::load(&config).unwrap();
        let ca = std::fs::read(dir.path().join("tls").join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        Setup {
            _dir: dir,
            server: tls.starttls,
            roots,
        }
    }

    /// A blocking rustls client; its steps run on the blocking pool.
    struct Client {
        conn: rustls::ClientConnection,
        tcp: StdTcp,
    }

    impl Client {
        /// Sends `data` and whatever the session queued (a KeyUpdate).
        fn send(&mut self, data: &[u8]) {
            self.conn.writer().write_all(data).unwrap();
            self.flush();
        }

        fn flush(&mut self) {
            while self.conn.wants_write() {
                self.conn.write_tls(&mut self.tcp).unwrap();
            }
        }

        /// Reads until `want` bytes of plaintext came, or the session ends or fails.
        fn read(&mut self, want: usize) -> Result<Vec<u8>, String> {
            let mut got = Vec::new();
            while got.len() < want {
                let mut buf = [0u8; 4096];
                match self.conn.reader().read(&mut buf) {
                    Ok(0) => return Err(format!("end of stream after {} bytes", got.len())),
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
                match self.conn.read_tls(&mut self.tcp) {
                    Ok(0) => return Err(format!("TCP closed after {} bytes", got.len())),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read_tls: {e}")),
                }
                self.conn
                    .process_new_packets()
                    .map_err(|e| format!("process: {e}"))?;
                self.flush();
            }
            Ok(got)
        }
    }

    /// Runs a blocking step of the client.
    async fn on<R: Send + 'static>(
        mut c: Client,
        f: impl FnOnce(&mut Client) -> R + Send + 'static,
    ) -> (Client, R) {
        tokio::task::spawn_blocking(move || {
            let r = f(&mut c);
            (c, r)
        })
        .await
        .unwrap()
    }

    async fn connect(
        s: &Setup,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Client, TlsStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(s.roots.clone())
            .with_no_client_auth(),
        );
        let client = tokio::task::spawn_blocking(move || {
            let mut tcp = StdTcp::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut conn =
                rustls::ClientConnection::new(config, "example.test".try_into().unwrap()).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp).unwrap();
            }
            Client { conn, tcp }
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = TlsStream::accept(tcp, s.server.clone()).await.unwrap();
        (client.await.unwrap(), server)
    }

    async fn read_some(s: &mut TlsStream) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let read =
            std::future::poll_fn(|cx| s.poll_read_with(cx, &mut |b| got.extend_from_slice(b)));
        let n = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("server read timed out")?;
        assert_eq!(n, got.len());
        Ok(got)
    }

    async fn read_exactly(s: &mut TlsStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            let more = read_some(s).await.unwrap();
            assert!(!more.is_empty(), "end of stream after {} bytes", got.len());
            got.extend(more);
        }
        got
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn tls13_session_moves_to_our_record_layer_and_updates_keys_both_ways() {
        let s = setup();
        let (mut client, mut server) = connect(&s, &[&TLS13]).await;
        assert!(
            matches!(server.engine, Engine::Tls13(_)),
            "the TLS 1.3 session was not handed over"
        );
        for round in 0..3u8 {
            // The client updates its key and asks for ours to be updated (rustls sends
            // update_requested); its data follows under the new key.
            let up = pattern(1000 + round as usize, round);
            let sent = up.clone();
            (client, _) = on(client, move |c| {
                c.conn.refresh_traffic_keys().unwrap();
                c.send(&sent)
            })
            .await;
            assert_eq!(
                read_exactly(&mut server, up.len()).await,
                up,
                "round {round}"
            );
            // Our KeyUpdate goes first, then three records under the new key.
            let down = pattern(40_000, round.wrapping_add(7));
            server.write_all(&down).await.unwrap();
            let got;
            (client, got) = on(client, move |c| c.read(40_000)).await;
            assert_eq!(got.unwrap(), down, "round {round}: what the client read");
            // Under a new key: the KeyUpdate went under the old one, then three records.
            let Engine::Tls13(records) = &server.engine else {
                unreachable!()
            };
            assert_eq!(
                records.tx_seq(),
                3,
                "round {round}: our key was not updated"
            );
        }

        // Our own key update before the confidentiality limit: with the limit lowered to
        // 3 records, a write of 13 records crosses it four times and the client follows.
        let Engine::Tls13(records) = &mut server.engine else {
            unreachable!()
        };
        records.set_tx_limit(3);
        let down = pattern(200_000, 99);
        server.write_all(&down).await.unwrap();
        let got;
        (client, got) = on(client, |c| c.read(200_000)).await;
        assert_eq!(got.unwrap(), down);
        let Engine::Tls13(records) = &server.engine else {
            unreachable!()
        };
        // 13 records: a new key before the 1st, 4th, 7th, 10th and 13th.
        assert_eq!(records.tx_seq(), 1);

        // And the client's data still arrives under its key.
        (client, _) = on(client, |c| c.send(b"still here")).await;
        assert_eq!(read_exactly(&mut server, 10).await, b"still here");

        // close_notify from the client ends the server's stream cleanly.
        (_, _) = on(client, |c| {
            c.conn.send_close_notify();
            c.flush()
        })
        .await;
        assert_eq!(read_some(&mut server).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn server_close_notify_ends_the_clients_stream() {
        let s = setup();
        let (client, mut server) = connect(&s, &[&TLS13]).await;
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let (_, r) = on(client, |c| {
            let got = c.read(3).unwrap();
            let mut buf = [0u8; 16];
            // After close_notify the reader reports a clean end of stream.
            loop {
                match c.conn.reader().read(&mut buf) {
                    Ok(n) => return (got, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.conn.read_tls(&mut c.tcp).unwrap();
                        c.conn.process_new_packets().unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        assert_eq!(r, (b"bye".to_vec(), 0));
    }

    #[tokio::test]
    async fn a_forged_record_is_refused_with_bad_record_mac() {
        let s = setup();
        let (client, mut server) = connect(&s, &[&TLS13]).await;
        let (client, _) = on(client, |c| {
            c.conn.writer().write_all(b"<message/>").unwrap();
            let mut wire = Vec::new();
            while c.conn.wants_write() {
                c.conn.write_tls(&mut wire).unwrap();
            }
            // One bit of the ciphertext flipped on the way.
            let last = wire.len() - 1;
            wire[last - 20] ^= 1;
            c.tcp.write_all(&wire).unwrap();
        })
        .await;
        let err = read_some(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("authenticate"), "{err}");
        // The client learns why: a bad_record_mac alert.
        let (_, got) = on(client, |c| c.read(1)).await;
        let got = got.unwrap_err();
        assert!(got.contains("BadRecordMac"), "{got}");
        // Nothing more is opened or sealed on a failed session.
        assert!(server.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_plaintext_record_after_the_handshake_is_refused() {
        let s = setup();
        let (client, mut server) = connect(&s, &[&TLS13]).await;
        // An unprotected alert record (type 21), as if injected on the path.
        let (client, _) = on(client, |c| {
            c.tcp.write_all(&[21, 3, 3, 0, 2, 2, 40]).unwrap()
        })
        .await;
        let err = read_some(&mut server).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("unprotected TLS record of type 21"),
            "{err}"
        );
        let (_, got) = on(client, |c| c.read(1)).await;
        assert!(got.unwrap_err().contains("UnexpectedMessage"));
    }

    #[tokio::test]
    async fn tls12_sessions_stay_with_rustls() {
        let s = setup();
        let (client, mut server) = connect(&s, &[&TLS12]).await;
        assert!(matches!(server.engine, Engine::Rustls(_)));
        let (client, _) = on(client, |c| c.send(b"over tls 1.2")).await;
        assert_eq!(read_exactly(&mut server, 12).await, b"over tls 1.2");
        let down = pattern(50_000, 3);
        server.write_all(&down).await.unwrap();
        let (_, got) = on(client, |c| c.read(50_000)).await;
        assert_eq!(got.unwrap(), down);
    }
}
