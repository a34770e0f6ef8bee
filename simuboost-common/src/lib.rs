//! Types shared by simuboost's eBPF programs (`simuboost-ebpf`) and the daemon that loads them.
//!
//! `no_std` and `repr(C)`, so both sides agree on every byte; the tracepoint field offsets the
//! programs read are listed here so the loader can check them against the running kernel.
#![no_std]

/// Name of the array map holding the [`TraceConfig`] (one entry, index 0).
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the ring buffer of [`TouchEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the array, indexed by gfn, of the generation (interval) in which each frame was last
/// reported: the programs report a frame once per interval. The loader sizes it to guest RAM.
pub const REPORTED_MAP: &str = "REPORTED";
/// Default size of [`REPORTED_MAP`] in frames (the loader sets the real one).
pub const DEFAULT_REPORTED_FRAMES: u32 = 1 << 18;

/// Size of [`EVENTS_MAP`] in the object (64 Ki events of 16 bytes); the loader sets the real
/// one (a power of two, at least a page) from the size of guest RAM.
pub const DEFAULT_EVENTS_BYTES: u32 = 1 << 20;

/// What the loader tells the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Only events from this thread group (the daemon's VM process) are recorded.
    pub tgid: u32,
    /// Non-zero while recording.
    pub enabled: u32,
    /// The current interval's generation (≥ 1); a frame whose [`REPORTED_MAP`] entry already
    /// holds it was reported in this interval and is not reported again.
    pub generation: u32,
}

/// One frame touched by the traced VM, as the programs report it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(zerocopy::FromBytes, zerocopy::Immutable, zerocopy::KnownLayout)
)]
pub struct TouchEvent {
    /// Guest frame number.
    pub gfn: u64,
    /// Which tracepoint saw it ([`Source`] as u32).
    pub source: u32,
    /// [`touch_flags`] bits.
    pub flags: u32,
}

/// Size of a [`TouchEvent`] in the ring.
pub const TOUCH_EVENT_SIZE: usize = 16;
const _: () = assert!(core::mem::size_of::<TouchEvent>() == TOUCH_EVENT_SIZE);

/// Which tracepoint reported a frame.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `kvmmmu:kvm_mmu_set_spte`: KVM installed a mapping of the frame (shadow paging and TDP).
    SetSpte = 1,
    /// `kvm:kvm_page_fault`: a fault on the frame (hardware-virtualized hosts).
    PageFault = 2,
    /// `kvmmmu:fast_page_fault`: a fault fixed without the MMU lock (TDP hosts).
    FastPageFault = 3,
    /// `kvm:kvm_dirty_ring_push`: the frame was written (dirty ring in use).
    DirtyRingPush = 4,
    /// `kvmmmu:kvm_mmu_paging_element`: KVM's software walk of the guest page tables read an
    /// entry pointing to this page-table frame (shadow paging).
    PageWalk = 5,
}

impl Source {
    /// Decodes a raw source.
    pub fn from_raw(raw: u32) -> Option<Source> {
        Some(match raw {
            1 => Source::SetSpte,
            2 => Source::PageFault,
            3 => Source::FastPageFault,
            4 => Source::DirtyRingPush,
            5 => Source::PageWalk,
            _ => return None,
        })
    }
}

/// Bits of [`TouchEvent::flags`].
pub mod touch_flags {
    /// The mapping was writable (not proof of a write: writes come from the dirty log).
    pub const WRITABLE: u32 = 1 << 0;
}

/// Indexes of [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events from the traced VM.
    Events = 0,
    /// Events lost because [`EVENTS_MAP`] was full.
    Drops = 1,
}

/// Number of counters.
pub const COUNTER_COUNT: u32 = 2;

/// A tracepoint field a program reads: (category, event, field, offset, size).
pub type Field = (&'static str, &'static str, &'static str, usize, usize);

/// `kvmmmu:kvm_mmu_set_spte` gfn.
pub const SET_SPTE_GFN: Field = ("kvmmmu", "kvm_mmu_set_spte", "gfn", 8, 8);
/// `kvmmmu:kvm_mmu_set_spte` spte.
pub const SET_SPTE_SPTE: Field = ("kvmmmu", "kvm_mmu_set_spte", "spte", 16, 8);
/// `kvm:kvm_page_fault` fault_address (a guest physical address on TDP hosts).
pub const PAGE_FAULT_ADDRESS: Field = ("kvm", "kvm_page_fault", "fault_address", 24, 8);
/// `kvmmmu:fast_page_fault` cr2_or_gpa.
pub const FAST_PAGE_FAULT_GPA: Field = ("kvmmmu", "fast_page_fault", "cr2_or_gpa", 16, 8);
/// `kvm:kvm_dirty_ring_push` slot.
pub const DIRTY_RING_PUSH_SLOT: Field = ("kvm", "kvm_dirty_ring_push", "slot", 20, 4);
/// `kvm:kvm_dirty_ring_push` offset (frame within the slot).
pub const DIRTY_RING_PUSH_OFFSET: Field = ("kvm", "kvm_dirty_ring_push", "offset", 24, 8);
/// `kvmmmu:kvm_mmu_paging_element` pte.
pub const PAGING_ELEMENT_PTE: Field = ("kvmmmu", "kvm_mmu_paging_element", "pte", 8, 8);
/// `kvmmmu:kvm_mmu_paging_element` level.
pub const PAGING_ELEMENT_LEVEL: Field = ("kvmmmu", "kvm_mmu_paging_element", "level", 16, 4);

/// The programs, with the tracepoint each attaches to and the fields it reads.
pub const PROGRAMS: [(&str, &str, &str, &[Field]); 5] = [
    (
        "kvm_mmu_set_spte",
        "kvmmmu",
        "kvm_mmu_set_spte",
        &[SET_SPTE_GFN, SET_SPTE_SPTE],
    ),
    (
        "kvm_page_fault",
        "kvm",
        "kvm_page_fault",
        &[PAGE_FAULT_ADDRESS],
    ),
    (
        "fast_page_fault",
        "kvmmmu",
        "fast_page_fault",
        &[FAST_PAGE_FAULT_GPA],
    ),
    (
        "kvm_dirty_ring_push",
        "kvm",
        "kvm_dirty_ring_push",
        &[DIRTY_RING_PUSH_SLOT, DIRTY_RING_PUSH_OFFSET],
    ),
    (
        "kvm_mmu_paging_element",
        "kvmmmu",
        "kvm_mmu_paging_element",
        &[PAGING_ELEMENT_PTE, PAGING_ELEMENT_LEVEL],
    ),
];

#[cfg(feature = "user")]
// SAFETY: TraceConfig is repr(C), Copy, and has no padding (three u32).
unsafe impl aya::Pod for TraceConfig {}
