//! `cargo xtask fuzz`: builds the libFuzzer targets in `fuzz/` with `cargo +nightly fuzz` and
//! runs each for a number of iterations or seconds, starting from the committed seeds in
//! `fuzz/corpus/<target>/`; `cargo xtask fuzz-corpus` records a tiny run and makes those seeds.
//!
//! A target that crashes, hangs (`-timeout`), or allocates too much (`-malloc_limit_mb`,
//! `-rss_limit_mb`) fails the command, naming the target and the reproducer libFuzzer wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{binary, cargo, root, run_command};

/// Every target (`fuzz/fuzz_targets/<name>.rs`): one per reader of a run.
pub const TARGETS: &[&str] = &[
    "manifest",
    "checkpoint_table",
    "page_map",
    "state_table",
    "events_table",
    "eventpages_table",
    "intervals_table",
    "access_table",
    "page_store",
    "vcpu_state",
    "device_state",
];

/// Iterations per target in `cargo xtask test` (documented in docs/GUARANTEES.md).
pub const TEST_RUNS: u64 = 2000;

/// One input may take this long before it counts as a hang: above the readers' own decoding
/// deadline for a small table (5 s, `tables/columns.rs`), which turns a Parquet decoder that
/// does not finish into an error naming the file.
const TIMEOUT_S: u64 = 20;
/// No single allocation above this, and no more resident memory than `RSS_LIMIT_MB`: the
/// readers bound what they allocate by the guest's size and the file's, and the scratch run's
/// guest is 64 MiB.
const MALLOC_LIMIT_MB: u64 = 256;
const RSS_LIMIT_MB: u64 = 1024;

/// How long each target runs.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Runs(u64),
    Seconds(u64),
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn nightly_cargo() -> Command {
    // rustup's proxy picks the toolchain from `+nightly`; the CARGO of the stable xtask would
    // not.
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").env_remove("CARGO").env_remove("RUSTC");
    cmd
}

/// Builds every target (release, debug assertions, AddressSanitizer: cargo-fuzz's defaults).
pub fn build() -> Result<()> {
    run_command(nightly_cargo().args(["fuzz", "build"]).current_dir(root()))
        .context("building the fuzz targets (cargo xtask setup installs cargo-fuzz)")
}

fn target_binary(target: &str) -> PathBuf {
    fuzz_dir()
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Runs `targets` (all when empty) for `budget` each, after building them.
pub fn run(budget: Budget, targets: &[String]) -> Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let started = Instant::now();
    build()?;
    eprintln!("xtask: fuzz targets built in {:.0?}", started.elapsed());
    for target in targets {
        let began = Instant::now();
        // libFuzzer adds the inputs it finds to its first corpus directory: a scratch one, so
        // the committed seeds (read-only, second) stay as they are.
        let scratch = fuzz_dir().join("target/corpus").join(target);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let seeds = fuzz_dir().join("corpus").join(target);
        let artifact_dir = fuzz_dir().join("artifacts").join(target);
        std::fs::create_dir_all(&artifact_dir)
            .with_context(|| format!("creating {}", artifact_dir.display()))?;
        let before = artifacts(&artifact_dir);
        let mut cmd = Command::new(target_binary(target));
        cmd.arg(&scratch)
            .arg(&seeds)
            .arg(format!("-artifact_prefix={}/", artifact_dir.display()))
            .arg(format!("-timeout={TIMEOUT_S}"))
            .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1")
            .current_dir(root());
        match budget {
            // A fixed seed: the test suite's short run does the same iterations every time.
            Budget::Runs(n) => cmd.arg(format!("-runs={n}")).arg("-seed=1"),
            Budget::Seconds(s) => cmd.arg(format!("-max_total_time={s}")),
        };
        eprintln!("xtask: fuzzing {target} ({budget:?})");
        let status = cmd
            .status()
            .with_context(|| format!("cannot start the fuzz target {target}"))?;
        if !status.success() {
            let new: Vec<String> = artifacts(&artifact_dir)
                .into_iter()
                .filter(|p| !before.contains(p))
                .map(|p| p.display().to_string())
                .collect();
            if new.is_empty() {
                bail!("fuzz target {target} failed ({status}) without writing a reproducer");
            }
            bail!(
                "fuzz target {target} failed ({status}); reproducer: {} (run it again with \
                 `cargo +nightly fuzz run {target} {}`)",
                new.join(", "),
                new[0]
            );
        }
        eprintln!("xtask: {target}: no failure in {:.1?}", began.elapsed());
    }
    eprintln!(
        "xtask: every fuzz target ran without a failure ({:.0?} with the build)",
        started.elapsed()
    );
    Ok(())
}

/// Makes the seeds of every target from a real run: `from`, or a tiny run recorded with the
/// debug daemon (kvstore, 64 MiB: the guest memory of the targets' scratch run,
/// `fuzz/src/lib.rs`).
pub fn corpus(from: Option<&Path>) -> Result<()> {
    let run = match from {
        Some(dir) => dir.to_path_buf(),
        None => {
            run_command(cargo().args([
                "build",
                "-p",
                "simuboost-daemon",
                "--bin",
                "simuboost-daemon",
            ]))?;
            let out = fuzz_dir().join("target/corpus-run");
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("removing {}", out.display()))?;
            }
            std::fs::create_dir_all(fuzz_dir().join("target"))?;
            run_command(Command::new(binary("simuboost-daemon", false)).args([
                "run",
                "--workload",
                "kvstore",
                "--mem",
                "64M",
                "--duration",
                "1s",
                "--interval",
                "200ms",
                "--out",
                out.to_str().context("a UTF-8 path")?,
            ]))?;
            out
        }
    };
    run_command(
        Command::new("python3")
            .arg("-c")
            .arg(CORPUS_PY)
            .arg(&run)
            .arg(fuzz_dir().join("corpus")),
    )
}

/// Copies a real run's files (argv[1]) into the seed directories (argv[2]/<target>/): the
/// files of checkpoint 1 and interval 1 (the ones the targets read), and the inputs of the
/// page store and decoder targets in their formats (fuzz/fuzz_targets/*.rs).
const CORPUS_PY: &str = r#"
import sys, os, io, struct, json, glob
import pyarrow as pa
import pyarrow.parquet as pq
run, corpus = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(run, "manifest.json")))
assert manifest["meta"]["mem_bytes"] == 64 << 20, "the targets' scratch run has a 64 MiB guest"
def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)
    print(f"{target}/{name}: {len(data)} bytes")
def read(path):
    return open(os.path.join(run, path), "rb").read()
put("manifest", "real", read("manifest.json"))
# A table target's input: the checkpoint or interval number (one byte), then the file. The two
# smallest files of each table under 32 KiB, of the checkpoints and intervals the manifest
# counts. Access logs of this run are larger (kvstore touches most of its memory, and each row
# has a 16-byte start hash): their first rows and their `vcpu` rows (which come last), 512 in
# all and renumbered in first-touch order, are the seeds, rewritten by pyarrow with the same
# schema.
tables = [("checkpoint_table", "checkpoints", manifest["checkpoints"]),
          ("state_table", "state", manifest["checkpoints"]),
          ("events_table", "events", manifest["checkpoints"] - 1),
          ("eventpages_table", "eventpages", manifest["checkpoints"] - 1),
          ("intervals_table", "intervals", manifest["checkpoints"] - 1),
          ("access_table", "access", manifest["checkpoints"] - 1)]
for target, sub, count in tables:
    number = lambda f: int(f.rsplit("-", 1)[1].split(".")[0])
    files = [(os.path.getsize(f), f) for f in glob.glob(os.path.join(run, sub, "*.parquet"))
             if number(f) < min(count, 7)]
    if target == "access_table":
        for f in sorted(f for _, f in files)[1:3]:
            buf = io.BytesIO()
            t = pq.read_table(f)
            vcpu = [i for i, s in enumerate(t.column("source").to_pylist()) if s == "vcpu"]
            keep = [i for i in range(min(512 - len(vcpu), t.num_rows)) if i not in vcpu] + vcpu
            t = t.take(keep)
            order = t.schema.get_field_index("first_touch")
            renumbered = pa.array(range(t.num_rows), type=t.schema.field(order).type)
            t = t.set_column(order, t.schema.field(order), renumbered)
            pq.write_table(t, buf, compression="snappy")
            put(target, f"real-{number(f)}", bytes([number(f)]) + buf.getvalue())
        continue
    for size, f in sorted((size, f) for size, f in files if size <= 32768)[:2]:
        put(target, f"real-{number(f)}", bytes([number(f)]) + open(f, "rb").read())
put("page_map", "real-0", read("pagemaps/ckpt-000000.parquet"))
state = pq.read_table(os.path.join(run, "state/ckpt-000001.parquet")).to_pylist()[0]
put("device_state", "real-1", state["device"].encode())
vcpu = b""
for blob in ["sregs", "fpu", "xcrs", "debugregs", "vcpu_events"]:
    vcpu += struct.pack("<H", len(state[blob])) + state[blob]
vcpu += b"".join(struct.pack("<Q", state[r]) for r in
    ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
     "r13", "r14", "r15", "rip", "rflags"])
for m in state["msrs"]:
    vcpu += struct.pack("<IQ", m["index"], m["value"])
put("vcpu_state", "real-1", vcpu)
# pages.bin: its first 3 slots, committed, read one at a time with the right hash, as a run
# of 3, and one past the end.
pages = read("pages.bin")[:3 * 4096]
reads = [(0, 1, 1), (1, 1, 1), (2, 1, 1), (0, 3, 1), (3, 1, 1)]
head = struct.pack("<QB", 3, len(reads))
for slot, n, right in reads:
    head += struct.pack("<QBB", slot, n, right) + bytes(16)
put("page_store", "real", head + pages)
"#;
