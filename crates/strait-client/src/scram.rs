//! The client side of SASL: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) without
//! channel binding, and PLAIN (RFC 4616). Sans-I/O: the caller moves the base64-decoded
//! messages in and out of `<auth/>`, `<challenge/>`, `<response/>` and `<success/>`.
//!
//! The client derives SaltedPassword with PBKDF2 on every login, which at the iteration counts
//! servers use (4096–10,000) costs the generator milliseconds per login while the server only
//! compares hashes. [`KeyCache`] keeps ClientKey and ServerKey per account, salt and iteration
//! count (RFC 5802 §5.1 allows clients to cache them), in memory and optionally in a file, so
//! that repeated logins measure the server and not the generator's PBKDF2.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;

/// A SASL mechanism the generator can use, weakest first (so `max` picks the best).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    /// RFC 7628, with a token the user's provider issued; never picked on its own (only when
    /// asked for), so it sorts lowest.
    OAuthBearer,
    Plain,
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    pub const ALL: [Mechanism; 4] = [
        Mechanism::OAuthBearer,
        Mechanism::Plain,
        Mechanism::ScramSha1,
        Mechanism::ScramSha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    fn hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::OAuthBearer | Mechanism::Plain => None,
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    /// SaltedPassword := Hi(password, salt, i), i.e. PBKDF2-HMAC.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out
            }
            ScramHash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// Why an exchange failed on the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The server's message does not follow RFC 5802.
    Malformed(String),
    /// The server's nonce does not extend ours.
    NonceMismatch,
    /// The iteration count is outside what the generator accepts.
    Iterations(u32),
    /// The server's signature is wrong: it does not know the password.
    ServerSignature,
    /// The server reported an error in its final message (`e=…`).
    ServerError(String),
    /// The password or user name is refused by SASLprep.
    Prep(String),
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslError::Malformed(m) => write!(f, "malformed server message: {m}"),
            SaslError::NonceMismatch => f.write_str("the server nonce does not extend ours"),
            SaslError::Iterations(i) => write!(f, "unacceptable iteration count {i}"),
            SaslError::ServerSignature => f.write_str("wrong server signature"),
            SaslError::ServerError(e) => write!(f, "server error {e}"),
            SaslError::Prep(e) => write!(f, "SASLprep: {e}"),
        }
    }
}

impl std::error::Error for SaslError {}

/// Highest iteration count accepted from a server (a hostile count would stall the generator).
pub const MAX_ITERATIONS: u32 = 1_000_000;

fn saslprep(s: &str) -> Result<String, SaslError> {
    stringprep::saslprep(s)
        .map(|c| c.into_owned())
        .map_err(|e| SaslError::Prep(e.to_string()))
}

/// `=` and `,` in a SCRAM user name (RFC 5802 §5.1).
fn escape_username(u: &str) -> String {
    u.replace('=', "=3D").replace(',', "=2C")
}

/// The PLAIN message: no authorization identity, user name, password.
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

/// The OAUTHBEARER initial response (RFC 7628 §3.1): a GS2 header without an authorization
/// identity (the token names the user), then the bearer token.
pub fn oauthbearer_message(token: &str) -> Vec<u8> {
    format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// ClientKey and ServerKey, what a login needs of the password.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Keys {
    client_key: Vec<u8>,
    server_key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    mechanism: Mechanism,
    user: String,
    /// SHA-256 of the password, so that a changed password misses.
    password_tag: [u8; 32],
    salt: Vec<u8>,
    iterations: u32,
}

/// Derived SCRAM keys per account, salt and iteration count, shared by all connections.
#[derive(Debug, Default)]
pub struct KeyCache {
    map: Mutex<HashMap<CacheKey, Keys>>,
}

impl KeyCache {
    pub fn new() -> KeyCache {
        KeyCache::default()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Keys>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads entries saved by [`KeyCache::save`]; a missing file is an empty cache. Lines
    /// that do not parse are skipped.
    pub fn load(path: &Path) -> std::io::Result<KeyCache> {
        let cache = KeyCache::new();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cache),
            Err(e) => return Err(e),
        };
        let mut map = cache.lock();
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            let f: Vec<&str> = line.split('\t').collect();
            let [mech, user, tag, salt, iters, ck, sk] = f[..] else {
                continue;
            };
            let parsed = (|| {
                let mut password_tag = [0u8; 32];
                let t = B64.decode(tag).ok()?;
                if t.len() != 32 {
                    return None;
                }
                password_tag.copy_from_slice(&t);
                Some((
                    CacheKey {
                        mechanism: Mechanism::from_name(mech)?,
                        user: user.to_owned(),
                        password_tag,
                        salt: B64.decode(salt).ok()?,
                        iterations: iters.parse().ok()?,
                    },
                    Keys {
                        client_key: B64.decode(ck).ok()?,
                        server_key: B64.decode(sk).ok()?,
                    },
                ))
            })();
            if let Some((k, v)) = parsed {
                map.insert(k, v);
            }
        }
        drop(map);
        Ok(cache)
    }

    /// Writes the cache (tab-separated, one entry a line; the keys log in to the accounts:
    /// keep the file as private as the passwords).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for (k, v) in self.lock().iter() {
                writeln!(
                    w,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.mechanism.name(),
                    k.user,
                    B64.encode(k.password_tag),
                    B64.encode(&k.salt),
                    k.iterations,
                    B64.encode(&v.client_key),
                    B64.encode(&v.server_key)
                )?;
            }
            w.flush()?;
        }
        std::fs::rename(tmp, path)
    }
}

/// One SCRAM exchange, client side.
pub struct ScramClient {
    mechanism: Mechanism,
    hash: ScramHash,
    user: String,
    password: String,
    client_first_bare: String,
    client_nonce: String,
    /// AuthMessage and ServerKey, once the client-final message is made.
    expect: Option<(String, Vec<u8>)>,
}

impl ScramClient {
    /// A new exchange; `nonce` is the client nonce (printable, no comma).
    pub fn new(
        mechanism: Mechanism,
        user: &str,
        password: &str,
        nonce: &str,
    ) -> Result<ScramClient, SaslError> {
        let hash = mechanism
            .hash()
            .ok_or_else(|| SaslError::Malformed(format!("{mechanism} is not SCRAM")))?;
        let user = saslprep(user)?;
        let password = saslprep(password)?;
        let client_first_bare = format!("n={},r={nonce}", escape_username(&user));
        Ok(ScramClient {
            mechanism,
            hash,
            user,
            password,
            client_first_bare,
            client_nonce: nonce.to_owned(),
            expect: None,
        })
    }

    /// A random client nonce: 24 bytes, base64.
    pub fn random_nonce() -> String {
        B64.encode(rand::random::<[u8; 24]>())
    }

    /// The client-first message (GS2 header `n,,`: no channel binding, no authzid).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message.
    pub fn client_final(
        &mut self,
        server_first: &str,
        cache: Option<&KeyCache>,
    ) -> Result<String, SaslError> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(
                    B64.decode(v)
                        .map_err(|_| SaslError::Malformed("salt is not base64".into()))?,
                );
            } else if let Some(v) = part.strip_prefix("i=") {
                iterations = Some(
                    v.parse::<u32>()
                        .map_err(|_| SaslError::Malformed(format!("iteration count {v:?}")))?,
                );
            } else if part.starts_with("m=") {
                return Err(SaslError::Malformed("mandatory extension".into()));
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(SaslError::Malformed(format!(
                "server-first {server_first:?} lacks r, s or i"
            )));
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(SaslError::NonceMismatch);
        }
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(SaslError::Iterations(iterations));
        }
        let keys = self.keys(&salt, iterations, cache);
        let stored_key = self.hash.hash(&keys.client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expect = Some((auth_message, keys.server_key));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    fn keys(&self, salt: &[u8], iterations: u32, cache: Option<&KeyCache>) -> Keys {
        let key = cache.map(|_| CacheKey {
            mechanism: self.mechanism,
            user: self.user.clone(),
            password_tag: Sha256::digest(self.password.as_bytes()).into(),
            salt: salt.to_vec(),
            iterations,
        });
        if let (Some(cache), Some(key)) = (cache, &key)
            && let Some(k) = cache.lock().get(key)
        {
            return k.clone();
        }
        let salted = self
            .hash
            .salted_password(self.password.as_bytes(), salt, iterations);
        let keys = Keys {
            client_key: self.hash.hmac(&salted, b"Client Key"),
            server_key: self.hash.hmac(&salted, b"Server Key"),
        };
        if let (Some(cache), Some(key)) = (cache, key) {
            cache.lock().insert(key, keys.clone());
        }
        keys
    }

    /// Checks the server-final message (`v=…`): the server proves it knows the password.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), SaslError> {
        let Some((auth_message, server_key)) = &self.expect else {
            return Err(SaslError::Malformed(
                "server-final before client-final".into(),
            ));
        };
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(SaslError::ServerError(e.to_owned()));
        }
        let v = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or_else(|| SaslError::Malformed(format!("server-final {server_final:?}")))?;
        let expected = B64.encode(self.hash.hmac(server_key, auth_message.as_bytes()));
        if v == expected {
            Ok(())
        } else {
            Err(SaslError::ServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5: SCRAM-SHA-1, user "user", password "pencil".
    #[test]
    fn rfc5802_scram_sha1_vector() {
        let mut c = ScramClient::new(
            Mechanism::ScramSha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        )
        .unwrap();
        assert_eq!(c.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let server_first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        assert_eq!(
            c.client_final(server_first, None).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_server_final("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert_eq!(
            c.verify_server_final("v=AAAApqV8S7suAoZWja4dJRkFsKQ="),
            Err(SaslError::ServerSignature)
        );
    }

    /// RFC 7677 §3: SCRAM-SHA-256, user "user", password "pencil".
    #[test]
    fn rfc7677_scram_sha256_vector() {
        let mut c = ScramClient::new(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        )
        .unwrap();
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            c.client_final(server_first, None).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn cache_gives_the_same_proof_and_survives_a_file() {
        let sf = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let cache = KeyCache::new();
        for _ in 0..2 {
            let mut c = ScramClient::new(
                Mechanism::ScramSha256,
                "user",
                "pencil",
                "rOprNGfwEbeRWgbNEkqO",
            )
            .unwrap();
            assert_eq!(c.client_final(sf, Some(&cache)).unwrap(), proof);
        }
        assert_eq!(cache.len(), 1);
        let dir = std::env::temp_dir().join(format!("strait-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        cache.save(&path).unwrap();
        let loaded = KeyCache::load(&path).unwrap();
        assert_eq!(loaded.len(), 1);
        // Another password misses the cache and yields another proof.
        let mut c = ScramClient::new(
            Mechanism::ScramSha256,
            "user",
            "pen",
            "rOprNGfwEbeRWgbNEkqO",
        )
        .unwrap();
        assert_ne!(c.client_final(sf, Some(&loaded)).unwrap(), proof);
        assert_eq!(loaded.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_bad_server_first() {
        let mut c = ScramClient::new(Mechanism::ScramSha256, "u,=", "p", "abc").unwrap();
        assert_eq!(c.client_first(), "n,,n=u=2C=3D,r=abc");
        assert_eq!(
            c.client_final("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096", None),
            Err(SaslError::NonceMismatch)
        );
        assert_eq!(
            c.client_final("r=abc,s=QSXCR+Q6sek8bf92,i=4096", None),
            Err(SaslError::NonceMismatch),
            "the server must add to the nonce"
        );
        assert_eq!(
            c.client_final("r=abcd,s=QSXCR+Q6sek8bf92,i=0", None),
            Err(SaslError::Iterations(0))
        );
        assert!(matches!(
            c.client_final("r=abcd,i=4096", None),
            Err(SaslError::Malformed(_))
        ));
        assert!(matches!(
            c.verify_server_final("e=invalid-proof"),
            Err(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn mechanisms_order_and_plain() {
        assert!(Mechanism::ScramSha256 > Mechanism::ScramSha1);
        assert!(Mechanism::ScramSha1 > Mechanism::Plain);
        assert_eq!(
            Mechanism::from_name("SCRAM-SHA-1"),
            Some(Mechanism::ScramSha1)
        );
        assert_eq!(Mechanism::from_name("SCRAM-SHA-1-PLUS"), None);
        assert_eq!(plain_message("u", "p"), b"\0u\0p");
    }
}
