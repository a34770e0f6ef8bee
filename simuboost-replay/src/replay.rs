//! Replaying one interval: restore checkpoint N (sparse, full or lazy), feed the recorded
//! events back at the same exit counts, stop at the interval's end boundary and verify the
//! result against checkpoint N+1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use simuboost_format::{FormatError, Run};
use simuboost_vmm::devices::paravirt::{DeviceEvent, DeviceSnapshot};
use simuboost_vmm::devices::replay::ReplayDevice;
use simuboost_vmm::machine::{Machine, MachineError, NoObserver, RunControl};
use simuboost_vmm::vstate::memory::create_guest_memory_backed;
use simuboost_vmm::vstate::vcpu::VcpuSnapshot;

use crate::restore::{resident_bytes, PageSource, RestoreError, UffdMemory};
use crate::verify::{self, Divergence};

/// Which frames are loaded before the replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The interval's working set (from its access log), at its newest version as of N.
    Sparse,
    /// Every non-zero page of the state at N (the dense baseline).
    Full,
    /// Nothing: every page is a miss (the on-demand baseline of snapshot systems).
    Lazy,
}

impl Mode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sparse => "sparse",
            Mode::Full => "full",
            Mode::Lazy => "lazy",
        }
    }
}

/// How to replay.
#[derive(Clone, Copy, Debug)]
pub struct ReplayOptions {
    /// What to load up front.
    pub mode: Mode,
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
    #[error("{0}")]
    Machine(#[from] MachineError),
    /// The recorded state does not decode.
    #[error("{path}: corrupt: {what}")]
    BadState {
        /// The state file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// The result of replaying one interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The interval.
    pub interval: u64,
    /// The mode.
    pub mode: Mode,
    /// Frames installed before the replay started.
    pub pages_loaded: u64,
    /// Of those, zero pages (mapped, nothing read).
    pub zero_pages_loaded: u64,
    /// Bytes read from the run and copied into guest memory before the replay started.
    pub bytes_loaded: u64,
    /// Frames in the interval's working set (0 without an access log).
    pub working_set_pages: u64,
    /// Time to restore: reading the state, events and page map, loading pages, and setting up
    /// the VM and vCPU, milliseconds.
    pub restore_ms: f64,
    /// Of which, reading the run's tables: vCPU and device state, events, access log and the
    /// page map as of N.
    pub read_ms: f64,
    /// Of which, installing pages (reading pages.bin and copying into guest memory).
    pub load_ms: f64,
    /// Frames served on demand during the replay.
    pub misses: u64,
    /// Of those, zero pages.
    pub zero_misses: u64,
    /// Peak resident guest memory, bytes.
    pub footprint_bytes: u64,
    /// Time from resuming the vCPU to the end boundary, milliseconds.
    pub replay_ms: f64,
    /// Time to verify, milliseconds.
    pub verify_ms: f64,
    /// Recorded length of the interval (wall clock while recording), milliseconds.
    pub recorded_ms: f64,
    /// Guest-initiated exits replayed.
    pub exits: u64,
    /// Exit count at the interval's start and end.
    pub start_exit: u64,
    /// Exit count at the interval's end boundary.
    pub end_exit: u64,
    /// Pages compared with the next checkpoint.
    pub pages_checked: u64,
    /// True when the final state equals checkpoint N+1.
    pub verified: bool,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
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

const PAGE_BYTES: u64 = simuboost_format::PAGE_SIZE as u64;

/// The frames the vCPU's system registers point at: the root of the page tables and the
/// descriptor tables (GDT, IDT, TSS). The tracer cannot see these accesses: KVM starts every
/// walk at CR3 but reports only the entries it reads, which name the next level; descriptor
/// tables are read by KVM's instruction emulator (ring 0 is emulated on PVM), not through the
/// MMU. They are part of the working set of every interval.
fn system_frames(vcpu: &VcpuSnapshot, mem_bytes: u64) -> Vec<u64> {
    let s = &vcpu.sregs;
    let mut frames = vec![(s.cr3 & 0x000f_ffff_ffff_f000) / PAGE_BYTES];
    for (base, limit) in [
        (s.gdt.base, u64::from(s.gdt.limit)),
        (s.idt.base, u64::from(s.idt.limit)),
        (s.tr.base, u64::from(s.tr.limit)),
    ] {
        let end = base.saturating_add(limit).min(mem_bytes.saturating_sub(1));
        if base < mem_bytes {
            frames.extend(base / PAGE_BYTES..=end / PAGE_BYTES);
        }
    }
    frames
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    let record = run.interval(interval)?;
    let state = run.state(interval)?;
    let events: Vec<DeviceEvent> = run
        .events(interval)?
        .into_iter()
        .map(DeviceEvent::from_saved)
        .collect();
    let state_path = simuboost_format::layout::state_table(run.dir(), interval);
    let bad_state = |what: String| ReplayError::BadState {
        path: state_path.clone(),
        what,
    };
    let vcpu = VcpuSnapshot::from_saved(&state.vcpu).map_err(|e| bad_state(e.to_string()))?;
    let device: DeviceSnapshot = serde_json::from_str(&state.device_json)
        .map_err(|e| bad_state(format!("device state: {e}")))?;
    let read_state = began.elapsed();
    let working_set: Option<Vec<u64>> = match options.mode {
        Mode::Sparse => {
            let access = run
                .access(interval)?
                .ok_or(ReplayError::NoWorkingSet(interval))?;
            if !record.complete {
                tracing::warn!(
                    interval,
                    "the interval's access log is incomplete (the tracer lost events): pages it \
                     missed are loaded on demand"
                );
            }
            let mut gfns: Vec<u64> = access.iter().map(|a| a.gfn).collect();
            gfns.extend(system_frames(&vcpu, mem_bytes));
            gfns.sort_unstable();
            gfns.dedup();
            Some(gfns)
        }
        Mode::Full | Mode::Lazy => None,
    };
    let read_access = began.elapsed();
    let source = Arc::new(PageSource::new(run.page_map(interval)?, run.page_store()?));
    let read_map = began.elapsed();

    let memory = create_guest_memory_backed(mem_bytes, false).map_err(MachineError::from)?;
    let uffd = UffdMemory::register(&memory)?;
    let load_began = Instant::now();
    let load = match options.mode {
        Mode::Sparse => uffd.install(&source, working_set.as_deref().unwrap_or_default())?,
        Mode::Full => {
            let nonzero: Vec<u64> = source.map.iter().map(|(gfn, _)| gfn).collect();
            let mut load = uffd.install(&source, &nonzero)?;
            let zeros = uffd.install_zero_rest()?;
            load.pages += zeros;
            load.zero_pages += zeros;
            load
        }
        Mode::Lazy => Default::default(),
    };
    let load_time = load_began.elapsed();
    let failed = Arc::new(AtomicBool::new(false));
    let server = uffd.serve(source.clone(), failed.clone())?;
    let control = RunControl::default();
    let mut machine = Machine::restore(
        memory,
        &vcpu,
        state.exit,
        Box::new(ReplayDevice::new(
            events,
            record.end_exit,
            mem_bytes,
            device,
        )),
        control.clone(),
    )?;
    let restore_time = began.elapsed();
    tracing::debug!(
        interval,
        mode = options.mode.name(),
        state_and_events_ms = ms(read_state),
        access_log_ms = ms(read_access - read_state),
        page_map_ms = ms(read_map - read_access),
        load_ms = ms(load_time),
        total_ms = ms(restore_time),
        "restored"
    );

    // The watchdog: aborts the run when the page server failed or the timeout passed, and
    // keeps kicking until the run has ended (a kick can be lost just before KVM_RUN).
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let control = control.clone();
        let failed = failed.clone();
        let recorded = Duration::from_nanos(record.end_ns.saturating_sub(record.start_ns));
        let timeout = options
            .timeout
            .unwrap_or(Duration::from_secs(60) + recorded * 20);
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
            .map_err(|e| RestoreError::Handler(format!("cannot start the watchdog: {e}")))?;
        (thread, timed_out, timeout)
    };

    let run_began = Instant::now();
    let outcome = machine.run(None, Duration::from_secs(1), &mut NoObserver);
    let completed = match &outcome {
        Ok(_) => machine.complete_pending_exit().map_err(ReplayError::from),
        Err(_) => Ok(()),
    };
    let replay_time = run_began.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.0.join();
    let timed_out = watchdog.1.load(Ordering::SeqCst);
    let final_exits = machine.guest_exits();
    let footprint = resident_bytes(machine.memory()).unwrap_or(0);
    let server_error = server.take_error();
    let misses = server.finish()?;
    if let Some(e) = server_error {
        return Err(e.into());
    }
    completed?;

    let verify_began = Instant::now();
    let mut divergence = match outcome {
        Ok(report) => match report.exit_status {
            Some(status) if final_exits != record.end_exit => Some(Divergence::request(
                final_exits,
                format!(
                    "the guest exited (status {status}) at exit {final_exits}, the interval ends \
                     at exit {}",
                    record.end_exit
                ),
            )),
            _ => None,
        },
        Err(MachineError::Device(simuboost_vmm::devices::paravirt::DeviceError::Divergence {
            exit,
            what,
        })) => Some(Divergence::request(exit, what)),
        Err(MachineError::GuestCrash(crash)) => Some(Divergence::crash(
            crash.exits,
            crash.to_string().trim_end().to_string(),
        )),
        Err(MachineError::Aborted) if timed_out => Some(Divergence::timeout(
            final_exits,
            format!(
                "the interval did not end within {:.1} s (last exit {final_exits}, the interval \
                 ends at exit {})",
                watchdog.2.as_secs_f64(),
                record.end_exit
            ),
        )),
        Err(e) => return Err(e.into()),
    };
    let mut pages_checked = 0;
    if divergence.is_none() {
        let final_state = machine.save_state()?;
        let next_state = run.state(interval + 1)?;
        let expected_pages = run.checkpoint_pages(interval + 1)?;
        let result = verify::verify(
            &machine,
            &final_state.vcpu,
            &next_state.vcpu,
            &source,
            uffd.installed(),
            &expected_pages,
            record.end_exit,
        )?;
        pages_checked = result.pages_checked;
        divergence = result.divergence;
    }
    let verify_time = verify_began.elapsed();
    drop(machine);

    Ok(ReplayReport {
        interval,
        mode: options.mode,
        pages_loaded: load.pages,
        zero_pages_loaded: load.zero_pages,
        bytes_loaded: load.bytes,
        working_set_pages: working_set.as_ref().map_or(0, |w| w.len() as u64),
        restore_ms: ms(restore_time),
        read_ms: ms(read_map),
        load_ms: ms(load_time),
        misses: misses.misses,
        zero_misses: misses.zero_misses,
        footprint_bytes: footprint,
        replay_ms: ms(replay_time),
        verify_ms: ms(verify_time),
        recorded_ms: (record.end_ns.saturating_sub(record.start_ns)) as f64 / 1e6,
        exits: final_exits.saturating_sub(record.start_exit),
        start_exit: record.start_exit,
        end_exit: record.end_exit,
        pages_checked,
        verified: divergence.is_none(),
        divergence,
    })
}
