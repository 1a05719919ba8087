//! CPU mappings: an mmap-like window over RAM or BAR pages whose PTEs are
//! filled by the owner's fault handler and zapped on revoke
//! (`vm_area_struct`, `vm_ops->fault`, `vmf_insert_pfn`,
//! `unmap_mapping_range`, `munmap`).
//!
//! # States of one page of a mapping
//!
//! | PTE | a CPU access |
//! |---|---|
//! | empty | calls the fault handler (`cpu_fault`), which installs a PTE with [`CpuMapping::insert_pfn`] or answers [`VmFault::Sigbus`]; then retries |
//! | present | reaches the page; classified by the monitor like any access (a PTE to a freed frame is a `UseAfterFree`, to a BAR with decode off an `Aer` that reads all ones) |
//! | zapped ([`CpuMapping::zap`]) | empty again: the next access faults, and a revoked owner answers SIGBUS, a clean [`CpuError::Sigbus`], not a hazard |
//!
//! After [`CpuMapping::munmap`] every access is [`CpuError::Unmapped`].
//!
//! # The fault/zap race (docs/hazards.md, hazard 13)
//!
//! The handler must check its revoke state and insert the PFN under the same
//! lock the revoke path holds while it sets the state and zaps; otherwise a
//! zap can run between the check and the insert and leave a PTE to revoked
//! memory. That is how the kernel's VFIO `memory_lock` works, and what this
//! model lets a driver get right or wrong.
//!
//! # Lock rules
//!
//! The mapping's PTE lock is held while one page is accessed (so a zap waits
//! for an access in flight, as a TLB shootdown does), then page byte lock.
//! The fault handler is called with no platform lock held; `insert_pfn` and
//! `zap` take the PTE lock.

use crate::access::{Fabric, Io, OpState, Req, Target};
use crate::memory::{PAGE_SHIFT, PAGE_SIZE, page_chunks};
use crate::monitor::{Accessor, AddrSpace, MappingToken, Outstanding, PhysRange, Via};
use crate::trace;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::lockdep;
use dmabuf_core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_core::trace_event;
use std::fmt;

/// How many times one access re-faults before giving up (a handler that
/// reports success without inserting a PTE, or a zap racing every retry).
const MAX_FAULT_RETRIES: u32 = 8;

/// The largest CPU mapping, in pages (4 GiB).
pub const MAX_MAPPING_PAGES: u64 = 1 << 20;

/// A fault handler's failure (`VM_FAULT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFault {
    /// `VM_FAULT_SIGBUS`: the memory is gone or revoked.
    Sigbus,
    /// `VM_FAULT_OOM`.
    Oom,
}

/// The owner's fault handler (`vm_ops->fault`): install the PTE for
/// `pgoff` with [`CpuMapping::insert_pfn`], or fail.
pub trait CpuFaultHandler: Send + Sync {
    /// Handles a fault on page `pgoff` of `vma`.
    fn fault(&self, vma: &CpuMapping, pgoff: u64) -> Result<(), VmFault>;
}

impl<F> CpuFaultHandler for F
where
    F: Fn(&CpuMapping, u64) -> Result<(), VmFault> + Send + Sync,
{
    fn fault(&self, vma: &CpuMapping, pgoff: u64) -> Result<(), VmFault> {
        self(vma, pgoff)
    }
}

/// Errors of CPU mappings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// The fault handler answered SIGBUS.
    #[error("SIGBUS at offset {offset:#x} of {vma}")]
    Sigbus {
        /// Mapping name.
        vma: String,
        /// Offset of the access.
        offset: u64,
    },
    /// The fault handler is out of memory.
    #[error("fault handler out of memory at offset {offset:#x} of {vma}")]
    Oom {
        /// Mapping name.
        vma: String,
        /// Offset of the access.
        offset: u64,
    },
    /// The access leaves the mapping (SIGSEGV).
    #[error("offset {offset:#x}+{len:#x} outside {vma} ({size:#x} bytes)")]
    OutOfRange {
        /// Mapping name.
        vma: String,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Mapping size.
        size: u64,
    },
    /// The mapping was unmapped (SIGSEGV).
    #[error("{vma} is unmapped")]
    Unmapped {
        /// Mapping name.
        vma: String,
    },
    /// The handler keeps succeeding without a PTE appearing.
    #[error("page {pgoff} of {vma} still not present after {MAX_FAULT_RETRIES} faults")]
    FaultLoop {
        /// Mapping name.
        vma: String,
        /// Page.
        pgoff: u64,
    },
    /// `insert_pfn` with a page index outside the mapping or a physical
    /// address that is unaligned or outside the address space.
    #[error("cannot insert pfn {phys:#x} at page {pgoff} of {vma}")]
    BadInsert {
        /// Mapping name.
        vma: String,
        /// Page.
        pgoff: u64,
        /// Physical address.
        phys: u64,
    },
    /// A mapping of zero pages.
    #[error("empty mapping {0}")]
    Empty(String),
    /// A mapping larger than [`MAX_MAPPING_PAGES`].
    #[error("mapping {vma} of {pages} pages is larger than {MAX_MAPPING_PAGES} pages")]
    TooLarge {
        /// Mapping name.
        vma: String,
        /// Pages asked for.
        pages: u64,
    },
}

impl AsErrno for CpuError {
    fn errno(&self) -> Errno {
        match self {
            CpuError::Sigbus { .. } => errno::EFAULT,
            CpuError::Oom { .. } => errno::ENOMEM,
            CpuError::OutOfRange { .. } | CpuError::Unmapped { .. } => errno::EFAULT,
            CpuError::FaultLoop { .. } => errno::EFAULT,
            CpuError::BadInsert { .. } | CpuError::Empty(_) => errno::EINVAL,
            CpuError::TooLarge { .. } => errno::ENOMEM,
        }
    }
}

#[derive(Clone, Copy)]
struct CpuPte {
    phys: u64,
    tag: u64,
}

pub(crate) struct VmaInner {
    id: u64,
    name: String,
    accessor: Accessor,
    ptes: Mutex<Vec<Option<CpuPte>>>,
    handler: Arc<dyn CpuFaultHandler>,
    token: Option<MappingToken>,
    closed: AtomicBool,
    resident: AtomicU64,
    fabric: Arc<Fabric>,
}

/// A CPU mapping (cheap to clone handle).
#[derive(Clone)]
pub struct CpuMapping(Arc<VmaInner>);

impl fmt::Debug for CpuMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CpuMapping({} {} pages={} resident={})",
            self.0.id,
            self.0.name,
            self.pages(),
            self.resident_pages()
        )
    }
}

impl CpuMapping {
    pub(crate) fn new(
        fabric: Arc<Fabric>,
        id: u64,
        name: &str,
        accessor: Accessor,
        pages: u64,
        handler: Arc<dyn CpuFaultHandler>,
        token: Option<MappingToken>,
    ) -> Result<Self, CpuError> {
        if pages == 0 {
            return Err(CpuError::Empty(name.into()));
        }
        if pages > MAX_MAPPING_PAGES {
            return Err(CpuError::TooLarge {
                vma: name.into(),
                pages,
            });
        }
        Ok(Self(Arc::new(VmaInner {
            id,
            name: name.into(),
            accessor,
            ptes: Mutex::new(vec![None; pages as usize]),
            handler,
            token,
            closed: AtomicBool::new(false),
            resident: AtomicU64::new(0),
            fabric,
        })))
    }

    pub(crate) fn inner(&self) -> &Arc<VmaInner> {
        &self.0
    }

    pub(crate) fn from_inner(v: Arc<VmaInner>) -> Self {
        Self(v)
    }

    /// The mapping id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The mapping name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Who accesses through it.
    pub fn accessor(&self) -> &Accessor {
        &self.0.accessor
    }

    /// Size in pages.
    pub fn pages(&self) -> u64 {
        self.0.ptes.lock().len() as u64
    }

    /// Present PTEs into `ranges` (for a
    /// [`ReuseEvent`](crate::monitor::ReuseEvent)): one `cpu` entry for the
    /// first such page.
    pub(crate) fn outstanding(&self, ranges: &[PhysRange]) -> Option<Outstanding> {
        if self.is_unmapped() && self.resident_pages() == 0 {
            return None;
        }
        let ptes = self.0.ptes.lock();
        let (pgoff, pte) = ptes.iter().enumerate().find_map(|(i, p)| {
            p.filter(|p| {
                ranges
                    .iter()
                    .any(|r| p.phys >= r.start && p.phys < r.start + r.len)
            })
            .map(|p| (i, p))
        })?;
        Some(Outstanding {
            kind: "cpu",
            holder: self.0.accessor.name().to_owned(),
            mapping: self.0.token.as_ref().map(MappingToken::id),
            detail: format!(
                "vma {} ({}) page {pgoff} -> {:#x}",
                self.0.id, self.0.name, pte.phys
            ),
        })
    }

    /// PTEs present.
    pub fn resident_pages(&self) -> u64 {
        self.0.resident.load(Ordering::Acquire)
    }

    /// `vmf_insert_pfn`: installs the PTE of page `pgoff` (replacing one
    /// already there). The page's tag is snapshot now.
    pub fn insert_pfn(&self, pgoff: u64, phys: u64) -> Result<(), CpuError> {
        let bad = || CpuError::BadInsert {
            vma: self.0.name.clone(),
            pgoff,
            phys,
        };
        if !phys.is_multiple_of(PAGE_SIZE) {
            return Err(bad());
        }
        let tag = self.0.fabric.mem.tag_of(phys).ok_or_else(bad)?;
        let mut ptes = self.0.ptes.lock();
        let slot = ptes.get_mut(pgoff as usize).ok_or_else(bad)?;
        if slot.is_none() {
            self.0.resident.fetch_add(1, Ordering::AcqRel);
        }
        *slot = Some(CpuPte { phys, tag });
        drop(ptes);
        trace_event!(
            trace::CPU_INSERT_PFN,
            "vma={} pgoff={} pfn={:#x}",
            self.0.name,
            pgoff,
            phys >> PAGE_SHIFT
        );
        Ok(())
    }

    /// `unmap_mapping_range`: zaps `npages` PTEs from `pgoff` (clipped to
    /// the mapping). Waits for an access in flight on those pages. Returns
    /// how many were present.
    pub fn zap(&self, pgoff: u64, npages: u64) -> u64 {
        let mut ptes = self.0.ptes.lock();
        let len = ptes.len() as u64;
        let start = pgoff.min(len);
        let end = pgoff.saturating_add(npages).min(len);
        let mut n = 0;
        for p in &mut ptes[start as usize..end as usize] {
            if p.take().is_some() {
                n += 1;
            }
        }
        self.0.resident.fetch_sub(n, Ordering::AcqRel);
        drop(ptes);
        trace_event!(
            trace::CPU_ZAP,
            "vma={} pgoff={} npages={} zapped={}",
            self.0.name,
            pgoff,
            npages,
            n
        );
        n
    }

    /// Zaps every PTE.
    pub fn zap_all(&self) -> u64 {
        self.zap(0, u64::MAX)
    }

    /// `munmap`: zaps everything; later accesses are [`CpuError::Unmapped`].
    pub fn munmap(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.zap_all();
    }

    /// Whether [`munmap`](Self::munmap) was called.
    pub fn is_unmapped(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// A CPU load of `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), CpuError> {
        self.access(offset, Io::Read(buf))
    }

    /// A CPU store of `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), CpuError> {
        self.access(offset, Io::Write(data))
    }

    fn access(&self, offset: u64, mut io: Io<'_>) -> Result<(), CpuError> {
        let v = &*self.0;
        let len = io.len();
        let kind = io.kind();
        if self.is_unmapped() {
            return Err(CpuError::Unmapped {
                vma: v.name.clone(),
            });
        }
        let size = self.pages() * PAGE_SIZE;
        if offset.checked_add(len as u64).is_none_or(|e| e > size) {
            return Err(CpuError::OutOfRange {
                vma: v.name.clone(),
                offset,
                len: len as u64,
                size,
            });
        }
        let fabric = &*v.fabric;
        let mut st = OpState::new(fabric);
        let req = Req {
            accessor: &v.accessor,
            kind,
            speculative: false,
            via: Via::Cpu { vma: v.id },
            space: AddrSpace::Cpu { vma: v.id },
            mapping: v.token.as_ref(),
        };
        for (pa, off, n, boff) in page_chunks(offset, len) {
            let pgoff = pa >> PAGE_SHIFT;
            let mut faults = 0;
            loop {
                let ptes = v.ptes.lock();
                if let Some(pte) = ptes[pgoff as usize] {
                    let t = Target {
                        phys: pte.phys + off as u64,
                        expected: Some(pte.tag),
                        stale: false,
                        pte_token: None,
                    };
                    // An AER on a CPU access reads all ones and drops the
                    // store; the load itself completes.
                    let _ = fabric.page(&req, &mut st, pa + off as u64, t, io.chunk(boff, n));
                    break;
                }
                drop(ptes);
                if self.is_unmapped() {
                    return Err(CpuError::Unmapped {
                        vma: v.name.clone(),
                    });
                }
                faults += 1;
                if faults > MAX_FAULT_RETRIES {
                    return Err(CpuError::FaultLoop {
                        vma: v.name.clone(),
                        pgoff,
                    });
                }
                trace_event!(
                    trace::CPU_FAULT,
                    "vma={} pgoff={} {}",
                    v.name,
                    pgoff,
                    kind.letter()
                );
                // The kernel runs `vm_ops->fault` with `mmap_lock` held for
                // read: every lock the handler takes (VFIO's memory_lock, a
                // reservation object) is ordered after it, and the validator
                // should see that order.
                lockdep::lock_acquired(
                    lockdep::ClassId::MMAP_LOCK,
                    "do_user_addr_fault: mmap_read_lock",
                );
                let r = v.handler.fault(self, pgoff);
                lockdep::lock_released(lockdep::ClassId::MMAP_LOCK);
                r.map_err(|e| match e {
                    VmFault::Sigbus => CpuError::Sigbus {
                        vma: v.name.clone(),
                        offset: pa + off as u64,
                    },
                    VmFault::Oom => CpuError::Oom {
                        vma: v.name.clone(),
                        offset: pa + off as u64,
                    },
                })?;
            }
        }
        Ok(())
    }
}

/// A fault handler that maps a fixed list of physical pages, one per page
/// of the mapping, and answers SIGBUS beyond it.
#[derive(Clone, Debug)]
pub struct FixedPages(pub Vec<u64>);

impl CpuFaultHandler for FixedPages {
    fn fault(&self, vma: &CpuMapping, pgoff: u64) -> Result<(), VmFault> {
        let phys = *self.0.get(pgoff as usize).ok_or(VmFault::Sigbus)?;
        vma.insert_pfn(pgoff, phys).map_err(|_| VmFault::Sigbus)
    }
}
