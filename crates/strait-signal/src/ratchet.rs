//! The Double Ratchet core, shared by libsignal v3 sessions ([`crate::session`]) and OMEMO 2.
//!
//! Written from the Double Ratchet specification (signal.org/docs/specifications/doubleratchet)
//! and the facts in `shared/ref/signal-omemo.md` §1.6–1.9 and §3. It knows nothing about message
//! framing, MACs or payload encryption: for a (ratchet public key, counter) pair it yields the
//! [`MessageKeys`] `{cipher_key, mac_key, iv, counter}`, and the session layer serializes, MACs
//! and encrypts.
//!
//! # Profiles
//!
//! KDF labels and limits are a [`RatchetConfig`] value: [`LIBSIGNAL_V3`] (`"WhisperRatchet"`,
//! `"WhisperMessageKeys"`, 5 receiver chains, 2 000 skipped keys per chain, jump limit 2 000,
//! previous counter sent as a count (as python-oldmemo does) and ignored on receive) and [`OMEMO2`] (`"OMEMO Root Chain"`,
//! `"OMEMO Message Key Material"`, 1 000 skipped keys per session in FIFO order, jump limit
//! 1 000, previous counter sent as the count `n` and used on receive to cache the tail of the
//! previous receiving chain, as python-doubleratchet does).
//!
//! # How a session layer uses it
//!
//! **Initialization.** After X3DH, with `SK`/`RK0` the shared secret:
//!
//! * libsignal v3 style (`RK0 ‖ CK0` = the 64-byte `"WhisperText"` output):
//!   - initiator (Alice): `RatchetState::new_initiator(LIBSIGNAL_V3, RK0, SPK_B, Some(CK0),
//!     KeyPair::generate(rng))` — a receiving chain for Bob's signed prekey with `CK0`, then the
//!     first DH step with the fresh ratchet key;
//!   - responder (Bob): `RatchetState::new_responder(LIBSIGNAL_V3, RK0, spk_b_pair, Some(CK0))`
//!     — Bob's sending chain is `(SPK_B, CK0)`; in practice it is replaced by the DH step that
//!     decrypting Alice's first message performs.
//! * Double-Ratchet-spec style (`RK = SK`, OMEMO 2):
//!   - initiator: `RatchetState::new_initiator(OMEMO2, SK, SPK_B, None, KeyPair::generate(rng))`;
//!   - responder: `RatchetState::new_responder(OMEMO2, SK, spk_b_pair, None)` — no sending chain
//!     until the first message is received ([`SignalError::NoSendingChain`] before that).
//!
//! Both styles interoperate: they differ only in the chain that is never used.
//!
//! **Encrypting.** `let k = state.next_sending_keys()?;` gives the ratchet key to put in the
//! header (`k.ratchet_key`), `k.counter`, `k.previous_counter` (already in the profile's wire
//! convention) and `k.keys`; encrypt and MAC with them, then persist `state`.
//!
//! **Decrypting: on a clone, then commit.**
//!
//! ```ignore
//! let mut trial = state.clone();
//! let keys = trial.receiving_keys(&header_ratchet_key, header.counter, header.pn, rng)?;
//! verify_mac(&keys)?;              // session layer
//! let plaintext = decrypt(&keys)?; // session layer
//! *state = trial;                  // commit only after everything succeeded
//! ```
//!
//! `receiving_keys` performs the DH step for a new ratchet key, caches skipped message keys,
//! consumes a cached key for a late message, and fails with [`SignalError::DuplicateMessage`]
//! or [`SignalError::TooFarInFuture`]; since it works on the clone, a failed or forged message
//! leaves the committed state untouched.
//!
//! **Persistence.** [`RatchetState::to_bytes`] / [`RatchetState::from_bytes`] (format below).

use std::collections::VecDeque;

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Result, SignalError};
pub use crate::kdf::{ChainKey, MessageKeys};
use crate::kdf::{WHISPER_MESSAGE_KEYS, WHISPER_RATCHET, kdf_rk};
use crate::keys::{KeyPair, PrivateKey, PublicKey};

/// How the previous-chain length travels in message headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreviousCounter {
    /// libsignal: the index of the last message of the previous sending chain, `n − 1`
    /// (saturating at 0).
    LastIndex,
    /// Double Ratchet spec / python-doubleratchet: the number of messages `n`.
    Count,
}

/// KDF labels and limits of a Double Ratchet profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatchetConfig {
    /// HKDF info of `KDF_RK`.
    pub root_info: &'static [u8],
    /// HKDF info of the 80-byte message-key expansion.
    pub message_key_info: &'static [u8],
    /// Receiving chains kept (oldest dropped, with its skipped keys if
    /// `skipped_keys_follow_chains`).
    pub max_receiver_chains: usize,
    /// Skipped message keys kept per receiving chain (oldest evicted).
    pub max_skipped_per_chain: usize,
    /// Skipped message keys kept in the whole state (oldest evicted, FIFO).
    pub max_skipped_total: usize,
    /// Largest accepted `counter − chain index` for one message.
    pub max_forward_jump: u32,
    /// Wire convention of the previous counter.
    pub previous_counter: PreviousCounter,
    /// On a new ratchet key, cache the keys of the current receiving chain up to the header's
    /// previous counter (spec behaviour; libsignal ignores the field).
    pub skip_by_previous_counter: bool,
    /// Drop a receiving chain's skipped keys when the chain itself is dropped (libsignal).
    pub skipped_keys_follow_chains: bool,
}

/// libsignal v3 / libsignal-protocol-java / WhatsApp / OMEMO 0.3.
///
/// The previous counter is *sent* as a count, as python-oldmemo does (`pn =
/// previous_sending_chain_length`), not as libsignal's `n − 1`: libsignal, libsignal-protocol-java
/// and WhatsApp ignore the field on receive, while python-doubleratchet uses it as a count to
/// cache the tail of the previous chain, so with `n − 1` a late last message of the previous
/// chain would be undecryptable there (found by the cross-implementation tests). On receive we
/// ignore it, like libsignal, and keep old receiving chains instead.
pub const LIBSIGNAL_V3: RatchetConfig = RatchetConfig {
    root_info: WHISPER_RATCHET,
    message_key_info: WHISPER_MESSAGE_KEYS,
    max_receiver_chains: 5,
    max_skipped_per_chain: 2000,
    max_skipped_total: 5 * 2000,
    max_forward_jump: 2000,
    previous_counter: PreviousCounter::Count,
    skip_by_previous_counter: false,
    skipped_keys_follow_chains: true,
};

/// OMEMO 2 (XEP-0384 ≥ 0.8, python-twomemo).
pub const OMEMO2: RatchetConfig = RatchetConfig {
    root_info: b"OMEMO Root Chain",
    message_key_info: b"OMEMO Message Key Material",
    max_receiver_chains: 5,
    max_skipped_per_chain: 1000,
    max_skipped_total: 1000,
    max_forward_jump: 1000,
    previous_counter: PreviousCounter::Count,
    skip_by_previous_counter: true,
    skipped_keys_follow_chains: false,
};

/// What the sender needs for one outgoing message.
#[derive(Debug)]
pub struct SendingKeys {
    /// Our current ratchet public key (message header).
    pub ratchet_key: PublicKey,
    /// The message counter (index in the sending chain).
    pub counter: u32,
    /// The previous-chain counter in the profile's wire convention.
    pub previous_counter: u32,
    /// The message keys.
    pub keys: MessageKeys,
}

#[derive(Clone)]
struct ReceiverChain {
    ratchet_key: PublicKey,
    chain_key: ChainKey,
}

#[derive(Clone)]
struct SkippedKey {
    ratchet_key: PublicKey,
    keys: MessageKeys,
}

/// The state of one Double Ratchet (secrets wiped on drop).
#[derive(Clone)]
pub struct RatchetState {
    config: RatchetConfig,
    root_key: Zeroizing<[u8; 32]>,
    /// Our current ratchet key pair (DHs).
    our_ratchet: KeyPair,
    /// The sending chain; `None` for a spec-style responder that has not received yet.
    sending: Option<ChainKey>,
    /// Messages sent on the previous sending chain (a count).
    previous_count: u32,
    /// Receiving chains, oldest first.
    receivers: VecDeque<ReceiverChain>,
    /// Skipped message keys, oldest first.
    skipped: VecDeque<SkippedKey>,
}

impl core::fmt::Debug for RatchetState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RatchetState")
            .field("our_ratchet", &self.our_ratchet.public)
            .field("sending_index", &self.sending.as_ref().map(|c| c.index()))
            .field("receivers", &self.receivers.len())
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl RatchetState {
    /// The initiator's ratchet (Alice). `initial_receiving_chain` is libsignal's `CK0` for
    /// `their_ratchet_key` (Bob's signed prekey), `None` for spec-style `RK = SK`. Performs the
    /// first DH step with `our_ratchet_key`.
    pub fn new_initiator(
        config: RatchetConfig,
        root_key: [u8; 32],
        their_ratchet_key: PublicKey,
        initial_receiving_chain: Option<[u8; 32]>,
        our_ratchet_key: KeyPair,
    ) -> Result<Self> {
        let root = Zeroizing::new(root_key);
        let dh = our_ratchet_key.private.agree(&their_ratchet_key)?;
        let (rk, cks) = kdf_rk(&root, &dh, config.root_info);
        let mut receivers = VecDeque::new();
        if let Some(ck0) = initial_receiving_chain {
            receivers.push_back(ReceiverChain {
                ratchet_key: their_ratchet_key,
                chain_key: ChainKey::new(ck0, 0),
            });
        }
        Ok(RatchetState {
            config,
            root_key: rk,
            our_ratchet: our_ratchet_key,
            sending: Some(ChainKey::new(*cks, 0)),
            previous_count: 0,
            receivers,
            skipped: VecDeque::new(),
        })
    }

    /// The responder's ratchet (Bob). `our_ratchet_key` is the signed-prekey pair the initiator
    /// used; `initial_sending_chain` is libsignal's `CK0`, `None` for spec style.
    pub fn new_responder(
        config: RatchetConfig,
        root_key: [u8; 32],
        our_ratchet_key: KeyPair,
        initial_sending_chain: Option<[u8; 32]>,
    ) -> Self {
        RatchetState {
            config,
            root_key: Zeroizing::new(root_key),
            our_ratchet: our_ratchet_key,
            sending: initial_sending_chain.map(|ck| ChainKey::new(ck, 0)),
            previous_count: 0,
            receivers: VecDeque::new(),
            skipped: VecDeque::new(),
        }
    }

    /// The profile.
    pub fn config(&self) -> &RatchetConfig {
        &self.config
    }

    /// The current root key (secret).
    pub fn root_key(&self) -> &[u8; 32] {
        &self.root_key
    }

    /// Our current ratchet public key.
    pub fn our_ratchet_key(&self) -> &PublicKey {
        &self.our_ratchet.public
    }

    /// The sending chain key, if any.
    pub fn sending_chain_key(&self) -> Option<&ChainKey> {
        self.sending.as_ref()
    }

    /// The receiving chain key for a ratchet key, if that chain is kept.
    pub fn receiving_chain_key(&self, their_ratchet_key: &PublicKey) -> Option<&ChainKey> {
        self.receivers
            .iter()
            .find(|c| c.ratchet_key == *their_ratchet_key)
            .map(|c| &c.chain_key)
    }

    /// The ratchet keys of the kept receiving chains, oldest first.
    pub fn receiver_chain_keys(&self) -> Vec<PublicKey> {
        self.receivers.iter().map(|c| c.ratchet_key).collect()
    }

    /// Number of cached skipped message keys.
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.len()
    }

    fn wire_previous_counter(&self) -> u32 {
        match self.config.previous_counter {
            PreviousCounter::LastIndex => self.previous_count.saturating_sub(1),
            PreviousCounter::Count => self.previous_count,
        }
    }

    /// The keys for the next outgoing message; advances the sending chain.
    pub fn next_sending_keys(&mut self) -> Result<SendingKeys> {
        let info = self.config.message_key_info;
        let chain = self.sending.as_mut().ok_or(SignalError::NoSendingChain)?;
        let keys = chain.message_keys(info);
        let counter = chain.index();
        *chain = chain.next();
        Ok(SendingKeys {
            ratchet_key: self.our_ratchet.public,
            counter,
            previous_counter: self.wire_previous_counter(),
            keys,
        })
    }

    /// Caches the keys of `chain` from its index up to (excluding) `until`; returns the advanced
    /// chain key. Evicts the chain's oldest cached keys beyond `max_skipped_per_chain` and the
    /// state's oldest beyond `max_skipped_total`, in one pass.
    fn skip_to(&mut self, ratchet_key: PublicKey, mut chain: ChainKey, until: u32) -> ChainKey {
        let info = self.config.message_key_info;
        let max = self.config.max_skipped_per_chain;
        let n = until.saturating_sub(chain.index()) as usize;
        if n == 0 {
            return chain;
        }
        let same = |s: &SkippedKey| s.ratchet_key.as_raw() == ratchet_key.as_raw();
        let existing = self.skipped.iter().filter(|s| same(s)).count();
        let mut overflow = (existing + n).saturating_sub(max);
        if overflow > 0 {
            self.skipped.retain(|s| {
                if overflow > 0 && same(s) {
                    overflow -= 1;
                    false
                } else {
                    true
                }
            });
        }
        // keys that would be evicted at once are not cached at all
        let first_cached = until.saturating_sub(u32::try_from(max).unwrap_or(u32::MAX));
        while chain.index() < until {
            if chain.index() >= first_cached {
                self.skipped.push_back(SkippedKey {
                    ratchet_key,
                    keys: chain.message_keys(info),
                });
            }
            chain = chain.next();
        }
        while self.skipped.len() > self.config.max_skipped_total {
            self.skipped.pop_front();
        }
        chain
    }

    fn check_jump(&self, index: u32, counter: u32) -> Result<()> {
        let jump = counter - index;
        if jump > self.config.max_forward_jump {
            return Err(SignalError::TooFarInFuture { jump });
        }
        Ok(())
    }

    /// The DH ratchet step for a new remote ratchet key.
    fn dh_step(
        &mut self,
        their: &PublicKey,
        previous_counter: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<()> {
        if let Some(last) = self
            .receivers
            .back()
            .filter(|_| self.config.skip_by_previous_counter)
        {
            let (key, chain) = (last.ratchet_key, last.chain_key.clone());
            if previous_counter > chain.index() {
                self.check_jump(chain.index(), previous_counter)?;
                let advanced = self.skip_to(key, chain, previous_counter);
                if let Some(last) = self.receivers.back_mut() {
                    last.chain_key = advanced;
                }
            }
        }
        let dh_recv = self.our_ratchet.private.agree(their)?;
        let (rk, ckr) = kdf_rk(&self.root_key, &dh_recv, self.config.root_info);
        let new_pair = KeyPair::generate(rng);
        let dh_send = new_pair.private.agree(their)?;
        let (rk2, cks) = kdf_rk(&rk, &dh_send, self.config.root_info);
        self.root_key = rk2;
        self.previous_count = self.sending.as_ref().map_or(0, |c| c.index());
        self.sending = Some(ChainKey::new(*cks, 0));
        self.our_ratchet = new_pair;
        self.receivers.push_back(ReceiverChain {
            ratchet_key: *their,
            chain_key: ChainKey::new(*ckr, 0),
        });
        while self.receivers.len() > self.config.max_receiver_chains {
            if let Some(dropped) = self.receivers.pop_front()
                && self.config.skipped_keys_follow_chains
            {
                let gone = *dropped.ratchet_key.as_raw();
                self.skipped.retain(|s| *s.ratchet_key.as_raw() != gone);
            }
        }
        Ok(())
    }

    /// The keys of a received message `(their_ratchet_key, counter)`, advancing the state (DH
    /// step, skipped keys). Call it on a clone and keep the clone only if the message then
    /// authenticates and decrypts. `previous_counter` is the header value (used only by
    /// profiles with `skip_by_previous_counter`).
    pub fn receiving_keys(
        &mut self,
        their_ratchet_key: &PublicKey,
        counter: u32,
        previous_counter: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<MessageKeys> {
        if !self
            .receivers
            .iter()
            .any(|c| c.ratchet_key == *their_ratchet_key)
        {
            // A late message for a chain we no longer keep, but whose key is cached.
            if let Some(keys) = self.take_skipped(their_ratchet_key, counter) {
                return Ok(keys);
            }
            self.dh_step(their_ratchet_key, previous_counter, rng)?;
        }
        let pos = self
            .receivers
            .iter()
            .position(|c| c.ratchet_key == *their_ratchet_key)
            .expect("chain exists after DH step");
        let chain = self.receivers[pos].chain_key.clone();
        if counter < chain.index() {
            return self
                .take_skipped(their_ratchet_key, counter)
                .ok_or(SignalError::DuplicateMessage { counter });
        }
        self.check_jump(chain.index(), counter)?;
        let chain = self.skip_to(*their_ratchet_key, chain, counter);
        let keys = chain.message_keys(self.config.message_key_info);
        self.receivers[pos].chain_key = chain.next();
        Ok(keys)
    }

    fn take_skipped(&mut self, their: &PublicKey, counter: u32) -> Option<MessageKeys> {
        let pos = self
            .skipped
            .iter()
            .position(|s| s.ratchet_key.as_raw() == their.as_raw() && s.keys.counter == counter)?;
        self.skipped.remove(pos).map(|s| s.keys.clone())
    }

    /// Serializes the state (protobuf [`RatchetStateProto`], format version 1). Contains
    /// secrets: store it as such.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        use prost::Message;
        let proto = self.to_proto();
        Zeroizing::new(proto.encode_to_vec())
    }

    /// Parses [`RatchetState::to_bytes`] under the given profile.
    pub fn from_bytes(config: RatchetConfig, bytes: &[u8]) -> Result<Self> {
        use prost::Message;
        let proto = RatchetStateProto::decode(bytes)
            .map_err(|e| SignalError::CorruptRecord(format!("ratchet state: {e}")))?;
        Self::from_proto(config, &proto)
    }

    pub(crate) fn to_proto(&self) -> RatchetStateProto {
        RatchetStateProto {
            format_version: 1,
            root_key: self.root_key.to_vec(),
            our_ratchet_private: self.our_ratchet.private.to_bytes().to_vec(),
            our_ratchet_public: Some(self.our_ratchet.public.as_raw().to_vec()),
            sending_chain_key: self.sending.as_ref().map(|c| c.key().to_vec()),
            sending_chain_index: self.sending.as_ref().map_or(0, |c| c.index()),
            previous_count: self.previous_count,
            receivers: self
                .receivers
                .iter()
                .map(|c| ReceiverChainProto {
                    ratchet_key: c.ratchet_key.as_raw().to_vec(),
                    chain_key: c.chain_key.key().to_vec(),
                    index: c.chain_key.index(),
                })
                .collect(),
            skipped: self
                .skipped
                .iter()
                .map(|s| SkippedKeyProto {
                    ratchet_key: s.ratchet_key.as_raw().to_vec(),
                    counter: s.keys.counter,
                    cipher_key: s.keys.cipher_key.to_vec(),
                    mac_key: s.keys.mac_key.to_vec(),
                    iv: s.keys.iv.to_vec(),
                })
                .collect(),
        }
    }

    pub(crate) fn from_proto(config: RatchetConfig, p: &RatchetStateProto) -> Result<Self> {
        if p.format_version != 1 {
            return Err(SignalError::CorruptRecord(format!(
                "ratchet state format {}",
                p.format_version
            )));
        }
        let bad = |what: &str| SignalError::CorruptRecord(format!("ratchet state: bad {what}"));
        let k32 =
            |v: &[u8], what: &str| -> Result<[u8; 32]> { v.try_into().map_err(|_| bad(what)) };
        let private = PrivateKey::from_bytes(k32(&p.our_ratchet_private, "ratchet private key")?);
        // The stored public half saves a base-point multiplication (~25 µs) on every load,
        // which every message pays; records written before it was stored derive it.
        let our_ratchet = match &p.our_ratchet_public {
            Some(public) => KeyPair {
                public: PublicKey::from_raw(k32(public, "ratchet public key")?),
                private,
            },
            None => KeyPair::from_private(private),
        };
        let sending = match &p.sending_chain_key {
            Some(k) => Some(ChainKey::new(
                k32(k, "sending chain key")?,
                p.sending_chain_index,
            )),
            None => None,
        };
        let mut receivers = VecDeque::new();
        for r in &p.receivers {
            receivers.push_back(ReceiverChain {
                ratchet_key: PublicKey::from_raw(k32(&r.ratchet_key, "receiver ratchet key")?),
                chain_key: ChainKey::new(k32(&r.chain_key, "receiver chain key")?, r.index),
            });
        }
        let mut skipped = VecDeque::new();
        for s in &p.skipped {
            skipped.push_back(SkippedKey {
                ratchet_key: PublicKey::from_raw(k32(&s.ratchet_key, "skipped ratchet key")?),
                keys: MessageKeys {
                    cipher_key: k32(&s.cipher_key, "skipped cipher key")?,
                    mac_key: k32(&s.mac_key, "skipped mac key")?,
                    iv: s.iv.as_slice().try_into().map_err(|_| bad("skipped iv"))?,
                    counter: s.counter,
                },
            });
        }
        Ok(RatchetState {
            config,
            root_key: Zeroizing::new(k32(&p.root_key, "root key")?),
            our_ratchet,
            sending,
            previous_count: p.previous_count,
            receivers,
            skipped,
        })
    }
}

/// Storage form of [`RatchetState`] (protobuf, proto3 semantics):
///
/// | tag | field | content |
/// |---|---|---|
/// | 1 | `format_version` | 1 |
/// | 2 | `root_key` | 32 bytes |
/// | 3 | `our_ratchet_private` | 32 bytes |
/// | 4 | `sending_chain_key` | 32 bytes, absent if no sending chain |
/// | 5 | `sending_chain_index` | next sending counter |
/// | 6 | `previous_count` | messages sent on the previous sending chain |
/// | 7 | `receivers` | repeated `{1 ratchet_key raw 32, 2 chain_key 32, 3 index}`, oldest first |
/// | 8 | `skipped` | repeated `{1 ratchet_key raw 32, 2 counter, 3 cipher_key, 4 mac_key, 5 iv}`, oldest first |
/// | 9 | `our_ratchet_public` | 32 bytes; absent in older records, then derived from tag 3 |
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct RatchetStateProto {
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub root_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub our_ratchet_private: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub sending_chain_key: Option<Vec<u8>>,
    #[prost(uint32, tag = "5")]
    pub sending_chain_index: u32,
    #[prost(uint32, tag = "6")]
    pub previous_count: u32,
    #[prost(message, repeated, tag = "7")]
    pub receivers: Vec<ReceiverChainProto>,
    #[prost(message, repeated, tag = "8")]
    pub skipped: Vec<SkippedKeyProto>,
    /// The public half of `our_ratchet_private` (absent in records of older writers).
    #[prost(bytes = "vec", optional, tag = "9")]
    pub our_ratchet_public: Option<Vec<u8>>,
}

/// A receiving chain in [`RatchetStateProto`].
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct ReceiverChainProto {
    #[prost(bytes = "vec", tag = "1")]
    pub ratchet_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub chain_key: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// A skipped message key in [`RatchetStateProto`].
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
pub struct SkippedKeyProto {
    #[prost(bytes = "vec", tag = "1")]
    pub ratchet_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub counter: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub cipher_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub mac_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub iv: Vec<u8>,
}
