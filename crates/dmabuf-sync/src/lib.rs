//! `dmabuf-sync`: the synchronisation runtime of the project, below
//! `dmabuf-core`. Every lock, atomic, condition variable, thread spawn, park
//! and clock read in the project goes through this crate (re-exported as
//! `dmabuf_core::sync`, the path the other crates use).
//!
//! | module | what |
//! |---|---|
//! | this facade (`Mutex`, `Condvar`, `atomic`, `thread`, `time`) | the shim: std/parking_lot, or loom under `--cfg loom` |
//! | [`sched`] | the controlled engine: executions, virtual time, stalls, per-execution extension slots |
//! | [`sched::strategy`] | schedule-choosing strategies (random, PCT, DFS, DPOR, replay) |
//! | [`rcu`] | read sections without a read-modify-write for real threads |
//!
//! The crate names no kernel object, no lockdep type and no trace type: the
//! kernel objects live in `dmabuf-core`, which registers its per-execution
//! state (trace log, validator reports) in the engine's extension slots
//! ([`sched::with_extension`]).
//!
//! # Why a shim
//!
//! The same code has to run in three worlds:
//!
//! | world | selected by | used for |
//! |---|---|---|
//! | real threads | default | the library as programs use it; `dmabuf run`; benchmarks |
//! | controlled execution | at run time, per thread: the thread is a task of an execution started by [`sched::run`] | `dmabuf check` / `matrix`: whole scenarios under a chosen schedule, with virtual time |
//! | loom | `--cfg loom` at build time | small primitives (fence signal, callbacks, waits) checked exhaustively |
//!
//! Real threads and controlled execution live in the same binary: the checker
//! runs a scenario on real threads and then explores it under the scheduler.
//! Each operation asks, when it runs, whether the calling thread is a
//! controlled task ([`sched::active`]). That question is a relaxed load of a
//! process-wide counter of live executions, followed by a thread-local read
//! only when the counter is non-zero, so the real-thread path pays one
//! predictable branch (measured in `benches/fence.rs`, see BENCHMARKS.md).
//!
//! # Rules
//!
//! * Dispatch is per operation, not per object: a [`Mutex`] created on a real
//!   thread and used by a controlled task behaves as a controlled mutex for
//!   that task. Objects shared between a live execution and real threads must
//!   not be held across a scheduling point (process-wide registries obey this:
//!   their critical sections contain no shim operation).
//! * Every shim operation on a controlled task is a scheduling point. Blocking
//!   operations (contended lock, condvar wait, park, join) hand the processor
//!   to another task; the scheduler, not the OS, decides who runs next.
//! * Time: [`time::now_ns`] is `CLOCK_MONOTONIC` on real threads and the
//!   execution's virtual clock on controlled tasks. [`time::timestamp_ns`]
//!   is the same for hot paths, read from the TSC on real threads (a few
//!   tens of ns from the real clock, monotonic per thread). The virtual clock moves
//!   only when every task is blocked and one of them waits with a deadline.
//! * [`rcu`] gives real threads read sections without a read-modify-write
//!   (thread-local records and `membarrier` grace periods). Controlled tasks
//!   and loom models must not use it: [`rcu::try_read_lock`] and
//!   [`rcu::read_section`] refuse a controlled task ([`rcu::available`]
//!   answers the same question), and callers fall back to a counted section
//!   whose steps are scheduling points.
//! * Process-wide counters that are never part of a model (context ids, inode
//!   numbers) use [`atomic::global`], which is always the std type, so they
//!   can be `static` under loom too.

pub mod named_enum;

#[cfg(not(loom))]
mod fast_clock;
#[cfg(not(loom))]
mod std_impl;
#[cfg(not(loom))]
pub use std_impl::*;

#[cfg(loom)]
mod loom_impl;
#[cfg(loom)]
pub use loom_impl::*;

#[cfg(not(loom))]
pub mod sched;

#[cfg(not(loom))]
pub mod rcu;

/// The real-thread read sections ([`rcu`] in normal builds), compiled over
/// loom's primitives for its models (`tests/loom_rcu.rs`). Under loom the
/// name `rcu` stays the shim's answer for the kernel objects, which use
/// counted sections there.
#[cfg(loom)]
#[path = "rcu.rs"]
pub mod rcu_model;

#[cfg(loom)]
#[doc(hidden)]
pub use loom as __loom;

/// Reference counting is not modelled (loom's `Arc` only adds leak checks,
/// which our `no-leak` property does at the object level), so `Arc` is std's
/// in every world.
pub use std::sync::{Arc, Weak};

/// One-time initialisation of process-wide values (the stub fence, lockdep
/// class ids). Never a scheduling point: an initialiser must not call into
/// the shim, so under the controlled scheduler it runs to completion before
/// any other task can observe it.
pub use std::sync::OnceLock;
