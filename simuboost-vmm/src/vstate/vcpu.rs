//! The vCPU: 64-bit long-mode setup, the run loop's exits, and register dumps.

use std::fmt;

use kvm_bindings::{
    kvm_debugregs, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use simuboost_abi::{layout, selectors};

/// CR0: paging, write protect, numeric error, extension type, monitor coprocessor, protection.
/// EM (bit 2) and TS (bit 3) are clear: x87/SSE instructions run without faulting.
const CR0_LONG_MODE: u64 = 0x8005_0033;
/// CR4: physical address extension (required for long mode), OSFXSR and OSXMMEXCPT. The guest
/// is compiled with SSE2 (see simuboost-guest's target): without OSFXSR every SSE instruction
/// raises #UD, and OSXMMEXCPT makes an unmasked SIMD float exception #XM rather than #UD.
const CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10);
/// EFER: long mode enabled and active.
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);
/// Segment type of an execute/read, accessed code segment.
const SEG_TYPE_CODE: u8 = 0xb;
/// Segment type of a read/write, accessed data segment.
const SEG_TYPE_DATA: u8 = 0x3;
/// Segment type of a busy 64-bit TSS.
const SEG_TYPE_TSS_BUSY: u8 = 0xb;
/// Limit of the GDT the boot code builds: null, kernel code, kernel data, user data, user code,
/// and a 16-byte TSS descriptor.
pub const GDT_LIMIT: u16 = 7 * 8 - 1;
/// Limit of the 64-bit TSS.
pub const TSS_LIMIT: u32 = 104 - 1;

/// Errors configuring or running the vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The MSR list could not be built.
    #[error("too many MSRs to save")]
    MsrList,
    /// KVM refused to restore an MSR.
    #[error("KVM refused to restore MSR {index:#x}")]
    MsrRestore {
        /// The first MSR not restored.
        index: u32,
    },
    /// A KVM vCPU ioctl failed.
    #[error("KVM vCPU {what} failed: {source}")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The error KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl { what, source }
}

/// Why `KVM_RUN` returned, reduced to what the VMM acts on.
#[derive(Debug)]
pub enum Exit {
    /// A write of `value` (zero-extended) to `addr`, where no RAM is: a guest-initiated exit.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// The value written.
        value: u64,
    },
    /// A read from `addr`, where no RAM is: the guest never does this; answered with all ones.
    MmioRead {
        /// Guest physical address.
        addr: u64,
    },
    /// `out` to `port` with `value` (zero-extended): a guest-initiated exit.
    PortWrite {
        /// The port.
        port: u16,
        /// The value written.
        value: u32,
    },
    /// `in` from `port`: the guest never does this; answered with all ones.
    PortRead {
        /// The port.
        port: u16,
    },
    /// `KVM_RUN` was interrupted by a signal (a kick); not guest-initiated.
    Interrupted,
    /// The dirty ring is (soft) full and must be harvested.
    DirtyRingFull,
    /// The guest halted.
    Halt,
    /// Triple fault.
    Shutdown,
    /// Anything else KVM reported, by name.
    Other(String),
}

/// vCPU 0 of the VM.
pub struct Vcpu {
    fd: VcpuFd,
}

fn segment(selector: u16, type_: u8, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd) -> Vcpu {
        Vcpu { fd }
    }

    /// Gives the vCPU `cpuid`: before its first run, once.
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl("set CPUID"))
    }

    /// Sets CPUID, long-mode system registers and the entry registers.
    pub(crate) fn configure(&self, cpuid: &CpuId, entry: u64) -> Result<(), VcpuError> {
        self.set_cpuid(cpuid)?;

        let mut sregs = self.fd.get_sregs().map_err(ioctl("get sregs"))?;
        sregs.cr0 = CR0_LONG_MODE;
        sregs.cr3 = layout::PML4;
        sregs.cr4 = CR4;
        sregs.efer = EFER_LME_LMA;
        sregs.cs = segment(selectors::KERNEL_CODE, SEG_TYPE_CODE, true);
        let data = segment(selectors::KERNEL_DATA, SEG_TYPE_DATA, false);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            base: layout::TSS,
            limit: TSS_LIMIT,
            selector: selectors::TSS,
            type_: SEG_TYPE_TSS_BUSY,
            present: 1,
            s: 0,
            ..Default::default()
        };
        sregs.gdt.base = layout::GDT;
        sregs.gdt.limit = GDT_LIMIT;
        sregs.idt.base = layout::IDT;
        sregs.idt.limit = (layout::IDT_ENTRIES * 16 - 1) as u16;
        self.fd.set_sregs(&sregs).map_err(ioctl("set sregs"))?;

        let regs = kvm_regs {
            rip: entry,
            rsp: layout::KERNEL_STACK_TOP,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(ioctl("set regs"))?;
        Ok(())
    }

    /// Runs the guest until its next exit.
    pub fn run(&mut self) -> Result<Exit, VcpuError> {
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut bytes = [0u8; 4];
                let n = data.len().min(4);
                bytes[..n].copy_from_slice(&data[..n]);
                Ok(Exit::PortWrite {
                    port,
                    value: u32::from_le_bytes(bytes),
                })
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(0xff);
                Ok(Exit::PortRead { port })
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let mut bytes = [0u8; 8];
                let n = data.len().min(8);
                bytes[..n].copy_from_slice(&data[..n]);
                Ok(Exit::MmioWrite {
                    addr,
                    value: u64::from_le_bytes(bytes),
                })
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0xff);
                Ok(Exit::MmioRead { addr })
            }
            Ok(VcpuExit::Hlt) => Ok(Exit::Halt),
            Ok(VcpuExit::Shutdown) => Ok(Exit::Shutdown),
            Ok(VcpuExit::Intr) => Ok(Exit::Interrupted),
            Ok(VcpuExit::Unsupported(reason))
                if reason == kvm_bindings::KVM_EXIT_DIRTY_RING_FULL =>
            {
                Ok(Exit::DirtyRingFull)
            }
            Ok(other) => Ok(Exit::Other(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(Exit::Interrupted)
            }
            Err(e) => Err(VcpuError::Ioctl {
                what: "run",
                source: e,
            }),
        }
    }

    /// Completes the instruction of the last exit without running the guest further: an MMIO
    /// write is retired (RIP moves past it) only on the next `KVM_RUN`. With `immediate_exit`
    /// set, that `KVM_RUN` finishes the pending work and returns at once, so the state read
    /// afterwards is the state right after the doorbell write (what KVM's API asks of a VMM
    /// before saving state).
    pub fn complete_pending_exit(&mut self) -> Result<(), VcpuError> {
        self.fd.set_kvm_immediate_exit(1);
        // KVM runs no guest code with immediate_exit set, whatever exit it reports.
        let result = self.fd.run().map(|_| ()).err();
        self.fd.set_kvm_immediate_exit(0);
        match result {
            None => Ok(()),
            Some(e) if e.errno() == libc::EINTR => Ok(()),
            Some(e) => Err(VcpuError::Ioctl {
                what: "run (complete pending exit)",
                source: e,
            }),
        }
    }

    /// Saves the vCPU state KVM needs to resume identically.
    pub fn save_state(&self) -> Result<VcpuSnapshot, VcpuError> {
        let mut msrs = Msrs::from_entries(
            &SAVED_MSRS
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| VcpuError::MsrList)?;
        let read = self.fd.get_msrs(&mut msrs).map_err(ioctl("get MSRs"))?;
        Ok(VcpuSnapshot {
            regs: self.fd.get_regs().map_err(ioctl("get regs"))?,
            sregs: self.fd.get_sregs().map_err(ioctl("get sregs"))?,
            xsave: self.fd.get_xsave().map_err(ioctl("get XSAVE"))?,
            xcrs: self.fd.get_xcrs().map_err(ioctl("get XCRs"))?,
            debugregs: self
                .fd
                .get_debug_regs()
                .map_err(ioctl("get debug registers"))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(ioctl("get vCPU events"))?,
            msrs: msrs.as_slice()[..read]
                .iter()
                .map(|e| (e.index, e.data))
                .collect(),
        })
    }

    /// Restores a state saved by [`Vcpu::save_state`].
    pub fn restore_state(&self, state: &VcpuSnapshot) -> Result<(), VcpuError> {
        self.fd
            .set_sregs(&state.sregs)
            .map_err(ioctl("set sregs"))?;
        self.fd.set_regs(&state.regs).map_err(ioctl("set regs"))?;
        // SAFETY: `state.xsave` came from KVM_GET_XSAVE (or its saved bytes) and is the
        // legacy 4 KiB area, which is what KVM_SET_XSAVE reads.
        unsafe { self.fd.set_xsave(&state.xsave) }.map_err(ioctl("set XSAVE"))?;
        self.fd.set_xcrs(&state.xcrs).map_err(ioctl("set XCRs"))?;
        self.fd
            .set_debug_regs(&state.debugregs)
            .map_err(ioctl("set debug registers"))?;
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(ioctl("set vCPU events"))?;
        let entries: Vec<kvm_msr_entry> = state
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList)?;
        let written = self.fd.set_msrs(&msrs).map_err(ioctl("set MSRs"))?;
        if written != entries.len() {
            return Err(VcpuError::MsrRestore {
                index: entries.get(written).map_or(0, |e| e.index),
            });
        }
        Ok(())
    }

    /// Reads the general-purpose and system registers.
    pub fn registers(&self) -> Result<Registers, VcpuError> {
        Ok(Registers {
            regs: self.fd.get_regs().map_err(ioctl("get regs"))?,
            sregs: self.fd.get_sregs().map_err(ioctl("get sregs"))?,
        })
    }

    /// The vCPU file descriptor, for save/restore of the full state.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }
}

/// A register dump, printed when the guest crashes.
#[derive(Clone, Debug)]
pub struct Registers {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// System registers.
    pub sregs: kvm_sregs,
}

impl fmt::Display for Registers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(
            f,
            "  rip={:#018x} rsp={:#018x} rflags={:#010x}",
            r.rip, r.rsp, r.rflags
        )?;
        writeln!(
            f,
            "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
            r.rsi, r.rdi, r.rbp, r.r8
        )?;
        writeln!(
            f,
            "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
            r.r9, r.r10, r.r11, r.r12
        )?;
        writeln!(
            f,
            "  r13={:#018x} r14={:#018x} r15={:#018x}",
            r.r13, r.r14, r.r15
        )?;
        write!(
            f,
            "  cs={:#06x} ss={:#06x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            s.cs.selector, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        )
    }
}

/// MSRs saved with the vCPU: the ones a 64-bit guest could have changed (SYSCALL/SYSENTER
/// setup, kernel GS base, PAT, TSC). FS/GS bases and EFER travel in the sregs.
const SAVED_MSRS: [u32; 10] = [
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x277,       // IA32_PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0x10,        // IA32_TSC
];

/// The vCPU state KVM needs to resume identically.
pub struct VcpuSnapshot {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state (the XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
    /// MSR index and value pairs.
    pub msrs: Vec<(u32, u64)>,
}

impl VcpuSnapshot {
    /// The frames the system registers point at, below `mem_bytes`: the root of the page tables
    /// (CR3) and the descriptor tables (GDT, IDT, TSS; their bases are identity-mapped in our
    /// guest). The CPU reads them on every TLB miss, interrupt and privilege change, but an
    /// MMU tracer cannot see it: KVM starts every walk at CR3 but reports only the entries it
    /// reads, which name the next level, and on PVM the descriptor tables are read by KVM's
    /// instruction emulator, not through the MMU. The recorder adds them to every access log
    /// (source `vcpu`); the replayer loads them in sparse mode whatever the log says.
    pub fn system_frames(&self, mem_bytes: u64) -> Vec<u64> {
        let s = &self.sregs;
        let page = simuboost_abi::PAGE_SIZE;
        let mut frames = vec![(s.cr3 & simuboost_abi::pte::ADDRESS_MASK) / page];
        for (base, limit) in [
            (s.gdt.base, u64::from(s.gdt.limit)),
            (s.idt.base, u64::from(s.idt.limit)),
            (s.tr.base, u64::from(s.tr.limit)),
        ] {
            let end = base.saturating_add(limit).min(mem_bytes.saturating_sub(1));
            if base < mem_bytes {
                frames.extend(base / page..=end / page);
            }
        }
        frames.retain(|&gfn| gfn < mem_bytes / page);
        frames
    }
}
