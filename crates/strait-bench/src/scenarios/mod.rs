//! The scenarios and what they share: the run context and logging many connections in with
//! bounded concurrency.

pub(crate) mod idle;
pub(crate) mod login_storm;
pub(crate) mod messages;
pub(crate) mod pingpong;

use crate::cli::AccountArgs;
use crate::client::{self, ClientSettings, ConnError, Connection, Login};
use crate::report::{LoginStats, Results};
use crate::stats::{FailureCounts, Failures, Latency, Phase, Probe};
use crate::third_party::TokenSigner;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long a polite close waits for the server's `</stream:stream>`.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a third-party provider's users log in (`messages` in third-party mode).
pub(crate) struct ThirdParty {
    /// The provider domain's streams, SASL OAUTHBEARER.
    pub settings: Arc<ClientSettings>,
    pub signer: Arc<TokenSigner>,
}

/// What every scenario works with.
pub(crate) struct Ctx {
    pub settings: Arc<ClientSettings>,
    /// Set when some logins are a provider's users'.
    pub third_party: Option<ThirdParty>,
    pub accounts: AccountArgs,
    pub probe: Probe,
    /// Marks this run's message ids and resources.
    pub run_tag: String,
    pub concurrency: usize,
    /// Percentage of failed logins that makes idle and login-storm count as not run.
    pub max_login_failure_pct: f64,
    /// The clock timestamps in message ids count from (one process: one clock).
    pub base: Instant,
}

impl Ctx {
    /// Refuses to start when the scenario needs more accounts than `--accounts` says exist.
    pub fn check_accounts(&self, needed: u64) -> anyhow::Result<()> {
        if let Some(have) = self.accounts.accounts
            && needed > have
        {
            anyhow::bail!(
                "this scenario needs {needed} accounts ({p}{a}…{p}{b}) but --accounts is {have}; \
                 provision more: strait bench gen-accounts --prefix {p} --first {a} --count {needed} \
                 --domain {d} | strait user import",
                p = self.accounts.prefix,
                a = self.accounts.first,
                b = self.accounts.first + needed - 1,
                d = self.settings.domain,
            );
        }
        Ok(())
    }

    /// Microseconds since [`Ctx::base`].
    pub fn now_us(&self, at: Instant) -> u64 {
        crate::stats::duration_us(at.saturating_duration_since(self.base))
    }
}

/// What a scenario hands back to be made into a report.
pub(crate) struct Outcome {
    pub logins: LoginStats,
    pub phases: Vec<Phase>,
    pub results: Results,
    pub failures: FailureCounts,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

/// One login to make.
pub(crate) struct LoginJob {
    /// Picks the source address.
    pub slot: usize,
    /// Account number (offset from --first).
    pub account: u64,
    pub resource: String,
    pub presence: bool,
    /// The provider's user `{prefix}{n}@{third-party domain}` (OAUTHBEARER, a token minted
    /// for it) rather than the platform account `{prefix}{n}@{domain}` (its password).
    pub provider: bool,
}

/// Logs in every job with at most `ctx.concurrency` in flight. With `keep`, returns the
/// connections in job order (`None` where the login failed); without, closes each as soon as
/// it is bound. Login latency runs from the moment a login may start (its concurrency slot)
/// to bind (and XEP-0198 enabled).
pub(crate) async fn login_many(
    ctx: &Ctx,
    jobs: Vec<LoginJob>,
    keep: bool,
) -> (Vec<Option<Connection>>, LoginStats) {
    let semaphore = Arc::new(Semaphore::new(ctx.concurrency));
    let latency = Latency::new();
    let failures = Failures::new();
    let mut mechanisms: BTreeMap<String, u64> = BTreeMap::new();
    let n = jobs.len();
    let started = Instant::now();
    let mut logins = JoinSet::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let semaphore = semaphore.clone();
        let user = ctx.accounts.user(job.account);
        let (settings, password) = match (&ctx.third_party, job.provider) {
            (Some(tp), true) => (tp.settings.clone(), tp.signer.mint(&user)),
            (None, true) => unreachable!("a provider's user without a provider"),
            (_, false) => (ctx.settings.clone(), ctx.accounts.password(job.account)),
        };
        logins.spawn(async move {
            let _permit = semaphore.acquire_owned().await.expect("never closed");
            let t = Instant::now();
            let who = Login {
                user: &user,
                password: &password,
                resource: &job.resource,
                presence: job.presence,
            };
            let r = client::login(&settings, job.slot, &who).await;
            (i, t.elapsed(), r)
        });
    }
    let mut conns: Vec<Option<Connection>> = (0..n).map(|_| None).collect();
    let mut closing = JoinSet::new();
    while let Some(joined) = logins.join_next().await {
        let (i, took, r) = joined.expect("login task");
        match r {
            Ok(mut c) => {
                latency.record(took);
                *mechanisms.entry(c.mechanism.name().to_owned()).or_default() += 1;
                if keep {
                    c.shrink();
                    conns[i] = Some(c);
                } else {
                    closing.spawn(c.close(CLOSE_WAIT));
                }
            }
            Err(e) => failures.add(&e.kind, &e.detail),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    while closing.join_next().await.is_some() {}
    let failed = failures.total();
    let succeeded = n as u64 - failed;
    let stats = LoginStats {
        attempted: n as u64,
        succeeded,
        failed,
        wall_s: wall,
        per_s: if wall > 0.0 {
            succeeded as f64 / wall
        } else {
            0.0
        },
        latency: latency.summary(),
        failures: failures.counts(),
        mechanisms,
    };
    (conns, stats)
}

/// A ping round trip on every connection, concurrently: once it returns, the server has
/// processed everything sent before (initial presence in particular).
pub(crate) async fn sync_all(
    conns: Vec<Connection>,
    timeout: Duration,
) -> Result<Vec<Connection>, ConnError> {
    let n = conns.len();
    let mut set = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        set.spawn(async move {
            match tokio::time::timeout(timeout, c.sync()).await {
                Ok(Ok(())) => Ok((i, c)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnError::Protocol("no answer to a ping".into())),
            }
        });
    }
    let mut out: Vec<Option<Connection>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, c) = joined.expect("sync task")?;
        out[i] = Some(c);
    }
    Ok(out
        .into_iter()
        .map(|c| c.expect("every task answered"))
        .collect())
}

/// Logins of platform accounts `0..n` with presence, connection i as account i.
pub(crate) fn everyone(ctx: &Ctx, n: u64) -> Vec<LoginJob> {
    platform_logins(ctx, 0..n)
}

/// Logins of the platform accounts `accounts` with presence, connection i as account i.
pub(crate) fn platform_logins(ctx: &Ctx, accounts: std::ops::Range<u64>) -> Vec<LoginJob> {
    accounts
        .map(|i| LoginJob {
            slot: i as usize,
            account: i,
            resource: resource(ctx, i),
            presence: true,
            provider: false,
        })
        .collect()
}

/// Logs in every job, for a scenario that needs every one of them online, and waits until
/// the server has settled each. `Err` is the outcome to return when a login failed (the
/// connections made are closed); the phase is the login phase.
pub(crate) async fn login_everyone(
    ctx: &Ctx,
    jobs: Vec<LoginJob>,
    scenario: &str,
    warnings: &[String],
) -> anyhow::Result<Result<(Vec<Connection>, LoginStats, Phase), Outcome>> {
    let probe = &ctx.probe;
    let meter = crate::stats::PhaseMeter::start("login", probe);
    let (conns, logins) = login_many(ctx, jobs, true).await;
    let conns: Vec<Connection> = conns.into_iter().flatten().collect();
    if logins.failed > 0 {
        close_all(conns).await;
        let error = format!(
            "{scenario} needs every account online; {} of {} logins failed: {}",
            logins.failed,
            logins.attempted,
            describe_failures(&logins.failures)
        );
        return Ok(Err(Outcome {
            logins,
            phases: vec![meter.finish(probe)],
            results: Results::None {},
            failures: Default::default(),
            warnings: warnings.to_vec(),
            error: Some(error),
        }));
    }
    let conns = sync_all(conns, ctx.settings.login_timeout)
        .await
        .map_err(|e| anyhow::anyhow!("after login: {e}"))?;
    Ok(Ok((conns, logins, meter.finish(probe))))
}

/// Closes connections concurrently, politely.
pub(crate) async fn close_all(conns: impl IntoIterator<Item = Connection>) {
    let mut set = JoinSet::new();
    for c in conns {
        set.spawn(c.close(CLOSE_WAIT));
    }
    while set.join_next().await.is_some() {}
}

/// The resource of connection `i` of this run.
pub(crate) fn resource(ctx: &Ctx, i: u64) -> String {
    format!("{}-{i}", ctx.run_tag)
}

/// Waits until `done()` or `limit`, or until `progress()` has not moved for `stall`.
pub(crate) async fn wait_until(
    limit: Duration,
    stall: Duration,
    done: impl Fn() -> bool,
    progress: impl Fn() -> u64,
) {
    let start = Instant::now();
    let mut last = progress();
    let mut last_change = Instant::now();
    while !done() && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let p = progress();
        if p != last {
            last = p;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            break;
        }
    }
}

/// The login failure rule of idle and login-storm: an error past the threshold.
pub(crate) fn login_failure_error(ctx: &Ctx, stats: &LoginStats) -> Option<String> {
    if stats.attempted == 0 || stats.failed == 0 {
        return None;
    }
    let pct = 100.0 * stats.failed as f64 / stats.attempted as f64;
    (pct > ctx.max_login_failure_pct).then(|| {
        format!(
            "{} of {} logins failed ({pct:.1} % > --max-login-failures {} %): {}",
            stats.failed,
            stats.attempted,
            ctx.max_login_failure_pct,
            describe_failures(&stats.failures)
        )
    })
}

/// "3 × sasl: not-authorized (e.g. …); 1 × …".
pub(crate) fn describe_failures(f: &FailureCounts) -> String {
    f.by_kind
        .iter()
        .map(|(k, n)| {
            let ex = f.examples.get(k).map(String::as_str).unwrap_or("");
            if ex.is_empty() || ex == k {
                format!("{n} × {k}")
            } else {
                format!("{n} × {k} (e.g. {ex})")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
