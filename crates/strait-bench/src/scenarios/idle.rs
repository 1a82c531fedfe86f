//! `idle`: log in C connections, hold them for D seconds, and read the server's memory before,
//! after login, at the end of the hold and after closing: memory per connection is the
//! difference over C.

use super::{Ctx, LoginJob, Outcome, close_all, login_failure_error, login_many, resource};
use crate::cli::{IdleArgs, KeepaliveKind};
use crate::client::{ConnError, Connection};
use crate::report::{IdleResults, KeepaliveResults, Results};
use crate::stats::{Failures, Latency, PhaseMeter};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Keepalive counters shared by the connections.
#[derive(Default)]
struct Keepalives {
    sent: AtomicU64,
    answered: AtomicU64,
    rtt: Latency,
}

pub(crate) async fn run(ctx: &Ctx, a: &IdleArgs) -> anyhow::Result<Outcome> {
    let c = a.connections;
    let k = a.resources_per_account;
    ctx.check_accounts(c.div_ceil(k))?;
    let hold = seconds("--duration", a.duration)?;
    let keepalive = if a.keepalive > 0.0 {
        Some(seconds("--keepalive", a.keepalive)?)
    } else {
        None
    };
    let probe = &ctx.probe;
    let rss_before = probe.server().map(|s| s.rss_kib);
    let gen_before = probe.own().rss_kib;

    let meter = PhaseMeter::start("login", probe);
    let jobs = (0..c)
        .map(|i| LoginJob {
            slot: i as usize,
            account: i / k,
            resource: resource(ctx, i),
            presence: a.presence,
            provider: false,
        })
        .collect();
    let (conns, logins) = login_many(ctx, jobs, true).await;
    let mut phases = vec![meter.finish(probe)];
    let conns: Vec<Connection> = conns.into_iter().flatten().collect();
    let established = conns.len() as u64;
    let rss_after_login = phases[0].server_rss_end_kib;
    if let Some(error) = login_failure_error(ctx, &logins) {
        close_all(conns).await;
        return Ok(Outcome {
            logins,
            phases,
            results: Results::None {},
            failures: Default::default(),
            warnings: vec![],
            error: Some(error),
        });
    }

    // Hold: every connection waits in its own task, answering the server and sending
    // keepalives, until told to stop.
    let meter = PhaseMeter::start("hold", probe);
    let (stop_tx, stop) = watch::channel(false);
    let failures = Arc::new(Failures::new());
    let kas = Arc::new(Keepalives::default());
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for (i, conn) in conns.into_iter().enumerate() {
        let stop = stop.clone();
        let kas = kas.clone();
        // Keepalives are spread evenly over the interval, not sent all at once.
        let keepalive = keepalive.map(|every| {
            let offset = every.mul_f64((i as f64 * 0.618_034) % 1.0);
            (every, started + offset, a.keepalive_kind)
        });
        let ping = format!(
            "<iq type='get' to='{}' id='ka-",
            crate::xml::escape(&ctx.settings.domain)
        );
        tasks.spawn(hold_one(conn, stop, keepalive, kas, ctx.base, ping));
    }
    tokio::time::sleep(hold).await;
    // The end-of-hold reading is taken with every connection still open.
    let hold_phase = meter.finish(probe);
    let rss_end_of_hold = hold_phase.server_rss_end_kib;
    let gen_end_of_hold = hold_phase.gen_rss_end_kib;
    phases.push(hold_phase);

    let meter = PhaseMeter::start("close", probe);
    let _ = stop_tx.send(true);
    let mut alive = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("hold task") {
            Ok(()) => alive += 1,
            Err(e) => failures.add(
                &format!("dropped during hold: {}", e.kind()),
                &e.to_string(),
            ),
        }
    }
    // Let the server finish tearing sessions down before the last reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    phases.push(meter.finish(probe));
    let rss_after_close = phases[2].server_rss_end_kib;

    let per_conn = match (rss_before, rss_end_of_hold) {
        (Some(b), Some(e)) if alive > 0 => Some((e as f64 - b as f64) / alive as f64),
        _ => None,
    };
    let keepalive_results = keepalive.map(|every| KeepaliveResults {
        kind: match a.keepalive_kind {
            KeepaliveKind::Whitespace => "whitespace".into(),
            KeepaliveKind::Ping => "ping".into(),
        },
        interval_s: every.as_secs_f64(),
        sent: kas.sent.load(Ordering::Relaxed),
        answered: kas.answered.load(Ordering::Relaxed),
        rtt: kas.rtt.summary(),
    });
    let mut warnings = vec![];
    if !probe.has_server() {
        warnings.push("no --server-pid: server memory per connection not measured".into());
    }
    Ok(Outcome {
        logins,
        phases,
        results: Results::Idle(IdleResults {
            connections_requested: c,
            connections_established: established,
            connections_alive_at_end: alive,
            dropped_during_hold: established - alive,
            hold_s: hold.as_secs_f64(),
            server_rss_before_kib: rss_before,
            server_rss_after_login_kib: rss_after_login,
            server_rss_end_of_hold_kib: rss_end_of_hold,
            server_rss_after_close_kib: rss_after_close,
            server_kib_per_connection: per_conn,
            generator_kib_per_connection: if alive > 0 {
                (gen_end_of_hold as f64 - gen_before as f64) / alive as f64
            } else {
                0.0
            },
            keepalive: keepalive_results,
        }),
        failures: failures.counts(),
        warnings,
        error: None,
    })
}

/// A positive, finite number of seconds.
pub(crate) fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        anyhow::bail!("{name} must be a positive number of seconds, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Holds one connection until `stop`; then closes it. An error: the connection was lost.
async fn hold_one(
    mut conn: Connection,
    mut stop: watch::Receiver<bool>,
    keepalive: Option<(Duration, Instant, KeepaliveKind)>,
    kas: Arc<Keepalives>,
    base: std::time::Instant,
    ping_head: String,
) -> Result<(), ConnError> {
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next = keepalive.map(|(_, first, _)| first).unwrap_or(far);
    let timer = tokio::time::sleep_until(next);
    tokio::pin!(timer);
    let mut rtts = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = conn.fill() => {
                r?;
                let now_us = crate::stats::duration_us(base.elapsed());
                conn.process(|el, _| {
                    if !el.is("iq") || el.attr_raw("type") != Some(b"result") {
                        return;
                    }
                    let sent = el
                        .attr_raw("id")
                        .and_then(|id| id.strip_prefix(b"ka-"))
                        .and_then(|t| std::str::from_utf8(t).ok()?.parse::<u64>().ok());
                    if let Some(sent) = sent {
                        rtts.push(now_us.saturating_sub(sent));
                    }
                })?;
                if !rtts.is_empty() {
                    kas.answered.fetch_add(rtts.len() as u64, Ordering::Relaxed);
                    kas.rtt.record_us(&rtts);
                    rtts.clear();
                }
                conn.flush().await?;
                conn.shrink();
            }
            () = &mut timer, if keepalive.is_some() => {
                let Some((every, _, kind)) = keepalive else { unreachable!() };
                match kind {
                    KeepaliveKind::Whitespace => conn.out.push(b' '),
                    KeepaliveKind::Ping => {
                        let t = crate::stats::duration_us(base.elapsed());
                        conn.out.extend_from_slice(ping_head.as_bytes());
                        conn.out.extend_from_slice(
                            format!("{t}'><ping xmlns='urn:xmpp:ping'/></iq>").as_bytes(),
                        );
                    }
                }
                conn.flush().await?;
                conn.shrink();
                kas.sent.fetch_add(1, Ordering::Relaxed);
                next += every;
                timer.as_mut().reset(next);
            }
            _ = stop.changed() => break,
        }
    }
    conn.close(super::CLOSE_WAIT).await;
    Ok(())
}
