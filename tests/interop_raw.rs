//! The interop layer on the wire, raw bytes against a running server: a provider's users
//! log in with tokens it signed (SASL OAUTHBEARER), and the boundary policy holds between
//! them and the platform's users (consent, the agreement's status and scopes, end-to-end
//! encryption, rates, the origin stamp).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ring::signature::KeyPair;
use std::sync::Arc;
use std::time::Duration;
use strait_server::interop::boundary::FALLBACK;
use strait_server::interop::registry::{self, Actor};
use strait_server::server::ServerState;
use strait_store::{Provider, ProviderStatus, Scope};
use strait_tests::{RawClient, TestServer, between, caps_presence, caps_ver};

const OP: Actor<'static> = Actor {
    name: "test-operator",
    now_ms: 1,
};

/// A provider's signing key (Ed25519) and its registered key set.
struct ProviderKey {
    pkcs8: Vec<u8>,
    jwks: String,
}

impl ProviderKey {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = B64URL.encode(pair.public_key().as_ref());
        ProviderKey {
            pkcs8: pkcs8.as_ref().to_vec(),
            jwks: format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1"}}]}}"#),
        }
    }

    fn token(&self, iss: &str, sub: &str, exp_in: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("k1".into());
        let claims =
            serde_json::json!({"iss": iss, "aud": "localhost", "sub": sub, "exp": now + exp_in});
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8),
        )
        .unwrap()
    }
}

fn state(t: &TestServer) -> &Arc<ServerState> {
    t.server.as_ref().unwrap().state()
}

/// Registers an active provider with enlistment, and makes the running server read it.
async fn provider(t: &TestServer, id: &str, domain: &str, key: &ProviderKey) -> Provider {
    let st = state(t);
    let mut p = Provider::new(id, &format!("{id} chat"), vec![domain.into()]);
    p.issuer = Some(format!("https://{domain}"));
    p.jwks = Some(key.jwks.clone());
    registry::add(&st.config, &*st.store, &p, OP).unwrap();
    registry::accept_terms(&*st.store, id, "2024-03", "Jo Signer", OP).unwrap();
    let p = registry::set_status(&*st.store, id, ProviderStatus::Active, "", OP).unwrap();
    reload(t).await;
    p
}

async fn reload(t: &TestServer) {
    strait_server::interop::refresh(state(t), -1).await;
}

/// The OAUTHBEARER exchange with `token` on a stream whose features offered it; returns the
/// server's last answer (`<success…>`, or the failure after the error challenge).
async fn oauthbearer(c: &mut RawClient, token: &str) -> String {
    let msg = format!("n,,\x01host=localhost\x01auth=Bearer {token}\x01\x01");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='OAUTHBEARER'>{}</auth>",
        B64.encode(msg)
    ))
    .await;
    let r = c.expect_one_of(&["</success>", "/>", "</challenge>"]).await;
    if !r.contains("<challenge") {
        return r;
    }
    // RFC 7628 §3.2.2: an error challenge, answered by a dummy 0x01, then the failure.
    let json = B64.decode(between(&r, "'>", "</challenge>")).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["status"], "invalid_token", "{json}");
    c.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AQ==</response>")
        .await;
    c.expect("</failure>").await
}

/// STARTTLS on the provider's domain, then [`oauthbearer`].
async fn bearer(t: &TestServer, domain: &str, token: &str) -> (RawClient, String) {
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let features = c.starttls(domain).await;
    assert!(
        features.contains("<mechanism>OAUTHBEARER</mechanism>") && !features.contains("SCRAM"),
        "{features}"
    );
    let r = oauthbearer(&mut c, token).await;
    (c, r)
}

async fn enlisted(t: &TestServer, key: &ProviderKey, domain: &str, user: &str) -> RawClient {
    let (mut c, r) = bearer(
        t,
        domain,
        &key.token(&format!("https://{domain}"), user, 300),
    )
    .await;
    assert!(r.contains("<success"), "{r}");
    let jid = c.bind(domain, "phone").await;
    assert_eq!(jid, format!("{}@{domain}/phone", user.to_lowercase()));
    c.available().await;
    c
}

const OMEMO: &str = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='7'><key rid='9'>AAAA</key><iv>AAAAAAAAAAAAAAAA</iv></header><payload>AAAA</payload></encrypted>";

/// An OMEMO-shaped chat message to `to`.
fn omemo_to(to: &str, id: &str) -> String {
    format!("<message to='{to}' id='{id}' type='chat'>{OMEMO}</message>")
}

/// The consent IQ's payload that turns third-party chats on and allows acme.
const ALLOW_ACME: &str = "<consent xmlns='urn:strait:interop:0' enabled='true'><provider id='acme' allowed='true'/></consent>";

async fn consent(c: &mut RawClient, id: &str, xml: &str) -> String {
    c.send(&format!("<iq type='set' id='{id}'>{xml}</iq>"))
        .await;
    c.expect_element(&[&format!("id='{id}'")]).await
}

#[tokio::test]
async fn enlisted_users_log_in_with_provider_signed_tokens() {
    let t = TestServer::start(|_| {}).await;
    let key = ProviderKey::new();
    provider(&t, "acme", "acme.example", &key).await;

    // The first login makes the account; its address is sub@the provider's domain.
    let mut bob = enlisted(&t, &key, "acme.example", "Bob").await;
    assert!(state(&t).store.account_exists("bob@acme.example").unwrap());
    let pong = bob.ping("p1").await;
    assert!(pong.contains("type='result'"), "{pong}");
    drop(bob);
    enlisted(&t, &key, "acme.example", "bob").await; // again, same account

    // Direct TLS (XEP-0368) to the provider's domain: its own certificate, the same login.
    let mut c = RawClient::connect_direct(t.direct, t.ca_pem(), "acme.example").await;
    let token = key.token("https://acme.example", "carol", 300);
    assert!(bearer_direct(&mut c, &token).await.contains("<success"));

    // Refusals, each saying why.
    let iss = "https://acme.example";
    for (token, why) in [
        (key.token(iss, "bob", -600), "ExpiredSignature"),
        (
            key.token("https://evil.example", "bob", 300),
            "InvalidIssuer",
        ),
        (
            ProviderKey::new().token(iss, "bob", 300),
            "InvalidSignature",
        ),
        ("not.a.jwt".to_string(), "invalid token"),
    ] {
        let (_, r) = bearer(&t, "acme.example", &token).await;
        assert!(
            r.contains("<not-authorized/>") && r.contains(why),
            "{why}: {r}"
        );
    }
    // The platform's password mechanisms are not offered on a provider domain, nor tokens
    // on the platform's own.
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.starttls("acme.example").await;
    let r = c.scram_sha256("bob", "x").await;
    assert!(r.contains("<invalid-mechanism/>"), "{r}");
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    let f = c.starttls("localhost").await;
    assert!(!f.contains("OAUTHBEARER"), "{f}");
    // A domain of no provider is unknown.
    let mut c = RawClient::connect(t.starttls, t.ca_pem()).await;
    c.send("<?xml version='1.0'?><stream:stream to='nobody.example' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").await;
    assert!(c.read_to_close().await.contains("host-unknown"));
    t.stop().await;
}

#[tokio::test]
async fn the_boundary_policy_holds_between_platform_and_provider_users() {
    let t = TestServer::start(|_| {}).await;
    let key = ProviderKey::new();
    provider(&t, "acme", "acme.example", &key).await;
    t.add_user("alice@localhost", "pa");
    t.add_user("carol@localhost", "pc");
    let mut alice = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    alice.available().await;
    let mut bob = enlisted(&t, &key, "acme.example", "bob").await;

    // Alice has not opted in: nothing reaches her, and bob learns why.
    bob.send(&format!(
        "<message to='alice@localhost' id='m1' type='chat'>{OMEMO}</message>"
    ))
    .await;
    let e = bob.expect_element(&["id='m1'"]).await;
    assert!(
        e.contains("type='error'")
            && e.contains("<not-allowed")
            && e.contains("does not accept chats from acme chat (acme)"),
        "{e}"
    );
    // The consent IQ: providers on offer, then alice's choice.
    alice
        .send("<iq type='get' id='c0'><consent xmlns='urn:strait:interop:0'/></iq>")
        .await;
    let r = alice.expect_element(&["id='c0'"]).await;
    assert!(
        r.contains("enabled='false'")
            && r.contains("<provider id='acme' name='acme chat' status='active' allowed='false'/>"),
        "{r}"
    );
    let r = consent(&mut alice, "c1", "<consent xmlns='urn:strait:interop:0' enabled='true'><provider id='nope' allowed='true'/></consent>").await;
    assert!(
        r.contains("<item-not-found") && r.contains("no provider nope"),
        "{r}"
    );
    let r = consent(&mut alice, "c2", "<consent xmlns='urn:strait:interop:0' enabled='true' inbox='combined'><provider id='acme' allowed='true'/></consent>").await;
    assert!(
        r.contains("type='result'")
            && r.contains("enabled='true'")
            && r.contains("inbox='combined'")
            && r.contains("allowed='true'"),
        "{r}"
    );
    // Consent is the platform's users' own: an enlisted user cannot set it.
    let r = consent(
        &mut bob,
        "c3",
        "<consent xmlns='urn:strait:interop:0' enabled='true'/>",
    )
    .await;
    assert!(r.contains("<not-allowed"), "{r}");

    // Plaintext is refused, and nothing of it is kept (alice's archive stays empty).
    bob.send("<message to='alice@localhost' id='m2' type='chat'><body>hello in the clear</body></message>").await;
    let e = bob.expect_element(&["id='m2'"]).await;
    assert!(
        e.contains("<policy-violation") && e.contains("must be end-to-end encrypted"),
        "{e}"
    );
    // Ciphertext passes, stamped with its origin, with the server's fallback text instead of
    // the sender's, and without the origin stamp bob tried to forge.
    bob.send(&format!("<message to='alice@localhost' id='m3' type='chat'><body>psst, in the clear</body>{OMEMO}<origin xmlns='urn:strait:interop:0' provider='platform' name='Your bank'/><request xmlns='urn:xmpp:receipts'/></message>")).await;
    let m = alice.expect_element(&["id='m3'"]).await;
    assert!(
        m.contains("eu.siacs.conversations.axolotl") && m.contains("from='bob@acme.example/phone'"),
        "{m}"
    );
    assert!(
        !m.contains("in the clear") && !m.contains("Your bank"),
        "{m}"
    );
    assert!(
        m.contains(&format!("<body xmlns='jabber:client'>{FALLBACK}</body>")),
        "{m}"
    );
    assert_eq!(m.matches("<origin ").count(), 1, "{m}");
    assert!(
        m.contains("<origin xmlns='urn:strait:interop:0' provider='acme' name='acme chat'/>"),
        "{m}"
    );
    // Receipts and chat states cross as they are.
    alice.send("<message to='bob@acme.example/phone' id='r3'><received xmlns='urn:xmpp:receipts' id='m3'/></message>").await;
    bob.expect_element(&["id='r3'", "urn:xmpp:receipts"]).await;
    alice
        .send(&format!(
            "<message to='bob@acme.example' id='m4' type='chat'>{OMEMO}</message>"
        ))
        .await;
    let m = bob.expect_element(&["id='m4'"]).await;
    assert!(
        m.contains("from='alice@localhost/a1'") && !m.contains("<origin"),
        "{m}"
    );
    alice
        .send("<message to='bob@acme.example' id='m5' type='chat'><body>hi</body></message>")
        .await;
    assert!(
        alice
            .expect_element(&["id='m5'"])
            .await
            .contains("<policy-violation")
    );
    // OMEMO key bundles (PEP) are reachable across the boundary: alice publishes, bob reads.
    alice.send("<iq type='set' id='pub1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='eu.siacs.conversations.axolotl.devicelist'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='pubsub#access_model'><value>open</value></field></x></publish-options></pubsub></iq>").await;
    alice.expect_element(&["id='pub1'", "type='result'"]).await;
    bob.send("<iq type='get' id='get1' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='eu.siacs.conversations.axolotl.devicelist'/></pubsub></iq>").await;
    let r = bob.expect_element(&["id='get1'"]).await;
    assert!(
        r.contains("type='result'") && r.contains("<device id='7'/>"),
        "{r}"
    );

    // Carol never opted in: she cannot start a chat with bob either.
    let mut carol = RawClient::login(t.starttls, t.ca_pem(), "carol@localhost", "pc", "c1").await;
    // (A chat between two platform users, for the archive's selection by origin below.)
    carol
        .send("<message to='alice@localhost' id='k2' type='chat'><body>platform chat</body></message>")
        .await;
    alice.expect_element(&["id='k2'"]).await;
    carol
        .send(&format!(
            "<message to='bob@acme.example' id='k1' type='chat'>{OMEMO}</message>"
        ))
        .await;
    let e = carol.expect_element(&["id='k1'"]).await;
    assert!(
        e.contains("<not-allowed") && e.contains("are off for your account"),
        "{e}"
    );
    // Nor can bob subscribe to her presence.
    bob.send("<presence to='carol@localhost' type='subscribe' id='s1'/>")
        .await;
    let e = bob.expect_element(&["id='s1'"]).await;
    assert!(
        e.contains("type='error'") && e.contains("<not-allowed"),
        "{e}"
    );

    // Calls are not in the agreement's scopes.
    bob.send("<message to='alice@localhost' id='call1'><propose xmlns='urn:xmpp:jingle-message:0' id='x'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose></message>").await;
    let e = bob.expect_element(&["id='call1'"]).await;
    assert!(
        e.contains("<feature-not-implemented") && e.contains("scope calls"),
        "{e}"
    );

    // Suspension: bob's session closes at once and he cannot log in again; alice learns why
    // her message does not go.
    let st = state(&t);
    registry::set_status(
        &*st.store,
        "acme",
        ProviderStatus::Suspended,
        "abuse report 17",
        OP,
    )
    .unwrap();
    reload(&t).await;
    let closed = bob.read_to_close().await;
    assert!(
        closed.contains("<policy-violation") && closed.contains("acme is suspended"),
        "{closed}"
    );
    let (_, r) = bearer(
        &t,
        "acme.example",
        &key.token("https://acme.example", "bob", 300),
    )
    .await;
    assert!(r.contains("not active (suspended)"), "{r}");
    alice
        .send(&format!(
            "<message to='bob@acme.example' id='m6' type='chat'>{OMEMO}</message>"
        ))
        .await;
    let e = alice.expect_element(&["id='m6'"]).await;
    assert!(
        e.contains("<not-allowed") && e.contains("acme is suspended"),
        "{e}"
    );
    // Nothing refused was archived: alice's archive holds what crossed (m3, r3, m4).
    alice
        .send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='q1'/></iq>")
        .await;
    let archive = alice.expect("<fin").await;
    for id in ["'m3'", "'r3'", "'m4'"] {
        assert!(
            archive.contains(&format!("id={id}")),
            "{id} missing: {archive}"
        );
    }
    for id in ["'m1'", "'m2'", "'m5'", "'m6'", "'k1'", "'call1'"] {
        assert!(
            !archive.contains(&format!("id={id}")),
            "{id} archived: {archive}"
        );
    }
    assert!(!archive.contains("in the clear"), "{archive}");
    assert!(archive.contains("id='k2'"), "{archive}");
    // The third-party section: the archive selected by origin (a provider, or all of them).
    for (n, origin) in [(2, "acme"), (3, "*")] {
        alice
            .send(&format!("<iq type='set' id='q{n}'><query xmlns='urn:xmpp:mam:2' queryid='q{n}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='urn:strait:interop:0#origin'><value>{origin}</value></field></x></query></iq>"))
            .await;
        let section = alice.expect("<fin").await;
        for id in ["'m3'", "'r3'", "'m4'"] {
            assert!(
                section.contains(&format!("id={id}")),
                "{origin}: {id} missing: {section}"
            );
        }
        assert!(!section.contains("id='k2'"), "{origin}: {section}");
        alice.expect("</iq>").await;
    }
    alice
        .send("<iq type='set' id='q4'><query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='urn:strait:interop:0#origin'><value>nope</value></field></x></query></iq>")
        .await;
    let e = alice.expect_element(&["id='q4'"]).await;
    assert!(
        e.contains("<bad-request") && e.contains("no provider nope"),
        "{e}"
    );
    t.stop().await;
}

#[tokio::test]
async fn revoking_consent_stops_presence_already_granted() {
    let t = TestServer::start(|_| {}).await;
    let (mut alice, mut bob) = alice_and_acme_bob(&t).await;
    consent(&mut alice, "c1", ALLOW_ACME).await;
    // A mutual subscription, by hand.
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    alice
        .expect_element(&["type='subscribe'", "from='bob@acme.example'"])
        .await;
    alice.send("<presence to='bob@acme.example' type='subscribed'/><presence to='bob@acme.example' type='subscribe'/>").await;
    bob.expect_element(&["type='subscribe'", "from='alice@localhost'"])
        .await;
    bob.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    alice
        .send("<presence><status>here</status></presence>")
        .await;
    bob.expect_element(&[">here</status>"]).await;
    // Bob's presence carries caps asking for OMEMO device-list events (XEP-0115, XEP-0163).
    let features = [
        "http://jabber.org/protocol/caps",
        "urn:xmpp:omemo:2:devices+notify",
    ];
    caps_presence(
        &mut bob,
        &caps_ver(&features),
        &features,
        true,
        "<status>bob here</status>",
    )
    .await;
    alice.expect_element(&[">bob here</status>"]).await;
    // Device-list events reach bob while alice consents (the positive control).
    let publish = |n: u32| {
        format!(
            "<iq type='set' id='pub{n}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='{n}'/></devices></item></publish></pubsub></iq>"
        )
    };
    alice.send(&publish(76)).await;
    bob.expect_element(&["<device id='76'/>"]).await;
    // Alice takes acme off: presence stops both ways, though the subscriptions stand.
    consent(
        &mut alice,
        "c2",
        "<consent xmlns='urn:strait:interop:0'><provider id='acme' allowed='false'/></consent>",
    )
    .await;
    // (A ping consumes what arrived before its answer: each side pings only before the
    // other side is checked.)
    alice
        .send("<presence><status>gone quiet</status></presence>")
        .await;
    alice.ping("settle-a").await;
    bob.expect_silence("gone quiet", Duration::from_millis(300))
        .await;
    bob.send("<presence><status>still here</status></presence>")
        .await;
    bob.ping("settle-b").await;
    alice
        .expect_silence("still here", Duration::from_millis(300))
        .await;
    // And PEP events with it.
    alice.send(&publish(77)).await;
    alice.expect_element(&["id='pub77'"]).await;
    bob.expect_silence("device id='77'", Duration::from_millis(300))
        .await;
    t.stop().await;
}

async fn slot(c: &mut RawClient, id: &str, to: &str, ctype: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}' to='{to}'><request xmlns='urn:xmpp:http:upload:0' filename='f' size='10' content-type='{ctype}'/></iq>"
    ))
    .await;
    c.expect_element(&[&format!("id='{id}'")]).await
}

#[tokio::test]
async fn provider_users_upload_through_the_platform_within_their_scopes() {
    let t = TestServer::start(|_| {}).await;
    let key = ProviderKey::new();
    let mut p = provider(&t, "acme", "acme.example", &key).await; // scope: text only
    let mut bob = enlisted(&t, &key, "acme.example", "bob").await;
    // The service their domain lists is the platform's.
    bob.send("<iq type='get' id='d1' to='acme.example'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    let items = bob.expect_element(&["id='d1'"]).await;
    assert!(items.contains("jid='upload.localhost'"), "{items}");
    let r = slot(&mut bob, "u1", "upload.localhost", "image/jpeg").await;
    assert!(
        r.contains("<feature-not-implemented") && r.contains("scope media"),
        "{r}"
    );
    let st = state(&t);
    p.scopes = vec![Scope::Text, Scope::Media];
    registry::update(&st.config, &*st.store, &p, OP).unwrap();
    reload(&t).await;
    let r = slot(&mut bob, "u2", "upload.localhost", "image/jpeg").await;
    assert!(
        r.contains("type='result'") && r.contains("<put url='https://upload.localhost"),
        "{r}"
    );
    let r = slot(&mut bob, "u3", "upload.localhost", "application/pdf").await;
    assert!(r.contains("scope files"), "{r}");
    let r = slot(&mut bob, "u4", "upload.example.test", "image/jpeg").await;
    assert!(
        r.contains("<not-allowed") && r.contains("upload through upload.localhost"),
        "{r}"
    );
    // An operator removes an enlisted account like any other.
    drop(bob);
    let (jid, _) =
        strait_server::accounts::remove_user(&st.config, &*st.store, "Bob@acme.example").unwrap();
    assert_eq!(jid, "bob@acme.example");
    assert!(matches!(
        strait_server::accounts::remove_user(&st.config, &*st.store, "bob@nobody.example"),
        Err(strait_server::accounts::AccountError::UnknownDomain(..))
    ));
    t.stop().await;
}

#[tokio::test]
async fn rates_and_providers_apart() {
    let t = TestServer::start(|_| {}).await;
    let key = ProviderKey::new();
    let mut p = provider(&t, "acme", "acme.example", &key).await;
    let other = ProviderKey::new();
    provider(&t, "zeta", "zeta.example", &other).await;
    let st = state(&t);
    p.user_rate_per_sec = Some(2);
    p.scopes = vec![Scope::Text];
    registry::update(&st.config, &*st.store, &p, OP).unwrap();
    reload(&t).await;
    t.add_user("alice@localhost", "pa");
    let mut alice = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    alice.available().await;
    consent(&mut alice, "c1", ALLOW_ACME).await;
    let mut bob = enlisted(&t, &key, "acme.example", "bob").await;
    let mut zed = enlisted(&t, &other, "zeta.example", "zed").await;

    // Users of two providers do not reach each other through the platform.
    zed.send(&format!(
        "<message to='bob@acme.example' id='z1' type='chat'>{OMEMO}</message>"
    ))
    .await;
    let e = zed.expect_element(&["id='z1'"]).await;
    assert!(
        e.contains("<not-allowed") && e.contains("two different providers"),
        "{e}"
    );
    // Bob may send 2 messages a second; the burst's third is refused with a wait.
    for i in 0..3 {
        bob.send(&format!(
            "<message to='alice@localhost' id='b{i}' type='chat'>{OMEMO}</message>"
        ))
        .await;
    }
    let e = bob.expect_element(&["id='b2'"]).await;
    assert!(
        e.contains("type='wait'")
            && e.contains("<resource-constraint")
            && e.contains("more than 2 stanzas a second"),
        "{e}"
    );
    // Presence counts too: a subscription request right after is refused the same way.
    bob.send("<presence to='alice@localhost' type='subscribe' id='sp1'/>")
        .await;
    let e = bob.expect_element(&["id='sp1'"]).await;
    assert!(
        e.contains("type='error'") && e.contains("<resource-constraint"),
        "{e}"
    );
    alice.expect_element(&["id='b0'"]).await;
    alice.expect_element(&["id='b1'"]).await;
    alice
        .expect_silence("id='b2'", Duration::from_millis(300))
        .await;
    // A change made outside the running server (as `strait provider suspend` makes it)
    // reaches it by itself within a poll: zed's session closes.
    registry::set_status(&*st.store, "zeta", ProviderStatus::Suspended, "test", OP).unwrap();
    let closed = zed.read_to_close().await;
    assert!(closed.contains("zeta is suspended"), "{closed}");
    // The registry's audit log has every change, by whom.
    let log = st.store.provider_audit(Some("acme"), 10).unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["add", "terms", "activate", "update"]);
    assert!(log.iter().all(|e| e.actor == "test-operator"));
    t.stop().await;
}

/// A self-signed client certificate for a proxy, written to `dir`; returns (cert, key, pin).
fn proxy_identity(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pin = strait_server::tls::spki_pin(cert.der()).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, strait_server::tls::pin_hex(&pin))
}

async fn start_proxy(
    t: &TestServer,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> strait_proxy::Proxy {
    let tls = t.config().data_dir.join("tls");
    strait_proxy::Proxy::start(strait_proxy::ProxyConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_starttls: vec!["127.0.0.1:0".parse().unwrap()],
        // The proxy presents the provider domain's certificate to the apps (here the one the
        // platform's local CA made for it, which the test client trusts).
        app_cert: tls.join("acme.example.pem"),
        app_key: tls.join("acme.example.key"),
        upstream: t.direct.to_string(),
        upstream_ca: tls.join("ca.pem"),
        upstream_name: None,
        client_cert: cert.to_owned(),
        client_key: key.to_owned(),
        max_connections: 10,
    })
    .await
    .unwrap()
}

/// [`oauthbearer`] on a direct-TLS connection to acme.example.
async fn bearer_direct(c: &mut RawClient, token: &str) -> String {
    let f = c.open_stream("acme.example").await;
    assert!(f.contains("<mechanism>OAUTHBEARER</mechanism>"), "{f}");
    oauthbearer(c, token).await
}

#[tokio::test]
async fn a_provider_that_pins_its_proxy_admits_its_users_only_through_it() {
    let t = TestServer::start(|_| {}).await;
    let key = ProviderKey::new();
    let mut p = provider(&t, "acme", "acme.example", &key).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, ckey, pin) = proxy_identity(dir.path(), "proxy.acme.example");
    let st = state(&t);
    p.cert_pins = vec![pin];
    registry::update(&st.config, &*st.store, &p, OP).unwrap();
    reload(&t).await;
    let proxy = start_proxy(&t, &cert, &ckey).await;
    let token = |sub: &str| key.token("https://acme.example", sub, 300);

    // Through the registered proxy: the app's own login, stream and session, relayed.
    let mut bob =
        RawClient::connect_direct(proxy.local_addrs()[0], t.ca_pem(), "acme.example").await;
    let r = bearer_direct(&mut bob, &token("bob")).await;
    assert!(r.contains("<success"), "{r}");
    assert_eq!(
        bob.bind("acme.example", "phone").await,
        "bob@acme.example/phone"
    );
    assert!(bob.ping("p1").await.contains("type='result'"));

    // Through its STARTTLS listener: the proxy answers the opening (STARTTLS required),
    // then relays from the TLS handshake on.
    let via_starttls = proxy.local_addrs()[1];
    let mut dave = RawClient::connect(via_starttls, t.ca_pem()).await;
    let f = dave.starttls("acme.example").await;
    assert!(f.contains("<mechanism>OAUTHBEARER</mechanism>"), "{f}");
    let r = oauthbearer(&mut dave, &token("dave")).await;
    assert!(r.contains("<success"), "{r}");
    assert_eq!(
        dave.bind("acme.example", "tablet").await,
        "dave@acme.example/tablet"
    );
    // Anything but <starttls/> before TLS is refused there, and goes no further.
    let mut plain = RawClient::connect(via_starttls, t.ca_pem()).await;
    let f = plain.open_stream("acme.example").await;
    assert!(f.contains("<required/>"), "{f}");
    plain
        .send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
        .await;
    let r = plain.read_to_close().await;
    assert!(
        r.contains("<policy-violation") && r.contains("STARTTLS is required"),
        "{r}"
    );

    // Straight to the platform, or through a proxy whose key is not registered: refused.
    let mut direct = RawClient::connect_direct(t.direct, t.ca_pem(), "acme.example").await;
    let r = bearer_direct(&mut direct, &token("carol")).await;
    assert!(
        r.contains("<not-authorized/>") && r.contains("only through its registered proxy"),
        "{r}"
    );
    let (other_cert, other_key, _) = proxy_identity(dir.path(), "rogue.example");
    let rogue = start_proxy(&t, &other_cert, &other_key).await;
    let mut via_rogue =
        RawClient::connect_direct(rogue.local_addrs()[0], t.ca_pem(), "acme.example").await;
    let r = bearer_direct(&mut via_rogue, &token("carol")).await;
    assert!(r.contains("only through its registered proxy"), "{r}");
    // The platform's own users are not asked for anything new (the certificate request is
    // optional), over either port.
    t.add_user("alice@localhost", "pa");
    let mut alice = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    assert!(alice.ping("a1").await.contains("type='result'"));
    let mut alice2 = RawClient::connect_direct(t.direct, t.ca_pem(), "localhost").await;
    alice2.open_stream("localhost").await;
    assert!(
        alice2
            .scram_sha256("alice", "pa")
            .await
            .contains("<success")
    );
    proxy.shutdown().await;
    rogue.shutdown().await;
    t.stop().await;
}

/// The provider acme, the platform user alice online (not opted in) and acme's user bob
/// online, as the tests of the boundary's later additions start.
async fn alice_and_acme_bob(t: &TestServer) -> (RawClient, RawClient) {
    let key = ProviderKey::new();
    provider(t, "acme", "acme.example", &key).await;
    t.add_user("alice@localhost", "pa");
    let mut alice = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    alice.available().await;
    let bob = enlisted(t, &key, "acme.example", "bob").await;
    (alice, bob)
}

/// Blocks the JIDs with reports attached; returns the server's answer.
async fn block_with(c: &mut RawClient, id: &str, items: &str) -> String {
    c.send(&format!(
        "<iq type='set' id='{id}'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>"
    ))
    .await;
    c.expect_element(&[&format!("id='{id}'")]).await
}

fn report_item(jid: &str, reason: &str, inner: &str) -> String {
    format!(
        "<item jid='{jid}'><report xmlns='urn:xmpp:reporting:1' reason='{reason}'>{inner}</report></item>"
    )
}

#[tokio::test]
async fn a_platform_user_blocks_and_reports_a_provider_user() {
    use strait_store::{ReportFilter, ReportReason};
    let t = TestServer::start(|_| {}).await;
    let key = ProviderKey::new();
    provider(&t, "acme", "acme.example", &key).await;
    t.add_user("alice@localhost", "pa");
    let mut alice = RawClient::login(t.starttls, t.ca_pem(), "alice@localhost", "pa", "a1").await;
    alice.available().await;
    consent(&mut alice, "c1", ALLOW_ACME).await;
    let mut bob = enlisted(&t, &key, "acme.example", "bob").await;

    // The server advertises reports on blocks.
    alice
        .send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let d = alice.expect_element(&["id='d1'"]).await;
    assert!(d.contains("<feature var='urn:xmpp:reporting:1'/>"), "{d}");

    bob.send(&format!(
        "<message to='alice@localhost' id='m1' type='chat'>{OMEMO}</message>"
    ))
    .await;
    let m = alice.expect_element(&["id='m1'"]).await;
    let sid = between(&m, "<stanza-id xmlns='urn:xmpp:sid:0' id='", "'").to_owned();
    assert!(
        m.contains(&format!("id='{sid}' by='alice@localhost'/>")),
        "{m}"
    );
    let st = state(&t).store.clone();
    let blocked = || {
        let st = st.clone();
        move || st.blocklist("alice@localhost").unwrap()
    };

    // Reports the server cannot accept refuse the whole command: nothing is blocked.
    let bad = [
        (
            report_item("bob@acme.example", "urn:xmpp:reporting:rude", ""),
            "unknown report reason",
        ),
        (
            report_item(
                "bob@acme.example",
                "urn:xmpp:reporting:spam",
                &format!("<stanza-id xmlns='urn:xmpp:sid:0' by='bob@acme.example' id='{sid}'/>"),
            ),
            "own archive",
        ),
    ];
    for (i, (item, why)) in bad.iter().enumerate() {
        let r = block_with(&mut alice, &format!("bad{i}"), item).await;
        assert!(r.contains("<bad-request") && r.contains(why), "{r}");
    }
    assert!(blocked()().is_empty());

    // Block and report: one message the server archived, one id it never gave.
    let item = report_item(
        "bob@acme.example",
        "urn:xmpp:reporting:spam",
        &format!(
            "<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='{sid}'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='never-issued'/>\
             <text xmlns='urn:xmpp:reporting:1' xml:lang='en'>crypto scam, third time</text>"
        ),
    );
    let r = block_with(&mut alice, "b1", &item).await;
    assert!(r.contains("type='result'"), "{r}");
    assert_eq!(blocked()(), ["bob@acme.example"]);
    // The block holds across the boundary: bob learns nothing but service-unavailable.
    bob.send(&format!(
        "<message to='alice@localhost' id='m2' type='chat'>{OMEMO}</message>"
    ))
    .await;
    let e = bob.expect_element(&["id='m2'"]).await;
    assert!(e.contains("<service-unavailable"), "{e}");

    let reports = st.reports(&ReportFilter::default()).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(
        (
            r.reporter.as_str(),
            r.reported.as_str(),
            r.provider.as_deref()
        ),
        ("alice@localhost", "bob@acme.example", Some("acme"))
    );
    assert_eq!(r.reason, ReportReason::Spam);
    assert_eq!(r.text, "crypto scam, third time");
    assert_eq!(r.evidence.len(), 2);
    let seen = r.evidence[0].found.as_ref().expect("the archived message");
    assert_eq!(r.evidence[0].stanza_id, sid);
    assert_eq!(seen.from, "bob@acme.example/phone");
    assert!(seen.from_reported && seen.encrypted, "{seen:?}");
    assert_eq!(seen.origin.as_deref(), Some("acme"));
    assert!(r.evidence[1].found.is_none());
    assert_eq!(st.report_counts("acme", 0).unwrap().open, 1);

    // A day's allowance of reports: past it, the command is refused and nothing is blocked.
    for i in 0..49 {
        let mut extra = r.clone();
        extra.reported = format!("spammer{i}@acme.example");
        st.report_add(&extra).unwrap();
    }
    let two = format!(
        "{}{}",
        report_item("eve@acme.example", "urn:xmpp:reporting:abuse", ""),
        report_item("mallory@acme.example", "urn:xmpp:reporting:abuse", "")
    );
    let r = block_with(&mut alice, "b2", &two).await;
    assert!(
        r.contains("<policy-violation") && r.contains("at most 50 abuse reports a day"),
        "{r}"
    );
    assert_eq!(blocked()(), ["bob@acme.example"]);
    // A block without a report is never limited by it.
    let r = block_with(&mut alice, "b3", "<item jid='eve@acme.example'/>").await;
    assert!(r.contains("type='result'"), "{r}");
}

#[tokio::test]
async fn consent_changes_reach_the_boundary_despite_its_cache() {
    use strait_server::interop::consent::{self, ConsentChange};
    let t = TestServer::start(|_| {}).await;
    let (mut alice, mut bob) = alice_and_acme_bob(&t).await;
    let send = |id: &str| omemo_to("alice@localhost", id);

    // Refused (and the refusal's consent now cached), then allowed by alice's own IQ: the
    // very next message arrives.
    bob.send(&send("m1")).await;
    assert!(
        bob.expect_element(&["id='m1'"])
            .await
            .contains("<not-allowed")
    );
    consent(&mut alice, "c1", ALLOW_ACME).await;
    bob.send(&send("m2")).await;
    alice.expect_element(&["id='m2'"]).await;
    // Revoked by alice: the next message is refused.
    let off =
        "<consent xmlns='urn:strait:interop:0'><provider id='acme' allowed='false'/></consent>";
    consent(&mut alice, "c2", off).await;
    bob.send(&send("m3")).await;
    let e = bob.expect_element(&["id='m3'"]).await;
    assert!(e.contains("<not-allowed"), "{e}");
    assert_eq!(state(&t).interop.consents.len(), 1);

    // The operator allows it again from another process (`strait user consent` writes the
    // store): the running server's poll drops its cache within a second or so.
    let change = ConsentChange {
        allow: vec!["acme".into()],
        ..ConsentChange::default()
    };
    consent::change(&*state(&t).store, "alice@localhost", &change, 2).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("p{n}");
        bob.send(&send(&id)).await;
        let attr = format!("id='{id}'");
        let needles = [attr.as_str()];
        tokio::select! {
            _ = alice.expect_element(&needles) => break,
            e = bob.expect_element(&needles) => assert!(e.contains("<not-allowed"), "{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` on the metrics listener: (status line and headers, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: metrics\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` (as encoded) in an OpenMetrics text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_logins_crossings_refusals_and_reports() {
    let t = TestServer::start(|c| c.listen.metrics = vec!["127.0.0.1:0".parse().unwrap()]).await;
    let addr = t.server.as_ref().unwrap().metrics_addrs()[0];
    let (mut alice, mut bob) = alice_and_acme_bob(&t).await;
    // A wrong password too.
    let mut wrong = RawClient::connect(t.starttls, t.ca_pem()).await;
    wrong.starttls("localhost").await;
    assert!(
        wrong
            .scram_sha256("alice", "nope")
            .await
            .contains("<failure")
    );
    let to_alice = |id: &str| omemo_to("alice@localhost", id);
    bob.send(&to_alice("m1")).await;
    assert!(
        bob.expect_element(&["id='m1'"])
            .await
            .contains("<not-allowed")
    );
    consent(&mut alice, "c1", ALLOW_ACME).await;
    bob.send(&to_alice("m2")).await;
    alice.expect_element(&["id='m2'"]).await;
    alice
        .send("<message to='bob@acme.example' id='m3' type='chat'><body>plain</body></message>")
        .await;
    assert!(
        alice
            .expect_element(&["id='m3'"])
            .await
            .contains("<policy-violation")
    );
    let r = block_with(
        &mut alice,
        "b1",
        &report_item("bob@acme.example", "urn:xmpp:reporting:spam", ""),
    )
    .await;
    assert!(r.contains("type='result'"), "{r}");

    let (head, m) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(m.ends_with("# EOF\n"), "{m}");
    let v = |s: &str| sample(&m, s);
    assert_eq!(
        v(r#"strait_logins_total{mechanism="SCRAM-SHA-256",result="success"}"#),
        1.0
    );
    assert_eq!(
        v(r#"strait_logins_total{mechanism="SCRAM-SHA-256",result="not-authorized"}"#),
        1.0
    );
    assert_eq!(
        v(r#"strait_logins_total{mechanism="OAUTHBEARER",result="success"}"#),
        1.0
    );
    let crossed = |dir: &str, result: &str| {
        sample(
            &m,
            &format!(
                r#"strait_boundary_stanzas_total{{provider="acme",direction="{dir}",result="{result}"}}"#
            ),
        )
    };
    assert_eq!(crossed("in", "not-allowed"), 1.0);
    assert!(crossed("in", "admitted") >= 1.0);
    assert_eq!(crossed("out", "policy-violation"), 1.0);
    assert_eq!(v(r#"strait_abuse_reports_total{provider="acme"}"#), 1.0);
    assert!(v(r#"strait_client_stanzas_total{kind="message"}"#) >= 3.0);
    assert_eq!(v("strait_sessions"), 2.0);
    assert_eq!(
        v("strait_client_connections"),
        3.0,
        "alice, bob and the refused login"
    );
    assert_eq!(v(r#"strait_providers{status="active"}"#), 1.0);
    assert_eq!(v("strait_consent_cache_entries"), 1.0);
    // The store's backlog (the unit test of `ServerState::queue_detached` moves it): a few
    // archive copies at most on a server this quiet.
    assert!(v("strait_store_write_batches_queued") < 100.0);
    assert!(v("strait_store_held_copies_queued") < 100.0);
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_open_fds") > 5.0);
    let (head, _) = http_get(addr, "/admin").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
