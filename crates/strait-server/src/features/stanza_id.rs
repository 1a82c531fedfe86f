//! Unique and stable stanza ids (XEP-0359): every message the server delivers to or stores
//! for an account carries `<stanza-id by='account'/>` with an id the server assigned, so that
//! clients recognize a message they have already seen (offline redelivery, carbons, later
//! the archive). An id claiming to be by the same entity but sent by a client is removed
//! first (XEP-0359 §3.3); `<origin-id/>` is the client's and passes unchanged.

use strait_wire::Stanza;

pub const NS: &str = "urn:xmpp:sid:0";

/// A fresh server-assigned id: a version 7 UUID (RFC 9562), its first 48 bits the time in
/// milliseconds and the other 74 (less version and variant) random, so as unpredictable as
/// the ids need to be. The same id is the message's archive id (XEP-0313), and ids that grow
/// with time make the archive's `(owner, id)` index grow at each owner's end instead of at
/// random places in it: inserts touch the pages the previous ones touched (cached, and
/// written once per group commit), and pages split full rather than half-full. (Ids from
/// the same millisecond need not be in order; nothing depends on that: the archive orders
/// by its own sequence.)
pub fn new_id() -> String {
    let id = uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext));
    // Written straight into its buffer rather than through `Display` (the formatting
    // machinery showed in profiles of the message path).
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

/// Removes every `<stanza-id/>` whose `by` is `by` (or that has no readable `by`).
pub fn strip(m: &mut Stanza, by: &str) {
    strip_any(m, &[by]);
}

/// Removes every `<stanza-id/>` whose `by` is one of `by` (or that has no readable `by`),
/// reading each once.
pub fn strip_any(m: &mut Stanza, by: &[&str]) {
    let forged: Vec<std::ops::Range<usize>> = m
        .children()
        .iter()
        .filter(|c| c.ns == NS && c.name == "stanza-id")
        .filter(|c| {
            m.inner_xml()[c.range.clone()]
                .parse::<minidom::Element>()
                .map(|el| el.attr("by").is_none_or(|b| by.contains(&b)))
                .unwrap_or(true)
        })
        .map(|c| c.range.clone())
        .collect();
    if !forged.is_empty() {
        m.remove_children(|c| forged.contains(&c.range));
    }
}

/// Strips ids claiming to be by `by`, then adds a fresh one by `by`; returns the id.
pub fn stamp(m: &mut Stanza, by: &str) -> String {
    strip(m, by);
    let id = new_id();
    m.push_empty_child(NS, "stanza-id", &[("id", &id), ("by", by)]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::offline::parse_stored;

    #[test]
    fn forged_ids_by_the_account_are_replaced_others_kept() {
        let mut m = parse_stored(
            "<message to='b@x'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='evil' by='b@x'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='room' by='room@muc.x'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='o1'/></message>",
        )
        .unwrap();
        let id = stamp(&mut m, "b@x");
        let xml = m.to_xml(strait_wire::ns::CLIENT);
        assert!(!xml.contains("evil"), "{xml}");
        assert!(xml.contains("id='room'"), "{xml}");
        assert!(
            xml.contains("<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>"),
            "{xml}"
        );
        assert!(
            xml.contains(&format!(
                "<stanza-id xmlns='urn:xmpp:sid:0' id='{id}' by='b@x'/>"
            )),
            "{xml}"
        );
        assert_ne!(new_id(), id);
        // The id is the UUID's usual lowercase hyphenated form, and a version 7 one.
        let u = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(u.to_string(), id);
        assert_eq!(u.get_version_num(), 7);
    }
}
