//! OMEMO 2 sessions: a Double Ratchet ([`crate::ratchet::OMEMO2`]) with the X3DH associated
//! data, message framing (`OMEMOMessage` / `OMEMOAuthenticatedMessage` / `OMEMOKeyExchange`)
//! and the session-management rules of XEP-0384 and python-twomemo / python-omemo.
//!
//! # Message crypto
//!
//! For each message the ratchet yields `cipher_key ‖ mac_key ‖ iv` (the 80-byte
//! `"OMEMO Message Key Material"` expansion). The Double Ratchet plaintext (48 bytes key ‖ hmac
//! from the payload layer, or 32 zero bytes for an empty message) is encrypted with
//! AES-256-CBC/PKCS#7, put into an `OMEMOMessage {n, pn, dh_pub, ciphertext}`, and
//! `mac = HMAC-SHA256(mac_key, AD ‖ OMEMOMessage bytes)[..16]` with `AD = IK_A ‖ IK_B`
//! (initiator first, in both directions). On receive the MAC is checked, in constant time, over
//! the `OMEMOMessage` bytes exactly as received, before anything is decrypted; the ratchet
//! works on a clone that is committed only once the message authenticated and decrypted.
//!
//! # Session rules
//!
//! * The initiator wraps every message in an `OMEMOKeyExchange` (same `ik`, `ek`, ids) until
//!   it has decrypted a message of the peer on that session ([`Omemo2KeyElement::KeyExchange`],
//!   `kex='true'` on the XML side).
//! * A received `OMEMOKeyExchange` whose `(ik, ek, spk_id, pk_id)` matches a session we built
//!   as responder is decrypted on that session; any other builds a new session which becomes
//!   the current one (the old one is archived); the one-time prekey is removed only after the
//!   embedded message decrypted.
//! * Plain messages are tried on the current session, then on archived ones (newest first).
//!   Archived sessions are never promoted: they only drain late messages.
//! * Heartbeat ([`Omemo2Decrypted::send_heartbeat`]): after every key exchange received, and
//!   when a message with `n ≥ 53` arrives on the newest receiving chain while we have sent
//!   nothing since that chain began.

use std::collections::VecDeque;

use prost::Message as _;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::proto::{OMEMOAuthenticatedMessage, OMEMOKeyExchange, OMEMOMessage};
use super::store::Omemo2Store;
use super::x3dh::{self, AD_LEN, Omemo2Bundle};
use crate::error::{Result, SignalError};
use crate::kdf::{aes256_cbc_decrypt, aes256_cbc_encrypt, hmac_sha256};
use crate::keys::{IdentityKeyPair, KeyPair, PublicKey};
use crate::ratchet::{OMEMO2, RatchetState};

/// Length of the truncated message MAC.
pub const MAC_LEN: usize = 16;
/// Archived sessions kept per device (libsignal parity).
pub const MAX_ARCHIVED_SESSIONS: usize = 40;
/// A message with `n` at least this on a chain we have not answered asks for a heartbeat.
pub const HEARTBEAT_THRESHOLD: u32 = 53;
/// The Double Ratchet plaintext of an empty OMEMO 2 message.
pub const EMPTY_MESSAGE_PLAINTEXT: [u8; 32] = [0; 32];
/// Storage format version of [`Omemo2SessionRecord::serialize`].
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// Which side of the X3DH we were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We built the session from the peer's bundle.
    Initiator,
    /// We built the session from the peer's `OMEMOKeyExchange`.
    Responder,
}

/// What identifies the key exchange that built a session (python-twomemo's
/// `builds_same_session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyExchangeId {
    /// The initiator's identity key (Ed25519).
    pub ik: [u8; 32],
    /// The initiator's ephemeral key (raw X25519).
    pub ek: [u8; 32],
    /// The responder's signed prekey id.
    pub spk_id: u32,
    /// The responder's one-time prekey id.
    pub pk_id: u32,
}

/// An encrypted key element for one recipient device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Omemo2KeyElement {
    /// A serialized `OMEMOKeyExchange` (`<key kex='true'>`).
    KeyExchange(Vec<u8>),
    /// A serialized `OMEMOAuthenticatedMessage`.
    Message(Vec<u8>),
}

impl Omemo2KeyElement {
    /// The bytes to base64-encode into `<key>`.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Omemo2KeyElement::KeyExchange(b) | Omemo2KeyElement::Message(b) => b,
        }
    }

    /// Whether the element is a key exchange (`kex='true'`).
    pub fn is_key_exchange(&self) -> bool {
        matches!(self, Omemo2KeyElement::KeyExchange(_))
    }
}

/// The result of a successful decryption.
#[derive(Debug)]
pub struct Omemo2Decrypted {
    /// The Double Ratchet plaintext (key ‖ hmac for the payload layer, or 32 zero bytes).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The sender's identity key (Ed25519) as bound into the session's AD. The caller checks
    /// it against the device's known identity and trust.
    pub their_identity: [u8; 32],
    /// The message came in an `OMEMOKeyExchange`.
    pub key_exchange: bool,
    /// A new session was built (and is now the current one).
    pub new_session: bool,
    /// The message was decrypted by an archived session.
    pub from_archived: bool,
    /// The caller should send an empty message (32 zero bytes) on the current session.
    pub send_heartbeat: bool,
}

impl Omemo2Decrypted {
    /// Whether this was an empty OMEMO message (no payload key).
    pub fn is_empty_message(&self) -> bool {
        self.plaintext.as_slice() == EMPTY_MESSAGE_PLAINTEXT
    }
}

/// One OMEMO 2 session with a remote device.
#[derive(Clone)]
pub struct Omemo2Session {
    ratchet: RatchetState,
    ad: [u8; AD_LEN],
    role: Role,
    kex: KeyExchangeId,
    /// Initiator: a message of the peer was decrypted on this session. Responder: always true.
    confirmed: bool,
}

impl core::fmt::Debug for Omemo2Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Omemo2Session")
            .field("role", &self.role)
            .field("confirmed", &self.confirmed)
            .field("spk_id", &self.kex.spk_id)
            .field("pk_id", &self.kex.pk_id)
            .field("ratchet", &self.ratchet)
            .finish_non_exhaustive()
    }
}

/// A parsed `OMEMOAuthenticatedMessage`.
struct Parsed {
    mac: [u8; MAC_LEN],
    /// The `OMEMOMessage` bytes as received (MAC input).
    message_bytes: Vec<u8>,
    n: u32,
    pn: u32,
    dh_pub: PublicKey,
    ciphertext: Vec<u8>,
}

fn bad(why: &str) -> SignalError {
    SignalError::invalid_message(format!("OMEMO 2: {why}"))
}

fn arr32(v: &[u8], what: &str) -> Result<[u8; 32]> {
    v.try_into()
        .map_err(|_| bad(&format!("{what} must be 32 bytes")))
}

impl Parsed {
    fn from_auth(auth: OMEMOAuthenticatedMessage) -> Result<Self> {
        let mac: [u8; MAC_LEN] = auth
            .mac
            .as_slice()
            .try_into()
            .map_err(|_| bad("mac must be 16 bytes"))?;
        let msg = OMEMOMessage::decode(auth.message.as_slice())
            .map_err(|e| bad(&format!("OMEMOMessage: {e}")))?;
        let dh_pub = PublicKey::from_raw(arr32(&msg.dh_pub, "dh_pub")?);
        let ciphertext = msg.ciphertext.ok_or_else(|| bad("missing ciphertext"))?;
        Ok(Parsed {
            mac,
            message_bytes: auth.message,
            n: msg.n,
            pn: msg.pn,
            dh_pub,
            ciphertext,
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let auth = OMEMOAuthenticatedMessage::decode(bytes)
            .map_err(|e| bad(&format!("OMEMOAuthenticatedMessage: {e}")))?;
        Self::from_auth(auth)
    }
}

/// Builds a session as initiator from a peer's bundle (X3DH, then the first DH ratchet step
/// with a fresh ratchet key). The first [`Omemo2Session::encrypt`] yields the
/// `OMEMOKeyExchange`.
pub fn initiate(
    identity: &IdentityKeyPair,
    bundle: &Omemo2Bundle,
    rng: &mut impl CryptoRngCore,
) -> Result<Omemo2Session> {
    let x = x3dh::initiate(identity, bundle, rng)?;
    Omemo2Session::from_x3dh(identity, x, KeyPair::generate(rng))
}

impl Omemo2Session {
    /// The initiator's session from an X3DH result and a chosen first ratchet key pair (for
    /// known-answer tests; [`initiate`] generates it).
    pub fn from_x3dh(
        identity: &IdentityKeyPair,
        x: x3dh::X3dhInitiated,
        ratchet_key: KeyPair,
    ) -> Result<Self> {
        let ratchet = RatchetState::new_initiator(OMEMO2, *x.sk, x.spk, None, ratchet_key)?;
        Ok(Omemo2Session {
            ratchet,
            ad: x.ad,
            role: Role::Initiator,
            kex: KeyExchangeId {
                ik: identity.ed25519_public(),
                ek: *x.ek.as_raw(),
                spk_id: x.spk_id,
                pk_id: x.pk_id,
            },
            confirmed: false,
        })
    }

    /// Our side of the X3DH.
    pub fn role(&self) -> Role {
        self.role
    }

    /// `IK_A ‖ IK_B`.
    pub fn associated_data(&self) -> &[u8; AD_LEN] {
        &self.ad
    }

    /// The remote identity key (Ed25519).
    pub fn their_identity(&self) -> [u8; 32] {
        let half = match self.role {
            Role::Initiator => &self.ad[32..],
            Role::Responder => &self.ad[..32],
        };
        half.try_into().expect("32-byte half")
    }

    /// The key exchange that built this session.
    pub fn key_exchange_id(&self) -> &KeyExchangeId {
        &self.kex
    }

    /// True while outgoing messages are wrapped in an `OMEMOKeyExchange` (initiator, nothing
    /// received from the peer yet).
    pub fn key_exchange_pending(&self) -> bool {
        self.role == Role::Initiator && !self.confirmed
    }

    /// The underlying ratchet.
    pub fn ratchet(&self) -> &RatchetState {
        &self.ratchet
    }

    /// Encrypts a Double Ratchet plaintext (48 bytes key ‖ hmac, or
    /// [`EMPTY_MESSAGE_PLAINTEXT`]). Fails with [`SignalError::NoSendingChain`] on a responder
    /// session that has not received yet (cannot happen for sessions built by this module,
    /// which decrypt the first message while building).
    pub fn encrypt(&mut self, dr_plaintext: &[u8]) -> Result<Omemo2KeyElement> {
        let k = self.ratchet.next_sending_keys()?;
        let ciphertext = aes256_cbc_encrypt(&k.keys.cipher_key, &k.keys.iv, dr_plaintext);
        let message = OMEMOMessage {
            n: k.counter,
            pn: k.previous_counter,
            dh_pub: k.ratchet_key.as_raw().to_vec(),
            ciphertext: Some(ciphertext),
        }
        .encode_to_vec();
        let mac = hmac_sha256(&k.keys.mac_key, &[&self.ad, &message]);
        let auth = OMEMOAuthenticatedMessage {
            mac: mac[..MAC_LEN].to_vec(),
            message,
        };
        if self.key_exchange_pending() {
            let kex = OMEMOKeyExchange {
                pk_id: self.kex.pk_id,
                spk_id: self.kex.spk_id,
                ik: self.kex.ik.to_vec(),
                ek: self.kex.ek.to_vec(),
                message: auth,
            };
            Ok(Omemo2KeyElement::KeyExchange(kex.encode_to_vec()))
        } else {
            Ok(Omemo2KeyElement::Message(auth.encode_to_vec()))
        }
    }

    /// Decrypts on a clone; returns the advanced session (not yet committed), the plaintext
    /// and whether a heartbeat is due by the counter rule.
    fn try_decrypt(
        &self,
        m: &Parsed,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Omemo2Session, Zeroizing<Vec<u8>>, bool)> {
        let mut trial = self.clone();
        let known_chain = trial.ratchet.receiver_chain_keys().contains(&m.dh_pub);
        if !known_chain && !m.dh_pub.is_canonical() {
            return Err(SignalError::NonCanonicalKey);
        }
        let keys = trial.ratchet.receiving_keys(&m.dh_pub, m.n, m.pn, rng)?;
        let expected = hmac_sha256(&keys.mac_key, &[&self.ad, &m.message_bytes]);
        if !bool::from(expected[..MAC_LEN].ct_eq(&m.mac)) {
            return Err(SignalError::BadMac);
        }
        let plaintext = Zeroizing::new(aes256_cbc_decrypt(
            &keys.cipher_key,
            &keys.iv,
            &m.ciphertext,
        )?);
        trial.confirmed = true;
        let newest = trial.ratchet.receiver_chain_keys().last() == Some(&m.dh_pub);
        let unanswered = trial
            .ratchet
            .sending_chain_key()
            .is_none_or(|c| c.index() == 0);
        let heartbeat = m.n >= HEARTBEAT_THRESHOLD && newest && unanswered;
        Ok((trial, plaintext, heartbeat))
    }

    /// Decrypts a serialized `OMEMOAuthenticatedMessage` on this session alone; the session is
    /// updated only on success. Returns the plaintext and the counter-rule heartbeat flag.
    pub fn decrypt(
        &mut self,
        authenticated_message: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Zeroizing<Vec<u8>>, bool)> {
        let m = Parsed::decode(authenticated_message)?;
        let (next, pt, hb) = self.try_decrypt(&m, rng)?;
        *self = next;
        Ok((pt, hb))
    }

    fn to_proto(&self) -> SessionProto {
        SessionProto {
            ratchet: self.ratchet.to_bytes().to_vec(),
            ad: self.ad.to_vec(),
            role: match self.role {
                Role::Initiator => 1,
                Role::Responder => 2,
            },
            confirmed: self.confirmed,
            ek: self.kex.ek.to_vec(),
            spk_id: self.kex.spk_id,
            pk_id: self.kex.pk_id,
        }
    }

    fn from_proto(p: &SessionProto) -> Result<Self> {
        let corrupt = |what: &str| SignalError::CorruptRecord(format!("OMEMO 2 session: {what}"));
        let ad: [u8; AD_LEN] = p.ad.as_slice().try_into().map_err(|_| corrupt("ad"))?;
        let role = match p.role {
            1 => Role::Initiator,
            2 => Role::Responder,
            _ => return Err(corrupt("role")),
        };
        let ek: [u8; 32] = p.ek.as_slice().try_into().map_err(|_| corrupt("ek"))?;
        Ok(Omemo2Session {
            ratchet: RatchetState::from_bytes(OMEMO2, &p.ratchet)?,
            kex: KeyExchangeId {
                ik: ad[..32].try_into().expect("32"),
                ek,
                spk_id: p.spk_id,
                pk_id: p.pk_id,
            },
            ad,
            role,
            confirmed: p.confirmed,
        })
    }
}

/// The sessions with one remote device: the current one and up to
/// [`MAX_ARCHIVED_SESSIONS`] archived ones (newest first).
#[derive(Clone, Debug, Default)]
pub struct Omemo2SessionRecord {
    current: Option<Omemo2Session>,
    archived: VecDeque<Omemo2Session>,
}

impl Omemo2SessionRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current session.
    pub fn current(&self) -> Option<&Omemo2Session> {
        self.current.as_ref()
    }

    /// The archived sessions, newest first.
    pub fn archived(&self) -> impl Iterator<Item = &Omemo2Session> {
        self.archived.iter()
    }

    /// Makes `session` current, archiving the previous current session.
    pub fn set_current(&mut self, session: Omemo2Session) {
        if let Some(old) = self.current.replace(session) {
            self.archived.push_front(old);
            self.archived.truncate(MAX_ARCHIVED_SESSIONS);
        }
    }

    /// Archives the current session (e.g. before building a fresh one from a new bundle).
    pub fn archive_current(&mut self) {
        if let Some(old) = self.current.take() {
            self.archived.push_front(old);
            self.archived.truncate(MAX_ARCHIVED_SESSIONS);
        }
    }

    /// Builds a session from the peer's bundle and makes it current (see [`initiate`]).
    pub fn initiate(
        &mut self,
        identity: &IdentityKeyPair,
        bundle: &Omemo2Bundle,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        let session = initiate(identity, bundle, rng)?;
        self.set_current(session);
        Ok(())
    }

    /// Encrypts on the current session ([`SignalError::NoSession`] if there is none).
    pub fn encrypt(&mut self, dr_plaintext: &[u8]) -> Result<Omemo2KeyElement> {
        self.current
            .as_mut()
            .ok_or(SignalError::NoSession)?
            .encrypt(dr_plaintext)
    }

    /// Decrypts a serialized `OMEMOAuthenticatedMessage` (a `<key>` without `kex`): the
    /// current session first, then the archived ones. Fails leaving the record untouched;
    /// a duplicate is [`SignalError::DuplicateMessage`], a forged MAC [`SignalError::BadMac`],
    /// a message that no session could have produced [`SignalError::NoSession`] if there
    /// are no sessions.
    pub fn decrypt_message(
        &mut self,
        authenticated_message: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Omemo2Decrypted> {
        let m = Parsed::decode(authenticated_message)?;
        self.decrypt_parsed(&m, false, rng)
    }

    fn decrypt_parsed(
        &mut self,
        m: &Parsed,
        key_exchange: bool,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Omemo2Decrypted> {
        let mut first_err = None;
        let mut duplicate = None;
        if let Some(cur) = &self.current {
            match cur.try_decrypt(m, rng) {
                Ok((next, plaintext, hb)) => {
                    let their_identity = next.their_identity();
                    self.current = Some(next);
                    return Ok(Omemo2Decrypted {
                        plaintext,
                        their_identity,
                        key_exchange,
                        new_session: false,
                        from_archived: false,
                        send_heartbeat: hb || key_exchange,
                    });
                }
                Err(e) => {
                    if matches!(e, SignalError::DuplicateMessage { .. }) {
                        duplicate = Some(e);
                    } else {
                        first_err = Some(e);
                    }
                }
            }
        }
        for i in 0..self.archived.len() {
            match self.archived[i].try_decrypt(m, rng) {
                Ok((next, plaintext, _)) => {
                    let their_identity = next.their_identity();
                    self.archived[i] = next;
                    return Ok(Omemo2Decrypted {
                        plaintext,
                        their_identity,
                        key_exchange,
                        new_session: false,
                        from_archived: true,
                        send_heartbeat: key_exchange,
                    });
                }
                Err(e @ SignalError::DuplicateMessage { .. }) if duplicate.is_none() => {
                    duplicate = Some(e);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(duplicate.or(first_err).unwrap_or(SignalError::NoSession))
    }

    /// Handles a serialized `OMEMOKeyExchange` (a `<key kex='true'>`) as responder.
    ///
    /// If a session we built as responder from the same `(ik, ek, spk_id, pk_id)` exists (the
    /// initiator resends the header until answered), the embedded message is decrypted on it.
    /// Otherwise a new session is built from our signed prekey and one-time prekey named by
    /// the ids, the embedded message is decrypted on it, the one-time prekey is removed from
    /// `store`, and the new session becomes current (the old one is archived). On any error
    /// nothing changes, neither the record nor the store.
    ///
    /// [`Omemo2Decrypted::send_heartbeat`] is always true: a key exchange is answered with an
    /// empty message. Trust in [`Omemo2Decrypted::their_identity`] is the caller's decision
    /// (before using the plaintext).
    pub fn decrypt_key_exchange<S: Omemo2Store + ?Sized>(
        &mut self,
        identity: &IdentityKeyPair,
        store: &mut S,
        key_exchange: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Omemo2Decrypted> {
        let kex = OMEMOKeyExchange::decode(key_exchange)
            .map_err(|e| bad(&format!("OMEMOKeyExchange: {e}")))?;
        let id = KeyExchangeId {
            ik: arr32(&kex.ik, "ik")?,
            ek: arr32(&kex.ek, "ek")?,
            spk_id: kex.spk_id,
            pk_id: kex.pk_id,
        };
        let m = Parsed::from_auth(kex.message)?;

        let builds_existing = |s: &Omemo2Session| s.role == Role::Responder && s.kex == id;
        if self.current.as_ref().is_some_and(builds_existing)
            || self.archived.iter().any(builds_existing)
        {
            return self.decrypt_parsed(&m, true, rng);
        }

        let spk = store
            .omemo2_signed_prekey(id.spk_id)?
            .ok_or(SignalError::MissingSignedPreKey(id.spk_id))?;
        let pk = store
            .omemo2_prekey(id.pk_id)?
            .ok_or(SignalError::MissingPreKey(id.pk_id))?;
        let (sk, ad) = x3dh::respond(identity, &id.ik, &id.ek, &spk.key_pair, &pk.key_pair)?;
        let session = Omemo2Session {
            ratchet: RatchetState::new_responder(OMEMO2, *sk, spk.key_pair.clone(), None),
            ad,
            role: Role::Responder,
            kex: id,
            confirmed: true,
        };
        let (session, plaintext, _) = session.try_decrypt(&m, rng)?;
        store.omemo2_remove_prekey(id.pk_id)?;
        let their_identity = session.their_identity();
        self.set_current(session);
        Ok(Omemo2Decrypted {
            plaintext,
            their_identity,
            key_exchange: true,
            new_session: true,
            from_archived: false,
            send_heartbeat: true,
        })
    }

    /// Storage serialization (protobuf, format version [`RECORD_FORMAT_VERSION`]). Contains
    /// secrets.
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let proto = RecordProto {
            format_version: RECORD_FORMAT_VERSION,
            current: self.current.as_ref().map(Omemo2Session::to_proto),
            archived: self.archived.iter().map(Omemo2Session::to_proto).collect(),
        };
        Zeroizing::new(proto.encode_to_vec())
    }

    /// Parses [`Omemo2SessionRecord::serialize`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let proto = RecordProto::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("OMEMO 2 session record: {e}")))?;
        if proto.format_version != RECORD_FORMAT_VERSION {
            return Err(SignalError::CorruptRecord(format!(
                "OMEMO 2 session record format {}",
                proto.format_version
            )));
        }
        Ok(Omemo2SessionRecord {
            current: proto
                .current
                .as_ref()
                .map(Omemo2Session::from_proto)
                .transpose()?,
            archived: proto
                .archived
                .iter()
                .map(Omemo2Session::from_proto)
                .collect::<Result<_>>()?,
        })
    }
}

/// Storage form of an [`Omemo2Session`].
///
/// | tag | field | content |
/// |---|---|---|
/// | 1 | `ratchet` | [`RatchetState::to_bytes`] |
/// | 2 | `ad` | 64 bytes `IK_A ‖ IK_B` |
/// | 3 | `role` | 1 initiator, 2 responder |
/// | 4 | `confirmed` | peer message received (initiator) |
/// | 5 | `ek` | initiator's ephemeral key (raw 32) |
/// | 6 | `spk_id` | |
/// | 7 | `pk_id` | |
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
struct SessionProto {
    #[prost(bytes = "vec", tag = "1")]
    ratchet: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    ad: Vec<u8>,
    #[prost(uint32, tag = "3")]
    role: u32,
    #[prost(bool, tag = "4")]
    confirmed: bool,
    #[prost(bytes = "vec", tag = "5")]
    ek: Vec<u8>,
    #[prost(uint32, tag = "6")]
    spk_id: u32,
    #[prost(uint32, tag = "7")]
    pk_id: u32,
}

/// Storage form of an [`Omemo2SessionRecord`]: 1 `format_version`, 2 `current` (optional
/// [`SessionProto`]), 3 `archived` (repeated, newest first).
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
struct RecordProto {
    #[prost(uint32, tag = "1")]
    format_version: u32,
    #[prost(message, optional, tag = "2")]
    current: Option<SessionProto>,
    #[prost(message, repeated, tag = "3")]
    archived: Vec<SessionProto>,
}
