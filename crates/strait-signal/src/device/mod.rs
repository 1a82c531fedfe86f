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

use std::collections::{BTreeMap, BTreeSet};

use crate::error::SignalError;
use crate::omemo::OmemoError;
use crate::store::Address;

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

/// What a device knows of accounts' devices (from their PEP device lists) and of the bundles it
/// fetched, for one namespace.
#[derive(Debug, Clone)]
struct Directory<B> {
    devices: BTreeMap<String, BTreeSet<u32>>,
    bundles: BTreeMap<Address, B>,
}

impl<B> Default for Directory<B> {
    fn default() -> Self {
        Directory {
            devices: BTreeMap::new(),
            bundles: BTreeMap::new(),
        }
    }
}

impl<B> Directory<B> {
    /// Replaces the device list of an account.
    fn set_device_list(&mut self, jid: &str, devices: impl IntoIterator<Item = u32>) {
        self.devices
            .insert(jid.to_owned(), devices.into_iter().collect());
    }

    /// Adds one device to an account's list.
    fn add_device(&mut self, jid: &str, device_id: u32) {
        self.devices
            .entry(jid.to_owned())
            .or_default()
            .insert(device_id);
    }

    fn devices_of(&self, jid: &str) -> Vec<u32> {
        self.devices
            .get(jid)
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records a device's bundle and lists the device.
    fn add_bundle(&mut self, jid: &str, device_id: u32, bundle: B) {
        self.add_device(jid, device_id);
        self.bundles.insert(Address::new(jid, device_id), bundle);
    }

    fn bundle(&self, address: &Address) -> Option<&B> {
        self.bundles.get(address)
    }

    /// The devices a message to `jid` goes to, grouped by account: every known device of
    /// `jid`, and this account's other devices (XEP-0384).
    fn recipients(&self, own_jid: &str, own_device: u32, jid: &str) -> Vec<(String, Vec<u32>)> {
        let mut out = vec![(jid.to_owned(), self.devices_of(jid))];
        if jid != own_jid {
            let own: Vec<u32> = self
                .devices_of(own_jid)
                .into_iter()
                .filter(|d| *d != own_device)
                .collect();
            out.push((own_jid.to_owned(), own));
        }
        out
    }
}
