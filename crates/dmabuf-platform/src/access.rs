//! The fabric: routes one page-sized piece of a DMA or CPU access to RAM or
//! to a BAR, asks the monitor's questions about it, and moves the bytes.
//!
//! Both the DMA path ([`crate::dma`]) and the CPU path ([`crate::cpu`]) end
//! here once they hold a physical address and, when they went through a
//! mapping, the page tag that mapping snapshot. The sequence for one page:
//!
//! 1. Find the page: RAM, MMIO or nothing (nothing is an unsupported
//!    request: AER).
//! 2. RAM: the frame must be allocated and carry the snapshot tag, else
//!    `UseAfterFree` (the bytes still move: a use-after-free really reads or
//!    overwrites someone else's data).
//! 3. MMIO: the page's owner decides where the bytes go. A snapshot naming
//!    another owner is `MisdirectedDma` (the bytes go to the new owner). An
//!    owner that is not decoding (decode off, D3hot, reset), a range with no
//!    owner, or a peer the DMA master cannot reach, is `Aer`: reads return
//!    all ones, writes are dropped, and DMA operations fail with `-EIO`.
//! 4. Protocol: the page's protocol words (revoke stages: the revoked word
//!    for every access, the fences-done word for writes) against the
//!    accessor, and the mapping token's `unmapped` flag or a stale IOTLB
//!    entry.
//!
//! Steps 2 and 4 and the recording are skipped when the monitor is off;
//! step 3 still decides what the access does. Every check is an atomic load;
//! the only locks are the page's byte lock (a leaf) and the hazard log when
//! something is recorded.

use crate::iommu::IommuFaultCause;
use crate::memory::{MMIO_OWNER_MASK, PAGE_SIZE, PageKind, PhysMemory, RAM_ALLOCATED};
use crate::monitor::{
    AccessKind, Accessor, AddrSpace, AerReason, Hazard, HazardClass, MappingToken, MonitorInner,
    P_FENCES_DONE, P_REVOKED, Via, flags_of, prot_owner_is,
};
use crate::pci::{F_D3HOT, F_DECODE, F_RESET, F_UNPLUGGED, P2pType, PciInner};
use dmabuf_core::sync::atomic::Ordering;
use dmabuf_core::sync::{Arc, sched};

/// Everything an access needs to reach memory and be judged.
pub(crate) struct Fabric {
    pub(crate) mem: Arc<PhysMemory>,
    pub(crate) pci: Arc<PciInner>,
    pub(crate) mon: Arc<MonitorInner>,
    /// See [`crate::PlatformConfig::unordered_speculation`].
    pub(crate) unordered_speculation: bool,
}

/// Who is accessing, how, and through what it was named.
pub(crate) struct Req<'a> {
    pub(crate) accessor: &'a Accessor,
    pub(crate) kind: AccessKind,
    pub(crate) speculative: bool,
    pub(crate) via: Via,
    pub(crate) space: AddrSpace,
    /// The mapping the caller named, if any.
    pub(crate) mapping: Option<&'a MappingToken>,
}

/// Per-operation state: the monitor switch (read once) and the classes
/// already recorded (one record per class per operation).
pub(crate) struct OpState {
    pub(crate) monitor: bool,
    reported: u8,
}

impl OpState {
    pub(crate) fn new(f: &Fabric) -> Self {
        Self {
            monitor: f.mon.enabled.load(Ordering::Relaxed),
            reported: 0,
        }
    }
}

/// Where a page access lands and what the mapping expected there.
pub(crate) struct Target<'a> {
    pub(crate) phys: u64,
    pub(crate) expected: Option<u64>,
    /// Through an IOTLB entry whose PTE is gone.
    pub(crate) stale: bool,
    /// The token carried by the IOMMU PTE, if any.
    pub(crate) pte_token: Option<&'a MappingToken>,
}

/// The bytes of one page-sized piece.
pub(crate) enum PageIo<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
    Fill(u8, usize),
}

/// The caller's bytes for a whole access.
pub(crate) enum Io<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
    Fill(u8, usize),
}

impl Io<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Io::Read(b) => b.len(),
            Io::Write(d) => d.len(),
            Io::Fill(_, n) => *n,
        }
    }

    pub(crate) fn kind(&self) -> AccessKind {
        match self {
            Io::Read(_) => AccessKind::Read,
            _ => AccessKind::Write,
        }
    }

    pub(crate) fn chunk(&mut self, boff: usize, n: usize) -> PageIo<'_> {
        match self {
            Io::Read(b) => PageIo::Read(&mut b[boff..boff + n]),
            Io::Write(d) => PageIo::Write(&d[boff..boff + n]),
            Io::Fill(b, _) => PageIo::Fill(*b, n),
        }
    }
}

/// What to fill in on a recorded hazard beyond the request.
#[derive(Default)]
struct Extra {
    phys: Option<u64>,
    exporter: Option<String>,
    iommu_fault: Option<IommuFaultCause>,
    aer: Option<AerReason>,
    detail: String,
}

impl Fabric {
    fn record(
        &self,
        req: &Req<'_>,
        st: &mut OpState,
        class: HazardClass,
        issued: u64,
        token: Option<&MappingToken>,
        extra: impl FnOnce() -> Extra,
    ) {
        if st.reported & class.bit() != 0 {
            return;
        }
        st.reported |= class.bit();
        let e = extra();
        self.mon.record(Hazard {
            class,
            accessor: req.accessor.name().to_owned(),
            via: req.via,
            space: req.space,
            addr: issued,
            phys: e.phys,
            kind: req.kind,
            speculative: req.speculative,
            mapping: token.map(MappingToken::id),
            attachment: token.map(MappingToken::attachment),
            exporter: e.exporter,
            iommu_fault: e.iommu_fault,
            aer: e.aer,
            detail: e.detail,
            seq: 0,
            ts_ns: 0,
        });
    }

    /// Records an `IommuFault` hazard (the DMA path calls it once a fault is
    /// final).
    pub(crate) fn fault_hazard(
        &self,
        req: &Req<'_>,
        st: &mut OpState,
        issued: u64,
        cause: IommuFaultCause,
    ) {
        if !st.monitor {
            return;
        }
        self.record(
            req,
            st,
            HazardClass::IommuFault,
            issued,
            req.mapping,
            || Extra {
                iommu_fault: Some(cause),
                detail: match cause {
                    IommuFaultCause::UnmappedByRevoke => "stopped by revoke".into(),
                    IommuFaultCause::NeverMapped => "never mapped".into(),
                    _ => String::new(),
                },
                ..Extra::default()
            },
        );
    }

    fn device_name(&self, owner_field: u64) -> String {
        match owner_field.checked_sub(1) {
            Some(d) => self.pci.name_of(d as u32),
            None => "nobody".into(),
        }
    }

    /// One page-sized access (see the module docs). `Err` is an AER: nothing
    /// moved (reads were filled with all ones).
    #[inline]
    pub(crate) fn page(
        &self,
        req: &Req<'_>,
        st: &mut OpState,
        issued: u64,
        t: Target<'_>,
        io: PageIo<'_>,
    ) -> Result<(), AerReason> {
        // One PCIe transaction: the completer checks it against the
        // fabric's state at one instant, so every check below is one event
        // of the model (no other task runs between the owner, decode and
        // protocol checks of one page). Checked word by word, a revoker's
        // decode-off, reset and stage stamps could each fall between the
        // checks of every page, in ways no transaction has.
        let _one = sched::one_event();
        let token = req.mapping.or(t.pte_token);
        let Some((kind, page)) = self.mem.page(t.phys) else {
            if st.monitor {
                self.record(req, st, HazardClass::Aer, issued, token, || Extra {
                    phys: Some(t.phys),
                    aer: Some(AerReason::Unassigned),
                    detail: "outside the physical address space".into(),
                    ..Extra::default()
                });
            }
            aer_io(io);
            return Err(AerReason::Unassigned);
        };
        let mut aer = None;
        match kind {
            PageKind::Ram(_) => {
                if st.monitor {
                    let cur = page.tag.load(Ordering::Acquire);
                    if cur & RAM_ALLOCATED == 0 || t.expected.is_some_and(|e| e != cur) {
                        self.record(req, st, HazardClass::UseAfterFree, issued, token, || {
                            let owner = self.mem.frame_owner(t.phys).ok().flatten();
                            Extra {
                                phys: Some(t.phys),
                                detail: match owner {
                                    Some(o) => format!("frame now owned by {o}"),
                                    None => "frame is free".into(),
                                },
                                ..Extra::default()
                            }
                        });
                    }
                }
            }
            PageKind::Mmio(_) => {
                let cur = page.tag.load(Ordering::Acquire);
                let owner = cur & MMIO_OWNER_MASK;
                if owner == 0 {
                    let was = t.expected.map_or(0, |e| e & MMIO_OWNER_MASK);
                    let gone = was != 0 && self.pci.flags(was as u32 - 1, F_UNPLUGGED) != 0;
                    aer = Some(if gone {
                        AerReason::Unplugged
                    } else {
                        AerReason::Unassigned
                    });
                } else {
                    if st.monitor
                        && let Some(e) = t.expected
                        && e != cur
                    {
                        self.record(req, st, HazardClass::MisdirectedDma, issued, token, || {
                            Extra {
                                phys: Some(t.phys),
                                detail: format!(
                                    "mapped for {}, now decoded by {}",
                                    self.device_name(e & MMIO_OWNER_MASK),
                                    self.device_name(owner)
                                ),
                                ..Extra::default()
                            }
                        });
                    }
                    let dev = owner as u32 - 1;
                    let f = self
                        .pci
                        .flags(dev, F_UNPLUGGED | F_RESET | F_D3HOT | F_DECODE);
                    aer = if f & F_UNPLUGGED != 0 {
                        Some(AerReason::Unplugged)
                    } else if f & F_RESET != 0 {
                        Some(AerReason::InReset)
                    } else if f & F_D3HOT != 0 {
                        Some(AerReason::D3hot)
                    } else if f & F_DECODE == 0 {
                        Some(AerReason::DecodeOff)
                    } else {
                        None
                    };
                    if aer.is_none()
                        && let Via::Dma { device } = req.via
                        && device.0 != dev
                        && self.pci.p2p(dev, device.0) == P2pType::NotSupported
                    {
                        aer = Some(AerReason::P2pUnreachable);
                    }
                }
                if st.monitor
                    && let Some(reason) = aer
                {
                    self.record(req, st, HazardClass::Aer, issued, token, || Extra {
                        phys: Some(t.phys),
                        aer: Some(reason),
                        detail: format!("BAR page of {}", self.device_name(owner)),
                        ..Extra::default()
                    });
                }
            }
        }
        if st.monitor {
            let prot = page.prot.load(Ordering::Acquire);
            if prot != 0 && !prot_owner_is(prot, req.accessor) && flags_of(prot) & P_REVOKED != 0 {
                self.record(
                    req,
                    st,
                    HazardClass::AccessAfterRevoke,
                    issued,
                    token,
                    || Extra {
                        phys: Some(t.phys),
                        exporter: self.mon.exporter_of(prot),
                        ..Extra::default()
                    },
                );
            }
            // Only a write consults the fences-done word (see
            // `Page::prot_fences`).
            if req.kind == AccessKind::Write {
                let prot = page.prot_fences.load(Ordering::Acquire);
                if prot != 0
                    && !prot_owner_is(prot, req.accessor)
                    && flags_of(prot) & P_FENCES_DONE != 0
                {
                    self.record(
                        req,
                        st,
                        HazardClass::WriteAfterFences,
                        issued,
                        token,
                        || Extra {
                            phys: Some(t.phys),
                            exporter: self.mon.exporter_of(prot),
                            ..Extra::default()
                        },
                    );
                }
            }
            let unmapped = token.is_some_and(MappingToken::is_unmapped);
            if unmapped || t.stale {
                self.record(
                    req,
                    st,
                    HazardClass::AccessAfterUnmap,
                    issued,
                    token,
                    || Extra {
                        phys: Some(t.phys),
                        detail: if unmapped {
                            "mapping declared unmapped".into()
                        } else {
                            "through a stale IOTLB entry".into()
                        },
                        ..Extra::default()
                    },
                );
            }
        }
        if let Some(reason) = aer {
            aer_io(io);
            return Err(reason);
        }
        let off = (t.phys & (PAGE_SIZE - 1)) as usize;
        match io {
            // A speculative read's data is discarded: it moves no bytes, so
            // it takes no byte lock (nothing of it is observable but the
            // checks above).
            PageIo::Read(_) if req.speculative => {}
            PageIo::Read(buf) => page.read(off, buf),
            PageIo::Write(d) => page.write(off, d),
            PageIo::Fill(b, n) => page.fill(off, n, b),
        }
        Ok(())
    }
}

/// An unsupported request: reads complete with all ones, writes vanish.
fn aer_io(io: PageIo<'_>) {
    if let PageIo::Read(buf) = io {
        buf.fill(0xff);
    }
}
