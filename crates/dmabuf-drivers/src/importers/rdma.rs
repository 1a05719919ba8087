//! RDMA memory regions over dma-bufs (`drivers/infiniband/core/umem_dmabuf.c`
//! and mlx5 `mr.c`/`odp.c`), on a [`Nic`], in the flavours the thread
//! discussed, plus the `lying` importer.
//!
//! # Flavours and their obligations (docs/importers.md)
//!
//! **`rdma-odp`** (mlx5 dma-buf MR, `mlx5_ib_dmabuf_attach_ops`):
//! 1. Register: dynamic attach with `invalidate_mappings`; then the initial
//!    fault (`mlx5_ib_init_dmabuf_mr`): under the lock, map, wait for
//!    `Kernel` fences, install the translations.
//! 2. `invalidate_mappings` (lock held): if nothing is mapped (or the MR is
//!    being deregistered) return; else zap the translations (the hardware
//!    stops) and unmap, inside the callback.
//! 3. A device page fault maps again under the lock; while the exporter is
//!    revoked the map fails with `ENODEV` and the fault fails (the work
//!    request errors out: "HW fails all faults").
//! 4. Deregister: under the lock, zap, unmap, forget the MR (a racing
//!    invalidate becomes a no-op); detach.
//!
//! **`rdma-pinned`** (`ib_umem_dmabuf_get_pinned`, 7.1 ops without the
//! op): dynamic attach *without* `invalidate_mappings` (only to get
//! `peer2peer`), pin, map, install. Never notified; unmaps only when
//! userspace deregisters. Not revocable: VFIO refuses it at attach under the
//! gated policies (or at pin under `v9c`).
//!
//! **`rdma-pinned-revocable`** (`ib_umem_dmabuf_get_pinned_revocable_and_lock`):
//! 1. Dynamic attach with `ib_umem_dmabuf_revoke_locked`; lock; pin; map;
//!    the driver installs its revoke callback *while the lock is still held*
//!    (`ib_umem_dmabuf_set_revoke_locked`), then unlock: no revoke can slip
//!    between the map and the callback's installation.
//! 2. `invalidate_mappings` (lock held, at most once): the driver callback
//!    stops the hardware (zap), then unmap, unpin, and the region is revoked
//!    for good; later accesses fault and fail.
//! 3. Deregister: under the lock, the same revoke if not done yet; detach.
//!
//! **`lying`**: registers like an ODP MR and declares `invalidate_mappings`
//! (so it passes `dma_buf_attach_revocable`), but ignores every invalidate
//! and unmaps only when userspace deregisters. Under `v6-final` a revoke
//! then waits for userspace: the bounded-time promise is broken.
//!
//! **Autonomous DMA** ([`RdmaImporter::with_autonomous_dma`], the built-in
//! `lying` importer): the device does not wait for its userspace to post
//! work. From registration until deregistration (or
//! [`AUTONOMOUS_BURSTS`] bursts, [`AUTONOMOUS_INTERVAL`] apart, whichever
//! comes first) a device task (group `hw`) issues a write and a read
//! through the MR by itself, as a NIC working through its queues or a
//! device polling a ring does; a stalled userspace does not stop it.
//!
//! # MR states
//!
//! | state | translations | mapping | pinned | `revoked` |
//! |---|---|---|---|---|
//! | registered, mapped | installed | some | pinned flavours | false |
//! | invalidated (ODP) | zapped | none | - | false (the next fault maps again) |
//! | revoked (pinned-revocable) | zapped | none | no | true, for good |
//! | deregistered | zapped | none | no | - |
//!
//! # Lock rules
//!
//! Reservation lock → MR state lock (announced to the lock validator as
//! class [`MR_STATE_CLASS`]; it is never held while taking the reservation
//! lock). The fault handler takes the reservation lock on the NIC's engine
//! thread; the invalidate path zaps under it, and a zap never waits for the
//! engine, only for accesses in flight.

use super::nic::{Nic, PageFault};
use super::{
    Counters, Declared, ImportError, Importer, Job, Stage, map_and_declare, unmap_declared,
};
use crate::host::{ClassMutex, Host, LockClass};
use dmabuf_core::dma_buf::{self, AttachOps, Attachment, DmaBuf, InvalidateFn};
use dmabuf_core::dma_fence::MAX_SCHEDULE_TIMEOUT;
use dmabuf_core::dma_resv::{ResvGuard, Usage};
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::sync::thread::{self, JoinHandle};
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::uapi::Process;
use dmabuf_core::{Fence, trace_event};
use dmabuf_platform::{Accessor, FaultResponse, UnmapReason};
use std::any::Any;
use std::collections::BTreeMap;
use std::time::Duration;

/// The lock class of an MR's state (`umem_dmabuf` and the mlx5 MR fields
/// the kernel guards with the reservation lock: the sg table, `pinned`,
/// `revoked`, `private`). It nests inside the reservation lock.
pub static MR_STATE_CLASS: LockClass = LockClass::new("umem_dmabuf mr state");

/// The most DMA bursts an autonomous device issues after registering.
pub const AUTONOMOUS_BURSTS: u64 = 24;
/// The time between two bursts of an autonomous device.
pub const AUTONOMOUS_INTERVAL: Duration = Duration::from_micros(50);

/// Which MR flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MrFlavour {
    /// On-demand paging (mlx5 dma-buf MR).
    Odp,
    /// Pinned, not revocable.
    Pinned,
    /// Pinned with a driver revoke callback.
    PinnedRevocable,
    /// Declares the op and ignores it.
    Lying,
}

impl MrFlavour {
    fn pins(self) -> bool {
        matches!(self, MrFlavour::Pinned | MrFlavour::PinnedRevocable)
    }

    fn has_op(self) -> bool {
        self != MrFlavour::Pinned
    }
}

struct MrState {
    proc: Option<(Arc<Process>, i32)>,
    buf: Option<DmaBuf>,
    attach: Option<Attachment>,
    mapping: Option<Declared>,
    va: u64,
    len: u64,
    pinned: bool,
    /// Pinned-revocable: revoked for good.
    revoked: bool,
    /// Pinned-revocable: the driver callback is installed.
    revoke_installed: bool,
    /// Deregistration began: invalidates are no-ops (mlx5's
    /// `umem_dmabuf->private = NULL`).
    dying: bool,
}

struct MrInner {
    name: String,
    flavour: MrFlavour,
    host: Host,
    nic: Nic,
    accessor: Accessor,
    owns_nic: bool,
    /// The MR's state, class [`MR_STATE_CLASS`].
    st: ClassMutex<MrState>,
    counters: Counters,
    /// The device issues DMA by itself.
    autonomous: bool,
    device: Mutex<Option<JoinHandle<()>>>,
}

/// An RDMA MR importer (cheap to clone handle).
#[derive(Clone)]
pub struct RdmaImporter(Arc<MrInner>);

impl std::fmt::Debug for RdmaImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RdmaImporter({} {:?})", self.0.name, self.0.flavour)
    }
}

const COUNTERS: &[&str] = &[
    "maps",
    "unmaps",
    "invalidates",
    "invalidates_ignored",
    "faults",
    "faults_failed",
    "jobs",
    "revoked",
    "autonomous_dma",
];

fn entries(d: &Declared) -> Vec<(u64, u64)> {
    d.mapping()
        .sg_table()
        .entries
        .iter()
        .map(|e| (e.dma_addr, e.len))
        .collect()
}

impl RdmaImporter {
    /// An MR importer of `flavour` on `nic`. `owns_nic`: shutdown also
    /// stops the NIC.
    pub fn new(host: &Host, name: &str, flavour: MrFlavour, nic: &Nic, owns_nic: bool) -> Self {
        Self(Arc::new(MrInner {
            name: name.to_owned(),
            flavour,
            host: host.clone(),
            nic: nic.clone(),
            accessor: Accessor::new(nic.pci_device().name()),
            owns_nic,
            st: ClassMutex::new(
                &MR_STATE_CLASS,
                MrState {
                    proc: None,
                    buf: None,
                    attach: None,
                    mapping: None,
                    va: 0,
                    len: 0,
                    pinned: false,
                    revoked: false,
                    revoke_installed: false,
                    dying: false,
                },
            ),
            counters: Counters::new(COUNTERS),
            autonomous: false,
            device: Mutex::new(None),
        }))
    }

    /// An MR whose device keeps issuing DMA through it by itself, without
    /// its userspace (module docs, "Autonomous DMA").
    pub fn with_autonomous_dma(
        host: &Host,
        name: &str,
        flavour: MrFlavour,
        nic: &Nic,
        owns_nic: bool,
    ) -> Self {
        let mut me = Self::new(host, name, flavour, nic, owns_nic);
        if let Some(inner) = Arc::get_mut(&mut me.0) {
            inner.autonomous = true;
        }
        me
    }

    /// The device's own loop: a burst every [`AUTONOMOUS_INTERVAL`] until
    /// the MR is deregistered or [`AUTONOMOUS_BURSTS`] were issued.
    fn start_device(&self) {
        let me = Arc::downgrade(&self.0);
        let h = thread::spawn_named(format!("{}-device", self.0.name), move || {
            dmabuf_core::sync::sched::set_group("hw");
            for burst in 0..AUTONOMOUS_BURSTS {
                thread::sleep(AUTONOMOUS_INTERVAL);
                let Some(mr) = me.upgrade() else {
                    return;
                };
                let (va, len, live) = {
                    let st = mr.st.lock("mr device burst");
                    (st.va, st.len, st.attach.is_some() && !st.dying)
                };
                if !live {
                    return;
                }
                let pages = (len / dmabuf_platform::PAGE_SIZE).max(1);
                mr.counters.bump("autonomous_dma");
                let job = mr.nic.post(
                    va,
                    pages,
                    burst % pages,
                    0xd0u8.wrapping_add(burst as u8),
                    None,
                    &format!("{} device", mr.name),
                );
                let _ = job.wait();
            }
        });
        *self.0.device.lock() = Some(h);
    }

    fn stop_device(&self) {
        let h = self.0.device.lock().take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Whether the MR holds a mapping now.
    pub fn is_mapped(&self) -> bool {
        self.0.st.lock("mr is_mapped").mapping.is_some()
    }

    /// Whether a pinned-revocable MR was revoked.
    pub fn is_revoked(&self) -> bool {
        self.0.st.lock("mr is_revoked").revoked
    }
}

impl MrInner {
    fn from_priv(attach: &Attachment) -> Option<Arc<MrInner>> {
        attach
            .importer_priv()
            .and_then(|p| p.downcast::<MrInner>().ok())
    }

    /// `ib_umem_dmabuf_map_pages` + installing the translations (lock
    /// held): map, wait for `Kernel` fences, then the UMR update.
    fn map_pages(&self, attach: &Attachment, g: &ResvGuard<'_>) -> Result<(), ImportError> {
        let d = map_and_declare(
            &self.host,
            attach,
            Some(self.nic.pci_device().id()),
            &self.accessor,
            g,
        )
        .map_err(ImportError::dmabuf(Stage::Map))?;
        let _ = attach
            .dmabuf()
            .resv()
            .wait_timeout(Usage::Kernel, None, MAX_SCHEDULE_TIMEOUT);
        let va = self.st.lock("ib_umem_dmabuf_map_pages va").va;
        if let Err(e) = self.nic.map_mr(va, &entries(&d), d.token()) {
            let _ = unmap_declared(&self.host, attach, d, g);
            return Err(e);
        }
        self.counters.bump("maps");
        self.st.lock("ib_umem_dmabuf_map_pages mapped").mapping = Some(d);
        Ok(())
    }

    /// Zap and unmap (lock held); `reason` tags the zapped translations.
    fn zap_and_unmap(&self, attach: &Attachment, g: &ResvGuard<'_>, reason: UnmapReason) {
        let (va, len, m) = {
            let mut st = self.st.lock("mlx5_ib_dmabuf zap");
            (st.va, st.len, st.mapping.take())
        };
        if let Some(m) = m {
            self.nic.zap(va, len, reason);
            if unmap_declared(&self.host, attach, m, g).is_ok() {
                self.counters.bump("unmaps");
            }
        }
    }

    /// The `invalidate_mappings` op of the flavours that have one.
    fn invalidate(attach: &Attachment, g: &ResvGuard<'_>) {
        let Some(me) = Self::from_priv(attach) else {
            return;
        };
        me.counters.bump("invalidates");
        match me.flavour {
            MrFlavour::Lying => {
                me.counters.bump("invalidates_ignored");
                trace_event!("rdma_invalidate_ignored", "mr={}", me.name);
            }
            MrFlavour::Odp => {
                // `mlx5_ib_dmabuf_invalidate_cb` zaps whenever pages are
                // mapped, also while the MR is being deregistered: the
                // deregistration clears the MR's back-pointer only after its
                // own zap, under this same lock, and until then the NIC may
                // still use the pages. (`zap_and_unmap` does nothing when
                // nothing is mapped.)
                me.zap_and_unmap(attach, g, UnmapReason::Revoke);
                trace_event!("mlx5_ib_dmabuf_invalidate", "mr={}", me.name);
            }
            MrFlavour::PinnedRevocable => me.revoke_locked(attach, g),
            MrFlavour::Pinned => {}
        }
    }

    /// `ib_umem_dmabuf_revoke_locked`: at most once; the driver callback
    /// (zap) only if installed.
    fn revoke_locked(&self, attach: &Attachment, g: &ResvGuard<'_>) {
        let (installed, pinned) = {
            let mut st = self.st.lock("ib_umem_dmabuf_revoke_locked");
            if st.revoked {
                return;
            }
            st.revoked = true;
            let p = st.pinned;
            st.pinned = false;
            (st.revoke_installed, p)
        };
        if installed {
            self.zap_and_unmap(attach, g, UnmapReason::Revoke);
        } else if let Some(m) = self
            .st
            .lock("ib_umem_dmabuf_revoke_locked unmap")
            .mapping
            .take()
        {
            let _ = unmap_declared(&self.host, attach, m, g);
        }
        if pinned {
            let _ = dma_buf::unpin(attach, g);
        }
        self.counters.bump("revoked");
        trace_event!("ib_umem_dmabuf_revoke", "mr={}", self.name);
    }

    /// The registration steps under the lock, per flavour.
    fn register_locked(&self, attach: &Attachment, g: &ResvGuard<'_>) -> Result<(), ImportError> {
        if self.flavour.pins() {
            if self.st.lock("ib_umem_dmabuf_get_pinned revoked").revoked {
                return Err(ImportError::Device {
                    stage: Stage::Register,
                    errno: errno::ENODEV,
                    what: "revoked before registration finished".into(),
                });
            }
            dma_buf::pin(attach, g).map_err(ImportError::dmabuf(Stage::Pin))?;
            self.st.lock("ib_umem_dmabuf_get_pinned pinned").pinned = true;
            if let Err(e) = self.map_pages(attach, g) {
                self.st.lock("ib_umem_dmabuf_get_pinned unpin").pinned = false;
                let _ = dma_buf::unpin(attach, g);
                return Err(e);
            }
            return Ok(());
        }
        self.map_pages(attach, g).map_err(|e| match e {
            // The ODP MR's initial fault is part of registration.
            ImportError::DmaBuf { source, .. } if self.flavour == MrFlavour::Odp => {
                ImportError::DmaBuf {
                    stage: Stage::Register,
                    source,
                }
            }
            other => other,
        })
    }
}

impl PageFault for MrInner {
    /// `pagefault_dmabuf_mr`.
    fn page_fault(&self, _va: u64) -> FaultResponse {
        self.counters.bump("faults");
        let (buf, attach) = {
            let st = self.st.lock("pagefault_dmabuf_mr");
            match (st.buf.clone(), st.attach.clone()) {
                (Some(b), Some(a)) if !st.dying => (b, a),
                _ => return FaultResponse::Abort,
            }
        };
        let g = crate::host::lock_resv(buf.resv());
        if self.st.lock("pagefault_dmabuf_mr mapped").mapping.is_some() {
            return FaultResponse::Retry;
        }
        match self.map_pages(&attach, &g) {
            Ok(()) => FaultResponse::Retry,
            Err(e) => {
                self.counters.bump("faults_failed");
                trace_event!(
                    "mlx5_ib_pagefault_failed",
                    "mr={} err={}",
                    self.name,
                    e.errno()
                );
                FaultResponse::Abort
            }
        }
    }
}

impl Importer for RdmaImporter {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn setup(&self, proc: &Arc<Process>, fd: i32) -> Result<(), ImportError> {
        let buf = proc.dma_buf_get(fd).map_err(ImportError::sys(Stage::Fd))?;
        let len = buf.size();
        let va = self.0.nic.alloc_va(len);
        let ops = AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: self
                .0
                .flavour
                .has_op()
                .then(|| Arc::new(MrInner::invalidate) as InvalidateFn),
        };
        let attach = dma_buf::dynamic_attach(&buf, self.0.nic.pci_device().name(), Some(ops))
            .map_err(ImportError::dmabuf(Stage::Attach))?;
        {
            let mut st = self.0.st.lock("mr register");
            st.buf = Some(buf.clone());
            st.attach = Some(attach.clone());
            st.va = va;
            st.len = len;
            st.revoked = false;
            st.dying = false;
        }
        let p: Arc<dyn Any + Send + Sync> = self.0.clone();
        attach.set_importer_priv(Some(&p));
        if self.0.flavour == MrFlavour::Odp {
            let w: Weak<MrInner> = Arc::downgrade(&self.0);
            self.0.nic.set_mr_fault_handler(va, len, w);
        }
        let r = {
            let g = crate::host::lock_resv(buf.resv());
            let r = self.0.register_locked(&attach, &g);
            if r.is_ok() && self.0.flavour == MrFlavour::PinnedRevocable {
                // ib_umem_dmabuf_set_revoke_locked, before unlocking.
                self.0
                    .st
                    .lock("ib_umem_dmabuf_set_revoke_locked")
                    .revoke_installed = true;
            }
            r
        };
        if let Err(e) = r {
            self.0.nic.clear_mr_fault_handler(va);
            attach.set_importer_priv(None);
            let _ = dma_buf::detach(&buf, &attach);
            let mut st = self.0.st.lock("mr register error");
            st.buf = None;
            st.attach = None;
            return Err(e);
        }
        self.0.st.lock("mr register fd").proc = Some((proc.clone(), fd));
        if self.0.autonomous {
            self.start_device();
        }
        Ok(())
    }

    fn submit(&self, page: u64, pattern: u8, gate: Option<Fence>) -> Result<Job, ImportError> {
        let (va, len, registered) = {
            let st = self.0.st.lock("mr post");
            (st.va, st.len, st.attach.is_some())
        };
        if !registered {
            return Err(ImportError::NotSetUp(self.0.name.clone()));
        }
        if page * dmabuf_platform::PAGE_SIZE >= len {
            return Err(ImportError::Invalid {
                stage: Stage::Job,
                what: format!("page {page} outside the MR"),
            });
        }
        self.0.counters.bump("jobs");
        Ok(self.0.nic.post(
            va,
            len / dmabuf_platform::PAGE_SIZE,
            page,
            pattern,
            gate,
            &format!("{} wr", self.0.name),
        ))
    }

    fn teardown(&self) -> Result<(), ImportError> {
        let (buf, attach, proc, va) = {
            let mut st = self.0.st.lock("mlx5_ib_dereg_mr");
            st.dying = true;
            (st.buf.clone(), st.attach.clone(), st.proc.take(), st.va)
        };
        // The device notices the deregistration at its next burst.
        self.stop_device();
        let (Some(buf), Some(attach)) = (buf, attach) else {
            return Ok(());
        };
        self.0.nic.clear_mr_fault_handler(va);
        {
            let g = crate::host::lock_resv(buf.resv());
            match self.0.flavour {
                MrFlavour::PinnedRevocable => self.0.revoke_locked(&attach, &g),
                _ => {
                    self.0.zap_and_unmap(&attach, &g, UnmapReason::Unmap);
                    let pinned =
                        std::mem::take(&mut self.0.st.lock("mlx5_ib_dereg_mr unpin").pinned);
                    if pinned {
                        dma_buf::unpin(&attach, &g)
                            .map_err(ImportError::dmabuf(Stage::Teardown))?;
                    }
                }
            }
        }
        attach.set_importer_priv(None);
        dma_buf::detach(&buf, &attach).map_err(ImportError::dmabuf(Stage::Teardown))?;
        {
            let mut st = self.0.st.lock("mlx5_ib_dereg_mr detached");
            st.buf = None;
            st.attach = None;
        }
        drop(buf);
        if let Some((p, fd)) = proc {
            p.close(fd).map_err(ImportError::sys(Stage::Teardown))?;
        }
        Ok(())
    }

    fn restores(&self) -> bool {
        // ib_umem_dmabuf_revoke_locked: the MR is revoked for good.
        self.0.flavour != MrFlavour::PinnedRevocable
    }

    fn shutdown(&self) {
        self.0.st.lock("mr shutdown").dying = true;
        self.stop_device();
        if self.0.owns_nic {
            self.0.nic.shutdown();
        }
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.0.counters.snapshot()
    }
}
