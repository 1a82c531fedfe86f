//! Enlistment: a provider's users log in to the platform with a token the provider signed,
//! as WhatsApp's model has it (the provider vouches for its user; the platform holds no
//! password for them).
//!
//! The SASL mechanism is OAUTHBEARER (RFC 7628), offered only on the streams of provider
//! domains. The bearer token is a JWT (RFC 7519) signed with one of the keys of the
//! provider's registered key set (RFC 7517): RS256/384/512, PS256/384/512, ES256/384 or
//! EdDSA, never a shared secret. Its claims must hold `iss` = the provider's registered
//! issuer, `aud` = one of the platform's domains, `sub` = the user's localpart, and `exp`
//! (and `nbf`, if present) must hold now, with a minute of leeway for clocks. The user's
//! address is `sub@the stream's domain`; the account is made on the first login.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use strait_store::{Provider, ProviderStatus};

/// The SASL mechanism enlisted users log in with.
pub const MECHANISM: &str = "OAUTHBEARER";
/// Longest token accepted: a JWT with a few claims is well under 2 KiB.
pub const MAX_TOKEN: usize = 8 * 1024;
/// Clock leeway for `exp` and `nbf`, seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Why a login was refused. The text is for the log and the SASL failure's `<text/>`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnlistError {
    #[error("malformed OAUTHBEARER message: {0}")]
    Malformed(&'static str),
    #[error("the token is longer than {MAX_TOKEN} bytes")]
    TooLong,
    #[error("the provider {0} is not active ({1})")]
    NotActive(String, &'static str),
    #[error("the provider {0} has no enlistment key set registered")]
    NoKeys(String),
    #[error("the token names no key of the provider's key set (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the token's algorithm is not accepted: {0}")]
    Algorithm(String),
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token's subject is not a valid localpart: {0}")]
    BadSubject(String),
    #[error("the authorization identity must be the token's user ({0})")]
    Authzid(String),
    #[error(
        "the provider {0} admits its users only through its registered proxy (no client certificate with a registered pin)"
    )]
    ProxyRequired(String),
}

/// The parts of a client's OAUTHBEARER initial response (RFC 7628 §3.1).
#[derive(Debug, PartialEq, Eq)]
pub struct BearerMessage {
    pub authzid: Option<String>,
    pub token: String,
}

/// Parses `gs2-header %x01 *(key=value %x01) %x01`, where one pair is `auth=Bearer TOKEN`.
pub fn parse_message(msg: &[u8]) -> Result<BearerMessage, EnlistError> {
    let msg = std::str::from_utf8(msg).map_err(|_| EnlistError::Malformed("not UTF-8"))?;
    // gs2-header: "n," (no channel binding; "y" and "p=" are not supported) then the
    // optional "a=authzid", then ",".
    let rest = msg
        .strip_prefix("n,")
        .or_else(|| msg.strip_prefix("y,"))
        .ok_or(EnlistError::Malformed("the GS2 header must start with n,"))?;
    let (authz, rest) = rest
        .split_once(',')
        .ok_or(EnlistError::Malformed("unterminated GS2 header"))?;
    let authzid = match authz {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .ok_or(EnlistError::Malformed("bad authzid"))?
                // RFC 5801 saslname escapes.
                .replace("=2C", ",")
                .replace("=3D", "="),
        ),
    };
    let body = rest
        .strip_prefix('\x01')
        .and_then(|b| b.strip_suffix("\x01\x01"))
        .ok_or(EnlistError::Malformed("pairs must be framed by 0x01"))?;
    let mut token = None;
    for pair in body.split('\x01') {
        let (k, v) = pair
            .split_once('=')
            .ok_or(EnlistError::Malformed("a pair without '='"))?;
        if k == "auth" {
            let t = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .ok_or(EnlistError::Malformed("auth is not a Bearer token"))?;
            token = Some(t.trim().to_owned());
        }
    }
    let token = token.ok_or(EnlistError::Malformed("no auth=Bearer pair"))?;
    if token.len() > MAX_TOKEN {
        return Err(EnlistError::TooLong);
    }
    Ok(BearerMessage { authzid, token })
}

/// A provider that registered certificate pins admits its users only through its proxies:
/// the connection's client certificate (`client_pin`) must have one of those pins.
pub fn check_proxy(provider: &Provider, client_pin: Option<&[u8; 32]>) -> Result<(), EnlistError> {
    if provider.cert_pins.is_empty() {
        return Ok(());
    }
    match client_pin.map(crate::tls::pin_hex) {
        Some(pin) if provider.cert_pins.contains(&pin) => Ok(()),
        _ => Err(EnlistError::ProxyRequired(provider.id.clone())),
    }
}

/// Credentials for an enlisted account: random, known to nobody. Its users log in with
/// tokens only (a provider domain offers no password mechanism), so these only fill the
/// account's record.
pub fn unusable_credentials() -> strait_store::Credentials {
    use rand::RngCore;
    let random = |n: usize| {
        let mut v = vec![0u8; n];
        rand::thread_rng().fill_bytes(&mut v);
        v
    };
    strait_store::Credentials {
        scram_sha1: None,
        scram_sha256: strait_store::ScramSecret {
            salt: random(16),
            iterations: 4096,
            stored_key: random(32),
            server_key: random(32),
        },
    }
}

/// The `{"status":…}` body of the server's error challenge (RFC 7628 §3.2.2).
pub fn error_challenge(scope_hint: &str) -> Vec<u8> {
    serde_json::json!({ "status": "invalid_token", "scope": scope_hint })
        .to_string()
        .into_bytes()
}

fn algorithm_allowed(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Checks a key set as registered: valid JSON Web Keys, public keys only (no shared secrets).
pub fn check_key_set(jwks: &str) -> Result<usize, String> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    for k in &set.keys {
        if matches!(k.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err("a shared-secret (\"oct\") key: register public keys only".into());
        }
        DecodingKey::from_jwk(k).map_err(|e| format!("key {:?}: {e}", k.common.key_id))?;
    }
    Ok(set.keys.len())
}

/// Verifies a provider-signed token and returns the user's localpart (normalized).
/// `audiences` are the platform's domains; `now` is Unix seconds.
pub fn verify_token(
    provider: &Provider,
    token: &str,
    audiences: &[String],
    now: u64,
) -> Result<String, EnlistError> {
    if provider.status != ProviderStatus::Active {
        return Err(EnlistError::NotActive(
            provider.id.clone(),
            provider.status.as_str(),
        ));
    }
    let (Some(jwks), Some(issuer)) = (&provider.jwks, &provider.issuer) else {
        return Err(EnlistError::NoKeys(provider.id.clone()));
    };
    let set: JwkSet =
        serde_json::from_str(jwks).map_err(|_| EnlistError::NoKeys(provider.id.clone()))?;
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| EnlistError::Invalid(e.to_string()))?;
    if !algorithm_allowed(header.alg) {
        return Err(EnlistError::Algorithm(format!("{:?}", header.alg)));
    }
    let jwk = match &header.kid {
        Some(kid) => set.find(kid),
        None if set.keys.len() == 1 => set.keys.first(),
        None => None,
    }
    .ok_or_else(|| EnlistError::UnknownKey(header.kid.clone()))?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err(EnlistError::Algorithm(
            "shared-secret keys are not accepted".into(),
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| EnlistError::Invalid(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }
    let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
        .map_err(|e| EnlistError::Invalid(e.to_string()))?;
    // jsonwebtoken checks exp against the system clock; the caller's clock decides here too,
    // so that tests (and a server with a skewed view) agree with what is logged.
    if data.claims.exp + LEEWAY_SECS < now {
        return Err(EnlistError::Invalid("ExpiredSignature".into()));
    }
    crate::accounts::normalize_localpart(&data.claims.sub)
        .ok()
        .filter(|l| !l.is_empty())
        .ok_or(EnlistError::BadSubject(data.claims.sub))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::KeyPair;

    /// An Ed25519 signing key and its JWKS, as a provider would hold them.
    pub(crate) struct Signer {
        pkcs8: Vec<u8>,
        pub jwks: String,
    }

    impl Signer {
        pub(crate) fn new(kid: &str) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
            let x = B64.encode(pair.public_key().as_ref());
            let jwks = format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"{kid}","alg":"EdDSA","use":"sig"}}]}}"#
            );
            Signer {
                pkcs8: pkcs8.as_ref().to_vec(),
                jwks,
            }
        }

        pub(crate) fn token(&self, kid: &str, claims: serde_json::Value) -> String {
            let mut h = Header::new(Algorithm::EdDSA);
            h.kid = Some(kid.into());
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn provider(signer: &Signer) -> Provider {
        let mut p = Provider::new("acme", "Acme", vec!["acme.example".into()]);
        p.status = ProviderStatus::Active;
        p.issuer = Some("https://acme.example".into());
        p.jwks = Some(signer.jwks.clone());
        p
    }

    fn claims(sub: &str, exp: u64) -> serde_json::Value {
        serde_json::json!({"iss": "https://acme.example", "aud": "host.example", "sub": sub, "exp": exp})
    }

    #[test]
    fn parses_the_initial_response() {
        let m =
            parse_message(b"n,a=bob@acme.example,\x01host=x\x01auth=Bearer abc.def.ghi\x01\x01")
                .unwrap();
        assert_eq!(m.authzid.as_deref(), Some("bob@acme.example"));
        assert_eq!(m.token, "abc.def.ghi");
        assert_eq!(
            parse_message(b"n,,\x01auth=Bearer t\x01\x01")
                .unwrap()
                .authzid,
            None
        );
        for bad in [
            &b"p=tls-unique,,\x01auth=Bearer t\x01\x01"[..],
            b"n,,auth=Bearer t",
            b"n,,\x01host=x\x01\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth\x01\x01",
            b"\xff",
        ] {
            assert!(parse_message(bad).is_err(), "{bad:?}");
        }
        let long = format!("n,,\x01auth=Bearer {}\x01\x01", "a".repeat(MAX_TOKEN + 1));
        assert_eq!(parse_message(long.as_bytes()), Err(EnlistError::TooLong));
    }

    #[test]
    fn a_token_signed_by_the_provider_names_its_user() {
        let s = Signer::new("k1");
        let p = provider(&s);
        let aud = ["host.example".to_string()];
        let t = s.token("k1", claims("Bob", now() + 300));
        assert_eq!(verify_token(&p, &t, &aud, now()).unwrap(), "bob");
        let t = s.token("k1", claims("+31 6 1234 5678", now() + 300));
        assert_eq!(verify_token(&p, &t, &aud, now()).unwrap(), "+31612345678");
    }

    #[test]
    fn every_claim_and_the_signature_are_checked() {
        let s = Signer::new("k1");
        let p = provider(&s);
        let aud = ["host.example".to_string()];
        let ok = |c| s.token("k1", c);
        let err = |t: String| verify_token(&p, &t, &aud, now()).unwrap_err();
        // Expired (past the leeway), wrong issuer, wrong audience, no subject.
        assert!(matches!(
            err(ok(claims("bob", now() - 600))),
            EnlistError::Invalid(_)
        ));
        let mut c = claims("bob", now() + 300);
        c["iss"] = "https://evil.example".into();
        assert!(matches!(err(ok(c)), EnlistError::Invalid(e) if e.contains("Issuer")));
        let mut c = claims("bob", now() + 300);
        c["aud"] = "other.example".into();
        assert!(matches!(err(ok(c)), EnlistError::Invalid(e) if e.contains("Audience")));
        let mut c = claims("bob", now() + 300);
        c.as_object_mut().unwrap().remove("sub");
        assert!(matches!(err(ok(c)), EnlistError::Invalid(_)));
        let mut c = claims("bob", now() + 300);
        c["nbf"] = (now() + 3600).into();
        assert!(matches!(err(ok(c)), EnlistError::Invalid(e) if e.contains("Immature")));
        assert!(matches!(
            err(ok(claims("a b@c", now() + 300))),
            EnlistError::BadSubject(_)
        ));
        // Signed by another key under the same kid, or an unknown kid.
        let other = Signer::new("k1");
        assert!(matches!(
            err(other.token("k1", claims("bob", now() + 300))),
            EnlistError::Invalid(_)
        ));
        assert!(matches!(
            err(s.token("k2", claims("bob", now() + 300))),
            EnlistError::UnknownKey(Some(_))
        ));
        // A tampered payload.
        let t = ok(claims("bob", now() + 300));
        let parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(claims("alice", now() + 300).to_string());
        assert!(matches!(
            err(format!("{}.{forged}.{}", parts[0], parts[2])),
            EnlistError::Invalid(_)
        ));
        // HMAC with the public key as the secret (the classic algorithm confusion).
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims("bob", now() + 300),
            &EncodingKey::from_secret(s.jwks.as_bytes()),
        )
        .unwrap();
        assert!(matches!(err(hs), EnlistError::Algorithm(_)));
        // Not active, or no keys.
        let mut q = p.clone();
        q.status = ProviderStatus::Suspended;
        assert!(matches!(
            verify_token(&q, &ok(claims("bob", now() + 300)), &aud, now()),
            Err(EnlistError::NotActive(_, "suspended"))
        ));
        q.status = ProviderStatus::Active;
        q.jwks = None;
        assert!(matches!(
            verify_token(&q, &ok(claims("bob", now() + 300)), &aud, now()),
            Err(EnlistError::NoKeys(_))
        ));
    }

    #[test]
    fn key_sets_hold_public_keys_only() {
        let s = Signer::new("k1");
        assert_eq!(check_key_set(&s.jwks), Ok(1));
        assert!(
            check_key_set(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#)
                .unwrap_err()
                .contains("shared-secret")
        );
        assert!(check_key_set(r#"{"keys":[{"kty":"EC"}]}"#).is_err());
    }
}
