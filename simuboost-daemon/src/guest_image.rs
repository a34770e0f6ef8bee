//! The guest image, built from `simuboost-guest` by this crate's build script (the daemon is
//! the only binary that boots a guest; replays restore one from a run).

/// The default guest: an x86-64 ELF executable built for its own bare-metal target with SSE2.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("SIMUBOOST_GUEST_ELF"));
