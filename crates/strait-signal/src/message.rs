//! libsignal version-3 wire messages, byte-exact (`shared/ref/signal-omemo.md` §1.3–1.5).
//!
//! ```text
//! SignalMessage       = version ‖ protobuf SignalMessage ‖ MAC(8)
//!     MAC = HMAC-SHA256(mac_key, sender_IK(33) ‖ receiver_IK(33) ‖ version ‖ protobuf)[..8]
//! PreKeySignalMessage = version ‖ protobuf PreKeySignalMessage       (no outer MAC)
//! ```
//!
//! The version byte is emitted as `0x33`; on receive only its high nibble is looked at and must
//! be 3. Parsed messages keep the bytes as received: the MAC is checked over them, never over a
//! re-serialization.

use prost::Message as _;
use subtle::ConstantTimeEq;

use crate::error::{Result, SignalError};
use crate::kdf::hmac_sha256;
use crate::keys::PublicKey;
use crate::proto::{PreKeySignalMessageProto, SignalMessageProto};

/// The message version this crate speaks (X3DH, no Kyber).
pub const MESSAGE_VERSION: u8 = 3;
/// The version byte emitted: `(3 << 4) | 3`.
pub const VERSION_BYTE: u8 = (MESSAGE_VERSION << 4) | MESSAGE_VERSION;
/// Length of the truncated MAC of a [`SignalMessage`].
pub const MAC_LENGTH: usize = 8;

/// `CiphertextMessageType::Whisper`.
pub const WHISPER_TYPE: u8 = 2;
/// `CiphertextMessageType::PreKey`.
pub const PREKEY_TYPE: u8 = 3;

fn check_version(byte: u8) -> Result<u8> {
    let version = byte >> 4;
    if version != MESSAGE_VERSION {
        return Err(SignalError::UnsupportedVersion(version));
    }
    Ok(version)
}

/// A Double Ratchet message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalMessage {
    message_version: u8,
    ratchet_key: PublicKey,
    counter: u32,
    previous_counter: u32,
    ciphertext: Vec<u8>,
    serialized: Vec<u8>,
}

impl SignalMessage {
    /// Builds and MACs a message (version byte `0x33`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mac_key: &[u8; 32],
        ratchet_key: PublicKey,
        counter: u32,
        previous_counter: u32,
        ciphertext: Vec<u8>,
        sender_identity: &PublicKey,
        receiver_identity: &PublicKey,
    ) -> Self {
        let proto = SignalMessageProto {
            ratchet_key: Some(ratchet_key.serialize().to_vec()),
            counter: Some(counter),
            previous_counter: Some(previous_counter),
            ciphertext: Some(ciphertext.clone()),
        };
        let mut serialized = Vec::with_capacity(1 + proto.encoded_len() + MAC_LENGTH);
        serialized.push(VERSION_BYTE);
        proto.encode(&mut serialized).expect("Vec grows as needed");
        let mac = compute_mac(mac_key, sender_identity, receiver_identity, &serialized);
        serialized.extend_from_slice(&mac);
        SignalMessage {
            message_version: MESSAGE_VERSION,
            ratchet_key,
            counter,
            previous_counter,
            ciphertext,
            serialized,
        }
    }

    /// Parses a received message, keeping its bytes (the MAC is checked separately with
    /// [`SignalMessage::verify_mac`] once the keys are known).
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 1 + MAC_LENGTH {
            return Err(SignalError::invalid_message("SignalMessage too short"));
        }
        let message_version = check_version(bytes[0])?;
        let proto = SignalMessageProto::decode(&bytes[1..bytes.len() - MAC_LENGTH])
            .map_err(|e| SignalError::invalid_message(format!("SignalMessage protobuf: {e}")))?;
        let ratchet_key = proto
            .ratchet_key
            .ok_or_else(|| SignalError::invalid_message("SignalMessage without ratchet key"))?;
        let ratchet_key = PublicKey::deserialize(&ratchet_key)?;
        let counter = proto
            .counter
            .ok_or_else(|| SignalError::invalid_message("SignalMessage without counter"))?;
        let ciphertext = proto
            .ciphertext
            .ok_or_else(|| SignalError::invalid_message("SignalMessage without ciphertext"))?;
        Ok(SignalMessage {
            message_version,
            ratchet_key,
            counter,
            previous_counter: proto.previous_counter.unwrap_or(0),
            ciphertext,
            serialized: bytes.to_vec(),
        })
    }

    /// Checks the MAC over the bytes as received, in constant time.
    pub fn verify_mac(
        &self,
        sender_identity: &PublicKey,
        receiver_identity: &PublicKey,
        mac_key: &[u8; 32],
    ) -> bool {
        let (body, mac) = self.serialized.split_at(self.serialized.len() - MAC_LENGTH);
        let expected = compute_mac(mac_key, sender_identity, receiver_identity, body);
        expected.ct_eq(mac).into()
    }

    /// The message version (high nibble of the version byte).
    pub fn message_version(&self) -> u8 {
        self.message_version
    }
    /// The sender's ratchet key.
    pub fn ratchet_key(&self) -> &PublicKey {
        &self.ratchet_key
    }
    /// The message counter.
    pub fn counter(&self) -> u32 {
        self.counter
    }
    /// The previous-chain counter as sent.
    pub fn previous_counter(&self) -> u32 {
        self.previous_counter
    }
    /// The AES-CBC ciphertext.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }
    /// The bytes (as built or as received).
    pub fn serialize(&self) -> &[u8] {
        &self.serialized
    }
}

fn compute_mac(
    mac_key: &[u8; 32],
    sender_identity: &PublicKey,
    receiver_identity: &PublicKey,
    body: &[u8],
) -> [u8; MAC_LENGTH] {
    let full = hmac_sha256(
        mac_key,
        &[
            &sender_identity.serialize(),
            &receiver_identity.serialize(),
            body,
        ],
    );
    let mut mac = [0u8; MAC_LENGTH];
    mac.copy_from_slice(&full[..MAC_LENGTH]);
    mac
}

/// The first message(s) of a session: X3DH parameters plus a [`SignalMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeySignalMessage {
    message_version: u8,
    registration_id: u32,
    pre_key_id: Option<u32>,
    signed_pre_key_id: u32,
    base_key: PublicKey,
    identity_key: PublicKey,
    message: SignalMessage,
    serialized: Vec<u8>,
}

impl PreKeySignalMessage {
    /// Builds a PreKey message (version byte `0x33`).
    pub fn new(
        registration_id: u32,
        pre_key_id: Option<u32>,
        signed_pre_key_id: u32,
        base_key: PublicKey,
        identity_key: PublicKey,
        message: SignalMessage,
    ) -> Self {
        let proto = PreKeySignalMessageProto {
            pre_key_id,
            base_key: Some(base_key.serialize().to_vec()),
            identity_key: Some(identity_key.serialize().to_vec()),
            message: Some(message.serialize().to_vec()),
            registration_id: Some(registration_id),
            signed_pre_key_id: Some(signed_pre_key_id),
        };
        let mut serialized = Vec::with_capacity(1 + proto.encoded_len());
        serialized.push(VERSION_BYTE);
        proto.encode(&mut serialized).expect("Vec grows as needed");
        PreKeySignalMessage {
            message_version: MESSAGE_VERSION,
            registration_id,
            pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
            serialized,
        }
    }

    /// Parses a received PreKey message (and its embedded [`SignalMessage`]).
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let (&first, body) = bytes
            .split_first()
            .ok_or_else(|| SignalError::invalid_message("empty PreKeySignalMessage"))?;
        let message_version = check_version(first)?;
        let proto = PreKeySignalMessageProto::decode(body).map_err(|e| {
            SignalError::invalid_message(format!("PreKeySignalMessage protobuf: {e}"))
        })?;
        let missing =
            |f: &str| SignalError::invalid_message(format!("PreKeySignalMessage without {f}"));
        let signed_pre_key_id = proto
            .signed_pre_key_id
            .ok_or_else(|| missing("signed prekey id"))?;
        let base_key = PublicKey::deserialize(&proto.base_key.ok_or_else(|| missing("base key"))?)?;
        let identity_key =
            PublicKey::deserialize(&proto.identity_key.ok_or_else(|| missing("identity key"))?)?;
        let message =
            SignalMessage::deserialize(&proto.message.ok_or_else(|| missing("message"))?)?;
        if message.message_version() != message_version {
            return Err(SignalError::invalid_message(
                "inner message version differs from PreKey message version",
            ));
        }
        Ok(PreKeySignalMessage {
            message_version,
            registration_id: proto.registration_id.unwrap_or(0),
            pre_key_id: proto.pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message,
            serialized: bytes.to_vec(),
        })
    }

    /// The message version.
    pub fn message_version(&self) -> u8 {
        self.message_version
    }
    /// The sender's registration id (0 if absent).
    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }
    /// The one-time prekey used, if any.
    pub fn pre_key_id(&self) -> Option<u32> {
        self.pre_key_id
    }
    /// The signed prekey used.
    pub fn signed_pre_key_id(&self) -> u32 {
        self.signed_pre_key_id
    }
    /// The initiator's base key.
    pub fn base_key(&self) -> &PublicKey {
        &self.base_key
    }
    /// The initiator's identity key.
    pub fn identity_key(&self) -> &PublicKey {
        &self.identity_key
    }
    /// The embedded message.
    pub fn message(&self) -> &SignalMessage {
        &self.message
    }
    /// The bytes (as built or as received).
    pub fn serialize(&self) -> &[u8] {
        &self.serialized
    }
}

/// An outgoing (or classified incoming) ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CiphertextMessage {
    /// A PreKey message (type 3; OMEMO 0.3 `prekey="true"`).
    PreKey(PreKeySignalMessage),
    /// A plain ratchet message (type 2).
    Whisper(SignalMessage),
}

impl CiphertextMessage {
    /// The bytes to send.
    pub fn serialize(&self) -> &[u8] {
        match self {
            CiphertextMessage::PreKey(m) => m.serialize(),
            CiphertextMessage::Whisper(m) => m.serialize(),
        }
    }

    /// libsignal's `CiphertextMessageType` code: 3 for PreKey, 2 for Whisper.
    pub fn message_type(&self) -> u8 {
        match self {
            CiphertextMessage::PreKey(_) => PREKEY_TYPE,
            CiphertextMessage::Whisper(_) => WHISPER_TYPE,
        }
    }

    /// Whether this is a PreKey message.
    pub fn is_prekey(&self) -> bool {
        matches!(self, CiphertextMessage::PreKey(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_raw([b; 32])
    }

    #[test]
    fn signal_message_layout_and_mac() {
        let (a, b) = (key(1), key(2));
        let m = SignalMessage::new(&[9; 32], key(3), 7, 6, vec![0xaa; 16], &a, &b);
        let bytes = m.serialize();
        assert_eq!(bytes[0], 0x33);
        // 0x0a 0x21 0x05 ‖ key … (ratchet key field first)
        assert_eq!(&bytes[1..4], &[0x0a, 0x21, 0x05]);
        assert_eq!(&bytes[36..40], &[0x10, 7, 0x18, 6]);
        assert_eq!(&bytes[40..42], &[0x22, 16]);
        assert_eq!(bytes.len(), 1 + 35 + 4 + 18 + 8);
        let parsed = SignalMessage::deserialize(bytes).unwrap();
        assert_eq!(parsed, m);
        assert!(parsed.verify_mac(&a, &b, &[9; 32]));
        assert!(
            !parsed.verify_mac(&b, &a, &[9; 32]),
            "identity order matters"
        );
        assert!(!parsed.verify_mac(&a, &b, &[8; 32]));
        // version 0x34 (libsignal Rust on a v3 session) is accepted; the MAC covers the byte.
        let mut v34 = bytes.to_vec();
        v34[0] = 0x34;
        let p34 = SignalMessage::deserialize(&v34).unwrap();
        assert!(!p34.verify_mac(&a, &b, &[9; 32]));
        let mut v4 = bytes.to_vec();
        v4[0] = 0x44;
        assert!(matches!(
            SignalMessage::deserialize(&v4),
            Err(SignalError::UnsupportedVersion(4))
        ));
        assert!(SignalMessage::deserialize(&bytes[..8]).is_err());
    }

    #[test]
    fn prekey_message_layout() {
        let inner = SignalMessage::new(&[9; 32], key(3), 0, 0, vec![0xaa; 16], &key(1), &key(2));
        let m = PreKeySignalMessage::new(77, Some(14), 1, key(4), key(1), inner.clone());
        let bytes = m.serialize();
        // 0x33 08 0e 12 21 05 … as in the python-oldmemo example (pre_key_id = 14 first)
        assert_eq!(&bytes[..6], &[0x33, 0x08, 0x0e, 0x12, 0x21, 0x05]);
        let parsed = PreKeySignalMessage::deserialize(bytes).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.message(), &inner);
        let c = CiphertextMessage::PreKey(parsed);
        assert_eq!(c.message_type(), 3);
        assert_eq!(CiphertextMessage::Whisper(inner).message_type(), 2);
        let none = PreKeySignalMessage::new(77, None, 1, key(4), key(1), m.message().clone());
        assert_eq!(
            PreKeySignalMessage::deserialize(none.serialize())
                .unwrap()
                .pre_key_id(),
            None
        );
    }
}
