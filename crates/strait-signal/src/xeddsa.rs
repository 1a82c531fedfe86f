//! XEdDSA signatures on Curve25519 keys.
//!
//! Two variants, written from the XEdDSA specification (signal.org/docs/specifications/xeddsa)
//! and the description of libsignal's behaviour in `shared/ref/signal-omemo.md` §1.10:
//!
//! * **libsignal variant** ([`sign`], [`verify`]) — used by libsignal v3, libsignal-protocol-java,
//!   OMEMO 0.3 and WhatsApp. The signer uses its scalar `a = k mod ℓ` as is (no negation), and
//!   carries the Ed25519 sign bit of `A = a·B` in bit 7 of signature byte 63 (which is always
//!   zero in a canonical `s`). The verifier rebuilds `A` from the Montgomery `u` with that sign.
//!   The nonce is `r = SHA-512(0xFE ‖ 0xFF×31 ‖ k ‖ M ‖ Z) mod ℓ` over the clamped key bytes `k`.
//! * **spec variant** ([`sign_spec`], [`verify_spec`]) — exactly the specification: the signer
//!   negates `a` when needed so that `A` has sign bit 0, and the signature is a plain Ed25519
//!   signature under that `A` (what OMEMO 2 publishes as the Ed25519 identity key).
//!
//! libsignal's verifier accepts spec signatures (their top bit is 0); spec verifiers reject
//! libsignal signatures whenever the signer's sign bit is 1.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{PrivateKey, PublicKey, u_is_reduced};

/// `hash_1` domain-separation prefix of the XEdDSA spec: `2^256 − 1 − 1` little-endian.
const HASH1_PREFIX: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xfe;
    p
};

fn hash_to_scalar(parts: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    let mut digest: [u8; 64] = h.finalize().into();
    let s = Scalar::from_bytes_mod_order_wide(&digest);
    digest.zeroize();
    s
}

fn sign_with(
    a: &Scalar,
    a_enc: &[u8; 32],
    nonce_key: &[u8; 32],
    msg: &[u8],
    z: &[u8; 64],
) -> [u8; 64] {
    let mut r = hash_to_scalar(&[&HASH1_PREFIX, nonce_key, msg, z]);
    let r_enc = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let h = hash_to_scalar(&[&r_enc, a_enc, msg]);
    let s = h * a + r;
    r.zeroize();
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r_enc);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// Signs `msg` with libsignal-variant XEdDSA; `random64` is the 64-byte nonce randomness `Z`.
pub fn sign(private: &PrivateKey, msg: &[u8], random64: &[u8; 64]) -> [u8; 64] {
    let k = private.as_bytes();
    let mut a = Scalar::from_bytes_mod_order(*k);
    let a_enc = EdwardsPoint::mul_base(&a).compress().to_bytes();
    let sign_bit = a_enc[31] & 0x80;
    let mut sig = sign_with(&a, &a_enc, k, msg, random64);
    a.zeroize();
    sig[63] = (sig[63] & 0x7f) | sign_bit;
    sig
}

/// Shared verification: `A` decoded with `sign`, `s` taken from `sig` with bit 255 cleared.
fn verify_with_sign(u: &[u8; 32], sign_bit: u8, msg: &[u8], sig: &[u8; 64]) -> bool {
    let Some(a_point) = MontgomeryPoint(*u).to_edwards(sign_bit) else {
        return false;
    };
    let a_enc = a_point.compress().to_bytes();
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&sig[32..]);
    s_bytes[31] &= 0x7f;
    if s_bytes[31] & 0xe0 != 0 {
        return false;
    }
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
        return false;
    };
    let h = hash_to_scalar(&[&sig[..32], &a_enc, msg]);
    let r_check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &(-a_point), &s);
    r_check.compress().as_bytes().ct_eq(&sig[..32]).into()
}

/// Verifies a libsignal-variant XEdDSA signature (also accepts spec signatures).
pub fn verify(public: &PublicKey, msg: &[u8], sig: &[u8; 64]) -> bool {
    verify_with_sign(public.as_raw(), sig[63] >> 7, msg, sig)
}

/// The Ed25519 public key of a Curve25519 private key, normalized to sign bit 0 (XEdDSA
/// `calculate_key_pair`). Equals `public.to_ed25519(0)`.
pub fn ed25519_public_sign0(private: &PrivateKey) -> [u8; 32] {
    let (mut a, a_enc, _) = spec_scalar(private);
    a.zeroize();
    a_enc
}

/// XEdDSA `calculate_key_pair`: `a` negated when `A = a·B` has sign bit 1. Also returns whether
/// it was negated.
fn spec_scalar(private: &PrivateKey) -> (Scalar, [u8; 32], bool) {
    let mut a = Scalar::from_bytes_mod_order(*private.as_bytes());
    let a_point = EdwardsPoint::mul_base(&a);
    let mut a_enc = a_point.compress().to_bytes();
    let negated = a_enc[31] & 0x80 != 0;
    if negated {
        let neg = -a;
        a.zeroize();
        a = neg;
        a_enc[31] &= 0x7f;
    }
    (a, a_enc, negated)
}

/// Signs with spec XEdDSA: the result is a standard Ed25519 signature under
/// [`ed25519_public_sign0`]. The nonce hash takes the private scalar bytes: the clamped key as
/// stored when no negation was needed (as libxeddsa / python-xeddsa do, so that signatures match
/// theirs byte for byte), the encoding of `−a mod ℓ` otherwise.
pub fn sign_spec(private: &PrivateKey, msg: &[u8], random64: &[u8; 64]) -> [u8; 64] {
    let (mut a, a_enc, negated) = spec_scalar(private);
    let nonce_key = if negated {
        Zeroizing::new(a.to_bytes())
    } else {
        Zeroizing::new(*private.as_bytes())
    };
    let sig = sign_with(&a, &a_enc, &nonce_key, msg, random64);
    a.zeroize();
    sig
}

/// Verifies a spec XEdDSA signature: rejects `u ≥ p`, decodes `A` with sign 0, requires
/// `s < 2^253` (and canonical).
pub fn verify_spec(public: &PublicKey, msg: &[u8], sig: &[u8; 64]) -> bool {
    if !u_is_reduced(public.as_raw()) || sig[63] & 0xe0 != 0 {
        return false;
    }
    verify_with_sign(public.as_raw(), 0, msg, sig)
}

/// Verifies a standard Ed25519 signature (RFC 8032, strict) under a 32-byte Ed25519 public key,
/// e.g. an OMEMO 2 identity key.
pub fn verify_ed25519(ed_public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(ed_public) else {
        return false;
    };
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// libsignal-protocol-java `Curve25519Test.testSignature` (same vector in libsignal
    /// `rust/core/src/curve/curve25519.rs` `test_signature`): an identity key whose Ed25519 sign bit
    /// is 1 (note `sig[63] = 0x88`), signing a 33-byte serialized public key.
    #[test]
    fn libsignal_signature_kat_sign_bit_one() {
        let private = PrivateKey::from_slice(&h(
            "c097248412e58bf05df487968205132794178e367637f5818f81e0e6ce73e865",
        ))
        .unwrap();
        let public = PublicKey::deserialize(&h(
            "05ab7e717d4a163b7d9a1d8071dfe9dcf8cdcd1cea3339b6356be84d887e322c64",
        ))
        .unwrap();
        assert_eq!(private.public_key(), public);
        let msg = h("05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a");
        let sig: [u8; 64] = h(
            "5de88ca9a89b4a115da79109c67c9c7464a3e4180274f1cb8c63c2984e286dfb\
                               ede82deb9dcd9fae0bfbb821569b3d9001bd8130cd11d486cef047bd60b86e88",
        )
        .try_into()
        .unwrap();
        assert_eq!(sig[63] >> 7, 1);
        assert!(verify(&public, &msg, &sig));
        // the spec verifier rejects it (sign bit 1), with and without the bit
        assert!(!verify_spec(&public, &msg, &sig));
        let mut cleared = sig;
        cleared[63] &= 0x7f;
        assert!(!verify_spec(&public, &msg, &cleared));
        assert!(!verify(&public, &msg, &cleared));
        for i in 0..64 {
            let mut m = sig;
            m[i] ^= 1;
            assert!(!verify(&public, &msg, &m), "bit flip at byte {i} accepted");
        }
        // our own signatures with this key also carry sign bit 1 and verify
        let ours = sign(&private, &msg, &[0x42; 64]);
        assert_eq!(ours[63] >> 7, 1);
        assert!(verify(&public, &msg, &ours));
    }

    #[test]
    fn spec_signatures_verify_as_ed25519() {
        let mut rng = rand_core::OsRng;
        for i in 0..16u8 {
            let private = PrivateKey::generate(&mut rng);
            let public = private.public_key();
            let msg = [i; 40];
            let sig = sign_spec(&private, &msg, &[i; 64]);
            let ed = ed25519_public_sign0(&private);
            assert_eq!(Some(ed), public.to_ed25519(0));
            assert!(verify_ed25519(&ed, &msg, &sig));
            assert!(verify_spec(&public, &msg, &sig));
            assert!(
                verify(&public, &msg, &sig),
                "libsignal verifier accepts spec sigs"
            );
            let lib = sign(&private, &msg, &[i; 64]);
            assert!(verify(&public, &msg, &lib));
            assert!(!verify(&public, b"other", &lib));
        }
    }

    /// Cross-check with an independent implementation: expected values computed with
    /// python-xeddsa 1.2.0 (`priv_to_ed25519_pub(priv)`, `ed25519_priv_sign(priv, msg, nonce)`,
    /// nonce = bytes 0..64) for a key whose Ed25519 sign bit is 0, where the spec variant, the
    /// libsignal variant and libxeddsa all produce the same signature.
    #[test]
    fn spec_variant_matches_python_xeddsa() {
        let private = PrivateKey::from_slice(&h(
            "4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e",
        ))
        .unwrap();
        let msg = h("05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a");
        let mut nonce = [0u8; 64];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        let ed = ed25519_public_sign0(&private);
        assert_eq!(
            hex::encode(ed),
            "90e247619599abd3dc102fe6f57f0be0ef92ed8780d37891eb51b13a7e2a4f6b"
        );
        let sig = sign_spec(&private, &msg, &nonce);
        assert_eq!(
            hex::encode(sig),
            "4bd45b8c76d7c88909929224c1acf3b013c9e256bb156e91f7d732094fab5ddf\
             c30e24a38f6554c4ede45d6c2cab350d783f588556770bb656b4aca77e4e4104"
        );
        assert!(verify_ed25519(&ed, &msg, &sig));
        // with sign bit 0 the libsignal variant produces the same bytes
        assert_eq!(sign(&private, &msg, &nonce), sig);
    }

    /// libsignal-variant signing with sign bit 1, cross-checked with python-xeddsa 1.2.0:
    /// `ed25519_priv_sign(priv, msg, nonce)` (nonce = bytes 0..64) on the libsignal KAT identity
    /// key yields an Ed25519 signature under the unnormalized `A` (`priv_to_ed25519_pub` =
    /// `6e76…c4`, sign bit 1); the libsignal variant is that signature with bit 7 of byte 63 set.
    #[test]
    fn libsignal_variant_sign_bit_one_matches_python_xeddsa() {
        let private = PrivateKey::from_slice(&h(
            "c097248412e58bf05df487968205132794178e367637f5818f81e0e6ce73e865",
        ))
        .unwrap();
        let msg = h("05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a");
        let mut nonce = [0u8; 64];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        let python = h(
            "f9c27b36edb54973736f587dd0e8d75c2afe54a8218d4b5cc5afbedfd2a4a2dd\
                        f52f686c104e4a49f9f482e1bd559d6f33f8510423129821c4701fea427cf504",
        );
        let mut expected: [u8; 64] = python.clone().try_into().unwrap();
        expected[63] |= 0x80;
        let sig = sign(&private, &msg, &nonce);
        assert_eq!(sig, expected);
        assert!(verify(&private.public_key(), &msg, &sig));
        assert_eq!(
            hex::encode(private.public_key().to_ed25519(1).unwrap()),
            "6e76ed464e9784130e359de1d7cd59c71d12abb745b0c436f7a2a0c93bc562c4"
        );
        // a standard Ed25519 verifier accepts python's signature under the sign-1 key
        let ed1: [u8; 32] = private.public_key().to_ed25519(1).unwrap();
        assert!(verify_ed25519(&ed1, &msg, &python.try_into().unwrap()));
    }
}
