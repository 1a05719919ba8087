//! Reservation-object costs against plain baselines, read as same-run
//! ratios (BENCHMARKS.md, section "dma_resv"):
//!
//! * uncontended lock + unlock: `WwMutex` / `DmaResv` vs `parking_lot::Mutex`;
//! * `add_fence` on the replace path and on the append path;
//! * `test_signaled` over 1, 16 and 1024 fences vs scanning a `Vec` of the
//!   same fences;
//! * `lock_all` of 16 objects.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dmabuf_core::dma_resv::{DmaResv, Usage, lock_all};
use dmabuf_core::{Fence, FenceContext, RESERVATION_WW_CLASS, SignalHandle, WwAcquireCtx, WwMutex};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn lock_unlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("lock_unlock");
    let pl = parking_lot::Mutex::new(());
    g.bench_function("parking_lot_mutex", |b| {
        b.iter(|| drop(black_box(&pl).lock()))
    });
    let ww = WwMutex::new(&RESERVATION_WW_CLASS);
    g.bench_function("ww_mutex_no_ctx", |b| {
        b.iter(|| {
            let m = black_box(&ww);
            m.lock(None).unwrap();
            m.unlock().unwrap();
        })
    });
    let mut ctx = WwAcquireCtx::new(&RESERVATION_WW_CLASS);
    g.bench_function("ww_mutex_ctx", |b| {
        b.iter(|| {
            let m = black_box(&ww);
            m.lock(Some(&mut ctx)).unwrap();
            m.unlock().unwrap();
        })
    });
    let resv = DmaResv::new();
    g.bench_function("dma_resv_guard", |b| {
        b.iter(|| drop(black_box(&resv).lock(None).unwrap()))
    });
    g.finish();
}

fn add_fence(c: &mut Criterion) {
    let mut g = c.benchmark_group("add_fence");
    let tl = FenceContext::named("bench", "tl");
    let (f, _h) = tl.create();
    let resv = DmaResv::new();
    let guard = resv.lock(None).unwrap();
    guard.reserve_fences(1).unwrap();
    guard.add_fence(&f, Usage::Write).unwrap();
    g.bench_function("replace_same_fence", |b| {
        b.iter(|| guard.add_fence(black_box(&f), Usage::Write).unwrap())
    });
    drop(guard);

    // 64 appends into a fresh object with 64 reserved slots; the time is
    // per batch of 64 (the kernel's scan before each append included).
    let made: Vec<(Fence, SignalHandle)> = (0..64)
        .map(|_| FenceContext::named("bench", "append").create())
        .collect();
    g.bench_function("append_64", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let resv = DmaResv::new();
                let guard = resv.lock(None).unwrap();
                guard.reserve_fences(64).unwrap();
                let t = Instant::now();
                for (f, _) in &made {
                    guard.add_fence(f, Usage::Read).unwrap();
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn test_signaled(c: &mut Criterion) {
    let mut g = c.benchmark_group("test_signaled");
    for n in [1usize, 16, 1024] {
        let made: Vec<(Fence, SignalHandle)> = (0..n)
            .map(|_| FenceContext::named("bench", "sig").create())
            .collect();
        let resv = DmaResv::new();
        {
            let guard = resv.lock(None).unwrap();
            guard.reserve_fences(n as u32).unwrap();
            for (f, _) in &made {
                guard.add_fence(f, Usage::Write).unwrap();
            }
        }
        let fences: Vec<Fence> = made
            .into_iter()
            .map(|(f, h)| {
                h.signal().unwrap();
                f
            })
            .collect();
        // Signalled entries stay in the table: both sides scan everything.
        g.bench_with_input(BenchmarkId::new("dma_resv", n), &n, |b, _| {
            b.iter(|| assert!(black_box(&resv).test_signaled(Usage::Bookkeep)))
        });
        g.bench_with_input(BenchmarkId::new("vec_scan", n), &n, |b, _| {
            b.iter(|| assert!(black_box(&fences).iter().all(Fence::is_signaled)))
        });
    }
    g.finish();
}

fn lock_all_16(c: &mut Criterion) {
    let objs: Vec<DmaResv> = (0..16).map(|_| DmaResv::new()).collect();
    let refs: Vec<&DmaResv> = objs.iter().collect();
    c.bench_function("lock_all_16", |b| {
        b.iter(|| drop(lock_all(black_box(&refs)).unwrap()))
    });
}

criterion_group!(benches, lock_unlock, add_fence, test_signaled, lock_all_16);
criterion_main!(benches);
