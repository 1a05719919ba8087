//! `dma_resv`, the reservation object (kernel `drivers/dma-buf/dma-resv.c`):
//! a wait-die [`WwMutex`] of [`RESERVATION_WW_CLASS`] plus a list of fences,
//! each tagged with a [`Usage`].
//!
//! # The fence list
//!
//! | piece | kernel | who changes it |
//! |---|---|---|
//! | list pointer | `obj->fences` (RCU) | the lock holder, when reserving needs more room or on `copy_fences` |
//! | `num_fences` | `dma_resv_list.num_fences` | the lock holder, after writing the new last slot |
//! | slot | fence pointer with the usage in its low 2 bits | the lock holder (in-place replacement or append) |
//! | reserved slots | `max_fences`, reset at unlock under `CONFIG_DEBUG_MUTEXES` | `reserve_fences`; forgotten at unlock |
//!
//! The list is one allocation, header words (`num_fences`, `max_fences`)
//! then the slots, like the kernel's `struct dma_resv_list` with its
//! flexible `table[]`: a reader goes from the object's pointer straight to
//! the entries.
//!
//! A query at usage X sees every entry whose usage is `<= X`
//! (`Kernel < Write < Read < Bookkeep`).
//!
//! `add_fence` replaces in place the first entry that either is from the
//! same context with a usage `>=` the new one and is not later than the new
//! fence, or has signalled; otherwise it appends into a reserved slot.
//! Containers (arrays, chains) are refused. `reserve_fences(n)` grows the
//! list only when `num + n` exceeds its capacity, to `max(num + n, 2 * max)`
//! (or `max(4, next_pow2(n))` for the first list), copying only the
//! unsignalled entries with their usage. Unlike the kernel the capacity is
//! exact (no rounding up to the allocator's bucket).
//!
//! # Readers never take the lock
//!
//! Unlocked readers (iteration, `get_fences`, `wait_timeout`,
//! `test_signaled`) use an RCU-like scheme, not the ww-mutex:
//!
//! * A reader enters a *read section*, loads the list pointer or a slot,
//!   takes what it needs (a reference, a flag) and leaves. On a real thread
//!   the section is a [`crate::sync::rcu`] section: two plain stores to the
//!   thread's own record, no read-modify-write. On a controlled task (and
//!   under loom) it is the object's reader count instead, so that entering
//!   and leaving are scheduling points as before.
//! * The lock holder never frees what it unpublishes (a replaced list, a
//!   fence replaced in place): it *retires* it with the rcu epoch of the
//!   moment, and frees it only once no reader can hold it:
//!
//! | who is reading | when retired objects are freed |
//! |---|---|
//! | nobody but possibly the lock holder's thread, outside its sections | at the end of the call that retired them, as before |
//! | controlled tasks | when the reader count is zero, at the next call or at unlock |
//! | other real threads | at an unlock with a retired list or 32 retired fences waiting, after a grace period (`membarrier`, then a scan of the records): those retired before every open section began |
//! | anyone, on request | [`ResvGuard::reclaim_retired`] runs a grace period at once |
//!
//!   Neither side ever blocks on the other; the price of a reader that
//!   stays long in its section is memory, not latency. `&mut self` in
//!   `Drop` proves no section is open, so dropping the object frees
//!   everything.

//! Unlocked iteration snapshots the list (holding a reference to it) and its
//! length, returns only unsignalled fences (each with its own reference),
//! and restarts from the first entry, marking the entry `restarted`, when the
//! object's list pointer changed. Appends after the snapshot may be missed;
//! in-place replacements may be seen either way.
//!
//! # Lock rules
//!
//! * Calls that change the list need the lock and take a [`ResvGuard`],
//!   which proves the calling thread holds it; each call re-checks that, so
//!   a guard outliving an explicit [`DmaResv::unlock`] gets
//!   [`ResvError::NotHeld`] instead of touching the list.
//! * The lock belongs to the thread that took it; see [`crate::ww_mutex`]
//!   for contexts and backoff. The dma-buf locking convention
//!   (docs/kernel-semantics.md, "locking convention") is enforced by callers with [`DmaResv::assert_held`] /
//!   [`DmaResv::assert_not_held`].
//! * Reserved slots are valid until unlock.
//! * Once added, a fence is visible to readers at once: for fence
//!   signalling the critical section starts at `add_fence`, not at unlock.

use crate::dma_fence::{
    CancelToken, Fence, FenceError, FenceInner, MAX_SCHEDULE_TIMEOUT, context_alloc,
};
use crate::dma_fence_array::FenceArray;
use crate::errno::{self, AsErrno, Errno};
use crate::sync::Arc;
use crate::sync::atomic::{self, AtomicUsize, Ordering};
use crate::sync::rcu;
use crate::ww_mutex::{
    FastLock, LockMode, LockSet, RESERVATION_WW_CLASS, WwAcquireCtx, WwError, WwLockable, WwMutex,
    thread_token,
};
use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::Location;

crate::named_enum! {
    /// `enum dma_resv_usage`: how a fence uses the buffer. Ordered: a query at
    /// one level returns every fence at that level or below.
    ///
    /// `name()`: the kernel's lowercase name (`kernel`, `write`, `read`, `bookkeep`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    #[repr(u8)]
    pub enum Usage {
        /// Kernel memory management (moves, clears): everybody waits for these.
        Kernel = 0 => "kernel",
        /// Implicit-sync writers.
        Write = 1 => "write",
        /// Implicit-sync readers.
        Read = 2 => "read",
        /// No implicit sync (preemption fences, page-table updates, TLB flushes).
        Bookkeep = 3 => "bookkeep",
    }
}

impl Usage {
    /// `dma_resv_usage_rw`: what a new access must wait for: a write waits
    /// for readers and writers (`Read`), a read only for writers (`Write`).
    pub fn usage_rw(write: bool) -> Usage {
        if write { Usage::Read } else { Usage::Write }
    }

    /// The usage packed in a slot word (a table lookup, no branch).
    #[inline(always)]
    fn from_bits(b: usize) -> Usage {
        Usage::ALL[b & USAGE_MASK]
    }

    /// Whether a slot word's usage is above `self`, i.e. outside a query
    /// at `self` (one compare: the discriminants are the packed values).
    #[inline(always)]
    fn excludes(self, w: usize) -> bool {
        w & USAGE_MASK > self as usize
    }
}

/// `dma_resv_usage_rw`.
pub fn usage_rw(write: bool) -> Usage {
    Usage::usage_rw(write)
}

/// Errors of reservation-object calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResvError {
    /// The ww-mutex refused or failed the lock operation.
    #[error(transparent)]
    Ww(#[from] WwError),
    /// The call needs the lock and the calling thread does not hold it
    /// (`dma_resv_assert_held` failed).
    #[error("dma_resv lock not held by the calling thread (locked: {locked})")]
    NotHeld {
        /// Whether somebody else holds it.
        locked: bool,
    },
    /// The call must be made without the lock and the calling thread holds
    /// it.
    #[error("dma_resv lock held by the calling thread")]
    HeldByCaller,
    /// `add_fence` needed a new slot and none was reserved (the kernel
    /// BUGs).
    #[error("no reserved fence slot: {num} fences, {reserved} reserved")]
    NoSlotReserved {
        /// Fences in the list.
        num: u32,
        /// Entries the current reservation allows.
        reserved: u32,
    },
    /// A container fence (array or chain) given where only leaves may go.
    #[error("container fence {context}:{seqno} cannot be added; add its leaves")]
    ContainerFence {
        /// Context of the container.
        context: u64,
        /// Seqno of the container.
        seqno: u64,
    },
    /// A reservation whose list cannot be allocated (`-ENOMEM`): beyond what
    /// a list can index, beyond [`KMALLOC_MAX_SIZE`], or refused by the
    /// allocator.
    #[error("cannot allocate room for {requested} more fences beyond {num} (ENOMEM)")]
    TooManyFences {
        /// Fences in the list.
        num: u32,
        /// Slots asked for.
        requested: u32,
    },
    /// An interruptible wait was cancelled (`-ERESTARTSYS`).
    #[error("wait interrupted")]
    Interrupted,
    /// A fence call failed.
    #[error(transparent)]
    Fence(FenceError),
}

impl AsErrno for ResvError {
    fn errno(&self) -> Errno {
        match self {
            ResvError::Ww(e) => e.errno(),
            ResvError::NotHeld { .. } => errno::EPERM,
            ResvError::HeldByCaller => errno::EDEADLK,
            ResvError::NoSlotReserved { .. } => errno::EINVAL,
            ResvError::ContainerFence { .. } => errno::EINVAL,
            ResvError::TooManyFences { .. } => errno::ENOMEM,
            ResvError::Interrupted => errno::ERESTARTSYS,
            ResvError::Fence(e) => e.errno(),
        }
    }
}

impl From<FenceError> for ResvError {
    fn from(e: FenceError) -> Self {
        match e {
            FenceError::Interrupted => ResvError::Interrupted,
            e => ResvError::Fence(e),
        }
    }
}

const USAGE_MASK: usize = 0x3;
// Slots keep the usage in the pointer's low bits, as the kernel does.
const _: () = assert!(std::mem::align_of::<FenceInner>() > USAGE_MASK);

fn pack(f: Fence, usage: Usage) -> usize {
    Arc::into_raw(f.0).expose_provenance() | usage as usize
}

#[inline(always)]
fn fence_ptr(w: usize) -> *const FenceInner {
    std::ptr::with_exposed_provenance(w & !USAGE_MASK)
}

/// A view of a slot's fence without touching its reference count.
///
/// # Safety
/// `w` is a non-zero slot word whose fence is kept alive for the view's
/// lifetime (the caller is in a read section or is the lock holder).
#[inline(always)]
unsafe fn borrow_fence(w: usize) -> ManuallyDrop<Fence> {
    // SAFETY: the pointer came from `Arc::into_raw` and is alive (caller).
    ManuallyDrop::new(Fence(unsafe { Arc::from_raw(fence_ptr(w)) }))
}

/// A new reference to a slot's fence.
///
/// # Safety
/// As [`borrow_fence`].
unsafe fn clone_fence(w: usize) -> Fence {
    let p = fence_ptr(w);
    // SAFETY: alive (caller); we add the reference we then own.
    unsafe {
        Arc::increment_strong_count(p);
        Fence(Arc::from_raw(p))
    }
}

/// `struct dma_resv_list`: a fixed-capacity table of packed slots in one
/// allocation with its header, so that a reader goes from the published
/// pointer straight to the slots. Words: [`NUM`] (`num_fences`), [`MAX`]
/// (`max_fences`, fixed at allocation), then the slots.
///
/// Invariants readers rely on: `num_fences <= max_fences`, and every slot
/// below `num_fences` holds a fence (a slot is written before `num_fences`
/// grows past it, and is only ever swapped for another fence).
#[repr(transparent)]
struct List([AtomicUsize]);

/// Word of [`List`] holding `num_fences`.
const NUM: usize = 0;
/// Word of [`List`] holding `max_fences`; never stored to after allocation.
const MAX: usize = 1;
/// Header words before the first slot of a [`List`].
const HEAD: usize = 2;
/// The largest `kmalloc` on x86-64 (`KMALLOC_MAX_SIZE`, order-10 pages):
/// a fence list larger than this fails with `-ENOMEM` in the kernel, and
/// here.
pub const KMALLOC_MAX_SIZE: usize = 4 << 20;

impl List {
    /// A list with room for `cap` fences, allocated fallibly like the
    /// kernel's `kmalloc`: `None` (the caller answers `-ENOMEM`) when the
    /// list would exceed [`KMALLOC_MAX_SIZE`] or the allocator refuses.
    fn with_capacity(cap: u32) -> Option<Arc<List>> {
        let len = HEAD.checked_add(cap as usize)?;
        if len.checked_mul(std::mem::size_of::<AtomicUsize>())? > KMALLOC_MAX_SIZE {
            return None;
        }
        let mut v: Vec<AtomicUsize> = Vec::new();
        v.try_reserve_exact(len).ok()?;
        v.extend((0..len).map(|i| AtomicUsize::new(if i == MAX { cap as usize } else { 0 })));
        let words: Arc<[AtomicUsize]> = v.into();
        // SAFETY: `List` is a transparent wrapper of `[AtomicUsize]`, so the
        // two reference-counted allocations have one layout, and the cast
        // keeps the length.
        Some(unsafe { Arc::from_raw(Arc::into_raw(words) as *const List) })
    }

    /// The publication word of `l` (a thin pointer; see [`List::at`]).
    fn into_word(l: Arc<List>) -> usize {
        Arc::into_raw(l).cast::<AtomicUsize>().expose_provenance()
    }

    /// The list behind a publication word.
    ///
    /// # Safety
    /// `w` came from [`List::into_word`] and the list stays alive for `'a`.
    #[inline(always)]
    unsafe fn at<'a>(w: usize) -> &'a List {
        let p = std::ptr::with_exposed_provenance::<AtomicUsize>(w);
        // SAFETY: alive (caller); the `MAX` word is immutable.
        let cap = atomic::read_immutable(unsafe { &*p.add(MAX) });
        // SAFETY: the allocation holds `HEAD + cap` words.
        unsafe { &*(std::ptr::slice_from_raw_parts(p, HEAD + cap) as *const List) }
    }

    /// Takes back the reference a publication word owned.
    ///
    /// # Safety
    /// As [`List::at`], and the caller owns the word's reference.
    unsafe fn from_word(w: usize) -> Arc<List> {
        // SAFETY: per the contract.
        unsafe { Arc::from_raw(List::at(w) as *const List) }
    }

    #[inline(always)]
    fn num(&self, o: Ordering) -> u32 {
        self.0[NUM].load(o) as u32
    }

    fn set_num(&self, n: u32, o: Ordering) {
        self.0[NUM].store(n as usize, o)
    }

    fn cap(&self) -> u32 {
        (self.0.len() - HEAD) as u32
    }

    #[inline(always)]
    fn slots(&self) -> &[AtomicUsize] {
        &self.0[HEAD..]
    }
}

impl Drop for List {
    fn drop(&mut self) {
        for s in self.slots() {
            let w = s.load(Ordering::Acquire);
            if w != 0 {
                // SAFETY: each non-zero slot owns one reference.
                drop(unsafe { Arc::from_raw(fence_ptr(w)) });
            }
        }
    }
}

/// State only the lock holder touches.
#[derive(Default)]
struct WriterState {
    /// Entries the current reservation allows (kernel `max_fences` after
    /// the debug reset); 0 after unlock.
    reserved_upto: u32,
    /// Unpublished lists and fences, each with its retire tag (the rcu
    /// epoch when it was unpublished; ascending): one may be freed once a
    /// grace period's horizon has passed its tag.
    retired_lists: Vec<(Arc<List>, u64)>,
    retired_fences: Vec<(Fence, u64)>,
}

/// Retired objects that make an unlock start a grace period (a
/// `membarrier` call) when other threads may be reading; fewer wait for a
/// later unlock, like `call_rcu` batches. A retired list always does.
#[cfg_attr(loom, allow(dead_code))]
const RETIRE_BATCH: usize = 32;

/// Whether a reclaim may start a grace period on a real thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grace {
    /// Free only if no other thread can be reading (after each change).
    No,
    /// Also start a grace period for a batch (at unlock).
    Batch,
    /// Start one whatever is waiting ([`ResvGuard::reclaim_retired`]).
    Now,
}

/// Retired objects taken for freeing.
struct Retired {
    lists: Vec<(Arc<List>, u64)>,
    fences: Vec<(Fence, u64)>,
}

/// Takes the entries below `h` (all of them if `h` is `u64::MAX`), moving
/// the whole vector when it can so that its buffer is reused.
fn take_below<T>(v: &mut Vec<(T, u64)>, h: u64) -> Vec<(T, u64)> {
    let n = v.partition_point(|(_, t)| *t < h);
    if n == v.len() {
        std::mem::take(v)
    } else {
        v.drain(..n).collect()
    }
}

/// A read section: while it lives, nothing retired after it began is freed.
/// On a real thread it is an [`rcu`] section (two plain stores); on a
/// controlled task it counts itself in the object's reader count, so that
/// entering and leaving are scheduling points.
enum ReadSection<'a> {
    Counted(&'a AtomicUsize),
    #[cfg(not(loom))]
    Rcu(#[allow(dead_code)] rcu::ReadGuard),
}

impl Drop for ReadSection<'_> {
    #[inline]
    fn drop(&mut self) {
        #[cfg_attr(loom, allow(irrefutable_let_patterns))]
        if let ReadSection::Counted(c) = self {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// `struct dma_resv`.
pub struct DmaResv {
    lock: WwMutex,
    /// `Arc::into_raw` of the current [`List`], 0 for none.
    fences: AtomicUsize,
    readers: AtomicUsize,
    w: UnsafeCell<WriterState>,
}

// SAFETY: `w` is touched only by the thread holding `lock`, inside
// `with_w`, whose closures never call out of this module; the list and slots
// are atomics published as described in the module docs.
unsafe impl Sync for DmaResv {}
// SAFETY: every field is Send (fences are Send + Sync).
unsafe impl Send for DmaResv {}

impl Default for DmaResv {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DmaResv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaResv")
            .field("locked", &self.is_locked())
            .field("ctx", &self.locking_ctx())
            .field("fences", &self.get_fences(Usage::Bookkeep))
            .finish()
    }
}

impl Drop for DmaResv {
    fn drop(&mut self) {
        let p = self.fences.load(Ordering::Acquire);
        if p != 0 {
            // SAFETY: the published pointer owns one reference; `&mut self`
            // means no reader is left.
            drop(unsafe { List::from_word(p) });
        }
    }
}

impl DmaResv {
    /// `dma_resv_init`: unlocked, no fences.
    pub fn new() -> Self {
        Self {
            lock: WwMutex::new(&RESERVATION_WW_CLASS),
            fences: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            w: UnsafeCell::new(WriterState::default()),
        }
    }

    #[inline]
    fn read_section(&self) -> ReadSection<'_> {
        #[cfg(not(loom))]
        if let Some(g) = rcu::try_read_lock() {
            return ReadSection::Rcu(g);
        }
        self.readers.fetch_add(1, Ordering::SeqCst);
        ReadSection::Counted(&self.readers)
    }

    /// The current list, valid while `_rs` lives.
    #[inline]
    fn list_in<'s>(&'s self, _rs: &'s ReadSection<'_>) -> Option<&'s List> {
        let p = self.fences.load(Ordering::SeqCst);
        // SAFETY: a list published when the section was active is retired,
        // not freed, until the section ends.
        (p != 0).then(|| unsafe { List::at(p) })
    }

    /// A counted reference to the current list (and its pointer).
    fn snapshot(&self) -> (usize, Option<Arc<List>>) {
        let _rs = self.read_section();
        let p = self.fences.load(Ordering::SeqCst);
        if p == 0 {
            return (0, None);
        }
        // SAFETY: alive during the section (see `list_in`); we add the
        // reference we then own.
        let arc = unsafe {
            let ptr = List::at(p) as *const List;
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        };
        (p, Some(arc))
    }

    /// Reads slot `i` of `list` as a new reference.
    fn read_slot(&self, list: &List, i: u32) -> Option<(Fence, Usage)> {
        let _rs = self.read_section();
        let w = list.slots().get(i as usize)?.load(Ordering::SeqCst);
        // SAFETY: in a read section, and `list` is alive (caller holds it).
        (w != 0).then(|| (unsafe { clone_fence(w) }, Usage::from_bits(w)))
    }

    /// Runs `f` on the writer state.
    ///
    /// # Safety
    /// The calling thread holds the lock, and `f` calls nothing outside
    /// this module (no fence method, no drop of a fence or list), so no
    /// second borrow can start while it runs.
    unsafe fn with_w<R>(&self, f: impl FnOnce(&mut WriterState) -> R) -> R {
        // SAFETY: per the contract, this is the only live borrow.
        f(unsafe { &mut *self.w.get() })
    }

    fn check_held(&self) -> Result<(), ResvError> {
        if self.lock.is_held_by_current_thread() {
            Ok(())
        } else {
            Err(ResvError::NotHeld {
                locked: self.lock.is_locked(),
            })
        }
    }

    /// Takes the retired objects if no reader can still see them. Lock
    /// holder only, outside read sections. `grace`: on a real thread with
    /// other readers about, start a grace period if `grace` allows it
    /// (see [`Grace`]).
    #[inline]
    fn take_reclaimable(&self, grace: Grace) -> Option<Box<Retired>> {
        // SAFETY: lock held (callers check); the closure reads lengths.
        let none =
            unsafe { self.with_w(|w| w.retired_lists.is_empty() && w.retired_fences.is_empty()) };
        if none {
            return None;
        }
        self.take_retired(grace)
    }

    #[cold]
    fn take_retired(&self, grace: Grace) -> Option<Box<Retired>> {
        // SAFETY: lock held (callers check); the closure reads counters,
        // may run a grace period (a system call and the rcu registry's own
        // lock) and moves vectors, running no foreign code.
        unsafe {
            self.with_w(|w| {
                // Controlled readers (and, under loom, every reader).
                if self.readers.load(Ordering::SeqCst) != 0 {
                    return None;
                }
                #[cfg_attr(loom, allow(unused_mut))]
                let mut h = u64::MAX;
                #[cfg(not(loom))]
                if rcu::available() && !rcu::quiescent_alone() {
                    let due = match grace {
                        Grace::No => false,
                        Grace::Batch => {
                            !w.retired_lists.is_empty() || w.retired_fences.len() >= RETIRE_BATCH
                        }
                        Grace::Now => true,
                    };
                    if !due {
                        return None;
                    }
                    h = rcu::horizon();
                }
                #[cfg(loom)]
                let _ = grace;
                let r = Retired {
                    lists: take_below(&mut w.retired_lists, h),
                    fences: take_below(&mut w.retired_fences, h),
                };
                (!r.lists.is_empty() || !r.fences.is_empty()).then(|| Box::new(r))
            })
        }
    }

    /// Drops retired objects (running whatever their release runs, outside
    /// any borrow of the writer state), then hands the emptied vectors back
    /// if the caller still holds the lock, so steady-state replacement does
    /// not allocate.
    #[inline]
    fn release_retired(&self, r: Option<Box<Retired>>) {
        let Some(mut r) = r else { return };
        r.lists.clear();
        r.fences.clear();
        if self.lock.is_held_by_current_thread() {
            // SAFETY: lock held; the closure only moves empty vectors.
            unsafe {
                self.with_w(|w| {
                    if w.retired_lists.capacity() == 0 {
                        w.retired_lists = r.lists;
                    }
                    if w.retired_fences.capacity() == 0 {
                        w.retired_fences = r.fences;
                    }
                })
            };
        }
    }

    fn reclaim(&self) {
        self.release_retired(self.take_reclaimable(Grace::No));
    }

    fn retire_fence(&self, f: Fence) {
        // SAFETY: lock held (callers check); pushing a fence runs no code.
        unsafe {
            self.with_w(|w| {
                w.retired_fences.push((f, rcu::retire_tag()));
            })
        };
    }

    /// Publishes `new` as the list and retires the old one.
    fn publish(&self, new: Option<Arc<List>>) {
        let raw = new.map_or(0, List::into_word);
        let old = self.fences.swap(raw, Ordering::SeqCst);
        if old != 0 {
            // SAFETY: the published pointer owned one reference, now ours.
            let old = unsafe { List::from_word(old) };
            // SAFETY: lock held (callers check); pushing runs no code.
            unsafe {
                self.with_w(|w| {
                    w.retired_lists.push((old, rcu::retire_tag()));
                })
            };
        }
    }

    // ---- locking -------------------------------------------------------

    /// Trace rows of the lock (the kernel's `lock:` tracepoints, which
    /// lockdep emits): `lock_acquire` before taking it (the start of a
    /// possible wait), `lock_acquired` once held, `lock_release`.
    #[cold]
    #[inline(never)]
    fn trace_lock(&self, what: &'static str) {
        let id = crate::trace::object("resv", (self as *const Self).expose_provenance());
        crate::trace::emit(what, format!("lock={id} name=reservation_ww_class_mutex"));
    }

    #[inline(never)]
    fn lock_mode(
        &self,
        ctx: Option<&mut WwAcquireCtx>,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<ResvGuard<'_>, ResvError> {
        let me = thread_token();
        let traced = crate::trace::enabled() && mode.cancel.is_some() | mode.slow;
        if traced {
            self.trace_lock("lock_acquire");
        }
        self.lock.lock_as(me, ctx, mode, site)?;
        if traced {
            self.trace_lock("lock_acquired");
        }
        Ok(ResvGuard::new(self, true))
    }

    /// `dma_resv_lock`: 0 / `-EDEADLK` / `-EALREADY` as
    /// [`WwMutex::lock`]. The guard unlocks when dropped.
    #[inline(always)]
    #[track_caller]
    pub fn lock(&self, ctx: Option<&mut WwAcquireCtx>) -> Result<ResvGuard<'_>, ResvError> {
        let mode = LockMode {
            slow: false,
            cancel: None,
        };
        if crate::trace::enabled() {
            self.trace_lock("lock_acquire");
        }
        let r = if ctx.is_none() {
            // Small enough to inline, so the guard is built in the caller's
            // registers on the uncontended path.
            let me = thread_token();
            match self.lock.lock_fast(me) {
                FastLock::Taken => Ok(ResvGuard::new(self, true)),
                step => self.lock_resume(me, step, mode, Location::caller()),
            }
        } else {
            self.lock_mode(ctx, mode, Location::caller())
        };
        if crate::trace::enabled() && r.is_ok() {
            self.trace_lock("lock_acquired");
        }
        r
    }

    #[inline(never)]
    fn lock_resume(
        &self,
        me: u64,
        step: FastLock,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<ResvGuard<'_>, ResvError> {
        self.lock.lock_resume(me, step, mode, site)?;
        Ok(ResvGuard::new(self, true))
    }

    /// `dma_resv_lock_interruptible` (`-EINTR` when `cancel` fires while
    /// waiting).
    #[track_caller]
    pub fn lock_interruptible(
        &self,
        ctx: Option<&mut WwAcquireCtx>,
        cancel: &CancelToken,
    ) -> Result<ResvGuard<'_>, ResvError> {
        let mode = LockMode {
            slow: false,
            cancel: Some(cancel),
        };
        self.lock_mode(ctx, mode, Location::caller())
    }

    /// `dma_resv_lock_slow`: the contended lock after backing off.
    #[track_caller]
    pub fn lock_slow(&self, ctx: &mut WwAcquireCtx) -> Result<ResvGuard<'_>, ResvError> {
        let mode = LockMode {
            slow: true,
            cancel: None,
        };
        self.lock_mode(Some(ctx), mode, Location::caller())
    }

    /// `dma_resv_lock_slow_interruptible`.
    #[track_caller]
    pub fn lock_slow_interruptible(
        &self,
        ctx: &mut WwAcquireCtx,
        cancel: &CancelToken,
    ) -> Result<ResvGuard<'_>, ResvError> {
        let mode = LockMode {
            slow: true,
            cancel: Some(cancel),
        };
        self.lock_mode(Some(ctx), mode, Location::caller())
    }

    /// `dma_resv_trylock`: the lock if it is free, without a context.
    #[track_caller]
    pub fn trylock(&self) -> Option<ResvGuard<'_>> {
        let g = self.lock.trylock().then(|| ResvGuard::new(self, true));
        if g.is_some() && crate::trace::enabled() {
            self.trace_lock("lock_acquired");
        }
        g
    }

    /// `dma_resv_unlock` for a lock taken without keeping the guard (see
    /// [`ResvGuard::keep_locked`]): forgets the reserved slots, unlocks and
    /// frees what readers no longer see. Do not mix with a live owning
    /// guard: the guard would unlock whatever session holds the lock when
    /// it drops.
    #[inline]
    pub fn unlock(&self) -> Result<(), ResvError> {
        self.unlock_as(thread_token())
    }

    /// [`unlock`](Self::unlock) by the thread whose token is `me`.
    #[inline]
    fn unlock_as(&self, me: u64) -> Result<(), ResvError> {
        // The ww-mutex checks ownership (NotLocked, NotOwner, changing
        // nothing) before running the closure with the lock still held.
        let freed = self.lock.unlock_with(me, || {
            // SAFETY: lock held; the closure only touches an integer.
            unsafe {
                self.with_w(|w| {
                    if w.reserved_upto != 0 {
                        w.reserved_upto = 0;
                    }
                })
            };
            self.take_reclaimable(Grace::Batch)
        })?;
        if crate::trace::enabled() {
            self.trace_lock("lock_release");
        }
        self.release_retired(freed);
        Ok(())
    }

    /// `dma_resv_is_locked`.
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// `dma_resv_locking_ctx`: the stamp of the context holding the lock.
    pub fn locking_ctx(&self) -> Option<u64> {
        self.lock.locking_ctx()
    }

    /// Whether the calling thread holds the lock.
    pub fn is_held_by_current_thread(&self) -> bool {
        self.lock.is_held_by_current_thread()
    }

    /// Whether the calling thread holds the lock under `ctx`.
    pub fn is_held_by_ctx(&self, ctx: &WwAcquireCtx) -> bool {
        self.is_held_by_current_thread() && self.locking_ctx() == Some(ctx.stamp())
    }

    /// `dma_resv_assert_held`, as a hard error: `Ok` iff the calling thread
    /// holds the lock.
    pub fn assert_held(&self) -> Result<(), ResvError> {
        self.check_held()
    }

    /// The "must not hold" side of the locking convention: `Ok` iff the
    /// calling thread does not hold the lock.
    pub fn assert_not_held(&self) -> Result<(), ResvError> {
        if self.is_held_by_current_thread() {
            Err(ResvError::HeldByCaller)
        } else {
            Ok(())
        }
    }

    /// A guard proving the calling thread holds the lock, without owning
    /// it (dropping it does not unlock): for code called with the lock held.
    pub fn held(&self) -> Result<ResvGuard<'_>, ResvError> {
        self.check_held()?;
        Ok(ResvGuard::new(self, false))
    }

    // ---- unlocked readers ----------------------------------------------

    /// `dma_resv_iter_begin` + `dma_resv_for_each_fence_unlocked`: the
    /// unsignalled fences with usage `<= usage`, without the lock.
    pub fn iter_unlocked(&self, usage: Usage) -> ResvIter<'_> {
        ResvIter {
            resv: self,
            usage,
            list: None,
            snap: 0,
            num: 0,
            index: 0,
            started: false,
            restarted: false,
        }
    }

    /// `dma_resv_get_fences`: references to the unsignalled fences with
    /// usage `<= usage`.
    pub fn get_fences(&self, usage: Usage) -> Vec<Fence> {
        let mut out = Vec::new();
        for e in self.iter_unlocked(usage) {
            if e.restarted {
                out.clear();
            }
            out.push(e.fence);
        }
        out
    }

    /// `dma_resv_get_singleton`: `None` with no fence, the fence itself with
    /// one, otherwise a new `dma_fence_array` on a fresh context at seqno 1
    /// (a container: never add it back to a reservation object).
    pub fn get_singleton(&self, usage: Usage) -> Result<Option<Fence>, ResvError> {
        let mut fences = self.get_fences(usage);
        match fences.len() {
            0 => Ok(None),
            1 => Ok(fences.pop()),
            _ => {
                let ctx = context_alloc(1)?;
                Ok(Some(FenceArray::create(fences, ctx, 1)?))
            }
        }
    }

    /// `dma_resv_wait_timeout`: waits on each unsignalled fence with usage
    /// `<= usage` in turn, passing the remaining time on. Returns the time
    /// left (at least 1; 1 when `timeout_ns` is 0 and all had signalled), 0
    /// on timeout, or [`ResvError::Interrupted`] when `cancel` fires. May be
    /// called with or without the lock.
    pub fn wait_timeout(
        &self,
        usage: Usage,
        cancel: Option<&CancelToken>,
        mut timeout_ns: u64,
    ) -> Result<u64, ResvError> {
        let mut ret = if timeout_ns == 0 { 1 } else { timeout_ns };
        for e in self.iter_unlocked(usage) {
            ret = e.fence.wait_timeout(cancel, timeout_ns)?;
            if ret == 0 {
                return Ok(0);
            }
            if timeout_ns != 0 {
                timeout_ns = ret;
            }
        }
        Ok(ret)
    }

    /// `dma_resv_wait_timeout` without a deadline.
    pub fn wait(&self, usage: Usage, cancel: Option<&CancelToken>) -> Result<(), ResvError> {
        self.wait_timeout(usage, cancel, MAX_SCHEDULE_TIMEOUT)
            .map(|_| ())
    }

    /// `dma_resv_test_signaled`: true iff no fence with usage `<= usage` is
    /// unsignalled. One read section over the current list, no references
    /// taken.
    #[inline]
    pub fn test_signaled(&self, usage: Usage) -> bool {
        #[cfg(not(loom))]
        if let Some(r) = rcu::read_section(|| self.test_signaled_rcu(usage)) {
            return r;
        }
        self.test_signaled_counted(usage)
    }

    /// [`test_signaled`](Self::test_signaled) on a real thread, inside an
    /// rcu section: loads that skip the (no-op) scheduling point.
    #[cfg(not(loom))]
    #[inline(always)]
    fn test_signaled_rcu(&self, usage: Usage) -> bool {
        let p = self.fences.load_direct(Ordering::SeqCst);
        if p == 0 {
            return true;
        }
        // Raw words rather than `List::at`: the loop needs neither the
        // capacity nor slice bounds (`num <= max` is a list invariant).
        let base = std::ptr::with_exposed_provenance::<AtomicUsize>(p);
        // SAFETY: a list published when the section was active is retired,
        // not freed, until the section ends; its header is `HEAD` words.
        let (num, slots) = unsafe {
            (
                (*base.add(NUM)).load_direct(Ordering::SeqCst),
                base.add(HEAD),
            )
        };
        for i in 0..num {
            // SAFETY: `i < num <= max`, so the slot is in the allocation.
            let w = unsafe { &*slots.add(i) }.load_direct(Ordering::SeqCst);
            debug_assert_ne!(w, 0, "slots below num_fences are never empty");
            if usage.excludes(w) {
                continue;
            }
            // SAFETY: in a read section, so the fence is alive.
            if unsafe { &*fence_ptr(w) }.signaled_flag_direct() {
                continue;
            }
            // SAFETY: as above. Not signalled yet: ask the driver (cold).
            if !unsafe { borrow_fence(w) }.is_signaled() {
                return false;
            }
        }
        true
    }

    /// [`test_signaled`](Self::test_signaled) on a controlled task (every
    /// load a scheduling point) and under loom.
    fn test_signaled_counted(&self, usage: Usage) -> bool {
        let rs = self.read_section();
        let Some(list) = self.list_in(&rs) else {
            return true;
        };
        let num = list.num(Ordering::SeqCst) as usize;
        for s in &list.slots()[..num] {
            let w = s.load(Ordering::SeqCst);
            if w == 0 || usage.excludes(w) {
                continue;
            }
            // SAFETY: in a read section.
            if !unsafe { borrow_fence(w) }.is_signaled() {
                return false;
            }
        }
        true
    }

    /// `dma_resv_set_deadline`: forwards the hint to every unsignalled fence
    /// with usage `<= usage`.
    pub fn set_deadline(&self, usage: Usage, deadline_ns: u64) {
        for e in self.iter_unlocked(usage) {
            e.fence.set_deadline(deadline_ns);
        }
    }

    /// Objects retired and not yet freed (readers were active at every
    /// chance to free them, or, with other reading threads about, fewer
    /// than a batch was waiting at unlock).
    pub fn retired_pending(&self) -> Result<usize, ResvError> {
        self.check_held()?;
        // SAFETY: lock held; the closure only reads lengths.
        Ok(unsafe { self.with_w(|w| w.retired_lists.len() + w.retired_fences.len()) })
    }
}

impl WwLockable for DmaResv {
    fn ww_lock(
        &self,
        ctx: &mut WwAcquireCtx,
        slow: bool,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        self.lock
            .lock_at(Some(ctx), LockMode { slow, cancel: None }, site)
    }

    fn ww_unlock(&self) -> Result<(), WwError> {
        self.unlock().map_err(|e| match e {
            ResvError::Ww(w) => w,
            _ => WwError::NotLocked,
        })
    }
}

/// A [`LockSet`] of reservation objects.
pub type ResvLockSet<'a> = LockSet<'a, DmaResv>;

impl<'a> LockSet<'a, DmaResv> {
    /// A set with a fresh context of [`RESERVATION_WW_CLASS`].
    pub fn new_resv() -> Self {
        LockSet::new(&RESERVATION_WW_CLASS)
    }

    /// A guard for a member of the set (it must be held by the set).
    pub fn guard(&self, obj: &'a DmaResv) -> Result<ResvGuard<'a>, ResvError> {
        if !self
            .held()
            .iter()
            .any(|h| std::ptr::eq(*h as *const DmaResv, obj as *const DmaResv))
        {
            return Err(ResvError::NotHeld {
                locked: obj.is_locked(),
            });
        }
        obj.held()
    }
}

/// Locks every object in `objs` with one acquire context, backing off and
/// retrying on contention; the returned set holds them all.
pub fn lock_all<'a>(objs: &[&'a DmaResv]) -> Result<ResvLockSet<'a>, ResvError> {
    let mut set = ResvLockSet::new_resv();
    set.lock_all(|s| {
        for &o in objs {
            s.lock(o)?;
        }
        Ok::<(), ResvError>(())
    })?;
    Ok(set)
}

/// One entry from an iteration: the fence (a reference of its own), its
/// usage, and whether the iteration (re)started at it.
#[derive(Clone, Debug)]
pub struct ResvEntry {
    /// The fence.
    pub fence: Fence,
    /// Its usage (`dma_resv_iter_usage`).
    pub usage: Usage,
    /// `dma_resv_iter_is_restarted`: true on the first entry after a
    /// (re)start; whoever accumulates must reset on it.
    pub restarted: bool,
}

/// The unlocked cursor (`struct dma_resv_iter` used with
/// `dma_resv_for_each_fence_unlocked`).
pub struct ResvIter<'a> {
    resv: &'a DmaResv,
    usage: Usage,
    list: Option<Arc<List>>,
    snap: usize,
    num: u32,
    index: u32,
    started: bool,
    restarted: bool,
}

impl fmt::Debug for ResvIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResvIter")
            .field("usage", &self.usage)
            .field("index", &self.index)
            .field("num", &self.num)
            .finish()
    }
}

impl ResvIter<'_> {
    fn restart(&mut self) {
        let (p, list) = self.resv.snapshot();
        self.snap = p;
        self.num = list.as_ref().map_or(0, |l| l.num(Ordering::SeqCst));
        self.list = list;
        self.index = 0;
        self.started = true;
        self.restarted = true;
    }

    /// Forces the next step to restart, as if the list had been replaced
    /// (the kernel test corrupts `cursor.fences` for this).
    pub fn force_restart(&mut self) {
        self.snap = usize::MAX;
    }

    /// `cursor.num_fences`: entries in the current snapshot.
    pub fn num_fences(&self) -> u32 {
        self.num
    }
}

impl Iterator for ResvIter<'_> {
    type Item = ResvEntry;

    fn next(&mut self) -> Option<ResvEntry> {
        loop {
            if !self.started || self.resv.fences.load(Ordering::SeqCst) != self.snap {
                self.restart();
            }
            let mut found = None;
            while let Some(list) = self.list.as_deref()
                && self.index < self.num
            {
                let i = self.index;
                self.index += 1;
                if let Some((f, u)) = self.resv.read_slot(list, i)
                    && u <= self.usage
                    && !f.is_signaled()
                {
                    found = Some((f, u));
                    break;
                }
            }
            if self.resv.fences.load(Ordering::SeqCst) != self.snap {
                continue;
            }
            let restarted = std::mem::replace(&mut self.restarted, false);
            return found.map(|(fence, usage)| ResvEntry {
                fence,
                usage,
                restarted,
            });
        }
    }
}

/// The locked cursor (`dma_resv_for_each_fence`): every entry with usage
/// `<= usage`, signalled ones included, in table order.
pub struct ResvLockedIter<'a> {
    resv: &'a DmaResv,
    usage: Usage,
    list: Option<Arc<List>>,
    num: u32,
    index: u32,
    first: bool,
}

impl fmt::Debug for ResvLockedIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResvLockedIter")
            .field("usage", &self.usage)
            .field("index", &self.index)
            .finish()
    }
}

impl Iterator for ResvLockedIter<'_> {
    type Item = ResvEntry;

    fn next(&mut self) -> Option<ResvEntry> {
        let list = self.list.as_deref()?;
        while self.index < self.num {
            let i = self.index;
            self.index += 1;
            if let Some((fence, usage)) = self.resv.read_slot(list, i)
                && usage <= self.usage
            {
                let restarted = std::mem::replace(&mut self.first, false);
                return Some(ResvEntry {
                    fence,
                    usage,
                    restarted,
                });
            }
        }
        None
    }
}

/// Proof that the calling thread holds a reservation object's lock, and
/// the handle for every call that needs it. An owning guard (from
/// [`DmaResv::lock`]) unlocks when dropped; a borrowed one (from
/// [`DmaResv::held`]) does not. Not `Send`: the lock belongs to this thread.
pub struct ResvGuard<'a> {
    /// The locked object's address with bit 0 set when the guard owns the
    /// lock. One word, so that moving the guard (out of a `Result`, into a
    /// drop) is one load and one store of the same size.
    tagged: usize,
    _resv: PhantomData<&'a DmaResv>,
    _not_send: PhantomData<*const ()>,
}

const OWNING: usize = 1;
const _: () = assert!(std::mem::align_of::<DmaResv>() > OWNING);

impl fmt::Debug for ResvGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResvGuard")
            .field("owning", &self.owning())
            .finish()
    }
}

impl Drop for ResvGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.owning() {
            // Not held any more (an explicit unlock came first) is fine.
            let _ = self.resv().unlock();
        }
    }
}

impl<'a> ResvGuard<'a> {
    #[inline(always)]
    fn new(resv: &'a DmaResv, owning: bool) -> Self {
        let addr = (resv as *const DmaResv).expose_provenance();
        Self {
            tagged: addr | if owning { OWNING } else { 0 },
            _resv: PhantomData,
            _not_send: PhantomData,
        }
    }

    #[inline(always)]
    fn owning(&self) -> bool {
        self.tagged & OWNING != 0
    }

    /// The locked object.
    #[inline(always)]
    pub fn resv(&self) -> &'a DmaResv {
        let p = std::ptr::with_exposed_provenance::<DmaResv>(self.tagged & !OWNING);
        // SAFETY: the address of a `&'a DmaResv` (see `new`), so valid for 'a.
        unsafe { &*p }
    }

    /// `dma_resv_unlock` now, reporting errors.
    pub fn unlock(mut self) -> Result<(), ResvError> {
        self.tagged &= !OWNING;
        self.resv().unlock()
    }

    /// Keeps the lock held past the guard (kernel-shaped code that unlocks
    /// elsewhere with [`DmaResv::unlock`]).
    pub fn keep_locked(mut self) {
        self.tagged &= !OWNING;
    }

    /// `dma_resv_reserve_fences`: makes room for `num_fences` more entries,
    /// valid until unlock.
    pub fn reserve_fences(&self, num_fences: u32) -> Result<(), ResvError> {
        let r = self.reserve_inner(num_fences);
        self.resv().reclaim();
        r
    }

    fn reserve_inner(&self, n: u32) -> Result<(), ResvError> {
        let resv = self.resv();
        resv.check_held()?;
        if n == 0 {
            // Linux 7.x: nothing to make room for, nothing to do.
            return Ok(());
        }
        let rs = resv.read_section();
        let old = resv.list_in(&rs);
        let num = old.map_or(0, |l| l.num(Ordering::Relaxed));
        let too_many = ResvError::TooManyFences { num, requested: n };
        let need = num.checked_add(n).ok_or(too_many.clone())?;
        let max = match old {
            Some(l) if l.cap() > 0 => {
                if need <= l.cap() {
                    // SAFETY: lock held; the closure only updates an integer.
                    unsafe { resv.with_w(|w| w.reserved_upto = w.reserved_upto.max(need)) };
                    return Ok(());
                }
                need.max(l.cap().saturating_mul(2))
            }
            _ => n
                .checked_next_power_of_two()
                .ok_or(too_many.clone())?
                .max(4),
        };
        if crate::fault::should_fail("dma_resv_reserve_fences") {
            return Err(too_many);
        }
        let new = List::with_capacity(max).ok_or(too_many)?;
        let mut j = 0;
        if let Some(old) = old {
            for s in &old.slots()[..num as usize] {
                let w = s.load(Ordering::Relaxed);
                if w == 0 {
                    continue;
                }
                // SAFETY: in a read section, and we are the only writer.
                let f = unsafe { borrow_fence(w) };
                if !f.is_signaled() {
                    new.slots()[j as usize]
                        .store(pack((*f).clone(), Usage::from_bits(w)), Ordering::Relaxed);
                    j += 1;
                }
            }
        }
        new.set_num(j, Ordering::Relaxed);
        drop(rs);
        resv.publish(Some(new));
        // SAFETY: lock held; the closure only updates an integer.
        unsafe {
            resv.with_w(|w| {
                let free = w.reserved_upto.saturating_sub(num);
                w.reserved_upto = j + free.max(n);
            })
        };
        Ok(())
    }

    /// `dma_resv_add_fence`: the replacement rules of the module docs.
    /// Refuses containers, and an append without a reserved slot.
    pub fn add_fence(&self, fence: &Fence, usage: Usage) -> Result<(), ResvError> {
        let r = self.add_inner(fence, usage);
        self.resv().reclaim();
        r
    }

    fn add_inner(&self, fence: &Fence, usage: Usage) -> Result<(), ResvError> {
        let resv = self.resv();
        resv.check_held()?;
        if fence.is_container() {
            return Err(ResvError::ContainerFence {
                context: fence.context(),
                seqno: fence.seqno(),
            });
        }
        let rs = resv.read_section();
        // SAFETY: lock held; the closure only reads an integer.
        let reserved = unsafe { resv.with_w(|w| w.reserved_upto) };
        let Some(list) = resv.list_in(&rs) else {
            return Err(ResvError::NoSlotReserved { num: 0, reserved });
        };
        let count = list.num(Ordering::Relaxed);
        for s in &list.slots()[..count as usize] {
            let w = s.load(Ordering::Relaxed);
            if w == 0 {
                continue;
            }
            // SAFETY: in a read section.
            let old = unsafe { borrow_fence(w) };
            let old_usage = Usage::from_bits(w);
            let same_timeline = old.context() == fence.context()
                && old_usage >= usage
                && fence.is_later_or_same(&old).unwrap_or(false);
            if same_timeline || old.is_signaled() {
                let prev = s.swap(pack(fence.clone(), usage), Ordering::SeqCst);
                // SAFETY: the slot owned one reference, now ours.
                let prev = unsafe { Arc::from_raw(fence_ptr(prev)) };
                resv.retire_fence(Fence(prev));
                return Ok(());
            }
        }
        if count >= reserved.min(list.cap()) {
            return Err(ResvError::NoSlotReserved {
                num: count,
                reserved,
            });
        }
        list.slots()[count as usize].store(pack(fence.clone(), usage), Ordering::SeqCst);
        list.set_num(count + 1, Ordering::SeqCst);
        Ok(())
    }

    /// `dma_resv_replace_fences`: every entry from `context` becomes
    /// `replacement` with `usage`.
    pub fn replace_fences(
        &self,
        context: u64,
        replacement: &Fence,
        usage: Usage,
    ) -> Result<(), ResvError> {
        let r = self.replace_inner(context, replacement, usage);
        self.resv().reclaim();
        r
    }

    fn replace_inner(&self, context: u64, rep: &Fence, usage: Usage) -> Result<(), ResvError> {
        let resv = self.resv();
        resv.check_held()?;
        if rep.is_container() {
            return Err(ResvError::ContainerFence {
                context: rep.context(),
                seqno: rep.seqno(),
            });
        }
        let rs = resv.read_section();
        let Some(list) = resv.list_in(&rs) else {
            return Ok(());
        };
        let count = list.num(Ordering::Relaxed) as usize;
        for s in &list.slots()[..count] {
            let w = s.load(Ordering::Relaxed);
            // SAFETY: the pointer is alive: we are in a read section.
            if w == 0 || unsafe { borrow_fence(w) }.context() != context {
                continue;
            }
            let prev = s.swap(pack(rep.clone(), usage), Ordering::SeqCst);
            // SAFETY: the slot owned one reference, now ours.
            resv.retire_fence(Fence(unsafe { Arc::from_raw(fence_ptr(prev)) }));
        }
        Ok(())
    }

    /// `dma_resv_copy_fences`: replaces this object's list by the
    /// unsignalled fences of `src` with their usages (read without `src`'s
    /// lock). Consumes the reserved slots.
    pub fn copy_fences(&self, src: &DmaResv) -> Result<(), ResvError> {
        self.resv().check_held()?;
        let mut entries = Vec::new();
        let mut cap = 0;
        let mut it = src.iter_unlocked(Usage::Bookkeep);
        while let Some(e) = it.next() {
            if e.restarted {
                entries.clear();
                cap = it.num_fences();
            }
            entries.push((e.fence, e.usage));
        }
        let new = if entries.is_empty() {
            None
        } else {
            let want = cap.max(entries.len() as u32);
            let l = List::with_capacity(want).ok_or(ResvError::TooManyFences {
                num: 0,
                requested: want,
            })?;
            for (i, (f, u)) in entries.into_iter().enumerate() {
                l.slots()[i].store(pack(f, u), Ordering::Relaxed);
                l.set_num(i as u32 + 1, Ordering::Relaxed);
            }
            Some(l)
        };
        let num = new.as_ref().map_or(0, |l| l.num(Ordering::Relaxed));
        self.resv().publish(new);
        // SAFETY: lock held; the closure only writes an integer.
        unsafe { self.resv().with_w(|w| w.reserved_upto = num) };
        self.resv().reclaim();
        Ok(())
    }

    /// `dma_resv_for_each_fence`: every entry with usage `<= usage`,
    /// signalled ones included, in table order.
    pub fn for_each_fence(&self, usage: Usage) -> ResvLockedIter<'a> {
        let (_, list) = self.resv().snapshot();
        ResvLockedIter {
            resv: self.resv(),
            usage,
            num: list.as_ref().map_or(0, |l| l.num(Ordering::SeqCst)),
            list,
            index: 0,
            first: true,
        }
    }

    /// Entries in the list (`num_fences`), signalled ones included.
    pub fn num_fences(&self) -> u32 {
        let rs = self.resv().read_section();
        self.resv()
            .list_in(&rs)
            .map_or(0, |l| l.num(Ordering::SeqCst))
    }

    /// Capacity of the list (`max_fences` as allocated).
    pub fn max_fences(&self) -> u32 {
        let rs = self.resv().read_section();
        self.resv().list_in(&rs).map_or(0, List::cap)
    }

    /// Frees every retired object that no reader can still see, starting a
    /// grace period if other threads may be reading (`rcu_barrier`'s role
    /// for this object). Returns how many stay retired: those a reader that
    /// entered before their retirement may still hold.
    pub fn reclaim_retired(&self) -> Result<usize, ResvError> {
        let resv = self.resv();
        resv.check_held()?;
        let r = resv.take_reclaimable(Grace::Now);
        resv.release_retired(r);
        resv.retired_pending()
    }

    /// `dma_resv_describe`: one line per fence with usage `<= Read`:
    /// `"\t<usage> fence:<dma_fence_describe>\n"` (the kernel prints no
    /// space between `fence:` and the description).
    pub fn describe(&self) -> String {
        self.for_each_fence(Usage::Read)
            .map(|e| format!("\t{} fence:{}\n", e.usage, e.fence.describe()))
            .collect()
    }
}
