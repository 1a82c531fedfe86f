//! Interop links (DESIGN.md, "The interop model"): a federated provider runs its own XMPP
//! server, and the platform exchanges its users' stanzas with that server over XMPP
//! server-to-server streams (RFC 6120), only while the provider's agreement is active.
//!
//! - A provider is federated when its registry record names its server (`link`,
//!   `host[:port]`, port 5269 by default). Its domains are then not served here: its users
//!   live on its server, and nobody logs in here under them.
//! - Both directions need TLS (STARTTLS, required) and certificate authentication (SASL
//!   EXTERNAL, XEP-0178): each side presents the certificate of its domain, and the platform
//!   accepts the provider's server only when that certificate's key is one the provider
//!   pinned (`--pin`, SHA-256 of the SubjectPublicKeyInfo), whatever CA signed it. Server
//!   dialback (XEP-0220) is not offered: a link is an agreement, not open federation.
//! - As in RFC 6120 §4, a stream carries stanzas one way: [`inbound`] streams, which the
//!   provider's server opens to `listen.s2s`, bring its users' stanzas in; [`outbound`]
//!   links, which the platform opens on the first stanza for the provider's domain, take the
//!   platform users' stanzas out.
//! - Every stanza in either direction passes the boundary policy
//!   ([`crate::interop::boundary`]) exactly as between a platform user and an enlisted
//!   provider's user: agreement active, consent, scopes, end-to-end encryption, rates, the
//!   origin stamp. A refused stanza gets its error over the link.
//! - A suspension (or termination, or a change of the link or its pins) closes the
//!   provider's links within a second ([`crate::interop::POLL`]): each link looks at the
//!   registry snapshot once a second.

pub mod inbound;
pub mod outbound;

use crate::interop::Snapshot;
use crate::server::ServerState;
use std::sync::Arc;
use std::time::Duration;
use strait_store::{Provider, ProviderStatus};
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, StreamError};

pub use outbound::Links;

/// The standard XMPP server-to-server port (RFC 6120 §14.7).
pub const DEFAULT_PORT: u16 = 5269;

/// How long a link may take to connect and authenticate.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(15);

/// A link address split into host and port: `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn split_link(link: &str) -> Option<(&str, u16)> {
    if let Some(rest) = link.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, DEFAULT_PORT)),
            p => Some((host, p.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match link.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((h, _)) if h.contains(':') => Some((link, DEFAULT_PORT)),
        Some((h, p)) => Some((h, p.parse().ok()?)),
        None => Some((link, DEFAULT_PORT)),
    }
}

/// The federated provider whose users are under `domain`, whatever its status.
pub fn federated(snapshot: &Snapshot, domain: &str) -> Option<Arc<Provider>> {
    snapshot
        .provider_of_domain(domain)
        .filter(|p| p.link.is_some())
        .cloned()
}

/// Why a running link must close now, if it must: the provider is gone from the registry,
/// no longer active, no longer federated, or no longer pins `pin`.
pub fn revoked(state: &ServerState, provider_id: &str, pin: Option<&str>) -> Option<StreamError> {
    let snapshot = state.interop.snapshot();
    let why = match snapshot.provider(provider_id) {
        None => format!("the agreement of the provider {provider_id} is terminated"),
        Some(p) if p.status != ProviderStatus::Active => format!(
            "the agreement of the provider {provider_id} is {}",
            p.status.as_str()
        ),
        Some(p) if p.link.is_none() => {
            format!("the provider {provider_id} is no longer federated")
        }
        Some(p) if pin.is_some_and(|pin| !p.cert_pins.iter().any(|x| x == pin)) => {
            format!("the provider {provider_id} no longer pins this certificate")
        }
        Some(_) => return None,
    };
    Some(StreamError::with_text(
        strait_wire::StreamErrorCondition::PolicyViolation,
        why,
    ))
}

/// Routes a stanza from the platform's account `from_bare` to an address under a federated
/// provider's domain over its link, after the boundary policy. `None` if `to` is not under
/// a federated provider's domain; `Some(Err)` is the error for the sender.
pub async fn route(
    state: &Arc<ServerState>,
    from_bare: &str,
    to: &jid::Jid,
    mut stanza: Stanza,
) -> Option<Result<(), StanzaError>> {
    if !state.interop.has_providers() {
        return None;
    }
    let remote = to.domain().as_str().to_ascii_lowercase();
    let provider = federated(&state.interop.snapshot(), &remote)?;
    let Some(node) = to.node() else {
        return Some(Err(StanzaError::with_text(
            StanzaErrorCondition::NotAllowed,
            "only stanzas between users cross an interop link",
        )));
    };
    let to_bare = format!("{}@{remote}", node.as_str());
    if let Err(e) = crate::interop::boundary::check(state, from_bare, &to_bare, &mut stanza).await {
        return Some(Err(e));
    }
    let local = from_bare
        .rsplit_once('@')
        .map_or(from_bare, |(_, d)| d)
        .to_ascii_lowercase();
    Some(outbound::enqueue(state, &local, &remote, &provider, stanza))
}

/// Whether `jid` (`user@domain/res` or a domain) is under a federated provider's domain:
/// cheap, and nothing at all when no provider is registered.
pub fn owns(state: &ServerState, jid: &str) -> bool {
    if !state.interop.has_providers() {
        return false;
    }
    let rest = jid.split('/').next().unwrap_or(jid);
    let domain = rest.rsplit_once('@').map_or(rest, |(_, d)| d);
    federated(&state.interop.snapshot(), domain).is_some()
}

/// Sends a stanza the server routes on a platform user's behalf (presence, subscription
/// changes: the caller applied the policy) over the link to the provider at its `to`.
/// Dropped when that provider's agreement is not active or the link cannot take it.
pub fn forward(state: &ServerState, stanza: Stanza) {
    let (Some(from), Some(to)) = (stanza.from.as_deref(), stanza.to.as_deref()) else {
        return;
    };
    let (Ok(from), Ok(to)) = (jid::Jid::new(from), jid::Jid::new(to)) else {
        return;
    };
    let remote = to.domain().as_str().to_ascii_lowercase();
    let Some(provider) = federated(&state.interop.snapshot(), &remote) else {
        return;
    };
    if provider.status != ProviderStatus::Active {
        return;
    }
    let Some(state) = state.me.get().and_then(std::sync::Weak::upgrade) else {
        return;
    };
    let local = from.domain().as_str().to_ascii_lowercase();
    if let Err(e) = outbound::enqueue(&state, &local, &remote, &provider, stanza) {
        tracing::debug!(%remote, "presence over the interop link dropped: {e}");
    }
}

/// A link's stream, before or after TLS.
pub(crate) type Conn<S> = crate::net::stream::XmlStream<S>;

/// A `jabber:server` stream header.
pub(crate) fn stream_header(from: &str, to: Option<&str>, id: Option<&str>) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' version='1.0' from='{}'",
        strait_wire::ns::SERVER,
        strait_wire::ns::STREAM,
        strait_wire::escape_attr(from),
    );
    if let Some(to) = to {
        h.push_str(&format!(" to='{}'", strait_wire::escape_attr(to)));
    }
    if let Some(id) = id {
        h.push_str(&format!(" id='{id}'"));
    }
    h.push('>');
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses_split_into_host_and_port() {
        assert_eq!(
            split_link("xmpp.acme.example"),
            Some(("xmpp.acme.example", 5269))
        );
        assert_eq!(
            split_link("xmpp.acme.example:5270"),
            Some(("xmpp.acme.example", 5270))
        );
        assert_eq!(split_link("127.0.0.1:25269"), Some(("127.0.0.1", 25269)));
        assert_eq!(split_link("[::1]:25269"), Some(("::1", 25269)));
        assert_eq!(split_link("[::1]"), Some(("::1", 5269)));
        assert_eq!(split_link("::1"), Some(("::1", 5269)));
        assert_eq!(split_link("host:port"), None);
        assert_eq!(split_link("host:99999"), None);
        assert_eq!(split_link("[::1]x"), None);
    }

    #[test]
    fn stream_headers_name_both_ends() {
        let h = stream_header("gk.test", Some("acme.test"), Some("abc"));
        assert!(h.contains("xmlns='jabber:server'"));
        assert!(h.contains("from='gk.test' to='acme.test' id='abc'"));
        assert!(h.contains("version='1.0'"));
    }
}
