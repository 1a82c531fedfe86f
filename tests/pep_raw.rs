//! PEP (XEP-0163 over XEP-0060), entity capabilities (XEP-0115), vcard-temp (XEP-0054) and
//! private storage (XEP-0049, and XEP-0223 over PEP) as raw bytes: what exactly a client sees. Every wait is bounded (`common::WAIT`).

use strait_tests::{RawClient, TestServer, caps_presence, caps_ver};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";

fn publish(id: &str, node: &str, item: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let mut x = format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item}'>{payload}</item></publish>"
    );
    if !options.is_empty() {
        x.push_str("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>");
        for (var, value) in options {
            x.push_str(&format!(
                "<field var='{var}'><value>{value}</value></field>"
            ));
        }
        x.push_str("</x></publish-options>");
    }
    x.push_str("</pubsub></iq>");
    x
}

fn get_items(id: &str, to: &str, node: &str, inner: &str, max: Option<u32>) -> String {
    let max = max.map(|m| format!(" max_items='{m}'")).unwrap_or_default();
    format!(
        "<iq type='get' id='{id}' to='{to}'><pubsub xmlns='{PUBSUB}'><items node='{node}'{max}>{inner}</items></pubsub></iq>"
    )
}

/// Sends and returns the answer with this id.
async fn ask(c: &mut RawClient, id: &str, xml: &str) -> String {
    c.send(xml).await;
    c.expect_element(&["<iq", &format!("id='{id}'")]).await
}

fn ok(r: &str) -> bool {
    r.contains("type='result'")
}

/// Alice and Bob see each other's presence (subscription both).
async fn befriend(a: &mut RawClient, b: &mut RawClient) {
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    b.expect_element(&["<presence", "type='subscribe'"]).await;
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    a.expect_element(&["<presence", "type='subscribed'"]).await;
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.expect_element(&["<presence", "type='subscribe'"]).await;
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    b.expect_element(&["<presence", "type='subscribed'"]).await;
    a.ping("f1").await;
    b.ping("f2").await;
}

#[tokio::test]
async fn publish_options_precondition_and_reconfiguration() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, _b) = t.alice_and_bob().await;
    let dl = "eu.siacs.conversations.axolotl.devicelist";
    let payload = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>";
    let r = ask(
        &mut a,
        "p1",
        &publish(
            "p1",
            dl,
            "current",
            payload,
            &[("pubsub#access_model", "open")],
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    assert!(r.contains("<item id='current'/>"), "{r}");
    // The same options again: fine.
    let r = ask(
        &mut a,
        "p2",
        &publish(
            "p2",
            dl,
            "current",
            payload,
            &[("pubsub#access_model", "open")],
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    // Different options: conflict / precondition-not-met (XEP-0060 §7.1.5).
    let r = ask(
        &mut a,
        "p3",
        &publish(
            "p3",
            dl,
            "current",
            payload,
            &[("pubsub#access_model", "presence")],
        ),
    )
    .await;
    assert!(r.contains("type='error'"), "{r}");
    assert!(
        r.contains("<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{r}"
    );
    assert!(
        r.contains("<precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/>"),
        "{r}"
    );
    // The node's configuration as a form.
    let r = ask(
        &mut a,
        "c1",
        &format!(
            "<iq type='get' id='c1'><pubsub xmlns='{OWNER}'><configure node='{dl}'/></pubsub></iq>"
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    assert!(r.contains("pubsub#node_config"), "{r}");
    assert!(r.contains("<value>open</value></field>"), "{r}");
    // Reconfigure, then the new options match.
    let r = ask(&mut a, "c2", &format!(
        "<iq type='set' id='c2'><pubsub xmlns='{OWNER}'><configure node='{dl}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#access_model'><value>presence</value></field><field var='pubsub#max_items'><value>max</value></field></x></configure></pubsub></iq>"
    )).await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut a,
        "p4",
        &publish(
            "p4",
            dl,
            "current",
            payload,
            &[
                ("pubsub#access_model", "presence"),
                ("pubsub#max_items", "max"),
            ],
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    // An invalid configuration value is refused.
    let r = ask(&mut a, "c3", &format!(
        "<iq type='set' id='c3'><pubsub xmlns='{OWNER}'><configure node='{dl}'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#access_model'><value>roster</value></field></x></configure></pubsub></iq>"
    )).await;
    assert!(r.contains("<not-acceptable"), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn multi_item_bundles_node_and_retrieval_by_id() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let node = "urn:xmpp:omemo:2:bundles";
    let opts = [("pubsub#access_model", "open"), ("pubsub#max_items", "max")];
    for dev in ["11", "22", "33"] {
        let id = format!("b{dev}");
        let payload =
            format!("<bundle xmlns='urn:xmpp:omemo:2'><spk id='{dev}'>KEY{dev}</spk></bundle>");
        let r = ask(&mut a, &id, &publish(&id, node, dev, &payload, &opts)).await;
        assert!(ok(&r), "{r}");
    }
    // Everyone may read an open node: all three items.
    let r = ask(
        &mut b,
        "g1",
        &get_items("g1", "alice@localhost", node, "", None),
    )
    .await;
    assert!(ok(&r), "{r}");
    for dev in ["11", "22", "33"] {
        assert!(r.contains(&format!("<item id='{dev}'>")), "{r}");
        assert!(r.contains(&format!("KEY{dev}")), "{r}");
    }
    // By item id.
    let r = ask(
        &mut b,
        "g2",
        &get_items("g2", "alice@localhost", node, "<item id='22'/>", None),
    )
    .await;
    assert!(
        r.contains("KEY22") && !r.contains("KEY11") && !r.contains("KEY33"),
        "{r}"
    );
    // The newest one.
    let r = ask(
        &mut b,
        "g3",
        &get_items("g3", "alice@localhost", node, "", Some(1)),
    )
    .await;
    assert!(r.contains("KEY33") && !r.contains("KEY11"), "{r}");
    // Republishing an id replaces it.
    let r = ask(
        &mut a,
        "b4",
        &publish(
            "b4",
            node,
            "11",
            "<bundle xmlns='urn:xmpp:omemo:2'>NEW11</bundle>",
            &opts,
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut b,
        "g4",
        &get_items("g4", "alice@localhost", node, "", None),
    )
    .await;
    assert!(r.contains("NEW11") && !r.contains("KEY11"), "{r}");
    assert_eq!(r.matches("<item id=").count(), 3, "{r}");
    // Retract one.
    let r = ask(&mut a, "r1", &format!("<iq type='set' id='r1'><pubsub xmlns='{PUBSUB}'><retract node='{node}'><item id='22'/></retract></pubsub></iq>")).await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut b,
        "g5",
        &get_items("g5", "alice@localhost", node, "", None),
    )
    .await;
    assert!(!r.contains("KEY22"), "{r}");
    // Only the owner publishes.
    let r = ask(&mut b, "x1", &format!(
        "<iq type='set' id='x1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='9'><bundle xmlns='urn:xmpp:omemo:2'/></item></publish></pubsub></iq>"
    )).await;
    assert!(r.contains("<forbidden"), "{r}");
    // disco#items lists the node.
    let r = ask(&mut b, "d1", "<iq type='get' id='d1' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert!(r.contains(&format!("node='{node}'")), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn access_models_and_node_deletion() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let payload = "<x xmlns='urn:test:secret'>s</x>";
    // Default access model: presence.
    assert!(ok(&ask(
        &mut a,
        "p1",
        &publish("p1", "urn:test:presence", "i", payload, &[])
    )
    .await));
    assert!(ok(&ask(
        &mut a,
        "p2",
        &publish(
            "p2",
            "urn:test:open",
            "i",
            payload,
            &[("pubsub#access_model", "open")]
        )
    )
    .await));
    assert!(ok(&ask(
        &mut a,
        "p3",
        &publish(
            "p3",
            "urn:test:white",
            "i",
            payload,
            &[("pubsub#access_model", "whitelist")]
        )
    )
    .await));
    // Bob is no contact: the presence node is closed to him, the open one is not.
    let r = ask(
        &mut b,
        "g1",
        &get_items("g1", "alice@localhost", "urn:test:presence", "", None),
    )
    .await;
    assert!(
        r.contains("type='error'") && r.contains("<not-authorized"),
        "{r}"
    );
    assert!(r.contains("<presence-subscription-required"), "{r}");
    let r = ask(
        &mut b,
        "g2",
        &get_items("g2", "alice@localhost", "urn:test:open", "", None),
    )
    .await;
    assert!(ok(&r) && r.contains("urn:test:secret"), "{r}");
    let r = ask(
        &mut b,
        "g3",
        &get_items("g3", "alice@localhost", "urn:test:white", "", None),
    )
    .await;
    assert!(
        r.contains("<not-allowed") && r.contains("<closed-node"),
        "{r}"
    );
    // Unknown node.
    let r = ask(
        &mut b,
        "g4",
        &get_items("g4", "alice@localhost", "urn:test:none", "", None),
    )
    .await;
    assert!(r.contains("<item-not-found"), "{r}");
    // As a contact, Bob reads the presence node; the whitelist stays the owner's.
    befriend(&mut a, &mut b).await;
    let r = ask(
        &mut b,
        "g5",
        &get_items("g5", "alice@localhost", "urn:test:presence", "", None),
    )
    .await;
    assert!(ok(&r) && r.contains("urn:test:secret"), "{r}");
    let r = ask(
        &mut b,
        "g6",
        &get_items("g6", "alice@localhost", "urn:test:white", "", None),
    )
    .await;
    assert!(r.contains("<closed-node"), "{r}");
    // The owner reads everything (no `to`).
    let r = ask(
        &mut a,
        "g7",
        &get_items("g7", "alice@localhost", "urn:test:white", "", None)
            .replace(" to='alice@localhost'", ""),
    )
    .await;
    assert!(ok(&r) && r.contains("urn:test:secret"), "{r}");
    // Deletion: gone for everyone; only the owner may delete.
    let del = |id: &str| {
        format!(
            "<iq type='set' id='{id}'><pubsub xmlns='{OWNER}'><delete node='urn:test:open'/></pubsub></iq>"
        )
    };
    let r = ask(
        &mut b,
        "d0",
        &del("d0").replace("type='set'", "type='set' to='alice@localhost'"),
    )
    .await;
    assert!(r.contains("<forbidden"), "{r}");
    let r = ask(&mut a, "d1", &del("d1")).await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut b,
        "g8",
        &get_items("g8", "alice@localhost", "urn:test:open", "", None),
    )
    .await;
    assert!(r.contains("<item-not-found"), "{r}");
    let r = ask(&mut a, "d2", &del("d2")).await;
    assert!(r.contains("<item-not-found"), "{r}");
    t.stop().await;
}

#[tokio::test]
async fn notifications_follow_caps_plus_notify() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    befriend(&mut a, &mut b).await;
    let features = [
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "urn:test:notify1+notify",
    ];
    caps_presence(&mut b, &caps_ver(&features), &features, true, "").await;
    b.ping("caps-settled").await;
    let payload = "<tune xmlns='urn:test:notify1'>first</tune>";
    assert!(ok(&ask(
        &mut a,
        "p1",
        &publish("p1", "urn:test:notify1", "t1", payload, &[])
    )
    .await));
    let ev = b.expect_element(&["<message", "type='headline'"]).await;
    assert!(ev.contains("from='alice@localhost'"), "{ev}");
    assert!(
        ev.contains("<event xmlns='http://jabber.org/protocol/pubsub#event'>"),
        "{ev}"
    );
    assert!(
        ev.contains("<items node='urn:test:notify1'><item id='t1'>"),
        "{ev}"
    );
    assert!(ev.contains(">first</tune>"), "{ev}");
    // A node Bob did not ask for is not pushed to him.
    assert!(ok(&ask(
        &mut a,
        "p2",
        &publish(
            "p2",
            "urn:test:other",
            "t1",
            "<o xmlns='urn:test:other'/>",
            &[]
        )
    )
    .await));
    b.expect_silence("urn:test:other", std::time::Duration::from_millis(300))
        .await;
    // A second resource of Bob with the same (now cached) caps: no query, the last item at once.
    let mut b2 = RawClient::login(t.starttls, t.ca_pem(), "bob@localhost", "pb", "b2").await;
    b2.send(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test:raw' ver='{}'/></presence>",
        caps_ver(&features)
    ))
    .await;
    let ev = b2.expect_element(&["<message", "urn:test:notify1"]).await;
    assert!(ev.contains(">first</tune>"), "{ev}");
    assert!(!ev.contains("disco#info"), "{ev}");
    t.stop().await;
}

#[tokio::test]
async fn last_item_when_caps_first_show_up_and_no_cache_poisoning() {
    let t = TestServer::start(|_| {}).await;
    t.add_user("carol@localhost", "pc");
    let (mut a, mut b) = t.alice_and_bob().await;
    befriend(&mut a, &mut b).await;
    let payload = "<nick xmlns='urn:test:last'>Alice</nick>";
    assert!(ok(&ask(
        &mut a,
        "p1",
        &publish("p1", "urn:test:last", "n1", payload, &[])
    )
    .await));
    // Bob's answer does not match the ver he advertised: it counts for his resource only.
    let claimed = caps_ver(&["http://jabber.org/protocol/caps"]);
    caps_presence(
        &mut b,
        &claimed,
        &["http://jabber.org/protocol/caps", "urn:test:last+notify"],
        true,
        "",
    )
    .await;
    let ev = b.expect_element(&["<message", "urn:test:last"]).await;
    assert!(
        ev.contains(">Alice</nick>") && ev.contains("<item id='n1'>"),
        "{ev}"
    );
    // Carol advertising the same ver is asked again (the forged answer was not cached).
    let mut c = RawClient::login(t.starttls, t.ca_pem(), "carol@localhost", "pc", "c1").await;
    caps_presence(
        &mut c,
        &claimed,
        &["http://jabber.org/protocol/caps"],
        true,
        "",
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn vcard_set_and_get_and_account_disco() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let r = ask(
        &mut a,
        "v0",
        "<iq type='get' id='v0'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(ok(&r) && r.contains("<vCard xmlns='vcard-temp'/>"), "{r}");
    let r = ask(&mut a, "v1", "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard></iq>").await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut b,
        "v2",
        "<iq type='get' id='v2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(ok(&r) && r.contains("<FN>Alice Liddell</FN>"), "{r}");
    // Nobody else writes Alice's vCard.
    let r = ask(&mut b, "v3", "<iq type='set' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>").await;
    assert!(r.contains("<forbidden"), "{r}");
    let r = ask(
        &mut a,
        "v4",
        "<iq type='get' id='v4' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(r.contains("<FN>Alice Liddell</FN>"), "{r}");
    // XEP-0153: the vcard-temp:x:update hash in presence reaches contacts untouched.
    befriend(&mut a, &mut b).await;
    a.send("<presence><x xmlns='vcard-temp:x:update'><photo>01b87fcd030b72895ff8e88db57ec525450f000d</photo></x></presence>").await;
    let p = b
        .expect_element(&["<presence", "vcard-temp:x:update"])
        .await;
    assert!(
        p.contains("<photo>01b87fcd030b72895ff8e88db57ec525450f000d</photo>"),
        "{p}"
    );
    // Discovery: the account is a PEP service; the server does vcard-temp.
    let r = ask(&mut b, "d1", "<iq type='get' id='d1' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        r.contains("category='account'") && r.contains("type='registered'"),
        "{r}"
    );
    assert!(
        r.contains("category='pubsub'") && r.contains("type='pep'"),
        "{r}"
    );
    assert!(
        r.contains("http://jabber.org/protocol/pubsub#publish-options"),
        "{r}"
    );
    let r = ask(&mut b, "d2", "<iq type='get' id='d2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(r.contains("var='vcard-temp'"), "{r}");
    t.stop().await;
}

const PRIVATE: &str = "jabber:iq:private";

fn private(id: &str, ty: &str, to: Option<&str>, inner: &str) -> String {
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    format!("<iq type='{ty}' id='{id}'{to}><query xmlns='{PRIVATE}'>{inner}</query></iq>")
}

#[tokio::test]
async fn private_xml_storage_is_the_owners_alone() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    // Nothing stored yet: the empty element asked for comes back.
    let r = ask(
        &mut a,
        "p0",
        &private("p0", "get", None, "<storage xmlns='storage:bookmarks'/>"),
    )
    .await;
    assert!(ok(&r), "{r}");
    assert!(
        r.contains("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"),
        "{r}"
    );
    // Stored, and re-serialized canonically (never the client's bytes).
    let bookmarks = "<storage xmlns=\"storage:bookmarks\"><conference autojoin=\"true\" jid=\"room@muc.localhost\" name=\"R &amp; D\"><nick>al</nick></conference></storage>";
    let r = ask(&mut a, "p1", &private("p1", "set", None, bookmarks)).await;
    assert!(ok(&r), "{r}");
    // Two namespaces in one set, and a child with the same namespace twice.
    let r = ask(
        &mut a,
        "p2",
        &private(
            "p2",
            "set",
            Some("alice@localhost"),
            "<prefs xmlns='x:prefs'><a>1</a></prefs><prefs xmlns='x:prefs'><b>2</b></prefs><note xmlns='storage:rosternotes'><note jid='bob@localhost'>met at the fair</note></note>",
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    // Another resource of Alice's reads them back, one namespace at a time.
    let mut a2 =
        strait_tests::RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a2").await;
    let r = ask(
        &mut a2,
        "p3",
        &private("p3", "get", None, "<storage xmlns='storage:bookmarks'/>"),
    )
    .await;
    assert!(
        r.contains("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'><conference autojoin='true' jid='room@muc.localhost' name='R &amp; D'><nick>al</nick></conference></storage></query>"),
        "{r}"
    );
    assert!(!r.contains("x:prefs"), "{r}");
    let r = ask(
        &mut a2,
        "p4",
        &private("p4", "get", None, "<prefs xmlns='x:prefs'/>"),
    )
    .await;
    assert!(
        r.contains(
            "<prefs xmlns='x:prefs'><a>1</a></prefs><prefs xmlns='x:prefs'><b>2</b></prefs></query>"
        ),
        "{r}"
    );
    // Bob can neither read nor write Alice's, and has none of his own.
    for (id, ty) in [("p5", "get"), ("p6", "set")] {
        let inner = if ty == "get" {
            "<storage xmlns='storage:bookmarks'/>"
        } else {
            "<storage xmlns='storage:bookmarks'><conference jid='evil@muc.localhost'/></storage>"
        };
        let r = ask(&mut b, id, &private(id, ty, Some("alice@localhost"), inner)).await;
        assert!(
            r.contains("type='error'") && r.contains("<forbidden"),
            "{r}"
        );
        assert!(!r.contains("room@muc.localhost"), "{r}");
    }
    let r = ask(
        &mut b,
        "p7",
        &private("p7", "get", None, "<storage xmlns='storage:bookmarks'/>"),
    )
    .await;
    assert!(
        r.contains("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"),
        "{r}"
    );
    // Bad requests, each with its reason; none of them changes what is stored.
    for (id, ty, inner, why) in [
        ("e1", "get", "", "needs a child element"),
        ("e2", "set", "", "needs a child element"),
        ("e3", "set", "<storage><x/></storage>", "reserved"),
        (
            "e4",
            "set",
            "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>",
            "reserved",
        ),
        ("e5", "set", "<query xmlns='jabber:client'/>", "reserved"),
        (
            "e6",
            "get",
            "<a xmlns='x:a'/><b xmlns='x:b'/>",
            "one namespace at a time",
        ),
        (
            "e7",
            "set",
            "<storage xmlns='storage:bookmarks'/><query xmlns='jabber:iq:private'/>",
            "reserved",
        ),
    ] {
        let r = ask(&mut a, id, &private(id, ty, None, inner)).await;
        assert!(
            r.contains("type='error'") && r.contains("<not-acceptable"),
            "{id}: {r}"
        );
        assert!(r.contains(why), "{id}: {r}");
    }
    let r = ask(
        &mut a,
        "p8",
        &private("p8", "get", None, "<storage xmlns='storage:bookmarks'/>"),
    )
    .await;
    assert!(r.contains("jid='room@muc.localhost'"), "{r}");
    // An empty element clears its namespace.
    let r = ask(
        &mut a,
        "p9",
        &private("p9", "set", None, "<prefs xmlns='x:prefs'/>"),
    )
    .await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut a,
        "p10",
        &private("p10", "get", None, "<prefs xmlns='x:prefs'/>"),
    )
    .await;
    assert!(
        r.contains("<query xmlns='jabber:iq:private'><prefs xmlns='x:prefs'/></query>"),
        "{r}"
    );
    // The limit on namespaces: a set past it stores none of its namespaces.
    let many: String = (0..strait_server::features::private::MAX_NAMESPACES)
        .map(|i| format!("<n xmlns='x:n{i}'>{i}</n>"))
        .collect();
    let r = ask(&mut a, "q1", &private("q1", "set", None, &many)).await;
    assert!(
        r.contains("<resource-constraint") && r.contains("at most 64"),
        "{r}"
    );
    let r = ask(
        &mut a,
        "q2",
        &private("q2", "get", None, "<n xmlns='x:n0'/>"),
    )
    .await;
    assert!(r.contains("<n xmlns='x:n0'/></query>"), "{r}");
    // The server says it does this.
    let r = ask(&mut b, "d1", "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(r.contains("var='jabber:iq:private'"), "{r}");
    t.stop().await;
}

/// XEP-0223: private data in a PEP node with `persist_items` and the `whitelist` access model
/// (publish-options); the node's owner reads it back, nobody else does.
#[tokio::test]
async fn pep_private_storage_xep_0223() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    befriend(&mut a, &mut b).await;
    let opts = [
        ("pubsub#persist_items", "true"),
        ("pubsub#access_model", "whitelist"),
    ];
    let r = ask(
        &mut a,
        "x1",
        &publish(
            "x1",
            "storage:bookmarks",
            "current",
            "<storage xmlns='storage:bookmarks'><conference jid='room@muc.localhost'/></storage>",
            &opts,
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut a,
        "x2",
        &get_items("x2", "alice@localhost", "storage:bookmarks", "", None),
    )
    .await;
    assert!(ok(&r) && r.contains("jid='room@muc.localhost'"), "{r}");
    // A contact with presence access still cannot read it.
    let r = ask(
        &mut b,
        "x3",
        &get_items("x3", "alice@localhost", "storage:bookmarks", "", None),
    )
    .await;
    assert!(
        r.contains("type='error'") && !r.contains("room@muc.localhost"),
        "{r}"
    );
    // Publishing again with options that contradict the node's fails the precondition.
    let r = ask(
        &mut a,
        "x4",
        &publish(
            "x4",
            "storage:bookmarks",
            "current",
            "<storage xmlns='storage:bookmarks'/>",
            &[("pubsub#access_model", "open")],
        ),
    )
    .await;
    assert!(r.contains("precondition-not-met"), "{r}");
    let r = ask(
        &mut a,
        "x5",
        &get_items("x5", "alice@localhost", "storage:bookmarks", "", None),
    )
    .await;
    assert!(r.contains("jid='room@muc.localhost'"), "{r}");
    t.stop().await;
}

/// Publishes an avatar as a client does (XEP-0084): the image (base64) as item `id` of the
/// data node, then `infos` in the metadata node, both with `options`; both must succeed.
async fn publish_avatar(
    c: &mut RawClient,
    tag: &str,
    id: &str,
    data_b64: &str,
    infos: &str,
    options: &[(&str, &str)],
) {
    let data = format!("<data xmlns='urn:xmpp:avatar:data'>{data_b64}</data>");
    let d = format!("{tag}d");
    let r = ask(
        c,
        &d,
        &publish(&d, "urn:xmpp:avatar:data", id, &data, options),
    )
    .await;
    assert!(ok(&r), "{r}");
    let meta = format!("<metadata xmlns='urn:xmpp:avatar:metadata'>{infos}</metadata>");
    let m = format!("{tag}m");
    let r = ask(
        c,
        &m,
        &publish(&m, "urn:xmpp:avatar:metadata", id, &meta, options),
    )
    .await;
    assert!(ok(&r), "{r}");
}

const HELLO_SHA1: &str = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";
const WORLD_SHA1: &str = "7c211433f02071597741e6ff5a8ea34789abbf43";
const SECRET_SHA1: &str = "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4";

/// XEP-0398: a vCard photo becomes the PEP avatar, an open PEP avatar becomes the vCard photo,
/// and presence carries the hash. (SHA-1 values from Python's hashlib.)
#[tokio::test]
async fn avatar_conversion_both_ways_and_presence_hash() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    befriend(&mut a, &mut b).await;
    let r = ask(&mut a, "d0", "<iq type='get' id='d0' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(r.contains("var='urn:xmpp:pep-vcard-conversion:0'"), "{r}");
    // vCard to PEP.
    let r = ask(&mut a, "v1", "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVs\nbG8=</BINVAL></PHOTO></vCard></iq>").await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut b,
        "g1",
        &get_items(
            "g1",
            "alice@localhost",
            "urn:xmpp:avatar:metadata",
            "",
            None,
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    assert!(
        r.contains(&format!("id='{HELLO_SHA1}'"))
            && r.contains("bytes='5'")
            && r.contains("type='image/png'"),
        "{r}"
    );
    let r = ask(
        &mut b,
        "g2",
        &get_items("g2", "alice@localhost", "urn:xmpp:avatar:data", "", None),
    )
    .await;
    assert!(
        r.contains(&format!("<item id='{HELLO_SHA1}'>")) && r.contains(">aGVsbG8=</data>"),
        "{r}"
    );
    // Presence carries the hash; a client's own <photo/> is left alone.
    a.send("<presence><show>away</show></presence>").await;
    let p = b.expect_element(&["<presence", ">away</show>"]).await;
    assert!(p.contains(&format!("<photo>{HELLO_SHA1}</photo>")), "{p}");
    a.send("<presence><show>dnd</show><x xmlns='vcard-temp:x:update'><photo/></x></presence>")
        .await;
    let p = b.expect_element(&["<presence", ">dnd</show>"]).await;
    assert!(p.contains("<photo/>") && !p.contains(HELLO_SHA1), "{p}");
    // PEP to vCard: an open avatar replaces the photo, and the rest of the vCard stays.
    let open = [("pubsub#access_model", "open")];
    let infos = format!(
        "<info id='{WORLD_SHA1}' bytes='5' type='image/jpeg' url='https://example.org/a.jpg'/><info id='{WORLD_SHA1}' bytes='5' type='image/jpeg'/>"
    );
    publish_avatar(&mut a, "w", WORLD_SHA1, "d29ybGQ=", &infos, &open).await;
    let r = ask(
        &mut b,
        "v2",
        "<iq type='get' id='v2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        r.contains("<FN>Alice</FN>")
            && r.contains("<TYPE>image/jpeg</TYPE><BINVAL>d29ybGQ=</BINVAL>"),
        "{r}"
    );
    assert!(!r.contains("aGVsbG8="), "{r}");
    a.send("<presence><show>chat</show></presence>").await;
    let p = b.expect_element(&["<presence", ">chat</show>"]).await;
    assert!(p.contains(&format!("<photo>{WORLD_SHA1}</photo>")), "{p}");
    // Metadata whose id is not the image's SHA-1 changes nothing.
    let infos = format!("<info id='{HELLO_SHA1}' bytes='6' type='image/png'/>");
    publish_avatar(&mut a, "x", HELLO_SHA1, "c2VjcmV0", &infos, &open).await;
    let r = ask(
        &mut b,
        "v3",
        "<iq type='get' id='v3' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        r.contains("<BINVAL>d29ybGQ=</BINVAL>") && !r.contains("c2VjcmV0"),
        "{r}"
    );
    // Empty metadata: the avatar is gone from the vCard too.
    let r = ask(
        &mut a,
        "p5",
        &publish(
            "p5",
            "urn:xmpp:avatar:metadata",
            "none",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            &open,
        ),
    )
    .await;
    assert!(ok(&r), "{r}");
    let r = ask(
        &mut b,
        "v4",
        "<iq type='get' id='v4' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(r.contains("<FN>Alice</FN>") && !r.contains("<PHOTO"), "{r}");
    a.send("<presence><show>xa</show></presence>").await;
    let p = b.expect_element(&["<presence", ">xa</show>"]).await;
    assert!(!p.contains("<photo>"), "{p}");
    t.stop().await;
}

/// XEP-0398 §6: an avatar published for contacts only does not become public in the vCard.
#[tokio::test]
async fn avatar_for_contacts_only_stays_out_of_the_vcard() {
    let t = TestServer::start(|_| {}).await;
    let (mut a, mut b) = t.alice_and_bob().await;
    let infos = format!("<info id='{SECRET_SHA1}' bytes='6' type='image/png'/>");
    publish_avatar(&mut a, "s", SECRET_SHA1, "c2VjcmV0", &infos, &[]).await;
    let r = ask(
        &mut b,
        "v1",
        "<iq type='get' id='v1' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    )
    .await;
    assert!(
        ok(&r) && !r.contains("c2VjcmV0") && !r.contains("<PHOTO"),
        "{r}"
    );
    t.stop().await;
}
