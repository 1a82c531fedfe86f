//! Identity fingerprints, for users to compare out of band.
//!
//! Two forms:
//!
//! * **OMEMO hex fingerprint** ([`omemo_fingerprint`]): the lowercase hex of the 32-byte
//!   Curve25519 identity public key (the `0x05` type byte of OMEMO 0.3's 33-byte encoding
//!   dropped), 64 characters, displayed as 8 groups of 8 ([`display_groups`]). This is what the
//!   XEP-0384 v0.3 clients show and compare: Conversations displays the hex of the serialized
//!   identity key without its leading `05`, lowercase, split by spaces into 8-character blocks
//!   (the same key has the same fingerprint in Dino and Gajim); python-omemo's
//!   `SessionManager.format_identity_key` returns exactly these 8 groups ("in its Curve25519
//!   form as per the specification, in eight groups of eight lowercase hex chars"). OMEMO 2
//!   publishes the identity key in Ed25519 form; [`omemo_fingerprint_from_ed25519`] converts it
//!   with the birational map first, so a device shows the same fingerprint in both namespaces.
//!
//! * **Numeric safety number** ([`safety_number`]): 60 digits in the manner of Signal's
//!   published numeric fingerprint. Each party's half is
//!   `H_0 = version(2 bytes, big-endian, 0) ‖ key ‖ stable_id`,
//!   `H_{i+1} = SHA-512(H_i ‖ key)` for 5200 iterations, then the first 30 bytes of the result as
//!   six 5-byte big-endian integers, each reduced mod 100000 and printed as 5 zero-padded digits
//!   (30 digits). The two halves are concatenated smaller-first (as strings), so both parties
//!   display the same 60 digits. `key` is the 33-byte `0x05 ‖ u` Curve25519 identity key.
//!   Description sources: Signal's blog post "Safety number updates" (signal.org/blog,
//!   2016-11: a 60-digit number made of two 30-digit halves, one per party, from each identity
//!   key and identifier), and the public discussion of the construction ("Why iterate 5200 times
//!   when computing Safety Numbers in Signal?", security.stackexchange.com/q/195761: iterated
//!   SHA-512, 5200 iterations, 30 digits per party). Written from that description, not from
//!   libsignal's code; the stable identifier here is the bare JID (Signal uses the phone number
//!   or service id), so these numbers are Strait's own and are not meant to match Signal's app.

use curve25519_dalek::edwards::CompressedEdwardsY;
use sha2::{Digest, Sha512};

/// Version prefix of the numeric fingerprint.
pub const SAFETY_NUMBER_VERSION: u16 = 0;
/// SHA-512 iterations per half.
pub const SAFETY_NUMBER_ITERATIONS: usize = 5200;
/// Digits per party.
pub const SAFETY_NUMBER_HALF_DIGITS: usize = 30;

/// Errors of fingerprint computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// Not a 32-byte key or a 33-byte `0x05`-prefixed key.
    #[error("identity key must be 32 bytes or 33 bytes starting with 0x05, got {0} bytes")]
    InvalidKey(usize),
    /// The Ed25519 public key does not decode to a curve point.
    #[error("not a valid Ed25519 public key")]
    InvalidEd25519,
}

/// The raw 32-byte Curve25519 u-coordinate of a 32-byte or `0x05`-prefixed 33-byte key.
fn curve_u(identity_key: &[u8]) -> Result<[u8; 32], FingerprintError> {
    let raw = match identity_key {
        [0x05, rest @ ..] if rest.len() == 32 => rest,
        k if k.len() == 32 => k,
        k => return Err(FingerprintError::InvalidKey(k.len())),
    };
    let mut u = [0u8; 32];
    u.copy_from_slice(raw);
    Ok(u)
}

/// The OMEMO fingerprint (64 lowercase hex characters) of a Curve25519 identity key, given as
/// the OMEMO 0.3 33-byte `0x05 ‖ u` encoding or the raw 32-byte u-coordinate.
pub fn omemo_fingerprint(identity_key: &[u8]) -> Result<String, FingerprintError> {
    Ok(hex::encode(curve_u(identity_key)?))
}

/// The OMEMO fingerprint of an OMEMO 2 (Ed25519) identity key: converted to its Curve25519
/// form (`u = (1 + y) / (1 − y)`, RFC 7748 §4.1) and hex-encoded like [`omemo_fingerprint`].
pub fn omemo_fingerprint_from_ed25519(ik: &[u8; 32]) -> Result<String, FingerprintError> {
    let point = CompressedEdwardsY(*ik)
        .decompress()
        .ok_or(FingerprintError::InvalidEd25519)?;
    Ok(hex::encode(point.to_montgomery().to_bytes()))
}

/// Split a fingerprint into space-separated 8-character groups (`"0123abcd 4567ef01 …"`).
pub fn display_groups(fingerprint: &str) -> String {
    let chars: Vec<char> = fingerprint.chars().collect();
    chars
        .chunks(8)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One party's 30-digit half of the safety number.
pub fn safety_number_half(
    identity_key: &[u8],
    stable_id: &[u8],
) -> Result<String, FingerprintError> {
    let mut key = [0u8; 33];
    key[0] = 0x05;
    key[1..].copy_from_slice(&curve_u(identity_key)?);

    let mut hash: Vec<u8> = Vec::with_capacity(2 + key.len() + stable_id.len());
    hash.extend_from_slice(&SAFETY_NUMBER_VERSION.to_be_bytes());
    hash.extend_from_slice(&key);
    hash.extend_from_slice(stable_id);
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut d = Sha512::new();
        d.update(&hash);
        d.update(key);
        hash = d.finalize().to_vec();
    }

    let mut out = String::with_capacity(SAFETY_NUMBER_HALF_DIGITS);
    for chunk in hash[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    Ok(out)
}

/// A 60-digit safety number, identical on both sides of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
}

impl SafetyNumber {
    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// Display form: 12 groups of 5 digits separated by spaces.
    pub fn display(&self) -> String {
        self.digits
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).expect("ASCII digits"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// The safety number of a conversation between (`local_key`, `local_id`) and
/// (`remote_key`, `remote_id`); keys in Curve25519 form (32 bytes, or 33 with `0x05`),
/// identifiers are the parties' bare JIDs (UTF-8). Symmetric: swapping the parties gives the
/// same number.
pub fn safety_number(
    local_key: &[u8],
    local_id: &str,
    remote_key: &[u8],
    remote_id: &str,
) -> Result<SafetyNumber, FingerprintError> {
    let a = safety_number_half(local_key, local_id.as_bytes())?;
    let b = safety_number_half(remote_key, remote_id.as_bytes())?;
    let digits = if a <= b { a + &b } else { b + &a };
    Ok(SafetyNumber { digits })
}
