//! Users' consent to third-party chats: off by default, then on for the providers each user
//! chooses, revocable at any time (DESIGN.md, boundary policy rule 1).

use strait_store::{Consent, InboxMode, ProviderStatus, Store, StoreError};

/// Why a consent change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("no provider {0} is registered")]
    UnknownProvider(String),
    #[error("the provider {0} is terminated; chats from it cannot be allowed")]
    Terminated(String),
    #[error("account {0} not found")]
    NoAccount(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ConsentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(jid) => ConsentError::NoAccount(jid),
            e => ConsentError::Store(e),
        }
    }
}

/// A change to a user's consent; what it leaves out stays as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentChange {
    pub enabled: Option<bool>,
    pub inbox: Option<InboxMode>,
    /// Providers to accept chats from.
    pub allow: Vec<String>,
    /// Providers to stop accepting chats from.
    pub deny: Vec<String>,
}

/// Applies `change` to the account's consent and returns the result. Allowing a provider
/// needs it registered and not terminated (a pending or suspended one may be chosen ahead:
/// its users still cannot reach anyone until its agreement is active).
pub fn change(
    store: &dyn Store,
    jid: &str,
    change: &ConsentChange,
    now_ms: i64,
) -> Result<Consent, ConsentError> {
    for id in &change.allow {
        match store.provider(id)? {
            None => return Err(ConsentError::UnknownProvider(id.clone())),
            Some(p) if p.status == ProviderStatus::Terminated => {
                return Err(ConsentError::Terminated(id.clone()));
            }
            Some(_) => {}
        }
    }
    if !store.account_exists(jid)? {
        return Err(ConsentError::NoAccount(jid.to_owned()));
    }
    let mut c = store.consent(jid)?;
    if let Some(on) = change.enabled {
        c.enabled = on;
    }
    if let Some(inbox) = change.inbox {
        c.inbox = inbox;
    }
    c.providers.extend(change.allow.iter().cloned());
    c.providers.retain(|p| !change.deny.contains(p));
    c.updated_ms = now_ms;
    let c = c.normalized();
    store.set_consent(jid, &c)?;
    Ok(c)
}

/// Entries the cache holds before it starts over (a bound on its memory, about 10 MB, whatever
/// addresses a sender tries).
const CACHE_ENTRIES: usize = 65_536;

/// Platform users' consent as the boundary last read it, so that a stanza that crosses does
/// not read the store (a blocking-pool hop and a query each time, before).
///
/// Kept right: the consent IQ of the running server updates the entry with its write; a change
/// made by another process (`strait user consent`) changes the store's
/// [`consent_version`](strait_store::ConsentStore::consent_version), and the server's registry
/// poll drops the whole cache within a second of it. A read that raced with either does not
/// put what it read into the cache: every change moves a generation, and a read's result is
/// kept only if the generation is the one it started under.
#[derive(Default)]
pub struct ConsentCache {
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    generation: u64,
    /// The store's consent version when the cache was last emptied for it.
    version: Option<i64>,
    map: std::collections::HashMap<String, std::sync::Arc<Consent>>,
}

impl ConsentCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, owner: &str) -> Option<std::sync::Arc<Consent>> {
        self.lock().map.get(owner).cloned()
    }

    /// The generation to hand back to [`ConsentCache::insert`] with what a read found.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps what a store read that started under `generation` found, unless something
    /// changed since.
    pub fn insert(&self, owner: &str, consent: Consent, generation: u64) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        if g.map.len() >= CACHE_ENTRIES {
            g.map.clear();
        }
        g.map.insert(owner.to_owned(), std::sync::Arc::new(consent));
    }

    /// The running server changed `owner`'s consent to `consent` (after its store write).
    pub fn set(&self, owner: &str, consent: Consent) {
        let mut g = self.lock();
        g.generation += 1;
        g.map.insert(owner.to_owned(), std::sync::Arc::new(consent));
    }

    /// Drops everything when the store's consent version is not the one last seen.
    pub fn sync(&self, version: i64) {
        let mut g = self.lock();
        if g.version != Some(version) {
            g.version = Some(version);
            g.generation += 1;
            g.map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(p: &str) -> Consent {
        Consent {
            enabled: true,
            providers: vec![p.into()],
            ..Consent::default()
        }
    }

    #[test]
    fn the_cache_never_keeps_a_read_that_raced_with_a_change() {
        let c = ConsentCache::default();
        c.sync(1);
        let g = c.generation();
        c.insert("a@p", on("acme"), g);
        assert!(c.get("a@p").unwrap().allows("acme"));
        // A read starts, the user changes their consent meanwhile: the read is not kept.
        let g = c.generation();
        c.set("a@p", Consent::default());
        c.insert("a@p", on("acme"), g);
        assert!(!c.get("a@p").unwrap().allows("acme"));
        // Another process changed some consent: everything goes, and a read that started
        // before is not kept either.
        let g = c.generation();
        c.sync(1);
        assert_eq!(c.len(), 1, "the same version keeps the cache");
        c.sync(2);
        assert!(c.is_empty());
        c.insert("b@p", on("acme"), g);
        assert!(c.get("b@p").is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = ConsentCache::default();
        for i in 0..CACHE_ENTRIES + 10 {
            c.insert(&format!("u{i}@p"), Consent::default(), c.generation());
        }
        assert!(c.len() <= CACHE_ENTRIES);
    }
    use strait_store::{
        AccountStore, AuditNote, ConsentStore, Credentials, MemoryStore, Provider, ProviderStore,
    };

    fn store() -> MemoryStore {
        let s = MemoryStore::new();
        let secret = strait_store::ScramSecret {
            salt: vec![1],
            iterations: 4096,
            stored_key: vec![2],
            server_key: vec![3],
        };
        let creds = Credentials {
            scram_sha1: None,
            scram_sha256: secret,
        };
        s.create_account("a@host.example", &creds).unwrap();
        let note = AuditNote {
            at_ms: 1,
            actor: "t",
            action: "add",
            detail: "",
        };
        s.provider_add(
            &Provider::new("acme", "Acme", vec!["acme.example".into()]),
            &note,
        )
        .unwrap();
        let mut gone = Provider::new("gone", "Gone", vec!["gone.example".into()]);
        gone.status = ProviderStatus::Terminated;
        s.provider_add(&gone, &note).unwrap();
        s
    }

    #[test]
    fn consent_changes_step_by_step_and_refuses_unknown_providers() {
        let s = store();
        let on = ConsentChange {
            enabled: Some(true),
            allow: vec!["acme".into()],
            ..Default::default()
        };
        let c = change(&s, "a@host.example", &on, 5).unwrap();
        assert!(c.allows("acme"));
        assert_eq!((c.inbox, c.updated_ms), (InboxMode::Separate, 5));
        let inbox = ConsentChange {
            inbox: Some(InboxMode::Combined),
            ..Default::default()
        };
        let c = change(&s, "a@host.example", &inbox, 6).unwrap();
        assert!(c.allows("acme"), "a change keeps what it leaves out");
        assert_eq!(c.inbox, InboxMode::Combined);
        let deny = ConsentChange {
            deny: vec!["acme".into()],
            ..Default::default()
        };
        assert!(
            !change(&s, "a@host.example", &deny, 7)
                .unwrap()
                .allows("acme")
        );
        assert_eq!(s.consent("a@host.example").unwrap().updated_ms, 7);

        let unknown = ConsentChange {
            allow: vec!["nope".into()],
            ..Default::default()
        };
        assert!(matches!(
            change(&s, "a@host.example", &unknown, 8),
            Err(ConsentError::UnknownProvider(p)) if p == "nope"
        ));
        let gone = ConsentChange {
            allow: vec!["gone".into()],
            ..Default::default()
        };
        assert!(matches!(
            change(&s, "a@host.example", &gone, 8),
            Err(ConsentError::Terminated(_))
        ));
        assert!(matches!(
            change(&s, "b@host.example", &on, 8),
            Err(ConsentError::NoAccount(_))
        ));
        assert_eq!(s.consent("a@host.example").unwrap().updated_ms, 7);
    }
}
