//! `idle`: a machine that mostly waits (a daemon polling a clock), touching almost no memory.
//!
//! # What it models
//! The workload polls: `yield_now`, read the clock, store the poll count into one word of the
//! arena (its first 8-byte-aligned word, with a volatile write), until the clock has advanced by
//! 1 ms since the unit started. Nothing else in the arena is touched, so every interval dirties
//! one page.
//!
//! # Units
//! One **unit = 1 ms of clock time waited** (`clock_ns` advancing by 1 000 000). `yield_now` is
//! called on every poll. The checksum folds only the unit numbers (the number of polls depends on
//! the clock), so it depends on the seed and the unit count alone.

use crate::util::{align_start, cast_slice_mut, Ctl, Flow};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: one page.
pub const MIN_ARENA: u64 = 4096;
/// Clock time per unit.
pub const UNIT_NS: u64 = 1_000_000;

/// Runs the workload; see the module documentation.
pub fn run(
    cfg: &RunConfig,
    p: &mut dyn Platform,
    arena: &mut [u8],
) -> Result<Outcome, WorkloadError> {
    let mut ctl = Ctl::new(cfg, p);
    let flow = body(&mut ctl, arena);
    ctl.finish(flow)
}

fn body(ctl: &mut Ctl, arena: &mut [u8]) -> Flow {
    let counter: &mut [u64] = cast_slice_mut(align_start(arena, 8));
    let counter: *mut u64 = match counter.first_mut() {
        Some(c) => c,
        None => {
            return Err(WorkloadError::ArenaTooSmall {
                needed: MIN_ARENA,
                available: arena.len() as u64,
            }
            .into())
        }
    };
    ctl.say(format_args!("idle: polling the clock, 1 ms per unit\n"));
    let mut polls = 0u64;
    let mut unit = 0u64;
    loop {
        let start = ctl.p.clock_ns();
        loop {
            ctl.yield_now()?;
            polls += 1;
            // SAFETY: `counter` points to an aligned u64 inside the arena we borrow exclusively.
            unsafe { core::ptr::write_volatile(counter, polls) };
            if ctl.p.clock_ns().wrapping_sub(start) >= UNIT_NS {
                break;
            }
        }
        ctl.sum.fold(unit);
        unit += 1;
        ctl.unit_done()?;
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
            workload: WorkloadId::Idle,
            seed,
            work_units: units,
            disk_blocks: 0,
            disk_data_bytes: 0,
        }
    }

    #[test]
    fn waits_and_touches_one_word() {
        let mut p = TestPlatform::new(0);
        let mut arena = vec![0u8; 8192];
        let a = crate::run(&cfg(1, 4), &mut p, &mut arena).expect("idle runs");
        assert_eq!(a.units_done, 4);
        // The test clock advances 10 µs per read, one read per poll: 100 polls per unit.
        assert_eq!(p.yields, 400);
        assert!(p.clock >= 4 * UNIT_NS);
        let touched: usize = arena.iter().filter(|&&b| b != 0).count();
        assert!((1..=8).contains(&touched));
        let mut p = TestPlatform::new(0);
        let b = crate::run(&cfg(1, 4), &mut p, &mut vec![0u8; 8192]).expect("idle runs");
        assert_eq!(a, b);
        let mut p = TestPlatform::new(0);
        let c = crate::run(&cfg(2, 4), &mut p, &mut vec![0u8; 8192]).expect("idle runs");
        assert_ne!(a.checksum, c.checksum);
    }

    #[test]
    fn stops_when_asked() {
        let mut p = TestPlatform::new(0);
        p.stop_at_yield = Some(250);
        let out = crate::run(&cfg(1, 0), &mut p, &mut vec![0u8; 4096]).expect("idle runs");
        assert_eq!(out.units_done, 2);
        assert_eq!(p.yields, 250);
    }
}
