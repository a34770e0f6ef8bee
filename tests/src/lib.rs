//! Helpers for simuboost's end-to-end tests: locating the binaries, skipping without KVM or
//! root, recording with the daemon, replaying, and reading what both printed (as the binaries'
//! own types from simuboost-report).
//!
//! The binaries are built by `cargo xtask test` (or `cargo build --bins`) before the tests run.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use simuboost_report::daemon::RunSummary;
use simuboost_report::replay::ReplayReport;

pub mod s3;
pub mod slurm;

/// Environment variable that turns a missing /dev/kvm or missing root from a visible skip into
/// a failure (CI sets it: CI machines have KVM and run as root).
pub const REQUIRE_KVM_ENV: &str = "SIMUBOOST_REQUIRE_KVM";

/// The running test's name: libtest names each test's thread after the test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// Skips (a visible `SKIPPED` line, false) or, when [`REQUIRE_KVM_ENV`] is set, fails the
/// running test for lack of `what`.
pub(crate) fn skip(what: &str) -> bool {
    let test = test_name();
    if std::env::var_os(REQUIRE_KVM_ENV).is_some_and(|v| v != "0") {
        panic!("{test}: {what}, and {REQUIRE_KVM_ENV} is set");
    }
    eprintln!("SKIPPED {test}: {what}");
    false
}

/// Whether this test can run: true with a usable /dev/kvm; otherwise see [`skip`].
pub fn kvm_available() -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    usable || skip("/dev/kvm is missing or not accessible")
}

/// Whether this test can run: true with a usable /dev/kvm and root, which the eBPF tracer
/// (the daemon's default), userfaultfd for KVM's own faults and mounts need.
pub fn kvm_and_root_available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    kvm_available() && (root || skip("not root (the tracer, userfaultfd and mounts need it)"))
}

/// Records with `simuboost-daemon run ARGS` into `dir`, the guest console into `dir.console`.
pub fn record(dir: &Path, args: &[&str]) -> Finished {
    Finished::of(
        daemon()
            .arg("run")
            .args(args)
            .arg("--out")
            .arg(dir)
            .arg("--console-log")
            .arg(dir.with_extension("console")),
    )
}

/// Records `workload` into `dir` in a VM of `mem` (plus `extra` flags) and expects success.
pub fn record_workload(dir: &Path, workload: &str, mem: &str, extra: &[&str]) {
    let args: Vec<&str> = ["--workload", workload, "--mem", mem]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    record(dir, &args).expect_code(0);
}

/// Copies a run directory (tests damage copies, never the original).
pub fn copy_run(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

/// Edits manifest.json of `run` with `edit` (tests damage copies, never the original).
pub fn edit_manifest(run: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = simuboost_format::layout::manifest(run);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("JSON");
    edit(&mut manifest);
    std::fs::write(&path, manifest.to_string()).expect("write manifest");
}

/// Runs `python3 -c SCRIPT ARGS` with `stdin` on its standard input (the tests' route to
/// pyarrow, DuckDB and boto3, which `cargo xtask setup` installs) and returns what it printed;
/// panics with `what` and Python's error output if it fails.
pub fn python3(what: &str, script: &str, args: &[&OsStr], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut input = child.stdin.take().expect("piped stdin");
    std::io::Write::write_all(&mut input, stdin.unwrap_or_default())
        .expect("the input is written to python3");
    drop(input);
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rewrites one cell of a Parquet table with pyarrow, keeping its schema: how the tests craft
/// damaged or altered runs.
pub fn alter_cell(table: &Path, row: usize, column: &str, value: u64) {
    let script = format!(
        r#"
import pyarrow as pa, pyarrow.parquet as pq
t = pq.read_table({path:?})
col = t.column({column:?}).to_pylist()
col[{row}] = {value}
i = t.schema.get_field_index({column:?})
t = t.set_column(i, t.schema.field(i), pa.array(col, type=t.schema.field(i).type))
pq.write_table(t, {path:?})
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

/// Runs `sql` in DuckDB (python3's `duckdb` module, which `cargo xtask setup` installs) and
/// returns the rows, each value as Python's `str()` of it (`None` for NULL).
pub fn duckdb_rows(sql: &str) -> Vec<Vec<String>> {
    let script = r#"
import sys, json, duckdb
rows = duckdb.connect().execute(sys.stdin.read()).fetchall()
print(json.dumps([[str(v) for v in r] for r in rows]))
"#;
    let out = python3(
        &format!("DuckDB query failed (is duckdb installed? `cargo xtask setup`):\n{sql}"),
        script,
        &[],
        Some(sql.as_bytes()),
    );
    serde_json::from_str(&out).expect("python3 printed JSON rows")
}

/// The daemon's summary of the run in `dir` (`summary.json`).
pub fn summary(dir: &Path) -> RunSummary {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not the daemon's summary: {e}", path.display()))
}

/// Runs `simuboost-replay --run RUN ARGS`.
pub fn replay(run: &Path, args: &[&str]) -> Finished {
    Finished::of(
        Command::new(binary("simuboost-replay"))
            .arg("--run")
            .arg(run)
            .args(args),
    )
}

/// The reports a `--json` replay printed, one per line.
pub fn replay_reports(out: &Finished) -> Vec<ReplayReport> {
    out.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a replay report ({e}): {l}"))
        })
        .collect()
}

/// Directory of the workspace's built binaries (debug profile, or `SIMUBOOST_BIN_DIR`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIMUBOOST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with how to build it when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `cargo xtask test` does)",
        path.display()
    );
    path
}

/// A `simuboost-daemon` command.
pub fn daemon() -> Command {
    Command::new(binary("simuboost-daemon"))
}

/// What a finished command printed.
pub struct Finished {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Finished {
    fn from(out: Output) -> Self {
        Finished {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Finished {
    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut Command) -> Finished {
        cmd.output().expect("the command starts").into()
    }

    /// Panics with both outputs unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The guest's `result:` line, parsed into (units, checksum).
    pub fn result_line(&self) -> Option<(u64, String)> {
        let line = self.stdout.lines().find(|l| l.starts_with("result:"))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        Some((field("units=")?.parse().ok()?, field("checksum=")?))
    }
}
