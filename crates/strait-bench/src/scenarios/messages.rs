//! `messages`: a steady rate of one-to-one chat messages between online pairs, open loop.
//!
//! Every message has a scheduled send time, fixed before the run: message g (counting over
//! all senders) is due at T0 + g/R. Each sender sends its messages when they are due, whatever
//! happened to the ones before, and stamps the *scheduled* time into the id
//! (`{run}.{g}.{µs}`), so latency counts from when the message should have gone: a stall in
//! the server (or the generator) shows up as latency of every message it delays, not as fewer
//! samples (no coordinated omission). A fraction goes to accounts that are offline; they log
//! in at the end and every message must arrive. Loss is sent − received, reported always.
//!
//! With `--omemo` a message carries an OMEMO 0.3 `<encrypted/>` element (ciphertext-shaped
//! random base64, never decrypted) and a fallback body instead of a plain body. In third-party
//! mode (`--third-party-domain`), pair k is the platform account `{prefix}{k}@{domain}` and
//! the provider's user `{prefix}{k}@{provider domain}`, who logs in with OAUTHBEARER, so that
//! every message crosses the interop boundary (consent, the encryption rule, the origin
//! stamp); that mode implies `--omemo` (plaintext does not cross) and has no offline share.

use super::idle::seconds;
use super::{
    CLOSE_WAIT, Ctx, LoginJob, Outcome, everyone, login_everyone, login_many, resource, wait_until,
};
use crate::cli::MessagesArgs;
use crate::client::{ConnError, Connection};
use crate::report::{MessagesResults, Results};
use crate::stats::{Failures, Latency, PhaseMeter, Timeline, duration_us};
use crate::xml::Element;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Messages an offline account is planned to hold at most, by default.
const OFFLINE_PER_ACCOUNT: f64 = 500.0;
/// How long the count of arrivals may stand still before draining gives up.
const STALL: Duration = Duration::from_secs(2);
/// The pacer wakes at most this often: at high rates, the messages due within one tick are
/// released together (each still counted from its own scheduled time).
const PACER_TICK: Duration = Duration::from_micros(250);

/// Counters shared by all connections.
struct Shared {
    base: Instant,
    /// `{run}.`
    tag: String,
    sent_online: AtomicU64,
    sent_offline: AtomicU64,
    /// Online connections that have sent all they were scheduled to send.
    senders_done: AtomicU64,
    received_online: AtomicU64,
    received_offline: AtomicU64,
    stale: AtomicU64,
    foreign: AtomicU64,
    /// Third-party mode: whether to look for the server's origin stamp on arrivals.
    count_origins: bool,
    /// Our messages that arrived with the origin stamp (from a provider's user).
    origin_stamped: AtomicU64,
    latency: Latency,
    /// The same latencies by second of the schedule.
    timeline: Timeline,
    lag: Latency,
    errors: Failures,
}

/// One sender's share of the schedule.
struct Plan {
    /// This sender's number, 0..senders.
    index: u64,
    senders: u64,
    rate: f64,
    start_us: u64,
    end_us: u64,
    /// The partner's bare JID (escaped).
    partner: String,
    /// The offline accounts' bare JIDs (escaped).
    offline: Arc<Vec<String>>,
    /// Fraction of messages for offline accounts, in millionths.
    offline_ppm: u64,
    /// What the message carries (its children, escaped).
    content: Arc<str>,
}

impl Plan {
    /// The global number of this sender's message `j`.
    fn global(&self, j: u64) -> u64 {
        self.index + j * self.senders
    }

    /// When message `g` is due, µs since base.
    fn due(&self, g: u64) -> u64 {
        self.start_us + (g as f64 * 1e6 / self.rate) as u64
    }

    /// The offline account message `g` goes to, if it is one of the offline fraction: the
    /// fraction is exact over all senders (message g is offline when ⌊(g+1)f⌋ > ⌊gf⌋), and
    /// offline messages go round-robin over the offline accounts.
    fn offline_target(&self, g: u64) -> Option<&str> {
        if self.offline.is_empty() {
            return None;
        }
        let before = g * self.offline_ppm / 1_000_000;
        let after = (g + 1) * self.offline_ppm / 1_000_000;
        (after > before)
            .then(|| self.offline[(before % self.offline.len() as u64) as usize].as_str())
    }
}

pub(crate) async fn run(ctx: &Ctx, a: &MessagesArgs) -> anyhow::Result<Outcome> {
    let duration = seconds("--duration", a.duration)?;
    let drain = seconds("--drain", a.drain)?;
    if !(a.rate.is_finite() && a.rate > 0.0) {
        anyhow::bail!("--rate must be positive, not {}", a.rate);
    }
    if !(a.ack_delay_ms.is_finite() && (0.0..=60_000.0).contains(&a.ack_delay_ms)) {
        anyhow::bail!(
            "--ack-delay-ms must be from 0 to 60000, not {}",
            a.ack_delay_ms
        );
    }
    let ack_delay = Duration::from_secs_f64(a.ack_delay_ms / 1000.0);
    if !(0.0..1.0).contains(&a.offline_fraction) {
        anyhow::bail!(
            "--offline-fraction must be at least 0 and below 1, not {}",
            a.offline_fraction
        );
    }
    let third_party = ctx.third_party.is_some();
    if third_party && a.offline_fraction > 0.0 {
        anyhow::bail!(
            "--offline-fraction must be 0 with --third-party-domain: offline messages across the \
             boundary are not part of this mode (run it with --offline-fraction 0, and measure \
             offline delivery without --third-party-domain)"
        );
    }
    let omemo = a.omemo || third_party;
    let senders = 2 * a.pairs;
    let expected_offline = a.rate * duration.as_secs_f64() * a.offline_fraction;
    let offline_accounts = if a.offline_fraction == 0.0 {
        0
    } else {
        a.offline_accounts
            .unwrap_or_else(|| (expected_offline / OFFLINE_PER_ACCOUNT).ceil().max(1.0) as u64)
            .max(1)
    };
    // Third-party mode: pair k is platform account k and the provider's user k.
    ctx.check_accounts(if third_party {
        a.pairs
    } else {
        senders + offline_accounts
    })?;
    let probe = &ctx.probe;
    let mut warnings = Vec::new();
    if offline_accounts > 0 && expected_offline / offline_accounts as f64 > 1000.0 {
        warnings.push(format!(
            "about {:.0} messages per offline account: past the server's offline quota \
             (1000 by default in Strait) senders get errors",
            expected_offline / offline_accounts as f64
        ));
    }

    let jobs = if third_party {
        (0..senders)
            .map(|i| LoginJob {
                slot: i as usize,
                account: i / 2,
                resource: resource(ctx, i),
                presence: true,
                provider: i % 2 == 1,
            })
            .collect()
    } else {
        everyone(ctx, senders)
    };
    let (conns, logins, login_phase) =
        match login_everyone(ctx, jobs, "messages", &warnings).await? {
            Ok(x) => x,
            Err(outcome) => return Ok(outcome),
        };
    let mut phases = vec![login_phase];

    let shared = Arc::new(Shared {
        base: ctx.base,
        tag: format!("{}.", ctx.run_tag),
        sent_online: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
        sent_offline: AtomicU64::new(0),
        received_online: AtomicU64::new(0),
        received_offline: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        count_origins: third_party,
        origin_stamped: AtomicU64::new(0),
        latency: Latency::new(),
        timeline: Timeline::new(),
        lag: Latency::new(),
        errors: Failures::new(),
    });
    let domain = crate::xml::escape(&ctx.settings.domain).into_owned();
    let jid = |n: u64| format!("{}@{domain}", crate::xml::escape(&ctx.accounts.user(n)));
    let offline_jids: Arc<Vec<String>> =
        Arc::new((senders..senders + offline_accounts).map(jid).collect());
    // The bare JID of online connection i.
    let online_jid = |i: u64| match &ctx.third_party {
        Some(tp) if i % 2 == 1 => format!(
            "{}@{}",
            crate::xml::escape(&ctx.accounts.user(i / 2)),
            crate::xml::escape(&tp.settings.domain)
        ),
        Some(_) => jid(i / 2),
        None => jid(i),
    };
    let content: Arc<str> = if omemo {
        omemo_content(a.body_size)
    } else {
        format!("<body>{}</body>", body_text(a.body_size))
    }
    .into();
    // A short pause so that every sender is waiting on its timer when the schedule starts.
    let start_us = ctx.now_us(Instant::now()) + 100_000;
    let end_us = start_us + duration_us(duration);

    let meter = PhaseMeter::start("run", probe);
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let online_tasks = conns.len() as u64;
    let wakes: Vec<Arc<Notify>> = (0..conns.len()).map(|_| Arc::new(Notify::new())).collect();
    let pacer = {
        let (wakes, base) = (wakes.clone(), ctx.base);
        let schedule = Plan {
            index: 0,
            senders,
            rate: a.rate,
            start_us,
            end_us,
            partner: String::new(),
            offline: Arc::new(Vec::new()),
            offline_ppm: 0,
            content: content.clone(),
        };
        let timer = PreciseTimer::new()?;
        tokio::spawn(async move { pace(&schedule, base, &wakes, timer).await })
    };
    for ((i, mut conn), wake) in conns.into_iter().enumerate().zip(wakes) {
        conn.set_ack_delay(ack_delay);
        let i = i as u64;
        let plan = Plan {
            index: i,
            senders,
            rate: a.rate,
            start_us,
            end_us,
            partner: online_jid(i ^ 1),
            offline: offline_jids.clone(),
            offline_ppm: (a.offline_fraction * 1e6).round() as u64,
            content: content.clone(),
        };
        tasks.spawn(online(conn, stop.clone(), plan, wake, shared.clone()));
    }
    tokio::time::sleep_until((ctx.base + Duration::from_micros(end_us)).into()).await;
    phases.push(meter.finish(probe));
    match pacer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warnings.push(format!("the pacer's timer failed: {e}")),
        Err(e) => warnings.push(format!("the pacer stopped: {e}")),
    }

    // Drain: wait for what is still in flight.
    let meter = PhaseMeter::start("drain", probe);
    let s = shared.clone();
    // Every connection must have written its last scheduled message first: a connection whose
    // timer fires just after the run's end would otherwise count a message as sent after the
    // drain already saw the counts even, and stop the recipient before it arrives. A message
    // the server refused is accounted for by its error.
    wait_until(
        drain,
        STALL,
        || {
            s.senders_done.load(Ordering::Acquire) >= online_tasks
                && s.received_online.load(Ordering::Relaxed) + s.errors.total()
                    >= s.sent_online.load(Ordering::Relaxed)
        },
        || s.received_online.load(Ordering::Relaxed) + s.errors.total(),
    )
    .await;
    let drain_phase = meter.finish(probe);
    let drain_s = drain_phase.wall_s;
    phases.push(drain_phase);
    let _ = stop_tx.send(true);
    let failures = Failures::new();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.expect("sender task") {
            failures.add(&format!("connection lost: {}", e.kind()), &e.to_string());
        }
    }

    // The offline accounts log in and fetch what was stored for them.
    let mut offline_fetch_s = 0.0;
    if offline_accounts > 0 {
        let meter = PhaseMeter::start("offline fetch", probe);
        let jobs = super::platform_logins(ctx, senders..senders + offline_accounts);
        let (conns, fetch_logins) = login_many(ctx, jobs, true).await;
        for (kind, n) in &fetch_logins.failures.by_kind {
            for _ in 0..*n {
                failures.add(&format!("offline account login: {kind}"), kind);
            }
        }
        let (stop_tx, stop) = watch::channel(false);
        let mut fetchers = JoinSet::new();
        for conn in conns.into_iter().flatten() {
            fetchers.spawn(fetch(conn, stop.clone(), shared.clone()));
        }
        let s = shared.clone();
        wait_until(
            drain,
            STALL,
            || s.received_offline.load(Ordering::Relaxed) >= s.sent_offline.load(Ordering::Relaxed),
            || s.received_offline.load(Ordering::Relaxed),
        )
        .await;
        let _ = stop_tx.send(true);
        while let Some(joined) = fetchers.join_next().await {
            if let Err(e) = joined.expect("fetch task") {
                failures.add(
                    &format!("offline account lost: {}", e.kind()),
                    &e.to_string(),
                );
            }
        }
        let phase = meter.finish(probe);
        offline_fetch_s = phase.wall_s;
        phases.push(phase);
    }

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let sent_online = load(&shared.sent_online);
    let sent_offline = load(&shared.sent_offline);
    let received_online = load(&shared.received_online);
    let received_offline = load(&shared.received_offline);
    let window = duration.as_secs_f64();
    let lag = shared.lag.summary();
    if lag.p99_ms > 10.0 {
        warnings.push(format!(
            "the generator was behind its schedule (send lag p99 {:.1} ms): latency includes its \
             own delay; use more --threads or a lower --rate",
            lag.p99_ms
        ));
    }
    let lost = (sent_online + sent_offline) as i64 - (received_online + received_offline) as i64;
    if lost != 0 {
        warnings.push(format!("{lost} message(s) not delivered"));
    }
    let errors = shared.errors.counts();
    let mut error = None;
    if errors.total > 0 {
        let refusals = super::describe_failures(&errors);
        if received_online + received_offline == 0 {
            // Nothing got through: the figures measure refusals, not deliveries.
            error = Some(format!(
                "the server refused every message ({} errors: {refusals})",
                errors.total
            ));
        } else {
            warnings.push(format!(
                "the server refused {} message(s): {refusals}",
                errors.total
            ));
        }
    }
    Ok(Outcome {
        logins,
        phases,
        results: Results::Messages(MessagesResults {
            pairs: a.pairs,
            online_accounts: senders,
            offline_accounts,
            target_rate: a.rate,
            duration_s: window,
            body_bytes: a.body_size,
            mode: if third_party {
                "third-party"
            } else {
                "platform-only"
            },
            omemo,
            content_bytes: content.len(),
            ack_delay_ms: a.ack_delay_ms,
            offline_fraction: a.offline_fraction,
            sent: sent_online + sent_offline,
            sent_online,
            sent_offline,
            achieved_send_rate: (sent_online + sent_offline) as f64 / window,
            received_online,
            lost_online: sent_online as i64 - received_online as i64,
            delivered_per_s: received_online as f64 / window,
            received_offline,
            lost_offline: sent_offline as i64 - received_offline as i64,
            latency: shared.latency.summary(),
            latency_by_second: shared.timeline.seconds(),
            send_lag: lag,
            errors,
            stale_received: load(&shared.stale),
            origin_stamped: load(&shared.origin_stamped),
            foreign_received: load(&shared.foreign),
            drain_s,
            offline_fetch_s,
        }),
        failures: failures.counts(),
        warnings,
        error,
    })
}

/// A body of `n` bytes of readable filler.
fn body_text(n: usize) -> String {
    const FILLER: &[u8] = b"the quick brown fox jumps over the lazy dog ";
    FILLER.iter().cycle().take(n).map(|&b| b as char).collect()
}

/// The namespace of OMEMO 0.3 (XEP-0384 0.3, the Signal protocol's wire format).
const NS_OMEMO: &str = "eu.siacs.conversations.axolotl";
/// The plaintext that travels beside the ciphertext for clients without OMEMO (the platform
/// replaces it with its own when the message crosses the boundary).
const OMEMO_FALLBACK: &str = "This message is OMEMO encrypted, which your client cannot show.";

/// An OMEMO message's children as a client sends them to one recipient device: the fallback
/// body and the `<encrypted/>` element with a header (sender device, one key for the
/// recipient's device, the IV) and a payload of `payload_len` bytes of base64 (rounded up to
/// a multiple of 4). The bytes are random, not ciphertext: the server never decrypts.
fn omemo_content(payload_len: usize) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use rand::{Rng as _, RngCore as _};
    let mut rng = rand::thread_rng();
    let mut random = |n: usize| {
        let mut b = vec![0u8; n];
        rng.fill_bytes(&mut b);
        B64.encode(b)
    };
    // base64 of n bytes is 4⌈n/3⌉ characters: the fewest bytes that fill `payload_len`.
    let payload = random(payload_len.div_ceil(4) * 3);
    // An encrypted Signal message (version, protobuf with the ratchet key, counters and the
    // 32-byte message key and its tag, then the 8-byte MAC) is about 60 bytes.
    let key = random(60);
    let iv = random(12);
    let (sid, rid) = (rng.gen_range(1..i32::MAX), rng.gen_range(1..i32::MAX));
    format!(
        "<body>{OMEMO_FALLBACK}</body><encrypted xmlns='{NS_OMEMO}'><header sid='{sid}'>\
         <key rid='{rid}'>{key}</key><iv>{iv}</iv></header><payload>{payload}</payload>\
         </encrypted>"
    )
}

/// What a received message is to this run.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// One of ours, scheduled at this many µs since base.
    Ours(u64),
    /// A bounce: the message with this id came back as an error.
    Error,
    /// From an earlier run of the generator.
    Stale,
    /// Not from the generator.
    Foreign,
    /// Not a message.
    Ignored,
}

fn classify(el: &Element<'_>, tag: &str) -> Received {
    if !el.is("message") {
        return Received::Ignored;
    }
    if el.attr_raw("type") == Some(b"error") {
        return Received::Error;
    }
    let Some(id) = el.attr_raw("id") else {
        return Received::Foreign;
    };
    if let Some(rest) = id.strip_prefix(tag.as_bytes()) {
        let due = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split_once('.'))
            .and_then(|(_, t)| t.parse().ok());
        return match due {
            Some(t) => Received::Ours(t),
            None => Received::Foreign,
        };
    }
    // Earlier runs: a run tag (8 hex digits) and a dot.
    let looks_like_ours =
        id.len() > 9 && id[8] == b'.' && id[..8].iter().all(u8::is_ascii_hexdigit);
    if looks_like_ours {
        Received::Stale
    } else {
        Received::Foreign
    }
}

/// Tallies of one batch of received stanzas, added to [`Shared`] once per batch.
#[derive(Default)]
struct Tally {
    ours: u64,
    stale: u64,
    foreign: u64,
    stamped: u64,
    latencies: Vec<u64>,
    /// (due, latency) of each of `latencies`, µs.
    dated: Vec<(u64, u64)>,
}

impl Tally {
    fn add(&mut self, el: &Element<'_>, shared: &Shared, now_us: Option<u64>) {
        match classify(el, &shared.tag) {
            Received::Ours(due) => {
                self.ours += 1;
                if shared.count_origins && has_origin_stamp(el) {
                    self.stamped += 1;
                }
                if let Some(now) = now_us {
                    let latency = now.saturating_sub(due);
                    self.latencies.push(latency);
                    self.dated.push((due, latency));
                }
            }
            Received::Error => {
                // The server's reason, when it gave one (the boundary policy always does).
                let text = el
                    .child("error")
                    .and_then(|e| e.child("text"))
                    .map(|t| t.text().into_owned())
                    .unwrap_or_default();
                shared
                    .errors
                    .add(&format!("message error: {}", el.error_condition()), &text)
            }
            Received::Stale => self.stale += 1,
            Received::Foreign => self.foreign += 1,
            Received::Ignored => {}
        }
    }

    fn commit(&mut self, shared: &Shared, received: &AtomicU64) {
        if self.ours > 0 {
            received.fetch_add(self.ours, Ordering::Relaxed);
        }
        if self.stale > 0 {
            shared.stale.fetch_add(self.stale, Ordering::Relaxed);
        }
        if self.foreign > 0 {
            shared.foreign.fetch_add(self.foreign, Ordering::Relaxed);
        }
        if self.stamped > 0 {
            shared
                .origin_stamped
                .fetch_add(self.stamped, Ordering::Relaxed);
        }
        shared.latency.record_us(&self.latencies);
        shared.timeline.record_us(&self.dated);
        self.latencies.clear();
        self.dated.clear();
        self.ours = 0;
        self.stale = 0;
        self.foreign = 0;
        self.stamped = 0;
    }
}

/// The namespace of the platform's origin stamp (docs/interop.md §5, rule 6).
const NS_INTEROP: &str = "urn:strait:interop:0";

/// Whether a message carries the platform's origin stamp.
fn has_origin_stamp(el: &Element<'_>) -> bool {
    el.children()
        .any(|c| c.is("origin") && c.attr("xmlns").as_deref() == Some(NS_INTEROP))
}

/// A one-shot timer with nanosecond deadlines: a timerfd, which the runtime's epoll watches
/// like any socket. Written here rather than using tokio's timer: that one rounds deadlines up
/// to whole milliseconds and its driver parks in `epoll_wait` with a timeout in whole
/// milliseconds, which made the generator's own send lag 1 to 2 ms, nearly all of the
/// measured latency at low rates. (A thread of its own, sleeping in nanosleep, was precise
/// too, but waking the runtime's thread from it cost a context switch per wake-up.)
struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    fn new() -> std::io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // `AsyncFd::new` is deprecated as unsound for types whose `as_raw_fd` may change or
        // be closed behind the registration's back; an `OwnedFd` moved into the `AsyncFd`
        // is neither, which is the contract of its `unsafe` replacement (`register`), and
        // this crate forbids `unsafe`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(PreciseTimer { fd })
    }

    /// Waits until `at`.
    async fn sleep_until(&self, at: Instant) -> std::io::Result<()> {
        let Some(left) = at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(());
        };
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = Itimerspec {
            it_interval: zero,
            it_value: Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos().into(),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &value)?;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Wakes each sender when a message of its share of the schedule is due, on a
/// [`PreciseTimer`], at most once per [`PACER_TICK`]. A sender woken early (it never is)
/// would just wait again. The schedule is the one the senders hold ([`Plan::due`]), global
/// message `g` belonging to sender `g mod senders`.
async fn pace(
    schedule: &Plan,
    base: Instant,
    wakes: &[Arc<Notify>],
    timer: PreciseTimer,
) -> std::io::Result<()> {
    let mut g = 0u64;
    let mut last_wake: Option<Instant> = None;
    loop {
        let due = schedule.due(g);
        if due >= schedule.end_us {
            return Ok(());
        }
        let mut at = base + Duration::from_micros(due);
        if let Some(last) = last_wake {
            at = at.max(last + PACER_TICK);
        }
        timer.sleep_until(at).await?;
        let now = Instant::now();
        last_wake = Some(now);
        let now_us = duration_us(now.saturating_duration_since(base));
        // Each sender sends everything due by the time it runs, so one wake per sender
        // per round is enough (a `Notify` keeps one permit).
        let first = g;
        while schedule.due(g) <= now_us && schedule.due(g) < schedule.end_us {
            if g - first < schedule.senders
                && let Some(w) = wakes.get((g % schedule.senders) as usize)
            {
                w.notify_one();
            }
            g += 1;
        }
    }
}

/// An online account: sends its share of the schedule to its partner (or to an offline
/// account) when the pacer wakes it, and receives its partner's.
async fn online(
    mut conn: Connection,
    mut stop: watch::Receiver<bool>,
    plan: Plan,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    let mut j = 0u64;
    let mut due = plan.due(plan.global(0));
    let mut sending = due < plan.end_us;
    if !sending {
        shared.senders_done.fetch_add(1, Ordering::Release);
    }
    let mut tally = Tally::default();
    let mut lags = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        // Answers to ack requests held back (`--ack-delay-ms`), when one waits.
        let ack_due = conn.ack_due();
        tokio::select! {
            r = conn.pump() => {
                r?;
                let now = duration_us(shared.base.elapsed());
                conn.process(|el, _| tally.add(&el, &shared, Some(now)))?;
                tally.commit(&shared, &shared.received_online);
            }
            () = sleep_until_maybe(ack_due), if ack_due.is_some() => {
                conn.send_due_acks(Instant::now());
            }
            () = wake.notified(), if sending => {
                let now = duration_us(shared.base.elapsed());
                let (mut to_online, mut to_offline) = (0u64, 0u64);
                while due <= now && due < plan.end_us {
                    let g = plan.global(j);
                    let to = match plan.offline_target(g) {
                        Some(o) => {
                            to_offline += 1;
                            o
                        }
                        None => {
                            to_online += 1;
                            plan.partner.as_str()
                        }
                    };
                    let _ = write!(
                        conn.out,
                        "<message to='{to}' type='chat' id='{}{g}.{due}'>{}</message>",
                        shared.tag, plan.content
                    );
                    lags.push(now - due);
                    j += 1;
                    due = plan.due(plan.global(j));
                }
                shared.sent_online.fetch_add(to_online, Ordering::Relaxed);
                shared.sent_offline.fetch_add(to_offline, Ordering::Relaxed);
                shared.lag.record_us(&lags);
                lags.clear();
                if due >= plan.end_us {
                    sending = false;
                    shared.senders_done.fetch_add(1, Ordering::Release);
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Whatever is still queued goes out before the stream ends.
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.flush()).await;
    conn.close(CLOSE_WAIT).await;
    Ok(())
}

/// Sleeps until `at` (never, for `None`).
async fn sleep_until_maybe(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// An offline account, now logged in: counts what was stored for it.
async fn fetch(
    mut conn: Connection,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    let mut tally = Tally::default();
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = conn.fill() => {
                r?;
                conn.process(|el, _| tally.add(&el, &shared, None))?;
                tally.commit(&shared, &shared.received_offline);
                conn.flush().await?;
            }
            _ = stop.changed() => break,
        }
    }
    conn.close(CLOSE_WAIT).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(index: u64, senders: u64, offline: usize, ppm: u64) -> Plan {
        Plan {
            index,
            senders,
            rate: 1000.0,
            start_us: 1_000,
            end_us: 1_000 + 1_000_000,
            partner: "p@x".into(),
            offline: Arc::new((0..offline).map(|i| format!("o{i}@x")).collect()),
            offline_ppm: ppm,
            content: "<body>b</body>".into(),
        }
    }

    #[test]
    fn schedule_is_even_over_senders() {
        let plans: Vec<Plan> = (0..4).map(|i| plan(i, 4, 0, 0)).collect();
        let mut dues: Vec<u64> = plans
            .iter()
            .flat_map(|p| (0..250).map(move |j| p.due(p.global(j))))
            .collect();
        dues.sort();
        // 1000 messages at 1000/s: one every millisecond from the start, none repeated.
        for (g, d) in dues.iter().enumerate() {
            assert_eq!(*d, 1_000 + g as u64 * 1_000);
        }
    }

    #[test]
    fn offline_fraction_is_exact_and_round_robin() {
        let p = plan(0, 1, 3, 100_000);
        let targets: Vec<&str> = (0..1000).filter_map(|g| p.offline_target(g)).collect();
        assert_eq!(targets.len(), 100);
        for o in ["o0@x", "o1@x", "o2@x"] {
            let n = targets.iter().filter(|t| **t == o).count();
            assert!((33..=34).contains(&n), "{o}: {n}");
        }
        assert_eq!(plan(0, 1, 0, 100_000).offline_target(9), None);
    }

    #[test]
    fn classifies_received_messages() {
        let tag = "0badcafe.";
        let el = |s: &'static str| Element::parse(s.as_bytes()).unwrap();
        assert_eq!(
            classify(
                &el("<message type='chat' id='0badcafe.12.3456'><body/></message>"),
                tag
            ),
            Received::Ours(3456)
        );
        assert_eq!(
            classify(&el("<message id='deadbeef.1.2'><body/></message>"), tag),
            Received::Stale
        );
        assert_eq!(
            classify(&el("<message id='hello'><body/></message>"), tag),
            Received::Foreign
        );
        assert_eq!(
            classify(&el("<message type='error' id='0badcafe.1.2'/>"), tag),
            Received::Error
        );
        assert_eq!(classify(&el("<presence/>"), tag), Received::Ignored);
        assert_eq!(body_text(50).len(), 50);
    }

    #[test]
    fn omemo_content_is_an_encrypted_element_with_a_fallback_body() {
        use base64::Engine as _;
        for (asked, payload_len) in [(1500, 1500), (1501, 1504), (4, 4), (0, 0)] {
            let content = omemo_content(asked);
            let message = format!("<message>{content}</message>");
            let m = Element::parse(message.as_bytes()).unwrap();
            let names: Vec<&[u8]> = m.children().map(|c| c.local_name()).collect();
            assert_eq!(names, [&b"body"[..], b"encrypted"], "{content}");
            assert_eq!(m.child("body").unwrap().text(), OMEMO_FALLBACK);
            let enc = m.child("encrypted").unwrap();
            assert_eq!(enc.attr("xmlns").as_deref(), Some(NS_OMEMO));
            let header = enc.child("header").unwrap();
            let sid: u32 = header.attr("sid").unwrap().parse().unwrap();
            assert!(sid > 0);
            let key = header.child("key").unwrap();
            assert!(key.attr("rid").unwrap().parse::<u32>().unwrap() > 0);
            let b64 = base64::engine::general_purpose::STANDARD;
            assert_eq!(b64.decode(key.text().as_bytes()).unwrap().len(), 60);
            assert_eq!(
                b64.decode(header.child("iv").unwrap().text().as_bytes())
                    .unwrap()
                    .len(),
                12
            );
            let payload = enc.child("payload").unwrap().text();
            assert_eq!(payload.len(), payload_len, "asked {asked}");
            b64.decode(payload.as_bytes()).unwrap();
        }
        // Random, like ciphertext: two messages differ.
        assert_ne!(omemo_content(64), omemo_content(64));
    }
}
