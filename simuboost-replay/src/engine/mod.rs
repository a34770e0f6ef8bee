//! What executes a restored interval: a KVM VM ([`kvm::KvmEngine`]) or the functional
//! simulator ([`sim::SimEngine`]). Everything around them — reading the run, restoring memory
//! through userfaultfd, feeding the recorded events at the same exits, verifying against the
//! next checkpoint — is the same code, so a result from one engine means what it means for the
//! other.

pub mod kvm;
pub mod sim;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use simuboost_format::VcpuState;
use simuboost_vmm::devices::DeviceEvent;
use simuboost_vmm::vstate::memory::GuestMemory;

use crate::replay::{IntervalInputs, ReplayError};
use crate::restore::PeerUffd;
use crate::verify::Divergence;

/// How an engine's run of the interval ended.
pub struct RunOutcome {
    /// The first divergence the run itself showed (a different request, a crash, a timeout);
    /// `None` when it reached the interval's end exit.
    pub divergence: Option<Divergence>,
    /// Guest-initiated exits counted from boot when the run stopped.
    pub final_exits: u64,
    /// Wall time from resuming the guest to its stop.
    pub run_time: Duration,
}

/// A replay engine, from restored memory to the interval's end.
pub trait ReplayEngine {
    /// Guest RAM, as the replayer sees it (the restore installs into it; verification reads
    /// it).
    fn memory(&self) -> &GuestMemory;

    /// True if only this process maps guest RAM, so that a full restore can fill it directly
    /// with nobody's faults to serve ([`crate::restore::load_dense`]).
    fn memory_is_private(&self) -> bool;

    /// Userfaultfds of other processes over the same guest RAM, whose faults the replayer's
    /// miss handler serves too. Called once, after the up-front load, before serving starts.
    fn peers(&mut self) -> Result<Vec<PeerUffd>, ReplayError>;

    /// Does what needs none of the interval's inputs (creating a VM), while the replayer reads
    /// them on other threads. Called once, before [`ReplayEngine::prepare`]; an engine with
    /// nothing to do ahead does nothing.
    fn start(&mut self) -> Result<(), ReplayError> {
        Ok(())
    }

    /// Builds the machine from the interval's start state (after the miss handler runs), with
    /// the interval's `events` to feed back.
    fn prepare(
        &mut self,
        inputs: &IntervalInputs,
        events: Vec<DeviceEvent>,
    ) -> Result<(), ReplayError>;

    /// Runs the interval to its end exit, feeding the recorded events. Stops early when
    /// `failed` is set (the miss handler failed) or after `timeout`.
    fn run(
        &mut self,
        inputs: &IntervalInputs,
        timeout: Duration,
        failed: Arc<AtomicBool>,
    ) -> Result<RunOutcome, ReplayError>;

    /// Compares the final registers with the next checkpoint's.
    fn verify_registers(
        &mut self,
        expected: &VcpuState,
        end_exit: u64,
    ) -> Result<Option<Divergence>, ReplayError>;

    /// The final CR3: the root of the page tables whose frames verification compares with
    /// accessed/dirty bits masked.
    fn final_cr3(&mut self) -> Result<u64, ReplayError>;

    /// Guest memory resident at the end, bytes.
    fn footprint(&self) -> Result<u64, ReplayError>;
}
