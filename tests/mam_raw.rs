//! Message Archive Management (XEP-0313) as raw bytes: what is archived, for whom, under which
//! id, and how a client filters and pages the archive. Every wait is bounded (`common::WAIT`).

use strait_tests::{RawClient, TestServer, between};

const MAM: &str = "urn:xmpp:mam:2";

fn stamp(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A MAM query with optional form fields and RSM set; returns (result ids, the final IQ).
async fn mam_query(
    c: &mut RawClient,
    id: &str,
    fields: &[(&str, &str)],
    rsm: &str,
) -> (Vec<String>, String, Vec<String>) {
    c.ping(&format!("{id}-settle")).await;
    c.buffer.clear();
    let mut x = format!("<iq type='set' id='{id}'><query xmlns='{MAM}' queryid='q-{id}'>");
    if !fields.is_empty() {
        x.push_str(&format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"
        ));
        for (var, value) in fields {
            x.push_str(&format!(
                "<field var='{var}'><value>{value}</value></field>"
            ));
        }
        x.push_str("</x>");
    }
    if !rsm.is_empty() {
        x.push_str(&format!(
            "<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>"
        ));
    }
    x.push_str("</query></iq>");
    c.send(&x).await;
    let all = c.expect(&format!("id='{id}'")).await + &c.expect("</iq>").await;
    let mut ids = Vec::new();
    let mut results = Vec::new();
    for part in all.split("<result ").skip(1) {
        assert!(part.contains(&format!("queryid='q-{id}'")), "{part}");
        ids.push(between(part, " id='", "'").to_owned());
        results.push(part.to_owned());
    }
    let fin = all[all.rfind("<iq").unwrap()..].to_owned();
    assert!(fin.contains("type='result'"), "{fin}");
    (ids, fin, results)
}

async fn chat(from: &mut RawClient, to: &mut RawClient, to_jid: &str, body: &str) -> String {
    from.send(&format!(
        "<message type='chat' to='{to_jid}' id='{body}'><body>{body}</body></message>"
    ))
    .await;
    to.expect_element(&["<message", &format!(">{body}</body>")])
        .await
}

#[tokio::test]
async fn archives_both_directions_with_stanza_ids() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;

    // Advertised on the account.
    a.send("<iq type='get' id='d1' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let r = a.expect_element(&["<iq", "id='d1'"]).await;
    assert!(r.contains(&format!("var='{MAM}'")), "{r}");
    // Form discovery.
    a.send(&format!(
        "<iq type='get' id='f1'><query xmlns='{MAM}'/></iq>"
    ))
    .await;
    let r = a.expect_element(&["<iq", "id='f1'"]).await;
    for f in ["FORM_TYPE", "'with'", "'start'", "'end'"] {
        assert!(r.contains(f), "{r}");
    }

    let got = chat(&mut a, &mut b, "bob@localhost", "hello-bob").await;
    let sid = between(&got, "<stanza-id xmlns='urn:xmpp:sid:0' id='", "'").to_owned();
    assert!(!sid.is_empty(), "{got}");
    chat(&mut b, &mut a, "alice@localhost/a1", "hello-alice").await;
    // A chat state alone is not archived.
    a.send("<message type='chat' to='bob@localhost'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    b.expect_element(&["<message", "composing"]).await;
    // OMEMO (both namespaces) archived as the ciphertext sent.
    let omemo = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2'>S0VZ</key><iv>SVY=</iv></header><payload>Q0lQSEVS</payload></encrypted>";
    a.send(&format!(
        "<message type='chat' to='bob@localhost' id='o1'>{omemo}</message>"
    ))
    .await;
    b.expect_element(&["<message", "Q0lQSEVS"]).await;
    let omemo2 = "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='bob@localhost'><key rid='2'>SzI=</key></keys></header><payload>UDI=</payload></encrypted>";
    a.send(&format!(
        "<message type='chat' to='bob@localhost' id='o2'>{omemo2}</message>"
    ))
    .await;
    b.expect_element(&["<message", "UDI="]).await;

    // Bob's archive: incoming hello-bob under the stanza-id he got, outgoing hello-alice.
    let (ids, fin, results) = mam_query(&mut b, "q1", &[], "").await;
    assert_eq!(ids.len(), 4, "{results:?}");
    assert_eq!(ids[0], sid);
    assert!(results[0].contains(">hello-bob</body>"), "{}", results[0]);
    assert!(
        results[0].contains("from='alice@localhost/a1'"),
        "{}",
        results[0]
    );
    assert!(
        results[0].contains(
            "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='"
        ),
        "{}",
        results[0]
    );
    assert!(results[1].contains(">hello-alice</body>"), "{}", results[1]);
    assert!(
        results[2].contains("<payload>Q0lQSEVS</payload>"),
        "{}",
        results[2]
    );
    assert!(
        results[3].contains("<payload>UDI=</payload>"),
        "{}",
        results[3]
    );
    assert!(!results.iter().any(|r| r.contains("composing")));
    assert!(fin.contains("complete='true'"), "{fin}");
    assert!(fin.contains("<count>4</count>"), "{fin}");
    assert!(
        fin.contains(&format!("<first index='0'>{sid}</first>")),
        "{fin}"
    );

    // Alice's archive: the same conversation from her side, with her own ids.
    let (ids, _, results) = mam_query(&mut a, "q2", &[], "").await;
    assert_eq!(ids.len(), 4, "{results:?}");
    assert!(results[0].contains(">hello-bob</body>"));
    assert_ne!(ids[0], sid);
    assert!(results[1].contains(">hello-alice</body>"));
    // The received copy's archive id is the stanza-id Alice got.
    assert!(
        results[1].contains(&format!("id='{}' by='alice@localhost'", ids[1])),
        "{}",
        results[1]
    );

    // Each side's copy carries its own stanza-id, once, and not the other side's (both are
    // stored in one form, and a query puts the owner's id back).
    let (b_ids, _, b_results) = mam_query(&mut b, "q3", &[], "").await;
    for (owner, other, ids, results) in [
        ("alice@localhost", "bob@localhost", &ids, &results),
        ("bob@localhost", "alice@localhost", &b_ids, &b_results),
    ] {
        for (id, r) in ids.iter().zip(results.iter()) {
            let own = format!("<stanza-id xmlns='urn:xmpp:sid:0' id='{id}' by='{owner}'/>");
            assert_eq!(r.matches(&own).count(), 1, "{r}");
            assert_eq!(r.matches("<stanza-id ").count(), 1, "{r}");
            assert!(!r.contains(&format!("by='{other}'")), "{r}");
        }
    }

    // Someone else's archive is not readable.
    a.send(&format!(
        "<iq type='set' id='x1' to='bob@localhost'><query xmlns='{MAM}'/></iq>"
    ))
    .await;
    let r = a.expect_element(&["<iq", "id='x1'"]).await;
    assert!(r.contains("type='error'") && r.contains("forbidden"), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn filters_and_paging() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("carol@localhost", "pc");
    let (mut a, mut b) = t.alice_and_bob().await;
    let mut c = RawClient::login(t.starttls, t.ca_pem(), "carol@localhost", "pc", "c1").await;
    c.available().await;

    for i in 0..5 {
        chat(&mut a, &mut b, "bob@localhost", &format!("b{i}")).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let middle = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    for i in 0..7 {
        chat(&mut a, &mut c, "carol@localhost", &format!("c{i}")).await;
        chat(&mut a, &mut b, "bob@localhost", &format!("b{}", i + 5)).await;
    }

    // with: bare and full JIDs.
    let (ids, fin, _) = mam_query(&mut a, "w1", &[("with", "carol@localhost")], "").await;
    assert_eq!(ids.len(), 7);
    assert!(fin.contains("<count>7</count>"), "{fin}");
    let (ids, _, _) = mam_query(&mut a, "w2", &[("with", "carol@localhost/c1")], "").await;
    assert!(ids.is_empty(), "sent to the bare JID: {ids:?}");
    let (ids, _, _) = mam_query(&mut b, "w3", &[("with", "alice@localhost/a1")], "").await;
    assert_eq!(ids.len(), 12);

    // start / end.
    let (_, _, r) = mam_query(&mut a, "t1", &[("end", &stamp(middle))], "").await;
    assert_eq!(r.len(), 5);
    assert!(r[4].contains(">b4</body>"));
    let (_, _, r) = mam_query(
        &mut a,
        "t2",
        &[("start", &stamp(middle)), ("with", "bob@localhost")],
        "",
    )
    .await;
    assert_eq!(r.len(), 7);
    assert!(r[0].contains(">b5</body>"));
    let (ids, _, _) = mam_query(
        &mut a,
        "t3",
        &[
            ("start", "2000-01-01T00:00:00Z"),
            ("end", "2000-01-02T00:00:00Z"),
        ],
        "",
    )
    .await;
    assert!(ids.is_empty());

    // Forward paging through Bob's conversation: no gaps, no duplicates.
    let (all, _, _) = mam_query(&mut a, "all", &[("with", "bob@localhost")], "").await;
    assert_eq!(all.len(), 12);
    let mut seen = Vec::new();
    let mut after = String::new();
    for n in 0.. {
        let rsm = if after.is_empty() {
            "<max>5</max>".to_owned()
        } else {
            format!("<max>5</max><after>{after}</after>")
        };
        let (ids, fin, _) =
            mam_query(&mut a, &format!("p{n}"), &[("with", "bob@localhost")], &rsm).await;
        assert!(fin.contains("<count>12</count>"), "{fin}");
        // RSM's index only where the server knows it without counting: the first page.
        assert_eq!(fin.contains("<first index='0'>"), n == 0, "{fin}");
        assert_eq!(fin.contains(" index="), n == 0, "{fin}");
        seen.extend(ids.iter().cloned());
        if fin.contains("complete='true'") {
            break;
        }
        assert_eq!(ids.len(), 5);
        after = between(&fin, "<last>", "</last>").to_owned();
    }
    assert_eq!(seen, all);

    // Backward from the end with an empty <before/>.
    let mut back = Vec::new();
    let mut before = String::new();
    for n in 0.. {
        let rsm = format!("<max>5</max><before>{before}</before>");
        let (ids, fin, _) =
            mam_query(&mut a, &format!("r{n}"), &[("with", "bob@localhost")], &rsm).await;
        // No page carries an index: the last one's (12 - 5) follows from the count, and
        // slixmpp stops paging backwards at a page whose index plus length is the count.
        assert!(!fin.contains(" index="), "{fin}");
        assert!(fin.contains("<count>12</count>"), "{fin}");
        let mut ids = ids;
        ids.extend(back);
        back = ids;
        if fin.contains("complete='true'") {
            break;
        }
        before = between(&fin, "<first", "</first>")
            .split_once('>')
            .unwrap()
            .1
            .to_owned();
    }
    assert_eq!(back, all);

    // An unknown id.
    a.ping("u0").await;
    a.buffer.clear();
    a.send(&format!("<iq type='set' id='u1'><query xmlns='{MAM}'><set xmlns='http://jabber.org/protocol/rsm'><after>nope</after></set></query></iq>")).await;
    let r = a.expect_element(&["<iq", "id='u1'"]).await;
    assert!(r.contains("item-not-found"), "{r}");

    // Preferences: never archive Carol.
    a.send(&format!("<iq type='set' id='pr1'><prefs xmlns='{MAM}' default='always'><always/><never><jid>carol@localhost</jid></never></prefs></iq>")).await;
    let r = a.expect_element(&["<iq", "id='pr1'"]).await;
    assert!(r.contains("<jid>carol@localhost</jid>"), "{r}");
    chat(&mut a, &mut c, "carol@localhost", "secret").await;
    let (ids, _, _) = mam_query(&mut a, "w9", &[("with", "carol@localhost")], "").await;
    assert_eq!(ids.len(), 7);
    a.send(&format!(
        "<iq type='get' id='pr2'><prefs xmlns='{MAM}'/></iq>"
    ))
    .await;
    let r = a.expect_element(&["<iq", "id='pr2'"]).await;
    assert!(
        r.contains("default='always'") && r.contains("carol@localhost"),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test]
async fn sent_carbon_carries_the_senders_archive_id() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let mut a2 = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a2").await;
    a2.available().await;
    a2.send("<iq type='set' id='cc'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        .await;
    a2.expect_element(&["<iq", "id='cc'"]).await;
    chat(&mut a, &mut b, "bob@localhost", "carbon-me").await;
    let carbon = a2.expect(">carbon-me</body>").await + &a2.expect("</sent>").await;
    let sid = between(
        &carbon,
        "<stanza-id xmlns='urn:xmpp:sid:0' id='",
        "' by='alice@localhost'",
    )
    .to_owned();
    assert!(!sid.is_empty() && !sid.contains('<'), "{carbon}");
    let (ids, _, _) = mam_query(&mut a2, "q", &[], "").await;
    assert_eq!(ids, [sid]);
    t.stop().await;
}

/// A message reaches online resources once its archive copies are queued, before they are
/// committed; a MAM query waits for what was queued before it. So a recipient that asks for
/// the archive the moment a message arrives (no round trip in between) finds that message,
/// and can page from its id.
#[tokio::test]
async fn a_message_just_received_is_in_the_archive() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let mut previous: Option<String> = None;
    for i in 0..20 {
        let body = format!("fresh-{i}");
        let got = chat(&mut a, &mut b, "bob@localhost", &body).await;
        let sid = between(&got, "<stanza-id xmlns='urn:xmpp:sid:0' id='", "'").to_owned();
        assert!(!sid.is_empty(), "{got}");
        b.buffer.clear();
        // The newest item, asked for at once.
        b.send(&format!(
            "<iq type='set' id='n{i}'><query xmlns='{MAM}' queryid='qn{i}'><set xmlns='http://jabber.org/protocol/rsm'><max>1</max><before/></set></query></iq>"
        ))
        .await;
        let all = b.expect(&format!("id='n{i}'")).await + &b.expect("</iq>").await;
        assert!(all.contains(&format!(">{body}</body>")), "{all}");
        assert!(
            between(&all, "<result ", ">").contains(&format!("id='{sid}'")),
            "{all}"
        );
        // Paging from the id of the message just received before it: the id is known.
        if let Some(prev) = previous.replace(sid.clone()) {
            b.buffer.clear();
            b.send(&format!(
                "<iq type='set' id='a{i}'><query xmlns='{MAM}' queryid='qa{i}'><set xmlns='http://jabber.org/protocol/rsm'><after>{prev}</after></set></query></iq>"
            ))
            .await;
            let all = b.expect(&format!("id='a{i}'")).await + &b.expect("</iq>").await;
            let fin = &all[all.rfind("<iq").unwrap()..];
            assert!(fin.contains("type='result'"), "{all}");
            assert!(all.contains(&format!("id='{sid}'")), "{all}");
        }
    }
    t.stop().await;
}

/// Receipts (XEP-0184), reactions (XEP-0444), replies (XEP-0461), corrections (XEP-0308),
/// retractions (XEP-0424) and markers (XEP-0333) are archived for both sides with their
/// payloads, as clients rebuilding a conversation from the archive expect; chat states
/// (XEP-0085) and messages hinted `no-permanent-store` (XEP-0334) are not.
#[tokio::test]
async fn im_payloads_are_archived_and_transient_ones_are_not() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let kept = [
        (
            "k1",
            "<body>original</body><request xmlns='urn:xmpp:receipts'/>",
        ),
        ("k2", "<received xmlns='urn:xmpp:receipts' id='k1'/>"),
        (
            "k3",
            "<reactions xmlns='urn:xmpp:reactions:0' id='k1'><reaction>👍</reaction></reactions>",
        ),
        (
            "k4",
            "<body>answer</body><reply xmlns='urn:xmpp:reply:0' to='alice@localhost/a1' id='k1'/>",
        ),
        (
            "k5",
            "<body>corrected</body><replace xmlns='urn:xmpp:message-correct:0' id='k1'/>",
        ),
        (
            "k6",
            "<retract xmlns='urn:xmpp:message-retract:1' id='k4'/>",
        ),
        ("k7", "<displayed xmlns='urn:xmpp:chat-markers:0' id='k1'/>"),
    ];
    let dropped = [
        (
            "d1",
            "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
        ),
        (
            "d2",
            "<body>ephemeral</body><no-permanent-store xmlns='urn:xmpp:hints'/>",
        ),
    ];
    for (id, payload) in kept.iter().chain(dropped.iter()) {
        a.send(&format!(
            "<message type='chat' to='bob@localhost' id='{id}'>{payload}</message>"
        ))
        .await;
        // Every one passes through live, payload intact.
        let m = b.expect_element(&[&format!("id='{id}'")]).await;
        let first = &payload[..payload.find(['>', ' ']).unwrap()];
        assert!(m.contains(first), "{first} in {m}");
    }
    for (who, c) in [("alice", &mut a), ("bob", &mut b)] {
        let (_, _, results) = mam_query(c, &format!("{who}-all"), &[], "").await;
        let text = results.concat();
        for (id, payload) in kept {
            assert!(text.contains(&format!("id='{id}'")), "{who}: {id} archived");
            let first = &payload[..payload.find(['>', ' ']).unwrap()];
            assert!(text.contains(first), "{who}: {first} archived");
        }
        for (id, _) in dropped {
            assert!(
                !text.contains(&format!("id='{id}'")),
                "{who}: {id} not archived"
            );
        }
        assert_eq!(results.len(), kept.len(), "{who}: {text}");
    }
    t.stop().await;
}

#[tokio::test]
async fn archives_can_be_turned_off() {
    let t = TestServer::start(|c| c.archive.enabled = false).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    chat(&mut a, &mut b, "bob@localhost", "unarchived").await;
    a.send("<iq type='get' id='d1' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let info = a.expect_element(&["id='d1'"]).await;
    assert!(info.contains("urn:xmpp:sid:0"), "{info}");
    assert!(!info.contains(MAM), "{info}");
    a.send(&format!(
        "<iq type='set' id='q1'><query xmlns='{MAM}' queryid='x'/></iq>"
    ))
    .await;
    let r = a.expect_element(&["id='q1'"]).await;
    assert!(
        r.contains("type='error'") && r.contains("service-unavailable"),
        "{r}"
    );
    assert!(!r.contains("<result"), "{r}");
    t.stop().await;
}

/// `archive.keep_days`: messages archived longer ago than that are deleted at start (and
/// hourly); newer ones, and everything else of the account, stay.
#[tokio::test]
async fn archive_retention_deletes_old_messages() {
    use strait_store::{AccountStore, ArchiveStore, ArchivedMessage, SqliteStore};
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let day = 86_400_000i64;
    let t = TestServer::start(|c| {
        c.archive.keep_days = 30;
        // An archive with history, written before the server starts.
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let store = SqliteStore::open(&c.store_path()).unwrap();
        strait_server::accounts::add_user(c, &store, "carol@localhost", "pc").unwrap();
        for (id, age_days) in [("old1", 400), ("old2", 31), ("new1", 29), ("new2", 1)] {
            let msg = ArchivedMessage {
                id: id.into(),
                with_bare: "bob@localhost".into(),
                with_full: "bob@localhost/b1".into(),
                stanza: format!("<message xmlns='jabber:client' type='chat' from='bob@localhost/b1' to='carol@localhost' id='{id}'><body>{id}</body></message>"),
                stamp_ms: now - age_days * day,
            };
            store.archive_append("carol@localhost", &msg).unwrap();
        }
        assert!(store.account_exists("carol@localhost").unwrap());
        store.close().unwrap();
    })
    .await;
    let mut c = RawClient::login(t.starttls, t.ca_pem(), "carol@localhost", "pc", "c1").await;
    // The expiry runs in the background at start: wait for it (bounded).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 0;
    let ids = loop {
        n += 1;
        let (ids, _fin, _) = mam_query(&mut c, &format!("r{n}"), &[], "").await;
        if ids.len() == 2 || tokio::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (_, _, results) = mam_query(&mut c, "final", &[], "").await;
    let bodies: Vec<&str> = results
        .iter()
        .map(|r| between(r, "<body>", "</body>"))
        .collect();
    assert_eq!(bodies, ["new1", "new2"]);
    t.stop().await;
}

/// `urn:xmpp:mam:2#extended`: archive metadata, the `ids` field, flipped pages, and unknown
/// fields refused as XEP-0313 asks (feature-not-implemented).
#[tokio::test]
async fn extended_metadata_ids_and_flipped_pages() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    a.send("<iq type='get' id='d1' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let r = a.expect_element(&["<iq", "id='d1'"]).await;
    assert!(r.contains("var='urn:xmpp:mam:2#extended'"), "{r}");
    a.send(&format!(
        "<iq type='get' id='md0'><metadata xmlns='{MAM}'/></iq>"
    ))
    .await;
    let r = a.expect_element(&["<iq", "id='md0'"]).await;
    assert!(r.contains(&format!("<metadata xmlns='{MAM}'/>")), "{r}");
    for body in ["one", "two", "three", "four"] {
        chat(&mut b, &mut a, "alice@localhost", body).await;
    }
    let (all, fin, _) = mam_query(&mut a, "q1", &[], "").await;
    assert_eq!(all.len(), 4, "{fin}");
    // Metadata: the first and the last.
    a.send(&format!(
        "<iq type='get' id='md1'><metadata xmlns='{MAM}'/></iq>"
    ))
    .await;
    let r = a.expect_element(&["<iq", "id='md1'"]).await;
    assert!(
        r.contains(&format!("<start id='{}' timestamp='", all[0])),
        "{r}"
    );
    assert!(
        r.contains(&format!("<end id='{}' timestamp='", all[3])),
        "{r}"
    );
    // ids: those asked for, in archive order, whatever the order asked.
    let ask = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field><field var='ids'><value>{}</value><value>{}</value></field></x>",
        all[2], all[0]
    );
    a.ping("s2").await;
    a.send(&format!(
        "<iq type='set' id='q2'><query xmlns='{MAM}' queryid='i2'>{ask}</query></iq>"
    ))
    .await;
    let got = a.expect("id='q2'").await + &a.expect("</iq>").await;
    let ids: Vec<&str> = got
        .split("<result ")
        .skip(1)
        .map(|p| between(p, " id='", "'"))
        .collect();
    assert_eq!(ids, [all[0].as_str(), all[2].as_str()], "{got}");
    assert!(
        got.contains("complete='true'") && got.contains("<count>2</count>"),
        "{got}"
    );
    // An id not in the archive, or ids with paging: refused.
    let bad_ids = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field><field var='ids'><value>{}</value><value>nope</value></field></x>",
        all[1]
    );
    a.send(&format!(
        "<iq type='set' id='q3'><query xmlns='{MAM}'>{bad_ids}</query></iq>"
    ))
    .await;
    let r = a.expect_element(&["<iq", "id='q3'"]).await;
    assert!(r.contains("<item-not-found"), "{r}");
    a.send(&format!("<iq type='set' id='q4'><query xmlns='{MAM}'>{ask}<set xmlns='http://jabber.org/protocol/rsm'><after>{}</after></set></query></iq>", all[0])).await;
    let r = a.expect_element(&["<iq", "id='q4'"]).await;
    assert!(
        r.contains("<bad-request") && r.contains("ids cannot be combined"),
        "{r}"
    );
    // Flipped: the same page (RSM first and last unchanged), sent newest first.
    let (plain, plain_fin, _) = mam_query(&mut a, "q5", &[], "<max>3</max>").await;
    a.ping("s6").await;
    a.send(&format!("<iq type='set' id='q6'><query xmlns='{MAM}' queryid='f6'><set xmlns='http://jabber.org/protocol/rsm'><max>3</max></set><flip-page/></query></iq>")).await;
    let got = a.expect("id='q6'").await + &a.expect("</iq>").await;
    let flipped: Vec<String> = got
        .split("<result ")
        .skip(1)
        .map(|p| between(p, " id='", "'").to_owned())
        .collect();
    let mut reversed = plain.clone();
    reversed.reverse();
    assert_eq!(flipped, reversed);
    let fin = &got[got.rfind("<fin").unwrap()..];
    assert_eq!(
        between(fin, "<first", "</first>"),
        between(&plain_fin, "<first", "</first>")
    );
    assert_eq!(between(fin, "<last>", "</last>"), plain[2]);
    // A field this server does not know.
    a.send(&format!("<iq type='set' id='q7'><query xmlns='{MAM}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field><field var='urn:example:xmpp:free-text-search'><value>two</value></field></x></query></iq>")).await;
    let r = a.expect_element(&["<iq", "id='q7'"]).await;
    assert!(r.contains("<feature-not-implemented"), "{r}");
    t.stop().await;
}
