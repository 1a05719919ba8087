//! `dma_buf`: buffer objects shared between an exporter and importers
//! (kernel `drivers/dma-buf/dma-buf.c`, Linux 7.1 semantics).
//!
//! # Objects
//!
//! | Rust | kernel | notes |
//! |---|---|---|
//! | [`DmaBuf`] | `struct dma_buf` + one file reference | `Clone` is `get_dma_buf`, `Drop` is `dma_buf_put`; release runs once, after the last reference |
//! | [`ExportInfo`] / [`export`] | `dma_buf_export_info` / `dma_buf_export` | exporter name required; own or shared [`DmaResv`] |
//! | [`DmaBufOps`] | `struct dma_buf_ops` | map, unmap, release mandatory (trait methods); pin/unpin only as a pair ([`PinOps`]); mmap, vmap optional |
//! | [`Attachment`] | `struct dma_buf_attachment` | static (`attach`) or dynamic (`dynamic_attach` with [`AttachOps`]) |
//! | [`AttachOps`] | `struct dma_buf_attach_ops` | `allow_peer2peer`, optional `invalidate_mappings` |
//! | [`Mapping`] | an `sg_table` handed to the importer | each map returns a new one, unmapped individually; never cached |
//!
//! # Locking convention (DOC "locking convention" in dma-buf.c), enforced on every call
//!
//! | caller must hold the reservation lock | caller must not hold it |
//! |---|---|
//! | [`pin`], [`unpin`], [`map_attachment`], [`unmap_attachment`], [`vmap`], [`vunmap`], [`invalidate_mappings`] (exporter) | [`export`], [`attach`], [`dynamic_attach`], [`detach`], dropping a [`DmaBuf`], [`mmap`], [`begin_cpu_access`], [`end_cpu_access`], every `_unlocked` variant |
//!
//! Calls of the first column take a [`ResvGuard`], which proves the lock is
//! held; the guard must belong to this buffer's reservation object or the
//! call fails with [`DmaBufError::LockNotHeld`]. Calls of the second column
//! fail with [`DmaBufError::LockHeld`] when the calling thread holds it.
//! Exporter callbacks follow the kernel: `attach`, `detach`, `release`,
//! `begin/end_cpu_access` and `mmap` run without the lock; `pin`, `unpin`,
//! `map_dma_buf`, `unmap_dma_buf`, `vmap` and `vunmap` run with it.
//!
//! # Attachment states (importer view)
//!
//! | state | meaning | leaves by |
//! |---|---|---|
//! | attached (static / dynamic revocable / dynamic non-revocable) | on the buffer's list, nothing mapped | map, pin (dynamic), detach |
//! | + pinned(n) | dynamic importer pinned n times; the exporter must not move the buffer | unpin |
//! | + mapped(n) | n outstanding mappings | unmap, each individually |
//! | invalidated | the exporter called `invalidate_mappings`; stale mappings must be unmapped (in bounded time if the importer has the op) | unmap, re-map |
//! | detached | off the list; further calls fail with `EINVAL` | (final) |
//!
//! Detach does not unmap or unpin (Linux 6.15+); detaching with mappings or
//! pins outstanding is an importer bug, recorded as a [`Diagnostic`].
//!
//! # What may happen after what
//!
//! * The exporter's `attach` op runs before the attachment is on the list;
//!   once it is listed, `invalidate_mappings` may reach the importer before
//!   the importer finished its own setup (the xe 2026 fix): importers must
//!   tolerate it.
//! * A static importer of a dynamic exporter is pinned on map and unpinned on
//!   unmap, and the core waits for `Kernel`-usage fences before returning the
//!   mapping. Dynamic importers wait for those fences themselves.
//! * `invalidate_mappings` walks newest attachment first, skips static
//!   attachments and attachments without the op.
//! * Release empties the buffer's attachment list: an attachment never
//!   detached is diagnosed, then reachable only through the importer's own
//!   handle (which alone keeps the buffer object's memory).

pub mod examples;

use crate::dma_fence::{CancelToken, FenceError, MAX_SCHEDULE_TIMEOUT};
use crate::dma_resv::{DmaResv, ResvError, ResvGuard, Usage};
use crate::errno::{self, AsErrno, Errno};
use crate::sync::atomic::{AtomicBool, Ordering, RefCount};
use crate::sync::{Arc, Mutex, Weak};
use crate::trace_event;
use std::any::Any;
use std::fmt;

/// `PAGE_SIZE`.
pub const PAGE_SIZE: u64 = 4096;
/// `DMA_BUF_NAME_LEN`: the name buffer, NUL included.
pub const DMA_BUF_NAME_LEN: usize = 32;

/// Errors of dma-buf calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaBufError {
    /// Invalid argument (`EINVAL`).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The exporter name is empty.
    #[error("dma_buf_export: exporter name is required")]
    NoExporterName,
    /// A call that needs the reservation lock was made without it (or with
    /// the lock of another buffer).
    #[error("{call}: the buffer's reservation lock must be held by the caller")]
    LockNotHeld {
        /// The call.
        call: &'static str,
    },
    /// A call that must not hold the reservation lock was made with it held.
    #[error("{call}: must be called without holding the buffer's reservation lock")]
    LockHeld {
        /// The call.
        call: &'static str,
    },
    /// The attachment was detached already.
    #[error("attachment {id} of {dev} is detached")]
    Detached {
        /// Attachment id.
        id: u64,
        /// Importer device.
        dev: String,
    },
    /// The buffer has been released.
    #[error("dma-buf ino {ino} has been released")]
    Released {
        /// Inode number.
        ino: u64,
    },
    /// `dma_buf_pin` from a static importer.
    #[error("dma_buf_pin: attachment {id} is not dynamic")]
    NotDynamic {
        /// Attachment id.
        id: u64,
    },
    /// `unpin` without a matching pin.
    #[error("dma_buf_unpin: attachment {id} is not pinned")]
    NotPinned {
        /// Attachment id.
        id: u64,
    },
    /// A mapping given back to the wrong attachment or twice.
    #[error("mapping {mapping} does not belong to attachment {attach}")]
    UnknownMapping {
        /// Mapping id.
        mapping: u64,
        /// Attachment id.
        attach: u64,
    },
    /// The exporter returned an sg entry that is not page aligned.
    #[error("exporter {exp_name} returned an unaligned sg entry {addr:#x}+{len:#x}")]
    Unaligned {
        /// Exporter.
        exp_name: String,
        /// DMA address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The exporter has no such op (`mmap`, `vmap`).
    #[error("exporter {exp_name} has no {op} op")]
    NoOp {
        /// Exporter.
        exp_name: String,
        /// The op.
        op: &'static str,
    },
    /// Arithmetic overflow in a range.
    #[error("range overflows: pgoff {pgoff} + {pages} pages")]
    Overflow {
        /// Page offset.
        pgoff: u64,
        /// Page count.
        pages: u64,
    },
    /// `vunmap` with nothing mapped or a different address.
    #[error("vunmap of {addr:#x} does not match the vmap ({count} outstanding)")]
    VunmapMismatch {
        /// Address given.
        addr: u64,
        /// Current vmap count.
        count: u64,
    },
    /// A fence wait was interrupted.
    #[error("interrupted while waiting for fences")]
    Interrupted,
    /// Failure reported by an exporter or importer, with its errno.
    #[error("{what}: {errno}")]
    Errno {
        /// The errno.
        errno: Errno,
        /// Who failed.
        what: String,
    },
}

impl DmaBufError {
    /// An error carrying an errno, for exporter and importer ops. A raw
    /// number from outside goes through [`Errno::new`] first (either sign;
    /// a value that is no errno becomes `EINVAL`).
    pub fn errno(errno: Errno, what: impl Into<String>) -> Self {
        DmaBufError::Errno {
            errno,
            what: what.into(),
        }
    }
}

impl AsErrno for DmaBufError {
    fn errno(&self) -> Errno {
        match self {
            DmaBufError::Invalid(_)
            | DmaBufError::NoExporterName
            | DmaBufError::LockNotHeld { .. }
            | DmaBufError::Detached { .. }
            | DmaBufError::NotDynamic { .. }
            | DmaBufError::NotPinned { .. }
            | DmaBufError::UnknownMapping { .. }
            | DmaBufError::Unaligned { .. }
            | DmaBufError::NoOp { .. }
            | DmaBufError::VunmapMismatch { .. } => errno::EINVAL,
            DmaBufError::LockHeld { .. } => errno::EDEADLK,
            DmaBufError::Released { .. } => errno::EBADF,
            DmaBufError::Overflow { .. } => errno::EOVERFLOW,
            DmaBufError::Interrupted => errno::ERESTARTSYS,
            DmaBufError::Errno { errno, .. } => *errno,
        }
    }
}

impl From<ResvError> for DmaBufError {
    fn from(e: ResvError) -> Self {
        match e {
            ResvError::Interrupted => DmaBufError::Interrupted,
            other => DmaBufError::errno(other.errno(), other.to_string()),
        }
    }
}

impl From<FenceError> for DmaBufError {
    fn from(e: FenceError) -> Self {
        match e {
            FenceError::Interrupted => DmaBufError::Interrupted,
            other => DmaBufError::errno(other.errno(), other.to_string()),
        }
    }
}

/// `enum dma_data_direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaDirection {
    /// `DMA_BIDIRECTIONAL`.
    Bidirectional,
    /// `DMA_TO_DEVICE`: the device reads.
    ToDevice,
    /// `DMA_FROM_DEVICE`: the device writes.
    FromDevice,
}

impl DmaDirection {
    /// Whether CPU access in this direction writes (`BIDIRECTIONAL` or
    /// `TO_DEVICE`, as `dma_buf_begin_cpu_access` decides).
    pub fn cpu_writes(self) -> bool {
        matches!(self, DmaDirection::Bidirectional | DmaDirection::ToDevice)
    }
}

/// One scatter-gather entry: a DMA address and a length, both page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// DMA address (bus address or IOVA) as the importer's device sees it.
    pub dma_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What an exporter's `map_dma_buf` returns: DMA addresses only (no CPU
/// pages, as with `CONFIG_DMABUF_DEBUG` in 7.0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgTable {
    /// The entries, in buffer order.
    pub entries: Vec<SgEntry>,
}

impl SgTable {
    /// Total bytes covered.
    pub fn len(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }
    /// Whether no entry is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A mapping handed to an importer. Give it back to [`unmap_attachment`];
/// every map returns a new one.
#[derive(Debug)]
pub struct Mapping {
    id: u64,
    attach_id: u64,
    dir: DmaDirection,
    sgt: SgTable,
}

impl Mapping {
    /// Unique id of this mapping (for the monitor and traces).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The attachment it belongs to.
    pub fn attach_id(&self) -> u64 {
        self.attach_id
    }
    /// Direction requested at map time.
    pub fn dir(&self) -> DmaDirection {
        self.dir
    }
    /// The DMA addresses.
    pub fn sg_table(&self) -> &SgTable {
        &self.sgt
    }
}

/// `pin` and `unpin` exporter ops; the kernel requires both or neither, and
/// a type that implements this trait necessarily has both.
pub trait PinOps: Send + Sync {
    /// `pin`: after it returns the buffer must not move and its memory must
    /// be usable. Called with the reservation lock held.
    fn pin(&self, attach: &Attachment, guard: &ResvGuard<'_>) -> Result<(), DmaBufError>;
    /// `unpin`. Called with the reservation lock held.
    fn unpin(&self, attach: &Attachment, guard: &ResvGuard<'_>);
}

/// `vmap` and `vunmap` exporter ops.
pub trait VmapOps: Send + Sync {
    /// Maps the whole buffer for the kernel; returns an address.
    fn vmap(&self, buf: &DmaBufRef, guard: &ResvGuard<'_>) -> Result<u64, DmaBufError>;
    /// Undoes `vmap`.
    fn vunmap(&self, buf: &DmaBufRef, addr: u64, guard: &ResvGuard<'_>);
}

/// The range a userspace mapping asks for (what `vma` carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapRequest {
    /// Offset into the buffer, in pages.
    pub pgoff: u64,
    /// Length in pages.
    pub pages: u64,
}

/// Exporter ops (`struct dma_buf_ops`). `map_dma_buf`, `unmap_dma_buf` and
/// `release` are mandatory; everything else has a default meaning "absent".
///
/// The ops value is also the exporter's private data (`dmabuf->priv`):
/// exporter code that is handed a buffer gets its own type back with
/// [`DmaBufRef::exporter_priv`] (`Any` is a supertrait for that).
pub trait DmaBufOps: Any + Send + Sync + 'static {
    /// `attach`: may refuse the importer or clear its peer-to-peer flag.
    /// Called without the reservation lock, before the attachment is listed.
    fn attach(&self, _buf: &DmaBufRef, _attach: &Attachment) -> Result<(), DmaBufError> {
        Ok(())
    }
    /// `detach`: housekeeping, without the lock.
    fn detach(&self, _buf: &DmaBufRef, _attach: &Attachment) {}
    /// `pin`/`unpin`, if the exporter moves memory (a dynamic exporter).
    fn pin_ops(&self) -> Option<&dyn PinOps> {
        None
    }
    /// `map_dma_buf`, with the lock held. Entries must be page aligned; the
    /// table must be new (never cached or shared).
    fn map_dma_buf(
        &self,
        attach: &Attachment,
        dir: DmaDirection,
        guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError>;
    /// `unmap_dma_buf`, with the lock held.
    fn unmap_dma_buf(
        &self,
        attach: &Attachment,
        sgt: SgTable,
        dir: DmaDirection,
        guard: &ResvGuard<'_>,
    );
    /// `release`: once, after the last reference, without the lock.
    fn release(&self, buf: &DmaBufRef);
    /// `begin_cpu_access`, without the lock.
    fn begin_cpu_access(&self, _buf: &DmaBufRef, _dir: DmaDirection) -> Result<(), DmaBufError> {
        Ok(())
    }
    /// `end_cpu_access`, without the lock.
    fn end_cpu_access(&self, _buf: &DmaBufRef, _dir: DmaDirection) -> Result<(), DmaBufError> {
        Ok(())
    }
    /// Whether the exporter supports `mmap`.
    fn has_mmap(&self) -> bool {
        false
    }
    /// `mmap`, after the core checked the range. Without the lock.
    fn mmap(&self, buf: &DmaBufRef, _req: MmapRequest) -> Result<(), DmaBufError> {
        Err(DmaBufError::NoOp {
            exp_name: buf.exp_name().to_owned(),
            op: "mmap",
        })
    }
    /// `vmap`/`vunmap`, if supported.
    fn vmap_ops(&self) -> Option<&dyn VmapOps> {
        None
    }
}

/// `struct dma_buf_export_info`.
pub struct ExportInfo {
    /// Exporter name (`exp_name`); must not be empty.
    pub exp_name: String,
    /// Size in bytes; never changes.
    pub size: u64,
    /// File flags (`O_ACCMODE | O_NONBLOCK` are kept).
    pub flags: u32,
    /// A reservation object to share, or `None` for one of the buffer's own.
    pub resv: Option<Arc<DmaResv>>,
    /// The exporter's ops (and private data, as `priv`).
    pub ops: Arc<dyn DmaBufOps>,
}

/// An importer's callback (`invalidate_mappings`), called with the
/// reservation lock held.
pub type InvalidateFn = Arc<dyn Fn(&Attachment, &ResvGuard<'_>) + Send + Sync>;

/// `struct dma_buf_attach_ops`.
#[derive(Clone)]
pub struct AttachOps {
    /// The importer can handle peer-to-peer (MMIO, VRAM) memory.
    pub allow_peer2peer: bool,
    /// `invalidate_mappings` (7.1: optional; `None` is a pinned importer that
    /// cannot be revoked).
    pub invalidate_mappings: Option<InvalidateFn>,
}

impl fmt::Debug for AttachOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachOps")
            .field("allow_peer2peer", &self.allow_peer2peer)
            .field("invalidate_mappings", &self.invalidate_mappings.is_some())
            .finish()
    }
}

/// Problems found at release or detach time (the kernel WARNs or BUGs);
/// collected for the checker's `no-leak` property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Inode number of the buffer.
    pub ino: u64,
    /// Exporter name.
    pub exp_name: String,
    /// What was wrong.
    pub problem: String,
}

static DIAGNOSTICS: parking_lot::Mutex<Vec<Diagnostic>> = parking_lot::Mutex::new(Vec::new());
static BUFFERS: parking_lot::Mutex<Vec<Weak<DmaBufInner>>> = parking_lot::Mutex::new(Vec::new());

/// Diagnostics kept for readers; older ones are dropped past this (a checker
/// making thousands of runs reads its own by inode and leaves the rest).
const MAX_DIAGNOSTICS: usize = 4096;

fn diagnose(inner: &DmaBufInner, problem: String) {
    trace_event!(
        "dma_buf_warn",
        "exp_name={} ino={} {}",
        inner.exp_name,
        inner.ino,
        problem
    );
    inner.problems.lock().push(problem.clone());
    let mut d = DIAGNOSTICS.lock();
    if d.len() >= MAX_DIAGNOSTICS {
        d.remove(0);
    }
    d.push(Diagnostic {
        ino: inner.ino,
        exp_name: inner.exp_name.clone(),
        problem,
    });
}

/// Takes the diagnostics recorded for one buffer, leaving the others.
pub fn take_diagnostics_for(ino: u64) -> Vec<Diagnostic> {
    let mut all = DIAGNOSTICS.lock();
    let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|d| d.ino == ino);
    *all = rest;
    mine
}

/// Takes the diagnostics recorded so far (release with attachments or vmaps
/// outstanding, detach with mappings or pins outstanding).
pub fn take_diagnostics() -> Vec<Diagnostic> {
    std::mem::take(&mut *DIAGNOSTICS.lock())
}

struct VmapState {
    count: u64,
    addr: u64,
}

struct PollState {
    in_active: bool,
    out_active: bool,
}

pub(crate) struct DmaBufInner {
    ino: u64,
    size: u64,
    flags: u32,
    exp_name: String,
    name: Mutex<Option<Vec<u8>>>,
    ops: Arc<dyn DmaBufOps>,
    resv: Arc<DmaResv>,
    /// Newest first. Modified only with the reservation lock held, or by
    /// release (no file reference left), which empties it.
    attachments: Mutex<Vec<Attachment>>,
    vmap: Mutex<VmapState>,
    poll: Mutex<PollState>,
    file_refs: RefCount,
    released: AtomicBool,
    /// This buffer's own diagnostics (also appended to the process-wide
    /// list). A plain lock, never a scheduling point: recording a diagnostic
    /// must not change which schedule a replay token selects.
    problems: parking_lot::Mutex<Vec<String>>,
}

/// A reference to a dma-buf that is not a file reference: what exporter ops
/// and attachments see. It keeps the memory of the object alive but does not
/// keep the buffer from being released.
#[derive(Clone)]
#[repr(transparent)]
pub struct DmaBufRef(Arc<DmaBufInner>);

impl fmt::Debug for DmaBufRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DmaBuf(ino={} exp={} size={})",
            self.0.ino, self.0.exp_name, self.0.size
        )
    }
}

impl DmaBufRef {
    /// Inode number (unique, increasing).
    pub fn ino(&self) -> u64 {
        self.0.ino
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.0.size
    }
    /// File flags.
    pub fn flags(&self) -> u32 {
        self.0.flags
    }
    /// Exporter name.
    pub fn exp_name(&self) -> &str {
        &self.0.exp_name
    }
    /// The userspace-set name, if any, for display (bytes that are not
    /// UTF-8 shown as U+FFFD; [`DmaBufRef::name_bytes`] has them as set).
    pub fn name(&self) -> Option<String> {
        self.0
            .name
            .lock()
            .as_deref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
    }
    /// The userspace-set name exactly as given: any bytes but NUL.
    pub fn name_bytes(&self) -> Option<Vec<u8>> {
        self.0.name.lock().clone()
    }
    /// The reservation object.
    pub fn resv(&self) -> &Arc<DmaResv> {
        &self.0.resv
    }
    /// The exporter's ops.
    pub fn ops(&self) -> &Arc<dyn DmaBufOps> {
        &self.0.ops
    }
    /// The exporter's private data as its own type `T` (`dmabuf->priv`
    /// checked against the exporter's `dma_buf_ops`, as
    /// `vfio_pci_dma_buf_iommufd_map` checks `dmabuf->ops`); `None` when
    /// another exporter made the buffer.
    pub fn exporter_priv<T: DmaBufOps>(&self) -> Option<Arc<T>> {
        let any: Arc<dyn Any + Send + Sync> = self.0.ops.clone();
        any.downcast::<T>().ok()
    }
    /// `dma_buf_is_dynamic`: the exporter has pin/unpin.
    pub fn is_dynamic(&self) -> bool {
        self.0.ops.pin_ops().is_some()
    }
    /// Whether release has run.
    pub fn is_released(&self) -> bool {
        self.0.released.load(Ordering::Acquire)
    }
    /// Current attachments, newest first (a snapshot; empty once released).
    pub fn attachments(&self) -> Vec<Attachment> {
        self.0.attachments.lock().clone()
    }
    /// The problems found at release or detach time for this buffer
    /// (attachments or vmaps outstanding at release, detach with mappings or
    /// pins outstanding). Unlike the process-wide list, this cannot be mixed
    /// up with another execution's buffers.
    pub fn diagnostics(&self) -> Vec<String> {
        self.0.problems.lock().clone()
    }
    /// Number of file references.
    pub fn file_count(&self) -> usize {
        self.0.file_refs.count()
    }
    /// Whether two references name the same buffer.
    pub fn ptr_eq(&self, other: &DmaBufRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
    /// Takes a file reference, if the buffer has not been released
    /// (`get_file_active`).
    pub fn get_file_active(&self) -> Option<DmaBuf> {
        self.0
            .file_refs
            .get_unless_zero()
            .then(|| DmaBuf(self.0.clone()))
    }

    fn check_guard(&self, guard: &ResvGuard<'_>, call: &'static str) -> Result<(), DmaBufError> {
        if std::ptr::eq(guard.resv(), &*self.0.resv) {
            Ok(())
        } else {
            Err(DmaBufError::LockNotHeld { call })
        }
    }

    fn check_not_held(&self, call: &'static str) -> Result<(), DmaBufError> {
        if self.0.resv.is_held_by_current_thread() {
            Err(DmaBufError::LockHeld { call })
        } else {
            Ok(())
        }
    }
}

/// A file reference to a dma-buf (`struct dma_buf *` whose file the holder
/// has a reference on). `Clone` is `get_dma_buf`; `Drop` is `dma_buf_put`.
#[repr(transparent)]
pub struct DmaBuf(Arc<DmaBufInner>);

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl Clone for DmaBuf {
    fn clone(&self) -> Self {
        self.0.file_refs.get();
        DmaBuf(self.0.clone())
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.0.file_refs.put() {
            release(&self.0);
        }
    }
}

impl std::ops::Deref for DmaBuf {
    type Target = DmaBufRef;
    fn deref(&self) -> &DmaBufRef {
        // SAFETY: DmaBuf and DmaBufRef are both #[repr(transparent)] over
        // the same Arc<DmaBufInner>, so their layouts are identical.
        unsafe { &*(self as *const DmaBuf as *const DmaBufRef) }
    }
}

impl AsRef<DmaBufRef> for DmaBuf {
    fn as_ref(&self) -> &DmaBufRef {
        self
    }
}

impl DmaBuf {
    /// A non-file reference to the same buffer.
    pub fn downgrade(&self) -> DmaBufRef {
        DmaBufRef(self.0.clone())
    }
}

fn release(inner: &Arc<DmaBufInner>) {
    {
        let mut list = BUFFERS.lock();
        list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(inner)));
    }
    let r = DmaBufRef(inner.clone());
    let vmaps = inner.vmap.lock().count;
    if vmaps != 0 {
        diagnose(inner, format!("released with {vmaps} vmap(s) outstanding"));
    }
    inner.released.store(true, Ordering::Release);
    trace_event!(
        "dma_buf_release",
        "exp_name={} ino={}",
        inner.exp_name,
        inner.ino
    );
    inner.ops.release(&r);
    // The kernel frees the buffer whatever is still on its list (it only
    // warns). Here each listed attachment owns a reference to the buffer, so
    // a list kept after release would be a cycle: an importer freed without
    // detaching (a stalled process's, when it exits) would keep the buffer,
    // its exporter and the whole machine behind them alive for ever. Nobody
    // can detach from a released buffer (detach needs a file reference), so
    // the list goes with it; an importer that still holds its attachment
    // keeps just that.
    let left = std::mem::take(&mut *inner.attachments.lock());
    if !left.is_empty() {
        diagnose(
            inner,
            format!("released with {} attachment(s) still attached", left.len()),
        );
    }
}

/// Every buffer not yet released, oldest first (the global list behind
/// `bufinfo` and the dmabuf iterator).
pub fn list_buffers() -> Vec<DmaBufRef> {
    BUFFERS
        .lock()
        .iter()
        .filter_map(|w| w.upgrade())
        .filter(|i| !i.released.load(Ordering::Acquire))
        .map(DmaBufRef)
        .collect()
}

/// Inode numbers handed out on real threads start here, so that they never
/// collide with the per-execution numbers of controlled runs (which start at
/// 1 so replays print identical traces).
const REAL_INO_BASE: u64 = 1 << 32;

fn next_ino() -> u64 {
    use crate::sync::atomic::global::AtomicU64 as G;
    static NEXT: G = G::new(REAL_INO_BASE);
    #[cfg(not(loom))]
    if let Some(v) = crate::sync::sched::local_counter("dmabuf_ino", 1) {
        return v;
    }
    NEXT.fetch_add(1, crate::sync::atomic::Ordering::Relaxed)
}

fn next_id() -> u64 {
    use crate::sync::atomic::global::AtomicU64 as G;
    static NEXT: G = G::new(1);
    #[cfg(not(loom))]
    if let Some(v) = crate::sync::sched::local_counter("dmabuf_obj", 1) {
        return v;
    }
    NEXT.fetch_add(1, crate::sync::atomic::Ordering::Relaxed)
}

/// `O_ACCMODE | O_NONBLOCK`: the file flags a dma-buf keeps.
pub const KEPT_FLAGS: u32 = 0o3 | 0o4000;

/// `dma_buf_export`: creates a buffer owning one file reference.
pub fn export(info: ExportInfo) -> Result<DmaBuf, DmaBufError> {
    if info.exp_name.is_empty() {
        return Err(DmaBufError::NoExporterName);
    }
    if let Some(r) = &info.resv
        && r.is_held_by_current_thread()
    {
        return Err(DmaBufError::LockHeld {
            call: "dma_buf_export",
        });
    }
    if crate::fault::should_fail("dma_buf_export") {
        return Err(DmaBufError::errno(errno::ENOMEM, "dma_buf_export: kzalloc"));
    }
    let inner = Arc::new(DmaBufInner {
        ino: next_ino(),
        size: info.size,
        flags: info.flags & KEPT_FLAGS,
        exp_name: info.exp_name,
        name: Mutex::new(None),
        ops: info.ops,
        resv: info.resv.unwrap_or_else(|| Arc::new(DmaResv::new())),
        attachments: Mutex::new(Vec::new()),
        vmap: Mutex::new(VmapState { count: 0, addr: 0 }),
        poll: Mutex::new(PollState {
            in_active: false,
            out_active: false,
        }),
        file_refs: RefCount::new(1),
        released: AtomicBool::new(false),
        problems: parking_lot::Mutex::new(Vec::new()),
    });
    BUFFERS.lock().push(Arc::downgrade(&inner));
    trace_event!(
        "dma_buf_export",
        "exp_name={} ino={} size={:#x}",
        inner.exp_name,
        inner.ino,
        inner.size
    );
    Ok(DmaBuf(inner))
}

struct AttachState {
    pins: u64,
    /// Outstanding mappings: (id, pinned by the core on map).
    maps: Vec<(u64, bool)>,
    detached: bool,
}

pub(crate) struct AttachInner {
    id: u64,
    buf: DmaBufRef,
    dev: String,
    importer_ops: Option<AttachOps>,
    peer2peer: AtomicBool,
    /// Non-owning, like the kernel's `importer_priv` pointer: the importer
    /// usually holds a file reference to the buffer, so an owning pointer
    /// here would make a cycle that only the importer's teardown breaks.
    importer_priv: Mutex<Option<Weak<dyn Any + Send + Sync>>>,
    exporter_priv: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    state: Mutex<AttachState>,
}

/// `struct dma_buf_attachment`. Cloning gives another handle to the same
/// attachment.
#[derive(Clone)]
pub struct Attachment(Arc<AttachInner>);

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Attachment(#{} dev={} {} p2p={})",
            self.0.id,
            self.0.dev,
            if self.is_dynamic() {
                "dynamic"
            } else {
                "static"
            },
            self.peer2peer()
        )
    }
}

impl PartialEq for Attachment {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Attachment {}

impl Attachment {
    /// Unique id.
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// The importer's device name.
    pub fn dev(&self) -> &str {
        &self.0.dev
    }
    /// The buffer.
    pub fn dmabuf(&self) -> &DmaBufRef {
        &self.0.buf
    }
    /// `attach->peer2peer`.
    pub fn peer2peer(&self) -> bool {
        self.0.peer2peer.load(Ordering::Acquire)
    }
    /// The exporter may clear peer-to-peer in its `attach` op.
    pub fn set_peer2peer(&self, v: bool) {
        self.0.peer2peer.store(v, Ordering::Release)
    }
    /// `dma_buf_attachment_is_dynamic`: importer ops were given.
    pub fn is_dynamic(&self) -> bool {
        self.0.importer_ops.is_some()
    }
    /// The importer ops, if dynamic.
    pub fn importer_ops(&self) -> Option<&AttachOps> {
        self.0.importer_ops.as_ref()
    }
    /// Importer private data (`importer_priv`); `None` while the importer
    /// is still setting up, or once its data is gone.
    pub fn importer_priv(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.importer_priv.lock().as_ref().and_then(Weak::upgrade)
    }
    /// Sets the importer's private data. The attachment does not own it
    /// (the kernel's is a plain pointer): the importer keeps it alive.
    pub fn set_importer_priv(&self, p: Option<&Arc<dyn Any + Send + Sync>>) {
        *self.0.importer_priv.lock() = p.map(Arc::downgrade);
    }
    /// Exporter private data (`priv`).
    pub fn exporter_priv(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.exporter_priv.lock().clone()
    }
    /// Sets the exporter's private data.
    pub fn set_exporter_priv(&self, p: Option<Arc<dyn Any + Send + Sync>>) {
        *self.0.exporter_priv.lock() = p;
    }
    /// Outstanding pins.
    pub fn pin_count(&self) -> u64 {
        self.0.state.lock().pins
    }
    /// Outstanding mappings.
    pub fn map_count(&self) -> usize {
        self.0.state.lock().maps.len()
    }
    /// Whether detached.
    pub fn is_detached(&self) -> bool {
        self.0.state.lock().detached
    }

    fn check_live(&self) -> Result<(), DmaBufError> {
        if self.0.state.lock().detached {
            return Err(DmaBufError::Detached {
                id: self.0.id,
                dev: self.0.dev.clone(),
            });
        }
        Ok(())
    }

    /// `dma_buf_pin_on_map` (7.1): exporter has pin and the importer is
    /// static.
    fn pin_on_map(&self) -> bool {
        self.0.buf.is_dynamic() && !self.is_dynamic()
    }
}

/// `dma_buf_attach_revocable` (7.1): the importer has ops and an
/// `invalidate_mappings` op, i.e. it promises to unmap within bounded time
/// after an invalidation.
pub fn attach_revocable(attach: &Attachment) -> bool {
    attach
        .importer_ops()
        .is_some_and(|o| o.invalidate_mappings.is_some())
}

/// `dma_buf_attachment_is_dynamic`.
pub fn attachment_is_dynamic(attach: &Attachment) -> bool {
    attach.is_dynamic()
}

/// `dma_buf_attach`: a static attachment (no importer ops; never notified).
pub fn attach(buf: &DmaBuf, dev: &str) -> Result<Attachment, DmaBufError> {
    dynamic_attach(buf, dev, None)
}

/// `dma_buf_dynamic_attach`. The exporter's `attach` op runs without the
/// reservation lock, before the attachment is on the list; on failure no
/// attachment remains. Then the attachment is listed (newest first) under the
/// lock.
pub fn dynamic_attach(
    buf: &DmaBuf,
    dev: &str,
    ops: Option<AttachOps>,
) -> Result<Attachment, DmaBufError> {
    buf.check_not_held("dma_buf_dynamic_attach")?;
    if buf.is_released() {
        return Err(DmaBufError::Released { ino: buf.ino() });
    }
    if dev.is_empty() {
        return Err(DmaBufError::Invalid("dma_buf_attach: no device".into()));
    }
    if crate::fault::should_fail("dma_buf_attach") {
        return Err(DmaBufError::errno(errno::ENOMEM, "dma_buf_attach: kzalloc"));
    }
    let p2p = ops.as_ref().is_some_and(|o| o.allow_peer2peer);
    let a = Attachment(Arc::new(AttachInner {
        id: next_id(),
        buf: buf.downgrade(),
        dev: dev.to_owned(),
        importer_ops: ops,
        peer2peer: AtomicBool::new(p2p),
        importer_priv: Mutex::new(None),
        exporter_priv: Mutex::new(None),
        state: Mutex::new(AttachState {
            pins: 0,
            maps: Vec::new(),
            detached: false,
        }),
    }));
    if let Err(e) = buf.ops().attach(buf, &a) {
        trace_event!(
            "dma_buf_attach_refused",
            "exp_name={} ino={} dev={} err={}",
            buf.exp_name(),
            buf.ino(),
            dev,
            e.errno()
        );
        a.0.state.lock().detached = true;
        return Err(e);
    }
    {
        let _g = buf.resv().lock(None)?;
        buf.0.attachments.lock().insert(0, a.clone());
    }
    // Read outside the trace point: a shim load there would be a
    // scheduling point only when tracing is on, and a replay with tracing
    // would then follow another schedule.
    let p2p = a.peer2peer();
    trace_event!(
        "dma_buf_attach",
        "exp_name={} ino={} attach={} dev={} dynamic={} p2p={}",
        buf.exp_name(),
        buf.ino(),
        a.id(),
        dev,
        a.is_dynamic(),
        p2p
    );
    Ok(a)
}

/// `dma_buf_detach`: takes the attachment off the list under the lock, then
/// calls the exporter's `detach` op without it. Does not unmap or unpin.
pub fn detach(buf: &DmaBuf, attach: &Attachment) -> Result<(), DmaBufError> {
    buf.check_not_held("dma_buf_detach")?;
    if !attach.dmabuf().ptr_eq(buf) {
        return Err(DmaBufError::Invalid(format!(
            "dma_buf_detach: attachment {} belongs to another buffer",
            attach.id()
        )));
    }
    attach.check_live()?;
    {
        let _g = buf.resv().lock(None)?;
        buf.0.attachments.lock().retain(|a| a != attach);
        let mut st = attach.0.state.lock();
        st.detached = true;
        if !st.maps.is_empty() || st.pins != 0 {
            let (m, p) = (st.maps.len(), st.pins);
            drop(st);
            diagnose(
                &buf.0,
                format!(
                    "attachment {} ({}) detached with {m} mapping(s) and {p} pin(s) outstanding",
                    attach.id(),
                    attach.dev()
                ),
            );
        }
    }
    buf.ops().detach(buf, attach);
    trace_event!(
        "dma_buf_detach",
        "exp_name={} ino={} attach={} dev={}",
        buf.exp_name(),
        buf.ino(),
        attach.id(),
        attach.dev()
    );
    Ok(())
}

/// `dma_buf_pin`: dynamic importers only; lock held. A missing exporter pin
/// op means success.
pub fn pin(attach: &Attachment, guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
    let buf = attach.dmabuf();
    buf.check_guard(guard, "dma_buf_pin")?;
    attach.check_live()?;
    if !attach.is_dynamic() {
        return Err(DmaBufError::NotDynamic { id: attach.id() });
    }
    if let Some(p) = buf.ops().pin_ops() {
        p.pin(attach, guard)?;
    }
    attach.0.state.lock().pins += 1;
    trace_event!("dma_buf_pin", "ino={} attach={}", buf.ino(), attach.id());
    Ok(())
}

/// `dma_buf_unpin`: lock held; must balance a [`pin`].
pub fn unpin(attach: &Attachment, guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
    let buf = attach.dmabuf();
    buf.check_guard(guard, "dma_buf_unpin")?;
    if !attach.is_dynamic() {
        return Err(DmaBufError::NotDynamic { id: attach.id() });
    }
    {
        let mut st = attach.0.state.lock();
        if st.pins == 0 {
            return Err(DmaBufError::NotPinned { id: attach.id() });
        }
        st.pins -= 1;
    }
    if let Some(p) = buf.ops().pin_ops() {
        p.unpin(attach, guard);
    }
    trace_event!("dma_buf_unpin", "ino={} attach={}", buf.ino(), attach.id());
    Ok(())
}

/// `dma_buf_map_attachment`: lock held. Pins first for a static importer of
/// a dynamic exporter; checks page alignment; for static importers waits for
/// `Kernel` fences. Any failure undoes the pin and the exporter's map.
pub fn map_attachment(
    attach: &Attachment,
    dir: DmaDirection,
    guard: &ResvGuard<'_>,
) -> Result<Mapping, DmaBufError> {
    let buf = attach.dmabuf();
    buf.check_guard(guard, "dma_buf_map_attachment")?;
    attach.check_live()?;
    let pin_on_map = attach.pin_on_map();
    let pin_ops = buf.ops().pin_ops();
    if pin_on_map && let Some(p) = pin_ops {
        p.pin(attach, guard)?;
    }
    let undo_pin = |attach: &Attachment| {
        if pin_on_map && let Some(p) = pin_ops {
            p.unpin(attach, guard);
        }
    };
    // The exporter's `map_dma_buf` allocates the sg_table; the fault is
    // injected here for every exporter (see `fault`).
    if crate::fault::should_fail("sg_alloc_table") {
        undo_pin(attach);
        return Err(DmaBufError::errno(
            errno::ENOMEM,
            "map_dma_buf: sg_alloc_table",
        ));
    }
    let sgt = match buf.ops().map_dma_buf(attach, dir, guard) {
        Ok(s) => s,
        Err(e) => {
            undo_pin(attach);
            return Err(e);
        }
    };
    if let Some(bad) = sgt
        .entries
        .iter()
        .find(|e| e.dma_addr % PAGE_SIZE != 0 || e.len % PAGE_SIZE != 0)
    {
        let err = DmaBufError::Unaligned {
            exp_name: buf.exp_name().to_owned(),
            addr: bad.dma_addr,
            len: bad.len,
        };
        buf.ops().unmap_dma_buf(attach, sgt, dir, guard);
        undo_pin(attach);
        return Err(err);
    }
    if !attach.is_dynamic() {
        let r = buf
            .resv()
            .wait_timeout(Usage::Kernel, None, MAX_SCHEDULE_TIMEOUT);
        if let Err(e) = r {
            buf.ops().unmap_dma_buf(attach, sgt, dir, guard);
            undo_pin(attach);
            return Err(e.into());
        }
    }
    let id = next_id();
    attach.0.state.lock().maps.push((id, pin_on_map));
    trace_event!(
        "dma_buf_map_attachment",
        "exp_name={} ino={} attach={} mapping={} dev={} nents={}",
        buf.exp_name(),
        buf.ino(),
        attach.id(),
        id,
        attach.dev(),
        sgt.entries.len()
    );
    Ok(Mapping {
        id,
        attach_id: attach.id(),
        dir,
        sgt,
    })
}

/// `dma_buf_map_attachment_unlocked`: takes the lock around [`map_attachment`].
pub fn map_attachment_unlocked(
    attach: &Attachment,
    dir: DmaDirection,
) -> Result<Mapping, DmaBufError> {
    let buf = attach.dmabuf();
    buf.check_not_held("dma_buf_map_attachment_unlocked")?;
    let g = buf.resv().lock(None)?;
    map_attachment(attach, dir, &g)
}

/// `dma_buf_unmap_attachment`: lock held. Unpins what the core pinned on
/// map. A mapping that is not this attachment's is refused and handed back
/// in the error path untouched (nothing is unmapped).
pub fn unmap_attachment(
    attach: &Attachment,
    mapping: Mapping,
    guard: &ResvGuard<'_>,
) -> Result<(), DmaBufError> {
    let buf = attach.dmabuf();
    buf.check_guard(guard, "dma_buf_unmap_attachment")?;
    let pinned_on_map = {
        let mut st = attach.0.state.lock();
        let Some(pos) = st.maps.iter().position(|(id, _)| *id == mapping.id) else {
            return Err(DmaBufError::UnknownMapping {
                mapping: mapping.id,
                attach: attach.id(),
            });
        };
        st.maps.remove(pos).1
    };
    let id = mapping.id;
    buf.ops()
        .unmap_dma_buf(attach, mapping.sgt, mapping.dir, guard);
    if pinned_on_map && let Some(p) = buf.ops().pin_ops() {
        p.unpin(attach, guard);
    }
    trace_event!(
        "dma_buf_unmap_attachment",
        "exp_name={} ino={} attach={} mapping={} dev={}",
        buf.exp_name(),
        buf.ino(),
        attach.id(),
        id,
        attach.dev()
    );
    Ok(())
}

/// `dma_buf_unmap_attachment_unlocked`.
pub fn unmap_attachment_unlocked(attach: &Attachment, mapping: Mapping) -> Result<(), DmaBufError> {
    let buf = attach.dmabuf();
    buf.check_not_held("dma_buf_unmap_attachment_unlocked")?;
    let g = buf.resv().lock(None)?;
    unmap_attachment(attach, mapping, &g)
}

/// `dma_buf_invalidate_mappings` (7.1; `dma_buf_move_notify` before): the
/// exporter, holding the lock, tells every dynamic importer with the op that
/// its mappings must be dropped. Newest attachment first; static
/// attachments and attachments without the op are skipped.
pub fn invalidate_mappings(buf: &DmaBufRef, guard: &ResvGuard<'_>) -> Result<usize, DmaBufError> {
    buf.check_guard(guard, "dma_buf_invalidate_mappings")?;
    let list = buf.0.attachments.lock().clone();
    trace_event!(
        "dma_buf_invalidate_mappings",
        "exp_name={} ino={} attachments={}",
        buf.exp_name(),
        buf.ino(),
        list.len()
    );
    let mut notified = 0;
    for a in list {
        if let Some(f) = a.importer_ops().and_then(|o| o.invalidate_mappings.clone()) {
            trace_event!(
                "dma_buf_invalidate_attachment",
                "ino={} attach={} dev={}",
                buf.ino(),
                a.id(),
                a.dev()
            );
            f(&a, guard);
            notified += 1;
        }
    }
    Ok(notified)
}

/// `dma_buf_vmap`: lock held; refcounted (the first call maps).
pub fn vmap(buf: &DmaBufRef, guard: &ResvGuard<'_>) -> Result<u64, DmaBufError> {
    buf.check_guard(guard, "dma_buf_vmap")?;
    let Some(ops) = buf.ops().vmap_ops() else {
        return Err(DmaBufError::NoOp {
            exp_name: buf.exp_name().to_owned(),
            op: "vmap",
        });
    };
    let mut v = buf.0.vmap.lock();
    if v.count > 0 {
        v.count += 1;
        return Ok(v.addr);
    }
    let addr = ops.vmap(buf, guard)?;
    v.count = 1;
    v.addr = addr;
    Ok(addr)
}

/// `dma_buf_vunmap`: lock held; the last reference calls the exporter.
pub fn vunmap(buf: &DmaBufRef, addr: u64, guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
    buf.check_guard(guard, "dma_buf_vunmap")?;
    let mut v = buf.0.vmap.lock();
    if v.count == 0 || v.addr != addr {
        return Err(DmaBufError::VunmapMismatch {
            addr,
            count: v.count,
        });
    }
    v.count -= 1;
    if v.count == 0 {
        v.addr = 0;
        drop(v);
        if let Some(ops) = buf.ops().vmap_ops() {
            ops.vunmap(buf, addr, guard);
        }
    }
    Ok(())
}

/// `dma_buf_vmap_unlocked`.
pub fn vmap_unlocked(buf: &DmaBufRef) -> Result<u64, DmaBufError> {
    buf.check_not_held("dma_buf_vmap_unlocked")?;
    let g = buf.resv().lock(None)?;
    vmap(buf, &g)
}

/// `dma_buf_vunmap_unlocked`.
pub fn vunmap_unlocked(buf: &DmaBufRef, addr: u64) -> Result<(), DmaBufError> {
    buf.check_not_held("dma_buf_vunmap_unlocked")?;
    let g = buf.resv().lock(None)?;
    vunmap(buf, addr, &g)
}

/// The range checks of `dma_buf_mmap` and of an mmap on the fd.
pub fn check_mmap_range(buf: &DmaBufRef, req: MmapRequest) -> Result<(), DmaBufError> {
    if !buf.ops().has_mmap() {
        return Err(DmaBufError::NoOp {
            exp_name: buf.exp_name().to_owned(),
            op: "mmap",
        });
    }
    let end = req
        .pgoff
        .checked_add(req.pages)
        .ok_or(DmaBufError::Overflow {
            pgoff: req.pgoff,
            pages: req.pages,
        })?;
    if end > buf.size() / PAGE_SIZE {
        return Err(DmaBufError::Invalid(format!(
            "mmap of pages {}..{end} past the buffer's {} pages",
            req.pgoff,
            buf.size() / PAGE_SIZE
        )));
    }
    Ok(())
}

/// `dma_buf_mmap`: without the lock; checks the range then calls the
/// exporter.
pub fn mmap(buf: &DmaBufRef, req: MmapRequest) -> Result<(), DmaBufError> {
    buf.check_not_held("dma_buf_mmap")?;
    check_mmap_range(buf, req)?;
    buf.ops().mmap(buf, req)
}

/// `dma_buf_begin_cpu_access`: without the lock. Calls the exporter, then
/// waits (interruptibly through `cancel`) for the implicit fences: a CPU
/// write waits for readers and writers, a CPU read only for writers.
pub fn begin_cpu_access(
    buf: &DmaBufRef,
    dir: DmaDirection,
    cancel: Option<&CancelToken>,
) -> Result<(), DmaBufError> {
    buf.check_not_held("dma_buf_begin_cpu_access")?;
    buf.ops().begin_cpu_access(buf, dir)?;
    let usage = Usage::usage_rw(dir.cpu_writes());
    buf.resv()
        .wait_timeout(usage, cancel, MAX_SCHEDULE_TIMEOUT)?;
    trace_event!(
        "dma_buf_begin_cpu_access",
        "ino={} dir={:?}",
        buf.ino(),
        dir
    );
    Ok(())
}

/// `dma_buf_end_cpu_access`: without the lock; calls the exporter only.
pub fn end_cpu_access(buf: &DmaBufRef, dir: DmaDirection) -> Result<(), DmaBufError> {
    buf.check_not_held("dma_buf_end_cpu_access")?;
    buf.ops().end_cpu_access(buf, dir)?;
    trace_event!("dma_buf_end_cpu_access", "ino={} dir={:?}", buf.ino(), dir);
    Ok(())
}

/// `DMA_BUF_SET_NAME`: the name is any bytes but NUL (the kernel copies a C
/// string, `strndup_user`, and never asks for UTF-8) and must fit in
/// [`DMA_BUF_NAME_LEN`] bytes including the NUL; renaming is allowed at any
/// time (7.x). A `&str` is one way to give the bytes.
pub fn set_name(buf: &DmaBufRef, name: impl AsRef<[u8]>) -> Result<(), DmaBufError> {
    let name = name.as_ref();
    if name.len() >= DMA_BUF_NAME_LEN || name.contains(&0) {
        return Err(DmaBufError::Invalid(format!(
            "name of {} bytes does not fit in {DMA_BUF_NAME_LEN} with its NUL",
            name.len()
        )));
    }
    *buf.0.name.lock() = Some(name.to_vec());
    Ok(())
}

/// Poll directions of a dma-buf fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollDir {
    /// `EPOLLIN`: fences of usage Write and below.
    In,
    /// `EPOLLOUT`: fences of usage Read and below.
    Out,
}

/// One step of `dma_buf_poll` for one direction: ready unless a callback of
/// that direction is still armed or an unsignalled fence exists, in which
/// case a callback is armed on it (holding a file reference) and `wake` runs
/// when it signals.
pub fn poll_dir(buf: &DmaBuf, dir: PollDir, wake: Arc<dyn Fn(PollDir) + Send + Sync>) -> bool {
    let usage = match dir {
        PollDir::In => Usage::Write,
        PollDir::Out => Usage::Read,
    };
    let Ok(_g) = buf.resv().lock(None) else {
        return false;
    };
    {
        let p = buf.0.poll.lock();
        let active = match dir {
            PollDir::In => p.in_active,
            PollDir::Out => p.out_active,
        };
        if active {
            return false;
        }
    }
    for f in buf.resv().get_fences(usage) {
        let held = buf.clone();
        let wake2 = wake.clone();
        set_poll_active(buf, dir, true);
        match f.add_callback(move |_| {
            set_poll_active(&held, dir, false);
            wake2(dir);
            drop(held);
        }) {
            Ok(_reg) => return false,
            Err(cb) => {
                drop(cb);
                set_poll_active(buf, dir, false);
            }
        }
    }
    true
}

fn set_poll_active(buf: &DmaBuf, dir: PollDir, v: bool) {
    let mut p = buf.0.poll.lock();
    match dir {
        PollDir::In => p.in_active = v,
        PollDir::Out => p.out_active = v,
    }
}

/// The fdinfo text after the generic lines: size, count, exp_name, name.
pub fn fdinfo(buf: &DmaBufRef) -> String {
    String::from_utf8_lossy(&fdinfo_bytes(buf)).into_owned()
}

/// [`fdinfo`] as the kernel prints it: the name's bytes as userspace set
/// them (`seq_printf(m, "name:\t%s\n", dmabuf->name)` in `dma_buf_show_fdinfo`).
pub fn fdinfo_bytes(buf: &DmaBufRef) -> Vec<u8> {
    let mut s = format!(
        "size:\t{}\ncount:\t{}\nexp_name:\t{}\n",
        buf.size(),
        buf.file_count().saturating_sub(1),
        buf.exp_name()
    )
    .into_bytes();
    if let Some(n) = buf.name_bytes() {
        s.extend_from_slice(b"name:\t");
        s.extend_from_slice(&n);
        s.push(b'\n');
    }
    s
}

/// The debugfs `bufinfo` listing, in the kernel's format.
pub fn bufinfo() -> String {
    let mut s = String::from("\nDma-buf Objects:\n");
    s.push_str(&format!(
        "{:<8}\t{:<8}\t{:<8}\t{:<8}\texp_name\t{:<8}\tname\n",
        "size", "flags", "mode", "count", "ino"
    ));
    let bufs = list_buffers();
    let mut total = 0u64;
    for b in &bufs {
        let g = b.resv().lock(None);
        s.push_str(&format!(
            "{:08}\t{:08x}\t{:08x}\t{:08}\t{}\t{:08}\t{}\n",
            b.size(),
            b.flags(),
            b.flags() & 0o3,
            b.file_count(),
            b.exp_name(),
            b.ino(),
            b.name().unwrap_or_else(|| "<none>".into())
        ));
        if let Ok(g) = &g {
            s.push_str(&g.describe());
        }
        s.push_str("\tAttached Devices:\n");
        let atts = b.attachments();
        for a in &atts {
            s.push_str(&format!("\t{}\n", a.dev()));
        }
        s.push_str(&format!("Total {} devices attached\n\n", atts.len()));
        total += b.size();
    }
    s.push_str(&format!(
        "\nTotal {} objects, {} bytes\n",
        bufs.len(),
        total
    ));
    s
}

/// Counters for benchmarks and tests.
pub fn live_buffer_count() -> usize {
    list_buffers().len()
}
