//! OMEMO 0.3 (`eu.siacs.conversations.axolotl`): libsignal v3 sessions, AES-128-GCM payloads.

use rand_core::CryptoRngCore;

use super::{Decrypted, DeviceError, Directory, PREKEY_MIN, PREKEY_TARGET};
use crate::cipher::{SessionBuilder, SessionCipher};
use crate::error::SignalError;
use crate::keys::PublicKey;
use crate::message::CiphertextMessage;
use crate::omemo::payload;
use crate::omemo::xml::v03::{BundleV03, EncryptedV03, KeyV03, PreKeyV03};
use crate::prekeys::{self, SignedPreKeyRecord};
use crate::store::{Address, ProtocolStore};
use crate::x3dh::PreKeyBundle;

/// An OMEMO 0.3 (`eu.siacs.conversations.axolotl`) device over a [`ProtocolStore`].
pub struct DeviceV03<S: ProtocolStore> {
    jid: String,
    device_id: u32,
    store: S,
    peers: Directory<BundleV03>,
}

impl<S: ProtocolStore> DeviceV03<S> {
    /// Opens the device, creating its signed prekey and one-time prekeys if the store has none.
    pub fn new(
        jid: impl Into<String>,
        device_id: u32,
        mut store: S,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, DeviceError> {
        if store.list_signed_pre_keys()?.is_empty() {
            let identity = store.identity_key_pair()?;
            store.store_signed_pre_key(&SignedPreKeyRecord::generate(&identity, 1, 0, rng))?;
        }
        prekeys::replenish(&mut store, PREKEY_MIN, PREKEY_TARGET, rng)?;
        Ok(DeviceV03 {
            jid: jid.into(),
            device_id,
            store,
            peers: Directory::default(),
        })
    }

    pub fn jid(&self) -> &str {
        &self.jid
    }

    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The bundle to publish: identity, the newest signed prekey, every one-time prekey.
    pub fn bundle(&self) -> Result<BundleV03, DeviceError> {
        let identity = self.store.identity_key_pair()?;
        let spk = self
            .store
            .list_signed_pre_keys()?
            .into_iter()
            .max_by_key(|s| (s.timestamp, s.id))
            .ok_or_else(|| DeviceError::BadRequest("no signed prekey".into()))?;
        let mut ids = self.store.pre_key_ids()?;
        ids.sort_unstable();
        let mut pre_keys = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = self.store.load_pre_key(id)? {
                pre_keys.push(PreKeyV03 {
                    id,
                    key: p.key_pair.public.serialize(),
                });
            }
        }
        Ok(BundleV03 {
            signed_pre_key_id: spk.id,
            signed_pre_key: spk.key_pair.public.serialize(),
            signed_pre_key_signature: spk.signature,
            identity_key: identity.public_key().serialize(),
            pre_keys,
        })
    }

    /// Records the device list of an account (replacing what was known).
    pub fn set_device_list(&mut self, jid: &str, devices: impl IntoIterator<Item = u32>) {
        self.peers.set_device_list(jid, devices);
    }

    /// The known devices of an account.
    pub fn devices_of(&self, jid: &str) -> Vec<u32> {
        self.peers.devices_of(jid)
    }

    /// Records a device's bundle (checking its signature) and adds the device to the list.
    pub fn add_bundle(
        &mut self,
        jid: &str,
        device_id: u32,
        bundle: BundleV03,
    ) -> Result<(), DeviceError> {
        if jid == self.jid && device_id == self.device_id {
            return Err(DeviceError::BadRequest("that is this device".into()));
        }
        to_prekey_bundle(device_id, &bundle, None)
            .and_then(|b| b.verify_signature().map_err(DeviceError::from))
            .map_err(|e| DeviceError::BadBundle(format!("{jid}/{device_id}"), e.to_string()))?;
        self.peers.add_bundle(jid, device_id, bundle);
        Ok(())
    }

    /// Forgets the sessions with every device of `jid`; the next message builds new ones from
    /// the stored bundles. Returns how many were dropped.
    pub fn reset_sessions(&mut self, jid: &str) -> Result<usize, DeviceError> {
        let ids = self.store.sub_device_sessions(jid)?;
        for id in &ids {
            self.store.delete_session(&Address::new(jid, *id))?;
        }
        Ok(ids.len())
    }

    /// Builds a session with `address` from the stored bundle, with a randomly chosen
    /// one-time prekey.
    fn build_session(
        &mut self,
        address: &Address,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), DeviceError> {
        let bundle = self
            .peers
            .bundle(address)
            .ok_or_else(|| DeviceError::NoDevices(address.to_string()))?;
        let pick = if bundle.pre_keys.is_empty() {
            None
        } else {
            Some((rng.next_u32() as usize) % bundle.pre_keys.len())
        };
        let pb = to_prekey_bundle(address.device_id, bundle, pick)?;
        SessionBuilder::process_prekey_bundle(&mut self.store, address, &pb, rng)?;
        Ok(())
    }

    /// Encrypts for one device on its session, building the session first if there is none
    /// (one record load in the common case).
    fn encrypt_for(
        &mut self,
        address: &Address,
        key_material: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<KeyV03, DeviceError> {
        let message = match SessionCipher::encrypt(&mut self.store, address, key_material, rng) {
            Err(SignalError::NoSession) => {
                self.build_session(address, rng)?;
                SessionCipher::encrypt(&mut self.store, address, key_material, rng)?
            }
            other => other?,
        };
        Ok(KeyV03 {
            rid: address.device_id,
            prekey: matches!(message, CiphertextMessage::PreKey(_)),
            data: message.serialize().to_vec(),
        })
    }

    /// Encrypts `key_material` for every recipient device; devices without a usable session
    /// or bundle are skipped, but at least one must work.
    fn encrypt_keys(
        &mut self,
        jid: &str,
        key_material: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<KeyV03>, DeviceError> {
        let mut keys = Vec::new();
        let mut last_error = None;
        for (target, ids) in self.peers.recipients(&self.jid, self.device_id, jid) {
            for id in ids {
                match self.encrypt_for(&Address::new(target.clone(), id), key_material, rng) {
                    Ok(key) => keys.push(key),
                    Err(e) => last_error = Some(e),
                }
            }
        }
        if keys.is_empty() {
            return Err(last_error.unwrap_or_else(|| DeviceError::NoDevices(jid.to_owned())));
        }
        Ok(keys)
    }

    /// Encrypts a message body for `jid`'s devices (and this account's other devices).
    pub fn encrypt(
        &mut self,
        jid: &str,
        plaintext: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<EncryptedV03, DeviceError> {
        if plaintext.is_empty() {
            return Err(DeviceError::BadRequest("empty plaintext".into()));
        }
        let (key_material, iv, payload) = payload::encrypt_v03(plaintext, rng);
        let keys = self.encrypt_keys(jid, &key_material, rng)?;
        Ok(EncryptedV03 {
            sid: self.device_id,
            keys,
            iv: iv.to_vec(),
            payload: Some(payload),
        })
    }

    /// An empty message (KeyTransportElement) for one device: completes a session after a key
    /// exchange, or moves the ratchet forward (heartbeat).
    pub fn empty_message(
        &mut self,
        jid: &str,
        device_id: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<EncryptedV03, DeviceError> {
        let (key, iv) = payload::key_transport_v03(rng);
        let key = self.encrypt_for(&Address::new(jid, device_id), &key, rng)?;
        Ok(EncryptedV03 {
            sid: self.device_id,
            keys: vec![key],
            iv: iv.to_vec(),
            payload: None,
        })
    }

    /// Decrypts an element from `jid`. A failure changes no session state.
    pub fn decrypt(
        &mut self,
        jid: &str,
        element: &EncryptedV03,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Decrypted, DeviceError> {
        let key = element
            .key_for(self.device_id)
            .ok_or(DeviceError::NotForUs(self.device_id))?;
        let address = Address::new(jid, element.sid);
        // Snapshot what a successful key decryption changes, to put it back if the payload
        // then fails: a failed decryption must leave no trace.
        let saved_record = self.store.load_session(&address)?;
        let saved_pre_key = match key.prekey {
            true => crate::message::PreKeySignalMessage::deserialize(&key.data)?
                .pre_key_id()
                .map(|id| self.store.load_pre_key(id))
                .transpose()?
                .flatten(),
            false => None,
        };
        let key_material = if key.prekey {
            SessionCipher::decrypt_prekey_message(&mut self.store, &address, &key.data, rng)?
        } else {
            SessionCipher::decrypt_signal_message(&mut self.store, &address, &key.data, rng)?
        };
        let plaintext = match &element.payload {
            Some(p) => payload::decrypt_v03(&key_material, &element.iv, p).map(Some),
            None => payload::key_transport_key_v03(&key_material).map(|_| None),
        };
        let plaintext = match plaintext {
            Ok(p) => p,
            Err(e) => {
                match saved_record {
                    Some(r) => self.store.store_session(&address, &r)?,
                    None => self.store.delete_session(&address)?,
                }
                if let Some(pk) = saved_pre_key {
                    self.store.store_pre_key(&pk)?;
                }
                return Err(e.into());
            }
        };
        if key.prekey {
            // The used one-time prekey is gone: top the pool up for the next bundle.
            prekeys::replenish(&mut self.store, PREKEY_MIN, PREKEY_TARGET, rng)?;
        }
        self.peers.add_device(jid, element.sid);
        Ok(Decrypted {
            plaintext,
            sender_device: element.sid,
            key_exchange: key.prekey,
            send_empty: key.prekey,
        })
    }
}

/// The session layer's view of a published bundle, with the one-time prekey at `pick`.
fn to_prekey_bundle(
    device_id: u32,
    b: &BundleV03,
    pick: Option<usize>,
) -> Result<PreKeyBundle, DeviceError> {
    let pre_key = match pick.and_then(|i| b.pre_keys.get(i)) {
        Some(p) => Some((p.id, PublicKey::deserialize(&p.key)?)),
        None => None,
    };
    Ok(PreKeyBundle {
        registration_id: 0,
        device_id,
        pre_key,
        signed_pre_key_id: b.signed_pre_key_id,
        signed_pre_key: PublicKey::deserialize(&b.signed_pre_key)?,
        signed_pre_key_signature: b.signed_pre_key_signature,
        identity_key: PublicKey::deserialize(&b.identity_key)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::InMemoryStore;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn device(jid: &str, id: u32, rng: &mut StdRng) -> DeviceV03<InMemoryStore> {
        DeviceV03::new(jid, id, InMemoryStore::generate(rng), rng).unwrap()
    }

    #[test]
    fn conversation_through_xml() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut alice = device("alice@a.example", 11, &mut rng);
        let mut bob = device("bob@b.example", 22, &mut rng);
        let bb = BundleV03::parse(&bob.bundle().unwrap().to_xml()).unwrap();
        alice.add_bundle("bob@b.example", 22, bb).unwrap();
        let ab = alice.bundle().unwrap();
        bob.add_bundle("alice@a.example", 11, ab).unwrap();

        let first = alice.encrypt("bob@b.example", b"hi bob", &mut rng).unwrap();
        assert!(first.keys[0].prekey);
        let wire = EncryptedV03::parse(&first.to_xml()).unwrap();
        let d = bob.decrypt("alice@a.example", &wire, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some(&b"hi bob"[..]));
        assert!(d.key_exchange);
        // The used prekey is gone from Bob's bundle.
        let used = crate::message::PreKeySignalMessage::deserialize(&first.keys[0].data)
            .unwrap()
            .pre_key_id()
            .unwrap();
        let now = bob.bundle().unwrap();
        assert_eq!(now.pre_keys.len(), PREKEY_TARGET - 1);
        assert!(now.pre_keys.iter().all(|p| p.id != used));
        // A duplicate is refused without harm.
        assert!(bob.decrypt("alice@a.example", &wire, &mut rng).is_err());
        let reply = bob
            .encrypt("alice@a.example", b"hi alice", &mut rng)
            .unwrap();
        assert!(
            !reply.keys[0].prekey,
            "Bob answers on the session Alice built"
        );
        let d = alice.decrypt("bob@b.example", &reply, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some(&b"hi alice"[..]));
        let next = alice.encrypt("bob@b.example", b"again", &mut rng).unwrap();
        assert!(
            !next.keys[0].prekey,
            "no key exchange after the first reply"
        );
        let empty = bob.empty_message("alice@a.example", 11, &mut rng).unwrap();
        assert_eq!(
            alice
                .decrypt("bob@b.example", &empty, &mut rng)
                .unwrap()
                .plaintext,
            None
        );
        assert!(matches!(
            bob.decrypt("alice@a.example", &first, &mut rng),
            Err(DeviceError::Signal(_))
        ));
        let d = bob.decrypt("alice@a.example", &next, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn a_bad_payload_leaves_no_trace() {
        let mut rng = StdRng::seed_from_u64(12);
        let mut alice = device("alice@a.example", 11, &mut rng);
        let mut bob = device("bob@b.example", 22, &mut rng);
        alice
            .add_bundle("bob@b.example", 22, bob.bundle().unwrap())
            .unwrap();
        let good = alice.encrypt("bob@b.example", b"hello", &mut rng).unwrap();
        let mut bad = good.clone();
        bad.payload.as_mut().unwrap()[0] ^= 1;
        assert!(bob.decrypt("alice@a.example", &bad, &mut rng).is_err());
        let d = bob.decrypt("alice@a.example", &good, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn bad_bundles_and_unknown_recipients() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut alice = device("alice@a.example", 11, &mut rng);
        let bob = device("bob@b.example", 22, &mut rng);
        let mut b = bob.bundle().unwrap();
        b.signed_pre_key_signature[0] ^= 1;
        assert!(matches!(
            alice.add_bundle("bob@b.example", 22, b),
            Err(DeviceError::BadBundle(..))
        ));
        assert!(matches!(
            alice.encrypt("carol@c.example", b"x", &mut rng),
            Err(DeviceError::NoDevices(_))
        ));
    }
}
