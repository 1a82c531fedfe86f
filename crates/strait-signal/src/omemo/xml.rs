//! XML (de)serialization of OMEMO device lists, bundles and `<encrypted/>` elements, for OMEMO 0.3
//! ([`v03`]) and OMEMO 2 ([`v2`]), on `minidom` elements.
//!
//! Parsing is strict and safe on hostile input:
//! * [`parse_root`] bounds the text size ([`MAX_XML_BYTES`]) and the nesting depth before
//!   `minidom` builds a tree, and refuses DOCTYPE declarations;
//! * element counts are bounded ([`MAX_DEVICES`], [`MAX_PREKEYS`], [`MAX_KEYS`], [`MAX_JIDS`]) and
//!   checked before anything is decoded; ids and JIDs must be unique where the protocol needs it;
//! * ids are plain decimal (no sign, no leading zeros, no whitespace); device ids lie in
//!   `1..=2^31−1` in both namespaces, OMEMO 2 key ids too; OMEMO 0.3 key ids are any `u32`
//!   (the v0.3 schema and the libsignal protobuf say no more);
//! * base64 is the standard alphabet, padding optional on input, whitespace between characters
//!   tolerated (Conversations wraps lines, `xs:base64Binary` allows it); keys and signatures
//!   must have their exact lengths;
//! * unknown child elements in the OMEMO namespace are errors, elements of other namespaces
//!   are ignored (RFC 6120 § 8.4 extensibility), as are unknown attributes.
//!
//! Serialization emits the default-namespace form python-oldmemo / python-twomemo emit and
//! their `etree` parsers (XML-schema validated) accept, with padded base64.

pub mod v03;
pub mod v2;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use minidom::Element;
use minidom::rxml::NcName;

use super::{DEVICE_ID_MAX, DEVICE_ID_MIN, OmemoError, Result};

/// Largest serialized element accepted by the `parse` functions.
pub const MAX_XML_BYTES: usize = 1 << 20;
/// Deepest element nesting accepted by the `parse` functions (ours need 4).
pub const MAX_DEPTH: usize = 16;
/// Most `<device/>` entries accepted in a device list.
pub const MAX_DEVICES: usize = 1000;
/// Most one-time prekeys accepted in a bundle.
pub const MAX_PREKEYS: usize = 1000;
/// Most `<key/>` elements accepted in one `<encrypted/>` element (over all JIDs).
pub const MAX_KEYS: usize = 1000;
/// Most `<keys jid/>` groups accepted in one OMEMO 2 `<encrypted/>` element.
pub const MAX_JIDS: usize = 1000;
/// Largest decoded `<key/>` (a PreKeySignalMessage is ~175 bytes, an OMEMOKeyExchange ~200).
pub const MAX_KEY_DATA: usize = 4096;
/// Largest decoded `<payload/>`.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Longest accepted OMEMO 2 device label, in bytes (the XEP recommends < 53 code points).
pub const MAX_LABEL_BYTES: usize = 1024;
/// Longest accepted JID, in bytes (RFC 7622: 3 × 1023 plus separators).
pub const MAX_JID_BYTES: usize = 3071;

const B64_LENIENT_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parse `input` into a `minidom` element after bounding its size ([`MAX_XML_BYTES`]) and
/// nesting depth (`max_depth`), refusing DOCTYPE/entity declarations.
pub fn parse_root(input: &str, max_depth: usize) -> Result<Element> {
    if input.len() > MAX_XML_BYTES {
        return Err(OmemoError::TooLarge {
            size: input.len(),
            limit: MAX_XML_BYTES,
        });
    }
    check_depth(input.as_bytes(), max_depth)?;
    input
        .parse::<Element>()
        .map_err(|e| OmemoError::Xml(truncate(&e.to_string(), 200)))
}

/// Serialize an element to a string (no XML declaration).
pub fn element_to_string(el: &Element) -> String {
    String::from(el)
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Result<usize> {
    b.get(from..)
        .and_then(|rest| rest.windows(pat.len()).position(|w| w == pat))
        .map(|p| from + p)
        .ok_or_else(|| OmemoError::Xml("unterminated markup".into()))
}

/// Upper bound of the element nesting of (well-formed) XML text, computed without building a
/// tree — `minidom` trees are dropped recursively, so depth must be bounded before parsing.
fn check_depth(b: &[u8], max_depth: usize) -> Result<()> {
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = find(b, i + 4, b"-->")? + 3;
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(b, i + 9, b"]]>")? + 3;
        } else if rest.starts_with(b"<!") {
            return Err(OmemoError::Xml(
                "declarations (DOCTYPE) are not allowed".into(),
            ));
        } else if rest.starts_with(b"<?") {
            i = find(b, i + 2, b"?>")? + 2;
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = find(b, i + 2, b">")? + 1;
        } else {
            let mut j = i + 1;
            let mut quote: Option<u8> = None;
            loop {
                let Some(&c) = b.get(j) else {
                    return Err(OmemoError::Xml("unterminated start tag".into()));
                };
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == b'"' || c == b'\'' => quote = Some(c),
                    None if c == b'>' => break,
                    None => {}
                }
                j += 1;
            }
            if b[j - 1] != b'/' {
                depth += 1;
                if depth > max_depth {
                    return Err(OmemoError::TooDeep(max_depth));
                }
            }
            i = j + 1;
        }
    }
    Ok(())
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(crate) fn describe(el: &Element) -> String {
    truncate(&format!("{{{}}}{}", el.ns(), el.name()), 120)
}

pub(crate) fn expect_root(el: &Element, name: &'static str, ns: &'static str) -> Result<()> {
    if el.name() == name && el.ns() == ns {
        Ok(())
    } else {
        Err(OmemoError::UnexpectedElement {
            expected: name,
            ns,
            found: describe(el),
        })
    }
}

pub(crate) fn ncname(name: &'static str) -> NcName {
    NcName::try_from(name).expect("attribute names used here are valid NCNames")
}

/// Text of an element that must not have element children.
pub(crate) fn leaf_text(el: &Element, name: &'static str) -> Result<String> {
    if el.children().next().is_some() {
        return Err(OmemoError::UnexpectedContent(name));
    }
    Ok(el.text())
}

/// Containers may hold whitespace between their children, nothing else.
pub(crate) fn check_container_text(el: &Element, name: &'static str) -> Result<()> {
    if el.texts().any(|t| !t.chars().all(is_xml_space)) {
        return Err(OmemoError::UnexpectedContent(name));
    }
    Ok(())
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Decode base64 text, tolerating XML whitespace and missing padding, rejecting anything else.
pub(crate) fn b64_decode(text: &str, element: &'static str, max_len: usize) -> Result<Vec<u8>> {
    // Bound the work before allocating: base64 expands by 4/3.
    if text.len() / 4 * 3 > max_len.saturating_add(3) * 2 {
        return Err(OmemoError::InvalidLength {
            element,
            expected: "a bounded size",
            got: text.len() / 4 * 3,
        });
    }
    let compact: String = text.chars().filter(|c| !is_xml_space(*c)).collect();
    let bytes = B64_LENIENT_PADDING
        .decode(compact.as_bytes())
        .map_err(|_| OmemoError::InvalidBase64(element))?;
    if bytes.len() > max_len {
        return Err(OmemoError::InvalidLength {
            element,
            expected: "a bounded size",
            got: bytes.len(),
        });
    }
    Ok(bytes)
}

pub(crate) fn b64_decode_exact<const N: usize>(
    text: &str,
    element: &'static str,
    expected: &'static str,
) -> Result<[u8; N]> {
    let v = b64_decode(text, element, N)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| OmemoError::InvalidLength {
        element,
        expected,
        got: v.len(),
    })
}

/// A 33-byte `0x05 ‖ u` Curve25519 public key, as OMEMO 0.3 / libsignal serialize them.
pub(crate) fn b64_decode_djb_key(text: &str, element: &'static str) -> Result<[u8; 33]> {
    let key = b64_decode_exact::<33>(text, element, "33 (0x05 ‖ 32-byte key)")?;
    if key[0] != 0x05 {
        return Err(OmemoError::InvalidKeyType(element));
    }
    Ok(key)
}

/// Standard base64 with padding.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Strict decimal `u32`: ASCII digits only, no sign, no leading zeros, no whitespace.
pub(crate) fn parse_decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Parse a device id string strictly (decimal, `1..=2^31−1`).
pub fn parse_device_id_str(s: &str) -> Result<u32> {
    let id = parse_decimal_u32(s).ok_or(OmemoError::InvalidAttribute {
        element: "device",
        attr: "id",
        reason: "not a decimal integer",
    })?;
    if is_valid_device_id(id) {
        Ok(id)
    } else {
        Err(OmemoError::InvalidAttribute {
            element: "device",
            attr: "id",
            reason: "outside 1..=2147483647",
        })
    }
}

/// Whether `id` is a valid OMEMO device id (`1..=2^31−1`, both namespaces).
pub fn is_valid_device_id(id: u32) -> bool {
    (DEVICE_ID_MIN..=DEVICE_ID_MAX).contains(&id)
}

pub(crate) fn req_attr<'a>(
    el: &'a Element,
    element: &'static str,
    attr: &'static str,
) -> Result<&'a str> {
    el.attr(attr)
        .ok_or(OmemoError::MissingAttribute { element, attr })
}

pub(crate) fn attr_u32(el: &Element, element: &'static str, attr: &'static str) -> Result<u32> {
    parse_decimal_u32(req_attr(el, element, attr)?).ok_or(OmemoError::InvalidAttribute {
        element,
        attr,
        reason: "not a decimal integer in 0..=4294967295",
    })
}

/// A required attribute holding an id in `1..=2^31−1` (device ids; OMEMO 2 key ids).
pub(crate) fn attr_id31(el: &Element, element: &'static str, attr: &'static str) -> Result<u32> {
    let id = attr_u32(el, element, attr)?;
    if is_valid_device_id(id) {
        Ok(id)
    } else {
        Err(OmemoError::InvalidAttribute {
            element,
            attr,
            reason: "outside 1..=2147483647",
        })
    }
}

/// An optional `xs:boolean` attribute (`true`/`1`/`false`/`0`), default `false`.
pub(crate) fn attr_bool(el: &Element, element: &'static str, attr: &'static str) -> Result<bool> {
    match el.attr(attr) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(OmemoError::InvalidAttribute {
            element,
            attr,
            reason: "not a boolean (true, false, 1, 0)",
        }),
    }
}

/// Minimal bare-JID sanity check for OMEMO 2 `<keys jid/>` and SCE affixes: non-empty, bounded,
/// no resource, no whitespace or control characters. Full RFC 7622 preparation is the caller's.
pub(crate) fn check_bare_jid(jid: &str, element: &'static str, attr: &'static str) -> Result<()> {
    let bad = |reason| OmemoError::InvalidAttribute {
        element,
        attr,
        reason,
    };
    if jid.is_empty() {
        return Err(bad("empty JID"));
    }
    if jid.len() > MAX_JID_BYTES {
        return Err(bad("JID too long"));
    }
    if jid.contains('/') {
        return Err(bad("not a bare JID"));
    }
    if jid.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace or control character in JID"));
    }
    if jid.starts_with('@') || jid.ends_with('@') || jid.matches('@').count() > 1 {
        return Err(bad("malformed JID"));
    }
    Ok(())
}

/// Iterate over the children of `el` that are in `ns`; children in other namespaces are skipped.
pub(crate) fn own_children<'a>(
    el: &'a Element,
    ns: &'static str,
) -> impl Iterator<Item = &'a Element> + 'a {
    el.children().filter(move |c| c.ns() == ns)
}

pub(crate) fn unknown(parent: &'static str, child: &Element) -> OmemoError {
    OmemoError::UnknownElement {
        parent,
        found: describe(child),
    }
}

/// A leaf element with base64 text.
pub(crate) fn b64_leaf(name: &'static str, ns: &'static str, bytes: &[u8]) -> Element {
    Element::builder(name, ns).append(b64_encode(bytes)).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scanner() {
        assert!(check_depth(b"<a><b><c/></b></a>", 2).is_ok());
        assert_eq!(
            check_depth(b"<a><b><c></c></b></a>", 2),
            Err(OmemoError::TooDeep(2))
        );
        // '/>' and '>' inside attribute values do not fool it.
        assert_eq!(
            check_depth(b"<a x='/>'><b y=\"/>\"><c z='>'></c></b></a>", 2),
            Err(OmemoError::TooDeep(2))
        );
        assert!(check_depth(b"<a><!-- <b><c><d> --><![CDATA[<x><y><z>]]></a>", 1).is_ok());
        assert!(check_depth(b"<!DOCTYPE a [<!ENTITY x 'y'>]><a/>", 4).is_err());
        assert!(check_depth(b"<a", 4).is_err());
    }

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal_u32("0"), Some(0));
        assert_eq!(parse_decimal_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_decimal_u32("4294967296"), None);
        for bad in ["", "+1", "-1", " 1", "1 ", "01", "1e3", "0x10", "١"] {
            assert_eq!(parse_decimal_u32(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base64_forms() {
        assert_eq!(b64_decode("AAEC", "k", 16).unwrap(), vec![0, 1, 2]);
        assert_eq!(b64_decode("AAE=", "k", 16).unwrap(), vec![0, 1]);
        assert_eq!(b64_decode("AAE", "k", 16).unwrap(), vec![0, 1]);
        assert_eq!(b64_decode(" AA\nEC\r\n", "k", 16).unwrap(), vec![0, 1, 2]);
        assert!(b64_decode("AA-_", "k", 16).is_err());
        assert!(b64_decode("AAE*", "k", 16).is_err());
        assert!(b64_decode("A", "k", 16).is_err());
        // Non-canonical trailing bits are rejected.
        assert!(b64_decode("AAF=", "k", 16).is_err());
        assert!(b64_decode(&"AAAA".repeat(100), "k", 16).is_err());
    }

    #[test]
    fn jids() {
        assert!(check_bare_jid("juliet@capulet.lit", "keys", "jid").is_ok());
        assert!(check_bare_jid("capulet.lit", "keys", "jid").is_ok());
        for bad in ["", "a@b/c", "a b@c", "@c", "a@", "a@b@c", "a\u{0}@b"] {
            assert!(check_bare_jid(bad, "keys", "jid").is_err(), "{bad:?}");
        }
    }
}
