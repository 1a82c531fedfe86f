//! Fuzz the OMEMO XML parsers (both namespaces) and the SCE envelope parser: no panics, no
//! unbounded work, and whatever parses must round-trip through serialization.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_signal::omemo::sce::Envelope;
use strait_signal::omemo::xml::v2::{BundleV2, DeviceListV2, EncryptedV2};
use strait_signal::omemo::xml::v03::{BundleV03, DeviceListV03, EncryptedV03};

macro_rules! round_trip {
    ($ty:ty, $s:expr) => {
        if let Ok(v) = <$ty>::parse($s) {
            let again = <$ty>::parse(&v.to_xml()).expect("serialized form must parse");
            assert_eq!(again, v);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::parse(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    round_trip!(DeviceListV03, s);
    round_trip!(BundleV03, s);
    round_trip!(EncryptedV03, s);
    round_trip!(DeviceListV2, s);
    round_trip!(BundleV2, s);
    round_trip!(EncryptedV2, s);
});
