//! Message Archive Management (XEP-0313, `urn:xmpp:mam:2` and `#extended`): every account
//! keeps an archive of the messages it sends and receives, queried with a data form (`with`,
//! `start`, `end`, `after-id`, `before-id`, `ids`), paged with Result Set Management
//! (XEP-0059), pages flipped on request, and its first and last message told as metadata. The archive id of a received message is the
//! XEP-0359 stanza-id the recipient got; a sent message gets its own id, also put on the
//! `<sent/>` carbon.

use super::{attr, iq_result, now_ms, xep0082_stamp};
use crate::c2s::session::Session;
use crate::server::ServerState;
use strait_store::{
    ArchivePrefs, ArchiveQuery, ArchivedMessage, StoreError, WriteOp, WriteOutcome,
};
use strait_wire::{Stanza, StanzaError, StanzaErrorCondition, escape_text};

pub const NS: &str = "urn:xmpp:mam:2";
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
const RSM: &str = "http://jabber.org/protocol/rsm";
const DATA: &str = "jabber:x:data";
/// Page size when the client gives none, and the most it may ask for.
const DEFAULT_MAX: usize = 50;
const MAX_MAX: usize = 100;

/// Whether a message has content worth archiving: what offline storage keeps (bodies, OMEMO
/// payloads, receipts, reactions, retractions, corrections, markers; not chat states, not
/// hinted away), of type chat or normal.
pub fn archivable(m: &Stanza) -> bool {
    matches!(m.type_.as_deref().unwrap_or("normal"), "chat" | "normal")
        && super::offline::should_store(m)
}

/// Most accounts whose archive preferences are kept in memory; past it the cache starts over.
const PREFS_CACHE_MAX: usize = 50_000;

/// Archive preferences of recently active accounts, so that archiving a message (twice per
/// message: sender and recipient) does not read the store. Updated when an account sets its
/// preferences through this server.
#[derive(Default)]
pub struct PrefsCache {
    map: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<ArchivePrefs>>>,
}

impl PrefsCache {
    fn get(&self, owner: &str) -> Option<std::sync::Arc<ArchivePrefs>> {
        self.map.lock().expect("prefs cache").get(owner).cloned()
    }

    fn put(&self, owner: &str, prefs: ArchivePrefs) -> std::sync::Arc<ArchivePrefs> {
        let prefs = std::sync::Arc::new(prefs);
        let mut map = self.map.lock().expect("prefs cache");
        if map.len() >= PREFS_CACHE_MAX {
            map.clear();
        }
        map.insert(owner.to_owned(), prefs.clone());
        prefs
    }
}

/// Whether `owner`'s preferences allow archiving a message with `with` (a bare JID).
async fn allowed(state: &ServerState, owner: &str, with: &str) -> bool {
    let prefs = match state.archive_prefs.get(owner) {
        Some(p) => p,
        None => {
            let o = owner.to_owned();
            match state.store(move |s| s.archive_prefs(&o)).await {
                Ok(p) => state.archive_prefs.put(owner, p),
                Err(e) => {
                    tracing::error!(account = owner, "reading archive preferences: {e}");
                    return true;
                }
            }
        }
    };
    if prefs.never.iter().any(|j| j == with) {
        return false;
    }
    if prefs.always.iter().any(|j| j == with) {
        return true;
    }
    match prefs.default.as_str() {
        "never" => false,
        "roster" => {
            let (o, w) = (owner.to_owned(), with.to_owned());
            matches!(
                state.store(move |s| s.roster_item(&o, &w)).await,
                Ok(Some(_))
            )
        }
        _ => true,
    }
}

/// Archives `m` for `owner` under `id`, `with` being the partner's JID as addressed. Errors are
/// logged: a message is never refused because it could not be archived.
pub async fn archive(state: &ServerState, owner: &str, with: &str, id: &str, m: &Stanza) {
    if let Some(op) = archive_op(state, owner, with, id, m, &mut None).await {
        let outcomes = state.write_batch(vec![op]).await;
        log_outcome(owner, outcomes.into_iter().next());
    }
}

/// What an archive copy of `m` stores, for either side of the conversation between the
/// accounts `a` and `b` (in either order): the message without the stanza-ids by either
/// account (XEP-0359; each copy's own goes back in when a query returns it,
/// [`with_own_stanza_id`]) and without a `<private/>` carbons hint (a routing hint, which only
/// the sender's copy had). So the sender's and the recipient's copies of one message are the
/// same text, and the store keeps it once for both (it shares the stanza of two copies
/// appended one after the other in one batch).
pub fn stored_form(m: &Stanza, a: &str, b: &str) -> String {
    let mut m = m.clone();
    super::carbons::strip_private(&mut m);
    super::stanza_id::strip_any(&mut m, &[a, b]);
    m.to_xml("")
}

/// `stored`, an archived copy in [`stored_form`], with the stanza-id `id` by `owner` the copy
/// had when it was delivered, as a query returns it. A copy archived before the stored form
/// left it out has it already and is returned as it is.
pub fn with_own_stanza_id<'a>(stored: &'a str, id: &str, owner: &str) -> std::borrow::Cow<'a, str> {
    let own = format!(
        "<stanza-id xmlns='{}'{}{}/>",
        super::stanza_id::NS,
        attr("id", id),
        attr("by", owner)
    );
    if stored.contains(&own) {
        return std::borrow::Cow::Borrowed(stored);
    }
    if let Some(body) = stored.strip_suffix("</message>") {
        return std::borrow::Cow::Owned(format!("{body}{own}</message>"));
    }
    match stored.strip_suffix("/>") {
        // `<message …/>` (the `/>` of the start tag: a stored form has no children then).
        Some(start) if stored.starts_with("<message") => {
            std::borrow::Cow::Owned(format!("{start}>{own}</message>"))
        }
        _ => std::borrow::Cow::Borrowed(stored),
    }
}

/// The write that archives `m` for `owner` (see [`archive`]), to commit with the message's
/// other writes; `None` when the archive is off, the message has nothing worth archiving, or
/// the owner's preferences say not to. `form` is the message's [`stored_form`] once one of its
/// copies has made it (the other copy stores the same text).
pub async fn archive_op(
    state: &ServerState,
    owner: &str,
    with: &str,
    id: &str,
    m: &Stanza,
    form: &mut Option<String>,
) -> Option<WriteOp> {
    if !state.config.archive.enabled || !archivable(m) {
        return None;
    }
    let with_bare = with.split('/').next().unwrap_or(with).to_owned();
    if !allowed(state, owner, &with_bare).await {
        return None;
    }
    let stanza = form
        .get_or_insert_with(|| stored_form(m, owner, &with_bare))
        .clone();
    Some(WriteOp::Archive {
        owner: owner.to_owned(),
        msg: ArchivedMessage {
            id: id.to_owned(),
            with_bare,
            with_full: with.to_owned(),
            stanza,
            stamp_ms: now_ms(),
        },
    })
}

/// Logs what an [`archive_op`] came to (an owner that is not an account is not an error).
pub fn log_outcome(owner: &str, outcome: Option<WriteOutcome>) {
    match outcome {
        None | Some(Ok(_)) | Some(Err(StoreError::NotFound(_))) => {}
        Some(Err(e)) => tracing::error!(account = owner, "archiving a message: {e}"),
    }
}

/// The IQs of `urn:xmpp:mam:2` on the user's own account.
pub async fn handle(s: &mut Session, stanza: &Stanza, el: &minidom::Element) {
    let get = stanza.type_.as_deref() == Some("get");
    match (el.name(), get) {
        ("query", true) => s.reply(iq_result(stanza, Some(&form(el.attr("queryid"))))),
        ("query", false) => query(s, stanza, el).await,
        ("metadata", true) => metadata(s, stanza).await,
        ("prefs", true) => {
            let o = s.bare.clone();
            match s.state.store(move |st| st.archive_prefs(&o)).await {
                Ok(p) => s.reply(iq_result(stanza, Some(&prefs_xml(&p)))),
                Err(e) => internal(s, stanza, &e),
            }
        }
        ("prefs", false) => {
            let p = parse_prefs(el);
            let (o, q) = (s.bare.clone(), p.clone());
            match s.state.store(move |st| st.set_archive_prefs(&o, &q)).await {
                Ok(()) => {
                    s.reply(iq_result(stanza, Some(&prefs_xml(&p))));
                    s.state.archive_prefs.put(&s.bare, p);
                }
                Err(e) => internal(s, stanza, &e),
            }
        }
        _ => s.reply_error(
            stanza,
            StanzaError::new(StanzaErrorCondition::FeatureNotImplemented),
        ),
    }
}

fn internal(s: &mut Session, stanza: &Stanza, e: &StoreError) {
    tracing::error!(account = %s.bare, "message archive: {e}");
    s.reply_error(
        stanza,
        StanzaError::new(StanzaErrorCondition::InternalServerError),
    );
}

fn bad(s: &mut Session, stanza: &Stanza, text: &str) {
    s.reply_error(
        stanza,
        StanzaError::with_text(StanzaErrorCondition::BadRequest, text),
    );
}

/// The search form (XEP-0313 §4.1.1 form discovery).
fn form(queryid: Option<&str>) -> String {
    let q = queryid.map(|q| attr("queryid", q)).unwrap_or_default();
    format!(
        "<query xmlns='{NS}'{q}><x xmlns='{DATA}' type='form'>\
         <field var='FORM_TYPE' type='hidden'><value>{NS}</value></field>\
         <field var='with' type='jid-single'/>\
         <field var='start' type='text-single'/>\
         <field var='end' type='text-single'/>\
         <field var='after-id' type='text-single'/>\
         <field var='before-id' type='text-single'/>\
         <field var='ids' type='list-multi'>\
         <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:string'>\
         <open/></validate></field>\
         <field var='{ORIGIN_FIELD}' type='list-multi' label='Chats with these providers&apos; users (* for all)'/>\
         </x></query>"
    )
}

fn parse_stamp(v: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A parsed archive query: the store's query, the `ids` asked for (XEP-0313 #extended),
/// and whether the page goes out newest first (`<flip-page/>`).
#[derive(Debug)]
struct Parsed {
    q: ArchiveQuery,
    ids: Option<Vec<String>>,
    flip: bool,
    /// Providers whose chats to select ([`ORIGIN_FIELD`]); `*`: every provider's.
    origin: Option<Vec<String>>,
}

/// The search form's field selecting chats by their origin (docs/interop.md): provider ids,
/// or `*` for every provider's, that is the third-party section.
pub const ORIGIN_FIELD: &str = "urn:strait:interop:0#origin";

/// Why a query was refused: a malformed one (`bad-request`) or a form field this server does
/// not know (`feature-not-implemented`, as XEP-0313 asks).
#[derive(Debug, PartialEq)]
enum QueryError {
    Bad(String),
    UnknownField(String),
}

impl From<&str> for QueryError {
    fn from(s: &str) -> Self {
        QueryError::Bad(s.to_owned())
    }
}

/// Reads the query's form, RSM set and flip-page.
fn parse_query(el: &minidom::Element) -> Result<Parsed, QueryError> {
    let mut q = ArchiveQuery {
        max: DEFAULT_MAX,
        ..Default::default()
    };
    let mut ids = None;
    let mut origin = None;
    if let Some(x) = el.get_child("x", DATA) {
        for f in x.children().filter(|c| c.name() == "field") {
            let var = f.attr("var").unwrap_or("");
            let values: Vec<String> = f
                .children()
                .filter(|c| c.name() == "value")
                .map(|v| v.text().trim().to_owned())
                .collect();
            let value = values.first().map(String::as_str).unwrap_or("");
            match var {
                "FORM_TYPE" if value != NS => {
                    return Err(QueryError::Bad(format!("unknown FORM_TYPE {value}")));
                }
                "FORM_TYPE" => {}
                "with" => {
                    let j: jid::Jid = value.parse().map_err(|_| "invalid with JID")?;
                    q.with = Some(j.to_string());
                }
                "start" => q.start = Some(parse_stamp(value).ok_or("invalid start")?),
                "end" => q.end = Some(parse_stamp(value).ok_or("invalid end")?),
                "after-id" => q.after_id = Some(value.to_owned()),
                "before-id" => q.before_id = Some(value.to_owned()),
                "ids" => {
                    if values.len() > MAX_MAX {
                        return Err(QueryError::Bad(format!("at most {MAX_MAX} ids")));
                    }
                    ids = Some(values);
                }
                ORIGIN_FIELD if values.iter().all(|v| v.is_empty()) => {
                    return Err("the origin field needs a provider id or *".into());
                }
                ORIGIN_FIELD => origin = Some(values),
                other => return Err(QueryError::UnknownField(other.to_owned())),
            }
        }
    }
    if let Some(set) = el.get_child("set", RSM) {
        if let Some(m) = set.get_child("max", RSM) {
            q.max = m.text().trim().parse().map_err(|_| "invalid max")?;
        }
        if let Some(a) = set.get_child("after", RSM) {
            q.after_id = Some(a.text().trim().to_owned());
        }
        if let Some(b) = set.get_child("before", RSM) {
            let b = b.text().trim().to_owned();
            if b.is_empty() {
                q.from_end = true;
            } else {
                q.before_id = Some(b);
            }
        }
    }
    if ids.is_some() && (q.after_id.is_some() || q.before_id.is_some() || q.from_end) {
        return Err("ids cannot be combined with after-id, before-id or RSM paging".into());
    }
    q.max = q.max.min(MAX_MAX);
    Ok(Parsed {
        q,
        ids,
        flip: el.get_child("flip-page", NS).is_some(),
        origin,
    })
}

/// Archive metadata (XEP-0313, "Archive metadata"): the first and the last message of the
/// archive.
async fn metadata(s: &mut Session, stanza: &Stanza) {
    let o = s.bare.clone();
    let ends = s
        .state
        .store(move |st| {
            let one = |from_end| ArchiveQuery {
                max: 1,
                from_end,
                ..Default::default()
            };
            let first = st.archive_query(&o, &one(false))?;
            let last = st.archive_query(&o, &one(true))?;
            Ok((
                first.and_then(|p| p.messages.into_iter().next()),
                last.and_then(|p| p.messages.into_iter().next()),
            ))
        })
        .await;
    match ends {
        Ok((Some(first), Some(last))) => {
            let point = |name: &str, m: &ArchivedMessage| {
                format!(
                    "<{name}{}{}/>",
                    attr("id", &m.id),
                    attr("timestamp", &xep0082_stamp(m.stamp_ms))
                )
            };
            let xml = format!(
                "<metadata xmlns='{NS}'>{}{}</metadata>",
                point("start", &first),
                point("end", &last)
            );
            s.reply(iq_result(stanza, Some(&xml)));
        }
        Ok(_) => s.reply(iq_result(
            stanza,
            Some(&format!("<metadata xmlns='{NS}'/>")),
        )),
        Err(e) => internal(s, stanza, &e),
    }
}

/// The messages with `ids` that also match the query's other filters, as one complete page.
fn ids_page(found: Vec<ArchivedMessage>, q: &ArchiveQuery) -> strait_store::ArchivePage {
    let messages: Vec<ArchivedMessage> = found
        .into_iter()
        .filter(|m| {
            q.with.as_deref().is_none_or(|w| {
                if w.contains('/') {
                    m.with_full == w
                } else {
                    m.with_bare == w
                }
            }) && q.start.is_none_or(|t| m.stamp_ms >= t)
                && q.end.is_none_or(|t| m.stamp_ms <= t)
        })
        .take(q.max)
        .collect();
    strait_store::ArchivePage {
        count: messages.len(),
        complete: true,
        first_index: (!messages.is_empty()).then_some(0),
        messages,
    }
}

async fn query(s: &mut Session, stanza: &Stanza, el: &minidom::Element) {
    let Parsed {
        mut q,
        ids,
        flip,
        origin,
    } = match parse_query(el) {
        Ok(p) => p,
        Err(QueryError::Bad(t)) => return bad(s, stanza, &t),
        Err(QueryError::UnknownField(f)) => {
            return s.reply_error(
                stanza,
                StanzaError::with_text(
                    StanzaErrorCondition::FeatureNotImplemented,
                    format!("unknown field {f}"),
                ),
            );
        }
    };
    if let Some(origin) = origin {
        match crate::interop::origin_domains(&s.state.interop.snapshot(), &origin) {
            Ok(domains) if domains.is_empty() => {
                // `*` with no provider ever registered: nothing can match.
                q.with_domains = vec![String::new()];
            }
            Ok(domains) => q.with_domains = domains,
            Err(id) => return bad(s, stanza, &format!("no provider {id} is registered")),
        }
    }
    let queryid = el.attr("queryid").map(str::to_owned);
    // A message goes to online resources once its archive copies are queued, without waiting
    // for their commit (delivery::send_message): the store's query sees every copy of the
    // account queued before it (`ArchiveStore::archive_query`), so a client that saw a message
    // finds it in the archive and can page `after` its id. It waits only for the account's
    // own queued copies, not for everything queued (75 ms median beside 8,000 msg/s with
    // archiving on, when every query waited for the whole queue).
    let (o, qq) = (s.bare.clone(), q.clone());
    let page = match s
        .state
        .store(move |st| match ids {
            Some(ids) => Ok(st.archive_get(&o, &ids)?.map(|found| ids_page(found, &qq))),
            None => st.archive_query(&o, &qq),
        })
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            return s.reply_error(
                stanza,
                StanzaError::with_text(
                    StanzaErrorCondition::ItemNotFound,
                    "no message in the archive has that id",
                ),
            );
        }
        Err(e) => return internal(s, stanza, &e),
    };
    let qid = queryid
        .as_deref()
        .map(|q| attr("queryid", q))
        .unwrap_or_default();
    // `<flip-page/>`: the same page, sent newest first (XEP-0313, "Flipped pages"); RSM still
    // names its first and last message in archive order.
    let order: Box<dyn Iterator<Item = &ArchivedMessage>> = if flip {
        Box::new(page.messages.iter().rev())
    } else {
        Box::new(page.messages.iter())
    };
    for m in order {
        let mut w = super::server_stanza("message", None, &s.bare, &s.full, None);
        let xml = format!(
            "<result xmlns='{NS}'{qid}{}><forwarded xmlns='{}'>\
             <delay xmlns='urn:xmpp:delay'{}/>{}</forwarded></result>",
            attr("id", &m.id),
            super::carbons::FORWARD,
            attr("stamp", &xep0082_stamp(m.stamp_ms)),
            with_own_stanza_id(&m.stanza, &m.id, &s.bare)
        );
        match w.try_push_child_xml(&xml) {
            Ok(()) => s.reply(w),
            Err(e) => {
                tracing::error!(account = %s.bare, id = %m.id, "unreadable archived message: {e}")
            }
        }
    }
    let mut set = format!("<set xmlns='{RSM}'>");
    if let (Some(first), Some(last)) = (page.messages.first(), page.messages.last()) {
        // RSM's index only on a page from the start (`first_index`).
        let index = page
            .first_index
            .map(|i| format!(" index='{i}'"))
            .unwrap_or_default();
        set.push_str(&format!(
            "<first{index}>{}</first><last>{}</last>",
            escape_text(&first.id),
            escape_text(&last.id)
        ));
    }
    set.push_str(&format!("<count>{}</count></set>", page.count));
    let fin = format!(
        "<fin xmlns='{NS}'{qid} complete='{}'>{set}</fin>",
        page.complete
    );
    s.reply(iq_result(stanza, Some(&fin)));
}

fn parse_prefs(el: &minidom::Element) -> ArchivePrefs {
    let default = match el.attr("default") {
        Some(d @ ("always" | "never" | "roster")) => d.to_owned(),
        _ => "always".to_owned(),
    };
    let list = |name: &str| -> Vec<String> {
        el.get_child(name, NS)
            .map(|l| {
                l.children()
                    .filter(|c| c.name() == "jid")
                    .filter_map(|c| c.text().trim().parse::<jid::Jid>().ok())
                    .map(|j| j.to_bare().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    ArchivePrefs {
        default,
        always: list("always"),
        never: list("never"),
    }
}

fn prefs_xml(p: &ArchivePrefs) -> String {
    let list = |name: &str, v: &[String]| {
        let mut x = format!("<{name}>");
        for j in v {
            x.push_str(&format!("<jid>{}</jid>", escape_text(j)));
        }
        x.push_str(&format!("</{name}>"));
        x
    };
    format!(
        "<prefs xmlns='{NS}'{}>{}{}</prefs>",
        attr("default", &p.default),
        list("always", &p.always),
        list("never", &p.never)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::offline::parse_stored;

    fn msg(attrs: &str, children: &str) -> Stanza {
        parse_stored(&format!("<message to='b@x' {attrs}>{children}</message>")).unwrap()
    }

    #[test]
    fn what_is_archived() {
        assert!(archivable(&msg("type='chat'", "<body>hi</body>")));
        assert!(archivable(&msg(
            "type='chat'",
            "<encrypted xmlns='urn:xmpp:omemo:2'/>"
        )));
        assert!(!archivable(&msg(
            "type='chat'",
            "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
        )));
        assert!(!archivable(&msg("type='groupchat'", "<body>hi</body>")));
        assert!(!archivable(&msg("type='headline'", "<body>hi</body>")));
        assert!(!archivable(&msg("type='error'", "<body>hi</body>")));
        assert!(!archivable(&msg(
            "type='chat'",
            "<body>hi</body><no-permanent-store xmlns='urn:xmpp:hints'/>"
        )));
    }

    /// Both copies of a message are stored as one text, and each gets its own stanza-id
    /// back when returned: the recipient's exactly as it was delivered, the sender's as sent
    /// (without the `<private/>` hint); copies stored whole before keep theirs, once.
    #[test]
    fn both_copies_store_one_text_and_get_their_own_ids_back() {
        use crate::features::stanza_id;
        let (a, b) = ("a@x", "b'o@x");
        let sent = msg(
            "from='a@x/r' type='chat' id='1'",
            "<body>hi &amp; bye</body>             <stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='b&apos;o@x'/>             <stanza-id xmlns='urn:xmpp:sid:0' id='room' by='room@muc.x'/>",
        );
        // The sender's copy: its own id, the hint kept, as message.rs makes it.
        let mut copy = sent.clone();
        let ida = stanza_id::stamp(&mut copy, a);
        copy.push_empty_child(crate::features::carbons::NS, "private", &[]);
        // The recipient's copy: the hint stripped, its own id.
        let mut delivered = sent.clone();
        let idb = stanza_id::stamp(&mut delivered, b);
        let stored = stored_form(&copy, a, b);
        assert_eq!(stored, stored_form(&delivered, b, a));
        assert!(!stored.contains("stanza-id xmlns='urn:xmpp:sid:0' id='forged'"));
        assert!(stored.contains("id='room'"), "{stored}");
        assert!(!stored.contains("private"), "{stored}");
        // What a query returns for the recipient is what the recipient got.
        assert_eq!(with_own_stanza_id(&stored, &idb, b), delivered.to_xml(""));
        let for_sender = with_own_stanza_id(&stored, &ida, a);
        let mut want = copy.clone();
        crate::features::carbons::strip_private(&mut want);
        stanza_id::strip(&mut want, b);
        assert_eq!(for_sender, want.to_xml(""));
        // A copy stored whole (before the stored form) already has its id: unchanged.
        let old = delivered.to_xml("");
        assert!(matches!(
            with_own_stanza_id(&old, &idb, b),
            std::borrow::Cow::Borrowed(x) if x == old
        ));
        // A message without children gets one.
        assert_eq!(
            with_own_stanza_id("<message xmlns='jabber:client' to='b@x'/>", "i", "b@x"),
            "<message xmlns='jabber:client' to='b@x'>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='i' by='b@x'/></message>"
        );
    }

    #[test]
    fn query_parsing() {
        let el: minidom::Element =
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
            <field var='with'><value>b@x</value></field>\
            <field var='start'><value>2023-11-14T22:13:20Z</value></field></x>\
            <set xmlns='http://jabber.org/protocol/rsm'><max>500</max><before/></set></query>"
                .parse()
                .unwrap();
        let Parsed { q, ids, flip, .. } = parse_query(&el).unwrap();
        assert!(ids.is_none() && !flip);
        assert_eq!(q.with.as_deref(), Some("b@x"));
        assert_eq!(q.start, Some(1_700_000_000_000));
        assert_eq!(q.max, MAX_MAX);
        assert!(q.from_end && q.before_id.is_none());
        let el: minidom::Element =
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
            <field var='ids'><value>a</value><value>b</value></field>\
            <field var='urn:example:search'><value>x</value></field></x></query>"
                .parse()
                .unwrap();
        assert_eq!(
            parse_query(&el).unwrap_err(),
            QueryError::UnknownField("urn:example:search".into())
        );
        let el: minidom::Element =
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
            <field var='ids'><value>a</value><value>b</value></field></x><flip-page/></query>"
                .parse()
                .unwrap();
        let p = parse_query(&el).unwrap();
        assert_eq!(p.ids, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(p.flip);
    }
}
