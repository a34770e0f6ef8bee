//! The paravirtual device: performs the guest's doorbell requests (see `simuboost_abi`).
//!
//! Every value the guest receives from outside passes through [`ParavirtDevice::handle`]; the
//! recorder logs those values and the replayer feeds them back, which is what makes a replay
//! exact.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use zerocopy::IntoBytes;

use simuboost_abi::{status, BootConfig, Op, Request};

use super::disk::{Disk, BLOCK_SIZE};
use super::{
    read_request, write_result, Device, DeviceAction, DeviceError, DeviceEvent, DeviceSnapshot,
    DeviceStats, EventData,
};
use crate::vstate::dirty::DirtyBitmap;
use crate::vstate::memory::GuestMemory;

/// Largest single transfer (disk, random, console) the device performs, so that one request
/// cannot make the VMM allocate without bound.
pub const MAX_TRANSFER_BYTES: u64 = 64 << 20;

/// A paravirtual device instance.
pub struct ParavirtDevice {
    boot_config: BootConfig,
    console: Box<dyn Write + Send>,
    clock_origin: Instant,
    rng: ChaCha20Rng,
    disk: Option<Disk>,
    stop: Arc<AtomicBool>,
    stats: DeviceStats,
    /// Frames the device wrote since the last `take_written`: KVM's dirty log misses them.
    written: DirtyBitmap,
    /// Events since the last `take_events`, when recording.
    events: Option<Vec<DeviceEvent>>,
    /// Data the current request wrote into guest memory (for its event).
    pending_data: Option<(u64, Vec<u8>)>,
}

impl ParavirtDevice {
    /// A device that answers `BootConfig` with `boot_config`, writes the console to `console`,
    /// and tells the guest to stop once `stop` is set.
    pub fn new(
        boot_config: BootConfig,
        console: Box<dyn Write + Send>,
        disk: Option<Disk>,
        stop: Arc<AtomicBool>,
    ) -> ParavirtDevice {
        ParavirtDevice {
            boot_config,
            console,
            clock_origin: Instant::now(),
            rng: ChaCha20Rng::seed_from_u64(boot_config.seed),
            disk,
            stop,
            stats: DeviceStats::default(),
            written: DirtyBitmap::new(boot_config.mem_bytes / simuboost_abi::PAGE_SIZE),
            events: None,
            pending_data: None,
        }
    }

    /// Starts logging every request as a [`DeviceEvent`].
    pub fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// Writes `bytes` into guest memory at `gpa`, remembering the frames and (for the event
    /// log) the data.
    fn deliver(&mut self, memory: &GuestMemory, gpa: u64, bytes: Vec<u8>) -> bool {
        if memory.write_slice(&bytes, GuestAddress(gpa)).is_err() {
            return false;
        }
        self.written.set_range(gpa, bytes.len() as u64);
        if self.events.is_some() {
            self.pending_data = Some((gpa, bytes));
        }
        true
    }

    fn log_event(&mut self, exit: u64, request: &Request, status: u32, ret: u64) {
        if let Some(events) = &mut self.events {
            let (data_gpa, data) = match self.pending_data.take() {
                Some((gpa, data)) => (Some(gpa), Some(EventData::Bytes(data))),
                None => (None, None),
            };
            events.push(DeviceEvent {
                exit,
                op: request.op,
                args: request.args,
                status,
                ret,
                data_gpa,
                data,
            });
        }
    }

    fn console_write(
        &mut self,
        memory: &GuestMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(u32, u64), DeviceError> {
        if len > MAX_TRANSFER_BYTES {
            return Ok((status::INVALID, 0));
        }
        let mut buf = vec![0u8; len as usize];
        if memory.read_slice(&mut buf, GuestAddress(gpa)).is_err() {
            return Ok((status::BAD_ADDRESS, 0));
        }
        self.console.write_all(&buf).map_err(DeviceError::Console)?;
        if buf.last() == Some(&b'\n') {
            self.console.flush().map_err(DeviceError::Console)?;
        }
        self.stats.console_bytes += len;
        Ok((status::OK, len))
    }

    fn random_read(&mut self, memory: &GuestMemory, gpa: u64, len: u64) -> (u32, u64) {
        if len > MAX_TRANSFER_BYTES {
            return (status::INVALID, 0);
        }
        let mut buf = vec![0u8; len as usize];
        self.rng.fill_bytes(&mut buf);
        if self.deliver(memory, gpa, buf) {
            (status::OK, len)
        } else {
            (status::BAD_ADDRESS, 0)
        }
    }

    fn boot_config(&mut self, memory: &GuestMemory, gpa: u64, len: u64) -> (u32, u64) {
        let mut bytes = self.boot_config.as_bytes().to_vec();
        bytes.truncate(len as usize);
        let n = bytes.len() as u64;
        if self.deliver(memory, gpa, bytes) {
            (status::OK, n)
        } else {
            (status::BAD_ADDRESS, 0)
        }
    }

    fn checked_disk(&self, block: u64, count: u64) -> Result<(&Disk, usize), u32> {
        let disk = self.disk.as_ref().ok_or(status::BAD_BLOCK)?;
        if count == 0 || count.saturating_mul(BLOCK_SIZE) > MAX_TRANSFER_BYTES {
            return Err(status::INVALID);
        }
        if !disk.in_range(block, count) {
            return Err(status::BAD_BLOCK);
        }
        Ok((disk, (count * BLOCK_SIZE) as usize))
    }

    fn block_read(&mut self, memory: &GuestMemory, block: u64, gpa: u64, count: u64) -> (u32, u64) {
        let (disk, len) = match self.checked_disk(block, count) {
            Ok(d) => d,
            Err(status) => return (status, 0),
        };
        if self.events.is_none() {
            // Not recording: the file's blocks go straight into guest memory. A bounce buffer
            // (fresh memory for every request, then a second copy) made `sort`, which reads
            // ~0.9 GB in a 4000-unit run, ~1.2x slower in the VM than natively.
            if !memory.check_range(GuestAddress(gpa), len) {
                return (status::BAD_ADDRESS, 0);
            }
            let result =
                memory.read_exact_volatile_from(GuestAddress(gpa), &mut disk.stream_at(block), len);
            // Even a failed read may have written part of the range.
            self.written.set_range(gpa, len as u64);
            if let Err(e) = result {
                tracing::warn!(block, count, error = %e, "disk read failed");
                return (status::IO_ERROR, 0);
            }
            self.stats.disk_read_bytes += len as u64;
            return (status::OK, count);
        }
        // Recording: the event log needs the data as read, so it is read into a buffer that
        // the event keeps, and copied into guest memory from there.
        let mut buf = vec![0u8; len];
        if let Err(e) = disk.read(block, &mut buf) {
            tracing::warn!(block, count, error = %e, "disk read failed");
            return (status::IO_ERROR, 0);
        }
        if !self.deliver(memory, gpa, buf) {
            return (status::BAD_ADDRESS, 0);
        }
        self.stats.disk_read_bytes += len as u64;
        (status::OK, count)
    }

    fn block_write(
        &mut self,
        memory: &GuestMemory,
        block: u64,
        gpa: u64,
        count: u64,
    ) -> (u32, u64) {
        let (disk, len) = match self.checked_disk(block, count) {
            Ok(d) => d,
            Err(status) => return (status, 0),
        };
        if !memory.check_range(GuestAddress(gpa), len) {
            return (status::BAD_ADDRESS, 0);
        }
        // Straight from guest memory to the file (a write's data is not logged: a replay does
        // not write the disk).
        if let Err(e) =
            memory.write_all_volatile_to(GuestAddress(gpa), &mut disk.stream_at(block), len)
        {
            tracing::warn!(block, count, error = %e, "disk write failed");
            return (status::IO_ERROR, 0);
        }
        self.stats.disk_write_bytes += len as u64;
        (status::OK, count)
    }
}

impl Device for ParavirtDevice {
    /// Handles doorbell write number `exit` (counted from boot), naming the request at `gpa`.
    fn handle(
        &mut self,
        memory: &GuestMemory,
        exit: u64,
        gpa: u64,
    ) -> Result<DeviceAction, DeviceError> {
        let request = read_request(memory, gpa)?;
        self.stats.requests += 1;
        let [a0, a1, a2] = request.args;
        self.pending_data = None;
        let (status, ret) = match Op::from_raw(request.op) {
            None => (status::INVALID, 0),
            Some(Op::Exit) => {
                self.log_event(exit, &request, status::OK, 0);
                return Ok(DeviceAction::Exit(a0));
            }
            Some(Op::ConsoleWrite) => self.console_write(memory, a0, a1)?,
            Some(Op::ClockRead) => (status::OK, self.clock_origin.elapsed().as_nanos() as u64),
            Some(Op::RandomRead) => self.random_read(memory, a0, a1),
            Some(Op::BlockRead) => self.block_read(memory, a0, a1, a2),
            Some(Op::BlockWrite) => self.block_write(memory, a0, a1, a2),
            Some(Op::Yield) => {
                self.stats.yields += 1;
                (status::OK, u64::from(self.stop.load(Ordering::Relaxed)))
            }
            Some(Op::BootConfig) => self.boot_config(memory, a0, a1),
        };
        write_result(memory, gpa, status, ret)?;
        self.written.set_range(
            gpa + simuboost_abi::REQUEST_RESULT_OFFSET,
            std::mem::size_of::<simuboost_abi::RequestResult>() as u64,
        );
        self.log_event(exit, &request, status, ret);
        Ok(DeviceAction::Continue)
    }

    /// The frames the device wrote since the last call.
    fn take_written(&mut self) -> DirtyBitmap {
        let frames = self.boot_config.mem_bytes / simuboost_abi::PAGE_SIZE;
        std::mem::replace(&mut self.written, DirtyBitmap::new(frames))
    }

    /// The events since the last call (empty when not recording).
    fn take_events(&mut self) -> Vec<DeviceEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The device's state.
    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            rng_word_pos: self.rng.get_word_pos(),
            requests: self.stats.requests,
            clock_ns: self.clock_origin.elapsed().as_nanos() as u64,
            disk_read_bytes: self.stats.disk_read_bytes,
            disk_write_bytes: self.stats.disk_write_bytes,
        }
    }

    /// Counters so far.
    fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Flushes the console sink.
    fn flush_console(&mut self) -> Result<(), DeviceError> {
        self.console.flush().map_err(DeviceError::Console)
    }
}
