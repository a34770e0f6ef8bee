//! `stream`: repeated sequential passes over all memory (the STREAM benchmark's kernels), the
//! densest possible working set: every page is read and written within a few passes.
//!
//! # What it models
//! The arena (from its first 4 KiB-aligned byte, a whole number of pages, so that the layout
//! does not depend on its alignment) holds three equal arrays `a`, `b`, `c` of `u64`. Three
//! initialization passes write them in turn; then passes cycle through STREAM's four kernels, with
//! wrapping integer arithmetic (so results are exact and deterministic) and `q = 3`:
//! `copy: c = a`, `scale: b = q·c`, `add: c = a + b`, `triad: a = b + q·c`.
//!
//! # Units
//! Passes are processed in segments of the destination array: up to 4 MiB for the kernels and
//! 256 KiB for the initialization passes (whose first touches of memory can be slow); the last
//! segment of a pass may be shorter. `yield_now` is called after every segment (about
//! 0.2–1 ms), and one **unit = [`UNIT_BYTES`] (4 MiB) of destination written** (about
//! 0.5–1.5 ms; units are counted at segment ends, carrying the remainder over).
//!
//! The checksum folds the wrapping sum of every segment's written words.

use crate::rng::mix64;
use crate::util::{cast_slice_mut, Bytes, Ctl, Flow};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: 1 MiB.
pub const MIN_ARENA: u64 = 1 << 20;
/// Bytes written per unit.
pub const UNIT_BYTES: u64 = 4 << 20;
/// Destination words per segment of the kernels (4 MiB: about a millisecond of work).
const SEGMENT_WORDS: usize = 1 << 19;
/// Destination words per segment of the initialization passes (256 KiB).
const INIT_SEGMENT_WORDS: usize = 1 << 15;
/// The scalar of `scale` and `triad`.
const Q: u64 = 3;

/// Runs the workload; see the module documentation.
pub fn run(
    cfg: &RunConfig,
    p: &mut dyn Platform,
    arena: &mut [u8],
) -> Result<Outcome, WorkloadError> {
    let mut ctl = Ctl::new(cfg, p);
    let flow = body(cfg, &mut ctl, arena);
    ctl.finish(flow)
}

fn body(cfg: &RunConfig, ctl: &mut Ctl, arena: &mut [u8]) -> Flow {
    let words: &mut [u64] = cast_slice_mut(crate::util::usable(arena));
    let w = words.len() / 3 / 8 * 8;
    let (a, rest) = words.split_at_mut(w);
    let (b, rest) = rest.split_at_mut(w);
    let c = &mut rest[..w];
    ctl.say(format_args!(
        "stream: 3 arrays of {} words ({} each), 4 MiB written per unit\n",
        w,
        Bytes(8 * w as u64)
    ));
    let s = mix64(cfg.seed);
    let mut written = 0u64;
    let mut pass = 0u64;
    loop {
        let seg = if pass < 3 {
            INIT_SEGMENT_WORDS
        } else {
            SEGMENT_WORDS
        };
        for lo in (0..w).step_by(seg) {
            let hi = (lo + seg).min(w);
            let mut sum = 0u64;
            match pass {
                // Initialization, one array per pass, in short segments (first touches are slow).
                0..=2 => {
                    let (d, salt) = match pass {
                        0 => (&mut a[lo..hi], s),
                        1 => (&mut b[lo..hi], s >> 1),
                        _ => (&mut c[lo..hi], !s),
                    };
                    for (i, d) in (lo as u64..).zip(d.iter_mut()) {
                        *d = salt ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        sum = sum.wrapping_add(*d);
                    }
                }
                _ => match (pass - 3) % 4 {
                    0 => {
                        for (d, &x) in c[lo..hi].iter_mut().zip(&a[lo..hi]) {
                            *d = x;
                            sum = sum.wrapping_add(x);
                        }
                    }
                    1 => {
                        for (d, &x) in b[lo..hi].iter_mut().zip(&c[lo..hi]) {
                            *d = x.wrapping_mul(Q);
                            sum = sum.wrapping_add(*d);
                        }
                    }
                    2 => {
                        for ((d, &x), &y) in c[lo..hi].iter_mut().zip(&a[lo..hi]).zip(&b[lo..hi]) {
                            *d = x.wrapping_add(y);
                            sum = sum.wrapping_add(*d);
                        }
                    }
                    _ => {
                        for ((d, &x), &y) in a[lo..hi].iter_mut().zip(&b[lo..hi]).zip(&c[lo..hi]) {
                            *d = x.wrapping_add(y.wrapping_mul(Q));
                            sum = sum.wrapping_add(*d);
                        }
                    }
                },
            }
            ctl.sum.fold(sum);
            written += 8 * (hi - lo) as u64;
            ctl.yield_now()?;
            while written >= UNIT_BYTES {
                written -= UNIT_BYTES;
                ctl.unit_done()?;
            }
        }
        pass += 1;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::util::testing::TestPlatform;
    use simuboost_abi::WorkloadId;
    use std::vec;
    use std::vec::Vec;

    fn cfg(seed: u64, units: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Stream,
            seed,
            work_units: units,
            disk_blocks: 0,
            disk_data_bytes: 0,
        }
    }

    /// Runs on an arena of `len` bytes starting 8 bytes past a 64-byte boundary, so the array
    /// sizes do not depend on the allocator.
    fn run_skewed(seed: u64, units: u64, len: usize, p: &mut TestPlatform) -> (Outcome, Vec<u8>) {
        let mut backing = vec![0xeeu8; len + 128];
        let start = crate::util::align_offset(backing.as_ptr(), 64) + 8;
        let arena = &mut backing[start..start + len];
        let out = crate::run(&cfg(seed, units), p, arena).expect("stream runs");
        (out, arena.to_vec())
    }

    #[test]
    fn deterministic_and_touches_everything() {
        let mut p = TestPlatform::new(0);
        // 2 MiB arrays: 6 MiB of initialization (24 segments), then one 2 MiB segment per
        // kernel pass (segments are at most an array long); alignment makes the arrays a little
        // shorter than 2 MiB, so 3 units (12 MiB) take 4 of them.
        let (a, arena) = run_skewed(1, 3, 6 << 20, &mut p);
        assert_eq!(a.units_done, 3);
        assert_eq!(p.yields, 24 + 4);
        // The three initialization passes wrote all three arrays.
        assert!(arena.chunks(4096).all(|pg| pg.iter().any(|&b| b != 0xee)));
        let mut p = TestPlatform::new(0);
        let (b, _) = run_skewed(1, 3, 6 << 20, &mut p);
        assert_eq!(a, b);
        let mut p = TestPlatform::new(0);
        let (c, _) = run_skewed(2, 3, 6 << 20, &mut p);
        assert_ne!(a.checksum, c.checksum);
    }

    #[test]
    fn stops_when_asked() {
        let mut p = TestPlatform::new(0);
        // 1 MiB arrays (a little less after alignment): 12 initialization segments of
        // 256 KiB, then one (array-long) segment per kernel pass; 20 yields are 11 MiB
        // written: 2 units.
        p.stop_at_yield = Some(20);
        let (out, _) = run_skewed(1, 0, 3 << 20, &mut p);
        assert_eq!(p.yields, 20);
        assert_eq!(out.units_done, 2);
    }
}
