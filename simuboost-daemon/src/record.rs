//! Continuous checkpointing.
//!
//! The [`Recorder`] observes the machine's guest-initiated exits. An interval ends at the first
//! one after `--interval` has passed; while the guest is paused there, the recorder completes the
//! pending exit, harvests the dirty set (KVM's dirty log or ring, OR'd with the device's own
//! writes), copies those frames into a staging buffer, saves the vCPU and device state and takes
//! the interval's event log. Then the guest resumes, and a writer thread hashes, deduplicates and
//! stores the checkpoint (simuboost-format). Staging buffers come from a small pool: when the
//! writer falls behind, the recorder waits for a buffer — the VM stays paused, and the wait is
//! reported as back-pressure — instead of growing memory without bound.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use simuboost_format::{
    Access, AccessKind, AccessSource, CheckpointInput, CheckpointPages, CheckpointState, Event,
    FormatError, IntervalRecord, RunMeta, RunWriter,
};
use simuboost_vmm::machine::{ExitObserver, Machine, MachineError, ObserverError};
use simuboost_vmm::persist::{save_events, Persist};
use simuboost_vmm::vstate::dirty::DirtyBitmap;
use simuboost_vmm::vstate::memory::huge_page_buffer;

use crate::interval::IntervalClock;
use crate::trace::Tracer;
pub use simuboost_report::daemon::RecordSummary;

/// Staging buffers in flight: one being filled while the writer stores the other.
const STAGING_BUFFERS: usize = 2;

/// How to record.
#[derive(Clone, Debug)]
pub struct RecordConfig {
    /// Interval length; an interval ends at the first guest-initiated exit after it.
    pub interval: Duration,
    /// Instead: an interval ends after this many guest-initiated exits.
    pub interval_exits: Option<u64>,
    /// Also store a full memory dump at every checkpoint (debug: lets tests compare the
    /// reconstructed memory with the real one).
    pub verify_dumps: bool,
    /// Show a live status line.
    pub progress: bool,
}

/// The working set of one interval, in first-touch order: the traced frames, then frames the
/// dirty log says were written without a traced mapping (none after re-arming, but the dirty log
/// is the authority on writes), then the device's own accesses, then the frames the vCPU's
/// system registers pointed at when the interval began (`system`; the tracer cannot see the
/// CPU read them, and a sparse restore needs them).
fn access_log(
    traced: &[u64],
    guest_written: &DirtyBitmap,
    vmm_written: &DirtyBitmap,
    system: &[u64],
) -> Vec<Access> {
    let written = |gfn: u64| guest_written.contains(gfn) || vmm_written.contains(gfn);
    let mut seen = std::collections::HashSet::new();
    let mut log = Vec::with_capacity(traced.len() + system.len());
    let frames = traced
        .iter()
        .map(|&gfn| (gfn, AccessSource::Mmu))
        .chain(guest_written.iter().map(|gfn| (gfn, AccessSource::Mmu)))
        .chain(vmm_written.iter().map(|gfn| (gfn, AccessSource::Dma)))
        .chain(system.iter().map(|&gfn| (gfn, AccessSource::Vcpu)));
    for (gfn, source) in frames {
        if seen.insert(gfn) {
            log.push(Access {
                gfn,
                kind: if written(gfn) {
                    AccessKind::Write
                } else {
                    AccessKind::Read
                },
                source,
                first_touch: log.len() as u32,
            });
        }
    }
    log
}

/// Errors of the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The run directory could not be written.
    #[error("recording failed: {0}")]
    Format(#[from] FormatError),
    /// The writer thread stopped.
    #[error("the checkpoint writer stopped unexpectedly")]
    WriterGone,
    /// The tracer failed.
    #[error("access tracing failed: {0}")]
    Trace(#[from] crate::trace::TraceError),
    /// The machine failed while a checkpoint was taken.
    #[error("taking a checkpoint failed: {0}")]
    Machine(#[from] MachineError),
    /// The writer thread could not be started.
    #[error("cannot start the checkpoint writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
}

/// What a boundary harvested: the frames the checkpoint holds, and the interval's access log.
struct Harvest {
    frames: DirtyBitmap,
    /// Frames the guest wrote (KVM's dirty log).
    guest_pages: u64,
    /// Frames the VMM wrote (device data, page-table bits it cleaned).
    vmm_pages: u64,
    access: Option<Vec<Access>>,
    /// Events the tracer lost.
    drops: u64,
}

/// What one checkpoint cost, for the run's totals.
#[derive(Clone, Copy)]
struct Costs {
    checkpoint: u64,
    initial: bool,
    /// Guest exits at the boundary.
    exits: u64,
    drops: u64,
    downtime: Duration,
    backpressure: Duration,
    dirty_bytes: u64,
    traced_len: u64,
}

/// One checkpoint on its way to the writer.
struct Job {
    state: CheckpointState,
    gfns: Vec<u64>,
    contents: Vec<u8>,
    interval: Option<IntervalRecord>,
    events: Vec<Event>,
    access: Option<Vec<Access>>,
    dump: Option<Vec<u8>>,
}

enum WriterMsg {
    Checkpoint(Box<Job>),
    Finish {
        exit_status: Option<u64>,
        reason: String,
    },
}

/// What the writer reports per checkpoint.
struct Written {
    checkpoint: u64,
    stats: simuboost_format::CheckpointStats,
}

/// The recorder: an [`ExitObserver`] that takes the checkpoints.
pub struct Recorder {
    config: RecordConfig,
    run_start: Instant,
    /// The interval now running (its checkpoint is the one taken last).
    interval: u64,
    clock: IntervalClock,
    interval_start_ns: u64,
    jobs: Option<SyncSender<WriterMsg>>,
    written: Receiver<Result<Written, FormatError>>,
    free_buffers: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<()>>,
    progress: Option<ProgressBar>,
    tracer: Option<Tracer>,
    summary: RecordSummary,
    downtime_total: Duration,
    dirty_total: u64,
    copy_total: Duration,
    copied_bytes: u64,
    working_set_total: u64,
    mem_bytes: u64,
    /// The frames the vCPU's system registers pointed at in the last checkpoint: the next
    /// access log's `vcpu` rows.
    start_system_frames: Vec<u64>,
}

impl Recorder {
    /// Creates the run directory's format writer and starts the writer thread.
    pub fn start(
        dir: &Path,
        meta: RunMeta,
        config: RecordConfig,
        tracer: Option<Tracer>,
    ) -> Result<Recorder, RecordError> {
        let mem_bytes = meta.mem_bytes;
        let mut writer = RunWriter::create(dir, meta)?;
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<WriterMsg>(STAGING_BUFFERS);
        let (written_tx, written_rx) = mpsc::channel();
        let (free_tx, free_rx) = mpsc::sync_channel(STAGING_BUFFERS);
        for _ in 0..STAGING_BUFFERS {
            // The channel has room for all of them.
            let _ = free_tx.send(Vec::new());
        }
        let thread = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for msg in jobs_rx {
                    match msg {
                        WriterMsg::Checkpoint(job) => {
                            let result = writer
                                .write_checkpoint(CheckpointInput {
                                    state: &job.state,
                                    pages: CheckpointPages {
                                        gfns: &job.gfns,
                                        contents: &job.contents,
                                    },
                                    interval: job.interval,
                                    events: &job.events,
                                    access: job.access.as_deref(),
                                    dump: job.dump.as_deref(),
                                })
                                .map(|stats| Written {
                                    checkpoint: job.state.checkpoint,
                                    stats,
                                });
                            let failed = result.is_err();
                            let _ = written_tx.send(result);
                            // Give the buffer back (keeps its memory populated for reuse).
                            let _ = free_tx.send(job.contents);
                            if failed {
                                return;
                            }
                        }
                        WriterMsg::Finish {
                            exit_status,
                            reason,
                        } => {
                            if let Err(e) = writer.finish(exit_status, &reason) {
                                let _ = written_tx.send(Err(e));
                            }
                            return;
                        }
                    }
                }
            })
            .map_err(RecordError::WriterThread)?;
        let progress = config.progress.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let clock = IntervalClock::new(config.interval, config.interval_exits);
        let now = Instant::now();
        Ok(Recorder {
            config,
            run_start: now,
            interval: 0,
            clock,
            interval_start_ns: 0,
            jobs: Some(jobs_tx),
            written: written_rx,
            free_buffers: free_rx,
            writer: Some(thread),
            progress,
            tracer,
            summary: RecordSummary::default(),
            downtime_total: Duration::ZERO,
            dirty_total: 0,
            copy_total: Duration::ZERO,
            copied_bytes: 0,
            working_set_total: 0,
            mem_bytes,
            start_system_frames: Vec::new(),
        })
    }

    /// Collects the writer's reports; fails if it failed.
    fn drain_written(&mut self, block: bool) -> Result<(), RecordError> {
        loop {
            let next = if block {
                self.written.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                self.written.try_recv()
            };
            match next {
                Ok(Ok(w)) => {
                    self.summary.checkpoints = self.summary.checkpoints.max(w.checkpoint + 1);
                    self.summary.bytes_written += w.stats.bytes_written;
                    self.summary.stored_pages += w.stats.stored_pages;
                    self.summary.zero_pages += w.stats.zero_pages;
                    self.summary.dedup_pages += w.stats.dedup_pages;
                    self.summary.event_pages += w.stats.event_pages;
                    self.summary.event_stored_pages += w.stats.event_stored_pages;
                }
                Ok(Err(e)) => return Err(RecordError::Format(e)),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    fn send(&mut self, msg: WriterMsg) -> Result<(), RecordError> {
        let jobs = self.jobs.as_ref().ok_or(RecordError::WriterGone)?;
        if jobs.send(msg).is_err() {
            // The writer thread ended: it reported why, unless it panicked.
            self.drain_written(false)?;
            return Err(RecordError::WriterGone);
        }
        Ok(())
    }

    /// Takes checkpoint `self.interval + 1` (or 0 before the start) while the guest is paused.
    /// The frames checkpoint `initial ? 0 : N+1` must hold, and the interval's access log:
    /// completes the pending exit, drains the tracer, harvests the dirty log and re-arms
    /// tracing for the next interval. The guest is paused.
    fn harvest(&mut self, machine: &mut Machine, initial: bool) -> Result<Harvest, RecordError> {
        let mut traced = Vec::new();
        let mut drops = 0;
        Ok(if initial {
            let mut frames = DirtyBitmap::new(self.mem_bytes / simuboost_abi::PAGE_SIZE);
            for gfn in machine.boot_frames() {
                frames.set(gfn);
            }
            // Nothing has run yet, but start the dirty tracking from a clean slate.
            machine.take_dirty()?;
            if let Some(tracer) = &mut self.tracer {
                tracer.drain(&mut traced)?;
            }
            Harvest {
                frames,
                guest_pages: 0,
                vmm_pages: 0,
                access: None,
                drops: 0,
            }
        } else {
            machine.complete_pending_exit()?;
            // The guest is paused: every event in the ring belongs to the interval just ended.
            if let Some(tracer) = &mut self.tracer {
                drops = tracer.drain(&mut traced)?;
            }
            let (guest, mut vmm) = machine.take_dirty()?;
            let access = self
                .tracer
                .as_ref()
                .map(|_| access_log(&traced, &guest, &vmm, &self.start_system_frames));
            if self.tracer.is_some() {
                // The page-table frames the re-arm cleans are part of this checkpoint.
                vmm.or(&machine.rearm_access_tracing()?);
            }
            let (guest_pages, vmm_pages) = (guest.count(), vmm.count());
            let mut frames = guest;
            frames.or(&vmm);
            Harvest {
                frames,
                guest_pages,
                vmm_pages,
                access,
                drops,
            }
        })
    }

    fn checkpoint(&mut self, machine: &mut Machine, initial: bool) -> Result<(), RecordError> {
        let began = Instant::now();
        self.drain_written(false)?;
        let Harvest {
            frames,
            guest_pages,
            vmm_pages,
            access,
            drops,
        } = self.harvest(machine, initial)?;
        let wait = Instant::now();
        let mut contents = self
            .free_buffers
            .recv()
            .map_err(|_| RecordError::WriterGone)?;
        let backpressure = wait.elapsed();
        let gfns: Vec<u64> = frames.iter().collect();
        let harvested = began.elapsed();
        prepare_staging(
            &mut contents,
            gfns.len() * simuboost_abi::PAGE_SIZE as usize,
        );
        machine.copy_frames(gfns.iter().copied(), &mut contents);
        let copied = began.elapsed();
        let snapshot = machine.save_state()?;
        self.start_system_frames = snapshot.vcpu.system_frames(self.mem_bytes);
        let checkpoint = if initial { 0 } else { self.interval + 1 };
        let events: Vec<Event> = save_events(self.interval, machine.take_events());
        let dump = self.config.verify_dumps.then(|| {
            let mut all = Vec::with_capacity(self.mem_bytes as usize);
            machine.copy_frames(0..self.mem_bytes / simuboost_abi::PAGE_SIZE, &mut all);
            all
        });
        let now_ns = self.run_start.elapsed().as_nanos() as u64;
        let downtime = began.elapsed();
        tracing::debug!(
            checkpoint,
            pages = gfns.len(),
            harvest_us = (harvested - backpressure).as_micros() as u64,
            backpressure_us = backpressure.as_micros() as u64,
            copy_us = (copied - harvested).as_micros() as u64,
            state_us = (downtime - copied).as_micros() as u64,
            "checkpoint captured"
        );
        let interval = (!initial).then(|| IntervalRecord {
            interval: self.interval,
            start_exit: self.clock.start_exit(),
            end_exit: snapshot.exits,
            start_ns: self.interval_start_ns,
            end_ns: now_ns,
            downtime_ns: downtime.as_nanos() as u64,
            dirty_pages: guest_pages,
            vmm_written_pages: vmm_pages,
            traced_frames: access.as_ref().map_or(0, |a| a.len() as u64),
            trace_drops: drops,
            complete: drops == 0,
            backpressure_ns: backpressure.as_nanos() as u64,
            ..IntervalRecord::default()
        });
        let state = CheckpointState {
            checkpoint,
            ..snapshot.save()
        };
        let dirty_bytes = gfns.len() as u64 * simuboost_abi::PAGE_SIZE;
        let traced_len = interval.as_ref().map_or(0, |i| i.traced_frames);
        self.summary.captured_pages += gfns.len() as u64;
        self.copy_total += copied - harvested;
        self.copied_bytes += dirty_bytes;
        self.send(WriterMsg::Checkpoint(Box::new(Job {
            state,
            gfns,
            contents,
            interval,
            events,
            access,
            dump,
        })))?;

        self.account(&Costs {
            checkpoint,
            initial,
            exits: snapshot.exits,
            drops,
            downtime,
            backpressure,
            dirty_bytes,
            traced_len,
        });
        self.clock.restart(snapshot.exits);
        self.interval_start_ns = now_ns;
        Ok(())
    }

    /// Adds a checkpoint to the run's totals (and warns about lost events and back-pressure).
    fn account(&mut self, costs: &Costs) {
        let Costs {
            checkpoint,
            initial,
            exits,
            drops,
            downtime,
            backpressure,
            dirty_bytes,
            traced_len,
        } = *costs;
        if drops > 0 {
            tracing::warn!(
                checkpoint,
                drops,
                "the tracer lost events: this interval's access log is marked incomplete"
            );
            self.summary.incomplete_intervals += 1;
        }
        if !initial {
            self.summary.intervals += 1;
            self.downtime_total += downtime;
            self.dirty_total += dirty_bytes / simuboost_abi::PAGE_SIZE;
            self.working_set_total += traced_len;
            let ms = downtime.as_secs_f64() * 1e3;
            self.summary.max_downtime_ms = self.summary.max_downtime_ms.max(ms);
            self.summary.backpressure_ms += backpressure.as_secs_f64() * 1e3;
            if backpressure > Duration::from_millis(1) {
                tracing::warn!(
                    checkpoint,
                    waited_ms = backpressure.as_secs_f64() * 1e3,
                    "the checkpoint writer is behind: the VM waited for a staging buffer"
                );
            }
            if let Some(bar) = &self.progress {
                bar.set_message(format!(
                    "interval {} | exits {exits} | dirty {:.1} MiB | downtime {ms:.2} ms | \
                     written {:.1} MiB",
                    self.interval,
                    dirty_bytes as f64 / (1 << 20) as f64,
                    self.summary.bytes_written as f64 / (1 << 20) as f64
                ));
            }
            self.interval += 1;
        }
    }

    /// Ends the recording: waits for the writer and marks the run finished in the manifest.
    pub fn finish(
        mut self,
        exit_status: Option<u64>,
        reason: &str,
    ) -> Result<RecordSummary, RecordError> {
        let sent = self.send(WriterMsg::Finish {
            exit_status,
            reason: reason.to_string(),
        });
        self.jobs = None;
        if let Some(thread) = self.writer.take() {
            if thread.join().is_err() {
                return Err(RecordError::WriterGone);
            }
        }
        self.drain_written(true)?;
        sent?;
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        let n = self.summary.intervals.max(1) as f64;
        self.summary.mean_downtime_ms = self.downtime_total.as_secs_f64() * 1e3 / n;
        self.summary.mean_dirty_pages = self.dirty_total as f64 / n;
        self.summary.mean_working_set = self.working_set_total as f64 / n;
        self.summary.copy_gbps =
            self.copied_bytes as f64 / self.copy_total.as_secs_f64().max(1e-9) / 1e9;
        Ok(self.summary)
    }
}

/// Empties a staging buffer and makes room for `bytes`. Growing it reserves the new room with
/// transparent huge pages: first touches of fresh memory are slow on this kind of host, and a
/// reused buffer keeps its pages, so only growth pays for them.
fn prepare_staging(buffer: &mut Vec<u8>, bytes: usize) {
    buffer.clear();
    if buffer.capacity() < bytes {
        *buffer = huge_page_buffer(bytes.next_power_of_two());
    }
}

impl ExitObserver for Recorder {
    fn before_start(&mut self, machine: &mut Machine) -> Result<(), ObserverError> {
        self.run_start = Instant::now();
        Ok(self.checkpoint(machine, true)?)
    }

    fn after_exit(&mut self, machine: &mut Machine) -> Result<(), ObserverError> {
        if self.clock.is_due(machine.guest_exits()) {
            self.checkpoint(machine, false)?;
        }
        Ok(())
    }

    fn before_shutdown(
        &mut self,
        machine: &mut Machine,
        _status: u64,
    ) -> Result<(), ObserverError> {
        // The final state: the last interval verifies against it.
        Ok(self.checkpoint(machine, false)?)
    }
}
