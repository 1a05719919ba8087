//! Read sections without a read-modify-write, for the unlocked readers of
//! `dma_resv` (the kernel's `rcu_read_lock` / `rcu_read_unlock` and the
//! grace period behind `kfree_rcu`), on real threads.
//!
//! # Protocol
//!
//! Every thread that reads owns a *record*, one word in a process-wide
//! registry: 0 when the thread is outside any section, otherwise the
//! process epoch it saw on entering its outermost section (a nested entry
//! finds the record active and leaves it alone).
//!
//! | step | reader (hot) | reclaimer (cold, holds whatever lock orders the retirements) |
//! |---|---|---|
//! | 1 | load `E`, its record's copy of the epoch; store `E` (marked active) in its record (a plain store) | unpublish `X` (a `SeqCst` store or swap) |
//! | 2 | compiler barrier, then load the published pointers | tag `X` with [`retire_tag`] (the epoch now) |
//! | 3 | use what they point to | later: [`horizon`] increments the epoch, runs a process-wide memory barrier (`membarrier(2)`), then reads every record and refreshes its copy of the epoch |
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
//! cache line, so the fast path touches no shared line at all. The heavy barrier in [`horizon`] runs a full memory
//! barrier on every thread of the process, so each reader's announcement is
//! either visible to the scan, or was made after the barrier, in which case
//! that reader's pointer loads see the unpublish. This is the "asymmetric
//! fence" scheme of userspace RCU's `membarrier` flavour: the reader pays two
//! plain stores, the reclaimer a system call.
//!
//! Without `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (not Linux, or refused), the
//! reader announces with an atomic swap instead, and the heavy barrier is an
//! ordinary `SeqCst` fence: correct everywhere, slower for the reader.
//!
//! # Rules
//!
//! * Only real threads use this module: a controlled task (see
//!   [`super::sched`]) uses a per-object reader count instead, whose every
//!   step is a scheduling point. [`try_read_lock`] refuses a controlled
//!   task (the scheduler flags its threads with [`set_controlled`], so a
//!   real thread pays no extra test); [`available`] answers the same
//!   question without entering a section.
//! * A section must not block: reclaimers never wait for readers, they only
//!   defer freeing.
//! * Sections nest (a fence's `signaled` op may read another reservation
//!   object); the outermost entry's epoch stands for the whole nest.
//! * A thread's record is returned to the registry when the thread exits and
//!   reused by the next thread that reads.

use super::sched;
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering, compiler_fence, fence};

/// An active record word is `(epoch << EPOCH_SHIFT) | 1`.
const EPOCH_SHIFT: u32 = 1;

/// One thread's record. Cache-line aligned so readers on different CPUs do
/// not share a line.
#[repr(align(64))]
struct Record {
    /// 0 outside a section, else the announced epoch, marked active.
    word: AtomicU64,
    /// The process epoch as last copied here (by [`horizon`], or at
    /// registration); never ahead of [`EPOCH`]. What the fast path
    /// announces.
    epoch: AtomicU64,
}

/// The process epoch. Starts at 1 so that an active word is never 0.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// Records owned by live threads (a registering thread counts itself before
/// its first load of anything a reclaimer unpublishes).
static IN_USE: AtomicUsize = AtomicUsize::new(0);

struct Registry {
    all: Vec<&'static Record>,
    free: Vec<&'static Record>,
}

static REGISTRY: parking_lot::Mutex<Registry> = parking_lot::Mutex::new(Registry {
    all: Vec::new(),
    free: Vec::new(),
});

const MODE_UNKNOWN: u8 = 0;
const MODE_ASYMMETRIC: u8 = 1;
const MODE_SYMMETRIC: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);

/// [`MINE`] when the thread has no record yet; a record address with this
/// bit set means the portable (symmetric) mode.
const SLOW: usize = 1;
/// Set in [`MINE`] while the thread runs as a controlled task (see
/// [`set_controlled`]); the slow path then asks [`sched::active`].
const TASK: usize = 2;
/// Records are 64-aligned, so the fast path tests both bits at once.
const FLAGS: usize = SLOW | TASK;

thread_local! {
    /// This thread's record address, or 0 (no record yet), with [`SLOW`]
    /// set when there is no record or the mode is symmetric, and [`TASK`]
    /// set while the thread is a controlled task.
    static MINE: Cell<usize> = const { Cell::new(SLOW) };
    /// Returns the record to the registry at thread exit.
    static OWNER: Owner = const { Owner };
}

struct Owner;

impl Drop for Owner {
    fn drop(&mut self) {
        let Ok(m) = MINE.try_with(|m| m.replace(SLOW | (m.get() & TASK))) else {
            return;
        };
        let Some(r) = record_at(m) else { return };
        // A section cannot be open at thread exit; reset defensively.
        r.word.store(0, Ordering::Release);
        REGISTRY.lock().free.push(r);
        IN_USE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The record behind a [`MINE`] value.
fn record_at(m: usize) -> Option<&'static Record> {
    let p = std::ptr::with_exposed_provenance::<Record>(m & !FLAGS);
    // SAFETY: a non-null address in MINE is a leaked record, so 'static.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether the calling thread uses these sections (a real thread) rather
/// than a per-object count (a controlled task).
#[inline(always)]
pub fn available() -> bool {
    !sched::active()
}

/// Marks the calling thread as (possibly) a controlled task, or no longer
/// one; the scheduler calls it when a thread takes or drops a task. While
/// set, [`try_read_lock`] leaves its fast path and asks [`sched::active`],
/// which also knows whether the task's execution is being torn down.
pub fn set_controlled(on: bool) {
    let _ = MINE.try_with(|m| m.set(if on { m.get() | TASK } else { m.get() & !TASK }));
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

#[cfg(target_os = "linux")]
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

#[cfg(not(target_os = "linux"))]
fn membarrier_register() -> bool {
    false
}

/// A full memory barrier on every running thread of the process.
#[cfg(target_os = "linux")]
fn heavy_barrier() -> bool {
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: membarrier takes integers only.
    unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn heavy_barrier() -> bool {
    false
}

/// Takes a record from the registry for the calling thread.
#[cold]
#[inline(never)]
fn register() -> &'static Record {
    let mode = detect_mode();
    // Count ourselves before any load a reclaimer's "nobody else reads"
    // shortcut could miss (see `quiescent_alone`).
    IN_USE.fetch_add(1, Ordering::SeqCst);
    let r = {
        let mut reg = REGISTRY.lock();
        match reg.free.pop() {
            Some(r) => r,
            None => {
                let r: &'static Record = Box::leak(Box::new(Record {
                    word: AtomicU64::new(0),
                    epoch: AtomicU64::new(0),
                }));
                reg.all.push(r);
                r
            }
        }
    };
    // Arrange for the record to go back at thread exit. If this thread's
    // locals are already being destroyed, the record stays counted as in
    // use, which only makes reclaimers more careful.
    let _ = OWNER.try_with(|_| ());
    r.epoch
        .store(EPOCH.load(Ordering::Acquire), Ordering::Release);
    let slow = if mode == MODE_ASYMMETRIC { 0 } else { SLOW };
    let _ = MINE
        .try_with(|m| m.set((r as *const Record).expose_provenance() | slow | (m.get() & TASK)));
    r
}

/// An open read section; leaving it (dropping) ends it. Not `Send`: the
/// record belongs to this thread.
pub struct ReadGuard {
    /// The thread's record if this is the outermost section; [`DISCARD`]
    /// if nested, so that leaving is one unconditional store either way.
    rec: &'static Record,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// What a nested section's exit writes to: a record outside the registry,
/// never scanned.
static DISCARD: Record = Record {
    word: AtomicU64::new(0),
    epoch: AtomicU64::new(0),
};

impl ReadGuard {
    #[inline(always)]
    fn new(rec: &'static Record) -> Self {
        ReadGuard {
            rec,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether this is the outermost section of its thread.
    pub fn is_outermost(&self) -> bool {
        !std::ptr::eq(self.rec, &DISCARD)
    }
}

/// Enters a read section (`rcu_read_lock`) if the caller is a real thread,
/// and returns `None` for a controlled task, which must use its own kind of
/// section (see [`available`]). Sections end in the reverse order of entry
/// (guards are scoped): a nested section is recognised by the record being
/// active already, and only the outermost one marks and clears the record.
///
/// The fast path is a thread-local load that answers "real thread, with a
/// record, asymmetric mode" in one test, a load of the record (which only
/// feeds a predicted branch), a load of the record's epoch copy and one
/// plain store, all on the thread's own cache line; the
/// exit is one plain store of 0. Both stores are constants with respect to
/// the previous section, so consecutive sections are not chained through
/// store-to-load forwarding.
#[inline(always)]
pub fn try_read_lock() -> Option<ReadGuard> {
    let m = MINE.try_with(|m| m.get()).unwrap_or(SLOW);
    if m & FLAGS == 0 {
        // SAFETY: without flags, MINE holds a leaked record's address.
        let rec: &'static Record = unsafe { &*std::ptr::with_exposed_provenance::<Record>(m) };
        if rec.word.load(Ordering::Relaxed) == 0 {
            rec.word.store(
                (rec.epoch.load(Ordering::Acquire) << EPOCH_SHIFT) | 1,
                Ordering::Release,
            );
            // The reclaimer's membarrier supplies the store-load ordering.
            compiler_fence(Ordering::SeqCst);
            return Some(ReadGuard::new(rec));
        }
    }
    try_read_lock_slow(m)
}

/// A controlled task, the first section of a thread, a nested section, or
/// every section in symmetric mode.
#[cold]
#[inline(never)]
fn try_read_lock_slow(m: usize) -> Option<ReadGuard> {
    if m & TASK != 0 && sched::active() {
        return None;
    }
    let rec = match record_at(m) {
        Some(r) => r,
        None => register(),
    };
    if rec.word.load(Ordering::Relaxed) != 0 {
        return Some(ReadGuard::new(&DISCARD));
    }
    let word = (EPOCH.load(Ordering::Acquire) << EPOCH_SHIFT) | 1;
    if MODE.load(Ordering::Acquire) == MODE_ASYMMETRIC {
        rec.word.store(word, Ordering::Release);
        compiler_fence(Ordering::SeqCst);
    } else {
        rec.word.swap(word, Ordering::SeqCst);
    }
    Some(ReadGuard::new(rec))
}

impl Drop for ReadGuard {
    #[inline(always)]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        self.rec.word.store(0, Ordering::Release);
    }
}

/// The tag of an object unpublished before this call (`SeqCst` after the
/// unpublishing store).
#[inline]
pub fn retire_tag() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// True if the caller is outside every read section and no other live
/// thread owns a record (has ever entered a section): then nothing the
/// caller unpublished can be in use by anybody, and it may be freed at once
/// without a grace period.
///
/// Sound because a thread counts itself (`SeqCst`) before its first
/// section, and the caller unpublished (`SeqCst`) before asking.
#[inline]
pub fn quiescent_alone() -> bool {
    let Ok(m) = MINE.try_with(|m| m.get()) else {
        return false;
    };
    let mine = record_at(m);
    if mine.is_some_and(|r| r.word.load(Ordering::Relaxed) != 0) {
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
    if mode == MODE_ASYMMETRIC {
        if !heavy_barrier() {
            // membarrier failed after succeeding once: treat every reader
            // as active, the conservative answer.
            return 0;
        }
    } else {
        fence(Ordering::SeqCst);
    }
    let reg = REGISTRY.lock();
    let mut h = next;
    for r in &reg.all {
        let w = r.word.load(Ordering::Acquire);
        if w != 0 {
            h = h.min(w >> EPOCH_SHIFT);
        }
        // A concurrent grace period may overwrite this with its own, older
        // `next`: still not ahead of the epoch.
        r.epoch.store(next, Ordering::Release);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A section on a real thread.
    fn section() -> ReadGuard {
        try_read_lock().expect("a test thread is a real thread")
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
        let e = g.rec.word.load(Ordering::Relaxed) >> EPOCH_SHIFT;
        assert!(e > tag, "entered at epoch {e}, tag {tag}");
        drop(g);
    }

    #[test]
    fn nested_sections_keep_the_outer_epoch_and_restore_on_exit() {
        let outer = section();
        assert!(outer.is_outermost());
        let rec = outer.rec;
        let w1 = rec.word.load(Ordering::Relaxed);
        assert_eq!(w1 & 1, 1, "active");
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
    fn records_of_exited_threads_are_reused() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let addr = std::thread::spawn(|| {
                let g = section();
                assert!(g.is_outermost());
                g.rec as *const Record as usize
            })
            .join()
            .unwrap();
            seen.insert(addr);
        }
        // Threads of other tests may take a freed record in between, but 64
        // threads one after the other do not need 64 records.
        assert!(
            seen.len() < 64,
            "{} records for 64 sequential threads",
            seen.len()
        );
    }

    #[test]
    fn quiescent_alone_is_false_inside_a_section() {
        let g = section();
        assert!(!quiescent_alone());
        drop(g);
    }
}
