//! Scenarios as data: revoke protocols, importer behaviours and whole
//! scenarios are files a kernel engineer writes ([`file`]; the format is
//! described in `docs/protocol-files.md`), the built-in ones ship inside the
//! binary ([`builtin`]), and [`world`] runs one scenario on the simulated
//! platform, on real threads or under the controlled scheduler; [`script`]
//! runs a script scenario (the real-kernel oracle's test importer steps)
//! step by step.
//!
//! Layering: this crate sits above the drivers (which know nothing of
//! scenarios or matrix columns) and below the checker (which explores and
//! judges what a world observed).
#![warn(missing_docs)]

pub mod builtin;
pub mod file;
pub mod runner;
pub mod script;
pub mod world;
