//! A stable-toolchain stand-in for the cargo-fuzz target: mutates valid
//! streams at random and checks the same invariants (chunking does not
//! change events or errors; stanzas round-trip exactly).
mod support;
use strait_wire::*;
use support::*;

const SEEDS: &[&str] = &[
    "<message to='a@b' id='1' type='chat'><body>hi &amp; bye</body><x xmlns='urn:x' xmlns:p='urn:p' p:q='1'><y>t</y></x></message>",
    "<presence xml:lang='en'><show>away</show><status><![CDATA[<b>]]></status></presence>",
    "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth> </stream:stream>",
];
const TOKENS: &[&str] = &[
    "<",
    ">",
    "/>",
    "</",
    "&",
    "&amp;",
    "&#0;",
    "&#x10FFFF;",
    "'",
    "\"",
    "xmlns",
    "xmlns:a='urn:a'",
    "a:",
    ":",
    "<!--",
    "<?",
    "<![CDATA[",
    "]]>",
    "\u{0}",
    "\u{FFFE}",
    "é",
    "<message>",
    "</message>",
    "=",
    " ",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if at < v.len() => {
                let len = rng.below(8).min(v.len() - at);
                v.drain(at..at + len);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                v.splice(at..at, t.iter().copied());
            }
        }
    }
    v
}

fn conditions(r: &(Vec<Event>, Option<StreamError>)) -> (&[Event], Option<StreamErrorCondition>) {
    (&r.0, r.1.as_ref().map(|e| e.condition))
}

#[test]
fn mutated_streams_keep_the_invariants() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let limits = Limits {
        max_stanza_bytes: 512,
        max_depth: 8,
        max_attributes: 8,
    };
    let mut stanzas_seen = 0;
    for i in 0..3000 {
        let seed = SEEDS[i % SEEDS.len()];
        let body = mutate(&mut rng, seed.as_bytes());
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(&body);
        let whole = parse_all(&input, limits.clone());
        let chunked = parse_chunked(&input, 1 + rng.below(9), limits.clone());
        assert_eq!(conditions(&whole), conditions(&chunked), "{}", show(&input));
        for s in stanzas(&whole.0) {
            stanzas_seen += 1;
            let xml = s.to_xml(ns::CLIENT);
            let again = parse_all(format!("{HEADER}{xml}").as_bytes(), Limits::authenticated());
            assert!(again.1.is_none(), "{xml}");
            assert_eq!(stanzas(&again.0), vec![s], "{xml}");
        }
    }
    assert!(stanzas_seen > 200, "{stanzas_seen}");
}
