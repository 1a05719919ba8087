//! The VFIO PCI dma-buf exporter (`drivers/vfio/pci/vfio_pci_dmabuf.c`,
//! Linux 7.1): a VMM exports ranges of a device BAR as dma-bufs through the
//! `VFIO_DEVICE_FEATURE` ABI ([`crate::vfio_uapi`]), and the device's config
//! writes, power transitions, resets and close revoke them.
//!
//! # Objects
//!
//! | Rust | kernel |
//! |---|---|
//! | [`VfioPciDevice`] | `struct vfio_pci_core_device` (its `memory_lock`, its `dmabufs` list) |
//! | [`VfioDmaBuf`] | `struct vfio_pci_dma_buf` (`priv`: phys ranges, `revoked`, `kref` + `comp` as a [`Revocable`]) |
//! | [`VfioPciDevice::device_feature`] | `vfio_pci_core_feature_dma_buf` |
//! | [`iommufd_map`] | `vfio_pci_dma_buf_iommufd_map` (the private interface for iommufd) |
//! | `VfioPciDevice::dma_buf_move` | `vfio_pci_dma_buf_move` |
//! | [`VfioPciDevice::close`] | `vfio_pci_dma_buf_cleanup` + device unbind |
//!
//! # Buffer states
//!
//! | state | `revoked` | live count | attach | map |
//! |---|---|---|---|---|
//! | usable | false | 1 + mappings | per the policy's gate | sg table + one count |
//! | revoking | true (v1: after notifying) | draining | `ENODEV` | `ENODEV` |
//! | revoked (decode off, D3hot, reset window) | true | 1, re-armed (or base given back when the policy does not drain) | `ENODEV` | `ENODEV` |
//! | gone (device closed) | true, for good; `vdev` cleared | 1 | `ENODEV` | `ENODEV` |
//!
//! A buffer is exported revoked when the device's memory is not enabled.
//!
//! # Ops (7.1)
//!
//! * `attach`: no `peer2peer` → `EOPNOTSUPP`; revoked → `ENODEV`; not
//!   `dma_buf_attach_revocable` → `EOPNOTSUPP` when the policy's gate says
//!   so ([`RevokePolicy::attach_gate`]). MMIO has no struct pages, so every
//!   static importer is refused under every policy.
//! * `pin`: absent (VFIO is not a dynamic exporter), except under
//!   `v9c-gate-in-pin`, where `pin` refuses non-revocable importers (v2's
//!   idea).
//! * `map_dma_buf` (lock held): `ENODEV` while revoked; the sg table comes
//!   from the physical ranges and `pci_p2pdma_distance` between the device and
//!   the importer: `BusAddr` → bus addresses; `ThruHostBridge` → an IOVA in
//!   the importer's DMA-API domain (or the physical address when it has
//!   none); anything else → `EINVAL`. Counts one live mapping.
//! * `unmap_dma_buf` (lock held): unmaps the IOVAs, drops the count; the last
//!   unmap completes a draining revoke.
//! * `release`: unlinks the buffer from its device, if still bound.
//!
//! # The revoke sequence of one buffer (`dma_buf_move(revoked = true)`)
//!
//! 1. Skip the buffer if its file is no longer live (`get_file_active`) or
//!    it is already revoked.
//! 2. Lock the reservation object.
//! 3. Set `revoked` (all policies but v1, which sets it after step 4).
//! 4. `dma_buf_invalidate_mappings`.
//! 5. Wait for fences as the policy says (`None`, `Kernel` or `Bookkeep`,
//!    non-interruptible, `MAX_SCHEDULE_TIMEOUT`); tell the monitor
//!    (`fences_done`).
//! 6. Unlock, so importers that unmap later (taking the lock) can finish.
//! 7. Drop the base count and wait for every unmap as the policy says (not
//!    at all, at most 1 s, or unbounded), then re-arm (the core's
//!    [`Revocable::put_base_and_wait`]).
//! 8. The revoke returns: tell the monitor (`revoke_returned`). Only now may
//!    the caller reset, power down or unbind the device.
//!
//! # Un-revoke (`dma_buf_move(revoked = false)`)
//!
//! 1. Lock; invalidate (dynamic importers learn they may map again); wait as
//!    the policy says; unlock.
//! 2. For the draining policies (v5, v6, v8b, v9c): check the count was
//!    re-armed; if an importer still holds a mapping from before (v5 gave up
//!    waiting), the buffer stays revoked and the caller gets
//!    [`VfioError::Unrevoke`]; nothing is half done.
//! 3. Lock; clear `revoked`; unlock (after the re-arm: the v6 race fix).
//! 4. Tell the monitor (`unrevoke`).
//!
//! # Triggers
//!
//! | call | before | revoke | after the revoke returns |
//! |---|---|---|---|
//! | [`VfioPciDevice::set_memory_decode`]`(false)` | zap CPU mappings | yes | clear `PCI_COMMAND_MEMORY` |
//! | [`VfioPciDevice::set_memory_decode`]`(true)` | | | set it; un-revoke |
//! | [`VfioPciDevice::set_power_state`]`(D3hot)` | zap | yes | power down |
//! | [`VfioPciDevice::set_power_state`]`(D0)` | | | power up; un-revoke if decoding |
//! | [`VfioPciDevice::reset`] (FLR, `VFIO_DEVICE_RESET`, hot reset) | save config, zap | yes | the reset window; restore config; un-revoke if decoding |
//! | [`VfioPciDevice::close`] | zap (and, with [`Protocol::disable_before_cleanup`], the pre-d97708701434 order: bus master and decode off) | yes, for good (cleanup) | unlink every buffer; unbind (unplug) the device |
//!
//! A trigger checks its preconditions (device present, not closed, not in
//! reset) before revoking anything, so a refused trigger leaves every buffer
//! as it was. If the platform step after a completed revoke fails, the
//! buffers stay revoked and consistent (flag set, count re-armed).
//!
//! Cleanup of a buffer that an earlier trigger already revoked skips the
//! count drop and the wait (the April 2026 fix: a second base put would
//! underflow and the wait would hang on a consumed completion).
//!
//! # Lock rules
//!
//! `memory_lock` (the kernel's rw_semaphore, write side) → reservation lock
//! → the buffer's own small locks. Every trigger holds `memory_lock`
//! throughout, so triggers are serialised and a CPU fault (which takes it)
//! cannot insert a PTE between a zap and the revoke. `map`/`unmap` take no
//! VFIO lock: an importer's later unmap never needs `memory_lock`. File
//! references taken in step 1 are dropped only after `memory_lock` is
//! released: the last one runs `release`, which takes `memory_lock` (the
//! kernel defers that `fput` the same way).
//!
//! `memory_lock` is announced to the lock validator as class
//! [`MEMORY_LOCK_CLASS`] (`vdev->memory_lock`), so the order above
//! (`memory_lock` → `dma_resv` → the importers' classes taken in their
//! callbacks) is recorded on every trigger, and a path taking `memory_lock`
//! under a reservation lock or inside a fence signalling section is
//! reported.

use crate::host::{ClassMutex, Host, LockClass};
use crate::phys_dmabuf::{MoveHooks, PhysExport, PhysExportInfo, Reporter};
use crate::vfio_uapi::{self, DmaRange, FeatureCall};
use dmabuf_core::dma_buf::{
    self, Attachment, DmaBuf, DmaBufError, DmaBufOps, DmaBufRef, DmaDirection, ExportInfo,
    MmapRequest, PinOps, SgTable,
};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::revoke::{MmapFault, Protocol, Revocable};
use dmabuf_core::sync::atomic::{AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::trace_event;
use dmabuf_core::uapi::{Process, SysError};
use dmabuf_platform::{
    Accessor, CpuMapping, DeviceConfig, DeviceId, ExporterId, MonitorError, PAGE_SIZE, PciDevice,
    PciError, PhysRange, PowerState, VmFault,
};
use std::any::Any;
use std::fmt;

/// The exporter name of VFIO dma-bufs (`exp_name`): `KBUILD_MODNAME` of
/// drivers/vfio/pci/vfio_pci_dmabuf.c, which is built into the
/// `vfio-pci-core` module (what Linux 7.2.13's fdinfo shows).
pub const EXP_NAME: &str = "vfio_pci_core";

/// The lock class of every device's `memory_lock` (`vdev->memory_lock`).
pub static MEMORY_LOCK_CLASS: LockClass = LockClass::new("vdev->memory_lock");

/// Errors of the VFIO exporter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VfioError {
    /// The `VFIO_DEVICE_FEATURE` payload was refused by the ABI checks.
    #[error("VFIO_DEVICE_FEATURE: {errno} ({})", errno.get())]
    Feature {
        /// The errno of the failed check.
        errno: Errno,
    },
    /// The region index names no BAR of this device.
    #[error("BAR{index} of {device} is not implemented")]
    NoBar {
        /// Device name.
        device: String,
        /// Region index.
        index: u32,
    },
    /// A range leaves the BAR (`EINVAL`) or overflows (`EOVERFLOW`).
    #[error("range outside BAR{index} of {device} ({:#x} bytes): {errno}", size)]
    Range {
        /// Device name.
        device: String,
        /// Region index.
        index: u32,
        /// BAR size.
        size: u64,
        /// `EINVAL` or `EOVERFLOW`.
        errno: Errno,
    },
    /// The device was closed or unplugged.
    #[error("VFIO device {device} is gone")]
    DeviceGone {
        /// Device name.
        device: String,
    },
    /// The device fd was already closed.
    #[error("VFIO device {device} is already closed")]
    Closed {
        /// Device name.
        device: String,
    },
    /// The PCI layer refused a transition.
    #[error("{device}: {source}")]
    Pci {
        /// Device name.
        device: String,
        /// What the PCI layer said.
        source: PciError,
    },
    /// The dma-buf core refused.
    #[error(transparent)]
    DmaBuf(#[from] DmaBufError),
    /// Installing the fd failed.
    #[error("installing the dma-buf fd: {0}")]
    Fd(SysError),
    /// The private iommufd interface refused (`EOPNOTSUPP`, `ENODEV`).
    #[error("vfio_pci_dma_buf_iommufd_map: {what} ({errno})")]
    Iommufd {
        /// The errno.
        errno: Errno,
        /// Why.
        what: &'static str,
    },
    /// `mmap` of a dma-buf fd failed: the ABI's and the core's checks, or
    /// the exporter's op (`EINVAL` without an `mmap` op, `ENODEV` while
    /// revoked), or the VMA could not be made.
    #[error("mmap of a dma-buf: {errno}")]
    Mmap {
        /// The errno.
        errno: Errno,
    },
    /// A buffer could not be un-revoked (a mapping from before the revoke
    /// is still live); it stays revoked.
    #[error("un-revoke of dma-buf ino {ino}: {source}")]
    Unrevoke {
        /// The buffer.
        ino: u64,
        /// The core's refusal.
        source: DmaBufError,
    },
    /// The hazard monitor refused a declaration.
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
    /// The device still owns its BARs (not closed yet).
    #[error("VFIO device {device} is still bound")]
    StillBound {
        /// Device name.
        device: String,
    },
}

impl AsErrno for VfioError {
    fn errno(&self) -> Errno {
        match self {
            VfioError::Feature { errno } | VfioError::Range { errno, .. } => *errno,
            VfioError::NoBar { .. } | VfioError::DeviceGone { .. } => errno::ENODEV,
            VfioError::Closed { .. } => errno::EBADF,
            VfioError::Pci { source, .. } => source.errno(),
            VfioError::DmaBuf(e) => e.errno(),
            VfioError::Fd(e) => e.errno(),
            VfioError::Iommufd { errno, .. } | VfioError::Mmap { errno } => *errno,
            VfioError::Unrevoke { .. } => errno::EBUSY,
            VfioError::Monitor(e) => e.errno(),
            VfioError::StillBound { .. } => errno::EBUSY,
        }
    }
}

/// Which reset a [`VfioPciDevice::reset`] performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// Function-level reset through a config write.
    Flr,
    /// `VFIO_DEVICE_RESET`.
    DeviceReset,
    /// `VFIO_DEVICE_PCI_HOT_RESET`: a secondary bus reset of the device set.
    HotReset,
}

pub use crate::phys_dmabuf::{BufferRevoke, RevokeEvent, RevokeObserver, TriggerReport};

/// Per-attachment exporter data: the buffer and the importer's device.
struct VfioAttachPriv {
    buf: Arc<VfioDmaBuf>,
    dev: Option<DeviceId>,
}

/// `struct vfio_pci_dma_buf`: one exported buffer's private data and ops.
pub struct VfioDmaBuf {
    me: Weak<VfioDmaBuf>,
    /// Ranges, provider, protocol and revoke state (shared with the RDMA
    /// exporter).
    core: PhysExport,
    owner_dev: Weak<VfioInner>,
    /// Revoked for good by userspace (the three-state exporter's
    /// `PERM_REVOKED`): no un-revoke brings it back.
    perm: dmabuf_core::sync::atomic::AtomicBool,
    vdev: Mutex<Option<Weak<VfioInner>>>,
    dmabuf: Mutex<Option<DmaBufRef>>,
}

impl fmt::Debug for VfioDmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VfioDmaBuf({:?})", self.core)
    }
}

impl VfioDmaBuf {
    /// Whether the buffer is revoked.
    pub fn is_revoked(&self) -> bool {
        self.core.is_revoked()
    }

    /// Mappings counted live.
    pub fn live_mappings(&self) -> usize {
        self.core.live_mappings()
    }

    /// The physical ranges.
    pub fn phys(&self) -> &[(u64, u64)] {
        self.core.phys()
    }

    /// The buffer's inode, once exported.
    pub fn ino(&self) -> Option<u64> {
        self.dmabuf.lock().as_ref().map(DmaBufRef::ino)
    }

    /// Whether the buffer is still linked to a device (not cleaned up).
    pub fn is_bound(&self) -> bool {
        self.vdev.lock().is_some()
    }

    fn ranges(&self) -> Vec<PhysRange> {
        self.core.ranges()
    }

    fn attach_priv(attach: &Attachment) -> Option<Arc<VfioAttachPriv>> {
        attach
            .exporter_priv()
            .and_then(|p| p.downcast::<VfioAttachPriv>().ok())
    }

    /// Steps 2–8 for one buffer: the protocol's revoke sequence, or its
    /// cleanup sequence when `permanent` (the device link is cleared
    /// first). `cpu` are the CPU mappings its `unmap_mapping_range` zaps.
    fn revoke_one(
        &self,
        file: &DmaBuf,
        permanent: bool,
        cpu: &[&[CpuMapping]],
        obs: Option<&RevokeObserver>,
    ) -> BufferRevoke {
        let seq = if permanent {
            &self.core.protocol.cleanup
        } else {
            &self.core.protocol.revoke
        };
        self.revoke_with(file, seq, permanent, cpu, obs)
    }

    /// Steps 2–8 for one buffer with sequence `seq`; `unlink` clears the
    /// device link first (cleanup).
    fn revoke_with(
        &self,
        file: &DmaBuf,
        seq: &dmabuf_core::revoke::Sequence,
        unlink: bool,
        cpu: &[&[CpuMapping]],
        obs: Option<&RevokeObserver>,
    ) -> BufferRevoke {
        let before = || {
            if unlink {
                *self.vdev.lock() = None;
            }
        };
        self.core
            .revoke_with(file, seq, cpu, obs, &before, &|m| self.warn(m))
    }

    /// Un-revoke: the protocol's un-revoke sequence.
    fn unrevoke_one(
        &self,
        file: &DmaBuf,
        cpu: &[&[CpuMapping]],
        obs: Option<&RevokeObserver>,
    ) -> Result<(), VfioError> {
        if !self.core.revocable.is_revoked() {
            return Ok(());
        }
        if let Some(o) = obs {
            o(&RevokeEvent::UnrevokeBegin { ino: file.ino() });
        }
        let mut hooks = MoveHooks::unrevoke(&self.core, cpu, file.ino());
        self.core
            .revocable
            .run(&self.core.protocol.unrevoke, file, &mut hooks)
            .map_err(|source| VfioError::Unrevoke {
                ino: file.ino(),
                source,
            })?;
        if self.core.revocable.is_revoked() {
            // The sequence left the flag set (it has no clear_revoked): the
            // buffer stays revoked.
            return Err(VfioError::Unrevoke {
                ino: file.ino(),
                source: DmaBufError::Invalid(
                    "the un-revoke sequence left the buffer revoked".into(),
                ),
            });
        }
        // The monitor learnt it at the flag's clearing (MoveHooks).
        let seq = hooks.unrevoked_seq.unwrap_or(0);
        trace_event!("vfio_pci_dma_buf_unrevoked", "ino={:#x}", file.ino());
        if let Some(o) = obs {
            o(&RevokeEvent::Unrevoked {
                ino: file.ino(),
                seq,
            });
        }
        Ok(())
    }

    /// A kernel WARN from this buffer (refcount_t misuse, a timed-out wait).
    fn warn(&self, msg: &str) {
        let ino = self.ino().unwrap_or(0);
        if let Some(v) = self.vdev.lock().clone().and_then(|w| w.upgrade()) {
            v.warn(ino, msg);
        } else if let Some(v) = self.owner_dev.upgrade() {
            v.warn(ino, msg);
        }
    }
}

impl DmaBufOps for VfioDmaBuf {
    fn attach(&self, _buf: &DmaBufRef, attach: &Attachment) -> Result<(), DmaBufError> {
        self.core
            .revocable
            .check_attach(attach, self.core.protocol.attach)?;
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| DmaBufError::errno(errno::ENODEV, "vfio: buffer freed"))?;
        let dev = self.core.host.device_by_name(attach.dev()).map(|d| d.id());
        let p: Arc<dyn Any + Send + Sync> = Arc::new(VfioAttachPriv { buf: me, dev });
        attach.set_exporter_priv(Some(p));
        Ok(())
    }

    fn pin_ops(&self) -> Option<&dyn PinOps> {
        self.core
            .protocol
            .pin
            .is_some()
            .then_some(self as &dyn PinOps)
    }

    fn map_dma_buf(
        &self,
        attach: &Attachment,
        _dir: DmaDirection,
        guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        self.core.map(
            attach,
            || Self::attach_priv(attach).and_then(|p| p.dev),
            guard,
        )
    }

    fn unmap_dma_buf(
        &self,
        attach: &Attachment,
        sgt: SgTable,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) {
        let dev = Self::attach_priv(attach).and_then(|p| p.dev);
        self.core.unmap(dev, &sgt);
    }

    /// With a protocol that has `mmap` (Matt Evans' series), VFIO
    /// dma-bufs can be mapped by userspace; without, there is no op and
    /// the core answers `EINVAL` (7.1, 7.2).
    fn has_mmap(&self) -> bool {
        self.core.protocol.mmap.is_some()
    }

    /// `vfio_pci_dma_buf_mmap`: `ENODEV` unless the buffer is usable (the
    /// range was checked by the core). The PTEs come later, from the fault
    /// handler ([`mmap_dma_buf`]).
    fn mmap(&self, _buf: &DmaBufRef, _req: MmapRequest) -> Result<(), DmaBufError> {
        if self.core.revocable.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                "vfio_pci_dma_buf_mmap: buffer revoked",
            ));
        }
        Ok(())
    }

    fn release(&self, _buf: &DmaBufRef) {
        // The buffer's ops own this private data and it names the buffer
        // back: drop that reference here, as the kernel frees `priv` in
        // release, or neither would ever be freed.
        self.dmabuf.lock().take();
        let vdev = self.vdev.lock().clone();
        if let Some(v) = vdev.and_then(|w| w.upgrade()) {
            let mut mem = v.memory_lock.lock("vfio_pci_dma_buf_release");
            mem.dmabufs.retain(|p| !std::ptr::eq(Arc::as_ptr(p), self));
            mem.dmabuf_maps
                .retain(|(b, _)| !std::ptr::eq(b.as_ptr(), self));
            *self.vdev.lock() = None;
            // Released while revoked: no importer is left, and the range is
            // the device's own BAR memory again (the VMM's BAR mmap touches
            // it once the device is enabled). The monitor's revoke stamp
            // ends with the export, unless another revoked buffer of the
            // device still covers part of the range. (Model bookkeeping:
            // the kernel has no monitor.)
            if self.is_revoked() {
                let mine = self.ranges();
                let overlaps = |r: &PhysRange| {
                    mine.iter()
                        .any(|m| r.start < m.start + m.len && m.start < r.start + r.len)
                };
                let covered = mem
                    .dmabufs
                    .iter()
                    .any(|p| p.is_revoked() && p.ranges().iter().any(overlaps));
                if !covered {
                    let _ = self.core.host.monitor().unrevoke(self.core.exporter, &mine);
                }
            }
        }
        trace_event!("vfio_pci_dma_buf_release", "size={:#x}", self.core.size);
    }
}

impl PinOps for VfioDmaBuf {
    fn pin(&self, attach: &Attachment, _guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
        self.core
            .revocable
            .check_pin(attach, self.core.protocol.pin.unwrap_or_default())
    }

    fn unpin(&self, _attach: &Attachment, _guard: &ResvGuard<'_>) {}
}

/// `vfio_pci_dma_buf_iommufd_map`: the physical range of a VFIO dma-buf for
/// iommufd, which maps it into IOMMU domains itself and never calls
/// `map_dma_buf`. The reservation lock must be held.
pub fn iommufd_map(attach: &Attachment, guard: &ResvGuard<'_>) -> Result<(u64, u64), VfioError> {
    if !std::ptr::eq(guard.resv(), &**attach.dmabuf().resv()) {
        return Err(VfioError::DmaBuf(DmaBufError::LockNotHeld {
            call: "vfio_pci_dma_buf_iommufd_map",
        }));
    }
    let Some(p) = VfioDmaBuf::attach_priv(attach) else {
        return Err(VfioError::Iommufd {
            errno: errno::EOPNOTSUPP,
            what: "not a VFIO dma-buf",
        });
    };
    if p.buf.core.revocable.is_revoked() {
        return Err(VfioError::Iommufd {
            errno: errno::ENODEV,
            what: "revoked",
        });
    }
    match p.buf.core.phys.as_slice() {
        [one] => Ok(*one),
        _ => Err(VfioError::Iommufd {
            errno: errno::EOPNOTSUPP,
            what: "more than one range",
        }),
    }
}

/// `mmap(2)` of the whole dma-buf behind `fd` of `proc`, by `accessor`
/// (Matt Evans' "vfio/pci: Support mmap() of a DMABUF"): the ABI's and the
/// dma-buf core's checks and the exporter's op ([`Process::mmap`]: `EINVAL`
/// when the protocol has no `mmap`, `ENODEV` unless the buffer is usable),
/// then a VMA whose PTEs the fault handler inserts one page at a time, and
/// which the buffer's `unmap_mapping_range` zaps.
///
/// The fault handler (`vfio_pci_dma_buf_find_pfn` in the RFC) checks the
/// revoked state and inserts the PFN under the lock the protocol names
/// ([`MmapFault`]): `memory_lock` (the series; every trigger holds it, so
/// no fault lands inside a revoke), the reservation lock, or none. A
/// revoked buffer answers `VM_FAULT_SIGBUS`.
///
/// `EOPNOTSUPP` for a buffer another exporter made.
pub fn mmap_dma_buf(proc: &Process, fd: i32, accessor: Accessor) -> Result<CpuMapping, VfioError> {
    let buf = proc.dma_buf_get(fd).map_err(VfioError::Fd)?;
    let pages = buf.size() / PAGE_SIZE;
    proc.mmap(fd, 0, pages)
        .map_err(|e| VfioError::Mmap { errno: e.errno() })?;
    let p = buf.exporter_priv::<VfioDmaBuf>().ok_or(VfioError::Mmap {
        errno: errno::EOPNOTSUPP,
    })?;
    let kind = p.core.protocol.mmap.unwrap_or(MmapFault::MemoryLock);
    let (weak, vdev, resv) = (
        Arc::downgrade(&p),
        p.vdev.lock().clone(),
        buf.resv().clone(),
    );
    let handler = Arc::new(move |vma: &CpuMapping, pgoff: u64| -> Result<(), VmFault> {
        let Some(b) = weak.upgrade() else {
            return Err(VmFault::Sigbus);
        };
        let insert = || -> Result<(), VmFault> {
            if b.core.revocable.is_revoked() {
                return Err(VmFault::Sigbus);
            }
            let phys = b.core.phys_of(pgoff * PAGE_SIZE).ok_or(VmFault::Sigbus)?;
            vma.insert_pfn(pgoff, phys).map_err(|_| VmFault::Sigbus)
        };
        match kind {
            MmapFault::MemoryLock => {
                // A device gone for good left its buffers revoked for good.
                let Some(v) = vdev.as_ref().and_then(Weak::upgrade) else {
                    return Err(VmFault::Sigbus);
                };
                let _mem = v.memory_lock.lock("vfio_pci_dma_buf_mmap_fault");
                insert()
            }
            MmapFault::DmaResvLock => {
                let _g = crate::host::lock_resv(&resv);
                insert()
            }
            MmapFault::Unlocked => insert(),
        }
    });
    let name = format!("dmabuf:{}", buf.ino());
    let m = p
        .core
        .host
        .platform()
        .mmap(&name, accessor, pages, handler, None)
        .map_err(|e| VfioError::Mmap { errno: e.errno() })?;
    // Known to the buffer's zap from now on; a buffer whose device is gone
    // is revoked for good and never zapped again.
    let vdev = p.vdev.lock().clone().and_then(|w| w.upgrade());
    if let Some(v) = vdev {
        let mut mem = v.memory_lock.lock("vfio_pci_dma_buf_mmap");
        if !mem.closed {
            mem.dmabuf_maps.push((Arc::downgrade(&p), m.clone()));
        }
    }
    trace_event!(
        "vfio_pci_dma_buf_mmap",
        "ino={:#x} vma={} pages={} fault={}",
        buf.ino(),
        name,
        pages,
        kind.name()
    );
    Ok(m)
}

struct MemState {
    dmabufs: Vec<Arc<VfioDmaBuf>>,
    /// The device fd's mmaps of BARs.
    cpu_maps: Vec<CpuMapping>,
    /// Userspace mmaps of the dma-bufs themselves (with a protocol that
    /// has `mmap`), by buffer: what the buffer's `unmap_mapping_range`
    /// zaps besides `cpu_maps`.
    dmabuf_maps: Vec<(Weak<VfioDmaBuf>, CpuMapping)>,
    closed: bool,
}

impl MemState {
    /// The dma-buf mmaps of buffer `p` (a plain list walk: no lock, no
    /// scheduling point).
    fn maps_of(&self, p: &Arc<VfioDmaBuf>) -> Vec<CpuMapping> {
        self.dmabuf_maps
            .iter()
            .filter(|(b, _)| std::ptr::eq(b.as_ptr(), Arc::as_ptr(p)))
            .map(|(_, m)| m.clone())
            .collect()
    }
}

struct VfioInner {
    host: Host,
    pdev: PciDevice,
    protocol: Arc<Protocol>,
    owner: Accessor,
    exporter: ExporterId,
    /// `vdev->memory_lock` (write side), class [`MEMORY_LOCK_CLASS`].
    memory_lock: ClassMutex<MemState>,
    /// The revoke observer and the kernel WARNs.
    report: Reporter,
    revokes: AtomicU64,
    unrevokes: AtomicU64,
}

impl VfioInner {
    fn warn(&self, ino: u64, msg: &str) {
        self.report.warn(ino, msg);
    }
}

/// A PCI device bound to vfio-pci, opened by a VMM (cheap to clone handle).
#[derive(Clone)]
pub struct VfioPciDevice(Arc<VfioInner>);

impl fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VfioPciDevice({} {})",
            self.0.pdev.name(),
            self.0.protocol.name
        )
    }
}

impl VfioPciDevice {
    /// Binds `pdev` to vfio-pci with a revoke protocol, registering it as
    /// an exporter with the monitor.
    pub fn bind(host: &Host, pdev: PciDevice, protocol: Arc<Protocol>) -> Result<Self, VfioError> {
        let name = format!("vfio-pci:{}", pdev.name());
        let owner = Accessor::new(&name);
        let exporter = host.monitor().register_exporter(&name, &owner)?;
        Ok(Self(Arc::new(VfioInner {
            host: host.clone(),
            pdev,
            protocol,
            owner,
            exporter,
            memory_lock: ClassMutex::new(
                &MEMORY_LOCK_CLASS,
                MemState {
                    dmabufs: Vec::new(),
                    cpu_maps: Vec::new(),
                    dmabuf_maps: Vec::new(),
                    closed: false,
                },
            ),
            report: Reporter::new(),
            revokes: AtomicU64::new(0),
            unrevokes: AtomicU64::new(0),
        })))
    }

    /// The PCI device.
    pub fn pci_device(&self) -> &PciDevice {
        &self.0.pdev
    }

    /// The revoke protocol.
    pub fn protocol(&self) -> &Arc<Protocol> {
        &self.0.protocol
    }

    /// Kernel WARNs so far (refcount_t misuse, timed-out waits).
    pub fn warnings(&self) -> Vec<String> {
        self.0.report.warnings()
    }

    /// The monitor's id of this exporter.
    pub fn exporter_id(&self) -> ExporterId {
        self.0.exporter
    }

    /// The accessor identity of the exporter's own accesses.
    pub fn owner(&self) -> &Accessor {
        &self.0.owner
    }

    /// Reports revoke progress to `obs` from now on.
    pub fn set_revoke_observer(&self, obs: Option<RevokeObserver>) {
        self.0.report.set_observer(obs);
    }

    /// Buffers still linked to the device.
    pub fn dmabufs(&self) -> Vec<Arc<VfioDmaBuf>> {
        self.0.memory_lock.lock("vfio_pci dmabufs").dmabufs.clone()
    }

    /// Revokes and un-revokes performed (buffers, not triggers).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.revokes.load(Ordering::Relaxed),
            self.0.unrevokes.load(Ordering::Relaxed),
        )
    }

    /// Whether the device fd was closed.
    pub fn is_closed(&self) -> bool {
        self.0.memory_lock.lock("vfio_pci is_closed").closed
    }

    fn dev_name(&self) -> String {
        self.0.pdev.name().to_owned()
    }

    /// `__vfio_pci_memory_enabled`: decoding, in D0, not in reset, present.
    pub fn memory_enabled(&self) -> bool {
        let s = self.0.pdev.state();
        s.memory_decode && s.power == PowerState::D0 && !s.in_reset && !s.unplugged
    }

    fn pci_err(&self, source: PciError) -> VfioError {
        VfioError::Pci {
            device: self.dev_name(),
            source,
        }
    }

    /// Runs `f` with `memory_lock` held (taken at `site`); file references
    /// it defers are dropped after the lock is released.
    fn with_memory_lock<R>(
        &self,
        site: &'static str,
        f: impl FnOnce(&mut MemState, &mut Vec<DmaBuf>) -> R,
    ) -> R {
        let mut deferred = Vec::new();
        let r = {
            let mut mem = self.0.memory_lock.lock(site);
            f(&mut mem, &mut deferred)
        };
        drop(deferred);
        r
    }

    fn check_usable(&self, mem: &MemState) -> Result<(), VfioError> {
        if mem.closed {
            return Err(VfioError::Closed {
                device: self.dev_name(),
            });
        }
        let s = self.0.pdev.state();
        if s.unplugged {
            return Err(VfioError::DeviceGone {
                device: self.dev_name(),
            });
        }
        if s.in_reset {
            return Err(self.pci_err(PciError::InReset {
                name: self.dev_name(),
            }));
        }
        Ok(())
    }

    /// `VFIO_DEVICE_FEATURE` on the device fd: `PROBE` answers 0; `GET` of
    /// `DMA_BUF` exports the ranges and installs a new fd in `proc`.
    pub fn device_feature(&self, proc: &Process, payload: &[u8]) -> Result<i32, VfioError> {
        let req = match vfio_uapi::parse(payload).map_err(|errno| VfioError::Feature { errno })? {
            FeatureCall::Probe => return Ok(0),
            FeatureCall::GetDmaBuf(r) => r,
        };
        let (buf, open_flags) =
            self.with_memory_lock(
                "vfio_pci_core_feature_dma_buf",
                |mem, _| -> Result<_, VfioError> {
                    if mem.closed || !self.0.pdev.is_present() {
                        return Err(VfioError::DeviceGone {
                            device: self.dev_name(),
                        });
                    }
                    let bar = self.0.pdev.bar(req.region_index as u8).ok_or_else(|| {
                        VfioError::NoBar {
                            device: self.dev_name(),
                            index: req.region_index,
                        }
                    })?;
                    let phys =
                        vfio_uapi::fill_phys(&req.ranges, bar.addr, bar.size).map_err(|errno| {
                            VfioError::Range {
                                device: self.dev_name(),
                                index: req.region_index,
                                size: bar.size,
                                errno,
                            }
                        })?;
                    // Trace arguments must not touch the shim (a scheduling point
                    // that only exists with tracing on would change the schedule).
                    let revoked = !self.memory_enabled();
                    let priv_ = Arc::new_cyclic(|me| VfioDmaBuf {
                        me: me.clone(),
                        core: PhysExport::new(PhysExportInfo {
                            host: self.0.host.clone(),
                            protocol: self.0.protocol.clone(),
                            exporter: self.0.exporter,
                            provider: self.0.pdev.id(),
                            phys,
                            size: req.size,
                            revocable: Revocable::with_warn_sink(revoked, {
                                let (me, v) = (me.clone(), Arc::downgrade(&self.0));
                                Arc::new(move |msg: &str| {
                                    let ino = me
                                        .upgrade()
                                        .and_then(|b: Arc<VfioDmaBuf>| b.ino())
                                        .unwrap_or(0);
                                    if let Some(v) = v.upgrade() {
                                        v.warn(ino, msg);
                                    }
                                })
                            }),
                            who: "vfio",
                            revoked_event: "vfio_pci_dma_buf_revoked",
                        }),
                        owner_dev: Arc::downgrade(&self.0),
                        perm: dmabuf_core::sync::atomic::AtomicBool::new(false),
                        vdev: Mutex::new(Some(Arc::downgrade(&self.0))),
                        dmabuf: Mutex::new(None),
                    });
                    let buf = dma_buf::export(ExportInfo {
                        exp_name: EXP_NAME.into(),
                        size: req.size,
                        flags: req.open_flags,
                        resv: None,
                        ops: priv_.clone(),
                    })?;
                    *priv_.dmabuf.lock() = Some(buf.downgrade());
                    self.0.host.register_buffer(buf.ino(), self.0.exporter);
                    mem.dmabufs.push(priv_);
                    trace_event!(
                        "vfio_pci_dma_buf_export",
                        "dev={} ino={} bar={} size={:#x} revoked={}",
                        self.dev_name(),
                        buf.ino(),
                        req.region_index,
                        req.size,
                        revoked
                    );
                    Ok((buf, req.open_flags))
                },
            )?;
        // Outside memory_lock: a failed install drops the last reference,
        // whose release takes memory_lock.
        proc.dma_buf_fd(buf, open_flags).map_err(VfioError::Fd)
    }

    /// Exports `ranges` of BAR `region_index` (builds the ABI payload).
    pub fn export_dma_buf(
        &self,
        proc: &Process,
        region_index: u32,
        ranges: &[DmaRange],
        open_flags: u32,
    ) -> Result<i32, VfioError> {
        let flags = vfio_uapi::VFIO_DEVICE_FEATURE_GET | vfio_uapi::VFIO_DEVICE_FEATURE_DMA_BUF;
        let payload = vfio_uapi::encode(flags, region_index, open_flags, 0, ranges);
        self.device_feature(proc, &payload)
    }

    /// `vfio_pci_dma_buf_move`, with `memory_lock` held by the caller.
    fn dma_buf_move(
        &self,
        mem: &mut MemState,
        deferred: &mut Vec<DmaBuf>,
        revoked: bool,
        report: &mut TriggerReport,
    ) {
        let obs = self.0.report.observer();
        for p in mem.dmabufs.clone() {
            let Some(file) = p.dmabuf.lock().clone().and_then(|r| r.get_file_active()) else {
                continue;
            };
            if !revoked && p.perm.load(Ordering::Acquire) {
                // PERM_REVOKED: temporary causes going away do not restore it.
                deferred.push(file);
                continue;
            }
            if p.core.revocable.is_revoked() != revoked {
                let own = mem.maps_of(&p);
                let cpu: [&[CpuMapping]; 2] = [&mem.cpu_maps, &own];
                if revoked {
                    report
                        .revoked
                        .push(p.revoke_one(&file, false, &cpu, obs.as_ref()));
                    self.0.revokes.fetch_add(1, Ordering::Relaxed);
                } else {
                    match p.unrevoke_one(&file, &cpu, obs.as_ref()) {
                        Ok(()) => {
                            report.unrevoked.push(file.ino());
                            self.0.unrevokes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(VfioError::Unrevoke { ino, .. }) => report.unrevoke_refused.push(ino),
                        Err(e) => report.errors.push(e.to_string()),
                    }
                }
            }
            deferred.push(file);
        }
    }

    fn zap_cpu(mem: &MemState) {
        for m in &mem.cpu_maps {
            m.zap_all();
        }
    }

    /// `VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE` (three-state exporter, Matt
    /// Evans' v3 8/9) for every buffer of the device: the protocol's
    /// `permanent` sequence (a buffer a temporary cause already revoked is
    /// already drained: the sequence says what it skips), then the buffer is
    /// `PERM_REVOKED` for good. `Feature(EOPNOTSUPP)` when the protocol has
    /// no permanent revoke.
    pub fn revoke_permanently(&self) -> Result<TriggerReport, VfioError> {
        let Some(seq) = self.0.protocol.permanent.clone() else {
            return Err(VfioError::Feature {
                errno: errno::EOPNOTSUPP,
            });
        };
        self.with_memory_lock("vfio_pci_dma_buf_revoke_feature", |mem, deferred| {
            if mem.closed {
                return Err(VfioError::Closed {
                    device: self.dev_name(),
                });
            }
            let obs = self.0.report.observer();
            let mut report = TriggerReport::default();
            for p in mem.dmabufs.clone() {
                let Some(file) = p.dmabuf.lock().clone().and_then(|r| r.get_file_active()) else {
                    continue;
                };
                if p.perm.swap(true, Ordering::AcqRel) {
                    deferred.push(file);
                    continue;
                }
                report.revoked.push(p.revoke_with(
                    &file,
                    &seq,
                    false,
                    &[&mem.cpu_maps, &mem.maps_of(&p)],
                    obs.as_ref(),
                ));
                self.0.revokes.fetch_add(1, Ordering::Relaxed);
                trace_event!("vfio_pci_dma_buf_perm_revoked", "ino={:#x}", file.ino());
                deferred.push(file);
            }
            Ok(report)
        })
    }

    /// A config write of `PCI_COMMAND_MEMORY`: clearing it revokes first,
    /// setting it un-revokes after.
    pub fn set_memory_decode(&self, on: bool) -> Result<TriggerReport, VfioError> {
        self.with_memory_lock(
            "vfio_basic_config_write PCI_COMMAND_MEMORY",
            |mem, deferred| {
                self.check_usable(mem)?;
                let mut report = TriggerReport::default();
                if on {
                    self.0
                        .pdev
                        .set_memory_decode(true)
                        .map_err(|e| self.pci_err(e))?;
                    if self.memory_enabled() {
                        self.dma_buf_move(mem, deferred, false, &mut report);
                    }
                } else {
                    Self::zap_cpu(mem);
                    self.dma_buf_move(mem, deferred, true, &mut report);
                    if let Err(e) = self.0.pdev.set_memory_decode(false) {
                        report.errors.push(self.pci_err(e).to_string());
                    }
                }
                Ok(report)
            },
        )
    }

    /// A power transition: D3hot revokes first; D0 un-revokes after, if
    /// decoding.
    pub fn set_power_state(&self, p: PowerState) -> Result<TriggerReport, VfioError> {
        self.with_memory_lock("vfio_pci_set_power_state", |mem, deferred| {
            self.check_usable(mem)?;
            let mut report = TriggerReport::default();
            match p {
                PowerState::D3hot => {
                    Self::zap_cpu(mem);
                    self.dma_buf_move(mem, deferred, true, &mut report);
                    if let Err(e) = self.0.pdev.set_power_state(PowerState::D3hot) {
                        report.errors.push(self.pci_err(e).to_string());
                    }
                }
                PowerState::D0 => {
                    self.0
                        .pdev
                        .set_power_state(PowerState::D0)
                        .map_err(|e| self.pci_err(e))?;
                    if self.memory_enabled() {
                        self.dma_buf_move(mem, deferred, false, &mut report);
                    }
                }
            }
            Ok(report)
        })
    }

    /// FLR, `VFIO_DEVICE_RESET` or a hot reset: save config, revoke, reset
    /// (the BAR does not answer for the reset window and loses its
    /// contents), restore config, un-revoke if decoding.
    pub fn reset(&self, kind: ResetKind) -> Result<TriggerReport, VfioError> {
        self.with_memory_lock("vfio_pci_core_ioctl_reset", |mem, deferred| {
            self.check_usable(mem)?;
            let pci = self.0.host.platform().pci();
            let group: Vec<PciDevice> = match (kind, self.0.pdev.switch()) {
                (ResetKind::HotReset, Some(sw)) => pci
                    .devices()
                    .into_iter()
                    .filter(|d| d.switch() == Some(sw) && d.is_present())
                    .collect(),
                _ => vec![self.0.pdev.clone()],
            };
            if let Some(busy) = group.iter().find(|d| d.state().in_reset) {
                return Err(self.pci_err(PciError::InReset {
                    name: busy.name().to_owned(),
                }));
            }
            let saved: Vec<_> = group.iter().map(|d| (d.clone(), d.save_state())).collect();
            let mut report = TriggerReport::default();
            Self::zap_cpu(mem);
            self.dma_buf_move(mem, deferred, true, &mut report);
            let r = match kind {
                ResetKind::Flr | ResetKind::DeviceReset => self.0.pdev.flr(),
                ResetKind::HotReset => pci.hot_reset(self.0.pdev.id()).map(|_| ()),
            };
            if let Err(e) = r {
                report.errors.push(self.pci_err(e).to_string());
                return Ok(report);
            }
            for (d, s) in &saved {
                if let Err(e) = d.restore_state(s) {
                    report.errors.push(self.pci_err(e).to_string());
                }
            }
            if self.memory_enabled() {
                self.dma_buf_move(mem, deferred, false, &mut report);
            }
            Ok(report)
        })
    }

    /// Closing the device fd: `vfio_pci_dma_buf_cleanup` (every buffer is
    /// revoked for good, draining its mappings, and unlinked), then the
    /// device is unbound (unplugged: its BAR range becomes unassigned).
    pub fn close(&self) -> Result<TriggerReport, VfioError> {
        self.with_memory_lock("vfio_pci_dma_buf_cleanup", |mem, deferred| {
            if mem.closed {
                return Err(VfioError::Closed {
                    device: self.dev_name(),
                });
            }
            let obs = self.0.report.observer();
            let mut report = TriggerReport::default();
            Self::zap_cpu(mem);
            if self.0.protocol.disable_before_cleanup {
                // Before d97708701434: vfio_pci_core_disable() (bus master
                // and memory decode off) ran before the dma-bufs were
                // cleaned up, with importers still mapping the BAR.
                trace_event!(
                    "vfio_pci_core_disable",
                    "dev={} before=dma_buf_cleanup",
                    self.dev_name()
                );
                for r in [
                    self.0.pdev.set_bus_master(false),
                    self.0.pdev.set_memory_decode(false),
                ] {
                    if let Err(e) = r {
                        report.errors.push(self.pci_err(e).to_string());
                    }
                }
            }
            for p in std::mem::take(&mut mem.dmabufs) {
                let Some(file) = p.dmabuf.lock().clone().and_then(|r| r.get_file_active()) else {
                    *p.vdev.lock() = None;
                    continue;
                };
                report.revoked.push(p.revoke_one(
                    &file,
                    true,
                    &[&mem.cpu_maps, &mem.maps_of(&p)],
                    obs.as_ref(),
                ));
                self.0.revokes.fetch_add(1, Ordering::Relaxed);
                deferred.push(file);
            }
            for m in mem.cpu_maps.drain(..) {
                m.munmap();
            }
            // The dma-bufs' own mmaps outlive the device fd (their VMAs
            // hold the dma-buf file); the cleanup sequence zapped them, and
            // their buffers are revoked for good, so every later fault
            // answers SIGBUS.
            mem.dmabuf_maps.clear();
            mem.closed = true;
            if self.0.pdev.is_present()
                && let Err(e) = self.0.host.platform().pci().unplug(self.0.pdev.id())
            {
                report.errors.push(self.pci_err(e).to_string());
            }
            trace_event!("vfio_pci_close", "dev={}", self.dev_name());
            Ok(report)
        })
    }

    /// After [`close`](Self::close): plugs a new device named `name` with
    /// BARs at the closed device's addresses, as a driver reload or a new
    /// hot-plugged card would get them.
    pub fn hotplug_replacement(&self, name: &str) -> Result<PciDevice, VfioError> {
        if !self.is_closed() {
            return Err(VfioError::StillBound {
                device: self.dev_name(),
            });
        }
        let mut cfg = DeviceConfig::new(name);
        if let Some(sw) = self.0.pdev.switch() {
            cfg = cfg.behind_switch(sw);
        }
        for b in self.0.pdev.bars() {
            cfg = cfg.bar_at(b.index, b.size, b.addr);
        }
        self.0
            .host
            .platform()
            .pci()
            .hotplug(cfg)
            .map_err(|e| self.pci_err(e))
    }

    /// `mmap` of BAR `index` through the device fd: PTEs are inserted on
    /// fault while the memory is enabled (checked under `memory_lock`), and
    /// zapped by every revoking trigger.
    pub fn mmap_bar(&self, index: u8, accessor: Accessor) -> Result<CpuMapping, VfioError> {
        let bar = self.0.pdev.bar(index).ok_or_else(|| VfioError::NoBar {
            device: self.dev_name(),
            index: u32::from(index),
        })?;
        let weak = Arc::downgrade(&self.0);
        let handler = Arc::new(move |vma: &CpuMapping, pgoff: u64| -> Result<(), VmFault> {
            let Some(v) = weak.upgrade() else {
                return Err(VmFault::Sigbus);
            };
            let dev = VfioPciDevice(v);
            let mem = dev.0.memory_lock.lock("vfio_pci_mmap_huge_fault");
            if mem.closed || !dev.memory_enabled() {
                return Err(VmFault::Sigbus);
            }
            vma.insert_pfn(pgoff, bar.addr + pgoff * PAGE_SIZE)
                .map_err(|_| VmFault::Sigbus)
        });
        let name = format!("{}:bar{index}", self.dev_name());
        let m = self
            .0
            .host
            .platform()
            .mmap(&name, accessor, bar.size / PAGE_SIZE, handler, None)
            .map_err(|e| VfioError::DmaBuf(DmaBufError::errno(e.errno(), e.to_string())))?;
        self.with_memory_lock("vfio_pci_core_mmap", |mem, _| {
            if mem.closed {
                m.munmap();
                return Err(VfioError::Closed {
                    device: self.dev_name(),
                });
            }
            mem.cpu_maps.push(m.clone());
            Ok(m)
        })
    }
}
