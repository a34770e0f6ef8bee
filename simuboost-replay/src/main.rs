//! `simuboost-replay`: replays intervals of a recorded run and verifies them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use signal_hook::consts::{SIGINT, SIGTERM};

use simuboost_format::Run;
use simuboost_replay::analysis::{summary_table, Analyses, AnalysisOptions, IntervalSummary};
use simuboost_replay::executor::local::LocalExecutor;
use simuboost_replay::executor::slurm::{SlurmExecutor, SlurmOptions};
use simuboost_replay::executor::{child_args, Executor, IntervalOutcome, ReplayTask};
use simuboost_replay::replay::check_interval;
use simuboost_replay::runs::{
    is_inside_run, is_remote_path, newest_run, open_run, DEFAULT_RUNS_DIR,
};
use simuboost_replay::{
    replay_interval, Engine, Mode, PageLookupMode, ReplayOptions, ReplayReport,
};

use simuboost_report::replay::exit::{
    DIVERGED as EXIT_DIVERGED, ERROR as EXIT_ERROR, INTERRUPTED as EXIT_INTERRUPTED, OK as EXIT_OK,
};

/// Replay intervals of a recorded run from their checkpoints, and verify each against the next
/// checkpoint.
///
/// Exit status: 0 when every replay verified, 3 when one diverged, 1 when a replay could not
/// run (bad input, a damaged run, KVM), 2 for bad arguments, 130 when --all was interrupted.
#[derive(Parser, Debug)]
#[command(name = "simuboost-replay", version)]
struct Args {
    /// The interval to replay (see --all).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    interval: Option<u64>,
    /// Replay every complete interval (see --jobs).
    #[arg(long)]
    all: bool,
    /// The run: a directory, or `s3://bucket/prefix` for a run in object storage (endpoint and
    /// credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION;
    /// AWS_ALLOW_HTTP=true for a plain-http endpoint) [default: the newest run in
    /// ./simuboost-runs].
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
    /// With --all: replays running at once [default: 1 locally; for Slurm, no limit but the
    /// cluster's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    jobs: Option<u64>,
    /// With --all: where the replays run: `local` (child processes on this machine) or
    /// `slurm` (one Slurm job array task per interval, submitted with sbatch).
    #[arg(long, value_enum, default_value = "local")]
    executor: ExecutorKind,
    /// With --all: replay each interval as soon as the recorder commits its end checkpoint,
    /// and end when the run is finished and every interval replayed.
    #[arg(long, requires = "all")]
    follow: bool,
    /// With --follow: give up when the run has not grown for this long and is not finished
    /// (the recorder probably died) [default: 30 s plus 10 times the interval length].
    #[arg(long, requires = "follow", value_parser = humantime::parse_duration)]
    follow_timeout: Option<Duration>,
    /// Slurm: directory for the batch script and the tasks' logs, outside the run and visible
    /// to the compute nodes [default: ./simuboost-slurm/<run>-<time>].
    #[arg(long)]
    slurm_dir: Option<PathBuf>,
    /// Slurm: an extra sbatch argument, as given (repeatable), e.g. `--slurm-arg=--qos=long`.
    #[arg(long = "slurm-arg", allow_hyphen_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    slurm_args: Vec<String>,
    /// Slurm: the partition to submit to.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    partition: Option<String>,
    /// Slurm: time limit per task (sbatch --time), e.g. `10m`.
    #[arg(long, value_parser = parse_time_limit)]
    time_limit: Option<Duration>,
    /// Slurm: memory per task, e.g. `2G` [default: what the replay needs: guest RAM for
    /// `full`, about twice the largest working set for `sparse`/`lazy`, plus 256 MiB].
    #[arg(long, value_parser = parse_mem)]
    mem_per_task: Option<u64>,
    /// Give up on an interval that has not ended after this long (default: one minute plus
    /// 20 times its recorded length), e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// How a sparse restore finds where its pages are: `log` (the access log's start pages,
    /// else the page map in part), `partial` (the page map in part) or `whole` (the whole page
    /// map, read up front): the variants `cargo xtask bench restore-position` compares.
    #[arg(long, value_enum, default_value_t = PageLookupMode::Log, hide = true)]
    page_lookup: PageLookupMode,
    /// With --engine sim: analyses to run on each interval, written as Parquet files to
    /// --out: any of `blocks`, `pages`, `trace`, `cache`, comma-separated, or `all`
    /// (docs/ANALYSES.md).
    #[arg(long, value_parser = check_analysis_list, requires = "out")]
    analysis: Option<String>,
    /// With --analysis: the directory for the results (created if needed; never inside the
    /// run).
    #[arg(long, requires = "analysis")]
    out: Option<PathBuf>,
    /// With --analysis trace: write at most N trace rows per interval (0: no limit). A
    /// one-second interval makes ~10^9 rows.
    #[arg(long, requires = "analysis")]
    trace_limit: Option<u64>,
    /// With --analysis cache: the cache levels, `SIZE:WAYS:LINE` for L1, optionally
    /// `,SIZE:WAYS:LINE` for L2 [default: 32K:8:64].
    #[arg(long, value_parser = check_cache, requires = "analysis")]
    cache: Option<String>,
    /// Print one JSON object per replay instead of the tables.
    #[arg(long)]
    json: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Where `--all` runs its replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExecutorKind {
    /// Child processes on this machine.
    Local,
    /// A Slurm job array.
    Slurm,
}

/// `--analysis`: checked here, kept as given (the `--all` children get it as it is).
fn check_analysis_list(text: &str) -> Result<String, String> {
    AnalysisOptions::parse_list(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// `--cache`: checked here, kept as given.
fn check_cache(text: &str) -> Result<String, String> {
    AnalysisOptions::parse_cache(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// The analysis options the flags give, if `--analysis` was given.
fn analysis_options(args: &Args) -> anyhow::Result<Option<AnalysisOptions>> {
    let Some(list) = &args.analysis else {
        return Ok(None);
    };
    let mut options = AnalysisOptions::parse_list(list)?;
    if let Some(cache) = &args.cache {
        options.cache_levels = AnalysisOptions::parse_cache(cache)?;
    }
    options.trace_limit = args.trace_limit.unwrap_or(0);
    Ok(Some(options))
}

/// The analysis flags as the `--all` children get them (`--out` made absolute).
fn analysis_child_args(args: &Args) -> anyhow::Result<Vec<String>> {
    let (Some(list), Some(out)) = (&args.analysis, &args.out) else {
        return Ok(Vec::new());
    };
    let out =
        std::path::absolute(out).with_context(|| format!("cannot resolve {}", out.display()))?;
    let mut child = vec![
        "--analysis".to_string(),
        list.clone(),
        "--out".to_string(),
        out.display().to_string(),
    ];
    if let Some(limit) = args.trace_limit {
        child.extend(["--trace-limit".to_string(), limit.to_string()]);
    }
    if let Some(cache) = &args.cache {
        child.extend(["--cache".to_string(), cache.clone()]);
    }
    Ok(child)
}

/// A size such as `2G` or `512MiB`, in bytes; not zero (`sbatch --mem=0` means "all of the
/// node's memory").
fn parse_mem(text: &str) -> Result<u64, String> {
    match parse_size::parse_size(text).map_err(|e| e.to_string())? {
        0 => Err("the memory per task must be more than 0".to_string()),
        bytes => Ok(bytes),
    }
}

/// A duration such as `10m`; not zero (`sbatch --time=0` means "no limit").
fn parse_time_limit(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("the time limit must be more than 0".to_string()),
        d => Ok(d),
    }
}

/// Sets glibc's heap up for a short-lived process that allocates a few MiB in bursts on
/// several threads. By default the heap grows 128 KiB at a time, and every allocation over
/// 128 KiB (a decoded column, a frame list) is a fresh mapping, returned when freed and
/// faulted in anew by the next one; a fault costs ~10 µs here (MACHINE.md). Growing by
/// 16 MiB (address space only: nothing is touched) and serving blocks of up to 64 MiB from
/// the heap, which keeps what is freed for the next allocation, took a `compress` sparse
/// restore from 6.5 to 6.1 ms (median of 20, alternating; env-var equivalents of these calls).
/// One arena for all threads: each reader and decoder thread would otherwise get a heap of its
/// own whose pages all fault in anew, where the main heap has freed, faulted-in memory to
/// reuse (the threads allocate little at a time, so they hardly wait for each other's lock);
/// 5.9 → 5.2 ms (median of 21, alternating).
fn tune_malloc() {
    for (option, value) in [
        (libc::M_TOP_PAD, 16 << 20),
        (libc::M_MMAP_THRESHOLD, 64 << 20),
        (libc::M_TRIM_THRESHOLD, 256 << 20),
        (libc::M_ARENA_MAX, 1),
    ] {
        // SAFETY: mallopt takes plain integers and only changes malloc's parameters; it is
        // called before any other thread exists. A setting it refuses costs speed only.
        unsafe { libc::mallopt(option, value) };
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let args = Args::parse();
    if args.jobs.is_some() && !args.all {
        usage_error("--jobs applies to --all (one interval is one replay)");
    }
    if args.executor == ExecutorKind::Slurm && !args.all {
        usage_error("--executor applies to --all");
    }
    if args.executor != ExecutorKind::Slurm
        && (args.slurm_dir.is_some()
            || !args.slurm_args.is_empty()
            || args.partition.is_some()
            || args.time_limit.is_some()
            || args.mem_per_task.is_some())
    {
        usage_error(
            "--slurm-dir, --slurm-arg, --partition, --time-limit and --mem-per-task need \
             --executor slurm",
        );
    }
    if args.all && args.mode.len() > 1 {
        usage_error("--all replays in one mode; give one --mode");
    }
    if args.analysis.is_some() && args.engine != Engine::Sim {
        usage_error("--analysis runs in the simulator: add --engine sim");
    }
    if let Some(list) = &args.analysis {
        let chosen = AnalysisOptions::parse_list(list).unwrap_or_default();
        if args.trace_limit.is_some() && !chosen.trace {
            usage_error("--trace-limit applies to --analysis trace");
        }
        if args.cache.is_some() && !chosen.cache {
            usage_error("--cache applies to --analysis cache");
        }
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
            eprintln!(
                "simuboost-replay: {}",
                simuboost_report::error_message(e.as_ref())
            );
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
    match args.interval {
        Some(interval) => replay_one(args, &open_run(&dir)?, interval),
        None => replay_every(args, &dir),
    }
}

fn replay_one(args: &Args, run: &Run, interval: u64) -> anyhow::Result<u8> {
    check_interval(run, interval)?;
    let analyses = match (analysis_options(args)?, &args.out) {
        (Some(options), Some(out)) => Some(Arc::new(Analyses::prepare(run, out, options)?)),
        _ => None,
    };
    let mut reports = Vec::new();
    for &mode in &args.mode {
        let options = ReplayOptions {
            mode,
            engine: args.engine,
            timeout: args.timeout,
            analyses: analyses.clone(),
            page_lookup: args.page_lookup,
        };
        let report = replay_interval(run, interval, options)
            .with_context(|| format!("replaying interval {interval} ({} mode)", mode.name()))?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        reports.push(report);
    }
    if !args.json {
        print_comparison(run, &reports);
        if let Some(analyses) = &analyses {
            print_analyses(analyses.output.dir(), reports.iter().take(1));
        }
    }
    Ok(if reports.iter().all(|r| r.verified) {
        EXIT_OK
    } else {
        EXIT_DIVERGED
    })
}

/// The analyses' summary table and where their files are.
fn print_analyses<'a>(dir: &Path, reports: impl Iterator<Item = &'a ReplayReport>) {
    let summaries: Vec<IntervalSummary> = reports
        .filter_map(|r| r.simulation.as_ref()?.analysis.clone())
        .collect();
    if summaries.is_empty() {
        println!("no analyses were written (no interval ran to its end)");
        return;
    }
    print!("{}", summary_table(&summaries));
    println!("analyses written to {}", dir.display());
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
        (
            "MiB read (pages)",
            Box::new(|r| mib(r.page_store_bytes_read)),
        ),
        ("MiB fetched (all)", Box::new(|r| mib(r.bytes_fetched))),
        ("requests", Box::new(|r| r.requests.to_string())),
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

/// How long `--follow` waits for a run that does not grow before concluding that its recorder
/// died: 30 s plus 10 intervals (a checkpoint can take a while to write).
fn default_follow_timeout(run: Option<&Run>) -> Duration {
    let interval = run.map_or(0, |r| r.manifest().meta.interval_ns);
    Duration::from_secs(30) + Duration::from_nanos(interval.saturating_mul(10))
}

fn make_executor(args: &Args, task: ReplayTask, mode: Mode) -> anyhow::Result<Box<dyn Executor>> {
    Ok(match args.executor {
        ExecutorKind::Local => Box::new(LocalExecutor::new(task, args.jobs.unwrap_or(1) as usize)?),
        ExecutorKind::Slurm => {
            let dir = match &args.slurm_dir {
                Some(dir) => std::path::absolute(dir)
                    .with_context(|| format!("cannot resolve {}", dir.display()))?,
                None => {
                    let name = task
                        .run_dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "run".to_string());
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis();
                    std::path::absolute("simuboost-slurm")
                        .context("cannot resolve ./simuboost-slurm")?
                        .join(format!("{name}-{now}"))
                }
            };
            let inside = is_inside_run(&dir, &task.run_dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            if inside {
                anyhow::bail!(
                    "the Slurm directory {} is inside the run: a replay never writes into a run; \
                     give another --slurm-dir",
                    dir.display()
                );
            }
            let options = SlurmOptions {
                dir,
                jobs: args.jobs.map(|j| j as usize),
                partition: args.partition.clone(),
                time_limit: args.time_limit,
                mem_per_task_mib: args.mem_per_task.map(|b| b.div_ceil(1 << 20)),
                mode,
                extra_args: args.slurm_args.clone(),
                poll: Duration::from_millis(250),
            };
            let executor = SlurmExecutor::new(task, options)?;
            eprintln!(
                "simuboost-replay: Slurm batch script and task logs in {}",
                executor.dir().display()
            );
            Box::new(executor)
        }
    })
}

fn replay_every(args: &Args, dir: &Path) -> anyhow::Result<u8> {
    let mode = args.mode.first().copied().unwrap_or(Mode::Sparse);
    // The tasks may run in another working directory (or on another node): an absolute path
    // (an s3:// location is one already).
    let run_dir = if is_remote_path(dir) {
        dir.to_path_buf()
    } else {
        std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?
    };
    // Without --follow the run must be there, complete intervals and all.
    let mut run = if args.follow {
        open_run(&run_dir).ok()
    } else {
        let run = open_run(&run_dir)?;
        if run.interval_count() == 0 {
            anyhow::bail!("{} has no complete interval to replay", run.dir().display());
        }
        Some(run)
    };
    let task = ReplayTask {
        exe: std::env::current_exe().context("cannot find this executable to start replays")?,
        run_dir: run_dir.clone(),
        child_args: [
            child_args(mode, args.engine, args.timeout),
            analysis_child_args(args)?,
        ]
        .concat(),
    };
    // The parent prepares the output directory (and refuses one inside the run) before any
    // child starts; the children write into it.
    // (With --follow before the run exists, the first child does.)
    if let (Some(options), Some(out), Some(run)) = (analysis_options(args)?, &args.out, &run) {
        Analyses::prepare(run, out, options)?;
    }
    let mut executor = make_executor(args, task, mode)?;
    // SIGINT/SIGTERM: cancel what is queued or running (scancel for Slurm) and stop; a second
    // signal ends the process at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .context("cannot install a signal handler")?;
    }

    let bar = (!args.json).then(|| {
        let bar = ProgressBar::new(run.as_ref().map_or(0, Run::interval_count));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} intervals {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let began = Instant::now();
    let mut outcomes: Vec<IntervalOutcome> = Vec::new();
    let mut failures = 0u64;
    let mut submitted = 0u64;
    let mut finished = !args.follow;
    let mut last_growth = Instant::now();
    let mut stalled: Option<Duration> = None;
    if !args.follow {
        submitted = run.as_ref().map_or(0, Run::interval_count);
        executor.submit(0..submitted)?;
    }
    loop {
        if stop.load(Ordering::Relaxed) {
            executor.cancel();
            if let Some(bar) = &bar {
                bar.abandon();
            }
            eprintln!(
                "simuboost-replay: interrupted: {} of {submitted} submitted intervals replayed; \
                 the rest were cancelled",
                outcomes.len()
            );
            return Ok(EXIT_INTERRUPTED);
        }
        if !finished && stalled.is_none() {
            // The manifest is replaced atomically as the last step of each checkpoint, so a
            // fresh open sees only committed intervals. Not there yet or momentarily unreadable:
            // try again on the next round, within the stall timeout.
            match open_run(&run_dir) {
                Ok(fresh) => {
                    let count = fresh.interval_count();
                    if count > submitted {
                        executor.submit(submitted..count)?;
                        submitted = count;
                        last_growth = Instant::now();
                        if let Some(bar) = &bar {
                            bar.set_length(count);
                        }
                    }
                    finished = fresh.manifest().finished;
                    run = Some(fresh);
                }
                Err(e) => tracing::debug!(error = %e, "the run cannot be opened yet"),
            }
            let limit = args
                .follow_timeout
                .unwrap_or_else(|| default_follow_timeout(run.as_ref()));
            if !finished && last_growth.elapsed() > limit {
                stalled = Some(limit);
            }
        }
        if (finished || stalled.is_some()) && executor.outstanding() == 0 {
            break;
        }
        let wait = Duration::from_millis(if finished { 500 } else { 100 });
        let Some(outcome) = executor.next(wait)? else {
            continue;
        };
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
        outcomes.push(outcome);
    }
    let wall = began.elapsed();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    outcomes.sort_by_key(|o| o.interval);
    if let Some(limit) = stalled {
        if !args.json {
            if let Some(run) = &run {
                print_summary(run, &outcomes, wall, &how(args, executor.as_ref()));
            }
        }
        anyhow::bail!(
            "{} has not grown for {} and is not finished: the recorder probably died; {} \
             interval(s) replayed ({failures} failed)",
            run_dir.display(),
            humantime::format_duration(limit),
            outcomes.len()
        );
    }
    let Some(run) = run else {
        anyhow::bail!("{} is not a run", run_dir.display());
    };
    if outcomes.len() as u64 != submitted {
        anyhow::bail!(
            "only {} of {submitted} intervals were replayed",
            outcomes.len()
        );
    }
    if submitted == 0 {
        anyhow::bail!("{} has no complete interval to replay", run.dir().display());
    }
    if !args.json {
        print_summary(&run, &outcomes, wall, &how(args, executor.as_ref()));
        if let Some(out) = &args.out {
            print_analyses(out, outcomes.iter().filter_map(|o| o.result.as_ref().ok()));
        }
    }
    Ok(if failures == 0 {
        EXIT_OK
    } else {
        EXIT_DIVERGED
    })
}

/// "with 2 local job(s)", "on Slurm", for the summary line.
fn how(args: &Args, executor: &dyn Executor) -> String {
    match args.jobs {
        Some(jobs) => format!("with {jobs} {} job(s)", executor.name()),
        None if executor.name() == "local" => "with 1 local job".to_string(),
        None => format!("with {}", executor.name()),
    }
}

fn print_summary(run: &Run, outcomes: &[IntervalOutcome], wall: Duration, how: &str) {
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
        "{verified} of {} intervals of {} verified; wall time {:.2} s {how} ({:.2} s of replay \
         work)",
        outcomes.len(),
        run.dir().display(),
        wall.as_secs_f64(),
        replay_total / 1e3
    );
}
