//! `strait provider …` and `strait user consent` as an operator runs them: the real binary
//! on a real store, every refusal with its reason.

mod support;

use std::ffi::OsStr;
use std::process::Output;
use support::text;

/// `strait ARGS --data-dir DATA --domain host.example`, as `ops-anna`.
fn strait(data: &std::path::Path, args: &[&str]) -> Output {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(OsStr::new("--data-dir"));
    all.push(data.as_os_str());
    all.extend(["--domain", "host.example", "--actor", "ops-anna"].map(OsStr::new));
    if args[0] == "user" || ["list", "show", "audit"].contains(&args[1]) {
        all.truncate(all.len() - 2); // only changes to the registry have an author
    }
    // Only `user add` reads standard input (the password).
    let stdin: &[u8] = if args[..2] == ["user", "add"] {
        b"pw-alice-123\n"
    } else {
        b""
    };
    support::run(&all, stdin)
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: Output, why: &str) {
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(why), "expected {why:?} in: {}", text(&o));
}

#[test]
fn provider_lifecycle_is_checked_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(strait(
        d,
        &[
            "provider",
            "add",
            "acme",
            "--name",
            "Acme Chat",
            "--provider-domain",
            "Acme.Example",
            "--scopes",
            "text,media,files",
        ],
    ));
    assert!(
        out.contains("registered acme (acme.example), pending"),
        "{out}"
    );

    // Refusals, each with its reason; none of them changes the registry.
    refused(
        strait(
            d,
            &[
                "provider",
                "add",
                "acme2",
                "--name",
                "X",
                "--provider-domain",
                "acme.example",
            ],
        ),
        "the domain acme.example belongs to the provider acme",
    );
    refused(
        strait(
            d,
            &[
                "provider",
                "add",
                "own",
                "--name",
                "X",
                "--provider-domain",
                "host.example",
            ],
        ),
        "this server's own domain",
    );
    refused(
        strait(
            d,
            &[
                "provider",
                "add",
                "Bad_Id",
                "--name",
                "X",
                "--provider-domain",
                "b.example",
            ],
        ),
        "not a valid provider id",
    );
    refused(
        strait(
            d,
            &[
                "provider",
                "add",
                "b",
                "--name",
                "X",
                "--provider-domain",
                "b.example",
                "--scopes",
                "voice",
            ],
        ),
        "unknown scope \"voice\"",
    );
    refused(
        strait(d, &["provider", "activate", "acme"]),
        "has not accepted the interoperability terms",
    );
    refused(
        strait(d, &["provider", "activate", "nope"]),
        "no provider nope is registered",
    );

    ok(strait(
        d,
        &[
            "provider",
            "terms",
            "acme",
            "--version",
            "2024-03",
            "--accepted-by",
            "Jo Signer",
        ],
    ));
    assert!(ok(strait(d, &["provider", "activate", "acme"])).contains("acme is now active"));
    let jwks = d.join("jwks.json");
    std::fs::write(&jwks, "{\"keys\": 1}").unwrap();
    refused(
        strait(
            d,
            &["provider", "set", "acme", "--jwks", jwks.to_str().unwrap()],
        ),
        "not a JSON Web Key Set",
    );
    std::fs::write(&jwks, "{\"keys\": []}").unwrap();
    let shown = ok(strait(
        d,
        &[
            "provider",
            "set",
            "acme",
            "--jwks",
            jwks.to_str().unwrap(),
            "--issuer",
            "https://acme.example",
            "--rate",
            "200",
        ],
    ));
    assert!(
        shown.contains("status:      active") && shown.contains("rate:        200 stanzas/s"),
        "{shown}"
    );
    refused(
        strait(d, &["provider", "suspend", "acme", "--reason", " "]),
        "say why",
    );
    ok(strait(
        d,
        &["provider", "suspend", "acme", "--reason", "abuse report 17"],
    ));
    ok(strait(
        d,
        &[
            "provider",
            "terminate",
            "acme",
            "--reason",
            "contract ended",
        ],
    ));
    refused(
        strait(d, &["provider", "activate", "acme"]),
        "it cannot become active",
    );

    assert_eq!(
        ok(strait(d, &["provider", "list"])),
        "acme\tterminated\ttext,media,files\tacme.example\tAcme Chat\n"
    );
    let shown = ok(strait(d, &["provider", "show", "acme"]));
    assert!(
        shown.contains("terms:       version 2024-03, accepted by Jo Signer at ")
            && shown.contains("users:       0 under acme.example"),
        "{shown}"
    );
    refused(strait(d, &["provider", "show", "nope"]), "no provider nope");
    let audit = ok(strait(d, &["provider", "audit", "acme"]));
    let rows: Vec<Vec<&str>> = audit.lines().map(|l| l.split('\t').collect()).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r[3]).collect();
    assert_eq!(
        actions,
        ["add", "terms", "activate", "update", "suspend", "terminate"],
        "{audit}"
    );
    assert!(rows.iter().all(|r| r[2] == "ops-anna"), "{audit}");
    assert_eq!(rows[4][4], "active → suspended: abuse report 17");
    assert_eq!(
        rows[3][4],
        "issuer: - → https://acme.example; rate: - → 200; jwks replaced"
    );
}

#[test]
fn consent_is_off_until_the_user_opts_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(strait(d, &["user", "add", "alice@host.example"]));
    ok(strait(
        d,
        &[
            "provider",
            "add",
            "acme",
            "--name",
            "Acme",
            "--provider-domain",
            "acme.example",
        ],
    ));
    assert_eq!(
        ok(strait(d, &["user", "consent", "alice@host.example"])),
        "alice@host.example: third-party chats off, separate inbox, from: no provider\n"
    );
    assert_eq!(
        ok(strait(
            d,
            &[
                "user",
                "consent",
                "alice@host.example",
                "--on",
                "--allow",
                "acme",
                "--inbox",
                "combined"
            ]
        )),
        "alice@host.example: third-party chats on, combined inbox, from: acme\n"
    );
    refused(
        strait(
            d,
            &["user", "consent", "alice@host.example", "--allow", "nope"],
        ),
        "no provider nope",
    );
    refused(
        strait(d, &["user", "consent", "bob@host.example"]),
        "account bob@host.example not found",
    );
    refused(
        strait(
            d,
            &["user", "consent", "alice@host.example", "--inbox", "mixed"],
        ),
        "--inbox is separate or combined",
    );
    assert_eq!(
        ok(strait(
            d,
            &["user", "consent", "alice@host.example", "--off"]
        )),
        "alice@host.example: third-party chats off, combined inbox, from: acme\n"
    );
}
