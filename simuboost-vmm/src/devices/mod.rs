//! Devices: the paravirtual device the guest talks to, and the disk image behind it.

pub mod disk;
pub mod paravirt;
