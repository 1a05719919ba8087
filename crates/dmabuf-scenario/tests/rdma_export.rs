//! The RDMA exporter on its own (`dmabuf_drivers::rdma_export`): device
//! memory allocated and exported as a dma-buf, the protocol's gate at
//! attach, and the three user-triggered revokes (free of the memory,
//! disassociate, close), each for good, on real threads.

mod common;
use dmabuf_core::dma_buf::{self, AttachOps, DmaDirection};
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::uapi::Process;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::rdma_export::UverbsDevice;
use dmabuf_platform::{DeviceConfig, PAGE_SIZE, Platform, PlatformConfig, ReuseKind};
use std::sync::Arc;

struct Fx {
    p: Platform,
    dev: UverbsDevice,
    proc: Arc<Process>,
}

fn fixture(protocol: &str) -> Fx {
    let p = Platform::new(
        PlatformConfig::default()
            .switch("sw0")
            .device(
                DeviceConfig::new("mlx0")
                    .bar(0, 0x10000)
                    .behind_switch("sw0"),
            )
            .device(DeviceConfig::new("peer0").behind_switch("sw0")),
    )
    .unwrap();
    let host = Host::new(p.clone());
    let dev = UverbsDevice::bind(&host, p.device("mlx0").unwrap(), common::p(protocol)).unwrap();
    Fx {
        p,
        dev,
        proc: Process::new(1),
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

#[test]
fn device_memory_is_exported_and_the_gate_refuses_importers_that_cannot_be_revoked() {
    let fx = fixture("rdma-export");
    assert_eq!(
        fx.dev.alloc_dm(100).unwrap_err().errno(),
        errno::ENOMEM,
        "not page aligned"
    );
    assert_eq!(
        fx.dev.alloc_dm(0x20000).unwrap_err().errno(),
        errno::ENOMEM,
        "larger than the device memory"
    );
    let dm = fx.dev.alloc_dm(2 * PAGE_SIZE).unwrap();
    assert_eq!(
        fx.dev.export_dm(&fx.proc, 99, 2).unwrap_err().errno(),
        errno::EINVAL
    );
    let fd = fx.dev.export_dm(&fx.proc, dm, 2).unwrap();
    let buf = fx.proc.dma_buf_get(fd).unwrap();
    assert_eq!(buf.exp_name(), "ib_uverbs");
    assert_eq!(buf.size(), 2 * PAGE_SIZE);
    // No peer-to-peer, or no invalidate_mappings: EOPNOTSUPP.
    assert_eq!(
        dma_buf::attach(&buf, "peer0").unwrap_err().errno(),
        errno::EOPNOTSUPP
    );
    assert_eq!(
        dma_buf::dynamic_attach(&buf, "peer0", pinned_only())
            .unwrap_err()
            .errno(),
        errno::EOPNOTSUPP
    );
    let a = dma_buf::dynamic_attach(&buf, "peer0", revocable()).unwrap();
    let m = {
        let g = buf.resv().lock(None).unwrap();
        dma_buf::map_attachment(&a, DmaDirection::Bidirectional, &g).unwrap()
    };
    assert_eq!(m.sg_table().len(), 2 * PAGE_SIZE);
    let g = buf.resv().lock(None).unwrap();
    dma_buf::unmap_attachment(&a, m, &g).unwrap();
    drop(g);
    dma_buf::detach(&buf, &a).unwrap();
}

#[test]
fn freeing_the_memory_revokes_for_good_after_the_last_unmap_then_frees_it() {
    let fx = fixture("rdma-export");
    let dm = fx.dev.alloc_dm(PAGE_SIZE).unwrap();
    let fd = fx.dev.export_dm(&fx.proc, dm, 2).unwrap();
    let buf = fx.proc.dma_buf_get(fd).unwrap();
    // An importer that unmaps inside its callback (an ODP MR): the drain
    // ends at once.
    let slot: Arc<std::sync::Mutex<Option<dma_buf::Mapping>>> = Arc::default();
    let s2 = slot.clone();
    let ops = AttachOps {
        allow_peer2peer: true,
        invalidate_mappings: Some(Arc::new(move |a, g| {
            if let Some(m) = s2.lock().unwrap().take() {
                dma_buf::unmap_attachment(a, m, g).unwrap();
            }
        })),
    };
    let a = dma_buf::dynamic_attach(&buf, "peer0", Some(ops)).unwrap();
    {
        let g = buf.resv().lock(None).unwrap();
        *slot.lock().unwrap() =
            Some(dma_buf::map_attachment(&a, DmaDirection::Bidirectional, &g).unwrap());
    }
    let rep = fx.dev.free_dm(dm).unwrap();
    assert_eq!(rep.revoked.len(), 1);
    assert!(rep.revoked[0].drained);
    assert_eq!(rep.revoked[0].notified, 1);
    assert_eq!(fx.dev.revokes(), 1);
    // Freed after the drain: nothing was outstanding.
    let free =
        fx.p.monitor()
            .reuse_events()
            .into_iter()
            .find(|e| e.kind == ReuseKind::Free)
            .unwrap();
    assert!(free.outstanding.is_empty(), "{free:?}");
    // Revoked for good: map and a new attach are ENODEV; the DM is gone.
    {
        let g = buf.resv().lock(None).unwrap();
        assert_eq!(
            dma_buf::map_attachment(&a, DmaDirection::Bidirectional, &g)
                .unwrap_err()
                .errno(),
            errno::ENODEV
        );
    }
    assert_eq!(
        dma_buf::dynamic_attach(&buf, "peer0", revocable())
            .unwrap_err()
            .errno(),
        errno::ENODEV
    );
    assert_eq!(fx.dev.free_dm(dm).unwrap_err().errno(), errno::EINVAL);
    // Closing the context does not drain again (the c64a647c84f3 lesson).
    let rep = fx.dev.close().unwrap();
    assert_eq!(rep.revoked.len(), 1);
    assert!(rep.revoked[0].already_revoked);
    assert!(fx.dev.warnings().is_empty(), "{:?}", fx.dev.warnings());
    assert_eq!(fx.dev.close().unwrap_err().errno(), errno::EIO);
    dma_buf::detach(&buf, &a).unwrap();
}

#[test]
fn disassociate_revokes_every_buffer_resets_the_device_and_refuses_what_follows() {
    let fx = fixture("rdma-export");
    let d1 = fx.dev.alloc_dm(PAGE_SIZE).unwrap();
    let d2 = fx.dev.alloc_dm(PAGE_SIZE).unwrap();
    let _f1 = fx.dev.export_dm(&fx.proc, d1, 2).unwrap();
    let _f2 = fx.dev.export_dm(&fx.proc, d2, 2).unwrap();
    let rep = fx.dev.disassociate().unwrap();
    assert_eq!(rep.revoked.len(), 2);
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert!(
        fx.p.monitor()
            .reuse_events()
            .iter()
            .any(|e| e.kind == ReuseKind::Reset),
        "the function reset"
    );
    assert_eq!(fx.dev.alloc_dm(PAGE_SIZE).unwrap_err().errno(), errno::EIO);
    assert_eq!(
        fx.dev.export_dm(&fx.proc, d1, 2).unwrap_err().errno(),
        errno::EIO
    );
    let rep = fx.dev.close().unwrap();
    assert!(rep.revoked.iter().all(|r| r.already_revoked));
    assert!(fx.dev.warnings().is_empty(), "{:?}", fx.dev.warnings());
}
