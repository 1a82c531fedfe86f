//! The `strait user` commands as an operator runs them: the real binary, passwords on stdin.

mod support;

use std::ffi::OsStr;
use std::process::{Command, Output};
use support::text;

/// `strait ARGS --data-dir DATA --domain localhost --domain example.test`.
fn strait(data: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(OsStr::new("--data-dir"));
    all.push(data.as_os_str());
    all.extend(["--domain", "localhost", "--domain", "example.test"].map(OsStr::new));
    support::run(&all, stdin.as_bytes())
}

#[test]
fn user_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = strait(d, &["user", "add", "Alice@localhost"], "s3cret\n");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("created alice@localhost"), "{}", text(&o));
    let o = strait(d, &["user", "add", "+31 6 1234 5678@example.test"], "pw\n");
    assert!(
        text(&o).contains("created +31612345678@example.test"),
        "{}",
        text(&o)
    );
    // Duplicates, unknown domains and empty passwords are refused with a reason.
    let o = strait(d, &["user", "add", "alice@localhost"], "x\n");
    assert!(
        !o.status.success() && text(&o).contains("already exists"),
        "{}",
        text(&o)
    );
    let o = strait(d, &["user", "add", "bob@elsewhere.test"], "x\n");
    assert!(
        !o.status.success() && text(&o).contains("not a domain this server serves"),
        "{}",
        text(&o)
    );
    let o = strait(d, &["user", "add", "bob@localhost"], "\n");
    assert!(
        !o.status.success() && text(&o).contains("empty"),
        "{}",
        text(&o)
    );
    let o = strait(d, &["user", "list"], "");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "+31612345678@example.test\nalice@localhost\n"
    );
    let o = strait(d, &["user", "list", "localhost"], "");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alice@localhost\n");
    let o = strait(d, &["user", "passwd", "alice@localhost"], "new\n");
    assert!(o.status.success(), "{}", text(&o));
    let o = strait(d, &["user", "remove", "0031612345678@example.test"], "");
    assert!(
        text(&o).contains("removed +31612345678@example.test"),
        "{}",
        text(&o)
    );
    let o = strait(d, &["user", "remove", "nobody@localhost"], "");
    assert!(
        !o.status.success() && text(&o).contains("not found"),
        "{}",
        text(&o)
    );
    // The password never reaches the store in the clear.
    let db = std::fs::read(d.join("strait.sqlite3")).unwrap();
    let wal = std::fs::read(d.join("strait.sqlite3-wal")).unwrap_or_default();
    for blob in [&db, &wal] {
        assert!(
            !blob.windows(6).any(|w| w == b"s3cret"),
            "plaintext password stored"
        );
    }
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_conections = 5\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["serve", "--config"])
        .arg(&cfg)
        // An operator's error gets the message, not a backtrace, whatever the environment.
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("unknown field") && t.contains("max_conections"),
        "{t}"
    );
    assert!(!t.contains("backtrace") && !t.contains("main.rs"), "{t}");
}
