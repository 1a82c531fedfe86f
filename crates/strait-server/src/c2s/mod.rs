//! Client-to-server connections: the stream negotiation (TLS, SASL, bind) and the session.

mod auth;
pub(crate) mod connection;
pub mod session;

pub use connection::serve_connection;
