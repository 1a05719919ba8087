//! iommufd mapping a dma-buf into an IOAS (`IOMMU_IOAS_MAP_FILE` given a
//! dma-buf fd; `drivers/iommu/iommufd/pages.c`, 6.19+ / 7.1): the guest's
//! passthrough device then reaches the exporter's BAR through IOVAs of the
//! IOAS's domains. iommufd never calls `dma_buf_map_attachment`: it gets the
//! physical range through VFIO's private interface ([`crate::vfio::iommufd_map`]).
//!
//! # Objects
//!
//! | Rust | kernel |
//! |---|---|
//! | [`Iommufd`] | an iommufd context with one IOAS and its domains |
//! | [`IoasMapping`] | the area and its `iopt_pages` of type `IOPT_ADDRESS_DMABUF` (`pages->mutex`, `pages->dmabuf.phys`, the (area, domain) tracker) |
//! | [`IommufdImporter`] | a VMM using it for one device ([`Importer`]) |
//!
//! # Map (`iopt_map_dmabuf`)
//!
//! 1. Range checks against the buffer size (`EINVAL`).
//! 2. `dma_buf_dynamic_attach` with `{allow_peer2peer, invalidate_mappings =
//!    iopt_revoke_notify}`; `importer_priv` = the pages.
//! 3. Lock; `dma_buf_pin` (7.1).
//! 4. `vfio_pci_dma_buf_iommufd_map`: the physical range (`EOPNOTSUPP` if
//!    not a VFIO buffer or not exactly one range, `ENODEV` if revoked).
//! 5. Under `pages->mutex`: map the range into every domain at the IOVA
//!    (each mapping declared to the monitor, its PTEs tagged), track each
//!    (area, domain).
//! 6. Unlock. On any error: unpin, unlock, detach.
//!
//! # Revoke (`iopt_revoke_notify`, reservation lock held)
//!
//! 1. Take `pages->mutex`; return if already revoked.
//! 2. Unmap the IOVA range from every tracked domain, synchronously, with an
//!    IOTLB sync (tagged "revoke": later DMA faults as stopped by revoke,
//!    the intended outcome).
//! 3. `phys.len = 0`: revoked for good. Nothing is ever re-populated;
//!    userspace unmaps and maps again once the exporter un-revokes.
//!
//! # Release (`iopt_release_pages`, the order fixed by e745cd2c749e and
//! f2d70dbd3dce)
//!
//! 1. Lock; `dma_buf_unpin`; unlock.
//! 2. `dma_buf_detach`.
//! 3. `dma_buf_put`.
//! 4. Only now destroy `pages->mutex` (before, an invalidate could still
//!    take it: CVE-2026-74328). A callback that finds it destroyed is
//!    recorded as a use-after-destroy and reported as the KASAN splat the
//!    kernel would print ([`Host::splat`]).
//!
//! [`Iommufd::with_release_order`] selects the order before f2d70dbd3dce
//! (destroy, then detach), to replay the bug: a revoke whose invalidate
//! runs between the two uses the destroyed mutex.
//!
//! # Lock rules
//!
//! Reservation lock → `pages->mutex` (the separate lockdep class iommufd
//! gives dma-buf pages, [`PAGES_MUTEX_CLASS`]: for them this order, not
//! mmap → mutex). The validator checks it: every acquisition of the mutex
//! is announced under that class.

use super::{Counters, ImportError, Importer, Job, Stage, job_ops, read_page};
use crate::host::{ClassMutex, Host, LockClass};
use crate::job::submit_after;
use crate::vfio;
use dmabuf_core::dma_buf::{self, AttachOps, Attachment, DmaBuf, InvalidateFn};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_core::uapi::Process;
use dmabuf_core::{Fence, FenceContext, trace_event};
use dmabuf_platform::{
    Accessor, DeclaredRange, DmaAddr, DmaEngine, DmaJob, EngineConfig, IommuDomain, IommuPerm,
    MappingDecl, MappingToken, PAGE_SIZE, PciDevice, UnmapReason,
};
use std::any::Any;
use std::collections::BTreeMap;

/// The device name iommufd attaches as (`iommufd_global_device()`).
pub const IOMMUFD_DEVICE: &str = "iommufd";

/// The lock class of dma-buf pages' `pages->mutex`: separate from the class
/// of user-memory pages, because here it nests inside the reservation lock
/// (for user memory the order is `mmap_lock` → `pages->mutex`).
pub static PAGES_MUTEX_CLASS: LockClass = LockClass::new("pages->mutex (dmabuf)");

struct Tracked {
    domain: IommuDomain,
    iova: u64,
    len: u64,
    token: MappingToken,
}

struct PagesState {
    /// `pages->dmabuf.phys`: `(paddr, len)`; `len == 0` once revoked.
    phys: (u64, u64),
    tracker: Vec<Tracked>,
    destroyed: bool,
}

struct Pages {
    host: Host,
    accessor: Accessor,
    /// `pages->mutex`, class [`PAGES_MUTEX_CLASS`].
    mutex: ClassMutex<PagesState>,
    attach: Mutex<Option<Attachment>>,
    buf: Mutex<Option<DmaBuf>>,
    revokes: Counters,
    /// Release destroys the mutex before detaching (before f2d70dbd3dce).
    destroy_first: bool,
}

impl Pages {
    /// Revoke steps 1–3.
    fn revoke_notify(attach: &Attachment, _g: &ResvGuard<'_>) {
        let Some(pages) = attach
            .importer_priv()
            .and_then(|p| p.downcast::<Pages>().ok())
        else {
            return;
        };
        let mut st = pages.mutex.lock("iopt_revoke_notify");
        if st.destroyed {
            pages.revokes.bump("use_after_destroy");
            trace_event!("iommufd_pages_use_after_destroy", "attach={}", attach.id());
            drop(st);
            pages.host.splat(&format!(
                "BUG: KASAN: use-after-free in mutex_lock: iopt_revoke_notify took pages->mutex of attachment {} after iopt_release_pages destroyed it (not yet detached from the dma-buf; CVE-2026-74328, fixed by f2d70dbd3dce)",
                attach.id()
            ));
            return;
        }
        if st.phys.1 == 0 {
            return;
        }
        for t in st.tracker.drain(..) {
            let _ = pages.host.monitor().mapping_unmapped(&t.token);
            let _ = t.domain.unmap(t.iova, t.len, UnmapReason::Revoke);
        }
        st.phys.1 = 0;
        pages.revokes.bump("revokes");
        trace_event!("iopt_revoke_notify", "attach={}", attach.id());
    }
}

/// One IOAS mapping of a dma-buf (cheap to clone handle).
#[derive(Clone)]
pub struct IoasMapping {
    pages: Arc<Pages>,
    iova: u64,
    len: u64,
}

impl std::fmt::Debug for IoasMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoasMapping(iova={:#x} len={:#x})", self.iova, self.len)
    }
}

impl IoasMapping {
    /// The IOVA the range is mapped at.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Whether the exporter revoked it (for good).
    pub fn is_revoked(&self) -> bool {
        self.pages.mutex.lock("iopt_dmabuf_revoked").phys.1 == 0
    }

    /// Domains the range is mapped into now.
    pub fn mapped_domains(&self) -> usize {
        self.pages.mutex.lock("iopt_pages tracker").tracker.len()
    }

    /// `IOMMU_IOAS_UNMAP` of the area: unmaps from every domain (nothing to
    /// do once revoked).
    pub fn unmap(&self) {
        let mut st = self.pages.mutex.lock("iopt_unmap_iova");
        for t in st.tracker.drain(..) {
            let _ = self.pages.host.monitor().mapping_unmapped(&t.token);
            let _ = t.domain.unmap(t.iova, t.len, UnmapReason::Unmap);
        }
    }

    /// `iopt_release_pages`: steps 1–4 in the fixed order, or with the
    /// mutex destroyed before the detach (before f2d70dbd3dce).
    pub fn release(&self) -> Result<(), ImportError> {
        self.unmap();
        let attach = self.pages.attach.lock().take();
        let buf = self.pages.buf.lock().take();
        if let (Some(attach), Some(buf)) = (attach, buf) {
            {
                let g = crate::host::lock_resv(buf.resv());
                dma_buf::unpin(&attach, &g).map_err(ImportError::dmabuf(Stage::Teardown))?;
            }
            if self.pages.destroy_first {
                self.pages.mutex.lock("iopt_release_pages").destroyed = true;
                trace_event!(
                    "iopt_release_pages",
                    "destroyed pages->mutex before dma_buf_detach"
                );
            }
            dma_buf::detach(&buf, &attach).map_err(ImportError::dmabuf(Stage::Teardown))?;
            drop(buf);
        }
        self.pages.mutex.lock("iopt_release_pages").destroyed = true;
        Ok(())
    }

    /// Use-after-destroy of `pages->mutex` seen by a late invalidate.
    pub fn uses_after_destroy(&self) -> u64 {
        self.pages.revokes.snapshot()["use_after_destroy"]
    }
}

/// An iommufd context: one IOAS and the domains attached to it.
#[derive(Clone, Debug)]
pub struct Iommufd {
    host: Host,
    domains: Vec<IommuDomain>,
    accessor: Accessor,
    destroy_first: bool,
}

impl Iommufd {
    /// An IOAS over `domains`.
    pub fn new(host: &Host, domains: Vec<IommuDomain>) -> Self {
        Self {
            host: host.clone(),
            domains,
            accessor: Accessor::new(IOMMUFD_DEVICE),
            destroy_first: false,
        }
    }

    /// With `destroy_first`, `iopt_release_pages` destroys `pages->mutex`
    /// before `dma_buf_detach`, as before f2d70dbd3dce.
    pub fn with_release_order(mut self, destroy_first: bool) -> Self {
        self.destroy_first = destroy_first;
        self
    }

    /// `IOMMU_IOAS_MAP_FILE`: maps `[start, start + len)` of the dma-buf
    /// behind `fd` at `iova` (map steps 1–6).
    pub fn map_file(
        &self,
        proc: &Process,
        fd: i32,
        start: u64,
        len: u64,
        iova: u64,
    ) -> Result<IoasMapping, ImportError> {
        let buf = proc.dma_buf_get(fd).map_err(ImportError::sys(Stage::Fd))?;
        if len == 0
            || (start | len | iova) & (PAGE_SIZE - 1) != 0
            || start.checked_add(len).is_none_or(|e| e > buf.size())
        {
            return Err(ImportError::Invalid {
                stage: Stage::Register,
                what: format!(
                    "range {start:#x}+{len:#x} at iova {iova:#x} in a buffer of {:#x}",
                    buf.size()
                ),
            });
        }
        let cb: InvalidateFn = Arc::new(Pages::revoke_notify);
        let attach = dma_buf::dynamic_attach(
            &buf,
            IOMMUFD_DEVICE,
            Some(AttachOps {
                allow_peer2peer: true,
                invalidate_mappings: Some(cb),
            }),
        )
        .map_err(ImportError::dmabuf(Stage::Attach))?;
        let pages = Arc::new(Pages {
            host: self.host.clone(),
            accessor: self.accessor.clone(),
            mutex: ClassMutex::new(
                &PAGES_MUTEX_CLASS,
                PagesState {
                    phys: (0, 0),
                    tracker: Vec::new(),
                    destroyed: false,
                },
            ),
            attach: Mutex::new(Some(attach.clone())),
            buf: Mutex::new(Some(buf.clone())),
            revokes: Counters::new(&["revokes", "use_after_destroy"]),
            destroy_first: self.destroy_first,
        });
        let p: Arc<dyn Any + Send + Sync> = pages.clone();
        attach.set_importer_priv(Some(&p));
        let r = {
            let g = crate::host::lock_resv(buf.resv());
            let r = self.map_locked(&pages, &attach, &g, start, len, iova);
            if r.is_err() {
                let _ = dma_buf::unpin(&attach, &g);
            }
            r
        };
        if let Err(e) = r {
            let _ = dma_buf::detach(&buf, &attach);
            pages.attach.lock().take();
            pages.buf.lock().take();
            pages.mutex.lock("iopt_map_dmabuf error").destroyed = true;
            return Err(e);
        }
        Ok(IoasMapping { pages, iova, len })
    }

    fn map_locked(
        &self,
        pages: &Pages,
        attach: &Attachment,
        g: &ResvGuard<'_>,
        start: u64,
        len: u64,
        iova: u64,
    ) -> Result<(), ImportError> {
        dma_buf::pin(attach, g).map_err(ImportError::dmabuf(Stage::Pin))?;
        let (paddr, plen) = vfio::iommufd_map(attach, g).map_err(|source| ImportError::Vfio {
            stage: Stage::Map,
            source,
        })?;
        if start + len > plen {
            return Err(ImportError::Invalid {
                stage: Stage::Register,
                what: format!("range {start:#x}+{len:#x} past the {plen:#x}-byte physical range"),
            });
        }
        let mut st = pages.mutex.lock("iopt_map_dmabuf");
        st.phys = (paddr, plen);
        for d in &self.domains {
            let token = self
                .host
                .monitor()
                .declare_mapping(MappingDecl {
                    attachment: attach.id(),
                    importer: pages.accessor.clone(),
                    exporter: self.host.exporter_of(attach.dmabuf().ino()),
                    ranges: vec![DeclaredRange::iova(d.id(), iova, len)],
                })
                .map_err(|e| ImportError::Device {
                    stage: Stage::Register,
                    errno: e.errno(),
                    what: e.to_string(),
                });
            let mapped = token.and_then(|token| {
                d.map_tagged(iova, paddr + start, len, IommuPerm::RW, Some(token.clone()))
                    .map(|_| token.clone())
                    .map_err(|e| {
                        let _ = self.host.monitor().mapping_unmapped(&token);
                        ImportError::Device {
                            stage: Stage::Register,
                            errno: e.errno(),
                            what: e.to_string(),
                        }
                    })
            });
            match mapped {
                Ok(token) => st.tracker.push(Tracked {
                    domain: d.clone(),
                    iova,
                    len,
                    token,
                }),
                Err(e) => {
                    for t in st.tracker.drain(..) {
                        let _ = self.host.monitor().mapping_unmapped(&t.token);
                        let _ = t.domain.unmap(t.iova, t.len, UnmapReason::Unmap);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// The IOVA the world's VMM maps its buffer at.
pub const GUEST_IOVA: u64 = 0x10_0000_0000;

struct UserState {
    proc: Option<(Arc<Process>, i32)>,
    mapping: Option<IoasMapping>,
    len: u64,
    maps: u64,
}

/// A VMM that maps a dma-buf through iommufd for its guest's device, whose
/// DMA then uses the IOVAs ([`Importer`]).
pub struct IommufdImporter {
    name: String,
    ictx: Iommufd,
    engine: DmaEngine,
    fctx: FenceContext,
    st: Mutex<UserState>,
    counters: Counters,
}

impl std::fmt::Debug for IommufdImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IommufdImporter({})", self.name)
    }
}

impl IommufdImporter {
    /// A VMM whose guest device is `guest_dev`: allocates a domain, attaches
    /// the device to it, starts the device's engine.
    pub fn new(host: &Host, name: &str, guest_dev: PciDevice) -> Result<Self, ImportError> {
        Self::with_release_order(host, name, guest_dev, false)
    }

    /// [`IommufdImporter::new`], releasing its pages in the order before
    /// f2d70dbd3dce when `destroy_first` ([`Iommufd::with_release_order`]).
    pub fn with_release_order(
        host: &Host,
        name: &str,
        guest_dev: PciDevice,
        destroy_first: bool,
    ) -> Result<Self, ImportError> {
        let iommu = host.platform().iommu();
        let dom = iommu.domain_alloc(&format!("{name}-ioas"));
        let err = |e: &dyn AsErrno, what: String| ImportError::Device {
            stage: Stage::Register,
            errno: e.errno(),
            what,
        };
        iommu
            .attach_device(&dom, guest_dev.id())
            .map_err(|e| err(&e, e.to_string()))?;
        let engine = host
            .platform()
            .dma_engine(
                guest_dev.id(),
                EngineConfig::threaded(format!("{}-dma", guest_dev.name()))
                    .with_accessor(Accessor::new(guest_dev.name())),
            )
            .map_err(|e| err(&e, e.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            ictx: Iommufd::new(host, vec![dom]).with_release_order(destroy_first),
            engine,
            fctx: FenceContext::named("iommufd-guest", name),
            st: Mutex::new(UserState {
                proc: None,
                mapping: None,
                len: 0,
                maps: 0,
            }),
            counters: Counters::new(&["maps", "map_enodev", "unmaps", "jobs"]),
        })
    }

    /// The current IOAS mapping.
    pub fn mapping(&self) -> Option<IoasMapping> {
        self.st.lock().mapping.clone()
    }

    fn map(&self, proc: &Process, fd: i32) -> Result<IoasMapping, ImportError> {
        let size = proc
            .dma_buf_get(fd)
            .map_err(ImportError::sys(Stage::Fd))?
            .size();
        let r = self.ictx.map_file(proc, fd, 0, size, GUEST_IOVA);
        match &r {
            Ok(_) => self.counters.bump("maps"),
            Err(e) if e.errno() == errno::ENODEV => self.counters.bump("map_enodev"),
            Err(_) => {}
        }
        r
    }
}

impl Importer for IommufdImporter {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&self, proc: &Arc<Process>, fd: i32) -> Result<(), ImportError> {
        let m = self.map(proc, fd)?;
        let mut st = self.st.lock();
        st.len = m.len;
        st.mapping = Some(m);
        st.proc = Some((proc.clone(), fd));
        st.maps += 1;
        Ok(())
    }

    fn submit(&self, page: u64, pattern: u8, gate: Option<Fence>) -> Result<Job, ImportError> {
        let len = self.st.lock().len;
        if len == 0 {
            return Err(ImportError::NotSetUp(self.name.clone()));
        }
        if page * PAGE_SIZE >= len {
            return Err(ImportError::Invalid {
                stage: Stage::Job,
                what: format!("page {page} outside the mapping"),
            });
        }
        // The guest device keeps using the IOVA whatever happened to it.
        let at = DmaAddr::Iova(GUEST_IOVA + page * PAGE_SIZE);
        let from = DmaAddr::Iova(GUEST_IOVA + read_page(page, len / PAGE_SIZE) * PAGE_SIZE);
        let (f, h) = self.fctx.create();
        let job = DmaJob::new(job_ops(at.into(), from.into(), pattern))
            .with_label(format!("{} dma", self.name));
        self.counters.bump("jobs");
        Ok(Job::new(submit_after(
            &self.engine,
            gate.into_iter().collect(),
            job,
            f,
            h,
        )))
    }

    fn remap(&self) -> Result<(), ImportError> {
        let (old, proc) = {
            let mut st = self.st.lock();
            (st.mapping.take(), st.proc.clone())
        };
        if let Some(old) = old {
            old.release()?;
            self.counters.bump("unmaps");
        }
        let Some((p, fd)) = proc else {
            return Err(ImportError::NotSetUp(self.name.clone()));
        };
        let m = self.map(&p, fd)?;
        self.st.lock().mapping = Some(m);
        Ok(())
    }

    fn teardown(&self) -> Result<(), ImportError> {
        let (m, proc) = {
            let mut st = self.st.lock();
            (st.mapping.take(), st.proc.take())
        };
        if let Some(m) = m {
            m.release()?;
            self.counters.bump("unmaps");
        }
        if let Some((p, fd)) = proc {
            p.close(fd).map_err(ImportError::sys(Stage::Teardown))?;
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.engine.stop();
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.counters.snapshot()
    }
}
