//! Controlled execution: a deterministic scheduler for real OS threads, with
//! virtual time and per-group stalls.
//!
//! # The problem
//!
//! The checker must run the real dma-buf code (fences, reservation objects,
//! revoke) under many interleavings, reproduce any one of them from a token,
//! and model two things real threads cannot: time that passes only when
//! everybody waits (so a 10 s `wait_timeout` costs nothing), and a userspace
//! process that is never scheduled again (`l-bounded`). Shuttle has neither
//! virtual time (its `Condvar::wait_timeout` never times out) nor per-thread
//! stall control, hence this engine.
//!
//! # Model
//!
//! An execution ([`run`]) is a set of tasks: the root closure and every
//! thread it (transitively) spawns through the shim. Each task runs on a
//! real OS thread of its own (taken from a pool and given back when the
//! task ends: creating a thread cost more than the rest of a short task;
//! `pool.rs` says what a reused thread must not carry over), but only the
//! task holding the *baton* runs; every shim operation
//! is a scheduling point at which a [`Strategy`] picks the next task among
//! the runnable, non-stalled ones. A choice among two or more tasks is a
//! *decision*; the list of decisions is the [`Schedule`], which replays the
//! execution exactly ([`Replay`]).
//!
//! | task state | meaning | leaves it by |
//! |---|---|---|
//! | runnable | may be chosen at the next scheduling point | being chosen (runs), blocking, finishing |
//! | blocked on a resource | contended mutex or condvar wait (`block_on`) | `unblock_one/all(resource)`, its deadline (timed variant) |
//! | parked | `thread::park` without a token | `unpark`, its deadline |
//! | sleeping | `thread::sleep` | its deadline |
//! | joining | `JoinHandle::join` of an unfinished task | that task finishing |
//! | finished | the closure returned or panicked | never |
//!
//! *Stalled* is orthogonal: [`stall_group`] marks every task of a group (now
//! and later) as never to be scheduled again, whatever its state.
//!
//! # What may happen after what
//!
//! 1. A task runs until its next scheduling point; nothing else runs
//!    meanwhile, so a shim operation and the code between two of them are
//!    atomic with respect to other tasks.
//! 2. Unblocking (`unblock_*`, `unpark`, a task finishing) makes tasks
//!    runnable but does not switch; the switch happens at the next point.
//! 3. When no task is runnable, the virtual clock ([`now_ns`]) jumps to the
//!    earliest deadline of a non-stalled waiting task, and every task whose
//!    deadline has passed becomes runnable with "timed out". Time never moves
//!    while a task is runnable, so a timeout cannot fire while the task that
//!    would prevent it can still run.
//! 4. The execution ends when every task has finished ([`Outcome::Completed`]),
//!    when only stalled tasks are left ([`Outcome::CompletedWithStalled`]),
//!    when tasks are left but none can ever run again ([`Outcome::Deadlock`]),
//!    or after [`RunConfig::max_steps`] scheduling points
//!    ([`Outcome::StepLimit`]).
//! 5. Left-over tasks are then unwound: the execution is marked aborting,
//!    every left-over task wakes and its pending shim call panics with a
//!    private payload, so destructors run and locks are released. While
//!    aborting, [`active`] is false for them and shim operations use the real
//!    primitives. [`run`] waits (in real time, [`RunConfig::unwind_timeout`])
//!    for their bodies to be left and reports the ones that were not as
//!    leaked.
//!
//! Task code must not catch the abort payload (`catch_unwind` that swallows
//! every panic): the task would go on running on real primitives.
//!
//! # Lock rules
//!
//! The engine is the one place that uses real primitives directly: one
//! `parking_lot` mutex per execution guards its state (never held while user
//! code runs, never held while blocking), and each task's baton is a flag
//! plus `std::thread::park`. Executions share nothing but the
//! `LIVE_EXECUTIONS` counter (the fast path of [`active`]), a chained panic
//! hook that records task panics, the round-robin choice of the CPU
//! each calling thread's executions are bound to
//! ([`RunConfig::pin_to_one_cpu`]) and the pool of idle task threads (one
//! per CPU; a thread serves one task at a time), so several
//! executions may run at once in one process, each fully independent.
//!
//! # Determinism
//!
//! Same strategy, same seed, same program: same schedule, same trace. Ids a
//! program sees must not depend on the process either: [`local_counter`]
//! hands out per-execution numbers (fence contexts, inode numbers), and
//! per-execution state of higher layers (the trace log and the validator's
//! reports of `dmabuf-core`) lives in the execution's extension slots
//! ([`with_extension`], returned in [`RunReport::extensions`]). Task ids are
//! given in spawn order, the root being 0.
//!
//! # What the engine reports to a strategy
//!
//! A strategy that asks for it ([`Strategy::observes_events`]) is told, for
//! every *segment* (what one task runs between two of its scheduling points,
//! the unit the engine makes atomic), which objects the segment touched and
//! how ([`StepEvent`]): the shim announces the operation at the scheduling
//! point that precedes it (atomic load = read, store and read-modify-write =
//! write, mutex acquire/release, condvar wait/notify, park/unpark,
//! spawn/join/finish of a task, joining and stalling a group, per-execution
//! counters), and a wake-up is an access of the woken task's next segment to
//! what woke it. A jump of the virtual clock is a segment of its own that
//! conflicts with every other ([`StepEvent::task`] is `None`). Objects are
//! numbered in the order the execution first touches them, so the numbers of
//! a replayed prefix are the same in every execution. This is what the DPOR
//! strategy ([`Dpor`]) builds happens-before from.

mod engine;
mod extension;
mod pool;
mod schedule;
pub mod strategy;
#[cfg(test)]
mod tests;

pub use engine::TaskJoin;
pub use extension::{Extensions, Here};
pub use schedule::{Schedule, ScheduleError};
pub use strategy::{Bound, Dfs, Dpor, DporStats, Pct, Random, Replay};

use engine::{Forget, LIVE_EXECUTIONS, ObjKey, Wait};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Identifies a task inside one execution (spawn order; the root is 0).
pub type TaskId = usize;

/// How schedules are chosen.
///
/// Protocol: call [`next_execution`](Self::next_execution) before every
/// [`run`]; stop when it returns false. During the run the engine calls
/// [`choose`](Self::choose) at every decision and, after the run,
/// [`end_execution`](Self::end_execution).
pub trait Strategy: Send {
    /// Name and parameters, for reports (`"pct(seed=7,depth=3)"`).
    fn name(&self) -> String;

    /// Prepares the next execution; false when the strategy is exhausted.
    fn next_execution(&mut self) -> bool;

    /// Picks the task to run among `runnable` (at least two, ascending ids).
    /// `current` is the task reaching the scheduling point if it may go on
    /// running, `None` when it has just blocked or finished. `step` counts
    /// scheduling points since the start of the execution (from 1). Must
    /// return a member of `runnable`; the engine falls back to the first
    /// otherwise.
    fn choose(&mut self, runnable: &[TaskId], current: Option<TaskId>, step: u64) -> TaskId;

    /// The execution ended after `steps` scheduling points. An error means
    /// the execution did not follow the strategy's plan (replay divergence,
    /// nondeterminism) and is reported in [`RunReport::divergence`].
    fn end_execution(&mut self, _steps: u64) -> Result<(), ScheduleError> {
        Ok(())
    }

    /// Whether the engine should report every segment's accesses through
    /// [`on_event`](Self::on_event) (costs a few allocations per step).
    fn observes_events(&self) -> bool {
        false
    }

    /// A segment ended (only if [`observes_events`](Self::observes_events)).
    /// The segment reported right after a [`choose`](Self::choose) is the
    /// chosen task's; a segment with no `choose` before it was forced (its
    /// task was the only one that could run). Called with the engine's lock
    /// held: must not call into the shim.
    fn on_event(&mut self, _ev: &StepEvent<'_>) {}

    /// How the execution ended; called once, before
    /// [`end_execution`](Self::end_execution).
    fn on_outcome(&mut self, _outcome: &Outcome) {}

    /// Whether the decisions from now on may be the split node of a search
    /// split into parts: false while a [`before_split`] scope is open.
    /// Called when a scope opens or closes; every execution starts with
    /// none open.
    fn split_point(&mut self, _splittable: bool) {}
}

/// How a segment touched an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Was woken through it (by an unlock, a notify, an unpark, a finish, a
    /// spawn), or acquires a mutex after its last release, or joins a
    /// finished task: ordered after the segments that wrote it, but never a
    /// race with them, since the task could not have gone first (it would
    /// have blocked until that write, ending in the same state). Declared
    /// first: a segment that also reads or writes the object keeps the
    /// stronger access.
    Wake,
    /// Observes the object only (atomic load, `is_finished`, a `try_lock`
    /// observing the mutex's releases, being a member of a group).
    Read,
    /// A [`RefCount`](crate::atomic::RefCount) get by a holder: it changes
    /// the count but observes nothing, and the getter's reference keeps the
    /// count at two or more while another holder drops its own, so a get
    /// commutes with every put and every other get (no put releases in
    /// either order). A write for reads and writes of the count.
    Get,
    /// A [`RefCount`](crate::atomic::RefCount) put that does not release
    /// (it found two or more). Two of them commute: if the first found `c`
    /// and the second `c - 1 >= 2`, then in the other order they find `c`
    /// and `c - 1`, so the count ends the same and neither releases. It
    /// races with the releasing [`Put`](Access::Put): moved after it, this
    /// put would be the one that releases. *Not* independent of another
    /// such put for sleep sets: after another holder's put, a sleeping
    /// holder's recorded put may have become the releasing one, a different
    /// step from the one the sleep set recorded, so such a step wakes the
    /// sleeper.
    Count,
    /// The [`RefCount`](crate::atomic::RefCount) put that releases (it
    /// found one): which holder's put releases depends on the order of the
    /// puts, so it races with every other put; no get can be concurrent
    /// with it (a getter's own reference would keep the count above one).
    Put,
    /// Sets bits it does not observe (an [`AtomicBits`](crate::atomic::AtomicBits)
    /// idempotent set): a write for reads and writes, but two sets commute
    /// (either order leaves the same word and neither saw the other).
    Set,
    /// Changes it, or its waiters (store, read-modify-write, mutex
    /// acquisition and release, wait, notify, park, unpark, spawn, finish,
    /// stall).
    Write,
    /// Both, in one segment: woken through it (or acquiring after its last
    /// release), then changing it (a task spawned and finished without a
    /// scheduling point between; a critical section with none inside). Ordered
    /// after the last write like [`Wake`](Access::Wake), never a race with
    /// it; a write for everything after.
    WakeWrite,
}

impl Access {
    /// Whether it changes the object ([`Write`](Access::Write) or
    /// [`WakeWrite`](Access::WakeWrite)).
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::WakeWrite | Access::Set)
    }

    /// Whether two accesses of one object by different tasks conflict:
    /// one writes, and they are not both idempotent sets; of a reference
    /// count's steps only the releasing put conflicts with the other puts.
    pub fn conflicts(self, other: Access) -> bool {
        use Access::{Count, Get, Put};
        match (self, other) {
            (Get, Get | Count | Put) | (Count | Put, Get) | (Count, Count) => false,
            (Get | Count | Put, _) | (_, Get | Count | Put) => true,
            _ => {
                (self.writes() || other.writes()) && !(self == Access::Set && other == Access::Set)
            }
        }
    }

    /// Whether a step with this access wakes a sleeper whose recorded next
    /// step has `other` on the same object: a conflict, or two puts that do
    /// not release (see [`Count`](Access::Count)). A get never wakes a put:
    /// it only takes a put further from zero, and a put that does not
    /// release conflicts with less than the releasing put the sleeper may
    /// have recorded.
    pub fn wakes_sleeper(self, other: Access) -> bool {
        self.conflicts(other) || (self == Access::Count && other == Access::Count)
    }
}

/// One segment of an execution, as reported to [`Strategy::on_event`].
#[derive(Clone, Copy, Debug)]
pub struct StepEvent<'a> {
    /// The task that ran it; `None` for a jump of the virtual clock, which
    /// conflicts with every other segment.
    pub task: Option<TaskId>,
    /// Objects touched, by execution-local number (first-touch order),
    /// ascending, each once (a read and a write of one object is a write).
    pub accesses: &'a [(u32, Access)],
    /// Objects numbered at or above this were first touched by this segment.
    pub fresh_from: u32,
}

/// Parameters of one execution.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Scheduling points after which the execution ends with
    /// [`Outcome::StepLimit`] (livelock, unbounded spinning).
    pub max_steps: u64,
    /// Virtual time at the start, in nanoseconds.
    pub start_ns: u64,
    /// Real time to wait for left-over tasks to unwind.
    pub unwind_timeout: Duration,
    /// Whether task panics are also printed: a line naming the task, then
    /// the previous panic hook's report (whose thread name is the pool
    /// thread's). They are always recorded in [`RunReport::panics`].
    pub print_panics: bool,
    /// Bind every task thread of the execution, and the calling thread
    /// while the execution runs, to one CPU (Linux). Only one task runs at
    /// a time anyway, and a hand-over between threads of one CPU avoids a
    /// cross-CPU wake-up: about 3-10x more switches per second on the
    /// 2-CPU reference machine (`examples/sched_throughput.rs`). The CPU is
    /// chosen once per calling thread, round-robin over the CPUs the
    /// process may use: threads running executions side by side (the
    /// matrix's workers) spread out, and a search's executions and its
    /// bookkeeping between them stay on one CPU. The calling thread's
    /// binding is restored when the execution ends.
    pub pin_to_one_cpu: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            max_steps: 100_000,
            start_ns: 1_000_000_000,
            unwind_timeout: Duration::from_secs(2),
            print_panics: false,
            pin_to_one_cpu: true,
        }
    }
}

/// What a task was waiting for when the execution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockedOn {
    /// Nothing: the task was runnable (a stalled task, or a step-limit end).
    Nothing,
    /// A shim resource: `kind` is `"mutex"`, `"condvar"`, ...; `resource` is
    /// its address (stable within one execution only).
    Resource {
        /// Kind of the resource.
        kind: &'static str,
        /// Address of the resource.
        resource: usize,
    },
    /// `thread::park`.
    Park,
    /// `thread::sleep`.
    Sleep,
    /// `JoinHandle::join` of that task.
    Join(TaskId),
}

/// A task that had not finished when the execution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Task id.
    pub id: TaskId,
    /// Task name (the thread name given to the shim, or `task<N>`).
    pub name: String,
    /// Group (see [`set_group`]).
    pub group: String,
    /// What it waited for.
    pub blocked_on: BlockedOn,
    /// Virtual deadline of its wait, if any.
    pub deadline_ns: Option<u64>,
    /// Whether its group was stalled.
    pub stalled: bool,
}

impl std::fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} '{}' (group {})", self.id, self.name, self.group)?;
        match &self.blocked_on {
            BlockedOn::Nothing => write!(f, " runnable")?,
            BlockedOn::Resource { kind, resource } => {
                write!(f, " blocked on {kind} {resource:#x}")?
            }
            BlockedOn::Park => write!(f, " parked")?,
            BlockedOn::Sleep => write!(f, " sleeping")?,
            BlockedOn::Join(t) => write!(f, " joining task {t}")?,
        }
        if let Some(d) = self.deadline_ns {
            write!(f, " until {d} ns")?;
        }
        if self.stalled {
            write!(f, ", stalled")?;
        }
        Ok(())
    }
}

/// How an execution ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every task finished.
    Completed,
    /// Every task finished except stalled ones (which never run again).
    CompletedWithStalled {
        /// The stalled, unfinished tasks.
        stalled: Vec<TaskInfo>,
    },
    /// Unfinished, non-stalled tasks remain and none can ever run.
    Deadlock {
        /// Every unfinished task (stalled or not) and what it waits for.
        tasks: Vec<TaskInfo>,
    },
    /// [`RunConfig::max_steps`] scheduling points were reached.
    StepLimit,
}

/// A panic inside a task (the abort unwinding is not one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPanic {
    /// Name of the task.
    pub task: String,
    /// Panic message and location.
    pub message: String,
}

/// Everything one execution produced.
#[derive(Debug)]
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
    /// The per-execution state higher layers kept in extension slots
    /// ([`with_extension`]).
    pub extensions: Extensions,
    /// Panics of tasks, in order.
    pub panics: Vec<TaskPanic>,
    /// Tasks whose body had not been left [`RunConfig::unwind_timeout`]
    /// after the end; their threads are left running (detached, lost to
    /// the thread pool) on real primitives.
    pub leaked_threads: usize,
    /// The strategy's complaint about this execution (see
    /// [`Strategy::end_execution`]).
    pub divergence: Option<ScheduleError>,
}

/// Runs `f` as the root task (id 0, name and group `"main"`) of a new
/// execution scheduled by `strategy`, and returns when the execution has
/// ended and its left-over threads have unwound (or the unwind timeout
/// passed). Call [`Strategy::next_execution`] first.
pub fn run<F: FnOnce() + Send + 'static>(
    strategy: &mut dyn Strategy,
    cfg: &RunConfig,
    f: F,
) -> RunReport {
    engine::run(strategy, cfg, f)
}

/// Puts the calling task in group `name` (tasks it spawns later inherit
/// it). No effect outside a controlled execution.
pub fn set_group(name: &str) {
    if let Some((e, me)) = engine::ctx() {
        e.set_group(me, name);
    }
}

/// Never schedules a task of group `name` again (tasks that join the group
/// later included). This models "userspace never gets scheduled again". A
/// scheduling point; if the caller is in the group it never returns (it is
/// unwound when the execution ends). No effect outside an execution.
pub fn stall_group(name: &str) {
    if let Some((e, me)) = engine::ctx() {
        e.stall_group(me, name);
    }
}

/// A scope whose decisions are above the split node of a search split into
/// parts ([`SearchShard`](strategy::SearchShard)): every part explores
/// them all, and the split node is the first decision made after the
/// scope closes. For a choice a program makes before anything else runs
/// (which of its alternatives to run, by a race of tasks that touch
/// nothing else): split at the choice, a part would get whole
/// alternatives; split below it, each part gets its share of each. The
/// decisions inside must race with nothing after the scope, or a part
/// could miss an order that another part's executions would have shown.
/// [`Dpor`](strategy::Dpor) honours it; [`Dfs`](strategy::Dfs) splits at
/// its first decision whatever the scope (its parts still partition the
/// search). No effect outside a controlled execution.
pub fn before_split() -> BeforeSplit {
    let open = match engine::ctx() {
        Some((e, _)) => {
            e.before_split(true);
            true
        }
        None => false,
    };
    BeforeSplit { open }
}

/// The scope [`before_split`] opened; closes it when dropped.
#[must_use = "the scope ends when the guard is dropped"]
pub struct BeforeSplit {
    open: bool,
}

impl Drop for BeforeSplit {
    fn drop(&mut self) {
        if self.open
            && let Some((e, _)) = engine::ctx()
        {
            e.before_split(false);
        }
    }
}

/// Whether the calling thread is a task of a live controlled execution.
#[inline(always)]
pub fn active() -> bool {
    LIVE_EXECUTIONS.load(Ordering::Relaxed) != 0 && engine::is_task_thread()
}

/// A scheduling point if the caller is a controlled task; nothing otherwise.
#[inline(always)]
pub fn point() {
    if active() {
        yield_point();
    }
}

/// A scheduling point (no effect unless the caller is a controlled task).
pub fn yield_point() {
    if in_unobserved() {
        return;
    }
    if let Some((e, me)) = engine::ctx() {
        e.yield_now(me, false, &[]);
    }
}

/// A scheduling point before an operation on the object at `addr` (an
/// atomic, a mutex, a condvar) that accesses it as `access`: the access
/// belongs to the caller's next segment. Nothing outside an execution.
#[inline(always)]
pub fn point_on(addr: usize, access: Access) {
    if active() {
        yield_point_on(addr, access);
    }
}

/// [`point_on`] without the fast check. Inside a [`one_event`] scope, no
/// scheduling point: the access joins the running segment.
pub fn yield_point_on(addr: usize, access: Access) {
    if in_unobserved() {
        return;
    }
    if let Some((e, me)) = engine::ctx() {
        if in_one_event() {
            e.access(me, ObjKey::Addr(addr), access);
        } else {
            e.yield_now(me, false, &[(ObjKey::Addr(addr), access)]);
        }
    }
}

std::thread_local! {
    static ONE_EVENT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static UNOBSERVED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One level of a thread's nesting of one kind of scope (a thread-local
/// count); the level is left when it is dropped.
struct Depth {
    count: &'static std::thread::LocalKey<std::cell::Cell<u32>>,
    /// Thread-bound: the scope is the calling thread's.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Depth {
    fn enter(count: &'static std::thread::LocalKey<std::cell::Cell<u32>>) -> Self {
        count.with(|c| c.set(c.get() + 1));
        Self {
            count,
            _thread: std::marker::PhantomData,
        }
    }

    #[inline(always)]
    fn inside(count: &'static std::thread::LocalKey<std::cell::Cell<u32>>) -> bool {
        count.with(std::cell::Cell::get) != 0
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        self.count.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

fn in_one_event() -> bool {
    Depth::inside(&ONE_EVENT)
}

#[inline(always)]
fn in_unobserved() -> bool {
    Depth::inside(&UNOBSERVED)
}

/// A scope that is one event of the model ([`one_event`]): while it lives,
/// the calling thread's atomic operations (shim atomics, [`AtomicBits`],
/// [`RefCount`]) make no scheduling point of their own and their accesses
/// join the running segment. Blocking operations (a mutex, a condvar, a
/// park) still make theirs: what follows one belongs to the segment it
/// starts.
///
/// [`AtomicBits`]: crate::atomic::AtomicBits
/// [`RefCount`]: crate::atomic::RefCount
#[must_use = "the scope ends when the guard is dropped"]
pub struct OneEvent {
    _depth: Depth,
}

/// Begins a scope that the exploration sees as one event: one scheduling
/// point now, and none for the atomic operations the caller makes until
/// the guard is dropped (see [`OneEvent`]). For what the modelled system
/// does at one instant: a PCIe transaction checked against the fabric's
/// state, a device removed from the bus with its BAR ranges. Scopes nest;
/// outside a controlled execution only a thread-local counter moves.
pub fn one_event() -> OneEvent {
    if active() && !in_one_event() {
        yield_point();
    }
    same_event()
}

/// [`one_event`] without its scheduling point: the atomic operations of
/// the scope join the segment already running (after a point the caller
/// made itself, such as [`acquire_point`]).
pub fn same_event() -> OneEvent {
    OneEvent {
        _depth: Depth::enter(&ONE_EVENT),
    }
}

/// A scope the exploration does not see ([`unobserved`]).
#[must_use = "the scope ends when the guard is dropped"]
pub struct Unobserved {
    _depth: Depth,
}

/// Begins a scope whose non-blocking operations the exploration does not
/// see: while the guard lives, the calling thread's scheduling points
/// ([`point`], [`point_on`], the shim atomics' and [`one_event`]'s) are
/// skipped and their accesses are not recorded, so the code runs inside
/// the segment already running and is ordered against nothing. Sound only
/// for code whose effects nothing in the program reads: an observer that
/// reads shared state and writes only plain bookkeeping (a device's
/// speculative read, whose data is discarded and whose only trace is the
/// hazard monitor's record). What such code observes then depends on
/// where the search happened to run it, so a verdict judged from it is not
/// covered by the search (see `read_ahead_unordered` in the scenario
/// crate). Blocking operations (a mutex, a condvar, a park) do not belong
/// in the scope: they still block and make their points. Scopes nest;
/// outside a controlled execution only a thread-local counter moves.
pub fn unobserved() -> Unobserved {
    Unobserved {
        _depth: Depth::enter(&UNOBSERVED),
    }
}

/// A scheduling point before an operation on the bits of the
/// [`AtomicBits`](crate::atomic::AtomicBits) word at `addr` that reads the
/// bits in `read` and writes those in `write`: each bit is an object of its
/// own, so the operation races only with operations on the same bits.
/// Nothing outside an execution.
#[inline(always)]
pub fn point_on_bits(addr: usize, read: u32, write: u32) {
    if active() {
        yield_point_on_bits(addr, read, write, 0);
    }
}

/// [`point_on_bits`] for an operation that also sets the bits of `set`
/// without observing them ([`Access::Set`]).
#[inline(always)]
pub fn point_on_bits_set(addr: usize, read: u32, set: u32) {
    if active() {
        yield_point_on_bits(addr, read, 0, set);
    }
}

/// [`point_on_bits`] without the fast check; bits in `set` (and not in
/// `read` or `write`) are idempotent sets ([`Access::Set`]).
pub fn yield_point_on_bits(addr: usize, read: u32, write: u32, set: u32) {
    if in_unobserved() {
        return;
    }
    if let Some((e, me)) = engine::ctx() {
        let mut acc = [(ObjKey::Bit(addr, 0), Access::Read); 32];
        let mut n = 0;
        for b in 0..32u8 {
            let m = 1u32 << b;
            let a = if write & m != 0 || (set & m != 0 && read & m != 0) {
                Access::Write
            } else if set & m != 0 {
                Access::Set
            } else if read & m != 0 {
                Access::Read
            } else {
                continue;
            };
            acc[n] = (ObjKey::Bit(addr, b), a);
            n += 1;
        }
        if in_one_event() {
            for &(k, a) in &acc[..n] {
                e.access(me, k, a);
            }
        } else {
            e.yield_now(me, false, &acc[..n]);
        }
    }
}

/// What a task blocked on a shim resource ([`block_on`]) waits for. The kind
/// decides what the blocking attempt is for the exploration (see the
/// notes on soundness in [`strategy::Dpor`]'s module documentation) and names the wait
/// in deadlock reports ([`BlockedOn::Resource`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitKind {
    /// A contended mutex: the failed acquisition is no event (its
    /// announced accesses are withdrawn); the release wakes it.
    Mutex,
    /// A condvar wait: a write of the condvar.
    Condvar,
    /// A [`SetOnce`](crate::SetOnce) not set yet: no event.
    SetOnce,
    /// A [`Monotone`](crate::Monotone) predicate still false: no event.
    Monotone,
    /// A [`Guarded`](crate::Guarded) check that found nothing to do: no
    /// event (its announced access is withdrawn).
    WaitQueue,
}

impl WaitKind {
    /// The name deadlock reports use.
    pub fn name(self) -> &'static str {
        match self {
            WaitKind::Mutex => "mutex",
            WaitKind::Condvar => "condvar",
            WaitKind::SetOnce => "set-once",
            WaitKind::Monotone => "monotone",
            WaitKind::WaitQueue => "wait-queue",
        }
    }
}

/// The scheduling point before a blocking acquisition of the mutex at
/// `addr`. The acquisition races with other acquisitions of the mutex (who
/// gets it first) and is ordered after the last [`release`] of it without
/// racing with it: an acquisition cannot overtake a release, it would block
/// until it. If the mutex is held, the caller must [`block_on`] it with
/// [`WaitKind::Mutex`], which withdraws the announced accesses (a failed acquisition
/// is no event) and try again when woken.
pub fn acquire_point(addr: usize) {
    lock_point(addr, Access::Write, Access::Wake);
}

/// The scheduling point before a non-blocking acquisition attempt
/// (`try_lock`): its result depends on whether the last release came
/// first, so it reads the mutex's releases (and races with them).
pub fn try_acquire_point(addr: usize) {
    lock_point(addr, Access::Write, Access::Read);
}

/// A scheduling point announcing `lock` on the lock at `addr` and
/// `releases` on its releases.
fn lock_point(addr: usize, lock: Access, releases: Access) {
    if let Some((e, me)) = engine::ctx() {
        e.yield_now(
            me,
            false,
            &[
                (ObjKey::Addr(addr), lock),
                (ObjKey::Release(addr), releases),
            ],
        );
    }
}

/// The scheduling point before a look at a lock's state that neither
/// takes nor releases it (`ww_mutex_is_locked`): a read of the lock and of
/// its releases.
pub fn observe_lock_point(addr: usize) {
    lock_point(addr, Access::Read, Access::Read);
}

/// Releases the mutex at `addr`: wakes the tasks blocked on it (see
/// [`acquire_point`]). Not a scheduling point.
pub fn release(addr: usize) {
    if let Some((e, me)) = engine::ctx() {
        e.release(me, addr);
    }
}

/// The object at `addr` is being dropped (see the shim types' `Drop`): its
/// execution-local numbers are forgotten, so that an object allocated later
/// at the same address is numbered as the new object it is. Nothing outside
/// an execution.
#[inline(always)]
pub fn forget(addr: usize) {
    if active()
        && let Some((e, _)) = engine::ctx()
    {
        e.forget(addr, Forget::Plain);
    }
}

/// [`forget`] for an [`AtomicBits`](crate::atomic::AtomicBits) word: its
/// per-bit numbers too.
#[inline(always)]
pub fn forget_bits(addr: usize) {
    if active()
        && let Some((e, _)) = engine::ctx()
    {
        e.forget(addr, Forget::Bits);
    }
}

/// [`forget`] for a versioned cell (a [`Monotone`](crate::Monotone)) that
/// had `versions` updates: the numbers of its versions too.
#[inline(always)]
pub fn forget_versions(addr: usize, versions: u32) {
    if active()
        && let Some((e, _)) = engine::ctx()
    {
        e.forget(addr, Forget::Versions(versions));
    }
}

/// Records that the running segment of the caller observed version `n`
/// (from 1) of the versioned cell at `addr` as a wake-up: it is ordered
/// after the `n`-th update (see [`unblock_all_version`]) and never races
/// with it. Not a scheduling point; nothing outside an execution.
pub fn wake_on_version(addr: usize, n: u32) {
    if let Some((e, me)) = engine::ctx() {
        e.access(me, ObjKey::Version(addr, n), Access::Wake);
    }
}

/// Records that the running segment of the caller touched the object at
/// `addr` (an operation that is not a scheduling point of its own, such as
/// a mutex release). Not a scheduling point; nothing outside an execution.
pub fn access(addr: usize, access: Access) {
    if in_unobserved() {
        return;
    }
    if let Some((e, me)) = engine::ctx() {
        e.access(me, ObjKey::Addr(addr), access);
    }
}

/// An explicit yield (`thread::yield_now`): a scheduling point at which
/// another runnable task, if there is one, is chosen. Without this, a
/// spin-wait loop would run until the step limit under strategies that
/// prefer the current task (DFS's first branch, PCT's highest priority).
pub fn yield_now() {
    if let Some((e, me)) = engine::ctx() {
        e.yield_now(me, true, &[]);
    }
}

/// Blocks the calling task until `unblock_one/all(resource)`.
pub fn block_on(resource: usize, kind: WaitKind) {
    if let Some((e, me)) = engine::ctx() {
        e.block(me, Wait::Resource { resource, kind }, None);
    }
}

/// Like `block_on` with a virtual-time deadline; returns true on timeout.
pub fn block_on_until(resource: usize, kind: WaitKind, deadline_ns: u64) -> bool {
    match engine::ctx() {
        Some((e, me)) => e.block(me, Wait::Resource { resource, kind }, Some(deadline_ns)),
        None => true,
    }
}

/// Makes every task blocked on `resource` runnable.
pub fn unblock_all(resource: usize) {
    if let Some((e, me)) = engine::ctx() {
        e.unblock(me, resource, false);
    }
}

/// The `n`-th update (from 1) of the versioned cell at `addr` (a
/// [`Monotone`](crate::Monotone)), in the segment that makes it: writes
/// that version and makes every task blocked on `addr` runnable, their
/// next segments ordered after this update (and not after a later update
/// that runs before them).
pub fn unblock_all_version(addr: usize, n: u32) {
    if let Some((e, me)) = engine::ctx() {
        e.unblock_version(me, addr, n);
    }
}

/// Makes the lowest-numbered task blocked on `resource` runnable.
pub fn unblock_one(resource: usize) {
    if let Some((e, me)) = engine::ctx() {
        e.unblock(me, resource, true);
    }
}

/// Virtual time of the caller's execution (`CLOCK_MONOTONIC` outside one).
pub fn now_ns() -> u64 {
    match engine::ctx() {
        Some((e, _)) => e.now_ns(),
        None => crate::time::monotonic_ns(),
    }
}

/// The caller's task id, if it is a controlled task.
pub fn current_task() -> Option<TaskId> {
    engine::ctx().map(|(_, me)| me)
}

/// Unparks `task` of the caller's execution (a scheduling point). Returns
/// false if the caller is not a controlled task or there is no such task;
/// the shim then uses the std unpark.
pub fn unpark(task: TaskId) -> bool {
    match engine::ctx() {
        Some((e, me)) => {
            e.yield_now(me, false, &[]);
            e.unpark(me, task)
        }
        None => false,
    }
}

/// Parks the caller until its token is set or the deadline passes.
pub fn park(deadline_ns: Option<u64>) {
    if let Some((e, me)) = engine::ctx() {
        e.block(me, Wait::Park, deadline_ns);
    }
}

/// Sleeps in virtual time.
pub fn sleep(ns: u64) {
    if let Some((e, me)) = engine::ctx() {
        let deadline = e.now_ns().saturating_add(ns);
        e.block(me, Wait::Sleep, Some(deadline));
    }
}

/// Waits until the task has finished.
pub fn join(task: TaskId) {
    if let Some((e, me)) = engine::ctx() {
        e.block(me, Wait::Join(task), None);
    }
}

/// Whether `task` of the caller's execution has finished (`None` outside an
/// execution). Unlike the OS thread's state this does not depend on real
/// timing, so polling it keeps replays identical.
pub fn is_finished(task: TaskId) -> Option<bool> {
    engine::ctx().map(|(e, me)| e.is_finished(me, task))
}

/// Spawns a task of the caller's execution (a scheduling point right after
/// the task exists, so it may run first); `Err(f)` back outside an
/// execution.
pub fn spawn<F, T>(name: String, f: F) -> Result<(TaskId, TaskJoin<T>), F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match engine::ctx() {
        Some((e, me)) => Ok(e.spawn(me, name, f)),
        None => Err(f),
    }
}

/// The caller's task name, if it is a controlled task (its thread is one
/// of the engine's reused task threads, whose OS name says nothing).
pub fn current_task_name() -> Option<String> {
    engine::ctx().map(|(e, me)| e.task_name(me))
}

/// A per-execution counter (context ids, inode numbers) so that replays see
/// identical numbers: returns the first of `n` consecutive values of `key`
/// (starting at 1); `None` on real threads.
pub fn local_counter(key: &'static str, n: u64) -> Option<u64> {
    engine::ctx().map(|(e, me)| e.local_counter(me, key, n))
}

/// Runs `f` on the caller's execution's extension slot of type `T`
/// (created with `T::default()` on first use), with `here` describing the
/// caller; `None` on real threads. Not a scheduling point. `f` runs with
/// the engine's lock held: it must not call into the shim or block. Higher
/// layers keep their per-execution state here (the trace log, validator
/// reports); [`RunReport::extensions`] hands the slots back after the run.
pub fn with_extension<T, R>(f: impl FnOnce(&mut T, &Here<'_>) -> R) -> Option<R>
where
    T: Default + Send + 'static,
{
    engine::ctx().map(|(e, me)| e.with_extension(me, f))
}
