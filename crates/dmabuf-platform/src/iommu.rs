//! The IOMMU: domains, IOVA page tables with read/write permissions, an IOTLB
//! that keeps translations until told otherwise, and translation faults
//! (`iommu_domain_alloc`, `iommu_attach_device`, `iommu_map`,
//! `iommu_unmap`/`iommu_unmap_fast`, `iommu_iotlb_sync`,
//! `iommu_flush_iotlb_all`, `iommu_iova_to_phys`, `report_iommu_fault`).
//!
//! # States of one IOVA page
//!
//! | page table | IOTLB | a device access |
//! |---|---|---|
//! | unmapped | empty | faults (cause: never mapped, unmapped, or unmapped by revoke) |
//! | mapped | empty | walks the table, fills the IOTLB, reaches the page |
//! | mapped | filled | reaches the page |
//! | unmapped | filled (stale) | **still reaches the old page**: the IOTLB is not told by unmap; the monitor classifies the access as `AccessAfterUnmap` plus whatever it reached |
//!
//! [`IommuDomain::unmap`] is the kernel's `iommu_unmap`: page table change
//! and IOTLB sync of the range. [`IommuDomain::unmap_fast`] changes only the
//! page table (`iommu_unmap_fast` with a gather); the caller must then call
//! [`IommuDomain::iotlb_sync`] or [`IommuDomain::flush_iotlb_all`]. Forgetting
//! it is the visible bug the IOTLB exists to show.
//!
//! Every unmap carries a [`UnmapReason`]; a later fault on that IOVA reports
//! [`IommuFaultCause::UnmappedByRevoke`] when the last unmap was a revoke (the
//! access was stopped, which is what revoke is for) and
//! [`IommuFaultCause::NeverMapped`] when the IOVA was never mapped.
//!
//! # Faults
//!
//! A fault is recorded in the domain's fault log ([`IommuDomain::take_faults`]),
//! traced as `iommu_fault`, and handed to the domain's fault handler if one
//! is set. A handler answering [`FaultResponse::Retry`] has mapped the page
//! (a page request, as on-demand paging does): the access is retried once.
//!
//! # Lock rules
//!
//! Each domain has an IOTLB lock and a page-table lock; order IOTLB -> page
//! table (a miss walks the table under the IOTLB lock, so a walk and a flush
//! never interleave). A device access holds the IOTLB lock while it moves
//! the bytes of that page, so once `iotlb_sync` returns no access is still
//! using the old translation. The fault handler runs with no lock held.

use crate::memory::{PAGE_SHIFT, PAGE_SIZE, PhysMemory};
use crate::monitor::{AccessKind, MappingToken, Outstanding, PhysRange};
use crate::pci::DeviceId;
use crate::trace;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, MutexGuard};
use dmabuf_core::trace_event;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The top of every domain's IOVA aperture (48-bit IOVAs).
pub const IOVA_LIMIT: u64 = 1 << 48;
const MAX_FAULT_LOG: usize = 4096;
/// The largest IOTLB a domain gets, whatever the configuration asks.
pub const MAX_IOTLB_ENTRIES: usize = 1 << 20;

/// Identifies a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(pub u32);

/// `IOMMU_READ` / `IOMMU_WRITE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuPerm {
    /// Device reads allowed.
    pub read: bool,
    /// Device writes allowed.
    pub write: bool,
}

impl IommuPerm {
    /// `IOMMU_READ`.
    pub const READ: IommuPerm = IommuPerm {
        read: true,
        write: false,
    };
    /// `IOMMU_WRITE`.
    pub const WRITE: IommuPerm = IommuPerm {
        read: false,
        write: true,
    };
    /// `IOMMU_READ | IOMMU_WRITE`.
    pub const RW: IommuPerm = IommuPerm {
        read: true,
        write: true,
    };

    fn allows(self, k: AccessKind) -> bool {
        match k {
            AccessKind::Read => self.read,
            AccessKind::Write => self.write,
        }
    }
}

/// Why an IOVA range was unmapped (the caller's tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnmapReason {
    /// An ordinary unmap (the importer is done with it).
    Unmap,
    /// Torn down by a revoke: later faults on it are accesses that revoke
    /// stopped.
    Revoke,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IommuFaultCause {
    /// The IOVA was never mapped in this domain.
    NeverMapped,
    /// The IOVA was unmapped by an ordinary unmap.
    Unmapped,
    /// The IOVA was unmapped by a revoke: the access was stopped.
    UnmappedByRevoke,
    /// Mapped, but without the permission the access needs.
    Permission,
    /// The device is not attached to any domain.
    NoDomain,
}

/// One translation fault (`report_iommu_fault`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuFaultEvent {
    /// The domain (none for `NoDomain`).
    pub domain: Option<DomainId>,
    /// The device that issued the access.
    pub device: Option<DeviceId>,
    /// The faulting IOVA.
    pub iova: u64,
    /// Read or write.
    pub kind: AccessKind,
    /// The cause.
    pub cause: IommuFaultCause,
    /// A speculative read-ahead.
    pub speculative: bool,
    /// When (`sync::time::now_ns`).
    pub ts_ns: u64,
}

/// What a fault handler wants done with the faulting access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResponse {
    /// Fail the access.
    Abort,
    /// The handler mapped the page: translate once more.
    Retry,
}

/// A domain's fault handler (`iommu_set_fault_handler`).
pub type FaultHandler = Arc<dyn Fn(&IommuFaultEvent) -> FaultResponse + Send + Sync>;

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address (page base plus the IOVA's offset).
    pub phys: u64,
    /// Permissions of the entry used.
    pub perm: IommuPerm,
    /// The entry came from the IOTLB (a hit).
    pub iotlb_hit: bool,
    /// The entry's page-table entry is gone: a stale IOTLB entry.
    pub stale: bool,
    /// The `iommu_map` call that created the entry.
    pub map_id: u64,
}

/// Errors of IOMMU calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IommuError {
    /// IOVA, physical address or length not page aligned.
    #[error("unaligned: iova {iova:#x} paddr {paddr:#x} len {len:#x} (page {PAGE_SIZE:#x})")]
    Unaligned {
        /// IOVA given.
        iova: u64,
        /// Physical address given (0 for unmap).
        paddr: u64,
        /// Length given.
        len: u64,
    },
    /// Zero length.
    #[error("zero-length range at iova {iova:#x}")]
    ZeroLength {
        /// IOVA given.
        iova: u64,
    },
    /// IOVA range beyond the aperture or wrapping.
    #[error("iova range {iova:#x}+{len:#x} outside the aperture (limit {IOVA_LIMIT:#x})")]
    OutOfAperture {
        /// IOVA given.
        iova: u64,
        /// Length given.
        len: u64,
    },
    /// Physical range outside the address space.
    #[error("physical range {paddr:#x}+{len:#x} outside the address space")]
    BadPhys {
        /// Physical address given.
        paddr: u64,
        /// Length given.
        len: u64,
    },
    /// No permission at all.
    #[error("mapping at iova {iova:#x} with neither read nor write")]
    NoPerm {
        /// IOVA given.
        iova: u64,
    },
    /// Mapping over an existing mapping.
    #[error("iova {iova:#x} is already mapped in domain {domain}")]
    Overlap {
        /// First IOVA page already mapped.
        iova: u64,
        /// The domain.
        domain: u32,
    },
    /// Unmapping what is not mapped.
    #[error("iova {iova:#x} is not mapped in domain {domain}")]
    NotMapped {
        /// First IOVA page not mapped.
        iova: u64,
        /// The domain.
        domain: u32,
    },
    /// The device already sits in another domain.
    #[error("device {device} is already attached to domain {domain}")]
    AlreadyAttached {
        /// The device.
        device: u32,
        /// Its current domain.
        domain: u32,
    },
    /// The device is in no domain.
    #[error("device {device} is not attached to a domain")]
    NotAttached {
        /// The device.
        device: u32,
    },
    /// Device id beyond the platform's slots.
    #[error("no device slot {0}")]
    NoSuchDevice(u32),
}

impl AsErrno for IommuError {
    fn errno(&self) -> Errno {
        match self {
            IommuError::Overlap { .. } => errno::EBUSY,
            IommuError::AlreadyAttached { .. } => errno::EBUSY,
            IommuError::NotMapped { .. } => errno::ENOENT,
            IommuError::NotAttached { .. } => errno::ENODEV,
            IommuError::NoSuchDevice(_) => errno::ENODEV,
            IommuError::BadPhys { .. } => errno::EFAULT,
            _ => errno::EINVAL,
        }
    }
}

/// Shared by a PTE and the IOTLB entries copied from it: whether the PTE is
/// still in the table.
pub(crate) struct PteCell {
    pub(crate) live: AtomicBool,
    pub(crate) map_id: u64,
    pub(crate) token: Option<MappingToken>,
}

#[derive(Clone)]
pub(crate) struct Pte {
    /// Physical page base.
    pub(crate) phys: u64,
    pub(crate) perm: IommuPerm,
    /// The physical page's tag when mapped.
    pub(crate) tag: u64,
    pub(crate) cell: Arc<PteCell>,
}

struct PageTable {
    ptes: BTreeMap<u64, Pte>,
    /// Reason of the last unmap of each IOVA page.
    history: HashMap<u64, UnmapReason>,
}

/// A direct-mapped translation cache, as small hardware IOTLBs are.
pub(crate) struct Iotlb {
    slots: Vec<Option<(u64, Pte)>>,
    mask: u64,
    count: usize,
}

impl Iotlb {
    fn new(entries: usize) -> Self {
        let n = entries.clamp(1, MAX_IOTLB_ENTRIES).next_power_of_two();
        Self {
            slots: vec![None; n],
            mask: n as u64 - 1,
            count: 0,
        }
    }

    fn invalidate_pfn(&mut self, pfn: u64) {
        let s = &mut self.slots[(pfn & self.mask) as usize];
        if s.as_ref().is_some_and(|(p, _)| *p == pfn) {
            *s = None;
            self.count -= 1;
        }
    }

    fn invalidate_range(&mut self, first: u64, pages: u64) {
        if pages >= self.slots.len() as u64 {
            for s in &mut self.slots {
                if s.as_ref()
                    .is_some_and(|(p, _)| *p >= first && *p - first < pages)
                {
                    *s = None;
                    self.count -= 1;
                }
            }
        } else {
            for pfn in first..first + pages {
                self.invalidate_pfn(pfn);
            }
        }
    }

    fn invalidate_all(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.count = 0;
    }
}

pub(crate) struct DomainInner {
    id: DomainId,
    name: String,
    mem: Arc<PhysMemory>,
    pt: Mutex<PageTable>,
    iotlb: Mutex<Iotlb>,
    faults: Mutex<Vec<IommuFaultEvent>>,
    handler: Mutex<Option<FaultHandler>>,
    next_map: AtomicU64,
    mapped_pages: AtomicU64,
}

/// A domain (cheap to clone handle).
#[derive(Clone)]
pub struct IommuDomain(pub(crate) Arc<DomainInner>);

impl fmt::Debug for IommuDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IommuDomain({} {} pages={})",
            self.0.id.0,
            self.0.name,
            self.mapped_pages()
        )
    }
}

fn check_iova(iova: u64, len: u64) -> Result<(), IommuError> {
    if len == 0 {
        return Err(IommuError::ZeroLength { iova });
    }
    if iova.checked_add(len).is_none_or(|e| e > IOVA_LIMIT) {
        return Err(IommuError::OutOfAperture { iova, len });
    }
    Ok(())
}

impl IommuDomain {
    /// The domain id.
    pub fn id(&self) -> DomainId {
        self.0.id
    }

    /// The domain name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Pages mapped in the page table.
    pub fn mapped_pages(&self) -> u64 {
        self.0.mapped_pages.load(Ordering::Acquire)
    }

    /// Entries held by the IOTLB.
    pub fn iotlb_entries(&self) -> usize {
        self.0.iotlb.lock().count
    }

    /// The translations of this domain into `ranges` (for a
    /// [`ReuseEvent`](crate::monitor::ReuseEvent)): one `iommu` entry per
    /// `iommu_map` call with a PTE there, and one `iotlb` entry per `iommu_map`
    /// call whose PTEs are gone but whose IOTLB entries are not.
    pub(crate) fn outstanding(&self, ranges: &[PhysRange]) -> Vec<Outstanding> {
        let hit = |phys: u64| {
            ranges
                .iter()
                .any(|r| phys >= r.start && phys < r.start + r.len)
        };
        let entry = |kind: &'static str, pfn: u64, pte: &Pte| Outstanding {
            kind,
            holder: pte.cell.token.as_ref().map_or_else(
                || format!("domain {} ({})", self.0.id.0, self.0.name),
                |t| t.importer().name().to_owned(),
            ),
            mapping: pte.cell.token.as_ref().map(MappingToken::id),
            detail: format!(
                "domain {} iova {:#x} -> {:#x}, map {}",
                self.0.id.0,
                pfn << PAGE_SHIFT,
                pte.phys,
                pte.cell.map_id
            ),
        };
        let mut out: Vec<Outstanding> = Vec::new();
        let mut seen: Vec<u64> = Vec::new();
        {
            let pt = self.0.pt.lock();
            for (&pfn, pte) in &pt.ptes {
                if hit(pte.phys) && !seen.contains(&pte.cell.map_id) {
                    seen.push(pte.cell.map_id);
                    out.push(entry("iommu", pfn, pte));
                }
            }
        }
        let tlb = self.0.iotlb.lock();
        for (pfn, pte) in tlb.slots.iter().flatten() {
            if !pte.cell.live.load(Ordering::Acquire)
                && hit(pte.phys)
                && !seen.contains(&pte.cell.map_id)
            {
                seen.push(pte.cell.map_id);
                out.push(entry("iotlb", *pfn, pte));
            }
        }
        out
    }

    /// `iommu_map`: maps `[iova, iova + len)` to `[paddr, paddr + len)`.
    /// All three must be page aligned; the physical range must exist; no
    /// IOVA page may already be mapped. Returns the map id. All or nothing.
    pub fn map(&self, iova: u64, paddr: u64, len: u64, perm: IommuPerm) -> Result<u64, IommuError> {
        self.map_tagged(iova, paddr, len, perm, None)
    }

    /// [`map`](Self::map), attributing every access through the new PTEs to
    /// a declared mapping (so drivers need not name it on each access).
    pub fn map_tagged(
        &self,
        iova: u64,
        paddr: u64,
        len: u64,
        perm: IommuPerm,
        token: Option<MappingToken>,
    ) -> Result<u64, IommuError> {
        if (iova | paddr | len) & (PAGE_SIZE - 1) != 0 {
            return Err(IommuError::Unaligned { iova, paddr, len });
        }
        check_iova(iova, len)?;
        if !perm.read && !perm.write {
            return Err(IommuError::NoPerm { iova });
        }
        if self.0.mem.check_range(paddr, len).is_err() {
            return Err(IommuError::BadPhys { paddr, len });
        }
        let pages = len >> PAGE_SHIFT;
        let first = iova >> PAGE_SHIFT;
        let mut pt = self.0.pt.lock();
        if let Some((&pfn, _)) = pt.ptes.range(first..first + pages).next() {
            return Err(IommuError::Overlap {
                iova: pfn << PAGE_SHIFT,
                domain: self.0.id.0,
            });
        }
        let map_id = self.0.next_map.fetch_add(1, Ordering::Relaxed);
        for i in 0..pages {
            let phys = paddr + (i << PAGE_SHIFT);
            pt.ptes.insert(
                first + i,
                Pte {
                    phys,
                    perm,
                    tag: self.0.mem.tag_of(phys).unwrap_or(0),
                    cell: Arc::new(PteCell {
                        live: AtomicBool::new(true),
                        map_id,
                        token: token.clone(),
                    }),
                },
            );
        }
        self.0.mapped_pages.fetch_add(pages, Ordering::AcqRel);
        drop(pt);
        trace_event!(
            trace::IOMMU_MAP,
            "domain={} iova={:#x} paddr={:#x} size={:#x} prot={}{} map={} mapping={}",
            self.0.id.0,
            iova,
            paddr,
            len,
            if perm.read { "r" } else { "" },
            if perm.write { "w" } else { "" },
            map_id,
            token
                .as_ref()
                .map_or_else(|| "-".into(), |t| t.id().0.to_string())
        );
        Ok(map_id)
    }

    /// `iommu_unmap_fast`: removes the PTEs of `[iova, iova + len)` without
    /// touching the IOTLB. Every page must be mapped (else nothing changes).
    /// Returns the bytes unmapped.
    pub fn unmap_fast(&self, iova: u64, len: u64, reason: UnmapReason) -> Result<u64, IommuError> {
        if (iova | len) & (PAGE_SIZE - 1) != 0 {
            return Err(IommuError::Unaligned {
                iova,
                paddr: 0,
                len,
            });
        }
        check_iova(iova, len)?;
        let pages = len >> PAGE_SHIFT;
        let first = iova >> PAGE_SHIFT;
        let mut pt = self.0.pt.lock();
        if let Some(pfn) = (first..first + pages).find(|p| !pt.ptes.contains_key(p)) {
            return Err(IommuError::NotMapped {
                iova: pfn << PAGE_SHIFT,
                domain: self.0.id.0,
            });
        }
        for pfn in first..first + pages {
            if let Some(pte) = pt.ptes.remove(&pfn) {
                pte.cell.live.store(false, Ordering::Release);
            }
            pt.history.insert(pfn, reason);
        }
        self.0.mapped_pages.fetch_sub(pages, Ordering::AcqRel);
        drop(pt);
        trace_event!(
            trace::IOMMU_UNMAP,
            "domain={} iova={:#x} size={:#x} reason={}",
            self.0.id.0,
            iova,
            len,
            match reason {
                UnmapReason::Unmap => "unmap",
                UnmapReason::Revoke => "revoke",
            }
        );
        Ok(len)
    }

    /// `iommu_unmap`: [`unmap_fast`](Self::unmap_fast) then
    /// [`iotlb_sync`](Self::iotlb_sync) of the range.
    pub fn unmap(&self, iova: u64, len: u64, reason: UnmapReason) -> Result<u64, IommuError> {
        let n = self.unmap_fast(iova, len, reason)?;
        self.iotlb_sync(iova, len);
        Ok(n)
    }

    /// `iommu_iotlb_sync` for a range: drops its IOTLB entries. Waits for
    /// accesses using them to finish (they hold the IOTLB lock).
    pub fn iotlb_sync(&self, iova: u64, len: u64) {
        let first = iova >> PAGE_SHIFT;
        let last = iova.saturating_add(len.max(1) - 1) >> PAGE_SHIFT;
        self.0
            .iotlb
            .lock()
            .invalidate_range(first, last - first + 1);
        trace_event!(
            trace::IOTLB_FLUSH,
            "domain={} iova={:#x} size={:#x}",
            self.0.id.0,
            iova,
            len
        );
    }

    /// `iommu_flush_iotlb_all`.
    pub fn flush_iotlb_all(&self) {
        self.0.iotlb.lock().invalidate_all();
        trace_event!(trace::IOTLB_FLUSH, "domain={} all", self.0.id.0);
    }

    /// `iommu_iova_to_phys`: the page table's answer (never the IOTLB's).
    pub fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        let pt = self.0.pt.lock();
        pt.ptes
            .get(&(iova >> PAGE_SHIFT))
            .map(|p| p.phys + (iova & (PAGE_SIZE - 1)))
    }

    /// The hardware path for one access: IOTLB, then a table walk that fills
    /// it. Does not report a fault (the DMA path does).
    pub fn translate(&self, iova: u64, kind: AccessKind) -> Result<Translation, IommuFaultCause> {
        let mut tlb = self.0.iotlb.lock();
        let (pte, hit) = self.translate_locked(&mut tlb, iova, kind)?;
        Ok(Translation {
            phys: pte.phys + (iova & (PAGE_SIZE - 1)),
            perm: pte.perm,
            iotlb_hit: hit,
            stale: !pte.cell.live.load(Ordering::Acquire),
            map_id: pte.cell.map_id,
        })
    }

    pub(crate) fn lock_iotlb(&self) -> MutexGuard<'_, Iotlb> {
        self.0.iotlb.lock()
    }

    /// Translates under the caller's IOTLB guard. Returns the entry and
    /// whether it was an IOTLB hit.
    #[inline]
    pub(crate) fn translate_locked<'g>(
        &self,
        tlb: &'g mut Iotlb,
        iova: u64,
        kind: AccessKind,
    ) -> Result<(&'g Pte, bool), IommuFaultCause> {
        let pfn = iova >> PAGE_SHIFT;
        let slot = (pfn & tlb.mask) as usize;
        let hit = matches!(&tlb.slots[slot], Some((p, _)) if *p == pfn);
        if !hit {
            let pt = self.0.pt.lock();
            match pt.ptes.get(&pfn) {
                None => {
                    return Err(match pt.history.get(&pfn) {
                        None => IommuFaultCause::NeverMapped,
                        Some(UnmapReason::Unmap) => IommuFaultCause::Unmapped,
                        Some(UnmapReason::Revoke) => IommuFaultCause::UnmappedByRevoke,
                    });
                }
                Some(pte) => {
                    let pte = pte.clone();
                    drop(pt);
                    let s = &mut tlb.slots[slot];
                    if s.is_none() {
                        tlb.count += 1;
                    }
                    *s = Some((pfn, pte));
                }
            }
        }
        match &tlb.slots[slot] {
            Some((_, pte)) if pte.perm.allows(kind) => Ok((pte, hit)),
            Some(_) => Err(IommuFaultCause::Permission),
            None => unreachable!("the slot was just filled"),
        }
    }

    /// Records a fault, traces it and asks the handler (called with no lock
    /// held).
    pub(crate) fn report_fault(&self, ev: IommuFaultEvent) -> FaultResponse {
        trace_event!(
            trace::IOMMU_FAULT,
            "domain={} device={} iova={:#x} {}{} cause={:?}",
            self.0.id.0,
            ev.device.map_or_else(|| "-".into(), |d| d.to_string()),
            ev.iova,
            if ev.speculative { "spec-" } else { "" },
            ev.kind.letter(),
            ev.cause
        );
        {
            let mut log = self.0.faults.lock();
            if log.len() < MAX_FAULT_LOG {
                log.push(ev.clone());
            }
        }
        let h = self.0.handler.lock().clone();
        match h {
            Some(h) => h(&ev),
            None => FaultResponse::Abort,
        }
    }

    /// `iommu_set_fault_handler` (`None` removes it).
    pub fn set_fault_handler(&self, h: Option<FaultHandler>) {
        *self.0.handler.lock() = h;
    }

    /// Takes the faults recorded so far (the log keeps at most 4096).
    pub fn take_faults(&self) -> Vec<IommuFaultEvent> {
        std::mem::take(&mut *self.0.faults.lock())
    }
}

pub(crate) struct IommuInner {
    mem: Arc<PhysMemory>,
    domains: Mutex<Vec<IommuDomain>>,
    attached: Box<[Mutex<Option<IommuDomain>>]>,
    iotlb_entries: usize,
}

/// The IOMMU: domain allocation and device attachment (cheap to clone).
#[derive(Clone)]
pub struct Iommu {
    inner: Arc<IommuInner>,
}

impl fmt::Debug for Iommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iommu({} domains)", self.inner.domains.lock().len())
    }
}

impl Iommu {
    pub(crate) fn new(mem: Arc<PhysMemory>, max_devices: usize, iotlb_entries: usize) -> Self {
        Self {
            inner: Arc::new(IommuInner {
                mem,
                domains: Mutex::new(Vec::new()),
                attached: (0..max_devices).map(|_| Mutex::new(None)).collect(),
                iotlb_entries,
            }),
        }
    }

    /// `iommu_domain_alloc`: an empty translating domain.
    pub fn domain_alloc(&self, name: &str) -> IommuDomain {
        let mut ds = self.inner.domains.lock();
        let d = IommuDomain(Arc::new(DomainInner {
            id: DomainId(ds.len() as u32),
            name: name.into(),
            mem: self.inner.mem.clone(),
            pt: Mutex::new(PageTable {
                ptes: BTreeMap::new(),
                history: HashMap::new(),
            }),
            iotlb: Mutex::new(Iotlb::new(self.inner.iotlb_entries)),
            faults: Mutex::new(Vec::new()),
            handler: Mutex::new(None),
            next_map: AtomicU64::new(1),
            mapped_pages: AtomicU64::new(0),
        }));
        ds.push(d.clone());
        d
    }

    /// The domain with this id.
    pub fn domain(&self, id: DomainId) -> Option<IommuDomain> {
        self.inner.domains.lock().get(id.0 as usize).cloned()
    }

    /// Every domain.
    pub fn domains(&self) -> Vec<IommuDomain> {
        self.inner.domains.lock().clone()
    }

    fn slot(&self, dev: DeviceId) -> Result<&Mutex<Option<IommuDomain>>, IommuError> {
        self.inner
            .attached
            .get(dev.0 as usize)
            .ok_or(IommuError::NoSuchDevice(dev.0))
    }

    /// `iommu_attach_device`: the device's DMA by IOVA now translates
    /// through `domain`. Attaching to the domain it is already in is a no-op.
    pub fn attach_device(&self, domain: &IommuDomain, dev: DeviceId) -> Result<(), IommuError> {
        let mut s = self.slot(dev)?.lock();
        match &*s {
            Some(d) if d.id() == domain.id() => return Ok(()),
            Some(d) => {
                return Err(IommuError::AlreadyAttached {
                    device: dev.0,
                    domain: d.id().0,
                });
            }
            None => *s = Some(domain.clone()),
        }
        drop(s);
        trace_event!(
            trace::IOMMU_ATTACH,
            "domain={} device={}",
            domain.id().0,
            dev
        );
        Ok(())
    }

    /// `iommu_detach_device`.
    pub fn detach_device(&self, dev: DeviceId) -> Result<(), IommuError> {
        let d = self
            .slot(dev)?
            .lock()
            .take()
            .ok_or(IommuError::NotAttached { device: dev.0 })?;
        trace_event!(trace::IOMMU_DETACH, "domain={} device={}", d.id().0, dev);
        Ok(())
    }

    /// The domain the device is attached to.
    pub fn device_domain(&self, dev: DeviceId) -> Option<IommuDomain> {
        self.slot(dev).ok().and_then(|s| s.lock().clone())
    }

    /// Pages mapped across all domains.
    pub fn mapped_pages(&self) -> u64 {
        self.inner
            .domains
            .lock()
            .iter()
            .map(IommuDomain::mapped_pages)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 0x1_0000_0000;

    fn iommu() -> (Arc<PhysMemory>, Iommu, IommuDomain) {
        let mem = Arc::new(PhysMemory::new(RAM, 16, 0xe000_0000, 0x10000).unwrap());
        let iommu = Iommu::new(mem.clone(), 4, 64);
        let d = iommu.domain_alloc("test");
        (mem, iommu, d)
    }

    #[test]
    fn map_rejects_bad_input_with_typed_errors_and_changes_nothing() {
        let (_, _, d) = iommu();
        let cases = [
            (d.map(0x1001, RAM, 0x1000, IommuPerm::RW), "unaligned"),
            (d.map(0x1000, RAM + 1, 0x1000, IommuPerm::RW), "unaligned"),
            (d.map(0x1000, RAM, 0x800, IommuPerm::RW), "unaligned"),
            (d.map(0x1000, RAM, 0, IommuPerm::RW), "zero"),
            (
                d.map(IOVA_LIMIT - 0x1000, RAM, 0x2000, IommuPerm::RW),
                "aperture",
            ),
            (d.map(0x1000, 0x5000, 0x1000, IommuPerm::RW), "phys"),
            (
                d.map(0x1000, RAM + 15 * 0x1000, 0x2000, IommuPerm::RW),
                "phys",
            ),
            (
                d.map(
                    0x1000,
                    RAM,
                    0x1000,
                    IommuPerm {
                        read: false,
                        write: false,
                    },
                ),
                "perm",
            ),
        ];
        for (r, what) in cases {
            let e = r.unwrap_err();
            let ok = match what {
                "unaligned" => matches!(e, IommuError::Unaligned { .. }),
                "zero" => matches!(e, IommuError::ZeroLength { .. }),
                "aperture" => matches!(e, IommuError::OutOfAperture { .. }),
                "phys" => matches!(e, IommuError::BadPhys { .. }),
                _ => matches!(e, IommuError::NoPerm { .. }),
            };
            assert!(ok, "{what}: {e}");
        }
        assert_eq!(d.mapped_pages(), 0);
    }

    #[test]
    fn mapping_over_an_existing_range_fails_without_partial_effect() {
        let (_, _, d) = iommu();
        d.map(0x2000, RAM, 0x1000, IommuPerm::RW).unwrap();
        assert_eq!(
            d.map(0x1000, RAM + 0x1000, 0x3000, IommuPerm::RW),
            Err(IommuError::Overlap {
                iova: 0x2000,
                domain: 0
            })
        );
        assert_eq!(d.iova_to_phys(0x1000), None);
        assert_eq!(d.mapped_pages(), 1);
    }

    #[test]
    fn unmapping_what_was_never_mapped_fails_and_keeps_the_rest() {
        let (_, _, d) = iommu();
        d.map(0x1000, RAM, 0x1000, IommuPerm::RW).unwrap();
        assert_eq!(
            d.unmap(0x1000, 0x2000, UnmapReason::Unmap),
            Err(IommuError::NotMapped {
                iova: 0x2000,
                domain: 0
            })
        );
        assert_eq!(d.iova_to_phys(0x1234), Some(RAM + 0x234));
        assert!(matches!(
            d.unmap(0x1000, 0, UnmapReason::Unmap),
            Err(IommuError::ZeroLength { .. })
        ));
        assert_eq!(d.unmap(0x1000, 0x1000, UnmapReason::Unmap), Ok(0x1000));
    }

    #[test]
    fn stale_iotlb_entry_is_used_until_flushed_and_not_after() {
        let (_, _, d) = iommu();
        d.map(0x1000, RAM, 0x1000, IommuPerm::RW).unwrap();
        let t = d.translate(0x1010, AccessKind::Read).unwrap();
        assert!(!t.iotlb_hit && !t.stale && t.phys == RAM + 0x10);
        d.unmap_fast(0x1000, 0x1000, UnmapReason::Revoke).unwrap();
        assert_eq!(d.iova_to_phys(0x1000), None, "the table forgot it");
        let t = d.translate(0x1010, AccessKind::Write).unwrap();
        assert!(t.iotlb_hit && t.stale, "the IOTLB did not: {t:?}");
        d.iotlb_sync(0x1000, 0x1000);
        assert_eq!(
            d.translate(0x1010, AccessKind::Read),
            Err(IommuFaultCause::UnmappedByRevoke)
        );
    }

    #[test]
    fn fault_cause_tells_never_mapped_from_unmapped_and_revoked() {
        let (_, _, d) = iommu();
        assert_eq!(
            d.translate(0x9000, AccessKind::Read),
            Err(IommuFaultCause::NeverMapped)
        );
        d.map(0x1000, RAM, 0x2000, IommuPerm::READ).unwrap();
        d.unmap(0x1000, 0x1000, UnmapReason::Unmap).unwrap();
        d.unmap(0x2000, 0x1000, UnmapReason::Revoke).unwrap();
        assert_eq!(
            d.translate(0x1000, AccessKind::Read),
            Err(IommuFaultCause::Unmapped)
        );
        assert_eq!(
            d.translate(0x2000, AccessKind::Read),
            Err(IommuFaultCause::UnmappedByRevoke)
        );
    }

    #[test]
    fn write_through_a_read_only_mapping_is_a_permission_fault() {
        let (_, _, d) = iommu();
        d.map(0x1000, RAM, 0x1000, IommuPerm::READ).unwrap();
        assert!(d.translate(0x1000, AccessKind::Read).is_ok());
        assert_eq!(
            d.translate(0x1000, AccessKind::Write),
            Err(IommuFaultCause::Permission)
        );
    }

    #[test]
    fn flush_all_and_large_range_sync_empty_the_iotlb() {
        let (_, _, d) = iommu();
        d.map(0, RAM, 16 * PAGE_SIZE, IommuPerm::RW).unwrap();
        for i in 0..16 {
            d.translate(i * PAGE_SIZE, AccessKind::Read).unwrap();
        }
        assert_eq!(d.iotlb_entries(), 16);
        d.iotlb_sync(0, 1 << 30);
        assert_eq!(d.iotlb_entries(), 0);
        d.translate(0, AccessKind::Read).unwrap();
        d.flush_iotlb_all();
        assert_eq!(d.iotlb_entries(), 0);
    }

    #[test]
    fn attach_refuses_a_second_domain_and_detach_needs_an_attachment() {
        let (_, iommu, d) = iommu();
        let d2 = iommu.domain_alloc("other");
        iommu.attach_device(&d, DeviceId(1)).unwrap();
        iommu.attach_device(&d, DeviceId(1)).unwrap();
        assert_eq!(
            iommu.attach_device(&d2, DeviceId(1)),
            Err(IommuError::AlreadyAttached {
                device: 1,
                domain: 0
            })
        );
        assert_eq!(
            iommu.attach_device(&d2, DeviceId(40)),
            Err(IommuError::NoSuchDevice(40))
        );
        iommu.detach_device(DeviceId(1)).unwrap();
        assert_eq!(
            iommu.detach_device(DeviceId(1)),
            Err(IommuError::NotAttached { device: 1 })
        );
        assert!(iommu.device_domain(DeviceId(1)).is_none());
    }
}
