//! Alice ↔ Bob sessions over in-memory stores (libsignal v3 wire format).

use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_signal::cipher::{SessionBuilder, SessionCipher};
use strait_signal::error::SignalError;
use strait_signal::keys::{IdentityKeyPair, KeyPair, PublicKey};
use strait_signal::message::{CiphertextMessage, PreKeySignalMessage, SignalMessage};
use strait_signal::prekeys::{self, PreKeyRecord, SignedPreKeyRecord};
use strait_signal::session::SessionRecord;
use strait_signal::store::memory::{InMemoryStore, TrustPolicy};
use strait_signal::store::{
    Address, IdentityKeyStore, PreKeyStore, SessionStore, SignedPreKeyStore,
};
use strait_signal::x3dh::PreKeyBundle;

const BOB_DEVICE: u32 = 2;

struct Party {
    store: InMemoryStore,
    addr_of_peer: Address,
}

fn alice_addr() -> Address {
    Address::new("alice@example.org", 1)
}
fn bob_addr() -> Address {
    Address::new("bob@example.org", BOB_DEVICE)
}

/// Bob's store with signed prekey `spk_id` and prekeys 1..=10.
fn bob_store(rng: &mut StdRng) -> InMemoryStore {
    let mut store = InMemoryStore::generate(rng);
    let identity = store.identity_key_pair().unwrap();
    let spk = SignedPreKeyRecord::generate(&identity, 1, 1_700_000_000_000, rng);
    store.store_signed_pre_key(&spk).unwrap();
    for pk in prekeys::generate_pre_keys(1, 10, rng) {
        store.store_pre_key(&pk).unwrap();
    }
    store
}

fn bundle(store: &InMemoryStore, spk_id: u32, pre_key_id: Option<u32>) -> PreKeyBundle {
    let spk = store.load_signed_pre_key(spk_id).unwrap().unwrap();
    PreKeyBundle {
        registration_id: store.local_registration_id().unwrap(),
        device_id: BOB_DEVICE,
        pre_key: pre_key_id
            .map(|id| (id, store.load_pre_key(id).unwrap().unwrap().key_pair.public)),
        signed_pre_key_id: spk.id,
        signed_pre_key: spk.key_pair.public,
        signed_pre_key_signature: spk.signature,
        identity_key: *store.identity_key_pair().unwrap().public_key(),
    }
}

fn setup(seed: u64) -> (Party, Party, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut alice = InMemoryStore::generate(&mut rng);
    let bob = bob_store(&mut rng);
    let b = bundle(&bob, 1, Some(1));
    SessionBuilder::process_prekey_bundle(&mut alice, &bob_addr(), &b, &mut rng).unwrap();
    (
        Party {
            store: alice,
            addr_of_peer: bob_addr(),
        },
        Party {
            store: bob,
            addr_of_peer: alice_addr(),
        },
        rng,
    )
}

fn send(p: &mut Party, text: &[u8], rng: &mut StdRng) -> CiphertextMessage {
    SessionCipher::encrypt(&mut p.store, &p.addr_of_peer.clone(), text, rng).unwrap()
}

fn recv(p: &mut Party, m: &CiphertextMessage, rng: &mut StdRng) -> Result<Vec<u8>, SignalError> {
    let addr = p.addr_of_peer.clone();
    SessionCipher::decrypt(&mut p.store, &addr, m.message_type(), m.serialize(), rng)
}

fn record_bytes(p: &Party) -> Vec<u8> {
    p.store
        .load_session(&p.addr_of_peer)
        .unwrap()
        .map(|r| r.serialize().to_vec())
        .unwrap_or_default()
}

/// Alice and Bob with an acknowledged session (one message each way).
fn established(seed: u64) -> (Party, Party, StdRng) {
    let (mut a, mut b, mut rng) = setup(seed);
    let m = send(&mut a, b"hello", &mut rng);
    assert_eq!(recv(&mut b, &m, &mut rng).unwrap(), b"hello");
    let r = send(&mut b, b"hi", &mut rng);
    assert_eq!(recv(&mut a, &r, &mut rng).unwrap(), b"hi");
    (a, b, rng)
}

#[test]
fn first_message_prekey_then_whisper_after_reply() {
    let (mut a, mut b, mut rng) = setup(1);
    let m1 = send(&mut a, b"one", &mut rng);
    let m2 = send(&mut a, b"two", &mut rng);
    assert_eq!(m1.message_type(), 3);
    assert_eq!(m1.serialize()[0], 0x33);
    assert_eq!(m2.message_type(), 3, "still PreKey until the first reply");
    assert_eq!(recv(&mut b, &m1, &mut rng).unwrap(), b"one");
    // one-time prekey consumed, identity saved
    assert!(b.store.load_pre_key(1).unwrap().is_none());
    assert_eq!(
        b.store.get_identity(&alice_addr()).unwrap(),
        Some(*a.store.identity_key_pair().unwrap().public_key())
    );
    assert_eq!(recv(&mut b, &m2, &mut rng).unwrap(), b"two");
    let r = send(&mut b, b"reply", &mut rng);
    assert_eq!(r.message_type(), 2, "the responder never wraps");
    assert_eq!(recv(&mut a, &r, &mut rng).unwrap(), b"reply");
    let m3 = send(&mut a, b"three", &mut rng);
    assert_eq!(m3.message_type(), 2);
    assert_eq!(recv(&mut b, &m3, &mut rng).unwrap(), b"three");
}

#[test]
fn many_messages_both_ways() {
    let (mut a, mut b, mut rng) = established(2);
    for round in 0..40u32 {
        let (from, to) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let burst = 1 + (round % 5);
        let msgs: Vec<_> = (0..burst)
            .map(|i| {
                let text = format!("round {round} message {i}");
                (text.clone(), send(from, text.as_bytes(), &mut rng))
            })
            .collect();
        for (text, m) in msgs {
            assert_eq!(m.message_type(), 2);
            assert_eq!(recv(to, &m, &mut rng).unwrap(), text.as_bytes());
        }
    }
    // an empty plaintext and a long one
    let m = send(&mut a, b"", &mut rng);
    assert_eq!(recv(&mut b, &m, &mut rng).unwrap(), b"");
    let long = vec![0x5a; 10_000];
    let m = send(&mut b, &long, &mut rng);
    assert_eq!(recv(&mut a, &m, &mut rng).unwrap(), long);
}

#[test]
fn out_of_order_within_and_across_chains_and_dropped() {
    let (mut a, mut b, mut rng) = established(3);
    // chain 1 of Alice: 6 messages, delivered 4, 1, 5, 0 (2 and 3 dropped for now)
    let c1: Vec<_> = (0..6).map(|i| send(&mut a, &[1, i], &mut rng)).collect();
    for i in [4usize, 1, 5, 0] {
        assert_eq!(recv(&mut b, &c1[i], &mut rng).unwrap(), [1, i as u8]);
    }
    // Bob replies; Alice ratchets to chain 2
    let r = send(&mut b, b"r", &mut rng);
    assert_eq!(recv(&mut a, &r, &mut rng).unwrap(), b"r");
    let c2: Vec<_> = (0..3).map(|i| send(&mut a, &[2, i], &mut rng)).collect();
    assert_eq!(recv(&mut b, &c2[2], &mut rng).unwrap(), [2, 2]);
    // a late message of the previous chain still decrypts (libsignal keeps old receiver chains)
    assert_eq!(recv(&mut b, &c1[3], &mut rng).unwrap(), [1, 3]);
    assert_eq!(recv(&mut b, &c2[0], &mut rng).unwrap(), [2, 0]);
    assert_eq!(recv(&mut b, &c1[2], &mut rng).unwrap(), [1, 2]);
    // c2[1] is dropped forever; conversation continues
    let r = send(&mut b, b"r2", &mut rng);
    assert_eq!(recv(&mut a, &r, &mut rng).unwrap(), b"r2");
    let m = send(&mut a, b"after", &mut rng);
    assert_eq!(recv(&mut b, &m, &mut rng).unwrap(), b"after");
    // Bob's skipped keys: only c2[1] is left cached
    let rec = b.store.load_session(&alice_addr()).unwrap().unwrap();
    assert_eq!(rec.current().unwrap().ratchet().skipped_key_count(), 1);
}

#[test]
fn duplicate_rejected_without_state_change() {
    let (mut a, mut b, mut rng) = established(4);
    let m0 = send(&mut a, b"x", &mut rng);
    let m1 = send(&mut a, b"y", &mut rng);
    recv(&mut b, &m1, &mut rng).unwrap();
    recv(&mut b, &m0, &mut rng).unwrap();
    let before = record_bytes(&b);
    for m in [&m0, &m1] {
        match recv(&mut b, m, &mut rng) {
            Err(SignalError::DuplicateMessage { counter }) => {
                assert_eq!(
                    counter,
                    SignalMessage::deserialize(m.serialize()).unwrap().counter()
                )
            }
            other => panic!("expected DuplicateMessage, got {other:?}"),
        }
        assert_eq!(record_bytes(&b), before);
    }
}

#[test]
fn forward_jump_limit() {
    let (mut a, mut b, mut rng) = established(5);
    let msgs: Vec<_> = (0..2002u32)
        .map(|i| send(&mut a, &i.to_be_bytes(), &mut rng))
        .collect();
    let before = record_bytes(&b);
    match recv(&mut b, &msgs[2001], &mut rng) {
        Err(SignalError::TooFarInFuture { jump }) => assert_eq!(jump, 2001),
        other => panic!("expected TooFarInFuture, got {other:?}"),
    }
    assert_eq!(record_bytes(&b), before);
    // exactly 2000 ahead is accepted; the 2000 skipped keys are cached and usable
    assert_eq!(
        recv(&mut b, &msgs[2000], &mut rng).unwrap(),
        2000u32.to_be_bytes()
    );
    assert_eq!(
        recv(&mut b, &msgs[0], &mut rng).unwrap(),
        0u32.to_be_bytes()
    );
    assert_eq!(
        recv(&mut b, &msgs[1999], &mut rng).unwrap(),
        1999u32.to_be_bytes()
    );
    assert_eq!(
        recv(&mut b, &msgs[2001], &mut rng).unwrap(),
        2001u32.to_be_bytes()
    );
}

#[test]
fn tampering_rejected_with_state_untouched() {
    let (mut a, mut b, mut rng) = established(6);
    let m = send(&mut a, b"secret", &mut rng);
    let bytes = m.serialize().to_vec();
    let before = record_bytes(&b);
    let addr = alice_addr();
    let n = bytes.len();
    // MAC byte
    let mut t = bytes.clone();
    t[n - 1] ^= 1;
    assert!(matches!(
        SessionCipher::decrypt_signal_message(&mut b.store, &addr, &t, &mut rng),
        Err(SignalError::BadMac)
    ));
    // ciphertext byte (just before the MAC)
    let mut t = bytes.clone();
    t[n - 9] ^= 1;
    assert!(matches!(
        SessionCipher::decrypt_signal_message(&mut b.store, &addr, &t, &mut rng),
        Err(SignalError::BadMac)
    ));
    // version byte: 0x34 still parses (high nibble 3) but the MAC covers it
    let mut t = bytes.clone();
    t[0] = 0x34;
    assert!(matches!(
        SessionCipher::decrypt_signal_message(&mut b.store, &addr, &t, &mut rng),
        Err(SignalError::BadMac)
    ));
    let mut t = bytes.clone();
    t[0] = 0x23;
    assert!(matches!(
        SessionCipher::decrypt_signal_message(&mut b.store, &addr, &t, &mut rng),
        Err(SignalError::UnsupportedVersion(2))
    ));
    // truncated
    assert!(
        SessionCipher::decrypt_signal_message(&mut b.store, &addr, &bytes[..n - 1], &mut rng)
            .is_err()
    );
    assert_eq!(record_bytes(&b), before);
    assert_eq!(recv(&mut b, &m, &mut rng).unwrap(), b"secret");
}

#[test]
fn sixth_receiver_chain_drops_the_oldest() {
    let (mut a, mut b, mut rng) = established(7);
    // Alice's current chain (chain 1 at Bob): msg 0 delivered, msg 1 held back.
    let held0 = send(&mut a, b"c1-0", &mut rng);
    let held = send(&mut a, b"c1-1", &mut rng);
    recv(&mut b, &held0, &mut rng).unwrap();
    let mut snapshots = Vec::new();
    for i in 0..5 {
        snapshots.push(b.store.clone());
        let r = send(&mut b, b"ping", &mut rng);
        recv(&mut a, &r, &mut rng).unwrap();
        let m = send(&mut a, format!("chain {}", i + 2).as_bytes(), &mut rng);
        recv(&mut b, &m, &mut rng).unwrap();
    }
    let rec = b.store.load_session(&alice_addr()).unwrap().unwrap();
    assert_eq!(
        rec.current().unwrap().ratchet().receiver_chain_keys().len(),
        5
    );
    // With 5 chains (before the 6th) the held message still decrypts…
    let mut five = Party {
        store: snapshots[4].clone(),
        addr_of_peer: alice_addr(),
    };
    assert_eq!(recv(&mut five, &held, &mut rng).unwrap(), b"c1-1");
    // …after the 6th, chain 1 is gone and the message fails, leaving the state alone.
    let before = record_bytes(&b);
    assert!(recv(&mut b, &held, &mut rng).is_err());
    assert_eq!(record_bytes(&b), before);
}

#[test]
fn new_prekey_session_replaces_old_which_still_decrypts() {
    let (mut a, mut b, mut rng) = established(8);
    let old_msg = send(&mut a, b"on the old session", &mut rng);
    // Alice rebuilds from a fresh bundle (new signed prekey and prekey)
    let identity = b.store.identity_key_pair().unwrap();
    let spk2 = SignedPreKeyRecord::generate(&identity, 2, 1_700_000_100_000, &mut rng);
    b.store.store_signed_pre_key(&spk2).unwrap();
    let fresh = bundle(&b.store, 2, Some(5));
    SessionBuilder::process_prekey_bundle(&mut a.store, &bob_addr(), &fresh, &mut rng).unwrap();
    let new_msg = send(&mut a, b"on the new session", &mut rng);
    assert_eq!(new_msg.message_type(), 3);
    assert_eq!(
        recv(&mut b, &new_msg, &mut rng).unwrap(),
        b"on the new session"
    );
    let rec = b.store.load_session(&alice_addr()).unwrap().unwrap();
    assert_eq!(rec.archived_len(), 1);
    let new_base = *rec.current().unwrap().base_key();
    // the old session's message decrypts by trial and its session is promoted
    assert_eq!(
        recv(&mut b, &old_msg, &mut rng).unwrap(),
        b"on the old session"
    );
    let rec = b.store.load_session(&alice_addr()).unwrap().unwrap();
    assert_ne!(*rec.current().unwrap().base_key(), new_base);
    // Bob answers on the promoted old session; Alice finds it in her archive
    let r = send(&mut b, b"old reply", &mut rng);
    assert_eq!(recv(&mut a, &r, &mut rng).unwrap(), b"old reply");
    // messages on the new session keep working too
    let m = send(&mut a, b"again", &mut rng);
    assert_eq!(recv(&mut b, &m, &mut rng).unwrap(), b"again");
}

#[test]
fn retransmitted_prekey_message_reuses_session() {
    let (mut a, mut b, mut rng) = setup(9);
    let p0 = send(&mut a, b"p0", &mut rng);
    let p1 = send(&mut a, b"p1", &mut rng);
    assert_eq!(recv(&mut b, &p0, &mut rng).unwrap(), b"p0");
    let before = record_bytes(&b);
    // the same bytes again: the session with that base key is found, the key is used up
    assert!(matches!(
        recv(&mut b, &p0, &mut rng),
        Err(SignalError::DuplicateMessage { counter: 0 })
    ));
    assert_eq!(record_bytes(&b), before);
    // the next PreKey message (same base key, prekey already deleted) reuses the session
    assert_eq!(recv(&mut b, &p1, &mut rng).unwrap(), b"p1");
    let rec = b.store.load_session(&alice_addr()).unwrap().unwrap();
    assert_eq!(rec.archived_len(), 0);
}

#[test]
fn prekey_removed_only_after_success_and_missing_prekeys() {
    let (mut a, mut b, mut rng) = setup(10);
    let p0 = send(&mut a, b"p0", &mut rng);
    let mut bytes = p0.serialize().to_vec();
    // flip the last byte of the embedded SignalMessage (its MAC); the outer message ends with
    // the signed prekey id (field 6 follows field 4 in tag order)
    let CiphertextMessage::PreKey(pm) = &p0 else {
        panic!("PreKey expected")
    };
    let inner = pm.message().serialize();
    let at = bytes.windows(inner.len()).position(|w| w == inner).unwrap();
    bytes[at + inner.len() - 1] ^= 1;
    assert!(matches!(
        SessionCipher::decrypt_prekey_message(&mut b.store, &alice_addr(), &bytes, &mut rng),
        Err(SignalError::BadMac)
    ));
    assert!(b.store.load_pre_key(1).unwrap().is_some());
    assert!(b.store.load_session(&alice_addr()).unwrap().is_none());
    // a different receiver without the prekey
    let mut other = bob_store(&mut rng);
    other.remove_pre_key(1).unwrap();
    let r =
        SessionCipher::decrypt_prekey_message(&mut other, &alice_addr(), p0.serialize(), &mut rng);
    assert!(matches!(r, Err(SignalError::MissingPreKey(1))), "{r:?}");
    assert_eq!(recv(&mut b, &p0, &mut rng).unwrap(), b"p0");
}

#[test]
fn non_canonical_base_key_and_zero_secrets_rejected() {
    let (mut a, mut b, mut rng) = setup(11);
    let p0 = send(&mut a, b"p0", &mut rng);
    let CiphertextMessage::PreKey(pm) = &p0 else {
        panic!("PreKey expected")
    };
    // base key with u ≥ p (2^255 − 19 + 1), a low-order point, and a point with torsion
    let mut big = [0xffu8; 32];
    big[0] = 0xee;
    big[31] = 0x7f;
    let good = *pm.base_key();
    let torsioned = {
        use curve25519_dalek::montgomery::MontgomeryPoint;
        let ed = MontgomeryPoint(*good.as_raw()).to_edwards(0).unwrap();
        PublicKey::from_raw(
            (ed + curve25519_dalek::constants::EIGHT_TORSION[1])
                .to_montgomery()
                .to_bytes(),
        )
    };
    for bad in [
        PublicKey::from_raw(big),
        PublicKey::from_raw([0; 32]),
        torsioned,
    ] {
        let forged = PreKeySignalMessage::new(
            pm.registration_id(),
            pm.pre_key_id(),
            pm.signed_pre_key_id(),
            bad,
            *pm.identity_key(),
            pm.message().clone(),
        );
        assert!(matches!(
            SessionCipher::decrypt_prekey_message(
                &mut b.store,
                &alice_addr(),
                forged.serialize(),
                &mut rng
            ),
            Err(SignalError::NonCanonicalKey)
        ));
    }
    assert!(b.store.load_pre_key(1).unwrap().is_some());
    assert_eq!(recv(&mut b, &p0, &mut rng).unwrap(), b"p0");

    // a ratchet key of low order: the DH step yields an all-zero secret
    let forged = SignalMessage::new(
        &[0; 32],
        PublicKey::from_raw([0; 32]),
        0,
        0,
        vec![0; 16],
        a.store.identity_key_pair().unwrap().public_key(),
        b.store.identity_key_pair().unwrap().public_key(),
    );
    let before = record_bytes(&b);
    assert!(matches!(
        SessionCipher::decrypt_signal_message(
            &mut b.store,
            &alice_addr(),
            forged.serialize(),
            &mut rng
        ),
        Err(SignalError::ZeroSharedSecret)
    ));
    assert_eq!(record_bytes(&b), before);

    // a bundle whose (validly signed) signed prekey is a low-order point
    let identity = b.store.identity_key_pair().unwrap();
    let low = PublicKey::from_raw([0; 32]);
    let mut bad_bundle = bundle(&b.store, 1, None);
    bad_bundle.signed_pre_key = low;
    bad_bundle.signed_pre_key_signature = identity.sign(&low.serialize(), &mut rng);
    let mut carol = InMemoryStore::generate(&mut rng);
    assert!(matches!(
        SessionBuilder::process_prekey_bundle(&mut carol, &bob_addr(), &bad_bundle, &mut rng),
        Err(SignalError::ZeroSharedSecret)
    ));
    // and a bundle with a bad signature
    let mut bad_sig = bundle(&b.store, 1, None);
    bad_sig.signed_pre_key_signature[5] ^= 1;
    assert!(matches!(
        SessionBuilder::process_prekey_bundle(&mut carol, &bob_addr(), &bad_sig, &mut rng),
        Err(SignalError::InvalidSignature)
    ));
    assert!(carol.load_session(&bob_addr()).unwrap().is_none());
}

#[test]
fn trust_policy_enforced() {
    let (mut a, mut b, mut rng) = setup(12);
    let p0 = send(&mut a, b"p0", &mut rng);
    b.store.set_trust_policy(TrustPolicy::ExplicitOnly);
    assert!(matches!(
        recv(&mut b, &p0, &mut rng),
        Err(SignalError::UntrustedIdentity)
    ));
    b.store.set_trusted(
        &alice_addr(),
        *a.store.identity_key_pair().unwrap().public_key(),
    );
    assert_eq!(recv(&mut b, &p0, &mut rng).unwrap(), b"p0");
    // TOFU: a different identity for the same address is refused
    b.store.set_trust_policy(TrustPolicy::TrustOnFirstUse);
    let mut mallory = InMemoryStore::generate(&mut rng);
    let fresh = bundle(&b.store, 1, Some(2));
    SessionBuilder::process_prekey_bundle(&mut mallory, &bob_addr(), &fresh, &mut rng).unwrap();
    let m = SessionCipher::encrypt(&mut mallory, &bob_addr(), b"evil", &mut rng).unwrap();
    assert!(matches!(
        recv(&mut b, &m, &mut rng),
        Err(SignalError::UntrustedIdentity)
    ));
    assert!(b.store.load_pre_key(2).unwrap().is_some());
    // sending side: Alice refuses a bundle with an unexpected identity for Bob's address
    let other = bob_store(&mut rng);
    let foreign = bundle(&other, 1, None);
    assert!(matches!(
        SessionBuilder::process_prekey_bundle(&mut a.store, &bob_addr(), &foreign, &mut rng),
        Err(SignalError::UntrustedIdentity)
    ));
}

fn transcript(seed: u64) -> Vec<Vec<u8>> {
    let (mut a, mut b, mut rng) = setup(seed);
    let mut out = Vec::new();
    for i in 0..6u8 {
        let m = send(&mut a, &[i; 20], &mut rng);
        recv(&mut b, &m, &mut rng).unwrap();
        out.push(m.serialize().to_vec());
        let r = send(&mut b, &[i; 3], &mut rng);
        recv(&mut a, &r, &mut rng).unwrap();
        out.push(r.serialize().to_vec());
    }
    out.push(record_bytes(&a));
    out.push(record_bytes(&b));
    out
}

#[test]
fn deterministic_with_seeded_rng() {
    let t1 = transcript(99);
    let t2 = transcript(99);
    assert_eq!(t1, t2);
    assert_ne!(t1, transcript(100));
}

#[test]
fn record_roundtrip_mid_conversation() {
    let (mut a, mut b, mut rng) = established(13);
    let held: Vec<_> = (0..4).map(|i| send(&mut a, &[i], &mut rng)).collect();
    recv(&mut b, &held[3], &mut rng).unwrap();
    let rec = b.store.load_session(&alice_addr()).unwrap().unwrap();
    let bytes = rec.serialize();
    let back = SessionRecord::deserialize(&bytes).unwrap();
    assert_eq!(*back.serialize(), *bytes);
    assert_eq!(back.current().unwrap().ratchet().skipped_key_count(), 3);
    // continue on a brand-new store holding only the deserialized record and Bob's keys
    let mut b2 = Party {
        store: b.store.clone(),
        addr_of_peer: alice_addr(),
    };
    b2.store.store_session(&alice_addr(), &back).unwrap();
    for (i, m) in held.iter().take(3).enumerate() {
        assert_eq!(recv(&mut b2, m, &mut rng).unwrap(), [i as u8]);
    }
    let r = send(&mut b2, b"r", &mut rng);
    assert_eq!(recv(&mut a, &r, &mut rng).unwrap(), b"r");
    assert!(SessionRecord::deserialize(&bytes[..bytes.len() - 3]).is_err());
}

#[test]
fn archive_is_capped_at_40() {
    let (mut a, _b, mut rng) = setup(14);
    let bob = bob_store(&mut rng);
    let mut a2 = InMemoryStore::generate(&mut rng);
    for _ in 0..45 {
        SessionBuilder::process_prekey_bundle(
            &mut a2,
            &bob_addr(),
            &bundle(&bob, 1, None),
            &mut rng,
        )
        .unwrap();
    }
    let rec = a2.load_session(&bob_addr()).unwrap().unwrap();
    assert_eq!(rec.archived_len(), 40);
    assert!(rec.archived().all(|s| s.pending_pre_key().is_none()));
    assert_eq!(
        a2.sub_device_sessions("bob@example.org").unwrap(),
        vec![BOB_DEVICE]
    );
    let _ = send(&mut a, b"x", &mut rng);
}

#[test]
fn prekey_replenish_and_records() {
    let mut rng = StdRng::seed_from_u64(15);
    let mut store = InMemoryStore::generate(&mut rng);
    for pk in prekeys::generate_pre_keys(1, 5, &mut rng) {
        store.store_pre_key(&pk).unwrap();
    }
    store.remove_pre_key(2).unwrap();
    // enough: nothing to do
    assert!(
        prekeys::replenish(&mut store, 3, 10, &mut rng)
            .unwrap()
            .is_empty()
    );
    let fresh = prekeys::replenish(&mut store, 20, 25, &mut rng).unwrap();
    assert_eq!(fresh.len(), 21);
    assert_eq!(fresh[0].id, 6);
    assert_eq!(store.pre_key_ids().unwrap().len(), 25);
    // id wrap-around
    let wrap = prekeys::generate_pre_keys(prekeys::MAX_PRE_KEY_ID, 2, &mut rng);
    assert_eq!((wrap[0].id, wrap[1].id), (prekeys::MAX_PRE_KEY_ID, 1));
    // record round trips
    let pk = PreKeyRecord::generate(7, &mut rng);
    let back = PreKeyRecord::deserialize(&pk.serialize()).unwrap();
    assert_eq!((back.id, back.key_pair.public), (7, pk.key_pair.public));
    let id = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKeyRecord::generate(&id, 3, 42, &mut rng);
    assert!(strait_signal::xeddsa::verify(
        id.public_key(),
        &spk.key_pair.public.serialize(),
        &spk.signature
    ));
    let back = SignedPreKeyRecord::deserialize(&spk.serialize()).unwrap();
    assert_eq!(back.signature, spk.signature);
    assert_eq!(back.timestamp, 42);
    store.store_signed_pre_key(&spk).unwrap();
    assert_eq!(store.list_signed_pre_keys().unwrap().len(), 1);
    let _ = KeyPair::generate(&mut rng);
}
