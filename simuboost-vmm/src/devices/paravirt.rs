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
use vm_memory::{Bytes, GuestAddress};

use simuboost_abi::{status, BootConfig, Op, Request, REQUEST_MAGIC, REQUEST_SIZE};

use super::disk::{Disk, BLOCK_SIZE};
use crate::vstate::memory::GuestMemory;

/// Largest single transfer (disk, random, console) the device performs, so that one request
/// cannot make the VMM allocate without bound.
pub const MAX_TRANSFER_BYTES: u64 = 64 << 20;

/// What the VMM does after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Resume the guest.
    Continue,
    /// The guest asked to terminate with this status.
    Exit(u64),
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
}

/// A paravirtual device instance.
pub struct ParavirtDevice {
    boot_config: BootConfig,
    console: Box<dyn Write + Send>,
    clock_origin: Instant,
    rng: ChaCha20Rng,
    disk: Option<Disk>,
    stop: Arc<AtomicBool>,
    stats: DeviceStats,
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
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Flushes the console sink.
    pub fn flush_console(&mut self) -> Result<(), DeviceError> {
        self.console.flush().map_err(DeviceError::Console)
    }

    /// Handles one doorbell ring with the request at `gpa`.
    pub fn handle(&mut self, memory: &GuestMemory, gpa: u64) -> Result<DeviceAction, DeviceError> {
        let mut raw = [0u8; REQUEST_SIZE as usize];
        memory
            .read_slice(&mut raw, GuestAddress(gpa))
            .map_err(|_| DeviceError::BadRequestAddress(gpa))?;
        let request = decode_request(&raw);
        if request.magic != REQUEST_MAGIC {
            return Err(DeviceError::BadMagic {
                gpa,
                magic: request.magic,
            });
        }
        self.stats.requests += 1;
        let [a0, a1, a2] = request.args;
        let (status, ret) = match Op::from_raw(request.op) {
            None => (status::INVALID, 0),
            Some(Op::Exit) => return Ok(DeviceAction::Exit(a0)),
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
        let mut result = [0u8; 16];
        result[0..4].copy_from_slice(&status.to_le_bytes());
        result[8..16].copy_from_slice(&ret.to_le_bytes());
        memory
            .write_slice(
                &result,
                GuestAddress(gpa + simuboost_abi::REQUEST_RESULT_OFFSET),
            )
            .map_err(|_| DeviceError::BadRequestAddress(gpa))?;
        Ok(DeviceAction::Continue)
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
        match memory.write_slice(&buf, GuestAddress(gpa)) {
            Ok(()) => (status::OK, len),
            Err(_) => (status::BAD_ADDRESS, 0),
        }
    }

    fn boot_config(&mut self, memory: &GuestMemory, gpa: u64, len: u64) -> (u32, u64) {
        let bytes = encode_boot_config(&self.boot_config);
        let n = (len as usize).min(bytes.len());
        match memory.write_slice(&bytes[..n], GuestAddress(gpa)) {
            Ok(()) => (status::OK, n as u64),
            Err(_) => (status::BAD_ADDRESS, 0),
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
        let mut buf = vec![0u8; len];
        if let Err(e) = disk.read(block, &mut buf) {
            tracing::warn!(block, count, error = %e, "disk read failed");
            return (status::IO_ERROR, 0);
        }
        if memory.write_slice(&buf, GuestAddress(gpa)).is_err() {
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
        let mut buf = vec![0u8; len];
        if memory.read_slice(&mut buf, GuestAddress(gpa)).is_err() {
            return (status::BAD_ADDRESS, 0);
        }
        if let Err(e) = disk.write(block, &buf) {
            tracing::warn!(block, count, error = %e, "disk write failed");
            return (status::IO_ERROR, 0);
        }
        self.stats.disk_write_bytes += len as u64;
        (status::OK, count)
    }
}

fn decode_request(raw: &[u8; REQUEST_SIZE as usize]) -> Request {
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Request {
        magic: u32_at(0),
        op: u32_at(4),
        args: [u64_at(8), u64_at(16), u64_at(24)],
        status: u32_at(32),
        reserved: u32_at(36),
        ret: u64_at(40),
    }
}

/// The `repr(C)` bytes of a [`BootConfig`].
pub fn encode_boot_config(c: &BootConfig) -> Vec<u8> {
    let mut out = Vec::with_capacity(core::mem::size_of::<BootConfig>());
    out.extend_from_slice(&c.magic.to_le_bytes());
    out.extend_from_slice(&c.workload.to_le_bytes());
    out.extend_from_slice(&c.reserved.to_le_bytes());
    for v in [
        c.mem_bytes,
        c.free_start,
        c.work_units,
        c.disk_blocks,
        c.disk_data_bytes,
        c.seed,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(out.len(), core::mem::size_of::<BootConfig>());
    out
}
