//! The Strait client SDK: what an app links to in order to talk to a Strait platform (or any
//! XMPP server with OMEMO clients on it).
//!
//! - [`conn`]: the connection. TCP, STARTTLS or direct TLS (rustls, ring), SASL
//!   (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN on request), resource binding, XEP-0198, initial
//!   presence; incoming streams are cut into stanzas by a byte scanner ([`xml`]). The load
//!   generator (`strait bench`) runs on this same connection, which is why it is lean.
//! - [`scram`]: the SASL mechanisms' client side.
#![forbid(unsafe_code)]

pub mod conn;
pub mod scram;
pub mod xml;
