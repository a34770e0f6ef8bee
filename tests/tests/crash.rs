//! kill -9 of the recorder at random moments (issue 13): whatever moment the daemon dies at,
//! every interval the manifest calls complete restores and verifies, and the next recording is
//! unaffected. The moments, workloads, guest sizes and interval lengths are drawn from a seed
//! the test prints; `SIMUBOOST_CRASH_SEED=S` repeats a run, `SIMUBOOST_CRASH_KILLS=N` makes
//! more kills (default 20).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use simuboost_format::Run;
use simuboost_tests::{daemon, kvm_and_root_available, record_workload, replay, replay_reports};
use simuboost_workloads::rng::Rng;

/// One of `of`, drawn by `rng`.
fn pick<'a>(rng: &mut Rng, of: &[&'a str]) -> &'a str {
    of[rng.below(of.len() as u64) as usize]
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Every interval `dir`'s manifest calls complete replays and verifies (`--all`); returns how
/// many there are. A run killed before its first checkpoint has no manifest (or none that
/// opens) and claims nothing.
fn complete_intervals_verify(dir: &Path, what: &str) -> u64 {
    let Ok(run) = Run::open(dir) else {
        assert!(
            !dir.join("manifest.json").exists(),
            "{what}: a manifest exists but the run does not open: {:?}",
            Run::open(dir).err()
        );
        return 0;
    };
    assert!(
        !run.manifest().finished,
        "{what}: a killed run is not finished"
    );
    let intervals = run.interval_count();
    if intervals == 0 {
        return 0;
    }
    let out = replay(dir, &["--all", "--jobs", "2", "--json"]);
    out.expect_code(0);
    let reports = replay_reports(&out);
    assert_eq!(
        reports.len() as u64,
        intervals,
        "{what}: one report per interval"
    );
    for r in &reports {
        assert!(
            r.verified,
            "{what}: interval {} did not verify: {r:?}",
            r.interval
        );
    }
    intervals
}

#[test]
fn kill_9_at_random_moments_never_loses_a_completed_interval() {
    if !kvm_and_root_available() {
        return;
    }
    let seed = env_u64("SIMUBOOST_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let kills = env_u64("SIMUBOOST_CRASH_KILLS").unwrap_or(20);
    eprintln!(
        "kill -9 at {kills} random moments drawn from seed {seed} (SIMUBOOST_CRASH_SEED={seed} \
         repeats them)"
    );
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut with_intervals = 0;
    let mut total_intervals = 0;
    for kill in 0..kills {
        let workload = pick(
            &mut rng,
            &["kvstore", "build", "compress", "sort", "pattern", "stream"],
        );
        let mem = pick(&mut rng, &["64M", "128M"]);
        let interval = pick(&mut rng, &["30ms", "80ms", "200ms"]);
        // From before the first checkpoint (boot, the disk image) to several intervals in.
        let after = Duration::from_millis(rng.below(2000));
        let what = format!(
            "kill {kill}: {workload}, {mem}, --interval {interval}, SIGKILL after {after:?} \
             (seed {seed})"
        );
        let dir = tmp.path().join(format!("run-{kill}"));
        let mut child = daemon()
            .args(["run", "--workload", workload, "--mem", mem])
            .args(["--duration", "10min", "--interval", interval])
            .args(["--seed", &kill.to_string()])
            .arg("--out")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon starts");
        let started = Instant::now();
        std::thread::sleep(after);
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what}: the daemon ended by itself ({status}) within {after:?}");
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let intervals = complete_intervals_verify(&dir, &what);
        eprintln!(
            "{what}: {intervals} complete interval(s) verified ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        if intervals > 0 {
            with_intervals += 1;
            total_intervals += intervals;
        }
        // The run of a killed recorder takes space; the next kill needs little. (Killed early
        // enough, there is no directory yet.)
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the run");
        }
    }
    // Both kinds of moment were drawn: before any interval completed and after several.
    assert!(
        with_intervals >= kills / 4,
        "only {with_intervals} of {kills} kills came after a complete interval (seed {seed})"
    );
    eprintln!("{total_intervals} complete intervals verified across {kills} kills");
    // The next recording, into a fresh directory, is unaffected.
    let fresh = tmp.path().join("fresh");
    record_workload(
        &fresh,
        "pattern",
        "64M",
        &["--work", "300", "--interval-exits", "100"],
    );
    let out = replay(&fresh, &["--all", "--jobs", "2", "--json"]);
    out.expect_code(0);
    assert!(replay_reports(&out).iter().all(|r| r.verified));
}
