//! The replay device: answers the guest's doorbell from the recorded event log instead of the
//! outside world.
//!
//! A replayed interval starts from checkpoint N and must make exactly the requests the recording
//! saw, at the same exit counts. Each request is checked against its event (opcode and
//! arguments); a mismatch is a divergence, reported with the exit count. Otherwise the device
//! writes back what the recording gave the guest: the data (random bytes, disk blocks, the boot
//! configuration) and the status/result fields. Outputs (console, disk writes) are not
//! performed: a replay has no side effects outside the VM.
//!
//! Data a run holds by reference (disk reads, [`EventData::Pages`]) is read when its exit is
//! reached, through [`StoredPages`], not before the replay starts: restoring an interval does
//! not wait for (or hold in memory) all the data the guest will read during it.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use simuboost_abi::{Op, Request};

use super::{
    read_request, write_result, Device, DeviceAction, DeviceError, DeviceEvent, DeviceSnapshot,
    DeviceStats, EventData,
};
use crate::vstate::dirty::DirtyBitmap;
use crate::vstate::memory::GuestMemory;

/// Reads event data a run holds by reference.
pub trait StoredPages: Send + Sync {
    /// Reads the pages of the event at `exit` (`(slot, hash)` each, `None` for zeros) into
    /// `out`, `PAGE_SIZE` bytes per entry, checking each page against its hash.
    fn read(
        &self,
        exit: u64,
        pages: &[Option<(u64, u128)>],
        out: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// Feeds one interval's recorded events back to the guest.
pub struct ReplayDevice {
    events: VecDeque<DeviceEvent>,
    /// The exit at which the interval ends: the device pauses the machine there.
    end_exit: u64,
    mem_pages: u64,
    written: DirtyBitmap,
    stats: DeviceStats,
    /// Device state at the start, advanced by the requests replayed.
    state: DeviceSnapshot,
    /// Where data held by reference is read from.
    stored: Option<Arc<dyn StoredPages>>,
    /// Buffer for data read through `stored`, reused between events.
    buffer: Vec<u8>,
}

fn op_name(op: u32) -> String {
    match Op::from_raw(op) {
        Some(op) => format!("{op:?}"),
        None => format!("invalid op {op}"),
    }
}

fn describe(op: u32, args: &[u64; 3]) -> String {
    format!(
        "{}({:#x}, {:#x}, {:#x})",
        op_name(op),
        args[0],
        args[1],
        args[2]
    )
}

impl ReplayDevice {
    /// A device that replays `events` (those of one interval, exits ascending) and pauses the
    /// machine after handling exit `end_exit`. `start` is the device state at the interval's
    /// first checkpoint.
    pub fn new(
        events: Vec<DeviceEvent>,
        end_exit: u64,
        mem_bytes: u64,
        start: DeviceSnapshot,
    ) -> ReplayDevice {
        let mem_pages = mem_bytes / simuboost_abi::PAGE_SIZE;
        ReplayDevice {
            events: events.into(),
            end_exit,
            mem_pages,
            written: DirtyBitmap::new(mem_pages),
            stats: DeviceStats::default(),
            state: start,
            stored: None,
            buffer: Vec::new(),
        }
    }

    /// Reads the events' data held by reference through `stored`. Without it, such an event
    /// is an error when reached.
    pub fn with_stored_pages(mut self, stored: Arc<dyn StoredPages>) -> ReplayDevice {
        self.stored = Some(stored);
        self
    }

    /// Events not replayed yet.
    pub fn remaining(&self) -> usize {
        self.events.len()
    }

    fn deliver(
        &mut self,
        memory: &GuestMemory,
        exit: u64,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), DeviceError> {
        memory
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| DeviceError::Divergence {
                exit,
                what: format!(
                    "the recorded data of this request ({} bytes at {gpa:#x}) does not fit in \
                     guest memory",
                    data.len()
                ),
            })?;
        self.written.set_range(gpa, data.len() as u64);
        Ok(())
    }

    fn check(&self, exit: u64, request: &Request, event: &DeviceEvent) -> Result<(), DeviceError> {
        if event.exit != exit {
            return Err(DeviceError::Divergence {
                exit,
                what: format!(
                    "the guest rang the doorbell, but the recording's next request is at exit {}",
                    event.exit
                ),
            });
        }
        if request.op != event.op || request.args != event.args {
            return Err(DeviceError::Divergence {
                exit,
                what: format!(
                    "the guest requested {}, the recording has {}",
                    describe(request.op, &request.args),
                    describe(event.op, &event.args)
                ),
            });
        }
        Ok(())
    }
}

impl Device for ReplayDevice {
    fn handle(
        &mut self,
        memory: &GuestMemory,
        exit: u64,
        gpa: u64,
    ) -> Result<DeviceAction, DeviceError> {
        let request = read_request(memory, gpa)?;
        let Some(event) = self.events.pop_front() else {
            return Err(DeviceError::Divergence {
                exit,
                what: format!(
                    "the guest requested {} after the interval's last recorded exit",
                    describe(request.op, &request.args)
                ),
            });
        };
        self.check(exit, &request, &event)?;
        self.stats.requests += 1;
        self.state.requests += 1;
        if Op::from_raw(event.op) == Some(Op::Exit) {
            return Ok(DeviceAction::Exit(event.args[0]));
        }
        match Op::from_raw(event.op) {
            Some(Op::Yield) => self.stats.yields += 1,
            Some(Op::BlockRead) if event.status == simuboost_abi::status::OK => {
                let bytes = event.data.as_ref().map_or(0, EventData::len);
                self.stats.disk_read_bytes += bytes;
                self.state.disk_read_bytes += bytes;
            }
            _ => {}
        }
        match (event.data_gpa, &event.data) {
            (Some(data_gpa), Some(EventData::Bytes(data))) => {
                self.deliver(memory, exit, data_gpa, data)?
            }
            (Some(data_gpa), Some(EventData::Pages(pages))) => {
                let stored = self.stored.clone().ok_or_else(|| DeviceError::StoredData {
                    exit,
                    source: "the replay has no page store to read it from".into(),
                })?;
                let mut buffer = std::mem::take(&mut self.buffer);
                buffer.resize(pages.len() * simuboost_abi::PAGE_SIZE as usize, 0);
                let read = stored
                    .read(exit, pages, &mut buffer)
                    .map_err(|source| DeviceError::StoredData { exit, source });
                let delivered = read.and_then(|()| self.deliver(memory, exit, data_gpa, &buffer));
                self.buffer = buffer;
                delivered?;
            }
            _ => {}
        }
        write_result(memory, gpa, event.status, event.ret)?;
        self.written.set_range(
            gpa + simuboost_abi::REQUEST_RESULT_OFFSET,
            std::mem::size_of::<simuboost_abi::RequestResult>() as u64,
        );
        if exit >= self.end_exit {
            Ok(DeviceAction::Pause)
        } else {
            Ok(DeviceAction::Continue)
        }
    }

    fn take_written(&mut self) -> DirtyBitmap {
        std::mem::replace(&mut self.written, DirtyBitmap::new(self.mem_pages))
    }

    fn take_events(&mut self) -> Vec<DeviceEvent> {
        Vec::new()
    }

    fn snapshot(&self) -> DeviceSnapshot {
        self.state.clone()
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn flush_console(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use simuboost_abi::{status, REQUEST_MAGIC};

    const REQUEST_GPA: u64 = 0x20_0000;

    fn put_request(memory: &GuestMemory, op: Op, args: [u64; 3]) {
        let mut raw = Vec::new();
        raw.extend_from_slice(&REQUEST_MAGIC.to_le_bytes());
        raw.extend_from_slice(&(op as u32).to_le_bytes());
        for a in args {
            raw.extend_from_slice(&a.to_le_bytes());
        }
        raw.extend_from_slice(&[0u8; 16]);
        memory
            .write_slice(&raw, GuestAddress(REQUEST_GPA))
            .expect("request fits");
    }

    fn event(
        exit: u64,
        op: Op,
        args: [u64; 3],
        ret: u64,
        data: Option<(u64, Vec<u8>)>,
    ) -> DeviceEvent {
        DeviceEvent {
            exit,
            op: op as u32,
            args,
            status: status::OK,
            ret,
            data_gpa: data.as_ref().map(|d| d.0),
            data: data.map(|d| EventData::Bytes(d.1)),
        }
    }

    fn device(events: Vec<DeviceEvent>, end_exit: u64) -> ReplayDevice {
        ReplayDevice::new(events, end_exit, 16 << 20, DeviceSnapshot::default())
    }

    #[test]
    fn feeds_back_recorded_values_and_pauses_at_the_end() {
        let memory = create_guest_memory(16 << 20).expect("memory");
        let data_gpa = 0x30_0000;
        let mut dev = device(
            vec![
                event(11, Op::ClockRead, [0; 3], 12345, None),
                event(
                    12,
                    Op::RandomRead,
                    [data_gpa, 4, 0],
                    4,
                    Some((data_gpa, vec![1, 2, 3, 4])),
                ),
            ],
            12,
        );
        put_request(&memory, Op::ClockRead, [0; 3]);
        assert_eq!(
            dev.handle(&memory, 11, REQUEST_GPA).unwrap(),
            DeviceAction::Continue
        );
        let request = read_request(&memory, REQUEST_GPA).unwrap();
        assert_eq!((request.status, request.ret), (status::OK, 12345));

        put_request(&memory, Op::RandomRead, [data_gpa, 4, 0]);
        assert_eq!(
            dev.handle(&memory, 12, REQUEST_GPA).unwrap(),
            DeviceAction::Pause
        );
        let mut data = [0u8; 4];
        memory
            .read_slice(&mut data, GuestAddress(data_gpa))
            .unwrap();
        assert_eq!(data, [1, 2, 3, 4]);
        let written = dev.take_written();
        assert!(written.contains(data_gpa / simuboost_abi::PAGE_SIZE));
        assert!(written.contains(REQUEST_GPA / simuboost_abi::PAGE_SIZE));
        assert_eq!(dev.remaining(), 0);
        assert_eq!(dev.snapshot().requests, 2);
    }

    #[test]
    fn another_request_is_a_divergence_at_its_exit() {
        let memory = create_guest_memory(16 << 20).expect("memory");
        let mut dev = device(vec![event(7, Op::Yield, [0; 3], 0, None)], 9);
        put_request(&memory, Op::ClockRead, [0; 3]);
        match dev.handle(&memory, 7, REQUEST_GPA) {
            Err(DeviceError::Divergence { exit, what }) => {
                assert_eq!(exit, 7);
                assert!(
                    what.contains("ClockRead") && what.contains("Yield"),
                    "{what}"
                );
            }
            other => panic!("expected a divergence, got {other:?}"),
        }
    }

    #[test]
    fn a_request_past_the_log_or_at_another_exit_is_a_divergence() {
        let memory = create_guest_memory(16 << 20).expect("memory");
        put_request(&memory, Op::Yield, [0; 3]);
        let mut dev = device(vec![event(5, Op::Yield, [0; 3], 0, None)], 5);
        assert!(matches!(
            dev.handle(&memory, 4, REQUEST_GPA),
            Err(DeviceError::Divergence { exit: 4, .. })
        ));
        let mut dev = device(Vec::new(), 5);
        assert!(matches!(
            dev.handle(&memory, 5, REQUEST_GPA),
            Err(DeviceError::Divergence { exit: 5, .. })
        ));
    }

    #[test]
    fn exit_request_ends_the_run_with_its_status() {
        let memory = create_guest_memory(16 << 20).expect("memory");
        put_request(&memory, Op::Exit, [3, 0, 0]);
        let mut dev = device(vec![event(2, Op::Exit, [3, 0, 0], 0, None)], 2);
        assert_eq!(
            dev.handle(&memory, 2, REQUEST_GPA).unwrap(),
            DeviceAction::Exit(3)
        );
    }
}
