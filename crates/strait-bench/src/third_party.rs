//! A third-party provider as the generator plays it: its Ed25519 signing key, the enlistment
//! tokens (JWT, RFC 7519, signed with EdDSA, RFC 8037) its users log in with over SASL
//! OAUTHBEARER (docs/interop.md §3), and `gen-provider`, which makes a key and its key set
//! (JWKS, RFC 7517) for `strait provider add --jwks`.

use crate::cli::GenProviderArgs;
use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::io::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a minted token is valid: longer than any run, so that a reconnect late in a long
/// run still logs in.
pub const TOKEN_LIFETIME_S: u64 = 2 * 3600;

/// Reads an Ed25519 private key in PKCS#8, PEM (`-----BEGIN PRIVATE KEY-----`) or DER. Both
/// PKCS#8 versions are accepted: v2 (with the public key, as ring writes it) and v1 (as
/// `openssl genpkey -algorithm ed25519` writes it).
pub fn load_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let mut reader = bytes.as_slice();
        let mut items = rustls_pemfile::read_all(&mut reader);
        loop {
            match items.next() {
                Some(Ok(rustls_pemfile::Item::Pkcs8Key(k))) => {
                    break k.secret_pkcs8_der().to_vec();
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("{}: not readable PEM: {e}", path.display()),
                None => bail!(
                    "{}: no PKCS#8 private key (-----BEGIN PRIVATE KEY-----) in it; an encrypted \
                     key must be decrypted first",
                    path.display()
                ),
            }
        }
    } else {
        bytes
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an Ed25519 private key in PKCS#8 ({e})",
            path.display()
        )
    })
}

/// The key set (JWKS) holding the public half of `key` under `kid`.
pub fn jwks(key: &Ed25519KeyPair, kid: &str) -> String {
    let x = B64URL.encode(key.public_key().as_ref());
    format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":{}}}]}}"#,
        json_string(kid)
    )
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Mints the enlistment tokens of one provider's users.
pub struct TokenSigner {
    key: Ed25519KeyPair,
    /// The encoded header and a dot, the same for every token.
    header: String,
    issuer: String,
    audience: String,
}

impl TokenSigner {
    /// Tokens signed with `key`, naming `kid` in their header, `issuer` as `iss` and the
    /// platform's domain `audience` as `aud`.
    pub fn new(key: Ed25519KeyPair, kid: &str, issuer: &str, audience: &str) -> TokenSigner {
        let header = format!(
            r#"{{"alg":"EdDSA","typ":"JWT","kid":{}}}"#,
            json_string(kid)
        );
        TokenSigner {
            key,
            header: format!("{}.", B64URL.encode(header)),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// A token for the user whose local part is `sub`, valid for [`TOKEN_LIFETIME_S`] from
    /// `now_s` (seconds since the epoch).
    pub fn mint_at(&self, sub: &str, now_s: u64) -> String {
        let claims = format!(
            r#"{{"iss":{},"aud":{},"sub":{},"exp":{}}}"#,
            json_string(&self.issuer),
            json_string(&self.audience),
            json_string(sub),
            now_s + TOKEN_LIFETIME_S
        );
        let mut token = self.header.clone();
        B64URL.encode_string(claims, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        B64URL.encode_string(signature.as_ref(), &mut token);
        token
    }

    /// A token for `sub`, valid from now.
    pub fn mint(&self, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.mint_at(sub, now)
    }
}

/// The file names `gen-provider` writes into its directory.
pub const KEY_PEM: &str = "provider.pkcs8.pem";
pub const KEY_DER: &str = "provider.pkcs8.der";
pub const JWKS: &str = "jwks.json";

/// `gen-provider`: a new Ed25519 key (PKCS#8, PEM or DER) and its key set, and what to run
/// next, written to `out`.
pub fn gen_provider(g: &GenProviderArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    if g.kid.is_empty() {
        bail!("--kid is empty");
    }
    std::fs::create_dir_all(&g.out).with_context(|| format!("creating {}", g.out.display()))?;
    let key_path = g.out.join(if g.der { KEY_DER } else { KEY_PEM });
    let jwks_path = g.out.join(JWKS);
    if !g.force {
        for p in [&key_path, &jwks_path] {
            if p.exists() {
                bail!(
                    "{} exists: a provider key is there already (--force to replace it)",
                    p.display()
                );
            }
        }
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("the new key does not parse: {e}"))?;
    let encoded = if g.der {
        pkcs8.as_ref().to_vec()
    } else {
        pem("PRIVATE KEY", pkcs8.as_ref()).into_bytes()
    };
    write_private(&key_path, &encoded)?;
    std::fs::write(&jwks_path, jwks(&key, &g.kid) + "\n")
        .with_context(|| format!("writing {}", jwks_path.display()))?;

    let domain = g.provider_domain.as_deref().unwrap_or("PROVIDER_DOMAIN");
    let issuer = g.issuer.as_deref().unwrap_or("ISSUER");
    let mut w = std::io::BufWriter::new(out);
    writeln!(
        w,
        "wrote {} (the provider's private key: keep it private) and {} (its public key set, kid {})",
        key_path.display(),
        jwks_path.display(),
        g.kid
    )?;
    writeln!(
        w,
        "register the provider (the platform's operator; ID and NAME are yours to choose):"
    )?;
    writeln!(
        w,
        "  strait provider add ID --name NAME --provider-domain {domain} --issuer {issuer} --jwks {}",
        jwks_path.display()
    )?;
    writeln!(
        w,
        "  strait provider terms ID --version 1 --accepted-by NAME"
    )?;
    writeln!(w, "  strait provider activate ID")?;
    writeln!(
        w,
        "  strait user consent --on --allow ID --from-file JIDS   # the platform accounts that opt in"
    )?;
    writeln!(w, "then log its users in from the generator:")?;
    writeln!(
        w,
        "  strait bench messages --third-party-domain {domain} --third-party-key {} --third-party-issuer {issuer} --third-party-kid {} …",
        key_path.display(),
        g.kid
    )?;
    w.flush()?;
    Ok(())
}

/// `-----BEGIN label-----`, base64 in lines of 64, `-----END label-----`.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(dir: &Path, der: bool) -> GenProviderArgs {
        GenProviderArgs {
            out: dir.to_path_buf(),
            kid: "k7".into(),
            der,
            force: false,
            provider_domain: Some("chat.acme.test".into()),
            issuer: Some("https://acme.test".into()),
        }
    }

    fn decode(
        token: &str,
        jwks: &str,
        aud: &str,
    ) -> jsonwebtoken::errors::Result<serde_json::Value> {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks).unwrap();
        let header = jsonwebtoken::decode_header(token)?;
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .expect("the kid is in the set");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&[aud]);
        v.set_issuer(&["https://acme.test"]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map(|d| d.claims)
    }

    #[test]
    fn minted_tokens_verify_against_the_generated_key_set() {
        let dir = tempfile::tempdir().unwrap();
        for der in [false, true] {
            let d = dir.path().join(if der { "der" } else { "pem" });
            let mut printed = Vec::new();
            gen_provider(&args(&d, der), &mut printed).unwrap();
            let printed = String::from_utf8(printed).unwrap();
            let key_path = d.join(if der { KEY_DER } else { KEY_PEM });
            assert!(
                printed.contains(&format!("--jwks {}", d.join(JWKS).display())),
                "{printed}"
            );
            assert!(printed.contains("--issuer https://acme.test"), "{printed}");
            assert!(printed.contains(&format!("--third-party-key {}", key_path.display())));
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&key_path).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600);
            let head = std::fs::read(&key_path).unwrap();
            assert_eq!(head.starts_with(b"-----BEGIN PRIVATE KEY-----\n"), !der);

            let jwks = std::fs::read_to_string(d.join(JWKS)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
            assert_eq!(v["keys"][0]["kty"], "OKP");
            assert_eq!(v["keys"][0]["crv"], "Ed25519");
            assert_eq!(v["keys"][0]["kid"], "k7");

            let signer = TokenSigner::new(
                load_key(&key_path).unwrap(),
                "k7",
                "https://acme.test",
                "bench.test",
            );
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let token = signer.mint("bench3");
            let claims = decode(&token, &jwks, "bench.test").unwrap();
            assert_eq!(claims["sub"], "bench3");
            assert_eq!(claims["iss"], "https://acme.test");
            assert_eq!(claims["aud"], "bench.test");
            let exp = claims["exp"].as_u64().unwrap();
            assert!((now + 7190..=now + 7210).contains(&exp), "{exp} vs {now}");
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            // Compact form, base64url without padding.
            assert_eq!(token.split('.').count(), 3);
            assert!(!token.contains(['=', '+', '/']), "{token}");

            // Another audience, a token expired, a token tampered with: refused.
            assert!(decode(&token, &jwks, "other.test").is_err());
            let old = signer.mint_at("bench3", now - TOKEN_LIFETIME_S - 3600);
            assert!(decode(&old, &jwks, "bench.test").is_err());
            let evil = TokenSigner::new(
                load_key(&key_path).unwrap(),
                "k7",
                "https://acme.test",
                "bench.test",
            )
            .mint("bench4");
            let (head_and_claims, _) = token.rsplit_once('.').unwrap();
            let (_, sig4) = evil.rsplit_once('.').unwrap();
            assert!(decode(&format!("{head_and_claims}.{sig4}"), &jwks, "bench.test").is_err());
        }
        // Files are not replaced without --force.
        let err = gen_provider(&args(&dir.path().join("pem"), false), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--force"), "{err}");
        let mut again = args(&dir.path().join("pem"), false);
        again.force = true;
        gen_provider(&again, &mut Vec::new()).unwrap();
    }

    #[test]
    fn reads_pkcs8_v1_keys_and_refuses_what_is_not_one() {
        // An Ed25519 key as `openssl genpkey -algorithm ed25519` writes it (PKCS#8 v1, no
        // public key; RFC 8410's example key).
        let v1 = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                  -----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1.pem");
        std::fs::write(&p, v1).unwrap();
        let key = load_key(&p).unwrap();
        // RFC 8410 §10.3: the public key of this private key.
        assert_eq!(
            B64.encode(key.public_key().as_ref()),
            "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="
        );
        let jwks = jwks(&key, "k1");
        let token = TokenSigner::new(key, "k1", "https://acme.test", "bench.test").mint("u");
        assert_eq!(decode(&token, &jwks, "bench.test").unwrap()["sub"], "u");

        let bad: PathBuf = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_key(&bad).err().unwrap().to_string();
        assert!(e.contains("no PKCS#8 private key"), "{e}");
        std::fs::write(&bad, b"\x30\x03\x02\x01\x00").unwrap();
        let e = load_key(&bad).err().unwrap().to_string();
        assert!(e.contains("not an Ed25519 private key"), "{e}");
        assert!(load_key(&dir.path().join("missing")).is_err());
    }
}
