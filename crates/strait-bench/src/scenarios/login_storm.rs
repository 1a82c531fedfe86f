//! `login-storm`: N logins, at most L at once, each connection closed as soon as it is bound:
//! logins per second, login latency, failures by reason.

use super::{Ctx, LoginJob, Outcome, login_failure_error, login_many, resource};
use crate::cli::LoginStormArgs;
use crate::report::{LoginStormResults, Results};
use crate::stats::PhaseMeter;

pub(crate) async fn run(ctx: &Ctx, a: &LoginStormArgs) -> anyhow::Result<Outcome> {
    if a.logins == 0 {
        anyhow::bail!("--logins must be at least 1");
    }
    // Account n mod --accounts: without --accounts, one account per login.
    let accounts = ctx.accounts.accounts.unwrap_or(a.logins).min(a.logins);
    if accounts == 0 {
        anyhow::bail!("--accounts must be at least 1");
    }
    ctx.check_accounts(accounts)?;
    let meter = PhaseMeter::start("storm", &ctx.probe);
    let jobs = (0..a.logins)
        .map(|i| LoginJob {
            slot: i as usize,
            account: i % accounts,
            resource: resource(ctx, i),
            presence: a.presence,
            provider: false,
        })
        .collect();
    let (_, logins) = login_many(ctx, jobs, false).await;
    let phases = vec![meter.finish(&ctx.probe)];
    let error = login_failure_error(ctx, &logins);
    let mut warnings = vec![];
    let in_flight = (ctx.concurrency as u64).min(a.logins);
    let concurrent_per_account = in_flight.div_ceil(accounts);
    if concurrent_per_account > 1 {
        warnings.push(format!(
            "up to {concurrent_per_account} concurrent sessions per account ({accounts} accounts, \
             {in_flight} logins in flight): servers cap resources per account (Strait: 10)"
        ));
    }
    Ok(Outcome {
        results: Results::LoginStorm(LoginStormResults {
            logins: a.logins,
            concurrency: ctx.concurrency as u32,
            succeeded: logins.succeeded,
            failed: logins.failed,
            logins_per_s: logins.per_s,
            latency: logins.latency.clone(),
        }),
        logins,
        phases,
        failures: Default::default(),
        warnings,
        error,
    })
}
