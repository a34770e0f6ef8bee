//! `stream`: repeated sequential passes over all memory (the STREAM benchmark's kernels), the
//! densest possible working set: every page is read and written within a few passes.
//!
//! # What it models
//! The arena (aligned to 64 bytes) holds three equal arrays `a`, `b`, `c` of `u64`. An
//! initialization pass writes all three; then passes cycle through STREAM's four kernels, with
//! wrapping integer arithmetic (so results are exact and deterministic) and `q = 3`:
//! `copy: c = a`, `scale: b = q·c`, `add: c = a + b`, `triad: a = b + q·c`.
//!
//! # Units
//! Passes are processed in segments of up to 1 MiB of the destination array (131072 words; the
//! last segment of a pass may be shorter); `yield_now` is called after every segment (about
//! 0.1–0.3 ms), and one **unit = [`SEGMENTS_PER_UNIT`] segments** (about 4 MiB written, 0.5–1 ms).
//!
//! The checksum folds the wrapping sum of every segment's written words.

use crate::rng::mix64;
use crate::util::{align_start, cast_slice_mut, Bytes, Ctl, Flow};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: 1 MiB.
pub const MIN_ARENA: u64 = 1 << 20;
/// Segments per unit.
pub const SEGMENTS_PER_UNIT: u64 = 4;
/// Destination words per segment (1 MiB).
const SEGMENT_WORDS: usize = 1 << 17;
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
    let words: &mut [u64] = cast_slice_mut(align_start(arena, 64));
    let w = words.len() / 3 / 8 * 8;
    let (a, rest) = words.split_at_mut(w);
    let (b, rest) = rest.split_at_mut(w);
    let c = &mut rest[..w];
    ctl.say(format_args!(
        "stream: 3 arrays of {} words ({} each), 1 MiB segments\n",
        w,
        Bytes(8 * w as u64)
    ));
    let s = mix64(cfg.seed);
    let mut in_unit = 0u64;
    let mut pass = 0u64;
    loop {
        for lo in (0..w).step_by(SEGMENT_WORDS) {
            let hi = (lo + SEGMENT_WORDS).min(w);
            let mut sum = 0u64;
            match pass {
                0 => {
                    for i in lo..hi {
                        let x = i as u64;
                        a[i] = s ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        b[i] = (s >> 1).wrapping_add(x);
                        c[i] = x;
                        sum = sum.wrapping_add(a[i]);
                    }
                }
                _ => match pass % 4 {
                    1 => {
                        for (d, &x) in c[lo..hi].iter_mut().zip(&a[lo..hi]) {
                            *d = x;
                            sum = sum.wrapping_add(x);
                        }
                    }
                    2 => {
                        for (d, &x) in b[lo..hi].iter_mut().zip(&c[lo..hi]) {
                            *d = x.wrapping_mul(Q);
                            sum = sum.wrapping_add(*d);
                        }
                    }
                    3 => {
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
            in_unit += 1;
            ctl.yield_now()?;
            if in_unit == SEGMENTS_PER_UNIT {
                in_unit = 0;
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

    fn cfg(seed: u64, units: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Stream,
            seed,
            work_units: units,
            disk_blocks: 0,
            disk_data_bytes: 0,
        }
    }

    #[test]
    fn deterministic_and_touches_everything() {
        let mut p = TestPlatform::new(0);
        let mut arena = vec![0xeeu8; 6 << 20];
        // 2 MiB arrays: 2 segments per pass, so 5 passes are 10 segments; 3 units = 12.
        let a = crate::run(&cfg(1, 3), &mut p, &mut arena).expect("stream runs");
        assert_eq!(a.units_done, 3);
        assert_eq!(p.yields, 12);
        // Six passes (init, copy, scale, add, triad, copy) wrote all three arrays.
        assert!(arena.chunks(4096).all(|pg| pg.iter().any(|&b| b != 0xee)));
        let mut p = TestPlatform::new(0);
        let b = crate::run(&cfg(1, 3), &mut p, &mut vec![0u8; 6 << 20]).expect("stream runs");
        assert_eq!(a, b);
        let mut p = TestPlatform::new(0);
        let c = crate::run(&cfg(2, 3), &mut p, &mut vec![0u8; 6 << 20]).expect("stream runs");
        assert_ne!(a.checksum, c.checksum);
    }

    #[test]
    fn stops_when_asked() {
        let mut p = TestPlatform::new(0);
        p.stop_at_yield = Some(9);
        let out = crate::run(&cfg(1, 0), &mut p, &mut vec![0u8; 3 << 20]).expect("stream runs");
        assert_eq!(p.yields, 9);
        assert_eq!(out.units_done, 2);
    }
}
