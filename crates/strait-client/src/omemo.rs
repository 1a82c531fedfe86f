//! The OMEMO stanzas (XEP-0384, versions 0.3 and 2) an account sends: publishing its device
//! list and bundle in PEP, fetching a contact's, and the message that carries an
//! `<encrypted/>` element. Strings in, strings out: [`crate::chat`] and the conformance kit's
//! echo bot both build on these.

use crate::xml::{Element, escape};
use strait_signal::omemo::{
    NODE_V2_BUNDLES, NODE_V2_DEVICES, NODE_V03_BUNDLES_PREFIX, NODE_V03_DEVICELIST, NS_V2, NS_V03,
};

const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// The `<body>` sent next to the ciphertext, for clients that cannot decrypt (XEP-0380 says
/// what the encryption is). A Strait platform replaces it at the interop boundary anyway.
pub const FALLBACK_BODY: &str = "This message is OMEMO encrypted; your client cannot decrypt it.";

/// The two OMEMO versions: 0.3 (`eu.siacs.conversations.axolotl`, the Signal protocol's own
/// format) and 2 (`urn:xmpp:omemo:2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Omemo {
    V03,
    V2,
}

impl Omemo {
    pub fn name(self) -> &'static str {
        match self {
            Omemo::V03 => "OMEMO 0.3",
            Omemo::V2 => "OMEMO 2",
        }
    }

    /// The namespace of its `<encrypted/>` element.
    pub fn ns(self) -> &'static str {
        match self {
            Omemo::V03 => NS_V03,
            Omemo::V2 => NS_V2,
        }
    }

    /// The version an `<encrypted/>` element's namespace names.
    pub fn from_ns(ns: &str) -> Option<Omemo> {
        match ns {
            NS_V03 => Some(Omemo::V03),
            NS_V2 => Some(Omemo::V2),
            _ => None,
        }
    }

    /// The PEP node of the device list.
    pub fn devices_node(self) -> &'static str {
        match self {
            Omemo::V03 => NODE_V03_DEVICELIST,
            Omemo::V2 => NODE_V2_DEVICES,
        }
    }

    /// The node and item id of a device's bundle (0.3: a node per device; 2: an item per
    /// device in one node).
    pub fn bundle_item(self, device: u32) -> (String, String) {
        match self {
            Omemo::V03 => (
                format!("{NODE_V03_BUNDLES_PREFIX}{device}"),
                "current".into(),
            ),
            Omemo::V2 => (NODE_V2_BUNDLES.into(), device.to_string()),
        }
    }
}

/// A PEP publish of `payload` (XML) as item `item_id` of `node`, readable by anyone (the
/// `open` access model, so that contacts who are not subscribed, such as a provider's users,
/// can start a session). `keep_all`: the node keeps every item (OMEMO 2's bundles node holds
/// one per device).
pub fn publish_iq(id: &str, node: &str, item_id: &str, payload: &str, keep_all: bool) -> String {
    let max = if keep_all {
        "<field var='pubsub#max_items'><value>max</value></field>"
    } else {
        ""
    };
    format!(
        "<iq type='set' id='{}'><pubsub xmlns='{NS_PUBSUB}'>\
         <publish node='{}'><item id='{}'>{payload}</item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>open</value></field>{max}</x></publish-options>\
         </pubsub></iq>",
        escape(id),
        escape(node),
        escape(item_id)
    )
}

/// A query for the items of `node` at `to` (an account's bare JID; `None`: one's own), or only
/// item `item`.
pub fn items_query(id: &str, to: Option<&str>, node: &str, item: Option<&str>) -> String {
    let to = to
        .map(|t| format!(" to='{}'", escape(t)))
        .unwrap_or_default();
    let item = item
        .map(|i| format!("<item id='{}'/>", escape(i)))
        .unwrap_or_default();
    format!(
        "<iq type='get' id='{}'{to}><pubsub xmlns='{NS_PUBSUB}'><items node='{}'>{item}</items></pubsub></iq>",
        escape(id),
        escape(node)
    )
}

/// The payload of the first item in a pubsub items result, as XML.
pub fn item_payload(iq: &Element<'_>) -> Option<String> {
    let item = iq.child("pubsub")?.child("items")?.child("item")?;
    let payload = item.children().next()?;
    Some(String::from_utf8_lossy(payload.raw()).into_owned())
}

/// A chat message to `to` carrying `encrypted` (an `<encrypted/>` element of version `v`), with
/// the fallback body, the XEP-0380 marker and a storage hint (XEP-0334) so that the server
/// archives and queues it although it has no readable body; `receipt`: it asks for a delivery
/// receipt (XEP-0184).
pub fn message(to: &str, id: &str, encrypted: &str, v: Omemo, receipt: bool) -> String {
    format!(
        "<message to='{}' id='{}' type='chat'><body>{FALLBACK_BODY}</body>{encrypted}\
         <encryption xmlns='urn:xmpp:eme:0' namespace='{}'/><store xmlns='urn:xmpp:hints'/>{}</message>",
        escape(to),
        escape(id),
        v.ns(),
        if receipt {
            "<request xmlns='urn:xmpp:receipts'/>"
        } else {
            ""
        }
    )
}

/// A delivery receipt (XEP-0184) for message `id`, to its sender's full JID.
pub fn receipt(to: &str, id: &str, for_id: &str) -> String {
    format!(
        "<message to='{}' id='{}'><received xmlns='urn:xmpp:receipts' id='{}'/><store xmlns='urn:xmpp:hints'/></message>",
        escape(to),
        escape(id),
        escape(for_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_escape_what_they_quote() {
        let q = items_query("a'1", Some("o'b@x"), NODE_V03_DEVICELIST, None);
        assert!(q.contains("id='a&apos;1'"), "{q}");
        assert!(q.contains("to='o&apos;b@x'"), "{q}");
        let m = message(
            "b@x",
            "m1",
            "<encrypted xmlns='eu.siacs.conversations.axolotl'/>",
            Omemo::V03,
            true,
        );
        let el = Element::parse(m.as_bytes()).unwrap();
        assert_eq!(el.attr("to").as_deref(), Some("b@x"));
        assert!(el.child("encrypted").is_some());
        assert_eq!(
            el.child("encryption")
                .and_then(|e| e.attr("namespace"))
                .as_deref(),
            Some(NS_V03)
        );
        assert!(el.child("request").is_some());
        let r = receipt("b@x/r", "m2", "m'1");
        let el = Element::parse(r.as_bytes()).unwrap();
        assert_eq!(
            el.child("received").and_then(|x| x.attr("id")).as_deref(),
            Some("m'1")
        );
    }

    #[test]
    fn publish_keeps_every_item_only_when_asked() {
        let p = publish_iq("p1", NODE_V2_BUNDLES, "7", "<bundle/>", true);
        assert!(p.contains("pubsub#max_items"));
        assert!(p.contains("<value>open</value>"));
        let p = publish_iq("p1", NODE_V03_DEVICELIST, "current", "<list/>", false);
        assert!(!p.contains("pubsub#max_items"));
    }

    #[test]
    fn item_payload_is_the_first_items_child() {
        let iq = format!(
            "<iq type='result' id='q'><pubsub xmlns='{NS_PUBSUB}'><items node='n'><item id='current'><list xmlns='x'><device id='5'/></list></item></items></pubsub></iq>"
        );
        let el = Element::parse(iq.as_bytes()).unwrap();
        assert_eq!(
            item_payload(&el).as_deref(),
            Some("<list xmlns='x'><device id='5'/></list>")
        );
        assert_eq!(
            Omemo::V2.bundle_item(9),
            (NODE_V2_BUNDLES.into(), "9".into())
        );
        assert_eq!(Omemo::from_ns(NS_V2), Some(Omemo::V2));
        assert_eq!(Omemo::from_ns("jabber:x:encrypted"), None);
    }
}
