//! Runs in object storage, against a real S3-compatible server (moto_server on 127.0.0.1):
//! a run uploaded with `simuboost-daemon upload`, or as a plain copy of its directory, replays
//! from `s3://bucket/prefix` and verifies exactly like the local run in every mode, fetching
//! far less for a sparse replay than for a full one; `run --upload` uploads while recording and
//! `--follow` replays the remote copy as it grows; bad locations and damaged objects are clear
//! errors.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use std::sync::Arc;

use simuboost_format::{
    CheckpointInput, CheckpointPages, CheckpointState, IntervalRecord, ObjectStorage, PagesLayout,
    Run, RunMeta, RunWriter, Uploader, PAGE_SIZE,
};
use simuboost_report::replay::ReplayReport;
use simuboost_tests::s3::S3Server;
use simuboost_tests::{
    binary, daemon, kvm_and_root_available, record_workload, replay_reports, Finished,
};

const BUCKET: &str = "simuboost-runs";

/// A moto_server on 127.0.0.1 holding the tests' bucket, or `None` (a visible skip) without
/// moto.
fn server_with_bucket() -> Option<S3Server> {
    let server = S3Server::start()?;
    server.create_bucket(BUCKET);
    Some(server)
}

/// `simuboost-replay --run LOCATION ARGS` against `server`.
fn replay_from(server: &S3Server, location: &str, args: &[&str]) -> Finished {
    Finished::of(
        server
            .env(&mut Command::new(binary("simuboost-replay")))
            .arg("--run")
            .arg(location)
            .args(args),
    )
}

/// Every interval of `location` in `mode`, each verified; by interval.
fn replay_all(
    server: &S3Server,
    location: &str,
    mode: &str,
    intervals: u64,
) -> BTreeMap<u64, ReplayReport> {
    let out = replay_from(
        server,
        location,
        &["--all", "--jobs", "2", "--mode", mode, "--json"],
    );
    out.expect_code(0);
    let reports: BTreeMap<u64, ReplayReport> = replay_reports(&out)
        .into_iter()
        .map(|r| (r.interval, r))
        .collect();
    assert_eq!(
        reports.keys().copied().collect::<Vec<_>>(),
        (0..intervals).collect::<Vec<_>>(),
        "{mode}: every interval once"
    );
    for (i, r) in &reports {
        assert!(r.verified && r.divergence.is_none(), "{mode} {i}: {r:?}");
        assert!(r.requests > 0 && r.bytes_fetched > 0, "{mode} {i}: {r:?}");
        // Every byte loaded up front was read from the page store, plus coalesced gaps,
        // misses and verification reads.
        assert!(
            r.page_store_bytes_read >= r.bytes_loaded,
            "{mode} {i}: {r:?}"
        );
        assert!(
            r.bytes_fetched >= r.page_store_bytes_read,
            "{mode} {i}: {r:?}"
        );
    }
    reports
}

fn upload(server: &S3Server, run: &Path, to: &str) -> Finished {
    Finished::of(server.env(&mut daemon()).arg("upload").arg(run).arg(to))
}

/// A recorded run, uploaded with `simuboost-daemon upload` and as a plain copy, replays from
/// S3 in all three modes with the same pages loaded as locally, and a sparse replay fetches a
/// fraction of what a full one does.
#[test]
fn uploaded_runs_replay_from_s3_in_all_modes() {
    if !kvm_and_root_available() {
        return;
    }
    let Some(server) = server_with_bucket() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record_workload(
        &run,
        "build",
        "128M",
        &["--duration", "1500ms", "--interval", "300ms"],
    );
    let intervals = Run::open(&run).expect("run opens").interval_count();
    assert!(intervals >= 2, "too few intervals: {intervals}");

    let location = format!("s3://{BUCKET}/runs/build");
    upload(&server, &run, &location).expect_code(0);
    let objects = server.list(BUCKET, "runs/build/");
    let names: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"runs/build/manifest.json"), "{names:?}");
    assert!(names.contains(&"runs/build/pages.bin"), "{names:?}");
    assert!(names.contains(&"runs/build/guest.elf"), "{names:?}");

    let local = {
        let out = Finished::of(
            Command::new(binary("simuboost-replay"))
                .arg("--run")
                .arg(&run)
                .args(["--all", "--jobs", "2", "--mode", "sparse", "--json"]),
        );
        out.expect_code(0);
        replay_reports(&out)
    };
    let sparse = replay_all(&server, &location, "sparse", intervals);
    let full = replay_all(&server, &location, "full", intervals);
    // Lazy mode from S3 fetches every non-zero page it touches with a GET of its own, and
    // moto_server rebuilds the whole object for each ranged GET: a whole run's lazy replays
    // took minutes on a loaded machine and timed out. One interval, with time to spare.
    let lazy: BTreeMap<u64, ReplayReport> = {
        let out = replay_from(
            &server,
            &location,
            &[
                "--interval",
                "0",
                "--mode",
                "lazy",
                "--timeout",
                "10m",
                "--json",
            ],
        );
        out.expect_code(0);
        replay_reports(&out)
            .into_iter()
            .map(|r| (r.interval, r))
            .collect()
    };
    assert!(lazy.values().all(|r| r.verified), "{lazy:?}");
    for l in &local {
        let s = &sparse[&l.interval];
        assert_eq!(s.pages_loaded, l.pages_loaded, "interval {}", l.interval);
        assert_eq!(s.bytes_loaded, l.bytes_loaded, "interval {}", l.interval);
    }
    let total = |m: &BTreeMap<u64, ReplayReport>| m.values().map(|r| r.bytes_fetched).sum::<u64>();
    assert!(
        total(&sparse) < total(&full),
        "sparse fetched {} bytes, full {}",
        total(&sparse),
        total(&full)
    );
    for (i, r) in &lazy {
        assert_eq!(r.bytes_loaded, 0, "lazy {i}");
        assert!(r.misses > 0 && r.page_store_requests > 0, "lazy {i}: {r:?}");
    }

    // A plain copy of the directory (every file, as `aws s3 cp --recursive` makes it).
    let plain = format!("s3://{BUCKET}/plain/build");
    server.upload_dir(&run, BUCKET, "plain/build");
    let last = (intervals - 1).to_string();
    let out = replay_from(
        &server,
        &plain,
        &["--interval", &last, "--mode", "sparse,full", "--json"],
    );
    out.expect_code(0);
    let reports = replay_reports(&out);
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.verified), "{reports:?}");
}

/// `run --upload` uploads each interval as it is committed (pages.bin as segments, the
/// manifest last); `--follow` replays the remote copy while it grows, and every interval
/// verifies.
#[test]
fn upload_while_recording_and_follow_from_s3() {
    if !kvm_and_root_available() {
        return;
    }
    let Some(server) = server_with_bucket() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    let location = format!("s3://{BUCKET}/live");
    let recorder = server
        .env(&mut daemon())
        .args([
            "run",
            "--workload",
            "kvstore",
            "--mem",
            "64M",
            "--interval",
            "300ms",
            "--duration",
            "3s",
            "--upload",
            &location,
        ])
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    let mut follow = server
        .env(&mut Command::new(binary("simuboost-replay")))
        .args([
            "--run", &location, "--all", "--follow", "--jobs", "2", "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the replay starts");
    let stdout = follow.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let recorded = recorder.wait_with_output().expect("the daemon ends");
    let recorder_err = String::from_utf8_lossy(&recorded.stderr);
    assert!(
        recorded.status.success(),
        "the daemon failed: {recorder_err}"
    );
    let out = follow.wait_with_output().expect("the replay ends");
    let lines = reader.join().expect("the reader");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{recorder_err}");

    let intervals = Run::open(&run).expect("run opens").interval_count();
    let mut seen: Vec<u64> = lines
        .iter()
        .map(|line| {
            let r: ReplayReport =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(r.verified, "{r:?}");
            r.interval
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..intervals).collect::<Vec<_>>(), "{stderr}");

    let objects = server.list(BUCKET, "live/");
    let names: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.contains(&"live/pages.bin.segments/000000"),
        "{names:?}"
    );
    assert!(names.contains(&"live/pages.bin.segments.json"), "{names:?}");
    assert!(!names.contains(&"live/pages.bin"), "{names:?}");
    // The remote manifest is the local one: finished, all checkpoints.
    let remote = server.boto3(&format!(
        "print(s3.get_object(Bucket={BUCKET:?}, Key='live/manifest.json')['Body'].read().decode())"
    ));
    let local = std::fs::read_to_string(run.join("manifest.json")).expect("manifest");
    assert_eq!(remote.trim(), local.trim());
}

/// Bad locations, an unreachable endpoint and a damaged remote pages.bin are clear errors with
/// exit status 1 (2 for a malformed URL), never a panic; a failed upload leaves the local run
/// as it was.
#[test]
fn s3_errors_are_clear() {
    let Some(server) = server_with_bucket() else {
        return;
    };
    let out = replay_from(
        &server,
        &format!("s3://{BUCKET}/nothing"),
        &["--interval", "0"],
    );
    out.expect_code(1);
    assert!(out.stderr.contains("not a simuboost run"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let out = replay_from(&server, "s3://ab/x", &["--interval", "0"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("at least 3 characters"),
        "{}",
        out.stderr
    );

    // Nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let out = Finished::of(
        server
            .env(&mut Command::new(binary("simuboost-replay")))
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .args(["--run", &format!("s3://{BUCKET}/x"), "--interval", "0"]),
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!("s3://{BUCKET}/x")),
        "{}",
        out.stderr
    );

    let out =
        Finished::of(
            server
                .env(&mut daemon())
                .args(["upload", "/nonexistent/run", "not-a-url"]),
        );
    out.expect_code(2);
}

/// A remote pages.bin cut short or altered is reported, naming the object; a failed upload
/// changes nothing locally.
#[test]
fn damaged_remote_runs_and_failed_uploads() {
    if !kvm_and_root_available() {
        return;
    }
    let Some(server) = server_with_bucket() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = tmp.path().join("run");
    record_workload(
        &run,
        "idle",
        "64M",
        &["--duration", "600ms", "--interval", "200ms"],
    );
    let location = format!("s3://{BUCKET}/damaged");
    upload(&server, &run, &location).expect_code(0);
    // Before the damage: the simulator engine restores from the remote run like KVM does.
    let out = replay_from(
        &server,
        &location,
        &["--interval", "1", "--engine", "sim", "--json"],
    );
    out.expect_code(0);
    let reports = replay_reports(&out);
    assert!(
        reports.len() == 1 && reports[0].verified && reports[0].bytes_fetched > 0,
        "{reports:?}"
    );
    let pages = std::fs::read(run.join("pages.bin")).expect("pages.bin");
    let mut flipped = pages.clone();
    for b in flipped.iter_mut() {
        *b ^= 0x5a;
    }
    server.put(BUCKET, "damaged/pages.bin", &flipped);
    let out = replay_from(&server, &location, &["--interval", "0", "--mode", "full"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!("{location}/pages.bin")) && out.stderr.contains("hash"),
        "{}",
        out.stderr
    );
    server.put(BUCKET, "damaged/pages.bin", &pages[..4096]);
    let out = replay_from(&server, &location, &["--interval", "0", "--mode", "full"]);
    out.expect_code(1);
    assert!(out.stderr.contains("pages.bin"), "{}", out.stderr);

    // A remote manifest that counts far more checkpoints than the run holds: refused after one
    // bounded listing, as locally, not looped over.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    manifest["checkpoints"] = serde_json::json!(1u64 << 50);
    server.put(
        BUCKET,
        "damaged/manifest.json",
        manifest.to_string().as_bytes(),
    );
    let out = replay_from(&server, &location, &["--all", "--jobs", "2"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!("{location}/manifest.json"))
            && out.stderr.contains("holds the state of only"),
        "{}",
        out.stderr
    );

    // No such bucket: the upload fails, reported, after retries; the run is untouched.
    let before = std::fs::read(run.join("manifest.json")).expect("manifest");
    let out = upload(&server, &run, "s3://no-such-bucket/x");
    out.expect_code(1);
    assert!(out.stderr.contains("no-such-bucket"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(run.join("manifest.json")).expect("manifest"),
        before
    );
    assert!(Run::open(&run).is_ok());
}

/// object_store's names for the server's settings.
fn config(server: &S3Server) -> [(&str, &str); 5] {
    [
        ("aws_endpoint", server.endpoint()),
        ("aws_access_key_id", "simuboost-test"),
        ("aws_secret_access_key", "simuboost-test"),
        ("aws_region", "us-east-1"),
        ("aws_allow_http", "true"),
    ]
}

/// A page whose contents name `n`.
fn page(n: u64) -> Vec<u8> {
    (0..PAGE_SIZE / 8)
        .flat_map(|i| (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes())
        .collect()
}

/// A synthetic run (no KVM needed) big enough for pages.bin to span two segments, uploaded
/// after every checkpoint as `run --upload` does and once more as a plain copy: every remote
/// copy reconstructs every checkpoint's memory exactly as the local run does; bulk reads are
/// coalesced into the ranged GETs the policy says, split at segment boundaries.
#[test]
fn synthetic_runs_upload_incrementally_and_read_back() {
    let Some(server) = server_with_bucket() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("run");
    let mem_pages = 8192u64;
    let meta = RunMeta {
        workload: "synthetic".into(),
        mem_bytes: mem_pages * PAGE_SIZE as u64,
        seed: 1,
        interval_ns: 1_000_000,
        dirty_tracking: "model".into(),
        tracer: "none".into(),
        created_unix_ms: 0,
        guest_image_xxh3: "0".into(),
        disk_image: None,
        cpuid: Vec::new(),
    };
    let mut writer = RunWriter::create(&dir, meta).expect("create");
    let seg_location = format!("s3://{BUCKET}/synthetic/seg");
    let remote = || ObjectStorage::open_with(&seg_location, &config(&server)).expect("storage");
    let mut uploader = Uploader::with_storage(&dir, remote(), PagesLayout::Segments);
    let mut no_retries = |e: &simuboost_format::FormatError| panic!("upload retried: {e}");
    // Checkpoint 0: 6000 distinct pages (24 MB: more than one 16 MiB segment).
    let gfns: Vec<u64> = (0..6000).collect();
    let contents: Vec<u8> = gfns.iter().flat_map(|&g| page(g + 1)).collect();
    let state = CheckpointState {
        checkpoint: 0,
        ..Default::default()
    };
    writer
        .write_checkpoint(CheckpointInput::new(
            &state,
            CheckpointPages {
                gfns: &gfns,
                contents: &contents,
            },
        ))
        .expect("checkpoint 0");
    uploader.sync(&mut no_retries).expect("sync 0");
    assert_eq!(
        Run::open_in(Arc::new(remote()))
            .expect("remote")
            .checkpoints(),
        1
    );
    for c in 1..4u64 {
        let gfns: Vec<u64> = (0..300)
            .map(|k| (k * 7 + c * 13) % mem_pages)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let contents: Vec<u8> = gfns.iter().flat_map(|&g| page(g * 1000 + c)).collect();
        let state = CheckpointState {
            checkpoint: c,
            exit: c,
            ..Default::default()
        };
        let mut input = CheckpointInput::new(
            &state,
            CheckpointPages {
                gfns: &gfns,
                contents: &contents,
            },
        );
        input.interval = Some(IntervalRecord {
            interval: c - 1,
            start_exit: c - 1,
            end_exit: c,
            complete: true,
            ..Default::default()
        });
        writer.write_checkpoint(input).expect("checkpoint");
        uploader.sync(&mut no_retries).expect("sync");
    }
    writer.finish(Some(0), "done").expect("finish");
    uploader.sync(&mut no_retries).expect("final sync");

    let plain_location = format!("s3://{BUCKET}/synthetic/plain");
    let mut plain = Uploader::with_storage(
        &dir,
        ObjectStorage::open_with(&plain_location, &config(&server)).expect("storage"),
        PagesLayout::Plain,
    );
    plain.sync(&mut no_retries).expect("plain upload");

    let local = Run::open(&dir).expect("local run");
    let mem = local.manifest().meta.mem_bytes as usize;
    let (mut want, mut got) = (vec![0u8; mem], vec![0u8; mem]);
    for location in [&seg_location, &plain_location] {
        let run = Run::open_in(Arc::new(
            ObjectStorage::open_with(location, &config(&server)).expect("storage"),
        ))
        .expect("remote run");
        assert_eq!(run.manifest(), local.manifest(), "{location}");
        for c in 0..local.checkpoints() {
            local
                .reconstruct_memory(c, &mut want)
                .expect("local memory");
            run.reconstruct_memory(c, &mut got).expect("remote memory");
            assert!(want == got, "{location}: checkpoint {c} differs");
        }
        // Coalescing: slots 0..=2 and 10 are one range (a gap of 7 pages), 4095 and 4096 one
        // more, which the segmented copy splits at its segment boundary; 5000 is alone.
        let store = run.page_store().expect("page store");
        let slots = [10u64, 0, 1, 2, 4096, 5000, 4095];
        let mut out = vec![0u8; slots.len() * PAGE_SIZE];
        store.read_pages(&slots, &mut out).expect("read");
        let local_store = local.page_store().expect("local store");
        let mut expected = vec![0u8; PAGE_SIZE];
        for (i, &slot) in slots.iter().enumerate() {
            local_store
                .read_page(slot, &mut expected)
                .expect("local page");
            assert!(
                out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == expected[..],
                "slot {slot}"
            );
        }
        let stats = store.stats();
        assert_eq!(stats.bytes, (11 + 2 + 1) * PAGE_SIZE as u64, "{location}");
        let before = run.storage_stats();
        store
            .read_pages(&[4095, 4096], &mut vec![0u8; 2 * PAGE_SIZE])
            .expect("read");
        let requests = run.storage_stats().since(before).requests;
        let segmented = location == &seg_location;
        assert_eq!(requests, if segmented { 2 } else { 1 }, "{location}");
    }
    let objects = server.list(BUCKET, "synthetic/seg/pages.bin.segments/");
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(objects[0].1, 16 << 20);
}
