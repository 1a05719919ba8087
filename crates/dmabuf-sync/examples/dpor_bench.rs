//! Same-run ratios for the exploration strategies (BENCHMARKS.md):
//!
//! 1. DPOR against plain DFS on programs where both finish: executions and
//!    wall time of the whole search, and the ratio of each.
//! 2. Scheduling points per second of this engine (OS threads handing a
//!    baton) against loom (coroutines in one thread) on the same program,
//!    both searching it completely.
//!
//! Run: `cargo run --release -p dmabuf-sync --example dpor_bench`.

use dmabuf_sync::atomic::{AtomicUsize, Ordering::SeqCst};
use dmabuf_sync::sched::{self, Dfs, Dpor, Outcome, RunConfig, Strategy};
use dmabuf_sync::{Arc, Condvar, Mutex, thread};
use std::time::Instant;

type Prog = fn(usize) -> Box<dyn FnOnce() + Send>;

/// Two tasks swapping `k` values into one atomic: C(2k, k) traces.
fn conflicting(k: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let x = Arc::new(AtomicUsize::new(0));
        for base in [1, 100] {
            let x = x.clone();
            thread::spawn(move || {
                for i in 0..k {
                    x.swap(base + i, SeqCst);
                }
            });
        }
    })
}

/// `n` tasks writing their own atomic twice: one trace.
fn independent(n: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        for _ in 0..n {
            thread::spawn(|| {
                let a = AtomicUsize::new(0);
                a.store(1, SeqCst);
                a.store(2, SeqCst);
            });
        }
    })
}

/// `n` tasks incrementing a mutex-protected counter.
fn locked(n: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let m = Arc::new(Mutex::new(0usize));
        for _ in 0..n {
            let m = m.clone();
            thread::spawn(move || *m.lock() += 1);
        }
    })
}

/// `n` tasks incrementing a mutex-protected counter with a scheduling
/// point inside the critical section, so acquisitions can fail and block.
fn locked_contended(n: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let m = Arc::new(Mutex::new(0usize));
        for _ in 0..n {
            let m = m.clone();
            thread::spawn(move || {
                let mut g = m.lock();
                AtomicUsize::new(0).store(1, SeqCst);
                *g += 1;
            });
        }
    })
}

/// `n` tasks writing their own atomic, joined by the root: one trace.
fn independent_joined(n: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                thread::spawn(|| {
                    AtomicUsize::new(0).store(1, SeqCst);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    })
}

/// A producer handing `n` values one by one to a consumer.
fn handoff(n: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let p = Arc::new((Mutex::new(0usize), Condvar::new()));
        let p2 = p.clone();
        thread::spawn(move || {
            let (m, cv) = &*p2;
            let mut g = m.lock();
            while *g < n {
                g = cv.wait(g);
            }
        });
        let (m, cv) = &*p;
        for _ in 0..n {
            *m.lock() += 1;
            cv.notify_one();
        }
    })
}

/// Runs `s` to completion on `prog(arg)`: (executions, scheduling points,
/// seconds).
fn search(s: &mut dyn Strategy, prog: Prog, arg: usize) -> (u64, u64, f64) {
    let cfg = RunConfig::default();
    let t = Instant::now();
    let (mut n, mut steps) = (0, 0);
    while s.next_execution() {
        let r = sched::run(s, &cfg, prog(arg));
        assert_eq!(r.outcome, Outcome::Completed);
        assert!(r.divergence.is_none());
        n += 1;
        steps += r.steps;
    }
    (n, steps, t.elapsed().as_secs_f64())
}

/// The loom twin of `conflicting(k)` with the root joining both tasks, fully
/// explored (no preemption bound). Returns (executions, seconds).
fn loom_conflicting(k: usize) -> (u64, f64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUNS: AtomicU64 = AtomicU64::new(0);
    RUNS.store(0, Ordering::Relaxed);
    let t = Instant::now();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = None;
    b.check(move || {
        RUNS.fetch_add(1, Ordering::Relaxed);
        let x = loom::sync::Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let hs: Vec<_> = [1, 100]
            .into_iter()
            .map(|base| {
                let x = x.clone();
                loom::thread::spawn(move || {
                    for i in 0..k {
                        x.swap(base + i, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    (RUNS.load(Ordering::Relaxed), t.elapsed().as_secs_f64())
}

/// Our twin of `loom_conflicting`: the root joins both tasks.
fn conflicting_joined(k: usize) -> Box<dyn FnOnce() + Send> {
    Box::new(move || {
        let x = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = [1, 100]
            .into_iter()
            .map(|base| {
                let x = x.clone();
                thread::spawn(move || {
                    for i in 0..k {
                        x.swap(base + i, SeqCst);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    })
}

fn main() {
    println!("# DPOR vs DFS (whole search to completion, same run)");
    println!(
        "{:<24} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "program", "dfs_exec", "dpor_exec", "exec_x", "dfs_s", "dpor_s", "time_x"
    );
    let cases: [(&str, Prog, usize); 9] = [
        ("conflicting k=2", conflicting, 2),
        ("conflicting k=3", conflicting, 3),
        ("conflicting k=4", conflicting, 4),
        ("independent n=2", independent, 2),
        ("independent joined n=3", independent_joined, 3),
        ("locked counter n=3", locked, 3),
        ("locked, contended n=3", locked_contended, 3),
        ("conflicting joined k=3", conflicting_joined, 3),
        ("condvar handoff n=2", handoff, 2),
    ];
    for (name, prog, arg) in cases {
        let (dn, _, dt) = search(&mut Dfs::new(10_000), prog, arg);
        let (pn, _, pt) = search(&mut Dpor::new(10_000), prog, arg);
        println!(
            "{name:<24} {dn:>9} {pn:>9} {:>8.1} {dt:>9.3} {pt:>9.3} {:>8.1}",
            dn as f64 / pn as f64,
            dt / pt
        );
    }

    println!();
    println!("# engine vs loom: two tasks, k swaps each, root joins; full search");
    println!(
        "{:<6} {:>10} {:>10} {:>12} {:>10} {:>10} {:>14} {:>12}",
        "k",
        "ours_exec",
        "ours_s",
        "ours_pts/s",
        "loom_exec",
        "loom_s",
        "loom_exec/s",
        "exec/s ratio"
    );
    for k in [2, 3, 4] {
        let (on, steps, ot) = search(&mut Dpor::new(10_000), conflicting_joined, k);
        let (ln, lt) = loom_conflicting(k);
        let ours_rate = on as f64 / ot;
        let loom_rate = ln as f64 / lt;
        println!(
            "{k:<6} {on:>10} {ot:>10.3} {:>12.0} {ln:>10} {lt:>10.3} {loom_rate:>14.0} {:>12.2}",
            steps as f64 / ot,
            loom_rate / ours_rate
        );
    }
    // Points per second of one execution's hand-offs, for the record.
    let mut s = Dfs::new(0);
    let (n, steps, t) = search(&mut s, conflicting_joined, 200);
    println!(
        "\none execution of k=200 (no branching): {n} run, {steps} scheduling points in {t:.3}s = {:.0} points/s",
        steps as f64 / t
    );
}
