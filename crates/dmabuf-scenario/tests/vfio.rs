//! The VFIO exporter on its own: the export ABI and attach/map misuse with
//! the kernel's errnos, the private iommufd interface, address selection by
//! topology, CPU mappings, and revoke/un-revoke bookkeeping (a failed step
//! never leaves a buffer half revoked).

mod common;
use dmabuf_core::dma_buf::{self, AttachOps, Attachment, DmaBuf, DmaDirection};
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::sched::{self, Random, RunConfig, Strategy};
use dmabuf_core::uapi::Process;
use dmabuf_drivers::dma_api;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::system_heap::SystemHeap;
use dmabuf_drivers::vfio::{self, ResetKind, VfioPciDevice};
use dmabuf_drivers::vfio_uapi::{self, DmaRange};
use dmabuf_platform::{Accessor, CpuError, DeviceConfig, Platform, PlatformConfig, PowerState};
use std::sync::{Arc, Mutex};

struct Fx {
    p: Platform,
    host: Host,
    vfio: VfioPciDevice,
    proc: Arc<Process>,
}

fn fixture(policy: std::sync::Arc<dmabuf_core::revoke::Protocol>, host_bridge_p2p: bool) -> Fx {
    let p = Platform::new(
        PlatformConfig::default()
            .switch("sw0")
            .host_bridge_p2p(host_bridge_p2p)
            .device(
                DeviceConfig::new("vfio0")
                    .bar(0, 0x10000)
                    .behind_switch("sw0"),
            )
            .device(DeviceConfig::new("peer0").behind_switch("sw0"))
            .device(DeviceConfig::new("far0")),
    )
    .unwrap();
    let host = Host::new(p.clone());
    let vfio = VfioPciDevice::bind(&host, p.device("vfio0").unwrap(), policy).unwrap();
    Fx {
        p,
        host,
        vfio,
        proc: Process::new(1),
    }
}

fn r(offset: u64, length: u64) -> DmaRange {
    DmaRange { offset, length }
}

impl Fx {
    fn export(&self, ranges: &[DmaRange]) -> DmaBuf {
        let fd = self.vfio.export_dma_buf(&self.proc, 0, ranges, 2).unwrap();
        self.proc.dma_buf_get(fd).unwrap()
    }
}

fn revocable() -> Option<AttachOps> {
    Some(AttachOps {
        allow_peer2peer: true,
        invalidate_mappings: Some(Arc::new(|_, _| {})),
    })
}

fn pinned_only() -> Option<AttachOps> {
    Some(AttachOps {
        allow_peer2peer: true,
        invalidate_mappings: None,
    })
}

const GET: u32 = vfio_uapi::VFIO_DEVICE_FEATURE_GET | vfio_uapi::VFIO_DEVICE_FEATURE_DMA_BUF;

#[test]
fn export_misuse_answers_with_the_kernel_errno() {
    let fx = fixture(common::p("v6-final"), true);
    let call = |payload: Vec<u8>| {
        fx.vfio
            .device_feature(&fx.proc, &payload)
            .map_err(|e| e.errno())
    };
    assert_eq!(
        call(vfio_uapi::encode(GET, 0, 0, 0, &[])),
        Err(errno::EINVAL),
        "no ranges"
    );
    assert_eq!(
        call(vfio_uapi::encode(GET, 0, 0, 4, &[r(0, 4096)])),
        Err(errno::EINVAL),
        "flags"
    );
    assert_eq!(
        call(vfio_uapi::encode(GET, 7, 0, 0, &[r(0, 4096)])),
        Err(errno::ENODEV),
        "ROM"
    );
    assert_eq!(
        call(vfio_uapi::encode(GET, 2, 0, 0, &[r(0, 4096)])),
        Err(errno::ENODEV),
        "BAR 2 absent"
    );
    assert_eq!(
        call(vfio_uapi::encode(GET, 0, 0, 0, &[r(0x10000, 4096)])),
        Err(errno::EINVAL),
        "past the BAR"
    );
    assert_eq!(
        call(vfio_uapi::encode(GET, 0, 0, 0, &[r(u64::MAX - 4095, 4096)])),
        Err(errno::EOVERFLOW),
        "BAR start + offset overflows"
    );
    assert_eq!(
        call(vfio_uapi::encode(GET | 12, 0, 0, 0, &[r(0, 4096)])),
        Err(errno::ENOTTY)
    );
    let probe = vfio_uapi::encode(vfio_uapi::VFIO_DEVICE_FEATURE_PROBE | GET, 0, 0, 0, &[]);
    assert_eq!(call(probe), Ok(0));
    assert!(fx.proc.fds().is_empty(), "failed exports install no fd");
    assert!(fx.vfio.dmabufs().is_empty(), "and link no buffer");
    let fd = call(vfio_uapi::encode(
        GET,
        0,
        0,
        0,
        &[r(0, 4096), r(8192, 4096)],
    ))
    .unwrap();
    let buf = fx.proc.dma_buf_get(fd).unwrap();
    assert_eq!(buf.size(), 8192);
    assert_eq!(fx.vfio.dmabufs()[0].phys().len(), 2);
    fx.vfio.close().unwrap();
    assert_eq!(
        call(vfio_uapi::encode(GET, 0, 0, 0, &[r(0, 4096)])),
        Err(errno::ENODEV),
        "export after close"
    );
    assert_eq!(
        fx.vfio.close().unwrap_err().errno(),
        errno::EBADF,
        "closed twice"
    );
}

#[test]
fn attach_gates_follow_the_policy() {
    for policy in common::policies() {
        let fx = fixture(policy.clone(), true);
        let buf = fx.export(&[r(0, 4096)]);
        let e = dma_buf::attach(&buf, "peer0").unwrap_err();
        assert_eq!(
            e.errno(),
            errno::EOPNOTSUPP,
            "{policy}: static importers (no p2p) are refused"
        );
        let no_p2p = AttachOps {
            allow_peer2peer: false,
            invalidate_mappings: Some(Arc::new(|_, _| {})),
        };
        assert_eq!(
            dma_buf::dynamic_attach(&buf, "peer0", Some(no_p2p))
                .unwrap_err()
                .errno(),
            errno::EOPNOTSUPP
        );
        let pinned = dma_buf::dynamic_attach(&buf, "peer0", pinned_only());
        let gated = policy.attach.revocable;
        assert_eq!(
            pinned.is_err(),
            gated,
            "{policy}: non-revocable importers at attach"
        );
        if let Ok(a) = pinned {
            let g = lock_resv_for_test(buf.resv());
            let pin = dma_buf::pin(&a, &g);
            assert_eq!(pin.is_err(), policy.pin.is_some(), "{policy}: pin gate");
            match pin {
                Ok(()) => dma_buf::unpin(&a, &g).unwrap(),
                Err(e) => assert_eq!(e.errno(), errno::EOPNOTSUPP),
            }
            drop(g);
            dma_buf::detach(&buf, &a).unwrap();
        }
        let a = dma_buf::dynamic_attach(&buf, "peer0", revocable()).unwrap();
        dma_buf::detach(&buf, &a).unwrap();
        fx.vfio.set_memory_decode(false).unwrap();
        assert_eq!(
            dma_buf::dynamic_attach(&buf, "peer0", revocable())
                .unwrap_err()
                .errno(),
            errno::ENODEV,
            "{policy}: attach while revoked"
        );
    }
}

fn map(a: &Attachment) -> Result<dma_buf::Mapping, Errno> {
    dma_buf::map_attachment_unlocked(a, DmaDirection::Bidirectional).map_err(|e| e.errno())
}

#[test]
fn the_sg_table_follows_the_topology() {
    let fx = fixture(common::p("v6-final"), true);
    let buf = fx.export(&[r(0x2000, 4096)]);
    let bar = fx.p.device("vfio0").unwrap().bar(0).unwrap();
    let peer = dma_buf::dynamic_attach(&buf, "peer0", revocable()).unwrap();
    let m = map(&peer).unwrap();
    assert_eq!(
        m.sg_table().entries[0].dma_addr,
        bar.addr + 0x2000,
        "same switch: bus address"
    );
    let far_dev = fx.p.device("far0").unwrap().id();
    let dom = fx.p.iommu().domain_alloc("far0-dma");
    fx.host.set_dma_domain(far_dev, &dom).unwrap();
    let far = dma_buf::dynamic_attach(&buf, "far0", revocable()).unwrap();
    let mf = map(&far).unwrap();
    let iova = mf.sg_table().entries[0].dma_addr;
    assert!(dma_api::is_iova(iova), "through the host bridge: an IOVA");
    assert_eq!(dom.iova_to_phys(iova), Some(bar.addr + 0x2000));
    assert_eq!(fx.vfio.dmabufs()[0].live_mappings(), 2);
    dma_buf::unmap_attachment_unlocked(&far, mf).unwrap();
    assert_eq!(dom.iova_to_phys(iova), None, "unmap removes the IOVA");
    dma_buf::unmap_attachment_unlocked(&peer, m).unwrap();
    assert_eq!(fx.vfio.dmabufs()[0].live_mappings(), 0);
    dma_buf::detach(&buf, &far).unwrap();
    dma_buf::detach(&buf, &peer).unwrap();

    let iso = fixture(common::p("v6-final"), false);
    let buf = iso.export(&[r(0, 4096)]);
    let far = dma_buf::dynamic_attach(&buf, "far0", revocable()).unwrap();
    assert_eq!(map(&far).unwrap_err(), errno::EINVAL, "unreachable peer");
    assert_eq!(
        iso.vfio.dmabufs()[0].live_mappings(),
        0,
        "a failed map counts nothing"
    );
    dma_buf::detach(&buf, &far).unwrap();
}

#[test]
fn the_private_iommufd_interface_checks_ops_state_and_ranges() {
    let fx = fixture(common::p("v6-final"), true);
    let one = fx.export(&[r(0x1000, 8192)]);
    let two = fx.export(&[r(0, 4096), r(8192, 4096)]);
    let a1 = dma_buf::dynamic_attach(&one, "iommufd", revocable()).unwrap();
    let a2 = dma_buf::dynamic_attach(&two, "iommufd", revocable()).unwrap();
    let bar = fx.p.device("vfio0").unwrap().bar(0).unwrap();
    {
        let g = lock_resv_for_test(one.resv());
        assert_eq!(
            vfio::iommufd_map(&a1, &g).unwrap(),
            (bar.addr + 0x1000, 8192)
        );
        let g2 = lock_resv_for_test(two.resv());
        assert_eq!(
            vfio::iommufd_map(&a2, &g2).unwrap_err().errno(),
            errno::EOPNOTSUPP,
            "two ranges"
        );
        assert_eq!(
            vfio::iommufd_map(&a1, &g2).unwrap_err().errno(),
            errno::EINVAL,
            "the lock of another buffer"
        );
    }
    let heap = SystemHeap::new(&fx.host).unwrap();
    let hb = heap.allocate(4096, 2, 0).unwrap();
    let ha = dma_buf::dynamic_attach(&hb, "iommufd", revocable()).unwrap();
    {
        let g = lock_resv_for_test(hb.resv());
        assert_eq!(
            vfio::iommufd_map(&ha, &g).unwrap_err().errno(),
            errno::EOPNOTSUPP,
            "not a VFIO buffer"
        );
    }
    fx.vfio.set_memory_decode(false).unwrap();
    {
        let g = lock_resv_for_test(one.resv());
        assert_eq!(
            vfio::iommufd_map(&a1, &g).unwrap_err().errno(),
            errno::ENODEV,
            "revoked"
        );
    }
    for (b, a) in [(&one, &a1), (&two, &a2), (&hb, &ha)] {
        dma_buf::detach(b, a).unwrap();
    }
}

#[test]
fn a_refused_trigger_revokes_nothing() {
    let fx = fixture(common::p("v6-final"), true);
    let buf = fx.export(&[r(0, 4096)]);
    let a = dma_buf::dynamic_attach(&buf, "peer0", revocable()).unwrap();
    let m = map(&a).unwrap();
    let dev = fx.p.device("vfio0").unwrap();
    dev.begin_reset().unwrap();
    for res in [
        fx.vfio.reset(ResetKind::Flr),
        fx.vfio.set_memory_decode(false),
        fx.vfio.set_power_state(PowerState::D3hot),
    ] {
        assert_eq!(res.unwrap_err().errno(), errno::EBUSY);
    }
    let b = &fx.vfio.dmabufs()[0];
    assert!(!b.is_revoked(), "nothing half revoked");
    assert_eq!(b.live_mappings(), 1, "the count is untouched");
    assert_eq!(fx.vfio.counts(), (0, 0));
    dev.end_reset().unwrap();
    dev.set_memory_decode(true).unwrap();
    dma_buf::unmap_attachment_unlocked(&a, m).unwrap();
    let m2 = map(&a).unwrap();
    dma_buf::unmap_attachment_unlocked(&a, m2).unwrap();
    dma_buf::detach(&buf, &a).unwrap();
}

#[test]
fn revoke_unrevoke_cycles_keep_the_count_armed_and_maps_follow_the_flag() {
    let fx = fixture(common::p("v6-final"), true);
    let buf = fx.export(&[r(0, 4096)]);
    let a = dma_buf::dynamic_attach(&buf, "peer0", revocable()).unwrap();
    for round in 0..3 {
        let m = map(&a).unwrap();
        dma_buf::unmap_attachment_unlocked(&a, m).unwrap();
        let rep = fx.vfio.set_memory_decode(false).unwrap();
        assert_eq!(rep.revoked.len(), 1, "round {round}");
        assert!(rep.revoked[0].drained);
        assert_eq!(
            map(&a).unwrap_err(),
            errno::ENODEV,
            "round {round}: map while revoked"
        );
        let again = fx.vfio.set_memory_decode(false).unwrap();
        assert!(
            again.revoked.is_empty(),
            "an already revoked buffer is skipped"
        );
        let rep = fx.vfio.set_memory_decode(true).unwrap();
        assert_eq!(rep.unrevoked.len(), 1);
        assert_eq!(fx.vfio.dmabufs()[0].live_mappings(), 0);
    }
    assert_eq!(fx.vfio.counts(), (3, 3));
    fx.vfio.set_memory_decode(false).unwrap();
    // Cleanup of an already revoked buffer must not put the base twice and
    // wait on a consumed completion (the April 2026 hang).
    let rep = fx.vfio.close().unwrap();
    assert!(rep.revoked[0].already_revoked && rep.revoked[0].drained);
    assert!(!fx.vfio.dmabufs().iter().any(|b| b.is_bound()));
    assert_eq!(map(&a).unwrap_err(), errno::ENODEV, "gone for good");
    assert_eq!(
        dma_buf::dynamic_attach(&buf, "peer0", revocable())
            .unwrap_err()
            .errno(),
        errno::ENODEV
    );
    assert!(fx.p.device("vfio0").is_err(), "the device was unbound");
    dma_buf::detach(&buf, &a).unwrap();
}

/// Runs `f` as a controlled execution (virtual time) and returns its value.
fn controlled<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let mut s = Random::new(3);
    assert!(s.next_execution());
    let out = Arc::new(Mutex::new(None));
    let o2 = out.clone();
    let rep = sched::run(&mut s, &RunConfig::default(), move || {
        *o2.lock().unwrap() = Some(f());
    });
    assert!(rep.panics.is_empty(), "{:?}", rep.panics);
    out.lock().unwrap().take().expect("the root did not finish")
}

#[test]
fn v5_gives_up_after_one_second_rearms_over_the_live_mapping_and_the_next_revoke_underflows() {
    let (drained, latency, unrevoked, remapped, warnings) = controlled(|| {
        let fx = fixture(common::p("v5-unmap-timeout"), true);
        let buf = fx.export(&[r(0, 4096)]);
        let a = dma_buf::dynamic_attach(&buf, "peer0", revocable()).unwrap();
        let m = map(&a).unwrap();
        let rep = fx.vfio.set_memory_decode(false).unwrap();
        let r0 = &rep.revoked[0];
        let latency = r0.returned_ns - r0.began_ns;
        // v5's un-revoke: clear the flag, invalidate, then kref_init and
        // reinit_completion, whatever is still mapped.
        let up = fx.vfio.set_memory_decode(true).unwrap();
        let m2 = map(&a);
        let remapped = m2.is_ok();
        dma_buf::unmap_attachment_unlocked(&a, m).unwrap();
        if let Ok(m2) = m2 {
            // The count reaches zero here, one mapping too early.
            dma_buf::unmap_attachment_unlocked(&a, m2).unwrap();
        }
        fx.vfio.set_memory_decode(false).unwrap();
        dma_buf::detach(&buf, &a).unwrap();
        (
            r0.drained,
            latency,
            up.unrevoked.len(),
            remapped,
            fx.vfio.warnings(),
        )
    });
    assert!(!drained);
    // The wait gives up at the latest after its second; under the
    // controlled scheduler it may expire at any earlier point (the mapping
    // is never returned in time either way).
    assert!(latency <= 1_000_000_000, "gave up: {latency}");
    assert_eq!(unrevoked, 1, "v5 un-revokes although the old mapping lives");
    assert!(remapped, "and maps work again");
    assert!(
        warnings[0].contains("wait_for_completion_timeout expired"),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("refcount_t: underflow")),
        "the second revoke's kref_put underflows: {warnings:?}"
    );
}

#[test]
fn cpu_mappings_fault_in_while_enabled_and_sigbus_once_revoked() {
    let fx = fixture(common::p("v6-final"), true);
    let m = fx.vfio.mmap_bar(0, Accessor::new("vmm")).unwrap();
    m.write(0, b"hi").unwrap();
    assert_eq!(m.resident_pages(), 1);
    fx.vfio.set_memory_decode(false).unwrap();
    assert_eq!(m.resident_pages(), 0, "the revoke zapped the PTE");
    assert!(matches!(m.write(0, b"x"), Err(CpuError::Sigbus { .. })));
    fx.vfio.set_memory_decode(true).unwrap();
    m.write(0, b"ok").unwrap();
    assert!(fx.p.take_hazards().is_empty());
    fx.vfio.close().unwrap();
    assert!(m.write(0, b"x").is_err());
    assert_eq!(
        fx.vfio
            .mmap_bar(3, Accessor::new("vmm"))
            .unwrap_err()
            .errno(),
        errno::ENODEV
    );
}

#[test]
fn dma_buf_mmap_needs_the_op_refuses_a_revoked_buffer_and_its_ptes_go_with_the_revoke() {
    // 7.1 VFIO has no mmap op: the core answers EINVAL.
    let fx = fixture(common::p("v6-final"), true);
    let fd = fx
        .vfio
        .export_dma_buf(&fx.proc, 0, &[r(0, 0x2000)], 2)
        .unwrap();
    let e = vfio::mmap_dma_buf(&fx.proc, fd, Accessor::new("app")).unwrap_err();
    assert_eq!(e.errno(), errno::EINVAL, "{e}");
    // Matt Evans' series: mmap succeeds while usable; a fault inserts the
    // PFN; the revoke's unmap_mapping_range (after the unmap completion)
    // zaps it; a fault on the revoked buffer answers SIGBUS; mmap of a
    // revoked buffer is ENODEV.
    let fx = fixture(common::p("v10-mmap"), true);
    let fd = fx
        .vfio
        .export_dma_buf(&fx.proc, 0, &[r(0, 0x2000)], 2)
        .unwrap();
    let m = vfio::mmap_dma_buf(&fx.proc, fd, Accessor::new("app")).unwrap();
    assert_eq!(m.resident_pages(), 0, "no PTE before the first touch");
    m.write(0x1000, b"hi").unwrap();
    assert_eq!(m.resident_pages(), 1);
    fx.vfio.set_memory_decode(false).unwrap();
    assert_eq!(m.resident_pages(), 0, "the revoke zapped the PTE");
    assert!(matches!(
        m.write(0x1000, b"x"),
        Err(CpuError::Sigbus { .. })
    ));
    assert_eq!(
        vfio::mmap_dma_buf(&fx.proc, fd, Accessor::new("app"))
            .unwrap_err()
            .errno(),
        errno::ENODEV
    );
    fx.vfio.set_memory_decode(true).unwrap();
    m.write(0x1000, b"ok").unwrap();
    let mut b = [0u8; 2];
    m.read(0x1000, &mut b).unwrap();
    assert_eq!(&b, b"ok");
    assert!(fx.p.take_hazards().is_empty());
    fx.vfio.close().unwrap();
    assert_eq!(m.resident_pages(), 0, "the cleanup zapped it too");
    assert!(matches!(m.write(0, b"x"), Err(CpuError::Sigbus { .. })));
    m.munmap();
}

#[test]
fn dma_buf_mmap_without_a_zap_in_the_sequence_leaves_the_pte_to_the_reset_bar() {
    let mut lib = dmabuf_scenario::builtin::Library::builtin().unwrap();
    let f = lib
        .add_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../protocols/variants/v10-mmap-no-zap.toml"),
        )
        .unwrap();
    let fx = fixture(std::sync::Arc::new(f.exporter.unwrap().protocol), true);
    let fd = fx
        .vfio
        .export_dma_buf(&fx.proc, 0, &[r(0, 0x2000)], 2)
        .unwrap();
    let m = vfio::mmap_dma_buf(&fx.proc, fd, Accessor::new("app")).unwrap();
    m.write(0, b"hi").unwrap();
    fx.vfio.reset(ResetKind::Flr).unwrap();
    assert_eq!(m.resident_pages(), 1, "nothing zapped the dma-buf's PTE");
    let reuse = fx.p.monitor().reuse_events();
    assert!(
        reuse.iter().any(|e| e
            .outstanding
            .iter()
            .any(|o| o.kind == "cpu" && o.holder == "app")),
        "{reuse:?}"
    );
    fx.vfio.set_memory_decode(false).unwrap();
    m.write(0, b"late").unwrap();
    let classes: Vec<_> = fx.p.take_hazards().into_iter().map(|h| h.class).collect();
    assert!(
        classes.contains(&dmabuf_platform::HazardClass::AccessAfterRevoke),
        "{classes:?}"
    );
    m.munmap();
}

fn lock_resv_for_test(r: &dmabuf_core::dma_resv::DmaResv) -> dmabuf_core::dma_resv::ResvGuard<'_> {
    r.lock(None).expect("test takes the lock once")
}
