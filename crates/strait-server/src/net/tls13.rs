//! The TLS 1.3 record layer of an established session (RFC 8446 §5), once rustls has done
//! the handshake.
//!
//! Why our own: memory. A rustls connection keeps, for the connection's whole life, its
//! handshake machinery (the connection core, about 1.2 KB; a handshake deframer, 650 B; send
//! queues) and, for AES-GCM, two expanded ring keys of about 560 B each. That is about 3.4 KB
//! of every idle client connection, more than half of what the whole connection costs. After
//! the handshake a TLS 1.3 session needs far less: the two traffic keys and IVs, two sequence
//! numbers, and the traffic secrets for key updates. rustls supports exactly this split
//! through its kernel-connection API (made for kTLS): it hands over the keys and keeps
//! computing the secrets of key updates; this module frames, protects and opens the records
//! with ring's AEADs (the crypto rustls itself uses), expanding a key only for the records of
//! one read or one write, so an idle session holds 32-byte keys rather than expanded ones.
//!
//! What it handles, from RFC 8446: application data; alerts (close_notify ends the stream,
//! user_canceled is ignored, every other alert is fatal); KeyUpdate in both directions (an
//! update_requested is answered before any more data is sent); our own key update before a
//! cipher suite's confidentiality limit; padding; record and plaintext size limits; and a
//! fatal alert to the peer for what it got wrong (bad_record_mac, unexpected_message,
//! record_overflow, decode_error, illegal_parameter). A TLS 1.2 session stays with rustls.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};
use std::io;

/// Record header: content type, legacy version (0x0303), length.
const HEADER: usize = 5;
/// Most plaintext in one record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Most ciphertext in one record: plaintext, content type, padding and tag (§5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const TAG: usize = 16;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;

const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;

/// Longest handshake message accepted after the handshake (only KeyUpdate is, 5 bytes); a
/// fragment is kept until its message is whole.
const MAX_POST_HANDSHAKE: usize = 64;

/// What opening the buffered records led to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Opened {
    /// Every complete record was opened; more bytes from the peer are needed.
    NeedData,
    /// The peer sent close_notify.
    Closed,
}

/// One direction's traffic key: the raw key (expanded only while in use), IV and sequence.
struct Keys {
    alg: &'static aead::Algorithm,
    key: [u8; 32],
    key_len: u8,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Keys, &'static str> {
        let (alg, key, iv): (&'static aead::Algorithm, _, _) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err("cipher suite not supported by the record layer"),
        };
        let k = key.as_ref();
        if k.len() != alg.key_len() || k.len() > 32 || iv.as_ref().len() != 12 {
            return Err("unexpected traffic key length");
        }
        let mut keys = Keys {
            alg,
            key: [0; 32],
            key_len: k.len() as u8,
            iv: [0; 12],
            seq,
        };
        keys.key[..k.len()].copy_from_slice(k);
        keys.iv.copy_from_slice(iv.as_ref());
        Ok(keys)
    }

    /// The expanded key, for the records of one read or one write.
    fn expand(&self) -> LessSafeKey {
        let unbound = UnboundKey::new(self.alg, &self.key[..self.key_len as usize])
            .expect("key length checked in Keys::new");
        LessSafeKey::new(unbound)
    }

    /// The per-record nonce (§5.3): the IV XOR the sequence number, left-padded; then the
    /// sequence number moves on.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        // A sequence number must not wrap (§5.3); key updates come long before.
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS sequence number exhausted"))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
        zeroize::Zeroize::zeroize(&mut self.iv);
    }
}

/// An established TLS 1.3 session's record layer.
pub(super) struct Records {
    kernel: Box<KernelConnection<ServerConnectionData>>,
    tx: Keys,
    rx: Keys,
    /// Records sent under one key before we update it: the suite's confidentiality limit.
    tx_limit: u64,
    /// A post-handshake message split across records; empty (no allocation) otherwise.
    handshake: Vec<u8>,
    /// A fatal error was reported: nothing more is opened or sealed.
    failed: bool,
}

/// An error the peer caused, with the alert that tells it why.
struct Fatal {
    alert: Option<u8>,
    what: String,
}

fn fatal(alert: u8, what: impl Into<String>) -> Fatal {
    Fatal {
        alert: Some(alert),
        what: what.into(),
    }
}

impl Records {
    /// Takes over an established TLS 1.3 session from rustls.
    pub(super) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Records, &'static str> {
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            _ => return Err("not a TLS 1.3 session"),
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Records {
            kernel: Box::new(kernel),
            tx: Keys::new(tx_seq, tx)?,
            rx: Keys::new(rx_seq, rx)?,
            tx_limit,
            handshake: Vec::new(),
            failed: false,
        })
    }

    /// Lowers the confidentiality limit, so that tests see our key update happen.
    #[cfg(test)]
    pub(super) fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    /// Records sent under the current send key.
    #[cfg(test)]
    pub(super) fn tx_seq(&self) -> u64 {
        self.tx.seq
    }

    /// Opens the complete records in `data[*used..]`, handing application data to `sink`
    /// and queueing what the session must send (a KeyUpdate answer, an alert) in `outgoing`.
    /// Advances `*used` past every record it opened, also on errors. A fatal error queues
    /// the alert for the peer and is returned.
    pub(super) fn open(
        &mut self,
        data: &mut [u8],
        used: &mut usize,
        outgoing: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Opened> {
        if self.failed {
            return Err(io::Error::other("the TLS session failed"));
        }
        match self.open_records(data, used, outgoing, sink) {
            Ok(o) => Ok(o),
            Err(f) => {
                self.failed = true;
                // The alert goes under the current key, if one can still be sealed.
                if let Some(alert) = f.alert {
                    let _ = self.seal_record(CONTENT_ALERT, &[2, alert], outgoing, None);
                }
                Err(io::Error::new(io::ErrorKind::InvalidData, f.what))
            }
        }
    }

    fn open_records(
        &mut self,
        data: &mut [u8],
        used: &mut usize,
        outgoing: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Opened, Fatal> {
        let mut key: Option<LessSafeKey> = None;
        loop {
            let rest = &mut data[*used..];
            if rest.len() < HEADER {
                return Ok(Opened::NeedData);
            }
            let header: [u8; HEADER] = rest[..HEADER].try_into().expect("length checked");
            let len = u16::from_be_bytes([header[3], header[4]]) as usize;
            if len > MAX_CIPHERTEXT {
                return Err(fatal(
                    ALERT_RECORD_OVERFLOW,
                    format!("TLS record of {len} bytes, more than {MAX_CIPHERTEXT}"),
                ));
            }
            // Every record after the handshake is protected and carries type 23 outside
            // (§5.2); a change_cipher_spec is only tolerated before the peer's Finished.
            if header[0] != CONTENT_APPLICATION_DATA {
                return Err(fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    format!("unprotected TLS record of type {}", header[0]),
                ));
            }
            if rest.len() < HEADER + len {
                return Ok(Opened::NeedData);
            }
            if len < TAG + 1 {
                return Err(fatal(ALERT_DECODE_ERROR, "TLS record shorter than its tag"));
            }
            let k = key.get_or_insert_with(|| self.rx.expand());
            let nonce = self
                .rx
                .next_nonce()
                .map_err(|e| fatal(ALERT_INTERNAL_ERROR, e.to_string()))?;
            let plain = k
                .open_in_place(nonce, Aad::from(header), &mut rest[HEADER..HEADER + len])
                .map_err(|_| fatal(ALERT_BAD_RECORD_MAC, "TLS record failed to authenticate"))?;
            *used += HEADER + len;
            // The content type is the last non-zero byte; zeros after it are padding (§5.4).
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    "TLS record with no content type",
                ));
            };
            let content_type = plain[end];
            let content = &plain[..end];
            if content.len() > MAX_PLAINTEXT {
                return Err(fatal(
                    ALERT_RECORD_OVERFLOW,
                    "TLS record plaintext over 16 KiB",
                ));
            }
            if content_type != CONTENT_HANDSHAKE && !self.handshake.is_empty() {
                // Handshake messages must not be interleaved with other types (§5.1).
                return Err(fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    "TLS handshake message interrupted by another record type",
                ));
            }
            match content_type {
                CONTENT_APPLICATION_DATA => {
                    if !content.is_empty() {
                        sink(content);
                    }
                }
                CONTENT_ALERT => {
                    let [level, description] = content else {
                        return Err(fatal(ALERT_DECODE_ERROR, "malformed TLS alert"));
                    };
                    match *description {
                        ALERT_CLOSE_NOTIFY => return Ok(Opened::Closed),
                        ALERT_USER_CANCELED => {}
                        d => {
                            // No alert in answer to the peer's.
                            return Err(Fatal {
                                alert: None,
                                what: format!("the peer sent TLS alert {d} (level {level})"),
                            });
                        }
                    }
                }
                CONTENT_HANDSHAKE => {
                    if content.is_empty() {
                        return Err(fatal(
                            ALERT_UNEXPECTED_MESSAGE,
                            "empty TLS handshake record",
                        ));
                    }
                    self.handshake.extend_from_slice(content);
                    let updated = self.post_handshake(outgoing)?;
                    if updated {
                        // The rx key changed: expand the new one for the next record.
                        key = None;
                    }
                }
                t => {
                    return Err(fatal(
                        ALERT_UNEXPECTED_MESSAGE,
                        format!("TLS record of content type {t}"),
                    ));
                }
            }
        }
    }

    /// Handles the whole post-handshake messages in `self.handshake`. Returns whether the
    /// receive key changed.
    fn post_handshake(&mut self, outgoing: &mut Vec<u8>) -> Result<bool, Fatal> {
        let mut updated = false;
        while self.handshake.len() >= 4 {
            let kind = self.handshake[0];
            let len =
                u32::from_be_bytes([0, self.handshake[1], self.handshake[2], self.handshake[3]])
                    as usize;
            if kind != HANDSHAKE_KEY_UPDATE {
                // A server gets no NewSessionTicket; post-handshake authentication was not
                // offered.
                return Err(fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    format!("TLS handshake message {kind} after the handshake"),
                ));
            }
            if len != 1 {
                return Err(fatal(ALERT_DECODE_ERROR, "malformed TLS KeyUpdate"));
            }
            if self.handshake.len() < 5 {
                break;
            }
            let request = self.handshake[4];
            if request > 1 {
                return Err(fatal(
                    ALERT_ILLEGAL_PARAMETER,
                    format!("TLS KeyUpdate with request {request}"),
                ));
            }
            // A key update must end its record (§5.1: no message spans a key change).
            if self.handshake.len() > 5 {
                return Err(fatal(
                    ALERT_UNEXPECTED_MESSAGE,
                    "data after a TLS KeyUpdate in the same record",
                ));
            }
            self.handshake = Vec::new();
            let (seq, secrets) = self
                .kernel
                .update_rx_secret()
                .map_err(|e| fatal(ALERT_INTERNAL_ERROR, format!("TLS key update: {e}")))?;
            self.rx =
                Keys::new(seq, secrets).map_err(|e| fatal(ALERT_INTERNAL_ERROR, e.to_string()))?;
            updated = true;
            if request == 1 {
                // update_requested: answer before any more application data (§4.6.3).
                self.update_tx(outgoing)
                    .map_err(|e| fatal(ALERT_INTERNAL_ERROR, e.to_string()))?;
            }
        }
        if self.handshake.len() > MAX_POST_HANDSHAKE {
            return Err(fatal(
                ALERT_UNEXPECTED_MESSAGE,
                "oversized TLS post-handshake message",
            ));
        }
        if self.handshake.is_empty() {
            self.handshake = Vec::new();
        }
        Ok(updated)
    }

    /// Sends a KeyUpdate (update_not_requested) under the current key, then moves to the
    /// next one.
    fn update_tx(&mut self, outgoing: &mut Vec<u8>) -> io::Result<()> {
        self.seal_record(
            CONTENT_HANDSHAKE,
            &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0],
            outgoing,
            None,
        )?;
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(|e| io::Error::other(format!("TLS key update: {e}")))?;
        self.tx = Keys::new(seq, secrets).map_err(io::Error::other)?;
        Ok(())
    }

    /// Protects one record of `content_type` holding `content` (at most 16 KiB) into
    /// `outgoing`, with `key` if the caller expanded the current one already.
    fn seal_record(
        &mut self,
        content_type: u8,
        content: &[u8],
        outgoing: &mut Vec<u8>,
        key: Option<&LessSafeKey>,
    ) -> io::Result<()> {
        debug_assert!(content.len() <= MAX_PLAINTEXT);
        let len = content.len() + 1 + TAG;
        let header = [
            CONTENT_APPLICATION_DATA,
            0x03,
            0x03,
            (len >> 8) as u8,
            len as u8,
        ];
        let nonce = self.tx.next_nonce()?;
        let start = outgoing.len();
        outgoing.reserve(HEADER + len);
        outgoing.extend_from_slice(&header);
        outgoing.extend_from_slice(content);
        outgoing.push(content_type);
        let expanded;
        let key = match key {
            Some(k) => k,
            None => {
                expanded = self.tx.expand();
                &expanded
            }
        };
        match key.seal_in_place_separate_tag(
            nonce,
            Aad::from(header),
            &mut outgoing[start + HEADER..],
        ) {
            Ok(tag) => {
                outgoing.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                outgoing.truncate(start);
                Err(io::Error::other("TLS record sealing failed"))
            }
        }
    }

    /// Protects `data` as application data records into `outgoing`.
    pub(super) fn seal(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session failed",
            ));
        }
        let mut key: Option<LessSafeKey> = None;
        for chunk in data.chunks(MAX_PLAINTEXT) {
            if self.tx.seq >= self.tx_limit {
                // Before the suite's confidentiality limit (§5.5): a new key.
                self.update_tx(outgoing)?;
                key = None;
            }
            if key.is_none() {
                key = Some(self.tx.expand());
            }
            self.seal_record(CONTENT_APPLICATION_DATA, chunk, outgoing, key.as_ref())?;
        }
        Ok(())
    }

    /// Queues close_notify.
    pub(super) fn close_notify(&mut self, outgoing: &mut Vec<u8>) {
        if !self.failed {
            let _ = self.seal_record(CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY], outgoing, None);
        }
    }
}
