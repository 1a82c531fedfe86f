//! The provider registry's rules: what a valid provider record is, which status changes an
//! agreement allows, and the audit entry each change leaves. `strait provider …` calls these
//! (and so will the admin API), so that every way into the registry checks the same things.

use crate::config::Config;
use strait_store::{
    AuditNote, Provider, ProviderStatus, Scope, Store, StoreError, TermsAcceptance,
};

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "{0:?} is not a valid provider id: use 1 to 32 lowercase letters, digits and '-', starting with a letter"
    )]
    InvalidId(String),
    #[error("the provider's name is empty")]
    EmptyName,
    #[error("a provider needs at least one domain for its users' addresses")]
    NoDomain,
    #[error("{0:?} is not a valid domain")]
    InvalidDomain(String),
    #[error(
        "{0} is this server's own domain or one of its services; a provider's users need a domain of their own"
    )]
    HostDomain(String),
    #[error(
        "{0:?} is not a certificate pin: expected 64 hex digits, the SHA-256 of the certificate's SubjectPublicKeyInfo"
    )]
    InvalidPin(String),
    #[error("the JWKS is not a JSON Web Key Set (a JSON object with a \"keys\" array): {0}")]
    InvalidJwks(String),
    #[error("a rate limit of 0 would refuse every message; leave it out for no limit")]
    ZeroRate,
    #[error("no provider {0} is registered")]
    UnknownProvider(String),
    #[error("the provider {id} is {from}; it cannot become {to}")]
    Transition {
        id: String,
        from: &'static str,
        to: &'static str,
    },
    #[error(
        "the provider {0} has not accepted the interoperability terms; record that first (strait provider terms)"
    )]
    NoTerms(String),
    #[error("the provider {0} is terminated; its record can no longer change")]
    Terminated(String),
    #[error(
        "{accounts} account(s) of the provider's users live under {domain}; remove them first (strait user remove) before the provider gives up the domain"
    )]
    DomainInUse { domain: String, accounts: usize },
    #[error("{0:?} is not a link address: expected host or host:port (the provider's XMPP server)")]
    InvalidLink(String),
    #[error(
        "a federated provider (--link) needs certificate pins (--pin): its server is authenticated by them"
    )]
    LinkNeedsPins,
    #[error(
        "{accounts} account(s) of the provider's users live here under {domain}; a federated provider's users live on its own server: remove them first (strait user remove)"
    )]
    EnlistedAccounts { domain: String, accounts: usize },
    #[error(
        "the certificate pin {pin} is also the provider {other}'s, which is federated too: its server could speak for this provider's domains"
    )]
    PinTaken { pin: String, other: String },
    #[error("say why (--reason): suspensions and terminations are audited")]
    ReasonRequired,
    #[error("the terms version and the name of who accepted them must not be empty")]
    EmptyTerms,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who changes the registry, and when: what every audit entry records.
#[derive(Clone, Copy, Debug)]
pub struct Actor<'a> {
    pub name: &'a str,
    /// Unix milliseconds.
    pub now_ms: i64,
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The domain in its stored form (lowercase), if it is a valid domain and not the server's own.
fn check_domain(config: &Config, d: &str) -> Result<String, RegistryError> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !d.is_empty()
        && d.contains('.')
        && jid::BareJid::new(&d).is_ok_and(|j| j.node().is_none())
        && !d.contains('/');
    if !valid {
        return Err(RegistryError::InvalidDomain(d));
    }
    let own = config.served_domain(&d).is_some()
        || config
            .components
            .iter()
            .any(|c| c.domain.eq_ignore_ascii_case(&d))
        || config
            .domains
            .iter()
            .any(|s| crate::features::upload::Uploads::service_jid(&s.to_ascii_lowercase()) == d);
    if own {
        return Err(RegistryError::HostDomain(d));
    }
    Ok(d)
}

/// Checks a provider record and returns it in its stored form: domains lowercase without
/// repeats, scopes sorted, pins lowercase.
pub fn check(config: &Config, p: &Provider) -> Result<Provider, RegistryError> {
    if !valid_id(&p.id) {
        return Err(RegistryError::InvalidId(p.id.clone()));
    }
    let mut out = p.clone();
    out.name = p.name.trim().to_owned();
    if out.name.is_empty() {
        return Err(RegistryError::EmptyName);
    }
    out.domains.clear();
    for d in &p.domains {
        let d = check_domain(config, d)?;
        if !out.domains.contains(&d) {
            out.domains.push(d);
        }
    }
    if out.domains.is_empty() {
        return Err(RegistryError::NoDomain);
    }
    out.cert_pins = p
        .cert_pins
        .iter()
        .map(|pin| {
            let pin = pin.trim().to_ascii_lowercase();
            if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(pin)
            } else {
                Err(RegistryError::InvalidPin(pin))
            }
        })
        .collect::<Result<_, _>>()?;
    out.cert_pins.dedup();
    out.scopes.sort();
    out.scopes.dedup();
    if let Some(jwks) = &p.jwks {
        super::enlist::check_key_set(jwks).map_err(RegistryError::InvalidJwks)?;
    }
    if p.rate_per_sec == Some(0) || p.user_rate_per_sec == Some(0) {
        return Err(RegistryError::ZeroRate);
    }
    out.link = p.link.as_deref().map(check_link).transpose()?;
    if out.link.is_some() && out.cert_pins.is_empty() {
        return Err(RegistryError::LinkNeedsPins);
    }
    Ok(out)
}

/// A link address: `host` or `host:port`, the host a domain name or an IP address
/// (`[v6]:port` for IPv6 with a port), lowercase.
pub fn check_link(link: &str) -> Result<String, RegistryError> {
    let bad = || RegistryError::InvalidLink(link.to_owned());
    let l = link.trim().to_ascii_lowercase();
    let (host, port) = match crate::s2s::split_link(&l) {
        Some(hp) => hp,
        None => return Err(bad()),
    };
    if port == 0 || host.is_empty() {
        return Err(bad());
    }
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    if !ip && jid::Jid::new(host).is_err() {
        return Err(bad());
    }
    Ok(l)
}

/// A federated provider's pins authenticate its server, which then speaks for the provider's
/// domains: no other federated provider may have one of them.
fn check_pins_unique(store: &dyn Store, p: &Provider) -> Result<(), RegistryError> {
    if p.link.is_none() {
        return Ok(());
    }
    for other in store.providers()? {
        if other.id == p.id || other.link.is_none() || other.status == ProviderStatus::Terminated {
            continue;
        }
        if let Some(pin) = p.cert_pins.iter().find(|x| other.cert_pins.contains(x)) {
            return Err(RegistryError::PinTaken {
                pin: pin.clone(),
                other: other.id,
            });
        }
    }
    Ok(())
}

/// Registers a new provider, pending until its terms are accepted and it is activated.
pub fn add(
    config: &Config,
    store: &dyn Store,
    p: &Provider,
    actor: Actor<'_>,
) -> Result<Provider, RegistryError> {
    let mut p = check(config, p)?;
    check_pins_unique(store, &p)?;
    p.status = ProviderStatus::Pending;
    p.terms = None;
    let mut detail = format!("{} ({})", p.name, p.domains.join(", "));
    if let Some(link) = &p.link {
        detail.push_str(&format!("; federated, link {link}"));
    }
    store.provider_add(&p, &note(actor, "add", &detail))?;
    Ok(p)
}

fn note<'a>(actor: Actor<'a>, action: &'a str, detail: &'a str) -> AuditNote<'a> {
    AuditNote {
        at_ms: actor.now_ms,
        actor: actor.name,
        action,
        detail,
    }
}

fn load(store: &dyn Store, id: &str) -> Result<Provider, RegistryError> {
    store
        .provider(id)?
        .ok_or_else(|| RegistryError::UnknownProvider(id.to_owned()))
}

/// Replaces a provider's details (not its status or terms: those have their own steps). The
/// audit entry names every field that changed.
pub fn update(
    config: &Config,
    store: &dyn Store,
    new: &Provider,
    actor: Actor<'_>,
) -> Result<Provider, RegistryError> {
    let old = load(store, &new.id)?;
    if old.status == ProviderStatus::Terminated {
        return Err(RegistryError::Terminated(old.id));
    }
    let mut p = check(config, new)?;
    check_pins_unique(store, &p)?;
    p.status = old.status;
    p.terms = old.terms.clone();
    // A domain given up must not leave enlisted accounts behind, unreachable.
    for d in old.domains.iter().filter(|d| !p.domains.contains(d)) {
        let accounts = store.list_accounts(Some(d))?.len();
        if accounts > 0 {
            return Err(RegistryError::DomainInUse {
                domain: d.clone(),
                accounts,
            });
        }
    }
    // Becoming federated strands the accounts enlisted here under its domains.
    if p.link.is_some() && old.link.is_none() {
        for d in &p.domains {
            let accounts = store.list_accounts(Some(d))?.len();
            if accounts > 0 {
                return Err(RegistryError::EnlistedAccounts {
                    domain: d.clone(),
                    accounts,
                });
            }
        }
    }
    let detail = describe_changes(&old, &p);
    if detail.is_empty() {
        return Ok(old);
    }
    store.provider_update(&p, &note(actor, "update", &detail))?;
    Ok(p)
}

/// `field: old → new; …` for the fields that differ (the JWKS only as "replaced": it is long).
fn describe_changes(old: &Provider, new: &Provider) -> String {
    fn opt<T: ToString>(v: &Option<T>) -> String {
        v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
    }
    let scopes = |p: &Provider| {
        let v: Vec<&str> = p.scopes.iter().map(|s| s.as_str()).collect();
        v.join(",")
    };
    let mut parts = Vec::new();
    let mut diff = |field: &str, a: String, b: String| {
        if a != b {
            parts.push(format!("{field}: {a} → {b}"));
        }
    };
    diff("name", old.name.clone(), new.name.clone());
    diff("domains", old.domains.join(","), new.domains.join(","));
    diff("scopes", scopes(old), scopes(new));
    diff("issuer", opt(&old.issuer), opt(&new.issuer));
    diff("pins", old.cert_pins.join(","), new.cert_pins.join(","));
    diff("link", opt(&old.link), opt(&new.link));
    diff("rate", opt(&old.rate_per_sec), opt(&new.rate_per_sec));
    diff(
        "user-rate",
        opt(&old.user_rate_per_sec),
        opt(&new.user_rate_per_sec),
    );
    if old.jwks != new.jwks {
        parts.push(if new.jwks.is_some() {
            "jwks replaced".into()
        } else {
            "jwks removed".into()
        });
    }
    parts.join("; ")
}

/// Records that `accepted_by` accepted version `version` of the terms for the provider.
pub fn accept_terms(
    store: &dyn Store,
    id: &str,
    version: &str,
    accepted_by: &str,
    actor: Actor<'_>,
) -> Result<Provider, RegistryError> {
    let (version, accepted_by) = (version.trim(), accepted_by.trim());
    if version.is_empty() || accepted_by.is_empty() {
        return Err(RegistryError::EmptyTerms);
    }
    let mut p = load(store, id)?;
    if p.status == ProviderStatus::Terminated {
        return Err(RegistryError::Terminated(p.id));
    }
    p.terms = Some(TermsAcceptance {
        version: version.to_owned(),
        accepted_ms: actor.now_ms,
        accepted_by: accepted_by.to_owned(),
    });
    let detail = format!("version {version}, accepted by {accepted_by}");
    store.provider_update(&p, &note(actor, "terms", &detail))?;
    Ok(p)
}

/// Moves the provider's agreement to `next`. Activation needs accepted terms; suspension and
/// termination need a reason, which the audit log keeps.
pub fn set_status(
    store: &dyn Store,
    id: &str,
    next: ProviderStatus,
    reason: &str,
    actor: Actor<'_>,
) -> Result<Provider, RegistryError> {
    let mut p = load(store, id)?;
    if !p.status.can_become(next) {
        return Err(RegistryError::Transition {
            id: p.id,
            from: p.status.as_str(),
            to: next.as_str(),
        });
    }
    if next == ProviderStatus::Active && p.terms.is_none() {
        return Err(RegistryError::NoTerms(p.id));
    }
    let reason = reason.trim();
    if matches!(next, ProviderStatus::Suspended | ProviderStatus::Terminated) && reason.is_empty() {
        return Err(RegistryError::ReasonRequired);
    }
    let action = match next {
        ProviderStatus::Active => "activate",
        ProviderStatus::Suspended => "suspend",
        ProviderStatus::Terminated => "terminate",
        ProviderStatus::Pending => "pending",
    };
    let detail = format!("{} → {}: {reason}", p.status.as_str(), next.as_str());
    p.status = next;
    store.provider_update(
        &p,
        &note(actor, action, detail.trim_end_matches([' ', ':'])),
    )?;
    Ok(p)
}

/// Parses a comma-separated scope list (`text,media,files`).
pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            Scope::parse(w).ok_or_else(|| {
                let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {w:?} (scopes: {})", all.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_store::{MemoryStore, ProviderStore};

    fn config() -> Config {
        Config {
            domains: vec!["host.example".into()],
            ..Config::default()
        }
    }

    const OP: Actor<'static> = Actor {
        name: "op",
        now_ms: 1_000,
    };

    fn acme() -> Provider {
        Provider::new("acme", " Acme Chat ", vec!["Acme.Example".into()])
    }

    #[test]
    fn records_are_checked_and_normalized() {
        let c = config();
        let p = check(&c, &acme()).unwrap();
        assert_eq!(
            (p.name.as_str(), p.domains.as_slice()),
            ("Acme Chat", &["acme.example".to_owned()][..])
        );
        for bad in ["", "Acme", "1acme", "acme_chat", &"a".repeat(33)] {
            let mut p = acme();
            p.id = bad.into();
            assert!(
                matches!(check(&c, &p), Err(RegistryError::InvalidId(_))),
                "{bad}"
            );
        }
        let mut p = acme();
        p.domains = vec!["HOST.example".into()];
        assert!(matches!(check(&c, &p), Err(RegistryError::HostDomain(_))));
        p.domains = vec!["upload.host.example".into()];
        assert!(matches!(check(&c, &p), Err(RegistryError::HostDomain(_))));
        for bad in ["nodot", "a@b.example", "b.example/r", ""] {
            p.domains = vec![bad.into()];
            assert!(
                matches!(check(&c, &p), Err(RegistryError::InvalidDomain(_))),
                "{bad}"
            );
        }
        p.domains.clear();
        assert!(matches!(check(&c, &p), Err(RegistryError::NoDomain)));
        let mut p = acme();
        p.cert_pins = vec!["AB".repeat(32)];
        assert_eq!(check(&c, &p).unwrap().cert_pins, ["ab".repeat(32)]);
        p.cert_pins = vec!["ab".repeat(31)];
        assert!(matches!(check(&c, &p), Err(RegistryError::InvalidPin(_))));
        let mut p = acme();
        p.jwks = Some("{\"keys\": 3}".into());
        assert!(matches!(check(&c, &p), Err(RegistryError::InvalidJwks(_))));
        p.jwks = Some("not json".into());
        assert!(matches!(check(&c, &p), Err(RegistryError::InvalidJwks(_))));
        p.jwks = Some("{\"keys\": []}".into());
        assert!(check(&c, &p).is_ok());
        p.rate_per_sec = Some(0);
        assert!(matches!(check(&c, &p), Err(RegistryError::ZeroRate)));
        assert_eq!(parse_scopes("media, text,media").unwrap().len(), 3);
        assert!(parse_scopes("text,voice").unwrap_err().contains("voice"));
    }

    #[test]
    fn an_agreement_goes_live_only_with_accepted_terms_and_ends_for_good() {
        let (c, s) = (config(), MemoryStore::new());
        let p = add(&c, &s, &acme(), OP).unwrap();
        assert_eq!(p.status, ProviderStatus::Pending);
        assert!(matches!(
            set_status(&s, "acme", ProviderStatus::Active, "", OP),
            Err(RegistryError::NoTerms(_))
        ));
        accept_terms(&s, "acme", "2024-03", "Jo Signer", OP).unwrap();
        let p = set_status(&s, "acme", ProviderStatus::Active, "", OP).unwrap();
        assert_eq!(p.status, ProviderStatus::Active);
        assert!(matches!(
            set_status(&s, "acme", ProviderStatus::Suspended, " ", OP),
            Err(RegistryError::ReasonRequired)
        ));
        set_status(&s, "acme", ProviderStatus::Suspended, "abuse report 17", OP).unwrap();
        set_status(&s, "acme", ProviderStatus::Active, "", OP).unwrap();
        set_status(&s, "acme", ProviderStatus::Terminated, "contract ended", OP).unwrap();
        assert!(matches!(
            set_status(&s, "acme", ProviderStatus::Active, "", OP),
            Err(RegistryError::Transition { .. })
        ));
        assert!(matches!(
            update(&c, &s, &acme(), OP),
            Err(RegistryError::Terminated(_))
        ));
        assert!(matches!(
            set_status(&s, "nope", ProviderStatus::Active, "", OP),
            Err(RegistryError::UnknownProvider(_))
        ));
        let log: Vec<(String, String)> = s
            .provider_audit(Some("acme"), 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.detail))
            .collect();
        let actions: Vec<&str> = log.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            actions,
            [
                "add",
                "terms",
                "activate",
                "suspend",
                "activate",
                "terminate"
            ]
        );
        assert_eq!(log[3].1, "active → suspended: abuse report 17");
        assert_eq!(log[2].1, "pending → active");
    }

    #[test]
    fn an_update_keeps_status_and_terms_and_says_what_changed() {
        let (c, s) = (config(), MemoryStore::new());
        add(&c, &s, &acme(), OP).unwrap();
        accept_terms(&s, "acme", "v1", "Jo", OP).unwrap();
        let mut p = acme();
        p.status = ProviderStatus::Active; // ignored: status has its own step
        p.terms = None; // ignored too
        p.scopes = vec![Scope::Media, Scope::Text];
        p.rate_per_sec = Some(100);
        p.jwks = Some("{\"keys\":[]}".into());
        let got = update(&c, &s, &p, OP).unwrap();
        assert_eq!(got.status, ProviderStatus::Pending);
        assert!(got.terms.is_some());
        let last = s.provider_audit(Some("acme"), 1).unwrap().pop().unwrap();
        assert_eq!(last.action, "update");
        assert_eq!(
            last.detail,
            "scopes: text → text,media; rate: - → 100; jwks replaced"
        );
        // No change, no entry.
        let before = s.registry_version().unwrap();
        update(&c, &s, &p, OP).unwrap();
        assert_eq!(s.registry_version().unwrap(), before);
        // Giving up a domain is refused while accounts live under it.
        use strait_store::AccountStore;
        let creds = crate::interop::enlist::unusable_credentials();
        s.create_account("bob@acme.example", &creds).unwrap();
        let mut moved = p.clone();
        moved.domains = vec!["new.example".into()];
        assert!(matches!(
            update(&c, &s, &moved, OP),
            Err(RegistryError::DomainInUse { accounts: 1, .. })
        ));
        moved.domains = vec!["acme.example".into(), "new.example".into()];
        update(&c, &s, &moved, OP).unwrap();
        s.remove_account("bob@acme.example").unwrap();
        moved.domains = vec!["new.example".into()];
        update(&c, &s, &moved, OP).unwrap();
    }

    #[test]
    fn a_federated_provider_names_its_server_and_pins_it() {
        let (c, s) = (config(), MemoryStore::new());
        let mut p = acme();
        p.link = Some(" XMPP.Acme.Example:5270 ".into());
        assert!(matches!(check(&c, &p), Err(RegistryError::LinkNeedsPins)));
        p.cert_pins = vec!["AB".repeat(32)];
        let got = check(&c, &p).unwrap();
        assert_eq!(got.link.as_deref(), Some("xmpp.acme.example:5270"));
        for bad in ["", "host:", "host:0", "host:x", "bad host", "[::1"] {
            p.link = Some(bad.into());
            assert!(
                matches!(check(&c, &p), Err(RegistryError::InvalidLink(_))),
                "{bad:?} was taken"
            );
        }
        for good in ["127.0.0.1:25269", "[::1]:5269", "acme.example"] {
            p.link = Some(good.into());
            check(&c, &p).unwrap();
        }
        // Becoming federated would strand accounts enlisted under its domains.
        add(&c, &s, &acme(), OP).unwrap();
        use strait_store::AccountStore;
        let creds = crate::interop::enlist::unusable_credentials();
        s.create_account("bob@acme.example", &creds).unwrap();
        p.link = Some("xmpp.acme.example".into());
        assert!(matches!(
            update(&c, &s, &p, OP),
            Err(RegistryError::EnlistedAccounts { accounts: 1, .. })
        ));
        s.remove_account("bob@acme.example").unwrap();
        update(&c, &s, &p, OP).unwrap();
        // Another federated provider may not present acme's key.
        let mut twin = Provider::new("twin", "Twin", vec!["twin.example".into()]);
        twin.link = Some("xmpp.twin.example".into());
        twin.cert_pins = vec!["ab".repeat(32)];
        assert!(matches!(
            add(&c, &s, &twin, OP),
            Err(RegistryError::PinTaken { other, .. }) if other == "acme"
        ));
        twin.link = None; // an enlisted provider's proxy key is its own business
        add(&c, &s, &twin, OP).unwrap();
        twin.link = Some("xmpp.twin.example".into());
        assert!(matches!(
            update(&c, &s, &twin, OP),
            Err(RegistryError::PinTaken { .. })
        ));
        let last = s.provider_audit(Some("acme"), 1).unwrap().pop().unwrap();
        assert!(
            last.detail.contains("link: - → xmpp.acme.example"),
            "{}",
            last.detail
        );
    }
}
