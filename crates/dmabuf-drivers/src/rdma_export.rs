//! An RDMA device as a dma-buf **exporter**: the uverbs DMABUF object
//! (commit 0ac6f4056c4a, "RDMA/uverbs: Add DMABUF object type and
//! operations", Yishai Hadas, Message-ID
//! `20260201-dmabuf-export-v3-2-da238b614fe3@nvidia.com`). A process that
//! allocated device memory on its NIC (`ibv_alloc_dm`, an
//! `rdma_user_mmap_entry` over a range of a BAR) exports that range as a
//! dma-buf fd (`UVERBS_METHOD_DMABUF_ALLOC`) for a GPU, another NIC or any
//! peer-to-peer importer. The revoke thread named RDMA as the other
//! exporter that needs a user-triggered revoke (v5 cover letter,
//! `20260124-dmabuf-revoke-v5-0-f98fca917e96@nvidia.com`).
//!
//! # Objects
//!
//! | Rust | kernel |
//! |---|---|
//! | [`UverbsDevice`] | an `ib_device` whose device memory lives in BAR 0, with one user context (`ib_ucontext`, its `ib_uverbs_file`) |
//! | a DM handle (`u32`) | an `ib_dm` and its `rdma_user_mmap_entry` (a range of BAR 0) |
//! | [`UverbsDmaBuf`] | the DMABUF uobject's private data: the entry's physical range and P2P provider, `revoked`, the mapping count ([`PhysExport`], shared with VFIO) |
//!
//! # Revoke triggers (all user-triggered, all for good)
//!
//! | call | kernel | revoke | after it returns |
//! |---|---|---|---|
//! | [`UverbsDevice::free_dm`] | `ibv_free_dm` → `rdma_user_mmap_entry_remove`: "uverbs iterates over its associated DMABUFs, marks them as revoked" and notifies the importers | the protocol's `revoke`, every buffer of the entry | the device memory goes back to the NIC's allocator (`free`: judged by `s-noreuse`) |
//! | [`UverbsDevice::disassociate`] | a device reset or hot-unplug: `ib_uverbs_disassociate_ucontext`, "the same procedure" | `revoke`, every buffer of the context | the function resets (its BARs lose their contents: `reset`) |
//! | [`UverbsDevice::close`] | the process closes its uverbs fd: final cleanup | `cleanup`, every buffer still linked | each DM not freed yet is freed |
//!
//! The sequence is the protocol's, run by the same interpreter as VFIO's
//! (`dmabuf_core::revoke::Revocable::run`); a protocol file chooses it
//! (`kind = "rdma-dm"`, `protocols/exporters/rdma-export.toml`). There is
//! no un-revoke: a freed DM or a disassociated context never comes back.
//!
//! # Ops
//!
//! * `attach`: the protocol's gate (`peer2peer`, `not_revoked`,
//!   `revocable`), as for VFIO.
//! * `map_dma_buf` / `unmap_dma_buf`: [`PhysExport::map`] / `unmap`: bus
//!   addresses or DMA-API IOVAs by P2P distance, counted for the drain.
//! * no `pin`, no `mmap` (the process maps its DM through the uverbs fd,
//!   not through the dma-buf).
//! * `release`: unlinks the buffer from its context.
//!
//! # Lock rules
//!
//! `hw_destroy_rwsem` (the uverbs file's, write side; class
//! [`HW_DESTROY_CLASS`]; the model takes it for every trigger and export)
//! → reservation lock → the buffer's small locks. File references taken
//! for a trigger are dropped after it is released: the last one runs
//! `release`, which takes it.

use crate::host::{ClassMutex, Host, LockClass};
use crate::phys_dmabuf::{PhysExport, PhysExportInfo, Reporter, RevokeObserver, TriggerReport};
use dmabuf_core::dma_buf::{
    self, Attachment, DmaBuf, DmaBufError, DmaBufOps, DmaBufRef, DmaDirection, ExportInfo, SgTable,
};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::revoke::{Protocol, Revocable};
use dmabuf_core::sync::atomic::{AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::trace_event;
use dmabuf_core::uapi::{Process, SysError};
use dmabuf_platform::{
    Accessor, DeviceId, ExporterId, MonitorError, PAGE_SIZE, PciDevice, PciError, PhysRange,
    ReuseKind,
};
use std::any::Any;
use std::fmt;

/// The exporter name of uverbs dma-bufs (`KBUILD_MODNAME` of the uverbs
/// core).
pub const EXP_NAME: &str = "ib_uverbs";

/// The lock class of the uverbs file's `hw_destroy_rwsem`.
pub static HW_DESTROY_CLASS: LockClass = LockClass::new("ufile->hw_destroy_rwsem");

/// Errors of the RDMA exporter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdmaExportError {
    /// The context was disassociated or closed.
    #[error("uverbs context of {device} is gone")]
    Gone {
        /// Device name.
        device: String,
    },
    /// No device memory with this handle (or already freed).
    #[error("no device memory with handle {handle}")]
    NoDm {
        /// The handle.
        handle: u32,
    },
    /// The device memory (BAR 0) is exhausted, or the size is zero or not
    /// page aligned.
    #[error("cannot allocate {len:#x} bytes of device memory on {device}")]
    NoSpace {
        /// Device name.
        device: String,
        /// Bytes asked for.
        len: u64,
    },
    /// The dma-buf core refused.
    #[error(transparent)]
    DmaBuf(#[from] DmaBufError),
    /// Installing the fd failed.
    #[error("installing the dma-buf fd: {0}")]
    Fd(SysError),
    /// The hazard monitor refused a declaration.
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
    /// The PCI layer refused a transition.
    #[error("{device}: {source}")]
    Pci {
        /// Device name.
        device: String,
        /// What the PCI layer said.
        source: PciError,
    },
}

impl AsErrno for RdmaExportError {
    fn errno(&self) -> Errno {
        match self {
            RdmaExportError::Gone { .. } => errno::EIO,
            RdmaExportError::NoDm { .. } => errno::EINVAL,
            RdmaExportError::NoSpace { .. } => errno::ENOMEM,
            RdmaExportError::DmaBuf(e) => e.errno(),
            RdmaExportError::Fd(e) => e.errno(),
            RdmaExportError::Monitor(e) => e.errno(),
            RdmaExportError::Pci { source, .. } => source.errno(),
        }
    }
}

/// Per-attachment exporter data: the importer's device.
struct AttachPriv {
    dev: Option<DeviceId>,
}

/// The uverbs DMABUF object of one device-memory range.
pub struct UverbsDmaBuf {
    core: PhysExport,
    /// The DM it exports.
    dm: u32,
    ctx: Mutex<Option<Weak<CtxInner>>>,
    dmabuf: Mutex<Option<DmaBufRef>>,
}

impl fmt::Debug for UverbsDmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UverbsDmaBuf(dm={} {:?})", self.dm, self.core)
    }
}

impl UverbsDmaBuf {
    /// Whether the buffer is revoked.
    pub fn is_revoked(&self) -> bool {
        self.core.is_revoked()
    }

    /// Mappings counted live.
    pub fn live_mappings(&self) -> usize {
        self.core.live_mappings()
    }

    fn ino(&self) -> Option<u64> {
        self.dmabuf.lock().as_ref().map(DmaBufRef::ino)
    }

    /// One buffer's revoke with `seq` (`unlink`: the cleanup of a closing
    /// context, which unlinks the buffer first).
    fn revoke(
        &self,
        file: &DmaBuf,
        seq: &dmabuf_core::revoke::Sequence,
        unlink: bool,
        ctx: &CtxInner,
        obs: Option<&RevokeObserver>,
    ) -> crate::phys_dmabuf::BufferRevoke {
        let before = || {
            if unlink {
                *self.ctx.lock() = None;
            }
        };
        self.core.revoke_with(file, seq, &[], obs, &before, &|m| {
            ctx.report.warn(file.ino(), m)
        })
    }
}

impl DmaBufOps for UverbsDmaBuf {
    fn attach(&self, _buf: &DmaBufRef, attach: &Attachment) -> Result<(), DmaBufError> {
        self.core
            .revocable
            .check_attach(attach, self.core.protocol.attach)?;
        let dev = self.core.host.device_by_name(attach.dev()).map(|d| d.id());
        let p: Arc<dyn Any + Send + Sync> = Arc::new(AttachPriv { dev });
        attach.set_exporter_priv(Some(p));
        Ok(())
    }

    fn map_dma_buf(
        &self,
        attach: &Attachment,
        _dir: DmaDirection,
        guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        self.core.map(attach, || attach_dev(attach), guard)
    }

    fn unmap_dma_buf(
        &self,
        attach: &Attachment,
        sgt: SgTable,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) {
        self.core.unmap(attach_dev(attach), &sgt);
    }

    fn release(&self, _buf: &DmaBufRef) {
        self.dmabuf.lock().take();
        let ctx = self.ctx.lock().clone();
        if let Some(c) = ctx.and_then(|w| w.upgrade()) {
            let mut st = c.hw.lock("ib_uverbs_dmabuf_release");
            st.bufs.retain(|p| !std::ptr::eq(Arc::as_ptr(p), self));
            *self.ctx.lock() = None;
        }
        trace_event!("ib_uverbs_dmabuf_release", "dm={}", self.dm);
    }
}

fn attach_dev(attach: &Attachment) -> Option<DeviceId> {
    attach
        .exporter_priv()
        .and_then(|p| p.downcast::<AttachPriv>().ok())
        .and_then(|p| p.dev)
}

/// One device-memory allocation.
struct Dm {
    handle: u32,
    addr: u64,
    len: u64,
    freed: bool,
}

struct CtxState {
    dms: Vec<Dm>,
    bufs: Vec<Arc<UverbsDmaBuf>>,
    /// Next free byte of BAR 0 (a bump allocator: freed ranges are not
    /// handed out again in a world's lifetime).
    next: u64,
    disassociated: bool,
    closed: bool,
}

struct CtxInner {
    host: Host,
    pdev: PciDevice,
    protocol: Arc<Protocol>,
    exporter: ExporterId,
    /// `ufile->hw_destroy_rwsem` (write side), class [`HW_DESTROY_CLASS`].
    hw: ClassMutex<CtxState>,
    report: Reporter,
    revokes: AtomicU64,
}

/// An RDMA device with device memory in BAR 0 and one user context (cheap
/// to clone handle).
#[derive(Clone)]
pub struct UverbsDevice(Arc<CtxInner>);

impl fmt::Debug for UverbsDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UverbsDevice({} {})",
            self.0.pdev.name(),
            self.0.protocol.name
        )
    }
}

impl UverbsDevice {
    /// Opens a user context on `pdev` (its BAR 0 is the device memory)
    /// with a revoke protocol, registering the device as an exporter with
    /// the monitor.
    pub fn bind(
        host: &Host,
        pdev: PciDevice,
        protocol: Arc<Protocol>,
    ) -> Result<Self, RdmaExportError> {
        let name = format!("ib_uverbs:{}", pdev.name());
        let owner = Accessor::new(&name);
        let exporter = host.monitor().register_exporter(&name, &owner)?;
        Ok(Self(Arc::new(CtxInner {
            host: host.clone(),
            pdev,
            protocol,
            exporter,
            hw: ClassMutex::new(
                &HW_DESTROY_CLASS,
                CtxState {
                    dms: Vec::new(),
                    bufs: Vec::new(),
                    next: 0,
                    disassociated: false,
                    closed: false,
                },
            ),
            report: Reporter::new(),
            revokes: AtomicU64::new(0),
        })))
    }

    /// The revoke protocol.
    pub fn protocol(&self) -> &Arc<Protocol> {
        &self.0.protocol
    }

    /// The PCI device.
    pub fn pci_device(&self) -> &PciDevice {
        &self.0.pdev
    }

    /// Reports revoke progress to `obs` from now on.
    pub fn set_revoke_observer(&self, obs: Option<RevokeObserver>) {
        self.0.report.set_observer(obs);
    }

    /// Kernel WARNs so far.
    pub fn warnings(&self) -> Vec<String> {
        self.0.report.warnings()
    }

    /// Buffers revoked so far.
    pub fn revokes(&self) -> u64 {
        self.0.revokes.load(Ordering::Relaxed)
    }

    /// The live DM handles, oldest first.
    pub fn dm_handles(&self) -> Vec<u32> {
        let st = self.0.hw.lock("ib_uverbs dm_handles");
        st.dms
            .iter()
            .filter(|d| !d.freed)
            .map(|d| d.handle)
            .collect()
    }

    fn dev_name(&self) -> String {
        self.0.pdev.name().to_owned()
    }

    fn gone(&self, st: &CtxState) -> Result<(), RdmaExportError> {
        if st.closed || st.disassociated {
            return Err(RdmaExportError::Gone {
                device: self.dev_name(),
            });
        }
        Ok(())
    }

    /// Runs `f` with `hw_destroy_rwsem` held; the file references it
    /// defers are dropped after the lock is released.
    fn with_hw<R>(
        &self,
        site: &'static str,
        f: impl FnOnce(&mut CtxState, &mut Vec<DmaBuf>) -> R,
    ) -> R {
        let mut deferred = Vec::new();
        let r = {
            let mut st = self.0.hw.lock(site);
            f(&mut st, &mut deferred)
        };
        drop(deferred);
        r
    }

    /// `ibv_alloc_dm`: `len` bytes (page aligned) of device memory; its
    /// handle.
    pub fn alloc_dm(&self, len: u64) -> Result<u32, RdmaExportError> {
        let bar = self.0.pdev.bar(0);
        self.with_hw("ib_uverbs_alloc_dm", |st, _| {
            self.gone(st)?;
            let no_space = || RdmaExportError::NoSpace {
                device: self.dev_name(),
                len,
            };
            let bar = bar.ok_or_else(no_space)?;
            if len == 0 || !len.is_multiple_of(PAGE_SIZE) || st.next + len > bar.size {
                return Err(no_space());
            }
            let handle = st.dms.len() as u32 + 1;
            st.dms.push(Dm {
                handle,
                addr: bar.addr + st.next,
                len,
                freed: false,
            });
            st.next += len;
            Ok(handle)
        })
    }

    /// `UVERBS_METHOD_DMABUF_ALLOC` on DM `handle`: exports its range as a
    /// dma-buf and installs an fd in `proc`.
    pub fn export_dm(
        &self,
        proc: &Process,
        handle: u32,
        open_flags: u32,
    ) -> Result<i32, RdmaExportError> {
        let buf = self.with_hw("ib_uverbs_dmabuf_alloc", |st, _| {
            self.gone(st)?;
            let dm = st
                .dms
                .iter()
                .find(|d| d.handle == handle && !d.freed)
                .ok_or(RdmaExportError::NoDm { handle })?;
            let (addr, len) = (dm.addr, dm.len);
            let ctx = Arc::downgrade(&self.0);
            let priv_ = Arc::new_cyclic(|me: &Weak<UverbsDmaBuf>| UverbsDmaBuf {
                core: PhysExport::new(PhysExportInfo {
                    host: self.0.host.clone(),
                    protocol: self.0.protocol.clone(),
                    exporter: self.0.exporter,
                    provider: self.0.pdev.id(),
                    phys: vec![(addr, len)],
                    size: len,
                    revocable: Revocable::with_warn_sink(false, {
                        let (me, c) = (me.clone(), ctx.clone());
                        Arc::new(move |msg: &str| {
                            let ino = me.upgrade().and_then(|b| b.ino()).unwrap_or(0);
                            if let Some(c) = c.upgrade() {
                                c.report.warn(ino, msg);
                            }
                        })
                    }),
                    who: "uverbs dmabuf",
                    revoked_event: "ib_uverbs_dmabuf_revoked",
                }),
                dm: handle,
                ctx: Mutex::new(Some(ctx.clone())),
                dmabuf: Mutex::new(None),
            });
            let buf = dma_buf::export(ExportInfo {
                exp_name: EXP_NAME.into(),
                size: len,
                flags: open_flags,
                resv: None,
                ops: priv_.clone(),
            })?;
            *priv_.dmabuf.lock() = Some(buf.downgrade());
            self.0.host.register_buffer(buf.ino(), self.0.exporter);
            st.bufs.push(priv_);
            trace_event!(
                "ib_uverbs_dmabuf_export",
                "dev={} dm={} ino={} addr={:#x} size={:#x}",
                self.dev_name(),
                handle,
                buf.ino(),
                addr,
                len
            );
            Ok::<_, RdmaExportError>(buf)
        })?;
        // Outside the lock: a failed install drops the last reference,
        // whose release takes it.
        proc.dma_buf_fd(buf, open_flags)
            .map_err(RdmaExportError::Fd)
    }

    /// Revokes, with `seq`, every linked buffer `pick` selects
    /// (`unlink`: cleanup).
    fn revoke_bufs(
        &self,
        st: &mut CtxState,
        deferred: &mut Vec<DmaBuf>,
        pick: impl Fn(&UverbsDmaBuf) -> bool,
        unlink: bool,
        report: &mut TriggerReport,
    ) {
        let obs = self.0.report.observer();
        let seq = if unlink {
            &self.0.protocol.cleanup
        } else {
            &self.0.protocol.revoke
        };
        let bufs: Vec<Arc<UverbsDmaBuf>> = st.bufs.iter().filter(|b| pick(b)).cloned().collect();
        for b in bufs {
            let Some(file) = b.dmabuf.lock().clone().and_then(|r| r.get_file_active()) else {
                continue;
            };
            if unlink || !b.is_revoked() {
                report
                    .revoked
                    .push(b.revoke(&file, seq, unlink, &self.0, obs.as_ref()));
                self.0.revokes.fetch_add(1, Ordering::Relaxed);
            }
            deferred.push(file);
        }
        if unlink {
            st.bufs.retain(|b| !pick(b));
        }
    }

    /// Frees DM `i` of `st`: its range goes back to the device's allocator.
    fn free_range(&self, st: &mut CtxState, i: usize) {
        let dm = &mut st.dms[i];
        if dm.freed {
            return;
        }
        dm.freed = true;
        let range = [PhysRange::new(dm.addr, dm.len)];
        let who = format!("{} dm {}", self.dev_name(), dm.handle);
        self.0
            .host
            .platform()
            .note_reuse(ReuseKind::Free, &who, &range);
    }

    /// `ibv_free_dm`: `rdma_user_mmap_entry_remove` revokes every dma-buf
    /// of DM `handle` (the protocol's `revoke`), then the device memory is
    /// freed.
    pub fn free_dm(&self, handle: u32) -> Result<TriggerReport, RdmaExportError> {
        self.with_hw("rdma_user_mmap_entry_remove", |st, deferred| {
            self.gone(st)?;
            let i = st
                .dms
                .iter()
                .position(|d| d.handle == handle && !d.freed)
                .ok_or(RdmaExportError::NoDm { handle })?;
            let mut report = TriggerReport::default();
            self.revoke_bufs(st, deferred, |b| b.dm == handle, false, &mut report);
            self.free_range(st, i);
            trace_event!("ib_free_dm", "dev={} dm={}", self.dev_name(), handle);
            Ok(report)
        })
    }

    /// A device reset (or hot-unplug) disassociates the context:
    /// `ib_uverbs_disassociate_ucontext` revokes every dma-buf (the
    /// protocol's `revoke`); then the function resets. The context is dead
    /// afterwards: every call but [`close`](Self::close) is refused.
    pub fn disassociate(&self) -> Result<TriggerReport, RdmaExportError> {
        self.with_hw("ib_uverbs_disassociate_ucontext", |st, deferred| {
            self.gone(st)?;
            let mut report = TriggerReport::default();
            self.revoke_bufs(st, deferred, |_| true, false, &mut report);
            st.disassociated = true;
            trace_event!("ib_uverbs_disassociate", "dev={}", self.dev_name());
            if let Err(e) = self.0.pdev.flr() {
                report.errors.push(
                    RdmaExportError::Pci {
                        device: self.dev_name(),
                        source: e,
                    }
                    .to_string(),
                );
            }
            Ok(report)
        })
    }

    /// The process closes its uverbs fd: every buffer still linked is
    /// cleaned up (the protocol's `cleanup`) and unlinked, every DM not yet
    /// freed is freed.
    pub fn close(&self) -> Result<TriggerReport, RdmaExportError> {
        self.with_hw("uverbs_destroy_ufile_hw", |st, deferred| {
            if st.closed {
                return Err(RdmaExportError::Gone {
                    device: self.dev_name(),
                });
            }
            let mut report = TriggerReport::default();
            self.revoke_bufs(st, deferred, |_| true, true, &mut report);
            for i in 0..st.dms.len() {
                self.free_range(st, i);
            }
            st.closed = true;
            trace_event!("ib_uverbs_close", "dev={}", self.dev_name());
            Ok(report)
        })
    }
}
