//! `strait conformance`: the kit a provider runs against its own client (docs/interop.md,
//! "Conformance kit").
//!
//! It starts a private platform on loopback (an embedded `strait serve` in a scratch
//! directory), registers the provider with the issuer and key set given, and puts an echo
//! bot on it: a platform user who has opted in to the provider, with an OMEMO 0.3 device
//! (strait-signal). The provider's client logs a user in with one of its tokens and talks to
//! the bot; each step the bot sees is a check:
//!
//! 1. `login`: a user of the provider reached the platform (its token was accepted);
//! 2. `device-list`: the bot can read the user's OMEMO device list (published, readable by a
//!    contact that is not subscribed: the `open` access model);
//! 3. `bundle`: and the bundle of each listed device, with a valid signed prekey;
//! 4. `encrypted`: the client's OMEMO message decrypts;
//! 5. `reply`: the client decrypts the bot's encrypted answer: it sends back the code the
//!    answer carries, encrypted.
//!
//! 6. `media` (with `--check-media`, else reported if it happens): the client shares a file
//!    as OMEMO media do (XEP-0454): uploaded encrypted to the platform's XEP-0363 service,
//!    its `aesgcm://` link in an encrypted message; the bot downloads it and it decrypts.
//!
//! The run ends when all required checks pass (exit 0) or at the time limit (exit 1, saying
//! what is missing).

use anyhow::{Context, Result, bail};
use clap::Args;
use rand_core::{OsRng, RngCore};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_client::conn::{self as client, ClientSettings, Connection, Login, Verify};
use strait_client::https::Https;
use strait_client::omemo::{self, Omemo, item_payload};
use strait_client::xml::{Element, escape};
use strait_server::interop::consent::{self, ConsentChange};
use strait_server::interop::registry::{self, Actor};
use strait_server::{Config, Server};
use strait_signal::device::{DeviceV2, DeviceV03};
use strait_signal::keys::IdentityKeyPair;
use strait_signal::media::{AesgcmUrl, parse_media_body};
use strait_signal::omemo::xml::v2::{self as x2, BundleV2, DeviceListV2, EncryptedV2};
use strait_signal::omemo::xml::v03::{BundleV03, DeviceListV03, EncryptedV03};
use strait_signal::omemo::{NODE_V2_DEVICES, NODE_V03_DEVICELIST, NS_V2, NS_V03};
use strait_signal::omemo2::store::InMemoryOmemo2Store;
use strait_signal::store::memory::InMemoryStore;
use strait_store::{Provider, ProviderStatus, Scope};

/// `strait conformance`.
#[derive(Args)]
pub struct ConformanceArgs {
    /// The issuer (`iss`) of the provider's tokens.
    #[arg(long)]
    issuer: String,
    /// The provider's JSON Web Key Set (a file).
    #[arg(long)]
    jwks: PathBuf,
    /// The domain of the provider's users' addresses.
    #[arg(long, default_value = "provider.test")]
    provider_domain: String,
    /// The private platform's domain (tokens' `aud`).
    #[arg(long, default_value = "platform.test")]
    platform_domain: String,
    /// Where the platform listens for STARTTLS.
    #[arg(long, default_value = "127.0.0.1:5222")]
    listen: SocketAddr,
    /// Where it listens for direct TLS (XEP-0368).
    #[arg(long, default_value = "127.0.0.1:5223")]
    listen_tls: SocketAddr,
    /// Where its file service (XEP-0363) listens for HTTPS; its slots name
    /// upload.<platform domain> on this port.
    #[arg(long, default_value = "127.0.0.1:5443")]
    listen_https: SocketAddr,
    /// Require the `media` check too: share a file with the bot (XEP-0454).
    #[arg(long)]
    check_media: bool,
    /// The platform's data directory (default: a scratch directory, removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Seconds to wait for the client to pass every check.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

const ECHO: &str = "echo";
const CHECKS: [&str; 5] = ["login", "device-list", "bundle", "encrypted", "reply"];
const MEDIA: &str = "media";
/// The largest file the bot downloads.
const MAX_FILE: usize = 100 << 20;

/// What has passed, and what went wrong, in the order it happened.
#[derive(Default)]
struct Report {
    passed: BTreeMap<&'static str, String>,
    media_required: bool,
}

impl Report {
    fn pass(&mut self, check: &'static str, detail: String) {
        if !self.passed.contains_key(check) {
            println!("PASS {check}: {detail}");
            self.passed.insert(check, detail);
        }
    }

    fn fail(&self, check: &str, why: String) {
        println!("FAIL {check}: {why}");
    }

    /// The checks this run requires.
    fn required(&self) -> Vec<&'static str> {
        let mut c = CHECKS.to_vec();
        if self.media_required {
            c.push(MEDIA);
        }
        c
    }

    fn done(&self) -> bool {
        self.required().iter().all(|c| self.passed.contains_key(c))
    }
}

pub async fn run(a: ConformanceArgs) -> Result<bool> {
    let jwks = std::fs::read_to_string(&a.jwks)
        .with_context(|| format!("reading the key set {}", a.jwks.display()))?;
    let scratch = tempfile::tempdir()?;
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("data"));
    let mut config = Config {
        data_dir: data_dir.clone(),
        domains: vec![a.platform_domain.clone()],
        ..Config::default()
    };
    config.listen.c2s = vec![a.listen];
    config.listen.c2s_direct_tls = vec![a.listen_tls];
    config.upload.listen = vec![a.listen_https];
    // A scratch platform: the disk's free-space reserve is the real platform's business.
    config.upload.min_free_bytes = 0;
    config.validate()?;
    let server = Server::start(config)
        .await
        .context("starting the platform")?;
    let state = server.state().clone();
    let actor = Actor {
        name: "conformance-kit",
        now_ms: now_ms(),
    };
    let mut p = Provider::new("provider", "Your app", vec![a.provider_domain.clone()]);
    p.issuer = Some(a.issuer.clone());
    p.jwks = Some(jwks);
    p.scopes = vec![Scope::Text, Scope::Media, Scope::Files];
    registry::add(&state.config, &*state.store, &p, actor)?;
    registry::accept_terms(&*state.store, "provider", "conformance", "the kit", actor)?;
    registry::set_status(&*state.store, "provider", ProviderStatus::Active, "", actor)?;
    let mut pw = [0u8; 18];
    OsRng.fill_bytes(&mut pw);
    let password: String = pw.iter().map(|b| format!("{b:02x}")).collect();
    let echo = strait_server::accounts::add_user(
        &state.config,
        &*state.store,
        &format!("{ECHO}@{}", a.platform_domain),
        &password,
    )?;
    let on = ConsentChange {
        enabled: Some(true),
        allow: vec!["provider".into()],
        ..ConsentChange::default()
    };
    let c = consent::change(&*state.store, &echo, &on, now_ms())?;
    state.interop.consents.set(&echo, c);
    strait_server::interop::refresh(&state, -1).await;
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|(addr, direct)| {
            format!(
                "{addr} ({})",
                if *direct { "direct TLS" } else { "STARTTLS" }
            )
        })
        .collect();
    let ca = data_dir.join("tls/ca.pem");
    println!(
        "strait conformance: a platform ({}) on {}; trust {}",
        a.platform_domain,
        addrs.join(" and "),
        ca.display()
    );
    println!(
        "strait conformance: log a user in as <name>@{} with SASL OAUTHBEARER and a token from {} (aud {})",
        a.provider_domain, a.issuer, a.platform_domain
    );
    println!(
        "strait conformance: send an OMEMO (0.3 or 2) message to {echo}, then send back, encrypted, the code its answer carries"
    );
    let https = server
        .https_addrs()
        .first()
        .copied()
        .context("no HTTPS listener")?;
    println!(
        "strait conformance: {}share a file with {echo} (XEP-0454: encrypted, uploaded to upload.{} on {https}; make that name resolve to {})",
        if a.check_media { "" } else { "optionally, " },
        a.platform_domain,
        https.ip()
    );
    let starttls = server
        .local_addrs()
        .iter()
        .find(|(_, d)| !d)
        .map(|(a, _)| *a)
        .context("no STARTTLS listener")?;
    let settings = ClientSettings {
        server: starttls,
        domain: a.platform_domain.clone(),
        tls_name: rustls::pki_types::ServerName::try_from(a.platform_domain.clone())?,
        direct_tls: false,
        tls: client::tls_config(&Verify::CaFile(ca.clone()), false)?,
        mechanism: None,
        allow_plain: false,
        source_ips: 0,
        stream_management: false,
        login_timeout: Duration::from_secs(10),
        keys: Arc::new(strait_client::scram::KeyCache::new()),
    };
    let who = Login {
        user: ECHO,
        password: &password,
        resource: "bot",
        presence: true,
    };
    let conn = client::login(&settings, 0, &who)
        .await
        .map_err(|e| anyhow::anyhow!("the echo bot could not log in: {e}"))?;
    let mut bot = Bot::new(&echo, &a.provider_domain)?;
    bot.report.media_required = a.check_media;
    bot.https = Some(Https::new(
        client::tls_config(&Verify::CaFile(ca), false)?,
        Some(https),
    ));
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let ok = bot.serve(conn, deadline).await;
    if ok {
        println!(
            "strait conformance: all {} checks passed",
            bot.report.required().len()
        );
    } else {
        let missing: Vec<&str> = bot
            .report
            .required()
            .iter()
            .filter(|c| !bot.report.passed.contains_key(*c))
            .copied()
            .collect();
        println!(
            "strait conformance: not passed within {} s: {}",
            a.timeout,
            missing.join(", ")
        );
    }
    server.shutdown(Duration::from_secs(5)).await;
    Ok(ok)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What an IQ the bot sent was for.
enum Pending {
    Publish,
    DeviceList(String, Omemo),
    Bundle(String, u32, Omemo),
}

/// The echo bot: an OMEMO 0.3 device on a platform account.
struct Bot {
    provider_domain: String,
    device: DeviceV03<InMemoryStore>,
    device2: DeviceV2<InMemoryOmemo2Store>,
    next_id: u64,
    pending: HashMap<String, Pending>,
    /// Per peer and protocol: bundles still awaited before the answer can be encrypted, and
    /// the answers waiting for them.
    awaiting: HashMap<(String, Omemo), (usize, Vec<String>)>,
    /// Per peer: the code its last answer carried.
    codes: HashMap<String, String>,
    report: Report,
    /// For the files shared with the bot.
    https: Option<Https>,
    /// Shared files to fetch: who shared it, the link.
    downloads: Vec<(String, AesgcmUrl)>,
}

impl Bot {
    fn new(jid: &str, provider_domain: &str) -> Result<Bot> {
        let store = InMemoryStore::generate(&mut OsRng);
        let device_id = (OsRng.next_u32() % 0x7FFF_FFFE) + 1;
        let device2_id = (OsRng.next_u32() % 0x7FFF_FFFE) + 1;
        let identity = IdentityKeyPair::generate(&mut OsRng);
        Ok(Bot {
            provider_domain: provider_domain.to_ascii_lowercase(),
            device: DeviceV03::new(jid, device_id, store, &mut OsRng)?,
            device2: DeviceV2::new(
                jid,
                device2_id,
                identity,
                InMemoryOmemo2Store::default(),
                &mut OsRng,
            )?,
            next_id: 0,
            pending: HashMap::new(),
            awaiting: HashMap::new(),
            codes: HashMap::new(),
            report: Report::default(),
            https: None,
            downloads: Vec::new(),
        })
    }

    fn id(&mut self, purpose: Pending) -> String {
        self.next_id += 1;
        let id = format!("kit{}", self.next_id);
        self.pending.insert(id.clone(), purpose);
        id
    }

    /// Publishes the bot's device lists and bundles (both versions), readable by anyone
    /// (`open`; OMEMO 2's bundles node keeps every item).
    fn publish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let (d03, d2) = (self.device.device_id(), self.device2.device_id());
        let list03 = DeviceListV03 { devices: vec![d03] }.to_xml();
        let list2 = DeviceListV2 {
            devices: vec![x2::DeviceV2 {
                id: d2,
                label: None,
                label_sig: None,
            }],
        }
        .to_xml();
        let (b03, b2) = (Omemo::V03.bundle_item(d03), Omemo::V2.bundle_item(d2));
        for (node, item_id, item, keep_all) in [
            (
                NODE_V03_DEVICELIST.to_owned(),
                "current".to_owned(),
                list03,
                false,
            ),
            (b03.0, b03.1, self.device.bundle()?.to_xml(), false),
            (
                NODE_V2_DEVICES.to_owned(),
                "current".to_owned(),
                list2,
                false,
            ),
            (b2.0, b2.1, self.device2.bundle()?.to_xml(), true),
        ] {
            let id = self.id(Pending::Publish);
            out.extend_from_slice(
                omemo::publish_iq(&id, &node, &item_id, &item, keep_all).as_bytes(),
            );
        }
        Ok(())
    }

    async fn serve(&mut self, mut conn: Connection, deadline: Instant) -> bool {
        if let Err(e) = self.publish(&mut conn.out) {
            self.report
                .fail("setup", format!("publishing the bot's keys: {e}"));
            return false;
        }
        loop {
            if self.report.done() {
                let _ = conn.flush().await;
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, conn.pump()).await {
                Err(_) => return false,
                Ok(Err(e)) => {
                    self.report
                        .fail("setup", format!("the echo bot's connection: {e}"));
                    return false;
                }
                Ok(Ok(())) => {}
            }
            let r = conn.process(|el, out| self.handle(&el, out));
            if let Err(e) = r {
                self.report
                    .fail("setup", format!("the echo bot's stream: {e}"));
                return false;
            }
            for (peer, url) in std::mem::take(&mut self.downloads) {
                self.check_media(&peer, &url).await;
            }
        }
    }

    /// The `media` check: the shared file downloads from the platform's file service and
    /// decrypts with the link's key.
    async fn check_media(&mut self, peer: &str, url: &AesgcmUrl) {
        let Some(https) = self.https.clone() else {
            return;
        };
        let at = url.https_url();
        let result = match https.get(&at, MAX_FILE).await {
            Err(e) => Err(format!("downloading {at}: {e}")),
            Ok(ciphertext) => url
                .decrypt(&ciphertext)
                .map(|plain| (ciphertext.len(), plain.len()))
                .map_err(|e| format!("{at} does not decrypt with the link's key: {e}")),
        };
        match result {
            Ok((stored, plain)) => self.report.pass(
                MEDIA,
                format!(
                    "{peer} shared a file: {stored} bytes stored encrypted, {plain} bytes once decrypted"
                ),
            ),
            Err(e) => self.report.fail(MEDIA, format!("{peer}: {e}")),
        }
    }

    fn is_provider_user(&self, from: &str) -> bool {
        let bare = from.split('/').next().unwrap_or(from);
        bare.rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.provider_domain))
    }

    fn handle(&mut self, el: &Element<'_>, out: &mut Vec<u8>) {
        let from = el.attr("from").map(|f| f.into_owned()).unwrap_or_default();
        let bare = from.split('/').next().unwrap_or(&from).to_owned();
        if el.is("iq") {
            let id = el.attr("id").map(|i| i.into_owned()).unwrap_or_default();
            if let Some(p) = self.pending.remove(&id) {
                self.on_answer(p, el, out);
            }
            return;
        }
        if !self.is_provider_user(&from) {
            return;
        }
        self.report
            .pass("login", format!("{bare} reached the platform"));
        if el.is("presence") {
            // Subscription requests are approved, and returned.
            if el.attr("type").as_deref() == Some("subscribe") {
                let to = escape(&bare);
                out.extend_from_slice(
                    format!(
                        "<presence to='{to}' type='subscribed'/><presence to='{to}' type='subscribe'/>"
                    )
                    .as_bytes(),
                );
            }
            return;
        }
        if !el.is("message") || el.attr("type").as_deref() == Some("error") {
            return;
        }
        let Some(enc) = el.child("encrypted") else {
            if el.child("body").is_some() {
                self.report.fail(
                    "encrypted",
                    format!("{bare} sent a message without an OMEMO <encrypted/> element"),
                );
            }
            return;
        };
        let version = match enc.attr("xmlns").as_deref() {
            Some(NS_V03) => Omemo::V03,
            Some(NS_V2) => Omemo::V2,
            other => {
                return self.report.fail(
                    "encrypted",
                    format!("{bare} sent an <encrypted/> of namespace {other:?}, not OMEMO"),
                );
            }
        };
        let xml = String::from_utf8_lossy(enc.raw()).into_owned();
        let text = match self.decrypt(version, &bare, &xml) {
            Ok(Some(text)) => text,
            Ok(None) => return, // key transport or heartbeat
            Err(e) => {
                return self.report.fail(
                    "encrypted",
                    format!(
                        "{bare}: the {} message does not decrypt: {e}",
                        version.name()
                    ),
                );
            }
        };
        self.report.pass(
            "encrypted",
            format!(
                "an {} message from {bare} decrypted ({} bytes)",
                version.name(),
                text.len()
            ),
        );
        if let Some((url, _thumbnail)) = parse_media_body(&text) {
            // A shared file: fetched after this batch of stanzas (the download is async).
            self.downloads.push((bare, url));
            return;
        }
        if self
            .codes
            .get(&bare)
            .is_some_and(|c| text.contains(c.as_str()))
        {
            self.report.pass(
                "reply",
                format!(
                    "{bare} decrypted the bot's answer and sent its code back ({})",
                    version.name()
                ),
            );
            return;
        }
        let code = format!("{:06}", OsRng.next_u32() % 1_000_000);
        self.codes.insert(bare.clone(), code.clone());
        let answer = format!("echo: {text} (code {code})");
        // The answer is encrypted, in the protocol the user wrote in, for every device it
        // lists: fetch the list and the bundles first (which are checks of their own).
        let waiting = self
            .awaiting
            .entry((bare.clone(), version))
            .or_insert((0, Vec::new()));
        waiting.1.push(answer);
        let id = self.id(Pending::DeviceList(bare.clone(), version));
        out.extend_from_slice(
            omemo::items_query(&id, Some(&bare), version.devices_node(), None).as_bytes(),
        );
    }

    /// Decrypts an `<encrypted/>` of `version` from `peer`: the text (OMEMO 2: the envelope's
    /// body), `None` for a message without a payload.
    fn decrypt(&mut self, version: Omemo, peer: &str, xml: &str) -> Result<Option<String>> {
        let d = match version {
            Omemo::V03 => {
                let e = EncryptedV03::parse(xml)?;
                self.device.decrypt(peer, &e, &mut OsRng)?
            }
            Omemo::V2 => {
                let e = EncryptedV2::parse(xml)?;
                self.device2.decrypt(peer, &e, &mut OsRng)?
            }
        };
        Ok(d.plaintext
            .map(|p| String::from_utf8_lossy(&p).into_owned()))
    }

    fn on_answer(&mut self, p: Pending, el: &Element<'_>, out: &mut Vec<u8>) {
        let ok = el.attr("type").as_deref() == Some("result");
        match p {
            Pending::Publish if !ok => self.report.fail(
                "setup",
                format!("publishing the bot's keys: {}", el.error_condition()),
            ),
            Pending::Publish => {}
            Pending::DeviceList(peer, version) => {
                let devices = item_payload(el).and_then(|x| match version {
                    Omemo::V03 => DeviceListV03::parse(&x).ok().map(|l| l.devices),
                    Omemo::V2 => DeviceListV2::parse(&x)
                        .ok()
                        .map(|l| l.devices.iter().map(|d| d.id).collect()),
                });
                let Some(devices) = devices.filter(|d: &Vec<u32>| !d.is_empty()) else {
                    self.report.fail(
                        "device-list",
                        format!(
                            "{peer}'s {} is not readable or empty ({}): publish it with the open access model",
                            version.devices_node(),
                            if ok { "no device" } else { el.error_condition() }
                        ),
                    );
                    return;
                };
                self.report.pass(
                    "device-list",
                    format!("{peer} lists {} device(s) {devices:?}", version.name()),
                );
                match version {
                    Omemo::V03 => self.device.set_device_list(&peer, devices.iter().copied()),
                    Omemo::V2 => self.device2.set_device_list(&peer, devices.iter().copied()),
                }
                if let Some(w) = self.awaiting.get_mut(&(peer.clone(), version)) {
                    w.0 = devices.len();
                }
                for d in devices {
                    let id = self.id(Pending::Bundle(peer.clone(), d, version));
                    let (node, item) = version.bundle_item(d);
                    let item = (version == Omemo::V2).then_some(item.as_str());
                    out.extend_from_slice(
                        omemo::items_query(&id, Some(&peer), &node, item).as_bytes(),
                    );
                }
            }
            Pending::Bundle(peer, device, version) => {
                let added = match item_payload(el) {
                    None => Err(format!("not readable ({})", el.error_condition())),
                    Some(x) => match version {
                        Omemo::V03 => BundleV03::parse(&x)
                            .map_err(|e| format!("malformed: {e}"))
                            .and_then(|b| {
                                self.device
                                    .add_bundle(&peer, device, b)
                                    .map_err(|e| e.to_string())
                            }),
                        Omemo::V2 => BundleV2::parse(&x)
                            .map_err(|e| format!("malformed: {e}"))
                            .and_then(|b| {
                                self.device2
                                    .add_bundle(&peer, device, &b)
                                    .map_err(|e| e.to_string())
                            }),
                    },
                };
                match added {
                    Ok(()) => self.report.pass(
                        "bundle",
                        format!("{peer}/{device}'s {} bundle verifies", version.name()),
                    ),
                    Err(e) => self.report.fail(
                        "bundle",
                        format!("{peer}/{device}'s {} bundle: {e}", version.name()),
                    ),
                }
                let key = (peer.clone(), version);
                let ready = match self.awaiting.get_mut(&key) {
                    Some(w) => {
                        w.0 = w.0.saturating_sub(1);
                        w.0 == 0
                    }
                    None => false,
                };
                if ready {
                    let answers = self.awaiting.remove(&key).map(|w| w.1).unwrap_or_default();
                    for a in answers {
                        self.send_encrypted(version, &peer, &a, out);
                    }
                }
            }
        }
    }

    fn send_encrypted(&mut self, version: Omemo, peer: &str, text: &str, out: &mut Vec<u8>) {
        let enc = match version {
            Omemo::V03 => self
                .device
                .encrypt(peer, text.as_bytes(), &mut OsRng)
                .map(|e| e.to_xml()),
            Omemo::V2 => self
                .device2
                .encrypt(peer, text, &mut OsRng)
                .map(|e| e.to_xml()),
        };
        match enc {
            Ok(enc) => {
                let id = format!("kit-answer-{}", self.next_id);
                out.extend_from_slice(omemo::message(peer, &id, &enc, version, false).as_bytes())
            }
            Err(e) => self
                .report
                .fail("reply", format!("the bot cannot encrypt for {peer}: {e}")),
        }
    }
}
/// Runs the kit; the process's exit status says whether every check passed.
pub fn main(a: ConformanceArgs) -> Result<()> {
    let ok = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(a))?;
    if !ok {
        bail!("the client did not pass every check");
    }
    Ok(())
}
