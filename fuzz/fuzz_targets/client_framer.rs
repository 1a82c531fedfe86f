//! Fuzz the client SDK's stream scanner (strait-client's `xml::Framer`, which also cuts the
//! load generator's streams) and its element accessors on what a server, or anyone in its
//! place, sends: no panic, the same frames whether the bytes arrive at once or in chunks (the
//! first byte picks the chunk size), and every accessor answers on every frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_client::xml::{Element, Frame, Framer, decode, escape};

/// The frames (kind and bytes) found when `data` arrives `chunk` bytes at a time, and whether
/// the scan ended in an error.
fn frames(data: &[u8], chunk: usize) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut f = Framer::new(1 << 16);
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        f.read_buf().extend_from_slice(piece);
        loop {
            match f.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::StreamClose)) => out.push((2, Vec::new())),
                Ok(Some(Frame::StreamOpen(r))) => out.push((0, f.element(&r).raw().to_vec())),
                Ok(Some(Frame::Element(r))) => {
                    let el = f.element(&r);
                    touch(&el);
                    out.push((1, el.raw().to_vec()));
                }
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// Every accessor, down the tree (bounded by the element's size).
fn touch(el: &Element<'_>) {
    let _ = (
        el.name(),
        el.local_name(),
        el.is_empty(),
        el.inner(),
        el.text(),
    );
    let _ = (
        el.attr("id"),
        el.attr("xmlns"),
        el.first_child_name(),
        el.error_condition(),
    );
    let _ = decode(el.raw());
    let _ = escape(&String::from_utf8_lossy(el.raw()));
    for c in el.children() {
        touch(&c);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = frames(rest, rest.len());
    let chunked = frames(rest, 1 + first as usize % 64);
    assert_eq!(whole, chunked, "chunking changed what was found");
    if let Some(el) = Element::parse(rest) {
        touch(&el);
    }
});
