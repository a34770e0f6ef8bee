//! The simulator engine: the interval runs in `simuboost-sim`, a functional simulator
//! (unicorn, QEMU's TCG), in its own process.
//!
//! Licence boundary: `simuboost-sim` is GPL-2.0-only (it links unicorn); this crate is
//! MIT OR Apache-2.0 and links Apache-2.0-only crates (arrow, parquet). The two never share a
//! binary: the replayer spawns the simulator and talks to it over a socket
//! (`simuboost-sim-proto`). Guest RAM is a memfd both processes map: the replayer restores into
//! it and runs the device on it, the simulator executes on it, and the simulator's first
//! touches of frames not restored come to the replayer's miss handler through the simulator's
//! own userfaultfd, exactly like a KVM replay's.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_dtable, kvm_segment, kvm_sregs, kvm_xsave};
use userfaultfd::Uffd;

use simuboost_format::{GeneralRegs, VcpuState};
use simuboost_sim_proto::{
    AnalysisRequest, ClientError, CpuState, DescriptorTable, Exit, Final, FrameRun, Segment,
    SimProcess, Start, PROTOCOL_VERSION,
};
use simuboost_vmm::devices::replay::ReplayDevice;
use simuboost_vmm::devices::{Device, DeviceAction, DeviceError, DeviceEvent};
use simuboost_vmm::machine::{exception_name, MachineError};
use simuboost_vmm::persist::Persist;
use simuboost_vmm::vstate::dirty::DirtyBitmap;
use simuboost_vmm::vstate::memory::{create_shared_guest_memory, GuestMemory};
use simuboost_vmm::vstate::vcpu::VcpuSnapshot;

use super::kvm::{early_exit, timeout_message};
use super::{ReplayEngine, RunOutcome};
use crate::analysis::{Analyses, IntervalAnalysis, IntervalSummary};
use crate::replay::{IntervalInputs, ReplayError};
use crate::restore::{shared_resident_bytes, PeerUffd};
use crate::verify::{self, Divergence};

/// The MSR the guest never reads and that keeps counting: not handed to the simulator.
const MSR_TSC: u32 = 0x10;
/// RFLAGS bits that instructions leave architecturally undefined and unicorn computes
/// differently from the CPU (AF after shifts, for one): masked when comparing.
const RFLAGS_UNDEFINED: u64 = 1 << 4;
/// MXCSR's sticky exception flags (IE, DE, ZE, OE, UE, PE): unicorn reads MXCSR back without
/// the flags its softfloat accumulated (QEMU merges them only for STMXCSR/FXSAVE), so only the
/// control bits are compared. The guest never reads the flags.
const MXCSR_FLAGS: u32 = 0x3f;
/// How much longer than the replay's timeout the simulator's own limit is.
const SIM_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// The simulator engine's state for one interval.
pub struct SimEngine {
    memory: GuestMemory,
    /// The memory file behind `memory`, shared with the simulator.
    file: File,
    process: Option<SimProcess>,
    /// The simulator's outcome (after a run that reached its end).
    outcome: Option<Final>,
    /// Frames the device wrote during the interval.
    device_written: BTreeSet<u64>,
    /// The analyses to run, if any (`--analysis`).
    analyses: Option<Arc<Analyses>>,
    /// What they found, once the interval ran to its end.
    analysis: Option<IntervalSummary>,
    /// The interval's events, from `prepare` until `run` feeds them.
    events: Option<Vec<DeviceEvent>>,
}

/// What a simulated interval tells (beyond the verification every engine gets).
pub struct Observations {
    /// Instructions executed, exactly.
    pub instructions: u64,
    /// Frames the guest's instructions read, wrote or fetched from, and the page-table frames
    /// its walks read, sorted.
    pub accessed: BTreeSet<u64>,
    /// Page-table frames read by page walks.
    pub page_table_frames: BTreeSet<u64>,
    /// Frames the device wrote.
    pub device_written: BTreeSet<u64>,
    /// Time the simulator spent executing.
    pub sim_ms: f64,
    /// What the analyses found (`--analysis`).
    pub analysis: Option<IntervalSummary>,
}

impl SimEngine {
    /// Guest RAM for a simulated replay: a memory file both processes map. `analyses`: what
    /// to run on the interval besides the replay, and where the results go.
    pub fn new(mem_bytes: u64, analyses: Option<Arc<Analyses>>) -> Result<SimEngine, ReplayError> {
        let (memory, file) = create_shared_guest_memory(mem_bytes).map_err(MachineError::from)?;
        Ok(SimEngine {
            memory,
            file,
            process: None,
            outcome: None,
            device_written: BTreeSet::new(),
            analyses,
            analysis: None,
            events: None,
        })
    }

    fn process(&mut self) -> Result<&mut SimProcess, ReplayError> {
        self.process.as_mut().ok_or(ReplayError::NotPrepared)
    }

    fn outcome(&self) -> Result<&Final, ReplayError> {
        self.outcome.as_ref().ok_or(ReplayError::NotPrepared)
    }

    /// What the simulation observed, once the interval ran to its end.
    pub fn observations(&self) -> Option<Observations> {
        let outcome = self.outcome.as_ref()?;
        let page_table_frames: BTreeSet<u64> = outcome.page_table_frames.iter().copied().collect();
        let mut accessed: BTreeSet<u64> = outcome.accessed.iter().map(|a| a.gfn).collect();
        accessed.extend(&page_table_frames);
        Some(Observations {
            instructions: outcome.instructions,
            accessed,
            page_table_frames,
            device_written: self.device_written.clone(),
            sim_ms: outcome.sim_ms,
            analysis: self.analysis.clone(),
        })
    }

    /// Runs the simulator through the interval's exits; `None` when it reached the end. Trace
    /// batches that arrive on the way go to `analysis`.
    fn drive(
        &mut self,
        inputs: &IntervalInputs,
        device: &mut ReplayDevice,
        timeout: Duration,
        failed: &AtomicBool,
        exits: &mut u64,
        mut analysis: Option<&mut IntervalAnalysis<'_>>,
    ) -> Result<Option<Divergence>, ReplayError> {
        let end_exit = inputs.record.end_exit;
        let deadline = Instant::now() + timeout;
        loop {
            if failed.load(Ordering::SeqCst) {
                // The miss handler failed; the caller reports its error.
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let process = self.process()?;
            process.set_timeout(Some(left.max(Duration::from_millis(1))))?;
            let next = match analysis.as_deref_mut() {
                Some(analysis) => process.next_exit_with(&mut |batch| analysis.trace_batch(batch)),
                None => process.next_exit(),
            };
            let exit = match next {
                Ok(exit) => exit,
                Err(ClientError::Timeout(_)) => {
                    return Ok(Some(Divergence::timeout(
                        *exits,
                        timeout_message(timeout, *exits, end_exit),
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            match exit {
                Exit::Doorbell { gpa, .. } => {
                    *exits += 1;
                    let action = device.handle(&self.memory, *exits, gpa);
                    let written = device.take_written();
                    self.device_written.extend(written.iter());
                    match action {
                        Ok(DeviceAction::Continue) => {
                            self.process()?.resume(frame_runs(&written))?;
                        }
                        Ok(DeviceAction::Pause) => return Ok(None),
                        Ok(DeviceAction::Exit(_)) if *exits == end_exit => return Ok(None),
                        Ok(DeviceAction::Exit(status)) => {
                            return Ok(Some(early_exit(status, *exits, end_exit)))
                        }
                        Err(DeviceError::Divergence { exit, what }) => {
                            return Ok(Some(Divergence::request(exit, what)))
                        }
                        Err(e) => return Err(MachineError::from(e).into()),
                    }
                }
                Exit::Crash {
                    vector,
                    error_code,
                    rip,
                    cr2,
                    reason,
                } => {
                    let mut what = format!(
                        "the guest raised exception {vector} ({}) at rip {rip:#x}",
                        exception_name(vector)
                    );
                    if vector == 14 {
                        what.push_str(&format!(", address {cr2:#x}, error code {error_code:#x}"));
                    }
                    what.push_str(&format!(" in the simulator: {reason}"));
                    return Ok(Some(Divergence::crash(*exits, what)));
                }
                Exit::Error { message } => return Err(ReplayError::Simulator(message)),
            }
        }
    }
}

impl ReplayEngine for SimEngine {
    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn memory_is_private(&self) -> bool {
        // The simulator maps the same memory file, and its first touches come to our handler.
        false
    }

    fn peers(&mut self) -> Result<Vec<PeerUffd>, ReplayError> {
        let binary = simuboost_sim_proto::locate_binary()?;
        let (process, uffd) = SimProcess::spawn(&binary, self.file.as_fd())?;
        // SAFETY: `uffd` is the simulator's userfaultfd, received over the socket and owned by
        // nothing else; Uffd takes ownership of the descriptor.
        let uffd = unsafe { Uffd::from_raw_fd(uffd.into_raw_fd()) };
        let base = process.ram_base();
        self.process = Some(process);
        Ok(vec![PeerUffd { uffd, base }])
    }

    fn prepare(&mut self, _: &IntervalInputs, events: Vec<DeviceEvent>) -> Result<(), ReplayError> {
        // The simulator builds its CPU from the state sent with `Start`.
        self.process()?;
        self.events = Some(events);
        Ok(())
    }

    fn run(
        &mut self,
        inputs: &IntervalInputs,
        timeout: Duration,
        failed: Arc<AtomicBool>,
    ) -> Result<RunOutcome, ReplayError> {
        let events = self.events.take().ok_or(ReplayError::NotPrepared)?;
        let mut device = ReplayDevice::new(
            events,
            inputs.record.end_exit,
            inputs.mem_bytes,
            inputs.machine.device.clone(),
        )
        .with_stored_pages(inputs.source.clone());
        let mut start = Start {
            version: PROTOCOL_VERSION,
            mem_bytes: inputs.mem_bytes,
            cpu: cpu_state(&inputs.machine.vcpu),
            interval: inputs.record.interval,
            // The simulator's own limit is a backstop; the replayer's (below) reports first.
            timeout_ms: u64::try_from((timeout + SIM_TIMEOUT_SLACK).as_millis())
                .unwrap_or(u64::MAX),
            count_instructions: true,
            working_set: true,
            analyses: AnalysisRequest::default(),
        };
        // The trace streams into its file while the simulator runs; the other analyses come
        // with the final state.
        let analyses = self.analyses.clone();
        let mut analysis = match &analyses {
            Some(a) => Some(
                IntervalAnalysis::begin(&a.output, &a.options, inputs.record.interval)
                    .map_err(ReplayError::Analysis)?,
            ),
            None => None,
        };
        if let Some(analysis) = &analysis {
            start.analyses = analysis.request();
        }
        let began = Instant::now();
        self.process()?.start(&start)?;
        let mut exits = inputs.machine.exits;
        let result = self.drive(
            inputs,
            &mut device,
            timeout,
            &failed,
            &mut exits,
            analysis.as_mut(),
        );
        let run_time = began.elapsed();
        let divergence = match result {
            Ok(divergence) => divergence,
            Err(e) => {
                self.stop();
                return Err(e);
            }
        };
        if divergence.is_none() && !failed.load(Ordering::SeqCst) {
            let outcome = self.process()?.finish()?;
            // Analyses are written only for an interval that ran to its end.
            if let Some(analysis) = analysis {
                self.analysis = Some(analysis.finish(&outcome).map_err(ReplayError::Analysis)?);
            }
            self.outcome = Some(outcome);
        }
        self.stop();
        Ok(RunOutcome {
            divergence,
            final_exits: exits,
            run_time,
        })
    }

    fn verify_registers(
        &mut self,
        expected: &VcpuState,
        end_exit: u64,
    ) -> Result<Option<Divergence>, ReplayError> {
        let cpu = &self.outcome()?.cpu;
        let mut replayed = general_regs(cpu);
        let mut recorded = expected.regs;
        replayed.rflags &= !RFLAGS_UNDEFINED;
        recorded.rflags &= !RFLAGS_UNDEFINED;
        if let Some(d) = verify::verify_general_regs(&replayed, &recorded, end_exit) {
            return Ok(Some(d));
        }
        let expected = VcpuSnapshot::restore((), expected).map_err(ReplayError::NextState)?;
        Ok(compare_system_registers(cpu, &expected.sregs)
            .or_else(|| compare_sse(cpu, &expected.xsave))
            .map(|(name, have, want)| register_divergence(name, have, want, end_exit)))
    }

    fn final_cr3(&mut self) -> Result<u64, ReplayError> {
        Ok(self.outcome()?.cpu.cr3)
    }

    fn footprint(&self) -> Result<u64, ReplayError> {
        shared_resident_bytes(&self.file).map_err(ReplayError::Footprint)
    }
}

impl SimEngine {
    /// Ends the simulator process (it has sent its outcome or is no longer needed), so that no
    /// process outlives the replay.
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if let Err(e) = process.kill() {
                tracing::debug!(error = %e, "stopping the simulator");
            }
        }
    }
}

impl Drop for SimEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs of consecutive frames in `written`.
fn frame_runs(written: &DirtyBitmap) -> Vec<FrameRun> {
    let mut runs: Vec<FrameRun> = Vec::new();
    for gfn in written.iter() {
        match runs.last_mut() {
            Some(run) if run.first_gfn + run.count == gfn => run.count += 1,
            _ => runs.push(FrameRun {
                first_gfn: gfn,
                count: 1,
            }),
        }
    }
    runs
}

fn segment(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
    }
}

fn table(t: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: t.base,
        limit: t.limit,
    }
}

/// The simulator's view of a KVM vCPU state.
pub fn cpu_state(vcpu: &VcpuSnapshot) -> CpuState {
    let (r, s) = (&vcpu.regs, &vcpu.sregs);
    CpuState {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
        cs: segment(&s.cs),
        ds: segment(&s.ds),
        es: segment(&s.es),
        fs: segment(&s.fs),
        gs: segment(&s.gs),
        ss: segment(&s.ss),
        tr: segment(&s.tr),
        ldt: segment(&s.ldt),
        gdt: table(&s.gdt),
        idt: table(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
        msrs: vcpu
            .msrs
            .iter()
            .copied()
            .filter(|&(index, _)| index != MSR_TSC)
            .collect(),
        xmm: xmm_registers(&vcpu.xsave),
        mxcsr: vcpu.xsave.region[XSAVE_MXCSR],
    }
}

/// MXCSR's 32-bit word in the XSAVE area's legacy (FXSAVE) region: byte 24.
const XSAVE_MXCSR: usize = 24 / 4;
/// XMM0's first 32-bit word in the legacy region: byte 160, then 16 bytes per register.
const XSAVE_XMM0: usize = 160 / 4;

/// XMM0-15 from an XSAVE area, as (low, high) halves.
fn xmm_registers(xsave: &kvm_xsave) -> [[u64; 2]; 16] {
    let word = |i: usize| u64::from(xsave.region[i]);
    std::array::from_fn(|n| {
        let at = XSAVE_XMM0 + 4 * n;
        [
            word(at) | word(at + 1) << 32,
            word(at + 2) | word(at + 3) << 32,
        ]
    })
}

/// The first SSE register (XMM0-15, MXCSR but its flags) in which the simulator's final state differs from
/// the recording's XSAVE area. A 128-bit register is reported by its differing half.
fn compare_sse(cpu: &CpuState, want: &kvm_xsave) -> Option<(String, u64, u64)> {
    let want_xmm = xmm_registers(want);
    for (n, (have, want)) in cpu.xmm.iter().zip(&want_xmm).enumerate() {
        for (half, name) in ["lo", "hi"].iter().enumerate() {
            if have[half] != want[half] {
                return Some((format!("xmm{n}.{name}"), have[half], want[half]));
            }
        }
    }
    let want_mxcsr = want.region[XSAVE_MXCSR];
    (cpu.mxcsr & !MXCSR_FLAGS != want_mxcsr & !MXCSR_FLAGS).then(|| {
        (
            "mxcsr".to_string(),
            u64::from(cpu.mxcsr),
            u64::from(want_mxcsr),
        )
    })
}

fn general_regs(c: &CpuState) -> GeneralRegs {
    GeneralRegs {
        rax: c.rax,
        rbx: c.rbx,
        rcx: c.rcx,
        rdx: c.rdx,
        rsi: c.rsi,
        rdi: c.rdi,
        rsp: c.rsp,
        rbp: c.rbp,
        r8: c.r8,
        r9: c.r9,
        r10: c.r10,
        r11: c.r11,
        r12: c.r12,
        r13: c.r13,
        r14: c.r14,
        r15: c.r15,
        rip: c.rip,
        rflags: c.rflags,
    }
}

/// The first system register (by name) in which the simulator's final state differs from the
/// recording's. Compared: control registers, EFER, the descriptor tables, the code and stack
/// segments, FS/GS bases and the task register. Not compared: the attributes of null data
/// segments (KVM and unicorn describe an unusable segment differently, and the guest never
/// loads through them), CR8 and the APIC base (passed through, not simulated).
fn compare_system_registers(cpu: &CpuState, want: &kvm_sregs) -> Option<(String, u64, u64)> {
    let pairs: [(&str, u64, u64); 18] = [
        ("cr0", cpu.cr0, want.cr0),
        ("cr2", cpu.cr2, want.cr2),
        ("cr3", cpu.cr3, want.cr3),
        ("cr4", cpu.cr4, want.cr4),
        ("efer", cpu.efer, want.efer),
        ("gdt.base", cpu.gdt.base, want.gdt.base),
        ("gdt.limit", cpu.gdt.limit.into(), want.gdt.limit.into()),
        ("idt.base", cpu.idt.base, want.idt.base),
        ("idt.limit", cpu.idt.limit.into(), want.idt.limit.into()),
        (
            "cs.selector",
            cpu.cs.selector.into(),
            want.cs.selector.into(),
        ),
        ("cs.dpl", cpu.cs.dpl.into(), want.cs.dpl.into()),
        ("cs.l", cpu.cs.l.into(), want.cs.l.into()),
        (
            "ss.selector",
            cpu.ss.selector.into(),
            want.ss.selector.into(),
        ),
        ("ss.dpl", cpu.ss.dpl.into(), want.ss.dpl.into()),
        ("fs.base", cpu.fs.base, want.fs.base),
        ("gs.base", cpu.gs.base, want.gs.base),
        (
            "tr.selector",
            cpu.tr.selector.into(),
            want.tr.selector.into(),
        ),
        ("tr.base", cpu.tr.base, want.tr.base),
    ];
    pairs
        .into_iter()
        .find(|(_, have, want)| have != want)
        .map(|(name, have, want)| (name.to_string(), have, want))
}

fn register_divergence(name: String, have: u64, want: u64, end_exit: u64) -> Divergence {
    let mut d = Divergence::new(
        end_exit,
        "register",
        format!("register {name} is {have:#x} after the simulation, {want:#x} in the recording"),
    );
    d.register = Some(name);
    d
}
