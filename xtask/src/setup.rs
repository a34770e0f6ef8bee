//! `cargo xtask setup`: installs what simuboost needs on a fresh Debian machine, idempotently.
//!
//! Each step checks first and installs only what is missing, so a second run takes about a
//! second. The recipe (LLVM 22 for bpf-linker, `LLVM_PREFIX`) is the one verified in
//! shared/MACHINE.md.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::run_command;

/// bpf-linker must link an LLVM at least as new as nightly rustc's (22 here).
const LLVM_VERSION: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    // libclang for bindgen: userfaultfd-sys generates its bindings when it is built.
    "libclang-22-dev",
    // cmake: unicorn-engine's build script compiles its bundled C sources (simuboost-sim).
    "cmake",
    // A one-node Slurm cluster for the Slurm executor's tests and benchmark (started by the
    // tests themselves on 127.0.0.1, never as a system service).
    "slurmctld",
    "slurmd",
    "slurm-client",
    "munge",
];
/// Files the packages above install: any missing one means `apt-get install` runs.
const APT_PROVIDES: &[&str] = &[
    "/usr/sbin/slurmctld",
    "/usr/sbin/slurmd",
    "/usr/bin/sbatch",
    "/usr/sbin/munged",
];
const PYTHON_PACKAGES: &[&str] = &["duckdb", "pyarrow"];
/// An S3-compatible server for the object-storage tests and benchmark (`moto_server`, started by
/// them on 127.0.0.1; boto3 comes with it).
const S3_SERVER_PACKAGE: &str = "moto[server]";
/// QEMU, the snapshot-restore peer of `cargo xtask bench qemu` (run as a separate process, never
/// linked). Debian's QEMU 10.0.2 comes from bookworm-backports: the preinstalled `qemu-utils`
/// 10.0.2 blocks bookworm's own 7.2 (shared/MACHINE.md).
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU_BINARY: &str = "qemu-system-x86_64";
const QEMU_SUITE: &str = "bookworm-backports";
/// The apt source added only for the install, and removed again afterwards.
const QEMU_SOURCE_FILE: &str = "/etc/apt/sources.list.d/simuboost-bookworm-backports.sources";
const QEMU_SOURCE: &str = "Types: deb\n\
URIs: http://deb.debian.org/debian\n\
Suites: bookworm-backports\n\
Components: main\n\
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

/// Output of a command, or `None` if it could not run or failed.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, done: bool) -> bool {
    if done {
        eprintln!("setup: {what}: ok");
    } else {
        eprintln!("setup: {what}: installing");
    }
    !done
}

pub fn run() -> Result<()> {
    if output("rustup", &["--version"]).is_none() {
        bail!("rustup is not installed; install Rust with rustup first (https://rustup.rs)");
    }
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if step(
        "nightly toolchain (the guest and eBPF builds)",
        toolchains.lines().any(|l| l.starts_with("nightly")),
    ) {
        run_command(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .unwrap_or_default();
    if step(
        "rust-src for nightly (-Z build-std)",
        components.lines().any(|l| l.starts_with("rust-src")),
    ) {
        run_command(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // `cargo fuzz version` answers only when cargo-fuzz is installed.
    if step(
        "cargo-fuzz (the readers' fuzz targets)",
        output("cargo", &["fuzz", "--version"]).is_some(),
    ) {
        run_command(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz")?;
    }

    let llvm_prefix = format!("/usr/lib/llvm-{LLVM_VERSION}");
    let llvm_config = format!("{llvm_prefix}/bin/llvm-config");
    let polly = format!("{llvm_prefix}/lib/libPolly.a");
    let libclang = format!("{llvm_prefix}/lib/libclang.so");
    if step(
        &format!(
            "LLVM {LLVM_VERSION} development files (bpf-linker), libclang (bindgen), cmake, \
             Slurm and munge (executor tests)"
        ),
        [llvm_config.as_str(), &polly, &libclang]
            .into_iter()
            .chain(APT_PROVIDES.iter().copied())
            .all(|path| std::path::Path::new(path).exists()),
    ) {
        run_command(Command::new("apt-get").args(["update", "-q"]))?;
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "-q"])
                .args(APT_PACKAGES)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if step(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        linker.contains(BPF_LINKER_VERSION),
    ) {
        let path = format!(
            "{llvm_prefix}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run_command(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_VERSION}"),
                ])
                .env("LLVM_PREFIX", &llvm_prefix)
                .env(format!("LLVM_SYS_{LLVM_VERSION}1_PREFIX"), &llvm_prefix)
                .env("PATH", path),
        )
        .context("installing bpf-linker")?;
    }

    let import = format!("import {}", PYTHON_PACKAGES.join(", "));
    if step(
        "Python packages duckdb and pyarrow (interop tests)",
        output("python3", &["-c", &import]).is_some(),
    ) {
        run_command(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--root-user-action=ignore"])
                .args(PYTHON_PACKAGES),
        )?;
    }

    if step(
        "Python package moto[server] (moto_server: the S3 tests' object store)",
        output("python3", &["-c", "import moto.server, boto3, flask"]).is_some()
            && output("moto_server", &["--help"]).is_some(),
    ) {
        run_command(
            Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--root-user-action=ignore"])
                .arg(S3_SERVER_PACKAGE),
        )?;
    }

    let qemu = output(QEMU_BINARY, &["--version"]).unwrap_or_default();
    if step(
        "QEMU 10 from bookworm-backports (the peer of `cargo xtask bench qemu`)",
        qemu.starts_with("QEMU emulator version 10."),
    ) {
        install_qemu()?;
    }
    Ok(())
}

/// Adds the backports suite, installs QEMU from it, and removes the suite again (also when the
/// install fails), so that nothing else is ever taken from backports by accident.
fn install_qemu() -> Result<()> {
    std::fs::write(QEMU_SOURCE_FILE, QEMU_SOURCE)
        .with_context(|| format!("cannot write {QEMU_SOURCE_FILE}"))?;
    let installed = run_command(Command::new("apt-get").args(["update", "-q"])).and_then(|()| {
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "-t"])
                .args([QEMU_SUITE, QEMU_PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    let removed = std::fs::remove_file(QEMU_SOURCE_FILE)
        .with_context(|| format!("cannot remove {QEMU_SOURCE_FILE}"));
    installed.context("installing QEMU from bookworm-backports")?;
    removed?;
    // Forget the suite's package lists too.
    run_command(Command::new("apt-get").args(["update", "-q"]))
}
