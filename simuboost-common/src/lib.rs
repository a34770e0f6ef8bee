//! Types shared by simuboost's eBPF programs (`simuboost-ebpf`) and the daemon that loads them.
//!
//! `no_std` and `repr(C)`, so both sides agree on every byte.
#![no_std]

/// Name of the array map holding the [`TraceConfig`] (one entry, index 0).
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the hash map of frames touched since the daemon last drained it: key gfn (u64),
/// value [`TouchFlags`] bits (u8).
pub const TOUCHED_MAP: &str = "TOUCHED";
/// Name of the per-CPU array of counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Capacity of [`TOUCHED_MAP`]: frames one interval can record before drops start.
pub const MAX_TOUCHED_FRAMES: u32 = 1 << 20;

/// What the loader tells the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Only events from this thread group (the daemon's VM process) are recorded.
    pub tgid: u32,
    /// Non-zero while recording.
    pub enabled: u32,
}

/// Bits of a [`TOUCHED_MAP`] value.
pub mod touch_flags {
    /// The frame was mapped by KVM's MMU (`kvm_mmu_set_spte` and friends).
    pub const MAPPED: u8 = 1 << 0;
    /// The mapping was writable (not proof of a write: writes come from the dirty log).
    pub const WRITABLE: u8 = 1 << 1;
}

/// Indexes of [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events from the traced VM.
    Events = 0,
    /// Events lost because [`TOUCHED_MAP`] was full.
    Drops = 1,
}

/// Number of counters.
pub const COUNTER_COUNT: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: TraceConfig is repr(C), Copy, and has no padding (two u32).
unsafe impl aya::Pod for TraceConfig {}
