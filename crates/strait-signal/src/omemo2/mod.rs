//! OMEMO 2 (`urn:xmpp:omemo:2`, XEP-0384 ≥ 0.8) sessions, sans-I/O.
//!
//! Wire-compatible with python-twomemo 2.1.0: Ed25519 identity keys on the wire, raw 32-byte
//! X25519 prekeys, X3DH with `"OMEMO X3DH"` and a mandatory one-time prekey ([`x3dh`]), the
//! spec-style Double Ratchet with the `"OMEMO Root Chain"` / `"OMEMO Message Key Material"`
//! labels ([`crate::ratchet::OMEMO2`]), AES-256-CBC + 16-byte HMAC message framing in
//! protobuf ([`proto`]) and the session rules (key exchange resent until answered, heartbeats,
//! archived sessions) in [`session`]. The payload layer (SCE envelope, AES-256-CBC + HMAC with
//! `"OMEMO Payload"`) and XML live in [`crate::omemo`]; this module carries its 48-byte
//! key ‖ hmac (or 32 zero bytes for an empty message) as the Double Ratchet plaintext.
//!
//! ```ignore
//! // Alice, from Bob's bundle:
//! let mut rec = Omemo2SessionRecord::new();
//! rec.initiate(&alice_identity, &bob_bundle, &mut rng)?;
//! let el = rec.encrypt(&key_and_hmac)?;            // KeyExchange until Bob answers
//! // Bob:
//! let out = bob_rec.decrypt_key_exchange(&bob_identity, &mut bob_store, el.bytes(), &mut rng)?;
//! if out.send_heartbeat { bob_rec.encrypt(&EMPTY_MESSAGE_PLAINTEXT)?; }
//! ```

pub mod proto;
pub mod session;
pub mod store;
pub mod x3dh;

pub use session::{
    EMPTY_MESSAGE_PLAINTEXT, KeyExchangeId, Omemo2Decrypted, Omemo2KeyElement, Omemo2Session,
    Omemo2SessionRecord, Role, initiate,
};
pub use store::{InMemoryOmemo2Store, Omemo2SignedPreKey, Omemo2Store, Omemo2Trust};
pub use x3dh::Omemo2Bundle;
