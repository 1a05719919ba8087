//! dma-buf benchmarks: a map/unmap cycle, `invalidate_mappings` over 1, 100
//! and 1000 attachments (the per-attachment slope must be flat: the walk is
//! linear), and `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` on a buffer with 16 fences.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dmabuf_core::dma_buf::*;
use dmabuf_core::dma_fence::FenceContext;
use dmabuf_core::dma_resv::{ResvGuard, Usage};
use dmabuf_core::sync::Arc;
use dmabuf_core::uapi::{DMA_BUF_IOCTL_EXPORT_SYNC_FILE, DMA_BUF_SYNC_WRITE, O_CLOEXEC, Process};
use std::hint::black_box;

struct Exp;

impl DmaBufOps for Exp {
    fn map_dma_buf(
        &self,
        _a: &Attachment,
        _d: DmaDirection,
        _g: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        Ok(SgTable {
            entries: vec![SgEntry {
                dma_addr: 0x1_0000_0000,
                len: 16 * PAGE_SIZE,
            }],
        })
    }
    fn unmap_dma_buf(&self, _a: &Attachment, _s: SgTable, _d: DmaDirection, _g: &ResvGuard<'_>) {}
    fn release(&self, _b: &DmaBufRef) {}
}

fn buf() -> DmaBuf {
    export(ExportInfo {
        exp_name: "bench".into(),
        size: 16 * PAGE_SIZE,
        flags: 2,
        resv: None,
        ops: Arc::new(Exp),
    })
    .unwrap()
}

fn bench_map_unmap(c: &mut Criterion) {
    let b = buf();
    let a = dynamic_attach(
        &b,
        "dev",
        Some(AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(|_: &Attachment, _: &ResvGuard<'_>| {})),
        }),
    )
    .unwrap();
    c.bench_function("dma_buf/map_unmap_cycle_locked", |bn| {
        let g = b.resv().lock(None).unwrap();
        bn.iter(|| {
            let m = map_attachment(&a, DmaDirection::Bidirectional, &g).unwrap();
            unmap_attachment(&a, black_box(m), &g).unwrap();
        })
    });
    c.bench_function("dma_buf/map_unmap_cycle_unlocked", |bn| {
        bn.iter(|| {
            let m = map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
            unmap_attachment_unlocked(&a, black_box(m)).unwrap();
        })
    });
}

fn bench_invalidate(c: &mut Criterion) {
    let mut grp = c.benchmark_group("dma_buf/invalidate_mappings");
    for n in [1usize, 100, 1000] {
        let b = buf();
        let atts: Vec<_> = (0..n)
            .map(|i| {
                dynamic_attach(
                    &b,
                    &format!("dev{i}"),
                    Some(AttachOps {
                        allow_peer2peer: true,
                        invalidate_mappings: Some(Arc::new(|a: &Attachment, _: &ResvGuard<'_>| {
                            black_box(a.id());
                        })),
                    }),
                )
                .unwrap()
            })
            .collect();
        grp.bench_with_input(BenchmarkId::from_parameter(n), &n, |bn, _| {
            let g = b.resv().lock(None).unwrap();
            bn.iter(|| invalidate_mappings(&b, &g).unwrap())
        });
        drop(atts);
    }
    grp.finish();
}

fn bench_export_sync_file(c: &mut Criterion) {
    let p = Process::new(1);
    let b = buf();
    let keep = b.clone();
    let fd = p.dma_buf_fd(b, O_CLOEXEC).unwrap();
    let mut handles = Vec::new();
    {
        let g = keep.resv().lock(None).unwrap();
        g.reserve_fences(16).unwrap();
        for i in 0..16 {
            let (f, h) = FenceContext::named("bench", &format!("ring{i}")).create();
            g.add_fence(
                &f,
                if i % 2 == 0 {
                    Usage::Write
                } else {
                    Usage::Read
                },
            )
            .unwrap();
            handles.push(h);
        }
    }
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&(DMA_BUF_SYNC_WRITE as u32).to_le_bytes());
    let addr = p.user_alloc(&payload);
    c.bench_function("dma_buf/export_sync_file_16_fences", |bn| {
        bn.iter(|| {
            p.ioctl(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, addr).unwrap();
            let out = p.user_read(addr, 8).unwrap();
            let sfd = i32::from_le_bytes([out[4], out[5], out[6], out[7]]);
            p.close(sfd).unwrap();
        })
    });
    drop(handles);
}

criterion_group!(
    benches,
    bench_map_unmap,
    bench_invalidate,
    bench_export_sync_file
);
criterion_main!(benches);
