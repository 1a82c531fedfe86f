//! The router: which resources of which accounts are connected, and the delivery rules of
//! RFC 6121 §8 for stanzas addressed to local accounts.
//!
//! The table lives behind one `RwLock` with short critical sections (no `.await` inside);
//! each connection owns the receiving end of a bounded channel. When the platform grows past
//! one node this table becomes the local half of a shared directory (NATS), and `deliver_*`
//! gains a "remote node" branch: nothing else here changes.

use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use strait_wire::{Stanza, StreamError};

/// What a connection's task receives from the rest of the server.
#[derive(Debug)]
pub enum Outbound {
    /// Write this stanza to the client.
    Stanza(Box<Stanza>),
    /// Write this message to the client; it is also the account's stored message `id`
    /// (written before delivery), deleted once the client has it: acknowledged under stream
    /// management (XEP-0198), else written to the socket.
    Durable(Box<Stanza>, i64),
    /// Close the stream with this error (e.g. `conflict` when another session took the resource).
    Close(StreamError),
}

/// Capacity of each connection's queue. A client that falls this far behind is disconnected
/// (rather than letting its queue grow without bound) and its messages go to offline storage.
pub const OUTBOUND_QUEUE: usize = 512;

/// How the rest of the server reaches a connection's task: its queue, which also carries the
/// order to close when the connection cannot keep up ([`OutboundSender::kill`]).
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub tx: OutboundSender,
}

impl ConnHandle {
    pub fn new() -> (ConnHandle, OutboundReceiver) {
        let (tx, rx) = outbound_queue(OUTBOUND_QUEUE);
        (ConnHandle { tx }, rx)
    }
}

/// A connection's queue of [`Outbound`]: bounded, many senders, one receiver, with the
/// semantics of a bounded `tokio::sync::mpsc` channel as used here (`try_send` fails when full
/// or when the receiver is closed or gone; `recv` ends once every sender is gone and the queue
/// is empty). Unlike `mpsc::channel`, which allocates a block of 32 slots (~1.5 KiB) up front
/// and keeps it, this queue allocates only while something is queued and gives the memory
/// back once drained: nearly every connection is idle nearly all the time.
///
/// The queue also carries the order to close a connection that cannot keep up (a flag beside
/// the items, [`OutboundSender::kill`]), so that the connection's task waits on one
/// notification rather than two. That notification is an `AtomicWaker` rather than a
/// `tokio::sync::Notify`: the task waits on the queue on every turn of its loop and, most
/// turns, stops waiting because something else (a read) came first; a `Notify` took a lock
/// to register the waiter and another to remove it each time, where the waker is a few
/// atomic operations, and only when it changes.
pub fn outbound_queue(capacity: usize) -> (OutboundSender, OutboundReceiver) {
    let shared = Arc::new(Queue {
        state: Mutex::new(QueueState {
            items: VecDeque::new(),
            senders: 1,
            closed: false,
            killed: false,
        }),
        ready: AtomicWaker::new(),
        capacity,
    });
    (
        OutboundSender {
            shared: shared.clone(),
        },
        OutboundReceiver { shared },
    )
}

#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the receiver: something was queued, the last sender left, or a kill. The
    /// receiver registers before it looks at the state, under the lock, so a wake-up
    /// cannot fall between the two.
    ready: AtomicWaker,
    capacity: usize,
}

#[derive(Debug)]
struct QueueState {
    items: VecDeque<Outbound>,
    senders: usize,
    /// The receiver was closed or dropped: nothing more is accepted.
    closed: bool,
    /// The connection must close (it cannot keep up); cleared when the receiver sees it.
    killed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why [`OutboundSender::try_send`] failed; the item comes back.
#[derive(Debug)]
pub enum TrySendError {
    Full(Outbound),
    Closed(Outbound),
}

/// The sending half of a connection's queue.
#[derive(Debug)]
pub struct OutboundSender {
    shared: Arc<Queue>,
}

impl Clone for OutboundSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        OutboundSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        let last = {
            let mut st = self.shared.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.shared.ready.wake();
        }
    }
}

impl OutboundSender {
    /// Queues `out` unless the queue is full or its receiver is closed.
    pub fn try_send(&self, out: Outbound) -> Result<(), TrySendError> {
        self.try_send_below(out, self.shared.capacity)
    }

    /// [`OutboundSender::try_send`], taking `out` only while fewer than `limit` wait.
    fn try_send_below(&self, out: Outbound, limit: usize) -> Result<(), TrySendError> {
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(TrySendError::Closed(out));
            }
            if st.items.len() >= limit.min(self.shared.capacity) {
                return Err(TrySendError::Full(out));
            }
            st.items.push_back(out);
        }
        self.shared.ready.wake();
        Ok(())
    }

    /// Tells the connection to close because it cannot keep up: its receiver reports this
    /// once ([`Received::Killed`], or `None` from `recv`) before anything still queued.
    pub fn kill(&self) {
        self.shared.lock().killed = true;
        self.shared.ready.wake();
    }
}

/// What [`OutboundReceiver::recv_all`] hands the connection.
#[derive(Debug)]
pub enum Received {
    /// Everything queued, in order; empty once every sender is gone and nothing is left.
    Items(VecDeque<Outbound>),
    /// The connection must close: it cannot keep up ([`OutboundSender::kill`]).
    Killed,
}

/// The receiving half of a connection's queue.
#[derive(Debug)]
pub struct OutboundReceiver {
    shared: Arc<Queue>,
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.close();
    }
}

impl OutboundReceiver {
    /// The next item, waiting for one; `None` once every sender is gone and nothing is
    /// left, or when the connection was killed. With `take` false it takes no item and
    /// waits only for those two ends. Cancel-safe: an item is taken only when this returns
    /// it.
    pub async fn recv(&mut self, take: bool) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx, take)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, take: bool) -> Poll<Option<Outbound>> {
        self.shared.ready.register(cx.waker());
        let mut st = self.shared.lock();
        if st.killed {
            st.killed = false;
            return Poll::Ready(None);
        }
        if take && let Some(out) = st.items.pop_front() {
            if st.items.is_empty() {
                st.items = VecDeque::new();
            }
            return Poll::Ready(Some(out));
        }
        if st.senders == 0 {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut st = self.shared.lock();
        let out = st.items.pop_front();
        if st.items.is_empty() && st.items.capacity() > 0 {
            st.items = VecDeque::new();
        }
        out
    }

    /// Everything queued, in order, taken under one lock, waiting until something is; empty
    /// once every sender is gone and nothing is left. A connection that fell behind writes
    /// its backlog as one TLS record and one write, not a record and a syscall per stanza.
    /// Cancel-safe like `recv`; the queue keeps no memory once taken. A kill comes first,
    /// and once: what is still queued stays for the connection's end to hand on.
    pub async fn recv_all(&mut self) -> Received {
        std::future::poll_fn(|cx| self.poll_recv_all(cx)).await
    }

    fn poll_recv_all(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        self.shared.ready.register(cx.waker());
        let mut st = self.shared.lock();
        if st.killed {
            st.killed = false;
            return Poll::Ready(Received::Killed);
        }
        if !st.items.is_empty() || st.senders == 0 {
            return Poll::Ready(Received::Items(std::mem::take(&mut st.items)));
        }
        Poll::Pending
    }

    /// Refuses further items; those already queued can still be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

/// A bound resource as others see it.
#[derive(Debug, Clone)]
pub struct Resource {
    pub resource: String,
    pub full: String,
    pub conn_id: u64,
    handle: ConnHandle,
    /// The last available presence broadcast by this resource; `None` while not available.
    pub presence: Option<Arc<Stanza>>,
    pub priority: i8,
    /// Whether this resource fetched the roster, and so gets roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Whether this resource enabled message carbons (XEP-0280).
    pub carbons: bool,
    /// Whether this resource fetched the block list, and so gets block pushes (XEP-0191).
    pub blocklist_interested: bool,
    /// Whether this resource acknowledges stanzas (XEP-0198 enabled), so that messages for it
    /// are stored before delivery and deleted when acknowledged.
    pub acks: bool,
}

impl Resource {
    pub fn is_available(&self) -> bool {
        self.presence.is_some()
    }

    /// Queues a stanza for this resource; false if it is gone or hopelessly behind.
    pub fn send(&self, stanza: Stanza) -> bool {
        self.queue(Outbound::Stanza(Box::new(stanza)))
    }

    /// Queues a message that is also stored as the account's message `id`.
    pub fn send_durable(&self, stanza: Stanza, id: i64) -> bool {
        self.queue(Outbound::Durable(Box::new(stanza), id))
    }

    /// Offers a stored message handed on from a session that ended without acknowledging it
    /// ([`crate::features::delivery::redeliver`]): taken while the queue is less than half
    /// full, and otherwise left where it is, stored for the account, without disconnecting
    /// this client. A session that ends after an overload can hold thousands; pushed into
    /// another device's queue at once they filled it, and that device was disconnected as a
    /// slow client, its own session then ending the same way (seen in run BM's steps after
    /// an overload: the next logins were disconnected at once).
    pub fn offer_durable(&self, stanza: Stanza, id: i64) -> bool {
        let room = self.handle.tx.shared.capacity / 2;
        self.handle
            .tx
            .try_send_below(Outbound::Durable(Box::new(stanza), id), room)
            .is_ok()
    }

    fn queue(&self, out: Outbound) -> bool {
        match self.handle.tx.try_send(out) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(full = %self.full, "outbound queue full: disconnecting slow client");
                self.handle.tx.kill();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Why a resource could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("too many sessions for this account (limit {0})")]
    TooManyResources(usize),
}

/// The router's maps, keyed by bare JIDs. Each message looks several of them up (its
/// targets, both block lists, carbons), so they hash with foldhash, seeded per process,
/// rather than SipHash: SipHash of the JID was about 1 % of the server's time on the message
/// path. A per-process random seed keeps the keys' buckets unpredictable to clients.
type JidMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

/// The session table.
#[derive(Default)]
pub struct Router {
    /// Each resource behind an `Arc`: routing hands out snapshots of it per message, and
    /// a clone is then one reference count, not its strings and handles (changes copy it
    /// when a snapshot is still held: `Arc::make_mut`).
    sessions: RwLock<JidMap<Vec<Arc<Resource>>>>,
    /// Block lists (XEP-0191) of accounts with bound sessions, so that routing does not read
    /// the store for every stanza. Dropped when the account's last session unbinds.
    blocklists: RwLock<JidMap<Arc<BlockList>>>,
    /// Accounts without a session that were recently read from the store as message
    /// recipients, with their block lists (see [`OfflineRecipients`]).
    offline: Mutex<OfflineRecipients>,
    /// Bumped whenever a block list may have changed (a bind, a cached list replaced), so
    /// that a store read that started before the change is not cached after it.
    blocklist_generation: AtomicU64,
}

/// Most accounts without a session kept in [`Router::offline_recipient`]'s cache.
const OFFLINE_RECIPIENTS_MAX: usize = 4_096;
/// How long such an entry is trusted. Changes made in the server reach the cache at once
/// (bind, block-list commands); the bound is for changes from outside the running server
/// (`strait user remove`, `strait user import`), and for memory.
pub const OFFLINE_RECIPIENT_TTL: Duration = Duration::from_secs(30);

/// Recently addressed accounts that have no session: known to exist, and their block
/// lists. A message to an offline account needs both before it is stored, which were two
/// store reads per message, each on a blocking thread (two thread hand-offs: at 16,000
/// msg/s with a tenth of them to offline accounts, about ten points of a core out of the
/// server's 105, on the benchmark VM). People send several messages in a row to someone who
/// is away; the first reads, the rest find it here.
#[derive(Default)]
struct OfflineRecipients {
    entries: JidMap<(Instant, Arc<BlockList>)>,
}

impl OfflineRecipients {
    fn get(&self, bare: &str, now: Instant) -> Option<Arc<BlockList>> {
        let (at, list) = self.entries.get(bare)?;
        (now.saturating_duration_since(*at) < OFFLINE_RECIPIENT_TTL).then(|| list.clone())
    }

    fn insert(&mut self, bare: &str, list: Arc<BlockList>, now: Instant) {
        if self.entries.len() >= OFFLINE_RECIPIENTS_MAX && !self.entries.contains_key(bare) {
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < OFFLINE_RECIPIENT_TTL);
            if self.entries.len() >= OFFLINE_RECIPIENTS_MAX {
                // Every entry is fresh: start over rather than track recency for an
                // eviction order (a miss costs one store read).
                self.entries.clear();
            }
        }
        self.entries.insert(bare.to_owned(), (now, list));
    }
}

/// An account's blocked JIDs (bare, full, domain or domain/resource).
pub type BlockList = std::collections::HashSet<String>;

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `resource` for `bare`. A session already holding that resource is replaced: it is
    /// told to close with `conflict` (RFC 6120 §7.7.2.2, the policy Prosody and ejabberd use).
    pub fn bind(
        &self,
        bare: &str,
        resource: &str,
        conn_id: u64,
        handle: ConnHandle,
        max_resources: usize,
    ) -> Result<String, BindError> {
        let full = format!("{bare}/{resource}");
        self.forget_offline_recipient(bare);
        let mut map = self.sessions.write().expect("router lock");
        let list = map.entry(bare.to_owned()).or_default();
        if let Some(pos) = list.iter().position(|r| r.resource == resource) {
            let old = list.remove(pos);
            let _ = old
                .handle
                .tx
                .try_send(Outbound::Close(StreamError::with_text(
                    strait_wire::StreamErrorCondition::Conflict,
                    "another session bound this resource",
                )));
        } else if list.len() >= max_resources {
            if list.is_empty() {
                map.remove(bare);
            }
            return Err(BindError::TooManyResources(max_resources));
        }
        // Most accounts have one or two sessions: grow one at a time (the cap is small)
        // rather than to four slots at the first bind.
        list.reserve_exact(1);
        list.push(Arc::new(Resource {
            resource: resource.to_owned(),
            full: full.clone(),
            conn_id,
            handle,
            presence: None,
            priority: 0,
            interested: false,
            carbons: false,
            blocklist_interested: false,
            acks: false,
        }));
        Ok(full)
    }

    /// Removes a binding, if it still belongs to connection `conn_id` (a newer session may
    /// have taken the resource over).
    pub fn unbind(&self, bare: &str, resource: &str, conn_id: u64) {
        let mut map = self.sessions.write().expect("router lock");
        if let Some(list) = map.get_mut(bare) {
            list.retain(|r| !(r.resource == resource && r.conn_id == conn_id));
            if list.is_empty() {
                map.remove(bare);
                self.blocklists.write().expect("router lock").remove(bare);
            }
        }
    }

    /// Changes per-resource state (e.g. the carbons flag) of a binding that still belongs to
    /// connection `conn_id`; false if there is no such binding.
    pub fn update(
        &self,
        bare: &str,
        resource: &str,
        conn_id: u64,
        f: impl FnOnce(&mut Resource),
    ) -> bool {
        let mut map = self.sessions.write().expect("router lock");
        match map.get_mut(bare).and_then(|l| {
            l.iter_mut()
                .find(|r| r.resource == resource && r.conn_id == conn_id)
        }) {
            Some(r) => {
                f(Arc::make_mut(r));
                true
            }
            None => false,
        }
    }

    /// The cached block list of an account, if it is cached.
    pub fn cached_blocklist(&self, bare: &str) -> Option<Arc<BlockList>> {
        self.blocklists
            .read()
            .expect("router lock")
            .get(bare)
            .cloned()
    }

    /// Caches an account's block list, only while it has bound sessions.
    pub fn cache_blocklist(&self, bare: &str, list: Arc<BlockList>) {
        self.forget_offline_recipient(bare);
        let map = self.sessions.read().expect("router lock");
        if map.contains_key(bare) {
            self.blocklists
                .write()
                .expect("router lock")
                .insert(bare.to_owned(), list);
        } else {
            self.blocklists.write().expect("router lock").remove(bare);
        }
    }

    /// The block list of an account without a session that was read from the store less
    /// than [`OFFLINE_RECIPIENT_TTL`] ago (which says the account existed then).
    pub fn offline_recipient(&self, bare: &str) -> Option<Arc<BlockList>> {
        self.offline
            .lock()
            .expect("router lock")
            .get(bare, Instant::now())
    }

    /// The block-list generation to pass to [`Router::cache_offline_recipient`], taken
    /// before the store read.
    pub fn blocklist_generation(&self) -> u64 {
        self.blocklist_generation.load(Ordering::Acquire)
    }

    /// Remembers an existing account's block list, read from the store while it had no
    /// session; not if a block list may have changed since `generation` was taken, or the
    /// account has a session now (its list is then cached with the session's).
    pub fn cache_offline_recipient(&self, bare: &str, list: Arc<BlockList>, generation: u64) {
        let mut offline = self.offline.lock().expect("router lock");
        if self.blocklist_generation.load(Ordering::Acquire) != generation || self.is_online(bare) {
            return;
        }
        offline.insert(bare, list, Instant::now());
    }

    /// Drops what [`Router::cache_offline_recipient`] kept of `bare`, and makes reads that
    /// are still under way uncacheable.
    fn forget_offline_recipient(&self, bare: &str) {
        let mut offline = self.offline.lock().expect("router lock");
        self.blocklist_generation.fetch_add(1, Ordering::AcqRel);
        offline.entries.remove(bare);
    }

    /// Records a resource's current presence (`None` = unavailable).
    pub fn set_presence(&self, bare: &str, resource: &str, conn_id: u64, presence: Option<Stanza>) {
        let mut map = self.sessions.write().expect("router lock");
        if let Some(r) = map.get_mut(bare).and_then(|l| {
            l.iter_mut()
                .find(|r| r.resource == resource && r.conn_id == conn_id)
        }) {
            let r = Arc::make_mut(r);
            r.priority = presence.as_ref().map(presence_priority).unwrap_or(0);
            r.presence = presence.map(Arc::new);
        }
    }

    /// Marks a resource as having fetched the roster.
    pub fn set_interested(&self, bare: &str, resource: &str, conn_id: u64) {
        let mut map = self.sessions.write().expect("router lock");
        if let Some(r) = map.get_mut(bare).and_then(|l| {
            l.iter_mut()
                .find(|r| r.resource == resource && r.conn_id == conn_id)
        }) {
            Arc::make_mut(r).interested = true;
        }
    }

    /// All bound resources of an account (a snapshot).
    pub fn resources(&self, bare: &str) -> Vec<Arc<Resource>> {
        let map = self.sessions.read().expect("router lock");
        map.get(bare).cloned().unwrap_or_default()
    }

    /// The bound resources of an account that `keep` selects, cloning only those: for the
    /// per-message checks (carbons) that usually select none.
    pub fn resources_where(
        &self,
        bare: &str,
        keep: impl Fn(&Resource) -> bool,
    ) -> Vec<Arc<Resource>> {
        let map = self.sessions.read().expect("router lock");
        map.get(bare)
            .map(|rs| rs.iter().filter(|r| keep(r)).cloned().collect())
            .unwrap_or_default()
    }

    /// The resources a message to `bare` goes to ([`message_targets`]), cloning only those:
    /// on the message path, where cloning every resource and then the targets again showed
    /// in profiles.
    pub fn message_targets_of(&self, bare: &str) -> Vec<Arc<Resource>> {
        self.resources_where(bare, is_message_target)
    }

    /// The bound resource with this full JID.
    pub fn resource(&self, bare: &str, resource: &str) -> Option<Arc<Resource>> {
        let map = self.sessions.read().expect("router lock");
        map.get(bare)?
            .iter()
            .find(|r| r.resource == resource)
            .cloned()
    }

    /// Whether any session of this account is bound (then the account surely exists).
    pub fn is_online(&self, bare: &str) -> bool {
        self.sessions
            .read()
            .expect("router lock")
            .contains_key(bare)
    }

    /// Tells every session of one account to close (the account was removed).
    pub fn close_account(&self, bare: &str, error: &StreamError) {
        let map = self.sessions.read().expect("router lock");
        for r in map.get(bare).into_iter().flatten() {
            let _ = r.handle.tx.try_send(Outbound::Close(error.clone()));
        }
    }

    /// Tells every session of accounts under these domains to close (a provider's agreement
    /// was suspended or ended); how many were told.
    pub fn close_domains(&self, domains: &[String], error: &StreamError) -> usize {
        let map = self.sessions.read().expect("router lock");
        let mut n = 0;
        for (bare, resources) in map.iter() {
            let domain = bare.rsplit_once('@').map_or(bare.as_str(), |(_, d)| d);
            if domains.iter().any(|d| d == domain) {
                for r in resources {
                    let _ = r.handle.tx.try_send(Outbound::Close(error.clone()));
                    n += 1;
                }
            }
        }
        n
    }

    /// Tells every connection to close (server shutdown).
    pub fn close_all(&self, error: &StreamError) {
        let map = self.sessions.read().expect("router lock");
        for r in map.values().flatten() {
            let _ = r.handle.tx.try_send(Outbound::Close(error.clone()));
        }
    }

    /// Number of bound sessions.
    pub fn session_count(&self) -> usize {
        self.sessions
            .read()
            .expect("router lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// The `<priority/>` of a presence stanza (RFC 6121 §4.7.2.3), 0 when absent or invalid.
pub fn presence_priority(p: &Stanza) -> i8 {
    p.text_of_child(strait_wire::ns::CLIENT, "priority")
        .and_then(|t| t.trim().parse::<i8>().ok())
        .unwrap_or(0)
}

/// The resources a message to the bare JID goes to (RFC 6121 §8.5.2.1.1): every available
/// resource with non-negative priority.
pub fn message_targets(resources: &[Arc<Resource>]) -> Vec<&Arc<Resource>> {
    resources.iter().filter(|r| is_message_target(r)).collect()
}

fn is_message_target(r: &Resource) -> bool {
    r.is_available() && r.priority >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan() -> (ConnHandle, OutboundReceiver) {
        ConnHandle::new()
    }

    #[test]
    fn bind_conflict_replaces_old_session() {
        let r = Router::new();
        let (tx1, mut rx1) = chan();
        let (tx2, _rx2) = chan();
        assert_eq!(r.bind("a@x", "phone", 1, tx1, 5).unwrap(), "a@x/phone");
        r.bind("a@x", "phone", 2, tx2, 5).unwrap();
        match rx1.try_recv().unwrap() {
            Outbound::Close(e) => {
                assert_eq!(e.condition, strait_wire::StreamErrorCondition::Conflict)
            }
            other => panic!("{other:?}"),
        }
        // The old connection's cleanup must not remove the new binding.
        r.unbind("a@x", "phone", 1);
        assert_eq!(r.resources("a@x").len(), 1);
        r.unbind("a@x", "phone", 2);
        assert!(!r.is_online("a@x"));
    }

    #[tokio::test]
    async fn a_backlog_is_taken_whole_in_order_and_frees_the_queue() {
        let (tx, mut rx) = outbound_queue(3);
        let msg =
            |id: i64| Outbound::Durable(Box::new(Stanza::new("jabber:client", "message")), id);
        for id in 1..=3 {
            tx.try_send(msg(id)).unwrap();
        }
        assert!(matches!(tx.try_send(msg(4)), Err(TrySendError::Full(_))));
        assert!(matches!(
            tx.try_send_below(msg(4), 2),
            Err(TrySendError::Full(_))
        ));
        let ids = |r: Received| -> Vec<i64> {
            let Received::Items(q) = r else {
                panic!("{r:?}")
            };
            q.into_iter()
                .map(|o| match o {
                    Outbound::Durable(_, id) => id,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert!(matches!(rx.try_recv(), Some(Outbound::Durable(_, 1))));
        assert_eq!(ids(rx.recv_all().await), vec![2, 3]);
        // Taken whole: nothing left, no memory kept, and room for a full queue again.
        assert!(rx.try_recv().is_none());
        assert_eq!(rx.shared.lock().items.capacity(), 0);
        for id in 5..=7 {
            tx.try_send(msg(id)).unwrap();
        }
        assert_eq!(ids(rx.recv_all().await), vec![5, 6, 7]);
        // Nothing queued: it waits for the next item, and ends empty once the senders are gone.
        let waiting = tokio::time::timeout(Duration::from_millis(20), rx.recv_all()).await;
        assert!(
            waiting.is_err(),
            "returned with nothing queued: {waiting:?}"
        );
        tx.try_send(msg(8)).unwrap();
        assert_eq!(ids(rx.recv_all().await), vec![8]);
        drop(tx);
        assert!(ids(rx.recv_all().await).is_empty());
    }

    #[tokio::test]
    async fn a_kill_comes_before_the_backlog_once_and_ends_a_wait() {
        let (tx, mut rx) = outbound_queue(4);
        let msg =
            |id: i64| Outbound::Durable(Box::new(Stanza::new("jabber:client", "message")), id);
        tx.try_send(msg(1)).unwrap();
        tx.kill();
        assert!(matches!(rx.recv_all().await, Received::Killed));
        // Seen once: the backlog is still there for the connection's end to hand on.
        match rx.recv_all().await {
            Received::Items(q) => assert_eq!(q.len(), 1),
            other => panic!("{other:?}"),
        }
        // A waiting receiver wakes for a kill, and `recv` reports it as its end.
        let waiter = tokio::spawn(async move {
            let first = rx.recv(true).await;
            (first.is_none(), rx)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.kill();
        let (ended, mut rx) = waiter.await.unwrap();
        assert!(ended, "recv did not end on a kill");
        // Not taking items (a hibernating session whose backlog is full), it ignores new
        // items and still ends on a kill.
        tx.try_send(msg(2)).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(20), rx.recv(false)).await;
        assert!(waiting.is_err(), "returned without a kill: {waiting:?}");
        tx.kill();
        assert!(rx.recv(false).await.is_none());
        assert!(matches!(rx.recv(true).await, Some(Outbound::Durable(_, 2))));
    }

    #[test]
    fn resource_cap() {
        let r = Router::new();
        for i in 0..2 {
            r.bind("a@x", &format!("r{i}"), i, chan().0, 2).unwrap();
        }
        assert_eq!(
            r.bind("a@x", "r9", 9, chan().0, 2),
            Err(BindError::TooManyResources(2))
        );
    }

    #[test]
    fn bare_message_targets_skip_unavailable_and_negative_priority() {
        let r = Router::new();
        for (i, res) in ["a", "b", "c"].iter().enumerate() {
            r.bind("u@x", res, i as u64, chan().0, 5).unwrap();
        }
        let mut p = Stanza::new(strait_wire::ns::CLIENT, "presence");
        r.set_presence("u@x", "a", 0, Some(p.clone()));
        p.push_child_xml("<priority xmlns='jabber:client'>-1</priority>");
        r.set_presence("u@x", "b", 1, Some(p));
        let all = r.resources("u@x");
        let t: Vec<_> = message_targets(&all)
            .iter()
            .map(|r| r.resource.clone())
            .collect();
        assert_eq!(t, vec!["a"]);
        let t: Vec<_> = r
            .message_targets_of("u@x")
            .into_iter()
            .map(|r| r.resource.clone())
            .collect();
        assert_eq!(t, vec!["a"]);
    }

    fn list(items: &[&str]) -> Arc<BlockList> {
        Arc::new(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn offline_recipients_are_cached_until_a_session_binds() {
        let r = Router::new();
        let g = r.blocklist_generation();
        r.cache_offline_recipient("b@x", list(&["eve@x"]), g);
        let got = r.offline_recipient("b@x").expect("cached");
        assert!(got.contains("eve@x"));
        assert!(r.offline_recipient("c@x").is_none());
        // Binding may change the list (a block command): the entry goes, and unbinding
        // does not bring it back.
        let (tx, _rx) = chan();
        r.bind("b@x", "phone", 1, tx, 5).unwrap();
        assert!(r.offline_recipient("b@x").is_none());
        r.unbind("b@x", "phone", 1);
        assert!(r.offline_recipient("b@x").is_none());
    }

    #[test]
    fn a_read_from_before_a_change_is_not_cached() {
        let r = Router::new();
        let g = r.blocklist_generation();
        // The account's list changed (from a session) while the read was under way.
        r.cache_blocklist("b@x", list(&["eve@x"]));
        r.cache_offline_recipient("b@x", list(&[]), g);
        assert!(r.offline_recipient("b@x").is_none());
        // Nor is an account with a session cached here (its list lives with the session).
        let (tx, _rx) = chan();
        r.bind("b@x", "phone", 1, tx, 5).unwrap();
        let g = r.blocklist_generation();
        r.cache_offline_recipient("b@x", list(&[]), g);
        assert!(r.offline_recipient("b@x").is_none());
    }

    #[test]
    fn offline_recipients_expire_and_stay_bounded() {
        let mut c = OfflineRecipients::default();
        let t0 = Instant::now();
        c.insert("b@x", list(&[]), t0);
        assert!(c.get("b@x", t0 + OFFLINE_RECIPIENT_TTL / 2).is_some());
        assert!(c.get("b@x", t0 + OFFLINE_RECIPIENT_TTL).is_none());
        for i in 0..OFFLINE_RECIPIENTS_MAX + 10 {
            c.insert(&format!("u{i}@x"), list(&[]), t0);
            assert!(c.entries.len() <= OFFLINE_RECIPIENTS_MAX);
        }
        // Once full, expired entries go first.
        let mut c = OfflineRecipients::default();
        for i in 0..OFFLINE_RECIPIENTS_MAX {
            c.insert(&format!("u{i}@x"), list(&[]), t0);
        }
        let later = t0 + OFFLINE_RECIPIENT_TTL;
        c.insert("fresh@x", list(&[]), later);
        assert_eq!(c.entries.len(), 1);
        assert!(c.get("fresh@x", later).is_some());
    }
}
