//! The drivers from the revoke thread, on the simulated platform.
#![warn(missing_docs)]

pub mod policy;
pub mod vfio_uapi;
pub mod world;
