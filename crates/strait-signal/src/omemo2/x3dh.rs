//! OMEMO 2 X3DH (XEP-0384 §"Key Exchange", python-x3dh as used by python-twomemo).
//!
//! * Identity keys travel as Ed25519 public keys (32 bytes); for the DHs they are mapped to
//!   X25519 with the birational map. Our own X25519 identity secret is the
//!   [`IdentityKeyPair`]'s private key and its published form is
//!   [`IdentityKeyPair::ed25519_public`] (sign bit 0).
//! * Signed prekey, one-time prekeys and the ephemeral key are raw 32-byte X25519 keys.
//! * The SPK signature is a standard Ed25519 signature by `IK` over the raw 32-byte SPK.
//! * `DH1 = DH(IK_A, SPK_B)`, `DH2 = DH(EK_A, IK_B)`, `DH3 = DH(EK_A, SPK_B)`,
//!   `DH4 = DH(EK_A, OPK_B)`; the one-time prekey is mandatory.
//! * `SK = HKDF-SHA256(salt = 0×32, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 ‖ DH4, info = "OMEMO X3DH",
//!   L = 32)`.
//! * `AD = IK_A ‖ IK_B` (Ed25519 forms), initiator first, on both sides and for messages in both
//!   directions.
//!
//! Every DH rejects the all-zero output; the initiator's ephemeral key and the bundle's prekeys
//! must be canonical and torsion-free.

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::{Result, SignalError};
use crate::kdf::hkdf_sha256;
use crate::keys::{IdentityKeyPair, KeyPair, PublicKey};
use crate::xeddsa;

/// HKDF info of the OMEMO 2 X3DH.
pub const X3DH_INFO: &[u8] = b"OMEMO X3DH";

/// Length of the associated data `IK_A ‖ IK_B`.
pub const AD_LEN: usize = 64;

/// A peer's published OMEMO 2 bundle (`urn:xmpp:omemo:2:bundles`, item id = device id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Omemo2Bundle {
    /// The device id (the PEP item id).
    pub device_id: u32,
    /// Identity key, Ed25519 (`<ik>`).
    pub ik: [u8; 32],
    /// Signed prekey id (`<spk id>`).
    pub spk_id: u32,
    /// Signed prekey, raw X25519 (`<spk>`).
    pub spk: [u8; 32],
    /// Ed25519 signature of `spk` by `ik` (`<spks>`).
    pub spks: [u8; 64],
    /// One-time prekeys `(id, raw X25519)` (`<prekeys><pk id>`).
    pub prekeys: Vec<(u32, [u8; 32])>,
}

impl Omemo2Bundle {
    /// Checks the SPK signature (Ed25519 over the raw 32-byte SPK).
    pub fn verify_signature(&self) -> Result<()> {
        if xeddsa::verify_ed25519(&self.ik, &self.spk, &self.spks) {
            Ok(())
        } else {
            Err(SignalError::InvalidSignature)
        }
    }
}

/// What the initiator's half of the key agreement yields.
pub struct X3dhInitiated {
    /// The shared secret `SK` (the ratchet's initial root key).
    pub sk: Zeroizing<[u8; 32]>,
    /// `IK_A ‖ IK_B`.
    pub ad: [u8; AD_LEN],
    /// Our ephemeral public key (`OMEMOKeyExchange.ek`).
    pub ek: PublicKey,
    /// The responder's signed prekey (the ratchet's first remote key).
    pub spk: PublicKey,
    /// `OMEMOKeyExchange.spk_id`.
    pub spk_id: u32,
    /// `OMEMOKeyExchange.pk_id`: the one-time prekey chosen.
    pub pk_id: u32,
}

impl core::fmt::Debug for X3dhInitiated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("X3dhInitiated")
            .field("ek", &self.ek)
            .field("spk_id", &self.spk_id)
            .field("pk_id", &self.pk_id)
            .finish_non_exhaustive()
    }
}

/// The X25519 form of an Ed25519 identity key (birational map); rejects encodings that do not
/// decompress. Small-order keys are caught later by the all-zero DH check.
pub fn identity_to_x25519(ed: &[u8; 32]) -> Result<PublicKey> {
    PublicKey::from_ed25519(ed)
}

fn canonical(key: [u8; 32]) -> Result<PublicKey> {
    let key = PublicKey::from_raw(key);
    if !key.is_canonical() {
        return Err(SignalError::NonCanonicalKey);
    }
    Ok(key)
}

fn derive_sk(dhs: [&[u8; 32]; 4]) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 32 * 5]);
    ikm[..32].fill(0xff);
    for (i, dh) in dhs.iter().enumerate() {
        ikm[32 * (i + 1)..32 * (i + 2)].copy_from_slice(*dh);
    }
    let mut sk = Zeroizing::new([0u8; 32]);
    hkdf_sha256(Some(&[0u8; 32]), ikm.as_ref(), X3DH_INFO, sk.as_mut());
    sk
}

fn make_ad(ik_a: &[u8; 32], ik_b: &[u8; 32]) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    ad[..32].copy_from_slice(ik_a);
    ad[32..].copy_from_slice(ik_b);
    ad
}

/// The initiator's (Alice's) X3DH against a bundle: verifies the SPK signature, picks a random
/// one-time prekey, generates the ephemeral key.
pub fn initiate(
    identity: &IdentityKeyPair,
    bundle: &Omemo2Bundle,
    rng: &mut impl CryptoRngCore,
) -> Result<X3dhInitiated> {
    let ephemeral = KeyPair::generate(rng);
    initiate_with_ephemeral(identity, bundle, None, ephemeral, rng)
}

/// [`initiate`] with a chosen ephemeral key and optionally a chosen prekey id (known-answer
/// tests, cross-checks). `rng` only picks the prekey when `pk_id` is `None`.
pub fn initiate_with_ephemeral(
    identity: &IdentityKeyPair,
    bundle: &Omemo2Bundle,
    pk_id: Option<u32>,
    ephemeral: KeyPair,
    rng: &mut impl CryptoRngCore,
) -> Result<X3dhInitiated> {
    bundle.verify_signature()?;
    let (pk_id, pk) = match pk_id {
        Some(id) => *bundle
            .prekeys
            .iter()
            .find(|(i, _)| *i == id)
            .ok_or(SignalError::MissingPreKey(id))?,
        None => {
            if bundle.prekeys.is_empty() {
                return Err(SignalError::invalid_message(
                    "OMEMO 2 bundle without one-time prekeys",
                ));
            }
            let idx = (rng.next_u64() % bundle.prekeys.len() as u64) as usize;
            bundle.prekeys[idx]
        }
    };
    let spk = canonical(bundle.spk)?;
    let pk = canonical(pk)?;
    let ik_b = identity_to_x25519(&bundle.ik)?;
    let dh1 = identity.private_key().agree(&spk)?;
    let dh2 = ephemeral.private.agree(&ik_b)?;
    let dh3 = ephemeral.private.agree(&spk)?;
    let dh4 = ephemeral.private.agree(&pk)?;
    Ok(X3dhInitiated {
        sk: derive_sk([&dh1, &dh2, &dh3, &dh4]),
        ad: make_ad(&identity.ed25519_public(), &bundle.ik),
        ek: ephemeral.public,
        spk,
        spk_id: bundle.spk_id,
        pk_id,
    })
}

/// The responder's (Bob's) X3DH: `their_ik` (Ed25519) and `their_ek` from the
/// `OMEMOKeyExchange`, our signed prekey and one-time prekey pairs named by it.
/// Returns `(SK, AD)`.
pub fn respond(
    identity: &IdentityKeyPair,
    their_ik: &[u8; 32],
    their_ek: &[u8; 32],
    our_spk: &KeyPair,
    our_pk: &KeyPair,
) -> Result<(Zeroizing<[u8; 32]>, [u8; AD_LEN])> {
    let ek = canonical(*their_ek)?;
    let ik_a = identity_to_x25519(their_ik)?;
    let dh1 = our_spk.private.agree(&ik_a)?;
    let dh2 = identity.private_key().agree(&ek)?;
    let dh3 = our_spk.private.agree(&ek)?;
    let dh4 = our_pk.private.agree(&ek)?;
    Ok((
        derive_sk([&dh1, &dh2, &dh3, &dh4]),
        make_ad(their_ik, &identity.ed25519_public()),
    ))
}
