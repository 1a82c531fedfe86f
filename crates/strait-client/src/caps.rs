//! What a client says about itself: its service discovery information (XEP-0030, the
//! identity and the features it answers a disco#info query with) and the entity capabilities
//! (XEP-0115) its presence carries, a hash of that information, so that its server and its
//! contacts learn what it supports with one query per software version rather than one per
//! resource. A server sends PEP notifications (XEP-0163 §4) to the resources whose features
//! include `<node>+notify`: that is how a client asks for its contacts' OMEMO device lists.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::{Digest, Sha1};

use crate::xml::{Element, escape};

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

/// A service discovery identity (XEP-0030 §3.1): the `client` category for a client, with its
/// type (`pc`, `phone`, ...) and a name for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub category: String,
    /// The identity's `type`.
    pub kind: String,
    /// Its `xml:lang`, if the name is in a stated language.
    pub lang: Option<String>,
    pub name: String,
}

/// An entity's disco#info and its XEP-0115 `ver`, computed once.
#[derive(Clone, Debug)]
pub struct Capabilities {
    node: String,
    identities: Vec<Identity>,
    features: Vec<String>,
    ver: String,
}

/// XEP-0115 §5.1's verification string `S` (before hashing) of `identities` and `features`
/// (an entity without extended information forms, XEP-0128): the identities sorted by
/// category, type and language, each written `category/type/lang/name<`; then the features
/// sorted, each followed by `<`.
pub fn verification_string(identities: &[Identity], features: &[&str]) -> String {
    let mut ids: Vec<&Identity> = identities.iter().collect();
    // `str` orders by bytes: the `i;octet` collation.
    let key = |i: &Identity| {
        (
            i.category.clone(),
            i.kind.clone(),
            i.lang.clone().unwrap_or_default(),
            i.name.clone(),
        )
    };
    ids.sort_by_cached_key(|i| key(i));
    let mut features: Vec<&str> = features.to_vec();
    features.sort_unstable();
    let mut s = String::new();
    for i in ids {
        s.push_str(&i.category);
        s.push('/');
        s.push_str(&i.kind);
        s.push('/');
        s.push_str(i.lang.as_deref().unwrap_or(""));
        s.push('/');
        s.push_str(&i.name);
        s.push('<');
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    s
}

/// The `ver` of `identities` and `features` with the `sha-1` hash (XEP-0115 §5.1): the
/// verification string's UTF-8 bytes hashed, in base64 with padding.
pub fn sha1_ver(identities: &[Identity], features: &[&str]) -> String {
    B64.encode(Sha1::digest(
        verification_string(identities, features).as_bytes(),
    ))
}

impl Capabilities {
    /// `node`: the URI that names the software (XEP-0115 §4); `features` are kept sorted,
    /// each once.
    pub fn new(node: &str, identities: Vec<Identity>, features: &[&str]) -> Capabilities {
        let mut f: Vec<String> = features.iter().map(|s| (*s).to_owned()).collect();
        f.sort_unstable();
        f.dedup();
        let refs: Vec<&str> = f.iter().map(String::as_str).collect();
        let ver = sha1_ver(&identities, &refs);
        Capabilities {
            node: node.to_owned(),
            identities,
            features: f,
            ver,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ver(&self) -> &str {
        &self.ver
    }

    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// The features, sorted.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// The `<c/>` element for the entity's presence.
    pub fn presence_element(&self) -> String {
        format!(
            "<c xmlns='{NS_CAPS}' hash='sha-1' node='{}' ver='{}'/>",
            escape(&self.node),
            escape(&self.ver)
        )
    }

    /// Whether a disco#info query for `node` asks for this information: one without a node,
    /// or one for `node#ver` (how those who saw the presence ask, XEP-0115 §6.2).
    pub fn answers_node(&self, node: Option<&str>) -> bool {
        match node {
            None | Some("") => true,
            Some(n) => n
                .strip_prefix(self.node.as_str())
                .and_then(|rest| rest.strip_prefix('#'))
                .is_some_and(|v| v == self.ver),
        }
    }

    /// The `<query/>` of a disco#info result, naming `node` again if the query did.
    pub fn info_query(&self, node: Option<&str>) -> String {
        let node = node
            .filter(|n| !n.is_empty())
            .map(|n| format!(" node='{}'", escape(n)))
            .unwrap_or_default();
        let mut q = format!("<query xmlns='{NS_DISCO_INFO}'{node}>");
        for i in &self.identities {
            let lang = i
                .lang
                .as_deref()
                .map(|l| format!(" xml:lang='{}'", escape(l)))
                .unwrap_or_default();
            q.push_str(&format!(
                "<identity category='{}' type='{}'{lang} name='{}'/>",
                escape(&i.category),
                escape(&i.kind),
                escape(&i.name)
            ));
        }
        for f in &self.features {
            q.push_str(&format!("<feature var='{}'/>", escape(f)));
        }
        q.push_str("</query>");
        q
    }
}

/// The features (their `var`s, in order) a disco#info `<query/>` lists: what an entity
/// says it supports (XEP-0030 §3.1).
pub fn features_of(query: &Element<'_>) -> Vec<String> {
    query
        .children()
        .filter(|c| c.is("feature"))
        .filter_map(|f| f.attr("var").map(|v| v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exodus() -> Identity {
        Identity {
            category: "client".into(),
            kind: "pc".into(),
            lang: None,
            name: "Exodus 0.9.1".into(),
        }
    }

    /// XEP-0115 §5.2, the simple generation example: its identity and features give its
    /// verification string and `ver`.
    #[test]
    fn the_xep_0115_simple_example_gives_its_ver() {
        let features = [
            "http://jabber.org/protocol/muc",
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/caps",
            "http://jabber.org/protocol/disco#items",
        ];
        assert_eq!(
            verification_string(&[exodus()], &features),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<"
        );
        assert_eq!(
            sha1_ver(&[exodus()], &features),
            "QgayPKawpkPSDYmwT/WM94uAlu0="
        );
        // The same through Capabilities, with a feature given twice.
        let mut twice = features.to_vec();
        twice.push("http://jabber.org/protocol/muc");
        let c = Capabilities::new("http://code.google.com/p/exodus", vec![exodus()], &twice);
        assert_eq!(c.ver(), "QgayPKawpkPSDYmwT/WM94uAlu0=");
        assert_eq!(c.features().len(), 4);
    }

    /// Identities sort by category, type and language before their names; a language goes
    /// between the slashes.
    #[test]
    fn identities_sort_and_carry_their_language() {
        let id = |category: &str, kind: &str, lang: Option<&str>, name: &str| Identity {
            category: category.into(),
            kind: kind.into(),
            lang: lang.map(Into::into),
            name: name.into(),
        };
        let s = verification_string(
            &[
                id("client", "pc", Some("en"), "Psi"),
                id("client", "pc", Some("el"), "Ψ"),
                id("automation", "x", None, ""),
            ],
            &[],
        );
        assert_eq!(s, "automation/x//<client/pc/el/Ψ<client/pc/en/Psi<");
    }

    #[test]
    fn the_disco_answer_and_presence_element_say_the_same() {
        let c = Capabilities::new(
            "urn:example:app",
            vec![Identity {
                category: "client".into(),
                kind: "phone".into(),
                lang: None,
                name: "A & B".into(),
            }],
            &[NS_DISCO_INFO, "urn:xmpp:ping", "x+notify"],
        );
        let pres = c.presence_element();
        let el = Element::parse(pres.as_bytes()).unwrap();
        assert_eq!(el.attr("xmlns").as_deref(), Some(NS_CAPS));
        assert_eq!(el.attr("hash").as_deref(), Some("sha-1"));
        assert_eq!(el.attr("node").as_deref(), Some("urn:example:app"));
        assert_eq!(el.attr("ver").as_deref(), Some(c.ver()));

        let node = format!("urn:example:app#{}", c.ver());
        assert!(c.answers_node(None));
        assert!(c.answers_node(Some(&node)));
        assert!(!c.answers_node(Some("urn:example:app#other")));
        assert!(!c.answers_node(Some("urn:example:other")));
        let q = c.info_query(Some(&node));
        let el = Element::parse(q.as_bytes()).unwrap();
        assert_eq!(el.attr("node").as_deref(), Some(node.as_str()));
        let identity = el.child("identity").unwrap();
        assert_eq!(identity.attr("name").as_deref(), Some("A & B"));
        let features = features_of(&el);
        assert_eq!(features, [NS_DISCO_INFO, "urn:xmpp:ping", "x+notify"]);
        // What a receiver computes from the answer is the advertised ver.
        let refs: Vec<&str> = features.iter().map(String::as_str).collect();
        let ids = [Identity {
            category: identity.attr("category").unwrap().into_owned(),
            kind: identity.attr("type").unwrap().into_owned(),
            lang: None,
            name: identity.attr("name").unwrap().into_owned(),
        }];
        assert_eq!(sha1_ver(&ids, &refs), c.ver());
    }
}
