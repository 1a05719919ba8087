//! DMA engines: fences, faults, unplug, stop, determinism, read-ahead.

mod common;
use common::*;
use dmabuf_core::errno::{ECANCELED, EIO, ENODEV};
use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
use dmabuf_core::sync::{Arc, thread, time};
use dmabuf_core::{Fence, FenceContext};
use dmabuf_platform::*;
use std::time::Duration;

fn fences() -> FenceContext {
    FenceContext::named("test-dma", "ring0")
}

fn manual(m: &Machine) -> DmaEngine {
    m.p.dma_engine(m.gpu.id(), EngineConfig::manual("gpu0.sdma"))
        .unwrap()
}

fn mapped_frames(m: &Machine, n: usize, iova0: u64) -> Vec<u64> {
    let f = m.p.memory().alloc_frames(n, "heap").unwrap();
    for (i, &fr) in f.iter().enumerate() {
        m.gpu_dom
            .map(iova0 + i as u64 * PAGE_SIZE, fr, PAGE_SIZE, IommuPerm::RW)
            .unwrap();
    }
    f
}

#[test]
fn a_completed_job_signals_its_fence_and_hands_back_read_data() {
    let m = machine();
    let e = manual(&m);
    let f = mapped_frames(&m, 2, 0x10000);
    let ctx = fences();
    let (fence, h) = ctx.create();
    let t = e
        .submit(
            DmaJob::new(vec![
                DmaOp::write(DmaAddr::Iova(0x10ffe), b"span".to_vec()),
                DmaOp::read(DmaAddr::Iova(0x10ffe), 4),
                DmaOp::copy(DmaAddr::Iova(0x10ffe), DmaAddr::Iova(0x11100), 4),
            ])
            .with_fence(h),
        )
        .unwrap();
    assert!(
        !fence.is_signaled(),
        "a manual engine runs nothing by itself"
    );
    assert_eq!(e.step().unwrap(), Some(t.id()));
    assert_eq!(fence.get_status(), 1);
    let o = t.outcome().unwrap();
    assert_eq!(o.status, Ok(()));
    assert_eq!(o.reads, vec![b"span".to_vec()]);
    let mut b = [0u8; 4];
    m.p.memory().peek(f[1] + 0x100, &mut b).unwrap();
    assert_eq!(&b, b"span");
    assert_eq!(e.step().unwrap(), None);
}

#[test]
fn a_faulting_job_signals_its_fence_with_eio_and_stops_at_the_fault() {
    let m = machine();
    let e = manual(&m);
    mapped_frames(&m, 1, 0x10000);
    let (fence, h) = fences().create();
    let t = e
        .submit(
            DmaJob::new(vec![
                DmaOp::fill(DmaAddr::Iova(0x10000), 16, 1),
                DmaOp::fill(DmaAddr::Iova(0x90000), 16, 2),
                DmaOp::fill(DmaAddr::Iova(0x10000), 16, 3),
            ])
            .with_fence(h),
        )
        .unwrap();
    e.drain();
    assert_eq!(fence.get_status(), EIO.to_negative());
    assert_eq!(
        t.wait().status,
        Err(DmaFault::Iommu {
            iova: 0x90000,
            cause: IommuFaultCause::NeverMapped
        })
    );
    let mut b = [0u8; 1];
    e.port()
        .read(&DmaAddr::Iova(0x10000).into(), &mut b)
        .unwrap();
    assert_eq!(b[0], 1, "the op after the fault never ran");
}

#[test]
fn jobs_on_an_unplugged_device_fail_with_enodev_at_submit_and_in_the_queue() {
    let m = machine();
    let e = manual(&m);
    let (queued, h1) = fences().create();
    e.submit(DmaJob::new(vec![DmaOp::fill(DmaAddr::Bus(m.bar()), 8, 0)]).with_fence(h1))
        .unwrap();
    m.p.pci().unplug(m.gpu.id()).unwrap();
    e.drain();
    assert_eq!(queued.get_status(), ENODEV.to_negative());
    let (late, h2) = fences().create();
    let r = e.submit(DmaJob::new(vec![]).with_fence(h2));
    assert_eq!(r.unwrap_err(), DmaError::DeviceGone { device: m.gpu.id() });
    assert_eq!(
        late.get_status(),
        ENODEV.to_negative(),
        "the refused job's fence is signalled"
    );
    assert!(matches!(
        m.p.dma_engine(m.gpu.id(), EngineConfig::manual("again")),
        Err(DmaError::DeviceGone { .. })
    ));
}

#[test]
fn a_device_in_reset_cannot_master_and_its_jobs_fail_without_hazard() {
    let m = machine();
    let e = manual(&m);
    mapped_frames(&m, 1, 0x10000);
    m.gpu.begin_reset().unwrap();
    let (f, h) = fences().create();
    e.submit(DmaJob::new(vec![DmaOp::fill(DmaAddr::Iova(0x10000), 8, 0)]).with_fence(h))
        .unwrap();
    e.drain();
    assert_eq!(f.get_status(), EIO.to_negative());
    assert!(m.p.take_hazards().is_empty());
}

#[test]
fn stop_joins_the_thread_and_cancels_queued_jobs() {
    let m = machine();
    let e =
        m.p.dma_engine(m.gpu.id(), EngineConfig::threaded("gpu0.gfx"))
            .unwrap();
    assert!(e.is_running());
    mapped_frames(&m, 1, 0x10000);
    let ctx = fences();
    let mut fs: Vec<Fence> = Vec::new();
    for i in 0..20 {
        let (f, h) = ctx.create();
        e.submit(DmaJob::new(vec![DmaOp::fill(DmaAddr::Iova(0x10000), 64, i)]).with_fence(h))
            .unwrap();
        fs.push(f);
    }
    e.stop();
    assert!(!e.is_running());
    for f in &fs {
        let s = f.get_status();
        assert!(
            s == 1 || s == ECANCELED.to_negative(),
            "every fence signalled: {s}"
        );
    }
    assert!(matches!(
        e.submit(DmaJob::new(vec![])),
        Err(DmaError::Stopped(_))
    ));
    e.stop();
}

#[test]
fn a_threaded_engine_runs_jobs_in_order_and_drain_waits_for_their_fences() {
    let m = machine();
    let e =
        m.p.dma_engine(m.gpu.id(), EngineConfig::threaded("gpu0.gfx"))
            .unwrap();
    let f = mapped_frames(&m, 1, 0x10000);
    let ctx = fences();
    let mut last = None;
    for i in 0..50u8 {
        let (fence, h) = ctx.create();
        e.submit(DmaJob::new(vec![DmaOp::fill(DmaAddr::Iova(0x10000), 1, i)]).with_fence(h))
            .unwrap();
        last = Some(fence);
    }
    last.unwrap().wait(None).unwrap();
    e.drain();
    assert_eq!(e.jobs_done(), 50);
    let mut b = [0u8; 1];
    m.p.memory().peek(f[0], &mut b).unwrap();
    assert_eq!(b[0], 49, "FIFO");
    assert_eq!(e.step(), Err(DmaError::NotManual("gpu0.gfx".into())));
    m.p.shutdown();
    assert_eq!(m.p.stats().engines_running, 0);
    assert!(
        m.p.dma_engine(m.gpu.id(), EngineConfig::manual("x"))
            .is_err()
    );
}

#[test]
fn dropping_the_last_platform_handle_stops_engine_threads() {
    let m = machine();
    let e =
        m.p.dma_engine(m.gpu.id(), EngineConfig::threaded("gpu0.gfx"))
            .unwrap();
    drop(m);
    assert!(!e.is_running());
}

#[test]
fn a_fence_callback_may_stop_the_engine_from_its_own_thread() {
    let m = machine();
    let e =
        m.p.dma_engine(m.gpu.id(), EngineConfig::threaded("gpu0.gfx"))
            .unwrap();
    let (f, h) = fences().create();
    let e2 = e.clone();
    assert!(f.add_callback(move |_| e2.stop()).is_ok());
    e.submit(DmaJob::new(vec![]).with_fence(h)).unwrap();
    f.wait(None).unwrap();
    e.stop();
    assert!(!e.is_running());
}

#[test]
fn an_odp_style_fault_handler_maps_on_demand_and_the_access_retries() {
    let m = machine();
    let e = manual(&m);
    let frame = m.p.memory().alloc_frames(1, "odp").unwrap()[0];
    let dom = m.gpu_dom.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    m.gpu_dom
        .set_fault_handler(Some(Arc::new(move |ev: &IommuFaultEvent| {
            c2.fetch_add(1, Ordering::SeqCst);
            let page = ev.iova & !(PAGE_SIZE - 1);
            match dom.map(page, frame, PAGE_SIZE, IommuPerm::RW) {
                Ok(_) => FaultResponse::Retry,
                Err(_) => FaultResponse::Abort,
            }
        })));
    let (f, h) = fences().create();
    e.submit(
        DmaJob::new(vec![DmaOp::write(DmaAddr::Iova(0x30000), b"odp".to_vec())]).with_fence(h),
    )
    .unwrap();
    e.drain();
    assert_eq!(f.get_status(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        m.p.take_hazards().is_empty(),
        "a resolved fault is no hazard"
    );
    assert_eq!(m.gpu_dom.take_faults().len(), 1, "but it is a fault event");
}

// ---- Speculative read-ahead (docs/hazards.md, hazard 5) ----

fn ra_engine(m: &Machine) -> DmaEngine {
    m.p.dma_engine(
        m.gpu.id(),
        EngineConfig::manual("gpu0.gfx").with_readahead(4),
    )
    .unwrap()
}

#[test]
fn readahead_rereads_recent_ranges_after_the_fence_and_stops_when_told() {
    let m = machine();
    let ex =
        m.p.monitor()
            .register_exporter("vfio0-dmabuf", &Accessor::new("vfio0"))
            .unwrap();
    let e = ra_engine(&m);
    let bar = m.bar();
    let (f, h) = fences().create();
    e.submit(DmaJob::new(vec![DmaOp::read(DmaAddr::Bus(bar), 256)]).with_fence(h))
        .unwrap();
    e.step().unwrap();
    assert_eq!(f.get_status(), 1);
    assert!(e.speculative_reads() >= 1, "a pass ran after the job");
    assert!(m.p.take_hazards().is_empty());

    // v4-like: the exporter's revoke returns after the fences; the device
    // still reads ahead.
    m.p.monitor()
        .revoke_returned(ex, &[PhysRange::new(bar, BAR_SIZE)])
        .unwrap();
    assert_eq!(e.speculate(), 1);
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].class, HazardClass::AccessAfterRevoke);
    assert!(hz[0].speculative && hz[0].kind == AccessKind::Read);

    e.stop_readahead();
    assert_eq!(e.speculate(), 0);
    assert!(m.p.take_hazards().is_empty());
}

#[test]
fn readahead_never_writes() {
    let m = machine();
    let e = ra_engine(&m);
    let f = mapped_frames(&m, 1, 0x10000);
    e.submit(DmaJob::new(vec![DmaOp::write(
        DmaAddr::Iova(0x10000),
        vec![1; 64],
    )]))
    .unwrap();
    e.drain();
    m.p.memory().poke(f[0], &[9; 64]).unwrap();
    for _ in 0..5 {
        assert_eq!(e.speculate(), 1);
    }
    let mut b = [0u8; 64];
    m.p.memory().peek(f[0], &mut b).unwrap();
    assert_eq!(b, [9; 64], "speculative passes only read");
    let w =
        m.p.monitor()
            .register_exporter("heap", &Accessor::new("heap"))
            .unwrap();
    m.p.monitor()
        .fences_done(w, &[PhysRange::new(f[0], PAGE_SIZE)])
        .unwrap();
    e.speculate();
    assert!(
        m.p.take_hazards().is_empty(),
        "no WriteAfterFences from read-ahead"
    );
}

#[test]
fn readahead_into_a_revoked_iova_faults_as_stopped_by_revoke() {
    let m = machine();
    let e = ra_engine(&m);
    mapped_frames(&m, 1, 0x10000);
    e.submit(DmaJob::new(vec![DmaOp::read(DmaAddr::Iova(0x10000), 64)]))
        .unwrap();
    e.drain();
    m.gpu_dom
        .unmap(0x10000, PAGE_SIZE, UnmapReason::Revoke)
        .unwrap();
    e.speculate();
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].iommu_fault, Some(IommuFaultCause::UnmappedByRevoke));
    assert!(hz[0].speculative);
}

#[test]
fn forget_mapping_drops_only_that_mappings_ranges() {
    let m = machine();
    let e = ra_engine(&m);
    mapped_frames(&m, 2, 0x10000);
    let decl = |a: u64| MappingDecl {
        attachment: a,
        importer: Accessor::new("gpu0"),
        exporter: None,
        ranges: vec![DeclaredRange::iova(m.gpu_dom.id(), 0x10000, 2 * PAGE_SIZE)],
    };
    let t1 = m.p.monitor().declare_mapping(decl(1)).unwrap();
    let t2 = m.p.monitor().declare_mapping(decl(2)).unwrap();
    e.submit(DmaJob::new(vec![
        DmaOp::read(DmaAddr::Iova(0x10000).via(&t1), 8),
        DmaOp::read(DmaAddr::Iova(0x11000).via(&t2), 8),
    ]))
    .unwrap();
    e.drain();
    e.forget_mapping(&t1);
    assert_eq!(e.speculate(), 1);
}

#[test]
fn a_threaded_engine_reads_ahead_while_idle_a_bounded_number_of_times() {
    let m = machine();
    let mut cfg = EngineConfig::threaded("gpu0.gfx").with_readahead(2);
    cfg.readahead.idle_passes = 3;
    cfg.readahead.interval = Duration::from_millis(1);
    let e = m.p.dma_engine(m.gpu.id(), cfg).unwrap();
    mapped_frames(&m, 1, 0x10000);
    e.submit(DmaJob::new(vec![DmaOp::read(DmaAddr::Iova(0x10000), 8)]))
        .unwrap();
    e.drain();
    let deadline = time::monotonic_ns() + 5_000_000_000;
    while e.speculative_reads() < 4 && time::monotonic_ns() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_millis(20));
    assert_eq!(e.speculative_reads(), 4, "one after the job, then 3 idle");
    e.stop();
}

#[test]
fn an_oversized_operation_is_refused_at_submit_with_its_fence_signalled() {
    let m = machine();
    let e = manual(&m);
    let (f, h) = fences().create();
    let r = e.submit(
        DmaJob::new(vec![
            DmaOp::fill(DmaAddr::Iova(0), 8, 0),
            DmaOp::read(DmaAddr::Iova(0), MAX_OP_LEN + 1),
        ])
        .with_fence(h),
    );
    assert_eq!(
        r.unwrap_err(),
        DmaError::OpTooLong {
            index: 1,
            len: MAX_OP_LEN + 1
        }
    );
    assert_eq!(f.get_status(), dmabuf_core::errno::EINVAL.to_negative());
    assert_eq!(e.pending(), 0);
}
