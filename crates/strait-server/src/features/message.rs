//! Message routing (RFC 6121 §5 and §8.5): to a bound resource, to the resources a bare JID
//! reaches, or to offline storage; errors where RFC 6121 asks for them.

use super::{delivery, offline};
use crate::c2s::session::Session;
use crate::server::ServerState;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition};

/// A message from a client of this server.
pub async fn from_client(s: &mut Session, stanza: Stanza, to: Option<jid::Jid>) {
    // No `to`: addressed to the sender's own bare JID (RFC 6120 §10.3.1).
    let (node, domain, resource) = match &to {
        Some(j) => (
            j.node().map(|n| n.as_str().to_owned()),
            j.domain().as_str().to_owned(),
            j.resource().map(|r| r.as_str().to_owned()),
        ),
        None => (
            s.bare.split_once('@').map(|(n, _)| n.to_owned()),
            s.domain.clone(),
            None,
        ),
    };
    let Some(domain) = s.state.config.served_domain(&domain).map(str::to_owned) else {
        s.reply_error(&stanza, super::unreachable_domain(&domain));
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
    let bare = format!("{node}@{domain}");
    if let Err(e) = deliver_local(&s.state, &stanza, &bare, resource.as_deref()).await {
        s.reply_error(&stanza, e);
    }
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
    let ty = stanza.type_.as_deref().unwrap_or("normal");
    if let Some(res) = resource {
        if delivery::to_full(state, bare, res, stanza.clone()) {
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
            if delivery::message_to_bare(state, bare, stanza) > 0 {
                Ok(())
            } else {
                offline::store(state, bare, stanza).await
            }
        }
    }
}
