//! Identity fingerprints: OMEMO hex form (checked against python-omemo's
//! `format_identity_key`) and the numeric safety number (checked against an independent
//! hashlib re-derivation, tests/data/omemo/py_safety.txt).

use strait_signal::fingerprint::*;

fn data(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/omemo/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn omemo_hex_form() {
    let mut key33 = [0u8; 33];
    key33[0] = 0x05;
    for (i, b) in key33[1..].iter_mut().enumerate() {
        *b = i as u8 * 7;
    }
    let fp = omemo_fingerprint(&key33).unwrap();
    assert_eq!(fp.len(), 64);
    assert_eq!(fp, hex::encode(&key33[1..]));
    assert_eq!(omemo_fingerprint(&key33[1..]).unwrap(), fp);
    let shown = display_groups(&fp);
    assert_eq!(shown.split(' ').count(), 8);
    assert!(shown.split(' ').all(|g| g.len() == 8));
    assert_eq!(shown.replace(' ', ""), fp);
    let mut bad = key33;
    bad[0] = 0x06;
    assert_eq!(
        omemo_fingerprint(&bad),
        Err(FingerprintError::InvalidKey(33))
    );
    assert_eq!(
        omemo_fingerprint(&[0; 31]),
        Err(FingerprintError::InvalidKey(31))
    );
}

#[test]
fn ed25519_keys_match_python_omemo() {
    let text = data("py_fingerprints.txt");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (ed, groups) = line.split_once(' ').unwrap();
        let ed: [u8; 32] = hex::decode(ed).unwrap().try_into().unwrap();
        let fp = omemo_fingerprint_from_ed25519(&ed).unwrap();
        assert_eq!(display_groups(&fp), groups);
        n += 1;
    }
    assert_eq!(n, 4);
    // y = 2 is not on the curve.
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(
        omemo_fingerprint_from_ed25519(&not_a_point),
        Err(FingerprintError::InvalidEd25519)
    );
}

#[test]
fn safety_numbers_match_independent_derivation() {
    let text = data("py_safety.txt");
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        let (ka, ida, kb, idb, want) = (
            hex::decode(f[0]).unwrap(),
            f[1],
            hex::decode(f[2]).unwrap(),
            f[3],
            f[4],
        );
        let ab = safety_number(&ka, ida, &kb, idb).unwrap();
        assert_eq!(ab.digits(), want);
        // Symmetry: both sides display the same 60 digits.
        let ba = safety_number(&kb, idb, &ka, ida).unwrap();
        assert_eq!(ab, ba);
        // 32-byte raw keys give the same number as 0x05-prefixed ones.
        assert_eq!(safety_number(&ka[1..], ida, &kb[1..], idb).unwrap(), ab);
    }
}

#[test]
fn safety_number_properties() {
    let ka = [0x11u8; 32];
    let kb = [0x22u8; 32];
    let n = safety_number(&ka, "alice@example.org", &kb, "bob@example.org").unwrap();
    assert_eq!(n.digits().len(), 60);
    assert!(n.digits().bytes().all(|b| b.is_ascii_digit()));
    let shown = n.to_string();
    assert_eq!(shown.split(' ').count(), 12);
    // Stable: pinned value (recomputed independently with python hashlib from the description).
    assert_eq!(
        n.digits(),
        "453679805552506368723227219458722089805587053722638039950191"
    );
    assert_eq!(
        n,
        safety_number(&ka, "alice@example.org", &kb, "bob@example.org").unwrap()
    );
    // Any change of key or identifier changes it.
    let mut kc = kb;
    kc[31] ^= 1;
    assert_ne!(
        safety_number(&ka, "alice@example.org", &kc, "bob@example.org").unwrap(),
        n
    );
    assert_ne!(
        safety_number(&ka, "alice@example.org", &kb, "bob@example.net").unwrap(),
        n
    );
    // Halves are the per-party 30-digit numbers.
    let ha = safety_number_half(&ka, b"alice@example.org").unwrap();
    let hb = safety_number_half(&kb, b"bob@example.org").unwrap();
    assert_eq!(ha.len(), 30);
    assert!(n.digits() == format!("{ha}{hb}") || n.digits() == format!("{hb}{ha}"));
    assert!(safety_number(&[0; 31], "a", &kb, "b").is_err());
}
