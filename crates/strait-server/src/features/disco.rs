//! XEP-0030 service discovery: what the server and its accounts are and support.

use super::attr;

pub const INFO: &str = "http://jabber.org/protocol/disco#info";
pub const ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const VERSION: &str = "jabber:iq:version";

/// Features the server itself advertises.
pub const SERVER_FEATURES: &[&str] = &[
    INFO,
    ITEMS,
    super::ping::NS,
    VERSION,
    "msgoffline",
    "urn:xmpp:delay",
    "jabber:iq:roster",
    "urn:xmpp:features:rosterver",
    super::vcard::NS,
    super::private::NS,
    super::register::NS,
    super::carbons::NS,
    super::blocking::NS,
    super::report::NS,
    crate::interop::NS,
];

/// Features an account advertises on its bare JID (and `urn:xmpp:mam:2` when archives are
/// on, `urn:xmpp:push:0` when components, through which push services are reached, are).
pub const ACCOUNT_FEATURES: &[&str] = &[INFO, ITEMS, super::stanza_id::NS, super::avatar::NS];

pub fn info(category: &str, type_: &str, name: Option<&str>, features: &[&str]) -> String {
    let mut x = format!(
        "<query xmlns='{INFO}'><identity{}{}",
        attr("category", category),
        attr("type", type_)
    );
    if let Some(n) = name {
        x.push_str(&attr("name", n));
    }
    x.push_str("/>");
    for f in features {
        x.push_str(&format!("<feature{}/>", attr("var", f)));
    }
    x.push_str("</query>");
    x
}

/// The server's disco#info: its identity, features and (XEP-0157) contact addresses.
pub fn server_info(contact: &crate::config::ContactConfig) -> String {
    let x = info("server", "im", Some("Strait"), SERVER_FEATURES);
    let fields = contact.fields();
    if fields.is_empty() {
        return x;
    }
    let mut form = String::from(
        "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>\
         <value>http://jabber.org/network/serverinfo</value></field>",
    );
    for (var, values) in fields {
        form.push_str(&format!("<field{}>", attr("var", var)));
        for v in values {
            form.push_str(&format!("<value>{}</value>", strait_wire::escape_text(v)));
        }
        form.push_str("</field>");
    }
    form.push_str("</x>");
    x.replacen("</query>", &(form + "</query>"), 1)
}

/// The `node` of the server's entity capabilities (XEP-0115 §4: a URI naming the software).
pub const CAPS_NODE: &str = "urn:strait:server";

/// The XEP-0115 verification hash of a disco#info answer (the server's, [`server_info`]).
pub fn caps_ver(info: &str) -> String {
    let q: minidom::Element = info
        .parse()
        .expect("the server's disco#info is well-formed");
    super::caps::sha1_ver(&q)
}

/// The `<c/>` stream feature announcing the server's capabilities (XEP-0115 §6.3).
pub fn server_caps_feature(ver: &str) -> String {
    format!(
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1'{}{}/>",
        attr("node", CAPS_NODE),
        attr("ver", ver)
    )
}

/// The server's disco#info for the caps node `CAPS_NODE#ver`, which echoes the node.
pub fn server_info_for_node(info: &str, ver: &str, node: &str) -> Option<String> {
    let ours = format!("{CAPS_NODE}#{ver}");
    (node == ours).then(|| {
        info.replacen(
            &format!("<query xmlns='{INFO}'>"),
            &format!("<query xmlns='{INFO}'{}>", attr("node", node)),
            1,
        )
    })
}

pub fn account_info(archive: bool, push: bool) -> String {
    let mut features: Vec<&str> = ACCOUNT_FEATURES.to_vec();
    if archive {
        features.push(super::mam::NS);
        features.push(super::mam::NS_EXTENDED);
    }
    if push {
        features.push(super::push::NS);
    }
    features.extend_from_slice(super::pep::FEATURES);
    // An account is also its own PEP service (XEP-0163 §1).
    info("account", "registered", None, &features).replacen(
        "/>",
        "/><identity category='pubsub' type='pep'/>",
        1,
    )
}

pub fn empty_items() -> String {
    format!("<query xmlns='{ITEMS}'/>")
}

/// disco#items listing `jids` (the server's services).
pub fn items(jids: &[String]) -> String {
    if jids.is_empty() {
        return empty_items();
    }
    let mut x = format!("<query xmlns='{ITEMS}'>");
    for j in jids {
        x.push_str(&format!("<item{}/>", attr("jid", j)));
    }
    x.push_str("</query>");
    x
}

pub fn version() -> String {
    format!(
        "<query xmlns='{VERSION}'><name>Strait</name><version>{}</version></query>",
        env!("CARGO_PKG_VERSION")
    )
}
