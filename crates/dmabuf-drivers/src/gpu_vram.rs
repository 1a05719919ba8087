//! A GPU exporting buffer objects that live in its VRAM (a BAR) or in
//! system memory, as amdgpu and xe do (`amdgpu_dma_buf.c`,
//! `xe_dma_buf.c`, TTM moves): a *dynamic* exporter.
//!
//! # Buffer states
//!
//! | placement | pinned | map gives | may move |
//! |---|---|---|---|
//! | VRAM | no | peer-to-peer importers: bus addresses (same switch) or IOVAs (through the host bridge); others: the buffer first moves to system memory | yes: eviction, migration |
//! | VRAM | yes (only if every attachment is peer-to-peer) | as above; non-p2p map → `EBUSY` | no |
//! | system | no | the frames, through the importer's DMA API | yes |
//! | system | yes | the frames | no |
//!
//! # A move (eviction under pressure, or migration back to VRAM)
//!
//! 1. With the reservation lock held: refuse if pinned (`EBUSY`).
//! 2. Allocate the destination (VRAM pages or RAM frames); on failure
//!    nothing has changed.
//! 3. `dma_buf_invalidate_mappings`: importers drop their mappings; dynamic
//!    importers publish fences for the access they cannot stop at once.
//! 4. Collect every fence of the object (`Bookkeep` and below): the copy
//!    may not read the old location before the importers' work is done.
//! 5. Create the move fence and add it to the object as `Kernel`: every
//!    importer (the core for static ones, the importer itself for dynamic
//!    ones) waits for `Kernel` fences before touching the new location.
//! 6. Queue the copy on the GPU's copy engine behind the fences of step 4
//!    ([`crate::job::submit_after`]): the move is pipelined, the caller
//!    does not wait.
//! 7. The buffer's placement is the destination from now on; the old
//!    location is freed when the move fence signals.
//!
//! `pin` (lock held): if any attachment is not peer-to-peer the buffer is
//! moved to system memory first (amdgpu/xe 7.1), then pinned. `attach`
//! clears `peer2peer` when `pci_p2pdma_distance` says the importer cannot
//! reach the VRAM BAR.
//!
//! # Lock rules
//!
//! Reservation lock → the buffer's state lock (a leaf: never held while
//! calling `invalidate_mappings`, whose importer callbacks may unmap, which
//! takes it) → the VRAM allocator lock. The copy engine's fence callbacks
//! take the allocator lock and the frame allocator only. The lock validator
//! sees both as classes ([`BO_STATE_CLASS`], [`VRAM_MGR_CLASS`]): the
//! allocator lock is taken inside a fence signalling section (the move
//! fence's callback), so holding it across a fence wait would be reported.

use crate::dma_api::{self, DmaApiError};
use crate::host::{ClassMutex, Host, LockClass};
use crate::job::submit_after;
use dmabuf_core::dma_buf::{
    self, Attachment, DmaBuf, DmaBufError, DmaBufOps, DmaBufRef, DmaDirection, ExportInfo, PinOps,
    SgEntry, SgTable,
};
use dmabuf_core::dma_resv::{ResvGuard, Usage};
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::{Fence, FenceContext, trace_event};
use dmabuf_platform::{
    Accessor, Bar, DeviceId, DmaAddr, DmaEngine, DmaError, DmaJob, DmaOp, EngineConfig, ExporterId,
    IommuPerm, MemoryError, MonitorError, P2pType, PAGE_SIZE, PciDevice, PhysRange, ReuseKind,
};
use std::any::Any;
use std::fmt;

/// The exporter name of VRAM buffer objects.
pub const EXP_NAME: &str = "gpu_vram";

/// The lock class of the VRAM manager (`amdgpu_vram_mgr.lock`, xe's
/// `ttm_vram_mgr` lock): taken under the reservation lock to allocate and
/// from the move fence's callback to free, so it must never be held while
/// waiting for a fence.
pub static VRAM_MGR_CLASS: LockClass = LockClass::new("amdgpu_vram_mgr lock");

/// The lock class of a buffer object's placement state (a leaf under the
/// reservation lock).
pub static BO_STATE_CLASS: LockClass = LockClass::new("ttm_buffer_object placement");

/// Errors of the VRAM exporter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VramError {
    /// The device has no BAR 0 to use as VRAM.
    #[error("{device} has no VRAM BAR")]
    NoVramBar {
        /// Device name.
        device: String,
    },
    /// Zero pages asked for.
    #[error("a buffer object of zero pages")]
    ZeroSize,
    /// Not enough free VRAM pages.
    #[error("out of VRAM: {wanted} pages wanted, {free} free")]
    NoVram {
        /// Pages wanted.
        wanted: u64,
        /// Pages free.
        free: u64,
    },
    /// Not enough RAM frames.
    #[error("out of system memory: {0}")]
    NoMemory(MemoryError),
    /// The buffer is pinned and cannot move.
    #[error("buffer ino {ino} is pinned and cannot move")]
    Pinned {
        /// The buffer.
        ino: u64,
    },
    /// The copy engine could not be created.
    #[error("copy engine: {0}")]
    Engine(DmaError),
    /// The dma-buf core refused.
    #[error(transparent)]
    DmaBuf(#[from] DmaBufError),
    /// The monitor refused a registration.
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
}

impl AsErrno for VramError {
    fn errno(&self) -> Errno {
        match self {
            VramError::NoVramBar { .. } => errno::ENODEV,
            VramError::ZeroSize => errno::EINVAL,
            VramError::NoVram { .. } | VramError::NoMemory(_) => errno::ENOMEM,
            VramError::Pinned { .. } => errno::EBUSY,
            VramError::Engine(e) => e.errno(),
            VramError::DmaBuf(e) => e.errno(),
            VramError::Monitor(e) => e.errno(),
        }
    }
}

impl From<VramError> for DmaBufError {
    fn from(e: VramError) -> Self {
        DmaBufError::errno(e.errno(), e.to_string())
    }
}

/// Where a buffer lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// VRAM pages (indices into the VRAM BAR).
    Vram(Vec<u64>),
    /// RAM frames (physical addresses).
    System(Vec<u64>),
}

/// Which domain a move goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// VRAM.
    Vram,
    /// System memory (GTT).
    System,
}

struct VramInner {
    host: Host,
    pdev: PciDevice,
    bar: Bar,
    engine: DmaEngine,
    fctx: FenceContext,
    exporter: ExporterId,
    /// Free VRAM pages, class [`VRAM_MGR_CLASS`].
    free: ClassMutex<Vec<bool>>,
    bos: Mutex<Vec<Weak<VramBo>>>,
    moves: AtomicU64,
}

impl VramInner {
    fn alloc_vram(&self, n: u64) -> Result<Vec<u64>, VramError> {
        let mut free = self.free.lock("amdgpu_vram_mgr_new");
        let avail = free.iter().filter(|f| **f).count() as u64;
        if avail < n {
            return Err(VramError::NoVram {
                wanted: n,
                free: avail,
            });
        }
        let mut out = Vec::with_capacity(n as usize);
        for (i, f) in free.iter_mut().enumerate() {
            if out.len() as u64 == n {
                break;
            }
            if *f {
                *f = false;
                out.push(i as u64);
            }
        }
        Ok(out)
    }

    fn free_placement(&self, p: &Placement) {
        match p {
            Placement::Vram(pages) => {
                {
                    let mut free = self.free.lock("amdgpu_vram_mgr_del");
                    for &i in pages {
                        if let Some(f) = free.get_mut(i as usize) {
                            *f = true;
                        }
                    }
                }
                // VRAM pages are the driver's own allocator's: tell the
                // platform they may now be handed to another object.
                let ranges: Vec<PhysRange> = pages
                    .iter()
                    .map(|i| PhysRange::new(self.bar.addr + i * PAGE_SIZE, PAGE_SIZE))
                    .collect();
                self.host
                    .platform()
                    .note_reuse(ReuseKind::Free, self.pdev.name(), &ranges);
            }
            Placement::System(frames) => {
                let _ = self.host.platform().memory().free_frames(frames);
            }
        }
    }

    fn page_addrs(&self, p: &Placement) -> Vec<u64> {
        match p {
            Placement::Vram(pages) => pages
                .iter()
                .map(|i| self.bar.addr + i * PAGE_SIZE)
                .collect(),
            Placement::System(frames) => frames.clone(),
        }
    }
}

/// The exporting GPU (cheap to clone handle).
#[derive(Clone)]
pub struct GpuVram(Arc<VramInner>);

impl fmt::Debug for GpuVram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuVram({})", self.0.pdev.name())
    }
}

impl GpuVram {
    /// Drives `pdev`, whose BAR 0 is its VRAM; starts its copy engine.
    pub fn new(host: &Host, pdev: PciDevice) -> Result<Self, VramError> {
        let bar = pdev.bar(0).ok_or_else(|| VramError::NoVramBar {
            device: pdev.name().to_owned(),
        })?;
        let name = format!("gpu-vram:{}", pdev.name());
        let owner = Accessor::new(&name);
        let exporter = host.monitor().register_exporter(&name, &owner)?;
        let engine = host
            .platform()
            .dma_engine(
                pdev.id(),
                EngineConfig::threaded(format!("{}-sdma", pdev.name())).with_accessor(owner),
            )
            .map_err(VramError::Engine)?;
        let pages = (bar.size / PAGE_SIZE) as usize;
        Ok(Self(Arc::new(VramInner {
            host: host.clone(),
            pdev,
            bar,
            engine,
            fctx: FenceContext::named("gpu_vram", "ttm-move"),
            exporter,
            free: ClassMutex::new(&VRAM_MGR_CLASS, vec![true; pages]),
            bos: Mutex::new(Vec::new()),
            moves: AtomicU64::new(0),
        })))
    }

    /// The monitor's id of this exporter.
    pub fn exporter_id(&self) -> ExporterId {
        self.0.exporter
    }

    /// The GPU.
    pub fn pci_device(&self) -> &PciDevice {
        &self.0.pdev
    }

    /// Moves queued so far.
    pub fn moves(&self) -> u64 {
        self.0.moves.load(Ordering::Relaxed)
    }

    /// Free VRAM pages.
    pub fn vram_free(&self) -> u64 {
        self.0
            .free
            .lock("amdgpu_vram_mgr usage")
            .iter()
            .filter(|f| **f)
            .count() as u64
    }

    /// Creates a buffer object of `pages` pages in VRAM and exports it.
    pub fn create_bo(&self, pages: u64, fd_flags: u32) -> Result<DmaBuf, VramError> {
        if pages == 0 {
            return Err(VramError::ZeroSize);
        }
        let vram = self.0.alloc_vram(pages)?;
        let bo = Arc::new_cyclic(|me| VramBo {
            me: me.clone(),
            dev: Arc::downgrade(&self.0),
            host: self.0.host.clone(),
            pages,
            st: ClassMutex::new(
                &BO_STATE_CLASS,
                BoState {
                    placement: Placement::Vram(vram.clone()),
                    pins: 0,
                    last_move: None,
                },
            ),
            buf: Mutex::new(None),
        });
        let buf = match dma_buf::export(ExportInfo {
            exp_name: EXP_NAME.into(),
            size: pages * PAGE_SIZE,
            flags: fd_flags,
            resv: None,
            ops: bo.clone(),
        }) {
            Ok(b) => b,
            Err(e) => {
                self.0.free_placement(&Placement::Vram(vram));
                return Err(e.into());
            }
        };
        *bo.buf.lock() = Some(buf.downgrade());
        self.0.host.register_buffer(buf.ino(), self.0.exporter);
        let mut bos = self.0.bos.lock();
        bos.retain(|w| w.strong_count() > 0);
        bos.push(Arc::downgrade(&bo));
        Ok(buf)
    }

    fn live_bos(&self) -> Vec<(Arc<VramBo>, DmaBuf)> {
        self.0
            .bos
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|b| {
                let f = b.buf.lock().clone().and_then(|r| r.get_file_active())?;
                Some((b, f))
            })
            .collect()
    }

    /// Memory pressure: moves every unpinned buffer in VRAM to system
    /// memory. Returns the move fences (pinned buffers are skipped).
    pub fn evict_all(&self) -> Vec<Fence> {
        self.move_all(Domain::System)
    }

    /// Moves every unpinned buffer in system memory back to VRAM.
    pub fn migrate_all_to_vram(&self) -> Vec<Fence> {
        self.move_all(Domain::Vram)
    }

    fn move_all(&self, to: Domain) -> Vec<Fence> {
        let mut fences = Vec::new();
        for (bo, file) in self.live_bos() {
            let g = crate::host::lock_resv(file.resv());
            if let Ok(Some(f)) = bo.move_locked(&file, to, &g) {
                fences.push(f);
            }
        }
        fences
    }

    /// Where the buffer lives now.
    pub fn placement(&self, buf: &DmaBufRef) -> Option<Placement> {
        self.live_bos()
            .into_iter()
            .find(|(_, f)| f.ptr_eq(buf))
            .map(|(b, _)| b.st.lock("gpu_vram placement").placement.clone())
    }
}

struct BoState {
    placement: Placement,
    pins: u64,
    last_move: Option<Fence>,
}

struct VramAttachPriv {
    dev: Option<DeviceId>,
}

/// One exported buffer object.
struct VramBo {
    me: Weak<VramBo>,
    dev: Weak<VramInner>,
    host: Host,
    pages: u64,
    /// Class [`BO_STATE_CLASS`].
    st: ClassMutex<BoState>,
    buf: Mutex<Option<DmaBufRef>>,
}

fn api_err(e: DmaApiError) -> DmaBufError {
    DmaBufError::errno(e.errno(), e.to_string())
}

impl VramBo {
    fn gpu(&self) -> Result<Arc<VramInner>, DmaBufError> {
        self.dev
            .upgrade()
            .ok_or_else(|| DmaBufError::errno(errno::ENODEV, "gpu_vram: device gone"))
    }

    /// Steps 1–7 of a move. `Ok(None)` when already there.
    fn move_locked(
        &self,
        buf: &DmaBufRef,
        to: Domain,
        guard: &ResvGuard<'_>,
    ) -> Result<Option<Fence>, VramError> {
        let gpu = self.gpu()?;
        let old = {
            let st = self.st.lock("ttm_bo_move check");
            let here = match st.placement {
                Placement::Vram(_) => Domain::Vram,
                Placement::System(_) => Domain::System,
            };
            if here == to {
                return Ok(None);
            }
            if st.pins > 0 {
                return Err(VramError::Pinned { ino: buf.ino() });
            }
            st.placement.clone()
        };
        let new = match to {
            Domain::Vram => Placement::Vram(gpu.alloc_vram(self.pages)?),
            Domain::System => Placement::System(
                gpu.host
                    .platform()
                    .memory()
                    .alloc_frames(self.pages as usize, EXP_NAME)
                    .map_err(VramError::NoMemory)?,
            ),
        };
        dma_buf::invalidate_mappings(buf, guard)?;
        let deps = buf.resv().get_fences(Usage::Bookkeep);
        let (fence, handle) = gpu.fctx.create();
        let added = guard
            .reserve_fences(1)
            .and_then(|()| guard.add_fence(&fence, Usage::Kernel));
        if let Err(e) = added {
            gpu.free_placement(&new);
            return Err(VramError::DmaBuf(DmaBufError::errno(
                e.errno(),
                e.to_string(),
            )));
        }
        let ops = gpu
            .page_addrs(&old)
            .into_iter()
            .zip(gpu.page_addrs(&new))
            .map(|(s, d)| DmaOp::copy(DmaAddr::Bus(s), DmaAddr::Bus(d), PAGE_SIZE as usize))
            .collect();
        let job = DmaJob::new(ops).with_label(format!("ttm-move ino={}", buf.ino()));
        submit_after(&gpu.engine, deps, job, fence.clone(), handle);
        let g2 = gpu.clone();
        if let Err(cb) = fence.add_callback(move |_| g2.free_placement(&old)) {
            cb(&fence);
        }
        {
            let mut st = self.st.lock("ttm_bo_move placement");
            st.placement = new;
            st.last_move = Some(fence.clone());
        }
        gpu.moves.fetch_add(1, Ordering::Relaxed);
        trace_event!(
            "ttm_bo_move",
            "exp={} ino={} to={:?} fence={}:{}",
            EXP_NAME,
            buf.ino(),
            to,
            fence.context(),
            fence.seqno()
        );
        Ok(Some(fence))
    }

    fn attach_dev(attach: &Attachment) -> Option<DeviceId> {
        attach
            .exporter_priv()
            .and_then(|p| p.downcast::<VramAttachPriv>().ok())
            .and_then(|p| p.dev)
    }
}

impl DmaBufOps for VramBo {
    fn attach(&self, _buf: &DmaBufRef, attach: &Attachment) -> Result<(), DmaBufError> {
        let gpu = self.gpu()?;
        let dev = self.host.device_by_name(attach.dev()).map(|d| d.id());
        let reachable = dev.is_some_and(|d| {
            self.host.platform().pci().p2p_distance(gpu.pdev.id(), d) != P2pType::NotSupported
        });
        if !reachable {
            attach.set_peer2peer(false);
        }
        let p: Arc<dyn Any + Send + Sync> = Arc::new(VramAttachPriv { dev });
        attach.set_exporter_priv(Some(p));
        Ok(())
    }

    fn pin_ops(&self) -> Option<&dyn PinOps> {
        Some(self)
    }

    fn map_dma_buf(
        &self,
        attach: &Attachment,
        _dir: DmaDirection,
        guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        let gpu = self.gpu()?;
        let dev = Self::attach_dev(attach).ok_or_else(|| {
            DmaBufError::errno(
                errno::EINVAL,
                format!("gpu_vram: no device {}", attach.dev()),
            )
        })?;
        let (in_vram, pinned) = {
            let st = self.st.lock("gpu_vram map_dma_buf");
            (matches!(st.placement, Placement::Vram(_)), st.pins > 0)
        };
        if in_vram && !attach.peer2peer() {
            if pinned {
                return Err(DmaBufError::errno(
                    errno::EBUSY,
                    "gpu_vram: pinned in VRAM, importer is not peer-to-peer",
                ));
            }
            let buf = attach.dmabuf().clone();
            self.move_locked(&buf, Domain::System, guard)?;
        }
        let placement = self
            .st
            .lock("gpu_vram map_dma_buf placement")
            .placement
            .clone();
        let p2p = self.host.platform().pci().p2p_distance(gpu.pdev.id(), dev);
        let mut entries = Vec::new();
        for a in gpu.page_addrs(&placement) {
            let r = match (&placement, p2p) {
                (Placement::Vram(_), P2pType::BusAddr) => Ok(a),
                _ => {
                    dma_api::map_phys(&self.host, dev, a, PAGE_SIZE, IommuPerm::RW).map_err(api_err)
                }
            };
            match r {
                Ok(d) => entries.push(SgEntry {
                    dma_addr: d,
                    len: PAGE_SIZE,
                }),
                Err(e) => {
                    dma_api::unmap_entries(&self.host, dev, &entries);
                    return Err(e);
                }
            }
        }
        Ok(SgTable { entries })
    }

    fn unmap_dma_buf(
        &self,
        attach: &Attachment,
        sgt: SgTable,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) {
        if let Some(dev) = Self::attach_dev(attach) {
            dma_api::unmap_entries(&self.host, dev, &sgt.entries);
        }
    }

    fn release(&self, buf: &DmaBufRef) {
        // Drop the back-reference to our own buffer (see vfio.rs: release).
        self.buf.lock().take();
        let (placement, last) = {
            let st = self.st.lock("gpu_vram release");
            (st.placement.clone(), st.last_move.clone())
        };
        // The copy into the current placement must finish before its pages
        // go back to the allocator.
        if let Some(f) = last {
            let _ = f.wait(None);
        }
        if let Ok(gpu) = self.gpu() {
            gpu.free_placement(&placement);
        }
        let me = self.me.as_ptr();
        if let Ok(gpu) = self.gpu() {
            gpu.bos.lock().retain(|w| w.as_ptr() != me);
        }
        trace_event!("gpu_vram_release", "ino={}", buf.ino());
    }
}

impl PinOps for VramBo {
    fn pin(&self, attach: &Attachment, guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
        let buf = attach.dmabuf().clone();
        let all_p2p = buf.attachments().iter().all(Attachment::peer2peer) && attach.peer2peer();
        let in_vram = matches!(
            self.st.lock("gpu_vram pin placement").placement,
            Placement::Vram(_)
        );
        if in_vram && !all_p2p {
            self.move_locked(&buf, Domain::System, guard)?;
        }
        self.st.lock("gpu_vram pin").pins += 1;
        Ok(())
    }

    fn unpin(&self, _attach: &Attachment, _guard: &ResvGuard<'_>) {
        let mut st = self.st.lock("gpu_vram unpin");
        st.pins = st.pins.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_core::dma_buf::AttachOps;
    use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};

    fn gpu() -> (Platform, GpuVram) {
        let p = Platform::new(
            PlatformConfig::default()
                .switch("sw0")
                .device(
                    DeviceConfig::new("vram0")
                        .bar(0, 0x4000)
                        .behind_switch("sw0"),
                )
                .device(DeviceConfig::new("peer0").behind_switch("sw0"))
                .device(DeviceConfig::new("far0"))
                .host_bridge_p2p(false),
        )
        .unwrap();
        let g = GpuVram::new(&Host::new(p.clone()), p.device("vram0").unwrap()).unwrap();
        (p, g)
    }

    fn p2p_ops() -> AttachOps {
        AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(|_, _| {})),
        }
    }

    #[test]
    fn peers_get_bar_addresses_and_others_force_a_move_to_system() {
        let (p, g) = gpu();
        let buf = g.create_bo(2, 2).unwrap();
        let a = dma_buf::dynamic_attach(&buf, "peer0", Some(p2p_ops())).unwrap();
        let m = dma_buf::map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
        let bar = p.device("vram0").unwrap().bar(0).unwrap();
        assert!(bar.contains(m.sg_table().entries[0].dma_addr, PAGE_SIZE));
        dma_buf::unmap_attachment_unlocked(&a, m).unwrap();
        let far = dma_buf::dynamic_attach(&buf, "far0", Some(p2p_ops())).unwrap();
        assert!(
            !far.peer2peer(),
            "unreachable importer loses peer2peer at attach"
        );
        let m = dma_buf::map_attachment_unlocked(&far, DmaDirection::Bidirectional).unwrap();
        assert!(p.memory().is_ram(m.sg_table().entries[0].dma_addr));
        assert!(matches!(g.placement(&buf), Some(Placement::System(_))));
        assert_eq!(g.moves(), 1);
        dma_buf::unmap_attachment_unlocked(&far, m).unwrap();
        dma_buf::detach(&buf, &far).unwrap();
        dma_buf::detach(&buf, &a).unwrap();
        drop(buf);
        g.0.engine.drain();
        assert_eq!(g.vram_free(), 4, "release returns the VRAM");
        assert_eq!(p.memory().frames_allocated(), 0, "and the frames");
        p.shutdown();
    }

    #[test]
    fn a_pinned_buffer_does_not_move_and_says_ebusy() {
        let (p, g) = gpu();
        let buf = g.create_bo(1, 2).unwrap();
        let a = dma_buf::dynamic_attach(&buf, "peer0", Some(p2p_ops())).unwrap();
        {
            let gd = crate::host::lock_resv(buf.resv());
            dma_buf::pin(&a, &gd).unwrap();
        }
        assert!(g.evict_all().is_empty());
        assert!(matches!(g.placement(&buf), Some(Placement::Vram(_))));
        let f = {
            let gd = crate::host::lock_resv(buf.resv());
            let bo = g.live_bos().pop().unwrap().0;
            bo.move_locked(&buf, Domain::System, &gd)
        };
        assert_eq!(f.unwrap_err().errno(), errno::EBUSY);
        {
            let gd = crate::host::lock_resv(buf.resv());
            dma_buf::unpin(&a, &gd).unwrap();
        }
        assert_eq!(g.evict_all().len(), 1);
        dma_buf::detach(&buf, &a).unwrap();
        drop(buf);
        p.shutdown();
    }

    #[test]
    fn eviction_copies_the_bytes_behind_a_kernel_fence() {
        let (p, g) = gpu();
        let buf = g.create_bo(1, 2).unwrap();
        let bar = p.device("vram0").unwrap().bar(0).unwrap();
        p.memory().poke(bar.addr, b"payload").unwrap();
        let fences = g.evict_all();
        assert_eq!(fences.len(), 1);
        assert!(!buf.resv().get_fences(Usage::Kernel).is_empty() || fences[0].is_signaled());
        fences[0].wait(None).unwrap();
        let Some(Placement::System(frames)) = g.placement(&buf) else {
            panic!("not in system memory")
        };
        let mut b = [0u8; 7];
        p.memory().peek(frames[0], &mut b).unwrap();
        assert_eq!(&b, b"payload");
        assert_eq!(
            g.vram_free(),
            4,
            "the old VRAM is free once the copy is done"
        );
        let back = g.migrate_all_to_vram();
        back[0].wait(None).unwrap();
        assert!(matches!(g.placement(&buf), Some(Placement::Vram(_))));
        assert_eq!(p.memory().frames_allocated(), 0);
        assert_eq!(g.create_bo(0, 0).unwrap_err().errno(), errno::EINVAL);
        assert_eq!(g.create_bo(5, 0).unwrap_err().errno(), errno::ENOMEM);
        drop(buf);
        p.shutdown();
    }
}
