//! Malformed and hostile input: each case asserts the exact stream error.
mod support;
use strait_wire::StreamErrorCondition as C;
use strait_wire::*;
use support::*;

fn in_stream(body: &str) -> Vec<u8> {
    format!("{HEADER}{body}").into_bytes()
}

#[test]
fn billion_laughs_before_stream() {
    let doc = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>\
               <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>&lol2;";
    assert_condition(doc.as_bytes(), C::RestrictedXml);
}

#[test]
fn doctype_inside_stream() {
    assert_condition(
        &in_stream("<!DOCTYPE foo [<!ENTITY x 'y'>]>"),
        C::RestrictedXml,
    );
    assert_condition(
        &in_stream("<message><!ENTITY x 'y'></message>"),
        C::RestrictedXml,
    );
}

#[test]
fn custom_entity_reference() {
    assert_condition(
        &in_stream("<message><body>&lol;</body></message>"),
        C::RestrictedXml,
    );
    assert_condition(&in_stream("<message id='&xxe;'/>"), C::RestrictedXml);
}

#[test]
fn comments_are_restricted() {
    assert_condition(b"<!-- hi --><stream:stream/>", C::RestrictedXml);
    assert_condition(&in_stream("<!-- keepalive -->"), C::RestrictedXml);
    assert_condition(
        &in_stream("<message><!-- x --></message>"),
        C::RestrictedXml,
    );
}

#[test]
fn processing_instructions_are_restricted() {
    assert_condition(&in_stream("<?evil data?>"), C::RestrictedXml);
    assert_condition(
        &in_stream("<message><?php echo 1; ?></message>"),
        C::RestrictedXml,
    );
    // An XML declaration is only allowed at the very start.
    assert_condition(&in_stream("<?xml version='1.0'?>"), C::RestrictedXml);
}

#[test]
fn xml_declaration_checks() {
    let tail =
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    for decl in [
        "<?xml version='1.0' encoding='ISO-8859-1'?>",
        "<?xml version='1.0' encoding='UTF-16'?>",
        "<?xml version='1.1'?>",
    ] {
        assert_condition(format!("{decl}{tail}").as_bytes(), C::UnsupportedEncoding);
    }
    for decl in [
        "<?xml version='1.0' encoding='utf-8'?>",
        "<?xml version='1.0' encoding='UTF-8' standalone='yes'?>",
        "",
    ] {
        let (events, err) = parse_all(
            format!("{decl}{tail}").as_bytes(),
            Limits::unauthenticated(),
        );
        assert!(err.is_none(), "{decl}: {err:?}");
        assert!(matches!(events[0], Event::StreamOpen(_)));
    }
}

#[test]
fn deep_nesting() {
    let depth = 40;
    let body = format!(
        "<message>{}{}</message>",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    );
    let err = error_of(&in_stream(&body));
    assert_eq!(err.condition, C::PolicyViolation);
    assert!(err.text.unwrap().contains("nested too deeply"));
    // 32 levels (message = 1) are fine.
    let body = format!(
        "<message>{}{}</message>",
        "<a>".repeat(31),
        "</a>".repeat(31)
    );
    let (events, err) = parse_all(&in_stream(&body), Limits::unauthenticated());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(stanzas(&events).len(), 1);
}

#[test]
fn oversized_stanza_unauthenticated() {
    let body = format!("<message><body>{}</body></message>", "a".repeat(10_000));
    let err = error_of(&in_stream(&body));
    assert_eq!(err.condition, C::PolicyViolation);
    let text = err.text.unwrap();
    assert!(text.starts_with("stanza too large ("), "{text}");
    assert!(text.ends_with("limit 10000)"), "{text}");
}

#[test]
fn oversized_stanza_authenticated() {
    let limits = Limits::authenticated();
    let ok = format!("<message><body>{}</body></message>", "a".repeat(200_000));
    let (events, err) = parse_all(&in_stream(&ok), limits.clone());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        stanzas(&events)[0]
            .text_of_child("jabber:client", "body")
            .unwrap()
            .len(),
        200_000
    );
    let big = format!("<message><body>{}</body></message>", "a".repeat(300_000));
    let err = error_with(&in_stream(&big), limits);
    assert_eq!(err.condition, C::PolicyViolation);
    assert!(err.text.unwrap().contains("limit 262144"));
}

#[test]
fn many_stanzas_each_within_budget() {
    // The budget is per stanza, not per stream.
    let one = format!("<message><body>{}</body></message>", "a".repeat(9_000));
    let (events, err) = parse_all(&in_stream(&one.repeat(5)), Limits::unauthenticated());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(stanzas(&events).len(), 5);
}

#[test]
fn many_attributes() {
    let attrs: String = (0..65).map(|i| format!(" a{i}='x'")).collect();
    let err = error_of(&in_stream(&format!("<message{attrs}/>")));
    assert_eq!(err.condition, C::PolicyViolation);
    assert!(err.text.unwrap().contains("too many attributes"));
    let attrs: String = (0..64).map(|i| format!(" a{i}='x'")).collect();
    let (_, err) = parse_all(
        &in_stream(&format!("<message{attrs}/>")),
        Limits::unauthenticated(),
    );
    assert!(err.is_none());
}

#[test]
fn huge_single_tokens() {
    // One text token far beyond the budget, fed at once.
    let mut input = in_stream("<message><body>");
    input.extend(std::iter::repeat_n(b'a', 5_000_000));
    let err = error_with(&input[..200_000], Limits::unauthenticated());
    assert_eq!(err.condition, C::PolicyViolation);
    let (_, err) = parse_all(&input, Limits::authenticated());
    assert_eq!(err.unwrap().condition, C::PolicyViolation);
    // An attribute value longer than the token cap, under a roomy budget.
    let attr = format!("<message id='{}'/>", "b".repeat(20_000));
    let err = error_with(&in_stream(&attr), Limits::authenticated());
    assert_eq!(err.condition, C::PolicyViolation);
    // A huge element name.
    let name = format!("<{}/>", "n".repeat(20_000));
    let err = error_with(&in_stream(&name), Limits::authenticated());
    assert_eq!(err.condition, C::PolicyViolation);
}

#[test]
fn whitespace_flood() {
    let input = in_stream(&" ".repeat(50_000));
    let err = error_of(&input);
    assert_eq!(err.condition, C::PolicyViolation);
    // Before the stream header too (rxml rejects a long run of leading
    // whitespace as a text token before the root, or the budget trips).
    let mut input = vec![b' '; 50_000];
    input.extend_from_slice(HEADER.as_bytes());
    assert!(parse_all(&input, Limits::unauthenticated()).1.is_some());
    // Ordinary keepalives between stanzas are fine.
    let (events, err) = parse_all(
        &in_stream(&" <presence/>\n \n<presence/> ".repeat(100)),
        Limits::unauthenticated(),
    );
    assert!(err.is_none());
    assert_eq!(stanzas(&events).len(), 200);
}

#[test]
fn invalid_utf8() {
    let mut input = in_stream("<message><body>");
    input.extend_from_slice(&[0xff, 0xfe]);
    input.extend_from_slice(b"</body></message>");
    assert_condition(&input, C::UnsupportedEncoding);
    let mut input = in_stream("<message id='");
    input.extend_from_slice(&[0xc3, 0x28]);
    input.extend_from_slice(b"'/>");
    assert_condition(&input, C::UnsupportedEncoding);
    // An overlong encoding of '<'.
    let mut input = in_stream("<message><body>");
    input.extend_from_slice(&[0xc0, 0xbc]);
    input.extend_from_slice(b"</body></message>");
    assert_condition(&input, C::UnsupportedEncoding);
}

#[test]
fn invalid_characters() {
    assert_condition(
        &in_stream("<message><body>\u{1}</body></message>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message><body>&#0;</body></message>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message><body>&#x1;</body></message>"),
        C::NotWellFormed,
    );
}

#[test]
fn malformed_xml() {
    assert_condition(&in_stream("<message><body></message>"), C::NotWellFormed);
    assert_condition(&in_stream("<message id='1' id='2'/>"), C::NotWellFormed);
    assert_condition(&in_stream("<message id=1/>"), C::NotWellFormed);
    assert_condition(
        &in_stream("<message><body>a & b</body></message>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message><body>a < b</body></message>"),
        C::NotWellFormed,
    );
    assert_condition(&in_stream("</message>"), C::NotWellFormed);
    assert_condition(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'></stream:streamx>", C::NotWellFormed);
}

#[test]
fn text_at_stream_level() {
    assert_condition(&in_stream("hello<message/>"), C::BadFormat);
}

#[test]
fn unbound_prefixes() {
    assert_condition(
        &in_stream("<message><foo:bar/></message>"),
        C::BadNamespacePrefix,
    );
    assert_condition(&in_stream("<message foo:id='1'/>"), C::BadNamespacePrefix);
    assert_condition(
        b"<stream:stream xmlns='jabber:client' to='example.com' version='1.0'>",
        C::BadNamespacePrefix,
    );
}

#[test]
fn stream_namespace_tricks() {
    // The stream element in the wrong namespace.
    assert_condition(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streamz'>",
        C::InvalidNamespace,
    );
    assert_condition(b"<stream xmlns='jabber:client'>", C::InvalidNamespace);
    assert_condition(b"<message xmlns='jabber:client'/>", C::InvalidNamespace);
    // Right namespace, wrong name.
    assert_condition(
        b"<stream:features xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        C::BadFormat,
    );
    // Unsupported or missing content namespace.
    // (jabber:component:accept is supported since XEP-0114; the connect variant is not.)
    assert_condition(b"<stream:stream xmlns='jabber:component:connect' xmlns:stream='http://etherx.jabber.org/streams'>", C::InvalidNamespace);
    assert_condition(
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
        C::InvalidNamespace,
    );
    // The default namespace itself being the stream namespace.
    assert_condition(
        b"<stream xmlns='http://etherx.jabber.org/streams'>",
        C::InvalidNamespace,
    );
}

#[test]
fn reserved_namespace_bindings() {
    assert_condition(
        &in_stream("<message xmlns:xmlns='urn:x'/>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message xmlns:a='http://www.w3.org/2000/xmlns/' a:b='c'/>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message xmlns:xml='urn:not-xml'/>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message xmlns:a='http://www.w3.org/XML/1998/namespace'/>"),
        C::NotWellFormed,
    );
    assert_condition(
        &in_stream("<message xmlns='http://www.w3.org/2000/xmlns/'/>"),
        C::NotWellFormed,
    );
    assert_condition(&in_stream("<message xmlns:a=''/>"), C::NotWellFormed);
    assert_condition(&in_stream("<xmlns:message/>"), C::NotWellFormed);
    // Two prefixes for one namespace make a duplicate attribute.
    assert_condition(
        &in_stream("<message xmlns:a='urn:x' xmlns:b='urn:x' a:c='1' b:c='2'/>"),
        C::NotWellFormed,
    );
}

#[test]
fn redefining_the_stream_prefix_inside_a_stanza() {
    let input =
        in_stream("<message xmlns:stream='urn:evil'><stream:error/></message></stream:stream>");
    let (events, err) = parse_all(&input, Limits::unauthenticated());
    assert!(err.is_none(), "{err:?}");
    let s = stanzas(&events)[0];
    assert_eq!(s.children()[0].ns, "urn:evil");
    assert_eq!(
        s.to_xml("jabber:client"),
        "<message><error xmlns='urn:evil'/></message>"
    );
    assert!(matches!(events.last(), Some(Event::StreamClose)));
}

#[test]
fn parser_is_dead_after_an_error() {
    let mut p = StreamParser::new(Limits::unauthenticated());
    p.feed(&in_stream("<!-- x -->"));
    let (_, err) = drain(&mut p);
    let err = err.unwrap();
    p.feed(b"<message/>");
    assert_eq!(p.next_event(), Err(err.clone()));
    assert_eq!(p.next_event(), Err(err));
}
