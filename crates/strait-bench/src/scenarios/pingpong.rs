//! `pingpong`: P pairs; in each, the first account sends a message to the second, which
//! answers it on receipt; the first sends the next one when the answer arrives (closed loop,
//! one message in flight per pair). Round trips per second and round-trip latency.

use super::idle::seconds;
use super::{Ctx, Outcome, everyone, login_everyone};
use crate::cli::PingpongArgs;
use crate::client::{ConnError, Connection};
use crate::report::{PingpongResults, Results};
use crate::stats::{Failures, Latency, PhaseMeter, duration_us};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the pairs share.
struct Shared {
    rtt: Latency,
    round_trips: AtomicU64,
    errors: Failures,
    base: Instant,
}

pub(crate) async fn run(ctx: &Ctx, a: &PingpongArgs) -> anyhow::Result<Outcome> {
    let pairs = a.pairs;
    ctx.check_accounts(2 * pairs)?;
    let duration = seconds("--duration", a.duration)?;
    let probe = &ctx.probe;

    let (conns, logins, login_phase) =
        match login_everyone(ctx, everyone(ctx, 2 * pairs), "pingpong", &[]).await? {
            Ok(x) => x,
            Err(outcome) => return Ok(outcome),
        };
    let mut phases = vec![login_phase];

    let meter = PhaseMeter::start("run", probe);
    let shared = Arc::new(Shared {
        rtt: Latency::new(),
        round_trips: AtomicU64::new(0),
        errors: Failures::new(),
        base: ctx.base,
    });
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let domain = crate::xml::escape(&ctx.settings.domain).into_owned();
    for (i, conn) in conns.into_iter().enumerate() {
        let i = i as u64;
        let partner = format!("{}@{domain}", ctx.accounts.user(i ^ 1));
        let tag = format!("{}.{}.", ctx.run_tag, i / 2);
        let (stop, shared) = (stop.clone(), shared.clone());
        if i.is_multiple_of(2) {
            tasks.spawn(initiator(conn, stop, partner, tag, shared));
        } else {
            tasks.spawn(responder(conn, stop, partner, format!("{}.", ctx.run_tag)));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let _ = stop_tx.send(true);
    let window = started.elapsed().as_secs_f64();
    phases.push(meter.finish(probe));
    let failures = Failures::new();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.expect("pingpong task") {
            failures.add(&format!("connection lost: {}", e.kind()), &e.to_string());
        }
    }
    let round_trips = shared.round_trips.load(Ordering::Relaxed);
    Ok(Outcome {
        logins,
        phases,
        results: Results::Pingpong(PingpongResults {
            pairs,
            duration_s: window,
            round_trips,
            round_trips_per_s: round_trips as f64 / window,
            rtt: shared.rtt.summary(),
            errors: shared.errors.counts(),
        }),
        failures: failures.counts(),
        warnings: vec![],
        error: None,
    })
}

/// Queues ping `seq` of a pair: its id is `{run}.{pair}.{seq}.{µs since base}`.
fn ping(out: &mut Vec<u8>, to: &str, tag: &str, seq: u64, t_us: u64) {
    let _ = write!(
        out,
        "<message to='{to}' type='chat' id='{tag}{seq}.{t_us}'><body>ping</body></message>"
    );
}

async fn initiator(
    mut conn: Connection,
    mut stop: watch::Receiver<bool>,
    to: String,
    tag: String,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    let mut seq = 0u64;
    ping(
        &mut conn.out,
        &to,
        &tag,
        seq,
        duration_us(shared.base.elapsed()),
    );
    conn.flush().await?;
    let mut rtts = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = conn.fill() => {
                r?;
                let now_us = duration_us(shared.base.elapsed());
                conn.process(|el, out| {
                    if !el.is("message") {
                        return;
                    }
                    let Some(rest) = el.attr_raw("id").and_then(|id| id.strip_prefix(tag.as_bytes())) else {
                        return;
                    };
                    let Some((got, sent)) = parse_seq_time(rest) else { return };
                    if got != seq {
                        return;
                    }
                    if el.attr_raw("type") == Some(b"error") {
                        shared.errors.add(&format!("message error: {}", el.error_condition()), "");
                    } else {
                        rtts.push(now_us.saturating_sub(sent));
                    }
                    seq += 1;
                    ping(out, &to, &tag, seq, duration_us(shared.base.elapsed()));
                })?;
                if !rtts.is_empty() {
                    shared.round_trips.fetch_add(rtts.len() as u64, Ordering::Relaxed);
                    shared.rtt.record_us(&rtts);
                    rtts.clear();
                }
                conn.flush().await?;
            }
            _ = stop.changed() => break,
        }
    }
    conn.close(super::CLOSE_WAIT).await;
    Ok(())
}

/// `{seq}.{t}` of an id.
fn parse_seq_time(rest: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(rest).ok()?;
    let (seq, t) = s.split_once('.')?;
    Some((seq.parse().ok()?, t.parse().ok()?))
}

async fn responder(
    mut conn: Connection,
    mut stop: watch::Receiver<bool>,
    to: String,
    // `{run}.`: only this run's pings are answered.
    run_tag: String,
) -> Result<(), ConnError> {
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = conn.fill() => {
                r?;
                conn.process(|el, out| {
                    if !el.is("message") || el.attr_raw("type") == Some(b"error") {
                        return;
                    }
                    let Some(id) = el.attr_raw("id") else { return };
                    if !id.starts_with(run_tag.as_bytes()) {
                        return;
                    }
                    out.extend_from_slice(b"<message to='");
                    out.extend_from_slice(to.as_bytes());
                    out.extend_from_slice(b"' type='chat' id='");
                    out.extend_from_slice(id);
                    out.extend_from_slice(b"'><body>pong</body></message>");
                })?;
                conn.flush().await?;
            }
            _ = stop.changed() => break,
        }
    }
    conn.close(super::CLOSE_WAIT).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_ids_round_trip() {
        let mut out = Vec::new();
        ping(&mut out, "b@x", "tag.3.", 7, 123_456);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "<message to='b@x' type='chat' id='tag.3.7.123456'><body>ping</body></message>"
        );
        assert_eq!(parse_seq_time(b"7.123456"), Some((7, 123_456)));
        assert_eq!(parse_seq_time(b"7"), None);
    }
}
