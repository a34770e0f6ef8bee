//! Hardening (issue #13): every flag given an invalid value is a usage error, the recorder
//! refuses an `--out` it would overwrite or cannot write before the guest starts, a read-only
//! run replays without being changed, crafted runs are refused naming the file, an interrupted
//! `--all` leaves nothing behind, and every Parquet file of a real run opens in DuckDB and
//! pyarrow with the schema docs/FORMAT.md documents.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simuboost_format::{layout, Run};
use simuboost_report::replay::exit::{ERROR, INTERRUPTED, USAGE};
use simuboost_tests::{
    alter_cell, binary, copy_run, daemon, edit_manifest, kvm_and_root_available, python3,
    record_workload, replay, replay_reports, Finished,
};

const SMALL_MEM: &str = "64M";

/// A usage error: clap's message naming the flag (and the value, when there is one), exit 2,
/// no panic.
fn expect_usage_error(out: &Finished, what: &str, flag: &str, value: &str) {
    assert_eq!(
        out.code,
        Some(i32::from(USAGE)),
        "{what}: exit code\n{}",
        out.stderr
    );
    assert!(out.stderr.starts_with("error: "), "{what}: {}", out.stderr);
    assert!(
        out.stderr.contains(flag),
        "{what}: names {flag}: {}",
        out.stderr
    );
    // A list names the element that is wrong.
    assert!(
        value.is_empty() || value.split(',').any(|v| out.stderr.contains(v)),
        "{what}: names the value {value:?}: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
}

/// The flags that take a value, as `--help` of `cmd` lists them (hidden ones are not listed).
fn value_flags(cmd: &mut Command) -> Vec<String> {
    let out = Finished::of(cmd.arg("--help"));
    out.expect_code(0);
    out.stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let (flags, _) = l.split_once(" <")?;
            flags
                .split(", ")
                .find(|f| f.starts_with("--"))
                .map(str::to_string)
        })
        .collect()
}

/// Every flag of both binaries that takes a value, given an invalid one: clap's message, exit
/// 2, no panic. The table is checked against `--help`, so a new flag must be added here.
#[test]
fn every_flag_rejects_an_invalid_value() {
    // (subcommand and the flags the checked one needs, flag, invalid value)
    let daemon_cases: &[(&[&str], &str, &str)] = &[
        (&["run"], "--workload", "nosuch"),
        (&["run"], "--mem", "lots"),
        (&["run"], "--mem", "3M"),
        (&["run"], "--mem", "0"),
        (&["run"], "--mem", "64T"),
        (&["run"], "--mem", "-1G"),
        (&["run"], "--disk", ""),
        (&["run"], "--duration", "soon"),
        (&["run"], "--duration", "10"),
        (&["run"], "--duration", "-1s"),
        (&["run"], "--work", "x"),
        (&["run"], "--arena", "1.5M"),
        (&["run"], "--arena", "0"),
        (&["run"], "--arena", "lots"),
        (&["run"], "--work", "-1"),
        (&["run"], "--work", "18446744073709551616"),
        (&["run"], "--seed", "1.5"),
        (&["run"], "--out", ""),
        (&["run"], "--console-log", ""),
        (&["run"], "--guest", ""),
        (&["run"], "--interval", "1 fortnight"),
        (&["run"], "--interval-exits", "0"),
        (&["run"], "--interval-exits", "many"),
        (&["run"], "--dirty-tracking", "bitmap"),
        (&["run"], "--tracer", "perf"),
        (&["run"], "--trace-ring-bytes", "5000"),
        (&["run"], "--trace-ring-bytes", "2048"),
        (&["run"], "--trace-ring-bytes", "8589934592"),
        (&["run"], "--upload", "/tmp/not-s3"),
        (&["mkdisk", "x.img"], "--workload", "nosuch"),
        (&["mkdisk", "x.img", "--workload", "sort"], "--data", "lots"),
        (&["mkdisk", "x.img", "--workload", "sort"], "--size", "1Q"),
        (&["mkdisk", "x.img", "--workload", "sort"], "--seed", "-3"),
    ];
    let replay_cases: &[(&[&str], &str, &str)] = &[
        (&[], "--interval", "x"),
        (&[], "--interval", "-1"),
        (&["--interval", "0"], "--run", ""),
        (&["--interval", "0"], "--mode", "dense"),
        (&["--interval", "0"], "--mode", "sparse,dense"),
        (&["--interval", "0"], "--engine", "qemu"),
        (&["--all"], "--jobs", "0"),
        (&["--all"], "--jobs", "4097"),
        (&["--all"], "--jobs", "two"),
        (&["--all"], "--executor", "k8s"),
        (&["--all", "--follow"], "--follow-timeout", "later"),
        (&["--all", "--executor", "slurm"], "--slurm-dir", ""),
        (&["--all", "--executor", "slurm"], "--slurm-arg", ""),
        (&["--all", "--executor", "slurm"], "--partition", ""),
        (&["--all", "--executor", "slurm"], "--time-limit", "0s"),
        (&["--all", "--executor", "slurm"], "--time-limit", "a while"),
        (&["--all", "--executor", "slurm"], "--mem-per-task", "0"),
        (
            &["--all", "--executor", "slurm"],
            "--mem-per-task",
            "plenty",
        ),
        (&["--interval", "0"], "--timeout", "5"),
        (
            &["--interval", "0", "--engine", "sim", "--out", "o"],
            "--analysis",
            "pages,../x",
        ),
        (
            &["--interval", "0", "--engine", "sim", "--analysis", "pages"],
            "--out",
            "",
        ),
        (
            &[
                "--interval",
                "0",
                "--engine",
                "sim",
                "--analysis",
                "trace",
                "--out",
                "o",
            ],
            "--trace-limit",
            "-5",
        ),
        (
            &[
                "--interval",
                "0",
                "--engine",
                "sim",
                "--analysis",
                "cache",
                "--out",
                "o",
            ],
            "--cache",
            "32K:3:64",
        ),
    ];
    // Values valid on their own but not together: the same usage error, naming the flag.
    let combined: &[(&[&str], &str)] = &[
        (
            &["run", "--workload", "build", "--mem", "16M"],
            "needs at least 22 MiB",
        ),
        (
            &["mkdisk", "x.img", "--workload", "kvstore"],
            "reads no data set",
        ),
        (
            &[
                "mkdisk",
                "x.img",
                "--workload",
                "sort",
                "--data",
                "8M",
                "--size",
                "4M",
            ],
            "is smaller than --data",
        ),
        (
            &[
                "run",
                "--workload",
                "kvstore",
                "--mem",
                "64M",
                "--arena",
                "1M",
            ],
            "--arena 1 MiB is too small",
        ),
        (
            &["run", "--mem", "64M", "--arena", "64M"],
            "does not fit a 64 MiB guest",
        ),
    ];
    let tmp = tempfile::tempdir().expect("temp dir");
    for (args, needle) in combined {
        let out = Finished::of(daemon().args(*args).current_dir(tmp.path()));
        expect_usage_error(&out, &args.join(" "), "--", "");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    for (context, flag, value) in daemon_cases {
        let mut cmd = daemon();
        cmd.args(*context).arg(format!("{flag}={value}"));
        // A bad value must never reach the point of writing a run.
        cmd.current_dir(tmp.path());
        let out = Finished::of(&mut cmd);
        expect_usage_error(
            &out,
            &format!("simuboost-daemon {} {flag}={value:?}", context.join(" ")),
            flag,
            value,
        );
    }
    for (context, flag, value) in replay_cases {
        let out = Finished::of(
            Command::new(binary("simuboost-replay"))
                .args(*context)
                .arg(format!("{flag}={value}"))
                .current_dir(tmp.path()),
        );
        expect_usage_error(
            &out,
            &format!("simuboost-replay {} {flag}={value:?}", context.join(" ")),
            flag,
            value,
        );
    }
    assert_eq!(
        fs::read_dir(tmp.path()).expect("temp dir").count(),
        0,
        "a rejected command line wrote something"
    );

    // Every flag that takes a value is in the tables.
    let covered = |cases: &[(&[&str], &str, &str)], flag: &str, sub: Option<&str>| {
        cases
            .iter()
            .any(|(ctx, f, _)| *f == flag && sub.is_none_or(|s| ctx.first() == Some(&s)))
    };
    for sub in ["run", "mkdisk"] {
        for flag in value_flags(daemon().arg(sub)) {
            assert!(
                covered(daemon_cases, &flag, Some(sub)),
                "simuboost-daemon {sub} {flag} takes a value but has no invalid-value case"
            );
        }
    }
    for flag in value_flags(&mut Command::new(binary("simuboost-replay"))) {
        assert!(
            covered(replay_cases, &flag, None),
            "simuboost-replay {flag} takes a value but has no invalid-value case"
        );
    }
}

/// Every file under `dir` with a hash of its bytes, its length, permissions and modification
/// time.
fn tree_contents(dir: &Path) -> BTreeMap<PathBuf, (u64, usize, u32, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).expect("read");
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hasher::write(&mut hasher, &bytes);
                let hash = std::hash::Hasher::finish(&hasher);
                let mtime = meta.modified().expect("mtime");
                out.insert(path, (hash, bytes.len(), meta.permissions().mode(), mtime));
            }
        }
    }
    out
}

/// Runs `simuboost-daemon run` recording a short `pattern` run into `out` (plus `extra`).
fn record_into(out: &Path, extra: &[&str]) -> Finished {
    Finished::of(
        daemon()
            .args(["run", "--workload", "pattern", "--mem", SMALL_MEM])
            .args(["--work", "300", "--interval", "30ms"])
            .args(extra)
            .arg("--out")
            .arg(out),
    )
}

/// A refused `--out`: exit 1, the error names the path and says why, and the guest never
/// started (it would have printed its result line).
fn expect_out_refused(out: &Finished, path: &Path, why: &str) {
    assert_eq!(out.code, Some(i32::from(ERROR)), "{}", out.stderr);
    assert!(
        out.stderr.contains(&path.display().to_string()) && out.stderr.contains(why),
        "the error names {} and says {why:?}: {}",
        path.display(),
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(
        out.stderr.matches(&path.display().to_string()).count(),
        1,
        "the error says it once: {}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("result:"),
        "the guest ran: {}",
        out.stdout
    );
}

/// `--out` naming an existing non-empty directory or a file is refused before the guest
/// starts, and nothing in it is overwritten (with and without recording). No KVM needed: the
/// check comes first.
#[test]
fn out_that_exists_is_refused_before_the_guest_starts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let full = tmp.path().join("full");
    fs::create_dir(&full).expect("mkdir");
    fs::write(full.join("manifest.json"), "precious").expect("write");
    fs::write(full.join("summary.json"), "precious too").expect("write");
    let file = tmp.path().join("a-file");
    fs::write(&file, "not a directory").expect("write");
    let before = tree_contents(tmp.path());
    for extra in [&["--tracer", "none"][..], &["--no-record"][..]] {
        expect_out_refused(
            &record_into(&full, extra),
            &full,
            "already exists and is not empty",
        );
        expect_out_refused(&record_into(&file, extra), &file, "");
        // One line a person can read, without the cause repeated.
        let out = record_into(&file, extra);
        assert!(
            out.stderr.contains("Not a directory") || out.stderr.contains("File exists"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        before,
        tree_contents(tmp.path()),
        "something was overwritten"
    );
}

/// `--out` where the daemon may not write: a read-only mount (EROFS) and a directory the
/// (unprivileged) daemon has no permission to write (EACCES). A clear error before the guest
/// starts.
#[test]
fn out_without_permission_is_refused_before_the_guest_starts() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    // Read-only bind mount of an empty directory.
    let source = tmp.path().join("source");
    let ro = tmp.path().join("ro");
    fs::create_dir(&source).expect("mkdir");
    fs::create_dir(&ro).expect("mkdir");
    let mount = BindMount::read_only(&source, &ro);
    let target = ro.join("run");
    let out = record_into(&target, &[]);
    expect_out_refused(&out, &target, "Read-only file system");
    assert!(!target.exists() && !source.join("run").exists());
    drop(mount);

    // An unprivileged daemon and a directory owned by root: EACCES.
    let locked = tmp.path().join("locked");
    fs::create_dir(&locked).expect("mkdir");
    for dir in [tmp.path(), &locked] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let target = locked.join("run");
    let out = Finished::of(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(binary("simuboost-daemon"))
            .args(["run", "--workload", "pattern", "--mem", SMALL_MEM])
            .args(["--work", "300", "--tracer", "none", "--out"])
            .arg(&target),
    );
    expect_out_refused(&out, &target, "Permission denied");
    assert!(!target.exists());
}

/// A bind mount, read-only, undone on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn read_only(source: &Path, target: &Path) -> BindMount {
        let run = |args: &[&str]| {
            let status = Command::new("mount")
                .args(args)
                .arg(source)
                .arg(target)
                .status()
                .expect("mount runs");
            assert!(status.success(), "mount {args:?} failed");
        };
        run(&["--bind"]);
        let mount = BindMount(target.to_path_buf());
        let status = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(target)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remount read-only failed");
        mount
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Records a small traced `kvstore` run (events with data, several intervals) into `dir`.
fn record_small(dir: &Path) {
    record_workload(
        dir,
        "kvstore",
        SMALL_MEM,
        &["--duration", "800ms", "--interval", "200ms", "--seed", "5"],
    );
}

/// A run whose files are not writable — write bits stripped, and behind a read-only bind
/// mount — replays and verifies in every mode, and its bytes are unchanged afterwards.
#[test]
fn read_only_run_replays_and_stays_unchanged() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let recorded = tmp.path().join("recorded");
    record_small(&recorded);
    let run = tmp.path().join("stripped");
    copy_run(&recorded, &run);
    let status = Command::new("chmod")
        .args(["-R", "a-w"])
        .arg(&run)
        .status()
        .expect("chmod runs");
    assert!(status.success());
    let before = tree_contents(&run);
    let ro = tmp.path().join("ro");
    fs::create_dir(&ro).expect("mkdir");
    let mount = BindMount::read_only(&run, &ro);
    let intervals = Run::open(&ro).expect("run opens").interval_count();
    assert!(intervals >= 2, "{intervals} intervals");
    for dir in [&run, &ro] {
        let out = replay(dir, &["--all", "--jobs", "2", "--json"]);
        out.expect_code(0);
        assert_eq!(replay_reports(&out).len() as u64, intervals);
    }
    for mode in ["full", "lazy"] {
        replay(&ro, &["--interval", "1", "--mode", mode]).expect_code(0);
    }
    replay(&ro, &["--interval", "1", "--engine", "sim"]).expect_code(0);
    drop(mount);
    assert_eq!(before, tree_contents(&run), "a replay changed the run");
}

/// A refused crafted run: exit 1, no panic, the error names `file` and says `why`.
fn expect_refused(out: &Finished, what: &str, file: &str, why: &str) {
    assert_eq!(
        out.code,
        Some(i32::from(ERROR)),
        "{what}: exit code\n--- stdout:\n{}\n--- stderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(file) && out.stderr.contains(why),
        "{what}: the error names {file} and says {why:?}: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
}

/// Rewrites a Parquet table with pyarrow as its rows repeated until it has at least `rows`.
fn repeat_rows(table: &Path, rows: u64) {
    let script = format!(
        r#"
import pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table({path:?})
assert t.num_rows > 0
pq.write_table(pa.concat_tables([t] * ({rows} // t.num_rows + 1)), {path:?})
"#,
        path = table.display().to_string()
    );
    python3(
        &format!("pyarrow rewrite of {} failed", table.display()),
        &script,
        &[],
        None,
    );
}

/// Crafted runs are refused with an error naming the file: gfns beyond guest memory, slots
/// beyond pages.bin, an event buffer outside guest memory, interval boundaries and numbers that
/// do not chain, absurd counts in the manifest, symbolic links inside the run. A manifest
/// naming a path outside the run is never followed. (A damaged or truncated pages.bin and a
/// truncated state file: replay.rs.)
#[test]
fn crafted_runs_are_refused_naming_the_file() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record_small(&run);
    let opened = Run::open(&run).expect("run opens");
    let mem_pages = opened.manifest().mem_pages();
    let page_slots = opened.manifest().page_slots;
    assert!(opened.interval_count() >= 3);
    let mut n = 0;
    let mut crafted = |what: &str, damage: &dyn Fn(&Path)| -> PathBuf {
        n += 1;
        let dir = tmp.path().join(format!("crafted-{n}"));
        copy_run(&run, &dir);
        damage(&dir);
        let _ = what;
        dir
    };
    let name = |path: PathBuf| {
        path.strip_prefix(&run)
            .expect("inside the run")
            .display()
            .to_string()
    };

    // Interval 1 builds its page map from checkpoint 1's page table; a row with a slot.
    let rows = opened.checkpoint_pages(1).expect("page table");
    let last = rows.len() - 1;
    let with_slot = rows
        .iter()
        .position(|r| r.slot.is_some())
        .expect("a stored page");
    let table = name(layout::checkpoint_table(&run, 1));
    let dir = crafted("gfn beyond memory", &|d| {
        alter_cell(&layout::checkpoint_table(d, 1), last, "gfn", mem_pages + 5)
    });
    expect_refused(
        &replay(&dir, &["--interval", "1", "--mode", "full"]),
        "gfn",
        &table,
        "beyond guest memory",
    );
    let dir = crafted("slot beyond pages.bin", &|d| {
        alter_cell(
            &layout::checkpoint_table(d, 1),
            with_slot,
            "slot",
            page_slots + 10,
        )
    });
    expect_refused(
        &replay(&dir, &["--interval", "1", "--mode", "full"]),
        "slot",
        &table,
        "past the",
    );
    let dir = crafted("checkpoint number", &|d| {
        alter_cell(&layout::checkpoint_table(d, 1), 0, "checkpoint", 7)
    });
    expect_refused(
        &replay(&dir, &["--interval", "1", "--mode", "full"]),
        "checkpoint number",
        &table,
        "expected 1",
    );
    // The access log (sparse mode's working set).
    let table = name(layout::access_table(&run, 1));
    let dir = crafted("access gfn", &|d| {
        alter_cell(&layout::access_table(d, 1), 0, "gfn", mem_pages)
    });
    expect_refused(
        &replay(&dir, &["--interval", "1"]),
        "access gfn",
        &table,
        "beyond guest memory",
    );

    // More rows than guest memory has pages (a small file can claim any number): refused
    // from the footer, before anything is decoded.
    let dir = crafted("access rows", &|d| {
        repeat_rows(&layout::access_table(d, 1), mem_pages + 1)
    });
    expect_refused(
        &replay(&dir, &["--interval", "1"]),
        "access rows",
        &table,
        &format!("holds at most {mem_pages}"),
    );
    let state = name(layout::state_table(&run, 1));
    let dir = crafted("state rows", &|d| {
        repeat_rows(&layout::state_table(d, 1), 2)
    });
    expect_refused(
        &replay(&dir, &["--interval", "1", "--mode", "full"]),
        "state rows",
        &state,
        "holds at most 1",
    );

    // An event whose buffer lies outside guest memory, and one out of order.
    let (interval, row) = (0..opened.interval_count())
        .find_map(|i| {
            let events = opened.events(i).expect("events");
            events
                .iter()
                .position(|e| e.data.as_ref().is_some_and(|d| !d.is_empty()))
                .map(|row| (i, row))
        })
        .expect("an event with data");
    let table = name(layout::events_table(&run, interval));
    let mem_bytes = opened.manifest().meta.mem_bytes;
    let dir = crafted("event buffer", &|d| {
        alter_cell(
            &layout::events_table(d, interval),
            row,
            "data_gpa",
            mem_bytes - 1,
        )
    });
    let args = ["--interval", &interval.to_string(), "--mode", "full"];
    expect_refused(
        &replay(&dir, &args),
        "event buffer",
        &table,
        "outside guest memory",
    );
    let interval = (0..opened.interval_count())
        .find(|&i| opened.events(i).expect("events").len() >= 2)
        .expect("an interval with two events");
    let dir = crafted("event order", &|d| {
        alter_cell(&layout::events_table(d, interval), 1, "exit", 0)
    });
    expect_refused(
        &replay(
            &dir,
            &["--interval", &interval.to_string(), "--mode", "full"],
        ),
        "event order",
        &name(layout::events_table(&run, interval)),
        "exits ascend",
    );

    // Interval boundaries that do not chain with the checkpoints, and a misplaced file.
    let record = opened.interval(1).expect("interval 1");
    let table = name(layout::interval_table(&run, 1));
    for (column, value) in [
        ("start_exit", record.start_exit + 1),
        ("end_exit", record.end_exit + 1),
        ("start_exit", record.end_exit + 1),
        ("interval", 2),
    ] {
        let dir = crafted(column, &|d| {
            alter_cell(&layout::interval_table(d, 1), 0, column, value)
        });
        let out = replay(&dir, &["--interval", "1", "--mode", "full"]);
        let why = match column {
            "interval" => "expected 1",
            "start_exit" if value > record.end_exit => "is after end_exit",
            _ => "does not chain",
        };
        expect_refused(&out, column, &table, why);
    }

    // Absurd numbers in the manifest: no allocation or loop in proportion to them.
    for (field, value) in [
        ("checkpoints", serde_json::json!(1u64 << 50)),
        ("mem_bytes", serde_json::json!(1u64 << 60)),
    ] {
        let dir = crafted(field, &|d| {
            edit_manifest(d, |m| {
                if field == "mem_bytes" {
                    m["meta"][field] = value.clone();
                } else {
                    m[field] = value.clone();
                }
            })
        });
        for args in [&["--all", "--jobs", "2"][..], &["--interval", "1"][..]] {
            let began = Instant::now();
            let out = replay(&dir, args);
            expect_refused(&out, field, layout::MANIFEST, field);
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "{field}: took {:?}",
                began.elapsed()
            );
        }
    }

    // Symbolic links inside the run, to a valid copy outside it: refused, not followed.
    let outside = tmp.path().join("outside");
    copy_run(&run, &outside);
    for (entry, needle) in [
        (
            layout::state_table(Path::new(""), 1),
            "state/ckpt-000001.parquet",
        ),
        (PathBuf::from(layout::EVENTS_DIR), "events"),
        (PathBuf::from(layout::PAGES), "pages.bin"),
    ] {
        let dir = crafted("symlink", &|d| {
            let link = d.join(&entry);
            if link.is_dir() {
                fs::remove_dir_all(&link).expect("remove dir");
            } else {
                fs::remove_file(&link).expect("remove file");
            }
            std::os::unix::fs::symlink(outside.join(&entry), &link).expect("symlink");
        });
        let out = replay(&dir, &["--interval", "1", "--mode", "full"]);
        expect_refused(&out, "symlink", needle, "symbolic link");
        assert!(
            out.stderr.contains(&outside.display().to_string()),
            "names the target: {}",
            out.stderr
        );
    }

    // The manifest names no file a replay opens: a disk image path outside the run (here a
    // FIFO, which would block whoever opened it) is never followed.
    let fifo = tmp.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "mkfifo");
    let dir = crafted("disk image", &|d| {
        edit_manifest(d, |m| {
            m["meta"]["disk_image"] = serde_json::json!(fifo.display().to_string())
        })
    });
    replay(&dir, &["--interval", "1"]).expect_code(0);
}

/// Command lines of the running processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

/// SIGINT or SIGTERM to `simuboost-replay --all` (local executor) stops the replays: exit 130,
/// the queued intervals are not started, and no replay process (and with it no VM or
/// userfaultfd handler) is left behind.
#[test]
fn interrupted_replay_all_leaves_nothing_behind() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record_workload(
        &run,
        "idle",
        SMALL_MEM,
        &["--duration", "3s", "--interval", "40ms"],
    );
    // Enough intervals that two replays at a time are still busy when the signal comes (on a
    // loaded machine idle's boundaries come later than every 40 ms).
    let intervals = Run::open(&run).expect("run opens").interval_count();
    assert!(intervals >= 12, "{intervals} intervals");
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut child = Command::new(binary("simuboost-replay"))
            .arg("--run")
            .arg(&run)
            .args(["--all", "--jobs", "2", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("replay starts");
        // Wait for the first finished replay: the others are then running or queued.
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("a report line");
        assert!(first.contains("\"interval\""), "{first}");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let began = Instant::now();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).expect("stdout");
        let out = child.wait_with_output().expect("replay exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(INTERRUPTED)),
            "signal {signal}: {stderr}"
        );
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "stopping took {:?}",
            began.elapsed()
        );
        let reported = 1 + rest.lines().count() as u64;
        assert!(
            reported < intervals,
            "signal {signal}: all {intervals} intervals were replayed anyway"
        );
        let left = processes_mentioning(&run.display().to_string());
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// The column tables of docs/FORMAT.md: directory → [(column, type, nullable)].
fn documented_schemas() -> BTreeMap<String, Vec<(String, String, bool)>> {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md"))
        .expect("docs/FORMAT.md");
    let mut out = BTreeMap::new();
    for section in doc.split("\n## ").skip(1) {
        let heading = section.lines().next().unwrap_or_default();
        let Some((dir, _)) = heading.split_once('/') else {
            continue;
        };
        if !heading.contains(".parquet") {
            continue;
        }
        let mut columns = Vec::new();
        for line in section
            .lines()
            .skip_while(|l| !l.starts_with("| column |"))
            .skip(2)
        {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (ty, nullable) = match cells[2].strip_suffix(", nullable") {
                Some(ty) => (ty, true),
                None => (cells[2], false),
            };
            for name in cells[1].split(", ") {
                columns.push((name.trim_matches('`').to_string(), ty.to_string(), nullable));
            }
        }
        out.insert(dir.to_string(), columns);
    }
    out
}

/// Every Parquet file of a real run opens in DuckDB and pyarrow, and the schema pyarrow reads
/// from each is the one docs/FORMAT.md documents for its directory (names, order, types,
/// nullability).
#[test]
fn every_parquet_file_opens_in_duckdb_and_pyarrow_as_documented() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    // `compress` reads its disk, so its run has every table (disk reads in `eventpages/`).
    let run = tmp.path().join("run");
    record_workload(
        &run,
        "compress",
        SMALL_MEM,
        &["--duration", "800ms", "--interval", "200ms", "--seed", "5"],
    );
    let documented = documented_schemas();
    assert_eq!(
        documented.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "access",
            "checkpoints",
            "eventpages",
            "events",
            "intervals",
            "pagemaps",
            "state"
        ],
        "FORMAT.md's Parquet sections"
    );
    let script = r#"
import duckdb, glob, json, os, sys
import pyarrow as pa, pyarrow.parquet as pq

def name(t):
    if pa.types.is_list(t):
        return "list<%s>" % name(t.value_type)
    if pa.types.is_struct(t):
        return "struct<%s>" % ", ".join("%s: %s" % (f.name, name(f.type)) for f in t)
    if pa.types.is_fixed_size_binary(t):
        return "fixed_size_binary(%d)" % t.byte_width
    if t == pa.string():
        return "utf8"
    return str(t)

run = sys.argv[1]
out = {}
for path in sorted(glob.glob(os.path.join(run, "*", "*.parquet"))):
    table = pq.read_table(path)
    rows = duckdb.sql("SELECT count(*) FROM read_parquet('%s')" % path).fetchall()[0][0]
    assert rows == table.num_rows, (path, rows, table.num_rows)
    described = [r[0] for r in duckdb.sql("DESCRIBE SELECT * FROM read_parquet('%s')" % path).fetchall()]
    assert described == table.schema.names, (path, described, table.schema.names)
    out[os.path.relpath(path, run)] = [[f.name, name(f.type), f.nullable] for f in table.schema]
print(json.dumps(out))
"#;
    let out = python3(
        "DuckDB or pyarrow could not read the run",
        script,
        &[run.as_os_str()],
        None,
    );
    let files: BTreeMap<String, Vec<(String, String, bool)>> =
        serde_json::from_str(&out).expect("the script's JSON");
    let mut seen = std::collections::BTreeSet::new();
    for (file, schema) in &files {
        let dir = file.split('/').next().expect("a directory");
        seen.insert(dir.to_string());
        let doc = documented
            .get(dir)
            .unwrap_or_else(|| panic!("{file}: FORMAT.md documents no table for {dir}/"));
        assert_eq!(
            schema, doc,
            "{file}: the schema pyarrow reads differs from FORMAT.md"
        );
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        documented.keys().cloned().collect::<Vec<_>>(),
        "the run has a file of every documented table"
    );
}

/// While the daemon is still recording a run, its completed intervals replay and verify (one
/// alone, and the same one four times at once) and a later one is "not complete yet"; once
/// recorded, `--all --jobs 8` (four times the cores here) verifies every interval.
#[test]
fn replays_while_recording_and_many_at_once_verify() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    let recorder = daemon()
        .args(["run", "--workload", "kvstore", "--mem", SMALL_MEM])
        .args(["--duration", "10min", "--interval", "200ms", "--seed", "7"])
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Run::open(&run).map_or(0, |r| r.interval_count()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the recording never completed 2 intervals"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let replays: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new(binary("simuboost-replay"))
                .arg("--run")
                .arg(&run)
                .args(["--interval", "1", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("replay starts")
        })
        .collect();
    for child in replays {
        let out = Finished::from(child.wait_with_output().expect("replay exits"));
        out.expect_code(0);
        assert!(replay_reports(&out)[0].verified, "{}", out.stdout);
    }
    let opened = Run::open(&run).expect("run opens");
    assert!(!opened.manifest().finished, "the recorder is still running");
    let later = opened.interval_count() + 1000;
    let out = replay(&run, &["--interval", &later.to_string()]);
    expect_refused(
        &out,
        "later interval",
        &later.to_string(),
        "not complete yet",
    );
    replay(&run, &["--interval", "0"]).expect_code(0);

    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) }, 0);
    let recorded = recorder.wait_with_output().expect("daemon exits");
    assert_eq!(
        recorded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    let intervals = Run::open(&run).expect("run opens").interval_count();
    let out = replay(&run, &["--all", "--jobs", "8", "--json"]);
    out.expect_code(0);
    let reports = replay_reports(&out);
    assert_eq!(reports.len() as u64, intervals);
    assert!(reports.iter().all(|r| r.verified), "{}", out.stdout);
}
