//! The connection's byte stream: plain TCP until STARTTLS, then TLS.
//!
//! TLS runs on rustls's unbuffered API rather than a buffered `ServerConnection`, so that an
//! idle connection holds no I/O buffers: reads go through a buffer on the stack of the poll
//! that makes them, decrypted records go straight to the caller, and the two buffers the
//! transport owns (an incomplete incoming record, encrypted bytes not yet written) are freed
//! as soon as they are empty. A buffered `ServerConnection` keeps a 4 KiB read buffer and
//! its own queues for the connection's whole life.

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWriteExt;
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

/// A TLS server connection over TCP on rustls's unbuffered API.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
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
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            stash: Vec::new(),
            read_closed: false,
            sent_close: false,
        };
        loop {
            let mut used = 0;
            let stash = &mut s.stash;
            let result = process(
                &mut s.conn,
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
            if !s.conn.is_handshaking() {
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
        Ok(s)
    }

    /// Lets rustls encode into `outgoing` whatever it still has to send, with no new input
    /// (an alert after an error, a handshake record before close_notify). Errors are left to
    /// the caller's next step: this only collects bytes.
    fn encode_pending(&mut self) {
        let mut used = 0;
        let _ = process(
            &mut self.conn,
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
            if r? == Flow::Closed {
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
            ready!(self.tcp.poll_read_ready(cx))?;
            let mut buf = [0u8; READ_CHUNK];
            let n = match self.tcp.try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if n == 0 {
                // TCP closed without close_notify: the end of the stream all the same.
                self.read_closed = true;
                return Poll::Ready(Ok(0));
            }
            let mut used = 0;
            let r = if self.incoming.is_empty() {
                let r = process(
                    &mut self.conn,
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
            if r? == Flow::Closed {
                self.read_closed = true;
            }
            if delivered > 0 {
                let _ = self.try_send_outgoing();
                return Poll::Ready(Ok(delivered));
            }
        }
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
            conn,
            outgoing,
            incoming,
            stash,
            ..
        } = self;
        let mut used = 0;
        let r = process(
            conn,
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
        let stash = &mut self.stash;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
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
            if let Ok(ConnectionState::WriteTraffic(mut w)) =
                self.conn.process_tls_records(&mut []).state
            {
                let start = self.outgoing.len();
                self.outgoing.resize(start + 64, 0);
                match w.queue_close_notify(&mut self.outgoing[start..]) {
                    Ok(n) => self.outgoing.truncate(start + n),
                    Err(_) => self.outgoing.truncate(start),
                }
            }
        }
        self.write_all(&[]).await?;
        self.tcp.shutdown().await
    }
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Transport::Tls(s) => s.conn.protocol_version(),
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
            Transport::Plain(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                let mut buf = [0u8; DELIVER_MAX];
                match tcp.try_read(&mut buf) {
                    Ok(n) => {
                        sink(&buf[..n]);
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
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
