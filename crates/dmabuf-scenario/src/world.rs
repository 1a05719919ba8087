//! A world: one platform, one exporter, its importers, the userspace that
//! drives them and the revoke trigger, run as a whole. This is the contract
//! between the drivers and the checker: the checker chooses a [`WorldSpec`]
//! and a [`StallMode`], runs [`run_world`] on real threads or inside a
//! controlled execution, and judges the [`Observation`].
//!
//! # Threads and groups
//!
//! | group | threads | stalled in `StallUserspaceAtRevoke` |
//! |---|---|---|
//! | `userspace` | one per importer instance: set up, submit DMA jobs, tear down; the VMM that exported the buffer | yes, from the moment revoke begins (a thread inside a system call finishes it first, see below) |
//! | `revoker` | the thread whose ioctl (FLR, reset, close, ...) runs the exporter's revoke | no |
//! | `kernel` | importer kernel workers (GPU unmap worker, ...); a userspace thread while it is inside a system call | no |
//! | `hw` | DMA engines (threaded), speculative read-ahead, the timer that releases the in-flight jobs | no |
//!
//! Under the controlled scheduler the groups are set with
//! `dmabuf_core::sync::sched::set_group`; on real threads stall mode is not
//! available and `Normal` is the only mode (a stall request is run normally
//! and reported in [`Observation::errors`]).
//!
//! A userspace thread switches to `kernel` for each system call and back to
//! `userspace` when it returns, so a stall takes effect at the return to user
//! mode, as a stopped process still finishes the system call it is in.
//!
//! # Running a world
//!
//! [`run_world`] builds the machine, runs every thread and returns the
//! [`Observation`]; the timeline, the machine and the triggers each
//! exporter supports are in [`crate::runner`]. When a controlled execution
//! may never finish (`l-bounded` runs where revoke waits for a stalled
//! userspace), use [`run_world_with`] and read [`WorldProbe::snapshot`]
//! after the execution ended: the probe is filled as things happen.
//!
//! Only the VFIO exporter revokes: worlds of the system heap and the GPU
//! VRAM exporter leave `revoke_started` false (their triggers are a close
//! and an eviction).

pub use crate::runner::{WorldProbe, run_world, run_world_with};

use dmabuf_core::dma_resv::Usage;
use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::Arc;
use dmabuf_drivers::importers::gpu::{DEFAULT_IDLE_PASSES, GpuConfig, Remap};
use dmabuf_drivers::importers::rdma::MrFlavour;
use dmabuf_platform::{Hazard, ReuseEvent};
use std::collections::BTreeMap;
use std::time::Duration;

/// The most read-ahead passes a GPU importer makes while idle after a job.
pub const MAX_IDLE_PASSES: u32 = 16;

/// Which exporter owns the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExporterKind {
    /// VFIO exporting a PCI BAR range (7.1), with a revoke policy.
    Vfio,
    /// The system heap: RAM pages, static, frees its frames on release.
    SystemHeap,
    /// GPU VRAM: dynamic, evicts and migrates under pressure.
    GpuVram,
    /// An RDMA device exporting its device memory (the uverbs DMABUF
    /// object), with a revoke protocol; revokes for good when the memory
    /// is freed, on disassociate and on close.
    RdmaDm,
}

impl ExporterKind {
    /// Whether it revokes with a protocol (VFIO, RDMA).
    pub fn revokes(self) -> bool {
        matches!(self, ExporterKind::Vfio | ExporterKind::RdmaDm)
    }
}

dmabuf_core::named_enum! {
    /// The driver model an importer is built on; its behaviour fields choose
    /// the variant (see [`ImporterSpec`]).
    ///
    /// `name()`: file name.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum ImporterBase {
        /// `dma_buf_attach`, no ops (v4l2, display, ...).
        Static => "static",
        /// amdgpu/xe-like dynamic importer.
        Gpu => "gpu",
        /// An RDMA MR (mlx5): ODP, pinned, pinned with a revoke callback, or a
        /// liar.
        Rdma => "rdma",
        /// iommufd `IOMMU_IOAS_MAP_FILE`.
        Iommufd => "iommufd",
        /// The test importer module of the real-kernel oracle
        /// (`crates/dmabuf-oracle/kmod/`): runs only in a script scenario
        /// ([`crate::script`]), where its fields select the module's mode.
        Kmod => "kmod",
        /// A process that `mmap`s the dma-buf and touches it with the CPU.
        Cpu => "cpu",
    }
}

/// What an importer's `invalidate_mappings` callback does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnInvalidate {
    /// No callback at all (a static or pinned importer without the op).
    NoOp,
    /// Evicts behind a fence of this usage (page-table update and TLB
    /// flush on the device's engine); unmaps later from a worker.
    Evict(Usage),
    /// Stops the hardware and unmaps inside the callback.
    StopAndUnmap,
    /// Declares the op and ignores it.
    Ignore,
}

/// When an importer gives its mapping back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnmapWhen {
    /// Inside the callback.
    InCallback,
    /// From a kernel worker once its eviction fences signalled, after a
    /// latency.
    WorkerAfterFences,
    /// Only when userspace frees the buffer (deregisters, closes).
    OnFree,
}

/// One importer group of a world: a base model plus behaviour fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImporterSpec {
    /// Name (a matrix column: `gpu`, `rdma-odp`, a file's own name).
    pub name: String,
    /// The driver model.
    pub base: ImporterBase,
    /// The callback.
    pub invalidate: OnInvalidate,
    /// When it unmaps.
    pub unmap: UnmapWhen,
    /// The worker's latency after the fences (GPU).
    pub unmap_latency: Duration,
    /// Re-map policy (GPU).
    pub remap: Remap,
    /// Pins its attachment.
    pub pin: bool,
    /// Misbehaviour: keeps writing after its fences signalled (GPU).
    pub writes_after_fences: bool,
    /// Speculative read-ahead (GPU).
    pub read_ahead: bool,
    /// Read-ahead passes while idle after each job (GPU, 0 to
    /// [`MAX_IDLE_PASSES`]).
    pub read_ahead_idle_passes: u32,
    /// Release destroys `pages->mutex` before detaching from the dma-buf
    /// (iommufd before f2d70dbd3dce).
    pub destroy_before_detach: bool,
    /// The device keeps issuing DMA by itself, without its userspace
    /// (rdma).
    pub autonomous_dma: bool,
    /// Number of instances.
    pub count: usize,
}

impl std::fmt::Display for ImporterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl ImporterSpec {
    /// The default behaviour of `base` under `name`.
    pub fn base(name: &str, base: ImporterBase) -> Self {
        let (invalidate, unmap, pin) = match base {
            ImporterBase::Static | ImporterBase::Cpu => {
                (OnInvalidate::NoOp, UnmapWhen::OnFree, false)
            }
            ImporterBase::Gpu => (
                OnInvalidate::Evict(Usage::Bookkeep),
                UnmapWhen::WorkerAfterFences,
                false,
            ),
            ImporterBase::Rdma => (OnInvalidate::StopAndUnmap, UnmapWhen::InCallback, false),
            ImporterBase::Iommufd => (OnInvalidate::StopAndUnmap, UnmapWhen::InCallback, true),
            ImporterBase::Kmod => (OnInvalidate::StopAndUnmap, UnmapWhen::InCallback, false),
        };
        Self {
            name: name.to_owned(),
            base,
            invalidate,
            unmap,
            unmap_latency: GpuConfig::default().worker_latency,
            remap: Remap::Lazy,
            pin,
            writes_after_fences: false,
            read_ahead: base == ImporterBase::Gpu,
            read_ahead_idle_passes: DEFAULT_IDLE_PASSES,
            destroy_before_detach: false,
            autonomous_dma: false,
            count: 1,
        }
    }

    /// The RDMA MR flavour these fields select, if the base is RDMA and the
    /// combination is one the model has.
    pub fn mr_flavour(&self) -> Option<MrFlavour> {
        if self.base != ImporterBase::Rdma {
            return None;
        }
        match (self.invalidate, self.unmap, self.pin) {
            (OnInvalidate::StopAndUnmap, UnmapWhen::InCallback, false) => Some(MrFlavour::Odp),
            (OnInvalidate::NoOp, UnmapWhen::OnFree, true) => Some(MrFlavour::Pinned),
            (OnInvalidate::StopAndUnmap, UnmapWhen::InCallback, true) => {
                Some(MrFlavour::PinnedRevocable)
            }
            (OnInvalidate::Ignore, UnmapWhen::OnFree, false) => Some(MrFlavour::Lying),
            _ => None,
        }
    }

    /// Checks that the base model has this behaviour; `Err` names the field
    /// and says what the base supports.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let base = self.base.name();
        match self.base {
            ImporterBase::Static | ImporterBase::Iommufd | ImporterBase::Cpu => {
                let d = ImporterSpec::base(&self.name, self.base);
                if self.invalidate != d.invalidate {
                    return Err((
                        "invalidate",
                        format!("a {base} importer's invalidate is fixed"),
                    ));
                }
                if self.unmap != d.unmap {
                    return Err(("unmap", format!("a {base} importer's unmap is fixed")));
                }
                if self.pin != d.pin {
                    return Err(("pin", format!("a {base} importer's pin is fixed")));
                }
            }
            ImporterBase::Gpu => {
                if !matches!(self.invalidate, OnInvalidate::Evict(_)) {
                    return Err((
                        "invalidate",
                        "a gpu importer evicts: invalidate = \"evict(bookkeep)\" or \"evict(kernel)\""
                            .into(),
                    ));
                }
                if !matches!(self.unmap, UnmapWhen::WorkerAfterFences | UnmapWhen::OnFree) {
                    return Err((
                        "unmap",
                        "a gpu importer unmaps from its worker (unmap = \"worker-after-fences\") or when userspace frees the BO (unmap = \"on-free\")"
                            .into(),
                    ));
                }
                if self.pin {
                    return Err(("pin", "the gpu model does not pin".into()));
                }
            }
            ImporterBase::Kmod => {
                crate::script::KmodMode::of(self).map_err(|m| ("invalidate", m))?;
            }
            ImporterBase::Rdma => {
                if self.mr_flavour().is_none() {
                    return Err((
                        "invalidate",
                        "an rdma importer is one of: stop-and-unmap + in-callback (ODP); none + on-free + pin (pinned); stop-and-unmap + in-callback + pin (pinned revocable); ignore + on-free (a liar)".into(),
                    ));
                }
            }
        }
        if self.autonomous_dma && self.base != ImporterBase::Rdma {
            return Err((
                "autonomous_dma",
                format!("autonomous_dma is an rdma field, not a {base} one"),
            ));
        }
        if self.destroy_before_detach && self.base != ImporterBase::Iommufd {
            return Err((
                "release",
                format!("release is an iommufd field, not a {base} one"),
            ));
        }
        if self.base != ImporterBase::Gpu {
            // The test module caches errors and re-validates as a GPU does.
            let remap_ok = self.base == ImporterBase::Kmod;
            for (set, field) in [
                (self.writes_after_fences, "writes_after_fences"),
                (self.remap != Remap::Lazy && !remap_ok, "remap"),
                (self.read_ahead, "read_ahead"),
                (
                    self.read_ahead_idle_passes != DEFAULT_IDLE_PASSES,
                    "read_ahead_idle_passes",
                ),
            ] {
                if set {
                    return Err((field, format!("{field} is a gpu field, not a {base} one")));
                }
            }
        }
        Ok(())
    }
}

/// What makes the exporter revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Function-level reset (revoke, reset window, un-revoke).
    Flr,
    /// `VFIO_DEVICE_RESET`.
    DeviceReset,
    /// Bus/slot hot reset.
    HotReset,
    /// A config write clearing `PCI_COMMAND_MEMORY` (then setting it again).
    DecodeOff,
    /// A power transition to D3hot and back (runtime PM).
    D3hot,
    /// Device close: a permanent revoke that drains every mapping; then the
    /// BAR range may be given to a newly plugged device.
    Close,
    /// Revoke (decode off), un-revoke (decode on), re-map, revoke again
    /// (decode off), then close while revoked.
    UnrevokeCycle,
    /// The matrix cell's timeline: FLR (revoke, reset window, un-revoke)
    /// with DMA in flight, re-map and new DMA in flight, revoke again
    /// (decode off), then close while revoked.
    FlrCycle,
    /// The three-state exporter: decode off (temporary revoke), the
    /// permanent revoke ioctl while temporarily revoked, decode on (which
    /// must not bring the buffer back), importers try to map again, close.
    PermanentCycle,
    /// Memory pressure: the GPU VRAM exporter evicts (moves) the buffer.
    Eviction,
    /// The RDMA exporter's owner frees the device memory it exported
    /// (`ibv_free_dm`): revoke for good, the memory goes back to the
    /// device; then the process closes its context.
    DmFree,
    /// The RDMA device is reset (or unplugged): the uverbs context is
    /// disassociated, every buffer revoked for good, the function reset;
    /// then the process closes its context.
    Disassociate,
}

impl Trigger {
    /// Whether it revokes twice with an un-revoke and a re-map between
    /// (see the runner's timeline).
    pub fn is_cycle(self) -> bool {
        matches!(
            self,
            Trigger::UnrevokeCycle | Trigger::FlrCycle | Trigger::PermanentCycle
        )
    }
}

/// A whole scenario, as data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorldSpec {
    /// Exporter.
    pub exporter: ExporterKind,
    /// Its revoke protocol (VFIO only; ignored by the others).
    pub protocol: Arc<Protocol>,
    /// Importers.
    pub importers: Vec<ImporterSpec>,
    /// What triggers the revoke.
    pub trigger: Trigger,
    /// DMA jobs each importer's userspace submits.
    pub jobs: usize,
    /// Userspace also maps the buffer into the CPU and touches it.
    pub cpu_access: bool,
    /// An importer maps concurrently with the invalidation.
    pub map_during_invalidate: bool,
    /// After close, a new device is hot-plugged at the old BAR range.
    pub hotplug_after_close: bool,
    /// Importers tear down (unmap, release, close) as soon as the trigger
    /// begins, racing the revoke, instead of after it.
    pub teardown_during_revoke: bool,
    /// In a cycle, importers re-map as soon as the un-revoke begins,
    /// racing it, instead of after it returned.
    pub remap_during_unrevoke: bool,
    /// With several importers, their userspace threads take turns: the
    /// stages of their programs that make system calls (setup, queueing
    /// the first jobs, a cycle's re-map, the later jobs, teardown) run one
    /// at a time, every importer's setup in world order, then every
    /// importer's queueing, and so on. Between its stages an importer
    /// still waits and runs beside the others, the revoker and the
    /// hardware.
    pub importers_take_turns: bool,
    /// In a cycle's stalled-userspace runs, userspace may also stall at
    /// any scheduling point from the moment the first importer begins its
    /// re-map until the virtual clock next moves (a fourth stall point, see
    /// [`StallMode::StallUserspaceAtRevoke`]). Off by default: it makes the
    /// stalled search of a cell several times larger.
    pub stall_in_remap: bool,
    /// The search does not order the importers' speculative reads of bus
    /// addresses (`PlatformConfig::unordered_speculation`): each runs
    /// wherever the schedule puts its read-ahead pass, ordered against
    /// nothing. A complete search then covers every order of everything
    /// else, so it decides every property but those judged from the
    /// monitor's records of those reads (the checker's `s-final` and
    /// `s-noreuse`): a proof attempt's world, never a question of its own.
    pub read_ahead_unordered: bool,
}

impl WorldSpec {
    /// Importer instances in the world (each spec's `count`, summed).
    pub fn instances(&self) -> usize {
        self.importers.iter().map(|i| i.count).sum()
    }

    /// Caps the idle read-ahead passes of every importer that reads ahead
    /// at `n` (a smaller configuration of the same world); false when no
    /// importer reads ahead, so that there is nothing to cap.
    pub fn cap_idle_passes(&mut self, n: u32) -> bool {
        let mut any = false;
        for i in self.importers.iter_mut().filter(|i| i.read_ahead) {
            i.read_ahead_idle_passes = i.read_ahead_idle_passes.min(n);
            any = true;
        }
        any
    }

    /// A VFIO world with one `importer` under `protocol`: FLR with DMA in
    /// flight, un-revoke, re-map, revoke again, close
    /// ([`Trigger::FlrCycle`], a matrix cell).
    pub fn vfio(protocol: Arc<Protocol>, importer: ImporterSpec) -> Self {
        Self {
            exporter: ExporterKind::Vfio,
            protocol,
            importers: vec![importer],
            trigger: Trigger::FlrCycle,
            jobs: 2,
            cpu_access: false,
            map_during_invalidate: false,
            hotplug_after_close: false,
            teardown_during_revoke: false,
            remap_during_unrevoke: false,
            importers_take_turns: false,
            stall_in_remap: false,
            read_ahead_unordered: false,
        }
    }
}

/// Whether userspace keeps running once revoke begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallMode {
    /// Every thread runs.
    Normal,
    /// The `userspace` group is never scheduled again from a point the
    /// search chooses: when the revoke begins, when a cycle's second revoke
    /// begins, any scheduling point after the trigger began and before the
    /// virtual clock next moves, and, with [`WorldSpec::stall_in_remap`],
    /// any scheduling point from the first importer's re-map until the
    /// clock next moves (controlled execution only).
    StallUserspaceAtRevoke,
}

/// An importer that the exporter turned away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Importer instance name.
    pub importer: String,
    /// Where it was refused: `attach`, `pin`, `map` or `register`.
    pub stage: dmabuf_drivers::importers::Stage,
    /// The errno it was refused with.
    pub errno: dmabuf_core::errno::Errno,
}

/// What one importer instance did after a cycle's un-revoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    /// Importer instance name.
    pub importer: String,
    /// Whether, by design, it uses the buffer again after an un-revoke.
    pub expected: bool,
    /// Its userspace's re-map succeeded.
    pub remap_ok: bool,
    /// The job right after the re-map ran.
    pub job_ok: bool,
}

/// One revoke of one buffer, as the exporter reported it (a world with a
/// cycle has several; each is judged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokeRecord {
    /// The buffer.
    pub ino: u64,
    /// When it began.
    pub began_ns: u64,
    /// Monitor sequence of its fence point, once passed.
    pub fences_done_seq: Option<u64>,
    /// Whether it returned.
    pub returned: bool,
    /// Monitor sequence of its return.
    pub returned_seq: Option<u64>,
    /// Time from its start to its return.
    pub latency_ns: Option<u64>,
    /// Mappings still declared live when it returned.
    pub live_mappings_at_return: i64,
    /// The buffer was already revoked (cleanup after an earlier trigger).
    pub already_revoked: bool,
    /// Monitor sequence of the un-revoke that ended it, if any.
    pub unrevoked_seq: Option<u64>,
}

/// What a run of a world showed.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Importers refused, and where.
    pub refusals: Vec<Refusal>,
    /// Whether the revoke began.
    pub revoke_started: bool,
    /// Every revoke of every buffer, in the order they began.
    pub revokes: Vec<RevokeRecord>,
    /// What each importer did after a cycle's un-revoke (empty when the
    /// world has no cycle, or an importer's un-revoke never came).
    pub restores: Vec<Restore>,
    /// Whether the (first) revoke returned.
    pub revoke_returned: bool,
    /// Time from revoke start to return (virtual under the scheduler).
    pub revoke_latency_ns: Option<u64>,
    /// The monitor's sequence number when the revoke returned.
    pub revoke_return_seq: Option<u64>,
    /// Mappings of the exporter's memory still declared live when the
    /// revoke returned (dma-buf mappings and IOMMU mappings).
    pub live_mappings_at_return: i64,
    /// Every hazard the monitor recorded, in order.
    pub hazards: Vec<Hazard>,
    /// Every time memory was reset, powered down, decode-disabled, freed
    /// or re-assigned, with the mappings of it still outstanding at that
    /// moment (the platform's record, in order).
    pub reuse: Vec<ReuseEvent>,
    /// End-of-run leaks: buffers not released, attachments not detached,
    /// release/detach diagnostics (empty in stall mode, where userspace
    /// never tears down).
    pub leaks: Vec<String>,
    /// Kernel WARNs (refcount_t misuse, timed-out waits), in order.
    pub warnings: Vec<String>,
    /// Counters: jobs done, faults, maps, unmaps, speculative reads...
    pub counters: BTreeMap<String, u64>,
    /// Unexpected errors (not refusals) from drivers or userspace.
    pub errors: Vec<String>,
}
