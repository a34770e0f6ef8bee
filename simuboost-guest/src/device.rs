//! The guest side of the paravirtual device: one MMIO write to the doorbell per request.
//!
//! Guest memory is identity-mapped, so a virtual address is the guest physical address the VMM
//! needs.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use simuboost_abi::{status, BootConfig, Op, Request, DOORBELL_GPA, REQUEST_MAGIC};
use simuboost_workloads::{DiskError, Platform};

/// Console output is collected into lines so that one line costs one exit.
const LINE_BUFFER: usize = 256;

/// Handle to the paravirtual device.
pub struct Device {
    request: Request,
    line: [u8; LINE_BUFFER],
    line_len: usize,
    /// Requests made so far: the canary each one keeps in XMM15 across its exit.
    calls: u64,
}

/// Mixed into the XMM15 canary so that it is never a small number a lost register could hold.
const CANARY_SALT: u64 = 0x5353_455f_6361_6e61;

impl Device {
    pub fn new() -> Device {
        Device {
            request: Request::default(),
            line: [0; LINE_BUFFER],
            line_len: 0,
            calls: 0,
        }
    }

    /// Performs one request; returns `(status, ret)`.
    ///
    /// Every exit also checks that the SSE state survives it: a value set in XMM15 before the
    /// doorbell must still be there after it, in the recording (KVM keeps the guest's state)
    /// and in a replay that starts at this exit (from the checkpoint's XSAVE area, with KVM or
    /// the simulator). Nothing else would notice a lost register: the compiler never keeps one
    /// live across this call (XMM registers are caller-saved and the workloads call the device
    /// through `dyn Platform`).
    fn call(&mut self, op: Op, args: [u64; 3]) -> (u32, u64) {
        self.calls = self.calls.wrapping_add(1);
        let canary = self.calls ^ CANARY_SALT;
        let kept: u64;
        let request = addr_of_mut!(self.request);
        // SAFETY: `request` points to our own, live Request; volatile so the stores happen before
        // the doorbell and the loads after it.
        unsafe {
            write_volatile(
                request,
                Request {
                    magic: REQUEST_MAGIC,
                    op: op as u32,
                    args,
                    status: u32::MAX,
                    reserved: 0,
                    ret: 0,
                },
            );
            // SAFETY: the doorbell page is mapped (user, writable) by the VMM's page tables and
            // has no RAM behind it: the store exits to the VMM, which performs the request and
            // resumes us. asm (without `nomem`) rather than write_volatile, so that the compiler
            // also assumes the VMM read and wrote memory: the request and its buffers.
            core::arch::asm!(
                "movq xmm15, {canary}",
                "mov qword ptr [{doorbell}], {request}",
                "movq {kept}, xmm15",
                doorbell = in(reg) DOORBELL_GPA,
                request = in(reg) request as u64,
                canary = in(reg) canary,
                kept = lateout(reg) kept,
                out("xmm15") _,
                options(nostack, preserves_flags)
            );
            assert!(
                kept == canary,
                "XMM15 was {kept:#x} after exit {}, not {canary:#x}: the SSE state was lost",
                self.calls
            );
            (
                read_volatile(addr_of!((*request).status)),
                read_volatile(addr_of!((*request).ret)),
            )
        }
    }

    /// Fetches the boot configuration.
    pub fn boot_config(&mut self) -> BootConfig {
        let mut config = BootConfig::default();
        let ptr = addr_of_mut!(config);
        self.call(
            Op::BootConfig,
            [ptr as u64, core::mem::size_of::<BootConfig>() as u64, 0],
        );
        // SAFETY: the VMM wrote the struct during the call; read it back without letting the
        // compiler reuse the zeroes it stored before.
        unsafe { read_volatile(ptr) }
    }

    /// Ends the VM with `status`.
    pub fn exit(&mut self, status: u64) -> ! {
        self.flush_line();
        loop {
            self.call(Op::Exit, [status, 0, 0]);
        }
    }

    fn flush_line(&mut self) {
        if self.line_len > 0 {
            let ptr = self.line.as_ptr() as u64;
            self.call(Op::ConsoleWrite, [ptr, self.line_len as u64, 0]);
            self.line_len = 0;
        }
    }
}

impl core::fmt::Write for Device {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &byte in s.as_bytes() {
            if self.line_len == LINE_BUFFER {
                self.flush_line();
            }
            self.line[self.line_len] = byte;
            self.line_len += 1;
            if byte == b'\n' {
                self.flush_line();
            }
        }
        Ok(())
    }
}

fn disk_result(status_code: u32) -> Result<(), DiskError> {
    if status_code == status::OK {
        Ok(())
    } else {
        Err(DiskError {
            status: status_code,
        })
    }
}

impl Platform for Device {
    fn console_write(&mut self, bytes: &[u8]) {
        self.flush_line();
        self.call(
            Op::ConsoleWrite,
            [bytes.as_ptr() as u64, bytes.len() as u64, 0],
        );
    }

    fn clock_ns(&mut self) -> u64 {
        self.call(Op::ClockRead, [0; 3]).1
    }

    fn random(&mut self, buf: &mut [u8]) {
        self.call(
            Op::RandomRead,
            [buf.as_mut_ptr() as u64, buf.len() as u64, 0],
        );
    }

    fn block_read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let blocks = (buf.len() / simuboost_workloads::BLOCK_SIZE) as u64;
        disk_result(
            self.call(Op::BlockRead, [block, buf.as_mut_ptr() as u64, blocks])
                .0,
        )
    }

    fn block_write(&mut self, block: u64, buf: &[u8]) -> Result<(), DiskError> {
        let blocks = (buf.len() / simuboost_workloads::BLOCK_SIZE) as u64;
        disk_result(
            self.call(Op::BlockWrite, [block, buf.as_ptr() as u64, blocks])
                .0,
        )
    }

    fn yield_now(&mut self) -> bool {
        self.call(Op::Yield, [0; 3]).1 != 0
    }
}
