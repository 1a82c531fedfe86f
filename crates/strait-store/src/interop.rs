//! The interop registry: third-party providers and their agreements, the audit log of every
//! change to them, and each user's consent to third-party chats (docs/interop.md).

use crate::Result;

/// Where a provider's agreement stands. A provider starts `Pending`; only an `Active`
/// provider's users and links may reach the platform's users; `Suspended` closes them at once
/// and can be lifted; `Terminated` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderStatus {
    Pending,
    Active,
    Suspended,
    Terminated,
}

impl ProviderStatus {
    pub const ALL: [ProviderStatus; 4] = [
        ProviderStatus::Pending,
        ProviderStatus::Active,
        ProviderStatus::Suspended,
        ProviderStatus::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderStatus::Pending => "pending",
            ProviderStatus::Active => "active",
            ProviderStatus::Suspended => "suspended",
            ProviderStatus::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether an agreement in this state may move to `next`: pending → active, active ⇄
    /// suspended, pending → suspended (held before it ever went live), and anything but
    /// terminated → terminated. Nothing leaves terminated: a provider that comes back signs
    /// a new agreement under a new id, so that the audit trail of the old one stays whole.
    pub fn can_become(self, next: ProviderStatus) -> bool {
        use ProviderStatus::*;
        matches!(
            (self, next),
            (Pending, Active)
                | (Pending, Suspended)
                | (Active, Suspended)
                | (Suspended, Active)
                | (Pending | Active | Suspended, Terminated)
        )
    }
}

/// What an agreement lets a provider's users do with the platform's users (DMA Art. 7: one-to-one
/// text, images, voice messages, videos and files first; group chats and calls later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// One-to-one text messages, with their receipts and chat states.
    Text,
    /// Images, voice messages and videos (encrypted media, XEP-0454).
    Media,
    /// Other files.
    Files,
    /// Group chats.
    Groups,
    /// Voice and video calls.
    Calls,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Text,
        Scope::Media,
        Scope::Files,
        Scope::Groups,
        Scope::Calls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Text => "text",
            Scope::Media => "media",
            Scope::Files => "files",
            Scope::Groups => "groups",
            Scope::Calls => "calls",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Who accepted which version of the platform's interoperability terms for a provider, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermsAcceptance {
    pub version: String,
    /// Unix milliseconds.
    pub accepted_ms: i64,
    /// The person who signed for the provider.
    pub accepted_by: String,
}

/// A third-party provider and its agreement with the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// A short stable name: lowercase letters, digits and `-` (1 to 32 characters).
    pub id: String,
    /// The name users see beside its chats.
    pub name: String,
    /// The domains its users' addresses are under (`user@domain`); none is the platform's own,
    /// and no two providers share one.
    pub domains: Vec<String>,
    pub status: ProviderStatus,
    pub terms: Option<TermsAcceptance>,
    /// Enlistment: the `iss` of the tokens the provider signs for its users.
    pub issuer: Option<String>,
    /// Enlistment: the provider's JSON Web Key Set (RFC 7517), the keys its tokens verify against.
    pub jwks: Option<String>,
    /// SHA-256 of the SubjectPublicKeyInfo of the certificates its links and proxies present,
    /// lowercase hex.
    pub cert_pins: Vec<String>,
    /// Sorted, without repeats.
    pub scopes: Vec<Scope>,
    /// Stanzas per second that all its users together may send to the platform's users.
    pub rate_per_sec: Option<u32>,
    /// Stanzas per second that one of its users may send to the platform's users.
    pub user_rate_per_sec: Option<u32>,
    /// A federated provider's own server, as `host` or `host:port` (port 5269 if none): its
    /// users live there, and the platform reaches them over an interop link (XMPP s2s,
    /// authenticated by the pinned certificates). `None`: an enlisted provider, whose users'
    /// accounts the platform hosts under its domains.
    pub link: Option<String>,
}

impl Provider {
    /// A pending provider with no terms accepted and the scope of text messages only.
    pub fn new(id: &str, name: &str, domains: Vec<String>) -> Self {
        Provider {
            id: id.to_owned(),
            name: name.to_owned(),
            domains,
            status: ProviderStatus::Pending,
            terms: None,
            issuer: None,
            jwks: None,
            cert_pins: Vec::new(),
            scopes: vec![Scope::Text],
            rate_per_sec: None,
            user_rate_per_sec: None,
            link: None,
        }
    }
}

/// One change to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Increases with every entry; the newest one's is [`ProviderStore::registry_version`].
    pub seq: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub provider: String,
    /// Who made the change (an operator's name, `cli:root`, `admin-api:…`).
    pub actor: String,
    /// `add`, `update`, `activate`, `suspend`, `terminate`, …
    pub action: String,
    /// What changed, or why.
    pub detail: String,
}

/// What the store is asked to record with a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditNote<'a> {
    pub at_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub detail: &'a str,
}

/// The provider registry. Every change writes its audit entry in the same transaction.
pub trait ProviderStore {
    /// Adds a provider. [`crate::StoreError::Conflict`] if its id exists or one of its domains
    /// is another provider's.
    fn provider_add(&self, p: &Provider, note: &AuditNote<'_>) -> Result<()>;
    /// Replaces the provider's record (keyed by id). [`crate::StoreError::NotFound`] if there
    /// is none, [`crate::StoreError::Conflict`] if one of its domains is another provider's.
    fn provider_update(&self, p: &Provider, note: &AuditNote<'_>) -> Result<()>;
    fn provider(&self, id: &str) -> Result<Option<Provider>>;
    /// All providers, by id.
    fn providers(&self) -> Result<Vec<Provider>>;
    /// The newest `limit` entries (of one provider, or all), oldest first.
    fn provider_audit(&self, provider: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>>;
    /// The newest audit entry's `seq` (0 when there is none): it changes whenever the
    /// registry does, so a running server learns of a change by reading one number.
    fn registry_version(&self) -> Result<i64>;
}

/// Where a user wants third-party chats shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InboxMode {
    /// In a "third-party chats" section of their own (the default, as WhatsApp does it).
    #[default]
    Separate,
    /// Among the user's other chats.
    Combined,
}

impl InboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxMode::Separate => "separate",
            InboxMode::Combined => "combined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "separate" => Some(InboxMode::Separate),
            "combined" => Some(InboxMode::Combined),
            _ => None,
        }
    }
}

/// A user's consent to third-party chats. Off by default: nobody is reachable from another
/// provider until they opt in, and then only from the providers they chose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consent {
    /// Third-party chats are on.
    pub enabled: bool,
    pub inbox: InboxMode,
    /// The provider ids the user accepts chats from, sorted, without repeats.
    pub providers: Vec<String>,
    /// Unix milliseconds of the last change (0 if never set).
    pub updated_ms: i64,
}

impl Consent {
    /// The same consent with its provider list sorted and without repeats, as stored.
    pub fn normalized(mut self) -> Self {
        self.providers.sort();
        self.providers.dedup();
        self
    }

    /// Whether a user of `provider` may reach this user.
    pub fn allows(&self, provider: &str) -> bool {
        self.enabled
            && self
                .providers
                .binary_search_by(|p| p.as_str().cmp(provider))
                .is_ok()
    }
}

/// Users' consent to third-party chats.
pub trait ConsentStore {
    /// The account's consent (the default, everything off, if it never set one).
    fn consent(&self, owner: &str) -> Result<Consent>;
    /// Replaces the account's consent. [`crate::StoreError::NotFound`] if it is not an account.
    fn set_consent(&self, owner: &str, consent: &Consent) -> Result<()>;
    /// A number that changes whenever any account's consent is set, or removed with its
    /// account, by any process: a running server that caches consent drops its cache when
    /// it changes.
    fn consent_version(&self) -> Result<i64>;
}

/// Joins a list for one text column; the items never contain a space.
pub(crate) fn join_words<T: AsRef<str>>(items: &[T]) -> String {
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn split_words(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_transitions() {
        use ProviderStatus::*;
        assert!(Pending.can_become(Active));
        assert!(Active.can_become(Suspended));
        assert!(Suspended.can_become(Active));
        assert!(Active.can_become(Terminated));
        assert!(!Terminated.can_become(Active));
        assert!(!Terminated.can_become(Suspended));
        assert!(!Active.can_become(Pending));
        assert!(!Active.can_become(Active));
        for s in ProviderStatus::ALL {
            assert_eq!(ProviderStatus::parse(s.as_str()), Some(s));
        }
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("Text"), None);
    }

    #[test]
    fn consent_allows_only_chosen_providers_when_on() {
        let mut c = Consent {
            enabled: false,
            providers: vec!["acme".into(), "zeta".into()],
            ..Consent::default()
        };
        assert!(!c.allows("acme"));
        c.enabled = true;
        assert!(c.allows("acme") && c.allows("zeta"));
        assert!(!c.allows("beta"));
    }
}
