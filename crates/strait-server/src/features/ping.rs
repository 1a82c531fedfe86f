//! XEP-0199: the server answers pings addressed to it or to the user's own account.

pub const NS: &str = "urn:xmpp:ping";
