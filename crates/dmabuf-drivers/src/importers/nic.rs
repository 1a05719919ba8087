//! An RDMA NIC (mlx5-like): a DMA engine that executes posted work
//! requests against memory regions, and the NIC's own translation table
//! (the MTT/mkey PAS) that maps an MR's virtual addresses to bus addresses.
//!
//! The translation table is modelled as an IOMMU domain the NIC driver owns
//! (not a DMA-API domain: `dma_map_*` still gives the NIC physical
//! addresses). That makes the hardware behaviours the thread relies on
//! observable:
//!
//! | driver action | here | what the hardware does afterwards |
//! |---|---|---|
//! | UMR update with `ZAP` (mlx5 invalidate, revoke) | [`Nic::zap`]: unmap + IOTLB sync | the next access faults |
//! | page fault (`pagefault_dmabuf_mr`) | the domain's fault handler calls the MR's [`PageFault`] | retried once if the MR mapped the page, else the work request fails |
//! | UMR update of the PAS | [`Nic::map_mr`] | accesses reach the mapped pages, attributed to the dma-buf mapping |
//!
//! Once [`Nic::zap`] returns, no access through the zapped translation is in
//! progress or can start (the IOTLB sync waits for accesses in flight).
//!
//! # Lock rules
//!
//! The MR table lock is a leaf. Fault handlers run on the engine thread
//! with no platform lock held; they may take a reservation lock.

use super::{ImportError, Job, Stage, job_ops, read_page};
use crate::host::Host;
use crate::job::submit_after;
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::sync::atomic::{AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::{Fence, FenceContext};
use dmabuf_platform::{
    Accessor, DmaAddr, DmaEngine, DmaJob, EngineConfig, FaultResponse, IommuDomain, IommuPerm,
    MappingToken, PAGE_SIZE, PciDevice, UnmapReason,
};

/// The first MR virtual address a NIC hands out.
const MR_VA_BASE: u64 = 0x7f00_0000_0000;

/// An MR's page-fault handler.
pub trait PageFault: Send + Sync {
    /// The NIC faulted at `va`; map the MR and answer `Retry`, or `Abort`.
    fn page_fault(&self, va: u64) -> FaultResponse;
}

struct MrSlot {
    va: u64,
    len: u64,
    handler: Weak<dyn PageFault>,
}

struct NicInner {
    pdev: PciDevice,
    engine: DmaEngine,
    mtt: IommuDomain,
    fctx: FenceContext,
    mrs: Mutex<Vec<MrSlot>>,
    next_va: AtomicU64,
}

/// A NIC (cheap to clone handle).
#[derive(Clone)]
pub struct Nic(Arc<NicInner>);

impl std::fmt::Debug for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nic({})", self.0.pdev.name())
    }
}

fn dev_err(e: &impl AsErrno, what: String) -> ImportError {
    ImportError::Device {
        stage: Stage::Register,
        errno: e.errno(),
        what,
    }
}

impl Nic {
    /// Brings up the NIC `pdev`: engine, translation table, fault handler.
    pub fn new(host: &Host, pdev: PciDevice) -> Result<Self, ImportError> {
        let name = pdev.name().to_owned();
        let engine = host
            .platform()
            .dma_engine(
                pdev.id(),
                EngineConfig::threaded(format!("{name}-qp")).with_accessor(Accessor::new(&name)),
            )
            .map_err(|e| dev_err(&e, e.to_string()))?;
        let mtt = host.platform().iommu().domain_alloc(&format!("{name}-mtt"));
        if let Err(e) = host.platform().iommu().attach_device(&mtt, pdev.id()) {
            engine.stop();
            return Err(dev_err(&e, e.to_string()));
        }
        let nic = Nic(Arc::new(NicInner {
            pdev,
            engine,
            mtt: mtt.clone(),
            fctx: FenceContext::named("rdma", &name),
            mrs: Mutex::new(Vec::new()),
            next_va: AtomicU64::new(MR_VA_BASE),
        }));
        let weak = Arc::downgrade(&nic.0);
        mtt.set_fault_handler(Some(Arc::new(move |ev| {
            let Some(n) = weak.upgrade() else {
                return FaultResponse::Abort;
            };
            let h = n
                .mrs
                .lock()
                .iter()
                .find(|m| ev.iova >= m.va && ev.iova - m.va < m.len)
                .and_then(|m| m.handler.upgrade());
            match h {
                Some(h) => h.page_fault(ev.iova),
                None => FaultResponse::Abort,
            }
        })));
        Ok(nic)
    }

    /// The PCI device.
    pub fn pci_device(&self) -> &PciDevice {
        &self.0.pdev
    }

    /// Reserves `len` bytes of MR virtual address space.
    pub fn alloc_va(&self, len: u64) -> u64 {
        let len = len.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        self.0.next_va.fetch_add(len + PAGE_SIZE, Ordering::Relaxed)
    }

    /// Routes faults in `[va, va + len)` to `handler` (on-demand paging).
    pub fn set_mr_fault_handler(&self, va: u64, len: u64, handler: Weak<dyn PageFault>) {
        let mut mrs = self.0.mrs.lock();
        mrs.retain(|m| m.va != va);
        mrs.push(MrSlot { va, len, handler });
    }

    /// Stops routing faults of the MR at `va`.
    pub fn clear_mr_fault_handler(&self, va: u64) {
        self.0.mrs.lock().retain(|m| m.va != va);
    }

    /// Installs the MR's translations: page `i` of `[va, ...)` goes to the
    /// `i`-th page of the sg table, attributed to `token`.
    pub fn map_mr(
        &self,
        va: u64,
        entries: &[(u64, u64)],
        token: &MappingToken,
    ) -> Result<(), ImportError> {
        let mut off = 0;
        for &(addr, len) in entries {
            if crate::dma_api::is_iova(addr) {
                self.zap(va, off, UnmapReason::Unmap);
                return Err(ImportError::Device {
                    stage: Stage::Map,
                    errno: errno::EINVAL,
                    what: format!("sg entry {addr:#x} is an IOVA of another domain"),
                });
            }
            if let Err(e) =
                self.0
                    .mtt
                    .map_tagged(va + off, addr, len, IommuPerm::RW, Some(token.clone()))
            {
                self.zap(va, off, UnmapReason::Unmap);
                return Err(ImportError::Device {
                    stage: Stage::Map,
                    errno: e.errno(),
                    what: e.to_string(),
                });
            }
            off += len;
        }
        Ok(())
    }

    /// Removes the translations of `[va, va + len)` and waits for accesses
    /// using them (a UMR `ZAP`). Pages already unmapped are skipped.
    pub fn zap(&self, va: u64, len: u64, reason: UnmapReason) {
        let mut p = va;
        while p < va + len {
            if self.0.mtt.iova_to_phys(p).is_some() {
                let _ = self.0.mtt.unmap_fast(p, PAGE_SIZE, reason);
            }
            p += PAGE_SIZE;
        }
        if len > 0 {
            self.0.mtt.iotlb_sync(va, len);
        }
    }

    /// Posts a work request on the MR at `va` of `pages` pages: write
    /// `pattern` to page `page`, then read the next page; behind `gate`
    /// when given.
    pub fn post(
        &self,
        va: u64,
        pages: u64,
        page: u64,
        pattern: u8,
        gate: Option<Fence>,
        label: &str,
    ) -> Job {
        let at = DmaAddr::Iova(va + page * PAGE_SIZE);
        let from = DmaAddr::Iova(va + read_page(page, pages) * PAGE_SIZE);
        let (f, h) = self.0.fctx.create();
        // An RDMA work request's completion is the driver's own; its page
        // faults are resolved from a work item, not a fence signalling path.
        let job = DmaJob::new(job_ops(at.into(), from.into(), pattern))
            .with_label(label)
            .with_private_fence();
        Job::new(submit_after(
            &self.0.engine,
            gate.into_iter().collect(),
            job,
            f,
            h,
        ))
    }

    /// Stops the engine.
    pub fn shutdown(&self) {
        self.0.engine.stop();
        self.0.mtt.set_fault_handler(None);
    }
}
