//! The connection, the SDK's and the load generator's: TCP (from a chosen loopback source
//! address, for the generator), STARTTLS or direct TLS (rustls, ring), SASL (SCRAM-SHA-256,
//! SCRAM-SHA-1, PLAIN on request), resource binding, legacy session establishment where a
//! server still requires it, XEP-0198 enable, initial presence. After login a [`Connection`]
//! reads frames with [`crate::xml::Framer`] and answers the housekeeping by itself: XEP-0198
//! `<r/>`, and every IQ request (get or set) addressed to the client, whoever sends it: a
//! result for a XEP-0199 ping, the account's own block-list pushes and, once the connection
//! has [`Capabilities`], a XEP-0030 disco#info query; `service-unavailable` for the rest.

use crate::caps::{Capabilities, NS_DISCO_INFO};
use crate::scram::{KeyCache, Mechanism, ScramClient, oauthbearer_message, plain_message};
use crate::xml::{Element, Frame, Framer, XmlError, escape};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_SM: &str = "urn:xmpp:sm:3";
const NS_PING: &str = "urn:xmpp:ping";
const NS_BLOCKING: &str = "urn:xmpp:blocking";

/// Largest element accepted from the server (offline-message batches can be large).
pub const MAX_ELEMENT: usize = 4 << 20;

/// How the server's certificate is checked.
#[derive(Clone, Debug)]
pub enum Verify {
    /// Against the CA certificates in a PEM file.
    CaFile(std::path::PathBuf),
    /// Against the web's public roots (Mozilla's, from the webpki-roots crate): for servers
    /// with a certificate from a public CA.
    PublicRoots,
    /// Not at all: any certificate is accepted (handshake signatures are still checked).
    Insecure,
}

/// Everything a login needs that is the same for all connections.
#[derive(Clone)]
pub struct ClientSettings {
    pub server: SocketAddr,
    /// The XMPP domain (stream `to`, JIDs).
    pub domain: String,
    /// The name the certificate must carry (SNI).
    pub tls_name: ServerName<'static>,
    pub direct_tls: bool,
    pub tls: Arc<rustls::ClientConfig>,
    /// A mechanism to use instead of the best one offered. OAUTHBEARER is used only when
    /// asked for here; [`Login::password`] is then the token.
    pub mechanism: Option<Mechanism>,
    /// Whether PLAIN may be picked when no SCRAM mechanism is offered.
    pub allow_plain: bool,
    /// Spread connections over this many loopback source addresses (0: the kernel chooses).
    pub source_ips: u32,
    /// Enable XEP-0198 stream management after bind.
    pub stream_management: bool,
    pub login_timeout: Duration,
    pub keys: Arc<KeyCache>,
}

impl ClientSettings {
    /// The local address connection `slot` is bound to before connecting: 127.0.0.1 …
    /// 127.0.0.254, 127.0.1.1, … (the whole of 127.0.0.0/8 is loopback on Linux), so that each
    /// address has its own range of ephemeral ports. `None` when not spreading or when the
    /// server is not on IPv4 loopback.
    pub fn source_ip(&self, slot: usize) -> Option<IpAddr> {
        if self.source_ips == 0 || !matches!(self.server.ip(), IpAddr::V4(a) if a.is_loopback()) {
            return None;
        }
        let k = (slot % self.source_ips as usize) as u32;
        let n = 0x7f00_0000u32 + (k / 254) * 256 + (k % 254) + 1;
        Some(IpAddr::V4(Ipv4Addr::from(n)))
    }
}

/// A TLS client configuration: ring provider, TLS 1.2/1.3, no session resumption (each
/// benchmark connection is a new client and pays a full handshake, as the server does).
pub fn tls_config(verify: &Verify, alpn: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match verify {
        Verify::CaFile(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                anyhow::bail!("no certificate in the CA file {}", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::PublicRoots => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    if alpn {
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(Arc::new(config))
}

/// `--insecure`: accepts any server certificate. The handshake signature is still verified
/// (the server holds the certificate's key), but not who the certificate names or who signed
/// it. For benchmarks on loopback only.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Plain TCP before STARTTLS, TLS after.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a connection failed after login.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// The server closed the TCP connection or the stream.
    Closed,
    Xml(XmlError),
    /// `<stream:error>` with this condition.
    StreamError(String),
    Protocol(String),
}

impl ConnError {
    /// A short category for failure counts.
    pub fn kind(&self) -> String {
        match self {
            ConnError::Io(e) => format!("io: {}", io_kind(e)),
            ConnError::Closed => "closed by server".into(),
            ConnError::Xml(e) => format!("xml: {e}"),
            ConnError::StreamError(c) => format!("stream error: {c}"),
            ConnError::Protocol(p) => format!("protocol: {p}"),
        }
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "io: {e}"),
            _ => f.write_str(&self.kind()),
        }
    }
}

impl std::error::Error for ConnError {}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

impl From<XmlError> for ConnError {
    fn from(e: XmlError) -> Self {
        ConnError::Xml(e)
    }
}

fn io_kind(e: &io::Error) -> String {
    // A category without addresses or error numbers: the kind in words ("connection
    // refused"), or the OS message for errors std does not classify ("Too many open files").
    let text = e.to_string();
    match e.raw_os_error() {
        Some(n) => text
            .strip_suffix(&format!(" (os error {n})"))
            .unwrap_or(&text)
            .to_owned(),
        None if e.kind() == io::ErrorKind::Other => text,
        None => e.kind().to_string(),
    }
}

/// The login steps, named in failure reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Stream,
    StartTls,
    Tls,
    Sasl,
    Bind,
    Session,
    StreamManagement,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Stream => "stream",
            Stage::StartTls => "starttls",
            Stage::Tls => "tls",
            Stage::Sasl => "sasl",
            Stage::Bind => "bind",
            Stage::Session => "session",
            Stage::StreamManagement => "sm",
        })
    }
}

/// A failed login: `kind` is a short category ("sasl: not-authorized", "timeout: tls"),
/// `detail` says more.
#[derive(Debug, Clone)]
pub struct LoginError {
    pub kind: String,
    pub detail: String,
}

impl LoginError {
    fn new(kind: impl Into<String>, detail: impl Into<String>) -> LoginError {
        LoginError {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    fn at(stage: Stage, e: ConnError) -> LoginError {
        let detail = format!("{stage}: {e}");
        let kind = match &e {
            ConnError::StreamError(_) => e.kind(),
            _ => format!("{stage}: {}", e.kind()),
        };
        LoginError { kind, detail }
    }
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for LoginError {}

/// Who logs in.
#[derive(Clone, Debug)]
pub struct Login<'a> {
    pub user: &'a str,
    /// The password; with OAUTHBEARER, the bearer token.
    pub password: &'a str,
    pub resource: &'a str,
    /// Send initial presence once bound.
    pub presence: bool,
}

/// A logged-in stream.
pub struct Connection {
    io: Transport,
    framer: Framer,
    /// Bytes to send at the next [`Connection::flush`].
    pub out: Vec<u8>,
    /// The bound full JID.
    pub jid: String,
    /// The mechanism the login used.
    pub mechanism: Mechanism,
    /// Stanzas handled, when XEP-0198 is on.
    sm_handled: Option<u32>,
    /// Stanzas sent, when XEP-0198 is on: those written with [`Connection::send_stanza`] and
    /// the answers this connection gave by itself. The server's `<a h/>` counts these.
    sm_sent: Option<u32>,
    /// The count last acknowledged to the server.
    sm_acked: u32,
    /// How long an answer to the server's `<r/>` waits ([`Connection::set_ack_delay`]).
    ack_delay: Duration,
    /// Answers waiting for their time: when, and the count.
    delayed_acks: std::collections::VecDeque<(std::time::Instant, u32)>,
    /// Written to TLS but maybe not yet to the socket.
    unflushed: bool,
    /// What disco#info queries are answered with (none: `service-unavailable`).
    caps: Option<Arc<Capabilities>>,
}

/// Logs in on a new connection; `slot` picks the source address.
pub async fn login(
    settings: &ClientSettings,
    slot: usize,
    who: &Login<'_>,
) -> Result<Connection, LoginError> {
    let mut stage = Stage::Connect;
    match tokio::time::timeout(
        settings.login_timeout,
        login_steps(settings, slot, who, &mut stage),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(LoginError::new(
            format!("timeout: {stage}"),
            format!("no answer within {:?} at {stage}", settings.login_timeout),
        )),
    }
}

async fn connect_tcp(settings: &ClientSettings, slot: usize) -> io::Result<TcpStream> {
    let socket = if settings.server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = settings.source_ip(slot) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(settings.server).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn tls_handshake(settings: &ClientSettings, tcp: TcpStream) -> Result<Transport, LoginError> {
    let connector = tokio_rustls::TlsConnector::from(settings.tls.clone());
    match connector.connect(settings.tls_name.clone(), tcp).await {
        Ok(tls) => Ok(Transport::Tls(Box::new(tls))),
        Err(e) => {
            // rustls errors come wrapped in io::Error; their text is the useful category.
            let text = e
                .get_ref()
                .map(|inner| inner.to_string())
                .unwrap_or_else(|| io_kind(&e));
            Err(LoginError::new(format!("tls: {text}"), format!("tls: {e}")))
        }
    }
}

async fn login_steps(
    settings: &ClientSettings,
    slot: usize,
    who: &Login<'_>,
    stage: &mut Stage,
) -> Result<Connection, LoginError> {
    let tcp = connect_tcp(settings, slot).await.map_err(|e| {
        LoginError::new(format!("connect: {}", io_kind(&e)), format!("connect: {e}"))
    })?;
    let mut c = Connection {
        io: Transport::Plain(tcp),
        framer: Framer::new(MAX_ELEMENT),
        out: Vec::with_capacity(512),
        jid: String::new(),
        mechanism: Mechanism::ScramSha256,
        sm_handled: None,
        sm_sent: None,
        sm_acked: 0,
        ack_delay: Duration::ZERO,
        delayed_acks: std::collections::VecDeque::new(),
        unflushed: false,
        caps: None,
    };
    if settings.direct_tls {
        *stage = Stage::Tls;
        let Transport::Plain(tcp) = c.io else {
            unreachable!("a new connection is plain")
        };
        c.io = tls_handshake(settings, tcp).await?;
    }

    *stage = Stage::Stream;
    let features = c
        .open_stream(&settings.domain)
        .await
        .map_err(|e| LoginError::at(*stage, e))?;
    if !settings.direct_tls {
        *stage = Stage::StartTls;
        if c.framer.element(&features).child("starttls").is_none() {
            return Err(LoginError::new(
                "starttls: not offered",
                "the server offers no STARTTLS (credentials are never sent in clear)",
            ));
        }
        c.out
            .extend_from_slice(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes());
        c.flush().await.map_err(|e| LoginError::at(*stage, e))?;
        let r = c
            .next_element()
            .await
            .map_err(|e| LoginError::at(*stage, e))?;
        if !c.framer.element(&r).is("proceed") {
            return Err(LoginError::new(
                "starttls: refused",
                format!("starttls: {}", c.describe(&r)),
            ));
        }
        *stage = Stage::Tls;
        let Transport::Plain(tcp) = c.io else {
            return Err(LoginError::new("starttls: twice", "TLS already on"));
        };
        c.io = tls_handshake(settings, tcp).await?;
        c.framer.restart();
        *stage = Stage::Stream;
        let f = c
            .open_stream(&settings.domain)
            .await
            .map_err(|e| LoginError::at(*stage, e))?;
        return finish_login(settings, who, stage, c, f).await;
    }
    finish_login(settings, who, stage, c, features).await
}

/// SASL, bind, session, SM and presence on a TLS stream whose features are at `features`.
async fn finish_login(
    settings: &ClientSettings,
    who: &Login<'_>,
    stage: &mut Stage,
    mut c: Connection,
    features: Range<usize>,
) -> Result<Connection, LoginError> {
    *stage = Stage::Sasl;
    let offered: Vec<Mechanism> = c
        .framer
        .element(&features)
        .child("mechanisms")
        .map(|m| {
            m.children()
                .filter(|c| c.is("mechanism"))
                .filter_map(|c| Mechanism::from_name(c.text().trim()))
                .collect()
        })
        .unwrap_or_default();
    let mechanism = match settings.mechanism {
        Some(m) if offered.contains(&m) => m,
        Some(m) => {
            return Err(LoginError::new(
                format!("sasl: {m} not offered"),
                format!("sasl: {m} not offered (offered: {offered:?})"),
            ));
        }
        None => offered
            .iter()
            .copied()
            .filter(|m| *m != Mechanism::Plain || settings.allow_plain)
            .filter(|m| *m != Mechanism::OAuthBearer)
            .max()
            .ok_or_else(|| {
                LoginError::new(
                    "sasl: no usable mechanism",
                    format!(
                        "sasl: no usable mechanism among {offered:?} (PLAIN needs --allow-plain)"
                    ),
                )
            })?,
    };
    c.mechanism = mechanism;
    c.authenticate(settings, who, mechanism).await?;

    c.framer.restart();
    *stage = Stage::Bind;
    let features = c
        .open_stream(&settings.domain)
        .await
        .map_err(|e| LoginError::at(*stage, e))?;
    let (needs_session, offers_sm) = {
        let f = c.framer.element(&features);
        if f.child("bind").is_none() {
            return Err(LoginError::new(
                "bind: not offered",
                "no <bind/> after SASL",
            ));
        }
        let needs_session = f
            .child("session")
            .is_some_and(|s| s.child("optional").is_none());
        let offers_sm = f
            .children()
            .any(|c| c.is("sm") && c.attr("xmlns").as_deref() == Some(NS_SM));
        (needs_session, offers_sm)
    };
    c.out.extend_from_slice(
        format!(
            "<iq type='set' id='bind_1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
            escape(who.resource)
        )
        .as_bytes(),
    );
    c.flush().await.map_err(|e| LoginError::at(*stage, e))?;
    let r = c
        .iq_answer("bind_1")
        .await
        .map_err(|e| LoginError::at(*stage, e))?;
    {
        let iq = c.framer.element(&r);
        if iq.attr("type").as_deref() != Some("result") {
            return Err(LoginError::new(
                format!("bind: {}", iq.error_condition()),
                format!("bind: {}", c.describe(&r)),
            ));
        }
        c.jid = iq
            .child("bind")
            .and_then(|b| b.child("jid"))
            .map(|j| j.text().into_owned())
            .unwrap_or_default();
    }

    if needs_session {
        *stage = Stage::Session;
        c.out.extend_from_slice(
            format!("<iq type='set' id='sess_1'><session xmlns='{NS_SESSION}'/></iq>").as_bytes(),
        );
        c.flush().await.map_err(|e| LoginError::at(*stage, e))?;
        let r = c
            .iq_answer("sess_1")
            .await
            .map_err(|e| LoginError::at(*stage, e))?;
        let iq = c.framer.element(&r);
        if iq.attr("type").as_deref() != Some("result") {
            return Err(LoginError::new(
                format!("session: {}", iq.error_condition()),
                format!("session: {}", c.describe(&r)),
            ));
        }
    }

    if settings.stream_management {
        *stage = Stage::StreamManagement;
        if !offers_sm {
            return Err(LoginError::new(
                "sm: not offered",
                "XEP-0198 is not offered",
            ));
        }
        c.out
            .extend_from_slice(format!("<enable xmlns='{NS_SM}'/>").as_bytes());
        c.flush().await.map_err(|e| LoginError::at(*stage, e))?;
        let r = c
            .next_element()
            .await
            .map_err(|e| LoginError::at(*stage, e))?;
        let el = c.framer.element(&r);
        if !el.is("enabled") {
            return Err(LoginError::new(
                format!("sm: {}", el.error_condition()),
                format!("sm: {}", c.describe(&r)),
            ));
        }
        c.sm_handled = Some(0);
        c.sm_sent = Some(0);
    }

    if who.presence {
        c.send_stanza(b"<presence/>");
        c.flush().await.map_err(|e| LoginError::at(*stage, e))?;
    }
    Ok(c)
}

impl Connection {
    /// SASL with `mechanism`; on success the stream must be restarted.
    async fn authenticate(
        &mut self,
        settings: &ClientSettings,
        who: &Login<'_>,
        mechanism: Mechanism,
    ) -> Result<(), LoginError> {
        let stage = Stage::Sasl;
        let fail = |e: ConnError| LoginError::at(stage, e);
        let mut scram = None;
        let initial = if mechanism == Mechanism::Plain {
            plain_message(who.user, who.password)
        } else if mechanism == Mechanism::OAuthBearer {
            oauthbearer_message(who.password)
        } else {
            let s = ScramClient::new(
                mechanism,
                who.user,
                who.password,
                &ScramClient::random_nonce(),
            )
            .map_err(|e| LoginError::new("sasl: client", format!("sasl: {e}")))?;
            let first = s.client_first().into_bytes();
            scram = Some(s);
            first
        };
        self.out.extend_from_slice(
            format!(
                "<auth xmlns='{NS_SASL}' mechanism='{}'>{}</auth>",
                mechanism.name(),
                B64.encode(initial)
            )
            .as_bytes(),
        );
        self.flush().await.map_err(fail)?;
        let mut verified = false;
        // OAUTHBEARER's error status, said before the failure.
        let mut status = String::new();
        loop {
            let r = self.next_element().await.map_err(fail)?;
            let el = self.framer.element(&r);
            let data = || {
                B64.decode(el.text().as_bytes())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| {
                        LoginError::new(
                            "sasl: bad encoding",
                            "sasl: server data is not base64 UTF-8",
                        )
                    })
            };
            let local = el.local_name();
            if local == b"failure" {
                return Err(LoginError::new(
                    format!("sasl: {}", el.first_child_name()),
                    format!("sasl ({mechanism}): {}{status}", self.describe(&r)),
                ));
            }
            let is_success = local == b"success";
            if !is_success && local != b"challenge" {
                return Err(LoginError::new(
                    "sasl: unexpected element",
                    format!("sasl: unexpected {}", self.describe(&r)),
                ));
            }
            let Some(s) = scram.as_mut() else {
                if is_success {
                    return Ok(());
                }
                if mechanism == Mechanism::OAuthBearer {
                    status = format!(" (status {})", data().unwrap_or_default());
                    // An error status (RFC 7628 §3.2.2): the client's answer is a single
                    // %x01, and the server's <failure/> follows.
                    self.out.extend_from_slice(
                        format!(
                            "<response xmlns='{NS_SASL}'>{}</response>",
                            B64.encode([1u8])
                        )
                        .as_bytes(),
                    );
                    self.flush().await.map_err(fail)?;
                    continue;
                }
                return Err(LoginError::new(
                    "sasl: unexpected challenge",
                    "PLAIN got a challenge",
                ));
            };
            let text = data()?;
            let sasl_err = |e: crate::scram::SaslError| {
                LoginError::new(format!("sasl: {e}"), format!("sasl ({mechanism}): {e}"))
            };
            if is_success {
                if !text.is_empty() {
                    s.verify_server_final(&text).map_err(sasl_err)?;
                    verified = true;
                }
                if !verified {
                    return Err(LoginError::new(
                        "sasl: no server signature",
                        "success without the server's signature",
                    ));
                }
                return Ok(());
            }
            let reply = if text.starts_with("v=") || text.starts_with("e=") {
                // Old servers send server-final in a challenge; the answer is empty.
                s.verify_server_final(&text).map_err(sasl_err)?;
                verified = true;
                String::new()
            } else {
                B64.encode(
                    s.client_final(&text, Some(&settings.keys))
                        .map_err(sasl_err)?,
                )
            };
            self.out.extend_from_slice(
                format!("<response xmlns='{NS_SASL}'>{reply}</response>").as_bytes(),
            );
            self.flush().await.map_err(fail)?;
        }
    }

    /// Sends a stream header and returns the features that follow.
    async fn open_stream(&mut self, domain: &str) -> Result<Range<usize>, ConnError> {
        self.out.extend_from_slice(
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
                escape(domain)
            )
            .as_bytes(),
        );
        self.flush().await?;
        let f = self.next_element().await?;
        if !self.framer.element(&f).is("features") {
            return Err(ConnError::Protocol(format!(
                "expected features, got {}",
                self.describe(&f)
            )));
        }
        Ok(f)
    }

    /// The next element for the caller, once the housekeeping is done: XEP-0198 counts and
    /// ack requests, IQ requests from the server answered, stream headers skipped, a stream
    /// error or the stream's end turned into an error. `None`: more bytes are needed.
    fn next_ready(&mut self) -> Result<Option<Range<usize>>, ConnError> {
        while let Some(frame) = self.framer.next_frame()? {
            let r = match frame {
                Frame::Element(r) => r,
                Frame::StreamClose => return Err(ConnError::Closed),
                Frame::StreamOpen(_) => continue,
            };
            let el = self.framer.element(&r);
            match el.local_name() {
                b"message" | b"presence" => {
                    if let Some(h) = &mut self.sm_handled {
                        *h = h.wrapping_add(1);
                    }
                }
                b"iq" => {
                    if let Some(h) = &mut self.sm_handled {
                        *h = h.wrapping_add(1);
                    }
                    let ty = el.attr_raw("type").unwrap_or_default();
                    if ty == b"get" || ty == b"set" {
                        answer_iq(&el, &self.jid, self.caps.as_deref(), &mut self.out);
                        if let Some(n) = &mut self.sm_sent {
                            *n = n.wrapping_add(1);
                        }
                        continue;
                    }
                }
                b"r" => {
                    if let Some(h) = self.sm_handled {
                        if self.ack_delay.is_zero() {
                            self.sm_acked = h;
                            self.out.extend_from_slice(
                                format!("<a xmlns='{NS_SM}' h='{h}'/>").as_bytes(),
                            );
                        } else {
                            self.delayed_acks
                                .push_back((std::time::Instant::now() + self.ack_delay, h));
                        }
                        continue;
                    }
                }
                // A top-level <error/> is a stream error (stanza errors are inside stanzas).
                b"error" => return Err(ConnError::StreamError(el.error_condition().to_owned())),
                _ => {}
            }
            return Ok(Some(r));
        }
        Ok(None)
    }

    /// The next element (see [`Connection::next_ready`]), reading as needed.
    async fn next_element(&mut self) -> Result<Range<usize>, ConnError> {
        loop {
            if let Some(r) = self.next_ready()? {
                return Ok(r);
            }
            let n = self.io.read_buf(self.framer.read_buf()).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// A ping round trip to the server: once answered, the server has processed everything
    /// sent before it. Elements arriving meanwhile are skipped.
    pub async fn sync(&mut self) -> Result<(), ConnError> {
        self.out.extend_from_slice(
            format!("<iq type='get' id='sync_1'><ping xmlns='{NS_PING}'/></iq>").as_bytes(),
        );
        self.flush().await?;
        self.iq_answer("sync_1").await.map(|_| ())
    }

    /// The answer to the IQ with `id`, other elements skipped.
    async fn iq_answer(&mut self, id: &str) -> Result<Range<usize>, ConnError> {
        loop {
            let r = self.next_element().await?;
            let el = self.framer.element(&r);
            if el.is("iq") && el.attr("id").as_deref() == Some(id) {
                return Ok(r);
            }
        }
    }

    /// An element, shortened, for error messages.
    fn describe(&self, r: &Range<usize>) -> String {
        let raw = self.framer.element(r).raw();
        let s = String::from_utf8_lossy(&raw[..raw.len().min(300)]);
        s.into_owned()
    }

    /// Waits for bytes from the server. Cancel-safe (nothing is lost when another branch of
    /// a `select!` wins).
    pub async fn fill(&mut self) -> Result<(), ConnError> {
        let n = self.io.read_buf(self.framer.read_buf()).await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    /// Hands each complete element received so far to `f`, which may queue bytes to send in
    /// `out`; the housekeeping of `next_ready` is done first.
    pub fn process(
        &mut self,
        mut f: impl FnMut(Element<'_>, &mut Vec<u8>),
    ) -> Result<(), ConnError> {
        while let Some(r) = self.next_ready()? {
            f(self.framer.element(&r), &mut self.out);
        }
        Ok(())
    }

    /// Waits for bytes from the server while writing `out` as the socket takes it: for loops
    /// that queue output without waiting for it to be written (else, with a slow server,
    /// both sides could wait on each other's full buffers). Ready when bytes arrived.
    /// Cancel-safe: what was written stays written, what was read stays read.
    pub async fn pump(&mut self) -> Result<(), ConnError> {
        std::future::poll_fn(|cx| self.poll_pump(cx)).await
    }

    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        // Written as far as the socket takes it (the rest waits for the next poll).
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        // Read straight into the buffer's spare room: tokio's `read_buf` fills a `Vec`'s
        // uninitialized capacity, which this crate could not do without `unsafe`. (Zeroing a
        // window first, as before, cost a 16 KiB memset on every poll, most of them finding
        // nothing to read: 3 % of the generator's CPU at 128,000 msg/s.) The future is made
        // afresh each poll; dropping it unfinished loses nothing.
        let read = std::pin::pin!(self.io.read_buf(self.framer.read_buf()));
        match read.poll(cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(ConnError::Closed)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Queues a stanza (counted for XEP-0198; bytes written straight to `out` are not).
    pub fn send_stanza(&mut self, stanza: &[u8]) {
        self.out.extend_from_slice(stanza);
        if let Some(n) = &mut self.sm_sent {
            *n = n.wrapping_add(1);
        }
    }

    /// Queues an XEP-0198 acknowledgement of every stanza received so far (unasked: §4 allows
    /// it at any time), so that the server can let go of them; nothing without stream
    /// management, or when nothing arrived since the last one.
    pub fn ack(&mut self) {
        if let Some(h) = self.sm_handled.filter(|h| *h != self.sm_acked) {
            self.sm_acked = h;
            self.out
                .extend_from_slice(format!("<a xmlns='{NS_SM}' h='{h}'/>").as_bytes());
        }
    }

    /// Answers the server's ack requests (XEP-0198 `<r/>`) `delay` after they came instead of
    /// at once, as a client on a slow network does (its answer reaches the server a round
    /// trip after the request left it): for measuring what a server does for such clients
    /// on a fast network. The caller writes them when due ([`Connection::ack_due`],
    /// [`Connection::send_due_acks`]).
    pub fn set_ack_delay(&mut self, delay: Duration) {
        self.ack_delay = delay;
    }

    /// When the next delayed answer to an ack request is due, if one waits.
    pub fn ack_due(&self) -> Option<std::time::Instant> {
        self.delayed_acks.front().map(|(at, _)| *at)
    }

    /// Queues the delayed answers due by `now` (one `<a/>`: the counts only grow).
    pub fn send_due_acks(&mut self, now: std::time::Instant) {
        let mut last = None;
        while let Some(&(at, h)) = self.delayed_acks.front() {
            if at > now {
                break;
            }
            self.delayed_acks.pop_front();
            last = Some(h);
        }
        // Never backwards (an unasked `ack` may have counted further meanwhile).
        if let Some(h) = last
            && (h.wrapping_sub(self.sm_acked) as i32) > 0
        {
            self.sm_acked = h;
            self.out
                .extend_from_slice(format!("<a xmlns='{NS_SM}' h='{h}'/>").as_bytes());
        }
    }

    /// Has disco#info queries (XEP-0030) answered with `caps`, the identity and features the
    /// client advertises in its presence (XEP-0115), from now on.
    pub fn set_capabilities(&mut self, caps: Arc<Capabilities>) {
        self.caps = Some(caps);
    }

    /// Writes as much of `out` as the socket takes now, without waiting: for the answers
    /// [`Connection::process`] queued, so that they leave at once rather than with the next
    /// write.
    pub fn write_ready(&mut self) -> Result<(), ConnError> {
        match self.poll_write_out(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Writes what is queued in `out`. Cancel-safe, unlike [`Connection::flush`]: what was
    /// written is taken out of `out` as it goes.
    pub async fn write_out(&mut self) -> Result<(), ConnError> {
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Writes `out` (taking out what is written) and flushes: ready once all of it is, pending
    /// while the socket takes no more.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        while !self.out.is_empty() || self.unflushed {
            let io = Pin::new(&mut self.io);
            if self.out.is_empty() {
                match io.poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match io.poll_write(cx, &self.out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.out.drain(..n);
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Stanzas sent so far, when XEP-0198 is on: once the server's `<a h/>` reaches this
    /// count, it has taken responsibility for all of them.
    pub fn sm_sent(&self) -> Option<u32> {
        self.sm_sent
    }

    /// Sends what is queued in `out`.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() && !self.unflushed {
            return Ok(());
        }
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.out.clear();
        self.unflushed = false;
        Ok(())
    }

    /// Lets go of the read buffer's memory when nothing is pending.
    pub fn shrink(&mut self) {
        self.framer.shrink();
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// Ends the stream politely: `</stream:stream>`, then waits (up to `wait`) for the
    /// server to close its side.
    pub async fn close(mut self, wait: Duration) {
        self.out.extend_from_slice(b"</stream:stream>");
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(wait, async {
            loop {
                match self.framer.next_frame() {
                    Ok(Some(Frame::StreamClose)) | Err(_) => break,
                    Ok(Some(_)) => {}
                    Ok(None) => match self.io.read_buf(self.framer.read_buf()).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                }
            }
            let _ = self.io.shutdown().await;
        })
        .await;
    }
}

/// The answer to an IQ request (get or set) addressed to this client, from whoever sent it
/// (RFC 6120 §8.2.3: every request gets one): a result for a ping (XEP-0199), for the
/// account's own block-list pushes (XEP-0191 §3.3, from the account itself or the server;
/// `bound` is this stream's full JID), and for a disco#info query (XEP-0030) when `caps` says
/// what to answer, for the entity or its caps node (`item-not-found` for another node); else
/// `service-unavailable`.
fn answer_iq(iq: &Element<'_>, bound: &str, caps: Option<&Capabilities>, out: &mut Vec<u8>) {
    let id = iq.attr("id").unwrap_or_default();
    let from = iq.attr("from");
    let to = from
        .as_deref()
        .map(|f| format!(" to='{}'", escape(f)))
        .unwrap_or_default();
    let id = escape(&id);
    let own_bare = bound.split('/').next().unwrap_or(bound);
    let get = iq.attr_raw("type") == Some(b"get");
    // A request has exactly one child (RFC 6120 §8.2.3): what it asks.
    let mut children = iq.children();
    let payload = children.next().filter(|_| children.next().is_none());
    let ns = payload.as_ref().and_then(|p| p.attr("xmlns"));
    let is = |name: &str, namespace: &str| {
        payload.as_ref().is_some_and(|p| p.is(name)) && ns.as_deref() == Some(namespace)
    };
    let error = |condition: &str| {
        format!(
            "<iq type='error' id='{id}'{to}><error type='cancel'><{condition} \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )
    };
    let block_push = !get
        && from
            .as_deref()
            .is_none_or(|f| f.eq_ignore_ascii_case(own_bare))
        && (is("block", NS_BLOCKING) || is("unblock", NS_BLOCKING));
    let answer = if block_push || (get && is("ping", NS_PING)) {
        format!("<iq type='result' id='{id}'{to}/>")
    } else if let Some(caps) = caps.filter(|_| get && is("query", NS_DISCO_INFO)) {
        let node = payload.as_ref().and_then(|p| p.attr("node"));
        if caps.answers_node(node.as_deref()) {
            format!(
                "<iq type='result' id='{id}'{to}>{}</iq>",
                caps.info_query(node.as_deref())
            )
        } else {
            error("item-not-found")
        }
    } else {
        error("service-unavailable")
    };
    out.extend_from_slice(answer.as_bytes());
}

/// How certificates are checked, in words.
pub fn describe_verify(v: &Verify) -> String {
    match v {
        Verify::CaFile(p) => format!("CA file {}", Path::new(p).display()),
        Verify::PublicRoots => "the public CAs (webpki-roots)".into(),
        Verify::Insecure => "INSECURE: server certificate not verified".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_spread_over_loopback() {
        let settings = |n: u32, server: &str| ClientSettings {
            server: server.parse().unwrap(),
            domain: "localhost".into(),
            tls_name: ServerName::try_from("localhost").unwrap(),
            direct_tls: false,
            tls: tls_config(&Verify::Insecure, false).unwrap(),
            mechanism: None,
            allow_plain: false,
            source_ips: n,
            stream_management: false,
            login_timeout: Duration::from_secs(1),
            keys: Arc::new(KeyCache::new()),
        };
        let s = settings(300, "127.0.0.1:5222");
        assert_eq!(s.source_ip(0), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(s.source_ip(253), Some("127.0.0.254".parse().unwrap()));
        assert_eq!(s.source_ip(254), Some("127.0.1.1".parse().unwrap()));
        assert_eq!(s.source_ip(300), Some("127.0.0.1".parse().unwrap()));
        let all: std::collections::HashSet<_> = (0..300).map(|i| s.source_ip(i)).collect();
        assert_eq!(all.len(), 300);
        assert_eq!(settings(0, "127.0.0.1:5222").source_ip(5), None);
        assert_eq!(settings(8, "[::1]:5222").source_ip(5), None);
        assert_eq!(settings(8, "10.0.0.1:5222").source_ip(5), None);
    }

    #[test]
    fn io_errors_become_categories() {
        assert_eq!(
            io_kind(&io::Error::from_raw_os_error(24)),
            "Too many open files"
        );
        assert_eq!(
            io_kind(&io::Error::from(io::ErrorKind::TimedOut)),
            "timed out"
        );
    }

    #[test]
    fn answers_server_iqs() {
        let mut out = Vec::new();
        let ping = Element::parse(
            b"<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .unwrap();
        answer_iq(&ping, "u@localhost/r", None, &mut out);
        assert_eq!(out, b"<iq type='result' id='p1' to='localhost'/>");
        out.clear();
        let other =
            Element::parse(b"<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>")
                .unwrap();
        answer_iq(&other, "u@localhost/r", None, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("<iq type='error' id='v'>") && s.contains("service-unavailable"));
    }

    #[test]
    fn answers_disco_info_with_its_capabilities() {
        let caps = Capabilities::new(
            "urn:example:app",
            vec![crate::caps::Identity {
                category: "client".into(),
                kind: "pc".into(),
                lang: None,
                name: "App".into(),
            }],
            &[NS_DISCO_INFO, NS_PING, "urn:x:devices+notify"],
        );
        let answer = |xml: &str, caps: Option<&Capabilities>| {
            let mut out = Vec::new();
            answer_iq(
                &Element::parse(xml.as_bytes()).unwrap(),
                "u@localhost/r",
                caps,
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        let features = |answer: &str| -> Vec<String> {
            let el = Element::parse(answer.as_bytes()).unwrap();
            el.child("query")
                .map(|q| crate::caps::features_of(&q))
                .unwrap_or_default()
        };
        // The entity, and its caps node: the same identity and features.
        let plain = answer(
            "<iq type='get' id='d1' from='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            Some(&caps),
        );
        assert!(
            plain.starts_with("<iq type='result' id='d1' to='localhost'><query"),
            "{plain}"
        );
        assert!(plain.contains("<identity category='client' type='pc' name='App'/>"));
        assert_eq!(
            features(&plain),
            [NS_DISCO_INFO, "urn:x:devices+notify", NS_PING]
        );
        let node = format!("urn:example:app#{}", caps.ver());
        let by_node = answer(
            &format!(
                "<iq type='get' id='d2' from='bob@x/y'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/></iq>"
            ),
            Some(&caps),
        );
        assert!(by_node.contains(&format!("node='{node}'")), "{by_node}");
        assert_eq!(features(&by_node), features(&plain));
        // Another node does not exist.
        let other = answer(
            "<iq type='get' id='d3' from='bob@x/y'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:example:app#old'/></iq>",
            Some(&caps),
        );
        assert!(
            other.starts_with("<iq type='error' id='d3' to='bob@x/y'>")
                && other.contains("<item-not-found"),
            "{other}"
        );
        // Without capabilities, a set, a ping set, or two payloads: not understood.
        for (xml, caps) in [
            (
                "<iq type='get' id='e1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
                None,
            ),
            (
                "<iq type='set' id='e1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
                Some(&caps),
            ),
            (
                "<iq type='set' id='e1'><ping xmlns='urn:xmpp:ping'/></iq>",
                Some(&caps),
            ),
            (
                "<iq type='get' id='e1'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>",
                Some(&caps),
            ),
            (
                "<iq type='get' id='e1'><ping xmlns='urn:example:not-ping'/></iq>",
                Some(&caps),
            ),
        ] {
            let a = answer(xml, caps);
            assert!(
                a.starts_with("<iq type='error' id='e1'><error type='cancel'><service-unavailable"),
                "{xml}: {a}"
            );
        }
    }

    #[test]
    fn acknowledges_the_accounts_own_block_list_pushes_only() {
        let answer = |xml: &str| {
            let mut out = Vec::new();
            answer_iq(
                &Element::parse(xml.as_bytes()).unwrap(),
                "U@localhost/r",
                None,
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            answer(
                "<iq type='set' id='b1' from='u@localhost' to='u@localhost/r'>                 <block xmlns='urn:xmpp:blocking'><item jid='eve@x'/></block></iq>"
            ),
            "<iq type='result' id='b1' to='u@localhost'/>"
        );
        assert_eq!(
            answer("<iq type='set' id='b2'><unblock xmlns='urn:xmpp:blocking'/></iq>"),
            "<iq type='result' id='b2'/>"
        );
        // From anyone else it is no push.
        let forged = answer(
            "<iq type='set' id='b3' from='eve@x/r'><unblock xmlns='urn:xmpp:blocking'/></iq>",
        );
        assert!(forged.contains("service-unavailable"), "{forged}");
    }
}
