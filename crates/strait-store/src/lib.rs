//! Storage traits for Strait and their backends.
//!
//! The API is synchronous and blocking; async callers run it on a blocking
//! thread pool (e.g. `tokio::task::spawn_blocking`), except [`BatchWrite`], which queues
//! writes and reports through a callback, so a caller can await it without a thread.
//!
//! Two backends:
//! * [`SqliteStore`] — the embedded default (WAL, one group-committing writer
//!   thread, a small pool of read connections);
//! * [`MemoryStore`] — `HashMap`-based, for tests.
//!
//! Bare JIDs are stored exactly as given: callers normalize them first.

#![forbid(unsafe_code)]

mod archive;
mod blocking;
mod interop;
mod memory;
mod pep;
mod reports;
mod sqlite;

#[cfg(test)]
mod testsuite;

pub use archive::{ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore, ArchivedMessage};
pub use blocking::BlockingStore;
pub use interop::{
    AuditEntry, AuditNote, Consent, ConsentStore, InboxMode, Provider, ProviderStatus,
    ProviderStore, Scope, TermsAcceptance,
};
pub use memory::MemoryStore;
pub use pep::{
    PepItem, PepNodeConfig, PepStore, PrivateStore, PushRegistration, PushStore, VcardStore,
    effective_max,
};
pub use reports::{
    AbuseReport, Evidence, EvidenceMessage, ReportClosure, ReportCounts, ReportFilter,
    ReportReason, ReportStore,
};
pub use sqlite::{HOLD as DEFAULT_HOLD, MAX_HOLD, SqliteStore};

/// Result of every store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Errors returned by the stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account {0} already exists")]
    AlreadyExists(String),
    #[error("account {0} not found")]
    NotFound(String),
    #[error("{account} is at its limit ({limit})")]
    QuotaExceeded { account: String, limit: usize },
    /// The write would break a uniqueness rule beyond the key itself (a domain that
    /// belongs to another provider).
    #[error("{0}")]
    Conflict(String),
    #[error("storage backend: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The SCRAM verifier of one hash function (RFC 5802 §3): never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecret {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// An account's stored credentials. Never a plaintext password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub scram_sha1: Option<ScramSecret>,
    pub scram_sha256: ScramSecret,
}

/// Roster subscription state (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    fn to_i64(self) -> i64 {
        match self {
            Subscription::None => 0,
            Subscription::To => 1,
            Subscription::From => 2,
            Subscription::Both => 3,
        }
    }

    fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => Subscription::None,
            1 => Subscription::To,
            2 => Subscription::From,
            3 => Subscription::Both,
            _ => return None,
        })
    }
}

/// One roster entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Our subscribe request to the contact is pending.
    pub ask_out: bool,
    /// The contact asked to subscribe to us; not yet answered.
    pub pending_in: bool,
    pub groups: Vec<String>,
}

/// A stored stanza waiting for its owner to come online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    pub id: i64,
    /// Canonical XML of the stanza.
    pub stanza: String,
    /// Unix milliseconds when stored.
    pub stamp_ms: i64,
}

/// Accounts and their credentials.
pub trait AccountStore {
    /// Creates an account; `jid` is a normalized bare JID (`local@domain`).
    /// [`StoreError::AlreadyExists`] if it exists.
    fn create_account(&self, jid: &str, creds: &Credentials) -> Result<()>;
    /// Removes an account with its roster, offline queue, PEP nodes, vCard,
    /// block list, message archive and archive preferences.
    /// [`StoreError::NotFound`] if it does not exist.
    ///
    /// The roster version counter of the JID is kept, so a re-created account
    /// never hands out a version that a client of the previous owner cached.
    fn remove_account(&self, jid: &str) -> Result<()>;
    /// Replaces the credentials. [`StoreError::NotFound`] if no such account.
    fn set_credentials(&self, jid: &str, creds: &Credentials) -> Result<()>;
    /// The credentials, or `None` if there is no such account.
    fn credentials(&self, jid: &str) -> Result<Option<Credentials>>;
    fn account_exists(&self, jid: &str) -> Result<bool>;
    /// Sorted bare JIDs, all or only those of `domain`.
    fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>>;
}

/// Rosters with per-owner monotonically increasing versions.
pub trait RosterStore {
    /// Current version (0 if the roster was never written) and items sorted by JID.
    fn roster(&self, owner: &str) -> Result<(u64, Vec<RosterItem>)>;
    fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces `item` (keyed by `item.jid`); returns the new version.
    /// [`StoreError::NotFound`] if `owner` is not an account.
    fn roster_set(&self, owner: &str, item: &RosterItem) -> Result<u64>;
    /// Removes an item and returns the new version. Removing an absent item
    /// changes nothing and returns the current version.
    fn roster_remove(&self, owner: &str, contact: &str) -> Result<u64>;
}

/// Offline message queues.
pub trait OfflineStore {
    /// Appends a stanza; durable (committed) when it returns.
    /// [`StoreError::QuotaExceeded`] when `owner` already has `limit` messages,
    /// [`StoreError::NotFound`] if `owner` is not an account.
    fn offline_push(&self, owner: &str, stanza: &str, stamp_ms: i64, limit: usize) -> Result<i64>;
    /// Up to `max` messages, oldest first.
    fn offline_fetch(&self, owner: &str, max: usize) -> Result<Vec<OfflineMessage>> {
        self.offline_fetch_after(owner, 0, max)
    }
    /// Up to `max` messages whose id is above `after`, oldest first: the page after the one
    /// that ended with `after` (row ids are positive and grow with the time of storing).
    fn offline_fetch_after(
        &self,
        owner: &str,
        after: i64,
        max: usize,
    ) -> Result<Vec<OfflineMessage>>;
    /// Deletes the given messages of `owner` (unknown ids are ignored).
    fn offline_delete(&self, owner: &str, ids: &[i64]) -> Result<()>;
    /// Those of `ids` that are still stored for `owner`, in the order given.
    fn offline_kept(&self, owner: &str, ids: &[i64]) -> Result<Vec<i64>>;
    fn offline_count(&self, owner: &str) -> Result<usize>;
    /// A row id no stored message has had or will be given otherwise, for a
    /// [`WriteOp::OfflinePush`] whose id must be known before its commit (a copy held for a
    /// client that acknowledges, delivered while its row is being written).
    fn offline_reserve_id(&self) -> Result<i64>;
}

/// One write of a batch ([`BatchWrite::write_batch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// As [`ArchiveStore::archive_append`].
    Archive { owner: String, msg: ArchivedMessage },
    /// As [`OfflineStore::offline_push`]; its outcome carries the row id, which is `id` when
    /// given (from [`OfflineStore::offline_reserve_id`]).
    OfflinePush {
        owner: String,
        stanza: String,
        stamp_ms: i64,
        limit: usize,
        id: Option<i64>,
    },
    /// As [`OfflineStore::offline_delete`].
    OfflineDelete { owner: String, ids: Vec<i64> },
}

/// What one [`WriteOp`] did: `Some(row id)` for an offline push, `None` for the others.
pub type WriteOutcome = Result<Option<i64>>;

/// Called once a batch's fate is known, with one outcome per op, in order.
pub type WriteDone = Box<dyn FnOnce(Vec<WriteOutcome>) + Send>;

/// Writes that travel together: what a message needs before it is delivered (the sender's
/// and the recipient's archive copies, the stored copy that outlives the connection) is one
/// transaction and one commit instead of three.
pub trait BatchWrite {
    /// Runs `ops` in one transaction, each on its own (one failing leaves the others
    /// in), and calls `done` once they are durable (committed) or have failed. Does not block
    /// the caller: `done` may run on another thread (or at once, before this returns).
    fn write_batch(&self, ops: Vec<WriteOp>, done: WriteDone);

    /// [`BatchWrite::write_batch`] for writes nobody waits for (archive copies of messages
    /// already delivered, deletions of copies a client acknowledged): the backend may hold
    /// them back a few milliseconds so that they share a commit with the writes that follow.
    /// A write somebody waits for, queued meanwhile, ends the wait at once.
    fn write_batch_lazy(&self, ops: Vec<WriteOp>, done: WriteDone) {
        self.write_batch(ops, done)
    }
}

/// Everything the server needs from storage.
pub trait Store:
    AccountStore
    + RosterStore
    + OfflineStore
    + PepStore
    + VcardStore
    + PrivateStore
    + PushStore
    + ProviderStore
    + ConsentStore
    + BlockingStore
    + ReportStore
    + ArchiveStore
    + BatchWrite
    + Send
    + Sync
    + 'static
{
}

/// The domain part of a bare JID (`local@domain` → `domain`; `domain` → `domain`).
fn domain_of(jid: &str) -> &str {
    match jid.rfind('@') {
        Some(i) => &jid[i + 1..],
        None => jid,
    }
}
