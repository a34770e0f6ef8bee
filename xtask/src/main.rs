//! simuboost's developer tasks.
//!
//! - `cargo xtask setup`: install what the build and tests need (idempotent, fast when done).
//! - `cargo xtask demo`: the main job (the README's first command).
//! - `cargo xtask test`: every check and test (the README's second command, and CI's).
//! - `cargo xtask bench NAME`: benchmarks that report figures and ratios.

mod bench;
mod bench_record;
mod bench_replay;
mod bench_s3;
mod bench_scale;
mod bench_sim;
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
    /// Run every check and test: formatting, clippy, unit and end-to-end tests.
    Test {
        /// Only the tests whose names contain this filter.
        filter: Option<String>,
    },
    /// Run a benchmark (`guest-speed`, `record`).
    Bench {
        /// Which benchmark.
        name: bench::Benchmark,
        /// Write the results as JSON to this file as well.
        #[arg(long)]
        json: Option<PathBuf>,
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
        Task::Bench { name, json } => {
            setup::run()?;
            build(!bench_debug())?;
            bench::run(name, json.as_deref())
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
    // The run directory is Parquet: show its intervals straight from DuckDB.
    let query = format!(
        "SELECT i.interval, i.end_exit - i.start_exit AS exits, i.dirty_pages, \
         i.traced_frames AS working_set, round(i.downtime_ns / 1e6, 2) AS downtime_ms, \
         i.stored_pages, i.zero_pages, i.dedup_pages \
         FROM '{}/intervals/*.parquet' i ORDER BY i.interval",
        out.display()
    );
    run_command(Command::new("python3").args([
        "-c",
        &format!("import duckdb; duckdb.sql({query:?}).show()"),
    ]))?;
    // Replay one interval from its checkpoint, loading only its working set (sparse) and then
    // every page (full), and show the two side by side; both verify against the next checkpoint.
    run_command(
        Command::new(binary("simuboost-replay", true))
            .arg("--run")
            .arg(&out)
            .args(["--interval", "2", "--mode", "sparse,full"]),
    )
}

fn test(filter: Option<&str>) -> Result<()> {
    run_command(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The guest is its own workspace (another target): lint it too.
    run_command(
        cargo()
            .args(["clippy", "--release", "--", "-D", "warnings"])
            .current_dir(root().join("simuboost-guest")),
    )?;
    // The end-to-end tests run the binaries, so build them first.
    build(false)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    run_command(&mut cmd)
}
