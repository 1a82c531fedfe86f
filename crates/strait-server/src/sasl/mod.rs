//! Sans-I/O SASL for the server: SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802,
//! RFC 7677), PLAIN (RFC 4616) checked against the stored SCRAM secret, the
//! SASLprep profile (RFC 4013) and login throttling.
//!
//! Nothing here does I/O: the caller decodes the base64 of the XMPP `<auth/>`
//! / `<response/>` payloads, looks credentials up in the store, and maps
//! [`SaslError::failure`] to the `<failure/>` condition.
//!
//! The server never stores or sees a plaintext password except transiently in
//! PLAIN and when deriving credentials.

mod plain;
mod scram;
mod throttle;

pub use plain::{PlainRequest, password_matches, plain_parse, plain_verify};
pub use scram::ScramServer;
pub use throttle::{LoginThrottle, ThrottleConfig};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use strait_store::{Credentials, ScramSecret};

/// PBKDF2 iterations for new credentials, and the iteration count shown to
/// unknown users (so they look like real ones). RFC 7677 asks for at least 4096.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Length of the random salts of new credentials.
pub const SALT_LEN: usize = 16;

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// The hash for a mechanism name (`SCRAM-SHA-1`, `SCRAM-SHA-256`).
    pub fn from_mechanism(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-1" => Some(ScramHash::Sha1),
            "SCRAM-SHA-256" => Some(ScramHash::Sha256),
            _ => None,
        }
    }

    /// Output length of the hash in bytes.
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    /// The stored secret of this hash, if the credentials have one.
    pub fn secret_of(self, creds: &Credentials) -> Option<&ScramSecret> {
        match self {
            ScramHash::Sha1 => creds.scram_sha1.as_ref(),
            ScramHash::Sha256 => Some(&creds.scram_sha256),
        }
    }

    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    pub(crate) fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// SaltedPassword := Hi(password, salt, i) (RFC 5802 §2.2), i.e. PBKDF2.
    pub(crate) fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
        }
        out
    }

    /// (StoredKey, ServerKey) from a SaltedPassword.
    pub(crate) fn keys(self, salted: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client_key = self.hmac(salted, b"Client Key");
        let stored_key = self.hash(&client_key);
        let server_key = self.hmac(salted, b"Server Key");
        (stored_key, server_key)
    }
}

/// Why an authentication failed; [`SaslError::failure`] names the RFC 6120
/// §6.5 condition to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message does not follow the mechanism's syntax (or came out of order).
    #[error("malformed SASL request: {0}")]
    MalformedRequest(String),
    /// The authorization identity is not allowed for this user.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// Wrong credentials or unknown user (deliberately indistinguishable).
    #[error("not authorized")]
    NotAuthorized,
    /// The data is not valid base64 / UTF-8 where that is required.
    #[error("incorrect encoding")]
    IncorrectEncoding,
    /// The client asked for something this server does not offer (e.g. channel binding).
    #[error("mechanism feature not supported: {0}")]
    Unsupported(String),
    /// Too many failures: try again later.
    #[error("temporarily refused; retry in {0:?}")]
    Throttled(std::time::Duration),
}

impl SaslError {
    /// The `<failure/>` condition element name (RFC 6120 §6.5).
    pub fn failure(&self) -> &'static str {
        match self {
            SaslError::MalformedRequest(_) => "malformed-request",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::Unsupported(_) => "invalid-mechanism",
            SaslError::Throttled(_) => "temporary-auth-failure",
        }
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        SaslError::MalformedRequest(what.into())
    }
}

/// Prepares a username or password with the SASLprep profile (RFC 4013).
/// Strings with prohibited characters (controls, private use, bidi errors…)
/// are refused with [`SaslError::MalformedRequest`].
pub fn saslprep(s: &str) -> Result<String, SaslError> {
    stringprep::saslprep(s)
        .map(|c| c.into_owned())
        .map_err(|e| SaslError::malformed(format!("SASLprep: {e}")))
}

/// Fresh credentials for `password`: a SCRAM-SHA-256 and a SCRAM-SHA-1
/// secret, each with its own random 16-byte salt.
pub fn derive_credentials(password: &str, iterations: u32) -> Result<Credentials, SaslError> {
    let sha256 = derive_secret(ScramHash::Sha256, password, &random_salt(), iterations)?;
    let sha1 = derive_secret(ScramHash::Sha1, password, &random_salt(), iterations)?;
    Ok(Credentials {
        scram_sha1: Some(sha1),
        scram_sha256: sha256,
    })
}

/// The SCRAM secret of `hash` for `password` (SASLprep-ed) with `salt`.
pub fn derive_secret(
    hash: ScramHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<ScramSecret, SaslError> {
    // The policy minimum (RFC 7677: at least 4096) belongs to the caller's
    // configuration; here only the degenerate count is refused.
    if iterations == 0 {
        return Err(SaslError::malformed("iteration count 0"));
    }
    let prepared = saslprep(password)?;
    if prepared.is_empty() {
        return Err(SaslError::malformed("empty password"));
    }
    let salted = hash.salted_password(prepared.as_bytes(), salt, iterations);
    let (stored_key, server_key) = hash.keys(&salted);
    Ok(ScramSecret {
        salt: salt.to_vec(),
        iterations,
        stored_key,
        server_key,
    })
}

fn random_salt() -> [u8; SALT_LEN] {
    use rand::RngCore;
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslprep_examples_rfc4013() {
        // RFC 4013 §3 examples.
        assert_eq!(saslprep("I\u{00AD}X").unwrap(), "IX"); // soft hyphen mapped to nothing
        assert_eq!(saslprep("user").unwrap(), "user");
        assert_eq!(saslprep("USER").unwrap(), "USER"); // case preserved
        assert_eq!(saslprep("\u{00AA}").unwrap(), "a"); // NFKC
        assert_eq!(saslprep("\u{2168}").unwrap(), "IX"); // NFKC
        assert!(saslprep("\u{0007}").is_err()); // prohibited
        assert!(saslprep("\u{0627}\u{0031}").is_err()); // bidi check
        // Non-ASCII spaces map to SPACE.
        assert_eq!(saslprep("a\u{00A0}b").unwrap(), "a b");
    }

    #[test]
    fn derive_secret_matches_rfc7677_keys() {
        // From the RFC 7677 example: salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let s = derive_secret(ScramHash::Sha256, "pencil", &salt, 4096).unwrap();
        assert_eq!(s.salt, salt);
        assert_eq!(s.iterations, 4096);
        assert_eq!(s.stored_key.len(), 32);
        assert_eq!(s.server_key.len(), 32);
        // Deterministic for equal inputs.
        assert_eq!(
            s,
            derive_secret(ScramHash::Sha256, "pencil", &salt, 4096).unwrap()
        );
    }

    #[test]
    fn derive_credentials_fresh_salts() {
        let a = derive_credentials("pencil", 4096).unwrap();
        let b = derive_credentials("pencil", 4096).unwrap();
        let a1 = a.scram_sha1.as_ref().unwrap();
        assert_eq!(a.scram_sha256.salt.len(), SALT_LEN);
        assert_eq!(a1.salt.len(), SALT_LEN);
        assert_ne!(a.scram_sha256.salt, b.scram_sha256.salt);
        assert_ne!(a.scram_sha256.salt, a1.salt);
        assert_ne!(a.scram_sha256.stored_key, b.scram_sha256.stored_key);
        assert_eq!(a1.stored_key.len(), 20);
        assert!(derive_credentials("", 4096).is_err());
        assert!(derive_credentials("pencil", 0).is_err());
        assert!(derive_credentials("bad\u{0007}", 4096).is_err());
    }

    #[test]
    fn failure_names() {
        assert_eq!(SaslError::malformed("x").failure(), "malformed-request");
        assert_eq!(SaslError::InvalidAuthzid.failure(), "invalid-authzid");
        assert_eq!(SaslError::NotAuthorized.failure(), "not-authorized");
        assert_eq!(SaslError::IncorrectEncoding.failure(), "incorrect-encoding");
        assert_eq!(
            SaslError::Throttled(std::time::Duration::from_secs(1)).failure(),
            "temporary-auth-failure"
        );
    }

    #[test]
    fn mechanism_names() {
        for h in [ScramHash::Sha1, ScramHash::Sha256] {
            assert_eq!(ScramHash::from_mechanism(h.mechanism()), Some(h));
        }
        assert_eq!(ScramHash::from_mechanism("SCRAM-SHA-256-PLUS"), None);
    }
}
