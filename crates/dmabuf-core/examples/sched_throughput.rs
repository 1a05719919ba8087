//! Throughput of the controlled scheduler: baton hand-overs per second.
//!
//! `cargo run --release -p dmabuf-core --example sched_throughput`
//!
//! A search's shape first (many short executions on one calling thread,
//! bound to one CPU against unbound, same run), what starting a task costs
//! (its thread from the engine's pool) against creating an OS thread,
//! then two workloads: a
//! ping-pong where every scheduling point switches tasks
//! (`thread::yield_now` forces a switch), and four tasks contending for a
//! mutex under the random strategy (a realistic mix of switching and
//! non-switching points).

use dmabuf_core::sync::sched::{self, RunConfig, Strategy};
use dmabuf_core::sync::{Arc, Mutex, thread};
use std::time::Instant;

fn measure(label: &str, runs: u32, f: fn()) {
    let mut s = sched::Random::new(1);
    let cfg = RunConfig {
        max_steps: u64::MAX,
        ..RunConfig::default()
    };
    let (mut steps, mut switches) = (0u64, 0u64);
    let t0 = Instant::now();
    for _ in 0..runs {
        assert!(s.next_execution());
        let r = sched::run(&mut s, &cfg, f);
        assert_eq!(r.outcome, sched::Outcome::Completed);
        steps += r.steps;
        switches += r.switches;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{label:<22} {runs:>4} runs  {:>9.0} steps/s  {:>9.0} switches/s  {:>7.1} runs/s",
        steps as f64 / secs,
        switches as f64 / secs,
        f64::from(runs) / secs
    );
}

fn ping_pong() {
    let h = thread::spawn(|| {
        for _ in 0..10_000 {
            thread::yield_now();
        }
    });
    for _ in 0..10_000 {
        thread::yield_now();
    }
    h.join().unwrap();
}

/// `tasks` tasks each incrementing one mutex-protected counter `each`
/// times.
fn mutex_tasks(tasks: u64, each: u64) {
    let m = Arc::new(Mutex::new(0u64));
    let hs: Vec<_> = (0..tasks)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..each {
                    *m.lock() += 1;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(*m.lock(), tasks * each);
}

fn contended_mutex() {
    mutex_tasks(4, 500);
}

fn spawn_join() {
    for _ in 0..4 {
        thread::spawn(|| {}).join().unwrap();
    }
}

/// What starting a task costs inside an execution (its thread comes from
/// the engine's pool), against creating and joining an OS thread on one
/// CPU, which every task paid before the pool: same run, alternated.
fn task_start_cost() {
    const TASKS: u32 = 4;
    fn per_task_in_execution(runs: u32) -> f64 {
        let mut s = sched::Random::new(3);
        let cfg = RunConfig::default();
        let t0 = Instant::now();
        for _ in 0..runs {
            assert!(s.next_execution());
            let r = sched::run(&mut s, &cfg, spawn_join);
            assert_eq!(r.outcome, sched::Outcome::Completed);
        }
        // The root is a task too.
        t0.elapsed().as_secs_f64() * 1e6 / f64::from(runs * (TASKS + 1))
    }
    fn per_os_thread(n: u32) -> f64 {
        let t0 = Instant::now();
        for _ in 0..n {
            std::thread::spawn(|| {}).join().unwrap();
        }
        t0.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    }
    let cpu = {
        // SAFETY: plain data; the kernel fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid set of the right size, for this thread.
        let ok = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
        };
        // SAFETY: indices below `CPU_SETSIZE` of a valid set.
        (ok).then(|| (0..libc::CPU_SETSIZE as usize).find(|&c| unsafe { libc::CPU_ISSET(c, &set) }))
            .flatten()
    };
    // The OS threads on one CPU, as an execution's tasks are (the engine
    // binds the executions' calling thread itself).
    let os_thread = move || {
        if let Some(c) = cpu {
            // SAFETY: as above; pid 0 is the calling thread.
            unsafe {
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut one);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
            }
        }
        per_os_thread(2_000)
    };
    let (mut task, mut os) = (0.0, 0.0);
    for _ in 0..3 {
        task += std::thread::spawn(|| per_task_in_execution(500))
            .join()
            .unwrap();
        os += std::thread::spawn(os_thread).join().unwrap();
    }
    let (task, os) = (task / 3.0, os / 3.0);
    println!(
        "starting a task        {task:>7.1} µs per task in an execution (pooled threads); an OS thread created and joined: {os:>6.1} µs ({:.1}x)",
        os / task
    );
}

/// A search's shape: many short executions, one after the other, on one
/// calling thread. Runs per second with every thread of an execution (and
/// the calling thread while it runs) bound to the calling thread's CPU,
/// against no binding, measured alternately in this run.
fn short_executions() {
    fn runs_per_s(pin: bool, runs: u32) -> f64 {
        let mut s = sched::Random::new(7);
        let cfg = RunConfig {
            pin_to_one_cpu: pin,
            ..RunConfig::default()
        };
        let t0 = Instant::now();
        for _ in 0..runs {
            assert!(s.next_execution());
            let r = sched::run(&mut s, &cfg, || mutex_tasks(3, 5));
            assert_eq!(r.outcome, sched::Outcome::Completed);
        }
        f64::from(runs) / t0.elapsed().as_secs_f64()
    }
    let (mut pinned, mut free) = (0.0, 0.0);
    for _ in 0..3 {
        pinned += runs_per_s(true, 300);
        free += runs_per_s(false, 300);
    }
    println!(
        "short executions       {:>7.0} runs/s bound to one CPU, {:>7.0} unbound: {:.2}x",
        pinned / 3.0,
        free / 3.0,
        pinned / free
    );
}

fn main() {
    short_executions();
    task_start_cost();
    measure("ping-pong (yield_now)", 5, ping_pong);
    measure("4 tasks, one mutex", 20, contended_mutex);
    measure("spawn+join x4", 200, spawn_join);
    // Two executions at once, as parallel checker workers would run them.
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|_| thread::spawn(|| measure("  parallel: mutex", 20, contended_mutex)))
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    println!("2 parallel executions: {:.2} s", t0.elapsed().as_secs_f64());
}
