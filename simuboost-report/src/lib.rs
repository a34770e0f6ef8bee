//! What simuboost's binaries print, declared once: the daemon's run summary (`--json`, and
//! `summary.json` in the run directory), the replayer's per-interval report (`--json`), and the
//! exit statuses of both. The binaries serialise these types; xtask's benchmarks, the tests and
//! `simuboost-replay --all` (which reads its child processes' reports) deserialise the same
//! types, so a renamed field breaks the build instead of a dashboard.

pub mod daemon;
pub mod replay;
