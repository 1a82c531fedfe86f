//! The local store: a directory, locked to one client at a time, with `signal.db` (the
//! Signal protocol's keys and sessions, strait-signal's store) and `chat.db` (this device's id
//! and account, the history, the chat list).

use super::{ChatError, Client, Origin, now_ms};
use crate::chat::Account;
use rand_core::{OsRng, RngCore};
use rusqlite::OptionalExtension;
use std::path::{Path, PathBuf};
use strait_signal::omemo::DEVICE_ID_MAX;

/// A line of the local history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub peer: String,
    pub outgoing: bool,
    pub text: String,
    pub encrypted: bool,
    /// The provider's name, for messages from a third-party provider's user.
    pub origin: Option<String>,
    /// For a received message: the id of this account's archive copy, which the server put on
    /// it (XEP-0359 `<stanza-id by='this account'/>`); what an abuse report names
    /// ([`super::Report::stanza_ids`]). `None` for sent messages, for ones the server gave no
    /// id, and for lines recorded before stores kept them.
    pub stanza_id: Option<String>,
}

/// Opens the store directory: created private, locked for this process.
pub(super) fn open_store(
    account: &Account,
) -> Result<(std::fs::File, rusqlite::Connection), ChatError> {
    let dir = &account.store;
    let err = |e: &dyn std::fmt::Display| ChatError::Store(dir.clone(), e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(&e))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| err(&e))?;
    lock.try_lock().map_err(|_| {
        err(&"another client has this store open (one process per store: two would break each other's sessions)")
    })?;
    let db = rusqlite::Connection::open(dir.join("chat.db")).map_err(|e| err(&e))?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS messages (
             seq INTEGER PRIMARY KEY,
             at_ms INTEGER NOT NULL,
             peer TEXT NOT NULL,
             outgoing INTEGER NOT NULL,
             text TEXT NOT NULL,
             encrypted INTEGER NOT NULL,
             origin TEXT,
             stanza_id TEXT
         );
         CREATE INDEX IF NOT EXISTS messages_peer ON messages (peer, seq);",
    )
    .map_err(|e| err(&e))?;
    // A store made before the history kept stanza-ids gets the column (its lines stay NULL).
    if !has_stanza_ids(&db).map_err(|e| err(&e))? {
        db.execute_batch("ALTER TABLE messages ADD COLUMN stanza_id TEXT")
            .map_err(|e| err(&e))?;
    }
    Ok((lock, db))
}

/// Whether the history table has the `stanza_id` column (a store last opened by an older
/// client, read without logging in, has not).
fn has_stanza_ids(db: &rusqlite::Connection) -> rusqlite::Result<bool> {
    let mut st = db.prepare("SELECT name FROM pragma_table_info('messages')")?;
    let names = st.query_map([], |r| r.get::<_, String>(0))?;
    for n in names {
        if n? == "stanza_id" {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn meta(db: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<String>> {
    db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub(super) fn set_meta(db: &rusqlite::Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
    .map(|_| ())
}

/// This store's account and device: checked against the account (a store belongs to one
/// account), or recorded with a new random device id on the first use.
pub(super) fn device_id(db: &rusqlite::Connection, account: &Account) -> Result<u32, ChatError> {
    let err = |e: &dyn std::fmt::Display| ChatError::Store(account.store.clone(), e.to_string());
    match meta(db, "jid").map_err(|e| err(&e))? {
        Some(j) if !j.eq_ignore_ascii_case(&account.jid) => {
            return Err(err(&format!(
                "it belongs to {j}, not {}: use another directory",
                account.jid
            )));
        }
        Some(_) => {}
        None => set_meta(db, "jid", &account.jid).map_err(|e| err(&e))?,
    }
    if let Some(id) = meta(db, "device_id").map_err(|e| err(&e))? {
        return id
            .parse()
            .map_err(|_| err(&format!("stored device id {id:?} is not a number")));
    }
    let id = 1 + OsRng.next_u32() % DEVICE_ID_MAX;
    set_meta(db, "device_id", &id.to_string()).map_err(|e| err(&e))?;
    set_meta(db, "device_since", &now_rfc3339()).map_err(|e| err(&e))?;
    Ok(id)
}

/// Now, as XEP-0082 (RFC 3339) writes it.
pub(super) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Client {
    /// Whether a message sent at `stamp` (XEP-0082) predates this device: then it cannot have
    /// been encrypted for it.
    pub(super) fn predates_device(&self, stamp: &str) -> bool {
        let parse = |t: &str| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        };
        match (
            parse(stamp),
            self.stored("device_since")
                .ok()
                .flatten()
                .as_deref()
                .and_then(parse),
        ) {
            (Some(sent), Some(since)) => sent < since,
            _ => false,
        }
    }

    /// A value kept in the store's `meta` table.
    pub(super) fn stored(&self, key: &str) -> Result<Option<String>, ChatError> {
        meta(&self.history, key)
            .map_err(|e| ChatError::Store(PathBuf::from("chat.db"), e.to_string()))
    }

    pub(super) fn store_meta(&self, key: &str, value: &str) -> Result<(), ChatError> {
        set_meta(&self.history, key, value)
            .map_err(|e| ChatError::Store(PathBuf::from("chat.db"), e.to_string()))
    }

    /// The newest archive id seen (live or from the archive): where the next catch-up starts.
    pub(super) fn archive_seen(&self, id: &str) -> Result<(), ChatError> {
        self.store_meta("mam_last", id)
    }

    pub(super) fn record(
        &self,
        peer: &str,
        outgoing: bool,
        text: &str,
        encrypted: bool,
        origin: Option<&Origin>,
        stanza_id: Option<&str>,
    ) -> Result<(), ChatError> {
        self.history
            .execute(
                "INSERT INTO messages (at_ms, peer, outgoing, text, encrypted, origin, stanza_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    now_ms(),
                    peer,
                    outgoing,
                    text,
                    encrypted,
                    origin.map(|o| o.name.as_str()),
                    stanza_id
                ],
            )
            .map_err(|e| ChatError::Store(PathBuf::from("chat.db"), e.to_string()))?;
        Ok(())
    }

    /// The newest `limit` lines of the local history (with `peer` only, if given), oldest
    /// first.
    pub fn history(
        &self,
        peer: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, ChatError> {
        read_history(&self.history, peer, limit)
            .map_err(|e| ChatError::Store(PathBuf::from("chat.db"), e.to_string()))
    }

    /// The stanza-ids of the newest `limit` messages received from `peer` that carry one
    /// (see [`HistoryEntry::stanza_id`]), oldest first, each once: what a report on `peer`
    /// attaches ([`super::Report::stanza_ids`]).
    pub fn received_stanza_ids(&self, peer: &str, limit: usize) -> Result<Vec<String>, ChatError> {
        read_received_stanza_ids(&self.history, peer, limit)
            .map_err(|e| ChatError::Store(PathBuf::from("chat.db"), e.to_string()))
    }
}

pub(super) fn read_received_stanza_ids(
    db: &rusqlite::Connection,
    peer: &str,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let peer = super::bare(peer.trim()).to_ascii_lowercase();
    let mut st = db.prepare(
        "SELECT stanza_id FROM messages
         WHERE peer = ?1 AND outgoing = 0 AND stanza_id IS NOT NULL
         GROUP BY stanza_id ORDER BY MAX(seq) DESC LIMIT ?2",
    )?;
    let mut ids: Vec<String> = st
        .query_map(rusqlite::params![peer, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.reverse();
    Ok(ids)
}

/// The stanza-ids of the newest `limit` messages in the history that carry one (received
/// messages), oldest first.
pub(super) fn read_recent_stanza_ids(
    db: &rusqlite::Connection,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let mut st = db.prepare(
        "SELECT stanza_id FROM messages WHERE stanza_id IS NOT NULL ORDER BY seq DESC LIMIT ?1",
    )?;
    let mut ids: Vec<String> = st
        .query_map(rusqlite::params![limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.reverse();
    Ok(ids)
}

/// The local history of a store, read without logging in (`strait chat history`).
pub fn history(
    store: &Path,
    peer: Option<&str>,
    limit: usize,
) -> Result<Vec<HistoryEntry>, ChatError> {
    let err = |e: &dyn std::fmt::Display| ChatError::Store(store.to_owned(), e.to_string());
    let db = open_history(store)?;
    read_history(&db, peer, limit).map_err(|e| err(&e))
}

/// One conversation of the local history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub peer: String,
    /// Set when the contact is a third-party provider's user (its messages carried the
    /// platform's origin stamp): the provider's name, and the chat's place is the third-party
    /// section.
    pub third_party: Option<String>,
    pub last_at_ms: i64,
    pub last_text: String,
    pub last_outgoing: bool,
    pub messages: usize,
}

/// The conversations of a store, newest first, read without logging in (`strait chat chats`):
/// what an app's chat list shows, with third-party chats told apart.
pub fn conversations(store: &Path) -> Result<Vec<Conversation>, ChatError> {
    let db = open_history(store)?;
    read_conversations(&db).map_err(|e| ChatError::Store(store.to_owned(), e.to_string()))
}

pub(super) fn open_history(store: &Path) -> Result<rusqlite::Connection, ChatError> {
    let err = |e: &dyn std::fmt::Display| ChatError::Store(store.to_owned(), e.to_string());
    let path = store.join("chat.db");
    if !path.exists() {
        return Err(err(&"no chat history here"));
    }
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| err(&e))
}

pub(super) fn read_conversations(db: &rusqlite::Connection) -> rusqlite::Result<Vec<Conversation>> {
    let mut st = db.prepare(
        "SELECT m.peer, m.at_ms, m.text, m.outgoing, c.n,
                (SELECT origin FROM messages o WHERE o.peer = m.peer AND o.origin IS NOT NULL
                 ORDER BY o.seq DESC LIMIT 1)
         FROM messages m
         JOIN (SELECT peer, MAX(seq) AS last, COUNT(*) AS n FROM messages GROUP BY peer) c
           ON m.seq = c.last
         ORDER BY m.seq DESC",
    )?;
    st.query_map([], |r| {
        Ok(Conversation {
            peer: r.get(0)?,
            last_at_ms: r.get(1)?,
            last_text: r.get(2)?,
            last_outgoing: r.get(3)?,
            messages: r.get::<_, i64>(4)? as usize,
            third_party: r.get(5)?,
        })
    })?
    .collect()
}

pub(super) fn read_history(
    db: &rusqlite::Connection,
    peer: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<HistoryEntry>> {
    // A store an older client wrote, read without logging in (read-only: no column added),
    // has no stanza-ids.
    let stanza_id = if has_stanza_ids(db)? {
        "stanza_id"
    } else {
        "NULL"
    };
    let mut st = db.prepare(&format!(
        "SELECT at_ms, peer, outgoing, text, encrypted, origin, {stanza_id} FROM messages
         WHERE ?1 IS NULL OR peer = ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let mut rows: Vec<HistoryEntry> = st
        .query_map(
            rusqlite::params![peer.map(|p| p.to_ascii_lowercase()), limit as i64],
            |r| {
                Ok(HistoryEntry {
                    at_ms: r.get(0)?,
                    peer: r.get(1)?,
                    outgoing: r.get(2)?,
                    text: r.get(3)?,
                    encrypted: r.get(4)?,
                    origin: r.get(5)?,
                    stanza_id: r.get(6)?,
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    rows.reverse();
    Ok(rows)
}
