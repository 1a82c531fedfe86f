//! RFC 6120 error vocabularies: stream errors (§4.9), stanza errors (§8.3)
//! and SASL failures (§6.5).

use std::fmt;

use crate::stanza::{escape_attr, escape_text, ns};

/// Declares a fieldless enum whose variants map one-to-one to RFC element names.
macro_rules! rfc_names {
    ($(#[$meta:meta])* pub enum $ty:ident { $($variant:ident => $name:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $ty { $($variant,)* }

        impl $ty {
            /// Every variant, in RFC order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)*];

            /// The element (or attribute value) name the RFC gives this variant.
            pub fn as_str(&self) -> &'static str {
                match self { $($ty::$variant => $name,)* }
            }

            /// The variant named `name`, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some($ty::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

rfc_names! {
    /// Defined stream error conditions (RFC 6120 §4.9.3).
    pub enum StreamErrorCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

rfc_names! {
    /// Stanza error types (RFC 6120 §8.3.2).
    pub enum ErrorType {
        Auth => "auth",
        Cancel => "cancel",
        Continue => "continue",
        Modify => "modify",
        Wait => "wait",
    }
}

rfc_names! {
    /// Defined stanza error conditions (RFC 6120 §8.3.3).
    pub enum StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

rfc_names! {
    /// SASL failure conditions (RFC 6120 §6.5).
    pub enum SaslFailure {
        Aborted => "aborted",
        AccountDisabled => "account-disabled",
        CredentialsExpired => "credentials-expired",
        EncryptionRequired => "encryption-required",
        IncorrectEncoding => "incorrect-encoding",
        InvalidAuthzid => "invalid-authzid",
        InvalidMechanism => "invalid-mechanism",
        MalformedRequest => "malformed-request",
        MechanismTooWeak => "mechanism-too-weak",
        NotAuthorized => "not-authorized",
        TemporaryAuthFailure => "temporary-auth-failure",
    }
}

impl StanzaErrorCondition {
    /// The error type RFC 6120 §8.3.3 suggests for this condition.
    pub fn default_type(&self) -> ErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => {
                ErrorType::Modify
            }
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => {
                ErrorType::Auth
            }
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                ErrorType::Wait
            }
            Conflict
            | FeatureNotImplemented
            | Gone
            | InternalServerError
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
        }
    }
}

/// A stream-level error: the stream is closed after it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            Some(text) => write!(f, "stream error {}: {}", self.condition, text),
            None => write!(f, "stream error {}", self.condition),
        }
    }
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
        }
    }

    /// `<stream:error>` as sent on a stream whose `stream` prefix is bound.
    pub fn to_xml(&self) -> String {
        let mut out = format!(
            "<stream:error><{} xmlns='{}'/>",
            self.condition.as_str(),
            ns::STREAMS
        );
        if let Some(text) = &self.text {
            out.push_str(&format!(
                "<text xmlns='{}'>{}</text>",
                ns::STREAMS,
                escape_text(text)
            ));
        }
        out.push_str("</stream:error>");
        out
    }
}

/// A stanza-level error (RFC 6120 §8.3), returned inside an error stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StanzaError {
    pub error_type: ErrorType,
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    pub by: Option<String>,
}

impl fmt::Display for StanzaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stanza error {} ({})", self.condition, self.error_type)?;
        if let Some(text) = &self.text {
            write!(f, ": {text}")?;
        }
        Ok(())
    }
}

impl StanzaError {
    /// An error with the condition's default type.
    pub fn new(condition: StanzaErrorCondition) -> Self {
        StanzaError {
            error_type: condition.default_type(),
            condition,
            text: None,
            by: None,
        }
    }

    pub fn with_text(condition: StanzaErrorCondition, text: impl Into<String>) -> Self {
        StanzaError {
            text: Some(text.into()),
            ..Self::new(condition)
        }
    }

    /// Sets the `by` attribute (the entity that detected the error).
    pub fn by(mut self, by: impl Into<String>) -> Self {
        self.by = Some(by.into());
        self
    }

    /// The `<error/>` child, canonical, in the content namespace of its stanza.
    pub fn to_xml(&self) -> String {
        let mut out = format!("<error type='{}'", self.error_type.as_str());
        if let Some(by) = &self.by {
            out.push_str(&format!(" by='{}'", escape_attr(by)));
        }
        out.push_str(&format!(
            "><{} xmlns='{}'/>",
            self.condition.as_str(),
            ns::STANZAS
        ));
        if let Some(text) = &self.text {
            out.push_str(&format!(
                "<text xmlns='{}'>{}</text>",
                ns::STANZAS,
                escape_text(text)
            ));
        }
        out.push_str("</error>");
        out
    }
}

impl SaslFailure {
    /// `<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>` with this condition.
    pub fn to_xml(&self, text: Option<&str>) -> String {
        let mut out = format!("<failure xmlns='{}'><{}/>", ns::SASL, self.as_str());
        if let Some(text) = text {
            out.push_str(&format!("<text>{}</text>", escape_text(text)));
        }
        out.push_str("</failure>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in StreamErrorCondition::ALL {
            assert_eq!(StreamErrorCondition::from_name(c.as_str()), Some(*c));
        }
        for c in StanzaErrorCondition::ALL {
            assert_eq!(StanzaErrorCondition::from_name(c.as_str()), Some(*c));
        }
        assert_eq!(StreamErrorCondition::ALL.len(), 25);
        assert_eq!(StanzaErrorCondition::ALL.len(), 22);
        assert_eq!(SaslFailure::ALL.len(), 11);
    }

    #[test]
    fn stream_error_xml_is_escaped() {
        let e = StreamError::with_text(StreamErrorCondition::RestrictedXml, "a<b&'c'");
        assert_eq!(
            e.to_xml(),
            "<stream:error><restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a&lt;b&amp;'c'</text></stream:error>"
        );
    }

    #[test]
    fn stanza_error_defaults_and_xml() {
        let e = StanzaError::new(StanzaErrorCondition::ServiceUnavailable);
        assert_eq!(e.error_type, ErrorType::Cancel);
        assert_eq!(
            StanzaErrorCondition::NotAuthorized.default_type(),
            ErrorType::Auth
        );
        assert_eq!(
            StanzaErrorCondition::BadRequest.default_type(),
            ErrorType::Modify
        );
        let e = StanzaError::with_text(StanzaErrorCondition::Forbidden, "no").by("a'b");
        assert_eq!(
            e.to_xml(),
            "<error type='auth' by='a&apos;b'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text></error>"
        );
    }
}
