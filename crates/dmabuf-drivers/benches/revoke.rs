//! Revoke latency of the VFIO exporter (`v6-final`) on real threads:
//! against the number of attachments (iommufd mappings, GPU imports) and
//! against DMA in flight when the revoke begins.
//!
//! Each sample builds a fresh machine (so the temporary reservation object,
//! which keeps every fence it was given, never grows across samples), sets
//! the importers up, then times one revoke (a config write clearing
//! `PCI_COMMAND_MEMORY`) from the call to its return.
//!
//! | group | what varies | importers |
//! |---|---|---|
//! | `revoke/iommufd` | attachments: 1, 10, 100, 1000 | IOAS mappings of one dma-buf in one domain |
//! | `revoke/gpu` | attachments: 1, 10, 100, 1000 | BO imports on one GPU (one engine, one kernel worker, no worker delay) |
//! | `revoke/gpu-inflight` | jobs queued when the revoke begins: 0, 16, 256 | one GPU import |
//! | `drain/gpu` | the same jobs, no revoke: the time to drain them | one GPU import |

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dmabuf_core::FenceContext;
use dmabuf_core::revoke::Protocol;
use dmabuf_core::uapi::Process;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::importers::Importer;
use dmabuf_drivers::importers::gpu::{GpuConfig, GpuDevice, GpuImport};
use dmabuf_drivers::importers::iommufd::Iommufd;
use dmabuf_drivers::vfio::VfioPciDevice;
use dmabuf_drivers::vfio_uapi::DmaRange;
use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGES: u64 = 2;

struct Machine {
    platform: Platform,
    host: Host,
    vfio: VfioPciDevice,
    proc: Arc<Process>,
    fd: i32,
}

fn machine() -> Machine {
    let platform = Platform::new(
        PlatformConfig::default()
            .switch("sw0")
            .ram_frames(64)
            .device(
                DeviceConfig::new("vfio0")
                    .bar(0, 0x10000)
                    .behind_switch("sw0"),
            )
            .device(DeviceConfig::new("gpu0").behind_switch("sw0"))
            .device(DeviceConfig::new("vm0").behind_switch("sw0")),
    )
    .unwrap();
    let host = Host::new(platform.clone());
    let vfio = VfioPciDevice::bind(
        &host,
        platform.device("vfio0").unwrap(),
        std::sync::Arc::new(Protocol::merged()),
    )
    .unwrap();
    let proc = Process::new(1);
    let fd = vfio
        .export_dma_buf(
            &proc,
            0,
            &[DmaRange {
                offset: 0,
                length: PAGES * 4096,
            }],
            2,
        )
        .unwrap();
    Machine {
        platform,
        host,
        vfio,
        proc,
        fd,
    }
}

fn timed_revoke(m: &Machine) -> Duration {
    let t = Instant::now();
    let rep = m.vfio.set_memory_decode(false).unwrap();
    let d = t.elapsed();
    assert!(rep.revoked[0].drained);
    d
}

fn iommufd_revoke(n: usize) -> Duration {
    let m = machine();
    let vm = m.platform.device("vm0").unwrap();
    let dom = m.platform.iommu().domain_alloc("ioas");
    m.platform.iommu().attach_device(&dom, vm.id()).unwrap();
    let ictx = Iommufd::new(&m.host, vec![dom]);
    let maps: Vec<_> = (0..n as u64)
        .map(|i| {
            ictx.map_file(
                &m.proc,
                m.fd,
                0,
                PAGES * 4096,
                0x10_0000_0000 + i * 0x10_0000,
            )
            .unwrap()
        })
        .collect();
    let d = timed_revoke(&m);
    assert!(maps.iter().all(|x| x.is_revoked()));
    for x in maps {
        x.release().unwrap();
    }
    m.platform.shutdown();
    d
}

fn gpu_machine(n: usize) -> (Machine, GpuDevice, Vec<GpuImport>) {
    let m = machine();
    let cfg = GpuConfig {
        worker_latency: Duration::ZERO,
        ..GpuConfig::default()
    };
    let dev = GpuDevice::new(&m.host, m.platform.device("gpu0").unwrap(), cfg).unwrap();
    let imports: Vec<GpuImport> = (0..n)
        .map(|i| {
            let g = GpuImport::new(&format!("bo{i}"), &dev, false);
            // Each import owns (and closes at teardown) an fd of its own.
            let fd = m.proc.send_fd(m.fd, &m.proc).unwrap();
            g.setup(&m.proc, fd).unwrap();
            g
        })
        .collect();
    (m, dev, imports)
}

fn gpu_teardown(m: Machine, dev: GpuDevice, imports: Vec<GpuImport>) {
    for g in imports {
        g.teardown().unwrap();
    }
    dev.shutdown();
    m.platform.shutdown();
}

fn gpu_revoke(n: usize) -> Duration {
    let (m, dev, imports) = gpu_machine(n);
    let d = timed_revoke(&m);
    gpu_teardown(m, dev, imports);
    d
}

/// `jobs` jobs queued behind a gate that opens just before the revoke (or,
/// with `revoke == false`, just before waiting for them).
fn gpu_inflight(jobs: usize, revoke: bool) -> Duration {
    let (m, dev, imports) = gpu_machine(1);
    let ctx = FenceContext::named("bench", "gate");
    let (gate, open) = ctx.create();
    let queued: Vec<_> = (0..jobs)
        .map(|k| {
            imports[0]
                .submit(k as u64 % PAGES, k as u8, Some(gate.clone()))
                .unwrap()
        })
        .collect();
    open.signal().unwrap();
    let d = if revoke {
        timed_revoke(&m)
    } else {
        let t = Instant::now();
        if let Some(last) = queued.last() {
            last.fence().wait(None).unwrap();
        }
        t.elapsed()
    };
    for j in &queued {
        let _ = j.wait();
    }
    gpu_teardown(m, dev, imports);
    d
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("revoke");
    g.sample_size(10).warm_up_time(Duration::from_millis(200));
    g.measurement_time(Duration::from_secs(2));
    for n in [1usize, 10, 100, 1000] {
        g.bench_with_input(BenchmarkId::new("iommufd", n), &n, |b, &n| {
            b.iter_custom(|iters| (0..iters).map(|_| iommufd_revoke(n)).sum())
        });
        g.bench_with_input(BenchmarkId::new("gpu", n), &n, |b, &n| {
            b.iter_custom(|iters| (0..iters).map(|_| gpu_revoke(n)).sum())
        });
    }
    for jobs in [0usize, 16, 256] {
        g.bench_with_input(BenchmarkId::new("gpu-inflight", jobs), &jobs, |b, &j| {
            b.iter_custom(|iters| (0..iters).map(|_| gpu_inflight(j, true)).sum())
        });
    }
    g.finish();
    let mut d = c.benchmark_group("drain");
    d.sample_size(10).warm_up_time(Duration::from_millis(200));
    d.measurement_time(Duration::from_secs(2));
    for jobs in [16usize, 256] {
        d.bench_with_input(BenchmarkId::new("gpu", jobs), &jobs, |b, &j| {
            b.iter_custom(|iters| (0..iters).map(|_| gpu_inflight(j, false)).sum())
        });
    }
    d.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
