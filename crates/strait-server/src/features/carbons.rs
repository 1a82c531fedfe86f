//! Message Carbons (XEP-0280 v1.0): copies of a user's chats for the user's other devices.
//!
//! A resource enables carbons with an IQ; from then on it gets a `<sent/>` copy of eligible
//! messages its account's other resources send, and a `<received/>` copy of eligible
//! messages to its account that it did not get directly. The server builds every wrapper;
//! a client that sends one is refused (XEP-0280 §11: a forged carbon would let one user
//! put words in another's mouth, as in CVE-2017-5589).

use std::sync::Arc;

use super::iq_result;
use crate::c2s::session::Session;
use crate::router::Resource;
use crate::server::ServerState;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, ns};

pub const NS: &str = "urn:xmpp:carbons:2";
pub const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";

/// Namespaces of IM payloads that make a message without a body worth copying (XEP-0280
/// §6: receipts, chat states, markers; and the reactions and retractions of a conversation).
const IM_PAYLOADS: &[&str] = &[
    "urn:xmpp:receipts",
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:reactions:0",
    "urn:xmpp:message-retract:1",
    "urn:xmpp:fasten:0",
    "eu.siacs.conversations.axolotl",
    "urn:xmpp:omemo:2",
];

/// The enable/disable IQ (XEP-0280 §4, §5), answered for the sending resource only.
pub fn handle(s: &mut Session, stanza: &Stanza, el: &minidom::Element) {
    let enable = match el.name() {
        "enable" => true,
        "disable" => false,
        _ => {
            return s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::BadRequest));
        }
    };
    s.state
        .router
        .update(&s.bare, &s.resource, s.conn_id, |r| r.carbons = enable);
    s.reply(iq_result(stanza, None));
}

/// Whether a message is copied (XEP-0280 §6), judged before `<private/>` is stripped.
/// Error messages are not copied: the server does not track what they answer.
pub fn eligible(m: &Stanza) -> bool {
    if m.has_child(NS, "private") || m.has_child(HINTS, "no-copy") {
        return false;
    }
    match m.type_.as_deref().unwrap_or("normal") {
        "chat" => true,
        "normal" => {
            m.has_child(ns::CLIENT, "body")
                || m.children()
                    .iter()
                    .any(|c| IM_PAYLOADS.contains(&c.ns.as_str()))
        }
        _ => false,
    }
}

/// Whether a client-sent message carries a carbon wrapper, which only the server may build.
pub fn is_forged(m: &Stanza) -> bool {
    m.has_child(NS, "sent") || m.has_child(NS, "received")
}

/// Removes `<private/>` before delivery: it is an instruction to this server, not content.
pub fn strip_private(m: &mut Stanza) {
    m.remove_children(|c| c.ns == NS && c.name == "private");
}

/// The error for a client-sent carbon wrapper.
pub fn forged_error() -> StanzaError {
    StanzaError::with_text(
        StanzaErrorCondition::NotAcceptable,
        "carbon copies are built by the server; a client may not send them",
    )
}

/// `<message from=bare to=full><{kind}><forwarded><message…/></forwarded></{kind}></message>`.
fn wrap(kind: &str, bare: &str, to: &str, m: &Stanza) -> Option<Stanza> {
    let mut w = super::server_stanza("message", m.type_.as_deref(), bare, to, None);
    // Written with an explicit xmlns: inside <forwarded/> it is no longer the stream's content.
    let inner = m.to_xml("");
    let xml =
        format!("<{kind} xmlns='{NS}'><forwarded xmlns='{FORWARD}'>{inner}</forwarded></{kind}>");
    match w.try_push_child_xml(&xml) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::error!("building a carbon: {e}");
            None
        }
    }
}

/// `<sent/>` copies to the sender's other carbons-enabled resources.
/// The resources that get `<sent/>` copies of what `resource` of `bare` sends: the account's
/// other carbons-enabled resources. Looked up before the message is routed, so that a sender
/// without any (the usual case) costs no copy of the message.
pub fn sent_targets(state: &ServerState, bare: &str, resource: &str) -> Vec<Arc<Resource>> {
    state
        .router
        .resources_where(bare, |r| r.carbons && r.resource != resource)
}

/// `<sent/>` copies of `m` to `targets` ([`sent_targets`]).
pub fn send_sent(targets: &[Arc<Resource>], bare: &str, m: &Stanza) {
    for r in targets {
        if let Some(w) = wrap("sent", bare, &r.full, m) {
            r.send(w);
        }
    }
}

/// `<received/>` copies to the recipient's carbons-enabled resources that did not get the
/// message itself (`got`), nor sent it (a message between two resources of one account).
pub fn send_received(state: &ServerState, bare: &str, m: &Stanza, got: &[String]) {
    let eligible = |r: &crate::router::Resource| {
        r.carbons && !got.contains(&r.resource) && m.from.as_deref() != Some(r.full.as_str())
    };
    for r in state.router.resources_where(bare, eligible) {
        if let Some(w) = wrap("received", bare, &r.full, m) {
            r.send(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::offline::parse_stored;

    fn msg(attrs: &str, children: &str) -> Stanza {
        parse_stored(&format!("<message to='b@x' {attrs}>{children}</message>")).unwrap()
    }

    #[test]
    fn eligibility() {
        assert!(eligible(&msg("type='chat'", "<body>hi</body>")));
        assert!(eligible(&msg("type='chat'", "")));
        assert!(eligible(&msg("", "<body>hi</body>")));
        assert!(eligible(&msg(
            "",
            "<received xmlns='urn:xmpp:receipts' id='x'/>"
        )));
        assert!(eligible(&msg(
            "type='normal'",
            "<displayed xmlns='urn:xmpp:chat-markers:0' id='x'/>"
        )));
        assert!(!eligible(&msg("", "<x xmlns='jabber:x:data'/>")));
        assert!(!eligible(&msg("type='groupchat'", "<body>hi</body>")));
        assert!(!eligible(&msg("type='headline'", "<body>hi</body>")));
        assert!(!eligible(&msg("type='error'", "<body>hi</body>")));
        assert!(!eligible(&msg(
            "type='chat'",
            "<body>hi</body><private xmlns='urn:xmpp:carbons:2'/>"
        )));
        assert!(!eligible(&msg(
            "type='chat'",
            "<body>hi</body><no-copy xmlns='urn:xmpp:hints'/>"
        )));
    }

    #[test]
    fn wrapper_forwards_the_message_in_jabber_client() {
        let mut m = msg("type='chat' id='m1'", "<body>a &amp; b</body>");
        m.from = Some("a@x/r1".into());
        let w = wrap("sent", "a@x", "a@x/r2", &m).unwrap();
        let xml = w.to_xml(ns::CLIENT);
        assert!(
            xml.starts_with("<message type='chat' from='a@x' to='a@x/r2'>"),
            "{xml}"
        );
        assert!(
            xml.contains("<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m1' type='chat' from='a@x/r1' to='b@x'><body>a &amp; b</body></message></forwarded></sent>"),
            "{xml}"
        );
        assert!(is_forged(&w));
        let mut p = msg(
            "type='chat'",
            "<body>x</body><private xmlns='urn:xmpp:carbons:2'/>",
        );
        strip_private(&mut p);
        assert!(!p.has_child(NS, "private") && p.has_child(ns::CLIENT, "body"));
    }
}
