//! The licence boundary: simuboost-sim links unicorn (GPL-2.0) and therefore only
//! GPLv2-compatible crates — never an Apache-2.0-only one, nor the crates that pull in arrow and
//! parquet (simuboost-vmm, simuboost-format). Only what is linked counts: normal dependencies,
//! not build scripts' (bindgen pulls in clang-sys, Apache-2.0, at build time only) nor proc
//! macros.

use std::process::Command;

#[test]
fn simuboost_sim_links_only_gplv2_compatible_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "simuboost-sim",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}|{l}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let compatible = [
        "MIT",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "ISC",
        "Zlib",
        "Unlicense",
        "GPL-2.0",
    ];
    let mut bad = Vec::new();
    for line in tree.lines().filter(|l| !l.trim().is_empty()) {
        let (package, licence) = line.split_once('|').unwrap_or((line, ""));
        let name = package.split_whitespace().next().unwrap_or("");
        if package.contains("(proc-macro)") {
            continue;
        }
        if ["simuboost-vmm", "simuboost-format", "arrow", "parquet"]
            .iter()
            .any(|n| name == *n || name.starts_with("arrow-"))
        {
            bad.push(format!("{package}: must not be linked"));
            continue;
        }
        // "A OR B" is fine if one alternative is compatible; "A AND B" / "A/B" need all parts.
        let ok = licence.split(" OR ").any(|alt| {
            alt.trim_matches(|c| c == '(' || c == ')')
                .split(" AND ")
                .all(|part| {
                    let part = part.trim_matches(|c| c == '(' || c == ')').trim();
                    part.split('/')
                        .any(|p| compatible.iter().any(|c| p.trim().starts_with(c)))
                })
        });
        if !ok {
            bad.push(format!("{package}: licence {licence:?}"));
        }
    }
    assert!(bad.is_empty(), "not GPLv2-compatible:\n{}", bad.join("\n"));
}
