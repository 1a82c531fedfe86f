//! Curve25519 keys as the Signal protocol uses them.
//!
//! * [`PublicKey`]: an X25519 u-coordinate. On the libsignal v3 wire (and in OMEMO 0.3 / WhatsApp)
//!   it is serialized as 33 bytes, the type byte `0x05` followed by the 32-byte little-endian `u`.
//!   OMEMO 2 uses the raw 32 bytes ([`PublicKey::from_raw`], [`PublicKey::as_raw`]).
//! * [`PrivateKey`]: a clamped X25519 scalar, wiped on drop.
//! * [`KeyPair`], [`IdentityKeyPair`] (signs with libsignal-variant XEdDSA, see [`crate::xeddsa`]).
//!
//! Deserialization policy: [`PublicKey::deserialize`] requires at least 33 bytes starting with
//! `0x05` and, like libsignal, tolerates (ignores) trailing bytes; [`PublicKey::deserialize_exact`]
//! rejects them. Wire parsers in this crate use the tolerant form, for libsignal parity (the MAC
//! covers the received bytes, so the tolerance cannot be used to alter an authenticated message);
//! storage parsers use the exact form.

use core::fmt;

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Result, SignalError};

/// The key type byte of Curve25519 keys in libsignal's serialization (`KeyType::Djb`).
pub const DJB_TYPE: u8 = 0x05;

/// A Curve25519 (X25519) public key: the Montgomery u-coordinate, 32 bytes little-endian.
#[derive(Clone, Copy)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps a raw 32-byte u-coordinate (OMEMO 2 encoding).
    pub fn from_raw(u: [u8; 32]) -> Self {
        PublicKey(u)
    }

    /// The raw 32-byte u-coordinate.
    pub fn as_raw(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 33-byte libsignal serialization `0x05 ‖ u`.
    pub fn serialize(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = DJB_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// Parses `0x05 ‖ u`, tolerating trailing bytes as libsignal does.
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let (&ty, rest) = bytes.split_first().ok_or(SignalError::InvalidKey)?;
        if ty != DJB_TYPE {
            return Err(SignalError::BadKeyType(ty));
        }
        if rest.len() < 32 {
            return Err(SignalError::InvalidKey);
        }
        let mut u = [0u8; 32];
        u.copy_from_slice(&rest[..32]);
        Ok(PublicKey(u))
    }

    /// Parses exactly 33 bytes `0x05 ‖ u`.
    pub fn deserialize_exact(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != 33 {
            if let Some(&ty) = bytes.first()
                && ty != DJB_TYPE
            {
                return Err(SignalError::BadKeyType(ty));
            }
            return Err(SignalError::InvalidKey);
        }
        Self::deserialize(bytes)
    }

    /// True iff `u < 2^255 − 19` and the point is torsion-free (in the prime-order subgroup).
    ///
    /// libsignal (≥ 0.80.1) requires this of incoming X3DH base keys.
    pub fn is_canonical(&self) -> bool {
        if !u_is_reduced(&self.0) {
            return false;
        }
        match MontgomeryPoint(self.0).to_edwards(0) {
            Some(p) => p.is_torsion_free(),
            None => false,
        }
    }

    /// The Ed25519 public key obtained by the birational map with the given sign bit
    /// (0 or 1) of the x-coordinate, or `None` if `u` is not on the curve's map domain.
    pub fn to_ed25519(&self, sign: u8) -> Option<[u8; 32]> {
        MontgomeryPoint(self.0)
            .to_edwards(sign & 1)
            .map(|p| p.compress().to_bytes())
    }

    /// Converts an Ed25519 public key (e.g. an OMEMO 2 identity key) to its X25519 form.
    pub fn from_ed25519(ed: &[u8; 32]) -> Result<Self> {
        let point = CompressedEdwardsY(*ed)
            .decompress()
            .ok_or(SignalError::InvalidKey)?;
        Ok(PublicKey(point.to_montgomery().to_bytes()))
    }
}

/// `u < p = 2^255 − 19` for a little-endian 32-byte integer.
pub(crate) fn u_is_reduced(u: &[u8; 32]) -> bool {
    // p = 0x7fff…ffed little-endian: ed ff ff … ff 7f
    if u[31] > 0x7f {
        return false;
    }
    if u[31] < 0x7f {
        return true;
    }
    for i in (1..31).rev() {
        if u[i] < 0xff {
            return true;
        }
    }
    u[0] < 0xed
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for PublicKey {}

impl core::hash::Hash for PublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

/// A Curve25519 private key: 32 bytes, clamped on creation, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random private key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// Loads 32 bytes, clamping them (libsignal clamps on load "for backward compatibility").
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let key = PrivateKey(curve25519_dalek::scalar::clamp_integer(bytes));
        bytes.zeroize();
        key
    }

    /// Loads a 32-byte slice.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| SignalError::InvalidKey)?;
        Ok(Self::from_bytes(arr))
    }

    /// The clamped scalar bytes (secret!).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key `u = k·9`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// X25519 agreement; rejects the all-zero output (low-order peer keys).
    pub fn agree(&self, their: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        let shared = Zeroizing::new(MontgomeryPoint(their.0).mul_clamped(self.0).to_bytes());
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return Err(SignalError::ZeroSharedSecret);
        }
        Ok(shared)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// A Curve25519 key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// The public half.
    pub public: PublicKey,
    /// The private half.
    pub private: PrivateKey,
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_private(PrivateKey::generate(rng))
    }

    /// The key pair of a private key.
    pub fn from_private(private: PrivateKey) -> Self {
        KeyPair {
            public: private.public_key(),
            private,
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A long-term identity key pair.
#[derive(Clone, Debug)]
pub struct IdentityKeyPair(KeyPair);

/// Storage form of [`IdentityKeyPair`] (libsignal's `IdentityKeyPairStructure` layout:
/// field 1 = 33-byte public key, field 2 = 32-byte private key).
#[derive(Clone, PartialEq, prost::Message)]
struct IdentityKeyPairProto {
    #[prost(bytes = "vec", tag = "1")]
    public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    private_key: Vec<u8>,
}

impl IdentityKeyPair {
    /// A fresh identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        IdentityKeyPair(KeyPair::generate(rng))
    }

    /// The identity of a private key.
    pub fn from_private(private: PrivateKey) -> Self {
        IdentityKeyPair(KeyPair::from_private(private))
    }

    /// The key pair.
    pub fn key_pair(&self) -> &KeyPair {
        &self.0
    }

    /// The public identity key (Curve25519 form).
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public
    }

    /// The private identity key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.0.private
    }

    /// Signs with libsignal-variant XEdDSA (sign bit in bit 7 of byte 63).
    pub fn sign(&self, msg: &[u8], rng: &mut impl CryptoRngCore) -> [u8; 64] {
        let mut z = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(z.as_mut());
        crate::xeddsa::sign(&self.0.private, msg, &z)
    }

    /// The Ed25519 public key of this identity with sign bit 0, as OMEMO 2 publishes it.
    pub fn ed25519_public(&self) -> [u8; 32] {
        crate::xeddsa::ed25519_public_sign0(&self.0.private)
    }

    /// Signs with spec XEdDSA: a standard Ed25519 verifier accepts the result under
    /// [`IdentityKeyPair::ed25519_public`].
    pub fn sign_ed25519_compatible(&self, msg: &[u8], rng: &mut impl CryptoRngCore) -> [u8; 64] {
        let mut z = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(z.as_mut());
        crate::xeddsa::sign_spec(&self.0.private, msg, &z)
    }

    /// Storage serialization (protobuf: 1 = 33-byte public key, 2 = 32-byte private key).
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        use prost::Message;
        let proto = IdentityKeyPairProto {
            public_key: self.0.public.serialize().to_vec(),
            private_key: self.0.private.as_bytes().to_vec(),
        };
        let out = Zeroizing::new(proto.encode_to_vec());
        let IdentityKeyPairProto {
            public_key: _,
            mut private_key,
        } = proto;
        private_key.zeroize();
        out
    }

    /// Parses [`IdentityKeyPair::serialize`]; checks that the halves match.
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        use prost::Message;
        let mut proto = IdentityKeyPairProto::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("identity key pair: {e}")))?;
        let private = PrivateKey::from_slice(&proto.private_key);
        proto.private_key.zeroize();
        let private = private?;
        let public = PublicKey::deserialize_exact(&proto.public_key)?;
        let pair = KeyPair::from_private(private);
        if pair.public != public {
            return Err(SignalError::InvalidKey);
        }
        Ok(IdentityKeyPair(pair))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// X25519 agreement KAT from libsignal-protocol-java `Curve25519Test.testAgreement`
    /// (same values in libsignal `rust/core/src/curve/curve25519.rs` `test_agreement`).
    #[test]
    fn agreement_kat() {
        let alice_pub = PublicKey::deserialize(
            &hex::decode("051bb75966f2e93a3691dfff942bb2a466a1c08b8d78ca3f4d6df8b8bfa2e4ee28")
                .unwrap(),
        )
        .unwrap();
        let alice_priv = PrivateKey::from_bytes(h32(
            "c806439dc9d2c476ffed8f2580c0888d58ab406bf7ae3698879021b96bb4bf59",
        ));
        let bob_pub = PublicKey::deserialize(
            &hex::decode("05653614993d2b15ee9e5fd3d86ce719ef4ec1daae1886a87b3f5fa9565a27a22f")
                .unwrap(),
        )
        .unwrap();
        let bob_priv = PrivateKey::from_bytes(h32(
            "b03b34c33a1c44f225b662d2bf4859b8135411fa7b0386d45fb75dc5b91b4466",
        ));
        assert_eq!(alice_priv.public_key(), alice_pub);
        assert_eq!(bob_priv.public_key(), bob_pub);
        let shared = "325f239328941ced6e673b86ba41017448e99b649a9c3806c1dd7ca4c477e629";
        assert_eq!(hex::encode(*alice_priv.agree(&bob_pub).unwrap()), shared);
        assert_eq!(hex::encode(*bob_priv.agree(&alice_pub).unwrap()), shared);
    }

    #[test]
    fn zero_shared_secret_rejected() {
        let k = PrivateKey::from_bytes([7u8; 32]);
        // u = 0 and u = 1 are low-order points: the X25519 output is all zero.
        for u in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            assert!(matches!(
                k.agree(&PublicKey::from_raw(u)),
                Err(SignalError::ZeroSharedSecret)
            ));
        }
    }

    #[test]
    fn canonical_checks() {
        let mut rng = rand_core::OsRng;
        let kp = KeyPair::generate(&mut rng);
        assert!(kp.public.is_canonical());
        // u ≥ p
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(!PublicKey::from_raw(p).is_canonical());
        let mut big = *kp.public.as_raw();
        big[31] |= 0x80;
        assert!(!PublicKey::from_raw(big).is_canonical());
        // a low-order point (u = 0) is not torsion-free
        assert!(!PublicKey::from_raw([0u8; 32]).is_canonical());
        // a point with a torsion component: our key plus a low-order point
        let ed = MontgomeryPoint(*kp.public.as_raw()).to_edwards(0).unwrap();
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let mixed = PublicKey::from_raw((ed + torsion).to_montgomery().to_bytes());
        assert!(!mixed.is_canonical());
    }

    #[test]
    fn serialization() {
        let mut rng = rand_core::OsRng;
        let kp = KeyPair::generate(&mut rng);
        let s = kp.public.serialize();
        assert_eq!(s[0], 5);
        assert_eq!(PublicKey::deserialize(&s).unwrap(), kp.public);
        let mut long = s.to_vec();
        long.push(0);
        assert_eq!(PublicKey::deserialize(&long).unwrap(), kp.public);
        assert!(PublicKey::deserialize_exact(&long).is_err());
        let mut bad = s;
        bad[0] = 8;
        assert!(matches!(
            PublicKey::deserialize(&bad),
            Err(SignalError::BadKeyType(8))
        ));
        assert!(PublicKey::deserialize(&s[..32]).is_err());
        let id = IdentityKeyPair::generate(&mut rng);
        let back = IdentityKeyPair::deserialize(&id.serialize()).unwrap();
        assert_eq!(back.public_key(), id.public_key());
    }

    #[test]
    fn ed25519_roundtrip() {
        let mut rng = rand_core::OsRng;
        for _ in 0..8 {
            let id = IdentityKeyPair::generate(&mut rng);
            let ed = id.ed25519_public();
            assert_eq!(ed[31] & 0x80, 0);
            assert_eq!(PublicKey::from_ed25519(&ed).unwrap(), *id.public_key());
        }
    }
}
