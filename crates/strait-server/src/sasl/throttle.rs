//! Login failure throttling per account and per source address, sans-I/O:
//! the caller passes the current [`Instant`].
//!
//! Each key (account, or address — IPv6 grouped by /64, IPv4-mapped
//! addresses as IPv4) counts failures in a fixed window. Reaching the limit
//! locks the key out; each further lockout of the same key doubles the
//! duration, up to [`MAX_LOCKOUT`]. A key is forgotten once it is not locked
//! and has had no failure for a window plus its last lockout, so the
//! doubling only persists for repeat offenders.
//!
//! Memory is bounded: each table holds at most a fixed number of keys
//! (pruned of forgotten keys at most once a second when full, and at least
//! once per window). When a table is full of live keys, new keys are not
//! tracked until it drains — the address limit still catches a flood of
//! distinct usernames from one source, and existing lockouts are never
//! evicted by the flood.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest lockout, however often it doubles.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);
/// Default bound on tracked keys per table.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Throttling limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures per account within `window` before a lockout.
    pub max_failures_per_account: u32,
    /// Failures per source address (IPv6: per /64) within `window`.
    pub max_failures_per_addr: u32,
    pub window: Duration,
    /// First lockout; doubles on each repeat, capped at one hour.
    pub lockout: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures_per_account: 5,
            max_failures_per_addr: 20,
            window: Duration::from_secs(5 * 60),
            lockout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    last_failure: Instant,
    locked_until: Option<Instant>,
    /// Lockouts so far (the next one lasts `lockout * 2^strikes`).
    strikes: u32,
    last_lockout: Duration,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            failures: 0,
            window_start: now,
            last_failure: now,
            locked_until: None,
            strikes: 0,
            last_lockout: Duration::ZERO,
        }
    }

    fn retry_after(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|&until| until > now)
            .map(|until| until - now)
    }

    fn stale(&self, now: Instant, window: Duration) -> bool {
        self.retry_after(now).is_none()
            && now.saturating_duration_since(self.last_failure) >= window + self.last_lockout
    }

    fn fail(&mut self, now: Instant, cfg: &ThrottleConfig, max: u32) {
        if self.retry_after(now).is_some() {
            // Already locked out: attempts during a lockout are refused
            // before they are tried, so this is a caller that did not check.
            self.last_failure = now;
            return;
        }
        if now.saturating_duration_since(self.window_start) >= cfg.window {
            self.failures = 0;
            self.window_start = now;
        }
        self.failures += 1;
        self.last_failure = now;
        if self.failures >= max.max(1) {
            let factor = 1u32.checked_shl(self.strikes.min(31)).unwrap_or(u32::MAX);
            let lockout = cfg.lockout.saturating_mul(factor).min(MAX_LOCKOUT);
            self.locked_until = Some(now + lockout);
            self.last_lockout = lockout;
            self.strikes = self.strikes.saturating_add(1);
            self.failures = 0;
            self.window_start = now;
        }
    }
}

struct Table<K> {
    entries: HashMap<K, Entry>,
    last_sweep: Option<Instant>,
}

impl<K: Eq + Hash> Table<K> {
    fn new() -> Self {
        Table {
            entries: HashMap::new(),
            last_sweep: None,
        }
    }

    fn sweep(&mut self, now: Instant, window: Duration) {
        self.entries.retain(|_, e| !e.stale(now, window));
        self.last_sweep = Some(now);
    }

    fn sweep_due(&self, now: Instant, every: Duration) -> bool {
        self.last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
    }

    fn fail(&mut self, key: K, now: Instant, cfg: &ThrottleConfig, max: u32, cap: usize) {
        if self.sweep_due(now, cfg.window) {
            self.sweep(now, cfg.window);
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= cap {
            if self.sweep_due(now, MIN_SWEEP_INTERVAL) {
                self.sweep(now, cfg.window);
            }
            if self.entries.len() >= cap {
                return;
            }
        }
        self.entries
            .entry(key)
            .or_insert_with(|| Entry::new(now))
            .fail(now, cfg, max);
    }

    fn retry_after<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.get(key).and_then(|e| e.retry_after(now))
    }
}

struct Inner {
    accounts: Table<String>,
    addrs: Table<IpAddr>,
}

/// Failure limiting for logins. `Send + Sync`; share it behind an `Arc`.
pub struct LoginThrottle {
    cfg: ThrottleConfig,
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl LoginThrottle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self::with_max_entries(cfg, DEFAULT_MAX_ENTRIES)
    }

    /// Like [`LoginThrottle::new`] with a different bound on tracked keys per table.
    pub fn with_max_entries(cfg: ThrottleConfig, max_entries: usize) -> Self {
        LoginThrottle {
            cfg,
            max_entries: max_entries.max(1),
            inner: Mutex::new(Inner {
                accounts: Table::new(),
                addrs: Table::new(),
            }),
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` if the account or the address is locked out. Call
    /// before verifying credentials (also for unknown accounts).
    pub fn check(&self, account: &str, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let g = self.lock();
        let a = g.accounts.retry_after(account, now);
        let b = g.addrs.retry_after(&addr_key(addr), now);
        match a.max(b) {
            Some(d) => Err(d),
            None => Ok(()),
        }
    }

    /// Counts a failed login (wrong password, unknown user, bad proof).
    pub fn record_failure(&self, account: &str, addr: IpAddr, now: Instant) {
        let cap = self.max_entries;
        let mut g = self.lock();
        g.accounts.fail(
            account.to_owned(),
            now,
            &self.cfg,
            self.cfg.max_failures_per_account,
            cap,
        );
        g.addrs.fail(
            addr_key(addr),
            now,
            &self.cfg,
            self.cfg.max_failures_per_addr,
            cap,
        );
    }

    /// A successful login clears the account's record. The address's record
    /// is kept: otherwise an attacker holding one valid account could reset
    /// its address counter between guesses at other accounts.
    pub fn record_success(&self, account: &str, _addr: IpAddr) {
        self.lock().accounts.entries.remove(account);
    }

    /// Tracked (accounts, addresses), for metrics and tests.
    pub fn tracked(&self) -> (usize, usize) {
        let g = self.lock();
        (g.accounts.entries.len(), g.addrs.entries.len())
    }
}

/// The throttling key of an address: IPv4 as is (also when IPv4-mapped),
/// IPv6 by its /64 — one host usually holds a whole /64.
fn addr_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MIN: Duration = Duration::from_secs(60);

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    fn cfg() -> ThrottleConfig {
        ThrottleConfig::default()
    }

    #[test]
    fn defaults() {
        let c = cfg();
        assert_eq!(c.max_failures_per_account, 5);
        assert_eq!(c.max_failures_per_addr, 20);
        assert_eq!(c.window, 5 * MIN);
        assert_eq!(c.lockout, MIN);
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LoginThrottle>();
    }

    #[test]
    fn account_lockout_after_max_failures() {
        let t = LoginThrottle::new(cfg());
        let now = Instant::now();
        for i in 0..4 {
            t.record_failure("a@x", ip(i), now);
            assert_eq!(t.check("a@x", ip(9), now), Ok(()));
        }
        t.record_failure("a@x", ip(5), now);
        assert_eq!(t.check("a@x", ip(9), now), Err(MIN));
        assert_eq!(
            t.check("a@x", ip(9), now + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        // Other accounts are unaffected.
        assert_eq!(t.check("b@x", ip(9), now), Ok(()));
        // Lockout ends.
        assert_eq!(t.check("a@x", ip(9), now + MIN), Ok(()));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = LoginThrottle::new(cfg());
        let mut now = Instant::now();
        for _ in 0..20 {
            for _ in 0..4 {
                t.record_failure("a@x", ip(1), now);
            }
            now += 5 * MIN;
        }
        assert_eq!(t.check("a@x", ip(2), now), Ok(()));
    }

    #[test]
    fn lockout_doubles_and_is_capped() {
        let t = LoginThrottle::new(cfg());
        let mut now = Instant::now();
        let mut expected = MIN;
        for _ in 0..10 {
            for _ in 0..5 {
                t.record_failure("a@x", ip(1), now);
            }
            assert_eq!(t.check("a@x", ip(200), now), Err(expected));
            now += expected;
            assert_eq!(t.check("a@x", ip(200), now), Ok(()));
            expected = (expected * 2).min(MAX_LOCKOUT);
        }
        assert_eq!(expected, MAX_LOCKOUT);
    }

    #[test]
    fn success_resets_the_account() {
        let t = LoginThrottle::new(cfg());
        let now = Instant::now();
        for _ in 0..5 {
            t.record_failure("a@x", ip(1), now);
        }
        assert!(t.check("a@x", ip(1), now).is_err());
        t.record_success("a@x", ip(1));
        assert_eq!(t.check("a@x", ip(1), now), Ok(()));
        // The count restarted too (and the doubling).
        for _ in 0..4 {
            t.record_failure("a@x", ip(1), now);
        }
        assert_eq!(t.check("a@x", ip(1), now), Ok(()));
        t.record_failure("a@x", ip(1), now);
        assert_eq!(t.check("a@x", ip(1), now), Err(MIN));
    }

    #[test]
    fn address_lockout_and_ipv6_grouping() {
        let t = LoginThrottle::new(cfg());
        let now = Instant::now();
        for i in 0..20u16 {
            // Distinct accounts, distinct addresses in one /64.
            let a: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            t.record_failure(&format!("u{i}@x"), a, now);
        }
        let same64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.check("fresh@x", same64, now), Err(MIN));
        assert_eq!(t.check("fresh@x", other64, now), Ok(()));
        // Success does not clear the address.
        t.record_success("fresh@x", same64);
        assert_eq!(t.check("fresh@x", same64, now), Err(MIN));

        // IPv4-mapped IPv6 counts as the IPv4 address.
        let t = LoginThrottle::new(cfg());
        for i in 0..20 {
            t.record_failure(&format!("u{i}"), ip(7), now);
        }
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(t.check("x", mapped, now).is_err());
        assert_eq!(t.check("x", ip(8), now), Ok(()));
    }

    #[test]
    fn old_entries_are_pruned() {
        let t = LoginThrottle::new(cfg());
        let now = Instant::now();
        for i in 0..100 {
            t.record_failure(&format!("u{i}"), ip(1), now);
        }
        assert_eq!(t.tracked(), (100, 1));
        // A window (plus the address's 1 min lockout) later, the next
        // failure sweeps the stale entries.
        let later = now + 6 * MIN;
        t.record_failure("new", ip(2), later);
        assert_eq!(t.tracked(), (1, 1));
    }

    #[test]
    fn locked_entries_survive_pruning_until_expired() {
        let t = LoginThrottle::new(cfg());
        let now = Instant::now();
        // Two lockouts: the second lasts 2 min.
        for _ in 0..5 {
            t.record_failure("a", ip(1), now);
        }
        let now = now + MIN;
        for _ in 0..5 {
            t.record_failure("a", ip(2), now);
        }
        assert_eq!(t.check("a", ip(3), now), Err(2 * MIN));
        // One window later (the entry's last lockout keeps it alive):
        // still tracked, so the next lockout would be 4 min.
        let later = now + 5 * MIN;
        t.record_failure("b", ip(3), later);
        assert_eq!(t.tracked().0, 2);
        for _ in 0..5 {
            t.record_failure("a", ip(4), later);
        }
        assert_eq!(t.check("a", ip(5), later), Err(4 * MIN));
    }

    #[test]
    fn table_size_is_bounded_and_lockouts_are_not_evicted() {
        let t = LoginThrottle::with_max_entries(cfg(), 50);
        let now = Instant::now();
        for _ in 0..5 {
            t.record_failure("victim", ip(1), now);
        }
        assert!(t.check("victim", ip(1), now).is_err());
        // A flood of distinct usernames from many addresses.
        for i in 0..10_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(
                &format!("flood{i}"),
                a,
                now + Duration::from_millis(u64::from(i)),
            );
        }
        let (accounts, addrs) = t.tracked();
        assert!(accounts <= 50 && addrs <= 50, "{accounts} {addrs}");
        assert!(
            t.check("victim", ip(1), now + Duration::from_secs(5))
                .is_err()
        );
        // Once the flood is stale, new keys are tracked again.
        let later = now + 10 * MIN;
        for _ in 0..5 {
            t.record_failure("late", ip(9), later);
        }
        assert!(t.check("late", ip(10), later).is_err());
    }
}
