//! Outbound interop links: the platform's stream to a federated provider's server, opened on
//! the first stanza for one of its domains and kept while stanzas flow.
//!
//! One link per (platform domain, provider domain): the stream's `from` is the platform
//! domain whose certificate authenticates it. Stanzas wait in the link's queue while it
//! connects; when it cannot connect or authenticate, or closes, what is still queued goes
//! back to its senders as errors that say why. When the provider's server offers stream
//! management (XEP-0198, without resumption), it confirms what it handled, and what it had
//! not confirmed when the link broke goes back too ("it may not have arrived"); without
//! it, a stanza written to the link is the provider's server's to deliver.

use super::{Conn, NEGOTIATION_TIMEOUT, revoked, split_link, stream_header};
use crate::server::ServerState;
use base64::Engine as _;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_store::Provider;
use strait_wire::{
    Event, Limits, Stanza, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition, ns,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Stream management (XEP-0198).
const SM: &str = crate::features::sm::NS;

/// Stanzas queued for one link; past it, senders get `resource-constraint`. Also the most
/// written and not yet confirmed.
pub const QUEUE: usize = 4096;

/// A link with nothing to send for this long is closed (the next stanza opens it again).
pub const IDLE: Duration = Duration::from_secs(600);

type Key = (String, String);

/// The links of the running server: the outbound ones open or opening, by (platform domain,
/// provider domain), and how many inbound streams each provider domain has open.
#[derive(Default)]
pub struct Links {
    out: Mutex<HashMap<Key, (u64, mpsc::Sender<Stanza>)>>,
    /// Inbound streams open now, by the provider domain they come from.
    inbound: Mutex<HashMap<String, usize>>,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (u64, mpsc::Sender<Stanza>)>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many outbound links are open or opening.
    pub fn outbound(&self) -> usize {
        self.lock().len()
    }

    /// How many inbound streams are authenticated now, from every provider.
    pub fn inbound_streams(&self) -> usize {
        self.inbound().values().sum()
    }

    fn inbound(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An inbound stream from `domain` is authenticated.
    pub fn opened_in(&self, domain: &str) {
        *self.inbound().entry(domain.to_owned()).or_default() += 1;
    }

    /// An inbound stream from `domain` ended; `true` if it was the last one (its users'
    /// presence came over them, so nothing says they are online any more).
    pub fn closed_in(&self, domain: &str) -> bool {
        let mut g = self.inbound();
        match g.get_mut(domain) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                g.remove(domain);
                true
            }
        }
    }
}

/// Queues `stanza` on the link from `local` to `remote` (the provider's domain), opening
/// the link if there is none.
pub fn enqueue(
    state: &Arc<ServerState>,
    local: &str,
    remote: &str,
    provider: &Provider,
    stanza: Stanza,
) -> Result<(), StanzaError> {
    let key = (local.to_owned(), remote.to_owned());
    let mut links = state.links.lock();
    let tx = match links.get(&key) {
        Some((_, tx)) if !tx.is_closed() => tx.clone(),
        _ => {
            let (tx, rx) = mpsc::channel(QUEUE);
            let id = state.next_conn_id();
            links.insert(key.clone(), (id, tx.clone()));
            tokio::spawn(run(state.clone(), key, id, provider.id.clone(), rx));
            tx
        }
    };
    drop(links);
    tx.try_send(stanza).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            format!("the interop link to {remote} is not keeping up"),
        ),
        mpsc::error::TrySendError::Closed(_) => StanzaError::with_text(
            StanzaErrorCondition::RemoteServerTimeout,
            format!("the interop link to {remote} closed"),
        ),
    })
}

/// One link's life: connect, authenticate, write what is queued until idle, revoked or
/// gone; then hand back what is left.
async fn run(
    state: Arc<ServerState>,
    key: Key,
    id: u64,
    provider_id: String,
    mut rx: mpsc::Receiver<Stanza>,
) {
    let (local, remote) = (&key.0, &key.1);
    let opened = tokio::time::timeout(
        NEGOTIATION_TIMEOUT,
        open(&state, local, remote, &provider_id),
    )
    .await
    .unwrap_or_else(|_| Err(format!("no answer from {remote}'s server in time")));
    let mut unconfirmed = VecDeque::new();
    let why = match opened {
        Ok((mut conn, sm, terms)) => {
            tracing::info!(provider = %provider_id, %local, %remote, sm, "interop link open");
            let mut acks = sm.then(Acks::default);
            let why = pump(&state, &mut conn, &provider_id, &terms, &mut rx, &mut acks).await;
            tracing::info!(provider = %provider_id, %local, %remote, "interop link closed: {why}");
            if let Some(a) = acks {
                unconfirmed = a.unacked;
            }
            why
        }
        Err(why) => {
            tracing::warn!(provider = %provider_id, %local, %remote, "interop link failed: {why}");
            why
        }
    };
    // Written, never confirmed: the server may or may not have them. Their senders hear so
    // (with stream management; without it, what was written is the server's).
    if !unconfirmed.is_empty() {
        tracing::warn!(
            provider = %provider_id, %remote, stanzas = unconfirmed.len(),
            "interop link closed with stanzas its server did not confirm"
        );
        let err = StanzaError::with_text(
            StanzaErrorCondition::RemoteServerTimeout,
            format!(
                "the interop link to {remote} closed before its server confirmed this ({why}); it may not have arrived"
            ),
        );
        for st in &unconfirmed {
            crate::component::bounce(&state, st, &err).await;
        }
    }
    {
        let mut links = state.links.lock();
        if links.get(&key).is_some_and(|(i, _)| *i == id) {
            links.remove(&key);
        }
    }
    rx.close();
    let err = StanzaError::with_text(
        StanzaErrorCondition::RemoteServerTimeout,
        format!("the interop link to {remote} failed: {why}"),
    );
    while let Ok(st) = rx.try_recv() {
        crate::component::bounce(&state, &st, &err).await;
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

fn limits(state: &ServerState) -> Limits {
    link_limits(&state.config)
}

/// The parser budgets of a link after authentication: the clients' (`limits`).
pub fn link_limits(config: &crate::config::Config) -> Limits {
    let l = &config.limits;
    Limits {
        max_stanza_bytes: l.max_stanza_bytes,
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
    }
}

/// What a link was opened with: the provider's link address and pins. A change of either
/// closes it (the next stanza opens a new one with the new ones).
type Terms = (Option<String>, Vec<String>);

/// Opens the link for the running server: the provider as the registry snapshot has it.
async fn open(
    state: &ServerState,
    local: &str,
    remote: &str,
    provider_id: &str,
) -> Result<(Conn<Tls>, bool, Terms), String> {
    let provider = state
        .interop
        .snapshot()
        .provider(provider_id)
        .cloned()
        .ok_or_else(|| format!("the provider {provider_id} is not registered"))?;
    if let Some(e) = revoked(state, provider_id, None) {
        return Err(e.text.unwrap_or_default());
    }
    let (c, sm) = connect(
        &state.tls,
        limits(state),
        &provider,
        local,
        remote,
        &mut |_| {},
    )
    .await?;
    Ok((c, sm, (provider.link.clone(), provider.cert_pins.clone())))
}

/// Connects to the provider's server at its link address, requires STARTTLS, checks the
/// server's certificate against the provider's pins, and authenticates `local` with SASL
/// EXTERNAL; `Err` says why not. `step` hears of each stage reached (`strait provider
/// check-link` prints them).
pub async fn connect(
    tls: &crate::tls::TlsConfigs,
    limits: Limits,
    provider: &Provider,
    local: &str,
    remote: &str,
    step: &mut (dyn FnMut(&str) + Send),
) -> Result<(Conn<Tls>, bool), String> {
    let link = provider.link.clone().unwrap_or_default();
    let (host, port) = split_link(&link).ok_or_else(|| format!("bad link address {link}"))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {link}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    step(&format!("connected to {link}"));
    let mut c = Conn::new(tcp, limits.clone());
    // The stream before TLS: only STARTTLS.
    let features = restart(&mut c, local, remote).await?;
    if !features.has_child(ns::TLS, "starttls") {
        return Err("the server does not offer STARTTLS".into());
    }
    if !c.write(&format!("<starttls xmlns='{}'/>", ns::TLS)).await {
        return Err("connection lost".into());
    }
    match c.next().await {
        Ok(Event::Element(e)) if e.name == "proceed" && e.ns == ns::TLS => {}
        other => return Err(format!("STARTTLS refused: {}", describe(other))),
    }
    if c.parser.buffered() > 0 {
        return Err("data after <proceed/> (a STARTTLS injection?)".into());
    }
    let config = tls
        .link_client(local, provider.cert_pins.clone())
        .ok_or_else(|| format!("no certificate for {local}"))?;
    let name = rustls::pki_types::ServerName::try_from(remote.to_owned())
        .map_err(|_| format!("{remote} is not a server name"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, c.io)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    step("TLS established; the server's certificate key is one the provider pinned");
    let mut c = Conn::new(tls, limits);
    let features = restart(&mut c, local, remote).await?;
    if !offers_external(&features) {
        return Err(
            "the server does not offer SASL EXTERNAL (certificate authentication) to this platform"
                .into(),
        );
    }
    let authzid = base64::engine::general_purpose::STANDARD.encode(local);
    if !c
        .write(&format!(
            "<auth xmlns='{}' mechanism='EXTERNAL'>{authzid}</auth>",
            ns::SASL
        ))
        .await
    {
        return Err("connection lost".into());
    }
    match c.next().await {
        Ok(Event::Element(e)) if e.name == "success" && e.ns == ns::SASL => {}
        Ok(Event::Element(e)) if e.name == "failure" && e.ns == ns::SASL => {
            return Err(format!(
                "the server refused this platform's certificate (SASL EXTERNAL): {}",
                e.inner_xml()
            ));
        }
        other => return Err(format!("SASL EXTERNAL: {}", describe(other))),
    }
    step(&format!("authenticated as {local} (SASL EXTERNAL)"));
    c.parser.reset();
    let features = restart(&mut c, local, remote).await?;
    // Stream management (XEP-0198, no resumption) when offered: the server confirms what it
    // handled, and what it did not confirm goes back to its senders if the link breaks.
    if !features.has_child(SM, "sm") {
        return Ok((c, false));
    }
    if !c.write(&format!("<enable xmlns='{SM}'/>")).await {
        return Err("connection lost".into());
    }
    match c.next().await {
        Ok(Event::Element(e)) if e.name == "enabled" && e.ns == SM => {
            step("stream management enabled (XEP-0198)");
            Ok((c, true))
        }
        Ok(Event::Element(e)) if e.name == "failed" && e.ns == SM => Ok((c, false)),
        other => Err(format!("stream management: {}", describe(other))),
    }
}

/// Opens a new stream and returns the server's features.
async fn restart<S>(c: &mut Conn<S>, local: &str, remote: &str) -> Result<Stanza, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if !c.write(&stream_header(local, Some(remote), None)).await {
        return Err("connection lost".into());
    }
    match c.next().await {
        Ok(Event::StreamOpen(h)) if h.default_ns == ns::SERVER => {}
        Ok(Event::StreamOpen(h)) => {
            return Err(format!("a {} stream, not jabber:server", h.default_ns));
        }
        other => return Err(describe(other)),
    }
    match c.next().await {
        Ok(Event::Element(f)) if f.name == "features" && f.ns == ns::STREAM => Ok(f),
        other => Err(format!("expected stream features: {}", describe(other))),
    }
}

fn offers_external(features: &Stanza) -> bool {
    let Ok(children) = features.payload() else {
        return false;
    };
    children
        .iter()
        .filter(|c| c.is("mechanisms", ns::SASL))
        .flat_map(|m| m.children())
        .any(|m| m.is("mechanism", ns::SASL) && m.text().trim() == "EXTERNAL")
}

fn describe(ev: Result<Event, Option<StreamError>>) -> String {
    match ev {
        Ok(Event::Element(e)) if e.name == "error" && e.ns == ns::STREAM => {
            format!("stream error {}", e.inner_xml())
        }
        Ok(Event::Element(e)) => format!("unexpected <{}/>", e.name),
        Ok(Event::StreamOpen(_)) => "an unexpected stream header".into(),
        Ok(Event::StreamClose) => "the server closed the stream".into(),
        Err(Some(e)) => format!("bad XML from the server: {}", e.to_xml()),
        Err(None) => "connection lost".into(),
    }
}

/// Writes queued stanzas until the link is idle, revoked, shut down or closed by the
/// peer; returns why it ended.
/// Stream management's bookkeeping on a link (XEP-0198 §4): what was written and not yet
/// confirmed, oldest first, and the server's last count.
#[derive(Default)]
struct Acks {
    unacked: VecDeque<Stanza>,
    confirmed: u32,
}

impl Acks {
    /// The server's `<a h/>`: the stanzas it counts as handled leave the queue. `false` if
    /// it counts more than were sent (XEP-0198 §4: a stream error).
    fn confirm(&mut self, h: u32) -> bool {
        let n = h.wrapping_sub(self.confirmed) as usize;
        if n > self.unacked.len() {
            return false;
        }
        self.unacked.drain(..n);
        self.confirmed = h;
        true
    }
}

async fn pump(
    state: &ServerState,
    c: &mut Conn<Tls>,
    provider_id: &str,
    terms: &Terms,
    rx: &mut mpsc::Receiver<Stanza>,
    acks: &mut Option<Acks>,
) -> String {
    let mut shutdown = state.shutdown.clone();
    let mut check = tokio::time::interval(crate::interop::POLL);
    let mut idle = Box::pin(tokio::time::sleep(IDLE));
    loop {
        tokio::select! {
            st = rx.recv() => {
                let Some(mut st) = st else { break "queue closed".into() };
                st.set_content_namespace(ns::SERVER);
                if !c.write(&st.to_xml(ns::SERVER)).await {
                    if let Some(a) = acks.as_mut() {
                        a.unacked.push_back(st);
                    }
                    break "connection lost".into();
                }
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                if let Some(a) = acks.as_mut() {
                    a.unacked.push_back(st);
                    if a.unacked.len() > QUEUE {
                        c.fail(&StreamError::with_text(
                            StreamErrorCondition::ResourceConstraint,
                            "too many stanzas not confirmed",
                        ))
                        .await;
                        break "the server did not confirm what it received".into();
                    }
                    // One request per burst: when nothing else waits to be written.
                    if rx.is_empty() && !c.write(&format!("<r xmlns='{SM}'/>")).await {
                        break "connection lost".into();
                    }
                }
            }
            ev = c.next() => match ev {
                Ok(Event::Element(e)) if e.ns == SM && e.name == "a" => {
                    let h = e.attr("", "h").and_then(|h| h.parse::<u32>().ok());
                    let ok = match (acks.as_mut(), h) {
                        (Some(a), Some(h)) => a.confirm(h),
                        _ => false,
                    };
                    if !ok {
                        c.fail(&StreamError::with_text(
                            StreamErrorCondition::UndefinedCondition,
                            "an acknowledgement of more stanzas than were sent",
                        ))
                        .await;
                        break "a bad acknowledgement from the server".into();
                    }
                }
                // Nothing comes this way to count: the answer is always 0.
                Ok(Event::Element(e)) if e.ns == SM && e.name == "r" => {
                    if !c.write(&format!("<a xmlns='{SM}' h='0'/>")).await {
                        break "connection lost".into();
                    }
                }
                // Nothing else is expected on this stream's way in but its end.
                Ok(Event::Element(e)) if e.name == "error" && e.ns == ns::STREAM => {
                    break format!("stream error from the server: {}", e.inner_xml());
                }
                Ok(Event::Element(_)) => {}
                Ok(Event::StreamClose) => {
                    c.close().await;
                    break "closed by the server".into();
                }
                Ok(Event::StreamOpen(_)) => {
                    c.fail(&StreamError::new(StreamErrorCondition::BadFormat)).await;
                    break "a second stream header from the server".into();
                }
                Err(Some(e)) => {
                    c.fail(&e).await;
                    break format!("bad XML from the server: {}", e.to_xml());
                }
                Err(None) => break "connection lost".into(),
            },
            _ = check.tick() => {
                let changed = state
                    .interop
                    .snapshot()
                    .provider(provider_id)
                    .is_some_and(|p| p.link != terms.0 || p.cert_pins != terms.1);
                let e = revoked(state, provider_id, None).or_else(|| {
                    changed.then(|| StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        format!("the link address or pins of the provider {provider_id} changed"),
                    ))
                });
                if let Some(e) = e {
                    let why = e.text.clone().unwrap_or_default();
                    c.fail(&e).await;
                    break why;
                }
            }
            () = &mut idle => {
                c.close().await;
                break "idle".into();
            }
            _ = shutdown.changed() => {
                c.fail(&StreamError::new(StreamErrorCondition::SystemShutdown)).await;
                break "the server is shutting down".into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(id: &str) -> Stanza {
        let mut s = Stanza::new(ns::CLIENT, "message");
        s.id = Some(id.into());
        s
    }

    #[test]
    fn a_domains_last_inbound_stream_is_known() {
        let l = Links::default();
        l.opened_in("acme.test");
        l.opened_in("acme.test");
        l.opened_in("beta.test");
        assert!(
            !l.closed_in("acme.test"),
            "one stream from acme.test remains"
        );
        assert!(l.closed_in("acme.test"));
        assert!(l.closed_in("beta.test"));
    }

    #[test]
    fn acknowledgements_release_the_oldest_and_wrap_around() {
        let mut a = Acks::default();
        for id in ["a", "b", "c"] {
            a.unacked.push_back(stanza(id));
        }
        assert!(a.confirm(2));
        assert_eq!(a.unacked.len(), 1);
        assert_eq!(a.unacked[0].id.as_deref(), Some("c"));
        assert!(a.confirm(2), "the same count again releases nothing");
        assert!(!a.confirm(4), "more than was sent");
        // The count is mod 2^32 (XEP-0198 §4).
        let mut w = Acks {
            confirmed: u32::MAX,
            ..Acks::default()
        };
        w.unacked.push_back(stanza("x"));
        w.unacked.push_back(stanza("y"));
        assert!(w.confirm(0));
        assert_eq!(w.unacked.len(), 1);
        assert!(w.confirm(1));
        assert!(w.unacked.is_empty());
    }
}
