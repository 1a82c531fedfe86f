//! The Strait client SDK: what an app links to in order to talk to a Strait platform (or any
//! XMPP server with OMEMO clients on it).
//!
//! - [`conn`]: the connection. TCP, STARTTLS or direct TLS (rustls, ring), SASL
//!   (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN on request, OAUTHBEARER for a third-party provider's
//!   users), resource binding, XEP-0198, initial
//!   presence; incoming streams are cut into stanzas by a byte scanner ([`xml`]). The load
//!   generator (`strait bench`) runs on this same connection, which is why it is lean.
//! - [`scram`]: the SASL mechanisms' client side.
//! - [`caps`]: what a client says it supports: its disco#info (XEP-0030), which the
//!   connection answers, and the entity capabilities (XEP-0115) of its presence.
//! - [`chat`]: a logged-in account with an OMEMO 0.3 device (the Signal protocol, from
//!   strait-signal) whose keys, sessions and history live in a local store: send and receive
//!   end-to-end encrypted messages, with the platform's origin stamp telling third-party
//!   chats apart. `strait chat` is this module on the command line.
//! - [`omemo`]: the OMEMO stanzas (publish, fetch, messages), shared by [`chat`] and the
//!   conformance kit's echo bot.
#![forbid(unsafe_code)]

pub mod caps;
pub mod chat;
pub mod conn;
pub mod https;
pub mod omemo;
pub mod scram;
pub mod xml;
