//! Multi-device behaviour over raw bytes: carbons (XEP-0280), blocking (XEP-0191), stanza ids
//! (XEP-0359), client state indication (XEP-0352) and processing hints (XEP-0334).

use std::time::Duration;
use strait_tests::{DOMAIN, RawClient, TestServer, between};

const QUIET: Duration = Duration::from_millis(400);

async fn login(t: &TestServer, jid: &str, pw: &str, res: &str) -> RawClient {
    let mut c = RawClient::login(t.starttls, t.ca_pem(), jid, pw, res).await;
    c.available().await;
    c
}

async fn enable_carbons(c: &mut RawClient) {
    c.send("<iq type='set' id='carbons-on'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    let r = c.expect_element(&["id='carbons-on'"]).await;
    assert!(r.contains("type='result'"), "{r}");
}

/// Waits for a carbon of kind `sent`/`received`; returns (wrapper start tag, forwarded content).
async fn expect_carbon(c: &mut RawClient, kind: &str) -> (String, String) {
    let open = format!("<{kind} xmlns='urn:xmpp:carbons:2'>");
    let head = c.expect(&open).await;
    let start = head[..head.len() - open.len()]
        .rfind("<message")
        .map(|i| head[i..].to_owned())
        .unwrap_or_default();
    let inner = c.expect(&format!("</{kind}>")).await;
    c.expect("</message>").await;
    (start, inner)
}

#[tokio::test]
async fn carbons_copy_sent_and_received_messages() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    let mut a2 = login(&t, "alice@localhost", "pa", "a2").await;
    let mut a3 = login(&t, "alice@localhost", "pa", "a3").await; // carbons off
    enable_carbons(&mut a1).await;
    enable_carbons(&mut a2).await;

    // Sent: a1's message to bob is copied to a2 only, wrapped by the server.
    a1.send("<message to='bob@localhost' type='chat' id='m1'><body>hello bob</body></message>")
        .await;
    let got = b1.expect_element(&["hello bob"]).await;
    assert!(got.contains("from='alice@localhost/a1'"), "{got}");
    let (wrapper, inner) = expect_carbon(&mut a2, "sent").await;
    assert!(
        wrapper.contains("from='alice@localhost'") && wrapper.contains("to='alice@localhost/a2'"),
        "{wrapper}"
    );
    assert!(
        inner.contains("<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'"),
        "{inner}"
    );
    assert!(
        inner.contains("id='m1'") && inner.contains("<body>hello bob</body>"),
        "{inner}"
    );
    a1.expect_silence("carbons:2", QUIET).await;
    a3.expect_silence("hello bob", QUIET).await;

    // Received: bob's message to a1's full JID reaches a1, and a2 as a carbon.
    b1.send("<message to='alice@localhost/a1' type='chat' id='r1'><body>to a1</body></message>")
        .await;
    a1.expect_element(&["to a1"]).await;
    let (wrapper, inner) = expect_carbon(&mut a2, "received").await;
    assert!(wrapper.contains("from='alice@localhost'"), "{wrapper}");
    assert!(
        inner.contains("<body>to a1</body>") && inner.contains("<stanza-id xmlns='urn:xmpp:sid:0'"),
        "{inner}"
    );
    a3.expect_silence("to a1", QUIET).await;

    // To the bare JID every available resource gets it directly: no carbon needed.
    b1.send("<message to='alice@localhost' type='chat' id='r2'><body>to all</body></message>")
        .await;
    for c in [&mut a1, &mut a2, &mut a3] {
        let m = c.expect_element(&["to all"]).await;
        assert!(!m.contains("carbons:2"), "{m}");
    }
    a2.expect_silence("carbons:2", QUIET).await;

    // Chat states and receipts in normal messages are copied too (XEP-0280 §6).
    a1.send("<message to='bob@localhost' id='rc1'><received xmlns='urn:xmpp:receipts' id='r1'/></message>")
        .await;
    let (_, inner) = expect_carbon(&mut a2, "sent").await;
    assert!(
        inner.contains("<received xmlns='urn:xmpp:receipts' id='r1'/>"),
        "{inner}"
    );

    // Disabled: no more copies.
    a2.send("<iq type='set' id='off'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    a2.expect_element(&["id='off'", "type='result'"]).await;
    a1.send("<message to='bob@localhost' type='chat'><body>after off</body></message>")
        .await;
    b1.expect_element(&["after off"]).await;
    a2.expect_silence("after off", QUIET).await;
    t.stop().await;
}

#[tokio::test]
async fn private_and_no_copy_are_not_carbon_copied() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    let mut a2 = login(&t, "alice@localhost", "pa", "a2").await;
    let mut b2 = login(&t, "bob@localhost", "pb", "b2").await;
    enable_carbons(&mut a2).await;
    enable_carbons(&mut b2).await;
    a1.send("<message to='bob@localhost/b1' type='chat'><body>secret one</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    let got = b1.expect_element(&["secret one"]).await;
    assert!(!got.contains("private"), "<private/> is stripped: {got}");
    a1.send("<message to='bob@localhost/b1' type='chat'><body>secret two</body><no-copy xmlns='urn:xmpp:hints'/></message>")
        .await;
    let got = b1.expect_element(&["secret two"]).await;
    assert!(got.contains("<no-copy xmlns='urn:xmpp:hints'/>"), "{got}");
    a2.expect_silence("secret", QUIET).await;
    b2.expect_silence("secret", QUIET).await;
    t.stop().await;
}

#[tokio::test]
async fn client_sent_carbon_wrappers_are_refused() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    enable_carbons(&mut b1).await;
    for kind in ["received", "sent"] {
        a1.send(&format!(
            "<message to='bob@localhost' id='forge-{kind}'><{kind} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@localhost/b9' to='carol@localhost' type='chat'><body>forged {kind}</body></message></forwarded></{kind}></message>"
        ))
        .await;
        let e = a1.expect(&format!("id='forge-{kind}'")).await;
        let rest = a1.expect("</message>").await;
        assert!(
            e.contains("type='error'") || rest.contains("type='error'"),
            "{e}{rest}"
        );
        assert!(rest.contains("<not-acceptable"), "{rest}");
    }
    b1.expect_silence("forged", QUIET).await;
    t.stop().await;
}

/// Closes the stream and waits until the server has unbound the session.
async fn go_offline(c: &mut RawClient) {
    c.send("</stream:stream>").await;
    c.read_to_close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Logs in and sends initial presence without consuming what arrives (offline messages).
async fn login_raw(t: &TestServer, jid: &str, pw: &str, res: &str) -> RawClient {
    let mut c = RawClient::login(t.starttls, t.ca_pem(), jid, pw, res).await;
    c.send("<presence/>").await;
    c
}

async fn blocklist(c: &mut RawClient, id: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}'><blocklist xmlns='urn:xmpp:blocking'/></iq>"
    ))
    .await;
    c.expect_element(&[&format!("id='{id}'")]).await
}

#[tokio::test]
async fn blocking_drops_refuses_and_unblocking_restores() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    let mut b2 = login(&t, "bob@localhost", "pb", "b2").await;
    let empty = blocklist(&mut b2, "bl0").await;
    assert!(
        empty.contains("<blocklist xmlns='urn:xmpp:blocking'/>"),
        "{empty}"
    );

    b1.send("<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='Alice@localhost'/></block></iq>")
        .await;
    b1.expect_element(&["id='blk'", "type='result'"]).await;
    // The resource that fetched the list gets a push; alice sees bob go offline.
    let push = b2
        .expect_element(&["<block xmlns='urn:xmpp:blocking'>"])
        .await;
    assert!(
        push.contains("<item jid='alice@localhost'/>") && push.contains("type='set'"),
        "{push}"
    );
    let gone = a1
        .expect_element(&["type='unavailable'", "from='bob@localhost/b1'"])
        .await;
    assert!(gone.starts_with("<presence"), "{gone}");
    let list = blocklist(&mut b1, "bl1").await;
    assert!(list.contains("<item jid='alice@localhost'/>"), "{list}");

    // Alice's message never arrives; she gets service-unavailable as for no account.
    a1.send("<message to='bob@localhost' type='chat' id='x1'><body>let me in</body></message>")
        .await;
    let err = a1.expect_element(&["id='x1'"]).await;
    assert!(
        err.contains("type='error'") && err.contains("service-unavailable"),
        "{err}"
    );
    a1.send("<iq type='get' id='x2' to='bob@localhost/b1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let err = a1.expect_element(&["id='x2'"]).await;
    assert!(err.contains("service-unavailable"), "{err}");
    b1.expect_silence("let me in", QUIET).await;
    b2.expect_silence("let me in", QUIET).await;

    // Bob's own message to alice is refused with <blocked/>.
    b1.send("<message to='alice@localhost' type='chat' id='y1'><body>psst</body></message>")
        .await;
    let err = b1.expect_element(&["id='y1'"]).await;
    assert!(
        err.contains("<not-acceptable")
            && err.contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
        "{err}"
    );
    a1.expect_silence("psst", QUIET).await;

    // Unblock: pushed, and messages flow again.
    b1.send("<iq type='set' id='unb'><unblock xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></unblock></iq>")
        .await;
    b1.expect_element(&["id='unb'", "type='result'"]).await;
    b2.expect_element(&["<unblock xmlns='urn:xmpp:blocking'>", "alice@localhost"])
        .await;
    a1.send("<message to='bob@localhost' type='chat'><body>hello again</body></message>")
        .await;
    b1.expect_element(&["hello again"]).await;

    // A domain item blocks the whole domain; unblock-all clears everything.
    b1.send("<iq type='set' id='blk2'><block xmlns='urn:xmpp:blocking'><item jid='localhost'/></block></iq>")
        .await;
    b1.expect_element(&["id='blk2'", "type='result'"]).await;
    a1.send(
        "<message to='bob@localhost' type='chat' id='db'><body>domain-blocked</body></message>",
    )
    .await;
    a1.expect_element(&["id='db'", "service-unavailable"]).await;
    b1.send("<iq type='set' id='unall'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    b1.expect_element(&["id='unall'", "type='result'"]).await;
    b2.expect_element(&["<unblock xmlns='urn:xmpp:blocking'/>"])
        .await;
    a1.send("<message to='bob@localhost' type='chat'><body>all clear</body></message>")
        .await;
    let m = b1.expect_element(&["</body>"]).await;
    assert!(m.contains("all clear"), "the domain block held: {m}");
    assert_eq!(blocklist(&mut b1, "bl2").await.matches("<item").count(), 0);
    t.stop().await;
}

#[tokio::test]
async fn block_list_survives_reconnect_and_blocks_offline_storage() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    b1.send("<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>")
        .await;
    b1.expect_element(&["id='blk'", "type='result'"]).await;
    go_offline(&mut b1).await;
    // Bob is offline: the message is refused, not stored.
    a1.send("<message to='bob@localhost' type='chat' id='o1'><body>while away</body></message>")
        .await;
    a1.expect_element(&["id='o1'", "service-unavailable"]).await;
    let mut b = login(&t, "bob@localhost", "pb", "b1").await;
    let list = blocklist(&mut b, "bl").await;
    assert!(list.contains("<item jid='alice@localhost'/>"), "{list}");
    b.expect_silence("while away", QUIET).await;
    t.stop().await;
}

/// Sends Bob (offline) a chat message that the server stores: no error comes back.
async fn stored_for_bob(a: &mut RawClient, id: &str, body: &str) {
    a.send(&format!(
        "<message to='bob@localhost' type='chat' id='{id}'><body>{body}</body></message>"
    ))
    .await;
    a.expect_silence(&format!("id='{id}'"), QUIET).await;
}

/// Routing remembers an offline account's block list for a while (one store read for a run
/// of messages); a block command from a later session must still hold at once.
#[tokio::test]
async fn a_block_made_between_offline_messages_holds_at_once() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    go_offline(&mut b1).await;
    stored_for_bob(&mut a1, "o1", "first while away").await;
    let mut b = login_raw(&t, "bob@localhost", "pb", "b1").await;
    b.expect_element(&["first while away"]).await;
    b.send("<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>")
        .await;
    b.expect_element(&["id='blk'", "type='result'"]).await;
    go_offline(&mut b).await;
    a1.send(
        "<message to='bob@localhost' type='chat' id='o2'><body>second while away</body></message>",
    )
    .await;
    a1.expect_element(&["id='o2'", "service-unavailable"]).await;
    // Unblocked in another session: stored again.
    let mut b = login(&t, "bob@localhost", "pb", "b2").await;
    b.send("<iq type='set' id='unb'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    b.expect_element(&["id='unb'", "type='result'"]).await;
    go_offline(&mut b).await;
    stored_for_bob(&mut a1, "o3", "third while away").await;
    let mut b = login_raw(&t, "bob@localhost", "pb", "b3").await;
    // Offline messages come with the initial presence, before the ping's answer.
    let seen = b.ping("after").await;
    assert!(seen.contains("third while away"), "{seen}");
    assert!(!seen.contains("second while away"), "{seen}");
    t.stop().await;
}

/// An account removed (`strait user remove`) while routing still remembers it as an offline
/// recipient: its messages are refused as for any missing account, not stored, not an
/// internal error.
#[tokio::test]
async fn a_removed_offline_account_refuses_messages_at_once() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    go_offline(&mut b1).await;
    stored_for_bob(&mut a1, "o1", "stored").await;
    let state = t.server.as_ref().unwrap().state();
    strait_server::accounts::remove_user(&state.config, &*state.store, "bob@localhost").unwrap();
    a1.send("<message to='bob@localhost' type='chat' id='o2'><body>to nobody</body></message>")
        .await;
    let err = a1.expect_element(&["id='o2'", "type='error'"]).await;
    assert!(err.contains("service-unavailable"), "{err}");
    assert!(!err.contains("internal-server-error"), "{err}");
    t.stop().await;
}

#[tokio::test]
async fn stanza_ids_are_stamped_and_forgeries_stripped() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    a1.send("<message to='bob@localhost' type='chat' id='s1'><body>with ids</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@localhost'/><origin-id xmlns='urn:xmpp:sid:0' id='orig-1'/></message>")
        .await;
    let m = b1.expect_element(&["with ids"]).await;
    assert!(!m.contains("forged"), "{m}");
    assert!(
        m.contains("<origin-id xmlns='urn:xmpp:sid:0' id='orig-1'/>"),
        "{m}"
    );
    assert_eq!(m.matches("<stanza-id").count(), 1, "{m}");
    assert!(m.contains("by='bob@localhost'"), "{m}");
    let id1 = between(&m, "<stanza-id xmlns='urn:xmpp:sid:0' id='", "'").to_owned();
    a1.send("<message to='bob@localhost' type='chat'><body>second</body></message>")
        .await;
    let m2 = b1.expect_element(&["second"]).await;
    let id2 = between(&m2, "<stanza-id xmlns='urn:xmpp:sid:0' id='", "'").to_owned();
    assert!(!id1.is_empty() && id1 != id2, "{id1} {id2}");

    // Advertised on the account.
    a1.send("<iq type='get' id='d1' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = a1.expect_element(&["id='d1'"]).await;
    assert!(info.contains("var='urn:xmpp:sid:0'"), "{info}");
    a1.send("<iq type='get' id='d2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = a1.expect_element(&["id='d2'"]).await;
    assert!(
        info.contains("var='urn:xmpp:carbons:2'") && info.contains("var='urn:xmpp:blocking'"),
        "{info}"
    );

    // Offline messages get their id when stored.
    go_offline(&mut b1).await;
    a1.send("<message to='bob@localhost' type='chat'><body>stored one</body></message>")
        .await;
    a1.ping("settle2").await;
    let mut b = login_raw(&t, "bob@localhost", "pb", "b1").await;
    let m = b.expect_element(&["stored one"]).await;
    assert!(
        m.contains("<stanza-id xmlns='urn:xmpp:sid:0'") && m.contains("by='bob@localhost'"),
        "{m}"
    );
    assert!(m.contains("urn:xmpp:delay"), "{m}");
    t.stop().await;
}

#[tokio::test]
async fn csi_holds_presence_and_chat_states_until_urgent() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("alice@localhost", "pa");
    t.add_user("bob@localhost", "pb");
    // The feature is offered after authentication.
    let mut a = RawClient::connect(t.starttls, t.ca_pem()).await;
    a.starttls(DOMAIN).await;
    assert!(a.scram_sha256("alice", "pa").await.contains("<success"));
    let features = a.open_stream(DOMAIN).await;
    assert!(
        features.contains("<csi xmlns='urn:xmpp:csi:0'/>"),
        "{features}"
    );
    a.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a1</resource></bind></iq>")
        .await;
    a.expect_element(&["id='bind'", "type='result'"]).await;
    a.available().await;
    let mut b = login(&t, "bob@localhost", "pb", "b1").await;

    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    a.ping("after-inactive").await;
    for s in ["s1", "s2"] {
        b.send(&format!(
            "<presence to='alice@localhost/a1'><status>{s}</status></presence>"
        ))
        .await;
    }
    b.send("<message to='alice@localhost/a1' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    b.ping("sent").await;
    a.expect_silence("</status>", QUIET).await;
    assert!(!a.buffer.contains("composing"), "{}", a.buffer);
    // An urgent message flushes what was held, in order, newest presence only.
    b.send("<message to='alice@localhost/a1' type='chat'><body>wake up</body></message>")
        .await;
    let all = a.expect("wake up").await;
    assert!(!all.contains(">s1</status>"), "{all}");
    let (p, c, m) = (
        all.find(">s2</status>").expect(&all),
        all.find("composing").expect(&all),
        all.find("wake up").unwrap(),
    );
    assert!(p < c && c < m, "{all}");

    // Held again, then flushed by <active/>.
    b.send("<presence to='alice@localhost/a1'><status>s3</status></presence>")
        .await;
    b.ping("sent2").await;
    a.expect_silence("s3", QUIET).await;
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    a.expect(">s3</status>").await;
    // Active: delivered at once.
    b.send("<presence to='alice@localhost/a1'><status>s4</status></presence>")
        .await;
    a.expect(">s4</status>").await;
    t.stop().await;
}

#[tokio::test]
async fn hints_and_im_payloads_pass_through_and_are_stored_as_clients_expect() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    // Online: payloads arrive unchanged.
    let payloads = [
        "<request xmlns='urn:xmpp:receipts'/>",
        "<active xmlns='http://jabber.org/protocol/chatstates'/>",
        "<reply xmlns='urn:xmpp:reply:0' to='bob@localhost/b1' id='m0'/>",
        "<replace xmlns='urn:xmpp:message-correct:0' id='m0'/>",
    ];
    a1.send(&format!(
        "<message to='bob@localhost' type='chat' id='p1'><body>payloads</body>{}</message>",
        payloads.concat()
    ))
    .await;
    let m = b1.expect_element(&["payloads"]).await;
    for p in payloads {
        assert!(m.contains(p), "{p} in {m}");
    }

    // Offline: what a client expects to find later is stored; the rest is not.
    go_offline(&mut b1).await;
    let sends = [
        "<message to='bob@localhost' type='chat' id='h1'><body>no-store-body</body><no-store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@localhost' type='chat' id='h2'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message to='bob@localhost' type='chat' id='h3'><reactions xmlns='urn:xmpp:reactions:0' id='m0'><reaction>+1</reaction></reactions><store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@localhost' type='chat' id='h4'><retract xmlns='urn:xmpp:message-retract:1' id='m0'/></message>",
        "<message to='bob@localhost' id='h5'><received xmlns='urn:xmpp:receipts' id='m0'/></message>",
        "<message to='bob@localhost' type='chat' id='h6'><x xmlns='jabber:x:oob'/><store xmlns='urn:xmpp:hints'/></message>",
        "<message to='bob@localhost' type='chat' id='h7'><displayed xmlns='urn:xmpp:chat-markers:0' id='m0'/></message>",
    ];
    for s in sends {
        a1.send(s).await;
    }
    a1.ping("settle-h").await;
    let mut b = login_raw(&t, "bob@localhost", "pb", "b1").await;
    for id in ["h3", "h4", "h5", "h6", "h7"] {
        let m = b.expect_element(&[&format!("id='{id}'")]).await;
        assert!(m.contains("urn:xmpp:delay"), "{m}");
    }
    b.expect_silence("id='h1'", QUIET).await;
    assert!(!b.buffer.contains("id='h2'"), "{}", b.buffer);
    t.stop().await;
}

#[tokio::test]
async fn unblocking_restores_presence_to_subscribed_contacts() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    // Alice sees Bob's presence.
    a1.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    b1.expect_element(&["type='subscribe'"]).await;
    b1.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    a1.expect_element(&["type='subscribed'"]).await;
    a1.expect_element(&["<presence", "from='bob@localhost/b1'"])
        .await;
    block_cmd(&mut b1, "blk", "block", "alice@localhost").await;
    a1.expect_element(&["type='unavailable'", "from='bob@localhost/b1'"])
        .await;
    // While blocked, Bob's presence changes do not reach Alice.
    b1.send("<presence><status>hidden</status></presence>")
        .await;
    b1.ping("p1").await;
    a1.expect_silence("hidden", QUIET).await;
    b1.send("<iq type='set' id='unb'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    b1.expect_element(&["id='unb'", "type='result'"]).await;
    let p = a1
        .expect_element(&["<presence", "from='bob@localhost/b1'"])
        .await;
    assert!(p.contains("hidden") && !p.contains("unavailable"), "{p}");
    t.stop().await;
}

/// A block or unblock command for one item (`verb`: "block" or "unblock"), answered with a
/// result.
async fn block_cmd(c: &mut RawClient, id: &str, verb: &str, jid: &str) {
    c.send(&format!(
        "<iq type='set' id='{id}'><{verb} xmlns='urn:xmpp:blocking'><item jid='{jid}'/></{verb}></iq>"
    ))
    .await;
    c.expect_element(&[&format!("id='{id}'"), "type='result'"])
        .await;
}

/// `x` (`xjid`) subscribes to `y` (`yjid`)'s presence, and `y` approves.
async fn subscribe(x: &mut RawClient, y: &mut RawClient, xjid: &str, yjid: &str) {
    x.send(&format!("<presence to='{yjid}' type='subscribe'/>"))
        .await;
    y.expect_element(&["type='subscribe'"]).await;
    y.send(&format!("<presence to='{xjid}' type='subscribed'/>"))
        .await;
}

/// Blocking a whole (local) domain hides the user from its roster contacts there, as
/// blocking each would: they see the user go offline, and back online when the domain is
/// unblocked, unless another item still blocks them (XEP-0191 §3.3, §3.4).
#[tokio::test]
async fn a_domain_block_hides_presence_from_contacts_on_it() {
    let t = TestServer::start(|_| {}).await;
    let (mut a1, mut b1) = t.alice_and_bob().await;
    // Mutual subscription, both available.
    subscribe(&mut a1, &mut b1, "alice@localhost", "bob@localhost").await;
    subscribe(&mut b1, &mut a1, "bob@localhost", "alice@localhost").await;
    a1.send("<presence/>").await;
    b1.send("<presence/>").await;
    a1.expect_element(&["<presence", "from='bob@localhost/b1'"])
        .await;
    b1.expect_element(&["<presence", "from='alice@localhost/a1'"])
        .await;

    block_cmd(&mut b1, "d1", "block", "localhost").await;
    a1.expect_element(&["type='unavailable'", "from='bob@localhost/b1'"])
        .await;

    // Unblocking the domain while alice stays blocked by name: she stays in the dark.
    block_cmd(&mut b1, "d2", "block", "alice@localhost").await;
    // (A newly blocked contact is told again that the user is offline.)
    a1.expect_element(&["type='unavailable'", "from='bob@localhost/b1'"])
        .await;
    block_cmd(&mut b1, "d3", "unblock", "localhost").await;
    a1.expect_silence("<presence", QUIET).await;

    // Unblocking her too brings the presences back, both ways.
    block_cmd(&mut b1, "d4", "unblock", "alice@localhost").await;
    let back = a1
        .expect_element(&["<presence", "from='bob@localhost/b1'"])
        .await;
    assert!(!back.contains("unavailable"), "{back}");
    b1.expect_element(&["<presence", "from='alice@localhost/a1'"])
        .await;
    t.stop().await;
}

#[tokio::test]
async fn a_block_list_holds_at_most_ten_thousand_jids() {
    let t = TestServer::start(|c| c.limits.rate_bytes_per_sec = 16 * 1024 * 1024).await;
    let (mut a1, _b1) = t.alice_and_bob().await;
    for batch in 0..5 {
        let items: String = (0..2000)
            .map(|i| format!("<item jid='u{batch}-{i}@spam.example'/>"))
            .collect();
        a1.send(&format!(
            "<iq type='set' id='fill{batch}'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>"
        ))
        .await;
        let r = a1.expect_element(&[&format!("id='fill{batch}'")]).await;
        assert!(r.contains("type='result'"), "{r}");
    }
    a1.send("<iq type='set' id='over'><block xmlns='urn:xmpp:blocking'><item jid='one-more@spam.example'/></block></iq>")
        .await;
    let r = a1.expect_element(&["id='over'"]).await;
    assert!(
        r.contains("<resource-constraint") && r.contains("at most 10000 JIDs"),
        "{r}"
    );
    // Blocking what is already blocked adds nothing, so it is not refused; a full list still
    // unblocks.
    a1.send("<iq type='set' id='again'><block xmlns='urn:xmpp:blocking'><item jid='u0-0@spam.example'/></block></iq>")
        .await;
    assert!(
        a1.expect_element(&["id='again'"])
            .await
            .contains("type='result'")
    );
    a1.send("<iq type='set' id='un'><unblock xmlns='urn:xmpp:blocking'><item jid='u0-1@spam.example'/></unblock></iq>")
        .await;
    assert!(
        a1.expect_element(&["id='un'"])
            .await
            .contains("type='result'")
    );
    a1.send("<iq type='set' id='fits'><block xmlns='urn:xmpp:blocking'><item jid='one-more@spam.example'/></block></iq>")
        .await;
    assert!(
        a1.expect_element(&["id='fits'"])
            .await
            .contains("type='result'")
    );
}
