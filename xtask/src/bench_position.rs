//! `cargo xtask bench restore-position`: restore time of interval 1 vs the last full interval
//! of a long run (issue #15), with the working set's pages found three ways, side by side
//! (`simuboost-replay --page-lookup`): from the access log's start pages (what a sparse restore
//! does), from the page map read in part, and from the whole page map (the first baseline).
//!
//! The late/early ratio of the restore time is reported with its parts: reading the tables
//! (state, events, access log, page map), and loading the working set (which grows with the
//! working set's non-zero pages: each needs a read, a hash and a fresh guest page, while a
//! zero page is one cheap `UFFDIO_ZEROPAGE`). Bytes read from the tables are the storage's
//! bytes minus those of pages.bin.
//!
//! Over all of a 256 MiB guest, `pattern`'s late intervals load more data than its first: its
//! arena starts zero and fills up, so the same number of frames holds ~5× the non-zero pages.
//! A second run on a 4 MiB arena (`--arena 4M`), which is full after ~12 intervals, compares an
//! early and a late interval that load the same data: what is left is what grows with the run.

use std::path::Path;

use anyhow::{ensure, Result};
use serde_json::json;

use simuboost_report::replay::ReplayReport;

use crate::bench_replay::{median, record, replay, scratch};

/// Repetitions per interval and variant, alternating.
const REPEATS: usize = 7;
/// Exits per interval: many short intervals, so the run is long.
const EXITS: &str = "25";

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({lo:.1}–{hi:.1})", median(v.to_vec()))
}

/// The two comparisons: a label, the recording's extra flags, the early interval.
const RUNS: [(&str, &[&str], u64); 2] = [
    ("whole arena (fills up during the run)", &[], 1),
    (
        "4 MiB arena (full from ~interval 12 on)",
        &["--arena", "4M"],
        12,
    ),
];

pub fn run(json_out: Option<&Path>) -> Result<()> {
    let mut results = Vec::new();
    for (label, extra, early) in RUNS {
        results.push(measure(label, extra, early)?);
    }
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

/// Records `pattern` (plus `extra`) and compares the sparse restore of interval `early` with
/// the last full interval's.
fn measure(label: &str, extra: &[&str], early: u64) -> Result<serde_json::Value> {
    let scratch = scratch()?;
    let mut args = vec![
        "--workload",
        "pattern",
        "--mem",
        "256M",
        "--work",
        "6000",
        "--interval-exits",
        EXITS,
    ];
    args.extend_from_slice(extra);
    let rec = record(&scratch.join("position-pattern"), &args)?;
    ensure!(
        rec.intervals() >= 200,
        "the run has only {} intervals (200 needed)",
        rec.intervals()
    );
    // The last interval ends at the guest's exit, a short tail; the one before is full length.
    let late = rec.intervals() - 2;
    let picks = [early, late];
    let variants: [(&str, &[&str]); 3] = [
        ("log", &[]),
        ("partial", &["--page-lookup", "partial"]),
        ("whole", &["--page-lookup", "whole"]),
    ];
    let mut samples: Vec<Vec<ReplayReport>> = vec![Vec::new(); picks.len() * variants.len()];
    for _ in 0..REPEATS {
        for (p, interval) in picks.iter().enumerate() {
            for (v, (_, extra)) in variants.iter().enumerate() {
                let interval = interval.to_string();
                let mut args = vec!["--interval", &interval, "--mode", "sparse"];
                args.extend_from_slice(extra);
                let (rows, _) = replay(&rec.dir, &args)?;
                samples[p * variants.len() + v].extend(rows);
            }
        }
    }
    println!(
        "\n## Restore time early vs late in a long run: {label} (pattern, 256 MiB, {} intervals of {EXITS} exits, sparse, median (min–max) of {REPEATS}, alternating)\n",
        rec.intervals()
    );
    println!("| interval | page map | working set (non-zero) | restore ms | read tables ms | load ms | table bytes read | pages.bin bytes read |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut medians = std::collections::HashMap::new();
    for (p, interval) in picks.iter().enumerate() {
        for (v, (name, _)) in variants.iter().enumerate() {
            let s = &samples[p * variants.len() + v];
            let restore: Vec<f64> = s.iter().map(|r| r.restore_ms).collect();
            let read: Vec<f64> = s.iter().map(|r| r.read_ms).collect();
            let load: Vec<f64> = s.iter().map(|r| r.load_ms).collect();
            let tables = s[0]
                .bytes_fetched
                .saturating_sub(s[0].page_store_bytes_read);
            let nonzero = s[0].pages_loaded - s[0].zero_pages_loaded;
            println!(
                "| {interval} | {name} | {} ({nonzero}) | {} | {} | {} | {tables} | {} |",
                s[0].working_set_pages,
                spread(&restore),
                spread(&read),
                spread(&load),
                s[0].page_store_bytes_read
            );
            let m = (median(restore), median(read), median(load));
            medians.insert((p, v), m);
            rows.push(json!({"interval": interval, "page_map": name,
                "working_set_pages": s[0].working_set_pages, "nonzero_pages": nonzero,
                "restore_ms": m.0, "read_ms": m.1, "load_ms": m.2, "table_bytes": tables,
                "page_store_bytes": s[0].page_store_bytes_read, "replays": s}));
        }
    }
    let mut ratios = serde_json::Map::new();
    println!();
    for (v, (name, _)) in variants.iter().enumerate() {
        let (e, l) = (medians[&(0, v)], medians[&(1, v)]);
        let (restore, read, load) = (l.0 / e.0, l.1 / e.1, l.2 / e.2);
        println!(
            "page map {name}: interval {late} / interval {early}: restore {restore:.2}x (target <= 1.2x: {}), read tables {read:.2}x, load {load:.2}x",
            if restore <= 1.2 { "met" } else { "not met" }
        );
        ratios.insert(
            (*name).to_string(),
            json!({"restore": restore, "read": read, "load": load}),
        );
    }
    let result = json!({"run": label, "intervals": rec.intervals(), "early": early,
        "late": late, "rows": rows, "ratios": ratios, "target": 1.2,
        "recording": rec.summary.recording});
    rec.remove()?;
    Ok(result)
}
