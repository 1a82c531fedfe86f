//! XEP-0420 SCE envelopes as used by OMEMO 2, end to end with the OMEMO 2 payload crypto.

use minidom::Element;
use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_signal::omemo::OmemoError;
use strait_signal::omemo::payload::{decrypt_v2, encrypt_v2};
use strait_signal::omemo::sce::{Envelope, NS_SCE, RPAD_MAX_CHARS, random_rpad};

fn rng() -> StdRng {
    StdRng::seed_from_u64(420)
}

#[test]
fn body_envelope_round_trip_through_payload_crypto() {
    let mut r = rng();
    let env = Envelope::with_body(
        "Hello <World> & 'friends' ✓",
        "romeo@montague.lit",
        Some("juliet@capulet.lit"),
        &mut r,
    )
    .with_time("2004-01-25T06:05:00+01:00");
    let bytes = env.to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with("<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>")
    );
    assert!(text.contains("<rpad>"));
    let (km, ct) = encrypt_v2(&bytes, &mut r);
    let back = Envelope::parse(&decrypt_v2(&km, &ct).unwrap()).unwrap();
    assert_eq!(back, env);
    assert_eq!(back.body().as_deref(), Some("Hello <World> & 'friends' ✓"));
    back.verify_affixes("romeo@montague.lit", "juliet@capulet.lit", true)
        .unwrap();
    back.verify_affixes("Romeo@Montague.LIT", "juliet@capulet.lit", false)
        .unwrap();
    assert_eq!(
        back.verify_affixes("mallory@evil.example", "juliet@capulet.lit", false),
        Err(OmemoError::AffixMismatch("from"))
    );
    assert_eq!(
        back.verify_affixes("romeo@montague.lit", "room@muc.example", true),
        Err(OmemoError::AffixMismatch("to"))
    );
}

#[test]
fn to_is_required_only_when_asked() {
    let env = Envelope::with_body("hi", "romeo@montague.lit", None, &mut rng());
    env.verify_affixes("romeo@montague.lit", "juliet@capulet.lit", false)
        .unwrap();
    assert_eq!(
        env.verify_affixes("romeo@montague.lit", "room@muc.example", true),
        Err(OmemoError::MissingAffix("to"))
    );
}

#[test]
fn xep_examples_parse() {
    // XEP-0384 § SCE Profile example (with a real rpad).
    let xml = "<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <body xmlns='jabber:client'>
     Hello World!
    </body>
  </content>
  <rpad>C1DHN9HK-9A25tSmwK4hU!Jji9%GKYK^syIlHJT9TnI4</rpad>
  <from jid='romeo@montague.lit'/>
</envelope>";
    let env = Envelope::parse(xml.as_bytes()).unwrap();
    assert_eq!(env.body().unwrap().trim(), "Hello World!");
    assert_eq!(env.from.as_deref(), Some("romeo@montague.lit"));
    assert!(env.to.is_none() && env.time.is_none());
    // XEP-0420 § Use in <message/>: extension elements besides <body/>, no affixes at all.
    let xml = "<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>[...]</body>\
               <x xmlns='jabber:x:oob'><url>https://en.wikipedia.org/wiki/Fight_Club#Plot</url></x>\
               </content></envelope>";
    let env = Envelope::parse(xml.as_bytes()).unwrap();
    assert_eq!(env.content.len(), 2);
    assert!(env.content[1].is("x", "jabber:x:oob"));
    assert!(env.rpad.is_none());
    // Affixes in the XEP-0420 example order and forms.
    let xml = "<envelope xmlns='urn:xmpp:sce:1'><content/>\
               <time stamp='2004-01-25T06:05:00+01:00'/><to jid='missioncontrol@houston.nasa.gov'/>\
               <from jid='opportunity@mars.planet'/><rpad>x</rpad></envelope>";
    let env = Envelope::parse(xml.as_bytes()).unwrap();
    assert_eq!(env.time.as_deref(), Some("2004-01-25T06:05:00+01:00"));
    assert_eq!(env.to.as_deref(), Some("missioncontrol@houston.nasa.gov"));
}

#[test]
fn hostile_envelopes() {
    let bad: &[&[u8]] = &[
        b"<envelope xmlns='urn:xmpp:sce:0'><content/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'/>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><content/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><from jid='a@b'/><from jid='a@b'/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><from/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><to jid=''/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><time stamp='yesterday'/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><rpad><b/></rpad></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/><bogus/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'>text<content/></envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content/>\xff</envelope>",
        b"<envelope xmlns='urn:xmpp:sce:1'><content>",
    ];
    for b in bad {
        assert!(
            Envelope::parse(b).is_err(),
            "{}",
            String::from_utf8_lossy(b)
        );
    }
    let deep = format!(
        "<envelope xmlns='urn:xmpp:sce:1'><content>{}{}</content></envelope>",
        "<x>".repeat(1000),
        "</x>".repeat(1000)
    );
    assert!(matches!(
        Envelope::parse(deep.as_bytes()),
        Err(OmemoError::TooDeep(_))
    ));
    // Foreign-namespace affixes are ignored (other protocols may add their own).
    let ok = b"<envelope xmlns='urn:xmpp:sce:1'><content/><extra xmlns='urn:example'/></envelope>";
    assert!(Envelope::parse(ok).is_ok());
}

#[test]
fn rpad_lengths_vary_within_bounds() {
    let mut r = rng();
    let lens: Vec<usize> = (0..200).map(|_| random_rpad(&mut r).len()).collect();
    assert!(lens.iter().all(|&l| l <= RPAD_MAX_CHARS));
    assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() > 100);
    let env = Envelope::new(
        vec![Element::builder("body", "jabber:client").build()],
        &mut r,
    );
    assert!(Envelope::from_element(&env.to_element()).is_ok());
    assert_eq!(env.to_element().ns(), NS_SCE);
}
