//! The Strait platform server: listeners, TLS, c2s sessions, routing and the IM features.
//!
//! A stanza flows `net` (bytes, TLS, shaping) → `strait-wire` (parsing within budgets) →
//! `c2s` (negotiation, the session stamps the true `from`) → `router` (local resources or
//! the offline store) → `features` (IQ handlers by namespace).
#![forbid(unsafe_code)]

pub mod accounts;
pub mod c2s;
pub mod component;
pub mod config;
pub mod features;
pub mod http;
pub mod interop;
pub mod net;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod tls;

pub use config::Config;
pub use server::{Server, ServerError};
