//! Arbitrary bytes through our XML tokenizer (`token::Strict`) and rxml's (`token::Reference`),
//! as crates/strait-wire/tests/differential.rs does with generated input.
//!
//! Invariants: what one accepts to the end, the other accepts, with the same tokens
//! (adjacent texts merged); what one rejects, the other rejects. The first byte picks the
//! chunk size, so that splits land everywhere. Inputs with a CR are skipped: rxml does not
//! normalize CRs as XML 1.0 §2.11 says (see `for_reference` in the test).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_wire::token::{Reference, Stop, Strict, Token, Tokenize};

/// Tokens until the document ends (`Ok`) or fails (`Err`); `None` if it is unfinished.
fn run<T: Tokenize>(data: &[u8], chunk: usize) -> Option<Result<Vec<Token>, ()>> {
    let mut t = T::new(256);
    let mut tokens: Vec<Token> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
    for (i, c) in chunks.iter().enumerate() {
        pending.extend_from_slice(c);
        let last = i + 1 == chunks.len();
        let mut slice = &pending[..];
        loop {
            match t.next_token(&mut slice, last) {
                Ok(Some(Token::Text(s))) => match tokens.last_mut() {
                    Some(Token::Text(prev)) => prev.push_str(&s),
                    _ => tokens.push(Token::Text(s)),
                },
                Ok(Some(tok)) => tokens.push(tok),
                Ok(None) => return Some(Ok(tokens)),
                Err(Stop::NeedMoreData) => break,
                Err(Stop::Error(_)) => return Some(Err(())),
            }
        }
        let left = slice.len();
        pending.drain(..pending.len() - left);
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    if data.contains(&b'\r') || data.is_empty() {
        return;
    }
    let chunk = 1 + first as usize % 64;
    let ours = run::<Strict>(data, chunk);
    let theirs = run::<Reference>(data, data.len());
    match (ours, theirs) {
        (Some(Ok(a)), Some(Ok(b))) => assert_eq!(a, b),
        (Some(Err(())), Some(Err(()))) => {}
        (a, b) => assert_eq!(
            a.map(|r| r.is_ok()),
            b.map(|r| r.is_ok()),
            "one accepted what the other rejected"
        ),
    }
});
