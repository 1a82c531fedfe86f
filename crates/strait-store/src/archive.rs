//! Message archives (XEP-0313): per account, the messages it sent and received, in the order
//! the server archived them, which is also time order (see [`ArchiveStore::archive_append`]),
//! each under a server-assigned id (the XEP-0359 stanza-id).

use crate::Result;

/// One archived message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// The archive id (unique per owner), e.g. the XEP-0359 stanza-id.
    pub id: String,
    /// The conversation partner's bare JID.
    pub with_bare: String,
    /// The conversation partner's JID as addressed (full when known, else bare).
    pub with_full: String,
    /// Canonical XML of the message.
    pub stanza: String,
    /// Unix milliseconds when archived; never older than the owner's newest copy before it.
    pub stamp_ms: i64,
}

/// Filters and paging of an archive query. Filters (`with`, `start`, `end`) select the
/// messages; `after_id`/`before_id` and `max` select the page (XEP-0059).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// A bare JID matches the partner's bare JID; a full JID (with `/`) the partner's full JID.
    pub with: Option<String>,
    /// Only messages whose partner's domain is one of these (lowercase), when not empty: the
    /// chats with one provider's users, or with any provider's (the third-party section).
    pub with_domains: Vec<String>,
    /// Only messages archived at or after this time (Unix ms).
    pub start: Option<i64>,
    /// Only messages archived at or before this time (Unix ms).
    pub end: Option<i64>,
    /// Only messages archived after the one with this id.
    pub after_id: Option<String>,
    /// Only messages archived before the one with this id.
    pub before_id: Option<String>,
    /// Most messages returned.
    pub max: usize,
    /// Page from the end: the last `max` matching messages (RSM `<before/>`). Implied by
    /// `before_id`.
    pub from_end: bool,
}

/// One page of an archive query, always oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePage {
    pub messages: Vec<ArchivedMessage>,
    /// No matching message lies beyond the page in the paging direction.
    pub complete: bool,
    /// How many messages match the filters (ignoring paging).
    pub count: usize,
    /// Position of the first message of the page among all matching ones, where it is known
    /// without counting and tells the client something `count` does not
    /// ([`first_index_known`]): 0 on a page from the start, else `None`. (RSM's `index` is
    /// optional, XEP-0059 §7; counting the messages before an id is linear in the archive's
    /// size in SQLite, which would make a client's page-by-page sync of a long history
    /// quadratic.)
    pub first_index: Option<usize>,
}

/// The page's first index where it needs no counting: 0 for a page from the start, else
/// `None`. The last page (paging backwards from the end) would be `count - len`, which the
/// client can work out from `count` itself; sending it stopped slixmpp's backward paging
/// after that one page (its iterator takes `index + len == count` for the end in either
/// direction), so a bot on slixmpp could not read a history backwards.
pub(crate) fn first_index_known(q: &ArchiveQuery) -> Option<usize> {
    let backward = q.from_end || q.before_id.is_some();
    (!backward && q.after_id.is_none()).then_some(0)
}

/// Per-account archiving preferences (XEP-0313 §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePrefs {
    /// `always`, `never` or `roster`.
    pub default: String,
    /// Bare JIDs always archived.
    pub always: Vec<String>,
    /// Bare JIDs never archived.
    pub never: Vec<String>,
}

impl Default for ArchivePrefs {
    fn default() -> Self {
        ArchivePrefs {
            default: "always".into(),
            always: Vec::new(),
            never: Vec::new(),
        }
    }
}

/// Message archives.
pub trait ArchiveStore {
    /// Appends a message to `owner`'s archive. Each owner's archive is in time order: a
    /// message whose `stamp_ms` is older than the newest in the archive is stored with the
    /// newest's stamp, so that it sorts after every message already there (a client that
    /// pages after the newest id it saw must not miss it).
    /// [`crate::StoreError::NotFound`] if `owner` is not an account;
    /// [`crate::StoreError::AlreadyExists`] if the id is already in the archive.
    fn archive_append(&self, owner: &str, msg: &ArchivedMessage) -> Result<()>;
    /// One page of matching messages; `None` if `after_id` or `before_id` is not in the
    /// archive. It sees every message appended or queued for `owner` (a
    /// [`crate::BatchWrite`] batch, waited for or not) before the call.
    fn archive_query(&self, owner: &str, q: &ArchiveQuery) -> Result<Option<ArchivePage>>;
    /// The messages with these ids, in archive order; `None` if any id is not in `owner`'s
    /// archive. Sees what [`ArchiveStore::archive_query`] sees.
    fn archive_get(&self, owner: &str, ids: &[String]) -> Result<Option<Vec<ArchivedMessage>>>;
    /// How many messages `owner`'s archive holds.
    fn archive_count(&self, owner: &str) -> Result<usize>;
    /// Deletes `owner`'s archive (the preferences are kept).
    fn archive_clear(&self, owner: &str) -> Result<()>;
    /// Retention: deletes at most `max` archived copies (of any owner) archived before
    /// `before_ms`, oldest first, and returns how many went; callers repeat until fewer than
    /// `max` go, so that no single write holds the store for long.
    fn archive_expire(&self, before_ms: i64, max: usize) -> Result<usize>;
    /// The stored preferences, or the defaults.
    fn archive_prefs(&self, owner: &str) -> Result<ArchivePrefs>;
    /// Replaces the preferences. [`crate::StoreError::NotFound`] if `owner` is not an account.
    fn set_archive_prefs(&self, owner: &str, prefs: &ArchivePrefs) -> Result<()>;
}

/// Applies a query to an archive in order (for backends that page in memory). An
/// `after_id`/`before_id` is looked up in the whole archive, not only among the matches.
pub(crate) fn page_of(all: &[ArchivedMessage], q: &ArchiveQuery) -> Option<ArchivePage> {
    let pos = |id: &str| all.iter().position(|m| m.id == id);
    let lo = match &q.after_id {
        Some(id) => pos(id)? + 1,
        None => 0,
    };
    let hi = match &q.before_id {
        Some(id) => pos(id)?,
        None => all.len(),
    };
    let matching: Vec<(usize, &ArchivedMessage)> = all
        .iter()
        .enumerate()
        .filter(|(_, m)| matches(m, q))
        .collect();
    let count = matching.len();
    let window: Vec<usize> = (0..count)
        .filter(|&i| matching[i].0 >= lo && matching[i].0 < hi)
        .collect();
    let (a, b) = if q.from_end || q.before_id.is_some() {
        (window.len().saturating_sub(q.max), window.len())
    } else {
        (0, q.max.min(window.len()))
    };
    let complete = if q.from_end || q.before_id.is_some() {
        a == 0
    } else {
        b == window.len()
    };
    Some(ArchivePage {
        messages: window[a..b]
            .iter()
            .map(|&i| matching[i].1.clone())
            .collect(),
        complete,
        count,
        first_index: first_index_known(q),
    })
}

pub(crate) fn matches(m: &ArchivedMessage, q: &ArchiveQuery) -> bool {
    if let Some(w) = &q.with {
        let hit = if w.contains('/') {
            &m.with_full == w
        } else {
            &m.with_bare == w
        };
        if !hit {
            return false;
        }
    }
    if !q.with_domains.is_empty() {
        let domain = m
            .with_bare
            .rsplit_once('@')
            .map_or(m.with_bare.as_str(), |(_, d)| d);
        if !q.with_domains.iter().any(|d| d == domain) {
            return false;
        }
    }
    q.start.is_none_or(|s| m.stamp_ms >= s) && q.end.is_none_or(|e| m.stamp_ms <= e)
}
