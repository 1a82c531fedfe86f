//! The server as a whole: shared state, startup (store, TLS, listeners) and graceful shutdown.

use crate::config::Config;
use crate::net::listener;
use crate::router::Router;
use crate::sasl::{LoginThrottle, ThrottleConfig};
use crate::tls::{self, TlsConfigs};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use strait_store::{SqliteStore, Store};
use strait_wire::{StreamError, StreamErrorCondition};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] strait_store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State shared by every connection.
pub struct ServerState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub router: Router,
    pub throttle: LoginThrottle,
    pub tls: TlsConfigs,
    /// Keys the fake SCRAM salts of unknown accounts, so they are stable but unguessable.
    pub fake_salt_key: [u8; 32],
    pub shutdown: watch::Receiver<bool>,
    pub connections: Arc<Semaphore>,
    /// Resumable sessions (XEP-0198).
    pub sm: crate::features::sm::Registry,
    /// Counters and levels for `GET /metrics` (`listen.metrics`).
    pub metrics: crate::http::metrics::Metrics,
    /// Archive preferences (XEP-0313) of recently active accounts.
    pub archive_prefs: crate::features::mam::PrefsCache,
    /// XEP-0363 uploads, when the service is on (`upload.enabled` with a listener).
    pub uploads: Option<Arc<crate::features::upload::Uploads>>,
    /// The server's disco#info answer (features and XEP-0157 contact addresses) and its
    /// XEP-0115 verification hash, made at start from the configuration.
    pub server_info: String,
    pub server_caps_ver: String,
    /// Recent in-band password changes (XEP-0077), to space them out.
    pub password_changes: crate::features::register::PasswordChanges,
    /// Accounts' vCard photo hashes (XEP-0398 presence stamping).
    pub avatar_hashes: crate::features::avatar::HashCache,
    /// External components (XEP-0114) connected now.
    pub components: crate::component::Components,
    /// Interop links to federated providers' servers, open or opening.
    pub links: crate::s2s::Links,
    /// This state itself, for code that holds only a reference and must start a task (an
    /// interop link opened by presence routing).
    pub(crate) me: std::sync::OnceLock<std::sync::Weak<ServerState>>,
    /// Third-party providers and the boundary policy's state.
    pub interop: crate::interop::Interop,
    /// The negotiation settings every client connection shares, made on first use.
    pub c2s_config: std::sync::OnceLock<Arc<strait_wire::negotiation::C2sConfig>>,
    /// Write batches queued by [`ServerState::queue_detached`] and not yet committed.
    detached_writes: Arc<AtomicUsize>,
    /// Held copies queued by [`ServerState::queue_held`] and not yet committed or cancelled.
    held_writes: Arc<AtomicUsize>,
    /// Copies held for clients whose rows the store failed to write after delivery.
    pub(crate) failed_holds: Arc<crate::features::delivery::FailedHolds>,
    next_conn_id: AtomicU64,
}

/// Most write batches that may wait for the store's writer with nobody waiting for them
/// ([`ServerState::queue_detached`]); past it, callers wait for their commits, which slows
/// the senders down to what the writer commits (backpressure). A sender that meets the bound
/// waits behind everything pending, so the bound is also the longest queue a saturated writer
/// builds: with 4,096, closed-loop round trips (pingpong, archive on) had a p99 of 454 ms;
/// with 1,024, 130 ms. But the bound must also ride out the writer's short stalls: while the
/// checkpoint thread fsyncs the database file, the writer's own fsyncs wait behind it (on
/// the benchmark VM's virtio disk for up to a few hundred milliseconds), and with 1,024 at
/// 8,000 msg/s archive on every sender then waited, seconds with latencies of 60 to 150 ms
/// several times per run (p99 4.4 to 53 ms). With 2,048 those seconds are gone (p99 2.9 and
/// 3.3 ms, every second's maximum under 11 ms), and the saturated pingpong's p99 is 257 ms
/// against 184 (p50 19 against 22 ms; by hand, AMD host, after the writer's linger).
pub const MAX_DETACHED_WRITES: usize = 2048;

/// Most copies held for clients that acknowledge that may be queued for the store's writer
/// with nobody waiting for them ([`ServerState::queue_held`]). The writer holds each back
/// for a while (`stream_management.copy_hold_ms`, 50 ms by default) so that
/// acknowledgements cancel them unwritten; one is pending until its acknowledgement comes or
/// its hold ends: at 32,000 msg/s on loopback a few hundred to 1,600 at any time, which is
/// why they are not counted against [`MAX_DETACHED_WRITES`]. Each is one message's text and
/// a few hundred bytes besides: at most a few tens of megabytes.
pub const MAX_HELD_WRITES: usize = 65_536;

impl ServerState {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs a blocking store operation off the async threads.
    pub async fn store<T, F>(&self, f: F) -> Result<T, strait_store::StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, strait_store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(r) => r,
            Err(e) => Err(strait_store::StoreError::Backend(format!(
                "store task failed: {e}"
            ))),
        }
    }

    /// Commits `ops` together (one transaction) and returns their outcomes, in order, once they
    /// are durable. Waits without holding a thread: the store's writer calls back.
    pub async fn write_batch(
        &self,
        ops: Vec<strait_store::WriteOp>,
    ) -> Vec<strait_store::WriteOutcome> {
        self.queue_writes(ops).await
    }

    /// Queues `ops` for the store's writer now (they are committed in queue order after
    /// everything queued before) and returns what waits for their outcomes: the caller can do
    /// other work between queueing and waiting.
    pub fn queue_writes(
        &self,
        ops: Vec<strait_store::WriteOp>,
    ) -> impl std::future::Future<Output = Vec<strait_store::WriteOutcome>> + Send + 'static {
        let n = ops.len();
        let rx = (n > 0).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.store.write_batch(
                ops,
                Box::new(move |outcomes| {
                    let _ = tx.send(outcomes);
                }),
            );
            rx
        });
        async move {
            let Some(rx) = rx else {
                return Vec::new();
            };
            match rx.await {
                Ok(outcomes) => outcomes,
                Err(_) => (0..n)
                    .map(|_| {
                        Err(strait_store::StoreError::Backend(
                            "the store's writer stopped".into(),
                        ))
                    })
                    .collect(),
            }
        }
    }

    /// Queues `ops` for the store's writer now, with `done` called on their outcomes once
    /// committed, and nobody waiting; unless [`MAX_DETACHED_WRITES`] batches queued so are
    /// still pending: then nothing is queued and `ops` and `done` come back, for the caller to
    /// queue and wait for.
    pub fn queue_detached(
        &self,
        ops: Vec<strait_store::WriteOp>,
        done: strait_store::WriteDone,
    ) -> Option<(Vec<strait_store::WriteOp>, strait_store::WriteDone)> {
        let pending = &self.detached_writes;
        if pending.fetch_add(1, Ordering::AcqRel) >= MAX_DETACHED_WRITES {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Some((ops, done));
        }
        let pending = Arc::clone(pending);
        self.store.write_batch_lazy(
            ops,
            Box::new(move |outcomes| {
                pending.fetch_sub(1, Ordering::AcqRel);
                done(outcomes);
            }),
        );
        None
    }

    /// Queues `hold` (a copy held for a client that acknowledges) for the store's writer now,
    /// with `done` called on its outcome once committed or cancelled, and nobody waiting;
    /// unless [`MAX_HELD_WRITES`] are pending: then it comes back, for the caller to queue
    /// and wait for.
    pub fn queue_held(
        &self,
        hold: strait_store::WriteOp,
        done: strait_store::WriteDone,
    ) -> Option<(strait_store::WriteOp, strait_store::WriteDone)> {
        let pending = &self.held_writes;
        if pending.fetch_add(1, Ordering::AcqRel) >= MAX_HELD_WRITES {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Some((hold, done));
        }
        let pending = Arc::clone(pending);
        self.store.write_batch_lazy(
            vec![hold],
            Box::new(move |outcomes| {
                pending.fetch_sub(1, Ordering::AcqRel);
                done(outcomes);
            }),
        );
        None
    }

    /// Held copies queued by [`ServerState::queue_held`] and not yet committed or cancelled.
    pub fn held_writes(&self) -> usize {
        self.held_writes.load(Ordering::Acquire)
    }

    /// Write batches queued by [`ServerState::queue_detached`] and not yet committed.
    pub fn detached_writes(&self) -> usize {
        self.detached_writes.load(Ordering::Acquire)
    }

    /// Waits until every write queued before it is committed (the store's writer is first in,
    /// first out).
    pub async fn store_barrier(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.write_batch(
            Vec::new(),
            Box::new(move |_| {
                let _ = tx.send(());
            }),
        );
        let _ = rx.await;
    }

    /// Queues `ops` without waiting for them (failures are logged): for writes nobody waits
    /// on, such as deleting stored copies of messages a client acknowledged.
    pub fn write_batch_detached(&self, ops: Vec<strait_store::WriteOp>, what: &'static str) {
        if ops.is_empty() {
            return;
        }
        self.store.write_batch_lazy(
            ops,
            Box::new(move |outcomes| {
                for o in outcomes {
                    if let Err(e) = o {
                        tracing::error!("{what}: {e}");
                    }
                }
            }),
        );
    }

    /// Whether accounts under `domain` live here: the platform's own domains, and those
    /// served on behalf of registered providers (their enlisted users).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domain(domain).is_some()
    }

    /// The stored form of a domain whose accounts live here (see [`Self::is_local_domain`]).
    pub fn local_domain(&self, domain: &str) -> Option<String> {
        if let Some(d) = self.config.served_domain(domain) {
            return Some(d.to_owned());
        }
        let snapshot = self.interop.snapshot();
        let p = snapshot.provider_of_domain(domain)?;
        if p.link.is_some() {
            // A federated provider: its users live on its own server.
            return None;
        }
        p.domains
            .iter()
            .find(|d| d.eq_ignore_ascii_case(domain))
            .cloned()
    }
}

/// A started server.
pub struct Server {
    state: Arc<ServerState>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    local_addrs: Vec<(SocketAddr, bool)>,
    local_https: Vec<SocketAddr>,
    local_components: Vec<SocketAddr>,
    local_s2s: Vec<SocketAddr>,
    local_metrics: Vec<SocketAddr>,
    store: Arc<SqliteStore>,
}

/// The URL base of each served domain's upload slots: `upload.public_url` with `{domain}`
/// filled in, else `https://upload.<domain>:<port>` (the first HTTPS listener's port).
fn upload_bases(config: &Config, port: u16) -> std::collections::HashMap<String, String> {
    config
        .domains
        .iter()
        .map(|d| {
            let d = d.to_ascii_lowercase();
            let base = match &config.upload.public_url {
                Some(url) => url.replace("{domain}", &d).trim_end_matches('/').to_owned(),
                None => format!(
                    "https://{}:{port}",
                    crate::features::upload::Uploads::service_jid(&d)
                ),
            };
            (d, base)
        })
        .collect()
}

/// Binds a listening socket, or says which address could not be had.
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

/// How often archived messages past `archive.keep_days` are looked for.
const ARCHIVE_EXPIRY_EVERY: Duration = Duration::from_secs(3600);
/// Archived copies deleted per store write: each round is one short write, so messages
/// keep flowing while a large backlog of expired copies goes.
const ARCHIVE_EXPIRY_ROUND: usize = 2_000;

/// Deletes archived messages older than `keep_days`, at start and then every
/// [`ARCHIVE_EXPIRY_EVERY`], until shutdown.
async fn expire_archives(state: Arc<ServerState>, keep_days: u32) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let before = crate::features::now_ms() - i64::from(keep_days) * 86_400_000;
        let mut gone = 0usize;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match state
                .store(move |st| st.archive_expire(before, ARCHIVE_EXPIRY_ROUND))
                .await
            {
                Ok(n) => {
                    gone += n;
                    if n < ARCHIVE_EXPIRY_ROUND {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!("expiring archived messages: {e}");
                    break;
                }
            }
            // Let other writes through between rounds.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if gone > 0 {
            tracing::info!(
                messages = gone,
                keep_days,
                "expired archived messages deleted"
            );
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(ARCHIVE_EXPIRY_EVERY) => {}
        }
    }
}

/// How often expired uploads are looked for.
const UPLOAD_EXPIRY_EVERY: Duration = Duration::from_secs(3600);

/// Deletes expired uploads every [`UPLOAD_EXPIRY_EVERY`] until shutdown.
async fn expire_uploads(
    uploads: Arc<crate::features::upload::Uploads>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(UPLOAD_EXPIRY_EVERY) => {}
        }
        let u = uploads.clone();
        if let Ok(n) = tokio::task::spawn_blocking(move || u.expire()).await
            && n > 0
        {
            tracing::info!(files = n, "expired uploads deleted");
        }
    }
}

impl Server {
    /// Opens the store, loads or makes certificates and binds every listener.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = Arc::new(SqliteStore::open(&config.store_path())?);
        Self::start_with_store(config, store).await
    }

    async fn start_with_store(
        config: Config,
        store: Arc<SqliteStore>,
    ) -> Result<Server, ServerError> {
        let tls = tls::load(&config)?;
        store.set_hold(Duration::from_millis(config.stream_management.copy_hold_ms));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let a = &config.auth;
        let throttle = LoginThrottle::new(ThrottleConfig {
            max_failures_per_account: a.max_failures_per_account,
            max_failures_per_addr: a.max_failures_per_address,
            window: Duration::from_secs(a.failure_window_secs),
            lockout: Duration::from_secs(a.lockout_secs),
        });
        let mut fake_salt_key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut fake_salt_key[..]);
        let listeners = {
            let mut v = Vec::new();
            for (addrs, direct) in [
                (&config.listen.c2s, false),
                (&config.listen.c2s_direct_tls, true),
            ] {
                for addr in addrs {
                    v.push((bind(*addr).await?, direct));
                }
            }
            v
        };
        // Component listeners only when components are configured.
        let mut component_sockets = Vec::new();
        if !config.components.is_empty() {
            for addr in &config.listen.component {
                component_sockets.push(bind(*addr).await?);
            }
        }
        // Interop link listeners (federated providers' servers connect there).
        let mut s2s_sockets = Vec::new();
        for addr in &config.listen.s2s {
            s2s_sockets.push(bind(*addr).await?);
        }
        let mut metrics_sockets = Vec::new();
        for addr in &config.listen.metrics {
            metrics_sockets.push(bind(*addr).await?);
        }
        // The HTTPS listeners are bound before anything starts, like the client ones: a port
        // in use stops the start with a clear error.
        let mut https = Vec::new();
        if config.upload.active() {
            for addr in &config.upload.listen {
                https.push(bind(*addr).await?);
            }
        }
        let uploads = match https.first() {
            Some(first) => {
                let port = first
                    .local_addr()
                    .map_err(|source| ServerError::Listen {
                        addr: config.upload.listen[0],
                        source,
                    })?
                    .port();
                let bases = upload_bases(&config, port);
                let u =
                    crate::features::upload::Uploads::open(&config.data_dir, &config.upload, bases)
                        .map_err(|source| ServerError::DataDir {
                            path: config.data_dir.join("upload"),
                            source,
                        })?;
                Some(Arc::new(u))
            }
            None => None,
        };
        let server_info = crate::features::disco::server_info(&config.contact);
        let server_caps_ver = crate::features::disco::caps_ver(&server_info);
        let state = Arc::new(ServerState {
            server_info,
            server_caps_ver,
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
            store: store.clone(),
            router: Router::new(),
            throttle,
            tls,
            fake_salt_key,
            shutdown,
            sm: Default::default(),
            metrics: Default::default(),
            archive_prefs: Default::default(),
            uploads: uploads.clone(),
            components: Default::default(),
            links: Default::default(),
            me: Default::default(),
            interop: Default::default(),
            avatar_hashes: Default::default(),
            password_changes: Default::default(),
            c2s_config: Default::default(),
            detached_writes: Default::default(),
            held_writes: Default::default(),
            failed_holds: Default::default(),
            next_conn_id: AtomicU64::new(1),
        });
        let _ = state.me.set(Arc::downgrade(&state));
        let mut tasks = JoinSet::new();
        // The provider registry is read before the first client connects.
        let registry = crate::interop::refresh(&state, -1).await;
        crate::interop::refresh_consents(&state).await;
        tasks.spawn(crate::interop::watch_registry(state.clone(), registry));
        let mut local_addrs = Vec::new();
        let mut local_https = Vec::new();
        let mut local_components = Vec::new();
        let mut local_s2s = Vec::new();
        let mut sockets = Vec::new();
        for (socket, direct_tls) in listeners {
            let addr = socket.local_addr().map_err(|source| ServerError::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            tracing::info!(%addr, direct_tls, "listening for clients");
            local_addrs.push((addr, direct_tls));
            sockets.push(listener::Listener { socket, direct_tls });
        }
        tasks.spawn(listener::accept_loop(state.clone(), sockets));
        if state.config.archive.keep_days > 0 {
            tasks.spawn(expire_archives(
                state.clone(),
                state.config.archive.keep_days,
            ));
        }
        for socket in component_sockets {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "listening for components (XEP-0114)");
                local_components.push(addr);
            }
            tasks.spawn(crate::component::accept_loop(state.clone(), socket));
        }
        for socket in s2s_sockets {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "listening for interop links (s2s)");
                local_s2s.push(addr);
            }
            tasks.spawn(crate::s2s::inbound::accept_loop(state.clone(), socket));
        }
        let mut local_metrics = Vec::new();
        for socket in metrics_sockets {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "serving metrics (GET /metrics, plain HTTP)");
                local_metrics.push(addr);
            }
            tasks.spawn(crate::http::metrics::accept_loop(state.clone(), socket));
        }
        if let Some(uploads) = &uploads {
            for socket in https {
                if let Ok(addr) = socket.local_addr() {
                    tracing::info!(%addr, "listening for HTTPS (uploads)");
                    local_https.push(addr);
                }
                tasks.spawn(crate::http::accept_loop(
                    socket,
                    state.tls.https.clone(),
                    uploads.clone(),
                    state.config.upload.max_connections,
                    state.shutdown.clone(),
                ));
            }
            tasks.spawn(expire_uploads(uploads.clone(), state.shutdown.clone()));
        }
        Ok(Server {
            state,
            shutdown_tx,
            tasks,
            local_addrs,
            local_https,
            local_components,
            local_s2s,
            local_metrics,
            store,
        })
    }

    /// The bound metrics listener addresses.
    pub fn metrics_addrs(&self) -> &[SocketAddr] {
        &self.local_metrics
    }

    /// The bound component (XEP-0114) listener addresses.
    pub fn component_addrs(&self) -> &[SocketAddr] {
        &self.local_components
    }

    /// The bound interop link (s2s) listener addresses.
    pub fn s2s_addrs(&self) -> &[SocketAddr] {
        &self.local_s2s
    }

    /// The bound HTTPS (upload) listener addresses.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.local_https
    }

    /// The bound listener addresses, with `true` for direct TLS (useful with port 0).
    pub fn local_addrs(&self) -> &[(SocketAddr, bool)] {
        &self.local_addrs
    }

    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Stops accepting, closes every session with `system-shutdown`, waits for the connections
    /// to finish (at most `grace`), then flushes and closes the store.
    pub async fn shutdown(mut self, grace: Duration) {
        tracing::info!("shutting down");
        let _ = self.shutdown_tx.send(true);
        self.state
            .router
            .close_all(&StreamError::new(StreamErrorCondition::SystemShutdown));
        let deadline = tokio::time::Instant::now() + grace;
        while self.tasks.join_next().await.is_some() {}
        // Every connection holds a permit: all permits back means all connections are done.
        let all = self.state.config.limits.max_connections as u32;
        let _ = tokio::time::timeout_at(deadline, self.state.connections.acquire_many(all)).await;
        if let Err(e) = self.store.close() {
            tracing::error!("closing the store: {e}");
        }
        tracing::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback ports chosen by the system, no upload listener; its data
    /// directory (kept while the test runs) and its database file.
    async fn start_on_loopback() -> (tempfile::TempDir, std::path::PathBuf, Server) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            domains: vec!["example.test".into()],
            ..Config::default()
        };
        config.listen.c2s = vec!["127.0.0.1:0".parse().unwrap()];
        config.listen.c2s_direct_tls = Vec::new();
        config.upload.listen = Vec::new();
        let db = config.store_path();
        let server = Server::start(config).await.unwrap();
        (dir, db, server)
    }

    /// Writes nobody waits for are bounded: while the store's writer cannot commit (another
    /// connection holds the database's write lock), `MAX_DETACHED_WRITES` batches are taken and
    /// the next is handed back for its caller to wait on; once the writer commits, every
    /// callback has run and the count is back to zero.
    #[tokio::test]
    async fn detached_writes_are_bounded() {
        let (_dir, db, server) = start_on_loopback().await;
        let state = server.state().clone();

        let blocker = rusqlite::Connection::open(&db).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..MAX_DETACHED_WRITES {
            let d = Arc::clone(&done);
            let back = state.queue_detached(
                Vec::new(),
                Box::new(move |_| {
                    d.fetch_add(1, Ordering::SeqCst);
                }),
            );
            assert!(back.is_none(), "batch {i} refused");
        }
        assert_eq!(state.detached_writes(), MAX_DETACHED_WRITES);
        let back = state.queue_detached(Vec::new(), Box::new(|_| panic!("not queued")));
        assert!(back.is_some(), "one batch too many was taken");
        assert_eq!(state.detached_writes(), MAX_DETACHED_WRITES);
        assert_eq!(done.load(Ordering::SeqCst), 0, "committed under the lock");

        blocker.execute_batch("COMMIT").unwrap();
        drop(blocker);
        state.store_barrier().await;
        assert_eq!(done.load(Ordering::SeqCst), MAX_DETACHED_WRITES);
        assert_eq!(state.detached_writes(), 0);
        drop(state);
        server.shutdown(Duration::from_secs(1)).await;
    }

    /// Held copies have a bound of their own, far above what a healthy server has pending
    /// while the store holds them back: `MAX_HELD_WRITES` are taken, the next is handed back
    /// for its caller to wait on, and a barrier (a write somebody waits for) lets them all go.
    #[tokio::test]
    async fn held_writes_are_bounded() {
        let (_dir, db, server) = start_on_loopback().await;
        let state = server.state().clone();
        // Nothing due gets written meanwhile (queueing them takes longer than holding one).
        let blocker = rusqlite::Connection::open(&db).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let hold = |id: i64| strait_store::WriteOp::OfflinePush {
            owner: "nobody@example.test".into(),
            stanza: "<message/>".into(),
            stamp_ms: 1,
            limit: usize::MAX,
            id: Some(id),
        };
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..MAX_HELD_WRITES {
            let d = Arc::clone(&done);
            let id = state.store.offline_reserve_id().unwrap();
            let back = state.queue_held(
                hold(id),
                Box::new(move |_| {
                    d.fetch_add(1, Ordering::SeqCst);
                }),
            );
            assert!(back.is_none(), "hold {i} refused");
        }
        assert_eq!(state.held_writes(), MAX_HELD_WRITES);
        let back = state.queue_held(hold(0), Box::new(|_| panic!("not queued")));
        assert!(back.is_some(), "one hold too many was taken");
        assert_eq!(
            state.detached_writes(),
            0,
            "holds counted as detached writes"
        );

        blocker.execute_batch("COMMIT").unwrap();
        drop(blocker);
        state.store_barrier().await;
        assert_eq!(done.load(Ordering::SeqCst), MAX_HELD_WRITES);
        assert_eq!(state.held_writes(), 0);
        drop(state);
        server.shutdown(Duration::from_secs(1)).await;
    }
}
