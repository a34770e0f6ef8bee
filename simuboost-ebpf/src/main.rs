//! eBPF programs on KVM's MMU tracepoints that record which guest frames the traced VM touches.
//!
//! Only events of the thread group named in `CONFIG` are recorded (the daemon's VM). Frames go
//! into `TOUCHED`, a hash map the daemon drains at every interval boundary; an insert that
//! fails because the map is full is counted in `COUNTERS[Drops]`, so an interval with a drop can
//! be marked incomplete instead of silently wrong.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
};
use simuboost_common::{touch_flags, Counter, TraceConfig, COUNTER_COUNT, MAX_TOUCHED_FRAMES};

#[map(name = "CONFIG")]
static CONFIG: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map(name = "TOUCHED")]
static TOUCHED: HashMap<u64, u8> = HashMap::with_max_entries(MAX_TOUCHED_FRAMES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Offsets in `kvmmmu:kvm_mmu_set_spte` (checked against tracefs by the loader).
const SET_SPTE_GFN_OFFSET: usize = 8;
const SET_SPTE_SPTE_OFFSET: usize = 16;
/// Bit 1 of an SPTE: the mapping is writable.
const SPTE_WRITABLE: u64 = 1 << 1;

fn traced() -> bool {
    match CONFIG.get(0) {
        Some(config) => {
            config.enabled != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == config.tgid
        }
        None => false,
    }
}

fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a live per-CPU array; nothing else on this
        // CPU runs concurrently with a tracepoint program.
        unsafe { *value += 1 };
    }
}

fn record(gfn: u64, flags: u8) {
    count(Counter::Events);
    // SAFETY: the pointer is to a live map value, valid for this program run.
    let old = TOUCHED.get_ptr(&gfn).map_or(0, |old| unsafe { *old });
    let merged = old | flags;
    if TOUCHED.insert(&gfn, &merged, 0).is_err() {
        count(Counter::Drops);
    }
}

/// `kvmmmu:kvm_mmu_set_spte`: KVM installed a mapping of a guest frame (shadow paging and TDP).
#[tracepoint(category = "kvmmmu", name = "kvm_mmu_set_spte")]
pub fn kvm_mmu_set_spte(ctx: TracePointContext) -> u32 {
    if !traced() {
        return 0;
    }
    // SAFETY: the offsets lie inside the tracepoint's record (verified against tracefs).
    let (gfn, spte) = unsafe {
        (
            ctx.read_at::<u64>(SET_SPTE_GFN_OFFSET),
            ctx.read_at::<u64>(SET_SPTE_SPTE_OFFSET),
        )
    };
    if let (Ok(gfn), Ok(spte)) = (gfn, spte) {
        let writable = if spte & SPTE_WRITABLE != 0 {
            touch_flags::WRITABLE
        } else {
            0
        };
        record(gfn, touch_flags::MAPPED | writable);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
