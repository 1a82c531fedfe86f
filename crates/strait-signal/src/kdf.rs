//! Key derivation and symmetric primitives of the Double Ratchet and X3DH.
//!
//! * `KDF_RK(rk, dh)`: HKDF-SHA256(salt = rk, ikm = dh, info = label, 64) → (rk', ck)
//! * `KDF_CK(ck)`: message-key seed = HMAC-SHA256(ck, 0x01), next ck = HMAC-SHA256(ck, 0x02)
//! * message keys: HKDF-SHA256(salt = none ≡ 32 zero bytes, ikm = seed, info = label, 80)
//!   → cipher key 32 ‖ mac key 32 ‖ iv 16
//! * AES-256-CBC with PKCS#7 padding.
//!
//! Labels are parameters: libsignal v3 uses `"WhisperRatchet"` / `"WhisperMessageKeys"`, OMEMO 2
//! `"OMEMO Root Chain"` / `"OMEMO Message Key Material"` (see [`crate::ratchet::RatchetConfig`]).

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Result, SignalError};

type HmacSha256 = Hmac<Sha256>;

/// libsignal's root-chain label.
pub const WHISPER_RATCHET: &[u8] = b"WhisperRatchet";
/// libsignal's message-key label.
pub const WHISPER_MESSAGE_KEYS: &[u8] = b"WhisperMessageKeys";
/// libsignal's v3 X3DH label.
pub const WHISPER_TEXT: &[u8] = b"WhisperText";

/// HKDF-SHA256 into `out` (`salt = None` is the RFC 5869 default: HashLen zero bytes).
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .expect("HKDF output length within 255·32");
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// `KDF_RK`: returns (new root key, new chain key).
pub fn kdf_rk(
    root_key: &[u8; 32],
    dh_out: &[u8; 32],
    info: &[u8],
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_sha256(Some(root_key), dh_out, info, okm.as_mut());
    let mut rk = Zeroizing::new([0u8; 32]);
    let mut ck = Zeroizing::new([0u8; 32]);
    rk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    (rk, ck)
}

/// A symmetric-ratchet chain key and the index of the next message key it yields.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChainKey {
    key: [u8; 32],
    #[zeroize(skip)]
    index: u32,
}

impl ChainKey {
    /// A chain key at `index`.
    pub fn new(key: [u8; 32], index: u32) -> Self {
        ChainKey { key, index }
    }

    /// The raw key (secret).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The index of the next message key.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `HMAC(ck, 0x01)`: the seed of this index's message keys.
    pub fn message_key_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(hmac_sha256(&self.key, &[&[0x01]]))
    }

    /// `HMAC(ck, 0x02)` at `index + 1`.
    pub fn next(&self) -> ChainKey {
        ChainKey {
            key: hmac_sha256(&self.key, &[&[0x02]]),
            index: self.index.wrapping_add(1),
        }
    }

    /// The message keys at this index.
    pub fn message_keys(&self, info: &[u8]) -> MessageKeys {
        MessageKeys::derive(&self.message_key_seed(), info, self.index)
    }
}

impl core::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ChainKey(index {})", self.index)
    }
}

/// The keys of one message: AES-256 key, HMAC key, CBC IV, and the message counter.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct MessageKeys {
    /// AES-256 key (`OKM[0..32]`).
    pub cipher_key: [u8; 32],
    /// HMAC-SHA256 key (`OKM[32..64]`).
    pub mac_key: [u8; 32],
    /// AES-CBC IV (`OKM[64..80]`).
    pub iv: [u8; 16],
    /// The message counter (index in its chain).
    #[zeroize(skip)]
    pub counter: u32,
}

impl MessageKeys {
    /// `HKDF(salt none, seed, info, 80)` split 32/32/16.
    pub fn derive(seed: &[u8; 32], info: &[u8], counter: u32) -> Self {
        let mut okm = Zeroizing::new([0u8; 80]);
        hkdf_sha256(None, seed, info, okm.as_mut());
        let mut k = MessageKeys {
            cipher_key: [0; 32],
            mac_key: [0; 32],
            iv: [0; 16],
            counter,
        };
        k.cipher_key.copy_from_slice(&okm[..32]);
        k.mac_key.copy_from_slice(&okm[32..64]);
        k.iv.copy_from_slice(&okm[64..80]);
        k
    }
}

impl core::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MessageKeys(counter {})", self.counter)
    }
}

/// AES-256-CBC with PKCS#7 padding.
pub fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    cbc::Encryptor::<Aes256>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext)
}

/// AES-256-CBC decryption; rejects empty or non-block-multiple input and bad padding
/// (reported as [`SignalError::BadMac`]: corruption is indistinguishable from tampering).
pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], ciphertext: &[u8]) -> Result<Vec<u8>> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(SignalError::invalid_message(
            "ciphertext length must be a non-zero multiple of 16",
        ));
    }
    cbc::Decryptor::<Aes256>::new(key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| SignalError::BadMac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// Chain-key KAT: libsignal `rust/protocol/src/ratchet/keys.rs` `test_chain_key_derivation`
    /// (iv recomputed independently in shared/ref/signal-omemo.md §1.14).
    #[test]
    fn chain_key_kat() {
        let ck = ChainKey::new(
            h32("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f"),
            0,
        );
        let mk = ck.message_keys(WHISPER_MESSAGE_KEYS);
        assert_eq!(
            hex::encode(mk.cipher_key),
            "bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217"
        );
        assert_eq!(
            hex::encode(mk.mac_key),
            "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b"
        );
        assert_eq!(hex::encode(mk.iv), "afa8207986b692a116d4b40bbff72d6c");
        assert_eq!(mk.counter, 0);
        let next = ck.next();
        assert_eq!(
            hex::encode(next.key()),
            "28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d"
        );
        assert_eq!(next.index(), 1);
        assert_eq!(next.message_keys(WHISPER_MESSAGE_KEYS).counter, 1);
    }

    /// AES-256-CBC KAT: libsignal `rust/crypto/src/aes_cbc.rs` `aes_cbc_test`.
    #[test]
    fn aes_cbc_kat() {
        let key = h32("4e22eb16d964779994222e82192ce9f747da72dc4abe49dfdeeb71d0ffe3796e");
        let iv: [u8; 16] = hex::decode("6f8a557ddc0a140c878063a6d5f31d3d")
            .unwrap()
            .try_into()
            .unwrap();
        let pt = hex::decode("30736294a124482a4159").unwrap();
        let ct = aes256_cbc_encrypt(&key, &iv, &pt);
        assert_eq!(hex::encode(&ct), "dd3f573ab4508b9ed0e45e0baf5608f3");
        assert_eq!(aes256_cbc_decrypt(&key, &iv, &ct).unwrap(), pt);
        // decrypting the plaintext-as-ciphertext gives bad padding
        assert!(
            aes256_cbc_decrypt(&key, &iv, &aes256_cbc_decrypt(&key, &iv, &ct).unwrap()).is_err()
        );
        let mut bad_iv = iv;
        bad_iv[0] ^= 0x80;
        assert_eq!(
            hex::encode(aes256_cbc_decrypt(&key, &bad_iv, &ct).unwrap()),
            "b0736294a124482a4159"
        );
        assert!(aes256_cbc_decrypt(&key, &iv, &[]).is_err());
        assert!(aes256_cbc_decrypt(&key, &iv, &[0; 15]).is_err());
    }
}
