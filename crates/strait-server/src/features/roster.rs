//! The roster (RFC 6121 §2): get (with versioning), set, remove, and pushes to every session.

use super::{attr, iq_result};
use crate::c2s::session::Session;
use crate::server::ServerState;
use strait_store::{RosterItem, Subscription};
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, escape_text};

pub const NS: &str = "jabber:iq:roster";

fn subscription_str(s: Subscription) -> &'static str {
    match s {
        Subscription::None => "none",
        Subscription::To => "to",
        Subscription::From => "from",
        Subscription::Both => "both",
    }
}

/// Whether an item exists only to remember an unanswered inbound subscription request: such
/// items are not part of the user's roster until the user approves (RFC 6121 §3.1.3).
pub fn is_hidden(item: &RosterItem) -> bool {
    item.pending_in
        && item.subscription == Subscription::None
        && !item.ask_out
        && item.name.is_none()
        && item.groups.is_empty()
}

/// `<item/>` as RFC 6121 §2.1.2 writes it.
pub fn item_xml(item: &RosterItem) -> String {
    let mut x = format!("<item{}", attr("jid", &item.jid));
    if let Some(n) = &item.name {
        x.push_str(&attr("name", n));
    }
    x.push_str(&attr("subscription", subscription_str(item.subscription)));
    if item.ask_out {
        x.push_str(" ask='subscribe'");
    }
    if item.groups.is_empty() {
        x.push_str("/>");
    } else {
        x.push('>');
        for g in &item.groups {
            x.push_str(&format!("<group>{}</group>", escape_text(g)));
        }
        x.push_str("</item>");
    }
    x
}

/// Saves an item (or removes it, when `remove`) and pushes it to every session of the owner
/// that fetched the roster.
pub async fn save_and_push(state: &ServerState, owner: &str, item: RosterItem, remove: bool) {
    let o = owner.to_owned();
    let saved = item.clone();
    let version = if remove {
        let contact = item.jid.clone();
        state.store(move |s| s.roster_remove(&o, &contact)).await
    } else {
        state.store(move |s| s.roster_set(&o, &saved)).await
    };
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(owner, "saving a roster item: {e}");
            return;
        }
    };
    if !remove && is_hidden(&item) {
        return;
    }
    let body = if remove {
        format!("<item{} subscription='remove'/>", attr("jid", &item.jid))
    } else {
        item_xml(&item)
    };
    let query = format!(
        "<query xmlns='{NS}'{}>{body}</query>",
        attr("ver", &version.to_string())
    );
    for r in state
        .router
        .resources(owner)
        .into_iter()
        .filter(|r| r.interested)
    {
        let mut push = Stanza::new(strait_wire::ns::CLIENT, "iq");
        push.type_ = Some("set".into());
        push.id = Some(format!("push-{}", uuid::Uuid::new_v4().simple()));
        push.to = Some(r.full.clone());
        push.push_child_xml(&query);
        r.send(push);
    }
}

/// A roster item of `owner` for `contact`, or a fresh one.
pub async fn item_or_new(state: &ServerState, owner: &str, contact: &str) -> RosterItem {
    let (o, c) = (owner.to_owned(), contact.to_owned());
    match state.store(move |s| s.roster_item(&o, &c)).await {
        Ok(Some(item)) => item,
        Ok(None) => new_item(contact),
        Err(e) => {
            tracing::error!(owner, "reading a roster item: {e}");
            new_item(contact)
        }
    }
}

pub fn new_item(contact: &str) -> RosterItem {
    RosterItem {
        jid: contact.to_owned(),
        name: None,
        subscription: Subscription::None,
        ask_out: false,
        pending_in: false,
        groups: Vec::new(),
    }
}

/// `<query xmlns='jabber:iq:roster'/>` from the account's own client.
pub async fn handle(s: &mut Session, stanza: &Stanza, query: &minidom::Element) {
    match stanza.type_.as_deref() {
        Some("get") => get(s, stanza, query).await,
        Some("set") => set(s, stanza, query).await,
        _ => s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::BadRequest)),
    }
}

async fn get(s: &mut Session, stanza: &Stanza, query: &minidom::Element) {
    let owner = s.bare.clone();
    let (version, items) = match s.state.store(move |st| st.roster(&owner)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(account = %s.bare, "reading the roster: {e}");
            s.reply_error(
                stanza,
                StanzaError::new(StanzaErrorCondition::InternalServerError),
            );
            return;
        }
    };
    s.state
        .router
        .set_interested(&s.bare, &s.resource, s.conn_id);
    let ver = version.to_string();
    // Roster versioning (RFC 6121 §2.6): an up-to-date client gets an empty result and pushes.
    if query.attr("ver") == Some(ver.as_str()) {
        s.reply(iq_result(stanza, None));
        return;
    }
    let mut body = String::new();
    for item in items.iter().filter(|i| !is_hidden(i)) {
        body.push_str(&item_xml(item));
    }
    let q = format!("<query xmlns='{NS}'{}>{body}</query>", attr("ver", &ver));
    s.reply(iq_result(stanza, Some(&q)));
}

async fn set(s: &mut Session, stanza: &Stanza, query: &minidom::Element) {
    let items: Vec<&minidom::Element> = query.children().filter(|c| c.is("item", NS)).collect();
    let [item] = items.as_slice() else {
        s.reply_error(
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "a roster set carries exactly one item",
            ),
        );
        return;
    };
    let contact = match item.attr("jid").map(crate::accounts::normalize_jid) {
        Some(Ok(j)) if j.resource().is_none() => j.to_string(),
        _ => {
            s.reply_error(
                stanza,
                StanzaError::with_text(
                    StanzaErrorCondition::BadRequest,
                    "the item needs a valid bare jid",
                ),
            );
            return;
        }
    };
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS)) {
        let name = g.text();
        if name.is_empty() || groups.contains(&name) {
            s.reply_error(
                stanza,
                StanzaError::with_text(
                    StanzaErrorCondition::BadRequest,
                    "empty or duplicate group",
                ),
            );
            return;
        }
        groups.push(name);
    }
    let existing = item_or_new(&s.state, &s.bare, &contact).await;
    if item.attr("subscription") == Some("remove") {
        remove(s, existing).await;
    } else {
        let mut updated = existing;
        updated.name = item
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        updated.groups = groups;
        save_and_push(&s.state, &s.bare, updated, false).await;
    }
    s.reply(iq_result(stanza, None));
}

/// Removing an item also cancels the subscriptions both ways (RFC 6121 §2.5.2).
async fn remove(s: &mut Session, item: RosterItem) {
    let state = s.state.clone();
    let contact = item.jid.clone();
    let had_to = matches!(item.subscription, Subscription::To | Subscription::Both) || item.ask_out;
    let had_from =
        matches!(item.subscription, Subscription::From | Subscription::Both) || item.pending_in;
    save_and_push(&state, &s.bare, item, true).await;
    if had_to {
        super::presence::inbound_unsubscribe(&state, &s.bare, &contact).await;
    }
    if had_from {
        super::presence::inbound_unsubscribed(&state, &s.bare, &contact).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_xml_escapes_and_lists_groups() {
        let mut i = new_item("b@x");
        i.name = Some("B & 'co'".into());
        i.subscription = Subscription::To;
        i.ask_out = true;
        i.groups = vec!["<friends>".into()];
        assert_eq!(
            item_xml(&i),
            "<item jid='b@x' name='B &amp; &apos;co&apos;' subscription='to' ask='subscribe'><group>&lt;friends&gt;</group></item>"
        );
    }

    #[test]
    fn pending_only_items_are_hidden() {
        let mut i = new_item("b@x");
        i.pending_in = true;
        assert!(is_hidden(&i));
        i.name = Some("B".into());
        assert!(!is_hidden(&i));
    }
}
