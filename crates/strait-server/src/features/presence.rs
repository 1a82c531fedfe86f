//! Presence (RFC 6121 §4) and presence subscriptions (RFC 6121 §3) between local accounts.
//!
//! Subscription state lives in both parties' rosters; each transition below is the pair of
//! "outbound" (the user's server) and "inbound" (the contact's server) steps of RFC 6121
//! Appendix A, both local for now. An interop link will call the inbound half for stanzas
//! from other servers.

use super::roster::{is_hidden, item_or_new, save_and_push};
use super::{blocking, delivery, offline};
use crate::c2s::session::Session;
use crate::server::ServerState;
use strait_store::Subscription;
use strait_wire::{Stanza, ns};

/// A presence stanza from a client of this server.
pub async fn from_client(s: &mut Session, mut stanza: Stanza, to: Option<jid::Jid>) {
    let ty = stanza.type_.clone();
    // XEP-0191: presence to a JID the user blocked is dropped.
    if let Some(j) = &to
        && !super::is_bare_of(j, &s.bare)
        && blocking::blocks(&s.state, &s.bare, &j.to_string()).await
    {
        return;
    }
    // The boundary policy, for what asks for or shows presence across it (ending a
    // subscription always passes).
    if let Some(j) = &to
        && j.node().is_some()
        && !super::is_bare_of(j, &s.bare)
        && matches!(
            ty.as_deref(),
            None | Some("subscribe" | "subscribed" | "probe")
        )
        && let Err(e) = crate::interop::boundary::check(
            &s.state,
            &s.bare,
            &j.to_bare().to_string(),
            &mut stanza,
        )
        .await
    {
        s.reply_error(&stanza, e);
        return;
    }
    match (to, ty.as_deref()) {
        (None, None | Some("unavailable")) => broadcast(s, stanza).await,
        (None, _) => {} // a subscription or probe without a target means nothing
        (Some(to), Some(t @ ("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed"))) => {
            let contact = to.to_bare().to_string();
            if contact != s.bare {
                subscription_from_client(s, t, &contact).await;
            }
        }
        (Some(to), Some("probe")) => probe(s, &to.to_bare().to_string()).await,
        (Some(to), None | Some("unavailable" | "error")) => directed(s, stanza, to).await,
        (Some(_), Some(_)) => {} // unknown type: ignored (RFC 6121 §4.7.1)
    }
}

/// A presence broadcast (no `to`): to the contacts subscribed to the user and to the user's
/// other resources. Initial presence also fetches the contacts' presence, pending
/// subscription requests and offline messages.
async fn broadcast(s: &mut Session, mut p: Stanza) {
    let available = p.type_.is_none();
    // XEP-0398: the avatar's hash, on the user's behalf.
    super::avatar::stamp_presence(&s.state, &s.bare, &mut p).await;
    let initial = available && !s.available;
    p.to = None;
    let owner = s.bare.clone();
    let items = match s.state.store(move |st| st.roster(&owner)).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::error!(account = %s.bare, "reading the roster: {e}");
            Vec::new()
        }
    };
    s.state.router.set_presence(
        &s.bare,
        &s.resource,
        s.conn_id,
        if available { Some(p.clone()) } else { None },
    );
    s.available = available;
    // XEP-0115 caps of this resource; XEP-0163 last items when they first become known.
    super::caps::on_presence(s, &p).await;
    // XEP-0191: neither to contacts the user blocked nor to those who blocked the user.
    let blocked = blocking::list(&s.state, &s.bare).await;
    for item in items
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .filter(|i| !blocking::matches(&blocked, &i.jid))
        .filter(|i| !blocking::blocks_if_online(&s.state, &i.jid, &s.full))
    {
        if !crate::interop::boundary::shares(&s.state, &s.bare, &item.jid).await {
            continue;
        }
        if crate::component::owns(&s.state, &item.jid) {
            let mut to_component = p.clone();
            to_component.to = Some(item.jid.clone());
            let _ = crate::component::route_to_jid(&s.state, &item.jid, to_component);
        } else if crate::s2s::owns(&s.state, &item.jid) {
            let mut to_link = p.clone();
            to_link.to = Some(item.jid.clone());
            crate::s2s::forward(&s.state, to_link);
        } else {
            delivery::to_available(&s.state, &item.jid, &p, true);
        }
    }
    for r in s.state.router.resources(&s.bare) {
        if r.resource != s.resource && r.is_available() {
            let mut copy = p.clone();
            copy.to = Some(r.full.clone());
            r.send(copy);
        }
    }
    if !available {
        for target in std::mem::take(&mut s.directed) {
            let mut u = p.clone();
            u.to = Some(target.clone());
            route_directed(&s.state, u, &target).await;
        }
        return;
    }
    if !initial {
        return;
    }
    // Probes (RFC 6121 §4.3): the current presence of everyone the user is subscribed to,
    // and of the user's own other resources.
    let mut watched: Vec<String> = items
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
        .map(|i| i.jid.clone())
        .collect();
    watched.retain(|c| {
        !blocking::matches(&blocked, c) && !blocking::blocks_if_online(&s.state, c, &s.full)
    });
    watched.push(s.bare.clone());
    for contact in watched {
        if !crate::interop::boundary::shares(&s.state, &s.bare, &contact).await {
            continue;
        }
        // A contact on a federated provider's server: its server answers the probe.
        if crate::s2s::owns(&s.state, &contact) {
            let mut probe =
                super::server_stanza("presence", Some("probe"), &s.bare, &contact, None);
            probe.from = Some(s.bare.clone());
            crate::s2s::forward(&s.state, probe);
            continue;
        }
        for r in s.state.router.resources(&contact) {
            if r.full == s.full {
                continue;
            }
            if let Some(pres) = &r.presence {
                let mut copy = (**pres).clone();
                copy.from = Some(r.full.clone());
                copy.to = Some(s.full.clone());
                s.reply(copy);
            }
        }
    }
    // Subscription requests that arrived while the user was away (RFC 6121 §3.1.3).
    for item in items.iter().filter(|i| i.pending_in) {
        let mut req = super::server_stanza("presence", Some("subscribe"), &item.jid, &s.bare, None);
        req.to = Some(s.bare.clone());
        s.reply(req);
    }
    offline::deliver(s).await;
}

/// The resource disconnected without saying goodbye (or after): tell everyone who saw it.
pub async fn went_offline(s: &mut Session) {
    let mut p = Stanza::new(ns::CLIENT, "presence");
    p.type_ = Some("unavailable".into());
    p.from = Some(s.full.clone());
    broadcast(s, p).await;
}

/// Directed presence (RFC 6121 §4.6): sent to one entity regardless of subscriptions, and
/// remembered so that it learns when the user goes offline.
async fn directed(s: &mut Session, mut p: Stanza, to: jid::Jid) {
    let target = to.to_string();
    super::avatar::stamp_presence(&s.state, &s.bare, &mut p).await;
    match p.type_.as_deref() {
        None => {
            s.directed.insert(target.clone());
        }
        Some("unavailable") => {
            s.directed.remove(&target);
        }
        _ => {}
    }
    route_directed(&s.state, p, &target).await;
}

pub async fn route_directed(state: &ServerState, p: Stanza, target: &str) {
    let Ok(j) = jid::Jid::new(target) else { return };
    if crate::component::owns(state, target) {
        // Presence to a component: queued for it, or dropped when it is away.
        let _ = crate::component::route(state, j.domain().as_str(), p);
        return;
    }
    if crate::s2s::owns(state, target) {
        crate::s2s::forward(state, p);
        return;
    }
    if !state.is_local_domain(j.domain().as_str()) || j.node().is_none() {
        return; // presence to other servers goes nowhere
    }
    let bare = j.to_bare().to_string();
    if p.from
        .as_deref()
        .is_some_and(|from| blocking::blocks_if_online(state, &bare, from))
    {
        return; // XEP-0191 §3.5: presence from a blocked entity is dropped
    }
    match j.resource() {
        Some(r) => {
            delivery::to_full(state, &bare, r.as_str(), p);
        }
        None => {
            delivery::to_available(state, &bare, &p, false);
        }
    }
}

/// A probe from a federated provider's server for its user `user` (RFC 6121 §4.3.2): the
/// account's current presence goes back over the link if `user` is subscribed to it.
pub async fn probe_from_link(state: &ServerState, user: &str, account: &str) {
    let (a, u) = (account.to_owned(), user.to_owned());
    let subscribed = matches!(
        state.store(move |st| st.roster_item(&a, &u)).await,
        Ok(Some(i)) if matches!(i.subscription, Subscription::From | Subscription::Both)
    );
    if !subscribed || !crate::interop::boundary::shares(state, account, user).await {
        return;
    }
    for r in state.router.resources(account) {
        if let Some(pres) = &r.presence {
            let mut copy = (**pres).clone();
            copy.from = Some(r.full.clone());
            copy.to = Some(user.to_owned());
            crate::s2s::forward(state, copy);
        }
    }
}

/// A client's explicit probe: answered with the contact's presence if the user may see it.
async fn probe(s: &mut Session, contact: &str) {
    let item = item_or_new(&s.state, &s.bare, contact).await;
    if contact != s.bare && !matches!(item.subscription, Subscription::To | Subscription::Both) {
        return;
    }
    if !crate::interop::boundary::shares(&s.state, &s.bare, contact).await {
        return;
    }
    for r in s.state.router.resources(contact) {
        if let Some(pres) = &r.presence {
            let mut copy = (**pres).clone();
            copy.from = Some(r.full.clone());
            copy.to = Some(s.full.clone());
            s.reply(copy);
        }
    }
}

/// The user's side of a subscription change (RFC 6121 §3), then the contact's side.
async fn subscription_from_client(s: &mut Session, ty: &str, contact: &str) {
    let state = s.state.clone();
    let user = s.bare.clone();
    let mut item = item_or_new(&state, &user, contact).await;
    match ty {
        "subscribe" => {
            if !matches!(item.subscription, Subscription::To | Subscription::Both) && !item.ask_out
            {
                item.ask_out = true;
                save_and_push(&state, &user, item, false).await;
            }
            inbound_subscribe(&state, &user, contact).await;
        }
        "unsubscribe" => {
            let before = item.clone();
            item.subscription = match item.subscription {
                Subscription::Both => Subscription::From,
                Subscription::To => Subscription::None,
                other => other,
            };
            item.ask_out = false;
            if item != before {
                save_and_push(&state, &user, item, false).await;
            }
            inbound_unsubscribe(&state, &user, contact).await;
        }
        "subscribed" => {
            // Approving needs a request to approve (pre-approval, RFC 6121 §3.4, is not offered).
            if !item.pending_in {
                return;
            }
            item.pending_in = false;
            item.subscription = match item.subscription {
                Subscription::None => Subscription::From,
                Subscription::To => Subscription::Both,
                other => other,
            };
            save_and_push(&state, &user, item, false).await;
            inbound_subscribed(&state, &user, contact).await;
        }
        "unsubscribed" => {
            let was_hidden = is_hidden(&item);
            item.pending_in = false;
            item.subscription = match item.subscription {
                Subscription::Both => Subscription::To,
                Subscription::From => Subscription::None,
                other => other,
            };
            save_and_push(&state, &user, item, was_hidden).await;
            inbound_unsubscribed(&state, &user, contact).await;
        }
        _ => {}
    }
}

fn subscription_presence(ty: &str, from: &str, to: &str) -> Stanza {
    super::server_stanza("presence", Some(ty), from, to, None)
}

fn is_local_account_domain(state: &ServerState, bare: &str) -> bool {
    bare.rsplit_once('@')
        .map(|(_, d)| state.is_local_domain(d))
        .unwrap_or(false)
}

/// `user` asks to see `contact`'s presence: at the contact's side.
pub async fn inbound_subscribe(state: &ServerState, user: &str, contact: &str) {
    if crate::component::owns(state, contact) {
        // To a component: it keeps its own subscriptions.
        let p = subscription_presence("subscribe", user, contact);
        let _ = crate::component::route_to_jid(state, contact, p);
        return;
    }
    if crate::s2s::owns(state, contact) {
        // To a federated provider's user: its server keeps that side.
        crate::s2s::forward(state, subscription_presence("subscribe", user, contact));
        return;
    }
    if !is_local_account_domain(state, contact) || !delivery::account_exists(state, contact).await {
        return;
    }
    if blocking::blocks(state, contact, user).await {
        return; // XEP-0191 §3.5: a blocked entity's subscription request is dropped
    }
    let mut item = item_or_new(state, contact, user).await;
    if matches!(item.subscription, Subscription::From | Subscription::Both) {
        // Already approved: answer on the contact's behalf (RFC 6121 §3.1.3).
        Box::pin(inbound_subscribed(state, contact, user)).await;
        return;
    }
    if !item.pending_in {
        item.pending_in = true;
        save_and_push(state, contact, item, false).await;
    }
    delivery::to_available(
        state,
        contact,
        &subscription_presence("subscribe", user, contact),
        false,
    );
}

/// `contact` approved `user`'s request: at the user's side.
pub async fn inbound_subscribed(state: &ServerState, contact: &str, user: &str) {
    if crate::component::owns(state, user) {
        // To a component: it keeps its own subscriptions.
        let p = subscription_presence("subscribed", contact, user);
        let _ = crate::component::route_to_jid(state, user, p);
        return;
    }
    if crate::s2s::owns(state, user) {
        // To a federated provider's user: its server keeps that side.
        crate::s2s::forward(state, subscription_presence("subscribed", contact, user));
        return;
    }
    if !is_local_account_domain(state, user) {
        return;
    }
    let mut item = item_or_new(state, user, contact).await;
    if !item.ask_out {
        return;
    }
    item.ask_out = false;
    item.subscription = match item.subscription {
        Subscription::None => Subscription::To,
        Subscription::From => Subscription::Both,
        other => other,
    };
    save_and_push(state, user, item, false).await;
    delivery::to_available(
        state,
        user,
        &subscription_presence("subscribed", contact, user),
        false,
    );
    // The user now sees the contact: send the contact's current presence.
    for r in state.router.resources(contact) {
        if let Some(p) = &r.presence {
            let mut copy = (**p).clone();
            copy.from = Some(r.full.clone());
            delivery::to_available(state, user, &copy, true);
        }
    }
}

/// `user` no longer wants `contact`'s presence: at the contact's side.
pub async fn inbound_unsubscribe(state: &ServerState, user: &str, contact: &str) {
    if crate::component::owns(state, contact) {
        // To a component: it keeps its own subscriptions.
        let p = subscription_presence("unsubscribe", user, contact);
        let _ = crate::component::route_to_jid(state, contact, p);
        return;
    }
    if crate::s2s::owns(state, contact) {
        // To a federated provider's user: its server keeps that side.
        crate::s2s::forward(state, subscription_presence("unsubscribe", user, contact));
        return;
    }
    if !is_local_account_domain(state, contact) {
        return;
    }
    let (c, u) = (contact.to_owned(), user.to_owned());
    let Ok(Some(mut item)) = state.store(move |s| s.roster_item(&c, &u)).await else {
        return;
    };
    let before = item.clone();
    item.pending_in = false;
    item.subscription = match item.subscription {
        Subscription::Both => Subscription::To,
        Subscription::From => Subscription::None,
        other => other,
    };
    if item != before {
        let remove = is_hidden(&before);
        save_and_push(state, contact, item, remove).await;
        delivery::to_available(
            state,
            contact,
            &subscription_presence("unsubscribe", user, contact),
            false,
        );
    }
}

/// `contact` cancelled or refused `user`'s subscription: at the user's side.
pub async fn inbound_unsubscribed(state: &ServerState, contact: &str, user: &str) {
    if crate::component::owns(state, user) {
        // To a component: it keeps its own subscriptions.
        let p = subscription_presence("unsubscribed", contact, user);
        let _ = crate::component::route_to_jid(state, user, p);
        return;
    }
    if crate::s2s::owns(state, user) {
        // To a federated provider's user: its server keeps that side.
        crate::s2s::forward(state, subscription_presence("unsubscribed", contact, user));
        return;
    }
    if !is_local_account_domain(state, user) {
        return;
    }
    let (u, c) = (user.to_owned(), contact.to_owned());
    let Ok(Some(mut item)) = state.store(move |s| s.roster_item(&u, &c)).await else {
        return;
    };
    let before = item.clone();
    item.ask_out = false;
    item.subscription = match item.subscription {
        Subscription::Both => Subscription::From,
        Subscription::To => Subscription::None,
        other => other,
    };
    if item == before {
        return;
    }
    save_and_push(state, user, item, false).await;
    delivery::to_available(
        state,
        user,
        &subscription_presence("unsubscribed", contact, user),
        false,
    );
    // The user no longer sees the contact: tell its clients the contact is gone.
    for r in state.router.resources(contact) {
        if r.is_available() {
            let mut u = Stanza::new(ns::CLIENT, "presence");
            u.type_ = Some("unavailable".into());
            u.from = Some(r.full.clone());
            delivery::to_available(state, user, &u, true);
        }
    }
}
