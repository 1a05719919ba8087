//! Platform benchmarks (see BENCHMARKS.md, section "platform").
//!
//! * `dma_64k`: a 64 KiB DMA read and write through the IOMMU with a warm
//!   IOTLB, on the synchronous port (no thread handoff), monitor on and off,
//!   against a plain memcpy of the same bytes.
//! * `translate`: translation cost per page, IOTLB warm and cold (flushed
//!   before each walk of 16 pages; the flush is not timed).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dmabuf_core::sync::time::monotonic_ns;
use dmabuf_platform::*;
use std::hint::black_box;
use std::time::Duration;

const LEN: usize = 64 * 1024;
const PAGES: u64 = (LEN as u64) / PAGE_SIZE;
const IOVA: u64 = 0x100_0000;

struct Setup {
    p: Platform,
    dom: IommuDomain,
    port: DmaPort,
}

fn setup() -> Setup {
    let p = Platform::new(
        PlatformConfig::default()
            .ram_frames(256)
            .device(DeviceConfig::new("gpu0")),
    )
    .expect("platform");
    let gpu = p.device("gpu0").expect("gpu0");
    let dom = p.iommu().domain_alloc("gpu0");
    p.iommu().attach_device(&dom, gpu.id()).expect("attach");
    let frames = p
        .memory()
        .alloc_frames(PAGES as usize, "bench")
        .expect("frames");
    for (i, &f) in frames.iter().enumerate() {
        dom.map(IOVA + i as u64 * PAGE_SIZE, f, PAGE_SIZE, IommuPerm::RW)
            .expect("map");
    }
    let port = p.dma_port(gpu.id(), Accessor::new("gpu0")).expect("port");
    // Materialise every page and warm the IOTLB.
    let data: Vec<u8> = (0..LEN).map(|i| i as u8).collect();
    port.write(&DmaAddr::Iova(IOVA).into(), &data)
        .expect("warm");
    Setup { p, dom, port }
}

fn dma_64k(c: &mut Criterion) {
    let s = setup();
    let src: Vec<u8> = (0..LEN).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; LEN];
    let at: DmaRef = DmaAddr::Iova(IOVA).into();
    let mut g = c.benchmark_group("dma_64k");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    for (name, on) in [("monitor_on", true), ("monitor_off", false)] {
        s.p.monitor().set_enabled(on);
        g.bench_function(format!("iommu_read_warm_{name}"), |b| {
            b.iter(|| {
                s.port.read(&at, black_box(&mut dst)).expect("read");
                black_box(&dst);
            })
        });
        g.bench_function(format!("iommu_write_warm_{name}"), |b| {
            b.iter(|| s.port.write(&at, black_box(&src)).expect("write"))
        });
    }
    s.p.monitor().set_enabled(true);
    g.finish();
    assert!(
        s.p.take_hazards().is_empty(),
        "the benchmark is hazard-free"
    );
}

fn translate(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(PAGES));
    let walk = |dom: &IommuDomain| {
        for i in 0..PAGES {
            black_box(
                dom.translate(IOVA + i * PAGE_SIZE, AccessKind::Read)
                    .expect("translate"),
            );
        }
    };
    g.bench_function("warm_per_16_pages", |b| b.iter(|| walk(&s.dom)));
    // Each iteration starts from an empty IOTLB; only the walk is timed.
    g.bench_function("cold_per_16_pages", |b| {
        b.iter_custom(|iters| {
            let mut total = 0u64;
            for _ in 0..iters {
                s.dom.flush_iotlb_all();
                let t0 = monotonic_ns();
                walk(&s.dom);
                total += monotonic_ns() - t0;
            }
            Duration::from_nanos(total)
        })
    });
    g.finish();
}

criterion_group!(benches, dma_64k, translate);
criterion_main!(benches);
