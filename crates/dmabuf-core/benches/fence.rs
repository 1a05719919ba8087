//! Fence benchmarks, with baselines measured in the same run.
//!
//! `cargo bench -p dmabuf-core --bench fence -- --warm-up-time 1 --measurement-time 3`
//!
//! | group | what | baseline |
//! |---|---|---|
//! | `signal` | signalling with 0, 1 and 16 no-op callbacks | — (target: 0 callbacks <= 30 ns) |
//! | `add_callback_signal` | one registration plus the signal that runs it | — |
//! | `is_signaled` | on a signalled fence | — |
//! | `wake` | round trip of two cross-thread one-shot wake-ups | std `Mutex`+`Condvar` event; `event-listener` event |
//! | `shim` | shim `Mutex` lock/unlock and `AtomicU64` load; the two clocks | `parking_lot::Mutex`; std `AtomicU64`; `clock_gettime` |
//!
//! std synchronisation and `event-listener` appear here only as baselines.

use criterion::{BatchSize, Criterion, criterion_group};
use dmabuf_core::dma_fence::{Fence, FenceContext, SignalHandle};
use dmabuf_core::sync;
use event_listener::Listener;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn signal(c: &mut Criterion) {
    let ctx = FenceContext::named("bench", "signal");
    let mut g = c.benchmark_group("signal");
    for n in [0usize, 1, 16] {
        g.bench_function(format!("{n}_callbacks"), |b| {
            b.iter_batched(
                || {
                    let (f, h) = ctx.create();
                    let regs: Vec<_> = (0..n)
                        .map(|_| {
                            f.add_callback(|f: &Fence| {
                                black_box(f);
                            })
                            .ok()
                        })
                        .collect();
                    (f, h, regs)
                },
                |(f, h, regs)| {
                    h.signal().unwrap();
                    (f, regs)
                },
                BatchSize::SmallInput,
            )
        });
    }
    // The same without reading the clock: what the clock read costs.
    g.bench_function("0_callbacks_given_timestamp", |b| {
        b.iter_batched(
            || ctx.create(),
            |(f, h)| {
                h.signal_timestamp(1).unwrap();
                f
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn add_callback_signal(c: &mut Criterion) {
    let ctx = FenceContext::named("bench", "add_callback");
    c.bench_function("add_callback_signal", |b| {
        b.iter_batched(
            || ctx.create(),
            |(f, h)| {
                let r = f
                    .add_callback(|f: &Fence| {
                        black_box(f);
                    })
                    .ok();
                h.signal().unwrap();
                (f, r)
            },
            BatchSize::SmallInput,
        )
    });
}

fn is_signaled(c: &mut Criterion) {
    let (f, h) = FenceContext::named("bench", "is_signaled").create();
    h.signal().unwrap();
    c.bench_function("is_signaled/signalled", |b| {
        b.iter(|| black_box(&f).is_signaled())
    });
}

/// A one-shot event for the wake-up round trip.
trait OneShot: Send + Sync + 'static {
    fn new() -> Self;
    fn set(&self);
    fn wait(&self);
}

struct CondvarEvent {
    done: std::sync::Mutex<bool>,
    cond: std::sync::Condvar,
}

impl OneShot for CondvarEvent {
    fn new() -> Self {
        Self {
            done: std::sync::Mutex::new(false),
            cond: std::sync::Condvar::new(),
        }
    }
    fn set(&self) {
        *self.done.lock().unwrap() = true;
        self.cond.notify_all();
    }
    fn wait(&self) {
        let mut g = self.done.lock().unwrap();
        while !*g {
            g = self.cond.wait(g).unwrap();
        }
    }
}

struct ListenerEvent {
    done: std::sync::atomic::AtomicBool,
    event: event_listener::Event,
}

impl OneShot for ListenerEvent {
    fn new() -> Self {
        Self {
            done: std::sync::atomic::AtomicBool::new(false),
            event: event_listener::Event::new(),
        }
    }
    fn set(&self) {
        self.done
            .store(true, dmabuf_core::sync::atomic::Ordering::Release);
        self.event.notify(usize::MAX);
    }
    fn wait(&self) {
        loop {
            if self.done.load(dmabuf_core::sync::atomic::Ordering::Acquire) {
                return;
            }
            let l = self.event.listen();
            if self.done.load(dmabuf_core::sync::atomic::Ordering::Acquire) {
                return;
            }
            l.wait();
        }
    }
}

/// A fence as a one-shot event: the handle sits in a slot until `set`.
struct FenceEvent {
    fence: Fence,
    handle: sync::Mutex<Option<SignalHandle>>,
}

impl OneShot for FenceEvent {
    fn new() -> Self {
        let (fence, h) = Fence::init(dmabuf_core::NamedOps::new("bench", "wake"), 1, 1);
        Self {
            fence,
            handle: sync::Mutex::new(Some(h)),
        }
    }
    fn set(&self) {
        let h = self.handle.lock().take();
        if let Some(h) = h {
            h.signal().unwrap();
        }
    }
    fn wait(&self) {
        self.fence.wait(None).unwrap();
    }
}

/// `iters` round trips: the main thread sets `ping[i]` and waits for
/// `pong[i]`, which a second thread sets once it saw `ping[i]`. Events are
/// created before the clock starts.
fn round_trips<E: OneShot>(iters: u64) -> Duration {
    let n = iters as usize;
    let ping: sync::Arc<Vec<E>> = sync::Arc::new((0..n).map(|_| E::new()).collect());
    let pong: sync::Arc<Vec<E>> = sync::Arc::new((0..n).map(|_| E::new()).collect());
    let (pi, po) = (ping.clone(), pong.clone());
    let responder = sync::thread::spawn(move || {
        for i in 0..n {
            pi[i].wait();
            po[i].set();
        }
    });
    let start = Instant::now();
    for i in 0..n {
        ping[i].set();
        pong[i].wait();
    }
    let t = start.elapsed();
    responder.join().unwrap();
    t
}

fn wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("wake");
    g.bench_function("round_trip/fence", |b| {
        b.iter_custom(round_trips::<FenceEvent>)
    });
    g.bench_function("round_trip/std_condvar", |b| {
        b.iter_custom(round_trips::<CondvarEvent>)
    });
    g.bench_function("round_trip/event_listener", |b| {
        b.iter_custom(round_trips::<ListenerEvent>)
    });
    g.finish();
}

fn shim(c: &mut Criterion) {
    let mut g = c.benchmark_group("shim");
    let m = sync::Mutex::new(0u64);
    g.bench_function("mutex_lock_unlock/shim", |b| {
        b.iter(|| *black_box(&m).lock() += 1)
    });
    let pm = parking_lot::Mutex::new(0u64);
    g.bench_function("mutex_lock_unlock/parking_lot", |b| {
        b.iter(|| *black_box(&pm).lock() += 1)
    });
    let a = sync::atomic::AtomicU64::new(7);
    g.bench_function("atomic_u64_load/shim", |b| {
        b.iter(|| black_box(&a).load(sync::atomic::Ordering::Acquire))
    });
    let sa = std::sync::atomic::AtomicU64::new(7);
    g.bench_function("atomic_u64_load/std", |b| {
        b.iter(|| black_box(&sa).load(dmabuf_core::sync::atomic::Ordering::Acquire))
    });
    g.bench_function("clock/now_ns", |b| b.iter(sync::time::now_ns));
    g.bench_function("clock/timestamp_ns", |b| b.iter(sync::time::timestamp_ns));
    g.finish();
}

criterion_group!(
    benches,
    signal,
    add_callback_signal,
    is_signaled,
    wake,
    shim
);

/// Round trips per block of the interleaved comparison.
const BLOCK: u64 = 2000;
/// Blocks per implementation.
const ROUNDS: usize = 15;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The wake-up comparison under identical conditions. On a small shared
/// machine the round-trip time is bimodal (both threads on one CPU or not,
/// other load), so separate criterion runs can differ by 3x for the same
/// code. Here the three implementations run in alternating blocks and the
/// medians are compared.
fn wake_interleaved() {
    let mut t: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for k in 0..3 {
            let which = (round + k) % 3;
            let d = match which {
                0 => round_trips::<FenceEvent>(BLOCK),
                1 => round_trips::<CondvarEvent>(BLOCK),
                _ => round_trips::<ListenerEvent>(BLOCK),
            };
            t[which].push(d.as_nanos() as f64 / BLOCK as f64);
        }
    }
    let [f, c, l] = &mut t;
    let (f, c, l) = (median(f), median(c), median(l));
    let best = c.min(l);
    println!("wake_interleaved/round_trip median of {ROUNDS} blocks of {BLOCK}:");
    println!("  fence          {:>8.2} us", f / 1000.0);
    println!("  std_condvar    {:>8.2} us", c / 1000.0);
    println!("  event_listener {:>8.2} us", l / 1000.0);
    println!("  fence / best baseline = {:.2}", f / best);
}

/// Whether the command line's filter (criterion's positional argument)
/// selects the wake benchmarks, or there is no filter.
fn wake_selected() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a.starts_with("--") {
            // Flags with a separate value.
            if matches!(
                a.as_str(),
                "--warm-up-time"
                    | "--measurement-time"
                    | "--sample-size"
                    | "--save-baseline"
                    | "--baseline"
                    | "--output-format"
                    | "--noise-threshold"
                    | "--confidence-level"
                    | "--significance-level"
                    | "--nresamples"
                    | "--profile-time"
                    | "--color"
                    | "--plotting-backend"
                    | "--load-baseline"
            ) {
                i += 1;
            }
        } else {
            filters.push(a.clone());
        }
        i += 1;
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| "wake_interleaved".contains(f.as_str()) || f.contains("wake"))
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if wake_selected() {
        wake_interleaved();
    }
}
