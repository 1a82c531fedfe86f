//! XEP-0454 OMEMO media sharing: files are encrypted with AES-256-GCM under a random 32-byte key
//! and 12-byte IV, the 16-byte tag appended, uploaded with HTTP Upload (XEP-0363), and shared as
//! an `aesgcm://` URL whose fragment is `hex(iv) ‖ hex(key)` (88 hex characters), sent inside an
//! OMEMO message.
//!
//! Early clients used a 16-byte IV (96 hex characters); both are accepted on receive, as Gajim
//! and Conversations do. The receiving parser is strict (the XEP asks for it): one `#`, a
//! fragment of exactly 88 or 96 hex digits, the `aesgcm` scheme, a non-empty host, no whitespace
//! or control characters. An `aesgcm://` URL must never be opened or linkified as is — convert
//! it with [`AesgcmUrl::https_url`] and keep the key local.
//!
//! Source: XEP-0454 v0.1.0 (xsf/xeps `xep-0454.xml`), `../shared/ref/signal-omemo.md` §2.4.

use std::fmt;

use aes::Aes256;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{AesGcm, Nonce, Tag};
use rand_core::CryptoRngCore;
use zeroize::Zeroize;

/// Key length (AES-256).
pub const KEY_LEN: usize = 32;
/// IV length emitted.
pub const IV_LEN: usize = 12;
/// IV length of early clients, accepted on receive.
pub const LEGACY_IV_LEN: usize = 16;
/// GCM tag appended to the file.
pub const TAG_LEN: usize = 16;

type Aes256Gcm12 = AesGcm<Aes256, U12>;
type Aes256Gcm16 = AesGcm<Aes256, U16>;

/// Errors of media encryption and `aesgcm://` URLs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The ciphertext is shorter than the tag.
    #[error("ciphertext shorter than the GCM tag")]
    TooShort,
    /// The IV is neither 12 nor 16 bytes.
    #[error("IV of {0} bytes (expected 12 or 16)")]
    InvalidIv(usize),
    /// Tag mismatch: wrong key/IV or tampered file.
    #[error("file authentication failed")]
    AuthenticationFailed,
    /// Not an `aesgcm://` URL (or, for conversion, not an `https://` URL).
    #[error("wrong URL scheme")]
    WrongScheme,
    /// No host after the scheme.
    #[error("URL has no host")]
    MissingHost,
    /// No `#` fragment, or more than one `#`.
    #[error("URL must have exactly one '#' fragment")]
    BadFragment,
    /// The fragment is not 88 or 96 characters long.
    #[error("key fragment of {0} characters (expected 88, or 96 for a 16-byte IV)")]
    BadFragmentLength(usize),
    /// The fragment holds non-hex characters.
    #[error("key fragment is not hexadecimal")]
    NotHex,
    /// Whitespace or a control character in the URL.
    #[error("URL contains whitespace or control characters")]
    BadCharacter,
    /// The `https://` URL to convert already has a fragment.
    #[error("the https URL already has a fragment")]
    HasFragment,
}

/// Encrypt a file for XEP-0454 sharing under a fresh key and 12-byte IV.
/// Returns `(ciphertext ‖ tag, key, iv)`.
pub fn encrypt_file(
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> (Vec<u8>, [u8; KEY_LEN], [u8; IV_LEN]) {
    let mut key = [0u8; KEY_LEN];
    rng.fill_bytes(&mut key);
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    let tag = Aes256Gcm12::new_from_slice(&key)
        .expect("32-byte key")
        .encrypt_in_place_detached(Nonce::<U12>::from_slice(&iv), b"", &mut buf)
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    buf.extend_from_slice(&tag);
    (buf, key, iv)
}

/// Decrypt a downloaded XEP-0454 file (`ciphertext ‖ 16-byte tag`) with a 12-byte IV (or the
/// legacy 16-byte IV).
pub fn decrypt_file(
    ciphertext_with_tag: &[u8],
    key: &[u8; KEY_LEN],
    iv: &[u8],
) -> Result<Vec<u8>, MediaError> {
    if ciphertext_with_tag.len() < TAG_LEN {
        return Err(MediaError::TooShort);
    }
    let (ct, tag) = ciphertext_with_tag.split_at(ciphertext_with_tag.len() - TAG_LEN);
    let tag = Tag::<U16>::from_slice(tag);
    let mut buf = ct.to_vec();
    let res = match iv.len() {
        IV_LEN => Aes256Gcm12::new_from_slice(key)
            .expect("32-byte key")
            .decrypt_in_place_detached(Nonce::<U12>::from_slice(iv), b"", &mut buf, tag),
        LEGACY_IV_LEN => Aes256Gcm16::new_from_slice(key)
            .expect("32-byte key")
            .decrypt_in_place_detached(Nonce::<U16>::from_slice(iv), b"", &mut buf, tag),
        n => return Err(MediaError::InvalidIv(n)),
    };
    match res {
        Ok(()) => Ok(buf),
        Err(_) => {
            buf.zeroize();
            Err(MediaError::AuthenticationFailed)
        }
    }
}

/// A parsed `aesgcm://host/path#hex(iv)hex(key)` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct AesgcmUrl {
    /// Everything between `aesgcm://` and `#`: host, optional port, path and query.
    pub location: String,
    /// 12 bytes (16 for early senders).
    pub iv: Vec<u8>,
    /// AES-256 key.
    pub key: [u8; KEY_LEN],
}

impl fmt::Debug for AesgcmUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesgcmUrl")
            .field("location", &self.location)
            .field("iv", &hex::encode(&self.iv))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Drop for AesgcmUrl {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

fn check_chars(s: &str) -> Result<(), MediaError> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(MediaError::BadCharacter)
    } else {
        Ok(())
    }
}

fn check_location(location: &str) -> Result<(), MediaError> {
    check_chars(location)?;
    let host_end = location.find(['/', '?']).unwrap_or(location.len());
    if location[..host_end].is_empty() {
        return Err(MediaError::MissingHost);
    }
    Ok(())
}

impl AesgcmUrl {
    /// Parse strictly: scheme `aesgcm` (case-insensitive), non-empty host, exactly one `#`,
    /// fragment of 88 (12-byte IV) or 96 (16-byte IV) hex digits (either case), no whitespace
    /// or control characters.
    pub fn parse(url: &str) -> Result<Self, MediaError> {
        let scheme_end = url.find("://").ok_or(MediaError::WrongScheme)?;
        if !url[..scheme_end].eq_ignore_ascii_case("aesgcm") {
            return Err(MediaError::WrongScheme);
        }
        let rest = &url[scheme_end + 3..];
        let mut parts = rest.split('#');
        let location = parts.next().unwrap_or_default();
        let fragment = parts.next().ok_or(MediaError::BadFragment)?;
        if parts.next().is_some() {
            return Err(MediaError::BadFragment);
        }
        check_location(location)?;
        check_chars(fragment)?;
        let iv_hex_len = match fragment.len() {
            88 => 2 * IV_LEN,
            96 => 2 * LEGACY_IV_LEN,
            n => return Err(MediaError::BadFragmentLength(n)),
        };
        if !fragment.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MediaError::NotHex);
        }
        let iv = hex::decode(&fragment[..iv_hex_len]).map_err(|_| MediaError::NotHex)?;
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(&fragment[iv_hex_len..], &mut key).map_err(|_| MediaError::NotHex)?;
        Ok(Self {
            location: location.to_owned(),
            iv,
            key,
        })
    }

    /// Build from the `https://` URL HTTP Upload returned (no fragment allowed), the key and IV.
    pub fn from_https(https_url: &str, key: [u8; KEY_LEN], iv: &[u8]) -> Result<Self, MediaError> {
        if iv.len() != IV_LEN && iv.len() != LEGACY_IV_LEN {
            return Err(MediaError::InvalidIv(iv.len()));
        }
        let scheme_end = https_url.find("://").ok_or(MediaError::WrongScheme)?;
        if !https_url[..scheme_end].eq_ignore_ascii_case("https") {
            return Err(MediaError::WrongScheme);
        }
        let location = &https_url[scheme_end + 3..];
        if location.contains('#') {
            return Err(MediaError::HasFragment);
        }
        check_location(location)?;
        Ok(Self {
            location: location.to_owned(),
            iv: iv.to_vec(),
            key,
        })
    }

    /// The `https://` URL to download the ciphertext from (no key in it).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.location)
    }

    /// Decrypt the downloaded file with this URL's key and IV.
    pub fn decrypt(&self, ciphertext_with_tag: &[u8]) -> Result<Vec<u8>, MediaError> {
        decrypt_file(ciphertext_with_tag, &self.key, &self.iv)
    }
}

/// `aesgcm://location#hex(iv)hex(key)`, lowercase hex.
impl fmt::Display for AesgcmUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aesgcm://{}#{}{}",
            self.location,
            hex::encode(&self.iv),
            hex::encode(self.key)
        )
    }
}

/// Split an XEP-0454 message body into its `aesgcm://` URL and optional thumbnail
/// (`\n` + `data:image/jpeg,…`). Returns `None` unless the body is exactly a valid URL, or a
/// valid URL, one `\n` and a `data:image/` URI — such bodies alone are shown as media.
pub fn parse_media_body(body: &str) -> Option<(AesgcmUrl, Option<&str>)> {
    let (url, thumb) = match body.split_once('\n') {
        None => (body, None),
        Some((u, t)) => (u, Some(t)),
    };
    let url = AesgcmUrl::parse(url).ok()?;
    match thumb {
        None => Some((url, None)),
        Some(t)
            if t.starts_with("data:image/")
                && !t.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Some((url, Some(t)))
        }
        Some(_) => None,
    }
}
