//! `strait user import`: many accounts at once from `jid password` lines, through the same
//! code path as `strait user add` (`accounts::add_user`), with the SCRAM key derivation — what
//! dominates — spread over all cores.

use anyhow::{Result, bail};
use std::collections::HashSet;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use strait_server::{Config, accounts};
use strait_store::Store;

/// One account to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number, for messages.
    pub line: usize,
    /// Normalized bare JID.
    pub jid: String,
    pub password: String,
}

/// Accounts a worker takes at a time.
const CHUNK: usize = 32;
/// Most problems listed when the input is refused.
const MAX_LISTED: usize = 10;

/// Parses the input: `jid password` or, when exactly one domain is served, `localpart
/// password` per line. The name ends at the first tab if the line has one (for names with
/// spaces, such as phone numbers), else at the first space; the password is the rest of the
/// line. Blank lines and lines starting with `#` are skipped. Every line is checked (JID,
/// served domain, duplicates) before anything is created: the input is taken whole or not at
/// all.
pub fn parse(config: &Config, input: &str) -> Result<Vec<Entry>> {
    let single_domain = match config.domains.as_slice() {
        [d] => Some(d.as_str()),
        _ => None,
    };
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in input.lines().enumerate() {
        let line = i + 1;
        let text = raw.trim_end_matches('\r');
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // A tab separates when there is one (names with spaces: phone numbers); else the
        // first space.
        let split = if trimmed.contains('\t') {
            trimmed.split_once('\t')
        } else {
            trimmed.split_once(' ')
        };
        let Some((name, password)) = split else {
            problems.push(format!(
                "line {line}: no password (expected `jid password`)"
            ));
            continue;
        };
        let name = name.trim_end();
        let password = password.trim_start_matches([' ', '\t']);
        if password.is_empty() {
            problems.push(format!("line {line}: empty password"));
            continue;
        }
        let full = if name.contains('@') {
            name.to_owned()
        } else if let Some(d) = single_domain {
            format!("{name}@{d}")
        } else {
            problems.push(format!(
                "line {line}: {name:?} has no domain and {} domains are served; \
                 give --domain D (or write localpart@domain)",
                config.domains.len()
            ));
            continue;
        };
        match accounts::account_jid(config, &full) {
            Ok(jid) => {
                if !seen.insert(jid.clone()) {
                    problems.push(format!("line {line}: {jid} appears twice"));
                    continue;
                }
                entries.push(Entry {
                    line,
                    jid,
                    password: password.to_owned(),
                });
            }
            Err(e) => problems.push(format!("line {line}: {e}")),
        }
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(MAX_LISTED);
        let mut msg = format!(
            "nothing imported: {} line(s) refused:\n  {}",
            problems.len(),
            problems[..problems.len().min(MAX_LISTED)].join("\n  ")
        );
        if more > 0 {
            msg.push_str(&format!("\n  … and {more} more"));
        }
        bail!(msg);
    }
    Ok(entries)
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub created: usize,
    pub updated: usize,
    /// Existing accounts left as they were.
    pub skipped: usize,
}

/// Creates (or, with `update_existing`, re-keys) the accounts with `threads` workers, printing
/// progress to stderr about once a second.
pub fn import(
    config: &Config,
    store: &dyn Store,
    entries: Vec<Entry>,
    update_existing: bool,
    threads: usize,
) -> Result<Summary> {
    let existing: HashSet<String> = store.list_accounts(None)?.into_iter().collect();
    let (present, new): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| existing.contains(&e.jid));
    let mut summary = Summary::default();
    let mut work: Vec<(Entry, bool)> = new.into_iter().map(|e| (e, false)).collect();
    if update_existing {
        work.extend(present.into_iter().map(|e| (e, true)));
    } else {
        summary.skipped = present.len();
    }
    let total = work.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let created = AtomicUsize::new(0);
    let updated = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let threads = threads.clamp(1, total.max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let from = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if from >= total {
                        break;
                    }
                    for (e, update) in &work[from..(from + CHUNK).min(total)] {
                        let r = if *update {
                            accounts::set_password(config, store, &e.jid, &e.password)
                                .map(|_| &updated)
                        } else {
                            accounts::add_user(config, store, &e.jid, &e.password).map(|_| &created)
                        };
                        match r {
                            Ok(counter) => {
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("line {}: {}: {err}", e.line, e.jid)),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let mut last = Instant::now();
        while done.load(Ordering::Relaxed) < total {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let d = done.load(Ordering::Relaxed);
                let rate = d as f64 / started.elapsed().as_secs_f64();
                eprintln!(
                    "import: {d}/{total} ({rate:.0}/s, about {:.0} s left)",
                    (total - d) as f64 / rate.max(0.001)
                );
            }
        }
    });
    summary.created = created.into_inner();
    summary.updated = updated.into_inner();
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if !failures.is_empty() {
        bail!(
            "{} account(s) created, {} updated, {} failed:\n  {}",
            summary.created,
            summary.updated,
            failures.len(),
            failures[..failures.len().min(MAX_LISTED)].join("\n  ")
        );
    }
    Ok(summary)
}

/// Reads standard input whole.
pub fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin().lock().read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_store::{AccountStore, MemoryStore};

    fn config(domains: &[&str]) -> Config {
        let mut c = Config {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Config::default()
        };
        c.auth.scram_iterations = 4096;
        c
    }

    #[test]
    fn parses_jid_and_localpart_lines() {
        let c = config(&["localhost"]);
        let e = parse(
            &c,
            "# header\n\nAlice@localhost  secret one\r\nbob pw-1\n+31 6 1234 5678@localhost\tx y\n",
        )
        .unwrap();
        let got: Vec<(&str, &str, usize)> = e
            .iter()
            .map(|e| (e.jid.as_str(), e.password.as_str(), e.line))
            .collect();
        assert_eq!(
            got,
            [
                ("alice@localhost", "secret one", 3),
                ("bob@localhost", "pw-1", 4),
                // A tab separates names with spaces.
                ("+31612345678@localhost", "x y", 5),
            ]
        );
    }

    #[test]
    fn refuses_bad_input_whole() {
        let c = config(&["localhost", "example.test"]);
        let err = parse(
            &c,
            "a@localhost p\nb p\nc@elsewhere.test p\nd@localhost\na@LOCALHOST q\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2") && err.contains("--domain"), "{err}");
        assert!(
            err.contains("line 3") && err.contains("not a domain"),
            "{err}"
        );
        assert!(
            err.contains("line 4") && err.contains("no password"),
            "{err}"
        );
        assert!(err.contains("line 5") && err.contains("twice"), "{err}");
        assert!(!err.contains("line 1"), "{err}");
    }

    #[test]
    fn imports_in_parallel_and_skips_or_updates_existing() {
        let c = config(&["localhost"]);
        let store = MemoryStore::new();
        let input: String = (0..40).map(|n| format!("u{n} pw-{n}\n")).collect();
        let s = import(&c, &store, parse(&c, &input).unwrap(), false, 4).unwrap();
        assert_eq!(
            s,
            Summary {
                created: 40,
                ..Summary::default()
            }
        );
        assert_eq!(store.list_accounts(None).unwrap().len(), 40);
        let again: String = (35..45).map(|n| format!("u{n} new-{n}\n")).collect();
        let s = import(&c, &store, parse(&c, &again).unwrap(), false, 2).unwrap();
        assert_eq!(
            s,
            Summary {
                created: 5,
                updated: 0,
                skipped: 5
            }
        );
        let s = import(&c, &store, parse(&c, &again).unwrap(), true, 2).unwrap();
        assert_eq!(
            s,
            Summary {
                created: 0,
                updated: 10,
                skipped: 0
            }
        );
        assert_eq!(store.list_accounts(None).unwrap().len(), 45);
    }
}
