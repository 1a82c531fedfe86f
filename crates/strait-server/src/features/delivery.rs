//! Delivery to local accounts' resources.

use crate::router::message_targets;
use crate::server::ServerState;
use strait_wire::Stanza;

/// Sends to one bound resource; false if it is not bound (or cannot take more).
pub fn to_full(state: &ServerState, bare: &str, resource: &str, stanza: Stanza) -> bool {
    match state.router.resource(bare, resource) {
        Some(r) => r.send(stanza),
        None => false,
    }
}

/// Sends a copy to every available resource of `bare`, with `to` set to that resource's full
/// JID when `readdress` is true. Returns how many took it.
pub fn to_available(state: &ServerState, bare: &str, stanza: &Stanza, readdress: bool) -> usize {
    state
        .router
        .resources(bare)
        .iter()
        .filter(|r| r.is_available())
        .filter(|r| {
            let mut s = stanza.clone();
            if readdress {
                s.to = Some(r.full.clone());
            }
            r.send(s)
        })
        .count()
}

/// Sends a message to the resources a bare-JID message goes to (RFC 6121 §8.5.2.1.1).
pub fn message_to_bare(state: &ServerState, bare: &str, stanza: &Stanza) -> usize {
    message_to_bare_resources(state, bare, stanza).len()
}

/// [`message_to_bare`], returning the resources that took the message.
pub fn message_to_bare_resources(state: &ServerState, bare: &str, stanza: &Stanza) -> Vec<String> {
    let resources = state.router.resources(bare);
    message_targets(&resources)
        .into_iter()
        .filter(|r| r.send(stanza.clone()))
        .map(|r| r.resource.clone())
        .collect()
}

/// Whether `bare` is an account here: bound sessions prove it without a store read.
pub async fn account_exists(state: &ServerState, bare: &str) -> bool {
    if state.router.is_online(bare) {
        return true;
    }
    let b = bare.to_owned();
    match state.store(move |s| s.account_exists(&b)).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("account lookup: {e}");
            false
        }
    }
}
