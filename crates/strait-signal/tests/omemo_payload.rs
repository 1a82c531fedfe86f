//! OMEMO payload crypto: round trips, tampering, legacy forms, and python-generated vectors
//! (tests/data/omemo/py_payloads.txt, made by python-oldmemo / python-twomemo 2.1.0).

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{AesGcm, Nonce};
use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_signal::omemo::OmemoError;
use strait_signal::omemo::payload::*;

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x0e3e)
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        Vec::new()
    } else {
        hex::decode(s).unwrap()
    }
}

#[test]
fn v03_round_trip_and_shape() {
    let mut r = rng();
    for pt in [&b""[..], b"Hello, Bob!", &[0xAB; 5000]] {
        let (km, iv, ct) = encrypt_v03(pt, &mut r);
        assert_eq!(km.len(), 32);
        assert_eq!(iv.len(), 12);
        assert_eq!(ct.len(), pt.len(), "GCM ciphertext without tag");
        assert_eq!(decrypt_v03(&km, &iv, &ct).unwrap(), pt);
    }
    // Fresh key and IV each time.
    let (k1, i1, _) = encrypt_v03(b"x", &mut r);
    let (k2, i2, _) = encrypt_v03(b"x", &mut r);
    assert_ne!(k1, k2);
    assert_ne!(i1, i2);
}

#[test]
fn v03_tampering_is_detected() {
    let mut r = rng();
    let (km, iv, ct) = encrypt_v03(b"attack at dawn", &mut r);
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 1;
        assert_eq!(
            decrypt_v03(&km, &iv, &bad),
            Err(OmemoError::AuthenticationFailed)
        );
    }
    for i in 0..32 {
        let mut bad = km;
        bad[i] ^= 0x80;
        assert_eq!(
            decrypt_v03(&bad, &iv, &ct),
            Err(OmemoError::AuthenticationFailed)
        );
    }
    let mut bad_iv = iv;
    bad_iv[0] ^= 1;
    assert_eq!(
        decrypt_v03(&km, &bad_iv, &ct),
        Err(OmemoError::AuthenticationFailed)
    );
    // Truncation / extension.
    assert!(decrypt_v03(&km, &iv, &ct[..ct.len() - 1]).is_err());
    let mut longer = ct.clone();
    longer.push(0);
    assert!(decrypt_v03(&km, &iv, &longer).is_err());
}

#[test]
fn v03_legacy_forms() {
    let key = [0x42u8; 16];
    let pt = b"legacy client".to_vec();
    // 16-byte IV (early clients).
    let iv16 = [7u8; 16];
    let mut buf = pt.clone();
    let tag = AesGcm::<aes::Aes128, U16>::new_from_slice(&key)
        .unwrap()
        .encrypt_in_place_detached(Nonce::<U16>::from_slice(&iv16), b"", &mut buf)
        .unwrap();
    let mut km = key.to_vec();
    km.extend_from_slice(&tag);
    assert_eq!(decrypt_v03(&km, &iv16, &buf).unwrap(), pt);
    // 16-byte key material: the tag rides at the end of the payload.
    let mut with_tag = buf.clone();
    with_tag.extend_from_slice(&tag);
    assert_eq!(decrypt_v03(&key, &iv16, &with_tag).unwrap(), pt);
    // Same with a 12-byte IV, starting from a normal encryption.
    let (km, iv, ct) = encrypt_v03(&pt, &mut rng());
    let mut with_tag = ct.clone();
    with_tag.extend_from_slice(&km[16..]);
    assert_eq!(decrypt_v03(&km[..16], &iv, &with_tag).unwrap(), pt);
    assert_eq!(
        decrypt_v03(&km[..16], &iv, &[0; 15]),
        Err(OmemoError::PayloadTooShort)
    );
}

#[test]
fn v03_bad_lengths() {
    let (km, iv, ct) = encrypt_v03(b"x", &mut rng());
    for n in [0, 15, 17, 31, 33, 48] {
        assert_eq!(
            decrypt_v03(&vec![0; n], &iv, &ct),
            Err(OmemoError::InvalidKeyMaterial(n))
        );
    }
    for n in [0, 8, 11, 13, 15, 17, 32] {
        assert_eq!(
            decrypt_v03(&km, &vec![0; n], &ct),
            Err(OmemoError::InvalidIv(n))
        );
    }
}

#[test]
fn v03_key_transport() {
    let mut r = rng();
    let (key, iv) = key_transport_v03(&mut r);
    assert_eq!((key.len(), iv.len()), (16, 12));
    assert_eq!(key_transport_key_v03(&key).unwrap(), key);
    let mut km32 = key.to_vec();
    km32.extend_from_slice(&[9; 16]);
    assert_eq!(key_transport_key_v03(&km32).unwrap(), key);
    assert!(key_transport_key_v03(&[0; 20]).is_err());
    let (key2, _) = key_transport_v03(&mut r);
    assert_ne!(key, key2);
}

#[test]
fn v2_round_trip_and_shape() {
    let mut r = rng();
    for pt in [&b""[..], b"<envelope/>", &[0x5A; 4097]] {
        let (km, ct) = encrypt_v2(pt, &mut r);
        assert_eq!(km.len(), 48);
        assert_eq!(ct.len(), (pt.len() / 16 + 1) * 16, "PKCS#7 always pads");
        assert_eq!(decrypt_v2(&km, &ct).unwrap(), pt);
    }
}

#[test]
fn v2_tampering_is_detected() {
    let (km, ct) = encrypt_v2(b"<envelope xmlns='urn:xmpp:sce:1'/>", &mut rng());
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 1;
        assert_eq!(decrypt_v2(&km, &bad), Err(OmemoError::AuthenticationFailed));
    }
    for i in 0..48 {
        let mut bad = km;
        bad[i] ^= 1;
        assert_eq!(decrypt_v2(&bad, &ct), Err(OmemoError::AuthenticationFailed));
    }
    assert_eq!(
        decrypt_v2(&km, &ct[..16]),
        Err(OmemoError::AuthenticationFailed)
    );
    assert_eq!(
        decrypt_v2(&km, &ct[..ct.len() - 1]),
        Err(OmemoError::PayloadTooShort)
    );
    assert_eq!(decrypt_v2(&km, &[]), Err(OmemoError::PayloadTooShort));
    assert_eq!(
        decrypt_v2(&km[..32], &ct),
        Err(OmemoError::InvalidKeyMaterial(32))
    );
    // The empty-message constant is recognisable and not a payload key.
    assert!(is_v2_empty_message(&V2_EMPTY_MESSAGE));
    assert!(!is_v2_empty_message(&km));
    assert_eq!(
        decrypt_v2(&V2_EMPTY_MESSAGE, &ct),
        Err(OmemoError::InvalidKeyMaterial(32))
    );
}

#[test]
fn python_generated_vectors_decrypt() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/omemo/py_payloads.txt"
    ))
    .unwrap();
    let (mut n03, mut n2) = (0, 0);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "v03" => {
                let mut km = unhex(f[1]);
                km.extend(unhex(f[2]));
                let iv = unhex(f[3]);
                assert_eq!(iv.len(), 12);
                assert_eq!(decrypt_v03(&km, &iv, &unhex(f[4])).unwrap(), unhex(f[5]));
                n03 += 1;
            }
            "v2" => {
                let mut km = unhex(f[1]);
                km.extend(unhex(f[2]));
                assert_eq!(decrypt_v2(&km, &unhex(f[3])).unwrap(), unhex(f[4]));
                n2 += 1;
            }
            other => panic!("unknown line {other}"),
        }
    }
    assert_eq!((n03, n2), (3, 3));
}
