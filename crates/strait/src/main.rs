//! `strait`: the platform server and its administration in one binary.
#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;
use strait_server::{Config, Server, accounts};
use strait_store::{AccountStore, SqliteStore};

mod chat;
mod conformance;
mod import;
mod provider;
mod proxy;
mod report;

/// jemalloc instead of glibc's malloc. Connection tasks move between tokio's worker threads,
/// so buffers are often freed on another thread than the one that allocated them; glibc frees
/// chunks above its per-thread cache's size (rxml's 8 KiB token scratchpad, TLS record buffers)
/// into the allocating thread's arena under that arena's lock, and in profiles at 40,000 msg/s
/// the allocator and its lock waits took about a fifth of the server's CPU. With jemalloc the
/// same machine carries twice the message rate, and an idle connection costs the same memory
/// (bench/RESULTS.md). (mimalloc, tried before, held three times as much per idle connection.)
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Strait: an open messaging-interoperability platform (XMPP, Signal-protocol end-to-end encryption).
#[derive(Parser)]
#[command(name = "strait", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform server.
    ///
    /// With no options it runs on embedded defaults: data in ./strait-data (SQLite store,
    /// a local CA and certificates made on first start), domain "localhost", clients on
    /// 127.0.0.1:5222 (STARTTLS) and 127.0.0.1:5223 (direct TLS). Settings come from the
    /// defaults, then --config FILE, then STRAIT__SECTION__KEY environment variables (for
    /// example STRAIT__LIMITS__MAX_CONNECTIONS=500), then the flags below.
    Serve(ServeArgs),
    /// Manage accounts: add, remove, passwd, list, import.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage third-party providers and their agreements: add, set, terms, activate,
    /// suspend, terminate, list, show, audit.
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// Abuse reports users attached to blocks (XEP-0377): list, show, close.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// The provider-side proxy between a provider's apps and the platform: run it, make its
    /// key, show its pin (docs/interop.md, "Proxies").
    #[command(subcommand)]
    Proxy(proxy::ProxyCommand),
    /// Chat, end-to-end encrypted (OMEMO, the Signal protocol), with any account on this
    /// platform or another XMPP server: send, send-file, listen, with (interactive), consent
    /// (third-party chats), fingerprints, block / unblock / blocked (with abuse reports),
    /// chats (the chat list), history.
    ///
    /// Example: STRAIT_CHAT_PASSWORD=… strait chat --jid alice@localhost --ca-file
    /// strait-data/tls/ca.pem send bob@localhost hello
    Chat(chat::ChatArgs),
    /// Check a provider's client against a private platform: token login, OMEMO keys
    /// published, an encrypted exchange with an echo bot (docs/interop.md, "Conformance kit").
    Conformance(conformance::ConformanceArgs),
    /// Manage uploaded files (XEP-0363): list them, or take one down.
    #[command(subcommand)]
    Upload(UploadCommand),
    /// Load-test an XMPP server (this one, Prosody, ejabberd, …): idle connections,
    /// ping-pong, message rates with offline delivery, login storms.
    ///
    /// Example: strait bench gen-accounts --count 1000 --domain localhost | strait user import;
    /// strait bench messages --ca-file strait-data/tls/ca.pem --pairs 100 --rate 1000
    /// --duration 30 --server-pid $(pidof strait)
    Bench(Box<strait_bench::BenchArgs>),
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "STRAIT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store, certificates); overrides the file's data_dir.
    #[arg(long, env = "STRAIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A domain to serve (repeat for virtual hosts); replaces the file's domains.
    #[arg(long = "domain", env = "STRAIT_DOMAIN", value_delimiter = ',')]
    domains: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from the terminal, or from standard input
    /// (one line) when that is not a terminal; never from the command line.
    Add {
        /// The account, localpart@domain. Phone numbers become E.164: "+31 6 1234 5678@example.org".
        jid: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete an account with its roster and stored messages.
    Remove {
        jid: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Set a new password (read like `add` does).
    Passwd {
        jid: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Create many accounts from standard input, one `jid password` line each, or
    /// `localpart password` when one domain is served (--domain D). The name ends at the first
    /// tab if the line has one (names with spaces), else at the first space; the password is
    /// the rest of the line; blank and `#` lines are skipped. Every line is checked before
    /// anything is created. Accounts are made as `add` makes them, on all cores; existing
    /// ones are left unchanged (see --update-existing). Progress goes to stderr.
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        /// PBKDF2 iterations for these accounts instead of auth.scram_iterations (at least
        /// 4096, RFC 7677).
        #[arg(long)]
        scram_iterations: Option<u32>,
        /// Threads creating accounts (default: two per core, so that one derives keys while
        /// another waits for its write to commit).
        #[arg(long)]
        threads: Option<usize>,
        /// Set the password of accounts that already exist instead of leaving them.
        #[arg(long)]
        update_existing: bool,
    },
    /// Show or change a user's consent to third-party chats (off until the user opts in):
    /// on or off, which providers may reach them, separate or combined inbox.
    Consent(provider::ConsentArgs),
    /// List accounts, optionally of one domain.
    List {
        /// Only this domain's accounts.
        of_domain: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum UploadCommand {
    /// List stored files, oldest first: id, uploader, bytes, upload time (UTC), type, name.
    List {
        /// Only this account's files.
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete one file, named by its id or by its URL (works while the server runs: the
    /// file stops being served at once).
    Remove {
        /// The file's id, or its download URL.
        file: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn upload(cmd: UploadCommand) -> Result<()> {
    use strait_server::features::upload;
    match cmd {
        UploadCommand::List { account, config } => {
            let config = load_config(&config)?;
            let account = account
                .map(|a| accounts::account_jid(&config, &a))
                .transpose()?;
            let files =
                upload::list_files(&config.data_dir).context("reading the upload directory")?;
            for (id, m) in files {
                if account.as_ref().is_some_and(|a| *a != m.owner) {
                    continue;
                }
                let when = strait_server::features::xep0082_stamp(m.created as i64 * 1000);
                println!(
                    "{id}\t{}\t{}\t{when}\t{}\t{}",
                    m.owner, m.size, m.content_type, m.name
                );
            }
        }
        UploadCommand::Remove { file, config } => {
            let config = load_config(&config)?;
            let id = upload::id_of(&file)
                .with_context(|| format!("{file:?} is neither a file id nor an upload URL"))?;
            if !upload::remove_file(&config.data_dir, id).context("deleting the file")? {
                bail!("no stored file has the id {id}");
            }
            println!("removed {id}");
        }
    }
    Ok(())
}

fn load_config(args: &ConfigArgs) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if !args.domains.is_empty() {
        config.domains = args
            .domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
    }
    config.validate()?;
    Ok(config)
}

fn init_logging() {
    init_logging_at("info");
}

/// Logs to stderr at `level` unless STRAIT_LOG says otherwise; colors only on a terminal.
fn init_logging_at(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes, as `Result`'s `Termination` prints them, but never
            // anyhow's backtrace, which it adds when RUST_BACKTRACE is set: a bad
            // configuration or a busy port is the operator's to fix, not a crash to debug.
            eprintln!("Error: {e}");
            let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
            match causes.as_slice() {
                [] => {}
                [one] => eprintln!("\nCaused by:\n    {one}"),
                many => {
                    eprintln!("\nCaused by:");
                    for (i, cause) in many.iter().enumerate() {
                        eprintln!("    {i}: {cause}");
                    }
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            let config = load_config(&args.config)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads())
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Command::User(cmd) => user(cmd),
        Command::Provider(cmd) => provider::run(cmd),
        Command::Report(cmd) => report::run(cmd),
        Command::Proxy(cmd) => {
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(proxy::run(cmd))
        }
        Command::Chat(args) => {
            init_logging_at("warn");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(chat::run(args))
        }
        Command::Conformance(args) => {
            // The kit's own lines are the report; the platform's log only when it fails.
            init_logging_at("warn");
            conformance::main(args)
        }
        Command::Upload(cmd) => upload(cmd),
        Command::Bench(args) => strait_bench::main(*args),
    }
}

async fn serve(config: Config) -> Result<()> {
    let domains = config.domains.join(", ");
    let data_dir = config.data_dir.clone();
    let workers = config.worker_threads();
    let server = Server::start(config).await.context("starting the server")?;
    for (addr, direct) in server.local_addrs() {
        let kind = if *direct { "direct TLS" } else { "STARTTLS" };
        eprintln!("strait: serving {domains} on {addr} ({kind})");
    }
    for addr in server.https_addrs() {
        eprintln!("strait: file uploads (XEP-0363) over HTTPS on {addr}");
    }
    eprintln!("strait: {workers} worker thread(s) for connections and routing");
    eprintln!(
        "strait: data in {}; clients can trust {}",
        data_dir.display(),
        data_dir.join("tls/ca.pem").display()
    );
    wait_for_signal().await?;
    server.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn open_store(config: &Config) -> Result<SqliteStore> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    Ok(SqliteStore::open(&config.store_path())?)
}

/// Reads a password: twice from a terminal (to catch typos), or one line from a pipe.
fn read_password(confirm: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let p = rpassword::prompt_password("Password: ")?;
        if confirm && rpassword::prompt_password("Again: ")? != p {
            bail!("the passwords differ");
        }
        p
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add { jid, config } => {
            let config = load_config(&config)?;
            let jid = accounts::account_jid(&config, &jid)?;
            let store = open_store(&config)?;
            if store.account_exists(&jid)? {
                bail!("account {jid} already exists");
            }
            let password = read_password(true)?;
            let jid = accounts::add_user(&config, &store, &jid, &password)?;
            store.close()?;
            println!("created {jid}");
        }
        UserCommand::Remove { jid, config } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let (jid, files) = accounts::remove_user(&config, &store, &jid)?;
            store.close()?;
            match files {
                0 => println!("removed {jid}"),
                n => println!("removed {jid} and the {n} file(s) it uploaded"),
            }
        }
        UserCommand::Passwd { jid, config } => {
            let config = load_config(&config)?;
            let jid = accounts::account_jid(&config, &jid)?;
            let store = open_store(&config)?;
            if !store.account_exists(&jid)? {
                bail!("account {jid} not found");
            }
            let password = read_password(true)?;
            let jid = accounts::set_password(&config, &store, &jid, &password)?;
            store.close()?;
            println!("password changed for {jid}");
        }
        UserCommand::Import {
            config,
            scram_iterations,
            threads,
            update_existing,
        } => {
            let mut config = load_config(&config)?;
            if let Some(n) = scram_iterations {
                config.auth.scram_iterations = n;
                config.validate().context("--scram-iterations")?;
            }
            let entries = import::parse(&config, &import::read_stdin()?)?;
            let store = open_store(&config)?;
            let threads = threads
                .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get()));
            let started = std::time::Instant::now();
            let n = entries.len();
            let summary = import::import(&config, &store, entries, update_existing, threads);
            store.close()?;
            let summary = summary?;
            println!(
                "imported {n} line(s) in {:.1} s: {} created, {} updated, {} existing left unchanged",
                started.elapsed().as_secs_f64(),
                summary.created,
                summary.updated,
                summary.skipped
            );
        }
        UserCommand::Consent(a) => provider::consent(a)?,
        UserCommand::List { of_domain, config } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            for jid in store.list_accounts(of_domain.as_deref())? {
                println!("{jid}");
            }
            store.close()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its argument definitions (unique names, valid conflicts) only when a
    /// command runs; this runs the checks for every subcommand.
    #[test]
    fn command_line_definitions_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
