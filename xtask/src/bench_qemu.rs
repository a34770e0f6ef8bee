//! `cargo xtask bench qemu`: a real peer side by side — QEMU's snapshot restore vs simuboost's
//! full and sparse restore of the same guest memory.
//!
//! **What is compared.** A `stream` run (1 GiB guest, 1 s intervals) is recorded. The interval
//! replayed by simuboost is N; its restore loads the memory of checkpoint N, which the bench
//! reconstructs from the run (`Run::reconstruct_memory`) into a raw image, `ram.img`. QEMU (a separate process, driven over QMP) gets
//! the same bytes as its RAM: a paused VM whose RAM is that image, saved once with `migrate` to
//! a file (eager: every non-zero page goes into the stream) and once with the `x-ignore-shared`
//! capability (lazy: the RAM stays in the image file, which the restored VM maps and faults in
//! on touch). So QEMU saves and restores the very pages simuboost's full restore loads. The
//! vCPU of QEMU's VM runs a few bytes of 16-bit code the bench writes as its firmware (`cli;
//! hlt; jmp`), which touch no RAM: our guest needs simuboost's VMM, so QEMU cannot run the
//! interval itself.
//!
//! Per repetition (alternating which system goes first), warm (files in the page cache) and
//! cold (`echo 3 > /proc/sys/vm/drop_caches` before each restore):
//! - QEMU eager: process start, `-incoming defer`, `migrate-incoming file:` until
//!   `query-migrate` says completed, then `cont` (the VM was paused when saved) until
//!   `query-status` says running;
//! - QEMU lazy: the same with RAM = `memory-backend-file,share=on` on the image and
//!   `x-ignore-shared` set on both sides;
//! - simuboost full and sparse: `simuboost-replay --interval N --mode full|sparse --json`.
//!
//! Times: QEMU's `restore_ms` runs from `migrate-incoming` to running after `cont` (what
//! simuboost's `restore_ms` covers: reading the state, loading memory, setting up the vCPU; both
//! exclude starting the process); `start_to_running_ms` adds the process start: for QEMU from
//! spawning it to `running`, for simuboost the replayer's wall time less its `replay_ms` and
//! `verify_ms` (an upper bound: it includes the process's exit). Footprints:
//! QEMU's resident guest RAM (`Rss` of its RAM mapping in `/proc/PID/smaps`) and whole process
//! (`VmRSS`) at resume; simuboost's guest memory at resume (the non-zero bytes it installed:
//! zero pages map the shared zero page, which is not resident) and after replaying the
//! interval (`footprint_bytes`, peak resident guest memory). QEMU's guest cannot run the
//! interval, so its "after the interval" footprint is measured after QEMU itself has read every
//! frame of the interval's working set (its access log; `pmemsave` to /dev/null, one QMP command
//! per run of consecutive frames): a lazy restore faults those frames in from the image, an
//! eager one already holds them. These are reads only, where the interval also writes; on a
//! lazy restore a write to a frame not yet resident faults it in just the same.
//!
//! JSON written to `--json FILE` and always to `target/bench/qemu.json`:
//!
//! ```text
//! {
//!   "machine": String,                 // uname -r, CPU count
//!   "qemu_version": String,            // `qemu-system-x86_64 --version`, first line
//!   "accel": "kvm",
//!   "record_args": [String],           // simuboost-daemon run arguments
//!   "interval": u64,                   // interval replayed (restores checkpoint N)
//!   "mem_bytes": u64,                  // guest RAM
//!   "image_nonzero_bytes": u64,        // non-zero 4 KiB pages of the image (checkpoint N) * 4096
//!   "qemu_saved_bytes": {"eager": u64, "lazy": u64},   // size of each migration file
//!   "qemu_saved_ram_bytes": {"eager": u64, "lazy": u64}, // RAM pages in it (ram.normal-bytes)
//!   "repetitions": u64,
//!   "rows": [{
//!     "system": "qemu-eager" | "qemu-lazy" | "simuboost-full" | "simuboost-sparse",
//!     "cache": "warm" | "cold",
//!     "restore_ms": {"median": f64, "min": f64, "max": f64},
//!     "start_to_running_ms": {..},           // process start to running (simuboost: upper bound)
//!     "bytes_loaded": {..},                  // non-zero RAM bytes the restore reads (QEMU: those
//!                                            // in its file, ROMs included)
//!     "guest_resident_at_resume_bytes": {..},
//!     "process_rss_at_resume_bytes": {..} | null,  // QEMU only
//!     "guest_resident_after_interval_bytes": {..},  // QEMU: after reading the working set
//!     "samples_restore_ms": [f64]
//!   }],
//!   "targets": [{"name": String, "measured": f64, "target": String, "met": bool}]
//! }
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::bench_record::record_run;
use crate::bench_replay::{median, replay};
use crate::root;

const QEMU: &str = "qemu-system-x86_64";
const RECORD: &[&str] = &[
    "--workload",
    "stream",
    "--mem",
    "1G",
    "--duration",
    "6s",
    "--interval",
    "1s",
    "--seed",
    "1",
];
const MEM_BYTES: u64 = 1 << 30;
const PAGE: usize = 4096;
/// Repetitions per system and cache state.
const REPS: usize = 5;
/// A QMP answer or a migration that takes longer than this is an error.
const QMP_TIMEOUT: Duration = Duration::from_secs(120);

/// The systems compared, in the order of the first repetition (later ones rotate it).
const SYSTEMS: [&str; 4] = [
    "qemu-eager",
    "simuboost-full",
    "qemu-lazy",
    "simuboost-sparse",
];

/// A QMP connection (JSON lines over a unix socket).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU creates the socket shortly after it starts) and leaves capability
    /// negotiation.
    fn connect(path: &Path, child: &mut Child) -> Result<Qmp> {
        let began = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if let Some(status) = child.try_wait().context("cannot wait for QEMU")? {
                        bail!("QEMU exited before its QMP socket was up ({status})");
                    }
                    if began.elapsed() > QMP_TIMEOUT {
                        return Err(e).with_context(|| {
                            format!("QEMU's QMP socket {} never came up", path.display())
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .context("cannot set a QMP read timeout")?;
        let writer = stream.try_clone().context("cannot clone the QMP socket")?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        ensure!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("cannot read from QMP")?;
        ensure!(n > 0, "QEMU closed its QMP socket");
        serde_json::from_str(&line).with_context(|| format!("QMP sent no JSON: {line:?}"))
    }

    /// Runs a command; returns its `return` value (events in between are skipped).
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot send {command} to QMP"))?;
        loop {
            let answer = self.read()?;
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = answer.get("error") {
                bail!("QMP {command} failed: {err}");
            }
        }
    }

    /// Polls `query-migrate` until the migration (outgoing or incoming) completed.
    fn wait_migrated(&mut self) -> Result<Value> {
        let began = Instant::now();
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(info),
                Some("failed") | Some("cancelled") => bail!("QEMU's migration failed: {info}"),
                _ => {}
            }
            ensure!(
                began.elapsed() < QMP_TIMEOUT,
                "QEMU's migration did not complete within {QMP_TIMEOUT:?}: {info}"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn wait_status(&mut self, wanted: &str) -> Result<()> {
        let began = Instant::now();
        loop {
            let status = self.execute("query-status", json!({}))?;
            if status.get("status").and_then(Value::as_str) == Some(wanted) {
                return Ok(());
            }
            ensure!(
                began.elapsed() < QMP_TIMEOUT,
                "QEMU never reached {wanted}: {status}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A running QEMU; killed (and reaped) on every exit path.
struct Qemu {
    child: Child,
    qmp: Qmp,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // Already exited is fine; nothing else can be done about a failure here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How QEMU's RAM is backed.
#[derive(Clone, Copy, PartialEq)]
enum Ram {
    /// Anonymous memory (the eager restore's destination).
    Anonymous,
    /// `memory-backend-file,share=on` on the image (the source, and the lazy restore).
    Image,
}

struct Setup {
    dir: PathBuf,
    firmware: PathBuf,
    image: PathBuf,
    /// The interval's working set as runs of consecutive frames: (first gfn, frames).
    working_set: Vec<(u64, u64)>,
}

impl Setup {
    fn spawn(&self, ram: Ram, incoming: bool, name: &str) -> Result<Qemu> {
        let socket = self.dir.join(format!("{name}.qmp"));
        let log = self.dir.join(format!("{name}.log"));
        let _ = fs::remove_file(&socket);
        let backend = match ram {
            Ram::Anonymous => format!("memory-backend-ram,id=ram,size={MEM_BYTES}"),
            Ram::Image => format!(
                "memory-backend-file,id=ram,size={MEM_BYTES},share=on,mem-path={}",
                self.image.display()
            ),
        };
        let mut cmd = Command::new(QEMU);
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
            .args(["-accel", "kvm", "-machine", "pc,memory-backend=ram"])
            .args(["-smp", "1", "-m", &format!("{}M", MEM_BYTES >> 20)])
            .arg("-object")
            .arg(backend)
            .arg("-bios")
            .arg(&self.firmware)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(&log)
                    .with_context(|| format!("cannot create {}", log.display()))?,
            ));
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| {
            format!("cannot start {QEMU} (cargo xtask setup installs it from bookworm-backports)")
        })?;
        let qmp = match Qmp::connect(&socket, &mut child) {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = fs::read_to_string(&log).unwrap_or_default();
                return Err(e.context(format!("QEMU's stderr: {}", stderr.trim())));
            }
        };
        Ok(Qemu {
            child,
            qmp,
            started,
        })
    }

    fn migration_file(&self, lazy: bool) -> PathBuf {
        self.dir.join(if lazy { "lazy.mig" } else { "eager.mig" })
    }

    /// Saves the paused VM whose RAM is the image, as QEMU's eager or lazy snapshot; returns the
    /// file's size and the RAM bytes in it (non-zero pages, `ram.normal-bytes`).
    fn save(&self, lazy: bool) -> Result<(u64, u64)> {
        let mut qemu = self.spawn(Ram::Image, false, "save")?;
        let path = self.migration_file(lazy);
        let _ = fs::remove_file(&path);
        // Without this a stopped VM saves at QEMU's default 128 MiB/s.
        qemu.qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 1u64 << 40 }),
        )?;
        if lazy {
            set_ignore_shared(&mut qemu.qmp)?;
        }
        qemu.qmp.execute(
            "migrate",
            json!({ "uri": format!("file:{}", path.display()) }),
        )?;
        let info = qemu.qmp.wait_migrated()?;
        eprintln!(
            "bench qemu: saved {} ({} normal pages, {} zero pages in the stream)",
            path.display(),
            info.pointer("/ram/normal").unwrap_or(&Value::Null),
            info.pointer("/ram/duplicate").unwrap_or(&Value::Null),
        );
        let size = fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        let ram = info
            .pointer("/ram/normal-bytes")
            .and_then(Value::as_u64)
            .context("QEMU's query-migrate reported no ram.normal-bytes")?;
        Ok((size, ram))
    }

    /// One QEMU restore to a running VM; `loaded` is the RAM bytes its snapshot file holds.
    fn restore(&self, lazy: bool, loaded: u64) -> Result<Sample> {
        let ram = if lazy { Ram::Image } else { Ram::Anonymous };
        let mut qemu = self.spawn(ram, true, "restore")?;
        if lazy {
            set_ignore_shared(&mut qemu.qmp)?;
        }
        let path = self.migration_file(lazy);
        let began = Instant::now();
        qemu.qmp.execute(
            "migrate-incoming",
            json!({ "uri": format!("file:{}", path.display()) }),
        )?;
        qemu.qmp.wait_migrated()?;
        // The VM was paused when it was saved, so it comes back paused.
        qemu.qmp.execute("cont", json!({}))?;
        qemu.qmp.wait_status("running")?;
        let restore = began.elapsed();
        let start_to_running = qemu.started.elapsed();
        let pid = qemu.child.id();
        let guest = ram_rss(pid)?;
        let process = vm_rss(pid)?;
        // Then QEMU itself reads every frame of the interval's working set (`pmemsave` to
        // /dev/null, one command per run of frames): the faults a guest running the interval
        // would cause at least. Reads only: the interval's writes are not replayed here.
        for &(gfn, frames) in &self.working_set {
            qemu.qmp.execute(
                "pmemsave",
                json!({ "val": gfn * PAGE as u64, "size": frames * PAGE as u64,
                        "filename": "/dev/null" }),
            )?;
        }
        let guest_after = ram_rss(pid)?;
        drop(qemu);
        Ok(Sample {
            restore_ms: ms(restore),
            start_to_running_ms: Some(ms(start_to_running)),
            bytes_loaded: loaded as f64,
            guest_at_resume: guest as f64,
            process_at_resume: Some(process as f64),
            guest_after: Some(guest_after as f64),
        })
    }
}

fn set_ignore_shared(qmp: &mut Qmp) -> Result<()> {
    qmp.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
    )
    .map(drop)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `VmRSS` of a process, bytes.
fn vm_rss(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmRSS in /proc/PID/status")
}

/// Resident bytes of QEMU's guest RAM mapping (the one mapping of exactly the guest's size).
fn ram_rss(pid: u32) -> Result<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("cannot read /proc/{pid}/smaps"))?;
    let wanted = format!("{}", MEM_BYTES >> 10);
    let mut in_ram = false;
    let mut found = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("Size:"), Some(kb)) => in_ram = kb == wanted,
            (Some("Rss:"), Some(kb)) if in_ram => {
                let kb: u64 = kb.parse().context("bad Rss in smaps")?;
                found = Some(found.unwrap_or(0) + kb * 1024);
            }
            _ => {}
        }
    }
    found.context("QEMU has no mapping of its guest RAM's size")
}

/// One measurement.
#[derive(Clone)]
struct Sample {
    restore_ms: f64,
    start_to_running_ms: Option<f64>,
    bytes_loaded: f64,
    guest_at_resume: f64,
    process_at_resume: Option<f64>,
    guest_after: Option<f64>,
}

fn drop_caches() -> Result<()> {
    Command::new("sync").status().context("cannot run sync")?;
    fs::write("/proc/sys/vm/drop_caches", "3")
        .context("cannot drop the page cache (/proc/sys/vm/drop_caches; needs root)")
}

/// The 16-bit firmware of QEMU's VM: at the reset vector `cli; hlt; jmp $-1`, so the vCPU runs
/// (and halts) without touching RAM.
fn write_firmware(path: &Path) -> Result<()> {
    let mut rom = vec![0xffu8; 64 << 10];
    let reset = rom.len() - 16;
    rom[reset..reset + 4].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
    fs::write(path, rom).with_context(|| format!("cannot write {}", path.display()))
}

/// The interval's working set (its access log) as runs of consecutive frames.
fn working_set_runs(run: &Path, interval: u64) -> Result<Vec<(u64, u64)>> {
    let reader = simuboost_format::Run::open(run)
        .with_context(|| format!("cannot open the run {}", run.display()))?;
    let mut gfns: Vec<u64> = reader
        .access(interval)
        .with_context(|| format!("cannot read interval {interval}'s access log"))?
        .context("the run has no access log (recorded without a tracer?)")?
        .iter()
        .map(|a| a.gfn)
        .collect();
    gfns.sort_unstable();
    gfns.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for gfn in gfns {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == gfn => *n += 1,
            _ => runs.push((gfn, 1)),
        }
    }
    Ok(runs)
}

/// Writes guest memory as of `checkpoint` (what a restore of interval `checkpoint` loads) as a
/// raw image, sparse (zero pages are holes); returns its non-zero pages.
fn write_image(run: &Path, checkpoint: u64, path: &Path) -> Result<u64> {
    let reader = simuboost_format::Run::open(run)
        .with_context(|| format!("cannot open the run {}", run.display()))?;
    let mut memory = vec![0u8; MEM_BYTES as usize];
    reader
        .reconstruct_memory(checkpoint, &mut memory)
        .with_context(|| format!("cannot reconstruct checkpoint {checkpoint}'s memory"))?;
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(MEM_BYTES)
        .with_context(|| format!("cannot size {}", path.display()))?;
    let mut pages = 0;
    for (i, page) in memory.chunks(PAGE).enumerate() {
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(page, (i * PAGE) as u64)
                .with_context(|| format!("cannot write {}", path.display()))?;
            pages += 1;
        }
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(pages)
}

fn simuboost(run: &Path, interval: u64, mode: &str) -> Result<Sample> {
    let i = interval.to_string();
    let (reports, wall) = replay(run, &["--interval", &i, "--mode", mode])?;
    let r = &reports[0];
    Ok(Sample {
        restore_ms: r.restore_ms,
        // The replayer reports no timestamp for "running": its wall time less the replay and
        // the verification is an upper bound (it still includes the process's exit).
        start_to_running_ms: Some(wall * 1e3 - r.replay_ms - r.verify_ms),
        bytes_loaded: r.bytes_loaded as f64,
        // Non-zero pages are installed with UFFDIO_COPY (resident); zero pages map the shared
        // zero page (not resident), so this is the resident guest memory at resume.
        guest_at_resume: r.bytes_loaded as f64,
        process_at_resume: None,
        guest_after: Some(r.footprint_bytes as f64),
    })
}

#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(v: &[f64]) -> Stat {
    Stat {
        median: median(v.to_vec()),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn stat_json(s: Option<Stat>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({ "median": s.median, "min": s.min, "max": s.max }),
    )
}

struct Row {
    system: &'static str,
    cache: &'static str,
    samples: Vec<Sample>,
}

impl Row {
    fn stat(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<Stat> {
        let v: Vec<f64> = self.samples.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| stat(&v))
    }
    fn restore(&self) -> Stat {
        stat(
            &self
                .samples
                .iter()
                .map(|s| s.restore_ms)
                .collect::<Vec<_>>(),
        )
    }
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

fn fmt_ms(s: Stat) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

fn fmt_mib(s: Option<Stat>) -> String {
    s.map_or("–".to_string(), |s| {
        if (s.max - s.min) < 0.05 * (1 << 20) as f64 {
            format!("{:.1}", mib(s.median))
        } else {
            format!("{:.1} ({:.1}–{:.1})", mib(s.median), mib(s.min), mib(s.max))
        }
    })
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn run(json_out: Option<&Path>) -> Result<()> {
    let qemu_version = first_line(QEMU, &["--version"]);
    ensure!(
        !qemu_version.is_empty(),
        "{QEMU} is not installed: run `cargo xtask setup` (it installs QEMU 10 from \
         bookworm-backports)"
    );
    let dir = root().join("target").join("bench").join("qemu");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let run = dir.join("run");
    eprintln!("bench qemu: recording {}", RECORD.join(" "));
    record_run(&run, RECORD)?;
    let manifest: Value = serde_json::from_slice(
        &fs::read(run.join("manifest.json")).context("cannot read the run's manifest")?,
    )
    .context("the manifest is not JSON")?;
    let intervals = manifest["checkpoints"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(1);
    ensure!(intervals >= 3, "the run has only {intervals} intervals");
    // The last full interval: the stream's arena is filled by then (interval 0 boots, the last
    // one is a short tail).
    let interval = intervals - 2;
    let image = dir.join("ram.img");
    let image_pages = write_image(&run, interval, &image)?;
    eprintln!(
        "bench qemu: interval {interval}: checkpoint {interval}'s memory has {image_pages} \
         non-zero pages ({:.1} MiB)",
        mib((image_pages * PAGE as u64) as f64)
    );
    let working_set = working_set_runs(&run, interval)?;
    eprintln!(
        "bench qemu: interval {interval}'s working set: {} frames in {} runs",
        working_set.iter().map(|r| r.1).sum::<u64>(),
        working_set.len()
    );
    let firmware = dir.join("firmware.bin");
    write_firmware(&firmware)?;
    let setup = Setup {
        dir: dir.clone(),
        firmware,
        image,
        working_set,
    };
    let (eager_size, eager_ram) = setup.save(false)?;
    let (lazy_size, lazy_ram) = setup.save(true)?;
    eprintln!(
        "bench qemu: eager snapshot {:.1} MiB, lazy snapshot {:.1} MiB (+ the image)",
        mib(eager_size as f64),
        mib(lazy_size as f64)
    );

    let measure = |system: &str| -> Result<Sample> {
        match system {
            "qemu-eager" => setup.restore(false, eager_ram),
            "qemu-lazy" => setup.restore(true, lazy_ram),
            "simuboost-full" => simuboost(&run, interval, "full"),
            "simuboost-sparse" => simuboost(&run, interval, "sparse"),
            _ => unreachable!("unknown system {system}"),
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    for cache in ["warm", "cold"] {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); SYSTEMS.len()];
        if cache == "warm" {
            // One untimed round brings every file into the page cache.
            for system in SYSTEMS {
                measure(system)?;
            }
        }
        for rep in 0..REPS {
            for k in 0..SYSTEMS.len() {
                let s = (k + rep) % SYSTEMS.len();
                if cache == "cold" {
                    drop_caches()?;
                }
                let sample = measure(SYSTEMS[s])?;
                eprintln!(
                    "bench qemu: {cache} rep {rep} {:<16} restore {:>8.1} ms  guest resident {:>7.1} MiB",
                    SYSTEMS[s],
                    sample.restore_ms,
                    mib(sample.guest_at_resume)
                );
                samples[s].push(sample);
            }
        }
        for (s, samples) in samples.into_iter().enumerate() {
            rows.push(Row {
                system: SYSTEMS[s],
                cache,
                samples,
            });
        }
    }

    println!(
        "### QEMU snapshot restore vs simuboost restore ({}, interval {interval}: {:.1} MiB \
         non-zero of {} MiB; median (min–max) of {REPS}, alternating)\n",
        RECORD.join(" "),
        mib((image_pages * PAGE as u64) as f64),
        MEM_BYTES >> 20
    );
    println!(
        "| system | cache | restore to runnable ms | process start to running ms (simuboost: upper \
         bound) | MiB loaded | \
         guest MiB resident at resume | process MiB resident at resume | guest MiB resident \
         after the interval |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.cache,
            fmt_ms(r.restore()),
            r.stat(|s| s.start_to_running_ms).map_or("–".into(), fmt_ms),
            fmt_mib(r.stat(|s| Some(s.bytes_loaded))),
            fmt_mib(r.stat(|s| Some(s.guest_at_resume))),
            fmt_mib(r.stat(|s| s.process_at_resume)),
            fmt_mib(r.stat(|s| s.guest_after)),
        );
    }
    let find = |system: &str, cache: &str| {
        rows.iter()
            .find(|r| r.system == system && r.cache == cache)
            .map(Row::restore)
            .map(|s| s.median)
            .unwrap_or(f64::NAN)
    };
    let find_start = |system: &str, cache: &str| {
        rows.iter()
            .find(|r| r.system == system && r.cache == cache)
            .and_then(|r| r.stat(|s| s.start_to_running_ms))
            .map(|s| s.median)
            .unwrap_or(f64::NAN)
    };
    let mut targets = Vec::new();
    for cache in ["warm", "cold"] {
        let (eager, lazy) = (find("qemu-eager", cache), find("qemu-lazy", cache));
        let (full, sparse) = (
            find("simuboost-full", cache),
            find("simuboost-sparse", cache),
        );
        targets.push((
            format!("{cache}: simuboost full / QEMU eager restore time"),
            full / eager,
            "<= 1.0",
            full <= eager,
        ));
        targets.push((
            format!("{cache}: QEMU eager / simuboost sparse restore time"),
            eager / sparse,
            ">= 10",
            eager / sparse >= 10.0,
        ));
        targets.push((
            format!("{cache}: simuboost sparse / QEMU lazy restore time"),
            sparse / lazy,
            "<= 1.0",
            sparse <= lazy,
        ));
        let (lazy, sparse) = (
            find_start("qemu-lazy", cache),
            find_start("simuboost-sparse", cache),
        );
        targets.push((
            format!(
                "{cache}: simuboost sparse / QEMU lazy, process start to running (simuboost's \
                 an upper bound)"
            ),
            sparse / lazy,
            "<= 1.0",
            sparse <= lazy,
        ));
    }
    println!();
    for (name, measured, target, met) in &targets {
        println!(
            "{name}: {measured:.2}x (target {target}: {})",
            if *met { "met" } else { "not met" }
        );
    }

    let value = json!({
        "machine": format!("{} ({} CPUs)", first_line("uname", &["-r"]),
            std::thread::available_parallelism().map_or(0, |n| n.get())),
        "qemu_version": qemu_version,
        "accel": "kvm",
        "record_args": RECORD,
        "interval": interval,
        "mem_bytes": MEM_BYTES,
        "image_nonzero_bytes": image_pages * PAGE as u64,
        "qemu_saved_bytes": { "eager": eager_size, "lazy": lazy_size },
        "qemu_saved_ram_bytes": { "eager": eager_ram, "lazy": lazy_ram },
        "repetitions": REPS,
        "rows": rows.iter().map(|r| json!({
            "system": r.system,
            "cache": r.cache,
            "restore_ms": stat_json(Some(r.restore())),
            "start_to_running_ms": stat_json(r.stat(|s| s.start_to_running_ms)),
            "bytes_loaded": stat_json(r.stat(|s| Some(s.bytes_loaded))),
            "guest_resident_at_resume_bytes": stat_json(r.stat(|s| Some(s.guest_at_resume))),
            "process_rss_at_resume_bytes": stat_json(r.stat(|s| s.process_at_resume)),
            "guest_resident_after_interval_bytes": stat_json(r.stat(|s| s.guest_after)),
            "samples_restore_ms": r.samples.iter().map(|s| s.restore_ms).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|(name, measured, target, met)| json!({
            "name": name, "measured": measured, "target": target, "met": met,
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&value)?;
    let default = root().join("target").join("bench").join("qemu.json");
    for path in std::iter::once(default.as_path()).chain(json_out) {
        fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // The image and the eager snapshot are each a guest memory's worth of disk; the run stays
    // for inspection (the next run of the bench replaces it).
    for big in [
        setup.image.clone(),
        setup.migration_file(false),
        setup.migration_file(true),
    ] {
        fs::remove_file(&big).with_context(|| format!("cannot remove {}", big.display()))?;
    }
    Ok(())
}
