//! Throughput of the controlled scheduler: baton hand-overs per second.
//!
//! `cargo run --release -p dmabuf-core --example sched_throughput`
//!
//! Two workloads: a ping-pong where every scheduling point switches tasks
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

fn contended_mutex() {
    let m = Arc::new(Mutex::new(0u64));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..500 {
                    *m.lock() += 1;
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(*m.lock(), 2000);
}

fn spawn_join() {
    for _ in 0..4 {
        thread::spawn(|| {}).join().unwrap();
    }
}

fn main() {
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
