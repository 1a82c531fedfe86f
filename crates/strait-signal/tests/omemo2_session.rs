//! OMEMO 2 sessions between two in-memory peers (Alice initiates from Bob's bundle).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strait_signal::error::SignalError;
use strait_signal::keys::IdentityKeyPair;
use strait_signal::omemo2::proto::{OMEMOAuthenticatedMessage, OMEMOKeyExchange, OMEMOMessage};
use strait_signal::omemo2::store::{
    self, InMemoryOmemo2Store, Omemo2Store, Omemo2Trust, PREKEY_TARGET,
};
use strait_signal::omemo2::{
    EMPTY_MESSAGE_PLAINTEXT, Omemo2KeyElement, Omemo2SessionRecord, Role, x3dh,
};
use strait_signal::store::Address;

use prost::Message as _;

struct Peer {
    identity: IdentityKeyPair,
    store: InMemoryOmemo2Store,
    rec: Omemo2SessionRecord,
}

fn km(i: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(48);
    for j in 0..48u32 {
        v.push((i.wrapping_mul(131).wrapping_add(j * 7)) as u8);
    }
    v
}

fn setup(seed: u64) -> (Peer, Peer, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let a_id = IdentityKeyPair::generate(&mut rng);
    let b_id = IdentityKeyPair::generate(&mut rng);
    let a_store = InMemoryOmemo2Store::generate(&a_id, &mut rng).unwrap();
    let b_store = InMemoryOmemo2Store::generate(&b_id, &mut rng).unwrap();
    let bundle = store::own_bundle(&b_store, &b_id, 2).unwrap();
    let mut a_rec = Omemo2SessionRecord::new();
    a_rec.initiate(&a_id, &bundle, &mut rng).unwrap();
    (
        Peer {
            identity: a_id,
            store: a_store,
            rec: a_rec,
        },
        Peer {
            identity: b_id,
            store: b_store,
            rec: Omemo2SessionRecord::new(),
        },
        rng,
    )
}

/// Delivers one element to `to`, dispatching on its kind.
fn deliver(
    to: &mut Peer,
    el: &Omemo2KeyElement,
    rng: &mut StdRng,
) -> Result<strait_signal::omemo2::Omemo2Decrypted, SignalError> {
    match el {
        Omemo2KeyElement::KeyExchange(b) => {
            to.rec
                .decrypt_key_exchange(&to.identity, &mut to.store, b, rng)
        }
        Omemo2KeyElement::Message(b) => to.rec.decrypt_message(b, rng),
    }
}

/// Alice → Bob key exchange, Bob answers with the empty message; both confirmed.
fn established(seed: u64) -> (Peer, Peer, StdRng) {
    let (mut a, mut b, mut rng) = setup(seed);
    let el = a.rec.encrypt(&km(0)).unwrap();
    let d = deliver(&mut b, &el, &mut rng).unwrap();
    assert!(d.send_heartbeat);
    let hb = b.rec.encrypt(&EMPTY_MESSAGE_PLAINTEXT).unwrap();
    let d = deliver(&mut a, &hb, &mut rng).unwrap();
    assert!(d.is_empty_message());
    (a, b, rng)
}

#[test]
fn key_exchange_and_replies() {
    let (mut a, mut b, mut rng) = setup(1);
    assert!(a.rec.current().unwrap().key_exchange_pending());
    let el = a.rec.encrypt(&km(1)).unwrap();
    assert!(el.is_key_exchange());
    let kex = OMEMOKeyExchange::decode(el.bytes()).unwrap();
    assert_eq!(kex.ik, a.identity.ed25519_public());
    assert_eq!(kex.ek.len(), 32);
    assert_eq!(kex.message.mac.len(), 16);
    let inner = OMEMOMessage::decode(kex.message.message.as_slice()).unwrap();
    assert_eq!((inner.n, inner.pn), (0, 0));
    assert_eq!(
        inner.ciphertext.unwrap().len(),
        64,
        "48 bytes + PKCS#7 block"
    );
    assert!(b.store.omemo2_prekey(kex.pk_id).unwrap().is_some());

    let d = deliver(&mut b, &el, &mut rng).unwrap();
    assert_eq!(*d.plaintext, km(1));
    assert!(d.key_exchange && d.new_session && d.send_heartbeat);
    assert_eq!(d.their_identity, a.identity.ed25519_public());
    assert!(b.store.omemo2_prekey(kex.pk_id).unwrap().is_none());
    assert_eq!(
        b.store.omemo2_prekey_ids().unwrap().len(),
        PREKEY_TARGET - 1
    );
    let bs = b.rec.current().unwrap();
    assert_eq!(bs.role(), Role::Responder);
    assert_eq!(
        bs.associated_data(),
        a.rec.current().unwrap().associated_data()
    );
    assert_eq!(&bs.associated_data()[..32], &a.identity.ed25519_public());
    assert_eq!(&bs.associated_data()[32..], &b.identity.ed25519_public());

    // Bob answers, Alice is confirmed, then plain messages both ways
    let r = b.rec.encrypt(&km(2)).unwrap();
    assert!(!r.is_key_exchange());
    let d = deliver(&mut a, &r, &mut rng).unwrap();
    assert_eq!(*d.plaintext, km(2));
    assert!(!d.key_exchange && !d.send_heartbeat);
    assert_eq!(d.their_identity, b.identity.ed25519_public());
    assert!(!a.rec.current().unwrap().key_exchange_pending());
    for i in 3..10 {
        let (from, to) = if i % 3 == 0 {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        let el = from.rec.encrypt(&km(i)).unwrap();
        assert!(!el.is_key_exchange());
        assert_eq!(*deliver(to, &el, &mut rng).unwrap().plaintext, km(i));
    }

    // replenishment back to the target
    let fresh = store::replenish_prekeys(&mut b.store, PREKEY_TARGET, &mut rng).unwrap();
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].id > PREKEY_TARGET as u32, "ids are not reused");
    assert_eq!(b.store.omemo2_prekey_ids().unwrap().len(), PREKEY_TARGET);
}

#[test]
fn key_exchange_resent_until_answered() {
    let (mut a, mut b, mut rng) = setup(2);
    let els: Vec<_> = (0..4).map(|i| a.rec.encrypt(&km(i)).unwrap()).collect();
    assert!(els.iter().all(Omemo2KeyElement::is_key_exchange));
    let kexes: Vec<_> = els
        .iter()
        .map(|e| OMEMOKeyExchange::decode(e.bytes()).unwrap())
        .collect();
    assert!(kexes.iter().all(|k| (k.ek.clone(), k.pk_id, k.spk_id)
        == (kexes[0].ek.clone(), kexes[0].pk_id, kexes[0].spk_id)));

    // the first one is lost; the third arrives first and builds the session
    let d = deliver(&mut b, &els[2], &mut rng).unwrap();
    assert!(d.new_session && d.send_heartbeat);
    assert_eq!(*d.plaintext, km(2));
    // the others decrypt on the same session (the prekey is gone by now)
    for i in [1usize, 3] {
        let d = deliver(&mut b, &els[i], &mut rng).unwrap();
        assert!(!d.new_session && d.key_exchange && d.send_heartbeat);
        assert_eq!(*d.plaintext, km(i as u32));
    }
    assert_eq!(b.rec.archived().count(), 0);
    // a duplicate key exchange is rejected without state change
    let before = b.rec.serialize();
    let err = deliver(&mut b, &els[3], &mut rng).unwrap_err();
    assert!(
        matches!(err, SignalError::DuplicateMessage { counter: 3 }),
        "{err:?}"
    );
    assert_eq!(*before, *b.rec.serialize());

    // still unanswered: Alice keeps sending the header
    assert!(a.rec.encrypt(&km(9)).unwrap().is_key_exchange());
    let hb = b.rec.encrypt(&EMPTY_MESSAGE_PLAINTEXT).unwrap();
    assert!(deliver(&mut a, &hb, &mut rng).unwrap().is_empty_message());
    assert!(!a.rec.encrypt(&km(10)).unwrap().is_key_exchange());
}

#[test]
fn two_hundred_messages() {
    let (mut a, mut b, mut rng) = established(3);
    let mut order = StdRng::seed_from_u64(33);
    for i in 0..200u32 {
        let a_to_b = order.gen_bool(0.5);
        let (from, to) = if a_to_b {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let burst = order.gen_range(1..4);
        for j in 0..burst {
            let pt = km(i * 10 + j);
            let el = from.rec.encrypt(&pt).unwrap();
            assert!(!el.is_key_exchange());
            assert_eq!(*deliver(to, &el, &mut rng).unwrap().plaintext, pt);
        }
    }
}

#[test]
fn out_of_order_and_dropped() {
    let (mut a, mut b, mut rng) = established(4);
    // several chains (ratchet steps) with shuffled, partly dropped delivery
    let mut pending = Vec::new();
    for round in 0..3u32 {
        for i in 0..8u32 {
            let pt = km(round * 100 + i);
            pending.push((a.rec.encrypt(&pt).unwrap(), pt));
        }
        // Bob answers something in between so Alice ratchets
        let el = b.rec.encrypt(&km(999)).unwrap();
        deliver(&mut a, &el, &mut rng).unwrap();
    }
    let mut shuffle = StdRng::seed_from_u64(44);
    for i in (1..pending.len()).rev() {
        let j = shuffle.gen_range(0..=i);
        pending.swap(i, j);
    }
    for (k, (el, pt)) in pending.iter().enumerate() {
        if k % 5 == 0 {
            continue; // dropped
        }
        let d = deliver(&mut b, el, &mut rng).unwrap();
        assert_eq!(*d.plaintext, *pt);
    }
    // conversation continues
    let el = b.rec.encrypt(&km(7)).unwrap();
    assert_eq!(*deliver(&mut a, &el, &mut rng).unwrap().plaintext, km(7));
}

#[test]
fn duplicate_and_forged_leave_state_untouched() {
    let (mut a, mut b, mut rng) = established(5);
    let el = a.rec.encrypt(&km(1)).unwrap();
    let later = a.rec.encrypt(&km(2)).unwrap();
    deliver(&mut b, &el, &mut rng).unwrap();

    let before = b.rec.serialize();
    let err = deliver(&mut b, &el, &mut rng).unwrap_err();
    assert!(
        matches!(err, SignalError::DuplicateMessage { .. }),
        "{err:?}"
    );
    assert_eq!(*before, *b.rec.serialize());

    // forged MAC
    let mut auth = OMEMOAuthenticatedMessage::decode(later.bytes()).unwrap();
    auth.mac[0] ^= 1;
    let err = b
        .rec
        .decrypt_message(&auth.encode_to_vec(), &mut rng)
        .unwrap_err();
    assert!(matches!(err, SignalError::BadMac), "{err:?}");
    assert_eq!(*before, *b.rec.serialize());
    // tampered OMEMOMessage (ciphertext byte) under the genuine MAC
    let mut auth = OMEMOAuthenticatedMessage::decode(later.bytes()).unwrap();
    let mut msg = OMEMOMessage::decode(auth.message.as_slice()).unwrap();
    msg.ciphertext.as_mut().unwrap()[3] ^= 0x80;
    auth.message = msg.encode_to_vec();
    let err = b
        .rec
        .decrypt_message(&auth.encode_to_vec(), &mut rng)
        .unwrap_err();
    assert!(matches!(err, SignalError::BadMac), "{err:?}");
    // a forged message from a "new ratchet key" (would trigger a DH step)
    let mut auth = OMEMOAuthenticatedMessage::decode(later.bytes()).unwrap();
    let mut msg = OMEMOMessage::decode(auth.message.as_slice()).unwrap();
    msg.dh_pub = x3dh_random_public(&mut rng).to_vec();
    auth.message = msg.encode_to_vec();
    assert!(
        b.rec
            .decrypt_message(&auth.encode_to_vec(), &mut rng)
            .is_err()
    );
    // garbage
    assert!(b.rec.decrypt_message(b"\x0a\x01", &mut rng).is_err());
    assert_eq!(*before, *b.rec.serialize());

    // the genuine message still decrypts
    assert_eq!(*deliver(&mut b, &later, &mut rng).unwrap().plaintext, km(2));
}

fn x3dh_random_public(rng: &mut StdRng) -> [u8; 32] {
    *strait_signal::keys::KeyPair::generate(rng).public.as_raw()
}

#[test]
fn too_far_jump_is_rejected() {
    let (mut a, mut b, mut rng) = established(6);
    let mut last = None;
    for i in 0..1003 {
        last = Some(a.rec.encrypt(&km(i)).unwrap());
    }
    let before = b.rec.serialize();
    let err = deliver(&mut b, last.as_ref().unwrap(), &mut rng).unwrap_err();
    assert!(matches!(err, SignalError::TooFarInFuture { .. }), "{err:?}");
    assert_eq!(*before, *b.rec.serialize());
}

#[test]
fn session_replaced_old_messages_still_decrypt() {
    let (mut a, mut b, mut rng) = established(7);
    let old1 = a.rec.encrypt(&km(1)).unwrap();
    let old2 = a.rec.encrypt(&km(2)).unwrap();
    assert_eq!(*deliver(&mut b, &old1, &mut rng).unwrap().plaintext, km(1));

    // Alice rebuilds from a fresh bundle fetch
    let bundle = store::own_bundle(&b.store, &b.identity, 2).unwrap();
    a.rec.initiate(&a.identity, &bundle, &mut rng).unwrap();
    assert_eq!(a.rec.archived().count(), 1);
    let kex = a.rec.encrypt(&km(3)).unwrap();
    assert!(kex.is_key_exchange());
    let d = deliver(&mut b, &kex, &mut rng).unwrap();
    assert!(d.new_session);
    assert_eq!(*d.plaintext, km(3));
    assert_eq!(b.rec.archived().count(), 1);

    // the late message of the old session decrypts on the archived one
    let d = deliver(&mut b, &old2, &mut rng).unwrap();
    assert_eq!(*d.plaintext, km(2));
    assert!(d.from_archived && !d.send_heartbeat);

    // Bob answers on the new session; Alice decrypts it on her (new) current one
    let r = b.rec.encrypt(&EMPTY_MESSAGE_PLAINTEXT).unwrap();
    let d = deliver(&mut a, &r, &mut rng).unwrap();
    assert!(!d.from_archived && d.is_empty_message());
    assert!(!a.rec.encrypt(&km(4)).unwrap().is_key_exchange());
}

#[test]
fn heartbeat_after_53_unanswered() {
    let (mut a, mut b, mut rng) = established(8);
    let mut first = None;
    for i in 0..60u32 {
        let el = a.rec.encrypt(&km(i)).unwrap();
        let d = deliver(&mut b, &el, &mut rng).unwrap();
        if d.send_heartbeat && first.is_none() {
            first = Some(i);
        }
    }
    assert_eq!(first, Some(53));
    // Bob sends the heartbeat; Alice's messages on the same chain no longer ask for one
    let hb = b.rec.encrypt(&EMPTY_MESSAGE_PLAINTEXT).unwrap();
    let el = a.rec.encrypt(&km(61)).unwrap();
    assert!(!deliver(&mut b, &el, &mut rng).unwrap().send_heartbeat);
    deliver(&mut a, &hb, &mut rng).unwrap();
}

#[test]
fn deterministic_with_seeded_rng() {
    let run = |seed| {
        let (mut a, mut b, mut rng) = setup(seed);
        let mut out = Vec::new();
        for i in 0..5 {
            let el = a.rec.encrypt(&km(i)).unwrap();
            deliver(&mut b, &el, &mut rng).unwrap();
            out.push(el.bytes().to_vec());
            let el = b.rec.encrypt(&km(100 + i)).unwrap();
            deliver(&mut a, &el, &mut rng).unwrap();
            out.push(el.bytes().to_vec());
        }
        out
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn record_and_store_roundtrip() {
    let (mut a, mut b, mut rng) = established(11);
    for i in 0..3 {
        let el = a.rec.encrypt(&km(i)).unwrap();
        deliver(&mut b, &el, &mut rng).unwrap();
    }
    let skipped = a.rec.encrypt(&km(50)).unwrap();
    let addr = Address::new("alice@example.org", 1);
    store::save_record(&mut b.store, &addr, &b.rec).unwrap();
    assert_eq!(
        b.store.omemo2_session_devices("alice@example.org").unwrap(),
        [1]
    );
    let mut restored = store::load_record(&b.store, &addr).unwrap();
    assert_eq!(*restored.serialize(), *b.rec.serialize());
    let next = a.rec.encrypt(&km(51)).unwrap();
    assert_eq!(
        *restored
            .decrypt_message(next.bytes(), &mut rng)
            .unwrap()
            .plaintext,
        km(51)
    );
    assert_eq!(
        *restored
            .decrypt_message(skipped.bytes(), &mut rng)
            .unwrap()
            .plaintext,
        km(50)
    );
    assert!(
        store::load_record(&b.store, &Address::new("x@y", 1))
            .unwrap()
            .current()
            .is_none()
    );
    assert!(
        Omemo2SessionRecord::deserialize(b"\x08\x02").is_err(),
        "unknown format version"
    );

    // identities and trust
    b.store
        .omemo2_store_identity(&addr, &a.identity.ed25519_public(), Omemo2Trust::Trusted)
        .unwrap();
    assert_eq!(
        b.store.omemo2_identity(&addr).unwrap(),
        Some((a.identity.ed25519_public(), Omemo2Trust::Trusted))
    );
    // the trait is object-safe
    let dynstore: &mut dyn Omemo2Store = &mut b.store;
    assert!(store::own_bundle(dynstore, &b.identity, 2).is_ok());
}

#[test]
fn bundle_and_key_checks() {
    let mut rng = StdRng::seed_from_u64(12);
    let a_id = IdentityKeyPair::generate(&mut rng);
    let b_id = IdentityKeyPair::generate(&mut rng);
    let b_store = InMemoryOmemo2Store::generate(&b_id, &mut rng).unwrap();
    let bundle = store::own_bundle(&b_store, &b_id, 2).unwrap();
    bundle.verify_signature().unwrap();
    assert!(strait_signal::xeddsa::verify_ed25519(
        &bundle.ik,
        &bundle.spk,
        &bundle.spks
    ));

    let mut bad = bundle.clone();
    bad.spks[0] ^= 1;
    assert!(matches!(
        x3dh::initiate(&a_id, &bad, &mut rng),
        Err(SignalError::InvalidSignature)
    ));
    let mut no_pk = bundle.clone();
    no_pk.prekeys.clear();
    assert!(
        x3dh::initiate(&a_id, &no_pk, &mut rng).is_err(),
        "prekey mandatory"
    );
    let mut zero_pk = bundle.clone();
    zero_pk.prekeys = vec![(1, [0u8; 32])];
    assert!(x3dh::initiate(&a_id, &zero_pk, &mut rng).is_err());

    // responder: small-order / non-canonical ephemeral keys, missing prekeys
    let mut a_rec = Omemo2SessionRecord::new();
    a_rec.initiate(&a_id, &bundle, &mut rng).unwrap();
    let el = a_rec.encrypt(&km(1)).unwrap();
    let kex = OMEMOKeyExchange::decode(el.bytes()).unwrap();
    let mut b_store2 = b_store.clone();
    let mut rec = Omemo2SessionRecord::new();
    for ek in [[0u8; 32], {
        let mut k = [0xffu8; 32];
        k[31] = 0x7f; // u = 2^255 - 1 ≥ p
        k
    }] {
        let mut k = kex.clone();
        k.ek = ek.to_vec();
        let err = rec
            .decrypt_key_exchange(&b_id, &mut b_store2, &k.encode_to_vec(), &mut rng)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SignalError::NonCanonicalKey | SignalError::ZeroSharedSecret
            ),
            "{err:?}"
        );
    }
    let mut k = kex.clone();
    k.pk_id = 99_999;
    assert!(matches!(
        rec.decrypt_key_exchange(&b_id, &mut b_store2, &k.encode_to_vec(), &mut rng),
        Err(SignalError::MissingPreKey(99_999))
    ));
    // a forged embedded message does not consume the prekey
    let mut k = kex.clone();
    k.message.mac[5] ^= 1;
    assert!(matches!(
        rec.decrypt_key_exchange(&b_id, &mut b_store2, &k.encode_to_vec(), &mut rng),
        Err(SignalError::BadMac)
    ));
    assert!(b_store2.omemo2_prekey(kex.pk_id).unwrap().is_some());
    assert!(rec.current().is_none());
    // and the genuine one works
    let d = rec
        .decrypt_key_exchange(&b_id, &mut b_store2, el.bytes(), &mut rng)
        .unwrap();
    assert_eq!(*d.plaintext, km(1));
}
