//! simuboost's VMM library, shared by the recorder (`simuboost-daemon`) and the replayer
//! (`simuboost-replay`).
//!
//! - [`vstate`]: KVM-facing state (VM, vCPU, memory), as in Firecracker's `vstate`.
//! - [`boot`]: loading the guest image and building its 64-bit boot structures.
//! - [`devices`]: the paravirtual device and the disk behind it.
//! - [`machine`]: a whole machine and its run loop.
//! - [`guest_image`]: the guest image built from `simuboost-guest` and embedded here.

pub mod boot;
pub mod devices;
pub mod guest_image;
pub mod machine;
pub mod vstate;
