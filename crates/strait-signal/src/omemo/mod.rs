//! OMEMO elements and payload encryption, for both namespaces in the field:
//!
//! * OMEMO 0.3 (`eu.siacs.conversations.axolotl`, XEP-0384 v0.3.0, 2018): Conversations, Dino,
//!   Gajim, Monal, python-oldmemo. Payload: AES-128-GCM, the Signal session carries `key ‖ tag`.
//! * OMEMO 2 (`urn:xmpp:omemo:2`, XEP-0384 v0.8+): payload is an XEP-0420 SCE `<envelope/>`
//!   encrypted with AES-256-CBC + truncated HMAC-SHA-256, the session carries `key ‖ hmac`.
//!
//! This module holds everything that does not depend on the Double Ratchet: [`payload`]
//! (symmetric payload crypto), [`xml`] (device lists, bundles and `<encrypted/>` elements as plain
//! Rust structs, parsed strictly from and serialized to `minidom` elements) and [`sce`] (the
//! SCE envelope of OMEMO 2). Keys and signatures are raw byte arrays; the session layer converts
//! them to its own key types.
//!
//! Written from XEP-0384 (v0.3.0 text at xsf/xeps `7fc80947` and the current text), XEP-0420 and
//! `../shared/ref/signal-omemo.md`; XML shapes cross-checked black-box against python-oldmemo /
//! python-twomemo 2.1.0 (see `tests/data/omemo/README.md`).

pub mod payload;
pub mod sce;
pub mod xml;

/// Namespace of OMEMO 0.3 (the "legacy" / "siacs" namespace every deployed client speaks).
pub const NS_V03: &str = "eu.siacs.conversations.axolotl";
/// PEP node holding an account's OMEMO 0.3 device list (single item, id `current`).
pub const NODE_V03_DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";
/// Prefix of the per-device OMEMO 0.3 bundle nodes; see [`node_v03_bundle`].
pub const NODE_V03_BUNDLES_PREFIX: &str = "eu.siacs.conversations.axolotl.bundles:";

/// Namespace of OMEMO 2 (XEP-0384 v0.8.0 and later).
pub const NS_V2: &str = "urn:xmpp:omemo:2";
/// PEP node holding an account's OMEMO 2 device list (single item, id `current`).
pub const NODE_V2_DEVICES: &str = "urn:xmpp:omemo:2:devices";
/// PEP node holding all OMEMO 2 bundles of an account, one item per device, item id = device id.
pub const NODE_V2_BUNDLES: &str = "urn:xmpp:omemo:2:bundles";

/// PEP item id used for device lists (and OMEMO 0.3 bundles), per XEP-0060 §12.20.
pub const ITEM_CURRENT: &str = "current";

/// The PEP node of the OMEMO 0.3 bundle of `device_id`:
/// `eu.siacs.conversations.axolotl.bundles:<device_id>`.
pub fn node_v03_bundle(device_id: u32) -> String {
    format!("{NODE_V03_BUNDLES_PREFIX}{device_id}")
}

/// Parse the device id out of an OMEMO 0.3 bundle node name (`…bundles:<id>`), strictly.
pub fn parse_node_v03_bundle(node: &str) -> Option<u32> {
    let id = node.strip_prefix(NODE_V03_BUNDLES_PREFIX)?;
    xml::parse_device_id_str(id).ok()
}

/// Smallest valid device id (both namespaces: "between 1 and 2^31 − 1").
pub const DEVICE_ID_MIN: u32 = 1;
/// Largest valid device id (both namespaces: "the positive numbers of a signed 32 bit integer").
pub const DEVICE_ID_MAX: u32 = 0x7FFF_FFFF;

/// Errors from OMEMO element parsing and payload crypto.
///
/// Messages name the offending element/attribute but never echo key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OmemoError {
    /// The input is not well-formed XML (or uses a construct we refuse, e.g. a DOCTYPE).
    #[error("malformed XML: {0}")]
    Xml(String),
    /// The serialized input exceeds a size bound.
    #[error("input of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// Elements are nested deeper than allowed.
    #[error("XML nesting deeper than {0} levels")]
    TooDeep(usize),
    /// The root (or a child) element has the wrong name or namespace.
    #[error("expected <{expected}/> in namespace '{ns}', found <{found}/>")]
    UnexpectedElement {
        /// Expected local name.
        expected: &'static str,
        /// Expected namespace.
        ns: &'static str,
        /// What was found (`{namespace}name`, truncated).
        found: String,
    },
    /// A required child element is missing.
    #[error("missing <{0}/>")]
    MissingElement(&'static str),
    /// A child element that may occur once occurs more often.
    #[error("more than one <{0}/>")]
    DuplicateElement(&'static str),
    /// An unknown child element in the protocol namespace.
    #[error("unknown element <{found}/> inside <{parent}/>")]
    UnknownElement {
        /// The parent.
        parent: &'static str,
        /// What was found (truncated).
        found: String,
    },
    /// A leaf element has element children, or a container holds non-whitespace text.
    #[error("unexpected content in <{0}/>")]
    UnexpectedContent(&'static str),
    /// A required attribute is missing.
    #[error("missing attribute '{attr}' on <{element}/>")]
    MissingAttribute {
        /// Element.
        element: &'static str,
        /// Attribute.
        attr: &'static str,
    },
    /// An attribute value is malformed or out of range.
    #[error("invalid attribute '{attr}' on <{element}/>: {reason}")]
    InvalidAttribute {
        /// Element.
        element: &'static str,
        /// Attribute.
        attr: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Element text (or attribute) is not valid base64.
    #[error("invalid base64 in <{0}/>")]
    InvalidBase64(&'static str),
    /// Decoded bytes have the wrong length.
    #[error("<{element}/> holds {got} bytes, expected {expected}")]
    InvalidLength {
        /// Element.
        element: &'static str,
        /// Expected length(s), human readable.
        expected: &'static str,
        /// Actual length.
        got: usize,
    },
    /// A public key does not carry the `0x05` (Curve25519) type byte.
    #[error("<{0}/> is not a 0x05-prefixed Curve25519 public key")]
    InvalidKeyType(&'static str),
    /// More elements than the bound allows.
    #[error("more than {limit} <{element}/> elements")]
    TooMany {
        /// Element.
        element: &'static str,
        /// The bound.
        limit: usize,
    },
    /// Fewer elements than required.
    #[error("at least one <{0}/> is required")]
    Empty(&'static str),
    /// The same id (or JID) occurs twice where ids must be unique.
    #[error("duplicate {what} in <{element}/>")]
    Duplicate {
        /// Element.
        element: &'static str,
        /// What is duplicated (`id 7`, `rid 7`, `jid`).
        what: String,
    },
    /// Key material handed to payload decryption has an unusable length.
    #[error("key material of {0} bytes has an unusable length")]
    InvalidKeyMaterial(usize),
    /// IV of an unusable length.
    #[error("IV of {0} bytes has an unusable length (expected 12 or 16)")]
    InvalidIv(usize),
    /// The ciphertext is too short to hold what it must.
    #[error("payload too short")]
    PayloadTooShort,
    /// GCM tag or HMAC check failed: the payload was tampered with or the key is wrong.
    #[error("payload authentication failed")]
    AuthenticationFailed,
    /// Authenticated, but the CBC padding is invalid (a sender bug).
    #[error("invalid payload padding")]
    InvalidPadding,
    /// Text that must be UTF-8 is not.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// An SCE affix element required by the caller is absent.
    #[error("SCE envelope lacks the <{0}/> affix")]
    MissingAffix(&'static str),
    /// An SCE affix does not match what the caller expects.
    #[error("SCE <{0}/> affix does not match the stanza")]
    AffixMismatch(&'static str),
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, OmemoError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_node_names() {
        assert_eq!(
            node_v03_bundle(31415),
            "eu.siacs.conversations.axolotl.bundles:31415"
        );
        assert_eq!(
            parse_node_v03_bundle("eu.siacs.conversations.axolotl.bundles:31415"),
            Some(31415)
        );
        assert_eq!(
            parse_node_v03_bundle("eu.siacs.conversations.axolotl.bundles:0"),
            None
        );
        assert_eq!(
            parse_node_v03_bundle("eu.siacs.conversations.axolotl.bundles:+1"),
            None
        );
        assert_eq!(parse_node_v03_bundle("urn:xmpp:omemo:2:bundles"), None);
    }
}
