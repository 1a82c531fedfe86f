//! The c2s negotiation driven in memory: bytes through the parser, events
//! into the state machine, actions checked.
use strait_wire::StreamErrorCondition as C;
use strait_wire::*;

const CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

fn config() -> C2sConfig {
    C2sConfig {
        domains: vec!["example.com".into()],
        ..C2sConfig::default()
    }
}

/// A connection in memory: the parser plus the negotiation.
struct Conn {
    parser: StreamParser,
    neg: C2sNegotiation,
    sent: String,
}

impl Conn {
    fn new(config: C2sConfig, secure: bool) -> Self {
        Conn {
            parser: StreamParser::new(Limits::unauthenticated()),
            neg: C2sNegotiation::new(config, secure, "s1".into()),
            sent: String::new(),
        }
    }

    /// Feeds client bytes; returns the actions other than `Send` (whose
    /// bytes accumulate in `sent`), applying parser-side effects.
    fn client(&mut self, xml: &str) -> Vec<Action> {
        self.parser.feed(xml.as_bytes());
        let mut out = Vec::new();
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => {
                    let actions = self.neg.handle(ev);
                    let stop = actions.iter().any(|a| {
                        matches!(
                            a,
                            Action::StartTls | Action::RestartStream | Action::Close(_)
                        )
                    });
                    out.extend(self.apply(actions));
                    if stop {
                        return out;
                    }
                }
                Ok(None) => return out,
                Err(e) => {
                    out.push(Action::Close(e));
                    return out;
                }
            }
        }
    }

    fn apply(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut rest = Vec::new();
        for a in actions {
            match a {
                Action::Send(s) => self.sent.push_str(&s),
                Action::StartTls => {
                    self.parser.reset();
                    self.neg.tls_established();
                    rest.push(Action::StartTls);
                }
                Action::RestartStream => {
                    self.parser.set_limits(Limits::authenticated());
                    self.parser.reset();
                    self.neg.new_stream_id("s2".into());
                    rest.push(Action::RestartStream);
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn take_sent(&mut self) -> String {
        std::mem::take(&mut self.sent)
    }
}

fn closed_with(actions: &[Action]) -> Option<StreamErrorCondition> {
    actions.iter().find_map(|a| match a {
        Action::Close(e) => Some(e.condition),
        _ => None,
    })
}

/// Runs STARTTLS and a one-round SASL exchange; returns the connection
/// waiting for the post-auth header.
fn authenticate() -> Conn {
    let mut c = Conn::new(config(), false);
    assert!(c.client(CLIENT_HEADER).is_empty());
    let sent = c.take_sent();
    assert!(sent.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.com' version='1.0' xml:lang='en'><stream:features>"), "{sent}");
    assert!(
        sent.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>")
    );
    assert!(!sent.contains("mechanisms"));
    // Bytes pipelined after <starttls/> are dropped by the reset.
    let actions = c.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGE=</auth>");
    assert_eq!(actions, vec![Action::StartTls]);
    assert_eq!(
        c.take_sent(),
        "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    );
    assert!(c.neg.is_secure());
    assert!(c.client(CLIENT_HEADER).is_empty());
    let sent = c.take_sent();
    assert!(sent.contains("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>"), "{sent}");
    assert!(!sent.contains("starttls"));
    let actions = c.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>biwsbj11c2VyLHI9YWJj</auth>");
    assert_eq!(
        actions,
        vec![Action::SaslStart {
            mechanism: "SCRAM-SHA-256".into(),
            initial_response: Some(b"n,,n=user,r=abc".to_vec())
        }]
    );
    let actions = c.neg.sasl_step(SaslStep::Challenge(b"r=abcdef".to_vec()));
    assert!(c.apply(actions).is_empty());
    assert_eq!(
        c.take_sent(),
        "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cj1hYmNkZWY=</challenge>"
    );
    let actions = c.client("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cD0x</response>");
    assert_eq!(actions, vec![Action::SaslResponse(b"p=1".to_vec())]);
    let actions = c.neg.sasl_step(SaslStep::Success {
        additional: Some(b"v=ok".to_vec()),
        authenticated_jid: "user@example.com".into(),
    });
    assert_eq!(c.apply(actions), vec![Action::RestartStream]);
    assert_eq!(
        c.take_sent(),
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>dj1vaw==</success>"
    );
    assert_eq!(c.neg.authenticated_jid(), Some("user@example.com"));
    assert_eq!(c.parser.limits().max_stanza_bytes, 256 * 1024);
    c
}

#[test]
fn full_starttls_sasl_bind_exchange() {
    let mut c = authenticate();
    assert!(c.client(CLIENT_HEADER).is_empty());
    let sent = c.take_sent();
    assert!(sent.contains("id='s2'"));
    assert!(sent.ends_with("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>"), "{sent}");
    let actions = c.client("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>");
    assert_eq!(
        actions,
        vec![Action::Bind {
            requested_resource: Some("phone".into()),
            iq_id: "b1".into()
        }]
    );
    assert!(!c.neg.is_established());
    let actions = c.neg.bind_result(Ok("user@example.com/phone".into()));
    assert!(c.apply(actions).is_empty());
    assert_eq!(
        c.take_sent(),
        "<iq id='b1' type='result'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>user@example.com/phone</jid></bind></iq>"
    );
    assert!(c.neg.is_established());
    assert_eq!(c.neg.bound_jid(), Some("user@example.com/phone"));
    assert_eq!(c.neg.domain(), Some("example.com"));
    let actions = c.client("<message to='bob@example.com'><body>hi</body></message><r xmlns='urn:xmpp:sm:3'/></stream:stream>");
    assert_eq!(actions.len(), 3);
    assert!(matches!(&actions[0], Action::Stanza(s) if s.kind == StanzaKind::Message));
    assert!(matches!(&actions[1], Action::Stanza(s) if s.name == "r"));
    assert_eq!(actions[2], Action::PeerClosed);
}

#[test]
fn bind_without_resource_and_bind_error() {
    let mut c = authenticate();
    c.client(CLIENT_HEADER);
    let actions =
        c.client("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    assert_eq!(
        actions,
        vec![Action::Bind {
            requested_resource: None,
            iq_id: "b1".into()
        }]
    );
    c.take_sent();
    let actions = c
        .neg
        .bind_result(Err(StanzaError::new(StanzaErrorCondition::Conflict)));
    c.apply(actions);
    assert_eq!(
        c.take_sent(),
        "<iq id='b1' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    );
    let actions = c.client("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>x</resource></bind></iq>");
    assert!(matches!(&actions[0], Action::Bind { iq_id, .. } if iq_id == "b2"));
}

#[test]
fn stanzas_before_bind_are_not_authorized() {
    let mut c = authenticate();
    c.client(CLIENT_HEADER);
    let actions = c.client("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    assert_eq!(closed_with(&actions), Some(C::NotAuthorized));
    let mut c = authenticate();
    c.client(CLIENT_HEADER);
    let actions = c.client("<message to='x@y'><body>hi</body></message>");
    assert_eq!(closed_with(&actions), Some(C::NotAuthorized));
    // Nonzas (e.g. XEP-0198 resumption) go to the server.
    let mut c = authenticate();
    c.client(CLIENT_HEADER);
    let actions = c.client("<resume xmlns='urn:xmpp:sm:3' h='1' previd='x'/>");
    assert!(matches!(&actions[0], Action::Stanza(s) if s.name == "resume"));
}

#[test]
fn resumption_establishes_the_stream_without_bind() {
    let mut c = authenticate();
    // Refused before authentication.
    let mut fresh = Conn::new(config(), true);
    assert!(!fresh.neg.resumed("user@example.com/phone".into()));
    c.client(CLIENT_HEADER);
    let actions = c.client("<resume xmlns='urn:xmpp:sm:3' h='3' previd='abc'/>");
    assert!(matches!(&actions[0], Action::Stanza(s) if s.name == "resume"));
    assert!(c.neg.resumed("user@example.com/phone".into()));
    assert!(c.neg.is_established());
    assert_eq!(c.neg.bound_jid(), Some("user@example.com/phone"));
    // Once established, a second resumption (or a bind) is not a negotiation matter.
    assert!(!c.neg.resumed("user@example.com/other".into()));
    let actions = c.client("<message to='bob@example.com'><body>hi</body></message>");
    assert!(matches!(&actions[0], Action::Stanza(s) if s.kind == StanzaKind::Message));
}

#[test]
fn stanza_before_authentication_is_not_authorized() {
    let mut c = Conn::new(config(), true);
    c.client(CLIENT_HEADER);
    let actions = c.client("<message to='x@y'><body>spam</body></message>");
    assert_eq!(closed_with(&actions), Some(C::NotAuthorized));
}

#[test]
fn direct_tls_offers_mechanisms_at_once() {
    let mut c = Conn::new(config(), true);
    c.client(CLIENT_HEADER);
    let sent = c.take_sent();
    assert!(sent.contains("<mechanism>SCRAM-SHA-256</mechanism>"));
    assert!(!sent.contains("starttls"));
    // STARTTLS on a secure stream is refused.
    let actions = c.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(
        c.take_sent(),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    );
    assert_eq!(closed_with(&actions), Some(C::PolicyViolation));
}

#[test]
fn auth_before_tls_is_encryption_required() {
    let mut c = Conn::new(config(), false);
    c.client(CLIENT_HEADER);
    c.take_sent();
    let actions = c
        .client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>");
    assert!(actions.is_empty());
    assert_eq!(
        c.take_sent(),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"
    );
}

#[test]
fn sasl_failures_and_limit() {
    let mut c = Conn::new(config(), true);
    c.client(CLIENT_HEADER);
    c.take_sent();
    c.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>");
    assert_eq!(
        c.take_sent(),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
    );
    c.client(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>!!notbase64</auth>",
    );
    assert_eq!(
        c.take_sent(),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><incorrect-encoding/></failure>"
    );
    let actions =
        c.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>=</auth>");
    assert_eq!(
        actions,
        vec![Action::SaslStart {
            mechanism: "SCRAM-SHA-1".into(),
            initial_response: Some(vec![])
        }]
    );
    let actions = c.neg.sasl_step(SaslStep::Failure {
        condition: SaslFailure::NotAuthorized,
        text: Some("bad <password>".into()),
    });
    let rest = c.apply(actions);
    assert_eq!(
        c.take_sent(),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text>bad &lt;password&gt;</text></failure>"
    );
    assert_eq!(closed_with(&rest), Some(C::PolicyViolation));
}

#[test]
fn sasl_abort_and_empty_initial_response() {
    let mut c = Conn::new(config(), true);
    c.client(CLIENT_HEADER);
    let actions =
        c.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'/>");
    assert_eq!(
        actions,
        vec![Action::SaslStart {
            mechanism: "SCRAM-SHA-256".into(),
            initial_response: None
        }]
    );
    let actions = c.neg.sasl_step(SaslStep::Challenge(vec![]));
    c.apply(actions);
    c.take_sent();
    let actions = c.client("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert_eq!(actions, vec![Action::SaslAbort]);
    assert_eq!(
        c.take_sent(),
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><aborted/></failure>"
    );
    // A new attempt is allowed.
    let actions = c.client(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>eA==</auth>",
    );
    assert!(matches!(&actions[0], Action::SaslStart { .. }));
}

#[test]
fn header_errors() {
    let cases = [
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other.org' version='1.0'>",
            C::HostUnknown,
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
            C::HostUnknown,
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com'>",
            C::UnsupportedVersion,
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='0.9'>",
            C::UnsupportedVersion,
        ),
        (
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>",
            C::InvalidNamespace,
        ),
        // The parser accepts component streams (XEP-0114) for the component listener; a
        // client stream never is one.
        (
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>",
            C::InvalidNamespace,
        ),
    ];
    for (header, condition) in cases {
        let mut c = Conn::new(config(), true);
        let actions = c.client(header);
        assert_eq!(closed_with(&actions), Some(condition), "{header}");
        // Our header still goes out first (RFC 6120 §4.9.1.2).
        assert!(
            c.take_sent()
                .starts_with("<?xml version='1.0'?><stream:stream ")
        );
    }
    // Upper case domain and a newer minor version are accepted.
    let mut c = Conn::new(config(), true);
    let actions = c.client("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='Example.COM' version='1.1'>");
    assert!(actions.is_empty());
}

#[test]
fn domain_must_not_change_across_restarts() {
    let mut cfg = config();
    cfg.domains.push("other.org".into());
    let mut c = Conn::new(cfg, false);
    c.client(CLIENT_HEADER);
    c.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    let actions = c.client("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other.org' version='1.0'>");
    assert_eq!(closed_with(&actions), Some(C::HostUnknown));
}

#[test]
fn starttls_unavailable_or_twice() {
    let mut cfg = config();
    cfg.tls_available = false;
    cfg.require_tls = false;
    cfg.mechanisms_insecure = vec!["PLAIN".into()];
    let mut c = Conn::new(cfg, false);
    c.client(CLIENT_HEADER);
    let sent = c.take_sent();
    assert!(!sent.contains("starttls") && sent.contains("<mechanism>PLAIN</mechanism>"));
    let actions = c.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(closed_with(&actions), Some(C::PolicyViolation));

    let mut c = Conn::new(config(), false);
    c.client(CLIENT_HEADER);
    c.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    c.client(CLIENT_HEADER);
    let actions = c.client("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(closed_with(&actions), Some(C::PolicyViolation));
}

#[test]
fn optional_tls_offers_both() {
    let mut cfg = config();
    cfg.require_tls = false;
    cfg.mechanisms_insecure = vec!["SCRAM-SHA-256".into()];
    let mut c = Conn::new(cfg, false);
    c.client(CLIENT_HEADER);
    let sent = c.take_sent();
    assert!(
        sent.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></starttls>"),
        "{sent}"
    );
    assert!(sent.contains("<mechanism>SCRAM-SHA-256</mechanism>"));
}

#[test]
fn extra_features_after_auth() {
    let mut cfg = config();
    cfg.extra_features = vec!["<ver xmlns='urn:xmpp:features:rosterver'/>".into()];
    let mut c = Conn::new(cfg, true);
    c.client(CLIENT_HEADER);
    c.client(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>eA==</auth>",
    );
    let actions = c.neg.sasl_step(SaslStep::Success {
        additional: None,
        authenticated_jid: "u@example.com".into(),
    });
    c.apply(actions);
    assert!(
        c.take_sent()
            .ends_with("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>")
    );
    c.client(CLIENT_HEADER);
    assert!(
        c.take_sent()
            .contains("<ver xmlns='urn:xmpp:features:rosterver'/></stream:features>")
    );
}

#[test]
fn peer_close_before_establishment() {
    let mut c = Conn::new(config(), true);
    c.client(CLIENT_HEADER);
    assert_eq!(c.client("</stream:stream>"), vec![Action::PeerClosed]);
    assert!(c.neg.is_closed());
}

#[test]
fn provider_domains_offer_only_the_provider_mechanisms() {
    let config = C2sConfig {
        provider_domains: vec!["acme.example".into()],
        ..config()
    };
    let mut c = Conn::new(config.clone(), true);
    c.client(&CLIENT_HEADER.replace("to='example.com'", "to='ACME.example'"));
    let sent = c.take_sent();
    assert!(c.neg.is_provider_stream());
    assert!(
        sent.contains("from='acme.example'")
            && sent.contains("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>OAUTHBEARER</mechanism></mechanisms>"),
        "{sent}"
    );
    // The platform's own mechanisms are not accepted there.
    c.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>biwsbj11LHI9YQ==</auth>");
    assert!(c.take_sent().contains("<invalid-mechanism/>"));
    // Nor OAUTHBEARER on the platform's own domain.
    let mut c = Conn::new(config.clone(), true);
    c.client(CLIENT_HEADER);
    assert!(!c.neg.is_provider_stream());
    assert!(!c.take_sent().contains("OAUTHBEARER"));
    c.client("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='OAUTHBEARER'>eA==</auth>");
    assert!(c.take_sent().contains("<invalid-mechanism/>"));
    // Before TLS, nothing is offered on a provider domain either.
    let mut c = Conn::new(config, false);
    c.client(&CLIENT_HEADER.replace("to='example.com'", "to='acme.example'"));
    let sent = c.take_sent();
    assert!(
        sent.contains("<starttls") && !sent.contains("<mechanism>"),
        "{sent}"
    );
}
