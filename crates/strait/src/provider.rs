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
    /// The account.
    jid: String,
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
    let jid = accounts::account_jid(&config, &a.jid)?;
    let change = ConsentChange {
        enabled: a.flags.enabled(),
        inbox: a.flags.inbox_mode()?,
        allow: a.flags.allow,
        deny: a.flags.deny,
    };
    let store = open_store(&config)?;
    let r = if change == ConsentChange::default() {
        use strait_store::{AccountStore, ConsentStore};
        match store.account_exists(&jid) {
            Ok(false) => Err(consent::ConsentError::NoAccount(jid.clone())),
            Ok(true) => store.consent(&jid).map_err(consent::ConsentError::from),
            Err(e) => Err(e.into()),
        }
    } else {
        consent::change(&store, &jid, &change, now_ms())
    };
    store.close()?;
    let c = r?;
    println!(
        "{jid}: third-party chats {}, {} inbox, from: {}",
        if c.enabled { "on" } else { "off" },
        c.inbox.as_str(),
        if c.providers.is_empty() {
            "no provider".into()
        } else {
            c.providers.join(", ")
        }
    );
    Ok(())
}
