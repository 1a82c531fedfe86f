//! The XML tokenizer under the stream parser: bytes in, raw (not namespace-resolved) tokens
//! out, restricted XML (RFC 6120 §11.1) enforced.
//!
//! Two implementations share one interface, [`Tokenize`]:
//!
//! - [`Strict`], ours, which the server runs. It exists because rxml's tokenizer was the
//!   largest single cost in the server (17 % of its CPU at 90,500 msg/s; 3.2 µs of the 5 µs it
//!   takes to parse a 260-byte chat stanza, bench/RESULTS.md "Where the rest is"): rxml walks
//!   its input a byte at a time through a general state machine, while a stream of stanzas is
//!   mostly runs of ASCII that need no more than a table lookup per byte.
//! - [`Reference`], rxml's `RawParser` behind the same interface: the well-kept parser that
//!   [`Strict`] is checked against, token for token and error for error, by the differential
//!   tests (tests/differential.rs), so that what one accepts the other accepts with the same
//!   tokens, and what one rejects the other rejects with the same stream error condition.

use rxml::error::{EndOrError, Error as RxmlError};
use rxml::{Options, Parse, RawEvent, RawParser, WithOptions};

use crate::error::{StreamError, StreamErrorCondition as C};

mod strict;
pub use strict::Strict;

/// One raw token: names as written (prefix and local part), values with references expanded,
/// line ends and attribute whitespace normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// `<?xml …?>` (version 1.0, encoding UTF-8 if given).
    XmlDeclaration,
    /// `<prefix:local` of a start tag.
    HeadOpen {
        prefix: Option<String>,
        local: String,
    },
    /// One attribute of the start tag being read (namespace declarations included).
    Attribute {
        prefix: Option<String>,
        local: String,
        value: String,
    },
    /// The `>` or `/>` ending a start tag.
    HeadClose,
    /// The end of an element: its end tag, or right after [`Token::HeadClose`] for `/>`.
    Foot,
    /// Character data (CDATA sections included). Consecutive `Text` tokens are one run of
    /// text split at arbitrary points.
    Text(String),
}

/// Why [`Tokenize::next_token`] returned no token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every byte that could be consumed was; call again with more input. A few bytes (at
    /// most [`MAX_LOOKAHEAD`]) may be left unconsumed when they cannot be decided yet (a
    /// partial UTF-8 sequence, reference or `]]>`): pass them again, followed by the rest.
    NeedMoreData,
    /// The input is not acceptable; the tokenizer must not be used again.
    Error(StreamError),
}

/// Most bytes a tokenizer leaves unconsumed when it needs more input.
pub const MAX_LOOKAHEAD: usize = 32;

/// An incremental XML tokenizer.
pub trait Tokenize: std::fmt::Debug {
    /// A tokenizer at the start of a document whose names, attribute values and references
    /// may be at most `max_token` bytes long.
    fn new(max_token: usize) -> Self;

    /// The next token from `input`, advancing it past what was consumed. `Ok(None)` once the
    /// root element has ended and `at_eof` says nothing follows.
    fn next_token(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Option<Token>, Stop>;

    /// Gives back buffers kept for the next token (the connection is probably idle); the
    /// tokenizer's state (open elements, partial token) is kept.
    fn release_temporaries(&mut self);
}

/// The error for a token longer than the tokenizer's limit.
pub(crate) fn token_too_long(max_token: usize) -> StreamError {
    StreamError::with_text(
        C::PolicyViolation,
        format!("token too long (limit {max_token} bytes)"),
    )
}

/// rxml's `RawParser` behind [`Tokenize`]: the reference [`Strict`] is tested against.
#[derive(Debug)]
pub struct Reference {
    raw: RawParser,
    max_token: usize,
}

impl Tokenize for Reference {
    fn new(max_token: usize) -> Self {
        Reference {
            raw: RawParser::with_options(Options {
                max_token_length: max_token,
                ..Options::default()
            }),
            max_token,
        }
    }

    fn next_token(&mut self, input: &mut &[u8], at_eof: bool) -> Result<Option<Token>, Stop> {
        match self.raw.parse(input, at_eof) {
            Ok(Some(ev)) => Ok(Some(match ev {
                RawEvent::XmlDeclaration(..) => Token::XmlDeclaration,
                RawEvent::ElementHeadOpen(_, (prefix, local)) => Token::HeadOpen {
                    prefix: prefix.map(String::from),
                    local: local.into(),
                },
                RawEvent::Attribute(_, (prefix, local), value) => Token::Attribute {
                    prefix: prefix.map(String::from),
                    local: local.into(),
                    value,
                },
                RawEvent::ElementHeadClose(_) => Token::HeadClose,
                RawEvent::ElementFoot(_) => Token::Foot,
                RawEvent::Text(_, text) => Token::Text(text),
            })),
            Ok(None) => Ok(None),
            Err(EndOrError::NeedMoreData) => Err(Stop::NeedMoreData),
            Err(EndOrError::Error(e)) => Err(Stop::Error(map_rxml_error(e, self.max_token))),
        }
    }

    fn release_temporaries(&mut self) {
        self.raw.release_temporaries();
    }
}

/// Maps rxml's errors to the RFC 6120 §4.9.3 conditions.
fn map_rxml_error(e: RxmlError, max_token: usize) -> StreamError {
    let condition = match e {
        RxmlError::UndeclaredEntity => C::RestrictedXml,
        // `<!` that opens neither a comment nor CDATA: a DOCTYPE or other
        // DTD markup declaration.
        RxmlError::InvalidSyntax("malformed cdata or comment section start") => C::RestrictedXml,
        RxmlError::RestrictedXml(msg) => match msg {
            "long name or reference" | "event too long" => return token_too_long(max_token),
            "only utf-8 encoding is allowed" | "only XML version 1.0 is allowed" => {
                C::UnsupportedEncoding
            }
            _ => C::RestrictedXml,
        },
        // RFC 6120 §4.9.3.22: "improperly encoded the stream (e.g., by
        // violating the rules of the UTF-8 encoding)".
        RxmlError::InvalidUtf8Byte(_) => C::UnsupportedEncoding,
        RxmlError::UndeclaredNamespacePrefix(_) => C::BadNamespacePrefix,
        _ => C::NotWellFormed,
    };
    StreamError::with_text(condition, e.to_string())
}
