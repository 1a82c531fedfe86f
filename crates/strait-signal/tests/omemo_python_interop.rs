//! Black-box compatibility with python-oldmemo / python-twomemo 2.1.0 (run only when
//! `STRAIT_OMEMO_PYTHON` names a python with `omemo==2.1.0 oldmemo[xml]==2.1.0
//! twomemo[xml]==2.1.0`; see tests/data/omemo/README.md).
//!
//! We re-serialize the python-made fixtures (device lists, bundles, Alice's `<encrypted/>`
//! messages to Bob), add a few synthetic elements and payloads of our own, and have
//! `check_rust_xml.py` parse them with the python schema-validating parsers, compare them with
//! python's own objects, let python's Bob (restored from `py_state.json`) decrypt our
//! re-serialized messages, and decrypt our payloads with the python backends.

use std::path::Path;
use std::process::Command;

use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_signal::omemo::payload::{encrypt_v2, encrypt_v03};
use strait_signal::omemo::xml::v2::{BundleV2, DeviceListV2, DeviceV2, EncryptedV2, KeyV2, KeysV2};
use strait_signal::omemo::xml::v03::{BundleV03, DeviceListV03, EncryptedV03};

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/omemo")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(data_dir().join(name)).unwrap()
}

fn hex_or_dash(b: &[u8]) -> String {
    if b.is_empty() {
        "-".into()
    } else {
        hex::encode(b)
    }
}

fn write_rust_outputs(dir: &Path) {
    let w = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    w(
        "rust_v03_devicelist.xml",
        DeviceListV03::parse(&fixture("py_v03_devicelist.xml"))
            .unwrap()
            .to_xml(),
    );
    for name in ["v2_devicelist.xml", "v2_devicelist_labelled.xml"] {
        w(
            &format!("rust_{name}"),
            DeviceListV2::parse(&fixture(&format!("py_{name}")))
                .unwrap()
                .to_xml(),
        );
    }
    let ids = [1, 4223, 0x7FFF_FFFF];
    w(
        "rust_v03_devicelist_synthetic.xml",
        DeviceListV03 {
            devices: ids.to_vec(),
        }
        .to_xml(),
    );
    w(
        "rust_v2_devicelist_synthetic.xml",
        DeviceListV2 {
            devices: ids
                .iter()
                .map(|&id| DeviceV2 {
                    id,
                    label: None,
                    label_sig: None,
                })
                .collect(),
        }
        .to_xml(),
    );
    w(
        "rust_v03_bundle.xml",
        BundleV03::parse(&fixture("py_v03_bundle.xml"))
            .unwrap()
            .to_xml(),
    );
    w(
        "rust_v2_bundle.xml",
        BundleV2::parse(&fixture("py_v2_bundle.xml"))
            .unwrap()
            .to_xml(),
    );
    w(
        "rust_v03_encrypted.xml",
        EncryptedV03::parse(&fixture("py_v03_encrypted.xml"))
            .unwrap()
            .to_xml(),
    );
    w(
        "rust_v2_encrypted.xml",
        EncryptedV2::parse(&fixture("py_v2_encrypted.xml"))
            .unwrap()
            .to_xml(),
    );
    // Shaped like an OMEMOAuthenticatedMessage {mac(16), message: OMEMOMessage {n, pn, dh_pub(32),
    // ciphertext(48)}} (XEP-0384 protobuf schema) so that twomemo's parser accepts it.
    let auth_msg = |seed: u8| {
        let mut inner = vec![0x08, 0x00, 0x10, 0x00, 0x1a, 0x20];
        inner.extend([seed; 32]);
        inner.extend([0x22, 0x30]);
        inner.extend([seed ^ 0xff; 48]);
        let mut outer = vec![0x0a, 0x10];
        outer.extend([seed; 16]);
        outer.extend([0x12, inner.len() as u8]);
        outer.extend(inner);
        outer
    };
    let key = |rid: u32, kex| KeyV2 {
        rid,
        kex,
        data: auth_msg(rid as u8),
    };
    w(
        "rust_v2_encrypted_synthetic.xml",
        EncryptedV2 {
            sid: 27183,
            recipients: vec![
                KeysV2 {
                    jid: "juliet@capulet.lit".into(),
                    keys: vec![key(31415, false)],
                },
                KeysV2 {
                    jid: "romeo@montague.lit".into(),
                    keys: vec![key(1337, false), key(12321, false)],
                },
            ],
            payload: None,
        }
        .to_xml(),
    );

    let mut rng = StdRng::seed_from_u64(2);
    let mut lines = String::new();
    // (No empty plaintext: python-oldmemo treats an empty ciphertext as "no payload".)
    for pt in [
        &b"Hello from Rust"[..],
        b"x",
        "ünïcødé ✓".repeat(9).as_bytes(),
    ] {
        let (km, iv, ct) = encrypt_v03(pt, &mut rng);
        lines += &format!(
            "v03 {} {} {} {}\n",
            hex::encode(km),
            hex::encode(iv),
            hex_or_dash(&ct),
            hex_or_dash(pt)
        );
        let (km, ct) = encrypt_v2(pt, &mut rng);
        lines += &format!(
            "v2 {} {} {}\n",
            hex::encode(km),
            hex::encode(&ct),
            hex_or_dash(pt)
        );
    }
    w("rust_payloads.txt", lines);
}

#[test]
fn python_omemo_accepts_our_xml_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    write_rust_outputs(dir.path());
    let Ok(python) = std::env::var("STRAIT_OMEMO_PYTHON") else {
        // scripts/test.sh always sets it; in CI a missing peer is a failure, not a pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "STRAIT_OMEMO_PYTHON must name the python with omemo/oldmemo/twomemo in CI"
        );
        eprintln!("STRAIT_OMEMO_PYTHON not set: skipping the python-omemo cross-check");
        return;
    };
    let out = Command::new(python)
        .arg(data_dir().join("check_rust_xml.py"))
        .arg(dir.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python check failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("OK payloads decrypted by python"),
        "{stdout}"
    );
    eprintln!("{stdout}");
}
