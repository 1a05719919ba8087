//! The physical address space: RAM page frames and MMIO BAR pages, both
//! carrying real bytes, and the frame allocator (the kernel's page allocator
//! and `struct page`, reduced to what the hazards need).
//!
//! # Layout
//!
//! | window | contents | who assigns pages |
//! |---|---|---|
//! | `[ram_base, ram_base + frames * 4 KiB)` | RAM frames | [`PhysMemory::alloc_frames`] / [`PhysMemory::free_frames`] |
//! | `[mmio_base, mmio_base + mmio_size)` | BAR apertures of PCI devices | [`pci`](crate::pci) at plug, unplug and hot-plug |
//! | anything else | nothing: a bus access there is an unsupported request | - |
//!
//! Bus addresses equal physical addresses (an identity host bridge), so a
//! BAR's bus address is its physical address.
//!
//! # Page tags (generations)
//!
//! Each page has one atomic *tag* that changes whenever the page changes
//! hands. A mapping (IOMMU PTE, CPU PTE, declared mapping) snapshots the tag
//! when it is made; an access whose snapshot differs from the current tag
//! reached memory that is no longer what was mapped.
//!
//! | page | tag | changes |
//! |---|---|---|
//! | RAM frame, free | `gen << 1` | alloc: becomes `gen << 1 \| 1` |
//! | RAM frame, allocated | `gen << 1 \| 1` | free: becomes `(gen + 1) << 1` |
//! | MMIO page, unassigned | `gen << 16` | assign to device `d`: `(gen + 1) << 16 \| (d + 1)` |
//! | MMIO page, owned by device `d` | `gen << 16 \| (d + 1)` | unplug: `(gen + 1) << 16` |
//!
//! So "freed since mapped", "freed and reused" and "BAR range given to a new
//! device" are all one atomic load and a compare on the access path.
//!
//! Each page also has two *protocol words* written by the monitor (revoke
//! stages declared by exporters: fences done, revoked), cleared when the
//! page changes hands.
//!
//! # Rules
//!
//! * The allocator reuses the most recently freed frame first (LIFO), so a
//!   use-after-free is an access to somebody else's live data, as in the
//!   kernel's per-CPU page lists.
//! * Allocated frames read as zeroes (`__GFP_ZERO`).
//! * Page bytes are created lazily: a page nobody wrote reads as zeroes and
//!   costs no memory.
//! * [`PhysMemory::peek`] and [`PhysMemory::poke`] are the backdoor for tests
//!   and for an owner initialising its own memory: not bus transactions, never
//!   classified, and they reach BAR bytes even while decode is off.
//!
//! # Lock rules
//!
//! Each page's bytes sit behind their own lock, a leaf lock: nothing else is
//! taken while it is held. The allocator lock guards the free list and owner
//! names and is never taken on the access path (only when a hazard is
//! recorded, to name the frame's owner).

use crate::monitor::{PhysRange, ReuseKind};
use crate::trace;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, sched};
use dmabuf_core::trace_event;

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// The page size: 4 KiB, for RAM frames, BAR pages and IOMMU pages alike.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
const PAGE: usize = PAGE_SIZE as usize;

pub(crate) const RAM_ALLOCATED: u64 = 1;
pub(crate) const MMIO_OWNER_MASK: u64 = 0xffff;

/// Errors of the physical memory module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// Not enough free frames.
    #[error("cannot allocate {requested} frames: only {free} free")]
    OutOfFrames {
        /// Frames asked for.
        requested: usize,
        /// Frames free.
        free: usize,
    },
    /// The address is not the start of a RAM frame.
    #[error("{addr:#x} is not a RAM frame address")]
    NotRam {
        /// The offending address.
        addr: u64,
    },
    /// The address is not page aligned.
    #[error("{addr:#x} is not aligned to {PAGE_SIZE:#x}")]
    Unaligned {
        /// The offending address.
        addr: u64,
    },
    /// The frame is already free.
    #[error("frame {addr:#x} is already free")]
    DoubleFree {
        /// The frame's address.
        addr: u64,
    },
    /// The same frame appears twice in one free request.
    #[error("frame {addr:#x} listed twice in one free")]
    DuplicateFrame {
        /// The frame's address.
        addr: u64,
    },
    /// The range leaves the physical address space (or wraps).
    #[error("range {addr:#x}+{len:#x} is outside the physical address space")]
    OutOfRange {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// The configuration is unusable (zero frames, overlapping windows).
    #[error("bad memory configuration: {0}")]
    BadConfig(String),
}

impl AsErrno for MemoryError {
    fn errno(&self) -> Errno {
        match self {
            MemoryError::OutOfFrames { .. } => errno::ENOMEM,
            MemoryError::NotRam { .. } => errno::EINVAL,
            MemoryError::Unaligned { .. } => errno::EINVAL,
            MemoryError::DoubleFree { .. } => errno::EINVAL,
            MemoryError::DuplicateFrame { .. } => errno::EINVAL,
            MemoryError::OutOfRange { .. } => errno::EFAULT,
            MemoryError::BadConfig(_) => errno::EINVAL,
        }
    }
}

/// One 4 KiB page of RAM or MMIO.
pub(crate) struct Page {
    /// The generation tag (see the module docs).
    pub(crate) tag: AtomicU64,
    /// The monitor's protocol word for the revoked stage (see
    /// [`crate::monitor`]): non-zero with `P_REVOKED` once a revoke returned.
    pub(crate) prot: AtomicU64,
    /// The protocol word for the fences-done stage: non-zero with
    /// `P_FENCES_DONE` once a revoke's fence wait finished. Only writes
    /// consult it, so a read (a speculative read-ahead above all) is not
    /// ordered against the stamp that ends a fence wait.
    pub(crate) prot_fences: AtomicU64,
    data: Mutex<Option<Box<[u8; PAGE]>>>,
}

fn zero_page() -> Box<[u8; PAGE]> {
    vec![0u8; PAGE]
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("a PAGE-long vec converts"))
}

impl Page {
    fn new() -> Self {
        Self {
            tag: AtomicU64::new(0),
            prot: AtomicU64::new(0),
            prot_fences: AtomicU64::new(0),
            data: Mutex::new(None),
        }
    }

    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) {
        let g = self.data.lock();
        match &*g {
            Some(d) => buf.copy_from_slice(&d[off..off + buf.len()]),
            None => buf.fill(0),
        }
    }

    pub(crate) fn write(&self, off: usize, data: &[u8]) {
        let mut g = self.data.lock();
        let d = g.get_or_insert_with(zero_page);
        d[off..off + data.len()].copy_from_slice(data);
    }

    pub(crate) fn fill(&self, off: usize, len: usize, byte: u8) {
        let mut g = self.data.lock();
        if byte == 0 && g.is_none() {
            return;
        }
        let d = g.get_or_insert_with(zero_page);
        d[off..off + len].fill(byte);
    }

    /// Drops the bytes: the page reads as zeroes again.
    pub(crate) fn clear(&self) {
        *self.data.lock() = None;
    }
}

/// Which window a physical address falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// RAM frame number (index from `ram_base`).
    Ram(usize),
    /// MMIO page number (index from `mmio_base`).
    Mmio(usize),
}

struct Allocator {
    /// Free frame indices; the last one is handed out first.
    free: Vec<usize>,
    /// Owner name of each allocated frame.
    owner: Vec<Option<Arc<str>>>,
}

/// The physical address space (RAM and the MMIO window) and the frame
/// allocator.
pub struct PhysMemory {
    ram_base: u64,
    mmio_base: u64,
    ram: Box<[Page]>,
    mmio: Box<[Page]>,
    alloc: Mutex<Allocator>,
    /// Called when memory is reset, powered down, freed or re-assigned (the
    /// platform lists the mappings still outstanding). A plain lock: never
    /// a scheduling point, never held while the hook runs.
    reuse_hook: parking_lot::Mutex<Option<ReuseHook>>,
}

/// The hook [`PhysMemory`] calls on memory reuse (see
/// [`crate::monitor::ReuseEvent`]).
pub(crate) type ReuseHook = Arc<dyn Fn(ReuseKind, &str, &[PhysRange]) + Send + Sync>;

impl std::fmt::Debug for PhysMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysMemory")
            .field("ram_base", &format_args!("{:#x}", self.ram_base))
            .field("ram_frames", &self.ram.len())
            .field("mmio_base", &format_args!("{:#x}", self.mmio_base))
            .field("mmio_pages", &self.mmio.len())
            .finish()
    }
}

/// Splits `[addr, addr + len)` into page-sized pieces:
/// `(page address, offset in page, length, offset in the caller's buffer)`.
pub(crate) fn page_chunks(
    addr: u64,
    len: usize,
) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let a = addr.wrapping_add(done as u64);
        let off = (a & (PAGE_SIZE - 1)) as usize;
        let n = (PAGE - off).min(len - done);
        let item = (a & !(PAGE_SIZE - 1), off, n, done);
        done += n;
        Some(item)
    })
}

impl PhysMemory {
    /// Creates the address space. Both windows must be page aligned, the RAM
    /// window non-empty, and the windows must not overlap.
    pub fn new(
        ram_base: u64,
        ram_frames: usize,
        mmio_base: u64,
        mmio_size: u64,
    ) -> Result<Self, MemoryError> {
        if ram_frames == 0 {
            return Err(MemoryError::BadConfig("zero RAM frames".into()));
        }
        if !ram_base.is_multiple_of(PAGE_SIZE)
            || !mmio_base.is_multiple_of(PAGE_SIZE)
            || !mmio_size.is_multiple_of(PAGE_SIZE)
        {
            return Err(MemoryError::BadConfig(format!(
                "windows must be page aligned (ram {ram_base:#x}, mmio {mmio_base:#x}+{mmio_size:#x})"
            )));
        }
        let ram_len = (ram_frames as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| MemoryError::BadConfig("RAM too large".into()))?;
        let ram_end = ram_base
            .checked_add(ram_len)
            .ok_or_else(|| MemoryError::BadConfig("RAM window wraps".into()))?;
        let mmio_end = mmio_base
            .checked_add(mmio_size)
            .ok_or_else(|| MemoryError::BadConfig("MMIO window wraps".into()))?;
        if ram_base < mmio_end && mmio_base < ram_end {
            return Err(MemoryError::BadConfig(format!(
                "RAM {ram_base:#x}..{ram_end:#x} overlaps MMIO {mmio_base:#x}..{mmio_end:#x}"
            )));
        }
        let ram: Box<[Page]> = (0..ram_frames).map(|_| Page::new()).collect();
        let mmio: Box<[Page]> = (0..(mmio_size / PAGE_SIZE) as usize)
            .map(|_| Page::new())
            .collect();
        Ok(Self {
            ram_base,
            mmio_base,
            ram,
            mmio,
            alloc: Mutex::new(Allocator {
                free: (0..ram_frames).rev().collect(),
                owner: vec![None; ram_frames],
            }),
            reuse_hook: parking_lot::Mutex::new(None),
        })
    }

    /// First RAM address.
    pub fn ram_base(&self) -> u64 {
        self.ram_base
    }

    /// Number of RAM frames.
    pub fn ram_frames(&self) -> usize {
        self.ram.len()
    }

    /// First address of the MMIO window.
    pub fn mmio_base(&self) -> u64 {
        self.mmio_base
    }

    /// Size of the MMIO window in bytes.
    pub fn mmio_size(&self) -> u64 {
        self.mmio.len() as u64 * PAGE_SIZE
    }

    /// Which window `addr` is in, and its page.
    #[inline]
    pub(crate) fn page(&self, addr: u64) -> Option<(PageKind, &Page)> {
        if let Some(off) = addr.checked_sub(self.ram_base) {
            let i = (off >> PAGE_SHIFT) as usize;
            if (off >> PAGE_SHIFT) < self.ram.len() as u64 {
                return Some((PageKind::Ram(i), &self.ram[i]));
            }
        }
        if let Some(off) = addr.checked_sub(self.mmio_base) {
            let i = (off >> PAGE_SHIFT) as usize;
            if (off >> PAGE_SHIFT) < self.mmio.len() as u64 {
                return Some((PageKind::Mmio(i), &self.mmio[i]));
            }
        }
        None
    }

    /// Whether `addr` is in the RAM window.
    pub fn is_ram(&self, addr: u64) -> bool {
        matches!(self.page(addr), Some((PageKind::Ram(_), _)))
    }

    /// Whether `addr` is in the MMIO window.
    pub fn is_mmio(&self, addr: u64) -> bool {
        matches!(self.page(addr), Some((PageKind::Mmio(_), _)))
    }

    /// Checks that every page of `[addr, addr + len)` exists (RAM or MMIO).
    pub fn check_range(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let bad = MemoryError::OutOfRange { addr, len };
        let end = addr.checked_add(len).ok_or(bad.clone())?;
        if len == 0 {
            return self.page(addr).map(|_| ()).ok_or(bad);
        }
        let mut p = addr & !(PAGE_SIZE - 1);
        while p < end {
            self.page(p).ok_or(bad.clone())?;
            p += PAGE_SIZE;
        }
        Ok(())
    }

    fn frame_index(&self, addr: u64) -> Result<usize, MemoryError> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::Unaligned { addr });
        }
        match self.page(addr) {
            Some((PageKind::Ram(i), _)) => Ok(i),
            _ => Err(MemoryError::NotRam { addr }),
        }
    }

    fn frame_addr(&self, i: usize) -> u64 {
        self.ram_base + (i as u64) * PAGE_SIZE
    }

    /// Allocates `n` frames (not necessarily contiguous), zeroed, owned by
    /// `owner` (a name used in hazard reports). All or nothing.
    pub fn alloc_frames(&self, n: usize, owner: &str) -> Result<Vec<u64>, MemoryError> {
        let owner: Arc<str> = Arc::from(owner);
        let mut a = self.alloc.lock();
        if a.free.len() < n || (n > 0 && dmabuf_core::fault::should_fail("alloc_pages")) {
            return Err(MemoryError::OutOfFrames {
                requested: n,
                free: a.free.len(),
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = a
                .free
                .pop()
                .unwrap_or_else(|| unreachable!("length checked"));
            let page = &self.ram[i];
            page.clear();
            page.prot.store(0, Ordering::Relaxed);
            page.prot_fences.store(0, Ordering::Relaxed);
            let t = page.tag.load(Ordering::Relaxed);
            page.tag.store(t | RAM_ALLOCATED, Ordering::Release);
            a.owner[i] = Some(owner.clone());
            out.push(self.frame_addr(i));
        }
        drop(a);
        trace_event!(
            trace::FRAME_ALLOC,
            "owner={} n={} first={:#x}",
            owner,
            n,
            out.first().copied().unwrap_or(0)
        );
        Ok(out)
    }

    /// Frees frames. Every address is checked first (aligned, RAM, allocated,
    /// not listed twice); on error nothing is freed. Freeing bumps each
    /// frame's generation, so mappings made before see a use-after-free.
    pub fn free_frames(&self, addrs: &[u64]) -> Result<(), MemoryError> {
        let mut a = self.alloc.lock();
        let mut idx = Vec::with_capacity(addrs.len());
        let who = addrs
            .first()
            .and_then(|&x| self.frame_index(x).ok())
            .and_then(|i| a.owner[i].clone());
        for &addr in addrs {
            let i = self.frame_index(addr)?;
            if self.ram[i].tag.load(Ordering::Relaxed) & RAM_ALLOCATED == 0 {
                return Err(MemoryError::DoubleFree { addr });
            }
            if idx.contains(&i) {
                return Err(MemoryError::DuplicateFrame { addr });
            }
            idx.push(i);
        }
        for &i in &idx {
            let page = &self.ram[i];
            let t = page.tag.load(Ordering::Relaxed);
            page.tag.store(((t >> 1) + 1) << 1, Ordering::Release);
            page.prot.store(0, Ordering::Relaxed);
            page.prot_fences.store(0, Ordering::Relaxed);
            a.owner[i] = None;
            a.free.push(i);
        }
        drop(a);
        trace_event!(
            trace::FRAME_FREE,
            "n={} first={:#x}",
            addrs.len(),
            addrs.first().copied().unwrap_or(0)
        );
        let ranges: Vec<PhysRange> = addrs
            .iter()
            .map(|&x| PhysRange::new(x, PAGE_SIZE))
            .collect();
        self.note_reuse(ReuseKind::Free, who.as_deref().unwrap_or("ram"), &ranges);
        Ok(())
    }

    pub(crate) fn set_reuse_hook(&self, h: Option<ReuseHook>) {
        *self.reuse_hook.lock() = h;
    }

    /// Tells the platform that `ranges` stopped being what their mappings
    /// pointed at (a reset, a free, ...): it records a
    /// [`ReuseEvent`](crate::monitor::ReuseEvent) with the mappings still
    /// outstanding.
    pub(crate) fn note_reuse(&self, kind: ReuseKind, who: &str, ranges: &[PhysRange]) {
        if ranges.is_empty() {
            return;
        }
        let h = self.reuse_hook.lock().clone();
        if let Some(h) = h {
            h(kind, who, ranges);
        }
    }

    /// Frames currently free.
    pub fn frames_free(&self) -> usize {
        self.alloc.lock().free.len()
    }

    /// Frames currently allocated.
    pub fn frames_allocated(&self) -> usize {
        self.ram.len() - self.frames_free()
    }

    /// The owner of an allocated frame (`None` when free).
    pub fn frame_owner(&self, addr: u64) -> Result<Option<String>, MemoryError> {
        let i = self.frame_index(addr & !(PAGE_SIZE - 1))?;
        Ok(self.alloc.lock().owner[i].as_deref().map(str::to_owned))
    }

    /// How many times the frame has been freed.
    pub fn frame_generation(&self, addr: u64) -> Result<u64, MemoryError> {
        let i = self.frame_index(addr & !(PAGE_SIZE - 1))?;
        Ok(self.ram[i].tag.load(Ordering::Acquire) >> 1)
    }

    /// The current tag of the page containing `addr` (see the module docs).
    pub(crate) fn tag_of(&self, addr: u64) -> Option<u64> {
        self.page(addr).map(|(_, p)| p.tag.load(Ordering::Acquire))
    }

    /// Reads bytes without a bus transaction (tests, owners): never
    /// classified, reaches BAR bytes whatever the device state.
    pub fn peek(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check_range(addr, buf.len() as u64)?;
        for (pa, off, n, boff) in page_chunks(addr, buf.len()) {
            if let Some((_, p)) = self.page(pa) {
                p.read(off, &mut buf[boff..boff + n]);
            }
        }
        Ok(())
    }

    /// Writes bytes without a bus transaction (see [`peek`](Self::peek)).
    pub fn poke(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check_range(addr, data.len() as u64)?;
        for (pa, off, n, boff) in page_chunks(addr, data.len()) {
            if let Some((_, p)) = self.page(pa) {
                p.write(off, &data[boff..boff + n]);
            }
        }
        Ok(())
    }

    /// Assigns MMIO pages to device `owner` (a new generation), clearing bytes
    /// and protocol state.
    ///
    /// The range changes hands at one instant: the tags and protocol words
    /// of all its pages are one event of the model (see
    /// [`sched::one_event`]), so an access sees the whole range before or
    /// after. The bytes are cleared apart (each page's byte lock): before
    /// the tags for a new owner, so it never sees the old bytes, and after
    /// them for a range leaving its owner, when no access reaches them
    /// any more.
    pub(crate) fn mmio_assign(&self, addr: u64, len: u64, owner: Option<u32>) {
        if owner.is_some() {
            self.mmio_clear(addr, len);
        }
        {
            let _one = sched::one_event();
            let mut p = addr;
            while p < addr + len {
                if let Some((PageKind::Mmio(_), page)) = self.page(p) {
                    let t = page.tag.load(Ordering::Relaxed);
                    let generation = (t >> 16) + 1;
                    let o = owner.map_or(0, |d| u64::from(d) + 1);
                    page.prot.store(0, Ordering::Relaxed);
                    page.prot_fences.store(0, Ordering::Relaxed);
                    page.tag.store((generation << 16) | o, Ordering::Release);
                }
                p += PAGE_SIZE;
            }
        }
        if owner.is_none() {
            self.mmio_clear(addr, len);
        }
    }

    /// Drops the bytes of MMIO pages (device memory lost in a reset).
    pub(crate) fn mmio_clear(&self, addr: u64, len: u64) {
        let mut p = addr;
        while p < addr + len {
            if let Some((_, page)) = self.page(p) {
                page.clear();
            }
            p += PAGE_SIZE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> PhysMemory {
        PhysMemory::new(0x1_0000_0000, 8, 0xe000_0000, 16 * PAGE_SIZE).unwrap()
    }

    #[test]
    fn freed_frame_is_reused_first_and_its_generation_moves() {
        let m = mem();
        let a = m.alloc_frames(1, "heap-a").unwrap()[0];
        let g0 = m.frame_generation(a).unwrap();
        m.poke(a, b"secret").unwrap();
        m.free_frames(&[a]).unwrap();
        assert_eq!(m.frame_generation(a).unwrap(), g0 + 1);
        let b = m.alloc_frames(1, "heap-b").unwrap()[0];
        assert_eq!(a, b, "LIFO reuse makes a use-after-free hit live data");
        assert_eq!(m.frame_owner(b).unwrap().as_deref(), Some("heap-b"));
        let mut buf = [1u8; 6];
        m.peek(b, &mut buf).unwrap();
        assert_eq!(buf, [0; 6], "allocated frames are zeroed");
    }

    #[test]
    fn double_free_and_bad_frees_are_typed_errors_and_free_nothing() {
        let m = mem();
        let f = m.alloc_frames(2, "x").unwrap();
        assert_eq!(
            m.free_frames(&[f[0], f[0]]),
            Err(MemoryError::DuplicateFrame { addr: f[0] })
        );
        assert_eq!(m.frames_allocated(), 2);
        m.free_frames(&[f[0]]).unwrap();
        assert_eq!(
            m.free_frames(&[f[1], f[0]]),
            Err(MemoryError::DoubleFree { addr: f[0] })
        );
        assert_eq!(m.frames_allocated(), 1, "the valid frame was not freed");
        assert_eq!(
            m.free_frames(&[f[1] + 1]),
            Err(MemoryError::Unaligned { addr: f[1] + 1 })
        );
        assert_eq!(
            m.free_frames(&[0xe000_0000]),
            Err(MemoryError::NotRam { addr: 0xe000_0000 })
        );
    }

    #[test]
    fn allocation_beyond_free_frames_fails_whole() {
        let m = mem();
        assert_eq!(
            m.alloc_frames(9, "x"),
            Err(MemoryError::OutOfFrames {
                requested: 9,
                free: 8
            })
        );
        assert_eq!(m.frames_free(), 8);
    }

    #[test]
    fn peek_and_poke_cross_pages_and_refuse_out_of_range() {
        let m = mem();
        let f = m.alloc_frames(2, "x").unwrap();
        let base = f[0].min(f[1]);
        let data: Vec<u8> = (0..100).collect();
        m.poke(base + PAGE_SIZE - 50, &data).unwrap();
        let mut back = vec![0u8; 100];
        m.peek(base + PAGE_SIZE - 50, &mut back).unwrap();
        assert_eq!(back, data);
        let end = m.ram_base() + 8 * PAGE_SIZE;
        assert_eq!(
            m.poke(end - 2, &[0; 4]),
            Err(MemoryError::OutOfRange {
                addr: end - 2,
                len: 4
            })
        );
        assert!(m.peek(u64::MAX - 1, &mut [0; 4]).is_err());
    }

    #[test]
    fn overlapping_windows_are_refused() {
        assert!(matches!(
            PhysMemory::new(0x1000, 4, 0x2000, 0x1000),
            Err(MemoryError::BadConfig(_))
        ));
        assert!(matches!(
            PhysMemory::new(0x1000, 0, 0x10_0000, 0x1000),
            Err(MemoryError::BadConfig(_))
        ));
    }

    #[test]
    fn mmio_assignment_changes_the_tag_and_clears_bytes() {
        let m = mem();
        let bar = 0xe000_0000;
        m.mmio_assign(bar, PAGE_SIZE, Some(3));
        let t1 = m.tag_of(bar).unwrap();
        assert_eq!(t1 & MMIO_OWNER_MASK, 4);
        m.poke(bar, b"vram").unwrap();
        m.mmio_assign(bar, PAGE_SIZE, None);
        let t2 = m.tag_of(bar).unwrap();
        assert_eq!(t2 & MMIO_OWNER_MASK, 0);
        assert_ne!(t1 >> 16, t2 >> 16);
        let mut b = [9u8; 4];
        m.peek(bar, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }
}
