//! `HashMap`-based store for tests. Same semantics as the SQLite backend.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::{
    AccountStore, Credentials, OfflineMessage, OfflineStore, Result, RosterItem, RosterStore,
    Store, StoreError, domain_of,
};

#[derive(Default)]
struct Inner {
    accounts: HashMap<String, Credentials>,
    /// owner → contact → item (sorted by contact).
    rosters: HashMap<String, BTreeMap<String, RosterItem>>,
    /// owner → version; kept across account removal.
    roster_versions: HashMap<String, u64>,
    offline: HashMap<String, VecDeque<OfflineMessage>>,
    next_offline_id: i64,
}

/// In-memory store; everything is lost when it is dropped.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters for a test store; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AccountStore for MemoryStore {
    fn create_account(&self, jid: &str, creds: &Credentials) -> Result<()> {
        let mut g = self.lock();
        if g.accounts.contains_key(jid) {
            return Err(StoreError::AlreadyExists(jid.to_owned()));
        }
        g.accounts.insert(jid.to_owned(), creds.clone());
        Ok(())
    }

    fn remove_account(&self, jid: &str) -> Result<()> {
        let mut g = self.lock();
        if g.accounts.remove(jid).is_none() {
            return Err(StoreError::NotFound(jid.to_owned()));
        }
        g.rosters.remove(jid);
        g.offline.remove(jid);
        Ok(())
    }

    fn set_credentials(&self, jid: &str, creds: &Credentials) -> Result<()> {
        let mut g = self.lock();
        match g.accounts.get_mut(jid) {
            Some(c) => {
                *c = creds.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(jid.to_owned())),
        }
    }

    fn credentials(&self, jid: &str) -> Result<Option<Credentials>> {
        Ok(self.lock().accounts.get(jid).cloned())
    }

    fn account_exists(&self, jid: &str) -> Result<bool> {
        Ok(self.lock().accounts.contains_key(jid))
    }

    fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        let g = self.lock();
        let mut v: Vec<String> = g
            .accounts
            .keys()
            .filter(|j| domain.is_none_or(|d| domain_of(j) == d))
            .cloned()
            .collect();
        v.sort();
        Ok(v)
    }
}

impl RosterStore for MemoryStore {
    fn roster(&self, owner: &str) -> Result<(u64, Vec<RosterItem>)> {
        let g = self.lock();
        let ver = g.roster_versions.get(owner).copied().unwrap_or(0);
        let items = g
            .rosters
            .get(owner)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        Ok((ver, items))
    }

    fn roster_item(&self, owner: &str, contact: &str) -> Result<Option<RosterItem>> {
        Ok(self
            .lock()
            .rosters
            .get(owner)
            .and_then(|r| r.get(contact))
            .cloned())
    }

    fn roster_set(&self, owner: &str, item: &RosterItem) -> Result<u64> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        g.rosters
            .entry(owner.to_owned())
            .or_default()
            .insert(item.jid.clone(), item.clone());
        let v = g.roster_versions.entry(owner.to_owned()).or_insert(0);
        *v += 1;
        Ok(*v)
    }

    fn roster_remove(&self, owner: &str, contact: &str) -> Result<u64> {
        let mut g = self.lock();
        let removed = g
            .rosters
            .get_mut(owner)
            .and_then(|r| r.remove(contact))
            .is_some();
        let v = g.roster_versions.entry(owner.to_owned()).or_insert(0);
        if removed {
            *v += 1;
        }
        Ok(*v)
    }
}

impl OfflineStore for MemoryStore {
    fn offline_push(&self, owner: &str, stanza: &str, stamp_ms: i64, limit: usize) -> Result<i64> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        let queued = g.offline.get(owner).map_or(0, VecDeque::len);
        if queued >= limit {
            return Err(StoreError::QuotaExceeded {
                account: owner.to_owned(),
                limit,
            });
        }
        g.next_offline_id += 1;
        let id = g.next_offline_id;
        g.offline
            .entry(owner.to_owned())
            .or_default()
            .push_back(OfflineMessage {
                id,
                stanza: stanza.to_owned(),
                stamp_ms,
            });
        Ok(id)
    }

    fn offline_fetch(&self, owner: &str, max: usize) -> Result<Vec<OfflineMessage>> {
        Ok(self
            .lock()
            .offline
            .get(owner)
            .map(|q| q.iter().take(max).cloned().collect())
            .unwrap_or_default())
    }

    fn offline_delete(&self, owner: &str, ids: &[i64]) -> Result<()> {
        let mut g = self.lock();
        if let Some(q) = g.offline.get_mut(owner) {
            q.retain(|m| !ids.contains(&m.id));
            if q.is_empty() {
                g.offline.remove(owner);
            }
        }
        Ok(())
    }

    fn offline_count(&self, owner: &str) -> Result<usize> {
        Ok(self.lock().offline.get(owner).map_or(0, VecDeque::len))
    }
}

impl Store for MemoryStore {}
