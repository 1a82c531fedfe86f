//! `strait report …`: the abuse reports users attached to blocks (XEP-0377), for the operator
//! to review, close, and hand to the provider whose users they are about.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;
use strait_store::{AbuseReport, ReportClosure, ReportFilter, ReportStore, StoreError};

use crate::provider::stamp;
use crate::{ConfigArgs, load_config, open_store};

#[derive(Subcommand)]
pub enum ReportCommand {
    /// List reports, oldest first.
    List {
        /// Only reports about this provider's users.
        #[arg(long)]
        provider: Option<String>,
        /// Only open reports.
        #[arg(long)]
        open: bool,
        /// Only reports of the last N days.
        #[arg(long)]
        days: Option<u32>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per report, one per line (for handing to a provider).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show one report whole, with what the server found of each message it names.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Close a report once it is dealt with (it stays on record).
    Close {
        id: i64,
        /// What was done.
        #[arg(long)]
        note: String,
        /// Recorded as who closed it (default: cli:$USER).
        #[arg(long, env = "STRAIT_ACTOR")]
        actor: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn to_json(r: &AbuseReport) -> serde_json::Value {
    json!({
        "id": r.id,
        "at": stamp(r.at_ms),
        "reporter": r.reporter,
        "reported": r.reported,
        "provider": r.provider,
        "reason": r.reason.as_str(),
        "text": r.text,
        "messages": r.evidence.iter().map(|e| match &e.found {
            Some(m) => json!({
                "stanza_id": e.stanza_id,
                "found": true,
                "at": stamp(m.at_ms),
                "from": m.from,
                "from_reported": m.from_reported,
                "origin": m.origin,
                "encrypted": m.encrypted,
                "bytes": m.bytes,
            }),
            None => json!({"stanza_id": e.stanza_id, "found": false}),
        }).collect::<Vec<_>>(),
        "closed": r.closed.as_ref().map(|c| json!({
            "at": stamp(c.at_ms),
            "by": c.by,
            "note": c.note,
        })),
    })
}

fn line(r: &AbuseReport) -> String {
    let found = r.evidence.iter().filter(|e| e.found.is_some()).count();
    format!(
        "{}\t{}\t{}\t{} reported {}{}\t{}\t{} of {} messages found\t{}",
        r.id,
        stamp(r.at_ms),
        r.reason.as_str(),
        r.reporter,
        r.reported,
        r.provider
            .as_ref()
            .map(|p| format!(" (provider {p})"))
            .unwrap_or_default(),
        if r.closed.is_some() { "closed" } else { "open" },
        found,
        r.evidence.len(),
        r.text.replace(['\n', '\t'], " ")
    )
}

fn show(r: &AbuseReport) {
    println!("report:      {}", r.id);
    println!("at:          {}", stamp(r.at_ms));
    println!("reason:      {}", r.reason.as_str());
    println!("reporter:    {}", r.reporter);
    println!("reported:    {}", r.reported);
    println!(
        "provider:    {}",
        r.provider.as_deref().unwrap_or("- (not a provider's user)")
    );
    println!(
        "text:        {}",
        if r.text.is_empty() {
            "-".to_string()
        } else {
            format!("{} (the reporter's words)", r.text)
        }
    );
    if r.evidence.is_empty() {
        println!("messages:    none named");
    }
    for e in &r.evidence {
        match &e.found {
            Some(m) => println!(
                "message:     {} at {} from {}{}{}, {}, {} bytes",
                e.stanza_id,
                stamp(m.at_ms),
                m.from,
                if m.from_reported {
                    ""
                } else {
                    " (not the reported JID)"
                },
                m.origin
                    .as_ref()
                    .map(|o| format!(" via provider {o}"))
                    .unwrap_or_default(),
                if m.encrypted {
                    "end-to-end encrypted"
                } else {
                    "not encrypted"
                },
                m.bytes
            ),
            None => println!("message:     {} not in the reporter's archive", e.stanza_id),
        }
    }
    match &r.closed {
        Some(c) => println!("closed:      at {} by {}: {}", stamp(c.at_ms), c.by, c.note),
        None => println!("closed:      no (open)"),
    }
}

pub fn run(cmd: ReportCommand) -> Result<()> {
    match cmd {
        ReportCommand::List {
            provider,
            open,
            days,
            limit,
            json,
            config,
        } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let filter = ReportFilter {
                provider,
                open_only: open,
                since_ms: days.map(|d| now_ms() - i64::from(d) * 86_400_000),
                limit,
            };
            let got = store.reports(&filter);
            store.close()?;
            for r in got? {
                if json {
                    println!("{}", to_json(&r));
                } else {
                    println!("{}", line(&r));
                }
            }
        }
        ReportCommand::Show { id, json, config } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let got = store.report(id);
            store.close()?;
            let Some(r) = got? else {
                bail!("no report {id}");
            };
            if json {
                println!("{:#}", to_json(&r));
            } else {
                show(&r);
            }
        }
        ReportCommand::Close {
            id,
            note,
            actor,
            config,
        } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let by = actor.unwrap_or_else(|| {
                format!(
                    "cli:{}",
                    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
                )
            });
            let closure = ReportClosure {
                at_ms: now_ms(),
                by,
                note,
            };
            let done = store.report_close(id, &closure);
            store.close()?;
            match done {
                Ok(()) => println!("report {id} closed"),
                Err(StoreError::NotFound(_)) => bail!("no report {id}"),
                Err(StoreError::Conflict(_)) => bail!("report {id} is already closed"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
