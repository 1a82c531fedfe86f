//! External components (XEP-0114, `jabber:component:accept`): a separate program (a gateway,
//! a push service, a bot) connects over TCP, opens a stream to its configured domain, proves
//! it knows the shared secret (`<handshake>` = hex SHA-1 of the stream id and the secret),
//! and from then on sends and receives every stanza for that domain.
//!
//! The protocol has no TLS, so the listener is on loopback only (config validation). A
//! component's stanzas must come from its own domain (`invalid-from` otherwise, as RFC 6120
//! §4.9.3.9 has it for servers); they reach local accounts the way a message from another
//! server would: delivered, stored offline, archived, subject to the recipient's block list.
//! Stanzas from clients to the component's domain are queued for it; when it is not
//! connected, or its queue is full, the sender gets an error that says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::{Digest, Sha1};
use strait_wire::{
    Event, Limits, Stanza, StanzaError, StanzaErrorCondition, StanzaKind, StreamError,
    StreamErrorCondition, ns,
};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::features::{self, delivery, disco, iq_result, message, ping, presence};
use crate::net::stream::{XmlStream, accept_each};
use crate::server::ServerState;

/// Stanzas queued for one component; past it, senders get `resource-constraint`.
pub const QUEUE: usize = 4096;

/// The components connected now, by domain (lower case).
#[derive(Default)]
pub struct Components {
    connected: Mutex<HashMap<String, (u64, mpsc::Sender<Stanza>)>>,
}

impl Components {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<Stanza>)>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a component for `domain` is connected now.
    pub fn is_connected(&self, domain: &str) -> bool {
        self.lock().contains_key(&domain.to_ascii_lowercase())
    }
}

/// Where a stanza addressed to `domain` goes when `domain` belongs to a configured component:
/// `None` if it does not; `Some(Ok)` once queued for the component; `Some(Err)` with the
/// error for the sender when the component is not connected or cannot take more.
pub fn route(state: &ServerState, domain: &str, stanza: Stanza) -> Option<Result<(), StanzaError>> {
    state.config.component(domain)?;
    let tx = state
        .components
        .lock()
        .get(&domain.to_ascii_lowercase())
        .map(|(_, tx)| tx.clone());
    let Some(tx) = tx else {
        return Some(Err(StanzaError::with_text(
            StanzaErrorCondition::ServiceUnavailable,
            "the component serving this domain is not connected",
        )));
    };
    Some(tx.try_send(stanza).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            "the component serving this domain is not keeping up",
        ),
        mpsc::error::TrySendError::Closed(_) => StanzaError::with_text(
            StanzaErrorCondition::ServiceUnavailable,
            "the component serving this domain is not connected",
        ),
    }))
}

/// Whether `jid` (`user@domain/res` or a domain) is at a configured component's domain:
/// cheap, and nothing at all when no component is configured.
pub fn owns(state: &ServerState, jid: &str) -> bool {
    if state.config.components.is_empty() {
        return false;
    }
    let rest = jid.split('/').next().unwrap_or(jid);
    let domain = rest.rsplit_once('@').map_or(rest, |(_, d)| d);
    state.config.component(domain).is_some()
}

/// [`route`] for a JID (`user@domain/res` or a bare domain).
pub fn route_to_jid(
    state: &ServerState,
    to: &str,
    stanza: Stanza,
) -> Option<Result<(), StanzaError>> {
    let domain = jid::Jid::new(to).ok()?.domain().as_str().to_owned();
    route(state, &domain, stanza)
}

/// Accepts component connections until shutdown. Components are few and trusted once
/// authenticated; they share the connection cap with clients.
pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener) {
    accept_each(state, listener, "component", serve).await;
}

/// The `<handshake/>` content for a stream id and secret: lower-case hex SHA-1 (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

type Conn = XmlStream<TcpStream>;

async fn fail(c: &mut Conn, peer: SocketAddr, e: &StreamError) {
    tracing::info!(%peer, "component stream error: {}", e.to_xml());
    c.fail(e).await;
}

fn stream_header(domain: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' from='{}' id='{}'>",
        ns::COMPONENT,
        ns::STREAM,
        strait_wire::escape_attr(domain),
        id
    )
}

async fn serve(state: Arc<ServerState>, tcp: TcpStream, peer: SocketAddr) {
    let l = &state.config.limits;
    let mut c = Conn::new(
        tcp,
        Limits {
            max_stanza_bytes: l.max_stanza_bytes_unauthenticated,
            max_depth: l.max_depth,
            max_attributes: l.max_attributes,
        },
    );
    let deadline = Duration::from_secs(l.unauthenticated_timeout_secs);
    let authenticated =
        match tokio::time::timeout(deadline, authenticate(&state, &mut c, peer)).await {
            Ok(Ok(a)) => a,
            Ok(Err(Some(e))) => return fail(&mut c, peer, &e).await,
            Ok(Err(None)) => return,
            Err(_) => {
                let e = StreamError::with_text(
                    StreamErrorCondition::ConnectionTimeout,
                    "no handshake in time",
                );
                return fail(&mut c, peer, &e).await;
            }
        };
    let (domain, conn_id, mut rx) = authenticated;
    c.parser.set_limits(Limits {
        max_stanza_bytes: l.max_stanza_bytes,
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
    });
    tracing::info!(%peer, component = %domain, "component connected");
    let end = run(&state, &mut c, &domain, &mut rx).await;
    // Unregistered before anything else: new stanzas for the domain get an error now.
    {
        let mut g = state.components.lock();
        if g.get(&domain).is_some_and(|(id, _)| *id == conn_id) {
            g.remove(&domain);
        }
    }
    rx.close();
    // What was queued and not written goes back to its senders as errors.
    let err = StanzaError::with_text(
        StanzaErrorCondition::ServiceUnavailable,
        "the component went away before taking this stanza",
    );
    while let Ok(st) = rx.try_recv() {
        bounce(&state, &st, &err).await;
    }
    match end {
        Some(e) => fail(&mut c, peer, &e).await,
        None => c.close().await,
    }
    tracing::info!(%peer, component = %domain, "component disconnected");
}

type Authenticated = (String, u64, mpsc::Receiver<Stanza>);

async fn authenticate(
    state: &ServerState,
    c: &mut Conn,
    peer: SocketAddr,
) -> Result<Authenticated, Option<StreamError>> {
    use StreamErrorCondition as C;
    let header = match c.next().await? {
        Event::StreamOpen(h) => h,
        _ => return Err(Some(StreamError::new(C::BadFormat))),
    };
    if header.default_ns != ns::COMPONENT {
        return Err(Some(StreamError::with_text(
            C::InvalidNamespace,
            "component streams use jabber:component:accept",
        )));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let to = header.to.unwrap_or_default().to_ascii_lowercase();
    let Some(secret) = state.config.component(&to).map(|cc| cc.secret.clone()) else {
        // The header is sent first so that the error arrives inside a stream.
        let _ = c.write(&stream_header(&state.config.domains[0], &id)).await;
        return Err(Some(StreamError::with_text(
            C::HostUnknown,
            "no component is configured for this domain",
        )));
    };
    if !c.write(&stream_header(&to, &id)).await {
        return Err(None);
    }
    let hs = match c.next().await? {
        Event::Element(st) if st.name == "handshake" && st.ns == ns::COMPONENT => st,
        _ => {
            return Err(Some(StreamError::with_text(
                C::NotAuthorized,
                "expected <handshake/>",
            )));
        }
    };
    let got = hs.inner_xml().trim().to_ascii_lowercase();
    let want = handshake_digest(&id, &secret);
    if !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
        tracing::warn!(%peer, component = %to, "component handshake failed");
        return Err(Some(StreamError::with_text(
            C::NotAuthorized,
            "wrong handshake",
        )));
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let conn_id = state.next_conn_id();
    {
        let mut g = state.components.lock();
        if g.get(&to).is_some_and(|(_, t)| !t.is_closed()) {
            return Err(Some(StreamError::with_text(
                C::Conflict,
                "a component is already connected for this domain",
            )));
        }
        g.insert(to.clone(), (conn_id, tx));
    }
    if !c.write("<handshake/>").await {
        state.components.lock().remove(&to);
        return Err(None);
    }
    Ok((to, conn_id, rx))
}

/// Reads and writes until the stream ends; `Some` is the stream error to close it with.
async fn run(
    state: &Arc<ServerState>,
    c: &mut Conn,
    domain: &str,
    rx: &mut mpsc::Receiver<Stanza>,
) -> Option<StreamError> {
    let mut shutdown = state.shutdown.clone();
    if *shutdown.borrow() {
        return Some(StreamError::new(StreamErrorCondition::SystemShutdown));
    }
    loop {
        tokio::select! {
            ev = c.next() => match ev {
                Ok(Event::Element(st)) => {
                    let replies = match from_remote(state, Source::Component(domain), st).await {
                        Ok(r) => r,
                        Err(e) => return e,
                    };
                    for r in replies {
                        if !c.write(&for_component(r)).await {
                            return None;
                        }
                    }
                }
                Ok(Event::StreamClose) => return None,
                Ok(Event::StreamOpen(_)) => {
                    return Some(StreamError::new(StreamErrorCondition::BadFormat));
                }
                Err(e) => return e,
            },
            out = rx.recv() => match out {
                Some(st) => {
                    if !c.write(&for_component(st)).await {
                        return None;
                    }
                }
                None => return None,
            },
            _ = shutdown.changed() => {
                return Some(StreamError::new(StreamErrorCondition::SystemShutdown));
            }
        }
    }
}

/// A stanza as the component's stream carries it (its content namespace).
fn for_component(mut st: Stanza) -> String {
    st.set_content_namespace(ns::COMPONENT);
    st.to_xml(ns::COMPONENT)
}

/// A stanza that a component or an interop link could not take: its sender gets `err`
/// (RFC 6120 §8.3.1).
pub(crate) async fn bounce(state: &ServerState, st: &Stanza, err: &StanzaError) {
    let undeliverable = match st.kind {
        StanzaKind::Iq => matches!(st.type_.as_deref(), Some("get" | "set")),
        StanzaKind::Message => !matches!(
            st.type_.as_deref(),
            Some("error" | "headline" | "groupchat")
        ),
        _ => false,
    };
    if !undeliverable {
        return;
    }
    if let (Some(reply), Some(to)) = (features::error_reply(st, err), st.from.clone())
        && let Ok(j) = jid::Jid::new(&to)
        && let Some(node) = j.node()
    {
        let bare = format!("{}@{}", node.as_str(), j.domain().as_str());
        match j.resource() {
            Some(r) => {
                delivery::to_full(state, &bare, r.as_str(), reply);
            }
            None => {
                delivery::to_available(state, &bare, &reply, false);
            }
        }
    }
}

fn error_for(st: &Stanza, e: StanzaError) -> Vec<Stanza> {
    features::error_reply(st, &e).into_iter().collect()
}

/// Where a stanza from outside the platform's own clients comes from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The external component serving this domain.
    Component(&'a str),
    /// An interop link from the federated provider's server for this domain ([`crate::s2s`]).
    Link(&'a str),
}

/// Handles one stanza from a component or an interop link: the replies to write back to it,
/// or the stream error that ends the stream.
pub(crate) async fn from_remote(
    state: &Arc<ServerState>,
    source: Source<'_>,
    mut st: Stanza,
) -> Result<Vec<Stanza>, Option<StreamError>> {
    let (Source::Component(domain) | Source::Link(domain)) = source;
    let link = matches!(source, Source::Link(_));
    if st.kind == StanzaKind::Other {
        return Err(Some(StreamError::with_text(
            StreamErrorCondition::UnsupportedStanzaType,
            "only message, presence and iq",
        )));
    }
    st.set_content_namespace(ns::CLIENT);
    // The `from` must be the peer's domain or an address at it; from a component, none
    // means the domain.
    let from = match st.from.as_deref() {
        None if !link => domain.to_owned(),
        None => {
            return Err(Some(StreamError::with_text(
                StreamErrorCondition::InvalidFrom,
                "a stanza over an interop link names its sender",
            )));
        }
        Some(f) => match jid::Jid::new(f) {
            Ok(j) if j.domain().as_str().eq_ignore_ascii_case(domain) => j.to_string(),
            _ => {
                return Err(Some(StreamError::with_text(
                    StreamErrorCondition::InvalidFrom,
                    if link {
                        "a stanza over an interop link comes from an address under the provider's domain"
                    } else {
                        "a component sends from its own domain"
                    },
                )));
            }
        },
    };
    st.from = Some(from);
    let request = st.kind == StanzaKind::Iq && matches!(st.type_.as_deref(), Some("get" | "set"));
    let errors_ok = match st.kind {
        StanzaKind::Iq => request,
        StanzaKind::Message => !matches!(st.type_.as_deref(), Some("error")),
        _ => false,
    };
    let to = match st.to.as_deref().map(jid::Jid::new) {
        Some(Ok(j)) => j,
        Some(Err(_)) => {
            return Ok(if errors_ok {
                error_for(&st, StanzaError::new(StanzaErrorCondition::JidMalformed))
            } else {
                Vec::new()
            });
        }
        None => {
            return Ok(if errors_ok {
                error_for(
                    &st,
                    StanzaError::with_text(StanzaErrorCondition::BadRequest, "no 'to' address"),
                )
            } else {
                Vec::new()
            });
        }
    };
    let to_domain = to.domain().as_str().to_owned();
    // To another component (or back to itself); nothing is relayed from a link.
    if !link && let Some(r) = route(state, &to_domain, st.clone()) {
        return Ok(match r {
            Err(e) if errors_ok => error_for(&st, e),
            _ => Vec::new(),
        });
    }
    let Some(served) = state.config.served_domain(&to_domain).map(str::to_owned) else {
        return Ok(if errors_ok {
            error_for(&st, features::unreachable_domain(&to_domain))
        } else {
            Vec::new()
        });
    };
    let Some(node) = to.node() else {
        return Ok(to_server(state, &st, request));
    };
    let bare = format!("{}@{served}", node.as_str());
    let resource = to.resource().map(|r| r.as_str().to_owned());
    // A federated provider's users meet the boundary policy, as enlisted ones do.
    if link {
        let from_bare = jid::Jid::new(st.from.as_deref().unwrap_or(domain))
            .map(|j| j.to_bare().to_string())
            .unwrap_or_else(|_| domain.to_owned());
        if let Err(e) = crate::interop::boundary::check(state, &from_bare, &bare, &mut st).await {
            return Ok(if errors_ok {
                error_for(&st, e)
            } else {
                Vec::new()
            });
        }
    }
    match st.kind {
        StanzaKind::Message => {
            match message::deliver_local(state, &st, &bare, resource.as_deref()).await {
                Ok(()) => Ok(Vec::new()),
                Err(e) if errors_ok => Ok(error_for(&st, e)),
                Err(_) => Ok(Vec::new()),
            }
        }
        StanzaKind::Presence => {
            let sender = jid::Jid::new(st.from.as_deref().unwrap_or(domain))
                .map(|j| j.to_bare().to_string())
                .unwrap_or_else(|_| domain.to_owned());
            match st.type_.as_deref() {
                Some("subscribe") => presence::inbound_subscribe(state, &sender, &bare).await,
                Some("subscribed") => presence::inbound_subscribed(state, &sender, &bare).await,
                Some("unsubscribe") => presence::inbound_unsubscribe(state, &sender, &bare).await,
                Some("unsubscribed") => presence::inbound_unsubscribed(state, &sender, &bare).await,
                None | Some("unavailable" | "error") => {
                    if link {
                        // Its caps, for PEP notifications to it (XEP-0163).
                        features::caps::on_link_presence(state, &bare, &st).await;
                    }
                    presence::route_directed(state, st, &to.to_string()).await
                }
                Some("probe") if link => presence::probe_from_link(state, &sender, &bare).await,
                _ => {} // probes are not answered to components; unknown types ignored
            }
            Ok(Vec::new())
        }
        _ => {
            // An IQ to an account: to one of its resources, or (to the bare JID) nothing
            // here answers on the account's behalf to a component.
            if let Some(r) = &resource
                && delivery::to_full(state, &bare, r, st.clone())
            {
                return Ok(Vec::new());
            }
            // The answer to a caps query the platform sent over the link.
            if link
                && !request
                && resource.is_none()
                && features::caps::on_link_iq_response(state, &st).await
            {
                return Ok(Vec::new());
            }
            // Over a link, a provider's user reads a platform user's PEP items (OMEMO
            // device lists and bundles).
            if link && resource.is_none() && request {
                let requester = jid::Jid::new(st.from.as_deref().unwrap_or(domain))
                    .map(|j| j.to_bare().to_string())
                    .unwrap_or_default();
                if !delivery::account_exists(state, &bare).await {
                    return Ok(error_for(
                        &st,
                        StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                    ));
                }
                return Ok(
                    match features::pep::remote_items(state, &st, &requester, &bare).await {
                        Ok(x) => vec![iq_result(&st, Some(&x))],
                        Err(e) => error_for(&st, e),
                    },
                );
            }
            // An app server refusing a push notification (XEP-0357).
            if resource.is_none()
                && st.type_.as_deref() == Some("error")
                && let (Some(id), Some(from)) = (st.id.as_deref(), st.from.as_deref())
                && id.starts_with(features::push::ID_PREFIX)
            {
                features::push::on_error(state, &bare, from, id);
            }
            Ok(if request {
                error_for(
                    &st,
                    StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                )
            } else {
                Vec::new()
            })
        }
    }
}

/// A stanza from a component to the server's own domain: the server answers discovery,
/// pings and version requests; anything else is refused.
fn to_server(state: &ServerState, st: &Stanza, request: bool) -> Vec<Stanza> {
    if !request {
        return Vec::new();
    }
    let get = st.type_.as_deref() == Some("get");
    let payload = st.first_payload().ok().flatten();
    let answer = match payload.as_ref().map(|p| (p.ns(), p.name().to_owned())) {
        Some((n, q)) if get && n == disco::INFO && q == "query" => {
            Some(iq_result(st, Some(&state.server_info)))
        }
        Some((n, q)) if get && n == ping::NS && q == "ping" => Some(iq_result(st, None)),
        Some((n, q)) if get && n == disco::VERSION && q == "query" => {
            Some(iq_result(st, Some(&disco::version())))
        }
        _ => None,
    };
    match answer {
        Some(a) => vec![a],
        None => error_for(
            st,
            StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0114 §3: lower-case hex SHA-1 of the stream id followed by the secret. The
    /// expected value was computed with Python's hashlib (`sha1(b"3BF96D32sesame")`).
    #[test]
    fn handshake_is_hex_sha1_of_id_and_secret() {
        assert_eq!(
            handshake_digest("3BF96D32", "sesame"),
            "7a98dc4c9e92493d7fd66a25364c862637789c45"
        );
        assert_eq!(handshake_digest("", "").len(), 40);
    }
}
