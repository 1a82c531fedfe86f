//! Incremental parsing of an XMPP stream into stream-level events, within
//! byte, depth and attribute budgets.

use crate::error::{StreamError, StreamErrorCondition as C};
use crate::limits::Limits;
use crate::stanza::{Child, Stanza, ns};
use crate::token::{MAX_LOOKAHEAD, Stop, Strict, Token, Tokenize};
use crate::xml::{CanonicalWriter, Resolver, XmlEvent};

/// Longest single token (name, attribute value, text chunk) the tokenizer buffers.
const MAX_TOKEN: usize = 8192;

/// The attributes of the peer's `<stream:stream>` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    pub id: Option<String>,
    /// The content namespace (`jabber:client`, `jabber:server` or, from an external
    /// component, `jabber:component:accept`).
    pub default_ns: String,
}

/// What the parser produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    StreamOpen(StreamHeader),
    Element(Stanza),
    StreamClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the stream header.
    Prolog,
    /// Inside `<stream:stream>`.
    Open,
    /// After `</stream:stream>`: further input is ignored.
    Closed,
}

/// The stanza being read: its envelope and the canonical writer for its content.
#[derive(Debug)]
struct Building {
    stanza: Stanza,
    writer: CanonicalWriter,
    children: Vec<Child>,
    child_start: usize,
}

/// Sans-I/O XMPP stream parser. Feed bytes with [`StreamParser::feed`], pull
/// events with [`StreamParser::next_event`]. `T` is the XML tokenizer: ours
/// ([`Strict`]) unless a test asks for rxml's ([`crate::token::Reference`]).
#[derive(Debug)]
pub struct StreamParser<T: Tokenize = Strict> {
    limits: Limits,
    raw: T,
    resolver: Resolver,
    buf: Vec<u8>,
    pos: usize,
    /// Raw bytes consumed since the last stanza (or the header) ended.
    counted: usize,
    phase: Phase,
    /// Open elements: the stream is 1, a stanza 2.
    depth: usize,
    /// Boxed: it exists only while a stanza is being read, and the parser lives as long as
    /// its (mostly idle) connection.
    building: Option<Box<Building>>,
    dead: Option<StreamError>,
}

fn max_token(limits: &Limits) -> usize {
    MAX_TOKEN.min(limits.max_stanza_bytes.max(64))
}

impl StreamParser<Strict> {
    pub fn new(limits: Limits) -> Self {
        StreamParser::with_tokenizer(limits)
    }
}

impl<T: Tokenize> StreamParser<T> {
    /// A parser over tokenizer `T` (tests compare ours with rxml's).
    pub fn with_tokenizer(limits: Limits) -> Self {
        StreamParser {
            raw: T::new(max_token(&limits)),
            resolver: Resolver::new(limits.max_attributes),
            limits,
            buf: Vec::new(),
            pos: 0,
            counted: 0,
            phase: Phase::Prolog,
            depth: 0,
            building: None,
            dead: None,
        }
    }

    /// Changes the budgets; they apply at once (the token cap from the next reset).
    pub fn set_limits(&mut self, limits: Limits) {
        self.resolver.max_attributes = limits.max_attributes;
        self.limits = limits;
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Expects a new stream (after STARTTLS or SASL success). Buffered,
    /// unparsed bytes are discarded: they were sent before the restart.
    pub fn reset(&mut self) {
        *self = StreamParser::with_tokenizer(self.limits.clone());
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.dead.is_none() && self.phase != Phase::Closed {
            // Drop what the XML parser consumed, so a stream whose reads never end on a token
            // boundary does not keep every byte it ever sent.
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes fed but not yet consumed by the XML parser.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next event, `Ok(None)` if more bytes are needed. After an error
    /// the parser is dead and returns the same error forever.
    pub fn next_event(&mut self) -> Result<Option<Event>, StreamError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        match self.pump() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.buf = Vec::new();
                self.pos = 0;
                self.building = None;
                self.dead = Some(e.clone());
                Err(e)
            }
        }
    }

    fn pump(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            if self.phase == Phase::Closed {
                self.buf.clear();
                self.pos = 0;
                return Ok(None);
            }
            // Hand the tokenizer at most one byte more than the budget allows, so no
            // single token can run past it unnoticed.
            let allow = self
                .limits
                .max_stanza_bytes
                .saturating_sub(self.counted)
                .saturating_add(1);
            let avail = &self.buf[self.pos..];
            let take = avail.len().min(allow);
            let mut slice = &avail[..take];
            let result = self.raw.next_token(&mut slice, false);
            let consumed = take - slice.len();
            self.pos += consumed;
            self.counted += consumed;
            // Text between stanzas is a fault whatever its length: judged before the budget,
            // which a long run of it would also exceed, so that the error does not depend on
            // how the input was split (the tokenizer cuts text at the end of what it gets).
            if let Ok(Some(Token::Text(t))) = &result
                && self.building.is_none()
                && !t.chars().all(is_xml_space)
            {
                return Err(text_outside_stanzas());
            }
            self.check_budget()?;
            match result {
                Ok(Some(raw)) => {
                    if let Some(xml) = self.resolver.feed(raw)?
                        && let Some(ev) = self.handle(xml)?
                    {
                        return Ok(Some(ev));
                    }
                }
                Ok(None) => return Err(StreamError::new(C::NotWellFormed)),
                Err(Stop::NeedMoreData) => {
                    if take < avail.len() && consumed == 0 {
                        // The tokenizer needs bytes past the budget to decide: the stanza
                        // cannot end within it.
                        return Err(self.over_budget());
                    }
                    if self.pos >= self.buf.len() {
                        self.pos = 0;
                        if self.depth <= 1 {
                            // Between stanzas with every byte consumed: the connection is
                            // probably idle now, so give back what parsing borrowed: the
                            // tokenizer's token buffers and our input buffer. The next burst
                            // allocates them again: a few allocations per read, cheap next to
                            // the read (see benches/parser.rs). Releasing keeps the
                            // tokenizer's state (element stack, partial token), so
                            // well-formedness checks carry on.
                            self.buf = Vec::new();
                            self.raw.release_temporaries();
                        } else {
                            self.buf.clear();
                        }
                        return Ok(None);
                    }
                    if consumed == 0 {
                        if self.buf.len() - self.pos > MAX_LOOKAHEAD {
                            return Err(StreamError::with_text(
                                C::InternalServerError,
                                "xml parser made no progress",
                            ));
                        }
                        // A few undecided bytes (a partial character or reference): wait
                        // for the rest, keeping them.
                        return Ok(None);
                    }
                }
                Err(Stop::Error(e)) => return Err(e),
            }
        }
    }

    fn check_budget(&self) -> Result<(), StreamError> {
        if self.counted <= self.limits.max_stanza_bytes {
            return Ok(());
        }
        Err(self.over_budget())
    }

    fn over_budget(&self) -> StreamError {
        let limit = self.limits.max_stanza_bytes;
        let text = if self.building.is_some() || self.phase == Phase::Prolog {
            format!("stanza too large ({} bytes, limit {limit})", self.counted)
        } else {
            format!(
                "too much data between stanzas ({} bytes, limit {limit})",
                self.counted
            )
        };
        StreamError::with_text(C::PolicyViolation, text)
    }

    fn handle(&mut self, ev: XmlEvent) -> Result<Option<Event>, StreamError> {
        match ev {
            XmlEvent::Declaration => Ok(None),
            XmlEvent::Start { ns, name, attrs } => {
                self.depth += 1;
                if self.phase == Phase::Prolog {
                    return self.open_stream(&ns, &name, attrs).map(Some);
                }
                let stanza_depth = self.depth - 1;
                if stanza_depth > self.limits.max_depth {
                    return Err(StreamError::with_text(
                        C::PolicyViolation,
                        format!(
                            "elements nested too deeply (limit {})",
                            self.limits.max_depth
                        ),
                    ));
                }
                if stanza_depth == 1 {
                    let mut stanza = Stanza::from_parts(ns, name);
                    for a in attrs {
                        stanza.set_attr(&a.ns, &a.name, a.value);
                    }
                    let mut writer = CanonicalWriter::new(String::new());
                    // Content is written relative to no parent, so that each
                    // first-level child declares its namespace.
                    writer.out.reserve(256);
                    self.building = Some(Box::new(Building {
                        stanza,
                        writer,
                        children: Vec::new(),
                        child_start: 0,
                    }));
                    return Ok(None);
                }
                let b = self.building.as_mut().expect("stanza open");
                if stanza_depth == 2 {
                    b.child_start = b.writer.out.len();
                }
                let it = attrs
                    .iter()
                    .map(|a| (a.ns.as_str(), a.name.as_str(), a.value.as_str()));
                b.writer.start(&ns, &name, it);
                if stanza_depth == 2 {
                    b.children.push(Child {
                        ns,
                        name,
                        range: b.child_start..b.child_start,
                    });
                }
                Ok(None)
            }
            XmlEvent::Text(text) => {
                match self.building.as_mut() {
                    Some(b) => b.writer.text(&text),
                    None if text.chars().all(is_xml_space) => {}
                    None => return Err(text_outside_stanzas()),
                }
                Ok(None)
            }
            XmlEvent::End => {
                let closing = self.depth;
                self.depth -= 1;
                match closing {
                    1 => {
                        self.phase = Phase::Closed;
                        Ok(Some(Event::StreamClose))
                    }
                    2 => {
                        let b = *self.building.take().expect("stanza open");
                        let mut stanza = b.stanza;
                        stanza.set_content(b.writer.out, b.children);
                        self.counted = 0;
                        Ok(Some(Event::Element(stanza)))
                    }
                    _ => {
                        let b = self.building.as_mut().expect("stanza open");
                        b.writer.end();
                        if closing == 3 {
                            let end = b.writer.out.len();
                            if let Some(child) = b.children.last_mut() {
                                child.range.end = end;
                            }
                        }
                        Ok(None)
                    }
                }
            }
        }
    }

    fn open_stream(
        &mut self,
        ns_name: &str,
        name: &str,
        attrs: Vec<crate::xml::Attr>,
    ) -> Result<Event, StreamError> {
        if ns_name != ns::STREAM {
            return Err(StreamError::with_text(
                C::InvalidNamespace,
                "the stream element must be in the http://etherx.jabber.org/streams namespace",
            ));
        }
        if name != "stream" {
            return Err(StreamError::with_text(
                C::BadFormat,
                "the first element must be <stream:stream>",
            ));
        }
        let default_ns = self.resolver.default_ns().to_string();
        if default_ns != ns::CLIENT && default_ns != ns::SERVER && default_ns != ns::COMPONENT {
            return Err(StreamError::with_text(
                C::InvalidNamespace,
                "unsupported content namespace",
            ));
        }
        let mut header = StreamHeader {
            to: None,
            from: None,
            version: None,
            lang: None,
            id: None,
            default_ns,
        };
        for a in attrs {
            let slot = match (a.ns.as_str(), a.name.as_str()) {
                ("", "to") => &mut header.to,
                ("", "from") => &mut header.from,
                ("", "version") => &mut header.version,
                ("", "id") => &mut header.id,
                (ns::XML, "lang") => &mut header.lang,
                _ => continue,
            };
            *slot = Some(a.value);
        }
        self.phase = Phase::Open;
        self.counted = 0;
        Ok(Event::StreamOpen(header))
    }
}

fn text_outside_stanzas() -> StreamError {
    StreamError::with_text(C::BadFormat, "text outside of stanzas")
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Parses trusted, complete XML (one element, possibly with surrounding
/// whitespace) into resolved events.
pub(crate) fn parse_fragment(xml: &str) -> Result<Vec<XmlEvent>, StreamError> {
    let mut raw = Strict::new(1 << 16);
    let mut resolver = Resolver::new(usize::MAX);
    let mut events = Vec::new();
    let mut input = xml.as_bytes();
    loop {
        match raw.next_token(&mut input, true) {
            Ok(Some(ev)) => events.extend(resolver.feed(ev)?),
            Ok(None) => return Ok(events),
            Err(Stop::NeedMoreData) => {
                return Err(StreamError::new(C::NotWellFormed));
            }
            Err(Stop::Error(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><s:stream xmlns='jabber:client' xmlns:s='http://etherx.jabber.org/streams' xmlns:x='urn:example:x' version='1.0'>";

    fn drain(p: &mut StreamParser) -> Result<Vec<Event>, StreamError> {
        let mut v = Vec::new();
        while let Some(ev) = p.next_event()? {
            v.push(ev);
        }
        Ok(v)
    }

    /// The error for a stream, fed whole or in pieces of `chunk` bytes.
    fn error_of(input: &[u8], limits: &Limits, chunk: usize) -> Option<C> {
        let mut p = StreamParser::new(limits.clone());
        for piece in input.chunks(chunk) {
            p.feed(piece);
            if let Err(e) = drain(&mut p) {
                return Some(e.condition);
            }
        }
        None
    }

    /// Found by the wire_parser fuzz target: a long run of text between stanzas was
    /// `policy-violation` (past the byte budget) when it arrived in one read, and `bad-format`
    /// (text outside of stanzas) when it arrived in small reads. It is the latter however
    /// it is split; a long run of white space is still the budget's.
    #[test]
    fn text_between_stanzas_is_judged_alike_however_it_is_split() {
        let small = Limits {
            max_stanza_bytes: 512,
            max_depth: 8,
            max_attributes: 8,
        };
        let mut text = HEADER.to_vec();
        text.extend_from_slice("]\u{e387}@@@@".as_bytes());
        text.extend(std::iter::repeat_n(b'W', 700));
        let mut space = HEADER.to_vec();
        space.extend(std::iter::repeat_n(b' ', 700));
        space.extend_from_slice(b"x");
        for chunk in [1, 3, 16, 64, 100_000] {
            assert_eq!(
                error_of(&text, &small, chunk),
                Some(C::BadFormat),
                "{chunk}"
            );
            assert_eq!(
                error_of(&space, &small, chunk),
                Some(C::PolicyViolation),
                "{chunk}"
            );
        }
    }

    /// Between stanzas, with every byte consumed, the parser gives its buffers back; the
    /// stream's namespaces, its element stack and a token split across reads survive.
    #[test]
    fn released_between_stanzas_still_parses_and_checks() {
        let mut p = StreamParser::new(Limits::authenticated());
        p.feed(HEADER);
        assert!(matches!(drain(&mut p).unwrap()[..], [Event::StreamOpen(_)]));
        p.feed(b"<message id='1'><x:a/></message>  ");
        let evs = drain(&mut p).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(p.buf.capacity(), 0, "input buffer released when idle");
        // A stanza in two reads, split inside a name, then one using the stream's prefixes.
        p.feed(b"<mess");
        assert!(drain(&mut p).unwrap().is_empty());
        p.feed(b"age id='2'><x:b/></message><iq type='get' id='3'><query xmlns='q'/></iq>");
        let evs = drain(&mut p).unwrap();
        let [Event::Element(m), Event::Element(iq)] = &evs[..] else {
            panic!("{evs:?}");
        };
        assert_eq!((m.ns.as_str(), m.name.as_str()), (ns::CLIENT, "message"));
        assert!(m.has_child("urn:example:x", "b"), "{}", m.inner_xml());
        assert_eq!(iq.name, "iq");
        // Well-formedness still spans the released buffers: a mismatched tag is caught...
        p.feed(b"<presence></message>");
        let e = drain(&mut p).unwrap_err();
        assert_eq!(e.condition, C::NotWellFormed);

        // ... and the stream's own close tag, with its prefix, still matches.
        let mut p = StreamParser::new(Limits::authenticated());
        p.feed(HEADER);
        drain(&mut p).unwrap();
        p.feed(b"<message/>");
        drain(&mut p).unwrap();
        p.feed(b"</s:stream>");
        assert_eq!(drain(&mut p).unwrap(), vec![Event::StreamClose]);
        let mut p = StreamParser::new(Limits::authenticated());
        p.feed(HEADER);
        drain(&mut p).unwrap();
        p.feed(b"<message/>");
        drain(&mut p).unwrap();
        p.feed(b"</stream:stream>");
        assert!(drain(&mut p).is_err());
    }
}
