//! Builds what the daemon embeds: the guest (`simuboost-guest`, x86_64 bare metal with SSE2,
//! nightly, `SIMUBOOST_GUEST_ELF`) and the eBPF programs (`simuboost-ebpf`, nightly,
//! `-Z build-std=core`, bpf-linker, `SIMUBOOST_EBPF_OBJECT`), so that `cargo build` produces a
//! complete binary.

fn main() {
    let elf = simuboost_build::ForeignBuild {
        crate_dir: "simuboost-guest",
        binary: "simuboost-guest",
        // x86_64-unknown-none with SSE2 (see simuboost-guest/.cargo/config.toml): `core` and
        // `alloc` are built from source, which needs nightly and rust-src.
        target: "x86_64-simuboost-guest.json",
        toolchain: Some("nightly"),
        cargo_args: &[],
        encoded_rustflags: None,
        hint: "(The guest build needs the nightly toolchain with rust-src; `cargo xtask setup` \
               installs them.)",
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
