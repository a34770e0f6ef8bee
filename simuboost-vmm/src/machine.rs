//! A whole simuboost machine: memory, VM, vCPU, the paravirtual device, and the run loop.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use vm_memory::{Bytes, GuestAddress};

use simuboost_abi::{pte, BootConfig, WorkloadId, BOOT_CONFIG_MAGIC, DOORBELL_GPA, PORT_EXCEPTION};

use crate::boot::{self, BootError};
use crate::devices::disk::{Disk, DiskError};
use crate::devices::paravirt::ParavirtDevice;
use crate::devices::{Device, DeviceAction, DeviceError, DeviceEvent, DeviceSnapshot, DeviceStats};
use crate::vstate::dirty::{
    DirtyBitmap, DirtyError, DirtyLog, DirtyRing, DirtyTracker, DirtyTracking,
};
use crate::vstate::memory::{create_guest_memory, host_region, GuestMemory, MemoryError};
use crate::vstate::vcpu::{Exit, Registers, Vcpu, VcpuError, VcpuSnapshot};
use crate::vstate::vm::{Vm, VmError};

/// Everything needed to boot a machine.
pub struct MachineConfig {
    /// The workload the guest runs.
    pub workload: WorkloadId,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// Units of work (0 = until stopped).
    pub work_units: u64,
    /// Largest arena the workload may use, in MiB (0 = all free memory).
    pub arena_limit_mib: u32,
    /// Seed of the workload's choices and of the random device.
    pub seed: u64,
    /// Disk image, if any.
    pub disk: Option<PathBuf>,
    /// The guest ELF image.
    pub guest_image: Vec<u8>,
    /// Where the guest console goes.
    pub console: Box<dyn Write + Send>,
    /// Track the frames the guest writes (for checkpoints), and how.
    pub dirty_tracking: Option<DirtyTracking>,
    /// Log every device request with the values given to the guest.
    pub record_events: bool,
    /// The vCPU's CPUID (a recorder's, which it keeps in the run); `None`: what this host's
    /// KVM supports.
    pub cpuid: Option<CpuId>,
}

/// Error type of [`ExitObserver`] callbacks.
pub type ObserverError = Box<dyn std::error::Error + Send + Sync>;

/// Called by [`Machine::run`] while the guest is paused at a guest-initiated exit: the recorder
/// takes its checkpoints here.
pub trait ExitObserver {
    /// Before the guest's first instruction.
    fn before_start(&mut self, machine: &mut Machine) -> Result<(), ObserverError>;
    /// After a doorbell write was handled, before the guest resumes.
    fn after_exit(&mut self, machine: &mut Machine) -> Result<(), ObserverError>;
    /// The guest asked to terminate with `status`; its last request has been handled.
    fn before_shutdown(&mut self, machine: &mut Machine, status: u64) -> Result<(), ObserverError>;
}

/// An observer that does nothing: a plain run.
pub struct NoObserver;

impl ExitObserver for NoObserver {
    fn before_start(&mut self, _: &mut Machine) -> Result<(), ObserverError> {
        Ok(())
    }
    fn after_exit(&mut self, _: &mut Machine) -> Result<(), ObserverError> {
        Ok(())
    }
    fn before_shutdown(&mut self, _: &mut Machine, _: u64) -> Result<(), ObserverError> {
        Ok(())
    }
}

/// The state of the whole machine apart from guest memory.
pub struct MachineSnapshot {
    /// Guest-initiated exits so far.
    pub exits: u64,
    /// The vCPU.
    pub vcpu: VcpuSnapshot,
    /// The device.
    pub device: DeviceSnapshot,
}

/// Errors booting or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Loading the guest.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The disk image.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Dirty tracking.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// The observer (the recorder) failed.
    #[error(transparent)]
    Observer(ObserverError),
    /// KVM refuses the CPUID a run recorded (made on another kind of host, or damaged).
    #[error("KVM refuses the CPUID the run recorded (manifest.json, meta.cpuid)")]
    RecordedCpuid(#[source] VcpuError),
    /// Invalidating KVM's mappings failed.
    #[error("cannot re-arm access tracking (mprotect of guest memory): {0}")]
    Rearm(#[source] std::io::Error),
    /// The paravirtual device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Not enough RAM for the workload.
    #[error("{workload} needs at least {needed_mib} MiB of guest memory, {given_mib} MiB given")]
    MemoryTooSmall {
        /// Workload name.
        workload: &'static str,
        /// MiB needed.
        needed_mib: u64,
        /// MiB given.
        given_mib: u64,
    },
    /// The arena limit is below what the workload needs or above the guest's free memory.
    #[error(
        "an arena of {limit_mib} MiB does not fit: {workload} needs at least {needed_mib} MiB, \
         and the guest has {free_mib} MiB of free memory"
    )]
    ArenaLimit {
        /// Workload name.
        workload: &'static str,
        /// The limit asked for, MiB.
        limit_mib: u64,
        /// The workload's smallest arena, MiB (rounded up).
        needed_mib: u64,
        /// The arena without a limit, MiB (rounded down).
        free_mib: u64,
    },
    /// The workload needs a data set on its disk.
    #[error("{workload} reads its input from the disk, and {reason}")]
    NoDataSet {
        /// Workload name.
        workload: &'static str,
        /// What is missing.
        reason: String,
    },
    /// The guest crashed.
    #[error("{0}")]
    GuestCrash(Box<CrashReport>),
    /// The run was aborted from another thread ([`RunControl::abort`]).
    #[error("the run was aborted")]
    Aborted,
    /// The kick signal could not be set up.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    /// The guest did not stop after being asked to.
    #[error("the guest did not stop within {0:?} of being asked to")]
    StopTimeout(Duration),
}

/// Why and where the guest crashed.
#[derive(Debug)]
pub struct CrashReport {
    /// What happened.
    pub reason: String,
    /// Guest-initiated exits before the crash.
    pub exits: u64,
    /// Registers at the crash.
    pub registers: Option<Registers>,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "guest crashed after {} guest-initiated exits: {}",
            self.exits, self.reason
        )?;
        match &self.registers {
            Some(r) => write!(f, "vCPU state:\n{r}"),
            None => write!(f, "(vCPU registers unavailable)"),
        }
    }
}

/// Names of the x86 exception vectors, for crash reports (the KVM and simulator engines').
pub fn exception_name(vector: u32) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD exception",
        _ => "reserved vector",
    }
}

/// Vectors whose exception frame starts with an error code.
fn has_error_code(vector: u32) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// The guest's exit status; `None` if the device paused the machine first (a replay reached
    /// the end of its interval).
    pub exit_status: Option<u64>,
    /// Guest-initiated exits (doorbell writes) during the run.
    pub guest_exits: u64,
    /// Wall time of the run.
    pub wall: Duration,
    /// Device counters.
    pub device: DeviceStats,
}

/// Controls a running machine from other threads.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// Set to ask the guest to stop at its next yield.
    pub stop: Arc<AtomicBool>,
    /// Set by [`RunControl::abort`]: the run loop returns [`MachineError::Aborted`].
    abort: Arc<AtomicBool>,
    /// The thread inside [`Machine::run`] (a `pthread_t`), 0 when none.
    vcpu_thread: Arc<std::sync::atomic::AtomicU64>,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN` (its handler does nothing; the
/// interrupted ioctl returns EINTR).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl RunControl {
    /// Makes the run loop return [`MachineError::Aborted`] as soon as possible, even if the
    /// guest never exits by itself (a diverged replay can spin forever). Interrupts `KVM_RUN`
    /// with a signal; call it again if the run has not ended, since a signal that arrives just
    /// before the vCPU enters the guest is lost.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        let thread = self.vcpu_thread.load(Ordering::SeqCst);
        if thread != 0 {
            // SAFETY: `thread` is the pthread_t of the thread inside Machine::run, stored there
            // and cleared before that function returns; the kick signal has a handler that
            // does nothing (installed by Machine::run), so the signal only interrupts KVM_RUN.
            unsafe {
                libc::pthread_kill(thread as libc::pthread_t, kick_signal());
            }
        }
    }

    /// True once [`RunControl::abort`] was called.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
}

/// Clears the run control's record of the vCPU thread when the run loop returns.
struct VcpuThreadGuard<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for VcpuThreadGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// A booted machine, ready to run.
pub struct Machine {
    // Field order matters: the vCPU and VM must be dropped before the memory they map.
    vcpu: Vcpu,
    vm: Vm,
    memory: GuestMemory,
    device: Box<dyn Device>,
    control: RunControl,
    boot_config: BootConfig,
    guest_exits: u64,
    dirty_tracker: Option<Box<dyn DirtyTracker>>,
    /// Frames KVM reported dirty since the last `take_dirty` (the ring may be harvested early).
    guest_dirty: DirtyBitmap,
    /// The guest's 4 KiB page tables, when it has them (recording).
    page_tables: Option<u64>,
}

impl Machine {
    /// Creates the VM, loads the guest and prepares the device.
    pub fn new(config: MachineConfig, control: RunControl) -> Result<Machine, MachineError> {
        let min_mem = min_mem_bytes(config.workload);
        if config.mem_bytes < min_mem {
            return Err(MachineError::MemoryTooSmall {
                workload: config.workload.name(),
                needed_mib: min_mem >> 20,
                given_mib: config.mem_bytes >> 20,
            });
        }
        let disk = config.disk.as_deref().map(Disk::open).transpose()?;
        if simuboost_workloads::needs_disk(config.workload) {
            let reason = match &disk {
                None => Some("no disk was given".to_string()),
                Some(d) if d.data_bytes() == 0 => {
                    Some(format!("{} holds no data set", d.path().display()))
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                return Err(MachineError::NoDataSet {
                    workload: config.workload.name(),
                    reason,
                });
            }
        }
        let memory = create_guest_memory(config.mem_bytes)?;
        let paging = if config.dirty_tracking.is_some() {
            boot::GuestPaging::Small
        } else {
            boot::GuestPaging::Huge
        };
        let image = boot::load(&memory, config.mem_bytes, &config.guest_image, paging)?;
        let limit = u64::from(config.arena_limit_mib) << 20;
        if limit != 0 {
            let free = config
                .mem_bytes
                .saturating_sub(simuboost_abi::arena_start(image.free_start));
            let needed = simuboost_workloads::min_arena_bytes(config.workload);
            if limit < needed || limit > free {
                return Err(MachineError::ArenaLimit {
                    workload: config.workload.name(),
                    limit_mib: limit >> 20,
                    needed_mib: needed.div_ceil(1 << 20),
                    free_mib: free >> 20,
                });
            }
        }
        let vm = Vm::new(&memory, config.dirty_tracking.is_some())?;
        let dirty_log = match config.dirty_tracking {
            Some(DirtyTracking::Log) => Some(DirtyLog::new(vm.kvm(), vm.fd(), config.mem_bytes)?),
            Some(DirtyTracking::Ring) => {
                DirtyRing::enable(vm.kvm(), vm.fd())?;
                None
            }
            None => None,
        };
        let cpuid = match config.cpuid {
            Some(cpuid) => cpuid,
            None => vm.supported_cpuid()?,
        };
        let vcpu = vm.create_vcpu(&cpuid, image.entry)?;
        let dirty_tracker: Option<Box<dyn DirtyTracker>> = match config.dirty_tracking {
            Some(DirtyTracking::Ring) => Some(Box::new(DirtyRing::map(vcpu.fd())?)),
            _ => dirty_log.map(|log| Box::new(log) as Box<dyn DirtyTracker>),
        };
        let boot_config = BootConfig {
            magic: BOOT_CONFIG_MAGIC,
            workload: config.workload as u32,
            arena_limit_mib: config.arena_limit_mib,
            mem_bytes: config.mem_bytes,
            free_start: image.free_start,
            work_units: config.work_units,
            disk_blocks: disk.as_ref().map_or(0, Disk::blocks),
            disk_data_bytes: disk.as_ref().map_or(0, Disk::data_bytes),
            seed: config.seed,
        };
        let mut device =
            ParavirtDevice::new(boot_config, config.console, disk, control.stop.clone());
        if config.record_events {
            device.record_events();
        }
        Ok(Machine {
            vcpu,
            vm,
            memory,
            device: Box::new(device),
            control,
            boot_config,
            guest_exits: 0,
            dirty_tracker,
            guest_dirty: DirtyBitmap::new(config.mem_bytes / simuboost_abi::PAGE_SIZE),
            page_tables: image.page_tables,
        })
    }

    /// A machine resuming from a checkpoint: `memory` holds (or will be given on demand) the
    /// guest RAM as of the checkpoint, `state` is its vCPU state, `exits` its exit count, and
    /// `device` answers the doorbell from then on (the replay device).
    pub fn restore(
        memory: GuestMemory,
        state: &VcpuSnapshot,
        exits: u64,
        device: Box<dyn Device>,
        control: RunControl,
    ) -> Result<Machine, MachineError> {
        BlankMachine::new(memory, None)?.restore(state, exits, device, control)
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Re-arms access tracing at an interval boundary, with the guest paused: cleans the
    /// guest's page-table bits ([`Machine::clean_page_table_bits`]) and drops KVM's mappings
    /// ([`Machine::invalidate_mappings`]), so that every frame the next interval touches faults,
    /// and is traced, again. Returns the page-table frames the cleaning wrote (part of the
    /// interval's writes).
    pub fn rearm_access_tracing(&mut self) -> Result<DirtyBitmap, MachineError> {
        let changed = self.clean_page_table_bits();
        self.invalidate_mappings()?;
        Ok(changed)
    }

    /// Clears the accessed and dirty bits of every leaf entry of the guest's 4 KiB page tables
    /// and returns the page-table frames it changed.
    ///
    /// Why: once KVM's mappings are dropped, every access faults and KVM walks the guest page
    /// tables again. A dirty entry would make KVM map the page writable on a *read* fault, and a
    /// writable mapping counts as a write in the dirty log; an accessed entry lets KVM prefetch
    /// the mapping of a page the guest has not touched (and then miss the real access). Clean
    /// entries keep the next interval's dirty set and access log exact. The guest never reads
    /// these bits: they are KVM's bookkeeping.
    fn clean_page_table_bits(&mut self) -> DirtyBitmap {
        let frames = self.boot_config.mem_bytes / simuboost_abi::PAGE_SIZE;
        let mut changed = DirtyBitmap::new(frames);
        let Some(tables) = self.page_tables else {
            return changed;
        };
        let (base, _) = host_region(&self.memory);
        for gfn in 0..frames {
            let offset = tables + gfn * 8;
            // SAFETY: the page tables lie inside guest RAM (the boot loader put them there, one
            // 8-byte entry per frame), the guest is paused, and KVM updates these bits with
            // atomic cmpxchg only while the vCPU runs.
            let entry =
                unsafe { &*(base.add(offset as usize) as *const std::sync::atomic::AtomicU64) };
            let pte = entry.load(Ordering::Relaxed);
            if pte & pte::ACCESSED_DIRTY != 0 {
                entry.store(pte & !pte::ACCESSED_DIRTY, Ordering::Relaxed);
                changed.set(offset / simuboost_abi::PAGE_SIZE);
            }
        }
        changed
    }

    /// Drops every mapping KVM installed for guest RAM, so that the next access to any frame
    /// faults again (and the tracer sees it): `mprotect` to read-only and back, which makes the
    /// host invalidate KVM's mappings through its MMU notifier. Contents are unchanged.
    fn invalidate_mappings(&mut self) -> Result<(), MachineError> {
        let (base, size) = host_region(&self.memory);
        for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
            // SAFETY: changing the protection of the guest RAM mapping, which this machine owns;
            // the guest is paused and no VMM thread touches guest memory during the two calls.
            let rc = unsafe { libc::mprotect(base.cast(), size as usize, prot) };
            if rc != 0 {
                return Err(MachineError::Rearm(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Guest-initiated exits so far.
    pub fn guest_exits(&self) -> u64 {
        self.guest_exits
    }

    /// Retires the instruction of the last exit (see [`Vcpu::complete_pending_exit`]); call it
    /// before saving state at an exit.
    pub fn complete_pending_exit(&mut self) -> Result<(), MachineError> {
        Ok(self.vcpu.complete_pending_exit()?)
    }

    /// The frames written since the last call: by the guest (KVM's dirty tracking) and by the
    /// VMM (device writes), as two sets. Re-arms KVM's tracking.
    pub fn take_dirty(&mut self) -> Result<(DirtyBitmap, DirtyBitmap), MachineError> {
        if let Some(tracker) = &mut self.dirty_tracker {
            tracker.harvest(self.vm.fd(), &mut self.guest_dirty)?;
        }
        let frames = self.boot_config.mem_bytes / simuboost_abi::PAGE_SIZE;
        let guest = std::mem::replace(&mut self.guest_dirty, DirtyBitmap::new(frames));
        Ok((guest, self.device.take_written()))
    }

    /// The frames the boot loader may have written: everything below the free memory (boot
    /// structures, the image and its stack). All other RAM is zero at boot.
    pub fn boot_frames(&self) -> std::ops::Range<u64> {
        0..self.boot_config.free_start / simuboost_abi::PAGE_SIZE
    }

    /// Saves the vCPU and device state.
    pub fn save_state(&self) -> Result<MachineSnapshot, MachineError> {
        Ok(MachineSnapshot {
            exits: self.guest_exits,
            vcpu: self.vcpu.save_state()?,
            device: self.device.snapshot(),
        })
    }

    /// The device events since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        self.device.take_events()
    }

    /// Appends the contents of frames `gfns` to `out`, 4 KiB each, in order.
    pub fn copy_frames(&self, gfns: impl Iterator<Item = u64>, out: &mut Vec<u8>) {
        let (base, size) = host_region(&self.memory);
        let frames = size / simuboost_abi::PAGE_SIZE;
        let mut copy_run = |first: u64, count: u64| {
            // SAFETY: frames [first, first + count) lie inside the RAM mapping (callers pass
            // only gfns below `frames`), and the guest is paused while the VMM runs, so nothing
            // writes them during the copy.
            let run = unsafe {
                std::slice::from_raw_parts(
                    base.add((first * simuboost_abi::PAGE_SIZE) as usize),
                    (count * simuboost_abi::PAGE_SIZE) as usize,
                )
            };
            out.extend_from_slice(run);
        };
        // One copy per run of consecutive frames: dirty sets are mostly runs.
        let mut run: Option<(u64, u64)> = None;
        for gfn in gfns.filter(|&g| g < frames) {
            run = match run {
                Some((first, count)) if first + count == gfn => Some((first, count + 1)),
                Some((first, count)) => {
                    copy_run(first, count);
                    Some((gfn, 1))
                }
                None => Some((gfn, 1)),
            };
        }
        if let Some((first, count)) = run {
            copy_run(first, count);
        }
    }

    /// The boot configuration the guest receives.
    pub fn boot_config(&self) -> &BootConfig {
        &self.boot_config
    }

    /// Bytes of the workload's arena (guest RAM above the image and the guest's heap, up to
    /// the configured limit).
    pub fn arena_bytes(&self) -> u64 {
        simuboost_abi::arena_bytes(&self.boot_config)
    }

    /// Runs the guest until it exits. `deadline`, if set, asks the guest to stop once that much
    /// time has passed; `stop_grace` is how long it then has to exit.
    pub fn run(
        &mut self,
        deadline: Option<Duration>,
        stop_grace: Duration,
        observer: &mut dyn ExitObserver,
    ) -> Result<RunReport, MachineError> {
        let start = Instant::now();
        static KICK_HANDLER: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
        KICK_HANDLER
            .get_or_init(|| {
                vmm_sys_util::signal::register_signal_handler(kick_signal(), ignore_kick)
                    .map_err(|e| e.errno())
            })
            .map_err(|errno| MachineError::KickSignal(vmm_sys_util::errno::Error::new(errno)))?;
        let control = self.control.clone();
        // SAFETY: pthread_self has no preconditions.
        let this_thread = unsafe { libc::pthread_self() } as u64;
        control.vcpu_thread.store(this_thread, Ordering::SeqCst);
        let _clear_thread = VcpuThreadGuard(&control.vcpu_thread);
        observer
            .before_start(self)
            .map_err(MachineError::Observer)?;
        let mut stop_seen_at: Option<Instant> = None;
        loop {
            if control.aborted() {
                return Err(MachineError::Aborted);
            }
            if stop_seen_at.is_none() {
                if deadline.is_some_and(|d| start.elapsed() >= d) {
                    self.control.stop.store(true, Ordering::Relaxed);
                }
                if self.control.stop.load(Ordering::Relaxed) {
                    stop_seen_at = Some(Instant::now());
                }
            } else if stop_seen_at.is_some_and(|t| t.elapsed() > stop_grace) {
                return Err(MachineError::StopTimeout(stop_grace));
            }
            match self.vcpu.run()? {
                Exit::MmioWrite {
                    addr: DOORBELL_GPA,
                    value,
                } => {
                    self.guest_exits += 1;
                    match self.device.handle(&self.memory, self.guest_exits, value)? {
                        DeviceAction::Continue => {
                            observer.after_exit(self).map_err(MachineError::Observer)?
                        }
                        DeviceAction::Pause => {
                            return Ok(RunReport {
                                exit_status: None,
                                guest_exits: self.guest_exits,
                                wall: start.elapsed(),
                                device: self.device.stats(),
                            });
                        }
                        DeviceAction::Exit(status) => {
                            self.device.flush_console()?;
                            observer
                                .before_shutdown(self, status)
                                .map_err(MachineError::Observer)?;
                            return Ok(RunReport {
                                exit_status: Some(status),
                                guest_exits: self.guest_exits,
                                wall: start.elapsed(),
                                device: self.device.stats(),
                            });
                        }
                    }
                }
                Exit::PortWrite {
                    port: PORT_EXCEPTION,
                    value,
                } => return Err(self.exception_crash(value)),
                Exit::PortWrite { port, value } => {
                    return Err(
                        self.crash(format!("write of {value:#x} to unknown I/O port {port:#x}"))
                    )
                }
                Exit::PortRead { port } => {
                    return Err(self.crash(format!("read from unknown I/O port {port:#x}")))
                }
                Exit::MmioWrite { addr, value } => {
                    return Err(self.crash(format!(
                        "write of {value:#x} to {addr:#x}, where there is neither RAM nor a device"
                    )))
                }
                Exit::MmioRead { addr } => {
                    return Err(self.crash(format!(
                        "read from {addr:#x}, where there is neither RAM nor a device"
                    )))
                }
                Exit::Interrupted => {}
                Exit::DirtyRingFull => {
                    if let Some(tracker) = &mut self.dirty_tracker {
                        tracker.harvest(self.vm.fd(), &mut self.guest_dirty)?;
                    }
                }
                Exit::Halt => return Err(self.crash("the guest halted".to_string())),
                Exit::Shutdown => {
                    return Err(self.crash(
                        "triple fault (KVM_EXIT_SHUTDOWN): an exception could not be delivered"
                            .to_string(),
                    ))
                }
                Exit::Other(what) => return Err(self.crash(format!("unexpected VM exit {what}"))),
            }
        }
    }

    fn crash(&mut self, reason: String) -> MachineError {
        let _ = self.device.flush_console();
        MachineError::GuestCrash(Box::new(CrashReport {
            reason,
            exits: self.guest_exits,
            registers: self.vcpu.registers().ok(),
        }))
    }

    /// Builds a crash report from the exception frame on the ring-0 stack.
    fn exception_crash(&mut self, vector: u32) -> MachineError {
        let registers = self.vcpu.registers().ok();
        let mut reason = format!("exception {vector} ({})", exception_name(vector));
        if let Some(r) = &registers {
            let mut frame = [0u8; 48];
            if self
                .memory
                .read_slice(&mut frame, GuestAddress(r.regs.rsp))
                .is_ok()
            {
                let word = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&frame[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(b)
                };
                let (error_code, base) = if has_error_code(vector) {
                    (Some(word(0)), 1)
                } else {
                    (None, 0)
                };
                reason.push_str(&format!(
                    " at rip={:#x} (cs={:#x}, rsp={:#x}, rflags={:#x})",
                    word(base),
                    word(base + 1),
                    word(base + 3),
                    word(base + 2)
                ));
                if let Some(code) = error_code {
                    reason.push_str(&format!(", error code {code:#x}"));
                }
                if vector == 14 {
                    reason.push_str(&format!(", faulting address {:#x}", r.sregs.cr2));
                }
            }
        }
        let _ = self.device.flush_console();
        MachineError::GuestCrash(Box::new(CrashReport {
            reason,
            exits: self.guest_exits,
            registers,
        }))
    }
}

/// A VM with guest RAM registered and its vCPU created, not yet given a state: the part of a
/// restore that needs nothing from the checkpoint, so a replayer builds it while it reads the
/// checkpoint (creating a VM and a vCPU costs ~1.8 ms on PVM).
pub struct BlankMachine {
    vm: Vm,
    vcpu: Vcpu,
    memory: GuestMemory,
}

impl BlankMachine {
    /// Creates the VM over `memory` (no dirty logging) and its vCPU, with `cpuid` (the run's,
    /// as recorded) or, for `None`, what this host's KVM supports (which costs ~0.5 ms on PVM:
    /// every leaf it reports traps to the hypervisor).
    pub fn new(memory: GuestMemory, cpuid: Option<&CpuId>) -> Result<BlankMachine, MachineError> {
        let vm = Vm::new(&memory, false)?;
        let vcpu = vm.create_bare_vcpu()?;
        match cpuid {
            Some(cpuid) => vcpu.set_cpuid(cpuid).map_err(MachineError::RecordedCpuid)?,
            None => vcpu.set_cpuid(&vm.supported_cpuid()?)?,
        }
        Ok(BlankMachine { vm, vcpu, memory })
    }

    /// The machine resuming from a checkpoint: see [`Machine::restore`].
    pub fn restore(
        self,
        state: &VcpuSnapshot,
        exits: u64,
        device: Box<dyn Device>,
        control: RunControl,
    ) -> Result<Machine, MachineError> {
        let BlankMachine { vm, vcpu, memory } = self;
        let (_, mem_bytes) = host_region(&memory);
        vcpu.restore_state(state)?;
        Ok(Machine {
            vcpu,
            vm,
            memory,
            device,
            control,
            boot_config: BootConfig {
                magic: BOOT_CONFIG_MAGIC,
                workload: 0,
                arena_limit_mib: 0,
                mem_bytes,
                free_start: 0,
                work_units: 0,
                disk_blocks: 0,
                disk_data_bytes: 0,
                seed: 0,
            },
            guest_exits: exits,
            dirty_tracker: None,
            guest_dirty: DirtyBitmap::new(mem_bytes / simuboost_abi::PAGE_SIZE),
            page_tables: None,
        })
    }
}

/// Smallest guest RAM for `workload`: boot area, image, guest heap, and the workload's arena.
pub fn min_mem_bytes(workload: WorkloadId) -> u64 {
    /// Boot structures, image and stack (generously), and the guest's heap.
    const GUEST_OVERHEAD: u64 = (4 << 20) + simuboost_abi::GUEST_HEAP_BYTES;
    let raw = GUEST_OVERHEAD + simuboost_workloads::min_arena_bytes(workload);
    // Plus the 4 KiB page tables of a recorded run (one frame per 2 MiB of RAM).
    let raw = raw + raw / 512;
    raw.div_ceil(crate::vstate::memory::MEM_ALIGN) * crate::vstate::memory::MEM_ALIGN
}
