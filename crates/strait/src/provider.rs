//! `strait provider …`: the registry of third-party providers and their agreements, and
//! `strait user consent`: a user's choice of third-party chats.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use strait_server::Config;
use strait_server::accounts;
use strait_server::interop::consent::{self, ConsentChange};
use strait_server::interop::registry::{self, Actor};
use strait_store::{
    InboxMode, Provider, ProviderStatus, ProviderStore, ReportCounts, ReportStore, Scope,
};

use crate::{ConfigArgs, load_config, open_store};

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Register a provider. It starts pending: record its acceptance of the terms (`terms`),
    /// then `activate` it.
    Add {
        /// A short stable id: lowercase letters, digits and '-'.
        id: String,
        #[command(flatten)]
        details: Details,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Change a provider's details; what is not given stays as it is.
    Set {
        id: String,
        #[command(flatten)]
        details: Details,
        /// Remove the enlistment issuer and key set.
        #[arg(long, conflicts_with_all = ["issuer", "jwks"])]
        no_enlistment: bool,
        /// Remove the message rate limits.
        #[arg(long, conflicts_with_all = ["rate", "user_rate"])]
        no_rate_limits: bool,
        /// Make a federated provider an enlisted one again (its users then log in here).
        #[arg(long, conflicts_with = "link")]
        no_link: bool,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Record that the provider accepted a version of the interoperability terms.
    Terms {
        id: String,
        /// The version of the terms accepted.
        #[arg(long = "version")]
        terms_version: String,
        /// Who signed for the provider.
        #[arg(long)]
        accepted_by: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Put the agreement into force (needs accepted terms), or lift a suspension.
    Activate {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Suspend the agreement: the provider's users and links are refused until it is
    /// activated again.
    Suspend {
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// End the agreement for good.
    Terminate {
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List providers: id, status, scopes, domains, name.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show everything recorded about one provider.
    Show {
        id: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Check a federated provider's link: connect to its server as the running platform
    /// would (STARTTLS, the pinned certificate key, SASL EXTERNAL) and say how far it got.
    CheckLink {
        id: String,
        /// The provider domain to open the stream to (default: its first).
        #[arg(long = "provider-domain")]
        provider_domain: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The audit log of registry changes (of one provider, or all), oldest first.
    Audit {
        id: Option<String>,
        /// How many of the newest entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// A provider's details, as `add` and `set` take them.
#[derive(Args)]
pub struct Details {
    /// The name users see beside its chats.
    #[arg(long)]
    name: Option<String>,
    /// A domain of its users' addresses, user@DOMAIN (repeat, or comma-separate); replaces
    /// the list. (`--domain` is the platform's own domain, as in every command.)
    #[arg(long = "provider-domain", value_delimiter = ',')]
    provider_domains: Vec<String>,
    /// What its users may do: text, media, files, groups, calls (comma-separated; default text).
    #[arg(long)]
    scopes: Option<String>,
    /// Enlistment: the `iss` of the tokens it signs for its users.
    #[arg(long)]
    issuer: Option<String>,
    /// Enlistment: a file holding its JSON Web Key Set.
    #[arg(long)]
    jwks: Option<PathBuf>,
    /// SHA-256 of the SubjectPublicKeyInfo of a certificate its links or proxies present (hex;
    /// repeat); replaces the list.
    #[arg(long = "pin")]
    pins: Vec<String>,
    /// Stanzas (messages, presence, IQs) per second all its users together may send to this
    /// platform's users.
    #[arg(long)]
    rate: Option<u32>,
    /// Stanzas per second one of its users may send to this platform's users.
    #[arg(long)]
    user_rate: Option<u32>,
    /// A federated provider: its own XMPP server, HOST or HOST:PORT (default port 5269),
    /// reached over an interop link (s2s, authenticated by the pins). Its users live there,
    /// not here.
    #[arg(long)]
    link: Option<String>,
}

/// Who makes the change, for the audit log.
#[derive(Args)]
pub struct Who {
    /// Recorded in the audit log as the change's author (default: cli:$USER).
    #[arg(long, env = "STRAIT_ACTOR")]
    actor: Option<String>,
}

impl Who {
    fn name(&self) -> String {
        self.actor.clone().unwrap_or_else(|| {
            format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            )
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Applies the given details over `p`.
fn apply(p: &mut Provider, d: &Details) -> Result<()> {
    if let Some(n) = &d.name {
        p.name = n.clone();
    }
    if !d.provider_domains.is_empty() {
        p.domains = d.provider_domains.clone();
    }
    if let Some(s) = &d.scopes {
        p.scopes = registry::parse_scopes(s).map_err(anyhow::Error::msg)?;
    }
    if let Some(i) = &d.issuer {
        p.issuer = Some(i.clone());
    }
    if let Some(path) = &d.jwks {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key set {}", path.display()))?;
        p.jwks = Some(text);
    }
    if !d.pins.is_empty() {
        p.cert_pins = d.pins.clone();
    }
    if d.rate.is_some() {
        p.rate_per_sec = d.rate;
    }
    if d.user_rate.is_some() {
        p.user_rate_per_sec = d.user_rate;
    }
    if d.link.is_some() {
        p.link = d.link.clone();
    }
    Ok(())
}

fn scopes(p: &Provider) -> String {
    let v: Vec<&str> = p.scopes.iter().map(|s| Scope::as_str(*s)).collect();
    v.join(",")
}

fn show(p: &Provider) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rate = |v: Option<u32>| v.map_or_else(|| "no limit".into(), |r| format!("{r} stanzas/s"));
    println!("id:          {}", p.id);
    println!("name:        {}", p.name);
    println!("status:      {}", p.status.as_str());
    println!("domains:     {}", p.domains.join(", "));
    println!("scopes:      {}", scopes(p));
    match &p.terms {
        Some(t) => println!(
            "terms:       version {}, accepted by {} at {}",
            t.version,
            t.accepted_by,
            stamp(t.accepted_ms)
        ),
        None => println!("terms:       not accepted"),
    }
    println!("issuer:      {}", opt(&p.issuer));
    println!(
        "jwks:        {}",
        p.jwks
            .as_ref()
            .map_or_else(|| "-".into(), |j| format!("{} bytes", j.len()))
    );
    println!(
        "pins:        {}",
        if p.cert_pins.is_empty() {
            "-".into()
        } else {
            p.cert_pins.join(", ")
        }
    );
    println!("rate:        {}", rate(p.rate_per_sec));
    println!("user rate:   {}", rate(p.user_rate_per_sec));
    match &p.link {
        Some(l) => println!("link:        {l} (federated: its users live on its own server)"),
        None => println!("link:        - (enlisted: its users' accounts live here)"),
    }
}

/// `strait provider check-link`: the outbound half of a link, step by step, with the same
/// code the running server opens links with.
fn check_link(config: &Config, p: &Provider, provider_domain: Option<&str>) -> Result<()> {
    let Some(link) = &p.link else {
        bail!(
            "the provider {} is not federated (no --link): its users log in here",
            p.id
        );
    };
    let remote = match provider_domain {
        Some(d) if !p.domains.iter().any(|x| x.eq_ignore_ascii_case(d)) => {
            bail!("{d} is not a domain of the provider {}", p.id)
        }
        Some(d) => d.to_ascii_lowercase(),
        None => p.domains[0].clone(),
    };
    let local = config.domains[0].to_ascii_lowercase();
    if p.status != ProviderStatus::Active {
        println!(
            "note: the agreement is {}; the running server opens no link until it is active",
            p.status.as_str()
        );
    }
    let tls = strait_server::tls::load(config)?;
    let limits = strait_server::s2s::outbound::link_limits(config);
    println!("link from {local} to {remote} at {link}");
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut step = |step: &str| println!("  ok: {step}");
            let open =
                strait_server::s2s::outbound::connect(&tls, limits, p, &local, &remote, &mut step);
            match tokio::time::timeout(strait_server::s2s::NEGOTIATION_TIMEOUT, open).await {
                Ok(Ok((mut c, _))) => {
                    c.close().await;
                    Ok(())
                }
                Ok(Err(why)) => Err(why),
                Err(_) => Err("no answer in time".to_owned()),
            }
        });
    if let Err(why) = result {
        bail!("the link to {remote} failed: {why}");
    }
    println!("the link works in this direction");
    if config.listen.s2s.is_empty() {
        println!(
            "warning: listen.s2s is empty: the provider's server has nowhere to connect to send its users' stanzas"
        );
    } else {
        let addrs: Vec<String> = config.listen.s2s.iter().map(ToString::to_string).collect();
        println!(
            "the other direction is the provider's: its server must reach {local} at {} (listen.s2s) and trust its certificate",
            addrs.join(", ")
        );
    }
    Ok(())
}

/// Unix milliseconds as RFC 3339 UTC.
pub fn stamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub fn run(cmd: ProviderCommand) -> Result<()> {
    match cmd {
        ProviderCommand::Add {
            id,
            details,
            who,
            config,
        } => {
            let config = load_config(&config)?;
            let mut p = Provider::new(&id, "", Vec::new());
            apply(&mut p, &details)?;
            let store = open_store(&config)?;
            let actor = Actor {
                name: &who.name(),
                now_ms: now_ms(),
            };
            let p = registry::add(&config, &store, &p, actor);
            store.close()?;
            let p = p?;
            println!(
                "registered {} ({}), pending: record its terms, then activate it",
                p.id,
                p.domains.join(", ")
            );
        }
        ProviderCommand::Set {
            id,
            details,
            no_enlistment,
            no_rate_limits,
            no_link,
            who,
            config,
        } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let result = (|| -> Result<Provider> {
                let Some(mut p) = store.provider(&id)? else {
                    bail!("no provider {id} is registered");
                };
                apply(&mut p, &details)?;
                if no_enlistment {
                    (p.issuer, p.jwks) = (None, None);
                }
                if no_rate_limits {
                    (p.rate_per_sec, p.user_rate_per_sec) = (None, None);
                }
                if no_link {
                    p.link = None;
                }
                let actor = Actor {
                    name: &who.name(),
                    now_ms: now_ms(),
                };
                Ok(registry::update(&config, &store, &p, actor)?)
            })();
            store.close()?;
            show(&result?);
        }
        ProviderCommand::Terms {
            id,
            terms_version,
            accepted_by,
            who,
            config,
        } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let actor = Actor {
                name: &who.name(),
                now_ms: now_ms(),
            };
            let r = registry::accept_terms(&store, &id, &terms_version, &accepted_by, actor);
            store.close()?;
            let p = r?;
            println!(
                "{}: terms version {terms_version} accepted by {accepted_by}",
                p.id
            );
        }
        ProviderCommand::Activate {
            id,
            reason,
            who,
            config,
        } => status(&id, ProviderStatus::Active, &reason, &who, &config)?,
        ProviderCommand::Suspend {
            id,
            reason,
            who,
            config,
        } => status(&id, ProviderStatus::Suspended, &reason, &who, &config)?,
        ProviderCommand::Terminate {
            id,
            reason,
            who,
            config,
        } => status(&id, ProviderStatus::Terminated, &reason, &who, &config)?,
        ProviderCommand::List { config } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let providers = store.providers();
            store.close()?;
            for p in providers? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.id,
                    p.status.as_str(),
                    scopes(&p),
                    p.domains.join(","),
                    p.name
                );
            }
        }
        ProviderCommand::Show { id, config } => {
            use strait_store::AccountStore;
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let month_ago = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
                - 30 * 86_400_000;
            let result = (|| -> Result<(Provider, Vec<usize>, ReportCounts)> {
                let Some(p) = store.provider(&id)? else {
                    bail!("no provider {id} is registered");
                };
                let users = p
                    .domains
                    .iter()
                    .map(|d| Ok(store.list_accounts(Some(d))?.len()))
                    .collect::<Result<_>>()?;
                let reports = store.report_counts(&p.id, month_ago)?;
                Ok((p, users, reports))
            })();
            store.close()?;
            let (p, users, reports) = result?;
            show(&p);
            let per: Vec<String> = p
                .domains
                .iter()
                .zip(&users)
                .map(|(d, n)| format!("{n} under {d}"))
                .collect();
            println!("users:       {}", per.join(", "));
            println!(
                "reports:     {} open about {} of its users; {} in the last 30 days (strait report list --provider {})",
                reports.open, reports.open_reported, reports.recent, p.id
            );
        }
        ProviderCommand::CheckLink {
            id,
            provider_domain,
            config,
        } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let provider = store.provider(&id);
            store.close()?;
            let Some(p) = provider? else {
                bail!("no provider {id} is registered");
            };
            check_link(&config, &p, provider_domain.as_deref())?;
        }
        ProviderCommand::Audit { id, limit, config } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let log = store.provider_audit(id.as_deref(), limit);
            store.close()?;
            for e in log? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    stamp(e.at_ms),
                    e.provider,
                    e.actor,
                    e.action,
                    e.detail
                );
            }
        }
    }
    Ok(())
}

fn status(
    id: &str,
    next: ProviderStatus,
    reason: &str,
    who: &Who,
    config: &ConfigArgs,
) -> Result<()> {
    let config = load_config(config)?;
    let store = open_store(&config)?;
    let actor = Actor {
        name: &who.name(),
        now_ms: now_ms(),
    };
    let r = registry::set_status(&store, id, next, reason, actor);
    store.close()?;
    let p = r?;
    println!("{} is now {}", p.id, p.status.as_str());
    Ok(())
}

/// `strait user consent`.
#[derive(Args)]
pub struct ConsentArgs {
    /// The account (or several: the same change for each, in one go).
    #[arg(required_unless_present = "from_file")]
    jids: Vec<String>,
    /// Also the accounts listed in FILE, one JID per line (`-`: standard input); blank lines
    /// and lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    #[command(flatten)]
    flags: ConsentFlags,
    #[command(flatten)]
    config: ConfigArgs,
}

/// The consent changes a user or an operator can ask for (`strait user consent`, `strait chat
/// consent`); none: show it.
#[derive(Args)]
pub struct ConsentFlags {
    /// Turn third-party chats on.
    #[arg(long, conflicts_with = "off")]
    pub on: bool,
    /// Turn third-party chats off (the chosen providers are kept for when they are on again).
    #[arg(long)]
    pub off: bool,
    /// Accept chats from this provider (repeat, or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Stop accepting chats from this provider (repeat, or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub deny: Vec<String>,
    /// Where third-party chats show: separate or combined.
    #[arg(long)]
    pub inbox: Option<String>,
}

impl ConsentFlags {
    /// `--inbox`, checked.
    pub fn inbox_mode(&self) -> Result<Option<InboxMode>> {
        self.inbox
            .as_deref()
            .map(|s| {
                InboxMode::parse(s)
                    .with_context(|| format!("--inbox is separate or combined, not {s:?}"))
            })
            .transpose()
    }

    /// `--on`, `--off` or neither.
    pub fn enabled(&self) -> Option<bool> {
        match (self.on, self.off) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

pub fn consent(a: ConsentArgs) -> Result<()> {
    let config = load_config(&a.config)?;
    let mut inputs = a.jids.clone();
    if let Some(path) = &a.from_file {
        let text = if path.as_os_str() == "-" {
            crate::import::read_stdin()?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        inputs.extend(jid_lines(&text));
    }
    let jids = account_jids(&config, &inputs)?;
    let change = ConsentChange {
        enabled: a.flags.enabled(),
        inbox: a.flags.inbox_mode()?,
        allow: a.flags.allow.clone(),
        deny: a.flags.deny.clone(),
    };
    let store = open_store(&config)?;
    let single = a.from_file.is_none() && jids.len() == 1;
    let r = if single || change == ConsentChange::default() {
        // Shown (or changed, for one account) one by one, a line each.
        let mut failed = Vec::new();
        for jid in &jids {
            match consent_of(&store, jid, &change) {
                Ok(c) => println!("{}", consent_line(jid, &c)),
                Err(e) if single => failed.push(anyhow::Error::from(e)),
                Err(e) => failed.push(anyhow::anyhow!("{jid}: {e}")),
            }
        }
        match failed.len() {
            0 => Ok(()),
            1 if single => Err(failed.remove(0)),
            n => Err(anyhow::anyhow!(
                "{n} of {} account(s) failed:\n  {}",
                jids.len(),
                list(&failed)
            )),
        }
    } else {
        let started = std::time::Instant::now();
        change_many(&store, &jids, &change).map(|()| {
            println!(
                "consent of {} account(s) changed in {:.2} s: {}",
                jids.len(),
                started.elapsed().as_secs_f64(),
                describe(&change)
            );
        })
    };
    store.close()?;
    r
}

/// The JIDs of a `--from-file` list: one a line, blank lines and `#` comments skipped.
fn jid_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

/// The accounts' JIDs, normalized, without repeats (in the order first given). Any invalid
/// one refuses the whole list, before anything changes.
fn account_jids(config: &Config, inputs: &[String]) -> Result<Vec<String>> {
    if inputs.is_empty() {
        bail!("no account given (the file is empty)");
    }
    let mut seen = std::collections::HashSet::new();
    let mut jids = Vec::new();
    let mut bad = Vec::new();
    if let [one] = inputs {
        // One account: its own error, as ever.
        return Ok(vec![accounts::account_jid(config, one)?]);
    }
    for input in inputs {
        match accounts::account_jid(config, input) {
            Ok(jid) => {
                if seen.insert(jid.clone()) {
                    jids.push(jid);
                }
            }
            Err(e) => bad.push(anyhow::anyhow!("{input:?}: {e}")),
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} of the {} JID(s) are not accounts' JIDs; nothing was changed:\n  {}",
            bad.len(),
            inputs.len(),
            list(&bad)
        );
    }
    Ok(jids)
}

/// Shows the consent of `jid` (no change asked for) or applies the change.
fn consent_of(
    store: &dyn strait_store::Store,
    jid: &str,
    change: &ConsentChange,
) -> Result<strait_store::Consent, consent::ConsentError> {
    if *change == ConsentChange::default() {
        match store.account_exists(jid) {
            Ok(false) => Err(consent::ConsentError::NoAccount(jid.to_owned())),
            Ok(true) => store.consent(jid).map_err(consent::ConsentError::from),
            Err(e) => Err(e.into()),
        }
    } else {
        consent::change(store, jid, change, now_ms())
    }
}

/// `alice@example.org: third-party chats on, separate inbox, from: acme`.
fn consent_line(jid: &str, c: &strait_store::Consent) -> String {
    format!(
        "{jid}: third-party chats {}, {} inbox, from: {}",
        if c.enabled { "on" } else { "off" },
        c.inbox.as_str(),
        if c.providers.is_empty() {
            "no provider".into()
        } else {
            c.providers.join(", ")
        }
    )
}

/// The first errors of a list, one a line, and how many more.
fn list(errors: &[anyhow::Error]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = errors
        .iter()
        .take(SHOWN)
        .map(|e| format!("{e:#}"))
        .collect();
    if errors.len() > SHOWN {
        s.push(format!("… and {} more", errors.len() - SHOWN));
    }
    s.join("\n  ")
}

/// `on, allow acme, combined inbox`: what a change does.
fn describe(change: &ConsentChange) -> String {
    let mut parts = Vec::new();
    match change.enabled {
        Some(true) => parts.push("third-party chats on".to_owned()),
        Some(false) => parts.push("third-party chats off".to_owned()),
        None => {}
    }
    if !change.allow.is_empty() {
        parts.push(format!("allowed {}", change.allow.join(", ")));
    }
    if !change.deny.is_empty() {
        parts.push(format!("denied {}", change.deny.join(", ")));
    }
    if let Some(inbox) = change.inbox {
        parts.push(format!("{} inbox", inbox.as_str()));
    }
    parts.join(", ")
}

/// Threads applying a bulk change: each waits for its write's commit most of the time, and
/// the store's writer commits what all of them queued meanwhile together (group commit: one
/// fsync for many accounts).
const CONSENT_THREADS: usize = 32;

/// The same change for many accounts (distinct JIDs), concurrently. The first account goes
/// alone, so that a change every account would refuse (a provider not registered) is said
/// once. Accounts that fail are listed; the others keep their change.
fn change_many(
    store: &(dyn strait_store::Store + Sync),
    jids: &[String],
    change: &ConsentChange,
) -> Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some((first, rest)) = jids.split_first() else {
        return Ok(());
    };
    let mut failed = Vec::new();
    match consent::change(store, first, change, now_ms()) {
        Ok(_) => {}
        Err(
            e @ (consent::ConsentError::UnknownProvider(_) | consent::ConsentError::Terminated(_)),
        ) => {
            return Err(e.into());
        }
        Err(e) => failed.push(anyhow::anyhow!("{first}: {e}")),
    }
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(failed);
    std::thread::scope(|s| {
        for _ in 0..CONSENT_THREADS.min(rest.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(jid) = rest.get(i) else {
                        break;
                    };
                    if let Err(e) = consent::change(store, jid, change, now_ms()) {
                        errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(anyhow::anyhow!("{jid}: {e}"));
                    }
                }
            });
        }
    });
    let failed = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if !failed.is_empty() {
        bail!(
            "{} of {} account(s) changed, {} failed:\n  {}",
            jids.len() - failed.len(),
            jids.len(),
            failed.len(),
            list(&failed)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_store::{ConsentStore, SqliteStore};

    fn config() -> Config {
        let mut c = Config {
            domains: vec!["host.example".into()],
            ..Config::default()
        };
        c.auth.scram_iterations = 4096;
        c
    }

    #[test]
    fn jid_lists_skip_blanks_and_comments_and_refuse_bad_jids_whole() {
        let c = config();
        let text = "# opted in\n a@host.example \n\nB@Host.Example\na@host.example\n";
        let inputs: Vec<String> = jid_lines(text).collect();
        assert_eq!(
            inputs,
            ["a@host.example", "B@Host.Example", "a@host.example"]
        );
        assert_eq!(
            account_jids(&c, &inputs).unwrap(),
            ["a@host.example", "b@host.example"]
        );
        let bad = [
            "a@host.example",
            "c@elsewhere.example",
            "d@host.example/phone",
        ]
        .map(String::from);
        let e = account_jids(&c, &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("2 of the 3 JID(s) are not accounts' JIDs; nothing was changed"),
            "{e}"
        );
        assert!(
            e.contains("\"c@elsewhere.example\"") && e.contains("d@host.example/phone"),
            "{e}"
        );
        // One JID keeps its own error.
        let e = account_jids(&c, &["x@elsewhere.example".into()])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("nothing was changed"), "{e}");
        assert!(account_jids(&c, &[]).is_err());
    }

    #[test]
    fn many_accounts_change_at_once_and_failures_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let c = config();
        let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
        let mut p = Provider::new("acme", "Acme", vec!["acme.example".into()]);
        p.issuer = None;
        let op = Actor {
            name: "test",
            now_ms: 1,
        };
        registry::add(&c, &store, &p, op).unwrap();
        let jids: Vec<String> = (0..40).map(|i| format!("u{i}@host.example")).collect();
        for j in &jids {
            accounts::add_user(&c, &store, j, "pw-secret").unwrap();
        }
        let on = ConsentChange {
            enabled: Some(true),
            allow: vec!["acme".into()],
            ..Default::default()
        };
        change_many(&store, &jids, &on).unwrap();
        for j in &jids {
            let got = store.consent(j).unwrap();
            assert!(got.enabled && got.providers == ["acme"], "{j}: {got:?}");
        }
        assert_eq!(describe(&on), "third-party chats on, allowed acme");

        // An unknown provider is refused once, before any account changes.
        let nope = ConsentChange {
            allow: vec!["nope".into()],
            ..Default::default()
        };
        let e = change_many(&store, &jids, &nope).unwrap_err().to_string();
        assert_eq!(e, "no provider nope is registered");

        // Accounts that do not exist fail; the others change.
        let mut some = jids[..3].to_vec();
        some.push("ghost@host.example".into());
        let off = ConsentChange {
            enabled: Some(false),
            ..Default::default()
        };
        let e = change_many(&store, &some, &off).unwrap_err().to_string();
        assert!(e.starts_with("3 of 4 account(s) changed, 1 failed"), "{e}");
        assert!(
            e.contains("ghost@host.example: account ghost@host.example not found"),
            "{e}"
        );
        assert!(!store.consent(&jids[0]).unwrap().enabled);
        assert!(store.consent(&jids[3]).unwrap().enabled);
        assert_eq!(
            consent_line(&jids[0], &store.consent(&jids[0]).unwrap()),
            "u0@host.example: third-party chats off, separate inbox, from: acme"
        );
        store.close().unwrap();
    }
}
