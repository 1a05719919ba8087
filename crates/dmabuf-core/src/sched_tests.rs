//! Tests of the engine and the strategies, through the shim as real code
//! uses it.

use crate::sync::atomic::global::AtomicUsize as GlobalUsize;
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use crate::sync::sched::*;
use crate::sync::{Arc, Condvar, Mutex, thread, time};
use std::collections::HashSet;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// Runs `f` once under `s` and hands back what it returned (None if the
/// root did not finish).
fn run_once<T: Send + 'static>(
    s: &mut dyn Strategy,
    cfg: &RunConfig,
    f: impl FnOnce() -> T + Send + 'static,
) -> (RunReport, Option<T>) {
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    assert!(s.next_execution(), "strategy exhausted");
    let r = run(s, cfg, move || {
        let v = f();
        *out.lock() = Some(v);
    });
    let v = slot.lock().take();
    (r, v)
}

fn addr<T>(m: &Mutex<T>) -> usize {
    m as *const Mutex<T> as usize
}

/// Two tasks increment a counter with load + store (racy) or under a lock.
fn increment_program(protected: bool) -> impl FnOnce() + Send + 'static {
    move || {
        let x = Arc::new(AtomicU64::new(0));
        let m = Arc::new(Mutex::new(()));
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (x, m) = (x.clone(), m.clone());
                thread::spawn_named(format!("inc{i}"), move || {
                    let _g = protected.then(|| m.lock());
                    let v = x.load(SeqCst);
                    x.store(v + 1, SeqCst);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(x.load(SeqCst), 2, "lost update");
    }
}

fn lost_updates(s: &mut dyn Strategy, protected: bool, runs: usize) -> usize {
    let cfg = RunConfig::default();
    (0..runs)
        .filter(|_| {
            assert!(s.next_execution());
            let r = run(s, &cfg, increment_program(protected));
            assert_eq!(r.outcome, Outcome::Completed);
            assert_eq!(r.leaked_threads, 0);
            !r.panics.is_empty()
        })
        .count()
}

#[test]
fn random_finds_lost_update_and_not_in_mutex_twin() {
    let found = lost_updates(&mut Random::new(1), false, 50);
    assert!(found > 0, "random missed the lost update in 50 runs");
    assert_eq!(lost_updates(&mut Random::new(1), true, 50), 0);
}

#[test]
fn pct_finds_lost_update_and_not_in_mutex_twin() {
    // Three tasks, about 20 steps: PCT's bound for depth 2 is 1/(3*20) per
    // run; 200 runs miss with probability below 4%, seed 1 finds it.
    let found = lost_updates(&mut Pct::new(1, 2, 20), false, 200);
    assert!(found > 0, "pct missed the lost update in 200 runs");
    assert_eq!(lost_updates(&mut Pct::new(1, 2, 20), true, 200), 0);
}

#[test]
fn lost_update_panic_is_reported_with_task_and_message() {
    let mut s = Random::new(1);
    let cfg = RunConfig::default();
    loop {
        assert!(s.next_execution());
        let r = run(&mut s, &cfg, increment_program(false));
        if let Some(p) = r.panics.first() {
            assert_eq!(p.task, "main");
            assert!(p.message.contains("lost update"), "{}", p.message);
            assert!(p.message.contains("tests.rs"), "{}", p.message);
            break;
        }
    }
}

/// Root and one spawned task each do two atomic ops; each op is logged in
/// the trace (not a scheduling point, so the trace order is the op order).
fn two_by_two() {
    let x = Arc::new(AtomicU64::new(0));
    let x2 = x.clone();
    let h = thread::spawn_named("b".into(), move || {
        for k in 0..2 {
            x2.fetch_add(1, SeqCst);
            crate::trace::emit("op", format!("b{k}"));
        }
    });
    for k in 0..2 {
        x.fetch_add(1, SeqCst);
        crate::trace::emit("op", format!("a{k}"));
    }
    h.join().unwrap();
}

#[test]
fn dfs_enumerates_every_interleaving_of_two_by_two_exactly_once() {
    // Each task runs three segments between decisions (start..op0,
    // op0..op1, op1..end); the schedules are the interleavings of two
    // sequences of three: C(6,3) = 20. The op orders are C(4,2) = 6.
    let mut dfs = Dfs::new(100);
    let cfg = RunConfig::default();
    let mut schedules = HashSet::new();
    let mut orders = HashSet::new();
    while dfs.next_execution() {
        let r = run(&mut dfs, &cfg, two_by_two);
        assert_eq!(r.outcome, Outcome::Completed);
        assert_eq!(r.divergence, None);
        assert!(schedules.insert(r.schedule.encode()), "schedule repeated");
        // The ops only: the trace also holds sched_switch rows, whose decision
        // counts differ between schedules of one op order.
        orders.insert(
            r.trace
                .iter()
                .filter(|e| e.name == "op")
                .map(|e| e.args.clone())
                .collect::<Vec<_>>(),
        );
        assert!(schedules.len() <= 20, "more schedules than interleavings");
    }
    assert_eq!(schedules.len(), 20);
    assert_eq!(dfs.executions(), 20);
    assert_eq!(orders.len(), 6);
    assert!(dfs.is_exhausted() && !dfs.hit_bound());
}

#[test]
fn switch_rows_name_the_next_task_and_mark_preemptions() {
    // Over every interleaving of two_by_two: each sched_switch row is
    // followed by a row of the task it names, and some schedules preempt
    // (the root is taken off the processor while it could go on).
    let mut dfs = Dfs::new(100);
    let cfg = RunConfig::default();
    let (mut preempted, mut blocked) = (0, 0);
    while dfs.next_execution() {
        let r = run(&mut dfs, &cfg, two_by_two);
        for (i, e) in r.trace.iter().enumerate() {
            if e.name != crate::trace::SCHED_SWITCH {
                continue;
            }
            let next = &r.trace[i + 1];
            assert_eq!(e.field("next_comm").as_deref(), Some(next.who.as_str()));
            assert_ne!(e.field("prev_comm").as_deref(), Some(next.who.as_str()));
            match e.field("prev_state").as_deref() {
                Some("R+") => preempted += 1,
                Some("S") => blocked += 1,
                other => panic!("prev_state {other:?}"),
            }
        }
    }
    assert!(preempted > 0, "some schedule preempts");
    assert!(blocked > 0, "some switch follows a block or an exit");
}

#[test]
fn dfs_with_tiny_bound_reports_hit_bound() {
    let mut dfs = Dfs::new(2);
    let cfg = RunConfig::default();
    while dfs.next_execution() {
        run(&mut dfs, &cfg, two_by_two);
    }
    assert!(dfs.is_exhausted());
    assert!(dfs.hit_bound());
    assert_eq!(dfs.executions(), 4, "two binary decisions within the bound");
}

#[test]
fn condvar_wait_timeout_times_out_in_virtual_time() {
    let (r, v) = run_once(&mut Random::new(3), &RunConfig::default(), || {
        let m = Mutex::new(());
        let cv = Condvar::new();
        let t0 = time::now_ns();
        let (_g, timed_out) = cv.wait_timeout(m.lock(), std::time::Duration::from_millis(5));
        (timed_out, time::now_ns() - t0)
    });
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(v, Some((true, 5 * MS)));
    assert_eq!(r.virtual_ns, 5 * MS);
}

#[test]
fn condvar_wait_timeout_notified_before_deadline_does_not_time_out() {
    let (r, v) = run_once(&mut Random::new(4), &RunConfig::default(), || {
        let p = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = p.clone();
        let h = thread::spawn(move || {
            *p2.0.lock() = true;
            p2.1.notify_all();
        });
        let mut g = p.0.lock();
        let mut timed_out = false;
        while !*g && !timed_out {
            (g, timed_out) = p.1.wait_timeout(g, std::time::Duration::from_secs(1));
        }
        drop(g);
        h.join().unwrap();
        timed_out
    });
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(v, Some(false));
    assert_eq!(r.virtual_ns, 0);
}

#[test]
fn abba_deadlock_is_reported_with_both_tasks_and_their_mutexes() {
    let cfg = RunConfig::default();
    let mut s = Random::new(5);
    for _ in 0..200 {
        let unwound_inactive = Arc::new(GlobalUsize::new(0));
        let probe_count = unwound_inactive.clone();
        let addrs = Arc::new(Mutex::new((0, 0)));
        let out = addrs.clone();
        assert!(s.next_execution());
        let r = run(&mut s, &cfg, move || {
            let a = Arc::new(Mutex::new(()));
            let b = Arc::new(Mutex::new(()));
            *out.lock() = (addr(&a), addr(&b));
            let spawn = |name: &str, first: Arc<Mutex<()>>, second: Arc<Mutex<()>>| {
                let probe = Probe(probe_count.clone());
                thread::spawn_named(name.to_owned(), move || {
                    let _p = probe;
                    let _g1 = first.lock();
                    thread::yield_now();
                    let _g2 = second.lock();
                })
            };
            let h1 = spawn("ab", a.clone(), b.clone());
            let h2 = spawn("ba", b, a);
            h1.join().unwrap();
            h2.join().unwrap();
        });
        let Outcome::Deadlock { tasks } = r.outcome else {
            continue;
        };
        let (a, b) = *addrs.lock();
        let find = |n: &str| tasks.iter().find(|t| t.name == n).unwrap().clone();
        assert_eq!(
            find("ab").blocked_on,
            BlockedOn::Resource {
                kind: "mutex",
                resource: b
            }
        );
        assert_eq!(
            find("ba").blocked_on,
            BlockedOn::Resource {
                kind: "mutex",
                resource: a
            }
        );
        assert_eq!(find("main").blocked_on, BlockedOn::Join(1));
        assert!(tasks.iter().all(|t| !t.stalled));
        assert_eq!(r.leaked_threads, 0);
        assert_eq!(
            unwound_inactive.load(SeqCst),
            2,
            "both tasks unwound on real primitives"
        );
        assert!(
            r.panics.is_empty(),
            "the abort is not a panic: {:?}",
            r.panics
        );
        return;
    }
    panic!("ABBA deadlock not found in 200 random runs");
}

/// Counts drops that happen while the dropping thread is not controlled.
struct Probe(Arc<GlobalUsize>);

impl Drop for Probe {
    fn drop(&mut self) {
        if !active() {
            self.0.fetch_add(1, SeqCst);
        }
    }
}

#[test]
fn waiter_on_stalled_tasks_lock_deadlocks() {
    let m = Arc::new(Mutex::new(()));
    let m_addr = addr(&m);
    let (r, _) = run_once(&mut Random::new(6), &RunConfig::default(), move || {
        let started = Arc::new(AtomicBool::new(false));
        let (m2, s2) = (m.clone(), started.clone());
        let _h = thread::spawn_named("userspace".into(), move || {
            set_group("user");
            let _g = m2.lock();
            s2.store(true, SeqCst);
            loop {
                thread::yield_now();
            }
        });
        while !started.load(SeqCst) {
            thread::yield_now();
        }
        stall_group("user");
        let _g = m.lock();
    });
    let Outcome::Deadlock { tasks } = r.outcome else {
        panic!("expected a deadlock, got {:?}", r.outcome);
    };
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].name, "main");
    assert!(!tasks[0].stalled);
    assert_eq!(
        tasks[0].blocked_on,
        BlockedOn::Resource {
            kind: "mutex",
            resource: m_addr
        }
    );
    assert_eq!(tasks[1].name, "userspace");
    assert_eq!(tasks[1].group, "user");
    assert!(tasks[1].stalled);
    assert_eq!(r.leaked_threads, 0);
}

#[test]
fn run_left_with_only_stalled_tasks_completes_and_their_deadlines_do_not_move_time() {
    let (r, v) = run_once(&mut Random::new(7), &RunConfig::default(), || {
        let started = Arc::new(AtomicBool::new(false));
        let s2 = started.clone();
        let _h = thread::spawn_named("userspace".into(), move || {
            set_group("user");
            s2.store(true, SeqCst);
            loop {
                thread::sleep(std::time::Duration::from_secs(3600));
            }
        });
        while !started.load(SeqCst) {
            thread::yield_now();
        }
        stall_group("user");
        let t0 = time::now_ns();
        thread::sleep(std::time::Duration::from_millis(1));
        time::now_ns() - t0
    });
    let Outcome::CompletedWithStalled { stalled } = r.outcome else {
        panic!("expected completed-with-stalled, got {:?}", r.outcome);
    };
    assert_eq!(v, Some(MS));
    assert_eq!(stalled.len(), 1);
    assert_eq!(stalled[0].name, "userspace");
    assert!(stalled[0].stalled);
    assert!(
        r.virtual_ns < 3600 * SEC,
        "a stalled sleeper moved the clock"
    );
    assert_eq!(r.leaked_threads, 0);
}

#[test]
fn task_joining_a_stalled_group_stops_at_once() {
    let ran = Arc::new(GlobalUsize::new(0));
    let ran2 = ran.clone();
    let (r, _) = run_once(&mut Random::new(8), &RunConfig::default(), move || {
        stall_group("user");
        let _h = thread::spawn_named("late".into(), move || {
            set_group("user");
            ran2.fetch_add(1, SeqCst);
        });
        thread::yield_now();
    });
    let Outcome::CompletedWithStalled { stalled } = r.outcome else {
        panic!("expected completed-with-stalled, got {:?}", r.outcome);
    };
    assert_eq!(stalled[0].name, "late");
    assert_eq!(ran.load(SeqCst), 0, "a stalled task ran");
    assert_eq!(r.leaked_threads, 0);
}

#[test]
fn sleep_advances_virtual_time_only() {
    let real0 = time::monotonic_ns();
    let (r, v) = run_once(&mut Random::new(9), &RunConfig::default(), || {
        let t0 = time::now_ns();
        thread::sleep(std::time::Duration::from_secs(10));
        time::now_ns() - t0
    });
    assert!(time::monotonic_ns() - real0 < 5 * SEC);
    assert_eq!(v, Some(10 * SEC));
    assert_eq!(r.virtual_ns, 10 * SEC);
    assert_eq!(r.outcome, Outcome::Completed);
}

#[test]
fn clock_starts_at_configured_value_in_every_execution() {
    let cfg = RunConfig {
        start_ns: 42 * SEC,
        ..RunConfig::default()
    };
    for _ in 0..2 {
        let (_, v) = run_once(&mut Random::new(10), &cfg, time::now_ns);
        assert_eq!(v, Some(42 * SEC));
    }
}

#[test]
fn park_consumes_an_earlier_unpark_and_park_timeout_times_out() {
    let (r, v) = run_once(&mut Random::new(11), &RunConfig::default(), || {
        let me = thread::current();
        me.unpark();
        let t0 = time::now_ns();
        thread::park();
        let after_token = time::now_ns() - t0;
        thread::park_timeout(std::time::Duration::from_millis(3));
        (after_token, time::now_ns() - t0)
    });
    assert_eq!(v, Some((0, 3 * MS)));
    assert_eq!(r.outcome, Outcome::Completed);
}

#[test]
fn panicking_task_is_reported_and_run_goes_on() {
    let (r, v) = run_once(&mut Random::new(12), &RunConfig::default(), || {
        let h = thread::spawn_named("bad".into(), || panic!("boom {}", 7));
        h.join().is_err()
    });
    assert_eq!(v, Some(true));
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(r.panics.len(), 1);
    assert_eq!(r.panics[0].task, "bad");
    assert!(r.panics[0].message.starts_with("boom 7 at "));
}

#[test]
fn endless_spinning_ends_at_step_limit_and_unwinds() {
    let cfg = RunConfig {
        max_steps: 1000,
        ..RunConfig::default()
    };
    let (r, v) = run_once(&mut Random::new(13), &cfg, || {
        let x = Arc::new(AtomicBool::new(false));
        let x2 = x.clone();
        let _h = thread::spawn(move || {
            while !x2.load(SeqCst) {
                thread::yield_now();
            }
        });
        while !x.load(SeqCst) {}
    });
    assert_eq!(r.outcome, Outcome::StepLimit);
    assert_eq!(r.steps, 1001);
    assert_eq!(v, None);
    assert_eq!(r.leaked_threads, 0);
}

/// Uses every primitive: mutex, condvar, atomics, park/unpark, spawn/join,
/// per-execution counters and trace events.
fn mixed_program() {
    let p = Arc::new((Mutex::new(0u32), Condvar::new()));
    let produced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let main = thread::current();
    let (p1, pr1, d1) = (p.clone(), produced.clone(), done.clone());
    let producer = thread::spawn_named("producer".into(), move || {
        for _ in 0..3 {
            let mut g = p1.0.lock();
            *g += 1;
            crate::trace::emit("produce", format!("n={}", *g));
            p1.1.notify_one();
            drop(g);
            pr1.fetch_add(1, SeqCst);
        }
        d1.store(true, SeqCst);
        main.unpark();
    });
    let p2 = p.clone();
    let consumer = thread::spawn_named("consumer".into(), move || {
        let mut g = p2.0.lock();
        while *g < 3 {
            let (g2, _) = p2.1.wait_timeout(g, std::time::Duration::from_micros(10));
            g = g2;
            crate::trace::emit("consumer_woke", format!("n={}", *g));
        }
    });
    while !done.load(SeqCst) {
        thread::park();
    }
    crate::trace::emit("main_unparked", String::new());
    // Polling must not depend on when the OS thread really exits.
    while !consumer.is_finished() {
        thread::yield_now();
    }
    producer.join().unwrap();
    consumer.join().unwrap();
    let ctx = crate::dma_fence::context_alloc(2).unwrap();
    crate::trace::emit(
        "done",
        format!(
            "produced={} context={ctx} next={}",
            produced.load(SeqCst),
            crate::dma_fence::context_alloc(1).unwrap()
        ),
    );
}

fn fingerprint(r: &RunReport) -> (String, Vec<crate::trace::Event>, String) {
    (
        r.schedule.encode(),
        r.trace.clone(),
        format!("{:?} {} {}", r.outcome, r.steps, r.virtual_ns),
    )
}

#[test]
fn same_seed_gives_same_schedule_and_trace() {
    let cfg = RunConfig::default();
    for mk in [
        (|| Box::new(Random::new(21)) as Box<dyn Strategy>) as fn() -> Box<dyn Strategy>,
        || Box::new(Pct::new(21, 3, 50)),
    ] {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut s = mk();
            let mut fps = Vec::new();
            for _ in 0..5 {
                assert!(s.next_execution());
                let r = run(s.as_mut(), &cfg, mixed_program);
                assert_eq!(r.outcome, Outcome::Completed);
                assert!(r.panics.is_empty(), "{:?}", r.panics);
                assert!(r.decisions > 0);
                fps.push(fingerprint(&r));
            }
            runs.push(fps);
        }
        assert_eq!(runs[0], runs[1]);
        let last = &runs[0][4].1;
        assert_eq!(last.last().unwrap().name, "done");
        assert_eq!(
            last.last().unwrap().args,
            "produced=3 context=1 next=3",
            "per-execution counters start at 1"
        );
        let distinct: HashSet<_> = runs[0].iter().map(|f| f.0.clone()).collect();
        assert!(distinct.len() > 1, "5 executions gave a single schedule");
    }
}

#[test]
fn replay_reproduces_trace_exactly() {
    let cfg = RunConfig::default();
    let mut s = Random::new(31);
    for _ in 0..5 {
        assert!(s.next_execution());
        let rec = run(&mut s, &cfg, mixed_program);
        let token = rec.schedule.encode();
        let mut rep = Replay::new(Schedule::decode(&token).unwrap());
        assert!(rep.next_execution());
        let again = run(&mut rep, &cfg, mixed_program);
        assert_eq!(again.divergence, None);
        assert_eq!(fingerprint(&again), fingerprint(&rec));
        assert!(!rep.next_execution(), "a replay runs once");
    }
}

#[test]
fn replay_that_does_not_fit_the_program_reports_divergence() {
    let cfg = RunConfig::default();
    let replay = |choices: Vec<TaskId>| {
        let mut rep = Replay::new(Schedule::new(choices));
        assert!(rep.next_execution());
        run(&mut rep, &cfg, increment_program(true))
    };
    let r = replay(vec![7, 7]);
    assert!(
        matches!(
            r.divergence,
            Some(ScheduleError::Diverged {
                decision: 0,
                expected: 7,
                ..
            })
        ),
        "{:?}",
        r.divergence
    );
    assert_eq!(r.outcome, Outcome::Completed, "the run goes on");

    let mut s = Random::new(32);
    assert!(s.next_execution());
    let rec = run(&mut s, &cfg, increment_program(true));
    let n = rec.schedule.len();
    let mut longer = rec.schedule.choices().to_vec();
    longer.extend([0, 0, 0]);
    let r = replay(longer);
    assert_eq!(
        r.divergence,
        Some(ScheduleError::Unconsumed {
            used: n,
            recorded: n + 3
        })
    );
    let r = replay(rec.schedule.choices()[..n - 1].to_vec());
    assert_eq!(
        r.divergence,
        Some(ScheduleError::Exhausted {
            decision: n - 1,
            recorded: n - 1
        })
    );
}

#[test]
fn concurrent_executions_do_not_interfere() {
    let sequential: Vec<_> = (0..4u64)
        .map(|seed| {
            let mut s = Random::new(seed);
            assert!(s.next_execution());
            fingerprint(&run(&mut s, &RunConfig::default(), mixed_program))
        })
        .collect();
    let hs: Vec<_> = (0..4u64)
        .map(|seed| {
            thread::spawn(move || {
                let mut s = Random::new(seed);
                (0..3)
                    .map(|_| {
                        assert!(s.next_execution());
                        fingerprint(&run(&mut s, &RunConfig::default(), mixed_program))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (seed, h) in hs.into_iter().enumerate() {
        let fps = h.join().unwrap();
        assert_eq!(fps[0], sequential[seed], "seed {seed}");
    }
}

#[test]
fn inactive_outside_executions_and_active_inside() {
    assert!(!active());
    assert_eq!(current_task(), None);
    assert_eq!(local_counter("x", 1), None);
    let (_, v) = run_once(&mut Random::new(40), &RunConfig::default(), || {
        let child = thread::spawn(|| (active(), current_task())).join().unwrap();
        (active(), current_task(), child)
    });
    assert_eq!(v, Some((true, Some(0), (true, Some(1)))));
}

#[test]
fn notify_one_wakes_the_lowest_numbered_waiter() {
    let (_, v) = run_once(&mut Dfs::new(0), &RunConfig::default(), || {
        let p = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let waiting = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let (p, w) = (p.clone(), waiting.clone());
                thread::spawn(move || {
                    let mut g = p.0.lock();
                    w.fetch_add(1, SeqCst);
                    g = p.1.wait(g);
                    g.push(i);
                })
            })
            .collect();
        while waiting.load(SeqCst) < 3 {
            thread::yield_now();
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            let n = p.0.lock().len();
            p.1.notify_one();
            while p.0.lock().len() == n {
                thread::yield_now();
            }
            order.push(*p.0.lock().last().unwrap());
        }
        for h in hs {
            h.join().unwrap();
        }
        order
    });
    assert_eq!(v, Some(vec![0, 1, 2]));
}

/// Blocks forever on a real condvar when dropped outside the scheduler.
struct StuckOnDrop;

impl Drop for StuckOnDrop {
    fn drop(&mut self) {
        let m = Mutex::new(());
        let cv = Condvar::new();
        let g = m.lock();
        let _g = cv.wait(g);
    }
}

#[test]
fn thread_that_cannot_unwind_is_reported_as_leaked() {
    let cfg = RunConfig {
        unwind_timeout: std::time::Duration::from_millis(100),
        ..RunConfig::default()
    };
    let (r, _) = run_once(&mut Random::new(50), &cfg, || {
        let _h = thread::spawn_named("stuck".into(), || {
            let _s = StuckOnDrop;
            thread::park();
        });
        thread::yield_now();
    });
    let Outcome::Deadlock { tasks } = r.outcome else {
        panic!("expected a deadlock, got {:?}", r.outcome);
    };
    assert_eq!(tasks[0].name, "stuck");
    assert_eq!(tasks[0].blocked_on, BlockedOn::Park);
    assert_eq!(r.leaked_threads, 1);
}

#[test]
fn wait_with_saturated_timeout_is_a_deadlock_not_a_timeout() {
    let (r, v) = run_once(&mut Random::new(51), &RunConfig::default(), || {
        let m = Mutex::new(());
        let cv = Condvar::new();
        cv.wait_timeout(m.lock(), std::time::Duration::MAX).1
    });
    assert_eq!(v, None);
    assert!(
        matches!(r.outcome, Outcome::Deadlock { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.virtual_ns, 0);
}

#[test]
fn dfs_reports_a_program_that_is_not_deterministic() {
    // Process state leaks into the program: every other execution spawns
    // one more task, so replayed prefixes meet other runnable sets.
    static RUNS: GlobalUsize = GlobalUsize::new(0);
    let cfg = RunConfig::default();
    let mut dfs = Dfs::new(10);
    let mut errors = 0;
    while dfs.executions() < 20 && dfs.next_execution() {
        let r = run(&mut dfs, &cfg, || {
            let extra = RUNS.fetch_add(1, SeqCst) % 2 == 1;
            let h = thread::spawn(|| {});
            let h2 = extra.then(|| thread::spawn(|| {}));
            h.join().unwrap();
            if let Some(h2) = h2 {
                h2.join().unwrap();
            }
        });
        if let Some(e) = r.divergence {
            assert!(matches!(e, ScheduleError::Nondeterministic { .. }), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 0, "nondeterminism went unnoticed");
}

/// `rcu::try_read_lock` refuses controlled tasks (their sections must be
/// scheduling points) and serves real threads, including a plain thread a
/// task starts and the test thread after the execution.
#[test]
fn rcu_sections_are_for_real_threads_only() {
    use crate::sync::rcu;
    assert!(rcu::try_read_lock().is_some(), "the test thread is real");
    let (r, v) = run_once(&mut Random::new(9), &RunConfig::default(), || {
        let task = rcu::try_read_lock().is_none() && rcu::read_section(|| ()).is_none();
        let real = std::thread::spawn(|| rcu::try_read_lock().is_some())
            .join()
            .unwrap();
        (task, real)
    });
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(v, Some((true, true)), "(task refused, real thread served)");
    assert!(rcu::try_read_lock().is_some());
    assert_eq!(rcu::read_section(|| 7), Some(7));
}
