//! The importers of the revoke thread (docs/importers.md), each on a
//! simulated device whose DMA goes
//! through the platform, so the monitor sees every access.
//!
//! | module | kind | kernel counterpart |
//! |---|---|---|
//! | [`static_import`] | `static` | any `dma_buf_attach` user (v4l2, display, ...) |
//! | [`gpu`] | `gpu`, `gpu-kernel-fence`, `writes-after-fences` | amdgpu/xe importers (`amdgpu_dma_buf_move_notify`, `xe_dma_buf_move_notify`) |
//! | [`rdma`] (on [`nic`]) | `rdma-odp`, `rdma-pinned`, `rdma-pinned-revocable`, `lying` | `umem_dmabuf.c`, mlx5 `mr.c`/`odp.c` |
//! | [`iommufd`] | `iommufd` | `drivers/iommu/iommufd/pages.c` |
//! | [`cpu_mmap`] | `cpu-mmap` | a process that `mmap`s the dma-buf fd and touches it (VFIO dma-buf mmap, Matt Evans' series) |
//!
//! # What every importer promises the monitor
//!
//! 1. Every dma-buf mapping it gets is declared ([`map_and_declare`]); every
//!    unmap is declared *before* the exporter hears of it
//!    ([`unmap_declared`]), so a revoke that returns on that unmap never
//!    counts it as live.
//! 2. Every device access goes through the platform, naming the mapping
//!    ([`Declared::dma_ref`]) or through IOMMU PTEs tagged with it.
//!
//! # The driving interface ([`Importer`])
//!
//! The world runner drives each instance from a userspace thread: `setup`
//! (attach, pin, map, register: the steps where an exporter may refuse),
//! `submit` DMA jobs (each reads a page and writes a pattern to it, possibly
//! behind a gate fence so that it is in flight when a revoke begins),
//! `remap` after an un-revoke where userspace must act, `teardown`, and
//! finally `shutdown` of its kernel workers and engines.

pub mod cpu_mmap;
pub mod gpu;
pub mod iommufd;
pub mod nic;
pub mod rdma;
pub mod static_import;

use crate::dma_api;
use crate::host::Host;
use crate::job::PendingJob;
use crate::vfio::VfioError;
use dmabuf_core::Fence;
use dmabuf_core::dma_buf::{self, Attachment, DmaBufError, DmaDirection, Mapping};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::Arc;
use dmabuf_core::uapi::{Process, SysError};
use dmabuf_platform::{
    Accessor, DeclaredRange, DeviceId, DmaAddr, DmaOp, DmaRef, MappingDecl, MappingToken,
};
use std::collections::BTreeMap;
use std::fmt;

/// Bytes each job reads and writes (at the start of its page).
pub const JOB_BYTES: usize = 64;

dmabuf_core::named_enum! {
    /// Where an importer operation failed.
    ///
    /// `name()`: the name a refusal is printed with (`attach`, `pin`, ...).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Stage {
        /// `dma_buf_get` on the fd.
        Fd => "fd",
        /// `dma_buf_attach` / `dma_buf_dynamic_attach`.
        Attach => "attach",
        /// `dma_buf_pin`.
        Pin => "pin",
        /// `dma_buf_map_attachment` (or VFIO's private interface for iommufd).
        Map => "map",
        /// The importer's own registration (an MR, an IOAS mapping).
        Register => "register",
        /// `mmap` of the dma-buf fd (a CPU user).
        Mmap => "mmap",
        /// A DMA job.
        Job => "job",
        /// Teardown.
        Teardown => "teardown",
    }
}

/// Errors of importer operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A dma-buf call failed.
    #[error("{stage}: {source}")]
    DmaBuf {
        /// Where.
        stage: Stage,
        /// What the core or the exporter said.
        source: DmaBufError,
    },
    /// VFIO's private interface refused (iommufd).
    #[error("{stage}: {source}")]
    Vfio {
        /// Where.
        stage: Stage,
        /// What VFIO said.
        source: VfioError,
    },
    /// An fd operation failed.
    #[error("{stage}: {source}")]
    Sys {
        /// Where.
        stage: Stage,
        /// The errno.
        source: SysError,
    },
    /// The importer's device or hardware refused.
    #[error("{stage}: {what} ({errno})")]
    Device {
        /// Where.
        stage: Stage,
        /// The errno.
        errno: Errno,
        /// What failed.
        what: String,
    },
    /// The operation needs a set-up importer.
    #[error("importer {0} is not set up")]
    NotSetUp(String),
    /// The request itself is invalid (range outside the buffer, ...).
    #[error("{stage}: invalid request: {what}")]
    Invalid {
        /// Where.
        stage: Stage,
        /// What is wrong.
        what: String,
    },
}

impl AsErrno for ImportError {
    fn errno(&self) -> Errno {
        match self {
            ImportError::DmaBuf { source, .. } => source.errno(),
            ImportError::Vfio { source, .. } => source.errno(),
            ImportError::Sys { source, .. } => source.errno(),
            ImportError::Device { errno, .. } => *errno,
            ImportError::NotSetUp(_) => errno::EINVAL,
            ImportError::Invalid { .. } => errno::EINVAL,
        }
    }
}

impl ImportError {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        match self {
            ImportError::DmaBuf { stage, .. }
            | ImportError::Vfio { stage, .. }
            | ImportError::Sys { stage, .. }
            | ImportError::Device { stage, .. }
            | ImportError::Invalid { stage, .. } => *stage,
            ImportError::NotSetUp(_) => Stage::Job,
        }
    }

    /// Whether this is the exporter turning the importer away
    /// (`EOPNOTSUPP` or `ENODEV` at attach, pin, map or register; at
    /// `mmap` also `EINVAL`, the core's answer for an exporter without an
    /// `mmap` op).
    pub fn is_refusal(&self) -> bool {
        match self.stage() {
            Stage::Attach | Stage::Pin | Stage::Map | Stage::Register => {
                matches!(self.errno(), errno::EOPNOTSUPP | errno::ENODEV)
            }
            Stage::Mmap => matches!(
                self.errno(),
                errno::EOPNOTSUPP | errno::ENODEV | errno::EINVAL
            ),
            _ => false,
        }
    }

    pub(crate) fn dmabuf(stage: Stage) -> impl FnOnce(DmaBufError) -> ImportError {
        move |source| ImportError::DmaBuf { stage, source }
    }

    pub(crate) fn sys(stage: Stage) -> impl FnOnce(SysError) -> ImportError {
        move |source| ImportError::Sys { stage, source }
    }
}

/// A dma-buf mapping declared to the monitor.
#[derive(Debug)]
pub struct Declared {
    mapping: Mapping,
    token: MappingToken,
}

impl Declared {
    /// The monitor's token for it.
    pub fn token(&self) -> &MappingToken {
        &self.token
    }

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The device address of byte `offset` of the buffer, naming the
    /// mapping; `None` past the end.
    pub fn dma_ref(&self, offset: u64) -> Option<DmaRef> {
        let mut o = offset;
        for e in &self.mapping.sg_table().entries {
            if o < e.len {
                return Some(dma_api::to_platform(e.dma_addr + o).via(&self.token));
            }
            o -= e.len;
        }
        None
    }
}

/// `dma_buf_map_attachment` (lock held) and the monitor declaration of the
/// addresses it returned, as `dev` (the importer's device) will use them.
pub fn map_and_declare(
    host: &Host,
    attach: &Attachment,
    dev: Option<DeviceId>,
    importer: &Accessor,
    guard: &ResvGuard<'_>,
) -> Result<Declared, DmaBufError> {
    let mapping = dma_buf::map_attachment(attach, DmaDirection::Bidirectional, guard)?;
    let dom = dev.and_then(|d| host.dma_domain(d));
    let ranges = mapping
        .sg_table()
        .entries
        .iter()
        .map(|e| match (&dom, dma_api::to_platform(e.dma_addr)) {
            (Some(d), DmaAddr::Iova(a)) => DeclaredRange::iova(d.id(), a, e.len),
            _ => DeclaredRange::bus(e.dma_addr, e.len),
        })
        .collect();
    let decl = MappingDecl {
        attachment: attach.id(),
        importer: importer.clone(),
        exporter: host.exporter_of(attach.dmabuf().ino()),
        ranges,
    };
    match host.monitor().declare_mapping(decl) {
        Ok(token) => Ok(Declared { mapping, token }),
        Err(e) => {
            let _ = dma_buf::unmap_attachment(attach, mapping, guard);
            Err(DmaBufError::errno(e.errno(), e.to_string()))
        }
    }
}

/// Declares the unmap to the monitor, then `dma_buf_unmap_attachment`
/// (lock held).
pub fn unmap_declared(
    host: &Host,
    attach: &Attachment,
    d: Declared,
    guard: &ResvGuard<'_>,
) -> Result<(), DmaBufError> {
    let _ = host.monitor().mapping_unmapped(&d.token);
    dma_buf::unmap_attachment(attach, d.mapping, guard)
}

/// The operations of one job: write `pattern` at `write_at`, then read
/// what `read_at` holds (the page a previous job wrote, so data that
/// survived a move can be checked). Writing first makes a job in flight
/// across a revoke show whether a *write* got through.
pub fn job_ops(write_at: DmaRef, read_at: DmaRef, pattern: u8) -> Vec<DmaOp> {
    vec![
        DmaOp::Write {
            dst: write_at,
            data: vec![pattern; JOB_BYTES],
        },
        DmaOp::Read {
            src: read_at,
            len: JOB_BYTES,
        },
    ]
}

/// The page a job that writes `page` reads: the next one, wrapping.
pub fn read_page(page: u64, pages: u64) -> u64 {
    (page + 1) % pages.max(1)
}

/// A job handed to an importer: DMA on its device, or CPU accesses of a
/// process through its mmap ([`cpu_mmap`]).
#[derive(Clone, Debug)]
pub struct Job(JobKind);

#[derive(Clone, Debug)]
enum JobKind {
    Dma(PendingJob),
    Cpu(Arc<cpu_mmap::CpuJob>),
}

impl Job {
    pub(crate) fn new(p: PendingJob) -> Self {
        Self(JobKind::Dma(p))
    }

    pub(crate) fn cpu(j: cpu_mmap::CpuJob) -> Self {
        Self(JobKind::Cpu(Arc::new(j)))
    }

    /// The job's fence (a CPU job's signals once its accesses were made).
    pub fn fence(&self) -> &Fence {
        match &self.0 {
            JobKind::Dma(p) => p.fence(),
            JobKind::Cpu(c) => c.fence(),
        }
    }

    /// Waits for the job; the bytes it read, or the errno it failed with.
    /// A CPU job makes its accesses here, on the waiting thread.
    pub fn wait(&self) -> Result<Vec<u8>, Errno> {
        let p = match &self.0 {
            JobKind::Dma(p) => p,
            JobKind::Cpu(c) => return c.run(),
        };
        let o = p.wait()?;
        if let Err(e) = &o.status {
            return Err(e.errno());
        }
        Ok(o.reads.into_iter().next().unwrap_or_default())
    }
}

/// What the world runner needs from an importer instance.
pub trait Importer: Send + Sync {
    /// Instance name (`gpu0`, `iommufd1`, ...).
    fn name(&self) -> &str;

    /// Attach, pin, map, register: whatever this importer does with a
    /// dma-buf fd of `proc` before its device may use it.
    fn setup(&self, proc: &Arc<Process>, fd: i32) -> Result<(), ImportError>;

    /// Queues a job on the device: write `pattern` to page `page`, then
    /// read page [`read_page`]`(page)`; behind `gate` when given.
    fn submit(&self, page: u64, pattern: u8, gate: Option<Fence>) -> Result<Job, ImportError>;

    /// What userspace does after an un-revoke to use the buffer again
    /// (iommufd maps again; most importers need nothing).
    fn remap(&self) -> Result<(), ImportError> {
        Ok(())
    }

    /// Whether, by design, it uses the buffer again after an un-revoke
    /// (`l-restore` asks that it can). A pinned revocable MR is revoked for
    /// good and never does; most importers do.
    fn restores(&self) -> bool {
        true
    }

    /// Unmap, unpin, deregister, detach, close the fd.
    fn teardown(&self) -> Result<(), ImportError>;

    /// Stops kernel workers and device engines (end of the world).
    fn shutdown(&self);

    /// Counters (`maps`, `unmaps`, `invalidates`, ...).
    fn counters(&self) -> BTreeMap<&'static str, u64>;
}

/// A set of named counters (atomics, so they never need a lock).
#[derive(Default)]
pub struct Counters {
    items: Vec<(&'static str, dmabuf_core::sync::atomic::AtomicU64)>,
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl Counters {
    /// Counters with these names, at zero.
    pub fn new(names: &[&'static str]) -> Self {
        Self {
            items: names
                .iter()
                .map(|n| (*n, dmabuf_core::sync::atomic::AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Adds one to `name` (unknown names are ignored).
    pub fn bump(&self, name: &str) {
        if let Some((_, c)) = self.items.iter().find(|(n, _)| *n == name) {
            c.fetch_add(1, dmabuf_core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.items
            .iter()
            .map(|(n, c)| (*n, c.load(dmabuf_core::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}
