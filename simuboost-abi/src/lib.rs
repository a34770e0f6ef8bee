//! The guest/VMM contract of simuboost, in one place.
//!
//! Both the guest (`simuboost-guest`, `no_std`) and the VMM (`simuboost-vmm`) depend on this crate,
//! so the layout of guest memory at boot, the segment selectors, and the paravirtual device's
//! ports and request format cannot drift apart.
//!
//! # Determinism contract
//! The guest's execution is a pure function of its initial memory image and of the values it
//! receives through the paravirtual device ([`DOORBELL_GPA`]). It never executes RDTSC, RDRAND,
//! RDSEED, CPUID-dependent code paths or any other instruction whose result comes from outside,
//! and it takes no interrupts. Every value from outside arrives as bytes the VMM writes into the
//! [`Request`] block (and the buffers it names) while handling one doorbell exit. Replay feeds the
//! same bytes back at the same exit count; the guest then executes identically.
//!
//! Every doorbell exit is a *guest-initiated exit*: a deterministic point in the guest's
//! execution. Interval boundaries fall only on such points.
#![no_std]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of a guest page (and of a frame, and of a disk block).
pub const PAGE_SIZE: u64 = 4096;

/// x86-64 page-table entry bits the VMM builds, masks or reads.
pub mod pte {
    /// The entry maps something.
    pub const PRESENT: u64 = 1 << 0;
    /// Writes allowed.
    pub const WRITABLE: u64 = 1 << 1;
    /// Ring 3 allowed.
    pub const USER: u64 = 1 << 2;
    /// Set by the CPU (or KVM's shadow MMU) when the entry is used for a translation.
    pub const ACCESSED: u64 = 1 << 5;
    /// Set by the CPU when the page is written through a leaf entry.
    pub const DIRTY: u64 = 1 << 6;
    /// A leaf at the PDPT or PD level (1 GiB or 2 MiB page).
    pub const HUGE: u64 = 1 << 7;
    /// Both bits the hardware sets on its own: the guest never reads them, so checkpoints and
    /// replays compare page tables with them masked.
    pub const ACCESSED_DIRTY: u64 = ACCESSED | DIRTY;
    /// The physical address an entry points at (bits 12..52).
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// The doorbell of the paravirtual device: a guest physical address with no RAM behind it, just
/// above the largest RAM the layout supports, mapped into the guest's address space. The guest
/// writes (one 8-byte `mov`) the guest physical address of a [`Request`] there; the write exits to
/// the VMM as MMIO, and the VMM performs the request and fills in `status` and `ret` (and any
/// buffer the request names) before the guest continues.
///
/// Why MMIO and not an I/O port: on PVM hosts ring-3 `out` raises #GP even with RFLAGS.IOPL=3
/// (the IOPL never reaches the hardware), while an MMIO write exits from any ring.
pub const DOORBELL_GPA: u64 = layout::MAX_MEM_BYTES;

/// Port written by the guest's ring-0 exception stubs with the vector number (ring 0 may use
/// port I/O). The VMM treats it as a guest crash and reports the exception frame.
pub const PORT_EXCEPTION: u16 = 0x5b4;

/// `Request::magic` value; guards against the guest pointing the doorbell at garbage.
pub const REQUEST_MAGIC: u32 = 0x5342_5251; // "QRBS"

/// Operations of the paravirtual device.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `args[1]` bytes at guest address `args[0]` to the console.
    ConsoleWrite = 1,
    /// `ret` = monotonic host clock in nanoseconds since the VM started.
    ClockRead = 2,
    /// Fill `args[1]` bytes at guest address `args[0]` with random bytes.
    RandomRead = 3,
    /// Read `args[2]` disk blocks starting at block `args[0]` into guest address `args[1]`.
    BlockRead = 4,
    /// Write `args[2]` disk blocks from guest address `args[1]` to disk block `args[0]`.
    BlockWrite = 5,
    /// A deliberate exit point. `ret` = 1 when the VMM asks the guest to stop, else 0.
    Yield = 6,
    /// Terminate the VM with exit status `args[0]`. Never returns.
    Exit = 7,
    /// Copy the [`BootConfig`] (`args[1]` bytes at most) to guest address `args[0]`.
    BootConfig = 8,
}

impl Op {
    /// Decodes a raw opcode.
    pub fn from_raw(raw: u32) -> Option<Op> {
        Some(match raw {
            1 => Op::ConsoleWrite,
            2 => Op::ClockRead,
            3 => Op::RandomRead,
            4 => Op::BlockRead,
            5 => Op::BlockWrite,
            6 => Op::Yield,
            7 => Op::Exit,
            8 => Op::BootConfig,
            _ => return None,
        })
    }
}

/// `Request::status` values.
pub mod status {
    /// The request was performed.
    pub const OK: u32 = 0;
    /// Unknown opcode or malformed arguments.
    pub const INVALID: u32 = 1;
    /// A buffer lies outside guest memory.
    pub const BAD_ADDRESS: u32 = 2;
    /// The disk access is out of range, or there is no disk.
    pub const BAD_BLOCK: u32 = 3;
    /// The host failed to perform disk I/O.
    pub const IO_ERROR: u32 = 4;
}

/// A request to the paravirtual device, in guest memory, 8-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Request {
    /// Must be [`REQUEST_MAGIC`].
    pub magic: u32,
    /// An [`Op`] as `u32`.
    pub op: u32,
    /// Operation arguments (see [`Op`]).
    pub args: [u64; 3],
    /// Set by the VMM: one of [`status`].
    pub status: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Set by the VMM: the operation's result value.
    pub ret: u64,
}

/// Byte offset of `Request::status` (the VMM writes `status`, `reserved` and `ret` together).
pub const REQUEST_RESULT_OFFSET: u64 = core::mem::offset_of!(Request, status) as u64;
/// Size of a [`Request`] in bytes.
pub const REQUEST_SIZE: u64 = core::mem::size_of::<Request>() as u64;

/// What the VMM writes back into a [`Request`] at [`REQUEST_RESULT_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RequestResult {
    /// One of [`status`].
    pub status: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The operation's result value.
    pub ret: u64,
}

// The guest and the VMM both rely on these; a field change must be deliberate.
const _: () = assert!(REQUEST_SIZE == 48 && REQUEST_RESULT_OFFSET == 32);
const _: () =
    assert!(core::mem::size_of::<RequestResult>() as u64 == REQUEST_SIZE - REQUEST_RESULT_OFFSET);

/// Workloads the guest can run; the VMM selects one in the [`BootConfig`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadId {
    /// Hash table filled to most of RAM, then a Zipf-skewed stream of gets and puts.
    Kvstore = 1,
    /// Kernel-build-like: many short jobs over a large in-memory source tree.
    Build = 2,
    /// Compress a data set from the disk with DEFLATE, write the result back.
    Compress = 3,
    /// External merge sort of fixed-size records on the disk.
    Sort = 4,
    /// Repeated sequential read-modify-write passes over all memory.
    Stream = 5,
    /// Waits on the clock and touches almost nothing.
    Idle = 6,
    /// Touches an exact, seeded set of pages per step (for tests).
    Pattern = 7,
}

impl WorkloadId {
    /// All workloads, in a stable order.
    pub const ALL: [WorkloadId; 7] = [
        WorkloadId::Kvstore,
        WorkloadId::Build,
        WorkloadId::Compress,
        WorkloadId::Sort,
        WorkloadId::Stream,
        WorkloadId::Idle,
        WorkloadId::Pattern,
    ];

    /// Decodes a raw id.
    pub fn from_raw(raw: u32) -> Option<WorkloadId> {
        WorkloadId::ALL.iter().copied().find(|w| *w as u32 == raw)
    }

    /// The workload's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadId::Kvstore => "kvstore",
            WorkloadId::Build => "build",
            WorkloadId::Compress => "compress",
            WorkloadId::Sort => "sort",
            WorkloadId::Stream => "stream",
            WorkloadId::Idle => "idle",
            WorkloadId::Pattern => "pattern",
        }
    }

    /// Looks a workload up by its command-line name.
    pub fn from_name(name: &str) -> Option<WorkloadId> {
        WorkloadId::ALL.iter().copied().find(|w| w.name() == name)
    }
}

/// Magic value of [`BootConfig::magic`].
pub const BOOT_CONFIG_MAGIC: u64 = 0x4746_4342_554d_4953; // "SIMUBCFG"

/// What the guest learns at boot, through [`Op::BootConfig`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootConfig {
    /// [`BOOT_CONFIG_MAGIC`].
    pub magic: u64,
    /// A [`WorkloadId`] as `u32`.
    pub workload: u32,
    /// Largest arena the workload may use, in MiB; 0 = all free memory above the heap. Lets
    /// guests of different sizes run a workload on the same memory (their page tables, whose
    /// accessed and dirty bits the guest's touches set, then span the same frames).
    pub arena_limit_mib: u32,
    /// Guest RAM size in bytes (RAM spans `[0, mem_bytes)`).
    pub mem_bytes: u64,
    /// First byte of free memory after the guest image, page aligned.
    pub free_start: u64,
    /// Units of work to perform, 0 = run until the VMM asks to stop (via [`Op::Yield`]).
    pub work_units: u64,
    /// Size of the disk in blocks of [`PAGE_SIZE`] bytes (0 = no disk).
    pub disk_blocks: u64,
    /// Bytes of valid input data at the start of the disk (for `compress` and `sort`).
    pub disk_data_bytes: u64,
    /// Seed of every pseudo-random choice the workload makes.
    pub seed: u64,
}

const _: () = assert!(core::mem::size_of::<BootConfig>() == 64);

/// Guest physical memory layout at boot. The VMM builds these structures before the first
/// instruction; everything below [`IMAGE_BASE`] belongs to it.
pub mod layout {
    /// Global descriptor table (see [`super::selectors`]).
    pub const GDT: u64 = 0x1000;
    /// Task state segment (holds the ring-0 stack pointer used on exceptions).
    pub const TSS: u64 = 0x2000;
    /// Interrupt descriptor table: 32 exception gates.
    pub const IDT: u64 = 0x3000;
    /// Number of IDT entries (the CPU exceptions).
    pub const IDT_ENTRIES: u64 = 32;
    /// Level-4 page table.
    pub const PML4: u64 = 0x4000;
    /// Page-directory-pointer table (covers 512 GiB; one entry per GiB).
    pub const PDPT: u64 = 0x5000;
    /// First page directory; `PD_COUNT` consecutive pages, each mapping 1 GiB with 2 MiB pages.
    pub const PD_BASE: u64 = 0x6000;
    /// Number of page directories (maximum guest RAM is `PD_COUNT` GiB).
    pub const PD_COUNT: u64 = 16;
    /// Page directory mapping the 2 MiB around [`super::DOORBELL_GPA`] (PDPT entry `PD_COUNT`).
    pub const DOORBELL_PD: u64 = PD_BASE + PD_COUNT * 0x1000;
    /// Top of the ring-0 stack used when an exception arrives from ring 3.
    pub const KERNEL_STACK_TOP: u64 = 0x8_0000;
    /// The guest image is linked to load here.
    pub const IMAGE_BASE: u64 = 0x10_0000;
    /// Maximum guest RAM the layout supports.
    pub const MAX_MEM_BYTES: u64 = PD_COUNT << 30;
}

/// Segment selectors of the GDT the VMM builds.
pub mod selectors {
    /// Ring-0 64-bit code.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Ring-0 data.
    pub const KERNEL_DATA: u16 = 0x10;
    /// Ring-3 data (RPL 3).
    pub const USER_DATA: u16 = 0x18 | 3;
    /// Ring-3 64-bit code (RPL 3).
    pub const USER_CODE: u16 = 0x20 | 3;
    /// The TSS (a 16-byte system descriptor).
    pub const TSS: u16 = 0x28;
}

/// RFLAGS the guest runs its ring-3 work with: interrupts off, IOPL 0, reserved bit 1 set.
pub const USER_RFLAGS: u64 = 0x2;

/// Name of the ELF section holding the 32 exception stubs, 16 bytes apart, that the VMM points
/// the IDT at. Each stub writes its vector to [`PORT_EXCEPTION`].
pub const EXCEPTION_STUBS_SECTION: &str = ".exception_stubs";
/// Distance between two exception stubs.
pub const EXCEPTION_STUB_SIZE: u64 = 16;

/// Bytes of guest memory right after the image that the guest gives its allocator (small
/// allocations such as the compressor's state). Everything above is the workload's arena.
pub const GUEST_HEAP_BYTES: u64 = 8 << 20;

/// First byte of the workload's arena for an image whose free memory starts at `free_start`.
pub const fn arena_start(free_start: u64) -> u64 {
    (free_start + GUEST_HEAP_BYTES).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Bytes of the workload's arena: from [`arena_start`] to the end of RAM, at most
/// [`BootConfig::arena_limit_mib`] MiB when that is set (0 when RAM ends before the arena).
pub const fn arena_bytes(config: &BootConfig) -> u64 {
    let all = config
        .mem_bytes
        .saturating_sub(arena_start(config.free_start));
    let limit = (config.arena_limit_mib as u64) << 20;
    if limit != 0 && limit < all {
        limit
    } else {
        all
    }
}
