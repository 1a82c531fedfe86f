//! Storage of identities, prekeys, signed prekeys and sessions, behind traits.
//!
//! Methods that write take `&mut self`; backend failures are [`crate::error::SignalError::Store`].
//! [`memory::InMemoryStore`] implements everything in memory; persistent backends store
//! [`SessionRecord::serialize`], [`PreKeyRecord::serialize`], [`SignedPreKeyRecord::serialize`]
//! and [`IdentityKeyPair::serialize`] as blobs.

use core::fmt;

use crate::error::Result;
use crate::keys::{IdentityKeyPair, PublicKey};
use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
use crate::session::SessionRecord;

pub mod memory;
pub mod sqlite;

/// A remote device: bare JID (or other account name) and device id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The account name (a bare JID in XMPP).
    pub name: String,
    /// The device id.
    pub device_id: u32,
}

impl Address {
    /// An address.
    pub fn new(name: impl Into<String>, device_id: u32) -> Self {
        Address {
            name: name.into(),
            device_id,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.device_id)
    }
}

/// The direction a trust decision is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We are about to encrypt to the identity.
    Sending,
    /// We received a message from the identity.
    Receiving,
}

/// Our identity and the identities of peers.
pub trait IdentityKeyStore {
    /// Our identity key pair.
    fn identity_key_pair(&self) -> Result<IdentityKeyPair>;
    /// Our registration id.
    fn local_registration_id(&self) -> Result<u32>;
    /// Records a peer's identity; returns true if it replaced a different stored key.
    fn save_identity(&mut self, address: &Address, identity: &PublicKey) -> Result<bool>;
    /// Whether `identity` is trusted for `address` in `direction`.
    fn is_trusted_identity(
        &self,
        address: &Address,
        identity: &PublicKey,
        direction: Direction,
    ) -> Result<bool>;
    /// The stored identity of a peer.
    fn get_identity(&self, address: &Address) -> Result<Option<PublicKey>>;
}

/// One-time prekeys.
pub trait PreKeyStore {
    /// Loads a prekey.
    fn load_pre_key(&self, id: u32) -> Result<Option<PreKeyRecord>>;
    /// Stores a prekey.
    fn store_pre_key(&mut self, record: &PreKeyRecord) -> Result<()>;
    /// Removes a prekey (after a PreKey message using it decrypted).
    fn remove_pre_key(&mut self, id: u32) -> Result<()>;
    /// The ids of all stored prekeys.
    fn pre_key_ids(&self) -> Result<Vec<u32>>;
}

/// Signed prekeys.
pub trait SignedPreKeyStore {
    /// Loads a signed prekey.
    fn load_signed_pre_key(&self, id: u32) -> Result<Option<SignedPreKeyRecord>>;
    /// Stores a signed prekey.
    fn store_signed_pre_key(&mut self, record: &SignedPreKeyRecord) -> Result<()>;
    /// Removes a signed prekey.
    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()>;
    /// All stored signed prekeys.
    fn list_signed_pre_keys(&self) -> Result<Vec<SignedPreKeyRecord>>;
}

/// Session records.
pub trait SessionStore {
    /// Loads the record of a device.
    fn load_session(&self, address: &Address) -> Result<Option<SessionRecord>>;
    /// Stores the record of a device.
    fn store_session(&mut self, address: &Address, record: &SessionRecord) -> Result<()>;
    /// Deletes the record of a device.
    fn delete_session(&mut self, address: &Address) -> Result<()>;
    /// The device ids with a session for an account name.
    fn sub_device_sessions(&self, name: &str) -> Result<Vec<u32>>;
}

/// Everything a session needs.
pub trait ProtocolStore: IdentityKeyStore + PreKeyStore + SignedPreKeyStore + SessionStore {}

impl<T: IdentityKeyStore + PreKeyStore + SignedPreKeyStore + SessionStore + ?Sized> ProtocolStore
    for T
{
}
