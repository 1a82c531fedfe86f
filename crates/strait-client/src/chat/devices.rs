//! The OMEMO device lists this client has heard of, per account and version, with when it
//! heard: what spares [`Client::send`](super::Client::send) reading them from the server for
//! every message.
//!
//! An entry comes from a read (a send that found none fresh, the login's own lists) or from a
//! PEP notification, which replaces it at once. It is trusted for the client's TTL
//! ([`DEVICE_LIST_TTL`] unless the app sets another): a contact whose presence the account
//! does not share sends no notifications, so a device it adds is only seen by reading again.
//! A message from a device the entry does not list drops the entry, so that the next send
//! reads the list again. An empty OMEMO 0.3 entry is the answer "no 0.3 list": kept only
//! while the contact's OMEMO 2 list has devices, so that such a contact does not cost a failed
//! 0.3 lookup per message. Refusals are never entries: they are asked again on the next send.

use crate::omemo::Omemo;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a device list is trusted without hearing of it again. A minute: a conversation's
/// messages share one read, and a device a contact adds (or the account's own, should a
/// notification be missed) gets this client's messages within a minute at worst.
pub const DEVICE_LIST_TTL: Duration = Duration::from_secs(60);

/// Accounts whose device lists are kept at most. Entries expire after [`DEVICE_LIST_TTL`]
/// anyway; past this many, the expired ones go first, then the oldest.
pub const DEVICE_LISTS_MAX: usize = 1024;

struct Entry {
    /// The account's devices in this version (empty: it has none).
    devices: Vec<u32>,
    /// When it was read or notified.
    at: Instant,
}

/// The lists by bare JID (lowercase), OMEMO 0.3 first.
pub(super) struct DeviceLists {
    ttl: Duration,
    max: usize,
    lists: HashMap<String, [Option<Entry>; 2]>,
}

fn slot(v: Omemo) -> usize {
    match v {
        Omemo::V03 => 0,
        Omemo::V2 => 1,
    }
}

/// The key of `jid`: its bare JID, lowercase (messages, notifications and the app may spell
/// an account differently).
fn key(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_ascii_lowercase()
}

impl DeviceLists {
    pub(super) fn new(ttl: Duration, max: usize) -> DeviceLists {
        DeviceLists {
            ttl,
            max,
            lists: HashMap::new(),
        }
    }

    pub(super) fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    fn is_fresh(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.at) < self.ttl
    }

    /// `jid`'s version-`v` devices, if heard of within the TTL (empty: it has none there).
    pub(super) fn fresh(&self, jid: &str, v: Omemo, now: Instant) -> Option<&[u32]> {
        self.lists
            .get(&key(jid))
            .and_then(|e| e[slot(v)].as_ref())
            .filter(|e| self.is_fresh(e, now))
            .map(|e| e.devices.as_slice())
    }

    /// Records `jid`'s version-`v` devices as read or notified `now`.
    pub(super) fn put(
        &mut self,
        jid: &str,
        v: Omemo,
        devices: impl IntoIterator<Item = u32>,
        now: Instant,
    ) {
        let k = key(jid);
        if !self.lists.contains_key(&k) {
            self.make_room(now);
        }
        let mut devices: Vec<u32> = devices.into_iter().collect();
        devices.sort_unstable();
        devices.dedup();
        self.lists.entry(k).or_default()[slot(v)] = Some(Entry { devices, at: now });
    }

    /// Drops `jid`'s version-`v` entry: the next send reads the list again.
    pub(super) fn forget(&mut self, jid: &str, v: Omemo) {
        let k = key(jid);
        if let Some(e) = self.lists.get_mut(&k) {
            e[slot(v)] = None;
            if e.iter().all(Option::is_none) {
                self.lists.remove(&k);
            }
        }
    }

    /// Drops the entries of what a block item names: an account (of any resource), or every
    /// account of a domain.
    pub(super) fn forget_blocked(&mut self, item: &str) {
        let item = key(item.trim());
        match item.contains('@') {
            true => {
                self.lists.remove(&item);
            }
            false => self
                .lists
                .retain(|jid, _| jid.rsplit_once('@').is_none_or(|(_, d)| d != item)),
        }
    }

    /// A message came from `jid`'s version-`v` device `device`: if the entry does not list
    /// it, the list has changed since; the entry goes. True when it went.
    pub(super) fn saw(&mut self, jid: &str, v: Omemo, device: u32) -> bool {
        let stale = self
            .lists
            .get(&key(jid))
            .and_then(|e| e[slot(v)].as_ref())
            .is_some_and(|e| e.devices.binary_search(&device).is_err());
        if stale {
            self.forget(jid, v);
        }
        stale
    }

    /// Drops everything (a new connection: notifications were missed meanwhile).
    pub(super) fn clear(&mut self) {
        self.lists.clear();
    }

    /// Makes room for one more account: the expired entries go, then the oldest account's.
    fn make_room(&mut self, now: Instant) {
        if self.lists.len() < self.max {
            return;
        }
        let ttl = self.ttl;
        for e in self.lists.values_mut() {
            for s in e.iter_mut() {
                if s.as_ref()
                    .is_some_and(|x| now.saturating_duration_since(x.at) >= ttl)
                {
                    *s = None;
                }
            }
        }
        self.lists.retain(|_, e| e.iter().any(Option::is_some));
        while self.lists.len() >= self.max {
            let newest = |e: &[Option<Entry>; 2]| e.iter().flatten().map(|x| x.at).max();
            let Some(oldest) = self
                .lists
                .iter()
                .min_by_key(|(_, e)| newest(e))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.lists.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lists.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> (DeviceLists, Instant) {
        (DeviceLists::new(DEVICE_LIST_TTL, 3), Instant::now())
    }

    #[test]
    fn an_entry_is_fresh_for_the_ttl_and_per_version() {
        let (mut l, t0) = lists();
        l.put("Bob@Example.org/phone", Omemo::V03, [7, 3, 7], t0);
        assert_eq!(
            l.fresh("bob@example.org", Omemo::V03, t0),
            Some(&[3, 7][..])
        );
        assert_eq!(l.fresh("bob@example.org", Omemo::V2, t0), None);
        let almost = t0 + DEVICE_LIST_TTL - Duration::from_millis(1);
        assert!(l.fresh("BOB@example.org", Omemo::V03, almost).is_some());
        assert_eq!(
            l.fresh("bob@example.org", Omemo::V03, t0 + DEVICE_LIST_TTL),
            None
        );
        // A notification (a new put) replaces the list and restarts the clock.
        let later = t0 + Duration::from_secs(50);
        l.put("bob@example.org", Omemo::V03, [3, 7, 9], later);
        assert_eq!(
            l.fresh("bob@example.org", Omemo::V03, t0 + DEVICE_LIST_TTL),
            Some(&[3, 7, 9][..])
        );
        // "No list" is an entry too, and a zero TTL trusts nothing.
        l.put("carol@example.org", Omemo::V03, [], t0);
        assert_eq!(l.fresh("carol@example.org", Omemo::V03, t0), Some(&[][..]));
        l.set_ttl(Duration::ZERO);
        assert_eq!(l.fresh("carol@example.org", Omemo::V03, t0), None);
    }

    #[test]
    fn a_device_the_list_lacks_drops_the_entry() {
        let (mut l, t0) = lists();
        l.put("bob@example.org", Omemo::V03, [3, 7], t0);
        l.put("bob@example.org", Omemo::V2, [3], t0);
        assert!(!l.saw("bob@example.org", Omemo::V03, 7));
        assert!(l.fresh("bob@example.org", Omemo::V03, t0).is_some());
        assert!(l.saw("bob@example.org/tablet", Omemo::V03, 8));
        assert_eq!(l.fresh("bob@example.org", Omemo::V03, t0), None);
        // The other version's entry stays.
        assert_eq!(l.fresh("bob@example.org", Omemo::V2, t0), Some(&[3][..]));
        // A 0.3 message from a contact known to have no 0.3 list: it has one now.
        l.put("dave@example.org", Omemo::V03, [], t0);
        assert!(l.saw("dave@example.org", Omemo::V03, 1));
        assert_eq!(l.fresh("dave@example.org", Omemo::V03, t0), None);
        // Nothing known, nothing to drop.
        assert!(!l.saw("erin@example.org", Omemo::V03, 1));
    }

    #[test]
    fn the_size_is_bounded_expired_then_oldest_first() {
        let (mut l, t0) = lists();
        let s = Duration::from_secs;
        l.put("a@x", Omemo::V03, [1], t0);
        l.put("b@x", Omemo::V03, [1], t0 + s(10));
        l.put("c@x", Omemo::V03, [1], t0 + s(20));
        l.put("c@x", Omemo::V2, [1], t0 + s(21));
        assert_eq!(l.len(), 3);
        // Full: a fourth account pushes out the one heard of longest ago.
        l.put("d@x", Omemo::V03, [1], t0 + s(30));
        assert_eq!(l.len(), 3);
        assert_eq!(l.fresh("a@x", Omemo::V03, t0 + s(30)), None);
        assert!(l.fresh("b@x", Omemo::V03, t0 + s(30)).is_some());
        // Later, the expired entries make room first: at 80 s, b's (10 s) and c's 0.3 one
        // (20 s); c keeps its OMEMO 2 entry (21 s), and no account that is fresh goes.
        let now = t0 + s(80);
        l.put("e@x", Omemo::V03, [1], now);
        assert_eq!(l.len(), 3);
        assert_eq!(l.fresh("c@x", Omemo::V03, now), None);
        assert!(l.fresh("c@x", Omemo::V2, now).is_some());
        assert!(l.fresh("d@x", Omemo::V03, now).is_some());
        assert!(l.fresh("e@x", Omemo::V03, now).is_some());
        // Updating a known account needs no room.
        l.put("e@x", Omemo::V2, [2], now);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn forgetting_a_block_item_drops_its_accounts() {
        let (mut l, t0) = lists();
        l.put("bob@spam.example", Omemo::V03, [1], t0);
        l.put("eve@spam.example", Omemo::V2, [1], t0);
        l.put("carol@example.org", Omemo::V03, [1], t0);
        l.forget_blocked("Carol@example.org/phone");
        assert_eq!(l.fresh("carol@example.org", Omemo::V03, t0), None);
        l.forget_blocked("spam.example");
        assert_eq!(l.len(), 0);
        // Forgetting one version keeps the other.
        l.put("bob@x", Omemo::V03, [1], t0);
        l.put("bob@x", Omemo::V2, [1], t0);
        l.forget("bob@x", Omemo::V03);
        assert_eq!(l.len(), 1);
        l.forget("bob@x", Omemo::V2);
        assert_eq!(l.len(), 0);
        l.put("bob@x", Omemo::V2, [1], t0);
        l.clear();
        assert_eq!(l.len(), 0);
    }
}
