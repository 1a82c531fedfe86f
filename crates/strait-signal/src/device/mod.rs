//! One OMEMO device: what an app links to. For each namespace it owns the device's key store,
//! remembers the device lists and bundles it learned (from PEP, in XMPP), builds sessions
//! lazily when it first encrypts to a device, and turns plaintext into `<encrypted/>` elements
//! and back.
//!
//! This module ties together the session layers ([`crate::cipher`] for OMEMO 0.3,
//! [`crate::omemo2`] for OMEMO 2), the payload encryption ([`crate::omemo::payload`], the SCE
//! envelope of [`crate::omemo::sce`]) and the XML forms ([`crate::omemo::xml`]). It stays
//! sans-I/O: publishing bundles and sending stanzas is the caller's job.

mod v03;
mod v2;

pub use v2::DeviceV2;
pub use v03::DeviceV03;

use crate::error::SignalError;
use crate::omemo::OmemoError;

/// One-time prekeys published per namespace (XEP-0384 says about 100).
pub const PREKEY_TARGET: usize = 100;
/// Below this many, OMEMO 0.3 prekeys are replenished (a bundle must offer at least 20).
pub const PREKEY_MIN: usize = 80;

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The session layer refused (bad MAC, duplicate, unknown prekey, untrusted identity, ...).
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// An element or payload was malformed.
    #[error(transparent)]
    Omemo(#[from] OmemoError),
    /// No device of the recipient is known, or none could get a session.
    #[error("no usable device of {0}")]
    NoDevices(String),
    /// The message has no key for this device.
    #[error("the message carries no key for device {0}")]
    NotForUs(u32),
    /// A bundle was rejected.
    #[error("bundle of {0} rejected: {1}")]
    BadBundle(String, String),
    /// A device presented another identity key than the one on record.
    #[error("device {0} changed its identity key")]
    IdentityMismatch(String),
    /// OMEMO 2: the decrypted SCE envelope is malformed or names another sender.
    #[error("invalid SCE envelope: {0}")]
    Envelope(String),
    /// The request itself is wrong (own JID as a peer, empty plaintext, ...).
    #[error("{0}")]
    BadRequest(String),
}

/// What decrypting an `<encrypted/>` element gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The plaintext (OMEMO 2: the body of the SCE envelope); `None` for an empty message
    /// (key transport, heartbeat).
    pub plaintext: Option<Vec<u8>>,
    /// The sending device.
    pub sender_device: u32,
    /// The message was a key exchange (PreKey message): a one-time prekey was used, so the
    /// caller should republish the bundle.
    pub key_exchange: bool,
    /// The caller should answer with an empty message to this device (after a key exchange,
    /// so the sender stops sending key exchanges; or as an OMEMO 2 heartbeat).
    pub send_empty: bool,
}
