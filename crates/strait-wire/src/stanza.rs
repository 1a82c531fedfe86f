//! The stanza envelope: a top-level element of the stream with its routing
//! attributes parsed out and its content kept as canonical XML.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::{StreamError, StreamErrorCondition};
use crate::xml::{CanonicalWriter, XmlEvent, push_attr, write_attrs};

/// Namespace names used on the wire.
pub mod ns {
    pub const CLIENT: &str = "jabber:client";
    pub const SERVER: &str = "jabber:server";
    /// External components (XEP-0114), on the server's side of the connection.
    pub const COMPONENT: &str = "jabber:component:accept";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}

/// What a top-level element is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
    /// Anything else: nonzas such as `<starttls/>`, `<auth/>`, `<r/>`.
    Other,
}

impl StanzaKind {
    pub fn of(ns: &str, name: &str) -> Self {
        if ns != ns::CLIENT && ns != ns::SERVER && ns != ns::COMPONENT {
            return StanzaKind::Other;
        }
        match name {
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            "iq" => StanzaKind::Iq,
            _ => StanzaKind::Other,
        }
    }
}

/// A first-level child of a stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub ns: String,
    pub name: String,
    /// Byte range of this child's canonical XML inside [`Stanza::inner_xml`].
    pub range: Range<usize>,
}

/// A top-level element of the stream (depth 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stanza {
    pub ns: String,
    pub name: String,
    pub kind: StanzaKind,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub type_: Option<String>,
    /// `xml:lang`
    pub lang: Option<String>,
    /// Other attributes: (namespace or "", local name, value).
    pub other_attrs: Vec<(String, String, String)>,
    inner: String,
    children: Vec<Child>,
}

impl Stanza {
    pub fn new(ns: &str, name: &str) -> Self {
        Stanza::from_parts(ns.to_string(), name.to_string())
    }

    /// [`Self::new`] with names already owned (the parser's), not copied again.
    pub(crate) fn from_parts(ns: String, name: String) -> Self {
        Stanza {
            kind: StanzaKind::of(&ns, &name),
            ns,
            name,
            to: None,
            from: None,
            id: None,
            type_: None,
            lang: None,
            other_attrs: Vec::new(),
            inner: String::new(),
            children: Vec::new(),
        }
    }

    /// Sets one attribute of the envelope, routing the well-known ones to
    /// their fields.
    pub fn set_attr(&mut self, ns: &str, name: &str, value: impl Into<String>) {
        let value = value.into();
        let slot = match (ns, name) {
            ("", "to") => &mut self.to,
            ("", "from") => &mut self.from,
            ("", "id") => &mut self.id,
            ("", "type") => &mut self.type_,
            (ns::XML, "lang") => &mut self.lang,
            _ => {
                match self
                    .other_attrs
                    .iter_mut()
                    .find(|(n, l, _)| n == ns && l == name)
                {
                    Some(attr) => attr.2 = value,
                    None => self
                        .other_attrs
                        .push((ns.to_string(), name.to_string(), value)),
                }
                return;
            }
        };
        *slot = Some(value);
    }

    /// The value of an attribute other than the well-known ones.
    pub fn attr(&self, ns: &str, name: &str) -> Option<&str> {
        self.other_attrs
            .iter()
            .find(|(n, l, _)| n == ns && l == name)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn children(&self) -> &[Child] {
        &self.children
    }

    fn find_child(&self, ns: &str, name: &str) -> Option<&Child> {
        self.children.iter().find(|c| c.ns == ns && c.name == name)
    }

    pub fn has_child(&self, ns: &str, name: &str) -> bool {
        self.find_child(ns, name).is_some()
    }

    /// Canonical XML of the first matching child; it declares its own xmlns.
    pub fn child_xml(&self, ns: &str, name: &str) -> Option<&str> {
        self.find_child(ns, name)
            .map(|c| &self.inner[c.range.clone()])
    }

    /// Canonical XML of all content (children and text).
    pub fn inner_xml(&self) -> &str {
        &self.inner
    }

    /// Appends one element given as XML (with its own xmlns). The XML is
    /// re-parsed and written canonically, so the envelope stays canonical.
    ///
    /// # Panics
    /// If `xml` is not exactly one well-formed element: the caller passes
    /// XML it generated, so this is a programming error.
    pub fn push_child_xml(&mut self, xml: &str) {
        if let Err(e) = self.try_push_child_xml(xml) {
            panic!("push_child_xml given invalid XML ({e}): {xml}");
        }
    }

    /// Appends an empty child element `<name xmlns='ns' a='v' …/>` with unqualified
    /// attributes, written in canonical form directly: the same bytes as
    /// [`Self::push_child_xml`] would give, without parsing them back. For the elements the
    /// server adds to every message (a stanza id); `name` and the attribute names must be
    /// valid XML names (callers pass constants), values are escaped here.
    pub fn push_empty_child(&mut self, ns: &str, name: &str, attrs: &[(&str, &str)]) {
        debug_assert!(
            !name.is_empty()
                && !name.contains(|c: char| c.is_whitespace() || "<>/='\"".contains(c)),
            "not an element name: {name}"
        );
        let start = self.inner.len();
        self.inner.push('<');
        self.inner.push_str(name);
        crate::xml::push_attr(&mut self.inner, "xmlns", ns);
        for (n, v) in attrs {
            crate::xml::push_attr(&mut self.inner, n, v);
        }
        self.inner.push_str("/>");
        self.children.push(Child {
            ns: ns.to_string(),
            name: name.to_string(),
            range: start..self.inner.len(),
        });
    }

    /// [`Self::push_child_xml`] that reports invalid input instead of panicking.
    pub fn try_push_child_xml(&mut self, xml: &str) -> Result<(), StreamError> {
        let events = crate::parser::parse_fragment(xml)?;
        let starts = events
            .iter()
            .zip(std::iter::once(0usize).chain(depths(&events)))
            .filter(|(e, d)| *d == 0 && matches!(e, XmlEvent::Start { .. }))
            .count();
        if starts != 1 {
            return Err(StreamError::with_text(
                StreamErrorCondition::BadFormat,
                "expected exactly one element",
            ));
        }
        let mut w = CanonicalWriter::new(std::mem::take(&mut self.inner));
        let start = w.out.len();
        let mut head = None;
        for ev in &events {
            match ev {
                XmlEvent::Start { ns, name, attrs } => {
                    if head.is_none() {
                        head = Some((ns.clone(), name.clone()));
                    }
                    let it = attrs
                        .iter()
                        .map(|a| (a.ns.as_str(), a.name.as_str(), a.value.as_str()));
                    w.start(ns, name, it);
                }
                XmlEvent::Text(t) if w.depth() > 0 => w.text(t),
                XmlEvent::End => w.end(),
                _ => {}
            }
        }
        self.inner = w.out;
        let (ns, name) = head.unwrap_or_default();
        self.children.push(Child {
            ns,
            name,
            range: start..self.inner.len(),
        });
        Ok(())
    }

    /// Appends a minidom element as a child.
    pub fn push_child(&mut self, el: &minidom::Element) {
        let mut w = CanonicalWriter::new(std::mem::take(&mut self.inner));
        let start = w.out.len();
        write_minidom(&mut w, el);
        self.inner = w.out;
        self.children.push(Child {
            ns: el.ns(),
            name: el.name().to_string(),
            range: start..self.inner.len(),
        });
    }

    /// Moves the stanza and its content-namespace children to another
    /// content namespace (e.g. `jabber:server` to `jabber:client` when an
    /// s2s stanza is delivered to a client). First-level children always
    /// declare their namespace and descendants inherit it, so rewriting
    /// those declarations is enough.
    pub fn set_content_namespace(&mut self, new_ns: &str) {
        let old_ns = std::mem::replace(&mut self.ns, new_ns.to_string());
        self.kind = StanzaKind::of(&self.ns, &self.name);
        if old_ns == new_ns || !self.children.iter().any(|c| c.ns == old_ns) {
            return;
        }
        let mut inner = String::with_capacity(self.inner.len() + 16);
        let mut pos = 0;
        for child in &mut self.children {
            inner.push_str(&self.inner[pos..child.range.start]);
            pos = child.range.end;
            let xml = &self.inner[child.range.clone()];
            let start = inner.len();
            let head = format!("<{} xmlns='{}'", child.name, escape_attr(&old_ns));
            match xml.strip_prefix(head.as_str()) {
                Some(rest) if child.ns == old_ns => {
                    inner.push('<');
                    inner.push_str(&child.name);
                    crate::xml::push_attr(&mut inner, "xmlns", new_ns);
                    inner.push_str(rest);
                    child.ns = new_ns.to_string();
                }
                _ => inner.push_str(xml),
            }
            child.range = start..inner.len();
        }
        inner.push_str(&self.inner[pos..]);
        self.inner = inner;
    }

    /// Appends text content (escaped canonically).
    pub fn push_text(&mut self, text: &str) {
        self.inner.push_str(&escape_text(text));
    }

    /// Removes every child for which `f` returns true (text is kept).
    pub fn remove_children(&mut self, f: impl Fn(&Child) -> bool) {
        if !self.children.iter().any(&f) {
            return;
        }
        let mut inner = String::with_capacity(self.inner.len());
        let mut kept = Vec::with_capacity(self.children.len());
        let mut pos = 0;
        for child in &self.children {
            inner.push_str(&self.inner[pos..child.range.start]);
            pos = child.range.end;
            if !f(child) {
                let start = inner.len();
                inner.push_str(&self.inner[child.range.clone()]);
                kept.push(Child {
                    range: start..inner.len(),
                    ..child.clone()
                });
            }
        }
        inner.push_str(&self.inner[pos..]);
        self.inner = inner;
        self.children = kept;
    }

    /// Parses the children into minidom elements (text between them is dropped).
    pub fn payload(&self) -> Result<Vec<minidom::Element>, StreamError> {
        self.children.iter().map(|c| self.parse_child(c)).collect()
    }

    pub fn first_payload(&self) -> Result<Option<minidom::Element>, StreamError> {
        self.children
            .first()
            .map(|c| self.parse_child(c))
            .transpose()
    }

    fn parse_child(&self, c: &Child) -> Result<minidom::Element, StreamError> {
        self.inner[c.range.clone()]
            .parse::<minidom::Element>()
            .map_err(|e| StreamError::with_text(StreamErrorCondition::BadFormat, e.to_string()))
    }

    /// Builds an envelope from a server-generated element.
    pub fn from_element(el: &minidom::Element) -> Self {
        let ns = el.ns();
        let mut stanza = Stanza::new(&ns, el.name());
        for ((ans, name), value) in el.attrs().iter() {
            stanza.set_attr(ans.as_str(), name.as_str(), value.as_str());
        }
        for node in el.nodes() {
            match node {
                minidom::Node::Element(child) => stanza.push_child(child),
                minidom::Node::Text(text) => stanza.push_text(text),
            }
        }
        stanza
    }

    /// Writes the stanza canonically. `xmlns` is omitted when the stanza is in
    /// the stream's content namespace; attributes come in the order id, type,
    /// from, to, xml:lang, others.
    pub fn write_xml(&self, out: &mut Vec<u8>, stream_ns: &str) {
        out.extend_from_slice(self.to_xml(stream_ns).as_bytes());
    }

    pub fn to_xml(&self, stream_ns: &str) -> String {
        let mut out = String::with_capacity(self.inner.len() + 128);
        out.push('<');
        out.push_str(&self.name);
        if self.ns != stream_ns {
            push_attr(&mut out, "xmlns", &self.ns);
        }
        let fields = [
            ("id", &self.id),
            ("type", &self.type_),
            ("from", &self.from),
            ("to", &self.to),
            ("xml:lang", &self.lang),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                push_attr(&mut out, name, value);
            }
        }
        write_attrs(
            &mut out,
            self.other_attrs
                .iter()
                .map(|(n, l, v)| (n.as_str(), l.as_str(), v.as_str())),
        );
        if self.inner.is_empty() {
            out.push_str("/>");
        } else {
            out.push('>');
            out.push_str(&self.inner);
            out.push_str("</");
            out.push_str(&self.name);
            out.push('>');
        }
        out
    }

    /// The direct text content of the first matching child, unescaped (e.g.
    /// a message body).
    pub fn text_of_child(&self, ns: &str, name: &str) -> Option<String> {
        self.child_xml(ns, name).map(direct_text)
    }

    /// Records content produced by the stream parser.
    pub(crate) fn set_content(&mut self, inner: String, children: Vec<Child>) {
        self.inner = inner;
        self.children = children;
    }
}

/// The depth after each event (the depth before event i+1).
fn depths(events: &[XmlEvent]) -> impl Iterator<Item = usize> + '_ {
    events.iter().scan(0usize, |d, e| {
        match e {
            XmlEvent::Start { .. } => *d += 1,
            XmlEvent::End => *d = d.saturating_sub(1),
            _ => {}
        }
        Some(*d)
    })
}

fn write_minidom(w: &mut CanonicalWriter, el: &minidom::Element) {
    let attrs: Vec<(String, String, String)> = el
        .attrs()
        .iter()
        .map(|((n, l), v)| (n.to_string(), l.to_string(), v.to_string()))
        .collect();
    w.start(
        &el.ns(),
        el.name(),
        attrs
            .iter()
            .map(|(n, l, v)| (n.as_str(), l.as_str(), v.as_str())),
    );
    for node in el.nodes() {
        match node {
            minidom::Node::Element(child) => write_minidom(w, child),
            minidom::Node::Text(text) => w.text(text),
        }
    }
    w.end();
}

/// The direct text of one canonically written element. Relies on the
/// canonical form: `>` never appears unescaped inside a tag.
fn direct_text(xml: &str) -> String {
    let Some(head_end) = xml.find('>') else {
        return String::new();
    };
    if xml[..head_end].ends_with('/') {
        return String::new();
    }
    let mut text = String::new();
    let mut depth = 0usize;
    let mut rest = &xml[head_end + 1..];
    while let Some(lt) = rest.find('<') {
        if depth == 0 {
            text.push_str(&unescape(&rest[..lt]));
        }
        let tag_end = rest[lt..].find('>').map_or(rest.len(), |i| lt + i);
        let tag = &rest[lt..tag_end];
        if tag.starts_with("</") {
            if depth == 0 {
                break;
            }
            depth -= 1;
        } else if !tag.ends_with('/') {
            depth += 1;
        }
        rest = rest.get(tag_end + 1..).unwrap_or("");
    }
    text
}

/// Undoes [`escape_text`] / [`escape_attr`].
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let end = after.find(';').unwrap_or(after.len() - 1);
        let entity = &after[..=end];
        let ch = match entity {
            "&amp;" => Some('&'),
            "&lt;" => Some('<'),
            "&gt;" => Some('>'),
            "&apos;" => Some('\''),
            "&quot;" => Some('"'),
            _ => entity
                .strip_prefix("&#x")
                .and_then(|h| u32::from_str_radix(h.trim_end_matches(';'), 16).ok())
                .or_else(|| {
                    entity
                        .strip_prefix("&#")
                        .and_then(|d| d.trim_end_matches(';').parse().ok())
                })
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => out.push(c),
            None => out.push_str(entity),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The entity that stands for `b` in text (`attr` false) or in an attribute value, if `b`
/// needs one. Every byte that does is ASCII, so scanning bytes never splits a character.
const fn entity(b: u8, attr: bool) -> Option<&'static str> {
    match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\r' => Some("&#13;"),
        b'\'' if attr => Some("&apos;"),
        b'"' if attr => Some("&quot;"),
        b'\t' if attr => Some("&#9;"),
        b'\n' if attr => Some("&#10;"),
        _ => None,
    }
}

/// Appends `s` to `out`, escaped; runs without special bytes are copied whole (this is on
/// the path of every stanza written, so it scans bytes rather than decoding characters, eight
/// at a time: an OMEMO payload is kilobytes of base64 with nothing to escape).
pub(crate) fn push_escaped(out: &mut String, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    loop {
        i += if attr {
            escape_free_prefix(&bytes[i..], &SPECIALS_IN_ATTR)
        } else {
            escape_free_prefix(&bytes[i..], &SPECIALS_IN_TEXT)
        };
        let Some(&b) = bytes.get(i) else {
            break;
        };
        if let Some(e) = entity(b, attr) {
            out.push_str(&s[run..i]);
            out.push_str(e);
            run = i + 1;
        }
        i += 1;
    }
    out.push_str(&s[run..]);
}

/// The bytes [`entity`] escapes in text and in attribute values.
const SPECIALS_IN_TEXT: [u8; 4] = [b'&', b'<', b'>', b'\r'];
const SPECIALS_IN_ATTR: [u8; 8] = [b'&', b'<', b'>', b'\r', b'\'', b'"', b'\t', b'\n'];

/// How many leading bytes of `input` are none of `specials` (eight at a time).
fn escape_free_prefix<const N: usize>(input: &[u8], specials: &[u8; N]) -> usize {
    crate::swar::prefix_without::<N, false>(input, specials)
}

fn escape(s: &str, attr: bool) -> Cow<'_, str> {
    let clean = if attr {
        escape_free_prefix(s.as_bytes(), &SPECIALS_IN_ATTR)
    } else {
        escape_free_prefix(s.as_bytes(), &SPECIALS_IN_TEXT)
    };
    if clean == s.len() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    push_escaped(&mut out, s, attr);
    Cow::Owned(out)
}

/// Escapes character data: `&`, `<`, `>` (and CR, which a parser would
/// otherwise normalize away).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Escapes an attribute value for single- or double-quoted output: `&`, `<`,
/// `>`, `'`, `"`, and TAB/LF/CR (which attribute normalization would turn
/// into spaces).
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_empty_child_gives_the_same_bytes_as_parsing() {
        let parsed_ns = "urn:xmpp:sid:0";
        let mut a = Stanza::new(crate::ns::CLIENT, "message");
        a.push_child_xml("<body>x</body>");
        let mut b = a.clone();
        a.push_child_xml(&format!(
            "<stanza-id xmlns='{parsed_ns}' id='1&amp;&lt;&apos;\"' by='b@x'/>"
        ));
        b.push_empty_child(parsed_ns, "stanza-id", &[("id", "1&<'\""), ("by", "b@x")]);
        assert_eq!(a, b);
        assert_eq!(a.to_xml(crate::ns::CLIENT), b.to_xml(crate::ns::CLIENT));
        assert_eq!(b.children()[1].name, "stanza-id");
        assert_eq!(b.children()[1].ns, parsed_ns);
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_text("a<b>&'\"\r\n\t"), "a&lt;b&gt;&amp;'\"&#13;\n\t");
        assert_eq!(
            escape_attr("a<b>&'\"\r\n\t"),
            "a&lt;b&gt;&amp;&apos;&quot;&#13;&#10;&#9;"
        );
        assert!(matches!(escape_text("plain"), Cow::Borrowed(_)));
        // Escaping scans bytes: characters of several bytes next to escaped ones, at either
        // end and between, come through whole.
        assert_eq!(escape_text("é<\u{1F600}&ü"), "é&lt;\u{1F600}&amp;ü");
        assert_eq!(escape_attr("'日本'"), "&apos;日本&apos;");
        assert!(matches!(escape_attr("日本\u{1F600}"), Cow::Borrowed(_)));
        let mut out = String::from("x");
        push_escaped(&mut out, "a\u{e9}>", false);
        assert_eq!(out, "xa\u{e9}&gt;");
        assert_eq!(
            unescape("&lt;&#x1F600;&#233;&bogus;&amp;"),
            "<\u{1F600}é&bogus;&"
        );
    }

    /// The word-at-a-time scan against [`entity`], byte by byte: every special byte at every
    /// position of runs around the word size, with a second one after it, and characters of
    /// several bytes (whose bytes are never special) around them.
    #[test]
    fn escaping_scans_words_as_the_byte_loop_does() {
        let slow = |s: &str, attr: bool| {
            let mut out = String::new();
            for c in s.chars() {
                match u8::try_from(c).ok().and_then(|b| entity(b, attr)) {
                    Some(e) => out.push_str(e),
                    None => out.push(c),
                }
            }
            out
        };
        for b in 0..=255u8 {
            assert_eq!(entity(b, false).is_some(), SPECIALS_IN_TEXT.contains(&b));
            assert_eq!(entity(b, true).is_some(), SPECIALS_IN_ATTR.contains(&b));
        }
        let stops = [
            '&',
            '<',
            '>',
            '\r',
            '\'',
            '"',
            '\t',
            '\n',
            '=',
            '\u{e9}',
            '\u{1F600}',
        ];
        for len in 0..40 {
            let base: Vec<char> = (0..len).map(|i| (b'A' + (i % 26) as u8) as char).collect();
            for at in 0..len {
                for stop in stops {
                    for second in [None, Some('<'), Some('\'')] {
                        let mut v = base.clone();
                        v[at] = stop;
                        if let Some(c) = second
                            && at + 3 < len
                        {
                            v[at + 3] = c;
                        }
                        let s: String = v.into_iter().collect();
                        for attr in [false, true] {
                            let mut out = String::from(">");
                            push_escaped(&mut out, &s, attr);
                            assert_eq!(out[1..], slow(&s, attr), "{s:?} attr {attr}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn direct_text_skips_nested_elements() {
        assert_eq!(direct_text("<a xmlns='x'>1<b>2<c/></b>3<d/>4</a>"), "134");
        assert_eq!(direct_text("<a xmlns='x'/>"), "");
    }

    #[test]
    fn kinds() {
        assert_eq!(StanzaKind::of(ns::CLIENT, "message"), StanzaKind::Message);
        assert_eq!(StanzaKind::of(ns::SERVER, "iq"), StanzaKind::Iq);
        assert_eq!(
            StanzaKind::of(ns::COMPONENT, "message"),
            StanzaKind::Message
        );
        assert_eq!(StanzaKind::of("urn:x", "presence"), StanzaKind::Other);
    }
}
