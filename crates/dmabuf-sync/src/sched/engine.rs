//! The engine behind the facade: execution state, the baton, tasks (on
//! the threads of `pool.rs`), end-of-execution detection and unwinding.
//!
//! Lock rules: `Execution::state` (a `parking_lot` mutex, because the engine
//! must not schedule itself) is taken for short, non-blocking updates only.
//! It is released before a task gives the baton away or waits for it, and
//! it is never held while user code runs. The strategy is called with it
//! held, which is what makes the strategy pointer safe (see `StrategyPtr`).
//!
//! Baton protocol: exactly one task, the one whose baton was given last,
//! may run user code. It hands over by setting the chosen task's `go` flag
//! and unparking that task's thread, then waits for its own flag (a flag
//! plus `park` rather than a mutex and condvar: one atomic and at most one
//! futex call per side). While aborting, every unfinished task's flag is set
//! at once and each of them unwinds.

use super::extension::{Extensions, Here};
use super::pool;
use super::{
    Access, BlockedOn, Outcome, RunConfig, RunReport, Schedule, StepEvent, Strategy, TaskId,
    TaskInfo, TaskPanic, WaitKind,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Instant;

/// Number of executions between start and the end of their unwinding; zero
/// lets [`super::active`] answer without touching thread-local storage.
pub(super) static LIVE_EXECUTIONS: AtomicUsize = AtomicUsize::new(0);

/// Panic payload that unwinds a left-over task when its execution ends.
struct Aborted;

/// What a blocked task waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// A shim resource (mutex, condvar), by address.
    Resource { resource: usize, kind: WaitKind },
    /// `thread::park`.
    Park,
    /// `thread::sleep`.
    Sleep,
    /// Another task finishing.
    Join(TaskId),
}

/// An object a segment touches, as the engine keys it within one execution
/// (see "What the engine reports to a strategy" in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum ObjKey {
    /// A shim object (atomic, mutex, condvar) by address.
    Addr(usize),
    /// One bit of an [`AtomicBits`](crate::atomic::AtomicBits) word, by the
    /// word's address and the bit's index: the bits of one word are
    /// separate objects, so operations on disjoint bits do not race.
    Bit(usize, u8),
    /// A task's park token.
    Park(TaskId),
    /// A task's existence and completion (spawn, finish, join).
    Task(TaskId),
    /// A group's membership and stall (by index in `State::groups`).
    Group(usize),
    /// A per-execution counter, by its key's address.
    Counter(usize),
    /// A mutex's releases, by the mutex's address. Acquisitions are
    /// accesses of `Addr` (they race with each other: who gets the lock
    /// first); a release writes this key and the next acquisition is a
    /// wake-up on it (ordered after the release, never reversed with it:
    /// an acquisition that comes first cannot succeed, it blocks until the
    /// release, which ends in the same state).
    Release(usize),
    /// The `n`-th update (from 1) of a versioned cell (a
    /// [`Monotone`](crate::Monotone)), by the cell's address. An update
    /// writes the cell's `Addr` (updates race with each other and with
    /// reads) and its own version; a waiter whose predicate holds is a
    /// wake-up on the first version at which it held, so it is ordered
    /// after that update and not after the later ones, with which it
    /// commutes (it observes only that its predicate holds).
    Version(usize, u32),
    /// One wake-up (a condvar notify or an unpark that made a blocked task
    /// runnable), numbered per execution: the waker writes it and the
    /// woken task's next segment observes it, so that segment is ordered
    /// after its waker and not after a later notify or unpark that runs
    /// before it.
    Wakeup(u32),
}

/// What to forget of a dropped object ([`Execution::forget`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Forget {
    /// Its address (and its mutex releases).
    Plain,
    /// Also its 32 bits ([`ObjKey::Bit`]).
    Bits,
    /// Also its versions `1..=n` ([`ObjKey::Version`]).
    Versions(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Runnable,
    Blocked { wait: Wait, deadline: Option<u64> },
    Finished,
}

/// Hand-over flag of one task.
struct Baton {
    go: AtomicBool,
    /// Set by the spawner before anybody can give this baton.
    thread: OnceLock<std::thread::Thread>,
}

impl Baton {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            go: AtomicBool::new(false),
            thread: OnceLock::new(),
        })
    }

    fn give(&self) {
        self.go.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Waits for the baton. `park` may return spuriously (or because user
    /// code unparked this OS thread), hence the flag.
    fn take(&self) {
        while !self.go.swap(false, Ordering::Acquire) {
            std::thread::park();
        }
    }
}

struct Task {
    name: String,
    group: String,
    /// Index of `group` in `State::groups` (only kept when recording).
    group_ix: usize,
    state: TaskState,
    stalled: bool,
    park_token: bool,
    timed_out: bool,
    baton: Arc<Baton>,
    /// Accesses that belong to this task's next segment (an announced
    /// operation, what woke it).
    pending: Vec<(ObjKey, Access)>,
}

impl Task {
    fn new(name: String, group: String, group_ix: usize, stalled: bool) -> Self {
        Self {
            name,
            group,
            group_ix,
            state: TaskState::Runnable,
            stalled,
            park_token: false,
            timed_out: false,
            baton: Baton::new(),
            pending: Vec::new(),
        }
    }

    fn eligible(&self) -> bool {
        self.state == TaskState::Runnable && !self.stalled
    }

    fn info(&self, id: TaskId) -> TaskInfo {
        let (blocked_on, deadline_ns) = match self.state {
            TaskState::Runnable | TaskState::Finished => (BlockedOn::Nothing, None),
            TaskState::Blocked { wait, deadline } => (
                match wait {
                    Wait::Resource { resource, kind } => BlockedOn::Resource {
                        kind: kind.name(),
                        resource,
                    },
                    Wait::Park => BlockedOn::Park,
                    Wait::Sleep => BlockedOn::Sleep,
                    Wait::Join(t) => BlockedOn::Join(t),
                },
                deadline,
            ),
        };
        TaskInfo {
            id,
            name: self.name.clone(),
            group: self.group.clone(),
            blocked_on,
            deadline_ns,
            stalled: self.stalled,
        }
    }
}

/// The caller's `&mut dyn Strategy`, lifetime erased.
struct StrategyPtr(*mut (dyn Strategy + 'static));

// SAFETY: `Strategy: Send`. The pointer is dereferenced only with the state
// lock held (so by one thread at a time), and `run` takes it out of the
// state under that lock before it returns, i.e. while the `&mut` it came
// from is still borrowed.
unsafe impl Send for StrategyPtr {}

struct State {
    tasks: Vec<Task>,
    start_ns: u64,
    clock: u64,
    steps: u64,
    max_steps: u64,
    switches: u64,
    /// Decisions at which the running task could have gone on but another
    /// was chosen (reported to extensions through `Here`).
    preemptions: u64,
    schedule: Schedule,
    strategy: Option<StrategyPtr>,
    stalled_groups: Vec<String>,
    /// Open [`before_split`](super::before_split) scopes: decisions made
    /// while one is open are not split points.
    before_split: u32,
    outcome: Option<Outcome>,
    /// Extension slots of higher layers.
    extensions: Extensions,
    counters: HashMap<&'static str, u64>,
    /// Whether segments are reported to the strategy.
    record: bool,
    /// Accesses of the running segment (when recording).
    cur: Vec<(ObjKey, Access)>,
    /// Execution-local object numbers, in first-touch order, of the objects
    /// alive (a dropped object's key is forgotten: [`Execution::forget`]).
    objs: rustc_hash::FxHashMap<ObjKey, u32>,
    /// The next object number.
    next_obj: u32,
    /// The next [`ObjKey::Wakeup`] number.
    next_wakeup: u32,
    /// Objects dropped by the running segment, forgotten once it is
    /// reported (its own accesses to them still count).
    dropped: Vec<(usize, Forget)>,
    /// Group names by index (when recording).
    groups: Vec<String>,
    /// Reused buffer for a segment's numbered accesses.
    ev_buf: Vec<(u32, Access)>,
    panics: Vec<TaskPanic>,
    /// Tasks of this execution whose body has not been left yet.
    live_threads: usize,
    /// Reused buffer for the runnable set.
    scratch: Vec<TaskId>,
    /// Profiling (`DMABUF_DPOR_PROFILE`): where each object was first touched.
    descr: HashMap<ObjKey, String>,
    /// Tracing (`DMABUF_DPOR_TRACE`): the last code that made each
    /// (object, task, access), and the segments reported so far.
    callers: HashMap<(ObjKey, TaskId, Access), String>,
    segments: usize,
}

/// Whether `DMABUF_DPOR_PROFILE` is set: the engine then names every object
/// it numbers (by the code that first touched it) on stderr, and the DPOR
/// strategy names the objects of every race it reverses.
pub(super) fn profiling() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| std::env::var_os("DMABUF_DPOR_PROFILE").is_some() || tracing())
}

/// Whether `DMABUF_DPOR_TRACE` is set: the engine then also prints every
/// access of every segment with the code that made it (`DPOR-ACC <segment>
/// <task> <object> <access> <fn <- fn ...>`), to be joined with the DPOR
/// strategy's `DPOR-RACE` lines. Slow: a backtrace per access.
pub(super) fn tracing() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| std::env::var_os("DMABUF_DPOR_TRACE").is_some())
}

/// The caller's code above the shim, as `fn <- fn <- fn`.
fn caller_summary() -> String {
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let mut out: Vec<String> = Vec::new();
    for line in bt.lines() {
        let l = line.trim();
        let Some((_, f)) = l.split_once(": ") else {
            continue;
        };
        if !f.contains("dmabuf_") || f.contains("dmabuf_sync::") {
            continue;
        }
        let f = f.rsplit_once("::h").map_or(f, |x| x.0);
        out.push(f.to_owned());
        if out.len() == 4 {
            break;
        }
    }
    out.join(" <- ")
}

/// One execution.
pub(super) struct Execution {
    /// Set once, when the execution ends; tasks then unwind on real
    /// primitives.
    aborting: AtomicBool,
    print_panics: bool,
    /// The CPU every task thread is bound to, if any.
    cpu: Option<usize>,
    state: Mutex<State>,
    /// Signalled when the outcome is set and whenever a thread exits.
    done: Condvar,
}

/// What the task at a scheduling point must do after releasing the lock.
enum Next {
    /// Go on running.
    Same,
    /// Give this baton, then wait for its own.
    Switch(Arc<Baton>),
    /// The execution ended: wake all these tasks so they unwind.
    Ended(Vec<Arc<Baton>>),
}

struct TaskCtx {
    exec: Arc<Execution>,
    id: TaskId,
}

std::thread_local! {
    static CURRENT: RefCell<Option<TaskCtx>> = const { RefCell::new(None) };
    /// Message of the last panic on this thread, left by the panic hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The cold half of [`super::active`].
#[cold]
pub(super) fn is_task_thread() -> bool {
    CURRENT
        .try_with(|c| {
            c.try_borrow()
                .ok()
                .is_some_and(|c| c.as_ref().is_some_and(|t| !t.exec.aborting()))
        })
        .unwrap_or(false)
}

/// The caller's execution and task id, if it is a task of a live,
/// non-aborting execution.
pub(super) fn ctx() -> Option<(Arc<Execution>, TaskId)> {
    if LIVE_EXECUTIONS.load(Ordering::Relaxed) == 0 {
        return None;
    }
    CURRENT
        .try_with(|c| {
            let c = c.try_borrow().ok()?;
            let t = c.as_ref()?;
            (!t.exec.aborting()).then(|| (t.exec.clone(), t.id))
        })
        .ok()
        .flatten()
}

fn set_ctx(v: Option<TaskCtx>) {
    crate::rcu::set_controlled(v.is_some());
    let old = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), v));
    drop(old);
}

fn unwind() -> ! {
    panic::resume_unwind(Box::new(Aborted))
}

impl Execution {
    fn aborting(&self) -> bool {
        self.aborting.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Counts a scheduling point; ends the execution at the step limit.
    fn step(&self, st: &mut State, me: TaskId) -> Option<Next> {
        st.steps += 1;
        (st.steps > st.max_steps).then(|| self.end(st, me, Outcome::StepLimit))
    }

    /// Picks the task to run next. `me` (the task at the scheduling point)
    /// has already recorded its own new state.
    fn pick(&self, st: &mut State, me: TaskId) -> Next {
        self.pick_excluding(st, me, None)
    }

    /// The running segment of `me` ends here: number its accesses and
    /// report it (when recording).
    fn end_segment(&self, st: &mut State, me: TaskId) {
        if !st.record {
            return;
        }
        let g = st.tasks[me].group_ix;
        let mut cur = std::mem::take(&mut st.cur);
        cur.push((ObjKey::Group(g), Access::Read));
        Self::report(st, Some(me), &cur);
        cur.clear();
        st.cur = cur;
    }

    fn report(st: &mut State, task: Option<TaskId>, accesses: &[(ObjKey, Access)]) {
        let fresh_from = st.next_obj;
        let mut buf = std::mem::take(&mut st.ev_buf);
        buf.clear();
        for &(k, a) in accesses {
            let n = st.next_obj;
            let id = *st.objs.entry(k).or_insert(n);
            if id == n {
                st.next_obj += 1;
            }
            if id == n && profiling() {
                let d = st.descr.get(&k).cloned().unwrap_or_default();
                eprintln!("DPOR-OBJ {id} {k:?} {d}");
            }
            buf.push((id, a));
            if tracing() {
                let c = task
                    .and_then(|t| st.callers.get(&(k, t, a)))
                    .map_or("", |c| c.as_str());
                eprintln!("DPOR-ACC {} {task:?} {id} {a:?} {c}", st.segments);
            }
        }
        st.segments += 1;
        // Ascending, one entry per object: a write wins over a read, a read
        // over a wake-up, and a wake-up with a write is both.
        buf.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
        let mut w = 0;
        for r in 0..buf.len() {
            if w > 0 && buf[w - 1].0 == buf[r].0 {
                match (buf[w - 1].1, buf[r].1) {
                    (Access::Write, Access::Wake) | (Access::Set, Access::Wake) => {
                        buf[w - 1].1 = Access::WakeWrite;
                    }
                    // Observed and set: not idempotent any more; observed
                    // and counted: no longer commutes with other counts.
                    (Access::Set | Access::Get | Access::Count | Access::Put, Access::Read) => {
                        buf[w - 1].1 = Access::Write
                    }
                    _ => {}
                }
                continue;
            }
            buf[w] = buf[r];
            w += 1;
        }
        buf.truncate(w);
        for (addr, what) in std::mem::take(&mut st.dropped) {
            st.objs.remove(&ObjKey::Addr(addr));
            st.objs.remove(&ObjKey::Release(addr));
            match what {
                Forget::Plain => {}
                Forget::Bits => {
                    for b in 0..32 {
                        st.objs.remove(&ObjKey::Bit(addr, b));
                    }
                }
                Forget::Versions(n) => {
                    for v in 1..=n {
                        st.objs.remove(&ObjKey::Version(addr, v));
                    }
                }
            }
        }
        if let Some(p) = &st.strategy {
            let ev = StepEvent {
                task,
                accesses: &buf,
                fresh_from,
            };
            // SAFETY: see `StrategyPtr`: the state lock is held.
            unsafe { (*p.0).on_event(&ev) };
        }
        st.ev_buf = buf;
    }

    /// Forgets the numbers of the object at `addr`, which is being dropped,
    /// once the running segment (which may have touched it last) is
    /// reported: an object allocated later at the same address is a new
    /// object with a new number. Without this, numbering would depend on where the
    /// allocator places things, which differs between executions (per-thread
    /// caches persist across them), and a replayed prefix could number its
    /// objects differently from the execution that recorded it.
    pub(super) fn forget(&self, addr: usize, what: Forget) {
        let mut st = self.lock();
        if st.record {
            st.dropped.push((addr, what));
        }
    }

    /// Records an access of the running segment of `me`.
    pub(super) fn access(&self, me: TaskId, k: ObjKey, a: Access) {
        let mut st = self.lock();
        if st.record {
            if profiling() && !st.descr.contains_key(&k) {
                st.descr.insert(k, caller_summary());
            }
            if tracing() {
                st.callers.insert((k, me, a), caller_summary());
            }
            st.cur.push((k, a));
        }
    }

    fn group_ix(st: &mut State, name: &str) -> usize {
        match st.groups.iter().position(|g| g == name) {
            Some(i) => i,
            None => {
                st.groups.push(name.to_owned());
                st.groups.len() - 1
            }
        }
    }

    /// As [`pick`](Self::pick); `avoid` is not chosen while another task
    /// can run (an explicit yield).
    fn pick_excluding(&self, st: &mut State, me: TaskId, avoid: Option<TaskId>) -> Next {
        loop {
            let mut runnable = std::mem::take(&mut st.scratch);
            runnable.clear();
            runnable.extend((0..st.tasks.len()).filter(|&i| st.tasks[i].eligible()));
            if let Some(a) = avoid
                && runnable.len() > 1
            {
                runnable.retain(|&t| t != a);
            }
            if runnable.is_empty() {
                st.scratch = runnable;
                if self.advance_clock(st) {
                    continue;
                }
                let outcome = end_outcome(st);
                return self.end(st, me, outcome);
            }
            let chosen = if runnable.len() == 1 {
                runnable[0]
            } else {
                let current = (st.tasks[me].eligible() && avoid != Some(me)).then_some(me);
                let step = st.steps;
                let c = match &st.strategy {
                    // SAFETY: see `StrategyPtr`: the state lock is held.
                    Some(p) => unsafe { (*p.0).choose(&runnable, current, step) },
                    None => runnable[0],
                };
                let c = if runnable.contains(&c) {
                    c
                } else {
                    runnable[0]
                };
                st.schedule.push(c);
                if current == Some(me) && c != me {
                    st.preemptions += 1;
                }
                c
            };
            st.scratch = runnable;
            if st.record {
                // The chosen task's segment starts: what was announced for
                // it, what woke it.
                // Swapped rather than moved, so both keep their buffers.
                let State { tasks, cur, .. } = st;
                std::mem::swap(cur, &mut tasks[chosen].pending);
                tasks[chosen].pending.clear();
            }
            if chosen == me {
                return Next::Same;
            }
            st.switches += 1;
            return Next::Switch(st.tasks[chosen].baton.clone());
        }
    }

    /// No task can run: jump to the earliest deadline of a non-stalled
    /// waiting task and wake every task whose deadline has passed.
    fn advance_clock(&self, st: &mut State) -> bool {
        let earliest = st
            .tasks
            .iter()
            .filter(|t| !t.stalled)
            .filter_map(|t| match t.state {
                TaskState::Blocked { deadline, .. } => deadline,
                _ => None,
            })
            .min();
        let Some(d) = earliest else {
            return false;
        };
        st.clock = st.clock.max(d);
        if st.record {
            // A jump of the clock is a segment of its own, ordered with
            // every other (it happens only when nothing else can run).
            Self::report(st, None, &[]);
        }
        let now = st.clock;
        for t in st.tasks.iter_mut().filter(|t| !t.stalled) {
            if let TaskState::Blocked {
                deadline: Some(d), ..
            } = t.state
                && d <= now
            {
                t.state = TaskState::Runnable;
                t.timed_out = true;
            }
        }
        true
    }

    /// Ends the execution: from now on every shim call of its tasks uses
    /// the real primitives. Returns the batons to give so that the other
    /// unfinished tasks wake and unwind.
    fn end(&self, st: &mut State, me: TaskId, outcome: Outcome) -> Next {
        st.outcome = Some(outcome);
        st.strategy = None;
        self.aborting.store(true, Ordering::Release);
        self.done.notify_all();
        Next::Ended(
            st.tasks
                .iter()
                .enumerate()
                .filter(|&(i, t)| i != me && t.state != TaskState::Finished)
                .map(|(_, t)| t.baton.clone())
                .collect(),
        )
    }

    /// Releases the lock and acts on `next` for task `me`, which is at a
    /// scheduling point. Returns when `me` holds the baton again; unwinds
    /// `me` if the execution ended meanwhile.
    fn hand_over(&self, st: MutexGuard<'_, State>, me: TaskId, next: Next) {
        let mine = match next {
            Next::Switch(_) => Some(st.tasks[me].baton.clone()),
            _ => None,
        };
        drop(st);
        match next {
            Next::Same => {}
            Next::Switch(b) => {
                b.give();
                if let Some(mine) = mine {
                    mine.take();
                }
                if self.aborting() {
                    unwind();
                }
            }
            Next::Ended(all) => {
                all.iter().for_each(|b| b.give());
                unwind();
            }
        }
    }

    /// A scheduling point. `explicit` (`thread::yield_now`) lets another
    /// task run if there is one: a spin-wait loop then makes progress under
    /// every strategy instead of spinning until the step limit.
    /// `announce` is the access of the operation the task performs right
    /// after this point, which belongs to its next segment.
    pub(super) fn yield_now(&self, me: TaskId, explicit: bool, announce: &[(ObjKey, Access)]) {
        let mut st = self.lock();
        let next = match self.step(&mut st, me) {
            Some(n) => n,
            None => {
                self.end_segment(&mut st, me);
                if st.record {
                    for &a in announce {
                        if profiling() && !st.descr.contains_key(&a.0) {
                            st.descr.insert(a.0, caller_summary());
                        }
                        if tracing() {
                            st.callers.insert((a.0, me, a.1), caller_summary());
                        }
                        st.tasks[me].pending.push(a);
                    }
                }
                self.pick_excluding(&mut st, me, explicit.then_some(me))
            }
        };
        self.hand_over(st, me, next);
    }

    /// Blocks `me` on `wait` until woken or `deadline` (virtual) passes;
    /// returns true on timeout. `Some(u64::MAX)` counts as no deadline. A park with a pending token, a join of a
    /// finished task and an already-passed deadline return at once (after
    /// a scheduling point).
    pub(super) fn block(&self, me: TaskId, wait: Wait, deadline: Option<u64>) -> bool {
        // A saturated deadline is "forever": jumping the clock to it would
        // turn a deadlock into a timeout at the end of time.
        let deadline = deadline.filter(|&d| d != u64::MAX);
        let mut st = self.lock();
        if let Some(n) = self.step(&mut st, me) {
            self.hand_over(st, me, n);
            unreachable!("the step limit ends the execution");
        }
        let ready = match wait {
            Wait::Park => std::mem::take(&mut st.tasks[me].park_token),
            Wait::Join(t) => st
                .tasks
                .get(t)
                .is_none_or(|t| t.state == TaskState::Finished),
            Wait::Resource { .. } | Wait::Sleep => false,
        };
        let expired = !ready && deadline.is_some_and(|d| d <= st.clock);
        st.tasks[me].timed_out = expired;
        if st.record {
            let k = match wait {
                Wait::Park => Some((ObjKey::Park(me), Access::Write)),
                // A join observes nothing but "finished": joining a
                // finished task and blocking until it finishes end in the
                // same state, so the join is ordered after the finish
                // (a wake-up) and never races with it. A join that blocks
                // touches nothing; its wake-up orders it (see `finish`).
                Wait::Join(t) if ready => Some((ObjKey::Task(t), Access::Wake)),
                Wait::Join(_) => None,
                // A wait on a `SetOnce` or a `Monotone` that blocks: no
                // event (the `set` or `update` that wakes it orders it).
                Wait::Resource {
                    kind: WaitKind::SetOnce | WaitKind::Monotone,
                    ..
                } => None,
                Wait::Resource {
                    resource,
                    kind: WaitKind::WaitQueue,
                } => {
                    // A [`Guarded`](crate::Guarded) check that found
                    // nothing to do changed nothing and blocks until the
                    // next update wakes it: no event (its announced access
                    // is withdrawn), as a failed mutex acquisition.
                    st.cur.retain(|(k, _)| *k != ObjKey::Addr(resource));
                    None
                }
                Wait::Resource {
                    resource,
                    kind: WaitKind::Mutex,
                } => {
                    // A failed acquisition is no event: it blocks until a
                    // release wakes it and then tries again (a new
                    // segment). Its announced accesses are withdrawn.
                    st.cur.retain(|(k, _)| {
                        *k != ObjKey::Addr(resource) && *k != ObjKey::Release(resource)
                    });
                    None
                }
                Wait::Resource { resource, .. } => Some((ObjKey::Addr(resource), Access::Write)),
                Wait::Sleep => None,
            };
            st.cur.extend(k);
        }
        self.end_segment(&mut st, me);
        if !ready && !expired {
            st.tasks[me].state = TaskState::Blocked { wait, deadline };
        }
        let next = self.pick(&mut st, me);
        self.hand_over(st, me, next);
        self.lock().tasks[me].timed_out
    }

    pub(super) fn unblock(&self, _me: TaskId, resource: usize, only_one: bool) {
        self.unblock_key(resource, only_one, ObjKey::Addr(resource));
    }

    /// The `n`-th update of the versioned cell at `cell`: writes its
    /// [`ObjKey::Version`] key and wakes every task blocked on the cell,
    /// whose next segments observe that version as a wake-up (ordered
    /// after this update, not after a later one that runs before them).
    pub(super) fn unblock_version(&self, _me: TaskId, cell: usize, n: u32) {
        self.unblock_key(cell, false, ObjKey::Version(cell, n));
    }

    /// A mutex release: wakes every task blocked on the mutex; the release
    /// writes the mutex's [`ObjKey::Release`] key, which the woken tasks'
    /// next segments observe as a wake-up.
    pub(super) fn release(&self, _me: TaskId, mutex: usize) {
        self.unblock_key(mutex, false, ObjKey::Release(mutex));
    }

    /// Wakes the tasks blocked on `resource` (one or all), recording a
    /// write of `key`. The woken tasks' next segments are wake-ups on
    /// `key` when it names this very write (a mutex release, a version of
    /// a cell); for a plain address, which later notifies write too, on a
    /// fresh [`ObjKey::Wakeup`] of this call.
    fn unblock_key(&self, resource: usize, only_one: bool, key: ObjKey) {
        let mut st = self.lock();
        let record = st.record;
        if record {
            st.cur.push((key, Access::Write));
        }
        let mut woke = None;
        let wakeup = ObjKey::Wakeup(st.next_wakeup);
        for i in 0..st.tasks.len() {
            let t = &mut st.tasks[i];
            if let TaskState::Blocked {
                wait: Wait::Resource { resource: r, .. },
                ..
            } = t.state
                && r == resource
            {
                t.state = TaskState::Runnable;
                t.timed_out = false;
                if record {
                    let k = match key {
                        ObjKey::Addr(_) => {
                            woke = Some(wakeup);
                            wakeup
                        }
                        k => k,
                    };
                    t.pending.push((k, Access::Wake));
                }
                if only_one {
                    break;
                }
            }
        }
        if let Some(k) = woke {
            st.next_wakeup += 1;
            st.cur.push((k, Access::Write));
        }
    }

    pub(super) fn unpark(&self, _me: TaskId, task: TaskId) -> bool {
        let mut st = self.lock();
        let record = st.record;
        if task >= st.tasks.len() {
            return false;
        }
        if record {
            st.cur.push((ObjKey::Park(task), Access::Write));
        }
        let wakeup = ObjKey::Wakeup(st.next_wakeup);
        let t = &mut st.tasks[task];
        match t.state {
            TaskState::Blocked {
                wait: Wait::Park, ..
            } => {
                t.state = TaskState::Runnable;
                t.timed_out = false;
                if record {
                    // Ordered after this unpark, not after a later one
                    // (which writes the token too) that runs first.
                    t.pending.push((wakeup, Access::Wake));
                    st.next_wakeup += 1;
                    st.cur.push((wakeup, Access::Write));
                }
            }
            TaskState::Finished => {}
            _ => t.park_token = true,
        }
        true
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.lock().clock
    }

    pub(super) fn is_finished(&self, _me: TaskId, task: TaskId) -> bool {
        let mut st = self.lock();
        if st.record {
            st.cur.push((ObjKey::Task(task), Access::Read));
        }
        st.tasks
            .get(task)
            .is_none_or(|t| t.state == TaskState::Finished)
    }

    pub(super) fn task_name(&self, me: TaskId) -> String {
        self.lock().tasks[me].name.clone()
    }

    pub(super) fn local_counter(&self, _me: TaskId, key: &'static str, n: u64) -> u64 {
        let mut st = self.lock();
        if st.record {
            st.cur
                .push((ObjKey::Counter(key.as_ptr() as usize), Access::Write));
        }
        let c = st.counters.entry(key).or_insert(1);
        let v = *c;
        *c = c.saturating_add(n);
        v
    }

    pub(super) fn with_extension<T, R>(
        &self,
        me: TaskId,
        f: impl FnOnce(&mut T, &Here<'_>) -> R,
    ) -> R
    where
        T: Default + Send + 'static,
    {
        let mut guard = self.lock();
        let st = &mut *guard;
        let here = Here {
            task: me,
            task_name: &st.tasks[me].name,
            now_ns: st.clock,
            decisions: st.schedule.len() as u64,
            preemptions: st.preemptions,
        };
        f(st.extensions.get_or_default::<T>(), &here)
    }

    pub(super) fn set_group(&self, me: TaskId, name: &str) {
        let stalled = {
            let mut st = self.lock();
            let stalled = st.stalled_groups.iter().any(|g| g == name);
            if st.record {
                let g = Self::group_ix(&mut st, name);
                st.cur.push((ObjKey::Group(g), Access::Read));
                st.tasks[me].group_ix = g;
            }
            let t = &mut st.tasks[me];
            t.group = name.to_owned();
            t.stalled = stalled;
            stalled
        };
        if stalled {
            self.yield_now(me, false, &[]);
        }
    }

    /// Opens (`true`) or closes a [`before_split`](super::before_split)
    /// scope.
    pub(super) fn before_split(&self, open: bool) {
        let mut st = self.lock();
        st.before_split = if open {
            st.before_split.saturating_add(1)
        } else {
            st.before_split.saturating_sub(1)
        };
        if let Some(p) = &st.strategy {
            // SAFETY: see `StrategyPtr`: the state lock is held.
            unsafe { (*p.0).split_point(st.before_split == 0) };
        }
    }

    pub(super) fn stall_group(&self, me: TaskId, name: &str) {
        {
            let mut st = self.lock();
            if st.record {
                let g = Self::group_ix(&mut st, name);
                st.cur.push((ObjKey::Group(g), Access::Write));
            }
            if !st.stalled_groups.iter().any(|g| g == name) {
                st.stalled_groups.push(name.to_owned());
            }
            for t in st.tasks.iter_mut().filter(|t| t.group == name) {
                t.stalled = true;
            }
        }
        self.yield_now(me, false, &[]);
    }

    pub(super) fn spawn<F, T>(
        self: &Arc<Self>,
        me: TaskId,
        name: String,
        f: F,
    ) -> (TaskId, TaskJoin<T>)
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (id, name, baton) = {
            let mut st = self.lock();
            let id = st.tasks.len();
            let name = if name.is_empty() {
                format!("task{id}")
            } else {
                name
            };
            let group = st.tasks[me].group.clone();
            let group_ix = st.tasks[me].group_ix;
            let stalled = st.stalled_groups.contains(&group);
            let mut task = Task::new(name.clone(), group, group_ix, stalled);
            if st.record && profiling() {
                eprintln!("DPOR-TASK {id} {name}");
            }
            if st.record {
                // The child's first segment is ordered after the spawn.
                st.cur.push((ObjKey::Task(id), Access::Write));
                task.pending.push((ObjKey::Task(id), Access::Wake));
            }
            let baton = task.baton.clone();
            st.tasks.push(task);
            st.live_threads += 1;
            (id, name, baton)
        };
        let exec = self.clone();
        let result = Arc::new(TaskResult::default());
        let r2 = result.clone();
        let started = pool::start(self.cpu, Box::new(move || task_main(exec, id, f, &r2)));
        let thread = match started {
            Ok(t) => t,
            Err(e) => {
                let mut st = self.lock();
                st.tasks[id].state = TaskState::Finished;
                st.live_threads -= 1;
                drop(st);
                panic!("cannot spawn task {name}: {e}");
            }
        };
        // The baton's thread must be known before anybody can give it: only
        // the baton holder (this task, until its next scheduling point) or
        // the end of the execution (also caused by the holder) gives batons.
        let _ = baton.thread.set(thread);
        self.yield_now(me, false, &[]);
        (id, TaskJoin { result })
    }

    /// Task `me` returned or panicked (`panic` holds the message).
    fn finish(&self, me: TaskId, panic: Option<String>) {
        let mut st = self.lock();
        if self.aborting() {
            return;
        }
        if let Some(message) = panic {
            let task = st.tasks[me].name.clone();
            st.panics.push(TaskPanic { task, message });
        }
        st.tasks[me].state = TaskState::Finished;
        let record = st.record;
        if record {
            st.cur.push((ObjKey::Task(me), Access::Write));
        }
        for t in st.tasks.iter_mut() {
            if let TaskState::Blocked {
                wait: Wait::Join(j),
                ..
            } = t.state
                && j == me
            {
                t.state = TaskState::Runnable;
                t.timed_out = false;
                if record {
                    t.pending.push((ObjKey::Task(me), Access::Wake));
                }
            }
        }
        self.end_segment(&mut st, me);
        let next = self.pick(&mut st, me);
        drop(st);
        match next {
            Next::Same => {}
            Next::Switch(b) => b.give(),
            Next::Ended(all) => all.iter().for_each(|b| b.give()),
        }
    }
}

fn end_outcome(st: &State) -> Outcome {
    let left: Vec<TaskInfo> = st
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.state != TaskState::Finished)
        .map(|(i, t)| t.info(i))
        .collect();
    if left.is_empty() {
        Outcome::Completed
    } else if left.iter().all(|t| t.stalled) {
        Outcome::CompletedWithStalled { stalled: left }
    } else {
        Outcome::Deadlock { tasks: left }
    }
}

/// Counts the task's thread out when the task's body is left, however it
/// is left.
struct ThreadExit(Arc<Execution>);

impl Drop for ThreadExit {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.live_threads -= 1;
        self.0.done.notify_all();
    }
}

/// Body of every task, on a thread of the [`pool`]. Its result (or the
/// payload of its panic, the abort's included) goes to `result` before the
/// task counts as finished, so a join woken by the finish finds it.
fn task_main<F: FnOnce() -> T, T>(exec: Arc<Execution>, id: TaskId, f: F, result: &TaskResult<T>) {
    let _exit = ThreadExit(exec.clone());
    let baton = exec.lock().tasks[id].baton.clone();
    set_ctx(Some(TaskCtx {
        exec: exec.clone(),
        id,
    }));
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        baton.take();
        if exec.aborting() {
            unwind();
        }
        f()
    }));
    set_ctx(None);
    match r {
        Ok(v) => {
            result.put(Ok(v));
            exec.finish(id, None);
        }
        Err(p) => {
            if p.is::<Aborted>() {
                result.put(Err(p));
                return;
            }
            let msg = LAST_PANIC
                .with(|l| l.borrow_mut().take())
                .unwrap_or_else(|| payload_message(p.as_ref()));
            result.put(Err(p));
            exec.finish(id, Some(msg));
        }
    }
}

/// Where a task leaves its result for [`TaskJoin::join`].
struct TaskResult<T> {
    value: Mutex<Option<std::thread::Result<T>>>,
    ready: Condvar,
}

impl<T> Default for TaskResult<T> {
    fn default() -> Self {
        Self {
            value: Mutex::new(None),
            ready: Condvar::new(),
        }
    }
}

impl<T> TaskResult<T> {
    fn put(&self, r: std::thread::Result<T>) {
        *self.value.lock() = Some(r);
        self.ready.notify_all();
    }
}

/// The join handle of a task (its thread goes back to the [`pool`] when
/// the task ends, so std's handle would wait for nothing).
pub struct TaskJoin<T> {
    result: Arc<TaskResult<T>>,
}

impl<T> std::fmt::Debug for TaskJoin<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskJoin")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> TaskJoin<T> {
    /// The task's result, or the payload of its panic. The caller has
    /// already waited for the task in the engine ([`super::join`]); this
    /// waits in real time only for a task that was left running when its
    /// execution ended (it is unwinding on its own thread).
    pub fn join(self) -> std::thread::Result<T> {
        let mut v = self.result.value.lock();
        loop {
            if let Some(r) = v.take() {
                return r;
            }
            self.result.ready.wait(&mut v);
        }
    }

    /// Whether the task's body has been left.
    pub fn is_finished(&self) -> bool {
        self.result.value.lock().is_some()
    }
}

fn payload_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Chains a panic hook that records the message and location of a task's
/// panic for its report and, unless the execution asks for it, keeps it off
/// stderr. Other threads go to the previous hook unchanged.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            // Whether the caller is a task, and then whether to print and
            // its name (its thread is a reused one of the pool, whose name
            // says nothing; the state may be locked by the panicking code).
            let task = CURRENT
                .try_with(|c| {
                    c.try_borrow().ok().and_then(|c| {
                        c.as_ref().filter(|t| !t.exec.aborting()).map(|t| {
                            let name = t
                                .exec
                                .state
                                .try_lock()
                                .and_then(|st| st.tasks.get(t.id).map(|k| k.name.clone()));
                            (t.exec.print_panics, name)
                        })
                    })
                })
                .ok()
                .flatten();
            if let Some((print, name)) = task {
                let mut msg = payload_message(info.payload());
                if let Some(l) = info.location() {
                    msg = format!("{msg} at {}:{}", l.file(), l.line());
                }
                if print {
                    let name = name.as_deref().unwrap_or("?");
                    eprintln!("task '{name}' panicked: {msg}");
                }
                let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(msg));
                if !print {
                    return;
                }
            }
            prev(info);
        }));
    });
}

pub(super) fn run<F: FnOnce() + Send + 'static>(
    strategy: &mut dyn Strategy,
    cfg: &RunConfig,
    f: F,
) -> RunReport {
    install_panic_hook();
    let ptr: *mut (dyn Strategy + '_) = strategy;
    // SAFETY: only the lifetime bound changes (same fat-pointer layout); see
    // `StrategyPtr` for why the pointer never outlives the borrow.
    let ptr: *mut (dyn Strategy + 'static) = unsafe { std::mem::transmute(ptr) };
    let record = strategy.observes_events();
    let root = Task::new("main".to_owned(), "main".to_owned(), 0, false);
    let baton = root.baton.clone();
    let cpu = cfg.pin_to_one_cpu.then(controller_cpu).flatten();
    // The calling thread hands the baton to the root and takes the result
    // back: on the execution's CPU for the run, as it was after.
    let _pinned = cpu.map(PinnedFor::run);
    let exec = Arc::new(Execution {
        aborting: AtomicBool::new(false),
        print_panics: cfg.print_panics,
        cpu,
        state: Mutex::new(State {
            tasks: vec![root],
            start_ns: cfg.start_ns,
            clock: cfg.start_ns,
            steps: 0,
            max_steps: cfg.max_steps,
            switches: 0,
            preemptions: 0,
            schedule: Schedule::default(),
            strategy: Some(StrategyPtr(ptr)),
            stalled_groups: Vec::new(),
            before_split: 0,
            outcome: None,
            extensions: Extensions::default(),
            counters: HashMap::new(),
            record,
            cur: Vec::new(),
            objs: rustc_hash::FxHashMap::default(),
            next_obj: 0,
            next_wakeup: 0,
            dropped: Vec::new(),
            groups: vec!["main".to_owned()],
            ev_buf: Vec::new(),
            panics: Vec::new(),
            live_threads: 1,
            scratch: Vec::new(),
            descr: HashMap::new(),
            callers: HashMap::new(),
            segments: 0,
        }),
        done: Condvar::new(),
    });
    LIVE_EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    let e2 = exec.clone();
    let thread = pool::start(
        cpu,
        Box::new(move || task_main(e2, 0, f, &TaskResult::default())),
    )
    .expect("cannot start the root task's thread");
    let _ = baton.thread.set(thread);
    baton.give();

    let mut st = exec.lock();
    while st.outcome.is_none() {
        exec.done.wait(&mut st);
    }
    // Real time only bounds how long we wait for task threads; it has no
    // meaning inside the execution.
    let deadline = Instant::now() + cfg.unwind_timeout;
    while st.live_threads > 0 {
        if exec.done.wait_until(&mut st, deadline).timed_out() {
            break;
        }
    }
    st.strategy = None;
    let steps = st.steps;
    let mut report = RunReport {
        outcome: st.outcome.take().unwrap_or(Outcome::Completed),
        decisions: st.schedule.len() as u64,
        schedule: std::mem::take(&mut st.schedule),
        steps,
        switches: st.switches,
        virtual_ns: st.clock - st.start_ns,
        extensions: std::mem::take(&mut st.extensions),
        panics: std::mem::take(&mut st.panics),
        leaked_threads: st.live_threads,
        divergence: None,
    };
    drop(st);
    LIVE_EXECUTIONS.fetch_sub(1, Ordering::Relaxed);
    strategy.on_outcome(&report.outcome);
    report.divergence = strategy.end_execution(steps).err();
    report
}

/// The CPU of the executions the calling thread runs: chosen at its first
/// execution, round-robin over the CPUs this process may run on, so the
/// threads that run executions side by side (the matrix's workers) spread
/// out, and one thread's executions all run on one CPU, with the thread
/// itself (a search's bookkeeping between executions stays in that CPU's
/// caches; about 1.3x more executions per second than a new CPU per
/// execution, BENCHMARKS.md).
fn controller_cpu() -> Option<usize> {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: std::cell::Cell<Option<Option<usize>>> = const { std::cell::Cell::new(None) };
    }
    MINE.with(|m| {
        if let Some(c) = m.get() {
            return c;
        }
        let cpus = CPUS.get_or_init(allowed_cpus);
        let c = (!cpus.is_empty()).then(|| cpus[NEXT.fetch_add(1, Ordering::Relaxed) % cpus.len()]);
        m.set(Some(c));
        c
    })
}

/// The calling thread bound to one CPU for an execution; its binding before
/// is restored on drop, so a thread that runs executions and then real
/// threads (which inherit their creator's binding) does not confine them.
struct PinnedFor {
    #[cfg(target_os = "linux")]
    before: Option<libc::cpu_set_t>,
}

impl PinnedFor {
    #[cfg(target_os = "linux")]
    fn run(cpu: usize) -> Self {
        let before = current_affinity();
        pin_current_thread(cpu);
        Self { before }
    }

    #[cfg(not(target_os = "linux"))]
    fn run(_cpu: usize) -> Self {
        Self {}
    }
}

impl Drop for PinnedFor {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(set) = &self.before {
            // SAFETY: a set the kernel returned for this thread.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
            }
        }
    }
}

/// The calling thread's CPU binding.
#[cfg(target_os = "linux")]
fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: `cpu_set_t` is plain data; all-zero is the empty set, and the
    // kernel writes at most `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    let Some(set) = current_affinity() else {
        return Vec::new();
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is a valid set and `c` is below `CPU_SETSIZE`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Binds the calling thread to `cpu`. Failure only costs speed.
#[cfg(target_os = "linux")]
pub(super) fn pin_current_thread(cpu: usize) {
    if cpu >= libc::CPU_SETSIZE as usize {
        return;
    }
    // SAFETY: as in `current_affinity`; pid 0 is the calling thread, and
    // `cpu` is below `CPU_SETSIZE`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn pin_current_thread(_cpu: usize) {}
