//! `strait bench gen-accounts … | strait user import`: the pipe an operator uses to provision
//! benchmark accounts, with the real binary.

mod support;

use std::ffi::OsStr;
use std::process::Output;
use support::text;

fn strait(args: &[&str], stdin: &[u8]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    support::run(&args, stdin)
}

#[test]
fn gen_accounts_piped_into_import() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let lines = strait(
        &[
            "bench",
            "gen-accounts",
            "--prefix",
            "b",
            "--count",
            "6",
            "--domain",
            "localhost",
        ],
        b"",
    );
    assert!(lines.status.success(), "{}", text(&lines));
    assert!(String::from_utf8_lossy(&lines.stdout).starts_with("b0@localhost pw-0\n"));

    let import = |extra: &[&str], input: &[u8]| {
        let mut args = vec![
            "user",
            "import",
            "--data-dir",
            data,
            "--domain",
            "localhost",
        ];
        args.extend_from_slice(extra);
        strait(&args, input)
    };
    // Below RFC 7677's minimum the override is refused.
    let o = import(&["--scram-iterations", "1000"], &lines.stdout);
    assert!(
        !o.status.success() && text(&o).contains("4096"),
        "{}",
        text(&o)
    );

    let o = import(&["--scram-iterations", "4096"], &lines.stdout);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("6 created"), "{}", text(&o));
    // Again, with one more (a localpart line): existing accounts are left alone.
    let mut more = lines.stdout.clone();
    more.extend_from_slice(b"b6 pw-6\n");
    let o = import(&["--scram-iterations", "4096"], &more);
    assert!(
        text(&o).contains("1 created, 0 updated, 6 existing left unchanged"),
        "{}",
        text(&o)
    );
    // A bad line refuses the whole input.
    let o = import(&[], b"b7 pw-7\nb8@elsewhere.test pw-8\n");
    assert!(
        !o.status.success() && text(&o).contains("line 2"),
        "{}",
        text(&o)
    );
    let list = strait(
        &["user", "list", "--data-dir", data, "--domain", "localhost"],
        b"",
    );
    let names = String::from_utf8_lossy(&list.stdout);
    assert_eq!(names.lines().count(), 7, "{names}");
    assert!(!names.contains("b7@"), "{names}");
}
