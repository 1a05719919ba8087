//! Each importer's obligations, driven directly (outside a world): what it
//! does inside `invalidate_mappings`, what it does afterwards, and how it
//! comes back.

use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::sync::sched::{self, RunConfig, Strategy};
use dmabuf_core::sync::{Arc as ShimArc, thread};
use dmabuf_core::uapi::Process;
use dmabuf_drivers::gpu_vram::GpuVram;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::importers::gpu::{GpuConfig, GpuDevice, GpuImport};
use dmabuf_drivers::importers::iommufd::Iommufd;
use dmabuf_drivers::importers::nic::Nic;
use dmabuf_drivers::importers::rdma::{MrFlavour, RdmaImporter};
use dmabuf_drivers::importers::static_import::StaticImporter;
use dmabuf_drivers::importers::{Importer, Stage};
use dmabuf_drivers::system_heap::SystemHeap;
use dmabuf_platform::{DeviceConfig, DmaAddr, IommuFaultCause, Platform, PlatformConfig};
use std::sync::{Arc, Mutex};

mod common;
use common::{Fx, fixture_with};

fn fixture() -> Fx {
    fixture_with(&["nic0", "gpu0", "vm0", "vm1", "disp0"])
}

#[test]
fn iommufd_revokes_every_domain_synchronously_and_for_good() {
    let fx = fixture();
    let fd = fx.export();
    let iommu = fx.p.iommu();
    let (d0, d1) = (iommu.domain_alloc("ioas-a"), iommu.domain_alloc("ioas-b"));
    iommu
        .attach_device(&d0, fx.p.device("vm0").unwrap().id())
        .unwrap();
    iommu
        .attach_device(&d1, fx.p.device("vm1").unwrap().id())
        .unwrap();
    let ictx = Iommufd::new(&fx.host, vec![d0.clone(), d1.clone()]);
    let bad = ictx
        .map_file(&fx.proc, fd, 4096, 8192, 0x1000_0000)
        .unwrap_err();
    assert_eq!(
        (bad.stage(), bad.errno()),
        (Stage::Register, errno::EINVAL),
        "past the end"
    );
    assert_eq!(
        ictx.map_file(&fx.proc, fd, 0, 0, 0).unwrap_err().errno(),
        errno::EINVAL
    );
    assert_eq!(
        ictx.map_file(&fx.proc, 99, 0, 4096, 0).unwrap_err().errno(),
        errno::EBADF
    );
    let m = ictx.map_file(&fx.proc, fd, 0, 8192, 0x1000_0000).unwrap();
    assert_eq!(m.mapped_domains(), 2);
    assert_eq!(fx.p.monitor().live_mappings(), 2);
    let bar = fx.p.device("vfio0").unwrap().bar(0).unwrap();
    assert_eq!(d1.iova_to_phys(0x1000_1000), Some(bar.addr + 0x1000));
    let rep = fx.vfio.set_memory_decode(false).unwrap();
    assert_eq!(
        rep.revoked[0].live_after_fences, 0,
        "iommufd holds no VFIO mapping count"
    );
    assert!(m.is_revoked());
    assert_eq!(
        (d0.mapped_pages(), d1.mapped_pages()),
        (0, 0),
        "unmapped inside the callback"
    );
    assert_eq!(fx.p.monitor().live_mappings(), 0);
    let port =
        fx.p.dma_port(
            fx.p.device("vm0").unwrap().id(),
            dmabuf_platform::Accessor::new("vm0"),
        )
        .unwrap();
    let err = port
        .write(&DmaAddr::Iova(0x1000_0000).into(), b"late")
        .unwrap_err();
    assert!(
        matches!(
            err,
            dmabuf_platform::DmaFault::Iommu {
                cause: IommuFaultCause::UnmappedByRevoke,
                ..
            }
        ),
        "{err:?}"
    );
    fx.vfio.set_memory_decode(true).unwrap();
    assert!(m.is_revoked(), "never re-populated");
    assert_eq!(d0.mapped_pages(), 0);
    m.release().unwrap();
    assert!(fx.proc.dma_buf_get(fd).unwrap().attachments().is_empty());
    assert_eq!(m.uses_after_destroy(), 0);
    let again = ictx.map_file(&fx.proc, fd, 0, 8192, 0x1000_0000).unwrap();
    assert_eq!(
        again.mapped_domains(),
        2,
        "userspace maps again after the un-revoke"
    );
    again.release().unwrap();
}

#[test]
fn rdma_pinned_revocable_unmaps_and_unpins_inside_the_callback_for_good() {
    let fx = fixture();
    let fd = fx.export();
    let nic = Nic::new(&fx.host, fx.p.device("nic0").unwrap()).unwrap();
    let mr = RdmaImporter::new(&fx.host, "mr0", MrFlavour::PinnedRevocable, &nic, true);
    mr.setup(&fx.proc, fx.fd(fd)).unwrap();
    let job = mr.submit(0, 7, None).unwrap();
    assert!(job.wait().is_ok());
    let buf = fx.proc.dma_buf_get(fd).unwrap();
    assert_eq!(buf.attachments()[0].pin_count(), 1);
    fx.vfio.set_memory_decode(false).unwrap();
    assert!(mr.is_revoked() && !mr.is_mapped());
    assert_eq!(
        buf.attachments()[0].pin_count(),
        0,
        "unpinned inside the callback"
    );
    fx.vfio.set_memory_decode(true).unwrap();
    assert!(mr.is_revoked(), "revoked for good");
    assert_eq!(
        mr.submit(1, 8, None).unwrap().wait(),
        Err(errno::EIO),
        "the hardware fails"
    );
    mr.teardown().unwrap();
    mr.shutdown();
    assert!(buf.attachments().is_empty());
}

#[test]
fn rdma_odp_unmaps_in_the_callback_and_faults_back_in_after_the_unrevoke() {
    let fx = fixture();
    let fd = fx.export();
    let nic = Nic::new(&fx.host, fx.p.device("nic0").unwrap()).unwrap();
    let mr = RdmaImporter::new(&fx.host, "odp0", MrFlavour::Odp, &nic, true);
    mr.setup(&fx.proc, fx.fd(fd)).unwrap();
    assert!(mr.is_mapped(), "the initial fault at registration");
    fx.vfio.set_memory_decode(false).unwrap();
    assert!(!mr.is_mapped(), "unmapped before the revoke returned");
    assert_eq!(
        mr.submit(0, 1, None).unwrap().wait(),
        Err(errno::EIO),
        "faults fail while revoked"
    );
    fx.vfio.set_memory_decode(true).unwrap();
    assert!(
        mr.submit(0, 2, None).unwrap().wait().is_ok(),
        "a fault maps again"
    );
    assert!(mr.is_mapped());
    let c = mr.counters();
    assert_eq!((c["faults_failed"], c["maps"]), (1, 2));
    mr.teardown().unwrap();
    mr.shutdown();
    assert!(
        fx.p.take_hazards()
            .iter()
            .all(|h| h.iommu_fault == Some(IommuFaultCause::UnmappedByRevoke))
    );
}

#[test]
fn a_static_importer_of_the_heap_reads_back_what_it_wrote() {
    let fx = fixture();
    let heap = SystemHeap::new(&fx.host).unwrap();
    let buf = heap.allocate(8192, 2, 0).unwrap();
    let fd = fx.proc.dma_buf_fd(buf, 0).unwrap();
    let imp = StaticImporter::new(&fx.host, "disp0", fx.p.device("disp0").unwrap()).unwrap();
    imp.setup(&fx.proc, fx.fd(fd)).unwrap();
    imp.submit(1, 0x5a, None).unwrap().wait().unwrap();
    let data = imp.submit(0, 0x11, None).unwrap().wait().unwrap();
    assert!(
        data.iter().all(|b| *b == 0x5a),
        "page 1 holds what the first job wrote"
    );
    imp.teardown().unwrap();
    imp.shutdown();
    fx.proc.close(fd).unwrap();
    assert_eq!(
        fx.p.memory().frames_allocated(),
        0,
        "released with the last fd"
    );
    assert!(fx.p.take_hazards().is_empty());
}

#[test]
fn the_gpu_tolerates_an_invalidate_before_its_setup_finished() {
    let mut early = 0;
    // PCT (depth 3): the window needs the setup task preempted right after
    // the attachment is listed and the evicting task run through several
    // steps (take the reservation lock, invalidate) before the setup's
    // next two. Uniformly random choices rarely do both (1 seed in 400,
    // since the lock's unlock is no scheduling point); a priority change
    // point does it in about a quarter of the seeds.
    for seed in 0..40u64 {
        let mut s = sched::Pct::new(seed, 3, 300);
        assert!(s.next_execution());
        let out = Arc::new(Mutex::new(None));
        let o2 = out.clone();
        let rep = sched::run(&mut s, &RunConfig::default(), move || {
            let p = Platform::new(
                PlatformConfig::default()
                    .switch("sw0")
                    .device(
                        DeviceConfig::new("vram0")
                            .bar(0, 0x8000)
                            .behind_switch("sw0"),
                    )
                    .device(DeviceConfig::new("gpu0").behind_switch("sw0")),
            )
            .unwrap();
            let host = Host::new(p.clone());
            let vram = GpuVram::new(&host, p.device("vram0").unwrap()).unwrap();
            let proc = Process::new(1);
            let fd = proc.dma_buf_fd(vram.create_bo(2, 2).unwrap(), 0).unwrap();
            let dev =
                GpuDevice::new(&host, p.device("gpu0").unwrap(), GpuConfig::default()).unwrap();
            let imp = ShimArc::new(GpuImport::new("bo0", &dev, true));
            let (i2, p2) = (imp.clone(), proc.clone());
            let setup = thread::spawn_named("setup".into(), move || i2.setup(&p2, fd));
            let v2 = vram.clone();
            let watched = proc.dma_buf_get(fd).unwrap();
            let evict = thread::spawn_named("evict".into(), move || {
                // Memory pressure right after the attachment is listed.
                while watched.attachments().is_empty() {
                    thread::yield_now();
                }
                drop(watched);
                for f in v2.evict_all() {
                    let _ = f.wait(None);
                }
            });
            evict.join().unwrap();
            setup.join().unwrap().unwrap();
            let ok = imp.submit(0, 3, None).unwrap().wait().is_ok();
            let c = imp.counters();
            imp.teardown().unwrap();
            imp.shutdown();
            p.shutdown();
            *o2.lock().unwrap() = Some((ok, c["invalidates_before_setup"], p.take_hazards()));
        });
        assert!(rep.panics.is_empty(), "seed {seed}: {:?}", rep.panics);
        let (ok, before, hazards) = out.lock().unwrap().take().expect("root finished");
        assert!(ok, "seed {seed}: the import works after the race");
        assert!(hazards.is_empty(), "seed {seed}: {hazards:?}");
        early += before;
    }

    assert!(
        early > 0,
        "no schedule delivered the invalidate inside the setup window"
    );
}

#[test]
fn the_gpu_unbinds_behind_its_jobs_and_its_worker_unmaps() {
    let fx = fixture();
    let fd = fx.export();
    let dev = GpuDevice::new(&fx.host, fx.p.device("gpu0").unwrap(), GpuConfig::default()).unwrap();
    let g = GpuImport::new("bo0", &dev, true);
    g.setup(&fx.proc, fx.fd(fd)).unwrap();
    let jobs: Vec<_> = (0..4)
        .map(|k| g.submit(k % 2, k as u8, None).unwrap())
        .collect();
    let rep = fx.vfio.set_memory_decode(false).unwrap();
    for j in &jobs {
        assert!(
            j.fence().is_signaled(),
            "the Bookkeep wait covered every job"
        );
    }
    assert!(rep.revoked[0].drained);
    assert!(
        !g.is_mapped(),
        "the worker unmapped before the revoke returned"
    );
    let e = g.submit(0, 9, None).unwrap_err();
    assert_eq!((e.stage(), e.errno()), (Stage::Map, errno::ENODEV));
    fx.vfio.set_memory_decode(true).unwrap();
    assert!(
        g.submit(0, 9, None).unwrap().wait().is_ok(),
        "re-mapped lazily"
    );
    let c = g.counters();
    assert_eq!((c["unbinds"], c["map_enodev"], c["maps"]), (1, 1, 2));
    g.teardown().unwrap();
    g.shutdown();
    assert!(fx.p.take_hazards().is_empty());
}
