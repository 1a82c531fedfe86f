//! An in-memory [`ProtocolStore`](super::ProtocolStore).

use std::collections::{BTreeMap, HashMap};

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::{Address, Direction, IdentityKeyStore, PreKeyStore, SessionStore, SignedPreKeyStore};
use crate::error::Result;
use crate::keys::{IdentityKeyPair, PublicKey};
use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
use crate::session::SessionRecord;

/// How unknown and changed identities are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrustPolicy {
    /// Trust a peer's first identity; afterwards only that one (libsignal's default).
    #[default]
    TrustOnFirstUse,
    /// Trust only identities set with [`InMemoryStore::set_trusted`] (or saved).
    ExplicitOnly,
    /// Trust everything (the application decides, e.g. OMEMO blind trust before verification).
    TrustAll,
}

/// Everything in memory. Records are stored serialized, as a persistent store would.
#[derive(Clone)]
pub struct InMemoryStore {
    identity: IdentityKeyPair,
    registration_id: u32,
    policy: TrustPolicy,
    identities: HashMap<Address, PublicKey>,
    pre_keys: BTreeMap<u32, Zeroizing<Vec<u8>>>,
    signed_pre_keys: BTreeMap<u32, Zeroizing<Vec<u8>>>,
    sessions: HashMap<Address, Zeroizing<Vec<u8>>>,
}

impl core::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("identity", self.identity.public_key())
            .field("registration_id", &self.registration_id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl InMemoryStore {
    /// A store for an identity.
    pub fn new(identity: IdentityKeyPair, registration_id: u32) -> Self {
        InMemoryStore {
            identity,
            registration_id,
            policy: TrustPolicy::default(),
            identities: HashMap::new(),
            pre_keys: BTreeMap::new(),
            signed_pre_keys: BTreeMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// A store with a fresh identity and registration id (1..=16380, libsignal's range).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let registration_id = 1 + rng.next_u32() % 16380;
        Self::new(identity, registration_id)
    }

    /// Sets the trust policy.
    pub fn set_trust_policy(&mut self, policy: TrustPolicy) {
        self.policy = policy;
    }

    /// The trust policy.
    pub fn trust_policy(&self) -> TrustPolicy {
        self.policy
    }

    /// Explicitly trusts (and stores) an identity for an address.
    pub fn set_trusted(&mut self, address: &Address, identity: PublicKey) {
        self.identities.insert(address.clone(), identity);
    }

    /// Forgets a stored identity.
    pub fn forget_identity(&mut self, address: &Address) {
        self.identities.remove(address);
    }
}

impl IdentityKeyStore for InMemoryStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        Ok(self.identity.clone())
    }

    fn local_registration_id(&self) -> Result<u32> {
        Ok(self.registration_id)
    }

    fn save_identity(&mut self, address: &Address, identity: &PublicKey) -> Result<bool> {
        let previous = self.identities.insert(address.clone(), *identity);
        Ok(previous.is_some_and(|p| p != *identity))
    }

    fn is_trusted_identity(
        &self,
        address: &Address,
        identity: &PublicKey,
        _direction: Direction,
    ) -> Result<bool> {
        Ok(match (self.policy, self.identities.get(address)) {
            (TrustPolicy::TrustAll, _) => true,
            (_, Some(stored)) => stored == identity,
            (TrustPolicy::TrustOnFirstUse, None) => true,
            (TrustPolicy::ExplicitOnly, None) => false,
        })
    }

    fn get_identity(&self, address: &Address) -> Result<Option<PublicKey>> {
        Ok(self.identities.get(address).copied())
    }
}

impl PreKeyStore for InMemoryStore {
    fn load_pre_key(&self, id: u32) -> Result<Option<PreKeyRecord>> {
        self.pre_keys
            .get(&id)
            .map(|b| PreKeyRecord::deserialize(b))
            .transpose()
    }

    fn store_pre_key(&mut self, record: &PreKeyRecord) -> Result<()> {
        self.pre_keys.insert(record.id, record.serialize());
        Ok(())
    }

    fn remove_pre_key(&mut self, id: u32) -> Result<()> {
        self.pre_keys.remove(&id);
        Ok(())
    }

    fn pre_key_ids(&self) -> Result<Vec<u32>> {
        Ok(self.pre_keys.keys().copied().collect())
    }
}

impl SignedPreKeyStore for InMemoryStore {
    fn load_signed_pre_key(&self, id: u32) -> Result<Option<SignedPreKeyRecord>> {
        self.signed_pre_keys
            .get(&id)
            .map(|b| SignedPreKeyRecord::deserialize(b))
            .transpose()
    }

    fn store_signed_pre_key(&mut self, record: &SignedPreKeyRecord) -> Result<()> {
        self.signed_pre_keys.insert(record.id, record.serialize());
        Ok(())
    }

    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()> {
        self.signed_pre_keys.remove(&id);
        Ok(())
    }

    fn list_signed_pre_keys(&self) -> Result<Vec<SignedPreKeyRecord>> {
        self.signed_pre_keys
            .values()
            .map(|b| SignedPreKeyRecord::deserialize(b))
            .collect()
    }
}

impl SessionStore for InMemoryStore {
    fn load_session(&self, address: &Address) -> Result<Option<SessionRecord>> {
        self.sessions
            .get(address)
            .map(|b| SessionRecord::deserialize(b))
            .transpose()
    }

    fn store_session(&mut self, address: &Address, record: &SessionRecord) -> Result<()> {
        self.sessions.insert(address.clone(), record.serialize());
        Ok(())
    }

    fn delete_session(&mut self, address: &Address) -> Result<()> {
        self.sessions.remove(address);
        Ok(())
    }

    fn sub_device_sessions(&self, name: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self
            .sessions
            .keys()
            .filter(|a| a.name == name)
            .map(|a| a.device_id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}
