//! Blocking command (XEP-0191): an account's block list, and its enforcement.
//!
//! Policy (XEP-0191 §3.5 and §3.6):
//! * from a blocked entity to the user: presence, IQ results/errors and messages of type
//!   error, headline or groupchat are dropped silently; other messages and IQ get/set are
//!   answered with `<service-unavailable/>`, the same answer as for an account that does not
//!   exist, so the blocked entity learns nothing;
//! * from the user to a blocked entity: messages and IQ get/set are refused with
//!   `<not-acceptable/>` plus `<blocked xmlns='urn:xmpp:blocking:errors'/>`, so the user's
//!   client can explain why; presence is dropped.
//!
//! Items match as privacy-list JID items do (XEP-0016 §2.1): an item `d` blocks every JID of
//! the domain, `n@d` every resource of the account, `d/r` and `n@d/r` only that resource.
//!
//! The lists of accounts with bound sessions are cached in the router; every change goes
//! through [`handle`], which updates store and cache together.

use super::{attr, iq_result};
use crate::accounts;
use crate::c2s::session::Session;
use crate::router::BlockList;
use crate::server::ServerState;
use std::sync::Arc;
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, ns};

pub const NS: &str = "urn:xmpp:blocking";
pub const ERRORS_NS: &str = "urn:xmpp:blocking:errors";
/// JIDs one block list may hold: each is a row in the store and an entry in the router's
/// cache while the account is online.
pub const MAX_ENTRIES: usize = 10_000;

/// The account's block list: from the router's caches, or read (and cached while online,
/// or for a while when the account exists and has no session: [`Router::offline_recipient`]).
///
/// [`Router::offline_recipient`]: crate::router::Router::offline_recipient
pub async fn list(state: &ServerState, bare: &str) -> Arc<BlockList> {
    if let Some(l) = state.router.cached_blocklist(bare) {
        return l;
    }
    if let Some(l) = state.router.offline_recipient(bare) {
        return l;
    }
    let generation = state.router.blocklist_generation();
    let owner = bare.to_owned();
    // Whether the account exists comes with the list, in the same store call: routing a
    // message to an account without a session asks both.
    let read = state
        .store(move |s| Ok((s.account_exists(&owner)?, s.blocklist(&owner)?)))
        .await;
    let (exists, list) = match read {
        Ok((exists, v)) => (exists, v.into_iter().collect()),
        Err(e) => {
            tracing::error!(account = bare, "reading the block list: {e}");
            (false, BlockList::new())
        }
    };
    let list = Arc::new(list);
    if state.router.is_online(bare) {
        state.router.cache_blocklist(bare, list.clone());
    } else if exists {
        state
            .router
            .cache_offline_recipient(bare, list.clone(), generation);
    }
    list
}

/// Whether `list` blocks `jid` (a bare or full JID, or a domain).
pub fn matches(list: &BlockList, jid: &str) -> bool {
    if list.is_empty() {
        return false;
    }
    let Ok(j) = jid::Jid::new(jid) else {
        return list.contains(jid);
    };
    let domain = j.domain().as_str();
    let bare = j.to_bare().to_string();
    if list.contains(domain) || list.contains(&bare) {
        return true;
    }
    match j.resource() {
        Some(r) => list.contains(&j.to_string()) || list.contains(&format!("{domain}/{r}")),
        None => false,
    }
}

/// Whether `owner` (a local account's bare JID) blocks `other`.
pub async fn blocks(state: &ServerState, owner: &str, other: &str) -> bool {
    let l = list(state, owner).await;
    matches(&l, other)
}

/// Like [`blocks`], but without a store read for an account that has no session: for
/// stanzas that only reach bound resources anyway (presence).
pub fn blocks_if_online(state: &ServerState, owner: &str, other: &str) -> bool {
    state
        .router
        .cached_blocklist(owner)
        .is_some_and(|l| matches(&l, other))
}

/// The error for a stanza the user sent to a JID on its own block list.
pub fn blocked_reply(original: &Stanza) -> Option<Stanza> {
    if original.type_.as_deref() == Some("error") {
        return None;
    }
    let mut r = Stanza::new(&original.ns, &original.name);
    r.id = original.id.clone();
    r.from = original.to.clone();
    r.to = original.from.clone();
    r.type_ = Some("error".into());
    r.push_child_xml(&format!(
        "<error xmlns='{}' type='cancel'><not-acceptable xmlns='{}'/><blocked xmlns='{ERRORS_NS}'/></error>",
        ns::CLIENT,
        ns::STANZAS
    ));
    Some(r)
}

/// The user's stanza to `to`: refused (and answered) when `to` is on the user's block list.
/// True when the stanza must not be routed.
pub async fn outbound_refused(s: &mut Session, stanza: &Stanza, to: &jid::Jid) -> bool {
    let blocked = list(&s.state, &s.bare).await;
    // Most block lists are empty: the address is written out only for one that is not.
    if blocked.is_empty() || !matches(&blocked, &to.to_string()) {
        return false;
    }
    let answer = match stanza.kind {
        strait_wire::StanzaKind::Message => true,
        strait_wire::StanzaKind::Iq => matches!(stanza.type_.as_deref(), Some("get" | "set")),
        _ => false,
    };
    if answer && let Some(r) = blocked_reply(stanza) {
        s.reply(r);
    }
    true
}

/// The command's items, each JID once, with the report attached to it (XEP-0377; only a
/// block carries reports, an unblock's are ignored).
fn items(
    el: &minidom::Element,
    reporter: &str,
) -> Result<Vec<(String, Option<super::report::Attached>)>, StanzaError> {
    let mut out: Vec<(String, Option<super::report::Attached>)> = Vec::new();
    let block = el.name() == "block";
    for item in el.children().filter(|c| c.is("item", NS)) {
        let raw = item.attr("jid").unwrap_or("");
        let j = accounts::normalize_jid(raw)
            .map_err(|e| StanzaError::with_text(StanzaErrorCondition::JidMalformed, e))?;
        let j = j.to_string();
        let report = if block {
            super::report::parse(item, reporter)?
        } else {
            None
        };
        match out.iter_mut().find(|(k, _)| *k == j) {
            Some((_, r)) => {
                if report.is_some() {
                    *r = report;
                }
            }
            None => out.push((j, report)),
        }
    }
    Ok(out)
}

fn items_xml(jids: &[String]) -> String {
    jids.iter()
        .map(|j| format!("<item{}/>", attr("jid", j)))
        .collect()
}

/// A blocking command IQ from the user to its own account.
pub async fn handle(s: &mut Session, stanza: &Stanza, el: &minidom::Element) {
    let get = stanza.type_.as_deref() == Some("get");
    match (el.name(), get) {
        ("blocklist", true) => {
            let l = list(&s.state, &s.bare).await;
            let mut v: Vec<String> = l.iter().cloned().collect();
            v.sort();
            s.state.router.update(&s.bare, &s.resource, s.conn_id, |r| {
                r.blocklist_interested = true
            });
            let payload = format!("<blocklist xmlns='{NS}'>{}</blocklist>", items_xml(&v));
            s.reply(iq_result(stanza, Some(&payload)));
        }
        ("block" | "unblock", false) => {
            let (jids, reports): (Vec<String>, Vec<_>) = match items(el, &s.bare) {
                Ok(v) => v.into_iter().unzip(),
                Err(e) => return s.reply_error(stanza, e),
            };
            let reports: Vec<(String, super::report::Attached)> = jids
                .iter()
                .cloned()
                .zip(reports)
                .filter_map(|(j, r)| r.map(|r| (j, r)))
                .collect();
            let block = el.name() == "block";
            if block && jids.is_empty() {
                return s.reply_error(
                    stanza,
                    StanzaError::with_text(
                        StanzaErrorCondition::BadRequest,
                        "a block command needs at least one item",
                    ),
                );
            }
            let before = list(&s.state, &s.bare).await;
            if block {
                let new = jids.iter().filter(|j| !before.contains(*j)).count();
                if new > 0 && before.len() + new > MAX_ENTRIES {
                    return s.reply_error(
                        stanza,
                        StanzaError::with_text(
                            StanzaErrorCondition::ResourceConstraint,
                            format!("a block list holds at most {MAX_ENTRIES} JIDs"),
                        ),
                    );
                }
                if !reports.is_empty()
                    && let Err(e) =
                        super::report::within_allowance(&s.state, &s.bare, reports.len()).await
                {
                    return s.reply_error(stanza, e);
                }
            }
            if let Err(e) = change(&s.state, &s.bare, block, jids.clone()).await {
                tracing::error!(account = %s.bare, "changing the block list: {e}");
                return s.reply_error(
                    stanza,
                    StanzaError::new(StanzaErrorCondition::InternalServerError),
                );
            }
            // The block is in; its reports are recorded before the answer, so that a
            // report the store could not keep is said (the block stays: it is what the
            // user asked for first, and it protects them).
            if !reports.is_empty()
                && let Err(e) = super::report::record(&s.state, &s.bare, reports).await
            {
                tracing::error!(account = %s.bare, "recording an abuse report: {e}");
                s.reply_error(
                    stanza,
                    StanzaError::with_text(
                        StanzaErrorCondition::InternalServerError,
                        "the JIDs are blocked, but the report could not be recorded",
                    ),
                );
            } else {
                s.reply(iq_result(stanza, None));
            }
            push(&s.state, &s.bare, el.name(), &jids);
            if block {
                went_dark(&s.state, &s.bare, &jids).await;
            } else {
                let unblocked: Vec<String> = if jids.is_empty() {
                    before.iter().cloned().collect()
                } else {
                    jids.into_iter().filter(|j| before.contains(j)).collect()
                };
                came_back(&s.state, &s.bare, &unblocked).await;
            }
        }
        _ => s.reply_error(stanza, StanzaError::new(StanzaErrorCondition::BadRequest)),
    }
}

/// Writes the change to the store, then to the cache.
async fn change(
    state: &ServerState,
    bare: &str,
    block: bool,
    jids: Vec<String>,
) -> Result<(), strait_store::StoreError> {
    let owner = bare.to_owned();
    let j = jids.clone();
    state
        .store(move |st| match (block, j.is_empty()) {
            (true, _) => st.block(&owner, &j),
            (false, true) => st.unblock_all(&owner),
            (false, false) => st.unblock(&owner, &j),
        })
        .await?;
    let mut l = (*list(state, bare).await).clone();
    match (block, jids.is_empty()) {
        (true, _) => l.extend(jids),
        (false, true) => l.clear(),
        (false, false) => {
            for j in &jids {
                l.remove(j);
            }
        }
    }
    state.router.cache_blocklist(bare, Arc::new(l));
    Ok(())
}

/// Block and unblock pushes (XEP-0191 §3.3, §3.4) to every resource that fetched the list.
fn push(state: &ServerState, bare: &str, command: &str, jids: &[String]) {
    for r in state.router.resources(bare) {
        if !r.blocklist_interested {
            continue;
        }
        let mut iq = super::server_stanza(
            "iq",
            Some("set"),
            bare,
            &r.full,
            Some(format!("block-push-{}", uuid::Uuid::new_v4().simple())),
        );
        iq.push_child_xml(&format!(
            "<{command} xmlns='{NS}'>{}</{command}>",
            items_xml(jids)
        ));
        r.send(iq);
    }
}

/// The user's roster contacts on `domain` that share presence with the user either way
/// (subscription to, from or both): who a block of the whole domain hides the user from,
/// and who an unblock brings back.
async fn contacts_on(state: &ServerState, bare: &str, domain: &str) -> Vec<String> {
    use strait_store::Subscription::{Both, From, To};
    let owner = bare.to_owned();
    let Ok((_, items)) = state.store(move |st| st.roster(&owner)).await else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter(|i| matches!(i.subscription, From | Both | To))
        .filter(|i| jid::BareJid::new(&i.jid).is_ok_and(|j| j.domain().as_str() == domain))
        .map(|i| i.jid)
        .collect()
}

/// Newly blocked contacts see the user's available resources go offline (XEP-0191 §3.3);
/// for a block of a whole local domain, the user's roster contacts on it.
async fn went_dark(state: &ServerState, bare: &str, jids: &[String]) {
    let mine: Vec<String> = state
        .router
        .resources(bare)
        .into_iter()
        .filter(|r| r.is_available())
        .map(|r| r.full.clone())
        .collect();
    for target in jids {
        let Ok(j) = jid::Jid::new(target) else {
            continue;
        };
        let domain = j.domain().as_str();
        if !state.is_local_domain(domain) {
            continue; // a remote contact: no local sessions to tell
        }
        let contacts = match (j.node(), j.resource()) {
            (Some(_), _) => vec![j.to_bare().to_string()],
            (None, None) => contacts_on(state, bare, domain).await,
            (None, Some(_)) => continue,
        };
        for contact in contacts {
            for r in state.router.resources(&contact) {
                if !r.is_available() || j.resource().is_some_and(|res| res.as_str() != r.resource) {
                    continue;
                }
                for from in &mine {
                    let mut u = Stanza::new(ns::CLIENT, "presence");
                    u.type_ = Some("unavailable".into());
                    u.from = Some(from.clone());
                    u.to = Some(r.full.clone());
                    r.send(u);
                }
            }
        }
    }
}

/// Unblocked contacts that may see the user's presence get it again, and the user gets
/// theirs (XEP-0191 §3.4), as after a fresh login; for an unblocked local domain, the
/// user's roster contacts on it. Contacts the rest of the list still blocks stay dark.
async fn came_back(state: &ServerState, bare: &str, jids: &[String]) {
    use strait_store::Subscription::{Both, From, To};
    let still = list(state, bare).await;
    let mut contacts = Vec::new();
    for target in jids {
        let Ok(j) = jid::Jid::new(target) else {
            continue;
        };
        let domain = j.domain().as_str();
        if !state.is_local_domain(domain) {
            continue;
        }
        match (j.node(), j.resource()) {
            (Some(_), _) => contacts.push(j.to_bare().to_string()),
            (None, None) => contacts.extend(contacts_on(state, bare, domain).await),
            (None, Some(_)) => {}
        }
    }
    // A contact the rest of the list still blocks (by its domain, say) stays dark.
    contacts.retain(|c| !matches(&still, c));
    contacts.sort();
    contacts.dedup();
    for contact in contacts {
        let (o, c) = (bare.to_owned(), contact.clone());
        let Ok(Some(item)) = state.store(move |st| st.roster_item(&o, &c)).await else {
            continue;
        };
        let mine = state.router.resources(bare);
        let theirs = state.router.resources(&contact);
        if matches!(item.subscription, From | Both) {
            share(&mine, &theirs);
        }
        if matches!(item.subscription, To | Both) {
            share(&theirs, &mine);
        }
    }
}

/// Each available presence of `from` to each available resource of `to`.
fn share(from: &[Arc<crate::router::Resource>], to: &[Arc<crate::router::Resource>]) {
    for f in from {
        let Some(p) = &f.presence else { continue };
        for t in to.iter().filter(|t| t.is_available()) {
            let mut copy = (**p).clone();
            copy.from = Some(f.full.clone());
            copy.to = Some(t.full.clone());
            t.send(copy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_match_like_privacy_list_jids() {
        let l: BlockList = ["spam.example", "eve@x.example", "bob@x.example/phone"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(matches(&l, "anyone@spam.example/r"));
        assert!(matches(&l, "spam.example"));
        assert!(matches(&l, "eve@x.example"));
        assert!(matches(&l, "eve@x.example/laptop"));
        assert!(matches(&l, "bob@x.example/phone"));
        assert!(!matches(&l, "bob@x.example/desk"));
        assert!(!matches(&l, "bob@x.example"));
        assert!(!matches(&l, "x.example"));
        assert!(!matches(&BlockList::new(), "eve@x.example"));
    }

    #[test]
    fn blocked_error_names_the_condition() {
        let mut m = Stanza::new(ns::CLIENT, "message");
        m.id = Some("m1".into());
        m.from = Some("a@x/r".into());
        m.to = Some("b@x".into());
        let xml = blocked_reply(&m).unwrap().to_xml(ns::CLIENT);
        assert!(xml.contains("type='error'"), "{xml}");
        assert!(xml.contains("<not-acceptable"), "{xml}");
        assert!(
            xml.contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
            "{xml}"
        );
    }
}
