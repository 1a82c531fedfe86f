//! Symmetric payload encryption of OMEMO 0.3 and OMEMO 2.
//!
//! The Double Ratchet session of each recipient device only carries a short *key material*; the
//! `<payload/>` is encrypted once for all devices with a fresh key:
//!
//! | | OMEMO 0.3 | OMEMO 2 |
//! |---|---|---|
//! | cipher | AES-128-GCM, 12-byte IV (16 accepted), 16-byte tag | AES-256-CBC/PKCS#7 + HMAC-SHA-256 truncated to 16 |
//! | keys | random key16 and IV | random key32 → `HKDF-SHA-256(salt = 0³², info = "OMEMO Payload", L = 80)` = enc32 ‖ auth32 ‖ iv16 |
//! | session plaintext | `key16 ‖ tag16` (32 bytes) | `key32 ‖ hmac16` (48 bytes) |
//! | `<iv/>` on the wire | yes | no (derived) |
//! | no payload | KeyTransport: a fresh key16, empty tag → 16 bytes | "empty message": 32 zero bytes |
//!
//! Sources: XEP-0384 v0.3.0 and current text (§ Message Encryption), `../shared/ref/signal-omemo.md`
//! §2.2 and §3, black-box behaviour of python-oldmemo / python-twomemo 2.1.0.

use aes::{Aes128, Aes256};
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{AesGcm, Nonce, Tag};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::{OmemoError, Result};

type Aes128Gcm12 = AesGcm<Aes128, U12>;
type Aes128Gcm16 = AesGcm<Aes128, U16>;

/// Length of the OMEMO 0.3 payload key (AES-128).
pub const V03_KEY_LEN: usize = 16;
/// Length of the GCM tag.
pub const V03_TAG_LEN: usize = 16;
/// Length of the key material an OMEMO 0.3 message puts into the Signal session (`key ‖ tag`).
pub const V03_KEY_MATERIAL_LEN: usize = V03_KEY_LEN + V03_TAG_LEN;
/// IV length emitted for OMEMO 0.3 payloads (Conversations, python-oldmemo, omemo-dr).
pub const V03_IV_LEN: usize = 12;
/// IV length of early OMEMO 0.3 clients, still accepted on receive.
pub const V03_LEGACY_IV_LEN: usize = 16;

/// Length of the OMEMO 2 payload key.
pub const V2_KEY_LEN: usize = 32;
/// Length of the truncated HMAC-SHA-256 of OMEMO 2 payloads.
pub const V2_MAC_LEN: usize = 16;
/// Length of the key material an OMEMO 2 message puts into the Double Ratchet (`key ‖ hmac`).
pub const V2_KEY_MATERIAL_LEN: usize = V2_KEY_LEN + V2_MAC_LEN;
/// HKDF info of the OMEMO 2 payload key schedule.
pub const V2_PAYLOAD_INFO: &[u8] = b"OMEMO Payload";

/// The Double Ratchet plaintext of an OMEMO 2 *empty message* (no `<payload/>`): 32 zero bytes
/// (XEP-0384 § Message structure description: "32 zero-bytes are encrypted with the Double
/// Ratchet session directly"). Empty messages complete key exchanges, act as heartbeats and
/// move the ratchet forward.
pub const V2_EMPTY_MESSAGE: [u8; 32] = [0u8; 32];

/// Whether decrypted OMEMO 2 key material is the [`V2_EMPTY_MESSAGE`] (constant time).
pub fn is_v2_empty_message(key_material: &[u8]) -> bool {
    key_material.len() == V2_EMPTY_MESSAGE.len()
        && bool::from(key_material.ct_eq(&V2_EMPTY_MESSAGE))
}

// ------------------------------------------------------------------------------------------------
// OMEMO 0.3
// ------------------------------------------------------------------------------------------------

/// Encrypt an OMEMO 0.3 message body (UTF-8 text) with AES-128-GCM under a fresh key and
/// 12-byte IV.
///
/// Returns `(key_material, iv, payload)`: `key_material = key16 ‖ tag16` goes into the Signal
/// session of every recipient device, `iv` into `<iv/>` and `payload` (the ciphertext *without*
/// the tag) into `<payload/>`.
pub fn encrypt_v03(
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> ([u8; V03_KEY_MATERIAL_LEN], [u8; V03_IV_LEN], Vec<u8>) {
    let mut key = Zeroizing::new([0u8; V03_KEY_LEN]);
    rng.fill_bytes(key.as_mut());
    let mut iv = [0u8; V03_IV_LEN];
    rng.fill_bytes(&mut iv);

    let cipher = Aes128Gcm12::new_from_slice(key.as_ref()).expect("16-byte key");
    let mut buf = plaintext.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(Nonce::<U12>::from_slice(&iv), b"", &mut buf)
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");

    let mut key_material = [0u8; V03_KEY_MATERIAL_LEN];
    key_material[..V03_KEY_LEN].copy_from_slice(key.as_ref());
    key_material[V03_KEY_LEN..].copy_from_slice(&tag);
    (key_material, iv, buf)
}

/// Decrypt an OMEMO 0.3 `<payload/>`.
///
/// * `key_material` is what the Signal session yielded: 32 bytes `key16 ‖ tag16` (current
///   clients), or the legacy 16-byte key alone, in which case the tag is the last 16 bytes of
///   `payload` (early clients; omemo-dr still accepts this).
/// * `iv` is 12 bytes (current) or 16 bytes (early clients).
pub fn decrypt_v03(key_material: &[u8], iv: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    let (key, tag, ciphertext) = match key_material.len() {
        V03_KEY_MATERIAL_LEN => (
            &key_material[..V03_KEY_LEN],
            &key_material[V03_KEY_LEN..],
            payload,
        ),
        V03_KEY_LEN => {
            if payload.len() < V03_TAG_LEN {
                return Err(OmemoError::PayloadTooShort);
            }
            let (ct, tag) = payload.split_at(payload.len() - V03_TAG_LEN);
            (key_material, tag, ct)
        }
        n => return Err(OmemoError::InvalidKeyMaterial(n)),
    };
    let tag = Tag::<U16>::from_slice(tag);
    let mut buf = ciphertext.to_vec();
    let ok = match iv.len() {
        V03_IV_LEN => Aes128Gcm12::new_from_slice(key)
            .expect("16-byte key")
            .decrypt_in_place_detached(Nonce::<U12>::from_slice(iv), b"", &mut buf, tag),
        V03_LEGACY_IV_LEN => Aes128Gcm16::new_from_slice(key)
            .expect("16-byte key")
            .decrypt_in_place_detached(Nonce::<U16>::from_slice(iv), b"", &mut buf, tag),
        n => return Err(OmemoError::InvalidIv(n)),
    };
    match ok {
        Ok(()) => Ok(buf),
        Err(_) => {
            buf.zeroize();
            Err(OmemoError::AuthenticationFailed)
        }
    }
}

/// Key material and IV of an OMEMO 0.3 *KeyTransportElement* (an `<encrypted/>` without
/// `<payload/>`): a fresh 16-byte key with an **empty** tag, so the Signal session carries just
/// the 16 key bytes — what python-oldmemo (`PlainKeyMaterialImpl.make_empty`, `b""` tag) and
/// Conversations (`innerKey` without tag) send. The `<iv/>` is still present (12 random bytes).
/// The key is usable by external protocols (e.g. Jingle file transfer); most clients just use
/// these messages to complete or heal sessions.
pub fn key_transport_v03(rng: &mut impl CryptoRngCore) -> ([u8; V03_KEY_LEN], [u8; V03_IV_LEN]) {
    let mut key = [0u8; V03_KEY_LEN];
    rng.fill_bytes(&mut key);
    let mut iv = [0u8; V03_IV_LEN];
    rng.fill_bytes(&mut iv);
    (key, iv)
}

/// The transported key of a received OMEMO 0.3 KeyTransportElement: the first 16 bytes of
/// 16-byte (empty tag) or 32-byte (key ‖ tag, some clients) key material.
pub fn key_transport_key_v03(key_material: &[u8]) -> Result<[u8; V03_KEY_LEN]> {
    match key_material.len() {
        V03_KEY_LEN | V03_KEY_MATERIAL_LEN => {
            let mut key = [0u8; V03_KEY_LEN];
            key.copy_from_slice(&key_material[..V03_KEY_LEN]);
            Ok(key)
        }
        n => Err(OmemoError::InvalidKeyMaterial(n)),
    }
}

// ------------------------------------------------------------------------------------------------
// OMEMO 2
// ------------------------------------------------------------------------------------------------

struct V2Keys {
    enc: [u8; 32],
    auth: [u8; 32],
    iv: [u8; 16],
}

impl Drop for V2Keys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.auth.zeroize();
        self.iv.zeroize();
    }
}

fn v2_keys(key: &[u8]) -> V2Keys {
    let mut okm = Zeroizing::new([0u8; 80]);
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), key)
        .expand(V2_PAYLOAD_INFO, okm.as_mut())
        .expect("80 bytes is a valid HKDF-SHA-256 output length");
    let mut k = V2Keys {
        enc: [0; 32],
        auth: [0; 32],
        iv: [0; 16],
    };
    k.enc.copy_from_slice(&okm[..32]);
    k.auth.copy_from_slice(&okm[32..64]);
    k.iv.copy_from_slice(&okm[64..80]);
    k
}

fn v2_mac(auth: &[u8; 32], ciphertext: &[u8]) -> [u8; V2_MAC_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(auth).expect("HMAC takes any key length");
    mac.update(ciphertext);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; V2_MAC_LEN];
    out.copy_from_slice(&full[..V2_MAC_LEN]);
    out
}

/// Encrypt the serialized SCE `<envelope/>` of an OMEMO 2 message (see
/// [`super::sce::Envelope::to_bytes`]).
///
/// Returns `(key_material, payload)`: `key_material = key32 ‖ hmac16` (48 bytes) is encrypted
/// with each recipient device's Double Ratchet, `payload` is the AES-256-CBC ciphertext that goes
/// base64-encoded into `<payload/>`.
pub fn encrypt_v2(
    envelope: &[u8],
    rng: &mut impl CryptoRngCore,
) -> ([u8; V2_KEY_MATERIAL_LEN], Vec<u8>) {
    let mut key = Zeroizing::new([0u8; V2_KEY_LEN]);
    rng.fill_bytes(key.as_mut());
    let keys = v2_keys(key.as_ref());
    let ciphertext = cbc::Encryptor::<Aes256>::new(&keys.enc.into(), &keys.iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(envelope);
    let mac = v2_mac(&keys.auth, &ciphertext);
    let mut key_material = [0u8; V2_KEY_MATERIAL_LEN];
    key_material[..V2_KEY_LEN].copy_from_slice(key.as_ref());
    key_material[V2_KEY_LEN..].copy_from_slice(&mac);
    (key_material, ciphertext)
}

/// Decrypt an OMEMO 2 `<payload/>` with the 48-byte key material from the Double Ratchet.
/// The truncated HMAC is checked in constant time before anything is decrypted. Returns the
/// serialized SCE envelope (parse it with [`super::sce::Envelope::parse`]).
///
/// Key material equal to [`V2_EMPTY_MESSAGE`] (32 bytes) belongs to an empty message, which
/// has no payload: it is rejected here as [`OmemoError::InvalidKeyMaterial`].
pub fn decrypt_v2(key_material: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    if key_material.len() != V2_KEY_MATERIAL_LEN {
        return Err(OmemoError::InvalidKeyMaterial(key_material.len()));
    }
    if payload.is_empty() || !payload.len().is_multiple_of(16) {
        return Err(OmemoError::PayloadTooShort);
    }
    let (key, mac) = key_material.split_at(V2_KEY_LEN);
    let keys = v2_keys(key);
    let expected = v2_mac(&keys.auth, payload);
    if !bool::from(expected.ct_eq(mac)) {
        return Err(OmemoError::AuthenticationFailed);
    }
    cbc::Decryptor::<Aes256>::new(&keys.enc.into(), &keys.iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(payload)
        .map_err(|_| OmemoError::InvalidPadding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_empty_message_detection() {
        assert!(is_v2_empty_message(&[0u8; 32]));
        assert!(!is_v2_empty_message(&[0u8; 48]));
        let mut x = [0u8; 32];
        x[31] = 1;
        assert!(!is_v2_empty_message(&x));
    }
}
