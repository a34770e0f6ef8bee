//! End-to-end tests of replay on a real KVM VM with real userfaultfd: every interval of every
//! workload replays and verifies in all three modes, sparse mode needs no on-demand page for
//! `pattern`, an altered event is caught at its exit, a damaged page file is reported, and bad
//! input gets a clear error without touching the run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use simuboost_format::Run;
use simuboost_report::replay::ReplayReport;
use simuboost_tests::{
    alter_cell, copy_run, edit_manifest, kvm_and_root_available, record_workload, replay,
    replay_reports, Finished,
};

const SMALL_MEM: &str = "64M";

/// Records `workload` into `dir` in a small VM (plus `extra` flags).
fn record(dir: &Path, workload: &str, extra: &[&str]) {
    record_workload(dir, workload, SMALL_MEM, extra);
}

/// Replays every interval of the run in `mode` and checks that each verified; returns the
/// reports by interval.
fn replay_all_verified(run: &Path, mode: &str) -> BTreeMap<u64, ReplayReport> {
    let intervals = Run::open(run).expect("run opens").interval_count();
    assert!(
        intervals >= 2,
        "{}: too few intervals ({intervals})",
        run.display()
    );
    let out = replay(run, &["--all", "--jobs", "2", "--mode", mode, "--json"]);
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
        assert!(r.divergence.is_none(), "{mode} interval {i}: {r:?}");
        assert_eq!(r.mode.name(), mode);
        assert!(r.pages_checked > 0, "{mode} interval {i}: {r:?}");
        assert!(r.footprint_bytes > 0, "{mode} interval {i}: {r:?}");
        // What was loaded was read from pages.bin, and pages.bin's reads (through its
        // mapping or not) are part of everything read from the run, beside the tables.
        assert!(
            r.page_store_bytes_read >= r.bytes_loaded,
            "{mode} interval {i}: {r:?}"
        );
        assert!(
            r.bytes_fetched > r.page_store_bytes_read,
            "{mode} interval {i}: {r:?}"
        );
    }
    by_interval
}

/// Records `workload` and replays every interval in every mode; returns the temporary
/// directory holding the run (`run/`), or `None` where KVM is unavailable.
fn all_modes_verify(workload: &str, extra: &[&str]) -> Option<tempfile::TempDir> {
    if !kvm_and_root_available() {
        return None;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(&run, workload, extra);
    let sparse = replay_all_verified(&run, "sparse");
    let full = replay_all_verified(&run, "full");
    let lazy = replay_all_verified(&run, "lazy");
    for (i, f) in &full {
        // Full mode installs every page up front; lazy mode nothing.
        assert_eq!(f.misses, 0, "full interval {i}: {f:?}");
        assert_eq!(lazy[i].pages_loaded, 0, "lazy interval {i}");
        assert!(lazy[i].misses > 0, "lazy interval {i}");
        // Sparse loads the working set, never more than the dense restore.
        let s = &sparse[i];
        assert!(s.pages_loaded >= s.working_set_pages);
        assert!(s.bytes_loaded <= f.bytes_loaded, "interval {i}");
    }
    // The three modes in one process, one after another, as the benchmarks run them: each
    // measures its own footprint (a full restore once reported 0 here, its guest RAM merged
    // into a neighbouring mapping).
    let out = replay(
        &run,
        &["--interval", "1", "--mode", "sparse,full,lazy", "--json"],
    );
    out.expect_code(0);
    let reports = replay_reports(&out);
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert!(r.verified, "{r:?}");
        assert!(r.footprint_bytes > 0, "{r:?}");
    }
    let footprint = |mode: &str| {
        reports
            .iter()
            .find(|r| r.mode.name() == mode)
            .map(|r| r.footprint_bytes)
            .unwrap_or_else(|| panic!("no {mode} report: {reports:?}"))
    };
    assert!(footprint("full") >= footprint("sparse"));

    // A sparse restore finds its pages through the access log's start pages; through the page
    // map, read in part or whole, it loads the same pages and verifies the same. (What each
    // reads is measured by `cargo xtask bench restore-position`: in a run this small, every
    // table is smaller than the tail a partial read starts with.)
    let lookup = |how: &str| {
        let out = replay(
            &run,
            &[
                "--interval",
                "1",
                "--mode",
                "sparse",
                "--page-lookup",
                how,
                "--json",
            ],
        );
        out.expect_code(0);
        let mut reports = replay_reports(&out);
        assert_eq!(reports.len(), 1, "{how}");
        reports.remove(0)
    };
    let log = lookup("log");
    for how in ["partial", "whole"] {
        let other = lookup(how);
        assert!(other.verified, "{how}: {other:?}");
        assert_eq!(
            (other.pages_loaded, other.bytes_loaded, other.misses),
            (log.pages_loaded, log.bytes_loaded, log.misses),
            "{how}"
        );
        assert_eq!(other.pages_checked, log.pages_checked, "{how}");
    }
    assert!(log.verified, "{log:?}");
    Some(tmp)
}

/// A workload that reads its disk: the run holds the block-read data by reference in
/// pages.bin (the events table has none of it inline), much of it deduplicated, and the
/// replays above fed it back from there at each read's exit.
fn disk_reads_are_held_by_reference(run: &Path) {
    let run = Run::open(run).expect("run opens");
    let intervals = run.intervals().expect("intervals");
    let pages: u64 = intervals.iter().map(|r| r.event_pages).sum();
    let stored: u64 = intervals.iter().map(|r| r.event_stored_pages).sum();
    assert!(pages > 0, "no disk read held by reference: {intervals:?}");
    assert!(
        stored < pages,
        "no event page deduplicated ({stored} of {pages} stored)"
    );
    let mut block_reads = 0;
    for i in 0..run.interval_count() {
        for e in run.events(i).expect("events") {
            if e.op == simuboost_abi::Op::BlockRead as u32 && e.status == 0 {
                block_reads += 1;
                assert!(
                    matches!(e.data, Some(simuboost_format::EventData::Pages(_))),
                    "interval {i} exit {}: a block read's data is inline",
                    e.exit
                );
            }
        }
    }
    assert!(block_reads > 0);
}

#[test]
fn idle_replays_in_all_modes() {
    all_modes_verify("idle", &["--duration", "1s", "--interval", "200ms"]);
}

#[test]
fn stream_replays_in_all_modes() {
    all_modes_verify("stream", &["--duration", "1500ms", "--interval", "300ms"]);
}

#[test]
fn compress_replays_in_all_modes() {
    if let Some(tmp) =
        all_modes_verify("compress", &["--duration", "1500ms", "--interval", "300ms"])
    {
        disk_reads_are_held_by_reference(&tmp.path().join("run"));
    }
}

#[test]
fn kvstore_replays_in_all_modes() {
    all_modes_verify("kvstore", &["--duration", "1500ms", "--interval", "300ms"]);
}

#[test]
fn sort_replays_in_all_modes() {
    if let Some(tmp) = all_modes_verify("sort", &["--duration", "1500ms", "--interval", "300ms"]) {
        disk_reads_are_held_by_reference(&tmp.path().join("run"));
    }
}

#[test]
fn build_replays_in_all_modes() {
    all_modes_verify("build", &["--duration", "1500ms", "--interval", "300ms"]);
}

#[test]
fn pattern_replays_in_all_modes() {
    all_modes_verify("pattern", &["--work", "1500", "--interval", "30ms"]);
}

/// The working set of `pattern` is exact, so sparse mode serves no page on demand — in every
/// interval, including the first (boot) and the last, which ends with the guest's exit and
/// verifies against the final state.
#[test]
fn pattern_sparse_replay_has_no_misses() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "pattern",
        &["--work", "3000", "--seed", "9", "--interval", "20ms"],
    );
    let manifest = Run::open(&run).expect("run opens");
    assert_eq!(manifest.manifest().exit_status, Some(0), "the guest exited");
    let sparse = replay_all_verified(&run, "sparse");
    for (i, r) in &sparse {
        assert_eq!(r.misses, 0, "interval {i}: {r:?}");
        assert!(r.working_set_pages > 0, "interval {i}: {r:?}");
    }
    let last = sparse.keys().last().copied().expect("intervals");
    let final_interval = manifest.interval(last).expect("last interval");
    assert_eq!(
        sparse[&last].end_exit, final_interval.end_exit,
        "the last interval ends at the guest's exit"
    );
}

/// Rewrites one cell of an events table.
fn alter_event(run: &Path, interval: u64, row: usize, column: &str, value: u64) {
    alter_cell(
        &simuboost_format::layout::events_table(run, interval),
        row,
        column,
        value,
    );
}

/// An interval of `run` with at least `min_events` events, not the first; returns it and its
/// events.
fn interval_with_events(run: &Path, min_events: usize) -> (u64, Vec<simuboost_format::Event>) {
    let r = Run::open(run).expect("run opens");
    (1..r.interval_count())
        .map(|i| (i, r.events(i).expect("events")))
        .find(|(_, e)| e.len() >= min_events)
        .expect("an interval with enough events")
}

/// A recorded request whose arguments were changed is reported at exactly its exit; a changed
/// value given to the guest makes the replay diverge at or after that exit.
#[test]
fn altered_events_are_divergences_at_their_exit() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "kvstore",
        &["--duration", "1500ms", "--interval", "300ms"],
    );
    let (interval, events) = interval_with_events(&run, 5);
    let row = events.len() / 2;
    let exit = events[row].exit;

    // The guest will ask for what it asked for; the log now says otherwise.
    let altered = tmp.path().join("altered-args");
    copy_run(&run, &altered);
    alter_event(
        &altered,
        interval,
        row,
        "arg0",
        events[row].args[0] ^ 0x1000,
    );
    let out = replay(&altered, &["--interval", &interval.to_string(), "--json"]);
    out.expect_code(3);
    let report = &replay_reports(&out)[0];
    assert!(!report.verified);
    let divergence = report.divergence.as_ref().expect("a divergence");
    assert_eq!(divergence.kind, "request", "{report:?}");
    assert_eq!(divergence.exit, exit, "{report:?}");
    assert!(
        out.stdout.contains("the recording has"),
        "the divergence names both requests: {}",
        out.stdout
    );

    // The guest gets another answer than it got while recording: the replay must not verify.
    let altered = tmp.path().join("altered-value");
    copy_run(&run, &altered);
    // A yield answered 1 tells the guest to stop early: its next request differs.
    let yield_row = (0..events.len() - 1)
        .rev()
        .find(|&i| events[i].op == simuboost_abi::Op::Yield as u32)
        .expect("a yield in the interval");
    let exit = events[yield_row].exit;
    alter_event(
        &altered,
        interval,
        yield_row,
        "ret",
        events[yield_row].ret ^ 1,
    );
    let out = replay(&altered, &["--interval", &interval.to_string(), "--json"]);
    out.expect_code(3);
    let report = &replay_reports(&out)[0];
    assert!(!report.verified, "{report:?}");
    assert!(
        report.divergence.as_ref().expect("a divergence").exit >= exit,
        "detected at or after the altered exit {exit}: {report:?}"
    );

    // The original still verifies.
    replay(&run, &["--interval", &interval.to_string()]).expect_code(0);

    // A replay that does not reach its end in time is stopped (the vCPU is kicked out of
    // KVM_RUN) and reported as a timeout, not left hanging.
    let out = replay(
        &run,
        &[
            "--interval",
            &interval.to_string(),
            "--timeout",
            "1ms",
            "--json",
        ],
    );
    out.expect_code(3);
    let report = &replay_reports(&out)[0];
    let divergence = report.divergence.as_ref().expect("a divergence");
    assert_eq!(divergence.kind, "timeout", "{report:?}");
}

/// A flipped byte in pages.bin is an error naming the file and slot, in sparse mode (bulk
/// load) and lazy mode (the page is served on demand while the vCPU waits); a truncated
/// pages.bin is one too. Never a panic, never "verified".
#[test]
fn damaged_page_file_is_reported() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "pattern",
        &["--work", "1500", "--seed", "3", "--interval", "30ms"],
    );
    let opened = Run::open(&run).expect("run opens");
    let interval = opened.interval_count() / 2;
    let map = opened.page_map(interval).expect("page map");
    let access = opened
        .access(interval)
        .expect("access log")
        .expect("traced run");
    let (gfn, slot) = access
        .iter()
        .find_map(|a| map.get(a.gfn).map(|slot| (a.gfn, slot)))
        .expect("a non-zero page in the working set");

    let damaged = tmp.path().join("flipped");
    copy_run(&run, &damaged);
    let pages = damaged.join("pages.bin");
    let mut bytes = fs::read(&pages).expect("pages.bin");
    bytes[(slot as usize) * 4096 + 100] ^= 0xff;
    fs::write(&pages, &bytes).expect("write pages.bin");
    for mode in ["sparse", "lazy", "full"] {
        let out = replay(
            &damaged,
            &["--interval", &interval.to_string(), "--mode", mode],
        );
        out.expect_code(1);
        for needle in [
            "pages.bin",
            "corrupt",
            &format!("slot {slot}"),
            &format!("{gfn:#x}"),
        ] {
            assert!(
                out.stderr.contains(needle),
                "{mode}: the error mentions {needle:?}: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{mode}: {}", out.stderr);
    }

    let truncated = tmp.path().join("truncated");
    copy_run(&run, &truncated);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("pages.bin"))
        .expect("open pages.bin");
    file.set_len(slot * 4096).expect("truncate");
    let out = replay(&truncated, &["--interval", &interval.to_string()]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("pages.bin") && out.stderr.contains("truncated"),
        "{}",
        out.stderr
    );
}

/// The run keeps the CPUID its vCPU was given, and a replay gives the vCPU that one: a CPUID
/// KVM refuses fails the replay, naming it. A run without one (recorded before the field
/// existed) replays with what the host's KVM supports.
#[test]
fn recorded_cpuid_is_what_replays_get() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "pattern",
        &["--work", "300", "--interval-exits", "20"],
    );
    let cpuid = Run::open(&run)
        .expect("run opens")
        .manifest()
        .meta
        .cpuid
        .clone();
    // Leaf 0: the highest standard leaf and the vendor, which KVM passes through.
    let leaf0 = cpuid
        .iter()
        .find(|e| e.function == 0)
        .expect("the recorded CPUID has leaf 0");
    let host = std::arch::x86_64::__cpuid(0);
    assert_eq!(
        (leaf0.ebx, leaf0.edx, leaf0.ecx),
        (host.ebx, host.edx, host.ecx),
        "the recorded vendor is the host's"
    );
    replay(&run, &["--interval", "1"]).expect_code(0);

    let edit = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let copy = tmp.path().join(name);
        copy_run(&run, &copy);
        edit_manifest(&copy, f);
        copy
    };
    // KVM refuses a virtual address width other than 48 or 57 bits (leaf 0x8000_0008, EAX
    // bits 8-15): the replay must be using the recorded leaves to see it.
    let refused = edit("refused", &|m| {
        for leaf in m["meta"]["cpuid"].as_array_mut().expect("cpuid") {
            if leaf["function"] == 0x8000_0008u32 {
                let eax = leaf["eax"].as_u64().expect("eax");
                leaf["eax"] = ((eax & !0xff00) | (40 << 8)).into();
            }
        }
    });
    for mode in ["sparse", "full", "lazy"] {
        let out = replay(&refused, &["--interval", "1", "--mode", mode]);
        out.expect_code(1);
        assert!(
            out.stderr.contains("refuses the CPUID the run recorded")
                && out.stderr.contains("meta.cpuid"),
            "{mode}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{mode}: {}", out.stderr);
    }
    let without = edit("without", &|m| {
        m["meta"]
            .as_object_mut()
            .expect("meta")
            .remove("cpuid")
            .expect("recorded");
    });
    replay(&without, &["--interval", "1"]).expect_code(0);
}

/// Every file of a directory tree with its length and modification time.
fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path(), (meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    out
}

/// Bad input gets a clear message and a non-zero exit; replays never write into the run.
#[test]
fn bad_input_is_refused_clearly() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "pattern",
        &["--work", "600", "--interval", "30ms", "--tracer", "none"],
    );
    let intervals = Run::open(&run).expect("run opens").interval_count();
    let before = snapshot_tree(&run);

    let expect_error = |out: Finished, needles: &[&str]| {
        out.expect_code(1);
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "the error mentions {needle:?}: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    };
    // No working set (recorded without the tracer): sparse is refused, full works.
    expect_error(
        replay(&run, &["--interval", "1"]),
        &["no access log", "--mode full"],
    );
    replay(&run, &["--interval", "1", "--mode", "full"]).expect_code(0);
    // Out of range: the message gives the valid range.
    expect_error(
        replay(
            &run,
            &["--interval", &intervals.to_string(), "--mode", "full"],
        ),
        &["out of range", &format!("0..={}", intervals - 1)],
    );
    // Missing run.
    expect_error(
        replay(&tmp.path().join("nothing-here"), &["--interval", "0"]),
        &["nothing-here", "not a simuboost run"],
    );
    // Usage errors exit 2.
    replay(&run, &["--interval", "0", "--jobs", "2"]).expect_code(2);
    replay(&run, &["--interval", "x"]).expect_code(2);
    replay(&run, &[]).expect_code(2);
    assert_eq!(
        before,
        snapshot_tree(&run),
        "replays wrote into the run directory"
    );

    // A run still being recorded: the next interval is "not complete yet".
    let open = tmp.path().join("unfinished");
    copy_run(&run, &open);
    let manifest_path = open.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest_path).expect("manifest")).expect("JSON");
    manifest["finished"] = serde_json::Value::Bool(false);
    fs::write(&manifest_path, manifest.to_string()).expect("write manifest");
    expect_error(
        replay(
            &open,
            &["--interval", &intervals.to_string(), "--mode", "full"],
        ),
        &["not complete yet"],
    );
    // Another format version.
    manifest["format_version"] = serde_json::json!(99);
    fs::write(&manifest_path, manifest.to_string()).expect("write manifest");
    expect_error(
        replay(&open, &["--interval", "0", "--mode", "full"]),
        &["format_version 99", "not supported"],
    );
    // A truncated state file names the file.
    let state = run.join("state").join("ckpt-000001.parquet");
    let damaged = tmp.path().join("bad-state");
    copy_run(&run, &damaged);
    let damaged_state = damaged.join("state").join("ckpt-000001.parquet");
    let len = fs::metadata(&state).expect("state").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&damaged_state)
        .expect("open state")
        .set_len(len / 2)
        .expect("truncate");
    expect_error(
        replay(&damaged, &["--interval", "1", "--mode", "full"]),
        &["ckpt-000001.parquet"],
    );
}

/// A disk read held by reference whose page is not what the recording read (its slot in
/// `eventpages/` now names another page of pages.bin) is an error at the read's exit, naming
/// pages.bin, the slot and the exit, in every mode; the original run replays.
#[test]
fn damaged_disk_read_is_reported_at_its_exit() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record(
        &run,
        "compress",
        &["--duration", "800ms", "--interval", "200ms", "--seed", "4"],
    );
    let opened = Run::open(&run).expect("run opens");
    // An interval past boot with a disk read, and the first page of it that is not zero.
    let (interval, exit, row, slot) = (1..opened.interval_count())
        .find_map(|i| {
            let mut row = 0;
            for e in opened.events(i).expect("events") {
                if let Some(simuboost_format::EventData::Pages(pages)) = &e.data {
                    for entry in pages {
                        if let Some((slot, _)) = entry {
                            return Some((i, e.exit, row, *slot));
                        }
                        row += 1;
                    }
                }
            }
            None
        })
        .expect("an interval with a non-zero disk-read page");
    replay(&run, &["--interval", &interval.to_string()]).expect_code(0);

    let damaged = tmp.path().join("damaged");
    copy_run(&run, &damaged);
    // Another committed slot: readable, but not the page the hash names.
    let other = if slot == 0 { 1 } else { slot - 1 };
    alter_cell(
        &simuboost_format::layout::eventpages_table(&damaged, interval),
        row,
        "slot",
        other,
    );
    for mode in ["sparse", "full", "lazy"] {
        let out = replay(
            &damaged,
            &["--interval", &interval.to_string(), "--mode", mode],
        );
        out.expect_code(1);
        for needle in [
            "pages.bin".to_string(),
            format!("slot {other}"),
            format!("exit {exit}"),
        ] {
            assert!(
                out.stderr.contains(&needle),
                "{mode}: the error mentions {needle:?}: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{mode}: {}", out.stderr);
    }
}
