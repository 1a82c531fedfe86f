//! `strait chat`: end-to-end encrypted chat on the command line, on the client SDK
//! (strait-client's `chat`). One account per store directory; the store keeps the Signal
//! protocol's keys and sessions and the history between runs.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use strait_client::chat::{self, Account, Client, Credential, Event, Incoming};
use strait_client::conn::Verify;
use tokio::io::AsyncBufReadExt;

/// `strait chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// The account, a bare JID (user@domain).
    #[arg(long, env = "STRAIT_CHAT_JID")]
    jid: String,
    /// The server, host:port (default: the JID's domain, port 5222).
    #[arg(long)]
    server: Option<String>,
    /// Direct TLS (XEP-0368, usually port 5223) instead of STARTTLS.
    #[arg(long)]
    direct_tls: bool,
    /// Trust the CA certificates in this PEM file (a `strait serve` on its defaults: its
    /// strait-data/tls/ca.pem). Without it, the public CAs are trusted.
    #[arg(long, conflicts_with = "insecure")]
    ca_file: Option<PathBuf>,
    /// Do not check the server's certificate at all (tests only).
    #[arg(long)]
    insecure: bool,
    /// The name the server's certificate must carry (default: the JID's domain).
    #[arg(long)]
    tls_name: Option<String>,
    /// Log in with a token from the user's provider (SASL OAUTHBEARER), read from this file,
    /// instead of a password. The password otherwise comes from STRAIT_CHAT_PASSWORD or a
    /// prompt.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The resource to bind (default: strait-<device id>, one per store).
    #[arg(long, default_value = "")]
    resource: String,
    /// Connect file transfers (XEP-0363 uploads, downloads) here instead of resolving the
    /// upload service's name, e.g. 127.0.0.1:5443 for a `strait serve` on its defaults where
    /// upload.localhost does not resolve (the certificate must still carry the name).
    #[arg(long)]
    http_via: Option<SocketAddr>,
    /// The local store: keys, sessions, history (default: $XDG_DATA_HOME/strait/chat/<jid>,
    /// or ~/.local/share/strait/chat/<jid>).
    #[arg(long, env = "STRAIT_CHAT_STORE")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: ChatCommand,
}

#[derive(Subcommand)]
enum ChatCommand {
    /// Send one message, end-to-end encrypted; returns once the server has it.
    Send {
        /// The recipient's JID.
        to: String,
        /// The text (the words are joined with spaces).
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Share a file (an image, a voice note, a video, a document): encrypted with a fresh key,
    /// uploaded to the server's file service (XEP-0363), its link sent encrypted (XEP-0454).
    SendFile {
        /// The recipient's JID.
        to: String,
        /// The file.
        file: PathBuf,
    },
    /// Print the messages that arrive (those queued while away first), one per line.
    Listen {
        /// Download shared files into this directory (decrypted).
        #[arg(long)]
        save: Option<PathBuf>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds (default: never; Ctrl-C ends it).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Chat with one contact: each line typed is sent (`/file PATH` shares a file), what
    /// arrives is printed; end with Ctrl-D.
    With {
        /// The contact's JID.
        peer: String,
    },
    /// Show or change this platform user's consent to third-party chats: whether they are on,
    /// which providers' users may write, a separate section or a combined inbox.
    Consent(crate::provider::ConsentFlags),
    /// Show this device's fingerprint and those of a contact's devices this store has
    /// sessions with, to compare with what the contact's client shows.
    Fingerprints {
        /// The contact.
        peer: String,
    },
    /// List the conversations, newest first: chats, then third-party chats (the contacts of
    /// other apps whose messages the platform stamped), unless --combined (no login needed).
    Chats {
        /// One list, third-party chats marked, instead of two sections.
        #[arg(long)]
        combined: bool,
    },
    /// Block a contact (XEP-0191): the server turns away what it sends you, and what you send
    /// it. With --report, also report it to the platform (XEP-0377), naming the last
    /// messages received from it that the local history has.
    Block {
        /// The address: an account, or a whole domain.
        jid: String,
        /// Report it as well, as spam or abuse.
        #[arg(long, value_enum)]
        report: Option<ReportArg>,
        /// The report's text, in your own words (at most 4,096 bytes).
        #[arg(long, requires = "report")]
        text: Option<String>,
    },
    /// Unblock addresses, or every one with --all.
    Unblock {
        /// The addresses.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        jids: Vec<String>,
        /// Unblock every address on the list.
        #[arg(long)]
        all: bool,
    },
    /// List the blocked addresses, one per line.
    Blocked,
    /// Show the local history (no login needed).
    History {
        /// Only the messages with this contact.
        #[arg(long)]
        with: Option<String>,
        /// How many of the newest lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Why a contact is reported (`block --report`).
#[derive(Clone, Copy, ValueEnum)]
enum ReportArg {
    Spam,
    Abuse,
}

/// How many of the messages received from a contact a report names (the newest ones the
/// local history has; the platform takes at most 20).
const REPORT_MESSAGES: usize = 10;

fn default_store(jid: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(
            std::env::var_os("HOME").context("no HOME: give --store for the chat store")?,
        )
        .join(".local/share"),
    };
    Ok(base.join("strait/chat").join(jid.to_ascii_lowercase()))
}

/// The server's address: `--server`, else the JID's domain on 5222 (IPv4 first: a `strait
/// serve` on its defaults listens on 127.0.0.1).
async fn server_addr(a: &ChatArgs, domain: &str) -> Result<SocketAddr> {
    let target = a.server.clone().unwrap_or_else(|| format!("{domain}:5222"));
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .with_context(|| format!("resolving {target}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{target} resolves to no address"))
}

async fn account(a: &ChatArgs, store: PathBuf) -> Result<Account> {
    let domain = a
        .jid
        .split_once('@')
        .map(|(_, d)| d)
        .context("--jid must be user@domain")?;
    let credential = match &a.token_file {
        Some(f) => Credential::Token(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the token {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => Credential::Password(match std::env::var("STRAIT_CHAT_PASSWORD") {
            Ok(p) => p,
            Err(_) if std::io::stdin().is_terminal() => {
                rpassword::prompt_password(format!("password for {}: ", a.jid))?
            }
            Err(_) => bail!("no password: set STRAIT_CHAT_PASSWORD, or give --token-file"),
        }),
    };
    let verify = match (&a.ca_file, a.insecure) {
        (Some(f), _) => Verify::CaFile(f.clone()),
        (None, true) => Verify::Insecure,
        (None, false) => Verify::PublicRoots,
    };
    Ok(Account {
        jid: a.jid.clone(),
        credential,
        server: server_addr(a, domain).await?,
        tls_name: a.tls_name.clone(),
        direct_tls: a.direct_tls,
        verify,
        resource: a.resource.clone(),
        store,
        http_via: a.http_via,
    })
}

/// One incoming message as a line: who, how it came, the text.
fn line(m: &Incoming) -> String {
    let mut tags = Vec::new();
    tags.push(if m.encrypted {
        "encrypted".to_owned()
    } else {
        "NOT ENCRYPTED".to_owned()
    });
    if let Some(o) = &m.origin {
        tags.push(format!("third-party: {}", o.name));
    }
    if let Some(d) = &m.delayed {
        tags.push(format!("sent {d}"));
    }
    if let Some(f) = &m.media {
        tags.push(format!("file {}", f.name));
    }
    match &m.sent_to {
        Some(to) => {
            tags.push("from another device".into());
            format!("{} to {to} [{}]: {}", m.from, tags.join(", "), m.text)
        }
        None => format!("{} [{}]: {}", m.from, tags.join(", "), m.text),
    }
}

fn print_event(ev: &Event) {
    match ev {
        Event::Message(m) => println!("{}", line(m)),
        Event::Delivered { from, id } => println!("{from} [delivered]: {id}"),
        Event::Undecryptable { from, reason } => {
            println!("{from} [could not decrypt]: {reason}")
        }
        Event::Bounced {
            id,
            condition,
            text,
        } => println!(
            "bounced{}: {condition}{}",
            id.as_deref().map(|i| format!(" {i}")).unwrap_or_default(),
            text.as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        ),
    }
}

/// A time in milliseconds since the epoch, as RFC 3339.
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Whether an error means the connection is gone (and a new one may do).
fn lost(e: &chat::ChatError) -> bool {
    matches!(
        e,
        chat::ChatError::Connection(_) | chat::ChatError::Timeout(_)
    )
}

/// Logs in again after `why`, waiting longer between tries (1 s doubling to 30 s), for up to
/// about five minutes.
async fn reconnect(client: &mut Client, why: &chat::ChatError) -> Result<()> {
    eprintln!("strait chat: {why}; reconnecting");
    let mut wait = Duration::from_secs(1);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(wait).await;
        match client.reconnect().await {
            Ok(()) => {
                eprintln!("strait chat: {} online again", client.bound_jid());
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() < give_up => {
                eprintln!("strait chat: not yet: {e}");
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => bail!("could not reconnect: {e}"),
        }
    }
}

/// Writes a downloaded file into `dir` under its name, never over an existing file
/// (`name (2).ext`, ...).
fn save_file(dir: &std::path::Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.to_owned(), String::new()),
    };
    for n in 1.. {
        let candidate = match n {
            1 => dir.join(name),
            n => dir.join(format!("{stem} ({n}){ext}")),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(data)
                    .with_context(|| format!("writing {}", candidate.display()))?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", candidate.display())),
        }
    }
    unreachable!("some name is free")
}

pub async fn run(a: ChatArgs) -> Result<()> {
    let store = match &a.store {
        Some(s) => s.clone(),
        None => default_store(&a.jid)?,
    };
    if let ChatCommand::Chats { combined } = &a.command {
        let all = chat::conversations(&store)?;
        let line = |c: &chat::Conversation| {
            let tag = match (&c.third_party, combined) {
                (Some(n), true) => format!(" [third-party: {n}]"),
                (Some(n), false) => format!(" ({n})"),
                (None, _) => String::new(),
            };
            format!(
                "  {}{tag}  {}  {}{}",
                c.peer,
                rfc3339(c.last_at_ms),
                if c.last_outgoing { "you: " } else { "" },
                c.last_text
            )
        };
        println!("chats:");
        let (third, own): (Vec<_>, Vec<_>) = all
            .iter()
            .partition(|c| c.third_party.is_some() && !*combined);
        own.iter().for_each(|c| println!("{}", line(c)));
        if !*combined {
            println!("third-party chats:");
            third.iter().for_each(|c| println!("{}", line(c)));
        }
        return Ok(());
    }
    if let ChatCommand::History { with, limit } = &a.command {
        for h in chat::history(&store, with.as_deref(), *limit)? {
            let who = if h.outgoing {
                format!("to {}", h.peer)
            } else {
                format!("from {}", h.peer)
            };
            let mut tags = Vec::new();
            if !h.encrypted {
                tags.push("NOT ENCRYPTED".to_owned());
            }
            if let Some(o) = &h.origin {
                tags.push(format!("third-party: {o}"));
            }
            let at = rfc3339(h.at_ms);
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", tags.join(", "))
            };
            println!("{at} {who}{tags}: {}", h.text);
        }
        return Ok(());
    }
    let account = account(&a, store).await?;
    let mut client = match Client::connect(&account).await {
        Ok(c) => c,
        // A self-made certificate (a `strait serve` on its defaults) is not among the public
        // CAs: say what to give.
        Err(chat::ChatError::Login(e)) if e.kind.starts_with("tls:") && a.ca_file.is_none() => {
            bail!(
                "connecting as {}: {e}\n(checked against the public CAs; for a server with a \
                 certificate of its own CA, give --ca-file, e.g. strait-data/tls/ca.pem)",
                account.jid
            )
        }
        Err(e) => return Err(e).with_context(|| format!("connecting as {}", account.jid)),
    };
    eprintln!(
        "strait chat: {} online (device {}, fingerprint {})",
        client.bound_jid(),
        client.device_id(),
        client.fingerprint()?
    );
    let r = session(&mut client, a.command).await;
    client.close().await;
    r
}

async fn session(client: &mut Client, command: ChatCommand) -> Result<()> {
    let sending = matches!(
        command,
        ChatCommand::Send { .. } | ChatCommand::SendFile { .. }
    );
    session_command(client, command).await?;
    if sending && client.pending_events() > 0 {
        eprintln!(
            "strait chat: {} message(s) arrived meanwhile; `strait chat history` shows them",
            client.pending_events()
        );
    }
    Ok(())
}

async fn session_command(client: &mut Client, command: ChatCommand) -> Result<()> {
    match command {
        ChatCommand::Send { to, text } => {
            let sent = client.send(&to, &text.join(" ")).await?;
            println!(
                "sent to {to}: {}, encrypted for {} device(s), id {}",
                sent.omemo.name(),
                sent.devices,
                sent.id
            );
        }
        ChatCommand::SendFile { to, file } => {
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            let sent = client.send_file(&to, &name, &data).await?;
            println!(
                "sent {name} ({} bytes) to {to}: encrypted for {} device(s), id {}",
                data.len(),
                sent.devices,
                sent.id
            );
        }
        ChatCommand::Listen {
            save,
            count,
            timeout,
        } => {
            let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let ev = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, client.next_event()).await {
                        Ok(ev) => ev,
                        Err(_) => break,
                    },
                    None => tokio::select! {
                        ev = client.next_event() => ev,
                        _ = tokio::signal::ctrl_c() => break,
                    },
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) if lost(&e) => {
                        reconnect(client, &e).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                print_event(&ev);
                if let (Event::Message(m), Some(dir)) = (&ev, &save)
                    && let Some(media) = &m.media
                {
                    match client.download(media).await {
                        Ok(data) => {
                            let path = save_file(dir, &media.name, &data)?;
                            println!("  saved {} ({} bytes)", path.display(), data.len());
                        }
                        Err(e) => println!("  not saved: {e}"),
                    }
                }
                if matches!(ev, Event::Message(_)) {
                    seen += 1;
                }
            }
            if let Some(c) = count.filter(|c| seen < *c) {
                bail!("{seen} of {c} messages arrived in time");
            }
        }
        ChatCommand::With { peer } => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                tokio::select! {
                    l = lines.next_line() => {
                        let Some(l) = l? else { break };
                        if l.trim().is_empty() {
                            continue;
                        }
                        let r = match l.strip_prefix("/file ") {
                            Some(path) => match std::fs::read(path.trim()) {
                                Ok(data) => {
                                    let name = std::path::Path::new(path.trim())
                                        .file_name()
                                        .map(|n| n.to_string_lossy().into_owned())
                                        .unwrap_or_else(|| "file".into());
                                    client.send_file(&peer, &name, &data).await.map(|_| ())
                                }
                                Err(e) => {
                                    eprintln!("not sent: reading {}: {e}", path.trim());
                                    continue;
                                }
                            },
                            None => client.send(&peer, &l).await.map(|_| ()),
                        };
                        match r {
                            Ok(()) => {}
                            Err(e) if lost(&e) => {
                                eprintln!("not sent (the connection ended; send it again): {e}");
                                reconnect(client, &e).await?;
                            }
                            Err(e) => eprintln!("not sent: {e}"),
                        }
                    }
                    ev = client.next_event() => match ev {
                        Ok(ev) => print_event(&ev),
                        Err(e) if lost(&e) => reconnect(client, &e).await?,
                        Err(e) => return Err(e.into()),
                    },
                }
            }
        }
        ChatCommand::Consent(flags) => {
            let change = chat::ConsentChange {
                enabled: flags.enabled(),
                inbox: flags.inbox_mode()?.map(|m| m.as_str().to_owned()),
                allow: flags.allow,
                deny: flags.deny,
            };
            let c = if change == chat::ConsentChange::default() {
                client.consent().await?
            } else {
                client.set_consent(&change).await?
            };
            println!(
                "third-party chats: {} ({} inbox)",
                if c.enabled { "on" } else { "off" },
                c.inbox
            );
            for p in &c.providers {
                println!(
                    "  {} ({}, {}): {}",
                    p.id,
                    p.name,
                    p.status,
                    if p.allowed { "allowed" } else { "not allowed" }
                );
            }
        }
        ChatCommand::Fingerprints { peer } => {
            println!(
                "this device ({}): {}",
                client.device_id(),
                client.fingerprint()?
            );
            let known = client.devices_of(&peer)?;
            if known.is_empty() {
                println!("{peer}: no session yet (send or receive a message first)");
            }
            for d in known {
                println!(
                    "{peer} device {} ({}): {}",
                    d.device,
                    d.omemo.name(),
                    d.fingerprint
                );
            }
        }
        ChatCommand::Block { jid, report, text } => {
            let Some(reason) = report else {
                client.block(&jid, None).await?;
                println!("blocked {jid}");
                return Ok(());
            };
            let (reason, name) = match reason {
                ReportArg::Spam => (chat::ReportReason::Spam, "spam"),
                ReportArg::Abuse => (chat::ReportReason::Abuse, "abuse"),
            };
            let stanza_ids = client.received_stanza_ids(&jid, REPORT_MESSAGES)?;
            let n = stanza_ids.len();
            let report = chat::Report {
                reason,
                text,
                stanza_ids,
            };
            client.block(&jid, Some(&report)).await?;
            println!(
                "blocked {jid} and reported it as {name}, with {n} message(s) from the local history"
            );
        }
        ChatCommand::Unblock { jids, all } => {
            if all {
                client.unblock(&[]).await?;
                println!("unblocked every address");
            } else {
                let list: Vec<&str> = jids.iter().map(String::as_str).collect();
                client.unblock(&list).await?;
                println!("unblocked {}", list.join(", "));
            }
        }
        ChatCommand::Blocked => {
            let list = client.blocklist().await?;
            if list.is_empty() {
                eprintln!("strait chat: no address is blocked");
            }
            for jid in list {
                println!("{jid}");
            }
        }
        ChatCommand::History { .. } | ChatCommand::Chats { .. } => {
            unreachable!("answered without logging in")
        }
    }
    Ok(())
}
