//! Inbound interop links: a federated provider's server connects to `listen.s2s`, and its
//! users' stanzas come in over the stream it opens.
//!
//! 1. The stream (`jabber:server`) names a domain this platform serves in `to`; only
//!    STARTTLS is offered, and required.
//! 2. In TLS the peer must present a certificate (the handshake fails otherwise). The
//!    restarted stream must name the provider's domain in `from`; the certificate's key
//!    must be one the provider pinned and its agreement active, or the stream ends with
//!    `not-authorized` / `policy-violation` saying which.
//! 3. SASL EXTERNAL (XEP-0178) is then the only mechanism offered; an authorization
//!    identity, if given, must be the stream's `from`.
//! 4. After the last restart stream management (XEP-0198, without resumption) is offered:
//!    the peer's stanzas are counted once handled (delivered, stored, or refused), so that
//!    the peer knows which ones to tell its senders about if the link breaks.
//! 5. Every stanza must come from an address under that domain
//!    (`invalid-from` otherwise, RFC 6120 §4.9.3.9) and is handled as one from an enlisted
//!    user would be: the boundary policy first, then delivery ([`crate::component::from_remote`]).
//!    Answers and errors go back over the platform's own outbound link to the provider.

use super::{Conn, NEGOTIATION_TIMEOUT, revoked, stream_header};
use crate::component::Source;
use crate::server::ServerState;
use crate::tls::{pin_hex, spki_pin};
use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::Arc;
use strait_wire::{Event, Limits, Stanza, StreamError, StreamErrorCondition as C, ns};
use tokio::net::{TcpListener, TcpStream};

/// Stream management (XEP-0198).
const SM: &str = crate::features::sm::NS;

/// Accepts link connections until shutdown.
pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener) {
    crate::net::stream::accept_each(state, listener, "interop link", serve).await;
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// Who the peer proved to be.
struct Peer {
    /// The platform domain the stream is to.
    local: String,
    /// The provider's domain the stream is from.
    remote: String,
    provider: String,
    pin: String,
}

async fn serve(state: Arc<ServerState>, tcp: TcpStream, addr: SocketAddr) {
    let l = &state.config.limits;
    let unauthenticated = Limits {
        max_stanza_bytes: l.max_stanza_bytes_unauthenticated,
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
    };
    let mut c = Conn::new(tcp, unauthenticated.clone());
    let local = match tokio::time::timeout(NEGOTIATION_TIMEOUT, plain(&state, &mut c)).await {
        Ok(Ok(local)) => local,
        Ok(Err(Some(e))) => return refuse(&mut c, addr, e).await,
        Ok(Err(None)) => return,
        Err(_) => return refuse(&mut c, addr, timeout()).await,
    };
    let config = match state.tls.s2s_server(&local) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%addr, "interop link TLS configuration: {e}");
            return;
        }
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(c.io);
    let tls = match tokio::time::timeout(NEGOTIATION_TIMEOUT, accept).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(%addr, "interop link TLS failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "interop link TLS handshake not finished in time");
            return;
        }
    };
    let pin = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(spki_pin)
        .map(|p| pin_hex(&p));
    let mut c = Conn::new(tls, unauthenticated);
    let peer = match tokio::time::timeout(
        NEGOTIATION_TIMEOUT,
        authenticate(&state, &mut c, local, pin),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(Some(e))) => return refuse(&mut c, addr, e).await,
        Ok(Err(None)) => return,
        Err(_) => return refuse(&mut c, addr, timeout()).await,
    };
    c.parser.set_limits(Limits {
        max_stanza_bytes: l.max_stanza_bytes,
        max_depth: l.max_depth,
        max_attributes: l.max_attributes,
    });
    tracing::info!(%addr, provider = %peer.provider, remote = %peer.remote, local = %peer.local, "interop link in");
    state.links.opened_in(&peer.remote);
    let end = run(&state, &mut c, &peer).await;
    // Its users' presence came over these streams; with the last gone, nothing says they
    // are online.
    if state.links.closed_in(&peer.remote) {
        crate::features::caps::forget_link_domain(&peer.remote);
    }
    match end {
        Some(e) => {
            tracing::info!(%addr, provider = %peer.provider, "interop link in closed: {e}");
            c.fail(&e).await;
        }
        None => {
            tracing::info!(%addr, provider = %peer.provider, "interop link in closed");
            c.close().await;
        }
    }
}

fn timeout() -> StreamError {
    StreamError::with_text(
        C::ConnectionTimeout,
        "the link did not authenticate in time",
    )
}

async fn refuse<S>(c: &mut Conn<S>, addr: SocketAddr, e: StreamError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::warn!(%addr, "interop link refused: {e}");
    c.fail(&e).await;
}

/// Reads a stream header; answers it with ours (so that an error can follow inside a
/// stream) and returns it with the served domain it names.
async fn open_stream<S>(
    state: &ServerState,
    c: &mut Conn<S>,
) -> Result<(strait_wire::StreamHeader, String), Option<StreamError>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let header = match c.next().await? {
        Event::StreamOpen(h) => h,
        _ => return Err(Some(StreamError::new(C::BadFormat))),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let to = header.to.clone().unwrap_or_default().to_ascii_lowercase();
    let served = state.config.served_domain(&to).map(str::to_owned);
    let from = served
        .clone()
        .unwrap_or_else(|| state.config.domains[0].clone());
    if !c
        .write(&stream_header(&from, header.from.as_deref(), Some(&id)))
        .await
    {
        return Err(None);
    }
    if header.default_ns != ns::SERVER {
        return Err(Some(StreamError::with_text(
            C::InvalidNamespace,
            "interop links are server-to-server streams (jabber:server)",
        )));
    }
    let Some(local) = served else {
        return Err(Some(StreamError::with_text(
            C::HostUnknown,
            format!("{to:?} is not a domain of this platform"),
        )));
    };
    Ok((header, local))
}

/// The stream before TLS: STARTTLS, required.
async fn plain(
    state: &ServerState,
    c: &mut Conn<TcpStream>,
) -> Result<String, Option<StreamError>> {
    let (_, local) = open_stream(state, c).await?;
    if !c
        .write(&format!(
            "<stream:features><starttls xmlns='{}'><required/></starttls></stream:features>",
            ns::TLS
        ))
        .await
    {
        return Err(None);
    }
    match c.next().await? {
        Event::Element(e) if e.name == "starttls" && e.ns == ns::TLS => {}
        _ => {
            return Err(Some(StreamError::with_text(
                C::PolicyViolation,
                "an interop link must start TLS first",
            )));
        }
    }
    if c.parser.buffered() > 0 {
        // Bytes pipelined after <starttls/> would be read as if they came through TLS.
        return Err(Some(StreamError::with_text(
            C::PolicyViolation,
            "data after <starttls/>",
        )));
    }
    if !c.write(&format!("<proceed xmlns='{}'/>", ns::TLS)).await {
        return Err(None);
    }
    Ok(local)
}

/// The stream in TLS: the provider, its pin, SASL EXTERNAL, the last restart.
async fn authenticate(
    state: &ServerState,
    c: &mut Conn<Tls>,
    local: String,
    pin: Option<String>,
) -> Result<Peer, Option<StreamError>> {
    let (header, local2) = open_stream(state, c).await?;
    if local2 != local {
        return Err(Some(StreamError::with_text(
            C::HostUnknown,
            "the stream in TLS names another domain than the one before",
        )));
    }
    let remote = header.from.unwrap_or_default().to_ascii_lowercase();
    if remote.is_empty() {
        return Err(Some(StreamError::with_text(
            C::InvalidFrom,
            "an interop link names its domain in the stream's 'from'",
        )));
    }
    let Some(provider) = super::federated(&state.interop.snapshot(), &remote) else {
        return Err(Some(StreamError::with_text(
            C::NotAuthorized,
            format!("no federated provider of this platform has the domain {remote}"),
        )));
    };
    let Some(pin) = pin else {
        return Err(Some(StreamError::with_text(
            C::NotAuthorized,
            "no certificate was presented",
        )));
    };
    if let Some(e) = revoked(state, &provider.id, Some(&pin)) {
        let not_pinned = !provider.cert_pins.contains(&pin);
        return Err(Some(if not_pinned {
            StreamError::with_text(
                C::NotAuthorized,
                format!(
                    "the certificate's key (pin {pin}) is not one the provider {} registered",
                    provider.id
                ),
            )
        } else {
            e
        }));
    }
    if !c
        .write(&format!(
            "<stream:features><mechanisms xmlns='{}'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
            ns::SASL
        ))
        .await
    {
        return Err(None);
    }
    let auth = match c.next().await? {
        Event::Element(e) if e.name == "auth" && e.ns == ns::SASL => e,
        _ => {
            return Err(Some(StreamError::with_text(
                C::NotAuthorized,
                "expected SASL EXTERNAL",
            )));
        }
    };
    if let Some(failure) = check_auth(&auth, &remote) {
        let _ = c
            .write(&format!(
                "<failure xmlns='{}'><{failure}/></failure>",
                ns::SASL
            ))
            .await;
        return Err(Some(StreamError::with_text(
            C::NotAuthorized,
            format!("SASL EXTERNAL failed: {failure}"),
        )));
    }
    if !c.write(&format!("<success xmlns='{}'/>", ns::SASL)).await {
        return Err(None);
    }
    c.parser.reset();
    open_stream(state, c).await?;
    // Stream management (XEP-0198, without resumption): the peer learns which of its
    // stanzas were handled (delivered or stored), so that it can tell its senders about the
    // rest when the link breaks.
    if !c
        .write(&format!(
            "<stream:features>{}</stream:features>",
            crate::features::sm::FEATURE
        ))
        .await
    {
        return Err(None);
    }
    Ok(Peer {
        local,
        remote,
        provider: provider.id.clone(),
        pin,
    })
}

/// The SASL failure condition for an `<auth/>`, or `None` if it authenticates `remote`.
fn check_auth(auth: &Stanza, remote: &str) -> Option<&'static str> {
    if auth.attr("", "mechanism") != Some("EXTERNAL") {
        return Some("invalid-mechanism");
    }
    let payload = auth.inner_xml().trim();
    if payload.is_empty() || payload == "=" {
        return None;
    }
    match base64::engine::general_purpose::STANDARD.decode(payload) {
        Ok(id) if id.eq_ignore_ascii_case(remote.as_bytes()) => None,
        Ok(_) => Some("invalid-authzid"),
        Err(_) => Some("incorrect-encoding"),
    }
}

/// Reads stanzas until the stream ends; `Some` is the stream error to end it with.
async fn run(state: &Arc<ServerState>, c: &mut Conn<Tls>, peer: &Peer) -> Option<StreamError> {
    let mut shutdown = state.shutdown.clone();
    let mut check = tokio::time::interval(crate::interop::POLL);
    // Stanzas handled, once the peer enabled stream management (XEP-0198 §4, mod 2^32).
    let mut handled: Option<u32> = None;
    loop {
        tokio::select! {
            ev = c.next() => match ev {
                Ok(Event::Element(st)) if st.ns == SM => {
                    match (st.name.as_str(), handled) {
                        ("enable", None) => {
                            handled = Some(0);
                            tracing::info!(provider = %peer.provider, remote = %peer.remote, "interop link in: stream management enabled");
                            if !c.write(&format!("<enabled xmlns='{SM}'/>")).await {
                                return None;
                            }
                        }
                        ("r", Some(h)) => {
                            if !c.write(&format!("<a xmlns='{SM}' h='{h}'/>")).await {
                                return None;
                            }
                        }
                        ("a", _) => {} // nothing is sent to the peer on this stream to count
                        _ => {
                            return Some(StreamError::with_text(
                                C::UnsupportedStanzaType,
                                "stream management: enable it once, then <r/> and <a/> only",
                            ));
                        }
                    }
                }
                Ok(Event::Element(st)) => {
                    let replies = match crate::component::from_remote(
                        state,
                        Source::Link(&peer.remote),
                        st,
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => return e,
                    };
                    // Handled: delivered, stored or refused (the refusal is on its way back).
                    handled = handled.map(|h| h.wrapping_add(1));
                    for r in replies {
                        answer(state, peer, r);
                    }
                }
                Ok(Event::StreamClose) => return None,
                Ok(Event::StreamOpen(_)) => return Some(StreamError::new(C::BadFormat)),
                Err(e) => return e,
            },
            _ = check.tick() => {
                if let Some(e) = revoked(state, &peer.provider, Some(&peer.pin)) {
                    return Some(e);
                }
            }
            _ = shutdown.changed() => return Some(StreamError::new(C::SystemShutdown)),
        }
    }
}

/// An answer (an error, a result) to the provider's server, over the outbound link.
fn answer(state: &Arc<ServerState>, peer: &Peer, reply: Stanza) {
    let Some(provider) = state.interop.snapshot().provider(&peer.provider).cloned() else {
        return;
    };
    if let Err(e) = super::outbound::enqueue(state, &peer.local, &peer.remote, &provider, reply) {
        tracing::debug!(provider = %peer.provider, "an answer over the link was dropped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(payload: &str, mechanism: &str) -> Stanza {
        let mut s = Stanza::new(ns::SASL, "auth");
        s.set_attr("", "mechanism", mechanism);
        s.push_text(payload);
        s
    }

    #[test]
    fn external_takes_no_authzid_or_the_stream_domain() {
        assert_eq!(check_auth(&auth("=", "EXTERNAL"), "acme.test"), None);
        assert_eq!(check_auth(&auth("", "EXTERNAL"), "acme.test"), None);
        // base64("acme.test")
        assert_eq!(
            check_auth(&auth("YWNtZS50ZXN0", "EXTERNAL"), "acme.test"),
            None
        );
        // base64("evil.test")
        assert_eq!(
            check_auth(&auth("ZXZpbC50ZXN0", "EXTERNAL"), "acme.test"),
            Some("invalid-authzid")
        );
        assert_eq!(
            check_auth(&auth("%%%", "EXTERNAL"), "acme.test"),
            Some("incorrect-encoding")
        );
        assert_eq!(
            check_auth(&auth("=", "PLAIN"), "acme.test"),
            Some("invalid-mechanism")
        );
    }
}
