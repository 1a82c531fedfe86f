//! Known-answer tests of the Signal core against libsignal's published values.
//!
//! Sources (hex constants are facts; no code was taken):
//! * X3DH v3 ratcheting session: libsignal-protocol-java
//!   `tests/.../ratchet/RatchetingSessionTest.java` (commit 803f9c2a; the same vectors are in
//!   libsignal `rust/protocol/tests/ratchet.rs` at v0.74.1), see shared/ref/signal-omemo.md §1.14.
//! * XEdDSA (sign bit 1), X25519, chain key, AES-CBC KATs: unit tests of `xeddsa`, `keys`, `kdf`.

use strait_signal::keys::{IdentityKeyPair, KeyPair, PrivateKey, PublicKey};
use strait_signal::ratchet::{LIBSIGNAL_V3, RatchetState};
use strait_signal::x3dh;

fn public(s: &str) -> PublicKey {
    PublicKey::deserialize(&hex::decode(s).unwrap()).unwrap()
}

/// A key pair from the vector's private half. Note: in these historical vectors the base and
/// ephemeral private keys do not match their listed public halves (which is also why the
/// Alice-side and Bob-side expected values differ); only the private halves enter the DHs on
/// the side that owns them, and the public halves on the other side.
fn pair(private: &str, public_hex: &str) -> KeyPair {
    let kp = KeyPair::from_private(
        PrivateKey::from_slice(&hex::decode(private.replace(' ', "")).unwrap()).unwrap(),
    );
    let _ = public(public_hex);
    kp
}

const BOB_EPHEMERAL_PUB: &str =
    "052cb49776b8770205745a3a6e24f579cdb4ba7a89041005928ebbadc9c05ad458";
const BOB_EPHEMERAL_PRIV: &str = "a1cab48f7c893fafa9880a28c3b4999d28d6329562d27a4ea4e22e9ff1bdd65a";
const BOB_IDENTITY_PUB: &str = "05f1f43874f6966956c2dd473f8fa15adeb71d1cb991b2341692324cefb1c5e626";
const BOB_IDENTITY_PRIV: &str = "4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e";
const BOB_SPK_PUB: &str = "05ac248a8f263be6863576eb0362e28c828f0107a3379d34bab1586bf8c770cd67";
const BOB_SPK_PRIV: &str = "583900131fb727998b7803fe6ac22cc591f342e4e42a8c8d5d78194209b8d253";
const ALICE_BASE_PUB: &str = "05472d1fb1a9862c3af6beaca8920277e2b26f4a79213ec7c906aeb35e03cf8950";
const ALICE_BASE_PRIV: &str = "11ae7c64d1e61cd596b76a0db5012673391cae66edbfcf073b4da80516a47449";
const ALICE_EPHEMERAL_PUB: &str =
    "056c3e0d1f520283efcc55fca5e67075b904007f1881d151af76df18c51d29d34b";
const ALICE_EPHEMERAL_PRIV: &str =
    "d1ba38cea91743d33939c33c849865092801 61b8b60fc7870c599c1d46201248";
const ALICE_IDENTITY_PUB: &str =
    "05b4a8455660ada65b401007f615e654041746432e3339c6875149bceefcb42b4a";
const ALICE_IDENTITY_PRIV: &str =
    "9040f0d4e09cf38f6dc7c13779c908c015a1da4fa78737a080eb0a6f4f5f8f58";

/// `testRatchetingSessionAsAlice`: Alice's receiving chain for Bob's ratchet key is the X3DH
/// `CK0` = `ab9be50e…`; the root key (before Alice's first DH step) is `cdbd3539…35bcb2`
/// (recomputed in shared/ref/signal-omemo.md §1.14).
#[test]
fn x3dh_v3_ratcheting_session_as_alice() {
    let alice_identity = IdentityKeyPair::from_private(
        PrivateKey::from_slice(&hex::decode(ALICE_IDENTITY_PRIV).unwrap()).unwrap(),
    );
    assert_eq!(*alice_identity.public_key(), public(ALICE_IDENTITY_PUB));
    let alice_base = pair(ALICE_BASE_PRIV, ALICE_BASE_PUB);
    let alice_ephemeral = pair(ALICE_EPHEMERAL_PRIV, ALICE_EPHEMERAL_PUB);
    let secrets = x3dh::initiator_secrets(
        &alice_identity,
        &alice_base,
        &public(BOB_IDENTITY_PUB),
        &public(BOB_SPK_PUB),
        None,
    )
    .unwrap();
    assert_eq!(
        hex::encode(*secrets.root_key),
        "cdbd35392e300db7b28f9e8501eb21b224cd8ca0a009c8339fbe89614035bcb2"
    );
    let bob_ratchet = public(BOB_EPHEMERAL_PUB);
    let state = RatchetState::new_initiator(
        LIBSIGNAL_V3,
        *secrets.root_key,
        bob_ratchet,
        Some(*secrets.chain_key),
        alice_ephemeral,
    )
    .unwrap();
    assert_eq!(
        hex::encode(state.receiving_chain_key(&bob_ratchet).unwrap().key()),
        "ab9be50e5cb22a925446ab90ee5670545f4fd32902459ec274b6ad0ae5d6031a"
    );
}

/// `testRatchetingSessionAsBob`: Bob's sending chain key is `CK0` = `9797caca…` for the
/// test's keys (the Java test's Bob-side inputs differ from the Alice-side ones, hence a
/// different value).
#[test]
fn x3dh_v3_ratcheting_session_as_bob() {
    let bob_identity = IdentityKeyPair::from_private(
        PrivateKey::from_slice(&hex::decode(BOB_IDENTITY_PRIV).unwrap()).unwrap(),
    );
    assert_eq!(*bob_identity.public_key(), public(BOB_IDENTITY_PUB));
    let bob_spk = pair(BOB_SPK_PRIV, BOB_SPK_PUB);
    let _bob_ephemeral = pair(BOB_EPHEMERAL_PRIV, BOB_EPHEMERAL_PUB);
    let secrets = x3dh::responder_secrets(
        &bob_identity,
        &bob_spk,
        None,
        &public(ALICE_IDENTITY_PUB),
        &public(ALICE_BASE_PUB),
    )
    .unwrap();
    let state = x3dh::responder_ratchet(&secrets, &bob_spk);
    assert_eq!(
        hex::encode(state.sending_chain_key().unwrap().key()),
        "9797caca53c989bbe229a40ca7727010eb2604fc14945d77958a0aeda088b44d"
    );
}
