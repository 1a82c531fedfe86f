//! The OMEMO 2 wire structures (`twomemo.proto`, proto2, package `twomemo`).
//!
//! All fields are `required` except `OMEMOMessage.ciphertext`, which is `optional` because the
//! Double Ratchet's `CONCAT(ad, header)` serializes the message without it. prost emits fields
//! in tag order, which is also the order protobuf's reference serializers use, and always emits
//! `required` fields (a proto3-style field would drop `n = 0` and the peer's proto2 parser would
//! then reject the message).
//!
//! prost does not enforce presence of `required` fields on decode; the session layer checks
//! lengths (`dh_pub` 32, `mac` 16, `ik`/`ek` 32) and presence of the ciphertext itself.

#![allow(clippy::upper_case_acronyms)]

/// `OMEMOMessage`: the Double Ratchet header plus the ciphertext.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OMEMOMessage {
    /// Message number in the sending chain (`N`).
    #[prost(uint32, required, tag = "1")]
    pub n: u32,
    /// Number of messages in the previous sending chain (`PN`).
    #[prost(uint32, required, tag = "2")]
    pub pn: u32,
    /// The sender's ratchet public key, raw 32-byte X25519.
    #[prost(bytes = "vec", required, tag = "3")]
    pub dh_pub: Vec<u8>,
    /// AES-256-CBC ciphertext of the Double Ratchet plaintext; absent in `CONCAT(ad, header)`.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub ciphertext: Option<Vec<u8>>,
}

/// `OMEMOAuthenticatedMessage`: an `OMEMOMessage` as bytes and its truncated MAC.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OMEMOAuthenticatedMessage {
    /// `HMAC-SHA256(mac_key, AD ‖ message)[..16]`.
    #[prost(bytes = "vec", required, tag = "1")]
    pub mac: Vec<u8>,
    /// The serialized `OMEMOMessage` exactly as authenticated.
    #[prost(bytes = "vec", required, tag = "2")]
    pub message: Vec<u8>,
}

/// `OMEMOKeyExchange`: the X3DH header and the first (or a repeated) authenticated message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OMEMOKeyExchange {
    /// Id of the one-time prekey used.
    #[prost(uint32, required, tag = "1")]
    pub pk_id: u32,
    /// Id of the signed prekey used.
    #[prost(uint32, required, tag = "2")]
    pub spk_id: u32,
    /// The initiator's identity key, Ed25519, 32 bytes.
    #[prost(bytes = "vec", required, tag = "3")]
    pub ik: Vec<u8>,
    /// The initiator's ephemeral key, raw 32-byte X25519.
    #[prost(bytes = "vec", required, tag = "4")]
    pub ek: Vec<u8>,
    /// The embedded authenticated message.
    #[prost(message, required, tag = "5")]
    pub message: OMEMOAuthenticatedMessage,
}
