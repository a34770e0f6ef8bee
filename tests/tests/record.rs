//! End-to-end tests of continuous checkpointing on a real KVM VM: what checkpoints contain,
//! that memory rebuilt from them equals the real memory, and that completed intervals survive
//! kill -9, SIGINT and a full disk.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use simuboost_abi::{Op, PAGE_SIZE};
use simuboost_format::Run;
use simuboost_tests::{daemon, kvm_and_root_available, python3, summary, Finished};
use simuboost_workloads::pattern;

const SMALL_MEM: &str = "64M";

/// Records into `dir` in a small VM.
fn record(dir: &Path, args: &[&str]) -> Finished {
    let args: Vec<&str> = ["--mem", SMALL_MEM].iter().chain(args).copied().collect();
    simuboost_tests::record(dir, &args)
}

/// Every checkpoint of `pattern` holds exactly the arena pages the steps of its interval wrote,
/// and outside the arena only frames of the guest image, stack and heap.
#[test]
fn pattern_checkpoints_hold_exactly_the_written_pages() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    let seed = 5u64;
    record(
        &dir,
        &[
            "--workload",
            "pattern",
            "--work",
            "4000",
            "--seed",
            "5",
            "--interval",
            "20ms",
        ],
    )
    .expect_code(0);
    let s = summary(&dir);
    let (mem, arena_bytes) = (s.mem_bytes, s.arena_bytes);
    let arena_start = s.arena_start;
    assert_eq!(
        arena_start + arena_bytes,
        mem,
        "without --arena the arena ends with RAM"
    );
    let arena_gfn = arena_start / PAGE_SIZE;
    let (skip, arena_pages) = pattern::aligned_pages(arena_start as usize, arena_bytes as usize);
    assert_eq!(skip, 0, "the guest's arena is page aligned");

    let run = Run::open(&dir).expect("run opens");
    let intervals = run.intervals().expect("intervals");
    assert!(
        intervals.len() >= 3,
        "want several intervals, got {}",
        intervals.len()
    );
    let mut step = 0u64;
    for interval in &intervals {
        let mut expected = BTreeSet::new();
        for event in run.events(interval.interval).expect("events") {
            if event.op == Op::Yield as u32 {
                for page in pattern::step_pages(seed, step, arena_pages).writes {
                    expected.insert(arena_gfn + page);
                }
                step += 1;
            }
        }
        let pages = run
            .checkpoint_pages(interval.interval + 1)
            .expect("checkpoint pages");
        let in_arena: BTreeSet<u64> = pages
            .iter()
            .map(|p| p.gfn)
            .filter(|&g| g >= arena_gfn)
            .collect();
        assert_eq!(
            in_arena, expected,
            "interval {}: arena pages in the checkpoint differ from the pages its steps wrote",
            interval.interval
        );
        // The rest lies below the arena: the guest's stack and data (the request block), and
        // page-table frames whose entries KVM gave a dirty bit on a first write.
        let page_table_frames = mem / (2 << 20);
        let outside = pages.iter().filter(|p| p.gfn < arena_gfn).count() as u64;
        assert!(
            outside <= 8 + page_table_frames,
            "interval {}: {outside} frames outside the arena",
            interval.interval
        );
    }
    assert_eq!(step, 4000, "every step's yield is in exactly one interval");
}

/// `--arena` bounds the workload's memory: `pattern` with the same seed and a 16 MiB arena
/// dirties as many frames, interval by interval, in a 64 MiB and a 512 MiB guest (the arena's
/// page-table frames, which its touches give accessed and dirty bits, included), and the larger
/// guest writes nothing above the arena. Without the limit the larger guest's uniformly drawn
/// pages spread over ~15 times as many page-table frames.
#[test]
fn an_arena_limit_keeps_the_dirty_set_whatever_the_guest_size() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let arena: u64 = 16 << 20;
    let mut dirty = Vec::new();
    for mem in ["64M", "512M"] {
        let dir = tmp.path().join(mem);
        simuboost_tests::record(
            &dir,
            &[
                "--workload",
                "pattern",
                "--mem",
                mem,
                "--arena",
                "16M",
                "--work",
                "600",
                "--seed",
                "3",
                "--interval-exits",
                "100",
                "--tracer",
                "none",
            ],
        )
        .expect_code(0);
        let s = summary(&dir);
        assert_eq!(s.arena_bytes, arena, "{mem}: the summary's arena");
        assert!(
            s.arena_start > 0 && s.arena_start + arena < (64 << 20),
            "{mem}: {s:?}"
        );
        let run = Run::open(&dir).expect("run opens");
        let intervals = run.intervals().expect("intervals");
        assert!(intervals.len() >= 4, "{mem}: {} intervals", intervals.len());
        // Nothing is written past the arena's end.
        let above = (s.arena_start + arena) / PAGE_SIZE;
        for interval in &intervals {
            let pages = run
                .checkpoint_pages(interval.interval + 1)
                .expect("checkpoint pages");
            let past = pages.iter().filter(|p| p.gfn >= above).count();
            assert_eq!(
                past, 0,
                "{mem}: interval {} wrote above the arena",
                interval.interval
            );
        }
        dirty.push(
            intervals
                .iter()
                .map(|i| (i.interval, i.dirty_pages))
                .collect::<Vec<_>>(),
        );
    }
    // Equal but for a frame or two of the larger guest's upper page-table levels (measured:
    // 0-2); without the limit, the difference is ~250 frames an interval.
    let same = dirty[0].len() == dirty[1].len()
        && dirty[0]
            .iter()
            .zip(&dirty[1])
            .all(|(a, b)| a.0 == b.0 && a.1.abs_diff(b.1) <= 4);
    assert!(
        same,
        "dirty pages per interval, 64 MiB vs 512 MiB guest:\n{dirty:?}"
    );
}

/// For every workload: the memory rebuilt from checkpoints 0..N equals the dump the daemon took
/// at boundary N.
fn check_reconstruction(workload: &str, work: &str) {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    record(
        &dir,
        &[
            "--workload",
            workload,
            "--work",
            work,
            "--seed",
            "9",
            // Every checkpoint also stores a dump of the whole guest memory: intervals of 100 ms
            // keep a run's dumps near 1 GiB, two tests at a time, where 30 ms filled a CI disk.
            "--interval",
            "100ms",
            "--verify-dumps",
        ],
    )
    .expect_code(0);
    let run = Run::open(&dir).expect("run opens");
    assert!(run.manifest().finished);
    let checkpoints = assert_loadable(&dir, true);
    assert!(
        checkpoints >= 2,
        "{workload}: only {checkpoints} checkpoints"
    );
}

#[test]
fn reconstruction_equals_dumps_kvstore() {
    check_reconstruction("kvstore", "40");
}

#[test]
fn reconstruction_equals_dumps_build() {
    check_reconstruction("build", "60");
}

#[test]
fn reconstruction_equals_dumps_compress() {
    check_reconstruction("compress", "30");
}

#[test]
fn reconstruction_equals_dumps_sort() {
    check_reconstruction("sort", "40");
}

#[test]
fn reconstruction_equals_dumps_stream() {
    check_reconstruction("stream", "60");
}

#[test]
fn reconstruction_equals_dumps_idle() {
    check_reconstruction("idle", "100");
}

#[test]
fn reconstruction_equals_dumps_pattern() {
    check_reconstruction("pattern", "3000");
}

/// Every checkpoint the manifest names is complete and consistent.
fn assert_loadable(dir: &Path, with_dumps: bool) -> u64 {
    let run = Run::open(dir).expect("a killed run still opens");
    let mem = run.manifest().meta.mem_bytes as usize;
    let mut image = vec![0u8; mem];
    for n in 0..run.checkpoints() {
        run.reconstruct_memory(n, &mut image)
            .unwrap_or_else(|e| panic!("checkpoint {n}: {e}"));
        run.state(n).unwrap_or_else(|e| panic!("state {n}: {e}"));
        if with_dumps {
            let dump = run.dump(n).expect("dump readable").expect("dump present");
            let page = PAGE_SIZE as usize;
            if let Some(gfn) = (0..mem / page)
                .find(|&g| image[g * page..(g + 1) * page] != dump[g * page..(g + 1) * page])
            {
                panic!("checkpoint {n}: rebuilt frame {gfn:#x} differs from the dump");
            }
        }
    }
    for i in run.intervals().expect("intervals") {
        run.events(i.interval)
            .unwrap_or_else(|e| panic!("events {}: {e}", i.interval));
    }
    run.checkpoints()
}

#[test]
fn kill_9_never_loses_a_completed_interval() {
    if !kvm_and_root_available() {
        return;
    }
    // Kill at different points: after 1, 2 and 3 complete checkpoints, plus a few
    // milliseconds that land at different moments of the next checkpoint's capture and write.
    for (attempt, extra_ms) in [(1u64, 0u64), (2, 37), (3, 71)] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("run");
        let mut child = daemon()
            .args(["run", "--workload", "kvstore", "--mem", SMALL_MEM])
            .args([
                "--duration",
                "10min",
                "--interval",
                "100ms",
                "--verify-dumps",
            ])
            .args(["--seed", &attempt.to_string()])
            .arg("--out")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while Run::open(&dir).map_or(0, |r| r.checkpoints()) < attempt {
            assert!(
                std::time::Instant::now() < deadline,
                "the recording never reached {attempt} checkpoints"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let checkpoints = assert_loadable(&dir, true);
        assert!(
            checkpoints >= attempt,
            "{checkpoints} checkpoints after the manifest had said {attempt}"
        );
    }
}

#[test]
fn sigint_finishes_the_checkpoint_and_exits_0() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    let child = daemon()
        .args(["run", "--workload", "build", "--mem", SMALL_MEM])
        .args(["--duration", "10min", "--interval", "200ms"])
        .arg("--out")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().expect("daemon exits");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Run::open(&dir).expect("run opens");
    assert!(
        run.manifest().finished,
        "the manifest says the run finished"
    );
    assert_eq!(run.manifest().exit_status, Some(0));
    assert_loadable(&dir, false);
}

#[test]
fn full_disk_is_a_clear_error_and_keeps_completed_intervals() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let mount = tmp.path().join("small");
    fs::create_dir(&mount).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "cannot mount a tmpfs at {}", mount.display());
    let dir = mount.join("run");
    let run = Finished::of(
        daemon()
            .args(["run", "--workload", "stream", "--mem", SMALL_MEM])
            .args(["--duration", "60s", "--interval", "50ms"])
            .arg("--out")
            .arg(&dir)
            .arg("--console-log")
            .arg(tmp.path().join("console.log")),
    );
    let checkpoints = assert_loadable(&dir, false);
    let _ = Command::new("umount").arg(&mount).status();
    run.expect_code(1);
    assert!(
        run.stderr.contains("No space left on device"),
        "the error names the cause:\n{}",
        run.stderr
    );
    assert!(checkpoints >= 1, "checkpoint 0 fits in 24 MiB");
}

/// The DuckDB queries in docs/FORMAT.md run on a real recording.
#[test]
fn format_doc_queries_run_in_duckdb() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    record(
        &dir,
        &[
            "--workload",
            "build",
            "--work",
            "200",
            "--seed",
            "3",
            "--interval",
            "50ms",
        ],
    )
    .expect_code(0);
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let queries: Vec<String> = doc
        .split("```sql")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|q| q.trim().replace("<run>", &dir.display().to_string()))
        .collect();
    assert!(
        queries.len() >= 5,
        "FORMAT.md has {} queries",
        queries.len()
    );
    let script = r#"
import duckdb, json, sys
queries = json.loads(sys.stdin.read())
for q in queries:
    rows = duckdb.sql(q).fetchall()
    assert len(rows) > 0, q
print(len(queries))
"#;
    python3(
        "a FORMAT.md query failed",
        script,
        &[],
        Some(serde_json::to_string(&queries).expect("json").as_bytes()),
    );
}
