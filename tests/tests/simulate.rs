//! End-to-end tests of the simulator engine (`--engine sim`): intervals recorded in a real KVM
//! VM are replayed in `simuboost-sim` (unicorn, a separate process) with the same restore, the
//! same events and the same verification as KVM replays, and the simulator's exact instruction
//! count and accessed frames come back in the report.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use simuboost_format::Run;
use simuboost_report::replay::{Engine, ReplayReport, Simulation};
use simuboost_tests::{
    alter_cell, binary, copy_run, kvm_and_root_available, record_workload, replay, replay_reports,
};

const SMALL_MEM: &str = "64M";

/// Records `workload` into `dir` in a small VM (plus `extra` flags).
fn record(dir: &Path, workload: &str, extra: &[&str]) {
    record_workload(dir, workload, SMALL_MEM, extra);
}

fn simulation(report: &ReplayReport) -> &Simulation {
    report
        .simulation
        .as_ref()
        .unwrap_or_else(|| panic!("a simulated replay reports what it saw: {report:?}"))
}

/// Simulates every interval of the run in `mode`; each must verify.
fn simulate_all_verified(run: &Path, mode: &str) -> BTreeMap<u64, ReplayReport> {
    let intervals = Run::open(run).expect("run opens").interval_count();
    assert!(intervals >= 2, "too few intervals ({intervals})");
    let out = replay(
        run,
        &[
            "--all", "--jobs", "2", "--engine", "sim", "--mode", mode, "--json",
        ],
    );
    out.expect_code(0);
    let by_interval: BTreeMap<u64, ReplayReport> = replay_reports(&out)
        .into_iter()
        .map(|r| (r.interval, r))
        .collect();
    assert_eq!(
        by_interval.keys().copied().collect::<Vec<_>>(),
        (0..intervals).collect::<Vec<_>>(),
        "{mode}: every interval reported once"
    );
    for (i, r) in &by_interval {
        assert!(r.verified, "{mode} interval {i}: {r:?}");
        assert_eq!(r.engine, Engine::Sim);
        assert!(r.pages_checked > 0, "{mode} interval {i}: {r:?}");
        let sim = simulation(r);
        assert!(sim.instructions > 0, "{mode} interval {i}: {r:?}");
        assert!(sim.pages_accessed > sim.page_table_pages, "{r:?}");
    }
    by_interval
}

fn all_modes_simulate(workload: &str, extra: &[&str]) {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(&run, workload, extra);
    let sparse = simulate_all_verified(&run, "sparse");
    let full = simulate_all_verified(&run, "full");
    let lazy = simulate_all_verified(&run, "lazy");
    for (i, s) in &sparse {
        // The eBPF working set plus the frames the vCPU state names covers everything the
        // simulator saw the interval touch: a sparse replay never waits for a page.
        assert_eq!(s.misses, 0, "sparse interval {i}: {s:?}");
        assert_eq!(full[i].misses, 0, "full interval {i}");
        assert!(lazy[i].misses > 0, "lazy interval {i}");
        // The simulation does not depend on what was loaded up front.
        let count = simulation(s).instructions;
        assert_eq!(simulation(&full[i]).instructions, count, "interval {i}");
        assert_eq!(simulation(&lazy[i]).instructions, count, "interval {i}");
        assert_eq!(
            simulation(&lazy[i]).pages_accessed,
            simulation(s).pages_accessed,
            "interval {i}"
        );
    }
}

#[test]
fn idle_simulates_in_all_modes() {
    all_modes_simulate("idle", &["--duration", "1s", "--interval", "250ms"]);
}

#[test]
fn stream_simulates_in_all_modes() {
    all_modes_simulate("stream", &["--work", "2", "--interval-exits", "1"]);
}

#[test]
fn compress_simulates_in_all_modes() {
    all_modes_simulate("compress", &["--work", "24", "--interval-exits", "40"]);
}

#[test]
fn kvstore_simulates_in_all_modes() {
    all_modes_simulate("kvstore", &["--work", "6", "--interval-exits", "2"]);
}

#[test]
fn sort_simulates_in_all_modes() {
    all_modes_simulate("sort", &["--duration", "800ms", "--interval", "200ms"]);
}

#[test]
fn build_simulates_in_all_modes() {
    all_modes_simulate("build", &["--work", "40", "--interval-exits", "10"]);
}

#[test]
fn pattern_simulates_in_all_modes() {
    all_modes_simulate("pattern", &["--work", "600", "--interval-exits", "100"]);
}

/// For `pattern` the tracer is exact: the simulator's ground truth equals what sparse mode
/// loads (recall 1.0) and everything the tracer logged was accessed (precision 1.0); together
/// with the trace test (the log's arena frames are exactly the steps' pages) the simulated
/// working set is the documented one. The same interval simulated twice executes the same
/// number of instructions.
#[test]
fn pattern_tracer_is_exact_and_counts_repeat() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "pattern",
        &["--work", "800", "--seed", "5", "--interval-exits", "200"],
    );
    let first = simulate_all_verified(&run, "sparse");
    for (i, r) in &first {
        let sim = simulation(r);
        assert_eq!(sim.tracer_recall, Some(1.0), "interval {i}: {r:?}");
        assert_eq!(sim.tracer_precision, Some(1.0), "interval {i}: {r:?}");
        assert!(sim.page_table_pages >= 3, "four-level walks: {r:?}");
    }
    let again = replay(
        &run,
        &[
            "--interval",
            "1",
            "--engine",
            "sim",
            "--mode",
            "full",
            "--json",
        ],
    );
    again.expect_code(0);
    let again = &replay_reports(&again)[0];
    assert_eq!(
        simulation(again).instructions,
        simulation(&first[&1]).instructions
    );
    assert_eq!(
        simulation(again).pages_accessed,
        simulation(&first[&1]).pages_accessed
    );
}

/// An altered event, a damaged page store and a guest exception are reported by the simulator
/// engine exactly as by the KVM engine: a request divergence at its exit, an error naming
/// pages.bin, and a crash divergence naming the vector and RIP.
#[test]
fn simulated_divergences_and_damage_are_reported() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "kvstore",
        &["--work", "6", "--interval-exits", "3", "--seed", "2"],
    );
    let interval = 1u64;
    let events = Run::open(&run)
        .expect("run")
        .events(interval)
        .expect("events");
    assert!(events.len() >= 2, "interval {interval} has events");

    // A request whose recorded arguments differ.
    let altered = tmp.path().join("altered");
    copy_run(&run, &altered);
    alter_cell(
        &simuboost_format::layout::events_table(&altered, interval),
        0,
        "arg0",
        events[0].args[0] ^ 0x1000,
    );
    let out = replay(&altered, &["--interval", "1", "--engine", "sim", "--json"]);
    out.expect_code(3);
    let report = &replay_reports(&out)[0];
    let divergence = report.divergence.as_ref().expect("a divergence");
    assert_eq!(divergence.kind, "request", "{report:?}");
    assert_eq!(divergence.exit, events[0].exit, "{report:?}");

    // A guest exception: the interval starts at an address no page table maps.
    let crashing = tmp.path().join("crashing");
    copy_run(&run, &crashing);
    let unmapped: u64 = 0x10_0000_0000;
    alter_cell(
        &simuboost_format::layout::state_table(&crashing, interval),
        0,
        "rip",
        unmapped,
    );
    let out = replay(
        &crashing,
        &[
            "--interval",
            "1",
            "--engine",
            "sim",
            "--mode",
            "full",
            "--json",
        ],
    );
    out.expect_code(3);
    let report = &replay_reports(&out)[0];
    let divergence = report.divergence.as_ref().expect("a divergence");
    assert_eq!(divergence.kind, "crash", "{report:?}");
    assert!(
        divergence.description.contains("exception 14")
            && divergence.description.contains(&format!("{unmapped:#x}")),
        "names the vector and RIP: {report:?}"
    );

    // A flipped byte in pages.bin, served on demand to the simulator.
    let damaged = tmp.path().join("damaged");
    copy_run(&run, &damaged);
    let pages = damaged.join("pages.bin");
    let mut bytes = fs::read(&pages).expect("pages.bin");
    for b in bytes.iter_mut().step_by(4096) {
        *b ^= 0xff;
    }
    fs::write(&pages, bytes).expect("write pages.bin");
    let out = replay(
        &damaged,
        &["--interval", "1", "--engine", "sim", "--mode", "lazy"],
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains("pages.bin"),
        "names the damaged file: {}",
        out.stderr
    );
}

/// The simulator process dying mid-interval is a clear error with exit status 1, and no
/// simulator process is left behind.
#[test]
fn simulator_death_is_an_error_without_orphans() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    // Interval 1 has 8000 guest exits; the simulator waits for the replayer at many of them
    // (a voluntary context switch each: 400-1800 switches per 4000 exits, measured), and it
    // is killed once it has waited 100 times, which is in the middle of the interval however
    // fast the machine simulates. (A fixed half second was the end of the interval on a fast
    // machine: the replay verified and the test failed.)
    record(
        &run,
        "pattern",
        &["--work", "16000", "--interval-exits", "8000", "--seed", "3"],
    );
    // A stand-in that starts the real simulator and kills it while it runs. Should the
    // simulator end first, the kill fails and the replay verifies: the test fails on its
    // exit status rather than pass without a death.
    let real = binary("simuboost-sim");
    let wrapper = tmp.path().join("dying-sim");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{real} \"$@\" &\nchild=$!\n\
             while s=$(awk '/^voluntary_ctxt_switches/ {{print $2}}' /proc/$child/status 2>/dev/null) \
             && [ \"${{s:-0}}\" -lt 100 ]; do sleep 0.01; done\n\
             kill -9 $child\nwait $child\nexit 137\n",
            real = real.display()
        ),
    )
    .expect("write wrapper");
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .expect("chmod");
    let out = simuboost_tests::Finished::of(
        Command::new(binary("simuboost-replay"))
            .env("SIMUBOOST_SIM", &wrapper)
            .arg("--run")
            .arg(&run)
            .args(["--interval", "1", "--engine", "sim", "--mode", "full"]),
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains("simulator"),
        "says the simulator failed: {}",
        out.stderr
    );
    // Other tests run simulators at the same time: look for this test's own processes.
    let left = Command::new("pgrep")
        .arg("-f")
        .arg(wrapper.display().to_string())
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "no simulator left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
