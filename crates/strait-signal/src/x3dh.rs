//! X3DH, libsignal version 3 (`"WhisperText"`), from the X3DH specification
//! (signal.org/docs/specifications/x3dh) and `shared/ref/signal-omemo.md` §1.6.
//!
//! ```text
//! Initiator (Alice): DH1 = DH(IK_A, SPK_B)  DH2 = DH(EK_A, IK_B)  DH3 = DH(EK_A, SPK_B)
//!                    [DH4 = DH(EK_A, OPK_B)]
//! IKM = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4]
//! RK0 ‖ CK0 = HKDF-SHA256(salt none, IKM, "WhisperText", 64)
//! ```
//!
//! The ratchet is then initialized libsignal style (see [`crate::ratchet`]).

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::{Result, SignalError};
use crate::kdf::{WHISPER_TEXT, hkdf_sha256};
use crate::keys::{IdentityKeyPair, KeyPair, PublicKey};
use crate::ratchet::{LIBSIGNAL_V3, RatchetState};

/// A published key bundle of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// The device's registration id (0 in OMEMO 0.3, which does not publish it).
    pub registration_id: u32,
    /// The device id.
    pub device_id: u32,
    /// One one-time prekey `(id, key)`, if available.
    pub pre_key: Option<(u32, PublicKey)>,
    /// The signed prekey id.
    pub signed_pre_key_id: u32,
    /// The signed prekey.
    pub signed_pre_key: PublicKey,
    /// libsignal-variant XEdDSA signature of `signed_pre_key.serialize()` (33 bytes).
    pub signed_pre_key_signature: [u8; 64],
    /// The device's identity key.
    pub identity_key: PublicKey,
}

impl PreKeyBundle {
    /// Verifies the signed-prekey signature over the 33-byte serialized key.
    pub fn verify_signature(&self) -> Result<()> {
        if crate::xeddsa::verify(
            &self.identity_key,
            &self.signed_pre_key.serialize(),
            &self.signed_pre_key_signature,
        ) {
            Ok(())
        } else {
            Err(SignalError::InvalidSignature)
        }
    }
}

/// The X3DH output: libsignal's initial root key and chain key.
pub struct X3dhSecrets {
    /// `RK0 = OKM[0..32]` (also the Double-Ratchet-spec `SK`).
    pub root_key: Zeroizing<[u8; 32]>,
    /// `CK0 = OKM[32..64]`.
    pub chain_key: Zeroizing<[u8; 32]>,
}

/// `HKDF(salt none, 0xFF×32 ‖ dh…, info, 64)` split into root and chain key.
pub fn derive_secrets(dhs: &[&[u8; 32]], info: &[u8]) -> X3dhSecrets {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (1 + dhs.len())));
    ikm.extend_from_slice(&[0xff; 32]);
    for dh in dhs {
        ikm.extend_from_slice(&dh[..]);
    }
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_sha256(None, &ikm, info, okm.as_mut());
    let mut root_key = Zeroizing::new([0u8; 32]);
    let mut chain_key = Zeroizing::new([0u8; 32]);
    root_key.copy_from_slice(&okm[..32]);
    chain_key.copy_from_slice(&okm[32..]);
    X3dhSecrets {
        root_key,
        chain_key,
    }
}

/// The initiator's X3DH secrets.
pub fn initiator_secrets(
    our_identity: &IdentityKeyPair,
    our_base_key: &KeyPair,
    their_identity: &PublicKey,
    their_signed_pre_key: &PublicKey,
    their_one_time_pre_key: Option<&PublicKey>,
) -> Result<X3dhSecrets> {
    let dh1 = our_identity.private_key().agree(their_signed_pre_key)?;
    let dh2 = our_base_key.private.agree(their_identity)?;
    let dh3 = our_base_key.private.agree(their_signed_pre_key)?;
    let dh4 = their_one_time_pre_key
        .map(|k| our_base_key.private.agree(k))
        .transpose()?;
    let mut dhs: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(dh4) = &dh4 {
        dhs.push(dh4);
    }
    Ok(derive_secrets(&dhs, WHISPER_TEXT))
}

/// The responder's X3DH secrets; rejects a non-canonical (or torsioned) base key.
pub fn responder_secrets(
    our_identity: &IdentityKeyPair,
    our_signed_pre_key: &KeyPair,
    our_one_time_pre_key: Option<&KeyPair>,
    their_identity: &PublicKey,
    their_base_key: &PublicKey,
) -> Result<X3dhSecrets> {
    if !their_base_key.is_canonical() {
        return Err(SignalError::NonCanonicalKey);
    }
    let dh1 = our_signed_pre_key.private.agree(their_identity)?;
    let dh2 = our_identity.private_key().agree(their_base_key)?;
    let dh3 = our_signed_pre_key.private.agree(their_base_key)?;
    let dh4 = our_one_time_pre_key
        .map(|k| k.private.agree(their_base_key))
        .transpose()?;
    let mut dhs: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(dh4) = &dh4 {
        dhs.push(dh4);
    }
    Ok(derive_secrets(&dhs, WHISPER_TEXT))
}

/// The initiator's ratchet, libsignal style: receiving chain `(SPK_B, CK0)`, then a DH step with
/// a fresh ratchet key.
pub fn initiator_ratchet(
    secrets: &X3dhSecrets,
    their_signed_pre_key: &PublicKey,
    rng: &mut impl CryptoRngCore,
) -> Result<RatchetState> {
    RatchetState::new_initiator(
        LIBSIGNAL_V3,
        *secrets.root_key,
        *their_signed_pre_key,
        Some(*secrets.chain_key),
        KeyPair::generate(rng),
    )
}

/// The responder's ratchet, libsignal style: root `RK0`, sending chain `(SPK_B, CK0)`.
pub fn responder_ratchet(secrets: &X3dhSecrets, our_signed_pre_key: &KeyPair) -> RatchetState {
    RatchetState::new_responder(
        LIBSIGNAL_V3,
        *secrets.root_key,
        our_signed_pre_key.clone(),
        Some(*secrets.chain_key),
    )
}
