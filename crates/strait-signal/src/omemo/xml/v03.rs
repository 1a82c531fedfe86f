//! OMEMO 0.3 (`eu.siacs.conversations.axolotl`) elements, per XEP-0384 v0.3.0 (its examples; the
//! attribute names `signedPreKeyId` / `preKeyId` are what every client uses — the v0.3.0 schema's
//! `id` is a known erratum, python-oldmemo's schema has the example names too).
//!
//! ```xml
//! <list xmlns='eu.siacs.conversations.axolotl'><device id='12345'/>…</list>
//!
//! <bundle xmlns='eu.siacs.conversations.axolotl'>
//!   <signedPreKeyPublic signedPreKeyId='1'>base64(0x05‖32)</signedPreKeyPublic>
//!   <signedPreKeySignature>base64(64)</signedPreKeySignature>
//!   <identityKey>base64(0x05‖32)</identityKey>
//!   <prekeys><preKeyPublic preKeyId='1'>base64(0x05‖32)</preKeyPublic>…</prekeys>
//! </bundle>
//!
//! <encrypted xmlns='eu.siacs.conversations.axolotl'>
//!   <header sid='27183'>
//!     <key rid='31415'>base64(SignalMessage)</key>
//!     <key prekey='true' rid='12321'>base64(PreKeySignalMessage)</key>
//!     <iv>base64(12 or 16 bytes)</iv>
//!   </header>
//!   <payload>base64(AES-GCM ciphertext without tag)</payload>   <!-- absent: KeyTransport -->
//! </encrypted>
//! ```

use std::collections::HashSet;

use minidom::Element;

use super::{
    MAX_DEPTH, MAX_DEVICES, MAX_KEY_DATA, MAX_KEYS, MAX_PAYLOAD, MAX_PREKEYS, attr_bool, attr_id31,
    attr_u32, b64_decode, b64_decode_djb_key, b64_decode_exact, b64_leaf, check_container_text,
    element_to_string, expect_root, leaf_text, ncname, own_children, parse_root, unknown,
};
use crate::omemo::{NS_V03 as NS, OmemoError, Result};

/// An OMEMO 0.3 device list (`<list/>`, item `current` of
/// [`NODE_V03_DEVICELIST`](crate::omemo::NODE_V03_DEVICELIST)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceListV03 {
    /// Device ids, in document order, unique, each in `1..=2^31−1`.
    pub devices: Vec<u32>,
}

impl DeviceListV03 {
    /// Parse from a `<list/>` element.
    pub fn from_element(el: &Element) -> Result<Self> {
        expect_root(el, "list", NS)?;
        check_container_text(el, "list")?;
        let mut devices = Vec::new();
        let mut seen = HashSet::new();
        for child in own_children(el, NS) {
            if child.name() != "device" {
                return Err(unknown("list", child));
            }
            if devices.len() == MAX_DEVICES {
                return Err(OmemoError::TooMany {
                    element: "device",
                    limit: MAX_DEVICES,
                });
            }
            check_container_text(child, "device")?;
            if child.children().next().is_some() {
                return Err(OmemoError::UnexpectedContent("device"));
            }
            let id = attr_id31(child, "device", "id")?;
            if !seen.insert(id) {
                return Err(OmemoError::Duplicate {
                    element: "list",
                    what: format!("device id {id}"),
                });
            }
            devices.push(id);
        }
        Ok(Self { devices })
    }

    /// Parse from XML text (bounded, see [`parse_root`]).
    pub fn parse(xml: &str) -> Result<Self> {
        Self::from_element(&parse_root(xml, MAX_DEPTH)?)
    }

    /// Serialize to a `<list/>` element.
    pub fn to_element(&self) -> Element {
        Element::builder("list", NS)
            .append_all(self.devices.iter().map(|id| {
                Element::builder("device", NS)
                    .attr(ncname("id"), id.to_string())
                    .build()
            }))
            .build()
    }

    /// Serialize to XML text.
    pub fn to_xml(&self) -> String {
        element_to_string(&self.to_element())
    }
}

/// A one-time prekey of an OMEMO 0.3 bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyV03 {
    /// `preKeyId` (any `u32`; libsignal clients use 1..2^24).
    pub id: u32,
    /// `0x05 ‖ u` Curve25519 public key.
    pub key: [u8; 33],
}

/// An OMEMO 0.3 bundle (`<bundle/>`, item `current` of
/// [`node_v03_bundle`](crate::omemo::node_v03_bundle)`(device_id)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleV03 {
    /// `signedPreKeyId`.
    pub signed_pre_key_id: u32,
    /// `0x05 ‖ u` signed prekey.
    pub signed_pre_key: [u8; 33],
    /// libsignal-variant XEdDSA signature by the identity key over the 33-byte `signed_pre_key`.
    pub signed_pre_key_signature: [u8; 64],
    /// `0x05 ‖ u` identity key.
    pub identity_key: [u8; 33],
    /// One-time prekeys, ids unique (the XEP wants ≥ 20, ~100; we accept 0..=1000).
    pub pre_keys: Vec<PreKeyV03>,
}

impl BundleV03 {
    /// Parse from a `<bundle/>` element.
    pub fn from_element(el: &Element) -> Result<Self> {
        expect_root(el, "bundle", NS)?;
        check_container_text(el, "bundle")?;
        let mut spk: Option<(u32, [u8; 33])> = None;
        let mut sig: Option<[u8; 64]> = None;
        let mut ik: Option<[u8; 33]> = None;
        let mut pre_keys: Option<Vec<PreKeyV03>> = None;
        for child in own_children(el, NS) {
            match child.name() {
                "signedPreKeyPublic" => {
                    if spk.is_some() {
                        return Err(OmemoError::DuplicateElement("signedPreKeyPublic"));
                    }
                    let id = attr_u32(child, "signedPreKeyPublic", "signedPreKeyId")?;
                    let text = leaf_text(child, "signedPreKeyPublic")?;
                    spk = Some((id, b64_decode_djb_key(&text, "signedPreKeyPublic")?));
                }
                "signedPreKeySignature" => {
                    if sig.is_some() {
                        return Err(OmemoError::DuplicateElement("signedPreKeySignature"));
                    }
                    let text = leaf_text(child, "signedPreKeySignature")?;
                    sig = Some(b64_decode_exact::<64>(
                        &text,
                        "signedPreKeySignature",
                        "64",
                    )?);
                }
                "identityKey" => {
                    if ik.is_some() {
                        return Err(OmemoError::DuplicateElement("identityKey"));
                    }
                    let text = leaf_text(child, "identityKey")?;
                    ik = Some(b64_decode_djb_key(&text, "identityKey")?);
                }
                "prekeys" => {
                    if pre_keys.is_some() {
                        return Err(OmemoError::DuplicateElement("prekeys"));
                    }
                    pre_keys = Some(parse_prekeys(child)?);
                }
                _ => return Err(unknown("bundle", child)),
            }
        }
        let (signed_pre_key_id, signed_pre_key) =
            spk.ok_or(OmemoError::MissingElement("signedPreKeyPublic"))?;
        Ok(Self {
            signed_pre_key_id,
            signed_pre_key,
            signed_pre_key_signature: sig
                .ok_or(OmemoError::MissingElement("signedPreKeySignature"))?,
            identity_key: ik.ok_or(OmemoError::MissingElement("identityKey"))?,
            pre_keys: pre_keys.ok_or(OmemoError::MissingElement("prekeys"))?,
        })
    }

    /// Parse from XML text (bounded, see [`parse_root`]).
    pub fn parse(xml: &str) -> Result<Self> {
        Self::from_element(&parse_root(xml, MAX_DEPTH)?)
    }

    /// Serialize to a `<bundle/>` element. (python-oldmemo's schema wants at least one
    /// prekey; publish some.)
    pub fn to_element(&self) -> Element {
        Element::builder("bundle", NS)
            .append(
                Element::builder("signedPreKeyPublic", NS)
                    .attr(ncname("signedPreKeyId"), self.signed_pre_key_id.to_string())
                    .append(super::b64_encode(&self.signed_pre_key))
                    .build(),
            )
            .append(b64_leaf(
                "signedPreKeySignature",
                NS,
                &self.signed_pre_key_signature,
            ))
            .append(b64_leaf("identityKey", NS, &self.identity_key))
            .append(
                Element::builder("prekeys", NS)
                    .append_all(self.pre_keys.iter().map(|pk| {
                        Element::builder("preKeyPublic", NS)
                            .attr(ncname("preKeyId"), pk.id.to_string())
                            .append(super::b64_encode(&pk.key))
                            .build()
                    }))
                    .build(),
            )
            .build()
    }

    /// Serialize to XML text.
    pub fn to_xml(&self) -> String {
        element_to_string(&self.to_element())
    }
}

fn parse_prekeys(el: &Element) -> Result<Vec<PreKeyV03>> {
    check_container_text(el, "prekeys")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for child in own_children(el, NS) {
        if child.name() != "preKeyPublic" {
            return Err(unknown("prekeys", child));
        }
        if out.len() == MAX_PREKEYS {
            return Err(OmemoError::TooMany {
                element: "preKeyPublic",
                limit: MAX_PREKEYS,
            });
        }
        let id = attr_u32(child, "preKeyPublic", "preKeyId")?;
        if !seen.insert(id) {
            return Err(OmemoError::Duplicate {
                element: "prekeys",
                what: format!("preKeyId {id}"),
            });
        }
        let text = leaf_text(child, "preKeyPublic")?;
        out.push(PreKeyV03 {
            id,
            key: b64_decode_djb_key(&text, "preKeyPublic")?,
        });
    }
    Ok(out)
}

/// One `<key/>` of an OMEMO 0.3 header: the key material encrypted for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyV03 {
    /// Recipient device id.
    pub rid: u32,
    /// `prekey='true'` (or `'1'`): `data` is a PreKeySignalMessage, else a SignalMessage.
    pub prekey: bool,
    /// The serialized (PreKey)SignalMessage.
    pub data: Vec<u8>,
}

/// An OMEMO 0.3 `<encrypted/>` element: a message (with payload) or a KeyTransportElement
/// (without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedV03 {
    /// Sender device id.
    pub sid: u32,
    /// One entry per recipient device; `rid`s unique. May be empty.
    pub keys: Vec<KeyV03>,
    /// The payload IV: 12 bytes (current) or 16 (early clients).
    pub iv: Vec<u8>,
    /// The AES-GCM ciphertext without tag; `None` for a KeyTransportElement.
    pub payload: Option<Vec<u8>>,
}

impl EncryptedV03 {
    /// The `<key/>` addressed to device `rid`, if any.
    pub fn key_for(&self, rid: u32) -> Option<&KeyV03> {
        self.keys.iter().find(|k| k.rid == rid)
    }

    /// Parse from an `<encrypted/>` element.
    pub fn from_element(el: &Element) -> Result<Self> {
        expect_root(el, "encrypted", NS)?;
        check_container_text(el, "encrypted")?;
        let mut header = None;
        let mut payload = None;
        for child in own_children(el, NS) {
            match child.name() {
                "header" => {
                    if header.is_some() {
                        return Err(OmemoError::DuplicateElement("header"));
                    }
                    header = Some(child);
                }
                "payload" => {
                    if payload.is_some() {
                        return Err(OmemoError::DuplicateElement("payload"));
                    }
                    let text = leaf_text(child, "payload")?;
                    payload = Some(b64_decode(&text, "payload", MAX_PAYLOAD)?);
                }
                _ => return Err(unknown("encrypted", child)),
            }
        }
        let header = header.ok_or(OmemoError::MissingElement("header"))?;
        check_container_text(header, "header")?;
        let sid = attr_id31(header, "header", "sid")?;
        let mut keys = Vec::new();
        let mut rids = HashSet::new();
        let mut iv = None;
        for child in own_children(header, NS) {
            match child.name() {
                "key" => {
                    if keys.len() == MAX_KEYS {
                        return Err(OmemoError::TooMany {
                            element: "key",
                            limit: MAX_KEYS,
                        });
                    }
                    let rid = attr_id31(child, "key", "rid")?;
                    if !rids.insert(rid) {
                        return Err(OmemoError::Duplicate {
                            element: "header",
                            what: format!("rid {rid}"),
                        });
                    }
                    let prekey = attr_bool(child, "key", "prekey")?;
                    let data = b64_decode(&leaf_text(child, "key")?, "key", MAX_KEY_DATA)?;
                    if data.is_empty() {
                        return Err(OmemoError::InvalidLength {
                            element: "key",
                            expected: "at least 1",
                            got: 0,
                        });
                    }
                    keys.push(KeyV03 { rid, prekey, data });
                }
                "iv" => {
                    if iv.is_some() {
                        return Err(OmemoError::DuplicateElement("iv"));
                    }
                    let bytes = b64_decode(&leaf_text(child, "iv")?, "iv", 16)?;
                    if bytes.len() != 12 && bytes.len() != 16 {
                        return Err(OmemoError::InvalidLength {
                            element: "iv",
                            expected: "12 or 16",
                            got: bytes.len(),
                        });
                    }
                    iv = Some(bytes);
                }
                _ => return Err(unknown("header", child)),
            }
        }
        Ok(Self {
            sid,
            keys,
            iv: iv.ok_or(OmemoError::MissingElement("iv"))?,
            payload,
        })
    }

    /// Parse from XML text (bounded, see [`parse_root`]).
    pub fn parse(xml: &str) -> Result<Self> {
        Self::from_element(&parse_root(xml, MAX_DEPTH)?)
    }

    /// Serialize to an `<encrypted/>` element (`prekey='true'` on PreKeySignalMessages).
    pub fn to_element(&self) -> Element {
        let header = Element::builder("header", NS)
            .attr(ncname("sid"), self.sid.to_string())
            .append_all(self.keys.iter().map(|k| {
                let b = Element::builder("key", NS).attr(ncname("rid"), k.rid.to_string());
                let b = if k.prekey {
                    b.attr(ncname("prekey"), "true")
                } else {
                    b
                };
                b.append(super::b64_encode(&k.data)).build()
            }))
            .append(b64_leaf("iv", NS, &self.iv))
            .build();
        let mut b = Element::builder("encrypted", NS).append(header);
        if let Some(p) = &self.payload {
            b = b.append(b64_leaf("payload", NS, p));
        }
        b.build()
    }

    /// Serialize to XML text.
    pub fn to_xml(&self) -> String {
        element_to_string(&self.to_element())
    }
}
