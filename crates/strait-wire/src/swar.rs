//! Scanning eight bytes at a time (SWAR: SIMD within a register), for the runs of ordinary
//! bytes that make up most of a stream: the tokenizer's text and attribute values, and the
//! escaper's output. Written here rather than taken from `memchr`, which finds at most three
//! bytes and no byte ranges.

/// How many leading bytes of `input` are none of `specials` and, when `PLAIN`, printable
/// ASCII (0x20 to 0x7F).
///
/// Per 8-byte word `x` (the "bit twiddling" zero-byte tests): `x & 0x80…` flags bytes from
/// 0x80; `(x - 0x20…) & !x & 0x80…` flags bytes below 0x20; a byte equal to `c` is a zero
/// byte of `x ^ c…`, flagged by `(y - 0x01…) & !y & 0x80…`. A subtraction's borrow can flag
/// bytes above a flagged one, never below it, so the lowest flag is the first byte that
/// stops the prefix.
pub(crate) fn prefix_without<const N: usize, const PLAIN: bool>(
    input: &[u8],
    specials: &[u8; N],
) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |y: u64| y.wrapping_sub(ONES) & !y & HIGH;
    let mut done = 0;
    for word in input.chunks_exact(8) {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let mut flags = if PLAIN {
            (x & HIGH) | (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
        } else {
            0
        };
        for &c in specials {
            flags |= zero_byte(x ^ (ONES * u64::from(c)));
        }
        if flags != 0 {
            return done + (flags.trailing_zeros() / 8) as usize;
        }
        done += 8;
    }
    done + input[done..]
        .iter()
        .position(|b| (PLAIN && !(0x20..0x80).contains(b)) || specials.contains(b))
        .unwrap_or(input.len() - done)
}
