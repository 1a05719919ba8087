//! The synchronisation shim, from the `dmabuf-sync` crate (see its
//! documentation for the three worlds: real threads, the controlled
//! scheduler, loom). Everything in that crate is reachable here under the
//! same names (`dmabuf_core::sync::Mutex`, `dmabuf_core::sync::sched::Dfs`,
//! ...), so code written against this path does not change.
//!
//! What this crate adds is [`sched::run`] and [`sched::RunReport`]: the
//! engine's run, with the per-execution state this crate keeps in the
//! engine's extension slots unpacked into typed fields (the execution's
//! trace, [`crate::trace::Event`], and its validator reports,
//! [`crate::lockdep::Report`]). The engine itself names neither type.

pub use dmabuf_sync::*;

/// The controlled scheduler ([`dmabuf_sync::sched`]) with a run that
/// returns this crate's per-execution state.
#[cfg(not(loom))]
pub mod sched {
    pub use dmabuf_sync::sched::*;

    use crate::lockdep::Report;
    use crate::trace::Event;

    /// The execution's trace log (an extension slot of the engine).
    #[derive(Default)]
    pub(crate) struct TraceLog(pub(crate) Vec<Event>);

    /// The validator reports filed by the execution's tasks in `Collect`
    /// mode (an extension slot of the engine).
    #[derive(Default)]
    pub(crate) struct LockdepLog(pub(crate) Vec<Report>);

    /// Everything one execution produced: the engine's report
    /// ([`dmabuf_sync::sched::RunReport`]) with this crate's extension slots
    /// unpacked.
    #[derive(Clone, Debug)]
    pub struct RunReport {
        /// How it ended.
        pub outcome: Outcome,
        /// Decisions taken; replays this execution.
        pub schedule: Schedule,
        /// Scheduling points.
        pub steps: u64,
        /// Decisions (scheduling points with two or more runnable tasks).
        pub decisions: u64,
        /// Baton hand-overs between different tasks.
        pub switches: u64,
        /// Virtual time elapsed.
        pub virtual_ns: u64,
        /// The execution's trace, in order.
        pub trace: Vec<Event>,
        /// Validator reports filed by the execution's tasks in `Collect` mode
        /// (kept apart from other executions running at the same time).
        pub lockdep: Vec<Report>,
        /// Panics of tasks, in order.
        pub panics: Vec<TaskPanic>,
        /// OS threads that had not exited `RunConfig::unwind_timeout` after
        /// the end; they are left running (detached) on real primitives.
        pub leaked_threads: usize,
        /// The strategy's complaint about this execution (see
        /// [`Strategy::end_execution`]).
        pub divergence: Option<ScheduleError>,
    }

    /// Runs `f` as the root task of a new execution scheduled by `strategy`
    /// ([`dmabuf_sync::sched::run`]) and unpacks the trace and validator
    /// slots. Call [`Strategy::next_execution`] first.
    pub fn run<F: FnOnce() + Send + 'static>(
        strategy: &mut dyn Strategy,
        cfg: &RunConfig,
        f: F,
    ) -> RunReport {
        let mut r = dmabuf_sync::sched::run(strategy, cfg, f);
        RunReport {
            outcome: r.outcome,
            schedule: r.schedule,
            steps: r.steps,
            decisions: r.decisions,
            switches: r.switches,
            virtual_ns: r.virtual_ns,
            trace: r.extensions.take::<TraceLog>().unwrap_or_default().0,
            lockdep: r.extensions.take::<LockdepLog>().unwrap_or_default().0,
            panics: r.panics,
            leaked_threads: r.leaked_threads,
            divergence: r.divergence,
        }
    }
}
