//! Differential tests: our XML tokenizer (`token::Strict`) against rxml's (`token::Reference`).
//!
//! Two levels:
//!
//! - **Tokens**: the same bytes, cut into the same chunks, go through both tokenizers (bytes
//!   `Strict` leaves unconsumed are passed again in front of the next chunk, as the `Tokenize`
//!   contract asks). Adjacent `Token::Text` are merged and empty ones dropped; then the token
//!   sequences and the way each side stopped (end of document, error condition, ...) must
//!   agree.
//! - **Stream**: an XMPP stream, cut into chunks, goes through `StreamParser::<Strict>` and
//!   `StreamParser::<Reference>`, events pulled after every read; the events and the error
//!   condition must be identical. Some cases run under small `Limits` so the budget paths
//!   (stanza bytes, depth, attribute count, token length) are exercised.
//!
//! Inputs come from a grammar-based generator of XMPP-ish documents (clean, or with invalid
//! constructs sprinkled in) and a mutation stage over clean documents; `regressions_*` run a
//! fixed table of hand-written inputs whatever the seed.
//!
//! Environment:
//!
//! - `STRAIT_DIFF_CASES=<n>`: random cases per random test (defaults keep the file at a few
//!   seconds in a debug build). Long run:
//!   `STRAIT_DIFF_CASES=1000000 cargo test --release -p strait-wire --test differential -- --nocapture`
//! - `STRAIT_DIFF_SEED=<u64 or 0xhex>`: the base seed (default [`DEFAULT_SEED`]).
//! - `STRAIT_DIFF_CASE=<n>`: run case `n` only (of each random test, or of the test named on
//!   the command line) and print it: input, chunking and both sides' outputs.
//! - `STRAIT_DIFF_ALL=1`: survey mode: do not stop at the first mismatch but run every case,
//!   then report each kind of mismatch found (how many cases, the first one, a minimized
//!   input for each). Best in release:
//!   `STRAIT_DIFF_ALL=1 STRAIT_DIFF_CASES=200000 cargo test --release -p strait-wire --test differential random_ -- --nocapture`
//!
//! A mismatch report gives the case, the command that reruns it, the input as a Rust byte
//! string, the chunk split points, both outputs, and a minimized input reproducing the same
//! kind of mismatch. Accepted divergences, each with its reason: [`conditions_equivalent`]
//! (which syntax condition input with several faults gets), [`early_error_acceptable`]
//! (`Strict` rejecting a prefix no continuation can make valid, where rxml reads on) and
//! [`for_reference`] (rxml's handling of CR, where `Strict` follows XML 1.0 §2.11).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use strait_wire::token::{MAX_LOOKAHEAD, Reference, Stop, Strict, Token, Tokenize};
use strait_wire::{Event, Limits, StreamErrorCondition, StreamParser};

/// The tokenizer under test (`Reference` here checks the harness against itself).
type Ours = Strict;

// ===========================================================================================
// Accepted divergences
// ===========================================================================================

/// Whether `Strict` reporting `strict` where `Reference` reports `reference` is acceptable.
///
/// Accepted: any two of not-well-formed, unsupported-encoding, restricted-xml, a
/// token-too-long policy-violation and (stream level) bad-format for text between stanzas,
/// for one another. Input with more than one fault (a bad
/// byte and a bad reference, a token at the cap holding a bad character, markup cut off by
/// the end of the input) gets the condition of the fault each tokenizer notices first, and
/// rxml reads ahead in places where we decide at once. Both must still reject it, after the
/// same tokens; and the conditions of single faults are pinned exactly by the parser's own
/// tests (tests/hostile.rs: comments, processing instructions, DTDs, undeclared entities,
/// encodings, invalid UTF-8, mismatched tags).
fn conditions_equivalent(strict: StreamErrorCondition, reference: StreamErrorCondition) -> bool {
    use StreamErrorCondition as C;
    let syntax = |c| {
        matches!(
            c,
            C::NotWellFormed
                | C::UnsupportedEncoding
                | C::RestrictedXml
                | C::PolicyViolation
                | C::BadFormat
        )
    };
    strict == reference || (syntax(strict) && syntax(reference))
}

/// Whether `Strict` may fail with `strict` on input after which the reference, not told the
/// input has ended, still waits for more (e.g. `<\xC0`: no continuation makes it valid, but
/// rxml waits for one before judging). Such input fails either way once more arrives, though
/// perhaps with another condition.
///
/// Accepted for every syntax fault: `Strict` decides as soon as no continuation can be
/// valid, rxml sometimes reads further first. A `Strict` that failed early on the prefix of
/// valid input would still be caught: every case is also run with the whole input and its
/// end, where the reference does not wait.
fn early_error_acceptable(strict: StreamErrorCondition) -> bool {
    use StreamErrorCondition as C;
    matches!(
        strict,
        C::NotWellFormed | C::UnsupportedEncoding | C::RestrictedXml | C::BadFormat
    )
}

thread_local! {
    /// Set by [`for_reference`] for input on which rxml's CR handling in CDATA differs.
    static CR_QUIRK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `s` without CRs (written `\r` or `&#13;`) when [`CR_QUIRK`] is set.
fn cr_blind(s: String) -> String {
    if CR_QUIRK.with(|q| q.get()) {
        s.replace("&#13;", "").replace("\\r", "").replace('\r', "")
    } else {
        s
    }
}

/// The input as the reference gets it: every CR not followed by LF made an LF. XML 1.0 §2.11
/// normalizes line ends before parsing, so a lone CR is an LF wherever it is (text, attribute
/// values, white space); rxml does not (it keeps it in CDATA, drops it at the end of an
/// attribute value, rejects it before other characters in one). Same length, so the same
/// split points apply.
///
/// rxml also keeps a CR that follows `]` in a CDATA section, CR LF included (`]\r\n` gives
/// `]\r\n`, where XML has `]\n`): for input with `]\r` in it, [`CR_QUIRK`] has texts compared
/// without their CRs.
fn for_reference(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    CR_QUIRK.with(|q| q.set(input.windows(2).any(|w| w == b"]\r")));
    let lone = |i: usize| input[i] == b'\r' && input.get(i + 1) != Some(&b'\n');
    if !(0..input.len()).any(lone) {
        return std::borrow::Cow::Borrowed(input);
    }
    let mut v = input.to_vec();
    for (i, b) in v.iter_mut().enumerate() {
        if lone(i) {
            *b = b'\n';
        }
    }
    std::borrow::Cow::Owned(v)
}

// ===========================================================================================
// Configuration
// ===========================================================================================

const DEFAULT_SEED: u64 = 0x5354_5241_4954_0001;
const DEFAULT_TOKEN_CASES: u64 = 20_000;
const DEFAULT_STREAM_CASES: u64 = 8_000;

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let v = raw.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={raw:?} is not a number")))
}

fn base_seed() -> u64 {
    env_u64("STRAIT_DIFF_SEED").unwrap_or(DEFAULT_SEED)
}

// ===========================================================================================
// PRNG: splitmix64
// ===========================================================================================

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.next_u64() % 1000 < u64::from(per_mille)
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// The seed of case `case` of the test family `family`.
fn case_seed(base: u64, family: u64, case: u64) -> u64 {
    let mut r = Rng::new(
        base ^ family.wrapping_mul(0xA076_1D64_78BD_642F)
            ^ case.wrapping_mul(0xE703_7ED1_A0B4_28DB),
    );
    r.next_u64();
    r.next_u64()
}

// ===========================================================================================
// Generator
// ===========================================================================================

const VOCAB: &[&str] = &[
    "a",
    "b",
    "x",
    "r",
    "body",
    "message",
    "iq",
    "query",
    "item",
    "stream",
    "xml",
    "xmlns",
    "XMLNS",
    "xmlfoo",
    "é",
    "ñame",
    "日本語",
    "\u{10000}x",
    "a.b-c_d",
    "_",
    "A1",
    "a\u{B7}b",
];
const PREFIXES: &[&str] = &["p", "q", "x", "stream", "ns0", "é", "日", "a.b"];
const URIS: &[&str] = &[
    "urn:a",
    "urn:example:x",
    "jabber:x:data",
    "http://jabber.org/protocol/disco#info",
    "urn:é:ü",
    "urn:xmpp:sid:0",
];
const ENTITIES: &[&str] = &["&amp;", "&lt;", "&gt;", "&apos;", "&quot;"];
/// ASCII that may stand anywhere in text or attribute values (but `]`, `>`, `<`, `&`).
const SAFE_ASCII: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,:;!?-_/()[{}'\"=+*#@$%^~|`";
/// Unicode NameStartChar ranges (XML 1.0 fifth edition), ASCII aside.
const NAME_START_RANGES: &[(u32, u32)] = &[
    (0xC0, 0xD6),
    (0xD8, 0xF6),
    (0xF8, 0x2FF),
    (0x370, 0x37D),
    (0x37F, 0x1FFF),
    (0x200C, 0x200D),
    (0x2070, 0x218F),
    (0x2C00, 0x2FEF),
    (0x3001, 0xD7FF),
    (0xF900, 0xFDCF),
    (0x10000, 0xEFFFF),
];
/// NameStartChar in XML 1.0, but not in rxml's tables (which end at U+FDCF).
const NAME_START_NOT_IN_RXML: (u32, u32) = (0xFDF0, 0xFFFD);
/// NameChar but not NameStartChar, ASCII aside.
const NAME_ONLY_RANGES: &[(u32, u32)] = &[(0xB7, 0xB7), (0x300, 0x36F), (0x203F, 0x2040)];
/// Code points just outside the name ranges (or otherwise not name characters).
const NOT_NAME: &[char] = &[
    '\u{D7}',
    '\u{F7}',
    '\u{37E}',
    '\u{2000}',
    '\u{200B}',
    '\u{200E}',
    '\u{2041}',
    '\u{2190}',
    '\u{2BFF}',
    '\u{2FF0}',
    '\u{3000}',
    '\u{FDD0}',
    '\u{FDEF}',
    '\u{FFFE}',
    '\u{FFFF}',
    '\u{F0000}',
    '\u{10FFFF}',
    '\u{A0}',
    '\u{85}',
    '\u{7F}',
    '!',
    '"',
    '#',
    '$',
    '%',
    '(',
    ')',
    '*',
    '+',
    ',',
    ';',
    '@',
    '[',
    '\\',
    '^',
    '`',
    '{',
    '|',
    '~',
];
/// Characters that may start no name, though they may continue one.
const NOT_NAME_START: &[char] = &[
    '0', '9', '-', '.', '\u{B7}', '\u{300}', '\u{36F}', '\u{203F}',
];
/// Valid XML characters beyond ASCII, by range.
const TEXT_RANGES: &[(u32, u32)] = &[
    (0x80, 0x9F),
    (0xA0, 0x7FF),
    (0x800, 0xD7FF),
    (0xE000, 0xFFFD),
    (0x10000, 0x10FFFF),
];
const SPECIAL_CHARS: &[char] = &[
    '\u{7F}',
    '\u{80}',
    '\u{85}',
    '\u{9F}',
    '\u{A0}',
    '\u{2028}',
    '\u{FEFF}',
    '\u{FFFD}',
    '\u{D7FF}',
    '\u{E000}',
    '\u{10000}',
    '\u{10FFFF}',
    'é',
    '€',
    '😀',
    '\u{300}',
];
/// Characters XML 1.0 does not allow at all.
const BAD_CHARS: &[char] = &[
    '\0', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{E}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
];
/// Malformed or disallowed references.
const BAD_REFS: &[&str] = &[
    "&#0;",
    "&#x0;",
    "&#xD800;",
    "&#xDFFF;",
    "&#xFFFE;",
    "&#xFFFF;",
    "&#x110000;",
    "&#1114112;",
    "&#99999999999999999999999999999;",
    "&#xFFFFFFFF00000041;",
    "&#4294967361;",
    "&#x100000041;",
    "&#x;",
    "&#;",
    "&#X41;",
    "&#x41",
    "&#65",
    "&#x-41;",
    "&#-65;",
    "&#6 5;",
    "&#x4g;",
    "&#8;",
    "&#x1F;",
    "&;",
    "&",
    "& ",
    "&unknown;",
    "&AMP;",
    "&amp",
    "&amp ;",
    "&lt",
    "&a b;",
    "&é;",
    "&nbsp;",
    "&ampx;",
    "&#38;",
];
/// Byte sequences that are not UTF-8 (or encode what XML forbids).
const BAD_UTF8: &[&[u8]] = &[
    b"\xC0\x80",
    b"\xC1\xBF",
    b"\xE0\x80\x80",
    b"\xE0\x9F\xBF",
    b"\xF0\x80\x80\x80",
    b"\xF0\x8F\xBF\xBF",
    b"\xED\xA0\x80",
    b"\xED\xBF\xBF",
    b"\xF4\x90\x80\x80",
    b"\xF5\x80\x80\x80",
    b"\xF8",
    b"\xFE",
    b"\xFF",
    b"\x80",
    b"\xBF",
    b"\xC3",
    b"\xC3(",
    b"\xE2\x82",
    b"\xE2\x82(",
    b"\xF0\x9F\x98",
    b"\xF0\x9F\x98(",
    b"\xEF\xBF\xBE",
    b"\xEF\xBF\xBF",
];
/// Markup restricted XML forbids, or that is malformed.
const BAD_MARKUP: &[&str] = &[
    "<!-- c -->",
    "<!---->",
    "<!-- a -- b -->",
    "<!--",
    "-->",
    "<?pi data?>",
    "<?pi?>",
    "<?xml version='1.0'?>",
    "<?xml?>",
    "<?XML v?>",
    "<!DOCTYPE r>",
    "<!DOCTYPE r [<!ENTITY e 'x'>]>",
    "<!ELEMENT r ANY>",
    "<!ATTLIST r a CDATA #IMPLIED>",
    "<!ENTITY e 'x'>",
    "<!>",
    "<!",
    "<![CDATA[",
    "<![cdata[x]]>",
    "<![ CDATA[x]]>",
    "<![CDATA x]]>",
    "<!-x-->",
    "]]>",
    "<",
    "< a>",
    "<>",
    "</>",
    "</ a>",
    "<a",
    "<a b>",
    "<1>",
    "<:a/>",
    "<a:/>",
    "<a::b/>",
    "<a:b:c/>",
    "<xmlns:a/>",
    "<a xmlns:='u'/>",
    "<a xmlns:p=''/>",
    "<a xmlns:xml='urn:x'/>",
    "<a xmlns:xmlns='urn:x'/>",
    "<a a='1' a='2'/>",
    "<a a='1'b='2'/>",
    "<a a=1/>",
    "<a a/>",
    "<a a='<'/>",
    "<a a=\"'/>",
    "<a a='x\"/>",
    "<a/ >",
    "<a\u{0}/>",
    "<a></b>",
    "</a>",
];

/// Appends documents to a buffer. `hazard` is the per-mille chance, at each decision point,
/// of writing something invalid (0: well-formed restricted XML).
///
/// Clean output also steers clear of what rxml rejects though XML 1.0 allows it (so that
/// clean documents mostly parse to the end; the regression tables have each of these): a
/// byte order mark, white space before the root without an XML declaration, `standalone`
/// without `encoding` or other than `yes`, a CR not followed by LF in an attribute value or
/// at the very end, character references of more than 8 digits, and (but for a few) names
/// with characters from U+FDF0–U+FFFD.
struct Gen<'r> {
    rng: &'r mut Rng,
    out: Vec<u8>,
    hazard: u32,
    /// The token length cap of the case: long names, values, references and text are aimed
    /// around it.
    max_token: usize,
    /// Prefixes declared by the open elements.
    scopes: Vec<Vec<String>>,
    /// Elements still allowed (keeps documents small).
    elements_left: usize,
}

impl<'r> Gen<'r> {
    fn new(rng: &'r mut Rng, hazard: u32, max_token: usize) -> Self {
        let elements_left = 1 + rng.below(30);
        Gen {
            rng,
            out: Vec::new(),
            hazard,
            max_token,
            scopes: Vec::new(),
            elements_left,
        }
    }

    fn bad(&mut self) -> bool {
        self.hazard != 0 && self.rng.chance(self.hazard)
    }

    fn s(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn c(&mut self, c: char) {
        let mut buf = [0; 4];
        self.s(c.encode_utf8(&mut buf));
    }

    fn ws_piece(&mut self) {
        let w = self
            .rng
            .pick(&[" ", " ", " ", " ", "\t", "\n", "\r\n", "\r", "  "]);
        self.s(w);
    }

    fn ws(&mut self) {
        for _ in 0..self.rng.between(1, 2) {
            self.ws_piece();
        }
    }

    fn opt_ws(&mut self) {
        if self.rng.chance(250) {
            self.ws();
        }
    }

    fn char_in(&mut self, ranges: &[(u32, u32)]) -> char {
        let (lo, hi) = self.rng.pick(ranges);
        let cp = match self.rng.below(4) {
            0 => lo,
            1 => hi,
            _ => lo + self.rng.below((hi - lo + 1) as usize) as u32,
        };
        char::from_u32(cp).unwrap_or('\u{FFFD}')
    }

    fn name_start(&mut self) -> char {
        if self.rng.chance(3) {
            return self.char_in(&[NAME_START_NOT_IN_RXML]);
        }
        match self.rng.below(10) {
            0..=6 => self
                .rng
                .pick(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
                as char,
            _ => self.char_in(NAME_START_RANGES),
        }
    }

    fn name_char(&mut self) -> char {
        if self.rng.chance(3) {
            return self.char_in(&[NAME_START_NOT_IN_RXML]);
        }
        match self.rng.below(12) {
            0..=7 => self.rng.pick(b"abcdefghijklmnopqrstuvwxyzXYZ0123456789-._") as char,
            8..=9 => self.char_in(NAME_START_RANGES),
            _ => self.char_in(NAME_ONLY_RANGES),
        }
    }

    /// A length around the token cap, in bytes.
    fn long_len(&mut self) -> usize {
        let m = self.max_token;
        match self.rng.below(4) {
            0 => m,
            1 => m + 1,
            2 => (m + 3).saturating_sub(self.rng.below(7)),
            _ => 2 * m + self.rng.below(5),
        }
    }

    /// Whether to write a token around the cap now (rarer when the cap is large).
    fn go_long(&mut self) -> bool {
        self.rng.chance(if self.max_token > 1000 { 4 } else { 25 })
    }

    /// A name without colon.
    fn ncname(&mut self) -> String {
        if !self.go_long() && self.rng.chance(350) {
            let w = self.rng.pick(VOCAB);
            return w.to_string();
        }
        let mut s = String::new();
        if self.bad() {
            let c = if self.rng.coin() {
                self.rng.pick(NOT_NAME_START)
            } else {
                self.rng.pick(NOT_NAME)
            };
            s.push(c);
        } else {
            s.push(self.name_start());
        }
        let len = if self.go_long() {
            self.long_len()
        } else {
            self.rng.below(9)
        };
        while s.len() < len {
            if self.bad() {
                s.push(self.rng.pick(NOT_NAME));
            } else {
                s.push(self.name_char());
            }
        }
        s
    }

    /// A prefix for a new declaration (never `xml…` unless hazardous).
    fn new_prefix(&mut self) -> String {
        if self.bad() {
            return self
                .rng
                .pick(&["xml", "xmlns", "XmL", "", "1p", "p:q"])
                .to_string();
        }
        if self.rng.chance(600) {
            return self.rng.pick(PREFIXES).to_string();
        }
        let p = self.ncname();
        if p.to_ascii_lowercase().starts_with("xml") {
            "p".to_string()
        } else {
            p
        }
    }

    fn in_scope_prefix(&mut self, extra: &[(String, String)]) -> Option<String> {
        let all: Vec<&String> = self
            .scopes
            .iter()
            .flatten()
            .chain(extra.iter().map(|(p, _)| p))
            .collect();
        if all.is_empty() {
            None
        } else {
            Some(all[self.rng.below(all.len())].clone())
        }
    }

    fn weird_qname(&mut self) -> String {
        let n = self.ncname();
        match self.rng.below(8) {
            0 => format!("{n}:{n}:{n}"),
            1 => format!(":{n}"),
            2 => format!("{n}:"),
            3 => "::".to_string(),
            4 => format!("xmlns:{n}"),
            5 => format!("1{n}"),
            6 => format!("xml:{n}"),
            _ => format!("{n}::{n}"),
        }
    }

    /// An element name; prefixes it declares are added to `decls`.
    fn elem_qname(&mut self, decls: &mut Vec<(String, String)>) -> String {
        match self.rng.below(10) {
            0..=5 => self.ncname(),
            6..=7 => {
                let p = match self.in_scope_prefix(decls) {
                    Some(p) if self.rng.chance(500) => p,
                    _ => {
                        let p = self.new_prefix();
                        let uri = self.uri();
                        decls.push((p.clone(), uri));
                        p
                    }
                };
                let local = self.ncname();
                format!("{p}:{local}")
            }
            8 if self.bad() => {
                let (p, l) = (self.ncname(), self.ncname());
                format!("{p}:{l}")
            }
            9 if self.bad() => self.weird_qname(),
            _ => self.ncname(),
        }
    }

    fn attr_qname(&mut self, decls: &[(String, String)]) -> String {
        match self.rng.below(10) {
            0..=5 => self.ncname(),
            6 => "xml:lang".to_string(),
            7..=8 => match self.in_scope_prefix(decls) {
                Some(p) => {
                    let local = self.ncname();
                    format!("{p}:{local}")
                }
                None => self.ncname(),
            },
            _ if self.bad() => self.weird_qname(),
            _ => self.ncname(),
        }
    }

    fn uri(&mut self) -> String {
        if self.bad() {
            return self.rng.pick(&["", "&", "<", "'\""]).to_string();
        }
        self.rng.pick(URIS).to_string()
    }

    /// 1–10 characters of safe ASCII (not the quote `q`).
    fn word(&mut self, q: Option<u8>) {
        for _ in 0..self.rng.between(1, 10) {
            let mut b = self.rng.pick(SAFE_ASCII);
            if Some(b) == q {
                b = b'x';
            }
            self.out.push(b);
        }
    }

    fn non_ascii(&mut self) {
        let c = self.char_in(TEXT_RANGES);
        self.c(c);
    }

    fn special(&mut self) {
        let c = self.rng.pick(SPECIAL_CHARS);
        self.c(c);
    }

    /// Text around the token cap, often with multi-byte characters across the boundary.
    fn long_run(&mut self, q: Option<u8>) {
        let len = self.long_len();
        let start = self.out.len();
        let multi = self.rng.pick(&['a', 'é', '€', '😀', 'a']);
        while self.out.len() - start < len {
            if self.rng.chance(700) {
                self.c(multi);
            } else {
                let mut b = self.rng.pick(SAFE_ASCII);
                if Some(b) == q {
                    b = b'y';
                }
                self.out.push(b);
            }
        }
    }

    fn gt(&mut self) {
        if self.out.ends_with(b"]]") {
            self.s(" ");
        }
        self.s(">");
    }

    fn entity(&mut self) {
        let e = self.rng.pick(ENTITIES);
        self.s(e);
    }

    /// A valid character reference, sometimes with many leading zeros.
    fn char_ref(&mut self) {
        let cp: u32 = match self.rng.below(6) {
            0 => self
                .rng
                .pick(&[0x9, 0xA, 0xD, 0x20, 0x26, 0x3C, 0x3E, 0x5D, 0x22, 0x27]),
            1 => 0x20 + self.rng.below(0x5F) as u32,
            2 => self.char_in(TEXT_RANGES) as u32,
            3 => self.rng.pick(SPECIAL_CHARS) as u32,
            _ => self.rng.pick(&[
                0xD7FF, 0xE000, 0xFFFD, 0x10000, 0x10FFFF, 0x85, 0x7F, 0x80, 0x9F,
            ]),
        };
        let digits = if self.rng.coin() {
            format!("#{cp}")
        } else {
            let hex: String = format!("{cp:x}")
                .chars()
                .map(|c| {
                    if self.rng.coin() {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            format!("#x{hex}")
        };
        let (mark, number) = digits.split_at(if digits.starts_with("#x") { 2 } else { 1 });
        // rxml takes at most 8 digits (more: "undeclared entity").
        let zeros = if self.go_long() {
            self.long_len().saturating_sub(self.rng.below(8))
        } else if self.rng.chance(150) {
            let room = 8 - number.len();
            if self.bad() {
                room + 1
            } else {
                self.rng.between(1, room.max(1)).min(room)
            }
        } else {
            0
        };
        self.s("&");
        self.s(mark);
        for _ in 0..zeros {
            self.out.push(b'0');
        }
        self.s(number);
        self.s(";");
    }

    fn bad_bytes(&mut self) {
        match self.rng.below(4) {
            0 => {
                let r = self.rng.pick(BAD_REFS);
                self.s(r);
            }
            1 => {
                let b = self.rng.pick(BAD_UTF8);
                self.out.extend_from_slice(b);
            }
            2 => {
                let c = self.rng.pick(BAD_CHARS);
                self.c(c);
            }
            _ => {
                let m = self.rng.pick(BAD_MARKUP);
                self.s(m);
            }
        }
    }

    fn attr_value(&mut self, q: u8) {
        let items = if self.rng.chance(100) {
            0
        } else {
            self.rng.between(1, 5)
        };
        for _ in 0..items {
            match self.rng.below(14) {
                0..=4 => self.word(Some(q)),
                5 => self.entity(),
                6 => self.char_ref(),
                7 => self.non_ascii(),
                8 => {
                    // rxml rejects a lone CR before another character in a value.
                    let w = if self.bad() {
                        "\r"
                    } else {
                        self.rng.pick(&[" ", "\t", "\n", "\r\n"])
                    };
                    self.s(w);
                }
                9 => {
                    let other = if q == b'\'' { "\"" } else { "'" };
                    let s = self.rng.pick(&[other, ">", "]]>", "]", "/>"]);
                    self.s(s);
                }
                10 if self.go_long() => self.long_run(Some(q)),
                11 => self.special(),
                12 | 13 if self.bad() => match self.rng.below(4) {
                    0 => {
                        let s = self.rng.pick(&["<", "&", "<a>"]);
                        self.s(s);
                    }
                    1 => self.out.push(q),
                    _ => self.bad_bytes(),
                },
                _ => self.word(Some(q)),
            }
        }
    }

    /// The attributes of a start tag: `decls` become `xmlns:p` declarations, `extra` are
    /// written as given, more are invented.
    fn attributes(&mut self, decls: &[(String, String)], extra: &[(String, String)]) {
        let mut list: Vec<(String, Option<String>)> = Vec::new();
        for (p, uri) in decls {
            list.push((format!("xmlns:{p}"), Some(uri.clone())));
        }
        for (n, v) in extra {
            list.push((n.clone(), Some(v.clone())));
        }
        if self.rng.chance(120) && !list.iter().any(|(n, _)| n == "xmlns") {
            let uri = if self.rng.chance(200) {
                String::new()
            } else {
                self.uri()
            };
            list.push(("xmlns".to_string(), Some(uri)));
        }
        let n = if self.rng.chance(40) {
            self.rng.between(5, 12)
        } else {
            self.rng.below(4)
        };
        for _ in 0..n {
            let name = self.attr_qname(decls);
            if list.iter().any(|(x, _)| *x == name) && !self.bad() {
                continue;
            }
            list.push((name, None));
        }
        for i in (1..list.len()).rev() {
            let j = self.rng.below(i + 1);
            list.swap(i, j);
        }
        for (i, (name, value)) in list.into_iter().enumerate() {
            if i == 0 || !self.bad() {
                self.ws();
            }
            self.s(&name);
            if self.bad() {
                match self.rng.below(3) {
                    0 => {
                        self.s("=");
                        self.word(Some(b' '));
                        continue;
                    }
                    1 => continue,
                    _ => self.s("="),
                }
            }
            self.opt_ws();
            self.s("=");
            self.opt_ws();
            let q = if self.rng.coin() { b'\'' } else { b'"' };
            self.out.push(q);
            match value {
                Some(v) => self.s(&v),
                None => self.attr_value(q),
            }
            if self.bad() {
                let other = if q == b'\'' { b'"' } else { b'\'' };
                self.out.push(other);
            } else {
                self.out.push(q);
            }
        }
    }

    fn cdata(&mut self) {
        if self.bad() {
            let s = self.rng.pick(&[
                "<![CDATA",
                "<![cdata[",
                "<![ CDATA[",
                "<![CDATA[x",
                "<![CDATA[]]",
            ]);
            self.s(s);
            return;
        }
        self.s("<![CDATA[");
        let start = self.out.len();
        for _ in 0..self.rng.below(5) {
            match self.rng.below(10) {
                0..=3 => self.word(None),
                4 => {
                    let s = self.rng.pick(&[
                        "<",
                        "&",
                        "&amp;",
                        "<a>",
                        "<![CDATA[",
                        "]]",
                        "]",
                        "] ]>",
                        "]>",
                    ]);
                    self.s(s);
                }
                5 => self.ws_piece(),
                6 => self.non_ascii(),
                7 => self.s(">"),
                8 if self.go_long() => self.long_run(None),
                _ => self.special(),
            }
        }
        // No `]]>` inside: a space breaks any that formed.
        let content = self.out.split_off(start);
        for b in content {
            if b == b'>' && self.out.ends_with(b"]]") && self.out.len() - 2 >= start {
                self.out.push(b' ');
            }
            self.out.push(b);
        }
        let tail = self.rng.pick(&["", "", "]", "]]", "]]]"]);
        self.s(tail);
        self.s("]]>");
    }

    fn text_run(&mut self) {
        for _ in 0..self.rng.between(1, 4) {
            match self.rng.below(20) {
                0..=6 => self.word(None),
                7 => self.ws_piece(),
                8 => self.gt(),
                9 => {
                    let s = self.rng.pick(&["]", "]]", "]]]"]);
                    self.s(s);
                    self.word(None);
                }
                10 => self.entity(),
                11 => self.char_ref(),
                12 => self.non_ascii(),
                13 => self.special(),
                14 if self.go_long() => self.long_run(None),
                15 => {
                    let s = self.rng.pick(&["'", "\""]);
                    self.s(s);
                }
                16 => self.cdata(),
                17..=19 if self.bad() => match self.rng.below(10) {
                    0..=2 => self.s("]]>"),
                    3 => {
                        // An entity name around the token cap.
                        let len = self.long_len();
                        self.s("&");
                        self.s(&"e".repeat(len));
                        self.s(";");
                    }
                    _ => self.bad_bytes(),
                },
                _ => self.word(None),
            }
        }
    }

    fn content(&mut self, depth: usize, max_depth: usize) {
        for _ in 0..self.rng.below(6) {
            match self.rng.below(12) {
                0..=3 => self.text_run(),
                4..=6 if depth < max_depth && self.elements_left > 0 => {
                    self.element(depth + 1, max_depth, None, &[]);
                }
                7 => self.cdata(),
                8 => self.ws(),
                9 if self.rng.chance(100) => self.chain(),
                10 if self.bad() => self.bad_bytes(),
                _ => self.text_run(),
            }
        }
    }

    /// Deeply nested elements (for the depth budget).
    fn chain(&mut self) {
        let k = self.rng.between(3, 40);
        for i in 0..k {
            self.s(&format!("<d{i}>"));
        }
        if self.rng.coin() {
            self.word(None);
        }
        for i in (0..k).rev() {
            self.s(&format!("</d{i}>"));
        }
    }

    fn end_tag(&mut self, name: &str) {
        self.s("</");
        if self.bad() {
            match self.rng.below(5) {
                0 => {
                    let other = self.ncname();
                    self.s(&other);
                }
                1 => {
                    self.s(name);
                    self.s("x");
                }
                2 => {
                    self.s(" ");
                    self.s(name);
                }
                3 => {
                    let local = name.rsplit(':').next().unwrap_or(name).to_string();
                    self.s(&local);
                }
                _ => {
                    self.s(name);
                    self.s(" a='1'");
                }
            }
        } else {
            self.s(name);
        }
        if self.rng.chance(150) {
            self.ws();
        }
        self.s(">");
    }

    /// An element; `name` and `extra` attributes if given, else invented.
    fn element(
        &mut self,
        depth: usize,
        max_depth: usize,
        name: Option<&str>,
        extra: &[(String, String)],
    ) {
        self.elements_left = self.elements_left.saturating_sub(1);
        let mut decls = Vec::new();
        let name = match name {
            Some(n) => n.to_string(),
            None => self.elem_qname(&mut decls),
        };
        self.s("<");
        self.s(&name);
        self.attributes(&decls, extra);
        self.scopes
            .push(decls.into_iter().map(|(p, _)| p).collect());
        if self.rng.chance(150) {
            self.ws();
        }
        if self.rng.chance(250) {
            if self.bad() {
                let s = self.rng.pick(&["/ >", "//>", "/", "/="]);
                self.s(s);
            } else {
                self.s("/>");
            }
        } else {
            if !self.bad() {
                self.s(">");
            }
            self.content(depth, max_depth);
            self.end_tag(&name);
        }
        self.scopes.pop();
    }

    fn xml_decl(&mut self) {
        let q = if self.rng.coin() { "'" } else { "\"" };
        self.s("<?xml");
        let mut parts: Vec<(&str, &str)> = Vec::new();
        if !self.bad() {
            let v = if self.bad() {
                self.rng.pick(&["1.1", "2.0", "1.", "1.00", "", "1.0 "])
            } else {
                "1.0"
            };
            parts.push(("version", v));
        }
        if self.rng.coin() {
            let e = if self.bad() {
                self.rng.pick(&[
                    "ISO-8859-1",
                    "UTF-16",
                    "latin1",
                    "utf8",
                    "",
                    "Utf-8",
                    "UTF8",
                ])
            } else {
                self.rng.pick(&["utf-8", "UTF-8"])
            };
            parts.push(("encoding", e));
        }
        // rxml wants `encoding` before `standalone`, and only `yes`.
        if (parts.len() == 2 || self.bad()) && self.rng.chance(300) {
            let s = if self.bad() {
                self.rng.pick(&["maybe", "YES", "", "no"])
            } else {
                "yes"
            };
            parts.push(("standalone", s));
        }
        if parts.len() > 1 && self.bad() {
            parts.swap(0, 1);
        }
        for (k, v) in parts {
            self.ws();
            self.s(k);
            self.opt_ws();
            self.s("=");
            self.opt_ws();
            self.s(q);
            self.s(v);
            self.s(q);
        }
        self.opt_ws();
        self.s("?>");
    }

    /// Before the root: BOM, declaration, whitespace, and what should not be there.
    fn prolog(&mut self) {
        if self.bad() {
            // rxml takes no byte order mark.
            if self.rng.coin() {
                self.out.extend_from_slice(b"\xEF\xBB\xBF");
            } else {
                self.ws();
            }
        }
        // rxml takes whitespace before the root only after a declaration.
        if self.rng.chance(600) {
            self.xml_decl();
            if self.rng.chance(200) {
                self.ws();
            }
        }
        if self.bad() {
            if self.rng.coin() {
                self.word(None);
            } else {
                self.bad_bytes();
            }
        }
    }

    /// After the root: whitespace, and what should not be there.
    fn epilog(&mut self) {
        if self.rng.chance(300) {
            self.ws();
            if self.out.ends_with(b"\r") && !self.bad() {
                // rxml rejects a CR at the very end.
                self.s("\n");
            }
        }
        if self.bad() {
            match self.rng.below(3) {
                0 => self.word(None),
                1 => self.element(0, 1, None, &[]),
                _ => self.bad_bytes(),
            }
        }
    }

    /// One XML document with an arbitrary root.
    fn document(&mut self) {
        self.prolog();
        let max_depth = self.rng.between(1, 6);
        self.element(0, max_depth, None, &[]);
        self.epilog();
    }

    fn attr_pair(&mut self, name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

    /// An XMPP stream: header, stanzas, maybe the close tag.
    fn stream(&mut self) {
        self.prolog();
        let sp = if self.rng.chance(750) {
            "stream".to_string()
        } else if self.bad() {
            String::new()
        } else {
            self.rng.pick(&["s", "str", "x", "é"]).to_string()
        };
        let root = if sp.is_empty() {
            "stream".to_string()
        } else {
            format!("{sp}:stream")
        };
        let content_ns = if self.bad() {
            self.rng.pick(&["jabber:x", "", "urn:a"])
        } else {
            self.rng
                .pick(&["jabber:client", "jabber:client", "jabber:server"])
        };
        let stream_ns = if self.bad() {
            self.rng
                .pick(&["http://etherx.jabber.org/stream", "jabber:client", ""])
        } else {
            "http://etherx.jabber.org/streams"
        };
        let mut attrs = vec![self.attr_pair("xmlns", content_ns)];
        if !sp.is_empty() && !self.bad() {
            attrs.push((format!("xmlns:{sp}"), stream_ns.to_string()));
        }
        for (k, v, p) in [
            ("to", "example.com", 900),
            ("version", "1.0", 900),
            ("xml:lang", "en", 400),
            ("from", "user@example.com", 200),
            ("id", "abc-123", 200),
        ] {
            if self.rng.chance(p) {
                attrs.push(self.attr_pair(k, v));
            }
        }
        for i in (1..attrs.len()).rev() {
            let j = self.rng.below(i + 1);
            attrs.swap(i, j);
        }
        self.s("<");
        self.s(&root);
        self.attributes(&[], &attrs);
        self.opt_ws();
        self.s(">");
        self.scopes
            .push(if sp.is_empty() { vec![] } else { vec![sp] });
        for _ in 0..self.rng.below(7) {
            let keepalive = self.rng.pick(&["", "", " ", "\n", "\r\n", "  \t"]);
            self.s(keepalive);
            if self.bad() {
                self.text_run();
            }
            self.stanza();
        }
        self.scopes.pop();
        if self.rng.chance(600) {
            self.opt_ws();
            if self.bad() {
                self.s("</stream>");
            } else {
                self.s("</");
                self.s(&root);
                self.s(">");
            }
        }
        self.epilog();
    }

    fn stanza(&mut self) {
        self.elements_left = self.elements_left.max(1 + self.rng.below(12));
        let name = self.rng.pick(&[
            "message", "message", "presence", "iq", "iq", "r", "a", "auth", "",
        ]);
        let mut extra = Vec::new();
        for (k, p) in [
            ("to", 500),
            ("from", 200),
            ("id", 600),
            ("type", 500),
            ("xml:lang", 100),
        ] {
            if self.rng.chance(p) {
                let v = self
                    .rng
                    .pick(&["a@b", "x@y/z", "chat", "get", "1", "é", "&amp;", ""]);
                extra.push(self.attr_pair(k, v));
            }
        }
        let max_depth = self.rng.between(1, 5);
        if name.is_empty() {
            self.element(0, max_depth, None, &extra);
        } else {
            self.element(0, max_depth, Some(name), &extra);
        }
    }
}

const INTERESTING_BYTES: &[&[u8]] = &[
    b"<", b">", b"&", b";", b"'", b"\"", b"/", b"!", b"?", b"]", b"[", b":", b"=", b"\r", b"\n",
    b"\t", b"\0", b"\x80", b"\xC3", b"\xEF", b"\xFF", b" ", b"#", b"x", b"-",
];
const INTERESTING_STRINGS: &[&[u8]] = &[
    b"\xC3\xA9",
    b"\xE2\x82\xAC",
    b"\xF0\x9F\x98\x80",
    b"\xEF\xBF\xBE",
    b"\xC2\x85",
    b"\xCC\x80",
    b"]]>",
    b"&#",
    b"&#x",
    b"<![CDATA[",
    b"<!--",
    b"-->",
    b"<?",
    b"?>",
    b"</",
    b"/>",
    b"xmlns",
    b"xmlns:",
    b"&amp;",
    b"&#0;",
    b"&#x10FFFF;",
    b"<a>",
    b"</a>",
    b"='",
    b"<?xml version='1.0'?>",
];

/// Applies 1–3 random mutations.
fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
    for _ in 0..rng.between(1, 3) {
        let n = doc.len();
        if n < 2 {
            doc.extend_from_slice(rng.pick(INTERESTING_STRINGS));
            continue;
        }
        let at = rng.below(n);
        match rng.below(9) {
            0 => {
                doc.remove(at);
            }
            1 => {
                let len = rng.between(1, 8).min(n - at);
                doc.drain(at..at + len);
            }
            2 => {
                let len = rng.between(1, 16).min(n - at);
                let piece = doc[at..at + len].to_vec();
                let to = rng.below(n + 1);
                doc.splice(to..to, piece);
            }
            3 => {
                let b = rng.pick(INTERESTING_BYTES);
                doc.splice(at..at, b.iter().copied());
            }
            4 => {
                let s = rng.pick(INTERESTING_STRINGS);
                doc.splice(at..at, s.iter().copied());
            }
            5 => {
                let other = if rng.coin() {
                    (at + 1).min(n - 1)
                } else {
                    rng.below(n)
                };
                doc.swap(at, other);
            }
            6 => doc.truncate(at),
            7 => doc[at] = rng.pick(INTERESTING_BYTES)[0],
            _ => doc[at] ^= 1 << rng.below(8),
        }
    }
}

/// What a case's input is made of (for the report).
#[derive(Clone, Copy, Debug)]
enum Origin {
    Clean,
    Hazardous(u32),
    Mutated,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Clean => f.write_str("clean generated input"),
            Origin::Hazardous(h) => write!(f, "generated with hazard {h}/1000"),
            Origin::Mutated => f.write_str("mutated generated input"),
        }
    }
}

/// A generated input: a document (`stream` false) or an XMPP stream.
fn gen_input(rng: &mut Rng, max_token: usize, stream: bool) -> (Vec<u8>, Origin) {
    let kind = rng.below(20);
    let hazard = match kind {
        0..=9 => 0,
        10..=12 => rng.pick(&[5, 20, 60, 150]),
        _ => rng.pick(&[0, 0, 0, 10]),
    };
    let mut g = Gen::new(rng, hazard, max_token);
    if stream {
        g.stream();
    } else {
        g.document();
    }
    let mut doc = g.out;
    let origin = match kind {
        0..=9 => Origin::Clean,
        10..=12 => Origin::Hazardous(hazard),
        _ => {
            mutate(rng, &mut doc);
            Origin::Mutated
        }
    };
    (doc, origin)
}

// ===========================================================================================
// Chunking
// ===========================================================================================

/// How the end of input is signalled to the tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Eof {
    /// `at_eof` on the call(s) with the last chunk.
    WithLast,
    /// The last chunk without `at_eof`, then a call with only the left-over bytes and `at_eof`.
    Separate,
    /// Never (as the stream parser does).
    Never,
}

#[derive(Clone, Debug)]
struct Plan {
    /// Chunk boundaries (sorted; repeated ones make empty chunks).
    splits: Vec<usize>,
    eof: Eof,
    /// Chunks after which `release_temporaries` is called (sorted).
    release: Vec<usize>,
}

impl Plan {
    fn whole(eof: Eof) -> Plan {
        Plan {
            splits: Vec::new(),
            eof,
            release: Vec::new(),
        }
    }

    fn bytewise(n: usize, eof: Eof) -> Plan {
        Plan {
            splits: (1..n).collect(),
            eof,
            release: Vec::new(),
        }
    }

    fn chunks<'a>(&self, input: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::with_capacity(self.splits.len() + 1);
        let mut prev = 0;
        for &s in &self.splits {
            let s = s.clamp(prev, input.len());
            out.push(&input[prev..s]);
            prev = s;
        }
        out.push(&input[prev..]);
        out
    }

    fn describe(&self, n: usize) -> String {
        let splits = if self.splits.is_empty() {
            "none (whole input at once)".to_string()
        } else if n > 2 && self.splits.len() == n - 1 && self.splits.iter().copied().eq(1..n) {
            "every byte".to_string()
        } else if self.splits.len() > 300 {
            format!("{:?} … ({} in all)", &self.splits[..300], self.splits.len())
        } else {
            format!("{:?}", self.splits)
        };
        format!(
            "splits {splits}; eof {:?}; release_temporaries after chunks {:?}",
            self.eof, self.release
        )
    }

    /// The plan for the input with `len` bytes at `start` deleted.
    fn after_delete(&self, start: usize, len: usize) -> Plan {
        let splits = self
            .splits
            .iter()
            .map(|&s| {
                if s <= start {
                    s
                } else if s >= start + len {
                    s - len
                } else {
                    start
                }
            })
            .collect();
        Plan {
            splits,
            ..self.clone()
        }
    }

    /// The plan with split `i` removed (chunks `i` and `i + 1` merged).
    fn without_split(&self, i: usize) -> Plan {
        let mut p = self.clone();
        p.splits.remove(i);
        p.release = p
            .release
            .iter()
            .filter(|&&r| r != i)
            .map(|&r| if r > i { r - 1 } else { r })
            .collect();
        p
    }
}

fn random_plan(rng: &mut Rng, input: &[u8], eof_modes: bool) -> Plan {
    let n = input.len();
    let mut splits = Vec::new();
    match rng.below(10) {
        0 => {}
        1 => splits = (1..n).collect(),
        2..=4 => {
            let max = rng.pick(&[2usize, 3, 4, 7, 16, 64, 300]);
            let mut at = 0;
            loop {
                at += if rng.chance(30) {
                    0
                } else {
                    rng.between(1, max)
                };
                if at >= n {
                    break;
                }
                splits.push(at);
            }
        }
        5..=7 => {
            // Where a tokenizer must remember something across the cut.
            for i in 1..n {
                let (prev, b) = (input[i - 1], input[i]);
                let interesting = b & 0xC0 == 0x80
                    || prev >= 0xC0
                    || b"<&]#;\r>'\"=/?!-x[".contains(&prev)
                    || b"<&];>\n".contains(&b);
                if (interesting && rng.chance(400)) || rng.chance(20) {
                    splits.push(i);
                }
            }
        }
        _ => {
            for _ in 0..rng.between(1, 4) {
                splits.push(rng.below(n + 1));
            }
            splits.sort_unstable();
        }
    }
    let eof = if !eof_modes {
        Eof::Never
    } else {
        match rng.below(20) {
            0..=11 => Eof::WithLast,
            12..=16 => Eof::Separate,
            _ => Eof::Never,
        }
    };
    let release = (0..=splits.len()).filter(|_| rng.chance(60)).collect();
    Plan {
        splits,
        eof,
        release,
    }
}

// ===========================================================================================
// Panics: caught per run, reported as an outcome
// ===========================================================================================

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f`, turning a panic into `Err(message with location)` without printing it.
fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
            } else {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|_| LAST_PANIC.with(|p| p.borrow().clone()))
}

// ===========================================================================================
// Token level
// ===========================================================================================

/// How a token run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// `Ok(None)`: the document is over.
    Done,
    /// `Stop::Error`: condition and message.
    Error(StreamErrorCondition, String),
    /// `NeedMoreData` although `at_eof` was set.
    NeedMoreAtEof,
    /// Input used up without `at_eof` (plans with `Eof::Never`).
    Incomplete,
    /// `NeedMoreData` with more than `MAX_LOOKAHEAD` bytes left unconsumed.
    TooMuchLeft(usize),
    /// Far more calls than the input has bytes.
    Runaway,
    /// The tokenizer panicked.
    Panic(String),
}

impl End {
    /// The kind of end, for deciding whether two mismatches are the same.
    fn kind(&self) -> String {
        match self {
            End::Error(c, _) => format!("Error({c})"),
            End::TooMuchLeft(_) => "TooMuchLeft".to_string(),
            End::Panic(_) => "Panic".to_string(),
            other => format!("{other:?}"),
        }
    }
}

#[derive(Clone, Debug)]
struct TokRun {
    tokens: Vec<Token>,
    end: End,
}

/// Appends `t`, merging text runs and dropping empty text.
fn push_token(tokens: &mut Vec<Token>, t: Token) {
    if let Token::Text(s) = &t {
        if s.is_empty() {
            return;
        }
        if let Some(Token::Text(prev)) = tokens.last_mut() {
            prev.push_str(s);
            return;
        }
    }
    tokens.push(t);
}

/// Calls `next_token` on `buf` until it stops; `Ok(unconsumed)` on `NeedMoreData`.
fn pump<T: Tokenize>(
    tk: &mut T,
    buf: &[u8],
    at_eof: bool,
    tokens: &mut Vec<Token>,
    calls_left: &mut usize,
) -> Result<usize, End> {
    let mut input = buf;
    loop {
        if *calls_left == 0 {
            return Err(End::Runaway);
        }
        *calls_left -= 1;
        match tk.next_token(&mut input, at_eof) {
            Ok(Some(t)) => push_token(tokens, t),
            Ok(None) => return Err(End::Done),
            Err(Stop::NeedMoreData) => return Ok(input.len()),
            Err(Stop::Error(e)) => return Err(End::Error(e.condition, e.to_string())),
        }
    }
}

fn drive_tokens<T: Tokenize>(
    input: &[u8],
    plan: &Plan,
    max_token: usize,
    tokens: &mut Vec<Token>,
) -> End {
    let mut tk = T::new(max_token);
    let mut calls_left = 8 * input.len() + 256;
    let chunks = plan.chunks(input);
    // Bytes left unconsumed, passed again in front of the next chunk.
    let mut carry: Vec<u8> = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let at_eof = plan.eof == Eof::WithLast && i + 1 == chunks.len();
        carry.extend_from_slice(chunk);
        match pump(&mut tk, &carry, at_eof, tokens, &mut calls_left) {
            Err(end) => return end,
            Ok(_) if at_eof => return End::NeedMoreAtEof,
            Ok(left) if left > MAX_LOOKAHEAD => return End::TooMuchLeft(left),
            Ok(left) => {
                carry.drain(..carry.len() - left);
            }
        }
        if plan.release.binary_search(&i).is_ok() {
            tk.release_temporaries();
        }
    }
    if plan.eof == Eof::Separate {
        return match pump(&mut tk, &carry, true, tokens, &mut calls_left) {
            Err(end) => end,
            Ok(_) => End::NeedMoreAtEof,
        };
    }
    End::Incomplete
}

fn run_tokens<T: Tokenize>(input: &[u8], plan: &Plan, max_token: usize) -> TokRun {
    let mut tokens = Vec::new();
    let end =
        catch(|| drive_tokens::<T>(input, plan, max_token, &mut tokens)).unwrap_or_else(End::Panic);
    TokRun { tokens, end }
}

/// Whether `a` and `b` are text runs one of which is a prefix of the other.
fn text_prefix_related(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::Text(x), Token::Text(y)) => {
            let (x, y) = (cr_blind(x.clone()), cr_blind(y.clone()));
            x.starts_with(y.as_str()) || y.starts_with(x.as_str())
        }
        _ => false,
    }
}

/// Two tokens are the same (texts without CRs under [`CR_QUIRK`]).
fn tok_eq(p: &Token, q: &Token) -> bool {
    match (p, q) {
        (Token::Text(x), Token::Text(y)) => cr_blind(x.clone()) == cr_blind(y.clone()),
        _ => p == q,
    }
}

/// Why the two runs disagree, if they do (`a` is `Strict`'s, `b` the reference's).
///
/// - Both end the document: identical tokens.
/// - Both fail: equivalent conditions, and identical tokens up to the shorter run's length,
///   except that the last of those may be a text run cut short (one may emit text before
///   noticing an error that the other notices first).
/// - Both run out of input without `at_eof`: identical tokens, except the trailing text run,
///   of which one may hold back a tail (undecided bytes: `\r`, a partial reference, `]]`).
/// - `Strict` fails where the reference runs out of input: only if [`early_error_acceptable`],
///   and then as when both fail.
/// - Anything else (one ends the document and the other fails, `NeedMoreData` at the end of
///   input or leaving more than `MAX_LOOKAHEAD` bytes, a panic, ...) disagrees.
fn compare_tokens(a: &TokRun, b: &TokRun) -> Option<String> {
    let first_diff = |x: &[Token], y: &[Token]| x.iter().zip(y).position(|(p, q)| !tok_eq(p, q));
    let prefix_agrees = |a: &TokRun, b: &TokRun| {
        let n = a.tokens.len().min(b.tokens.len());
        match first_diff(&a.tokens[..n], &b.tokens[..n]) {
            Some(i) if i + 1 < n || !text_prefix_related(&a.tokens[i], &b.tokens[i]) => {
                Some(format!("tokens before the error differ at #{i}"))
            }
            _ => None,
        }
    };
    match (&a.end, &b.end) {
        (End::Error(c, _), End::Incomplete) if early_error_acceptable(*c) => prefix_agrees(a, b),
        (End::Error(ca, _), End::Error(cb, _)) => {
            if !conditions_equivalent(*ca, *cb) {
                return Some(format!("error conditions differ: {ca} vs {cb}"));
            }
            prefix_agrees(a, b)
        }
        (End::Done, End::Done) => {
            if a.tokens.len() == b.tokens.len() && first_diff(&a.tokens, &b.tokens).is_none() {
                return None;
            }
            let i = first_diff(&a.tokens, &b.tokens)
                .unwrap_or_else(|| a.tokens.len().min(b.tokens.len()));
            Some(format!("tokens differ at #{i}"))
        }
        (End::Incomplete, End::Incomplete) => {
            let split = |t: &[Token]| -> (usize, String) {
                match t.last() {
                    Some(Token::Text(s)) => (t.len() - 1, s.clone()),
                    _ => (t.len(), String::new()),
                }
            };
            let (na, ta) = split(&a.tokens);
            let (nb, tb) = split(&b.tokens);
            let (ta, tb) = (cr_blind(ta), cr_blind(tb));
            if na != nb || first_diff(&a.tokens[..na], &b.tokens[..nb]).is_some() {
                let i = first_diff(&a.tokens[..na], &b.tokens[..nb]).unwrap_or(na.min(nb));
                return Some(format!("tokens differ at #{i}"));
            }
            if !ta.starts_with(&tb) && !tb.starts_with(&ta) {
                return Some("trailing text differs (beyond a held-back tail)".to_string());
            }
            None
        }
        (x, y) => Some(format!(
            "runs end differently: {} vs {}",
            describe_end(x),
            describe_end(y)
        )),
    }
}

fn describe_end(e: &End) -> String {
    match e {
        End::Error(c, msg) => format!("error {c} ({msg})"),
        End::Panic(msg) => format!("PANIC: {msg}"),
        End::TooMuchLeft(n) => format!(
            "NeedMoreData leaving {n} bytes unconsumed (more than MAX_LOOKAHEAD = {MAX_LOOKAHEAD})"
        ),
        other => format!("{other:?}"),
    }
}

/// A Rust byte-string literal of `bytes`.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 3);
    s.push_str("b\"");
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7E => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02X}");
            }
        }
    }
    s.push('"');
    s
}

fn describe_tokens(out: &mut String, label: &str, run: &TokRun, focus: Option<usize>) {
    let _ = writeln!(
        out,
        "  {label}: {} tokens, then {}",
        run.tokens.len(),
        describe_end(&run.end)
    );
    let (from, to) = match focus {
        Some(i) if run.tokens.len() > 40 => (i.saturating_sub(8), (i + 8).min(run.tokens.len())),
        _ => (0, run.tokens.len().min(200)),
    };
    if from > 0 {
        let _ = writeln!(out, "      …");
    }
    for (i, t) in run.tokens.iter().enumerate().take(to).skip(from) {
        let _ = writeln!(out, "    #{i}: {t:?}");
    }
    if to < run.tokens.len() {
        let _ = writeln!(out, "      …");
    }
}

fn focus_of(why: &str) -> Option<usize> {
    let at = why.find('#')?;
    why[at + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn token_report(
    input: &[u8],
    plan: &Plan,
    max_token: usize,
    why: &str,
    strict: &TokRun,
    reference: &TokRun,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mismatch: {why}");
    let _ = writeln!(out, "  max_token: {max_token}");
    let _ = writeln!(out, "  input ({} bytes): {}", input.len(), escape(input));
    let _ = writeln!(out, "  chunking: {}", plan.describe(input.len()));
    // Around the first difference, or where the shorter run stopped.
    let focus = focus_of(why).or(Some(strict.tokens.len().min(reference.tokens.len())));
    describe_tokens(&mut out, "Strict", strict, focus);
    describe_tokens(&mut out, "Reference", reference, focus);
    out
}

/// Runs both tokenizers; `Some((why, strict, reference))` if they disagree.
fn token_mismatch(input: &[u8], plan: &Plan, max_token: usize) -> Option<(String, TokRun, TokRun)> {
    let s = run_tokens::<Ours>(input, plan, max_token);
    let r = run_tokens::<Reference>(&for_reference(input), plan, max_token);
    compare_tokens(&s, &r).map(|why| (why, s, r))
}

/// The kind of mismatch (what disagrees, and how each side ended, particulars blanked):
/// kept while minimizing, and groups mismatches in reports.
fn token_class(why: &str, s: &TokRun, r: &TokRun) -> String {
    format!(
        "token level, {} | Strict: {} | Reference: {}",
        why.split([':', '#']).next().unwrap_or(why).trim(),
        token_end_class(&s.end),
        token_end_class(&r.end)
    )
}

/// Longest a minimization runs.
const MINIMIZE_TIME: Duration = Duration::from_secs(20);

/// Shrinks `input` and `plan` while `fails` holds (bounded in runs and time).
fn minimize(input: &[u8], plan: &Plan, fails: &dyn Fn(&[u8], &Plan) -> bool) -> (Vec<u8>, Plan) {
    let mut best = input.to_vec();
    let mut plan = plan.clone();
    let runs = Cell::new(0usize);
    let deadline = Instant::now() + MINIMIZE_TIME;
    let exhausted = || runs.get() >= 20_000 || Instant::now() > deadline;
    let attempt = |i: &[u8], p: &Plan| -> bool {
        if exhausted() {
            return false;
        }
        runs.set(runs.get() + 1);
        fails(i, p)
    };
    loop {
        let mut progress = false;
        if !plan.release.is_empty() {
            let p = Plan {
                release: Vec::new(),
                ..plan.clone()
            };
            if attempt(&best, &p) {
                plan = p;
                progress = true;
            }
        }
        if !plan.splits.is_empty() {
            let p = Plan::whole(plan.eof);
            if attempt(&best, &p) {
                plan = p;
                progress = true;
            }
        }
        let mut i = 0;
        while i < plan.splits.len() {
            let p = plan.without_split(i);
            if attempt(&best, &p) {
                plan = p;
                progress = true;
            } else {
                i += 1;
            }
        }
        // Markup-aligned ranges, longest first: from a `<` to just after a later `>` (whole
        // elements and stanzas, which byte ranges cannot remove without unbalancing tags).
        let mut i = 0;
        while i < best.len() && !exhausted() {
            if best[i] == b'<' {
                let ends: Vec<usize> = (i + 1..best.len())
                    .filter(|&j| best[j] == b'>')
                    .map(|j| j + 1)
                    .collect();
                let mut removed = false;
                for &j in ends.iter().rev() {
                    let cand = [&best[..i], &best[j..]].concat();
                    let p = plan.after_delete(i, j - i);
                    if attempt(&cand, &p) {
                        best = cand;
                        plan = p;
                        progress = true;
                        removed = true;
                        break;
                    }
                }
                if removed {
                    continue;
                }
            }
            i += 1;
        }
        // Unwrapping elements: a start tag and its end tag removed together.
        let mut i = 0;
        while i < best.len() && !exhausted() {
            if let Some((tag_end, end_tag)) = element_at(&best, i) {
                let (k, l) = end_tag;
                let mut cand = best.clone();
                cand.drain(k..l);
                cand.drain(i..tag_end);
                let p = plan.after_delete(k, l - k).after_delete(i, tag_end - i);
                if attempt(&cand, &p) {
                    best = cand;
                    plan = p;
                    progress = true;
                    continue;
                }
            }
            i += 1;
        }
        // Byte ranges: halving sizes at aligned offsets, then short ranges at every offset.
        let mut k = (best.len() / 2).max(1);
        loop {
            let step = if k <= 8 { 1 } else { k };
            let mut start = 0;
            while start < best.len() && !exhausted() {
                let len = k.min(best.len() - start);
                let mut cand = best.clone();
                cand.drain(start..start + len);
                let p = plan.after_delete(start, len);
                if attempt(&cand, &p) {
                    best = cand;
                    plan = p;
                    progress = true;
                } else {
                    start += step;
                }
            }
            if k == 1 {
                break;
            }
            k = if k > 16 { k / 2 } else { k - 1 };
        }
        if !progress || exhausted() {
            break;
        }
    }
    (best, plan)
}

/// If a start tag `<name …>` begins at `i`: where it ends, and the range of the first
/// `</name>` after it.
fn element_at(doc: &[u8], i: usize) -> Option<(usize, (usize, usize))> {
    let rest = doc.get(i..)?;
    if rest.first() != Some(&b'<') || matches!(rest.get(1), None | Some(b'/' | b'!' | b'?')) {
        return None;
    }
    let gt = rest.iter().position(|&b| b == b'>')?;
    if rest[gt - 1] == b'/' {
        return None;
    }
    let name_len = rest[1..gt]
        .iter()
        .position(|b| b" \t\r\n/".contains(b))
        .unwrap_or(gt - 1);
    let close = [b"</".as_slice(), &rest[1..1 + name_len], b">"].concat();
    let tag_end = i + gt + 1;
    let k = tag_end
        + doc[tag_end..]
            .windows(close.len())
            .position(|w| w == close)?;
    Some((tag_end, (k, k + close.len())))
}

fn minimized_token_report(input: &[u8], plan: &Plan, max_token: usize, sig: &str) -> String {
    let fails = |i: &[u8], p: &Plan| {
        token_mismatch(i, p, max_token).is_some_and(|(w, s, r)| token_class(&w, &s, &r) == sig)
    };
    let (mi, mp) = minimize(input, plan, &fails);
    match token_mismatch(&mi, &mp, max_token) {
        Some((why, s, r)) => token_report(&mi, &mp, max_token, &why, &s, &r),
        None => "  (minimization lost the mismatch)\n".to_string(),
    }
}

/// A mismatch found by a check.
struct Mismatch {
    /// The kind of mismatch, finer than the minimizer's signature (messages with numbers
    /// blanked): groups mismatches in the survey mode (`STRAIT_DIFF_ALL`).
    class: String,
    /// Case, rerun command, input, chunking and both outputs.
    report: String,
    /// Produces the report of a minimized input with the same kind of mismatch.
    minimize: Box<dyn FnOnce() -> String + Send>,
}

/// An error message without its particulars (numbers, code points, bytes, names), to group
/// mismatches by kind.
fn blank_numbers(msg: &str) -> String {
    let msg = msg.strip_prefix("stream error ").unwrap_or(msg);
    let chars: Vec<char> = msg.chars().collect();
    let mut out = String::with_capacity(msg.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let hex = out.ends_with("U+") || out.ends_with("\\x") || out.ends_with("#x");
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            while i < chars.len()
                && (chars[i].is_ascii_digit() || (hex && chars[i].is_ascii_hexdigit()))
            {
                i += 1;
            }
            out.push('#');
            continue;
        }
        out.push(c);
        i += 1;
        let close = if out.ends_with("prefix '") {
            '\''
        } else if out.ends_with(" on <") {
            '>'
        } else {
            continue;
        };
        while i < chars.len() && chars[i] != close {
            i += 1;
        }
        out.push('…');
    }
    out
}

fn token_end_class(e: &End) -> String {
    match e {
        End::Error(_, msg) => blank_numbers(msg),
        other => other.kind(),
    }
}

fn token_mismatch_details(
    why: String,
    s: &TokRun,
    r: &TokRun,
    input: Vec<u8>,
    plan: Plan,
    max_token: usize,
    report: String,
) -> Mismatch {
    let class = token_class(&why, s, r);
    let sig = class.clone();
    Mismatch {
        class,
        report,
        minimize: Box::new(move || minimized_token_report(&input, &plan, max_token, &sig)),
    }
}

struct TokenCase {
    origin: Origin,
    max_token: usize,
    input: Vec<u8>,
    plan: Plan,
}

fn token_case(seed: u64) -> TokenCase {
    let mut rng = Rng::new(seed);
    let max_token = rng.pick(&[64, 100, 256, 1000, 8192]);
    let stream = rng.chance(200);
    let (input, origin) = gen_input(&mut rng, max_token, stream);
    let plan = random_plan(&mut rng, &input, true);
    TokenCase {
        origin,
        max_token,
        input,
        plan,
    }
}

/// Case `case` of the token-level test: `Some(report)` on a mismatch.
fn check_token_case(base: u64, case: u64, verbose: bool) -> Option<Mismatch> {
    let seed = case_seed(base, 1, case);
    let tc = token_case(seed);
    let s = run_tokens::<Ours>(&tc.input, &tc.plan, tc.max_token);
    let r = run_tokens::<Reference>(&for_reference(&tc.input), &tc.plan, tc.max_token);
    let why = compare_tokens(&s, &r);
    if verbose {
        println!(
            "token case {case} (seed {seed:#x}, {}): {}\n{}",
            tc.origin,
            why.as_deref().unwrap_or("agree"),
            token_report(
                &tc.input,
                &tc.plan,
                tc.max_token,
                why.as_deref().unwrap_or("-"),
                &s,
                &r
            )
        );
    }
    let why = why?;
    let mut report = format!(
        "differential mismatch, token level: case {case} (case seed {seed:#x}, {})\n\
         rerun: STRAIT_DIFF_SEED={base:#x} STRAIT_DIFF_CASE={case} cargo test -p strait-wire \
         --test differential random_tokens -- --nocapture\n",
        tc.origin
    );
    report.push_str(&token_report(
        &tc.input,
        &tc.plan,
        tc.max_token,
        &why,
        &s,
        &r,
    ));
    Some(token_mismatch_details(
        why,
        &s,
        &r,
        tc.input,
        tc.plan,
        tc.max_token,
        report,
    ))
}

// ===========================================================================================
// Stream level
// ===========================================================================================

#[derive(Clone, Debug)]
struct StreamRun {
    events: Vec<Event>,
    error: Option<(StreamErrorCondition, String)>,
    panic: Option<String>,
}

fn run_stream<T: Tokenize>(input: &[u8], plan: &Plan, limits: &Limits) -> StreamRun {
    let mut events = Vec::new();
    let mut error = None;
    let outcome = catch(|| {
        let mut p = StreamParser::<T>::with_tokenizer(limits.clone());
        for chunk in plan.chunks(input) {
            p.feed(chunk);
            loop {
                match p.next_event() {
                    Ok(Some(ev)) => {
                        events.push(ev);
                        assert!(
                            events.len() <= input.len() + 16,
                            "runaway: more events than input bytes"
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // A dead parser keeps returning its error.
                        let again = p.next_event();
                        assert_eq!(again.as_ref().err(), Some(&e), "error not sticky");
                        error = Some((e.condition, e.to_string()));
                        return;
                    }
                }
            }
        }
    });
    StreamRun {
        events,
        error,
        panic: outcome.err(),
    }
}

fn compare_streams(a: &StreamRun, b: &StreamRun) -> Option<String> {
    if a.panic.is_some() || b.panic.is_some() {
        return Some("a parser panicked".to_string());
    }
    match (&a.error, &b.error) {
        (Some((ca, _)), Some((cb, _))) if !conditions_equivalent(*ca, *cb) => {
            return Some(format!("error conditions differ: {ca} vs {cb}"));
        }
        (Some((c, _)), None) if early_error_acceptable(*c) => {}
        (Some(_), None) => return Some("only Strict failed".to_string()),
        (None, Some(_)) => return Some("only Reference failed".to_string()),
        _ => {}
    }
    // Under the CR quirk the stanzas' content (and their children's byte ranges) differ by
    // the CRs rxml keeps: only the events' number is compared.
    let differ = if CR_QUIRK.with(|q| q.get()) {
        a.events.len() != b.events.len()
    } else {
        a.events != b.events
    };
    if differ {
        let i = a
            .events
            .iter()
            .zip(&b.events)
            .position(|(x, y)| x != y)
            .unwrap_or(a.events.len().min(b.events.len()));
        return Some(format!("events differ at #{i}"));
    }
    None
}

fn describe_stream(out: &mut String, label: &str, run: &StreamRun) {
    let end = match (&run.panic, &run.error) {
        (Some(p), _) => format!("PANIC: {p}"),
        (None, Some((c, msg))) => format!("error {c} ({msg})"),
        (None, None) => "no error".to_string(),
    };
    let _ = writeln!(out, "  {label}: {} events, then {end}", run.events.len());
    for (i, ev) in run.events.iter().enumerate().take(50) {
        let _ = writeln!(out, "    #{i}: {ev:?}");
    }
    if run.events.len() > 50 {
        let _ = writeln!(out, "      …");
    }
}

fn stream_report(
    input: &[u8],
    plan: &Plan,
    limits: &Limits,
    why: &str,
    s: &StreamRun,
    r: &StreamRun,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "mismatch: {why}");
    let _ = writeln!(out, "  limits: {limits:?}");
    let _ = writeln!(out, "  input ({} bytes): {}", input.len(), escape(input));
    let _ = writeln!(out, "  feeds: {}", plan.describe(input.len()));
    describe_stream(&mut out, "Strict", s);
    describe_stream(&mut out, "Reference", r);
    out
}

fn stream_mismatch(
    input: &[u8],
    plan: &Plan,
    limits: &Limits,
) -> Option<(String, StreamRun, StreamRun)> {
    let s = run_stream::<Ours>(input, plan, limits);
    let r = run_stream::<Reference>(&for_reference(input), plan, limits);
    compare_streams(&s, &r).map(|why| (why, s, r))
}

/// As [`token_class`], for the stream level.
fn stream_class(why: &str, s: &StreamRun, r: &StreamRun) -> String {
    format!(
        "stream level, {} | Strict: {} | Reference: {}",
        why.split([':', '#']).next().unwrap_or(why).trim(),
        stream_end_class(s),
        stream_end_class(r)
    )
}

fn minimized_stream_report(input: &[u8], plan: &Plan, limits: &Limits, sig: &str) -> String {
    let fails = |i: &[u8], p: &Plan| {
        stream_mismatch(i, p, limits).is_some_and(|(w, s, r)| stream_class(&w, &s, &r) == sig)
    };
    let (mi, mp) = minimize(input, plan, &fails);
    match stream_mismatch(&mi, &mp, limits) {
        Some((why, s, r)) => stream_report(&mi, &mp, limits, &why, &s, &r),
        None => "  (minimization lost the mismatch)\n".to_string(),
    }
}

fn stream_end_class(run: &StreamRun) -> String {
    match (&run.panic, &run.error) {
        (Some(p), _) => format!("panic: {}", blank_numbers(p)),
        (None, Some((_, msg))) => blank_numbers(msg),
        (None, None) => "no error".to_string(),
    }
}

fn stream_mismatch_details(
    why: String,
    s: &StreamRun,
    r: &StreamRun,
    input: Vec<u8>,
    plan: Plan,
    limits: Limits,
    report: String,
) -> Mismatch {
    let class = stream_class(&why, s, r);
    let sig = class.clone();
    Mismatch {
        class,
        report,
        minimize: Box::new(move || minimized_stream_report(&input, &plan, &limits, &sig)),
    }
}

fn small_limits(rng: &mut Rng) -> Limits {
    Limits {
        max_stanza_bytes: rng.between(200, 2000),
        max_depth: rng.between(1, 6),
        // Mostly enough for the stream header's.
        max_attributes: if rng.chance(200) {
            rng.between(1, 4)
        } else {
            rng.between(6, 12)
        },
    }
}

fn check_stream_case(base: u64, case: u64, verbose: bool) -> Option<Mismatch> {
    let seed = case_seed(base, 2, case);
    let mut rng = Rng::new(seed);
    let limits = if rng.chance(300) {
        small_limits(&mut rng)
    } else {
        Limits::authenticated()
    };
    // The stream parser's token cap.
    let max_token = limits.max_stanza_bytes.clamp(64, 8192);
    let (input, origin) = gen_input(&mut rng, max_token, true);
    let plan = random_plan(&mut rng, &input, false);
    let s = run_stream::<Ours>(&input, &plan, &limits);
    let r = run_stream::<Reference>(&for_reference(&input), &plan, &limits);
    let why = compare_streams(&s, &r);
    if verbose {
        println!(
            "stream case {case} (seed {seed:#x}, {origin}): {}\n{}",
            why.as_deref().unwrap_or("agree"),
            stream_report(
                &input,
                &plan,
                &limits,
                why.as_deref().unwrap_or("-"),
                &s,
                &r
            )
        );
    }
    let why = why?;
    let mut report = format!(
        "differential mismatch, stream level: case {case} (case seed {seed:#x}, {origin})\n\
         rerun: STRAIT_DIFF_SEED={base:#x} STRAIT_DIFF_CASE={case} cargo test -p strait-wire \
         --test differential random_streams -- --nocapture\n"
    );
    report.push_str(&stream_report(&input, &plan, &limits, &why, &s, &r));
    Some(stream_mismatch_details(
        why, &s, &r, input, plan, limits, report,
    ))
}

// ===========================================================================================
// Running many cases
// ===========================================================================================

/// Runs cases `0..n` (or only `STRAIT_DIFF_CASE`) of `check` on all cores; panics with the
/// report of a failing case.
fn run_cases(name: &str, default_cases: u64, check: fn(u64, u64, bool) -> Option<Mismatch>) {
    let base = base_seed();
    if let Some(case) = env_u64("STRAIT_DIFF_CASE") {
        if let Some(m) = check(base, case, true) {
            panic!("{}minimized:\n{}", m.report, (m.minimize)());
        }
        return;
    }
    let n = env_u64("STRAIT_DIFF_CASES").unwrap_or(default_cases);
    let survey = survey_mode();
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n.max(1) as usize);
    const BLOCK: u64 = 16;
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let found = Mismatches::default();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let from = next.fetch_add(BLOCK, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    for case in from..(from + BLOCK).min(n) {
                        if let Some(m) = check(base, case, false) {
                            found.add(case, m);
                            if !survey {
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    found.finish(&format!("{name} ({n} cases, seed {base:#x})"));
    println!(
        "{name}: {n} cases agree ({:.1?}, seed {base:#x}, {threads} threads)",
        started.elapsed()
    );
}

fn survey_mode() -> bool {
    std::env::var_os("STRAIT_DIFF_ALL").is_some()
}

/// Mismatches found so far, by class; the first of each class minimized.
#[derive(Default)]
struct Mismatches(Mutex<Vec<MismatchClass>>);

struct MismatchClass {
    class: String,
    count: u64,
    first_case: u64,
    report: String,
    minimized: Option<String>,
}

/// Classes minimized at most, but in survey mode (minimizing takes up to [`MINIMIZE_TIME`]
/// each).
const MINIMIZED_CLASSES: usize = 12;

impl Mismatches {
    fn add(&self, case: u64, m: Mismatch) {
        {
            let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = all.iter_mut().find(|c| c.class == m.class) {
                c.count += 1;
                if case < c.first_case {
                    c.first_case = case;
                    c.report = m.report;
                }
                return;
            }
            let minimize = all.len() < MINIMIZED_CLASSES || survey_mode();
            all.push(MismatchClass {
                class: m.class.clone(),
                count: 1,
                first_case: case,
                report: m.report,
                minimized: None,
            });
            if !minimize {
                return;
            }
        }
        // Outside the lock: other threads go on meanwhile.
        let minimized = (m.minimize)();
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.iter_mut().find(|c| c.class == m.class) {
            c.minimized = Some(minimized);
        }
    }

    /// Panics with the report, if anything mismatched.
    fn finish(self, what: &str) {
        let mut all = self.0.into_inner().unwrap_or_else(|e| e.into_inner());
        if all.is_empty() {
            return;
        }
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
        let total: u64 = all.iter().map(|c| c.count).sum();
        let mut out = format!(
            "{what}: {total} mismatching case(s) in {} kind(s) of mismatch\n",
            all.len()
        );
        for c in &all {
            let _ = writeln!(out, "  {} × {}", c.count, c.class);
        }
        for c in &all {
            let _ = writeln!(
                out,
                "\n==== {} × {} (first: case {})",
                c.count, c.class, c.first_case
            );
            if all.len() == 1 {
                out.push_str(&c.report);
            } else {
                // Only the rerun line and the minimized input: full reports get long.
                for line in c.report.lines().take(2) {
                    let _ = writeln!(out, "{line}");
                }
            }
            match &c.minimized {
                Some(m) => {
                    out.push_str("minimized:\n");
                    out.push_str(m);
                }
                None if all.len() > 1 => {
                    for line in c.report.lines().skip(2) {
                        let _ = writeln!(out, "{line}");
                    }
                }
                None => {}
            }
        }
        panic!("{out}");
    }
}

#[test]
fn random_tokens() {
    run_cases("random_tokens", DEFAULT_TOKEN_CASES, check_token_case);
}

#[test]
fn random_streams() {
    run_cases("random_streams", DEFAULT_STREAM_CASES, check_stream_case);
}

// ===========================================================================================
// Hand-written regression inputs
// ===========================================================================================

/// Whole documents (token level).
const DOCS: &[&[u8]] = &[
    b"<a/>",
    b"<a />",
    b"<a\t\r\n/>",
    b"<a></a>",
    b"<a></a >",
    b"<a></a\n\t>",
    b"<?xml version='1.0'?><a/>",
    b"<?xml version=\"1.0\"?><a/>",
    b"<?xml version = '1.0' encoding = 'utf-8' standalone = 'yes' ?><a/>",
    b"<?xml version='1.0' encoding='UTF-8'?><a/>",
    b"<?xml version='1.0' encoding='Utf-8'?><a/>",
    b"<?xml version='1.0' encoding='utf8'?><a/>",
    b"<?xml version='1.0' encoding='ISO-8859-1'?><a/>",
    b"<?xml version='1.0' encoding='UTF-16'?><a/>",
    b"<?xml version='1.1'?><a/>",
    b"<?xml version='2.0'?><a/>",
    b"<?xml version='1.0' standalone='no'?><a/>",
    b"<?xml version='1.0' standalone='maybe'?><a/>",
    b"<?xml version='1.0' standalone='yes' encoding='utf-8'?><a/>",
    b"<?xml encoding='utf-8'?><a/>",
    b"<?xml?><a/>",
    b"<?xml version='1.0'\t\n?><a/>",
    b"<?xml version='1.0\"?><a/>",
    b"<?xml\tversion='1.0'?>\r\n<a/>",
    b" <?xml version='1.0'?><a/>",
    b"\n<a/>",
    b"\xEF\xBB\xBF<a/>",
    b"\xEF\xBB\xBF<?xml version='1.0'?><a/>",
    b"\xEF\xBB<a/>",
    b"text<a/>",
    b"<a/>text",
    b"<a/> \n\r\n\t",
    b"<a/>\r",
    b"<a/>\r\n",
    b"<a b='x\ry'/>",
    b"<a b='x\r'/>",
    b"<a/><b/>",
    b"<a/></a>",
    b"<a/><!-- c -->",
    b"<!-- c --><a/>",
    b"<a><!-- c --></a>",
    b"<a><!----></a>",
    b"<?pi x?><a/>",
    b"<a><?pi x?></a>",
    b"<a><?xml version='1.0'?></a>",
    b"<a/><?xml version='1.0'?>",
    b"<?xml version='1.0'?><?xml version='1.0'?><a/>",
    b"<!DOCTYPE a><a/>",
    b"<!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>",
    b"<a><!ELEMENT a ANY></a>",
    b"<a><!ATTLIST a b CDATA #IMPLIED></a>",
    b"<a><!></a>",
    b"<a></b>",
    b"<a></ a>",
    b"<a></a x='1'>",
    b"<a><b></a></b>",
    b"<a><b/></a><c/>",
    b"<p:a xmlns:p='urn:p'></p:a>",
    b"<p:a xmlns:p='urn:p'></q:a>",
    b"<p:a xmlns:p='urn:p'></a>",
    b"<p:a></p:a>",
    b"<a:b:c/>",
    b"<:a/>",
    b"<a:/>",
    b"<1a/>",
    b"<-a/>",
    b"<.a/>",
    b"<xmlns:a/>",
    b"<xmlns/>",
    b"<a xmlns:='u'/>",
    b"<a xmlns:p=''/>",
    b"<a xmlns=''/>",
    b"<a xmlns:xml='http://www.w3.org/XML/1998/namespace'/>",
    b"<a xmlns:xmlns='urn:x'/>",
    b"<a b:c:d='1'/>",
    b"<a :b='1'/>",
    b"<a b:='1'/>",
    b"<a 1b='1'/>",
    b"<a xmlns='urn:x' xmlns:p=\"urn:p\" p:b='1'/>",
    b"<a b = '1'\tc\n=\n\"2\"/>",
    b"<a b='1' b='2'/>",
    b"<a b='1'c='2'/>",
    b"<a b=1/>",
    b"<a b/>",
    b"<a b=/>",
    b"<a b='1'/ >",
    b"<a b='<'/>",
    b"<a b='>'/>",
    b"<a b=']]>'/>",
    b"<a b='\"'/>",
    b"<a b=\"'\"/>",
    b"<a b='x\"/>",
    b"<a b='x\ty\nz\rw\r\nv'/>",
    b"<a b='&#9;&#10;&#13;&#x20;'/>",
    b"<a b='&amp;&lt;&gt;&apos;&quot;'/>",
    b"<a b='&'/>",
    b"<a b='&unknown;'/>",
    b"<a b='&#0;'/>",
    b"<a b='\xFF'/>",
    b"<a b='\xC3'/>",
    b"<a b='\x01'/>",
    b"<a\xC3\xA9/>",
    b"<a\xC3/>",
    b"<a\xFF/>",
    b"<a\0/>",
    b"\0<a/>",
    "<é ñ='ü'>日本語<\u{10000}/></é>".as_bytes(),
    "<\u{C0}\u{D6}\u{D8}\u{F6}\u{F8}\u{2FF}/>".as_bytes(),
    "<\u{370}\u{37D}\u{37F}\u{1FFF}/>".as_bytes(),
    "<\u{200C}\u{200D}/>".as_bytes(),
    "<\u{2070}\u{218F}\u{2C00}\u{2FEF}\u{3001}\u{D7FF}/>".as_bytes(),
    "<\u{F900}\u{FDCF}\u{FDF0}\u{FFFD}\u{10000}\u{EFFFF}/>".as_bytes(),
    "<a\u{B7}\u{300}\u{36F}\u{203F}\u{2040}-.9/>".as_bytes(),
    "<\u{D7}/>".as_bytes(),
    "<a\u{D7}/>".as_bytes(),
    "<\u{F7}/>".as_bytes(),
    "<\u{300}a/>".as_bytes(),
    "<\u{B7}a/>".as_bytes(),
    "<\u{203F}/>".as_bytes(),
    "<a\u{37E}/>".as_bytes(),
    "<a\u{2000}/>".as_bytes(),
    "<a\u{FFFE}/>".as_bytes(),
    "<a\u{FFFF}/>".as_bytes(),
    "<a\u{F0000}/>".as_bytes(),
    "<a\u{85}/>".as_bytes(),
    "<a \u{E9}='1'/>".as_bytes(),
    "<a \u{D7}='1'/>".as_bytes(),
    "<a></a\u{E9}>".as_bytes(),
    b"",
    b" ",
    b"<",
    b"<a",
    b"<a>",
    b"<a></a",
    b"<a/",
    b"</a>",
    b"<>",
    b"< a/>",
    b"<a>\xF0\x9F\x98",
    b"<a>x\xC3",
    b"<a>&am",
    b"<a>]]",
    b"<a>\r",
];

/// Content (token level inside `<r>…</r>`; stream level inside a `<message>`).
const SNIPPETS: &[&[u8]] = &[
    b"hello",
    b"&amp;&lt;&gt;&apos;&quot;",
    b"a &amp; b",
    b"&#65;&#x41;&#x0041;&#0000065;&#x10FFFF;&#xd7ff;&#xE000;&#xFFFD;&#x10000;",
    b"&#9;&#xA;&#xD;&#x85;&#x7F;&#38;&#60;",
    b"&#0;",
    b"&#x0;",
    b"&#xD800;",
    b"&#xDFFF;",
    b"&#xFFFE;",
    b"&#xFFFF;",
    b"&#x110000;",
    b"&#1114112;",
    b"&#99999999999999999999999999999;",
    b"&#xFFFFFFFF00000041;",
    b"&#4294967361;",
    b"&#X41;",
    b"&#x41",
    b"&#x41 ;",
    b"&#;",
    b"&#x;",
    b"&;",
    b"&",
    b"& b",
    b"&unknown;",
    b"&AMP;",
    b"&amp",
    b"&#8;",
    b"&#x1F;",
    b"<![CDATA[x]]>",
    b"<![CDATA[]]>",
    b"<![CDATA[<&>]]>",
    b"<![CDATA[x]]]>",
    b"<![CDATA[x]]]]>",
    b"<![CDATA[]]]]>",
    b"<![CDATA[a]b]]c]]]>",
    b"<![CDATA[x]]>y]]>",
    b"<![CDATA[\r\n\r]]>",
    b"<![CDATA[x",
    b"<![cdata[x]]>",
    b"<![CDATA x]]>",
    b"<![CDATA[<![CDATA[]]>",
    b"]",
    b"]]",
    b"]]]",
    b"]]>",
    b"]]]>",
    b"] ]>",
    b"]>]",
    b">",
    b"a]]&gt;b",
    b"'\"",
    b"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80",
    "\u{80}\u{85}\u{9F}\u{7F}\u{A0}".as_bytes(),
    "\u{FEFF}\u{10FFFF}\u{FFFD}\u{2028}".as_bytes(),
    "\u{FFFE}".as_bytes(),
    "\u{FFFF}".as_bytes(),
    b"\x01",
    b"\x00",
    b"\x0B\x0C",
    b"\x1F",
    b"\t\n\r\r\n \n\r",
    b"x\ry",
    b"x\r\n\r\ny",
    b"\xC0\x80",
    b"\xC1\xBF",
    b"\xE0\x80\x80",
    b"\xE0\x9F\xBF",
    b"\xF0\x80\x80\x80",
    b"\xED\xA0\x80",
    b"\xED\xBF\xBF",
    b"\xF4\x90\x80\x80",
    b"\xF5",
    b"\xF8",
    b"\xFE",
    b"\xFF",
    b"\x80",
    b"\xC3",
    b"\xC3(",
    b"\xE2\x82",
    b"\xF0\x9F\x98",
    b"<!-- c -->",
    b"<?pi x?>",
    b"<?xml version='1.0'?>",
    b"<!DOCTYPE a>",
    b"<b/>",
    b"<b />",
    b"<b x='1' y=\"2\"/>",
    b"<b xmlns='urn:b'><c/></b>",
    b"<p:b xmlns:p='urn:p' p:x='1'/>",
    b"<p:b/>",
    b"<b p:x='1'/>",
    b"<b xml:lang='en'/>",
    b"<b x='1' x='2'/>",
    b"<b x='1'y='2'/>",
    b"<b x=1/>",
    b"<b x='<'/>",
    b"<b x='a\r\nb\tc'/>",
    b"<b></c>",
    b"<b></b >",
    b"<b><c><d><e><f><g><h/></g></f></e></d></c></b>",
    b"<b a='1' b='2' c='3' d='4' e='5' f='6'/>",
];

/// Whole streams (stream level).
const STREAMS: &[&[u8]] = &[
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'></stream:stream>",
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><message/> <presence/>\n<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>\r\n</stream:stream>",
    b"<s:stream xmlns='jabber:server' xmlns:s='http://etherx.jabber.org/streams' xml:lang='en'><s:features/></s:stream>",
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'></stream>",
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>text<message/>",
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'></stream:stream><message/>",
    b"<stream:stream xmlns='jabber:x' xmlns:stream='http://etherx.jabber.org/streams'>",
    b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>",
    b"<stream:stream xmlns='jabber:client'>",
    b"<stream xmlns='jabber:client'>",
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'/>",
    b"<?xml version='1.0' encoding='latin1'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    b"\xEF\xBB\xBF<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
];

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

fn wrap(before: &[u8], body: &[u8], after: &[u8]) -> Vec<u8> {
    [before, body, after].concat()
}

/// Documents around and over the token cap `m`: names, values, references, text, CDATA.
fn long_docs(m: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for len in [m.saturating_sub(2), m - 1, m, m + 1, m + 2, 2 * m] {
        let a = "a".repeat(len);
        out.push(format!("<{a}/>").into_bytes());
        out.push(format!("<{a}></{a}>").into_bytes());
        out.push(format!("<p:{a} xmlns:p='u'/>").into_bytes());
        out.push(format!("<r {a}='1'/>").into_bytes());
        out.push(format!("<r b='{a}'/>").into_bytes());
        out.push(format!("<r b='{}&amp;'/>", "a".repeat(len.saturating_sub(1))).into_bytes());
        out.push(format!("<r>{a}</r>").into_bytes());
        out.push(format!("<r><![CDATA[{a}]]></r>").into_bytes());
        out.push(format!("<r>&#x{}41;</r>", "0".repeat(len.saturating_sub(6))).into_bytes());
        out.push(format!("<r>&#{}65;</r>", "0".repeat(len.saturating_sub(5))).into_bytes());
        out.push(format!("<r b='&#{}65;'/>", "0".repeat(len.saturating_sub(5))).into_bytes());
        out.push(format!("<r>&{a};</r>").into_bytes());
        out.push(format!("<r>{}é</r>", "a".repeat(len.saturating_sub(1))).into_bytes());
        out.push(format!("<r>{}😀</r>", "a".repeat(len.saturating_sub(2))).into_bytes());
        out.push(format!("<{}é/>", "a".repeat(len.saturating_sub(1))).into_bytes());
        out.push(format!("<r b='{}€'/>", "a".repeat(len.saturating_sub(2))).into_bytes());
        out.push(format!("<r>{}</r>", "é".repeat(len / 2 + 1)).into_bytes());
        out.push(format!("<r>{}&amp;</r>", "x".repeat(len)).into_bytes());
    }
    out
}

/// The chunkings every regression input is run with.
fn regression_plans(input: &[u8], salt: u64) -> Vec<Plan> {
    let mut rng = Rng::new(case_seed(DEFAULT_SEED, 3, salt));
    if input.len() > 4096 {
        // Long inputs (around the 8 KiB token cap): fewer, the costly byte-wise one included.
        return vec![
            Plan::whole(Eof::WithLast),
            Plan::bytewise(input.len(), Eof::WithLast),
            random_plan(&mut rng, input, true),
        ];
    }
    let mut plans = vec![
        Plan::whole(Eof::WithLast),
        Plan::whole(Eof::Separate),
        Plan::bytewise(input.len(), Eof::WithLast),
        Plan::bytewise(input.len(), Eof::Never),
        Plan {
            release: (0..input.len()).collect(),
            ..Plan::bytewise(input.len(), Eof::Separate)
        },
    ];
    for _ in 0..3 {
        plans.push(random_plan(&mut rng, input, true));
    }
    plans
}

/// Checks every input with every regression plan; panics listing the (minimized) failures.
fn check_token_inputs(what: &str, inputs: &[Vec<u8>], max_tokens: &[usize]) {
    let found = Mismatches::default();
    for (n, input) in inputs.iter().enumerate() {
        for &max_token in max_tokens {
            for plan in regression_plans(input, n as u64) {
                let Some((why, s, r)) = token_mismatch(input, &plan, max_token) else {
                    continue;
                };
                let mut report = format!(
                    "{what}: regression input #{n}\n\
                     rerun: cargo test -p strait-wire --test differential {what}\n"
                );
                report.push_str(&token_report(input, &plan, max_token, &why, &s, &r));
                let m = token_mismatch_details(why, &s, &r, input.clone(), plan, max_token, report);
                found.add(n as u64, m);
                break;
            }
        }
    }
    found.finish(what);
}

#[test]
fn regressions_tokens() {
    let mut inputs: Vec<Vec<u8>> = DOCS.iter().map(|d| d.to_vec()).collect();
    inputs.extend(SNIPPETS.iter().map(|s| wrap(b"<r>", s, b"</r>")));
    inputs.extend(SNIPPETS.iter().map(|s| wrap(b"<r>", s, b"")));
    inputs.extend(
        STREAMS
            .iter()
            .map(|s| s.to_vec())
            .chain(SNIPPETS.iter().map(|s| wrap(b"<r>a", s, b"b</r>"))),
    );
    check_token_inputs("regressions_tokens", &inputs, &[8192, 64]);
}

#[test]
fn regressions_long_tokens() {
    let mut inputs = Vec::new();
    for m in [64, 100, 8192] {
        inputs.extend(long_docs(m).into_iter().map(|d| (d, m)));
    }
    let found = Mismatches::default();
    for (n, (input, max_token)) in inputs.iter().enumerate() {
        for plan in regression_plans(input, n as u64) {
            let Some((why, s, r)) = token_mismatch(input, &plan, *max_token) else {
                continue;
            };
            let mut report = format!(
                "regressions_long_tokens: input #{n}
                 rerun: cargo test -p strait-wire --test differential regressions_long_tokens
"
            );
            report.push_str(&token_report(input, &plan, *max_token, &why, &s, &r));
            let m = token_mismatch_details(why, &s, &r, input.clone(), plan, *max_token, report);
            found.add(n as u64, m);
            break;
        }
    }
    found.finish("regressions_long_tokens");
}

#[test]
fn regressions_streams() {
    let mut inputs: Vec<Vec<u8>> = STREAMS.iter().map(|s| s.to_vec()).collect();
    for s in SNIPPETS {
        inputs.push(wrap(HEADER, &wrap(b"<message>", s, b"</message>"), b""));
        inputs.push(wrap(
            HEADER,
            &wrap(b" <message to='a@b'>x", s, b"y</message>\n<presence/>"),
            b"</stream:stream>",
        ));
    }
    let deep = format!("{}{}", "<b>".repeat(40), "</b>".repeat(40));
    inputs.push(wrap(
        HEADER,
        format!("<message>{deep}</message>").as_bytes(),
        b"",
    ));
    let many: String = (0..70).map(|i| format!(" a{i}='{i}'")).collect();
    inputs.push(wrap(HEADER, format!("<message{many}/>").as_bytes(), b""));
    let big = "x".repeat(3000);
    inputs.push(wrap(
        HEADER,
        format!("<message><body>{big}</body></message>").as_bytes(),
        b"",
    ));
    inputs.push(wrap(
        HEADER,
        format!("<message a='{big}'/>").as_bytes(),
        b"",
    ));
    inputs.push(wrap(
        HEADER,
        format!("{}<message/>", " ".repeat(3000)).as_bytes(),
        b"",
    ));
    let all_limits = [
        Limits::authenticated(),
        Limits::unauthenticated(),
        Limits {
            max_stanza_bytes: 300,
            max_depth: 3,
            max_attributes: 4,
        },
        Limits {
            max_stanza_bytes: 64,
            max_depth: 1,
            max_attributes: 1,
        },
    ];
    let found = Mismatches::default();
    for (n, input) in inputs.iter().enumerate() {
        for limits in &all_limits {
            let mut plans = regression_plans(input, n as u64);
            plans.retain(|p| p.eof != Eof::Separate);
            for plan in plans {
                let Some((why, s, r)) = stream_mismatch(input, &plan, limits) else {
                    continue;
                };
                let mut report = format!(
                    "regressions_streams: input #{n}\n\
                     rerun: cargo test -p strait-wire --test differential regressions_streams\n"
                );
                report.push_str(&stream_report(input, &plan, limits, &why, &s, &r));
                let m = stream_mismatch_details(
                    why,
                    &s,
                    &r,
                    input.clone(),
                    plan,
                    limits.clone(),
                    report,
                );
                found.add(n as u64, m);
                break;
            }
        }
    }
    found.finish("regressions_streams");
}

// ===========================================================================================
// The harness checks itself
// ===========================================================================================

/// A valid tokenizer under the contract that always holds back the last `N` bytes of its
/// input (unless at end of input): the harness must carry them over correctly.
#[derive(Debug)]
struct Lagging<const N: usize>(Reference);

impl<const N: usize> Tokenize for Lagging<N> {
    fn new(max_token: usize) -> Self {
        Lagging(Reference::new(max_token))
    }

    fn next_token(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Option<Token>, Stop> {
        if at_eof {
            return self.0.next_token(input, true);
        }
        let keep = N.min(input.len());
        let mut head = &input[..input.len() - keep];
        let r = self.0.next_token(&mut head, false);
        let consumed = input.len() - keep - head.len();
        *input = &input[consumed..];
        r
    }

    fn release_temporaries(&mut self) {
        self.0.release_temporaries();
    }
}

/// A tokenizer with a planted bug: `é` in text comes out as `e`.
#[derive(Debug)]
struct Planted(Reference);

impl Tokenize for Planted {
    fn new(max_token: usize) -> Self {
        Planted(Reference::new(max_token))
    }

    fn next_token(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Option<Token>, Stop> {
        match self.0.next_token(input, at_eof) {
            Ok(Some(Token::Text(t))) => Ok(Some(Token::Text(t.replace('é', "e")))),
            other => other,
        }
    }

    fn release_temporaries(&mut self) {
        self.0.release_temporaries();
    }
}

/// The comparison accepts what the contract allows (other chunkings, held-back bytes), and
/// catches a planted bug with a usable report.
#[test]
fn harness_self_check() {
    let base = base_seed();
    let mut caught = None;
    for case in 0..300 {
        let tc = token_case(case_seed(base, 4, case));
        let mut rng = Rng::new(case_seed(base, 5, case));
        let mut other = random_plan(&mut rng, &tc.input, true);
        other.eof = tc.plan.eof;
        let r = run_tokens::<Reference>(&tc.input, &tc.plan, tc.max_token);
        // The reference, chunked differently.
        let r2 = run_tokens::<Reference>(&tc.input, &other, tc.max_token);
        if let Some(why) = compare_tokens(&r2, &r) {
            panic!(
                "reference is chunking-dependent (case {case}):\n{}",
                token_report(&tc.input, &tc.plan, tc.max_token, &why, &r2, &r)
            );
        }
        // A lagging tokenizer (Never: it holds back whole tokens, which the contract allows
        // only at the end of input).
        if tc.plan.eof != Eof::Never {
            let l = run_tokens::<Lagging<{ MAX_LOOKAHEAD }>>(&tc.input, &tc.plan, tc.max_token);
            if let Some(why) = compare_tokens(&l, &r) {
                panic!(
                    "lagging tokenizer rejected (case {case}):\n{}",
                    token_report(&tc.input, &tc.plan, tc.max_token, &why, &l, &r)
                );
            }
        }
        if caught.is_none() {
            let p = run_tokens::<Planted>(&tc.input, &tc.plan, tc.max_token);
            if let Some(why) = compare_tokens(&p, &r) {
                caught = Some(token_report(
                    &tc.input,
                    &tc.plan,
                    tc.max_token,
                    &why,
                    &p,
                    &r,
                ));
            }
        }
    }
    // The stream parser over the reference, chunked differently.
    for case in 0..150 {
        let mut rng = Rng::new(case_seed(base, 6, case));
        let limits = if rng.coin() {
            small_limits(&mut rng)
        } else {
            Limits::authenticated()
        };
        let (input, _) = gen_input(&mut rng, limits.max_stanza_bytes.clamp(64, 8192), true);
        let a = random_plan(&mut rng, &input, false);
        let b = random_plan(&mut rng, &input, false);
        let ra = run_stream::<Reference>(&input, &a, &limits);
        let rb = run_stream::<Reference>(&input, &b, &limits);
        if let Some(why) = compare_streams(&ra, &rb) {
            panic!(
                "stream parser over the reference is chunking-dependent (case {case}):\n{}\n\
                 other chunking: {}",
                stream_report(&input, &a, &limits, &why, &ra, &rb),
                b.describe(input.len())
            );
        }
    }
    let report = caught.expect("the planted bug went unnoticed");
    assert!(report.contains("input (") && report.contains("chunking:"));
    // Minimization keeps the planted bug and shrinks the input to little more than the `é`.
    let fails = |i: &[u8], p: &Plan| {
        let a = run_tokens::<Planted>(i, p, 8192);
        let b = run_tokens::<Reference>(&for_reference(i), p, 8192);
        compare_tokens(&a, &b).is_some()
    };
    let input = b"<r a='1'><s>x\xC3\xA9y</s><t/></r>";
    let (small, _) = minimize(input, &Plan::bytewise(input.len(), Eof::WithLast), &fails);
    assert!(small.len() <= 12, "{}", escape(&small));
    // Panics are caught and reported as an outcome.
    let caught = catch(|| -> u8 { panic!("planted panic") });
    assert!(caught.unwrap_err().contains("planted panic"));
}
