//! Test support: a real server on loopback ports in a temporary directory, and a raw-bytes
//! client that speaks XMPP by hand (STARTTLS, SCRAM-SHA-256 written from RFC 5802/7677,
//! bind), so tests see exactly the bytes a client would.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DOMAIN: &str = "localhost";
pub const OTHER_DOMAIN: &str = "example.test";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub starttls: SocketAddr,
    pub direct: SocketAddr,
}

impl TestServer {
    /// Starts a server with the given tweaks to the default config, on free ports.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            domains: vec![DOMAIN.into(), OTHER_DOMAIN.into()],
            ..Config::default()
        };
        config.listen.c2s = vec!["127.0.0.1:0".parse().unwrap()];
        config.listen.c2s_direct_tls = vec!["127.0.0.1:0".parse().unwrap()];
        config.upload.listen = vec!["127.0.0.1:0".parse().unwrap()];
        // Test machines' disks can be nearly full; the free-space reserve has its own tests.
        config.upload.min_free_bytes = 0;
        config.auth.scram_iterations = 4096;
        tweak(&mut config);
        let server = Server::start(config).await.unwrap();
        let addr = |direct: bool| {
            server
                .local_addrs()
                .iter()
                .find(|(_, d)| *d == direct)
                .map(|(a, _)| *a)
                .unwrap()
        };
        TestServer {
            starttls: addr(false),
            direct: addr(true),
            server: Some(server),
            dir,
        }
    }

    pub fn config(&self) -> &Config {
        &self.server.as_ref().unwrap().state().config
    }

    /// Creates an account with the same code path as `strait user add`.
    pub fn add_user(&self, jid: &str, password: &str) -> String {
        let state = self.server.as_ref().unwrap().state();
        strait_server::accounts::add_user(&state.config, &*state.store, jid, password).unwrap()
    }

    /// Accounts alice@localhost (password "pa") and bob@localhost ("pb"), logged in as
    /// resources a1 and b1, both available.
    pub async fn alice_and_bob(&self) -> (RawClient, RawClient) {
        self.add_user("alice@localhost", "pa");
        self.add_user("bob@localhost", "pb");
        let mut a =
            RawClient::login(self.starttls, self.ca_pem(), "alice@localhost", "pa", "a1").await;
        let mut b =
            RawClient::login(self.starttls, self.ca_pem(), "bob@localhost", "pb", "b1").await;
        a.available().await;
        b.available().await;
        (a, b)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.config().data_dir.join("tls/ca.pem")).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

/// A TLS client configuration that trusts only the PEM certificates in `ca`, offering the
/// given ALPN protocols.
pub fn client_tls_config(ca: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// TLS over a new connection to `addr`, the certificate checked for `host` against `ca`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &[u8],
    host: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client_tls_config(ca, alpn)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .unwrap_or_else(|e| panic!("TLS handshake with {host} at {addr}: {e}"))
}

/// A hand-driven XMPP client over raw bytes.
pub struct RawClient {
    stream: Stream,
    /// Everything received and not yet consumed by `expect`.
    pub buffer: String,
    ca: Vec<u8>,
    pub full_jid: Option<String>,
}

fn random_nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    B64.encode(bytes)
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, ca: Vec<u8>) -> RawClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // As real clients do: without it a second small write waits for the server's delayed
        // acknowledgement of the first (40 ms), which timing-sensitive tests then see.
        tcp.set_nodelay(true).unwrap();
        RawClient {
            stream: Stream::Plain(tcp),
            buffer: String::new(),
            ca,
            full_jid: None,
        }
    }

    fn tls_config(&self, alpn: bool) -> Arc<rustls::ClientConfig> {
        let alpn: &[&[u8]] = if alpn { &[b"xmpp-client"] } else { &[] };
        client_tls_config(&self.ca, alpn)
    }

    /// Connects with direct TLS (XEP-0368).
    pub async fn connect_direct(addr: SocketAddr, ca: Vec<u8>, domain: &str) -> RawClient {
        let mut c = RawClient::connect(addr, ca).await;
        c.upgrade(domain, true).await;
        c
    }

    async fn upgrade(&mut self, domain: &str, alpn: bool) {
        let connector = tokio_rustls::TlsConnector::from(self.tls_config(alpn));
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            panic!("not plain");
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned()).unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake failed");
        self.stream = Stream::Tls(Box::new(tls));
    }

    pub async fn send(&mut self, data: &str) {
        let r = match &mut self.stream {
            Stream::Plain(s) => s.write_all(data.as_bytes()).await,
            Stream::Tls(s) => {
                let r = s.write_all(data.as_bytes()).await;
                if r.is_ok() { s.flush().await } else { r }
            }
            Stream::Gone => panic!("no stream"),
        };
        r.unwrap();
    }

    /// Like `send`, but a failure (the server already closed) is not an error.
    pub async fn try_send(&mut self, data: &[u8]) -> bool {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(data).await.is_ok(),
            Stream::Tls(s) => s.write_all(data).await.is_ok() && s.flush().await.is_ok(),
            Stream::Gone => false,
        }
    }

    async fn read_some(&mut self) -> Option<usize> {
        let mut buf = [0u8; 8192];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut buf).await,
            Stream::Tls(s) => s.read(&mut buf).await,
            Stream::Gone => return None,
        };
        match n {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buffer.push_str(&String::from_utf8_lossy(&buf[..n]));
                Some(n)
            }
        }
    }

    /// Waits until `needle` has been received; returns everything up to and including it
    /// and keeps the rest buffered. Panics with what was received on timeout or close.
    pub async fn expect(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.buffer.find(needle) {
                let end = i + needle.len();
                let head = self.buffer[..end].to_owned();
                self.buffer.drain(..end);
                return head;
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "connection closed while waiting for {needle:?}; got {:?}",
                    self.buffer
                ),
                Err(_) => panic!("timed out waiting for {needle:?}; got {:?}", self.buffer),
            }
        }
    }

    /// The next complete top-level element (a stanza), skipping whitespace. Good enough for
    /// test traffic: an element's end is its first matching close tag.
    pub async fn next_element(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = element_end(&self.buffer) {
                let el = self.buffer[..end].trim_start().to_owned();
                self.buffer.drain(..end);
                return el;
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "connection closed while waiting for an element; got {:?}",
                    self.buffer
                ),
                Err(_) => panic!("timed out waiting for an element; got {:?}", self.buffer),
            }
        }
    }

    /// Skips elements until one contains every needle; returns it.
    pub async fn expect_element(&mut self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let el = tokio::time::timeout_at(deadline, self.next_element())
                .await
                .unwrap_or_else(|_| panic!("no element with {needles:?}; skipped {skipped:?}"));
            if needles.iter().all(|n| el.contains(n)) {
                return el;
            }
            skipped.push(el);
        }
    }

    /// Reads until the server closes the connection; returns all that arrived.
    pub async fn read_to_close(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(Some(_)) => {}
                Ok(None) => return std::mem::take(&mut self.buffer),
                Err(_) => panic!("server did not close; got {:?}", self.buffer),
            }
        }
    }

    /// Asserts nothing containing `needle` arrives within `quiet`.
    pub async fn expect_silence(&mut self, needle: &str, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.read_some()).await {}
        assert!(
            !self.buffer.contains(needle),
            "unexpected {needle:?} in {:?}",
            self.buffer
        );
    }

    pub async fn open_stream(&mut self, domain: &str) -> String {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        ))
        .await;
        self.expect("</stream:features>").await
    }

    pub async fn starttls(&mut self, domain: &str) -> String {
        self.open_stream(domain).await;
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        self.expect("<proceed").await;
        self.expect("/>").await;
        self.buffer.clear();
        self.upgrade(domain, false).await;
        self.open_stream(domain).await
    }

    /// SCRAM-SHA-256 (RFC 5802, RFC 7677) by hand; returns the server's final answer
    /// (`<success …>` or `<failure …>`).
    pub async fn scram_sha256(&mut self, user: &str, password: &str) -> String {
        let cnonce = random_nonce();
        let bare = format!("n={user},r={cnonce}");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(format!("n,,{bare}"))
        ))
        .await;
        let got = self.expect_one_of(&["</challenge>", "</failure>"]).await;
        if got.contains("<failure") {
            return got;
        }
        let b64 = between(&got, ">", "</challenge>");
        let server_first = String::from_utf8(B64.decode(b64).unwrap()).unwrap();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iters = 0u32;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = v;
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = B64.decode(v).unwrap();
            } else if let Some(v) = part.strip_prefix("i=") {
                iters = v.parse().unwrap();
            }
        }
        assert!(nonce.starts_with(&cnonce), "server nonce must extend ours");
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iters, &mut salted);
        let hmac = |key: &[u8], data: &[u8]| {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        };
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key).to_vec();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let sig = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
        ))
        .await;
        let done = self
            .expect_one_of(&[
                "</success>",
                "</failure>",
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            ])
            .await;
        if done.contains("<success") {
            let server_key = hmac(&salted, b"Server Key");
            let expected = B64.encode(hmac(&server_key, auth_message.as_bytes()));
            let v =
                String::from_utf8(B64.decode(between(&done, ">", "</success>")).unwrap()).unwrap();
            assert_eq!(v, format!("v={expected}"), "server signature");
        }
        done
    }

    pub async fn expect_one_of(&mut self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((i, n)) = needles
                .iter()
                .filter_map(|n| self.buffer.find(n).map(|i| (i, *n)))
                .min_by_key(|(i, _)| *i)
            {
                let end = i + n.len();
                let head = self.buffer[..end].to_owned();
                self.buffer.drain(..end);
                return head;
            }
            match tokio::time::timeout_at(deadline, self.read_some()).await {
                Ok(Some(_)) => {}
                _ => panic!("waiting for one of {needles:?}; got {:?}", self.buffer),
            }
        }
    }

    /// STARTTLS, SCRAM-SHA-256, bind: a ready session. Returns the bound full JID.
    pub async fn login(
        addr: SocketAddr,
        ca: Vec<u8>,
        jid: &str,
        password: &str,
        resource: &str,
    ) -> RawClient {
        let (user, domain) = jid.split_once('@').unwrap();
        let mut c = RawClient::connect(addr, ca).await;
        c.starttls(domain).await;
        let r = c.scram_sha256(user, password).await;
        assert!(r.contains("<success"), "login of {jid} failed: {r}");
        c.bind(domain, resource).await;
        c
    }

    pub async fn bind(&mut self, domain: &str, resource: &str) -> String {
        let features = self.open_stream(domain).await;
        assert!(
            features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
            "{features}"
        );
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let r = self.expect("</iq>").await;
        assert!(
            r.contains("type='result'") || r.contains("type=\"result\""),
            "bind: {r}"
        );
        let full = between(&r, "<jid>", "</jid>").to_owned();
        self.full_jid = Some(full.clone());
        full
    }

    /// Sends initial presence and waits for the server to settle it.
    pub async fn available(&mut self) {
        self.send("<presence/>").await;
        self.ping("settle").await;
    }

    /// A ping round trip to the server: everything sent before it has been processed.
    pub async fn ping(&mut self, id: &str) -> String {
        self.send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let head = self.expect(&format!("id='{id}'")).await;
        head + &self.expect_one_of(&["/>", "</iq>"]).await
    }
}

/// Where the first complete element in `buf` ends (after leading whitespace), if it is complete.
fn element_end(buf: &str) -> Option<usize> {
    let start = buf.find('<')?;
    let rest = &buf[start..];
    let name_end = rest[1..].find([' ', '>', '/'])? + 1;
    let name = &rest[1..name_end];
    let tag_end = rest.find('>')?;
    if rest[..tag_end].ends_with('/') {
        return Some(start + tag_end + 1);
    }
    let close = format!("</{name}>");
    rest.find(&close).map(|i| start + i + close.len())
}

/// The text between the first `start` and the following `end`.
pub fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let a = s.find(start).map(|i| i + start.len()).unwrap_or(0);
    let b = s[a..].find(end).map(|i| a + i).unwrap_or(s.len());
    &s[a..b]
}

/// XEP-0115 §5.1's verification string for one identity, `client/pc//raw`, and `features`.
pub fn caps_ver(features: &[&str]) -> String {
    let mut f = features.to_vec();
    f.sort();
    let mut s = "client/pc//raw<".to_owned();
    for x in f {
        s.push_str(x);
        s.push('<');
    }
    B64.encode(sha1::Sha1::digest(s.as_bytes()))
}

/// Sends presence with caps (and `extra` inside it, such as a `<status/>`) and answers the
/// server's disco#info query with `features` (advertising `ver`). `expect_query`: whether the
/// server must ask. Consumes nothing after the query, so events that follow the answer stay
/// buffered.
pub async fn caps_presence(
    c: &mut RawClient,
    ver: &str,
    features: &[&str],
    expect_query: bool,
    extra: &str,
) {
    c.send(&format!(
        "<presence>{extra}<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test:raw' ver='{ver}'/></presence>"
    ))
    .await;
    if expect_query {
        let q = c
            .expect_element(&[
                "<iq",
                "type='get'",
                "disco#info",
                &format!("node='urn:test:raw#{ver}'"),
            ])
            .await;
        // The server asks from the domain the client's stream is to.
        let (id, from) = (between(&q, "id='", "'"), between(&q, "from='", "'"));
        let mut answer = format!(
            "<iq type='result' to='{from}' id='{id}'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:test:raw#{ver}'><identity category='client' type='pc' name='raw'/>"
        );
        for f in features {
            answer.push_str(&format!("<feature var='{f}'/>"));
        }
        answer.push_str("</query></iq>");
        c.send(&answer).await;
    }
}
