//! `sort`: an external merge sort of fixed-size records on the disk (think `sort(1)` on a file
//! larger than memory, or a database building an index).
//!
//! # What it models
//! The input is `N = disk_data_bytes / 64` records of [`SORT_RECORD_SIZE`] bytes at block 0
//! (normally made by [`crate::dataset::fill_sort_input`]); the key is the little-endian `u64` in
//! each record's first 8 bytes. The disk must also hold two more record areas of
//! `ceil(N / 64)` blocks each, right after the input (block `ceil(disk_data_bytes / 4096)`): the
//! run area, then the output area. [`disk_blocks_needed`] computes the total; with a smaller disk
//! (or none, or no records) the workload fails with [`WorkloadError::NoDisk`].
//!
//! A round is:
//! 1. **Run formation**: the input is cut into runs of `C = min(arena / 2, N / 8)` records
//!    (rounded to whole blocks). Each run is read 1 MiB at a time into the first half of the
//!    arena, sorted in 4096-record slices (`sort_unstable`), merged bottom-up between the two
//!    halves of the arena (slice width doubling each pass), and written to the run area.
//! 2. **k-way merge**: each run gets an equal buffer (up to 1 MiB) in the arena, refilled from
//!    the disk as it drains; a binary heap picks the smallest key; output goes through a buffer
//!    (up to 1 MiB) to the output area.
//! 3. **Verification**: the output must be sorted (checked record by record) and be a
//!    permutation of the input (an order-independent hash of all records, and the count). A
//!    failure means a bug or memory/disk corruption and panics.
//!
//! Rounds repeat (identically) until the units are done or the workload is asked to stop.
//!
//! # Units
//! One **unit = 1 MiB of records (16384) through one pass**, where the passes are: read and
//! slice-sort, each in-memory merge pass, run write, and k-way merge (counted as its output is
//! written). A unit is about 0.5–3 ms. `yield_now` is called every 8192 records (512 KiB) of every
//! pass (about 0.1–0.6 ms) and after every run-buffer refill.
//!
//! The checksum folds the smallest key of each sorted slice, every output key in order, and the
//! input hash at the end of each round.

use crate::dataset::SORT_RECORD_SIZE;
use crate::rng::mix64;
use crate::util::{as_bytes, as_bytes_mut, cast_slice_mut, Bytes, Ctl, Flow, Step};
use crate::{Outcome, Platform, RunConfig, WorkloadError, BLOCK_SIZE};

/// Smallest arena: 4 MiB.
pub const MIN_ARENA: u64 = 4 << 20;

/// Records per unit (1 MiB).
pub const UNIT_RECORDS: u64 = 16384;

type Rec = [u64; 8];
const _: () = assert!(core::mem::size_of::<Rec>() == SORT_RECORD_SIZE);

/// Records per disk block.
const RECS_PER_BLOCK: usize = BLOCK_SIZE / SORT_RECORD_SIZE;
/// Records between yields.
const YIELD_RECORDS: u64 = 8192;
/// Records sorted by one `sort_unstable` call.
const SLICE_RECORDS: usize = 4096;
/// Records per disk transfer in run formation, and the largest merge buffer per run / output.
const IO_RECORDS: usize = 16384;
/// Records merged between two progress reports.
const MERGE_BATCH: usize = 1024;

/// A disk size (in blocks) holding `data_bytes` of input plus the run and output areas.
pub fn disk_blocks_needed(data_bytes: u64) -> u64 {
    let bs = BLOCK_SIZE as u64;
    let recs = data_bytes / SORT_RECORD_SIZE as u64;
    data_bytes.div_ceil(bs) + 2 * recs.div_ceil(RECS_PER_BLOCK as u64)
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

/// Counts processed records into yields and units.
struct Progress {
    to_yield: u64,
    to_unit: u64,
}

impl Progress {
    #[inline]
    fn yields(&mut self, ctl: &mut Ctl, n: u64) -> Step {
        self.to_yield += n;
        while self.to_yield >= YIELD_RECORDS {
            self.to_yield -= YIELD_RECORDS;
            ctl.yield_now()?;
        }
        Ok(())
    }

    #[inline]
    fn units(&mut self, ctl: &mut Ctl, n: u64) -> Step {
        self.to_unit += n;
        while self.to_unit >= UNIT_RECORDS {
            self.to_unit -= UNIT_RECORDS;
            ctl.unit_done()?;
        }
        Ok(())
    }

    #[inline]
    fn both(&mut self, ctl: &mut Ctl, n: u64) -> Step {
        self.yields(ctl, n)?;
        self.units(ctl, n)
    }
}

/// Sizes of one sort, all in records unless named otherwise.
struct Plan {
    n: u64,
    /// Records per run (a multiple of `RECS_PER_BLOCK`).
    run: usize,
    runs: usize,
    runs_block: u64,
    out_block: u64,
    /// Merge phase: bytes of per-run state at the arena's start, output buffer and per-run
    /// buffer sizes.
    meta_bytes: usize,
    out_recs: usize,
    buf_recs: usize,
}

fn plan(cfg: &RunConfig, arena_recs: usize, available: u64) -> Result<Plan, WorkloadError> {
    let bs = BLOCK_SIZE as u64;
    let rpb = RECS_PER_BLOCK as u64;
    let n = cfg.disk_data_bytes / SORT_RECORD_SIZE as u64;
    if cfg.disk_blocks == 0 || n == 0 || cfg.disk_blocks < disk_blocks_needed(cfg.disk_data_bytes) {
        return Err(WorkloadError::NoDisk);
    }
    let half = (arena_recs / 2) / RECS_PER_BLOCK * RECS_PER_BLOCK;
    let eighth = (n.div_ceil(8).div_ceil(rpb) * rpb) as usize;
    let run = half.min(eighth);
    let too_small = |needed: u64| WorkloadError::ArenaTooSmall { needed, available };
    if run == 0 {
        return Err(too_small(MIN_ARENA));
    }
    let runs = n.div_ceil(run as u64) as usize;
    let meta_bytes = (runs * 6 * 8).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    let meta_recs = meta_bytes / SORT_RECORD_SIZE;
    let out_recs = (arena_recs / 4).min(IO_RECORDS) / RECS_PER_BLOCK * RECS_PER_BLOCK;
    let left = arena_recs.saturating_sub(meta_recs + out_recs);
    let buf_recs = (left / runs).min(IO_RECORDS) / RECS_PER_BLOCK * RECS_PER_BLOCK;
    if out_recs == 0 || buf_recs == 0 {
        let needed = meta_bytes + (runs + 1) * BLOCK_SIZE + BLOCK_SIZE;
        return Err(too_small(needed as u64));
    }
    let runs_block = cfg.disk_data_bytes.div_ceil(bs);
    Ok(Plan {
        n,
        run,
        runs,
        runs_block,
        out_block: runs_block + n.div_ceil(rpb),
        meta_bytes,
        out_recs,
        buf_recs,
    })
}

/// A hash of one record; summed (wrapping) over records, it does not depend on their order.
#[inline]
fn rec_hash(r: &Rec) -> u64 {
    let mut acc = 0u64;
    for &w in r {
        acc = (acc ^ w)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    mix64(acc)
}

fn body(cfg: &RunConfig, ctl: &mut Ctl, arena: &mut [u8]) -> Flow {
    let available = arena.len() as u64;
    let arena = crate::util::usable(arena);
    let arena_recs = arena.len() / SORT_RECORD_SIZE;
    let plan = plan(cfg, arena_recs, available)?;
    ctl.say(format_args!(
        "sort: {} records ({}), {} runs of {} records, merge buffers {} x {} records\n",
        plan.n,
        Bytes(plan.n * SORT_RECORD_SIZE as u64),
        plan.runs,
        plan.run,
        plan.runs,
        plan.buf_recs
    ));
    let mut prog = Progress {
        to_yield: 0,
        to_unit: 0,
    };
    loop {
        let mut in_hash = 0u64;
        for r in 0..plan.runs {
            in_hash = in_hash.wrapping_add(form_run(ctl, &mut prog, &plan, arena, r)?);
        }
        merge_runs(ctl, &mut prog, &plan, arena, in_hash)?;
        ctl.sum.fold(in_hash);
    }
}

/// Reads, sorts and writes run `r`; returns the sum of its records' hashes.
fn form_run(
    ctl: &mut Ctl,
    prog: &mut Progress,
    plan: &Plan,
    arena: &mut [u8],
    r: usize,
) -> Result<u64, crate::util::Halt> {
    let recs: &mut [Rec] = cast_slice_mut(arena);
    let (a, rest) = recs.split_at_mut(plan.run);
    let b = &mut rest[..plan.run];
    let first = r * plan.run;
    let len = plan.run.min(plan.n as usize - first);

    // Read and sort slices.
    let mut hash = 0u64;
    for s in (0..len).step_by(IO_RECORDS) {
        let n = IO_RECORDS.min(len - s);
        let blocks = n.div_ceil(RECS_PER_BLOCK);
        let block = ((first + s) / RECS_PER_BLOCK) as u64;
        ctl.p
            .block_read(block, as_bytes_mut(&mut a[s..s + blocks * RECS_PER_BLOCK]))?;
        for slice in a[s..s + n].chunks_mut(SLICE_RECORDS) {
            for rec in slice.iter() {
                hash = hash.wrapping_add(rec_hash(rec));
            }
            slice.sort_unstable_by_key(|rec| rec[0]);
            ctl.sum.fold(slice[0][0]);
            prog.both(ctl, slice.len() as u64)?;
        }
    }

    // Bottom-up merge passes, alternating between the halves.
    let mut width = SLICE_RECORDS;
    let mut in_a = true;
    while width < len {
        let (src, dst) = if in_a { (&*a, &mut *b) } else { (&*b, &mut *a) };
        for lo in (0..len).step_by(2 * width) {
            let mid = (lo + width).min(len);
            let hi = (lo + 2 * width).min(len);
            merge2(ctl, prog, &src[lo..mid], &src[mid..hi], &mut dst[lo..hi])?;
        }
        in_a = !in_a;
        width *= 2;
    }

    // Write the run, with the last block's tail zeroed so the disk contents are well defined.
    let sorted = if in_a { a } else { b };
    let padded = len.div_ceil(RECS_PER_BLOCK) * RECS_PER_BLOCK;
    sorted[len..padded].fill([0; 8]);
    for s in (0..len).step_by(IO_RECORDS) {
        let n = IO_RECORDS.min(len - s);
        let blocks = n.div_ceil(RECS_PER_BLOCK);
        let block = plan.runs_block + ((first + s) / RECS_PER_BLOCK) as u64;
        ctl.p
            .block_write(block, as_bytes(&sorted[s..s + blocks * RECS_PER_BLOCK]))?;
        prog.both(ctl, n as u64)?;
    }
    Ok(hash)
}

/// Merges two sorted slices into `out` (stable: ties come from `left` first).
fn merge2(
    ctl: &mut Ctl,
    prog: &mut Progress,
    left: &[Rec],
    right: &[Rec],
    out: &mut [Rec],
) -> Step {
    let (mut i, mut j) = (0, 0);
    for batch in out.chunks_mut(MERGE_BATCH) {
        for o in batch.iter_mut() {
            if j >= right.len() || (i < left.len() && left[i][0] <= right[j][0]) {
                *o = left[i];
                i += 1;
            } else {
                *o = right[j];
                j += 1;
            }
        }
        prog.both(ctl, batch.len() as u64)?;
    }
    Ok(())
}

/// Per-run merge state.
#[derive(Clone, Copy)]
struct RunCursor {
    /// Records of the run loaded so far.
    loaded: usize,
    /// Records in the run.
    len: usize,
    /// Next record in the buffer, and records in the buffer.
    pos: usize,
    fill: usize,
}

/// k-way merges the runs into the output area and verifies the result.
fn merge_runs(
    ctl: &mut Ctl,
    prog: &mut Progress,
    plan: &Plan,
    arena: &mut [u8],
    in_hash: u64,
) -> Step {
    let (meta, rest) = arena.split_at_mut(plan.meta_bytes);
    let meta: &mut [u64] = cast_slice_mut(meta);
    let (cursor_words, heap_words) = meta.split_at_mut(4 * plan.runs);
    let cursors: &mut [[u64; 4]] = cast_slice_mut(as_bytes_mut(cursor_words));
    let heap: &mut [[u64; 2]] = cast_slice_mut(as_bytes_mut(&mut heap_words[..2 * plan.runs]));
    let recs: &mut [Rec] = cast_slice_mut(rest);
    let (out, bufs) = recs.split_at_mut(plan.out_recs);
    let bufs = &mut bufs[..plan.runs * plan.buf_recs];

    // Load every run's first buffer and build the heap of (key, run).
    let mut heap_len = 0usize;
    for r in 0..plan.runs {
        let len = plan.run.min(plan.n as usize - r * plan.run);
        let mut c = RunCursor {
            loaded: 0,
            len,
            pos: 0,
            fill: 0,
        };
        refill(ctl, plan, bufs, r, &mut c)?;
        cursors[r] = pack(&c);
        heap[heap_len] = [bufs[r * plan.buf_recs][0], r as u64];
        heap_len += 1;
    }
    for i in (0..heap_len / 2).rev() {
        sift_down(&mut heap[..heap_len], i);
    }

    let mut out_hash = 0u64;
    let mut count = 0u64;
    let mut last = 0u64;
    let mut o = 0usize;
    let mut out_block = plan.out_block;
    while heap_len > 0 {
        let [key, r] = heap[0];
        let r = r as usize;
        let mut c = unpack(&cursors[r]);
        let rec = bufs[r * plan.buf_recs + c.pos];
        if key < last {
            panic!("sort: output not sorted at record {count} (bug or memory corruption)");
        }
        last = key;
        out[o] = rec;
        o += 1;
        count += 1;
        out_hash = out_hash.wrapping_add(rec_hash(&rec));
        ctl.sum.fold(key);
        c.pos += 1;
        if c.pos == c.fill && c.loaded < c.len {
            refill(ctl, plan, bufs, r, &mut c)?;
        }
        if c.pos < c.fill {
            heap[0][0] = bufs[r * plan.buf_recs + c.pos][0];
        } else {
            heap_len -= 1;
            heap[0] = heap[heap_len];
        }
        cursors[r] = pack(&c);
        sift_down(&mut heap[..heap_len], 0);
        prog.yields(ctl, 1)?;
        // The last buffer is written after verification, so that a round's final unit
        // includes it.
        if o == out.len() && heap_len > 0 {
            ctl.p.block_write(out_block, as_bytes(&out[..o]))?;
            out_block += (o / RECS_PER_BLOCK) as u64;
            prog.units(ctl, o as u64)?;
            o = 0;
        }
    }
    if count != plan.n || out_hash != in_hash {
        panic!(
            "sort: output is not a permutation of the input ({count} of {} records)",
            plan.n
        );
    }
    if o > 0 {
        let padded = o.div_ceil(RECS_PER_BLOCK) * RECS_PER_BLOCK;
        out[o..padded].fill([0; 8]);
        ctl.p.block_write(out_block, as_bytes(&out[..padded]))?;
        prog.units(ctl, o as u64)?;
    }
    Ok(())
}

fn pack(c: &RunCursor) -> [u64; 4] {
    [c.loaded as u64, c.len as u64, c.pos as u64, c.fill as u64]
}

fn unpack(w: &[u64; 4]) -> RunCursor {
    RunCursor {
        loaded: w[0] as usize,
        len: w[1] as usize,
        pos: w[2] as usize,
        fill: w[3] as usize,
    }
}

/// Reads the next records of run `r` into its buffer.
fn refill(ctl: &mut Ctl, plan: &Plan, bufs: &mut [Rec], r: usize, c: &mut RunCursor) -> Step {
    let n = plan.buf_recs.min(c.len - c.loaded);
    let blocks = n.div_ceil(RECS_PER_BLOCK);
    let buf = &mut bufs[r * plan.buf_recs..r * plan.buf_recs + blocks * RECS_PER_BLOCK];
    let block = plan.runs_block + ((r * plan.run + c.loaded) / RECS_PER_BLOCK) as u64;
    ctl.p.block_read(block, as_bytes_mut(buf))?;
    c.loaded += n;
    c.pos = 0;
    c.fill = n;
    ctl.yield_now()
}

/// Restores the min-heap property (by key, then run) below `i`.
#[inline]
fn sift_down(heap: &mut [[u64; 2]], mut i: usize) {
    let n = heap.len();
    loop {
        let l = 2 * i + 1;
        if l >= n {
            return;
        }
        let mut m = l;
        if l + 1 < n && heap[l + 1] < heap[l] {
            m = l + 1;
        }
        if heap[m] < heap[i] {
            heap.swap(i, m);
            i = m;
        } else {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::dataset::{fill_sort_input, sort_record};
    use crate::util::testing::{Arena, TestPlatform};
    use simuboost_abi::WorkloadId;
    use std::vec;

    fn cfg(seed: u64, units: u64, disk_blocks: u64, data: u64) -> RunConfig {
        RunConfig {
            workload: WorkloadId::Sort,
            seed,
            work_units: units,
            disk_blocks,
            disk_data_bytes: data,
        }
    }

    fn platform(data_seed: u64, data: u64) -> TestPlatform {
        let mut p = TestPlatform::new(disk_blocks_needed(data));
        fill_sort_input(data_seed, 0, &mut p.disk[..data as usize]);
        p
    }

    /// Units of one round: read+sort, merge passes, write, k-way merge.
    fn round_units(data: u64, run_recs: u64) -> u64 {
        let mib = data.div_ceil(1 << 20);
        let mut passes = 0;
        let mut w = SLICE_RECORDS as u64;
        while w < run_recs {
            passes += 1;
            w *= 2;
        }
        mib * (3 + passes)
    }

    fn check_output(p: &TestPlatform, data_seed: u64, data: u64) {
        let n = data / 64;
        let start = data.div_ceil(4096) + n.div_ceil(64);
        let out = &p.disk[start as usize * 4096..][..n as usize * 64];
        let mut seen = vec![false; n as usize];
        let mut last = 0;
        for rec in out.chunks_exact(64) {
            let w = |j: usize| u64::from_le_bytes(rec[8 * j..8 * j + 8].try_into().unwrap());
            assert!(w(0) >= last, "output sorted");
            last = w(0);
            let idx = w(1) as usize;
            assert!(!seen[idx]);
            seen[idx] = true;
            let want = sort_record(data_seed, idx as u64);
            for (j, &x) in want.iter().enumerate() {
                assert_eq!(w(j), x);
            }
        }
    }

    #[test]
    fn sorts_with_merge_passes() {
        // 8 MiB of records, 4 MiB arena: runs of 16384 records, two merge passes each.
        let data = 8 << 20;
        let units = round_units(data, 16384);
        assert_eq!(units, 8 * 5);
        let mut p = platform(4, data);
        let mut arena = Arena::new(MIN_ARENA as usize, 0);
        let c = cfg(1, units, p.disk.len() as u64 / 4096, data);
        let out = crate::run(&c, &mut p, arena.bytes()).expect("sort runs");
        assert_eq!(out.units_done, units);
        assert!(p.yields >= units);
        check_output(&p, 4, data);
    }

    #[test]
    fn deterministic_odd_sizes() {
        // Not a whole number of blocks, records, or runs.
        let data = 1_234_567;
        let mut p = platform(7, data);
        let blocks = p.disk.len() as u64 / 4096;
        let mut arena = Arena::new(MIN_ARENA as usize + 123, 0);
        let a = crate::run(&cfg(1, 7, blocks, data), &mut p, arena.bytes()).expect("sort runs");
        assert_eq!(a.units_done, 7);
        check_output(&p, 7, data);
        let mut p2 = platform(7, data);
        let b = crate::run(&cfg(1, 7, blocks, data), &mut p2, arena.bytes()).expect("sort runs");
        assert_eq!(a, b);
        let mut p3 = platform(8, data);
        let c = crate::run(&cfg(1, 7, blocks, data), &mut p3, arena.bytes()).expect("sort runs");
        assert_ne!(a.checksum, c.checksum);
    }

    #[test]
    fn stops_when_asked_and_checks_disk() {
        let data = 1 << 20;
        let mut p = platform(1, data);
        let blocks = p.disk.len() as u64 / 4096;
        p.stop_at_yield = Some(30);
        let mut arena = Arena::new(MIN_ARENA as usize, 0);
        let out = crate::run(&cfg(1, 0, blocks, data), &mut p, arena.bytes()).expect("sort runs");
        assert_eq!(p.yields, 30);
        assert!(out.units_done > 0);

        let mut p = platform(1, data);
        assert_eq!(
            crate::run(&cfg(1, 1, blocks - 1, data), &mut p, arena.bytes()),
            Err(WorkloadError::NoDisk)
        );
        assert_eq!(
            crate::run(&cfg(1, 1, blocks, 63), &mut p, arena.bytes()),
            Err(WorkloadError::NoDisk)
        );
    }
}
