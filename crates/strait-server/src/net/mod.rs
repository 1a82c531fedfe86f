//! Network edge: listeners with a global connection cap, the byte stream (plain or TLS)
//! and per-connection read shaping.

pub mod listener;
pub mod shaper;
pub mod stream;
mod tls13;
pub mod transport;

pub use shaper::TokenBucket;
pub use transport::Transport;
