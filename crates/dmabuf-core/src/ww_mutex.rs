//! Wound/wait mutexes in their wait-die flavour (kernel
//! `kernel/locking/ww_mutex.h`, `DEFINE_WD_CLASS`), the lock inside every
//! reservation object, and the lock-all helper built on them.
//!
//! # Types
//!
//! | Rust | kernel | role |
//! |---|---|---|
//! | [`WwClass`] | `struct ww_class` (`DEFINE_WD_CLASS`) | hands out acquire stamps; one lockdep class |
//! | [`WwAcquireCtx`] | `struct ww_acquire_ctx` | one transaction taking several locks of a class |
//! | [`WwMutex`] | `struct ww_mutex` | the lock |
//! | [`LockSet`] | the Rust-for-Linux `lock_all` shape | re-runs a closure from scratch until it holds everything |
//!
//! # Wait-die
//!
//! Every context gets a stamp from its class when created; a smaller stamp
//! is older. `lock(ctx)` on a held lock:
//!
//! | caller | holder / queue | outcome |
//! |---|---|---|
//! | same context holds it | | [`WwError::AlreadyHeld`] (`-EALREADY`) |
//! | context holding no lock yet | anyone | waits |
//! | context holding locks | an older context holds it, or an older context waits ahead | [`WwError::Deadlock`] (`-EDEADLK`): unlock every lock of the context, then [`WwMutex::lock_slow`] the contended one |
//! | context holding locks | a younger context or a plain locker holds it | waits |
//! | no context | anyone | waits (plain mutex, no deadlock avoidance) |
//!
//! An older context therefore never dies: it waits for younger holders,
//! which die when they in turn contend with it. Waiters queue oldest first
//! (plain waiters behind the contexts already waiting), and only the head
//! of the queue may take a released lock.
//!
//! # Context states
//!
//! | state | entered by | allowed |
//! |---|---|---|
//! | acquiring | [`WwAcquireCtx::new`] | lock, lock_slow, unlock |
//! | contended | a [`WwError::Deadlock`] | unlock; lock_slow of the contended lock once nothing is held |
//! | done | [`WwAcquireCtx::acquire_done`] | unlock only ([`WwError::LockAfterDone`]) |
//! | finished | [`WwAcquireCtx::fini`] with nothing held | nothing ([`WwError::CtxFinished`]) |
//!
//! Misuse (fini with locks held, unlock by a thread that does not own the
//! lock, relocking from the owner, contexts of another class) returns a
//! typed error and leaves lock and context unchanged; nothing panics.
//!
//! # Lock rules
//!
//! A lock is owned by the thread that took it; only that thread may unlock
//! it. Acquisition and contention go through the shim: the uncontended path
//! is one compare-and-swap, contention queues on a shim [`Mutex`] and parks
//! through the shim, so controlled executions schedule it and cancellation
//! tokens wake it.
//!
//! # The lock under the controlled scheduler
//!
//! For a controlled task the lock word is a mutex of the model, as a shim
//! [`Mutex`] is: the word's own operations are not reported one by one.
//!
//! | operation | scheduling points | what the exploration sees |
//! |---|---|---|
//! | lock, by a caller that can only wait (no context holding locks, no cancellation) | one per attempt | the model's acquisition (a write of the lock, ordered after its last release, never a race with it); a lock found taken blocks until the next release and is no event |
//! | lock by a context holding locks, or cancellable | one per attempt | an attempt that reads the releases (it may die or be cancelled on what it finds), then the wait queue as on real threads |
//! | unlock | none (a wake of the queue, if any, takes its lock) | the model's release, which wakes the blocked callers |
//! | `trylock`, a queued waiter taking it, the waiters bit | one | a write of the lock that reads its releases |
//! | `is_locked`, `locking_ctx`, a queued waiter's look at the holder | one | a read of the lock and of its releases |
//! | the holder's token (`owner == me`) | none | nothing: only the caller's own lock and unlock change the answer |
//!
//! Without this, a critical section cost seven scheduling points (word
//! load, compare-and-swap and owner store; word load, owner load, owner
//! store and release), and a second locker arriving between another's load
//! and its compare-and-swap, or while the lock was held, made executions of
//! its own (the queue, the park, the wake) that end as the same order of
//! the two critical sections. Callers that only wait are woken by any
//! release and race for the lock, where the queue would hand it to its
//! oldest waiter: the model explores every order the scheduler can give
//! (a deviation listed in DESIGN.md).

use crate::dma_fence::{CancelToken, MAX_SCHEDULE_TIMEOUT, Waiter};
use crate::errno::{self, AsErrno, Errno};
use crate::lockdep::{self, ClassId, Site};
use crate::sync::atomic::global::{AtomicU32 as GlobalU32, AtomicU64 as GlobalU64};
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use crate::sync::sched;
use crate::sync::{Arc, Mutex};
use crate::trace_event;
use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
#[cfg(not(loom))]
use std::sync::atomic::AtomicU64 as StdU64;

/// Errors of ww-mutex calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WwError {
    /// Wait-die: the caller's context holds locks and contends with an older
    /// context; it must unlock everything and `lock_slow` this lock.
    #[error("ctx {stamp} must back off: lock contended with older ctx {older}")]
    Deadlock {
        /// Stamp of the caller's context.
        stamp: u64,
        /// Stamp of the older context it yields to.
        older: u64,
    },
    /// The caller's context already holds this lock.
    #[error("ctx {stamp} already holds this lock")]
    AlreadyHeld {
        /// Stamp of the caller's context.
        stamp: u64,
    },
    /// The calling thread already holds this lock outside this context (the
    /// kernel would deadlock on itself).
    #[error("lock already held by the calling thread (holder ctx {holder:?})")]
    Recursive {
        /// Stamp of the context it is held under, if any.
        holder: Option<u64>,
    },
    /// An interruptible wait was cancelled.
    #[error("lock wait interrupted")]
    Interrupted,
    /// Locking with a context after `ww_acquire_done`.
    #[error("ctx {stamp} locks after acquire_done")]
    LockAfterDone {
        /// Stamp of the context.
        stamp: u64,
    },
    /// Using a context after `ww_acquire_fini`.
    #[error("ctx {stamp} used after fini")]
    CtxFinished {
        /// Stamp of the context.
        stamp: u64,
    },
    /// `ww_acquire_fini` while the context still holds locks.
    #[error("ctx {stamp} finished with {held} locks still held")]
    FiniWithLocksHeld {
        /// Stamp of the context.
        stamp: u64,
        /// How many locks it holds.
        held: u32,
    },
    /// A context that got `Deadlock` tried to lock before releasing what it
    /// holds.
    #[error("ctx {stamp} got -EDEADLK and must release its {held} locks first")]
    BackoffRequired {
        /// Stamp of the context.
        stamp: u64,
        /// How many locks it still holds.
        held: u32,
    },
    /// `lock_slow` while the context still holds locks.
    #[error("lock_slow with ctx {stamp} still holding {held} locks")]
    SlowWithLocksHeld {
        /// Stamp of the context.
        stamp: u64,
        /// How many locks it holds.
        held: u32,
    },
    /// A context of one class used on a lock of another.
    #[error("ctx of class {ctx_class} used on a lock of class {lock_class}")]
    ClassMismatch {
        /// Class of the lock.
        lock_class: &'static str,
        /// Class of the context.
        ctx_class: &'static str,
    },
    /// Unlock by a thread that does not hold the lock.
    #[error("unlock by thread {caller}, but thread {owner} holds the lock")]
    NotOwner {
        /// Token of the owning thread.
        owner: u64,
        /// Token of the caller.
        caller: u64,
    },
    /// Unlock of a lock nobody holds.
    #[error("unlock of an unlocked ww_mutex")]
    NotLocked,
}

impl AsErrno for WwError {
    fn errno(&self) -> Errno {
        match self {
            WwError::Deadlock { .. } => errno::EDEADLK,
            WwError::AlreadyHeld { .. } => errno::EALREADY,
            WwError::Recursive { .. } => errno::EDEADLK,
            WwError::Interrupted => errno::EINTR,
            WwError::LockAfterDone { .. } => errno::EINVAL,
            WwError::CtxFinished { .. } => errno::EINVAL,
            WwError::FiniWithLocksHeld { .. } => errno::EBUSY,
            WwError::BackoffRequired { .. } => errno::EDEADLK,
            WwError::SlowWithLocksHeld { .. } => errno::EINVAL,
            WwError::ClassMismatch { .. } => errno::EINVAL,
            WwError::NotOwner { .. } => errno::EPERM,
            WwError::NotLocked => errno::EINVAL,
        }
    }
}

/// A calling thread's identity for lock ownership (never 0).
#[inline]
pub(crate) fn thread_token() -> u64 {
    crate::shim_thread_local! {
        static TOKEN: Cell<u64> = const { Cell::new(0) };
    }
    #[cold]
    fn fresh() -> u64 {
        static NEXT: GlobalU64 = GlobalU64::new(1);
        NEXT.fetch_add(1, crate::sync::atomic::Ordering::Relaxed)
    }
    TOKEN
        .try_with(|t| match t.get() {
            0 => {
                t.set(fresh());
                t.get()
            }
            v => v,
        })
        .unwrap_or_else(|_| fresh())
}

/// `struct ww_class` defined with `DEFINE_WD_CLASS`: a family of locks
/// taken together under acquire contexts, with its stamp counter.
pub struct WwClass {
    name: &'static str,
    next_stamp: GlobalU64,
    lockdep: Option<ClassId>,
    lockdep_cache: GlobalU32,
}

impl fmt::Debug for WwClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WwClass({})", self.name)
    }
}

/// `reservation_ww_class`: the class of every [`DmaResv`](crate::dma_resv::DmaResv).
pub static RESERVATION_WW_CLASS: WwClass = WwClass {
    name: "reservation_ww_class",
    next_stamp: GlobalU64::new(1),
    lockdep: Some(ClassId::DMA_RESV),
    lockdep_cache: GlobalU32::new(0),
};

impl WwClass {
    /// A new wait-die class (usable in a `static`); its lockdep class is
    /// registered under `name` when first needed.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            next_stamp: GlobalU64::new(1),
            lockdep: None,
            lockdep_cache: GlobalU32::new(0),
        }
    }

    /// The class name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn next_stamp(&self) -> u64 {
        #[cfg(not(loom))]
        if let Some(s) = crate::sync::sched::local_counter(self.name, 1) {
            return s.wrapping_add(1);
        }
        self.next_stamp
            .fetch_add(1, crate::sync::atomic::Ordering::Relaxed)
    }

    fn lockdep_class(&self) -> ClassId {
        if let Some(c) = self.lockdep {
            return c;
        }
        let cached = self
            .lockdep_cache
            .load(crate::sync::atomic::Ordering::Relaxed);
        if cached != 0 {
            return ClassId::from_raw(cached - 1);
        }
        let c = lockdep::register_class(self.name);
        self.lockdep_cache
            .store(c.raw() + 1, crate::sync::atomic::Ordering::Relaxed);
        c
    }
}

struct CtxShared {
    stamp: u64,
    acquired: AtomicU32,
}

/// `struct ww_acquire_ctx`: one transaction over locks of one class. Bound
/// to the thread that created it.
pub struct WwAcquireCtx {
    class: &'static WwClass,
    shared: Arc<CtxShared>,
    done: bool,
    finished: bool,
    contending: Option<usize>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for WwAcquireCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WwAcquireCtx")
            .field("class", &self.class.name)
            .field("stamp", &self.shared.stamp)
            .field("acquired", &self.acquired())
            .field("done", &self.done)
            .field("finished", &self.finished)
            .finish()
    }
}

impl WwAcquireCtx {
    /// `ww_acquire_init`: a new context, younger than every earlier one of
    /// its class.
    pub fn new(class: &'static WwClass) -> Self {
        let stamp = class.next_stamp();
        trace_event!("ww_acquire_init", "class={} stamp={}", class.name, stamp);
        Self {
            class,
            shared: Arc::new(CtxShared {
                stamp,
                acquired: AtomicU32::new(0),
            }),
            done: false,
            finished: false,
            contending: None,
            _not_send: PhantomData,
        }
    }

    /// The context's stamp (smaller is older); [`WwMutex::locking_ctx`]
    /// returns the holder's.
    pub fn stamp(&self) -> u64 {
        self.shared.stamp
    }

    /// How many locks the context holds.
    pub fn acquired(&self) -> u32 {
        self.shared.acquired.load(Ordering::Relaxed)
    }

    /// The class the context belongs to.
    pub fn class(&self) -> &'static WwClass {
        self.class
    }

    /// Whether the context got `Deadlock` and has not yet taken the
    /// contended lock with `lock_slow`.
    pub fn is_contended(&self) -> bool {
        self.contending.is_some()
    }

    /// `ww_acquire_done`: no more locks will be taken with this context.
    pub fn acquire_done(&mut self) -> Result<(), WwError> {
        if self.finished {
            return Err(WwError::CtxFinished {
                stamp: self.stamp(),
            });
        }
        self.done = true;
        Ok(())
    }

    /// `ww_acquire_fini`: ends the context. Refused (and the context left as
    /// it was) while it still holds locks.
    pub fn fini(&mut self) -> Result<(), WwError> {
        if self.finished {
            return Err(WwError::CtxFinished {
                stamp: self.stamp(),
            });
        }
        let held = self.acquired();
        if held != 0 {
            return Err(WwError::FiniWithLocksHeld {
                stamp: self.stamp(),
                held,
            });
        }
        self.finished = true;
        Ok(())
    }

    /// Whether [`fini`](Self::fini) succeeded.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether [`acquire_done`](Self::acquire_done) was called.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// `word`: bit 0 locked, bit 1 waiters queued, the bits above the holder's
/// context stamp (0: free or held without a context). Keeping the stamp in
/// the same word as the lock bit means a waiter judging the holder and the
/// holder taking the lock can never disagree.
const LOCKED: u64 = 1;
const WAITERS: u64 = 2;
const STAMP_SHIFT: u32 = 2;

fn stamp_of(word: u64) -> Option<u64> {
    match word >> STAMP_SHIFT {
        0 => None,
        s => Some(s),
    }
}

/// The error of a lock call by the thread that holds the lock already
/// (`holder`: the stamp of the context it holds it with).
fn relock_error(ctx: Option<&WwAcquireCtx>, holder: Option<u64>) -> WwError {
    match ctx {
        Some(c) if holder == Some(c.stamp()) => WwError::AlreadyHeld { stamp: c.stamp() },
        _ => WwError::Recursive { holder },
    }
}

/// Whether the caller is a task of a controlled execution, for which the
/// lock word is a mutex of the model (see "The lock under the controlled
/// scheduler" in the module docs).
#[cfg(not(loom))]
#[inline(always)]
fn controlled() -> bool {
    sched::active()
}

struct WaitSlot {
    generation: AtomicU64,
    waiter: Arc<Waiter>,
}

struct QEntry {
    id: u64,
    stamp: Option<u64>,
    slot: Arc<WaitSlot>,
}

#[derive(Default)]
struct WaitQueue {
    next_id: u64,
    entries: Vec<QEntry>,
}

impl WaitQueue {
    fn wake_all(&self) {
        for e in &self.entries {
            e.slot.generation.fetch_add(1, Ordering::Release);
            e.slot.waiter.wake();
        }
    }
}

/// `struct ww_mutex` of a wait-die class. Carries no data: the object it
/// protects (a reservation object's fence list, a driver's state) lives
/// beside it.
pub struct WwMutex {
    class: &'static WwClass,
    word: AtomicU64,
    /// Thread token of the holder; 0 when free.
    owner: AtomicU64,
    /// The holder's context, touched only by the holder.
    holder_ctx: UnsafeCell<Option<Arc<CtxShared>>>,
    queue: Mutex<WaitQueue>,
}

// SAFETY: `holder_ctx` is read and written only by the thread that holds the
// lock (after winning `word`, before releasing it), so the lock itself
// serialises every access; everything else is atomics or a shim mutex.
unsafe impl Sync for WwMutex {}
// SAFETY: as above; `Arc<CtxShared>` is Send.
unsafe impl Send for WwMutex {}

impl fmt::Debug for WwMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WwMutex")
            .field("class", &self.class.name)
            .field("locked", &self.is_locked())
            .field("ctx", &self.locking_ctx())
            .finish()
    }
}

/// Where [`WwMutex::lock_fast`] stopped.
#[derive(Clone, Copy)]
pub(crate) enum FastLock {
    /// The lock is ours.
    Taken,
    /// Lockdep is on: nothing done yet.
    Skipped,
    /// The loaded word (the one shim operation made) shows the lock held.
    Held(u64),
    /// The word was free but the compare-and-swap lost.
    Contended,
}

/// How a lock call may block.
#[derive(Clone, Copy)]
pub(crate) struct LockMode<'c> {
    pub(crate) slow: bool,
    pub(crate) cancel: Option<&'c CancelToken>,
}

impl WwMutex {
    /// `ww_mutex_init`: an unlocked mutex of `class`.
    pub fn new(class: &'static WwClass) -> Self {
        Self {
            class,
            word: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            holder_ctx: UnsafeCell::new(None),
            queue: Mutex::new(WaitQueue::default()),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// The lock's class.
    pub fn class(&self) -> &'static WwClass {
        self.class
    }

    /// `ww_mutex_lock`: with a context, wait-die; without one, a plain
    /// mutex.
    #[track_caller]
    pub fn lock(&self, ctx: Option<&mut WwAcquireCtx>) -> Result<(), WwError> {
        self.lock_at(
            ctx,
            LockMode {
                slow: false,
                cancel: None,
            },
            Location::caller(),
        )
    }

    /// `ww_mutex_lock_interruptible`: as [`lock`](Self::lock), but a
    /// cancelled token ends a wait with [`WwError::Interrupted`].
    #[track_caller]
    pub fn lock_interruptible(
        &self,
        ctx: Option<&mut WwAcquireCtx>,
        cancel: &CancelToken,
    ) -> Result<(), WwError> {
        self.lock_at(
            ctx,
            LockMode {
                slow: false,
                cancel: Some(cancel),
            },
            Location::caller(),
        )
    }

    /// `ww_mutex_lock_slow`: after backing off (the context holds nothing),
    /// sleeps until the contended lock is free. Never returns `Deadlock`.
    #[track_caller]
    pub fn lock_slow(&self, ctx: &mut WwAcquireCtx) -> Result<(), WwError> {
        self.lock_at(
            Some(ctx),
            LockMode {
                slow: true,
                cancel: None,
            },
            Location::caller(),
        )
    }

    /// `ww_mutex_lock_slow_interruptible`.
    #[track_caller]
    pub fn lock_slow_interruptible(
        &self,
        ctx: &mut WwAcquireCtx,
        cancel: &CancelToken,
    ) -> Result<(), WwError> {
        self.lock_at(
            Some(ctx),
            LockMode {
                slow: true,
                cancel: Some(cancel),
            },
            Location::caller(),
        )
    }

    #[inline]
    pub(crate) fn lock_at(
        &self,
        ctx: Option<&mut WwAcquireCtx>,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        self.lock_as(thread_token(), ctx, mode, site)
    }

    /// [`lock_at`](Self::lock_at) for a caller that knows its thread token.
    #[inline]
    pub(crate) fn lock_as(
        &self,
        me: u64,
        ctx: Option<&mut WwAcquireCtx>,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        if ctx.is_none() {
            return match self.lock_fast(me) {
                FastLock::Taken => Ok(()),
                step => self.lock_resume(me, step, mode, site),
            };
        }
        self.lock_general(me, None, ctx, mode, site)
    }

    /// The uncontended lock without a context: with lockdep off, a free
    /// lock is taken here with no further bookkeeping. Otherwise the caller
    /// goes on with [`lock_resume`](Self::lock_resume), which continues
    /// where this stopped, so both paths make the same shim operations in
    /// the same order (word load, compare-and-swap, owner store) and
    /// controlled schedules are unchanged.
    #[inline(always)]
    pub(crate) fn lock_fast(&self, me: u64) -> FastLock {
        #[cfg(not(loom))]
        if controlled() {
            return FastLock::Skipped;
        }
        if lockdep::mode() != lockdep::Mode::Off {
            return FastLock::Skipped;
        }
        let word = self.word.load(Ordering::Relaxed);
        if word & LOCKED != 0 {
            return FastLock::Held(word);
        }
        if self
            .word
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return FastLock::Contended;
        }
        self.owner.store(me, Ordering::Relaxed);
        FastLock::Taken
    }

    /// The context-free lock after [`lock_fast`](Self::lock_fast) did not
    /// take it.
    #[inline(never)]
    pub(crate) fn lock_resume(
        &self,
        me: u64,
        step: FastLock,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        match step {
            FastLock::Taken => Ok(()),
            FastLock::Contended => self.lock_contended(me, None, None, false, mode.cancel),
            FastLock::Held(word) => self.lock_general(me, Some(word), None, mode, site),
            FastLock::Skipped => self.lock_general(me, None, None, mode, site),
        }
    }

    /// The full lock path; `word` is the lock word if the caller already
    /// loaded it (and so made that scheduling point).
    #[inline(never)]
    fn lock_general(
        &self,
        me: u64,
        word: Option<u64>,
        ctx: Option<&mut WwAcquireCtx>,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        #[cfg(not(loom))]
        if controlled() {
            return self.lock_controlled(me, ctx, mode, site);
        }
        if let Some(c) = ctx.as_deref() {
            self.check_ctx(c, mode.slow)?;
        }
        let word = word.unwrap_or_else(|| self.word.load(Ordering::Relaxed));
        if word & LOCKED != 0 && self.owner.load(Ordering::Relaxed) == me {
            return Err(relock_error(ctx.as_deref(), self.locking_ctx()));
        }
        let stamp = ctx.as_deref().map(WwAcquireCtx::stamp);
        let has_locks = ctx.as_deref().is_some_and(|c| c.acquired() > 0);
        let tracked = self.lockdep_acquire(site, stamp);
        let locked = LOCKED | stamp.unwrap_or(0) << STAMP_SHIFT;
        let r = if self
            .word
            .compare_exchange(0, locked, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.set_holder(me, ctx.as_deref());
            Ok(())
        } else {
            self.lock_contended(me, ctx.as_deref(), stamp, has_locks, mode.cancel)
        };
        self.end_lock(r, ctx, tracked)
    }

    /// Tells lockdep about the acquisition if it is on; returns whether.
    fn lockdep_acquire(&self, site: &'static Location<'static>, stamp: Option<u64>) -> bool {
        let tracked = lockdep::mode() != lockdep::Mode::Off;
        if tracked {
            lockdep::acquire(
                self.class.lockdep_class(),
                self.addr(),
                Site::Loc(site),
                stamp,
                true,
                false,
            );
        }
        tracked
    }

    /// The end of a lock call: the context's contention state, and lockdep
    /// told of a failed acquisition.
    fn end_lock(
        &self,
        r: Result<(), WwError>,
        ctx: Option<&mut WwAcquireCtx>,
        tracked: bool,
    ) -> Result<(), WwError> {
        match r {
            Ok(()) => {
                if let Some(c) = ctx {
                    c.contending = None;
                }
                Ok(())
            }
            Err(e) => {
                if tracked {
                    lockdep::release(self.class.lockdep_class(), self.addr());
                }
                if let (WwError::Deadlock { .. }, Some(c)) = (&e, ctx) {
                    c.contending = Some(self.addr());
                }
                Err(e)
            }
        }
    }

    fn check_ctx(&self, c: &WwAcquireCtx, slow: bool) -> Result<(), WwError> {
        let stamp = c.stamp();
        if c.finished {
            return Err(WwError::CtxFinished { stamp });
        }
        if !std::ptr::eq(c.class, self.class) {
            return Err(WwError::ClassMismatch {
                lock_class: self.class.name,
                ctx_class: c.class.name,
            });
        }
        if c.done {
            return Err(WwError::LockAfterDone { stamp });
        }
        let held = c.acquired();
        if slow && held > 0 {
            return Err(WwError::SlowWithLocksHeld { stamp, held });
        }
        if c.contending.is_some() && held > 0 {
            return Err(WwError::BackoffRequired { stamp, held });
        }
        Ok(())
    }

    /// The address the model knows the lock word by.
    #[cfg(not(loom))]
    #[inline(always)]
    fn word_addr(&self) -> usize {
        &self.word as *const AtomicU64 as usize
    }

    /// The lock word's operations for the controlled scheduler: the caller
    /// reported them as the model's lock operations.
    #[cfg(not(loom))]
    #[inline(always)]
    fn raw_word(&self) -> &StdU64 {
        self.word.unreported()
    }

    /// [`lock_general`](Self::lock_general) under the controlled
    /// scheduler: the lock word is a mutex of the model. An attempt is one
    /// scheduling point (the model's acquisition) followed by the word's
    /// compare-and-swap and the owner's store in the same segment. A caller
    /// that can only wait (no context holding locks, no cancellation)
    /// blocks on the model's mutex when the lock is taken, which is no
    /// event, and tries again after the next release; the others look at
    /// the holder (wait-die, a cancelled token) and queue as on real
    /// threads.
    #[cfg(not(loom))]
    #[cold]
    fn lock_controlled(
        &self,
        me: u64,
        ctx: Option<&mut WwAcquireCtx>,
        mode: LockMode<'_>,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        if let Some(c) = ctx.as_deref() {
            self.check_ctx(c, mode.slow)?;
        }
        // `owner == me` changes only through the caller's own lock and
        // unlock: no look at the lock.
        if self.owner.load_direct(Ordering::Relaxed) == me {
            let holder = stamp_of(self.raw_word().load(Ordering::Relaxed));
            return Err(relock_error(ctx.as_deref(), holder));
        }
        let stamp = ctx.as_deref().map(WwAcquireCtx::stamp);
        let has_locks = ctx.as_deref().is_some_and(|c| c.acquired() > 0);
        let only_waits = mode.cancel.is_none() && !(stamp.is_some() && has_locks);
        let tracked = self.lockdep_acquire(site, stamp);
        let locked = LOCKED | stamp.unwrap_or(0) << STAMP_SHIFT;
        let w = self.word_addr();
        let r = loop {
            if only_waits {
                sched::acquire_point(w);
            } else {
                sched::try_acquire_point(w);
            }
            let one = sched::same_event();
            if self
                .raw_word()
                .compare_exchange(0, locked, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                self.set_holder(me, ctx.as_deref());
                break Ok(());
            }
            drop(one);
            if only_waits {
                sched::block_on(w, sched::WaitKind::Mutex);
                continue;
            }
            break self.lock_contended(me, ctx.as_deref(), stamp, has_locks, mode.cancel);
        };
        self.end_lock(r, ctx, tracked)
    }

    /// The lock word in the contended path: a look or a change, reported
    /// to the controlled scheduler as the model's (see
    /// [`lock_controlled`](Self::lock_controlled)); a plain shim
    /// operation on real threads.
    #[inline]
    fn word_load(&self) -> u64 {
        #[cfg(not(loom))]
        if controlled() {
            sched::observe_lock_point(self.word_addr());
            return self.raw_word().load(Ordering::Acquire);
        }
        self.word.load(Ordering::Acquire)
    }

    /// [`word_load`](Self::word_load) for a change: `f` gets the current
    /// word and returns the new one, or `None` to leave it. Returns the old
    /// word and whether it changed.
    #[inline]
    fn word_update(&self, mut f: impl FnMut(u64) -> Option<u64>) -> (u64, bool) {
        #[cfg(not(loom))]
        if controlled() {
            sched::try_acquire_point(self.word_addr());
            let w = self.raw_word();
            return match w.fetch_update(Ordering::AcqRel, Ordering::Acquire, &mut f) {
                Ok(old) => (old, true),
                Err(old) => (old, false),
            };
        }
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let Some(new) = f(cur) else {
                return (cur, false);
            };
            match self
                .word
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (cur, true),
                Err(now) => cur = now,
            }
        }
    }

    /// Stores the holder's thread token. Never reported to the controlled
    /// scheduler: `owner == me` changes only through the caller's own lock
    /// and unlock, so no other task's answer depends on the order.
    #[inline(always)]
    fn owner_store(&self, v: u64) {
        #[cfg(not(loom))]
        self.owner.unreported().store(v, Ordering::Relaxed);
        #[cfg(loom)]
        self.owner.store(v, Ordering::Relaxed);
    }

    #[inline]
    fn set_holder(&self, me: u64, ctx: Option<&WwAcquireCtx>) {
        self.owner_store(me);
        if let Some(c) = ctx {
            c.shared.acquired.fetch_add(1, Ordering::Relaxed);
            // SAFETY: we hold the lock; only the holder touches holder_ctx.
            unsafe { *self.holder_ctx.get() = Some(c.shared.clone()) };
        }
    }

    #[cold]
    fn lock_contended(
        &self,
        me: u64,
        ctx: Option<&WwAcquireCtx>,
        stamp: Option<u64>,
        has_locks: bool,
        cancel: Option<&CancelToken>,
    ) -> Result<(), WwError> {
        let slot = Arc::new(WaitSlot {
            generation: AtomicU64::new(0),
            waiter: Arc::new(Waiter::new()),
        });
        let _cancel_reg = cancel.map(|c| c.register(slot.waiter.clone()));
        let mut q = self.queue.lock();
        let id = q.next_id;
        q.next_id += 1;
        // Oldest context first; plain waiters stay behind the contexts that
        // were already queued (kernel __ww_mutex_add_waiter).
        let pos = match stamp {
            Some(s) => q
                .entries
                .iter()
                .position(|e| e.stamp.is_some_and(|o| o > s))
                .unwrap_or(q.entries.len()),
            None => q.entries.len(),
        };
        q.entries.insert(
            pos,
            QEntry {
                id,
                stamp,
                slot: slot.clone(),
            },
        );
        self.word_update(|w| Some(w | WAITERS));
        if stamp.is_some() {
            // Younger waiters holding locks now have an older one ahead and
            // must die (kernel __ww_mutex_die).
            q.wake_all();
        }
        trace_event!(
            "ww_mutex_contended",
            "class={} lock={} ctx={}",
            self.class.name,
            crate::trace::object("ww_mutex", self.addr()),
            stamp.map_or_else(|| "-".to_owned(), |s| s.to_string())
        );
        loop {
            let pos = q.entries.iter().position(|e| e.id == id).unwrap_or(0);
            if pos == 0 {
                let rest = if q.entries.len() > 1 { WAITERS } else { 0 };
                let new = LOCKED | rest | stamp.unwrap_or(0) << STAMP_SHIFT;
                let (_, took) = self.word_update(|cur| (cur & LOCKED == 0).then_some(new));
                if took {
                    q.entries.remove(0);
                    self.set_holder(me, ctx);
                    return Ok(());
                }
            }
            if let Some(my) = stamp
                && has_locks
            {
                let word = self.word_load();
                let holder = if word & LOCKED != 0 {
                    stamp_of(word)
                } else {
                    None
                };
                let older = if let Some(h) = holder.filter(|&h| h < my) {
                    Some(h)
                } else {
                    q.entries[..pos].iter().find_map(|e| e.stamp)
                };
                if let Some(older) = older {
                    self.leave_queue(&mut q, id);
                    trace_event!(
                        "ww_mutex_die",
                        "class={} lock={} ctx={} older={}",
                        self.class.name,
                        crate::trace::object("ww_mutex", self.addr()),
                        my,
                        older
                    );
                    return Err(WwError::Deadlock { stamp: my, older });
                }
            }
            if cancel.is_some_and(CancelToken::is_cancelled) {
                self.leave_queue(&mut q, id);
                return Err(WwError::Interrupted);
            }
            let seen = slot.generation.load(Ordering::Acquire);
            drop(q);
            let _ = slot.waiter.wait_until(
                || slot.generation.load(Ordering::Acquire) != seen,
                cancel,
                MAX_SCHEDULE_TIMEOUT,
            );
            q = self.queue.lock();
        }
    }

    fn leave_queue(&self, q: &mut WaitQueue, id: u64) {
        q.entries.retain(|e| e.id != id);
        if q.entries.is_empty() {
            self.word_update(|w| Some(w & !WAITERS));
            // Callers that only wait block on the model's mutex while the
            // waiters bit is set: they look again.
            #[cfg(not(loom))]
            if controlled() {
                sched::release(self.word_addr());
            }
        } else {
            // The head may have changed while the lock is free.
            q.wake_all();
        }
    }

    /// `ww_mutex_trylock(lock, NULL)`: takes the lock if it is free, without
    /// a context and without waiting. False if the caller already holds it.
    #[track_caller]
    pub fn trylock(&self) -> bool {
        let me = thread_token();
        let (_, took) =
            self.word_update(|cur| (cur & LOCKED == 0).then_some((cur & WAITERS) | LOCKED));
        if !took {
            return false;
        }
        self.set_holder(me, None);
        if lockdep::mode() != lockdep::Mode::Off {
            lockdep::acquire(
                self.class.lockdep_class(),
                self.addr(),
                Site::Loc(Location::caller()),
                None,
                true,
                true,
            );
        }
        true
    }

    /// `ww_mutex_unlock`: only the owning thread may unlock.
    pub fn unlock(&self) -> Result<(), WwError> {
        self.unlock_as(thread_token())
    }

    /// [`unlock`](Self::unlock) for a caller that already knows its
    /// thread token.
    #[inline]
    pub(crate) fn unlock_as(&self, me: u64) -> Result<(), WwError> {
        self.unlock_with(me, || ())
    }

    /// Unlocks after running `last` while still holding the lock (the
    /// reservation object resets its slots there), returning what `last`
    /// returned.
    #[inline]
    pub(crate) fn unlock_with<R>(&self, me: u64, last: impl FnOnce() -> R) -> Result<R, WwError> {
        #[cfg(not(loom))]
        if controlled() {
            return self.unlock_controlled(me, last);
        }
        if self.word.load(Ordering::Relaxed) & LOCKED == 0 {
            return Err(WwError::NotLocked);
        }
        let owner = self.owner.load(Ordering::Relaxed);
        if owner != me {
            return Err(WwError::NotOwner { owner, caller: me });
        }
        let r = last();
        self.leave_holder();
        // Clears the lock bit and the stamp, keeps the waiters bit.
        let prev = self.word.fetch_and(WAITERS, Ordering::AcqRel);
        if prev & WAITERS != 0 {
            self.wake_waiters();
        }
        Ok(r)
    }

    /// [`unlock_with`](Self::unlock_with) under the controlled scheduler:
    /// the model's release (no scheduling point: the end of the critical
    /// section's last segment, as a shim mutex's unlock), which wakes the
    /// callers blocked on the model's mutex.
    #[cfg(not(loom))]
    #[cold]
    fn unlock_controlled<R>(&self, me: u64, last: impl FnOnce() -> R) -> Result<R, WwError> {
        let owner = self.owner.load_direct(Ordering::Relaxed);
        if owner != me {
            // Misuse: what it finds depends on the others.
            sched::observe_lock_point(self.word_addr());
            return Err(if self.raw_word().load(Ordering::Acquire) & LOCKED == 0 {
                WwError::NotLocked
            } else {
                WwError::NotOwner { owner, caller: me }
            });
        }
        let r = last();
        self.leave_holder();
        let prev = self.raw_word().fetch_and(WAITERS, Ordering::AcqRel);
        sched::release(self.word_addr());
        if prev & WAITERS != 0 {
            self.wake_waiters();
        }
        Ok(r)
    }

    /// What the holder undoes before it clears the lock bit: its
    /// context's count, its token, lockdep's record. Holder only.
    #[inline]
    fn leave_holder(&self) {
        // SAFETY: called by the holder before it releases the lock.
        if unsafe { (*self.holder_ctx.get()).is_some() } {
            self.drop_holder_ctx();
        }
        self.owner_store(0);
        if lockdep::mode() != lockdep::Mode::Off {
            self.lockdep_release();
        }
    }

    #[cold]
    fn wake_waiters(&self) {
        self.queue.lock().wake_all();
    }

    /// Hands the holder's context its count back. Holder only.
    #[cold]
    fn drop_holder_ctx(&self) {
        // SAFETY: called by the holder before it releases the lock.
        let ctx = unsafe { (*self.holder_ctx.get()).take() };
        if let Some(c) = &ctx {
            c.acquired.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[cold]
    fn lockdep_release(&self) {
        lockdep::release(self.class.lockdep_class(), self.addr());
    }

    /// `ww_mutex_is_locked`.
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.word_load() & LOCKED != 0
    }

    /// Whether the calling thread holds the lock.
    #[inline]
    pub fn is_held_by_current_thread(&self) -> bool {
        self.is_held_by(thread_token())
    }

    #[inline]
    pub(crate) fn is_held_by(&self, me: u64) -> bool {
        // `owner == me` becomes true and false only through the caller's
        // own lock and unlock (the owner is stored while the lock bit is
        // set, and cleared before it is released), so no other task can
        // change the answer: not a scheduling point, and not ordered
        // against other tasks' locks and unlocks by the search.
        #[cfg(not(loom))]
        let owner = self.owner.load_direct(Ordering::Relaxed);
        #[cfg(loom)]
        let owner = self.owner.load(Ordering::Relaxed);
        owner == me
    }

    /// `dma_resv_locking_ctx`: the stamp of the context holding the lock,
    /// `None` when free or held without a context.
    pub fn locking_ctx(&self) -> Option<u64> {
        let w = self.word_load();
        if w & LOCKED == 0 { None } else { stamp_of(w) }
    }
}

/// Something lockable with a ww acquire context: a [`WwMutex`] or an object
/// built around one (a reservation object), so that [`LockSet`] can lock
/// either.
pub trait WwLockable {
    /// Takes the lock with `ctx` (`slow`: as `lock_slow`); `site` names
    /// the caller for lockdep.
    #[doc(hidden)]
    fn ww_lock(
        &self,
        ctx: &mut WwAcquireCtx,
        slow: bool,
        site: &'static Location<'static>,
    ) -> Result<(), WwError>;
    /// Releases the lock.
    fn ww_unlock(&self) -> Result<(), WwError>;
}

impl WwLockable for WwMutex {
    fn ww_lock(
        &self,
        ctx: &mut WwAcquireCtx,
        slow: bool,
        site: &'static Location<'static>,
    ) -> Result<(), WwError> {
        self.lock_at(Some(ctx), LockMode { slow, cancel: None }, site)
    }
    fn ww_unlock(&self) -> Result<(), WwError> {
        self.unlock()
    }
}

/// The lock-all helper in the shape the Rust-for-Linux review settled on:
/// [`lock_all`](Self::lock_all) runs a closure that takes locks through the
/// set; when a lock dies (`-EDEADLK`) the closure's error is dropped, every
/// lock is released, the contended lock is taken with `lock_slow`, and the
/// closure runs again from the start (locks already in the set are
/// skipped). Dropping the set releases everything and ends the context.
pub struct LockSet<'a, L: WwLockable + ?Sized> {
    ctx: WwAcquireCtx,
    held: Vec<&'a L>,
    contended: Option<&'a L>,
}

impl<L: WwLockable + ?Sized> fmt::Debug for LockSet<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockSet")
            .field("ctx", &self.ctx)
            .field("held", &self.held.len())
            .finish()
    }
}

impl<'a, L: WwLockable + ?Sized> LockSet<'a, L> {
    /// An empty set with a fresh acquire context of `class`.
    pub fn new(class: &'static WwClass) -> Self {
        Self {
            ctx: WwAcquireCtx::new(class),
            held: Vec::new(),
            contended: None,
        }
    }

    /// The set's acquire context.
    pub fn ctx(&self) -> &WwAcquireCtx {
        &self.ctx
    }

    /// Locks `obj` into the set (a no-op if it is already in). On
    /// `Deadlock` the set remembers the contended lock; return the error
    /// from the closure and [`lock_all`](Self::lock_all) backs off.
    #[track_caller]
    pub fn lock(&mut self, obj: &'a L) -> Result<(), WwError> {
        if self.contains(obj) {
            return Ok(());
        }
        match obj.ww_lock(&mut self.ctx, false, Location::caller()) {
            Ok(()) | Err(WwError::AlreadyHeld { .. }) => {
                self.held.push(obj);
                Ok(())
            }
            Err(e) => {
                if matches!(e, WwError::Deadlock { .. }) {
                    self.contended = Some(obj);
                }
                Err(e)
            }
        }
    }

    fn contains(&self, obj: &L) -> bool {
        self.held
            .iter()
            .any(|h| std::ptr::addr_eq(*h as *const L, obj as *const L))
    }

    /// Runs `f` until it completes with every lock it asked for held.
    /// Returns `f`'s result (with the locks held in the set) or its first
    /// error that is not a contention (with nothing held).
    #[track_caller]
    pub fn lock_all<R, E>(&mut self, mut f: impl FnMut(&mut Self) -> Result<R, E>) -> Result<R, E>
    where
        E: From<WwError>,
    {
        let site = Location::caller();
        loop {
            let r = f(self);
            match self.contended.take() {
                Some(c) => {
                    drop(r);
                    self.release_all();
                    c.ww_lock(&mut self.ctx, true, site)?;
                    self.held.push(c);
                }
                None => {
                    if r.is_err() {
                        self.release_all();
                    }
                    return r;
                }
            }
        }
    }

    /// The objects currently locked by the set, in locking order.
    pub fn held(&self) -> &[&'a L] {
        &self.held
    }

    /// Unlocks everything in the set (the context stays usable).
    pub fn release_all(&mut self) {
        for obj in self.held.drain(..).rev() {
            let _ = obj.ww_unlock();
        }
    }

    /// `ww_acquire_done` on the set's context.
    pub fn acquire_done(&mut self) -> Result<(), WwError> {
        self.ctx.acquire_done()
    }
}

impl<L: WwLockable + ?Sized> Drop for LockSet<'_, L> {
    fn drop(&mut self) {
        self.release_all();
        let _ = self.ctx.fini();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::thread;
    use std::time::Duration;

    static TEST_CLASS: WwClass = WwClass::new("ww_test_class");

    #[test]
    fn plain_lock_and_unlock() {
        let m = WwMutex::new(&TEST_CLASS);
        assert!(!m.is_locked());
        m.lock(None).unwrap();
        assert!(m.is_locked());
        assert!(m.is_held_by_current_thread());
        assert_eq!(m.locking_ctx(), None);
        assert!(!m.trylock());
        m.unlock().unwrap();
        assert!(!m.is_locked());
        assert!(m.trylock());
        m.unlock().unwrap();
        assert_eq!(m.unlock(), Err(WwError::NotLocked));
    }

    #[test]
    fn same_ctx_gets_ealready_and_relock_is_recursive() {
        let m = WwMutex::new(&TEST_CLASS);
        let mut ctx = WwAcquireCtx::new(&TEST_CLASS);
        m.lock(Some(&mut ctx)).unwrap();
        assert_eq!(m.locking_ctx(), Some(ctx.stamp()));
        let e = m.lock(Some(&mut ctx)).unwrap_err();
        assert_eq!(e, WwError::AlreadyHeld { stamp: ctx.stamp() });
        assert_eq!(e.errno(), errno::EALREADY);
        assert!(matches!(m.lock(None), Err(WwError::Recursive { .. })));
        assert_eq!(ctx.acquired(), 1);
        m.unlock().unwrap();
        assert_eq!(ctx.acquired(), 0);
        ctx.fini().unwrap();
    }

    #[test]
    fn stamps_increase() {
        let a = WwAcquireCtx::new(&TEST_CLASS);
        let b = WwAcquireCtx::new(&TEST_CLASS);
        assert!(a.stamp() < b.stamp());
    }

    #[test]
    fn ctx_misuse_is_reported_and_ctx_stays_usable() {
        let m = WwMutex::new(&TEST_CLASS);
        let mut ctx = WwAcquireCtx::new(&TEST_CLASS);
        m.lock(Some(&mut ctx)).unwrap();
        assert_eq!(
            ctx.fini(),
            Err(WwError::FiniWithLocksHeld {
                stamp: ctx.stamp(),
                held: 1
            })
        );
        assert!(!ctx.is_finished());
        ctx.acquire_done().unwrap();
        let m2 = WwMutex::new(&TEST_CLASS);
        assert_eq!(
            m2.lock(Some(&mut ctx)),
            Err(WwError::LockAfterDone { stamp: ctx.stamp() })
        );
        assert!(!m2.is_locked());
        m.unlock().unwrap();
        ctx.fini().unwrap();
        assert_eq!(
            m.lock(Some(&mut ctx)),
            Err(WwError::CtxFinished { stamp: ctx.stamp() })
        );
        assert!(!m.is_locked());
        static OTHER: WwClass = WwClass::new("ww_test_other");
        let mut other = WwAcquireCtx::new(&OTHER);
        assert!(matches!(
            m.lock(Some(&mut other)),
            Err(WwError::ClassMismatch { .. })
        ));
    }

    #[test]
    fn unlock_by_non_owner_is_refused_and_lock_stays_usable() {
        let m = Arc::new(WwMutex::new(&TEST_CLASS));
        m.lock(None).unwrap();
        let m2 = m.clone();
        let r = thread::spawn(move || m2.unlock()).join().unwrap();
        assert!(matches!(r, Err(WwError::NotOwner { .. })));
        assert_eq!(r.unwrap_err().errno(), errno::EPERM);
        assert!(m.is_held_by_current_thread());
        m.unlock().unwrap();
        let m3 = m.clone();
        thread::spawn(move || {
            m3.lock(None).unwrap();
            m3.unlock().unwrap();
        })
        .join()
        .unwrap();
    }

    /// Wait-die, younger side: a younger context holding a lock dies when it
    /// contends with an older holder, and then succeeds with lock_slow.
    #[test]
    fn younger_ctx_with_locks_dies_on_older_holder() {
        let a = Arc::new(WwMutex::new(&TEST_CLASS));
        let b = Arc::new(WwMutex::new(&TEST_CLASS));
        let mut old = WwAcquireCtx::new(&TEST_CLASS);
        a.lock(Some(&mut old)).unwrap();
        let (a2, b2) = (a.clone(), b.clone());
        let old_stamp = old.stamp();
        let t = thread::spawn(move || {
            let mut young = WwAcquireCtx::new(&TEST_CLASS);
            b2.lock(Some(&mut young)).unwrap();
            let e = a2.lock(Some(&mut young)).unwrap_err();
            assert_eq!(
                e,
                WwError::Deadlock {
                    stamp: young.stamp(),
                    older: old_stamp
                }
            );
            assert!(matches!(
                a2.lock(Some(&mut young)),
                Err(WwError::BackoffRequired { .. })
            ));
            assert!(matches!(
                a2.lock_slow(&mut young),
                Err(WwError::SlowWithLocksHeld { .. })
            ));
            b2.unlock().unwrap();
            a2.lock_slow(&mut young).unwrap();
            b2.lock(Some(&mut young)).unwrap();
            a2.unlock().unwrap();
            b2.unlock().unwrap();
            young.fini().unwrap();
        });
        thread::sleep(Duration::from_millis(20));
        a.unlock().unwrap();
        t.join().unwrap();
        old.fini().unwrap();
    }

    /// Wait-die, older side: an older context holding locks waits for a
    /// younger holder instead of dying.
    #[test]
    fn older_ctx_waits_for_younger_holder() {
        let a = Arc::new(WwMutex::new(&TEST_CLASS));
        let b = Arc::new(WwMutex::new(&TEST_CLASS));
        let mut old = WwAcquireCtx::new(&TEST_CLASS);
        let (a2, started) = (a.clone(), Arc::new(crate::sync::atomic::AtomicU32::new(0)));
        let s2 = started.clone();
        let t = thread::spawn(move || {
            let mut young = WwAcquireCtx::new(&TEST_CLASS);
            a2.lock(Some(&mut young)).unwrap();
            s2.store(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(30));
            a2.unlock().unwrap();
            young.fini().unwrap();
        });
        while started.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        b.lock(Some(&mut old)).unwrap();
        a.lock(Some(&mut old)).unwrap();
        assert_eq!(old.acquired(), 2);
        a.unlock().unwrap();
        b.unlock().unwrap();
        t.join().unwrap();
        old.fini().unwrap();
    }

    #[test]
    fn interruptible_lock_returns_eintr_when_cancelled() {
        let m = Arc::new(WwMutex::new(&TEST_CLASS));
        m.lock(None).unwrap();
        let token = CancelToken::new();
        let (m2, t2) = (m.clone(), token.clone());
        let h = thread::spawn(move || m2.lock_interruptible(None, &t2));
        thread::sleep(Duration::from_millis(20));
        token.cancel();
        let r = h.join().unwrap();
        assert_eq!(r, Err(WwError::Interrupted));
        assert_eq!(WwError::Interrupted.errno(), errno::EINTR);
        m.unlock().unwrap();
        assert!(!m.is_locked());
        m.lock(None).unwrap();
        m.unlock().unwrap();
    }

    #[test]
    fn lock_all_reruns_closure_after_contention() {
        let locks: Vec<Arc<WwMutex>> = (0..3)
            .map(|_| Arc::new(WwMutex::new(&TEST_CLASS)))
            .collect();
        let mut old = WwAcquireCtx::new(&TEST_CLASS);
        locks[2].lock(Some(&mut old)).unwrap();
        let ls = locks.clone();
        let runs = thread::spawn(move || {
            let mut set: LockSet<'_, WwMutex> = LockSet::new(&TEST_CLASS);
            let mut runs = 0;
            let r: Result<(), WwError> = set.lock_all(|s| {
                runs += 1;
                for l in &ls {
                    s.lock(l)?;
                }
                Ok(())
            });
            r.unwrap();
            assert_eq!(set.held().len(), 3);
            runs
        });
        thread::sleep(Duration::from_millis(20));
        locks[2].unlock().unwrap();
        old.fini().unwrap();
        let runs = runs.join().unwrap();
        assert!(runs >= 1);
        assert!(locks.iter().all(|l| !l.is_locked()));
    }
}
