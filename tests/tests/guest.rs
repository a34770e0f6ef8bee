//! End-to-end tests of the foundation: the real guest in a real KVM VM, every workload, the
//! daemon's command line, and its answers to bad input.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use simuboost_tests::{binary, daemon, kvm_and_root_available, summary, Finished};

/// Guest memory for the workload tests: small, so that they are quick.
const SMALL_MEM: &str = "64M";
/// Exit codes of simuboost-daemon.
const EXIT_ERROR: i32 = 1;
const EXIT_GUEST_CRASH: i32 = 3;

fn run_workload(workload: &str, work: u64, seed: u64, out: &Path) -> Finished {
    Finished::of(
        daemon()
            .args(["run", "--workload", workload, "--mem", SMALL_MEM])
            .args(["--work", &work.to_string(), "--seed", &seed.to_string()])
            .arg("--out")
            .arg(out),
    )
}

/// Boots `workload` for `work` units and checks the exit status and the result line.
fn check_workload(workload: &str, work: u64) {
    if !kvm_and_root_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let run = run_workload(workload, work, 7, dir.path());
    run.expect_code(0);
    assert!(
        run.stdout
            .contains(&format!("guest: workload {workload} on ")),
        "no start line in the console:\n{}",
        run.stdout
    );
    let (units, checksum) = run
        .result_line()
        .unwrap_or_else(|| panic!("no result line in the console:\n{}", run.stdout));
    assert_eq!(units, work, "{workload} did a different amount of work");
    assert!(checksum.starts_with("0x"), "odd checksum {checksum}");
    let summary = summary(dir.path());
    assert_eq!(summary.exit_status, Some(0));
    assert!(
        summary.guest_exits >= work,
        "every unit of work yields at least once: {summary:?}"
    );
}

#[test]
fn kvstore_runs_in_kvm() {
    check_workload("kvstore", 20);
}

#[test]
fn build_runs_in_kvm() {
    check_workload("build", 20);
}

#[test]
fn compress_runs_in_kvm() {
    check_workload("compress", 10);
}

#[test]
fn sort_runs_in_kvm() {
    check_workload("sort", 5);
}

#[test]
fn stream_runs_in_kvm() {
    check_workload("stream", 50);
}

#[test]
fn idle_runs_in_kvm() {
    check_workload("idle", 50);
}

#[test]
fn pattern_runs_in_kvm() {
    check_workload("pattern", 200);
}

#[test]
fn same_seed_gives_same_checksum_and_another_seed_another() {
    if !kvm_and_root_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let checksum = |seed: u64, name: &str| {
        let run = run_workload("kvstore", 10, seed, &dir.path().join(name));
        run.expect_code(0);
        run.result_line().expect("result line").1
    };
    let first = checksum(11, "a");
    assert_eq!(first, checksum(11, "b"), "same seed, different result");
    assert_ne!(first, checksum(12, "c"), "different seeds, same result");
}

#[test]
fn duration_stops_the_guest() {
    if !kvm_and_root_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let run = Finished::of(
        daemon()
            .args([
                "run",
                "--workload",
                "build",
                "--mem",
                SMALL_MEM,
                "--duration",
                "1s",
            ])
            .arg("--out")
            .arg(dir.path()),
    );
    run.expect_code(0);
    assert!(
        run.result_line().is_some(),
        "no result line:\n{}",
        run.stdout
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "a 1 s run took {:?}",
        start.elapsed()
    );
}

#[test]
fn sigint_stops_the_guest_cleanly() {
    if !kvm_and_root_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let child = daemon()
        .args([
            "run",
            "--workload",
            "kvstore",
            "--mem",
            SMALL_MEM,
            "--duration",
            "10min",
        ])
        .arg("--out")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("daemon starts");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0, "kill failed");
    let run: Finished = child.wait_with_output().expect("daemon exits").into();
    run.expect_code(0);
    assert!(
        run.result_line().is_some(),
        "no result line:\n{}",
        run.stdout
    );
}

#[test]
fn workloads_lists_every_workload() {
    let run = Finished::of(daemon().arg("workloads"));
    run.expect_code(0);
    for name in simuboost_abi::WorkloadId::ALL.map(|w| w.name()) {
        assert!(
            run.stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        run.stdout.lines().count(),
        simuboost_abi::WorkloadId::ALL.len()
    );
}

/// Runs the daemon with `args` and expects a clean error mentioning `needle`.
fn expect_error(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = Finished::of(daemon().arg("run").args(args).arg("--out").arg(dir.path()));
    run.expect_code(EXIT_ERROR);
    assert!(
        run.stderr.contains(needle),
        "expected `{needle}` in the error, got:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "panic:\n{}", run.stderr);
}

/// Runs the daemon with `args` and expects a usage error (exit 2) mentioning `needle`.
fn expect_usage_error(args: &[&str], needle: &str) {
    let run = Finished::of(daemon().arg("run").args(args));
    run.expect_code(2);
    assert!(
        run.stderr.contains(needle),
        "expected `{needle}` in the error, got:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "panic:\n{}", run.stderr);
}

#[test]
fn unknown_workload_lists_the_valid_ones() {
    expect_usage_error(
        &["--workload", "nosuch"],
        "unknown workload `nosuch`; valid workloads: kvstore, build, compress, sort, stream, idle, pattern",
    );
}

#[test]
fn memory_too_small_for_the_workload() {
    if !kvm_and_root_available() {
        return;
    }
    expect_usage_error(&["--workload", "kvstore", "--mem", "16M"], "needs at least");
}

/// An arena limit inside the guest but above its free memory (the command line's checks are
/// in harden.rs): the VMM's exact check, an error naming the limit.
#[test]
fn an_arena_above_the_free_memory_is_an_error() {
    if !kvm_and_root_available() {
        return;
    }
    expect_error(
        &["--workload", "pattern", "--mem", "64M", "--arena", "60M"],
        "an arena of 60 MiB does not fit",
    );
}

/// Sizes outside what the VMM supports are usage errors. (The check against the host's RAM
/// applies to hosts with less RAM than the VMM's 16 GiB limit.)
#[test]
fn memory_beyond_the_vmm_limit_is_a_usage_error() {
    expect_usage_error(&["--mem", "64T"], "between 16 MiB and 16 GiB");
    expect_usage_error(&["--mem", "3M"], "not a multiple of 2 MiB");
}

#[test]
fn malformed_memory_size_is_a_usage_error() {
    let run = Finished::of(daemon().args(["run", "--mem", "lots"]));
    run.expect_code(2);
    assert!(run.stderr.contains("--mem"), "{}", run.stderr);
}

#[test]
fn missing_disk_image() {
    expect_error(
        &["--workload", "compress", "--disk", "/nonexistent/disk.img"],
        "disk image /nonexistent/disk.img does not exist",
    );
}

#[test]
fn disk_without_a_data_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = dir.path().join("plain.img");
    fs::write(&disk, vec![0u8; 1 << 20]).expect("write disk");
    expect_error(
        &[
            "--workload",
            "sort",
            "--disk",
            disk.to_str().expect("utf-8 path"),
        ],
        "holds no data set",
    );
}

#[test]
fn non_elf_guest_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("guest.txt");
    fs::write(&image, "not an ELF file").expect("write image");
    expect_error(
        &["--guest", image.to_str().expect("utf-8 path")],
        "not a valid ELF file",
    );
}

#[test]
fn missing_guest_image() {
    expect_error(
        &["--guest", "/nonexistent/guest"],
        "cannot read guest image",
    );
}

#[test]
fn mkdisk_data_set_feeds_compress() {
    if !kvm_and_root_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = dir.path().join("data.img");
    Finished::of(
        daemon()
            .args(["mkdisk", "--workload", "compress", "--data", "8M"])
            .arg(&disk),
    )
    .expect_code(0);
    let run = Finished::of(
        daemon()
            .args([
                "run",
                "--workload",
                "compress",
                "--mem",
                SMALL_MEM,
                "--work",
                "4",
            ])
            .arg("--disk")
            .arg(&disk)
            .arg("--out")
            .arg(dir.path().join("run")),
    );
    run.expect_code(0);
    assert_eq!(run.result_line().expect("result line").0, 4);
}

/// `sort` and `compress` read their input from the disk and (sort) read back what they wrote:
/// the guest computes the same result recorded (reads through a buffer that the event log
/// keeps), not recorded (reads and writes straight between the file and guest memory) and
/// natively (`simuboost-hostrun`, the same workload code on the host with the same disk).
#[test]
fn disk_workloads_compute_the_same_recorded_unrecorded_and_natively() {
    if !kvm_and_root_available() {
        return;
    }
    for (workload, work) in [("sort", "40"), ("compress", "8")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("data.img");
        let mkdisk = |path: &Path| {
            Finished::of(
                daemon()
                    .args([
                        "mkdisk",
                        "--workload",
                        workload,
                        "--data",
                        "8M",
                        "--size",
                        "24M",
                    ])
                    .arg(path),
            )
            .expect_code(0);
        };
        let in_vm = |name: &str, extra: &[&str]| {
            let image = dir.path().join(format!("{name}.img"));
            mkdisk(&image);
            let run = Finished::of(
                daemon()
                    .args(["run", "--workload", workload, "--mem", SMALL_MEM])
                    .args(["--work", work, "--seed", "3"])
                    .args(extra)
                    .arg("--disk")
                    .arg(&image)
                    .arg("--out")
                    .arg(dir.path().join(name)),
            );
            run.expect_code(0);
            let s = summary(&dir.path().join(name));
            assert!(
                s.disk_read_bytes > 0,
                "{workload} {name}: no disk reads: {s:?}"
            );
            (run.result_line().expect("result line"), s)
        };
        let (recorded, summary_recorded) = in_vm("recorded", &["--tracer", "none"]);
        let (unrecorded, summary_unrecorded) = in_vm("unrecorded", &["--no-record"]);
        assert_eq!(
            recorded, unrecorded,
            "{workload}: recording changed the result"
        );
        assert_eq!(
            (
                summary_recorded.disk_read_bytes,
                summary_recorded.disk_write_bytes
            ),
            (
                summary_unrecorded.disk_read_bytes,
                summary_unrecorded.disk_write_bytes
            ),
            "{workload}: the same requests, the same bytes"
        );
        mkdisk(&disk);
        let out = Finished::of(
            Command::new(binary("simuboost-hostrun"))
                .args(["--workload", workload, "--work", work, "--seed", "3"])
                .arg("--arena-bytes")
                .arg(summary_unrecorded.arena_bytes.to_string())
                .arg("--disk")
                .arg(&disk),
        );
        out.expect_code(0);
        let native: serde_json::Value =
            serde_json::from_str(&out.stdout).expect("simuboost-hostrun prints JSON");
        assert_eq!(
            native["checksum"].as_str(),
            Some(unrecorded.1.as_str()),
            "{workload}: the VM and the host computed different results"
        );
    }
}

/// The built guest image (see simuboost-build: target/foreign/<binary>/<target>/release).
fn guest_image() -> Vec<u8> {
    let path = binary("simuboost-daemon")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("foreign/simuboost-guest/x86_64-simuboost-guest/release/simuboost-guest");
    fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn guest_crash_reports_the_exception_and_registers() {
    if !kvm_and_root_available() {
        return;
    }
    // Patch `ud2` over the first instruction of the guest's ring-3 entry point.
    let mut image = guest_image();
    let elf = goblin::elf::Elf::parse(&image).expect("guest is ELF");
    let user_main = elf
        .syms
        .iter()
        .find(|s| {
            elf.strtab
                .get_at(s.st_name)
                .is_some_and(|n| n.contains("user_main"))
        })
        .expect("the guest has a user_main symbol")
        .st_value;
    let offset = elf
        .program_headers
        .iter()
        .find(|ph| ph.vm_range().contains(&(user_main as usize)) && ph.p_filesz > 0)
        .map(|ph| (user_main - ph.p_vaddr + ph.p_offset) as usize)
        .expect("user_main lies in a loaded segment");
    drop(elf);
    image[offset..offset + 2].copy_from_slice(&[0x0f, 0x0b]);
    let dir = tempfile::tempdir().expect("temp dir");
    let patched = dir.path().join("crashing-guest");
    fs::write(&patched, &image).expect("write patched guest");

    let run = Finished::of(
        daemon()
            .args([
                "run",
                "--workload",
                "idle",
                "--mem",
                SMALL_MEM,
                "--work",
                "1",
            ])
            .arg("--guest")
            .arg(&patched)
            .arg("--out")
            .arg(dir.path().join("run")),
    );
    run.expect_code(EXIT_GUEST_CRASH);
    assert!(
        run.stderr.contains("exception 6 (#UD invalid opcode)"),
        "crash report lacks the exception:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("at rip={user_main:#x}")),
        "crash report lacks the faulting rip {user_main:#x}:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rax="),
        "no register dump:\n{}",
        run.stderr
    );
}

#[test]
fn daemon_help_is_available() {
    let run = Finished::of(Command::new(binary("simuboost-daemon")).arg("--help"));
    run.expect_code(0);
    assert!(run.stdout.contains("workloads"));
}
