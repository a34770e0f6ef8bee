//! simuboost's developer tasks.
//!
//! - `cargo xtask setup`: install what the build and tests need (idempotent, fast when done).
//! - `cargo xtask demo`: the main job (the README's first command).
//! - `cargo xtask test`: every check and test (the README's second command, and CI's).
//! - `cargo xtask bench NAME`: benchmarks that report figures and ratios;
//!   `cargo xtask bench report [--quick]` writes docs/BENCHMARKS.md and its plots.
//! - `cargo xtask fuzz [--runs N | --time S] [TARGET...]`: the readers' fuzz targets (`fuzz/`);
//!   `cargo xtask fuzz-corpus` makes their seeds from a real recording.

mod bench;
mod bench_analyses;
mod bench_overhead;
mod bench_position;
mod bench_qemu;
mod bench_record;
mod bench_replay;
mod bench_report;
mod bench_s3;
mod bench_scale;
mod bench_sim;
mod fuzz;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchains, tools and packages the project needs (idempotent).
    Setup,
    /// Build everything (debug, or release with --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The main job: build, then run the default workload in a KVM VM.
    Demo,
    /// Run every check and test: formatting, clippy, unit and end-to-end tests, then every
    /// reader's fuzz target for a short fixed-seed run.
    Test {
        /// Only the workspace tests whose names contain this filter (the fuzz targets do not
        /// run).
        filter: Option<String>,
    },
    /// Run a benchmark (`guest-speed`, `record`, ..., `report` [--quick]).
    Bench {
        /// Which benchmark.
        name: bench::Benchmark,
        /// Write the results as JSON to this file as well.
        #[arg(long)]
        json: Option<PathBuf>,
        /// `report` only: small sizes and few repetitions (a few minutes).
        #[arg(long)]
        quick: bool,
    },
    /// Run the fuzz targets of the run readers (cargo-fuzz, nightly), each for N iterations
    /// (default) or S seconds.
    Fuzz {
        /// Iterations per target.
        #[arg(long, conflicts_with = "time", default_value_t = fuzz::TEST_RUNS)]
        runs: u64,
        /// Seconds per target instead of a number of iterations.
        #[arg(long)]
        time: Option<u64>,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Record a tiny run and copy its files into fuzz/corpus/<target>/ as seeds.
    FuzzCorpus {
        /// Take the seeds from this recorded run (64 MiB guest) instead of recording one.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release)
        }
        Task::Demo => {
            setup::run()?;
            build(true)?;
            demo()
        }
        Task::Test { filter } => {
            setup::run()?;
            test(filter.as_deref())
        }
        Task::Fuzz {
            runs,
            time,
            targets,
        } => {
            setup::run()?;
            let budget = match time {
                Some(s) => fuzz::Budget::Seconds(s),
                None => fuzz::Budget::Runs(runs),
            };
            fuzz::run(budget, &targets)
        }
        Task::FuzzCorpus { from } => {
            setup::run()?;
            fuzz::corpus(from.as_deref())
        }
        Task::Bench { name, json, quick } => {
            setup::run()?;
            build(!bench_debug())?;
            bench::run(name, json.as_deref(), quick)
        }
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// Runs a command in the repository root, failing if it fails.
pub fn run_command(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {}", describe(cmd));
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_command(&mut cmd)
}

/// `SIMUBOOST_BENCH_DEBUG=1`: benchmarks run the debug binaries (no release build; figures of
/// bytes and requests are the same, times are not comparable with release figures).
fn bench_debug() -> bool {
    std::env::var_os("SIMUBOOST_BENCH_DEBUG").is_some_and(|v| v != "0")
}

/// Path of a binary built by `build` (the debug one under `SIMUBOOST_BENCH_DEBUG`).
pub fn binary(name: &str, release: bool) -> PathBuf {
    let release = release && !bench_debug();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join(name)
}

/// The demo's table of the run's intervals (run directory in argv[1]), from DuckDB: exits,
/// dirty pages, downtime, storage, the working set, and what sparse checkpointing saves: the
/// working set against all of guest RAM (a whole-RAM image, the SimuBoost thesis' baseline),
/// and pages read (the working set's non-zero pages vs every non-zero page of the checkpoint,
/// which a full restore reads). The replay that follows measures the footprint. The last line names the interval with the median read saving (`TYPICAL n`).
const DEMO_INTERVALS_PY: &str = r#"
import sys, json, duckdb
run = sys.argv[1]
mem_pages = json.load(open(f"{run}/manifest.json"))["meta"]["mem_bytes"] // 4096
con = duckdb.connect()
rows = con.execute(f"""
SELECT interval, end_exit - start_exit, dirty_pages, round(downtime_ns / 1e6, 2),
       stored_pages, zero_pages, dedup_pages, traced_frames
FROM '{run}/intervals/*.parquet' ORDER BY interval""").fetchall()
print(f"{'interval':>8} {'exits':>6} {'dirty':>7} {'downtime ms':>11} {'stored':>7} {'zero':>6} "
      f"{'dedup':>6} {'working set':>11} {'smaller than RAM':>16} {'reads saved':>11}")
savings = []
for (i, exits, dirty, down, stored, zero, dedup, ws) in rows:
    nonzero, ws_nonzero = con.execute(f"""
    WITH state AS (SELECT gfn FROM (SELECT gfn, arg_max(slot, checkpoint) AS slot
                                    FROM '{run}/checkpoints/*.parquet'
                                    WHERE checkpoint <= {i} GROUP BY gfn)
                   WHERE slot IS NOT NULL)
    SELECT (SELECT count(*) FROM state),
           (SELECT count(*) FROM state WHERE gfn IN
               (SELECT gfn FROM '{run}/access/*.parquet' WHERE interval = {i}))""").fetchone()
    footprint = 100.0 * (1 - ws / mem_pages)
    reads = 100.0 * (1 - ws_nonzero / nonzero) if nonzero else 0.0
    savings.append((reads, i, footprint))
    print(f"{i:>8} {exits:>6} {dirty:>7} {down:>11} {stored:>7} {zero:>6} {dedup:>6} {ws:>11} "
          f"{footprint:>15.1f}% {reads:>10.1f}%")
savings.sort()
typical = savings[len(savings) // 2]
print(f"Sparse checkpointing restores the working set instead of the whole checkpoint: the working set is "
      f"{min(s[2] for s in savings):.1f}% to {max(s[2] for s in savings):.1f}% smaller than RAM and "
      f"{savings[0][0]:.1f}% to {savings[-1][0]:.1f}% fewer pages are read; "
      f"the median interval by pages read is {typical[1]} ({typical[0]:.1f}%).")
print(f"TYPICAL {typical[1]}")
"#;

fn demo() -> Result<()> {
    let out = root().join("simuboost-runs").join("demo");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    run_command(
        Command::new(binary("simuboost-daemon", true))
            .args([
                "run",
                "--workload",
                "build",
                "--mem",
                "512M",
                "--duration",
                "5s",
                "--interval",
                "1s",
                "--console-log",
                "/dev/null",
            ])
            .arg("--out")
            .arg(&out),
    )?;
    // The run directory is Parquet: show its intervals straight from DuckDB, with what sparse
    // checkpointing saves in each (the working set against every non-zero page of the
    // checkpoint a full restore loads), and pick the interval whose saving is the run's median
    // (the start-up intervals touch more of a smaller memory, the steady state less).
    let shown = Command::new("python3")
        .args(["-c", DEMO_INTERVALS_PY])
        .arg(&out)
        .output()
        .context("cannot run python3 (cargo xtask setup installs duckdb)")?;
    if !shown.status.success() {
        bail!(
            "the DuckDB query of the run failed: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
    }
    let text = String::from_utf8_lossy(&shown.stdout);
    let mut typical = None;
    for line in text.lines() {
        match line.strip_prefix("TYPICAL ") {
            Some(i) => typical = i.trim().parse::<u64>().ok(),
            None => println!("{line}"),
        }
    }
    let interval = typical.context("the query named no typical interval")?;
    println!(
        "\nReplaying interval {interval}, the run's median interval by pages read: sparse (its \
         working set) and full (every page), both verified against checkpoint {}.\n",
        interval + 1
    );
    run_command(
        Command::new(binary("simuboost-replay", true))
            .arg("--run")
            .arg(&out)
            .args(["--interval", &interval.to_string(), "--mode", "sparse,full"]),
    )
}

fn test(filter: Option<&str>) -> Result<()> {
    run_command(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz targets are their own workspace (built by `cargo +nightly fuzz`).
    run_command(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The guest is its own workspace (another target, built with nightly's -Z build-std: see
    // simuboost-guest/.cargo/config.toml): lint it too. The outer cargo's environment would
    // pin the stable toolchain.
    run_command(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--release",
                "--",
                "-D",
                "warnings",
            ])
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .current_dir(root().join("simuboost-guest")),
    )?;
    // The end-to-end tests run the binaries, so build them first.
    build(false)?;
    let mut cmd = cargo();
    // Every test binary runs even when one fails, so that a CI log shows all failures at once.
    cmd.args(["test", "--workspace", "--no-fail-fast"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    run_command(&mut cmd)?;
    // A filter names tests of the workspace; without one, the suite also runs every reader's
    // fuzz target for its short, fixed-seed budget (docs/GUARANTEES.md).
    if filter.is_none() {
        fuzz::run(fuzz::Budget::Runs(fuzz::TEST_RUNS), &[])?;
    }
    Ok(())
}
