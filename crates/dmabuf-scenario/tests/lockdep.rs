//! The drivers' locks under the lock validator: every driver lock that
//! stands for a kernel lock is announced under its class
//! ([`dmabuf_drivers::host::ClassMutex`]), so the validator sees the
//! drivers' real lock order, a normal world breaks no rule, and a driver
//! taking two classes in the wrong order is reported.
//!
//! The validator's graph is process-wide. The tests of this file run one at
//! a time (one of them switches the whole process to `Collect`), and each
//! test that provokes a report on purpose first runs the driver path that
//! records the good order, so the result does not depend on which test ran
//! first.

use dmabuf_core::lockdep::{self, ClassId, Mode, Report, ReportKind};
use dmabuf_drivers::gpu_vram;
use dmabuf_drivers::importers::iommufd::{self, Iommufd};
use dmabuf_drivers::importers::{gpu, rdma};
use dmabuf_drivers::vfio::{self};
use dmabuf_scenario::world::{
    ExporterKind, ImporterSpec, StallMode, Trigger, WorldSpec, run_world,
};

mod common;
use common::{Fx, fixture_with};

/// Serialises the tests of this file. A plain lock of the test harness,
/// never touched by the code under test.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Switches the whole process to `Collect` (threads a world spawns do not
/// inherit a thread's override) and back to `Off` when dropped, even if the
/// test fails.
struct ProcessCollect;

impl ProcessCollect {
    fn start() -> Self {
        lockdep::set_mode(Mode::Collect);
        let _ = lockdep::take_reports();
        ProcessCollect
    }
}

impl Drop for ProcessCollect {
    fn drop(&mut self) {
        lockdep::set_mode(Mode::Off);
    }
}

fn show(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn vfio_world(kind: ImporterSpec, trigger: Trigger) -> WorldSpec {
    WorldSpec {
        trigger,
        cpu_access: true,
        ..WorldSpec::vfio(common::p("v6-final"), kind)
    }
}

fn other_world(exporter: ExporterKind, kinds: &[ImporterSpec], trigger: Trigger) -> WorldSpec {
    WorldSpec {
        exporter,
        importers: kinds.to_vec(),
        trigger,
        ..WorldSpec::vfio(common::p("v6-final"), common::k("gpu"))
    }
}

fn normal_worlds() -> Vec<WorldSpec> {
    let mut worlds = Vec::new();
    for kind in [
        common::k("gpu"),
        common::k("gpu-kernel-fence"),
        common::k("rdma-odp"),
        common::k("rdma-pinned-revocable"),
        common::k("iommufd"),
    ] {
        for trigger in [Trigger::Flr, Trigger::UnrevokeCycle, Trigger::Close] {
            worlds.push(vfio_world(kind.clone(), trigger));
        }
    }
    // Every accepted importer of VFIO on one buffer at once.
    worlds.push(WorldSpec {
        importers: [
            common::k("gpu"),
            common::k("rdma-odp"),
            common::k("rdma-pinned-revocable"),
            common::k("iommufd"),
        ]
        .to_vec(),
        ..vfio_world(common::k("gpu"), Trigger::D3hot)
    });
    worlds.push(other_world(
        ExporterKind::SystemHeap,
        &[common::k("static"), common::k("gpu"), common::k("rdma-odp")],
        Trigger::Close,
    ));
    for kind in [common::k("gpu"), common::k("rdma-odp"), common::k("static")] {
        worlds.push(other_world(
            ExporterKind::GpuVram,
            &[kind],
            Trigger::Eviction,
        ));
    }
    worlds.push(other_world(
        ExporterKind::GpuVram,
        &[common::k("gpu"), common::k("rdma-odp")],
        Trigger::Close,
    ));
    worlds
}

#[test]
fn normal_worlds_of_every_driver_produce_no_lockdep_report() {
    let _serial = SERIAL.lock();
    let collect = ProcessCollect::start();
    let (observations, mine) = lockdep::collect_reports(|| {
        normal_worlds()
            .into_iter()
            .map(|spec| {
                let o = run_world(&spec, StallMode::Normal);
                (spec, o)
            })
            .collect::<Vec<_>>()
    });
    let others = lockdep::take_reports();
    drop(collect);
    for (spec, o) in &observations {
        assert!(o.errors.is_empty(), "{spec:?}: {:?}", o.errors);
        assert!(o.leaks.is_empty(), "{spec:?}: {:?}", o.leaks);
    }
    assert!(mine.is_empty(), "{}", show(&mine));
    assert!(others.is_empty(), "{}", show(&others));
    // The worlds did take the driver classes, each in its kernel order.
    let resv = ClassId::DMA_RESV;
    for (outer, inner) in [
        // The platform holds mmap_lock around the BAR mmap fault handler.
        (ClassId::MMAP_LOCK, vfio::MEMORY_LOCK_CLASS.id()),
        (vfio::MEMORY_LOCK_CLASS.id(), resv),
        (resv, iommufd::PAGES_MUTEX_CLASS.id()),
        (resv, gpu::BO_STATE_CLASS.id()),
        (resv, rdma::MR_STATE_CLASS.id()),
        (resv, gpu_vram::VRAM_MGR_CLASS.id()),
        (resv, gpu_vram::BO_STATE_CLASS.id()),
    ] {
        assert!(
            lockdep::has_order(outer, inner),
            "{} -> {} never seen",
            outer.name(),
            inner.name()
        );
        assert!(
            !lockdep::has_order(inner, outer),
            "{} -> {} recorded",
            inner.name(),
            outer.name()
        );
    }
}

fn fixture() -> Fx {
    fixture_with(&["vm0"])
}

fn inversions_naming(reports: &[Report], a: &str, b: &str) -> usize {
    reports
        .iter()
        .filter(|r| {
            r.kind == ReportKind::LockOrderInversion
                && r.detail.contains(a)
                && r.detail.contains(b)
                && r.stacks.iter().all(|s| s.contains(a) && s.contains(b))
        })
        .count()
}

#[test]
fn taking_the_reservation_lock_under_the_iommufd_pages_mutex_is_an_inversion() {
    let _serial = SERIAL.lock();
    let fx = fixture();
    let fd = fx.export();
    let dom = fx.p.iommu().domain_alloc("ioas");
    fx.p.iommu()
        .attach_device(&dom, fx.p.device("vm0").unwrap().id())
        .unwrap();
    let ictx = Iommufd::new(&fx.host, vec![dom]);
    let pages = iommufd::PAGES_MUTEX_CLASS.id();
    // iommufd's own paths first: the map (resv -> pages->mutex) and the
    // revoke callback (memory_lock -> resv -> pages->mutex).
    let (m, good) = lockdep::collect_reports(|| {
        let m = ictx.map_file(&fx.proc, fd, 0, 8192, 0x1000_0000).unwrap();
        fx.vfio.set_memory_decode(false).unwrap();
        m
    });
    assert!(good.is_empty(), "{}", show(&good));
    assert!(m.is_revoked());
    assert!(lockdep::has_order(ClassId::DMA_RESV, pages));
    // Now a driver that takes them the other way round.
    let buf = fx.proc.dma_buf_get(fd).unwrap();
    let ((), bad) = lockdep::collect_reports(|| {
        let _pages = iommufd::PAGES_MUTEX_CLASS.acquire("test: pages->mutex first");
        let _g = buf.resv().lock(None).unwrap();
    });
    assert_eq!(bad.len(), 1, "{}", show(&bad));
    assert_eq!(
        inversions_naming(&bad, "pages->mutex (dmabuf)", "dma_resv"),
        1,
        "{}",
        show(&bad)
    );
    assert!(bad[0].stacks[0].contains("test: pages->mutex first"));
    assert!(
        !lockdep::has_order(pages, ClassId::DMA_RESV),
        "the bad order is not recorded"
    );
    drop(buf);
    m.release().unwrap();
    fx.vfio.close().unwrap();
}

#[test]
fn vfio_records_memory_lock_before_the_reservation_lock() {
    let _serial = SERIAL.lock();
    let fx = fixture();
    let fd = fx.export();
    let memory_lock = vfio::MEMORY_LOCK_CLASS.id();
    assert_eq!(memory_lock.name(), "vdev->memory_lock");
    let (rep, reports) = lockdep::collect_reports(|| {
        fx.vfio.set_memory_decode(false).unwrap();
        fx.vfio.set_memory_decode(true).unwrap();
        fx.vfio.close().unwrap()
    });
    assert!(reports.is_empty(), "{}", show(&reports));
    assert_eq!(rep.revoked.len(), 1, "cleanup revoked the buffer");
    assert!(lockdep::has_order(memory_lock, ClassId::DMA_RESV));
    assert!(!lockdep::has_order(ClassId::DMA_RESV, memory_lock));
    // The release of the last reference takes memory_lock: from inside the
    // reservation lock that would close the cycle.
    let buf = fx.proc.dma_buf_get(fd).unwrap();
    let ((), bad) = lockdep::collect_reports(|| {
        let _g = buf.resv().lock(None).unwrap();
        let _m = vfio::MEMORY_LOCK_CLASS.acquire("test: memory_lock under resv");
    });
    assert_eq!(
        inversions_naming(&bad, "vdev->memory_lock", "dma_resv"),
        1,
        "{}",
        show(&bad)
    );
}

#[test]
fn driver_class_guards_record_nothing_when_off_and_release_on_drop() {
    let _serial = SERIAL.lock();
    let c = &gpu_vram::VRAM_MGR_CLASS;
    lockdep::with_thread_mode(Mode::Off, || {
        let _g = c.acquire("off");
        assert!(lockdep::held_classes().is_empty());
    });
    let ((), reports) = lockdep::collect_reports(|| {
        let g = c.acquire("on");
        assert_eq!(lockdep::held_classes(), vec![c.id()]);
        drop(g);
        assert!(lockdep::held_classes().is_empty(), "released on drop");
    });
    assert!(reports.is_empty(), "{}", show(&reports));
    assert_eq!(lockdep::register_class(c.name()), c.id());
}
