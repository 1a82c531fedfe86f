//! XEP-0115 entity capabilities: what each connected resource supports, learned from the
//! `<c node ver hash/>` in its presence and resolved with a disco#info query to the client.
//!
//! Results are cached by `ver` only when the SHA-1 hash of the answer (XEP-0115 §5.1)
//! equals the advertised `ver`, so one client cannot poison the cache for others with a
//! forged answer; anything else (legacy caps, other hashes, mismatches) is remembered for
//! that one resource only. The cache is content-addressed, so it is process-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use base64::Engine;
use sha1::{Digest, Sha1};
use strait_wire::Stanza;

use super::disco;
use crate::c2s::session::Session;
use crate::server::ServerState;

pub const NS: &str = "http://jabber.org/protocol/caps";
const DATA_NS: &str = "jabber:x:data";
/// Cached feature sets kept at most (verified `ver` values, and per-resource answers).
const MAX_CACHE: usize = 10_000;

/// The `<c/>` element of a presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    pub node: String,
    pub ver: String,
    pub hash: Option<String>,
}

struct Pending {
    full: String,
    caps: Caps,
    /// For a resource on a federated provider's server: the platform account it is a
    /// contact of, whose last items it gets once its caps are known.
    link_contact_of: Option<String>,
}

#[derive(Default)]
struct CapsState {
    /// Verified `ver` → features.
    verified: HashMap<String, Arc<Vec<String>>>,
    /// Full JID → (`ver`, features) for answers that could not be verified.
    per_resource: HashMap<String, (String, Arc<Vec<String>>)>,
    /// Outstanding disco#info queries by IQ id.
    pending: HashMap<String, Pending>,
    /// Full JID (with connection id) → the `ver` whose last items were already sent.
    announced: HashMap<(String, u64), String>,
    /// Resources on federated providers' servers (interop links) that are available to a
    /// platform account, by bare JID: full JID → caps. They are not in the router.
    remote: HashMap<String, HashMap<String, Caps>>,
}

fn state() -> MutexGuard<'static, CapsState> {
    static S: OnceLock<Mutex<CapsState>> = OnceLock::new();
    S.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The caps advertised in a presence stanza.
pub fn caps_of(presence: &Stanza) -> Option<Caps> {
    let xml = presence.child_xml(NS, "c")?;
    let el: minidom::Element = xml.parse().ok()?;
    Some(Caps {
        node: el.attr("node")?.to_owned(),
        ver: el.attr("ver")?.to_owned(),
        hash: el.attr("hash").map(str::to_owned),
    })
}

fn features_for(full: &str, caps: &Caps) -> Option<Arc<Vec<String>>> {
    let g = state();
    if let Some(f) = g.verified.get(&caps.ver) {
        return Some(f.clone());
    }
    match g.per_resource.get(full) {
        Some((ver, f)) if *ver == caps.ver => Some(f.clone()),
        _ => None,
    }
}

/// Whether the resource `full` (`bare/resource`) is available and its caps advertise
/// `<node>+notify` (XEP-0163 §4.3).
pub fn wants_notify(state: &ServerState, full: &str, node: &str) -> bool {
    let Some((bare, res)) = full.split_once('/') else {
        return false;
    };
    let Some(r) = state.router.resource(bare, res) else {
        return false;
    };
    let Some(caps) = r.presence.as_deref().and_then(caps_of) else {
        return false;
    };
    let want = format!("{node}+notify");
    features_for(full, &caps).is_some_and(|f| f.contains(&want))
}

/// The available resources of `bare` (a federated provider's user) whose caps advertise
/// `<node>+notify`.
pub fn remote_wanting(bare: &str, node: &str) -> Vec<String> {
    let want = format!("{node}+notify");
    let resources: Vec<(String, Caps)> = match state().remote.get(bare) {
        Some(r) => r.iter().map(|(f, c)| (f.clone(), c.clone())).collect(),
        None => return Vec::new(),
    };
    resources
        .into_iter()
        .filter(|(full, caps)| features_for(full, caps).is_some_and(|f| f.contains(&want)))
        .map(|(full, _)| full)
        .collect()
}

/// A presence from a federated provider's user (over an interop link) to the platform
/// account `account`: its resource is tracked while available, its caps resolved with a
/// disco#info query over the link, and once they are known it gets `account`'s last items
/// it wants (XEP-0163 §4.3.4), as a local resource would.
pub async fn on_link_presence(server: &ServerState, account: &str, presence: &Stanza) {
    let Some(full) = presence.from.clone().filter(|f| f.contains('/')) else {
        return;
    };
    let bare = full.split('/').next().unwrap_or(&full).to_owned();
    let caps = match presence.type_.as_deref() {
        None => caps_of(presence),
        Some("unavailable") => {
            let mut g = state();
            if let Some(r) = g.remote.get_mut(&bare) {
                r.remove(&full);
                if r.is_empty() {
                    g.remote.remove(&bare);
                }
            }
            g.per_resource.remove(&full);
            return;
        }
        Some(_) => return,
    };
    let Some(caps) = caps else { return };
    {
        let mut g = state();
        if g.remote.len() >= MAX_CACHE && !g.remote.contains_key(&bare) {
            g.remote.clear();
        }
        g.remote
            .entry(bare)
            .or_default()
            .insert(full.clone(), caps.clone());
    }
    if let Some(features) = features_for(&full, &caps) {
        super::pep::send_last_items_to_link(server, account, &full, &features).await;
        return;
    }
    let pending = Pending {
        full,
        caps,
        link_contact_of: Some(account.to_owned()),
    };
    crate::s2s::forward(server, query(pending, account));
}

/// The disco#info query that resolves `p`'s caps, from `from`; remembered until answered.
fn query(p: Pending, from: &str) -> Stanza {
    let id = format!("caps-{:016x}", rand::random::<u64>());
    let mut iq = super::server_stanza("iq", Some("get"), from, &p.full, Some(id.clone()));
    iq.push_child_xml(&format!(
        "<query xmlns='{}'{}/>",
        disco::INFO,
        super::attr("node", &format!("{}#{}", p.caps.node, p.caps.ver))
    ));
    let mut g = state();
    if g.pending.len() >= MAX_CACHE {
        g.pending.clear();
    }
    g.pending.insert(id, p);
    iq
}

/// An interop link from `domain` ended: its users' resources are no longer known available.
pub fn forget_link_domain(domain: &str) {
    let suffix = format!("@{}", domain.to_ascii_lowercase());
    let mut g = state();
    let gone: Vec<String> = g
        .remote
        .keys()
        .filter(|bare| bare.to_ascii_lowercase().ends_with(&suffix))
        .cloned()
        .collect();
    for bare in gone {
        if let Some(resources) = g.remote.remove(&bare) {
            for full in resources.keys() {
                g.per_resource.remove(full);
            }
        }
    }
}

/// An IQ answer that came over an interop link: true if it answered one of our caps
/// queries (then the resource gets its contact's last items).
pub async fn on_link_iq_response(server: &ServerState, stanza: &Stanza) -> bool {
    let (Some(id), Some(from)) = (stanza.id.as_deref(), stanza.from.as_deref()) else {
        return false;
    };
    let pending = {
        let mut g = state();
        match g.pending.get(id) {
            Some(p) if p.full == from && p.link_contact_of.is_some() => g.pending.remove(id),
            _ => None,
        }
    };
    let Some(p) = pending else { return false };
    let Some(features) = learn(&p, stanza) else {
        return true;
    };
    if let Some(account) = &p.link_contact_of {
        super::pep::send_last_items_to_link(server, account, &p.full, &features).await;
    }
    true
}

/// Caches what a disco#info answer says of `p`'s caps; the features, if it was a result.
fn learn(p: &Pending, stanza: &Stanza) -> Option<Arc<Vec<String>>> {
    if stanza.type_.as_deref() != Some("result") {
        return None;
    }
    let query = stanza.first_payload().ok().flatten()?;
    if !query.is("query", disco::INFO) {
        return None;
    }
    let features: Arc<Vec<String>> = Arc::new(
        query
            .children()
            .filter(|c| c.is("feature", disco::INFO))
            .filter_map(|c| c.attr("var").map(str::to_owned))
            .collect(),
    );
    let verified = p.caps.hash.as_deref() == Some("sha-1") && sha1_ver(&query) == p.caps.ver;
    let mut g = state();
    if verified {
        if g.verified.len() >= MAX_CACHE {
            g.verified.clear();
        }
        g.verified.insert(p.caps.ver.clone(), features.clone());
    } else {
        if g.per_resource.len() >= MAX_CACHE {
            g.per_resource.clear();
        }
        g.per_resource
            .insert(p.full.clone(), (p.caps.ver.clone(), features.clone()));
    }
    Some(features)
}

/// The XEP-0115 §5.1 verification string of a disco#info answer, hashed with SHA-1.
pub fn sha1_ver(query: &minidom::Element) -> String {
    let mut identities: Vec<String> = query
        .children()
        .filter(|c| c.is("identity", disco::INFO))
        .map(|c| {
            let lang = c
                .attr_ns(strait_wire::ns::XML, "lang")
                .or_else(|| c.attr("xml:lang"))
                .unwrap_or("");
            format!(
                "{}/{}/{}/{}",
                c.attr("category").unwrap_or(""),
                c.attr("type").unwrap_or(""),
                lang,
                c.attr("name").unwrap_or("")
            )
        })
        .collect();
    identities.sort();
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.is("feature", disco::INFO))
        .filter_map(|c| c.attr("var"))
        .collect();
    features.sort();
    let mut forms: Vec<(String, String)> = Vec::new();
    for x in query.children().filter(|c| c.is("x", DATA_NS)) {
        let mut form_type = String::new();
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for f in x.children().filter(|c| c.is("field", DATA_NS)) {
            let var = f.attr("var").unwrap_or("").to_owned();
            let mut values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", DATA_NS))
                .map(|v| v.text())
                .collect();
            if var == "FORM_TYPE" {
                form_type = values.first().cloned().unwrap_or_default();
                continue;
            }
            values.sort();
            fields.push((var, values));
        }
        fields.sort();
        let mut s = format!("{form_type}<");
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
        forms.push((form_type, s));
    }
    forms.sort();
    let mut s = String::new();
    for i in identities {
        s.push_str(&i);
        s.push('<');
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    for (_, f) in forms {
        s.push_str(&f);
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()))
}

/// A resource's presence went out: learn its caps (querying the client if the `ver` is
/// new) and, the first time a `ver` is known for this resource, send it the last items of
/// the nodes it wants (XEP-0163 §4.3.4).
pub async fn on_presence(s: &mut Session, presence: &Stanza) {
    let key = (s.full.clone(), s.conn_id);
    if presence.type_.is_some() {
        state().announced.remove(&key);
        return;
    }
    let Some(caps) = caps_of(presence) else {
        return;
    };
    if features_for(&s.full, &caps).is_some() {
        let first = state().announced.insert(key, caps.ver.clone()) != Some(caps.ver.clone());
        if first {
            super::pep::send_last_items(s).await;
        }
        return;
    }
    let pending = Pending {
        full: s.full.clone(),
        caps,
        link_contact_of: None,
    };
    let iq = query(pending, &s.domain);
    s.reply(iq);
}

/// An IQ answer from a client to the server: true if it answered one of our caps queries.
pub async fn on_iq_response(s: &mut Session, stanza: &Stanza) -> bool {
    let Some(id) = stanza.id.as_deref() else {
        return false;
    };
    let pending = {
        let mut g = state();
        match g.pending.get(id) {
            Some(p) if p.full == s.full && p.link_contact_of.is_none() => g.pending.remove(id),
            _ => None,
        }
    };
    let Some(p) = pending else { return false };
    if learn(&p, stanza).is_none() {
        return true;
    }
    // Still the resource's current caps? Then it just became known.
    let current = s
        .state
        .router
        .resource(&s.bare, &s.resource)
        .and_then(|r| r.presence.as_deref().and_then(caps_of));
    if current.as_ref().is_some_and(|c| c.ver == p.caps.ver) {
        let first = state()
            .announced
            .insert((s.full.clone(), s.conn_id), p.caps.ver.clone())
            != Some(p.caps.ver);
        if first {
            super::pep::send_last_items(s).await;
        }
    }
    true
}

/// The session ended: forget what was announced to it.
pub fn forget(full: &str, conn_id: u64) {
    let mut g = state();
    g.announced.remove(&(full.to_owned(), conn_id));
    g.per_resource.remove(full);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0115_example_hash() {
        // XEP-0115 §5.2 simple example.
        let q: minidom::Element = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity category='client' name='Exodus 0.9.1' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/></query>"
            .parse()
            .unwrap();
        assert_eq!(sha1_ver(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn xep0115_complex_example_hash() {
        // XEP-0115 §5.3 complex example (identities with xml:lang, an extended form).
        let q: minidom::Element = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
            <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/>\
            <x xmlns='jabber:x:data' type='result'>\
              <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
              <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
              <field var='os'><value>Mac</value></field>\
              <field var='os_version'><value>10.5.1</value></field>\
              <field var='software'><value>Psi</value></field>\
              <field var='software_version'><value>0.11</value></field>\
            </x></query>"
            .parse()
            .unwrap();
        assert_eq!(sha1_ver(&q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }
}
