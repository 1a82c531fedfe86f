//! Personal eventing (XEP-0163): the XEP-0060 subset on account JIDs that OMEMO, avatars
//! (XEP-0084) and similar extensions use.
//!
//! * Nodes are created on first publish (`#auto-create`) with the PEP defaults or the
//!   publish-options (XEP-0060 §7.1.5); publish-options that do not match an existing node's
//!   configuration fail with `<conflict/><precondition-not-met/>`.
//! * Several items per node, keyed by item id, ordered by publication; retrieval of all, by
//!   id, or the newest `max_items`; retraction; node configuration (pubsub#owner) and
//!   deletion.
//! * Access models `open`, `presence` (contacts with a from/both subscription) and
//!   `whitelist` (the owner only).
//! * Subscriptions are implicit (XEP-0163 §4): events go to the owner's available resources
//!   and to the available resources of contacts whose entity capabilities advertise
//!   `<node>+notify`; a contact's resource gets the last items when its caps first show up.

use minidom::Element;
use strait_store::{PepItem, PepNodeConfig, StoreError, Subscription, effective_max};
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, escape_attr, ns};

use super::{attr, caps, delivery, iq_result};
use crate::c2s::session::Session;
use crate::server::ServerState;

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_DATA: &str = "jabber:x:data";
const NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// Items kept per node at most (also what `max_items=max` means).
pub const MAX_ITEMS_PER_NODE: usize = 1000;
/// Nodes per account at most.
pub const MAX_NODES: usize = 1000;
/// Longest node name or item id accepted.
const MAX_NAME: usize = 1024;

/// The pubsub features advertised on account JIDs.
pub const FEATURES: &[&str] = &[
    NS,
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#presence-notifications",
];

/// An error answer with an XEP-0060 application-specific condition.
fn pubsub_error(
    s: &mut Session,
    req: &Stanza,
    type_: &str,
    condition: StanzaErrorCondition,
    app: Option<&str>,
    text: Option<&str>,
) {
    if req.type_.as_deref() == Some("error") {
        return;
    }
    let mut r = Stanza::new(ns::CLIENT, "iq");
    r.id = req.id.clone();
    r.from = req.to.clone();
    r.to = req.from.clone();
    r.type_ = Some("error".into());
    let mut x = format!(
        "<error xmlns='{}' type='{type_}'><{} xmlns='{}'/>",
        ns::CLIENT,
        condition.as_str(),
        ns::STANZAS
    );
    if let Some(a) = app {
        x.push_str(&format!("<{a} xmlns='{NS_ERRORS}'/>"));
    }
    if let Some(t) = text {
        x.push_str(&format!(
            "<text xmlns='{}'>{}</text>",
            ns::STANZAS,
            strait_wire::escape_text(t)
        ));
    }
    x.push_str("</error>");
    r.push_child_xml(&x);
    s.reply(r);
}

fn simple_error(s: &mut Session, req: &Stanza, condition: StanzaErrorCondition, text: &str) {
    s.reply_error(req, StanzaError::with_text(condition, text));
}

fn store_failed(s: &mut Session, req: &Stanza, e: &StoreError) {
    match e {
        StoreError::QuotaExceeded { limit, .. } => pubsub_error(
            s,
            req,
            "wait",
            StanzaErrorCondition::ResourceConstraint,
            None,
            Some(&format!("too many PEP nodes (limit {limit})")),
        ),
        _ => {
            tracing::error!(account = %s.bare, "PEP store: {e}");
            s.reply_error(
                req,
                StanzaError::new(StanzaErrorCondition::InternalServerError),
            );
        }
    }
}

/// Canonical XML of an element (declaring its own namespace).
fn element_xml(el: &Element) -> String {
    let mut st = Stanza::new(ns::CLIENT, "x");
    st.push_child(el);
    st.inner_xml().to_owned()
}

/// The fields of a data form: `(var, values)`.
fn form_fields(x: &Element) -> Vec<(String, Vec<String>)> {
    x.children()
        .filter(|c| c.is("field", NS_DATA))
        .map(|f| {
            (
                f.attr("var").unwrap_or("").to_owned(),
                f.children()
                    .filter(|v| v.is("value", NS_DATA))
                    .map(|v| v.text())
                    .collect(),
            )
        })
        .collect()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// A config field we act on, parsed.
enum Setting {
    Access(String),
    MaxItems(Option<u32>),
    Persist(bool),
}

/// Parses the fields we understand; `Err(var)` for an invalid value. Unknown fields are
/// ignored.
fn settings(fields: &[(String, Vec<String>)]) -> Result<Vec<Setting>, String> {
    let mut out = Vec::new();
    for (var, values) in fields {
        let v = values.first().map(|v| v.trim()).unwrap_or("");
        let s = match var.as_str() {
            "pubsub#access_model" => match v {
                "open" | "presence" | "whitelist" => Setting::Access(v.to_owned()),
                _ => return Err(var.clone()),
            },
            "pubsub#max_items" => match v {
                "max" => Setting::MaxItems(None),
                n => match n.parse::<u32>() {
                    Ok(n) if n >= 1 => Setting::MaxItems(Some(n)),
                    _ => return Err(var.clone()),
                },
            },
            "pubsub#persist_items" => match parse_bool(v) {
                Some(b) => Setting::Persist(b),
                None => return Err(var.clone()),
            },
            _ => continue,
        };
        out.push(s);
    }
    Ok(out)
}

/// Applies a configuration form to `config`; answers `not-acceptable` naming the bad field
/// and returns false if a value is invalid.
fn apply_form(
    s: &mut Session,
    req: &Stanza,
    config: &mut PepNodeConfig,
    fields: &[(String, Vec<String>)],
) -> bool {
    match settings(fields) {
        Ok(w) => {
            apply(config, &w);
            true
        }
        Err(var) => {
            simple_error(
                s,
                req,
                StanzaErrorCondition::NotAcceptable,
                &format!("invalid {var}"),
            );
            false
        }
    }
}

fn apply(config: &mut PepNodeConfig, settings: &[Setting]) {
    for s in settings {
        match s {
            Setting::Access(a) => config.access_model = a.clone(),
            Setting::MaxItems(m) => config.max_items = *m,
            Setting::Persist(p) => config.persist_items = *p,
        }
    }
}

/// Whether the node's configuration already satisfies the publish-options.
fn matches(config: &PepNodeConfig, settings: &[Setting]) -> bool {
    settings.iter().all(|s| match s {
        Setting::Access(a) => config.access_model == *a,
        Setting::MaxItems(m) => {
            effective_max(config, MAX_ITEMS_PER_NODE)
                == effective_max(
                    &PepNodeConfig {
                        max_items: *m,
                        ..config.clone()
                    },
                    MAX_ITEMS_PER_NODE,
                )
        }
        Setting::Persist(p) => config.persist_items == *p,
    })
}

/// The data form (`type='form'`) of a node's configuration.
pub fn config_form(config: &PepNodeConfig) -> String {
    let max = config
        .max_items
        .map_or_else(|| "max".to_owned(), |m| m.to_string());
    let mut x = format!(
        "<x xmlns='{NS_DATA}' type='form'>\
         <field var='FORM_TYPE' type='hidden'><value>{NODE_CONFIG}</value></field>\
         <field var='pubsub#access_model' type='list-single' label='Who may retrieve items'>"
    );
    for o in ["open", "presence", "whitelist"] {
        x.push_str(&format!("<option><value>{o}</value></option>"));
    }
    x.push_str(&format!(
        "<value>{}</value></field>\
         <field var='pubsub#max_items' type='text-single' label='Most items kept'><value>{max}</value></field>\
         <field var='pubsub#persist_items' type='boolean' label='Persist items'><value>{}</value></field>\
         </x>",
        escape_attr(&config.access_model),
        if config.persist_items { 1 } else { 0 }
    ));
    x
}

/// The owner's bare JID a request is addressed to (no `to` = the user's own).
fn target_owner(s: &Session, stanza: &Stanza) -> String {
    match stanza.to.as_deref() {
        Some(t) => t.split('/').next().unwrap_or(t).to_owned(),
        None => s.bare.clone(),
    }
}

/// Whether `requester` may retrieve items of `owner`'s node with this access model.
async fn may_access(state: &ServerState, owner: &str, requester: &str, model: &str) -> bool {
    if owner == requester || model == "open" {
        return true;
    }
    if model != "presence" {
        return false;
    }
    let (o, r) = (owner.to_owned(), requester.to_owned());
    matches!(
        state.store(move |st| st.roster_item(&o, &r)).await,
        Ok(Some(i)) if matches!(i.subscription, Subscription::From | Subscription::Both)
    )
}

async fn access_denied(s: &mut Session, req: &Stanza, model: &str) {
    if model == "presence" {
        pubsub_error(
            s,
            req,
            "auth",
            StanzaErrorCondition::NotAuthorized,
            Some("presence-subscription-required"),
            None,
        );
    } else {
        pubsub_error(
            s,
            req,
            "cancel",
            StanzaErrorCondition::NotAllowed,
            Some("closed-node"),
            None,
        );
    }
}

fn node_attr(s: &mut Session, req: &Stanza, el: &Element) -> Option<String> {
    match el.attr("node") {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME => Some(n.to_owned()),
        Some(n) if n.len() > MAX_NAME => {
            simple_error(
                s,
                req,
                StanzaErrorCondition::NotAcceptable,
                "node name too long",
            );
            None
        }
        _ => {
            pubsub_error(
                s,
                req,
                "modify",
                StanzaErrorCondition::BadRequest,
                Some("nodeid-required"),
                None,
            );
            None
        }
    }
}

/// A `<pubsub/>` or `<pubsub xmlns='…#owner'/>` request to an account's bare JID (or with
/// no `to`).
pub async fn handle(s: &mut Session, stanza: &Stanza, p: &Element) {
    let owner = target_owner(s, stanza);
    let own = owner == s.bare;
    let get = stanza.type_.as_deref() == Some("get");
    let mut verbs = p.children().filter(|c| {
        !(c.name() == "publish-options" || (c.name() == "configure" && !get && p.ns() == NS))
    });
    let Some(verb) = verbs.next().cloned() else {
        simple_error(
            s,
            stanza,
            StanzaErrorCondition::BadRequest,
            "empty pubsub request",
        );
        return;
    };
    let owner_ns = p.ns() == NS_OWNER;
    match (owner_ns, verb.name(), get) {
        (false, "items", true) => items(s, stanza, &verb, &owner).await,
        (false, "publish", false) if own => publish(s, stanza, p, &verb).await,
        (false, "retract", false) if own => retract(s, stanza, &verb).await,
        (false, "create", false) if own => create(s, stanza, p, &verb).await,
        (false, "subscribe" | "unsubscribe", false) => subscribe(s, stanza, &verb, &owner).await,
        (false, "subscriptions" | "affiliations", true) if own => s.reply(iq_result(
            stanza,
            Some(&format!("<pubsub xmlns='{NS}'><{}/></pubsub>", verb.name())),
        )),
        (true, "configure", true) if own => configure_get(s, stanza, &verb).await,
        (true, "configure", false) if own => configure_set(s, stanza, &verb).await,
        (true, "default", true) if own => s.reply(iq_result(
            stanza,
            Some(&format!(
                "<pubsub xmlns='{NS_OWNER}'><default>{}</default></pubsub>",
                config_form(&PepNodeConfig::default())
            )),
        )),
        (true, "delete", false) if own => delete(s, stanza, &verb).await,
        (_, "publish" | "retract" | "create" | "configure" | "default" | "delete", _) => {
            pubsub_error(
                s,
                stanza,
                "auth",
                StanzaErrorCondition::Forbidden,
                None,
                None,
            )
        }
        _ => pubsub_error(
            s,
            stanza,
            "cancel",
            StanzaErrorCondition::FeatureNotImplemented,
            Some("unsupported"),
            None,
        ),
    }
}

async fn node_config(
    s: &mut Session,
    owner: &str,
    node: &str,
) -> Result<Option<PepNodeConfig>, StoreError> {
    let (o, n) = (owner.to_owned(), node.to_owned());
    s.state.store(move |st| st.pep_node(&o, &n)).await
}

async fn items(s: &mut Session, req: &Stanza, verb: &Element, owner: &str) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let config = match node_config(s, owner, &node).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node");
            return;
        }
        Err(e) => return store_failed(s, req, &e),
    };
    if !may_access(&s.state, owner, &s.bare, &config.access_model).await {
        return access_denied(s, req, &config.access_model).await;
    }
    match read_items(&s.state, owner, &node, verb).await {
        Ok(x) => s.reply(iq_result(req, Some(&x))),
        Err(e) => store_failed(s, req, &e),
    }
}

/// The `<pubsub/>` answer to an `<items/>` request on `owner`'s `node` (the ids it names, or
/// the newest `max_items`, or all), access already granted.
async fn read_items(
    state: &ServerState,
    owner: &str,
    node: &str,
    verb: &Element,
) -> Result<String, StoreError> {
    let ids: Vec<String> = verb
        .children()
        .filter(|c| c.is("item", NS))
        .filter_map(|c| c.attr("id").map(str::to_owned))
        .collect();
    let max = verb.attr("max_items").and_then(|m| m.parse::<usize>().ok());
    let (o, n) = (owner.to_owned(), node.to_owned());
    let ids = if ids.is_empty() { None } else { Some(ids) };
    let found = state
        .store(move |st| st.pep_items(&o, &n, ids.as_deref(), max))
        .await?;
    let mut x = format!("<pubsub xmlns='{NS}'><items{}>", attr("node", node));
    for i in &found {
        x.push_str(&item_xml(i));
    }
    x.push_str("</items></pubsub>");
    Ok(x)
}

/// Items of `owner`'s node for a requester on another server (over an interop link): the
/// `<pubsub/>` result payload, or the error. Only item retrieval is offered there; OMEMO
/// clients fetch device lists and bundles with it.
pub async fn remote_items(
    state: &ServerState,
    req: &Stanza,
    requester: &str,
    owner: &str,
) -> Result<String, StanzaError> {
    let bad = |text: &str| StanzaError::with_text(StanzaErrorCondition::BadRequest, text);
    let p = req
        .first_payload()
        .ok()
        .flatten()
        .filter(|p| p.is("pubsub", NS))
        .ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::ServiceUnavailable,
                "only pubsub item retrieval is answered across an interop link",
            )
        })?;
    let verb = p
        .children()
        .find(|c| c.is("items", NS))
        .filter(|_| req.type_.as_deref() == Some("get"))
        .ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::FeatureNotImplemented,
                "only pubsub item retrieval is answered across an interop link",
            )
        })?;
    let node = verb
        .attr("node")
        .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
        .ok_or_else(|| bad("a node name is required"))?
        .to_owned();
    let (o, n) = (owner.to_owned(), node.clone());
    let failed = |e: StoreError| {
        tracing::error!(%owner, "reading PEP for a remote requester: {e}");
        StanzaError::new(StanzaErrorCondition::InternalServerError)
    };
    let config = state
        .store(move |st| st.pep_node(&o, &n))
        .await
        .map_err(failed)?
        .ok_or_else(|| {
            StanzaError::with_text(StanzaErrorCondition::ItemNotFound, "no such node")
        })?;
    if !may_access(state, owner, requester, &config.access_model).await {
        return Err(StanzaError::new(if config.access_model == "presence" {
            StanzaErrorCondition::NotAuthorized
        } else {
            StanzaErrorCondition::NotAllowed
        }));
    }
    read_items(state, owner, &node, verb).await.map_err(failed)
}

fn item_xml(i: &PepItem) -> String {
    format!("<item{}>{}</item>", attr("id", &i.id), i.payload)
}

async fn publish(s: &mut Session, req: &Stanza, p: &Element, verb: &Element) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let mut item_els = verb.children().filter(|c| c.is("item", NS));
    let item = item_els.next();
    if item_els.next().is_some() {
        simple_error(
            s,
            req,
            StanzaErrorCondition::BadRequest,
            "one item per publish",
        );
        return;
    }
    let Some(item) = item else {
        pubsub_error(
            s,
            req,
            "modify",
            StanzaErrorCondition::BadRequest,
            Some("item-required"),
            None,
        );
        return;
    };
    let mut payloads = item.children();
    let (Some(payload), None) = (payloads.next(), payloads.next()) else {
        pubsub_error(
            s,
            req,
            "modify",
            StanzaErrorCondition::BadRequest,
            Some(if item.children().next().is_none() {
                "payload-required"
            } else {
                "invalid-payload"
            }),
            None,
        );
        return;
    };
    let id = match item.attr("id") {
        Some(i) if !i.is_empty() && i.len() <= MAX_NAME => i.to_owned(),
        Some(i) if i.len() > MAX_NAME => {
            simple_error(
                s,
                req,
                StanzaErrorCondition::NotAcceptable,
                "item id too long",
            );
            return;
        }
        _ => format!("{:016x}", rand::random::<u64>()),
    };
    // Publish-options (XEP-0060 §7.1.5).
    let options = p
        .get_child("publish-options", NS)
        .and_then(|po| po.get_child("x", NS_DATA))
        .map(form_fields)
        .unwrap_or_default();
    if let Some((_, v)) = options.iter().find(|(var, _)| var == "FORM_TYPE")
        && v.first().map(String::as_str) != Some(PUBLISH_OPTIONS)
    {
        simple_error(
            s,
            req,
            StanzaErrorCondition::BadRequest,
            "wrong FORM_TYPE in publish-options",
        );
        return;
    }
    let wanted = match settings(&options) {
        Ok(w) => w,
        Err(var) => {
            pubsub_error(
                s,
                req,
                "cancel",
                StanzaErrorCondition::Conflict,
                Some("precondition-not-met"),
                Some(&format!("unsupported value of {var}")),
            );
            return;
        }
    };
    let owner = s.bare.clone();
    let config = match node_config(s, &owner, &node).await {
        Ok(Some(c)) => {
            if !matches(&c, &wanted) {
                pubsub_error(
                    s,
                    req,
                    "cancel",
                    StanzaErrorCondition::Conflict,
                    Some("precondition-not-met"),
                    Some("the node's configuration differs from the publish-options"),
                );
                return;
            }
            c
        }
        Ok(None) => {
            let mut c = PepNodeConfig::default();
            apply(&mut c, &wanted);
            let (o, n, cc) = (owner.clone(), node.clone(), c.clone());
            if let Err(e) = s
                .state
                .store(move |st| st.pep_configure(&o, &n, &cc, MAX_NODES, MAX_ITEMS_PER_NODE))
                .await
            {
                return store_failed(s, req, &e);
            }
            c
        }
        Err(e) => return store_failed(s, req, &e),
    };
    let stored = PepItem {
        id: id.clone(),
        payload: element_xml(payload),
        stamp_ms: super::now_ms(),
    };
    let keep = effective_max(&config, MAX_ITEMS_PER_NODE);
    let (o, n, it) = (owner.clone(), node.clone(), stored.clone());
    if let Err(e) = s
        .state
        .store(move |st| st.pep_publish(&o, &n, &it, keep))
        .await
    {
        return store_failed(s, req, &e);
    }
    s.reply(iq_result(
        req,
        Some(&format!(
            "<pubsub xmlns='{NS}'><publish{}><item{}/></publish></pubsub>",
            attr("node", &node),
            attr("id", &id)
        )),
    ));
    let event = format!(
        "<event xmlns='{NS_EVENT}'><items{}>{}</items></event>",
        attr("node", &node),
        item_xml(&stored)
    );
    notify(&s.state, &owner, &node, &config, &event).await;
    // XEP-0398: a new avatar goes into the vCard too.
    if node == super::avatar::NODE_METADATA {
        super::avatar::metadata_published(&s.state, &owner, payload).await;
    }
}

async fn retract(s: &mut Session, req: &Stanza, verb: &Element) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let Some(id) = verb
        .children()
        .find(|c| c.is("item", NS))
        .and_then(|c| c.attr("id"))
        .map(str::to_owned)
    else {
        pubsub_error(
            s,
            req,
            "modify",
            StanzaErrorCondition::BadRequest,
            Some("item-required"),
            None,
        );
        return;
    };
    let owner = s.bare.clone();
    let config = match node_config(s, &owner, &node).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node");
        }
        Err(e) => return store_failed(s, req, &e),
    };
    let (o, n, i) = (owner.clone(), node.clone(), id.clone());
    match s.state.store(move |st| st.pep_retract(&o, &n, &i)).await {
        Ok(true) => {}
        Ok(false) => {
            return simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such item");
        }
        Err(e) => return store_failed(s, req, &e),
    }
    s.reply(iq_result(req, None));
    if matches!(verb.attr("notify"), Some("1" | "true")) {
        let event = format!(
            "<event xmlns='{NS_EVENT}'><items{}><retract{}/></items></event>",
            attr("node", &node),
            attr("id", &id)
        );
        notify(&s.state, &owner, &node, &config, &event).await;
    }
}

async fn create(s: &mut Session, req: &Stanza, p: &Element, verb: &Element) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let owner = s.bare.clone();
    match node_config(s, &owner, &node).await {
        Ok(Some(_)) => {
            return simple_error(s, req, StanzaErrorCondition::Conflict, "the node exists");
        }
        Ok(None) => {}
        Err(e) => return store_failed(s, req, &e),
    }
    let fields = p
        .get_child("configure", NS)
        .and_then(|c| c.get_child("x", NS_DATA))
        .map(form_fields)
        .unwrap_or_default();
    let mut config = PepNodeConfig::default();
    if !apply_form(s, req, &mut config, &fields) {
        return;
    }
    let (o, n) = (owner, node);
    if let Err(e) = s
        .state
        .store(move |st| st.pep_configure(&o, &n, &config, MAX_NODES, MAX_ITEMS_PER_NODE))
        .await
    {
        return store_failed(s, req, &e);
    }
    s.reply(iq_result(req, None));
}

async fn subscribe(s: &mut Session, req: &Stanza, verb: &Element, owner: &str) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let jid = verb.attr("jid").unwrap_or(&s.full).to_owned();
    if jid.split('/').next() != Some(s.bare.as_str()) {
        pubsub_error(
            s,
            req,
            "modify",
            StanzaErrorCondition::BadRequest,
            Some("invalid-jid"),
            None,
        );
        return;
    }
    let config = match node_config(s, owner, &node).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node");
        }
        Err(e) => return store_failed(s, req, &e),
    };
    if !may_access(&s.state, owner, &s.bare, &config.access_model).await {
        return access_denied(s, req, &config.access_model).await;
    }
    if verb.name() == "unsubscribe" {
        s.reply(iq_result(req, None));
        return;
    }
    // Subscriptions are not stored: PEP notifications follow presence and caps
    // (XEP-0163 §4); the request is acknowledged so that clients carry on.
    s.reply(iq_result(
        req,
        Some(&format!(
            "<pubsub xmlns='{NS}'><subscription{}{} subscription='subscribed'/></pubsub>",
            attr("node", &node),
            attr("jid", &jid)
        )),
    ));
}

async fn configure_get(s: &mut Session, req: &Stanza, verb: &Element) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let owner = s.bare.clone();
    match node_config(s, &owner, &node).await {
        Ok(Some(c)) => s.reply(iq_result(
            req,
            Some(&format!(
                "<pubsub xmlns='{NS_OWNER}'><configure{}>{}</configure></pubsub>",
                attr("node", &node),
                config_form(&c)
            )),
        )),
        Ok(None) => simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node"),
        Err(e) => store_failed(s, req, &e),
    }
}

async fn configure_set(s: &mut Session, req: &Stanza, verb: &Element) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let owner = s.bare.clone();
    let mut config = match node_config(s, &owner, &node).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node");
        }
        Err(e) => return store_failed(s, req, &e),
    };
    let Some(x) = verb.get_child("x", NS_DATA) else {
        return simple_error(
            s,
            req,
            StanzaErrorCondition::BadRequest,
            "no configuration form",
        );
    };
    if x.attr("type") == Some("cancel") {
        s.reply(iq_result(req, None));
        return;
    }
    let fields = form_fields(x);
    if !apply_form(s, req, &mut config, &fields) {
        return;
    }
    let (o, n) = (owner, node);
    match s
        .state
        .store(move |st| st.pep_configure(&o, &n, &config, MAX_NODES, MAX_ITEMS_PER_NODE))
        .await
    {
        Ok(()) => s.reply(iq_result(req, None)),
        Err(e) => store_failed(s, req, &e),
    }
}

async fn delete(s: &mut Session, req: &Stanza, verb: &Element) {
    let Some(node) = node_attr(s, req, verb) else {
        return;
    };
    let owner = s.bare.clone();
    let config = match node_config(s, &owner, &node).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node");
        }
        Err(e) => return store_failed(s, req, &e),
    };
    let (o, n) = (owner.clone(), node.clone());
    if let Err(e) = s.state.store(move |st| st.pep_delete_node(&o, &n)).await {
        return store_failed(s, req, &e);
    }
    s.reply(iq_result(req, None));
    let event = format!(
        "<event xmlns='{NS_EVENT}'><delete{}/></event>",
        attr("node", &node)
    );
    notify(&s.state, &owner, &node, &config, &event).await;
}

/// Publishes `payload_xml` as item `id` of the owner's `node` on the server's own initiative
/// (XEP-0398's conversion), creating the node with `new_config` if it does not exist, and
/// notifies as a client's publication would. Returns the node's configuration.
pub async fn publish_for(
    state: &ServerState,
    owner: &str,
    node: &str,
    id: &str,
    payload_xml: &str,
    new_config: &PepNodeConfig,
) -> Result<PepNodeConfig, StoreError> {
    let (o, n) = (owner.to_owned(), node.to_owned());
    let config = match state.store(move |st| st.pep_node(&o, &n)).await? {
        Some(c) => c,
        None => {
            let (o, n, c) = (owner.to_owned(), node.to_owned(), new_config.clone());
            state
                .store(move |st| st.pep_configure(&o, &n, &c, MAX_NODES, MAX_ITEMS_PER_NODE))
                .await?;
            new_config.clone()
        }
    };
    let stored = PepItem {
        id: id.to_owned(),
        payload: payload_xml.to_owned(),
        stamp_ms: super::now_ms(),
    };
    let keep = effective_max(&config, MAX_ITEMS_PER_NODE);
    let (o, n, it) = (owner.to_owned(), node.to_owned(), stored.clone());
    state
        .store(move |st| st.pep_publish(&o, &n, &it, keep))
        .await?;
    let event = format!(
        "<event xmlns='{NS_EVENT}'><items{}>{}</items></event>",
        attr("node", node),
        item_xml(&stored)
    );
    notify(state, owner, node, &config, &event).await;
    Ok(config)
}

fn event_message(owner: &str, to: &str, event_xml: &str) -> Stanza {
    let mut m = super::server_stanza(
        "message",
        Some("headline"),
        owner,
        to,
        Some(format!("pep-{:016x}", rand::random::<u64>())),
    );
    m.push_child_xml(event_xml);
    m
}

/// Sends an event to the owner's available resources and to the contacts' resources that
/// asked for the node with `+notify` (access model permitting).
async fn notify(
    state: &ServerState,
    owner: &str,
    node: &str,
    config: &PepNodeConfig,
    event_xml: &str,
) {
    for r in state.router.resources(owner) {
        if r.is_available() {
            r.send(event_message(owner, &r.full, event_xml));
        }
    }
    if config.access_model == "whitelist" {
        return;
    }
    let o = owner.to_owned();
    let contacts = match state.store(move |st| st.roster(&o)).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::error!(account = %owner, "reading the roster for PEP: {e}");
            return;
        }
    };
    for c in contacts
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
    {
        if !crate::interop::boundary::shares(state, owner, &c.jid).await {
            continue;
        }
        // A federated provider's user: its resources that want the node, over the link.
        if crate::s2s::owns(state, &c.jid) {
            for full in caps::remote_wanting(&c.jid, node) {
                crate::s2s::forward(state, event_message(owner, &full, event_xml));
            }
            continue;
        }
        for r in state.router.resources(&c.jid) {
            if r.is_available() && caps::wants_notify(state, &r.full, node) {
                delivery::to_full(
                    state,
                    &c.jid,
                    &r.resource,
                    event_message(owner, &r.full, event_xml),
                );
            }
        }
    }
}

/// The last item of every node the session's resource wants (by its caps), from the user's
/// own account and from every contact whose presence the user sees (XEP-0163 §4.3.4).
pub async fn send_last_items(s: &mut Session) {
    let bare = s.bare.clone();
    let mut publishers = vec![bare.clone()];
    match s.state.store(move |st| st.roster(&bare)).await {
        Ok((_, items)) => publishers.extend(
            items
                .into_iter()
                .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
                .map(|i| i.jid),
        ),
        Err(e) => tracing::error!(account = %s.bare, "reading the roster for PEP: {e}"),
    }
    for publisher in publishers {
        if !crate::interop::boundary::shares(&s.state, &s.bare, &publisher).await {
            continue;
        }
        let (state, full) = (s.state.clone(), s.full.clone());
        let wants = |node: &str| caps::wants_notify(&state, &full, node);
        for event in last_item_events(&state, &publisher, &s.bare, wants).await {
            s.reply(event_message(&publisher, &full, &event));
        }
    }
}

/// The `<event/>` of the last item of each of `publisher`'s nodes that `wants` names and
/// `requester` may see (a whitelist node only when it is its own).
async fn last_item_events(
    state: &ServerState,
    publisher: &str,
    requester: &str,
    wants: impl Fn(&str) -> bool,
) -> Vec<String> {
    let p = publisher.to_owned();
    let Ok(nodes) = state.store(move |st| st.pep_nodes(&p)).await else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for node in nodes {
        if !wants(&node) {
            continue;
        }
        let (p, n) = (publisher.to_owned(), node.clone());
        let Ok(Some(config)) = state.store(move |st| st.pep_node(&p, &n)).await else {
            continue;
        };
        if publisher != requester && config.access_model == "whitelist" {
            continue;
        }
        let (p, n) = (publisher.to_owned(), node.clone());
        let Ok(last) = state
            .store(move |st| st.pep_items(&p, &n, None, Some(1)))
            .await
        else {
            continue;
        };
        for item in last {
            events.push(format!(
                "<event xmlns='{NS_EVENT}'><items{}>{}</items></event>",
                attr("node", &node),
                item_xml(&item)
            ));
        }
    }
    events
}

/// The last item of each of `owner`'s nodes that the resource `full` on a federated
/// provider's server wants (`features`: its caps), over the link, if `full`'s account may
/// see them (a presence subscription, the boundary's consent).
pub async fn send_last_items_to_link(
    state: &ServerState,
    owner: &str,
    full: &str,
    features: &[String],
) {
    let contact = full.split('/').next().unwrap_or(full).to_owned();
    let (o, c) = (owner.to_owned(), contact.clone());
    let subscribed = matches!(
        state.store(move |st| st.roster_item(&o, &c)).await,
        Ok(Some(i)) if matches!(i.subscription, Subscription::From | Subscription::Both)
    );
    if !subscribed || !crate::interop::boundary::shares(state, owner, &contact).await {
        return;
    }
    let wants = |node: &str| features.contains(&format!("{node}+notify"));
    for event in last_item_events(state, owner, &contact, wants).await {
        crate::s2s::forward(state, event_message(owner, full, &event));
    }
}

/// disco#items on an account: its PEP nodes the requester may see (XEP-0060 §5.2).
pub async fn disco_items(s: &mut Session, req: &Stanza) {
    let owner = target_owner(s, req);
    let o = owner.clone();
    let nodes = match s.state.store(move |st| st.pep_nodes(&o)).await {
        Ok(n) => n,
        Err(e) => return store_failed(s, req, &e),
    };
    let mut x = format!("<query xmlns='{}'>", super::disco::ITEMS);
    for node in nodes {
        if owner != s.bare {
            let (o, n) = (owner.clone(), node.clone());
            let Ok(Some(c)) = s.state.store(move |st| st.pep_node(&o, &n)).await else {
                continue;
            };
            if !may_access(&s.state, &owner, &s.bare, &c.access_model).await {
                continue;
            }
        }
        x.push_str(&format!(
            "<item{}{}/>",
            attr("jid", &owner),
            attr("node", &node)
        ));
    }
    x.push_str("</query>");
    s.reply(iq_result(req, Some(&x)));
}

/// disco#info on one PEP node of an account.
pub async fn disco_node_info(s: &mut Session, req: &Stanza, node: &str) {
    let owner = target_owner(s, req);
    match node_config(s, &owner, node).await {
        Ok(Some(c)) if may_access(&s.state, &owner, &s.bare, &c.access_model).await => {
            let x = format!(
                "<query xmlns='{}'{}><identity category='pubsub' type='leaf'/><feature var='{NS}'/></query>",
                super::disco::INFO,
                attr("node", node)
            );
            s.reply(iq_result(req, Some(&x)));
        }
        Ok(_) => simple_error(s, req, StanzaErrorCondition::ItemNotFound, "no such node"),
        Err(e) => store_failed(s, req, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(xml: &str) -> Vec<(String, Vec<String>)> {
        form_fields(&xml.parse::<Element>().unwrap())
    }

    #[test]
    fn publish_options_match_and_conflict() {
        let f = form(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='pubsub#access_model'><value>open</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x>",
        );
        let w = settings(&f).unwrap();
        let mut c = PepNodeConfig::default();
        assert!(!matches(&c, &w));
        apply(&mut c, &w);
        assert_eq!(c.access_model, "open");
        assert_eq!(c.max_items, None);
        assert!(matches(&c, &w));
        // "max" and the server's own limit are the same thing.
        c.max_items = Some(MAX_ITEMS_PER_NODE as u32);
        assert!(matches(&c, &w));
        let bad = form(
            "<x xmlns='jabber:x:data'><field var='pubsub#access_model'><value>roster</value></field></x>",
        );
        assert!(settings(&bad).is_err());
        assert!(config_form(&c).contains("<value>open</value></field>"));
    }
}
