//! eBPF programs on KVM's MMU tracepoints that report which guest frames the traced VM touches.
//!
//! Only events of the thread group named in `CONFIG` are reported (the daemon's VM). Each is a
//! [`TouchEvent`] in the `EVENTS` ring buffer, which the daemon drains at every interval
//! boundary while the guest is paused; an event that does not fit is counted in
//! `COUNTERS[Drops]`, so an interval with a drop is marked incomplete instead of silently wrong.
//! The field offsets are in `simuboost_common`, where the loader checks them against tracefs.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use simuboost_common::{
    touch_flags, Counter, Field, Source, TouchEvent, TraceConfig, COUNTER_COUNT,
    DEFAULT_EVENTS_BYTES, DEFAULT_REPORTED_FRAMES, DIRTY_RING_PUSH_OFFSET, DIRTY_RING_PUSH_SLOT,
    FAST_PAGE_FAULT_GPA, PAGE_FAULT_ADDRESS, PAGING_ELEMENT_LEVEL, PAGING_ELEMENT_PTE,
    SET_SPTE_GFN, SET_SPTE_SPTE,
};

#[map(name = "CONFIG")]
static CONFIG: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "REPORTED")]
static REPORTED: Array<u32> = Array::with_max_entries(DEFAULT_REPORTED_FRAMES, 0);

/// Bit 1 of an SPTE: the mapping is writable.
const SPTE_WRITABLE: u64 = 1 << 1;
/// The accessed bit of an SPTE: bit 5 in the legacy paging format (shadow paging), bit 8 in
/// EPT's. KVM installs *prefetched* SPTEs (neighbours of a faulting entry, mapped
/// speculatively) without it, so an SPTE without it is not an access by the guest.
const SPTE_ACCESSED: u64 = (1 << 5) | (1 << 8);
/// Physical-address bits of a page-table entry.
const PTE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// Bit 7 of a level-2/3 entry: it maps a large page rather than pointing to a table.
const PTE_LARGE: u64 = 1 << 7;
/// Guest RAM is memslot 0 at guest physical 0 (see simuboost-vmm), so a slot offset is a gfn.
const RAM_SLOT: u32 = 0;

/// The current generation if this event comes from the traced VM.
fn traced() -> Option<u32> {
    let config = CONFIG.get(0)?;
    (config.enabled != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == config.tgid)
        .then_some(config.generation)
}

/// Adds one to a counter; returns its previous value on this CPU.
fn count(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        Some(value) => {
            // SAFETY: the pointer is this CPU's slot of a live per-CPU array; nothing else on
            // this CPU runs concurrently with a tracepoint program.
            unsafe {
                let old = *value;
                *value = old + 1;
                old
            }
        }
        None => 0,
    }
}

/// Reports `gfn` unless it was already reported in this generation (interval): KVM's walks and
/// faults name the same frames many times, and the ring only needs each frame's first touch.
fn report(ctx: &TracePointContext, generation: u32, gfn: u64, source: Source, flags: u32) {
    if gfn > u64::from(u32::MAX) {
        return;
    }
    if let Some(last) = REPORTED.get_ptr_mut(gfn as u32) {
        // SAFETY: a live element of the array; one vCPU thread reports at a time, and a lost
        // race would only report a frame twice, which the daemon deduplicates anyway.
        unsafe {
            if *last == generation {
                return;
            }
            *last = generation;
        }
    }
    count(Counter::Events);
    let event = TouchEvent {
        gfn,
        source: source as u32,
        flags,
    };
    if EVENTS.output::<TouchEvent>(&event, 0).is_err() && count(Counter::Drops) == 0 {
        // Once per CPU: the daemon counts every drop and marks the interval incomplete.
        warn!(
            ctx,
            "event ring full: dropping frame {} and later events", gfn
        );
    }
}

/// Reads a tracepoint field.
fn read<T>(ctx: &TracePointContext, field: Field) -> Option<T> {
    // SAFETY: the offset lies inside the tracepoint's record; the loader checked it (and the
    // size) against the running kernel's format file before attaching.
    unsafe { ctx.read_at::<T>(field.3) }.ok()
}

/// `kvmmmu:kvm_mmu_set_spte`: KVM installed a mapping of a guest frame.
#[tracepoint(category = "kvmmmu", name = "kvm_mmu_set_spte")]
pub fn kvm_mmu_set_spte(ctx: TracePointContext) -> u32 {
    if let Some(generation) = traced() {
        if let (Some(gfn), Some(spte)) = (
            read::<u64>(&ctx, SET_SPTE_GFN),
            read::<u64>(&ctx, SET_SPTE_SPTE),
        ) {
            if spte & SPTE_ACCESSED == 0 {
                return 0;
            }
            let flags = if spte & SPTE_WRITABLE != 0 {
                touch_flags::WRITABLE
            } else {
                0
            };
            report(&ctx, generation, gfn, Source::SetSpte, flags);
        }
    }
    0
}

/// `kvm:kvm_page_fault`: on hardware-virtualized (TDP) hosts the address is a guest physical one.
#[tracepoint(category = "kvm", name = "kvm_page_fault")]
pub fn kvm_page_fault(ctx: TracePointContext) -> u32 {
    if let Some(generation) = traced() {
        if let Some(gpa) = read::<u64>(&ctx, PAGE_FAULT_ADDRESS) {
            report(&ctx, generation, gpa >> 12, Source::PageFault, 0);
        }
    }
    0
}

/// `kvmmmu:fast_page_fault`: a fault fixed locklessly (TDP hosts: the address is physical).
#[tracepoint(category = "kvmmmu", name = "fast_page_fault")]
pub fn fast_page_fault(ctx: TracePointContext) -> u32 {
    if let Some(generation) = traced() {
        if let Some(gpa) = read::<u64>(&ctx, FAST_PAGE_FAULT_GPA) {
            report(&ctx, generation, gpa >> 12, Source::FastPageFault, 0);
        }
    }
    0
}

/// `kvm:kvm_dirty_ring_push`: a write, when the dirty ring is in use.
#[tracepoint(category = "kvm", name = "kvm_dirty_ring_push")]
pub fn kvm_dirty_ring_push(ctx: TracePointContext) -> u32 {
    if let Some(generation) = traced() {
        if let (Some(slot), Some(offset)) = (
            read::<u32>(&ctx, DIRTY_RING_PUSH_SLOT),
            read::<u64>(&ctx, DIRTY_RING_PUSH_OFFSET),
        ) {
            if slot == RAM_SLOT {
                report(
                    &ctx,
                    generation,
                    offset,
                    Source::DirtyRingPush,
                    touch_flags::WRITABLE,
                );
            }
        }
    }
    0
}

/// `kvmmmu:kvm_mmu_paging_element`: one entry read by KVM's software walk of the guest page
/// tables (shadow paging). An entry of level 2..4 that is not a large page points to the next
/// table: that table's frame is part of the working set, though no mapping of it is installed.
#[tracepoint(category = "kvmmmu", name = "kvm_mmu_paging_element")]
pub fn kvm_mmu_paging_element(ctx: TracePointContext) -> u32 {
    if let Some(generation) = traced() {
        if let (Some(pte), Some(level)) = (
            read::<u64>(&ctx, PAGING_ELEMENT_PTE),
            read::<u32>(&ctx, PAGING_ELEMENT_LEVEL),
        ) {
            if level >= 2 && pte & 1 != 0 && pte & PTE_LARGE == 0 {
                report(
                    &ctx,
                    generation,
                    (pte & PTE_ADDRESS) >> 12,
                    Source::PageWalk,
                    0,
                );
            }
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
