//! SASL PLAIN (RFC 4616), verified against the stored SCRAM-SHA-256 secret:
//! the StoredKey is recomputed from the offered password and compared in
//! constant time. PLAIN must only be offered over TLS.

use strait_store::Credentials;
use subtle::ConstantTimeEq;

use super::{DEFAULT_ITERATIONS, SALT_LEN, SaslError, ScramHash, saslprep};

/// Longest authzid / authcid / passwd accepted, in bytes (RFC 4616 requires
/// at least 255).
const MAX_FIELD: usize = 1024;

/// A parsed PLAIN message: `[authzid] NUL authcid NUL passwd`.
pub struct PlainRequest {
    /// The authorization identity, if one was sent (not SASLprep-ed).
    pub authzid: Option<String>,
    /// The authentication identity, SASLprep-ed.
    pub username: String,
    password: String,
}

impl std::fmt::Debug for PlainRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainRequest")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PlainRequest {
    /// Checks the password against `creds` (`None` = unknown user: the same
    /// amount of work is done, then [`SaslError::NotAuthorized`]).
    pub fn verify(&self, creds: Option<&Credentials>) -> Result<(), SaslError> {
        let hash = ScramHash::Sha256;
        let (salt, iterations, stored_key, known): (&[u8], u32, &[u8], bool) = match creds {
            Some(c) => (
                &c.scram_sha256.salt,
                c.scram_sha256.iterations,
                &c.scram_sha256.stored_key,
                true,
            ),
            None => (&[0u8; SALT_LEN], DEFAULT_ITERATIONS, &[0u8; 32], false),
        };
        let salted = hash.salted_password(self.password.as_bytes(), salt, iterations.max(1));
        let (computed, _) = hash.keys(&salted);
        let ok = computed.ct_eq(stored_key) & subtle::Choice::from(u8::from(known));
        if bool::from(ok) {
            Ok(())
        } else {
            Err(SaslError::NotAuthorized)
        }
    }
}

/// Whether `password` is the one `creds` were derived from (SASLprep-ed as at login; the same
/// work is done whether or not there are credentials).
pub fn password_matches(password: &str, creds: Option<&Credentials>) -> bool {
    let Ok(password) = saslprep(password) else {
        return false;
    };
    PlainRequest {
        authzid: None,
        username: String::new(),
        password,
    }
    .verify(creds)
    .is_ok()
}

/// Parses a PLAIN message. The password is SASLprep-ed; a password that fails
/// SASLprep cannot match any stored one and gives [`SaslError::NotAuthorized`]
/// at once (that reveals nothing about the account).
pub fn plain_parse(msg: &[u8]) -> Result<PlainRequest, SaslError> {
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::malformed(
            "PLAIN message is not authzid NUL authcid NUL passwd",
        ));
    };
    if authcid.is_empty() || passwd.is_empty() {
        return Err(SaslError::malformed("empty PLAIN username or password"));
    }
    if authzid.len() > MAX_FIELD || authcid.len() > MAX_FIELD || passwd.len() > MAX_FIELD {
        return Err(SaslError::malformed("PLAIN field too long"));
    }
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| SaslError::IncorrectEncoding)
    };
    let authzid = utf8(authzid)?;
    let username = saslprep(&utf8(authcid)?)?;
    if username.is_empty() {
        return Err(SaslError::malformed("empty PLAIN username"));
    }
    let password = saslprep(&utf8(passwd)?).map_err(|_| SaslError::NotAuthorized)?;
    if password.is_empty() {
        return Err(SaslError::NotAuthorized);
    }
    Ok(PlainRequest {
        authzid: (!authzid.is_empty()).then_some(authzid),
        username,
        password,
    })
}

/// Parses and verifies a PLAIN message; `lookup` gets the (SASLprep-ed)
/// username and returns its credentials, `None` if unknown. Returns the
/// username.
///
/// An authzid is accepted only if it equals the username; callers that allow
/// `authzid = username@domain` use [`plain_parse`] and check it themselves.
pub fn plain_verify(
    msg: &[u8],
    lookup: impl FnOnce(&str) -> Option<Credentials>,
) -> Result<String, SaslError> {
    let req = plain_parse(msg)?;
    let creds = lookup(&req.username);
    req.verify(creds.as_ref())?;
    if req.authzid.as_deref().is_some_and(|a| a != req.username) {
        return Err(SaslError::InvalidAuthzid);
    }
    Ok(req.username)
}

#[cfg(test)]
mod tests {
    use super::super::derive_credentials;
    use super::*;

    fn creds() -> Credentials {
        derive_credentials("pencil", 4096).unwrap()
    }

    #[test]
    fn password_matches_only_the_right_one() {
        let c = creds();
        assert!(password_matches("pencil", Some(&c)));
        assert!(!password_matches("pen", Some(&c)));
        assert!(!password_matches("pencil", None));
    }

    #[test]
    fn plain_ok() {
        let c = creds();
        let mut asked = None;
        let user = plain_verify(b"\0user\0pencil", |u| {
            asked = Some(u.to_owned());
            Some(c.clone())
        })
        .unwrap();
        assert_eq!(user, "user");
        assert_eq!(asked.as_deref(), Some("user"));
        // authzid equal to the username is fine.
        assert_eq!(
            plain_verify(b"user\0user\0pencil", |_| Some(c.clone())).unwrap(),
            "user"
        );
        // SASLprep applies to the password (non-ASCII space → space).
        let c2 = derive_credentials("pen cil", 4096).unwrap();
        assert!(plain_verify("\0u\0pen\u{00A0}cil".as_bytes(), |_| Some(c2.clone())).is_ok());
        // And to the username.
        assert_eq!(
            plain_verify("\0us\u{00AD}er\0pencil".as_bytes(), |_| Some(c.clone())).unwrap(),
            "user"
        );
    }

    #[test]
    fn plain_failures() {
        let c = creds();
        assert_eq!(
            plain_verify(b"\0user\0wrong", |_| Some(c.clone())),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(
            plain_verify(b"\0nobody\0pencil", |_| None),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(
            plain_verify(b"other@example.com\0user\0pencil", |_| Some(c.clone())),
            Err(SaslError::InvalidAuthzid)
        );
        // authzid is only judged after the password: no oracle.
        assert_eq!(
            plain_verify(b"other@example.com\0user\0wrong", |_| Some(c.clone())),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(
            plain_verify(b"\0user\0pen\x07cil", |_| Some(c.clone())),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn plain_malformed() {
        let never = |_: &str| -> Option<Credentials> { panic!("lookup must not run") };
        let kind = |m: &[u8]| plain_verify(m, never).unwrap_err().failure();
        assert_eq!(kind(b""), "malformed-request");
        assert_eq!(kind(b"user\0pencil"), "malformed-request");
        assert_eq!(kind(b"\0user\0pencil\0"), "malformed-request");
        assert_eq!(kind(b"\0\0pencil"), "malformed-request");
        assert_eq!(kind(b"\0user\0"), "malformed-request");
        assert_eq!(kind(b"\0us\x07er\0pencil"), "malformed-request");
        assert_eq!(kind(b"\0\xff\0pencil"), "incorrect-encoding");
        assert_eq!(kind(b"\xff\0user\0pencil"), "incorrect-encoding");
        let long = [&b"\0user\0"[..], &[b'a'; 2000]].concat();
        assert_eq!(kind(&long), "malformed-request");
    }

    #[test]
    fn parse_exposes_authzid() {
        let r = plain_parse(b"user@example.com\0user\0pencil").unwrap();
        assert_eq!(r.authzid.as_deref(), Some("user@example.com"));
        assert_eq!(r.username, "user");
        assert!(r.verify(Some(&creds())).is_ok());
        assert!(!format!("{r:?}").contains("pencil"));
    }
}
