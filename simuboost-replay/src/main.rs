//! `simuboost-replay`: replays intervals of a recorded run and verifies them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use simuboost_format::Run;
use simuboost_replay::parallel::{child_args, replay_all, IntervalOutcome, Workers};
use simuboost_replay::replay::check_interval;
use simuboost_replay::runs::{newest_run, DEFAULT_RUNS_DIR};
use simuboost_replay::{replay_interval, Engine, Mode, ReplayOptions, ReplayReport};

use simuboost_report::replay::exit::{
    DIVERGED as EXIT_DIVERGED, ERROR as EXIT_ERROR, OK as EXIT_OK,
};

/// Replay intervals of a recorded run from their checkpoints, and verify each against the next
/// checkpoint.
///
/// Exit status: 0 when every replay verified, 3 when one diverged, 1 when a replay could not
/// run (bad input, a damaged run, KVM), 2 for bad arguments.
#[derive(Parser, Debug)]
#[command(name = "simuboost-replay", version)]
struct Args {
    /// The interval to replay (see --all).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    interval: Option<u64>,
    /// Replay every complete interval (see --jobs).
    #[arg(long)]
    all: bool,
    /// The run directory (default: the newest run in ./simuboost-runs).
    #[arg(long)]
    run: Option<PathBuf>,
    /// What to load before the replay starts: `sparse` (the interval's working set), `full`
    /// (every non-zero page) or `lazy` (nothing). Several, comma-separated, replay the
    /// interval once per mode and print them side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sparse")]
    mode: Vec<Mode>,
    /// What executes the interval: `kvm` (a KVM VM, hardware speed) or `sim` (the functional
    /// simulator `simuboost-sim`: exact instruction count and accessed frames).
    #[arg(long, value_enum, default_value = "kvm")]
    engine: Engine,
    /// With --all: replays running at once [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: Option<u64>,
    /// Give up on an interval that has not ended after this long (default: one minute plus
    /// 20 times its recorded length), e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print one JSON object per replay instead of the tables.
    #[arg(long)]
    json: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.jobs.is_some() && !args.all {
        usage_error("--jobs applies to --all (one interval is one replay)");
    }
    if args.all && args.mode.len() > 1 {
        usage_error("--all replays in one mode; give one --mode");
    }
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("simuboost-replay: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Exits with clap's usage-error message and status (2).
fn usage_error(message: &str) -> ! {
    use clap::CommandFactory;
    Args::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

fn run(args: &Args) -> anyhow::Result<u8> {
    let dir = match &args.run {
        Some(dir) => dir.clone(),
        None => newest_run(std::path::Path::new(DEFAULT_RUNS_DIR))?,
    };
    let run = Run::open(&dir)?;
    match args.interval {
        Some(interval) => replay_one(args, &run, interval),
        None => replay_every(args, &run),
    }
}

fn options(args: &Args, mode: Mode) -> ReplayOptions {
    ReplayOptions {
        mode,
        engine: args.engine,
        timeout: args.timeout,
    }
}

fn replay_one(args: &Args, run: &Run, interval: u64) -> anyhow::Result<u8> {
    check_interval(run, interval)?;
    let mut reports = Vec::new();
    for &mode in &args.mode {
        let report = replay_interval(run, interval, options(args, mode))
            .with_context(|| format!("replaying interval {interval} ({} mode)", mode.name()))?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        reports.push(report);
    }
    if !args.json {
        print_comparison(run, &reports);
    }
    Ok(if reports.iter().all(|r| r.verified) {
        EXIT_OK
    } else {
        EXIT_DIVERGED
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// One cell of the comparison table, from a report.
type Cell = Box<dyn Fn(&ReplayReport) -> String>;

fn print_comparison(run: &Run, reports: &[ReplayReport]) {
    let Some(first) = reports.first() else {
        return;
    };
    let meta = &run.manifest().meta;
    println!(
        "interval {} of {} ({}, {} MiB guest, exits {}..{}, recorded {:.0} ms)",
        first.interval,
        run.dir().display(),
        meta.workload,
        meta.mem_bytes >> 20,
        first.start_exit,
        first.end_exit,
        first.recorded_ms
    );
    let rows: Vec<(&str, Cell)> = vec![
        ("", Box::new(|r| r.mode.name().to_string())),
        ("pages loaded", Box::new(|r| r.pages_loaded.to_string())),
        ("MiB loaded", Box::new(|r| mib(r.bytes_loaded))),
        ("restore ms", Box::new(|r| format!("{:.1}", r.restore_ms))),
        (
            "  of which loading",
            Box::new(|r| format!("{:.1}", r.load_ms)),
        ),
        ("misses", Box::new(|r| r.misses.to_string())),
        ("footprint MiB", Box::new(|r| mib(r.footprint_bytes))),
        ("replay ms", Box::new(|r| format!("{:.1}", r.replay_ms))),
        ("verify ms", Box::new(|r| format!("{:.1}", r.verify_ms))),
        ("pages checked", Box::new(|r| r.pages_checked.to_string())),
        (
            "verified",
            Box::new(|r| if r.verified { "yes" } else { "NO" }.to_string()),
        ),
    ];
    for (label, value) in &rows {
        let cells: Vec<String> = reports
            .iter()
            .map(|r| format!("{:>12}", value(r)))
            .collect();
        println!("{label:<20}{}", cells.join(""));
    }
    for r in reports {
        if let Some(d) = &r.divergence {
            println!("{} mode diverged: {d}", r.mode.name());
        }
    }
    let by_mode = |m: Mode| reports.iter().find(|r| r.mode == m);
    if let (Some(sparse), Some(full)) = (by_mode(Mode::Sparse), by_mode(Mode::Full)) {
        let less = |a: f64, b: f64| 100.0 * (1.0 - a / b.max(f64::MIN_POSITIVE));
        println!(
            "sparse vs full: {:.1}% smaller footprint, {:.1}% less restore time ({:.1}% less \
             loading)",
            less(sparse.footprint_bytes as f64, full.footprint_bytes as f64),
            less(sparse.restore_ms, full.restore_ms),
            less(sparse.load_ms, full.load_ms)
        );
    }
}

fn replay_every(args: &Args, run: &Run) -> anyhow::Result<u8> {
    let count = run.interval_count();
    if count == 0 {
        anyhow::bail!("{} has no complete interval to replay", run.dir().display());
    }
    let mode = args.mode.first().copied().unwrap_or(Mode::Sparse);
    let bar = (!args.json).then(|| {
        let bar = ProgressBar::new(count);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} intervals {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let mut failures = 0u64;
    let workers = Workers {
        exe: std::env::current_exe().context("cannot find this executable to start replays")?,
        jobs: args.jobs.unwrap_or(1) as usize,
        child_args: child_args(mode, args.engine, args.timeout),
    };
    let (outcomes, wall) = replay_all(
        run.dir(),
        0..count,
        &workers,
        |outcome: &IntervalOutcome| {
            let ok = matches!(&outcome.result, Ok(r) if r.verified);
            if !ok {
                failures += 1;
            }
            if args.json {
                match &outcome.result {
                    Ok(report) => match serde_json::to_string(report) {
                        Ok(line) => println!("{line}"),
                        Err(e) => eprintln!("simuboost-replay: cannot encode a report: {e}"),
                    },
                    Err(e) => println!(
                        "{}",
                        serde_json::json!({"interval": outcome.interval, "error": e})
                    ),
                }
            }
            if let Some(bar) = &bar {
                bar.set_message(if failures == 0 {
                    "all verified".to_string()
                } else {
                    format!("{failures} FAILED")
                });
                bar.inc(1);
            }
        },
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if outcomes.len() as u64 != count {
        anyhow::bail!(
            "only {} of {count} intervals were replayed (replay workers could not start)",
            outcomes.len()
        );
    }
    if !args.json {
        print_summary(run, &outcomes, wall, args.jobs.unwrap_or(1));
    }
    Ok(if failures == 0 {
        EXIT_OK
    } else {
        EXIT_DIVERGED
    })
}

fn print_summary(run: &Run, outcomes: &[IntervalOutcome], wall: Duration, jobs: u64) {
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>8} {:>12} {:>10}  result",
        "interval", "exits", "restore ms", "replay ms", "misses", "footprint MiB", "loaded MiB"
    );
    let mut replay_total = 0.0;
    for o in outcomes {
        match &o.result {
            Ok(r) => {
                replay_total += r.restore_ms + r.replay_ms + r.verify_ms;
                let result = match &r.divergence {
                    None => "verified".to_string(),
                    Some(d) => format!("DIVERGED: {d}"),
                };
                println!(
                    "{:>8} {:>8} {:>10.1} {:>10.1} {:>8} {:>12} {:>10}  {result}",
                    r.interval,
                    r.exits,
                    r.restore_ms,
                    r.replay_ms,
                    r.misses,
                    mib(r.footprint_bytes),
                    mib(r.bytes_loaded)
                );
            }
            Err(e) => println!("{:>8}  ERROR: {e}", o.interval),
        }
    }
    let verified = outcomes
        .iter()
        .filter(|o| matches!(&o.result, Ok(r) if r.verified))
        .count();
    println!(
        "{verified} of {} intervals of {} verified; wall time {:.2} s with {jobs} job(s) \
         ({:.2} s of replay work)",
        outcomes.len(),
        run.dir().display(),
        wall.as_secs_f64(),
        replay_total / 1e3
    );
}
