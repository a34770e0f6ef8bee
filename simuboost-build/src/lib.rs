//! Builds a crate of this repository for another target from a build script.
//!
//! The guest (its own x86_64 bare-metal target with SSE2) and the eBPF programs
//! (`bpfel-unknown-none`), both nightly with `-Z build-std`, are their own workspaces, so the
//! normal `cargo build` of the main workspace builds them through the build scripts of the
//! crates that embed them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One foreign-target build.
pub struct ForeignBuild<'a> {
    /// Directory of the crate (its own workspace), relative to the repository root.
    pub crate_dir: &'a str,
    /// Binary the build produces.
    pub binary: &'a str,
    /// Target triple, or the file name of a target specification (`*.json`) in the crate
    /// directory.
    pub target: &'a str,
    /// Toolchain to run cargo with through `rustup run` (`None`: the current one).
    pub toolchain: Option<&'a str>,
    /// Extra arguments for `cargo build`.
    pub cargo_args: &'a [&'a str],
    /// `CARGO_ENCODED_RUSTFLAGS` for the build (`None`: the crate's own config).
    pub encoded_rustflags: Option<String>,
    /// What to tell the user when the build fails.
    pub hint: &'a str,
}

/// The repository root: the parent of the calling crate's manifest directory.
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    manifest_dir
        .parent()
        .expect("the crate lives inside the repository")
        .to_path_buf()
}

impl ForeignBuild<'_> {
    /// Runs the build and returns the path of the binary. Panics (failing the build script) with
    /// the compiler's output and `hint` on failure.
    pub fn run(&self, watch: &[&str]) -> PathBuf {
        let root = repo_root();
        for dir in watch.iter().chain(std::iter::once(&self.crate_dir)) {
            println!("cargo:rerun-if-changed={}", root.join(dir).display());
        }
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("foreign")
            .join(self.binary);

        let mut cmd = match self.toolchain {
            Some(toolchain) => {
                let mut cmd = Command::new("rustup");
                cmd.args(["run", toolchain, "cargo"]);
                cmd
            }
            None => Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
        };
        cmd.current_dir(root.join(self.crate_dir))
            .args(["build", "--release", "--target", self.target])
            .args(self.cargo_args)
            .arg("--target-dir")
            .arg(&target_dir);
        // The outer build's settings (flags, clippy's wrapper, its target, its toolchain's
        // rustc) are not this build's.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let outer = (key.starts_with("CARGO_") && key != "CARGO_HOME")
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || (self.toolchain.is_some() && (key == "RUSTUP_TOOLCHAIN" || key == "CARGO"));
            if outer {
                cmd.env_remove(&key);
            }
        }
        if let Some(flags) = &self.encoded_rustflags {
            cmd.env("CARGO_ENCODED_RUSTFLAGS", OsString::from(flags));
        }
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("could not run cargo for {}: {e}", self.crate_dir));
        if !output.status.success() {
            panic!(
                "building {} for {} failed. {}\n{}",
                self.crate_dir,
                self.target,
                self.hint,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // Cargo names the output directory of a `.json` target after the file's stem.
        let binary = target_dir
            .join(self.target.strip_suffix(".json").unwrap_or(self.target))
            .join("release")
            .join(self.binary);
        assert!(
            Path::new(&binary).exists(),
            "the build of {} produced no {}",
            self.crate_dir,
            binary.display()
        );
        binary
    }
}
