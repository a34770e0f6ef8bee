//! Replaying one interval: restore checkpoint N (sparse, full or lazy), feed the recorded
//! events back at the same exit counts, stop at the interval's end boundary and verify the
//! result against checkpoint N+1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use simuboost_abi::{pte, PAGE_SIZE};
use simuboost_format::{FormatError, IntervalRecord, Run};
use simuboost_vmm::devices::replay::ReplayDevice;
use simuboost_vmm::devices::{DeviceError, DeviceEvent};
use simuboost_vmm::machine::{
    Machine, MachineError, MachineSnapshot, NoObserver, RunControl, RunReport,
};
use simuboost_vmm::persist::{restore_events, Persist, PersistError};
use simuboost_vmm::vstate::memory::create_guest_memory_backed;
use simuboost_vmm::vstate::vcpu::VcpuSnapshot;

use crate::restore::{resident_bytes, LoadStats, PageSource, RestoreError, UffdMemory};
pub use simuboost_report::replay::{Divergence, Engine, Mode, ReplayReport};

use crate::verify;

/// How to replay.
#[derive(Clone, Copy, Debug)]
pub struct ReplayOptions {
    /// What to load up front.
    pub mode: Mode,
    /// What executes the interval.
    pub engine: Engine,
    /// Give up (and report a divergence) if the interval has not ended after this long;
    /// `None`: one minute plus 20 times the interval's recorded length.
    pub timeout: Option<Duration>,
}

/// Errors that prevent a replay (as opposed to a replay that ran and diverged).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The run cannot be read.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The interval does not exist.
    #[error("interval {requested} is out of range: {valid}")]
    OutOfRange {
        /// Requested interval.
        requested: u64,
        /// The valid range, in words.
        valid: String,
    },
    /// The interval's end checkpoint is not written yet.
    #[error(
        "interval {requested} is not complete yet: the run has {complete} complete intervals so \
         far and the recorder has not finished (is it still running?)"
    )]
    NotComplete {
        /// Requested interval.
        requested: u64,
        /// Complete intervals.
        complete: u64,
    },
    /// Sparse mode needs a working set.
    #[error(
        "interval {0} has no access log (the run was recorded with --tracer none), so it has no \
         working set for --mode sparse; use --mode full or --mode lazy"
    )]
    NoWorkingSet(u64),
    /// Restoring memory failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// KVM failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The recorded state does not decode.
    #[error("{}: corrupt: {source}", path.display())]
    BadState {
        /// The state file.
        path: std::path::PathBuf,
        /// What is wrong.
        source: PersistError,
    },
    /// The watchdog thread could not be started.
    #[error("cannot start the replay's watchdog thread: {0}")]
    Watchdog(#[source] std::io::Error),
    /// The replay's resident memory could not be measured.
    #[error("cannot measure the replay's memory footprint (/proc/self/smaps): {0}")]
    Footprint(#[source] std::io::Error),
}

/// Checks that `interval` can be replayed and says why not.
pub fn check_interval(run: &Run, interval: u64) -> Result<(), ReplayError> {
    let complete = run.interval_count();
    if interval < complete {
        return Ok(());
    }
    if !run.manifest().finished {
        return Err(ReplayError::NotComplete {
            requested: interval,
            complete,
        });
    }
    let valid = match complete {
        0 => "the run has no complete interval".to_string(),
        1 => "the run has one interval, 0".to_string(),
        n => format!("valid intervals are 0..={}", n - 1),
    };
    Err(ReplayError::OutOfRange {
        requested: interval,
        valid,
    })
}

/// The frames the vCPU's system registers point at: the root of the page tables and the
/// descriptor tables (GDT, IDT, TSS). The tracer cannot see these accesses: KVM starts every
/// walk at CR3 but reports only the entries it reads, which name the next level; descriptor
/// tables are read by KVM's instruction emulator (ring 0 is emulated on PVM), not through the
/// MMU. They are part of the working set of every interval.
fn system_frames(vcpu: &VcpuSnapshot, mem_bytes: u64) -> Vec<u64> {
    let s = &vcpu.sregs;
    let mut frames = vec![(s.cr3 & pte::ADDRESS_MASK) / PAGE_SIZE];
    for (base, limit) in [
        (s.gdt.base, u64::from(s.gdt.limit)),
        (s.idt.base, u64::from(s.idt.limit)),
        (s.tr.base, u64::from(s.tr.limit)),
    ] {
        let end = base.saturating_add(limit).min(mem_bytes.saturating_sub(1));
        if base < mem_bytes {
            frames.extend(base / PAGE_SIZE..=end / PAGE_SIZE);
        }
    }
    frames
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What a replay reads from the run before it touches guest memory.
struct IntervalInputs {
    record: IntervalRecord,
    machine: MachineSnapshot,
    events: Vec<DeviceEvent>,
    /// The frames sparse mode loads (access log plus the frames the vCPU state points at).
    working_set: Option<Vec<u64>>,
    source: Arc<PageSource>,
}

impl IntervalInputs {
    fn read(run: &Run, interval: u64, mode: Mode) -> Result<IntervalInputs, ReplayError> {
        let mem_bytes = run.manifest().meta.mem_bytes;
        let record = run.interval(interval)?;
        let state = run.state(interval)?;
        let machine =
            MachineSnapshot::restore((), &state).map_err(|source| ReplayError::BadState {
                path: simuboost_format::layout::state_table(run.dir(), interval),
                source,
            })?;
        let events = restore_events(run.events(interval)?);
        let working_set = match mode {
            Mode::Sparse => {
                let access = run
                    .access(interval)?
                    .ok_or(ReplayError::NoWorkingSet(interval))?;
                if !record.complete {
                    tracing::warn!(
                        interval,
                        "the interval's access log is incomplete (the tracer lost events): pages \
                         it missed are loaded on demand"
                    );
                }
                let mut gfns: Vec<u64> = access.iter().map(|a| a.gfn).collect();
                gfns.extend(system_frames(&machine.vcpu, mem_bytes));
                gfns.sort_unstable();
                gfns.dedup();
                Some(gfns)
            }
            Mode::Full | Mode::Lazy => None,
        };
        let source = Arc::new(PageSource::new(run.page_map(interval)?, run.page_store()?));
        Ok(IntervalInputs {
            record,
            machine,
            events,
            working_set,
            source,
        })
    }

    /// The recorded length of the interval.
    fn recorded(&self) -> Duration {
        Duration::from_nanos(self.record.end_ns.saturating_sub(self.record.start_ns))
    }
}

/// Guest memory registered with userfaultfd and loaded as the mode says.
fn load_memory(
    memory: &UffdMemory,
    inputs: &IntervalInputs,
    mode: Mode,
) -> Result<LoadStats, ReplayError> {
    Ok(match mode {
        Mode::Sparse => memory.install(
            &inputs.source,
            inputs.working_set.as_deref().unwrap_or_default(),
        )?,
        Mode::Full => {
            let nonzero: Vec<u64> = inputs.source.map.iter().map(|(gfn, _)| gfn).collect();
            let mut load = memory.install(&inputs.source, &nonzero)?;
            let zeros = memory.install_zero_rest()?;
            load.pages += zeros;
            load.zero_pages += zeros;
            load
        }
        Mode::Lazy => LoadStats::default(),
    })
}

/// Aborts a run when the page server failed or the timeout passed, and keeps kicking until the
/// run has ended (a kick can be lost just before `KVM_RUN`).
struct Watchdog {
    thread: std::thread::JoinHandle<()>,
    done: mpsc::Sender<()>,
    timed_out: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(
        control: RunControl,
        failed: Arc<AtomicBool>,
        timeout: Duration,
    ) -> Result<Watchdog, ReplayError> {
        let (done, done_rx) = mpsc::channel::<()>();
        let timed_out = Arc::new(AtomicBool::new(false));
        let flag = timed_out.clone();
        let thread = std::thread::Builder::new()
            .name("replay-watchdog".into())
            .spawn(move || {
                let start = Instant::now();
                loop {
                    match done_rx.recv_timeout(Duration::from_millis(20)) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let expired = start.elapsed() >= timeout;
                    if expired {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if expired || failed.load(Ordering::SeqCst) {
                        control.abort();
                    }
                }
            })
            .map_err(ReplayError::Watchdog)?;
        Ok(Watchdog {
            thread,
            done,
            timed_out,
        })
    }

    /// Stops the watchdog; true if the timeout had passed.
    fn stop(self) -> bool {
        // The watchdog may already have returned (a closed channel ends it the same way).
        let _ = self.done.send(());
        let _ = self.thread.join();
        self.timed_out.load(Ordering::SeqCst)
    }
}

/// Turns how the run ended into a divergence (or none), or an error that prevents a verdict.
fn run_divergence(
    outcome: Result<RunReport, MachineError>,
    final_exits: u64,
    end_exit: u64,
    timed_out: Option<Duration>,
) -> Result<Option<Divergence>, ReplayError> {
    Ok(match outcome {
        Ok(report) => match report.exit_status {
            Some(status) if final_exits != end_exit => Some(Divergence::request(
                final_exits,
                format!(
                    "the guest exited (status {status}) at exit {final_exits}, the interval ends \
                     at exit {end_exit}"
                ),
            )),
            _ => None,
        },
        Err(MachineError::Device(DeviceError::Divergence { exit, what })) => {
            Some(Divergence::request(exit, what))
        }
        Err(MachineError::GuestCrash(crash)) => Some(Divergence::crash(
            crash.exits,
            crash.to_string().trim_end().to_string(),
        )),
        Err(MachineError::Aborted) if timed_out.is_some() => Some(Divergence::timeout(
            final_exits,
            format!(
                "the interval did not end within {:.1} s (last exit {final_exits}, the interval \
                 ends at exit {end_exit})",
                timed_out.unwrap_or_default().as_secs_f64(),
            ),
        )),
        Err(e) => return Err(e.into()),
    })
}

/// Replays interval `interval` of `run`.
pub fn replay_interval(
    run: &Run,
    interval: u64,
    options: ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    check_interval(run, interval)?;
    let began = Instant::now();
    let mem_bytes = run.manifest().meta.mem_bytes;
    let inputs = IntervalInputs::read(run, interval, options.mode)?;
    let read_time = began.elapsed();

    let memory = create_guest_memory_backed(mem_bytes, false).map_err(MachineError::from)?;
    let uffd = UffdMemory::register(&memory)?;
    let load_began = Instant::now();
    let load = load_memory(&uffd, &inputs, options.mode)?;
    let load_time = load_began.elapsed();
    let failed = Arc::new(AtomicBool::new(false));
    let server = uffd.serve(inputs.source.clone(), failed.clone())?;
    let control = RunControl::default();
    let record = &inputs.record;
    let mut machine = Machine::restore(
        memory,
        &inputs.machine.vcpu,
        inputs.machine.exits,
        Box::new(ReplayDevice::new(
            inputs.events.clone(),
            record.end_exit,
            mem_bytes,
            inputs.machine.device.clone(),
        )),
        control.clone(),
    )?;
    let restore_time = began.elapsed();
    tracing::debug!(
        interval,
        mode = options.mode.name(),
        read_ms = ms(read_time),
        load_ms = ms(load_time),
        total_ms = ms(restore_time),
        "restored"
    );

    let timeout = options
        .timeout
        .unwrap_or(Duration::from_secs(60) + inputs.recorded() * 20);
    let watchdog = Watchdog::start(control, failed, timeout)?;
    let run_began = Instant::now();
    let outcome = machine.run(None, Duration::from_secs(1), &mut NoObserver);
    let completed = match &outcome {
        Ok(_) => machine.complete_pending_exit().map_err(ReplayError::from),
        Err(_) => Ok(()),
    };
    let replay_time = run_began.elapsed();
    let timed_out = watchdog.stop();
    let final_exits = machine.guest_exits();
    let footprint = resident_bytes(machine.memory()).map_err(ReplayError::Footprint)?;
    let server_error = server.take_error();
    let misses = server.finish()?;
    if let Some(e) = server_error {
        return Err(e.into());
    }
    completed?;

    let verify_began = Instant::now();
    let mut divergence = run_divergence(
        outcome,
        final_exits,
        record.end_exit,
        timed_out.then_some(timeout),
    )?;
    let mut pages_checked = 0;
    if divergence.is_none() {
        let final_state = machine.save_state()?;
        let next_state = run.state(interval + 1)?;
        divergence = verify::verify_vcpu(&final_state.vcpu, &next_state.vcpu, record.end_exit);
        if divergence.is_none() {
            let expected_pages = run.checkpoint_pages(interval + 1)?;
            let result = verify::verify_memory(
                machine.memory(),
                final_state.vcpu.sregs.cr3,
                &inputs.source,
                uffd.installed(),
                &expected_pages,
                record.end_exit,
            )?;
            pages_checked = result.pages_checked;
            divergence = result.divergence;
        }
    }
    let verify_time = verify_began.elapsed();
    drop(machine);

    Ok(ReplayReport {
        interval,
        mode: options.mode,
        pages_loaded: load.pages,
        zero_pages_loaded: load.zero_pages,
        bytes_loaded: load.bytes,
        working_set_pages: inputs.working_set.as_ref().map_or(0, |w| w.len() as u64),
        restore_ms: ms(restore_time),
        read_ms: ms(read_time),
        load_ms: ms(load_time),
        misses: misses.misses,
        zero_misses: misses.zero_misses,
        footprint_bytes: footprint,
        replay_ms: ms(replay_time),
        verify_ms: ms(verify_time),
        recorded_ms: ms(inputs.recorded()),
        exits: final_exits.saturating_sub(record.start_exit),
        start_exit: record.start_exit,
        end_exit: record.end_exit,
        pages_checked,
        verified: divergence.is_none(),
        divergence,
    })
}
