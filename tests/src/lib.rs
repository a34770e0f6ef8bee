//! Helpers for simuboost's end-to-end tests: locating the binaries, skipping without KVM,
//! running the daemon and reading what it printed.
//!
//! The binaries are built by `cargo xtask test` (or `cargo build --bins`) before the tests run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Environment variable that turns a missing /dev/kvm from a visible skip into a failure
/// (CI sets it: CI machines have KVM).
pub const REQUIRE_KVM_ENV: &str = "SIMUBOOST_REQUIRE_KVM";

/// Whether this test can run: true with a usable /dev/kvm. Without one, prints a visible
/// `SKIPPED` line and returns false, or panics when [`REQUIRE_KVM_ENV`] is set.
pub fn kvm_available(test: &str) -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if usable {
        return true;
    }
    if std::env::var_os(REQUIRE_KVM_ENV).is_some_and(|v| v != "0") {
        panic!("{test}: /dev/kvm is missing or not accessible, and {REQUIRE_KVM_ENV} is set");
    }
    eprintln!("SKIPPED {test}: /dev/kvm is missing or not accessible");
    false
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
