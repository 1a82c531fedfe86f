//! The server side of one SCRAM exchange (RFC 5802, RFC 7677), without
//! channel binding (we advertise no `-PLUS` mechanism).
//!
//! ```text
//! client-first  n,[a=authzid],n=user,r=cnonce[,ext]
//! server-first  r=cnonce+snonce,s=base64(salt),i=iterations
//! client-final  c=base64(gs2-header),r=cnonce+snonce[,ext],p=base64(proof)
//! server-final  v=base64(ServerSignature)
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use strait_store::ScramSecret;
use subtle::ConstantTimeEq;

use super::{DEFAULT_ITERATIONS, SALT_LEN, SaslError, ScramHash, saslprep};

/// Longest client message accepted, in bytes.
const MAX_MESSAGE: usize = 4096;
/// Random bytes in the server's nonce part (base64-encoded on the wire).
const SERVER_NONCE_BYTES: usize = 24;

enum State {
    /// Waiting for client-first.
    Start,
    /// Got client-first; waiting for the caller's `server_first`.
    GotClientFirst {
        gs2_header: String,
        client_first_bare: String,
        client_nonce: String,
    },
    /// Sent server-first; waiting for client-final.
    SentServerFirst {
        gs2_header: String,
        nonce: String,
        /// client-first-message-bare "," server-first-message
        auth_prefix: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
        /// `false` for an unknown user: the proof can never succeed.
        known: bool,
    },
    Done,
    Failed,
}

/// One SCRAM exchange on the server side.
pub struct ScramServer {
    hash: ScramHash,
    state: State,
    username: Option<String>,
    authzid: Option<String>,
    fake_iterations: u32,
    #[cfg(test)]
    fixed_server_nonce: Option<String>,
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> Self {
        ScramServer {
            hash,
            state: State::Start,
            username: None,
            authzid: None,
            fake_iterations: DEFAULT_ITERATIONS,
            #[cfg(test)]
            fixed_server_nonce: None,
        }
    }

    /// The iteration count shown to unknown users; set it to what real
    /// accounts use so they cannot be told apart (default
    /// [`DEFAULT_ITERATIONS`]).
    pub fn set_fake_iterations(&mut self, iterations: u32) {
        self.fake_iterations = iterations.max(1);
    }

    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// The username from client-first (SASLprep-ed, `=2C`/`=3D` decoded).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The authorization identity from the GS2 header, if the client sent one.
    /// The caller must check it equals the bare JID of the username.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// `true` once `client_final` succeeded.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    #[cfg(test)]
    pub(crate) fn set_server_nonce(&mut self, nonce: &str) {
        self.fixed_server_nonce = Some(nonce.to_owned());
    }

    /// Parses client-first-message; returns the username to look up.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, SaslError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Failed;
            return Err(SaslError::malformed("client-first out of order"));
        }
        match parse_client_first(msg) {
            Ok(cf) => {
                self.username = Some(cf.username.clone());
                self.authzid = cf.authzid;
                self.state = State::GotClientFirst {
                    gs2_header: cf.gs2_header,
                    client_first_bare: cf.bare,
                    client_nonce: cf.nonce,
                };
                Ok(cf.username)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Builds server-first-message. `secret` is the user's stored secret for
    /// this hash, or `None` for an unknown user (or one without a secret of
    /// this hash): the exchange then continues with a salt derived from
    /// `fake_salt_key` and the username — stable across attempts, like a real
    /// one — and fails at the proof, so unknown users cannot be told apart.
    ///
    /// Called out of order, it returns an empty message and the exchange fails.
    pub fn server_first(&mut self, secret: Option<&ScramSecret>, fake_salt_key: &[u8]) -> Vec<u8> {
        let State::GotClientFirst {
            gs2_header,
            client_first_bare,
            client_nonce,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Vec::new();
        };
        let server_nonce = self.server_nonce();
        let nonce = format!("{client_nonce}{server_nonce}");
        let (salt, iterations, stored_key, server_key, known) = match secret {
            Some(s) => (
                s.salt.clone(),
                s.iterations,
                s.stored_key.clone(),
                s.server_key.clone(),
                true,
            ),
            None => {
                let username = self.username.as_deref().unwrap_or_default();
                let mut input = Vec::new();
                input.extend_from_slice(b"strait scram fake salt\0");
                input.extend_from_slice(self.hash.mechanism().as_bytes());
                input.push(0);
                input.extend_from_slice(username.as_bytes());
                let mut salt = ScramHash::Sha256.hmac(fake_salt_key, &input);
                salt.truncate(SALT_LEN);
                let mut stored = vec![0u8; self.hash.output_len()];
                let mut server = vec![0u8; self.hash.output_len()];
                rand::rngs::OsRng.fill_bytes(&mut stored);
                rand::rngs::OsRng.fill_bytes(&mut server);
                (salt, self.fake_iterations, stored, server, false)
            }
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        self.state = State::SentServerFirst {
            gs2_header,
            nonce,
            auth_prefix: format!("{client_first_bare},{server_first}"),
            stored_key,
            server_key,
            known,
        };
        server_first.into_bytes()
    }

    /// Checks client-final-message; on success returns server-final-message
    /// (`v=...`), which the caller sends as the `<success/>` payload.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentServerFirst {
            gs2_header,
            nonce,
            auth_prefix,
            stored_key,
            server_key,
            known,
        } = state
        else {
            return Err(SaslError::malformed("client-final out of order"));
        };
        let msg = message_str(msg)?;
        let (without_proof, proof_attr) = msg
            .rsplit_once(',')
            .ok_or_else(|| SaslError::malformed("client-final has no proof"))?;
        let proof_b64 = proof_attr
            .strip_prefix("p=")
            .ok_or_else(|| SaslError::malformed("client-final does not end with p="))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| SaslError::malformed("client-final does not start with c="))?;
        let got_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| SaslError::malformed("client-final has no r= after c="))?;
        for ext in attrs {
            check_extension(ext)?;
        }
        let cbind = B64
            .decode(cbind)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::malformed("client proof has the wrong length"));
        }
        // Without channel binding, c= must echo the GS2 header exactly.
        if cbind != gs2_header.as_bytes() {
            return Err(SaslError::NotAuthorized);
        }
        if got_nonce != nonce {
            return Err(SaslError::NotAuthorized);
        }
        let auth_message = format!("{auth_prefix},{without_proof}");
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let computed = self.hash.hash(&client_key);
        let matches = computed.ct_eq(&stored_key) & subtle::Choice::from(u8::from(known));
        if !bool::from(matches) {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        self.state = State::Done;
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }

    fn server_nonce(&self) -> String {
        #[cfg(test)]
        if let Some(n) = &self.fixed_server_nonce {
            return n.clone();
        }
        let mut bytes = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        B64.encode(bytes)
    }
}

struct ClientFirst {
    gs2_header: String,
    bare: String,
    username: String,
    authzid: Option<String>,
    nonce: String,
}

fn message_str(msg: &[u8]) -> Result<&str, SaslError> {
    if msg.len() > MAX_MESSAGE {
        return Err(SaslError::malformed("message too long"));
    }
    std::str::from_utf8(msg).map_err(|_| SaslError::IncorrectEncoding)
}

fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, SaslError> {
    let msg = message_str(msg)?;
    let (flag, rest) = msg
        .split_once(',')
        .ok_or_else(|| SaslError::malformed("no GS2 header"))?;
    match flag {
        // 'y': the client supports channel binding but thinks we do not —
        // true, since we advertise no -PLUS mechanism.
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(SaslError::malformed(
                "channel binding requested but not offered",
            ));
        }
        _ => return Err(SaslError::malformed("bad GS2 channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| SaslError::malformed("GS2 header not terminated"))?;
    let authzid = if authzid.is_empty() {
        None
    } else {
        let a = authzid
            .strip_prefix("a=")
            .ok_or_else(|| SaslError::malformed("bad GS2 authzid"))?;
        let a = decode_saslname(a)?;
        if a.is_empty() {
            return Err(SaslError::malformed("empty authzid"));
        }
        Some(a)
    };
    let gs2_header = msg[..msg.len() - bare.len()].to_owned();

    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or_default();
    if first.starts_with("m=") {
        return Err(SaslError::malformed("unsupported mandatory extension m="));
    }
    let username = first
        .strip_prefix("n=")
        .ok_or_else(|| SaslError::malformed("client-first has no n="))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| SaslError::malformed("client-first has no r= after n="))?;
    if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(SaslError::malformed("bad client nonce"));
    }
    for ext in attrs {
        check_extension(ext)?;
    }
    let username = saslprep(&decode_saslname(username)?)?;
    if username.is_empty() {
        return Err(SaslError::malformed("empty username"));
    }
    Ok(ClientFirst {
        gs2_header,
        bare: bare.to_owned(),
        username,
        authzid,
        nonce: nonce.to_owned(),
    })
}

/// `attr-val` of an optional extension: a letter, '=', a value. `m=` is
/// mandatory and unsupported; known attributes cannot appear as extensions.
fn check_extension(ext: &str) -> Result<(), SaslError> {
    let b = ext.as_bytes();
    if b.len() < 2 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
        return Err(SaslError::malformed("bad attribute"));
    }
    if matches!(
        b[0],
        b'm' | b'n' | b'r' | b'c' | b'p' | b's' | b'i' | b'v' | b'e'
    ) {
        return Err(SaslError::malformed(format!(
            "unexpected attribute {}=",
            b[0] as char
        )));
    }
    Ok(())
}

/// Decodes a `saslname`: `=2C` → ',', `=3D` → '='; any other '=' is an error.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i + 1..i + 3);
        match esc {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(SaslError::malformed("bad '=' escape in saslname")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::derive_secret;
    use super::*;

    const FAKE_KEY: &[u8] = b"fake salt key for tests";

    /// A minimal SCRAM client for the tests.
    fn client_final_for(
        hash: ScramHash,
        password: &str,
        gs2_header: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let mut nonce = "";
        let mut salt = vec![];
        let mut iterations = 0;
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = B64.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => panic!("unexpected {attr}"),
            }
        }
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode(gs2_header));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hash.hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    fn secret_for(hash: ScramHash, password: &str) -> ScramSecret {
        derive_secret(hash, password, b"0123456789abcdef", 4096).unwrap()
    }

    #[test]
    fn rfc7677_scram_sha256_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = derive_secret(ScramHash::Sha256, "pencil", &salt, 4096).unwrap();
        let mut s = ScramServer::new(ScramHash::Sha256);
        s.set_server_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            s.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap(),
            "user"
        );
        assert_eq!(s.authzid(), None);
        let sf = s.server_first(Some(&secret), FAKE_KEY);
        assert_eq!(
            String::from_utf8(sf).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = s
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(s.is_done());
    }

    #[test]
    fn rfc5802_scram_sha1_example() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let secret = derive_secret(ScramHash::Sha1, "pencil", &salt, 4096).unwrap();
        let mut s = ScramServer::new(ScramHash::Sha1);
        s.set_server_nonce("3rfcNHYJY1ZVvWVs7j");
        assert_eq!(
            s.client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
                .unwrap(),
            "user"
        );
        let sf = s.server_first(Some(&secret), FAKE_KEY);
        assert_eq!(
            String::from_utf8(sf).unwrap(),
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        );
        let fin = s
            .client_final(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
        );
    }

    /// Runs a whole exchange with the test client; returns server-first and the result.
    fn exchange(
        hash: ScramHash,
        secret: Option<&ScramSecret>,
        password: &str,
        client_first: &str,
    ) -> (String, Result<Vec<u8>, SaslError>) {
        let mut s = ScramServer::new(hash);
        s.client_first(client_first.as_bytes()).unwrap();
        let sf = String::from_utf8(s.server_first(secret, FAKE_KEY)).unwrap();
        let (gs2, bare) = client_first.split_at(client_first.find(",n=").unwrap() + 1);
        let cf = client_final_for(hash, password, gs2, bare, &sf);
        (sf, s.client_final(cf.as_bytes()))
    }

    #[test]
    fn full_exchange_random_nonce_both_hashes() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let secret = secret_for(hash, "correct horse");
            let (sf, r) = exchange(hash, Some(&secret), "correct horse", "n,,n=juliet,r=abc");
            assert!(sf.starts_with("r=abc"));
            assert!(sf.len() > "r=abc".len() + 20, "server adds its own nonce");
            assert!(r.unwrap().starts_with(b"v="));
            // 'y' flag and an authzid are accepted; c= must echo them.
            let mut s = ScramServer::new(hash);
            s.client_first(b"y,a=juliet@example.com,n=juliet,r=xyz")
                .unwrap();
            assert_eq!(s.authzid(), Some("juliet@example.com"));
            let sf = String::from_utf8(s.server_first(Some(&secret), FAKE_KEY)).unwrap();
            let cf = client_final_for(
                hash,
                "correct horse",
                "y,a=juliet@example.com,",
                "n=juliet,r=xyz",
                &sf,
            );
            assert!(s.client_final(cf.as_bytes()).is_ok());
        }
    }

    #[test]
    fn server_nonces_differ() {
        let secret = secret_for(ScramHash::Sha256, "pw");
        let (a, _) = exchange(ScramHash::Sha256, Some(&secret), "pw", "n,,n=u,r=n1");
        let (b, _) = exchange(ScramHash::Sha256, Some(&secret), "pw", "n,,n=u,r=n1");
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_password_fails() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let secret = secret_for(hash, "right");
            let (_, r) = exchange(hash, Some(&secret), "wrong", "n,,n=juliet,r=abc");
            assert_eq!(r, Err(SaslError::NotAuthorized));
        }
    }

    #[test]
    fn unknown_user_looks_the_same_and_fails_at_proof() {
        let hash = ScramHash::Sha256;
        let secret = secret_for(hash, "pw");
        let (known_sf, _) = exchange(hash, Some(&secret), "pw", "n,,n=juliet,r=abc");
        let (fake_sf, r) = exchange(hash, None, "pw", "n,,n=nobody,r=abc");
        assert_eq!(r, Err(SaslError::NotAuthorized));
        // Same shape: r=<same length>,s=<16-byte salt>,i=4096.
        let shape = |sf: &str| {
            sf.split(',')
                .map(|a| (a[..2].to_owned(), a.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&known_sf), shape(&fake_sf));
        assert!(fake_sf.ends_with(",i=4096"));
        // The fake salt is stable per user, differs between users and hashes.
        let salt = |sf: &str| sf.split(',').nth(1).unwrap().to_owned();
        let (again, _) = exchange(hash, None, "x", "n,,n=nobody,r=abc");
        assert_eq!(salt(&fake_sf), salt(&again));
        let (other, _) = exchange(hash, None, "x", "n,,n=someone,r=abc");
        assert_ne!(salt(&fake_sf), salt(&other));
        let (sha1, _) = exchange(ScramHash::Sha1, None, "x", "n,,n=nobody,r=abc");
        assert_ne!(salt(&fake_sf), salt(&sha1));
        // The configured iteration count is shown.
        let mut s = ScramServer::new(hash);
        s.set_fake_iterations(10_000);
        s.client_first(b"n,,n=nobody,r=abc").unwrap();
        let sf = String::from_utf8(s.server_first(None, FAKE_KEY)).unwrap();
        assert!(sf.ends_with(",i=10000"));
    }

    #[test]
    fn username_escapes_and_saslprep() {
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert_eq!(
            s.client_first(b"n,a=x=3Dy=2Cz,n=a=2Cb=3Dc\xc2\xa0d,r=n")
                .unwrap(),
            "a,b=c d"
        );
        assert_eq!(s.authzid(), Some("x=y,z"));
        assert_eq!(s.username(), Some("a,b=c d"));
    }

    fn first_err(msg: &[u8]) -> SaslError {
        ScramServer::new(ScramHash::Sha256)
            .client_first(msg)
            .unwrap_err()
    }

    #[test]
    fn malformed_client_first() {
        let m = |e: SaslError| e.failure();
        assert_eq!(m(first_err(b"")), "malformed-request");
        assert_eq!(m(first_err(b"n")), "malformed-request");
        assert_eq!(m(first_err(b"n,")), "malformed-request");
        assert_eq!(m(first_err(b"x,,n=u,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"p=tls-unique,,n=u,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,b=u,n=u,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,a=,n=u,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,,m=ext,n=u,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,,r=a,n=u")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u,r=")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u,r=a b")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u=2X,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u=,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u,r=a,bogus")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=u,r=a,p=x")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=\x07,r=a")), "malformed-request");
        assert_eq!(m(first_err(b"n,,n=\xff,r=a")), "incorrect-encoding");
        assert_eq!(m(first_err(&[b'a'; 5000])), "malformed-request");
        // Optional extensions are ignored.
        assert!(
            ScramServer::new(ScramHash::Sha256)
                .client_first(b"n,,n=u,r=a,x=whatever")
                .is_ok()
        );
    }

    /// A server that has sent server-first for user "u" with password "pw";
    /// returns it with the valid client-final.
    fn ready() -> (ScramServer, String) {
        let hash = ScramHash::Sha256;
        let secret = secret_for(hash, "pw");
        let mut s = ScramServer::new(hash);
        s.client_first(b"n,,n=u,r=cn").unwrap();
        let sf = String::from_utf8(s.server_first(Some(&secret), FAKE_KEY)).unwrap();
        let cf = client_final_for(hash, "pw", "n,,", "n=u,r=cn", &sf);
        (s, cf)
    }

    fn final_err(f: impl FnOnce(&str) -> String) -> SaslError {
        let (mut s, cf) = ready();
        let bad = f(&cf);
        let e = s.client_final(bad.as_bytes()).unwrap_err();
        // A failed exchange stays failed.
        assert!(s.client_final(cf.as_bytes()).is_err());
        e
    }

    #[test]
    fn client_final_checks() {
        use SaslError::*;
        // Sanity: the unmodified message passes.
        let (mut s, cf) = ready();
        assert!(s.client_final(cf.as_bytes()).is_ok());
        // Replaying after success is refused.
        assert!(matches!(
            s.client_final(cf.as_bytes()),
            Err(MalformedRequest(_))
        ));

        let (c, r, p) = {
            let v: Vec<&str> = cf.split(',').collect();
            (v[0].to_owned(), v[1].to_owned(), v[2].to_owned())
        };
        // Channel-binding echo must match the GS2 header ("n,," → biws).
        assert_eq!(final_err(|_| format!("c=eSws,{r},{p}")), NotAuthorized);
        assert_eq!(final_err(|_| format!("c=bixhPXgs,{r},{p}")), NotAuthorized);
        assert_eq!(final_err(|_| format!("c=!!,{r},{p}")), IncorrectEncoding);
        // Nonce must be the combined one.
        assert_eq!(final_err(|_| format!("{c},r=cn,{p}")), NotAuthorized);
        assert_eq!(final_err(|_| format!("{c},{r}x,{p}")), NotAuthorized);
        // Proof: base64, right length, right value.
        assert_eq!(final_err(|_| format!("{c},{r},p=***")), IncorrectEncoding);
        assert!(matches!(
            final_err(|_| format!("{c},{r},p=AAAA")),
            MalformedRequest(_)
        ));
        assert_eq!(
            final_err(|_| format!("{c},{r},p={}", B64.encode([0u8; 32]))),
            NotAuthorized
        );
        // Structure.
        assert!(matches!(
            final_err(|_| format!("{c},{r}")),
            MalformedRequest(_)
        ));
        assert!(matches!(
            final_err(|_| format!("{r},{c},{p}")),
            MalformedRequest(_)
        ));
        assert!(matches!(
            final_err(|_| format!("{c},{p}")),
            MalformedRequest(_)
        ));
        assert!(matches!(
            final_err(|_| format!("{c},{r},{p},x=1")),
            MalformedRequest(_)
        ));
        assert!(matches!(
            final_err(|_| format!("{c},{r},m=1,{p}")),
            MalformedRequest(_)
        ));
        assert!(matches!(final_err(|_| String::new()), MalformedRequest(_)));
    }

    #[test]
    fn invalid_utf8_client_final() {
        let (mut s, _) = ready();
        assert_eq!(
            s.client_final(b"c=biws,r=\xff,p=AAAA"),
            Err(SaslError::IncorrectEncoding)
        );
    }

    #[test]
    fn out_of_order_calls() {
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert!(s.server_first(None, FAKE_KEY).is_empty());
        assert!(s.client_final(b"c=biws,r=a,p=AAAA").is_err());
        let mut s = ScramServer::new(ScramHash::Sha256);
        assert!(matches!(
            s.client_final(b"c=biws,r=a,p=AAAA"),
            Err(SaslError::MalformedRequest(_))
        ));
        let mut s = ScramServer::new(ScramHash::Sha256);
        s.client_first(b"n,,n=u,r=a").unwrap();
        assert!(s.client_first(b"n,,n=u,r=a").is_err());
        // After a failure nothing proceeds.
        assert!(s.server_first(None, FAKE_KEY).is_empty());
    }
}
