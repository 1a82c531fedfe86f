//! `strait bench` against a live server, each scenario briefly with small numbers: the
//! generator logs in, runs its traffic, and reports what really happened (deliveries counted,
//! offline messages fetched, latencies recorded, the server's RSS read from /proc).

use strait_bench::report::Results;
use strait_tests::{DOMAIN, TestServer};

/// A server with accounts bench0… (password pw-n).
async fn server_with_accounts(n: u64) -> TestServer {
    let t = TestServer::start(|_| {}).await;
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
