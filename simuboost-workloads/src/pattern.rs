//! `pattern`: touches an exact, seeded, predictable set of pages per step (for testing the
//! dirty-page tracking and checkpoint/replay machinery).
//!
//! # Pages
//! The arena is viewed as 4096-byte pages counted from its first 4096-aligned address (in the
//! guest the arena is page aligned, so this is its start; on the host up to 4095 leading bytes
//! are skipped). `arena_pages = floor((len - 4095) / 4096)`: the number of whole pages that
//! follow the first aligned address whatever the arena's alignment, so that guest and host runs
//! agree (for a page-aligned arena whose length is a multiple of 4096, its last page is never
//! touched). See [`aligned_pages`].
//!
//! # Steps
//! Step `s` (s = 0, 1, 2, ...) takes the pages of [`step_pages`]`(seed, s, arena_pages)`:
//! [`READS_PER_STEP`] pages to read and [`WRITES_PER_STEP`] pages to write, all distinct within
//! the step, drawn uniformly by a generator seeded from `(seed, s)`. The step then
//! 1. reads, in order, the `u64` at byte offset 0 of each read page (volatile) and folds it into
//!    the checksum (so the checksum also depends on the arena's initial contents),
//! 2. writes, in order, [`write_value`]`(seed, s, page)` as a little-endian `u64` at byte offset 0
//!    of each write page (volatile),
//! 3. calls `yield_now` once.
//!
//! Nothing else in the arena is read or written. After a run of `units_done` steps, the pages
//! whose contents changed are exactly the union of the write pages of steps `0..units_done`
//! (unless a written value happened to equal the old contents), and each holds the value of the
//! last step that wrote it.
//!
//! # Units
//! One **unit = one step**; a step's work is tiny, so it yields once per step (every few µs).
//! A step that was performed is always counted, even if its `yield_now` asks to stop.

use crate::rng::{mix2, mix64, Rng};
use crate::util::{align_offset, cast_slice_mut, usable_len, Ctl, Flow};
use crate::{Outcome, Platform, RunConfig, WorkloadError};

/// Smallest arena: 256 KiB (63 pages used; at least 32 are needed).
pub const MIN_ARENA: u64 = 256 << 10;
/// Pages read per step.
pub const READS_PER_STEP: usize = 16;
/// Pages written per step.
pub const WRITES_PER_STEP: usize = 16;
/// Page size of the pattern.
pub const PAGE_BYTES: usize = 4096;

/// The pages one step touches (indexes relative to the first 4096-aligned arena address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPages {
    /// Pages read, in order.
    pub reads: [u64; READS_PER_STEP],
    /// Pages written, in order.
    pub writes: [u64; WRITES_PER_STEP],
}

/// For an arena of `len` bytes at address `base`: the byte offset of its first 4096-aligned
/// address, and the number of pages the workload uses from there, `floor((len - 4095) / 4096)`
/// (independent of `base`).
pub fn aligned_pages(base: usize, len: usize) -> (usize, u64) {
    let off = align_offset(base as *const u8, PAGE_BYTES);
    (off, (usable_len(len) / PAGE_BYTES) as u64)
}

/// The pages step `step` touches in an arena of `arena_pages` pages: distinct, uniformly drawn.
///
/// # Panics
/// If `arena_pages < READS_PER_STEP + WRITES_PER_STEP` (the pages could not be distinct).
pub fn step_pages(seed: u64, step: u64, arena_pages: u64) -> StepPages {
    const N: usize = READS_PER_STEP + WRITES_PER_STEP;
    assert!(
        arena_pages >= N as u64,
        "pattern needs at least {N} pages, got {arena_pages}"
    );
    let mut rng = Rng::derive(mix2(seed, 0x0070_6174_7465_726e), step);
    let mut all = [0u64; N];
    let mut n = 0;
    while n < N {
        let page = rng.below(arena_pages);
        if !all[..n].contains(&page) {
            all[n] = page;
            n += 1;
        }
    }
    let mut sp = StepPages {
        reads: [0; READS_PER_STEP],
        writes: [0; WRITES_PER_STEP],
    };
    sp.reads.copy_from_slice(&all[..READS_PER_STEP]);
    sp.writes.copy_from_slice(&all[READS_PER_STEP..]);
    sp
}

/// The value step `step` writes at the start of write page `page`.
pub fn write_value(seed: u64, step: u64, page: u64) -> u64 {
    mix64(mix2(seed, step) ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

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
    let (off, pages) = aligned_pages(arena.as_ptr() as usize, arena.len());
    if pages < (READS_PER_STEP + WRITES_PER_STEP) as u64 {
        return Err(WorkloadError::ArenaTooSmall {
            needed: MIN_ARENA,
            available: arena.len() as u64,
        }
        .into());
    }
    let len = pages as usize * PAGE_BYTES;
    let words: &mut [u64] = cast_slice_mut(&mut arena[off..off + len]);
    const WORDS_PER_PAGE: usize = PAGE_BYTES / 8;
    ctl.say(format_args!(
        "pattern: {} pages, {} reads and {} writes per step\n",
        pages, READS_PER_STEP, WRITES_PER_STEP
    ));
    let mut step = 0u64;
    loop {
        let sp = step_pages(cfg.seed, step, pages);
        for &pg in &sp.reads {
            // SAFETY: the reference is valid and aligned; volatile so the read really happens.
            let v = unsafe { core::ptr::read_volatile(&words[pg as usize * WORDS_PER_PAGE]) };
            ctl.sum.fold(v);
        }
        for &pg in &sp.writes {
            let v = write_value(cfg.seed, step, pg).to_le();
            // SAFETY: as above; volatile so the write really happens, exactly once.
            unsafe { core::ptr::write_volatile(&mut words[pg as usize * WORDS_PER_PAGE], v) };
        }
        step += 1;
        // Count the step before yielding: its pages have been touched either way.
        let counted = ctl.unit_done();
        ctl.yield_now()?;
        counted?;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::util::testing::{Arena, TestPlatform};
    use simuboost_abi::WorkloadId;
    use std::collections::BTreeMap;
    use std::vec;
    use std::vec::Vec;

    fn cfg(seed: u64, units: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Pattern,
            seed,
            work_units: units,
            disk_blocks: 0,
            disk_data_bytes: 0,
        }
    }

    #[test]
    fn step_pages_are_distinct_and_in_range() {
        for step in 0..200 {
            let sp = step_pages(5, step, 40);
            let mut all: Vec<u64> = sp.reads.iter().chain(&sp.writes).copied().collect();
            assert!(all.iter().all(|&p| p < 40));
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), READS_PER_STEP + WRITES_PER_STEP);
        }
        assert_ne!(step_pages(5, 0, 1000), step_pages(5, 1, 1000));
        assert_ne!(step_pages(5, 0, 1000), step_pages(6, 0, 1000));
        assert_eq!(step_pages(5, 3, 1000), step_pages(5, 3, 1000));
    }

    /// Runs `steps` steps on an arena starting `skew` bytes past a page boundary and checks that
    /// exactly the predicted words changed.
    fn check_exact(seed: u64, steps: u64, skew: usize, stop_at: Option<u64>) {
        let mut backing = vec![0xa5u8; (1 << 20) + 2 * PAGE_BYTES];
        let start = align_offset(backing.as_ptr(), PAGE_BYTES) + skew;
        let arena = &mut backing[start..start + (1 << 20)];
        let before = arena.to_vec();
        let (off, pages) = aligned_pages(arena.as_ptr() as usize, arena.len());
        assert_eq!(off, (PAGE_BYTES - skew) % PAGE_BYTES);
        let mut p = TestPlatform::new(0);
        p.stop_at_yield = stop_at;
        let out = crate::run(&cfg(seed, steps), &mut p, arena).expect("pattern runs");
        let done = stop_at.unwrap_or(steps);
        assert_eq!(out.units_done, done);
        assert_eq!(p.yields, done);

        let mut expect: BTreeMap<usize, u64> = BTreeMap::new();
        for s in 0..done {
            for &pg in &step_pages(seed, s, pages).writes {
                expect.insert(off + pg as usize * PAGE_BYTES, write_value(seed, s, pg));
            }
        }
        let mut changed = 0;
        for (i, (a, b)) in before.iter().zip(arena.iter()).enumerate() {
            if a != b {
                let word = i - (i - off) % 8;
                assert!(expect.contains_key(&word), "unexpected change at byte {i}");
                changed += 1;
            }
        }
        assert!(changed > 0);
        for (&at, &v) in &expect {
            let got = u64::from_le_bytes(arena[at..at + 8].try_into().unwrap());
            assert_eq!(got, v, "value at byte {at}");
        }
    }

    #[test]
    fn touches_exactly_the_predicted_pages() {
        check_exact(1, 10, 0, None);
        check_exact(2, 25, 123, None);
        check_exact(3, 0, 4000, Some(7));
    }

    #[test]
    fn deterministic_checksum() {
        let run = |seed| {
            let mut p = TestPlatform::new(0);
            let mut arena = Arena::new(MIN_ARENA as usize, 0);
            crate::run(&cfg(seed, 50), &mut p, arena.bytes()).expect("pattern runs")
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1).checksum, run(2).checksum);
    }
}
