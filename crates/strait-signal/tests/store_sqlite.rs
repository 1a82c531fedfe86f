//! The SQLite store: the same behavioural checks as the in-memory stores (generic over the
//! store traits), persistence across close/reopen, prekey replenishment, trust policies, the
//! OMEMO 2 store, and clear errors on corrupt data.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use strait_signal::cipher::{SessionBuilder, SessionCipher};
use strait_signal::error::SignalError;
use strait_signal::keys::{IdentityKeyPair, KeyPair, PublicKey};
use strait_signal::message::CiphertextMessage;
use strait_signal::omemo2::store::{
    self as o2, InMemoryOmemo2Store, Omemo2SignedPreKey, Omemo2Store, Omemo2Trust,
};
use strait_signal::omemo2::{Omemo2KeyElement, Omemo2SessionRecord};
use strait_signal::prekeys::{self, PreKeyRecord, SignedPreKeyRecord};
use strait_signal::session::SessionRecord;
use strait_signal::store::memory::{InMemoryStore, TrustPolicy};
use strait_signal::store::sqlite::{SCHEMA_VERSION, SqliteSignalStore};
use strait_signal::store::{
    Address, Direction, IdentityKeyStore, PreKeyStore, ProtocolStore, SessionStore,
    SignedPreKeyStore,
};
use strait_signal::x3dh::PreKeyBundle;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SqliteSignalStore>();
};

fn alice_addr() -> Address {
    Address::new("alice@example.org", 1)
}
fn bob_addr() -> Address {
    Address::new("bob@example.org", 2)
}

/// The trust-management methods both stores have outside the traits.
trait TrustControl: ProtocolStore {
    fn policy(&mut self, policy: TrustPolicy);
    fn trust(&mut self, address: &Address, identity: PublicKey);
    fn forget(&mut self, address: &Address);
}

impl TrustControl for InMemoryStore {
    fn policy(&mut self, policy: TrustPolicy) {
        self.set_trust_policy(policy);
    }
    fn trust(&mut self, address: &Address, identity: PublicKey) {
        self.set_trusted(address, identity);
    }
    fn forget(&mut self, address: &Address) {
        self.forget_identity(address);
    }
}

impl TrustControl for SqliteSignalStore {
    fn policy(&mut self, policy: TrustPolicy) {
        self.set_trust_policy(policy);
    }
    fn trust(&mut self, address: &Address, identity: PublicKey) {
        self.set_trusted(address, identity).unwrap();
    }
    fn forget(&mut self, address: &Address) {
        self.forget_identity(address).unwrap();
    }
}

fn sqlite_mem(rng: &mut StdRng) -> SqliteSignalStore {
    let identity = IdentityKeyPair::generate(rng);
    SqliteSignalStore::open_in_memory(identity, 1 + rng.next_u32() % 16380).unwrap()
}

fn never() -> (IdentityKeyPair, u32) {
    panic!("the identity must be loaded, not created")
}

/// Prekeys 1..=10 and signed prekey 1.
fn provision<S: ProtocolStore + ?Sized>(store: &mut S, rng: &mut StdRng) {
    let identity = store.identity_key_pair().unwrap();
    let spk = SignedPreKeyRecord::generate(&identity, 1, 1_700_000_000_000, rng);
    store.store_signed_pre_key(&spk).unwrap();
    for pk in prekeys::generate_pre_keys(1, 10, rng) {
        store.store_pre_key(&pk).unwrap();
    }
}

fn bundle<S: ProtocolStore + ?Sized>(store: &S, pre_key_id: Option<u32>) -> PreKeyBundle {
    let spk = store.load_signed_pre_key(1).unwrap().unwrap();
    PreKeyBundle {
        registration_id: store.local_registration_id().unwrap(),
        device_id: 2,
        pre_key: pre_key_id
            .map(|id| (id, store.load_pre_key(id).unwrap().unwrap().key_pair.public)),
        signed_pre_key_id: spk.id,
        signed_pre_key: spk.key_pair.public,
        signed_pre_key_signature: spk.signature,
        identity_key: *store.identity_key_pair().unwrap().public_key(),
    }
}

fn send<S: ProtocolStore + ?Sized>(
    s: &mut S,
    to: &Address,
    text: &[u8],
    rng: &mut StdRng,
) -> CiphertextMessage {
    SessionCipher::encrypt(s, to, text, rng).unwrap()
}

fn recv<S: ProtocolStore + ?Sized>(
    s: &mut S,
    from: &Address,
    m: &CiphertextMessage,
    rng: &mut StdRng,
) -> Result<Vec<u8>, SignalError> {
    SessionCipher::decrypt(s, from, m.message_type(), m.serialize(), rng)
}

fn session_bytes<S: SessionStore + ?Sized>(s: &S, a: &Address) -> Option<Vec<u8>> {
    s.load_session(a).unwrap().map(|r| r.serialize().to_vec())
}

// ---------------------------------------------------------------------------------------
// Behaviour shared by both stores.

/// Prekeys, signed prekeys, sessions and identities (no trust policies).
fn records_behave<S: ProtocolStore>(store: &mut S, rng: &mut StdRng) {
    // Prekeys: ids ascending regardless of insertion order, replace by id, idempotent remove.
    assert!(store.pre_key_ids().unwrap().is_empty());
    assert!(store.load_pre_key(7).unwrap().is_none());
    let mut pks: Vec<PreKeyRecord> = [9u32, 3, 7, 1]
        .iter()
        .map(|&id| PreKeyRecord::generate(id, rng))
        .collect();
    for pk in &pks {
        store.store_pre_key(pk).unwrap();
    }
    assert_eq!(store.pre_key_ids().unwrap(), vec![1, 3, 7, 9]);
    let loaded = store.load_pre_key(7).unwrap().unwrap();
    assert_eq!(loaded.id, 7);
    assert_eq!(loaded.key_pair.public, pks[2].key_pair.public);
    assert_eq!(
        *loaded.key_pair.private.to_bytes(),
        *pks[2].key_pair.private.to_bytes()
    );
    pks[2] = PreKeyRecord::generate(7, rng);
    store.store_pre_key(&pks[2]).unwrap();
    assert_eq!(
        store.load_pre_key(7).unwrap().unwrap().key_pair.public,
        pks[2].key_pair.public,
        "store replaces"
    );
    store.remove_pre_key(3).unwrap();
    store.remove_pre_key(3).unwrap();
    store.remove_pre_key(12345).unwrap();
    assert_eq!(store.pre_key_ids().unwrap(), vec![1, 7, 9]);
    assert!(store.load_pre_key(3).unwrap().is_none());

    // Signed prekeys: listed by id.
    let identity = store.identity_key_pair().unwrap();
    assert!(store.list_signed_pre_keys().unwrap().is_empty());
    for (id, ts) in [(5u32, 50u64), (2, 20)] {
        let spk = SignedPreKeyRecord::generate(&identity, id, ts, rng);
        store.store_signed_pre_key(&spk).unwrap();
    }
    let list = store.list_signed_pre_keys().unwrap();
    assert_eq!(list.iter().map(|s| s.id).collect::<Vec<_>>(), vec![2, 5]);
    assert_eq!(list[1].timestamp, 50);
    let spk5 = store.load_signed_pre_key(5).unwrap().unwrap();
    assert_eq!(spk5.signature, list[1].signature);
    assert_eq!(spk5.key_pair.public, list[1].key_pair.public);
    store.remove_signed_pre_key(2).unwrap();
    assert!(store.load_signed_pre_key(2).unwrap().is_none());
    assert_eq!(store.list_signed_pre_keys().unwrap().len(), 1);

    // Sessions: a real record round-trips byte for byte; device ids per name ascending.
    let carol = |d| Address::new("carol@example.org", d);
    assert!(store.load_session(&carol(1)).unwrap().is_none());
    assert!(
        store
            .sub_device_sessions("carol@example.org")
            .unwrap()
            .is_empty()
    );
    let mut peer = InMemoryStore::generate(rng);
    provision(&mut peer, rng);
    let b = bundle(&peer, Some(1));
    SessionBuilder::process_prekey_bundle(store, &carol(30), &b, rng).unwrap();
    let real = store.load_session(&carol(30)).unwrap().unwrap();
    assert!(real.has_current());
    store
        .store_session(&carol(4), &SessionRecord::new())
        .unwrap();
    store.store_session(&carol(17), &real).unwrap();
    store
        .store_session(&Address::new("carol@example.org.evil", 1), &real)
        .unwrap();
    assert_eq!(
        store.sub_device_sessions("carol@example.org").unwrap(),
        vec![4, 17, 30]
    );
    assert_eq!(
        session_bytes(store, &carol(17)).unwrap(),
        real.serialize().to_vec()
    );
    assert!(
        !store
            .load_session(&carol(4))
            .unwrap()
            .unwrap()
            .has_current()
    );
    store.delete_session(&carol(17)).unwrap();
    store.delete_session(&carol(17)).unwrap();
    assert!(store.load_session(&carol(17)).unwrap().is_none());
    assert_eq!(
        store.sub_device_sessions("carol@example.org").unwrap(),
        vec![4, 30]
    );
    // The bundle's identity was saved by the builder.
    assert_eq!(
        store.get_identity(&carol(30)).unwrap(),
        Some(b.identity_key)
    );

    // Identities: save_identity is true only when a different stored key is replaced.
    let dave = Address::new("dave@example.org", 9);
    let k1 = KeyPair::generate(rng).public;
    let k2 = KeyPair::generate(rng).public;
    assert_eq!(store.get_identity(&dave).unwrap(), None);
    assert!(!store.save_identity(&dave, &k1).unwrap(), "first save");
    assert!(!store.save_identity(&dave, &k1).unwrap(), "same key again");
    assert!(store.save_identity(&dave, &k2).unwrap(), "changed key");
    assert_eq!(store.get_identity(&dave).unwrap(), Some(k2));
    assert_eq!(
        store
            .get_identity(&Address::new("dave@example.org", 10))
            .unwrap(),
        None,
        "per device"
    );

    // Our identity is stable.
    let a = store.identity_key_pair().unwrap();
    let b = store.identity_key_pair().unwrap();
    assert_eq!(a.public_key(), b.public_key());
    let rid = store.local_registration_id().unwrap();
    assert_eq!(rid, store.local_registration_id().unwrap());
}

/// The three trust policies and explicit trust.
fn trust_behaves<S: TrustControl>(store: &mut S, rng: &mut StdRng) {
    let eve = Address::new("eve@example.org", 3);
    let k1 = KeyPair::generate(rng).public;
    let k2 = KeyPair::generate(rng).public;
    for d in [Direction::Sending, Direction::Receiving] {
        // Trust on first use (the default).
        assert!(
            store.is_trusted_identity(&eve, &k1, d).unwrap(),
            "unknown: TOFU"
        );
    }
    store.save_identity(&eve, &k1).unwrap();
    for d in [Direction::Sending, Direction::Receiving] {
        assert!(store.is_trusted_identity(&eve, &k1, d).unwrap());
        assert!(
            !store.is_trusted_identity(&eve, &k2, d).unwrap(),
            "changed key"
        );
    }

    store.policy(TrustPolicy::TrustAll);
    assert!(
        store
            .is_trusted_identity(&eve, &k2, Direction::Sending)
            .unwrap()
    );
    assert!(
        store
            .is_trusted_identity(&Address::new("x@y", 1), &k2, Direction::Receiving)
            .unwrap()
    );

    store.policy(TrustPolicy::ExplicitOnly);
    let frank = Address::new("frank@example.org", 1);
    assert!(
        !store
            .is_trusted_identity(&frank, &k1, Direction::Sending)
            .unwrap()
    );
    store.trust(&frank, k1);
    assert!(
        store
            .is_trusted_identity(&frank, &k1, Direction::Sending)
            .unwrap()
    );
    assert!(
        !store
            .is_trusted_identity(&frank, &k2, Direction::Sending)
            .unwrap()
    );
    assert_eq!(store.get_identity(&frank).unwrap(), Some(k1));
    store.trust(&frank, k2);
    assert!(
        store
            .is_trusted_identity(&frank, &k2, Direction::Receiving)
            .unwrap()
    );
    assert!(
        !store
            .is_trusted_identity(&frank, &k1, Direction::Receiving)
            .unwrap()
    );
    store.forget(&frank);
    assert_eq!(store.get_identity(&frank).unwrap(), None);
    assert!(
        !store
            .is_trusted_identity(&frank, &k2, Direction::Sending)
            .unwrap()
    );

    store.policy(TrustPolicy::TrustOnFirstUse);
    assert!(
        store
            .is_trusted_identity(&frank, &k2, Direction::Sending)
            .unwrap()
    );

    // A changed identity blocks encryption under TOFU until the application decides.
    let mut peer = InMemoryStore::generate(rng);
    provision(&mut peer, rng);
    let grace = Address::new("grace@example.org", 2);
    store.trust(&grace, k1);
    let err = SessionBuilder::process_prekey_bundle(store, &grace, &bundle(&peer, Some(1)), rng)
        .unwrap_err();
    assert!(matches!(err, SignalError::UntrustedIdentity), "{err:?}");
    store.forget(&grace);
    SessionBuilder::process_prekey_bundle(store, &grace, &bundle(&peer, Some(1)), rng).unwrap();
}

/// Alice ↔ Bob over two stores of type `S`: first contact, replies, out-of-order delivery,
/// one-time prekey consumed.
fn conversation<S: ProtocolStore>(alice: &mut S, bob: &mut S, rng: &mut StdRng) {
    provision(bob, rng);
    let b = bundle(bob, Some(4));
    SessionBuilder::process_prekey_bundle(alice, &bob_addr(), &b, rng).unwrap();
    let m1 = send(alice, &bob_addr(), b"one", rng);
    assert_eq!(m1.message_type(), 3);
    assert_eq!(recv(bob, &alice_addr(), &m1, rng).unwrap(), b"one");
    assert!(bob.load_pre_key(4).unwrap().is_none(), "prekey consumed");
    assert_eq!(bob.pre_key_ids().unwrap().len(), 9);
    let r1 = send(bob, &alice_addr(), b"reply", rng);
    assert_eq!(recv(alice, &bob_addr(), &r1, rng).unwrap(), b"reply");
    let late = send(alice, &bob_addr(), b"late", rng);
    let m2 = send(alice, &bob_addr(), b"two", rng);
    assert_eq!(m2.message_type(), 2);
    assert_eq!(recv(bob, &alice_addr(), &m2, rng).unwrap(), b"two");
    assert_eq!(recv(bob, &alice_addr(), &late, rng).unwrap(), b"late");
    assert!(matches!(
        recv(bob, &alice_addr(), &late, rng),
        Err(SignalError::DuplicateMessage { .. })
    ));
}

#[test]
fn in_memory_store_behaviour() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = InMemoryStore::generate(&mut rng);
    records_behave(&mut s, &mut rng);
    let mut s = InMemoryStore::generate(&mut rng);
    trust_behaves(&mut s, &mut rng);
    let mut a = InMemoryStore::generate(&mut rng);
    let mut b = InMemoryStore::generate(&mut rng);
    conversation(&mut a, &mut b, &mut rng);
}

#[test]
fn sqlite_store_behaviour_in_memory_db() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = sqlite_mem(&mut rng);
    records_behave(&mut s, &mut rng);
    let mut s = sqlite_mem(&mut rng);
    trust_behaves(&mut s, &mut rng);
    let mut a = sqlite_mem(&mut rng);
    let mut b = sqlite_mem(&mut rng);
    conversation(&mut a, &mut b, &mut rng);
}

#[test]
fn sqlite_store_behaviour_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let mut s = SqliteSignalStore::open_or_generate(dir.path().join("r.db"), &mut rng).unwrap();
    records_behave(&mut s, &mut rng);
    let mut s = SqliteSignalStore::open_or_generate(dir.path().join("t.db"), &mut rng).unwrap();
    trust_behaves(&mut s, &mut rng);
    let mut a = SqliteSignalStore::open_or_generate(dir.path().join("a.db"), &mut rng).unwrap();
    let mut b = SqliteSignalStore::open_or_generate(dir.path().join("b.db"), &mut rng).unwrap();
    conversation(&mut a, &mut b, &mut rng);
}

#[test]
fn trait_objects_work() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut s = sqlite_mem(&mut rng);
    let dyn_store: &mut dyn ProtocolStore = &mut s;
    provision(dyn_store, &mut rng);
    assert_eq!(dyn_store.pre_key_ids().unwrap().len(), 10);
    let o2: &mut dyn Omemo2Store = &mut s;
    assert!(
        o2.omemo2_prekey_ids().unwrap().is_empty(),
        "separate namespace"
    );
}

// ---------------------------------------------------------------------------------------
// Persistence.

#[test]
fn identity_is_created_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.db");
    let mut rng = StdRng::seed_from_u64(4);
    let identity = IdentityKeyPair::generate(&mut rng);
    let public = *identity.public_key();
    let mut calls = 0;
    let s = SqliteSignalStore::open(&path, || {
        calls += 1;
        (identity, 4242)
    })
    .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let private = *s.identity_key_pair().unwrap().private_key().to_bytes();
    drop(s);

    for _ in 0..2 {
        let s = SqliteSignalStore::open(&path, never).unwrap();
        let id = s.identity_key_pair().unwrap();
        assert_eq!(*id.public_key(), public);
        assert_eq!(*id.private_key().to_bytes(), private);
        assert_eq!(s.local_registration_id().unwrap(), 4242);
        drop(s);
        let s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
        assert_eq!(*s.identity_key_pair().unwrap().public_key(), public);
        let s2 = SqliteSignalStore::open_existing(&path).unwrap();
        assert_eq!(s2.local_registration_id().unwrap(), 4242);
    }
}

#[test]
fn open_existing_requires_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteSignalStore::open_existing(dir.path().join("missing.db")).unwrap_err();
    assert!(matches!(err, SignalError::Store(_)), "{err:?}");
    assert!(!dir.path().join("missing.db").exists());
}

#[test]
fn conversation_continues_after_both_stores_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("alice.db"), dir.path().join("bob.db"));
    let mut rng = StdRng::seed_from_u64(5);
    let mut alice = SqliteSignalStore::open_or_generate(&pa, &mut rng).unwrap();
    let mut bob = SqliteSignalStore::open_or_generate(&pb, &mut rng).unwrap();
    let (alice_id, bob_id) = (
        *alice.identity_key_pair().unwrap().public_key(),
        *bob.identity_key_pair().unwrap().public_key(),
    );
    provision(&mut bob, &mut rng);
    let b = bundle(&bob, Some(1));
    SessionBuilder::process_prekey_bundle(&mut alice, &bob_addr(), &b, &mut rng).unwrap();

    // Alice's first message is sent before the restart and delivered after it; one more
    // is held back across a second restart (its skipped key must persist on Bob's side).
    let first = send(&mut alice, &bob_addr(), b"before restart", &mut rng);
    drop((alice, bob));

    let mut alice = SqliteSignalStore::open(&pa, never).unwrap();
    let mut bob = SqliteSignalStore::open(&pb, never).unwrap();
    assert_eq!(*alice.identity_key_pair().unwrap().public_key(), alice_id);
    assert_eq!(*bob.identity_key_pair().unwrap().public_key(), bob_id);
    assert_eq!(
        recv(&mut bob, &alice_addr(), &first, &mut rng).unwrap(),
        b"before restart"
    );
    assert!(bob.load_pre_key(1).unwrap().is_none());
    let reply = send(&mut bob, &alice_addr(), b"reply", &mut rng);
    assert_eq!(reply.message_type(), 2);
    assert_eq!(
        recv(&mut alice, &bob_addr(), &reply, &mut rng).unwrap(),
        b"reply"
    );
    let held = send(&mut alice, &bob_addr(), b"held back", &mut rng);
    let next = send(&mut alice, &bob_addr(), b"next", &mut rng);
    assert_eq!(
        recv(&mut bob, &alice_addr(), &next, &mut rng).unwrap(),
        b"next"
    );
    let alice_rec = session_bytes(&alice, &bob_addr()).unwrap();
    let bob_rec = session_bytes(&bob, &alice_addr()).unwrap();
    alice.checkpoint().unwrap();
    drop((alice, bob));

    let mut alice = SqliteSignalStore::open(&pa, never).unwrap();
    let mut bob = SqliteSignalStore::open(&pb, never).unwrap();
    assert_eq!(session_bytes(&alice, &bob_addr()).unwrap(), alice_rec);
    assert_eq!(session_bytes(&bob, &alice_addr()).unwrap(), bob_rec);
    assert_eq!(bob.get_identity(&alice_addr()).unwrap(), Some(alice_id));
    assert_eq!(alice.get_identity(&bob_addr()).unwrap(), Some(bob_id));
    assert_eq!(
        recv(&mut bob, &alice_addr(), &held, &mut rng).unwrap(),
        b"held back"
    );
    for i in 0..5 {
        let text = format!("after restart {i}");
        let m = send(&mut alice, &bob_addr(), text.as_bytes(), &mut rng);
        assert_eq!(
            recv(&mut bob, &alice_addr(), &m, &mut rng).unwrap(),
            text.as_bytes()
        );
        let r = send(&mut bob, &alice_addr(), text.as_bytes(), &mut rng);
        assert_eq!(
            recv(&mut alice, &bob_addr(), &r, &mut rng).unwrap(),
            text.as_bytes()
        );
    }
    // A replay of the first message after the restart is rejected (its chain is long gone:
    // BadMac; a duplicate or the consumed prekey would do as well), not decrypted twice.
    let replay = recv(&mut bob, &alice_addr(), &first, &mut rng);
    assert!(replay.is_err(), "{replay:?}");
}

#[test]
fn prekey_removal_and_replenish_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pk.db");
    let mut rng = StdRng::seed_from_u64(6);
    let mut s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
    provision(&mut s, &mut rng);
    for id in [1, 2, 3, 4, 5, 6, 7] {
        s.remove_pre_key(id).unwrap();
    }
    assert_eq!(s.pre_key_ids().unwrap(), vec![8, 9, 10]);
    // Enough prekeys: nothing to do.
    assert!(
        prekeys::replenish(&mut s, 3, 20, &mut rng)
            .unwrap()
            .is_empty()
    );
    let fresh = prekeys::replenish(&mut s, 5, 20, &mut rng).unwrap();
    assert_eq!(fresh.len(), 17);
    assert_eq!(
        fresh.first().unwrap().id,
        11,
        "ids follow the highest stored id"
    );
    assert_eq!(fresh.last().unwrap().id, 27);
    let publics: Vec<_> = fresh.iter().map(|r| r.key_pair.public).collect();
    drop(s);

    let mut s = SqliteSignalStore::open(&path, never).unwrap();
    let ids = s.pre_key_ids().unwrap();
    assert_eq!(ids, (8..=27).collect::<Vec<_>>());
    for (id, public) in (11..=27).zip(&publics) {
        assert_eq!(
            s.load_pre_key(id).unwrap().unwrap().key_pair.public,
            *public
        );
    }
    for id in 8..=22 {
        s.remove_pre_key(id).unwrap();
    }
    drop(s);
    let mut s = SqliteSignalStore::open(&path, never).unwrap();
    assert_eq!(s.pre_key_ids().unwrap(), (23..=27).collect::<Vec<_>>());
    let fresh = prekeys::replenish(&mut s, 10, 12, &mut rng).unwrap();
    assert_eq!(
        fresh.iter().map(|r| r.id).collect::<Vec<_>>(),
        (28..=34).collect::<Vec<_>>()
    );
    // Wrap-around at the prekey id limit skips ids in use.
    let mut s = sqlite_mem(&mut rng);
    s.store_pre_key(&PreKeyRecord::generate(1, &mut rng))
        .unwrap();
    s.store_pre_key(&PreKeyRecord::generate(prekeys::MAX_PRE_KEY_ID, &mut rng))
        .unwrap();
    let fresh = prekeys::replenish(&mut s, 3, 4, &mut rng).unwrap();
    assert_eq!(fresh.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn removed_prekey_bytes_are_gone_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd.db");
    let mut rng = StdRng::seed_from_u64(7);
    let mut s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
    let pk = PreKeyRecord::generate(1, &mut rng);
    let private = *pk.key_pair.private.to_bytes();
    s.store_pre_key(&pk).unwrap();
    s.checkpoint().unwrap();
    let contains = |p: &Path| {
        let bytes = std::fs::read(p).unwrap_or_default();
        bytes.windows(32).any(|w| w == private)
    };
    assert!(contains(&path), "stored after checkpoint");
    s.remove_pre_key(1).unwrap();
    s.checkpoint().unwrap();
    assert!(!contains(&path), "secure_delete overwrites the freed cell");
    assert!(!contains(&dir.path().join("sd.db-wal")));
}

#[cfg(unix)]
#[test]
fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perm.db");
    let mut rng = StdRng::seed_from_u64(8);
    let mut s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
    provision(&mut s, &mut rng);
    for p in [path.clone(), dir.path().join("perm.db-wal")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[test]
fn trust_policy_is_runtime_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust.db");
    let mut rng = StdRng::seed_from_u64(9);
    let mut s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
    let k = KeyPair::generate(&mut rng).public;
    s.set_trust_policy(TrustPolicy::ExplicitOnly);
    assert_eq!(s.trust_policy(), TrustPolicy::ExplicitOnly);
    s.set_trusted(&alice_addr(), k).unwrap();
    drop(s);
    let s = SqliteSignalStore::open(&path, never).unwrap();
    assert_eq!(s.trust_policy(), TrustPolicy::TrustOnFirstUse);
    assert_eq!(
        s.get_identity(&alice_addr()).unwrap(),
        Some(k),
        "trusted key kept"
    );
    let other = KeyPair::generate(&mut rng).public;
    assert!(
        !s.is_trusted_identity(&alice_addr(), &other, Direction::Sending)
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Corrupt data and foreign databases.

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn corrupt_blobs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut rng = StdRng::seed_from_u64(10);
    let mut s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
    provision(&mut s, &mut rng);
    let mut peer = InMemoryStore::generate(&mut rng);
    provision(&mut peer, &mut rng);
    SessionBuilder::process_prekey_bundle(&mut s, &bob_addr(), &bundle(&peer, Some(1)), &mut rng)
        .unwrap();
    drop(s);

    let c = raw(&path);
    c.execute_batch(
        "UPDATE sessions SET record = x'0a05deadbeef';
         UPDATE prekeys SET record = x'ff' WHERE id = 2;
         UPDATE prekeys SET record = 'text, not a blob' WHERE id = 3;
         UPDATE signed_prekeys SET record = x'';
         UPDATE identities SET public_key = x'0701';",
    )
    .unwrap();
    drop(c);

    let mut s = SqliteSignalStore::open(&path, never).unwrap();
    let err = s.load_session(&bob_addr()).unwrap_err();
    match &err {
        SignalError::CorruptRecord(why) => assert!(why.contains("bob@example.org.2"), "{why}"),
        other => panic!("{other:?}"),
    }
    let err = SessionCipher::encrypt(&mut s, &bob_addr(), b"x", &mut rng).unwrap_err();
    assert!(matches!(err, SignalError::CorruptRecord(_)), "{err:?}");
    let err = s.load_pre_key(2).unwrap_err();
    assert!(
        matches!(&err, SignalError::CorruptRecord(w) if w.contains("prekey 2")),
        "{err:?}"
    );
    let err = s.load_pre_key(3).unwrap_err();
    assert!(matches!(err, SignalError::Store(_)), "{err:?}");
    assert!(
        s.load_pre_key(4).unwrap().is_some(),
        "other rows unaffected"
    );
    let err = s.load_signed_pre_key(1).unwrap_err();
    assert!(matches!(err, SignalError::CorruptRecord(_)), "{err:?}");
    assert!(s.list_signed_pre_keys().is_err());
    let err = s.get_identity(&bob_addr()).unwrap_err();
    assert!(matches!(err, SignalError::CorruptRecord(_)), "{err:?}");
    // A corrupt row can be overwritten.
    s.store_session(&bob_addr(), &SessionRecord::new()).unwrap();
    assert!(s.load_session(&bob_addr()).unwrap().is_some());
    s.set_trusted(&bob_addr(), KeyPair::generate(&mut rng).public)
        .unwrap();
    assert!(s.get_identity(&bob_addr()).unwrap().is_some());
    drop(s);

    // Our own identity corrupt: opening fails, nothing is regenerated over it.
    raw(&path)
        .execute("UPDATE local_identity SET key_pair = x'0a2105'", [])
        .unwrap();
    let err = SqliteSignalStore::open(&path, never).unwrap_err();
    assert!(
        matches!(&err, SignalError::CorruptRecord(w) if w.contains("identity")),
        "{err:?}"
    );
    assert!(SqliteSignalStore::open_existing(&path).is_err());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let mut rng = StdRng::seed_from_u64(11);
    drop(SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap());
    raw(&path)
        .execute("INSERT INTO schema_version (version) VALUES (99)", [])
        .unwrap();
    let err = SqliteSignalStore::open(&path, never).unwrap_err();
    match err {
        SignalError::Store(why) => assert!(why.contains("99"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = SqliteSignalStore::open(&path, never).unwrap_err();
    assert!(matches!(err, SignalError::Store(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// OMEMO 2.

fn omemo2_behaves<S: Omemo2Store>(store: &mut S, rng: &mut StdRng) {
    let identity = IdentityKeyPair::generate(rng);
    assert!(store.omemo2_signed_prekeys().unwrap().is_empty());
    assert_eq!(store.omemo2_last_prekey_id().unwrap(), 0);

    // Signed prekeys.
    let s1 = o2::rotate_signed_prekey(store, &identity, 10, rng).unwrap();
    let s2 = o2::rotate_signed_prekey(store, &identity, 20, rng).unwrap();
    assert_eq!((s1.id, s2.id), (1, 2));
    let loaded = store.omemo2_signed_prekey(2).unwrap().unwrap();
    assert_eq!(loaded.signature, s2.signature);
    assert_eq!(loaded.key_pair.public, s2.key_pair.public);
    assert_eq!(o2::current_signed_prekey(store).unwrap().unwrap().id, 2);
    let manual = Omemo2SignedPreKey::generate(7, &identity, 5, rng);
    store.omemo2_store_signed_prekey(&manual).unwrap();
    assert_eq!(
        store
            .omemo2_signed_prekeys()
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        vec![1, 2, 7]
    );
    store.omemo2_remove_signed_prekey(1).unwrap();
    assert!(store.omemo2_signed_prekey(1).unwrap().is_none());

    // One-time prekeys: replenishment never reuses ids.
    let fresh = o2::replenish_prekeys(store, 5, rng).unwrap();
    assert_eq!(
        fresh.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(store.omemo2_last_prekey_id().unwrap(), 5);
    store.omemo2_remove_prekey(2).unwrap();
    store.omemo2_remove_prekey(5).unwrap();
    let fresh = o2::replenish_prekeys(store, 5, rng).unwrap();
    assert_eq!(fresh.iter().map(|p| p.id).collect::<Vec<_>>(), vec![6, 7]);
    assert_eq!(store.omemo2_prekey_ids().unwrap(), vec![1, 3, 4, 6, 7]);
    assert_eq!(
        store.omemo2_prekey(6).unwrap().unwrap().key_pair.public,
        fresh[0].key_pair.public
    );
    store.omemo2_set_last_prekey_id(u32::MAX).unwrap();
    assert_eq!(store.omemo2_last_prekey_id().unwrap(), u32::MAX);
    store.omemo2_remove_prekey(3).unwrap();
    let fresh = o2::replenish_prekeys(store, 5, rng).unwrap();
    assert_eq!(
        fresh.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![2],
        "wraps to 1, skips"
    );
    store
        .omemo2_store_prekey(&PreKeyRecord::generate(1000, rng))
        .unwrap();
    assert!(store.omemo2_prekey(1000).unwrap().is_some());

    // Sessions (opaque blobs here), device ids ascending.
    let heidi = |d| Address::new("heidi@example.org", d);
    assert!(store.omemo2_load_session(&heidi(1)).unwrap().is_none());
    store.omemo2_store_session(&heidi(40), b"forty").unwrap();
    store.omemo2_store_session(&heidi(3), b"three").unwrap();
    store
        .omemo2_store_session(&heidi(3), b"three again")
        .unwrap();
    store
        .omemo2_store_session(&Address::new("heidi@example.org.x", 1), b"other")
        .unwrap();
    assert_eq!(
        store.omemo2_session_devices("heidi@example.org").unwrap(),
        vec![3, 40]
    );
    assert_eq!(
        store.omemo2_load_session(&heidi(3)).unwrap().unwrap(),
        b"three again"
    );
    store.omemo2_delete_session(&heidi(40)).unwrap();
    assert_eq!(
        store.omemo2_session_devices("heidi@example.org").unwrap(),
        vec![3]
    );
    assert!(
        o2::load_record(store, &heidi(9))
            .unwrap()
            .current()
            .is_none()
    );

    // Identities with trust.
    assert!(store.omemo2_identity(&heidi(3)).unwrap().is_none());
    let ik = [7u8; 32];
    store
        .omemo2_store_identity(&heidi(3), &ik, Omemo2Trust::Undecided)
        .unwrap();
    assert_eq!(
        store.omemo2_identity(&heidi(3)).unwrap(),
        Some((ik, Omemo2Trust::Undecided))
    );
    for t in [Omemo2Trust::Trusted, Omemo2Trust::Distrusted] {
        store.omemo2_store_identity(&heidi(3), &ik, t).unwrap();
        assert_eq!(store.omemo2_identity(&heidi(3)).unwrap(), Some((ik, t)));
    }
    assert!(store.omemo2_identity(&heidi(4)).unwrap().is_none());
}

#[test]
fn omemo2_store_behaviour_matches_in_memory() {
    let mut rng = StdRng::seed_from_u64(12);
    omemo2_behaves(&mut InMemoryOmemo2Store::new(), &mut rng);
    let mut rng = StdRng::seed_from_u64(12);
    omemo2_behaves(&mut sqlite_mem(&mut rng.clone()), &mut rng);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(12);
    let mut s =
        SqliteSignalStore::open_or_generate(dir.path().join("o2.db"), &mut rng.clone()).unwrap();
    omemo2_behaves(&mut s, &mut rng);
}

#[test]
fn omemo2_and_signal_namespaces_are_separate() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut s = sqlite_mem(&mut rng);
    let identity = s.identity_key_pair().unwrap();
    let v3 = PreKeyRecord::generate(1, &mut rng);
    let v2 = PreKeyRecord::generate(1, &mut rng);
    s.store_pre_key(&v3).unwrap();
    s.omemo2_store_prekey(&v2).unwrap();
    assert_eq!(
        s.load_pre_key(1).unwrap().unwrap().key_pair.public,
        v3.key_pair.public
    );
    assert_eq!(
        s.omemo2_prekey(1).unwrap().unwrap().key_pair.public,
        v2.key_pair.public
    );
    s.remove_pre_key(1).unwrap();
    assert!(s.omemo2_prekey(1).unwrap().is_some());

    let spk3 = SignedPreKeyRecord::generate(&identity, 1, 0, &mut rng);
    s.store_signed_pre_key(&spk3).unwrap();
    o2::rotate_signed_prekey(&mut s, &identity, 0, &mut rng).unwrap();
    assert_eq!(s.list_signed_pre_keys().unwrap().len(), 1);
    assert_eq!(s.omemo2_signed_prekeys().unwrap().len(), 1);
    s.omemo2_remove_signed_prekey(1).unwrap();
    assert!(s.load_signed_pre_key(1).unwrap().is_some());

    s.store_session(&bob_addr(), &SessionRecord::new()).unwrap();
    assert!(s.omemo2_load_session(&bob_addr()).unwrap().is_none());
    s.omemo2_store_session(&bob_addr(), b"o2").unwrap();
    assert!(s.load_session(&bob_addr()).unwrap().is_some());
    assert_eq!(s.sub_device_sessions("bob@example.org").unwrap(), vec![2]);
    s.delete_session(&bob_addr()).unwrap();
    assert_eq!(
        s.omemo2_session_devices("bob@example.org").unwrap(),
        vec![2]
    );

    s.omemo2_store_identity(&bob_addr(), &[1; 32], Omemo2Trust::Trusted)
        .unwrap();
    assert!(s.get_identity(&bob_addr()).unwrap().is_none());
}

/// An OMEMO 2 exchange between two SQLite stores with the sessions, prekeys and bundle
/// surviving a reopen of both.
#[test]
fn omemo2_conversation_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a2.db"), dir.path().join("b2.db"));
    let mut rng = StdRng::seed_from_u64(14);
    let key_hmac = |i: u8| vec![i; 48];

    let mut alice = SqliteSignalStore::open_or_generate(&pa, &mut rng).unwrap();
    let mut bob = SqliteSignalStore::open_or_generate(&pb, &mut rng).unwrap();
    let bob_identity = bob.identity_key_pair().unwrap();
    o2::rotate_signed_prekey(&mut bob, &bob_identity, 1, &mut rng).unwrap();
    o2::replenish_prekeys(&mut bob, o2::PREKEY_TARGET, &mut rng).unwrap();
    let bundle = o2::own_bundle(&bob, &bob_identity, 2).unwrap();
    drop(bob);
    let bob = SqliteSignalStore::open(&pb, never).unwrap();
    let again = o2::own_bundle(&bob, &bob.identity_key_pair().unwrap(), 2).unwrap();
    assert_eq!(again.ik, bundle.ik);
    assert_eq!(again.spk, bundle.spk);
    assert_eq!(again.spks, bundle.spks);
    assert_eq!(again.prekeys, bundle.prekeys);

    let alice_identity = alice.identity_key_pair().unwrap();
    let mut rec = Omemo2SessionRecord::new();
    rec.initiate(&alice_identity, &bundle, &mut rng).unwrap();
    let kex = rec.encrypt(&key_hmac(1)).unwrap();
    assert!(kex.is_key_exchange());
    o2::save_record(&mut alice, &bob_addr(), &rec).unwrap();
    drop((alice, bob));

    let mut alice = SqliteSignalStore::open(&pa, never).unwrap();
    let mut bob = SqliteSignalStore::open(&pb, never).unwrap();
    let bob_identity = bob.identity_key_pair().unwrap();
    let mut brec = o2::load_record(&bob, &alice_addr()).unwrap();
    let out = brec
        .decrypt_key_exchange(&bob_identity, &mut bob, kex.bytes(), &mut rng)
        .unwrap();
    assert_eq!(out.plaintext.as_slice(), key_hmac(1).as_slice());
    assert_eq!(
        out.their_identity,
        alice.identity_key_pair().unwrap().ed25519_public()
    );
    assert_eq!(
        bob.omemo2_prekey_ids().unwrap().len(),
        o2::PREKEY_TARGET - 1
    );
    bob.omemo2_store_identity(&alice_addr(), &out.their_identity, Omemo2Trust::Trusted)
        .unwrap();
    let reply = brec.encrypt(&key_hmac(2)).unwrap();
    assert!(matches!(reply, Omemo2KeyElement::Message(_)));
    o2::save_record(&mut bob, &alice_addr(), &brec).unwrap();
    let refill = o2::replenish_prekeys(&mut bob, o2::PREKEY_TARGET, &mut rng).unwrap();
    assert_eq!(refill.len(), 1);
    assert_eq!(refill[0].id, o2::PREKEY_TARGET as u32 + 1, "ids not reused");
    drop(bob);

    let mut arec = o2::load_record(&alice, &bob_addr()).unwrap();
    let got = arec.decrypt_message(reply.bytes(), &mut rng).unwrap();
    assert_eq!(got.plaintext.as_slice(), key_hmac(2).as_slice());
    let m = arec.encrypt(&key_hmac(3)).unwrap();
    assert!(!m.is_key_exchange(), "answered: no more key exchanges");
    o2::save_record(&mut alice, &bob_addr(), &arec).unwrap();
    drop(alice);

    let bob = SqliteSignalStore::open(&pb, never).unwrap();
    assert_eq!(
        bob.omemo2_identity(&alice_addr()).unwrap().map(|(_, t)| t),
        Some(Omemo2Trust::Trusted)
    );
    let mut brec = o2::load_record(&bob, &alice_addr()).unwrap();
    let got = brec.decrypt_message(m.bytes(), &mut rng).unwrap();
    assert_eq!(got.plaintext.as_slice(), key_hmac(3).as_slice());
    let alice = SqliteSignalStore::open(&pa, never).unwrap();
    assert_eq!(
        alice.omemo2_session_devices("bob@example.org").unwrap(),
        vec![2]
    );
}

#[test]
fn omemo2_corrupt_rows_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o2c.db");
    let mut rng = StdRng::seed_from_u64(15);
    let mut s = SqliteSignalStore::open_or_generate(&path, &mut rng).unwrap();
    let identity = s.identity_key_pair().unwrap();
    o2::rotate_signed_prekey(&mut s, &identity, 0, &mut rng).unwrap();
    o2::replenish_prekeys(&mut s, 3, &mut rng).unwrap();
    s.omemo2_store_session(&bob_addr(), b"\xff\xff garbage")
        .unwrap();
    s.omemo2_store_identity(&bob_addr(), &[3; 32], Omemo2Trust::Trusted)
        .unwrap();
    drop(s);
    raw(&path)
        .execute_batch(
            "UPDATE signed_prekeys SET record = x'08' WHERE ns = 'omemo2';
             UPDATE prekeys SET record = x'1201' WHERE ns = 'omemo2' AND id = 1;
             UPDATE omemo2_identities SET trust = 9;
             INSERT INTO omemo2_identities VALUES ('bob@example.org', 3, x'0102', 1);",
        )
        .unwrap();
    let s = SqliteSignalStore::open(&path, never).unwrap();
    assert!(matches!(
        s.omemo2_signed_prekey(1),
        Err(SignalError::CorruptRecord(_))
    ));
    assert!(matches!(
        s.omemo2_prekey(1),
        Err(SignalError::CorruptRecord(_))
    ));
    assert!(s.omemo2_prekey(2).unwrap().is_some());
    assert!(o2::own_bundle(&s, &s.identity_key_pair().unwrap(), 2).is_err());
    assert!(matches!(
        o2::load_record(&s, &bob_addr()),
        Err(SignalError::CorruptRecord(_))
    ));
    assert!(matches!(
        s.omemo2_identity(&bob_addr()),
        Err(SignalError::CorruptRecord(_))
    ));
    assert!(matches!(
        s.omemo2_identity(&Address::new("bob@example.org", 3)),
        Err(SignalError::CorruptRecord(_))
    ));
}
