//! The guest image, built from `simuboost-guest` by this crate's build script.

/// The default guest: an x86-64 ELF executable built for `x86_64-unknown-none`.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("SIMUBOOST_GUEST_ELF"));
