//! `strait bench`: a load generator for XMPP servers (Strait, Prosody, ejabberd, …).
//!
//! Its client is the SDK's lean connection (strait-client's `conn`, re-exported here as
//! [`client`]) on tokio and rustls: connections from many loopback source addresses, STARTTLS
//! or direct TLS, SCRAM-SHA-256/SHA-1 ([`scram`]), bind, XEP-0198; incoming streams are cut
//! into stanzas by a byte scanner ([`xml`]) rather than parsed, so that the generator costs
//! little on a machine it shares with the server it measures.
//! Scenarios (`idle`, `pingpong`, `messages`, `login-storm`) each run for a bounded time or
//! count and produce a [`report::Report`]: latency histograms (HDR), throughput, failures by
//! kind, and the server's and the generator's CPU time and memory read from /proc
//! ([`stats`]). `messages` can make half of each pair a third-party provider's user, logged in
//! with a token the generator signs ([`third_party`]), so that every message crosses the
//! interop boundary. See docs/benchmarks.md, "Load generator".
#![forbid(unsafe_code)]

pub mod cli;
pub mod report;
pub mod stats;
pub mod third_party;
pub use strait_client::{conn as client, scram, xml};

mod scenarios;

pub use cli::{
    AccountArgs, BenchArgs, BenchCommand, ConnectArgs, GenAccountsArgs, GenProviderArgs, IdleArgs,
    LoginStormArgs, MessagesArgs, OutputArgs, PingpongArgs, ThirdPartyArgs,
};
pub use report::Report;

use anyhow::Context as _;
use clap::Parser;
use client::{ClientSettings, Verify};
use report::GeneratorInfo;
use scenarios::{Ctx, Outcome};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The bench commands on their own, for [`parse_args`].
#[derive(Parser)]
#[command(name = "strait bench")]
struct Standalone {
    #[command(subcommand)]
    command: BenchCommand,
}

/// Parses `strait bench` arguments (without the program name and `bench`), e.g.
/// `["messages", "--rate", "100", …]`.
pub fn parse_args<I, T>(args: I) -> Result<BenchArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from("strait bench"))
        .chain(args.into_iter().map(Into::into));
    Standalone::try_parse_from(argv).map(|s| BenchArgs { command: s.command })
}

/// Runs `strait bench …` as the binary does: its own runtime, the report on stdout (and as
/// JSON with `--json`). An error when the scenario could not run (after printing what was
/// measured).
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    if let BenchCommand::GenAccounts(g) = &args.command {
        return gen_accounts(g, &mut std::io::stdout().lock());
    }
    if let BenchCommand::GenProvider(g) = &args.command {
        return third_party::gen_provider(g, &mut std::io::stdout().lock());
    }
    let (connect, output) = parts(&args.command);
    let threads = connect.threads as usize;
    let connections = match &args.command {
        BenchCommand::Idle(a) => a.connections,
        BenchCommand::Pingpong(a) => 2 * a.pairs,
        BenchCommand::Messages(a) => 2 * a.pairs + a.offline_accounts.unwrap_or(0),
        BenchCommand::LoginStorm(a) => u64::from(a.connect.login_concurrency),
        BenchCommand::GenAccounts(_) | BenchCommand::GenProvider(_) => 0,
    };
    let fd_warning = raise_fd_limit(connections + 256);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    if connect.busy_poll {
        // A task that only yields keeps each worker from parking: the runtime then polls
        // for I/O without blocking, and nothing ever has to wake its threads.
        for _ in 0..threads.max(1) {
            runtime.spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    let mut report = runtime.block_on(run(&args))?;
    if let Some(w) = fd_warning {
        report.warnings.insert(0, w);
    }
    print!("{}", report.to_text());
    std::io::stdout().flush()?;
    if let Some(path) = &output.json {
        std::fs::write(path, report::to_json(&report, true) + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Connections still closing are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match report.error {
        Some(e) => anyhow::bail!("the {} scenario could not run: {e}", report.scenario),
        None => Ok(()),
    }
}

fn parts(cmd: &BenchCommand) -> (&ConnectArgs, &OutputArgs) {
    match cmd {
        BenchCommand::Idle(a) => (&a.connect, &a.output),
        BenchCommand::Pingpong(a) => (&a.connect, &a.output),
        BenchCommand::Messages(a) => (&a.connect, &a.output),
        BenchCommand::LoginStorm(a) => (&a.connect, &a.output),
        BenchCommand::GenAccounts(_) | BenchCommand::GenProvider(_) => {
            unreachable!("gen-accounts and gen-provider run no scenario")
        }
    }
}

/// Raises the open-file limit to `want` if it is lower (up to the hard limit, or beyond it
/// when allowed); a warning when it stays lower.
fn raise_fd_limit(want: u64) -> Option<String> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft >= want {
        return None;
    }
    if hard < want {
        // Only a privileged process may raise the hard limit; try, and settle for less.
        let _ = rlimit::Resource::NOFILE.set(want, want);
    }
    let _ = rlimit::increase_nofile_limit(want);
    let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
    (soft < want).then(|| {
        format!(
            "the open-file limit is {soft}, below the {want} this run needs: raise it (ulimit -n)"
        )
    })
}

/// Runs a scenario in the current runtime and returns its report (also when it could not
/// run: then `error` says why). Setup errors (no such CA file, server unreachable by name,
/// bad options) are errors.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (scenario, parameters, accounts) = match &args.command {
        BenchCommand::Idle(a) => ("idle", serde_json::to_value(a)?, &a.accounts),
        BenchCommand::Pingpong(a) => ("pingpong", serde_json::to_value(a)?, &a.accounts),
        BenchCommand::Messages(a) => ("messages", serde_json::to_value(a)?, &a.accounts),
        BenchCommand::LoginStorm(a) => ("login-storm", serde_json::to_value(a)?, &a.accounts),
        BenchCommand::GenAccounts(_) | BenchCommand::GenProvider(_) => {
            anyhow::bail!("gen-accounts and gen-provider are not scenarios")
        }
    };
    let (connect, output) = parts(&args.command);
    let verify = match (&connect.ca_file, connect.insecure) {
        (_, true) => Verify::Insecure,
        (Some(p), false) => Verify::CaFile(p.clone()),
        (None, false) => anyhow::bail!("give --ca-file PEM (or --insecure, loopback only)"),
    };
    if matches!(verify, Verify::Insecure) {
        eprintln!("strait bench: --insecure: the server certificate is NOT verified");
    }
    let settings = settings(connect, &verify).await?;
    let keys = settings.keys.clone();
    let third_party = match &args.command {
        BenchCommand::Messages(a) => third_party_logins(&a.third_party, &settings)?,
        _ => None,
    };
    let ctx = Ctx {
        settings: Arc::new(settings),
        third_party,
        accounts: accounts.clone(),
        probe: stats::Probe::new(output.server_pids.clone())?,
        run_tag: format!("{:08x}", rand::random::<u32>()),
        concurrency: connect.login_concurrency as usize,
        max_login_failure_pct: output.max_login_failures,
        base: Instant::now(),
    };
    let outcome: Outcome = match &args.command {
        BenchCommand::Idle(a) => scenarios::idle::run(&ctx, a).await?,
        BenchCommand::Pingpong(a) => scenarios::pingpong::run(&ctx, a).await?,
        BenchCommand::Messages(a) => scenarios::messages::run(&ctx, a).await?,
        BenchCommand::LoginStorm(a) => scenarios::login_storm::run(&ctx, a).await?,
        BenchCommand::GenAccounts(_) | BenchCommand::GenProvider(_) => unreachable!(),
    };
    if let Some(path) = &connect.scram_cache {
        keys.save(path)
            .with_context(|| format!("saving the SCRAM key cache {}", path.display()))?;
    }
    let mut warnings = outcome.warnings;
    for p in &outcome.phases {
        if !connect.busy_poll && p.gen_cpu_pct_core > 90.0 * f64::from(connect.threads) {
            warnings.push(format!(
                "the generator used {:.0} % of a core in phase {:?} with {} thread(s): figures of \
                 that phase may be bounded by the generator, not the server",
                p.gen_cpu_pct_core, p.name, connect.threads
            ));
        }
    }
    Ok(Report {
        tool: "strait-bench",
        version: env!("CARGO_PKG_VERSION"),
        scenario,
        label: output.label.clone(),
        started_unix_s,
        server_pids: output.server_pids.clone(),
        parameters,
        generator: GeneratorInfo {
            threads: connect.threads,
            busy_poll: connect.busy_poll,
            source_ips: ctx.settings.source_ips,
            tls_verification: client::describe_verify(&verify),
            run_tag: ctx.run_tag.clone(),
        },
        logins: outcome.logins,
        phases: outcome.phases,
        results: outcome.results,
        failures: outcome.failures,
        warnings,
        error: outcome.error,
    })
}

/// Client settings from the command line: the server's address resolved, TLS configured,
/// the SCRAM key cache loaded.
async fn settings(c: &ConnectArgs, verify: &Verify) -> anyhow::Result<ClientSettings> {
    let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((c.host.as_str(), c.port))
        .await
        .with_context(|| format!("resolving {}", c.host))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let server = *addrs
        .first()
        .with_context(|| format!("{} has no address", c.host))?;
    let name = c.tls_name.clone().unwrap_or_else(|| c.domain.clone());
    let tls_name = rustls::pki_types::ServerName::try_from(name.clone())
        .with_context(|| format!("{name:?} is not a valid TLS server name"))?;
    if !(c.login_timeout.is_finite() && c.login_timeout > 0.0) {
        anyhow::bail!("--login-timeout must be a positive number of seconds");
    }
    let keys = match &c.scram_cache {
        Some(p) => scram::KeyCache::load(p)
            .with_context(|| format!("reading the SCRAM key cache {}", p.display()))?,
        None => scram::KeyCache::new(),
    };
    Ok(ClientSettings {
        server,
        domain: c.domain.clone(),
        tls_name,
        direct_tls: c.direct_tls,
        tls: client::tls_config(verify, c.direct_tls)?,
        mechanism: c.mechanism.map(Into::into),
        allow_plain: c.allow_plain,
        source_ips: c.source_ips,
        stream_management: c.sm,
        login_timeout: Duration::from_secs_f64(c.login_timeout),
        keys: Arc::new(keys),
    })
}

/// How the provider's users log in, when `messages` runs in third-party mode: streams to the
/// provider domain (whose certificate must name it; the same TLS settings and CA as the
/// platform's), SASL OAUTHBEARER with tokens signed by the provider's key for the platform's
/// domain.
fn third_party_logins(
    t: &ThirdPartyArgs,
    platform: &ClientSettings,
) -> anyhow::Result<Option<scenarios::ThirdParty>> {
    let (Some(domain), Some(key), Some(issuer)) = (
        &t.third_party_domain,
        &t.third_party_key,
        &t.third_party_issuer,
    ) else {
        return Ok(None);
    };
    if domain.eq_ignore_ascii_case(&platform.domain) {
        anyhow::bail!("--third-party-domain must differ from the platform's --domain");
    }
    let tls_name = rustls::pki_types::ServerName::try_from(domain.clone())
        .with_context(|| format!("{domain:?} is not a valid domain"))?;
    let signer = third_party::TokenSigner::new(
        third_party::load_key(key)?,
        &t.third_party_kid,
        issuer,
        &platform.domain,
    );
    let settings = ClientSettings {
        domain: domain.clone(),
        tls_name,
        mechanism: Some(scram::Mechanism::OAuthBearer),
        ..platform.clone()
    };
    Ok(Some(scenarios::ThirdParty {
        settings: Arc::new(settings),
        signer: Arc::new(signer),
    }))
}

/// `gen-accounts`: `{prefix}{n}[@domain] {password}` lines.
pub fn gen_accounts(g: &GenAccountsArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    if g.password_template.trim().is_empty() {
        anyhow::bail!("--password-template is empty");
    }
    if g.password_template.contains(['\n', '\r']) {
        anyhow::bail!("--password-template must be one line");
    }
    let mut w = std::io::BufWriter::new(out);
    for n in g.first..g.first + g.count {
        let password = g.password_template.replace("{n}", &n.to_string());
        match &g.domain {
            Some(d) => writeln!(w, "{}{n}@{d} {password}", g.prefix)?,
            None => writeln!(w, "{}{n} {password}", g.prefix)?,
        }
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_line() {
        let a = parse_args([
            "messages",
            "--insecure",
            "--rate",
            "250",
            "--pairs",
            "3",
            "--server-pid",
            "1",
            "--server-pid",
            "2",
            "--offline-fraction",
            "0.1",
        ])
        .unwrap();
        let BenchCommand::Messages(m) = a.command else {
            panic!("not messages")
        };
        assert_eq!(m.rate, 250.0);
        assert_eq!(m.pairs, 3);
        assert_eq!(m.output.server_pids, [1, 2]);
        assert_eq!(m.accounts.password(7), "pw-7");
        assert_eq!(m.accounts.user(7), "bench7");
        // Certificates must be checked, or not checked on purpose.
        assert!(parse_args(["idle", "--connections", "1"]).is_err());
        assert!(parse_args(["idle", "-c", "1", "--insecure", "--ca-file", "x"]).is_err());
    }

    #[test]
    fn parses_third_party_options() {
        let a = parse_args([
            "messages",
            "--insecure",
            "--third-party-domain",
            "chat.acme.test",
            "--third-party-key",
            "k.pem",
            "--third-party-issuer",
            "https://acme.test",
        ])
        .unwrap();
        let BenchCommand::Messages(m) = a.command else {
            panic!("not messages")
        };
        assert_eq!(m.third_party.third_party_kid, "k1");
        assert_eq!(
            m.third_party.third_party_domain.as_deref(),
            Some("chat.acme.test")
        );
        assert!(!m.omemo, "implied at run time, not on the command line");
        // The domain needs the key and the issuer; they need the domain.
        let base = ["messages", "--insecure"];
        let with = |more: &[&str]| parse_args(base.iter().chain(more).copied());
        assert!(with(&["--third-party-domain", "d"]).is_err());
        assert!(with(&["--third-party-domain", "d", "--third-party-key", "k"]).is_err());
        assert!(with(&["--third-party-key", "k"]).is_err());
        assert!(with(&["--third-party-issuer", "i"]).is_err());
        assert!(with(&["--omemo"]).is_ok());
        let g = parse_args(["gen-provider", "--out", "d", "--der", "--kid", "k2"]).unwrap();
        let BenchCommand::GenProvider(g) = g.command else {
            panic!("not gen-provider")
        };
        assert!(g.der && g.kid == "k2");
    }

    #[test]
    fn generates_account_lines() {
        let g = GenAccountsArgs {
            prefix: "b".into(),
            count: 3,
            first: 10,
            password_template: "pw-{n}-x".into(),
            domain: Some("localhost".into()),
        };
        let mut out = Vec::new();
        gen_accounts(&g, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "b10@localhost pw-10-x\nb11@localhost pw-11-x\nb12@localhost pw-12-x\n"
        );
    }
}
