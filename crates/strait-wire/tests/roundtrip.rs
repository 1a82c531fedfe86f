//! Smuggling attempts, incremental feeding and parse→serialize→parse stability.
mod support;
use strait_wire::*;
use support::*;

/// Parses `stanza_xml` inside a stream; returns exactly one stanza.
fn one(stanza_xml: &str) -> Stanza {
    let (events, err) = parse_all(
        format!("{HEADER}{stanza_xml}").as_bytes(),
        Limits::authenticated(),
    );
    assert!(err.is_none(), "{stanza_xml}: {err:?}");
    let s = stanzas(&events);
    assert_eq!(s.len(), 1, "{stanza_xml}");
    s[0].clone()
}

/// Serializes, re-parses and checks the result is the same stanza, and that
/// the serialization is a fixed point.
fn assert_stable(s: &Stanza) -> String {
    let xml = s.to_xml(ns::CLIENT);
    let again = one(&xml);
    assert_eq!(&again, s, "{xml}");
    assert_eq!(again.to_xml(ns::CLIENT), xml);
    xml
}

#[test]
fn escaped_markup_in_body_stays_text() {
    let s = one(
        "<message to='alice@example.com'><body>&lt;/body&gt;&lt;/message&gt;&lt;message to='victim@example.com'&gt;&lt;body&gt;pwned</body></message>",
    );
    let xml = assert_stable(&s);
    assert_eq!(xml.matches("<message").count(), 1, "{xml}");
    assert!(!xml.contains("<message to='victim"), "{xml}");
    assert_eq!(
        s.text_of_child(ns::CLIENT, "body").unwrap(),
        "</body></message><message to='victim@example.com'><body>pwned"
    );
}

#[test]
fn literal_close_tags_in_body_do_not_smuggle() {
    let input =
        format!("{HEADER}<message><body></message><message to='victim'><body>x</body></message>");
    let (events, err) = parse_all(input.as_bytes(), Limits::unauthenticated());
    assert!(stanzas(&events).is_empty());
    assert_eq!(err.unwrap().condition, StreamErrorCondition::NotWellFormed);
}

#[test]
fn cdata_with_markup_is_escaped() {
    let s =
        one("<message><body><![CDATA[</body></message><message to='victim'>]]></body></message>");
    let xml = assert_stable(&s);
    assert!(!xml.contains("CDATA"));
    assert_eq!(xml.matches("<message").count(), 1);
    assert_eq!(
        s.text_of_child(ns::CLIENT, "body").unwrap(),
        "</body></message><message to='victim'>"
    );
}

#[test]
fn quotes_in_attributes() {
    let s = one(
        r#"<message id="a'b&quot;c" to='x&apos;/&gt;&lt;message to=&apos;victim'><body/></message>"#,
    );
    assert_eq!(s.id.as_deref(), Some("a'b\"c"));
    assert_eq!(s.to.as_deref(), Some("x'/><message to='victim"));
    let xml = assert_stable(&s);
    assert!(
        xml.starts_with(
            "<message id='a&apos;b&quot;c' to='x&apos;/&gt;&lt;message to=&apos;victim'>"
        ),
        "{xml}"
    );
}

#[test]
fn whitespace_and_character_references() {
    let s = one(
        "<message id='a&#10;b&#9;c&#13;d'><body>line1\r\nline2&#13;\ttab &#x1F600; &#233;</body></message>",
    );
    assert_eq!(s.id.as_deref(), Some("a\nb\tc\rd"));
    assert_eq!(
        s.text_of_child(ns::CLIENT, "body").unwrap(),
        "line1\nline2\r\ttab \u{1F600} \u{e9}"
    );
    assert_stable(&s);
}

#[test]
fn namespaces_are_explicit_and_prefixes_canonical() {
    let s = one(
        "<message xmlns:x='urn:x' xmlns:y='urn:y' y:flag='1' xml:lang='de'>\
                 <x:foo x:a='1' b='2'><x:bar/><baz xmlns='urn:z'><qux y:c='3'/></baz></x:foo>\
                 <body>hi</body></message>",
    );
    assert_eq!(s.lang.as_deref(), Some("de"));
    assert_eq!(
        s.other_attrs,
        vec![("urn:y".into(), "flag".into(), "1".into())]
    );
    let xml = assert_stable(&s);
    assert_eq!(
        xml,
        "<message xml:lang='de' xmlns:a0='urn:y' a0:flag='1'>\
         <foo xmlns='urn:x' xmlns:a0='urn:x' a0:a='1' b='2'><bar/><baz xmlns='urn:z'><qux xmlns:a0='urn:y' a0:c='3'/></baz></foo>\
         <body xmlns='jabber:client'>hi</body></message>"
    );
    assert_eq!(s.children().len(), 2);
    assert_eq!(
        s.child_xml(ns::CLIENT, "body"),
        Some("<body xmlns='jabber:client'>hi</body>")
    );
    assert!(s.has_child("urn:x", "foo"));
}

#[test]
fn stanza_in_other_namespace_and_kinds() {
    let s = one("<iq xmlns='jabber:server' type='get' id='1'/>");
    assert_eq!(s.kind, StanzaKind::Iq);
    assert_eq!(
        s.to_xml(ns::CLIENT),
        "<iq xmlns='jabber:server' id='1' type='get'/>"
    );
    let s = one("<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(s.kind, StanzaKind::Other);
    let s = one("<message xmlns='urn:not-client'/>");
    assert_eq!(s.kind, StanzaKind::Other);
}

const STREAM_BODY: &str = "<message to='a@b' type='chat' id='m1'><body>Hello &amp; good&#x20;bye</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>\n\
    <presence><show>away</show><status>&lt;3 &#x1F600;</status></presence> \
    <iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>\
    <message><body><![CDATA[x<y]]>z</body></message><r xmlns='urn:xmpp:sm:3'/></stream:stream>";

#[test]
fn incremental_feeding_gives_the_same_events() {
    let input = format!("{HEADER}{STREAM_BODY}");
    let (all, err) = parse_all(input.as_bytes(), Limits::unauthenticated());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(stanzas(&all).len(), 5);
    assert!(matches!(all.last(), Some(Event::StreamClose)));
    for chunk in [1, 2, 3, 5, 7, 64, 1000] {
        let (events, err) = parse_chunked(input.as_bytes(), chunk, Limits::unauthenticated());
        assert!(err.is_none());
        assert_eq!(events, all, "chunk size {chunk}");
    }
    for s in stanzas(&all) {
        assert_stable(s);
    }
}

#[test]
fn reset_discards_buffered_bytes() {
    let mut p = StreamParser::new(Limits::unauthenticated());
    p.feed(
        format!(
            "{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='injected'/>"
        )
        .as_bytes(),
    );
    assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
    assert!(matches!(p.next_event(), Ok(Some(Event::Element(_)))));
    p.reset();
    assert_eq!(p.buffered(), 0);
    p.feed(HEADER.as_bytes());
    assert!(matches!(p.next_event(), Ok(Some(Event::StreamOpen(_)))));
    assert_eq!(p.next_event(), Ok(None));
}

#[test]
fn stanza_editing() {
    let mut s = one(
        "<message><body>hi</body>text<delay xmlns='urn:xmpp:delay' stamp='x'/><stanza-id xmlns='urn:xmpp:sid:0' id='forged'/></message>",
    );
    s.remove_children(|c| c.ns == "urn:xmpp:delay" || c.ns == "urn:xmpp:sid:0");
    assert_eq!(s.inner_xml(), "<body xmlns='jabber:client'>hi</body>text");
    s.push_child_xml(r#"<stanza-id xmlns="urn:xmpp:sid:0" id="a&quot;1" by="me"/>"#);
    assert_eq!(
        s.child_xml("urn:xmpp:sid:0", "stanza-id"),
        Some("<stanza-id xmlns='urn:xmpp:sid:0' id='a&quot;1' by='me'/>")
    );
    let el: minidom::Element =
        "<origin xmlns='urn:strait:origin' provider='p1'><name>P &amp; Co</name></origin>"
            .parse()
            .unwrap();
    s.push_child(&el);
    assert_eq!(
        s.text_of_child("urn:strait:origin", "origin").as_deref(),
        Some("")
    );
    let payload = s.payload().unwrap();
    assert_eq!(payload.len(), 3);
    assert_eq!(payload[2], el);
    assert_eq!(s.first_payload().unwrap().unwrap().name(), "body");
    assert_stable(&s);
    assert!(s.try_push_child_xml("<a/><b/>").is_err());
    assert!(s.try_push_child_xml("<a>").is_err());
    // s2s -> c2s
    let mut s2 = one("<message xmlns='jabber:server'><body>x<i>y</i></body></message>");
    s2.set_content_namespace(ns::CLIENT);
    assert_eq!(
        s2.to_xml(ns::CLIENT),
        "<message><body xmlns='jabber:client'>x<i>y</i></body></message>"
    );
}

#[test]
fn from_element_round_trips() {
    let el: minidom::Element = "<iq xmlns='jabber:client' type='result' id='q&amp;1' to='a@b/c'><query xmlns='jabber:iq:roster' ver='1'><item jid='x@y' name='&lt;X&gt;'/></query></iq>".parse().unwrap();
    let s = Stanza::from_element(&el);
    assert_eq!(s.kind, StanzaKind::Iq);
    assert_eq!(s.id.as_deref(), Some("q&1"));
    let xml = assert_stable(&s);
    assert_eq!(
        xml,
        "<iq id='q&amp;1' type='result' to='a@b/c'><query xmlns='jabber:iq:roster' ver='1'><item jid='x@y' name='&lt;X&gt;'/></query></iq>"
    );
    let mut out = Vec::new();
    s.write_xml(&mut out, ns::CLIENT);
    assert_eq!(out, xml.as_bytes());
}

/// A tiny deterministic generator (xorshift) for property-style tests.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    /// Text in one of several raw encodings.
    fn text(&mut self) -> String {
        let pieces = [
            "a",
            " ",
            "&amp;",
            "&lt;",
            "&gt;",
            "&apos;",
            "&quot;",
            "&#10;",
            "&#13;",
            "&#x9;",
            "é",
            "😀",
            "]]&gt;",
            "<![CDATA[<x>&]]>",
            "\r\n",
            "'",
            "\"",
        ];
        (0..self.below(6)).map(|_| self.pick(&pieces)).collect()
    }
    fn attr_value(&mut self) -> String {
        let pieces = [
            "v", " ", "&amp;", "&lt;", "&gt;", "&apos;", "&#10;", "&#13;", "&#9;", "é", "\t", "\n",
        ];
        (0..self.below(5)).map(|_| self.pick(&pieces)).collect()
    }
    fn element(&mut self, depth: u32, out: &mut String) {
        let name = self.pick(&["a", "b", "body", "x", "message"]);
        let decl = match self.below(4) {
            0 => format!(
                " xmlns='{}'",
                self.pick(&["urn:a", "urn:b", "jabber:client", ""])
            ),
            1 => " xmlns:p='urn:p'".to_string(),
            _ => String::new(),
        };
        let qname = if decl.contains("xmlns:p") && self.below(2) == 0 {
            format!("p:{name}")
        } else {
            name.to_string()
        };
        out.push_str(&format!("<{qname}{decl}"));
        for (i, attr) in ["id", "to", "k", "xml:lang"].iter().enumerate() {
            if self.below(3) == 0 {
                let q = if self.below(2) == 0 { '\'' } else { '"' };
                let v = self
                    .attr_value()
                    .replace(q, if q == '\'' { "&apos;" } else { "&quot;" });
                out.push_str(&format!(" {attr}={q}{v}{q}"));
            }
            if i == 2 && decl.contains("xmlns:p") && self.below(2) == 0 {
                out.push_str(" p:k='1'");
            }
        }
        if depth > 3 || self.below(3) == 0 {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for _ in 0..self.below(4) {
            if self.below(2) == 0 {
                out.push_str(&self.text());
            } else {
                self.element(depth + 1, out);
            }
        }
        out.push_str(&format!("</{qname}>"));
    }
}

#[test]
fn generated_stanzas_round_trip() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let mut xml = String::new();
        g.element(0, &mut xml);
        let s = one(&xml);
        assert_stable(&s);
        // Chunked feeding agrees.
        let input = format!("{HEADER}{xml}");
        let chunk = 1 + g.below(13) as usize;
        let (events, err) = parse_chunked(input.as_bytes(), chunk, Limits::authenticated());
        assert!(err.is_none());
        assert_eq!(stanzas(&events), vec![&s], "{xml}");
        // minidom agrees on the content.
        let payload = s.payload().unwrap();
        assert_eq!(payload.len(), s.children().len());
    }
}
