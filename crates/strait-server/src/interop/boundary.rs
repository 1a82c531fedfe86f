//! The boundary policy (DESIGN.md): every stanza from one party's user to another party's
//! user passes it before it is routed, stored or archived. The parties are the platform
//! (its own domains) and each provider (its domains); components and the servers' own
//! addresses are services, not parties.
//!
//! In order, for a stanza between a platform user and a provider's user:
//! 1. the provider's agreement is active (`not-allowed`, saying its status);
//! 2. the platform user opted in to third-party chats and to this provider: the recipient
//!    of an inbound stanza, the sender of an outbound one (`not-allowed`; the same answer
//!    whether or not the account exists);
//! 3. the agreement's scopes cover it: a call offer needs `calls`, a group invitation
//!    `groups`, any other message content `text` (`feature-not-implemented`);
//! 4. a message with content is end-to-end encrypted (an OMEMO `<encrypted/>`), otherwise
//!    `policy-violation`; receipts, chat states, markers and other content-free elements
//!    pass; a `<body/>` next to the ciphertext (OMEMO's fallback text) is replaced by the
//!    server's own [`FALLBACK`] notice, so that whatever the sender wrote in plaintext stays
//!    behind while clients that only act on messages with a body (slixmpp, for one) still see
//!    one;
//! 5. what a provider's users send across (messages, presence, IQs) keeps within the
//!    provider's rate and its sender's (`resource-constraint`, type wait);
//! 6. an inbound message is stamped `<origin xmlns='urn:strait:interop:0' provider=… name=…/>`
//!    for clients to place it in the third-party section (an `<origin/>` a client sent is
//!    removed from every message).
//!
//! Between users of two different providers nothing passes (`not-allowed`): those chats are
//! not the platform's to carry. A refused stanza gets its error and nothing of it is stored.

use super::{NS, Snapshot};
use crate::server::ServerState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use strait_store::{Provider, ProviderStatus, Scope};
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition as Cond, StanzaKind};

/// OMEMO 0.3 (`eu.siacs.conversations.axolotl`) and OMEMO 2 payloads.
const ENCRYPTED: [&str; 2] = ["eu.siacs.conversations.axolotl", "urn:xmpp:omemo:2"];

/// Message children that carry no content of their own and may cross unencrypted.
const CONTENT_FREE: &[&str] = &[
    "urn:xmpp:receipts",                     // XEP-0184 delivery receipts
    "http://jabber.org/protocol/chatstates", // XEP-0085 chat states
    "urn:xmpp:chat-markers:0",               // XEP-0333 markers
    "urn:xmpp:hints",                        // XEP-0334 processing hints
    "urn:xmpp:sid:0",                        // XEP-0359 origin-id
    "urn:xmpp:delay",                        // XEP-0203 delay
    "urn:xmpp:eme:0",                        // XEP-0380 encryption marker
    "urn:xmpp:carbons:2",                    // XEP-0280 <private/>, removed before
    "http://jabber.org/protocol/address",    // XEP-0033 addressing
    "urn:xmpp:message-correct:0",            // XEP-0308: the corrected content is encrypted
    "urn:xmpp:fallback:0",                   // XEP-0428 fallback markers
    "urn:xmpp:reply:0",                      // XEP-0461: points at a message by id
    // XEP-0163 notifications of a user's PEP nodes (OMEMO device lists, avatars): what the
    // server fans out to subscribed contacts, which between a platform user and an enlisted
    // one crosses by subscription too ([`shares`]); over an interop link it is a message.
    "http://jabber.org/protocol/pubsub#event",
    NS, // <origin/>, removed before
];

/// The fallback text of an encrypted message that crosses (XEP-0384 §5.3 asks for one, for
/// clients without OMEMO).
pub const FALLBACK: &str =
    "This message is end-to-end encrypted (OMEMO); your client cannot show it.";

/// Call offers (XEP-0353) and group invitations (XEP-0249, XEP-0045 mediated).
const CALLS: &[&str] = &["urn:xmpp:jingle-message:0", "urn:xmpp:jingle:1"];
const GROUPS: &[&str] = &["jabber:x:conference", "http://jabber.org/protocol/muc#user"];

/// Which side of the boundary an account is on.
#[derive(Clone, Debug)]
pub enum Party {
    Platform,
    Provider(Arc<Provider>),
    /// Not a user of the platform or a provider: a component, an unknown domain.
    Service,
}

/// The party of an account under `domain`.
pub fn party(state: &ServerState, snapshot: &Snapshot, domain: &str) -> Party {
    if state.config.served_domain(domain).is_some() {
        return Party::Platform;
    }
    match snapshot.provider_of_domain(domain) {
        Some(p) => Party::Provider(p.clone()),
        None => Party::Service,
    }
}

fn refuse(cond: Cond, text: String) -> StanzaError {
    StanzaError::with_text(cond, text)
}

fn domain_of(bare: &str) -> &str {
    bare.rsplit_once('@').map_or(bare, |(_, d)| d)
}

/// Removes client-made `<origin/>` stamps: only the server stamps origins.
pub fn strip_forged_origin(stanza: &mut Stanza) {
    if stanza.kind == StanzaKind::Message && stanza.has_child(NS, "origin") {
        stanza.remove_children(|c| c.ns == NS && c.name == "origin");
    }
}

/// Runs the policy on a stanza from the account `from_bare` to the account `to_bare`
/// (a bare JID; stanzas to a server or service do not cross). `Ok` lets it through, changed
/// as the policy says (origin stamp, fallback body removed).
pub async fn check(
    state: &ServerState,
    from_bare: &str,
    to_bare: &str,
    stanza: &mut Stanza,
) -> Result<(), StanzaError> {
    if !state.interop.has_providers() {
        return Ok(());
    }
    let mut crossing = None;
    let r = policy(state, from_bare, to_bare, stanza, &mut crossing).await;
    if let Some((provider, inbound)) = crossing {
        let refused = r.as_ref().err().map(|e| e.condition.as_str());
        state.metrics.crossing(&provider.id, inbound, refused);
    }
    r
}

/// [`check`]'s rules; `crossing` is set to the provider and the direction (inbound: from its
/// user) once the stanza is known to cross.
async fn policy(
    state: &ServerState,
    from_bare: &str,
    to_bare: &str,
    stanza: &mut Stanza,
    crossing: &mut Option<(Arc<Provider>, bool)>,
) -> Result<(), StanzaError> {
    strip_forged_origin(stanza);
    let snapshot = state.interop.snapshot();
    let (from, to) = (
        party(state, &snapshot, domain_of(from_bare)),
        party(state, &snapshot, domain_of(to_bare)),
    );
    let (provider, platform_user, inbound) = match (&from, &to) {
        (Party::Provider(p), Party::Platform) => (p.clone(), to_bare, true),
        (Party::Platform, Party::Provider(p)) => (p.clone(), from_bare, false),
        (Party::Provider(a), Party::Provider(b)) if a.id != b.id => {
            *crossing = Some((a.clone(), true));
            return Err(refuse(
                Cond::NotAllowed,
                "chats between users of two different providers do not go through this platform"
                    .into(),
            ));
        }
        _ => return Ok(()),
    };
    *crossing = Some((provider.clone(), inbound));
    // Errors bounce back without a second check: refusing them would only hide the first.
    if stanza.type_.as_deref() == Some("error") {
        return Ok(());
    }
    // 1. The agreement.
    active(&provider)?;
    // 2. Consent.
    if !consents(state, platform_user, &provider.id).await? {
        return Err(refuse(
            Cond::NotAllowed,
            if inbound {
                format!(
                    "the recipient does not accept chats from {} ({})",
                    provider.name, provider.id
                )
            } else {
                format!(
                    "third-party chats with {} ({}) are off for your account: turn them on first ({NS} consent)",
                    provider.name, provider.id
                )
            },
        ));
    }
    // 3 and 4: scope and encryption.
    if stanza.kind == StanzaKind::Message {
        check_content(&provider, stanza)?;
    }
    // 5. Rates: everything the provider's users send across counts (messages, and presence
    // and IQs, so that subscription requests cannot flood the platform's users either).
    if inbound {
        state
            .interop
            .rates
            .admit(&provider, from_bare, Instant::now())?;
    }
    if stanza.kind != StanzaKind::Message {
        return Ok(());
    }
    // 6. The origin stamp.
    if inbound {
        stanza.push_empty_child(
            NS,
            "origin",
            &[
                ("provider", provider.id.as_str()),
                ("name", provider.name.as_str()),
            ],
        );
    }
    Ok(())
}

/// Rule 1: the provider's agreement is active.
fn active(provider: &Provider) -> Result<(), StanzaError> {
    if provider.status == ProviderStatus::Active {
        return Ok(());
    }
    Err(refuse(
        Cond::NotAllowed,
        format!(
            "the agreement of the provider {} is {}",
            provider.id,
            provider.status.as_str()
        ),
    ))
}

/// Rule 2's question: whether the platform user accepts chats with the provider's users
/// (from the consent cache, or read from the store into it: a change through the consent IQ
/// applies to the next stanza, one by another process within the registry poll's second).
async fn consents(
    state: &ServerState,
    platform_user: &str,
    provider: &str,
) -> Result<bool, StanzaError> {
    let cache = &state.interop.consents;
    if let Some(c) = cache.get(platform_user) {
        return Ok(c.allows(provider));
    }
    let generation = cache.generation();
    let owner = platform_user.to_owned();
    match state.store(move |s| s.consent(&owner)).await {
        Ok(c) => {
            let allows = c.allows(provider);
            cache.insert(platform_user, c, generation);
            Ok(allows)
        }
        Err(e) => {
            tracing::error!("consent of {platform_user}: {e}");
            Err(StanzaError::new(Cond::InternalServerError))
        }
    }
}

fn needs_scope(provider: &Provider, scope: Scope, what: &str) -> Result<(), StanzaError> {
    if provider.scopes.contains(&scope) {
        return Ok(());
    }
    Err(refuse(
        Cond::FeatureNotImplemented,
        format!(
            "{what} with users of {} are not part of its agreement (scope {})",
            provider.id,
            scope.as_str()
        ),
    ))
}

/// Rules 3 and 4 on a message's children (the fallback body's replacement included).
fn check_content(provider: &Provider, stanza: &mut Stanza) -> Result<(), StanzaError> {
    let children = stanza.children();
    if children.iter().any(|c| CALLS.contains(&c.ns.as_str())) {
        needs_scope(provider, Scope::Calls, "calls")?;
    }
    if children.iter().any(|c| GROUPS.contains(&c.ns.as_str())) {
        needs_scope(provider, Scope::Groups, "group chats")?;
    }
    let encrypted = children
        .iter()
        .any(|c| c.name == "encrypted" && ENCRYPTED.contains(&c.ns.as_str()));
    let plaintext = children.iter().find(|c| {
        let ns = c.ns.as_str();
        let metadata = CONTENT_FREE.contains(&ns) || CALLS.contains(&ns) || GROUPS.contains(&ns);
        let ciphertext = c.name == "encrypted" && ENCRYPTED.contains(&ns);
        // OMEMO's fallback text, replaced below.
        let fallback = encrypted && c.name == "body" && c.ns == stanza.ns;
        !(metadata || ciphertext || fallback)
    });
    if let Some(c) = plaintext {
        let what = if c.name == "body" && c.ns == stanza.ns {
            "a plaintext <body/>".to_owned()
        } else {
            format!("<{} xmlns='{}'/>", c.name, c.ns)
        };
        return Err(refuse(
            Cond::PolicyViolation,
            format!(
                "messages to or from another provider's users must be end-to-end encrypted (OMEMO); {what} is not"
            ),
        ));
    }
    if encrypted {
        needs_scope(provider, Scope::Text, "messages")?;
        let ns = stanza.ns.clone();
        if stanza.has_child(&ns, "body") {
            stanza.remove_children(|c| c.name == "body" && c.ns == ns);
            stanza.push_child_xml(&format!("<body xmlns='{ns}'>{FALLBACK}</body>"));
        }
    }
    Ok(())
}

/// Whether presence and PEP events (OMEMO device lists, avatars) may flow between the accounts
/// `a` and `b` now, through subscriptions granted earlier: the server's own fan-out, which
/// [`check`] does not see. Across the boundary it needs what rules 0 to 2 need: not two
/// providers, the agreement active, the platform user's consent. So a user who revokes
/// consent stops showing (and seeing) presence at once, without ending the subscriptions.
pub async fn shares(state: &ServerState, a: &str, b: &str) -> bool {
    if !state.interop.has_providers() {
        return true;
    }
    let snapshot = state.interop.snapshot();
    let (pa, pb) = (
        party(state, &snapshot, domain_of(a)),
        party(state, &snapshot, domain_of(b)),
    );
    let (provider, platform_user) = match (&pa, &pb) {
        (Party::Provider(p), Party::Platform) => (p, b),
        (Party::Platform, Party::Provider(p)) => (p, a),
        (Party::Provider(x), Party::Provider(y)) => return x.id == y.id,
        _ => return true,
    };
    provider.status == ProviderStatus::Active
        && consents(state, platform_user, &provider.id)
            .await
            .unwrap_or(false)
}

/// Whether a provider's user (an account under `domain`) may ask the platform's upload service
/// for a slot for a file of `content_type`: images, audio and video need the `media` scope,
/// other files `files` (DMA Art. 7: images, voice messages, videos and files). `platform`
/// says the request went to the platform's own service (its first domain's), the one a
/// provider's users upload through.
pub fn upload_allowed(
    state: &ServerState,
    domain: &str,
    platform: bool,
    content_type: Option<&str>,
) -> Result<(), StanzaError> {
    let snapshot = state.interop.snapshot();
    let Some(p) = snapshot.provider_of_domain(domain) else {
        return Err(refuse(
            Cond::NotAllowed,
            "only this platform's and its providers' users may upload here".into(),
        ));
    };
    if !platform {
        return Err(refuse(
            Cond::NotAllowed,
            format!(
                "users of {} upload through upload.{}",
                p.id, state.config.domains[0]
            ),
        ));
    }
    active(p)?;
    let media = content_type.is_some_and(|t| {
        let t = t.trim().to_ascii_lowercase();
        ["image/", "audio/", "video/"]
            .iter()
            .any(|m| t.starts_with(m))
    });
    if media {
        needs_scope(p, Scope::Media, "images, voice messages and videos")
    } else {
        needs_scope(p, Scope::Files, "files")
    }
}

/// Token buckets for the providers' message rates (whole provider, and each sender).
#[derive(Default)]
pub struct Rates {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most buckets kept; past it, the full ones (idle senders) are forgotten.
const MAX_BUCKETS: usize = 100_000;

impl Bucket {
    /// Takes one token from a bucket of `rate` per second (burst of one second's worth).
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate)
            .min(rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Rates {
    /// Counts one message from `sender` (a user of `provider`), or refuses it.
    pub fn admit(
        &self,
        provider: &Provider,
        sender: &str,
        now: Instant,
    ) -> Result<(), StanzaError> {
        let mut b = self.buckets.lock().expect("rates lock");
        if b.len() > MAX_BUCKETS {
            b.retain(|_, v| now.saturating_duration_since(v.at).as_secs() < 2);
        }
        let mut take = |key: String, rate: u32| {
            b.entry(key)
                .or_insert(Bucket {
                    tokens: f64::from(rate).max(1.0),
                    at: now,
                })
                .take(rate, now)
        };
        if let Some(r) = provider.user_rate_per_sec
            && !take(format!("u {sender}"), r)
        {
            return Err(rate_error(format!(
                "you are sending more than {r} stanzas a second to this platform's users"
            )));
        }
        if let Some(r) = provider.rate_per_sec
            && !take(format!("p {}", provider.id), r)
        {
            return Err(rate_error(format!(
                "the provider {} is sending more than its {r} stanzas a second",
                provider.id
            )));
        }
        Ok(())
    }
}

fn rate_error(text: String) -> StanzaError {
    // resource-constraint is of type wait (RFC 6120 §8.3.3.18): try again later.
    refuse(Cond::ResourceConstraint, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn provider(scopes: &[Scope]) -> Provider {
        let mut p = Provider::new("acme", "Acme", vec!["acme.example".into()]);
        p.status = ProviderStatus::Active;
        p.scopes = scopes.to_vec();
        p
    }

    fn message(inner: &str) -> Stanza {
        let xml = format!(
            "<message xmlns='jabber:client' to='a@host.example' type='chat'>{inner}</message>"
        );
        let mut parser = strait_wire::StreamParser::new(strait_wire::Limits::authenticated());
        parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='host.example' version='1.0'>");
        parser.feed(xml.as_bytes());
        loop {
            match parser.next_event().unwrap() {
                Some(strait_wire::Event::Element(s)) => return s,
                Some(_) => {}
                None => panic!("no stanza in {xml}"),
            }
        }
    }

    const OMEMO: &str = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><iv>AAAA</iv></header><payload>AAAA</payload></encrypted>";

    #[test]
    fn only_ciphertext_crosses() {
        let p = provider(&[Scope::Text]);
        let mut m = message(&format!(
            "<body>my secret in the clear</body>{OMEMO}<store xmlns='urn:xmpp:hints'/>"
        ));
        check_content(&p, &mut m).unwrap();
        assert_eq!(
            m.text_of_child("jabber:client", "body").as_deref(),
            Some(FALLBACK)
        );
        assert!(!m.inner_xml().contains("my secret"), "{}", m.inner_xml());
        // Without a body, none is added.
        let mut m = message(OMEMO);
        check_content(&p, &mut m).unwrap();
        assert!(!m.has_child("jabber:client", "body"));
        let mut m = message(&format!(
            "<body>x</body>{OMEMO}<store xmlns='urn:xmpp:hints'/>"
        ));
        check_content(&p, &mut m).unwrap();
        assert!(m.has_child("eu.siacs.conversations.axolotl", "encrypted"));
        assert!(m.has_child("urn:xmpp:hints", "store"));

        let e = check_content(&p, &mut message("<body>hello</body>")).unwrap_err();
        assert_eq!(e.condition, Cond::PolicyViolation);
        assert!(e.text.as_deref().unwrap().contains("plaintext <body/>"));
        // Content beside the ciphertext that is not the fallback body is refused too.
        let e = check_content(
            &p,
            &mut message(&format!(
                "{OMEMO}<x xmlns='jabber:x:oob'><url>https://x/y.jpg</url></x>"
            )),
        )
        .unwrap_err();
        assert_eq!(e.condition, Cond::PolicyViolation);
        assert!(e.text.as_deref().unwrap().contains("jabber:x:oob"), "{e:?}");
        // A fake <encrypted/> in another namespace is content, not ciphertext.
        assert!(
            check_content(
                &p,
                &mut message("<encrypted xmlns='urn:example'/><body>x</body>")
            )
            .is_err()
        );
        // Content-free messages pass.
        for free in [
            "<received xmlns='urn:xmpp:receipts' id='m1'/>",
            "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
            "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>",
            "",
        ] {
            let mut m = message(free);
            check_content(&p, &mut m).unwrap();
            assert!(!m.inner_xml().contains("<body"), "{free}");
        }
    }

    #[test]
    fn scopes_decide_calls_groups_and_text() {
        let text = provider(&[Scope::Text]);
        let e = check_content(
            &text,
            &mut message("<propose xmlns='urn:xmpp:jingle-message:0' id='c1'/>"),
        )
        .unwrap_err();
        assert_eq!(e.condition, Cond::FeatureNotImplemented);
        assert!(e.text.as_deref().unwrap().contains("scope calls"));
        let e = check_content(
            &text,
            &mut message("<x xmlns='jabber:x:conference' jid='room@muc.example'/>"),
        )
        .unwrap_err();
        assert!(e.text.as_deref().unwrap().contains("scope groups"));
        let all = provider(&[Scope::Text, Scope::Calls, Scope::Groups]);
        check_content(
            &all,
            &mut message("<propose xmlns='urn:xmpp:jingle-message:0' id='c1'/>"),
        )
        .unwrap();
        let media = provider(&[Scope::Media]);
        let e = check_content(&media, &mut message(OMEMO)).unwrap_err();
        assert!(e.text.as_deref().unwrap().contains("scope text"));
    }

    #[test]
    fn rates_hold_per_sender_and_per_provider() {
        let mut p = provider(&[Scope::Text]);
        p.user_rate_per_sec = Some(2);
        p.rate_per_sec = Some(3);
        let r = Rates::default();
        let t0 = Instant::now();
        assert!(r.admit(&p, "a@acme.example", t0).is_ok());
        assert!(r.admit(&p, "a@acme.example", t0).is_ok());
        let e = r.admit(&p, "a@acme.example", t0).unwrap_err();
        assert_eq!(e.condition, Cond::ResourceConstraint);
        assert!(e.text.unwrap().contains("more than 2 stanzas a second"));
        // Another sender has its own bucket, but the provider's is shared: 3 a second.
        assert!(r.admit(&p, "b@acme.example", t0).is_ok());
        let e = r.admit(&p, "b@acme.example", t0).unwrap_err();
        assert!(e.text.unwrap().contains("the provider acme"));
        // Buckets refill with time.
        let later = t0 + Duration::from_secs(1);
        assert!(r.admit(&p, "a@acme.example", later).is_ok());
    }
}
