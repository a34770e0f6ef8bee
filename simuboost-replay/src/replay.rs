//! Replaying one interval: restore checkpoint N (sparse, full or lazy), feed the recorded
//! events back at the same exit counts, stop at the interval's end boundary and verify the
//! result against checkpoint N+1.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use simuboost_format::{
    spawn_reads, AccessSource, CheckpointState, FormatError, IntervalRecord, PendingReads, Run,
    WorkingSet,
};
use simuboost_vmm::devices::DeviceEvent;
use simuboost_vmm::machine::{MachineError, MachineSnapshot};
use simuboost_vmm::persist::{restore_cpuid, restore_events, Persist, PersistError};
use simuboost_vmm::vstate::vcpu::VcpuSnapshot;

use crate::engine::kvm::KvmEngine;
use crate::engine::sim::SimEngine;
use crate::engine::ReplayEngine;
use crate::restore::{
    load_dense, LoadStats, MissStats, PageLookup, PageSource, RestoreError, UffdMemory,
};
pub use simuboost_report::replay::{Divergence, Engine, Mode, ReplayReport, Simulation};

use crate::analysis::Analyses;
use crate::verify;

/// How to replay.
#[derive(Clone)]
pub struct ReplayOptions {
    /// What to load up front.
    pub mode: Mode,
    /// What executes the interval.
    pub engine: Engine,
    /// Give up (and report a divergence) if the interval has not ended after this long;
    /// `None`: one minute plus 20 times the interval's recorded length.
    pub timeout: Option<Duration>,
    /// The analyses to run (`--engine sim` only) and where their results go.
    pub analyses: Option<Arc<Analyses>>,
    /// How a sparse restore finds where its pages are (a benchmark's knob).
    pub page_lookup: PageLookupMode,
}

/// How a sparse restore finds its working set's slots and hashes. Each is the baseline of the
/// one before it in `cargo xtask bench restore-position`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PageLookupMode {
    /// From the access log's start pages (one small read, however long the run); for a log
    /// written before it had them, as `partial`.
    #[default]
    Log,
    /// From the row groups of the page map that hold the working set.
    Partial,
    /// From the whole page map, read up front.
    Whole,
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
    /// The simulator could not be started or failed (not the guest: the guest's failures are
    /// divergences).
    #[error(transparent)]
    SimulatorProcess(#[from] simuboost_sim_proto::ClientError),
    /// The analyses' output could not be written.
    #[error("writing the analyses: {0}")]
    Analysis(#[source] crate::analysis::OutputError),
    /// The simulator reported an error of its own.
    #[error("the simulator failed: {0}")]
    Simulator(String),
    /// The next checkpoint's vCPU state does not decode.
    #[error("the next checkpoint's state is corrupt: {0}")]
    NextState(#[source] PersistError),
    /// An engine was used out of order (a bug).
    #[error("internal error: the replay engine was used before it was prepared")]
    NotPrepared,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What a replay reads from the run before it touches guest memory.
pub struct IntervalInputs {
    /// Guest RAM, bytes.
    pub mem_bytes: u64,
    /// The interval's row of the intervals table.
    pub record: IntervalRecord,
    /// The machine at the interval's start (checkpoint N).
    pub machine: MachineSnapshot,
    /// The eBPF working set (the access log's frames), when the run has one.
    pub access_log: Option<Vec<u64>>,
    /// For the simulator: the access log's frames without its `vcpu` rows, i.e. what the
    /// tracer, the dirty log and the VMM saw.
    pub tracer_log: Option<Vec<u64>>,
    /// The frames sparse mode loads: the access log plus the frames the vCPU state points at.
    pub working_set: Option<Vec<u64>>,
    /// Page contents as of checkpoint N.
    pub source: Arc<PageSource>,
}

impl IntervalInputs {
    /// Starts reading what the restore needs of the interval's tables (the events and the end
    /// state are read apart, see [`PendingTail`]). They are independent files, each a small
    /// Parquet read whose cost is mostly fixed (footer, decoder set-up), so two groups are read
    /// at once, each on a decoder thread ([`spawn_reads`]): the interval's row and the start
    /// state; and the access log with the part of the page map it needs (or the whole map).
    fn start_reading(
        run: &Run,
        interval: u64,
        options: &ReplayOptions,
    ) -> Result<PendingInputs, ReplayError> {
        let began = Instant::now();
        let head = {
            let owned = run.clone();
            spawn_reads(run.dir(), move || {
                let head = read_head(&owned, interval);
                tracing::debug!(
                    interval,
                    ms = ms(began.elapsed()),
                    "read interval and start state"
                );
                head
            })?
        };
        let log_and_map = {
            let owned = run.clone();
            let options = options.clone();
            spawn_reads(run.dir(), move || {
                let read = read_log_and_map(&owned, interval, &options);
                tracing::debug!(
                    interval,
                    ms = ms(began.elapsed()),
                    "read access log and page map"
                );
                read
            })?
        };
        Ok(PendingInputs {
            head,
            log_and_map,
            began,
        })
    }

    /// The recorded length of the interval.
    fn recorded(&self) -> Duration {
        Duration::from_nanos(self.record.end_ns.saturating_sub(self.record.start_ns))
    }
}

/// The reads [`IntervalInputs::start_reading`] started.
struct PendingInputs {
    head: PendingReads<(IntervalRecord, MachineSnapshot), ReplayError>,
    log_and_map: PendingReads<LogAndMap, ReplayError>,
    began: Instant,
}

impl PendingInputs {
    /// The interval's inputs, once read, with the working set and the page source made from
    /// them.
    fn wait(
        self,
        run: &Run,
        interval: u64,
        options: &ReplayOptions,
    ) -> Result<IntervalInputs, ReplayError> {
        let mem_bytes = run.manifest().meta.mem_bytes;
        let began = self.began;
        // Errors in a fixed order, whichever group finished first.
        let head = self.head.wait();
        let log_and_map = self.log_and_map.wait();
        let (record, machine) = head?;
        let LogAndMap {
            working_set,
            tracer_log,
            map,
        } = log_and_map?;
        let (access_log, start_pages) = match working_set {
            Some(set) => (Some(set.frames), set.start_pages),
            None => (None, None),
        };
        let working_set = match options.mode {
            Mode::Sparse => {
                let log = access_log
                    .as_ref()
                    .ok_or(ReplayError::NoWorkingSet(interval))?;
                if !record.complete {
                    tracing::warn!(
                        interval,
                        "the interval's access log is incomplete (the tracer lost events): pages \
                         it missed are loaded on demand"
                    );
                }
                Some(sparse_set(log, &machine.vcpu, mem_bytes))
            }
            Mode::Full | Mode::Lazy => None,
        };
        let mut source = PageSource::new(map, run.page_store()?);
        if let (Some(log), Some(pages)) = (&access_log, start_pages) {
            source.set_known(log, pages);
        }
        // The frames the vCPU state points at that the log does not say where to find are
        // looked up in the page map now (~1 ms: every page table of the map is opened). The
        // recorder puts them in the log (source `vcpu`), so normally nothing is left.
        if let (Some(_), PageLookup::Partial(map)) = (&working_set, &source.map) {
            let system: Vec<u64> = machine
                .vcpu
                .system_frames(mem_bytes)
                .into_iter()
                .filter(|&gfn| !source.knows(gfn))
                .collect();
            if !system.is_empty() {
                map.load(&system)?;
                tracing::debug!(
                    interval,
                    ms = ms(began.elapsed()),
                    "read system frames' page map entries"
                );
            }
        }
        let source = Arc::new(source);
        Ok(IntervalInputs {
            mem_bytes,
            record,
            machine,
            access_log,
            tracer_log,
            working_set,
            source,
        })
    }
}

/// What only the machine and the checks around the run need, read as a group of its own while
/// the rest is read and memory loads: the interval's events, needed once the machine is built,
/// and checkpoint N+1's state, needed to check where the interval ends before the run and to
/// verify after it. `compress` replays thousands of events a second whose disk reads come as
/// page references, ~1.4 ms of reading in a fresh process, against ~6 ms for the whole sparse
/// restore.
struct PendingTail(PendingReads<Tail, ReplayError>);

/// What [`PendingTail`] read.
struct Tail {
    /// The interval's events, to feed back.
    events: Vec<DeviceEvent>,
    /// Checkpoint N+1's state: where the interval ends, and what the run must end in.
    end_state: CheckpointState,
}

impl PendingTail {
    /// Starts reading interval `interval`'s events and end state.
    fn start(run: &Run, interval: u64) -> Result<PendingTail, ReplayError> {
        let run = run.clone();
        let began = Instant::now();
        let dir = run.dir().to_path_buf();
        let reads = spawn_reads(&dir, move || {
            let events = run.events(interval).map(restore_events)?;
            tracing::debug!(interval, ms = ms(began.elapsed()), "read events");
            let end_state = run.state(interval + 1)?;
            tracing::debug!(interval, ms = ms(began.elapsed()), "read end state");
            Ok(Tail { events, end_state })
        })?;
        Ok(PendingTail(reads))
    }

    /// The events and the end state, once read.
    fn wait(self) -> Result<Tail, ReplayError> {
        self.0.wait()
    }
}

/// The interval's row and the machine at its start, checked to chain with checkpoint N (the end
/// is checked against checkpoint N+1 once [`PendingTail`] has read it).
fn read_head(run: &Run, interval: u64) -> Result<(IntervalRecord, MachineSnapshot), ReplayError> {
    let record = run.interval(interval)?;
    let state = run.state(interval)?;
    check_boundary(
        run,
        &record,
        "start_exit",
        record.start_exit,
        interval,
        state.exit,
    )?;
    let machine = MachineSnapshot::restore((), &state).map_err(|source| ReplayError::BadState {
        path: simuboost_format::layout::state_table(run.dir(), interval),
        source,
    })?;
    Ok((record, machine))
}

/// The access log's working set (when the replay wants it) and the page map. A sparse restore
/// of a local run reads none of the map up front when the log says where its frames are (what
/// it lacks is read on demand: the frames the vCPU state points at, misses, verification), and
/// otherwise only the part the log needs, since reading all of it grows with the written part
/// of guest memory. Full and lazy restores need every entry. A run in object storage reads
/// each table whole, with one request: a partial read costs a request for the footer and more
/// for the row groups, and the S3 tests took twice as long with it (557 s against 271 s).
fn read_log_and_map(
    run: &Run,
    interval: u64,
    options: &ReplayOptions,
) -> Result<LogAndMap, ReplayError> {
    // The simulator measures the tracer against what it sees, so it reads the access log in
    // every mode.
    let wants_log = options.mode == Mode::Sparse || options.engine == Engine::Sim;
    let mut working_set = if wants_log {
        run.working_set(interval)?
    } else {
        None
    };
    if options.mode == Mode::Sparse && working_set.is_none() {
        return Err(ReplayError::NoWorkingSet(interval));
    }
    if options.page_lookup != PageLookupMode::Log {
        if let Some(set) = working_set.as_mut() {
            set.start_pages = None;
        }
    }
    let remote = crate::runs::is_remote_path(run.storage().root());
    let partial =
        options.mode == Mode::Sparse && options.page_lookup != PageLookupMode::Whole && !remote;
    let map = match &working_set {
        Some(set) if partial => {
            let map = run.partial_page_map(interval)?;
            if set.start_pages.is_none() {
                map.load(&set.frames)?;
            }
            PageLookup::Partial(map)
        }
        _ => PageLookup::Whole(run.page_map(interval)?),
    };
    // The simulator measures the tracer by the rows it made, without the `vcpu` rows the
    // recorder adds (which the sparse set has anyway).
    let tracer_log = match (&working_set, options.engine) {
        (Some(_), Engine::Sim) => run.access(interval)?.map(|rows| {
            rows.iter()
                .filter(|a| a.source != AccessSource::Vcpu)
                .map(|a| a.gfn)
                .collect()
        }),
        _ => None,
    };
    Ok(LogAndMap {
        working_set,
        tracer_log,
        map,
    })
}

/// What [`read_log_and_map`] read.
struct LogAndMap {
    /// The access log's frames and their start pages.
    working_set: Option<WorkingSet>,
    /// For the simulator: the log's frames without its `vcpu` rows.
    tracer_log: Option<Vec<u64>>,
    /// The page map, whole or as much as the replay needs.
    map: PageLookup,
}

/// Checks that interval `record`'s boundary `column` (`start_exit` or `end_exit`, holding
/// `recorded`) is the exit count at which checkpoint `checkpoint` was taken (`state_exit`, from
/// its state). A replay trusts these boundaries to know where to stop, so a run whose files
/// disagree is refused naming the interval's file, not replayed to a wrong place.
fn check_boundary(
    run: &Run,
    record: &IntervalRecord,
    column: &str,
    recorded: u64,
    checkpoint: u64,
    state_exit: u64,
) -> Result<(), ReplayError> {
    if recorded == state_exit {
        return Ok(());
    }
    Err(ReplayError::Format(FormatError::Corrupt {
        path: simuboost_format::layout::interval_table(run.dir(), record.interval),
        what: format!(
            "{column} {recorded} does not chain: checkpoint {checkpoint} ({}) was taken at exit \
             {state_exit}",
            simuboost_format::layout::state_table(run.dir(), checkpoint).display()
        ),
    }))
}

/// The frames sparse mode loads: the access log plus the frames the vCPU state points at,
/// sorted.
fn sparse_set(access_log: &[u64], vcpu: &VcpuSnapshot, mem_bytes: u64) -> Vec<u64> {
    let mut gfns = access_log.to_vec();
    gfns.extend(vcpu.system_frames(mem_bytes));
    gfns.sort_unstable();
    gfns.dedup();
    gfns
}

/// Loads guest memory as the mode says.
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
            // Full mode reads the whole map (IntervalInputs::read); were it partial, the
            // frames would still come in correctly, as misses.
            let nonzero: Vec<u64> = match inputs.source.whole() {
                Some(map) => map.iter().map(|(gfn, _)| gfn).collect(),
                None => Vec::new(),
            };
            let mut load = memory.install(&inputs.source, &nonzero)?;
            let zeros = memory.install_zero_rest()?;
            load.pages += zeros;
            load.zero_pages += zeros;
            load
        }
        Mode::Lazy => LoadStats::default(),
    })
}

/// Replays interval `interval` of `run`.
pub fn replay_interval(
    run: &Run,
    interval: u64,
    options: ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    check_interval(run, interval)?;
    match options.engine {
        Engine::Kvm => {
            let meta = &run.manifest().meta;
            let cpuid = restore_cpuid(&meta.cpuid).map_err(|source| ReplayError::BadState {
                path: simuboost_format::layout::manifest(run.dir()),
                source,
            })?;
            let engine = KvmEngine::new(meta.mem_bytes, cpuid)?;
            replay_with(run, interval, options, engine, |_, _| None)
        }
        Engine::Sim => {
            let engine = SimEngine::new(run.manifest().meta.mem_bytes, options.analyses.clone())?;
            replay_with(run, interval, options, engine, simulation)
        }
    }
}

/// What the simulator observed, with the tracer measured against it.
fn simulation(engine: &SimEngine, inputs: &IntervalInputs) -> Option<Simulation> {
    let seen = engine.observations()?;
    let mut accessed = seen.accessed.clone();
    accessed.extend(&seen.device_written);
    let share = |part: usize, whole: usize| part as f64 / whole.max(1) as f64;
    let (recall, recall_log_only, precision) = match (&inputs.access_log, &inputs.tracer_log) {
        (Some(log), Some(tracer_log)) => {
            let sparse: BTreeSet<u64> = sparse_set(log, &inputs.machine.vcpu, inputs.mem_bytes)
                .into_iter()
                .collect();
            let log: BTreeSet<u64> = tracer_log.iter().copied().collect();
            (
                Some(share(
                    accessed.intersection(&sparse).count(),
                    accessed.len(),
                )),
                Some(share(accessed.intersection(&log).count(), accessed.len())),
                Some(share(log.intersection(&accessed).count(), log.len())),
            )
        }
        _ => (None, None, None),
    };
    Some(Simulation {
        instructions: seen.instructions,
        pages_accessed: accessed.len() as u64,
        page_table_pages: seen.page_table_frames.len() as u64,
        device_pages: seen.device_written.difference(&seen.accessed).count() as u64,
        tracer_recall: recall,
        tracer_recall_log_only: recall_log_only,
        tracer_precision: precision,
        sim_ms: seen.sim_ms,
        analysis: seen.analysis,
    })
}

/// Replays `interval` with `engine`: restore, run, verify.
fn replay_with<E: ReplayEngine>(
    run: &Run,
    interval: u64,
    options: ReplayOptions,
    mut engine: E,
    observe: impl Fn(&E, &IntervalInputs) -> Option<Simulation>,
) -> Result<ReplayReport, ReplayError> {
    let began = Instant::now();
    let fetched_before = run.storage_stats();
    let pending = IntervalInputs::start_reading(run, interval, &options)?;
    let tail = PendingTail::start(run, interval)?;
    // The VM is created while the run is read: neither needs the other.
    let started = engine.start();
    tracing::debug!(interval, ms = ms(began.elapsed()), "engine started");
    let inputs = pending.wait(run, interval, &options)?;
    started?;
    let read_time = began.elapsed();

    let failed = Arc::new(AtomicBool::new(false));
    let load_began = Instant::now();
    let dense = match inputs.source.whole() {
        Some(map) if options.mode == Mode::Full && engine.memory_is_private() => Some(map),
        _ => None,
    };
    let (load, installed, server) = if let Some(map) = dense {
        // Nothing will be missing: no miss handler.
        let (load, installed) = load_dense(engine.memory(), &inputs.source, map)?;
        (load, installed, None)
    } else {
        let uffd = UffdMemory::register(engine.memory(), engine.memory_is_private())?;
        let load = load_memory(&uffd, &inputs, options.mode)?;
        let peers = engine.peers()?;
        let server = uffd.serve(inputs.source.clone(), failed.clone(), peers)?;
        (load, uffd.installed().clone(), Some(server))
    };
    let load_time = load_began.elapsed();
    let Tail { events, end_state } = tail.wait()?;
    let record = &inputs.record;
    check_boundary(
        run,
        record,
        "end_exit",
        record.end_exit,
        interval + 1,
        end_state.exit,
    )?;
    engine.prepare(&inputs, events)?;
    let restore_time = began.elapsed();
    tracing::debug!(
        interval,
        mode = options.mode.name(),
        engine = options.engine.name(),
        read_ms = ms(read_time),
        load_ms = ms(load_time),
        total_ms = ms(restore_time),
        "restored"
    );

    let timeout = options
        .timeout
        .unwrap_or(Duration::from_secs(60) + inputs.recorded() * 20);
    let outcome = engine.run(&inputs, timeout, failed);
    let footprint = engine.footprint();
    let misses = match server {
        Some(server) => {
            let server_error = server.take_error();
            let misses = server.finish()?;
            if let Some(e) = server_error {
                return Err(e.into());
            }
            misses
        }
        None => MissStats::default(),
    };
    let outcome = outcome?;
    let footprint = footprint?;

    let verify_began = Instant::now();
    let end_exit = inputs.record.end_exit;
    let mut divergence = outcome.divergence;
    let mut pages_checked = 0;
    if divergence.is_none() {
        divergence = engine.verify_registers(&end_state.vcpu, end_exit)?;
        if divergence.is_none() {
            let expected_pages = run.checkpoint_pages(interval + 1)?;
            let cr3 = engine.final_cr3()?;
            let result = verify::verify_memory(
                engine.memory(),
                cr3,
                &inputs.source,
                &installed,
                &expected_pages,
                end_exit,
            )?;
            pages_checked = result.pages_checked;
            divergence = result.divergence;
        }
    }
    let verify_time = verify_began.elapsed();
    let simulation = observe(&engine, &inputs);
    let fetched = run.storage_stats().since(fetched_before);
    let page_store = inputs.source.store.stats();

    Ok(ReplayReport {
        interval,
        mode: options.mode,
        engine: options.engine,
        pages_loaded: load.pages,
        zero_pages_loaded: load.zero_pages,
        bytes_loaded: load.bytes,
        bytes_fetched: fetched.bytes,
        requests: fetched.requests,
        page_store_bytes_read: page_store.bytes,
        page_store_requests: page_store.requests,
        working_set_pages: inputs.working_set.as_ref().map_or(0, |w| w.len() as u64),
        restore_ms: ms(restore_time),
        read_ms: ms(read_time),
        load_ms: ms(load_time),
        misses: misses.misses,
        zero_misses: misses.zero_misses,
        footprint_bytes: footprint,
        replay_ms: ms(outcome.run_time),
        verify_ms: ms(verify_time),
        recorded_ms: ms(inputs.recorded()),
        exits: outcome.final_exits.saturating_sub(record.start_exit),
        start_exit: record.start_exit,
        end_exit: record.end_exit,
        pages_checked,
        verified: divergence.is_none(),
        divergence,
        simulation,
    })
}
