#![allow(dead_code)]
use strait_wire::{Event, Limits, StreamError, StreamErrorCondition, StreamParser};

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

/// Feeds `input` at once and collects events until the input is used up or an error.
pub fn parse_all(input: &[u8], limits: Limits) -> (Vec<Event>, Option<StreamError>) {
    let mut p = StreamParser::new(limits);
    p.feed(input);
    drain(&mut p)
}

pub fn drain(p: &mut StreamParser) -> (Vec<Event>, Option<StreamError>) {
    let mut events = Vec::new();
    loop {
        match p.next_event() {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}

/// Feeds `input` in chunks of `chunk` bytes, pulling events after each.
pub fn parse_chunked(
    input: &[u8],
    chunk: usize,
    limits: Limits,
) -> (Vec<Event>, Option<StreamError>) {
    let mut p = StreamParser::new(limits);
    let mut events = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        p.feed(piece);
        let (mut evs, err) = drain(&mut p);
        events.append(&mut evs);
        if err.is_some() {
            return (events, err);
        }
    }
    (events, None)
}

/// The error condition `input` produces (panics if none).
pub fn error_of(input: &[u8]) -> StreamError {
    error_with(input, Limits::unauthenticated())
}

pub fn show(input: &[u8]) -> String {
    let s = String::from_utf8_lossy(input);
    s.chars().take(300).collect()
}

pub fn error_with(input: &[u8], limits: Limits) -> StreamError {
    let (events, err) = parse_all(input, limits.clone());
    let err = err.unwrap_or_else(|| panic!("no error for {:?}; events {events:?}", show(input)));
    // Byte-by-byte feeding must fail the same way.
    let (_, err1) = parse_chunked(input, 1, limits);
    assert_eq!(
        err1.as_ref().map(|e| e.condition),
        Some(err.condition),
        "byte-wise differs for {:?}",
        show(input)
    );
    err
}

pub fn assert_condition(input: &[u8], condition: StreamErrorCondition) {
    let err = error_of(input);
    assert_eq!(err.condition, condition, "input {:?}: {err}", show(input));
}

pub fn stanzas(events: &[Event]) -> Vec<&strait_wire::Stanza> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Element(s) => Some(s),
            _ => None,
        })
        .collect()
}
