//! End-to-end tests of the simulator's analyses (`--engine sim --analysis ... --out DIR`) on
//! intervals recorded in a real KVM VM: the Parquet files they write are checked against what
//! the workloads are documented to do, against each other (the trace adds up to the page
//! counts and to the cache model's lookups), and queried with DuckDB as docs/ANALYSES.md shows.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use simuboost_abi::{Op, PAGE_SIZE};
use simuboost_format::Run;
use simuboost_report::replay::{AnalysisSummary, ReplayReport};
use simuboost_tests::{
    duckdb_rows, kvm_and_root_available, record_workload, replay, replay_reports, summary,
};
use simuboost_workloads::pattern;

const SMALL_MEM: &str = "64M";
const ANALYSES: [&str; 4] = ["blocks", "pages", "trace", "cache"];

fn analysis(report: &ReplayReport) -> &AnalysisSummary {
    report
        .simulation
        .as_ref()
        .and_then(|s| s.analysis.as_ref())
        .unwrap_or_else(|| panic!("an analysed replay reports its analyses: {report:?}"))
}

fn file(out: &Path, analysis: &str, interval: u64) -> String {
    out.join(analysis)
        .join(format!("interval-{interval:06}.parquet"))
        .display()
        .to_string()
}

fn count(sql: &str) -> u64 {
    let rows = duckdb_rows(sql);
    rows[0][0]
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {rows:?}: {e}"))
}

/// `pattern` documents exactly which arena pages each step reads and writes (one `u64` each).
/// Every interval is analysed with `--all`; for each, the `pages` rows of the arena are those
/// pages with exactly those counts, the trace adds up to the `pages` counts frame by frame, the
/// cache model's L1 lookups are the lines the trace's data accesses span, and the blocks add up
/// to the instruction count. The same interval analysed again gives identical Parquet files.
#[test]
fn pattern_analyses_are_its_documented_steps() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run_dir = tmp.path().join("run");
    let seed = 9u64;
    record_workload(
        &run_dir,
        "pattern",
        SMALL_MEM,
        &["--work", "400", "--seed", "9", "--interval-exits", "100"],
    );
    let out = tmp.path().join("analyses");
    let out_arg = out.display().to_string();
    let replayed = replay(
        &run_dir,
        &[
            "--all",
            "--jobs",
            "2",
            "--engine",
            "sim",
            "--analysis",
            "all",
            "--out",
            &out_arg,
            "--json",
        ],
    );
    replayed.expect_code(0);
    let reports: BTreeMap<u64, ReplayReport> = replay_reports(&replayed)
        .into_iter()
        .map(|r| (r.interval, r))
        .collect();

    let s = summary(&run_dir);
    let arena_gfn = s.arena_start / PAGE_SIZE;
    let (skip, arena_pages) =
        pattern::aligned_pages(s.arena_start as usize, s.arena_bytes as usize);
    assert_eq!(skip, 0, "the guest's arena is page aligned");
    let run = Run::open(&run_dir).expect("run opens");
    assert!(run.interval_count() >= 3, "want several intervals");
    assert_eq!(reports.len() as u64, run.interval_count());

    let mut step = 0u64;
    let mut checked_steps = 0;
    for interval in 0..run.interval_count() {
        let report = &reports[&interval];
        assert!(report.verified, "{report:?}");
        let a = analysis(report);
        let instructions = report.simulation.as_ref().map_or(0, |s| s.instructions);
        assert_eq!(a.instructions, instructions);
        for name in ANALYSES {
            let rel = format!("{name}/interval-{interval:06}.parquet");
            assert!(a.files.contains(&rel), "{rel} in {:?}", a.files);
            assert!(out.join(&rel).is_file(), "{rel}");
        }

        // The documented page set, with counts: reads and writes per arena frame.
        let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for event in run.events(interval).expect("events") {
            if event.op == Op::Yield as u32 {
                let pages = pattern::step_pages(seed, step, arena_pages);
                for p in pages.reads {
                    expected.entry(arena_gfn + p).or_default().0 += 1;
                }
                for p in pages.writes {
                    expected.entry(arena_gfn + p).or_default().1 += 1;
                }
                step += 1;
                checked_steps += 1;
            }
        }
        let found: BTreeMap<u64, (u64, u64)> = duckdb_rows(&format!(
            "SELECT gfn, reads, writes, fetches FROM read_parquet('{}') WHERE gfn >= {arena_gfn} \
             ORDER BY gfn",
            file(&out, "pages", interval)
        ))
        .into_iter()
        .map(|r| {
            assert_eq!(r[3], "0", "no instruction runs from the arena: {r:?}");
            let n = |i: usize| r[i].parse::<u64>().expect("a count");
            (n(0), (n(1), n(2)))
        })
        .collect();
        assert_eq!(
            found, expected,
            "interval {interval}: the arena's page counts are not the steps' documented pages"
        );

        // The trace adds up to the page counts, frame by frame.
        let mismatches = count(&format!(
            "WITH t AS (SELECT paddr // 4096 AS gfn, \
                    count(*) FILTER (WHERE kind = 'read') AS reads, \
                    count(*) FILTER (WHERE kind = 'write') AS writes, \
                    count(*) FILTER (WHERE kind = 'fetch') AS fetches \
                FROM read_parquet('{trace}') GROUP BY gfn) \
             SELECT count(*) FROM t FULL OUTER JOIN read_parquet('{pages}') p USING (gfn) \
             WHERE t.reads IS DISTINCT FROM p.reads OR t.writes IS DISTINCT FROM p.writes \
                OR t.fetches IS DISTINCT FROM p.fetches",
            trace = file(&out, "trace", interval),
            pages = file(&out, "pages", interval)
        ));
        assert_eq!(mismatches, 0, "interval {interval}: trace vs pages");
        // One fetch row per instruction.
        let fetches = count(&format!(
            "SELECT count(*) FROM read_parquet('{}') WHERE kind = 'fetch'",
            file(&out, "trace", interval)
        ));
        assert_eq!(fetches, instructions, "interval {interval}");
        // Every data access names the instruction that made it: a fetch row with its count and
        // address (the simulator reads RIP in the memory hook, with no per-instruction hook),
        // and rows are in program order.
        let trace = file(&out, "trace", interval);
        let unattributed = count(&format!(
            "SELECT count(*) FROM \
                (SELECT icount, rip FROM read_parquet('{trace}') WHERE kind <> 'fetch') d \
             ANTI JOIN \
                (SELECT icount, rip FROM read_parquet('{trace}') WHERE kind = 'fetch') f \
             USING (icount, rip)"
        ));
        assert_eq!(
            unattributed, 0,
            "interval {interval}: data rows without their instruction"
        );
        let out_of_order = count(&format!(
            "SELECT count(*) FROM (SELECT icount::BIGINT \
                - lag(icount::BIGINT) OVER (ORDER BY file_row_number) AS step \
                FROM read_parquet('{trace}', file_row_number = true)) \
             WHERE step NOT IN (0, 1)"
        ));
        assert_eq!(
            out_of_order, 0,
            "interval {interval}: trace rows out of program order, or an instruction missing"
        );
        assert_eq!(
            a.trace_rows,
            Some(count(&format!(
                "SELECT count(*) FROM read_parquet('{}')",
                file(&out, "trace", interval)
            )))
        );
        assert_eq!(a.trace_dropped, Some(0));

        // The cache model saw every data access: its L1 lookups are the 64-byte lines the
        // trace's reads and writes span (an access crossing a line looks up both).
        let lines = count(&format!(
            "SELECT sum((paddr + size - 1) // 64 - paddr // 64 + 1) FROM read_parquet('{}') \
             WHERE kind <> 'fetch'",
            file(&out, "trace", interval)
        ));
        let lookups = count(&format!(
            "SELECT sum(hits + misses) FROM read_parquet('{}') WHERE level = 1",
            file(&out, "cache", interval)
        ));
        assert_eq!(
            lookups, lines,
            "interval {interval}: cache lookups vs trace"
        );
        assert!(
            a.cache_l1_miss_rate.is_some_and(|r| r > 0.0 && r < 1.0),
            "{a:?}"
        );

        // The blocks add up to the instruction count.
        let block_instructions = count(&format!(
            "SELECT sum(instructions) FROM read_parquet('{}')",
            file(&out, "blocks", interval)
        ));
        assert_eq!(block_instructions, instructions, "interval {interval}");
        assert!(a.warning.is_none(), "the run's guest.elf symbolises: {a:?}");
    }
    assert!(checked_steps >= 300, "{checked_steps} steps checked");

    // The same interval analysed again, alone: identical Parquet files.
    let again = tmp.path().join("again");
    replay(
        &run_dir,
        &[
            "--interval",
            "1",
            "--engine",
            "sim",
            "--analysis",
            "all",
            "--out",
            &again.display().to_string(),
        ],
    )
    .expect_code(0);
    for name in ANALYSES {
        let a = fs::read(file(&out, name, 1)).expect("first file");
        let b = fs::read(file(&again, name, 1)).expect("second file");
        assert!(a == b, "{name}: the same interval analysed twice differs");
    }
}

/// The hottest guest functions of an interval (docs/ANALYSES.md's hot-functions query) are the
/// ones the workload's code does its work in.
/// Returns (function, share of the interval's instructions), hottest first, at most five.
fn hot_functions(workload: &str, extra: &[&str], interval: u64) -> Vec<(String, f64)> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let run_dir = tmp.path().join("run");
    record_workload(&run_dir, workload, SMALL_MEM, extra);
    let out = tmp.path().join("out");
    replay(
        &run_dir,
        &[
            "--interval",
            &interval.to_string(),
            "--engine",
            "sim",
            "--analysis",
            "blocks",
            "--out",
            &out.display().to_string(),
        ],
    )
    .expect_code(0);
    duckdb_rows(&format!(
        "SELECT function, sum(instructions) / sum(sum(instructions)) OVER () AS share \
         FROM read_parquet('{}') GROUP BY function ORDER BY share DESC LIMIT 5",
        file(&out, "blocks", interval)
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().expect("a share")))
    .collect()
}

/// In its steady state `kvstore` draws a key (Zipf, by table lookup), probes the hash table
/// and reads or rewrites the value: `ops`, `Zipf::sample`, `Table::find` and `Table::write`,
/// all inlined into `kvstore::run`, which does nearly all of the work; the rest is the
/// `yield_now` between batches. (The `f64` arithmetic that builds the Zipf table runs only in
/// the first interval.)
#[test]
fn kvstore_spends_its_time_in_its_operations() {
    if !kvm_and_root_available() {
        return;
    }
    let top = hot_functions("kvstore", &["--work", "4", "--interval-exits", "2"], 2);
    assert_eq!(top[0].0, "simuboost_workloads::kvstore::run", "{top:?}");
    assert!(top[0].1 > 0.9, "{top:?}");
    assert!(top[1].0.ends_with("yield_now"), "{top:?}");
}

/// `compress` deflates blocks (miniz_oxide's `compress_inner`) and checks each by inflating it
/// and comparing its Adler-32.
#[test]
fn compress_spends_its_time_deflating() {
    if !kvm_and_root_available() {
        return;
    }
    let top = hot_functions("compress", &["--work", "12", "--interval-exits", "40"], 2);
    assert_eq!(
        top[0].0, "miniz_oxide::deflate::core::compress_inner",
        "{top:?}"
    );
    assert!(top[0].1 > 0.5, "{top:?}");
    // The guest is built by nightly, whose symbols are v0-mangled: an inherent method
    // demangles as `<Type>::method`.
    for f in [
        "miniz_oxide::inflate::core::decompress_fast",
        "<adler2::Adler32>::write_slice",
    ] {
        assert!(top.iter().any(|t| t.0 == f), "{f} in {top:?}");
    }
}

/// Bad uses: analyses need the simulator; the output never goes into the run; unknown names
/// and cache geometries are usage errors; `--trace-limit` bounds the trace and counts the rest.
#[test]
fn analysis_options_are_checked_and_the_trace_limit_holds() {
    if !kvm_and_root_available() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let run_dir = tmp.path().join("run");
    record_workload(
        &run_dir,
        "pattern",
        SMALL_MEM,
        &["--work", "200", "--interval-exits", "100"],
    );
    let out = tmp.path().join("out").display().to_string();
    let usage = [
        vec!["--interval", "0", "--analysis", "pages", "--out", &out],
        vec![
            "--interval",
            "0",
            "--engine",
            "sim",
            "--analysis",
            "../hot",
            "--out",
            &out,
        ],
        vec!["--interval", "0", "--engine", "sim", "--analysis", "pages"],
        vec![
            "--interval",
            "0",
            "--engine",
            "sim",
            "--analysis",
            "cache",
            "--cache",
            "32K:3:64",
            "--out",
            &out,
        ],
        vec![
            "--interval",
            "0",
            "--engine",
            "sim",
            "--analysis",
            "pages",
            "--trace-limit",
            "5",
            "--out",
            &out,
        ],
    ];
    for args in &usage {
        let r = replay(&run_dir, args);
        r.expect_code(2);
        assert!(r.stderr.contains("error:"), "{args:?}: {}", r.stderr);
    }
    // An output inside the run is refused before anything is created, for --out and for the
    // Slurm executor's directory (refused before anything is submitted, so no cluster is
    // needed), named directly and through a symbolic link to the run.
    let link = run_dir.with_extension("link");
    std::os::unix::fs::symlink(&run_dir, &link).expect("symlink to the run");
    for (inside, name) in [(&run_dir, "analyses"), (&link, "results")] {
        let inside = inside.join(name).display().to_string();
        for args in [
            &[
                "--interval",
                "0",
                "--engine",
                "sim",
                "--analysis",
                "pages",
                "--out",
                &inside,
            ][..],
            &["--all", "--executor", "slurm", "--slurm-dir", &inside][..],
        ] {
            let r = replay(&run_dir, args);
            r.expect_code(1);
            assert!(
                r.stderr.contains("inside the run"),
                "{args:?}: {}",
                r.stderr
            );
            assert!(
                !run_dir.join(name).exists(),
                "{args:?}: nothing was written into the run"
            );
        }
    }

    let limited = replay(
        &run_dir,
        &[
            "--interval",
            "1",
            "--engine",
            "sim",
            "--analysis",
            "trace,pages",
            "--trace-limit",
            "1000",
            "--out",
            &out,
            "--json",
        ],
    );
    limited.expect_code(0);
    let report = &replay_reports(&limited)[0];
    let a = analysis(report);
    assert_eq!(a.trace_rows, Some(1000), "{a:?}");
    let all_accesses = count(&format!(
        "SELECT sum(reads + writes + fetches) FROM read_parquet('{}')",
        file(Path::new(&out), "pages", 1)
    ));
    assert_eq!(a.trace_dropped, Some(all_accesses - 1000), "{a:?}");
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM read_parquet('{}')",
            file(Path::new(&out), "trace", 1)
        )),
        1000
    );

    // An analysis added to the simulator by name (docs/ANALYSES.md's worked example, `sizes`):
    // its rows count every data access once, as `pages` does.
    let custom_out = tmp.path().join("custom").display().to_string();
    replay(
        &run_dir,
        &[
            "--interval",
            "1",
            "--engine",
            "sim",
            "--analysis",
            "pages,sizes",
            "--out",
            &custom_out,
        ],
    )
    .expect_code(0);
    let by_size = count(&format!(
        "SELECT sum(value) FROM read_parquet('{}')",
        file(Path::new(&custom_out), "sizes", 1)
    ));
    let data_accesses = count(&format!(
        "SELECT sum(reads + writes) FROM read_parquet('{}')",
        file(Path::new(&custom_out), "pages", 1)
    ));
    assert_eq!(by_size, data_accesses);
    let unknown = replay(
        &run_dir,
        &[
            "--interval",
            "1",
            "--engine",
            "sim",
            "--analysis",
            "nosuch",
            "--out",
            &custom_out,
        ],
    );
    unknown.expect_code(1);
    assert!(
        unknown.stderr.contains("no analysis named \"nosuch\""),
        "{}",
        unknown.stderr
    );
}
