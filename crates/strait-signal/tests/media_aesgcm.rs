//! XEP-0454: file encryption and `aesgcm://` URLs.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{AesGcm, Nonce};
use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_signal::media::*;

const XEP_HTTPS: &str =
    "https://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg";
const XEP_IV: &str = "8c3d050e9386ec173861778f";
const XEP_KEY: &str = "68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587";
const XEP_AESGCM: &str = "aesgcm://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg#8c3d050e9386ec173861778f68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587";

fn key(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

#[test]
fn xep_0454_example() {
    let u = AesgcmUrl::parse(XEP_AESGCM).unwrap();
    assert_eq!(hex::encode(&u.iv), XEP_IV);
    assert_eq!(u.key, key(XEP_KEY));
    assert_eq!(u.https_url(), XEP_HTTPS);
    assert_eq!(u.to_string(), XEP_AESGCM);
    let built =
        AesgcmUrl::from_https(XEP_HTTPS, key(XEP_KEY), &hex::decode(XEP_IV).unwrap()).unwrap();
    assert_eq!(built, u);
    assert_eq!(built.to_string(), XEP_AESGCM);
    // The key never shows in Debug output.
    assert!(!format!("{u:?}").contains(XEP_KEY));
}

#[test]
fn file_round_trip_and_tamper() {
    let mut rng = StdRng::seed_from_u64(454);
    for len in [0usize, 1, 15, 16, 17, 100_000] {
        let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let (ct, k, iv) = encrypt_file(&pt, &mut rng);
        assert_eq!(ct.len(), len + TAG_LEN);
        assert_eq!(decrypt_file(&ct, &k, &iv).unwrap(), pt);
        let url = AesgcmUrl::from_https("https://upload.example/a/b.bin", k, &iv).unwrap();
        let parsed = AesgcmUrl::parse(&url.to_string()).unwrap();
        assert_eq!(parsed.decrypt(&ct).unwrap(), pt);
        if len > 0 {
            let mut bad = ct.clone();
            bad[len / 2] ^= 1;
            assert_eq!(
                decrypt_file(&bad, &k, &iv),
                Err(MediaError::AuthenticationFailed)
            );
        }
        let mut bad = ct.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            decrypt_file(&bad, &k, &iv),
            Err(MediaError::AuthenticationFailed)
        );
        let mut wrong = k;
        wrong[0] ^= 1;
        assert_eq!(
            decrypt_file(&ct, &wrong, &iv),
            Err(MediaError::AuthenticationFailed)
        );
    }
    assert_eq!(
        decrypt_file(&[0; 15], &[0; 32], &[0; 12]),
        Err(MediaError::TooShort)
    );
    assert_eq!(
        decrypt_file(&[0; 32], &[0; 32], &[0; 13]),
        Err(MediaError::InvalidIv(13))
    );
}

#[test]
fn legacy_16_byte_iv() {
    let k = [3u8; 32];
    let iv = [4u8; 16];
    let mut buf = b"old client file".to_vec();
    let tag = AesGcm::<aes::Aes256, U16>::new_from_slice(&k)
        .unwrap()
        .encrypt_in_place_detached(Nonce::<U16>::from_slice(&iv), b"", &mut buf)
        .unwrap();
    buf.extend_from_slice(&tag);
    assert_eq!(decrypt_file(&buf, &k, &iv).unwrap(), b"old client file");
    let url = format!(
        "aesgcm://host.example/f.txt#{}{}",
        hex::encode(iv),
        hex::encode(k)
    );
    let u = AesgcmUrl::parse(&url).unwrap();
    assert_eq!(u.iv.len(), 16);
    assert_eq!(u.decrypt(&buf).unwrap(), b"old client file");
    assert_eq!(u.to_string(), url);
}

#[test]
fn strict_parsing() {
    let frag = &XEP_AESGCM[XEP_AESGCM.find('#').unwrap()..];
    let cases: Vec<(String, MediaError)> = vec![
        (
            XEP_AESGCM.replacen("aesgcm", "https", 1),
            MediaError::WrongScheme,
        ),
        (
            XEP_AESGCM.replacen("aesgcm://", "aesgcm:", 1),
            MediaError::WrongScheme,
        ),
        (
            XEP_AESGCM.replacen("aesgcm", "aesgcmx", 1),
            MediaError::WrongScheme,
        ),
        (
            XEP_AESGCM[..XEP_AESGCM.find('#').unwrap()].to_string(),
            MediaError::BadFragment,
        ),
        (format!("{XEP_AESGCM}#00"), MediaError::BadFragment),
        (format!("aesgcm://a#b/c{frag}"), MediaError::BadFragment),
        (format!("{XEP_AESGCM}0"), MediaError::BadFragmentLength(89)),
        (
            XEP_AESGCM[..XEP_AESGCM.len() - 1].to_string(),
            MediaError::BadFragmentLength(87),
        ),
        (
            format!("{}{}", &XEP_AESGCM[..XEP_AESGCM.len() - 1], "g"),
            MediaError::NotHex,
        ),
        (
            format!("{}{}", &XEP_AESGCM[..XEP_AESGCM.len() - 1], "+"),
            MediaError::NotHex,
        ),
        (format!("aesgcm://{frag}"), MediaError::MissingHost),
        (format!("aesgcm:///path{frag}"), MediaError::MissingHost),
        (format!("aesgcm://host/a b{frag}"), MediaError::BadCharacter),
        (
            format!("aesgcm://host/a\nb{frag}"),
            MediaError::BadCharacter,
        ),
        (format!("{XEP_AESGCM} "), MediaError::BadCharacter),
        (
            format!("aesgcm://host/x#{}", "0".repeat(92)),
            MediaError::BadFragmentLength(92),
        ),
        (String::new(), MediaError::WrongScheme),
    ];
    for (url, want) in cases {
        assert_eq!(AesgcmUrl::parse(&url), Err(want.clone()), "{url:?}");
    }
    // Uppercase hex and scheme are tolerated; output is canonical lowercase.
    let upper = format!(
        "AESGCM://download.montague.tld/x#{}",
        frag[1..].to_uppercase()
    );
    let u = AesgcmUrl::parse(&upper).unwrap();
    assert_eq!(u.key, key(XEP_KEY));
    assert!(
        u.to_string()
            .starts_with("aesgcm://download.montague.tld/x#8c3d")
    );
}

#[test]
fn from_https_is_strict() {
    let (k, iv) = ([1u8; 32], [2u8; 12]);
    assert_eq!(
        AesgcmUrl::from_https("http://insecure.example/f", k, &iv),
        Err(MediaError::WrongScheme)
    );
    assert_eq!(
        AesgcmUrl::from_https("https://h.example/f#frag", k, &iv),
        Err(MediaError::HasFragment)
    );
    assert_eq!(
        AesgcmUrl::from_https("https:///f", k, &iv),
        Err(MediaError::MissingHost)
    );
    assert_eq!(
        AesgcmUrl::from_https("https://h.example/f", k, &[0; 8]),
        Err(MediaError::InvalidIv(8))
    );
}

#[test]
fn media_bodies() {
    let (u, thumb) = parse_media_body(XEP_AESGCM).unwrap();
    assert_eq!(u.https_url(), XEP_HTTPS);
    assert!(thumb.is_none());
    let body = format!("{XEP_AESGCM}\ndata:image/jpeg,/9j/4AAQSkZJRgABAQEBLAEsAAD");
    let (_, thumb) = parse_media_body(&body).unwrap();
    assert_eq!(thumb, Some("data:image/jpeg,/9j/4AAQSkZJRgABAQEBLAEsAAD"));
    for bad in [
        format!("look: {XEP_AESGCM}"),
        format!("{XEP_AESGCM}\nhello"),
        format!("{XEP_AESGCM}\ndata:image/jpeg,a\nb"),
        format!("{XEP_AESGCM}\n"),
        "hello".to_string(),
    ] {
        assert!(parse_media_body(&bad).is_none(), "{bad:?}");
    }
}
