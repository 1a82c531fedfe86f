//! The client SDK (strait-client's `chat`) against a live server: two accounts and three
//! devices, each with its own local store. Alice's first device gets a message that waited
//! for it offline; her second device joins her device list without pushing the first out;
//! a message to her is then encrypted for both, and each of her devices decrypts it; what
//! she sends is encrypted for her other device too, which gets a copy (carbons) and reads
//! it. A second connection on a store keeps its device and sessions. A shared file crosses
//! as ciphertext and decrypts on arrival. Blocking a contact (XEP-0191) stops its messages
//! both ways until the unblock, and a block can carry a report (XEP-0377) naming received
//! messages by the stanza-ids the history kept. Device lists are read once for a conversation,
//! not once a message: a contact's new device is seen once the list expires, after it writes,
//! or on a notification; an OMEMO-2-only contact costs no failed 0.3 lookup per message, and
//! refusals are never kept. The SDK answers the IQs sent to it (pings, disco#info, the rest
//! refused) without keeping any, and its presence's caps have the server push the lists of the
//! contacts whose presence it shares. (slixmpp-omemo is the other end in
//! tests/real_clients/test_chat.py.)

use std::path::Path;
use std::time::Duration;
use strait_client::caps::{Identity, features_of, sha1_ver};
use strait_client::chat::{
    Account, CAPS_NODE, ChatError, Client, Credential, DEVICE_LIST_TTL, Event, Incoming,
};
use strait_client::conn::Verify;
use strait_client::omemo::Omemo;
use strait_client::xml::Element;
use strait_tests::{RawClient, TestServer, WAIT};

fn account(ts: &TestServer, jid: &str, password: &str, store: &Path) -> Account {
    Account {
        jid: jid.into(),
        credential: Credential::Password(password.into()),
        server: ts.starttls,
        tls_name: None,
        direct_tls: false,
        verify: Verify::CaFile(ts.config().data_dir.join("tls/ca.pem")),
        resource: String::new(),
        store: store.to_owned(),
        http_via: ts.server.as_ref().unwrap().https_addrs().first().copied(),
    }
}

/// A server (with `tweak`) that has alice@localhost ("pa") and bob@localhost ("pb"), and a
/// scratch directory for the clients' stores.
async fn alice_and_bob(
    tweak: impl FnOnce(&mut strait_server::Config),
) -> (TestServer, tempfile::TempDir) {
    let ts = TestServer::start(tweak).await;
    ts.add_user("alice@localhost", "pa");
    ts.add_user("bob@localhost", "pb");
    (ts, tempfile::tempdir().unwrap())
}

/// A client online as `jid` with its store at `store`.
async fn online(ts: &TestServer, jid: &str, password: &str, store: &Path) -> Client {
    Client::connect(&account(ts, jid, password, store))
        .await
        .unwrap()
}

/// The next message, past delivery receipts (which the other tests look at).
async fn message(c: &mut Client) -> Incoming {
    loop {
        match tokio::time::timeout(WAIT, c.next_event()).await {
            Ok(Ok(Event::Message(m))) => return *m,
            Ok(Ok(Event::Delivered { .. })) => {}
            Ok(Ok(other)) => panic!("expected a message, got {other:?}"),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }
}

/// The next event that is not a delivery receipt.
async fn event(c: &mut Client) -> Event {
    loop {
        match tokio::time::timeout(WAIT, c.next_event()).await {
            Ok(Ok(Event::Delivered { .. })) => {}
            Ok(Ok(ev)) => return ev,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }
}

/// Every file's bytes under `dir`.
fn walk(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_devices_exchange_encrypted_messages_online_and_offline() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let (a1_store, a2_store, b_store) = (
        dir.path().join("a1"),
        dir.path().join("a2"),
        dir.path().join("b"),
    );
    let a1_account = account(&ts, "alice@localhost", "pa", &a1_store);

    // Alice's first device publishes its keys and leaves; Bob writes to her while she is away.
    let a1 = Client::connect(&a1_account).await.unwrap();
    let a1_id = a1.device_id();
    a1.close().await;
    let mut b = Client::connect(&account(&ts, "bob@localhost", "pb", &b_store))
        .await
        .unwrap();
    // Bob reads alice's device lists for every message here, so that her second device is
    // seen at once (how long lists are kept and what refreshes them: the sdk_keeps_… and
    // sdk_takes_… tests below).
    b.set_device_list_ttl(Duration::ZERO);
    let sent = b
        .send("alice@localhost", "while you were out")
        .await
        .unwrap();
    assert_eq!(sent.devices, 1);
    assert_eq!(
        sent.omemo,
        Omemo::V03,
        "0.3 first, when the contact lists 0.3 devices"
    );

    let mut a1 = Client::connect(&a1_account).await.unwrap();
    assert_eq!(a1.device_id(), a1_id, "the store keeps the device");
    let m = message(&mut a1).await;
    assert_eq!(m.from, "bob@localhost");
    assert_eq!(m.text, "while you were out");
    assert!(m.encrypted);
    assert!(m.delayed.is_some(), "it waited on the server: {m:?}");
    assert_eq!(m.origin, None);

    // Her second device joins the list; Bob's next message is for both of her devices.
    let mut a2 = Client::connect(&account(&ts, "alice@localhost", "pa", &a2_store))
        .await
        .unwrap();
    assert_ne!(a2.device_id(), a1_id);
    let sent = b.send("alice@localhost", "to both of you").await.unwrap();
    assert_eq!(sent.devices, 2, "both of alice's devices are listed");
    let mut ids = Vec::new();
    for c in [&mut a1, &mut a2] {
        let m = message(c).await;
        assert_eq!(m.text, "to both of you");
        assert!(m.encrypted);
        ids.push(m.stanza_id.expect("the archive copy's id"));
    }
    assert_eq!(ids[0], ids[1], "one archive copy for the account");

    // What alice sends is also encrypted for her other device.
    let sent = a2
        .send("bob@localhost", "hello from my second device")
        .await
        .unwrap();
    assert_eq!(sent.devices, 2, "bob's device and alice's first");
    let m = message(&mut b).await;
    assert_eq!(m.from, "alice@localhost");
    assert_eq!(m.text, "hello from my second device");
    // Her first device gets a copy (XEP-0280 carbons), decrypted as hers.
    let copy = message(&mut a1).await;
    assert_eq!(copy.from, "alice@localhost");
    assert_eq!(copy.sent_to.as_deref(), Some("bob@localhost"));
    assert_eq!(copy.text, "hello from my second device");
    assert!(copy.encrypted);
    // Bob's device confirms receipt (XEP-0184), and alice's second device hears of it.
    match tokio::time::timeout(WAIT, a2.next_event()).await {
        Ok(Ok(Event::Delivered { from, id })) => {
            assert_eq!(from, "bob@localhost");
            assert_eq!(id, sent.id);
        }
        other => panic!("expected a delivery receipt, got {other:?}"),
    }

    // A file: the server holds only ciphertext; the link (with the key) arrives encrypted.
    let photo: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = b
        .send_file("alice@localhost", "holiday photo é.jpg", &photo)
        .await
        .unwrap();
    assert_eq!(sent.devices, 2);
    let m = message(&mut a1).await;
    let media = m.media.clone().expect("a shared file");
    assert_eq!(media.name, "holiday photo é.jpg");
    assert!(
        m.text.starts_with("aesgcm://upload.localhost:"),
        "{}",
        m.text
    );
    assert_eq!(a1.download(&media).await.unwrap(), photo);
    let stored: Vec<Vec<u8>> = walk(&ts.config().data_dir.join("upload"));
    assert!(
        stored.iter().any(|f| f.len() == photo.len() + 16),
        "the ciphertext (file and tag) is stored"
    );
    assert!(
        !stored
            .iter()
            .any(|f| f.windows(64).any(|w| w == &photo[1000..1064])),
        "no plaintext on the server"
    );
    let m2 = message(&mut a2).await;
    assert_eq!(
        a2.download(m2.media.as_ref().unwrap()).await.unwrap(),
        photo
    );

    // The history of each store.
    let lines = |c: &Client| {
        c.history(Some("bob@localhost"), 10)
            .unwrap()
            .into_iter()
            .map(|e| {
                assert!(e.encrypted);
                (e.outgoing, e.text)
            })
            .filter(|(_, t)| !t.starts_with("aesgcm://"))
            .collect::<Vec<_>>()
    };
    let from_bob = |t: &str| (false, t.to_owned());
    let to_bob = |t: &str| (true, t.to_owned());
    // The first device has all of it, its sibling's message included (the carbon); the
    // second only what happened after it joined.
    assert_eq!(
        lines(&a1),
        [
            from_bob("while you were out"),
            from_bob("to both of you"),
            to_bob("hello from my second device")
        ]
    );
    assert_eq!(
        lines(&a2),
        [
            from_bob("to both of you"),
            to_bob("hello from my second device")
        ]
    );

    // A store is one client's at a time.
    let e = Client::connect(&account(&ts, "alice@localhost", "pa", &a2_store))
        .await
        .err()
        .expect("a second client on an open store");
    assert!(matches!(e, ChatError::Store(..)), "{e}");

    for c in [a1, a2, b] {
        c.close().await;
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_login_errors_and_contacts_without_keys_are_reported() {
    let ts = TestServer::start(|_| {}).await;
    ts.add_user("alice@localhost", "pa");
    ts.add_user("carol@localhost", "pc");
    let dir = tempfile::tempdir().unwrap();
    let wrong = account(&ts, "alice@localhost", "nope", &dir.path().join("w"));
    match Client::connect(&wrong).await {
        Err(ChatError::Login(e)) => assert_eq!(e.kind, "sasl: not-authorized", "{e}"),
        Err(e) => panic!("expected a login error, got {e}"),
        Ok(_) => panic!("a wrong password logged in"),
    }
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    // Carol never published keys: nothing is sent, and the error says why. That is not kept:
    // each try asks again (both versions), and once carol has keys the message goes.
    let reads = a.device_list_reads();
    for i in 1..=2 {
        match a.send("carol@localhost", "hi").await {
            Err(ChatError::NoDevices(who, why)) => {
                assert_eq!(who, "carol@localhost");
                assert!(why.contains("item-not-found"), "{why}");
            }
            other => panic!("expected NoDevices, got {other:?}"),
        }
        assert_eq!(a.device_list_reads() - reads, 2 * i);
    }
    let mut c = online(&ts, "carol@localhost", "pc", &dir.path().join("c")).await;
    a.send("carol@localhost", "hi").await.unwrap();
    assert_eq!(message(&mut c).await.text, "hi");
    c.close().await;
    // The connection is still good afterwards.
    tokio::time::timeout(Duration::from_secs(5), async {
        let e = a.send("alice@localhost", "me").await.unwrap_err();
        assert!(matches!(e, ChatError::Account(_)), "{e}");
    })
    .await
    .unwrap();
    a.close().await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reconnects_after_the_server_restarts() {
    // Fixed ports, so that the restarted server is where the clients expect it.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (c2s, tls) = (free(), free());
    let (mut ts, dir) = alice_and_bob(|c| {
        c.listen.c2s = vec![c2s];
        c.listen.c2s_direct_tls = vec![tls];
    })
    .await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    b.send("alice@localhost", "before").await.unwrap();
    assert_eq!(message(&mut a).await.text, "before");

    let config = ts.config().clone();
    ts.server
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    match tokio::time::timeout(WAIT, a.next_event()).await {
        Ok(Err(ChatError::Connection(_))) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    let server = strait_server::Server::start(config).await.unwrap();
    a.reconnect().await.unwrap();
    // Bob's connection is gone too; his send says so, and after a reconnect it goes.
    let e = b.send("alice@localhost", "lost?").await.unwrap_err();
    assert!(
        matches!(e, ChatError::Connection(_) | ChatError::Timeout(_)),
        "{e}"
    );
    b.reconnect().await.unwrap();
    b.send("alice@localhost", "after").await.unwrap();
    assert_eq!(message(&mut a).await.text, "after");
    for c in [a, b] {
        c.close().await;
    }
    server.shutdown(Duration::from_secs(5)).await;
}

/// A client that only sends (`strait chat send`) still receives what waited for it, while it
/// logs in, and the server asks for acknowledgements meanwhile: what it acknowledges must be
/// the client's for good (decrypted and in the history), though the app never asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_leaves_what_it_did_not_read_with_the_server() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let alice = account(&ts, "alice@localhost", "pa", &dir.path().join("a"));
    Client::connect(&alice).await.unwrap().close().await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    for text in ["one", "two"] {
        b.send("alice@localhost", text).await.unwrap();
    }
    // Alice sends and leaves without reading; the two messages reach her connection meanwhile.
    let mut a = Client::connect(&alice).await.unwrap();
    a.send("bob@localhost", "just sending").await.unwrap();
    a.send("bob@localhost", "and again").await.unwrap();
    assert_eq!(a.pending_events(), 2, "both arrived while she was sending");
    a.close().await;
    // They are in her history, decrypted.
    let h = strait_client::chat::history(&dir.path().join("a"), Some("bob@localhost"), 10).unwrap();
    let received: Vec<&str> = h
        .iter()
        .filter(|e| !e.outgoing)
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(received, ["one", "two"], "{h:?}");
    b.close().await;
    ts.stop().await;
}

/// A device that was away catches up from the archive (XEP-0313): what another device of the
/// account received meanwhile (the server queued it for no one) and what that device sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_catches_up_from_the_archive() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let second = account(&ts, "alice@localhost", "pa", &dir.path().join("a2"));
    let mut a1 = online(&ts, "alice@localhost", "pa", &dir.path().join("a1")).await;
    Client::connect(&second).await.unwrap().close().await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    let sent = b
        .send("alice@localhost", "while you were away")
        .await
        .unwrap();
    assert_eq!(sent.devices, 2);
    let live = message(&mut a1).await;
    assert_eq!(live.text, "while you were away");
    a1.send("bob@localhost", "answered from the first device")
        .await
        .unwrap();

    let mut a2 = Client::connect(&second).await.unwrap();
    let m = message(&mut a2).await;
    assert_eq!(
        (m.from.as_str(), m.text.as_str()),
        ("bob@localhost", "while you were away")
    );
    assert!(m.delayed.is_some(), "{m:?}");
    // From the archive, with the same id the live copy had.
    assert!(live.stanza_id.is_some(), "{live:?}");
    assert_eq!(m.stanza_id, live.stanza_id);
    let m = message(&mut a2).await;
    assert_eq!(m.sent_to.as_deref(), Some("bob@localhost"));
    assert_eq!(m.stanza_id, None, "only received messages keep one");
    assert_eq!(m.text, "answered from the first device");
    a2.send("bob@localhost", "and from the second")
        .await
        .unwrap();
    a2.close().await;
    // Nothing twice: a new connection finds nothing new (its own message is skipped too).
    let a2 = Client::connect(&second).await.unwrap();
    assert_eq!(a2.pending_events(), 0);
    for c in [a1, a2, b] {
        c.close().await;
    }
    ts.stop().await;
}

/// A message that decrypts reaches the app even when the local history cannot take it, and
/// the failure is reported after it (the server already counts it as received).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_delivers_a_message_the_history_could_not_keep_then_says_so() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    // Something breaks alice's history under the running client.
    rusqlite::Connection::open(dir.path().join("a/chat.db"))
        .unwrap()
        .execute_batch("DROP TABLE messages")
        .unwrap();
    b.send("alice@localhost", "still here").await.unwrap();
    assert_eq!(message(&mut a).await.text, "still here");
    match tokio::time::timeout(WAIT, a.next_event()).await {
        Ok(Err(ChatError::Store(_, why))) => assert!(why.contains("messages"), "{why}"),
        other => panic!("expected the history's failure, got {other:?}"),
    }
    a.close().await;
    b.close().await;
    ts.stop().await;
}

/// Blocking (XEP-0191) through the SDK: a blocked contact's messages are refused as if the
/// account did not exist, the user's own to it are refused as blocked, the list shows it, and
/// after an unblock messages flow again. Received messages carry the server's stanza-id
/// (XEP-0359), which the history keeps for reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_blocks_and_unblocks_a_contact() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    assert_eq!(a.blocklist().await.unwrap(), Vec::<String>::new());

    // A message received carries the id of alice's archive copy, and the history keeps it.
    b.send("alice@localhost", "hello").await.unwrap();
    let m = message(&mut a).await;
    assert_eq!(m.text, "hello");
    let sid = m.stanza_id.clone().expect("the server's stanza-id");
    let h = a.history(Some("bob@localhost"), 10).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].stanza_id.as_deref(), Some(sid.as_str()));
    assert_eq!(
        a.received_stanza_ids("bob@localhost", 10).unwrap(),
        [sid.as_str()]
    );
    // Alice answers so that both have a session before the block.
    a.send("bob@localhost", "hi bob").await.unwrap();
    let m = message(&mut b).await;
    assert_eq!(m.text, "hi bob");
    assert!(m.stanza_id.is_some(), "bob's copy has bob's id: {m:?}");
    assert_ne!(m.stanza_id.as_deref(), Some(sid.as_str()));
    let sent = a.history(Some("bob@localhost"), 10).unwrap();
    assert_eq!(
        sent.last().map(|e| (e.outgoing, e.stanza_id.clone())),
        Some((true, None))
    );

    a.block("bob@localhost", None).await.unwrap();
    assert_eq!(a.blocklist().await.unwrap(), ["bob@localhost"]);
    // Bob learns nothing: the answer is that of an account that does not exist.
    match b.send("alice@localhost", "are you there?").await {
        Err(ChatError::Refused { condition, .. }) => assert_eq!(condition, "service-unavailable"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Alice's own messages to him are refused, and say why: the read of his device list is
    // (bob's list, which alice had, went with the block), and the refusal is not kept as a
    // list, each message asks again.
    let reads = a.device_list_reads();
    for (i, text) in ["never mind", "still there?"].into_iter().enumerate() {
        match a.send("bob@localhost", text).await {
            Err(ChatError::Refused { condition, text }) => {
                assert_eq!(condition, "not-acceptable");
                assert!(
                    text.as_deref().is_some_and(|t| t.starts_with("blocked")),
                    "{text:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(a.device_list_reads() - reads, i as u64 + 1);
    }

    // A second address, then everyone unblocked: the list is empty and messages flow again.
    a.block("spam.example", None).await.unwrap();
    let mut l = a.blocklist().await.unwrap();
    l.sort();
    assert_eq!(l, ["bob@localhost", "spam.example"]);
    a.unblock(&["spam.example"]).await.unwrap();
    assert_eq!(a.blocklist().await.unwrap(), ["bob@localhost"]);
    a.unblock(&[]).await.unwrap();
    assert_eq!(a.blocklist().await.unwrap(), Vec::<String>::new());
    b.send("alice@localhost", "after").await.unwrap();
    // The refused message never arrived: the next one is the one after the unblock.
    let m = message(&mut a).await;
    assert_eq!(m.text, "after");
    let sid2 = m.stanza_id.clone().expect("a stanza-id");
    assert_ne!(sid2, sid);
    a.send("bob@localhost", "welcome back").await.unwrap();
    assert_eq!(message(&mut b).await.text, "welcome back");
    assert_eq!(
        a.received_stanza_ids("bob@localhost", 10).unwrap(),
        [sid.clone(), sid2.clone()]
    );
    a.close().await;
    // The history read without logging in has them too.
    let h = strait_client::chat::history(&dir.path().join("a"), Some("bob@localhost"), 10).unwrap();
    let received: Vec<(&str, Option<&str>)> = h
        .iter()
        .filter(|e| !e.outgoing)
        .map(|e| (e.text.as_str(), e.stanza_id.as_deref()))
        .collect();
    assert_eq!(
        received,
        [
            ("hello", Some(sid.as_str())),
            ("after", Some(sid2.as_str()))
        ]
    );
    b.close().await;
    ts.stop().await;
}

/// A block with an abuse report (XEP-0377): the reason, the user's text and the stanza-ids of
/// the messages received are accepted; a report over the limits is refused before anything is
/// sent, and the server's own refusals come back with their condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_blocks_with_a_report() {
    use strait_client::chat::{Report, ReportReason};
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    for text in ["buy now", "cheap <pills> & more", "last chance"] {
        b.send("alice@localhost", text).await.unwrap();
        assert_eq!(message(&mut a).await.text, text);
    }
    let ids = a.received_stanza_ids("bob@localhost", 10).unwrap();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(a.received_stanza_ids("bob@localhost", 2).unwrap(), ids[1..]);

    // 21 ids: refused here, and nothing reached the server (bob is not blocked).
    let too_many = Report {
        reason: ReportReason::Spam,
        text: None,
        stanza_ids: (0..21).map(|i| format!("id-{i}")).collect(),
    };
    match a.block("bob@localhost", Some(&too_many)).await {
        Err(ChatError::Invalid(why)) => assert!(why.contains("at most 20"), "{why}"),
        other => panic!("expected a local refusal, got {other:?}"),
    }
    let long = Report {
        reason: ReportReason::Abuse,
        text: Some("x".repeat(4097)),
        stanza_ids: ids.clone(),
    };
    assert!(matches!(
        a.block("bob@localhost", Some(&long)).await,
        Err(ChatError::Invalid(_))
    ));
    assert_eq!(a.blocklist().await.unwrap(), Vec::<String>::new());
    // The server's refusal of a malformed address is surfaced with its condition.
    match a.block("a@b@c", None).await {
        Err(ChatError::Blocking { condition, .. }) => assert_eq!(condition, "jid-malformed"),
        other => panic!("expected the server's refusal, got {other:?}"),
    }

    let report = Report {
        reason: ReportReason::Spam,
        text: Some("unsolicited offers, three times <today> & counting".into()),
        stanza_ids: ids,
    };
    a.block("bob@localhost", Some(&report)).await.unwrap();
    assert_eq!(a.blocklist().await.unwrap(), ["bob@localhost"]);
    match b.send("alice@localhost", "one more").await {
        Err(ChatError::Refused { condition, .. }) => assert_eq!(condition, "service-unavailable"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    for c in [a, b] {
        c.close().await;
    }
    ts.stop().await;
}

/// Device lists are kept between messages: a conversation costs one read of the contact's
/// list, not one a message. A device the contact adds gets messages once the list the client
/// has expires (alice does not share bob's presence, so no notification tells her), or at
/// once after a message from it arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_keeps_device_lists_between_messages() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b1 = online(&ts, "bob@localhost", "pb", &dir.path().join("b1")).await;
    let reads = a.device_list_reads();
    let read = |a: &Client| a.device_list_reads() - reads;
    // Two messages: bob's list is read for the first (alice's own were read as she logged in).
    for text in ["one", "two"] {
        let sent = a.send("bob@localhost", text).await.unwrap();
        assert_eq!((sent.devices, sent.omemo), (1, Omemo::V03));
        assert_eq!(message(&mut b1).await.text, text);
    }
    assert_eq!(read(&a), 1, "one device-list read for two messages");

    // Bob adds a device. Within the TTL alice writes to the devices she knows of.
    let mut b2 = online(&ts, "bob@localhost", "pb", &dir.path().join("b2")).await;
    let sent = a.send("bob@localhost", "three").await.unwrap();
    assert_eq!(sent.devices, 1);
    assert_eq!(read(&a), 1);
    assert_eq!(message(&mut b1).await.text, "three");
    match event(&mut b2).await {
        Event::Undecryptable { from, reason } => {
            assert_eq!(from, "alice@localhost");
            assert!(reason.contains("no key for device"), "{reason}");
        }
        other => panic!("expected a message not for b2, got {other:?}"),
    }
    // Only once: the server hands a device a message it has once, even when the device's
    // initial presence fetched it from storage (held for b1) while a live copy was on its way
    // (sm_raw: a_stored_message_fetched_at_login_is_not_delivered_again_live).
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(500), event(&mut b2)).await {
        panic!("expected nothing more for b2, got {ev:?}");
    }

    // Once the lists expire, the next message reads them again (bob's, and alice's own) and
    // reaches both of bob's devices.
    a.set_device_list_ttl(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = a.send("bob@localhost", "four").await.unwrap();
    a.set_device_list_ttl(DEVICE_LIST_TTL);
    assert_eq!(sent.devices, 2);
    assert_eq!(read(&a), 3, "bob's list and alice's own, read again");
    for c in [&mut b1, &mut b2] {
        assert_eq!(message(c).await.text, "four");
    }
    let sent = a.send("bob@localhost", "five").await.unwrap();
    assert_eq!((sent.devices, read(&a)), (2, 3), "fresh again");
    for c in [&mut b1, &mut b2] {
        assert_eq!(message(c).await.text, "five");
    }

    // A third device of bob's writes to alice: her list of bob's lacks it, so her next
    // message reads it again (only bob's) and goes to all three.
    let mut b3 = online(&ts, "bob@localhost", "pb", &dir.path().join("b3")).await;
    b3.send("alice@localhost", "from a third device")
        .await
        .unwrap();
    let m = message(&mut a).await;
    assert_eq!(
        (m.text.as_str(), m.device),
        ("from a third device", Some(b3.device_id()))
    );
    for c in [&mut b1, &mut b2] {
        let copy = message(c).await;
        assert_eq!(copy.sent_to.as_deref(), Some("alice@localhost"));
    }
    let sent = a.send("bob@localhost", "six").await.unwrap();
    assert_eq!(sent.devices, 3);
    assert_eq!(read(&a), 4, "bob's list, once");
    for c in [&mut b1, &mut b2, &mut b3] {
        assert_eq!(message(c).await.text, "six");
    }
    for c in [a, b1, b2, b3] {
        c.close().await;
    }
    ts.stop().await;
}

/// A PEP notification of a device list replaces the one the client has at once: the
/// account's own (the server sends those to all of its devices) and a contact's (sent here
/// as a server that pushes contacts' lists would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_takes_device_lists_from_notifications() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let mut a1 = online(&ts, "alice@localhost", "pa", &dir.path().join("a1")).await;
    let mut b1 = online(&ts, "bob@localhost", "pb", &dir.path().join("b1")).await;
    let sent = a1.send("bob@localhost", "one").await.unwrap();
    assert_eq!(sent.devices, 1);
    assert_eq!(message(&mut b1).await.text, "one");
    let reads = a1.device_list_reads();

    // Alice's second device publishes itself; the server tells her first one, which reads
    // the notification in its next round trip.
    let mut a2 = online(&ts, "alice@localhost", "pa", &dir.path().join("a2")).await;
    a1.blocklist().await.unwrap();
    let sent = a1.send("bob@localhost", "two").await.unwrap();
    assert_eq!(sent.devices, 2, "bob's device and alice's second");
    assert_eq!(a1.device_list_reads(), reads, "no list read");
    assert_eq!(message(&mut b1).await.text, "two");
    let copy = message(&mut a2).await;
    assert_eq!(
        (copy.text.as_str(), copy.sent_to.as_deref()),
        ("two", Some("bob@localhost"))
    );

    // Bob adds a device, and a notification of his new list reaches alice.
    let mut b2 = online(&ts, "bob@localhost", "pb", &dir.path().join("b2")).await;
    let mut raw = RawClient::login(ts.starttls, ts.ca_pem(), "bob@localhost", "pb", "raw").await;
    raw.send(&format!(
        "<message to='alice@localhost' type='headline'>\
         <event xmlns='http://jabber.org/protocol/pubsub#event'>\
         <items node='eu.siacs.conversations.axolotl.devicelist'><item id='current'>\
         <list xmlns='eu.siacs.conversations.axolotl'><device id='{}'/><device id='{}'/></list>\
         </item></items></event></message>",
        b1.device_id(),
        b2.device_id()
    ))
    .await;
    raw.ping("sent").await;
    a1.blocklist().await.unwrap();
    let sent = a1.send("bob@localhost", "three").await.unwrap();
    assert_eq!(sent.devices, 3, "both of bob's devices and alice's second");
    assert_eq!(a1.device_list_reads(), reads, "still no list read");
    for c in [&mut b1, &mut b2, &mut a2] {
        assert_eq!(message(c).await.text, "three");
    }
    for c in [a1, a2, b1, b2] {
        c.close().await;
    }
    ts.stop().await;
}

/// A contact with only OMEMO 2 devices: the first message finds that it has no OMEMO 0.3
/// list and goes in OMEMO 2; the next ones do not ask for the 0.3 list again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_remembers_a_contact_has_only_omemo_2() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    // Bob's OMEMO 0.3 device list goes: he is left with his OMEMO 2 one.
    let mut raw = RawClient::login(ts.starttls, ts.ca_pem(), "bob@localhost", "pb", "raw").await;
    raw.send(
        "<iq type='set' id='del'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>\
         <delete node='eu.siacs.conversations.axolotl.devicelist'/></pubsub></iq>",
    )
    .await;
    let r = raw.expect("id='del'").await + &raw.expect_one_of(&["/>", "</iq>"]).await;
    assert!(r.contains("type='result'"), "{r}");

    let reads = a.device_list_reads();
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let sent = a.send("bob@localhost", text).await.unwrap();
        assert_eq!((sent.devices, sent.omemo), (1, Omemo::V2));
        assert_eq!(
            a.device_list_reads() - reads,
            2,
            "the 0.3 list not found and the OMEMO 2 one, for the first message only ({i})"
        );
        assert_eq!(message(&mut b).await.text, text);
    }
    for c in [a, b] {
        c.close().await;
    }
    ts.stop().await;
}

/// Serves `c` (reading what arrives, so that it answers) until `work` is done; `c` must not
/// have anything to report meanwhile.
async fn serving<T>(c: &mut Client, work: impl std::future::Future<Output = T>) -> T {
    tokio::select! {
        out = work => out,
        ev = c.next_event() => panic!("nothing to report expected, got {ev:?}"),
    }
}

/// The next IQ `raw` receives (other stanzas skipped), parsed: its type, id, `from`, first
/// child's name and namespace, the error condition, and the whole of it.
struct Iq {
    ty: String,
    id: String,
    from: String,
    condition: String,
    error_type: String,
    xml: String,
}

async fn next_iq(raw: &mut RawClient) -> Iq {
    loop {
        let xml = raw.next_element().await;
        let Some(el) = Element::parse(xml.as_bytes()) else {
            panic!("unparsable: {xml}");
        };
        if !el.is("iq") {
            continue;
        }
        let attr = |n: &str| el.attr(n).map(|v| v.into_owned()).unwrap_or_default();
        let error = el.child("error");
        return Iq {
            ty: attr("type"),
            id: attr("id"),
            from: attr("from"),
            condition: error
                .as_ref()
                .map(|_| el.error_condition().to_owned())
                .unwrap_or_default(),
            error_type: error
                .and_then(|e| e.attr("type").map(|t| t.into_owned()))
                .unwrap_or_default(),
            xml,
        };
    }
}

/// The features of a disco#info result.
fn disco_features(xml: &str) -> Vec<String> {
    let el = Element::parse(xml.as_bytes()).unwrap();
    el.child("query")
        .map(|q| features_of(&q))
        .unwrap_or_default()
}

/// IQ requests sent to the SDK's full JID by another account are answered as they arrive
/// (RFC 6120 §8.2.3): a ping with a result, disco#info (also for the caps node) with the
/// identity and features, anything else with `service-unavailable`; answers it did not ask
/// for are dropped. A thousand requests are all answered, nothing is kept, and the client goes
/// on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_answers_iqs_sent_to_it() {
    let (ts, dir) = alice_and_bob(|c| c.limits.rate_bytes_per_sec = 16 * 1024 * 1024).await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    let mut raw = RawClient::login(ts.starttls, ts.ca_pem(), "bob@localhost", "pb", "raw").await;
    let alice = a.bound_jid().to_owned();

    // A ping.
    raw.send(&format!(
        "<iq type='get' id='p1' to='{alice}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let r = serving(&mut a, next_iq(&mut raw)).await;
    assert_eq!(
        (r.ty.as_str(), r.id.as_str(), r.from.as_str()),
        ("result", "p1", alice.as_str()),
        "{}",
        r.xml
    );

    // A namespace the SDK does not know, as a get and as a set.
    for (id, ty) in [("u1", "get"), ("u2", "set")] {
        raw.send(&format!(
            "<iq type='{ty}' id='{id}' to='{alice}'><query xmlns='urn:example:unknown'/></iq>"
        ))
        .await;
        let r = serving(&mut a, next_iq(&mut raw)).await;
        assert_eq!(
            (
                r.ty.as_str(),
                r.id.as_str(),
                r.from.as_str(),
                r.condition.as_str(),
                r.error_type.as_str()
            ),
            ("error", id, alice.as_str(), "service-unavailable", "cancel"),
            "{}",
            r.xml
        );
    }

    // disco#info: a client, with the features that make the server push contacts' device
    // lists; the same for the caps node its presence names, and the ver is their hash.
    raw.send(&format!(
        "<iq type='get' id='d1' to='{alice}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ))
    .await;
    let info = serving(&mut a, next_iq(&mut raw)).await;
    assert_eq!(
        (info.ty.as_str(), info.id.as_str()),
        ("result", "d1"),
        "{}",
        info.xml
    );
    let features = disco_features(&info.xml);
    for f in [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/caps",
        "urn:xmpp:ping",
        "urn:xmpp:receipts",
        "urn:xmpp:carbons:2",
        "eu.siacs.conversations.axolotl.devicelist+notify",
        "urn:xmpp:omemo:2:devices+notify",
    ] {
        assert!(features.iter().any(|x| x == f), "{f} missing: {}", info.xml);
    }
    let el = Element::parse(info.xml.as_bytes()).unwrap();
    let identity = el.child("query").and_then(|q| q.child("identity")).unwrap();
    assert_eq!(identity.attr("category").as_deref(), Some("client"));
    assert!(matches!(
        identity.attr("type").as_deref(),
        Some("pc" | "phone")
    ));
    let caps = a.capabilities();
    assert_eq!(caps.node(), CAPS_NODE);
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let ids = [Identity {
        category: "client".into(),
        kind: identity.attr("type").unwrap().into_owned(),
        lang: None,
        name: identity.attr("name").unwrap().into_owned(),
    }];
    assert_eq!(sha1_ver(&ids, &refs), caps.ver(), "the ver is the answer's");
    let node = format!("{CAPS_NODE}#{}", caps.ver());
    raw.send(&format!(
        "<iq type='get' id='d2' to='{alice}'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/></iq>"
    ))
    .await;
    let by_node = serving(&mut a, next_iq(&mut raw)).await;
    assert_eq!(by_node.ty, "result", "{}", by_node.xml);
    assert!(
        by_node.xml.contains(&format!("node='{node}'")),
        "{}",
        by_node.xml
    );
    assert_eq!(disco_features(&by_node.xml), features);

    // A thousand requests of an unknown namespace, each followed by an answer nobody asked
    // for (results and errors get no answer, RFC 6120 §8.3.1, and are not kept).
    let mut answered = std::collections::HashSet::new();
    for round in 0..10 {
        let mut burst = String::new();
        for i in 0..100 {
            let n = round * 100 + i;
            burst.push_str(&format!(
                "<iq type='get' id='x{n}' to='{alice}'><query xmlns='urn:example:unknown:{n}'/></iq>\
                 <iq type='{}' id='stray{n}' to='{alice}'><query xmlns='urn:example:unknown'/></iq>",
                if n % 2 == 0 { "result" } else { "error" }
            ));
        }
        raw.send(&burst).await;
        serving(&mut a, async {
            for _ in 0..100 {
                let r = next_iq(&mut raw).await;
                assert_eq!(
                    (r.ty.as_str(), r.condition.as_str()),
                    ("error", "service-unavailable"),
                    "{}",
                    r.xml
                );
                assert!(answered.insert(r.id.clone()), "answered twice: {}", r.id);
            }
        })
        .await;
        assert_eq!(a.queued_stanzas(), 0, "nothing kept (round {round})");
    }
    assert_eq!(answered.len(), 1000);
    assert!((0..1000).all(|n| answered.contains(&format!("x{n}"))));
    // Nothing else came back: the next answer is the last ping's.
    raw.send(&format!(
        "<iq type='get' id='p2' to='{alice}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let r = serving(&mut a, next_iq(&mut raw)).await;
    assert_eq!(
        (r.ty.as_str(), r.id.as_str()),
        ("result", "p2"),
        "{}",
        r.xml
    );
    assert_eq!((a.queued_stanzas(), a.pending_events()), (0, 0));

    // The client still works.
    a.send("bob@localhost", "still here").await.unwrap();
    assert_eq!(message(&mut b).await.text, "still here");
    for c in [a, b] {
        c.close().await;
    }
    ts.stop().await;
}

/// `x` (`xjid`) subscribes to `y`'s presence (`yjid`), and `y` approves.
async fn subscribe(x: &mut RawClient, y: &mut RawClient, xjid: &str, yjid: &str) {
    x.send(&format!("<presence to='{yjid}' type='subscribe'/>"))
        .await;
    y.expect_element(&["<presence", "type='subscribe'"]).await;
    y.send(&format!("<presence to='{xjid}' type='subscribed'/>"))
        .await;
    x.expect_element(&["<presence", "type='subscribed'"]).await;
}

/// Alice and bob share presence (a subscription both ways, made by raw clients).
async fn befriend(ts: &TestServer) {
    let mut a = RawClient::login(ts.starttls, ts.ca_pem(), "alice@localhost", "pa", "f").await;
    let mut b = RawClient::login(ts.starttls, ts.ca_pem(), "bob@localhost", "pb", "f").await;
    a.available().await;
    b.available().await;
    subscribe(&mut a, &mut b, "alice@localhost", "bob@localhost").await;
    subscribe(&mut b, &mut a, "bob@localhost", "alice@localhost").await;
    a.ping("f1").await;
    b.ping("f2").await;
}

/// A few round trips to the server: the client has read and answered what arrived before
/// (the server's disco#info query after its presence), and the server has handled that.
async fn settle(c: &mut Client) {
    for _ in 0..2 {
        c.blocklist().await.unwrap();
    }
}

/// With a presence subscription, the SDK's caps (XEP-0115, resolved by the server with a
/// disco#info query the SDK answers) say it wants both device lists' notifications
/// (XEP-0163 §4): the server sends bob's current lists as alice comes online, and his new one
/// when he adds a device, so alice's messages reach the new device with no list read at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_gets_contacts_device_lists_through_caps() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    befriend(&ts).await;
    let mut b1 = online(&ts, "bob@localhost", "pb", &dir.path().join("b1")).await;
    // Bob watches, as a raw client, the presence alice's client sends.
    let mut watch = RawClient::login(ts.starttls, ts.ca_pem(), "bob@localhost", "pb", "w").await;
    watch.available().await;
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let p = watch
        .expect_element(&["<presence", &format!("from='{}'", a.bound_jid())])
        .await;
    let el = Element::parse(p.as_bytes()).unwrap();
    let c = el.child("c").expect("caps in the presence");
    assert_eq!(
        c.attr("xmlns").as_deref(),
        Some("http://jabber.org/protocol/caps")
    );
    assert_eq!(c.attr("hash").as_deref(), Some("sha-1"));
    assert_eq!(c.attr("node").as_deref(), Some(CAPS_NODE));
    assert_eq!(c.attr("ver").as_deref(), Some(a.capabilities().ver()));
    drop(watch);

    settle(&mut a).await;
    let reads = a.device_list_reads();
    // Bob's lists came with alice's caps: the first message costs no read.
    let sent = a.send("bob@localhost", "one").await.unwrap();
    assert_eq!((sent.devices, sent.omemo), (1, Omemo::V03));
    assert_eq!(a.device_list_reads(), reads, "no list read");
    assert_eq!(message(&mut b1).await.text, "one");

    // Bob adds a device; the server tells alice's client, which reads it in its next round
    // trips, well within the minute its list of bob's is kept.
    let mut b2 = online(&ts, "bob@localhost", "pb", &dir.path().join("b2")).await;
    settle(&mut a).await;
    let sent = a.send("bob@localhost", "two").await.unwrap();
    assert_eq!(sent.devices, 2, "both of bob's devices");
    assert_eq!(a.device_list_reads(), reads, "still no list read");
    for c in [&mut b1, &mut b2] {
        assert_eq!(message(c).await.text, "two");
    }
    for c in [a, b1, b2] {
        c.close().await;
    }
    ts.stop().await;
}

/// An IQ answer counts only from whom the request went to: another account that learnt the
/// client's ids (they number its messages too) and sends "answers" ahead of its requests (here
/// a device list with a device of its choosing for each of the next ids) changes nothing, and
/// they are not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_takes_iq_answers_only_from_whom_it_asked() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    ts.add_user("eve@localhost", "pe");
    let mut a = online(&ts, "alice@localhost", "pa", &dir.path().join("a")).await;
    let mut b = online(&ts, "bob@localhost", "pb", &dir.path().join("b")).await;
    let sent = a.send("bob@localhost", "one").await.unwrap();
    assert_eq!(message(&mut b).await.text, "one");
    let (prefix, n) = sent.id.rsplit_once('-').unwrap();
    let n: u64 = n.parse().unwrap();

    let mut eve = RawClient::login(ts.starttls, ts.ca_pem(), "eve@localhost", "pe", "e").await;
    let alice = a.bound_jid().to_owned();
    let mut forged = String::new();
    for k in n + 1..n + 40 {
        forged.push_str(&format!(
            "<iq type='result' id='{prefix}-{k}' to='{alice}'>\
             <pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='eu.siacs.conversations.axolotl.devicelist'><item id='current'>\
             <list xmlns='eu.siacs.conversations.axolotl'><device id='12345'/></list>\
             </item></items></pubsub></iq>"
        ));
    }
    eve.send(&forged).await;
    eve.ping("sent").await;

    // Bob's list is read again for this message: the server's answer is the one taken.
    a.set_device_list_ttl(Duration::ZERO);
    let sent = a.send("bob@localhost", "two").await.unwrap();
    assert_eq!((sent.devices, sent.omemo), (1, Omemo::V03));
    assert_eq!(message(&mut b).await.text, "two");
    assert_eq!(a.queued_stanzas(), 0, "the forged answers are not kept");
    for c in [a, b] {
        c.close().await;
    }
    ts.stop().await;
}

/// A TCP relay between one client and the server that can stop passing the client's bytes on
/// (they are read and dropped) and cut its connections: a connection that dies with the
/// client's last writes (its acknowledgements) still on the way, as a phone's does when it
/// loses the network.
struct Relay {
    addr: std::net::SocketAddr,
    drop_upstream: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(server: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drop_upstream = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (dropping, set) = (drop_upstream.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let dropping = dropping.clone();
                set.lock().unwrap().spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = upstream.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            if !dropping.load(Ordering::SeqCst)
                                && uw.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut ur, &mut cw).await;
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Relay {
            addr,
            drop_upstream,
            conns,
            accept,
        }
    }

    fn drop_upstream(&self, on: bool) {
        self.drop_upstream
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends every relayed connection at once (both sides see it close).
    fn cut(&self) {
        self.conns.lock().unwrap().abort_all();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The server sends a message again when the device never acknowledged it (XEP-0198: the
/// acknowledgement was lost with the connection), with the same stanza-id (XEP-0359). The
/// SDK has it already and shows it once: no second event, one line in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_shows_a_message_the_server_sends_again_once() {
    let (ts, dir) = alice_and_bob(|_| {}).await;
    let relay = Relay::start(ts.starttls).await;
    let mut acc = account(&ts, "alice@localhost", "pa", &dir.path().join("a"));
    acc.server = relay.addr;
    let mut a = Client::connect(&acc).await.unwrap();
    let mut b = RawClient::login(ts.starttls, ts.ca_pem(), "bob@localhost", "pb", "b1").await;
    b.available().await;

    // What alice writes from now on (her acknowledgement of the message) never arrives.
    relay.drop_upstream(true);
    b.send("<message to='alice@localhost' type='chat' id='m1'><body>only once</body></message>")
        .await;
    let m = message(&mut a).await;
    assert_eq!((m.text.as_str(), m.encrypted), ("only once", false));
    assert!(m.stanza_id.is_some(), "{m:?}");
    relay.cut();
    match tokio::time::timeout(WAIT, a.next_event()).await {
        Ok(Err(ChatError::Connection(_) | ChatError::Timeout(_))) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    relay.drop_upstream(false);
    a.reconnect().await.unwrap();
    // The server has it as not acknowledged and sends it again; the SDK drops it.
    b.send("<message to='alice@localhost' type='chat' id='m2'><body>next</body></message>")
        .await;
    assert_eq!(message(&mut a).await.text, "next");
    let history = a.history(Some("bob@localhost"), 10).unwrap();
    let texts: Vec<&str> = history.iter().map(|h| h.text.as_str()).collect();
    assert_eq!(texts, ["only once", "next"]);
    a.close().await;
    ts.stop().await;
}
