//! simuboost's VMM library, shared by the recorder (`simuboost-daemon`) and the replayer
//! (`simuboost-replay`).
//!
//! - [`vstate`]: KVM-facing state (VM, vCPU, memory), as in Firecracker's `vstate`.
//! - [`boot`]: loading the guest image and building its 64-bit boot structures.
//! - [`devices`]: the paravirtual device and the disk behind it.
//! - [`machine`]: a whole machine and its run loop.
//! - [`persist`] (feature `format`): save/restore of vCPU and device state as the run format
//!   stores them.

pub mod boot;
pub mod devices;
pub mod machine;
#[cfg(feature = "format")]
pub mod persist;
pub mod vstate;
