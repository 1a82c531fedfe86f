//! Per-connection parsing budgets (RFC 6120 §13.12: resource exhaustion).

/// Budgets the [`crate::StreamParser`] enforces on untrusted input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Raw bytes one top-level element may take on the wire (the whitespace
    /// before it counts too).
    pub max_stanza_bytes: usize,
    /// Nesting depth, counted from the top-level element (= 1).
    pub max_depth: usize,
    /// Attributes (namespace declarations included) on one element.
    pub max_attributes: usize,
}

impl Limits {
    /// Before SASL success: small, as Prosody does (10,000 bytes).
    pub fn unauthenticated() -> Self {
        Limits {
            max_stanza_bytes: 10_000,
            max_depth: 32,
            max_attributes: 64,
        }
    }

    /// After SASL success: 256 KiB per stanza.
    pub fn authenticated() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            ..Self::unauthenticated()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::unauthenticated()
    }
}
