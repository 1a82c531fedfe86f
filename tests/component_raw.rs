//! External components (XEP-0114) as raw bytes: the handshake and its failures, routing both
//! ways between a component and accounts, forged addresses, and what senders see when the
//! component is away. Every wait is bounded (`common::WAIT`).

use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::time::Duration;
use strait_server::config::ComponentConfig;
use strait_tests::{RawClient, TestServer, between};

const BOT: &str = "bot.localhost";
const SECRET: &str = "a-long-shared-secret";

async fn server() -> TestServer {
    TestServer::start(|c| {
        c.stream_management.ack_push_secs = 1;
        c.listen.component = vec!["127.0.0.1:0".parse().unwrap()];
        c.components = vec![ComponentConfig {
            domain: BOT.into(),
            secret: SECRET.into(),
        }];
    })
    .await
}

fn component_addr(t: &TestServer) -> SocketAddr {
    t.server.as_ref().unwrap().component_addrs()[0]
}

fn digest(id: &str, secret: &str) -> String {
    Sha1::digest(format!("{id}{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Opens a component stream to `domain`; returns the connection and the stream id.
async fn open(addr: SocketAddr, domain: &str) -> (RawClient, String) {
    let mut c = RawClient::connect(addr, Vec::new()).await;
    c.send(&format!(
        "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    ))
    .await;
    let header = c.expect(">").await;
    let header = if header.starts_with("<?xml") {
        c.expect(">").await
    } else {
        header
    };
    let id = between(&header, "id='", "'").to_owned();
    (c, id)
}

/// A component logged in as `BOT`.
async fn component(t: &TestServer) -> RawClient {
    let (mut c, id) = open(component_addr(t), BOT).await;
    c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET)))
        .await;
    c.expect("<handshake/>").await;
    c
}

#[tokio::test]
async fn handshake_failures_are_stream_errors() {
    let t = server().await;
    let addr = component_addr(&t);
    // Wrong secret.
    let (mut c, id) = open(addr, BOT).await;
    assert!(!id.is_empty());
    c.send(&format!("<handshake>{}</handshake>", digest(&id, "wrong")))
        .await;
    let r = c.read_to_close().await;
    assert!(
        r.contains("<not-authorized") && r.contains("wrong handshake"),
        "{r}"
    );
    // A domain that is no component's.
    let (mut c, _) = open(addr, "other.localhost").await;
    let r = c.read_to_close().await;
    assert!(r.contains("<host-unknown"), "{r}");
    // A client namespace on the component port.
    let mut c = RawClient::connect(addr, Vec::new()).await;
    c.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='bot.localhost' version='1.0'>").await;
    let r = c.read_to_close().await;
    assert!(r.contains("<invalid-namespace"), "{r}");
    // Not a handshake.
    let (mut c, _) = open(addr, BOT).await;
    c.send("<message to='alice@localhost'><body>hi</body></message>")
        .await;
    let r = c.read_to_close().await;
    assert!(r.contains("<not-authorized"), "{r}");
    // A second connection for a connected component's domain.
    let _first = component(&t).await;
    let (mut c, id) = open(addr, BOT).await;
    c.send(&format!("<handshake>{}</handshake>", digest(&id, SECRET)))
        .await;
    let r = c.read_to_close().await;
    assert!(r.contains("<conflict"), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn stanzas_flow_both_ways() {
    let t = server().await;
    let (mut a, _b) = t.alice_and_bob().await;
    // The server lists the component among its services.
    a.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    let r = a.expect_element(&["<iq", "id='d1'"]).await;
    assert!(r.contains("jid='bot.localhost'"), "{r}");
    // While the component is away, senders are told.
    a.send("<message to='bot.localhost' id='m0' type='chat'><body>anyone?</body></message>")
        .await;
    let r = a.expect_element(&["<message", "id='m0'"]).await;
    assert!(
        r.contains("type='error'")
            && r.contains("<service-unavailable")
            && r.contains("not connected"),
        "{r}"
    );
    let mut c = component(&t).await;
    // Client to component: the component gets it in its own namespace, from the full JID.
    a.send("<message to='echo@bot.localhost' id='m1' type='chat'><body>ping &amp; more</body></message>").await;
    let m = c.expect_element(&["<message", "id='m1'"]).await;
    assert!(m.contains("from='alice@localhost/a1'"), "{m}");
    assert!(m.contains("to='echo@bot.localhost'"), "{m}");
    assert!(!m.contains("jabber:client"), "{m}");
    assert!(m.contains(">ping &amp; more</body>"), "{m}");
    // Component to client, from an address at its domain.
    c.send("<message from='echo@bot.localhost' to='alice@localhost' id='m2' type='chat'><body>pong</body></message>").await;
    let m = a.expect_element(&["<message", "id='m2'"]).await;
    assert!(
        m.contains("from='echo@bot.localhost'") && m.contains(">pong</body>"),
        "{m}"
    );
    // Kept for an account that is offline, delivered at its next login.
    t.add_user("carol@localhost", "pc");
    c.send("<message from='bot.localhost' to='carol@localhost' id='m3' type='chat'><body>while you were out</body></message>").await;
    // The component's stanzas are handled in order: once this is answered, m3 is stored.
    c.send("<iq type='get' id='q0' from='bot.localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    c.expect_element(&["<iq", "id='q0'", "type='result'"]).await;
    let mut carol = RawClient::login(t.starttls, t.ca_pem(), "carol@localhost", "pc", "c1").await;
    carol.send("<presence/>").await;
    let m = carol.expect_element(&["<message", "id='m3'"]).await;
    assert!(
        m.contains("while you were out") && m.contains("urn:xmpp:delay"),
        "{m}"
    );
    // To an account that does not exist: the component gets the error.
    c.send("<message from='bot.localhost' to='nobody@localhost' id='m4'><body>x</body></message>")
        .await;
    let e = c.expect_element(&["<message", "id='m4'"]).await;
    assert!(
        e.contains("type='error'") && e.contains("<service-unavailable"),
        "{e}"
    );
    // IQs both ways: the client asks the component, the component answers.
    a.send("<iq type='get' id='q1' to='bot.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let q = c.expect_element(&["<iq", "id='q1'"]).await;
    assert!(q.contains("from='alice@localhost/a1'"), "{q}");
    c.send("<iq type='result' id='q1' from='bot.localhost' to='alice@localhost/a1'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='component' type='generic' name='Echo'/></query></iq>").await;
    let r = a.expect_element(&["<iq", "id='q1'"]).await;
    assert!(
        r.contains("type='result'") && r.contains("name='Echo'"),
        "{r}"
    );
    // The component asks the server.
    c.send("<iq type='get' id='q2' from='bot.localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let r = c.expect_element(&["<iq", "id='q2'"]).await;
    assert!(
        r.contains("type='result'") && r.contains("from='localhost'"),
        "{r}"
    );
    // An IQ to a resource that is not there.
    c.send("<iq type='get' id='q3' from='bot.localhost' to='alice@localhost/nope'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let r = c.expect_element(&["<iq", "id='q3'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("<service-unavailable"),
        "{r}"
    );
    // Presence subscription: the user asks, the component approves, the roster says so.
    a.send("<presence to='echo@bot.localhost' type='subscribe'/>")
        .await;
    let p = c.expect_element(&["<presence", "type='subscribe'"]).await;
    assert!(p.contains("from='alice@localhost'"), "{p}");
    c.send("<presence from='echo@bot.localhost' to='alice@localhost' type='subscribed'/>")
        .await;
    a.expect_element(&[
        "<presence",
        "type='subscribed'",
        "from='echo@bot.localhost'",
    ])
    .await;
    a.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let roster = a.expect_element(&["<iq", "id='r1'"]).await;
    assert!(
        roster.contains("jid='echo@bot.localhost'") && roster.contains("subscription='to'"),
        "{roster}"
    );
    t.stop().await;
}

#[tokio::test]
async fn forged_from_ends_the_component_stream_and_queued_stanzas_bounce() {
    let t = server().await;
    let (mut a, _b) = t.alice_and_bob().await;
    let mut c = component(&t).await;
    // A stanza claiming to be from an account of this server.
    c.send(
        "<message from='bob@localhost' to='alice@localhost'><body>it is me, bob</body></message>",
    )
    .await;
    let r = c.read_to_close().await;
    assert!(r.contains("<invalid-from"), "{r}");
    a.expect_silence("it is me, bob", Duration::from_millis(300))
        .await;
    // Once the component is gone, an IQ to it gets an error rather than silence.
    a.send("<iq type='get' id='q9' to='bot.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let r = a.expect_element(&["<iq", "id='q9'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("<service-unavailable"),
        "{r}"
    );
    // It can come back.
    let mut c = component(&t).await;
    a.send("<message to='bot.localhost' id='m9'><body>back?</body></message>")
        .await;
    c.expect_element(&["<message", "id='m9'"]).await;
    t.stop().await;
}

const PUSH: &str = "urn:xmpp:push:0";

fn enable(id: &str, jid: &str, node: Option<&str>, secret: Option<&str>) -> String {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    let form = secret
        .map(|s| format!("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>{s}</value></field></x>"))
        .unwrap_or_default();
    format!(
        "<iq type='set' id='{id}'><enable xmlns='{PUSH}' jid='{jid}'{node}>{form}</enable></iq>"
    )
}

/// XEP-0357 through a component app server: enabling, a notification for a message kept
/// offline and for one queued while a session hibernates (XEP-0198), no content in the
/// notification, and an app server's error answer removing the registration.
#[tokio::test]
async fn push_notifications_reach_the_app_server() {
    let t = server().await;
    let (mut a, mut b) = t.alice_and_bob().await;
    // The account advertises push (components, which reach app servers, are configured).
    a.send("<iq type='get' id='d1' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let r = a.expect_element(&["<iq", "id='d1'"]).await;
    assert!(r.contains("var='urn:xmpp:push:0'"), "{r}");
    // Refused: a service that is not a component, no node, another account's registrations.
    for (id, xml, why) in [
        (
            "e1",
            enable("e1", "push.example.org", Some("n"), None),
            "<not-acceptable",
        ),
        ("e2", enable("e2", BOT, None, None), "<bad-request"),
    ] {
        a.send(&xml).await;
        let r = a.expect_element(&["<iq", &format!("id='{id}'")]).await;
        assert!(r.contains("type='error'") && r.contains(why), "{id}: {r}");
    }
    b.send(&format!("<iq type='set' id='e3' to='alice@localhost'><enable xmlns='{PUSH}' jid='{BOT}' node='evil'/></iq>")).await;
    let r = b.expect_element(&["<iq", "id='e3'"]).await;
    assert!(r.contains("type='error'"), "{r}");
    let mut c = component(&t).await;
    a.send(&enable("p1", BOT, Some("phone-1"), Some("s3cret")))
        .await;
    let r = a.expect_element(&["<iq", "id='p1'"]).await;
    assert!(r.contains("type='result'"), "{r}");
    // Alice leaves; Bob writes; the app server is told, without sender or body.
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    b.send(
        "<message to='alice@localhost' type='chat' id='m1'><body>are you there?</body></message>",
    )
    .await;
    let n = c
        .expect_element(&["<iq", "type='set'", "from='alice@localhost'"])
        .await;
    assert!(n.contains("to='bot.localhost'"), "{n}");
    assert!(n.contains("<publish node='phone-1'>"), "{n}");
    assert!(n.contains("urn:xmpp:push:summary"), "{n}");
    assert!(n.contains("<value>s3cret</value>"), "{n}");
    assert!(!n.contains("are you there") && !n.contains("bob@"), "{n}");
    let id = between(&n, "id='", "'").to_owned();
    c.send(&format!(
        "<iq type='result' id='{id}' from='bot.localhost' to='alice@localhost'/>"
    ))
    .await;
    // A chat state alone is not kept, and wakes nobody.
    b.send("<message to='alice@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    c.expect_silence("<iq", Duration::from_millis(300)).await;
    // Hibernation: Alice's phone loses its connection with stream management on.
    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    a.send("<presence/>").await;
    a.expect_element(&[">are you there?</body>"]).await;
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    a.expect_element(&["<enabled"]).await;
    a.ping("sync").await;
    drop(a);
    b.ping("after-loss").await;
    b.send("<message to='alice@localhost' type='chat' id='m2'><body>wake up</body></message>")
        .await;
    let n = c
        .expect_element(&["<iq", "type='set'", "from='alice@localhost'"])
        .await;
    assert!(n.contains("<publish node='phone-1'>"), "{n}");
    // The app server says the device is gone: the registration is removed.
    let id = between(&n, "id='", "'").to_owned();
    c.send(&format!("<iq type='error' id='{id}' from='bot.localhost' to='alice@localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
    c.send("<iq type='get' id='s1' from='bot.localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    c.expect_element(&["<iq", "id='s1'"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send("<message to='alice@localhost' type='chat' id='m3'><body>still?</body></message>")
        .await;
    c.expect_silence("publish node='phone-1'", Duration::from_millis(500))
        .await;
    t.stop().await;
}

/// A phone asleep behind a connection that still looks open: it does not acknowledge the
/// messages it was sent (XEP-0198), and after `stream_management.ack_push_secs` its push
/// service is told, once per unanswered request; the session stays.
#[tokio::test]
async fn late_acknowledgement_wakes_the_device() {
    let t = server().await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let mut c = component(&t).await;
    a.send(&enable("p1", BOT, Some("phone-2"), None)).await;
    a.expect_element(&["<iq", "id='p1'", "type='result'"]).await;
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    a.expect_element(&["<enabled"]).await;
    // Acknowledged in time: no push.
    b.send("<message to='alice@localhost' type='chat' id='k1'><body>quick</body></message>")
        .await;
    a.expect_element(&[">quick</body>"]).await;
    a.expect("<r xmlns='urn:xmpp:sm:3'/>").await;
    a.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    c.expect_silence("publish node='phone-2'", Duration::from_millis(1500))
        .await;
    // Not acknowledged: one push after about a second, not one per second.
    b.send("<message to='alice@localhost' type='chat' id='k2'><body>asleep?</body></message>")
        .await;
    a.expect_element(&[">asleep?</body>"]).await;
    a.expect("<r xmlns='urn:xmpp:sm:3'/>").await;
    let n = c
        .expect_element(&["<iq", "type='set'", "from='alice@localhost'"])
        .await;
    assert!(n.contains("<publish node='phone-2'>"), "{n}");
    c.expect_silence("publish node='phone-2'", Duration::from_millis(1500))
        .await;
    // The session is still there and works: the late ack is taken.
    a.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    assert!(a.ping("alive").await.contains("type='result'"));
    t.stop().await;
}
