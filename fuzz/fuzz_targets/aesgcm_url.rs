//! Fuzz the XEP-0454 `aesgcm://` URL parser and media-body splitter: no panics, and a parsed
//! URL re-formats to a string that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_signal::media::{AesgcmUrl, parse_media_body};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = AesgcmUrl::parse(s) {
        let again = AesgcmUrl::parse(&u.to_string()).expect("formatted URL must parse");
        assert_eq!(again, u);
        let https = u.https_url();
        let rebuilt =
            AesgcmUrl::from_https(&https, u.key, &u.iv).expect("https form converts back");
        assert_eq!(rebuilt, u);
    }
    let _ = parse_media_body(s);
});
