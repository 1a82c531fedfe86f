//! The embedded SQLite backend.
//!
//! * One dedicated writer thread owns the only write connection. Callers send
//!   it closures; it takes every request that is already queued (up to
//!   [`MAX_BATCH`]), runs them in ONE transaction — each inside its own
//!   savepoint, so a failing request does not undo the others (a [`BatchWrite`]
//!   job needs none: its ops are each undone alone) — commits once, and only
//!   then answers each caller (group commit). Under load many writes share one
//!   fsync.
//! * Reads use a small pool of read-only connections (WAL lets them run while
//!   the writer writes). The in-memory variant has a single connection, so its
//!   reads go through the writer thread too.
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, so the
//! WAL is fsynced at every commit and a write that returned survives a power
//! loss or OS crash. (`synchronous=NORMAL` in WAL mode only survives an
//! application crash: the last commits can be lost on power failure, which
//! would break the contract that a stored offline message is never lost.)
//! Group commit keeps the cost of FULL to one fsync per batch.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod interop;
mod reports;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::{
    AccountStore, Credentials, OfflineMessage, OfflineStore, Result, RosterItem, RosterStore,
    ScramSecret, Store, StoreError, Subscription, domain_of,
};
use crate::{BatchWrite, WriteDone, WriteOp, WriteOutcome};
use crate::{
    PepItem, PepNodeConfig, PepStore, PrivateStore, PushRegistration, PushStore, VcardStore,
    effective_max,
};

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 256;
/// How long the writer holds back a batch of writes nobody waits for, counted from when it
/// takes the first one off its queue ([`linger`]): the archive copies of a delivered message
/// become durable at most this much later than they would have.
const LINGER: Duration = Duration::from_millis(4);
/// A batch of writes nobody waits for that is this large is committed without lingering.
/// With 16, at 16,000 msg/s to clients that acknowledge (a held copy and a delete each) the
/// writer committed, and fsynced, about 2,000 times a second; with 128 the server took 53 % of
/// a core instead of 67 to 69 %, and 68 bytes of disk writes a message at 4,000 msg/s
/// instead of 343, as most acknowledgements then find their copies still queued (by hand,
/// AMD host, `bench messages --sm`, 200 pairs, archive off).
const LINGER_JOBS: usize = 128;
/// How long the writer holds back a copy held for a client that acknowledges (a delivered
/// message kept until the client says it has it), counted from when it was queued, unless
/// [`SqliteStore::set_hold`] says otherwise. Such a client acknowledges within a round trip,
/// and an acknowledgement that finds the copy still queued cancels it: neither is written,
/// and the caller (the sender's XEP-0198 count) hears at once. A copy not acknowledged in
/// time is written, and its caller hears once it is committed, so this much later at most.
pub const HOLD: Duration = Duration::from_millis(50);
/// The longest hold [`SqliteStore::set_hold`] takes (longer ones are cut to it).
pub const MAX_HOLD: Duration = Duration::from_secs(60);
/// Read connections kept in the pool (more are opened on demand, then dropped).
const READ_POOL: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer moves `archive_log` into `archive` once it holds this many copies (see
/// [`merge_archive_log`]); it stays well inside the writer's page cache.
const LOG_MERGE_ROWS: usize = 4_096;
/// A merge round gives way to writes somebody waits for after chunks of this many copies
/// ([`merge_archive_log_step`]). Merged whole, 4,096
/// copies held the writer 30 to 90 ms under heavy archiving (about 15 µs a copy, growing
/// with the archive), and every write somebody waited for that arrived meanwhile (an
/// offline message, which its sender's stream waits for; a MAM query behind its owner's
/// queued copies) waited that long.
const LOG_MERGE_CHUNK: usize = 256;
/// The writer also merges once the log's oldest copy is this old, busy or idle.
const LOG_MERGE_AGE: Duration = Duration::from_secs(1);

/// The schema version this build writes.
#[cfg(test)]
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Ordered schema migrations; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, rosters, offline queues.
    "
    CREATE TABLE accounts (
        jid            TEXT PRIMARY KEY NOT NULL,
        domain         TEXT NOT NULL,
        sha1_salt      BLOB,
        sha1_iter      INTEGER,
        sha1_stored    BLOB,
        sha1_server    BLOB,
        sha256_salt    BLOB NOT NULL,
        sha256_iter    INTEGER NOT NULL,
        sha256_stored  BLOB NOT NULL,
        sha256_server  BLOB NOT NULL
    );
    CREATE INDEX accounts_by_domain ON accounts(domain, jid);

    CREATE TABLE roster_versions (
        owner    TEXT PRIMARY KEY NOT NULL,
        version  INTEGER NOT NULL
    );
    CREATE TABLE roster_items (
        owner         TEXT NOT NULL,
        contact       TEXT NOT NULL,
        name          TEXT,
        subscription  INTEGER NOT NULL,
        ask_out       INTEGER NOT NULL,
        pending_in    INTEGER NOT NULL,
        PRIMARY KEY (owner, contact)
    );
    CREATE TABLE roster_groups (
        owner    TEXT NOT NULL,
        contact  TEXT NOT NULL,
        pos      INTEGER NOT NULL,
        name     TEXT NOT NULL,
        PRIMARY KEY (owner, contact, pos)
    );

    CREATE TABLE offline (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        owner     TEXT NOT NULL,
        stanza    TEXT NOT NULL,
        stamp_ms  INTEGER NOT NULL
    );
    CREATE INDEX offline_by_owner ON offline(owner, id);
    ",
    // 2: PEP / pubsub nodes and items, vCards (issue 4).
    "
    CREATE TABLE pep_nodes (
        owner          TEXT NOT NULL,
        node           TEXT NOT NULL,
        access_model   TEXT NOT NULL,
        max_items      INTEGER,
        persist_items  INTEGER NOT NULL,
        PRIMARY KEY (owner, node)
    );
    CREATE TABLE pep_items (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        owner     TEXT NOT NULL,
        node      TEXT NOT NULL,
        item_id   TEXT NOT NULL,
        payload   TEXT NOT NULL,
        stamp_ms  INTEGER NOT NULL,
        UNIQUE (owner, node, item_id)
    );
    CREATE INDEX pep_items_by_node ON pep_items(owner, node, seq);
    CREATE TABLE vcards (
        owner  TEXT PRIMARY KEY NOT NULL,
        vcard  TEXT NOT NULL
    );
    ",
    // 3: block lists (issue 4).
    "
    CREATE TABLE blocklist (
        owner  TEXT NOT NULL,
        jid    TEXT NOT NULL,
        PRIMARY KEY (owner, jid)
    ) WITHOUT ROWID;
    ",
    // 4: message archives and their preferences (XEP-0313). `seq` is the archive order;
    // `id` the archive id clients page by.
    "
    CREATE TABLE archive (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        owner      TEXT NOT NULL,
        id         TEXT NOT NULL,
        with_bare  TEXT NOT NULL,
        with_full  TEXT NOT NULL,
        stamp_ms   INTEGER NOT NULL,
        stanza     TEXT NOT NULL
    );
    CREATE UNIQUE INDEX archive_by_id ON archive(owner, id);
    CREATE INDEX archive_by_owner ON archive(owner, seq);
    CREATE INDEX archive_by_with ON archive(owner, with_bare, seq);
    CREATE TABLE archive_prefs (
        owner         TEXT PRIMARY KEY NOT NULL,
        default_mode  TEXT NOT NULL,
        always_jids   TEXT NOT NULL,
        never_jids    TEXT NOT NULL
    );
    ",
    // 5: a cheaper archive append (two B-tree inserts fewer per archived copy). The table is
    // rebuilt, rows and their `seq` kept, with
    // * `seq` a plain INTEGER PRIMARY KEY instead of AUTOINCREMENT: no `sqlite_sequence`
    //   read and update per row. A new row gets max(seq) + 1, so it still sorts after every
    //   row in the table, for every owner: the archive order stays the commit order. Only
    //   the seq of a row deleted while it was the newest of the whole table can come back
    //   (after an `archive_clear` or an account removal). That is harmless because `seq` never
    //   leaves the store: clients page by `id` (unique per owner, in `archive_by_id`), an id
    //   resolves only to its own row, and a deleted row's id no longer resolves at all
    //   (item-not-found), whatever seq a later row gets. An id scheme derived from `seq` would
    //   need a persistent high-water mark first (AUTOINCREMENT or a table of its own).
    //   (At seq = 2^63 - 1 SQLite would pick free rowids at random; not reachable.)
    // * no `archive_by_owner(owner, seq)`: `archive_by_with(owner, with_bare, seq)` answers the
    //   queries without `with` too, through its `owner` prefix (the `seq` filters run on the
    //   index; the page is a top-N sort of the owner's entries). Such a query already counted
    //   all of the owner's entries (`count` of the page), so it stays linear in the archive's
    //   size, at about twice the index work; queries by partner keep their range scans.
    "
    CREATE TABLE archive_v5 (
        seq        INTEGER PRIMARY KEY,
        owner      TEXT NOT NULL,
        id         TEXT NOT NULL,
        with_bare  TEXT NOT NULL,
        with_full  TEXT NOT NULL,
        stamp_ms   INTEGER NOT NULL,
        stanza     TEXT NOT NULL
    );
    INSERT INTO archive_v5 (seq, owner, id, with_bare, with_full, stamp_ms, stanza)
        SELECT seq, owner, id, with_bare, with_full, stamp_ms, stanza FROM archive ORDER BY seq;
    DROP TABLE archive;
    DELETE FROM sqlite_sequence WHERE name = 'archive';
    ALTER TABLE archive_v5 RENAME TO archive;
    CREATE UNIQUE INDEX archive_by_id ON archive(owner, id);
    CREATE INDEX archive_by_with ON archive(owner, with_bare, seq);
    ",
    // 6: archive copies are appended to `archive_log`, a table without indexes, and moved
    // into `archive` in batches (see `merge_archive_log`). Each copy inserted straight into
    // `archive` changed a leaf page of both of its indexes, pages that no other row of the
    // same commit shared, and SQLite writes whole pages to the WAL: about 8.5 KB of WAL per
    // archived copy (17 KB per message with both copies; 250 MB/s of disk writes at 11,000
    // archived messages a second). An append to the log changes only the log's last page;
    // a merge changes each owner's index leaves once for all of that owner's copies in it.
    "
    CREATE TABLE archive_log (
        seq        INTEGER PRIMARY KEY,
        owner      TEXT NOT NULL,
        id         TEXT NOT NULL,
        with_bare  TEXT NOT NULL,
        with_full  TEXT NOT NULL,
        stamp_ms   INTEGER NOT NULL,
        stanza     TEXT NOT NULL
    );
    ",
    // 7: archive pages in time proportional to the page, not to the archive. Without an
    // index in archive order per owner (dropped in 5), a page of a query without `with`
    // sorted all of the owner's entries, and its `count` and first `index` counted them
    // twice more: 13 ms a page at 100,000 archived messages, so a client syncing that
    // history page by page cost the server half a minute. Back are
    // * `archive_by_owner(owner, seq, stamp_ms)`: the page is a range of it. Its cost on the
    //   write side is small since 6: a merge appends each owner's copies at that owner's end
    //   of it, one leaf per owner and merge. `stamp_ms` makes it cover the time filters
    //   (`start`, `end`): those still read the owner's entries from the first one on, but in
    //   the index alone (a page by time at 100,000 messages: 7-11 ms; 49-69 ms with rows read
    //   for their time, 400 ms before).
    // * `archive_counts`: each owner's number of merged copies, kept by the merge and the
    //   deletions, so that `count` of a query without filters is one lookup.
    "
    CREATE INDEX archive_by_owner ON archive(owner, seq, stamp_ms);
    CREATE TABLE archive_counts (
        owner  TEXT PRIMARY KEY NOT NULL,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO archive_counts (owner, n) SELECT owner, COUNT(*) FROM archive GROUP BY owner;
    ",
    // 8: pages by time cost the page, not the archive. Each owner's archive is now in time
    // order, `(stamp_ms, seq)`: an append whose stamp is older than the owner's newest is
    // stored with the newest stamp (the clock went back, or two copies raced to the writer),
    // so a new copy still sorts after every copy its owner has, and a client that pages
    // after the newest id it saw misses none. Both indexes of archive order lead with the
    // time, so `start` and `end` are bounds of a range, like the RSM ids (resolved to their
    // `(stamp_ms, seq)`): a page from a time near the end at 100,000 messages no longer
    // reads the 100,000 index entries before it (migration 7: 9.5 ms). Rows archived before
    // with stamps out of order (by a few milliseconds at most, unless the clock jumped) now
    // sort by time.
    "
    DROP INDEX archive_by_owner;
    DROP INDEX archive_by_with;
    CREATE INDEX archive_by_time ON archive(owner, stamp_ms, seq);
    CREATE INDEX archive_by_with ON archive(owner, with_bare, stamp_ms, seq);
    ",
    // 9: a page of one conversation costs the page too. Each owner's number of merged copies
    // is kept per partner (`archive_with_counts`, by the merge and the deletions), so that
    // the `count` of a query by bare partner without time filters is one lookup instead of
    // counting the conversation (0.47 ms a page at 5,000 messages with the partner, linear
    // beyond: a client that loads a long chat's history page by page, as Gajim does, counted
    // all of it for every page). It replaces `archive_counts`: an owner's count is the sum
    // over its partners (one short range), and the merge keeps one table instead of two
    // (keeping both cost saturated pingpong with archiving on about 4 %).
    "
    CREATE TABLE archive_with_counts (
        owner      TEXT NOT NULL,
        with_bare  TEXT NOT NULL,
        n          INTEGER NOT NULL,
        PRIMARY KEY (owner, with_bare)
    ) WITHOUT ROWID;
    INSERT INTO archive_with_counts (owner, with_bare, n)
        SELECT owner, with_bare, COUNT(*) FROM archive GROUP BY owner, with_bare;
    DROP TABLE archive_counts;
    ",
    // 10: an archived copy's stanza is written once. It used to be in the `archive_log` row
    // and then, merged, in the `archive` row: with OMEMO-sized messages (2.5 KB) the store
    // wrote about 36 KB to disk per message (two copies, each in the log and in the archive,
    // each written to the WAL and again by the checkpoint), and a merge round copied every
    // stanza twice more (into `merge_round`, then into `archive`). Now an append writes the
    // stanza into `archive_content` (rowid order, no index: each append fills the table's
    // last page) and the log row refers to it (`content`); the merge moves only the small
    // rows, which keep referring to the same content. Existing rows keep their stanzas
    // under the row's `seq` (archive) and after the archive's highest `seq` (log).
    "
    CREATE TABLE archive_content (
        cid     INTEGER PRIMARY KEY,
        stanza  TEXT NOT NULL
    );
    INSERT INTO archive_content (cid, stanza) SELECT seq, stanza FROM archive ORDER BY seq;
    INSERT INTO archive_content (cid, stanza)
        SELECT seq + (SELECT COALESCE(max(seq), 0) FROM archive), stanza
        FROM archive_log ORDER BY seq;
    CREATE TABLE archive_log_v10 (
        seq        INTEGER PRIMARY KEY,
        owner      TEXT NOT NULL,
        id         TEXT NOT NULL,
        with_bare  TEXT NOT NULL,
        with_full  TEXT NOT NULL,
        stamp_ms   INTEGER NOT NULL,
        content    INTEGER NOT NULL
    );
    INSERT INTO archive_log_v10 (seq, owner, id, with_bare, with_full, stamp_ms, content)
        SELECT seq, owner, id, with_bare, with_full, stamp_ms,
               seq + (SELECT COALESCE(max(seq), 0) FROM archive)
        FROM archive_log ORDER BY seq;
    DROP TABLE archive_log;
    ALTER TABLE archive_log_v10 RENAME TO archive_log;
    CREATE TABLE archive_v10 (
        seq        INTEGER PRIMARY KEY,
        owner      TEXT NOT NULL,
        id         TEXT NOT NULL,
        with_bare  TEXT NOT NULL,
        with_full  TEXT NOT NULL,
        stamp_ms   INTEGER NOT NULL,
        content    INTEGER NOT NULL
    );
    INSERT INTO archive_v10 (seq, owner, id, with_bare, with_full, stamp_ms, content)
        SELECT seq, owner, id, with_bare, with_full, stamp_ms, seq FROM archive ORDER BY seq;
    DROP TABLE archive;
    ALTER TABLE archive_v10 RENAME TO archive;
    CREATE UNIQUE INDEX archive_by_id ON archive(owner, id);
    CREATE INDEX archive_by_time ON archive(owner, stamp_ms, seq);
    CREATE INDEX archive_by_with ON archive(owner, with_bare, stamp_ms, seq);
    ",
    // 11: one stored stanza for both copies of a message. The server archives the sender's
    // and the recipient's copies in one form (without either account's stanza-id, which a
    // query puts back), and two copies with the same stanza appended one after the other in
    // one batch share one `archive_content` row, which counts the copies that refer to it
    // (`refs`); a deletion takes one reference per stanza and deletes the stanzas no copy
    // refers to any more. Every existing row has one copy. (A column with a constant
    // default: SQLite adds it without rewriting the table.)
    "
    ALTER TABLE archive_content ADD COLUMN refs INTEGER NOT NULL DEFAULT 1;
    ",
    // 12: private XML storage (XEP-0049): one element per namespace per account.
    "
    CREATE TABLE private_xml (
        owner  TEXT NOT NULL,
        ns     TEXT NOT NULL,
        xml    TEXT NOT NULL,
        PRIMARY KEY (owner, ns)
    ) WITHOUT ROWID;
    ",
    // 13: push registrations (XEP-0357): where to notify an account's sleeping devices.
    "
    CREATE TABLE push_registrations (
        seq      INTEGER PRIMARY KEY,
        owner    TEXT NOT NULL,
        jid      TEXT NOT NULL,
        node     TEXT NOT NULL,
        options  TEXT,
        UNIQUE (owner, jid, node)
    );
    ",
    // 14: the interop registry (providers, their domains, the audit log of every change)
    // and users' consent to third-party chats.
    "
    CREATE TABLE providers (
        id             TEXT PRIMARY KEY NOT NULL,
        name           TEXT NOT NULL,
        status         TEXT NOT NULL,
        terms_version  TEXT,
        terms_ms       INTEGER,
        terms_by       TEXT,
        issuer         TEXT,
        jwks           TEXT,
        cert_pins      TEXT NOT NULL,
        scopes         TEXT NOT NULL,
        rate           INTEGER,
        user_rate      INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE provider_domains (
        domain    TEXT PRIMARY KEY NOT NULL,
        provider  TEXT NOT NULL,
        pos       INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX provider_domains_by_provider ON provider_domains (provider);
    CREATE TABLE provider_audit (
        seq       INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        provider  TEXT NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        detail    TEXT NOT NULL
    );
    CREATE INDEX provider_audit_by_provider ON provider_audit (provider, seq);
    CREATE TABLE consent (
        owner       TEXT PRIMARY KEY NOT NULL,
        enabled     INTEGER NOT NULL,
        inbox       TEXT NOT NULL,
        providers   TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 15: a federated provider's server, reached over an interop link (s2s).
    "
    ALTER TABLE providers ADD COLUMN link TEXT;
    ",
    // 16: abuse reports (XEP-0377) and what the server found in the reporter's archive for
    // each message it named. One open report per reporter and reported JID; ids are never
    // reused (operators and providers refer to reports by id).
    "
    CREATE TABLE abuse_reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        reporter TEXT NOT NULL,
        reported TEXT NOT NULL,
        provider TEXT,
        reason TEXT NOT NULL,
        text TEXT NOT NULL,
        closed_ms INTEGER,
        closed_by TEXT,
        closed_note TEXT
    );
    CREATE UNIQUE INDEX abuse_reports_open ON abuse_reports (reporter, reported)
        WHERE closed_ms IS NULL;
    CREATE INDEX abuse_reports_by_reporter ON abuse_reports (reporter, at_ms);
    CREATE INDEX abuse_reports_by_provider ON abuse_reports (provider, at_ms);
    CREATE TABLE abuse_evidence (
        report INTEGER NOT NULL REFERENCES abuse_reports (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        stanza_id TEXT NOT NULL,
        found INTEGER NOT NULL,
        at_ms INTEGER,
        sender TEXT,
        from_reported INTEGER,
        origin TEXT,
        encrypted INTEGER,
        bytes INTEGER,
        PRIMARY KEY (report, seq)
    );
    ",
    // 17: a counter of consent changes, which running servers poll to drop their caches.
    "
    CREATE TABLE consent_version (v INTEGER NOT NULL);
    INSERT INTO consent_version (v) VALUES (0);
    ",
];

/// A write request queued for the writer thread.
trait WriteJob: Send {
    /// Runs the request inside the batch transaction; `false` if it failed
    /// (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Whether [`run`](Self::run) needs a savepoint of its own. Every job that may fail after
    /// it wrote does; a [`BatchWrite`] job does not: it never fails as a whole, and each of its
    /// ops undoes its own failure (see `run_op`). A savepoint is not free: inside one, SQLite
    /// copies every page before its first change to a journal (the largest single cost of
    /// the archive append in profiles, before batch jobs ran without one).
    fn savepoint(&self) -> bool;
    /// Whether nobody waits for the commit ([`BatchWrite::write_batch_lazy`]).
    fn lazy(&self) -> bool;
    /// Whether it is a barrier (an empty batch somebody waits for): what is read after it
    /// must find every write queued before it, held copies too, which go with it.
    fn barrier(&self) -> bool;
    /// For a batch of copies held for clients that acknowledge (nothing but pushes under
    /// reserved ids, nobody waiting): when it is due, and its row ids. The writer holds such
    /// a batch back until then ([`HOLD`]), so that acknowledgements cancel most of them
    /// unwritten.
    fn held(&self) -> Option<(Instant, &[i64])>;
    /// Answers the caller once the batch's fate is known (`None` = committed).
    fn finish(self: Box<Self>, batch_err: Option<&StoreError>);
}

struct Job<T, F> {
    f: Option<F>,
    savepoint: bool,
    lazy: bool,
    barrier: bool,
    held: Option<(Instant, Vec<i64>)>,
    result: Option<Result<T>>,
    reply: Reply<T>,
    /// Counts the job in [`SqliteStore::waited`] until it is dropped (after its reply);
    /// `None` for a lazy job.
    _waited: Option<WaitedGuard>,
}

/// One write somebody waits for, queued or running ([`SqliteStore::waited`]).
struct WaitedGuard(Arc<AtomicUsize>);

impl WaitedGuard {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        WaitedGuard(Arc::clone(count))
    }
}

impl Drop for WaitedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a write's result goes: a caller blocked on a channel, or a callback.
enum Reply<T> {
    Channel(mpsc::SyncSender<Result<T>>),
    Callback(Box<dyn FnOnce(Result<T>) + Send>),
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn savepoint(&self) -> bool {
        self.savepoint
    }

    fn lazy(&self) -> bool {
        self.lazy
    }

    fn barrier(&self) -> bool {
        self.barrier
    }

    fn held(&self) -> Option<(Instant, &[i64])> {
        self.held.as_ref().map(|(at, ids)| (*at, ids.as_slice()))
    }

    fn finish(self: Box<Self>, batch_err: Option<&StoreError>) {
        let result = match (batch_err, self.result) {
            (Some(e), None | Some(Ok(_))) => {
                Err(StoreError::Backend(format!("commit failed: {e}")))
            }
            (None, None) => Err(StoreError::Backend("write request was not run".into())),
            (_, Some(r)) => r,
        };
        match self.reply {
            Reply::Channel(tx) => {
                let _ = tx.send(result);
            }
            Reply::Callback(f) => f(result),
        }
    }
}

type BoxedJob = Box<dyn WriteJob>;

/// The embedded SQLite store.
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<BoxedJob>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, woken while it lingers ([`linger`]) only by a write somebody waits
    /// for, or by every [`LINGER_JOBS`]th write nobody waits for.
    writer_thread: std::thread::Thread,
    /// Writes nobody waits for queued so far (which of them wakes the writer).
    lazy_queued: AtomicUsize,
    /// How long copies held for clients that acknowledge are held back, µs ([`HOLD`],
    /// [`SqliteStore::set_hold`]).
    hold_us: AtomicU64,
    /// Set while the writer waits only for held copies to come due ([`HOLD`]): the next
    /// other write nobody waits for wakes it, to be committed within its linger as before.
    holding: Arc<AtomicBool>,
    /// The checkpoint thread of a file store and the channel that stops it.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Open read connections; `None` for the in-memory variant.
    readers: Option<ReadPool>,
    closed: AtomicBool,
    /// Transactions committed by the writer (for tests and diagnostics).
    commits: Arc<AtomicU64>,
    /// Archive copies queued for the writer and not yet committed, per owner.
    queued: Arc<QueuedCopies>,
    /// Writes somebody waits for, queued and not yet answered: a merge round gives way to
    /// them between two chunks ([`merge_archive_log_step`]).
    waited: Arc<AtomicUsize>,
    /// The next offline row id ([`OfflineIds`]).
    offline_ids: Arc<OfflineIds>,
}

/// Offline row ids, handed out here rather than by SQLite so that a copy held for a client
/// can be delivered with its id while its row is still on its way to the disk
/// ([`crate::OfflineStore::offline_reserve_id`]). Every insert draws from it, reserved or
/// not, so no two rows meet; it starts past the highest id the table ever gave
/// (`sqlite_sequence`, which `AUTOINCREMENT` keeps, also for explicit ids), so no id is used
/// twice either, which the server relies on (an acknowledged id must never name a newer
/// message). One process writes offline messages: the server (the `strait user` commands
/// only remove them).
struct OfflineIds {
    next: AtomicI64,
    /// Rows queued under a reserved id and not written yet, each with its owner; and those
    /// of them a delete queued since has cancelled ([`OfflineIds::cancel`]).
    queued: Mutex<QueuedRows>,
}

#[derive(Default)]
struct QueuedRows {
    pending: std::collections::HashMap<i64, PendingRow>,
    cancelled: std::collections::HashSet<i64>,
}

/// A row queued under a reserved id: its owner, and the held batch it belongs to, if any.
struct PendingRow {
    owner: String,
    held: Option<Arc<HeldBatch>>,
}

/// A batch of held copies (pushes under reserved ids, nobody waiting for their commit): its
/// rows, its ops and its caller's callback. Whichever comes first answers the callback: the
/// writer once it ran the batch, or a delete that cancelled every row of it while the
/// batch was held back ([`OfflineIds::cancel`]), so that a sender's acknowledgement
/// (XEP-0198) waits for the recipient's acknowledgement only, not for the hold to end. The
/// cancel drops the ops too (the stanzas): a batch held back costs memory only while a row
/// of it may still be written.
struct HeldBatch {
    ids: Vec<i64>,
    /// Taken by the writer to run them, or dropped by the cancel.
    ops: Mutex<Option<Vec<WriteOp>>>,
    done: Arc<Mutex<Option<WriteDone>>>,
}

impl HeldBatch {
    /// What a held batch whose every row was cancelled reports: each push "stored" under
    /// its id (as [`offline_push`] does for a cancelled row; the row is gone either way).
    fn cancelled_outcomes(&self) -> Vec<WriteOutcome> {
        self.ids.iter().map(|id| Ok(Some(*id))).collect()
    }

    /// Every row was cancelled: the ops go, and the caller hears now.
    fn answer_cancelled(&self) {
        drop(lock(&self.ops).take());
        let done = lock(&self.done).take();
        if let Some(done) = done {
            done(self.cancelled_outcomes());
        }
    }
}

impl OfflineIds {
    fn load(conn: &Connection) -> Result<Self> {
        let high: i64 = conn.query_row(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'offline'), 0),
                        coalesce((SELECT max(id) FROM offline), 0))",
            [],
            |r| r.get(0),
        )?;
        Ok(OfflineIds {
            next: AtomicI64::new(high + 1),
            queued: Mutex::default(),
        })
    }

    fn next(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes rows of `ops` queued under reserved ids (the rows of `held`, when it is given).
    fn queue(&self, ops: &[WriteOp], held: Option<&Arc<HeldBatch>>) {
        let mut rows = None;
        for op in ops {
            if let WriteOp::OfflinePush {
                owner,
                id: Some(id),
                ..
            } = op
            {
                rows.get_or_insert_with(|| lock(&self.queued))
                    .pending
                    .insert(
                        *id,
                        PendingRow {
                            owner: owner.clone(),
                            held: held.cloned(),
                        },
                    );
            }
        }
    }

    /// A delete of rows still queued under reserved ids: those rows are not written, and the
    /// delete leaves them out (insert and delete cancel out). A copy held for a client that
    /// acknowledges it while its row waits for the writer (a busy writer, or one lingering
    /// for company) so costs the disk nothing. Deletes go through here when they are queued,
    /// before the writer runs the insert: the writer is first in, first out, so a delete
    /// queued after an insert would have run after it.
    ///
    /// Returns the held batches this left without a row to write, for the caller to answer
    /// ([`HeldBatch::answer_cancelled`], outside this lock).
    fn cancel(&self, ops: &mut [WriteOp]) -> Vec<Arc<HeldBatch>> {
        let mut emptied: Vec<Arc<HeldBatch>> = Vec::new();
        let mut rows = None;
        for op in ops {
            let WriteOp::OfflineDelete { owner, ids } = op else {
                continue;
            };
            let rows = rows.get_or_insert_with(|| lock(&self.queued));
            if rows.pending.is_empty() {
                continue;
            }
            ids.retain(|id| {
                if rows.pending.get(id).is_none_or(|row| row.owner != *owner) {
                    return true;
                }
                let row = rows.pending.remove(id).expect("looked up above");
                rows.cancelled.insert(*id);
                if let Some(batch) = row.held
                    && !emptied.iter().any(|b| Arc::ptr_eq(b, &batch))
                {
                    emptied.push(batch);
                }
                false
            });
        }
        if let Some(rows) = rows {
            emptied.retain(|b| b.ids.iter().all(|id| rows.cancelled.contains(id)));
        }
        emptied
    }

    /// Whether the row about to be written under `id` is to be written: false when a delete
    /// cancelled it.
    /// Whether a delete cancelled every one of `ids` ([`OfflineIds::cancel`]).
    fn all_cancelled(&self, ids: &[i64]) -> bool {
        let rows = lock(&self.queued);
        ids.iter().all(|id| rows.cancelled.contains(id))
    }

    fn take(&self, id: i64) -> bool {
        let mut rows = lock(&self.queued);
        rows.pending.remove(&id);
        !rows.cancelled.remove(&id)
    }
}

/// Archive copies queued for the writer and not yet committed, per owner: an archive query
/// for an owner with none, whose copies are all merged, reads without the writer
/// ([`SqliteStore::read_archive`]).
#[derive(Default)]
struct QueuedCopies(Mutex<std::collections::HashMap<String, usize>>);

impl QueuedCopies {
    /// Counts a copy queued for each of `owners` until the guard is dropped (after the
    /// commit's reply).
    fn hold(self: &Arc<Self>, owners: Vec<String>) -> QueuedGuard {
        if !owners.is_empty() {
            let mut m = lock(&self.0);
            for o in &owners {
                *m.entry(o.clone()).or_default() += 1;
            }
        }
        QueuedGuard {
            copies: Arc::clone(self),
            owners,
        }
    }

    fn any(&self, owner: &str) -> bool {
        lock(&self.0).contains_key(owner)
    }
}

struct QueuedGuard {
    copies: Arc<QueuedCopies>,
    owners: Vec<String>,
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        if self.owners.is_empty() {
            return;
        }
        let mut m = lock(&self.copies.0);
        for o in &self.owners {
            if let Some(n) = m.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    m.remove(o);
                }
            }
        }
    }
}

struct ReadPool {
    path: std::path::PathBuf,
    conns: Mutex<Vec<Connection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `d` in whole microseconds (saturating).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn closed_error() -> StoreError {
    StoreError::Backend("store is closed".into())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, CheckpointPolicy::default())
    }

    fn open_with(path: &Path, policy: CheckpointPolicy) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot enable WAL mode (journal_mode is {mode})"
            )));
        }
        Self::setup_writer(&conn)?;
        let pool = ReadPool {
            path: path.to_owned(),
            conns: Mutex::new(Vec::new()),
        };
        // Open one reader up front so an unusable path fails here.
        let first = pool.open_conn()?;
        lock(&pool.conns).push(first);
        // Checkpoints run on a thread of their own (see `checkpoint_loop`), not inside the
        // writer's commits, where copying pages back stalled every write queued behind them.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
        // The WAL file keeps its largest size unless told otherwise: cut it back whenever it
        // starts over (the writer does, on its first commit after a reset).
        let limit = format!("PRAGMA journal_size_limit={}", policy.size_limit_bytes);
        conn.query_row(&limit, [], |_| Ok(()))?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(BUSY_TIMEOUT)?;
        checkpointer.query_row(&limit, [], |_| Ok(()))?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let reset = Arc::new(AtomicBool::new(false));
        let wanted = Arc::clone(&reset);
        let cp_thread = std::thread::Builder::new()
            .name("strait-store-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &stop_rx, &policy, &wanted))
            .map_err(|e| StoreError::Backend(format!("cannot start checkpoint thread: {e}")))?;
        let store = Self::start(conn, Some(pool), reset, LINGER)?;
        *lock(&store.checkpointer) = Some((stop_tx, cp_thread));
        Ok(store)
    }

    /// A private in-memory database (lost when the store is dropped).
    pub fn open_in_memory() -> Result<Self> {
        Self::open_in_memory_lingering(LINGER, HOLD)
    }

    /// [`SqliteStore::open_in_memory`], holding back writes nobody waits for up to `linger`.
    fn open_in_memory_lingering(linger: Duration, hold: Duration) -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        Self::setup_writer(&conn)?;
        let store = Self::start(conn, None, Arc::new(AtomicBool::new(false)), linger)?;
        store.set_hold(hold);
        Ok(store)
    }

    fn setup_writer(conn: &Connection) -> Result<()> {
        conn.execute_batch(
            // 8 MiB of page cache for the writer (SQLite's default is 2 MiB): the archive
            // and offline indexes it appends to stay in memory instead of being re-read.
            // Savepoint journals in memory: every job but a batch job, and every delete
            // op of a batch, runs in a savepoint.
            "PRAGMA synchronous=FULL;
             PRAGMA foreign_keys=ON;
             PRAGMA cache_size=-8192;
             PRAGMA temp_store=MEMORY;",
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(conn)?;
        // The copies of a merge round in progress, in the order they go into `archive`
        // (see `merge_archive_log_step`): the writer's own, in memory.
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS merge_round (
                 pos        INTEGER PRIMARY KEY,
                 owner      TEXT NOT NULL,
                 id         TEXT NOT NULL,
                 with_bare  TEXT NOT NULL,
                 with_full  TEXT NOT NULL,
                 stamp_ms   INTEGER NOT NULL,
                 content    INTEGER NOT NULL
             );",
        )?;
        Ok(())
    }

    /// Starts the writer thread; it makes the WAL start over when `reset_wal` is set, holds
    /// back writes nobody waits for up to `linger` ([`linger`]), and copies held for clients
    /// for [`HOLD`] (see [`SqliteStore::set_hold`]).
    fn start(
        conn: Connection,
        readers: Option<ReadPool>,
        reset_wal: Arc<AtomicBool>,
        linger: Duration,
    ) -> Result<Self> {
        let offline_ids = Arc::new(OfflineIds::load(&conn)?);
        let (tx, rx) = mpsc::channel::<BoxedJob>();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let waited = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::clone(&waited);
        let ids = Arc::clone(&offline_ids);
        let holding = Arc::new(AtomicBool::new(false));
        let writer_holding = Arc::clone(&holding);
        let thread = std::thread::Builder::new()
            .name("strait-store-writer".into())
            .spawn(move || {
                let writer = Writer {
                    commits: &counter,
                    waited: &waiting,
                    ids: &ids,
                    linger,
                    holding: &writer_holding,
                };
                writer_loop(conn, rx, &writer, &reset_wal)
            })
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            writer_thread: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
            lazy_queued: AtomicUsize::new(0),
            hold_us: AtomicU64::new(micros(HOLD)),
            holding,
            checkpointer: Mutex::new(None),
            readers,
            closed: AtomicBool::new(false),
            commits,
            queued: Arc::default(),
            waited,
            offline_ids,
        })
    }

    /// Finishes the queued writes, checkpoints the WAL and stops the writer.
    /// Every later call fails. Calling it again is a no-op.
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        // The checkpointer first: the writer's final checkpoint truncates the WAL.
        let checkpointer = lock(&self.checkpointer).take();
        if let Some((stop, handle)) = checkpointer {
            drop(stop);
            let _ = handle.join();
        }
        // Dropping the last sender ends the writer loop after the queue drains.
        let sender = lock(&self.writer).take();
        drop(sender);
        self.writer_thread.unpark();
        if let Some(pool) = &self.readers {
            lock(&pool.conns).clear();
        }
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            h.join()
                .map_err(|_| StoreError::Backend("writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// Sets how long a copy held for a client that acknowledges (a push under a reserved id,
    /// nobody waiting for its commit) is held back before it is written, from the next one
    /// queued ([`HOLD`] until set). An acknowledgement within it cancels the copy unwritten
    /// and answers its caller at once; a longer hold saves the disk the copies of clients
    /// that acknowledge later (a mobile network's round trip) and costs memory (the
    /// unacknowledged copies of that long) and, for a copy nobody acknowledges in time, that
    /// much delay before its caller hears it is stored.
    pub fn set_hold(&self, hold: Duration) {
        self.hold_us
            .store(micros(hold.min(MAX_HOLD)), Ordering::Relaxed);
    }

    /// How long held copies are held back ([`SqliteStore::set_hold`]).
    pub fn hold(&self) -> Duration {
        Duration::from_micros(self.hold_us.load(Ordering::Relaxed))
    }

    /// Number of write transactions committed so far. With concurrent
    /// writers it is smaller than the number of write calls (group commit).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` on the writer thread inside the current batch's transaction and
    /// returns its result once the batch is committed.
    fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = mpsc::sync_channel::<Result<T>>(1);
        self.enqueue(f, true, Reply::Channel(reply_tx))?;
        reply_rx
            .recv()
            .map_err(|_| StoreError::Backend("writer thread stopped".into()))?
    }

    /// [`SqliteStore::write`] behind every held copy queued before it, which is written
    /// first ([`WriteJob::barrier`]); other writes do not wait for held copies.
    fn write_after_held<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = mpsc::sync_channel::<Result<T>>(1);
        self.enqueue_job(f, true, false, None, true, Reply::Channel(reply_tx))?;
        reply_rx
            .recv()
            .map_err(|_| StoreError::Backend("writer thread stopped".into()))?
    }

    /// Queues `f` for the writer thread (in a savepoint of its own when `savepoint`, see
    /// [`WriteJob::savepoint`]); `reply` gets its result once the batch is committed.
    /// `Err` (and `reply` dropped unused) when the store is closed.
    fn enqueue<T, F>(&self, f: F, savepoint: bool, reply: Reply<T>) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.enqueue_job(f, savepoint, false, None, false, reply)
    }

    /// Queues `f` for the writer: `lazy` when nobody waits for its commit, `held` (the row ids)
    /// for a batch of held copies ([`WriteJob::held`]), `barrier` for a barrier
    /// ([`WriteJob::barrier`]).
    fn enqueue_job<T, F>(
        &self,
        f: F,
        savepoint: bool,
        lazy: bool,
        held: Option<Vec<i64>>,
        barrier: bool,
        reply: Reply<T>,
    ) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        let sender = lock(&self.writer).clone().ok_or_else(closed_error)?;
        let is_held = held.is_some();
        let job: BoxedJob = Box::new(Job {
            f: Some(f),
            savepoint,
            lazy,
            barrier,
            held: held.map(|ids| (Instant::now() + self.hold(), ids)),
            result: None,
            reply,
            _waited: (!lazy).then(|| WaitedGuard::new(&self.waited)),
        });
        sender.send(job).map_err(|_| closed_error())?;
        // A lingering writer is parked, not waiting on the channel: a send does not wake it
        // (a wake-up, on both threads, for every message's write was the largest cost of
        // writes nobody waits for). When it is waiting on the channel, the send woke it and
        // this is a no-op. Held copies wake it never: it takes them when they are due; the
        // first other lazy write does while it waits only for those.
        if !lazy
            || (!is_held
                && (self.holding.swap(false, Ordering::SeqCst)
                    || (self.lazy_queued.fetch_add(1, Ordering::Relaxed) + 1)
                        .is_multiple_of(LINGER_JOBS)))
        {
            self.writer_thread.unpark();
        }
        Ok(())
    }

    /// Has the writer merge the archive log into the archive now, behind everything queued.
    /// The writer does on its own (every [`LOG_MERGE_ROWS`] copies, or a second after the
    /// oldest), and queries read the log where it is: this is for tests and benchmarks that
    /// want the copies in one place or the other. No savepoint: a merge that fails half-way
    /// is redone by the next one (which skips what already moved).
    pub fn merge_archive_log(&self) -> Result<()> {
        let (reply_tx, reply_rx) = mpsc::sync_channel::<Result<()>>(1);
        self.enqueue(merge_archive_log, false, Reply::Channel(reply_tx))?;
        reply_rx
            .recv()
            .map_err(|_| StoreError::Backend("writer thread stopped".into()))?
    }

    /// Runs the archive read `f` for `owner` so that it sees every copy of `owner` queued
    /// before the call: `f` reads the archive and the owner's copies still in the log in one
    /// read transaction ([`query_archive`]), so nothing needs merging first. When copies of
    /// `owner` are still queued ([`QueuedCopies`]), it first waits for the writer to commit
    /// everything queued before it (a no-op job, not lazy, so that a lingering batch commits
    /// at once), and no longer. History: every query used to have the writer merge the log
    /// first, behind its whole queue: 75 ms median for a page of an empty archive beside
    /// 8,000 msg/s archive on (2.6 ms idle); then only an owner with copies queued or in
    /// the log did, 82.5 ms median for an owner in a conversation.
    fn read_archive<T, F>(&self, owner: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.readers.is_some() && self.queued.any(owner) {
            let (reply_tx, reply_rx) = mpsc::sync_channel::<Result<()>>(1);
            self.enqueue(|_| Ok(()), false, Reply::Channel(reply_tx))?;
            reply_rx
                .recv()
                .map_err(|_| StoreError::Backend("writer thread stopped".into()))??;
        }
        // On a reader, one transaction for all of `f`'s statements (the writer may merge the
        // log between two of them otherwise); an in-memory store runs `f` on the writer,
        // inside its batch's transaction, behind everything queued.
        self.read(move |c| {
            if c.is_autocommit() {
                let tx = c.unchecked_transaction()?;
                f(&tx)
            } else {
                f(c)
            }
        })
    }

    /// Runs `f` on a read connection (or on the writer for in-memory stores).
    fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_error());
        }
        let Some(pool) = &self.readers else {
            return self.write(f);
        };
        let conn = match lock(&pool.conns).pop() {
            Some(c) => c,
            None => pool.open_conn()?,
        };
        let result = f(&conn);
        if !self.closed.load(Ordering::SeqCst) {
            let mut conns = lock(&pool.conns);
            if conns.len() < READ_POOL {
                conns.push(conn);
            }
        }
        result
    }
}

impl ReadPool {
    fn open_conn(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Applies the migrations up to schema version `target` (tests build databases of older
/// versions with it).
pub(crate) fn migrate_to(conn: &Connection, target: usize) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let known = MIGRATIONS.len() as i64;
    let target = (target as i64).min(known);
    loop {
        // The version is read inside the write transaction, so two processes
        // opening the same file cannot both apply a migration.
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| -> Result<bool> {
            let current: Option<i64> =
                conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
            let current = current.unwrap_or(0);
            if current > known {
                return Err(StoreError::Backend(format!(
                    "database schema version {current} is newer than this build supports ({known})"
                )));
            }
            if current >= target {
                return Ok(false);
            }
            let version = current + 1;
            // An upgrade of a database in use says what it does, since some steps copy the
            // whole archive (5, 10: seconds per million messages); a new database's steps do not.
            let started = Instant::now();
            if current > 0 {
                tracing::info!("upgrading the database schema from version {current} to {version}");
            }
            conn.execute_batch(MIGRATIONS[current as usize])
                .map_err(|e| StoreError::Backend(format!("migration to {version}: {e}")))?;
            if current > 0 {
                tracing::info!(
                    "database schema at version {version} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            conn.execute("DELETE FROM schema_version", [])?;
            conn.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [version],
            )?;
            Ok(true)
        })();
        match step {
            Ok(more) => {
                conn.execute_batch("COMMIT")?;
                if !more {
                    return Ok(());
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
}

/// What the writer thread works with besides its connection and queue.
struct Writer<'a> {
    commits: &'a AtomicU64,
    waited: &'a AtomicUsize,
    ids: &'a OfflineIds,
    /// How long a batch of writes nobody waits for waits for company ([`LINGER`]).
    linger: Duration,
    /// [`SqliteStore::holding`].
    holding: &'a AtomicBool,
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<BoxedJob>, w: &Writer, reset_wal: &AtomicBool) {
    // Copies a crash left in the archive log go where queries find them.
    reload_archive_log(&conn);
    merge_archive_log_alone(&conn, w.commits);
    // Batches of held copies not due yet, oldest first ([`HOLD`]).
    let mut held: std::collections::VecDeque<BoxedJob> = std::collections::VecDeque::new();
    let mut open = true;
    while open || !held.is_empty() {
        let mut batch = Vec::new();
        let first = if !open {
            None
        } else if held.is_empty() {
            // While the archive log holds copies, wait for work only until they are due to
            // move.
            match archive_log_due_in() {
                None => match rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => {
                        open = false;
                        None
                    }
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        None
                    }
                },
            }
        } else {
            // Held copies wait: parked, not waiting on the channel, so that the held copies
            // queued meanwhile wake nobody (`enqueue_job` wakes it for the other writes).
            match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    None
                }
                Err(mpsc::TryRecvError::Empty) => {
                    let due = held_due_in(&held);
                    let wait = archive_log_due_in().map_or(due, |a| a.min(due));
                    // Said before looking again, so that a write queued in between either is
                    // found or wakes the park.
                    w.holding.store(true, Ordering::SeqCst);
                    let job = match rx.try_recv() {
                        Ok(job) => Some(job),
                        Err(mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            None
                        }
                        Err(mpsc::TryRecvError::Empty) => {
                            if !wait.is_zero() {
                                std::thread::park_timeout(wait);
                            }
                            None
                        }
                    };
                    w.holding.store(false, Ordering::SeqCst);
                    job
                }
            }
        };
        if let Some(first) = first {
            let arrived = Instant::now();
            take_job(first, &mut batch, &mut held);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => take_job(job, &mut batch, &mut held),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                linger(&rx, &mut batch, &mut held, arrived + w.linger);
            }
        }
        if !open || batch.iter().any(|j| j.barrier()) {
            // Somebody waits to read what the held copies write (a session that ends looks up
            // which of its copies are stored, a login fetches its stored messages, both
            // behind a barrier): they go first. Other writes somebody waits for (a message
            // stored for an account offline, a roster or PEP change) leave them held: taken
            // along with every such write, as they once were, a copy was rarely held long
            // enough for its acknowledgement on a server with any of those writes (with a
            // tenth of the messages for accounts offline, every millisecond or so).
            let rest = std::mem::take(&mut batch);
            batch.extend(held.drain(..));
            batch.extend(rest);
        } else if !held.is_empty() && held_due_in(&held).is_zero() {
            // Due ones, and those due within a linger, so that they share a commit (ahead of
            // the rest: they were queued first).
            let now = Instant::now() + w.linger;
            let rest = std::mem::take(&mut batch);
            while held
                .front()
                .and_then(|j| j.held())
                .is_some_and(|(due, _)| due <= now)
            {
                batch.extend(held.pop_front());
            }
            batch.extend(rest);
        }
        if !batch.is_empty() {
            run_held_and_batch(&conn, batch, w);
        }
        if archive_log_due_in() == Some(Duration::ZERO) {
            merge_archive_log_step(&conn, w.commits, w.waited);
        }
        // Between transactions, after this batch's callers have their answers: copy back
        // what the checkpoint thread could not (what was written while it ran) and wait for
        // readers to leave the WAL, so that the next transaction starts it over.
        if reset_wal.swap(false, Ordering::Relaxed) {
            match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
                Ok(0) => {}
                Ok(_) => tracing::debug!("WAL reset postponed: readers still in it"),
                Err(e) => tracing::warn!("WAL reset failed: {e}"),
            }
        }
    }
    // All senders are gone: the archive log into the archive, and the WAL back into the
    // database file.
    merge_archive_log_alone(&conn, w.commits);
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// How long until the oldest held batch is due (zero when it is, or none are held).
fn held_due_in(held: &std::collections::VecDeque<BoxedJob>) -> Duration {
    held.front()
        .and_then(|j| j.held())
        .map_or(Duration::ZERO, |(due, _)| {
            due.saturating_duration_since(Instant::now())
        })
}

/// A job taken off the queue goes into the batch, or among the held ones.
fn take_job(
    job: BoxedJob,
    batch: &mut Vec<BoxedJob>,
    held: &mut std::collections::VecDeque<BoxedJob>,
) {
    if job.held().is_some() {
        held.push_back(job);
    } else {
        batch.push(job);
    }
}

/// Runs `batch`: first, outside any transaction, the held batches whose every copy an
/// acknowledgement cancelled (they touch no table: `offline_push` only forgets the id), then
/// the rest in one transaction. A batch of cancelled copies alone so costs no commit.
/// Cancelling is one-way (a cancelled id is never pending again), so what is found
/// cancelled here stays so while it runs.
fn run_held_and_batch(conn: &Connection, batch: Vec<BoxedJob>, w: &Writer) {
    let (cancelled, rest): (Vec<BoxedJob>, Vec<BoxedJob>) = batch
        .into_iter()
        .partition(|j| j.held().is_some_and(|(_, ids)| w.ids.all_cancelled(ids)));
    for mut job in cancelled {
        job.run(conn);
        job.finish(None);
    }
    if !rest.is_empty() {
        run_batch(conn, rest, w.commits);
    }
}

/// While a batch holds only writes nobody waits for, and few of them, the writer waits for
/// more ([`LINGER`] after the first arrived: until `deadline`, [`LINGER_JOBS`] jobs (looked
/// for each time [`LINGER_JOBS`] more were queued), or a job somebody waits for) so that they
/// share one commit: each commit is an fsync, which on the benchmark VM's virtio disk costs
/// more CPU than the SQLite work of the writes it carries (archive on at 2,000 msg/s the
/// writer committed 760 times a second, two or three messages' copies each).
fn linger(
    rx: &mpsc::Receiver<BoxedJob>,
    batch: &mut Vec<BoxedJob>,
    held: &mut std::collections::VecDeque<BoxedJob>,
    deadline: Instant,
) {
    if batch.len() >= LINGER_JOBS || !batch.iter().all(|j| j.lazy()) {
        return;
    }
    loop {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    let lazy = job.lazy();
                    take_job(job, batch, held);
                    if !lazy {
                        // Somebody waits: commit now, with whatever else is queued.
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                // Every sender is gone: commit what there is.
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if batch.len() >= LINGER_JOBS {
            return;
        }
        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        // Woken early by a write somebody waits for, by every LINGER_JOBS-th write nobody
        // waits for, or by the store closing (`enqueue_job`, `close`); returning without
        // cause is harmless (the loop looks again).
        std::thread::park_timeout(wait);
    }
}

/// When the checkpoint thread copies the WAL back into the database file, and when it
/// makes the WAL start over.
#[derive(Debug, Clone)]
struct CheckpointPolicy {
    /// How often the checkpoint thread runs. Every checkpoint ends with an fsync of the
    /// database file (28 to 30 ms on the benchmark VM's virtio disk), and the writer's own
    /// WAL fsyncs wait behind it while it runs: once a second stalls the writer less often
    /// than every 200 ms did (archive on, 8,000 msg/s, by hand).
    every: Duration,
    /// WAL frames (pages) past which the writer is asked to make the WAL start over. The
    /// WAL only starts over when a writer finds all of it copied back, which a PASSIVE
    /// checkpoint running beside a busy writer never achieves (the writer appends while it
    /// copies): without this, the WAL grew for as long as the load lasted (1.7 GB after a
    /// benchmark). Nor can another connection's RESTART checkpoint get in between the
    /// writer's back-to-back transactions. So the writer runs it itself, between two
    /// batches, right after the checkpoint thread's PASSIVE one: it stalls only while it
    /// copies the frames written meanwhile and syncs.
    reset_pages: i64,
    /// What the WAL file is cut back to when it starts over (`journal_size_limit`).
    size_limit_bytes: i64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every: Duration::from_secs(1),
            // 32 MiB of 4 KiB pages: a little over a second of the heaviest archive load
            // measured (about 20,000 pages a second at 11,000 msg/s).
            reset_pages: 8_192,
            size_limit_bytes: 64 << 20,
        }
    }
}

/// Copies committed WAL pages back into the database file, alongside the writer (SQLite's
/// PASSIVE checkpoint never blocks it), until `stop` is dropped; when the WAL has grown
/// past `policy.reset_pages`, sets `reset`, on which the writer makes the WAL start over
/// (and the file is cut back to `journal_size_limit`).
fn checkpoint_loop(
    conn: &Connection,
    stop: &mpsc::Receiver<()>,
    policy: &CheckpointPolicy,
    reset: &AtomicBool,
) {
    let mut wait = policy.every;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        wait = policy.every;
        let pages = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        match pages {
            Ok(log) if log >= policy.reset_pages => {
                reset.store(true, Ordering::Relaxed);
                // Under heavy writes a second is a lot of WAL (over 100 MB at 11,000
                // archived messages a second): look again soon, until the reset happened.
                wait = policy.every / 20;
            }
            Ok(_) => {}
            // Retried on the next round; the WAL only grows meanwhile.
            Err(e) => tracing::warn!("WAL checkpoint failed: {e}"),
        }
    }
}

/// Runs one batch in one transaction and counts it in `commits` if it committed, before any
/// of its callers has an answer.
fn run_batch(conn: &Connection, mut batch: Vec<BoxedJob>, commits: &AtomicU64) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let err = StoreError::from(e);
        for job in batch {
            job.finish(Some(&err));
        }
        return;
    }
    check_data_version(conn);
    let mut rolled_back = false;
    for job in &mut batch {
        if !job.savepoint() {
            job.run(conn);
            continue;
        }
        if exec(conn, "SAVEPOINT job").is_err() {
            // Not run: finish() reports it.
            continue;
        }
        if !job.run(conn) {
            let _ = exec(conn, "ROLLBACK TO job");
            rolled_back = true;
        }
        let _ = exec(conn, "RELEASE job");
    }
    let commit = exec(conn, "COMMIT").map_err(StoreError::from);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
        forget_accounts();
    }
    // What the writer knows of the archive log may no longer match the table once changes
    // were undone (a job that failed after it changed the log, or the whole transaction).
    if commit.is_err() || rolled_back {
        reload_archive_log(conn);
    }
    let err = commit.err();
    if err.is_none() {
        commits.fetch_add(1, Ordering::Relaxed);
    }
    for job in batch {
        job.finish(err.as_ref());
    }
}

// ---------------------------------------------------------------------------
// SQL helpers (run on the writer or a reader connection).

/// Most accounts [`KnownAccounts`] holds; past it, it starts over.
const KNOWN_ACCOUNTS_MAX: usize = 100_000;

/// Accounts the writer found to exist, so that the message path's writes (two archive copies
/// per message, held and offline copies) do not look their owner up in `accounts` each time
/// (about 5 % of the writer's time in profiles). It lives on the writer thread and is emptied
/// whenever an account may have gone: an account removal through this store, a batch that
/// did not commit, or a commit by another connection (another process on the same file, such
/// as `strait user remove`), which `PRAGMA data_version` shows at the start of every batch.
#[derive(Default)]
struct KnownAccounts {
    data_version: Option<i64>,
    jids: std::collections::HashSet<String>,
}

thread_local! {
    static KNOWN_ACCOUNTS: std::cell::RefCell<KnownAccounts> =
        std::cell::RefCell::new(KnownAccounts::default());
}

/// [`exists`] for writes on the writer thread, through [`KnownAccounts`].
fn account_known(conn: &Connection, jid: &str) -> Result<bool> {
    if KNOWN_ACCOUNTS.with_borrow(|k| k.jids.contains(jid)) {
        return Ok(true);
    }
    let found = exists(conn, jid)?;
    if found {
        KNOWN_ACCOUNTS.with_borrow_mut(|k| {
            if k.jids.len() >= KNOWN_ACCOUNTS_MAX {
                k.jids.clear();
            }
            k.jids.insert(jid.to_owned());
        });
    }
    Ok(found)
}

/// Empties [`KnownAccounts`] (on the writer thread).
fn forget_accounts() {
    KNOWN_ACCOUNTS.with_borrow_mut(|k| k.jids.clear());
}

/// Empties [`KnownAccounts`] and reloads [`ArchiveLog`] if another connection committed
/// since the last batch.
fn check_data_version(conn: &Connection) {
    let v = conn
        .prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)));
    let changed = KNOWN_ACCOUNTS.with_borrow_mut(|k| {
        let v = v.ok();
        let changed = v.is_none() || v != k.data_version;
        if changed {
            k.jids.clear();
        }
        k.data_version = v;
        changed
    });
    if changed {
        // A round's copies taken before another connection changed the log (such as an
        // account removed by `strait user remove`) must not go into the archive now.
        MERGE_ROUND.set(None);
        reload_archive_log(conn);
    }
}

/// The archive copies in `archive_log` (appended, not yet merged into `archive`), by owner
/// and id, as the writer thread knows them: an append's duplicate-id check looks here (the
/// log has no index) and then in `archive_by_id`. Reloaded from the table whenever it may
/// not match it: at the writer's start, after changes were rolled back, and after another
/// connection committed (`PRAGMA data_version`).
#[derive(Default)]
struct ArchiveLog {
    owners: std::collections::HashMap<String, OwnerLog>,
    rows: usize,
    /// When the oldest copy in the log was appended (as far as this thread knows).
    since: Option<Instant>,
}

/// One owner's copies in the log.
struct OwnerLog {
    ids: std::collections::HashSet<String>,
    /// The newest `stamp_ms` among them.
    newest: i64,
}

impl ArchiveLog {
    fn contains(&self, owner: &str, id: &str) -> bool {
        self.owners.get(owner).is_some_and(|o| o.ids.contains(id))
    }

    fn insert(&mut self, owner: &str, id: &str, stamp_ms: i64) {
        let o = match self.owners.get_mut(owner) {
            Some(o) => o,
            None => self.owners.entry(owner.to_owned()).or_insert(OwnerLog {
                ids: Default::default(),
                newest: stamp_ms,
            }),
        };
        o.newest = o.newest.max(stamp_ms);
        if o.ids.insert(id.to_owned()) {
            self.rows += 1;
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// The newest stamp among `owner`'s copies in the log.
    fn newest(&self, owner: &str) -> Option<i64> {
        self.owners.get(owner).map(|o| o.newest)
    }

    fn remove_owner(&mut self, owner: &str) {
        if let Some(o) = self.owners.remove(owner) {
            self.rows -= o.ids.len();
        }
        if self.rows == 0 {
            self.since = None;
        }
    }
}

/// A merge of the archive log in progress, chunk by chunk ([`merge_archive_log_step`]):
/// its copies wait in the writer's temporary table `merge_round`, in the order they go into
/// `archive` (`pos`).
struct MergeRound {
    /// The positions merged so far (`pos` up to this).
    done: i64,
    /// The round's last position.
    total: i64,
    /// The log's highest `seq` when the round began: the round moves those copies and no
    /// later ones.
    top: i64,
    /// When the round began: the copies appended since wait for the next round, which is
    /// due a second after this at the latest.
    began: Instant,
}

thread_local! {
    static MERGE_ROUND: std::cell::RefCell<Option<MergeRound>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    static ARCHIVE_LOG: std::cell::RefCell<ArchiveLog> =
        std::cell::RefCell::new(ArchiveLog::default());
}

/// Reads [`ArchiveLog`] from the table (on the writer thread), and forgets
/// [`NewestStamps`], which may no longer match either. On failure the log is left empty
/// and the next merge moves whatever the table holds (then nothing is lost, but a duplicate
/// id appended meanwhile is only caught at the merge, which keeps the first copy).
fn reload_archive_log(conn: &Connection) {
    NEWEST_STAMPS.with_borrow_mut(|n| n.clear());
    read_archive_log(conn);
}

/// Reads [`ArchiveLog`] from the table (on the writer thread).
fn read_archive_log(conn: &Connection) {
    let mut log = ArchiveLog::default();
    let read = (|| -> rusqlite::Result<()> {
        let mut st = conn.prepare_cached("SELECT owner, id, stamp_ms FROM archive_log")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            log.insert(
                &r.get::<_, String>(0)?,
                &r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            );
        }
        Ok(())
    })();
    if let Err(e) = read {
        tracing::warn!("cannot read the archive log: {e}");
        // Make sure a merge runs soon.
        log.rows = log.rows.max(1);
        log.since = Some(Instant::now() - LOG_MERGE_AGE);
    }
    ARCHIVE_LOG.set(log);
}

/// Most owners [`NEWEST_STAMPS`] holds; past it, it starts over.
const NEWEST_STAMPS_MAX: usize = 65_536;

thread_local! {
    /// Each owner's newest archive stamp (merged or in the log) as the writer thread knows
    /// it, so that an append does not look it up ([`newest_stamp`]). Emptied whenever it
    /// may be wrong: with [`ArchiveLog`] (rollbacks, another connection's commits) and per
    /// owner when an archive is deleted.
    static NEWEST_STAMPS: std::cell::RefCell<std::collections::HashMap<String, i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The newest `stamp_ms` in `owner`'s archive, merged or in the log (writer thread).
fn newest_stamp(c: &Connection, owner: &str) -> Result<Option<i64>> {
    if let Some(n) = NEWEST_STAMPS.with_borrow(|n| n.get(owner).copied()) {
        return Ok(Some(n));
    }
    // One descent of `archive_by_time` (migration 8).
    let merged: Option<i64> = c
        .prepare_cached("SELECT max(stamp_ms) FROM archive WHERE owner = ?1")?
        .query_row([owner], |r| r.get(0))?;
    let logged = ARCHIVE_LOG.with_borrow(|l| l.newest(owner));
    Ok(merged.max(logged))
}

fn remember_newest_stamp(owner: &str, stamp_ms: i64) {
    NEWEST_STAMPS.with_borrow_mut(|n| {
        if let Some(v) = n.get_mut(owner) {
            *v = stamp_ms;
            return;
        }
        if n.len() >= NEWEST_STAMPS_MAX {
            n.clear();
        }
        n.insert(owner.to_owned(), stamp_ms);
    });
}

/// How long until the archive log is due to be merged: `None` while it is empty, zero when
/// it is due ([`LOG_MERGE_ROWS`], [`LOG_MERGE_AGE`]).
fn archive_log_due_in() -> Option<Duration> {
    if MERGE_ROUND.with_borrow(|r| r.is_some()) {
        return Some(Duration::ZERO);
    }
    ARCHIVE_LOG.with_borrow(|l| {
        let since = l.since?;
        if l.rows >= LOG_MERGE_ROWS {
            return Some(Duration::ZERO);
        }
        Some(LOG_MERGE_AGE.saturating_sub(since.elapsed()))
    })
}

/// Moves every copy in `archive_log` into `archive`, inside the caller's transaction;
/// [`ArchiveLog`] is emptied (a caller whose transaction then fails reloads it). The copies
/// move in one transaction (through `merge_round`, [`begin_round`]), so each index leaf page
/// they change is written to the WAL once per merge, not once per copy. They move owner by owner, and each owner's copies in the
/// order they were appended: a new row's `seq` is the table's highest plus one, so each
/// owner's archive order, `(stamp_ms, seq)`, stays its append order (appends keep the
/// stamps in order, [`archive_append`]; every query is for one owner), and all of one
/// owner's copies go into each index one after the other,
/// at the same place. In the order of the log instead, consecutive inserts went to a
/// different owner's leaves each time: saturated pingpong with archiving on made 7,240 to
/// 7,920 round trips a second against 9,060 to 9,940 owner by owner (+22 %; by hand, the
/// sort the only change, three alternating runs each, Intel host, 2 vCPUs). A copy whose id
/// `archive` already holds for its owner (the append-time check makes that impossible
/// unless another process appended behind this one's back, or a round of chunks was cut
/// short after some of them) is dropped: the first copy with an id stays, as an append of
/// a taken id is refused. A round in progress ([`merge_archive_log_step`]) is finished
/// first.
fn merge_archive_log(c: &Connection) -> Result<()> {
    if let Some(r) = MERGE_ROUND.take() {
        merge_positions(c, r.done, r.total)?;
        end_round(c, Some(r.top))?;
    }
    if ARCHIVE_LOG.with_borrow(|l| l.rows == 0) {
        return Ok(());
    }
    if let Some(r) = begin_round(c)? {
        merge_positions(c, 0, r.total)?;
        end_round(c, None)?;
    }
    ARCHIVE_LOG.set(ArchiveLog::default());
    Ok(())
}

/// Takes every copy in `archive_log` into `merge_round`, in the order they go into
/// `archive` (owner by owner, each owner's in append order): the round that merges them.
/// `None` when the log is empty. One scan and sort of the log, as a merge in one statement
/// had; each chunk then reads its positions alone (chunks that each scanned the unindexed
/// log cost saturated pingpong archive on 12 % at 512 copies a chunk and 69 % at 256).
fn begin_round(c: &Connection) -> Result<Option<MergeRound>> {
    let top: Option<i64> = c
        .prepare_cached("SELECT max(seq) FROM archive_log")?
        .query_row([], |r| r.get(0))?;
    let Some(top) = top else {
        return Ok(None);
    };
    c.prepare_cached("DELETE FROM temp.merge_round")?
        .execute([])?;
    let total = c
        .prepare_cached(
            "INSERT INTO temp.merge_round (pos, owner, id, with_bare, with_full, stamp_ms, content)
             SELECT row_number() OVER (ORDER BY owner, seq),
                    owner, id, with_bare, with_full, stamp_ms, content
             FROM archive_log ORDER BY owner, seq",
        )?
        .execute([])?;
    Ok(Some(MergeRound {
        done: 0,
        total: total as i64,
        top,
        began: Instant::now(),
    }))
}

/// Ends a round: deletes its copies from the log (the whole table for `None`, which SQLite
/// does without touching the rows' pages; else the rows up to `top`, which rewrites every
/// page of the log, as the appends interleave owners) and empties `merge_round`.
fn end_round(c: &Connection, top: Option<i64>) -> Result<()> {
    match top {
        None => c.prepare_cached("DELETE FROM archive_log")?.execute([])?,
        Some(top) => c
            .prepare_cached("DELETE FROM archive_log WHERE seq <= ?1")?
            .execute([top])?,
    };
    c.prepare_cached("DELETE FROM temp.merge_round")?
        .execute([])?;
    Ok(())
}

/// Copies the round's positions after `from` up to `to` into `archive`, in order, and
/// counts them in `archive_with_counts`, without deleting them from the log: a query
/// leaves out the log's copies that `archive` holds ([`logged_copies`]). The copies it
/// took.
fn merge_positions(c: &Connection, from: i64, to: i64) -> Result<usize> {
    let range = [from, to];
    let moved = c
        .prepare_cached(
            "INSERT OR IGNORE INTO archive (owner, id, with_bare, with_full, stamp_ms, content)
             SELECT owner, id, with_bare, with_full, stamp_ms, content FROM temp.merge_round
             WHERE pos > ?1 AND pos <= ?2 ORDER BY pos",
        )?
        .execute(range)?;
    let logged: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM temp.merge_round WHERE pos > ?1 AND pos <= ?2")?
        .query_row(range, |r| r.get(0))?;
    let logged = logged as usize;
    if moved == logged {
        // One upsert per owner and partner merged (their rows are all in `archive` now).
        c.prepare_cached(
            "INSERT INTO archive_with_counts (owner, with_bare, n)
             SELECT owner, with_bare, COUNT(*) FROM temp.merge_round
             WHERE pos > ?1 AND pos <= ?2
             GROUP BY owner, with_bare
             ON CONFLICT (owner, with_bare) DO UPDATE SET n = n + excluded.n",
        )?
        .execute(range)?;
    } else {
        // Some copies were dropped: count the owners and partners concerned afresh.
        c.prepare_cached(
            "INSERT INTO archive_with_counts (owner, with_bare, n)
             SELECT o.owner, o.with_bare,
                    (SELECT COUNT(*) FROM archive a
                     WHERE a.owner = o.owner AND a.with_bare = o.with_bare)
             FROM (SELECT DISTINCT owner, with_bare FROM temp.merge_round
                   WHERE pos > ?1 AND pos <= ?2) o
             WHERE true
             ON CONFLICT (owner, with_bare) DO UPDATE SET n = excluded.n",
        )?
        .execute(range)?;
        // A dropped copy gives up its reference to its stanza, unless the copy the archive
        // kept is the same one (a round cut short after it had copied it leaves it in the
        // log); a stanza no copy refers to any more goes.
        c.prepare_cached(
            "UPDATE archive_content SET refs = refs - 1 WHERE cid IN (
                 SELECT m.content FROM temp.merge_round m
                 WHERE m.pos > ?1 AND m.pos <= ?2
                   AND NOT EXISTS (SELECT 1 FROM archive a
                                   WHERE a.owner = m.owner AND a.id = m.id
                                     AND a.content = m.content))",
        )?
        .execute(range)?;
        c.prepare_cached(
            "DELETE FROM archive_content WHERE refs <= 0 AND cid IN (
                 SELECT content FROM temp.merge_round WHERE pos > ?1 AND pos <= ?2)",
        )?
        .execute(range)?;
        tracing::warn!(
            "archive merge: {} of {logged} copies had an id their owner's archive already held \
             (a merge cut short, or another process appending); the first copies were kept",
            logged - moved
        );
    }
    Ok(logged)
}

/// The writer's own merges, when [`archive_log_due_in`] says so: a round, in one
/// transaction while nobody waits for a write, else chunk by chunk. A round begins by
/// taking the log's copies into `merge_round` in the order they go into `archive` (owner by
/// owner, each owner's in append order, as [`merge_archive_log`] does; [`begin_round`]);
/// each chunk copies the next [`LOG_MERGE_CHUNK`] of them into `archive`
/// ([`merge_positions`]). After a chunk, when a write somebody waits for is queued
/// (`waited`: an offline message, which its sender's stream waits for; a roster change; a
/// MAM query's barrier), the transaction commits and the writer runs the queued batches
/// before the next chunk: such a write waits for one chunk, not for the whole round (50 to
/// 90 ms under heavy archiving). The last chunk deletes the round's copies from the log
/// ([`end_round`]). Between two chunks a copied row is in both tables, and a query reads
/// it once ([`logged_copies`] leaves out what `archive` holds; an owner's copies may be
/// split between the two, its older ones merged); what was appended during the round
/// stays in the log for the next.
fn merge_archive_log_step(conn: &Connection, commits: &AtomicU64, waited: &AtomicUsize) {
    let mut round_over = false;
    let merged = merge_in_transaction(conn, commits, |c| {
        let began_here = MERGE_ROUND.with_borrow(|r| r.is_none());
        if began_here {
            let Some(round) = begin_round(c)? else {
                // The table is empty, whatever the in-memory view said.
                ARCHIVE_LOG.set(ArchiveLog::default());
                return Ok(0);
            };
            MERGE_ROUND.set(Some(round));
        }
        let mut copies = 0;
        loop {
            let (from, to, total, top) = MERGE_ROUND.with_borrow(|r| {
                let r = r.as_ref().expect("a round");
                (
                    r.done,
                    (r.done + LOG_MERGE_CHUNK as i64).min(r.total),
                    r.total,
                    r.top,
                )
            });
            copies += merge_positions(c, from, to)?;
            MERGE_ROUND.with_borrow_mut(|r| r.as_mut().expect("a round").done = to);
            if to == total {
                // Nothing can have been appended since a round that began in this
                // transaction.
                end_round(c, if began_here { None } else { Some(top) })?;
                round_over = true;
                return Ok(copies);
            }
            if waited.load(Ordering::SeqCst) > 0 {
                return Ok(copies);
            }
        }
    });
    if merged && round_over {
        // What the log holds now was appended since the round began.
        let began = MERGE_ROUND.take().map(|r| r.began);
        read_archive_log(conn);
        ARCHIVE_LOG.with_borrow_mut(|l| {
            if l.rows > 0 {
                l.since = began.or(l.since);
            }
        });
    }
}

/// [`merge_archive_log`] in a transaction of its own (at the writer's start and end).
fn merge_archive_log_alone(conn: &Connection, commits: &AtomicU64) {
    if ARCHIVE_LOG.with_borrow(|l| l.rows == 0) && MERGE_ROUND.with_borrow(|r| r.is_none()) {
        return;
    }
    merge_in_transaction(conn, commits, |c| {
        let copies = ARCHIVE_LOG.with_borrow(|l| l.rows);
        merge_archive_log(c).map(|()| copies)
    });
}

/// Runs the merge `f` (which says how many copies it moved) in a transaction of its own,
/// between batches: whether it committed. On failure the round in progress ends and the
/// log is reloaded.
fn merge_in_transaction(
    conn: &Connection,
    commits: &AtomicU64,
    f: impl FnOnce(&Connection) -> Result<usize>,
) -> bool {
    let started = Instant::now();
    let merged = exec(conn, "BEGIN IMMEDIATE")
        .map_err(StoreError::from)
        .and_then(|()| f(conn))
        .and_then(|n| exec(conn, "COMMIT").map(|()| n).map_err(StoreError::from));
    match merged {
        Ok(copies) => {
            commits.fetch_add(1, Ordering::Relaxed);
            // Half of the writer's time under saturated archiving (see bench/RESULTS.md):
            // what an operator watches when the archive-on peak matters.
            tracing::debug!(
                copies,
                ms = (started.elapsed().as_micros() / 100) as f64 / 10.0,
                "archive log merged"
            );
            true
        }
        Err(e) => {
            tracing::warn!("archive merge failed (retried on the next round): {e}");
            let _ = conn.execute_batch("ROLLBACK");
            MERGE_ROUND.set(None);
            reload_archive_log(conn);
            // Not again at once: the next round comes after LOG_MERGE_AGE.
            ARCHIVE_LOG.with_borrow_mut(|l| {
                if l.rows > 0 {
                    l.since = Some(Instant::now());
                }
            });
            false
        }
    }
}

fn exists(conn: &Connection, jid: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM accounts WHERE jid = ?1")?
        .query_row([jid], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Runs one statement without parameters through the statement cache: the writer runs
/// BEGIN/SAVEPOINT/RELEASE/COMMIT for every batch and op, and parsing them each time showed in
/// profiles.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn secret_cols(s: &ScramSecret) -> (Vec<u8>, i64, Vec<u8>, Vec<u8>) {
    (
        s.salt.clone(),
        i64::from(s.iterations),
        s.stored_key.clone(),
        s.server_key.clone(),
    )
}

fn secret_from(
    salt: Vec<u8>,
    iter: i64,
    stored: Vec<u8>,
    server: Vec<u8>,
) -> rusqlite::Result<ScramSecret> {
    let iterations =
        u32::try_from(iter).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, iter))?;
    Ok(ScramSecret {
        salt,
        iterations,
        stored_key: stored,
        server_key: server,
    })
}

fn write_credentials(conn: &Connection, jid: &str, creds: &Credentials) -> Result<usize> {
    let (s1_salt, s1_iter, s1_stored, s1_server) = match &creds.scram_sha1 {
        Some(s) => {
            let (a, b, c, d) = secret_cols(s);
            (Some(a), Some(b), Some(c), Some(d))
        }
        None => (None, None, None, None),
    };
    let (salt, iter, stored, server) = secret_cols(&creds.scram_sha256);
    Ok(conn.execute(
        "UPDATE accounts SET sha1_salt = ?2, sha1_iter = ?3, sha1_stored = ?4, sha1_server = ?5,
             sha256_salt = ?6, sha256_iter = ?7, sha256_stored = ?8, sha256_server = ?9
         WHERE jid = ?1",
        params![
            jid, s1_salt, s1_iter, s1_stored, s1_server, salt, iter, stored, server
        ],
    )?)
}

fn read_item(conn: &Connection, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
    let row = conn
        .query_row(
            "SELECT name, subscription, ask_out, pending_in FROM roster_items
             WHERE owner = ?1 AND contact = ?2",
            [owner, contact],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((name, sub, ask_out, pending_in)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT name FROM roster_groups WHERE owner = ?1 AND contact = ?2 ORDER BY pos",
    )?;
    let groups = stmt
        .query_map([owner, contact], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(RosterItem {
        jid: contact.to_owned(),
        name,
        subscription: subscription(sub)?,
        ask_out,
        pending_in,
        groups,
    }))
}

fn subscription(v: i64) -> Result<Subscription> {
    Subscription::from_i64(v)
        .ok_or_else(|| StoreError::Backend(format!("invalid subscription value {v} in database")))
}

fn roster_version(conn: &Connection, owner: &str) -> Result<u64> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT version FROM roster_versions WHERE owner = ?1",
            [owner],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0) as u64)
}

fn bump_roster_version(conn: &Connection, owner: &str) -> Result<u64> {
    let v: i64 = conn.query_row(
        "INSERT INTO roster_versions (owner, version) VALUES (?1, 1)
         ON CONFLICT(owner) DO UPDATE SET version = version + 1
         RETURNING version",
        [owner],
        |r| r.get(0),
    )?;
    Ok(v as u64)
}

fn delete_item(conn: &Connection, owner: &str, contact: &str) -> Result<bool> {
    conn.execute(
        "DELETE FROM roster_groups WHERE owner = ?1 AND contact = ?2",
        [owner, contact],
    )?;
    Ok(conn.execute(
        "DELETE FROM roster_items WHERE owner = ?1 AND contact = ?2",
        [owner, contact],
    )? > 0)
}

fn count_offline(conn: &Connection, owner: &str) -> Result<usize> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM offline WHERE owner = ?1")?
        .query_row([owner], |r| r.get(0))?;
    Ok(n as usize)
}

// ---------------------------------------------------------------------------

impl AccountStore for SqliteStore {
    fn create_account(&self, jid: &str, creds: &Credentials) -> Result<()> {
        let jid = jid.to_owned();
        let creds = creds.clone();
        self.write(move |c| {
            let inserted = c.execute(
                "INSERT INTO accounts (jid, domain, sha256_salt, sha256_iter, sha256_stored, sha256_server)
                 VALUES (?1, ?2, x'', 0, x'', x'') ON CONFLICT(jid) DO NOTHING",
                [&jid, domain_of(&jid)],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists(jid));
            }
            write_credentials(c, &jid, &creds)?;
            Ok(())
        })
    }

    fn remove_account(&self, jid: &str) -> Result<()> {
        let jid = jid.to_owned();
        self.write(move |c| {
            forget_accounts();
            if c.execute("DELETE FROM accounts WHERE jid = ?1", [&jid])? == 0 {
                return Err(StoreError::NotFound(jid));
            }
            c.execute("DELETE FROM roster_groups WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM roster_items WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM offline WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM pep_items WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM pep_nodes WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM vcards WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM private_xml WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM push_registrations WHERE owner = ?1", [&jid])?;
            if c.execute("DELETE FROM consent WHERE owner = ?1", [&jid])? > 0 {
                c.execute("UPDATE consent_version SET v = v + 1", [])?;
            }
            c.execute("DELETE FROM blocklist WHERE owner = ?1", [&jid])?;
            c.execute("DELETE FROM abuse_reports WHERE reporter = ?1", [&jid])?;
            archive_delete_owner(c, &jid)?;
            c.execute("DELETE FROM archive_prefs WHERE owner = ?1", [&jid])?;
            Ok(())
        })
    }

    fn set_credentials(&self, jid: &str, creds: &Credentials) -> Result<()> {
        let jid = jid.to_owned();
        let creds = creds.clone();
        self.write(move |c| {
            if write_credentials(c, &jid, &creds)? == 0 {
                return Err(StoreError::NotFound(jid));
            }
            Ok(())
        })
    }

    fn credentials(&self, jid: &str) -> Result<Option<Credentials>> {
        let jid = jid.to_owned();
        self.read(move |c| {
            let creds = c
                .query_row(
                    "SELECT sha1_salt, sha1_iter, sha1_stored, sha1_server,
                            sha256_salt, sha256_iter, sha256_stored, sha256_server
                     FROM accounts WHERE jid = ?1",
                    [&jid],
                    |r| {
                        let sha1 = match (
                            r.get::<_, Option<Vec<u8>>>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                            r.get::<_, Option<Vec<u8>>>(3)?,
                        ) {
                            (Some(a), Some(b), Some(c), Some(d)) => Some(secret_from(a, b, c, d)?),
                            _ => None,
                        };
                        let sha256 = secret_from(r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)?;
                        Ok(Credentials {
                            scram_sha1: sha1,
                            scram_sha256: sha256,
                        })
                    },
                )
                .optional()?;
            Ok(creds)
        })
    }

    fn account_exists(&self, jid: &str) -> Result<bool> {
        let jid = jid.to_owned();
        self.read(move |c| exists(c, &jid))
    }

    fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        let domain = domain.map(str::to_owned);
        self.read(move |c| {
            let v = match &domain {
                Some(d) => {
                    let mut s = c.prepare_cached(
                        "SELECT jid FROM accounts WHERE domain = ?1 ORDER BY jid",
                    )?;
                    s.query_map([d], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?
                }
                None => {
                    let mut s = c.prepare_cached("SELECT jid FROM accounts ORDER BY jid")?;
                    s.query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?
                }
            };
            Ok(v)
        })
    }
}

impl RosterStore for SqliteStore {
    fn roster(&self, owner: &str) -> Result<(u64, Vec<RosterItem>)> {
        let owner = owner.to_owned();
        self.read(move |c| {
            // One read transaction: version and items form a consistent snapshot.
            let own_txn = c.is_autocommit();
            if own_txn {
                c.execute_batch("BEGIN")?;
            }
            let result = (|| {
                let version = roster_version(c, &owner)?;
                let contacts = {
                    let mut s = c.prepare_cached(
                        "SELECT contact FROM roster_items WHERE owner = ?1 ORDER BY contact",
                    )?;
                    s.query_map([&owner], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                };
                let mut items = Vec::with_capacity(contacts.len());
                for contact in contacts {
                    if let Some(item) = read_item(c, &owner, &contact)? {
                        items.push(item);
                    }
                }
                Ok((version, items))
            })();
            // The in-memory variant runs this inside the writer's batch
            // transaction, which is already a snapshot.
            if own_txn {
                c.execute_batch("COMMIT")?;
            }
            result
        })
    }

    fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
        let owner = owner.to_owned();
        let contact = contact.to_owned();
        self.read(move |c| read_item(c, &owner, &contact))
    }

    fn roster_set(&self, owner: &str, item: &RosterItem) -> Result<u64> {
        let owner = owner.to_owned();
        let item = item.clone();
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            delete_item(c, &owner, &item.jid)?;
            c.execute(
                "INSERT INTO roster_items (owner, contact, name, subscription, ask_out, pending_in)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    owner,
                    item.jid,
                    item.name,
                    item.subscription.to_i64(),
                    item.ask_out,
                    item.pending_in
                ],
            )?;
            {
                let mut s = c.prepare_cached(
                    "INSERT INTO roster_groups (owner, contact, pos, name) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (pos, g) in item.groups.iter().enumerate() {
                    s.execute(params![owner, item.jid, pos as i64, g])?;
                }
            }
            bump_roster_version(c, &owner)
        })
    }

    fn roster_remove(&self, owner: &str, contact: &str) -> Result<u64> {
        let owner = owner.to_owned();
        let contact = contact.to_owned();
        self.write(move |c| {
            if delete_item(c, &owner, &contact)? {
                bump_roster_version(c, &owner)
            } else {
                roster_version(c, &owner)
            }
        })
    }
}

impl OfflineStore for SqliteStore {
    fn offline_push(&self, owner: &str, stanza: &str, stamp_ms: i64, limit: usize) -> Result<i64> {
        let owner = owner.to_owned();
        let stanza = stanza.to_owned();
        let ids = Arc::clone(&self.offline_ids);
        self.write(move |c| offline_push(c, &ids, None, owner, &stanza, stamp_ms, limit))
    }

    fn offline_fetch_after(
        &self,
        owner: &str,
        after: i64,
        max: usize,
    ) -> Result<Vec<OfflineMessage>> {
        let owner = owner.to_owned();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT id, stanza, stamp_ms FROM offline WHERE owner = ?1 AND id > ?2
                 ORDER BY id LIMIT ?3",
            )?;
            let v = s
                .query_map(params![owner, after, max], |r| {
                    Ok(OfflineMessage {
                        id: r.get(0)?,
                        stanza: r.get(1)?,
                        stamp_ms: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })
    }

    fn offline_delete(&self, owner: &str, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let owner = owner.to_owned();
        let ids = ids.to_vec();
        // After the held copies (a row it names may be one): this delete does not cancel them
        // as a queued one does.
        self.write_after_held(move |c| offline_delete(c, &owner, &ids))
    }

    fn offline_kept(&self, owner: &str, ids: &[i64]) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let owner = owner.to_owned();
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut s = c.prepare_cached("SELECT 1 FROM offline WHERE owner = ?1 AND id = ?2")?;
            let mut kept = Vec::new();
            for id in ids {
                if s.exists(params![owner, id])? {
                    kept.push(id);
                }
            }
            Ok(kept)
        })
    }

    fn offline_count(&self, owner: &str) -> Result<usize> {
        let owner = owner.to_owned();
        self.read(move |c| count_offline(c, &owner))
    }

    fn offline_reserve_id(&self) -> Result<i64> {
        Ok(self.offline_ids.next())
    }
}

/// Stores a message for `owner` under `id`, or the next id when none was reserved.
fn offline_push(
    c: &Connection,
    ids: &OfflineIds,
    id: Option<i64>,
    owner: String,
    stanza: &str,
    stamp_ms: i64,
    limit: usize,
) -> Result<i64> {
    if let Some(id) = id
        && !ids.take(id)
    {
        // Deleted before it was written.
        return Ok(id);
    }
    if !account_known(c, &owner)? {
        return Err(StoreError::NotFound(owner));
    }
    if limit != usize::MAX && count_offline(c, &owner)? >= limit {
        return Err(StoreError::QuotaExceeded {
            account: owner,
            limit,
        });
    }
    let id = id.unwrap_or_else(|| ids.next());
    c.prepare_cached("INSERT INTO offline (id, owner, stanza, stamp_ms) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![id, owner, stanza, stamp_ms])?;
    Ok(id)
}

fn offline_delete(c: &Connection, owner: &str, ids: &[i64]) -> Result<()> {
    let mut s = c.prepare_cached("DELETE FROM offline WHERE owner = ?1 AND id = ?2")?;
    for id in ids {
        s.execute(params![owner, id])?;
    }
    Ok(())
}

/// Appends an archived copy to `archive_log` (migration 6), where queries find it
/// ([`logged_copies`]) until the writer merges it into `archive` ([`merge_archive_log`]). A
/// taken id (in the archive or still in the log) is refused. A stamp older than the owner's
/// newest is stored as the newest (see [`crate::ArchiveStore::archive_append`]).
fn archive_append(c: &Connection, owner: String, m: &crate::ArchivedMessage) -> Result<()> {
    archive_append_shared(c, owner, m, None).map(|_| ())
}

/// [`archive_append`], whose stanza is already stored in this transaction under `shared`
/// when given (a copy appended just before in the same batch, with the same stanza: the
/// row's count of copies goes up instead of a second row being written). The stanza's row.
fn archive_append_shared(
    c: &Connection,
    owner: String,
    m: &crate::ArchivedMessage,
    shared: Option<i64>,
) -> Result<i64> {
    if !account_known(c, &owner)? {
        return Err(StoreError::NotFound(owner));
    }
    if ARCHIVE_LOG.with_borrow(|l| l.contains(&owner, &m.id))
        || archive_key(c, &owner, &m.id)?.is_some()
    {
        return Err(StoreError::AlreadyExists(m.id.clone()));
    }
    let stamp_ms = newest_stamp(c, &owner)?.map_or(m.stamp_ms, |n| n.max(m.stamp_ms));
    let content = match shared {
        Some(cid) => {
            c.prepare_cached("UPDATE archive_content SET refs = refs + 1 WHERE cid = ?1")?
                .execute([cid])?;
            cid
        }
        None => {
            c.prepare_cached("INSERT INTO archive_content (stanza, refs) VALUES (?1, 1)")?
                .execute([&m.stanza])?;
            c.last_insert_rowid()
        }
    };
    let logged = c
        .prepare_cached(
            "INSERT INTO archive_log (owner, id, with_bare, with_full, stamp_ms, content)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![
                owner,
                m.id,
                m.with_bare,
                m.with_full,
                stamp_ms,
                content
            ])
        });
    if let Err(e) = logged {
        // Two statements, and a batch op has no savepoint (see `run_op`): undo the first.
        let undo = match shared {
            Some(_) => "UPDATE archive_content SET refs = refs - 1 WHERE cid = ?1",
            None => "DELETE FROM archive_content WHERE cid = ?1",
        };
        let _ = c
            .prepare_cached(undo)
            .and_then(|mut st| st.execute([content]));
        return Err(e.into());
    }
    ARCHIVE_LOG.with_borrow_mut(|l| l.insert(&owner, &m.id, stamp_ms));
    remember_newest_stamp(&owner, stamp_ms);
    Ok(content)
}

/// Takes one reference to each stanza in `archive_content` that `owner`'s copies (merged,
/// in the log, or both halfway through a merge round) refer to, and deletes the stanzas no
/// copy refers to any more (before the copies themselves go).
fn release_owner_content(c: &Connection, owner: &str) -> Result<()> {
    // Each stanza once: a copy in both tables is one copy. (Two copies of one owner never
    // share a stanza: they are the two sides of one message, which have two owners.)
    const OWNED: &str = "(SELECT content FROM archive WHERE owner = ?1
                          UNION SELECT content FROM archive_log WHERE owner = ?1)";
    c.execute(
        &format!("UPDATE archive_content SET refs = refs - 1 WHERE cid IN {OWNED}"),
        [owner],
    )?;
    c.execute(
        &format!("DELETE FROM archive_content WHERE refs <= 0 AND cid IN {OWNED}"),
        [owner],
    )?;
    Ok(())
}

/// Deletes `owner`'s whole archive, merged or not (writer thread).
fn archive_delete_owner(c: &Connection, owner: &str) -> Result<()> {
    // The stanzas first, found through the rows that refer to them (`merge_round` only
    // holds copies that are still in the log).
    release_owner_content(c, owner)?;
    c.execute("DELETE FROM archive WHERE owner = ?1", [owner])?;
    c.execute("DELETE FROM archive_with_counts WHERE owner = ?1", [owner])?;
    c.execute("DELETE FROM archive_log WHERE owner = ?1", [owner])?;
    // And from a merge round in progress, which would put them back otherwise.
    c.execute("DELETE FROM temp.merge_round WHERE owner = ?1", [owner])?;
    ARCHIVE_LOG.with_borrow_mut(|l| l.remove_owner(owner));
    NEWEST_STAMPS.with_borrow_mut(|n| n.remove(owner));
    Ok(())
}

/// Deletes up to `max` merged archive copies archived before `before_ms`, oldest first:
/// their partners' counts go down, their stanzas lose a reference each (and go with the
/// last one). Returns how many copies went.
fn archive_expire_round(c: &Connection, before_ms: i64, max: usize) -> Result<usize> {
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS expire_round (
             seq        INTEGER PRIMARY KEY,
             owner      TEXT NOT NULL,
             with_bare  TEXT NOT NULL,
             content    INTEGER NOT NULL
         );
         DELETE FROM temp.expire_round;",
    )?;
    let n = c.execute(
        "INSERT INTO temp.expire_round (seq, owner, with_bare, content)
         SELECT seq, owner, with_bare, content FROM archive
         WHERE stamp_ms < ?1 ORDER BY seq LIMIT ?2",
        rusqlite::params![before_ms, max as i64],
    )?;
    if n == 0 {
        return Ok(0);
    }
    c.execute_batch(
        "UPDATE archive_with_counts
         SET n = n - (SELECT COUNT(*) FROM temp.expire_round e
                      WHERE e.owner = archive_with_counts.owner
                        AND e.with_bare = archive_with_counts.with_bare)
         WHERE (owner, with_bare) IN (SELECT owner, with_bare FROM temp.expire_round);
         DELETE FROM archive_with_counts
         WHERE n <= 0 AND (owner, with_bare) IN (SELECT owner, with_bare FROM temp.expire_round);
         UPDATE archive_content
         SET refs = refs - (SELECT COUNT(*) FROM temp.expire_round e
                            WHERE e.content = archive_content.cid)
         WHERE cid IN (SELECT content FROM temp.expire_round);
         DELETE FROM archive_content
         WHERE refs <= 0 AND cid IN (SELECT content FROM temp.expire_round);
         DELETE FROM archive WHERE seq IN (SELECT seq FROM temp.expire_round);
         DELETE FROM temp.expire_round;",
    )?;
    Ok(n)
}

/// The archive copy the previous op of a batch appended ([`run_op`]).
struct LastCopy {
    owner: String,
    stanza: String,
    /// Its stanza's row in `archive_content`.
    cid: i64,
}

/// Runs one op of a batch so that its failure undoes only itself (a batch job has no
/// savepoint of its own): a push writes with a single INSERT (after reads), which SQLite
/// undoes by itself when it fails; an archive append with two (its stanza, then the log row,
/// [`archive_append`]), and deletes the first when the second fails; a delete of several
/// rows runs in a savepoint.
///
/// `last` is the previous op's owner, archived stanza and its row, if the previous op
/// archived a copy: an archive copy of another owner with the same stanza shares that row
/// ([`archive_append_shared`]; never two copies of one owner, which a deletion of that
/// owner's archive would count once).
fn run_op(
    c: &Connection,
    ids: &OfflineIds,
    op: WriteOp,
    last: &mut Option<LastCopy>,
) -> WriteOutcome {
    let previous = last.take();
    match op {
        WriteOp::Archive { owner, msg } => {
            let shared = previous
                .filter(|p| p.stanza == msg.stanza && p.owner != owner)
                .map(|p| p.cid);
            let cid = archive_append_shared(c, owner.clone(), &msg, shared)?;
            *last = Some(LastCopy {
                owner,
                stanza: msg.stanza,
                cid,
            });
            Ok(None)
        }
        WriteOp::OfflinePush {
            owner,
            stanza,
            stamp_ms,
            limit,
            id,
        } => offline_push(c, ids, id, owner, &stanza, stamp_ms, limit).map(Some),
        WriteOp::OfflineDelete { owner, ids } => {
            exec(c, "SAVEPOINT op")?;
            let r = offline_delete(c, &owner, &ids).map(|()| None);
            if r.is_err() {
                exec(c, "ROLLBACK TO op")?;
            }
            exec(c, "RELEASE op")?;
            r
        }
    }
}

impl BatchWrite for SqliteStore {
    fn write_batch(&self, ops: Vec<WriteOp>, done: WriteDone) {
        self.queue_batch(ops, done, false);
    }

    fn write_batch_lazy(&self, ops: Vec<WriteOp>, done: WriteDone) {
        self.queue_batch(ops, done, true);
    }
}

impl SqliteStore {
    fn queue_batch(&self, mut ops: Vec<WriteOp>, done: WriteDone, lazy: bool) {
        for emptied in self.offline_ids.cancel(&mut ops) {
            emptied.answer_cancelled();
        }
        if lazy
            && !ops.is_empty()
            && ops
                .iter()
                .all(|op| matches!(op, WriteOp::OfflineDelete { ids, .. } if ids.is_empty()))
        {
            // Deletes that cancelled queued rows and have nothing left to delete: nothing for
            // the writer (nobody waits, so nothing needs to be ordered behind the queue).
            done(ops.iter().map(|_| Ok(None)).collect());
            return;
        }
        let held = lazy
            .then(|| {
                ops.iter()
                    .map(|op| match op {
                        WriteOp::OfflinePush { id: Some(id), .. } => Some(*id),
                        _ => None,
                    })
                    .collect::<Option<Vec<i64>>>()
            })
            .flatten()
            .filter(|ids| !ids.is_empty());
        let n = ops.len();
        // `done` is shared between the reply (the normal path), the error path below, where
        // the job never reached the writer, and for held copies the delete that cancels them.
        let done = Arc::new(Mutex::new(Some(done)));
        let on_reply = Arc::clone(&done);
        let held_batch = held.as_ref().map(|ids| {
            Arc::new(HeldBatch {
                ids: ids.clone(),
                ops: Mutex::new(None),
                done: Arc::clone(&done),
            })
        });
        self.offline_ids.queue(&ops, held_batch.as_ref());
        // The batch's archive copies count as queued for their owners until the reply (after
        // the commit, or when the job is dropped unrun): see `read_archive`.
        let queued = self.queued.hold(
            ops.iter()
                .filter_map(|op| match op {
                    WriteOp::Archive { owner, .. } => Some(owner.clone()),
                    _ => None,
                })
                .collect(),
        );
        let reply = Reply::Callback(Box::new(move |r: Result<Vec<WriteOutcome>>| {
            drop(queued);
            if let Some(done) = lock(&on_reply).take() {
                done(match r {
                    Ok(outcomes) => outcomes,
                    Err(e) => failed_outcomes(n, &e),
                });
            }
        }));
        let ids = Arc::clone(&self.offline_ids);
        // A held batch's ops wait in it, where a cancel can drop them (a delete of these rows
        // is only sent after they were delivered, after this returns; one that came sooner
        // would find no ops, answer, and the rows, cancelled, would still not be written).
        let mut ops = Some(ops);
        if let Some(b) = &held_batch {
            *lock(&b.ops) = ops.take();
        }
        let job = move |c: &Connection| {
            let ops = match &held_batch {
                Some(b) => lock(&b.ops).take(),
                None => ops,
            };
            let Some(ops) = ops else {
                // Every row was cancelled and the caller answered: the ids are forgotten,
                // and the answer, should the reply still find the caller, is the same.
                let b = held_batch
                    .as_ref()
                    .expect("only a held batch gives its ops up");
                for id in &b.ids {
                    ids.take(*id);
                }
                return Ok(b.cancelled_outcomes());
            };
            let mut last = None;
            Ok(ops
                .into_iter()
                .map(|op| run_op(c, &ids, op, &mut last))
                .collect())
        };
        // No savepoint around the job: it returns `Ok` whatever its ops do, and `run_op` keeps
        // each op's failure to itself.
        let barrier = !lazy && n == 0;
        if let Err(e) = self.enqueue_job(job, false, lazy, held, barrier, reply)
            && let Some(done) = lock(&done).take()
        {
            done(failed_outcomes(n, &e));
        }
    }
}

fn failed_outcomes(n: usize, e: &StoreError) -> Vec<WriteOutcome> {
    (0..n)
        .map(|_| Err(StoreError::Backend(e.to_string())))
        .collect()
}

fn read_node(conn: &Connection, owner: &str, node: &str) -> Result<Option<PepNodeConfig>> {
    let row = conn
        .query_row(
            "SELECT access_model, max_items, persist_items FROM pep_nodes
             WHERE owner = ?1 AND node = ?2",
            [owner, node],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(row.map(|(access_model, max, persist_items)| PepNodeConfig {
        access_model,
        max_items: max.map(|m| m.clamp(0, i64::from(u32::MAX)) as u32),
        persist_items,
    }))
}

/// Drops the oldest items of a node beyond `keep`.
fn prune_items(conn: &Connection, owner: &str, node: &str, keep: usize) -> Result<()> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    conn.execute(
        "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND seq NOT IN
           (SELECT seq FROM pep_items WHERE owner = ?1 AND node = ?2 ORDER BY seq DESC LIMIT ?3)",
        params![owner, node, keep],
    )?;
    Ok(())
}

impl PepStore for SqliteStore {
    fn pep_node(&self, owner: &str, node: &str) -> Result<Option<PepNodeConfig>> {
        let (owner, node) = (owner.to_owned(), node.to_owned());
        self.read(move |c| read_node(c, &owner, &node))
    }

    fn pep_nodes(&self, owner: &str) -> Result<Vec<String>> {
        let owner = owner.to_owned();
        self.read(move |c| {
            let mut s =
                c.prepare_cached("SELECT node FROM pep_nodes WHERE owner = ?1 ORDER BY node")?;
            Ok(s.query_map([&owner], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?)
        })
    }

    fn pep_configure(
        &self,
        owner: &str,
        node: &str,
        config: &PepNodeConfig,
        max_nodes: usize,
        limit_items: usize,
    ) -> Result<()> {
        let (owner, node, config) = (owner.to_owned(), node.to_owned(), config.clone());
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            if read_node(c, &owner, &node)?.is_none() {
                let n: i64 = c.query_row(
                    "SELECT COUNT(*) FROM pep_nodes WHERE owner = ?1",
                    [&owner],
                    |r| r.get(0),
                )?;
                if n as usize >= max_nodes {
                    return Err(StoreError::QuotaExceeded {
                        account: owner,
                        limit: max_nodes,
                    });
                }
            }
            c.execute(
                "INSERT INTO pep_nodes (owner, node, access_model, max_items, persist_items)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(owner, node) DO UPDATE SET access_model = ?3, max_items = ?4,
                     persist_items = ?5",
                params![
                    owner,
                    node,
                    config.access_model,
                    config.max_items.map(i64::from),
                    config.persist_items
                ],
            )?;
            prune_items(c, &owner, &node, effective_max(&config, limit_items))
        })
    }

    fn pep_delete_node(&self, owner: &str, node: &str) -> Result<bool> {
        let (owner, node) = (owner.to_owned(), node.to_owned());
        self.write(move |c| {
            c.execute(
                "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2",
                [&owner, &node],
            )?;
            Ok(c.execute(
                "DELETE FROM pep_nodes WHERE owner = ?1 AND node = ?2",
                [&owner, &node],
            )? > 0)
        })
    }

    fn pep_publish(&self, owner: &str, node: &str, item: &PepItem, keep: usize) -> Result<()> {
        let (owner, node, item) = (owner.to_owned(), node.to_owned(), item.clone());
        self.write(move |c| {
            if read_node(c, &owner, &node)?.is_none() {
                return Err(StoreError::NotFound(format!("{owner} node {node}")));
            }
            c.execute(
                "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND item_id = ?3",
                [&owner, &node, &item.id],
            )?;
            c.execute(
                "INSERT INTO pep_items (owner, node, item_id, payload, stamp_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![owner, node, item.id, item.payload, item.stamp_ms],
            )?;
            prune_items(c, &owner, &node, keep)
        })
    }

    fn pep_items(
        &self,
        owner: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<usize>,
    ) -> Result<Vec<PepItem>> {
        let (owner, node) = (owner.to_owned(), node.to_owned());
        let ids = ids.map(<[String]>::to_vec);
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT item_id, payload, stamp_ms FROM pep_items
                 WHERE owner = ?1 AND node = ?2 ORDER BY seq",
            )?;
            let mut v = s
                .query_map([&owner, &node], |r| {
                    Ok(PepItem {
                        id: r.get(0)?,
                        payload: r.get(1)?,
                        stamp_ms: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if let Some(ids) = &ids {
                v.retain(|i| ids.contains(&i.id));
            }
            if let Some(m) = max
                && v.len() > m
            {
                v.drain(..v.len() - m);
            }
            Ok(v)
        })
    }

    fn pep_retract(&self, owner: &str, node: &str, id: &str) -> Result<bool> {
        let (owner, node, id) = (owner.to_owned(), node.to_owned(), id.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND item_id = ?3",
                [&owner, &node, &id],
            )? > 0)
        })
    }
}

impl VcardStore for SqliteStore {
    fn vcard(&self, owner: &str) -> Result<Option<String>> {
        let owner = owner.to_owned();
        self.read(move |c| {
            Ok(
                c.query_row("SELECT vcard FROM vcards WHERE owner = ?1", [&owner], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    fn set_vcard(&self, owner: &str, vcard: Option<&str>) -> Result<()> {
        let owner = owner.to_owned();
        let vcard = vcard.map(str::to_owned);
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            match vcard {
                Some(v) => c.execute(
                    "INSERT INTO vcards (owner, vcard) VALUES (?1, ?2)
                     ON CONFLICT(owner) DO UPDATE SET vcard = ?2",
                    [&owner, &v],
                )?,
                None => c.execute("DELETE FROM vcards WHERE owner = ?1", [&owner])?,
            };
            Ok(())
        })
    }
}

impl PrivateStore for SqliteStore {
    fn private_xml(&self, owner: &str, ns: &str) -> Result<Option<String>> {
        let (owner, ns) = (owner.to_owned(), ns.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT xml FROM private_xml WHERE owner = ?1 AND ns = ?2",
                [&owner, &ns],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn set_private_xml(
        &self,
        owner: &str,
        writes: &[(String, Option<String>)],
        max_namespaces: usize,
    ) -> Result<()> {
        let owner = owner.to_owned();
        let writes = writes.to_vec();
        // `write` runs the job in a savepoint of its own: an error rolls all of it back.
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            for (ns, xml) in &writes {
                match xml {
                    Some(x) => c.execute(
                        "INSERT INTO private_xml (owner, ns, xml) VALUES (?1, ?2, ?3)
                         ON CONFLICT(owner, ns) DO UPDATE SET xml = ?3",
                        [&owner, ns, x],
                    )?,
                    None => c.execute(
                        "DELETE FROM private_xml WHERE owner = ?1 AND ns = ?2",
                        [&owner, ns],
                    )?,
                };
            }
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM private_xml WHERE owner = ?1",
                [&owner],
                |r| r.get(0),
            )?;
            if n as usize > max_namespaces {
                return Err(StoreError::QuotaExceeded {
                    account: owner,
                    limit: max_namespaces,
                });
            }
            Ok(())
        })
    }
}

impl PushStore for SqliteStore {
    fn push_enable(&self, owner: &str, reg: &PushRegistration, max: usize) -> Result<()> {
        let owner = owner.to_owned();
        let reg = reg.clone();
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            let updated = c.execute(
                "UPDATE push_registrations SET options = ?4
                 WHERE owner = ?1 AND jid = ?2 AND node = ?3",
                rusqlite::params![owner, reg.jid, reg.node, reg.options],
            )?;
            if updated > 0 {
                return Ok(());
            }
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM push_registrations WHERE owner = ?1",
                [&owner],
                |r| r.get(0),
            )?;
            if n as usize >= max {
                return Err(StoreError::QuotaExceeded {
                    account: owner,
                    limit: max,
                });
            }
            c.execute(
                "INSERT INTO push_registrations (owner, jid, node, options) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![owner, reg.jid, reg.node, reg.options],
            )?;
            Ok(())
        })
    }

    fn push_disable(&self, owner: &str, jid: &str, node: Option<&str>) -> Result<usize> {
        let (owner, jid, node) = (owner.to_owned(), jid.to_owned(), node.map(str::to_owned));
        self.write(move |c| {
            Ok(match node {
                Some(n) => c.execute(
                    "DELETE FROM push_registrations WHERE owner = ?1 AND jid = ?2 AND node = ?3",
                    [&owner, &jid, &n],
                )?,
                None => c.execute(
                    "DELETE FROM push_registrations WHERE owner = ?1 AND jid = ?2",
                    [&owner, &jid],
                )?,
            })
        })
    }

    fn push_registrations(&self, owner: &str) -> Result<Vec<PushRegistration>> {
        let owner = owner.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT jid, node, options FROM push_registrations WHERE owner = ?1 ORDER BY seq",
            )?;
            let rows = st.query_map([&owner], |r| {
                Ok(PushRegistration {
                    jid: r.get(0)?,
                    node: r.get(1)?,
                    options: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }
}

impl crate::BlockingStore for SqliteStore {
    fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        let owner = owner.to_owned();
        self.read(move |c| {
            let mut s =
                c.prepare_cached("SELECT jid FROM blocklist WHERE owner = ?1 ORDER BY jid")?;
            let v = s
                .query_map([&owner], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(v)
        })
    }

    fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        let owner = owner.to_owned();
        let jids = jids.to_vec();
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            let mut s = c.prepare_cached(
                "INSERT INTO blocklist (owner, jid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?;
            for j in &jids {
                s.execute(params![owner, j])?;
            }
            Ok(())
        })
    }

    fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        let owner = owner.to_owned();
        let jids = jids.to_vec();
        self.write(move |c| {
            let mut s = c.prepare_cached("DELETE FROM blocklist WHERE owner = ?1 AND jid = ?2")?;
            for j in &jids {
                s.execute(params![owner, j])?;
            }
            Ok(())
        })
    }

    fn unblock_all(&self, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |c| {
            c.execute("DELETE FROM blocklist WHERE owner = ?1", [&owner])?;
            Ok(())
        })
    }
}

impl Store for SqliteStore {}

/// The WHERE clause of an archive query's filters but time (`owner`, and `with` if given:
/// ?1 and ?2) and its parameters. The time filters and the page's RSM ids are bounds on
/// `(stamp_ms, seq)`, the archive order ([`ArchiveRange`]).
fn archive_filter(owner: &str, q: &crate::ArchiveQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = "owner = ?1".to_owned();
    let mut p = vec![Value::Text(owner.to_owned())];
    if let Some(w) = &q.with {
        p.push(Value::Text(w.clone()));
        let col = if w.contains('/') {
            "with_full"
        } else {
            "with_bare"
        };
        sql.push_str(&format!(" AND {col} = ?2"));
    }
    if !q.with_domains.is_empty() {
        // The partner's domain: what follows its '@', or all of it (a domain JID). No index
        // serves this; it reads the owner's range (a third-party section's query).
        let first = p.len() + 1;
        let marks: Vec<String> = (first..first + q.with_domains.len())
            .map(|i| format!("?{i}"))
            .collect();
        sql.push_str(&format!(
            " AND substr(with_bare, instr(with_bare, '@') + 1) IN ({})",
            marks.join(", ")
        ));
        p.extend(q.with_domains.iter().cloned().map(Value::Text));
    }
    (sql, p)
}

/// An interval of an owner's archive in its order, `(stamp_ms, seq)`, both ends included:
/// what `archive_by_time` and `archive_by_with` (migration 8) read as one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ArchiveRange {
    lo: (i64, i64),
    hi: (i64, i64),
}

impl ArchiveRange {
    /// The query's time filters (`start`, `end`: inclusive).
    fn of_times(q: &crate::ArchiveQuery) -> Self {
        ArchiveRange {
            lo: (q.start.unwrap_or(i64::MIN), i64::MIN),
            hi: (q.end.unwrap_or(i64::MAX), i64::MAX),
        }
    }

    /// Only what sorts after `key`.
    fn after(mut self, (stamp, seq): (i64, i64)) -> Self {
        let next = match seq.checked_add(1) {
            Some(seq) => (stamp, seq),
            None => (stamp.saturating_add(1), i64::MIN),
        };
        self.lo = self.lo.max(next);
        self
    }

    /// Only what sorts before `key`.
    fn before(mut self, (stamp, seq): (i64, i64)) -> Self {
        let prev = match seq.checked_sub(1) {
            Some(seq) => (stamp, seq),
            None => (stamp.saturating_sub(1), i64::MAX),
        };
        self.hi = self.hi.min(prev);
        self
    }

    const FIRST: (i64, i64) = (i64::MIN, i64::MIN);
    const LAST: (i64, i64) = (i64::MAX, i64::MAX);

    fn is_everything(&self) -> bool {
        self.lo == Self::FIRST && self.hi == Self::LAST
    }

    /// ` AND (stamp_ms, seq) >= (…) AND (stamp_ms, seq) <= (…)`, each only if it bounds
    /// something (a row-value comparison costs more per index entry than none), with their
    /// parameters appended to `p`.
    fn push_sql(&self, sql: &mut String, p: &mut Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        for (bound, op, unbounded) in [(self.lo, ">=", Self::FIRST), (self.hi, "<=", Self::LAST)] {
            if bound != unbounded {
                let n = p.len();
                sql.push_str(&format!(
                    " AND (stamp_ms, seq) {op} (?{}, ?{})",
                    n + 1,
                    n + 2
                ));
                p.extend([Value::Integer(bound.0), Value::Integer(bound.1)]);
            }
        }
    }
}

/// The archive order of `owner`'s copy `id`: its `(stamp_ms, seq)`.
fn archive_key(c: &Connection, owner: &str, id: &str) -> Result<Option<(i64, i64)>> {
    Ok(
        c.prepare_cached("SELECT stamp_ms, seq FROM archive WHERE owner = ?1 AND id = ?2")?
            .query_row(params![owner, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// How many merged copies `owner`'s archive holds: the sum of its kept counts per partner
/// (migration 9's `archive_with_counts`, one range of its primary key).
fn owner_count(c: &Connection, owner: &str) -> Result<usize> {
    let n: i64 = c
        .prepare_cached("SELECT COALESCE(SUM(n), 0) FROM archive_with_counts WHERE owner = ?1")?
        .query_row([owner], |r| r.get(0))?;
    Ok(n as usize)
}

/// How many merged copies `owner`'s archive holds with the bare JID `with` (migration 9's
/// `archive_with_counts`).
fn owner_with_count(c: &Connection, owner: &str, with: &str) -> Result<usize> {
    let n: Option<i64> = c
        .prepare_cached("SELECT n FROM archive_with_counts WHERE owner = ?1 AND with_bare = ?2")?
        .query_row([owner, with], |r| r.get(0))
        .optional()?;
    Ok(n.unwrap_or(0) as usize)
}

fn count_where(c: &Connection, filter: &str, p: &[rusqlite::types::Value]) -> Result<usize> {
    let n: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM archive WHERE {filter}"),
        rusqlite::params_from_iter(p.iter()),
        |r| r.get(0),
    )?;
    Ok(n as usize)
}

/// `owner`'s copies still in `archive_log` (appended, not merged yet), in append order,
/// as the merge will move them: without an id the archive already holds or that came
/// earlier in the log (the merge keeps the first copy with an id). They all sort after
/// the owner's merged copies, and keep this order when merged ([`merge_archive_log`]).
/// The log has no index (what makes an append cheap, migration 6): this reads all of it,
/// about [`LOG_MERGE_ROWS`] copies or a second's worth, and during a merge round also the
/// copies the round has already put into `archive` (left out here).
fn logged_copies(c: &Connection, owner: &str) -> Result<Vec<crate::ArchivedMessage>> {
    let mut st = c.prepare_cached(
        "SELECT l.id, l.with_bare, l.with_full, l.stamp_ms, c.stanza
         FROM archive_log l JOIN archive_content c ON c.cid = l.content
         WHERE l.owner = ?1
           AND NOT EXISTS (SELECT 1 FROM archive a WHERE a.owner = ?1 AND a.id = l.id)
         ORDER BY l.seq",
    )?;
    let mut rows = st
        .query_map([owner], |r| {
            Ok(crate::ArchivedMessage {
                id: r.get(0)?,
                with_bare: r.get(1)?,
                with_full: r.get(2)?,
                stamp_ms: r.get(3)?,
                stanza: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.len() > 1 {
        let mut seen = std::collections::HashSet::new();
        rows.retain(|m| seen.insert(m.id.clone()));
    }
    Ok(rows)
}

/// Whether a copy matches a query's filters (`with`, `with_domains`, `start`, `end`), as
/// [`archive_filter`] and [`ArchiveRange::of_times`] select in SQL: the reference's rule.
fn archive_matches(q: &crate::ArchiveQuery, m: &crate::ArchivedMessage) -> bool {
    crate::archive::matches(m, q)
}

/// One page of `owner`'s archive: its merged copies (`archive`, by index ranges) followed
/// by those still in the log ([`logged_copies`]), read in the caller's transaction so that
/// a merge cannot move copies from one to the other in between.
fn query_archive(
    c: &Connection,
    owner: &str,
    q: &crate::ArchiveQuery,
) -> Result<Option<crate::ArchivePage>> {
    let log = logged_copies(c, owner)?;
    let in_log = |id: &str| log.iter().position(|m| m.id == id);
    // What of the merged copies (`None`: none of them) and of the log (`lo..hi`) the
    // page's RSM ids leave. Every logged copy sorts after every merged one.
    let times = ArchiveRange::of_times(q);
    let mut merged = Some(times);
    let (mut lo, mut hi) = (0, log.len());
    if let Some(id) = &q.after_id {
        match archive_key(c, owner, id)? {
            Some(key) => merged = merged.map(|r| r.after(key)),
            None => match in_log(id) {
                Some(i) => (merged, lo) = (None, i + 1),
                None => return Ok(None),
            },
        }
    }
    if let Some(id) = &q.before_id {
        match archive_key(c, owner, id)? {
            Some(key) => (merged, hi) = (merged.map(|r| r.before(key)), 0),
            None => match in_log(id) {
                Some(i) => hi = hi.min(i),
                None => return Ok(None),
            },
        }
    }
    let count =
        merged_count(c, owner, q, times)? + log.iter().filter(|m| archive_matches(q, m)).count();
    let backward = q.from_end || q.before_id.is_some();
    // One more than the page, to tell whether it is complete; in paging order.
    let limit = q.max.saturating_add(1);
    let logged = log
        .get(lo..hi.max(lo))
        .unwrap_or_default()
        .iter()
        .filter(|m| archive_matches(q, m))
        .cloned();
    let mut rows: Vec<crate::ArchivedMessage> = if backward {
        let mut rows: Vec<_> = logged.rev().take(limit).collect();
        if let (Some(range), true) = (merged, rows.len() < limit) {
            rows.extend(merged_page(c, owner, q, range, true, limit - rows.len())?);
        }
        rows
    } else {
        let mut rows = match merged {
            Some(range) => merged_page(c, owner, q, range, false, limit)?,
            None => Vec::new(),
        };
        let rest = limit - rows.len();
        rows.extend(logged.take(rest));
        rows
    };
    let complete = rows.len() <= q.max;
    rows.truncate(q.max);
    if backward {
        rows.reverse();
    }
    Ok(Some(crate::ArchivePage {
        messages: rows,
        complete,
        count,
        first_index: crate::archive::first_index_known(q),
    }))
}

/// How many of `owner`'s merged copies match `q`'s filters (`times` is theirs).
fn merged_count(
    c: &Connection,
    owner: &str,
    q: &crate::ArchiveQuery,
    times: ArchiveRange,
) -> Result<usize> {
    let bare_with = q.with.as_deref().filter(|w| !w.contains('/'));
    // The kept counts are per partner, not per partner's domain.
    let kept = times.is_everything() && q.with_domains.is_empty();
    match (q.with.as_deref(), bare_with, kept) {
        // No filter but the owner: the kept count.
        (None, _, true) => owner_count(c, owner),
        // No filter but the owner and a bare partner: kept too.
        (Some(_), Some(with), true) => owner_with_count(c, owner, with),
        // A range of an index for a filter by time and/or bare partner: it reads what
        // matches, not the archive.
        _ => {
            let (mut sql, mut p) = archive_filter(owner, q);
            times.push_sql(&mut sql, &mut p);
            count_where(c, &sql, &p)
        }
    }
}

/// Up to `limit` of `owner`'s merged copies matching `q`'s filters within `range`, in
/// archive order (`backward`: from the end, newest first).
fn merged_page(
    c: &Connection,
    owner: &str,
    q: &crate::ArchiveQuery,
    range: ArchiveRange,
    backward: bool,
    limit: usize,
) -> Result<Vec<crate::ArchivedMessage>> {
    use rusqlite::types::Value;
    let (mut sql, mut p) = archive_filter(owner, q);
    range.push_sql(&mut sql, &mut p);
    p.push(Value::Integer(limit.min(i64::MAX as usize) as i64));
    // The page's seqs are picked from an index alone (`archive_by_time`, or
    // `archive_by_with` for a query by bare partner: a range of either, in order; see
    // migration 8) and only then are their rows read.
    let dir = if backward { "DESC" } else { "ASC" };
    let query = format!(
        "SELECT a.id, a.with_bare, a.with_full, a.stamp_ms, c.stanza
         FROM archive a JOIN archive_content c ON c.cid = a.content
         WHERE a.seq IN (SELECT seq FROM archive WHERE {sql}
                         ORDER BY stamp_ms {dir}, seq {dir} LIMIT ?{})
         ORDER BY a.stamp_ms {dir}, a.seq {dir}",
        p.len()
    );
    let mut st = c.prepare(&query)?;
    let rows = st
        .query_map(rusqlite::params_from_iter(p.iter()), |r| {
            Ok(crate::ArchivedMessage {
                id: r.get(0)?,
                with_bare: r.get(1)?,
                with_full: r.get(2)?,
                stamp_ms: r.get(3)?,
                stanza: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

impl crate::ArchiveStore for SqliteStore {
    fn archive_append(&self, owner: &str, msg: &crate::ArchivedMessage) -> Result<()> {
        let queued = self.queued.hold(vec![owner.to_owned()]);
        let owner = owner.to_owned();
        let m = msg.clone();
        let r = self.write(move |c| archive_append(c, owner, &m));
        drop(queued);
        r
    }

    fn archive_query(
        &self,
        owner: &str,
        q: &crate::ArchiveQuery,
    ) -> Result<Option<crate::ArchivePage>> {
        let o = owner.to_owned();
        let q = q.clone();
        self.read_archive(owner, move |c| query_archive(c, &o, &q))
    }

    fn archive_get(
        &self,
        owner: &str,
        ids: &[String],
    ) -> Result<Option<Vec<crate::ArchivedMessage>>> {
        let o = owner.to_owned();
        let ids = ids.to_vec();
        self.read_archive(owner, move |c| {
            let log = logged_copies(c, &o)?;
            let mut st = c.prepare_cached(
                "SELECT a.seq, a.with_bare, a.with_full, a.stamp_ms, c.stanza
                 FROM archive a JOIN archive_content c ON c.cid = a.content
                 WHERE a.owner = ?1 AND a.id = ?2",
            )?;
            // (merged copies by seq, then logged ones by position: the archive order)
            let mut found: Vec<((u8, i64), crate::ArchivedMessage)> = Vec::new();
            for id in &ids {
                if found.iter().any(|(_, m)| &m.id == id) {
                    continue;
                }
                let merged = st
                    .query_row([&o, id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            crate::ArchivedMessage {
                                id: id.clone(),
                                with_bare: r.get(1)?,
                                with_full: r.get(2)?,
                                stamp_ms: r.get(3)?,
                                stanza: r.get(4)?,
                            },
                        ))
                    })
                    .optional()?;
                match merged {
                    Some((seq, m)) => found.push(((0, seq), m)),
                    None => match log.iter().position(|m| &m.id == id) {
                        Some(i) => found.push(((1, i as i64), log[i].clone())),
                        None => return Ok(None),
                    },
                }
            }
            found.sort_by_key(|(k, _)| *k);
            Ok(Some(found.into_iter().map(|(_, m)| m).collect()))
        })
    }

    fn archive_count(&self, owner: &str) -> Result<usize> {
        let o = owner.to_owned();
        self.read_archive(owner, move |c| {
            let logged: i64 = c
                .prepare_cached(
                    "SELECT COUNT(DISTINCT id) FROM archive_log l WHERE owner = ?1
                     AND NOT EXISTS (SELECT 1 FROM archive a WHERE a.owner = ?1 AND a.id = l.id)",
                )?
                .query_row([&o], |r| r.get(0))?;
            Ok(owner_count(c, &o)? + logged as usize)
        })
    }

    fn archive_clear(&self, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |c| archive_delete_owner(c, &owner))
    }

    fn archive_expire(&self, before_ms: i64, max: usize) -> Result<usize> {
        // Only merged copies are expired: the log holds the last second's worth, so once it
        // is merged nothing older than `before_ms` is left in it.
        self.merge_archive_log()?;
        // One savepoint (`write`): the counts, the stanzas' references and the rows change
        // together or not at all.
        self.write(move |c| archive_expire_round(c, before_ms, max))
    }

    fn archive_prefs(&self, owner: &str) -> Result<crate::ArchivePrefs> {
        let owner = owner.to_owned();
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT default_mode, always_jids, never_jids FROM archive_prefs WHERE owner = ?1",
                    [&owner],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                )
                .optional()?;
            let split = |s: &str| -> Vec<String> {
                s.split('\n').filter(|j| !j.is_empty()).map(str::to_owned).collect()
            };
            Ok(match row {
                Some((d, a, n)) => crate::ArchivePrefs {
                    default: d,
                    always: split(&a),
                    never: split(&n),
                },
                None => crate::ArchivePrefs::default(),
            })
        })
    }

    fn set_archive_prefs(&self, owner: &str, prefs: &crate::ArchivePrefs) -> Result<()> {
        let owner = owner.to_owned();
        let p = prefs.clone();
        self.write(move |c| {
            if !exists(c, &owner)? {
                return Err(StoreError::NotFound(owner));
            }
            c.execute(
                "INSERT INTO archive_prefs (owner, default_mode, always_jids, never_jids)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode,
                   always_jids = excluded.always_jids, never_jids = excluded.never_jids",
                params![owner, p.default, p.always.join("\n"), p.never.join("\n")],
            )?;
            Ok(())
        })
    }
}

/// Credentials for accounts the store's own tests create (their values do not matter).
#[cfg(test)]
fn test_credentials() -> Credentials {
    Credentials {
        scram_sha1: None,
        scram_sha256: ScramSecret {
            salt: vec![1; 16],
            iterations: 4096,
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
        },
    }
}

#[cfg(test)]
mod wal_tests {
    use super::*;
    use std::time::Instant;

    /// The largest the WAL file gets while `writers` threads push offline messages into one
    /// store for `secs`, with the given policy.
    fn largest_wal(policy: CheckpointPolicy, writers: usize, secs: f64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let wal = dir.path().join("strait.db-wal");
        let store = Arc::new(SqliteStore::open_with(&path, policy).unwrap());
        let creds = test_credentials();
        for w in 0..writers {
            store
                .create_account(&format!("w{w}@x.example"), &creds)
                .unwrap();
        }
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let body = format!("<message><body>{}</body></message>", "x".repeat(1500));
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let (store, body) = (Arc::clone(&store), body.clone());
                std::thread::spawn(move || {
                    let owner = format!("w{w}@x.example");
                    let mut n = 0;
                    while Instant::now() < end {
                        let id = store.offline_push(&owner, &body, 0, usize::MAX).unwrap();
                        n += 1;
                        // Keep the queue short so the database does not grow without end.
                        if n % 4 == 0 {
                            store.offline_delete(&owner, &[id]).unwrap();
                        }
                    }
                })
            })
            .collect();
        let mut largest = 0;
        while Instant::now() < end {
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            t.join().unwrap();
        }
        largest
    }

    /// Bytes of WAL written per archived copy when `messages` messages between 200 pairs of
    /// accounts are archived (the sender's and the recipient's copy of each), `per_commit`
    /// messages per commit, with checkpoints off, after `warm` messages filled the archive
    /// (its indexes then have leaves for every owner, as a server's do).
    fn wal_bytes_per_copy(per_commit: usize, warm: usize, messages: usize) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let wal = dir.path().join("strait.db-wal");
        let policy = CheckpointPolicy {
            every: Duration::from_secs(3600),
            reset_pages: i64::MAX,
            size_limit_bytes: -1,
        };
        let store = SqliteStore::open_with(&path, policy).unwrap();
        let creds = test_credentials();
        let pairs = 200;
        for a in 0..2 * pairs {
            store
                .create_account(&format!("u{a}@x.example"), &creds)
                .unwrap();
        }
        let body = format!(
            "<message xmlns='jabber:client' type='chat'><body>{}</body></message>",
            "x".repeat(64)
        );
        let mut n = 0usize;
        let mut run = |count: usize| {
            let mut left = count;
            while left > 0 {
                let k = left.min(per_commit);
                let mut ops = Vec::with_capacity(2 * k);
                for _ in 0..k {
                    let (from, to) = (n % (2 * pairs), (n + pairs) % (2 * pairs));
                    for (owner, with) in [(from, to), (to, from)] {
                        ops.push(WriteOp::Archive {
                            owner: format!("u{owner}@x.example"),
                            msg: crate::ArchivedMessage {
                                id: format!("id-{n}-{owner}"),
                                with_bare: format!("u{with}@x.example"),
                                with_full: format!("u{with}@x.example/r"),
                                stanza: body.clone(),
                                stamp_ms: n as i64,
                            },
                        });
                    }
                    n += 1;
                }
                let (tx, rx) = mpsc::channel();
                store.write_batch(ops, Box::new(move |o| tx.send(o).unwrap()));
                assert!(rx.recv().unwrap().iter().all(|o| o.is_ok()));
                left -= k;
            }
        };
        run(warm);
        use crate::ArchiveStore;
        store.archive_count("u0@x.example").unwrap();
        let before = std::fs::metadata(&wal).unwrap().len();
        run(messages);
        // A query sees everything appended before it.
        assert_eq!(
            store.archive_count("u0@x.example").unwrap(),
            2 * (warm + messages) / (2 * pairs)
        );
        let after = std::fs::metadata(&wal).unwrap().len();
        (after - before) as f64 / (2 * messages) as f64
    }

    /// An archived copy costs the WAL little more than its own bytes: appended to the
    /// unindexed archive log, and merged into the indexed archive in batches, where each
    /// owner's index leaves are written once per merge. Inserted straight into the indexed
    /// table it cost two whole index leaf pages: 10,070 bytes of WAL per copy of a 0.2 KB
    /// row here, against 1,983 with the log (20 messages a commit; 3,935 at one a commit),
    /// 2,467 since migration 7 added a third index (`archive_by_owner`, for paging), and
    /// 2,971 since a merge round gives way after each chunk of 256 copies to writes
    /// somebody waits for ([`merge_archive_log_step`]), as these are: a commit per chunk,
    /// and deleting the round's rows by `seq` instead of emptying the table, which SQLite
    /// does without touching the rows' pages (190 bytes of the 500). The server's archive
    /// copies of delivered messages are written lazily, and their rounds run whole unless
    /// a waited write comes.
    #[test]
    fn an_archived_copy_costs_the_wal_little_more_than_its_bytes() {
        let per_copy = wal_bytes_per_copy(20, 20_000, 20_000);
        eprintln!("WAL per archived copy: {per_copy:.0} bytes");
        assert!(
            per_copy < 3_300.0,
            "{per_copy:.0} bytes of WAL per archived copy"
        );
    }

    /// Under writes that never pause, the WAL still starts over and its file is cut back:
    /// with PASSIVE checkpoints alone it grew for as long as the writes went on.
    #[test]
    fn wal_stays_bounded_under_sustained_writes() {
        let policy = CheckpointPolicy {
            every: Duration::from_millis(20),
            reset_pages: 64,
            size_limit_bytes: 256 << 10,
        };
        let largest = largest_wal(policy, 4, 2.0);
        eprintln!("largest WAL: {largest} bytes");
        // The bound the policy allows, with room for what a writer appends while a
        // checkpoint runs: far below what two seconds of these writes amount to.
        assert!(
            largest < 8 << 20,
            "the WAL file reached {largest} bytes under a 64-page reset bound"
        );
    }
}

#[cfg(test)]
mod linger_tests {
    use super::*;

    fn store_with(linger: Duration) -> SqliteStore {
        store_holding(linger, HOLD)
    }

    fn store_holding(linger: Duration, hold: Duration) -> SqliteStore {
        let store = SqliteStore::open_in_memory_lingering(linger, hold).unwrap();
        let creds = test_credentials();
        let before = store.commit_count();
        store.create_account("b@x.example", &creds).unwrap();
        // Counted before the tests take their `before`.
        commits_after(&store, before);
        store
    }

    fn push(n: i64) -> Vec<WriteOp> {
        vec![WriteOp::OfflinePush {
            owner: "b@x.example".into(),
            stanza: format!("<message><body>{n}</body></message>"),
            stamp_ms: n,
            limit: usize::MAX,
            id: None,
        }]
    }

    /// Commits counted since `before`, once there is one: the writer counts a commit just
    /// after it answered the batch's callers.
    fn commits_after(store: &SqliteStore, before: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.commit_count() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        store.commit_count() - before
    }

    /// A copy held for b@x.example under the reserved id `id`.
    fn held(id: i64) -> Vec<WriteOp> {
        vec![WriteOp::OfflinePush {
            owner: "b@x.example".into(),
            stanza: format!("<message id='{id}'/>"),
            stamp_ms: 1,
            limit: usize::MAX,
            id: Some(id),
        }]
    }

    /// `owner`'s acknowledgement of `id`.
    fn delete(owner: &str, id: i64) -> Vec<WriteOp> {
        vec![WriteOp::OfflineDelete {
            owner: owner.into(),
            ids: vec![id],
        }]
    }

    /// b@x.example's acknowledgement of `id`.
    fn ack(id: i64) -> Vec<WriteOp> {
        delete("b@x.example", id)
    }

    fn done(tx: &mpsc::Sender<(i64, Vec<WriteOutcome>)>, n: i64) -> WriteDone {
        let tx = tx.clone();
        Box::new(move |o| tx.send((n, o)).unwrap())
    }

    /// Writes nobody waits for are held back so that the next ones share their commit; a
    /// write somebody waits for ends the wait at once and commits with them.
    #[test]
    fn lazy_writes_wait_for_company_and_a_waited_write_ends_the_wait() {
        let store = store_with(Duration::from_secs(60));
        let before = store.commit_count();
        let (tx, rx) = mpsc::channel();
        store.write_batch_lazy(push(1), done(&tx, 1));
        std::thread::sleep(Duration::from_millis(50));
        store.write_batch_lazy(push(2), done(&tx, 2));
        std::thread::sleep(Duration::from_millis(50));
        // Held back: neither is committed yet, though the writer had 100 ms.
        assert!(rx.try_recv().is_err(), "a lazy write committed alone");
        let started = Instant::now();
        store.write_batch(push(3), done(&tx, 3));
        let mut got: Vec<i64> = (0..3)
            .map(|_| {
                let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
                assert!(o.iter().all(|o| o.is_ok()), "{o:?}");
                n
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        // Far less than the 60 s linger: the waited write did not wait for it.
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(commits_after(&store, before), 1, "one commit for the three");
        assert_eq!(store.offline_count("b@x.example").unwrap(), 3);
    }

    /// The highest offline row id SQLite has seen written (`sqlite_sequence`).
    fn highest_written(store: &SqliteStore) -> i64 {
        store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'offline'), 0)",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap()
    }

    /// A delete queued while the row it deletes still waits for the writer (under a reserved
    /// id) cancels it: neither is written, though both report success. A delete naming the
    /// id for another owner cancels nothing, and one queued after the row was written
    /// deletes it as always.
    #[test]
    fn a_delete_cancels_a_reserved_row_still_queued() {
        let store = store_with(Duration::from_secs(60));
        let (tx, rx) = mpsc::channel();
        let r1 = store.offline_reserve_id().unwrap();
        let r2 = store.offline_reserve_id().unwrap();
        store.write_batch_lazy(held(r1), done(&tx, 1));
        store.write_batch_lazy(held(r2), done(&tx, 2));
        // r1 acknowledged while queued; r2 named for somebody else.
        store.write_batch_lazy(delete("b@x.example", r1), done(&tx, 3));
        store.write_batch_lazy(delete("c@x.example", r2), done(&tx, 4));
        // Ends the linger.
        store.write_batch(Vec::new(), done(&tx, 5));
        let mut outcomes: Vec<(i64, Vec<WriteOutcome>)> = (0..5)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        outcomes.sort_by_key(|(n, _)| *n);
        assert!(
            matches!(outcomes[0].1[..], [Ok(Some(id))] if id == r1),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1].1[..], [Ok(Some(id))] if id == r2),
            "{outcomes:?}"
        );
        assert!(matches!(outcomes[2].1[..], [Ok(None)]), "{outcomes:?}");
        assert!(matches!(outcomes[3].1[..], [Ok(None)]), "{outcomes:?}");
        let kept: Vec<i64> = store
            .offline_fetch("b@x.example", 10)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(kept, [r2]);
        assert_eq!(highest_written(&store), r2);

        // Written first, deleted after: deleted.
        let r3 = store.offline_reserve_id().unwrap();
        store.write_batch(held(r3), done(&tx, 6));
        assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap().1[0].is_ok());
        assert_eq!(highest_written(&store), r3);
        store.write_batch(delete("b@x.example", r3), done(&tx, 7));
        rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(store.offline_kept("b@x.example", &[r2, r3]).unwrap(), [r2]);

        // Cancelled alone: never written at all (SQLite saw no id past r3).
        let r4 = store.offline_reserve_id().unwrap();
        store.write_batch_lazy(held(r4), done(&tx, 8));
        store.write_batch_lazy(delete("b@x.example", r4), done(&tx, 9));
        store.write_batch(Vec::new(), done(&tx, 10));
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(20)).unwrap();
        }
        assert_eq!(highest_written(&store), r3, "the cancelled row was written");
        assert_eq!(
            store.offline_kept("b@x.example", &[r4]).unwrap(),
            [] as [i64; 0]
        );
    }

    /// A copy held for a client is held back far longer than other writes nobody waits for
    /// ([`HOLD`], not [`LINGER`]), so that the client's acknowledgement, which comes a round
    /// trip after delivery, finds it still queued and cancels it: neither is written, and
    /// a batch of cancelled copies alone costs no commit. A copy nobody acknowledges is
    /// written once held long enough, and a write somebody waits for takes every held copy
    /// with it (it may read them: a session that ends looks up which are stored).
    #[test]
    fn held_copies_are_held_back_until_acknowledged_or_due() {
        let (tx, rx) = mpsc::channel();
        let store = store_holding(Duration::from_millis(1), Duration::from_secs(60));
        let r1 = store.offline_reserve_id().unwrap();
        let before = store.commit_count();
        store.write_batch_lazy(held(r1), done(&tx, 1));
        // Many lingers later, still queued (with a 4 ms linger for held copies too, it was
        // written by now, and the acknowledgement below became a delete).
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "a held copy was let go early");
        assert_eq!(
            store.commit_count(),
            before,
            "a held copy was committed early"
        );
        store.write_batch_lazy(ack(r1), done(&tx, 2));
        // The acknowledgement answers the held copy at once, 59.9 s before it is due (with
        // the copy answered only when due, a sender's acknowledgement waited for the hold to
        // end), then itself: it had nothing left to delete.
        let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(n, 1, "the cancelled copy is answered first");
        assert!(matches!(o[..], [Ok(Some(id))] if id == r1), "{o:?}");
        let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(n, 2);
        assert!(matches!(o[..], [Ok(None)]), "{o:?}");
        assert_eq!(
            store.commit_count(),
            before,
            "an acknowledgement was committed"
        );

        // A waited write takes the held copies with it: the cancelled one unwritten (and not
        // answered twice), the other written.
        let r2 = store.offline_reserve_id().unwrap();
        store.write_batch_lazy(held(r2), done(&tx, 3));
        store.write_batch(Vec::new(), done(&tx, 4));
        let mut got: Vec<(i64, Vec<WriteOutcome>)> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        got.sort_by_key(|(n, _)| *n);
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 4]);
        assert!(
            matches!(got[0].1[..], [Ok(Some(id))] if id == r2),
            "{got:?}"
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "answered twice"
        );
        assert_eq!(
            highest_written(&store),
            r2,
            "the acknowledged copy was written"
        );
        assert_eq!(store.offline_kept("b@x.example", &[r1, r2]).unwrap(), [r2]);

        // Nobody acknowledges, nobody waits: written once due.
        let store = store_holding(Duration::from_millis(1), Duration::from_millis(100));
        let r3 = store.offline_reserve_id().unwrap();
        let queued = Instant::now();
        store.write_batch_lazy(held(r3), done(&tx, 5));
        let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(n, 5);
        assert!(matches!(o[..], [Ok(Some(id))] if id == r3), "{o:?}");
        assert!(
            queued.elapsed() >= Duration::from_millis(100),
            "let go before due"
        );
        assert_eq!(store.offline_kept("b@x.example", &[r3]).unwrap(), [r3]);
        // The writer counts a commit after it answered: let the count catch up.
        std::thread::sleep(Duration::from_millis(50));

        // Acknowledged while held, nobody waiting: answered at once, and never written (not
        // when it comes due either: waited for below).
        let r4 = store.offline_reserve_id().unwrap();
        let before = store.commit_count();
        store.write_batch_lazy(held(r4), done(&tx, 6));
        store.write_batch_lazy(ack(r4), done(&tx, 7));
        let got: Vec<i64> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap().0)
            .collect();
        assert_eq!(got, [6, 7]);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            rx.try_recv().is_err(),
            "a cancelled copy was answered twice"
        );
        // (Before reading: the in-memory store reads through its writer, a commit each.)
        assert_eq!(
            store.commit_count(),
            before,
            "cancelled copies cost a commit"
        );
        assert_eq!(
            highest_written(&store),
            r3,
            "the acknowledged copy was written"
        );
    }

    /// Only a barrier (or a delete that may name a held row) takes the held copies along; other
    /// writes somebody waits for (a message stored for an account offline) leave them held,
    /// for their acknowledgement to cancel.
    #[test]
    fn only_barriers_take_held_copies_along() {
        let (tx, rx) = mpsc::channel();
        let store = store_holding(Duration::from_millis(1), Duration::from_secs(60));
        let r1 = store.offline_reserve_id().unwrap();
        store.write_batch_lazy(held(r1), done(&tx, 1));
        store.write_batch(push(7), done(&tx, 2));
        let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(
            n, 2,
            "the held copy went with a write that is not a barrier"
        );
        assert!(matches!(o[..], [Ok(Some(_))]), "{o:?}");
        store.write_batch_lazy(ack(r1), done(&tx, 3));
        let got: Vec<i64> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap().0)
            .collect();
        assert_eq!(got, [1, 3]);
        store.write_batch(Vec::new(), done(&tx, 4));
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap().0, 4);
        assert_eq!(
            store.offline_kept("b@x.example", &[r1]).unwrap(),
            Vec::<i64>::new(),
            "the acknowledged copy was written"
        );

        // A delete of a held row that does not cancel it (the store's own `offline_delete`)
        // runs after it: the row does not come back once the hold ends.
        let r2 = store.offline_reserve_id().unwrap();
        store.write_batch_lazy(held(r2), done(&tx, 5));
        store.offline_delete("b@x.example", &[r2]).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap().0, 5);
        store.write_batch(Vec::new(), done(&tx, 6));
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap().0, 6);
        assert_eq!(
            store.offline_kept("b@x.example", &[r2]).unwrap(),
            Vec::<i64>::new(),
            "a deleted row came back"
        );
    }

    /// A held batch of several copies is answered early only once every one of its rows was
    /// cancelled; one with a row left is answered when it is written.
    #[test]
    fn held_batches_are_answered_early_only_when_every_row_is_cancelled() {
        let (tx, rx) = mpsc::channel();
        let store = store_holding(Duration::from_millis(1), Duration::from_secs(60));
        let ids: Vec<i64> = (0..4)
            .map(|_| store.offline_reserve_id().unwrap())
            .collect();
        let two = |a: i64, b: i64| [held(a), held(b)].concat();
        store.write_batch_lazy(two(ids[0], ids[1]), done(&tx, 1));
        store.write_batch_lazy(two(ids[2], ids[3]), done(&tx, 2));
        store.write_batch_lazy(ack(ids[0]), done(&tx, 3));
        store.write_batch_lazy(ack(ids[2]), done(&tx, 4));
        let got: Vec<i64> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap().0)
            .collect();
        assert_eq!(got, [3, 4], "only the acknowledgements are done");
        // The second row of batch 2: now every row of it is cancelled.
        store.write_batch_lazy(ack(ids[3]), done(&tx, 5));
        let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(n, 2);
        assert!(
            matches!(o[..], [Ok(Some(a)), Ok(Some(b))] if a == ids[2] && b == ids[3]),
            "{o:?}"
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap().0, 5);
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "batch 1 was answered with a row still to write"
        );
        // A waited write takes batch 1 with it: its row left is written.
        store.write_batch(Vec::new(), done(&tx, 6));
        let mut got: Vec<(i64, Vec<WriteOutcome>)> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        got.sort_by_key(|(n, _)| *n);
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 6]);
        assert!(
            matches!(got[0].1[..], [Ok(Some(a)), Ok(Some(b))] if a == ids[0] && b == ids[1]),
            "{got:?}"
        );
        assert_eq!(store.offline_kept("b@x.example", &ids).unwrap(), [ids[1]]);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    }

    /// Other writes nobody waits for (archive copies) are not held back with the held
    /// copies: a writer that waits only for held copies to come due is woken by the first,
    /// which is committed within its linger (it waited for the held copies' 60 s before).
    #[test]
    fn other_lazy_writes_are_not_held_back_with_held_copies() {
        let store = store_holding(Duration::from_millis(1), Duration::from_secs(60));
        let (tx, rx) = mpsc::channel();
        let r1 = store.offline_reserve_id().unwrap();
        store.write_batch_lazy(held(r1), done(&tx, 1));
        // The writer has taken it and waits for it to come due.
        std::thread::sleep(Duration::from_millis(50));
        store.write_batch_lazy(push(2), done(&tx, 2));
        let (n, o) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("held back with the held copy");
        assert_eq!(n, 2);
        assert!(o[0].is_ok(), "{o:?}");
        assert!(rx.try_recv().is_err(), "the held copy was let go early");
    }

    /// A lazy write alone is committed once its linger is over, and enough of them are
    /// committed without waiting for it.
    #[test]
    fn lazy_writes_are_committed_after_the_linger_or_when_many() {
        let store = store_with(Duration::from_millis(100));
        let (tx, rx) = mpsc::channel();
        store.write_batch_lazy(push(1), done(&tx, 1));
        let (n, o) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(n, 1);
        assert!(o[0].is_ok());

        let store = store_with(Duration::from_secs(60));
        let before = store.commit_count();
        for n in 0..LINGER_JOBS as i64 {
            store.write_batch_lazy(push(n), done(&tx, n));
        }
        for _ in 0..LINGER_JOBS {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("a full batch of lazy writes waited for the linger");
        }
        assert!(commits_after(&store, before) >= 1);
        assert_eq!(store.offline_count("b@x.example").unwrap(), LINGER_JOBS);
    }

    /// The archive's ids for `owner` in archive order, merged and still in the log, as a
    /// query reads them (its count with them).
    fn archived_ids(conn: &Connection, owner: &str) -> (Vec<String>, usize) {
        let q = crate::ArchiveQuery {
            max: usize::MAX,
            ..Default::default()
        };
        let page = query_archive(conn, owner, &q).unwrap().unwrap();
        let ids = page.messages.into_iter().map(|m| m.id).collect();
        (ids, page.count)
    }

    fn log_rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM archive_log", [], |r| r.get(0))
            .unwrap()
    }

    fn merged_owners(conn: &Connection) -> Vec<(String, i64)> {
        conn.prepare("SELECT owner, COUNT(*) FROM archive GROUP BY owner ORDER BY owner")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Runs on this test's own thread as the writer (its thread-locals are the test's).
    #[test]
    fn the_writer_merges_the_archive_log_a_chunk_at_a_time_while_somebody_waits() {
        let conn = Connection::open_in_memory().unwrap();
        SqliteStore::setup_writer(&conn).unwrap();
        let owners: Vec<String> = (0..10).map(|i| format!("o{i}@x.example")).collect();
        for o in owners.iter().chain([&"z@x.example".to_owned()]) {
            conn.execute(
                "INSERT INTO accounts (jid, domain, sha256_salt, sha256_iter, sha256_stored, sha256_server)
                 VALUES (?1, 'x.example', x'', 0, x'', x'')",
                [o],
            )
            .unwrap();
        }
        let append = |owner: &str, i: usize| {
            let msg = crate::ArchivedMessage {
                id: format!("m{i:03}"),
                with_bare: "p@x.example".into(),
                with_full: "p@x.example/r".into(),
                stanza: format!("<message><body>{i}</body></message>"),
                stamp_ms: i as i64,
            };
            archive_append(&conn, owner.to_owned(), &msg).unwrap();
        };
        // 300 copies for each of 10 owners, appended owner after owner in turn.
        for i in 0..300 {
            for o in &owners {
                append(o, i);
            }
        }
        let expected = |n: usize| (0..n).map(|i| format!("m{i:03}")).collect::<Vec<_>>();
        let commits = AtomicU64::new(0);
        // Somebody waits for a write: the round gives way after each chunk.
        let waiting = AtomicUsize::new(1);
        assert_ne!(archive_log_due_in(), Some(Duration::ZERO), "not due yet");

        // The first chunk: the lowest owner's oldest copies, in append order.
        merge_archive_log_step(&conn, &commits, &waiting);
        let chunk = LOG_MERGE_CHUNK as i64;
        assert!(chunk < 300, "the test splits an owner between two chunks");
        assert_eq!(merged_owners(&conn), vec![(owners[0].clone(), chunk)]);
        assert_eq!(
            archive_log_due_in(),
            Some(Duration::ZERO),
            "the round goes on"
        );
        // Copied, not yet deleted from the log: a query reads each copy once, also for an
        // owner split between the two.
        assert_eq!(log_rows(&conn), 3_000);
        assert_eq!(archived_ids(&conn, &owners[0]), (expected(300), 300));
        // Writes between two chunks: for the owner merged in part and for one not yet.
        for i in 300..305 {
            append(&owners[0], i);
            append(&owners[5], i);
        }
        for o in [&owners[0], &owners[5]] {
            assert_eq!(archived_ids(&conn, o), (expected(305), 305), "{o}");
        }
        // An archive deleted during the round stays deleted.
        archive_delete_owner(&conn, &owners[7]).unwrap();
        append("z@x.example", 0);

        // The rest of the round, a chunk a step.
        let steps = (3_000 + chunk - 1) / chunk;
        for _ in 1..steps {
            assert_eq!(archive_log_due_in(), Some(Duration::ZERO));
            merge_archive_log_step(&conn, &commits, &waiting);
        }
        assert_eq!(commits.load(Ordering::Relaxed), steps as u64);
        // The round's copies are out of the log; those appended during it are left, due a
        // second after it began at the latest.
        assert_eq!(log_rows(&conn), 11);
        assert_eq!(ARCHIVE_LOG.with_borrow(|l| l.rows), 11);
        let due = archive_log_due_in().expect("the log holds copies");
        assert!(due > Duration::ZERO && due <= LOG_MERGE_AGE, "{due:?}");
        let merged: Vec<(String, i64)> = owners
            .iter()
            .filter(|o| *o != &owners[7])
            .map(|o| (o.clone(), 300))
            .collect();
        assert_eq!(merged_owners(&conn), merged);
        for (o, n) in [
            (owners[0].as_str(), 305),
            (&owners[5], 305),
            (&owners[7], 0),
            (&owners[9], 300),
            ("z@x.example", 1),
        ] {
            assert_eq!(
                archived_ids(&conn, o),
                (expected(n), n),
                "{o} after the round"
            );
        }
        // The counts kept per owner and partner match the archive.
        let kept: i64 = conn
            .query_row("SELECT SUM(n) FROM archive_with_counts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 2_700);

        // A round cut short by a full merge (shutdown, tests): the full merge finishes it
        // and takes the rest, each copy once.
        for i in 300..1_300 {
            append(&owners[3], i);
            append(&owners[4], i);
        }
        merge_archive_log_step(&conn, &commits, &waiting);
        assert_eq!(archive_log_due_in(), Some(Duration::ZERO), "a round began");
        merge_archive_log_alone(&conn, &commits);
        assert_eq!(log_rows(&conn), 0);
        assert_eq!(ARCHIVE_LOG.with_borrow(|l| l.rows), 0);
        assert_eq!(archive_log_due_in(), None);
        let kept: i64 = conn
            .query_row("SELECT SUM(n) FROM archive_with_counts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 4_711);
        for o in [&owners[3], &owners[4]] {
            assert_eq!(archived_ids(&conn, o), (expected(1_300), 1_300), "{o}");
        }

        // While nobody waits, a round runs in one transaction and empties the log.
        waiting.store(0, Ordering::SeqCst);
        for i in 1_300..1_400 {
            for o in &owners {
                append(o, i);
            }
        }
        let before = commits.load(Ordering::Relaxed);
        merge_archive_log_step(&conn, &commits, &waiting);
        assert_eq!(commits.load(Ordering::Relaxed), before + 1);
        assert_eq!(log_rows(&conn), 0);
        assert_eq!(archive_log_due_in(), None);
        assert_eq!(archived_ids(&conn, &owners[9]).1, 400);
        assert_eq!(archived_ids(&conn, &owners[3]), (expected(1_400), 1_400));
    }

    /// Another process's change to the log during a round (`strait user remove` deleting an
    /// archive) ends the round: its copies taken before are not put back.
    #[test]
    fn a_merge_round_ends_when_another_connection_changes_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        SqliteStore::setup_writer(&conn).unwrap();
        let owners = ["a@x.example", "b@x.example"];
        for o in owners {
            conn.execute(
                "INSERT INTO accounts (jid, domain, sha256_salt, sha256_iter, sha256_stored, sha256_server)
                 VALUES (?1, 'x.example', x'', 0, x'', x'')",
                [o],
            )
            .unwrap();
        }
        check_data_version(&conn);
        for i in 0..LOG_MERGE_CHUNK + 10 {
            for o in owners {
                let msg = crate::ArchivedMessage {
                    id: format!("m{i:04}"),
                    with_bare: "p@x.example".into(),
                    with_full: "p@x.example/r".into(),
                    stanza: "<message/>".into(),
                    stamp_ms: i as i64,
                };
                archive_append(&conn, o.to_owned(), &msg).unwrap();
            }
        }
        let (commits, waiting) = (AtomicU64::new(0), AtomicUsize::new(1));
        // The first chunk: a's oldest copies; b's wait in the round.
        merge_archive_log_step(&conn, &commits, &waiting);
        assert_eq!(
            archive_log_due_in(),
            Some(Duration::ZERO),
            "a round goes on"
        );
        let other = Connection::open(&path).unwrap();
        other
            .execute("DELETE FROM archive_log WHERE owner = ?1", [owners[1]])
            .unwrap();
        // What the writer does before its next batch.
        check_data_version(&conn);
        while archive_log_due_in() == Some(Duration::ZERO) {
            merge_archive_log_step(&conn, &commits, &waiting);
        }
        merge_archive_log_alone(&conn, &commits);
        assert_eq!(archived_ids(&conn, owners[1]), (vec![], 0));
        assert_eq!(archived_ids(&conn, owners[0]).1, LOG_MERGE_CHUNK + 10);
        assert_eq!(log_rows(&conn), 0);
    }
}

#[cfg(test)]
mod offline_id_tests {
    use super::*;
    use crate::{AccountStore, OfflineStore};

    /// After a restart the next id is past every id given before, including those of
    /// messages since deleted: a client's acknowledgement of an old id must never delete a
    /// newer message.
    #[test]
    fn ids_are_not_given_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strait.db");
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_account("a@x.example", &crate::testsuite::creds(1))
            .unwrap();
        let first = store
            .offline_push("a@x.example", "<message/>", 1, 10)
            .unwrap();
        let reserved = store.offline_reserve_id().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        store.write_batch(
            vec![WriteOp::OfflinePush {
                owner: "a@x.example".into(),
                stanza: "<message/>".into(),
                stamp_ms: 2,
                limit: usize::MAX,
                id: Some(reserved),
            }],
            Box::new(move |o| tx.send(o).unwrap()),
        );
        assert!(matches!(rx.recv().unwrap()[..], [Ok(Some(id))] if id == reserved));
        store
            .offline_delete("a@x.example", &[first, reserved])
            .unwrap();
        store.close().unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let next = store
            .offline_push("a@x.example", "<message/>", 3, 10)
            .unwrap();
        assert!(next > reserved, "{next} <= {reserved}");
        assert!(store.offline_reserve_id().unwrap() > next);
        store.close().unwrap();
    }
}
