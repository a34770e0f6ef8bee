//! End-to-end tests of the executors and of replay while recording, against a real one-node
//! Slurm cluster on 127.0.0.1 ([`SlurmCluster`]) and real KVM: every interval replays and
//! verifies on Slurm exactly as locally, a failing interval names its Slurm task and log,
//! `--follow` replays a run while the daemon is still recording it (both executors), and a
//! recorder killed mid-run ends `--follow` with a clear error.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use simuboost_format::Run;
use simuboost_report::replay::ReplayReport;
use simuboost_tests::slurm::SlurmCluster;
use simuboost_tests::{binary, daemon, kvm_and_root_available, record, replay, Finished};

/// These tests each run replays on both cores (and some a recorder too): one at a time, so
/// their timing claims hold on the 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A short run: idle, 64 MiB, ~5 intervals.
fn record_short(run: &Path) {
    record(
        run,
        &[
            "--workload",
            "idle",
            "--mem",
            "64M",
            "--duration",
            "1s",
            "--interval",
            "200ms",
        ],
    )
    .expect_code(0);
}

/// `simuboost-replay --run RUN ARGS` with the cluster's `SLURM_CONF`.
fn replay_on(cluster: &SlurmCluster, run: &Path, args: &[&str]) -> Finished {
    Finished::of(
        Command::new(binary("simuboost-replay"))
            .env("SLURM_CONF", cluster.conf())
            .arg("--run")
            .arg(run)
            .args(args),
    )
}

/// The `--json` lines of an `--all` replay: reports by interval, and error lines by interval.
fn lines(out: &Finished) -> (BTreeMap<u64, ReplayReport>, BTreeMap<u64, String>) {
    let mut reports = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for line in out.stdout.lines() {
        if let Ok(report) = serde_json::from_str::<ReplayReport>(line) {
            assert!(
                reports.insert(report.interval, report).is_none(),
                "one report per interval"
            );
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let interval = value["interval"].as_u64().expect("an interval");
        let error = value["error"].as_str().expect("an error").to_string();
        errors.insert(interval, error);
    }
    (reports, errors)
}

#[test]
fn slurm_replays_every_interval_like_local() {
    if !kvm_and_root_available() {
        return;
    }
    let _serial = serial();
    let Some(cluster) = SlurmCluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record_short(&run);
    let intervals = Run::open(&run).expect("run opens").interval_count();
    assert!(intervals >= 3, "too few intervals: {intervals}");

    let local = replay(&run, &["--all", "--jobs", "2", "--json"]);
    local.expect_code(0);
    let slurm_dir = tmp.path().join("slurm");
    let slurm = replay_on(
        &cluster,
        &run,
        &[
            "--all",
            "--executor",
            "slurm",
            "--jobs",
            "2",
            "--slurm-dir",
            &slurm_dir.to_string_lossy(),
            "--json",
        ],
    );
    slurm.expect_code(0);
    let (local, local_errors) = lines(&local);
    let (slurm_reports, slurm_errors) = lines(&slurm);
    assert!(local_errors.is_empty() && slurm_errors.is_empty());
    assert_eq!(
        slurm_reports.keys().copied().collect::<Vec<_>>(),
        (0..intervals).collect::<Vec<_>>(),
        "every interval reported once"
    );
    for (i, s) in &slurm_reports {
        let l = &local[i];
        assert!(s.verified && l.verified, "interval {i}: {s:?} / {l:?}");
        assert_eq!(s.exits, l.exits, "interval {i}");
        assert_eq!(s.pages_checked, l.pages_checked, "interval {i}");
        assert_eq!(s.pages_loaded, l.pages_loaded, "interval {i}");
        assert_eq!(s.end_exit, l.end_exit, "interval {i}");
    }
    // One array, one pair of logs per task, nothing written into the run.
    let logs: Vec<String> = fs::read_dir(&slurm_dir)
        .expect("the Slurm directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".out"))
        .collect();
    assert_eq!(logs.len() as u64, intervals, "{logs:?}");
    let arrays: std::collections::BTreeSet<&str> =
        logs.iter().filter_map(|n| n.split('_').next()).collect();
    assert_eq!(arrays.len(), 1, "one job array: {logs:?}");
    assert!(!run.join("slurm").exists());

    // The table is the same as local's.
    let table = replay_on(
        &cluster,
        &run,
        &[
            "--all",
            "--executor",
            "slurm",
            "--slurm-dir",
            &slurm_dir.to_string_lossy(),
        ],
    );
    table.expect_code(0);
    assert!(
        table
            .stdout
            .contains(&format!("{intervals} of {intervals} intervals")),
        "{}",
        table.stdout
    );
}

#[test]
fn slurm_reports_a_failed_interval_with_its_job_id_and_log() {
    if !kvm_and_root_available() {
        return;
    }
    let _serial = serial();
    let Some(cluster) = SlurmCluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record_short(&run);
    let intervals = Run::open(&run).expect("run opens").interval_count();
    // Damage a copy: checkpoint 2's state is where interval 2 starts and interval 1 ends.
    let damaged = tmp.path().join("damaged");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&run)
        .arg(&damaged)
        .status()
        .expect("cp runs");
    assert!(status.success());
    let state = damaged.join("state").join("ckpt-000002.parquet");
    let len = fs::metadata(&state).expect("state").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .expect("open state")
        .set_len(len / 2)
        .expect("truncate");

    let slurm_dir = tmp.path().join("slurm");
    let out = replay_on(
        &cluster,
        &damaged,
        &[
            "--all",
            "--executor",
            "slurm",
            "--slurm-dir",
            &slurm_dir.to_string_lossy(),
            "--json",
        ],
    );
    assert_ne!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let (reports, errors) = lines(&out);
    assert_eq!(
        (reports.len() + errors.len()) as u64,
        intervals,
        "{}",
        out.stdout
    );
    assert!(errors.contains_key(&2), "{}", out.stdout);
    for (i, error) in &errors {
        assert!(
            error.contains("ckpt-000002.parquet"),
            "interval {i}: {error}"
        );
        // "Slurm task <job>_<interval>, state FAILED; logs <dir>/<job>_<interval>.out and ...err"
        let task = error
            .split("Slurm task ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .unwrap_or_else(|| panic!("interval {i}: no Slurm task in {error}"));
        assert!(task.ends_with(&format!("_{i}")), "{error}");
        assert!(error.contains("FAILED"), "{error}");
        let err_log = slurm_dir.join(format!("{task}.err"));
        assert!(error.contains(&err_log.display().to_string()), "{error}");
        let log = fs::read_to_string(&err_log).expect("the task's log");
        assert!(log.contains("ckpt-000002.parquet"), "{log}");
    }
    for (i, r) in &reports {
        assert!(r.verified, "interval {i}");
    }
}

/// Records in the background and runs `--all --follow --json ARGS` at once; checks that every
/// interval verified, and that the first came back before the recording ended.
fn follow_while_recording(cluster: Option<&SlurmCluster>, args: &[&str]) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    let mut recorder = daemon()
        .args([
            "run",
            "--workload",
            "idle",
            "--mem",
            "64M",
            "--interval",
            "200ms",
            "--duration",
            "3s",
        ])
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    let mut follow = Command::new(binary("simuboost-replay"));
    follow
        .arg("--run")
        .arg(&run)
        .args(["--all", "--follow", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cluster) = cluster {
        follow.env("SLURM_CONF", cluster.conf());
    }
    let mut follow = follow.spawn().expect("the replay starts");
    let stdout = follow.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| (Instant::now(), line))
            .collect::<Vec<_>>()
    });
    let recorded = recorder.wait().expect("the daemon ends");
    let recording_ended = Instant::now();
    assert!(recorded.success(), "the daemon failed: {recorded}");
    let out = follow.wait_with_output().expect("the replay ends");
    let lines = reader.join().expect("the reader");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let manifest = Run::open(&run).expect("run opens");
    assert!(manifest.manifest().finished);
    let intervals = manifest.interval_count();
    let mut seen: Vec<u64> = Vec::new();
    for (_, line) in &lines {
        let report: ReplayReport =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(report.verified, "{report:?}");
        seen.push(report.interval);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..intervals).collect::<Vec<_>>(), "{stderr}");
    let (first, _) = lines.first().expect("a report");
    assert!(
        *first < recording_ended,
        "the first interval verified only after the recording ended"
    );
}

#[test]
fn follow_replays_while_recording_locally() {
    if !kvm_and_root_available() {
        return;
    }
    let _serial = serial();
    follow_while_recording(None, &["--jobs", "1"]);
}

#[test]
fn follow_replays_while_recording_on_slurm() {
    if !kvm_and_root_available() {
        return;
    }
    let _serial = serial();
    let Some(cluster) = SlurmCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    follow_while_recording(
        Some(&cluster),
        &[
            "--executor",
            "slurm",
            "--jobs",
            "1",
            "--slurm-dir",
            &dir.path().to_string_lossy(),
        ],
    );
}

#[test]
fn follow_reports_a_dead_recorder() {
    if !kvm_and_root_available() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    let mut recorder = daemon()
        .args([
            "run",
            "--workload",
            "idle",
            "--mem",
            "64M",
            "--interval",
            "200ms",
            "--duration",
            "60s",
        ])
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    // Kill it -9 once a few intervals are committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Run::open(&run).map_or(0, |r| r.interval_count()) < 3 {
        assert!(Instant::now() < deadline, "the daemon recorded nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    recorder.kill().expect("kill -9");
    recorder.wait().expect("reaped");
    let began = Instant::now();
    let out = replay(
        &run,
        &["--all", "--follow", "--follow-timeout", "3s", "--jobs", "2"],
    );
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("has not grown for 3s and is not finished")
            && out.stderr.contains("the recorder probably died"),
        "{}",
        out.stderr
    );
    let intervals = Run::open(&run).expect("run opens").interval_count();
    assert!(
        out.stderr
            .contains(&format!("{intervals} interval(s) replayed (0 failed)")),
        "{}",
        out.stderr
    );
    assert!(began.elapsed() < Duration::from_secs(60));
}
