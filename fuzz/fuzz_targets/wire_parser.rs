//! Arbitrary bytes, fed in arbitrary chunks, through the stream parser.
//!
//! Invariants:
//! - feeding in chunks gives the same events (and error condition) as
//!   feeding everything at once;
//! - every stanza, serialized canonically inside a fresh stream, parses back
//!   to exactly one identical stanza, and its serialization is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_wire::{Event, Limits, Stanza, StreamErrorCondition, StreamParser};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

fn run(chunks: &[&[u8]], limits: &Limits) -> (Vec<Event>, Option<StreamErrorCondition>) {
    let mut parser = StreamParser::new(limits.clone());
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e.condition)),
            }
        }
    }
    (events, None)
}

fn check_round_trip(stanza: &Stanza) {
    let xml = stanza.to_xml("jabber:client");
    let mut input = HEADER.to_vec();
    input.extend_from_slice(xml.as_bytes());
    let (events, err) = run(&[&input], &Limits::authenticated());
    assert_eq!(err, None, "re-parse failed: {xml}");
    let again: Vec<&Stanza> = events
        .iter()
        .filter_map(|e| match e {
            Event::Element(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![stanza], "round trip differs: {xml}");
    assert_eq!(again[0].to_xml("jabber:client"), xml);
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    // Half the inputs get a valid header so the fuzzer reaches stanzas fast.
    let mut input = Vec::with_capacity(rest.len() + HEADER.len());
    if seed & 1 == 1 {
        input.extend_from_slice(HEADER);
    }
    input.extend_from_slice(rest);
    let limits = if seed & 2 == 2 {
        Limits::authenticated()
    } else {
        Limits {
            max_stanza_bytes: 512,
            max_depth: 8,
            max_attributes: 8,
        }
    };

    let (whole, whole_err) = run(&[&input], &limits);

    // Chunk sizes from the seed: 1..=16 bytes, varying along the input.
    let mut chunks = Vec::new();
    let mut pos = 0;
    let mut state = u32::from(seed) | 0x100;
    while pos < input.len() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = (1 + (state >> 16) % 16) as usize;
        let end = (pos + len).min(input.len());
        chunks.push(&input[pos..end]);
        pos = end;
    }
    let (chunked, chunked_err) = run(&chunks, &limits);
    assert_eq!(whole, chunked, "chunked feeding changed the events");
    assert_eq!(whole_err, chunked_err, "chunked feeding changed the error");

    for ev in &whole {
        if let Event::Element(stanza) = ev {
            check_round_trip(stanza);
        }
    }
});
