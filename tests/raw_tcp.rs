//! Raw-bytes sessions against a running server: what exactly a client sees for good and
//! hostile input. Every wait is bounded (`common::WAIT`).

use std::time::Duration;
use strait_tests::{DOMAIN, OTHER_DOMAIN, RawClient, TestServer, between};

const STREAM_OPEN: &str = "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

#[tokio::test]
async fn plaintext_offers_only_required_starttls() {
    let t = TestServer::start(|_| {}).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let f = c.open_stream(DOMAIN).await;
    assert!(
        f.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{f}"
    );
    assert!(!f.contains("mechanisms"), "no SASL before TLS: {f}");
    // Trying to authenticate anyway is refused.
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
        .await;
    let got = c.expect("</failure>").await;
    assert!(got.contains("<encryption-required/>"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn starttls_then_scram_offers_sha256_and_sha1_but_not_plain() {
    let t = TestServer::start(|_| {}).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let f = c.starttls(DOMAIN).await;
    assert!(f.contains("<mechanism>SCRAM-SHA-256</mechanism>"), "{f}");
    assert!(f.contains("<mechanism>SCRAM-SHA-1</mechanism>"), "{f}");
    assert!(!f.contains("PLAIN"), "PLAIN is off by default: {f}");
    assert!(!f.contains("starttls"), "{f}");
    t.stop().await;
}

#[tokio::test]
async fn direct_tls_login_and_bind() {
    let t = TestServer::start(|_| {}).await;
    let jid = t.add_user("alice@localhost", "secret-1");
    let mut c = RawClient::connect_direct(t.direct, t.ca_pem(), DOMAIN).await;
    let f = c.open_stream(DOMAIN).await;
    assert!(
        f.contains("SCRAM-SHA-256") && !f.contains("starttls"),
        "{f}"
    );
    let r = c.scram_sha256("alice", "secret-1").await;
    assert!(r.contains("<success"), "{r}");
    let full = c.bind(DOMAIN, "desk").await;
    assert_eq!(full, format!("{jid}/desk"));
    t.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_alike_then_throttle() {
    let t = TestServer::start(|c| c.auth.max_failures_per_account = 3).await;
    t.add_user("bob@localhost", "right");
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    let r = c.scram_sha256("bob", "wrong").await;
    assert!(r.contains("<not-authorized/>"), "{r}");
    let mut c2 = RawClient::connect(t.starttls, t.ca_pem()).await;
    c2.starttls(DOMAIN).await;
    let r2 = c2.scram_sha256("nobody", "x").await;
    assert!(
        r2.contains("<not-authorized/>"),
        "unknown users fail the same way: {r2}"
    );
    // Two more failures for bob reach the limit; then even the right password is refused
    // for a while, with a clear reason.
    for _ in 0..2 {
        let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
        c.starttls(DOMAIN).await;
        assert!(
            c.scram_sha256("bob", "wrong")
                .await
                .contains("not-authorized")
        );
    }
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    let r = c.scram_sha256("bob", "right").await;
    assert!(r.contains("temporary-auth-failure"), "{r}");
    assert!(r.contains("try again"), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn doctype_is_restricted_xml() {
    let t = TestServer::start(|_| {}).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.send("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").await;
    let got = c.read_to_close().await;
    assert!(got.contains("<restricted-xml"), "{got}");
    assert!(got.contains("</stream:stream>"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn oversized_stanza_before_auth_closes_with_policy_violation() {
    let t = TestServer::start(|_| {}).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.open_stream(DOMAIN).await;
    let big = format!("<message><body>{}</body></message>", "a".repeat(20_000));
    c.try_send(big.as_bytes()).await;
    let got = c.read_to_close().await;
    assert!(got.contains("<policy-violation"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn unknown_host_and_bad_namespace() {
    let t = TestServer::start(|_| {}).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.send("<?xml version='1.0'?><stream:stream to='nowhere.test' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").await;
    let got = c.read_to_close().await;
    assert!(got.contains("<host-unknown"), "{got}");
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.send("<stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='urn:not-streams'>").await;
    let got = c.read_to_close().await;
    assert!(got.contains("<invalid-namespace"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn invalid_utf8_is_not_well_formed() {
    let t = TestServer::start(|_| {}).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.open_stream(DOMAIN).await;
    c.try_send(b"<message><body>\xff\xfe</body></message>")
        .await;
    let got = c.read_to_close().await;
    // RFC 6120 §4.9.3.22: data that is not UTF-8 is unsupported-encoding.
    assert!(got.contains("<unsupported-encoding"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn unauthenticated_connections_time_out() {
    let t = TestServer::start(|c| c.limits.unauthenticated_timeout_secs = 1).await;
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.send(STREAM_OPEN).await;
    let got = c.read_to_close().await;
    assert!(got.contains("<connection-timeout"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn messages_both_ways_with_true_from() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    a.send("<message to='bob@localhost' type='chat' id='m1'><body>hi bob</body></message>")
        .await;
    let got = b.expect("</message>").await;
    assert!(got.contains("from='alice@localhost/a1'"), "{got}");
    assert!(
        got.contains("id='m1'") && got.contains(">hi bob</body>"),
        "{got}"
    );
    b.send("<message to='alice@localhost/a1' type='chat' id='m2'><body>hi alice</body></message>")
        .await;
    let got = a.expect("</message>").await;
    assert!(
        got.contains("from='bob@localhost/b1'") && got.contains("hi alice"),
        "{got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn to_addresses_are_normalized_each_time_even_when_repeated() {
    // The session remembers the last `to` it normalized: the same address written again,
    // a malformed one between, another form of it and a phone number must all come out as
    // if each were normalized afresh.
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    t.add_user("+441632960000@localhost", "pp");
    let mut p = RawClient::login(
        t.starttls,
        t.ca_pem(),
        "+441632960000@localhost",
        "pp",
        "p1",
    )
    .await;
    p.available().await;
    for (i, to) in [
        "BOB@LocalHost",
        "BOB@LocalHost",
        "bob@localhost/b1",
        "BOB@LocalHost",
    ]
    .iter()
    .enumerate()
    {
        a.send(&format!(
            "<message to='{to}' type='chat' id='n{i}'><body>n{i}</body></message>"
        ))
        .await;
        let got = b.expect("</message>").await;
        assert!(got.contains(&format!("id='n{i}'")), "{got}");
        let want = if to.ends_with("/b1") {
            "to='bob@localhost/b1'"
        } else {
            "to='bob@localhost'"
        };
        assert!(got.contains(want), "{to}: {got}");
        if i == 1 {
            a.send("<message to='a@b@c' type='chat' id='bad'><body>x</body></message>")
                .await;
            let err = a.expect("</message>").await;
            assert!(
                err.contains("id='bad'") && err.contains("<jid-malformed"),
                "{err}"
            );
        }
    }
    a.send("<message to='+44 1632 960000@localhost' type='chat' id='ph'><body>ph</body></message>")
        .await;
    let got = p.expect("</message>").await;
    assert!(
        got.contains("id='ph'") && got.contains("to='+441632960000@localhost'"),
        "{got}"
    );
    b.expect_silence("id='bad'", Duration::from_millis(200))
        .await;
    t.stop().await;
}

#[tokio::test]
async fn forged_from_is_invalid_from() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    a.send("<message from='bob@localhost/x' to='alice@localhost' type='chat'><body>forged</body></message>").await;
    let got = a.read_to_close().await;
    assert!(got.contains("<invalid-from"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn smuggled_markup_stays_text() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    a.send("<message to='bob@localhost' type='chat' id='s1'><body>&lt;/body&gt;&lt;/message&gt;&lt;message from='admin@localhost'&gt;<![CDATA[</message><iq type='set'>]]></body></message>").await;
    let got = b.expect("</message>").await;
    assert!(got.contains("id='s1'"), "{got}");
    assert_eq!(
        got.matches("<message").count(),
        1,
        "exactly one message: {got}"
    );
    assert!(
        got.contains("&lt;/message&gt;&lt;iq type=&apos;set&apos;&gt;")
            || got.contains("&lt;/message&gt;&lt;iq type='set'&gt;"),
        "CDATA content re-escaped: {got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn offline_messages_arrive_in_order_with_delay_once() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    t.add_user("bob@localhost", "pb");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    for i in 0..3 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='o{i}'><body>n{i}</body></message>"
        ))
        .await;
    }
    a.ping("p").await;
    assert!(!a.buffer.contains("error"), "no bounce: {}", a.buffer);
    let mut b = RawClient::login(t.starttls, t.ca_pem(), "bob@localhost", "pb", "b1").await;
    b.send("<presence/>").await;
    let mut last = 0;
    for i in 0..3 {
        let got = b.expect("</message>").await;
        assert!(got.contains(&format!("id='o{i}'")), "order: {got}");
        assert!(
            got.contains("<delay xmlns='urn:xmpp:delay' from='localhost' stamp='"),
            "{got}"
        );
        let _ = last;
        last = i;
    }
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = RawClient::login(t.starttls, t.ca_pem(), "bob@localhost", "pb", "b2").await;
    b.available().await;
    b.expect_silence("<message", Duration::from_millis(500))
        .await;
    t.stop().await;
}

#[tokio::test]
async fn offline_quota_gives_sender_an_error() {
    let t = TestServer::start(|c| c.limits.max_offline_messages = 2).await;
    t.add_user("alice@localhost", "pa");
    t.add_user("bob@localhost", "pb");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    for i in 0..3 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='q{i}'><body>n{i}</body></message>"
        ))
        .await;
    }
    let got = a.expect("</message>").await;
    assert!(
        got.contains("id='q2'") && got.contains("type='error'"),
        "{got}"
    );
    assert!(got.contains("<resource-constraint"), "{got}");
    assert!(got.contains("2 messages waiting"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn cross_domain_and_unknown_recipients() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    t.add_user("carol@example.test", "pc");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    let mut c = RawClient::login(t.starttls, t.ca_pem(), "carol@example.test", "pc", "c1").await;
    c.available().await;
    a.send("<message to='carol@example.test' type='chat' id='x1'><body>hello other host</body></message>").await;
    let got = c.expect("</message>").await;
    assert!(got.contains("from='alice@localhost/a1'"), "{got}");
    a.send("<message to='nobody@localhost' type='chat' id='x2'><body>?</body></message>")
        .await;
    let got = a.expect("</message>").await;
    assert!(got.contains("<service-unavailable"), "{got}");
    a.send("<message to='someone@remote.invalid' type='chat' id='x3'><body>?</body></message>")
        .await;
    let got = a.expect("</message>").await;
    assert!(got.contains("<remote-server-not-found"), "{got}");
    let _ = OTHER_DOMAIN;
    t.stop().await;
}

#[tokio::test]
async fn iq_routing_and_server_answers() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    a.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let got = a.expect("</iq>").await;
    assert!(
        got.contains("category='server'") && got.contains("urn:xmpp:ping"),
        "{got}"
    );
    a.send(
        "<iq type='get' id='d2' to='alice@localhost/gone'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let got = a.expect("</iq>").await;
    assert!(
        got.contains("id='d2'") && got.contains("<service-unavailable"),
        "{got}"
    );
    a.send("<iq type='get' id='d3'><unknown xmlns='urn:example:nothing'/></iq>")
        .await;
    let got = a.expect("</iq>").await;
    assert!(
        got.contains("id='d3'") && got.contains("<service-unavailable"),
        "{got}"
    );
    a.send("<iq type='get' id='d4'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let got = a.expect("id='d4'").await + &a.expect_one_of(&["/>", "</iq>"]).await;
    assert!(got.contains("type='result'"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn resource_cap_and_conflict() {
    let t = TestServer::start(|c| c.limits.max_resources_per_account = 1).await;
    t.add_user("alice@localhost", "pa");
    let mut first = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "same").await;
    // The same resource again replaces the first session, which is told why.
    let _second = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "same").await;
    let got = first.read_to_close().await;
    assert!(got.contains("<conflict"), "{got}");
    // A different resource is over the cap.
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    assert!(c.scram_sha256("alice", "pa").await.contains("<success"));
    c.open_stream(DOMAIN).await;
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>other</resource></bind></iq>").await;
    let got = c.expect("</iq>").await;
    assert!(got.contains("<resource-constraint"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sessions_with_system_shutdown() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    let stop = tokio::spawn(t.stop());
    let got = a.read_to_close().await;
    assert!(got.contains("<system-shutdown"), "{got}");
    stop.await.unwrap();
}

#[tokio::test]
async fn presence_subscription_handshake() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let got = b.expect_element(&["<presence", "type='subscribe'"]).await;
    assert!(got.contains("from='alice@localhost'"), "{got}");
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    a.expect_element(&["<presence", "type='subscribed'", "from='bob@localhost'"])
        .await;
    // Alice now sees Bob's presence.
    let got = a
        .expect_element(&["<presence", "from='bob@localhost/b1'"])
        .await;
    assert!(!got.contains("type="), "available presence: {got}");
    a.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let got = a.expect_element(&["id='r1'"]).await;
    assert!(
        got.contains("jid='bob@localhost'") && got.contains("subscription='to'"),
        "{got}"
    );
    // Bob's roster shows 'from'.
    b.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let got = b.expect_element(&["id='r2'"]).await;
    assert!(
        got.contains("jid='alice@localhost'") && got.contains("subscription='from'"),
        "{got}"
    );
    // Bob goes offline: Alice is told.
    drop(b);
    let got = a.expect_element(&["type='unavailable'"]).await;
    assert!(got.contains("from='bob@localhost/b1'"), "{got}");
    let _ = between("", "", "");
    t.stop().await;
}

#[tokio::test]
async fn plain_only_when_enabled_and_only_over_tls() {
    let t = TestServer::start(|c| c.auth.allow_plain = true).await;
    t.add_user("alice@localhost", "pa");
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let before = c.open_stream(DOMAIN).await;
    assert!(!before.contains("PLAIN"), "{before}");
    c.buffer.clear();
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let after = c.starttls(DOMAIN).await;
    assert!(after.contains("<mechanism>PLAIN</mechanism>"), "{after}");
    // authzid empty, authcid alice, password pa
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHBh</auth>")
        .await;
    let got = c.expect_one_of(&["<success", "<failure"]).await;
    assert!(got.contains("<success"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn idle_sessions_time_out() {
    let t = TestServer::start(|c| c.limits.idle_timeout_secs = 1).await;
    t.add_user("alice@localhost", "pa");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    let got = a.read_to_close().await;
    assert!(got.contains("<connection-timeout"), "{got}");
    assert!(got.contains("idle"), "{got}");
    t.stop().await;
}

/// The idle deadline moves with every read: a session that keeps talking outlives many idle
/// timeouts, and is timed out once it goes quiet. (The connection's timer is armed once and
/// moved only when it must fire earlier, so each time it fires at a deadline the session has
/// since moved on, it must set itself again, not close.)
#[tokio::test]
async fn a_session_that_keeps_talking_is_not_timed_out() {
    let t = TestServer::start(|c| c.limits.idle_timeout_secs = 1).await;
    t.add_user("alice@localhost", "pa");
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    let start = std::time::Instant::now();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = a.ping(&format!("keep{i}")).await;
        assert!(
            got.contains("type='result'"),
            "ping {i} after {:?}: {got}",
            start.elapsed()
        );
    }
    // 3.2 s of traffic, three times the idle timeout: still open. Now quiet: timed out.
    let got = a.read_to_close().await;
    assert!(got.contains("<connection-timeout"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn connection_cap_makes_extra_clients_wait() {
    let t = TestServer::start(|c| c.limits.max_connections = 2).await;
    let mut c1 = RawClient::connect(t.starttls, t.ca_pem()).await;
    c1.open_stream(DOMAIN).await;
    let mut c2 = RawClient::connect(t.starttls, t.ca_pem()).await;
    c2.open_stream(DOMAIN).await;
    // The third connection is not served while two are open...
    let mut c3 = RawClient::connect(t.starttls, t.ca_pem()).await;
    c3.send(STREAM_OPEN).await;
    c3.expect_silence("<stream:features", Duration::from_millis(500))
        .await;
    // ...and is served as soon as one closes.
    drop(c1);
    let f = c3.expect("</stream:features>").await;
    assert!(f.contains("starttls"), "{f}");
    drop(c2);
    t.stop().await;
}

#[tokio::test]
async fn reading_is_shaped_not_dropped() {
    // 4 KB/s with a 4 KB burst: a 16 KB stanza cannot arrive in under ~3 s, and it arrives
    // whole. Only a lower bound is asserted, which a slow machine cannot break.
    let t = TestServer::start(|c| {
        c.limits.rate_bytes_per_sec = 4096;
        c.limits.burst_bytes = 4096;
    })
    .await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let body = "x".repeat(16 * 1024);
    let start = std::time::Instant::now();
    a.send(&format!(
        "<message to='bob@localhost' id='big'><body>{body}</body></message>"
    ))
    .await;
    let got = tokio::time::timeout(Duration::from_secs(30), b.expect_element(&["id='big'"]))
        .await
        .unwrap();
    assert!(got.contains(&body), "delivered whole");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "shaped: took {:?}",
        start.elapsed()
    );
    t.stop().await;
}

/// The TLS transport frees its buffers between records: a stanza trickling in as many tiny
/// TLS records, and a 200 KB stanza spanning a dozen records each way, still arrive whole.
#[tokio::test]
async fn tls_many_small_records_and_a_large_stanza() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let small =
        "<message to='bob@localhost' type='chat' id='s1'><body>one byte at a time</body></message>";
    for chunk in small.as_bytes().chunks(3) {
        a.send(std::str::from_utf8(chunk).unwrap()).await;
    }
    let got = b.expect("</message>").await;
    assert!(
        got.contains("id='s1'") && got.contains("one byte at a time"),
        "{got}"
    );

    let body: String = (0..200_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    a.send(&format!(
        "<message to='bob@localhost' type='chat' id='big'><body>{body}</body></message>"
    ))
    .await;
    let got = b.expect("</message>").await;
    assert!(got.contains("id='big'"), "{}", &got[..200.min(got.len())]);
    assert!(
        got.contains(&format!(">{body}</body>")),
        "the large body arrived changed"
    );

    // The connection carries on afterwards, both ways.
    b.send("<message to='alice@localhost/a1' type='chat' id='after'><body>ok</body></message>")
        .await;
    let got = a.expect("</message>").await;
    assert!(got.contains("id='after'"), "{got}");
    t.stop().await;
}

/// XEP-0115 §6.3: the server announces its capabilities in the stream features, and the
/// announced hash is the verification string (§5.1, forms included, computed here
/// independently) of what disco#info answers for that node, which carries the XEP-0157
/// contact addresses.
#[tokio::test]
async fn server_caps_in_stream_features_verify() {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let t = TestServer::start(|c| {
        c.contact.abuse = vec!["mailto:abuse@localhost".into()];
        c.contact.security = vec![
            "xmpp:security@localhost".into(),
            "https://localhost/security?a=1&b=2".into(),
        ];
    })
    .await;
    t.add_user("alice@localhost", "secret-1");
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    let r = c.scram_sha256("alice", "secret-1").await;
    assert!(r.contains("<success"), "{r}");
    let f = c.open_stream(DOMAIN).await;
    let head =
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:strait:server' ver='";
    assert!(f.contains(head), "{f}");
    let ver = between(&f, head, "'").to_owned();
    c.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>").await;
    c.expect("</iq>").await;
    c.send(&format!("<iq type='get' id='c1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:strait:server#{ver}'/></iq>")).await;
    let r = c.expect_element(&["<iq", "id='c1'"]).await;
    assert!(r.contains("type='result'"), "{r}");
    let doc = roxmltree::Document::parse(&r).unwrap();
    let query = doc.descendants().find(|n| n.has_tag_name("query")).unwrap();
    assert_eq!(
        query.attribute("node"),
        Some(format!("urn:strait:server#{ver}").as_str())
    );
    let mut ids: Vec<String> = query
        .children()
        .filter(|n| n.has_tag_name("identity"))
        .map(|n| {
            format!(
                "{}/{}/{}/{}",
                n.attribute("category").unwrap_or(""),
                n.attribute("type").unwrap_or(""),
                n.attribute(("http://www.w3.org/XML/1998/namespace", "lang"))
                    .unwrap_or(""),
                n.attribute("name").unwrap_or("")
            )
        })
        .collect();
    ids.sort();
    let mut features: Vec<&str> = query
        .children()
        .filter(|n| n.has_tag_name("feature"))
        .filter_map(|n| n.attribute("var"))
        .collect();
    features.sort();
    assert!(ids.contains(&"server/im//Strait".to_owned()), "{ids:?}");
    let mut s = String::new();
    for i in &ids {
        s.push_str(i);
        s.push('<');
    }
    for f in &features {
        s.push_str(f);
        s.push('<');
    }
    // The one form (XEP-0157): FORM_TYPE, then fields by var, values sorted.
    let x = query
        .children()
        .find(|n| n.has_tag_name("x"))
        .expect("a form");
    let mut fields: Vec<(String, Vec<String>)> = x
        .children()
        .filter(|n| n.has_tag_name("field"))
        .map(|f| {
            let mut values: Vec<String> = f
                .children()
                .filter(|v| v.has_tag_name("value"))
                .map(|v| v.text().unwrap_or("").to_owned())
                .collect();
            values.sort();
            (f.attribute("var").unwrap_or("").to_owned(), values)
        })
        .collect();
    fields.sort();
    let form_type = fields.iter().find(|(v, _)| v == "FORM_TYPE").unwrap().1[0].clone();
    assert_eq!(form_type, "http://jabber.org/network/serverinfo");
    s.push_str(&form_type);
    s.push('<');
    for (var, values) in fields.iter().filter(|(v, _)| v != "FORM_TYPE") {
        s.push_str(var);
        s.push('<');
        for v in values {
            s.push_str(v);
            s.push('<');
        }
    }
    assert!(s.contains("abuse-addresses<mailto:abuse@localhost<"), "{s}");
    assert!(
        s.contains(
            "security-addresses<https://localhost/security?a=1&b=2<xmpp:security@localhost<"
        ),
        "{s}"
    );
    let computed = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()));
    assert_eq!(computed, ver, "{s}");
    // Another node is not ours.
    c.send("<iq type='get' id='c2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='urn:strait:server#nope'/></iq>").await;
    let r = c.expect_element(&["<iq", "id='c2'"]).await;
    assert!(r.contains("<item-not-found"), "{r}");
    t.stop().await;
}

/// XEP-0077 for logged-in users: registered, password change (old one refused after), account
/// removal (every session closed, the account gone with its data), and what is refused.
#[tokio::test]
async fn in_band_password_change_and_account_removal() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let r = {
        a.send("<iq type='get' id='g1' to='localhost'><query xmlns='jabber:iq:register'/></iq>")
            .await;
        a.expect_element(&["<iq", "id='g1'"]).await
    };
    assert!(
        r.contains("<registered/>") && r.contains("<username>alice</username>"),
        "{r}"
    );
    // Another account's name, or no password: refused.
    for (id, inner, why) in [
        (
            "e1",
            "<username>bob</username><password>x</password>",
            "<not-allowed",
        ),
        ("e2", "<username>alice</username>", "<bad-request"),
        (
            "e3",
            "<username>alice</username><password></password>",
            "<not-acceptable",
        ),
    ] {
        a.send(&format!(
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'>{inner}</query></iq>"
        ))
        .await;
        let r = a.expect_element(&["<iq", &format!("id='{id}'")]).await;
        assert!(r.contains("type='error'") && r.contains(why), "{id}: {r}");
    }
    a.send("<iq type='set' id='c1' to='localhost'><query xmlns='jabber:iq:register'><username>alice</username><password>new &amp; long</password></query></iq>").await;
    let r = a.expect_element(&["<iq", "id='c1'"]).await;
    assert!(r.contains("type='result'"), "{r}");
    // Deriving keys costs CPU: a second change right after is refused for a while.
    a.send("<iq type='set' id='c2'><query xmlns='jabber:iq:register'><username>alice</username><password>again</password></query></iq>").await;
    let r = a.expect_element(&["<iq", "id='c2'"]).await;
    assert!(
        r.contains("type='error'")
            && r.contains("<resource-constraint")
            && r.contains("try again in"),
        "{r}"
    );
    // The old password no longer works; the new one does.
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    let r = c.scram_sha256("alice", "pa").await;
    assert!(r.contains("<failure"), "{r}");
    let mut a2 = RawClient::login(
        t.starttls,
        t.ca_pem(),
        "alice@localhost",
        "new & long",
        "a2",
    )
    .await;
    // Bob cannot remove Alice's account: to her JID, or to her server, it is never hers.
    b.send("<iq type='set' id='y1' to='alice@localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>").await;
    let r = b.expect_element(&["<iq", "id='y1'"]).await;
    assert!(r.contains("type='error'"), "{r}");
    assert!(a2.ping("alive").await.contains("type='result'"));
    // Removal: answered, then both of Alice's sessions are closed.
    a.send("<iq type='set' id='x1'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let r = a.expect_element(&["<iq", "id='x1'"]).await;
    assert!(r.contains("type='result'"), "{r}");
    let rest = a.read_to_close().await;
    assert!(
        rest.contains("<not-authorized") && rest.contains("the account was removed"),
        "{rest}"
    );
    let rest = a2.read_to_close().await;
    assert!(rest.contains("<not-authorized"), "{rest}");
    // Gone: no login, and messages to it bounce.
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    let r = c.scram_sha256("alice", "new & long").await;
    assert!(r.contains("<failure"), "{r}");
    b.send("<message to='alice@localhost' id='m1' type='chat'><body>hello?</body></message>")
        .await;
    let r = b.expect_element(&["<message", "id='m1'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("<service-unavailable"),
        "{r}"
    );
    t.stop().await;
}

/// With `auth.password_change_needs_old`, a password change must carry the current password
/// (XEP-0077 §3.3's form): the plain request is answered with the form to fill, a wrong
/// current password is refused (and uses up the account's change for a while, so guessing is
/// slow), the right one changes it.
#[tokio::test]
async fn password_change_can_require_the_current_password() {
    let t = TestServer::start(|c| c.auth.password_change_needs_old = true).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    a.send("<iq type='set' id='p1'><query xmlns='jabber:iq:register'><username>alice</username><password>taken over</password></query></iq>").await;
    let r = a.expect_element(&["<iq", "id='p1'"]).await;
    assert!(
        r.contains("type='error'")
            && r.contains("<not-authorized")
            && r.contains("jabber:iq:register:changepassword")
            && r.contains("var='old_password'"),
        "{r}"
    );
    let form = |id: &str, old: &str, new: &str, user: &str| {
        format!(
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>jabber:iq:register:changepassword</value></field>\
             <field var='username'><value>{user}</value></field>\
             <field var='old_password'><value>{old}</value></field>\
             <field var='password'><value>{new}</value></field></x></query></iq>"
        )
    };
    a.send(&form("p2", "guess", "taken over", "alice")).await;
    let r = a.expect_element(&["<iq", "id='p2'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("the current password is not right"),
        "{r}"
    );
    a.send(&form("p3", "pa", "taken over", "alice")).await;
    let r = a.expect_element(&["<iq", "id='p3'"]).await;
    assert!(r.contains("<resource-constraint"), "{r}");
    // The right current password, from an account whose change is not used up: changed.
    b.send(&form("q1", "pb", "b&apos;s new one", "bob")).await;
    let r = b.expect_element(&["<iq", "id='q1'"]).await;
    assert!(r.contains("type='result'"), "{r}");
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(DOMAIN).await;
    assert!(c.scram_sha256("alice", "pa").await.contains("<success"));
    let mut d = RawClient::connect(t.starttls, t.ca_pem()).await;
    d.starttls(DOMAIN).await;
    assert!(
        d.scram_sha256("bob", "b's new one")
            .await
            .contains("<success")
    );
    t.stop().await;
}

/// XEP-0077 account management can be turned off.
#[tokio::test]
async fn in_band_account_management_can_be_off() {
    let t = TestServer::start(|c| {
        c.auth.allow_password_change = false;
        c.auth.allow_account_removal = false;
    })
    .await;
    let (mut a, _b) = t.alice_and_bob().await;
    for (id, inner) in [
        ("n1", "<username>alice</username><password>x</password>"),
        ("n2", "<remove/>"),
    ] {
        a.send(&format!(
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'>{inner}</query></iq>"
        ))
        .await;
        let r = a.expect_element(&["<iq", &format!("id='{id}'")]).await;
        assert!(
            r.contains("type='error'") && r.contains("<not-allowed") && r.contains("operator"),
            "{id}: {r}"
        );
    }
    assert!(a.ping("still").await.contains("type='result'"));
    t.stop().await;
}
