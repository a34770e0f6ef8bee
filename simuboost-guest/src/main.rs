//! The simuboost guest.
//!
//! The VMM enters `_start` in 64-bit long mode, ring 0, with paging (identity map), GDT, TSS
//! and IDT already in place (see `simuboost_abi::layout`). The ring-0 part is eight
//! instructions: it builds an `iretq` frame and drops to ring 3, because on PVM hosts ring-0 code
//! is emulated instruction by instruction while ring-3 code runs natively. Everything else —
//! reading the boot configuration, running the workload, printing the result — happens in
//! ring 3 and talks to the VMM only through the paravirtual device (`device`).
//!
//! An exception jumps to one of 32 ring-0 stubs in `.exception_stubs`, which reports its vector
//! on `PORT_EXCEPTION`; the VMM treats that as a crash and prints the exception frame.
#![no_std]
#![no_main]
// The crate defines memcpy/memmove/memset (`mem`): the compiler must not turn their loops into
// calls to themselves.
#![no_builtins]

mod device;
mod mem;

use core::fmt::Write;
use core::panic::PanicInfo;

use simuboost_abi::{selectors, WorkloadId, GUEST_HEAP_BYTES, PORT_EXCEPTION, USER_RFLAGS};
use simuboost_workloads::{RunConfig, WorkloadError};

use device::Device;

core::arch::global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    // As if user_main had been called: the SysV ABI wants rsp + 8 16-byte aligned at a
    // function's entry, and SSE code relies on it (movaps to stack slots).
    lea rax, [rip + __user_stack_top - 8]
    push {user_ss}
    push rax
    push {user_rflags}
    push {user_cs}
    lea rax, [rip + {user_main}]
    push rax
    iretq

    .section .exception_stubs, "ax"
    .set vector, 0
    .rept 32
    .balign 16
    mov eax, vector
    mov dx, {exception_port}
    out dx, eax
2:  hlt
    jmp 2b
    .set vector, vector + 1
    .endr
    .balign 16
    "#,
    user_ss = const selectors::USER_DATA as u64,
    user_cs = const selectors::USER_CODE as u64,
    user_rflags = const USER_RFLAGS,
    user_main = sym user_main,
    exception_port = const PORT_EXCEPTION,
);

#[global_allocator]
static ALLOCATOR: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

/// Exit status for a workload that failed (as opposed to a panic, which exits with 101).
const EXIT_WORKLOAD_FAILED: u64 = 2;

/// Ring-3 entry point.
extern "C" fn user_main() -> ! {
    let mut device = Device::new();
    let config = device.boot_config();

    let Some(workload) = WorkloadId::from_raw(config.workload) else {
        let _ = writeln!(device, "guest: unknown workload id {}", config.workload);
        device.exit(EXIT_WORKLOAD_FAILED);
    };
    let heap_start = config.free_start;
    let arena_start = simuboost_abi::arena_start(heap_start);
    if arena_start >= config.mem_bytes {
        let _ = writeln!(
            device,
            "guest: {} bytes of RAM leave no room for the workload",
            config.mem_bytes
        );
        device.exit(EXIT_WORKLOAD_FAILED);
    }
    // SAFETY: [heap_start, heap_start + GUEST_HEAP_BYTES) is RAM that nothing else uses: the VMM placed
    // free_start after the image and its stack, and the arena starts above the heap.
    unsafe {
        ALLOCATOR
            .lock()
            .init(heap_start as *mut u8, GUEST_HEAP_BYTES as usize);
    }
    // SAFETY: [arena_start, arena_start + arena_bytes) lies in [arena_start, mem_bytes), which
    // is identity-mapped RAM owned by nothing else; this is the only reference to it.
    let arena = unsafe {
        core::slice::from_raw_parts_mut(
            arena_start as *mut u8,
            simuboost_abi::arena_bytes(&config) as usize,
        )
    };
    let run_config = RunConfig {
        workload,
        seed: config.seed,
        work_units: config.work_units,
        disk_blocks: config.disk_blocks,
        disk_data_bytes: config.disk_data_bytes,
    };
    let _ = writeln!(
        device,
        "guest: workload {} on {} MiB arena, seed {:#x}, {}",
        workload.name(),
        arena.len() >> 20,
        config.seed,
        match config.work_units {
            0 => WorkAmount::UntilStopped,
            n => WorkAmount::Units(n),
        }
    );
    match simuboost_workloads::run(&run_config, &mut device, arena) {
        Ok(outcome) => {
            let _ = writeln!(
                device,
                "result: workload={} units={} checksum={:#018x}",
                workload.name(),
                outcome.units_done,
                outcome.checksum
            );
            device.exit(0)
        }
        Err(err) => {
            let _ = writeln!(device, "guest: workload failed: {}", Failure(err));
            device.exit(EXIT_WORKLOAD_FAILED)
        }
    }
}

enum WorkAmount {
    UntilStopped,
    Units(u64),
}

impl core::fmt::Display for WorkAmount {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WorkAmount::UntilStopped => f.write_str("until stopped"),
            WorkAmount::Units(n) => write!(f, "{n} units"),
        }
    }
}

struct Failure(WorkloadError);

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            WorkloadError::ArenaTooSmall { needed, available } => write!(
                f,
                "arena too small: needs {} MiB, has {} MiB",
                needed >> 20,
                available >> 20
            ),
            WorkloadError::NoDisk => f.write_str("this workload needs a disk with a data set"),
            WorkloadError::Disk(e) => write!(f, "disk error (status {})", e.status),
        }
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let mut device = Device::new();
    let _ = writeln!(device, "guest panic: {info}");
    device.exit(101)
}
