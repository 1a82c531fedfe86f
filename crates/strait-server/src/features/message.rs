//! Message routing (RFC 6121 §5 and §8.5): to a bound resource, to the resources a bare JID
//! reaches, or to offline storage; errors where RFC 6121 asks for them.

use super::{blocking, carbons, delivery, mam, offline, stanza_id};
use crate::c2s::session::Session;
use crate::server::ServerState;
use delivery::Writes;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition};

/// A message from a client of this server.
pub async fn from_client(s: &mut Session, mut stanza: Stanza, to: Option<jid::Jid>) {
    // XEP-0280 §11: only the server builds carbon wrappers.
    if carbons::is_forged(&stanza) {
        s.reply_error(&stanza, carbons::forged_error());
        return;
    }
    let copies = carbons::eligible(&stanza);
    carbons::strip_private(&mut stanza);
    // An id "by" the sender's own account is the server's to assign (XEP-0359 §3.3).
    stanza_id::strip(&mut stanza, &s.bare);
    if let Some(j) = &to
        && !super::is_bare_of(j, &s.bare)
        && blocking::outbound_refused(s, &stanza, j).await
    {
        return;
    }
    // No `to`: addressed to the sender's own bare JID (RFC 6120 §10.3.1). The parts are
    // borrowed, not copied: they are only read (this runs for every message).
    let own;
    let (node, domain, resource) = match &to {
        Some(j) => (
            j.node().map(|n| n.as_str()),
            j.domain().as_str(),
            j.resource().map(|r| r.as_str()),
        ),
        None => {
            own = (
                s.bare.split_once('@').map(|(n, _)| n.to_owned()),
                s.domain.clone(),
            );
            (own.0.as_deref(), own.1.as_str(), None)
        }
    };
    let local = match s.state.config.served_domain(domain) {
        Some(d) => Some(d.to_owned()),
        // A domain served on a provider's behalf (its enlisted users).
        None => s.state.local_domain(domain),
    };
    let Some(domain) = local else {
        // To a federated provider's user, over its interop link.
        if let Some(j) = &to
            && to_link(s, &mut stanza, j, copies).await
        {
            return;
        }
        // To an external component (XEP-0114), or unreachable.
        let err = match crate::component::route(&s.state, domain, stanza.clone()) {
            Some(Ok(())) => return,
            Some(Err(e)) => e,
            None => super::unreachable_domain(domain),
        };
        if !matches!(stanza.type_.as_deref(), Some("error")) {
            s.reply_error(&stanza, err);
        }
        return;
    };
    let Some(node) = node else {
        // A message to the server itself: nothing here consumes messages.
        if !matches!(
            stanza.type_.as_deref(),
            Some("error" | "headline" | "groupchat")
        ) {
            s.reply_error(
                &stanza,
                StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
            );
        }
        return;
    };
    let mut bare = String::with_capacity(node.len() + 1 + domain.len());
    bare.push_str(node);
    bare.push('@');
    bare.push_str(&domain);
    // The sender's archive copy (XEP-0313) gets its own id, also carried by the sent carbon.
    // It is queued for the store's writer (first in, first out) before delivery, like the
    // recipient's copy, so that a reply can never land in the sender's archive ahead of the
    // message it answers.
    // Both copies and the stored copy, if any, are committed together: a held copy before
    // delivery; archive copies alone are queued before it and not waited for
    // (delivery::send_message).
    // The sender's copy (archived, carbon-copied) is made only when something takes it:
    // with archiving off and no other carbons-enabled resource, a message is routed as it
    // came, without a clone, a stanza-id and the archive's bookkeeping.
    // Between a platform user and a provider's user: the boundary policy (interop).
    if bare != s.bare
        && let Err(e) = crate::interop::boundary::check(&s.state, &s.bare, &bare, &mut stanza).await
    {
        s.reply_error(&stanza, e);
        return;
    }
    let carbon_targets = if bare != s.bare && copies {
        carbons::sent_targets(&s.state, &s.bare, &s.resource)
    } else {
        Vec::new()
    };
    let archived = bare != s.bare && s.state.config.archive.enabled && mam::archivable(&stanza);
    let mut writes = Writes::default();
    let mut sent = None;
    if archived || !carbon_targets.is_empty() {
        let mut copy = stanza.clone();
        if bare != s.bare && mam::archivable(&copy) {
            let with = match resource {
                Some(r) => format!("{bare}/{r}"),
                None => bare.clone(),
            };
            let id = stanza_id::stamp(&mut copy, &s.bare);
            let op =
                mam::archive_op(&s.state, &s.bare, &with, &id, &copy, &mut writes.stored).await;
            writes.push(op);
        }
        sent = Some(copy);
    }
    let (delivered, stanza, settling) =
        deliver_with_writes(&s.state, stanza, &bare, resource, copies, writes).await;
    s.settle_later(settling);
    match delivered {
        Ok(()) => {
            if let Some(sent) = &sent {
                carbons::send_sent(&carbon_targets, &s.bare, sent);
            }
        }
        Err(e) => s.reply_error(&stanza, e),
    }
}

/// A message to a federated provider's user (`true` if `to` is one): over the provider's
/// interop link after the boundary policy, with the sender's archive copy and carbons as for
/// a message to a local account; an error to the sender when it cannot go.
async fn to_link(s: &mut Session, stanza: &mut Stanza, to: &jid::Jid, copies: bool) -> bool {
    let Some(r) = crate::s2s::route(&s.state, &s.bare, to, stanza.clone()).await else {
        return false;
    };
    if let Err(e) = r {
        if !matches!(stanza.type_.as_deref(), Some("error")) {
            s.reply_error(stanza, e);
        }
        return true;
    }
    let targets = if copies {
        carbons::sent_targets(&s.state, &s.bare, &s.resource)
    } else {
        Vec::new()
    };
    let archived = s.state.config.archive.enabled && mam::archivable(stanza);
    if !archived && targets.is_empty() {
        return true;
    }
    let mut copy = stanza.clone();
    if archived {
        let mut writes = Writes::default();
        let id = stanza_id::stamp(&mut copy, &s.bare);
        let with = to.to_string();
        let op = mam::archive_op(&s.state, &s.bare, &with, &id, &copy, &mut writes.stored).await;
        writes.push(op);
        writes.commit(&s.state, None).await;
    }
    carbons::send_sent(&targets, &s.bare, &copy);
    true
}

/// Delivers a message to a local account by RFC 6121 §8.5's rules. An `Err` is the error the
/// sender must get; `Ok` means delivered, stored, or (for types RFC 6121 says to ignore)
/// dropped on purpose.
pub async fn deliver_local(
    state: &ServerState,
    stanza: &Stanza,
    bare: &str,
    resource: Option<&str>,
) -> Result<(), StanzaError> {
    deliver_local_with(state, stanza, bare, resource, carbons::eligible(stanza)).await
}

/// [`deliver_local`], with `copies` saying whether the recipient's carbons-enabled
/// resources get `<received/>` copies (XEP-0280). Refuses messages from JIDs the recipient
/// blocked (XEP-0191) and stamps a XEP-0359 stanza id by the recipient.
pub async fn deliver_local_with(
    state: &ServerState,
    stanza: &Stanza,
    bare: &str,
    resource: Option<&str>,
    copies: bool,
) -> Result<(), StanzaError> {
    let (result, _, settling) = deliver_with_writes(
        state,
        stanza.clone(),
        bare,
        resource,
        copies,
        Writes::default(),
    )
    .await;
    // Whoever asked hears back once the stored copy, if any, is durable.
    if let Some(settling) = settling {
        settling.await;
    }
    result
}

/// [`deliver_local_with`], committing `writes` (the sender's archive copy) with the message's
/// own writes: queued before delivery; committed before it when a copy is held for the
/// recipient or kept offline, and otherwise not waited for (delivery::send_message).
/// Also gives the message back, as delivered (private carbons stripped, stamped), for an
/// error reply: its addresses, id and type are the original's; and the commit of a copy held
/// for a client, delivered before it was durable ([`delivery::Settling`]), which the sender
/// must wait for before it counts the message as handled.
async fn deliver_with_writes(
    state: &ServerState,
    mut stanza: Stanza,
    bare: &str,
    resource: Option<&str>,
    copies: bool,
    mut writes: Writes,
) -> (Result<(), StanzaError>, Stanza, Option<delivery::Settling>) {
    let result = route(state, &mut stanza, bare, resource, copies, &mut writes).await;
    writes.commit(state, None).await;
    (result, stanza, writes.settling.take())
}

/// Routes `stanza`, which it changes in place into what is delivered (it was cloned for that
/// on every message).
async fn route(
    state: &ServerState,
    stanza: &mut Stanza,
    bare: &str,
    resource: Option<&str>,
    copies: bool,
    writes: &mut Writes,
) -> Result<(), StanzaError> {
    // The type as a `'static` name, so that the stanza can be changed in place below; a type
    // RFC 6121 does not define matches none of the named arms, as before.
    let ty = match stanza.type_.as_deref() {
        None | Some("normal") => "normal",
        Some("chat") => "chat",
        Some("error") => "error",
        Some("groupchat") => "groupchat",
        Some("headline") => "headline",
        Some(_) => "(other)",
    };
    if let Some(from) = stanza.from.as_deref()
        && from.split('/').next() != Some(bare)
        && blocking::blocks(state, bare, from).await
    {
        return match ty {
            "error" | "headline" | "groupchat" => Ok(()),
            _ => Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
        };
    }
    let stamped = stanza;
    carbons::strip_private(stamped);
    if ty != "error" {
        let id = stanza_id::stamp(stamped, bare);
        // The recipient's archive copy (XEP-0313), under the stanza-id it gets; queued before
        // delivery, and MAM queries wait for what is queued, so a client that saw the message
        // finds it in the archive.
        if let Some(from) = stamped.from.clone() {
            let op = mam::archive_op(state, bare, &from, &id, stamped, &mut writes.stored).await;
            writes.push(op);
        }
    }
    let stanza = &*stamped;
    if let Some(res) = resource {
        let sent = match ty {
            "chat" | "normal" => {
                let d = delivery::message_to_full(state, bare, res, stanza, writes).await;
                if d.resources.is_empty() && d.stored {
                    // Stored for the account: delivered with the other offline messages.
                    return Ok(());
                }
                !d.resources.is_empty()
            }
            _ => delivery::to_full(state, bare, res, stanza.clone()),
        };
        if sent {
            if copies {
                carbons::send_received(state, bare, stanza, &[res.to_owned()]);
            }
            return Ok(());
        }
        // §8.5.3.2.1: no such resource.
        match ty {
            "groupchat" => return Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
            "headline" | "error" => return Ok(()),
            _ => {} // chat and normal: treated as if sent to the bare JID
        }
    }
    if !delivery::account_exists(state, bare).await {
        return match ty {
            "error" | "headline" => Ok(()),
            _ => Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
        };
    }
    match ty {
        "groupchat" => Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
        "headline" | "error" => {
            delivery::to_available(state, bare, stanza, false);
            Ok(())
        }
        _ => {
            let got = delivery::message_to_bare_durable(state, bare, stanza, writes).await;
            if copies {
                carbons::send_received(state, bare, stanza, &got.resources);
            }
            if !got.resources.is_empty() || got.stored {
                Ok(())
            } else {
                let limit = state.config.limits.max_offline_messages;
                let op = offline::push_op(bare, stanza, limit);
                let stored = op.is_some();
                let outcome = writes.commit(state, op).await;
                offline::push_result(bare, outcome)?;
                // Kept for a device that is not connected: wake it (XEP-0357).
                if stored {
                    super::push::notify(state, bare).await;
                }
                Ok(())
            }
        }
    }
}
