//! Tests of `dma_buf` and `revoke`: one per rule of the module contracts.

use crate::dma_buf::*;
use crate::dma_fence::FenceContext;
use crate::dma_resv::{DmaResv, ResvGuard, Usage};
use crate::errno::{self, AsErrno, Errno};
use crate::revoke::{Gate, NoHooks, Protocol, Revocable, SeqOutcome, Sequence};
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex, thread};

/// A configurable exporter that counts every op.
#[derive(Default)]
pub(crate) struct MockExp {
    pub dynamic: bool,
    pub mmap: bool,
    pub vmap: bool,
    pub unaligned: bool,
    pub fail_map: bool,
    pub fail_pin: bool,
    pub refuse_attach: Mutex<Option<Errno>>,
    pub clear_p2p: bool,
    pub attaches: AtomicUsize,
    pub detaches: AtomicUsize,
    pub maps: AtomicUsize,
    pub unmaps: AtomicUsize,
    pub pins: AtomicUsize,
    pub unpins: AtomicUsize,
    pub releases: AtomicUsize,
    pub vmaps: AtomicUsize,
    pub vunmaps: AtomicUsize,
    pub cpu_begin: AtomicUsize,
    pub attach_saw_lock: AtomicBool,
    pub attach_saw_listed: AtomicBool,
}

impl PinOps for MockExp {
    fn pin(&self, _a: &Attachment, _g: &ResvGuard<'_>) -> Result<(), DmaBufError> {
        if self.fail_pin {
            return Err(DmaBufError::errno(errno::EBUSY, "mock pin"));
        }
        self.pins.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn unpin(&self, _a: &Attachment, _g: &ResvGuard<'_>) {
        self.unpins.fetch_add(1, Ordering::SeqCst);
    }
}

impl VmapOps for MockExp {
    fn vmap(&self, _b: &DmaBufRef, _g: &ResvGuard<'_>) -> Result<u64, DmaBufError> {
        self.vmaps.fetch_add(1, Ordering::SeqCst);
        Ok(0xffff_8000_0000_0000)
    }
    fn vunmap(&self, _b: &DmaBufRef, _addr: u64, _g: &ResvGuard<'_>) {
        self.vunmaps.fetch_add(1, Ordering::SeqCst);
    }
}

impl DmaBufOps for MockExp {
    fn attach(&self, buf: &DmaBufRef, a: &Attachment) -> Result<(), DmaBufError> {
        self.attaches.fetch_add(1, Ordering::SeqCst);
        self.attach_saw_lock
            .store(buf.resv().is_held_by_current_thread(), Ordering::SeqCst);
        self.attach_saw_listed
            .store(buf.attachments().contains(a), Ordering::SeqCst);
        if self.clear_p2p {
            a.set_peer2peer(false);
        }
        match *self.refuse_attach.lock() {
            Some(e) => Err(DmaBufError::errno(e, "mock attach")),
            None => Ok(()),
        }
    }
    fn detach(&self, _b: &DmaBufRef, _a: &Attachment) {
        self.detaches.fetch_add(1, Ordering::SeqCst);
    }
    fn pin_ops(&self) -> Option<&dyn PinOps> {
        self.dynamic.then_some(self as &dyn PinOps)
    }
    fn map_dma_buf(
        &self,
        _a: &Attachment,
        _d: DmaDirection,
        _g: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        if self.fail_map {
            return Err(DmaBufError::errno(errno::ENOMEM, "mock map"));
        }
        self.maps.fetch_add(1, Ordering::SeqCst);
        let addr = if self.unaligned {
            0x1000_0010
        } else {
            0x1000_0000
        };
        Ok(SgTable {
            entries: vec![SgEntry {
                dma_addr: addr,
                len: 2 * PAGE_SIZE,
            }],
        })
    }
    fn unmap_dma_buf(&self, _a: &Attachment, _s: SgTable, _d: DmaDirection, _g: &ResvGuard<'_>) {
        self.unmaps.fetch_add(1, Ordering::SeqCst);
    }
    fn release(&self, _b: &DmaBufRef) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
    fn begin_cpu_access(&self, _b: &DmaBufRef, _d: DmaDirection) -> Result<(), DmaBufError> {
        self.cpu_begin.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn has_mmap(&self) -> bool {
        self.mmap
    }
    fn mmap(&self, _b: &DmaBufRef, _r: MmapRequest) -> Result<(), DmaBufError> {
        Ok(())
    }
    fn vmap_ops(&self) -> Option<&dyn VmapOps> {
        self.vmap.then_some(self as &dyn VmapOps)
    }
}

pub(crate) fn export_mock(exp: MockExp) -> (DmaBuf, Arc<MockExp>) {
    let ops = Arc::new(exp);
    let buf = export(ExportInfo {
        exp_name: "mock".into(),
        size: 16 * PAGE_SIZE,
        flags: 2,
        resv: None,
        ops: ops.clone(),
    })
    .expect("export");
    (buf, ops)
}

fn dyn_ops(p2p: bool, with_op: bool) -> AttachOps {
    AttachOps {
        allow_peer2peer: p2p,
        invalidate_mappings: with_op
            .then(|| Arc::new(|_: &Attachment, _: &ResvGuard<'_>| {}) as InvalidateFn),
    }
}

#[test]
fn export_requires_exporter_name() {
    let r = export(ExportInfo {
        exp_name: String::new(),
        size: 4096,
        flags: 0,
        resv: None,
        ops: Arc::new(MockExp::default()),
    });
    assert_eq!(r.unwrap_err().errno(), errno::EINVAL);
}

#[test]
fn export_keeps_only_accmode_and_nonblock_flags() {
    let b = export(ExportInfo {
        exp_name: "x".into(),
        size: 4096,
        flags: 0o2 | 0o4000 | 0o100,
        resv: None,
        ops: Arc::new(MockExp::default()),
    })
    .unwrap();
    assert_eq!(b.flags(), 0o2 | 0o4000);
}

#[test]
fn export_shares_a_given_resv() {
    let resv = Arc::new(DmaResv::new());
    let b = export(ExportInfo {
        exp_name: "x".into(),
        size: 4096,
        flags: 0,
        resv: Some(resv.clone()),
        ops: Arc::new(MockExp::default()),
    })
    .unwrap();
    assert!(Arc::ptr_eq(b.resv(), &resv));
}

#[test]
fn inode_numbers_are_unique_and_increasing() {
    let (a, _) = export_mock(MockExp::default());
    let (b, _) = export_mock(MockExp::default());
    assert!(b.ino() > a.ino());
}

#[test]
fn release_runs_once_after_last_reference() {
    let (b, ops) = export_mock(MockExp::default());
    let b2 = b.clone();
    assert_eq!(b.file_count(), 2);
    drop(b);
    assert_eq!(ops.releases.load(Ordering::SeqCst), 0);
    assert!(!b2.is_released());
    let r = b2.downgrade();
    drop(b2);
    assert_eq!(ops.releases.load(Ordering::SeqCst), 1);
    assert!(r.is_released());
    assert!(r.get_file_active().is_none());
}

#[test]
fn release_with_attachment_outstanding_is_diagnosed() {
    let (b, _) = export_mock(MockExp::default());
    let ino = b.ino();
    let _a = attach(&b, "dev0").unwrap();
    let r = b.downgrade();
    drop(b);
    assert!(
        r.diagnostics().iter().any(|p| p.contains("attachment")),
        "{:?}",
        r.diagnostics()
    );
    let d = take_diagnostics_for(ino);
    assert!(
        d.iter()
            .any(|d| d.ino == ino && d.problem.contains("attachment")),
        "{d:?}"
    );
}

#[test]
fn release_drops_the_list_so_an_undetached_attachment_does_not_keep_the_buffer() {
    let (b, ops) = export_mock(MockExp::default());
    let exporter = Arc::downgrade(&ops);
    drop(ops);
    let a = dynamic_attach(&b, "dev0", Some(dyn_ops(true, true))).unwrap();
    drop(b);
    assert!(a.dmabuf().is_released());
    assert!(a.dmabuf().attachments().is_empty());
    // The importer's own handle still works on the released buffer...
    assert_eq!(a.dev(), "dev0");
    assert!(exporter.upgrade().is_some());
    // ...and once it goes, nothing keeps the buffer or its exporter.
    drop(a);
    assert!(exporter.upgrade().is_none());
}

#[test]
fn static_attach_has_no_peer2peer_and_is_not_dynamic() {
    let (b, _) = export_mock(MockExp::default());
    let a = attach(&b, "dev0").unwrap();
    assert!(!a.peer2peer());
    assert!(!attachment_is_dynamic(&a));
    assert!(!attach_revocable(&a));
}

#[test]
fn attach_revocable_requires_ops_and_invalidate_op() {
    let (b, _) = export_mock(MockExp::default());
    let with = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    let without = dynamic_attach(&b, "d2", Some(dyn_ops(true, false))).unwrap();
    assert!(attach_revocable(&with));
    assert!(!attach_revocable(&without));
    assert!(attachment_is_dynamic(&without));
}

#[test]
fn exporter_attach_op_runs_unlocked_before_listing() {
    let (b, ops) = export_mock(MockExp::default());
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    assert!(!ops.attach_saw_lock.load(Ordering::SeqCst));
    assert!(!ops.attach_saw_listed.load(Ordering::SeqCst));
    assert!(b.attachments().contains(&a));
}

#[test]
fn exporter_may_clear_peer2peer() {
    let (b, _) = export_mock(MockExp {
        clear_p2p: true,
        ..Default::default()
    });
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    assert!(!a.peer2peer());
}

#[test]
fn failed_attach_leaves_no_attachment() {
    let (b, ops) = export_mock(MockExp::default());
    *ops.refuse_attach.lock() = Some(errno::EOPNOTSUPP);
    let e = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap_err();
    assert_eq!(e.errno(), errno::EOPNOTSUPP);
    assert!(b.attachments().is_empty());
}

#[test]
fn attachments_are_listed_newest_first() {
    let (b, _) = export_mock(MockExp::default());
    let a1 = attach(&b, "d1").unwrap();
    let a2 = attach(&b, "d2").unwrap();
    assert_eq!(b.attachments(), vec![a2, a1]);
}

#[test]
fn detach_unlists_and_does_not_unmap() {
    let (b, ops) = export_mock(MockExp::default());
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    let m = map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
    detach(&b, &a).unwrap();
    assert!(b.attachments().is_empty());
    assert_eq!(ops.unmaps.load(Ordering::SeqCst), 0);
    assert_eq!(ops.detaches.load(Ordering::SeqCst), 1);
    assert!(
        take_diagnostics_for(b.ino())
            .iter()
            .any(|d| d.problem.contains("detached with 1 mapping"))
    );
    // Further calls on a detached attachment fail cleanly.
    let g = b.resv().lock(None).unwrap();
    assert!(matches!(
        map_attachment(&a, DmaDirection::Bidirectional, &g),
        Err(DmaBufError::Detached { .. })
    ));
    drop(g);
    drop(m);
}

#[test]
fn pin_from_static_importer_is_refused() {
    let (b, _) = export_mock(MockExp {
        dynamic: true,
        ..Default::default()
    });
    let a = attach(&b, "d1").unwrap();
    let g = b.resv().lock(None).unwrap();
    assert_eq!(pin(&a, &g).unwrap_err().errno(), errno::EINVAL);
}

#[test]
fn pin_without_exporter_pin_op_succeeds() {
    let (b, _) = export_mock(MockExp::default());
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, false))).unwrap();
    let g = b.resv().lock(None).unwrap();
    pin(&a, &g).unwrap();
    assert_eq!(a.pin_count(), 1);
    unpin(&a, &g).unwrap();
    assert_eq!(
        unpin(&a, &g).unwrap_err(),
        DmaBufError::NotPinned { id: a.id() }
    );
}

#[test]
fn each_map_returns_a_new_mapping_unmapped_individually() {
    let (b, ops) = export_mock(MockExp::default());
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    let g = b.resv().lock(None).unwrap();
    let m1 = map_attachment(&a, DmaDirection::Bidirectional, &g).unwrap();
    let m2 = map_attachment(&a, DmaDirection::Bidirectional, &g).unwrap();
    assert_ne!(m1.id(), m2.id());
    assert_eq!(ops.maps.load(Ordering::SeqCst), 2);
    assert_eq!(a.map_count(), 2);
    unmap_attachment(&a, m1, &g).unwrap();
    assert_eq!(a.map_count(), 1);
    unmap_attachment(&a, m2, &g).unwrap();
    assert_eq!(ops.unmaps.load(Ordering::SeqCst), 2);
}

#[test]
fn static_importer_of_dynamic_exporter_is_pinned_on_map() {
    let (b, ops) = export_mock(MockExp {
        dynamic: true,
        ..Default::default()
    });
    let a = attach(&b, "d1").unwrap();
    let g = b.resv().lock(None).unwrap();
    let m = map_attachment(&a, DmaDirection::ToDevice, &g).unwrap();
    assert_eq!(ops.pins.load(Ordering::SeqCst), 1);
    unmap_attachment(&a, m, &g).unwrap();
    assert_eq!(ops.unpins.load(Ordering::SeqCst), 1);
}

#[test]
fn dynamic_importer_is_not_pinned_on_map() {
    let (b, ops) = export_mock(MockExp {
        dynamic: true,
        ..Default::default()
    });
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    let g = b.resv().lock(None).unwrap();
    let m = map_attachment(&a, DmaDirection::ToDevice, &g).unwrap();
    assert_eq!(ops.pins.load(Ordering::SeqCst), 0);
    unmap_attachment(&a, m, &g).unwrap();
}

#[test]
fn failed_map_leaves_no_pin() {
    let (b, ops) = export_mock(MockExp {
        dynamic: true,
        fail_map: true,
        ..Default::default()
    });
    let a = attach(&b, "d1").unwrap();
    let g = b.resv().lock(None).unwrap();
    assert_eq!(
        map_attachment(&a, DmaDirection::ToDevice, &g)
            .unwrap_err()
            .errno(),
        errno::ENOMEM
    );
    assert_eq!(
        ops.pins.load(Ordering::SeqCst),
        ops.unpins.load(Ordering::SeqCst)
    );
    assert_eq!(a.map_count(), 0);
}

#[test]
fn unaligned_sg_entries_are_refused_and_undone() {
    let (b, ops) = export_mock(MockExp {
        unaligned: true,
        ..Default::default()
    });
    let a = attach(&b, "d1").unwrap();
    let g = b.resv().lock(None).unwrap();
    assert!(matches!(
        map_attachment(&a, DmaDirection::ToDevice, &g),
        Err(DmaBufError::Unaligned { .. })
    ));
    assert_eq!(ops.unmaps.load(Ordering::SeqCst), 1);
    assert_eq!(a.map_count(), 0);
}

#[test]
fn static_importer_map_waits_for_kernel_fences() {
    let (b, _) = export_mock(MockExp::default());
    let a = attach(&b, "d1").unwrap();
    let ctx = FenceContext::named("mock", "move");
    let (f, h) = ctx.create();
    {
        let g = b.resv().lock(None).unwrap();
        g.reserve_fences(1).unwrap();
        g.add_fence(&f, Usage::Kernel).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let a2 = a.clone();
    let t = thread::spawn(move || {
        let m = map_attachment_unlocked(&a2, DmaDirection::ToDevice).unwrap();
        d2.store(true, Ordering::SeqCst);
        m
    });
    thread::sleep(std::time::Duration::from_millis(30));
    assert!(
        !done.load(Ordering::SeqCst),
        "map returned before the Kernel fence signalled"
    );
    h.signal().unwrap();
    let m = t.join().unwrap();
    assert!(f.is_signaled());
    unmap_attachment_unlocked(&a, m).unwrap();
}

#[test]
fn dynamic_importer_map_does_not_wait_for_fences() {
    let (b, _) = export_mock(MockExp::default());
    let a = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    let ctx = FenceContext::named("mock", "move");
    let (f, _h) = ctx.create();
    let g = b.resv().lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, Usage::Kernel).unwrap();
    let m = map_attachment(&a, DmaDirection::ToDevice, &g).unwrap();
    assert!(!f.is_signaled());
    unmap_attachment(&a, m, &g).unwrap();
}

#[test]
fn unmap_of_foreign_mapping_is_refused() {
    let (b, _) = export_mock(MockExp::default());
    let a1 = dynamic_attach(&b, "d1", Some(dyn_ops(true, true))).unwrap();
    let a2 = dynamic_attach(&b, "d2", Some(dyn_ops(true, true))).unwrap();
    let g = b.resv().lock(None).unwrap();
    let m = map_attachment(&a1, DmaDirection::ToDevice, &g).unwrap();
    let id = m.id();
    assert_eq!(
        unmap_attachment(&a2, m, &g).unwrap_err(),
        DmaBufError::UnknownMapping {
            mapping: id,
            attach: a2.id()
        }
    );
    assert_eq!(a1.map_count(), 1);
}

#[test]
fn invalidate_notifies_newest_first_skipping_static_and_opless() {
    let (b, _) = export_mock(MockExp::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mk = |name: &'static str| {
        let o = order.clone();
        AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(move |_: &Attachment, _: &ResvGuard<'_>| {
                o.lock().push(name)
            })),
        }
    };
    let _s = attach(&b, "static").unwrap();
    let _x = dynamic_attach(&b, "first", Some(mk("first"))).unwrap();
    let _n = dynamic_attach(&b, "opless", Some(dyn_ops(true, false))).unwrap();
    let _y = dynamic_attach(&b, "second", Some(mk("second"))).unwrap();
    let g = b.resv().lock(None).unwrap();
    assert_eq!(invalidate_mappings(&b, &g).unwrap(), 2);
    assert_eq!(*order.lock(), vec!["second", "first"]);
}

#[test]
fn invalidate_callback_runs_with_lock_held_and_may_unmap() {
    let (b, ops) = export_mock(MockExp::default());
    let slot: Arc<Mutex<Option<Mapping>>> = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    let a = dynamic_attach(
        &b,
        "odp",
        Some(AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(move |a: &Attachment, g: &ResvGuard<'_>| {
                assert!(a.dmabuf().resv().is_held_by_current_thread());
                if let Some(m) = s2.lock().take() {
                    unmap_attachment(a, m, g).unwrap();
                }
            })),
        }),
    )
    .unwrap();
    let g = b.resv().lock(None).unwrap();
    *slot.lock() = Some(map_attachment(&a, DmaDirection::Bidirectional, &g).unwrap());
    invalidate_mappings(&b, &g).unwrap();
    assert_eq!(ops.unmaps.load(Ordering::SeqCst), 1);
    assert_eq!(a.map_count(), 0);
}

#[test]
fn vmap_is_refcounted() {
    let (b, ops) = export_mock(MockExp {
        vmap: true,
        ..Default::default()
    });
    let g = b.resv().lock(None).unwrap();
    let p1 = vmap(&b, &g).unwrap();
    let p2 = vmap(&b, &g).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(ops.vmaps.load(Ordering::SeqCst), 1);
    vunmap(&b, p1, &g).unwrap();
    assert_eq!(ops.vunmaps.load(Ordering::SeqCst), 0);
    vunmap(&b, p1, &g).unwrap();
    assert_eq!(ops.vunmaps.load(Ordering::SeqCst), 1);
    assert!(matches!(
        vunmap(&b, p1, &g),
        Err(DmaBufError::VunmapMismatch { .. })
    ));
}

#[test]
fn vmap_without_op_is_einval() {
    let (b, _) = export_mock(MockExp::default());
    let g = b.resv().lock(None).unwrap();
    assert_eq!(vmap(&b, &g).unwrap_err().errno(), errno::EINVAL);
}

#[test]
fn mmap_range_checks() {
    let (b, _) = export_mock(MockExp {
        mmap: true,
        ..Default::default()
    });
    assert!(
        mmap(
            &b,
            MmapRequest {
                pgoff: 0,
                pages: 16
            }
        )
        .is_ok()
    );
    assert_eq!(
        mmap(
            &b,
            MmapRequest {
                pgoff: 1,
                pages: 16
            }
        )
        .unwrap_err()
        .errno(),
        errno::EINVAL
    );
    assert_eq!(
        mmap(
            &b,
            MmapRequest {
                pgoff: u64::MAX,
                pages: 2
            }
        )
        .unwrap_err()
        .errno(),
        errno::EOVERFLOW
    );
    let (nb, _) = export_mock(MockExp::default());
    assert_eq!(
        mmap(&nb, MmapRequest { pgoff: 0, pages: 1 })
            .unwrap_err()
            .errno(),
        errno::EINVAL
    );
}

#[test]
fn begin_cpu_access_waits_per_direction() {
    let (b, ops) = export_mock(MockExp::default());
    let ctx = FenceContext::named("mock", "gpu");
    let (rf, rh) = ctx.create();
    {
        let g = b.resv().lock(None).unwrap();
        g.reserve_fences(1).unwrap();
        g.add_fence(&rf, Usage::Read).unwrap();
    }
    // A CPU read waits only for writers: the Read fence does not block it.
    begin_cpu_access(&b, DmaDirection::FromDevice, None).unwrap();
    assert_eq!(ops.cpu_begin.load(Ordering::SeqCst), 1);
    // A CPU write waits for readers too: cancel it instead of blocking.
    let tok = crate::dma_fence::CancelToken::new();
    tok.cancel();
    assert_eq!(
        begin_cpu_access(&b, DmaDirection::ToDevice, Some(&tok)).unwrap_err(),
        DmaBufError::Interrupted
    );
    rh.signal().unwrap();
    begin_cpu_access(&b, DmaDirection::ToDevice, None).unwrap();
    end_cpu_access(&b, DmaDirection::ToDevice).unwrap();
}

#[test]
fn set_name_length_rule() {
    let (b, _) = export_mock(MockExp::default());
    set_name(&b, "x".repeat(31)).unwrap();
    assert_eq!(b.name().unwrap().len(), 31);
    assert_eq!(
        set_name(&b, "x".repeat(32)).unwrap_err().errno(),
        errno::EINVAL
    );
    // Renaming while attached is allowed in 7.x.
    let _a = attach(&b, "d").unwrap();
    set_name(&b, "renamed").unwrap();
}

/// Every call of the locking convention, with and without the lock.
#[test]
fn locking_convention_table() {
    type Call = Box<dyn Fn(&DmaBuf, &Attachment, &ResvGuard<'_>) -> Result<(), DmaBufError>>;
    let (b, _) = export_mock(MockExp {
        dynamic: true,
        vmap: true,
        mmap: true,
        ..Default::default()
    });
    let a = dynamic_attach(&b, "d", Some(dyn_ops(true, true))).unwrap();
    // Calls that need the lock get a guard; "without" passes a guard of
    // another reservation object.
    let needs: Vec<(&str, Call)> = vec![
        (
            "pin",
            Box::new(|_, a, g| pin(a, g).and_then(|_| unpin(a, g))),
        ),
        (
            "unpin",
            Box::new(|_, a, g| {
                unpin(a, g).or_else(|e| {
                    if matches!(e, DmaBufError::NotPinned { .. }) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            }),
        ),
        (
            "map",
            Box::new(|_, a, g| {
                map_attachment(a, DmaDirection::ToDevice, g).and_then(|m| unmap_attachment(a, m, g))
            }),
        ),
        (
            "vmap",
            Box::new(|b, _, g| vmap(b, g).and_then(|p| vunmap(b, p, g))),
        ),
        (
            "invalidate",
            Box::new(|b, _, g| invalidate_mappings(b, g).map(|_| ())),
        ),
    ];
    let other = DmaResv::new();
    for (name, call) in &needs {
        let og = other.lock(None).unwrap();
        let r = call(&b, &a, &og);
        assert!(
            matches!(r, Err(DmaBufError::LockNotHeld { .. })),
            "{name} without the lock: {r:?}"
        );
        drop(og);
        let g = b.resv().lock(None).unwrap();
        assert!(call(&b, &a, &g).is_ok(), "{name} with the lock");
    }
    type Unlocked = Box<dyn Fn(&DmaBuf, &Attachment) -> Result<(), DmaBufError>>;
    let must_not: Vec<(&str, Unlocked)> = vec![
        (
            "attach",
            Box::new(|b, _| attach(b, "x").and_then(|a| detach(b, &a))),
        ),
        (
            "dynamic_attach",
            Box::new(|b, _| {
                dynamic_attach(b, "x", Some(dyn_ops(true, true))).and_then(|a| detach(b, &a))
            }),
        ),
        (
            "map_unlocked",
            Box::new(|_, a| {
                map_attachment_unlocked(a, DmaDirection::ToDevice)
                    .and_then(|m| unmap_attachment_unlocked(a, m))
            }),
        ),
        (
            "vmap_unlocked",
            Box::new(|b, _| vmap_unlocked(b).and_then(|p| vunmap_unlocked(b, p))),
        ),
        (
            "mmap",
            Box::new(|b, _| mmap(b, MmapRequest { pgoff: 0, pages: 1 })),
        ),
        (
            "begin_cpu_access",
            Box::new(|b, _| begin_cpu_access(b, DmaDirection::FromDevice, None)),
        ),
        (
            "end_cpu_access",
            Box::new(|b, _| end_cpu_access(b, DmaDirection::FromDevice)),
        ),
    ];
    for (name, call) in &must_not {
        let g = b.resv().lock(None).unwrap();
        let r = call(&b, &a);
        assert!(
            matches!(r, Err(DmaBufError::LockHeld { .. })),
            "{name} with the lock held: {r:?}"
        );
        assert_eq!(r.unwrap_err().errno(), errno::EDEADLK);
        drop(g);
        assert!(call(&b, &a).is_ok(), "{name} without the lock");
    }
    // detach with the lock held.
    let x = attach(&b, "y").unwrap();
    let g = b.resv().lock(None).unwrap();
    assert!(matches!(detach(&b, &x), Err(DmaBufError::LockHeld { .. })));
    drop(g);
    detach(&b, &x).unwrap();
}

// ---- revoke interpreter --------------------------------------------------

/// An exporter using the revoke interpreter, VFIO-style.
struct RevExp {
    rev: Revocable,
    gate: Gate,
}

impl DmaBufOps for RevExp {
    fn attach(&self, _b: &DmaBufRef, a: &Attachment) -> Result<(), DmaBufError> {
        self.rev.check_attach(a, self.gate)
    }
    fn map_dma_buf(
        &self,
        _a: &Attachment,
        _d: DmaDirection,
        g: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        self.rev.map_get(g)?;
        Ok(SgTable {
            entries: vec![SgEntry {
                dma_addr: 0x8000_0000,
                len: PAGE_SIZE,
            }],
        })
    }
    fn unmap_dma_buf(&self, _a: &Attachment, _s: SgTable, _d: DmaDirection, _g: &ResvGuard<'_>) {
        self.rev.map_put();
    }
    fn release(&self, _b: &DmaBufRef) {}
}

fn rev_buf(gate: Gate) -> (DmaBuf, Arc<RevExp>) {
    let ops = Arc::new(RevExp {
        rev: Revocable::new(false),
        gate,
    });
    let b = export(ExportInfo {
        exp_name: "vfio".into(),
        size: PAGE_SIZE,
        flags: 0,
        resv: None,
        ops: ops.clone(),
    })
    .unwrap();
    (b, ops)
}

fn revoke(b: &DmaBuf, ops: &RevExp, seq: &Sequence) -> SeqOutcome {
    ops.rev.run(seq, b, &mut NoHooks).unwrap()
}

#[test]
fn revoke_gate_refuses_static_opless_and_revoked() {
    let p = Protocol::merged();
    let (b, ops) = rev_buf(p.attach);
    assert_eq!(attach(&b, "static").unwrap_err().errno(), errno::EOPNOTSUPP);
    assert_eq!(
        dynamic_attach(&b, "nop2p", Some(dyn_ops(false, true)))
            .unwrap_err()
            .errno(),
        errno::EOPNOTSUPP
    );
    assert_eq!(
        dynamic_attach(&b, "pinned", Some(dyn_ops(true, false)))
            .unwrap_err()
            .errno(),
        errno::EOPNOTSUPP
    );
    dynamic_attach(&b, "ok", Some(dyn_ops(true, true))).unwrap();
    revoke(&b, &ops, &p.revoke);
    assert_eq!(
        dynamic_attach(&b, "late", Some(dyn_ops(true, true)))
            .unwrap_err()
            .errno(),
        errno::ENODEV
    );
}

#[test]
fn revoke_waits_for_late_unmap_then_maps_fail_with_enodev() {
    let p = Protocol::merged();
    let (b, ops) = rev_buf(p.attach);
    let a = dynamic_attach(&b, "gpu", Some(dyn_ops(true, true))).unwrap();
    let m = map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
    assert_eq!(ops.rev.live_mappings(), 1);
    let unmapped = Arc::new(AtomicBool::new(false));
    let (u2, a2) = (unmapped.clone(), a.clone());
    let worker = thread::spawn(move || {
        thread::sleep(std::time::Duration::from_millis(20));
        u2.store(true, Ordering::SeqCst);
        unmap_attachment_unlocked(&a2, m).unwrap();
    });
    let out = revoke(&b, &ops, &p.revoke);
    assert!(
        unmapped.load(Ordering::SeqCst),
        "revoke returned before the unmap"
    );
    assert!(!out.timed_out);
    assert_eq!(out.live_after_fences, 1);
    worker.join().unwrap();
    assert_eq!(
        map_attachment_unlocked(&a, DmaDirection::Bidirectional)
            .unwrap_err()
            .errno(),
        errno::ENODEV
    );
}

#[test]
fn wait_for_completion_timeout_gives_up_with_the_mapping_live() {
    let p = Protocol::merged();
    let (b, ops) = rev_buf(p.attach);
    let a = dynamic_attach(&b, "lying", Some(dyn_ops(true, true))).unwrap();
    let m = map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
    let v5 = Sequence::parse(&[
        "dma_resv_lock",
        "set_revoked",
        "dma_buf_invalidate_mappings",
        "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
        "dma_resv_unlock",
        "kref_put",
        "wait_for_completion_timeout(5ms)",
    ])
    .unwrap();
    let out = revoke(&b, &ops, &v5);
    assert!(out.timed_out);
    assert_eq!(ops.rev.live_mappings(), 1);
    unmap_attachment_unlocked(&a, m).unwrap();
    assert_eq!(ops.rev.live_mappings(), 0);
    assert_eq!(ops.rev.refcount(), (0, false));
}

#[test]
fn vfio_cleanup_after_revoke_skips_the_second_put_c64a647c84f3() {
    let p = Protocol::merged();
    let (b, ops) = rev_buf(p.attach);
    dynamic_attach(&b, "gpu", Some(dyn_ops(true, true))).unwrap();
    revoke(&b, &ops, &p.revoke);
    // Fixed cleanup: the buffer was already revoked, so no second kref_put
    // and no wait on the consumed completion; nothing hangs or WARNs.
    let out = revoke(&b, &ops, &p.cleanup);
    assert!(out.was_revoked);
    assert_eq!(out.skipped, 2);
    assert_eq!(ops.rev.refcount(), (0, false));
    // The buggy cleanup puts again: refcount_t saturates.
    let buggy = Sequence::parse(&["kref_put", "wait_for_completion_timeout(1ms)"]).unwrap();
    let out = revoke(&b, &ops, &buggy);
    assert!(out.timed_out, "the second wait cannot end");
    assert_eq!(ops.rev.refcount(), (0, true));
}

#[test]
fn unrevoke_rearms_before_clearing_and_maps_work_again() {
    let p = Protocol::merged();
    let (b, ops) = rev_buf(p.attach);
    let a = dynamic_attach(&b, "gpu", Some(dyn_ops(true, true))).unwrap();
    revoke(&b, &ops, &p.revoke);
    revoke(&b, &ops, &p.unrevoke);
    assert!(!ops.rev.is_revoked());
    assert_eq!(ops.rev.refcount(), (1, false));
    let m = map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
    assert_eq!(ops.rev.live_mappings(), 1);
    unmap_attachment_unlocked(&a, m).unwrap();
    let again = revoke(&b, &ops, &p.revoke);
    assert!(!again.was_revoked && !again.timed_out);
}

#[test]
fn revoke_waits_for_bookkeep_fences_before_returning() {
    let p = Protocol::merged();
    let (b, ops) = rev_buf(p.attach);
    let ctx = FenceContext::named("gpu", "tlb");
    let (f, h) = ctx.create();
    let fc = f.clone();
    let a = dynamic_attach(
        &b,
        "gpu",
        Some(AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(move |_: &Attachment, g: &ResvGuard<'_>| {
                g.reserve_fences(1).unwrap();
                g.add_fence(&fc, Usage::Bookkeep).unwrap();
            })),
        }),
    )
    .unwrap();
    let signaller = thread::spawn(move || {
        thread::sleep(std::time::Duration::from_millis(20));
        h.signal().unwrap();
    });
    revoke(&b, &ops, &p.revoke);
    assert!(
        f.is_signaled(),
        "revoke returned before the Bookkeep fence signalled"
    );
    signaller.join().unwrap();
    drop(a);
}

/// `DmaBufError::errno` of a raw number through `Errno::new` is total: an
/// exporter handing back `i32::MIN` or 0 gets `EINVAL`, never an overflow
/// or a negative "positive errno".
#[test]
fn dma_buf_error_errno_is_total() {
    use crate::errno::AsErrno as _;
    assert_eq!(
        DmaBufError::errno(Errno::new(i32::MIN), "x").errno(),
        errno::EINVAL
    );
    assert_eq!(
        DmaBufError::errno(Errno::new(0), "x").errno(),
        errno::EINVAL
    );
    assert_eq!(
        DmaBufError::errno(Errno::new(errno::EBUSY.to_negative()), "x").errno(),
        errno::EBUSY
    );
    assert_eq!(
        DmaBufError::errno(errno::ENODEV, "x").errno(),
        errno::ENODEV
    );
    assert!(
        DmaBufError::errno(Errno::new(i32::MIN), "x")
            .to_string()
            .contains("EINVAL")
    );
}
