//! `strait proxy`: what a provider runs between its apps and a Strait platform
//! (docs/interop.md, "Proxies").
//!
//! The provider's apps connect to the proxy with direct TLS (XEP-0368) or STARTTLS under the
//! provider's domain (for STARTTLS the proxy answers the stream's opening itself, with
//! STARTTLS required, and relays from the TLS handshake on); for each app connection the proxy opens one connection to the platform's direct-TLS
//! port, presents the proxy's client certificate (whose public key the provider registered as
//! a pin), and relays the XMPP stream both ways, unchanged and unread: the stream inside is the
//! app's own (its login with the provider's token, its end-to-end encrypted messages). One
//! upstream connection per app connection, opened and closed with it, as WhatsApp's reference
//! offer asks of proxies.
//!
//! What the proxy does not do: forward the app's IP address. The platform sees the proxy's
//! address only; that is the point of running one for a provider that keeps its users'
//! addresses to itself.
#![forbid(unsafe_code)]

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// ALPN for client-to-server XMPP over direct TLS (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";
/// A TLS handshake or an upstream connection that takes longer is given up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: no certificate in the PEM file")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key in the PEM file")]
    NoKey(PathBuf),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("--listen or --listen-starttls needs at least one address")]
    NoListener,
}

/// The proxy's settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the provider's apps connect with direct TLS.
    pub listen: Vec<SocketAddr>,
    /// Where they connect with STARTTLS (RFC 6120 §5; the usual port is 5222).
    pub listen_starttls: Vec<SocketAddr>,
    /// The certificate chain (PEM) and key the proxy presents to the apps: for the provider's
    /// domain, the name the apps open their streams to.
    pub app_cert: PathBuf,
    pub app_key: PathBuf,
    /// The platform's direct-TLS address, `host:port`.
    pub upstream: String,
    /// The CA certificates (PEM) the platform's certificate is checked against.
    pub upstream_ca: PathBuf,
    /// The name the platform's certificate must carry; by default the name the app asked for
    /// (its SNI: the provider's domain, which the platform serves on the provider's behalf).
    pub upstream_name: Option<String>,
    /// The proxy's client certificate and key toward the platform; the provider registers the
    /// pin of this key (`strait proxy pin`).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Most app connections at once; more wait for a free place.
    pub max_connections: usize,
}

fn read(path: &Path) -> Result<Vec<u8>, ProxyError> {
    std::fs::read(path).map_err(|source| ProxyError::Io {
        path: path.into(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let pem = read(path)?;
    let v: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| ProxyError::Io {
            path: path.into(),
            source,
        })?;
    if v.is_empty() {
        return Err(ProxyError::NoCertificate(path.into()));
    }
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, ProxyError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| ProxyError::Io {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| ProxyError::NoKey(path.into()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS settings of both sides.
fn tls(
    config: &ProxyConfig,
) -> Result<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector), ProxyError> {
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs(&config.app_cert)?, key(&config.app_key)?)?;
    server.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&config.upstream_ca)? {
        roots.add(c)?;
    }
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&config.client_cert)?, key(&config.client_key)?)?;
    client.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    ))
}

/// A running proxy.
pub struct Proxy {
    local: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Loads the certificates, binds the listeners and starts relaying.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        if config.listen.is_empty() && config.listen_starttls.is_empty() {
            return Err(ProxyError::NoListener);
        }
        let (acceptor, connector) = tls(&config)?;
        let (shutdown, stop) = watch::channel(false);
        let places = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let shared = Arc::new(Shared {
            acceptor,
            connector,
            upstream: config.upstream.clone(),
            upstream_name: config.upstream_name.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut local = Vec::new();
        let listeners = config
            .listen
            .iter()
            .map(|a| (a, false))
            .chain(config.listen_starttls.iter().map(|a| (a, true)));
        for (addr, starttls) in listeners {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Listen {
                    addr: *addr,
                    source,
                })?;
            let bound = l.local_addr().map_err(|source| ProxyError::Listen {
                addr: *addr,
                source,
            })?;
            tracing::info!(%bound, starttls, upstream = %config.upstream, "proxy listening");
            local.push(bound);
            tasks.spawn(accept_loop(
                l,
                starttls,
                shared.clone(),
                places.clone(),
                stop.clone(),
            ));
        }
        Ok(Proxy {
            local,
            shutdown,
            tasks,
        })
    }

    /// The bound listener addresses: the direct-TLS ones, then the STARTTLS ones.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Stops accepting and closes every relayed connection.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until the listeners fail (they do not, short of a shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Shared {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    upstream: String,
    upstream_name: Option<String>,
}

async fn accept_loop(
    l: TcpListener,
    starttls: bool,
    shared: Arc<Shared>,
    places: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut relays = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = places.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        relays.spawn(async move {
            if let Err(e) = relay(tcp, starttls, &shared, stop).await {
                tracing::info!(%peer, "relay ended: {e}");
            }
            drop(permit);
        });
        // Reap what has finished, so the set does not grow with the proxy's lifetime.
        while relays.try_join_next().is_some() {}
    }
    relays.shutdown().await;
}

/// One app connection: TLS with the app (after the STARTTLS exchange, on a STARTTLS
/// listener), one TLS connection to the platform, bytes both ways until either side closes.
async fn relay(
    mut tcp: TcpStream,
    starttls: bool,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let timed = |what: &'static str| move |_| io::Error::new(io::ErrorKind::TimedOut, what);
    let stream_to = match starttls {
        true => Some(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate_starttls(&mut tcp))
                .await
                .map_err(timed("the app's STARTTLS exchange timed out"))??,
        ),
        false => None,
    };
    let mut app = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(tcp))
        .await
        .map_err(timed("the app's TLS handshake timed out"))??;
    let sni = app.get_ref().1.server_name().map(str::to_owned);
    let name = shared
        .upstream_name
        .clone()
        .or(sni)
        .or(stream_to)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the app sent no server name (SNI)",
            )
        })?;
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let up = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = TcpStream::connect(&shared.upstream).await?;
        let _ = tcp.set_nodelay(true);
        shared.connector.connect(server_name, tcp).await
    })
    .await
    .map_err(timed("the platform did not answer in time"))?;
    let mut up = match up {
        Ok(up) => up,
        Err(e) => {
            // The app learns that the platform is out of reach the way a client would.
            use tokio::io::AsyncWriteExt;
            let _ = app.shutdown().await;
            return Err(e);
        }
    };
    tracing::debug!(%name, "relaying");
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut app, &mut up) => r.map(|_| ()),
        _ = stop.changed() => Ok(()),
    }
}

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

/// The plaintext part of a STARTTLS connection (RFC 6120 §5.4), answered by the proxy itself:
/// the app's stream header, features that require STARTTLS, the app's `<starttls/>`, and
/// `<proceed/>`. Returns the domain the app opened its stream to. Anything else before TLS
/// ends the connection with a stream error; nothing of it reaches the platform.
async fn negotiate_starttls(tcp: &mut TcpStream) -> io::Result<String> {
    use strait_wire::{Event, Limits, StreamParser};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut parser = StreamParser::new(Limits::unauthenticated());
    let mut buf = [0u8; 2048];
    let mut to: Option<String> = None;
    loop {
        let event = match parser.next_event() {
            Ok(e) => e,
            Err(e) => {
                let (cond, text) = ("not-well-formed", e.to_string());
                return Err(refuse(tcp, to.is_none(), cond, &text).await);
            }
        };
        match event {
            None => {
                let n = tcp.read(&mut buf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                parser.feed(&buf[..n]);
            }
            Some(Event::StreamOpen(h)) if to.is_none() => {
                let Some(domain) = h.to.filter(|d| !d.is_empty()) else {
                    return Err(
                        refuse(tcp, true, "host-unknown", "the stream names no domain").await,
                    );
                };
                let header = format!(
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                     xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}' version='1.0'>\
                     <stream:features><starttls xmlns='{NS_TLS}'><required/></starttls></stream:features>",
                    stream_id(),
                    strait_wire::escape_attr(&domain)
                );
                tcp.write_all(header.as_bytes()).await?;
                to = Some(domain);
            }
            Some(Event::Element(st)) if st.name == "starttls" && st.ns == NS_TLS => {
                tcp.write_all(format!("<proceed xmlns='{NS_TLS}'/>").as_bytes())
                    .await?;
                // (An app that sent TLS bytes before <proceed/> fails its handshake next.)
                return to.ok_or_else(|| io::ErrorKind::InvalidData.into());
            }
            Some(_) => {
                return Err(refuse(
                    tcp,
                    to.is_none(),
                    "policy-violation",
                    "STARTTLS is required before anything else",
                )
                .await);
            }
        }
    }
}

/// Ends a pre-TLS stream with a stream error (opening a stream first if the app's was not
/// answered yet); the error to report.
async fn refuse(tcp: &mut TcpStream, open: bool, condition: &str, text: &str) -> io::Error {
    use tokio::io::AsyncWriteExt;
    let header = if open {
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    } else {
        ""
    };
    let reply = format!(
        "{header}<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{}</text></stream:error></stream:stream>",
        strait_wire::escape_text(text)
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
    let _ = tcp.shutdown().await;
    io::Error::new(io::ErrorKind::InvalidData, format!("{condition}: {text}"))
}

/// A stream id: random, unguessable.
fn stream_id() -> String {
    let mut b = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
