//! A persistent [`ProtocolStore`](super::ProtocolStore) and
//! [`Omemo2Store`] in one SQLite database.
//!
//! Semantics mirror [`InMemoryStore`](super::memory::InMemoryStore) (trust policies, what
//! [`IdentityKeyStore::save_identity`] returns, orderings) and
//! [`InMemoryOmemo2Store`](crate::omemo2::store::InMemoryOmemo2Store).
//!
//! * Our identity key pair and registration id are created on the first open (by the caller's
//!   closure) and kept; later opens load them.
//! * Records are stored as the blobs of their `serialize` methods; libsignal-v3 (OMEMO 0.3) and
//!   OMEMO 2 prekeys, signed prekeys and sessions live in the same tables under different
//!   namespaces, so their id spaces are separate.
//! * Journal mode WAL, `synchronous=FULL` (a write returned is on disk), `secure_delete=ON`
//!   (removed one-time prekeys and replaced session blobs are overwritten in the database
//!   file), every write in an `IMMEDIATE` transaction, a busy timeout for concurrent
//!   processes. On Unix a new database file is created with mode `0600`; SQLite gives the
//!   `-wal`/`-shm` files the same permissions.
//! * Blobs are copied out of SQLite into [`Zeroizing`] buffers before parsing. (SQLite's own
//!   page cache and the WAL file can still hold copies; see the module's limits below.)
//! * The schema is versioned (`schema_version` table, one row per applied migration); a
//!   database written by a newer schema is refused rather than misread.
//!
//! A corrupt blob yields [`SignalError::CorruptRecord`] naming the record; database failures
//! are [`SignalError::Store`]. Nothing panics on bad data.
//!
//! Limits: SQLite's page cache and freed WAL frames are not zeroized (the WAL is reused and
//! overwritten, and truncated on [`SqliteSignalStore::checkpoint`]); the trust policy is runtime
//! configuration, not persisted; each trait call is its own transaction, so a crash between
//! the calls of one [`crate::cipher::SessionCipher`] operation can leave e.g. a consumed
//! one-time prekey in place (harmless: it is removed on the next use or by rotation).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand_core::CryptoRngCore;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};
use zeroize::Zeroizing;

use super::memory::TrustPolicy;
use super::{Address, Direction, IdentityKeyStore, PreKeyStore, SessionStore, SignedPreKeyStore};
use crate::error::{Result, SignalError};
use crate::keys::{IdentityKeyPair, PublicKey};
use crate::omemo2::store::{Omemo2SignedPreKey, Omemo2Store, Omemo2Trust};
use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
use crate::session::SessionRecord;

/// Namespace of libsignal-v3 (OMEMO 0.3) records.
const NS_SIGNAL: &str = "signal";
/// Namespace of OMEMO 2 records.
const NS_OMEMO2: &str = "omemo2";
/// Counter name of [`Omemo2Store::omemo2_last_prekey_id`].
const COUNTER_OMEMO2_LAST_PREKEY: &str = "omemo2_last_prekey_id";

/// Migrations; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE local_identity (
         id INTEGER PRIMARY KEY CHECK (id = 0),
         key_pair BLOB NOT NULL,
         registration_id INTEGER NOT NULL
     );
     CREATE TABLE identities (
         name TEXT NOT NULL,
         device_id INTEGER NOT NULL,
         public_key BLOB NOT NULL,
         PRIMARY KEY (name, device_id)
     );
     CREATE TABLE omemo2_identities (
         name TEXT NOT NULL,
         device_id INTEGER NOT NULL,
         identity BLOB NOT NULL,
         trust INTEGER NOT NULL,
         PRIMARY KEY (name, device_id)
     );
     CREATE TABLE prekeys (
         ns TEXT NOT NULL,
         id INTEGER NOT NULL,
         record BLOB NOT NULL,
         PRIMARY KEY (ns, id)
     );
     CREATE TABLE signed_prekeys (
         ns TEXT NOT NULL,
         id INTEGER NOT NULL,
         record BLOB NOT NULL,
         PRIMARY KEY (ns, id)
     );
     CREATE TABLE sessions (
         ns TEXT NOT NULL,
         name TEXT NOT NULL,
         device_id INTEGER NOT NULL,
         record BLOB NOT NULL,
         PRIMARY KEY (ns, name, device_id)
     );
     CREATE TABLE counters (
         name TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     );",
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

fn db(e: rusqlite::Error) -> SignalError {
    SignalError::Store(format!("sqlite: {e}"))
}

/// A deserialization failure of a stored blob, as [`SignalError::CorruptRecord`] with context.
fn corrupt(what: &str, e: SignalError) -> SignalError {
    match e {
        SignalError::CorruptRecord(why) => SignalError::CorruptRecord(format!("{what}: {why}")),
        other => SignalError::CorruptRecord(format!("{what}: {other}")),
    }
}

/// Column `idx` as a blob copied into a zeroizing buffer.
fn blob(row: &Row<'_>, idx: usize) -> rusqlite::Result<Zeroizing<Vec<u8>>> {
    match row.get_ref(idx)? {
        ValueRef::Blob(b) => Ok(Zeroizing::new(b.to_vec())),
        other => Err(rusqlite::Error::InvalidColumnType(
            idx,
            "blob".into(),
            other.data_type(),
        )),
    }
}

/// Column `idx` as a `u32` (ids are stored as SQLite integers).
fn u32_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(idx)?;
    u32::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

/// SQLite-backed storage for identities, prekeys, signed prekeys and sessions (libsignal v3 /
/// OMEMO 0.3 through the traits of [`crate::store`], OMEMO 2 through [`Omemo2Store`]).
///
/// `Send + Sync`: the connection sits behind a mutex.
pub struct SqliteSignalStore {
    conn: Mutex<Connection>,
    identity: IdentityKeyPair,
    registration_id: u32,
    policy: TrustPolicy,
}

impl core::fmt::Debug for SqliteSignalStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SqliteSignalStore")
            .field("identity", self.identity.public_key())
            .field("registration_id", &self.registration_id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SqliteSignalStore {
    /// Opens (creating if needed) the database at `path`. On the first open `new_identity`
    /// is called for our identity key pair and registration id, which are stored; later
    /// opens load the stored ones and do not call it.
    pub fn open(
        path: impl AsRef<Path>,
        new_identity: impl FnOnce() -> (IdentityKeyPair, u32),
    ) -> Result<Self> {
        let path = path.as_ref();
        create_private_file(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        Self::init(conn, Some(new_identity))
    }

    /// Opens the database at `path`, generating a fresh identity and registration id
    /// (1..=16380, as [`InMemoryStore::generate`](super::memory::InMemoryStore::generate))
    /// on the first open.
    pub fn open_or_generate(path: impl AsRef<Path>, rng: &mut impl CryptoRngCore) -> Result<Self> {
        Self::open(path, || {
            let identity = IdentityKeyPair::generate(rng);
            let registration_id = 1 + rng.next_u32() % 16380;
            (identity, registration_id)
        })
    }

    /// Opens an existing database that already holds an identity; [`SignalError::Store`] if
    /// the file does not exist or has no identity.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path.as_ref(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        Self::init(conn, None::<fn() -> (IdentityKeyPair, u32)>)
    }

    /// A store in a private in-memory database (tests, ephemeral clients).
    pub fn open_in_memory(identity: IdentityKeyPair, registration_id: u32) -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(db)?;
        Self::init(conn, Some(move || (identity, registration_id)))
    }

    fn init(
        mut conn: Connection,
        new_identity: Option<impl FnOnce() -> (IdentityKeyPair, u32)>,
    ) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
        // journal_mode returns the resulting mode ("memory" for in-memory databases).
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA secure_delete = ON;")
            .map_err(db)?;
        migrate(&mut conn)?;

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let stored = tx
            .query_row(
                "SELECT key_pair, registration_id FROM local_identity WHERE id = 0",
                [],
                |r| Ok((blob(r, 0)?, u32_col(r, 1)?)),
            )
            .optional()
            .map_err(db)?;
        let (identity, registration_id) = match (stored, new_identity) {
            (Some((bytes, registration_id)), _) => {
                let identity = IdentityKeyPair::deserialize(&bytes)
                    .map_err(|e| corrupt("stored identity key pair", e))?;
                (identity, registration_id)
            }
            (None, Some(make)) => {
                let (identity, registration_id) = make();
                tx.execute(
                    "INSERT INTO local_identity (id, key_pair, registration_id) VALUES (0, ?1, ?2)",
                    rusqlite::params![&identity.serialize()[..], registration_id],
                )
                .map_err(db)?;
                (identity, registration_id)
            }
            (None, None) => {
                return Err(SignalError::Store(
                    "database holds no identity key pair".into(),
                ));
            }
        };
        tx.commit().map_err(db)?;
        Ok(SqliteSignalStore {
            conn: Mutex::new(conn),
            identity,
            registration_id,
            policy: TrustPolicy::default(),
        })
    }

    /// Sets the trust policy (runtime configuration; not stored, [`TrustPolicy::default`]
    /// after each open).
    pub fn set_trust_policy(&mut self, policy: TrustPolicy) {
        self.policy = policy;
    }

    /// The trust policy.
    pub fn trust_policy(&self) -> TrustPolicy {
        self.policy
    }

    /// Explicitly trusts (and stores) an identity for an address.
    pub fn set_trusted(&mut self, address: &Address, identity: PublicKey) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO identities (name, device_id, public_key) VALUES (?1, ?2, ?3)",
                rusqlite::params![address.name, address.device_id, &identity.serialize()[..]],
            )
            .map(drop)
        })
    }

    /// Forgets a stored identity.
    pub fn forget_identity(&mut self, address: &Address) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM identities WHERE name = ?1 AND device_id = ?2",
                rusqlite::params![address.name, address.device_id],
            )
            .map(drop)
        })
    }

    /// Moves the WAL into the database file and truncates it (e.g. before a backup or on
    /// shutdown). Done by SQLite automatically as well; this makes it explicit.
    pub fn checkpoint(&self) -> Result<()> {
        let conn = self.conn()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(db)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        let conn = self.conn()?;
        schema_version(&conn)
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| SignalError::Store("connection mutex poisoned".into()))
    }

    /// Runs `f` in an immediate transaction and commits.
    fn write<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self
            .conn
            .get_mut()
            .map_err(|_| SignalError::Store("connection mutex poisoned".into()))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let out = f(&tx).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// One blob by a query with parameters.
    fn read_blob(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(sql).map_err(db)?;
        stmt.query_row(params, |r| blob(r, 0))
            .optional()
            .map_err(db)
    }

    /// All blobs of a query.
    fn read_blobs(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Zeroizing<Vec<u8>>>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(sql).map_err(db)?;
        let rows = stmt.query_map(params, |r| blob(r, 0)).map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db)
    }

    /// All `u32`s of a query.
    fn read_ids(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<u32>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(sql).map_err(db)?;
        let rows = stmt.query_map(params, |r| u32_col(r, 0)).map_err(db)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db)
    }

    fn exec(&mut self, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(sql)?;
            stmt.execute(params).map(drop)
        })
    }

    // Namespaced record tables, shared by the v3 and OMEMO 2 implementations.

    fn load_pre_key_blob(&self, ns: &str, id: u32) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.read_blob(
            "SELECT record FROM prekeys WHERE ns = ?1 AND id = ?2",
            rusqlite::params![ns, id],
        )
    }

    fn store_pre_key_blob(&mut self, ns: &str, id: u32, record: &[u8]) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO prekeys (ns, id, record) VALUES (?1, ?2, ?3)",
            rusqlite::params![ns, id, record],
        )
    }

    fn remove_pre_key_in(&mut self, ns: &str, id: u32) -> Result<()> {
        self.exec(
            "DELETE FROM prekeys WHERE ns = ?1 AND id = ?2",
            rusqlite::params![ns, id],
        )
    }

    fn pre_key_ids_in(&self, ns: &str) -> Result<Vec<u32>> {
        self.read_ids("SELECT id FROM prekeys WHERE ns = ?1 ORDER BY id", [ns])
    }

    fn load_signed_pre_key_blob(&self, ns: &str, id: u32) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.read_blob(
            "SELECT record FROM signed_prekeys WHERE ns = ?1 AND id = ?2",
            rusqlite::params![ns, id],
        )
    }

    fn store_signed_pre_key_blob(&mut self, ns: &str, id: u32, record: &[u8]) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO signed_prekeys (ns, id, record) VALUES (?1, ?2, ?3)",
            rusqlite::params![ns, id, record],
        )
    }

    fn remove_signed_pre_key_in(&mut self, ns: &str, id: u32) -> Result<()> {
        self.exec(
            "DELETE FROM signed_prekeys WHERE ns = ?1 AND id = ?2",
            rusqlite::params![ns, id],
        )
    }

    fn signed_pre_key_blobs(&self, ns: &str) -> Result<Vec<Zeroizing<Vec<u8>>>> {
        self.read_blobs(
            "SELECT record FROM signed_prekeys WHERE ns = ?1 ORDER BY id",
            [ns],
        )
    }

    fn load_session_blob(&self, ns: &str, address: &Address) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.read_blob(
            "SELECT record FROM sessions WHERE ns = ?1 AND name = ?2 AND device_id = ?3",
            rusqlite::params![ns, address.name, address.device_id],
        )
    }

    fn store_session_blob(&mut self, ns: &str, address: &Address, record: &[u8]) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO sessions (ns, name, device_id, record) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![ns, address.name, address.device_id, record],
        )
    }

    fn delete_session_in(&mut self, ns: &str, address: &Address) -> Result<()> {
        self.exec(
            "DELETE FROM sessions WHERE ns = ?1 AND name = ?2 AND device_id = ?3",
            rusqlite::params![ns, address.name, address.device_id],
        )
    }

    fn session_devices_in(&self, ns: &str, name: &str) -> Result<Vec<u32>> {
        self.read_ids(
            "SELECT device_id FROM sessions WHERE ns = ?1 AND name = ?2 ORDER BY device_id",
            rusqlite::params![ns, name],
        )
    }
}

/// Creates `path` with mode 0600 if it does not exist (Unix), so the database and its WAL
/// are private to the user from the start.
fn create_private_file(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(SignalError::Store(format!(
                "creating {}: {e}",
                path.display()
            ))),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

fn schema_version(conn: &Connection) -> Result<u32> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .map_err(db)?;
    u32::try_from(v.unwrap_or(0))
        .map_err(|_| SignalError::Store(format!("bad schema version {v:?}")))
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))
         );",
    )
    .map_err(db)?;
    let current = schema_version(&tx)?;
    if current > SCHEMA_VERSION {
        return Err(SignalError::Store(format!(
            "database schema version {current} is newer than this build supports ({SCHEMA_VERSION})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

impl IdentityKeyStore for SqliteSignalStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        Ok(self.identity.clone())
    }

    fn local_registration_id(&self) -> Result<u32> {
        Ok(self.registration_id)
    }

    fn save_identity(&mut self, address: &Address, identity: &PublicKey) -> Result<bool> {
        let new = identity.serialize();
        self.write(|tx| {
            let previous: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT public_key FROM identities WHERE name = ?1 AND device_id = ?2",
                )?
                .query_row(rusqlite::params![address.name, address.device_id], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO identities (name, device_id, public_key) VALUES (?1, ?2, ?3)",
            )?
            .execute(rusqlite::params![address.name, address.device_id, &new[..]])?;
            Ok(previous.is_some_and(|p| p[..] != new[..]))
        })
    }

    fn is_trusted_identity(
        &self,
        address: &Address,
        identity: &PublicKey,
        _direction: Direction,
    ) -> Result<bool> {
        // As InMemoryStore: TrustAll does not look at (or fail on) the stored identity.
        if self.policy == TrustPolicy::TrustAll {
            return Ok(true);
        }
        Ok(match (self.policy, self.get_identity(address)?) {
            (_, Some(stored)) => stored == *identity,
            (TrustPolicy::TrustOnFirstUse, None) => true,
            (TrustPolicy::ExplicitOnly | TrustPolicy::TrustAll, None) => false,
        })
    }

    fn get_identity(&self, address: &Address) -> Result<Option<PublicKey>> {
        let bytes = self.read_blob(
            "SELECT public_key FROM identities WHERE name = ?1 AND device_id = ?2",
            rusqlite::params![address.name, address.device_id],
        )?;
        bytes
            .map(|b| {
                PublicKey::deserialize_exact(&b)
                    .map_err(|e| corrupt(&format!("stored identity of {address}"), e))
            })
            .transpose()
    }
}

impl PreKeyStore for SqliteSignalStore {
    fn load_pre_key(&self, id: u32) -> Result<Option<PreKeyRecord>> {
        self.load_pre_key_blob(NS_SIGNAL, id)?
            .map(|b| PreKeyRecord::deserialize(&b).map_err(|e| corrupt(&format!("prekey {id}"), e)))
            .transpose()
    }

    fn store_pre_key(&mut self, record: &PreKeyRecord) -> Result<()> {
        self.store_pre_key_blob(NS_SIGNAL, record.id, &record.serialize())
    }

    fn remove_pre_key(&mut self, id: u32) -> Result<()> {
        self.remove_pre_key_in(NS_SIGNAL, id)
    }

    fn pre_key_ids(&self) -> Result<Vec<u32>> {
        self.pre_key_ids_in(NS_SIGNAL)
    }
}

impl SignedPreKeyStore for SqliteSignalStore {
    fn load_signed_pre_key(&self, id: u32) -> Result<Option<SignedPreKeyRecord>> {
        self.load_signed_pre_key_blob(NS_SIGNAL, id)?
            .map(|b| {
                SignedPreKeyRecord::deserialize(&b)
                    .map_err(|e| corrupt(&format!("signed prekey {id}"), e))
            })
            .transpose()
    }

    fn store_signed_pre_key(&mut self, record: &SignedPreKeyRecord) -> Result<()> {
        self.store_signed_pre_key_blob(NS_SIGNAL, record.id, &record.serialize())
    }

    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()> {
        self.remove_signed_pre_key_in(NS_SIGNAL, id)
    }

    fn list_signed_pre_keys(&self) -> Result<Vec<SignedPreKeyRecord>> {
        self.signed_pre_key_blobs(NS_SIGNAL)?
            .iter()
            .map(|b| SignedPreKeyRecord::deserialize(b).map_err(|e| corrupt("signed prekey", e)))
            .collect()
    }
}

impl SessionStore for SqliteSignalStore {
    fn load_session(&self, address: &Address) -> Result<Option<SessionRecord>> {
        self.load_session_blob(NS_SIGNAL, address)?
            .map(|b| {
                SessionRecord::deserialize(&b)
                    .map_err(|e| corrupt(&format!("session with {address}"), e))
            })
            .transpose()
    }

    fn store_session(&mut self, address: &Address, record: &SessionRecord) -> Result<()> {
        self.store_session_blob(NS_SIGNAL, address, &record.serialize())
    }

    fn delete_session(&mut self, address: &Address) -> Result<()> {
        self.delete_session_in(NS_SIGNAL, address)
    }

    fn sub_device_sessions(&self, name: &str) -> Result<Vec<u32>> {
        self.session_devices_in(NS_SIGNAL, name)
    }
}

impl Omemo2Store for SqliteSignalStore {
    fn omemo2_signed_prekey(&self, id: u32) -> Result<Option<Omemo2SignedPreKey>> {
        self.load_signed_pre_key_blob(NS_OMEMO2, id)?
            .map(|b| {
                Omemo2SignedPreKey::deserialize(&b)
                    .map_err(|e| corrupt(&format!("OMEMO 2 signed prekey {id}"), e))
            })
            .transpose()
    }

    fn omemo2_store_signed_prekey(&mut self, spk: &Omemo2SignedPreKey) -> Result<()> {
        self.store_signed_pre_key_blob(NS_OMEMO2, spk.id, &spk.serialize())
    }

    fn omemo2_remove_signed_prekey(&mut self, id: u32) -> Result<()> {
        self.remove_signed_pre_key_in(NS_OMEMO2, id)
    }

    fn omemo2_signed_prekeys(&self) -> Result<Vec<Omemo2SignedPreKey>> {
        self.signed_pre_key_blobs(NS_OMEMO2)?
            .iter()
            .map(|b| {
                Omemo2SignedPreKey::deserialize(b).map_err(|e| corrupt("OMEMO 2 signed prekey", e))
            })
            .collect()
    }

    fn omemo2_prekey(&self, id: u32) -> Result<Option<PreKeyRecord>> {
        self.load_pre_key_blob(NS_OMEMO2, id)?
            .map(|b| {
                PreKeyRecord::deserialize(&b)
                    .map_err(|e| corrupt(&format!("OMEMO 2 prekey {id}"), e))
            })
            .transpose()
    }

    fn omemo2_store_prekey(&mut self, prekey: &PreKeyRecord) -> Result<()> {
        self.store_pre_key_blob(NS_OMEMO2, prekey.id, &prekey.serialize())
    }

    fn omemo2_remove_prekey(&mut self, id: u32) -> Result<()> {
        self.remove_pre_key_in(NS_OMEMO2, id)
    }

    fn omemo2_prekey_ids(&self) -> Result<Vec<u32>> {
        self.pre_key_ids_in(NS_OMEMO2)
    }

    fn omemo2_last_prekey_id(&self) -> Result<u32> {
        let conn = self.conn()?;
        let v: Option<i64> = conn
            .prepare_cached("SELECT value FROM counters WHERE name = ?1")
            .map_err(db)?
            .query_row([COUNTER_OMEMO2_LAST_PREKEY], |r| r.get(0))
            .optional()
            .map_err(db)?;
        v.map_or(Ok(0), |v| {
            u32::try_from(v).map_err(|_| {
                SignalError::CorruptRecord(format!("OMEMO 2 last prekey id {v} out of range"))
            })
        })
    }

    fn omemo2_set_last_prekey_id(&mut self, id: u32) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO counters (name, value) VALUES (?1, ?2)",
            rusqlite::params![COUNTER_OMEMO2_LAST_PREKEY, id],
        )
    }

    fn omemo2_load_session(&self, address: &Address) -> Result<Option<Vec<u8>>> {
        // The trait hands out a plain Vec (the caller wraps it, see `store::load_record`).
        Ok(self
            .load_session_blob(NS_OMEMO2, address)?
            .map(|b| b.to_vec()))
    }

    fn omemo2_store_session(&mut self, address: &Address, record: &[u8]) -> Result<()> {
        self.store_session_blob(NS_OMEMO2, address, record)
    }

    fn omemo2_delete_session(&mut self, address: &Address) -> Result<()> {
        self.delete_session_in(NS_OMEMO2, address)
    }

    fn omemo2_session_devices(&self, bare_jid: &str) -> Result<Vec<u32>> {
        self.session_devices_in(NS_OMEMO2, bare_jid)
    }

    fn omemo2_identity(&self, address: &Address) -> Result<Option<([u8; 32], Omemo2Trust)>> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached(
                "SELECT identity, trust FROM omemo2_identities WHERE name = ?1 AND device_id = ?2",
            )
            .map_err(db)?
            .query_row(rusqlite::params![address.name, address.device_id], |r| {
                Ok((blob(r, 0)?, r.get::<_, i64>(1)?))
            })
            .optional()
            .map_err(db)?;
        let Some((ik, trust)) = row else {
            return Ok(None);
        };
        let what = format!("OMEMO 2 identity of {address}");
        let ik: [u8; 32] = ik[..]
            .try_into()
            .map_err(|_| SignalError::CorruptRecord(format!("{what}: length {}", ik.len())))?;
        let trust = u8::try_from(trust)
            .map_err(|_| SignalError::CorruptRecord(format!("{what}: trust code {trust}")))
            .and_then(|c| Omemo2Trust::from_code(c).map_err(|e| corrupt(&what, e)))?;
        Ok(Some((ik, trust)))
    }

    fn omemo2_store_identity(
        &mut self,
        address: &Address,
        identity: &[u8; 32],
        trust: Omemo2Trust,
    ) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO omemo2_identities (name, device_id, identity, trust)
             VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                address.name,
                address.device_id,
                &identity[..],
                trust.to_code()
            ],
        )
    }
}
