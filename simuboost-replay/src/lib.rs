//! simuboost's replayer: restores one interval of a recorded run from its checkpoint, loading
//! only the frames its working set uses (the rest on demand through userfaultfd), replays it
//! exactly by feeding back the recorded events, and verifies the result against the next
//! checkpoint.
//!
//! - [`restore`]: guest memory through userfaultfd: bulk installation, the miss handler.
//! - [`engine`]: what executes the interval: a KVM VM or the functional simulator
//!   (`simuboost-sim`, a separate GPL-2.0 process).
//! - [`replay`]: one interval, start to verified end; the [`replay::ReplayReport`].
//! - [`verify`]: comparing the final state with the next checkpoint.
//! - [`executor`]: every interval, on local processes or a Slurm cluster.
//! - [`runs`]: finding the run to replay.

pub mod analysis;
pub mod engine;
pub mod executor;
pub mod replay;
pub mod restore;
pub mod runs;
pub mod verify;

pub use replay::{
    replay_interval, Engine, Mode, PageLookupMode, ReplayError, ReplayOptions, ReplayReport,
};
