//! `strait proxy …`: the provider-side proxy (crates/strait-proxy), and the commands that
//! make and show the key the provider registers for it.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ProxyCommand {
    /// Relay the provider's apps to the platform: apps connect here with direct TLS
    /// (XEP-0368) or STARTTLS under the provider's domain; each gets its own connection to the
    /// platform, made with this proxy's client certificate. Runs until interrupted.
    Run {
        /// Where the apps connect with direct TLS (repeat for several).
        #[arg(long, required_unless_present = "listen_starttls")]
        listen: Vec<SocketAddr>,
        /// Where the apps connect with STARTTLS (repeat for several).
        #[arg(long)]
        listen_starttls: Vec<SocketAddr>,
        /// The certificate chain (PEM) presented to the apps, for the provider's domain.
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The platform's direct-TLS address, host:port.
        #[arg(long)]
        upstream: String,
        /// CA certificates (PEM) to check the platform's certificate against.
        #[arg(long)]
        upstream_ca: PathBuf,
        /// The name the platform's certificate must carry (default: the name each app asked
        /// for, the provider's domain).
        #[arg(long)]
        upstream_name: Option<String>,
        /// This proxy's client certificate toward the platform (its pin is registered with
        /// `strait provider set --pin`; make one with `strait proxy keygen`).
        #[arg(long)]
        client_cert: PathBuf,
        #[arg(long)]
        client_key: PathBuf,
        /// Most app connections at once.
        #[arg(long, default_value_t = 10_000)]
        max_connections: usize,
    },
    /// Make a key and a self-signed client certificate for a proxy, and print the pin to
    /// register (the platform pins the key; no CA is involved).
    Keygen {
        /// The files to write: <out>.pem and <out>.key (the key readable by its owner only).
        #[arg(long)]
        out: PathBuf,
        /// The certificate's name, for people reading it (for example proxy.acme.example).
        #[arg(long, default_value = "strait-proxy")]
        name: String,
    },
    /// Print the pin of a certificate (PEM): SHA-256 of its public key, as registered.
    Pin { cert: PathBuf },
}

fn pin_of(path: &PathBuf) -> Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(cert) = rustls_pemfile::certs(&mut pem.as_slice()).next() else {
        bail!("{}: no certificate in the PEM file", path.display());
    };
    let cert = cert.with_context(|| format!("reading {}", path.display()))?;
    let pin = strait_server::tls::spki_pin(&cert)
        .with_context(|| format!("{}: not a certificate this can read", path.display()))?;
    Ok(strait_server::tls::pin_hex(&pin))
}

pub async fn run(cmd: ProxyCommand) -> Result<()> {
    match cmd {
        ProxyCommand::Run {
            listen,
            listen_starttls,
            cert,
            key,
            upstream,
            upstream_ca,
            upstream_name,
            client_cert,
            client_key,
            max_connections,
        } => {
            let pin = pin_of(&client_cert)?;
            let direct = listen.len();
            let proxy = strait_proxy::Proxy::start(strait_proxy::ProxyConfig {
                listen,
                listen_starttls,
                app_cert: cert,
                app_key: key,
                upstream: upstream.clone(),
                upstream_ca,
                upstream_name,
                client_cert,
                client_key,
                max_connections,
            })
            .await?;
            for (i, a) in proxy.local_addrs().iter().enumerate() {
                let how = if i < direct { "direct TLS" } else { "STARTTLS" };
                println!("strait proxy: apps on {a} ({how}), relayed to {upstream}");
            }
            println!("strait proxy: client certificate pin {pin} (registered for the provider?)");
            tokio::select! {
                () = proxy.wait() => {}
                r = crate::wait_for_signal() => r?,
            }
        }
        ProxyCommand::Keygen { out, name } => {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, &name);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
            let cert = params.self_signed(&key)?;
            let (cert_path, key_path) = (out.with_extension("pem"), out.with_extension("key"));
            strait_server::tls::write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())
                .with_context(|| format!("writing {}", cert_path.display()))?;
            println!("{} {}", cert_path.display(), key_path.display());
            println!("pin {}", pin_of(&cert_path)?);
        }
        ProxyCommand::Pin { cert } => println!("{}", pin_of(&cert)?),
    }
    Ok(())
}
