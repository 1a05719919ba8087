//! A revocable dma-buf over device MMIO: what every exporter of PCI BAR
//! ranges shares, whichever subsystem exports them. In the kernel both
//! VFIO (`drivers/vfio/pci/vfio_pci_dmabuf.c`) and the RDMA uverbs DMABUF
//! object (commit 0ac6f4056c4a, "RDMA/uverbs: Add DMABUF object type and
//! operations") describe a buffer as physical ranges of a P2P provider
//! (`struct dma_buf_phys_vec`, `struct p2pdma_provider`) and build the
//! importer's table with the same helper (`dma_buf_phys_vec_to_sgt`,
//! `drivers/dma-buf/dma-buf-mapping.c`); both revoke by marking the buffer
//! revoked and notifying importers. Here they also share the revoke
//! sequence's interpreter ([`Revocable::run`]) and its reporting.
//!
//! | piece | what | used by |
//! |---|---|---|
//! | [`PhysExport`] | one buffer: its ranges, provider, protocol, revoke state | [`crate::vfio::VfioDmaBuf`], [`crate::rdma_export::UverbsDmaBuf`] |
//! | [`PhysExport::map`] / [`PhysExport::unmap`] | `map_dma_buf` / `unmap_dma_buf` over the ranges: bus addresses or DMA-API IOVAs by `pci_p2pdma_distance`, one live mapping counted | both |
//! | [`PhysExport::revoke_with`] | one buffer's revoke: a sequence of the protocol, observer events, the monitor's stamps | both |
//! | [`BufferRevoke`], [`RevokeEvent`], [`TriggerReport`] | what a revoke did, as it happens and at the end of a trigger | the world runner, the soak |
//!
//! # The exporter's points of a sequence ([`MoveHooks`])
//!
//! | point | what happens |
//! |---|---|
//! | the fence point (the last fence wait, else the first unlock) | the monitor learns it (`fences_done`: writes there are `WriteAfterFences` from now on); the observer gets [`RevokeEvent::FencesDone`] |
//! | `unmap_mapping_range` | every CPU mapping the exporter handed in is zapped: the device's own mmaps of the memory, then the buffer's dma-buf mmaps |
//! | `clear_revoked` | the monitor learns of the un-revoke at once (maps succeed from here on) |
//!
//! # Lock rules
//!
//! The caller holds its device lock (VFIO's `memory_lock`, uverbs'
//! `hw_destroy_rwsem`) across a revoke; the sequence takes the reservation
//! lock only through its own steps. Nothing here takes the device lock.

use crate::dma_api;
use crate::host::Host;
use dmabuf_core::dma_buf::{Attachment, DmaBuf, DmaBufError, SgEntry, SgTable};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::revoke::{Protocol, Revocable, SeqOutcome, Sequence, SequenceHooks};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_core::trace_event;
use dmabuf_platform::{CpuMapping, DeviceId, ExporterId, IommuPerm, P2pType, PhysRange};

/// What one buffer's revoke did (steps 1–8 of the VFIO module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferRevoke {
    /// The buffer.
    pub ino: u64,
    /// It was already revoked (cleanup after an earlier trigger).
    pub already_revoked: bool,
    /// Attachments notified in step 4.
    pub notified: usize,
    /// Mappings counted live after step 6.
    pub live_after_fences: usize,
    /// Every mapping was unmapped before returning.
    pub drained: bool,
    /// When step 2 began.
    pub began_ns: u64,
    /// When step 8 happened.
    pub returned_ns: u64,
    /// Monitor sequence of `fences_done`.
    pub fences_done_seq: u64,
    /// Monitor sequence of `revoke_returned`.
    pub returned_seq: u64,
    /// Mappings the monitor still counted live at step 8.
    pub live_mappings_at_return: i64,
}

/// Revoke progress, reported as it happens (the world runner records it
/// even if a later step never completes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeEvent {
    /// Step 2 of a buffer's revoke begins.
    Begin {
        /// The buffer.
        ino: u64,
        /// When.
        ns: u64,
    },
    /// The fence point of the sequence passed (reported when it happens).
    FencesDone {
        /// The buffer.
        ino: u64,
        /// Monitor sequence.
        seq: u64,
    },
    /// Step 8: the revoke returned.
    Returned(BufferRevoke),
    /// A kernel WARN (refcount_t misuse, a timed-out wait).
    Warn(String),
    /// An un-revoke of a buffer begins.
    UnrevokeBegin {
        /// The buffer.
        ino: u64,
    },
    /// An un-revoke completed.
    Unrevoked {
        /// The buffer.
        ino: u64,
        /// Monitor sequence.
        seq: u64,
    },
}

/// Receives [`RevokeEvent`]s.
pub type RevokeObserver = Arc<dyn Fn(&RevokeEvent) + Send + Sync>;

/// What a trigger did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriggerReport {
    /// Buffers revoked, in order.
    pub revoked: Vec<BufferRevoke>,
    /// Buffers un-revoked.
    pub unrevoked: Vec<u64>,
    /// Buffers whose un-revoke was refused because a mapping from before
    /// the revoke is still live (they stay revoked; a later un-revoke may
    /// succeed once it is unmapped).
    pub unrevoke_refused: Vec<u64>,
    /// Steps that failed after the revoke (the buffers stay revoked).
    pub errors: Vec<String>,
}

/// Where a device's revoke progress and WARNs go: the observer the world
/// runner installs, and the list of WARN lines (a diagnostic record: never
/// a scheduling point).
pub(crate) struct Reporter {
    observer: Mutex<Option<RevokeObserver>>,
    warnings: parking_lot::Mutex<Vec<String>>,
}

impl Reporter {
    pub(crate) fn new() -> Self {
        Self {
            observer: Mutex::new(None),
            warnings: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The observer, if any.
    pub(crate) fn observer(&self) -> Option<RevokeObserver> {
        self.observer.lock().clone()
    }

    pub(crate) fn set_observer(&self, obs: Option<RevokeObserver>) {
        *self.observer.lock() = obs;
    }

    /// WARNs so far.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// A kernel WARN about buffer `ino`: recorded and reported.
    pub(crate) fn warn(&self, ino: u64, msg: &str) {
        let line = format!("WARN: dma-buf ino {ino:#x}: {msg}");
        self.warnings.lock().push(line.clone());
        let obs = self.observer();
        if let Some(o) = obs {
            o(&RevokeEvent::Warn(line));
        }
    }
}

/// One exported buffer of device MMIO: its physical ranges, the P2P
/// provider they belong to, the exporter's protocol and the revoke state
/// (`revoked`, `kref`, `comp` as a [`Revocable`]).
pub struct PhysExport {
    pub(crate) host: Host,
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) exporter: ExporterId,
    pub(crate) provider: DeviceId,
    pub(crate) phys: Vec<(u64, u64)>,
    pub(crate) size: u64,
    pub(crate) revocable: Revocable,
    /// The exporter's name in error messages (`vfio`, `uverbs dmabuf`).
    who: &'static str,
    /// The trace event of a returned revoke.
    revoked_event: &'static str,
}

impl std::fmt::Debug for PhysExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "size={:#x} ranges={} {:?}",
            self.size,
            self.phys.len(),
            self.revocable
        )
    }
}

/// The fixed parts of a [`PhysExport`].
pub(crate) struct PhysExportInfo {
    pub host: Host,
    pub protocol: Arc<Protocol>,
    pub exporter: ExporterId,
    pub provider: DeviceId,
    pub phys: Vec<(u64, u64)>,
    pub size: u64,
    pub revocable: Revocable,
    pub who: &'static str,
    pub revoked_event: &'static str,
}

impl PhysExport {
    pub(crate) fn new(i: PhysExportInfo) -> Self {
        Self {
            host: i.host,
            protocol: i.protocol,
            exporter: i.exporter,
            provider: i.provider,
            phys: i.phys,
            size: i.size,
            revocable: i.revocable,
            who: i.who,
            revoked_event: i.revoked_event,
        }
    }

    /// Whether the buffer is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revocable.is_revoked()
    }

    /// Mappings counted live.
    pub fn live_mappings(&self) -> usize {
        self.revocable.live_mappings()
    }

    /// The physical ranges as `(address, length)`.
    pub fn phys(&self) -> &[(u64, u64)] {
        &self.phys
    }

    /// The physical address of byte `offset` of the buffer; `None` past
    /// its end.
    pub fn phys_of(&self, offset: u64) -> Option<u64> {
        let mut o = offset;
        for &(a, l) in &self.phys {
            if o < l {
                return Some(a + o);
            }
            o -= l;
        }
        None
    }

    /// The physical ranges.
    pub fn ranges(&self) -> Vec<PhysRange> {
        self.phys
            .iter()
            .map(|&(a, l)| PhysRange::new(a, l))
            .collect()
    }

    /// `map_dma_buf` (lock held): `ENODEV` while revoked; the sg table
    /// from the physical ranges and `pci_p2pdma_distance` between the
    /// provider and the importer's device (`dev`, asked after the revoked
    /// check): `BusAddr` → bus addresses; `ThruHostBridge` → an IOVA in
    /// the importer's DMA-API domain (or the physical address when it has
    /// none); anything else → `EINVAL`. Counts one live mapping.
    pub(crate) fn map(
        &self,
        attach: &Attachment,
        dev: impl FnOnce() -> Option<DeviceId>,
        guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        let who = self.who;
        if self.revocable.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                format!("{who} map_dma_buf: revoked"),
            ));
        }
        let dev = dev().ok_or_else(|| {
            DmaBufError::errno(
                errno::EINVAL,
                format!("{who} map_dma_buf: no device {}", attach.dev()),
            )
        })?;
        let kind = self.host.platform().pci().p2p_distance(self.provider, dev);
        let mut entries = Vec::with_capacity(self.phys.len());
        for &(paddr, len) in &self.phys {
            let dma_addr = match kind {
                P2pType::BusAddr => Ok(paddr),
                P2pType::ThruHostBridge => {
                    dma_api::map_phys(&self.host, dev, paddr, len, IommuPerm::RW)
                        .map_err(|e| DmaBufError::errno(e.errno(), e.to_string()))
                }
                P2pType::NotSupported => Err(DmaBufError::errno(
                    errno::EINVAL,
                    format!("{who} map_dma_buf: {} cannot reach the BAR", attach.dev()),
                )),
            };
            match dma_addr {
                Ok(a) => entries.push(SgEntry { dma_addr: a, len }),
                Err(e) => {
                    dma_api::unmap_entries(&self.host, dev, &entries);
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.revocable.map_get(guard) {
            dma_api::unmap_entries(&self.host, dev, &entries);
            return Err(e);
        }
        Ok(SgTable { entries })
    }

    /// `unmap_dma_buf` (lock held): unmaps the IOVAs, drops the count; the
    /// last unmap completes a draining revoke.
    pub(crate) fn unmap(&self, dev: Option<DeviceId>, sgt: &SgTable) {
        if let Some(dev) = dev {
            dma_api::unmap_entries(&self.host, dev, &sgt.entries);
        }
        self.revocable.map_put();
    }

    /// One buffer's revoke with sequence `seq`: the observer hears of its
    /// beginning, `before` runs (VFIO's cleanup unlinks the buffer from its
    /// device there), the sequence runs with `cpu` as the CPU mappings its
    /// `unmap_mapping_range` zaps, then the monitor learns that the revoke
    /// returned and the observer gets the [`BufferRevoke`]. A sequence that
    /// fails (the lock cannot be taken) is reported to `warn`.
    pub(crate) fn revoke_with(
        &self,
        file: &DmaBuf,
        seq: &Sequence,
        cpu: &[&[CpuMapping]],
        obs: Option<&RevokeObserver>,
        before: &dyn Fn(),
        warn: &dyn Fn(&str),
    ) -> BufferRevoke {
        let mon = self.host.monitor();
        let began_ns = dmabuf_core::sync::time::now_ns();
        if let Some(o) = obs {
            o(&RevokeEvent::Begin {
                ino: file.ino(),
                ns: began_ns,
            });
        }
        before();
        let mut hooks = MoveHooks::new(self, cpu, obs, file.ino());
        let out = match self.revocable.run(seq, file, &mut hooks) {
            Ok(o) => o,
            Err(e) => {
                warn(&format!("revoke sequence failed: {e}"));
                SeqOutcome::default()
            }
        };
        if !hooks.fences_done {
            // A sequence without a lock or a wait: its fence point is its end.
            hooks.fences_done();
        }
        let fences_done_seq = hooks.fences_done_seq;
        let live_mappings_at_return = mon.live_mappings();
        let returned_seq = mon
            .revoke_returned(self.exporter, &self.ranges())
            .unwrap_or(0);
        let r = BufferRevoke {
            ino: file.ino(),
            already_revoked: out.was_revoked,
            notified: out.notified,
            live_after_fences: usize::try_from(out.live_after_fences).unwrap_or(0),
            drained: self.revocable.live_mappings() == 0,
            began_ns,
            returned_ns: dmabuf_core::sync::time::now_ns(),
            fences_done_seq,
            returned_seq,
            live_mappings_at_return,
        };
        trace_event!(
            self.revoked_event,
            "ino={:#x} protocol={} notified={} drained={} live_at_return={}",
            r.ino,
            self.protocol.name,
            r.notified,
            r.drained,
            r.live_mappings_at_return
        );
        if let Some(o) = obs {
            o(&RevokeEvent::Returned(r.clone()));
        }
        r
    }
}

/// The exporter's own points of a sequence (module table).
pub(crate) struct MoveHooks<'a> {
    buf: &'a PhysExport,
    cpu: &'a [&'a [CpuMapping]],
    pub(crate) fences_done_seq: u64,
    pub(crate) fences_done: bool,
    obs: Option<&'a RevokeObserver>,
    ino: u64,
    /// Monitor sequence of the un-revoke, once the flag was cleared.
    pub(crate) unrevoked_seq: Option<u64>,
}

impl<'a> MoveHooks<'a> {
    /// Hooks of a revoke: the fence point is still to come.
    pub(crate) fn new(
        buf: &'a PhysExport,
        cpu: &'a [&'a [CpuMapping]],
        obs: Option<&'a RevokeObserver>,
        ino: u64,
    ) -> Self {
        Self {
            buf,
            cpu,
            fences_done_seq: 0,
            fences_done: false,
            obs,
            ino,
            unrevoked_seq: None,
        }
    }

    /// Hooks of an un-revoke: no fence point to report, no observer.
    pub(crate) fn unrevoke(buf: &'a PhysExport, cpu: &'a [&'a [CpuMapping]], ino: u64) -> Self {
        Self {
            fences_done: true,
            ..Self::new(buf, cpu, None, ino)
        }
    }
}

impl SequenceHooks for MoveHooks<'_> {
    fn fences_done(&mut self) {
        if self.fences_done {
            return;
        }
        self.fences_done = true;
        self.fences_done_seq = self
            .buf
            .host
            .monitor()
            .fences_done(self.buf.exporter, &self.buf.ranges())
            .unwrap_or(0);
        // Reported as it happens: a revoke that then hangs in its unmap wait
        // still has its fence point on record.
        if let Some(o) = self.obs {
            o(&RevokeEvent::FencesDone {
                ino: self.ino,
                seq: self.fences_done_seq,
            });
        }
    }

    fn unmap_mapping_range(&mut self) {
        for maps in self.cpu {
            for m in *maps {
                m.zap_all();
            }
        }
    }

    fn revoked_cleared(&mut self) {
        // Maps succeed from here on: the memory is ordinary again for the
        // monitor now, not when the rest of the sequence has run.
        if let Ok(seq) = self
            .buf
            .host
            .monitor()
            .unrevoke(self.buf.exporter, &self.buf.ranges())
        {
            self.unrevoked_seq = Some(seq);
        }
    }
}
