//! The report of a run: one structure, printed as a table and written as JSON.

use crate::stats::{FailureCounts, Percentiles, Phase};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: &'static str,
    pub label: Option<String>,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix_s: u64,
    pub server_pids: Vec<u32>,
    /// Every option of the run.
    pub parameters: serde_json::Value,
    pub generator: GeneratorInfo,
    pub logins: LoginStats,
    pub phases: Vec<Phase>,
    pub results: Results,
    /// Failures after login (connections dropped, stream errors, …).
    pub failures: FailureCounts,
    pub warnings: Vec<String>,
    /// Why the scenario could not run; the exit status is then 1.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GeneratorInfo {
    pub threads: u32,
    /// `--busy-poll`: the generator's threads never sleep (its CPU reads 100 % per thread).
    pub busy_poll: bool,
    pub source_ips: u32,
    pub tls_verification: String,
    /// Tags this run's message ids and resources, to tell its traffic from earlier runs'.
    pub run_tag: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoginStats {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub wall_s: f64,
    /// Successful logins per second of the login phase.
    pub per_s: f64,
    /// Connect to bound resource (and XEP-0198 enabled), per successful login.
    pub latency: Percentiles,
    pub failures: FailureCounts,
    /// SASL mechanisms used, with counts.
    pub mechanisms: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Results {
    Idle(IdleResults),
    Pingpong(PingpongResults),
    Messages(MessagesResults),
    LoginStorm(LoginStormResults),
    /// The scenario stopped before it produced results.
    None {},
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleResults {
    pub connections_requested: u64,
    pub connections_established: u64,
    pub connections_alive_at_end: u64,
    pub dropped_during_hold: u64,
    pub hold_s: f64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_login_kib: Option<u64>,
    pub server_rss_end_of_hold_kib: Option<u64>,
    pub server_rss_after_close_kib: Option<u64>,
    /// (RSS at the end of the hold − RSS before login) / connections alive, KiB.
    pub server_kib_per_connection: Option<f64>,
    /// The generator's own RSS growth per connection, KiB.
    pub generator_kib_per_connection: f64,
    pub keepalive: Option<KeepaliveResults>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KeepaliveResults {
    pub kind: String,
    pub interval_s: f64,
    pub sent: u64,
    /// Ping answers received (pings only).
    pub answered: u64,
    /// Ping round trips (pings only).
    pub rtt: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PingpongResults {
    pub pairs: u64,
    pub duration_s: f64,
    pub round_trips: u64,
    pub round_trips_per_s: f64,
    pub rtt: Percentiles,
    /// Message errors received, by condition.
    pub errors: FailureCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MessagesResults {
    pub pairs: u64,
    pub online_accounts: u64,
    pub offline_accounts: u64,
    pub target_rate: f64,
    pub duration_s: f64,
    pub body_bytes: usize,
    /// `platform-only`, or `third-party`: each pair a platform account and a provider's user,
    /// every message across the interop boundary.
    pub mode: &'static str,
    /// Messages carried an OMEMO `<encrypted/>` element (payload of body_bytes of base64) and
    /// a fallback body, not a plain body.
    pub omemo: bool,
    /// Bytes of a message's children as sent (body, or fallback body and `<encrypted/>`).
    pub content_bytes: usize,
    /// How long the online accounts waited before answering ack requests (`--ack-delay-ms`).
    pub ack_delay_ms: f64,
    pub offline_fraction: f64,
    pub sent: u64,
    pub sent_online: u64,
    pub sent_offline: u64,
    /// Messages sent per second of the sending window.
    pub achieved_send_rate: f64,
    pub received_online: u64,
    /// sent_online − received_online (negative would mean duplicates).
    pub lost_online: i64,
    /// received_online per second of the sending window.
    pub delivered_per_s: f64,
    pub received_offline: u64,
    pub lost_offline: i64,
    /// One-way latency of online messages, from the scheduled send time.
    pub latency: Percentiles,
    /// The same latencies by second of the sending window (when the messages were due).
    pub latency_by_second: Vec<crate::stats::Second>,
    /// How late the generator was on its own schedule (large: the generator is saturated).
    pub send_lag: Percentiles,
    /// Message errors bounced back to senders, by condition.
    pub errors: FailureCounts,
    /// Messages of earlier runs (offline leftovers) received and ignored.
    pub stale_received: u64,
    /// Third-party mode: messages of this run that arrived with the platform's origin stamp
    /// (`<origin xmlns='urn:strait:interop:0'/>`): those from the provider's users.
    pub origin_stamped: u64,
    /// Messages that carried no id of this generator.
    pub foreign_received: u64,
    pub drain_s: f64,
    pub offline_fetch_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoginStormResults {
    pub logins: u64,
    pub concurrency: u32,
    pub succeeded: u64,
    pub failed: u64,
    pub logins_per_s: f64,
    pub latency: Percentiles,
}

/// The report as JSON (pretty: indented, for files).
pub fn to_json(r: &Report, pretty: bool) -> String {
    let v = if pretty {
        serde_json::to_string_pretty(r)
    } else {
        serde_json::to_string(r)
    };
    // Only maps with string keys, numbers and strings: serializing cannot fail.
    v.expect("a report serializes")
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// `p50 … p99.9 … max … ms (n=…)`.
pub fn percentiles(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3} ms  (n={})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.mean_ms, p.count
    )
}

fn failures(out: &mut String, indent: &str, f: &FailureCounts) {
    for (kind, n) in &f.by_kind {
        let example = f.examples.get(kind).map(String::as_str).unwrap_or("");
        let _ = write!(out, "{indent}{n:>8} × {kind}");
        if !example.is_empty() && example != kind {
            let short: String = example.chars().take(160).collect();
            let _ = write!(out, "   (e.g. {short})");
        }
        out.push('\n');
    }
}

impl Report {
    /// The human-readable table.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "== strait bench {}{}",
            self.scenario,
            self.label
                .as_ref()
                .map(|l| format!("  [{l}]"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "generator: {} thread(s){}, {} source address(es), TLS {}; server pid(s): {}",
            self.generator.threads,
            if self.generator.busy_poll {
                " busy-polling"
            } else {
                ""
            },
            self.generator.source_ips,
            self.generator.tls_verification,
            if self.server_pids.is_empty() {
                "not given (no server figures)".into()
            } else {
                self.server_pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let l = &self.logins;
        let _ = writeln!(
            o,
            "logins: {} ok, {} failed of {} in {:.2} s = {:.1}/s; {}",
            l.succeeded,
            l.failed,
            l.attempted,
            l.wall_s,
            l.per_s,
            l.mechanisms
                .iter()
                .map(|(m, n)| format!("{m} × {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(o, "  login latency: {}", percentiles(&l.latency));
        failures(&mut o, "  ", &l.failures);

        let _ = writeln!(
            o,
            "\n{:<14} {:>8} {:>10} {:>9} {:>12} {:>12} {:>10} {:>9} {:>11}",
            "phase",
            "wall s",
            "srv cpu s",
            "srv %core",
            "srv RSS MiB",
            "(at start)",
            "gen cpu s",
            "gen %core",
            "gen RSS MiB"
        );
        for p in &self.phases {
            let _ = writeln!(
                o,
                "{:<14} {:>8.2} {:>10} {:>9} {:>12} {:>12} {:>10.2} {:>9.1} {:>11.1}",
                p.name,
                p.wall_s,
                opt(p.server_cpu_s, 2),
                opt(p.server_cpu_pct_core, 1),
                mib(p.server_rss_end_kib),
                mib(p.server_rss_start_kib),
                p.gen_cpu_s,
                p.gen_cpu_pct_core,
                p.gen_rss_end_kib as f64 / 1024.0
            );
        }
        o.push('\n');
        match &self.results {
            Results::Idle(r) => {
                let _ = writeln!(
                    o,
                    "connections: {} requested, {} established, {} alive after {:.1} s, {} dropped",
                    r.connections_requested,
                    r.connections_established,
                    r.connections_alive_at_end,
                    r.hold_s,
                    r.dropped_during_hold
                );
                let _ = writeln!(
                    o,
                    "server RSS MiB: before {}, after login {}, end of hold {}, after close {}",
                    mib(r.server_rss_before_kib),
                    mib(r.server_rss_after_login_kib),
                    mib(r.server_rss_end_of_hold_kib),
                    mib(r.server_rss_after_close_kib)
                );
                let _ = writeln!(
                    o,
                    "server memory per connection: {} KiB   (generator: {:.1} KiB)",
                    opt(r.server_kib_per_connection, 1),
                    r.generator_kib_per_connection
                );
                if let Some(k) = &r.keepalive {
                    let _ = writeln!(
                        o,
                        "keepalive {} every {:.1} s: {} sent, {} answered; rtt {}",
                        k.kind,
                        k.interval_s,
                        k.sent,
                        k.answered,
                        percentiles(&k.rtt)
                    );
                }
            }
            Results::Pingpong(r) => {
                let _ = writeln!(
                    o,
                    "round trips: {} in {:.2} s = {:.1}/s over {} pairs",
                    r.round_trips, r.duration_s, r.round_trips_per_s, r.pairs
                );
                let _ = writeln!(o, "rtt: {}", percentiles(&r.rtt));
                if r.errors.total > 0 {
                    let _ = writeln!(o, "message errors: {}", r.errors.total);
                    failures(&mut o, "  ", &r.errors);
                }
            }
            Results::Messages(r) => {
                let _ = writeln!(
                    o,
                    "target {:.1} msg/s for {:.1} s, {} pairs online, {} offline accounts, {} B {}",
                    r.target_rate,
                    r.duration_s,
                    r.pairs,
                    r.offline_accounts,
                    r.body_bytes,
                    if r.omemo { "OMEMO payloads" } else { "bodies" }
                );
                let _ = writeln!(
                    o,
                    "mode: {}{}; {} B of content per message{}",
                    r.mode,
                    if r.mode == "third-party" {
                        " (each pair a platform account and a provider's user: every message crosses the boundary)"
                    } else {
                        ""
                    },
                    r.content_bytes,
                    if r.ack_delay_ms > 0.0 {
                        format!("; ack requests answered {} ms late", r.ack_delay_ms)
                    } else {
                        String::new()
                    }
                );
                let _ = writeln!(
                    o,
                    "sent: {} ({:.1}/s): {} online, {} offline",
                    r.sent, r.achieved_send_rate, r.sent_online, r.sent_offline
                );
                let _ = writeln!(
                    o,
                    "delivered online: {} ({:.1}/s)   LOST online: {}",
                    r.received_online, r.delivered_per_s, r.lost_online
                );
                let _ = writeln!(
                    o,
                    "offline fetched: {} of {}   LOST offline: {}",
                    r.received_offline, r.sent_offline, r.lost_offline
                );
                let _ = writeln!(o, "latency (one-way): {}", percentiles(&r.latency));
                if let Some(line) = by_second(&r.latency_by_second) {
                    let _ = writeln!(o, "latency by second: {line}");
                }
                let _ = writeln!(o, "send lag (generator): {}", percentiles(&r.send_lag));
                let _ = writeln!(
                    o,
                    "message errors: {}; stale (earlier runs): {}; foreign: {}; drain {:.2} s, offline fetch {:.2} s",
                    r.errors.total,
                    r.stale_received,
                    r.foreign_received,
                    r.drain_s,
                    r.offline_fetch_s
                );
                if r.mode == "third-party" {
                    let _ = writeln!(
                        o,
                        "origin-stamped on arrival (from the provider's users): {}",
                        r.origin_stamped
                    );
                }
                failures(&mut o, "  ", &r.errors);
            }
            Results::LoginStorm(r) => {
                let _ = writeln!(
                    o,
                    "login storm: {} logins, concurrency {}: {} ok, {} failed, {:.1} logins/s",
                    r.logins, r.concurrency, r.succeeded, r.failed, r.logins_per_s
                );
                let _ = writeln!(o, "login latency: {}", percentiles(&r.latency));
            }
            Results::None {} => {}
        }
        if self.failures.total > 0 {
            let _ = writeln!(o, "failures after login: {}", self.failures.total);
            failures(&mut o, "  ", &self.failures);
        }
        for w in &self.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
        if let Some(e) = &self.error {
            let _ = writeln!(o, "ERROR: {e}");
        }
        o
    }
}

/// One line on how the seconds of a run compare: the spread of their p99s, and the worst
/// second. `None` for fewer than two seconds.
fn by_second(seconds: &[crate::stats::Second]) -> Option<String> {
    if seconds.len() < 2 {
        return None;
    }
    let mut p99: Vec<f64> = seconds.iter().map(|s| s.p99_ms).collect();
    p99.sort_by(f64::total_cmp);
    let worst = seconds
        .iter()
        .max_by(|a, b| a.max_ms.total_cmp(&b.max_ms))?;
    Some(format!(
        "p99 of each of {} seconds: best {:.3}  median {:.3}  worst {:.3} ms; largest max {:.3} ms in second {}",
        seconds.len(),
        p99[0],
        p99[p99.len() / 2],
        p99[p99.len() - 1],
        worst.max_ms,
        worst.second
    ))
}
