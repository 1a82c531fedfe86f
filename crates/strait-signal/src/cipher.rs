//! Session establishment and message encryption against a [`ProtocolStore`].
//!
//! * [`SessionBuilder::process_prekey_bundle`] — X3DH as initiator; installs a new current
//!   session whose outgoing messages are PreKey messages until the peer answers.
//! * [`SessionCipher::encrypt`] — encrypts on the current session.
//! * [`SessionCipher::decrypt_prekey_message`] — X3DH as responder (or reuse of the session
//!   with the same base key, for a retransmitted PreKey message), then decryption; the
//!   one-time prekey is removed only after success.
//! * [`SessionCipher::decrypt_signal_message`] — trial decryption over the current and then
//!   the archived sessions; the one that works is promoted.
//!
//! Every decryption runs on copies; the store is written only after success.

use rand_core::CryptoRngCore;

use crate::error::{Result, SignalError};
use crate::keys::KeyPair;
use crate::message::{CiphertextMessage, PreKeySignalMessage, SignalMessage};
use crate::session::{PendingPreKey, SessionIndex, SessionRecord, SessionState};
use crate::store::{Address, Direction, ProtocolStore};
use crate::x3dh::{self, PreKeyBundle};

/// Builds sessions from key bundles.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionBuilder;

impl SessionBuilder {
    /// Verifies `bundle`, runs X3DH as initiator and installs the new session as current
    /// (archiving any previous one). Saves the peer's identity.
    pub fn process_prekey_bundle<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        bundle: &PreKeyBundle,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        if !store.is_trusted_identity(remote, &bundle.identity_key, Direction::Sending)? {
            return Err(SignalError::UntrustedIdentity);
        }
        bundle.verify_signature()?;
        let identity = store.identity_key_pair()?;
        let base_key = KeyPair::generate(rng);
        let one_time = bundle.pre_key.as_ref().map(|(_, k)| k);
        let secrets = x3dh::initiator_secrets(
            &identity,
            &base_key,
            &bundle.identity_key,
            &bundle.signed_pre_key,
            one_time,
        )?;
        let ratchet = x3dh::initiator_ratchet(&secrets, &bundle.signed_pre_key, rng)?;
        let state = SessionState::new(
            *identity.public_key(),
            bundle.identity_key,
            ratchet,
            base_key.public,
            store.local_registration_id()?,
            bundle.registration_id,
            Some(PendingPreKey {
                pre_key_id: bundle.pre_key.map(|(id, _)| id),
                signed_pre_key_id: bundle.signed_pre_key_id,
                base_key: base_key.public,
            }),
        );
        let mut record = store.load_session(remote)?.unwrap_or_default();
        record.promote_state(state);
        store.store_session(remote, &record)?;
        store.save_identity(remote, &bundle.identity_key)?;
        Ok(())
    }
}

/// Encryption and decryption against a store.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionCipher;

impl SessionCipher {
    /// Encrypts on the current session with `remote`: a PreKey message (type 3) until a message
    /// from the peer has been decrypted on this session, a Whisper message (type 2) afterwards.
    pub fn encrypt<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        plaintext: &[u8],
        _rng: &mut impl CryptoRngCore,
    ) -> Result<CiphertextMessage> {
        let mut record = store.load_session(remote)?.ok_or(SignalError::NoSession)?;
        let state = record.current_mut().ok_or(SignalError::NoSession)?;
        if !store.is_trusted_identity(remote, state.remote_identity(), Direction::Sending)? {
            return Err(SignalError::UntrustedIdentity);
        }
        let message = state.encrypt(plaintext)?;
        store.store_session(remote, &record)?;
        Ok(message)
    }

    /// Decrypts a serialized PreKey message from `remote`.
    pub fn decrypt_prekey_message<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        let message = PreKeySignalMessage::deserialize(bytes)?;
        Self::decrypt_prekey(store, remote, &message, rng)
    }

    /// Decrypts a parsed PreKey message from `remote`.
    pub fn decrypt_prekey<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        message: &PreKeySignalMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        if !store.is_trusted_identity(remote, message.identity_key(), Direction::Receiving)? {
            return Err(SignalError::UntrustedIdentity);
        }
        let mut record = store.load_session(remote)?.unwrap_or_default();

        // A retransmitted PreKey message: reuse the session with the same base key.
        if let Some(index) = record.find_by_base_key(message.message_version(), message.base_key())
        {
            let state = record.get_mut(index).expect("index from find");
            if state.remote_identity() != message.identity_key() {
                return Err(SignalError::invalid_message(
                    "PreKey message identity differs from the matching session's",
                ));
            }
            let plaintext = state.decrypt(message.message(), rng)?;
            record.promote(index);
            store.store_session(remote, &record)?;
            store.save_identity(remote, message.identity_key())?;
            return Ok(plaintext);
        }

        let signed = store
            .load_signed_pre_key(message.signed_pre_key_id())?
            .ok_or(SignalError::MissingSignedPreKey(
                message.signed_pre_key_id(),
            ))?;
        let one_time = match message.pre_key_id() {
            Some(id) => Some(
                store
                    .load_pre_key(id)?
                    .ok_or(SignalError::MissingPreKey(id))?,
            ),
            None => None,
        };
        let identity = store.identity_key_pair()?;
        let secrets = x3dh::responder_secrets(
            &identity,
            &signed.key_pair,
            one_time.as_ref().map(|r| &r.key_pair),
            message.identity_key(),
            message.base_key(),
        )?;
        let ratchet = x3dh::responder_ratchet(&secrets, &signed.key_pair);
        let mut state = SessionState::new(
            *identity.public_key(),
            *message.identity_key(),
            ratchet,
            *message.base_key(),
            store.local_registration_id()?,
            message.registration_id(),
            None,
        );
        let plaintext = state.decrypt(message.message(), rng)?;
        record.promote_state(state);
        store.store_session(remote, &record)?;
        if let Some(id) = message.pre_key_id() {
            store.remove_pre_key(id)?;
        }
        store.save_identity(remote, message.identity_key())?;
        Ok(plaintext)
    }

    /// Decrypts a serialized Whisper message from `remote`.
    pub fn decrypt_signal_message<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        let message = SignalMessage::deserialize(bytes)?;
        Self::decrypt_signal(store, remote, &message, rng)
    }

    /// Decrypts a parsed Whisper message from `remote` by trial over the current and the
    /// archived sessions (newest first). A [`SignalError::DuplicateMessage`] stops the trial;
    /// otherwise, if no session decrypts, the current session's error is returned.
    pub fn decrypt_signal<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        message: &SignalMessage,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        let mut record = store.load_session(remote)?.ok_or(SignalError::NoSession)?;
        let (index, plaintext) = trial_decrypt(&mut record, message, rng)?;
        let remote_identity = *record
            .get(index)
            .expect("index from trial")
            .remote_identity();
        if !store.is_trusted_identity(remote, &remote_identity, Direction::Receiving)? {
            return Err(SignalError::UntrustedIdentity);
        }
        record.promote(index);
        store.store_session(remote, &record)?;
        store.save_identity(remote, &remote_identity)?;
        Ok(plaintext)
    }

    /// Decrypts either kind of message, given libsignal's type code (3 PreKey, 2 Whisper).
    pub fn decrypt<S: ProtocolStore + ?Sized>(
        store: &mut S,
        remote: &Address,
        message_type: u8,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>> {
        match message_type {
            crate::message::PREKEY_TYPE => Self::decrypt_prekey_message(store, remote, bytes, rng),
            crate::message::WHISPER_TYPE => Self::decrypt_signal_message(store, remote, bytes, rng),
            other => Err(SignalError::invalid_message(format!(
                "unknown message type {other}"
            ))),
        }
    }
}

/// Tries the current session, then the archived ones; the winner's state is updated in
/// `record` (not promoted). Failed attempts leave their sessions untouched.
pub fn trial_decrypt(
    record: &mut SessionRecord,
    message: &SignalMessage,
    rng: &mut impl CryptoRngCore,
) -> Result<(SessionIndex, Vec<u8>)> {
    let mut first_error = None;
    let indices = std::iter::once(SessionIndex::Current)
        .chain((0..record.archived_len()).map(SessionIndex::Archived));
    for index in indices {
        let Some(state) = record.get_mut(index) else {
            continue;
        };
        match state.decrypt(message, rng) {
            Ok(plaintext) => return Ok((index, plaintext)),
            Err(e @ SignalError::DuplicateMessage { .. }) => return Err(e),
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    Err(first_error.unwrap_or(SignalError::NoSession))
}
