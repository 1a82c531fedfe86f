//! Fuzz the OMEMO 2 (`urn:xmpp:omemo:2`) parsers of bytes from outside: the `twomemo.proto`
//! messages (`OMEMOMessage`, `OMEMOAuthenticatedMessage`, `OMEMOKeyExchange`), stored session
//! records and signed prekeys, the session layer's decryption of received `<key>` bytes (plain
//! and key exchange), and session building from a hostile bundle.
//!
//! Invariants:
//! - nothing panics;
//! - protobuf decode → encode → decode gives the same message;
//! - a parsed stored blob re-serializes to a fixed point;
//! - a decryption that fails leaves the session record and the store exactly as they were.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rand_core::{CryptoRng, RngCore};
use strait_signal::keys::IdentityKeyPair;
use strait_signal::omemo2::proto::{OMEMOAuthenticatedMessage, OMEMOKeyExchange, OMEMOMessage};
use strait_signal::omemo2::store::own_bundle;
use strait_signal::omemo2::x3dh::identity_to_x25519;
use strait_signal::omemo2::{
    InMemoryOmemo2Store, Omemo2Bundle, Omemo2SessionRecord, Omemo2SignedPreKey, Omemo2Store,
    Omemo2Trust,
};

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

/// Alice (initiator) and Bob (responder) with a confirmed session, built once.
struct Fixture {
    alice_identity: IdentityKeyPair,
    bob_identity: IdentityKeyPair,
    /// Bob's store before the key exchange (all prekeys present).
    bob_store: InMemoryOmemo2Store,
    /// Bob's record after the exchange.
    bob: Omemo2SessionRecord,
    /// Alice's record, confirmed.
    alice: Omemo2SessionRecord,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = FuzzRng(2);
        let alice_identity = IdentityKeyPair::generate(&mut rng);
        let bob_identity = IdentityKeyPair::generate(&mut rng);
        let bob_store = InMemoryOmemo2Store::generate(&bob_identity, &mut rng).unwrap();
        let bundle = own_bundle(&bob_store, &bob_identity, 2).unwrap();
        let mut alice = Omemo2SessionRecord::new();
        alice.initiate(&alice_identity, &bundle, &mut rng).unwrap();
        let kex = alice.encrypt(&[7; 48]).unwrap();
        let mut bob = Omemo2SessionRecord::new();
        let mut store = bob_store.clone();
        bob.decrypt_key_exchange(&bob_identity, &mut store, kex.bytes(), &mut rng)
            .unwrap();
        let answer = bob.encrypt(&[0; 32]).unwrap();
        alice.decrypt_message(answer.bytes(), &mut rng).unwrap();
        Fixture {
            alice_identity,
            bob_identity,
            bob_store,
            bob,
            alice,
        }
    })
}

macro_rules! proto_round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(m) = <$ty>::decode($data) {
            let bytes = m.encode_to_vec();
            let again = <$ty>::decode(bytes.as_slice()).expect("re-encoded message decodes");
            assert_eq!(again, m);
        }
    };
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

fn store_snapshot(s: &InMemoryOmemo2Store) -> (Vec<u32>, usize, Vec<u32>) {
    (
        s.omemo2_prekey_ids().unwrap(),
        s.omemo2_signed_prekeys().unwrap().len(),
        s.omemo2_session_devices("alice@example.org").unwrap(),
    )
}

fn check_decrypt(selector: u8, data: &[u8]) {
    let f = fixture();
    let mut rng = FuzzRng(u64::from(selector));
    match selector & 3 {
        // Bob receives a plain message on his session / Alice on hers.
        0 | 1 => {
            let base = if selector & 3 == 0 { &f.bob } else { &f.alice };
            let mut record = base.clone();
            if record.decrypt_message(data, &mut rng).is_err() {
                assert!(
                    record.serialize() == base.serialize(),
                    "a failed decryption changed the record"
                );
            }
            if let Some(mut session) = base.current().cloned() {
                let _ = session.decrypt(data, &mut rng);
            }
        }
        // Bob receives a key exchange, with or without the session it may repeat.
        _ => {
            let base = if selector & 3 == 2 {
                f.bob.clone()
            } else {
                Omemo2SessionRecord::new()
            };
            let mut record = base.clone();
            let mut store = f.bob_store.clone();
            let before = store_snapshot(&store);
            let r = record.decrypt_key_exchange(&f.bob_identity, &mut store, data, &mut rng);
            if r.is_err() {
                assert!(
                    record.serialize() == base.serialize(),
                    "a failed key exchange changed the record"
                );
                assert!(
                    store_snapshot(&store) == before,
                    "a failed key exchange changed the store"
                );
            }
        }
    }
}

/// A bundle with attacker-chosen keys (signed, so that X3DH runs on them).
fn check_bundle(data: &[u8]) {
    if data.len() < 64 {
        return;
    }
    let f = fixture();
    let mut rng = FuzzRng(data.len() as u64);
    let spk: [u8; 32] = data[..32].try_into().unwrap();
    let pk: [u8; 32] = data[32..64].try_into().unwrap();
    let signer = &f.bob_identity;
    let bundle = Omemo2Bundle {
        device_id: 2,
        ik: signer.ed25519_public(),
        spk_id: 1,
        spk,
        spks: signer.sign_ed25519_compatible(&spk, &mut rng),
        prekeys: vec![(1, pk)],
    };
    let mut record = Omemo2SessionRecord::new();
    if record
        .initiate(&f.alice_identity, &bundle, &mut rng)
        .is_ok()
    {
        let _ = record.encrypt(&[1; 48]);
    }
    // and one whose identity key is attacker-chosen too (the signature check must fail safely)
    let hostile = Omemo2Bundle { ik: spk, ..bundle };
    let _ = hostile.verify_signature();
    let _ = Omemo2SessionRecord::new().initiate(&f.alice_identity, &hostile, &mut rng);
}

fuzz_target!(|data: &[u8]| {
    proto_round_trip!(OMEMOMessage, data);
    proto_round_trip!(OMEMOAuthenticatedMessage, data);
    proto_round_trip!(OMEMOKeyExchange, data);
    fixed_point!(
        Omemo2SessionRecord::deserialize,
        Omemo2SessionRecord::serialize,
        data
    );
    fixed_point!(
        Omemo2SignedPreKey::deserialize,
        Omemo2SignedPreKey::serialize,
        data
    );
    if let Some(&b) = data.first()
        && let Ok(t) = Omemo2Trust::from_code(b)
    {
        assert_eq!(t.to_code(), b);
    }
    if let Ok(ik) = <[u8; 32]>::try_from(data) {
        let _ = identity_to_x25519(&ik);
    }
    check_bundle(data);
    if let Some((&selector, rest)) = data.split_first() {
        check_decrypt(selector, rest);
    }
});
