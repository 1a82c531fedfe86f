//! Metrics for the operator's monitoring, in the OpenMetrics text format (which Prometheus
//! scrapes): `GET /metrics` on the `listen.metrics` addresses, plain HTTP, so keep them on
//! loopback or a private network. Encoded by the `prometheus-client` crate.
//!
//! What is counted where it happens costs one atomic add (stanzas from clients, logins,
//! stanzas across the interop boundary and their refusals, abuse reports); what is a level
//! (connections, sessions, links, providers, the consent cache, the process's memory, CPU and
//! descriptors) is read when scraped, so it costs nothing in between.

use crate::server::ServerState;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_store::ProviderStatus;
use strait_wire::StanzaKind;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The media type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once; more connections are closed.
const MAX_CONNECTIONS: usize = 16;
/// Longest a request's headers may take.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    mechanism: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrossingLabels {
    provider: String,
    direction: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// A counter whose value is read when scraped (the process's CPU time).
#[derive(Debug)]
struct ReadCounter(fn() -> f64);

impl EncodeMetric for ReadCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&(self.0)(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Stanzas from clients: message, presence, iq.
    stanzas: [Counter; 3],
    logins: Family<LoginLabels, Counter>,
    crossings: Family<CrossingLabels, Counter>,
    reports: Family<ProviderLabel, Counter>,
    connections: Gauge,
    sessions: Gauge,
    links: Family<DirectionLabel, Gauge>,
    providers: Family<StatusLabel, Gauge>,
    consent_cache: Gauge,
    store_queue: Gauge,
    held_queue: Gauge,
    rss: Gauge,
    open_fds: Gauge,
    start_time: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let stanzas = Family::<KindLabel, Counter>::default();
        r.register(
            "strait_client_stanzas",
            "Stanzas received from clients after login",
            stanzas.clone(),
        );
        let by_kind = ["message", "presence", "iq"]
            .map(|kind| stanzas.get_or_create(&KindLabel { kind }).clone());
        let logins = Family::<LoginLabels, Counter>::default();
        r.register(
            "strait_logins",
            "Client logins (SASL) by mechanism and outcome: success, or the failure condition",
            logins.clone(),
        );
        let crossings = Family::<CrossingLabels, Counter>::default();
        r.register(
            "strait_boundary_stanzas",
            "Stanzas between a provider's users and the platform's users, by provider, direction (in: from the provider's users) and result (admitted, or the condition of the refusal)",
            crossings.clone(),
        );
        let reports = Family::<ProviderLabel, Counter>::default();
        r.register(
            "strait_abuse_reports",
            "Abuse reports (XEP-0377) recorded, by the reported user's provider ('-' for the platform's own users)",
            reports.clone(),
        );
        let connections = Gauge::default();
        r.register(
            "strait_client_connections",
            "Client connections open (before and after login)",
            connections.clone(),
        );
        let sessions = Gauge::default();
        r.register(
            "strait_sessions",
            "Bound client resources",
            sessions.clone(),
        );
        let links = Family::<DirectionLabel, Gauge>::default();
        r.register(
            "strait_interop_links",
            "Interop links (s2s) to and from federated providers' servers: outbound links open or opening, inbound streams authenticated",
            links.clone(),
        );
        let providers = Family::<StatusLabel, Gauge>::default();
        r.register(
            "strait_providers",
            "Registered providers by the status of their agreement (terminated ones not counted)",
            providers.clone(),
        );
        let consent_cache = Gauge::default();
        r.register(
            "strait_consent_cache_entries",
            "Platform users whose consent the boundary holds in memory",
            consent_cache.clone(),
        );
        let store_queue = Gauge::default();
        r.register(
            "strait_store_write_batches_queued",
            format!(
                "Write batches nobody waits for (archive copies, deletions) queued for the store and not committed yet; past {}, senders wait for their commits",
                crate::server::MAX_DETACHED_WRITES
            ),
            store_queue.clone(),
        );
        let held_queue = Gauge::default();
        r.register(
            "strait_store_held_copies_queued",
            format!(
                "Copies of delivered messages held for clients that acknowledge, queued for the store (held back up to stream_management.copy_hold_ms, most then cancelled by the acknowledgement) and not committed or cancelled yet; past {}, senders wait for their commits",
                crate::server::MAX_HELD_WRITES
            ),
            held_queue.clone(),
        );
        let rss = Gauge::default();
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            rss.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ReadCounter(cpu_seconds),
        );
        let open_fds = Gauge::default();
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            open_fds.clone(),
        );
        let start_time = Gauge::default();
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            start_time.clone(),
        );
        Metrics {
            registry: r,
            stanzas: by_kind,
            logins,
            crossings,
            reports,
            connections,
            sessions,
            links,
            providers,
            consent_cache,
            store_queue,
            held_queue,
            rss,
            open_fds,
            start_time,
        }
    }

    /// A stanza from a client (after login).
    pub fn client_stanza(&self, kind: StanzaKind) {
        let i = match kind {
            StanzaKind::Message => 0,
            StanzaKind::Presence => 1,
            StanzaKind::Iq => 2,
            StanzaKind::Other => return,
        };
        self.stanzas[i].inc();
    }

    /// A SASL exchange ended: `failure` is the failure's condition, `None` for a success.
    pub fn login(&self, mechanism: &str, failure: Option<&'static str>) {
        self.logins
            .get_or_create(&LoginLabels {
                mechanism: mechanism.to_owned(),
                result: failure.unwrap_or("success"),
            })
            .inc();
    }

    /// A stanza crossed the boundary (`refused`: the condition it was refused with).
    pub fn crossing(&self, provider: &str, inbound: bool, refused: Option<&'static str>) {
        self.crossings
            .get_or_create(&CrossingLabels {
                provider: provider.to_owned(),
                direction: if inbound { "in" } else { "out" },
                result: refused.unwrap_or("admitted"),
            })
            .inc();
    }

    /// An abuse report was recorded about a user of `provider` (`None`: not a provider's).
    pub fn report(&self, provider: Option<&str>) {
        self.reports
            .get_or_create(&ProviderLabel {
                provider: provider.unwrap_or("-").to_owned(),
            })
            .inc();
    }

    /// The levels, read now, and everything encoded.
    pub fn render(&self, state: &ServerState) -> String {
        // Every connection holds a permit, and so does the client accept loop while it waits
        // for the next one (it takes the permit first, so that a full server stops accepting).
        let max = state.config.limits.max_connections;
        let held = max.saturating_sub(state.connections.available_permits());
        let waiting = usize::from(
            !state.config.listen.c2s.is_empty() || !state.config.listen.c2s_direct_tls.is_empty(),
        );
        self.connections.set(held.saturating_sub(waiting) as i64);
        self.sessions.set(state.router.session_count() as i64);
        self.links
            .get_or_create(&DirectionLabel { direction: "out" })
            .set(state.links.outbound() as i64);
        self.links
            .get_or_create(&DirectionLabel { direction: "in" })
            .set(state.links.inbound_streams() as i64);
        let snapshot = state.interop.snapshot();
        for status in ProviderStatus::ALL {
            if status == ProviderStatus::Terminated {
                continue;
            }
            let n = snapshot
                .providers()
                .iter()
                .filter(|p| p.status == status)
                .count();
            self.providers
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(n as i64);
        }
        self.consent_cache.set(state.interop.consents.len() as i64);
        self.store_queue.set(state.detached_writes() as i64);
        self.held_queue.set(state.held_writes() as i64);
        self.rss.set(resident_bytes().unwrap_or(0) as i64);
        self.open_fds.set(open_fds().unwrap_or(0) as i64);
        let _ = &self.start_time;
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }
}

/// The process's user and system CPU time, in seconds, from /proc/self/stat (fields 14 and
/// 15, in clock ticks; the command name before them is in parentheses and may hold spaces).
fn cpu_seconds() -> f64 {
    cpu_ticks().unwrap_or(0) as f64 / rustix::param::clock_ticks_per_second() as f64
}

fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// Resident memory, from /proc/self/statm (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Serves `GET /metrics` on `listener` until shutdown.
pub async fn accept_loop(state: Arc<ServerState>, listener: TcpListener) {
    let mut shutdown = state.shutdown.clone();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve(state, tcp, peer).await;
        });
    }
}

async fn serve(state: Arc<ServerState>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let io = hyper_util::rt::TokioIo::new(tcp);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(answer(&state, &req)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!(%peer, "metrics connection: {e}");
    }
}

fn answer<B>(state: &ServerState, req: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let response = |status: u16, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.uri().path() != "/metrics" {
        return response(404, "text/plain", "only /metrics is here\n".into());
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return response(405, "text/plain", "GET /metrics\n".into());
    }
    response(200, CONTENT_TYPE, state.metrics.render(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_encoded_with_their_labels() {
        let m = Metrics::new();
        m.client_stanza(StanzaKind::Message);
        m.client_stanza(StanzaKind::Message);
        m.login("SCRAM-SHA-256", None);
        m.login("PLAIN", Some("not-authorized"));
        m.crossing("acme", true, None);
        m.crossing("acme", false, Some("not-allowed"));
        m.report(Some("acme"));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for line in [
            "strait_client_stanzas_total{kind=\"message\"} 2",
            "strait_client_stanzas_total{kind=\"iq\"} 0",
            "strait_logins_total{mechanism=\"SCRAM-SHA-256\",result=\"success\"} 1",
            "strait_logins_total{mechanism=\"PLAIN\",result=\"not-authorized\"} 1",
            "strait_boundary_stanzas_total{provider=\"acme\",direction=\"in\",result=\"admitted\"} 1",
            "strait_boundary_stanzas_total{provider=\"acme\",direction=\"out\",result=\"not-allowed\"} 1",
            "strait_abuse_reports_total{provider=\"acme\"} 1",
            "# TYPE process_cpu_seconds counter",
        ] {
            assert!(out.contains(line), "{line} not in\n{out}");
        }
        assert!(out.ends_with("# EOF\n"), "{out}");
        assert!(cpu_ticks().is_some());
        assert!(resident_bytes().unwrap() > 0 && open_fds().unwrap() > 0);
    }
}
