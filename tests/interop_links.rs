//! Interop links (s2s) between two running servers, each the other's federated provider:
//! the platform `gk.test` (server A) registers the provider `acme`, whose own server (B)
//! serves `acme.test`; B registers A's domain as its provider `gk`. Each side pins the
//! other's certificate key. Stanzas cross both ways over the two streams; each server runs
//! the boundary policy on what enters and leaves it. (Prosody as the provider's server is
//! in tests/real_clients/test_links.py.)

use std::sync::Arc;
use std::time::Duration;
use strait_client::chat::{Account, Client, Credential, Event};
use strait_client::conn::Verify;
use strait_server::interop::consent::{self, ConsentChange};
use strait_server::interop::registry::{self, Actor};
use strait_server::server::ServerState;
use strait_store::{Provider, ProviderStatus};
use strait_tests::{RawClient, TestServer, WAIT};

const OP: Actor<'static> = Actor {
    name: "test",
    now_ms: 1_700_000_000_000,
};

fn state(t: &TestServer) -> &Arc<ServerState> {
    t.server.as_ref().unwrap().state()
}

/// The pin (SHA-256 of the SubjectPublicKeyInfo, hex) of the certificate `t` presents for
/// `domain`.
fn pin_of(t: &TestServer, domain: &str) -> String {
    let pem = std::fs::read(t.config().data_dir.join(format!("tls/{domain}.pem"))).unwrap();
    let cert = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    strait_server::tls::pin_hex(&strait_server::tls::spki_pin(&cert).unwrap())
}

fn s2s_addr(t: &TestServer) -> String {
    t.server.as_ref().unwrap().s2s_addrs()[0].to_string()
}

/// Registers `domain`'s server as the federated provider `id` of `t`, active, linked at
/// `link` with `pin`.
async fn federate(t: &TestServer, id: &str, domain: &str, link: &str, pin: &str) {
    let st = state(t);
    let mut p = Provider::new(id, &format!("{id} chat"), vec![domain.into()]);
    p.link = Some(link.into());
    p.cert_pins = vec![pin.into()];
    registry::add(&st.config, &*st.store, &p, OP).unwrap();
    registry::accept_terms(&*st.store, id, "2024-03", "Jo Signer", OP).unwrap();
    registry::set_status(&*st.store, id, ProviderStatus::Active, "", OP).unwrap();
    strait_server::interop::refresh(st, -1).await;
}

/// The operator's `strait user consent`: a store write, which the running server notices in
/// its next poll (done here at once).
async fn allow(t: &TestServer, jid: &str, provider: &str) {
    let st = state(t);
    let change = ConsentChange {
        enabled: Some(true),
        allow: vec![provider.into()],
        ..ConsentChange::default()
    };
    consent::change(&*st.store, jid, &change, 1).unwrap();
    strait_server::interop::refresh_consents(st).await;
}

/// Server A (`gk.test`) and server B (`acme.test`), linked both ways, with
/// alice@gk.test on A and bob@acme.test on B. Consent is each test's to give.
async fn two_platforms() -> (TestServer, TestServer) {
    let s2s = |c: &mut strait_server::Config| c.listen.s2s = vec!["127.0.0.1:0".parse().unwrap()];
    let a = TestServer::start(|c| {
        s2s(c);
        c.domains = vec!["gk.test".into()];
    })
    .await;
    let b = TestServer::start(|c| {
        s2s(c);
        c.domains = vec!["acme.test".into()];
    })
    .await;
    federate(
        &a,
        "acme",
        "acme.test",
        &s2s_addr(&b),
        &pin_of(&b, "acme.test"),
    )
    .await;
    federate(&b, "gk", "gk.test", &s2s_addr(&a), &pin_of(&a, "gk.test")).await;
    a.add_user("alice@gk.test", "pa");
    b.add_user("bob@acme.test", "pb");
    (a, b)
}

/// A message with an OMEMO payload (the policy looks for the element, not into it).
fn encrypted(to: &str, id: &str, text: &str) -> String {
    format!(
        "<message to='{to}' id='{id}' type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><iv>AAAA</iv></header><payload>{text}</payload></encrypted><body>fallback</body></message>"
    )
}

/// Waits until `t` has no outbound link open (they look at the registry once a second).
async fn wait_closed(t: &TestServer) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while state(t).links.outbound() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link stayed open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_both_ways_under_the_policy_on_each_side() {
    let (a, b) = two_platforms().await;
    let mut alice = RawClient::login(a.starttls, a.ca_pem(), "alice@gk.test", "pa", "a1").await;
    let mut bob = RawClient::login(b.starttls, b.ca_pem(), "bob@acme.test", "pb", "b1").await;
    alice.available().await;
    bob.available().await;

    // A's own policy: alice has not opted in to acme, so nothing leaves A.
    alice.send(&encrypted("bob@acme.test", "m0", "c0")).await;
    let r = alice.expect_element(&["id='m0'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("not-allowed"),
        "{r}"
    );
    assert!(r.contains("are off for your account"), "{r}");
    allow(&a, "alice@gk.test", "acme").await;

    // B's policy: bob has not opted in to gk (A's domain as B's provider); B refuses it and
    // the error comes back over B's link to A.
    alice.send(&encrypted("bob@acme.test", "m1", "c1")).await;
    let r = alice.expect_element(&["id='m1'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("not-allowed"),
        "{r}"
    );
    assert!(r.contains("does not accept chats from gk chat"), "{r}");
    allow(&b, "bob@acme.test", "gk").await;

    // Encrypted, both opted in: delivered, stamped by B with its provider's origin, and
    // the plaintext fallback replaced.
    alice.send(&encrypted("bob@acme.test", "m2", "c2")).await;
    let m = bob.expect_element(&["id='m2'"]).await;
    assert!(m.contains("from='alice@gk.test/a1'"), "{m}");
    assert!(m.contains("<payload>c2</payload>"), "{m}");
    assert!(m.contains("provider='gk'"), "origin stamp: {m}");
    assert!(!m.contains(">fallback<"), "{m}");

    // And back, over the other stream.
    bob.send(&encrypted("alice@gk.test/a1", "m3", "c3")).await;
    let m = alice.expect_element(&["id='m3'"]).await;
    assert!(m.contains("from='bob@acme.test/b1'"), "{m}");
    assert!(m.contains("provider='acme'"), "{m}");

    // Plaintext is refused at the sender's own server.
    alice
        .send("<message to='bob@acme.test' id='m4' type='chat'><body>in the clear</body></message>")
        .await;
    let r = alice.expect_element(&["id='m4'"]).await;
    assert!(r.contains("policy-violation"), "{r}");
    bob.expect_silence("in the clear", Duration::from_millis(500))
        .await;

    // A stanza to the provider's server itself does not cross.
    alice
        .send("<iq to='acme.test' id='q1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = alice.expect_element(&["id='q1'"]).await;
    assert!(r.contains("only stanzas between users cross"), "{r}");

    // A change of the pins closes the open link; the next message opens a new one.
    assert_eq!(state(&a).links.outbound(), 1);
    let st = state(&a);
    let mut acme = st.store.provider("acme").unwrap().unwrap();
    acme.cert_pins.push("ef".repeat(32));
    registry::update(&st.config, &*st.store, &acme, OP).unwrap();
    strait_server::interop::refresh(st, -1).await;
    wait_closed(&a).await;
    // B confirmed everything it got over A's link (stream management), so nothing that A
    // wrote goes back to alice as unconfirmed.
    alice
        .expect_silence("may not have arrived", Duration::from_millis(300))
        .await;
    alice.send(&encrypted("bob@acme.test", "m6", "c6")).await;
    let m = bob.expect_element(&["id='m6'"]).await;
    assert!(m.contains("<payload>c6</payload>"), "{m}");

    // Suspending acme on A closes the link within a second and refuses what follows.
    registry::set_status(
        &*state(&a).store,
        "acme",
        ProviderStatus::Suspended,
        "test",
        OP,
    )
    .unwrap();
    strait_server::interop::refresh(state(&a), -1).await;
    alice.send(&encrypted("bob@acme.test", "m5", "c5")).await;
    let r = alice.expect_element(&["id='m5'"]).await;
    assert!(r.contains("not-allowed") && r.contains("suspended"), "{r}");
    wait_closed(&a).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_with_a_certificate_nobody_pinned_is_refused_and_says_why() {
    let (a, b) = two_platforms().await;
    allow(&a, "alice@gk.test", "acme").await;
    allow(&b, "bob@acme.test", "gk").await;
    // B now pins some other key for gk: A's certificate no longer authenticates it.
    let st = state(&b);
    let mut gk = st.store.provider("gk").unwrap().unwrap();
    gk.cert_pins = vec!["ab".repeat(32)];
    registry::update(&st.config, &*st.store, &gk, OP).unwrap();
    strait_server::interop::refresh(st, -1).await;

    let mut alice = RawClient::login(a.starttls, a.ca_pem(), "alice@gk.test", "pa", "a1").await;
    alice.available().await;
    alice.send(&encrypted("bob@acme.test", "m1", "c1")).await;
    let r = alice.expect_element(&["id='m1'"]).await;
    assert!(r.contains("remote-server-timeout"), "{r}");
    assert!(r.contains("is not one the provider gk registered"), "{r}");

    // A pins a key B does not have: A refuses B's certificate in the TLS handshake.
    let st = state(&a);
    let mut acme = st.store.provider("acme").unwrap().unwrap();
    acme.cert_pins = vec!["cd".repeat(32)];
    registry::update(&st.config, &*st.store, &acme, OP).unwrap();
    strait_server::interop::refresh(st, -1).await;
    alice.send(&encrypted("bob@acme.test", "m2", "c2")).await;
    let r = alice.expect_element(&["id='m2'"]).await;
    assert!(r.contains("remote-server-timeout"), "{r}");
    assert!(r.contains("not one the provider registered"), "{r}");
    a.stop().await;
    b.stop().await;
}

fn account(t: &TestServer, jid: &str, password: &str, store: &std::path::Path) -> Account {
    Account {
        jid: jid.into(),
        credential: Credential::Password(password.into()),
        server: t.starttls,
        tls_name: None,
        direct_tls: false,
        verify: Verify::CaFile(t.config().data_dir.join("tls/ca.pem")),
        resource: String::new(),
        store: store.to_owned(),
        http_via: None,
    }
}

/// The SDK on both sides: real OMEMO sessions across the link (device lists and bundles
/// fetched from the other server's PEP over it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_on_two_platforms_hold_an_encrypted_chat() {
    let (a, b) = two_platforms().await;
    allow(&a, "alice@gk.test", "acme").await;
    allow(&b, "bob@acme.test", "gk").await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Client::connect(&account(&a, "alice@gk.test", "pa", &dir.path().join("a")))
        .await
        .unwrap();
    let mut bob = Client::connect(&account(&b, "bob@acme.test", "pb", &dir.path().join("b")))
        .await
        .unwrap();
    let sent = alice.send("bob@acme.test", "hello across").await.unwrap();
    assert_eq!(sent.devices, 1);
    let m = loop {
        match tokio::time::timeout(WAIT, bob.next_event()).await {
            Ok(Ok(Event::Message(m))) => break *m,
            Ok(Ok(_)) => {}
            other => panic!("bob: {other:?}"),
        }
    };
    assert_eq!(m.from, "alice@gk.test");
    assert_eq!(m.text, "hello across");
    assert!(m.encrypted);
    assert_eq!(m.origin.as_ref().map(|o| o.provider.as_str()), Some("gk"));
    bob.send("alice@gk.test", "and back").await.unwrap();
    let m = loop {
        match tokio::time::timeout(WAIT, alice.next_event()).await {
            Ok(Ok(Event::Message(m))) => break *m,
            Ok(Ok(_)) => {}
            other => panic!("alice: {other:?}"),
        }
    };
    assert_eq!(m.text, "and back");
    assert_eq!(m.origin.as_ref().map(|o| o.provider.as_str()), Some("acme"));
    alice.close().await;
    bob.close().await;
    a.stop().await;
    b.stop().await;
}

/// Reads from `s` into `buf` until `needle` has arrived; the text up to and including it.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut String,
    needle: &str,
) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.find(needle) {
            let rest = buf.split_off(i + needle.len());
            return std::mem::replace(buf, rest);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the platform went quiet")
            .unwrap();
        assert!(n > 0, "the platform closed the link; had {buf:?}");
        buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
}

/// A provider's server by hand, for one link from the platform: STARTTLS, SASL EXTERNAL,
/// stream management enabled; it reads the first message, acknowledges it only if `ack`,
/// and hangs up.
async fn fake_provider_link(
    listener: &tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ack: bool,
) -> String {
    use tokio::io::AsyncWriteExt;
    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='fake.test' id='f1'>";
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut buf = String::new();
    read_until(&mut tcp, &mut buf, "to='fake.test'>").await;
    tcp.write_all(format!("{HEADER}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>").as_bytes()).await.unwrap();
    read_until(&mut tcp, &mut buf, "/>").await;
    tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .unwrap();
    let mut s = tokio_rustls::TlsAcceptor::from(tls)
        .accept(tcp)
        .await
        .unwrap();
    let mut buf = String::new();
    read_until(&mut s, &mut buf, "to='fake.test'>").await;
    s.write_all(format!("{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms></stream:features>").as_bytes()).await.unwrap();
    read_until(&mut s, &mut buf, "</auth>").await;
    s.write_all(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await
        .unwrap();
    read_until(&mut s, &mut buf, "to='fake.test'>").await;
    s.write_all(
        format!("{HEADER}<stream:features><sm xmlns='urn:xmpp:sm:3'/></stream:features>")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut s, &mut buf, "<enable").await;
    s.write_all(b"<enabled xmlns='urn:xmpp:sm:3'/>")
        .await
        .unwrap();
    let message = read_until(&mut s, &mut buf, "</message>").await;
    read_until(&mut s, &mut buf, "<r ").await;
    if ack {
        s.write_all(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(s); // hangs up without closing the stream
    message
}

/// With stream management on the link, a message its server never confirmed goes back to
/// its sender when the link breaks ("it may not have arrived"); a confirmed one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_stanzas_go_back_to_their_senders_when_a_link_breaks() {
    let a = TestServer::start(|c| c.domains = vec!["gk.test".into()]).await;
    a.add_user("alice@gk.test", "pa");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["fake.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let pin = strait_server::tls::pin_hex(&strait_server::tls::spki_pin(&der).unwrap());
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = listener.local_addr().unwrap().to_string();
    federate(&a, "fake", "fake.test", &link, &pin).await;
    allow(&a, "alice@gk.test", "fake").await;
    let mut alice = RawClient::login(a.starttls, a.ca_pem(), "alice@gk.test", "pa", "a1").await;
    alice.available().await;

    // Confirmed, then the link breaks: nothing comes back.
    let peer = tokio::spawn({
        let tls = tls.clone();
        async move {
            let l = listener;
            let first = fake_provider_link(&l, tls.clone(), true).await;
            let second = fake_provider_link(&l, tls, false).await;
            (first, second)
        }
    });
    alice.send(&encrypted("bob@fake.test", "m1", "c1")).await;
    alice
        .expect_silence("id='m1'", Duration::from_millis(800))
        .await;
    wait_closed(&a).await;
    // Not confirmed: its sender hears that it may not have arrived.
    alice.send(&encrypted("bob@fake.test", "m2", "c2")).await;
    let r = alice.expect_element(&["id='m2'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("remote-server-timeout"),
        "{r}"
    );
    assert!(r.contains("it may not have arrived"), "{r}");
    let (first, second) = peer.await.unwrap();
    assert!(
        first.contains("id='m1'") && first.contains("from='alice@gk.test/a1'"),
        "{first}"
    );
    assert!(second.contains("id='m2'"), "{second}");
    a.stop().await;
}
