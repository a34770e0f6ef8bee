//! Builds what the daemon embeds: the guest (`simuboost-guest`, target x86_64-unknown-none,
//! `SIMUBOOST_GUEST_ELF`) and the eBPF programs (`simuboost-ebpf`, nightly,
//! `-Z build-std=core`, bpf-linker, `SIMUBOOST_EBPF_OBJECT`), so that `cargo build` produces a
//! complete binary.

fn main() {
    let elf = simuboost_build::ForeignBuild {
        crate_dir: "simuboost-guest",
        binary: "simuboost-guest",
        target: "x86_64-unknown-none",
        toolchain: None,
        cargo_args: &[],
        encoded_rustflags: None,
        hint: "(A missing x86_64-unknown-none target is installed by `cargo xtask setup`.)",
    }
    .run(&["simuboost-workloads", "simuboost-abi"]);
    println!("cargo:rustc-env=SIMUBOOST_GUEST_ELF={}", elf.display());

    // The same flags aya-build passes: the target arch cfg, BTF for CO-RE and the verifier.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let object = simuboost_build::ForeignBuild {
        crate_dir: "simuboost-ebpf",
        binary: "simuboost-ebpf",
        target: "bpfel-unknown-none",
        toolchain: Some("nightly"),
        cargo_args: &["-Z", "build-std=core"],
        encoded_rustflags: Some(rustflags),
        hint: "(The eBPF build needs the nightly toolchain with rust-src and bpf-linker; \
               `cargo xtask setup` installs them.)",
    }
    .run(&["simuboost-common"]);
    println!("cargo:rustc-env=SIMUBOOST_EBPF_OBJECT={}", object.display());
}
