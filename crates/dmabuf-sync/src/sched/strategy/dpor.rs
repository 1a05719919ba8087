//! Dynamic partial-order reduction: source-set DPOR with sleep sets
//! (Abdulla, Aronis, Jonsson, Sagonas, "Source Sets: A Foundation for
//! Optimal Dynamic Partial Order Reduction", JACM 64(4), 2017, Algorithm 1).
//!
//! # What is explored
//!
//! Two executions are equivalent (the same Mazurkiewicz trace) when one is
//! obtained from the other by swapping adjacent independent segments. A
//! segment is what one task runs between two of its scheduling points; the
//! engine reports which objects it touched and how ([`StepEvent`]). Two
//! segments are *dependent* when they belong to the same task, or touch a
//! common object and one of them writes it, or one of them is a jump of the
//! virtual clock. Equivalent executions end in the same state, so running one
//! execution per class gives every outcome and every violation plain DFS
//! would find (the tests in `dmabuf-sync/src/sched/tests.rs` check this against
//! [`Dfs`](super::Dfs) on every program small enough for both).
//!
//! # The algorithm
//!
//! The search keeps the stack of decisions of the current execution. Each
//! node has the runnable tasks, a *backtrack set* (tasks to run from there),
//! the tasks already run from there with their first segment, and a *sleep
//! set* (tasks whose next segment was already explored from an equivalent
//! state). After every execution, happens-before is built with vector clocks
//! over its segments, and every race `e ⋖ e'` (dependent, different tasks,
//! not ordered through a third segment) whose later half is new is reversed:
//! with `v` the segments after `e` not ordered after it, followed by `e'`, some
//! task among the initials of `v` is added to the backtrack set of the node
//! where `e` was chosen, unless one is already there. Sleep sets are carried
//! down each execution (a sleeper wakes when a segment dependent with its
//! next one runs); a decision at which every runnable task sleeps ends the
//! useful part of the execution ("cut by sleep sets"; the engine still runs
//! it to the end, so its verdicts are real but redundant).
//!
//! # Soundness: what is and is not reduced
//!
//! * Time and stalls. The virtual clock moves only when no task can run, so a
//!   clock jump (and the timeouts it fires) is ordered with every segment:
//!   nothing is reordered across it, which is exactly the engine's semantics
//!   (a timeout cannot fire while the task that would satisfy the wait can
//!   run). A timed wait racing its signal is thus explored through the races
//!   that decide whether the signaller is blocked when everybody waits.
//!   Stalling a group writes the group, and every segment of a member reads
//!   it, so a stall is reordered against each member's steps: where it falls
//!   is a choice the search explores.
//! * Wake-ups. A woken task's next segment accesses what the waker wrote
//!   for it (the mutex's releases, a fresh wake-up object of the notify or
//!   unpark, the version of a [`Monotone`](crate::Monotone), the finished
//!   task), so it is ordered after that waker and not after a later write
//!   of the same condvar, token or cell: ordering it after the *last*
//!   write instead orders everything it does next after whatever the
//!   writer did in between, which hides the schedules where it runs
//!   between the two (the tests in `sched/tests.rs` have one program for
//!   each case). A [`Guarded`](crate::Guarded) check or a `Monotone` wait
//!   that blocks is no event: every change wakes it, so it ends as the
//!   same check made after that change.
//! * Joins. Joining a task that has finished and blocking until it
//!   finishes end in the same state, so a join is ordered after the finish
//!   (a wake-up access) and never reversed with it; a join that blocks
//!   touches nothing until the finish wakes it.
//! * Mutexes. Acquisitions of one mutex race with each other (who gets it
//!   first); a release is ordered before the next acquisition but does not
//!   race with it: an acquisition moved before the release could not
//!   succeed, it would block until the release and end in the same state.
//!   A failed acquisition (the task blocks) is therefore no event at all:
//!   the engine withdraws its announced accesses. `try_lock` is different:
//!   its result depends on whether the release came first, so it reads the
//!   mutex's releases and races with them. Before this, every contended
//!   acquisition was explored twice (tried-blocked-woken, and
//!   acquired-after-the-release); `locked_counter(n)` now runs exactly n!
//!   executions (`sched/tests.rs`).
//! * Declared commuting by the code: the bits of an
//!   [`AtomicBits`](crate::atomic::AtomicBits) word are objects of their
//!   own; two idempotent sets ([`Access::Set`]) of one bit do not race
//!   (they race with reads and writes of it); a
//!   [`RefCount`](crate::atomic::RefCount)'s get races with no put, and
//!   only the put that releases races with the other puts
//!   ([`Access::Get`], [`Access::Count`], [`Access::Put`]).
//! * Declared one event by the code: inside a
//!   [`one_event`](super::super::one_event) scope a task's atomic
//!   operations make no scheduling point and join its running segment, so
//!   they are seen whole or not at all (what the modelled hardware does at
//!   one instant: a DMA operation's checks, a device leaving the bus). This
//!   coarsens the program, not the search: every access is still reported.
//! * Not reduced, conservatively ordered: every access to one object by a
//!   writer (a failed compare-exchange counts as a write; a mutex acquire
//!   and release are writes of the mutex).
//! * Objects are numbered per execution in first-touch order; a replayed
//!   prefix numbers them identically. A sleeper's accesses to objects first
//!   touched by its own segment are compared conservatively with every
//!   object first touched after it. A shim object that is dropped is
//!   forgotten ([`forget`](super::super::forget)), so a later object at its
//!   address gets a number of its own: numbering never depends on where the
//!   allocator puts things. (It did before: per-thread allocator caches
//!   outlive an execution, so a replayed prefix could number a reused
//!   address differently from the execution that recorded it, wake other
//!   sleepers, and end early; the search reported that as nondeterminism
//!   and cut the branch. The 7-property cell `matrix.v6-final.iommufd`
//!   diverged within its first thousand executions.)
//! * `thread::yield_now` removes the yielder from the runnable set while
//!   another task can run (a fairness rule for spin loops, not a dependency):
//!   spin-waiting programs are explored, but the reduction's completeness
//!   argument assumes no task yields.
//! * Profiling. With `DMABUF_DPOR_PROFILE` set, the engine prints every task
//!   it spawns (`DPOR-TASK <id> <name>`) and every
//!   object it numbers with the code that first touched it
//!   (`DPOR-OBJ <n> <key> <fn <- fn ...>`) and this strategy every race it
//!   reverses (`DPOR-RACE <n> <task><access>@<segment> ...`): counting the
//!   races per object shows where a search's executions come from.
//!   `DMABUF_DPOR_TRACE` (slow: a backtrace per access) also prints every
//!   access with the code that made it (`DPOR-ACC <segment> <task>
//!   <object> <access> <fn <- fn ...>`), so each race can be joined with
//!   the code on both of its sides.
//! * Untracked shared state (plain memory shared without the shim, real
//!   threads outside the execution) is invisible, as for every strategy.
//!
//! # Bounds
//!
//! Decisions past `max_decisions` take the default branch without creating
//! a node ([`Bound::Depth`]); an execution at the step limit leaves its tail
//! unexplored ([`Bound::Steps`]); a replayed prefix that meets different
//! runnable tasks means the program is not deterministic
//! ([`Bound::Nondeterminism`]). [`Dpor::bounds_hit`] lists them; the search
//! is exhaustive only when it is finished and the list is empty.
//!
//! # Progress ([`Dpor::progress`], [`Dpor::estimate`])
//!
//! After each execution, every decision of its path knows the choices
//! finished there, the one taken and those still in its backtrack set
//! (not asleep). Counting each finished choice as an equal share of its
//! node, and the execution as a finished leaf, gives the share of the tree
//! done; the executions so far divided by it estimate the whole search.
//! Exact once the search is exhausted; before, usually low, since a node's
//! backtrack set grows as later executions reverse races to it (the tests
//! in `sched/tests.rs` measure it on programs of known size).
//!
//! # A part of the search ([`Dpor::shard`])
//!
//! The split node (the first decision, see [`SearchShard`]) gets every
//! runnable task in its backtrack set from the start, in the order the
//! unsharded search would try them (its first choice, then ascending ids),
//! so no race is ever reversed there (nor above it: everything before it
//! is forced). A shard explores its own choices; each earlier choice it
//! does not own runs once as a probe, which records that choice's first
//! segment so that it sleeps below the later ones exactly as in the
//! unsharded search, and is otherwise ignored (no node below the split
//! node, no race analysis below it, no counters).
//!
//! Decisions made inside a [`before_split`](super::super::before_split)
//! scope (a choice the program makes before anything else runs) are not
//! split points: the split node is the first decision after the scope, one
//! per alternative of the choice, and every shard explores the decisions
//! above it as the unsharded search does. A probe's segments before its
//! split node are analysed (the races among them are every shard's; a
//! shard that owns no choice below one alternative would otherwise never
//! learn of the others). The scope's promise, that its decisions race with
//! nothing after it, is what keeps the parts' union the whole search: a
//! race between a segment above the split node and one below it would be
//! reversed only by the shard that owns the later one. The subtree of each choice is then
//! explored as the unsharded search explores it below a fully expanded
//! root. When the unsharded search ends up trying every task at its first
//! decision anyway (the usual case: the tasks there race), the shards run
//! exactly its executions between them; otherwise they run more (the
//! extra choices' subtrees), never fewer classes.

use super::super::{Access, Outcome, ScheduleError, StepEvent, Strategy, TaskId};
use super::{Bound, PartState, SearchShard};

/// Whether `DPOR_DEBUG` asks for the search's own trace on stderr (read
/// once: the search asks at every segment).
fn debugging() -> bool {
    static D: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *D.get_or_init(|| std::env::var_os("DPOR_DEBUG").is_some())
}

/// What a task's next segment touches, for sleep sets.
#[derive(Clone, Debug)]
struct Sleeper {
    task: TaskId,
    accesses: Vec<(u32, Access)>,
    /// Objects numbered at or above this were new to that segment.
    fresh_from: u32,
}

impl Sleeper {
    /// Whether the segment `ev` (of the current execution) is independent
    /// of the sleeper's next segment.
    fn independent_of(&self, task: Option<TaskId>, acc: &[(u32, Access)]) -> bool {
        let Some(t) = task else {
            return false;
        };
        if t == self.task {
            return false;
        }
        let mut fresh = self
            .accesses
            .iter()
            .filter(|a| a.0 >= self.fresh_from)
            .map(|a| a.1);
        // A count step may change what a sleeper's count step is (see
        // `Access::Count`): conservatively a change here.
        let changes = |a: &Access| *a != Access::Read && *a != Access::Wake;
        let any_fresh = fresh.clone().next().is_some();
        let fresh_write = fresh.any(|a| changes(&a));
        // A wake-up observes the object like a read does.
        for &(o, a) in acc {
            if o >= self.fresh_from {
                // Numbered after the sleeper was recorded: may be one of the
                // objects that were new to the sleeper's own segment.
                if any_fresh && (changes(&a) || fresh_write) {
                    return false;
                }
            } else if let Ok(i) = self.accesses.binary_search_by_key(&o, |x| x.0)
                && a.wakes_sleeper(self.accesses[i].1)
            {
                return false;
            }
        }
        true
    }
}

#[derive(Clone, Debug)]
struct Node {
    /// Runnable tasks at this decision.
    enabled: Vec<TaskId>,
    /// The task run from here in the current execution.
    chosen: TaskId,
    /// Tasks to run from here.
    backtrack: Vec<TaskId>,
    /// Tasks already run from here, with their first segment.
    done: Vec<Sleeper>,
    /// The sleep set when the search reached this node.
    sleep: Vec<Sleeper>,
    /// Index of the chosen task's segment in the current execution.
    event: usize,
    /// The split node of a search split into parts (every task a choice,
    /// dealt among the parts).
    split: bool,
}

#[derive(Clone, Debug)]
struct Ev {
    task: Option<TaskId>,
    /// Its accesses: `Dpor::acc[acc.0..acc.1]` (one buffer for the whole
    /// execution, reused by the next: no allocation per segment).
    acc: (u32, u32),
    fresh_from: u32,
    /// The decision node that chose it (`None`: forced, or past the bound).
    node: Option<usize>,
}

/// Counters of a DPOR search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DporStats {
    /// Executions started.
    pub executions: u64,
    /// Executions whose useful part ended because every runnable task was
    /// asleep (redundant with an explored one).
    pub sleep_blocked: u64,
    /// Races reversed (backtrack points added).
    pub backtracks: u64,
    /// The most decisions any execution made.
    pub max_depth: usize,
    /// The most segments any execution had.
    pub max_events: usize,
    /// Executions run only to learn a split choice another shard explores
    /// ([`Dpor::shard`]); not in `executions`.
    pub probes: u64,
}

/// Source-set DPOR with sleep sets (see the module documentation).
#[derive(Clone, Debug)]
pub struct Dpor {
    max_decisions: usize,
    nodes: Vec<Node>,
    /// Decisions made in the current execution.
    pos: usize,
    /// The node whose chosen segment is reported next.
    awaiting: Option<usize>,
    events: Vec<Ev>,
    /// The accesses of every segment of `events`, in order.
    acc: Vec<(u32, Access)>,
    /// The race analysis's buffers, kept between executions.
    scratch: Scratch,
    sleep: Vec<Sleeper>,
    /// Index of the first segment whose races are new in this execution.
    analyse_from: usize,
    /// Segment index at which the execution became sleep-blocked.
    blocked_at: Option<usize>,
    started: bool,
    exhausted: bool,
    hit_depth: bool,
    hit_steps: bool,
    nondeterministic: bool,
    error: Option<ScheduleError>,
    stats: DporStats,
    /// The part of the search explored.
    part: PartState,
    /// The split node's choice (index) of the current execution.
    split_choice: Option<usize>,
    /// The depth of the split node on the current execution's path, once
    /// reached.
    split_at: Option<usize>,
    /// Whether the next decision may be the split node
    /// ([`Strategy::split_point`]).
    splittable: bool,
    /// [`progress`](Self::progress) after the last analysed execution.
    progress: f64,
}

impl Dpor {
    /// A DPOR search that branches on at most `max_decisions` decisions per
    /// execution. Memory is proportional to the decisions and segments of
    /// the executions actually run, never to the bound.
    pub fn new(max_decisions: usize) -> Self {
        Self {
            max_decisions,
            nodes: Vec::new(),
            pos: 0,
            awaiting: None,
            events: Vec::new(),
            acc: Vec::new(),
            scratch: Scratch::default(),
            sleep: Vec::new(),
            analyse_from: 0,
            blocked_at: None,
            started: false,
            exhausted: false,
            hit_depth: false,
            hit_steps: false,
            nondeterministic: false,
            error: None,
            stats: DporStats::default(),
            part: PartState::default(),
            split_choice: None,
            split_at: None,
            splittable: true,
            progress: 0.0,
        }
    }

    /// This search explores only `shard`'s part of the tree (see the module
    /// documentation); a part of one is the whole search, unchanged.
    pub fn shard(mut self, shard: SearchShard) -> Self {
        self.part = PartState::of(shard);
        self
    }

    /// Whether the execution just run (or running) is a probe: not this
    /// shard's, to be neither counted nor judged.
    pub fn is_probe(&self) -> bool {
        self.part.probe
    }

    /// Choices at the split node (1 for a program without decisions), once
    /// known; `None` before the first execution ended, and for a whole
    /// search.
    pub fn split_choices(&self) -> Option<usize> {
        self.part.split_choices
    }

    /// The split node's choice (its index) of the current execution (`None`
    /// for a whole search, or before the split node).
    pub fn split_choice(&self) -> Option<usize> {
        self.split_choice
    }

    /// A sharded execution that ends without having met a decision: the
    /// program has one branch, choice 0.
    fn settle_split(&mut self) {
        if self.part.settle() {
            self.split_choice = Some(0);
        }
    }

    /// Whether every backtrack point has been run.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// The bounds some execution hit so far; exhaustive means
    /// [`is_exhausted`](Self::is_exhausted) and none.
    pub fn bounds_hit(&self) -> Vec<Bound> {
        let mut v = Vec::new();
        if self.hit_depth {
            v.push(Bound::Depth);
        }
        if self.hit_steps {
            v.push(Bound::Steps);
        }
        if self.nondeterministic {
            v.push(Bound::Nondeterminism);
        }
        v
    }

    /// Counters so far.
    pub fn stats(&self) -> DporStats {
        self.stats
    }

    /// The share of the search tree finished after the last execution (1
    /// once the search is exhausted; see [`estimate`](Self::estimate)).
    pub fn progress(&self) -> f64 {
        if self.exhausted { 1.0 } else { self.progress }
    }

    /// The executions the whole search would take, estimated from
    /// [`progress`](Self::progress): the executions so far divided by the
    /// share finished. Exact once the search is exhausted. Usually low
    /// before: it assumes that the subtrees of a node's choices are equally
    /// large and knows only the choices found so far, and a node's
    /// backtrack set grows as later executions reverse races to it.
    pub fn estimate(&self) -> u64 {
        let n = self.stats.executions;
        let p = self.progress();
        if p >= 1.0 || n == 0 {
            return n;
        }
        let e = (n as f64 / p).ceil();
        if e >= u64::MAX as f64 {
            u64::MAX
        } else {
            (e as u64).max(n)
        }
    }

    /// The share of the tree finished once the current execution has been
    /// analysed: at each decision of its path, the choices already finished
    /// count their share of the node's known choices (finished, the one
    /// taken, and those still in the backtrack set and not asleep), and the
    /// current execution counts as a finished leaf.
    fn path_progress(&self) -> f64 {
        let mut share = 1.0_f64;
        let mut done = 0.0_f64;
        for n in self.nodes.iter().take(self.pos) {
            let finished = n.done.iter().filter(|s| s.task != n.chosen).count();
            let pending = n
                .backtrack
                .iter()
                .filter(|q| {
                    **q != n.chosen
                        && !n.done.iter().any(|s| s.task == **q)
                        && !n.sleep.iter().any(|s| s.task == **q)
                })
                .count();
            let total = (finished + pending + 1) as f64;
            done += share * finished as f64 / total;
            share /= total;
        }
        done + share
    }

    fn asleep(&self, t: TaskId) -> bool {
        self.sleep.iter().any(|s| s.task == t)
    }

    /// Appends a segment's accesses to the execution's buffer; their range.
    fn push_accesses(&mut self, a: &[(u32, Access)]) -> (u32, u32) {
        let start = self.acc.len();
        self.acc.extend_from_slice(a);
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        (n(start), n(self.acc.len()))
    }

    /// Segment `i`'s accesses.
    fn accesses(&self, i: usize) -> &[(u32, Access)] {
        let (a, b) = self.events[i].acc;
        &self.acc[a as usize..b as usize]
    }

    /// Builds happens-before over the current execution's segments and
    /// reverses the new races (those whose later segment is at or after
    /// `analyse_from` and before the sleep-blocked point).
    fn analyse(&mut self) {
        let limit = self.blocked_at.unwrap_or(self.events.len());
        let n = self.events.len().min(limit);
        let nt = self
            .events
            .iter()
            .filter_map(|e| e.task)
            .max()
            .map_or(0, |m| m + 1);
        // The buffers of the last analysis, cleared, not freed.
        let mut sc = std::mem::take(&mut self.scratch);
        sc.reset(nt);
        // vc row i (`Clocks::row`): how many segments of task t happen
        // before or are segment i.
        let mut pre = vec![0u32; nt];
        for j in 0..n {
            let Some(t) = self.events[j].task else {
                // A clock jump: after everything so far, before everything
                // after.
                let mut c = sc.barrier.clone();
                for i in sc.last_of_task.iter().flatten() {
                    join(&mut c, sc.vc.row(*i));
                }
                sc.barrier.clone_from(&c);
                sc.vc.push(&c);
                continue;
            };
            match sc.last_of_task[t] {
                Some(i) => pre.copy_from_slice(sc.vc.row(i)),
                None => pre.fill(0),
            }
            join(&mut pre, &sc.barrier);
            sc.cands.clear();
            sc.wakers.clear();
            let (a0, a1) = self.events[j].acc;
            for &(o, a) in &self.acc[a0 as usize..a1 as usize] {
                let o = o as usize;
                if sc.last_write.len() <= o {
                    sc.last_write.resize(o + 1, None);
                    sc.reads.resize_with(o + 1, Vec::new);
                    sc.since.resize_with(o + 1, Vec::new);
                }
                let events = &self.events;
                let vc = &sc.vc;
                let consider = |i: usize, cands: &mut Vec<usize>| {
                    let Some(ti) = events[i].task else {
                        return;
                    };
                    if ti != t && vc.row(i)[ti] > pre[ti] && !cands.contains(&i) {
                        cands.push(i);
                    }
                };
                if a == Access::Wake || a == Access::WakeWrite {
                    // Ordered after what woke it, never reversed with it.
                    if let Some(w) = sc.last_write[o] {
                        sc.wakers.push(w);
                    }
                    sc.wakers.extend(sc.since[o].iter().map(|x| x.0));
                    if a == Access::Wake {
                        continue;
                    }
                } else if let Some(w) = sc.last_write[o] {
                    consider(w, &mut sc.cands);
                }
                // Races with the accesses since the last write it conflicts
                // with (a set not with other sets, a reference count's steps
                // as `Access::conflicts` says, reads with none of the reads).
                if a != Access::Read {
                    for &r in &sc.reads[o] {
                        consider(r, &mut sc.cands);
                    }
                }
                for &(r, b) in &sc.since[o] {
                    if a.conflicts(b) {
                        consider(r, &mut sc.cands);
                    }
                }
                if a.writes() && a != Access::Set {
                    sc.last_write[o] = Some(j);
                    sc.reads[o].clear();
                    sc.since[o].clear();
                } else if a == Access::Read {
                    sc.reads[o].push(j);
                } else {
                    sc.since[o].push((j, a));
                }
            }
            // The segment's clock, in a buffer kept between segments.
            let mut c = std::mem::take(&mut sc.cur);
            c.clear();
            c.extend_from_slice(&pre);
            for &i in sc.cands.iter().chain(&sc.wakers) {
                join(&mut c, sc.vc.row(i));
            }
            c[t] += 1;
            // Races: candidates not ordered before another candidate.
            if j >= self.analyse_from {
                let vc = &sc.vc;
                let events = &self.events;
                let cands = &sc.cands;
                let races: Vec<usize> = cands
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let ti = events[i].task.unwrap_or(0);
                        !cands
                            .iter()
                            .any(|&k| k != i && vc.row(k)[ti] >= vc.row(i)[ti])
                    })
                    .collect();
                for i in races {
                    self.reverse(i, j, &sc.vc, &c);
                }
            }
            sc.vc.push(&c);
            sc.cur = c;
            sc.last_of_task[t] = Some(j);
        }
        self.scratch = sc;
    }

    /// Reverses the race between segments `i` and `j` (`cj` is `j`'s clock).
    fn reverse(&mut self, i: usize, j: usize, vc: &Clocks, cj: &[u32]) {
        if debugging() {
            eprintln!("race {i} {j} vc_i {:?} cj {:?}", vc.row(i), cj);
        }
        let Some(d) = self.events[i].node else {
            return; // forced: nothing else could run there
        };
        if self.nodes[d].split {
            return; // the split node: every choice is there already
        }
        if super::super::engine::profiling() {
            let (a, b) = (self.accesses(i), self.accesses(j));
            for &(o, x) in a {
                if let Some(&(_, y)) = b.iter().find(|p| p.0 == o)
                    && x.conflicts(y)
                    && x != Access::Wake
                    && y != Access::Wake
                {
                    eprintln!(
                        "DPOR-RACE {o} {:?}{x:?}@{i} {:?}{y:?}@{j}",
                        self.events[i].task, self.events[j].task
                    );
                }
            }
        }
        let ti = self.events[i].task.unwrap_or(0);
        let after_i = |k: usize, ck: &[u32]| ck[ti] >= vc.row(i)[ti] && k != i;
        // v = the segments after i not ordered after it, then j.
        let mut v: Vec<usize> = (i + 1..j).filter(|&k| !after_i(k, vc.row(k))).collect();
        v.push(j);
        let clock = |k: usize| -> &[u32] { if k == j { cj } else { vc.row(k) } };
        let mut initials: Vec<TaskId> = Vec::new();
        let mut seen: Vec<TaskId> = Vec::new();
        for (x, &k) in v.iter().enumerate() {
            let Some(tk) = self.events[k].task else {
                continue;
            };
            if seen.contains(&tk) {
                continue;
            }
            seen.push(tk);
            let ck = clock(k);
            let first = v[..x].iter().all(|&p| match self.events[p].task {
                Some(tp) => ck[tp] < vc.row(p)[tp],
                None => false,
            });
            if first {
                initials.push(tk);
            }
        }
        let node = &mut self.nodes[d];
        if initials.iter().any(|q| node.backtrack.contains(q)) {
            return;
        }
        let asleep = |q: &TaskId| node.sleep.iter().any(|s| s.task == *q);
        let tj = self.events[j].task.unwrap_or(0);
        let pick = if initials.contains(&tj) && node.enabled.contains(&tj) && !asleep(&tj) {
            Some(tj)
        } else {
            initials
                .iter()
                .copied()
                .find(|q| node.enabled.contains(q) && !asleep(q))
        };
        match pick {
            Some(q) => {
                node.backtrack.push(q);
                self.stats.backtracks += 1;
            }
            None if initials.iter().any(|q| node.enabled.contains(q)) => {
                // Every candidate sleeps: that order is already covered.
            }
            None => {
                // No initial can run there (a yield, a wake-up the search
                // cannot see): fall back to every runnable task.
                let add: Vec<TaskId> = node
                    .enabled
                    .iter()
                    .copied()
                    .filter(|q| !node.backtrack.contains(q) && !asleep(q))
                    .collect();
                self.stats.backtracks += add.len() as u64;
                node.backtrack.extend(add);
            }
        }
    }

    /// Moves the search to the next branch; false when there is none.
    fn advance(&mut self) -> bool {
        // The path below the last decision of the previous execution is
        // gone; the deepest node with an unexplored backtrack task is next.
        self.part.probe = false;
        self.nodes.truncate(self.pos.min(self.nodes.len()));
        while let Some(d) = self.nodes.len().checked_sub(1) {
            let ev = self.nodes[d].event;
            let (acc, fresh) = match self.events.get(ev) {
                Some(e) => (
                    self.acc[e.acc.0 as usize..e.acc.1 as usize].to_vec(),
                    e.fresh_from,
                ),
                None => (Vec::new(), 0),
            };
            let node = &mut self.nodes[d];
            if !node.done.iter().any(|s| s.task == node.chosen) {
                node.done.push(Sleeper {
                    task: node.chosen,
                    accesses: acc,
                    fresh_from: fresh,
                });
            }
            let untried = |q: &TaskId| {
                !node.done.iter().any(|s| s.task == *q) && !node.sleep.iter().any(|s| s.task == *q)
            };
            let next = match self.part.shard.filter(|_| node.split) {
                None => node.backtrack.iter().copied().find(untried),
                Some(sh) => {
                    // The split node: this shard's choices, and the others
                    // before its last one as probes.
                    let last = (0..node.backtrack.len()).rev().find(|&i| sh.owns(i));
                    let found = node
                        .backtrack
                        .iter()
                        .copied()
                        .enumerate()
                        .find(|(i, q)| Some(*i) <= last && untried(q));
                    found.map(|(i, q)| {
                        self.part.probe = !sh.owns(i);
                        self.split_choice = Some(i);
                        q
                    })
                }
            };
            match next {
                Some(q) => {
                    node.chosen = q;
                    self.analyse_from = ev;
                    return true;
                }
                None => {
                    self.nodes.pop();
                }
            }
        }
        false
    }
}

/// Vector clocks of an execution's segments, one row of `width` counts per
/// segment, in one buffer.
#[derive(Clone, Debug, Default)]
struct Clocks {
    width: usize,
    cells: Vec<u32>,
}

impl Clocks {
    fn row(&self, i: usize) -> &[u32] {
        &self.cells[i * self.width..(i + 1) * self.width]
    }

    fn push(&mut self, c: &[u32]) {
        debug_assert_eq!(c.len(), self.width);
        self.cells.extend_from_slice(c);
    }
}

/// The race analysis's working state ([`Dpor::analyse`]), kept between
/// executions so that its buffers are allocated once.
#[derive(Clone, Debug, Default)]
struct Scratch {
    vc: Clocks,
    last_of_task: Vec<Option<usize>>,
    barrier: Vec<u32>,
    /// Per object: the last write, the reads since, and the other accesses
    /// since (idempotent sets, reference count steps). Reads are kept
    /// apart: no read conflicts with a read, and an object read many times
    /// between writes would make every read scan them.
    last_write: Vec<Option<usize>>,
    reads: Vec<Vec<usize>>,
    since: Vec<Vec<(usize, Access)>>,
    cands: Vec<usize>,
    wakers: Vec<usize>,
    /// The clock of the segment being analysed.
    cur: Vec<u32>,
}

impl Scratch {
    /// Empty, for an execution of `tasks` tasks (inner buffers kept).
    fn reset(&mut self, tasks: usize) {
        self.vc.width = tasks;
        self.vc.cells.clear();
        self.last_of_task.clear();
        self.last_of_task.resize(tasks, None);
        self.barrier.clear();
        self.barrier.resize(tasks, 0);
        self.last_write.fill(None);
        self.reads.iter_mut().for_each(Vec::clear);
        self.since.iter_mut().for_each(Vec::clear);
        self.cands.clear();
        self.wakers.clear();
    }
}

fn join(a: &mut Vec<u32>, b: &[u32]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x).max(*y);
    }
}

impl Strategy for Dpor {
    fn name(&self) -> String {
        format!("dpor(max_decisions={})", self.max_decisions)
    }

    fn next_execution(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        if self.started && !self.advance() {
            self.exhausted = true;
            return false;
        }
        self.started = true;
        self.pos = 0;
        self.awaiting = None;
        self.events.clear();
        self.acc.clear();
        self.sleep.clear();
        self.blocked_at = None;
        self.split_at = None;
        self.splittable = true;
        self.stats.executions += 1;
        if self.nodes.is_empty() {
            self.analyse_from = 0;
        }
        true
    }

    fn choose(&mut self, runnable: &[TaskId], current: Option<TaskId>, _step: u64) -> TaskId {
        let d = self.pos;
        let default = current
            .filter(|c| runnable.contains(c))
            .unwrap_or(runnable[0]);
        let below_split = self.split_at.is_some_and(|s| d > s);
        if self.blocked_at.is_some() || (self.part.probe && below_split) {
            return default;
        }
        if let Some(node) = self.nodes.get(d) {
            if node.split {
                self.split_at = Some(d);
            }
            if node.enabled != runnable {
                self.error.get_or_insert(ScheduleError::Nondeterministic {
                    decision: d,
                    expected: node.enabled.clone(),
                    found: runnable.to_vec(),
                });
                self.nodes.truncate(d);
                self.blocked_at = Some(self.events.len());
                return default;
            }
            let mut sleep = node.sleep.clone();
            sleep.extend(node.done.iter().filter(|s| s.task != node.chosen).cloned());
            self.sleep = sleep;
            self.pos += 1;
            self.awaiting = Some(d);
            return node.chosen;
        }
        // The first decision of the path outside a `before_split` scope is
        // the split node of a search split into parts.
        let split = self.part.shard.is_some() && self.split_at.is_none() && self.splittable;
        if d >= self.max_decisions {
            if split {
                // No node at all: one choice, the default.
                self.settle_split();
                if self.part.probe {
                    return default;
                }
            }
            self.hit_depth = true;
            self.pos += 1;
            return default;
        }
        let awake = |t: &TaskId| !self.asleep(*t);
        let chosen = match current.filter(|c| runnable.contains(c) && awake(c)) {
            Some(c) => c,
            None => match runnable.iter().copied().find(awake) {
                Some(t) => t,
                None => {
                    self.blocked_at = Some(self.events.len());
                    self.stats.sleep_blocked += 1;
                    return default;
                }
            },
        };
        let backtrack = match self.part.shard.filter(|_| split) {
            None => vec![chosen],
            Some(sh) => {
                // The split node: every task is a choice, the one the whole
                // search runs first, then ascending ids.
                let mut order = vec![chosen];
                order.extend(runnable.iter().copied().filter(|&t| t != chosen));
                // The first split node met tells the parts' choices (a later
                // one, below another alternative of a `before_split`
                // choice, may have more or fewer).
                self.part.split_choices.get_or_insert(order.len());
                self.split_choice = Some(0);
                self.split_at = Some(d);
                self.part.probe = !sh.owns(0);
                order
            }
        };
        self.nodes.push(Node {
            enabled: runnable.to_vec(),
            chosen,
            backtrack,
            done: Vec::new(),
            sleep: self.sleep.clone(),
            event: usize::MAX,
            split,
        });
        self.pos += 1;
        self.awaiting = Some(d);
        chosen
    }

    fn observes_events(&self) -> bool {
        true
    }

    fn split_point(&mut self, splittable: bool) {
        self.splittable = splittable;
    }

    fn on_event(&mut self, ev: &StepEvent<'_>) {
        if debugging() {
            eprintln!(
                "ev {} {:?} {:?} fresh {} awaiting {:?}",
                self.events.len(),
                ev.task,
                ev.accesses,
                ev.fresh_from,
                self.awaiting
            );
        }
        let node = self.awaiting.take();
        let idx = self.events.len();
        if let Some(d) = node
            && let Some(n) = self.nodes.get_mut(d)
        {
            n.event = idx;
        }
        if self.part.probe {
            // Only the split node's segment matters.
            let acc = self.push_accesses(ev.accesses);
            self.events.push(Ev {
                task: ev.task,
                acc,
                fresh_from: ev.fresh_from,
                node,
            });
            return;
        }
        if self.blocked_at.is_none()
            && node.is_none()
            && let Some(t) = ev.task
            && self.asleep(t)
        {
            // A forced step of a sleeping task: the rest is redundant.
            self.blocked_at = Some(idx);
            self.stats.sleep_blocked += 1;
        }
        self.sleep
            .retain(|s| s.independent_of(ev.task, ev.accesses));
        let acc = self.push_accesses(ev.accesses);
        self.events.push(Ev {
            task: ev.task,
            acc,
            fresh_from: ev.fresh_from,
            node,
        });
    }

    fn on_outcome(&mut self, outcome: &Outcome) {
        self.settle_split();
        if *outcome == Outcome::StepLimit && !self.part.probe {
            self.hit_steps = true;
        }
    }

    fn end_execution(&mut self, _steps: u64) -> Result<(), ScheduleError> {
        self.settle_split();
        if self.part.probe {
            self.stats.executions -= 1;
            self.stats.probes += 1;
        } else {
            self.stats.max_depth = self.stats.max_depth.max(self.pos);
            self.stats.max_events = self.stats.max_events.max(self.events.len());
        }
        if self.error.is_none()
            && let Some(n) = self.nodes.get(self.pos)
        {
            self.error = Some(ScheduleError::Nondeterministic {
                decision: self.pos,
                expected: n.enabled.clone(),
                found: Vec::new(),
            });
            self.nodes.truncate(self.pos);
        }
        if self.error.is_some() {
            self.nondeterministic = true;
        } else if !self.part.probe {
            self.analyse();
            self.progress = self.path_progress();
        } else if let Some(s) = self.split_at.filter(|&s| s > 0) {
            // A probe below a split node that has decisions above it (a
            // `before_split` choice): the races among the segments before
            // the split node are this part's too, or a part whose every
            // choice at this split node is another's would never try the
            // other alternatives above it.
            let ev = self.nodes[s].event;
            self.blocked_at = Some(self.blocked_at.map_or(ev, |b| b.min(ev)));
            self.analyse();
        }
        self.error.take().map_or(Ok(()), Err)
    }
}
