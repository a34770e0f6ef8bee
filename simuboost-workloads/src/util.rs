//! Plumbing shared by the workloads: unit/yield bookkeeping, checksums, console lines and typed
//! views of the arena.

use core::convert::Infallible;
use core::fmt::{self, Write};

use crate::rng::mix64;
use crate::{DiskError, Outcome, Platform, RunConfig, WorkloadError};

/// Why a workload body stopped early.
pub(crate) enum Halt {
    /// The requested number of units is done, or `yield_now` asked us to stop: report the
    /// outcome so far.
    Stop,
    /// A real error.
    Fail(WorkloadError),
}

impl From<DiskError> for Halt {
    fn from(e: DiskError) -> Self {
        Halt::Fail(WorkloadError::Disk(e))
    }
}

impl From<WorkloadError> for Halt {
    fn from(e: WorkloadError) -> Self {
        Halt::Fail(e)
    }
}

/// What a workload body returns: it only ever ends through a [`Halt`].
pub(crate) type Flow = Result<Infallible, Halt>;

/// A step of a workload body that may stop it.
pub(crate) type Step = Result<(), Halt>;

/// Order-sensitive running checksum (an FxHash-like fold, finished with a strong mix).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checksum(u64);

impl Checksum {
    pub(crate) fn new(seed: u64) -> Self {
        Checksum(mix64(seed ^ 0x6a09_e667_f3bc_c908))
    }

    #[inline(always)]
    pub(crate) fn fold(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    pub(crate) fn value(&self) -> u64 {
        mix64(self.0)
    }
}

/// The workload's link to the platform: counts units, owns the checksum, and turns "stop" answers
/// of `yield_now` and a reached unit limit into [`Halt::Stop`].
pub(crate) struct Ctl<'a> {
    pub(crate) p: &'a mut dyn Platform,
    limit: u64,
    units: u64,
    /// Estimated nanoseconds of work since the last yield (see [`Ctl::work`]).
    credit_ns: u64,
    pub(crate) sum: Checksum,
}

/// Estimated work between two yields when a workload paces itself with [`Ctl::work`]: about a
/// millisecond, so that exits (~25 µs each on PVM hosts) cost a few percent at most while
/// interval boundaries stay close to where the VMM wants them.
pub(crate) const YIELD_BUDGET_NS: u64 = 1_000_000;

impl<'a> Ctl<'a> {
    pub(crate) fn new(cfg: &RunConfig, p: &'a mut dyn Platform) -> Self {
        Ctl {
            p,
            limit: cfg.work_units,
            units: 0,
            credit_ns: 0,
            sum: Checksum::new(cfg.seed),
        }
    }

    /// A deliberate exit point; stops the workload when the platform asks for it.
    #[inline]
    pub(crate) fn yield_now(&mut self) -> Step {
        if self.p.yield_now() {
            Err(Halt::Stop)
        } else {
            Ok(())
        }
    }

    /// Accounts for about `estimated_ns` of work and yields once the budget of about a
    /// millisecond is used up: for loops whose iterations are much shorter than that.
    #[inline]
    pub(crate) fn work(&mut self, estimated_ns: u64) -> Step {
        self.credit_ns += estimated_ns;
        if self.credit_ns >= YIELD_BUDGET_NS {
            self.credit_ns = 0;
            self.yield_now()
        } else {
            Ok(())
        }
    }

    /// Counts one finished unit; stops the workload when the requested number is reached.
    #[inline]
    pub(crate) fn unit_done(&mut self) -> Step {
        self.units += 1;
        if self.limit != 0 && self.units >= self.limit {
            Err(Halt::Stop)
        } else {
            Ok(())
        }
    }

    /// Writes one line (truncated to a small fixed buffer) to the console.
    pub(crate) fn say(&mut self, args: fmt::Arguments<'_>) {
        let mut line = LineBuf {
            buf: [0; 192],
            len: 0,
        };
        // LineBuf never fails; it truncates.
        let _ = line.write_fmt(args);
        self.p.console_write(&line.buf[..line.len]);
    }

    /// Turns the body's end into the run's result.
    pub(crate) fn finish(self, flow: Flow) -> Result<Outcome, WorkloadError> {
        match flow {
            Ok(never) => match never {},
            Err(Halt::Stop) => Ok(Outcome {
                checksum: self.sum.value(),
                units_done: self.units,
            }),
            Err(Halt::Fail(e)) => Err(e),
        }
    }
}

/// A fixed-size, truncating text buffer (console lines without allocation).
struct LineBuf {
    buf: [u8; 192],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The part of the arena the workloads (all but `idle`) use: from its first 4096-aligned byte,
/// [`usable_len`]`(arena.len())` bytes. That length depends only on the arena's length, never on
/// its address, so a host run on an unaligned buffer lays memory out exactly like the
/// page-aligned guest does and computes the same checksums.
pub(crate) fn usable(arena: &mut [u8]) -> &mut [u8] {
    let len = usable_len(arena.len());
    let off = align_offset(arena.as_ptr(), 4096);
    // off <= 4095 and len <= arena.len() - 4095, so this is in bounds.
    &mut arena[off..off + len]
}

/// Whole 4096-byte pages found after the first aligned address of any `len`-byte buffer.
pub(crate) const fn usable_len(len: usize) -> usize {
    len.saturating_sub(4095) / 4096 * 4096
}

/// The part of `buf` starting at the first address that is a multiple of `align` (a power of
/// two); empty if there is none.
pub(crate) fn align_start(buf: &mut [u8], align: usize) -> &mut [u8] {
    let off = align_offset(buf.as_ptr(), align);
    if off >= buf.len() {
        &mut []
    } else {
        &mut buf[off..]
    }
}

/// Bytes from `ptr` to the next multiple of `align` (a power of two).
pub(crate) fn align_offset(ptr: *const u8, align: usize) -> usize {
    (align - (ptr as usize & (align - 1))) & (align - 1)
}

/// Plain old data: every bit pattern is a valid value and there is no padding.
///
/// # Safety
/// Only implement for types made of integers with no padding.
pub(crate) unsafe trait Pod: Copy {}

// SAFETY: integers and arrays of them have no padding and no invalid bit patterns.
unsafe impl Pod for u64 {}
// SAFETY: as above.
unsafe impl<const N: usize> Pod for [u64; N] {}

/// Views the aligned middle of `bytes` as a slice of `T` (callers align `bytes` first, so in
/// practice nothing is lost at the front).
pub(crate) fn cast_slice_mut<T: Pod>(bytes: &mut [u8]) -> &mut [T] {
    // SAFETY: `T` is plain old data, so any initialized bytes form valid values, and
    // `align_to_mut` only returns the correctly aligned, in-bounds middle part.
    let (_, mid, _) = unsafe { bytes.align_to_mut::<T>() };
    mid
}

/// Views a slice of `T` as bytes.
pub(crate) fn as_bytes<T: Pod>(s: &[T]) -> &[u8] {
    // SAFETY: `T` is plain old data without padding, so all its bytes are initialized; the
    // length is the slice's exact size in bytes and u8 has alignment 1.
    unsafe { core::slice::from_raw_parts(s.as_ptr().cast::<u8>(), core::mem::size_of_val(s)) }
}

/// Views a mutable slice of `T` as bytes.
pub(crate) fn as_bytes_mut<T: Pod>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; any byte pattern written back is a valid `T`.
    unsafe {
        core::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), core::mem::size_of_val(s))
    }
}

/// Formats a byte count compactly for start lines.
pub(crate) struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 {
            write!(
                f,
                "{}.{:02} GiB",
                b >> 30,
                ((b & ((1 << 30) - 1)) * 100) >> 30
            )
        } else if b >= 1 << 20 {
            write!(
                f,
                "{}.{:02} MiB",
                b >> 20,
                ((b & ((1 << 20) - 1)) * 100) >> 20
            )
        } else if b >= 1 << 10 {
            write!(f, "{} KiB", b >> 10)
        } else {
            write!(f, "{} B", b)
        }
    }
}

/// An in-memory [`Platform`] for host tests: a `Vec`-backed disk, a clock advancing 10 µs per
/// read, a deterministic "random" source, and a yield counter that can ask to stop after a given
/// number of yields.
#[cfg(test)]
pub(crate) mod testing {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use crate::{DiskError, Platform, BLOCK_SIZE};

    /// A page-aligned arena (so layouts, and so checksums, do not depend on the allocator).
    pub(crate) struct Arena {
        buf: Vec<u8>,
        start: usize,
        len: usize,
    }

    impl Arena {
        pub(crate) fn new(len: usize, fill: u8) -> Arena {
            Arena::skewed(len, fill, 0)
        }

        /// An arena starting `skew` bytes after a page boundary.
        pub(crate) fn skewed(len: usize, fill: u8, skew: usize) -> Arena {
            let buf = vec![fill; len + 4096 + skew];
            let start = super::align_offset(buf.as_ptr(), 4096) + skew;
            Arena { buf, start, len }
        }

        pub(crate) fn bytes(&mut self) -> &mut [u8] {
            &mut self.buf[self.start..self.start + self.len]
        }
    }

    pub(crate) struct TestPlatform {
        pub disk: Vec<u8>,
        pub clock: u64,
        pub yields: u64,
        /// `yield_now` returns true on this (1-based) call and every later one.
        pub stop_at_yield: Option<u64>,
        pub console: Vec<u8>,
        rand: u64,
    }

    impl TestPlatform {
        pub(crate) fn new(disk_blocks: u64) -> Self {
            TestPlatform {
                disk: vec![0; disk_blocks as usize * BLOCK_SIZE],
                clock: 0,
                yields: 0,
                stop_at_yield: None,
                console: Vec::new(),
                rand: 1,
            }
        }

        fn range(&self, block: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
            assert_eq!(len % BLOCK_SIZE, 0, "unaligned disk transfer");
            let start = block as usize * BLOCK_SIZE;
            if start + len > self.disk.len() {
                return Err(DiskError {
                    status: simuboost_abi::status::BAD_BLOCK,
                });
            }
            Ok(start..start + len)
        }
    }

    impl Platform for TestPlatform {
        fn console_write(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }

        fn clock_ns(&mut self) -> u64 {
            self.clock += 10_000;
            self.clock
        }

        fn random(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.rand = crate::rng::mix64(self.rand);
                *b = self.rand as u8;
            }
        }

        fn block_read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            let r = self.range(block, buf.len())?;
            buf.copy_from_slice(&self.disk[r]);
            Ok(())
        }

        fn block_write(&mut self, block: u64, buf: &[u8]) -> Result<(), DiskError> {
            let r = self.range(block, buf.len())?;
            self.disk[r].copy_from_slice(buf);
            Ok(())
        }

        fn yield_now(&mut self) -> bool {
            self.yields += 1;
            self.stop_at_yield.is_some_and(|n| self.yields >= n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Arena, TestPlatform};
    use crate::{compress, dataset, min_arena_bytes, sort, RunConfig, WorkloadError};
    use simuboost_abi::WorkloadId;

    /// Runs `workload` for a few units on an arena of its minimum size plus `extra` bytes,
    /// starting `skew` bytes after a page boundary.
    fn run(workload: WorkloadId, extra: usize, skew: usize) -> crate::Outcome {
        let data = match workload {
            WorkloadId::Compress => 256 << 10,
            WorkloadId::Sort => 1 << 20,
            _ => 0,
        };
        let blocks = match workload {
            WorkloadId::Compress => compress::disk_blocks_needed(data),
            WorkloadId::Sort => sort::disk_blocks_needed(data),
            _ => 0,
        };
        let mut p = TestPlatform::new(blocks);
        match workload {
            WorkloadId::Compress => {
                dataset::fill_compress_input(1, 0, &mut p.disk[..data as usize])
            }
            WorkloadId::Sort => dataset::fill_sort_input(1, 0, &mut p.disk[..data as usize]),
            _ => {}
        }
        let cfg = RunConfig {
            workload,
            seed: 5,
            work_units: 3,
            disk_blocks: blocks,
            disk_data_bytes: data,
        };
        let len = min_arena_bytes(workload) as usize + extra;
        let mut arena = Arena::skewed(len, 0, skew);
        crate::run(&cfg, &mut p, arena.bytes()).expect("workload runs")
    }

    #[test]
    fn results_do_not_depend_on_arena_alignment() {
        for w in WorkloadId::ALL {
            for extra in [0, 5000] {
                let aligned = run(w, extra, 0);
                assert_eq!(aligned.units_done, 3, "{}", w.name());
                for skew in [16, 4095] {
                    assert_eq!(run(w, extra, skew), aligned, "{} skew {skew}", w.name());
                }
            }
        }
    }

    #[test]
    fn small_arenas_are_refused() {
        for w in WorkloadId::ALL {
            let needed = min_arena_bytes(w);
            assert!(needed <= 16 << 20);
            let mut p = TestPlatform::new(0);
            let cfg = RunConfig {
                workload: w,
                seed: 1,
                work_units: 1,
                disk_blocks: 0,
                disk_data_bytes: 0,
            };
            let mut arena = Arena::new(needed as usize - 1, 0);
            assert_eq!(
                crate::run(&cfg, &mut p, arena.bytes()),
                Err(WorkloadError::ArenaTooSmall {
                    needed,
                    available: needed - 1
                })
            );
        }
    }
}
