//! Criterion benchmarks of the wire layer: parsing a client stream into stanzas within the
//! budgets, and writing stanzas back canonically. Throughput is reported in bytes and in
//! stanzas per second (criterion's `Elements`), for three kinds of traffic: small chat
//! messages, OMEMO-encrypted messages (a few kilobytes of base64 key material and payload),
//! and presence with entity capabilities.
//!
//! ```sh
//! cargo bench -p strait-wire --bench parser
//! ```
//!
//! `parse/*` feeds the whole buffer in 4 KiB chunks (what the connection task reads at a time)
//! and drains every event; `serialize/*` writes the parsed stanzas back as the server does
//! before sending them on.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strait_wire::{Event, Limits, Stanza, StreamParser, ns};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
const STANZAS: usize = 1000;

fn chat(i: usize) -> String {
    format!(
        "<message to='bob@localhost' type='chat' id='m{i}'><body>Hello Bob, this is message number {i}. See you at 5?</body><active xmlns='http://jabber.org/protocol/chatstates'/><origin-id xmlns='urn:xmpp:sid:0' id='o{i}'/><request xmlns='urn:xmpp:receipts'/></message>"
    )
}

fn omemo(i: usize) -> String {
    // Shapes of an OMEMO 0.3 message to 4 devices: 4 keys of ~300 base64 chars and a payload.
    let key = "MwohBQ".repeat(50);
    let mut keys = String::new();
    for rid in 0..4 {
        keys.push_str(&format!(
            "<key rid='{}' prekey='true'>{key}</key>",
            1000 + rid
        ));
    }
    format!(
        "<message to='bob@localhost' type='chat' id='e{i}'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='123456'>{keys}<iv>AAECAwQFBgcICQoL</iv></header><payload>{}</payload></encrypted><store xmlns='urn:xmpp:hints'/><encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/><body>I sent you an OMEMO encrypted message but your client doesn't seem to support that.</body></message>",
        "QUJD".repeat(40)
    )
}

/// A chat message with a 2,500-byte body: the size `bench/compare --body-size 2500` sends,
/// that of an OMEMO message to a few devices, as one run of text.
fn chat_large(i: usize) -> String {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod. ";
    let body: String = line.chars().cycle().take(2500).collect();
    format!("<message to='bob@localhost' type='chat' id='l{i}'><body>{body}</body></message>")
}

fn presence(i: usize) -> String {
    format!(
        "<presence id='p{i}'><show>away</show><status>In a meeting</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://conversations.im' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>"
    )
}

/// Makes the i-th stanza of a kind of traffic.
type Maker = fn(usize) -> String;

fn stream_of(make: Maker) -> Vec<u8> {
    let mut s = String::from(HEADER);
    for i in 0..STANZAS {
        s.push_str(&make(i));
    }
    s.into_bytes()
}

fn parse_all(bytes: &[u8]) -> Vec<Stanza> {
    let mut p = StreamParser::new(Limits::authenticated());
    let mut out = Vec::with_capacity(STANZAS);
    for chunk in bytes.chunks(4096) {
        p.feed(chunk);
        while let Some(ev) = p.next_event().expect("valid stream") {
            if let Event::Element(s) = ev {
                out.push(s);
            }
        }
    }
    out
}

/// Like `parse_all`, but each read carries exactly one stanza (a client sending one stanza at
/// a time): every read ends between stanzas, where the parser gives back its buffers, so this
/// is where that costs the most.
fn parse_per_stanza(reads: &[Vec<u8>]) -> usize {
    let mut p = StreamParser::new(Limits::authenticated());
    let mut n = 0;
    for read in reads {
        p.feed(read);
        while let Some(ev) = p.next_event().expect("valid stream") {
            if let Event::Element(s) = ev {
                n += black_box(s).name.len();
            }
        }
    }
    n
}

/// rxml's raw tokenizer alone over the same bytes (no namespaces, budgets, envelopes or
/// canonical inner XML): what the parser ran until it had its own tokenizer, the reference
/// that one is tested against.
fn tokenize_all(bytes: &[u8]) -> usize {
    use rxml::{Parse, RawParser};
    let mut p = RawParser::default();
    let mut events = 0;
    for chunk in bytes.chunks(4096) {
        let mut slice = chunk;
        loop {
            match p.parse(&mut slice, false) {
                Ok(Some(_)) => events += 1,
                Ok(None) => return events,
                Err(rxml::error::EndOrError::NeedMoreData) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    events
}

/// Our tokenizer alone (`strait_wire::token::Strict`, what the parser runs) over the same
/// bytes: against `tokenize_all`, what replacing rxml's tokenizer saved.
fn tokenize_all_strict(bytes: &[u8]) -> usize {
    use strait_wire::token::{Stop, Strict, Tokenize};
    let mut t = Strict::new(8192);
    let mut events = 0;
    let mut pending: Vec<u8> = Vec::new();
    for chunk in bytes.chunks(4096) {
        pending.extend_from_slice(chunk);
        let mut slice = &pending[..];
        loop {
            match t.next_token(&mut slice, false) {
                Ok(Some(_)) => events += 1,
                Ok(None) => return events,
                Err(Stop::NeedMoreData) => break,
                Err(Stop::Error(e)) => panic!("{e:?}"),
            }
        }
        let left = slice.len();
        pending.drain(..pending.len() - left);
    }
    events
}

/// A second reference, for scale only: quick-xml's tokenizer over the same bytes, with UTF-8
/// checked once for the whole input, attribute values normalised and text end-of-line normalised. It checks
/// far less than rxml (no character or name validity, no restricted-XML rules), so it is a
/// lower bound on what a strict tokenizer could cost, not a candidate: a parser for a server
/// must reject what rxml rejects.
fn tokenize_all_quick_xml(bytes: &[u8]) -> usize {
    use quick_xml::events::Event as Qx;
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let mut r = quick_xml::Reader::from_str(text);
    r.config_mut().check_end_names = true;
    let mut events = 0;
    loop {
        match r.read_event().expect("well-formed") {
            Qx::Start(e) | Qx::Empty(e) => {
                for a in e.attributes() {
                    let a = a.expect("attribute");
                    events += a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .expect("escapes")
                        .len();
                }
                events += 1;
            }
            // Text comes without its references (quick-xml reports `&amp;` and the like as
            // separate GeneralRef events), so this is end-of-line normalisation only.
            Qx::Text(t) => events += t.xml10_content().len(),
            Qx::Eof => return events,
            _ => events += 1,
        }
    }
}

fn benches(c: &mut Criterion) {
    let kinds: [(&str, Maker); 4] = [
        ("chat", chat),
        ("chat_large", chat_large),
        ("omemo", omemo),
        ("presence", presence),
    ];
    let mut parse = c.benchmark_group("parse");
    for (name, make) in kinds {
        let bytes = stream_of(make);
        assert_eq!(parse_all(&bytes).len(), STANZAS);
        parse.throughput(Throughput::Bytes(bytes.len() as u64));
        parse.bench_with_input(BenchmarkId::new("bytes", name), &bytes, |b, bytes| {
            b.iter(|| black_box(parse_all(black_box(bytes))))
        });
        parse.bench_with_input(
            BenchmarkId::new("reference_rxml", name),
            &bytes,
            |b, bytes| b.iter(|| black_box(tokenize_all(black_box(bytes)))),
        );
        parse.bench_with_input(
            BenchmarkId::new("tokenizer_strict", name),
            &bytes,
            |b, bytes| b.iter(|| black_box(tokenize_all_strict(black_box(bytes)))),
        );
        parse.bench_with_input(
            BenchmarkId::new("reference_quick_xml", name),
            &bytes,
            |b, bytes| b.iter(|| black_box(tokenize_all_quick_xml(black_box(bytes)))),
        );
        parse.throughput(Throughput::Elements(STANZAS as u64));
        parse.bench_with_input(BenchmarkId::new("stanzas", name), &bytes, |b, bytes| {
            b.iter(|| black_box(parse_all(black_box(bytes))))
        });
        let reads: Vec<Vec<u8>> = std::iter::once(HEADER.as_bytes().to_vec())
            .chain((0..STANZAS).map(|i| make(i).into_bytes()))
            .collect();
        parse.bench_with_input(
            BenchmarkId::new("stanza_per_read", name),
            &reads,
            |b, reads| b.iter(|| black_box(parse_per_stanza(black_box(reads)))),
        );
    }
    parse.finish();

    let mut ser = c.benchmark_group("serialize");
    for (name, make) in kinds {
        let stanzas = parse_all(&stream_of(make));
        ser.throughput(Throughput::Elements(STANZAS as u64));
        ser.bench_with_input(BenchmarkId::new("stanzas", name), &stanzas, |b, stanzas| {
            let mut out = Vec::with_capacity(1 << 20);
            b.iter(|| {
                out.clear();
                for s in stanzas {
                    s.write_xml(&mut out, ns::CLIENT);
                }
                black_box(out.len())
            })
        });
    }
    ser.finish();
}

criterion_group!(parser, benches);
criterion_main!(parser);
