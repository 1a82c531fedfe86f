//! Errors of the Signal-protocol core (keys, XEdDSA, X3DH, Double Ratchet, sessions, stores).

use thiserror::Error;

/// Everything that can go wrong in the Signal-protocol layer.
///
/// Variants are precise on purpose: callers (OMEMO layers, clients) decide per variant whether a
/// failure is the peer's fault (drop the message), a local state problem (rebuild the session) or
/// a storage failure (retry).
#[derive(Debug, Error)]
pub enum SignalError {
    /// A key had the wrong length or was not a valid curve point.
    #[error("invalid key")]
    InvalidKey,
    /// A serialized public key did not start with the 0x05 (Curve25519 / "DJB") type byte.
    #[error("bad key type byte 0x{0:02x}")]
    BadKeyType(u8),
    /// A signature (XEdDSA or Ed25519) did not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// An X25519 agreement produced the all-zero output (low-order or zero peer key).
    #[error("key agreement produced an all-zero shared secret")]
    ZeroSharedSecret,
    /// A public key that must be canonical (u < p, torsion-free) was not.
    #[error("non-canonical public key")]
    NonCanonicalKey,
    /// A message could not be parsed or failed a structural check.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The message version (high nibble of the version byte) is not supported.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
    /// The message MAC did not verify (also used for a failed CBC decryption, which is
    /// indistinguishable from tampering).
    #[error("bad message authentication code")]
    BadMac,
    /// A message whose key was already used (or never cached) arrived again.
    #[error("duplicate message (counter {counter})")]
    DuplicateMessage {
        /// The counter of the rejected message.
        counter: u32,
    },
    /// The message counter is further ahead of the chain than the configured limit allows.
    #[error("message too far in the future (jump {jump})")]
    TooFarInFuture {
        /// How many messages would have to be skipped.
        jump: u32,
    },
    /// No session exists for the address, or none of the sessions could decrypt the message.
    #[error("no session")]
    NoSession,
    /// The ratchet has no sending chain yet (a responder must receive a message first).
    #[error("session has no sending chain yet")]
    NoSendingChain,
    /// The remote identity key is not trusted for this direction.
    #[error("untrusted identity")]
    UntrustedIdentity,
    /// The one-time prekey named by a PreKey message is not in the store.
    #[error("missing one-time prekey {0}")]
    MissingPreKey(u32),
    /// The signed prekey named by a PreKey message or bundle is not in the store.
    #[error("missing signed prekey {0}")]
    MissingSignedPreKey(u32),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    CorruptRecord(String),
    /// A storage backend failed.
    #[error("store error: {0}")]
    Store(String),
}

/// Result alias of this crate's Signal layer.
pub type Result<T> = std::result::Result<T, SignalError>;

impl SignalError {
    /// Shorthand for [`SignalError::InvalidMessage`].
    pub fn invalid_message(why: impl Into<String>) -> Self {
        SignalError::InvalidMessage(why.into())
    }
}
