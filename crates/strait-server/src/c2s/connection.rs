//! One task per client connection: reads bytes (shaped), feeds the parser, drives the
//! negotiation state machine, then hands stanzas to the session; writes what the session and
//! the router queue for it. Closes on timeouts, shutdown and stream errors.

use super::auth::SaslExchange;
use super::session::Session;
use crate::net::{TokenBucket, Transport};
use crate::router::{ConnHandle, Outbound};
use crate::server::ServerState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_wire::negotiation::{Action, C2sConfig, C2sNegotiation};
use strait_wire::{Limits, Stanza, StreamError, StreamErrorCondition, StreamParser, ns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Read buffer per connection: small, since most stanzas are small and idle connections
/// should hold little memory.
const READ_CHUNK: usize = 4096;
/// How long a write to the client may block before the client is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve_connection(
    state: Arc<ServerState>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
) {
    let conn_id = state.next_conn_id();
    let span = tracing::debug_span!("c2s", conn = conn_id, %peer);
    let _enter = span.enter();
    drop(_enter);
    let transport = if direct_tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(state.tls.direct.clone());
        let timeout = Duration::from_secs(state.config.limits.unauthenticated_timeout_secs);
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(conn = conn_id, %peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(conn = conn_id, %peer, "TLS handshake timed out");
                return;
            }
        }
    } else {
        Transport::Plain(tcp)
    };
    let mut conn = Connection::new(state, transport, peer, conn_id, direct_tls);
    let result = conn.run().await;
    if let Err(e) = &result {
        tracing::debug!(conn = conn_id, %peer, "connection ended: {e}");
    }
    conn.finish().await;
}

pub(super) struct Connection {
    pub(super) state: Arc<ServerState>,
    transport: Transport,
    pub(super) peer: SocketAddr,
    pub(super) conn_id: u64,
    parser: StreamParser,
    negotiation: C2sNegotiation,
    bucket: TokenBucket,
    out: Vec<u8>,
    /// Set once the stream is to be closed after `out` is flushed.
    closing: bool,
    pub(super) sasl: Option<SaslExchange>,
    session: Option<Session>,
    handle: ConnHandle,
    rx: mpsc::Receiver<Outbound>,
    auth_deadline: Instant,
    last_read: Instant,
    resume_reading_at: Option<Instant>,
}

fn stream_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn c2s_config(state: &ServerState) -> C2sConfig {
    let mut secure = vec!["SCRAM-SHA-256".to_string()];
    if state.config.auth.allow_scram_sha1 {
        secure.push("SCRAM-SHA-1".into());
    }
    if state.config.auth.allow_plain {
        secure.push("PLAIN".into());
    }
    C2sConfig {
        domains: state.config.domains.clone(),
        tls_available: true,
        require_tls: true,
        mechanisms_secure: secure,
        mechanisms_insecure: Vec::new(),
        extra_features: vec![
            "<ver xmlns='urn:xmpp:features:rosterver'/>".into(),
            crate::features::csi::FEATURE.into(),
        ],
        max_sasl_attempts: 3,
    }
}

fn limits(state: &ServerState, authenticated: bool) -> Limits {
    let l = &state.config.limits;
    Limits {
        max_stanza_bytes: if authenticated {
            l.max_stanza_bytes
        } else {
            l.max_stanza_bytes_unauthenticated
        },
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
    }
}

impl Connection {
    fn new(
        state: Arc<ServerState>,
        transport: Transport,
        peer: SocketAddr,
        conn_id: u64,
        secure: bool,
    ) -> Self {
        let now = Instant::now();
        let l = &state.config.limits;
        let (handle, rx) = ConnHandle::new();
        Connection {
            parser: StreamParser::new(limits(&state, false)),
            negotiation: C2sNegotiation::new(c2s_config(&state), secure, stream_id()),
            bucket: TokenBucket::new(l.rate_bytes_per_sec, l.burst_bytes, now.into_std()),
            auth_deadline: now + Duration::from_secs(l.unauthenticated_timeout_secs),
            last_read: now,
            state,
            transport,
            peer,
            conn_id,
            out: Vec::new(),
            closing: false,
            sasl: None,
            session: None,
            handle,
            rx,
            resume_reading_at: None,
        }
    }

    pub(super) fn negotiation_domain(&self) -> Option<String> {
        self.negotiation.domain().map(str::to_owned)
    }

    fn deadline(&self) -> Instant {
        match &self.session {
            None => self.auth_deadline,
            Some(_) => {
                self.last_read + Duration::from_secs(self.state.config.limits.idle_timeout_secs)
            }
        }
    }

    /// Queues a stream error and the closing tag; the stream closes once they are written.
    fn close_with(&mut self, error: StreamError) {
        if self.closing {
            return;
        }
        tracing::debug!(
            conn = self.conn_id,
            "closing stream: {:?} {:?}",
            error.condition,
            error.text
        );
        self.out.extend_from_slice(error.to_xml().as_bytes());
        self.out.extend_from_slice(b"</stream:stream>");
        self.closing = true;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.transport.write_all(&self.out).await?;
            self.transport.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                ));
            }
        }
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(READ_CHUNK);
        }
        if let Some(s) = &mut self.session {
            s.flushed().await;
        }
        Ok(())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let mut shutdown = self.state.shutdown.clone();
        let kill = self.handle.kill.clone();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            self.flush().await?;
            if self.closing {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), self.transport.shutdown()).await;
                return Ok(());
            }
            let deadline = self.deadline();
            let reading = self.resume_reading_at.is_none();
            let resume = self.resume_reading_at.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.close_with(StreamError::new(StreamErrorCondition::SystemShutdown));
                }
                _ = kill.notified() => {
                    self.close_with(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "the client does not read its stanzas fast enough",
                    ));
                }
                msg = self.rx.recv() => match msg {
                    Some(Outbound::Stanza(s)) => self.outbound(*s),
                    Some(Outbound::Close(e)) => self.close_with(e),
                    None => {}
                },
                _ = tokio::time::sleep_until(resume), if !reading => {
                    self.resume_reading_at = None;
                }
                r = self.transport.read(&mut buf), if reading => {
                    let n = r?;
                    if n == 0 {
                        tracing::debug!(conn = self.conn_id, "peer closed the connection");
                        return Ok(());
                    }
                    let now = Instant::now();
                    self.last_read = now;
                    let wait = self.bucket.consume(n, now.into_std());
                    if !wait.is_zero() {
                        self.resume_reading_at = Some(now + wait);
                    }
                    self.parser.feed(&buf[..n]);
                    self.process_events().await?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let text = if self.session.is_none() {
                        "authentication took too long"
                    } else {
                        "idle for too long"
                    };
                    self.close_with(StreamError::with_text(StreamErrorCondition::ConnectionTimeout, text));
                }
            }
        }
    }

    /// Parses every complete event in the buffer and acts on it.
    async fn process_events(&mut self) -> std::io::Result<()> {
        while !self.closing {
            let event = match self.parser.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.close_with(e);
                    return Ok(());
                }
            };
            let actions = self.negotiation.handle(event);
            if self.execute(actions).await? {
                // The stream was reset (STARTTLS or SASL success): whatever else was buffered
                // belonged to the old stream and has been discarded with the parser.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Carries out the negotiation's actions; true when the parser was reset.
    async fn execute(&mut self, actions: Vec<Action>) -> std::io::Result<bool> {
        let mut reset = false;
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(s) => self.out.extend_from_slice(s.as_bytes()),
                Action::StartTls => {
                    self.flush().await?;
                    let acceptor = tokio_rustls::TlsAcceptor::from(self.state.tls.starttls.clone());
                    let left = self.auth_deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.transport.upgrade(&acceptor)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            ));
                        }
                    }
                    tracing::debug!(conn = self.conn_id, version = ?self.transport.tls_version(), "STARTTLS done");
                    self.parser.reset();
                    self.negotiation.tls_established();
                    self.negotiation.new_stream_id(stream_id());
                    reset = true;
                }
                Action::SaslStart {
                    mechanism,
                    initial_response,
                } => {
                    let steps = self.sasl_start(&mechanism, initial_response).await;
                    queue.extend(self.negotiation.sasl_step(steps));
                }
                Action::SaslResponse(data) => {
                    let step = self.sasl_response(&data).await;
                    queue.extend(self.negotiation.sasl_step(step));
                }
                Action::SaslAbort => self.sasl = None,
                Action::RestartStream => {
                    self.parser.reset();
                    self.parser.set_limits(limits(&self.state, true));
                    self.negotiation.new_stream_id(stream_id());
                    reset = true;
                }
                Action::Bind {
                    requested_resource,
                    iq_id: _,
                } => {
                    let result = self.bind(requested_resource).await;
                    queue.extend(self.negotiation.bind_result(result));
                }
                Action::Stanza(stanza) => self.on_stanza(stanza).await,
                Action::PeerClosed => {
                    self.out.extend_from_slice(b"</stream:stream>");
                    self.closing = true;
                }
                Action::Close(e) => self.close_with(e),
            }
        }
        Ok(reset)
    }

    async fn bind(
        &mut self,
        requested: Option<String>,
    ) -> Result<String, strait_wire::StanzaError> {
        use strait_wire::{StanzaError, StanzaErrorCondition};
        let Some(bare) = self.negotiation.authenticated_jid().map(str::to_owned) else {
            return Err(StanzaError::new(StanzaErrorCondition::NotAuthorized));
        };
        let resource = match requested
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            Some(r) => match jid::FullJid::new(&format!("{bare}/{r}")) {
                Ok(full) => full.resource().as_str().to_owned(),
                Err(_) => {
                    return Err(StanzaError::with_text(
                        StanzaErrorCondition::BadRequest,
                        "the resource is not a valid resourcepart",
                    ));
                }
            },
            None => format!("strait-{}", &stream_id()[..12]),
        };
        let max = self.state.config.limits.max_resources_per_account;
        match self
            .state
            .router
            .bind(&bare, &resource, self.conn_id, self.handle.clone(), max)
        {
            Ok(full) => {
                tracing::info!(conn = self.conn_id, peer = %self.peer, %full, "session bound");
                self.session = Some(Session::new(
                    self.state.clone(),
                    &bare,
                    &resource,
                    self.conn_id,
                ));
                Ok(full)
            }
            Err(e) => {
                let mut err =
                    StanzaError::with_text(StanzaErrorCondition::ResourceConstraint, e.to_string());
                err.error_type = strait_wire::ErrorType::Wait;
                Err(err)
            }
        }
    }

    /// A stanza the router queued for this client: written now, or held while the client is
    /// inactive (XEP-0352).
    fn outbound(&mut self, stanza: Stanza) {
        let now = match self.session.as_mut() {
            Some(session) => session.csi.offer(stanza),
            None => vec![stanza],
        };
        for s in now {
            s.write_xml(&mut self.out, ns::CLIENT);
        }
    }

    async fn on_stanza(&mut self, stanza: Stanza) {
        let Some(session) = self.session.as_mut() else {
            self.close_with(StreamError::new(StreamErrorCondition::NotAuthorized));
            return;
        };
        let result = session.handle(stanza).await;
        for s in session.take_replies() {
            s.write_xml(&mut self.out, ns::CLIENT);
        }
        if let Err(e) = result {
            self.close_with(e);
        }
    }

    /// Ends the session: unbinds the resource and tells contacts it went away.
    async fn finish(&mut self) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        s.end().await;
        // Messages routed to this resource that it never wrote (they raced with its end) go
        // to the account's other resources or to offline storage, rather than being lost.
        // Stanzas already written to the socket but never read need stream management.
        self.rx.close();
        while let Ok(out) = self.rx.try_recv() {
            let Outbound::Stanza(stanza) = out else {
                continue;
            };
            let ty = stanza.type_.as_deref().unwrap_or("normal");
            if stanza.name != "message" || !matches!(ty, "chat" | "normal") {
                continue;
            }
            if crate::features::delivery::message_to_bare(&self.state, &s.bare, &stanza) == 0
                && let Err(e) = crate::features::offline::store(&self.state, &s.bare, &stanza).await
            {
                tracing::warn!(account = %s.bare, "a message for a closed session could not be stored: {e:?}");
            }
        }
    }
}
