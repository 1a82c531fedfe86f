//! Hand-written protobuf structures (prost derive, no build step).
//!
//! Wire messages follow libsignal's `wire.proto` (proto2, field numbers in
//! `shared/ref/signal-omemo.md` §1.4–1.5); prost encodes fields in tag order, as libsignal,
//! libsignal-protocol-java and python-oldmemo do. Unknown fields (e.g. `pq_ratchet` = 5,
//! `addresses` = 6 of newer libsignal) are skipped on parse.
//!
//! Storage structures are this crate's own, versioned formats (documented on each type).

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ratchet::RatchetStateProto;

/// `SignalMessage` (libsignal `wire.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignalMessageProto {
    /// 33-byte `0x05`-prefixed sender ratchet key.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub ratchet_key: Option<Vec<u8>>,
    /// Index in the sender chain.
    #[prost(uint32, optional, tag = "2")]
    pub counter: Option<u32>,
    /// Index of the last message of the sender's previous chain (`n − 1`).
    #[prost(uint32, optional, tag = "3")]
    pub previous_counter: Option<u32>,
    /// AES-256-CBC/PKCS#7 ciphertext.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub ciphertext: Option<Vec<u8>>,
}

/// `PreKeySignalMessage` (libsignal `wire.proto`, v3 fields only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreKeySignalMessageProto {
    /// One-time prekey id, absent when none was used.
    #[prost(uint32, optional, tag = "1")]
    pub pre_key_id: Option<u32>,
    /// 33-byte base key (the initiator's X3DH ephemeral).
    #[prost(bytes = "vec", optional, tag = "2")]
    pub base_key: Option<Vec<u8>>,
    /// 33-byte initiator identity key.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub identity_key: Option<Vec<u8>>,
    /// A complete serialized `SignalMessage` (version byte, protobuf, MAC).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub message: Option<Vec<u8>>,
    /// The sender's registration id.
    #[prost(uint32, optional, tag = "5")]
    pub registration_id: Option<u32>,
    /// Signed prekey id (required).
    #[prost(uint32, optional, tag = "6")]
    pub signed_pre_key_id: Option<u32>,
}

/// One session in a stored [`RecordStructure`] (format version 1):
///
/// | tag | field | content |
/// |---|---|---|
/// | 1 | `session_version` | message version, 3 |
/// | 2 | `local_identity` | 33 bytes |
/// | 3 | `remote_identity` | 33 bytes |
/// | 4 | `ratchet` | [`RatchetStateProto`] (profile implied: libsignal v3) |
/// | 5 | `pending_pre_key` | present while outgoing messages are wrapped as PreKey messages |
/// | 6 | `local_registration_id` | |
/// | 7 | `remote_registration_id` | |
/// | 8 | `base_key` | 33 bytes, the initiator's X3DH base key (identifies the session) |
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct SessionStructure {
    #[prost(uint32, tag = "1")]
    pub session_version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub local_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub remote_identity: Vec<u8>,
    #[prost(message, optional, tag = "4")]
    pub ratchet: Option<RatchetStateProto>,
    #[prost(message, optional, tag = "5")]
    pub pending_pre_key: Option<PendingPreKeyStructure>,
    #[prost(uint32, tag = "6")]
    pub local_registration_id: u32,
    #[prost(uint32, tag = "7")]
    pub remote_registration_id: u32,
    #[prost(bytes = "vec", tag = "8")]
    pub base_key: Vec<u8>,
}

/// Pending PreKey information: `{1 pre_key_id (optional), 2 signed_pre_key_id, 3 base_key 33}`.
#[derive(Clone, PartialEq, prost::Message, Zeroize)]
pub struct PendingPreKeyStructure {
    #[prost(uint32, optional, tag = "1")]
    pub pre_key_id: Option<u32>,
    #[prost(uint32, tag = "2")]
    pub signed_pre_key_id: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub base_key: Vec<u8>,
}

/// A stored session record: `{1 format_version = 1, 2 current (optional), 3 previous
/// (repeated, newest first, ≤ 40)}`.
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct RecordStructure {
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    #[prost(message, optional, tag = "2")]
    pub current: Option<SessionStructure>,
    #[prost(message, repeated, tag = "3")]
    pub previous: Vec<SessionStructure>,
}

/// A stored one-time prekey: `{1 id, 2 public 33, 3 private 32}` (libsignal's
/// `PreKeyRecordStructure` layout).
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct PreKeyRecordStructure {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub private_key: Vec<u8>,
}

/// A stored signed prekey: `{1 id, 2 public 33, 3 private 32, 4 signature 64, 5 timestamp}`
/// (libsignal's `SignedPreKeyRecordStructure` layout).
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct SignedPreKeyRecordStructure {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub private_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub signature: Vec<u8>,
    #[prost(fixed64, tag = "5")]
    pub timestamp: u64,
}
