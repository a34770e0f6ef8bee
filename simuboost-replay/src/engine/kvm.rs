//! The KVM engine: the interval runs in a KVM VM at hardware speed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use simuboost_format::VcpuState;
use simuboost_vmm::devices::replay::ReplayDevice;
use simuboost_vmm::devices::{DeviceError, DeviceEvent};
use simuboost_vmm::machine::{
    BlankMachine, Machine, MachineError, MachineSnapshot, NoObserver, RunControl, RunReport,
};
use simuboost_vmm::vstate::memory::{create_guest_memory_backed, GuestMemory};

use super::{ReplayEngine, RunOutcome};
use crate::replay::{IntervalInputs, ReplayError};
use crate::restore::{resident_bytes, PeerUffd};
use crate::verify::{self, Divergence};

/// A KVM VM restored from the interval's start state.
pub struct KvmEngine {
    /// Guest RAM (the machine holds another handle on the same mapping).
    memory: GuestMemory,
    /// The vCPU's CPUID, as recorded.
    cpuid: Option<CpuId>,
    /// The VM, made by `start` while the interval's inputs are read.
    blank: Option<BlankMachine>,
    machine: Option<Machine>,
    control: RunControl,
    /// The machine's state after the run, saved once for both verification steps.
    final_state: Option<MachineSnapshot>,
}

impl KvmEngine {
    /// Guest RAM for a KVM replay: private anonymous memory in 4 KiB pages (a huge page would
    /// make one restored frame resident as 512). The vCPU gets `cpuid`, the run's (`None`: what
    /// this host's KVM supports, for runs that did not record theirs).
    pub fn new(mem_bytes: u64, cpuid: Option<CpuId>) -> Result<KvmEngine, ReplayError> {
        let memory = create_guest_memory_backed(mem_bytes, false).map_err(MachineError::from)?;
        Ok(KvmEngine {
            memory,
            cpuid,
            blank: None,
            machine: None,
            control: RunControl::default(),
            final_state: None,
        })
    }

    /// The machine's state after the run (saved on first use).
    fn final_state(&mut self) -> Result<&MachineSnapshot, ReplayError> {
        if self.final_state.is_none() {
            let machine = self.machine.as_ref().ok_or(ReplayError::NotPrepared)?;
            self.final_state = Some(machine.save_state()?);
        }
        self.final_state.as_ref().ok_or(ReplayError::NotPrepared)
    }
}

impl ReplayEngine for KvmEngine {
    fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    fn memory_is_private(&self) -> bool {
        true
    }

    fn peers(&mut self) -> Result<Vec<PeerUffd>, ReplayError> {
        Ok(Vec::new())
    }

    fn start(&mut self) -> Result<(), ReplayError> {
        self.blank = Some(BlankMachine::new(self.memory.clone(), self.cpuid.as_ref())?);
        Ok(())
    }

    fn prepare(
        &mut self,
        inputs: &IntervalInputs,
        events: Vec<DeviceEvent>,
    ) -> Result<(), ReplayError> {
        let mem_bytes = inputs.mem_bytes;
        let blank = match self.blank.take() {
            Some(blank) => blank,
            None => BlankMachine::new(self.memory.clone(), self.cpuid.as_ref())?,
        };
        self.machine = Some(
            blank.restore(
                &inputs.machine.vcpu,
                inputs.machine.exits,
                Box::new(
                    ReplayDevice::new(
                        events,
                        inputs.record.end_exit,
                        mem_bytes,
                        inputs.machine.device.clone(),
                    )
                    .with_stored_pages(inputs.source.clone()),
                ),
                self.control.clone(),
            )?,
        );
        Ok(())
    }

    fn run(
        &mut self,
        inputs: &IntervalInputs,
        timeout: Duration,
        failed: Arc<AtomicBool>,
    ) -> Result<RunOutcome, ReplayError> {
        let watchdog = Watchdog::start(self.control.clone(), failed, timeout)?;
        let machine = self.machine.as_mut().ok_or(ReplayError::NotPrepared)?;
        let began = Instant::now();
        let outcome = machine.run(None, Duration::from_secs(1), &mut NoObserver);
        let completed = match &outcome {
            Ok(_) => machine.complete_pending_exit().map_err(ReplayError::from),
            Err(_) => Ok(()),
        };
        let run_time = began.elapsed();
        let timed_out = watchdog.stop();
        let final_exits = machine.guest_exits();
        completed?;
        let divergence = run_divergence(
            outcome,
            final_exits,
            inputs.record.end_exit,
            timed_out.then_some(timeout),
        )?;
        Ok(RunOutcome {
            divergence,
            final_exits,
            run_time,
        })
    }

    fn verify_registers(
        &mut self,
        expected: &VcpuState,
        end_exit: u64,
    ) -> Result<Option<Divergence>, ReplayError> {
        let state = self.final_state()?;
        Ok(verify::verify_vcpu(&state.vcpu, expected, end_exit))
    }

    fn final_cr3(&mut self) -> Result<u64, ReplayError> {
        Ok(self.final_state()?.vcpu.sregs.cr3)
    }

    fn footprint(&self) -> Result<u64, ReplayError> {
        resident_bytes(self.memory()).map_err(ReplayError::Footprint)
    }
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
            Some(status) if final_exits != end_exit => {
                Some(early_exit(status, final_exits, end_exit))
            }
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
            timeout_message(timed_out.unwrap_or_default(), final_exits, end_exit),
        )),
        Err(e) => return Err(e.into()),
    })
}

/// The guest terminated before the interval's end.
pub(super) fn early_exit(status: u64, final_exits: u64, end_exit: u64) -> Divergence {
    Divergence::request(
        final_exits,
        format!(
            "the guest exited (status {status}) at exit {final_exits}, the interval ends at exit \
             {end_exit}"
        ),
    )
}

/// What a timeout divergence says.
pub(super) fn timeout_message(timeout: Duration, final_exits: u64, end_exit: u64) -> String {
    format!(
        "the interval did not end within {:.1} s (last exit {final_exits}, the interval ends at \
         exit {end_exit})",
        timeout.as_secs_f64(),
    )
}
