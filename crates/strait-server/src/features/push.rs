//! Push notifications (XEP-0357, `urn:xmpp:push:0`), the user's server's part: a client
//! names an app server (its vendor's push gateway) and a node; when a message for the account
//! is stored because no device is connected, or queued for a session whose connection was
//! lost (XEP-0198 hibernation), the server publishes a notification to that node, and the app
//! server wakes the device through the platform's push service.
//!
//! App servers are reached as external components of this server (XEP-0114): a client may
//! only enable a JID at a configured component's domain, so that a notification never waits
//! for a route that does not exist. Notifications carry no sender and no body: the summary
//! form has only its FORM_TYPE (what the app server needs is the fact of a message; who wrote
//! what stays between the devices, end-to-end encrypted). The client's publish-options
//! (typically the app server's secret for this device) go with every notification. An app
//! server that answers a notification with an error has that registration removed.

use minidom::Element;
use strait_store::PushRegistration;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, ns};

use super::{attr, iq_result};
use crate::c2s::session::Session;
use crate::server::ServerState;

pub const NS: &str = "urn:xmpp:push:0";
const NS_DATA: &str = "jabber:x:data";
const SUMMARY: &str = "urn:xmpp:push:summary";
/// Prefix of the ids of notification IQs, so that their error answers can be recognised.
pub const ID_PREFIX: &str = "push-";
/// Push registrations one account may have (one per device and app).
pub const MAX_REGISTRATIONS: usize = 16;

/// An `<enable/>` or `<disable/>` from the account's own client.
pub async fn handle(s: &mut Session, stanza: &Stanza, p: &Element) {
    if stanza.type_.as_deref() != Some("set") {
        s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::BadRequest));
        return;
    }
    let Some(jid) = p.attr("jid").and_then(|j| jid::Jid::new(j).ok()) else {
        s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "the push service's 'jid' is missing or not a JID",
            ),
        );
        return;
    };
    let service = jid.to_string();
    let node = p.attr("node").filter(|n| !n.is_empty()).map(str::to_owned);
    if node.as_ref().is_some_and(|n| n.len() > 1024) {
        s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "node longer than 1024 bytes",
            ),
        );
        return;
    }
    let owner = s.bare.clone();
    match p.name() {
        "enable" => {
            let Some(node) = node else {
                s.reply_error(
                    stanza,
                    StanzaError::with_text(
                        StanzaErrorCondition::BadRequest,
                        "enabling push needs a 'node'",
                    ),
                );
                return;
            };
            if s.state.config.component(jid.domain().as_str()).is_none() {
                s.reply_error(
                    stanza,
                    StanzaError::with_text(
                        StanzaErrorCondition::NotAcceptable,
                        format!(
                            "this server reaches push services as its components (XEP-0114); \
                             {service} is not one"
                        ),
                    ),
                );
                return;
            }
            let options = p.children().find(|c| c.is("x", NS_DATA)).map(|x| {
                let mut st = Stanza::new(ns::CLIENT, "x");
                st.push_child(x);
                st.inner_xml().to_owned()
            });
            let reg = PushRegistration {
                jid: service,
                node,
                options,
            };
            let r = s
                .state
                .store(move |st| st.push_enable(&owner, &reg, MAX_REGISTRATIONS))
                .await;
            super::answer_write(
                s,
                stanza,
                r,
                |limit| format!("an account may enable push for at most {limit} devices"),
                "storing a push registration",
            );
        }
        _ => {
            let r = s
                .state
                .store(move |st| st.push_disable(&owner, &service, node.as_deref()))
                .await;
            match r {
                Ok(_) => s.reply(iq_result(stanza, None)),
                Err(e) => super::store_failed(s, stanza, "removing push registrations", &e),
            }
        }
    }
}

/// The notification for one registration: a pubsub publish from the account's bare JID.
pub fn notification(bare: &str, reg: &PushRegistration) -> Stanza {
    let mut iq = Stanza::new(ns::CLIENT, "iq");
    iq.type_ = Some("set".into());
    // The node travels in the id (hex), so that an error answer names the registration.
    let node_hex: String = reg.node.bytes().map(|b| format!("{b:02x}")).collect();
    iq.id = Some(format!(
        "{ID_PREFIX}{node_hex}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    iq.from = Some(bare.to_owned());
    iq.to = Some(reg.jid.clone());
    let mut xml = format!(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish{}><item>\
         <notification xmlns='{NS}'><x xmlns='{NS_DATA}' type='submit'>\
         <field var='FORM_TYPE'><value>{SUMMARY}</value></field></x></notification>\
         </item></publish>",
        attr("node", &reg.node)
    );
    if let Some(options) = &reg.options {
        xml.push_str("<publish-options>");
        xml.push_str(options);
        xml.push_str("</publish-options>");
    }
    xml.push_str("</pubsub>");
    iq.push_child_xml(&xml);
    iq
}

/// The node a notification's id carries ([`notification`]), if the id is one of ours.
pub fn node_of_id(id: &str) -> Option<String> {
    let hex = id.strip_prefix(ID_PREFIX)?.split('.').next()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Notifies every push service `bare` enabled that a message is waiting for it: one store
/// read, then the notifications are queued for their components (nothing waits for them).
pub async fn notify(state: &ServerState, bare: &str) {
    if state.config.components.is_empty() {
        return; // no push service can be reached, so none can be enabled
    }
    let owner = bare.to_owned();
    let regs = match state.store(move |st| st.push_registrations(&owner)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(account = %bare, "reading push registrations: {e}");
            return;
        }
    };
    for reg in regs {
        let iq = notification(bare, &reg);
        match crate::component::route_to_jid(state, &reg.jid, iq) {
            Some(Ok(())) => tracing::debug!(account = %bare, service = %reg.jid, "push sent"),
            Some(Err(e)) => {
                tracing::info!(account = %bare, service = %reg.jid, "push not sent: {}", e.to_xml())
            }
            None => {
                tracing::warn!(account = %bare, service = %reg.jid, "push service is no longer a component")
            }
        }
    }
}

/// An app server answered the notification with id `id` to `bare` with an error (the
/// device is gone, the registration is no longer valid): that registration is removed.
pub fn on_error(state: &std::sync::Arc<ServerState>, bare: &str, service: &str, id: &str) {
    let Some(node) = node_of_id(id) else { return };
    let state = state.clone();
    let (owner, service) = (bare.to_owned(), service.to_owned());
    tokio::spawn(async move {
        let (o, sv) = (owner.clone(), service.clone());
        match state
            .store(move |st| st.push_disable(&o, &sv, Some(&node)))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(
                account = %owner, %service,
                "push disabled: the app server refused a notification"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(account = %owner, "removing push registrations: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_travels_in_the_id() {
        let reg = PushRegistration {
            jid: "push.example".into(),
            node: "dev/ï 1".into(),
            options: Some("<x xmlns='jabber:x:data' type='submit'/>".into()),
        };
        let n = notification("a@example", &reg);
        assert_eq!(
            node_of_id(n.id.as_deref().unwrap()).as_deref(),
            Some("dev/ï 1")
        );
        assert_eq!(node_of_id("push-zz.1"), None);
        assert_eq!(node_of_id("other"), None);
        let xml = n.to_xml(ns::CLIENT);
        assert!(xml.contains("<publish node='dev/ï 1'>"), "{xml}");
        assert!(
            xml.contains(
                "<publish-options><x xmlns='jabber:x:data' type='submit'/></publish-options>"
            ),
            "{xml}"
        );
        assert!(!xml.contains("last-message"), "{xml}");
    }
}
