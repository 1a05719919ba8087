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

use crate::policy::RevokePolicy;
use dmabuf_platform::Hazard;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Which exporter owns the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExporterKind {
    /// VFIO exporting a PCI BAR range (7.1), with a revoke policy.
    Vfio,
    /// The system heap: RAM pages, static, frees its frames on release.
    SystemHeap,
    /// GPU VRAM: dynamic, evicts and migrates under pressure.
    GpuVram,
}

/// The importer kinds of the matrix columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImporterKind {
    /// `dma_buf_attach`, no ops.
    Static,
    /// amdgpu/xe-like dynamic importer.
    Gpu,
    /// As `Gpu`, but its unbind fence is Kernel-usage.
    GpuKernelFence,
    /// mlx5-like ODP MR.
    RdmaOdp,
    /// RDMA non-ODP pinned, no invalidate op.
    RdmaPinned,
    /// RDMA pinned with a driver revoke callback (7.1 follow-up).
    RdmaPinnedRevocable,
    /// iommufd `IOMMU_IOAS_MAP_FILE`.
    Iommufd,
    /// Declares the op but ignores it; unmaps only when userspace asks.
    Lying,
}

impl ImporterKind {
    /// Every kind, in matrix column order.
    pub const ALL: [ImporterKind; 8] = [
        ImporterKind::Static,
        ImporterKind::Gpu,
        ImporterKind::GpuKernelFence,
        ImporterKind::RdmaOdp,
        ImporterKind::RdmaPinned,
        ImporterKind::RdmaPinnedRevocable,
        ImporterKind::Iommufd,
        ImporterKind::Lying,
    ];

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            ImporterKind::Static => "static",
            ImporterKind::Gpu => "gpu",
            ImporterKind::GpuKernelFence => "gpu-kernel-fence",
            ImporterKind::RdmaOdp => "rdma-odp",
            ImporterKind::RdmaPinned => "rdma-pinned",
            ImporterKind::RdmaPinnedRevocable => "rdma-pinned-revocable",
            ImporterKind::Iommufd => "iommufd",
            ImporterKind::Lying => "lying",
        }
    }
}

impl fmt::Display for ImporterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown importer name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown importer kind '{0}'")]
pub struct UnknownImporter(pub String);

impl FromStr for ImporterKind {
    type Err = UnknownImporter;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImporterKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownImporter(s.to_owned()))
    }
}

/// One importer group of a world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImporterSpec {
    /// Kind.
    pub kind: ImporterKind,
    /// Number of instances.
    pub count: usize,
    /// Misbehaviour: keeps writing after its fences signalled (GPU kinds).
    pub writes_after_fences: bool,
}

impl ImporterSpec {
    /// One well-behaved instance of `kind`.
    pub fn one(kind: ImporterKind) -> Self {
        Self {
            kind,
            count: 1,
            writes_after_fences: false,
        }
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
    /// Revoke, un-revoke, re-map, revoke again, then close.
    UnrevokeCycle,
    /// Memory pressure: the GPU VRAM exporter evicts (moves) the buffer.
    Eviction,
}

/// A whole scenario, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldSpec {
    /// Exporter.
    pub exporter: ExporterKind,
    /// Its revoke sequence (VFIO only; ignored by the others).
    pub policy: RevokePolicy,
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
}

impl WorldSpec {
    /// A VFIO world with one importer of `kind` under `policy`, revoked by
    /// FLR with DMA in flight.
    pub fn vfio(policy: RevokePolicy, kind: ImporterKind) -> Self {
        Self {
            exporter: ExporterKind::Vfio,
            policy,
            importers: vec![ImporterSpec::one(kind)],
            trigger: Trigger::Flr,
            jobs: 2,
            cpu_access: false,
            map_during_invalidate: false,
            hotplug_after_close: false,
        }
    }
}

/// Whether userspace keeps running once revoke begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallMode {
    /// Every thread runs.
    Normal,
    /// The `userspace` group is never scheduled again once revoke begins
    /// (controlled execution only).
    StallUserspaceAtRevoke,
}

/// An importer that the exporter turned away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Importer instance name.
    pub importer: String,
    /// `attach`, `pin`, `map` or `register`.
    pub stage: &'static str,
    /// Positive errno.
    pub errno: i32,
}

/// What a run of a world showed.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Importers refused, and where.
    pub refusals: Vec<Refusal>,
    /// Whether the revoke began.
    pub revoke_started: bool,
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
    /// End-of-run leaks: buffers not released, attachments not detached,
    /// release/detach diagnostics (empty in stall mode, where userspace
    /// never tears down).
    pub leaks: Vec<String>,
    /// Counters: jobs done, faults, maps, unmaps, speculative reads...
    pub counters: BTreeMap<String, u64>,
    /// Unexpected errors (not refusals) from drivers or userspace.
    pub errors: Vec<String>,
}
