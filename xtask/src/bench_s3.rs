//! `cargo xtask bench s3`: what a replay fetches from object storage.
//!
//! A `build` run (1 GiB guest, 1 s intervals) is recorded, uploaded with `simuboost-daemon
//! upload` to a moto_server on 127.0.0.1 (started here, as the tests do), and the same
//! intervals (the last [`INTERVALS`] before the final one, which is a short tail) are replayed
//! locally in sparse, full and lazy mode, and from `s3://` in sparse and full mode. Per mode,
//! the median over those intervals of: bytes loaded up front, bytes read from the page store and
//! requests (local: `pread`s; S3: ranged GETs), bytes fetched in all (tables too), restore time.
//! Target: a sparse replay fetches at least 10x fewer bytes than a full one. Every replay must
//! verify.
//!
//! moto builds the whole object for every ranged GET and slices it, so each request to it costs
//! time in proportion to pages.bin: its times say nothing about S3, and a lazy replay (one GET
//! per non-zero miss) would take very long.
//! A lazy replay's page-store reads are single pages, the same requests remotely as locally, so
//! its row reports the local replay; bytes and requests are what this benchmark is about.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use simuboost_report::replay::ReplayReport;
use simuboost_tests::s3::S3Server;

use crate::bench_record::{record_run, tail};
use crate::bench_replay::median;
use crate::{binary, root};

const RECORD: &[&str] = &[
    "--workload",
    "build",
    "--mem",
    "1G",
    "--duration",
    "5s",
    "--interval",
    "1s",
    "--seed",
    "1",
];
/// Intervals replayed per mode.
const INTERVALS: u64 = 2;
const BUCKET: &str = "simuboost-bench";
const MODES: [&str; 3] = ["sparse", "full", "lazy"];
/// Modes replayed from S3 too (see the module documentation for lazy).
const REMOTE_MODES: usize = 2;

fn replay_one(cmd: &mut Command, what: &str) -> Result<ReplayReport> {
    let out = cmd
        .arg("--json")
        .output()
        .context("cannot run simuboost-replay")?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, tail(&out.stderr));
    }
    let report: ReplayReport =
        serde_json::from_slice(&out.stdout).with_context(|| format!("{what}: not a report"))?;
    ensure!(report.verified, "{what}: the replay did not verify");
    Ok(report)
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

/// Medians of one mode's replays.
struct Row {
    loaded: f64,
    pages_read: f64,
    page_requests: f64,
    fetched: f64,
    requests: f64,
    restore_ms: f64,
    misses: f64,
}

fn row(reports: &[ReplayReport]) -> Row {
    let m = |f: &dyn Fn(&ReplayReport) -> f64| median(reports.iter().map(f).collect());
    Row {
        loaded: m(&|r| r.bytes_loaded as f64),
        pages_read: m(&|r| r.page_store_bytes_read as f64),
        page_requests: m(&|r| r.page_store_requests as f64),
        fetched: m(&|r| r.bytes_fetched as f64),
        requests: m(&|r| r.requests as f64),
        restore_ms: m(&|r| r.restore_ms),
        misses: m(&|r| r.misses as f64),
    }
}

pub fn run(json_out: Option<&Path>) -> Result<()> {
    let scratch = root().join("target").join("bench").join("s3");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let Some(server) = S3Server::start() else {
        bail!("moto_server is not installed: run `cargo xtask setup`");
    };
    server.create_bucket(BUCKET);
    let run = scratch.join("run");
    eprintln!("bench s3: recording {}", RECORD.join(" "));
    record_run(&run, RECORD)?;
    let location = format!("s3://{BUCKET}/build");
    let out = server
        .env(&mut Command::new(binary("simuboost-daemon", true)))
        .arg("upload")
        .arg(&run)
        .arg(&location)
        .output()
        .context("cannot run simuboost-daemon upload")?;
    ensure!(out.status.success(), "upload failed: {}", tail(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(run.join("manifest.json"))?)?;
    let intervals = manifest["checkpoints"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(1);
    ensure!(
        intervals > INTERVALS,
        "the run has only {intervals} intervals"
    );
    let chosen: Vec<u64> = (intervals - 1 - INTERVALS..intervals - 1).collect();
    let exe = binary("simuboost-replay", true);
    let mut remote: Vec<Vec<ReplayReport>> = vec![Vec::new(); MODES.len()];
    let mut local: Vec<Vec<ReplayReport>> = vec![Vec::new(); MODES.len()];
    for &interval in &chosen {
        for (m, mode) in MODES.iter().enumerate() {
            let i = interval.to_string();
            let args = ["--interval", i.as_str(), "--mode", mode];
            let local_report = replay_one(
                Command::new(&exe).arg("--run").arg(&run).args(args),
                &format!("{mode} replay of interval {interval}"),
            )?;
            if m >= REMOTE_MODES {
                remote[m].push(local_report.clone());
                local[m].push(local_report);
                eprintln!("bench s3:   interval {interval} {mode}: done (local)");
                continue;
            }
            local[m].push(local_report);
            remote[m].push(replay_one(
                server
                    .env(&mut Command::new(&exe))
                    .args(["--run", &location])
                    .args(args),
                &format!("{mode} replay of interval {interval} from S3"),
            )?);
            eprintln!("bench s3:   interval {interval} {mode}: done");
        }
    }
    let remote: Vec<Row> = remote.iter().map(Vec::as_slice).map(row).collect();
    let local: Vec<Row> = local.iter().map(Vec::as_slice).map(row).collect();
    println!(
        "### Replaying from object storage ({}, intervals {}..={}, median; moto_server on \
         127.0.0.1)\n",
        RECORD.join(" "),
        chosen[0],
        chosen[chosen.len() - 1]
    );
    println!(
        "| mode | MiB loaded | misses | local: MiB read from pages.bin / preads | S3: MiB of \
         pages.bin / ranged GETs | S3: MiB fetched in all / requests | restore ms local / S3 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (m, mode) in MODES.iter().enumerate() {
        let (l, r) = (&local[m], &remote[m]);
        let mode = if m >= REMOTE_MODES {
            format!("{mode} (local figures)")
        } else {
            mode.to_string()
        };
        println!(
            "| {mode} | {:.1} | {:.0} | {:.1} / {:.0} | {:.1} / {:.0} | {:.1} / {:.0} | {:.0} / {:.0} |",
            mib(r.loaded),
            r.misses,
            mib(l.pages_read),
            l.page_requests,
            mib(r.pages_read),
            r.page_requests,
            mib(r.fetched),
            r.requests,
            l.restore_ms,
            r.restore_ms
        );
    }
    let ratio = remote[1].fetched / remote[0].fetched.max(1.0);
    println!(
        "\nfull / sparse bytes fetched from S3: {ratio:.1}x (target >= 10x: {})",
        if ratio >= 10.0 { "met" } else { "not met" }
    );
    if let Some(path) = json_out {
        let rows: Vec<serde_json::Value> = MODES
            .iter()
            .enumerate()
            .map(|(m, mode)| {
                json!({
                    "mode": mode,
                    "bytes_loaded": remote[m].loaded,
                    "misses": remote[m].misses,
                    "local_page_store_bytes_read": local[m].pages_read,
                    "local_page_store_requests": local[m].page_requests,
                    "s3_page_store_bytes_read": remote[m].pages_read,
                    "s3_page_store_requests": remote[m].page_requests,
                    "s3_bytes_fetched": remote[m].fetched,
                    "s3_requests": remote[m].requests,
                    "local_restore_ms": local[m].restore_ms,
                    "s3_restore_ms": remote[m].restore_ms,
                })
            })
            .collect();
        let value =
            json!({ "intervals": chosen, "modes": rows, "full_over_sparse_fetched": ratio });
        fs::write(path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(server);
    Ok(())
}
