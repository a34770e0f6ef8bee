//! `simuboost-hostrun`: runs one guest workload natively on the host, with the very code the
//! guest runs, and prints `{"seconds": .., "checksum": ".."}`. The guest-speed benchmark
//! (`cargo xtask bench guest-speed`) compares it with the same workload in the VM.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use simuboost_abi::WorkloadId;
use simuboost_vmm::devices::disk::Disk;
use simuboost_workloads::{DiskError, Platform, RunConfig};

#[derive(Parser)]
#[command(name = "simuboost-hostrun")]
struct Args {
    /// Workload name.
    #[arg(long)]
    workload: String,
    /// Units of work.
    #[arg(long)]
    work: u64,
    /// Seed.
    #[arg(long)]
    seed: u64,
    /// Arena size in bytes (the daemon's summary reports the guest's).
    #[arg(long)]
    arena_bytes: u64,
    /// Disk image (for compress and sort).
    #[arg(long)]
    disk: Option<PathBuf>,
}

/// The workloads' platform on the host: a real clock, a file-backed disk, yields that return.
struct HostPlatform {
    start: Instant,
    disk: Option<Disk>,
}

/// Device status codes, as the guest would see them.
const NO_DISK: DiskError = DiskError {
    status: simuboost_abi::status::BAD_BLOCK,
};
const IO_ERROR: DiskError = DiskError {
    status: simuboost_abi::status::IO_ERROR,
};

impl Platform for HostPlatform {
    fn console_write(&mut self, _bytes: &[u8]) {}

    fn clock_ns(&mut self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn random(&mut self, buf: &mut [u8]) {
        buf.fill(0);
    }

    fn block_read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let disk = self.disk.as_ref().ok_or(NO_DISK)?;
        disk.read(block, buf).map_err(|_| IO_ERROR)
    }

    fn block_write(&mut self, block: u64, buf: &[u8]) -> Result<(), DiskError> {
        let disk = self.disk.as_ref().ok_or(NO_DISK)?;
        disk.write(block, buf).map_err(|_| IO_ERROR)
    }

    fn yield_now(&mut self) -> bool {
        false
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let workload = WorkloadId::from_name(&args.workload)
        .with_context(|| format!("unknown workload `{}`", args.workload))?;
    let disk = args.disk.as_deref().map(Disk::open).transpose()?;
    let config = RunConfig {
        workload,
        seed: args.seed,
        work_units: args.work,
        disk_blocks: disk.as_ref().map_or(0, Disk::blocks),
        disk_data_bytes: disk.as_ref().map_or(0, Disk::data_bytes),
    };
    let mut platform = HostPlatform {
        start: Instant::now(),
        disk,
    };
    // Zeroed memory that the kernel maps lazily, with transparent huge pages, like the guest's
    // RAM (see simuboost-vmm's guest memory): first touches cost the same kind of faults.
    let mut arena = vec![0u8; args.arena_bytes as usize];
    // madvise wants a page-aligned start; the allocator's header shifts the buffer a little.
    let skip = arena.as_ptr().align_offset(4096).min(arena.len());
    // SAFETY: advice on memory this process owns (the page-aligned part of `arena`); it changes
    // no contents.
    unsafe {
        libc::madvise(
            arena[skip..].as_mut_ptr().cast(),
            (arena.len() - skip) & !4095,
            libc::MADV_HUGEPAGE,
        );
    }
    let start = Instant::now();
    let outcome = simuboost_workloads::run(&config, &mut platform, &mut arena)
        .map_err(|e| anyhow::anyhow!("{} failed: {e:?}", workload.name()))?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds,
            "checksum": format!("{:#018x}", outcome.checksum),
            "units": outcome.units_done,
        })
    );
    Ok(())
}
