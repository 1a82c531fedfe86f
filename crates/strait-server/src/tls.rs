//! TLS for the listeners: certificates per served domain (configured, or signed by a local CA
//! made on first start), chosen by SNI, and the rustls configurations for STARTTLS and for
//! direct TLS (XEP-0368, ALPN `xmpp-client`).

use crate::config::Config;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// ALPN protocol id for client-to-server XMPP (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no certificate found in the PEM file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key found in the PEM file")]
    NoKey { path: PathBuf },
    #[error("certificate for {domain}: {message}")]
    Key { domain: String, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS configurations the listeners use.
#[derive(Clone)]
pub struct TlsConfigs {
    /// For STARTTLS on the plain-text port.
    pub starttls: Arc<rustls::ServerConfig>,
    /// For direct TLS, advertising ALPN `xmpp-client`.
    pub direct: Arc<rustls::ServerConfig>,
    /// For the HTTPS listeners (uploads), ALPN `http/1.1`.
    pub https: Arc<rustls::ServerConfig>,
    /// Interop links (s2s) require the peer server's certificate ([`TlsConfigs::s2s_server`]).
    links: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The certificates by name, shared by the three; domains served for providers join it
    /// while the server runs ([`TlsConfigs::add_domain`]).
    resolver: Arc<SniResolver>,
    provider: Arc<CryptoProvider>,
    /// Whether client connections are asked for a certificate ([`ProxyCertificates`]).
    client_certs: Arc<AtomicBool>,
}

impl TlsConfigs {
    /// Asks clients for a certificate from now on (`true`: some provider pins its proxies'
    /// keys) or no longer. Existing connections keep what they negotiated.
    pub fn want_client_certificates(&self, on: bool) {
        self.client_certs.store(on, Ordering::Relaxed);
    }
    /// Makes `domain` (one served on a provider's behalf) present a certificate of its own:
    /// the one configured for it in `[[tls.certificates]]`, else one the local CA signs.
    /// Blocking (file I/O, maybe key generation). `false` if it already had one.
    pub fn add_domain(&self, config: &Config, domain: &str) -> Result<bool, TlsError> {
        let name = domain.to_ascii_lowercase();
        if self
            .resolver
            .keys
            .read()
            .expect("tls lock")
            .contains_key(&name)
        {
            return Ok(false);
        }
        let (cert, key) = match config
            .tls
            .certificates
            .iter()
            .find(|c| c.domain.eq_ignore_ascii_case(domain))
        {
            Some(c) => (c.cert.clone(), c.key.clone()),
            None => {
                if !config.tls.certificates.is_empty() {
                    // Certificates are configured for the platform's own domains, so this is
                    // probably a public deployment, where a local CA's certificate fails
                    // every client's check.
                    tracing::warn!(
                        domain = %name,
                        "no certificate configured for this provider domain ([tls] certificates); serving one from the local CA"
                    );
                }
                ensure_local_certificate(&config.data_dir.join("tls"), &name)?
            }
        };
        let k = certified_key(&self.provider, &name, &cert, &key)?;
        self.resolver
            .keys
            .write()
            .expect("tls lock")
            .insert(name, k);
        Ok(true)
    }
}

/// Loads the configured certificates, makes the missing ones, and builds the rustls configs.
pub fn load(config: &Config) -> Result<TlsConfigs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut keys = HashMap::new();
    for domain in &config.domains {
        let (cert, key) = match config
            .tls
            .certificates
            .iter()
            .find(|c| c.domain.eq_ignore_ascii_case(domain))
        {
            Some(c) => (c.cert.clone(), c.key.clone()),
            None => ensure_local_certificate(&config.data_dir.join("tls"), domain)?,
        };
        keys.insert(
            domain.to_ascii_lowercase(),
            certified_key(&provider, domain, &cert, &key)?,
        );
        // The upload service's host name gets a local certificate of its own when the domain
        // has one: the domain's covers `*.<domain>`, but certificate checkers refuse a
        // wildcard right above a one-label name (`*.localhost`, the default domain).
        let local = !config
            .tls
            .certificates
            .iter()
            .any(|c| c.domain.eq_ignore_ascii_case(domain));
        if local && config.upload.active() {
            let service = crate::features::upload::Uploads::service_jid(domain);
            let (cert, key) = ensure_local_certificate(&config.data_dir.join("tls"), &service)?;
            keys.insert(
                service.clone(),
                certified_key(&provider, &service, &cert, &key)?,
            );
        }
    }
    let resolver = Arc::new(SniResolver {
        default: keys[&config.domains[0].to_ascii_lowercase()].clone(),
        keys: std::sync::RwLock::new(keys),
    });
    let client_certs = Arc::new(AtomicBool::new(false));
    let proxies: Arc<dyn rustls::server::danger::ClientCertVerifier> =
        Arc::new(ProxyCertificates {
            provider: provider.clone(),
            wanted: client_certs.clone(),
            mandatory: false,
        });
    let links: Arc<dyn rustls::server::danger::ClientCertVerifier> = Arc::new(ProxyCertificates {
        provider: provider.clone(),
        wanted: Arc::new(AtomicBool::new(true)),
        mandatory: true,
    });
    let build =
        |alpn: Vec<Vec<u8>>, extract: bool| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            // Clients may present a certificate (a provider's proxy does) on the XMPP
            // listeners; HTTPS asks for none.
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?;
            let builder = if extract {
                builder.with_client_cert_verifier(proxies.clone())
            } else {
                builder.with_no_client_auth()
            };
            let mut c = builder.with_cert_resolver(resolver.clone());
            c.alpn_protocols = alpn;
            // The transport takes an established TLS 1.3 session over from rustls with its
            // traffic keys (net/tls13.rs); the keys never leave the process.
            c.enable_secret_extraction = extract;
            Ok(Arc::new(c))
        };
    Ok(TlsConfigs {
        starttls: build(Vec::new(), true)?,
        direct: build(vec![ALPN_XMPP_CLIENT.to_vec()], true)?,
        https: build(vec![b"http/1.1".to_vec()], false)?,
        links,
        resolver,
        provider,
        client_certs,
    })
}

fn certified_key(
    provider: &CryptoProvider,
    domain: &str,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    let cert_pem = std::fs::read(cert).map_err(io(cert))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.into() });
    }
    let key_pem = std::fs::read(key).map_err(io(key))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(io(key))?
        .ok_or_else(|| TlsError::NoKey { path: key.into() })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key {
            domain: domain.into(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Picks the certificate by SNI: the name's own, else its parent domain's (a service such as
/// `upload.<domain>` is served with its domain's certificate, which the local CA makes for
/// `*.<domain>` too); clients that send none (or an unknown name) get the first domain's, so
/// that a plain `openssl s_client` still completes a handshake.
#[derive(Debug)]
struct SniResolver {
    keys: std::sync::RwLock<HashMap<String, Arc<CertifiedKey>>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.read().expect("tls lock");
        let by_name = hello.server_name().and_then(|n| {
            let n = n.to_ascii_lowercase();
            keys.get(&n)
                .or_else(|| n.split_once('.').and_then(|(_, parent)| keys.get(parent)))
        });
        Some(by_name.unwrap_or(&self.default).clone())
    }
}

/// The handshake-signature half of a certificate verifier, the same for both kinds here
/// (clients' and link peers' certificates, servers' on links): rustls's own checks with the
/// crypto provider's algorithms, so that the peer is proven to hold the certificate's key.
macro_rules! verify_signatures_with_provider {
    () => {
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
                &self.provider.signature_verification_algorithms,
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
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Client certificates on the XMPP listeners: optional, and not checked against any CA. A
/// provider's proxy presents one whose public key the provider registered (its pin,
/// [`spki_pin`]); the interop layer compares the pin when the proxy logs a user in
/// (docs/interop.md). rustls still checks that the client holds the certificate's key (the
/// handshake signature). Clients are asked for one only while some provider pins keys, so
/// that ordinary handshakes stay as they were.
#[derive(Debug)]
struct ProxyCertificates {
    provider: Arc<CryptoProvider>,
    wanted: Arc<AtomicBool>,
    /// Interop links: a peer server without a certificate is refused in the handshake.
    mandatory: bool,
}

impl rustls::server::danger::ClientCertVerifier for ProxyCertificates {
    fn offer_client_auth(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Pinned, not chained: the pin is checked where it matters (enlistment).
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    verify_signatures_with_provider!();
}

impl TlsConfigs {
    /// The server side of an interop link's STARTTLS on a stream to `domain`: the peer server
    /// must present a certificate (its pin is checked against its provider's afterwards,
    /// [`crate::s2s`]); the platform presents `domain`'s certificate when the peer sends no
    /// server name (Prosody sends none on s2s STARTTLS: the stream header named the domain).
    pub fn s2s_server(&self, domain: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let key = self
            .resolver
            .keys
            .read()
            .expect("tls lock")
            .get(&domain.to_ascii_lowercase())
            .cloned();
        let resolver = Arc::new(StreamDomain {
            sni: self.resolver.clone(),
            key,
        });
        Ok(Arc::new(
            rustls::ServerConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(self.links.clone())
                .with_cert_resolver(resolver),
        ))
    }

    /// The client side of an interop link from `local_domain`: it presents the domain's own
    /// certificate (the peer authenticates the platform with it, SASL EXTERNAL) and accepts
    /// only a server certificate whose pin is one of `pins` (the provider's registered ones,
    /// lowercase hex).
    /// `None` if the platform has no certificate for `local_domain`.
    pub fn link_client(
        &self,
        local_domain: &str,
        pins: Vec<String>,
    ) -> Option<Arc<rustls::ClientConfig>> {
        let key = self
            .resolver
            .keys
            .read()
            .expect("tls lock")
            .get(&local_domain.to_ascii_lowercase())?
            .clone();
        let verifier = Arc::new(PinnedServer {
            provider: self.provider.clone(),
            pins,
        });
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(OwnCertificate(key)));
        Some(Arc::new(config))
    }
}

/// A link stream's certificate: by server name if the peer sent one, else the stream's domain.
#[derive(Debug)]
struct StreamDomain {
    sni: Arc<SniResolver>,
    key: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for StreamDomain {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match (&self.key, hello.server_name()) {
            (Some(k), None) => Some(k.clone()),
            _ => self.sni.resolve(hello),
        }
    }
}

/// The platform's certificate for the domain a link speaks for.
#[derive(Debug)]
struct OwnCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A peer server's certificate on an interop link: accepted when its key is one the
/// provider pinned (the agreement names the keys, as for its proxies), whatever CA signed
/// it; the handshake signature is still verified, so the peer holds the key.
#[derive(Debug)]
struct PinnedServer {
    provider: Arc<CryptoProvider>,
    /// Lowercase hex, as registered.
    pins: Vec<String>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match spki_pin(end_entity) {
            Some(pin) if self.pins.contains(&pin_hex(&pin)) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Some(pin) => Err(rustls::Error::General(format!(
                "the server's certificate key (pin {}) is not one the provider registered",
                pin_hex(&pin)
            ))),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    verify_signatures_with_provider!();
}

/// The pin of a certificate: SHA-256 of its SubjectPublicKeyInfo (RFC 7469's pin), the form a
/// provider registers for its proxies. `None` if the certificate cannot be parsed.
pub fn spki_pin(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    use sha2::Digest;
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(sha2::Sha256::digest(ee.subject_public_key_info().as_ref()).into())
}

/// [`spki_pin`] as registered: lowercase hex.
pub fn pin_hex(pin: &[u8; 32]) -> String {
    pin.iter().map(|b| format!("{b:02x}")).collect()
}

const CA_NAME: &str = "Strait local CA";

/// Returns the paths of `<dir>/<domain>.pem` and `.key`, creating them (and the local CA,
/// `<dir>/ca.pem` + `ca.key`) when missing. The certificate covers the domain and its
/// subdomains (upload and other services live on `*.domain`).
pub fn ensure_local_certificate(dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    let cert_path = dir.join(format!("{domain}.pem"));
    let key_path = dir.join(format!("{domain}.key"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_cert, ca_key) = local_ca(dir)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned(), format!("*.{domain}")])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    Ok((cert_path, key_path))
}

/// The local CA: loaded from `ca.key` if present (the certificate is re-derived from the same
/// name and key, which is all that signing needs), else created with `ca.pem` beside it.
fn local_ca(dir: &Path) -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
    let key_path = dir.join("ca.key");
    let ca_path = dir.join("ca.pem");
    let (key, fresh) = match std::fs::read_to_string(&key_path) {
        Ok(pem) => (rcgen::KeyPair::from_pem(&pem)?, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (rcgen::KeyPair::generate()?, true),
        Err(source) => {
            return Err(TlsError::Io {
                path: key_path,
                source,
            });
        }
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = params.self_signed(&key)?;
    if fresh {
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&ca_path, cert.pem()).map_err(|source| TlsError::Io {
            path: ca_path.clone(),
            source,
        })?;
    }
    Ok((cert, key))
}

/// Writes a file readable by its owner only (private keys).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })?;
    f.write_all(bytes).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn local_certificates_are_made_once_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = ensure_local_certificate(dir.path(), "a.test").unwrap();
        let first = std::fs::read(&c1).unwrap();
        let (c1b, _) = ensure_local_certificate(dir.path(), "a.test").unwrap();
        assert_eq!(first, std::fs::read(c1b).unwrap(), "not regenerated");
        // A second domain added later is signed by the same CA key.
        let (c2, _) = ensure_local_certificate(dir.path(), "b.test").unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let ca_der = rustls_pemfile::certs(&mut ca.as_slice())
            .next()
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let roots = Arc::new(roots);
        for (path, name) in [(c1, "a.test"), (c2, "b.test")] {
            let pem = std::fs::read(path).unwrap();
            let leaf = rustls_pemfile::certs(&mut pem.as_slice())
                .next()
                .unwrap()
                .unwrap();
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &server_name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn configs_build_with_alpn_on_direct_tls_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().into(),
            domains: vec!["a.test".into(), "b.test".into()],
            ..Config::default()
        };
        let t = load(&c).unwrap();
        assert!(t.starttls.alpn_protocols.is_empty());
        assert_eq!(t.direct.alpn_protocols, vec![ALPN_XMPP_CLIENT.to_vec()]);
    }
}
