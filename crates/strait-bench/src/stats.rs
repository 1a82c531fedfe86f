//! What is measured: latency histograms (HDR), failure counts by kind, and the resident memory
//! and CPU time of the server's processes and of the generator itself, from /proc.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clock ticks per second of the CPU times in /proc/<pid>/stat. The kernel reports them in
/// USER_HZ, which is 100 on every architecture Linux runs on today (only Alpha and IA-64, both
/// gone, used 1024); reading it with sysconf(3) would need `unsafe` or a libc wrapper crate.
const USER_HZ: f64 = 100.0;

/// One reading of a process (or the sum over several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// Resident set size (VmRSS), KiB.
    pub rss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
}

impl std::ops::Add for ProcSample {
    type Output = ProcSample;
    fn add(self, o: ProcSample) -> ProcSample {
        ProcSample {
            rss_kib: self.rss_kib + o.rss_kib,
            cpu_s: self.cpu_s + o.cpu_s,
        }
    }
}

fn proc_dir(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".into(),
    }
}

/// Reads VmRSS and utime+stime of `pid` (`None`: this process).
pub fn read_proc(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = proc_dir(pid);
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}/{what}"));
    Ok(ProcSample {
        // Kernel threads have no VmRSS line; count them as 0.
        rss_kib: parse_vm_rss(&status).unwrap_or(0),
        cpu_s: parse_cpu_ticks(&stat).ok_or_else(|| bad("stat"))? as f64 / USER_HZ,
    })
}

/// `VmRSS:   12345 kB` from /proc/<pid>/status.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) from /proc/<pid>/stat; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted from its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After the name: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9)
    // minflt(10) cminflt(11) majflt(12) cmajflt(13) utime(14) stime(15).
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Reads the server's processes (summed) and the generator.
#[derive(Debug, Clone)]
pub struct Probe {
    server_pids: Vec<u32>,
}

impl Probe {
    /// Checks that every pid can be read.
    pub fn new(server_pids: Vec<u32>) -> anyhow::Result<Probe> {
        for &pid in &server_pids {
            read_proc(Some(pid))
                .map_err(|e| anyhow::anyhow!("--server-pid {pid}: cannot read /proc/{pid}: {e}"))?;
        }
        Ok(Probe { server_pids })
    }

    pub fn has_server(&self) -> bool {
        !self.server_pids.is_empty()
    }

    /// The server's processes, summed; `None` without `--server-pid` or when one has gone.
    pub fn server(&self) -> Option<ProcSample> {
        if self.server_pids.is_empty() {
            return None;
        }
        self.server_pids
            .iter()
            .map(|&p| read_proc(Some(p)).ok())
            .sum::<Option<ProcSample>>()
    }

    /// The generator.
    pub fn own(&self) -> ProcSample {
        read_proc(None).unwrap_or_default()
    }
}

impl std::iter::Sum for ProcSample {
    fn sum<I: Iterator<Item = ProcSample>>(iter: I) -> ProcSample {
        iter.fold(ProcSample::default(), |a, b| a + b)
    }
}

/// Wall time, CPU and memory over one phase of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub wall_s: f64,
    /// Server CPU time used during the phase (all its processes), seconds.
    pub server_cpu_s: Option<f64>,
    /// The same as a percentage of one core over the phase's wall time.
    pub server_cpu_pct_core: Option<f64>,
    pub server_rss_start_kib: Option<u64>,
    pub server_rss_end_kib: Option<u64>,
    /// The generator's own CPU time during the phase, seconds.
    pub gen_cpu_s: f64,
    pub gen_cpu_pct_core: f64,
    pub gen_rss_end_kib: u64,
}

/// Takes the readings at a phase's start; [`PhaseMeter::finish`] makes the [`Phase`].
pub struct PhaseMeter {
    name: String,
    started: Instant,
    server: Option<ProcSample>,
    own: ProcSample,
}

impl PhaseMeter {
    pub fn start(name: &str, probe: &Probe) -> PhaseMeter {
        PhaseMeter {
            name: name.into(),
            started: Instant::now(),
            server: probe.server(),
            own: probe.own(),
        }
    }

    pub fn finish(self, probe: &Probe) -> Phase {
        let wall = self.started.elapsed().as_secs_f64();
        let server_end = probe.server();
        let own_end = probe.own();
        let pct = |cpu: f64| if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 };
        let server_cpu = match (self.server, server_end) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        };
        let gen_cpu = own_end.cpu_s - self.own.cpu_s;
        Phase {
            name: self.name,
            wall_s: wall,
            server_cpu_s: server_cpu,
            server_cpu_pct_core: server_cpu.map(pct),
            server_rss_start_kib: self.server.map(|s| s.rss_kib),
            server_rss_end_kib: server_end.map(|s| s.rss_kib),
            gen_cpu_s: gen_cpu,
            gen_cpu_pct_core: pct(gen_cpu),
            gen_rss_end_kib: own_end.rss_kib,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits; shared by the
/// connection tasks (the lock is taken once per batch of readings).
pub struct Latency {
    hist: Mutex<Histogram<u64>>,
}

/// Largest value recorded, µs (larger ones are recorded as this).
const MAX_US: u64 = 3_600_000_000;

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.hist.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, d: Duration) {
        self.record_us(&[duration_us(d)]);
    }

    pub fn record_us(&self, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        let mut h = self.lock();
        for &v in values {
            h.saturating_record(v.clamp(1, MAX_US));
        }
    }

    pub fn count(&self) -> u64 {
        self.lock().len()
    }

    pub fn summary(&self) -> Percentiles {
        let h = self.lock();
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency by second of the schedule: for each second of the sending window (by when the
/// message was due), a histogram of its messages' latencies. It tells a tail made of a few
/// stalls (a handful of bad seconds) from one made of steady queueing (every second alike).
pub struct Timeline {
    seconds: Mutex<Vec<Histogram<u64>>>,
}

/// One second of a [`Timeline`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Second {
    /// Seconds since the start of the sending window (when the messages were due).
    pub second: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            seconds: Mutex::new(Vec::new()),
        }
    }

    /// Records `(due, latency)` pairs, µs since the start of the window and µs.
    pub fn record_us(&self, values: &[(u64, u64)]) {
        if values.is_empty() {
            return;
        }
        let mut seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        for &(due, v) in values {
            // At most an hour of seconds (the histogram's bound); later ones count in the last.
            let s = ((due / 1_000_000) as usize).min(3_600);
            while seconds.len() <= s {
                // Two significant digits: a few KiB per second of run.
                seconds.push(Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds"));
            }
            seconds[s].saturating_record(v.clamp(1, MAX_US));
        }
    }

    /// The seconds that had messages, in order.
    pub fn seconds(&self) -> Vec<Second> {
        let seconds = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |us: u64| us as f64 / 1000.0;
        seconds
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| Second {
                second: i as u64,
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.50)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            })
            .collect()
    }
}

/// A duration in whole microseconds (at least 1), saturating.
pub fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Failures counted by kind, with the first detail seen of each kind.
#[derive(Default)]
pub struct Failures {
    inner: Mutex<BTreeMap<String, (u64, String)>>,
}

/// How failures appear in reports.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FailureCounts {
    pub total: u64,
    /// Kind → count.
    pub by_kind: BTreeMap<String, u64>,
    /// Kind → the first full message of that kind.
    pub examples: BTreeMap<String, String>,
}

impl Failures {
    pub fn new() -> Failures {
        Failures::default()
    }

    pub fn add(&self, kind: &str, detail: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = g
            .entry(kind.to_owned())
            .or_insert_with(|| (0, detail.to_owned()));
        e.0 += 1;
    }

    pub fn total(&self) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.values().map(|(n, _)| n).sum()
    }

    pub fn counts(&self) -> FailureCounts {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        FailureCounts {
            total: g.values().map(|(n, _)| n).sum(),
            by_kind: g.iter().map(|(k, (n, _))| (k.clone(), *n)).collect(),
            examples: g.iter().map(|(k, (_, d))| (k.clone(), d.clone())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tstrait\nVmPeak:\t  9000 kB\nVmRSS:\t   4321 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(4321));
        assert_eq!(parse_vm_rss("Name: kthreadd\n"), None);
        let stat = "1234 (tokio (worker) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
    }

    #[test]
    fn reads_this_process() {
        let s = read_proc(None).unwrap();
        assert!(s.rss_kib > 0);
        let probe = Probe::new(vec![std::process::id(), std::process::id()]).unwrap();
        let both = probe.server().unwrap();
        assert!(both.rss_kib >= s.rss_kib, "two pids are summed");
        assert!(Probe::new(vec![u32::MAX]).is_err());
        assert_eq!(Probe::new(vec![]).unwrap().server(), None);
    }

    /// Latencies land in the second they were due in; seconds without messages are left out.
    #[test]
    fn timeline_by_second_of_the_schedule() {
        let t = Timeline::new();
        t.record_us(&[(10, 1_000), (999_999, 3_000), (2_500_000, 40_000)]);
        t.record_us(&[(2_000_001, 2_000)]);
        let s = t.seconds();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].second, s[0].count), (0, 2));
        assert!((s[0].max_ms - 3.0).abs() < 0.05, "{:?}", s[0]);
        assert_eq!((s[1].second, s[1].count), (2, 2));
        assert!((s[1].max_ms - 40.0).abs() < 0.5, "{:?}", s[1]);
        assert!((s[1].p50_ms - 2.0).abs() < 0.05, "{:?}", s[1]);
    }

    #[test]
    fn latency_percentiles() {
        let l = Latency::new();
        l.record_us(&(1..=1000).map(|v| v * 1000).collect::<Vec<_>>());
        let p = l.summary();
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(Latency::new().summary(), Percentiles::default());
    }

    #[test]
    fn failures_by_kind() {
        let f = Failures::new();
        f.add("sasl: not-authorized", "first");
        f.add("sasl: not-authorized", "second");
        f.add("timeout: tls", "t");
        let c = f.counts();
        assert_eq!(c.total, 3);
        assert_eq!(c.by_kind["sasl: not-authorized"], 2);
        assert_eq!(c.examples["sasl: not-authorized"], "first");
    }
}
