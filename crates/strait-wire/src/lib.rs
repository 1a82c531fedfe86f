#![forbid(unsafe_code)]
//! Sans-I/O XMPP wire layer: restricted XML parsing within budgets, the
//! stanza envelope with canonical serialization, RFC 6120 error types and
//! the c2s stream-negotiation state machine. No I/O, no async runtime.

pub mod error;
pub mod limits;
pub mod negotiation;
pub mod parser;
pub mod stanza;
mod swar;
#[doc(hidden)]
pub mod token;
mod xml;

pub use error::{
    ErrorType, SaslFailure, StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition,
};
pub use limits::Limits;
pub use negotiation::{Action, C2sConfig, C2sNegotiation, SaslStep};
pub use parser::{Event, StreamHeader, StreamParser};
pub use stanza::{Child, Stanza, StanzaKind, escape_attr, escape_text, ns};
