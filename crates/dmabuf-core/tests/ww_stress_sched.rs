//! Wait-die under the controlled scheduler: N tasks acquire random subsets
//! of M ww-mutexes in random order with acquire contexts, many schedules
//! (random and PCT). Every schedule must complete (no deadlock), locks must
//! stay exclusive, and a context only ever dies for an older one.

use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
use dmabuf_core::sync::sched::{self, Outcome, Pct, Random, RunConfig, Strategy};
use dmabuf_core::sync::{Arc, Mutex, thread};
use dmabuf_core::ww_mutex::{RESERVATION_WW_CLASS, WwAcquireCtx, WwError, WwMutex};

const TASKS: usize = 3;
const OBJECTS: usize = 4;
const ROUNDS: usize = 2;

/// Deterministic per (task, round) choice of a subset in an order: the
/// randomness that matters here is the schedule's.
fn plan(task: usize, round: usize) -> Vec<usize> {
    let mut x = (task * 7 + round * 13 + 5) as u64;
    let mut order: Vec<usize> = (0..OBJECTS).collect();
    for i in (1..OBJECTS).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    let n = 2 + (task + round) % (OBJECTS - 1);
    order.truncate(n);
    order
}

/// Back-offs seen in one run: (dying stamp, older stamp).
type Deaths = Vec<(u64, u64)>;

struct Shared {
    locks: Vec<WwMutex>,
    /// Who holds each object, checked for exclusivity.
    holder: Vec<AtomicUsize>,
    /// Every back-off: (dying stamp, older stamp).
    deaths: Mutex<Deaths>,
}

/// Takes `objs` with one context (wait-die back-off), checks that no one
/// else holds them, and releases them; with `linger`, yields while holding
/// them to widen the window the check watches (for random and PCT
/// schedules: DPOR's completeness assumes no task yields).
fn acquire(s: &Shared, me: usize, objs: &[usize], linger: bool) {
    let mut ctx = WwAcquireCtx::new(&RESERVATION_WW_CLASS);
    let mut held: Vec<usize> = Vec::new();
    let mut slow: Option<usize> = None;
    'retry: loop {
        // After a back-off the contended lock is taken first, with
        // lock_slow and nothing else held (kernel ww_mutex protocol).
        if let Some(o) = slow.take() {
            s.locks[o]
                .lock_slow(&mut ctx)
                .expect("lock_slow with nothing held");
            held.push(o);
        }
        for &o in objs {
            if held.contains(&o) {
                continue;
            }
            match s.locks[o].lock(Some(&mut ctx)) {
                Ok(()) => held.push(o),
                Err(WwError::Deadlock { stamp, older }) => {
                    s.deaths.lock().push((stamp, older));
                    for h in held.drain(..) {
                        s.locks[h].unlock().expect("unlock of a held lock");
                    }
                    slow = Some(o);
                    continue 'retry;
                }
                Err(e) => panic!("unexpected ww error: {e}"),
            }
        }
        break;
    }
    ctx.acquire_done().expect("acquire_done");
    for &o in &held {
        let prev = s.holder[o].swap(me + 1, Ordering::SeqCst);
        assert_eq!(
            prev,
            0,
            "object {o} held by task {} and task {me} at once",
            prev - 1
        );
    }
    if linger {
        thread::yield_now();
    }
    for &o in &held {
        s.holder[o].store(0, Ordering::SeqCst);
        s.locks[o].unlock().expect("unlock");
    }
    ctx.fini().expect("fini with nothing held");
}

fn world() -> Arc<Shared> {
    let s = Arc::new(Shared {
        locks: (0..OBJECTS)
            .map(|_| WwMutex::new(&RESERVATION_WW_CLASS))
            .collect(),
        holder: (0..OBJECTS).map(|_| AtomicUsize::new(0)).collect(),
        deaths: Mutex::new(Vec::new()),
    });
    let s2 = s.clone();
    let hs: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = s2.clone();
            thread::spawn(move || {
                for r in 0..ROUNDS {
                    acquire(&s, t, &plan(t, r), true);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("task panicked");
    }
    s
}

fn explore(strategy: &mut dyn Strategy, runs: usize) -> usize {
    let mut deaths = 0;
    for _ in 0..runs {
        assert!(strategy.next_execution());
        let out: Arc<Mutex<Option<Deaths>>> = Arc::new(Mutex::new(None));
        let o2 = out.clone();
        let report = sched::run(strategy, &RunConfig::default(), move || {
            let s = world();
            *o2.lock() = Some(s.deaths.lock().clone());
        });
        assert!(report.panics.is_empty(), "{:?}", report.panics);
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "schedule {}",
            report.schedule
        );
        let d = out.lock().take().expect("observation");
        for (stamp, older) in &d {
            assert!(
                older < stamp,
                "ctx {stamp} died for ctx {older}, which is younger"
            );
        }
        deaths += d.len();
    }
    deaths
}

#[test]
fn wait_die_completes_and_only_the_younger_dies_random_schedules() {
    let deaths = explore(&mut Random::new(11), 150);
    // Contention does happen in these schedules: the back-off path is
    // exercised, not just the uncontended one.
    assert!(deaths > 0, "no schedule made a context back off");
}

#[test]
fn wait_die_completes_and_only_the_younger_dies_pct_schedules() {
    explore(&mut Pct::new(5, 3, 400), 150);
}

/// `tasks` tasks each take one ww-mutex without a context and bump a
/// counter under it (a load and a store), run to exhaustion by DPOR.
/// Returns the executions and the final counts seen.
fn plain_sections(tasks: usize) -> (u64, Vec<usize>) {
    let mut s = sched::Dpor::new(1000);
    let mut runs = 0;
    let seen: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    while s.next_execution() {
        runs += 1;
        let seen = seen.clone();
        let report = sched::run(&mut s, &RunConfig::default(), move || {
            let m = Arc::new(WwMutex::new(&RESERVATION_WW_CLASS));
            let c = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..tasks)
                .map(|_| {
                    let (m, c) = (m.clone(), c.clone());
                    thread::spawn(move || {
                        m.lock(None).expect("plain lock");
                        let v = c.load(Ordering::SeqCst);
                        c.store(v + 1, Ordering::SeqCst);
                        m.unlock().expect("unlock");
                    })
                })
                .collect();
            for h in hs {
                h.join().expect("task panicked");
            }
            seen.lock().push(c.load(Ordering::SeqCst));
        });
        assert!(report.panics.is_empty(), "{:?}", report.panics);
        assert_eq!(report.outcome, Outcome::Completed);
    }
    assert!(s.is_exhausted() && s.bounds_hit().is_empty());
    let v = seen.lock().clone();
    (runs, v)
}

#[test]
fn dpor_runs_one_execution_per_order_of_plain_ww_critical_sections() {
    // The lock word is a mutex of the model: n critical sections have n!
    // orders and nothing else to tell executions apart (no execution for a
    // locker that found the lock taken, none for where between another's
    // load and compare-and-swap it arrived).
    for (tasks, orders) in [(2, 2), (3, 6)] {
        let (runs, counts) = plain_sections(tasks);
        assert_eq!(runs, orders, "{tasks} tasks");
        assert!(counts.iter().all(|&c| c == tasks), "{counts:?}");
    }
}

/// Back-offs in `opposite_orders`, over every schedule (outside the model).
static OPPOSITE_DEATHS: dmabuf_core::sync::atomic::global::AtomicUsize =
    dmabuf_core::sync::atomic::global::AtomicUsize::new(0);

/// Two contexts take the same two locks in opposite orders (backing off
/// and retrying with `lock_slow` when they die, as `acquire` does), while
/// a plain locker takes the first: the smallest world where a context
/// holding a lock waits in the queue, dies, and meets a caller that only
/// waits.
fn opposite_orders() {
    let s = Arc::new(Shared {
        locks: (0..2)
            .map(|_| WwMutex::new(&RESERVATION_WW_CLASS))
            .collect(),
        holder: (0..2).map(|_| AtomicUsize::new(0)).collect(),
        deaths: Mutex::new(Vec::new()),
    });
    let (a, b, c) = (s.clone(), s.clone(), s.clone());
    let ta = thread::spawn(move || acquire(&a, 0, &[0, 1], false));
    let tb = thread::spawn(move || acquire(&b, 1, &[1, 0], false));
    let tc = thread::spawn(move || {
        c.locks[0].lock(None).expect("plain lock");
        c.locks[0].unlock().expect("unlock");
    });
    for h in [ta, tb, tc] {
        h.join().expect("task panicked");
    }
    let deaths = s.deaths.lock().clone();
    for (stamp, older) in &deaths {
        assert!(
            older < stamp,
            "ctx {stamp} died for ctx {older}, which is younger"
        );
    }
    OPPOSITE_DEATHS.fetch_add(deaths.len(), Ordering::Relaxed);
}

#[test]
fn wait_die_completes_in_every_schedule_of_opposite_orders_and_a_plain_locker() {
    // Exhaustive: every schedule the reduction explores completes, with
    // the queue (contexts holding a lock) and the model's mutex (callers
    // that only wait) side by side.
    let mut s = sched::Dpor::new(10_000);
    let mut runs = 0;
    while s.next_execution() {
        runs += 1;
        let r = sched::run(&mut s, &RunConfig::default(), opposite_orders);
        assert!(r.panics.is_empty(), "{:?}", r.panics);
        assert_eq!(r.outcome, Outcome::Completed, "schedule {}", r.schedule);
    }
    assert!(s.is_exhausted() && s.bounds_hit().is_empty(), "{runs} runs");
    // The contexts do contend: one dies and retries in some schedules, so
    // this is more than the uncontended path.
    assert!(OPPOSITE_DEATHS.load(Ordering::Relaxed) > 0, "{runs} runs");
}
