//! Server configuration: built-in defaults, overridden by a TOML file, then by `STRAIT__…`
//! environment variables, then by command-line flags (applied by the binary).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Every setting of `strait serve`. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite store and generated certificates live.
    pub data_dir: PathBuf,
    /// The domains (virtual hosts) this server serves.
    pub domains: Vec<String>,
    /// Threads that run connections and routing (tokio workers); 0: one per core less one,
    /// at least one ([`Config::worker_threads`]).
    pub workers: usize,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub stream_management: StreamManagementConfig,
    pub archive: ArchiveConfig,
    pub upload: UploadConfig,
    /// External components (XEP-0114), each with its own domain and shared secret.
    pub components: Vec<ComponentConfig>,
    /// Where people reach the operator (XEP-0157), announced in the server's disco#info.
    pub contact: ContactConfig,
}

/// Contact addresses (XEP-0157): URIs (`mailto:`, `xmpp:`, `https:`…) for each purpose.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContactConfig {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactConfig {
    /// (XEP-0157 field name, addresses) for each purpose that has addresses.
    pub fn fields(&self) -> Vec<(&'static str, &[String])> {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n, v.as_slice()))
        .collect()
    }
}

/// One external component (XEP-0114): it connects to `listen.component`, opens a stream to
/// `domain` and proves it knows `secret`; then it sends and receives every stanza for that
/// domain.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    pub domain: String,
    pub secret: String,
}

impl std::fmt::Debug for ComponentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentConfig")
            .field("domain", &self.domain)
            .field("secret", &"(hidden)")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Client listeners that start in plain text and require STARTTLS (RFC 6120).
    pub c2s: Vec<SocketAddr>,
    /// Client listeners that start with TLS (XEP-0368), ALPN `xmpp-client`.
    pub c2s_direct_tls: Vec<SocketAddr>,
    /// External component listeners (XEP-0114). The protocol has no TLS: loopback only.
    pub component: Vec<SocketAddr>,
    /// Interop link listeners (XMPP s2s, RFC 6120; STARTTLS and SASL EXTERNAL required):
    /// where federated providers' servers connect. None by default; 5269 is the standard port.
    pub s2s: Vec<SocketAddr>,
    /// Where `GET /metrics` is served (OpenMetrics text, plain HTTP: loopback or a private
    /// network). None by default.
    pub metrics: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates per domain. A served domain without one gets a certificate signed by the
    /// local CA in `<data_dir>/tls/`, made on first start.
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub domain: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest stanza before authentication, in bytes.
    pub max_stanza_bytes_unauthenticated: usize,
    /// Largest stanza after authentication, in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Open connections across all listeners; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Sustained read rate per connection, bytes per second (reading slows, nothing is dropped).
    pub rate_bytes_per_sec: u64,
    /// Burst allowance per connection, in bytes.
    pub burst_bytes: u64,
    /// Seconds a connection has to authenticate and bind a resource.
    pub unauthenticated_timeout_secs: u64,
    /// Seconds without any byte from an authenticated client before it is disconnected.
    pub idle_timeout_secs: u64,
    /// Sessions (resources) one account may have at once.
    pub max_resources_per_account: usize,
    /// Messages kept for an account while it is offline; past it senders get an error.
    pub max_offline_messages: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Offer SASL PLAIN (only ever over TLS). Off by default: SCRAM is used.
    pub allow_plain: bool,
    /// Offer SCRAM-SHA-1 for old clients (SCRAM-SHA-256 is always offered).
    pub allow_scram_sha1: bool,
    /// PBKDF2 iterations for newly set passwords (RFC 7677 asks for at least 4096).
    pub scram_iterations: u32,
    /// Failed logins per account within `failure_window_secs` before it is locked out.
    pub max_failures_per_account: u32,
    /// Failed logins per source address within the window before it is locked out.
    pub max_failures_per_address: u32,
    pub failure_window_secs: u64,
    /// First lockout; it doubles on each repeat, up to an hour.
    pub lockout_secs: u64,
    /// Logged-in users may change their password (XEP-0077 §3.3).
    pub allow_password_change: bool,
    /// A password change must also give the current password (XEP-0077 §3.3's form with
    /// `old_password`), so that a session someone else got hold of cannot take the account
    /// over. Clients that send only the new password are then answered with that form.
    pub password_change_needs_old: bool,
    /// Logged-in users may delete their own account (XEP-0077 §3.2), with everything it holds.
    pub allow_account_removal: bool,
}

/// XEP-0198 Stream Management.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamManagementConfig {
    /// Offer stream management (acknowledgements) to clients.
    pub enabled: bool,
    /// Seconds a session whose connection was lost is kept for the client to resume it; 0
    /// turns resumption off. Clients may ask for less, not more.
    pub resume_timeout_secs: u64,
    /// Stanzas sent to a client and not yet acknowledged, past which the client is
    /// disconnected (its session then ends and the stanzas go to other devices or storage).
    pub max_unacked: usize,
    /// Seconds an acknowledgement of messages may be outstanding before the account's push
    /// services (XEP-0357) are told, as for a session whose connection is known lost: a
    /// phone asleep behind a connection that still looks open gets woken. 0: never.
    pub ack_push_secs: u64,
    /// Milliseconds the stored copy of a message delivered to a client that acknowledges
    /// waits for the acknowledgement before it is written to disk: acknowledged within
    /// them, the copy is never written (and the sender's acknowledgement comes at once).
    /// Longer saves the disk the copies for clients on slow networks (a mobile round trip
    /// is 100 to 300 ms), at the cost of memory for the copies still waiting and, for a
    /// copy nobody acknowledges in time, of its sender's acknowledgement waiting that long.
    /// At most 60,000.
    pub copy_hold_ms: u64,
}

/// XEP-0313 message archives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Keep a message archive per account (and answer archive queries). Off: nothing is
    /// archived, `urn:xmpp:mam:2` is not advertised and queries get `service-unavailable`.
    pub enabled: bool,
    /// Archived messages are deleted this many days after they were archived (checked
    /// hourly and at start); 0 keeps them until the account is removed.
    pub keep_days: u32,
}

/// XEP-0363 HTTP File Upload: a service `upload.<domain>` per domain, served over HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Off: no upload service, no HTTPS listener.
    pub enabled: bool,
    /// HTTPS listeners for uploads (PUT) and downloads (GET). None: uploads are off.
    pub listen: Vec<SocketAddr>,
    /// The URL base of slots, such as `https://media.example.com`; `{domain}` in it stands for
    /// the uploader's domain. Default: `https://upload.<domain>:<port of the first listener>`
    /// (the local certificates cover `*.<domain>`).
    pub public_url: Option<String>,
    /// Largest file taken, in bytes (announced in disco as `max-file-size`).
    pub max_file_bytes: u64,
    /// Most bytes one account may keep stored (files kept plus slots not used yet).
    pub quota_bytes_per_account: u64,
    /// Days a file is kept after its upload.
    pub keep_days: u64,
    /// Free space the upload directory's file system keeps: slots that would leave less are
    /// refused, so that uploads never fill the disk the message store writes to.
    pub min_free_bytes: u64,
    /// Seconds a slot may wait for its upload.
    pub slot_timeout_secs: u64,
    /// Most HTTPS connections at a time.
    pub max_connections: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5443))],
            public_url: None,
            max_file_bytes: 100 * 1024 * 1024,
            quota_bytes_per_account: 1024 * 1024 * 1024,
            keep_days: 30,
            min_free_bytes: 1024 * 1024 * 1024,
            slot_timeout_secs: 300,
            max_connections: 1024,
        }
    }
}

impl UploadConfig {
    /// Whether the service runs: enabled, with a listener.
    pub fn active(&self) -> bool {
        self.enabled && !self.listen.is_empty()
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            keep_days: 0,
        }
    }
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            enabled: true,
            resume_timeout_secs: 300,
            max_unacked: 1000,
            ack_push_secs: 30,
            copy_hold_ms: strait_store::DEFAULT_HOLD.as_millis() as u64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./strait-data"),
            domains: vec!["localhost".into()],
            workers: 0,
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            stream_management: StreamManagementConfig::default(),
            archive: ArchiveConfig::default(),
            upload: UploadConfig::default(),
            components: Vec::new(),
            contact: ContactConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            c2s: vec![SocketAddr::from(([127, 0, 0, 1], 5222))],
            c2s_direct_tls: vec![SocketAddr::from(([127, 0, 0, 1], 5223))],
            component: vec![SocketAddr::from(([127, 0, 0, 1], 5347))],
            s2s: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_bytes_unauthenticated: 10_000,
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_connections: 10_000,
            rate_bytes_per_sec: 64 * 1024,
            burst_bytes: 512 * 1024,
            unauthenticated_timeout_secs: 30,
            idle_timeout_secs: 900,
            max_resources_per_account: 10,
            max_offline_messages: 1000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_plain: false,
            allow_scram_sha1: true,
            scram_iterations: 10_000,
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            failure_window_secs: 300,
            lockout_secs: 60,
            allow_password_change: true,
            password_change_needs_old: false,
            allow_account_removal: true,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The prefix of environment variables that override any setting: `STRAIT__LIMITS__MAX_CONNECTIONS=5`
/// sets `limits.max_connections`. Values are TOML values (`true`, `5`, `["a","b"]`); anything that
/// does not parse as one is taken as a string.
pub const ENV_PREFIX: &str = "STRAIT__";

/// Most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

impl Config {
    /// Defaults, then the file (if any), then `STRAIT__…` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, path) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let table: toml::Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| ConfigError::Parse {
                            path: path.to_owned(),
                            message: e.to_string(),
                        })?;
                (table, path.to_owned())
            }
            None => (toml::Table::new(), PathBuf::from("<defaults>")),
        };
        for (var, value) in env {
            if let Some(key) = var.strip_prefix(ENV_PREFIX) {
                apply_env_override(&mut table, &var, key, &value)?;
            }
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path,
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(ConfigError::Invalid("no domain configured".into()));
        }
        for d in &self.domains {
            if jid::BareJid::new(d)
                .map(|j| j.node().is_some())
                .unwrap_or(true)
            {
                return Err(ConfigError::Invalid(format!("{d:?} is not a valid domain")));
            }
        }
        self.validate_components()?;
        for (field, addrs) in self.contact.fields() {
            if let Some(a) = addrs.iter().find(|a| {
                let scheme = a.split_once(':').map_or("", |(s, _)| s);
                scheme.is_empty()
                    || !scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            }) {
                return Err(ConfigError::Invalid(format!(
                    "contact address {a:?} ({field}) is not a URI such as mailto:abuse@example.org"
                )));
            }
        }
        let l = &self.limits;
        if l.max_stanza_bytes_unauthenticated < 1024 || l.max_stanza_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "stanza limits below 1024 bytes".into(),
            ));
        }
        if l.max_connections == 0 || l.max_resources_per_account == 0 || l.rate_bytes_per_sec == 0 {
            return Err(ConfigError::Invalid(
                "max_connections, max_resources_per_account and rate_bytes_per_sec must be positive".into(),
            ));
        }
        if self.auth.scram_iterations < 4096 {
            return Err(ConfigError::Invalid(
                "auth.scram_iterations must be at least 4096 (RFC 7677)".into(),
            ));
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid(format!(
                "workers must be at most {MAX_WORKERS} (0: automatic)"
            )));
        }
        let u = &self.upload;
        if u.active() {
            if u.max_file_bytes == 0
                || u.keep_days == 0
                || u.slot_timeout_secs == 0
                || u.max_connections == 0
            {
                return Err(ConfigError::Invalid(
                    "upload.max_file_bytes, keep_days, slot_timeout_secs and max_connections must be positive".into(),
                ));
            }
            if let Some(url) = &u.public_url
                && !(url.starts_with("https://") && url.len() > "https://".len())
            {
                return Err(ConfigError::Invalid(format!(
                    "upload.public_url {url:?} must be an https:// URL"
                )));
            }
        }
        if u128::from(self.stream_management.copy_hold_ms) > strait_store::MAX_HOLD.as_millis() {
            return Err(ConfigError::Invalid(format!(
                "stream_management.copy_hold_ms must be at most {} (ms), not {}",
                strait_store::MAX_HOLD.as_millis(),
                self.stream_management.copy_hold_ms
            )));
        }
        if self.stream_management.enabled && self.stream_management.max_unacked < 10 {
            return Err(ConfigError::Invalid(
                "stream_management.max_unacked must be at least 10".into(),
            ));
        }
        Ok(())
    }

    /// How many worker threads run connections and routing: `workers` if set, otherwise
    /// one per core less one (at least one).
    ///
    /// Why not one per core (tokio's default): the server's other threads need a core too
    /// (the store's writer, which commits every message stored or archived; the blocking
    /// pool, which runs TLS handshakes, SCRAM and store reads), and a second worker costs
    /// more than it brings on a small machine. Every message handed from one worker to the
    /// other, or woken on the other core, pays a cross-core wake-up, which on the benchmark
    /// VM costs about 30 µs of CPU against 1.5 µs on one core. Measured there (2 vCPUs,
    /// bench/RESULTS.md): one worker instead of two served 90,500 msg/s with p99 2.8 and
    /// 3.8 ms against 9.2 ms, the highest rate with p99 under 5 ms went from 76,100 to
    /// 90,500 msg/s, and the server's CPU at 8,000 msg/s from 26 to 15 % of a core; the
    /// peak, pingpong with archiving and the login storm stayed the same. With 2,500-byte
    /// stanzas (OMEMO-sized) one worker's tail grows past about 20,000 msg/s (p99 2.5 to 8.3
    /// ms at 40,000 against 2.6 to 4.4 with two), so a small server carrying that many
    /// large stanzas should set 2 (docs/operations.md, "Threads"). Larger machines were not
    /// measured: set `workers` to try other counts.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).max(1)
    }

    /// The SQLite database file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("strait.sqlite3")
    }

    /// The served domain that `domain` names, if any (domains compare case-insensitively).
    fn validate_components(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.components {
            let d = c.domain.to_ascii_lowercase();
            if jid::BareJid::new(&d)
                .map(|j| j.node().is_some())
                .unwrap_or(true)
            {
                return Err(ConfigError::Invalid(format!(
                    "component domain {:?} is not a valid domain",
                    c.domain
                )));
            }
            if self.served_domain(&d).is_some()
                || self.domains.iter().any(|s| {
                    crate::features::upload::Uploads::service_jid(&s.to_ascii_lowercase()) == d
                })
            {
                return Err(ConfigError::Invalid(format!(
                    "component domain {d:?} is already a served domain or its upload service"
                )));
            }
            if !seen.insert(d.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "component domain {d:?} is configured twice"
                )));
            }
            if c.secret.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "the secret of component {d:?} is shorter than 16 characters"
                )));
            }
        }
        if let Some(a) = self.listen.component.iter().find(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::Invalid(format!(
                "listen.component {a} is not a loopback address: components (XEP-0114) \
                 connect without TLS, so they must run on this machine"
            )));
        }
        Ok(())
    }

    /// The configured component that serves `domain`, if any.
    pub fn component(&self, domain: &str) -> Option<&ComponentConfig> {
        self.components
            .iter()
            .find(|c| c.domain.eq_ignore_ascii_case(domain))
    }

    pub fn served_domain(&self, domain: &str) -> Option<&str> {
        self.domains
            .iter()
            .find(|d| d.eq_ignore_ascii_case(domain))
            .map(String::as_str)
    }
}

fn apply_env_override(
    table: &mut toml::Table,
    var: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let parts: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            message: "empty key segment".into(),
        });
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.into(),
            message: format!("{p} is not a section"),
        })?;
    }
    cur.insert(parts[parts.len() - 1].clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded_and_loopback() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.domains, vec!["localhost"]);
        assert!(c.listen.c2s.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(c.listen.c2s[0].port(), 5222);
        assert_eq!(c.listen.c2s_direct_tls[0].port(), 5223);
        assert!(c.upload.active());
        assert!(c.upload.listen.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(c.upload.listen[0].port(), 5443);
        assert_eq!(c.limits.max_stanza_bytes_unauthenticated, 10_000);
        assert!(!c.auth.allow_plain);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.workers, 0);
        assert_eq!(c.worker_threads(), cores.saturating_sub(1).max(1));
    }

    #[test]
    fn components_from_a_file_and_their_checks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let load = |toml: &str| {
            std::fs::write(&f, toml).unwrap();
            Config::load(Some(&f), Vec::new())
        };
        let c = load(
            "domains = [\"a.test\"]\n[[components]]\ndomain = \"Push.A.test\"\nsecret = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(
            c.component("push.a.test").unwrap().secret,
            "0123456789abcdef"
        );
        assert_eq!(c.listen.component[0].port(), 5347);
        // The secret stays out of logs.
        assert!(!format!("{:?}", c.components).contains("0123456789abcdef"));
        for (toml, why) in [
            (
                "[[components]]\ndomain = \"localhost\"\nsecret = \"0123456789abcdef\"\n",
                "already a served domain",
            ),
            (
                "[[components]]\ndomain = \"upload.localhost\"\nsecret = \"0123456789abcdef\"\n",
                "upload service",
            ),
            (
                "[[components]]\ndomain = \"p.localhost\"\nsecret = \"short\"\n",
                "shorter than 16",
            ),
            (
                "[[components]]\ndomain = \"p.localhost\"\nsecret = \"0123456789abcdef\"\n[[components]]\ndomain = \"P.localhost\"\nsecret = \"0123456789abcdef\"\n",
                "configured twice",
            ),
            (
                "[[components]]\ndomain = \"u@p.localhost\"\nsecret = \"0123456789abcdef\"\n",
                "not a valid domain",
            ),
            (
                "[listen]\ncomponent = [\"0.0.0.0:5347\"]\n",
                "not a loopback address",
            ),
        ] {
            let e = load(toml).unwrap_err().to_string();
            assert!(e.contains(why), "{toml}: {e}");
        }
    }

    #[test]
    fn contact_addresses_must_be_uris() {
        let env = vec![(
            "STRAIT__CONTACT__ABUSE".to_string(),
            "[\"mailto:abuse@example.org\", \"https://example.org/abuse\"]".to_string(),
        )];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.contact.fields().len(), 1);
        let env = vec![(
            "STRAIT__CONTACT__SECURITY".to_string(),
            "[\"security@example.org\"]".to_string(),
        )];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(
            e.contains("security-addresses") && e.contains("not a URI"),
            "{e}"
        );
    }

    #[test]
    fn workers_can_be_set_and_are_bounded() {
        let env = vec![("STRAIT__WORKERS".to_string(), "3".to_string())];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.worker_threads(), 3);
        let env = vec![("STRAIT__WORKERS".to_string(), "5000".to_string())];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(e.contains("workers must be at most 1024"), "{e}");
    }

    #[test]
    fn the_copy_hold_can_be_set_and_is_bounded() {
        assert_eq!(
            Config::load(None, Vec::new())
                .unwrap()
                .stream_management
                .copy_hold_ms,
            50
        );
        let env = |v: &str| {
            vec![(
                "STRAIT__STREAM_MANAGEMENT__COPY_HOLD_MS".to_string(),
                v.to_string(),
            )]
        };
        let c = Config::load(None, env("500")).unwrap();
        assert_eq!(c.stream_management.copy_hold_ms, 500);
        let e = Config::load(None, env("60001")).unwrap_err().to_string();
        assert!(e.contains("copy_hold_ms must be at most 60000"), "{e}");
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "domains = [\"a.test\", \"b.test\"]\n[limits]\nmax_connections = 7\n",
        )
        .unwrap();
        let env = vec![
            (
                "STRAIT__LIMITS__MAX_CONNECTIONS".to_string(),
                "9".to_string(),
            ),
            ("STRAIT__DATA_DIR".to_string(), "/tmp/x y".to_string()),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let c = Config::load(Some(&f), env).unwrap();
        assert_eq!(c.domains, vec!["a.test", "b.test"]);
        assert_eq!(c.limits.max_connections, 9);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x y"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "domain = \"typo\"\n").unwrap();
        let e = Config::load(Some(&f), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        let env = vec![(
            "STRAIT__AUTH__SCRAM_ITERATIONS".to_string(),
            "10".to_string(),
        )];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(e.contains("4096"), "{e}");
        let env = vec![("STRAIT__DOMAINS".to_string(), "[\"a@b\"]".to_string())];
        assert!(Config::load(None, env).is_err());
        let env = vec![(
            "STRAIT__UPLOAD__PUBLIC_URL".to_string(),
            "http://media.example".to_string(),
        )];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(
            e.contains("upload.public_url") && e.contains("https://"),
            "{e}"
        );
        let env = vec![(
            "STRAIT__UPLOAD__MAX_FILE_BYTES".to_string(),
            "0".to_string(),
        )];
        assert!(Config::load(None, env).is_err());
        // Off, its settings are not checked.
        let env = vec![
            ("STRAIT__UPLOAD__LISTEN".to_string(), "[]".to_string()),
            (
                "STRAIT__UPLOAD__MAX_FILE_BYTES".to_string(),
                "0".to_string(),
            ),
        ];
        assert!(!Config::load(None, env).unwrap().upload.active());
    }
}
