//! What the fuzz targets share: a scratch run directory on tmpfs whose manifest makes the
//! fuzzed file one a reader will open, so every table is read through the real, path-based
//! reader API ([`simuboost_format::Run`]), exactly as a replay reads it.
//!
//! The seeds in `fuzz/corpus/<target>/` come from a real recording (`cargo xtask fuzz-corpus`),
//! whose shape the constants below match: guest memory of [`MEM_BYTES`], and the files of
//! checkpoint [`CHECKPOINT`] / interval [`INTERVAL`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use simuboost_format::{layout, Manifest, Run, RunMeta, FORMAT_VERSION};

/// Guest memory of the scratch run (and of the recording the seeds come from).
pub const MEM_BYTES: u64 = 64 << 20;
/// Checkpoints the scratch manifest counts (intervals `0..CHECKPOINTS - 1` are complete).
pub const CHECKPOINTS: u64 = 8;
/// Slots of pages.bin the scratch manifest commits (a real run's order of magnitude).
pub const PAGE_SLOTS: u64 = 1 << 16;

/// The manifest of the scratch run.
pub fn manifest(page_slots: u64) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        meta: RunMeta {
            workload: "fuzz".into(),
            mem_bytes: MEM_BYTES,
            seed: 0,
            interval_ns: 100_000_000,
            dirty_tracking: "kvm-dirty-log".into(),
            tracer: "ebpf".into(),
            created_unix_ms: 0,
            guest_image_xxh3: String::new(),
            disk_image: None,
            cpuid: Vec::new(),
        },
        checkpoints: CHECKPOINTS,
        consolidate_every: 16,
        page_slots,
        finished: true,
        exit_status: Some(0),
        stop_reason: Some("guest exit".into()),
    }
}

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// Whether a panic at `file` is inside the Parquet or Arrow crates, whose decoding the reader
/// runs under `catch_unwind` and reports as a damaged file (`tables/columns.rs`,
/// `read_batches`).
fn in_parquet_decoder(file: &str) -> bool {
    let file = file.replace('\\', "/");
    ["/parquet-", "/arrow-"].iter().any(|krate| {
        file.split_once(krate)
            .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// libFuzzer's panic hook aborts on every panic, caught or not. The readers catch the
/// Parquet decoder's panics on purpose and turn them into errors naming the file, so those
/// (reported on stderr) unwind to that catch; any other panic is a failure as before.
fn install_panic_hook() {
    let fuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| l.file().to_string());
        if location.as_deref().is_some_and(in_parquet_decoder) {
            eprintln!(
                "note: the Parquet decoder panicked (the reader reports it as damage): {info}"
            );
            return;
        }
        fuzzer_hook(info)
    }));
}

/// This process's scratch directory (on /dev/shm when there is one), removed at exit. The
/// first call also installs the panic hook (see [`install_panic_hook`]).
pub fn scratch() -> &'static Path {
    SCRATCH.get_or_init(|| {
        install_panic_hook();
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("simuboost-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        // SAFETY: `remove_scratch` is an `extern "C" fn()` that does not unwind out (it
        // ignores every error); registering it has no other precondition.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// Writes the scratch run's manifest with `page_slots` committed slots.
pub fn write_manifest(dir: &Path, page_slots: u64) {
    let json = serde_json::to_vec_pretty(&manifest(page_slots)).expect("serialize the manifest");
    std::fs::write(layout::manifest(dir), json).expect("write the manifest");
}

/// A scratch run that opens: a manifest counting [`CHECKPOINTS`] checkpoints and committing
/// `page_slots` slots of pages.bin, and (empty) state files for each checkpoint, which opening
/// a run requires. `name` is its directory in [`scratch`].
pub fn open_run(name: &str, page_slots: u64) -> Run {
    let dir = scratch().join(name);
    std::fs::create_dir_all(&dir).expect("create the scratch run");
    write_manifest(&dir, page_slots);
    for c in 0..CHECKPOINTS {
        let path = layout::state_table(&dir, c);
        if !path.exists() {
            put(&path, b"");
        }
    }
    Run::open(&dir).expect("the scratch run opens")
}

/// The scratch run of the table targets ([`PAGE_SLOTS`] committed slots): they write the one
/// file they fuzz and read it through this [`Run`].
pub fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| open_run("run", PAGE_SLOTS))
}

/// Writes `bytes` as the file at `path` (creating its directory).
pub fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).expect("create the table's directory");
    std::fs::write(path, bytes).expect("write the fuzzed file");
}

/// Splits a table target's input into the checkpoint (or interval) number, below `count`, and
/// the file's bytes.
pub fn numbered(data: &[u8], count: u64) -> (u64, &[u8]) {
    match data.split_first() {
        Some((n, file)) => (u64::from(*n) % count, file),
        None => (0, data),
    }
}
