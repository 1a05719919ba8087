//! `dmabuf soak`: the real stack (platform, drivers, dma-buf core, ioctl
//! layer, fences) under a seeded random workload on real threads, for
//! minutes or hours, with faults injected and everything checked as it
//! goes (docs/soak.md).
//!
//! # Contract
//!
//! | module | what |
//! |---|---|
//! | [`plan`] | the workload: episode *n* of seed *S* is a pure function of `(config, S, n)` |
//! | [`episode`] | runs one episode on real threads: a fresh machine, exports, imports of every kind drawn, jobs, fences, CPU access, the exporter event, the faults; teardown; per-episode checks |
//! | [`shared`] | counters, findings, the latency histogram, the watchdog's tables, the fallible-allocation hook |
//! | [`check`] | hazard and leak checks (pure functions over the core's and the platform's diagnostics) |
//! | [`run`] | the run: workers, watchdog, RSS sampling, progress, the summary and its JSON |
//!
//! # What a run promises to report
//!
//! | check | when | finding |
//! |---|---|---|
//! | hazards (the monitor, v6-final on VFIO) | after each episode | `hazard`, with the seed and the episode |
//! | leaks: buffers, attachments, mappings, IOVAs, frames, CPU PTEs, engines | after each episode | `leak` |
//! | leaks: fences, buffers process-wide | at the end | `leak` |
//! | a revoke running longer than the bound | every 100 ms | `slow-revoke`, with the attachments it waits for |
//! | a thread in one step longer than the hung-task bound | every 100 ms | `hung-task`, with the steps of the episode's other threads |
//! | lockdep (`Collect` mode for the whole run) | every second | `lockdep` |
//! | kernel WARNs of the VFIO exporter | as they happen | `warning` |
//! | a panicking thread | at its episode's join | `panic` |
//! | RSS growing after the warm-up | at the end | `rss-growth` |
#![warn(missing_docs)]

pub mod check;
pub mod episode;
pub mod plan;
pub mod run;
pub mod shared;

pub use run::{SoakArgs, SoakConfig, Summary, parse_duration, run};

/// Tests that create dma-bufs, fences or run a soak take this: a soak
/// compares process-wide counts and installs the process-wide allocation
/// hook.
#[cfg(test)]
pub(crate) static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
