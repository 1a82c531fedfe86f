//! Scanning many bytes at a time, for the runs of ordinary bytes that make up most of a
//! stream: the tokenizer's text and attribute values, and the escaper's output. Sixteen
//! bytes at a time with SIMD compares (the `wide` crate: safe vector types, SSE2 on
//! x86-64, NEON on aarch64, plain code elsewhere), then eight at a time in a register
//! (SWAR) for the tail. Written here rather than taken from `memchr`, which finds at most
//! three bytes and no byte ranges.

use wide::{CmpEq, CmpGt, i8x16};

/// How many leading bytes of `input` are none of `specials` and, when `PLAIN`, printable
/// ASCII (0x20 to 0x7F).
///
/// Sixteen bytes at a time: read as signed bytes, exactly 0x20 to 0x7F are greater than
/// 0x1F (0x80 and above are negative); each special is a byte-wise equality; the lowest bit
/// of the mask of bytes that stop the prefix is the first of them.
pub(crate) fn prefix_without<const N: usize, const PLAIN: bool>(
    input: &[u8],
    specials: &[u8; N],
) -> usize {
    if input.len() < 16 {
        // Most attribute values and names: no block to scan, no vectors to set up.
        return prefix_without_swar::<N, PLAIN>(input, specials);
    }
    let wanted = specials.map(|c| i8x16::splat(c as i8));
    let printable_above = i8x16::splat(0x1f);
    let mut done = 0;
    for block in input.chunks_exact(16) {
        let bytes: [u8; 16] = block.try_into().expect("16 bytes");
        let x = i8x16::new(bytes.map(|b| b as i8));
        let mut stop = if PLAIN {
            !x.cmp_gt(printable_above)
        } else {
            i8x16::splat(0)
        };
        for w in wanted {
            stop |= x.cmp_eq(w);
        }
        let mask = stop.move_mask();
        if mask != 0 {
            return done + mask.trailing_zeros() as usize;
        }
        done += 16;
    }
    done + prefix_without_swar::<N, PLAIN>(&input[done..], specials)
}

/// [`prefix_without`] eight bytes at a time, for what is left after the blocks of sixteen.
///
/// Per 8-byte word `x` (the "bit twiddling" zero-byte tests): `x & 0x80…` flags bytes from
/// 0x80; `(x - 0x20…) & !x & 0x80…` flags bytes below 0x20; a byte equal to `c` is a zero
/// byte of `x ^ c…`, flagged by `(y - 0x01…) & !y & 0x80…`. A subtraction's borrow can flag
/// bytes above a flagged one, never below it, so the lowest flag is the first byte that
/// stops the prefix.
fn prefix_without_swar<const N: usize, const PLAIN: bool>(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definition.
    fn slow<const N: usize, const PLAIN: bool>(input: &[u8], specials: &[u8; N]) -> usize {
        input
            .iter()
            .position(|b| (PLAIN && !(0x20..0x80).contains(b)) || specials.contains(b))
            .unwrap_or(input.len())
    }

    #[test]
    fn every_stopping_byte_at_every_offset_of_every_length() {
        // Lengths across the 16- and 8-byte block edges; each byte value placed at each
        // offset of a run of plain bytes, for both kinds of scan.
        for len in 0..=40 {
            let base: Vec<u8> = (0..len).map(|i| b'A' + (i % 26) as u8).collect();
            assert_eq!(prefix_without::<3, true>(&base, b"<&]"), len);
            assert_eq!(prefix_without::<4, false>(&base, b"&<>\r"), len);
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = base.clone();
                    v[at] = b;
                    assert_eq!(
                        prefix_without::<3, true>(&v, b"<&]"),
                        slow::<3, true>(&v, b"<&]"),
                        "{v:?}"
                    );
                    assert_eq!(
                        prefix_without::<8, false>(&v, b"&<>\r'\"\t\n"),
                        slow::<8, false>(&v, b"&<>\r'\"\t\n"),
                        "{v:?}"
                    );
                }
            }
        }
    }
}
