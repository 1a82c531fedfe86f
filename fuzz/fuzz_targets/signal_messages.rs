//! Fuzz every strait-signal parser of bytes from outside (libsignal v3 / OMEMO 0.3 side):
//! `SignalMessage`, `PreKeySignalMessage` (and their `CiphertextMessage` classification), stored
//! `SessionRecord` / `SessionState` / `RatchetState` / prekey / identity blobs, public and
//! private keys, XEdDSA signatures and fingerprints; and the decryption path itself on an
//! established session.
//!
//! Invariants:
//! - nothing panics;
//! - a parsed message keeps the bytes as received, and re-encoding its fields gives bytes that
//!   parse back to exactly that message;
//! - a parsed stored blob re-serializes to a fixed point (serialize → parse → serialize);
//! - a parsed public key re-serializes to bytes that parse to the same key;
//! - a decryption that fails leaves the store exactly as it was.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore};
use strait_signal::cipher::{SessionBuilder, SessionCipher};
use strait_signal::fingerprint::{omemo_fingerprint, omemo_fingerprint_from_ed25519};
use strait_signal::keys::{IdentityKeyPair, PrivateKey, PublicKey};
use strait_signal::message::{
    CiphertextMessage, PREKEY_TYPE, PreKeySignalMessage, SignalMessage, WHISPER_TYPE,
};
use strait_signal::prekeys::{self, PreKeyRecord, SignedPreKeyRecord};
use strait_signal::ratchet::{LIBSIGNAL_V3, OMEMO2, RatchetState};
use strait_signal::session::{SessionRecord, SessionState};
use strait_signal::store::memory::InMemoryStore;
use strait_signal::store::{
    Address, IdentityKeyStore, PreKeyStore, SessionStore, SignedPreKeyStore,
};
use strait_signal::x3dh::PreKeyBundle;
use strait_signal::xeddsa;

/// A deterministic RNG (libFuzzer wants reproducible runs; secrecy is irrelevant here).
struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for FuzzRng {}

fn alice() -> Address {
    Address::new("alice@example.org", 1)
}
fn bob() -> Address {
    Address::new("bob@example.org", 2)
}

/// Bob's store with an established session with Alice (and a fresh one before it), built once.
struct Fixture {
    alice_fresh: InMemoryStore,
    bob_identity: IdentityKeyPair,
    bob_fresh: InMemoryStore,
    bob: InMemoryStore,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = FuzzRng(1);
        let mut a = InMemoryStore::generate(&mut rng);
        let mut b = InMemoryStore::generate(&mut rng);
        let identity = b.identity_key_pair().unwrap();
        let spk = SignedPreKeyRecord::generate(&identity, 1, 0, &mut rng);
        b.store_signed_pre_key(&spk).unwrap();
        for pk in prekeys::generate_pre_keys(1, 4, &mut rng) {
            b.store_pre_key(&pk).unwrap();
        }
        let bundle = PreKeyBundle {
            registration_id: b.local_registration_id().unwrap(),
            device_id: 2,
            pre_key: Some((1, b.load_pre_key(1).unwrap().unwrap().key_pair.public)),
            signed_pre_key_id: 1,
            signed_pre_key: spk.key_pair.public,
            signed_pre_key_signature: spk.signature,
            identity_key: *identity.public_key(),
        };
        let (alice_fresh, bob_fresh) = (a.clone(), b.clone());
        SessionBuilder::process_prekey_bundle(&mut a, &bob(), &bundle, &mut rng).unwrap();
        let m = SessionCipher::encrypt(&mut a, &bob(), b"hi", &mut rng).unwrap();
        SessionCipher::decrypt(&mut b, &alice(), m.message_type(), m.serialize(), &mut rng)
            .unwrap();
        Fixture {
            alice_fresh,
            bob_identity: identity,
            bob_fresh,
            bob: b,
        }
    })
}

fn check_signal_message(data: &[u8]) {
    let Ok(m) = SignalMessage::deserialize(data) else {
        return;
    };
    assert_eq!(
        m.serialize(),
        data,
        "parsed message must keep the received bytes"
    );
    assert_eq!(
        SignalMessage::deserialize(m.serialize()).ok().as_ref(),
        Some(&m)
    );
    let k = PublicKey::from_raw([9; 32]);
    let _ = m.verify_mac(&k, &k, &[0; 32]);
    let rebuilt = SignalMessage::new(
        &[1; 32],
        *m.ratchet_key(),
        m.counter(),
        m.previous_counter(),
        m.ciphertext().to_vec(),
        &k,
        &k,
    );
    let again = SignalMessage::deserialize(rebuilt.serialize()).expect("re-encoded message parses");
    assert_eq!(again, rebuilt);
    assert_eq!(again.ratchet_key(), m.ratchet_key());
    assert_eq!(again.counter(), m.counter());
    assert_eq!(again.previous_counter(), m.previous_counter());
    assert_eq!(again.ciphertext(), m.ciphertext());
    assert!(again.verify_mac(&k, &k, &[1; 32]));
    let c = CiphertextMessage::Whisper(m);
    assert_eq!(c.message_type(), WHISPER_TYPE);
    assert_eq!(c.serialize(), data);
}

fn check_prekey_message(data: &[u8]) {
    let Ok(m) = PreKeySignalMessage::deserialize(data) else {
        return;
    };
    assert_eq!(
        m.serialize(),
        data,
        "parsed message must keep the received bytes"
    );
    assert_eq!(
        PreKeySignalMessage::deserialize(m.serialize())
            .ok()
            .as_ref(),
        Some(&m)
    );
    let rebuilt = PreKeySignalMessage::new(
        m.registration_id(),
        m.pre_key_id(),
        m.signed_pre_key_id(),
        *m.base_key(),
        *m.identity_key(),
        m.message().clone(),
    );
    let again =
        PreKeySignalMessage::deserialize(rebuilt.serialize()).expect("re-encoded message parses");
    assert_eq!(again, rebuilt);
    assert_eq!(again.registration_id(), m.registration_id());
    assert_eq!(again.pre_key_id(), m.pre_key_id());
    assert_eq!(again.signed_pre_key_id(), m.signed_pre_key_id());
    assert_eq!(again.base_key(), m.base_key());
    assert_eq!(again.identity_key(), m.identity_key());
    assert_eq!(again.message(), m.message());
    let c = CiphertextMessage::PreKey(m);
    assert_eq!(c.message_type(), PREKEY_TYPE);
    assert!(c.is_prekey());
    assert_eq!(c.serialize(), data);
}

/// serialize → parse → serialize is a fixed point for whatever parses.
macro_rules! fixed_point {
    ($parse:expr, $ser:expr, $data:expr) => {
        if let Ok(v) = $parse($data) {
            let once = $ser(&v).to_vec();
            let v2 = $parse(&once).expect("serialized form parses");
            assert_eq!(
                $ser(&v2).to_vec(),
                once,
                "serialization is not a fixed point"
            );
        }
    };
}

fn check_stored(data: &[u8]) {
    fixed_point!(SessionRecord::deserialize, SessionRecord::serialize, data);
    fixed_point!(SessionState::deserialize, SessionState::serialize, data);
    fixed_point!(
        |d| RatchetState::from_bytes(LIBSIGNAL_V3, d),
        RatchetState::to_bytes,
        data
    );
    fixed_point!(
        |d| RatchetState::from_bytes(OMEMO2, d),
        RatchetState::to_bytes,
        data
    );
    fixed_point!(PreKeyRecord::deserialize, PreKeyRecord::serialize, data);
    fixed_point!(
        SignedPreKeyRecord::deserialize,
        SignedPreKeyRecord::serialize,
        data
    );
    fixed_point!(
        IdentityKeyPair::deserialize,
        IdentityKeyPair::serialize,
        data
    );

    // A stored session, however odd, must not make encryption or decryption panic.
    if let Ok(mut record) = SessionRecord::deserialize(data) {
        let mut rng = FuzzRng(data.len() as u64);
        if let Some(state) = record.current_mut()
            && let Ok(m) = state.encrypt(b"x")
        {
            let parsed = match &m {
                CiphertextMessage::PreKey(p) => p.message().clone(),
                CiphertextMessage::Whisper(w) => w.clone(),
            };
            let _ = state.clone().decrypt(&parsed, &mut rng);
        }
        let _ = strait_signal::cipher::trial_decrypt(
            &mut record,
            &SignalMessage::new(
                &[0; 32],
                PublicKey::from_raw([9; 32]),
                data.len() as u32,
                0,
                vec![0; 16],
                &PublicKey::from_raw([9; 32]),
                &PublicKey::from_raw([9; 32]),
            ),
            &mut rng,
        );
    }
}

fn check_keys(data: &[u8]) {
    if let Ok(k) = PublicKey::deserialize(data) {
        assert_eq!(PublicKey::deserialize(&k.serialize()).ok(), Some(k));
        assert_eq!(PublicKey::deserialize_exact(&k.serialize()).ok(), Some(k));
        let _ = k.is_canonical();
        let _ = k.to_ed25519(0);
        let _ = k.to_ed25519(1);
    }
    if let Ok(k) = PublicKey::deserialize_exact(data) {
        assert_eq!(&k.serialize()[..], data);
    }
    if let Ok(ed) = <[u8; 32]>::try_from(data.get(..32).unwrap_or_default()) {
        let _ = PublicKey::from_ed25519(&ed);
    }
    if let Ok(k) = PrivateKey::from_slice(data) {
        // clamping is idempotent
        let again = PrivateKey::from_slice(&k.to_bytes()[..]).unwrap();
        assert_eq!(*again.to_bytes(), *k.to_bytes());
    }
    let _ = omemo_fingerprint(data);
    if let Ok(ik) = <[u8; 32]>::try_from(data) {
        let _ = omemo_fingerprint_from_ed25519(&ik);
    }
    // key ‖ signature ‖ message
    if data.len() >= 32 + 64 {
        let key = PublicKey::from_raw(data[..32].try_into().unwrap());
        let sig: [u8; 64] = data[32..96].try_into().unwrap();
        let msg = &data[96..];
        let _ = xeddsa::verify(&key, msg, &sig);
        let _ = xeddsa::verify_spec(&key, msg, &sig);
        let _ = xeddsa::verify_ed25519(key.as_raw(), msg, &sig);
    }
}

/// Received bytes through the session layer: errors must leave the store untouched.
fn check_decrypt(selector: u8, data: &[u8]) {
    let f = fixture();
    let base = if selector & 1 == 0 {
        &f.bob
    } else {
        &f.bob_fresh
    };
    let message_type = if selector & 2 == 0 {
        WHISPER_TYPE
    } else {
        PREKEY_TYPE
    };
    let mut store = base.clone();
    let mut rng = FuzzRng(u64::from(selector));
    let before = snapshot(&store);
    if SessionCipher::decrypt(&mut store, &alice(), message_type, data, &mut rng).is_err() {
        assert!(
            before == snapshot(&store),
            "a failed decryption changed the store"
        );
    }
}

/// A bundle with attacker-chosen signed prekey and one-time prekey (validly signed, so that
/// X3DH runs on them), and one with an attacker-chosen identity key.
fn check_bundle(data: &[u8]) {
    if data.len() < 64 {
        return;
    }
    let f = fixture();
    let mut rng = FuzzRng(data.len() as u64);
    let spk = PublicKey::from_raw(data[..32].try_into().unwrap());
    let opk = PublicKey::from_raw(data[32..64].try_into().unwrap());
    let bundle = PreKeyBundle {
        registration_id: 1,
        device_id: 2,
        pre_key: Some((1, opk)),
        signed_pre_key_id: 1,
        signed_pre_key: spk,
        signed_pre_key_signature: f.bob_identity.sign(&spk.serialize(), &mut rng),
        identity_key: *f.bob_identity.public_key(),
    };
    let mut store = f.alice_fresh.clone();
    if SessionBuilder::process_prekey_bundle(&mut store, &bob(), &bundle, &mut rng).is_ok() {
        let _ = SessionCipher::encrypt(&mut store, &bob(), b"x", &mut rng);
    }
    let hostile = PreKeyBundle {
        identity_key: spk,
        ..bundle
    };
    let mut store = f.alice_fresh.clone();
    let _ = SessionBuilder::process_prekey_bundle(&mut store, &bob(), &hostile, &mut rng);
}

fn snapshot(store: &InMemoryStore) -> (Option<Vec<u8>>, Vec<u32>, Option<PublicKey>) {
    (
        store
            .load_session(&alice())
            .unwrap()
            .map(|r| r.serialize().to_vec()),
        store.pre_key_ids().unwrap(),
        store.get_identity(&alice()).unwrap(),
    )
}

fuzz_target!(|data: &[u8]| {
    check_signal_message(data);
    check_prekey_message(data);
    check_stored(data);
    check_keys(data);
    check_bundle(data);
    if let Some((&selector, rest)) = data.split_first() {
        check_decrypt(selector, rest);
    }
});
