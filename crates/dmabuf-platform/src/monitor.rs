//! The hazard monitor: classifies every DMA and CPU access when it happens,
//! and keeps what drivers and the core declare about mappings and revokes.
//!
//! There is no kernel counterpart: this is the oracle the checker's verdicts
//! rest on (docs/hazards.md).
//!
//! # Hazard classes
//!
//! | class | an access ... | detected from |
//! |---|---|---|
//! | [`UseAfterFree`](HazardClass::UseAfterFree) | reached a RAM frame that was freed, or freed and reused, since the mapping it went through was made | frame tag vs the mapping's snapshot; a free frame |
//! | [`Aer`](HazardClass::Aer) | reached a BAR whose device has decode off, is in D3hot, in reset or unplugged; or an unassigned range; or a peer it cannot reach | device flags, page owner |
//! | [`IommuFault`](HazardClass::IommuFault) | had no valid translation (cause: never mapped, unmapped, unmapped by revoke, permission) | the IOMMU walk |
//! | [`MisdirectedDma`](HazardClass::MisdirectedDma) | landed in a BAR range now owned by a different device than when mapped | page owner vs the mapping's snapshot |
//! | [`WriteAfterFences`](HazardClass::WriteAfterFences) | wrote exporter memory after the revoking exporter's fence wait finished | declared by the exporter |
//! | [`AccessAfterUnmap`](HazardClass::AccessAfterUnmap) | went through a mapping after it was unmapped (declared unmap, or a stale IOTLB entry whose PTE is gone) | declared by the driver; the IOMMU |
//! | [`AccessAfterRevoke`](HazardClass::AccessAfterRevoke) | touched exporter memory after its revoke returned | declared by the exporter |
//!
//! An access that succeeds through a stale IOTLB entry is not a fault: it is
//! classified by what it reached. One access may produce several records (a
//! write after revoke is both `WriteAfterFences` and `AccessAfterRevoke`); one
//! DMA operation or CPU call records each class at most once.
//!
//! # Protocol declarations
//!
//! | call | meaning | per-page effect |
//! |---|---|---|
//! | [`Monitor::declare_mapping`] | mapping M of attachment A covers these bus/IOVA ranges | returns a [`MappingToken`]; bus ranges snapshot page tags |
//! | [`Monitor::mapping_unmapped`] | M was unmapped | later accesses carrying M are `AccessAfterUnmap` |
//! | [`Monitor::fences_done`] | exporter E's revoke fence wait finished over R | writes to R are `WriteAfterFences` |
//! | [`Monitor::revoke_returned`] | E's revoke returned over R | any access to R is `AccessAfterRevoke` (and writes also `WriteAfterFences`) |
//! | [`Monitor::unrevoke`] | E un-revoked R | R is ordinary memory again |
//!
//! # Memory reuse with mappings outstanding
//!
//! Independently of any access, the platform records a [`ReuseEvent`] each
//! time memory stops being what a mapping of it pointed at: a device's BARs
//! are reset (FLR, bus reset), powered down (D3hot), decode-disabled,
//! unplugged (the range becomes unassigned) or re-assigned by a hot-plug, or
//! RAM frames are freed (drivers may also declare their own reuse, such as a
//! VRAM placement handed to another object, with
//! [`Platform::note_reuse`](crate::Platform::note_reuse)). At that moment it
//! lists every mapping of the memory still outstanding ([`Outstanding`]):
//!
//! | kind | outstanding when |
//! |---|---|
//! | `sg` | a declared mapping ([`Monitor::declare_mapping`]) whose bus ranges cover the memory was not declared unmapped |
//! | `iommu` | an IOMMU PTE in any domain translates to the memory (one entry per `iommu_map` call) |
//! | `iotlb` | an IOTLB entry whose PTE is gone still translates to it (an unmap not yet flushed) |
//! | `cpu` | a CPU mapping has a present PTE to it |
//!
//! An event with an empty list is harmless; one with outstanding mappings
//! breaks `s-noreuse` whether or not an access ever lands.
//!
//! Accesses by the exporter's own accessor (its owner, given at
//! [`Monitor::register_exporter`]) are exempt from the protocol classes. The
//! owner is compared by a 32-bit hash of its name kept in the page's word.
//!
//! # Order and time
//!
//! Every hazard and every declaration takes the next number of a
//! per-platform sequence (`seq`), which orders them for reports. The global
//! trace log has its own order: each hazard is also emitted as a `hazard`
//! trace event carrying `mseq`, which ties the two together.
//!
//! The numbering, the hazard and reuse logs and the exporter registry are
//! the monitor's own bookkeeping, not part of the system under test: they
//! use plain (std and `parking_lot`) primitives, never a scheduling point,
//! so the checker's partial-order reduction does not order two tasks'
//! records against each other (an engine's speculative read and a revoke's
//! stamp). What a verdict rests on is tracked: the page words an access
//! reads and a stamp writes, the device flags, a token's `unmapped` flag,
//! and the list of live mappings a reuse event consults (each change and
//! each read of it is reported to the scheduler as an access of that list).
//! Hence no verdict may depend on the relative numbers of two records: a
//! hazard's class says what it broke, as the page words said at the access.
//! The log keeps `max_hazards` records; which ones, once it is full, would
//! depend on the schedule (the platform's default is far above what any
//! controlled run reaches).
//!
//! # Lock rules
//!
//! The check on the access path is atomics only: the page tag, the page's
//! protocol words, the device flags and the token's `unmapped` flag. The
//! hazard log lock is taken only when a hazard is recorded, and nothing is
//! taken under it. Turning the monitor off ([`Monitor::set_enabled`]) skips
//! classification; faults and AER still change what the access does.

use crate::iommu::{DomainId, IommuFaultCause};
use crate::memory::{PAGE_SIZE, PhysMemory};
use crate::pci::DeviceId;
use crate::trace;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering, global};
use dmabuf_core::sync::{Arc, sched};
use dmabuf_core::trace_event;
use std::fmt;

pub(crate) const P_FENCES_DONE: u64 = 1;
pub(crate) const P_REVOKED: u64 = 2;
const P_FLAGS: u64 = 0xff;
const P_EXPORTER_SHIFT: u32 = 8;
const P_EXPORTER_MASK: u64 = 0xff_ffff;
const P_OWNER_SHIFT: u32 = 32;

/// Who made an access: a device or importer name (`gpu0`, `iommufd`,
/// `rdma-odp:mlx5_0`, `userspace`). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Accessor {
    name: Arc<str>,
    hash: u32,
}

impl Accessor {
    /// An accessor identity.
    pub fn new(name: &str) -> Self {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        Self {
            name: Arc::from(name),
            hash: h.max(1),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn hash32(&self) -> u32 {
        self.hash
    }
}

impl fmt::Debug for Accessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Accessor({})", self.name)
    }
}

impl fmt::Display for Accessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A read.
    Read,
    /// A write.
    Write,
}

impl AccessKind {
    /// `r` or `w`.
    pub fn letter(self) -> char {
        match self {
            AccessKind::Read => 'r',
            AccessKind::Write => 'w',
        }
    }
}

dmabuf_core::named_enum! {
    /// The hazard classes (see the module docs).
    ///
    /// `name()`: the name used in traces and reports.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum HazardClass {
        /// RAM freed or reused since mapped.
        UseAfterFree => "UseAfterFree",
        /// BAR not answering (decode off, D3hot, reset, unplugged, unassigned, unreachable peer).
        Aer => "Aer",
        /// No valid translation.
        IommuFault => "IommuFault",
        /// BAR range now owned by a different device.
        MisdirectedDma => "MisdirectedDma",
        /// Importer write after the revoking exporter's fence wait finished.
        WriteAfterFences => "WriteAfterFences",
        /// Access through a mapping after it was unmapped.
        AccessAfterUnmap => "AccessAfterUnmap",
        /// Access to exporter memory after its revoke returned.
        AccessAfterRevoke => "AccessAfterRevoke",
    }
}

impl HazardClass {
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Why a BAR access was an AER.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AerReason {
    /// `PCI_COMMAND_MEMORY` clear.
    DecodeOff,
    /// Device in D3hot.
    D3hot,
    /// Device in FLR or bus reset.
    InReset,
    /// Device unplugged (its range is unassigned).
    Unplugged,
    /// No device decodes the address, or it is outside the address space.
    Unassigned,
    /// The accessing device cannot reach the peer (`P2pType::NotSupported`).
    P2pUnreachable,
}

/// What issued an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// DMA by a device.
    Dma {
        /// The device that mastered it.
        device: DeviceId,
    },
    /// A CPU load or store through a CPU mapping.
    Cpu {
        /// The CPU mapping's id.
        vma: u64,
    },
}

/// How an address is interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrSpace {
    /// An IOVA in an IOMMU domain.
    Iova(DomainId),
    /// A bus (= physical) address.
    Bus,
    /// An offset in a CPU mapping.
    Cpu {
        /// The CPU mapping's id.
        vma: u64,
    },
}

/// `iova(domain 0)`, `bus`, `cpu(vma 3)`.
impl fmt::Display for AddrSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrSpace::Iova(d) => write!(f, "iova(domain {})", d.0),
            AddrSpace::Bus => f.write_str("bus"),
            AddrSpace::Cpu { vma } => write!(f, "cpu(vma {vma})"),
        }
    }
}

/// Identifies a declared mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingId(pub u64);

/// Identifies a registered exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExporterId(pub u32);

/// A physical (bus) address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// Start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl PhysRange {
    /// A range.
    pub fn new(start: u64, len: u64) -> Self {
        Self { start, len }
    }
}

/// A range covered by a declared mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredRange {
    /// Bus or IOVA (CPU offsets are not declared here).
    pub space: AddrSpace,
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl DeclaredRange {
    /// A bus-address range.
    pub fn bus(start: u64, len: u64) -> Self {
        Self {
            space: AddrSpace::Bus,
            start,
            len,
        }
    }

    /// An IOVA range in `domain`.
    pub fn iova(domain: DomainId, start: u64, len: u64) -> Self {
        Self {
            space: AddrSpace::Iova(domain),
            start,
            len,
        }
    }
}

/// What a driver declares when it maps (`dma_buf_map_attachment`).
#[derive(Clone, Debug)]
pub struct MappingDecl {
    /// The attachment's id (as the core numbers attachments).
    pub attachment: u64,
    /// The importer using the mapping.
    pub importer: Accessor,
    /// The exporter whose memory it maps, if registered.
    pub exporter: Option<ExporterId>,
    /// The addresses handed to the importer.
    pub ranges: Vec<DeclaredRange>,
}

/// One recorded hazard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hazard {
    /// The class.
    pub class: HazardClass,
    /// Who accessed.
    pub accessor: String,
    /// DMA or CPU, and by what.
    pub via: Via,
    /// How `addr` is interpreted.
    pub space: AddrSpace,
    /// The address as issued (IOVA, bus address, or offset in the CPU mapping).
    pub addr: u64,
    /// The physical address reached, when translation succeeded.
    pub phys: Option<u64>,
    /// Read or write.
    pub kind: AccessKind,
    /// A speculative read-ahead (no job, no fence covers it).
    pub speculative: bool,
    /// The declared mapping the access went through, if any.
    pub mapping: Option<MappingId>,
    /// That mapping's attachment.
    pub attachment: Option<u64>,
    /// The exporter whose memory was touched (protocol classes).
    pub exporter: Option<String>,
    /// For `IommuFault`: the cause.
    pub iommu_fault: Option<IommuFaultCause>,
    /// For `Aer`: the reason.
    pub aer: Option<AerReason>,
    /// Free-form explanation (whose frame it now is, which device owns the BAR).
    pub detail: String,
    /// Position in the monitor's sequence (shared with declarations).
    pub seq: u64,
    /// Time (`sync::time::now_ns`, virtual under the controlled scheduler).
    pub ts_ns: u64,
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mseq={} {} by {} {}{} {} {:#x}",
            self.seq,
            self.class,
            self.accessor,
            if self.speculative { "spec-" } else { "" },
            self.kind.letter(),
            self.space,
            self.addr
        )?;
        if let Some(p) = self.phys {
            write!(f, " -> {p:#x}")?;
        }
        if let Some(m) = self.mapping {
            write!(f, " mapping={}", m.0)?;
        }
        if let Some(a) = self.attachment {
            write!(f, " attachment={a}")?;
        }
        if let Some(e) = &self.exporter {
            write!(f, " exporter={e}")?;
        }
        if let Some(c) = self.iommu_fault {
            write!(f, " cause={c:?}")?;
        }
        if let Some(r) = self.aer {
            write!(f, " aer={r:?}")?;
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Errors of monitor declarations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// The exporter id was not registered.
    #[error("unknown exporter id {0}")]
    UnknownExporter(u32),
    /// Too many exporters for the protocol word.
    #[error("too many exporters (max {max})")]
    TooManyExporters {
        /// The limit.
        max: u64,
    },
    /// A range is empty, wraps, or leaves the physical address space.
    #[error("bad range {start:#x}+{len:#x}")]
    BadRange {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
    },
    /// The mapping was already declared unmapped.
    #[error("mapping {0} already unmapped")]
    AlreadyUnmapped(u64),
}

impl AsErrno for MonitorError {
    fn errno(&self) -> Errno {
        match self {
            MonitorError::UnknownExporter(_) => errno::ENOENT,
            MonitorError::TooManyExporters { .. } => errno::ENOMEM,
            MonitorError::BadRange { .. } => errno::EINVAL,
            MonitorError::AlreadyUnmapped(_) => errno::EINVAL,
        }
    }
}

dmabuf_core::named_enum! {
    /// What happened to memory in a [`ReuseEvent`].
    ///
    /// `name()`: the name used in traces and reports.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ReuseKind {
        /// FLR or secondary bus reset began.
        Reset => "reset",
        /// The device went to D3hot.
        PowerDown => "D3hot",
        /// `PCI_COMMAND_MEMORY` was cleared.
        DecodeOff => "decode-off",
        /// The device was unplugged: its ranges are unassigned.
        Unplug => "unplug",
        /// A hot-plugged device was given the range.
        Reassign => "re-assign",
        /// RAM frames (or a driver's memory) were freed.
        Free => "free",
    }
}

/// One mapping still outstanding at a [`ReuseEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// `sg`, `iommu`, `iotlb` or `cpu` (see the module docs).
    pub kind: &'static str,
    /// Who holds it: the importer of the declared mapping, else the IOMMU
    /// domain or CPU mapping name.
    pub holder: String,
    /// The declared mapping, when known.
    pub mapping: Option<MappingId>,
    /// Where: bus range, IOVA range and domain, or CPU mapping page.
    pub detail: String,
}

impl fmt::Display for Outstanding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} mapping", self.kind)?;
        if let Some(m) = self.mapping {
            write!(f, " {}", m.0)?;
        }
        write!(f, " by {} ({})", self.holder, self.detail)
    }
}

/// Memory stopped being what its mappings pointed at (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReuseEvent {
    /// What happened.
    pub kind: ReuseKind,
    /// The device, or the frames' owner.
    pub who: String,
    /// The physical ranges affected.
    pub ranges: Vec<PhysRange>,
    /// Mappings of them still outstanding at that moment.
    pub outstanding: Vec<Outstanding>,
    /// Position in the monitor's sequence.
    pub seq: u64,
    /// Time (virtual under the controlled scheduler).
    pub ts_ns: u64,
}

impl fmt::Display for ReuseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {} of {} [", self.seq, self.kind, self.who)?;
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{:#x}+{:#x}", r.start, r.len)?;
        }
        write!(
            f,
            "] with {} mapping(s) outstanding",
            self.outstanding.len()
        )?;
        for (i, o) in self.outstanding.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{o}")?;
        }
        Ok(())
    }
}

/// The most reuse events kept per monitor.
const MAX_REUSE_EVENTS: usize = 1024;

pub(crate) struct MappingRecord {
    id: MappingId,
    attachment: u64,
    importer: Accessor,
    exporter: Option<ExporterId>,
    ranges: Vec<DeclaredRange>,
    /// For each bus range: the page tags when declared.
    bus_tags: Vec<(u64, Vec<u64>)>,
    unmapped: AtomicBool,
    declared_seq: u64,
}

/// A declared mapping, carried by accesses that go through it (cheap to
/// clone). IOMMU PTEs may carry one, so accesses through them are
/// attributed without the driver naming it.
#[derive(Clone)]
pub struct MappingToken(pub(crate) Arc<MappingRecord>);

impl fmt::Debug for MappingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MappingToken({} att={} {}{})",
            self.0.id.0,
            self.0.attachment,
            self.0.importer,
            if self.is_unmapped() { " unmapped" } else { "" }
        )
    }
}

impl MappingToken {
    /// The mapping id.
    pub fn id(&self) -> MappingId {
        self.0.id
    }

    /// The attachment id.
    pub fn attachment(&self) -> u64 {
        self.0.attachment
    }

    /// The importer.
    pub fn importer(&self) -> &Accessor {
        &self.0.importer
    }

    /// The exporter, if registered.
    pub fn exporter(&self) -> Option<ExporterId> {
        self.0.exporter
    }

    /// The declared ranges.
    pub fn ranges(&self) -> &[DeclaredRange] {
        &self.0.ranges
    }

    /// Whether the unmap was declared.
    pub fn is_unmapped(&self) -> bool {
        self.0.unmapped.load(Ordering::Acquire)
    }

    /// The monitor sequence number of the declaration.
    pub fn declared_seq(&self) -> u64 {
        self.0.declared_seq
    }

    /// The page tag snapshot for a bus address inside a declared bus range.
    pub(crate) fn expected_tag(&self, bus: u64) -> Option<u64> {
        let page = bus & !(PAGE_SIZE - 1);
        self.0.bus_tags.iter().find_map(|(start, tags)| {
            let i = page.checked_sub(*start)? / PAGE_SIZE;
            tags.get(i as usize).copied()
        })
    }
}

struct ExporterInfo {
    name: String,
    owner: Accessor,
}

pub(crate) struct MonitorInner {
    pub(crate) mem: Arc<PhysMemory>,
    pub(crate) enabled: AtomicBool,
    // Bookkeeping (see "Order and time"): plain primitives, never a
    // scheduling point, and nothing is taken under the locks.
    seq: global::AtomicU64,
    hazards: parking_lot::Mutex<Vec<Hazard>>,
    dropped: global::AtomicU64,
    max_hazards: usize,
    exporters: parking_lot::Mutex<Vec<ExporterInfo>>,
    next_mapping: AtomicU64,
    live_mappings: AtomicI64,
    // A plain lock, but every change and read of the list is reported as
    // an access of it (`live_access`): a reuse event's list of outstanding
    // mappings is part of a verdict.
    live: parking_lot::Mutex<Vec<Arc<MappingRecord>>>,
    reuse: parking_lot::Mutex<Vec<ReuseEvent>>,
}

/// The monitor (cheap to clone handle).
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<MonitorInner>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("enabled", &self.enabled())
            .field("hazards", &self.hazard_count())
            .finish()
    }
}

impl MonitorInner {
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel)
    }

    /// Reports a change (`write`) or a read of the live-mapping list to the
    /// controlled scheduler, as an access of the list by the caller's
    /// running segment (the list lock itself is not a scheduling point).
    fn live_access(&self, write: bool) {
        let a = if write {
            sched::Access::Write
        } else {
            sched::Access::Read
        };
        sched::access(std::ptr::from_ref(&self.live) as usize, a);
    }

    /// Appends a hazard (fills in `seq` and `ts_ns`) and traces it.
    pub(crate) fn record(&self, mut h: Hazard) {
        h.seq = self.next_seq();
        h.ts_ns = dmabuf_core::sync::time::now_ns();
        trace_event!(
            trace::HAZARD,
            "class={} accessor={} {}{} space={} addr={:#x} phys={} mapping={} mseq={} {}",
            h.class,
            h.accessor,
            if h.speculative { "spec-" } else { "" },
            h.kind.letter(),
            h.space,
            h.addr,
            h.phys.map_or_else(|| "-".into(), |p| format!("{p:#x}")),
            h.mapping.map_or_else(|| "-".into(), |m| m.0.to_string()),
            h.seq,
            h.detail
        );
        let mut log = self.hazards.lock();
        if log.len() < self.max_hazards {
            log.push(h);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exporter name and owner hash stored in a protocol word.
    pub(crate) fn exporter_of(&self, prot: u64) -> Option<String> {
        let idx = (prot >> P_EXPORTER_SHIFT) & P_EXPORTER_MASK;
        let i = idx.checked_sub(1)? as usize;
        self.exporters.lock().get(i).map(|e| e.name.clone())
    }
}

/// Whether an access by `who` to a page with protocol word `prot` is exempt
/// (the exporter's own access).
#[inline]
pub(crate) fn prot_owner_is(prot: u64, who: &Accessor) -> bool {
    (prot >> P_OWNER_SHIFT) as u32 == who.hash32()
}

impl Monitor {
    pub(crate) fn new(mem: Arc<PhysMemory>, enabled: bool, max_hazards: usize) -> Self {
        Self {
            inner: Arc::new(MonitorInner {
                mem,
                enabled: AtomicBool::new(enabled),
                seq: global::AtomicU64::new(0),
                hazards: parking_lot::Mutex::new(Vec::new()),
                dropped: global::AtomicU64::new(0),
                max_hazards,
                exporters: parking_lot::Mutex::new(Vec::new()),
                next_mapping: AtomicU64::new(1),
                live_mappings: AtomicI64::new(0),
                live: parking_lot::Mutex::new(Vec::new()),
                reuse: parking_lot::Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<MonitorInner> {
        &self.inner
    }

    /// Turns classification on or off (to measure its cost).
    pub fn set_enabled(&self, on: bool) {
        self.inner.enabled.store(on, Ordering::Release);
    }

    /// Whether classification is on.
    pub fn enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Acquire)
    }

    /// Takes every hazard recorded so far, in sequence order.
    pub fn take_hazards(&self) -> Vec<Hazard> {
        std::mem::take(&mut *self.inner.hazards.lock())
    }

    /// A copy of the hazards recorded so far.
    pub fn hazards(&self) -> Vec<Hazard> {
        self.inner.hazards.lock().clone()
    }

    /// How many hazards are held.
    pub fn hazard_count(&self) -> usize {
        self.inner.hazards.lock().len()
    }

    /// Hazards not kept because the log was full.
    pub fn hazards_dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The next sequence number (everything recorded so far is below it).
    pub fn current_seq(&self) -> u64 {
        self.inner.seq.load(Ordering::Acquire)
    }

    /// Declared mappings not yet declared unmapped.
    pub fn live_mappings(&self) -> i64 {
        self.inner.live_mappings.load(Ordering::Acquire)
    }

    /// Registers an exporter. `owner` is the accessor identity of the
    /// exporter's own accesses, which the protocol classes exempt.
    pub fn register_exporter(
        &self,
        name: &str,
        owner: &Accessor,
    ) -> Result<ExporterId, MonitorError> {
        let mut ex = self.inner.exporters.lock();
        if ex.len() as u64 >= P_EXPORTER_MASK {
            return Err(MonitorError::TooManyExporters {
                max: P_EXPORTER_MASK,
            });
        }
        ex.push(ExporterInfo {
            name: name.into(),
            owner: owner.clone(),
        });
        Ok(ExporterId(ex.len() as u32 - 1))
    }

    fn check_range(&self, start: u64, len: u64) -> Result<(), MonitorError> {
        if len == 0 || self.inner.mem.check_range(start, len).is_err() {
            return Err(MonitorError::BadRange { start, len });
        }
        Ok(())
    }

    /// Declares mapping M of an attachment. Bus ranges must lie in the
    /// physical address space (their page tags are snapshot now); IOVA ranges
    /// must be non-empty and not wrap.
    pub fn declare_mapping(&self, decl: MappingDecl) -> Result<MappingToken, MonitorError> {
        if let Some(e) = decl.exporter
            && self.inner.exporters.lock().len() <= e.0 as usize
        {
            return Err(MonitorError::UnknownExporter(e.0));
        }
        let mut bus_tags = Vec::new();
        for r in &decl.ranges {
            match r.space {
                AddrSpace::Bus => {
                    self.check_range(r.start, r.len)?;
                    let first = r.start & !(PAGE_SIZE - 1);
                    let end = r.start + r.len;
                    let mut tags = Vec::new();
                    let mut p = first;
                    while p < end {
                        tags.push(self.inner.mem.tag_of(p).unwrap_or(0));
                        p += PAGE_SIZE;
                    }
                    bus_tags.push((first, tags));
                }
                _ => {
                    if r.len == 0 || r.start.checked_add(r.len).is_none() {
                        return Err(MonitorError::BadRange {
                            start: r.start,
                            len: r.len,
                        });
                    }
                }
            }
        }
        let id = MappingId(self.inner.next_mapping.fetch_add(1, Ordering::Relaxed));
        let seq = self.inner.next_seq();
        self.inner.live_mappings.fetch_add(1, Ordering::AcqRel);
        trace_event!(
            trace::MONITOR_MAP,
            "mapping={} attachment={} importer={} ranges=[{}] mseq={}",
            id.0,
            decl.attachment,
            decl.importer,
            decl.ranges
                .iter()
                .map(|r| format!("{:?}:{:#x}+{:#x}", r.space, r.start, r.len))
                .collect::<Vec<_>>()
                .join(","),
            seq
        );
        let rec = Arc::new(MappingRecord {
            id,
            attachment: decl.attachment,
            importer: decl.importer,
            exporter: decl.exporter,
            ranges: decl.ranges,
            bus_tags,
            unmapped: AtomicBool::new(false),
            declared_seq: seq,
        });
        self.inner.live.lock().push(rec.clone());
        self.inner.live_access(true);
        Ok(MappingToken(rec))
    }

    /// Declares that mapping M was unmapped. Returns the sequence number.
    pub fn mapping_unmapped(&self, token: &MappingToken) -> Result<u64, MonitorError> {
        if token.0.unmapped.swap(true, Ordering::AcqRel) {
            return Err(MonitorError::AlreadyUnmapped(token.0.id.0));
        }
        self.inner.live_mappings.fetch_sub(1, Ordering::AcqRel);
        self.inner.live.lock().retain(|r| r.id != token.0.id);
        self.inner.live_access(true);
        let seq = self.inner.next_seq();
        trace_event!(
            trace::MONITOR_UNMAP,
            "mapping={} attachment={} mseq={}",
            token.0.id.0,
            token.0.attachment,
            seq
        );
        Ok(seq)
    }

    fn stamp(
        &self,
        ex: ExporterId,
        ranges: &[PhysRange],
        flags: u64,
        event: &'static str,
    ) -> Result<u64, MonitorError> {
        let owner = {
            let exs = self.inner.exporters.lock();
            exs.get(ex.0 as usize)
                .map(|e| (e.owner.hash32(), e.name.clone()))
                .ok_or(MonitorError::UnknownExporter(ex.0))?
        };
        for r in ranges {
            self.check_range(r.start, r.len)?;
        }
        let word = if flags == 0 {
            0
        } else {
            flags
                | ((u64::from(ex.0) + 1) << P_EXPORTER_SHIFT)
                | (u64::from(owner.0) << P_OWNER_SHIFT)
        };
        // One event of the model: the stage is reached by the whole buffer
        // at once (the sequence step returned), so the pages are stamped in
        // one segment after one scheduling point. Stamped page by page, a
        // read-ahead pass over P pages could fall between the pages' stamps
        // in 2^P ways the kernel has no counterpart of.
        sched::point();
        for r in ranges {
            let mut p = r.start & !(PAGE_SIZE - 1);
            while p < r.start + r.len {
                if let Some((_, page)) = self.inner.mem.page(p) {
                    // Two words (see `Page::prot_fences`): the fences-done
                    // stamp leaves the revoked word alone unless it was
                    // set, so reads, which consult only that word, are not
                    // ordered against it.
                    let fences = if flags & P_FENCES_DONE != 0 { word } else { 0 };
                    let revoked = if flags & P_REVOKED != 0 { word } else { 0 };
                    page.prot_fences.store_in_segment(fences, Ordering::Release);
                    if revoked != 0 || page.prot.load_in_segment(Ordering::Acquire) != 0 {
                        page.prot.store_in_segment(revoked, Ordering::Release);
                    }
                }
                p += PAGE_SIZE;
            }
        }
        let seq = self.inner.next_seq();
        trace_event!(
            event,
            "exporter={} ranges=[{}] mseq={}",
            owner.1,
            ranges
                .iter()
                .map(|r| format!("{:#x}+{:#x}", r.start, r.len))
                .collect::<Vec<_>>()
                .join(","),
            seq
        );
        Ok(seq)
    }

    /// Declares that exporter E's revoke fence wait finished over `ranges`:
    /// from now on importer writes there are `WriteAfterFences`. Returns the
    /// sequence number.
    pub fn fences_done(&self, ex: ExporterId, ranges: &[PhysRange]) -> Result<u64, MonitorError> {
        self.stamp(ex, ranges, P_FENCES_DONE, trace::MONITOR_FENCES_DONE)
    }

    /// Declares that E's revoke returned over `ranges`: from now on any
    /// importer access there is `AccessAfterRevoke`.
    pub fn revoke_returned(
        &self,
        ex: ExporterId,
        ranges: &[PhysRange],
    ) -> Result<u64, MonitorError> {
        self.stamp(
            ex,
            ranges,
            P_FENCES_DONE | P_REVOKED,
            trace::MONITOR_REVOKE_RETURNED,
        )
    }

    /// Declares that E un-revoked `ranges`: ordinary memory again.
    pub fn unrevoke(&self, ex: ExporterId, ranges: &[PhysRange]) -> Result<u64, MonitorError> {
        self.stamp(ex, ranges, 0, trace::MONITOR_UNREVOKE)
    }

    /// The declared mappings whose bus ranges overlap `ranges` and that
    /// were not declared unmapped (the `sg` entries of a [`ReuseEvent`]).
    pub(crate) fn outstanding_sg(&self, ranges: &[PhysRange]) -> Vec<Outstanding> {
        let live = self.inner.live.lock().clone();
        self.inner.live_access(false);
        let mut out = Vec::new();
        for r in live {
            if r.unmapped.load(Ordering::Acquire) {
                continue;
            }
            for d in &r.ranges {
                if d.space == AddrSpace::Bus
                    && ranges
                        .iter()
                        .any(|p| d.start < p.start + p.len && p.start < d.start + d.len)
                {
                    out.push(Outstanding {
                        kind: "sg",
                        holder: r.importer.name().to_owned(),
                        mapping: Some(r.id),
                        detail: format!(
                            "attachment {} bus {:#x}+{:#x}",
                            r.attachment, d.start, d.len
                        ),
                    });
                    break;
                }
            }
        }
        out
    }

    /// Records a [`ReuseEvent`] (fills in `seq` and `ts_ns`) and traces it.
    /// Returns its sequence number.
    pub(crate) fn record_reuse(
        &self,
        kind: ReuseKind,
        who: &str,
        ranges: &[PhysRange],
        outstanding: Vec<Outstanding>,
    ) -> u64 {
        let ev = ReuseEvent {
            kind,
            who: who.to_owned(),
            ranges: ranges.to_vec(),
            outstanding,
            seq: self.inner.next_seq(),
            ts_ns: dmabuf_core::sync::time::now_ns(),
        };
        trace_event!(
            trace::MEM_REUSE,
            "kind={} who={} ranges=[{}] outstanding={} mseq={}",
            ev.kind,
            ev.who,
            ev.ranges
                .iter()
                .map(|r| format!("{:#x}+{:#x}", r.start, r.len))
                .collect::<Vec<_>>()
                .join(","),
            ev.outstanding.len(),
            ev.seq
        );
        let seq = ev.seq;
        let mut log = self.inner.reuse.lock();
        if log.len() < MAX_REUSE_EVENTS {
            log.push(ev);
        }
        seq
    }

    /// Every [`ReuseEvent`] so far, in order.
    pub fn reuse_events(&self) -> Vec<ReuseEvent> {
        self.inner.reuse.lock().clone()
    }

    /// The exporter's name.
    pub fn exporter_name(&self, ex: ExporterId) -> Option<String> {
        self.inner
            .exporters
            .lock()
            .get(ex.0 as usize)
            .map(|e| e.name.clone())
    }
}

pub(crate) fn flags_of(prot: u64) -> u64 {
    prot & P_FLAGS
}
