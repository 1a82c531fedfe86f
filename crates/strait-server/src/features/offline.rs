//! Offline messages (XEP-0160): stored durably when an account has no available resource,
//! stamped with a XEP-0203 delay, delivered in order when the account next sends initial
//! presence, and deleted only once the client has them: acknowledged under stream management
//! (XEP-0198), else written to its socket.
//!
//! The same queue makes live delivery durable: a message for a resource that acknowledges
//! stanzas is stored before it is sent and deleted on acknowledgement, so a lost connection or
//! a killed server leaves it here, to be delivered again.

use super::{attr, now_ms, xep0082_stamp};
use crate::c2s::session::Session;
use crate::server::ServerState;
use strait_store::{StoreError, WriteOp, WriteOutcome};
use strait_wire::{Limits, Stanza, StanzaError, StanzaErrorCondition, StreamParser, ns};

const DELAY: &str = "urn:xmpp:delay";
const HINTS: &str = "urn:xmpp:hints";
/// Most stored messages written to a client in one go (a page); the next page follows once
/// this one is written out and, under stream management, mostly acknowledged
/// ([`page_size`], [`more_fits`]).
const BATCH: usize = 500;

/// The stored messages written to a client in one go: [`BATCH`], or a quarter of
/// `stream_management.max_unacked` when that is less (250 by default).
pub fn page_size(state: &ServerState) -> usize {
    BATCH
        .min(state.config.stream_management.max_unacked / 4)
        .max(1)
}

/// Whether another page may go to a client with `unacked` stanzas not acknowledged (under
/// stream management): when that page leaves them at most half of `max_unacked`, so that
/// pages never take a client past its limit (it would be disconnected), live stanzas
/// arriving meanwhile included.
pub fn more_fits(state: &ServerState, unacked: usize) -> bool {
    unacked + page_size(state) <= state.config.stream_management.max_unacked / 2
}

/// Payloads that change what a conversation shows, stored even without a body so that a client
/// coming back sees them: reactions (XEP-0444), retractions (XEP-0424, `:1` and the fastened
/// `:0`), corrections (XEP-0308) and chat markers (XEP-0333).
const CONVERSATION_PAYLOADS: &[(&str, &str)] = &[
    ("urn:xmpp:reactions:0", "reactions"),
    ("urn:xmpp:message-retract:1", "retract"),
    ("urn:xmpp:message-retract:0", "retract"),
    ("urn:xmpp:fasten:0", "apply-to"),
    ("urn:xmpp:message-correct:0", "replace"),
    ("urn:xmpp:chat-markers:0", "displayed"),
    ("urn:xmpp:chat-markers:0", "received"),
    ("urn:xmpp:chat-markers:0", "acknowledged"),
];

/// Whether a message is worth keeping for later (XEP-0160, XEP-0334): it has content a person
/// reads (a body, an encrypted payload, a subject), a receipt, a reaction, retraction,
/// correction or marker, or a `<store/>` hint, and is not hinted away. Chat states and other
/// transient notifications are not stored.
pub fn should_store(m: &Stanza) -> bool {
    if m.has_child(HINTS, "no-store") || m.has_child(HINTS, "no-permanent-store") {
        return false;
    }
    if CONVERSATION_PAYLOADS
        .iter()
        .any(|(n, name)| m.has_child(n, name))
    {
        return true;
    }
    m.has_child(ns::CLIENT, "body")
        || m.has_child(ns::CLIENT, "subject")
        || m.has_child("eu.siacs.conversations.axolotl", "encrypted")
        || m.has_child("urn:xmpp:omemo:2", "encrypted")
        || m.has_child("urn:xmpp:receipts", "received")
        || m.has_child(HINTS, "store")
}

/// Stores a message for `bare`. Past the account's quota the sender gets
/// `resource-constraint` and nothing is dropped silently.
pub async fn store(state: &ServerState, bare: &str, message: &Stanza) -> Result<(), StanzaError> {
    let limit = state.config.limits.max_offline_messages;
    let Some(op) = push_op(bare, message, limit) else {
        return Ok(());
    };
    let outcome = state.write_batch(vec![op]).await.pop();
    push_result(bare, outcome).map(|_| ())
}

/// The write that stores a message for `bare` (stamped with a XEP-0203 delay), to commit with
/// others; `None` when the message is not worth keeping. `limit` is the account's quota
/// (`usize::MAX` for a copy held while a resource that acknowledges stanzas gets it: those
/// rows are bounded by `stream_management.max_unacked` per session).
pub fn push_op(bare: &str, message: &Stanza, limit: usize) -> Option<WriteOp> {
    if !should_store(message) {
        return None;
    }
    let now = now_ms();
    let mut m = message.clone();
    // A client could forge a delay "from" our domain; only ours may say so.
    let domain = bare.rsplit_once('@').map(|(_, d)| d).unwrap_or(bare);
    m.push_child_xml(&format!(
        "<delay xmlns='{DELAY}'{}{}>Offline storage</delay>",
        attr("from", domain),
        attr("stamp", &xep0082_stamp(now))
    ));
    Some(WriteOp::OfflinePush {
        owner: bare.to_owned(),
        stanza: m.to_xml(ns::CLIENT),
        stamp_ms: now,
        limit,
        id: None,
    })
}

/// The row id of a [`push_op`], or the error the sender gets.
pub fn push_result(bare: &str, outcome: Option<WriteOutcome>) -> Result<Option<i64>, StanzaError> {
    match outcome {
        Some(Ok(id)) => Ok(id),
        None => Ok(None),
        Some(Err(StoreError::QuotaExceeded { limit, .. })) => Err(StanzaError {
            error_type: strait_wire::ErrorType::Wait,
            condition: StanzaErrorCondition::ResourceConstraint,
            text: Some(format!(
                "the recipient is offline and already has {limit} messages waiting; try again later"
            )),
            by: None,
        }),
        // Removed since routing found it (`strait user remove` while the server runs): the
        // answer a message to a missing account gets.
        Some(Err(StoreError::NotFound(_))) => {
            Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable))
        }
        Some(Err(e)) => {
            tracing::error!(account = bare, "storing an offline message: {e}");
            Err(StanzaError::with_text(
                StanzaErrorCondition::InternalServerError,
                "the message could not be stored",
            ))
        }
    }
}

/// Deletes stored messages the account's client now has. Queued, not awaited: until it
/// commits, the worst a crash can do is deliver them again; [`deliver`] waits for it.
pub fn delete(state: &ServerState, bare: &str, ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    state.write_batch_detached(
        vec![WriteOp::OfflineDelete {
            owner: bare.to_owned(),
            ids,
        }],
        "deleting delivered stored messages",
    );
}

/// Parses a stored message back into a stanza.
pub fn parse_stored(xml: &str) -> Option<Stanza> {
    let mut p = StreamParser::new(Limits {
        max_stanza_bytes: xml.len() + 1024,
        max_depth: 256,
        max_attributes: 1024,
    });
    p.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
    );
    p.feed(xml.as_bytes());
    loop {
        match p.next_event() {
            Ok(Some(strait_wire::Event::Element(s))) => return Some(s),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Writes the account's stored messages to this session, oldest first: the first page
/// ([`page_size`]); the connection asks for the others ([`deliver_more`]).
pub async fn deliver(s: &mut Session) {
    s.flushed.clear();
    deliver_page(s, 0).await;
}

/// Writes the next page of the account's stored messages to this session, when the last one
/// was full ([`Session::offline_after`]). Until this existed, an account with more stored
/// than a page got the rest only at its next login.
pub async fn deliver_more(s: &mut Session) {
    let after = std::mem::take(&mut s.offline_after);
    if after > 0 {
        deliver_page(s, after).await;
    }
}

/// The stored messages after row `after`, a page of them, as replies of the session.
async fn deliver_page(s: &mut Session, after: i64) {
    // Deletes of messages an earlier session (or this one) acknowledged are queued without
    // waiting: let them land first, so that what was acknowledged is not delivered again.
    s.state.store_barrier().await;
    let owner = s.bare.clone();
    let page = page_size(&s.state);
    let messages = match s
        .state
        .store(move |st| st.offline_fetch_after(&owner, after, page))
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(account = %s.bare, "reading offline messages: {e}");
            return;
        }
    };
    if messages.len() == page {
        s.offline_after = messages.iter().map(|m| m.id).max().unwrap_or(0);
    }
    s.flushed.extend(messages.iter().map(|m| m.id));
    s.flushed.sort_unstable();
    for m in messages {
        match parse_stored(&m.stanza) {
            Some(stanza) => s.reply_offline(m.id, stanza),
            None => tracing::error!(account = %s.bare, id = m.id, "unreadable stored message kept"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(children: &str) -> Stanza {
        let xml = format!("<message to='b@x' type='chat'>{children}</message>");
        parse_stored(&xml).unwrap()
    }

    #[test]
    fn what_is_stored() {
        assert!(should_store(&msg("<body>hi</body>")));
        assert!(should_store(&msg(
            "<encrypted xmlns='eu.siacs.conversations.axolotl'/>"
        )));
        assert!(!should_store(&msg(
            "<active xmlns='http://jabber.org/protocol/chatstates'/>"
        )));
        assert!(!should_store(&msg(
            "<body>x</body><no-store xmlns='urn:xmpp:hints'/>"
        )));
        assert!(should_store(&msg("<store xmlns='urn:xmpp:hints'/>")));
        assert!(should_store(&msg(
            "<reactions xmlns='urn:xmpp:reactions:0' id='m1'><reaction>👍</reaction></reactions>"
        )));
        assert!(should_store(&msg(
            "<retract xmlns='urn:xmpp:message-retract:1' id='m1'/>"
        )));
        assert!(should_store(&msg(
            "<apply-to xmlns='urn:xmpp:fasten:0' id='m1'><retract xmlns='urn:xmpp:message-retract:0'/></apply-to>"
        )));
        assert!(should_store(&msg(
            "<received xmlns='urn:xmpp:receipts' id='m1'/>"
        )));
        assert!(should_store(&msg(
            "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>"
        )));
        assert!(!should_store(&msg(
            "<reactions xmlns='urn:xmpp:reactions:0' id='m1'/><no-store xmlns='urn:xmpp:hints'/>"
        )));
    }

    #[test]
    fn stored_xml_round_trips() {
        let m = msg("<body>a &lt;b&gt; &amp; c</body>");
        let back = parse_stored(&m.to_xml(ns::CLIENT)).unwrap();
        assert_eq!(
            back.text_of_child(ns::CLIENT, "body").as_deref(),
            Some("a <b> & c")
        );
        assert_eq!(back.to.as_deref(), Some("b@x"));
    }
}
