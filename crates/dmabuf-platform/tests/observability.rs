//! What the platform shows outside itself: trace events in the global log,
//! and lockdep reports from the DMA engine's signalling sections. Kept in
//! their own test binary because both switches are process-wide.

mod common;
use common::*;
use dmabuf_core::lockdep::{self, Mode, ReportKind};
use dmabuf_core::sync::Arc;
use dmabuf_core::{FenceContext, trace};
use dmabuf_platform::*;

#[test]
fn platform_events_reach_the_global_trace_in_order() {
    trace::set_enabled(true);
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    m.gpu_dom.map(0x10000, f, PAGE_SIZE, IommuPerm::RW).unwrap();
    let e =
        m.p.dma_engine(m.gpu.id(), EngineConfig::manual("trace-engine"))
            .unwrap();
    e.submit(DmaJob::new(vec![DmaOp::fill(DmaAddr::Iova(0x10000), 8, 1)]))
        .unwrap();
    e.drain();
    m.gpu_dom
        .unmap(0x10000, PAGE_SIZE, UnmapReason::Revoke)
        .unwrap();
    m.vfio.flr().unwrap();
    let _ = m.gpu_port.read(&iova(0x10000), &mut [0u8; 1]);
    trace::set_enabled(false);
    let names: Vec<&str> = trace::take()
        .into_iter()
        .filter(|ev| {
            ev.args.contains("trace-engine")
                || ev.args.contains("domain=0")
                || ev.args.contains("dev=vfio0")
                || ev.args.contains("accessor=gpu0")
                || ev.name == dmabuf_platform::trace::FRAME_ALLOC
        })
        .map(|ev| ev.name)
        .collect();
    let want = [
        "iommu_map",
        "dma_job_submit",
        "dma_job_start",
        "dma_access",
        "dma_job_done",
        "iommu_unmap",
        "iotlb_flush",
        "pci_flr",
        "iommu_fault",
        "hazard",
    ];
    let mut at = 0;
    for w in want {
        match names[at..].iter().position(|n| *n == w) {
            Some(i) => at += i + 1,
            None => panic!("{w} missing or out of order in {names:?}"),
        }
    }
}

#[test]
fn a_fault_handler_that_waits_on_a_fence_inside_a_job_is_reported_by_lockdep() {
    lockdep::set_mode(Mode::Collect);
    let m = machine();
    let ctx = FenceContext::named("test", "never");
    let (pending, _keep) = ctx.create();
    m.gpu_dom
        .set_fault_handler(Some(Arc::new(move |_: &IommuFaultEvent| {
            let _ = pending.wait_timeout(None, 1_000_000);
            FaultResponse::Abort
        })));
    let e =
        m.p.dma_engine(m.gpu.id(), EngineConfig::manual("lockdep-engine"))
            .unwrap();
    e.submit(DmaJob::new(vec![DmaOp::read(DmaAddr::Iova(0x5000), 8)]))
        .unwrap();
    e.drain();
    let reports = lockdep::take_reports();
    lockdep::set_mode(Mode::Off);
    assert!(
        reports
            .iter()
            .any(|r| r.kind == ReportKind::WaitInSignallingSection),
        "{reports:?}"
    );
}
