//! Devices: the paravirtual device the guest talks to, the disk image behind it, and the
//! replay device that stands in for both when an interval is replayed.

pub mod disk;
pub mod paravirt;
pub mod replay;

use crate::vstate::dirty::DirtyBitmap;
use crate::vstate::memory::GuestMemory;
use paravirt::{DeviceAction, DeviceError, DeviceEvent, DeviceSnapshot, DeviceStats};

/// What answers the guest's doorbell: the live [`paravirt::ParavirtDevice`] while recording,
/// the [`replay::ReplayDevice`] (which feeds back the recorded values) while replaying. The
/// machine's run loop sees only this trait.
pub trait Device: Send {
    /// Handles doorbell write number `exit` (counted from boot), naming the request at `gpa`.
    fn handle(
        &mut self,
        memory: &GuestMemory,
        exit: u64,
        gpa: u64,
    ) -> Result<DeviceAction, DeviceError>;
    /// The frames the device wrote into guest memory since the last call.
    fn take_written(&mut self) -> DirtyBitmap;
    /// The requests handled since the last call, with the values given to the guest (empty
    /// unless the device logs them).
    fn take_events(&mut self) -> Vec<DeviceEvent>;
    /// The device's own state.
    fn snapshot(&self) -> DeviceSnapshot;
    /// Counters so far.
    fn stats(&self) -> DeviceStats;
    /// Flushes console output.
    fn flush_console(&mut self) -> Result<(), DeviceError>;
}
