//! The `strait bench` command line (clap derive); the `strait` binary only dispatches to it.

use crate::scram::Mechanism;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;

/// `strait bench …`: load scenarios against an XMPP server, and account lists to provision.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Log in C connections, hold them for D seconds and measure the server's memory per
    /// connection (RSS delta / C), optionally with keepalives.
    Idle(IdleArgs),
    /// P pairs of accounts send a message back and forth, one at a time (closed loop), for D
    /// seconds: round trips per second and round-trip latency.
    Pingpong(PingpongArgs),
    /// A steady rate of one-to-one messages between online pairs (open loop: latency counts
    /// from the scheduled send time), a fraction to offline accounts fetched at the end:
    /// delivered/s, one-way latency, loss.
    Messages(MessagesArgs),
    /// N logins as fast as possible with bounded concurrency: logins/s, login latency,
    /// failures by reason.
    LoginStorm(LoginStormArgs),
    /// Print `jid password` lines for the benchmark accounts, for `strait user import`
    /// (or `localpart password` without --domain).
    GenAccounts(GenAccountsArgs),
    /// Make a third-party provider's signing key (Ed25519, PKCS#8) and its key set (JWKS) for
    /// `strait provider add --jwks`, so that `messages --third-party-*` can log its users in.
    GenProvider(GenProviderArgs),
}

/// How to reach and log in to the server.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Server port (5222 STARTTLS; 5223 with --direct-tls for Strait).
    #[arg(long, default_value_t = 5222)]
    pub port: u16,
    /// The XMPP domain the accounts live on.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// The name the server certificate must carry (default: the domain).
    #[arg(long)]
    pub tls_name: Option<String>,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    #[arg(long)]
    pub direct_tls: bool,
    /// Verify the server certificate against the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
    pub ca_file: Option<PathBuf>,
    /// Do NOT verify the server certificate (any certificate is accepted). Loopback
    /// benchmarks only.
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// Use this SASL mechanism instead of the best one offered (SCRAM-SHA-256 >
    /// SCRAM-SHA-1 > PLAIN).
    #[arg(long, value_enum)]
    pub mechanism: Option<MechanismArg>,
    /// Allow SASL PLAIN (over TLS) when the server offers no SCRAM mechanism.
    #[arg(long)]
    pub allow_plain: bool,
    /// Enable XEP-0198 stream management on every connection (acks answered).
    #[arg(long)]
    pub sm: bool,
    /// Spread connections over this many loopback source addresses (127.0.0.1, 127.0.0.2, …)
    /// so ephemeral ports do not run out; 0 lets the kernel choose. Only for a server on
    /// 127.0.0.0/8.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=65_000))]
    pub source_ips: u32,
    /// Logins in flight at once.
    #[arg(long, alias = "concurrency", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_concurrency: u32,
    /// Seconds one login (connect to bound resource) may take.
    #[arg(long, default_value_t = 30.0)]
    pub login_timeout: f64,
    /// Keep derived SCRAM keys (ClientKey/ServerKey per account and salt) in this file
    /// across runs, so logins do not pay PBKDF2 on the generator. The keys log in to the
    /// accounts: keep the file as private as the passwords.
    #[arg(long, value_name = "FILE")]
    pub scram_cache: Option<PathBuf>,
    /// Worker threads of the generator (it shares the machine with the server).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Keep the generator's threads busy instead of sleeping when they have nothing to do,
    /// so that the server's writes never have to wake them. On loopback a server's write
    /// runs the receiving socket's input path and wakes the thread waiting on it; in a VM
    /// whose idle vCPUs halt, that wake-up is an inter-processor interrupt through the
    /// hypervisor, paid by the server, which a server whose clients are on other machines
    /// never pays. The generator's CPU then reads 100 % of each thread whatever the load.
    #[arg(long)]
    pub busy_poll: bool,
}

/// SASL mechanisms on the command line.
#[derive(ValueEnum, Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum MechanismArg {
    #[value(name = "SCRAM-SHA-256", alias = "scram-sha-256")]
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-1", alias = "scram-sha-1")]
    #[serde(rename = "SCRAM-SHA-1")]
    ScramSha1,
    #[value(name = "PLAIN", alias = "plain")]
    #[serde(rename = "PLAIN")]
    Plain,
}

impl From<MechanismArg> for Mechanism {
    fn from(m: MechanismArg) -> Mechanism {
        match m {
            MechanismArg::ScramSha256 => Mechanism::ScramSha256,
            MechanismArg::ScramSha1 => Mechanism::ScramSha1,
            MechanismArg::Plain => Mechanism::Plain,
        }
    }
}

/// The benchmark accounts: `{prefix}{n}@{domain}` with password `{template with n}`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct AccountArgs {
    /// Account names are this prefix followed by a number.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Password of account n: `{n}` is replaced by the number.
    #[arg(long, default_value = "pw-{n}")]
    pub password_template: String,
    /// Accounts provisioned (numbers first … first+N-1); a scenario that needs more refuses
    /// to start. Default: as many as the scenario needs.
    #[arg(long)]
    pub accounts: Option<u64>,
    /// The number of the first account.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
}

impl AccountArgs {
    pub fn user(&self, n: u64) -> String {
        format!("{}{}", self.prefix, self.first + n)
    }

    pub fn password(&self, n: u64) -> String {
        self.password_template
            .replace("{n}", &(self.first + n).to_string())
    }
}

/// Measurement and output.
#[derive(Args, Debug, Clone, Serialize)]
pub struct OutputArgs {
    /// A server process to measure (RSS, CPU time); repeat for servers with several
    /// processes (summed).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// A name for the server under test, carried into the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Percentage of failed logins past which the scenario counts as not run (exit status
    /// 1). Pingpong and messages need every login.
    #[arg(long, default_value_t = 1.0)]
    pub max_login_failures: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Connections to log in and hold.
    #[arg(long, short = 'c')]
    pub connections: u64,
    /// Connections per account (each with its own resource): C connections use C/K accounts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub resources_per_account: u64,
    /// Seconds to hold the connections once all are logged in.
    #[arg(long, short = 'd', default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds between keepalives on each connection (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub keepalive: f64,
    /// What a keepalive is: a single space, or an XEP-0199 ping to the server (round trips
    /// measured).
    #[arg(long, value_enum, default_value_t = KeepaliveKind::Whitespace)]
    pub keepalive_kind: KeepaliveKind,
    /// Send initial presence after login.
    #[arg(long)]
    pub presence: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeepaliveKind {
    Whitespace,
    Ping,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct PingpongArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Pairs of accounts (2P accounts).
    #[arg(long, short = 'p', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub pairs: u64,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct MessagesArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Online pairs (2P online accounts, each sending to its partner).
    #[arg(long, short = 'p', default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub pairs: u64,
    /// Messages per second, all senders together (open loop: sends are scheduled, not
    /// waited for).
    #[arg(long, short = 'r', default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Fraction of messages sent to offline accounts (fetched by logging them in at the end).
    #[arg(long, default_value_t = 0.0)]
    pub offline_fraction: f64,
    /// Offline accounts (numbered after the online ones). Default: enough for at most 500
    /// messages each (Strait's default offline quota is 1000).
    #[arg(long)]
    pub offline_accounts: Option<u64>,
    /// Bytes of message body.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// With `--sm`: milliseconds the online accounts wait before answering the server's ack
    /// requests, as clients on a slow network do (a mobile round trip is 100 to 300 ms): what
    /// the server does for such clients (holding their messages' stored copies longer, or
    /// writing them to disk) shows on loopback. 0: at once.
    #[arg(long, default_value_t = 0.0)]
    pub ack_delay_ms: f64,
    /// Seconds to wait, after sending ends, for the messages still in flight (and, at the
    /// end, for the offline ones).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Send OMEMO-shaped messages: an `<encrypted/>` element (OMEMO 0.3) whose payload is
    /// --body-size bytes of base64 (rounded up to a multiple of 4), with a short fallback
    /// `<body/>` as OMEMO clients send. Implied by --third-party-domain.
    #[arg(long)]
    pub omemo: bool,
    #[command(flatten)]
    pub third_party: ThirdPartyArgs,
}

/// Third-party mode of `messages`: in each online pair one side is a provider's user, who logs
/// in with SASL OAUTHBEARER and a token the generator signs as the provider, so that every
/// message crosses the interop boundary.
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct ThirdPartyArgs {
    /// The provider domain: pair k is `{prefix}{first+k}@DOMAIN` (the provider's user) and
    /// `{prefix}{first+k}@--domain` (the platform account, which must have opted in).
    #[arg(long, value_name = "DOMAIN", requires_all = ["third_party_key", "third_party_issuer"])]
    pub third_party_domain: Option<String>,
    /// The provider's Ed25519 private key, PKCS#8 in PEM or DER (`strait bench gen-provider`).
    #[arg(long, value_name = "FILE", requires = "third_party_domain")]
    pub third_party_key: Option<PathBuf>,
    /// The `iss` of the tokens: the issuer registered for the provider.
    #[arg(long, value_name = "ISS", requires = "third_party_domain")]
    pub third_party_issuer: Option<String>,
    /// The `kid` of the tokens' header: the key's id in the registered key set.
    #[arg(long, value_name = "KID", default_value = "k1")]
    pub third_party_kid: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct LoginStormArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Logins to make (account n mod --accounts); each connection is closed once bound.
    #[arg(long, short = 'n')]
    pub logins: u64,
    /// Send initial presence after each login.
    #[arg(long)]
    pub presence: bool,
}

#[derive(Args, Debug, Clone)]
pub struct GenProviderArgs {
    /// The directory to write `provider.pkcs8.pem` (or `.der`) and `jwks.json` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The key's id in the key set (the tokens' `kid`).
    #[arg(long, default_value = "k1")]
    pub kid: String,
    /// Write the private key as DER (`provider.pkcs8.der`) instead of PEM.
    #[arg(long)]
    pub der: bool,
    /// Replace a key already in DIR.
    #[arg(long)]
    pub force: bool,
    /// The provider domain, for the commands printed.
    #[arg(long, value_name = "DOMAIN")]
    pub provider_domain: Option<String>,
    /// The issuer, for the commands printed.
    #[arg(long, value_name = "ISS")]
    pub issuer: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct GenAccountsArgs {
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// How many accounts.
    #[arg(long, short = 'n')]
    pub count: u64,
    /// The number of the first account.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    #[arg(long, default_value = "pw-{n}")]
    pub password_template: String,
    /// Print `localpart@domain password`; without it, `localpart password`.
    #[arg(long)]
    pub domain: Option<String>,
}
