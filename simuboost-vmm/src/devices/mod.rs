//! Devices: the paravirtual device the guest talks to, the disk image behind it, and the
//! replay device that stands in for both when an interval is replayed.

pub mod disk;
pub mod paravirt;
pub mod replay;

use vm_memory::{Bytes, GuestAddress};

use zerocopy::{FromZeros, IntoBytes};

use simuboost_abi::{Request, RequestResult, REQUEST_MAGIC, REQUEST_RESULT_OFFSET};

use crate::vstate::dirty::DirtyBitmap;
use crate::vstate::memory::GuestMemory;

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

/// What the VMM does after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Resume the guest.
    Continue,
    /// The guest asked to terminate with this status.
    Exit(u64),
    /// Stop running here, with the guest paused at this exit (a replay reached the end of its
    /// interval).
    Pause,
}

/// Errors that stop the VM (as opposed to request errors, which the guest sees as a status).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The doorbell named an address where no request can be.
    #[error("the guest rang the doorbell with request address {0:#x}, outside guest RAM")]
    BadRequestAddress(u64),
    /// The request lacks the magic value.
    #[error("the guest rang the doorbell with a malformed request at {gpa:#x} (magic {magic:#x})")]
    BadMagic {
        /// Request address.
        gpa: u64,
        /// The magic found.
        magic: u32,
    },
    /// The console sink failed.
    #[error("writing the guest console failed: {0}")]
    Console(#[source] std::io::Error),
    /// The data a replayed event holds by reference could not be read.
    #[error("exit {exit}: reading the recorded data of this request failed: {source}")]
    StoredData {
        /// Guest-initiated exit number of the event.
        exit: u64,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A replayed guest made a request other than the recorded one.
    #[error("exit {exit}: {what}")]
    Divergence {
        /// Guest-initiated exit number where it happened.
        exit: u64,
        /// What differs.
        what: String,
    },
}

/// One handled request, with every value the device gave the guest: what the recorder logs
/// and the replayer feeds back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEvent {
    /// Guest-initiated exit number (1 = the first doorbell write since boot).
    pub exit: u64,
    /// Raw opcode.
    pub op: u32,
    /// Raw arguments.
    pub args: [u64; 3],
    /// Status returned.
    pub status: u32,
    /// Result value returned.
    pub ret: u64,
    /// Where the device wrote `data` into guest memory (besides the request's result fields).
    pub data_gpa: Option<u64>,
    /// What was written there.
    pub data: Option<EventData>,
}

/// The data of a [`DeviceEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventData {
    /// The bytes (what the live device logs, and small data read back from a run).
    Bytes(Vec<u8>),
    /// Whole pages a run holds by reference (disk reads): an opaque `(slot, hash)` per
    /// [`simuboost_abi::PAGE_SIZE`] bytes, `None` for zeros. A
    /// [`replay::ReplayDevice`] reads them through its [`replay::StoredPages`] when the guest
    /// reaches the event, so a replay never holds an interval's disk reads all at once.
    Pages(Vec<Option<(u64, u128)>>),
}

impl EventData {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            EventData::Bytes(bytes) => bytes.len() as u64,
            EventData::Pages(pages) => pages.len() as u64 * simuboost_abi::PAGE_SIZE,
        }
    }

    /// True if the data is empty (which differs from no data).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The device's own state at a checkpoint (the guest-visible part is in guest memory).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Position in the random stream (ChaCha20 word position).
    pub rng_word_pos: u128,
    /// Requests handled so far.
    pub requests: u64,
    /// Nanoseconds of the device clock so far.
    pub clock_ns: u64,
    /// Bytes read from the disk so far.
    pub disk_read_bytes: u64,
    /// Bytes written to the disk so far.
    pub disk_write_bytes: u64,
}

/// Counters of what the device did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Requests handled.
    pub requests: u64,
    /// Yield requests.
    pub yields: u64,
    /// Bytes read from the disk into the guest.
    pub disk_read_bytes: u64,
    /// Bytes written from the guest to the disk.
    pub disk_write_bytes: u64,
    /// Bytes of console output.
    pub console_bytes: u64,
}

/// Writes a request's status and result into guest memory.
pub fn write_result(
    memory: &GuestMemory,
    gpa: u64,
    status: u32,
    ret: u64,
) -> Result<(), DeviceError> {
    let result = RequestResult {
        status,
        reserved: 0,
        ret,
    };
    memory
        .write_slice(result.as_bytes(), GuestAddress(gpa + REQUEST_RESULT_OFFSET))
        .map_err(|_| DeviceError::BadRequestAddress(gpa))
}

/// Reads and decodes the request at `gpa`.
pub fn read_request(memory: &GuestMemory, gpa: u64) -> Result<Request, DeviceError> {
    let mut request = Request::new_zeroed();
    memory
        .read_slice(request.as_mut_bytes(), GuestAddress(gpa))
        .map_err(|_| DeviceError::BadRequestAddress(gpa))?;
    if request.magic != REQUEST_MAGIC {
        return Err(DeviceError::BadMagic {
            gpa,
            magic: request.magic,
        });
    }
    Ok(request)
}
