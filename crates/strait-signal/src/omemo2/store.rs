//! What OMEMO 2 keeps beyond the identity key pair: our signed prekey(s) and one-time prekeys,
//! session records per `(bare JID, device id)`, and peers' Ed25519 identity keys with trust.
//!
//! [`Omemo2Store`] is object-safe (`&mut dyn Omemo2Store` works everywhere a store is taken);
//! method names carry an `omemo2_` prefix so that one backend type can implement it next to the
//! libsignal-v3 traits of [`crate::store`] without ambiguity. Sessions are stored as the blob of
//! [`Omemo2SessionRecord::serialize`]; prekeys as [`PreKeyRecord`] /
//! [`Omemo2SignedPreKey`], each with `serialize`/`deserialize` for blob storage.
//! OMEMO 2 prekeys are separate from OMEMO 0.3 ones (different id spaces and bundles).

use std::collections::BTreeMap;

use prost::Message as _;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::session::Omemo2SessionRecord;
use super::x3dh::Omemo2Bundle;
use crate::error::{Result, SignalError};
use crate::keys::{IdentityKeyPair, KeyPair, PrivateKey};
use crate::prekeys::PreKeyRecord;
use crate::store::Address;

/// Target number of one-time prekeys in the bundle (XEP-0384: "around 100").
pub const PREKEY_TARGET: usize = 100;
/// Minimum number of one-time prekeys a bundle must have (XEP-0384).
pub const PREKEY_MINIMUM: usize = 25;

/// Trust in a peer device's identity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Omemo2Trust {
    /// No decision yet.
    Undecided,
    /// Trusted (manually or by blind trust before verification).
    Trusted,
    /// Distrusted: do not encrypt to it, do not accept from it.
    Distrusted,
}

impl Omemo2Trust {
    /// A stable code for storage (0 undecided, 1 trusted, 2 distrusted).
    pub fn to_code(self) -> u8 {
        match self {
            Omemo2Trust::Undecided => 0,
            Omemo2Trust::Trusted => 1,
            Omemo2Trust::Distrusted => 2,
        }
    }

    /// Parses [`Omemo2Trust::to_code`].
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(Omemo2Trust::Undecided),
            1 => Ok(Omemo2Trust::Trusted),
            2 => Ok(Omemo2Trust::Distrusted),
            _ => Err(SignalError::CorruptRecord(format!("trust code {code}"))),
        }
    }
}

/// Our OMEMO 2 signed prekey: a key pair and the Ed25519 signature (verifiable under
/// [`IdentityKeyPair::ed25519_public`]) of its raw 32-byte public key.
#[derive(Clone, Debug)]
pub struct Omemo2SignedPreKey {
    /// The id published in the bundle.
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
    /// Ed25519 signature over the raw public key.
    pub signature: [u8; 64],
    /// Creation time (caller's clock, e.g. Unix seconds), for rotation.
    pub timestamp: u64,
}

impl Omemo2SignedPreKey {
    /// A fresh signed prekey.
    pub fn generate(
        id: u32,
        identity: &IdentityKeyPair,
        timestamp: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let key_pair = KeyPair::generate(rng);
        let signature = identity.sign_ed25519_compatible(key_pair.public.as_raw(), rng);
        Omemo2SignedPreKey {
            id,
            key_pair,
            signature,
            timestamp,
        }
    }

    /// Storage serialization (protobuf: 1 id, 2 private key 32, 3 signature 64, 4 timestamp).
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let p = SignedPreKeyProto {
            id: self.id,
            private_key: self.key_pair.private.to_bytes().to_vec(),
            signature: self.signature.to_vec(),
            timestamp: self.timestamp,
        };
        Zeroizing::new(p.encode_to_vec())
    }

    /// Parses [`Omemo2SignedPreKey::serialize`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let p = SignedPreKeyProto::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("OMEMO 2 signed prekey: {e}")))?;
        Ok(Omemo2SignedPreKey {
            id: p.id,
            key_pair: KeyPair::from_private(PrivateKey::from_slice(&p.private_key)?),
            signature: p.signature.as_slice().try_into().map_err(|_| {
                SignalError::CorruptRecord("OMEMO 2 signed prekey: signature".into())
            })?,
            timestamp: p.timestamp,
        })
    }
}

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
struct SignedPreKeyProto {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(bytes = "vec", tag = "2")]
    private_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    signature: Vec<u8>,
    #[prost(uint64, tag = "4")]
    timestamp: u64,
}

/// Storage for OMEMO 2 (everything except our identity key pair). Writes take `&mut self`;
/// backend failures are [`SignalError::Store`].
pub trait Omemo2Store {
    /// A signed prekey of ours by id.
    fn omemo2_signed_prekey(&self, id: u32) -> Result<Option<Omemo2SignedPreKey>>;
    /// Stores (inserts or replaces) a signed prekey.
    fn omemo2_store_signed_prekey(&mut self, spk: &Omemo2SignedPreKey) -> Result<()>;
    /// Removes a signed prekey (after rotation, once no late key exchange can use it).
    fn omemo2_remove_signed_prekey(&mut self, id: u32) -> Result<()>;
    /// All our signed prekeys.
    fn omemo2_signed_prekeys(&self) -> Result<Vec<Omemo2SignedPreKey>>;

    /// A one-time prekey of ours by id.
    fn omemo2_prekey(&self, id: u32) -> Result<Option<PreKeyRecord>>;
    /// Stores a one-time prekey.
    fn omemo2_store_prekey(&mut self, prekey: &PreKeyRecord) -> Result<()>;
    /// Removes a one-time prekey (after a key exchange using it succeeded).
    fn omemo2_remove_prekey(&mut self, id: u32) -> Result<()>;
    /// The ids of all our one-time prekeys, ascending.
    fn omemo2_prekey_ids(&self) -> Result<Vec<u32>>;
    /// The highest one-time prekey id ever allocated (0 if none); ids are not reused.
    fn omemo2_last_prekey_id(&self) -> Result<u32>;
    /// Records the highest allocated one-time prekey id.
    fn omemo2_set_last_prekey_id(&mut self, id: u32) -> Result<()>;

    /// The serialized [`Omemo2SessionRecord`] of a device.
    fn omemo2_load_session(&self, address: &Address) -> Result<Option<Vec<u8>>>;
    /// Stores the serialized [`Omemo2SessionRecord`] of a device.
    fn omemo2_store_session(&mut self, address: &Address, record: &[u8]) -> Result<()>;
    /// Deletes the record of a device.
    fn omemo2_delete_session(&mut self, address: &Address) -> Result<()>;
    /// The device ids with a stored record for a bare JID, ascending.
    fn omemo2_session_devices(&self, bare_jid: &str) -> Result<Vec<u32>>;

    /// A peer device's Ed25519 identity key and our trust in it.
    fn omemo2_identity(&self, address: &Address) -> Result<Option<([u8; 32], Omemo2Trust)>>;
    /// Records a peer device's identity key and trust.
    fn omemo2_store_identity(
        &mut self,
        address: &Address,
        identity: &[u8; 32],
        trust: Omemo2Trust,
    ) -> Result<()>;
}

/// Loads a device's record (an empty one if none is stored).
pub fn load_record<S: Omemo2Store + ?Sized>(
    store: &S,
    address: &Address,
) -> Result<Omemo2SessionRecord> {
    match store.omemo2_load_session(address)? {
        Some(bytes) => {
            let bytes = Zeroizing::new(bytes);
            Omemo2SessionRecord::deserialize(&bytes)
        }
        None => Ok(Omemo2SessionRecord::new()),
    }
}

/// Stores a device's record.
pub fn save_record<S: Omemo2Store + ?Sized>(
    store: &mut S,
    address: &Address,
    record: &Omemo2SessionRecord,
) -> Result<()> {
    store.omemo2_store_session(address, &record.serialize())
}

/// Generates one-time prekeys until `target` are stored, with fresh increasing ids (wrapping
/// from `u32::MAX` to 1, skipping ids in use). Returns the new prekeys.
pub fn replenish_prekeys<S: Omemo2Store + ?Sized>(
    store: &mut S,
    target: usize,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<PreKeyRecord>> {
    let ids = store.omemo2_prekey_ids()?;
    let mut in_use: std::collections::BTreeSet<u32> = ids.into_iter().collect();
    let mut last = store.omemo2_last_prekey_id()?;
    let mut fresh = Vec::new();
    while in_use.len() < target {
        last = if last == u32::MAX { 1 } else { last + 1 };
        if in_use.contains(&last) {
            continue;
        }
        let record = PreKeyRecord::generate(last, rng);
        store.omemo2_store_prekey(&record)?;
        in_use.insert(last);
        fresh.push(record);
    }
    store.omemo2_set_last_prekey_id(last)?;
    Ok(fresh)
}

/// Generates a new signed prekey with id `max(existing) + 1` and stores it; it becomes the
/// one published by [`own_bundle`]. Older ones stay for late key exchanges until removed.
pub fn rotate_signed_prekey<S: Omemo2Store + ?Sized>(
    store: &mut S,
    identity: &IdentityKeyPair,
    timestamp: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<Omemo2SignedPreKey> {
    let next = store
        .omemo2_signed_prekeys()?
        .iter()
        .map(|s| s.id)
        .max()
        .map_or(1, |m| m.wrapping_add(1).max(1));
    let spk = Omemo2SignedPreKey::generate(next, identity, timestamp, rng);
    store.omemo2_store_signed_prekey(&spk)?;
    Ok(spk)
}

/// The signed prekey to publish: the newest by timestamp, then id.
pub fn current_signed_prekey<S: Omemo2Store + ?Sized>(
    store: &S,
) -> Result<Option<Omemo2SignedPreKey>> {
    Ok(store
        .omemo2_signed_prekeys()?
        .into_iter()
        .max_by_key(|s| (s.timestamp, s.id)))
}

/// Our bundle for `urn:xmpp:omemo:2:bundles` item `device_id`.
pub fn own_bundle<S: Omemo2Store + ?Sized>(
    store: &S,
    identity: &IdentityKeyPair,
    device_id: u32,
) -> Result<Omemo2Bundle> {
    let spk = current_signed_prekey(store)?.ok_or(SignalError::MissingSignedPreKey(0))?;
    let mut prekeys = Vec::new();
    for id in store.omemo2_prekey_ids()? {
        if let Some(pk) = store.omemo2_prekey(id)? {
            prekeys.push((id, *pk.key_pair.public.as_raw()));
        }
    }
    Ok(Omemo2Bundle {
        device_id,
        ik: identity.ed25519_public(),
        spk_id: spk.id,
        spk: *spk.key_pair.public.as_raw(),
        spks: spk.signature,
        prekeys,
    })
}

/// [`Omemo2Store`] in memory (tests, ephemeral clients). Cloneable for snapshots.
#[derive(Clone, Debug, Default)]
pub struct InMemoryOmemo2Store {
    signed_prekeys: BTreeMap<u32, Omemo2SignedPreKey>,
    prekeys: BTreeMap<u32, PreKeyRecord>,
    last_prekey_id: u32,
    sessions: BTreeMap<(String, u32), Vec<u8>>,
    identities: BTreeMap<(String, u32), ([u8; 32], Omemo2Trust)>,
}

impl InMemoryOmemo2Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with one signed prekey (timestamp 0) and [`PREKEY_TARGET`] one-time prekeys.
    pub fn generate(identity: &IdentityKeyPair, rng: &mut impl CryptoRngCore) -> Result<Self> {
        let mut s = Self::new();
        rotate_signed_prekey(&mut s, identity, 0, rng)?;
        replenish_prekeys(&mut s, PREKEY_TARGET, rng)?;
        Ok(s)
    }
}

fn key(a: &Address) -> (String, u32) {
    (a.name.clone(), a.device_id)
}

impl Omemo2Store for InMemoryOmemo2Store {
    fn omemo2_signed_prekey(&self, id: u32) -> Result<Option<Omemo2SignedPreKey>> {
        Ok(self.signed_prekeys.get(&id).cloned())
    }
    fn omemo2_store_signed_prekey(&mut self, spk: &Omemo2SignedPreKey) -> Result<()> {
        self.signed_prekeys.insert(spk.id, spk.clone());
        Ok(())
    }
    fn omemo2_remove_signed_prekey(&mut self, id: u32) -> Result<()> {
        self.signed_prekeys.remove(&id);
        Ok(())
    }
    fn omemo2_signed_prekeys(&self) -> Result<Vec<Omemo2SignedPreKey>> {
        Ok(self.signed_prekeys.values().cloned().collect())
    }
    fn omemo2_prekey(&self, id: u32) -> Result<Option<PreKeyRecord>> {
        Ok(self.prekeys.get(&id).cloned())
    }
    fn omemo2_store_prekey(&mut self, prekey: &PreKeyRecord) -> Result<()> {
        self.prekeys.insert(prekey.id, prekey.clone());
        Ok(())
    }
    fn omemo2_remove_prekey(&mut self, id: u32) -> Result<()> {
        self.prekeys.remove(&id);
        Ok(())
    }
    fn omemo2_prekey_ids(&self) -> Result<Vec<u32>> {
        Ok(self.prekeys.keys().copied().collect())
    }
    fn omemo2_last_prekey_id(&self) -> Result<u32> {
        Ok(self.last_prekey_id)
    }
    fn omemo2_set_last_prekey_id(&mut self, id: u32) -> Result<()> {
        self.last_prekey_id = id;
        Ok(())
    }
    fn omemo2_load_session(&self, address: &Address) -> Result<Option<Vec<u8>>> {
        Ok(self.sessions.get(&key(address)).cloned())
    }
    fn omemo2_store_session(&mut self, address: &Address, record: &[u8]) -> Result<()> {
        self.sessions.insert(key(address), record.to_vec());
        Ok(())
    }
    fn omemo2_delete_session(&mut self, address: &Address) -> Result<()> {
        self.sessions.remove(&key(address));
        Ok(())
    }
    fn omemo2_session_devices(&self, bare_jid: &str) -> Result<Vec<u32>> {
        Ok(self
            .sessions
            .keys()
            .filter(|(j, _)| j == bare_jid)
            .map(|(_, d)| *d)
            .collect())
    }
    fn omemo2_identity(&self, address: &Address) -> Result<Option<([u8; 32], Omemo2Trust)>> {
        Ok(self.identities.get(&key(address)).copied())
    }
    fn omemo2_store_identity(
        &mut self,
        address: &Address,
        identity: &[u8; 32],
        trust: Omemo2Trust,
    ) -> Result<()> {
        self.identities.insert(key(address), (*identity, trust));
        Ok(())
    }
}
