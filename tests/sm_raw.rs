//! Stream management (XEP-0198) over raw bytes: acknowledgements both ways, resumption of a
//! lost or still-open connection, what happens to unacknowledged stanzas when a session ends,
//! and messages stored before delivery so that only an acknowledgement deletes them.

use std::time::Duration;
use strait_tests::{RawClient, TestServer, between};

const QUIET: Duration = Duration::from_millis(400);
const SM: &str = "urn:xmpp:sm:3";

/// Logs in and sends initial presence, which brings stored messages (not consumed here).
async fn login(t: &TestServer, jid: &str, pw: &str, res: &str) -> RawClient {
    let mut c = RawClient::login(t.starttls, t.ca_pem(), jid, pw, res).await;
    c.send("<presence/>").await;
    c
}

/// Authenticates and opens the post-authentication stream, without binding.
async fn authenticated(t: &TestServer, jid: &str, pw: &str) -> (RawClient, String) {
    let (user, domain) = jid.split_once('@').unwrap();
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls(domain).await;
    let r = c.scram_sha256(user, pw).await;
    assert!(r.contains("<success"), "{r}");
    let features = c.open_stream(domain).await;
    (c, features)
}

/// `<enable/>` (stream management without resumption), answered.
async fn enable(c: &mut RawClient) {
    c.send(&format!("<enable xmlns='{SM}'/>")).await;
    c.expect_element(&["<enabled"]).await;
}

/// `<enable resume='true'/>`; returns the resumption id.
async fn enable_resumable(c: &mut RawClient) -> String {
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let enabled = c.expect_element(&["<enabled"]).await;
    assert!(enabled.contains("resume='true'"), "{enabled}");
    between(&enabled, "id='", "'").to_owned()
}

async fn chat(from: &mut RawClient, to: &str, body: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

/// The `h` of the next `<a/>` after an `<r/>`.
async fn ask_h(c: &mut RawClient) -> u32 {
    c.send(&format!("<r xmlns='{SM}'/>")).await;
    let a = c.expect_element(&["<a xmlns='urn:xmpp:sm:3'"]).await;
    between(&a, "h='", "'").parse().unwrap()
}

/// Asks for the server's count until it reaches `want`: a message whose held copy the store
/// still holds back is counted once the copy is committed or cancelled, and a short answer is
/// followed by an `<a/>` unasked then.
async fn ask_h_until(c: &mut RawClient, want: u32) {
    let mut h = ask_h(c).await;
    while h < want {
        let a = c.expect_element(&["<a xmlns='urn:xmpp:sm:3'"]).await;
        h = between(&a, "h='", "'").parse().unwrap();
    }
    assert_eq!(h, want);
}

#[tokio::test]
async fn acks_count_handled_stanzas_and_server_requests_acks() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    // Advertised after authentication only.
    let (mut pre, features) = authenticated(&t, "alice@localhost", "pa").await;
    assert!(
        features.contains("<sm xmlns='urn:xmpp:sm:3'/>"),
        "{features}"
    );
    // Enabling before binding is refused with a failure, not a stream error.
    pre.send(&format!("<enable xmlns='{SM}'/>")).await;
    let failed = pre.expect_element(&["<failed"]).await;
    assert!(failed.contains("<unexpected-request"), "{failed}");
    drop(pre);

    a.send(&format!("<enable xmlns='{SM}'/>")).await;
    let enabled = a.expect_element(&["<enabled"]).await;
    assert!(!enabled.contains("resume="), "{enabled}");
    a.send(&format!("<enable xmlns='{SM}'/>")).await;
    let twice = a.expect_element(&["<failed"]).await;
    assert!(twice.contains("<unexpected-request"), "{twice}");
    assert_eq!(ask_h(&mut a).await, 0, "nothing handled since enabling");
    // A stanza to the client is followed by a request for an acknowledgement...
    a.ping("p1").await;
    a.expect_element(&["<r xmlns='urn:xmpp:sm:3'/>"]).await;
    // ...and no other until the client answers.
    chat(&mut b, "alice@localhost/a1", "two").await;
    a.expect_element(&[">two</body>"]).await;
    a.expect_silence("<r xmlns", QUIET).await;
    a.buffer.clear();
    a.send(&format!("<a xmlns='{SM}' h='2'/>")).await;
    chat(&mut b, "alice@localhost/a1", "three").await;
    a.expect_element(&[">three</body>"]).await;
    a.expect_element(&["<r xmlns='urn:xmpp:sm:3'/>"]).await;

    chat(&mut a, "bob@localhost", "one").await;
    a.send("<presence><show>away</show></presence>").await;
    // Nonzas (here CSI) are not counted.
    a.send("<inactive xmlns='urn:xmpp:csi:0'/><active xmlns='urn:xmpp:csi:0'/>")
        .await;
    assert_eq!(ask_h(&mut a).await, 3, "ping, message and presence handled");
    b.expect_element(&[">one</body>"]).await;
    // Acknowledging more than was sent ends the stream.
    a.send(&format!("<a xmlns='{SM}' h='1000'/>")).await;
    let end = a.read_to_close().await;
    assert!(end.contains("<undefined-condition"), "{end}");
    assert!(end.contains("handled-count-too-high"), "{end}");
    t.stop().await;
}

#[tokio::test]
async fn lost_connection_resumes_with_unacked_and_queued_stanzas() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let id = enable_resumable(&mut a).await;
    chat(&mut b, "alice@localhost", "m1").await;
    a.expect_element(&[">m1</body>"]).await;
    a.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    chat(&mut b, "alice@localhost", "m2").await;
    a.expect_element(&[">m2</body>"]).await;
    a.ping("sync").await;
    // The connection is lost without a closing tag; m2 was never acknowledged.
    drop(a);
    b.ping("after-loss").await;
    // While the session waits, bob's messages still go to it, and alice is still online.
    chat(&mut b, "alice@localhost", "m3").await;
    b.expect_silence("type='unavailable'", QUIET).await;

    let (mut a, features) = authenticated(&t, "alice@localhost", "pa").await;
    assert!(features.contains(SM), "{features}");
    a.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    let resumed = a.expect_element(&["<resumed"]).await;
    assert!(resumed.contains(&format!("previd='{id}'")), "{resumed}");
    // The ping sent before the loss was handled: h counts it (plus the ack-less message).
    assert!(resumed.contains("h='1'"), "{resumed}");
    let m2 = a.expect_element(&["<message"]).await;
    assert!(m2.contains(">m2</body>"), "unacked first: {m2}");
    let m3 = a.expect_element(&["<message"]).await;
    assert!(m3.contains(">m3</body>"), "then queued: {m3}");
    // The resumed stream is a full session: no bind, messages flow both ways.
    chat(&mut a, "bob@localhost", "back").await;
    b.expect_element(&[">back</body>"]).await;
    a.send(&format!("<a xmlns='{SM}' h='3'/>")).await;
    assert_eq!(ask_h(&mut a).await, 2);
    // The same id resumes again after another loss.
    drop(a);
    let (mut a, _) = authenticated(&t, "alice@localhost", "pa").await;
    a.send(&format!("<resume xmlns='{SM}' previd='{id}' h='3'/>"))
        .await;
    a.expect_element(&["<resumed"]).await;
    a.ping("again").await;
    t.stop().await;
}

#[tokio::test]
async fn resuming_a_still_open_connection_closes_the_old_one() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let id = enable_resumable(&mut a).await;
    chat(&mut b, "alice@localhost", "x1").await;
    a.expect_element(&[">x1</body>"]).await;
    let (mut a2, _) = authenticated(&t, "alice@localhost", "pa").await;
    a2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    a2.expect_element(&["<resumed"]).await;
    a2.expect_element(&[">x1</body>"]).await;
    let old = a.read_to_close().await;
    assert!(old.contains("<conflict"), "{old}");
    t.stop().await;
}

#[tokio::test]
async fn unknown_or_foreign_ids_fail_and_bind_still_works() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, _b) = t.alice_and_bob().await;
    let id = enable_resumable(&mut a).await;
    drop(a);
    // Bob cannot take alice's session, even with its id.
    let (mut m, _) = authenticated(&t, "bob@localhost", "pb").await;
    m.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    let failed = m.expect_element(&["<failed"]).await;
    assert!(failed.contains("<item-not-found"), "{failed}");
    // The stream is still usable: a new session binds.
    m.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>b2</resource></bind></iq>").await;
    let bound = m.expect_element(&["id='b'"]).await;
    assert!(bound.contains("bob@localhost/b2"), "{bound}");
    m.ping("bound").await;
    let (mut a, _) = authenticated(&t, "alice@localhost", "pa").await;
    a.send(&format!("<resume xmlns='{SM}' previd='nope' h='0'/>"))
        .await;
    let failed = a.expect_element(&["<failed"]).await;
    assert!(failed.contains("<item-not-found"), "{failed}");
    t.stop().await;
}

#[tokio::test]
async fn expired_session_hands_unacked_messages_on_and_goes_offline() {
    let t = TestServer::start(|c| c.stream_management.resume_timeout_secs = 1).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.expect_element(&["type='subscribe'"]).await;
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    a.send("<presence/>").await;
    b.expect_element(&["<presence", "from='alice@localhost/a1'"])
        .await;
    let id = enable_resumable(&mut a).await;
    // A chat state is not worth keeping; the message is.
    b.send("<message to='alice@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    chat(&mut b, "alice@localhost", "kept").await;
    a.expect_element(&[">kept</body>"]).await;
    drop(a);
    // The window closes: contacts learn alice left, and the message waits for her.
    b.expect_element(&["type='unavailable'", "from='alice@localhost/a1'"])
        .await;
    let (mut a, _) = authenticated(&t, "alice@localhost", "pa").await;
    a.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    let failed = a.expect_element(&["<failed"]).await;
    assert!(failed.contains("<item-not-found"), "{failed}");
    a.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a2</resource></bind></iq>").await;
    a.expect_element(&["id='b'", "type='result'"]).await;
    a.send("<presence/>").await;
    let m = a.expect_element(&[">kept</body>"]).await;
    assert!(m.contains("urn:xmpp:delay"), "delivered from storage: {m}");
    a.expect_silence("chatstates", QUIET).await;
    t.stop().await;
}

#[tokio::test]
async fn only_an_acknowledgement_deletes_a_stored_message() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    // Without resumption: the session ends at once when the connection goes.
    enable(&mut a).await;
    chat(&mut b, "alice@localhost", "acked").await;
    a.expect_element(&[">acked</body>"]).await;
    a.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    chat(&mut b, "alice@localhost", "unacked").await;
    a.expect_element(&[">unacked</body>"]).await;
    a.ping("settle").await;
    // A clean close: the session ends, nothing is resumable, the unacknowledged message is
    // still stored and comes back; the acknowledged one does not.
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    b.ping("after").await;
    let mut a = login(&t, "alice@localhost", "pa", "a3").await;
    let m = a.expect_element(&["<message"]).await;
    assert!(m.contains(">unacked</body>"), "{m}");
    a.expect_silence(">acked</body>", QUIET).await;
    // The redelivered copy carries the same stanza-id as the first delivery, so clients can
    // tell it is the same message (XEP-0359).
    assert!(m.contains("urn:xmpp:sid:0"), "{m}");
    t.stop().await;
}

#[tokio::test]
async fn too_many_unacknowledged_stanzas_end_the_stream() {
    let t = TestServer::start(|c| c.stream_management.max_unacked = 10).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    enable_resumable(&mut a).await;
    for i in 0..12 {
        chat(&mut b, "alice@localhost", &format!("n{i}")).await;
    }
    let end = a.read_to_close().await;
    assert!(end.contains("too many unacknowledged stanzas"), "{end}");
    // Nothing is lost: the messages wait in storage for alice's next session.
    b.ping("settle").await;
    let mut a = login(&t, "alice@localhost", "pa", "a2").await;
    for i in 0..12 {
        a.expect_element(&[&format!(">n{i}</body>")]).await;
    }
    t.stop().await;
}

#[tokio::test]
async fn messages_in_flight_are_kept_beyond_the_offline_quota() {
    let t = TestServer::start(|c| c.limits.max_offline_messages = 2).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    enable_resumable(&mut a).await;
    for i in 0..5 {
        chat(&mut b, "alice@localhost", &format!("q{i}")).await;
    }
    for i in 0..5 {
        a.expect_element(&[&format!(">q{i}</body>")]).await;
    }
    // Alice was online: bob's messages were accepted, none bounced for the quota.
    b.expect_silence("type='error'", QUIET).await;
    // Alice never acknowledged them and closes: all five wait for her, quota or not.
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    b.ping("settle").await;
    let mut a = login(&t, "alice@localhost", "pa", "a2").await;
    for i in 0..5 {
        a.expect_element(&[&format!(">q{i}</body>")]).await;
    }
    // Now offline, the quota applies again to new messages.
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    b.ping("settle2").await;
    for i in 0..3 {
        chat(&mut b, "alice@localhost", &format!("late{i}")).await;
    }
    let err = b.expect_element(&["type='error'"]).await;
    assert!(err.contains("resource-constraint"), "{err}");
    t.stop().await;
}

/// Reads stanzas until the message with body `last`, checking that the messages among them
/// are `first..=last` (`p{n}` bodies) in order; returns how many stanzas were read.
async fn read_pages(c: &mut RawClient, first: usize, last: usize) -> u32 {
    let mut stanzas = 0;
    let mut next = first;
    while next <= last {
        let el = c.next_element().await;
        if !["<message", "<presence", "<iq"]
            .iter()
            .any(|s| el.starts_with(s))
        {
            continue;
        }
        stanzas += 1;
        if el.starts_with("<message") {
            assert!(
                el.contains(&format!(">p{next}</body>")),
                "expected p{next}: {el}"
            );
            next += 1;
        }
    }
    stanzas
}

/// More stored messages than a page (`max_unacked` 100 makes a page 25): the first page comes
/// at the initial presence, the next ones only while the client's unacknowledged stanzas
/// leave room (at most half of `max_unacked` with the page), so that it is never
/// disconnected for them; every message arrives, in order, as the client acknowledges. A
/// client without stream management gets every page, each once the one before is written out.
/// (Before pages, the messages past the first 500 came only at the next login.)
#[tokio::test]
async fn stored_messages_past_a_page_all_arrive_page_by_page() {
    let t = TestServer::start(|c| c.stream_management.max_unacked = 100).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    b.ping("alice gone").await;
    for i in 0..130 {
        chat(&mut b, "alice@localhost", &format!("p{i}")).await;
    }
    // Each was stored before bob's next was read: all are stored once this is answered.
    b.ping("stored").await;

    let mut a = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "sm").await;
    enable(&mut a).await;
    a.send("<presence/>").await;
    let mut h = read_pages(&mut a, 0, 24).await;
    // Unacknowledged, at most two pages (the second fits only with nothing else unacknowledged).
    a.expect_silence(">p50</body>", QUIET).await;
    let mut next = 25;
    while next < 130 {
        a.send(&format!("<a xmlns='{SM}' h='{h}'/>")).await;
        let last = (next + 24).min(129);
        h += read_pages(&mut a, next, last).await;
        next = last + 1;
    }
    a.send(&format!("<a xmlns='{SM}' h='{h}'/>")).await;
    a.ping("all acknowledged").await;
    a.send("</stream:stream>").await;
    a.read_to_close().await;

    // Without stream management: all of them, nothing acknowledged (written out is enough).
    b.ping("alice gone again").await;
    for i in 0..130 {
        chat(&mut b, "alice@localhost", &format!("p{i}")).await;
    }
    b.ping("stored again").await;
    let mut a = login(&t, "alice@localhost", "pa", "plain").await;
    read_pages(&mut a, 0, 129).await;
    a.ping("after").await;
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    // Written out, so deleted: nothing comes back.
    b.ping("alice gone for good").await;
    let mut a = login(&t, "alice@localhost", "pa", "again").await;
    a.expect_silence("<message", QUIET).await;
    t.stop().await;
}

/// An IQ request a client received but never acknowledged is answered for it when its
/// session ends: the requester gets `service-unavailable` (RFC 6120 §8.3; RFC 6121 §8.5.3.2.2,
/// no such resource) instead of waiting for an answer that cannot come. Results and errors
/// are never answered.
#[tokio::test]
async fn expired_session_answers_its_unacked_iq_requests() {
    let t = TestServer::start(|c| c.stream_management.resume_timeout_secs = 1).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    enable_resumable(&mut a).await;
    b.send(
        "<iq to='alice@localhost/a1' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    b.send("<iq to='alice@localhost/a1' type='result' id='r1'/>")
        .await;
    a.expect_element(&["id='v1'", "jabber:iq:version"]).await;
    a.expect_element(&["id='r1'"]).await;
    drop(a);
    let err = b.expect_element(&["id='v1'", "type='error'"]).await;
    assert!(err.contains("<service-unavailable"), "{err}");
    assert!(err.contains("from='alice@localhost/a1'"), "{err}");
    assert!(err.contains("to='bob@localhost/b1'"), "{err}");
    b.expect_silence("an answer to the result", QUIET).await;
    t.stop().await;
}

/// Logs alice in on another resource, available, then turns stream management on (so that
/// the count of stanzas it acknowledges starts with what comes next).
async fn alice_with_sm(t: &TestServer, res: &str) -> RawClient {
    let mut c = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", res).await;
    c.available().await;
    enable(&mut c).await;
    c
}

/// A message to the bare JID reaches both of alice's devices. One of them leaves without
/// acknowledging it: its copy is handed on to the account's other devices, but the device
/// that already has the message must not get it a second time (a user would see it twice).
/// Once that device acknowledges it, it is not stored any more.
#[tokio::test]
async fn a_device_that_has_a_message_does_not_get_it_again_when_another_leaves() {
    let t = TestServer::start(|_| {}).await;
    let (a1, mut b) = t.alice_and_bob().await;
    drop(a1);
    let mut a1 = alice_with_sm(&t, "phone").await;
    let mut a2 = alice_with_sm(&t, "laptop").await;
    chat(&mut b, "alice@localhost", "once").await;
    a1.expect_element(&[">once</body>"]).await;
    a2.expect_element(&[">once</body>"]).await;
    a1.send("</stream:stream>").await;
    a1.read_to_close().await;
    b.ping("settle").await;
    a2.expect_silence(">once</body>", QUIET).await;
    // The message was the first stanza after the laptop enabled stream management.
    a2.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    a2.ping("acked").await;
    let mut a3 = login(&t, "alice@localhost", "pa", "tablet").await;
    a3.expect_silence(">once</body>", QUIET).await;
    t.stop().await;
}

/// The same when the device that stays acknowledged its copy before the other left: the
/// message is no longer stored, and the leaving device's copy is not handed on at all.
#[tokio::test]
async fn an_acknowledged_message_is_not_handed_on_when_another_device_leaves() {
    let t = TestServer::start(|_| {}).await;
    let (a1, mut b) = t.alice_and_bob().await;
    drop(a1);
    let mut a1 = alice_with_sm(&t, "phone").await;
    let mut a2 = alice_with_sm(&t, "laptop").await;
    chat(&mut b, "alice@localhost", "acked").await;
    a1.expect_element(&[">acked</body>"]).await;
    a2.expect_element(&[">acked</body>"]).await;
    a2.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    a2.ping("acked").await;
    a1.send("</stream:stream>").await;
    a1.read_to_close().await;
    b.ping("settle").await;
    a2.expect_silence(">acked</body>", QUIET).await;
    let mut a3 = login(&t, "alice@localhost", "pa", "tablet").await;
    a3.expect_silence(">acked</body>", QUIET).await;
    t.stop().await;
}

/// A device that comes online while another holds a message unacknowledged gets the stored
/// copy; when the other then leaves without acknowledging, its copy is not handed to the
/// new device again, with stream management on the new device (the copy is unacknowledged
/// there) or off (written, so no longer stored). The same holds in the race this models, in
/// which the SDK's tests saw messages twice: a device's initial presence fetching stored
/// messages while a live copy of one of them is on its way to it.
#[tokio::test]
async fn a_stored_message_fetched_at_login_is_not_delivered_again_live() {
    for sm_on_the_new_device in [true, false] {
        let t = TestServer::start(|_| {}).await;
        let (a1, mut b) = t.alice_and_bob().await;
        drop(a1);
        let mut a1 = alice_with_sm(&t, "phone").await;
        chat(&mut b, "alice@localhost", "held").await;
        a1.expect_element(&[">held</body>"]).await;
        // Not acknowledged: the copy held for it is still stored, and the laptop's login
        // gets it.
        let mut a2 =
            RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "laptop").await;
        if sm_on_the_new_device {
            enable(&mut a2).await;
        }
        a2.send("<presence/>").await;
        let m = a2.expect_element(&[">held</body>"]).await;
        assert!(m.contains("urn:xmpp:delay"), "from storage: {m}");
        a1.send("</stream:stream>").await;
        a1.read_to_close().await;
        b.ping("settle").await;
        a2.expect_silence(">held</body>", QUIET).await;
        t.stop().await;
    }
}

/// A message to a client that acknowledges is delivered while its stored copy is being
/// written, and its sender hears that it was handled (XEP-0198 `h`) only once that copy is
/// durable. With the store's writer held up (another connection holds the database's write
/// lock), bob's message still reaches alice at once; bob's `<r/>` is answered without it, and
/// the full count follows unasked once the copy is committed. The copy is durable: alice
/// leaves without acknowledging the message, and it comes back at her next login.
#[tokio::test]
async fn a_held_copy_is_delivered_at_once_and_acknowledged_to_its_sender_once_durable() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    for c in [&mut a, &mut b] {
        enable(c).await;
    }
    chat(&mut b, "alice@localhost", "first").await;
    a.expect_element(&[">first</body>"]).await;
    ask_h_until(&mut b, 1).await;

    let db = rusqlite::Connection::open(t.config().store_path()).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    chat(&mut b, "alice@localhost", "held").await;
    // Delivered though nothing can be committed.
    a.expect_element(&[">held</body>"]).await;
    assert_eq!(
        ask_h(&mut b).await,
        1,
        "counted as handled before its stored copy was durable"
    );
    db.execute_batch("COMMIT").unwrap();
    let ack = b.expect_element(&["<a xmlns='urn:xmpp:sm:3'"]).await;
    assert_eq!(between(&ack, "h='", "'"), "2", "{ack}");
    assert_eq!(ask_h(&mut b).await, 2);
    drop(db);

    // Neither message was acknowledged by alice: both are stored and come back.
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    b.ping("after").await;
    let mut a = login(&t, "alice@localhost", "pa", "a2").await;
    a.expect_element(&[">first</body>"]).await;
    a.expect_element(&[">held</body>"]).await;
    t.stop().await;
}

/// A held copy its recipient acknowledges while the store holds it back is never written, and
/// its sender's count comes with that acknowledgement, not when the hold ends: with the hold
/// (`stream_management.copy_hold_ms`) at ten minutes, bob's `<r/>` is answered short until
/// alice acknowledges, and the full count follows at once. A copy nobody acknowledged is
/// still stored when the session ends, and only that one comes back at the next login.
#[tokio::test]
async fn an_acknowledged_copy_settles_its_sender_at_once_and_is_never_written() {
    let t = TestServer::start(|c| c.stream_management.copy_hold_ms = 600_000).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    for c in [&mut a, &mut b] {
        enable(c).await;
    }
    chat(&mut b, "alice@localhost", "quick").await;
    a.expect_element(&[">quick</body>"]).await;
    assert_eq!(
        ask_h(&mut b).await,
        0,
        "counted before its copy was stored or acknowledged"
    );
    a.send(&format!("<a xmlns='{SM}' h='1'/>")).await;
    // Unasked, owed since the short answer (with the copy answered only when its hold ended,
    // ten minutes later, this timed out).
    let ack = b.expect_element(&["<a xmlns='urn:xmpp:sm:3'"]).await;
    assert_eq!(between(&ack, "h='", "'"), "1", "{ack}");

    chat(&mut b, "alice@localhost", "kept").await;
    a.expect_element(&[">kept</body>"]).await;
    a.send("</stream:stream>").await;
    a.read_to_close().await;
    // The session's end took the held copy of "kept" to disk: bob's count has it.
    ask_h_until(&mut b, 2).await;
    let db = rusqlite::Connection::open(t.config().store_path()).unwrap();
    let stored: Vec<String> = db
        .prepare("SELECT stanza FROM offline")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].contains(">kept</body>"), "{stored:?}");
    drop(db);
    let mut a = login(&t, "alice@localhost", "pa", "a2").await;
    a.expect_element(&[">kept</body>"]).await;
    a.expect_silence(">quick</body>", QUIET).await;
    t.stop().await;
}

/// A session that ends with many messages unacknowledged (a device that stopped reading)
/// hands them on to the account's other device only as far as that device's queue has room,
/// and the rest stay stored: pushed all at once they filled its queue, and the server
/// disconnected it as a slow client, ending its session the same way. The other device stays
/// connected, and every message still reaches the account.
#[tokio::test]
async fn a_large_backlog_is_handed_on_without_disconnecting_the_other_device() {
    const N: usize = 600;
    let t = TestServer::start(|_| {}).await;
    let (a1, mut b) = t.alice_and_bob().await;
    drop(a1);
    let mut a1 = alice_with_sm(&t, "phone").await;
    let mut a2 = alice_with_sm(&t, "laptop").await;
    // In bursts the phone's connection keeps up with (more than its queue at once would
    // disconnect it).
    for burst in 0..N / 100 {
        let msgs: String = (burst * 100..(burst + 1) * 100)
            .map(|i| {
                format!(
                    "<message to='alice@localhost/phone' type='chat' id='m{i}'><body>backlog {i}</body></message>"
                )
            })
            .collect();
        b.send(&msgs).await;
        b.ping(&format!("burst{burst}")).await;
    }
    a1.expect_element(&[&format!(">backlog {}</body>", N - 1)])
        .await;
    a1.send("</stream:stream>").await;
    a1.read_to_close().await;
    b.ping("settle").await;

    // The laptop gets some of them (once the phone's session has ended, which takes a
    // commit), and is still connected.
    let body_of = |el: &str| between(el, "<body xmlns='jabber:client'>", "</body>").to_owned();
    let mut seen = std::collections::HashSet::new();
    let mut handed_on = 0;
    while let Ok(el) = tokio::time::timeout(Duration::from_secs(1), a2.next_element()).await {
        if el.starts_with("<message") {
            handed_on += 1;
            seen.insert(body_of(&el));
        }
    }
    a2.ping("alive").await;
    assert!(
        handed_on > 0 && handed_on < N,
        "{handed_on} of {N} messages handed on"
    );
    // Acknowledged there (about: the phone's unavailable presence counts too), they are no
    // longer stored; the rest are, for the next device.
    a2.send(&format!("<a xmlns='{SM}' h='{handed_on}'/>")).await;
    a2.ping("acked").await;
    // (In pages, the later ones after what the tablet asks meanwhile: read until quiet.)
    let mut a3 = login(&t, "alice@localhost", "pa", "tablet").await;
    while let Ok(el) = tokio::time::timeout(Duration::from_secs(1), a3.next_element()).await {
        if el.starts_with("<message") {
            seen.insert(body_of(&el));
        }
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("backlog {i}")))
        .collect();
    assert!(missing.is_empty(), "never reached alice: {missing:?}");
    t.stop().await;
}

/// A request for acknowledgement goes with a stanza's own write, unless one went out less than
/// 25 ms before: then the stanza is written alone and the request follows on its own (before,
/// every write carried one once the last was answered: a request per stanza on a busy
/// connection). A message right after an answered request shows it; the pair is tried a few
/// times, as a slow machine may take longer than 25 ms between them.
#[tokio::test]
async fn ack_requests_are_at_most_one_per_gap() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    enable(&mut a).await;
    let mut handled = 0u32;
    // What came before (bob's presence), asked for and answered.
    while let Ok(el) = tokio::time::timeout(QUIET, a.next_element()).await {
        if el.starts_with("<r ") {
            a.send(&format!("<a xmlns='{SM}' h='{handled}'/>")).await;
        } else {
            handled += 1;
        }
    }
    let mut seen_alone = false;
    for n in 0..5 {
        // A message long after the last request: the request in its write.
        chat(&mut b, "alice@localhost", &format!("first{n}")).await;
        a.expect_element(&[&format!(">first{n}</body>")]).await;
        handled += 1;
        a.expect_element(&["<r xmlns='urn:xmpp:sm:3'/>"]).await;
        a.send(&format!("<a xmlns='{SM}' h='{handled}'/>")).await;
        // One right after: alone, unless this machine took 25 ms for the round.
        chat(&mut b, "alice@localhost", &format!("next{n}")).await;
        a.expect_element(&[&format!(">next{n}</body>")]).await;
        handled += 1;
        let alone = !a.buffer.contains("<r ");
        a.expect_element(&["<r xmlns='urn:xmpp:sm:3'/>"]).await;
        a.send(&format!("<a xmlns='{SM}' h='{handled}'/>")).await;
        if alone {
            seen_alone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        seen_alone,
        "every message right after a request had one of its own"
    );
    // All acknowledged: nothing more is asked.
    a.expect_silence("<r ", QUIET).await;
    t.stop().await;
}
