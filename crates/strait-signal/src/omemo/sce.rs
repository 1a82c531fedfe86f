//! XEP-0420 Stanza Content Encryption envelopes, as profiled by OMEMO 2 (XEP-0384 § SCE Profile):
//!
//! ```xml
//! <envelope xmlns='urn:xmpp:sce:1'>
//!   <content>
//!     <body xmlns='jabber:client'>Hello World!</body>
//!   </content>
//!   <rpad>random padding</rpad>                 <!-- OMEMO: MUST -->
//!   <time stamp='2004-01-25T06:05:00+01:00'/>   <!-- MAY -->
//!   <to jid='juliet@capulet.lit'/>              <!-- MUST in group chats -->
//!   <from jid='romeo@montague.lit'/>            <!-- SHOULD -->
//! </envelope>
//! ```
//!
//! The serialized envelope is what [`super::payload::encrypt_v2`] encrypts. The `<rpad/>` is a
//! random string of 0..=200 characters (XEP-0420 § Affix Elements); receivers must not reject
//! longer ones, and we accept a missing one (it protects the sender, not the receiver).

use minidom::Element;
use rand_core::CryptoRngCore;

use super::xml::{
    MAX_JID_BYTES, MAX_XML_BYTES, check_container_text, describe, element_to_string, expect_root,
    leaf_text, ncname, parse_root, req_attr,
};
use super::{OmemoError, Result};

/// Namespace of XEP-0420 envelopes.
pub const NS_SCE: &str = "urn:xmpp:sce:1";
/// Namespace of the `<body/>` inside `<content/>`.
pub const NS_CLIENT: &str = "jabber:client";
/// Nesting bound when parsing envelopes (content may carry arbitrary extension elements).
pub const MAX_ENVELOPE_DEPTH: usize = 32;
/// Longest random padding we generate.
pub const RPAD_MAX_CHARS: usize = 200;

const RPAD_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_.!";

/// A random `<rpad/>` text of uniformly random length in `0..=200`.
pub fn random_rpad(rng: &mut impl CryptoRngCore) -> String {
    let len = (rng.next_u32() % (RPAD_MAX_CHARS as u32 + 1)) as usize;
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| RPAD_ALPHABET[*b as usize % RPAD_ALPHABET.len()] as char)
        .collect()
}

/// An SCE `<envelope/>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The children of `<content/>` (the protected extension elements, e.g. `<body/>`).
    pub content: Vec<Element>,
    /// `<rpad/>` text; `None` if absent.
    pub rpad: Option<String>,
    /// `<time stamp/>`, an XEP-0082 DateTime.
    pub time: Option<String>,
    /// `<to jid/>`: bare JID of the recipient (account or group chat).
    pub to: Option<String>,
    /// `<from jid/>`: bare JID of the sender.
    pub from: Option<String>,
}

impl Envelope {
    /// An envelope around `content` with fresh random padding and no other affixes.
    pub fn new(content: Vec<Element>, rng: &mut impl CryptoRngCore) -> Self {
        Self {
            content,
            rpad: Some(random_rpad(rng)),
            time: None,
            to: None,
            from: None,
        }
    }

    /// An envelope holding `<body xmlns='jabber:client'>body</body>`, with random padding, the
    /// `<from/>` affix the OMEMO profile asks for, and `<to/>` if given (required in group chats).
    pub fn with_body(
        body: &str,
        from: &str,
        to: Option<&str>,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let body = Element::builder("body", NS_CLIENT).append(body).build();
        let mut env = Self::new(vec![body], rng);
        env.from = Some(from.to_owned());
        env.to = to.map(str::to_owned);
        env
    }

    /// Set the `<time stamp/>` affix (an XEP-0082 DateTime, formatted by the caller).
    pub fn with_time(mut self, stamp: &str) -> Self {
        self.time = Some(stamp.to_owned());
        self
    }

    /// The text of the first `<body xmlns='jabber:client'/>` in the content, if any.
    pub fn body(&self) -> Option<String> {
        self.content
            .iter()
            .find(|e| e.is("body", NS_CLIENT))
            .map(Element::text)
    }

    /// Serialize to an `<envelope/>` element (affixes after `<content/>`, in the XEP's order).
    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("envelope", NS_SCE).append(
            Element::builder("content", NS_SCE)
                .append_all(self.content.iter().cloned())
                .build(),
        );
        if let Some(r) = &self.rpad {
            b = b.append(Element::builder("rpad", NS_SCE).append(r.as_str()).build());
        }
        if let Some(t) = &self.time {
            b = b.append(
                Element::builder("time", NS_SCE)
                    .attr(ncname("stamp"), t.as_str())
                    .build(),
            );
        }
        if let Some(j) = &self.to {
            b = b.append(
                Element::builder("to", NS_SCE)
                    .attr(ncname("jid"), j.as_str())
                    .build(),
            );
        }
        if let Some(j) = &self.from {
            b = b.append(
                Element::builder("from", NS_SCE)
                    .attr(ncname("jid"), j.as_str())
                    .build(),
            );
        }
        b.build()
    }

    /// Serialize to UTF-8 bytes: the plaintext of the OMEMO 2 payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        element_to_string(&self.to_element()).into_bytes()
    }

    /// Parse decrypted payload bytes (UTF-8, bounded size and depth).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_XML_BYTES {
            return Err(OmemoError::TooLarge {
                size: bytes.len(),
                limit: MAX_XML_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| OmemoError::InvalidUtf8)?;
        Self::from_element(&parse_root(text, MAX_ENVELOPE_DEPTH)?)
    }

    /// Parse from an `<envelope/>` element. `<content/>` is required; each affix may occur once;
    /// unknown elements in the SCE namespace are errors, elements of other namespaces ignored.
    pub fn from_element(el: &Element) -> Result<Self> {
        expect_root(el, "envelope", NS_SCE)?;
        check_container_text(el, "envelope")?;
        let mut env = Self {
            content: Vec::new(),
            rpad: None,
            time: None,
            to: None,
            from: None,
        };
        let mut have_content = false;
        for child in el.children().filter(|c| c.ns() == NS_SCE) {
            match child.name() {
                "content" => {
                    if have_content {
                        return Err(OmemoError::DuplicateElement("content"));
                    }
                    have_content = true;
                    env.content = child.children().cloned().collect();
                }
                "rpad" => {
                    if env.rpad.is_some() {
                        return Err(OmemoError::DuplicateElement("rpad"));
                    }
                    env.rpad = Some(leaf_text(child, "rpad")?);
                }
                "time" => {
                    if env.time.is_some() {
                        return Err(OmemoError::DuplicateElement("time"));
                    }
                    let stamp = req_attr(child, "time", "stamp")?;
                    if !is_xep0082_datetime(stamp) {
                        return Err(OmemoError::InvalidAttribute {
                            element: "time",
                            attr: "stamp",
                            reason: "not an XEP-0082 DateTime",
                        });
                    }
                    env.time = Some(stamp.to_owned());
                }
                "to" => {
                    if env.to.is_some() {
                        return Err(OmemoError::DuplicateElement("to"));
                    }
                    env.to = Some(affix_jid(child, "to")?);
                }
                "from" => {
                    if env.from.is_some() {
                        return Err(OmemoError::DuplicateElement("from"));
                    }
                    env.from = Some(affix_jid(child, "from")?);
                }
                _ => {
                    return Err(OmemoError::UnknownElement {
                        parent: "envelope",
                        found: describe(child),
                    });
                }
            }
        }
        if !have_content {
            return Err(OmemoError::MissingElement("content"));
        }
        Ok(env)
    }

    /// Check the affixes against the enclosing stanza (XEP-0420: receivers MUST check them).
    ///
    /// * `<from/>`, when present, must name `stanza_from_bare`'s account (its JID may be bare
    ///   or full: XEP-0420 allows either);
    /// * `<to/>`, when present, must equal `stanza_to_bare`; with `require_to` (messages via a
    ///   group chat, where the OMEMO profile makes `<to/>` mandatory) it must be present.
    ///
    /// JIDs are compared after ASCII case folding; pass bare JIDs already prepared
    /// (RFC 7622) by the caller.
    pub fn verify_affixes(
        &self,
        stanza_from_bare: &str,
        stanza_to_bare: &str,
        require_to: bool,
    ) -> Result<()> {
        if self
            .from
            .as_deref()
            .is_some_and(|from| !bare_of(from).eq_ignore_ascii_case(stanza_from_bare))
        {
            return Err(OmemoError::AffixMismatch("from"));
        }
        match &self.to {
            Some(to) if !to.eq_ignore_ascii_case(stanza_to_bare) => {
                Err(OmemoError::AffixMismatch("to"))
            }
            None if require_to => Err(OmemoError::MissingAffix("to")),
            _ => Ok(()),
        }
    }
}

/// The bare part of a JID (what precedes a `/`).
pub(crate) fn bare_of(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

fn affix_jid(el: &Element, name: &'static str) -> Result<String> {
    let jid = req_attr(el, name, "jid")?;
    if jid.is_empty()
        || jid.len() > MAX_JID_BYTES
        || jid.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(OmemoError::InvalidAttribute {
            element: name,
            attr: "jid",
            reason: "not a JID",
        });
    }
    Ok(jid.to_owned())
}

/// XEP-0082 DateTime: `CCYY-MM-DDThh:mm:ss[.s+](Z|±hh:mm)`.
fn is_xep0082_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 9 {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z') => i + 1 == b.len(),
        Some(b'+') | Some(b'-') => {
            b.len() == i + 6 && digits(i + 1..i + 3) && b[i + 3] == b':' && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_from_affix_names_the_account_bare_or_full() {
        let mut rng = rand_core::OsRng;
        let full = Envelope::with_body("hi", "juliet@capulet.lit/balcony", None, &mut rng);
        assert!(
            full.verify_affixes("juliet@capulet.lit", "romeo@montague.lit", false)
                .is_ok()
        );
        let bare = Envelope::with_body("hi", "Juliet@capulet.lit", None, &mut rng);
        assert!(
            bare.verify_affixes("juliet@capulet.lit", "romeo@montague.lit", false)
                .is_ok()
        );
        let other =
            Envelope::with_body("hi", "nurse@capulet.lit/juliet@capulet.lit", None, &mut rng);
        assert!(matches!(
            other.verify_affixes("juliet@capulet.lit", "romeo@montague.lit", false),
            Err(OmemoError::AffixMismatch("from"))
        ));
    }

    #[test]
    fn datetimes() {
        for ok in [
            "2004-01-25T06:05:00+01:00",
            "2004-01-25T06:05:00Z",
            "2004-01-25T06:05:00.123Z",
            "2004-01-25T06:05:00.1-11:30",
        ] {
            assert!(is_xep0082_datetime(ok), "{ok}");
        }
        for bad in [
            "",
            "2004-01-25",
            "2004-01-25T06:05:00",
            "2004-01-25T06:05:00+0100",
            "2004-01-25T06:05:00.Z",
            "2004-01-25 06:05:00Z",
            "2004-01-25T06:05:00Zjunk",
        ] {
            assert!(!is_xep0082_datetime(bad), "{bad}");
        }
    }
}
