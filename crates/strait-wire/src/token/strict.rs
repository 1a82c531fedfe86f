//! [`Strict`]: restricted XML 1.0 with namespaces (RFC 6120 §11), tokenized a run at a time.
//!
//! Written from the specifications (XML 1.0 fifth edition §2–§4, Namespaces in XML 1.0 §3–§4,
//! RFC 6120 §11) and checked against rxml by the differential tests. Every state keeps what
//! it has read of the current token, so input may be split anywhere: a token drip-fed a byte
//! at a time costs what it costs whole. What cannot be decided yet (a partial UTF-8 sequence,
//! reference, `]]>`, `/>`, `<![CDATA[`) is left unconsumed, at most [`super::MAX_LOOKAHEAD`] bytes.

use super::{Stop, Token, Tokenize, token_too_long};

/// Longest entity name or character reference's digits (rxml's limit, `MAX_REFERENCE_LENGTH`).
const MAX_REFERENCE: usize = 8;

/// Longest XML declaration read (rxml limits each of its tokens, not the whole; one with
/// every pseudo-attribute and generous white space is under 200 bytes).
const MAX_DECLARATION: usize = 1024;
use crate::error::{StreamError, StreamErrorCondition as C};

/// Byte classes of ASCII, one bit each (bytes ≥ 0x80 are none of them).
const NAME_START: u8 = 1;
const NAME: u8 = 2;
/// Character data that needs nothing done in text: not `<`, `&`, `]`, CR or a control.
const TEXT: u8 = 4;
/// The same in attribute values: not `<`, `&`, a quote, CR, tab, LF or a control.
const VALUE: u8 = 8;
/// XML's white space (S).
const SPACE: u8 = 16;

const CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        let mut k = 0;
        if c.is_ascii_alphabetic() || c == b'_' {
            k |= NAME_START | NAME;
        }
        if c.is_ascii_digit() || c == b'-' || c == b'.' {
            k |= NAME;
        }
        if c >= 0x20 && c != b'<' && c != b'&' {
            if c != b']' {
                k |= TEXT;
            }
            if c != b'\'' && c != b'"' {
                k |= VALUE;
            }
        }
        if c == b'\t' || c == b'\n' {
            k |= TEXT;
        }
        if c == b' ' || c == b'\t' || c == b'\r' || c == b'\n' {
            k |= SPACE;
        }
        t[b] = k;
        b += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    if b < 0x80 { CLASS[b as usize] } else { 0 }
}

fn is_space(b: u8) -> bool {
    class(b) & SPACE != 0
}

/// XML 1.0 `Char` (§2.2), for characters outside ASCII.
fn is_char(c: char) -> bool {
    let c = c as u32;
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// XML 1.0 `NameStartChar` less `:` (§2.3; a colon separates prefix and local name), and
/// less U+FDF0 to U+FFFD, which rxml's tables leave out: the server accepted no such names
/// before this tokenizer and accepts none now.
fn is_name_start(c: char) -> bool {
    let u = c as u32;
    c.is_ascii_alphabetic()
        || c == '_'
        || matches!(u,
            0xC0..=0xD6 | 0xD8..=0xF6 | 0xF8..=0x2FF | 0x370..=0x37D | 0x37F..=0x1FFF
            | 0x200C..=0x200D | 0x2070..=0x218F | 0x2C00..=0x2FEF | 0x3001..=0xD7FF
            | 0xF900..=0xFDCF | 0x10000..=0xEFFFF)
}

/// XML 1.0 `NameChar` less `:`.
fn is_name_char(c: char) -> bool {
    let u = c as u32;
    is_name_start(c)
        || c.is_ascii_digit()
        || c == '-'
        || c == '.'
        || matches!(u, 0xB7 | 0x300..=0x36F | 0x203F..=0x2040)
}

fn not_well_formed(text: &str) -> Stop {
    Stop::Error(StreamError::with_text(C::NotWellFormed, text))
}

fn restricted(text: &str) -> Stop {
    Stop::Error(StreamError::with_text(C::RestrictedXml, text))
}

fn bad_encoding() -> Stop {
    Stop::Error(StreamError::with_text(
        C::UnsupportedEncoding,
        "invalid UTF-8 in the stream",
    ))
}

/// What a call found when it looked at the input for a character.
enum Peek {
    /// A character and how many bytes it took.
    Char(char, usize),
    /// Not enough input to tell.
    More,
}

/// The UTF-8 character at the start of `b` (which is not empty).
fn peek_char(b: &[u8], at_eof: bool) -> Result<Peek, Stop> {
    let lead = b[0];
    if lead < 0x80 {
        return Ok(Peek::Char(lead as char, 1));
    }
    let len = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return Err(bad_encoding()),
    };
    let have = &b[..len.min(b.len())];
    match std::str::from_utf8(have) {
        Ok(s) => Ok(Peek::Char(s.chars().next().expect("one char"), len)),
        Err(e) if e.error_len().is_none() && !at_eof => Ok(Peek::More),
        Err(_) => Err(bad_encoding()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The very start: an XML declaration may come.
    Start,
    /// Outside the root element: white space, then the root (or, after it, the end).
    Misc { after_root: bool },
    /// Inside an element: text, references, markup.
    Content,
    /// `<`…: the element's name so far in `scratch`.
    HeadName,
    /// In a start tag, before an attribute or its end; `spaced`: white space since the last
    /// attribute (required before the next one).
    Head { spaced: bool },
    /// An attribute's name so far in `attr`.
    AttrName,
    /// After an attribute's name, before `=`.
    AttrEq,
    /// After `=`, before the quote.
    AttrQuote,
    /// The value so far in `scratch`.
    AttrValue { quote: u8 },
    /// After `/` in a start tag: `>` must follow.
    EmptyEnd,
    /// A `/>` start tag's [`Token::HeadClose`] is out; its [`Token::Foot`] is next.
    EmptyFoot,
    /// `</`…: the end tag's name so far in `scratch`.
    FootName,
    /// After the end tag's name, before `>`.
    FootEnd,
    /// In a CDATA section.
    Cdata,
    /// Reading the XML declaration into `scratch` (up to `?>`).
    Declaration,
}

/// Our restricted-XML tokenizer (module docs).
#[derive(Debug)]
pub struct Strict {
    max_token: usize,
    state: State,
    /// The root element's name as written (`prefix:local`), once it is open: apart from it,
    /// so that between stanzas (only the stream's element open) nothing else is held.
    root: Option<Box<str>>,
    /// The other open elements' names as written, one after the other.
    names: String,
    /// Where each of those names ends in `names`.
    ends: Vec<usize>,
    /// The token being read: a name, a value, text.
    scratch: String,
    /// The attribute name being read or whose value is being read.
    attr: String,
    /// Where the colon is in the name being read (`scratch` or `attr`).
    colon: Option<usize>,
    attr_colon: Option<usize>,
}

impl Tokenize for Strict {
    fn new(max_token: usize) -> Self {
        Strict {
            max_token,
            state: State::Start,
            root: None,
            names: String::new(),
            ends: Vec::new(),
            scratch: String::new(),
            attr: String::new(),
            colon: None,
            attr_colon: None,
        }
    }

    fn next_token(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Option<Token>, Stop> {
        loop {
            if let Some(t) = self.step(input, at_eof)? {
                return Ok(t);
            }
        }
    }

    fn release_temporaries(&mut self) {
        // Each buffer only while a token that uses it is being read (`attr` keeps the last
        // attribute's name until the next one starts).
        let in_attr = matches!(
            self.state,
            State::AttrName | State::AttrEq | State::AttrQuote | State::AttrValue { .. }
        );
        if self.scratch.is_empty() {
            self.scratch = String::new();
        }
        if !in_attr {
            self.attr = String::new();
        }
        // Between stanzas only the stream's element is open, and its name is in `root`.
        if self.ends.is_empty() {
            self.names = String::new();
            self.ends = Vec::new();
        }
    }
}

/// What a step produced: `Some(Some(token))`, `Some(None)` (the document ended) or `None`
/// (the state changed; step again).
type Step = Option<Option<Token>>;

impl Strict {
    fn need_more(&self, at_eof: bool) -> Stop {
        if at_eof {
            not_well_formed("unexpected end of the document")
        } else {
            Stop::NeedMoreData
        }
    }

    fn step(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        match self.state {
            State::Start => self.start(input, at_eof),
            State::Misc { after_root } => self.misc(input, at_eof, after_root),
            State::Content => self.content(input, at_eof),
            State::HeadName | State::FootName => self.name(input, at_eof),
            State::Head { spaced } => self.head(input, at_eof, spaced),
            State::AttrName => self.attr_name(input, at_eof),
            State::AttrEq => {
                skip_space(input);
                match input.first() {
                    None => Err(self.need_more(at_eof)),
                    Some(b'=') => {
                        *input = &input[1..];
                        self.state = State::AttrQuote;
                        Ok(None)
                    }
                    Some(_) => Err(not_well_formed("expected '=' after an attribute name")),
                }
            }
            State::AttrQuote => {
                skip_space(input);
                match input.first() {
                    None => Err(self.need_more(at_eof)),
                    Some(&q @ (b'\'' | b'"')) => {
                        *input = &input[1..];
                        self.scratch.clear();
                        self.state = State::AttrValue { quote: q };
                        Ok(None)
                    }
                    Some(_) => Err(not_well_formed("attribute value not quoted")),
                }
            }
            State::AttrValue { quote } => self.value(input, at_eof, quote),
            State::EmptyEnd => match input.first() {
                None => Err(self.need_more(at_eof)),
                Some(b'>') => {
                    *input = &input[1..];
                    self.state = State::EmptyFoot;
                    Ok(Some(Some(Token::HeadClose)))
                }
                Some(_) => Err(not_well_formed("expected '>' after '/'")),
            },
            State::EmptyFoot => Ok(Some(Some(self.pop()))),
            State::FootEnd => {
                skip_space(input);
                match input.first() {
                    None => Err(self.need_more(at_eof)),
                    Some(b'>') => {
                        *input = &input[1..];
                        Ok(Some(Some(self.pop())))
                    }
                    Some(_) => Err(not_well_formed("expected '>' in an end tag")),
                }
            }
            State::Cdata => self.cdata(input, at_eof),
            State::Declaration => self.declaration(input, at_eof),
        }
    }

    /// Ends the innermost element.
    fn pop(&mut self) -> Token {
        if self.ends.pop().is_some() {
            self.names.truncate(self.ends.last().copied().unwrap_or(0));
        } else {
            self.root = None;
        }
        self.state = if self.root.is_none() {
            State::Misc { after_root: true }
        } else {
            State::Content
        };
        Token::Foot
    }

    fn start(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        // A document starts with `<` (rxml: no white space before the declaration or the
        // root), and `<?xml` starts the declaration whatever follows.
        const DECL: &[u8] = b"<?xml";
        let Some(&first) = input.first() else {
            return Err(self.need_more(at_eof));
        };
        if first == b'&' {
            self.check_stray_reference(input, at_eof)?;
        }
        if first != b'<' {
            return Err(not_well_formed("the document does not start with '<'"));
        }
        let n = input.len().min(DECL.len());
        if input[..n] != DECL[..n] {
            self.state = State::Misc { after_root: false };
            return Ok(None);
        }
        if n < DECL.len() {
            return Err(self.need_more(at_eof));
        }
        *input = &input[DECL.len()..];
        self.scratch.clear();
        self.state = State::Declaration;
        Ok(None)
    }

    /// Reads the XML declaration into `scratch` and checks it as far as it goes, so that a
    /// fault is reported as soon as it is read.
    fn declaration(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        let had = self.scratch.len();
        let n = input.len().min((MAX_DECLARATION + 2).saturating_sub(had));
        // Bytes, not characters: a declaration is ASCII, and anything else is a fault that
        // `check_declaration` finds at its place.
        self.scratch.extend(
            input[..n]
                .iter()
                .map(|&b| if b < 0x80 { b as char } else { '\u{80}' }),
        );
        let checked = check_declaration(&self.scratch);
        match checked {
            Ok(Some(len)) => {
                // `len` counts bytes of `scratch`, where each input byte is one character
                // of one (ASCII) or two (U+0080) bytes; a complete declaration is all ASCII.
                *input = &input[len - had..];
                self.scratch.clear();
                self.state = State::Misc { after_root: false };
                Ok(Some(Some(Token::XmlDeclaration)))
            }
            Ok(None) if self.scratch.len() > MAX_DECLARATION => Err(Stop::Error(
                StreamError::with_text(C::PolicyViolation, "XML declaration too long"),
            )),
            Ok(None) => {
                *input = &input[n..];
                Err(self.need_more(at_eof))
            }
            Err(e) => Err(e),
        }
    }

    fn misc(&mut self, input: &mut &[u8], at_eof: bool, after_root: bool) -> Result<Step, Stop> {
        skip_space(input);
        let Some(&b) = input.first() else {
            if at_eof && after_root {
                return Ok(Some(None));
            }
            return Err(self.need_more(at_eof));
        };
        if b == b'&' && after_root {
            self.check_stray_reference(input, at_eof)?;
        }
        if b != b'<' {
            return Err(not_well_formed("text outside the root element"));
        }
        let Some(&next) = input.get(1) else {
            return Err(self.need_more(at_eof));
        };
        match next {
            b'?' => Err(restricted("processing instructions")),
            b'!' => self.bang(input, at_eof, after_root),
            _ if after_root => Err(not_well_formed("a second root element")),
            _ => {
                *input = &input[1..];
                self.begin_name(State::HeadName);
                Ok(None)
            }
        }
    }

    /// Text outside the root (a fault) that starts with a reference: rxml reads such text
    /// before it rejects it, so a bad reference in it is what it reports (restricted-xml for
    /// an undeclared entity).
    fn check_stray_reference(&mut self, input: &mut &[u8], at_eof: bool) -> Result<(), Stop> {
        let kept = self.scratch.len();
        let mut probe = *input;
        let whole = self.reference(&mut probe, at_eof);
        self.scratch.truncate(kept);
        if !whole? {
            return Err(self.need_more(at_eof));
        }
        Err(not_well_formed("text outside the root element"))
    }

    fn begin_name(&mut self, state: State) {
        self.scratch.clear();
        self.colon = None;
        self.state = state;
    }

    /// `<!` at the start of `input`: CDATA (in content only), a comment or DTD markup
    /// (restricted), or malformed.
    fn bang(&mut self, input: &mut &[u8], at_eof: bool, after_root: bool) -> Result<Step, Stop> {
        const CDATA: &[u8] = b"<![CDATA[";
        const COMMENT: &[u8] = b"<!--";
        let Some(&third) = input.get(2) else {
            return Err(self.need_more(at_eof));
        };
        let marker = match third {
            b'[' => CDATA,
            b'-' => COMMENT,
            _ => return Err(restricted("DTD markup declaration")),
        };
        let n = input.len().min(marker.len());
        if input[..n] != marker[..n] {
            return Err(not_well_formed("malformed CDATA section or comment start"));
        }
        if n < marker.len() {
            return Err(self.need_more(at_eof));
        }
        if after_root {
            return Err(not_well_formed("markup after the root element"));
        }
        if marker == COMMENT {
            return Err(restricted("comments"));
        }
        if self.state != State::Content {
            return Err(not_well_formed("CDATA section outside the root element"));
        }
        *input = &input[CDATA.len()..];
        self.state = State::Cdata;
        Ok(None)
    }

    /// Text and what ends it. A fault in text is reported after the text before it (as a
    /// token of its own), so that text between stanzas is judged first however the input was
    /// split; the fault is found again on the next call.
    fn content(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        let r = self.content_run(input, at_eof);
        self.text_before_fault(r)
    }

    fn text_before_fault(&mut self, r: Result<Step, Stop>) -> Result<Step, Stop> {
        match r {
            Err(Stop::Error(_)) if !self.scratch.is_empty() => Ok(self.text_token()),
            r => r,
        }
    }

    fn content_run(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        loop {
            let plain = plain_prefix(input, [b'<', b'&', b']']);
            let run = plain
                + input[plain..]
                    .iter()
                    .position(|&b| class(b) & TEXT == 0 && b < 0x80)
                    .unwrap_or(input.len() - plain);
            if run > 0 {
                if let Some(step) = self.take_text_run(run, input, at_eof)? {
                    return Ok(step);
                }
                continue;
            }
            let Some(&b) = input.first() else {
                return self.flush_or_wait(at_eof);
            };
            match b {
                b'<' => {
                    if !self.scratch.is_empty() {
                        return Ok(self.text_token());
                    }
                    let Some(&next) = input.get(1) else {
                        return Err(self.need_more(at_eof));
                    };
                    return match next {
                        b'/' => {
                            *input = &input[2..];
                            self.begin_name(State::FootName);
                            Ok(None)
                        }
                        b'!' => self.bang(input, at_eof, false),
                        b'?' => Err(restricted("processing instructions")),
                        _ => {
                            *input = &input[1..];
                            self.begin_name(State::HeadName);
                            Ok(None)
                        }
                    };
                }
                b'&' => {
                    // The text before a reference is a token of its own (as rxml has it),
                    // so that text between stanzas is judged before a bad reference in it.
                    if !self.scratch.is_empty() {
                        return Ok(self.text_token());
                    }
                    if !self.reference(input, at_eof)? {
                        return self.flush_or_wait(at_eof);
                    }
                }
                b']' => {
                    if input.len() < 3 && !at_eof {
                        if input.len() == 1 || input[1] == b']' {
                            return self.flush_or_wait(at_eof);
                        }
                    } else if input.starts_with(b"]]>") {
                        return Err(not_well_formed("']]>' in text"));
                    }
                    self.scratch.push(']');
                    *input = &input[1..];
                }
                b'\r' => {
                    let Some(&next) = input.get(1) else {
                        if at_eof {
                            self.scratch.push('\n');
                            *input = &input[1..];
                            continue;
                        }
                        return self.flush_or_wait(at_eof);
                    };
                    self.scratch.push('\n');
                    *input = &input[if next == b'\n' { 2 } else { 1 }..];
                }
                _ => return Err(not_well_formed("character not allowed in XML")),
            }
            if self.scratch.len() >= self.max_token {
                return Ok(self.text_token());
            }
        }
    }

    /// Takes the first `run` bytes of `input` as text (character data or CDATA): a step to
    /// return when the run ends in a partial character (the text so far, or wait) or fills a
    /// token, else `None` to read on.
    fn take_text_run(
        &mut self,
        run: usize,
        input: &mut &[u8],
        at_eof: bool,
    ) -> Result<Option<Step>, Stop> {
        if !self.push_text(run, input, at_eof)? {
            // A partial character at the end of the input.
            return self.flush_or_wait(at_eof).map(Some);
        }
        if self.scratch.len() >= self.max_token {
            return Ok(Some(self.text_token()));
        }
        Ok(None)
    }

    /// Out of input in text: the text so far as a token, else wait.
    fn flush_or_wait(&mut self, at_eof: bool) -> Result<Step, Stop> {
        if !self.scratch.is_empty() {
            return Ok(self.text_token());
        }
        Err(self.need_more(at_eof))
    }

    /// The text read so far, as a token.
    fn text_token(&mut self) -> Step {
        Some(Some(Token::Text(std::mem::take(&mut self.scratch))))
    }

    /// Appends the first `run` bytes of `input` (text: ASCII needing nothing done, or
    /// anything from 0x80) to `scratch`, checking UTF-8 and XML's characters. A partial
    /// character at the end of the input stays in it.
    ///
    /// `false` if nothing could be taken: the run is a partial character at the end of the
    /// input.
    fn push_text(&mut self, run: usize, input: &mut &[u8], at_eof: bool) -> Result<bool, Stop> {
        let bytes = &input[..run];
        let (mut valid, broken) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, false),
            Err(e) => {
                // Only a sequence cut off by the end of the input may wait for more.
                let cut = e.error_len().is_none() && !at_eof && run == input.len();
                let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid prefix");
                (valid, !cut)
            }
        };
        // What comes before the first fault is taken; the fault is reported when it is first
        // in the input, so that it is found at the same place however the input was split.
        let mut fault = broken.then(bad_encoding);
        if !valid.is_ascii()
            && let Some((at, _)) = valid.char_indices().find(|&(_, c)| !is_char(c))
        {
            valid = &valid[..at];
            fault = Some(not_well_formed("character not allowed in XML"));
        }
        if valid.is_empty()
            && let Some(fault) = fault
        {
            return Err(fault);
        }
        let taken = valid.len();
        self.scratch.push_str(valid);
        *input = &input[taken..];
        Ok(taken > 0)
    }

    /// Expands the reference at the start of `input` into `scratch`; `false` if it is not
    /// all there yet. Entity names and the digits of character references may be at most
    /// [`MAX_REFERENCE`] bytes long (rxml's limit: a longer one is taken for an undeclared
    /// entity, restricted-xml).
    fn reference(&mut self, input: &mut &[u8], at_eof: bool) -> Result<bool, Stop> {
        let (start, digits) = match (input.get(1), input.get(2)) {
            (Some(b'#'), Some(b'x')) => (3, Some(16)),
            (Some(b'#'), Some(_)) => (2, Some(10)),
            (Some(b'#'), None) | (None, _) => return self.reference_cut(at_eof),
            (Some(_), _) => (1, None),
        };
        let part = |b: u8| match digits {
            Some(16) => b.is_ascii_hexdigit(),
            Some(_) => b.is_ascii_digit(),
            // rxml reads an entity name as any bytes that cannot end a name.
            None => b >= 0x80 || class(b) & NAME != 0 || b == b':',
        };
        let body = &input[start..];
        let n = body
            .iter()
            .take(MAX_REFERENCE + 1)
            .take_while(|&&b| part(b))
            .count();
        if n > MAX_REFERENCE {
            return Err(restricted(
                "use of undeclared entity (or too long a reference)",
            ));
        }
        let Some(&end) = body.get(n) else {
            return self.reference_cut(at_eof);
        };
        if end != b';' {
            return Err(not_well_formed("malformed entity or character reference"));
        }
        if n == 0 {
            return Err(not_well_formed("empty reference"));
        }
        let name = &body[..n];
        let c = match (digits, name) {
            (Some(radix), _) => char_ref(name, radix)?,
            (None, b"amp") => '&',
            (None, b"lt") => '<',
            (None, b"gt") => '>',
            (None, b"quot") => '"',
            (None, b"apos") => '\'',
            (None, _) => return Err(restricted("use of undeclared entity")),
        };
        self.scratch.push(c);
        *input = &input[start + n + 1..];
        Ok(true)
    }

    /// A reference cut off by the end of the input.
    fn reference_cut(&self, at_eof: bool) -> Result<bool, Stop> {
        if at_eof {
            return Err(not_well_formed("unexpected end of the document"));
        }
        Ok(false)
    }

    /// Reads the rest of an element's name (into `scratch`) or an attribute's (into `attr`);
    /// [`Stop::NeedMoreData`] until its end is in the input.
    fn read_name(&mut self, input: &mut &[u8], at_eof: bool, attr: bool) -> Result<(), Stop> {
        let (out, colon) = if attr {
            (&mut self.attr, &mut self.attr_colon)
        } else {
            (&mut self.scratch, &mut self.colon)
        };
        if read_name(input, at_eof, out, colon, self.max_token)? {
            Ok(())
        } else {
            Err(self.need_more(at_eof))
        }
    }

    fn name(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        self.read_name(input, at_eof, false)?;
        let (prefix, local) = split_name(&self.scratch, self.colon)?;
        if self.state == State::FootName {
            let open = match self.ends.len() {
                0 => self.root.as_deref().unwrap_or_default(),
                n => &self.names[n.checked_sub(2).map_or(0, |i| self.ends[i])..],
            };
            if open != self.scratch {
                return Err(not_well_formed("end tag does not match the start tag"));
            }
            self.scratch.clear();
            self.state = State::FootEnd;
            return Ok(None);
        }
        let token = Token::HeadOpen { prefix, local };
        if self.root.is_none() {
            self.root = Some(self.scratch.as_str().into());
        } else {
            self.names.push_str(&self.scratch);
            self.ends.push(self.names.len());
        }
        self.scratch.clear();
        self.state = State::Head { spaced: false };
        Ok(Some(Some(token)))
    }

    fn head(&mut self, input: &mut &[u8], at_eof: bool, spaced: bool) -> Result<Step, Stop> {
        let before = input.len();
        skip_space(input);
        let spaced = spaced || input.len() < before;
        self.state = State::Head { spaced };
        let Some(&b) = input.first() else {
            return Err(self.need_more(at_eof));
        };
        match b {
            b'>' => {
                *input = &input[1..];
                self.state = State::Content;
                Ok(Some(Some(Token::HeadClose)))
            }
            b'/' => {
                *input = &input[1..];
                self.state = State::EmptyEnd;
                Ok(None)
            }
            _ if !spaced => Err(not_well_formed("white space required between attributes")),
            _ => {
                self.attr.clear();
                self.attr_colon = None;
                self.state = State::AttrName;
                Ok(None)
            }
        }
    }

    fn attr_name(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        self.read_name(input, at_eof, true)?;
        self.state = State::AttrEq;
        Ok(None)
    }

    fn value(&mut self, input: &mut &[u8], at_eof: bool, quote: u8) -> Result<Step, Stop> {
        loop {
            let plain = plain_prefix(input, [b'<', b'&', quote]);
            let run = plain
                + input[plain..]
                    .iter()
                    .position(|&b| class(b) & VALUE == 0 && b < 0x80)
                    .unwrap_or(input.len() - plain);
            if run > 0 {
                if !self.push_text(run, input, at_eof)? {
                    // A partial character at the end of the input.
                    return Err(self.need_more(at_eof));
                }
                if self.scratch.len() > self.max_token {
                    return Err(Stop::Error(token_too_long(self.max_token)));
                }
                continue;
            }
            let Some(&b) = input.first() else {
                return Err(self.need_more(at_eof));
            };
            match b {
                _ if b == quote => {
                    *input = &input[1..];
                    let (prefix, local) = split_name(&self.attr, self.attr_colon)?;
                    check_declaration_attr(prefix.as_deref(), &local, &self.scratch)?;
                    self.state = State::Head { spaced: false };
                    return Ok(Some(Some(Token::Attribute {
                        prefix,
                        local,
                        value: std::mem::take(&mut self.scratch),
                    })));
                }
                b'\'' | b'"' => {
                    self.scratch.push(b as char);
                    *input = &input[1..];
                }
                b'&' => {
                    if !self.reference(input, at_eof)? {
                        return Err(self.need_more(at_eof));
                    }
                }
                b'\t' | b'\n' => {
                    self.scratch.push(' ');
                    *input = &input[1..];
                }
                b'\r' => {
                    let Some(&next) = input.get(1) else {
                        if at_eof {
                            return Err(self.need_more(at_eof));
                        }
                        return Err(Stop::NeedMoreData);
                    };
                    self.scratch.push(' ');
                    *input = &input[if next == b'\n' { 2 } else { 1 }..];
                }
                b'<' => return Err(not_well_formed("'<' in an attribute value")),
                _ => return Err(not_well_formed("character not allowed in XML")),
            }
            if self.scratch.len() > self.max_token {
                return Err(Stop::Error(token_too_long(self.max_token)));
            }
        }
    }

    fn cdata(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        let r = self.cdata_run(input, at_eof);
        self.text_before_fault(r)
    }

    fn cdata_run(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Step, Stop> {
        loop {
            let run = input
                .iter()
                .position(|&b| (class(b) & TEXT == 0 && b < 0x80) && b != b'<' && b != b'&')
                .unwrap_or(input.len());
            if run > 0 {
                if let Some(step) = self.take_text_run(run, input, at_eof)? {
                    return Ok(step);
                }
                continue;
            }
            let Some(&b) = input.first() else {
                return self.flush_or_wait(at_eof);
            };
            match b {
                b']' => {
                    if input.len() < 3 {
                        if at_eof {
                            return Err(self.need_more(at_eof));
                        }
                        if input.len() == 1 || input[1] == b']' {
                            return self.flush_or_wait(at_eof);
                        }
                    } else if input.starts_with(b"]]>") {
                        *input = &input[3..];
                        self.state = State::Content;
                        return Ok(None);
                    }
                    self.scratch.push(']');
                    *input = &input[1..];
                }
                b'\r' => {
                    let Some(&next) = input.get(1) else {
                        return self.flush_or_wait(at_eof);
                    };
                    self.scratch.push('\n');
                    *input = &input[if next == b'\n' { 2 } else { 1 }..];
                }
                _ => return Err(not_well_formed("character not allowed in XML")),
            }
        }
    }
}

/// How many bytes at the start of `input` are printable ASCII (0x20 to 0x7F) other than the
/// three `specials`: the bulk of text and attribute values (an OMEMO payload is kilobytes of
/// base64), checked eight bytes at a time. The byte loops after it take the rest of a run
/// (tab, LF, characters beyond ASCII) byte by byte. The word-at-a-time scan is
/// [`crate::swar::prefix_without`]'s.
fn plain_prefix(input: &[u8], specials: [u8; 3]) -> usize {
    crate::swar::prefix_without::<3, true>(input, &specials)
}

fn skip_space(input: &mut &[u8]) {
    let n = input
        .iter()
        .position(|&b| !is_space(b))
        .unwrap_or(input.len());
    *input = &input[n..];
}

/// Reads name characters into `out` (a colon's place in `colon`) up to the first byte that
/// ends a name; `true` when that byte was found.
fn read_name(
    input: &mut &[u8],
    at_eof: bool,
    out: &mut String,
    colon: &mut Option<usize>,
    max_token: usize,
) -> Result<bool, Stop> {
    loop {
        // ASCII name characters, the bulk of every name.
        let first = out.is_empty() || *colon == Some(out.len());
        let n = input
            .iter()
            .enumerate()
            .position(|(i, &b)| {
                let k = class(b);
                if first && i == 0 {
                    k & NAME_START == 0
                } else {
                    k & NAME == 0
                }
            })
            .unwrap_or(input.len());
        if n > 0 {
            out.push_str(std::str::from_utf8(&input[..n]).expect("ASCII"));
            *input = &input[n..];
            if out.len() > max_token {
                return Err(Stop::Error(token_too_long(max_token)));
            }
        }
        let Some(&b) = input.first() else {
            return Ok(false);
        };
        let first = out.is_empty() || *colon == Some(out.len());
        if b == b':' {
            if out.is_empty() || colon.is_some() {
                return Err(not_well_formed("a name with a misplaced colon"));
            }
            *colon = Some(out.len() + 1);
            out.push(':');
            *input = &input[1..];
            continue;
        }
        if b < 0x80 {
            if first {
                return Err(not_well_formed("a name starts with a character it cannot"));
            }
            if out.is_empty() {
                return Err(not_well_formed("empty name"));
            }
            return Ok(true);
        }
        let (c, len) = match peek_char(input, at_eof)? {
            Peek::Char(c, len) => (c, len),
            Peek::More => return Ok(false),
        };
        let ok = if first {
            is_name_start(c)
        } else {
            is_name_char(c)
        };
        if !ok {
            if first || !is_char(c) {
                return Err(not_well_formed("a character not allowed in a name"));
            }
            return Err(not_well_formed("a character not allowed in a name"));
        }
        out.push(c);
        *input = &input[len..];
        if out.len() > max_token {
            return Err(Stop::Error(token_too_long(max_token)));
        }
    }
}

/// A finished name as prefix and local part.
fn split_name(name: &str, colon: Option<usize>) -> Result<(Option<String>, String), Stop> {
    match colon {
        None => Ok((None, name.to_string())),
        Some(at) if at == name.len() => Err(not_well_formed("a name ends with a colon")),
        Some(at) => Ok((Some(name[..at - 1].to_string()), name[at..].to_string())),
    }
}

/// What rxml checks of a namespace declaration as it reads it (Namespaces in XML 1.0 §3,
/// "Reserved Prefixes and Namespace Names" and "No Prefix Undeclaring"); the resolver checks
/// the rest.
fn check_declaration_attr(prefix: Option<&str>, local: &str, value: &str) -> Result<(), Stop> {
    let bad = match prefix {
        Some("xmlns") => {
            value.is_empty() || local == "xmlns" || (local == "xml") != (value == rxml::XMLNS_XML)
        }
        None => local == "xmlns" && value == rxml::XMLNS_XML,
        Some(_) => false,
    };
    if bad {
        return Err(not_well_formed("reserved or empty namespace declaration"));
    }
    Ok(())
}

/// The character `&#…;` names (`digits` in `radix`), if XML allows it.
fn char_ref(digits: &[u8], radix: u32) -> Result<char, Stop> {
    let mut v: u32 = 0;
    for &d in digits {
        let x = (d as char)
            .to_digit(radix)
            .ok_or_else(|| not_well_formed("malformed character reference"))?;
        v = v
            .checked_mul(radix)
            .and_then(|v| v.checked_add(x))
            .ok_or_else(|| not_well_formed("character reference out of range"))?;
    }
    match char::from_u32(v) {
        Some(c) if is_char(c) => Ok(c),
        _ => Err(not_well_formed(
            "character reference to a character XML does not allow",
        )),
    }
}

/// Checks the XML declaration read so far (`body`: what follows `<?xml`, bytes from 0x80 as
/// U+0080): `Some(length)` of the declaration up to and including `?>`, `None` if nothing is
/// wrong yet but it has not ended. Its grammar is XML 1.0 §2.8 as rxml takes it: `version`
/// first, then `encoding`, then `standalone`, the last two optional and `standalone` only
/// after `encoding`; version 1.0 and encoding UTF-8 only (unsupported-encoding otherwise),
/// standalone `yes` only, in any case (restricted-xml otherwise).
fn check_declaration(body: &str) -> Result<Option<usize>, Stop> {
    const NAMES: [&str; 3] = ["version", "encoding", "standalone"];
    let b = body.as_bytes();
    let malformed = || not_well_formed("malformed XML declaration");
    let mut i = 0;
    let mut next_name = 0;
    loop {
        // White space, then `?>` or (after white space) the next pseudo-attribute.
        let spaced_from = i;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let Some(&c) = b.get(i) else {
            return Ok(None);
        };
        if c == b'?' {
            if next_name == 0 {
                return Err(malformed());
            }
            return match b.get(i + 1) {
                None => Ok(None),
                Some(b'>') => Ok(Some(i + 2)),
                Some(_) => Err(malformed()),
            };
        }
        if i == spaced_from {
            return Err(malformed());
        }
        // The name: one of those still allowed must begin with what is there.
        let start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let name = &body[start..i];
        let allowed = if next_name == 0 {
            0..1
        } else {
            next_name..NAMES.len()
        };
        let Some(k) = allowed.clone().find(|&k| NAMES[k].starts_with(name)) else {
            return Err(malformed());
        };
        if i == b.len() {
            return Ok(None);
        }
        let Some(k) = allowed.into_iter().find(|&k| NAMES[k] == name) else {
            let _ = k;
            return Err(malformed());
        };
        if k == 2 && next_name < 2 {
            return Err(malformed());
        }
        next_name = k + 1;
        // `=`, then a quoted value.
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        match b.get(i) {
            None => return Ok(None),
            Some(b'=') => i += 1,
            Some(_) => return Err(malformed()),
        }
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let quote = match b.get(i) {
            None => return Ok(None),
            Some(&q @ (b'\'' | b'"')) => q,
            Some(_) => return Err(malformed()),
        };
        i += 1;
        let start = i;
        while i < b.len() && b[i] != quote {
            if matches!(b[i], b'<' | b'&') || b[i] < 0x20 || b[i] >= 0x80 {
                return Err(malformed());
            }
            i += 1;
        }
        if i == b.len() {
            return Ok(None);
        }
        let value = &body[start..i];
        i += 1;
        match k {
            0 if value != "1.0" => {
                return Err(Stop::Error(StreamError::with_text(
                    C::UnsupportedEncoding,
                    "only XML version 1.0 is allowed",
                )));
            }
            1 if !value.eq_ignore_ascii_case("utf-8") => {
                return Err(Stop::Error(StreamError::with_text(
                    C::UnsupportedEncoding,
                    "only utf-8 encoding is allowed",
                )));
            }
            2 if !value.eq_ignore_ascii_case("yes") => {
                return Err(restricted("only standalone documents are allowed"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain_prefix;

    /// The word-at-a-time scan against the byte-at-a-time definition, for every position of
    /// every kind of stopping byte, and for runs of every length around the word size.
    #[test]
    fn plain_prefix_stops_where_the_byte_loop_does() {
        let specials = [b'<', b'&', b']'];
        let slow = |input: &[u8]| {
            input
                .iter()
                .position(|&b| !(0x20..0x80).contains(&b) || specials.contains(&b))
                .unwrap_or(input.len())
        };
        for len in 0..40 {
            let base: Vec<u8> = (0..len).map(|i| b'A' + (i % 26) as u8).collect();
            assert_eq!(plain_prefix(&base, specials), len);
            for at in 0..len {
                for stop in [
                    0u8, 0x09, 0x0A, 0x0D, 0x1F, b'<', b'&', b']', 0x80, 0xC3, 0xFF,
                ] {
                    let mut v = base.clone();
                    v[at] = stop;
                    // A second stopping byte after the first must not move the answer.
                    if at + 1 < len {
                        v[at + 1] = 0x00;
                    }
                    assert_eq!(plain_prefix(&v, specials), slow(&v), "{v:?}");
                    assert_eq!(plain_prefix(&v, specials), at, "{v:?}");
                }
                // Bytes next to the stopping ones in value are not stops.
                for fine in [0x20u8, 0x7F, b'=', b';', b'\\', b'^', b'%', b'\'', b'"'] {
                    let mut v = base.clone();
                    v[at] = fine;
                    assert_eq!(plain_prefix(&v, specials), len, "{v:?}");
                }
            }
        }
    }
}
