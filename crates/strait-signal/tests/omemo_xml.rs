//! OMEMO 0.3 / OMEMO 2 XML: python-generated fixtures (tests/data/omemo, see its README), round
//! trips, the XEP-0384 shapes, and hostile input.

use strait_signal::omemo::xml::v2::{
    BundleV2, DeviceListV2, DeviceV2, EncryptedV2, KeyV2, KeysV2, PreKeyV2,
};
use strait_signal::omemo::xml::v03::{BundleV03, DeviceListV03, EncryptedV03, KeyV03, PreKeyV03};
use strait_signal::omemo::xml::{MAX_DEVICES, MAX_KEYS, MAX_PREKEYS};
use strait_signal::omemo::{NS_V2, NS_V03, OmemoError};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/data/omemo/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ids() -> (u32, u32) {
    let text = fixture("py_ids.txt");
    let get = |who: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(who))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (get("alice "), get("bob "))
}

fn key33(seed: u8) -> [u8; 33] {
    let mut k = [seed; 33];
    k[0] = 0x05;
    k
}

fn sample_bundle_v03() -> BundleV03 {
    BundleV03 {
        signed_pre_key_id: 1,
        signed_pre_key: key33(1),
        signed_pre_key_signature: [7; 64],
        identity_key: key33(2),
        pre_keys: (1..=100)
            .map(|i| PreKeyV03 {
                id: i,
                key: key33(i as u8),
            })
            .collect(),
    }
}

fn sample_bundle_v2() -> BundleV2 {
    BundleV2 {
        spk_id: 1,
        spk: [1; 32],
        spks: [2; 64],
        ik: [3; 32],
        pre_keys: (1..=100)
            .map(|i| PreKeyV2 {
                id: i,
                key: [i as u8; 32],
            })
            .collect(),
    }
}

// ------------------------------------------------------------------------------------------------
// python-generated fixtures
// ------------------------------------------------------------------------------------------------

#[test]
fn python_v03_device_list() {
    let (_, bob) = ids();
    let list = DeviceListV03::parse(&fixture("py_v03_devicelist.xml")).unwrap();
    assert_eq!(list.devices, vec![bob]);
    assert_eq!(DeviceListV03::parse(&list.to_xml()).unwrap(), list);
}

#[test]
fn python_v2_device_lists() {
    let (_, bob) = ids();
    let list = DeviceListV2::parse(&fixture("py_v2_devicelist.xml")).unwrap();
    assert_eq!(
        list.devices,
        vec![DeviceV2 {
            id: bob,
            label: None,
            label_sig: None
        }]
    );
    let labelled = DeviceListV2::parse(&fixture("py_v2_devicelist_labelled.xml")).unwrap();
    assert_eq!(labelled.devices.len(), 1);
    let d = &labelled.devices[0];
    assert_eq!(d.label.as_deref(), Some("Carol's laptop \"<&>\""));
    assert!(d.label_sig.is_some());
    assert_eq!(DeviceListV2::parse(&labelled.to_xml()).unwrap(), labelled);
}

#[test]
fn python_v03_bundle() {
    let b = BundleV03::parse(&fixture("py_v03_bundle.xml")).unwrap();
    assert_eq!(b.signed_pre_key_id, 1);
    assert_eq!(b.identity_key[0], 0x05);
    assert_eq!(b.pre_keys.len(), 100);
    assert!(b.pre_keys.iter().all(|pk| pk.key[0] == 0x05));
    assert_eq!(BundleV03::parse(&b.to_xml()).unwrap(), b);
}

#[test]
fn python_v2_bundle() {
    let b = BundleV2::parse(&fixture("py_v2_bundle.xml")).unwrap();
    assert_eq!(b.spk_id, 1);
    assert_eq!(b.pre_keys.len(), 100);
    assert_eq!(BundleV2::parse(&b.to_xml()).unwrap(), b);
}

#[test]
fn python_v03_encrypted() {
    let (alice, bob) = ids();
    let e = EncryptedV03::parse(&fixture("py_v03_encrypted.xml")).unwrap();
    assert_eq!(e.sid, alice);
    assert_eq!(e.keys.len(), 1);
    let k = e.key_for(bob).unwrap();
    assert!(k.prekey);
    // A PreKeySignalMessage from python-oldmemo: version byte 0x33, 175 bytes (ref §1.4).
    assert_eq!(k.data[0], 0x33);
    assert_eq!(e.iv.len(), 12);
    assert_eq!(e.payload.as_ref().unwrap().len(), b"Hello, Bob!".len());
    assert_eq!(EncryptedV03::parse(&e.to_xml()).unwrap(), e);
}

#[test]
fn python_v2_encrypted() {
    let (alice, bob) = ids();
    let e = EncryptedV2::parse(&fixture("py_v2_encrypted.xml")).unwrap();
    assert_eq!(e.sid, alice);
    assert_eq!(e.recipients.len(), 1);
    assert_eq!(e.recipients[0].jid, "bob@example.org");
    let k = e.key_for("bob@example.org", bob).unwrap();
    assert!(k.kex);
    // AES-256-CBC of the 11-byte body: one block.
    assert_eq!(e.payload.as_ref().unwrap().len(), 16);
    assert_eq!(EncryptedV2::parse(&e.to_xml()).unwrap(), e);
}

// ------------------------------------------------------------------------------------------------
// XEP shapes and serialization details
// ------------------------------------------------------------------------------------------------

#[test]
fn xep_0384_v03_message_shape() {
    // The example of XEP-0384 v0.3.0 § 4.5 with its placeholders replaced by real base64.
    let xml = "<encrypted xmlns='eu.siacs.conversations.axolotl'>
      <header sid='27183'>
        <key rid='31415'>MwgB</key>
        <key prekey='true' rid='12321'>MwgC</key>
        <iv>AAECAwQFBgcICQoL</iv>
      </header>
      <payload>SGVsbG8=</payload>
    </encrypted>";
    let e = EncryptedV03::parse(xml).unwrap();
    assert_eq!(
        e,
        EncryptedV03 {
            sid: 27183,
            keys: vec![
                KeyV03 {
                    rid: 31415,
                    prekey: false,
                    data: vec![0x33, 0x08, 0x01]
                },
                KeyV03 {
                    rid: 12321,
                    prekey: true,
                    data: vec![0x33, 0x08, 0x02]
                },
            ],
            iv: (0..12).collect(),
            payload: Some(b"Hello".to_vec()),
        }
    );
    // prekey='1' is accepted as well; KeyTransportElement has no payload; 16-byte IV accepted.
    let kt = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'>\
              <key prekey='1' rid='2'>MwgB</key><iv>AAECAwQFBgcICQoLDA0ODw==</iv></header></encrypted>";
    let e = EncryptedV03::parse(kt).unwrap();
    assert!(e.keys[0].prekey && e.payload.is_none() && e.iv.len() == 16);
}

#[test]
fn xep_0384_v2_message_shape() {
    let xml = "<encrypted xmlns='urn:xmpp:omemo:2'>
      <header sid='27183'>
        <keys jid='juliet@capulet.lit'>
          <key rid='31415'>AQID</key>
        </keys>
        <keys jid='romeo@montague.lit'>
          <key rid='1337'>BAUG</key>
          <key kex='true' rid='12321'>BwgJ</key>
        </keys>
      </header>
      <payload>AAAAAAAAAAAAAAAAAAAAAA==</payload>
    </encrypted>";
    let e = EncryptedV2::parse(xml).unwrap();
    assert_eq!(e.sid, 27183);
    assert_eq!(e.recipients.len(), 2);
    assert!(e.key_for("romeo@montague.lit", 12321).unwrap().kex);
    assert_eq!(
        e.key_for("romeo@montague.lit", 1337).unwrap().data,
        vec![4, 5, 6]
    );
    assert!(e.key_for("juliet@capulet.lit", 1337).is_none());
    assert_eq!(e.payload.as_deref(), Some(&[0u8; 16][..]));
    assert_eq!(EncryptedV2::parse(&e.to_xml()).unwrap(), e);
}

#[test]
fn xep_0384_v2_device_list_example() {
    let xml = "<devices xmlns='urn:xmpp:omemo:2'>
          <device id='12345'/>
          <device id='4223' label='Gajim on Ubuntu Linux'/>
          <device id='31415' label='Conversations on Pixel 3'/>
        </devices>";
    let l = DeviceListV2::parse(xml).unwrap();
    assert_eq!(
        l.devices.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![12345, 4223, 31415]
    );
    assert_eq!(l.devices[1].label.as_deref(), Some("Gajim on Ubuntu Linux"));
}

#[test]
fn conversations_line_wrapped_base64_is_accepted() {
    // Conversations (Android Base64.DEFAULT) wraps base64 with newlines.
    let mut b = sample_bundle_v03();
    b.pre_keys.truncate(2);
    let xml = b.to_xml();
    let sig = base64_std(&b.signed_pre_key_signature);
    let wrapped = format!(
        "{}\n{}\n",
        &sig[..76.min(sig.len())],
        &sig[76.min(sig.len())..]
    );
    let xml = xml.replace(&sig, &wrapped);
    assert_eq!(BundleV03::parse(&xml).unwrap(), b);
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn serialization_uses_expected_names_and_padding() {
    let xml = sample_bundle_v03().to_xml();
    assert!(xml.starts_with("<bundle xmlns='eu.siacs.conversations.axolotl'>"));
    assert!(xml.contains("<signedPreKeyPublic signedPreKeyId='1'>"));
    assert!(xml.contains("<preKeyPublic preKeyId='100'>"));
    // 33 bytes → 44 base64 chars without padding; 64 bytes → padded '=='.
    assert!(xml.contains(&format!(
        "<signedPreKeySignature>{}</signedPreKeySignature>",
        base64_std(&[7; 64])
    )));
    assert!(base64_std(&[7; 64]).ends_with("=="));
    let xml = sample_bundle_v2().to_xml();
    assert!(xml.starts_with("<bundle xmlns='urn:xmpp:omemo:2'>"));
    assert!(xml.contains("<spk id='1'>") && xml.contains("<pk id='100'>"));
    assert!(xml.contains("<spks>") && xml.contains("<ik>"));
    let e = EncryptedV2 {
        sid: 5,
        recipients: vec![KeysV2 {
            jid: "a@b".into(),
            keys: vec![KeyV2 {
                rid: 6,
                kex: true,
                data: vec![1],
            }],
        }],
        payload: None,
    };
    let xml = e.to_xml();
    assert!(
        xml.contains("kex='true'") && !xml.contains("payload"),
        "{xml}"
    );
}

#[test]
fn round_trips() {
    let l = DeviceListV03 {
        devices: vec![1, 4223, 0x7FFF_FFFF],
    };
    assert_eq!(DeviceListV03::parse(&l.to_xml()).unwrap(), l);
    let l = DeviceListV2 {
        devices: vec![
            DeviceV2 {
                id: 1,
                label: Some("Ünïcode & <markup> 'quotes' \"dq\"".into()),
                label_sig: Some([9; 64]),
            },
            DeviceV2 {
                id: 2,
                label: None,
                label_sig: None,
            },
        ],
    };
    assert_eq!(DeviceListV2::parse(&l.to_xml()).unwrap(), l);
    assert_eq!(
        DeviceListV03::parse(&DeviceListV03::default().to_xml())
            .unwrap()
            .devices
            .len(),
        0
    );
    let b = sample_bundle_v03();
    assert_eq!(BundleV03::parse(&b.to_xml()).unwrap(), b);
    let b = sample_bundle_v2();
    assert_eq!(BundleV2::parse(&b.to_xml()).unwrap(), b);
    let e = EncryptedV03 {
        sid: 7,
        keys: (1..=MAX_KEYS as u32)
            .map(|rid| KeyV03 {
                rid,
                prekey: rid % 2 == 0,
                data: vec![rid as u8; 40],
            })
            .collect(),
        iv: vec![3; 12],
        payload: Some(vec![]),
    };
    assert_eq!(EncryptedV03::parse(&e.to_xml()).unwrap(), e);
}

#[test]
fn from_element_accepts_prefixed_and_embedded_forms() {
    // As embedded in a stanza: parse the <message/>, hand the child element over.
    let stanza = format!(
        "<message xmlns='jabber:client' to='juliet@capulet.lit'>{}<store xmlns='urn:xmpp:hints'/></message>",
        fixture("py_v03_encrypted.xml")
    );
    let msg: minidom::Element = stanza.parse().unwrap();
    let enc = msg.get_child("encrypted", NS_V03).unwrap();
    EncryptedV03::from_element(enc).unwrap();
    let _ = NS_V2;
}

// ------------------------------------------------------------------------------------------------
// hostile input
// ------------------------------------------------------------------------------------------------

fn err<T>(r: Result<T, OmemoError>) -> OmemoError {
    match r {
        Ok(_) => panic!("must be rejected"),
        Err(e) => e,
    }
}

#[test]
fn wrong_namespace_or_root() {
    let xml = sample_bundle_v03().to_xml().replace(NS_V03, NS_V2);
    assert!(matches!(
        err(BundleV03::parse(&xml)),
        OmemoError::UnexpectedElement { .. }
    ));
    assert!(matches!(
        err(BundleV2::parse(&sample_bundle_v03().to_xml())),
        OmemoError::UnexpectedElement { .. }
    ));
    assert!(matches!(
        err(DeviceListV03::parse(
            "<devices xmlns='eu.siacs.conversations.axolotl'/>"
        )),
        OmemoError::UnexpectedElement { .. }
    ));
    assert!(DeviceListV03::parse("<list/>").is_err());
    // A child in the wrong namespace is ignored, so the required element is then missing.
    let xml = "<bundle xmlns='urn:xmpp:omemo:2'><spk xmlns='urn:other' id='1'>AAAA</spk></bundle>";
    assert_eq!(err(BundleV2::parse(xml)), OmemoError::MissingElement("spk"));
    // Unknown element in the protocol namespace.
    let xml = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/><bogus/></list>";
    assert!(matches!(
        err(DeviceListV03::parse(xml)),
        OmemoError::UnknownElement { .. }
    ));
}

#[test]
fn malformed_xml() {
    for bad in [
        "",
        "<list xmlns='eu.siacs.conversations.axolotl'>",
        "<list xmlns='eu.siacs.conversations.axolotl'></lst>",
        "<!DOCTYPE list [<!ENTITY a 'b'>]><list xmlns='eu.siacs.conversations.axolotl'/>",
        "not xml",
    ] {
        assert!(DeviceListV03::parse(bad).is_err(), "{bad:?}");
    }
    let deep = format!(
        "<list xmlns='eu.siacs.conversations.axolotl'>{}{}</list>",
        "<x>".repeat(100_000),
        "</x>".repeat(100_000)
    );
    assert!(matches!(
        err(DeviceListV03::parse(&deep)),
        OmemoError::TooDeep(_)
    ));
    let huge = format!(
        "<list xmlns='eu.siacs.conversations.axolotl'>{}</list>",
        " ".repeat(2 << 20)
    );
    assert!(matches!(
        err(DeviceListV03::parse(&huge)),
        OmemoError::TooLarge { .. }
    ));
}

#[test]
fn missing_or_bad_attributes() {
    type Parser = fn(&str) -> Result<(), OmemoError>;
    let cases: &[(&str, Parser)] = &[
        (
            "<list xmlns='eu.siacs.conversations.axolotl'><device/></list>",
            |x| DeviceListV03::parse(x).map(drop),
        ),
        (
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='0'/></list>",
            |x| DeviceListV03::parse(x).map(drop),
        ),
        (
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='2147483648'/></list>",
            |x| DeviceListV03::parse(x).map(drop),
        ),
        (
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='-1'/></list>",
            |x| DeviceListV03::parse(x).map(drop),
        ),
        (
            "<list xmlns='eu.siacs.conversations.axolotl'><device id=' 12'/></list>",
            |x| DeviceListV03::parse(x).map(drop),
        ),
        (
            "<list xmlns='eu.siacs.conversations.axolotl'><device id='abc'/></list>",
            |x| DeviceListV03::parse(x).map(drop),
        ),
        (
            "<devices xmlns='urn:xmpp:omemo:2'><device id='1' labelsig='AAAA'/></devices>",
            |x| DeviceListV2::parse(x).map(drop),
        ),
        (
            "<encrypted xmlns='eu.siacs.conversations.axolotl'><header><iv>AAECAwQFBgcICQoL</iv></header></encrypted>",
            |x| EncryptedV03::parse(x).map(drop),
        ),
        (
            "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key>AAAA</key><iv>AAECAwQFBgcICQoL</iv></header></encrypted>",
            |x| EncryptedV03::parse(x).map(drop),
        ),
        (
            "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2' prekey='yes'>AAAA</key><iv>AAECAwQFBgcICQoL</iv></header></encrypted>",
            |x| EncryptedV03::parse(x).map(drop),
        ),
        (
            "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys><key rid='2'>AAAA</key></keys></header></encrypted>",
            |x| EncryptedV2::parse(x).map(drop),
        ),
        (
            "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b/res'><key rid='2'>AAAA</key></keys></header></encrypted>",
            |x| EncryptedV2::parse(x).map(drop),
        ),
        (
            "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b'><key rid='2' kex='TRUE'>AAAA</key></keys></header></encrypted>",
            |x| EncryptedV2::parse(x).map(drop),
        ),
    ];
    for (xml, f) in cases {
        assert!(f(xml).is_err(), "{xml}");
    }
    // Missing signedPreKeyId / OMEMO 2 key id 0.
    let xml = sample_bundle_v03()
        .to_xml()
        .replace(" signedPreKeyId='1'", "");
    assert_eq!(
        err(BundleV03::parse(&xml)),
        OmemoError::MissingAttribute {
            element: "signedPreKeyPublic",
            attr: "signedPreKeyId"
        }
    );
    let xml = sample_bundle_v2()
        .to_xml()
        .replace("<pk id='1'>", "<pk id='0'>");
    assert!(matches!(
        err(BundleV2::parse(&xml)),
        OmemoError::InvalidAttribute { .. }
    ));
}

#[test]
fn missing_elements() {
    let full = sample_bundle_v03().to_xml();
    for (open, close) in [
        ("<identityKey>", "</identityKey>"),
        ("<signedPreKeySignature>", "</signedPreKeySignature>"),
        ("<prekeys>", "</prekeys>"),
    ] {
        let a = full.find(open).unwrap();
        let b = full.find(close).unwrap() + close.len();
        let xml = format!("{}{}", &full[..a], &full[b..]);
        assert!(matches!(
            err(BundleV03::parse(&xml)),
            OmemoError::MissingElement(_)
        ));
    }
    let no_iv = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted>";
    assert_eq!(
        err(EncryptedV03::parse(no_iv)),
        OmemoError::MissingElement("iv")
    );
    let no_header = "<encrypted xmlns='urn:xmpp:omemo:2'><payload>AAAA</payload></encrypted>";
    assert_eq!(
        err(EncryptedV2::parse(no_header)),
        OmemoError::MissingElement("header")
    );
    let no_keys = "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/></encrypted>";
    assert_eq!(err(EncryptedV2::parse(no_keys)), OmemoError::Empty("keys"));
    let empty_group = "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b'/></header></encrypted>";
    assert_eq!(
        err(EncryptedV2::parse(empty_group)),
        OmemoError::Empty("key")
    );
    let mut b = sample_bundle_v2();
    b.pre_keys.clear();
    assert_eq!(err(BundleV2::parse(&b.to_xml())), OmemoError::Empty("pk"));
}

#[test]
fn duplicates() {
    let xml =
        "<list xmlns='eu.siacs.conversations.axolotl'><device id='5'/><device id='5'/></list>";
    assert!(matches!(
        err(DeviceListV03::parse(xml)),
        OmemoError::Duplicate { .. }
    ));
    let xml =
        "<devices xmlns='urn:xmpp:omemo:2'><device id='5'/><device id='5' label='x'/></devices>";
    assert!(matches!(
        err(DeviceListV2::parse(xml)),
        OmemoError::Duplicate { .. }
    ));
    let mut b = sample_bundle_v03();
    b.pre_keys[1].id = b.pre_keys[0].id;
    assert!(matches!(
        err(BundleV03::parse(&b.to_xml())),
        OmemoError::Duplicate { .. }
    ));
    let mut b = sample_bundle_v2();
    b.pre_keys[1].id = b.pre_keys[0].id;
    assert!(matches!(
        err(BundleV2::parse(&b.to_xml())),
        OmemoError::Duplicate { .. }
    ));
    // spk and pk ids are separate spaces: same id is fine.
    let mut b = sample_bundle_v2();
    b.spk_id = b.pre_keys[0].id;
    BundleV2::parse(&b.to_xml()).unwrap();
    let b = sample_bundle_v2();
    let ik = format!("<ik>{}</ik>", base64_std(&b.ik));
    let xml = b.to_xml().replace(&ik, &format!("{ik}{ik}"));
    assert_eq!(
        err(BundleV2::parse(&xml)),
        OmemoError::DuplicateElement("ik")
    );
    let xml = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'>\
               <key rid='2'>AAAA</key><key rid='2' prekey='true'>AAAA</key>\
               <iv>AAECAwQFBgcICQoL</iv></header></encrypted>";
    assert!(matches!(
        err(EncryptedV03::parse(xml)),
        OmemoError::Duplicate { .. }
    ));
    let xml = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'>\
               <iv>AAECAwQFBgcICQoL</iv><iv>AAECAwQFBgcICQoL</iv></header></encrypted>";
    assert_eq!(
        err(EncryptedV03::parse(xml)),
        OmemoError::DuplicateElement("iv")
    );
    let xml = "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'>\
               <keys jid='a@b'><key rid='2'>AAAA</key></keys>\
               <keys jid='a@b'><key rid='3'>AAAA</key></keys></header></encrypted>";
    assert!(matches!(
        err(EncryptedV2::parse(xml)),
        OmemoError::Duplicate { .. }
    ));
    // The same rid under two different JIDs is legitimate.
    let xml = "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'>\
               <keys jid='a@b'><key rid='2'>AAAA</key></keys>\
               <keys jid='c@d'><key rid='2'>AAAA</key></keys></header>\
               <payload>AAAA</payload><payload>AAAA</payload></encrypted>";
    assert_eq!(
        err(EncryptedV2::parse(xml)),
        OmemoError::DuplicateElement("payload")
    );
}

#[test]
fn huge_counts() {
    let devices: String = (1..=MAX_DEVICES as u32 + 1)
        .map(|i| format!("<device id='{i}'/>"))
        .collect();
    let xml = format!("<list xmlns='eu.siacs.conversations.axolotl'>{devices}</list>");
    assert!(matches!(
        err(DeviceListV03::parse(&xml)),
        OmemoError::TooMany { .. }
    ));
    let xml = format!("<devices xmlns='urn:xmpp:omemo:2'>{devices}</devices>");
    assert!(matches!(
        err(DeviceListV2::parse(&xml)),
        OmemoError::TooMany { .. }
    ));

    let mut b = sample_bundle_v03();
    b.pre_keys = (0..=MAX_PREKEYS as u32)
        .map(|id| PreKeyV03 { id, key: key33(1) })
        .collect();
    assert!(matches!(
        err(BundleV03::parse(&b.to_xml())),
        OmemoError::TooMany { .. }
    ));
    let mut b = sample_bundle_v2();
    b.pre_keys = (1..=MAX_PREKEYS as u32 + 1)
        .map(|id| PreKeyV2 { id, key: [1; 32] })
        .collect();
    assert!(matches!(
        err(BundleV2::parse(&b.to_xml())),
        OmemoError::TooMany { .. }
    ));

    let keys: String = (1..=MAX_KEYS as u32 + 1)
        .map(|i| format!("<key rid='{i}'>AAAA</key>"))
        .collect();
    let xml = format!(
        "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'>{keys}<iv>AAECAwQFBgcICQoL</iv></header></encrypted>"
    );
    assert!(matches!(
        err(EncryptedV03::parse(&xml)),
        OmemoError::TooMany { .. }
    ));
    // The OMEMO 2 bound counts keys over all JID groups.
    let groups: String = (1..=MAX_KEYS as u32 / 2 + 1)
        .map(|i| {
            format!("<keys jid='u{i}@x'><key rid='1'>AAAA</key><key rid='2'>AAAA</key></keys>")
        })
        .collect();
    let xml = format!(
        "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'>{groups}</header></encrypted>"
    );
    assert!(matches!(
        err(EncryptedV2::parse(&xml)),
        OmemoError::TooMany { .. }
    ));
}

#[test]
fn bad_base64_and_lengths() {
    let b = sample_bundle_v03();
    let good = b.to_xml();
    let ik = base64_std(&b.identity_key);
    for bad in [
        "!!!!",
        "BQEBAQ",
        "BQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB",
    ] {
        assert!(BundleV03::parse(&good.replace(&ik, bad)).is_err(), "{bad}");
    }
    // A 32-byte key without the 0x05 type byte, and a 33-byte key with another type byte.
    let raw = base64_std(&[1; 32]);
    assert!(matches!(
        err(BundleV03::parse(&good.replace(&ik, &raw))),
        OmemoError::InvalidLength { .. }
    ));
    let mut k = [1u8; 33];
    k[0] = 0x08;
    assert_eq!(
        err(BundleV03::parse(&good.replace(&ik, &base64_std(&k)))),
        OmemoError::InvalidKeyType("identityKey")
    );
    let b2 = sample_bundle_v2();
    let good = b2.to_xml();
    let spks = base64_std(&b2.spks);
    assert!(BundleV2::parse(&good.replace(&spks, &base64_std(&[2; 63]))).is_err());
    assert!(BundleV2::parse(&good.replace(&spks, "####")).is_err());
    // IV lengths other than 12/16, empty key data, element children inside a leaf.
    for iv in ["AAECAwQFBgcICQo=", "AAECAwQFBgcICQoLDA0ODxA=", ""] {
        let xml = format!(
            "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><iv>{iv}</iv></header></encrypted>"
        );
        assert!(EncryptedV03::parse(&xml).is_err(), "{iv}");
    }
    let xml = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2'></key><iv>AAECAwQFBgcICQoL</iv></header></encrypted>";
    assert!(EncryptedV03::parse(xml).is_err());
    let xml = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2'>AA<b/>AA</key><iv>AAECAwQFBgcICQoL</iv></header></encrypted>";
    assert_eq!(
        err(EncryptedV03::parse(xml)),
        OmemoError::UnexpectedContent("key")
    );
    let xml = "<list xmlns='eu.siacs.conversations.axolotl'>junk<device id='1'/></list>";
    assert_eq!(
        err(DeviceListV03::parse(xml)),
        OmemoError::UnexpectedContent("list")
    );
    // Oversized key blob.
    let xml = format!(
        "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2'>{}</key><iv>AAECAwQFBgcICQoL</iv></header></encrypted>",
        base64_std(&[0; 5000])
    );
    assert!(matches!(
        err(EncryptedV03::parse(&xml)),
        OmemoError::InvalidLength { .. }
    ));
}

// ------------------------------------------------------------------------------------------------
// mutation smoke test (cargo-fuzz targets live in /fuzz; this runs in every `cargo test`)
// ------------------------------------------------------------------------------------------------

#[test]
fn seeded_mutations_never_panic_and_round_trip() {
    use rand::{Rng, SeedableRng};
    let seeds = [
        fixture("py_v03_devicelist.xml"),
        fixture("py_v2_devicelist_labelled.xml"),
        fixture("py_v03_encrypted.xml"),
        fixture("py_v2_encrypted.xml"),
        {
            let mut b = sample_bundle_v2();
            b.pre_keys.truncate(3);
            b.to_xml()
        },
        {
            let mut b = sample_bundle_v03();
            b.pre_keys.truncate(3);
            b.to_xml()
        },
    ];
    let alphabet = b"<>/='\"&;#x0123456789abcdefABCDEF+ \n:!?[]-";
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf022);
    for i in 0..6000 {
        let mut bytes = seeds[i % seeds.len()].clone().into_bytes();
        for _ in 0..rng.gen_range(1..4) {
            let pos = rng.gen_range(0..bytes.len());
            match rng.gen_range(0..3) {
                0 => bytes[pos] = alphabet[rng.gen_range(0..alphabet.len())],
                1 => {
                    bytes.remove(pos);
                }
                _ => {
                    let len = rng.gen_range(1..40).min(bytes.len() - pos);
                    let chunk = bytes[pos..pos + len].to_vec();
                    bytes.splice(pos..pos, chunk);
                }
            }
        }
        let Ok(s) = std::str::from_utf8(&bytes) else {
            continue;
        };
        macro_rules! rt {
            ($ty:ty) => {
                if let Ok(v) = <$ty>::parse(s) {
                    assert_eq!(<$ty>::parse(&v.to_xml()).unwrap(), v, "{s}");
                }
            };
        }
        rt!(DeviceListV03);
        rt!(BundleV03);
        rt!(EncryptedV03);
        rt!(DeviceListV2);
        rt!(BundleV2);
        rt!(EncryptedV2);
        let _ = strait_signal::omemo::sce::Envelope::parse(&bytes);
    }
}
