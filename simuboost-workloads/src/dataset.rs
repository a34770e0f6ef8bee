//! Deterministic input data sets for the disk-based workloads.
//!
//! The host tooling writes these to disk images and the host benchmark generates them in memory;
//! both call the same pure functions of `(seed, absolute byte offset)`, so a data set can be
//! generated in pieces of any size, at any offset, in any order, and is always the same bytes.
//!
//! * [`fill_compress_input`]: English-like text for `compress`. Words come from a vocabulary of
//!   4096 generated words with Zipf(1)-like popularity; three words in four are one of the
//!   previous word's four usual successors (so phrases repeat, as in natural text), with
//!   punctuation, capitalised sentence starts, line breaks and occasional numbers. DEFLATE level 6
//!   on 64 KiB chunks compresses it about 3×.
//! * [`fill_sort_input`]: [`SORT_RECORD_SIZE`]-byte records for `sort`; see [`sort_record`].
//!
//! Generation works in independent 4096-byte blocks (block `i` covers bytes
//! `[4096 i, 4096 (i + 1))`), so offsets that are multiples of 4096 are fastest, but any offset
//! works.

use crate::rng::{log_uniform, mix2, mix64, Rng};

/// Size of one `sort` record: the sort key is the little-endian `u64` in bytes 0..8.
pub const SORT_RECORD_SIZE: usize = 64;

/// Sixteenths of words that are a usual successor of the previous word.
const SUCCESSOR_SIXTEENTHS: u64 = 12;

/// The unit in which data sets are generated independently.
const GEN_BLOCK: usize = 4096;

/// log2 of the text vocabulary size.
const VOCAB_BITS: u32 = 12;

/// Fills `buf` with the `compress` data set's bytes `[offset, offset + buf.len())`.
pub fn fill_compress_input(seed: u64, offset: u64, buf: &mut [u8]) {
    fill_blocks(seed, offset, buf, text_block);
}

/// Fills `buf` with the `sort` data set's bytes `[offset, offset + buf.len())`: records
/// `offset / 64, ...` as given by [`sort_record`].
pub fn fill_sort_input(seed: u64, offset: u64, buf: &mut [u8]) {
    fill_blocks(seed, offset, buf, records_block);
}

/// Record `index` of the `sort` data set for `seed`: 8 little-endian `u64` words
/// `[key, index, p0, .., p5]` where `key` is a bijective hash of `index` (so keys are distinct and
/// uniformly spread) and `p0..p5` are payload words derived from the key.
pub fn sort_record(seed: u64, index: u64) -> [u64; 8] {
    let key = mix64(index ^ mix64(seed ^ 0x5eed_5047));
    let mut rec = [0u64; 8];
    rec[0] = key;
    rec[1] = index;
    for (j, w) in rec[2..].iter_mut().enumerate() {
        *w = mix64(key.wrapping_add(j as u64 + 1));
    }
    rec
}

/// Calls `gen(seed, block_index, block)` for every generation block overlapping the range, going
/// through a stack buffer for partial blocks.
fn fill_blocks(seed: u64, offset: u64, buf: &mut [u8], gen: fn(u64, u64, &mut [u8; GEN_BLOCK])) {
    let mut pos = 0usize;
    while pos < buf.len() {
        let abs = offset + pos as u64;
        let block = abs / GEN_BLOCK as u64;
        let within = (abs % GEN_BLOCK as u64) as usize;
        let n = (GEN_BLOCK - within).min(buf.len() - pos);
        if n == GEN_BLOCK {
            let dst: &mut [u8; GEN_BLOCK] = match (&mut buf[pos..pos + GEN_BLOCK]).try_into() {
                Ok(d) => d,
                Err(_) => unreachable!("slice has exactly GEN_BLOCK bytes"),
            };
            gen(seed, block, dst);
        } else {
            let mut tmp = [0u8; GEN_BLOCK];
            gen(seed, block, &mut tmp);
            buf[pos..pos + n].copy_from_slice(&tmp[within..within + n]);
        }
        pos += n;
    }
}

fn records_block(seed: u64, block: u64, out: &mut [u8; GEN_BLOCK]) {
    let per_block = (GEN_BLOCK / SORT_RECORD_SIZE) as u64;
    for (i, rec) in out.chunks_exact_mut(SORT_RECORD_SIZE).enumerate() {
        let words = sort_record(seed, block * per_block + i as u64);
        for (dst, w) in rec.chunks_exact_mut(8).zip(words) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Letters by rough English frequency (32 entries so 5 random bits pick one).
const LETTERS: &[u8; 32] = b"eeettaaoinshrdlcumwfgypbvkjxqzoa";

/// Spells vocabulary word `w` into `out`, returning its length (1..=12). Popular (low-index)
/// words are short, like in natural language.
fn spell(vocab_seed: u64, w: u64, out: &mut [u8; 16]) -> usize {
    let h = mix64(vocab_seed ^ w);
    let rank_bits = 64 - (w + 1).leading_zeros() as usize; // 1..=VOCAB_BITS+1
    let len = (1 + rank_bits / 2 + (h & 3) as usize).min(12);
    let mut bits = h >> 2;
    for b in out.iter_mut().take(len) {
        *b = LETTERS[(bits & 31) as usize];
        bits >>= 5;
    }
    len
}

/// Generates one 4096-byte block of text.
fn text_block(seed: u64, block: u64, out: &mut [u8; GEN_BLOCK]) {
    let vocab_seed = mix64(seed ^ 0x7e47_0000_0000_0001);
    let mut rng = Rng::new(mix2(seed, block));
    let mut pos = 0usize;
    let mut capital = true;
    let mut line = 0usize;
    let mut word = [0u8; 16];
    let mut prev = 0u64;
    while pos < GEN_BLOCK {
        let r = rng.next_u64();
        // Roughly one token in 128 is a number of 1..=6 digits (poorly compressible).
        let len = if r & 0x7f == 0 {
            let digits = 1 + ((r >> 6) % 6) as usize;
            let mut v = r >> 12;
            for d in word.iter_mut().take(digits) {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
            digits
        } else {
            // Words often follow their predecessor's usual successors (one of four, fixed per
            // word), which repeats phrases the way natural text does and gives LZ77 long matches.
            let w = if (r >> 8) & 0xf < SUCCESSOR_SIXTEENTHS {
                log_uniform(mix2(vocab_seed ^ prev, (r >> 12) & 3), VOCAB_BITS)
            } else {
                log_uniform(r >> 16, VOCAB_BITS)
            };
            prev = w;
            spell(vocab_seed, w, &mut word)
        };
        if capital {
            word[0] = word[0].to_ascii_uppercase();
            capital = false;
        }
        let n = len.min(GEN_BLOCK - pos);
        out[pos..pos + n].copy_from_slice(&word[..n]);
        pos += n;
        line += len + 1;
        // Separator: mostly a space; sometimes a comma or a sentence end; break lines near 72.
        let sep: &[u8] = match (r >> 56) & 31 {
            0 | 1 => {
                capital = true;
                b"."
            }
            2 | 3 => b",",
            _ => b"",
        };
        let mut push = |b: u8, pos: &mut usize| {
            if *pos < GEN_BLOCK {
                out[*pos] = b;
                *pos += 1;
            }
        };
        for &b in sep {
            push(b, &mut pos);
        }
        if line >= 64 + ((r >> 48) & 15) as usize {
            push(b'\n', &mut pos);
            line = 0;
        } else {
            push(b' ', &mut pos);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec;

    #[test]
    fn pieces_equal_whole() {
        for fill in [fill_compress_input, fill_sort_input] {
            let mut whole = vec![0u8; 5 * GEN_BLOCK];
            fill(9, 3 * GEN_BLOCK as u64, &mut whole);
            let mut pieces = vec![0u8; whole.len()];
            let cuts = [0usize, 1, 100, 4096, 4097, 9000, 12288, 20480];
            for w in cuts.windows(2) {
                fill(
                    9,
                    3 * GEN_BLOCK as u64 + w[0] as u64,
                    &mut pieces[w[0]..w[1]],
                );
            }
            assert_eq!(whole, pieces);
            let mut other = vec![0u8; whole.len()];
            fill(10, 3 * GEN_BLOCK as u64, &mut other);
            assert_ne!(whole, other);
        }
    }

    #[test]
    fn sort_records_layout() {
        let mut buf = vec![0u8; 2 * GEN_BLOCK];
        fill_sort_input(5, GEN_BLOCK as u64, &mut buf);
        for (i, rec) in buf.chunks_exact(SORT_RECORD_SIZE).enumerate() {
            let idx = 64 + i as u64;
            let want = sort_record(5, idx);
            for (j, w) in want.iter().enumerate() {
                let got = u64::from_le_bytes(rec[8 * j..8 * j + 8].try_into().unwrap());
                assert_eq!(got, *w);
            }
            assert_eq!(want[1], idx);
        }
    }

    #[test]
    fn text_compresses_moderately() {
        let mut buf = vec![0u8; 256 * 1024];
        fill_compress_input(1, 0, &mut buf);
        assert!(buf.iter().all(|b| b.is_ascii()));
        let mut total = 0;
        for chunk in buf.chunks(64 * 1024) {
            total += miniz_oxide::deflate::compress_to_vec_zlib(chunk, 6).len();
        }
        let ratio = buf.len() as f64 / total as f64;
        assert!((2.0..4.0).contains(&ratio), "compression ratio {ratio}");
    }
}
