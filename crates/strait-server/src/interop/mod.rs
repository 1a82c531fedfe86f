//! The interop layer (DESIGN.md, "The interop model"; docs/interop.md): third-party providers
//! and their agreements, their users' logins, users' consent, and the boundary policy that
//! every stanza between parties passes.
//!
//! - [`registry`]: the rules of the provider registry (`strait provider …`);
//! - [`consent`]: users' choice of third-party chats (`strait user consent`, and the
//!   `urn:strait:interop:0` IQ in [`consent_iq`]);
//! - [`enlist`]: a provider's users log in with a token the provider signed (SASL
//!   OAUTHBEARER, RFC 7628, JWT checked against the provider's registered key set);
//! - [`boundary`]: the policy on stanzas that cross from one party to another.
//!
//! The running server holds a [`Snapshot`] of the registry, read again whenever the registry
//! changes (it polls the audit log's newest entry, [`POLL`]): `strait provider suspend`
//! takes effect within that interval, closing the provider's users' sessions.

pub mod boundary;
pub mod consent;
pub mod consent_iq;
pub mod enlist;
pub mod registry;

use crate::server::ServerState;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use strait_store::{Provider, ProviderStatus};
use strait_wire::negotiation::C2sConfig;
use strait_wire::{StreamError, StreamErrorCondition};

/// How often the running server looks for registry changes made outside it.
pub const POLL: Duration = Duration::from_secs(1);

/// The namespace of Strait's interop elements (consent, origin stamps).
pub const NS: &str = "urn:strait:interop:0";

/// The registry as the running server sees it.
#[derive(Default)]
pub struct Snapshot {
    /// The audit log's newest `seq` when this was read.
    pub version: i64,
    /// Every provider that is not terminated, by id.
    by_id: HashMap<String, Arc<Provider>>,
    /// The same, by each of their domains (lowercase).
    by_domain: HashMap<String, Arc<Provider>>,
    /// The client negotiation settings: the platform's, plus these providers' domains.
    pub c2s: Option<Arc<C2sConfig>>,
    /// Every provider's domains, terminated ones too (their chats stay in archives), by id.
    all_domains: HashMap<String, Vec<String>>,
}

impl Snapshot {
    fn new(version: i64, providers: Vec<Provider>, base: &C2sConfig) -> Self {
        let mut s = Snapshot {
            version,
            ..Snapshot::default()
        };
        for p in providers {
            s.all_domains.insert(p.id.clone(), p.domains.clone());
            if p.status == ProviderStatus::Terminated {
                continue;
            }
            let p = Arc::new(p);
            for d in &p.domains {
                s.by_domain.insert(d.to_ascii_lowercase(), p.clone());
            }
            s.by_id.insert(p.id.clone(), p);
        }
        let mut c2s = base.clone();
        // Only an enlisted provider's users log in here; a federated one's live on its server.
        c2s.provider_domains = s
            .by_domain
            .iter()
            .filter(|(_, p)| p.link.is_none())
            .map(|(d, _)| d.clone())
            .collect();
        c2s.provider_domains.sort();
        s.c2s = Some(Arc::new(c2s));
        s
    }

    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.by_id.get(id)
    }

    /// The provider whose users' addresses are under `domain` (any case).
    pub fn provider_of_domain(&self, domain: &str) -> Option<&Arc<Provider>> {
        if self.by_domain.is_empty() {
            return None;
        }
        match self.by_domain.get(domain) {
            Some(p) => Some(p),
            None if domain.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.by_domain.get(&domain.to_ascii_lowercase())
            }
            None => None,
        }
    }

    /// The id of the provider whose users' addresses are under `domain`, terminated
    /// providers included (for records that outlive an agreement, such as abuse reports).
    pub fn provider_id_of_domain(&self, domain: &str) -> Option<String> {
        if let Some(p) = self.provider_of_domain(domain) {
            return Some(p.id.clone());
        }
        self.all_domains
            .iter()
            .find(|(_, ds)| ds.iter().any(|d| d.eq_ignore_ascii_case(domain)))
            .map(|(id, _)| id.clone())
    }

    /// The providers, by id.
    pub fn providers(&self) -> Vec<Arc<Provider>> {
        let mut v: Vec<_> = self.by_id.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// The domains of the providers named (ids, or `*` for all of them), for selecting archived
/// chats by origin; `Err(id)` for an id that was never registered.
pub fn origin_domains(snapshot: &Snapshot, ids: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for id in ids {
        if id == "*" {
            out.extend(snapshot.all_domains.values().flatten().cloned());
        } else {
            match snapshot.all_domains.get(id) {
                Some(d) => out.extend(d.iter().cloned()),
                None => return Err(id.clone()),
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The interop layer's state in a running server.
#[derive(Default)]
pub struct Interop {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Message rates across the boundary (per provider, per sender).
    pub rates: boundary::Rates,
    /// Platform users' consent, as the boundary last read it.
    pub consents: consent::ConsentCache,
}

impl Interop {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("interop lock").clone()
    }

    /// Whether any provider is registered (so that the platform-only path skips the rest).
    pub fn has_providers(&self) -> bool {
        !self.snapshot.read().expect("interop lock").by_id.is_empty()
    }

    fn install(&self, s: Snapshot) -> Arc<Snapshot> {
        let s = Arc::new(s);
        *self.snapshot.write().expect("interop lock") = s.clone();
        s
    }
}

/// Reads the registry into the server's snapshot if it changed since `known`, closing the
/// sessions of providers whose agreement is no longer active. Returns the version read.
pub async fn refresh(state: &Arc<ServerState>, known: i64) -> i64 {
    let version = match state.store(|s| s.registry_version()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("reading the provider registry: {e}");
            return known;
        }
    };
    if version == known {
        return known;
    }
    let providers = match state.store(|s| s.providers()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("reading the provider registry: {e}");
            return known;
        }
    };
    let inactive: Vec<(String, &'static str, Vec<String>)> = providers
        .iter()
        .filter(|p| p.status != ProviderStatus::Active)
        .map(|p| (p.id.clone(), p.status.as_str(), p.domains.clone()))
        .collect();
    // Each enlisted provider's domain presents a certificate for its own name (a federated
    // provider's server presents its own).
    let domains: Vec<String> = providers
        .iter()
        .filter(|p| p.status != ProviderStatus::Terminated && p.link.is_none())
        .flat_map(|p| p.domains.clone())
        .collect();
    // Clients are asked for a certificate while some provider admits its users only through
    // its proxies (pins registered).
    state
        .tls
        .want_client_certificates(providers.iter().any(|p| {
            p.status != ProviderStatus::Terminated && p.link.is_none() && !p.cert_pins.is_empty()
        }));
    let st = state.clone();
    let certs = tokio::task::spawn_blocking(move || {
        for d in domains {
            if let Err(e) = st.tls.add_domain(&st.config, &d) {
                tracing::error!(domain = %d, "certificate for a provider domain: {e}");
            }
        }
    });
    let _ = certs.await;
    let base = crate::c2s::connection::base_c2s_config(state);
    let snapshot = state
        .interop
        .install(Snapshot::new(version, providers, &base));
    tracing::info!(
        version,
        providers = snapshot.by_id.len(),
        "provider registry loaded"
    );
    for (id, status, domains) in inactive {
        let error = StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            format!("the agreement of the provider {id} is {status}"),
        );
        let n = state.router.close_domains(&domains, &error);
        if n > 0 {
            tracing::info!(provider = %id, status, sessions = n, "closed the provider's sessions");
        }
    }
    version
}

/// Keeps the snapshot current until shutdown.
pub async fn watch_registry(state: Arc<ServerState>, mut known: i64) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        known = refresh(&state, known).await;
        refresh_consents(&state).await;
    }
}

/// Drops the consent cache when consent changed in the store since the last look (a change
/// by another process: `strait user consent`; the server's own changes update the cache).
pub async fn refresh_consents(state: &Arc<ServerState>) {
    match state.store(|s| s.consent_version()).await {
        Ok(v) => state.interop.consents.sync(v),
        Err(e) => tracing::error!("reading the consent version: {e}"),
    }
}
