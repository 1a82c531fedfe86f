//! One-time prekeys and signed prekeys: records, generation, replenishment.

use prost::Message as _;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::{Result, SignalError};
use crate::keys::{IdentityKeyPair, KeyPair, PrivateKey, PublicKey};
use crate::proto::{PreKeyRecordStructure, SignedPreKeyRecordStructure};
use crate::store::PreKeyStore;

/// Largest prekey id (libsignal's `Medium.MAX_VALUE`, 2^24 − 1); ids wrap to 1 after it.
pub const MAX_PRE_KEY_ID: u32 = 0x00ff_fffe;

/// A one-time prekey.
#[derive(Clone, Debug)]
pub struct PreKeyRecord {
    /// The id published in the bundle.
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
}

impl PreKeyRecord {
    /// A fresh prekey with `id`.
    pub fn generate(id: u32, rng: &mut impl CryptoRngCore) -> Self {
        PreKeyRecord {
            id,
            key_pair: KeyPair::generate(rng),
        }
    }

    /// Storage form ([`PreKeyRecordStructure`]). Contains the private key.
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let s = PreKeyRecordStructure {
            id: self.id,
            public_key: self.key_pair.public.serialize().to_vec(),
            private_key: self.key_pair.private.to_bytes().to_vec(),
        };
        Zeroizing::new(s.encode_to_vec())
    }

    /// Parses [`PreKeyRecord::serialize`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let s = PreKeyRecordStructure::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("prekey: {e}")))?;
        Ok(PreKeyRecord {
            id: s.id,
            key_pair: load_pair(&s.public_key, &s.private_key)?,
        })
    }
}

fn load_pair(public: &[u8], private: &[u8]) -> Result<KeyPair> {
    let pair = KeyPair::from_private(PrivateKey::from_slice(private)?);
    if pair.public != PublicKey::deserialize_exact(public)? {
        return Err(SignalError::CorruptRecord("key pair halves differ".into()));
    }
    Ok(pair)
}

/// A signed prekey.
#[derive(Clone, Debug)]
pub struct SignedPreKeyRecord {
    /// The id published in the bundle.
    pub id: u32,
    /// The key pair.
    pub key_pair: KeyPair,
    /// libsignal-variant XEdDSA signature of the 33-byte public key by the identity key.
    pub signature: [u8; 64],
    /// Creation time (caller-defined unit; milliseconds since the epoch in libsignal).
    pub timestamp: u64,
}

impl SignedPreKeyRecord {
    /// A fresh signed prekey, signed by `identity`.
    pub fn generate(
        identity: &IdentityKeyPair,
        id: u32,
        timestamp: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let key_pair = KeyPair::generate(rng);
        let signature = identity.sign(&key_pair.public.serialize(), rng);
        SignedPreKeyRecord {
            id,
            key_pair,
            signature,
            timestamp,
        }
    }

    /// Storage form ([`SignedPreKeyRecordStructure`]). Contains the private key.
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let s = SignedPreKeyRecordStructure {
            id: self.id,
            public_key: self.key_pair.public.serialize().to_vec(),
            private_key: self.key_pair.private.to_bytes().to_vec(),
            signature: self.signature.to_vec(),
            timestamp: self.timestamp,
        };
        Zeroizing::new(s.encode_to_vec())
    }

    /// Parses [`SignedPreKeyRecord::serialize`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let s = SignedPreKeyRecordStructure::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("signed prekey: {e}")))?;
        let signature: [u8; 64] = s
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignalError::CorruptRecord("signature length".into()))?;
        Ok(SignedPreKeyRecord {
            id: s.id,
            key_pair: load_pair(&s.public_key, &s.private_key)?,
            signature,
            timestamp: s.timestamp,
        })
    }
}

/// The id after `id`, wrapping from [`MAX_PRE_KEY_ID`] to 1.
pub fn next_pre_key_id(id: u32) -> u32 {
    if id >= MAX_PRE_KEY_ID { 1 } else { id + 1 }
}

/// `count` fresh prekeys with consecutive ids starting at `start_id` (wrapping, never 0).
pub fn generate_pre_keys(
    start_id: u32,
    count: u32,
    rng: &mut impl CryptoRngCore,
) -> Vec<PreKeyRecord> {
    let mut id = if start_id == 0 || start_id > MAX_PRE_KEY_ID {
        1
    } else {
        start_id
    };
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        out.push(PreKeyRecord::generate(id, rng));
        id = next_pre_key_id(id);
    }
    out
}

/// Tops the store up to `target` prekeys when it holds fewer than `min`. New ids follow the
/// highest stored id (skipping ids in use). Returns the new records (to publish).
pub fn replenish<S: PreKeyStore + ?Sized>(
    store: &mut S,
    min: usize,
    target: usize,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<PreKeyRecord>> {
    let mut ids = store.pre_key_ids()?;
    if ids.len() >= min || ids.len() >= target {
        return Ok(Vec::new());
    }
    ids.sort_unstable();
    let mut id = ids.last().map_or(1, |&last| next_pre_key_id(last));
    let mut fresh = Vec::new();
    while ids.len() + fresh.len() < target {
        if ids.binary_search(&id).is_err() {
            let record = PreKeyRecord::generate(id, rng);
            store.store_pre_key(&record)?;
            fresh.push(record);
        }
        id = next_pre_key_id(id);
    }
    Ok(fresh)
}
