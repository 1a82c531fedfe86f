//! `HashMap`-based store for tests. Same semantics as the SQLite backend.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::BlockingStore;
use crate::{
    AccountStore, Credentials, OfflineMessage, OfflineStore, Result, RosterItem, RosterStore,
    Store, StoreError, domain_of,
};
use crate::{
    PepItem, PepNodeConfig, PepStore, PrivateStore, PushRegistration, PushStore, VcardStore,
    effective_max,
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
    /// (owner, node) → config and items oldest first.
    pep: BTreeMap<(String, String), (PepNodeConfig, Vec<PepItem>)>,
    vcards: HashMap<String, String>,
    /// (owner, namespace) → element (XEP-0049).
    private_xml: BTreeMap<(String, String), String>,
    /// owner → push registrations oldest first (XEP-0357).
    push: HashMap<String, Vec<PushRegistration>>,
    /// owner → blocked JIDs (XEP-0191).
    blocklists: HashMap<String, std::collections::BTreeSet<String>>,
    /// owner → archived messages in archive order (XEP-0313).
    archives: HashMap<String, Vec<crate::ArchivedMessage>>,
    archive_prefs: HashMap<String, crate::ArchivePrefs>,
    /// id → provider.
    providers: BTreeMap<String, crate::Provider>,
    provider_audit: Vec<crate::AuditEntry>,
    consent: HashMap<String, crate::Consent>,
    consent_version: i64,
    /// Abuse reports, oldest first (ids increase).
    reports: Vec<crate::AbuseReport>,
    next_report_id: i64,
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
        g.pep.retain(|(o, _), _| o != jid);
        g.vcards.remove(jid);
        g.private_xml.retain(|(o, _), _| o != jid);
        g.push.remove(jid);
        g.blocklists.remove(jid);
        g.reports.retain(|r| r.reporter != jid);
        g.archives.remove(jid);
        g.archive_prefs.remove(jid);
        if g.consent.remove(jid).is_some() {
            g.consent_version += 1;
        }
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
        self.push_offline(owner, stanza, stamp_ms, limit, None)
    }

    fn offline_fetch_after(
        &self,
        owner: &str,
        after: i64,
        max: usize,
    ) -> Result<Vec<OfflineMessage>> {
        Ok(self
            .lock()
            .offline
            .get(owner)
            .map(|q| {
                q.iter()
                    .filter(|m| m.id > after)
                    .take(max)
                    .cloned()
                    .collect()
            })
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

    fn offline_kept(&self, owner: &str, ids: &[i64]) -> Result<Vec<i64>> {
        let g = self.lock();
        let q = g.offline.get(owner);
        Ok(ids
            .iter()
            .copied()
            .filter(|id| q.is_some_and(|q| q.iter().any(|m| m.id == *id)))
            .collect())
    }

    fn offline_count(&self, owner: &str) -> Result<usize> {
        Ok(self.lock().offline.get(owner).map_or(0, VecDeque::len))
    }

    fn offline_reserve_id(&self) -> Result<i64> {
        let mut g = self.lock();
        g.next_offline_id += 1;
        Ok(g.next_offline_id)
    }
}

impl MemoryStore {
    /// [`OfflineStore::offline_push`], under `id` when given (reserved before): kept in id
    /// order, as SQLite's `ORDER BY id` returns them.
    fn push_offline(
        &self,
        owner: &str,
        stanza: &str,
        stamp_ms: i64,
        limit: usize,
        id: Option<i64>,
    ) -> Result<i64> {
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
        let id = match id {
            Some(id) => id,
            None => {
                g.next_offline_id += 1;
                g.next_offline_id
            }
        };
        let q = g.offline.entry(owner.to_owned()).or_default();
        let at = q.partition_point(|m| m.id < id);
        if q.get(at).is_some_and(|m| m.id == id) {
            return Err(StoreError::AlreadyExists(id.to_string()));
        }
        q.insert(
            at,
            OfflineMessage {
                id,
                stanza: stanza.to_owned(),
                stamp_ms,
            },
        );
        Ok(id)
    }
}

fn prune(items: &mut Vec<PepItem>, keep: usize) {
    if items.len() > keep {
        items.drain(..items.len() - keep);
    }
}

impl PepStore for MemoryStore {
    fn pep_node(&self, owner: &str, node: &str) -> Result<Option<PepNodeConfig>> {
        let key = (owner.to_owned(), node.to_owned());
        Ok(self.lock().pep.get(&key).map(|(c, _)| c.clone()))
    }

    fn pep_nodes(&self, owner: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .pep
            .keys()
            .filter(|(o, _)| o == owner)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn pep_configure(
        &self,
        owner: &str,
        node: &str,
        config: &PepNodeConfig,
        max_nodes: usize,
        limit_items: usize,
    ) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        let key = (owner.to_owned(), node.to_owned());
        if !g.pep.contains_key(&key)
            && g.pep.keys().filter(|(o, _)| o == owner).count() >= max_nodes
        {
            return Err(StoreError::QuotaExceeded {
                account: owner.to_owned(),
                limit: max_nodes,
            });
        }
        let entry = g
            .pep
            .entry(key)
            .or_insert_with(|| (config.clone(), Vec::new()));
        entry.0 = config.clone();
        prune(&mut entry.1, effective_max(config, limit_items));
        Ok(())
    }

    fn pep_delete_node(&self, owner: &str, node: &str) -> Result<bool> {
        let key = (owner.to_owned(), node.to_owned());
        Ok(self.lock().pep.remove(&key).is_some())
    }

    fn pep_publish(&self, owner: &str, node: &str, item: &PepItem, keep: usize) -> Result<()> {
        let key = (owner.to_owned(), node.to_owned());
        let mut g = self.lock();
        let Some((_, items)) = g.pep.get_mut(&key) else {
            return Err(StoreError::NotFound(format!("{owner} node {node}")));
        };
        items.retain(|i| i.id != item.id);
        items.push(item.clone());
        prune(items, keep);
        Ok(())
    }

    fn pep_items(
        &self,
        owner: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<usize>,
    ) -> Result<Vec<PepItem>> {
        let key = (owner.to_owned(), node.to_owned());
        let g = self.lock();
        let mut v: Vec<PepItem> = g
            .pep
            .get(&key)
            .map(|(_, items)| {
                items
                    .iter()
                    .filter(|i| ids.is_none_or(|ids| ids.contains(&i.id)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(m) = max {
            prune(&mut v, m);
        }
        Ok(v)
    }

    fn pep_retract(&self, owner: &str, node: &str, id: &str) -> Result<bool> {
        let key = (owner.to_owned(), node.to_owned());
        let mut g = self.lock();
        let Some((_, items)) = g.pep.get_mut(&key) else {
            return Ok(false);
        };
        let before = items.len();
        items.retain(|i| i.id != id);
        Ok(items.len() != before)
    }
}

impl VcardStore for MemoryStore {
    fn vcard(&self, owner: &str) -> Result<Option<String>> {
        Ok(self.lock().vcards.get(owner).cloned())
    }

    fn set_vcard(&self, owner: &str, vcard: Option<&str>) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        match vcard {
            Some(v) => g.vcards.insert(owner.to_owned(), v.to_owned()),
            None => g.vcards.remove(owner),
        };
        Ok(())
    }
}

impl PrivateStore for MemoryStore {
    fn private_xml(&self, owner: &str, ns: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .private_xml
            .get(&(owner.to_owned(), ns.to_owned()))
            .cloned())
    }

    fn set_private_xml(
        &self,
        owner: &str,
        writes: &[(String, Option<String>)],
        max_namespaces: usize,
    ) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        let held = g.private_xml.keys().filter(|(o, _)| o == owner).count();
        let mut after = held;
        let mut seen = std::collections::HashSet::new();
        for (ns, _) in writes {
            if !seen.insert(ns) {
                continue;
            }
            let has = g.private_xml.contains_key(&(owner.to_owned(), ns.clone()));
            // The last write of a namespace decides whether it is held.
            let keeps = writes
                .iter()
                .rev()
                .find(|(n, _)| n == ns)
                .is_some_and(|(_, x)| x.is_some());
            match (has, keeps) {
                (false, true) => after += 1,
                (true, false) => after -= 1,
                _ => {}
            }
        }
        if after > max_namespaces {
            return Err(StoreError::QuotaExceeded {
                account: owner.to_owned(),
                limit: max_namespaces,
            });
        }
        for (ns, xml) in writes {
            let key = (owner.to_owned(), ns.clone());
            match xml {
                Some(x) => g.private_xml.insert(key, x.clone()),
                None => g.private_xml.remove(&key),
            };
        }
        Ok(())
    }
}

impl PushStore for MemoryStore {
    fn push_enable(&self, owner: &str, reg: &PushRegistration, max: usize) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        let regs = g.push.entry(owner.to_owned()).or_default();
        if let Some(r) = regs
            .iter_mut()
            .find(|r| r.jid == reg.jid && r.node == reg.node)
        {
            r.options = reg.options.clone();
            return Ok(());
        }
        if regs.len() >= max {
            return Err(StoreError::QuotaExceeded {
                account: owner.to_owned(),
                limit: max,
            });
        }
        regs.push(reg.clone());
        Ok(())
    }

    fn push_disable(&self, owner: &str, jid: &str, node: Option<&str>) -> Result<usize> {
        let mut g = self.lock();
        let Some(regs) = g.push.get_mut(owner) else {
            return Ok(0);
        };
        let before = regs.len();
        regs.retain(|r| !(r.jid == jid && node.is_none_or(|n| r.node == n)));
        Ok(before - regs.len())
    }

    fn push_registrations(&self, owner: &str) -> Result<Vec<PushRegistration>> {
        Ok(self.lock().push.get(owner).cloned().unwrap_or_default())
    }
}

impl Inner {
    /// The provider other than `p` that holds one of `p`'s domains, if any, as the error.
    fn domain_conflict(&self, p: &crate::Provider) -> Result<()> {
        for other in self.providers.values().filter(|o| o.id != p.id) {
            if let Some(d) = p.domains.iter().find(|d| other.domains.contains(d)) {
                return Err(StoreError::Conflict(format!(
                    "the domain {d} belongs to the provider {}",
                    other.id
                )));
            }
        }
        Ok(())
    }

    fn audit(&mut self, provider: &str, n: &crate::AuditNote<'_>) {
        let seq = self.provider_audit.last().map_or(1, |e| e.seq + 1);
        self.provider_audit.push(crate::AuditEntry {
            seq,
            at_ms: n.at_ms,
            provider: provider.to_owned(),
            actor: n.actor.to_owned(),
            action: n.action.to_owned(),
            detail: n.detail.to_owned(),
        });
    }
}

impl crate::ProviderStore for MemoryStore {
    fn provider_add(&self, p: &crate::Provider, note: &crate::AuditNote<'_>) -> Result<()> {
        let mut g = self.lock();
        if g.providers.contains_key(&p.id) {
            return Err(StoreError::Conflict(format!(
                "the provider {} already exists",
                p.id
            )));
        }
        g.domain_conflict(p)?;
        g.providers.insert(p.id.clone(), p.clone());
        g.audit(&p.id, note);
        Ok(())
    }

    fn provider_update(&self, p: &crate::Provider, note: &crate::AuditNote<'_>) -> Result<()> {
        let mut g = self.lock();
        if !g.providers.contains_key(&p.id) {
            return Err(StoreError::NotFound(format!("provider {}", p.id)));
        }
        g.domain_conflict(p)?;
        g.providers.insert(p.id.clone(), p.clone());
        g.audit(&p.id, note);
        Ok(())
    }

    fn provider(&self, id: &str) -> Result<Option<crate::Provider>> {
        Ok(self.lock().providers.get(id).cloned())
    }

    fn providers(&self) -> Result<Vec<crate::Provider>> {
        Ok(self.lock().providers.values().cloned().collect())
    }

    fn provider_audit(
        &self,
        provider: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::AuditEntry>> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .provider_audit
            .iter()
            .rev()
            .filter(|e| provider.is_none_or(|p| e.provider == p))
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        Ok(v)
    }

    fn registry_version(&self) -> Result<i64> {
        Ok(self.lock().provider_audit.last().map_or(0, |e| e.seq))
    }
}

impl crate::ConsentStore for MemoryStore {
    fn consent(&self, owner: &str) -> Result<crate::Consent> {
        Ok(self.lock().consent.get(owner).cloned().unwrap_or_default())
    }

    fn set_consent(&self, owner: &str, consent: &crate::Consent) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        g.consent
            .insert(owner.to_owned(), consent.clone().normalized());
        g.consent_version += 1;
        Ok(())
    }

    fn consent_version(&self) -> Result<i64> {
        Ok(self.lock().consent_version)
    }
}

impl Store for MemoryStore {}

impl crate::ReportStore for MemoryStore {
    fn report_add(&self, report: &crate::AbuseReport) -> Result<i64> {
        let mut g = self.lock();
        if !g.accounts.contains_key(&report.reporter) {
            return Err(StoreError::NotFound(report.reporter.clone()));
        }
        g.reports.retain(|r| {
            !(r.reporter == report.reporter && r.reported == report.reported && r.closed.is_none())
        });
        g.next_report_id += 1;
        let id = g.next_report_id;
        g.reports.push(crate::AbuseReport {
            id,
            closed: None,
            ..report.clone()
        });
        Ok(id)
    }

    fn reports(&self, filter: &crate::ReportFilter) -> Result<Vec<crate::AbuseReport>> {
        let g = self.lock();
        let mut out: Vec<crate::AbuseReport> = g
            .reports
            .iter()
            .filter(|r| filter.provider.is_none() || r.provider == filter.provider)
            .filter(|r| !filter.open_only || r.closed.is_none())
            .filter(|r| filter.since_ms.is_none_or(|s| r.at_ms >= s))
            .cloned()
            .collect();
        if filter.limit > 0 && out.len() > filter.limit {
            out.drain(..out.len() - filter.limit);
        }
        Ok(out)
    }

    fn report(&self, id: i64) -> Result<Option<crate::AbuseReport>> {
        Ok(self.lock().reports.iter().find(|r| r.id == id).cloned())
    }

    fn reports_by_since(&self, reporter: &str, since_ms: i64) -> Result<usize> {
        let g = self.lock();
        Ok(g.reports
            .iter()
            .filter(|r| r.reporter == reporter && r.at_ms >= since_ms)
            .count())
    }

    fn report_counts(&self, provider: &str, since_ms: i64) -> Result<crate::ReportCounts> {
        let g = self.lock();
        let mine: Vec<&crate::AbuseReport> = g
            .reports
            .iter()
            .filter(|r| r.provider.as_deref() == Some(provider))
            .collect();
        let open: Vec<&&crate::AbuseReport> = mine.iter().filter(|r| r.closed.is_none()).collect();
        let reported: std::collections::BTreeSet<&str> =
            open.iter().map(|r| r.reported.as_str()).collect();
        Ok(crate::ReportCounts {
            open: open.len(),
            open_reported: reported.len(),
            recent: mine.iter().filter(|r| r.at_ms >= since_ms).count(),
        })
    }

    fn report_close(&self, id: i64, closure: &crate::ReportClosure) -> Result<()> {
        let mut g = self.lock();
        let Some(r) = g.reports.iter_mut().find(|r| r.id == id) else {
            return Err(StoreError::NotFound(format!("report {id}")));
        };
        if r.closed.is_some() {
            return Err(StoreError::Conflict(format!(
                "report {id} is already closed"
            )));
        }
        r.closed = Some(closure.clone());
        Ok(())
    }
}

impl crate::BatchWrite for MemoryStore {
    fn write_batch(&self, ops: Vec<crate::WriteOp>, done: crate::WriteDone) {
        use crate::ArchiveStore;
        let outcomes = ops
            .into_iter()
            .map(|op| match op {
                crate::WriteOp::Archive { owner, msg } => {
                    self.archive_append(&owner, &msg).map(|()| None)
                }
                crate::WriteOp::OfflinePush {
                    owner,
                    stanza,
                    stamp_ms,
                    limit,
                    id,
                } => self
                    .push_offline(&owner, &stanza, stamp_ms, limit, id)
                    .map(Some),
                crate::WriteOp::OfflineDelete { owner, ids } => {
                    self.offline_delete(&owner, &ids).map(|()| None)
                }
            })
            .collect();
        done(outcomes);
    }
}

impl BlockingStore for MemoryStore {
    fn blocklist(&self, owner: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .blocklists
            .get(owner)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn block(&self, owner: &str, jids: &[String]) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        g.blocklists
            .entry(owner.to_owned())
            .or_default()
            .extend(jids.iter().cloned());
        Ok(())
    }

    fn unblock(&self, owner: &str, jids: &[String]) -> Result<()> {
        let mut g = self.lock();
        if let Some(l) = g.blocklists.get_mut(owner) {
            for j in jids {
                l.remove(j);
            }
            if l.is_empty() {
                g.blocklists.remove(owner);
            }
        }
        Ok(())
    }

    fn unblock_all(&self, owner: &str) -> Result<()> {
        self.lock().blocklists.remove(owner);
        Ok(())
    }
}

impl crate::ArchiveStore for MemoryStore {
    fn archive_append(&self, owner: &str, msg: &crate::ArchivedMessage) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        let a = g.archives.entry(owner.to_owned()).or_default();
        if a.iter().any(|m| m.id == msg.id) {
            return Err(StoreError::AlreadyExists(msg.id.clone()));
        }
        let newest = a.last().map(|m| m.stamp_ms);
        let mut msg = msg.clone();
        msg.stamp_ms = newest.map_or(msg.stamp_ms, |n| n.max(msg.stamp_ms));
        a.push(msg);
        Ok(())
    }

    fn archive_query(
        &self,
        owner: &str,
        q: &crate::ArchiveQuery,
    ) -> Result<Option<crate::ArchivePage>> {
        let g = self.lock();
        let all = g.archives.get(owner).map(Vec::as_slice).unwrap_or(&[]);
        Ok(crate::archive::page_of(all, q))
    }

    fn archive_count(&self, owner: &str) -> Result<usize> {
        Ok(self.lock().archives.get(owner).map_or(0, Vec::len))
    }

    fn archive_get(
        &self,
        owner: &str,
        ids: &[String],
    ) -> Result<Option<Vec<crate::ArchivedMessage>>> {
        let g = self.lock();
        let all = g.archives.get(owner).map(Vec::as_slice).unwrap_or_default();
        let mut at = Vec::new();
        for id in ids {
            match all.iter().position(|m| &m.id == id) {
                Some(i) if !at.contains(&i) => at.push(i),
                Some(_) => {}
                None => return Ok(None),
            }
        }
        at.sort_unstable();
        Ok(Some(at.into_iter().map(|i| all[i].clone()).collect()))
    }

    fn archive_clear(&self, owner: &str) -> Result<()> {
        self.lock().archives.remove(owner);
        Ok(())
    }

    fn archive_expire(&self, before_ms: i64, max: usize) -> Result<usize> {
        let mut g = self.lock();
        // Oldest first across owners, as the SQLite backend does.
        let mut old: Vec<(i64, String, String)> = g
            .archives
            .iter()
            .flat_map(|(o, msgs)| {
                msgs.iter()
                    .filter(|m| m.stamp_ms < before_ms)
                    .map(move |m| (m.stamp_ms, o.clone(), m.id.clone()))
            })
            .collect();
        old.sort();
        old.truncate(max);
        for (_, owner, id) in &old {
            if let Some(msgs) = g.archives.get_mut(owner) {
                msgs.retain(|m| &m.id != id);
            }
        }
        Ok(old.len())
    }

    fn archive_prefs(&self, owner: &str) -> Result<crate::ArchivePrefs> {
        Ok(self
            .lock()
            .archive_prefs
            .get(owner)
            .cloned()
            .unwrap_or_default())
    }

    fn set_archive_prefs(&self, owner: &str, prefs: &crate::ArchivePrefs) -> Result<()> {
        let mut g = self.lock();
        if !g.accounts.contains_key(owner) {
            return Err(StoreError::NotFound(owner.to_owned()));
        }
        g.archive_prefs.insert(owner.to_owned(), prefs.clone());
        Ok(())
    }
}
