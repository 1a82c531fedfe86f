//! The interop layer (DESIGN.md, "The interop model"; docs/interop.md): third-party providers
//! and their agreements, users' consent to third-party chats.
//!
//! So far: the provider registry with its audit log ([`registry`]) and users' consent
//! ([`consent`]). Enlistment (provider-signed logins), interop links and the boundary policy
//! that enforces all of this on the wire are still to come; until they are, no stanza crosses
//! from a provider to the platform's users.

pub mod consent;
pub mod registry;
