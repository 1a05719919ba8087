//! A real Linux kernel as the oracle: the same cases run in a
//! Debian kernel booted under qemu (the static probe in `probe/`) and on
//! the project's ABI layer ([`model`]); [`report`] compares them.
//!
//! | module | role |
//! |---|---|
//! | [`cases`] | the one case list |
//! | [`serial`] | the probe's console protocol and its strict parser |
//! | [`qemu`] | one boot with a hard time limit |
//! | [`model`] | our back end (core ABI) |
//! | [`kmod`] | our back end of the test importer module's part: the script scenarios of `protocols/kmod/` run by `dmabuf_scenario::script` against the merged VFIO sequence; the five-observation agreement table |
//! | [`exporters`] | the only module using `dmabuf-drivers`: system heap, VFIO |
//! | [`report`] | normalisation, agreement table, JSON |
#![warn(missing_docs)]

pub mod cases;
pub mod exporters;
pub mod kmod;
pub mod model;
pub mod qemu;
pub mod report;
pub mod serial;
