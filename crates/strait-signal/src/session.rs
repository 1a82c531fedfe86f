//! libsignal v3 sessions and session records.
//!
//! A [`SessionState`] is one Double Ratchet ([`RatchetState`], profile
//! [`LIBSIGNAL_V3`]) plus the two identity keys, the registration ids, the X3DH base key that
//! identifies the session, and — on the initiator's side, until the first message from the
//! peer decrypts — the pending PreKey information with which every outgoing message is wrapped.
//!
//! A [`SessionRecord`] holds the current session and up to [`ARCHIVED_STATES_MAX_LENGTH`]
//! archived ones (newest first) for trial decryption ("Sesame").
//!
//! Record storage format (version 1): protobuf [`RecordStructure`]; see [`crate::proto`].

use std::collections::VecDeque;

use prost::Message as _;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::{Result, SignalError};
use crate::kdf::{aes256_cbc_decrypt, aes256_cbc_encrypt};
use crate::keys::PublicKey;
use crate::message::{CiphertextMessage, MESSAGE_VERSION, PreKeySignalMessage, SignalMessage};
use crate::proto::{PendingPreKeyStructure, RecordStructure, SessionStructure};
use crate::ratchet::{LIBSIGNAL_V3, RatchetState};

/// Archived sessions kept per record (libsignal, libsignal-protocol-java, wacore).
pub const ARCHIVED_STATES_MAX_LENGTH: usize = 40;

/// The X3DH parameters repeated in every outgoing message until the peer answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPreKey {
    /// The one-time prekey used, if any.
    pub pre_key_id: Option<u32>,
    /// The signed prekey used.
    pub signed_pre_key_id: u32,
    /// Our base key.
    pub base_key: PublicKey,
}

/// One session with one remote device.
#[derive(Clone, Debug)]
pub struct SessionState {
    version: u8,
    local_identity: PublicKey,
    remote_identity: PublicKey,
    ratchet: RatchetState,
    pending_pre_key: Option<PendingPreKey>,
    local_registration_id: u32,
    remote_registration_id: u32,
    base_key: PublicKey,
}

impl SessionState {
    /// Assembles a session from its parts.
    pub fn new(
        local_identity: PublicKey,
        remote_identity: PublicKey,
        ratchet: RatchetState,
        base_key: PublicKey,
        local_registration_id: u32,
        remote_registration_id: u32,
        pending_pre_key: Option<PendingPreKey>,
    ) -> Self {
        SessionState {
            version: MESSAGE_VERSION,
            local_identity,
            remote_identity,
            ratchet,
            pending_pre_key,
            local_registration_id,
            remote_registration_id,
            base_key,
        }
    }

    /// The message version (3).
    pub fn version(&self) -> u8 {
        self.version
    }
    /// Our identity key.
    pub fn local_identity(&self) -> &PublicKey {
        &self.local_identity
    }
    /// The peer's identity key.
    pub fn remote_identity(&self) -> &PublicKey {
        &self.remote_identity
    }
    /// The ratchet.
    pub fn ratchet(&self) -> &RatchetState {
        &self.ratchet
    }
    /// The initiator's X3DH base key, which identifies the session.
    pub fn base_key(&self) -> &PublicKey {
        &self.base_key
    }
    /// Our registration id.
    pub fn local_registration_id(&self) -> u32 {
        self.local_registration_id
    }
    /// The peer's registration id.
    pub fn remote_registration_id(&self) -> u32 {
        self.remote_registration_id
    }
    /// The pending PreKey information (outgoing messages are PreKey messages while set).
    pub fn pending_pre_key(&self) -> Option<&PendingPreKey> {
        self.pending_pre_key.as_ref()
    }
    /// Forgets the pending PreKey information.
    pub fn clear_pending_pre_key(&mut self) {
        self.pending_pre_key = None;
    }

    /// Encrypts one message, wrapping it as a PreKey message while the session is
    /// unacknowledged.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<CiphertextMessage> {
        let k = self.ratchet.next_sending_keys()?;
        let ciphertext = aes256_cbc_encrypt(&k.keys.cipher_key, &k.keys.iv, plaintext);
        let message = SignalMessage::new(
            &k.keys.mac_key,
            k.ratchet_key,
            k.counter,
            k.previous_counter,
            ciphertext,
            &self.local_identity,
            &self.remote_identity,
        );
        Ok(match &self.pending_pre_key {
            Some(p) => CiphertextMessage::PreKey(PreKeySignalMessage::new(
                self.local_registration_id,
                p.pre_key_id,
                p.signed_pre_key_id,
                p.base_key,
                self.local_identity,
                message,
            )),
            None => CiphertextMessage::Whisper(message),
        })
    }

    /// Decrypts one message. The state changes only if the message authenticates and decrypts
    /// (the ratchet works on a clone that is committed at the end); success also clears the
    /// pending PreKey information.
    pub fn decrypt(
        &mut self,
        message: &SignalMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        if message.message_version() != self.version {
            return Err(SignalError::UnsupportedVersion(message.message_version()));
        }
        let mut trial = self.ratchet.clone();
        let keys = trial.receiving_keys(
            message.ratchet_key(),
            message.counter(),
            message.previous_counter(),
            rng,
        )?;
        if !message.verify_mac(&self.remote_identity, &self.local_identity, &keys.mac_key) {
            return Err(SignalError::BadMac);
        }
        let plaintext = aes256_cbc_decrypt(&keys.cipher_key, &keys.iv, message.ciphertext())?;
        self.ratchet = trial;
        self.pending_pre_key = None;
        Ok(plaintext)
    }

    fn to_structure(&self) -> SessionStructure {
        SessionStructure {
            session_version: u32::from(self.version),
            local_identity: self.local_identity.serialize().to_vec(),
            remote_identity: self.remote_identity.serialize().to_vec(),
            ratchet: Some(self.ratchet.to_proto()),
            pending_pre_key: self
                .pending_pre_key
                .as_ref()
                .map(|p| PendingPreKeyStructure {
                    pre_key_id: p.pre_key_id,
                    signed_pre_key_id: p.signed_pre_key_id,
                    base_key: p.base_key.serialize().to_vec(),
                }),
            local_registration_id: self.local_registration_id,
            remote_registration_id: self.remote_registration_id,
            base_key: self.base_key.serialize().to_vec(),
        }
    }

    fn from_structure(s: &SessionStructure) -> Result<Self> {
        if s.session_version != u32::from(MESSAGE_VERSION) {
            return Err(SignalError::CorruptRecord(format!(
                "session version {}",
                s.session_version
            )));
        }
        let ratchet = s
            .ratchet
            .as_ref()
            .ok_or_else(|| SignalError::CorruptRecord("session without ratchet".into()))?;
        let pending_pre_key = match &s.pending_pre_key {
            Some(p) => Some(PendingPreKey {
                pre_key_id: p.pre_key_id,
                signed_pre_key_id: p.signed_pre_key_id,
                base_key: PublicKey::deserialize_exact(&p.base_key)?,
            }),
            None => None,
        };
        Ok(SessionState {
            version: MESSAGE_VERSION,
            local_identity: PublicKey::deserialize_exact(&s.local_identity)?,
            remote_identity: PublicKey::deserialize_exact(&s.remote_identity)?,
            ratchet: RatchetState::from_proto(LIBSIGNAL_V3, ratchet)?,
            pending_pre_key,
            local_registration_id: s.local_registration_id,
            remote_registration_id: s.remote_registration_id,
            base_key: PublicKey::deserialize_exact(&s.base_key)?,
        })
    }

    /// Serializes this session alone ([`SessionStructure`]).
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.to_structure().encode_to_vec())
    }

    /// Parses [`SessionState::serialize`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let s = SessionStructure::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("session: {e}")))?;
        Self::from_structure(&s)
    }
}

/// The sessions with one remote device: the current one and the archived ones.
#[derive(Clone, Debug, Default)]
pub struct SessionRecord {
    current: Option<SessionState>,
    previous: VecDeque<SessionState>,
}

/// Where a session sits in a [`SessionRecord`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionIndex {
    /// The current session.
    Current,
    /// The archived session at this position (0 = newest).
    Archived(usize),
}

impl SessionRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// A record holding one session.
    pub fn with_session(state: SessionState) -> Self {
        SessionRecord {
            current: Some(state),
            previous: VecDeque::new(),
        }
    }

    /// The current session.
    pub fn current(&self) -> Option<&SessionState> {
        self.current.as_ref()
    }

    /// The current session, mutably.
    pub fn current_mut(&mut self) -> Option<&mut SessionState> {
        self.current.as_mut()
    }

    /// Archived sessions, newest first.
    pub fn archived(&self) -> impl Iterator<Item = &SessionState> {
        self.previous.iter()
    }

    /// Number of archived sessions.
    pub fn archived_len(&self) -> usize {
        self.previous.len()
    }

    /// Whether the record has a current session.
    pub fn has_current(&self) -> bool {
        self.current.is_some()
    }

    /// The session at `index`.
    pub fn get(&self, index: SessionIndex) -> Option<&SessionState> {
        match index {
            SessionIndex::Current => self.current.as_ref(),
            SessionIndex::Archived(i) => self.previous.get(i),
        }
    }

    /// The session at `index`, mutably.
    pub fn get_mut(&mut self, index: SessionIndex) -> Option<&mut SessionState> {
        match index {
            SessionIndex::Current => self.current.as_mut(),
            SessionIndex::Archived(i) => self.previous.get_mut(i),
        }
    }

    /// Moves the current session to the archive (clearing its pending PreKey information).
    pub fn archive_current_state(&mut self) {
        if let Some(mut cur) = self.current.take() {
            cur.clear_pending_pre_key();
            self.previous.push_front(cur);
            self.previous.truncate(ARCHIVED_STATES_MAX_LENGTH);
        }
    }

    /// Installs a new current session, archiving the old one.
    pub fn promote_state(&mut self, state: SessionState) {
        self.archive_current_state();
        self.current = Some(state);
    }

    /// Makes the archived session at `i` current (archiving the current one).
    pub fn promote_archived(&mut self, i: usize) {
        if let Some(state) = self.previous.remove(i) {
            self.promote_state(state);
        }
    }

    /// Finds a session by message version and X3DH base key (current first, then archived).
    pub fn find_by_base_key(&self, version: u8, base_key: &PublicKey) -> Option<SessionIndex> {
        let matches = |s: &SessionState| s.version == version && s.base_key == *base_key;
        if self.current.as_ref().is_some_and(matches) {
            return Some(SessionIndex::Current);
        }
        self.previous
            .iter()
            .position(matches)
            .map(SessionIndex::Archived)
    }

    /// Makes the session at `index` current.
    pub fn promote(&mut self, index: SessionIndex) {
        if let SessionIndex::Archived(i) = index {
            self.promote_archived(i);
        }
    }

    /// Serializes the record ([`RecordStructure`], format version 1). Contains secrets.
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let r = RecordStructure {
            format_version: 1,
            current: self.current.as_ref().map(SessionState::to_structure),
            previous: self
                .previous
                .iter()
                .map(SessionState::to_structure)
                .collect(),
        };
        Zeroizing::new(r.encode_to_vec())
    }

    /// Parses [`SessionRecord::serialize`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let r = RecordStructure::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("session record: {e}")))?;
        if r.format_version != 1 {
            return Err(SignalError::CorruptRecord(format!(
                "session record format {}",
                r.format_version
            )));
        }
        let current = r
            .current
            .as_ref()
            .map(SessionState::from_structure)
            .transpose()?;
        let previous = r
            .previous
            .iter()
            .map(SessionState::from_structure)
            .collect::<Result<VecDeque<_>>>()?;
        Ok(SessionRecord { current, previous })
    }
}
