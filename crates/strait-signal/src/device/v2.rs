//! OMEMO 2 (`urn:xmpp:omemo:2`): OMEMO 2 sessions, SCE envelopes encrypted with AES-256-CBC +
//! HMAC (XEP-0384 v0.8+, XEP-0420).

use rand_core::CryptoRngCore;

use super::{Decrypted, DeviceError, Directory, PREKEY_TARGET};
use crate::keys::IdentityKeyPair;
use crate::omemo::payload;
use crate::omemo::sce::Envelope;
use crate::omemo::xml::v2::{BundleV2, EncryptedV2, KeyV2, KeysV2, PreKeyV2};
use crate::omemo2::session::EMPTY_MESSAGE_PLAINTEXT;
use crate::omemo2::store::{self as o2store, load_record, save_record};
use crate::omemo2::{Omemo2Bundle, Omemo2Store, Omemo2Trust};
use crate::store::Address;

/// An OMEMO 2 device over an [`Omemo2Store`], with the account's identity key pair.
pub struct DeviceV2<S: Omemo2Store> {
    jid: String,
    device_id: u32,
    identity: IdentityKeyPair,
    store: S,
    peers: Directory<Omemo2Bundle>,
}

impl<S: Omemo2Store> DeviceV2<S> {
    /// Opens the device, creating its signed prekey and one-time prekeys if the store has none.
    pub fn new(
        jid: impl Into<String>,
        device_id: u32,
        identity: IdentityKeyPair,
        mut store: S,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, DeviceError> {
        if store.omemo2_signed_prekeys()?.is_empty() {
            o2store::rotate_signed_prekey(&mut store, &identity, 0, rng)?;
        }
        o2store::replenish_prekeys(&mut store, PREKEY_TARGET, rng)?;
        Ok(DeviceV2 {
            jid: jid.into(),
            device_id,
            identity,
            store,
            peers: Directory::default(),
        })
    }

    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The bundle to publish (item `device_id` of `urn:xmpp:omemo:2:bundles`).
    pub fn bundle(&self) -> Result<BundleV2, DeviceError> {
        let b = o2store::own_bundle(&self.store, &self.identity, self.device_id)?;
        Ok(BundleV2 {
            spk_id: b.spk_id,
            spk: b.spk,
            spks: b.spks,
            ik: b.ik,
            pre_keys: b
                .prekeys
                .iter()
                .map(|(id, key)| PreKeyV2 { id: *id, key: *key })
                .collect(),
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
        bundle: &BundleV2,
    ) -> Result<(), DeviceError> {
        if jid == self.jid && device_id == self.device_id {
            return Err(DeviceError::BadRequest("that is this device".into()));
        }
        let b = Omemo2Bundle {
            device_id,
            ik: bundle.ik,
            spk_id: bundle.spk_id,
            spk: bundle.spk,
            spks: bundle.spks,
            prekeys: bundle.pre_keys.iter().map(|p| (p.id, p.key)).collect(),
        };
        b.verify_signature()
            .map_err(|e| DeviceError::BadBundle(format!("{jid}/{device_id}"), e.to_string()))?;
        self.peers.add_bundle(jid, device_id, b);
        Ok(())
    }

    /// Forgets the sessions with every device of `jid`; the next message builds new ones.
    pub fn reset_sessions(&mut self, jid: &str) -> Result<usize, DeviceError> {
        let ids = self.store.omemo2_session_devices(jid)?;
        for id in &ids {
            self.store.omemo2_delete_session(&Address::new(jid, *id))?;
        }
        Ok(ids.len())
    }

    /// Encrypts `dr_plaintext` for one device, building the session from its bundle if needed.
    fn encrypt_for(
        &mut self,
        address: &Address,
        dr_plaintext: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<KeyV2, DeviceError> {
        let mut record = load_record(&self.store, address)?;
        if record.current().is_none() {
            let bundle = self
                .peers
                .bundle(address)
                .cloned()
                .ok_or_else(|| DeviceError::NoDevices(address.to_string()))?;
            self.check_identity(address, &bundle.ik)?;
            record.initiate(&self.identity, &bundle, rng)?;
        }
        let element = record.encrypt(dr_plaintext)?;
        save_record(&mut self.store, address, &record)?;
        Ok(KeyV2 {
            rid: address.device_id,
            kex: element.is_key_exchange(),
            data: element.bytes().to_vec(),
        })
    }

    /// Trust on first use: records a device's identity, refuses a different one later.
    fn check_identity(&mut self, address: &Address, ik: &[u8; 32]) -> Result<(), DeviceError> {
        match self.store.omemo2_identity(address)? {
            Some((known, _)) if &known != ik => {
                Err(DeviceError::IdentityMismatch(address.to_string()))
            }
            Some(_) => Ok(()),
            None => Ok(self
                .store
                .omemo2_store_identity(address, ik, Omemo2Trust::Undecided)?),
        }
    }

    /// Encrypts `dr_plaintext` for every known device of `jid` and this account's other
    /// devices; devices that fail are skipped, but one must work.
    fn encrypt_all(
        &mut self,
        jid: &str,
        dr_plaintext: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<KeysV2>, DeviceError> {
        let mut groups = Vec::new();
        let mut last_error = None;
        for (target, ids) in self.peers.recipients(&self.jid, self.device_id, jid) {
            let mut keys = Vec::new();
            for id in ids {
                match self.encrypt_for(&Address::new(target.clone(), id), dr_plaintext, rng) {
                    Ok(k) => keys.push(k),
                    Err(e) => last_error = Some(e),
                }
            }
            if !keys.is_empty() {
                groups.push(KeysV2 { jid: target, keys });
            }
        }
        if groups.iter().all(|g| g.jid != jid) {
            return Err(last_error.unwrap_or_else(|| DeviceError::NoDevices(jid.to_owned())));
        }
        Ok(groups)
    }

    /// Encrypts a message body for `jid`: the body goes into a XEP-0420 envelope (with
    /// `<rpad/>` and `<from/>`), which is encrypted as the payload.
    pub fn encrypt(
        &mut self,
        jid: &str,
        body: &str,
        rng: &mut impl CryptoRngCore,
    ) -> Result<EncryptedV2, DeviceError> {
        if body.is_empty() {
            return Err(DeviceError::BadRequest("empty body".into()));
        }
        let envelope = Envelope::with_body(body, &self.jid, None, rng).to_bytes();
        let (key_material, payload) = payload::encrypt_v2(&envelope, rng);
        let recipients = self.encrypt_all(jid, &key_material, rng)?;
        Ok(EncryptedV2 {
            sid: self.device_id,
            recipients,
            payload: Some(payload),
        })
    }

    /// An empty message (32 zero bytes, no payload) for one device: answers a key exchange
    /// or serves as a heartbeat.
    pub fn empty_message(
        &mut self,
        jid: &str,
        device_id: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<EncryptedV2, DeviceError> {
        let key = self.encrypt_for(&Address::new(jid, device_id), &EMPTY_MESSAGE_PLAINTEXT, rng)?;
        Ok(EncryptedV2 {
            sid: self.device_id,
            recipients: vec![KeysV2 {
                jid: jid.to_owned(),
                keys: vec![key],
            }],
            payload: None,
        })
    }

    /// Decrypts an element from `jid`. The session is stored only once the payload and its
    /// envelope have been checked, so a failure changes no session state.
    pub fn decrypt(
        &mut self,
        jid: &str,
        element: &EncryptedV2,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Decrypted, DeviceError> {
        let key = element
            .key_for(&self.jid, self.device_id)
            .ok_or(DeviceError::NotForUs(self.device_id))?;
        let address = Address::new(jid, element.sid);
        let mut record = load_record(&self.store, &address)?;
        // The used one-time prekey is removed only once everything below succeeded.
        let mut deferred = DeferredRemoval {
            inner: &mut self.store,
            removed: Vec::new(),
        };
        let d = if key.kex {
            record.decrypt_key_exchange(&self.identity, &mut deferred, &key.data, rng)?
        } else {
            record.decrypt_message(&key.data, rng)?
        };
        let removed = deferred.removed;
        let plaintext = if d.is_empty_message() {
            None
        } else {
            let payload = element
                .payload
                .as_ref()
                .ok_or_else(|| DeviceError::Envelope("key material without a payload".into()))?;
            let envelope = payload::decrypt_v2(&d.plaintext, payload)?;
            let envelope =
                Envelope::parse(&envelope).map_err(|e| DeviceError::Envelope(e.to_string()))?;
            // XEP-0420 leaves the affix's JID bare or full (slixmpp-omemo's users write the
            // full one); what must match is the account.
            if let Some(from) = envelope.from.as_deref()
                && !crate::omemo::sce::bare_of(from).eq_ignore_ascii_case(jid)
            {
                return Err(DeviceError::Envelope(format!(
                    "sent by {jid} but the envelope says {from}"
                )));
            }
            let body = envelope
                .body()
                .ok_or_else(|| DeviceError::Envelope("no <body/> in the envelope".into()))?;
            Some(body.into_bytes())
        };
        self.check_identity(&address, &d.their_identity)?;
        save_record(&mut self.store, &address, &record)?;
        for id in removed {
            self.store.omemo2_remove_prekey(id)?;
        }
        if key.kex {
            o2store::replenish_prekeys(&mut self.store, PREKEY_TARGET, rng)?;
        }
        self.peers.add_device(jid, element.sid);
        Ok(Decrypted {
            plaintext,
            sender_device: element.sid,
            key_exchange: key.kex,
            send_empty: d.send_heartbeat,
        })
    }
}

/// An [`Omemo2Store`] view that holds back prekey removals, so that a key exchange whose
/// payload or envelope turns out bad does not use up the prekey.
struct DeferredRemoval<'a, S: Omemo2Store> {
    inner: &'a mut S,
    removed: Vec<u32>,
}

impl<S: Omemo2Store> Omemo2Store for DeferredRemoval<'_, S> {
    fn omemo2_signed_prekey(
        &self,
        id: u32,
    ) -> crate::error::Result<Option<crate::omemo2::Omemo2SignedPreKey>> {
        self.inner.omemo2_signed_prekey(id)
    }
    fn omemo2_store_signed_prekey(
        &mut self,
        spk: &crate::omemo2::Omemo2SignedPreKey,
    ) -> crate::error::Result<()> {
        self.inner.omemo2_store_signed_prekey(spk)
    }
    fn omemo2_remove_signed_prekey(&mut self, id: u32) -> crate::error::Result<()> {
        self.inner.omemo2_remove_signed_prekey(id)
    }
    fn omemo2_signed_prekeys(
        &self,
    ) -> crate::error::Result<Vec<crate::omemo2::Omemo2SignedPreKey>> {
        self.inner.omemo2_signed_prekeys()
    }
    fn omemo2_prekey(&self, id: u32) -> crate::error::Result<Option<crate::prekeys::PreKeyRecord>> {
        if self.removed.contains(&id) {
            return Ok(None);
        }
        self.inner.omemo2_prekey(id)
    }
    fn omemo2_store_prekey(
        &mut self,
        prekey: &crate::prekeys::PreKeyRecord,
    ) -> crate::error::Result<()> {
        self.inner.omemo2_store_prekey(prekey)
    }
    fn omemo2_remove_prekey(&mut self, id: u32) -> crate::error::Result<()> {
        self.removed.push(id);
        Ok(())
    }
    fn omemo2_prekey_ids(&self) -> crate::error::Result<Vec<u32>> {
        let ids = self.inner.omemo2_prekey_ids()?;
        Ok(ids
            .into_iter()
            .filter(|i| !self.removed.contains(i))
            .collect())
    }
    fn omemo2_last_prekey_id(&self) -> crate::error::Result<u32> {
        self.inner.omemo2_last_prekey_id()
    }
    fn omemo2_set_last_prekey_id(&mut self, id: u32) -> crate::error::Result<()> {
        self.inner.omemo2_set_last_prekey_id(id)
    }
    fn omemo2_load_session(&self, address: &Address) -> crate::error::Result<Option<Vec<u8>>> {
        self.inner.omemo2_load_session(address)
    }
    fn omemo2_store_session(
        &mut self,
        address: &Address,
        record: &[u8],
    ) -> crate::error::Result<()> {
        self.inner.omemo2_store_session(address, record)
    }
    fn omemo2_delete_session(&mut self, address: &Address) -> crate::error::Result<()> {
        self.inner.omemo2_delete_session(address)
    }
    fn omemo2_session_devices(&self, bare_jid: &str) -> crate::error::Result<Vec<u32>> {
        self.inner.omemo2_session_devices(bare_jid)
    }
    fn omemo2_identity(
        &self,
        address: &Address,
    ) -> crate::error::Result<Option<([u8; 32], Omemo2Trust)>> {
        self.inner.omemo2_identity(address)
    }
    fn omemo2_store_identity(
        &mut self,
        address: &Address,
        identity: &[u8; 32],
        trust: Omemo2Trust,
    ) -> crate::error::Result<()> {
        self.inner.omemo2_store_identity(address, identity, trust)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::omemo2::InMemoryOmemo2Store;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn device(jid: &str, id: u32, rng: &mut StdRng) -> DeviceV2<InMemoryOmemo2Store> {
        let identity = IdentityKeyPair::generate(rng);
        DeviceV2::new(jid, id, identity, InMemoryOmemo2Store::new(), rng).unwrap()
    }

    #[test]
    fn conversation_through_xml() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut alice = device("alice@a.example", 11, &mut rng);
        let mut bob = device("bob@b.example", 22, &mut rng);
        let bb = BundleV2::parse(&bob.bundle().unwrap().to_xml()).unwrap();
        alice.add_bundle("bob@b.example", 22, &bb).unwrap();
        bob.add_bundle("alice@a.example", 11, &alice.bundle().unwrap())
            .unwrap();

        let first = alice
            .encrypt("bob@b.example", "hi <bob> & co", &mut rng)
            .unwrap();
        let wire = EncryptedV2::parse(&first.to_xml()).unwrap();
        assert!(wire.key_for("bob@b.example", 22).unwrap().kex);
        let d = bob.decrypt("alice@a.example", &wire, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some("hi <bob> & co".as_bytes()));
        assert!(d.key_exchange && d.send_empty);
        assert!(
            bob.decrypt("alice@a.example", &wire, &mut rng).is_err(),
            "duplicate"
        );
        let empty = bob.empty_message("alice@a.example", 11, &mut rng).unwrap();
        let d = alice.decrypt("bob@b.example", &empty, &mut rng).unwrap();
        assert_eq!(d.plaintext, None);
        let next = alice.encrypt("bob@b.example", "again", &mut rng).unwrap();
        assert!(
            !next.key_for("bob@b.example", 22).unwrap().kex,
            "answered: no more key exchanges"
        );
        let d = bob.decrypt("alice@a.example", &next, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn forged_envelope_sender_is_refused_without_state_change() {
        let mut rng = StdRng::seed_from_u64(10);
        let mut alice = device("alice@a.example", 11, &mut rng);
        let mut bob = device("bob@b.example", 22, &mut rng);
        alice
            .add_bundle("bob@b.example", 22, &bob.bundle().unwrap())
            .unwrap();
        let m = alice.encrypt("bob@b.example", "hello", &mut rng).unwrap();
        // Delivered as if from mallory: the envelope names alice.
        let err = bob.decrypt("mallory@m.example", &m, &mut rng).unwrap_err();
        assert!(matches!(err, DeviceError::Envelope(_)), "{err}");
        // The real sender's message still decrypts (nothing was committed).
        let d = bob.decrypt("alice@a.example", &m, &mut rng).unwrap();
        assert_eq!(d.plaintext.as_deref(), Some(&b"hello"[..]));
    }
}
