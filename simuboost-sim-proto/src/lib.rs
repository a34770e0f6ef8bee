//! The protocol between simuboost's replayer and its functional simulator, and the replayer's
//! side of it.
//!
//! # Licence boundary
//! This crate is `MIT OR Apache-2.0`, like the rest of simuboost. The simulator itself
//! (`simuboost-sim`) links unicorn-engine and is therefore **GPL-2.0-only**; it depends on this
//! crate (taken under MIT), never the other way round. The replayer (`simuboost-replay`, which
//! links Apache-2.0-only crates) talks to the simulator only as a separate process through the
//! messages below, so no GPL code ends up in its binary. Keep unicorn (and anything GPL) out of
//! this crate.
//!
//! # Process model
//! The parent creates guest RAM as a memfd, maps it shared, and spawns `simuboost-sim --memfd N
//! --socket M` with the memfd and one end of a `socketpair(AF_UNIX, SOCK_STREAM)` inherited
//! ([`SimProcess::spawn`]). The simulator maps the memfd, registers its mapping with a
//! userfaultfd of its own and sends that fd over the socket (`SCM_RIGHTS`), then [`FromSim::Ready`].
//! From then on every page the parent has not installed blocks the simulator until the parent
//! installs it (`UFFDIO_COPY` on the received fd). Then, in frames ([`write_frame`]):
//!
//! ```text
//! parent                         simulator
//!   Start ───────────────────────►  runs to the next doorbell write
//!         ◄─────────────────────── Trace(batch) ... (only with the trace analysis)
//!         ◄─────────────────────── Exit::Doorbell { gpa, instructions }
//!   (device works on shared RAM)
//!   Resume { written } ──────────►  invalidates those frames, runs on
//!         ◄─────────────────────── Exit::Doorbell / Crash / Error
//!   Finish ──────────────────────►
//!         ◄─────────────────────── Final { cpu, instructions, accessed, analysis, ... }
//! ```
#![deny(missing_docs)]

mod analysis;
mod client;
mod fdpass;
mod frame;
mod trace_frame;

pub use analysis::{
    AccessKind, AnalysisRequest, AnalysisResults, BlockCache, BlockCount, CacheConfig, CacheLevel,
    CacheResults, CustomResult, LevelCounts, PageCount, TraceBatch, TraceRequest, TraceSummary,
};
pub use client::{locate_binary, ClientError, SimProcess, SIM_BINARY, SIM_ENV};
pub use fdpass::{recv_fd, send_fd};
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_BYTES};
pub use trace_frame::{read_from_sim, write_trace};

use serde::{Deserialize, Serialize};

/// Version of the messages below. The simulator announces it in [`FromSim::Ready`] and the
/// client refuses a simulator that speaks another one (a stale binary next to a new replayer).
///
/// Version 2: analyses ([`Start::analyses`], [`FromSim::Trace`], [`Final::analysis`]).
/// Version 3: the SSE state ([`CpuState::xmm`], [`CpuState::mxcsr`]).
pub const PROTOCOL_VERSION: u32 = 3;

/// One segment register, a faithful mirror of KVM's `kvm_segment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit, in bytes (already scaled by the granularity bit, as KVM reports it).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Descriptor type (4 bits, including the accessed bit).
    pub type_: u8,
    /// Present.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (D/B).
    pub db: u8,
    /// Code/data (1) or system (0) descriptor.
    pub s: u8,
    /// 64-bit code segment.
    pub l: u8,
    /// Granularity.
    pub g: u8,
    /// Available for software.
    pub avl: u8,
    /// Unusable (a null selector), as KVM reports it.
    pub unusable: u8,
}

/// A descriptor-table register (GDTR, IDTR), a mirror of KVM's `kvm_dtable`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The vCPU state the simulator starts from and ends with: `kvm_regs` and `kvm_sregs` field by
/// field, plus MSRs. The replayer converts to and from KVM's structures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the register names are their documentation
pub struct CpuState {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// MSR index and value pairs (KERNEL_GS_BASE, STAR, LSTAR, ... ; the TSC is ignored: the
    /// guest never reads it). On output: the same MSRs, read back.
    pub msrs: Vec<(u32, u64)>,
    /// XMM0-15, each as (low, high) 64-bit halves: the guest is compiled with SSE2, so values
    /// may live in them across an interval boundary. (The x87 and AVX state are not carried:
    /// the guest uses neither.)
    pub xmm: [[u64; 2]; 16],
    /// MXCSR (SSE rounding and exception control).
    pub mxcsr: u32,
}

/// A run of guest frames: first frame number and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRun {
    /// First guest frame number.
    pub first_gfn: u64,
    /// Number of frames.
    pub count: u64,
}

/// Parent → simulator: what to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    /// Protocol version the parent speaks (must be [`PROTOCOL_VERSION`]).
    pub version: u32,
    /// Guest RAM size in bytes (must match the memfd's size).
    pub mem_bytes: u64,
    /// The interval's starting vCPU state (checkpoint N).
    pub cpu: CpuState,
    /// The interval number (for messages only).
    pub interval: u64,
    /// Wall-clock budget of each run between two exits, in milliseconds (0 = none): the
    /// simulator reports an error rather than spin forever.
    pub timeout_ms: u64,
    /// Count instructions exactly.
    pub count_instructions: bool,
    /// Record the exact set of frames the interval accessed.
    pub working_set: bool,
    /// Analyses to run (issue 11); their results come in [`Final::analysis`], the trace in
    /// [`FromSim::Trace`] batches before each exit.
    pub analyses: AnalysisRequest,
}

/// Parent → simulator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToSim {
    /// Set up the CPU and run to the first exit.
    Start(Box<Start>),
    /// The device handled the last doorbell; these frames were written behind the simulator's
    /// back (disk data, results): continue.
    Resume {
        /// Frames the device wrote.
        written: Vec<FrameRun>,
    },
    /// The interval ends here: reply with [`FromSim::Final`] and exit.
    Finish,
}

/// Why the simulator stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// The guest wrote the guest-physical address `gpa` of a request to the doorbell. RIP is
    /// already past the store (as after KVM's `complete_pending_exit`).
    Doorbell {
        /// The value stored: the request's guest-physical address.
        gpa: u64,
        /// Instructions executed in the interval so far, the doorbell store included (0 when
        /// counting is off).
        instructions: u64,
    },
    /// The guest raised an exception (or touched memory that is neither RAM nor the doorbell).
    Crash {
        /// Exception vector (14 = page fault, 13 = #GP, 6 = #UD, ...).
        vector: u32,
        /// Error code, where the simulator knows it (page faults), else 0.
        error_code: u64,
        /// RIP of the faulting instruction.
        rip: u64,
        /// Faulting linear address for a page fault, else 0.
        cr2: u64,
        /// What happened, in words.
        reason: String,
    },
    /// The simulator failed (not the guest): timeout, unicorn error, protocol error.
    Error {
        /// What failed.
        message: String,
    },
}

/// One guest frame the interval accessed, with how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccessedFrame {
    /// Guest frame number.
    pub gfn: u64,
    /// Data read.
    pub read: bool,
    /// Data written.
    pub write: bool,
    /// Instructions fetched.
    pub fetch: bool,
}

/// The interval's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Final {
    /// The vCPU state at the end.
    pub cpu: CpuState,
    /// Exact number of instructions executed in the interval (0 when counting is off).
    pub instructions: u64,
    /// Frames the interval read, wrote or fetched from (by guest instructions; descriptor-table
    /// reads by the CPU included), sorted by gfn. Empty when the working set is off.
    pub accessed: Vec<AccessedFrame>,
    /// Page-table frames read by page walks, sorted.
    pub page_table_frames: Vec<u64>,
    /// Time spent simulating (excluding waits for the parent), in milliseconds.
    pub sim_ms: f64,
    /// Results of the analyses [`Start::analyses`] asked for.
    pub analysis: AnalysisResults,
}

/// Simulator → parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromSim {
    /// Sent once, right after the userfaultfd.
    Ready {
        /// [`PROTOCOL_VERSION`] of the simulator.
        version: u32,
        /// The simulator's crate version, for messages.
        build: String,
        /// Where guest RAM is mapped in the simulator: page faults on its userfaultfd name
        /// addresses in its address space, and the parent serves them by guest frame.
        ram_base: u64,
    },
    /// Rows of the memory trace, sent while the guest runs (whenever the simulator's buffer is
    /// full) and before each [`FromSim::Exit`] (the rest): only when [`Start::analyses`] asks
    /// for the trace.
    Trace(TraceBatch),
    /// The simulator stopped.
    Exit(Exit),
    /// The reply to [`ToSim::Finish`].
    Final(Box<Final>),
}
