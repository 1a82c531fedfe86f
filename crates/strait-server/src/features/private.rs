//! Private XML storage (XEP-0049, `jabber:iq:private`): a client keeps any element of its own
//! namespace on the server, for its account's eyes only. Legacy bookmarks (XEP-0048,
//! `storage:bookmarks`) and client preferences live here.
//!
//! Each namespace holds what the last set stored under it (one element, or several of that
//! namespace); a set with several namespaces stores each. An element with neither attributes
//! nor children clears its namespace, since a get answers with the empty element it asked
//! for when nothing is stored: the client cannot tell the two apart.

use minidom::Element;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, ns};

use super::{escape_attr, iq_result};
use crate::c2s::session::Session;

pub const NS: &str = "jabber:iq:private";

/// Namespaces one account may store at most (each holds at most one stanza's worth of XML).
pub const MAX_NAMESPACES: usize = 64;

/// Namespaces refused (XEP-0049 §2.3 lets a server refuse reserved ones): the stream's own,
/// this protocol's, and vcard-temp (which has its own storage, XEP-0054).
fn reserved(ns: &str) -> bool {
    matches!(
        ns,
        "" | ns::CLIENT | ns::SERVER | NS | super::vcard::NS | "http://etherx.jabber.org/streams"
    )
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaErrorCondition::NotAcceptable, text)
}

/// Canonical XML of `elements` (re-serialized, never the client's bytes).
fn canonical<'a>(elements: impl Iterator<Item = &'a Element>) -> String {
    let mut st = Stanza::new(ns::CLIENT, "x");
    for e in elements {
        st.push_child(e);
    }
    st.inner_xml().to_owned()
}

/// A `jabber:iq:private` query; `own` = to the user's own bare JID (or no `to`).
pub async fn handle(s: &mut Session, stanza: &Stanza, query: &Element, own: bool) {
    if !own {
        // XEP-0049 §2.3: nobody reads or writes another account's private data.
        s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::Forbidden,
                "private storage belongs to its account alone",
            ),
        );
        return;
    }
    let children: Vec<&Element> = query.children().collect();
    if children.is_empty() {
        s.reply_error(
            stanza,
            not_acceptable("the query needs a child element of the namespace to get or set"),
        );
        return;
    }
    if let Some(bad) = children.iter().find(|c| reserved(&c.ns())) {
        let text = format!("the namespace '{}' is reserved", bad.ns());
        s.reply_error(stanza, not_acceptable(&text));
        return;
    }
    if stanza.type_.as_deref() == Some("get") {
        get(s, stanza, &children).await
    } else {
        set(s, stanza, &children).await
    }
}

async fn get(s: &mut Session, stanza: &Stanza, children: &[&Element]) {
    let [asked] = children else {
        s.reply_error(
            stanza,
            not_acceptable("a get asks for one namespace at a time"),
        );
        return;
    };
    let (owner, nspace) = (s.bare.clone(), asked.ns());
    let n = nspace.clone();
    match s.state.store(move |st| st.private_xml(&owner, &n)).await {
        Ok(stored) => {
            let inner = stored.unwrap_or_else(|| {
                // Nothing stored: the empty element that was asked for.
                format!("<{} xmlns='{}'/>", asked.name(), escape_attr(&nspace))
            });
            let payload = format!("<query xmlns='{NS}'>{inner}</query>");
            s.reply(iq_result(stanza, Some(&payload)));
        }
        Err(e) => super::store_failed(s, stanza, "reading private XML", &e),
    }
}

async fn set(s: &mut Session, stanza: &Stanza, children: &[&Element]) {
    // Grouped by namespace, in the order they came.
    let mut groups: Vec<(String, Vec<&Element>)> = Vec::new();
    for c in children {
        let n = c.ns();
        match groups.iter_mut().find(|(g, _)| *g == n) {
            Some((_, v)) => v.push(c),
            None => groups.push((n, vec![c])),
        }
    }
    let writes: Vec<(String, Option<String>)> = groups
        .into_iter()
        .map(|(n, elems)| {
            let clears = matches!(elems.as_slice(), [e] if e.attrs().is_empty()
                && e.children().next().is_none()
                && e.text().is_empty());
            let xml = (!clears).then(|| canonical(elems.into_iter()));
            (n, xml)
        })
        .collect();
    let owner = s.bare.clone();
    let r = s
        .state
        .store(move |st| st.set_private_xml(&owner, &writes, MAX_NAMESPACES))
        .await;
    super::answer_write(
        s,
        stanza,
        r,
        |limit| format!("private storage holds at most {limit} namespaces per account"),
        "storing private XML",
    );
}
