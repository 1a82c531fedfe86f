//! `strait bench` against a live server, each scenario briefly with small numbers: the
//! generator logs in, runs its traffic, and reports what really happened (deliveries counted,
//! offline messages fetched, latencies recorded, the server's RSS read from /proc).

use strait_bench::report::Results;
use strait_tests::{DOMAIN, TestServer};

/// A server with accounts bench0… (password pw-n).
async fn server_with_accounts(n: u64) -> TestServer {
    server_with_accounts_and(n, |_| {}).await
}

/// [`server_with_accounts`] with `tweak` applied to the server's configuration.
async fn server_with_accounts_and(
    n: u64,
    tweak: impl FnOnce(&mut strait_server::config::Config),
) -> TestServer {
    let t = TestServer::start(tweak).await;
    for i in 0..n {
        t.add_user(&format!("bench{i}@{DOMAIN}"), &format!("pw-{i}"));
    }
    t
}

/// The options every run shares: this server, its CA, this process as the "server".
fn args(t: &TestServer, scenario: &str, more: &[&str]) -> strait_bench::BenchArgs {
    let ca = t.config().data_dir.join("tls/ca.pem");
    let mut v: Vec<String> = vec![
        scenario.into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        t.starttls.port().to_string(),
        "--domain".into(),
        DOMAIN.into(),
        "--ca-file".into(),
        ca.display().to_string(),
        "--server-pid".into(),
        std::process::id().to_string(),
        "--source-ips".into(),
        "4".into(),
        "--label".into(),
        "smoke".into(),
    ];
    v.extend(more.iter().map(|s| s.to_string()));
    strait_bench::parse_args(v).unwrap()
}

async fn run(args: &strait_bench::BenchArgs) -> strait_bench::Report {
    let report = strait_bench::run(args).await.unwrap();
    // The table renders whatever happened.
    let text = report.to_text();
    assert!(text.contains("strait bench"), "{text}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_and_reads_memory() {
    let t = server_with_accounts(3).await;
    let a = args(
        &t,
        "idle",
        &[
            "--connections",
            "6",
            "--resources-per-account",
            "2",
            "--accounts",
            "3",
            "--duration",
            "1",
            "--keepalive",
            "0.25",
            "--keepalive-kind",
            "ping",
            "--presence",
        ],
    );
    let r = run(&a).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    assert_eq!(r.logins.succeeded, 6, "{}", r.to_text());
    let Results::Idle(idle) = &r.results else {
        panic!("not idle results")
    };
    assert_eq!(idle.connections_established, 6);
    assert_eq!(idle.connections_alive_at_end, 6, "{}", r.to_text());
    assert_eq!(idle.dropped_during_hold, 0);
    assert!(idle.server_rss_before_kib.unwrap() > 0);
    assert!(idle.server_rss_end_of_hold_kib.unwrap() > 0);
    assert!(idle.server_kib_per_connection.is_some());
    let ka = idle.keepalive.as_ref().unwrap();
    assert!(ka.sent >= 6, "{ka:?}");
    assert!(ka.answered > 0 && ka.rtt.count == ka.answered, "{ka:?}");
    assert_eq!(r.logins.latency.count, 6);
    assert!(r.phases.iter().all(|p| p.server_cpu_s.is_some()));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingpong_round_trips_with_stream_management() {
    let t = server_with_accounts(4).await;
    let a = args(
        &t,
        "pingpong",
        &["--pairs", "2", "--duration", "1.5", "--sm"],
    );
    let r = run(&a).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    let Results::Pingpong(p) = &r.results else {
        panic!("not pingpong results")
    };
    assert!(p.round_trips >= 10, "{}", r.to_text());
    assert_eq!(p.rtt.count, p.round_trips);
    assert!(p.rtt.p50_ms > 0.0 && p.rtt.max_ms >= p.rtt.p99_ms);
    assert_eq!(p.errors.total, 0, "{}", r.to_text());
    assert_eq!(r.failures.total, 0, "{}", r.to_text());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_all_delivered_online_and_offline() {
    let t = server_with_accounts(6).await;
    let json = t.dir.path().join("messages.json");
    let a = args(
        &t,
        "messages",
        &[
            "--pairs",
            "2",
            "--rate",
            "200",
            "--duration",
            "1.5",
            "--offline-fraction",
            "0.2",
            "--offline-accounts",
            "2",
            "--drain",
            "5",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let r = run(&a).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    let Results::Messages(m) = &r.results else {
        panic!("not messages results")
    };
    assert!(m.sent >= 250, "{}", r.to_text());
    assert_eq!(m.sent, m.sent_online + m.sent_offline);
    assert!(m.sent_offline >= 40, "{}", r.to_text());
    assert_eq!(m.received_online, m.sent_online, "{}", r.to_text());
    assert_eq!(m.lost_online, 0);
    assert_eq!(m.received_offline, m.sent_offline, "{}", r.to_text());
    assert_eq!(m.lost_offline, 0);
    assert_eq!(m.latency.count, m.received_online);
    assert!(m.latency.p50_ms > 0.0);
    assert_eq!(m.errors.total, 0);
    assert!(r.phases.iter().any(|p| p.name == "offline fetch"));

    // The JSON report is written by `strait_bench::main`; here the same structure is
    // serialized the same way and carries every figure.
    let v = serde_json_like(&r);
    assert!(v.contains("\"scenario\":\"messages\""), "{v}");
    assert!(v.contains("\"lost_online\":0"), "{v}");
    assert!(v.contains("\"label\":\"smoke\""), "{v}");
    t.stop().await;
}

/// `--ack-delay-ms`: the online accounts answer the server's ack requests late, as clients on
/// a slow network do. With the copies' hold (`copy_hold_ms`) longer than the delay, the
/// server keeps each message's stored copy pending until its late acknowledgement: about the
/// message rate times the delay of them at any time (at once, as without the delay, a few).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_acknowledgements_keep_held_copies_pending() {
    let t = server_with_accounts_and(4, |c| c.stream_management.copy_hold_ms = 10_000).await;
    let a = args(
        &t,
        "messages",
        &[
            "--pairs",
            "2",
            "--rate",
            "200",
            "--duration",
            "2",
            "--sm",
            "--ack-delay-ms",
            "800",
        ],
    );
    let state = t.server.as_ref().unwrap().state().clone();
    let sampler = tokio::spawn(async move {
        let mut most = 0;
        for _ in 0..60 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            most = most.max(state.held_writes());
        }
        most
    });
    let r = run(&a).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    let Results::Messages(m) = &r.results else {
        panic!("not messages results")
    };
    assert_eq!(m.lost_online, 0, "{}", r.to_text());
    assert!(
        r.to_text().contains("answered 800 ms late"),
        "{}",
        r.to_text()
    );
    let most = sampler.await.unwrap();
    // 200 msg/s acknowledged 0.8 s late: about 160 pending; 40 leaves room for a slow machine.
    assert!(most >= 40, "at most {most} copies pending");
    t.stop().await;
}

/// The report as compact JSON (through the report's own Serialize).
fn serde_json_like(r: &strait_bench::Report) -> String {
    strait_bench::report::to_json(r, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_storm_over_starttls_and_direct_tls() {
    let t = server_with_accounts(4).await;
    let a = args(
        &t,
        "login-storm",
        &[
            "--logins",
            "8",
            "--accounts",
            "4",
            "--login-concurrency",
            "4",
        ],
    );
    let r = run(&a).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    let Results::LoginStorm(s) = &r.results else {
        panic!("not login-storm results")
    };
    assert_eq!((s.succeeded, s.failed), (8, 0), "{}", r.to_text());
    assert_eq!(s.latency.count, 8);
    assert!(s.logins_per_s > 0.0);
    assert_eq!(r.logins.mechanisms.get("SCRAM-SHA-256"), Some(&8));

    // Direct TLS, certificate not checked, SCRAM-SHA-1 forced.
    let mut v = vec![
        "login-storm".to_string(),
        "--port".into(),
        t.direct.port().to_string(),
        "--direct-tls".into(),
        "--insecure".into(),
        "--mechanism".into(),
        "SCRAM-SHA-1".into(),
        "--logins".into(),
        "4".into(),
    ];
    v.extend(["--accounts", "4"].map(String::from));
    let r = run(&strait_bench::parse_args(v).unwrap()).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    assert_eq!(r.logins.succeeded, 4, "{}", r.to_text());
    assert_eq!(r.logins.mechanisms.get("SCRAM-SHA-1"), Some(&4));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_reported_by_reason_and_fail_the_run() {
    let t = server_with_accounts(2).await;
    let a = args(
        &t,
        "login-storm",
        &["--logins", "2", "--password-template", "wrong-{n}"],
    );
    let r = run(&a).await;
    assert_eq!(r.logins.failed, 2, "{}", r.to_text());
    assert_eq!(
        r.logins.failures.by_kind.get("sasl: not-authorized"),
        Some(&2),
        "{}",
        r.to_text()
    );
    let e = r.error.as_deref().unwrap_or_default();
    assert!(e.contains("2 of 2 logins failed"), "{e}");
    // A scenario that needs more accounts than exist refuses to start.
    let a = args(&t, "pingpong", &["--pairs", "2", "--accounts", "2"]);
    let err = strait_bench::run(&a).await.unwrap_err().to_string();
    assert!(err.contains("needs 4 accounts"), "{err}");
    t.stop().await;
}

/// A provider `acme` (users under `chat.acme.test`) registered and active with the key set
/// `strait bench gen-provider` wrote into `dir`, as `strait provider add/terms/activate` do it;
/// the running server reads it. Returns the generator's `--third-party-*` options.
async fn provider_from_gen_provider(t: &TestServer, dir: &std::path::Path) -> Vec<String> {
    use strait_server::interop::registry::{self, Actor};
    let g = strait_bench::parse_args([
        "gen-provider",
        "--out",
        dir.to_str().unwrap(),
        "--provider-domain",
        PROVIDER_DOMAIN,
        "--issuer",
        ISSUER,
    ])
    .unwrap();
    let strait_bench::BenchCommand::GenProvider(g) = g.command else {
        panic!("not gen-provider")
    };
    let mut printed = Vec::new();
    strait_bench::third_party::gen_provider(&g, &mut printed).unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("strait provider add"), "{printed}");

    let state = t.server.as_ref().unwrap().state();
    let op = Actor {
        name: "bench-smoke",
        now_ms: 1,
    };
    let mut p = strait_store::Provider::new("acme", "Acme Chat", vec![PROVIDER_DOMAIN.into()]);
    p.issuer = Some(ISSUER.into());
    p.jwks = Some(std::fs::read_to_string(dir.join("jwks.json")).unwrap());
    registry::add(&state.config, &*state.store, &p, op).unwrap();
    registry::accept_terms(&*state.store, "acme", "1", "Jo Signer", op).unwrap();
    registry::set_status(
        &*state.store,
        "acme",
        strait_store::ProviderStatus::Active,
        "",
        op,
    )
    .unwrap();
    strait_server::interop::refresh(state, -1).await;
    vec![
        "--third-party-domain".into(),
        PROVIDER_DOMAIN.into(),
        "--third-party-key".into(),
        dir.join("provider.pkcs8.pem").display().to_string(),
        "--third-party-issuer".into(),
        ISSUER.into(),
    ]
}

const PROVIDER_DOMAIN: &str = "chat.acme.test";
const ISSUER: &str = "https://acme.test";

/// Platform accounts bench0..bench{n-1} opt in to acme's chats, as `strait user consent --on
/// --allow acme` does.
fn opt_in(t: &TestServer, n: u64) {
    use strait_server::interop::consent::{self, ConsentChange};
    let state = t.server.as_ref().unwrap().state();
    let change = ConsentChange {
        enabled: Some(true),
        allow: vec!["acme".into()],
        ..Default::default()
    };
    for i in 0..n {
        consent::change(&*state.store, &format!("bench{i}@{DOMAIN}"), &change, 1).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_messages_cross_the_boundary_both_ways() {
    let t = server_with_accounts(3).await;
    let keys = tempfile::tempdir().unwrap();
    let mut more = provider_from_gen_provider(&t, keys.path()).await;
    opt_in(&t, 3);
    more.extend(
        [
            "--pairs",
            "3",
            "--accounts",
            "3",
            "--rate",
            "200",
            "--duration",
            "1.5",
            "--body-size",
            "1500",
            "--drain",
            "5",
        ]
        .map(String::from),
    );
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    let r = run(&args(&t, "messages", &more)).await;
    assert_eq!(r.error, None, "{}", r.to_text());
    // Three platform accounts with passwords, three provider users with tokens.
    assert_eq!(
        r.logins.mechanisms.get("SCRAM-SHA-256"),
        Some(&3),
        "{}",
        r.to_text()
    );
    assert_eq!(
        r.logins.mechanisms.get("OAUTHBEARER"),
        Some(&3),
        "{}",
        r.to_text()
    );
    let Results::Messages(m) = &r.results else {
        panic!("not messages results")
    };
    assert_eq!(m.mode, "third-party");
    assert!(m.omemo, "third-party mode sends OMEMO");
    assert!(m.sent >= 280, "{}", r.to_text());
    assert_eq!(m.sent, m.sent_online);
    assert_eq!(m.received_online, m.sent_online, "{}", r.to_text());
    assert_eq!(m.lost_online, 0);
    assert_eq!(m.errors.total, 0, "{}", r.to_text());
    // Both directions: the provider's users (odd senders) sent half, and each of those
    // reached its platform account with the server's origin stamp; the other half reached
    // the provider's users unstamped.
    assert_eq!(m.origin_stamped, m.sent_online / 2, "{}", r.to_text());
    assert_eq!(m.latency.count, m.received_online);
    // The provider's users now have accounts under its domain.
    let state = t.server.as_ref().unwrap().state();
    let users = state.store.list_accounts(Some(PROVIDER_DOMAIN)).unwrap();
    assert_eq!(users.len(), 3, "{users:?}");

    // Offline messages are not part of the mode: refused before anything runs.
    let mut offline = more.clone();
    offline.extend(["--offline-fraction", "0.1"]);
    let err = strait_bench::run(&args(&t, "messages", &offline))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--offline-fraction must be 0"), "{err}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_messages_without_consent_are_reported_as_refused() {
    let t = server_with_accounts(2).await;
    let keys = tempfile::tempdir().unwrap();
    let mut more = provider_from_gen_provider(&t, keys.path()).await;
    // No opt-in.
    more.extend(
        [
            "--pairs",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--drain",
            "20",
        ]
        .map(String::from),
    );
    let more: Vec<&str> = more.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        strait_bench::run(&args(&t, "messages", &more)),
    )
    .await
    .expect("the generator returns")
    .unwrap();
    let Results::Messages(m) = &r.results else {
        panic!("not messages results: {}", r.to_text())
    };
    assert!(m.sent >= 90, "{}", r.to_text());
    assert_eq!(m.received_online, 0, "{}", r.to_text());
    // Every message came back as an error, in both directions, with the server's reason …
    assert_eq!(m.errors.total, m.sent, "{}", r.to_text());
    assert_eq!(
        m.errors.by_kind.get("message error: not-allowed"),
        Some(&m.sent),
        "{}",
        r.to_text()
    );
    let reason = &m.errors.examples["message error: not-allowed"];
    assert!(
        reason.contains("does not accept chats from Acme Chat")
            || reason.contains("are off for your account"),
        "{reason}"
    );
    // … the run says so and fails …
    let e = r.error.as_deref().unwrap_or_default();
    assert!(e.contains("refused every message"), "{}", r.to_text());
    assert!(r.to_text().contains("not-allowed"));
    // … and the drain did not wait for deliveries that could not come (its limit is 20 s).
    assert!(m.drain_s < 5.0, "{}", r.to_text());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    t.stop().await;
}
