//! Builds the guest (`simuboost-guest`, target x86_64-unknown-none) and points
//! `SIMUBOOST_GUEST_ELF` at it, so that `cargo build` of the workspace produces binaries with
//! the guest embedded.

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
}
