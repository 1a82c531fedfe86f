//! c2s stream negotiation (RFC 6120 §4-7) as a sans-I/O state machine: fed
//! parser [`Event`]s, it returns [`Action`]s for the connection to carry out.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::{SaslFailure, StanzaError, StreamError, StreamErrorCondition as C};
use crate::parser::{Event, StreamHeader};
use crate::stanza::{Stanza, StanzaKind, escape_attr, escape_text, ns};

/// What the server offers and requires on client streams.
#[derive(Clone, Debug)]
pub struct C2sConfig {
    /// Served domains; a header whose `to` is not one of them (nor a provider domain) gets
    /// host-unknown.
    pub domains: Vec<String>,
    /// Domains served on behalf of third-party providers: their users log in with
    /// [`C2sConfig::mechanisms_provider`] instead of the platform's own mechanisms.
    pub provider_domains: Vec<String>,
    /// SASL mechanisms offered over TLS on a provider domain's streams, in order.
    pub mechanisms_provider: Vec<String>,
    /// STARTTLS can be offered.
    pub tls_available: bool,
    /// No SASL before TLS.
    pub require_tls: bool,
    /// SASL mechanisms offered over TLS, in order.
    pub mechanisms_secure: Vec<String>,
    /// SASL mechanisms offered without TLS (normally none).
    pub mechanisms_insecure: Vec<String>,
    /// Canonical XML snippets added to the post-authentication features.
    pub extra_features: Vec<String>,
    /// Failed SASL exchanges before the stream is closed with policy-violation.
    pub max_sasl_attempts: u32,
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            domains: Vec::new(),
            provider_domains: Vec::new(),
            mechanisms_provider: vec!["OAUTHBEARER".into()],
            tls_available: true,
            require_tls: true,
            mechanisms_secure: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-1".into()],
            mechanisms_insecure: Vec::new(),
            extra_features: Vec::new(),
            max_sasl_attempts: 3,
        }
    }
}

/// The server's answer to one SASL step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslStep {
    Challenge(Vec<u8>),
    Success {
        additional: Option<Vec<u8>>,
        /// The authenticated bare JID.
        authenticated_jid: String,
    },
    Failure {
        condition: SaslFailure,
        text: Option<String>,
    },
}

/// What the connection must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes.
    Send(String),
    /// `<proceed/>` was queued in a preceding `Send`: flush it, reset the
    /// parser (dropping buffered bytes), handshake, then call
    /// [`C2sNegotiation::tls_established`].
    StartTls,
    /// Run this mechanism; answer with [`C2sNegotiation::sasl_step`].
    SaslStart {
        mechanism: String,
        initial_response: Option<Vec<u8>>,
    },
    /// The client's next SASL message; answer with `sasl_step`.
    SaslResponse(Vec<u8>),
    /// The client aborted; `<failure><aborted/></failure>` was already queued.
    SaslAbort,
    /// After SASL success: reset the parser, switch to
    /// [`crate::Limits::authenticated`], supply a new stream id.
    RestartStream,
    /// Bind a resource; answer with [`C2sNegotiation::bind_result`].
    Bind {
        requested_resource: Option<String>,
        iq_id: String,
    },
    /// Established (or, after authentication, a nonza such as an XEP-0198
    /// `<resume/>`): the session handles it.
    Stanza(Stanza),
    /// Send the error (`to_xml`) and `</stream:stream>`, then close.
    Close(StreamError),
    /// The client sent `</stream:stream>`: answer with ours and close.
    PeerClosed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the client's stream header.
    AwaitHeader,
    /// Features sent before authentication: STARTTLS or `<auth/>` expected.
    PreAuth,
    /// `<proceed/>` sent; waiting for the TLS handshake.
    TlsPending,
    /// A SASL message went to the server; waiting for `sasl_step`.
    SaslServer,
    /// A challenge went to the client; waiting for `<response/>`.
    SaslClient,
    /// Authenticated, features sent: waiting for the bind IQ.
    AwaitBind,
    /// Bind IQ handed to the server; waiting for `bind_result`.
    BindPending {
        iq_id: String,
    },
    Established,
    Closed,
}

/// The c2s negotiation of one connection.
#[derive(Debug)]
pub struct C2sNegotiation {
    /// Shared by every connection of a server (it is the same for all of them).
    config: std::sync::Arc<C2sConfig>,
    state: State,
    secure: bool,
    stream_id: String,
    domain: Option<String>,
    authenticated_jid: Option<String>,
    bound_jid: Option<String>,
    sasl_failures: u32,
}

impl C2sNegotiation {
    pub fn new(
        config: impl Into<std::sync::Arc<C2sConfig>>,
        secure: bool,
        stream_id: String,
    ) -> Self {
        C2sNegotiation {
            config: config.into(),
            state: State::AwaitHeader,
            secure,
            stream_id,
            domain: None,
            authenticated_jid: None,
            bound_jid: None,
            sasl_failures: 0,
        }
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The bare JID SASL authenticated.
    pub fn authenticated_jid(&self) -> Option<&str> {
        self.authenticated_jid.as_deref()
    }

    /// The full JID bound to this stream.
    pub fn bound_jid(&self) -> Option<&str> {
        self.bound_jid.as_deref()
    }

    /// The served domain the client addressed.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Sets the id of the next stream header (a fresh random id per restart).
    pub fn new_stream_id(&mut self, id: String) {
        self.stream_id = id;
    }

    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match (ev, &self.state) {
            (_, State::Closed) => Vec::new(),
            (Event::StreamClose, _) => {
                self.state = State::Closed;
                vec![Action::PeerClosed]
            }
            (Event::StreamOpen(header), State::AwaitHeader) => self.on_header(&header),
            (Event::StreamOpen(_), _) => self.close(StreamError::with_text(
                C::PolicyViolation,
                "unexpected stream header",
            )),
            (Event::Element(stanza), _) => self.on_element(stanza),
        }
    }

    pub fn tls_established(&mut self) {
        if self.state == State::TlsPending {
            self.secure = true;
            self.state = State::AwaitHeader;
        }
    }

    pub fn sasl_step(&mut self, step: SaslStep) -> Vec<Action> {
        if self.state != State::SaslServer {
            return Vec::new();
        }
        match step {
            SaslStep::Challenge(data) => {
                self.state = State::SaslClient;
                vec![Action::Send(format!(
                    "<challenge xmlns='{}'>{}</challenge>",
                    ns::SASL,
                    BASE64.encode(data)
                ))]
            }
            SaslStep::Success {
                additional,
                authenticated_jid,
            } => {
                self.authenticated_jid = Some(authenticated_jid);
                self.state = State::AwaitHeader;
                let body = match additional {
                    None => String::new(),
                    Some(data) if data.is_empty() => "=".to_string(),
                    Some(data) => BASE64.encode(data),
                };
                vec![
                    Action::Send(format!("<success xmlns='{}'>{body}</success>", ns::SASL)),
                    Action::RestartStream,
                ]
            }
            SaslStep::Failure { condition, text } => {
                let failure = condition.to_xml(text.as_deref());
                self.sasl_failed(failure)
            }
        }
    }

    /// An XEP-0198 `<resume/>` (handed to the server as a nonza before bind) succeeded: the
    /// stream carries the resumed session bound to `full_jid`, as if it had bound it. False
    /// (and nothing changes) unless the stream is authenticated and not yet bound.
    pub fn resumed(&mut self, full_jid: String) -> bool {
        if self.state != State::AwaitBind {
            return false;
        }
        self.bound_jid = Some(full_jid);
        self.state = State::Established;
        true
    }

    pub fn bind_result(&mut self, result: Result<String, StanzaError>) -> Vec<Action> {
        let State::BindPending { iq_id } = &self.state else {
            return Vec::new();
        };
        let id = escape_attr(iq_id).into_owned();
        match result {
            Ok(jid) => {
                let xml = format!(
                    "<iq id='{id}' type='result'><bind xmlns='{}'><jid>{}</jid></bind></iq>",
                    ns::BIND,
                    escape_text(&jid)
                );
                self.bound_jid = Some(jid);
                self.state = State::Established;
                vec![Action::Send(xml)]
            }
            Err(e) => {
                self.state = State::AwaitBind;
                vec![Action::Send(format!(
                    "<iq id='{id}' type='error'>{}</iq>",
                    e.to_xml()
                ))]
            }
        }
    }

    fn close(&mut self, e: StreamError) -> Vec<Action> {
        self.state = State::Closed;
        vec![Action::Close(e)]
    }

    fn header_xml(&self) -> String {
        let mut out = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{}'",
            ns::CLIENT,
            ns::STREAM,
            escape_attr(&self.stream_id)
        );
        if let Some(domain) = &self.domain {
            out.push_str(&format!(" from='{}'", escape_attr(domain)));
        }
        out.push_str(" version='1.0' xml:lang='en'>");
        out
    }

    /// RFC 6120 §4.9.1.2: an error during stream setup still goes after our header.
    fn header_error(&mut self, e: StreamError) -> Vec<Action> {
        let mut actions = vec![Action::Send(self.header_xml())];
        actions.extend(self.close(e));
        actions
    }

    fn on_header(&mut self, h: &StreamHeader) -> Vec<Action> {
        let to = h.to.as_deref().map(|t| t.to_ascii_lowercase());
        let served = to.as_deref().filter(|t| {
            let c = &self.config;
            c.domains
                .iter()
                .chain(&c.provider_domains)
                .any(|d| d.eq_ignore_ascii_case(t))
        });
        match (&self.domain, served) {
            (None, Some(t)) => self.domain = Some(t.to_string()),
            (Some(d), Some(t)) if d == t => {}
            _ => {
                return self.header_error(StreamError::with_text(
                    C::HostUnknown,
                    "this server does not serve the requested domain",
                ));
            }
        }
        if h.default_ns != ns::CLIENT {
            return self.header_error(StreamError::with_text(
                C::InvalidNamespace,
                "client streams use jabber:client",
            ));
        }
        if !version_supported(h.version.as_deref()) {
            return self.header_error(StreamError::new(C::UnsupportedVersion));
        }
        let features = self.features();
        self.state = if self.authenticated_jid.is_some() {
            State::AwaitBind
        } else {
            State::PreAuth
        };
        vec![Action::Send(self.header_xml() + &features)]
    }

    fn sasl_allowed(&self) -> bool {
        self.secure || !self.config.require_tls
    }

    /// Whether this stream is to a domain served on behalf of a provider.
    pub fn is_provider_stream(&self) -> bool {
        self.domain.as_deref().is_some_and(|d| {
            self.config
                .provider_domains
                .iter()
                .any(|p| p.eq_ignore_ascii_case(d))
        })
    }

    fn offered_mechanisms(&self) -> &[String] {
        if self.secure && self.is_provider_stream() {
            &self.config.mechanisms_provider
        } else if self.secure {
            &self.config.mechanisms_secure
        } else if self.config.require_tls {
            &[]
        } else {
            &self.config.mechanisms_insecure
        }
    }

    fn features(&self) -> String {
        let mut out = String::from("<stream:features>");
        if self.authenticated_jid.is_some() {
            out.push_str(&format!("<bind xmlns='{}'/>", ns::BIND));
            out.push_str(&format!(
                "<session xmlns='{}'><optional/></session>",
                ns::SESSION
            ));
            for extra in &self.config.extra_features {
                out.push_str(extra);
            }
        } else {
            if !self.secure && self.config.tls_available {
                let required = if self.config.require_tls {
                    "<required/>"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "<starttls xmlns='{}'>{required}</starttls>",
                    ns::TLS
                ));
            }
            let mechanisms = self.offered_mechanisms();
            if !mechanisms.is_empty() {
                out.push_str(&format!("<mechanisms xmlns='{}'>", ns::SASL));
                for m in mechanisms {
                    out.push_str(&format!("<mechanism>{}</mechanism>", escape_text(m)));
                }
                out.push_str("</mechanisms>");
            }
        }
        out.push_str("</stream:features>");
        out
    }

    fn on_element(&mut self, stanza: Stanza) -> Vec<Action> {
        let is = |ns: &str, name: &str| stanza.ns == ns && stanza.name == name;
        match &self.state {
            State::Established => vec![Action::Stanza(stanza)],
            State::PreAuth if is(ns::TLS, "starttls") => self.on_starttls(),
            State::PreAuth if is(ns::SASL, "auth") => self.on_auth(&stanza),
            State::SaslClient if is(ns::SASL, "response") => {
                match decode_sasl(stanza.inner_xml(), false) {
                    Ok(data) => {
                        self.state = State::SaslServer;
                        vec![Action::SaslResponse(data.unwrap_or_default())]
                    }
                    Err(()) => self.sasl_failed(SaslFailure::IncorrectEncoding.to_xml(None)),
                }
            }
            State::SaslClient | State::SaslServer if is(ns::SASL, "abort") => {
                let mut actions = vec![Action::SaslAbort];
                actions.extend(self.sasl_failed(SaslFailure::Aborted.to_xml(None)));
                actions
            }
            State::PreAuth if is(ns::SASL, "response") || is(ns::SASL, "abort") => {
                self.sasl_failed(SaslFailure::MalformedRequest.to_xml(None))
            }
            State::AwaitBind => self.on_pre_bind(stanza),
            State::AwaitHeader | State::TlsPending => self.close(StreamError::with_text(
                C::PolicyViolation,
                "data sent before the stream restart",
            )),
            State::BindPending { .. } if stanza.kind == StanzaKind::Other => {
                vec![Action::Stanza(stanza)]
            }
            State::SaslClient | State::SaslServer => self.close(StreamError::with_text(
                C::PolicyViolation,
                "unexpected element during SASL negotiation",
            )),
            _ if is(ns::TLS, "starttls") => self.starttls_refused(),
            _ => self.close(StreamError::with_text(
                C::NotAuthorized,
                "authenticate and bind a resource first",
            )),
        }
    }

    fn starttls_refused(&mut self) -> Vec<Action> {
        let mut actions = vec![Action::Send(format!("<failure xmlns='{}'/>", ns::TLS))];
        actions.extend(self.close(StreamError::with_text(
            C::PolicyViolation,
            "STARTTLS is not available on this stream",
        )));
        actions
    }

    fn on_starttls(&mut self) -> Vec<Action> {
        if self.secure || !self.config.tls_available {
            return self.starttls_refused();
        }
        self.state = State::TlsPending;
        vec![
            Action::Send(format!("<proceed xmlns='{}'/>", ns::TLS)),
            Action::StartTls,
        ]
    }

    fn on_auth(&mut self, stanza: &Stanza) -> Vec<Action> {
        if !self.sasl_allowed() {
            // RFC 6120 §6.4.1 / §6.5.3: no mechanism is usable before TLS.
            return self.sasl_failed(SaslFailure::EncryptionRequired.to_xml(None));
        }
        let mechanism = stanza.attr("", "mechanism").unwrap_or_default().to_string();
        if !self.offered_mechanisms().contains(&mechanism) {
            return self.sasl_failed(SaslFailure::InvalidMechanism.to_xml(None));
        }
        match decode_sasl(stanza.inner_xml(), true) {
            Ok(initial_response) => {
                self.state = State::SaslServer;
                vec![Action::SaslStart {
                    mechanism,
                    initial_response,
                }]
            }
            Err(()) => self.sasl_failed(SaslFailure::IncorrectEncoding.to_xml(None)),
        }
    }

    /// Sends a SASL `<failure/>`; too many of them close the stream.
    fn sasl_failed(&mut self, failure_xml: String) -> Vec<Action> {
        self.sasl_failures += 1;
        self.state = State::PreAuth;
        let mut actions = vec![Action::Send(failure_xml)];
        if self.sasl_failures >= self.config.max_sasl_attempts {
            actions.extend(self.close(StreamError::with_text(
                C::PolicyViolation,
                "too many failed authentication attempts",
            )));
        }
        actions
    }

    fn on_pre_bind(&mut self, stanza: Stanza) -> Vec<Action> {
        let is_bind = stanza.kind == StanzaKind::Iq
            && stanza.type_.as_deref() == Some("set")
            && stanza.has_child(ns::BIND, "bind");
        if is_bind {
            let Some(iq_id) = stanza.id.clone() else {
                return self.close(StreamError::with_text(C::BadFormat, "IQ without id"));
            };
            let requested_resource = requested_resource(&stanza);
            self.state = State::BindPending {
                iq_id: iq_id.clone(),
            };
            return vec![Action::Bind {
                requested_resource,
                iq_id,
            }];
        }
        if stanza.kind == StanzaKind::Other {
            // Nonzas after authentication (XEP-0198 <resume/>, ...): the server decides.
            return vec![Action::Stanza(stanza)];
        }
        self.close(StreamError::with_text(
            C::NotAuthorized,
            "bind a resource first",
        ))
    }
}

/// `version='1.0'` (or a higher minor version, RFC 6120 §4.7.5).
fn version_supported(version: Option<&str>) -> bool {
    let Some((major, minor)) = version.and_then(|v| v.split_once('.')) else {
        return false;
    };
    major == "1" && !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
}

/// Decodes SASL data: empty means none, `=` means empty (RFC 6120 §6.4.2).
/// The inner XML is canonical, so base64 text contains no escapes.
fn decode_sasl(inner: &str, initial: bool) -> Result<Option<Vec<u8>>, ()> {
    let text = inner.trim();
    if text.is_empty() {
        return Ok(if initial { None } else { Some(Vec::new()) });
    }
    if text == "=" {
        return Ok(Some(Vec::new()));
    }
    BASE64.decode(text).map(Some).map_err(|_| ())
}

fn requested_resource(stanza: &Stanza) -> Option<String> {
    let bind = stanza
        .payload()
        .ok()?
        .into_iter()
        .find(|e| e.is("bind", ns::BIND))?;
    let resource = bind.get_child("resource", ns::BIND)?.text();
    let resource = resource.trim();
    (!resource.is_empty()).then(|| resource.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_supported(Some("1.0")));
        assert!(version_supported(Some("1.12")));
        assert!(!version_supported(Some("0.9")));
        assert!(!version_supported(Some("2.0")));
        assert!(!version_supported(Some("1.")));
        assert!(!version_supported(None));
    }

    #[test]
    fn sasl_payloads() {
        assert_eq!(decode_sasl("", true), Ok(None));
        assert_eq!(decode_sasl("=", true), Ok(Some(vec![])));
        assert_eq!(decode_sasl("AGE=", true), Ok(Some(vec![0, b'a'])));
        assert_eq!(decode_sasl("%%%", true), Err(()));
    }
}
