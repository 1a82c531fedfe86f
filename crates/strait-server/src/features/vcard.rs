//! vcard-temp (XEP-0054): each account's vCard, set by its owner and readable by anyone.
//!
//! XEP-0153 (vCard-based avatars) needs nothing more from the server: the photo lives in
//! the vCard and clients announce its hash in `<x xmlns='vcard-temp:x:update'/>` inside
//! their presence, which is passed through untouched. XEP-0084 avatars are plain PEP nodes
//! (`urn:xmpp:avatar:data` and `urn:xmpp:avatar:metadata`, see `pep`).

use minidom::Element;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, ns};

use super::iq_result;
use crate::c2s::session::Session;

pub const NS: &str = "vcard-temp";

fn empty() -> String {
    format!("<vCard xmlns='{NS}'/>")
}

/// A vCard request to an account's bare JID (`own` = the user's own, also when no `to`).
pub async fn handle(s: &mut Session, stanza: &Stanza, p: &Element, own: bool) {
    let owner = match stanza.to.as_deref() {
        Some(t) if !own => t.split('/').next().unwrap_or(t).to_owned(),
        _ => s.bare.clone(),
    };
    match stanza.type_.as_deref() {
        Some("get") => {
            let o = owner.clone();
            match s.state.store(move |st| st.vcard(&o)).await {
                Ok(v) => s.reply(iq_result(stanza, Some(&v.unwrap_or_else(empty)))),
                Err(e) => {
                    tracing::error!(account = %owner, "reading the vCard: {e}");
                    s.reply_error(
                        stanza,
                        StanzaError::new(StanzaErrorCondition::InternalServerError),
                    );
                }
            }
        }
        _ if !own => s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::Forbidden)),
        _ => {
            // Stored canonically; an empty vCard removes it.
            let xml = {
                let mut st = Stanza::new(ns::CLIENT, "x");
                st.push_child(p);
                st.inner_xml().to_owned()
            };
            let value = if p.children().next().is_none() {
                None
            } else {
                Some(xml)
            };
            let previous = super::avatar::photo_hash(&s.state, &owner).await;
            let o = owner.clone();
            match s
                .state
                .store(move |st| st.set_vcard(&o, value.as_deref()))
                .await
            {
                Ok(()) => {
                    s.reply(iq_result(stanza, None));
                    // XEP-0398: the photo goes to the avatar nodes too.
                    let stored = p.children().next().map(|_| p);
                    super::avatar::vcard_stored(&s.state, &owner, stored, previous).await;
                }
                Err(e) => {
                    tracing::error!(account = %s.bare, "storing the vCard: {e}");
                    s.reply_error(
                        stanza,
                        StanzaError::new(StanzaErrorCondition::InternalServerError),
                    );
                }
            }
        }
    }
}

/// The server's own vCard (empty).
pub fn server_vcard(s: &mut Session, stanza: &Stanza) {
    if stanza.type_.as_deref() == Some("get") {
        s.reply(iq_result(stanza, Some(&empty())));
    } else {
        s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::Forbidden));
    }
}
