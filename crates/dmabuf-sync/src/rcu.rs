//! Read sections without a read-modify-write, for the unlocked readers of
//! `dma_resv` (the kernel's `rcu_read_lock` / `rcu_read_unlock` and the
//! grace period behind `kfree_rcu`), on real threads.
//!
//! # Protocol
//!
//! Every thread that reads owns a *record* (a thread-local, listed in a
//! process-wide registry): a word that is 0 while the thread is outside any
//! section (bits for "not registered yet", "symmetric mode" and "controlled
//! task" send those threads to the slow path) and holds the epoch it
//! announced, marked active, inside its outermost section (a nested entry
//! finds the record active and leaves it alone); and its copy of the
//! process epoch.
//!
//! | step | reader (hot) | reclaimer (cold, holds whatever lock orders the retirements) |
//! |---|---|---|
//! | 1 | load `E`, its record's copy of the epoch; store `E` (marked active) in its record (a plain store) | unpublish `X` (a `SeqCst` store or swap) |
//! | 2 | compiler barrier, then load the published pointers | tag `X` with [`retire_tag`] (the epoch now) |
//! | 3 | use what they point to | later: [`horizon`] increments the epoch, brings every record's copy of it up to date, runs a process-wide memory barrier (`membarrier(2)`), then reads every record |
//! | 4 | store 0 in its record (a release store) | free `X` if its tag is below the horizon: no active record has an epoch `<=` the tag |
//!
//! Why step 4 is safe: a reader that can still use `X` loaded its pointer
//! before step 1 of the reclaimer, so the epoch copy it read was written
//! before the tag was taken (`e <= tag`): a copy of a later epoch is written
//! after the increment that made it, so a reader that saw it (acquire) loads
//! its pointers after the unpublish. A copy is never ahead of the process
//! epoch, only behind it, and behind is merely conservative (the reader
//! holds back objects it could not reach); each grace period brings every
//! copy up to date. Readers keep the copy in their own record, on their own
//! cache line, so the fast path touches no shared line at all.
//!
//! The heavy barrier in [`horizon`] runs a full memory barrier on every
//! thread of the process, so each reader's announcement is either visible
//! to the scan, or was made after the barrier, in which case that reader's
//! pointer loads see the unpublish. This is the "asymmetric
//! fence" scheme of userspace RCU's `membarrier` flavour: the reader pays two
//! plain stores, the reclaimer a system call.
//!
//! Without `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (not Linux, or refused), the
//! reader follows its announcement with a `SeqCst` fence of its own, and the
//! heavy barrier is an ordinary `SeqCst` fence: the symmetric scheme,
//! correct everywhere, slower for the reader.
//!
//! # Checked by
//!
//! `tests/loom_rcu.rs`: this file, compiled over loom's primitives as
//! `rcu_model` under `--cfg loom`, in both modes, with `membarrier` modelled
//! as the pair of `SeqCst` fences it amounts to (see [`heavy_barrier`]): a
//! reader never uses an object after a grace period let it be freed,
//! nested exits keep the outer section, the no-reader shortcut is sound,
//! and a grace period with no reader left completes. A planted bug (a grace
//! period that skips its scan) makes the models fail.
//!
//! # Rules
//!
//! * Only real threads use this module: a controlled task (see
//!   [`crate::sched`]) uses a per-object reader count instead, whose every
//!   step is a scheduling point. [`try_read_lock`] refuses a controlled
//!   task (the scheduler flags its threads with [`set_controlled`], so a
//!   real thread pays no extra test); [`available`] answers the same
//!   question without entering a section.
//! * A section must not block: reclaimers never wait for readers, they only
//!   defer freeing.
//! * Sections nest (a fence's `signaled` op may read another reservation
//!   object); the outermost entry's epoch stands for the whole nest.
//! * A thread's record is one of its thread-locals, registered on its first
//!   section and taken out of the registry by a thread-local destructor
//!   before the thread's locals are freed. (A thread whose first section
//!   comes from a destructor after that one ran gets a leaked record.)

#[cfg(not(loom))]
use crate::sched;
#[cfg(loom)]
use loom::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, fence};
use std::cell::Cell;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, fence};
use std::sync::atomic::{Ordering, compiler_fence};

/// Record word bit: inside a section.
const ACTIVE: u64 = 1;
/// Record word bit: take the slow path (no registration yet, or the
/// portable symmetric mode).
const SLOW: u64 = 2;
/// Record word bit: the thread runs as a controlled task (see
/// [`set_controlled`]); the slow path then asks [`sched::active`].
const TASK: u64 = 4;
/// An active word is `(epoch << EPOCH_SHIFT) | flags | ACTIVE`; an idle one
/// is just the flags, so a registered real thread in asymmetric mode is idle
/// at 0 and the fast path tests one word for everything.
const EPOCH_SHIFT: u32 = 3;

/// One thread's record. Cache-line aligned so readers on different CPUs do
/// not share a line.
#[repr(C, align(64))]
struct Record {
    /// The flags, plus the announced epoch and [`ACTIVE`] inside a section.
    word: AtomicU64,
    /// The process epoch as last copied here (by [`horizon`], or at
    /// registration); never ahead of [`EPOCH`]. What the fast path
    /// announces.
    epoch: AtomicU64,
}

impl Record {
    #[cfg(not(loom))]
    const fn new(flags: u64) -> Record {
        Record {
            word: AtomicU64::new(flags),
            epoch: AtomicU64::new(0),
        }
    }

    /// Loom's atomics are not `const`.
    #[cfg(loom)]
    fn new(flags: u64) -> Record {
        Record {
            word: AtomicU64::new(flags),
            epoch: AtomicU64::new(0),
        }
    }
}

/// The process epoch. Starts at 1 so that an active word is never 0.
#[cfg(not(loom))]
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// Registered records (a registering thread counts itself before its first
/// load of anything a reclaimer unpublishes).
#[cfg(not(loom))]
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// Addresses of the registered records: thread-locals of live threads
/// (each removes its own at exit, under the lock, before its locals' memory
/// goes) and leaked fallbacks.
struct Registry(Vec<*const Record>);

// SAFETY: the pointers are only read under the registry lock, while their
// records are alive (see the type's docs).
unsafe impl Send for Registry {}

#[cfg(not(loom))]
static REGISTRY: parking_lot::Mutex<Registry> = parking_lot::Mutex::new(Registry(Vec::new()));

const MODE_UNKNOWN: u8 = 0;
const MODE_ASYMMETRIC: u8 = 1;
const MODE_SYMMETRIC: u8 = 2;
#[cfg(not(loom))]
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);

/// The registry, locked.
#[cfg(not(loom))]
#[inline]
fn registry() -> parking_lot::MutexGuard<'static, Registry> {
    REGISTRY.lock()
}

// Under loom the process-wide state is per execution (loom's statics), the
// registry lock is loom's (a scan is a series of model steps under it), and
// the record of a thread is leaked rather than thread-local: loom frees its
// thread-locals at thread exit in no particular order, while the registry
// must keep every record it lists alive (production removes a record at
// exit through `Owner`, a path the models do not take).
#[cfg(loom)]
loom::lazy_static! {
    static ref EPOCH: AtomicU64 = AtomicU64::new(1);
    static ref IN_USE: AtomicUsize = AtomicUsize::new(0);
    static ref REGISTRY: loom::sync::Mutex<Registry> = loom::sync::Mutex::new(Registry(Vec::new()));
    static ref MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);
    static ref DISCARD: Record = Record::new(0);
}

#[cfg(loom)]
fn registry() -> loom::sync::MutexGuard<'static, Registry> {
    // A panic inside a model step poisons it; the model has failed anyway.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Under loom: run the models in the portable symmetric mode instead of the
/// asymmetric (`membarrier`) one. Set before `loom::model`.
#[cfg(loom)]
static MODEL_SYMMETRIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Under loom: make [`horizon`] skip its scan of the records (a planted bug
/// the models must catch). Set before `loom::model`.
#[cfg(loom)]
static MODEL_SKIP_SCAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Loom models only: choose the symmetric mode and whether to plant the
/// skipped-scan bug, for the executions that follow.
#[cfg(loom)]
#[doc(hidden)]
pub fn model_config(symmetric: bool, skip_scan: bool) {
    MODEL_SYMMETRIC.store(symmetric, Ordering::SeqCst);
    MODEL_SKIP_SCAN.store(skip_scan, Ordering::SeqCst);
}

/// Where the calling thread's sections are announced.
#[derive(Clone, Copy)]
enum Home {
    /// Not registered yet.
    None,
    /// [`REC`], registered; [`Owner`] removes it at thread exit.
    Local,
    /// A leaked record: the thread first read while its locals were being
    /// destroyed, too late to arrange for [`REC`] to leave the registry.
    Leaked(&'static Record),
}

#[cfg(not(loom))]
thread_local! {
    /// This thread's record, in thread-local storage so that the fast path
    /// reaches it without loading a pointer.
    static REC: Record = const { Record::new(SLOW) };
    static HOME: Cell<Home> = const { Cell::new(Home::None) };
    /// Removes [`REC`] from the registry at thread exit.
    static OWNER: Owner = const { Owner };
}

#[cfg(loom)]
loom::thread_local! {
    static REC: &'static Record = Box::leak(Box::new(Record::new(SLOW)));
    static HOME: Cell<Home> = Cell::new(Home::None);
}

#[cfg(not(loom))]
struct Owner;

#[cfg(not(loom))]
impl Drop for Owner {
    fn drop(&mut self) {
        if !matches!(HOME.with(|h| h.replace(Home::None)), Home::Local) {
            return;
        }
        let me = local();
        let mut reg = REGISTRY.lock();
        if let Some(i) = reg.0.iter().position(|&r| r == me) {
            reg.0.swap_remove(i);
        }
        drop(reg);
        // Unregistered: any later section registers again (or falls back).
        REC.with(|r| {
            r.word.store(
                SLOW | (r.word.load(Ordering::Relaxed) & TASK),
                Ordering::Relaxed,
            )
        });
        IN_USE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the calling thread uses these sections (a real thread) rather
/// than a per-object count (a controlled task).
#[inline(always)]
pub fn available() -> bool {
    #[cfg(not(loom))]
    return !sched::active();
    #[cfg(loom)]
    return true;
}

/// Whether the calling thread is a controlled task of a live execution.
#[inline(always)]
fn controlled_task() -> bool {
    #[cfg(not(loom))]
    return sched::active();
    #[cfg(loom)]
    return false;
}

/// Marks the calling thread as (possibly) a controlled task, or no longer
/// one; the scheduler calls it when a thread takes or drops a task, outside
/// any section. While set, [`try_read_lock`] leaves its fast path and asks
/// [`sched::active`], which also knows whether the task's execution is
/// being torn down.
pub fn set_controlled(on: bool) {
    REC.with(|r| {
        let w = r.word.load(Ordering::Relaxed);
        debug_assert_eq!(w & ACTIVE, 0, "set_controlled inside a section");
        r.word
            .store(if on { w | TASK } else { w & !TASK }, Ordering::Relaxed);
    });
}

fn detect_mode() -> u8 {
    let m = MODE.load(Ordering::Acquire);
    if m != MODE_UNKNOWN {
        return m;
    }
    let m = if membarrier_register() {
        MODE_ASYMMETRIC
    } else {
        MODE_SYMMETRIC
    };
    // Every thread computes the same answer; the first store wins.
    let _ = MODE.compare_exchange(MODE_UNKNOWN, m, Ordering::AcqRel, Ordering::Acquire);
    MODE.load(Ordering::Acquire)
}

#[cfg(all(target_os = "linux", not(loom)))]
fn membarrier_register() -> bool {
    const CMD_QUERY: libc::c_long = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
    // SAFETY: membarrier takes integers only.
    let supported = unsafe { libc::syscall(libc::SYS_membarrier, CMD_QUERY, 0, 0) };
    if supported < 0 || supported & CMD_PRIVATE_EXPEDITED == 0 {
        return false;
    }
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) };
    r == 0
}

#[cfg(not(any(target_os = "linux", loom)))]
fn membarrier_register() -> bool {
    false
}

/// Under loom the asymmetric mode is modelled unless a model asks for the
/// symmetric one.
#[cfg(loom)]
fn membarrier_register() -> bool {
    !MODEL_SYMMETRIC.load(Ordering::SeqCst)
}

/// A full memory barrier on every running thread of the process.
#[cfg(all(target_os = "linux", not(loom)))]
fn heavy_barrier() -> bool {
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: membarrier takes integers only.
    unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

#[cfg(not(any(target_os = "linux", loom)))]
fn heavy_barrier() -> bool {
    false
}

/// Under loom, `membarrier` is modelled as what it guarantees: a `SeqCst`
/// fence here, paired with the `SeqCst` fence that [`reader_barrier`]
/// becomes on the readers' side. Either a reader's fence comes first in
/// the single total order of `SeqCst` fences (the scan after this one sees
/// its announcement) or this one does (the reader's later loads see what
/// was unpublished before it): the two cases `membarrier(2)` promises.
#[cfg(loom)]
fn heavy_barrier() -> bool {
    fence(Ordering::SeqCst);
    true
}

/// The reader's side of the asymmetric fence: only a compiler barrier on
/// real threads (the reclaimer's `membarrier` supplies the store-load
/// ordering), a `SeqCst` fence under loom (see [`heavy_barrier`]).
#[inline(always)]
fn reader_barrier() {
    #[cfg(not(loom))]
    compiler_fence(Ordering::SeqCst);
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// The calling thread's registered record, registering it on first use.
#[cold]
#[inline(never)]
fn home() -> *const Record {
    let local = local();
    match HOME.with(Cell::get) {
        Home::Local => return local,
        Home::Leaked(r) => return r,
        Home::None => {}
    }
    let mode = detect_mode();
    // Count ourselves before any load a reclaimer's "nobody else reads"
    // shortcut could miss (see `quiescent_alone`).
    IN_USE.fetch_add(1, Ordering::SeqCst);
    let slow = if mode == MODE_ASYMMETRIC { 0 } else { SLOW };
    // The thread-local record needs `Owner` to take it out of the registry
    // before the thread's locals are freed; if this thread's destructors
    // are already running, that cannot be arranged, so it gets a leaked
    // record instead (rare: a section entered from a destructor).
    #[cfg(not(loom))]
    let owner_alive = OWNER.try_with(|_| ()).is_ok();
    // Under loom the record is leaked already and never taken out.
    #[cfg(loom)]
    let owner_alive = true;
    let rec: *const Record = if owner_alive {
        HOME.with(|h| h.set(Home::Local));
        local
    } else {
        let r: &'static Record = Box::leak(Box::new(Record::new(0)));
        HOME.with(|h| h.set(Home::Leaked(r)));
        r
    };
    // SAFETY: our own record, alive for the thread (or leaked).
    let r = unsafe { &*rec };
    r.epoch
        .store(EPOCH.load(Ordering::Acquire), Ordering::Release);
    // Unregistered, `REC` carries `SLOW` (so a thread on a leaked record
    // stays on the slow path) and perhaps `TASK`.
    let task = REC.with(|l| {
        let w = l.word.load(Ordering::Relaxed);
        debug_assert_eq!(w & !TASK, SLOW, "an unregistered record is idle and slow");
        w & TASK
    });
    registry().0.push(rec);
    r.word.store(slow | task, Ordering::Release);
    rec
}

/// The address of this thread's [`REC`]. Only the address is taken inside
/// `LocalKey::with` (a call through the key wherever `with` is not
/// inlined), so that callers' section bodies inline where they are.
#[inline(always)]
fn local() -> *const Record {
    #[cfg(not(loom))]
    return REC.with(|r| r as *const Record);
    #[cfg(loom)]
    return REC.with(|r| *r as *const Record);
}

/// The fast path's entry, once the caller has seen the record idle with
/// no flags: announces the record's epoch copy, marked active.
#[inline(always)]
fn announce(r: &Record) {
    r.word.store(
        (r.epoch.load(Ordering::Acquire) << EPOCH_SHIFT) | ACTIVE,
        Ordering::Release,
    );
    // The reclaimer's membarrier supplies the store-load ordering.
    reader_barrier();
}

/// An open read section; leaving it (dropping) ends it. Not `Send`: the
/// record belongs to this thread.
pub struct ReadGuard {
    /// The address of the thread's record if this is the outermost
    /// section, of [`DISCARD`] if nested (so that leaving is one
    /// unconditional store either way), with the record's idle word (its
    /// flags, below [`IDLE_MASK`]) in the low bits that the record's
    /// alignment leaves free. One non-zero word, so that an
    /// `Option<ReadGuard>` stays in a register across the section.
    tagged: NonZeroUsize,
    _not_send: PhantomData<*const ()>,
}

/// The low bits of [`ReadGuard::tagged`] (records are 64-aligned).
const IDLE_MASK: usize = 63;
const _: () = assert!(std::mem::align_of::<Record>() > IDLE_MASK);
const _: () = assert!(((SLOW | TASK) as usize) <= IDLE_MASK);

/// What a nested section's exit writes to: a record outside the registry,
/// never scanned.
#[cfg(not(loom))]
static DISCARD: Record = Record::new(0);

#[inline(always)]
fn discard() -> &'static Record {
    #[cfg(not(loom))]
    return &DISCARD;
    #[cfg(loom)]
    return &DISCARD;
}

impl ReadGuard {
    #[inline(always)]
    fn new(rec: &Record, idle: u64) -> Self {
        debug_assert!(idle as usize <= IDLE_MASK && idle & ACTIVE == 0);
        let addr = (rec as *const Record).expose_provenance() | idle as usize;
        ReadGuard {
            // A reference's address is never 0.
            tagged: NonZeroUsize::new(addr).unwrap_or(NonZeroUsize::MAX),
            _not_send: PhantomData,
        }
    }

    #[inline(always)]
    fn rec(&self) -> *const Record {
        std::ptr::with_exposed_provenance(self.tagged.get() & !IDLE_MASK)
    }

    /// Whether this is the outermost section of its thread.
    pub fn is_outermost(&self) -> bool {
        !std::ptr::eq(self.rec(), discard())
    }
}

/// Enters a read section (`rcu_read_lock`) if the caller is a real thread,
/// and returns `None` for a controlled task, which must use its own kind of
/// section (see [`available`]). Sections end in the reverse order of entry
/// (guards are scoped): a nested section is recognised by the record being
/// active already, and only the outermost one marks and clears the record.
///
/// The fast path is one load of the thread-local record's word, which is 0
/// exactly for "registered real thread, asymmetric mode, outside any
/// section", a load of the record's epoch copy and one plain store, all on
/// the thread's own cache line; the exit is one plain store of 0. Both
/// stores are constants with respect to the previous section, so
/// consecutive sections are not chained through store-to-load forwarding.
#[inline(always)]
pub fn try_read_lock() -> Option<ReadGuard> {
    // SAFETY: this thread's record, alive while the thread runs (the guard
    // is not `Send`).
    let r = unsafe { &*local() };
    let w = r.word.load(Ordering::Relaxed);
    if w == 0 {
        announce(r);
        return Some(ReadGuard::new(r, 0));
    }
    try_read_lock_slow(w)
}

/// Runs `f` inside a read section and returns what it returned, or
/// returns `None` without running it on a controlled task (see
/// [`try_read_lock`]). The same section as [`try_read_lock`], but the fast
/// path is compiled apart from the slow one, so that its exit is a constant
/// store to the thread-local record rather than a store through the guard:
/// for short hot sections such as `dma_resv_test_signaled`.
#[inline(always)]
pub fn read_section<R>(f: impl FnOnce() -> R) -> Option<R> {
    /// Ends a fast-path section, also when `f` unwinds.
    struct FastExit<'a>(&'a Record);
    impl Drop for FastExit<'_> {
        #[inline(always)]
        fn drop(&mut self) {
            compiler_fence(Ordering::SeqCst);
            self.0.word.store(0, Ordering::Release);
        }
    }
    // SAFETY: this thread's record, used only within this call.
    let r = unsafe { &*local() };
    let w = r.word.load(Ordering::Relaxed);
    if w == 0 {
        announce(r);
        let _exit = FastExit(r);
        return Some(f());
    }
    let _g = try_read_lock_slow(w)?;
    Some(f())
}

/// A controlled task, the first section of a thread, a nested section, a
/// thread on a leaked record, or every section in symmetric mode.
#[cold]
#[inline(never)]
fn try_read_lock_slow(w: u64) -> Option<ReadGuard> {
    if w & TASK != 0 && controlled_task() {
        return None;
    }
    // SAFETY: our own record, alive for the thread (or leaked).
    let rec = unsafe { &*home() };
    let idle = rec.word.load(Ordering::Relaxed);
    if idle & ACTIVE != 0 {
        return Some(ReadGuard::new(discard(), 0));
    }
    let word = (EPOCH.load(Ordering::Acquire) << EPOCH_SHIFT) | idle | ACTIVE;
    if MODE.load(Ordering::Acquire) == MODE_ASYMMETRIC {
        rec.word.store(word, Ordering::Release);
        reader_barrier();
    } else {
        // Symmetric mode: the reader's own full fence pairs with the
        // reclaimer's. (An announcing `SeqCst` swap followed by the
        // `Acquire` pointer loads is not enough in the language's model:
        // the loads may still read what the reclaimer unpublished before
        // its fence. x86 and ARMv8 happen to forbid that; the loom model in
        // `tests/loom_rcu.rs` found it.)
        rec.word.store(word, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
    Some(ReadGuard::new(rec, idle))
}

impl Drop for ReadGuard {
    #[inline(always)]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: the record outlives the guard (the guard is not `Send`
        // and the record lives as long as its thread, or forever).
        unsafe { &*self.rec() }
            .word
            .store((self.tagged.get() & IDLE_MASK) as u64, Ordering::Release);
    }
}

/// The tag of an object unpublished before this call (`SeqCst` after the
/// unpublishing store).
#[inline]
pub fn retire_tag() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// True if the caller is outside every read section and no other live
/// thread has a registered record (has entered a section): then nothing the
/// caller unpublished can be in use by anybody, and it may be freed at once
/// without a grace period.
///
/// Sound because a thread counts itself (`SeqCst`) before its first
/// section, and the caller unpublished (`SeqCst`) before asking.
#[inline]
pub fn quiescent_alone() -> bool {
    // The argument above rests on the single total order of `SeqCst`
    // operations (the caller's unpublish, then this load, against a
    // registering reader's count, then its section's fence). Loom models
    // `SeqCst` accesses as `AcqRel` only, so its models add the fence that
    // this order gives on real hardware.
    #[cfg(loom)]
    fence(Ordering::SeqCst);
    let mine = match HOME.with(Cell::get) {
        Home::None => None,
        Home::Local => Some(REC.with(|r| r.word.load(Ordering::Relaxed))),
        Home::Leaked(r) => Some(r.word.load(Ordering::Relaxed)),
    };
    if mine.is_some_and(|w| w & ACTIVE != 0) {
        return false;
    }
    IN_USE.load(Ordering::SeqCst) <= usize::from(mine.is_some())
}

/// Starts a grace period and reports how far it got: every object whose
/// [`retire_tag`] is below the returned horizon is no longer visible to any
/// reader and may be freed. Costs a `membarrier(2)` system call (a few
/// microseconds) and a scan of the registry; call it for batches.
pub fn horizon() -> u64 {
    let mode = detect_mode();
    let next = EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
    #[cfg(loom)]
    if MODEL_SKIP_SCAN.load(Ordering::SeqCst) {
        return next;
    }
    // Bring every epoch copy up to `next` first, so that a reader entering
    // during the barrier below already announces the new epoch and does
    // not hold this grace period back. `fetch_max`: a concurrent, older
    // grace period never moves a copy back.
    for_each_record(|r| {
        r.epoch.fetch_max(next, Ordering::AcqRel);
    });
    if mode == MODE_ASYMMETRIC {
        if !heavy_barrier() {
            // membarrier failed after succeeding once: treat every reader
            // as active, the conservative answer.
            return 0;
        }
    } else {
        fence(Ordering::SeqCst);
    }
    let mut h = next;
    for_each_record(|r| {
        let w = r.word.load(Ordering::Acquire);
        if w & ACTIVE != 0 {
            h = h.min(w >> EPOCH_SHIFT);
        }
    });
    h
}

/// Runs `f` on every registered record, under the registry lock.
fn for_each_record(mut f: impl FnMut(&Record)) {
    let reg = registry();
    for &p in &reg.0 {
        // SAFETY: registered records are alive while listed (their threads
        // take them out, under this lock, before they go).
        f(unsafe { &*p });
    }
}

/// Records in the registry (for tests).
#[cfg(all(test, not(loom)))]
fn registered() -> usize {
    REGISTRY.lock().0.len()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A section on a real thread.
    fn section() -> ReadGuard {
        try_read_lock().expect("a test thread is a real thread")
    }

    /// The word of a guard's record.
    fn word(g: &ReadGuard) -> u64 {
        // SAFETY: the calling thread's own record (or the discard record).
        unsafe { &*g.rec() }.word.load(Ordering::Relaxed)
    }

    /// Whether grace periods get past `tag` once nothing of ours holds it
    /// (other tests' threads may be inside sections for a moment).
    fn horizon_passes(tag: u64) -> bool {
        (0..10_000).any(|_| {
            let passed = horizon() > tag;
            if !passed {
                std::thread::yield_now();
            }
            passed
        })
    }

    #[test]
    fn a_section_entered_before_the_tag_holds_the_horizon_back() {
        let g = section();
        let tag = retire_tag();
        assert!(horizon() <= tag, "an open section from before the tag");
        drop(g);
        assert!(
            horizon_passes(tag),
            "the horizon never passed a tag with no reader left"
        );
    }

    #[test]
    fn a_section_entered_after_the_tag_does_not_hold_it_back() {
        let tag = retire_tag();
        let _ = horizon(); // moves the epoch past the tag
        let g = section();
        assert!(g.is_outermost());
        let e = word(&g) >> EPOCH_SHIFT;
        assert!(e > tag, "entered at epoch {e}, tag {tag}");
        drop(g);
    }

    #[test]
    fn nested_sections_keep_the_outer_epoch_and_restore_on_exit() {
        let outer = section();
        assert!(outer.is_outermost());
        // SAFETY: the test thread's own record.
        let rec = unsafe { &*outer.rec() };
        let w1 = rec.word.load(Ordering::Relaxed);
        assert_eq!(w1 & ACTIVE, ACTIVE, "active");
        let tag = retire_tag();
        let _ = horizon();
        let inner = section();
        assert!(!inner.is_outermost(), "a nested section touches no record");
        assert_eq!(rec.word.load(Ordering::Relaxed), w1, "outer epoch kept");
        drop(inner);
        assert_eq!(rec.word.load(Ordering::Relaxed), w1);
        assert!(horizon() <= tag, "still inside the outer section");
        drop(outer);
        assert_eq!(rec.word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn another_threads_open_section_is_seen_by_the_horizon() {
        let inside = Arc::new(AtomicBool::new(false));
        let leave = Arc::new(AtomicBool::new(false));
        let (i2, l2) = (inside.clone(), leave.clone());
        let t = std::thread::spawn(move || {
            let g = section();
            i2.store(true, Ordering::SeqCst);
            while !l2.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            drop(g);
        });
        while !inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert!(!quiescent_alone());
        let tag = retire_tag();
        for _ in 0..3 {
            assert!(horizon() <= tag, "the other thread is still inside");
        }
        leave.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert!(horizon_passes(tag), "the other thread has left");
    }

    #[test]
    fn exited_threads_leave_the_registry() {
        let before = registered();
        for _ in 0..64 {
            let listed = std::thread::spawn(|| {
                let g = section();
                assert!(g.is_outermost());
                REGISTRY.lock().0.contains(&g.rec())
            })
            .join()
            .unwrap();
            assert!(listed, "a reading thread's record is registered");
        }
        // Other tests' threads may be registered for a moment, but 64
        // exited threads must not have stayed.
        let after = registered();
        assert!(
            after < before + 32,
            "{before} records before 64 sequential threads, {after} after"
        );
    }

    #[test]
    fn a_section_from_a_late_destructor_gets_a_leaked_record() {
        // 0: not run; 1: a leaked, registered, active record; 2: otherwise.
        static SEEN: AtomicU8 = AtomicU8::new(0);
        struct Late;
        impl Drop for Late {
            fn drop(&mut self) {
                let g = section();
                let leaked = matches!(HOME.with(Cell::get), Home::Leaked(_));
                let ok = leaked
                    && g.is_outermost()
                    && word(&g) & ACTIVE != 0
                    && REGISTRY.lock().0.contains(&g.rec());
                drop(g);
                SEEN.store(if ok { 1 } else { 2 }, Ordering::SeqCst);
            }
        }
        thread_local!(static LATE: Late = const { Late });
        std::thread::spawn(|| {
            // Destructors run in reverse order of registration: `Late`'s
            // after `Owner`'s, which has taken `REC` out already.
            LATE.with(|_| ());
            drop(section());
        })
        .join()
        .unwrap();
        assert_eq!(SEEN.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn read_section_marks_the_record_for_its_closure_only() {
        let idle = || REC.with(|r| r.word.load(Ordering::Relaxed));
        drop(section()); // registers the thread
        assert_eq!(idle(), 0);
        let inside = read_section(idle).unwrap();
        assert_eq!(inside & ACTIVE, ACTIVE, "active while the closure runs");
        assert_eq!(idle(), 0, "idle after it");
        let unwound =
            std::panic::catch_unwind(|| read_section(|| -> u8 { panic!("in a section") }));
        assert!(unwound.is_err());
        assert_eq!(idle(), 0, "unwinding out of the closure ends the section");
        let outer = section();
        let w = word(&outer);
        assert_eq!(read_section(idle), Some(w), "nested: the outer word stays");
        assert_eq!(idle(), w);
        drop(outer);
        assert_eq!(idle(), 0);
    }

    #[test]
    fn quiescent_alone_is_false_inside_a_section() {
        let g = section();
        assert!(!quiescent_alone());
        drop(g);
    }
}
