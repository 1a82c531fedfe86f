//! Criterion benchmarks of strait-signal: every protocol operation is measured beside a
//! `primitives` case that performs only the raw cryptography the operation is made of, with the
//! same sizes, straight from the RustCrypto / dalek crates (no strait-signal code). The ratio
//! protocol ÷ primitives is the cost of the protocol layer (framing, protobuf, state cloning,
//! store round trips, key checks). Figures and ratios: `docs/benchmarks.md`.
//!
//! ```sh
//! cargo bench -p strait-signal                    # everything, a few minutes
//! cargo bench -p strait-signal -- chain_encrypt   # one group
//! ```
//!
//! Groups: `chain_encrypt`, `chain_decrypt` (a message on an existing chain), `dh_ratchet` (the
//! first message of a new chain: a DH ratchet step), `session_setup` (X3DH from a bundle, both
//! sides), `omemo03_encrypt` / `omemo03_encrypt_with_setup` (an `<encrypted/>` element to 1, 5
//! and 20 devices of one JID), `omemo03_decrypt`, and `omemo2_*` (the same for OMEMO 2:
//! sessions, and `omemo2_encrypt` of an element to 1, 5 and 20 devices).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_core::RngCore;

use strait_signal::cipher::{SessionBuilder, SessionCipher};
use strait_signal::device::{DeviceV2, DeviceV03};
use strait_signal::keys::IdentityKeyPair;
use strait_signal::message::{CiphertextMessage, SignalMessage};
use strait_signal::omemo::xml::v03::EncryptedV03;
use strait_signal::omemo2::store::own_bundle;
use strait_signal::omemo2::{InMemoryOmemo2Store, Omemo2KeyElement, Omemo2SessionRecord};
use strait_signal::prekeys::{self, SignedPreKeyRecord};
use strait_signal::session::{SessionRecord, SessionState};
use strait_signal::store::memory::InMemoryStore;
use strait_signal::store::{
    Address, IdentityKeyStore, PreKeyStore, SessionStore, SignedPreKeyStore,
};
use strait_signal::x3dh::PreKeyBundle;

/// The Double Ratchet plaintext of an OMEMO 0.3 message: AES-128 key ‖ GCM tag.
const V03_KEY_MATERIAL: [u8; 32] = [0x5a; 32];
/// The Double Ratchet plaintext of an OMEMO 2 message: AES-256 key ‖ truncated HMAC.
const V2_KEY_MATERIAL: [u8; 48] = [0x5a; 48];
/// A chat message body.
const BODY: &[u8] =
    b"Hi Bob! Are we still on for lunch tomorrow at noon? The place on the corner, as usual.";

/// Raw primitives, from the crates strait-signal is built on.
mod prim {
    use aes::{Aes128, Aes256};
    use aes_gcm::aead::consts::U12;
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{AesGcm, Nonce};
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
    use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use rand_core::{CryptoRng, RngCore};
    use sha2::Sha256;
    use std::hint::black_box;
    use x25519_dalek::{PublicKey, StaticSecret};

    type HmacSha256 = Hmac<Sha256>;

    pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    pub fn hkdf<const N: usize>(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        Hkdf::<Sha256>::new(salt, ikm)
            .expand(info, &mut out)
            .unwrap();
        out
    }

    pub fn cbc_encrypt(key: &[u8], iv: &[u8], pt: &[u8]) -> Vec<u8> {
        cbc::Encryptor::<Aes256>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(pt)
    }

    pub fn cbc_decrypt(key: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
        cbc::Decryptor::<Aes256>::new(key.into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .unwrap()
    }

    pub fn gcm_encrypt(key: &[u8; 16], iv: &[u8; 12], pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let mut buf = pt.to_vec();
        let tag = AesGcm::<Aes128, U12>::new(key.into())
            .encrypt_in_place_detached(Nonce::<U12>::from_slice(iv), b"", &mut buf)
            .unwrap();
        (buf, tag.into())
    }

    pub fn gcm_decrypt(key: &[u8; 16], iv: &[u8; 12], ct: &[u8], tag: &[u8; 16]) -> Vec<u8> {
        let mut buf = ct.to_vec();
        AesGcm::<Aes128, U12>::new(key.into())
            .decrypt_in_place_detached(Nonce::<U12>::from_slice(iv), b"", &mut buf, tag.into())
            .unwrap();
        buf
    }

    /// X25519 key generation: a random scalar and its public key.
    pub fn keygen(rng: &mut (impl RngCore + CryptoRng)) -> (StaticSecret, PublicKey) {
        let s = StaticSecret::random_from_rng(rng);
        let p = PublicKey::from(&s);
        (s, p)
    }

    pub fn dh(s: &StaticSecret, p: &PublicKey) -> [u8; 32] {
        s.diffie_hellman(p).to_bytes()
    }

    /// A signature to verify: Ed25519 verification is what an XEdDSA check costs.
    pub struct Sig {
        pub vk: VerifyingKey,
        pub msg: Vec<u8>,
        pub sig: Signature,
    }

    impl Sig {
        pub fn new(msg_len: usize) -> Self {
            let sk = SigningKey::from_bytes(&[7; 32]);
            let msg = vec![5u8; msg_len];
            let sig = sk.sign(&msg);
            Sig {
                vk: sk.verifying_key(),
                msg,
                sig,
            }
        }

        pub fn verify(&self) -> bool {
            self.vk
                .verify_strict(black_box(&self.msg), black_box(&self.sig))
                .is_ok()
        }
    }

    /// Fixed inputs for the composite primitive sequences below.
    pub struct Fixture {
        pub rng: rand::rngs::StdRng,
        pub a: StaticSecret,
        pub b: PublicKey,
        pub c: PublicKey,
        pub d: PublicKey,
        pub key32: [u8; 32],
        pub sig33: Sig,
        pub sig32: Sig,
    }

    impl Fixture {
        pub fn new() -> Self {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(99);
            let (a, _) = keygen(&mut rng);
            let (_, b) = keygen(&mut rng);
            let (_, c) = keygen(&mut rng);
            let (_, d) = keygen(&mut rng);
            Fixture {
                rng,
                a,
                b,
                c,
                d,
                key32: [0x42; 32],
                sig33: Sig::new(33),
                sig32: Sig::new(32),
            }
        }

        /// Sending side of one message on an existing chain: KDF_CK (2 HMAC), the 80-byte
        /// message-key HKDF, AES-256-CBC of `pt`, and the message MAC over `mac_prefix_len`
        /// bytes (identities / AD) ‖ the serialized message (`header_len` bytes of header and
        /// the ciphertext).
        pub fn chain_send(
            &self,
            info: &[u8],
            pt: &[u8],
            mac_prefix_len: usize,
            header_len: usize,
        ) -> [u8; 32] {
            let ck = black_box(&self.key32);
            let seed = hmac(ck, &[&[1]]);
            let next = hmac(ck, &[&[2]]);
            let mk: [u8; 80] = hkdf(None, &seed, info);
            let ct = cbc_encrypt(&mk[..32], &mk[64..], black_box(pt));
            let prefix = [0u8; 128];
            let header = [0u8; 64];
            let mac = hmac(
                &mk[32..64],
                &[&prefix[..mac_prefix_len], &header[..header_len], &ct],
            );
            black_box(next);
            mac
        }

        /// Receiving side of one message on an existing chain, given its ciphertext `ct`.
        pub fn chain_receive(
            &self,
            info: &[u8],
            ct: &[u8],
            mac_prefix_len: usize,
            header_len: usize,
        ) -> Vec<u8> {
            let ck = black_box(&self.key32);
            let seed = hmac(ck, &[&[1]]);
            let next = hmac(ck, &[&[2]]);
            let mk: [u8; 80] = hkdf(None, &seed, info);
            let prefix = [0u8; 128];
            let header = [0u8; 64];
            let mac = hmac(
                &mk[32..64],
                &[&prefix[..mac_prefix_len], &header[..header_len], ct],
            );
            black_box((next, mac));
            // decrypt under the key the ciphertext was made with (same cost as any key)
            cbc_decrypt(&self.key32, &self.key32[..16], black_box(ct))
        }

        /// The ciphertext `chain_receive` expects for a plaintext of `pt` bytes.
        pub fn ciphertext_for(&self, pt: &[u8]) -> Vec<u8> {
            cbc_encrypt(&self.key32, &self.key32[..16], pt)
        }

        /// A DH ratchet step on receipt of a new ratchet key: DH, KDF_RK (HKDF 64), keygen,
        /// DH, KDF_RK.
        pub fn dh_step(&mut self, info: &[u8]) -> [u8; 64] {
            let dh1 = dh(&self.a, black_box(&self.b));
            let rk: [u8; 64] = hkdf(Some(&self.key32), &dh1, info);
            let (s, _) = keygen(&mut self.rng);
            let dh2 = dh(&s, black_box(&self.b));
            hkdf(Some(&rk[..32]), &dh2, info)
        }

        /// X3DH with a one-time prekey: keygen (base key), 4 DH, HKDF of the 32·5-byte IKM to
        /// `N` bytes.
        pub fn x3dh<const N: usize>(&mut self, salt: Option<&[u8]>, info: &[u8]) -> [u8; N] {
            let (e, _) = keygen(&mut self.rng);
            self.x3dh_agree::<N>(&e, salt, info)
        }

        /// The 4 DH and the HKDF of X3DH (the responder has no key to generate).
        pub fn x3dh_agree<const N: usize>(
            &self,
            e: &StaticSecret,
            salt: Option<&[u8]>,
            info: &[u8],
        ) -> [u8; N] {
            let mut ikm = [0xffu8; 160];
            ikm[32..64].copy_from_slice(&dh(&self.a, black_box(&self.b)));
            ikm[64..96].copy_from_slice(&dh(e, black_box(&self.c)));
            ikm[96..128].copy_from_slice(&dh(e, black_box(&self.b)));
            ikm[128..].copy_from_slice(&dh(e, black_box(&self.d)));
            hkdf(salt, &ikm, info)
        }

        /// The initiator's first sending chain: keygen, DH, KDF_RK.
        pub fn first_chain(&mut self, info: &[u8]) -> [u8; 64] {
            let (s, _) = keygen(&mut self.rng);
            let d = dh(&s, black_box(&self.b));
            hkdf(Some(&self.key32), &d, info)
        }
    }
}

/// The single primitives, for reference (`shared/ref/signal-omemo.md` §6 measured the same).
fn bench_primitives(c: &mut Criterion) {
    let mut f = prim::Fixture::new();
    let mut g = c.benchmark_group("primitive");
    g.bench_function("x25519_keygen", |b| b.iter(|| prim::keygen(&mut f.rng).1));
    g.bench_function("x25519_dh", |b| b.iter(|| prim::dh(&f.a, black_box(&f.b))));
    g.bench_function("chain_step_2xhmac", |b| {
        b.iter(|| {
            let ck = black_box(&f.key32);
            (prim::hmac(ck, &[&[1]]), prim::hmac(ck, &[&[2]]))
        })
    });
    g.bench_function("hkdf_80", |b| {
        b.iter(|| prim::hkdf::<80>(None, black_box(&f.key32), V3_INFO))
    });
    g.bench_function("aes256cbc_32B", |b| {
        b.iter(|| prim::cbc_encrypt(&f.key32, &f.key32[..16], black_box(&V03_KEY_MATERIAL)))
    });
    g.bench_function("ed25519_verify", |b| b.iter(|| f.sig33.verify()));
    // what `PublicKey::is_canonical` costs beyond the field check: a torsion check
    let point = curve25519_dalek::montgomery::MontgomeryPoint(*f.b.as_bytes());
    g.bench_function("torsion_check", |b| {
        b.iter(|| black_box(point).to_edwards(0).map(|p| p.is_torsion_free()))
    });
    g.finish();
}

fn criterion_config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .nresamples(20_000)
}

// ------------------------------------------------------------------------------------------------
// libsignal v3 sessions over in-memory stores
// ------------------------------------------------------------------------------------------------

fn alice_addr() -> Address {
    Address::new("alice@example.org", 1)
}
fn bob_addr() -> Address {
    Address::new("bob@example.org", 2)
}

/// Alice and Bob with a confirmed session, and the messages the benches replay.
struct V3 {
    rng: StdRng,
    /// Alice's store before she built the session (for session setup).
    alice_fresh: InMemoryStore,
    /// Bob's store before he received Alice's first message.
    bob_fresh: InMemoryStore,
    /// Bob's bundle (with a one-time prekey).
    bundle: PreKeyBundle,
    /// Alice's first message (PreKey, type 3).
    prekey_message: Vec<u8>,
    alice: InMemoryStore,
    bob: InMemoryStore,
}

impl V3 {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(1);
        let alice = InMemoryStore::generate(&mut rng);
        let mut bob = InMemoryStore::generate(&mut rng);
        let identity = bob.identity_key_pair().unwrap();
        let spk = SignedPreKeyRecord::generate(&identity, 1, 0, &mut rng);
        bob.store_signed_pre_key(&spk).unwrap();
        for pk in prekeys::generate_pre_keys(1, 10, &mut rng) {
            bob.store_pre_key(&pk).unwrap();
        }
        let bundle = PreKeyBundle {
            registration_id: bob.local_registration_id().unwrap(),
            device_id: 2,
            pre_key: Some((3, bob.load_pre_key(3).unwrap().unwrap().key_pair.public)),
            signed_pre_key_id: spk.id,
            signed_pre_key: spk.key_pair.public,
            signed_pre_key_signature: spk.signature,
            identity_key: *identity.public_key(),
        };
        let (alice_fresh, bob_fresh) = (alice.clone(), bob.clone());
        let mut v = V3 {
            rng,
            alice_fresh,
            bob_fresh,
            bundle,
            prekey_message: Vec::new(),
            alice,
            bob,
        };
        SessionBuilder::process_prekey_bundle(&mut v.alice, &bob_addr(), &v.bundle, &mut v.rng)
            .unwrap();
        let m = SessionCipher::encrypt(&mut v.alice, &bob_addr(), b"first", &mut v.rng).unwrap();
        assert!(m.is_prekey());
        v.prekey_message = m.serialize().to_vec();
        v.bob_receive(&m);
        v.bob_to_alice();
        // a few messages so that both chains are "existing"
        for _ in 0..3 {
            let m = v.alice_to_bob_message();
            v.bob_receive(&m);
        }
        v
    }

    fn alice_to_bob_message(&mut self) -> CiphertextMessage {
        SessionCipher::encrypt(
            &mut self.alice,
            &bob_addr(),
            &V03_KEY_MATERIAL,
            &mut self.rng,
        )
        .unwrap()
    }

    fn bob_receive(&mut self, m: &CiphertextMessage) {
        SessionCipher::decrypt(
            &mut self.bob,
            &alice_addr(),
            m.message_type(),
            m.serialize(),
            &mut self.rng,
        )
        .unwrap();
    }

    fn bob_to_alice(&mut self) {
        let r =
            SessionCipher::encrypt(&mut self.bob, &alice_addr(), b"reply", &mut self.rng).unwrap();
        SessionCipher::decrypt(
            &mut self.alice,
            &bob_addr(),
            r.message_type(),
            r.serialize(),
            &mut self.rng,
        )
        .unwrap();
    }

    fn state(store: &InMemoryStore, peer: &Address) -> SessionState {
        store
            .load_session(peer)
            .unwrap()
            .unwrap()
            .current()
            .unwrap()
            .clone()
    }
}

/// v3 message header sizes for the MAC input: version byte + protobuf without the ciphertext
/// (ratchet key 35, counter 3, previous counter 2, ciphertext tag+length 2).
const V3_HEADER: usize = 1 + 35 + 3 + 2 + 2;
/// v3 MAC prefix: sender and receiver identity keys, 33 bytes each.
const V3_MAC_PREFIX: usize = 66;
const V3_INFO: &[u8] = b"WhisperMessageKeys";
const V3_ROOT: &[u8] = b"WhisperRatchet";

fn bench_v3(c: &mut Criterion) {
    let mut v = V3::new();
    let mut f = prim::Fixture::new();

    // ---- encrypt on an existing chain ----
    {
        let mut g = c.benchmark_group("chain_encrypt");
        let mut alice_state = V3::state(&v.alice, &bob_addr());
        assert!(alice_state.pending_pre_key().is_none());
        g.bench_function("protocol/SessionState::encrypt", |b| {
            b.iter(|| alice_state.encrypt(black_box(&V03_KEY_MATERIAL)).unwrap())
        });
        let mut store = v.alice.clone();
        let mut rng = StdRng::seed_from_u64(2);
        g.bench_function("protocol/SessionCipher::encrypt+store", |b| {
            b.iter(|| {
                SessionCipher::encrypt(
                    &mut store,
                    &bob_addr(),
                    black_box(&V03_KEY_MATERIAL),
                    &mut rng,
                )
                .unwrap()
            })
        });
        g.bench_function("primitives", |b| {
            b.iter(|| f.chain_send(V3_INFO, &V03_KEY_MATERIAL, V3_MAC_PREFIX, V3_HEADER))
        });
        // what the store adds: InMemoryStore keeps records serialized, as a database would
        let record = store
            .load_session(&bob_addr())
            .unwrap()
            .unwrap()
            .serialize();
        g.bench_function("store/SessionRecord::deserialize+serialize", |b| {
            b.iter(|| {
                SessionRecord::deserialize(black_box(&record))
                    .unwrap()
                    .serialize()
            })
        });
        g.finish();
    }

    // ---- decrypt on an existing chain ----
    {
        let mut g = c.benchmark_group("chain_decrypt");
        let m = v.alice_to_bob_message();
        let bytes = m.serialize().to_vec();
        let parsed = SignalMessage::deserialize(&bytes).unwrap();
        let bob_state = V3::state(&v.bob, &alice_addr());
        let mut rng = StdRng::seed_from_u64(3);
        g.bench_function("protocol/SessionState::decrypt", |b| {
            b.iter_batched(
                || bob_state.clone(),
                |mut s| {
                    let pt = s.decrypt(black_box(&parsed), &mut rng).unwrap();
                    (s, pt)
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("protocol/parse+SessionState::decrypt", |b| {
            b.iter_batched(
                || bob_state.clone(),
                |mut s| {
                    let m = SignalMessage::deserialize(black_box(&bytes)).unwrap();
                    let pt = s.decrypt(&m, &mut rng).unwrap();
                    (s, pt)
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("protocol/SessionCipher::decrypt+store", |b| {
            b.iter_batched(
                || v.bob.clone(),
                |mut st| {
                    let pt = SessionCipher::decrypt_signal_message(
                        &mut st,
                        &alice_addr(),
                        black_box(&bytes),
                        &mut rng,
                    )
                    .unwrap();
                    (st, pt)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(&V03_KEY_MATERIAL);
        g.bench_function("primitives", |b| {
            b.iter(|| f.chain_receive(V3_INFO, &ct, V3_MAC_PREFIX, V3_HEADER))
        });
        g.finish();
    }

    // ---- DH ratchet step: the first message on a new chain ----
    {
        let mut g = c.benchmark_group("dh_ratchet");
        v.bob_to_alice(); // Alice ratchets: her next message carries a new ratchet key
        let m = v.alice_to_bob_message();
        let parsed = SignalMessage::deserialize(m.serialize()).unwrap();
        let bob_state = V3::state(&v.bob, &alice_addr());
        assert!(
            bob_state
                .ratchet()
                .receiving_chain_key(parsed.ratchet_key())
                .is_none()
        );
        let mut rng = StdRng::seed_from_u64(4);
        g.bench_function("protocol/SessionState::decrypt", |b| {
            b.iter_batched(
                || bob_state.clone(),
                |mut s| {
                    let pt = s.decrypt(black_box(&parsed), &mut rng).unwrap();
                    (s, pt)
                },
                BatchSize::SmallInput,
            )
        });
        let ratchet = bob_state.ratchet().clone();
        g.bench_function("protocol/RatchetState::receiving_keys", |b| {
            b.iter_batched(
                || ratchet.clone(),
                |mut r| {
                    let k = r
                        .receiving_keys(parsed.ratchet_key(), parsed.counter(), 0, &mut rng)
                        .unwrap();
                    (r, k)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(&V03_KEY_MATERIAL);
        g.bench_function("primitives", |b| {
            b.iter(|| {
                let rk = f.dh_step(V3_ROOT);
                (rk, f.chain_receive(V3_INFO, &ct, V3_MAC_PREFIX, V3_HEADER))
            })
        });
        g.bench_function("primitives/ratchet-only", |b| {
            b.iter(|| {
                let rk = f.dh_step(V3_ROOT);
                let seed = prim::hmac(&rk[32..], &[&[1]]);
                let next = prim::hmac(&rk[32..], &[&[2]]);
                let mk: [u8; 80] = prim::hkdf(None, &seed, V3_INFO);
                (next, mk)
            })
        });
        g.finish();
    }

    // ---- session setup from a bundle (initiator) and from a PreKey message (responder) ----
    {
        let mut g = c.benchmark_group("session_setup");
        g.sample_size(20);
        let mut rng = StdRng::seed_from_u64(5);
        g.bench_function("protocol/initiator/process_prekey_bundle", |b| {
            b.iter_batched(
                || v.alice_fresh.clone(),
                |mut st| {
                    SessionBuilder::process_prekey_bundle(
                        &mut st,
                        &bob_addr(),
                        black_box(&v.bundle),
                        &mut rng,
                    )
                    .unwrap();
                    st
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("primitives/initiator", |b| {
            b.iter(|| {
                assert!(f.sig33.verify());
                let sk: [u8; 64] = f.x3dh(None, b"WhisperText");
                (sk, f.first_chain(V3_ROOT))
            })
        });
        g.bench_function("protocol/responder/decrypt_prekey_message", |b| {
            b.iter_batched(
                || v.bob_fresh.clone(),
                |mut st| {
                    let pt = SessionCipher::decrypt_prekey_message(
                        &mut st,
                        &alice_addr(),
                        black_box(&v.prekey_message),
                        &mut rng,
                    )
                    .unwrap();
                    (st, pt)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(b"first");
        let e = prim::keygen(&mut rng).0;
        g.bench_function("primitives/responder", |b| {
            b.iter(|| {
                let sk: [u8; 64] = f.x3dh_agree(&e, None, b"WhisperText");
                let rk = f.dh_step(V3_ROOT);
                (
                    sk,
                    rk,
                    f.chain_receive(V3_INFO, &ct, V3_MAC_PREFIX, V3_HEADER),
                )
            })
        });
        g.finish();
    }
}

// ------------------------------------------------------------------------------------------------
// OMEMO 0.3 devices: one sender, N devices of one recipient JID
// ------------------------------------------------------------------------------------------------

const ALICE: &str = "alice@a.example";
const BOB: &str = "bob@b.example";

struct Omemo03 {
    rng: StdRng,
    alice: DeviceV03<InMemoryStore>,
    bobs: Vec<DeviceV03<InMemoryStore>>,
}

impl Omemo03 {
    /// Alice and `n` devices of Bob, bundles exchanged, no sessions yet.
    fn new(n: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(10 + u64::from(n));
        let mut alice =
            DeviceV03::new(ALICE, 1, InMemoryStore::generate(&mut rng), &mut rng).unwrap();
        let mut bobs = Vec::new();
        for i in 0..n {
            let bob =
                DeviceV03::new(BOB, 100 + i, InMemoryStore::generate(&mut rng), &mut rng).unwrap();
            alice
                .add_bundle(BOB, bob.device_id(), bob.bundle().unwrap())
                .unwrap();
            bobs.push(bob);
        }
        Omemo03 { rng, alice, bobs }
    }

    /// Builds the sessions and completes them (every Bob device answers with an empty
    /// message), so that Alice's keys are plain SignalMessages.
    fn established(n: u32) -> Self {
        let mut o = Self::new(n);
        let first = o.alice.encrypt(BOB, b"hello", &mut o.rng).unwrap();
        assert!(first.keys.iter().all(|k| k.prekey));
        for bob in &mut o.bobs {
            bob.decrypt(ALICE, &first, &mut o.rng).unwrap();
            let answer = bob.empty_message(ALICE, 1, &mut o.rng).unwrap();
            o.alice.decrypt(BOB, &answer, &mut o.rng).unwrap();
        }
        let check = o.alice.encrypt(BOB, b"check", &mut o.rng).unwrap();
        assert_eq!(check.keys.len(), n as usize);
        assert!(check.keys.iter().all(|k| !k.prekey));
        o
    }
}

/// The raw cost of the OMEMO 0.3 payload: 28 random bytes (key, IV) and AES-128-GCM of the body.
fn payload_v03_primitives(rng: &mut StdRng) -> (Vec<u8>, [u8; 16]) {
    let mut key = [0u8; 16];
    let mut iv = [0u8; 12];
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut iv);
    prim::gcm_encrypt(&key, &iv, black_box(BODY))
}

fn bench_omemo03(c: &mut Criterion) {
    let mut f = prim::Fixture::new();
    let mut prng = StdRng::seed_from_u64(20);
    {
        let mut g = c.benchmark_group("omemo03_encrypt");
        for n in [1u32, 5, 20] {
            let mut o = Omemo03::established(n);
            g.bench_with_input(
                BenchmarkId::new("protocol/DeviceV03::encrypt", n),
                &n,
                |b, _| b.iter(|| o.alice.encrypt(BOB, black_box(BODY), &mut o.rng).unwrap()),
            );
            g.bench_with_input(BenchmarkId::new("primitives", n), &n, |b, &n| {
                b.iter(|| {
                    let p = payload_v03_primitives(&mut prng);
                    for _ in 0..n {
                        black_box(f.chain_send(
                            V3_INFO,
                            &V03_KEY_MATERIAL,
                            V3_MAC_PREFIX,
                            V3_HEADER,
                        ));
                    }
                    p
                })
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("omemo03_encrypt_with_setup");
        g.sample_size(10);
        for n in [1u32, 5, 20] {
            let mut o = Omemo03::new(n);
            g.bench_with_input(
                BenchmarkId::new("protocol/reset_sessions+DeviceV03::encrypt", n),
                &n,
                |b, _| {
                    b.iter(|| {
                        o.alice.reset_sessions(BOB).unwrap();
                        o.alice.encrypt(BOB, black_box(BODY), &mut o.rng).unwrap()
                    })
                },
            );
            g.bench_with_input(BenchmarkId::new("primitives", n), &n, |b, &n| {
                b.iter(|| {
                    let p = payload_v03_primitives(&mut prng);
                    for _ in 0..n {
                        assert!(f.sig33.verify());
                        black_box(f.x3dh::<64>(None, b"WhisperText"));
                        black_box(f.first_chain(V3_ROOT));
                        black_box(f.chain_send(
                            V3_INFO,
                            &V03_KEY_MATERIAL,
                            V3_MAC_PREFIX,
                            V3_HEADER,
                        ));
                    }
                    p
                })
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("omemo03_decrypt");
        let mut o = Omemo03::established(1);
        // Bob receives one message on Alice's current chain, so the benchmarked one is a
        // message on an existing chain (no DH step).
        let warm = o.alice.encrypt(BOB, BODY, &mut o.rng).unwrap();
        o.bobs[0].decrypt(ALICE, &warm, &mut o.rng).unwrap();
        let element: EncryptedV03 = o.alice.encrypt(BOB, BODY, &mut o.rng).unwrap();
        let snapshot = o.bobs[0].store().clone();
        let bob = &mut o.bobs[0];
        let mut rng = StdRng::seed_from_u64(21);
        g.bench_function("protocol/DeviceV03::decrypt", |b| {
            b.iter_batched(
                || snapshot.clone(),
                |st| {
                    let old = std::mem::replace(bob.store_mut(), st);
                    let d = bob.decrypt(ALICE, black_box(&element), &mut rng).unwrap();
                    (old, d)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(&V03_KEY_MATERIAL);
        let (key, iv) = ([1u8; 16], [2u8; 12]);
        let (body_ct, tag) = prim::gcm_encrypt(&key, &iv, BODY);
        g.bench_function("primitives", |b| {
            b.iter(|| {
                let km = f.chain_receive(V3_INFO, &ct, V3_MAC_PREFIX, V3_HEADER);
                (km, prim::gcm_decrypt(&key, &iv, black_box(&body_ct), &tag))
            })
        });
        g.finish();
    }
}

// ------------------------------------------------------------------------------------------------
// OMEMO 2 sessions
// ------------------------------------------------------------------------------------------------

/// OMEMO 2 framing sizes for the MAC input: AD (two Ed25519 keys) and the OMEMOMessage header
/// without the ciphertext (n 3, pn 2, dh_pub 34, ciphertext tag+length 2).
const V2_MAC_PREFIX: usize = 64;
const V2_HEADER: usize = 3 + 2 + 34 + 2;
const V2_INFO: &[u8] = b"OMEMO Message Key Material";
const V2_ROOT: &[u8] = b"OMEMO Root Chain";

struct Omemo2 {
    rng: StdRng,
    bob_identity: IdentityKeyPair,
    alice_identity: IdentityKeyPair,
    bob_store_fresh: InMemoryOmemo2Store,
    bundle: strait_signal::omemo2::Omemo2Bundle,
    key_exchange: Vec<u8>,
    alice: Omemo2SessionRecord,
    bob: Omemo2SessionRecord,
}

impl Omemo2 {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(30);
        let alice_identity = IdentityKeyPair::generate(&mut rng);
        let bob_identity = IdentityKeyPair::generate(&mut rng);
        let bob_store_fresh = InMemoryOmemo2Store::generate(&bob_identity, &mut rng).unwrap();
        let bundle = own_bundle(&bob_store_fresh, &bob_identity, 2).unwrap();
        let mut alice = Omemo2SessionRecord::new();
        alice.initiate(&alice_identity, &bundle, &mut rng).unwrap();
        let kex = alice.encrypt(&V2_KEY_MATERIAL).unwrap();
        assert!(kex.is_key_exchange());
        let mut bob = Omemo2SessionRecord::new();
        let mut bob_store = bob_store_fresh.clone();
        bob.decrypt_key_exchange(&bob_identity, &mut bob_store, kex.bytes(), &mut rng)
            .unwrap();
        let mut o = Omemo2 {
            rng,
            bob_identity,
            alice_identity,
            bob_store_fresh,
            bundle,
            key_exchange: kex.bytes().to_vec(),
            alice,
            bob,
        };
        o.bob_to_alice();
        for _ in 0..3 {
            let m = o.alice.encrypt(&V2_KEY_MATERIAL).unwrap();
            o.bob.decrypt_message(m.bytes(), &mut o.rng).unwrap();
        }
        o
    }

    fn bob_to_alice(&mut self) {
        let m = self.bob.encrypt(&V2_KEY_MATERIAL).unwrap();
        self.alice
            .decrypt_message(m.bytes(), &mut self.rng)
            .unwrap();
    }

    fn alice_message(&mut self) -> Vec<u8> {
        match self.alice.encrypt(&V2_KEY_MATERIAL).unwrap() {
            Omemo2KeyElement::Message(b) => b,
            Omemo2KeyElement::KeyExchange(_) => panic!("session not confirmed"),
        }
    }
}

fn bench_omemo2(c: &mut Criterion) {
    let mut o = Omemo2::new();
    let mut f = prim::Fixture::new();
    {
        let mut g = c.benchmark_group("omemo2_chain_encrypt");
        let mut alice = o.alice.clone();
        g.bench_function("protocol/Omemo2SessionRecord::encrypt", |b| {
            b.iter(|| alice.encrypt(black_box(&V2_KEY_MATERIAL)).unwrap())
        });
        g.bench_function("primitives", |b| {
            b.iter(|| f.chain_send(V2_INFO, &V2_KEY_MATERIAL, V2_MAC_PREFIX, V2_HEADER))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("omemo2_chain_decrypt");
        let m = o.alice_message();
        let mut rng = StdRng::seed_from_u64(31);
        g.bench_function("protocol/Omemo2SessionRecord::decrypt_message", |b| {
            b.iter_batched(
                || o.bob.clone(),
                |mut r| {
                    let d = r.decrypt_message(black_box(&m), &mut rng).unwrap();
                    (r, d)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(&V2_KEY_MATERIAL);
        g.bench_function("primitives", |b| {
            b.iter(|| f.chain_receive(V2_INFO, &ct, V2_MAC_PREFIX, V2_HEADER))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("omemo2_dh_ratchet");
        o.bob_to_alice();
        let m = o.alice_message();
        let mut rng = StdRng::seed_from_u64(32);
        g.bench_function("protocol/Omemo2SessionRecord::decrypt_message", |b| {
            b.iter_batched(
                || o.bob.clone(),
                |mut r| {
                    let d = r.decrypt_message(black_box(&m), &mut rng).unwrap();
                    (r, d)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(&V2_KEY_MATERIAL);
        g.bench_function("primitives", |b| {
            b.iter(|| {
                let rk = f.dh_step(V2_ROOT);
                (rk, f.chain_receive(V2_INFO, &ct, V2_MAC_PREFIX, V2_HEADER))
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("omemo2_session_setup");
        g.sample_size(20);
        let mut rng = StdRng::seed_from_u64(33);
        g.bench_function("protocol/initiator/Omemo2SessionRecord::initiate", |b| {
            b.iter_batched(
                Omemo2SessionRecord::new,
                |mut r| {
                    r.initiate(&o.alice_identity, black_box(&o.bundle), &mut rng)
                        .unwrap();
                    r
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("primitives/initiator", |b| {
            b.iter(|| {
                assert!(f.sig32.verify());
                let sk: [u8; 32] = f.x3dh(Some(&[0u8; 32]), b"OMEMO X3DH");
                (sk, f.first_chain(V2_ROOT))
            })
        });
        g.bench_function("protocol/responder/decrypt_key_exchange", |b| {
            b.iter_batched(
                || (Omemo2SessionRecord::new(), o.bob_store_fresh.clone()),
                |(mut r, mut st)| {
                    let d = r
                        .decrypt_key_exchange(
                            &o.bob_identity,
                            &mut st,
                            black_box(&o.key_exchange),
                            &mut rng,
                        )
                        .unwrap();
                    (r, st, d)
                },
                BatchSize::SmallInput,
            )
        });
        let ct = f.ciphertext_for(&V2_KEY_MATERIAL);
        let e = prim::keygen(&mut rng).0;
        g.bench_function("primitives/responder", |b| {
            b.iter(|| {
                let sk: [u8; 32] = f.x3dh_agree(&e, Some(&[0u8; 32]), b"OMEMO X3DH");
                let rk = f.dh_step(V2_ROOT);
                (
                    sk,
                    rk,
                    f.chain_receive(V2_INFO, &ct, V2_MAC_PREFIX, V2_HEADER),
                )
            })
        });
        g.finish();
    }
}

// ------------------------------------------------------------------------------------------------
// OMEMO 2 devices: one sender, N devices of one recipient JID
// ------------------------------------------------------------------------------------------------

struct Omemo2Devices {
    rng: StdRng,
    alice: DeviceV2<InMemoryOmemo2Store>,
}

impl Omemo2Devices {
    /// Alice and `n` devices of Bob with completed sessions (every Bob device answered Alice's
    /// key exchange with an empty message).
    fn established(n: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(40 + u64::from(n));
        let id = IdentityKeyPair::generate(&mut rng);
        let mut alice = DeviceV2::new(ALICE, 1, id, InMemoryOmemo2Store::new(), &mut rng).unwrap();
        let mut bobs = Vec::new();
        for i in 0..n {
            let id = IdentityKeyPair::generate(&mut rng);
            let bob =
                DeviceV2::new(BOB, 100 + i, id, InMemoryOmemo2Store::new(), &mut rng).unwrap();
            alice
                .add_bundle(BOB, bob.device_id(), &bob.bundle().unwrap())
                .unwrap();
            bobs.push(bob);
        }
        let first = alice.encrypt(BOB, "hello", &mut rng).unwrap();
        for bob in &mut bobs {
            bob.decrypt(ALICE, &first, &mut rng).unwrap();
            let answer = bob.empty_message(ALICE, 1, &mut rng).unwrap();
            alice.decrypt(BOB, &answer, &mut rng).unwrap();
        }
        let check = alice.encrypt(BOB, "check", &mut rng).unwrap();
        let keys = &check.recipients[0].keys;
        assert_eq!(keys.len(), n as usize);
        assert!(keys.iter().all(|k| !k.kex));
        Omemo2Devices { rng, alice }
    }
}

fn bench_omemo2_devices(c: &mut Criterion) {
    let f = prim::Fixture::new();
    let mut prng = StdRng::seed_from_u64(41);
    let body = std::str::from_utf8(BODY).unwrap();
    // the payload primitives run over a buffer as long as the serialized SCE envelope
    let envelope_len = strait_signal::omemo::sce::Envelope::with_body(body, ALICE, None, &mut prng)
        .to_bytes()
        .len();
    let envelope = vec![b'x'; envelope_len];
    let mut g = c.benchmark_group("omemo2_encrypt");
    for n in [1u32, 5, 20] {
        let mut o = Omemo2Devices::established(n);
        g.bench_with_input(
            BenchmarkId::new("protocol/DeviceV2::encrypt", n),
            &n,
            |b, _| b.iter(|| o.alice.encrypt(BOB, black_box(body), &mut o.rng).unwrap()),
        );
        g.bench_with_input(BenchmarkId::new("primitives", n), &n, |b, &n| {
            b.iter(|| {
                // payload: random key, HKDF → 80 B, AES-256-CBC, HMAC over the ciphertext
                let mut key = [0u8; 32];
                prng.fill_bytes(&mut key);
                let k: [u8; 80] = prim::hkdf(Some(&[0u8; 32]), &key, b"OMEMO Payload");
                let ct = prim::cbc_encrypt(&k[..32], &k[64..], black_box(&envelope));
                let mac = prim::hmac(&k[32..64], &[&ct]);
                for _ in 0..n {
                    black_box(f.chain_send(V2_INFO, &V2_KEY_MATERIAL, V2_MAC_PREFIX, V2_HEADER));
                }
                (ct, mac)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = bench_primitives, bench_v3, bench_omemo03, bench_omemo2, bench_omemo2_devices
}
criterion_main!(benches);
