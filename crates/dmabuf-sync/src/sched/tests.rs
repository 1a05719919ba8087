//! The reduction on programs whose number of Mazurkiewicz traces is known,
//! checked against plain DFS (same outcomes, same violations), and the
//! completeness flags of both systematic strategies. The engine's other
//! tests (timeouts, stalls, deadlocks, replay) run through `dmabuf-core`'s
//! re-export of this crate, in `dmabuf-core/src/sched_tests.rs`.

use super::*;
use crate::atomic::{AtomicUsize, Ordering::SeqCst};
use crate::{Arc, Condvar, Mutex, thread};
use std::collections::{BTreeMap, BTreeSet};

/// What one execution observed: per task name, what it recorded. Kept in a
/// real (non-shim) mutex, so recording is not an operation of the model.
pub(super) type Seen = Arc<std::sync::Mutex<BTreeMap<String, String>>>;

pub(super) fn record(seen: &Seen, who: &str, what: String) {
    seen.lock().unwrap().insert(who.to_owned(), what);
}

/// One execution's observations (task, record) and its panics.
type Observed = (Vec<(String, String)>, Vec<String>);

/// Result of a search: executions run, distinct outcomes (with the panics of
/// each run), whether it finished.
struct Search {
    executions: u64,
    outcomes: BTreeSet<Observed>,
    finished: bool,
}

fn search(
    s: &mut dyn Strategy,
    limit: u64,
    prog: &dyn Fn(Seen) -> Box<dyn FnOnce() + Send>,
) -> Search {
    let cfg = RunConfig {
        max_steps: 10_000,
        ..RunConfig::default()
    };
    let mut out = Search {
        executions: 0,
        outcomes: BTreeSet::new(),
        finished: false,
    };
    while out.executions < limit {
        if !s.next_execution() {
            out.finished = true;
            return out;
        }
        let seen: Seen = Arc::default();
        let body = prog(seen.clone());
        let r = run(s, &cfg, body);
        assert_eq!(r.divergence, None, "{}", s.name());
        assert!(
            matches!(r.outcome, Outcome::Completed),
            "{}: {:?}",
            s.name(),
            r.outcome
        );
        out.executions += 1;
        let seen: Vec<(String, String)> = std::mem::take(&mut *seen.lock().unwrap())
            .into_iter()
            .collect();
        let mut panics: Vec<String> = r
            .panics
            .iter()
            .map(|p| {
                // The message without its source location.
                let m = p.message.split(" at ").next().unwrap_or("");
                format!("{}: {m}", p.task)
            })
            .collect();
        panics.sort();
        out.outcomes.insert((seen, panics));
    }
    out.finished = !s.next_execution();
    out
}

/// Every value a task recorded under `who`, over all outcomes of a search.
fn recorded(s: &Search, who: &str) -> BTreeSet<String> {
    s.outcomes
        .iter()
        .filter_map(|(o, _)| o.iter().find(|(k, _)| k == who).map(|x| x.1.clone()))
        .collect()
}

fn binomial(n: u64, k: u64) -> u64 {
    (1..=k).fold(1, |acc, i| acc * (n + 1 - i) / i)
}

/// `n` tasks, each storing to its own atomic `k` times.
fn own_atomics(n: usize, k: usize) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            for t in 0..n {
                let seen = seen.clone();
                thread::spawn(move || {
                    let a = AtomicUsize::new(0);
                    for i in 0..k {
                        a.store(i, SeqCst);
                    }
                    record(&seen, &format!("t{t}"), a.load(SeqCst).to_string());
                });
            }
        })
    }
}

/// Two tasks, each swapping `k` values into one shared atomic and recording
/// what each swap returned: every interleaving is a different trace and a
/// different outcome. Task `b` panics when it saw exactly the alternation
/// a1 b1 a2 b2 ... (one interleaving among C(2k, k)) if `plant` is set.
pub(super) fn conflicting(k: usize, plant: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let x = Arc::new(AtomicUsize::new(0));
            for (name, base) in [("a", 1), ("b", 100)] {
                let (x, seen) = (x.clone(), seen.clone());
                thread::spawn(move || {
                    let got: Vec<usize> = (0..k).map(|i| x.swap(base + i, SeqCst)).collect();
                    record(&seen, name, format!("{got:?}"));
                    let alternation: Vec<usize> = (1..=k).collect();
                    if plant && name == "b" && got == alternation {
                        panic!("planted bug: strict alternation");
                    }
                });
            }
        })
    }
}

/// `n` tasks each incrementing a mutex-protected counter and recording the
/// value it saw.
fn locked_counter(n: usize) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let m = Arc::new(Mutex::new(0usize));
            for t in 0..n {
                let (m, seen) = (m.clone(), seen.clone());
                thread::spawn(move || {
                    let v = {
                        let mut g = m.lock();
                        *g += 1;
                        *g
                    };
                    record(&seen, &format!("t{t}"), v.to_string());
                });
            }
        })
    }
}

/// A producer hands a value to a consumer through a mutex and a condvar.
fn handoff() -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    |seen| {
        Box::new(move || {
            let p = Arc::new((Mutex::new(None::<u32>), Condvar::new()));
            let (p2, s2) = (p.clone(), seen.clone());
            thread::spawn(move || {
                let (m, cv) = &*p2;
                let mut g = m.lock();
                let mut waits = 0;
                while g.is_none() {
                    g = cv.wait(g);
                    waits += 1;
                }
                record(&s2, "consumer", format!("{:?} after {waits} wait(s)", *g));
            });
            let (m, cv) = &*p;
            *m.lock() = Some(7);
            cv.notify_one();
        })
    }
}

/// A timed wait racing its signal: the signaller sleeps exactly as long as
/// the waiter's timeout, so both wake at the same clock jump and either may
/// get the lock first.
fn timed_race() -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    |seen| {
        Box::new(move || {
            let p = Arc::new((Mutex::new(false), Condvar::new()));
            let (p2, s2) = (p.clone(), seen.clone());
            thread::spawn(move || {
                let (m, cv) = &*p2;
                let mut g = m.lock();
                let mut timed_out = false;
                while !*g && !timed_out {
                    let (g2, t) = cv.wait_timeout(g, std::time::Duration::from_millis(10));
                    g = g2;
                    timed_out = t;
                }
                record(&s2, "waiter", format!("flag={} timed_out={timed_out}", *g));
            });
            thread::sleep(std::time::Duration::from_millis(10));
            let (m, cv) = &*p;
            *m.lock() = true;
            cv.notify_all();
        })
    }
}

/// DPOR and DFS on `prog`: both must finish, see the same outcomes, and
/// DPOR must not run more executions. Returns (DPOR, DFS) executions.
fn same_as_dfs(prog: &dyn Fn(Seen) -> Box<dyn FnOnce() + Send>) -> (Search, Search) {
    let mut dpor = Dpor::new(1000);
    let a = search(&mut dpor, 200_000, prog);
    let mut dfs = Dfs::new(1000);
    let b = search(&mut dfs, 200_000, prog);
    assert!(
        a.finished && dpor.bounds_hit().is_empty(),
        "dpor did not finish"
    );
    assert!(
        b.finished && dfs.bounds_hit().is_empty(),
        "dfs did not finish"
    );
    assert_eq!(
        a.outcomes, b.outcomes,
        "dpor and dfs saw different outcomes"
    );
    assert!(a.executions <= b.executions);
    (a, b)
}

#[test]
fn dpor_runs_one_execution_when_every_task_writes_its_own_atomic() {
    let (a, b) = same_as_dfs(&own_atomics(2, 2));
    assert_eq!(a.executions, 1, "2 independent tasks");
    assert!(b.executions > 1, "dfs should branch: {}", b.executions);
    // Too many interleavings for DFS, one trace for DPOR.
    for n in [3, 4, 8] {
        let mut dpor = Dpor::new(1000);
        let a = search(&mut dpor, 1000, &own_atomics(n, 3));
        assert!(a.finished && dpor.bounds_hit().is_empty());
        assert_eq!(a.executions, 1, "{n} independent tasks");
    }
}

/// A writer stores 1 then 2 into a shared atomic while an observer reads
/// it `k` times, inside an [`unobserved`](super::unobserved) scope or not;
/// the observer records what it read.
fn observed_writer(k: usize, hidden: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let x = Arc::new(AtomicUsize::new(0));
            let x2 = x.clone();
            thread::spawn(move || {
                x2.store(1, SeqCst);
                x2.store(2, SeqCst);
            });
            let _scope = hidden.then(super::unobserved);
            let got: Vec<String> = (0..k).map(|_| x.load(SeqCst).to_string()).collect();
            record(&seen, "observer", got.join(","));
        })
    }
}

#[test]
fn dpor_does_not_order_what_an_unobserved_scope_reads() {
    // Seen: every interleaving of 2 reads against 2 stores, C(4, 2) = 6
    // traces, each reading something else.
    let (a, _) = same_as_dfs(&observed_writer(2, false));
    assert_eq!(a.executions, 6);
    assert_eq!(a.outcomes.len(), 6);
    // Unobserved: the reads race with nothing, so one execution; what they
    // read is wherever that one schedule ran them.
    let mut dpor = Dpor::new(1000);
    let b = search(&mut dpor, 1000, &observed_writer(2, true));
    assert!(b.finished && dpor.bounds_hit().is_empty());
    assert_eq!(b.executions, 1);
    assert_eq!(b.outcomes.len(), 1);
    // The scope ends with its guard: reads after it are seen again.
    let mut dpor = Dpor::new(1000);
    let c = search(&mut dpor, 1000, &|seen| {
        Box::new(move || {
            let x = Arc::new(AtomicUsize::new(0));
            let x2 = x.clone();
            thread::spawn(move || x2.store(1, SeqCst));
            drop(super::unobserved());
            record(&seen, "observer", x.load(SeqCst).to_string());
        })
    });
    assert!(c.finished);
    assert_eq!(c.executions, 2);
}

#[test]
fn dpor_runs_one_execution_per_interleaving_of_two_conflicting_sequences() {
    for k in 1..=4u64 {
        let (a, b) = same_as_dfs(&conflicting(k as usize, false));
        let traces = binomial(2 * k, k);
        assert_eq!(a.outcomes.len() as u64, traces, "k={k}: distinct outcomes");
        assert_eq!(a.executions, traces, "k={k}: C(2k,k) executions");
        assert!(b.executions >= a.executions);
    }
}

#[test]
fn dpor_finds_every_order_of_a_lock_protected_counter() {
    let (a, b) = same_as_dfs(&locked_counter(3));
    // Each task saw a distinct value 1..=3, in every one of the 3! orders.
    assert_eq!(a.outcomes.len(), 6);
    assert!(
        a.executions < b.executions,
        "{} vs {}",
        a.executions,
        b.executions
    );
}

#[test]
fn dpor_explores_a_condvar_handoff_like_dfs() {
    let (a, _) = same_as_dfs(&handoff());
    // Value already there (no wait), or handed over after one wait.
    let seen: BTreeSet<String> = a.outcomes.iter().map(|(o, _)| o[0].1.clone()).collect();
    assert!(seen.contains("Some(7) after 0 wait(s)"), "{seen:?}");
    assert!(seen.contains("Some(7) after 1 wait(s)"), "{seen:?}");
}

#[test]
fn dpor_explores_a_timed_wait_racing_its_signal_like_dfs() {
    let (a, _) = same_as_dfs(&timed_race());
    let seen: BTreeSet<String> = a.outcomes.iter().map(|(o, _)| o[0].1.clone()).collect();
    assert!(seen.contains("flag=false timed_out=true"), "{seen:?}");
    assert!(seen.contains("flag=true timed_out=true"), "{seen:?}");
}

#[test]
fn dpor_finds_a_bug_only_one_interleaving_in_924_reaches() {
    let k = 6;
    assert_eq!(binomial(12, 6), 924);
    let mut dpor = Dpor::new(1000);
    let r = search(&mut dpor, 10_000, &conflicting(k, true));
    assert!(r.finished && dpor.bounds_hit().is_empty());
    assert_eq!(r.executions, 924);
    let buggy: Vec<_> = r.outcomes.iter().filter(|(_, p)| !p.is_empty()).collect();
    assert_eq!(buggy.len(), 1, "exactly one interleaving reaches the bug");
    assert_eq!(
        buggy[0].1,
        vec!["task2: planted bug: strict alternation".to_owned()]
    );
}

#[test]
fn searches_cut_by_their_depth_bound_say_so() {
    let mut dpor = Dpor::new(2);
    let a = search(&mut dpor, 100_000, &conflicting(3, false));
    assert!(a.finished);
    assert_eq!(dpor.bounds_hit(), vec![Bound::Depth]);
    let mut dfs = Dfs::new(2);
    let b = search(&mut dfs, 100_000, &conflicting(3, false));
    assert!(b.finished);
    assert_eq!(dfs.bounds_hit(), vec![Bound::Depth]);
}

#[test]
fn searches_with_executions_at_the_step_limit_say_so() {
    let cfg = RunConfig {
        max_steps: 50,
        ..RunConfig::default()
    };
    let spin = || {
        let x = Arc::new(AtomicUsize::new(0));
        let x2 = x.clone();
        thread::spawn(move || {
            while x2.load(SeqCst) == 0 {
                thread::yield_now();
            }
        });
        x.load(SeqCst);
    };
    let mut dpor = Dpor::new(1000);
    let mut dfs = Dfs::new(1000);
    for s in [&mut dpor as &mut dyn Strategy, &mut dfs] {
        let mut n = 0;
        while n < 200 && s.next_execution() {
            let r = run(s, &cfg, spin);
            assert_eq!(r.outcome, Outcome::StepLimit);
            n += 1;
        }
    }
    assert!(dpor.bounds_hit().contains(&Bound::Steps));
    assert!(dfs.bounds_hit().contains(&Bound::Steps));
}

#[test]
fn dpor_stats_count_executions_and_depth() {
    let mut dpor = Dpor::new(1000);
    let a = search(&mut dpor, 1000, &conflicting(2, false));
    let st = dpor.stats();
    assert_eq!(st.executions, a.executions);
    assert!(st.max_depth >= 4, "{st:?}");
    assert!(st.max_events >= 8, "{st:?}");
}

/// `n` tasks each storing to its own atomic, joined by the root task.
fn own_atomics_joined(n: usize) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let hs: Vec<_> = (0..n)
                .map(|t| {
                    let seen = seen.clone();
                    thread::spawn(move || {
                        let a = AtomicUsize::new(0);
                        a.store(t, SeqCst);
                        record(&seen, &format!("t{t}"), a.load(SeqCst).to_string());
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            record(&seen, "root", "joined".into());
        })
    }
}

#[test]
fn a_join_never_races_with_the_finish_it_waits_for() {
    // Joining a finished task and blocking until it finishes end in the
    // same state: one trace, whoever goes first.
    let (a, b) = same_as_dfs(&own_atomics_joined(2));
    assert_eq!(a.executions, 1, "dfs ran {}", b.executions);
    assert!(b.executions > 1);
    let mut dpor = Dpor::new(1000);
    let r = search(&mut dpor, 1000, &own_atomics_joined(4));
    assert!(r.finished && dpor.bounds_hit().is_empty());
    assert_eq!(r.executions, 1);
}

#[test]
fn a_failed_lock_attempt_is_no_event_one_execution_per_lock_order() {
    // n tasks taking one lock once: the traces are the n! orders in which
    // they get it. A failed attempt (block, wake, retry) is the same trace
    // as waiting before trying, so it adds none.
    for (n, orders) in [(2, 2), (3, 6), (4, 24)] {
        let mut dpor = Dpor::new(1000);
        let r = search(&mut dpor, 10_000, &locked_counter(n));
        assert!(r.finished && dpor.bounds_hit().is_empty());
        assert_eq!(r.outcomes.len(), orders, "n={n}: every order seen");
        assert_eq!(
            r.executions, orders as u64,
            "n={n}: one execution per order"
        );
    }
}

/// A task that finds the lock held by `try_lock` and one that finds it free
/// are different traces: the attempt reads the mutex's releases.
fn try_lock_race() -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    |seen| {
        Box::new(move || {
            let m = Arc::new(Mutex::new(0u32));
            let (m2, s2) = (m.clone(), seen.clone());
            thread::spawn(move || {
                let got = m2.try_lock().map(|g| *g);
                record(&s2, "trier", format!("{got:?}"));
            });
            let mut g = m.lock();
            // A scheduling point inside the critical section, so the trier
            // can find the lock held.
            AtomicUsize::new(0).store(1, SeqCst);
            *g = 5;
            drop(g);
        })
    }
}

#[test]
fn try_lock_sees_the_lock_free_held_and_released_like_dfs() {
    let (a, _) = same_as_dfs(&try_lock_race());
    let seen: BTreeSet<String> = a.outcomes.iter().map(|(o, _)| o[0].1.clone()).collect();
    let want: BTreeSet<String> = ["Some(0)", "None", "Some(5)"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, want);
}

/// A task sets a `SetOnce` while `n` others wait for it (and one polls it
/// with `get` if `poll`).
fn set_once(n: usize, poll: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let v = Arc::new(crate::SetOnce::new());
            for t in 0..n {
                let (v, seen) = (v.clone(), seen.clone());
                thread::spawn(move || {
                    let got: u32 = v.wait();
                    record(&seen, &format!("w{t}"), got.to_string());
                });
            }
            if poll {
                let (v, seen) = (v.clone(), seen.clone());
                thread::spawn(move || {
                    let got: Option<u32> = v.get();
                    record(&seen, "poll", format!("{got:?}"));
                });
            }
            v.set(7);
        })
    }
}

#[test]
fn a_set_once_wait_never_races_with_its_set_but_get_does() {
    // Waiting before or after the set ends the same way: one trace.
    let (a, b) = same_as_dfs(&set_once(2, false));
    assert_eq!(a.executions, 1, "dfs ran {}", b.executions);
    assert!(b.executions > 1);
    let seen: BTreeSet<String> = a.outcomes.iter().map(|(o, _)| o[0].1.clone()).collect();
    assert_eq!(seen, BTreeSet::from(["7".to_owned()]));
    // A poll sees the value or not: two traces, both outcomes.
    let (a, _) = same_as_dfs(&set_once(1, true));
    assert_eq!(a.executions, 2);
    let polls: BTreeSet<String> = recorded(&a, "poll");
    assert_eq!(
        polls,
        BTreeSet::from(["None".to_owned(), "Some(7)".to_owned()])
    );
}

/// Records every segment's numbered accesses of one execution.
struct Recorder {
    done: bool,
    events: Vec<Vec<(u32, Access)>>,
}

impl Strategy for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn next_execution(&mut self) -> bool {
        !std::mem::replace(&mut self.done, true)
    }
    fn choose(&mut self, runnable: &[TaskId], _current: Option<TaskId>, _step: u64) -> TaskId {
        runnable[0]
    }
    fn observes_events(&self) -> bool {
        true
    }
    fn on_event(&mut self, ev: &StepEvent<'_>) {
        self.events.push(ev.accesses.to_vec());
    }
}

/// An object dropped and another built at the very same address are two
/// objects to the search: numbering must not depend on where the allocator
/// puts things (it differs between executions, and a replayed prefix that
/// numbered a reused address differently was reported as nondeterminism).
#[test]
fn a_dropped_object_and_a_new_one_at_its_address_are_numbered_apart() {
    let mut rec = Recorder {
        done: false,
        events: Vec::new(),
    };
    assert!(rec.next_execution());
    rec.done = false;
    let addrs: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    let a2 = addrs.clone();
    let r = run(&mut rec, &RunConfig::default(), move || {
        let mut slot = std::mem::MaybeUninit::<AtomicUsize>::uninit();
        for v in [1, 2] {
            let a = slot.write(AtomicUsize::new(v));
            a2.lock().unwrap().push(a as *const AtomicUsize as usize);
            assert_eq!(a.load(SeqCst), v);
            // SAFETY: written just above, dropped once, never read again
            // before the next write.
            unsafe { slot.assume_init_drop() };
        }
    });
    assert!(matches!(r.outcome, Outcome::Completed), "{:?}", r.outcome);
    let addrs = addrs.lock().unwrap().clone();
    assert_eq!(addrs[0], addrs[1], "both atomics live in one slot");
    // Every segment reads its task's group; the loads are the other reads,
    // and they read two different object numbers.
    let group = rec.events[0]
        .iter()
        .find(|(_, a)| *a == Access::Read)
        .map(|(n, _)| *n);
    let loads: BTreeSet<u32> = rec
        .events
        .iter()
        .flatten()
        .filter(|(n, a)| *a == Access::Read && Some(*n) != group)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        loads.len(),
        2,
        "the loads of the two atomics: {:?}",
        rec.events
    );
}

/// `updaters` tasks each add one to a [`crate::Monotone`] counter; `waiters`
/// tasks wait until it reaches `updaters` (a monotone predicate), one of
/// them with a timeout that never passes first, and record what they saw;
/// with `reader`, one more task reads it once.
fn monotone(
    updaters: usize,
    waiters: usize,
    reader: bool,
) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let c = Arc::new(crate::Monotone::new(0usize));
            for t in 0..waiters {
                let (c, seen) = (c.clone(), seen.clone());
                thread::spawn(move || {
                    let timeout = (t == 0).then(|| std::time::Duration::from_secs(3600));
                    let ok = c.wait_until(|v| *v >= updaters, timeout);
                    record(&seen, &format!("w{t}"), format!("{ok}"));
                });
            }
            if reader {
                let (c, seen) = (c.clone(), seen.clone());
                thread::spawn(move || {
                    let v = c.read(|v| *v);
                    record(&seen, "reader", v.to_string());
                });
            }
            for _ in 0..updaters {
                let c = c.clone();
                thread::spawn(move || c.update(|v| *v += 1));
            }
        })
    }
}

#[test]
fn monotone_waits_never_race_with_each_other_or_the_update_they_wait_for() {
    // Two waiters and one update: one trace (a mutex and condvar gave
    // every re-check an acquisition to permute).
    let (a, b) = same_as_dfs(&monotone(1, 2, false));
    assert_eq!(a.executions, 1, "dfs ran {}", b.executions);
    assert!(b.executions > 3, "dfs ran {}", b.executions);
    for (o, _) in &a.outcomes {
        assert!(o.iter().all(|(_, v)| v == "true"), "{o:?}");
    }
    // Two updates race with each other: two traces, same outcome.
    let (a, _) = same_as_dfs(&monotone(2, 1, false));
    assert_eq!(a.executions, 2);
    // A read races with the updates: it sees 0, 1 or 2.
    let (a, _) = same_as_dfs(&monotone(2, 0, true));
    let reads: BTreeSet<String> = recorded(&a, "reader");
    assert_eq!(reads, BTreeSet::from(["0".into(), "1".into(), "2".into()]));
}

/// A waiter whose predicate became true at one update and an updater that
/// goes on (stores an atomic, updates the cell again): the waiter may run
/// between the two updates and miss the store. Its wait is ordered after
/// the update that made the predicate true, not after the later one (which
/// would order it after the store and hide the outcome "0").
fn monotone_between_updates(seen: Seen) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let c = Arc::new(crate::Monotone::new((false, false)));
        let x = Arc::new(AtomicUsize::new(0));
        let (c2, x2) = (c.clone(), x.clone());
        thread::spawn(move || {
            c2.update(|v| v.0 = true);
            x2.store(1, SeqCst);
            c2.update(|v| v.1 = true);
        });
        c.wait_until(|v| v.0, None);
        record(&seen, "x", x.load(SeqCst).to_string());
    })
}

#[test]
fn a_monotone_wait_is_ordered_after_the_update_that_made_it_true_only() {
    let (a, _) = same_as_dfs(&monotone_between_updates);
    let xs: BTreeSet<String> = recorded(&a, "x");
    assert_eq!(xs, BTreeSet::from(["0".into(), "1".into()]));
}

/// A task waits on a condvar until a flag is set, then reads an atomic;
/// the other sets the flag, notifies, stores the atomic and notifies again.
/// The waiter may be woken by the first notify and run before the store
/// ("waited 1, x 0"): its wake-up is ordered after the notify that woke
/// it, not after the second one (a write of the same condvar), which
/// would order its read after the store and hide that outcome.
fn woken_between_notifies(seen: Seen) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let p = Arc::new((Mutex::new(false), Condvar::new(), AtomicUsize::new(0)));
        let p2 = p.clone();
        let h = thread::spawn(move || {
            let (m, cv, x) = &*p2;
            *m.lock() = true;
            cv.notify_all();
            x.store(1, SeqCst);
            cv.notify_all();
        });
        let (m, cv, x) = &*p;
        let mut g = m.lock();
        let mut waits = 0;
        while !*g {
            g = cv.wait(g);
            waits += 1;
        }
        drop(g);
        let seen_x = x.load(SeqCst);
        record(&seen, "x", format!("waited {waits}, x {seen_x}"));
        h.join().unwrap();
    })
}

#[test]
fn a_woken_task_is_ordered_after_its_waker_only() {
    let (a, _) = same_as_dfs(&woken_between_notifies);
    let xs: BTreeSet<String> = recorded(&a, "x");
    assert!(xs.contains("waited 1, x 0"), "{xs:?}");
}

/// `submitters` tasks each queue a job on a [`crate::Guarded`] queue; a
/// worker pops them in order and records the order; with `drainer`, one
/// more task waits until the queue has been emptied.
fn guarded_queue(submitters: usize, drainer: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let q = Arc::new(crate::Guarded::new((Vec::<usize>::new(), 0usize)));
            for i in 0..submitters {
                let q = q.clone();
                thread::spawn(move || q.update(|v| v.0.push(i)));
            }
            if drainer {
                let (q, seen) = (q.clone(), seen.clone());
                thread::spawn(move || {
                    let ok = q.wait_until(|v| v.1 == submitters, None);
                    record(&seen, "drained", ok.to_string());
                });
            }
            let mut order = Vec::new();
            for _ in 0..submitters {
                let j = q.wait_map(
                    |v| {
                        let j = (!v.0.is_empty()).then(|| v.0.remove(0))?;
                        v.1 += 1;
                        Some(j)
                    },
                    |_| None,
                );
                order.push(j.unwrap());
            }
            record(&seen, "order", format!("{order:?}"));
        })
    }
}

#[test]
fn a_guarded_check_that_finds_nothing_is_no_event() {
    // One job: the worker's empty checks never race with the submission,
    // so one trace.
    let (a, b) = same_as_dfs(&guarded_queue(1, false));
    assert_eq!(a.executions, 1, "dfs ran {}", b.executions);
    assert!(b.executions > 1, "dfs ran {}", b.executions);
    // Two jobs: the submissions race (two orders), and the first pop races
    // with the second submission (before or after it): four traces, two
    // outcomes.
    let (a, _) = same_as_dfs(&guarded_queue(2, false));
    assert_eq!(a.executions, 4);
    assert_eq!(a.outcomes.len(), 2, "{:?}", a.outcomes);
    // A drainer that only reads: its waits add no trace. A check that
    // arrives after the pop it waits for races with it; run first, it
    // blocks and is woken by that pop, the same trace, which sleep sets
    // cut short.
    let (a, _) = same_as_dfs(&guarded_queue(1, true));
    assert_eq!(a.outcomes.len(), 1, "{:?}", a.outcomes);
    for (o, _) in &a.outcomes {
        assert!(o.contains(&("drained".into(), "true".into())), "{o:?}");
    }
    let mut dpor = Dpor::new(1000);
    let a = search(&mut dpor, 1000, &guarded_queue(2, true));
    assert!(a.finished);
    let st = dpor.stats();
    assert_eq!(st.executions - st.sleep_blocked, 4, "{st:?}");
}

/// Two tasks set a bit each of one [`AtomicBits`](crate::atomic::AtomicBits)
/// word and then test a bit: disjoint bits never race; a task that tests
/// the other's bit does.
fn flag_bits(test_other: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let w = Arc::new(crate::atomic::AtomicBits::new(0));
            let hs: Vec<_> = (0..2u32)
                .map(|i| {
                    let w = w.clone();
                    let s = seen.clone();
                    thread::spawn(move || {
                        let mine = 1 << i;
                        let other = 1 << (1 - i);
                        w.fetch_or(mine, 0, SeqCst);
                        let mask = if test_other { other } else { mine };
                        let v = w.load(mask, SeqCst);
                        record(&s, &format!("t{i}"), format!("{v}"));
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        })
    }
}

#[test]
fn dpor_does_not_order_operations_on_disjoint_bits_of_one_word() {
    let (a, b) = same_as_dfs(&flag_bits(false));
    assert_eq!(a.executions, 1, "disjoint bits: one trace");
    assert!(b.executions > 1, "dfs branches: {}", b.executions);
    // Testing the other task's bit is a race: each task may see it set or
    // not, but not both unset (each sets its own bit before testing).
    let (a, _) = same_as_dfs(&flag_bits(true));
    assert_eq!(a.outcomes.len(), 3, "{:?}", a.outcomes);
}

/// `holders` tasks each take and drop a reference of a count that the root
/// holds (`extra` more references held by the root too); the root drops
/// its own (before joining them if `root_first`) and records whether its
/// puts were the last.
fn ref_holders(
    holders: usize,
    extra: usize,
    root_first: bool,
) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let c = Arc::new(crate::atomic::RefCount::new(1 + extra));
            let hs: Vec<_> = (0..holders)
                .map(|i| {
                    let c = c.clone();
                    c.get();
                    let s = seen.clone();
                    thread::spawn(move || {
                        c.get();
                        let last = c.put();
                        let last2 = c.put();
                        record(&s, &format!("t{i}"), format!("{last} {last2}"));
                    })
                })
                .collect();
            let mut lasts = Vec::new();
            if root_first {
                for _ in 0..=extra {
                    lasts.push(c.put());
                }
            }
            for h in hs {
                h.join().unwrap();
            }
            if !root_first {
                for _ in 0..=extra {
                    lasts.push(c.put());
                }
            }
            record(&seen, "root", format!("{lasts:?}"));
        })
    }
}

#[test]
fn dpor_does_not_order_reference_gets_and_puts_that_do_not_release() {
    // The root holds its references until the holders are done: every
    // holder's get and put commutes with every other's, whatever the count.
    for extra in [0, 2] {
        let (a, b) = same_as_dfs(&ref_holders(2, extra, false));
        assert_eq!(a.executions, 1, "one trace (extra {extra})");
        assert!(b.executions > 1, "dfs branches: {}", b.executions);
        assert_eq!(a.outcomes.len(), 1);
    }
    // Too many interleavings for DFS, still one trace.
    let mut dpor = Dpor::new(1000);
    let a = search(&mut dpor, 1000, &ref_holders(4, 0, false));
    assert!(a.finished && dpor.bounds_hit().is_empty());
    assert_eq!(a.executions, 1, "four holders");
    // With the root dropping its reference without waiting, the three
    // last puts race to release: each of them may be the one.
    let (a, _) = same_as_dfs(&ref_holders(2, 0, true));
    assert!(a.executions >= 3, "releasing puts: {}", a.executions);
    assert_eq!(a.outcomes.len(), 3, "{:?}", a.outcomes);
}

/// A count of `refs` references: `n` tasks drop one each, and the main
/// task, after joining them, drops whatever is left over them.
fn putters(n: usize, refs: usize) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let c = Arc::new(crate::atomic::RefCount::new(refs));
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let c = c.clone();
                    let s = seen.clone();
                    thread::spawn(move || {
                        let last = c.put();
                        record(&s, &format!("t{i}"), format!("{last}"));
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            for _ in n..refs {
                record(&seen, "main", format!("{}", c.put()));
            }
        })
    }
}

#[test]
fn dpor_orders_the_puts_that_release_a_reference_count() {
    // Two tasks each own one of the two references and drop it: which one
    // releases depends on the order, and both orders are explored.
    let (a, _) = same_as_dfs(&putters(2, 2));
    assert_eq!(a.outcomes.len(), 2, "{:?}", a.outcomes);
    assert_eq!(a.executions, 2);
}

/// Two references: one task takes a second reference from its own, the
/// other drops its reference; the main task drops what is left after
/// joining them.
fn get_beside_near_put(seen: Seen) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let c = Arc::new(crate::atomic::RefCount::new(2));
        let (c1, c2) = (c.clone(), c.clone());
        // The put's task first: the search runs it first, so its first
        // execution has the put before the get.
        let s = seen.clone();
        let p = thread::spawn(move || record(&s, "put", format!("{}", c2.put())));
        let g = thread::spawn(move || c1.get());
        g.join().unwrap();
        p.join().unwrap();
        record(&seen, "main", format!("{} {}", c.put(), c.put()));
    })
}

#[test]
fn dpor_does_not_order_a_holders_get_with_another_holders_put() {
    // Whatever the order, the put does not release and the main task's
    // second put does: one trace, although the put finds two references in
    // one order and three in the other.
    let (a, b) = same_as_dfs(&get_beside_near_put);
    assert_eq!(a.executions, 1, "{:?}", a.outcomes);
    assert!(b.executions > 1, "dfs branches: {}", b.executions);
    assert_eq!(a.outcomes.len(), 1, "{:?}", a.outcomes);
}

#[test]
fn a_put_wakes_a_holder_whose_put_it_turns_into_the_releasing_one() {
    // Three references, one task drops each: whichever puts last releases.
    // A task's put recorded in a sleep set as one that does not release
    // becomes the releasing one once the others have put: their puts must
    // wake it, or the search calls those executions redundant and never
    // sees that task release.
    let prog = putters(3, 3);
    let mut dpor = Dpor::new(1000);
    let a = search(&mut dpor, 1000, &prog);
    assert!(a.finished);
    let st = dpor.stats();
    assert_eq!(st.sleep_blocked, 0, "{st:?}");
    let (_, b) = same_as_dfs(&prog);
    assert_eq!(a.outcomes, b.outcomes);
    assert_eq!(a.outcomes.len(), 3, "{:?}", a.outcomes);
}

/// A writer stores two words (inside a [`one_event`](super::one_event)
/// scope or not) while a reader loads both, in the same order.
fn two_words(scoped: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let x = Arc::new(crate::atomic::AtomicU32::new(0));
            let y = Arc::new(crate::atomic::AtomicU32::new(0));
            let (x2, y2) = (x.clone(), y.clone());
            let w = thread::spawn(move || {
                let one = scoped.then(super::one_event);
                x2.store(1, SeqCst);
                y2.store(1, SeqCst);
                drop(one);
            });
            let s = seen.clone();
            let r = thread::spawn(move || {
                let a = x.load(SeqCst);
                let b = y.load(SeqCst);
                record(&s, "read", format!("x{a} y{b}"));
            });
            w.join().unwrap();
            r.join().unwrap();
        })
    }
}

#[test]
fn a_one_event_scope_is_seen_whole_or_not_at_all() {
    // Unscoped, the reader's loads can fall between the two stores and see
    // the first without the second (x1 y0).
    let (_, b) = same_as_dfs(&two_words(false));
    let seen = recorded(&b, "read");
    assert!(seen.contains("x1 y0"), "{seen:?}");
    // Scoped, the two stores are one event: the reader's loads fall before
    // it, after it, or around it (x0 y1); never inside it.
    let (a, b) = same_as_dfs(&two_words(true));
    let seen = recorded(&b, "read");
    assert_eq!(
        seen,
        ["x0 y0", "x0 y1", "x1 y1"].map(String::from).into(),
        "{seen:?}"
    );
    // The writer's event races with each load once: three traces.
    assert_eq!(a.executions, 3, "{}", a.executions);
}

/// One step of a generated program (`random_counts`).
#[derive(Clone, Copy, Debug)]
enum CountOp {
    /// Take a reference from one the task owns.
    Get,
    /// Drop one of the task's references; records whether it released.
    Put,
    /// Load the shared word; records the value.
    Load,
    /// Store the task's number in the shared word.
    Store,
}

/// A generated program: a reference count whose references are dealt to
/// the tasks (and the root) before they start, a shared word, and per task
/// a few steps that never drop a reference the task does not own.
fn random_counts(rng: &mut rand_pcg::Pcg64) -> (Vec<Vec<CountOp>>, Vec<usize>, usize, bool) {
    use rand::Rng;
    // Two tasks beside the root: three make full DFS run past 100,000
    // executions (every spawn, record and join is a scheduling point).
    let tasks = 2;
    let root_refs = rng.gen_range(0..=1);
    let mut owned = Vec::new();
    let mut progs = Vec::new();
    for _ in 0..tasks {
        let start = rng.gen_range(1..=2);
        let mut held: usize = start;
        let mut ops = Vec::new();
        for _ in 0..rng.gen_range(1..=2) {
            let op = match rng.gen_range(0..4) {
                0 if held > 0 => {
                    held += 1;
                    CountOp::Get
                }
                1 if held > 0 => {
                    held -= 1;
                    CountOp::Put
                }
                2 => CountOp::Load,
                3 => CountOp::Store,
                // A get or put with no reference of its own: skipped.
                _ => continue,
            };
            ops.push(op);
        }
        owned.push(start);
        progs.push(ops);
    }
    let root_first = rng.gen_range(0..2) == 1;
    (progs, owned, root_refs, root_first)
}

fn count_program(
    progs: Vec<Vec<CountOp>>,
    owned: Vec<usize>,
    root_refs: usize,
    root_first: bool,
) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        let (progs, owned) = (progs.clone(), owned.clone());
        Box::new(move || {
            let total = root_refs + owned.iter().sum::<usize>();
            let c = Arc::new(crate::atomic::RefCount::new(total));
            let x = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = progs
                .into_iter()
                .zip(owned)
                .enumerate()
                .map(|(i, (ops, mut held))| {
                    let (c, x, s) = (c.clone(), x.clone(), seen.clone());
                    thread::spawn(move || {
                        let mut log = Vec::new();
                        for op in ops {
                            match op {
                                CountOp::Get => {
                                    c.get();
                                    held += 1;
                                }
                                CountOp::Put => {
                                    held -= 1;
                                    log.push(format!("p{}", c.put()));
                                }
                                CountOp::Load => log.push(format!("l{}", x.load(SeqCst))),
                                CountOp::Store => x.store(i + 1, SeqCst),
                            }
                        }
                        // The task's remaining references go at its end.
                        for _ in 0..held {
                            log.push(format!("e{}", c.put()));
                        }
                        record(&s, &format!("t{i}"), log.join(" "));
                    })
                })
                .collect();
            let mut log = Vec::new();
            let drop_root = |log: &mut Vec<String>| {
                for _ in 0..root_refs {
                    log.push(format!("{}", c.put()));
                }
            };
            if root_first {
                drop_root(&mut log);
            }
            for h in hs {
                h.join().unwrap();
            }
            if !root_first {
                drop_root(&mut log);
            }
            record(&seen, "root", log.join(" "));
        })
    }
}

#[test]
fn dpor_sees_what_dfs_sees_on_generated_reference_count_programs() {
    // Gets, puts (some of them the releasing one, whichever task comes
    // last), and loads and stores of a shared word, in two tasks beside
    // the root (which may drop its references while they run): the
    // reduction's outcomes are exactly the full search's, and it never
    // runs more executions. Programs whose full search needs more than
    // 2,000 executions are drawn again (counted: most are small enough).
    use rand::SeedableRng;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
    let (mut compared, mut drawn, mut fewer, mut several) = (0, 0, 0, 0);
    while compared < 40 && drawn < 120 {
        drawn += 1;
        let (progs, owned, root_refs, root_first) = random_counts(&mut rng);
        let what = format!("{progs:?} owned {owned:?} root {root_refs} {root_first}");
        let prog = count_program(progs, owned, root_refs, root_first);
        let mut dfs = Dfs::new(1000);
        let b = search(&mut dfs, 2_000, &prog);
        if !b.finished {
            continue;
        }
        let mut dpor = Dpor::new(1000);
        let a = search(&mut dpor, 200_000, &prog);
        assert!(a.finished && dpor.bounds_hit().is_empty(), "{what}");
        assert_eq!(a.outcomes, b.outcomes, "{what}");
        assert!(a.executions <= b.executions, "{what}");
        compared += 1;
        fewer += usize::from(a.executions < b.executions);
        several += usize::from(a.outcomes.len() > 1);
    }
    assert_eq!(
        compared, 40,
        "only {compared} of {drawn} drawn programs were small enough"
    );
    // The generator is not degenerate: most cases reduce, and many have
    // several outcomes (which put releases, what a load sees).
    assert!(fewer > 30, "{fewer} of 40 reduced");
    assert!(several > 10, "{several} of 40 with several outcomes");
}

/// Every execution of a DPOR search of `prog`, with the search's estimate
/// of its total after it.
fn estimates(prog: &dyn Fn(Seen) -> Box<dyn FnOnce() + Send>) -> Vec<(u64, f64, u64)> {
    let mut d = Dpor::new(1000);
    let cfg = RunConfig {
        max_steps: 10_000,
        ..RunConfig::default()
    };
    let mut out = Vec::new();
    while d.next_execution() {
        let seen: Seen = Arc::default();
        let r = run(&mut d, &cfg, prog(seen));
        assert!(matches!(r.outcome, Outcome::Completed));
        out.push((d.stats().executions, d.progress(), d.estimate()));
    }
    assert!(d.is_exhausted());
    assert_eq!(d.progress(), 1.0);
    out
}

#[test]
fn dpor_estimates_the_whole_search_from_its_progress() {
    for k in 3..=6u64 {
        let e = estimates(&conflicting(k as usize, false));
        let total = binomial(2 * k, k);
        assert_eq!(e.len() as u64, total);
        for &(n, p, est) in &e {
            assert!(p > 0.0 && p <= 1.0, "k={k} after {n}: progress {p}");
            assert!(est >= n, "k={k} after {n}: estimate {est}");
        }
        // Exact at the end, and halfway: the two subtrees of the first
        // decision (which task swaps first) are mirror images, and once
        // the first is finished every choice below it is known.
        assert_eq!(e.last().unwrap().2, total, "k={k}");
        assert_eq!(e[(total / 2 - 1) as usize].2, total, "k={k}");
        // Low before that: the choices found so far are fewer than the
        // tree's.
        assert!(e[(total / 4) as usize].2 < total, "k={k}");
    }
    // n tasks incrementing a locked counter: n! orders, estimated low
    // until the end (each node's backtrack set grows as the races below
    // it are reversed), never below the executions run.
    let e = estimates(&locked_counter(4));
    assert_eq!(e.len(), 24);
    assert_eq!(e[11].2, 16);
    assert_eq!(e[23].2, 24);
}

/// The CPUs thread `tid` (0: the calling one) may run on.
#[cfg(target_os = "linux")]
fn affinity(tid: libc::pid_t) -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data, filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_execution_and_its_caller_share_one_cpu_and_the_caller_gets_its_binding_back() {
    let before = affinity(0);
    // SAFETY: gettid has no preconditions.
    let caller = unsafe { libc::gettid() };
    // Per execution: the CPUs of its task, and of the caller meanwhile.
    type Bindings = Vec<(Vec<usize>, Vec<usize>)>;
    let seen: Arc<std::sync::Mutex<Bindings>> = Arc::default();
    let cfg = RunConfig::default();
    let mut s = Random::new(3);
    for _ in 0..3 {
        assert!(s.next_execution());
        let seen2 = seen.clone();
        let r = run(&mut s, &cfg, move || {
            let h = thread::spawn(|| affinity(0));
            let child = h.join().unwrap();
            assert_eq!(child, affinity(0), "a task inherits the execution's CPU");
            seen2.lock().unwrap().push((affinity(0), affinity(caller)));
        });
        assert!(matches!(r.outcome, Outcome::Completed), "{:?}", r.outcome);
        assert_eq!(affinity(0), before, "the caller's binding is restored");
    }
    let seen = seen.lock().unwrap();
    for (task, calling) in seen.iter() {
        if before.len() > 1 {
            assert_eq!(task.len(), 1, "one CPU: {task:?}");
        }
        assert_eq!(calling, task, "the caller runs where its execution runs");
        // Every execution of this thread on the same CPU.
        assert_eq!(task, &seen[0].0);
    }
}

crate::shim_thread_local! {
    static MARK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Task threads go back to a pool and serve later tasks (creating an OS
/// thread per task cost more than the rest of a short execution); a
/// reused thread must look new to the task: its task-locals start from
/// their initial value, and its name is the task's.
#[test]
fn task_threads_are_reused_and_each_task_sees_fresh_task_locals_and_its_own_name() {
    const EXECUTIONS: usize = 20;
    const CHILDREN: usize = 3;
    let threads: Arc<std::sync::Mutex<std::collections::HashSet<std::thread::ThreadId>>> =
        Arc::default();
    let cfg = RunConfig::default();
    let mut s = Random::new(5);
    for _ in 0..EXECUTIONS {
        assert!(s.next_execution());
        let seen = threads.clone();
        let r = run(&mut s, &cfg, move || {
            assert_eq!(MARK.with(|m| m.get()), 0, "the root starts afresh");
            MARK.with(|m| m.set(1));
            seen.lock().unwrap().insert(std::thread::current().id());
            let hs: Vec<_> = (0..CHILDREN)
                .map(|i| {
                    thread::spawn_named(format!("child{i}"), move || {
                        let fresh = MARK.with(|m| m.get()) == 0;
                        MARK.with(|m| m.set(2));
                        let kept = MARK.with(|m| m.get()) == 2;
                        (
                            fresh,
                            kept,
                            thread::current_name(),
                            std::thread::current().id(),
                        )
                    })
                })
                .collect();
            for (i, h) in hs.into_iter().enumerate() {
                let (fresh, kept, name, id) = h.join().unwrap();
                assert!(fresh, "a task's local starts from its initial value");
                assert!(kept, "and keeps what the task stores in it");
                assert_eq!(name.as_deref(), Some(format!("child{i}").as_str()));
                seen.lock().unwrap().insert(id);
            }
            assert_eq!(
                MARK.with(|m| m.get()),
                1,
                "the children's values are theirs"
            );
            assert_eq!(thread::current_name().as_deref(), Some("main"));
        });
        assert!(matches!(r.outcome, Outcome::Completed), "{:?}", r.outcome);
        assert!(r.panics.is_empty(), "{:?}", r.panics);
    }
    let tasks = EXECUTIONS * (CHILDREN + 1);
    let used = threads.lock().unwrap().len();
    // Other tests of this process share the pool, so a few more threads
    // than one execution's four may serve these tasks, but not one each.
    assert!(used <= tasks / 2, "{used} OS threads for {tasks} tasks");
}

/// A userspace task making `k` system calls (in group `kernel`, each
/// counting on a shared atomic that a kernel task also reads) and returning
/// to group `user` after each, and a task of group `hw` that stalls `user`
/// whenever it runs. Outcome: how many calls the user task finished
/// (recorded after each) and what the kernel task read.
fn stalled_anywhere(k: usize) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let x = Arc::new(AtomicUsize::new(0));
            let (x2, s2) = (x.clone(), seen.clone());
            let user = thread::spawn_named("user".into(), move || {
                set_group("user");
                for i in 1..=k {
                    set_group("kernel");
                    x2.fetch_add(1, SeqCst);
                    set_group("user");
                    record(&s2, "user", i.to_string());
                }
            });
            let staller = thread::spawn_named("staller".into(), || {
                set_group("hw");
                stall_group("user");
            });
            let (x3, s3) = (x.clone(), seen.clone());
            let kernel = thread::spawn_named("kernel".into(), move || {
                set_group("hw");
                record(&s3, "kernel", x3.load(SeqCst).to_string());
            });
            let _ = staller.join();
            let _ = kernel.join();
            drop(user);
        })
    }
}

/// [`search`] for programs that may end with stalled tasks.
fn search_stalled(
    s: &mut dyn Strategy,
    prog: &dyn Fn(Seen) -> Box<dyn FnOnce() + Send>,
) -> (u64, BTreeSet<Vec<(String, String)>>) {
    let cfg = RunConfig {
        max_steps: 10_000,
        ..RunConfig::default()
    };
    let mut n = 0;
    let mut outcomes = BTreeSet::new();
    while n < 100_000 && s.next_execution() {
        let seen: Seen = Arc::default();
        let r = run(s, &cfg, prog(seen.clone()));
        assert_eq!(r.divergence, None);
        assert!(
            matches!(
                r.outcome,
                Outcome::Completed | Outcome::CompletedWithStalled { .. }
            ),
            "{:?}",
            r.outcome
        );
        n += 1;
        outcomes.insert(
            std::mem::take(&mut *seen.lock().unwrap())
                .into_iter()
                .collect(),
        );
    }
    (n, outcomes)
}

#[test]
fn dpor_explores_every_point_a_group_may_be_stalled_at_like_dfs() {
    for k in 1..=3 {
        let mut dpor = Dpor::new(1000);
        let (a, seen_dpor) = search_stalled(&mut dpor, &stalled_anywhere(k));
        assert!(dpor.is_exhausted() && dpor.bounds_hit().is_empty());
        let mut dfs = Dfs::new(1000);
        let (b, seen_dfs) = search_stalled(&mut dfs, &stalled_anywhere(k));
        assert!(dfs.bounds_hit().is_empty());
        eprintln!("k={k}: dpor {a} executions, dfs {b}: {seen_dpor:?}");
        assert_eq!(seen_dpor, seen_dfs, "k={k}");
        assert!(a <= b);
    }
}
