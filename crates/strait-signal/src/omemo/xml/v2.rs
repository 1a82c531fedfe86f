//! OMEMO 2 (`urn:xmpp:omemo:2`) elements, per the current XEP-0384 (v0.8.0+, signed labels since
//! v0.9.0).
//!
//! ```xml
//! <devices xmlns='urn:xmpp:omemo:2'>
//!   <device id='12345'/>
//!   <device id='4223' label='Gajim on Ubuntu Linux' labelsig='base64(64)'/>
//! </devices>
//!
//! <bundle xmlns='urn:xmpp:omemo:2'>          <!-- item id = device id -->
//!   <spk id='1'>base64(32)</spk>
//!   <spks>base64(64)</spks>
//!   <ik>base64(32, Ed25519)</ik>
//!   <prekeys><pk id='1'>base64(32)</pk>…</prekeys>
//! </bundle>
//!
//! <encrypted xmlns='urn:xmpp:omemo:2'>
//!   <header sid='27183'>
//!     <keys jid='juliet@capulet.lit'>
//!       <key rid='31415'>base64(OMEMOAuthenticatedMessage)</key>
//!     </keys>
//!     <keys jid='romeo@montague.lit'>
//!       <key kex='true' rid='12321'>base64(OMEMOKeyExchange)</key>
//!     </keys>
//!   </header>
//!   <payload>base64(AES-256-CBC of the SCE envelope)</payload>   <!-- absent: empty message -->
//! </encrypted>
//! ```

use std::collections::HashSet;

use minidom::Element;

use super::{
    MAX_DEPTH, MAX_DEVICES, MAX_JIDS, MAX_KEY_DATA, MAX_KEYS, MAX_LABEL_BYTES, MAX_PAYLOAD,
    MAX_PREKEYS, attr_bool, attr_id31, b64_decode, b64_decode_exact, b64_leaf, check_bare_jid,
    check_container_text, element_to_string, expect_root, leaf_text, ncname, own_children,
    parse_root, req_attr, unknown,
};
use crate::omemo::{NS_V2 as NS, OmemoError, Result};

/// One entry of an OMEMO 2 device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceV2 {
    /// Device id, `1..=2^31−1`.
    pub id: u32,
    /// Optional user-chosen label (XEP: keep it under 53 code points).
    pub label: Option<String>,
    /// Optional Ed25519 signature of the identity key over the UTF-8 label (`labelsig`, v0.9.0).
    pub label_sig: Option<[u8; 64]>,
}

/// An OMEMO 2 device list (`<devices/>`, item `current` of
/// [`NODE_V2_DEVICES`](crate::omemo::NODE_V2_DEVICES)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceListV2 {
    /// Devices, in document order, ids unique.
    pub devices: Vec<DeviceV2>,
}

impl DeviceListV2 {
    /// Parse from a `<devices/>` element.
    pub fn from_element(el: &Element) -> Result<Self> {
        expect_root(el, "devices", NS)?;
        check_container_text(el, "devices")?;
        let mut devices = Vec::new();
        let mut seen = HashSet::new();
        for child in own_children(el, NS) {
            if child.name() != "device" {
                return Err(unknown("devices", child));
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
                    element: "devices",
                    what: format!("device id {id}"),
                });
            }
            let label = match child.attr("label") {
                None => None,
                Some(l) if l.len() > MAX_LABEL_BYTES => {
                    return Err(OmemoError::InvalidAttribute {
                        element: "device",
                        attr: "label",
                        reason: "longer than 1024 bytes",
                    });
                }
                Some(l) if l.chars().any(char::is_control) => {
                    return Err(OmemoError::InvalidAttribute {
                        element: "device",
                        attr: "label",
                        reason: "control character",
                    });
                }
                Some(l) => Some(l.to_owned()),
            };
            let label_sig = match child.attr("labelsig") {
                None => None,
                Some(s) => Some(b64_decode_exact::<64>(s, "device", "64 (labelsig)")?),
            };
            devices.push(DeviceV2 {
                id,
                label,
                label_sig,
            });
        }
        Ok(Self { devices })
    }

    /// Parse from XML text (bounded, see [`parse_root`]).
    pub fn parse(xml: &str) -> Result<Self> {
        Self::from_element(&parse_root(xml, MAX_DEPTH)?)
    }

    /// Serialize to a `<devices/>` element.
    pub fn to_element(&self) -> Element {
        Element::builder("devices", NS)
            .append_all(self.devices.iter().map(|d| {
                let mut b = Element::builder("device", NS).attr(ncname("id"), d.id.to_string());
                if let Some(l) = &d.label {
                    b = b.attr(ncname("label"), l.as_str());
                }
                if let Some(s) = &d.label_sig {
                    b = b.attr(ncname("labelsig"), super::b64_encode(s));
                }
                b.build()
            }))
            .build()
    }

    /// Serialize to XML text.
    pub fn to_xml(&self) -> String {
        element_to_string(&self.to_element())
    }
}

/// A one-time prekey of an OMEMO 2 bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyV2 {
    /// Id, `1..=2^31−1`.
    pub id: u32,
    /// Raw 32-byte X25519 public key.
    pub key: [u8; 32],
}

/// An OMEMO 2 bundle (`<bundle/>`, item `<device id>` of
/// [`NODE_V2_BUNDLES`](crate::omemo::NODE_V2_BUNDLES)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleV2 {
    /// Signed prekey id, `1..=2^31−1`.
    pub spk_id: u32,
    /// Raw 32-byte X25519 signed prekey.
    pub spk: [u8; 32],
    /// Ed25519 signature by `ik` over the raw 32-byte `spk`.
    pub spks: [u8; 64],
    /// Ed25519 identity public key (RFC 8032 encoding).
    pub ik: [u8; 32],
    /// One-time prekeys (mandatory in OMEMO 2: at least one; XEP: ≥ 25, ~100), ids unique.
    pub pre_keys: Vec<PreKeyV2>,
}

impl BundleV2 {
    /// Parse from a `<bundle/>` element.
    pub fn from_element(el: &Element) -> Result<Self> {
        expect_root(el, "bundle", NS)?;
        check_container_text(el, "bundle")?;
        let mut spk: Option<(u32, [u8; 32])> = None;
        let mut spks: Option<[u8; 64]> = None;
        let mut ik: Option<[u8; 32]> = None;
        let mut pre_keys: Option<Vec<PreKeyV2>> = None;
        for child in own_children(el, NS) {
            match child.name() {
                "spk" => {
                    if spk.is_some() {
                        return Err(OmemoError::DuplicateElement("spk"));
                    }
                    let id = attr_id31(child, "spk", "id")?;
                    let key = b64_decode_exact::<32>(&leaf_text(child, "spk")?, "spk", "32")?;
                    spk = Some((id, key));
                }
                "spks" => {
                    if spks.is_some() {
                        return Err(OmemoError::DuplicateElement("spks"));
                    }
                    spks = Some(b64_decode_exact::<64>(
                        &leaf_text(child, "spks")?,
                        "spks",
                        "64",
                    )?);
                }
                "ik" => {
                    if ik.is_some() {
                        return Err(OmemoError::DuplicateElement("ik"));
                    }
                    ik = Some(b64_decode_exact::<32>(
                        &leaf_text(child, "ik")?,
                        "ik",
                        "32",
                    )?);
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
        let (spk_id, spk) = spk.ok_or(OmemoError::MissingElement("spk"))?;
        Ok(Self {
            spk_id,
            spk,
            spks: spks.ok_or(OmemoError::MissingElement("spks"))?,
            ik: ik.ok_or(OmemoError::MissingElement("ik"))?,
            pre_keys: pre_keys.ok_or(OmemoError::MissingElement("prekeys"))?,
        })
    }

    /// Parse from XML text (bounded, see [`parse_root`]).
    pub fn parse(xml: &str) -> Result<Self> {
        Self::from_element(&parse_root(xml, MAX_DEPTH)?)
    }

    /// Serialize to a `<bundle/>` element.
    pub fn to_element(&self) -> Element {
        Element::builder("bundle", NS)
            .append(
                Element::builder("spk", NS)
                    .attr(ncname("id"), self.spk_id.to_string())
                    .append(super::b64_encode(&self.spk))
                    .build(),
            )
            .append(b64_leaf("spks", NS, &self.spks))
            .append(b64_leaf("ik", NS, &self.ik))
            .append(
                Element::builder("prekeys", NS)
                    .append_all(self.pre_keys.iter().map(|pk| {
                        Element::builder("pk", NS)
                            .attr(ncname("id"), pk.id.to_string())
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

fn parse_prekeys(el: &Element) -> Result<Vec<PreKeyV2>> {
    check_container_text(el, "prekeys")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for child in own_children(el, NS) {
        if child.name() != "pk" {
            return Err(unknown("prekeys", child));
        }
        if out.len() == MAX_PREKEYS {
            return Err(OmemoError::TooMany {
                element: "pk",
                limit: MAX_PREKEYS,
            });
        }
        let id = attr_id31(child, "pk", "id")?;
        if !seen.insert(id) {
            return Err(OmemoError::Duplicate {
                element: "prekeys",
                what: format!("pk id {id}"),
            });
        }
        let key = b64_decode_exact::<32>(&leaf_text(child, "pk")?, "pk", "32")?;
        out.push(PreKeyV2 { id, key });
    }
    if out.is_empty() {
        return Err(OmemoError::Empty("pk"));
    }
    Ok(out)
}

/// One `<key/>` of an OMEMO 2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyV2 {
    /// Recipient device id.
    pub rid: u32,
    /// `kex='true'`: `data` is an OMEMOKeyExchange, else an OMEMOAuthenticatedMessage.
    pub kex: bool,
    /// The serialized protobuf.
    pub data: Vec<u8>,
}

/// The `<keys jid/>` group of one recipient account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysV2 {
    /// Bare JID of the recipient account.
    pub jid: String,
    /// At least one key; `rid`s unique within the group.
    pub keys: Vec<KeyV2>,
}

/// An OMEMO 2 `<encrypted/>` element: a message (with payload) or an empty message (without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedV2 {
    /// Sender device id.
    pub sid: u32,
    /// At least one group; JIDs unique.
    pub recipients: Vec<KeysV2>,
    /// The encrypted SCE envelope; `None` for an empty message.
    pub payload: Option<Vec<u8>>,
}

impl EncryptedV2 {
    /// The `<key/>` addressed to device `rid` of account `jid`, if any.
    pub fn key_for(&self, jid: &str, rid: u32) -> Option<&KeyV2> {
        self.recipients
            .iter()
            .find(|g| g.jid == jid)
            .and_then(|g| g.keys.iter().find(|k| k.rid == rid))
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
        let mut recipients: Vec<KeysV2> = Vec::new();
        let mut jids = HashSet::new();
        let mut total_keys = 0usize;
        for group in own_children(header, NS) {
            if group.name() != "keys" {
                return Err(unknown("header", group));
            }
            if recipients.len() == MAX_JIDS {
                return Err(OmemoError::TooMany {
                    element: "keys",
                    limit: MAX_JIDS,
                });
            }
            check_container_text(group, "keys")?;
            let jid = req_attr(group, "keys", "jid")?;
            check_bare_jid(jid, "keys", "jid")?;
            if !jids.insert(jid) {
                return Err(OmemoError::Duplicate {
                    element: "header",
                    what: "keys jid".into(),
                });
            }
            let mut keys = Vec::new();
            let mut rids = HashSet::new();
            for k in own_children(group, NS) {
                if k.name() != "key" {
                    return Err(unknown("keys", k));
                }
                total_keys += 1;
                if total_keys > MAX_KEYS {
                    return Err(OmemoError::TooMany {
                        element: "key",
                        limit: MAX_KEYS,
                    });
                }
                let rid = attr_id31(k, "key", "rid")?;
                if !rids.insert(rid) {
                    return Err(OmemoError::Duplicate {
                        element: "keys",
                        what: format!("rid {rid}"),
                    });
                }
                let kex = attr_bool(k, "key", "kex")?;
                let data = b64_decode(&leaf_text(k, "key")?, "key", MAX_KEY_DATA)?;
                if data.is_empty() {
                    return Err(OmemoError::InvalidLength {
                        element: "key",
                        expected: "at least 1",
                        got: 0,
                    });
                }
                keys.push(KeyV2 { rid, kex, data });
            }
            if keys.is_empty() {
                return Err(OmemoError::Empty("key"));
            }
            recipients.push(KeysV2 {
                jid: jid.to_owned(),
                keys,
            });
        }
        if recipients.is_empty() {
            return Err(OmemoError::Empty("keys"));
        }
        Ok(Self {
            sid,
            recipients,
            payload,
        })
    }

    /// Parse from XML text (bounded, see [`parse_root`]).
    pub fn parse(xml: &str) -> Result<Self> {
        Self::from_element(&parse_root(xml, MAX_DEPTH)?)
    }

    /// Serialize to an `<encrypted/>` element (`kex='true'` on key exchanges). python-twomemo's
    /// schema (and our parser) require at least one `<keys/>` group with at least one `<key/>`.
    pub fn to_element(&self) -> Element {
        let header = Element::builder("header", NS)
            .attr(ncname("sid"), self.sid.to_string())
            .append_all(self.recipients.iter().map(|g| {
                Element::builder("keys", NS)
                    .attr(ncname("jid"), g.jid.as_str())
                    .append_all(g.keys.iter().map(|k| {
                        let b = Element::builder("key", NS).attr(ncname("rid"), k.rid.to_string());
                        let b = if k.kex {
                            b.attr(ncname("kex"), "true")
                        } else {
                            b
                        };
                        b.append(super::b64_encode(&k.data)).build()
                    }))
                    .build()
            }))
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
