//! One task per client connection: reads bytes (shaped), feeds the parser, drives the
//! negotiation state machine, then hands stanzas to the session; writes what the session and
//! the router queue for it. Closes on timeouts, shutdown and stream errors.

use super::auth::SaslExchange;
use super::session::Session;
use crate::features::offline;
use crate::features::sm::{self, Detached, StreamState, Takeover};
use crate::net::transport::TlsStream;
use crate::net::{TokenBucket, Transport};
use crate::router::{ConnHandle, OUTBOUND_QUEUE, Outbound, OutboundReceiver, Received};
use crate::server::ServerState;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_wire::negotiation::{Action, C2sConfig, C2sNegotiation};
use strait_wire::{
    Limits, Stanza, StanzaKind, StreamError, StreamErrorCondition, StreamParser, ns,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What `out` may keep between writes; more is given back once written.
const OUT_KEEP: usize = 0;
/// How long a write to the client may block before the client is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// An XEP-0198 ack request.
const REQUEST: &str = "<r xmlns='urn:xmpp:sm:3'/>";

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
        let timeout = Duration::from_secs(state.config.limits.unauthenticated_timeout_secs);
        let accept = Box::pin(TlsStream::accept(tcp, state.tls.direct.clone()));
        match tokio::time::timeout(timeout, accept).await {
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
    let mut conn = Connection::new(state.clone(), transport, peer, conn_id, direct_tls);
    // This task's future is as large as its largest state; the idle one is `run` waiting in
    // its `select!`. What runs rarely or briefly (a handshake, processing input, writing,
    // hibernation, the end of a session) is boxed, so that it costs memory only while it runs.
    let result = conn.run().await;
    if let Err(e) = &result {
        tracing::debug!(conn = conn_id, %peer, "connection ended: {e}");
    }
    if !conn.settling.is_empty() {
        Box::pin(conn.settle_all()).await;
    }
    let taken_over = conn.taken_over.take();
    let resumable = conn.can_hibernate();
    let Some(detached) = conn.detach() else {
        return;
    };
    let detached = match taken_over {
        // XEP-0198: the client resumed this session on a new connection while this one was
        // still open; the new one carries on, this one closes.
        Some(t) => match t.reply.send(Box::new(detached)) {
            Ok(()) => {
                Box::pin(conn.close_replaced()).await;
                return;
            }
            Err(back) => *back,
        },
        None => detached,
    };
    drop(conn);
    let detached = if resumable {
        match Box::pin(hibernate(&state, detached)).await {
            Some(d) => d,
            None => return,
        }
    } else {
        detached
    };
    Box::pin(finish(&state, detached)).await;
}

/// Keeps a resumable session whose connection was lost (XEP-0198 §5) until the client
/// resumes it, the window closes, or the server stops. Stanzas for it queue up meanwhile.
/// `None` when a new connection took the session over; otherwise it must be finished.
async fn hibernate(state: &Arc<ServerState>, mut d: Detached) -> Option<Detached> {
    enum Ev {
        End,
        Takeover(Takeover),
        Queued(Outbound),
    }
    let deadline = Instant::now() + Duration::from_secs(d.sm.resume_secs);
    let mut shutdown = state.shutdown.clone();
    tracing::info!(full = %d.session.full, secs = d.sm.resume_secs, "connection lost; session kept for resumption");
    // The device did not confirm a message it was sent, or gets one while away: wake it
    // through its push service (XEP-0357), once for what was unconfirmed and then per message.
    let wakes = |stanza: &Stanza| {
        stanza.name == "message" && crate::features::offline::should_store(stanza)
    };
    let bare = d.session.bare.clone();
    let wake = || {
        let (state, bare) = (state.clone(), bare.clone());
        tokio::spawn(async move { crate::features::push::notify(&state, &bare).await });
    };
    if d.sm.unacked.iter().any(|u| wakes(&u.stanza)) {
        wake();
    }
    loop {
        if *shutdown.borrow() {
            return Some(d);
        }
        let room = d.pending.len() < OUTBOUND_QUEUE;
        let ev = tokio::select! {
            _ = shutdown.changed() => Ev::End,
            _ = tokio::time::sleep_until(deadline) => Ev::End,
            t = recv_takeover(&mut d.takeover) => match t {
                Some(t) => Ev::Takeover(t),
                None => Ev::End,
            },
            // Also ends on a kill; while `pending` is full, waits for nothing else.
            m = d.rx.recv(room) => match m {
                Some(Outbound::Close(_)) | None => Ev::End,
                Some(o) => Ev::Queued(o),
            },
        };
        match ev {
            Ev::End => return Some(d),
            Ev::Queued(o) => {
                if let Outbound::Stanza(st) | Outbound::Durable(st, _) = &o
                    && wakes(st)
                {
                    wake();
                }
                d.pending.push_back(o)
            }
            Ev::Takeover(t) => match t.reply.send(Box::new(d)) {
                Ok(()) => return None,
                Err(back) => d = *back,
            },
        }
    }
}

/// Reads what the client sent into the parser; the byte count, 0 at the end of the stream.
async fn read_into(transport: &mut Transport, parser: &mut StreamParser) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| transport.poll_read_with(cx, &mut |bytes| parser.feed(bytes))).await
}

/// Waits for the oldest commit a handled stanza waits for.
async fn settle_first(settling: &mut VecDeque<(u32, crate::features::delivery::Settling)>) {
    if let Some((_, s)) = settling.front_mut() {
        s.as_mut().await;
    }
}

async fn recv_takeover(rx: &mut Option<mpsc::Receiver<Takeover>>) -> Option<Takeover> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Ends a session: unbinds the resource, tells contacts it went away, and sends on what the
/// client never acknowledged or never got. Messages go to the account's other resources or to
/// offline storage rather than being lost; a message already stored for the account
/// (stored before delivery) stays stored unless another resource takes it over.
async fn finish(state: &Arc<ServerState>, d: Detached) {
    let Detached {
        mut session,
        mut rx,
        sm,
        pending,
        ..
    } = d;
    if let Some(id) = &sm.resume_id {
        state.sm.remove(id);
    }
    session.end().await;
    rx.close();
    let mut undelivered: Vec<(Stanza, Option<i64>)> = sm
        .unacked
        .into_iter()
        .map(|u| (u.stanza, u.durable))
        .collect();
    let queued = pending
        .into_iter()
        .chain(std::iter::from_fn(|| rx.try_recv()));
    for out in queued {
        match out {
            Outbound::Stanza(s) => undelivered.push((*s, None)),
            Outbound::Durable(s, id) => undelivered.push((*s, Some(id))),
            Outbound::Close(_) => {}
        }
    }
    // What was queued for the store before now is committed first: the deletes of copies a
    // device acknowledged, and the rows of copies held for a client, which are delivered while
    // they are being written. A row may then be missing because the store failed to write it,
    // not because a device had it: such a message is handed on as never stored.
    if undelivered.iter().any(|(_, d)| d.is_some()) {
        state.store_barrier().await;
        for (_, durable) in &mut undelivered {
            if durable.is_some_and(|id| state.failed_holds.contains(id)) {
                *durable = None;
            }
        }
    }
    // A stored message the account's client acknowledged meanwhile (another device had a
    // copy too) is not handed on: the account has it, and the devices that got it would see
    // it twice. What is still stored goes on to the other devices, which skip it if they have
    // it ([`Connection::has_stored`]).
    let held: Vec<i64> = undelivered.iter().filter_map(|(_, d)| *d).collect();
    let mut kept = if held.is_empty() {
        Vec::new()
    } else {
        // After the barrier above.
        let owner = session.bare.clone();
        let ask = held.clone();
        match state.store(move |st| st.offline_kept(&owner, &ask)).await {
            Ok(kept) => kept,
            Err(e) => {
                // Handing them all on is the safe side: a copy twice, not a copy lost.
                tracing::warn!(account = %session.bare, "checking stored messages of an ended session: {e}");
                held
            }
        }
    };
    kept.sort_unstable();
    for (stanza, durable) in undelivered {
        if durable.is_some_and(|id| kept.binary_search(&id).is_err()) {
            continue;
        }
        if stanza.name == "iq" {
            answer_for_ended_session(state, &stanza);
            continue;
        }
        let ty = stanza.type_.as_deref().unwrap_or("normal");
        if stanza.name != "message"
            || !matches!(ty, "chat" | "normal")
            || !crate::features::offline::should_store(&stanza)
        {
            continue;
        }
        let taken = crate::features::delivery::redeliver(state, &session.bare, &stanza, durable);
        if taken == 0
            && durable.is_none()
            && let Err(e) = crate::features::offline::store(state, &session.bare, &stanza).await
        {
            tracing::warn!(account = %session.bare, "a message for a closed session could not be stored: {e:?}");
        }
    }
}

/// An IQ request that reached a session which ended before its client answered (or
/// acknowledged it): the requester gets `service-unavailable` from the ended resource, as
/// for any request to a resource that is not there (RFC 6120 §8.3, RFC 6121 §8.5.3.2.2),
/// instead of waiting for an answer that cannot come. Results and errors are not answered;
/// a requester that is gone too gets nothing.
fn answer_for_ended_session(state: &ServerState, request: &Stanza) {
    if !matches!(request.type_.as_deref(), Some("get" | "set")) {
        return;
    }
    let error =
        strait_wire::StanzaError::new(strait_wire::StanzaErrorCondition::ServiceUnavailable);
    let Some(reply) = crate::features::error_reply(request, &error) else {
        return;
    };
    let Some(Ok(to)) = reply.to.as_deref().map(jid::FullJid::new) else {
        return;
    };
    let bare = to.to_bare().to_string();
    crate::features::delivery::to_full(state, &bare, to.resource().as_str(), reply);
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
    /// The mechanism of the SASL exchange under way (for the login metrics).
    sasl_mechanism: String,
    session: Option<Session>,
    handle: ConnHandle,
    rx: OutboundReceiver,
    auth_deadline: Instant,
    last_read: Instant,
    resume_reading_at: Option<Instant>,
    /// Stream management (XEP-0198), once the client enabled it.
    sm: Option<StreamState>,
    /// Where a resuming connection asks for this session, when it is resumable.
    takeover: Option<mpsc::Receiver<Takeover>>,
    /// Set when a resuming connection took the session: this connection ends.
    taken_over: Option<Takeover>,
    /// Stored messages written since the last flush to a client without stream management:
    /// deleted once the write completes.
    delete_after_flush: Vec<i64>,
    /// Stanzas that came for the client after the stream began to close.
    pending: VecDeque<Outbound>,
    /// Stanzas handled but not yet counted as handled (XEP-0198 `h`): each with the count it
    /// completes and the commit it waits for (a copy held for a recipient's client), oldest
    /// first. The store's writer commits in queue order, so they settle in this order.
    settling: VecDeque<(u32, crate::features::delivery::Settling)>,
    /// An `<r/>` was answered with a count that left stanzas out (still settling): an `<a/>`
    /// follows once they are.
    owe_ack: bool,
    /// Whether the way the connection ended lets a resumable session wait for its client
    /// (a lost connection, an idle timeout), rather than end (a clean close, a stream error).
    hibernate_ok: bool,
}

fn stream_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The negotiation settings, shared by every connection rather than copied into each.
/// The negotiation settings for a new connection: the platform's own, with the domains of
/// the registered providers once the registry is loaded.
fn c2s_config(state: &ServerState) -> Arc<C2sConfig> {
    match &state.interop.snapshot().c2s {
        Some(c) => c.clone(),
        None => base_c2s_config(state),
    }
}

/// The platform's own negotiation settings, made on first use.
pub(crate) fn base_c2s_config(state: &ServerState) -> Arc<C2sConfig> {
    state
        .c2s_config
        .get_or_init(|| Arc::new(make_c2s_config(state)))
        .clone()
}

fn make_c2s_config(state: &ServerState) -> C2sConfig {
    let mut secure = vec!["SCRAM-SHA-256".to_string()];
    if state.config.auth.allow_scram_sha1 {
        secure.push("SCRAM-SHA-1".into());
    }
    if state.config.auth.allow_plain {
        secure.push("PLAIN".into());
    }
    C2sConfig {
        domains: state.config.domains.clone(),
        provider_domains: Vec::new(),
        mechanisms_provider: vec![crate::interop::enlist::MECHANISM.into()],
        tls_available: true,
        require_tls: true,
        mechanisms_secure: secure,
        mechanisms_insecure: Vec::new(),
        extra_features: {
            let mut v = vec![
                "<ver xmlns='urn:xmpp:features:rosterver'/>".to_string(),
                crate::features::csi::FEATURE.into(),
                crate::features::disco::server_caps_feature(&state.server_caps_ver),
            ];
            if state.config.stream_management.enabled {
                v.push(sm::FEATURE.into());
            }
            v
        },
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
    /// Counts a SASL exchange that ended (a challenge is not an end).
    fn count_login(&self, step: &strait_wire::negotiation::SaslStep) {
        use strait_wire::negotiation::SaslStep;
        match step {
            SaslStep::Success { .. } => self.state.metrics.login(&self.sasl_mechanism, None),
            SaslStep::Failure { condition, .. } => self
                .state
                .metrics
                .login(&self.sasl_mechanism, Some(condition.as_str())),
            SaslStep::Challenge(_) => {}
        }
    }

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
            sasl_mechanism: String::new(),
            session: None,
            handle,
            rx,
            resume_reading_at: None,
            sm: None,
            takeover: None,
            taken_over: None,
            delete_after_flush: Vec::new(),
            pending: VecDeque::new(),
            settling: VecDeque::new(),
            owe_ack: false,
            hibernate_ok: true,
        }
    }

    /// The pin of the client's TLS certificate, if it presented one (a provider's proxy).
    pub(super) fn client_pin(&self) -> Option<&[u8; 32]> {
        self.transport.client_pin()
    }

    pub(super) fn negotiation_domain(&self) -> Option<String> {
        self.negotiation.domain().map(str::to_owned)
    }

    /// When the connection loop must look at the clock: the deadline, or the end of a read
    /// pause if that comes first.
    fn wake_at(&self) -> Instant {
        let deadline = self.deadline();
        let wake = self.resume_reading_at.map_or(deadline, |r| r.min(deadline));
        let wake = self.ack_late_at().map_or(wake, |a| a.min(wake));
        if self.closing {
            return wake;
        }
        self.sm
            .as_ref()
            .and_then(StreamState::request_due)
            .map_or(wake, |r| r.min(wake))
    }

    /// When the outstanding acknowledgement counts as late and the account's push services
    /// are to be told (XEP-0357): only when a push service can be reached (a component).
    fn ack_late_at(&self) -> Option<Instant> {
        if self.state.config.components.is_empty() || self.session.is_none() {
            return None;
        }
        let after = Duration::from_secs(self.state.config.stream_management.ack_push_secs);
        self.sm.as_ref()?.ack_late_at(after)
    }

    /// An acknowledgement is late: the device may be asleep behind a connection that looks
    /// open (no FIN, and the idle timeout is long). Its push services are told once per
    /// request, as when the session hibernates; the connection stays as it is.
    fn ack_is_late(&mut self) {
        if let Some(sm) = self.sm.as_mut() {
            sm.ack_push_sent = true;
        }
        if let Some(s) = &self.session {
            tracing::debug!(conn = self.conn_id, full = %s.full, "acknowledgement late: push");
            let (state, bare) = (self.state.clone(), s.bare.clone());
            tokio::spawn(async move { crate::features::push::notify(&state, &bare).await });
        }
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
        if error.condition != StreamErrorCondition::ConnectionTimeout {
            self.hibernate_ok = false;
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

    /// Whether `flush` has anything to do: bytes to write, or an ack request due on its own.
    fn wants_flush(&self) -> bool {
        !self.out.is_empty()
            || self.sm.as_ref().is_some_and(|sm| {
                !self.closing && sm.request_due().is_some_and(|due| Instant::now() >= due)
            })
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if let Some(sm) = &mut self.sm
            && !self.closing
        {
            let now = Instant::now();
            if sm.wants_request(now) {
                self.out.extend_from_slice(REQUEST.as_bytes());
                sm.requesting(now);
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.transport.write_all(&self.out)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                ));
            }
        }
        self.out.clear();
        if self.out.capacity() > OUT_KEEP {
            // Written: an idle connection keeps no output buffer.
            self.out = Vec::new();
        }
        if !self.delete_after_flush.is_empty()
            && let Some(s) = &self.session
        {
            let ids = std::mem::take(&mut self.delete_after_flush);
            crate::features::offline::delete(&self.state, &s.bare, ids);
        }
        Ok(())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        // The futures that wait for rare events (shutdown, the idle deadline) live
        // across turns, so a turn does not register and unregister them again: each was a
        // lock on a shared waiter list or on the timer wheel, per stanza.
        let mut shutdown_rx = self.state.shutdown.clone();
        let mut shutdown_seen = false;
        let shutdown = shutdown_rx.changed();
        tokio::pin!(shutdown);
        // One timer for both the deadline and the end of a read pause. It is moved earlier
        // when it must be, never later: a deadline that moved on (a read) is found when the
        // timer fires, and the timer is set again.
        let mut armed = self.wake_at();
        // Whether the timer is set for an ack request due on its own.
        let mut request_armed = false;
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        loop {
            if self.wants_flush() {
                Box::pin(self.flush()).await?;
            }
            if self.more_offline_due() {
                Box::pin(self.more_offline()).await;
                continue;
            }
            if self.closing {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    Box::pin(self.transport.shutdown()),
                )
                .await;
                return Ok(());
            }
            let reading = self.resume_reading_at.is_none();
            let wake = self.wake_at();
            // Also later, when it was set for an ack request a write has carried since:
            // moving a timer costs less than a wake-up for nothing.
            if wake < armed || (request_armed && wake > armed) {
                armed = wake;
                timer.as_mut().reset(armed);
            }
            request_armed = self.sm.as_ref().and_then(StreamState::request_due) == Some(armed);
            tokio::select! {
                biased;
                _ = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    self.close_with(StreamError::new(StreamErrorCondition::SystemShutdown));
                }
                // All that is queued, into one flush; or the order to close (a resumed
                // session brings its own queue, and with it its own kill).
                queued = self.rx.recv_all() => match queued {
                    Received::Items(items) => for out in items {
                        self.outbound(out);
                    },
                    Received::Killed => self.close_with(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "the client does not read its stanzas fast enough",
                    )),
                },
                () = settle_first(&mut self.settling), if !self.settling.is_empty() => {
                    self.settling.pop_front();
                    self.settled();
                }
                t = recv_takeover(&mut self.takeover) => match t {
                    Some(t) => {
                        self.taken_over = Some(t);
                        return Ok(());
                    }
                    None => self.takeover = None,
                },
                // Reads through a buffer that exists only while the read is polled, straight
                // into the parser: an idle connection holds no read buffer.
                r = read_into(&mut self.transport, &mut self.parser), if reading => {
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
                    Box::pin(self.process_events()).await?;
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if self.sm.as_ref().and_then(StreamState::request_due).is_some_and(|d| now >= d) {
                        // An ack request due on its own: the flush at the top of the loop
                        // sends it, and the timer is set again there, for what comes next.
                        armed = now + Duration::from_secs(365 * 86_400);
                    } else if self.ack_late_at().is_some_and(|a| now >= a) {
                        self.ack_is_late();
                        armed = self.wake_at();
                        timer.as_mut().reset(armed);
                    } else if self.resume_reading_at.is_some_and(|r| now >= r) {
                        self.resume_reading_at = None;
                        armed = self.wake_at();
                        timer.as_mut().reset(armed);
                    } else if now < self.deadline() {
                        // Armed for an earlier deadline (or read pause) that moved on.
                        armed = self.wake_at();
                        timer.as_mut().reset(armed);
                    } else {
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
                    let left = self.auth_deadline.saturating_duration_since(Instant::now());
                    let config = self.state.tls.starttls.clone();
                    match tokio::time::timeout(left, self.transport.upgrade(config)).await {
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
                    self.sasl_mechanism = mechanism;
                    self.count_login(&steps);
                    queue.extend(self.negotiation.sasl_step(steps));
                }
                Action::SaslResponse(data) => {
                    let step = self.sasl_response(&data).await;
                    self.count_login(&step);
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
                    // A clean close ends the session (XEP-0198 §5: no resumption).
                    self.hibernate_ok = false;
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

    /// Something the router queued for this client: a stanza written now (or held while the
    /// client is inactive, XEP-0352), a stored message (never held), or a close.
    fn outbound(&mut self, out: Outbound) {
        match out {
            Outbound::Stanza(stanza) => {
                let now = match self.session.as_mut() {
                    Some(session) => session.csi.offer(*stanza),
                    None => vec![*stanza],
                };
                for s in now {
                    self.write_stanza(s, None);
                }
            }
            Outbound::Durable(stanza, id) => {
                if self.has_stored(id) {
                    tracing::debug!(
                        conn = self.conn_id,
                        id,
                        "a stored message this client already has: not written twice"
                    );
                    return;
                }
                let held = match self.session.as_mut() {
                    Some(session) => session.csi.flush_before_urgent(),
                    None => Vec::new(),
                };
                for s in held {
                    self.write_stanza(s, None);
                }
                self.write_stanza(*stanza, Some(id));
            }
            Outbound::Close(e) => self.close_with(e),
        }
    }

    /// Whether this client already has stored message `id`, or has it on its way: written
    /// and not yet acknowledged, written since the last flush, or brought from storage at
    /// its initial presence. A copy of a stored message can reach a client twice: when
    /// another device of the account leaves without acknowledging its copy (which is handed
    /// on to the account's other devices), and when a device's initial presence fetches a
    /// message held for another device while a live copy of it is on its way to it.
    fn has_stored(&self, id: i64) -> bool {
        self.has_live(id)
            || self
                .session
                .as_ref()
                .is_some_and(|s| s.flushed.binary_search(&id).is_ok())
    }

    /// Whether stored message `id` went to this client live and is not acknowledged yet
    /// (written and kept, or written since the last flush).
    fn has_live(&self, id: i64) -> bool {
        self.sm
            .as_ref()
            .is_some_and(|sm| sm.unacked.iter().any(|u| u.durable == Some(id)))
            || self.delete_after_flush.contains(&id)
    }

    /// Whether to write the next page of the account's stored messages now
    /// ([`offline::deliver_more`]): the last page was full, everything written so far went
    /// out, and under stream management the client acknowledged enough of it
    /// ([`offline::more_fits`]).
    fn more_offline_due(&self) -> bool {
        self.out.is_empty()
            && !self.closing
            && self.session.as_ref().is_some_and(|s| s.offline_after > 0)
            && self
                .sm
                .as_ref()
                .is_none_or(|sm| offline::more_fits(&self.state, sm.unacked.len()))
    }

    /// Writes the next page of the account's stored messages, but those that came live
    /// since (a message for this client stored until it acknowledges it).
    async fn more_offline(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        offline::deliver_more(s).await;
        let replies = s.take_replies();
        for (stanza, durable) in replies {
            if durable.is_some_and(|id| self.has_live(id)) {
                continue;
            }
            self.write_stanza(stanza, durable);
        }
    }

    /// Writes a stanza to the client, keeping it until acknowledged under stream management;
    /// `durable` is the stored message it is, deleted once the client has it.
    fn write_stanza(&mut self, stanza: Stanza, durable: Option<i64>) {
        if self.closing {
            // The stream is over: what it can no longer carry is handled when the session ends.
            self.pending.push_back(match durable {
                Some(id) => Outbound::Durable(Box::new(stanza), id),
                None => Outbound::Stanza(Box::new(stanza)),
            });
            return;
        }
        stanza.write_xml(&mut self.out, ns::CLIENT);
        match &mut self.sm {
            Some(sm) => {
                sm.sent(stanza, durable);
                if sm.unacked.len() > self.state.config.stream_management.max_unacked {
                    self.close_with(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "too many unacknowledged stanzas",
                    ));
                }
            }
            None => self.delete_after_flush.extend(durable),
        }
    }

    async fn on_stanza(&mut self, stanza: Stanza) {
        if stanza.kind == StanzaKind::Other && stanza.ns == sm::NS {
            self.on_sm(stanza).await;
            return;
        }
        let Some(session) = self.session.as_mut() else {
            self.close_with(StreamError::new(StreamErrorCondition::NotAuthorized));
            return;
        };
        let counts = stanza.kind != StanzaKind::Other;
        let result = session.handle(stanza).await;
        let replies = session.take_replies();
        let settling = session.take_settling();
        for (s, durable) in replies {
            self.write_stanza(s, durable);
        }
        // XEP-0198 §4: `h` counts stanzas handled, once they are: a message delivered before
        // its held copy was durable once that copy is ([`Connection::acked_inbound`]).
        if counts && let Some(sm) = &mut self.sm {
            sm.inbound = sm.inbound.wrapping_add(1);
            if let Some(s) = settling {
                self.settling.push_back((sm.inbound, s));
            }
        }
        if let Err(e) = result {
            self.close_with(e);
        }
    }

    /// A stream management element (XEP-0198).
    async fn on_sm(&mut self, el: Stanza) {
        let enabled = self.state.config.stream_management.enabled;
        match el.name.as_str() {
            "enable" if !enabled => self.send_nonza(&sm::failed_xml(
                "feature-not-implemented",
                Some("stream management is turned off"),
            )),
            "resume" if !enabled => self.send_nonza(&sm::failed_xml(
                "feature-not-implemented",
                Some("stream management is turned off"),
            )),
            "enable" => self.sm_enable(&el),
            "resume" => self.sm_resume(&el).await,
            "r" => match &self.sm {
                Some(sm) => {
                    let h = self.acked_inbound(sm);
                    if h != sm.inbound {
                        self.owe_ack = true;
                    }
                    let xml = format!("<a xmlns='{}' h='{h}'/>", sm::NS);
                    self.send_nonza(&xml);
                }
                None => tracing::debug!(conn = self.conn_id, "<r/> before stream management"),
            },
            "a" => {
                let Some(sm) = self.sm.as_mut() else {
                    tracing::debug!(conn = self.conn_id, "<a/> before stream management");
                    return;
                };
                let Some(h) = sm::parse_h(&el) else {
                    self.close_with(StreamError::with_text(
                        StreamErrorCondition::BadFormat,
                        "<a/> needs an h attribute (an unsigned 32-bit count)",
                    ));
                    return;
                };
                sm.requested = None;
                match sm.ack(h) {
                    Ok(ids) => {
                        if let Some(s) = &self.session {
                            crate::features::offline::delete(&self.state, &s.bare, ids);
                        }
                    }
                    Err(e) => self.close_with(StreamError::with_text(
                        StreamErrorCondition::UndefinedCondition,
                        format!(
                            "handled-count-too-high: the client acknowledged {} stanzas, {} were sent",
                            e.h, e.sent
                        ),
                    )),
                }
            }
            other => self.close_with(StreamError::with_text(
                StreamErrorCondition::UnsupportedStanzaType,
                format!("<{other}/> in {} is not supported here", sm::NS),
            )),
        }
    }

    /// The count of stanzas handled that may be acknowledged: all but those still settling.
    fn acked_inbound(&self, sm: &StreamState) -> u32 {
        self.settling
            .front()
            .map_or(sm.inbound, |(n, _)| n.wrapping_sub(1))
    }

    /// A commit a handled stanza waited for is done: once none is left, an `<r/>` answered
    /// short gets the full count (XEP-0198 §4 lets either side send `<a/>` unasked).
    fn settled(&mut self) {
        if self.owe_ack
            && self.settling.is_empty()
            && let Some(sm) = &self.sm
        {
            self.owe_ack = false;
            let xml = format!("<a xmlns='{}' h='{}'/>", sm::NS, sm.inbound);
            self.send_nonza(&xml);
        }
    }

    /// Waits for every commit a handled stanza waits for, so that the session is detached
    /// with a count of stanzas handled that it may report (a resumption's `h`).
    async fn settle_all(&mut self) {
        while let Some((_, s)) = self.settling.pop_front() {
            s.await;
        }
        self.owe_ack = false;
    }

    /// Writes a nonza (stream management elements are not stanzas and are not counted).
    fn send_nonza(&mut self, xml: &str) {
        if !self.closing {
            self.out.extend_from_slice(xml.as_bytes());
        }
    }

    fn sm_enable(&mut self, el: &Stanza) {
        let Some(session) = &self.session else {
            self.send_nonza(&sm::failed_xml(
                "unexpected-request",
                Some("bind a resource before enabling stream management"),
            ));
            return;
        };
        if self.sm.is_some() {
            self.send_nonza(&sm::failed_xml(
                "unexpected-request",
                Some("stream management is already enabled"),
            ));
            return;
        }
        let config = &self.state.config.stream_management;
        let mut state = StreamState::default();
        let wants_resume = matches!(el.attr("", "resume"), Some("true" | "1"));
        let resume = if wants_resume && config.resume_timeout_secs > 0 {
            // The client may ask for a shorter window, never a longer one.
            let max = el
                .attr("", "max")
                .and_then(|m| m.parse::<u64>().ok())
                .filter(|m| *m > 0)
                .map_or(config.resume_timeout_secs, |m| {
                    m.min(config.resume_timeout_secs)
                });
            let (id, rx) = self.state.sm.register(&session.bare);
            state.resume_id = Some(id.clone());
            state.resume_secs = max;
            self.takeover = Some(rx);
            Some((id, max))
        } else {
            None
        };
        let xml = sm::enabled_xml(resume.as_ref().map(|(id, max)| (id.as_str(), *max)));
        self.state
            .router
            .update(&session.bare, &session.resource, session.conn_id, |r| {
                r.acks = true
            });
        tracing::debug!(full = %session.full, resumable = resume.is_some(), "stream management enabled");
        self.sm = Some(state);
        self.send_nonza(&xml);
    }

    /// `<resume previd h/>` (XEP-0198 §5): takes over the session from the task that holds
    /// it, then sends again what the client did not acknowledge and what queued meanwhile.
    async fn sm_resume(&mut self, el: &Stanza) {
        if self.session.is_some() {
            self.send_nonza(&sm::failed_xml(
                "unexpected-request",
                Some("this stream already has a session"),
            ));
            return;
        }
        let Some(bare) = self.negotiation.authenticated_jid().map(str::to_owned) else {
            self.close_with(StreamError::new(StreamErrorCondition::NotAuthorized));
            return;
        };
        let (Some(previd), Some(h)) = (el.attr("", "previd").map(str::to_owned), sm::parse_h(el))
        else {
            self.send_nonza(&sm::failed_xml(
                "bad-request",
                Some("<resume/> needs previd and h"),
            ));
            return;
        };
        let d = match self.state.sm.take(&previd, &bare).await {
            Ok(d) => d,
            Err(_) => {
                self.send_nonza(&sm::failed_xml(
                    "item-not-found",
                    Some("no such session to resume: it ended or never existed"),
                ));
                return;
            }
        };
        let Detached {
            mut session,
            rx,
            handle,
            mut sm,
            takeover,
            pending,
        } = *d;
        self.rx = rx;
        self.handle = handle;
        self.takeover = takeover;
        let acked = match sm.ack(h) {
            Ok(ids) => ids,
            Err(e) => {
                // The client claims more than it was sent: everything counts as acknowledged.
                tracing::warn!(full = %session.full, h = e.h, sent = e.sent, "resumption with a count too high");
                let all = sm.sent;
                sm.ack(all).unwrap_or_default()
            }
        };
        crate::features::offline::delete(&self.state, &bare, acked);
        let resend: Vec<sm::Unacked> = sm.unacked.drain(..).collect();
        sm.sent = sm.acked();
        sm.requested = None;
        self.negotiation.resumed(session.full.clone());
        tracing::info!(conn = self.conn_id, full = %session.full, resent = resend.len(), queued = pending.len(), "session resumed");
        self.send_nonza(&format!(
            "<resumed xmlns='{}' h='{}' previd='{}'/>",
            sm::NS,
            sm.inbound,
            strait_wire::escape_attr(&previd)
        ));
        // A resumed stream starts active (XEP-0352 state belongs to the stream).
        let held = session.csi.set_active();
        self.sm = Some(sm);
        self.session = Some(session);
        self.hibernate_ok = true;
        for u in resend {
            self.write_stanza(u.stanza, u.durable);
        }
        for s in held {
            self.write_stanza(s, None);
        }
        for out in pending {
            self.outbound(out);
        }
    }

    /// Whether the session may wait for its client to resume it.
    fn can_hibernate(&self) -> bool {
        self.hibernate_ok
            && self.session.is_some()
            && self.sm.as_ref().is_some_and(|s| s.resume_id.is_some())
            && !*self.state.shutdown.borrow()
    }

    /// Takes the session out of this connection.
    fn detach(&mut self) -> Option<Detached> {
        let session = self.session.take()?;
        let (handle, rx) = ConnHandle::new();
        let pending = std::mem::take(&mut self.pending);
        // Stored messages written but not known to have reached a client without stream
        // management stay stored.
        self.delete_after_flush.clear();
        Some(Detached {
            session,
            rx: std::mem::replace(&mut self.rx, rx),
            handle: std::mem::replace(&mut self.handle, handle),
            sm: self.sm.take().unwrap_or_default(),
            takeover: self.takeover.take(),
            pending,
        })
    }

    /// After a resumption elsewhere: tells this (probably dead) connection why it ends.
    async fn close_replaced(&mut self) {
        self.out.clear();
        self.closing = false;
        self.close_with(StreamError::with_text(
            StreamErrorCondition::Conflict,
            "the session was resumed on another connection",
        ));
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.transport.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each connection is a task whose future is as large as its largest state: the idle
    /// state (`run` waiting in its `select!`) must stay small, with the rare, large states
    /// (handshakes, processing input, writing, ending a session) boxed.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::Config {
            data_dir: dir.path().join("data"),
            domains: vec!["example.test".into()],
            ..crate::Config::default()
        };
        config.listen.c2s = vec!["127.0.0.1:0".parse().unwrap()];
        config.listen.c2s_direct_tls = Vec::new();
        config.upload.listen = Vec::new();
        let server = crate::Server::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let state = server.state().clone();
        let fut = serve_connection(state.clone(), tcp, peer, false);
        let task = std::mem::size_of_val(&fut);
        let conn = std::mem::size_of::<Connection>();
        eprintln!("serve_connection future: {task} bytes; Connection: {conn} bytes");
        // At the time of writing: 1408 and 2192 bytes (before boxing its rare states, the
        // future was about 6 KB).
        assert!(conn <= 1600, "Connection is {conn} bytes");
        assert!(task <= 2600, "the connection task's future is {task} bytes");
        drop((fut, client, state));
        server.shutdown(Duration::from_secs(1)).await;
    }
}
