//! Real threads (parking_lot and std) with per-operation dispatch to the
//! controlled scheduler in [`super::sched`].

use crate::sched;
use std::cell::{Cell, UnsafeCell};
use std::mem::ManuallyDrop;
use std::time::Duration;

/// Atomics: std atomics whose every operation is a scheduling point when the
/// caller is a controlled task.
pub mod atomic {
    use crate::sched;
    pub use std::sync::atomic::{Ordering, fence};

    /// Process-wide atomics that are never part of a model (always std).
    pub mod global {
        pub use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize};
    }

    macro_rules! shim_atomic_common {
        ($name:ident, $std:ty, $prim:ty) => {
            #[doc = concat!("Shim over [`", stringify!($std), "`].")]
            #[derive(Debug, Default)]
            #[repr(transparent)]
            pub struct $name($std);

            impl $name {
                /// Creates the atomic (usable in `const` and `static`).
                pub const fn new(v: $prim) -> Self {
                    Self(<$std>::new(v))
                }
                #[inline(always)]
                fn addr(&self) -> usize {
                    self as *const Self as usize
                }
                /// Loads the value.
                #[inline]
                pub fn load(&self, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Read);
                    self.0.load(o)
                }
                /// Loads the value without a scheduling point: only for
                /// paths that have established the caller is a real thread
                /// (`sync::rcu::available()`), so the point would be a no-op.
                #[inline(always)]
                pub fn load_direct(&self, o: Ordering) -> $prim {
                    self.0.load(o)
                }
                /// Stores a value.
                #[inline]
                pub fn store(&self, v: $prim, o: Ordering) {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.store(v, o)
                }
                /// [`store`](Self::store) as part of the caller's running
                /// segment: reported to the scheduler as a write, but no
                /// scheduling point of its own. For a group of stores that
                /// is one event of the model (a stage stamped on every page
                /// of a buffer at once) after one scheduling point.
                #[inline]
                pub fn store_in_segment(&self, v: $prim, o: Ordering) {
                    if sched::active() {
                        sched::access(self.addr(), sched::Access::Write);
                    }
                    self.0.store(v, o)
                }
                /// [`load`](Self::load) as part of the caller's running
                /// segment (see [`store_in_segment`](Self::store_in_segment)).
                #[inline]
                pub fn load_in_segment(&self, o: Ordering) -> $prim {
                    if sched::active() {
                        sched::access(self.addr(), sched::Access::Read);
                    }
                    self.0.load(o)
                }
                /// Swaps in a value, returning the old one.
                #[inline]
                pub fn swap(&self, v: $prim, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.swap(v, o)
                }
                /// Compare-and-exchange.
                #[inline]
                pub fn compare_exchange(
                    &self,
                    cur: $prim,
                    new: $prim,
                    s: Ordering,
                    f: Ordering,
                ) -> Result<$prim, $prim> {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.compare_exchange(cur, new, s, f)
                }
                /// Weak compare-and-exchange (may fail spuriously on real threads).
                #[inline]
                pub fn compare_exchange_weak(
                    &self,
                    cur: $prim,
                    new: $prim,
                    s: Ordering,
                    f: Ordering,
                ) -> Result<$prim, $prim> {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.compare_exchange_weak(cur, new, s, f)
                }
                /// Bitwise or, returning the old value.
                #[inline]
                pub fn fetch_or(&self, v: $prim, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.fetch_or(v, o)
                }
                /// Bitwise and, returning the old value.
                #[inline]
                pub fn fetch_and(&self, v: $prim, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.fetch_and(v, o)
                }
                /// The std atomic underneath: operations through it are no
                /// scheduling point and are not reported to the
                /// exploration. Only for a word whose model the caller
                /// reports itself, operation by operation (a lock word
                /// modelled as a mutex: `WwMutex` in `dmabuf-core`); any
                /// other use hides accesses from the reduction.
                #[inline(always)]
                pub fn unreported(&self) -> &$std {
                    &self.0
                }
                /// Exclusive access without synchronisation.
                pub fn get_mut(&mut self) -> &mut $prim {
                    self.0.get_mut()
                }
                /// Consumes the atomic.
                pub fn into_inner(mut self) -> $prim {
                    *self.0.get_mut()
                }
            }

            impl Drop for $name {
                #[inline]
                fn drop(&mut self) {
                    sched::forget(self.addr());
                }
            }
        };
    }

    /// Reads a word that no one stores to after the allocation holding it
    /// was published (with release ordering) to the caller: a plain load,
    /// never a scheduling point.
    #[inline(always)]
    pub fn read_immutable(a: &AtomicUsize) -> usize {
        a.0.load(Ordering::Relaxed)
    }

    macro_rules! shim_atomic_int {
        ($name:ident, $std:ty, $prim:ty) => {
            shim_atomic_common!($name, $std, $prim);
            impl $name {
                /// Wrapping add, returning the old value.
                #[inline]
                pub fn fetch_add(&self, v: $prim, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.fetch_add(v, o)
                }
                /// Wrapping subtract, returning the old value.
                #[inline]
                pub fn fetch_sub(&self, v: $prim, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.fetch_sub(v, o)
                }
                /// Maximum, returning the old value.
                #[inline]
                pub fn fetch_max(&self, v: $prim, o: Ordering) -> $prim {
                    sched::point_on(self.addr(), sched::Access::Write);
                    self.0.fetch_max(v, o)
                }
            }
        };
    }

    /// A word of independent flag bits (the kernel's `unsigned long flags`
    /// used with `test_bit`/`set_bit`): every operation names the bits it
    /// reads and the bits it writes, and returns only the bits it reads.
    /// Under the controlled scheduler each bit is an object of its own, so
    /// setting one flag does not race with testing another (a fence's
    /// `CB_DONE` with a waiter's test of `SIGNALED`). There is no
    /// whole-word load: an operation that saw bits it did not name would
    /// make the reduction unsound.
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub struct AtomicBits(std::sync::atomic::AtomicU32);

    impl AtomicBits {
        /// Creates the word (usable in `const` and `static`).
        pub const fn new(v: u32) -> Self {
            Self(std::sync::atomic::AtomicU32::new(v))
        }
        #[inline(always)]
        fn addr(&self) -> usize {
            self as *const Self as usize
        }
        /// `test_bit`: the bits of `mask` that are set.
        #[inline]
        pub fn load(&self, mask: u32, o: Ordering) -> u32 {
            sched::point_on_bits(self.addr(), mask, 0);
            self.0.load(o) & mask
        }
        /// [`load`](Self::load) without a scheduling point: only for paths
        /// that have established the caller is a real thread.
        #[inline(always)]
        pub fn load_direct(&self, mask: u32, o: Ordering) -> u32 {
            self.0.load(o) & mask
        }
        /// `test_and_set_bit` generalised: sets `bits`, returns which bits
        /// of `observe` were set before.
        #[inline]
        pub fn fetch_or(&self, bits: u32, observe: u32, o: Ordering) -> u32 {
            sched::point_on_bits(self.addr(), observe, bits);
            self.0.fetch_or(bits, o) & observe
        }
        /// `test_and_clear_bit` generalised: clears `bits`, returns which
        /// bits of `observe` were set before.
        #[inline]
        pub fn fetch_clear(&self, bits: u32, observe: u32, o: Ordering) -> u32 {
            sched::point_on_bits(self.addr(), observe, bits);
            self.0.fetch_and(!bits, o) & observe
        }
        /// Sets `bits` *idempotently*: returns which bits of `observe` were
        /// set before, and whether this call changed the word. Under the
        /// controlled scheduler two such sets of one bit are not ordered
        /// (either order leaves the same word), so the second value may
        /// differ between schedules the search treats as one: use it for
        /// diagnostics (a trace row), never to decide what the caller does.
        #[inline]
        pub fn set_idempotent(&self, bits: u32, observe: u32, o: Ordering) -> (u32, bool) {
            sched::point_on_bits_set(self.addr(), observe, bits);
            let old = self.0.fetch_or(bits, o);
            (old & observe, old & bits != bits)
        }
        /// Exclusive access without synchronisation.
        pub fn get_mut(&mut self) -> &mut u32 {
            self.0.get_mut()
        }
    }

    impl Drop for AtomicBits {
        #[inline]
        fn drop(&mut self) {
            sched::forget_bits(self.addr());
        }
    }

    /// A reference count (the kernel's `kref` or a file's `f_count`) whose
    /// holders take references only from a reference they hold (Rust's
    /// `Clone` of an owned handle): such a [`get`](Self::get) never races
    /// with the put that releases the object. Under the controlled
    /// scheduler a get is [`sched::Access::Get`]: it commutes with every
    /// other get and put (the getter's reference keeps the count at two or
    /// more while another holder drops its own, so no put releases in
    /// either order). A put that does not release is
    /// [`sched::Access::Count`]: it commutes with the other such puts, but
    /// one may turn another holder's next put into the releasing one, so it
    /// wakes that holder from a sleep set. The releasing put is
    /// [`sched::Access::Put`] and races with every other put (their order
    /// decides which releases).
    /// [`get_unless_zero`](Self::get_unless_zero) and [`count`](Self::count)
    /// observe the value, and are writes.
    #[derive(Debug)]
    pub struct RefCount(std::sync::atomic::AtomicUsize);

    impl RefCount {
        /// A count of `n`.
        pub const fn new(n: usize) -> Self {
            Self(std::sync::atomic::AtomicUsize::new(n))
        }
        #[inline(always)]
        fn addr(&self) -> usize {
            self as *const Self as usize
        }
        /// `kref_get`: takes a reference; the caller holds one.
        #[inline]
        pub fn get(&self) {
            sched::point_on(self.addr(), sched::Access::Get);
            self.0.fetch_add(1, Ordering::AcqRel);
        }
        /// `kref_get_unless_zero`: takes a reference unless the count
        /// reached zero; the caller need not hold one.
        #[inline]
        pub fn get_unless_zero(&self) -> bool {
            sched::point_on(self.addr(), sched::Access::Write);
            self.0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n != 0).then_some(n + 1)
                })
                .is_ok()
        }
        /// `kref_put`: drops a reference; true if it was the last.
        #[inline]
        pub fn put(&self) -> bool {
            sched::point_on(self.addr(), sched::Access::Count);
            let old = self.0.fetch_sub(1, Ordering::AcqRel);
            if old == 1 && sched::active() {
                // The releasing put: the order of the puts decides it.
                sched::access(self.addr(), sched::Access::Put);
            }
            old == 1
        }
        /// The count now (`kref_read`, `file_count`).
        #[inline]
        pub fn count(&self) -> usize {
            sched::point_on(self.addr(), sched::Access::Write);
            self.0.load(Ordering::Acquire)
        }
    }

    impl Drop for RefCount {
        #[inline]
        fn drop(&mut self) {
            sched::forget(self.addr());
        }
    }

    shim_atomic_common!(AtomicBool, std::sync::atomic::AtomicBool, bool);
    shim_atomic_int!(AtomicU32, std::sync::atomic::AtomicU32, u32);
    shim_atomic_int!(AtomicI32, std::sync::atomic::AtomicI32, i32);
    shim_atomic_int!(AtomicU64, std::sync::atomic::AtomicU64, u64);
    shim_atomic_int!(AtomicI64, std::sync::atomic::AtomicI64, i64);
    shim_atomic_int!(AtomicUsize, std::sync::atomic::AtomicUsize, usize);
}

/// A mutual-exclusion lock without poisoning (a panic while holding it does
/// not make later `lock` calls fail; our invariants are re-checked by the
/// callers that care).
#[derive(Default)]
pub struct Mutex<T: ?Sized> {
    inner: parking_lot::Mutex<T>,
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// Guard returned by [`Mutex::lock`].
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    guard: ManuallyDrop<parking_lot::MutexGuard<'a, T>>,
}

impl<T> Mutex<T> {
    /// Creates an unlocked mutex.
    pub const fn new(t: T) -> Self {
        Self {
            inner: parking_lot::Mutex::new(t),
        }
    }
    /// Consumes the mutex.
    pub fn into_inner(self) -> T {
        let this = ManuallyDrop::new(self);
        sched::forget(this.addr());
        // SAFETY: `this` is never used or dropped again, so its `inner` is
        // moved out exactly once.
        unsafe { std::ptr::read(&this.inner) }.into_inner()
    }
}

/// A dropped mutex is forgotten by the scheduler's object numbering
/// ([`sched::forget`]): a later object at its address is a new one.
impl<T: ?Sized> Drop for Mutex<T> {
    #[inline]
    fn drop(&mut self) {
        sched::forget(self.addr());
    }
}

impl<T: ?Sized> Mutex<T> {
    #[inline]
    fn addr(&self) -> usize {
        self as *const Self as *const u8 as usize
    }

    /// Acquires the lock, blocking (or, on a controlled task, yielding to the
    /// scheduler) until it is available.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        if sched::active() {
            return self.lock_controlled();
        }
        MutexGuard {
            mutex: self,
            guard: ManuallyDrop::new(self.inner.lock()),
        }
    }

    #[cold]
    fn lock_controlled(&self) -> MutexGuard<'_, T> {
        loop {
            sched::acquire_point(self.addr());
            if let Some(g) = self.inner.try_lock() {
                return MutexGuard {
                    mutex: self,
                    guard: ManuallyDrop::new(g),
                };
            }
            sched::block_on(self.addr(), sched::WaitKind::Mutex);
        }
    }

    /// Acquires the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        if sched::active() {
            sched::try_acquire_point(self.addr());
        }
        self.inner.try_lock().map(|g| MutexGuard {
            mutex: self,
            guard: ManuallyDrop::new(g),
        })
    }

    /// Whether somebody holds the lock (racy; for assertions and reports).
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// Exclusive access without locking.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// The mutex this guard locks.
    pub fn mutex(this: &Self) -> &'a Mutex<T> {
        this.mutex
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard is dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        if sched::active() {
            sched::release(self.mutex.addr());
        }
    }
}

impl<T: ?Sized> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A condition variable paired with [`Mutex`].
#[derive(Default, Debug)]
pub struct Condvar {
    inner: parking_lot::Condvar,
    // Gives the condvar a distinct address even when zero-sized layouts would
    // collide with a neighbouring field.
    _addr: UnsafeCell<u8>,
}

// SAFETY: `_addr` is never read or written; it only reserves an address.
unsafe impl Sync for Condvar {}

/// Forgotten by the scheduler's object numbering when dropped (see
/// [`sched::forget`]).
impl Drop for Condvar {
    #[inline]
    fn drop(&mut self) {
        sched::forget(self.addr());
    }
}
// SAFETY: as above.
unsafe impl Send for Condvar {}

impl Condvar {
    /// Creates a condition variable.
    pub const fn new() -> Self {
        Self {
            inner: parking_lot::Condvar::new(),
            _addr: UnsafeCell::new(0),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Releases the guard's lock, waits for a notification and re-acquires.
    /// May wake spuriously.
    pub fn wait<'a, T: ?Sized>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        if sched::active() {
            let m = guard.mutex;
            drop(guard);
            sched::block_on(self.addr(), sched::WaitKind::Condvar);
            return m.lock();
        }
        self.inner.wait(&mut guard.guard);
        guard
    }

    /// Like [`wait`](Self::wait) with a timeout; the boolean is true when the
    /// wait timed out.
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T>,
        dur: Duration,
    ) -> (MutexGuard<'a, T>, bool) {
        if sched::active() {
            let m = guard.mutex;
            drop(guard);
            let deadline = sched::now_ns().saturating_add(duration_ns(dur));
            let timed_out = sched::block_on_until(self.addr(), sched::WaitKind::Condvar, deadline);
            return (m.lock(), timed_out);
        }
        let r = self.inner.wait_for(&mut guard.guard, dur);
        (guard, r.timed_out())
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        if sched::active() {
            sched::yield_point_on(self.addr(), sched::Access::Write);
            sched::unblock_one(self.addr());
            return;
        }
        self.inner.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        if sched::active() {
            sched::yield_point_on(self.addr(), sched::Access::Write);
            sched::unblock_all(self.addr());
            return;
        }
        self.inner.notify_all();
    }
}

/// Saturating conversion of a duration to nanoseconds.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Threads: std threads, registered with the scheduler when spawned from a
/// controlled task.
pub mod thread {
    use crate::sched;
    use std::time::Duration;

    /// Handle to a spawned thread.
    #[derive(Debug)]
    pub struct JoinHandle<T> {
        inner: Inner<T>,
    }

    #[derive(Debug)]
    enum Inner<T> {
        Thread(std::thread::JoinHandle<T>),
        Task(sched::TaskId, sched::TaskJoin<T>),
    }

    impl<T> JoinHandle<T> {
        /// Waits for the thread to finish. Returns `Err` with the panic
        /// payload when it panicked.
        pub fn join(self) -> std::thread::Result<T> {
            match self.inner {
                Inner::Thread(h) => h.join(),
                Inner::Task(t, h) => {
                    sched::join(t);
                    h.join()
                }
            }
        }

        /// Whether the thread has finished.
        pub fn is_finished(&self) -> bool {
            sched::point();
            match &self.inner {
                Inner::Thread(h) => h.is_finished(),
                // Ask the scheduler, so that polling does not depend on
                // real timing.
                Inner::Task(t, h) => sched::is_finished(*t).unwrap_or_else(|| h.is_finished()),
            }
        }
    }

    /// Spawns a thread. On a controlled task the new thread becomes a task of
    /// the same execution and inherits the spawner's group.
    pub fn spawn<F, T>(f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_named(String::new(), f)
    }

    /// Spawns a named thread (the name shows in traces and deadlock reports).
    pub fn spawn_named<F, T>(name: String, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let f = match sched::spawn(name.clone(), f) {
            Ok((task, h)) => {
                return JoinHandle {
                    inner: Inner::Task(task, h),
                };
            }
            Err(f) => f,
        };
        let mut b = std::thread::Builder::new();
        if !name.is_empty() {
            b = b.name(name);
        }
        JoinHandle {
            inner: Inner::Thread(b.spawn(f).expect("failed to spawn a thread")),
        }
    }

    /// The calling thread's name: a controlled task's own (its OS thread
    /// is one of the engine's reused task threads), or the OS thread's.
    pub fn current_name() -> Option<String> {
        sched::current_task_name().or_else(|| std::thread::current().name().map(str::to_owned))
    }

    /// A handle that can unpark a thread.
    #[derive(Clone, Debug)]
    pub struct Thread {
        std: std::thread::Thread,
        task: Option<sched::TaskId>,
    }

    impl Thread {
        /// Makes the thread's next (or current) `park` return.
        pub fn unpark(&self) {
            match self.task {
                Some(t) if sched::unpark(t) => {}
                _ => self.std.unpark(),
            }
        }
    }

    /// The calling thread.
    pub fn current() -> Thread {
        Thread {
            std: std::thread::current(),
            task: sched::current_task(),
        }
    }

    /// Blocks until unparked (may return spuriously).
    pub fn park() {
        if sched::active() {
            sched::park(None);
        } else {
            std::thread::park();
        }
    }

    /// Blocks until unparked or the timeout passes (may return spuriously).
    pub fn park_timeout(d: Duration) {
        if sched::active() {
            let deadline = sched::now_ns().saturating_add(super::duration_ns(d));
            sched::park(Some(deadline));
        } else {
            std::thread::park_timeout(d);
        }
    }

    /// Offers the processor to another thread.
    pub fn yield_now() {
        if sched::active() {
            sched::yield_now();
        } else {
            std::thread::yield_now();
        }
    }

    /// Sleeps (virtual time on a controlled task).
    pub fn sleep(d: Duration) {
        if sched::active() {
            sched::sleep(super::duration_ns(d));
        } else {
            std::thread::sleep(d);
        }
    }
}

/// Clocks.
pub mod time {
    use crate::sched;

    /// Real `CLOCK_MONOTONIC` in nanoseconds, whatever the caller is.
    #[inline]
    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }

    /// [`now_ns`] for hot paths (fence signal timestamps): on real threads a
    /// TSC-extrapolated `CLOCK_MONOTONIC`, monotonic per thread and within
    /// tens of nanoseconds of the real clock (see `fast_clock.rs`); the
    /// virtual clock on controlled tasks.
    #[inline]
    pub fn timestamp_ns() -> u64 {
        if sched::active() {
            sched::now_ns()
        } else {
            crate::fast_clock::now_ns()
        }
    }

    /// The time as the caller sees it: `CLOCK_MONOTONIC` on real threads, the
    /// execution's virtual clock on controlled tasks.
    #[inline]
    pub fn now_ns() -> u64 {
        if sched::active() {
            sched::now_ns()
        } else {
            monotonic_ns()
        }
    }
}

/// Declares a thread-local (loom's under `--cfg loom`): a [`TaskLocal`],
/// which a controlled task sees fresh even on an OS thread that ran other
/// tasks before (the engine reuses task threads). Only the
/// `static NAME: T = const { init };` form.
#[macro_export]
macro_rules! shim_thread_local {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }; $($rest:tt)*) => {
        $(#[$attr])* $vis static $name: $crate::TaskLocal<$t> = {
            std::thread_local! {
                static SLOT: $crate::TaskLocalSlot<$t> =
                    const { $crate::TaskLocalSlot::new($init) };
            }
            fn init() -> $t {
                $init
            }
            $crate::TaskLocal::new(&SLOT, init)
        };
        $crate::shim_thread_local!($($rest)*);
    };
}

std::thread_local! {
    /// How many tasks this OS thread has started running (see
    /// [`TaskLocal`]).
    static INCARNATION: Cell<u64> = const { Cell::new(0) };
}

/// The calling OS thread starts running a new task: every [`TaskLocal`] it
/// touches from now on starts again from its initial value.
pub(crate) fn new_incarnation() {
    INCARNATION.with(|i| i.set(i.get() + 1));
}

/// The storage behind one [`TaskLocal`] on one OS thread (made by
/// [`shim_thread_local!`](crate::shim_thread_local)).
#[doc(hidden)]
pub struct TaskLocalSlot<T> {
    /// The incarnation the value belongs to.
    epoch: Cell<u64>,
    value: UnsafeCell<T>,
}

impl<T> TaskLocalSlot<T> {
    #[doc(hidden)]
    pub const fn new(value: T) -> Self {
        Self {
            epoch: Cell::new(0),
            value: UnsafeCell::new(value),
        }
    }
}

/// A thread-local per task: on real threads, std's thread-local; on the
/// engine's reused task threads, a value that starts from its initial one
/// whenever the thread starts a new task, as it would on a new thread (a
/// lock-ownership token, lockdep's held-lock stack and the like must not
/// leak from one task into the next).
pub struct TaskLocal<T: 'static> {
    slot: &'static std::thread::LocalKey<TaskLocalSlot<T>>,
    init: fn() -> T,
}

impl<T: 'static> TaskLocal<T> {
    #[doc(hidden)]
    pub const fn new(
        slot: &'static std::thread::LocalKey<TaskLocalSlot<T>>,
        init: fn() -> T,
    ) -> Self {
        Self { slot, init }
    }

    /// Runs `f` on the value; panics if the thread's locals are being
    /// destroyed (as std's `LocalKey::with`).
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        match self.try_with(f) {
            Ok(r) => r,
            Err(_) => panic!("a task-local was used while its thread's locals were destroyed"),
        }
    }

    /// Runs `f` on the value, or fails if the thread's locals are being
    /// destroyed.
    pub fn try_with<R>(
        &'static self,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, std::thread::AccessError> {
        let now = INCARNATION.try_with(Cell::get).unwrap_or(0);
        self.slot.try_with(|s| {
            if s.epoch.get() != now {
                // The first use by this task: no reference to the value is
                // alive (the thread's previous task has ended). The epoch is
                // set first, so a destructor of the old value that uses this
                // local sees the new one.
                s.epoch.set(now);
                // Made before the value is borrowed mutably below.
                let fresh = (self.init)();
                // SAFETY: no reference into the value exists (see above),
                // and only this thread reaches it.
                let old = unsafe { std::mem::replace(&mut *s.value.get(), fresh) };
                drop(old);
            }
            // SAFETY: shared references only; the value is replaced only
            // above, before any reference of this incarnation is handed out.
            f(unsafe { &*s.value.get() })
        })
    }
}

/// A value set once and awaited (a one-shot event carrying a value; the
/// kernel's `complete_all` on a completion that also hands over a result).
///
/// | state | `get` | `wait` | `set` |
/// |---|---|---|---|
/// | empty | `None` | blocks until set | stores, wakes every waiter |
/// | set | `Some(v)` | returns `v` | replaces `v` (callers set once) |
///
/// Why a primitive rather than a mutex and a condvar: under the
/// controlled scheduler, a `wait` that finds the value set and one that
/// blocks until it is set end in the same state, so the partial-order
/// reduction must not explore both orders. With a mutex and a condvar it
/// sees two lock orders (wait first, or set first) and runs both. Here a
/// `wait` is ordered after the `set` it returns (a wake-up access) and never
/// races with it; a `wait` that blocks touches nothing until the `set`
/// wakes it. `get` does race with `set` (its result depends on the order).
/// `set` is a scheduling point; `wait` is one only when it blocks.
///
/// Lock rules: the value sits behind a plain `parking_lot` mutex held only
/// to copy it in or out, never across a scheduling point.
#[derive(Default)]
pub struct SetOnce<T> {
    v: parking_lot::Mutex<Option<T>>,
    cv: parking_lot::Condvar,
}

impl<T: std::fmt::Debug> std::fmt::Debug for SetOnce<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SetOnce").field(&*self.v.lock()).finish()
    }
}

/// Forgotten by the scheduler's object numbering when dropped (see
/// [`sched::forget`]).
impl<T> Drop for SetOnce<T> {
    #[inline]
    fn drop(&mut self) {
        sched::forget(self as *const Self as usize);
    }
}

impl<T: Clone> SetOnce<T> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            v: parking_lot::Mutex::new(None),
            cv: parking_lot::Condvar::new(),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Sets the value and wakes every waiter.
    pub fn set(&self, v: T) {
        if sched::active() {
            sched::yield_point_on(self.addr(), sched::Access::Write);
            *self.v.lock() = Some(v);
            sched::unblock_all(self.addr());
            return;
        }
        *self.v.lock() = Some(v);
        self.cv.notify_all();
    }

    /// The value, if set (races with `set`: a scheduling point).
    pub fn get(&self) -> Option<T> {
        sched::point_on(self.addr(), sched::Access::Read);
        self.v.lock().clone()
    }

    /// Waits until the value is set and returns it.
    pub fn wait(&self) -> T {
        if sched::active() {
            loop {
                if let Some(v) = self.v.lock().clone() {
                    sched::access(self.addr(), sched::Access::Wake);
                    return v;
                }
                sched::block_on(self.addr(), sched::WaitKind::SetOnce);
            }
        }
        let mut g = self.v.lock();
        loop {
            if let Some(v) = &*g {
                return v.clone();
            }
            self.cv.wait(&mut g);
        }
    }
}

/// A value that only grows, which tasks wait on with predicates: the
/// coordination state of a test harness (phases reached, counts of things
/// done).
///
/// # Contract
///
/// | operation | scheduling point | access of the object |
/// |---|---|---|
/// | [`update`](Self::update) (the `n`-th) | yes | a write of the cell and of its version `n`; wakes every waiter |
/// | [`read`](Self::read) | yes | a read of the cell (races with every update) |
/// | [`wait_until`](Self::wait_until), predicate true | no | a wake-up on the first version at which the predicate held: ordered after that update only, never racing with it |
/// | [`wait_until`](Self::wait_until), predicate false | blocks | none until an update wakes it |
///
/// The caller promises *monotonicity*: every predicate passed to
/// `wait_until`, once true, stays true under every later `update` (fields
/// are only set, counters only grow). Then a waiter that finds its
/// predicate true ends in the same state as one that blocked and was woken
/// by the update that made it true, so, as with [`SetOnce::wait`], a wait
/// never races with the update it waits for, and waiters never race with
/// each other: a mutex and condvar would make every re-check an
/// acquisition racing with every other one, which the exploration would
/// have to permute. Updates race with each other (their order is
/// explored). A predicate that can turn false again breaks the argument:
/// the search could then miss the schedules where it is checked late.
///
/// A waiter is ordered after the update that made its predicate true and
/// *not* after later ones: it observes nothing but "the predicate holds",
/// which every later update leaves as it is, so it commutes with them.
/// Ordering it after the last update instead (what a plain wake-up on the
/// cell would do) orders everything the waiter does next after whatever
/// the updater did before its later updates, and hides the schedules in
/// which the waiter runs between two updates. To find that update, a
/// controlled execution keeps the cell's history (a clone of the value
/// after each update; the predicate, being monotone, is searched by
/// bisection); outside one nothing is kept.
///
/// Lock rules: the value and the history sit behind plain `parking_lot`
/// mutexes held only while `f`, a clone or a predicate runs, never across
/// a scheduling point.
#[derive(Default)]
pub struct Monotone<T> {
    v: parking_lot::Mutex<T>,
    cv: parking_lot::Condvar,
    /// In a controlled execution: the initial value, then the value after
    /// each update (entry `n` is version `n`).
    history: parking_lot::Mutex<Vec<T>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Monotone<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Monotone").field(&*self.v.lock()).finish()
    }
}

/// Forgotten by the scheduler's object numbering when dropped (see
/// [`sched::forget`]).
impl<T> Drop for Monotone<T> {
    #[inline]
    fn drop(&mut self) {
        let versions = self.history.get_mut().len().saturating_sub(1);
        let addr = self as *const Self as usize;
        if versions == 0 {
            sched::forget(addr);
        } else {
            sched::forget_versions(addr, u32::try_from(versions).unwrap_or(u32::MAX));
        }
    }
}

impl<T: Clone> Monotone<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Self {
            v: parking_lot::Mutex::new(v),
            cv: parking_lot::Condvar::new(),
            history: parking_lot::Mutex::new(Vec::new()),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// In a controlled execution: whether `pred` holds now; if it does,
    /// the caller's segment is a wake-up on the first version at which it
    /// held (none if it held from the start).
    fn holds(&self, pred: &impl Fn(&T) -> bool) -> bool {
        if !pred(&self.v.lock()) {
            return false;
        }
        let first = self.history.lock().partition_point(|v| !pred(v));
        if first > 0 {
            sched::wake_on_version(self.addr(), u32::try_from(first).unwrap_or(u32::MAX));
        }
        true
    }

    /// Applies `f` (which must only grow the value, see the type's
    /// contract) and wakes every waiter.
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        if sched::active() {
            sched::yield_point_on(self.addr(), sched::Access::Write);
            let mut v = self.v.lock();
            let mut h = self.history.lock();
            if h.is_empty() {
                h.push(v.clone());
            }
            f(&mut v);
            h.push(v.clone());
            let n = u32::try_from(h.len() - 1).unwrap_or(u32::MAX);
            drop((v, h));
            sched::unblock_all_version(self.addr(), n);
            return;
        }
        f(&mut self.v.lock());
        self.cv.notify_all();
    }

    /// Reads the value (a scheduling point that races with updates).
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        sched::point_on(self.addr(), sched::Access::Read);
        f(&self.v.lock())
    }

    /// Waits until `pred` holds (true) or `timeout` passes (false). A
    /// timeout on a controlled task is virtual time: it passes only when
    /// no task can run.
    pub fn wait_until(&self, pred: impl Fn(&T) -> bool, timeout: Option<Duration>) -> bool {
        if sched::active() {
            let deadline = timeout.map(|t| sched::now_ns().saturating_add(duration_ns(t)));
            loop {
                if self.holds(&pred) {
                    return true;
                }
                match deadline {
                    None => sched::block_on(self.addr(), sched::WaitKind::Monotone),
                    Some(d) => {
                        if sched::block_on_until(self.addr(), sched::WaitKind::Monotone, d) {
                            return self.holds(&pred);
                        }
                    }
                }
            }
        }
        let mut g = self.v.lock();
        match timeout {
            None => {
                while !pred(&g) {
                    self.cv.wait(&mut g);
                }
                true
            }
            Some(t) => {
                let end = std::time::Instant::now() + t;
                while !pred(&g) {
                    if self.cv.wait_until(&mut g, end).timed_out() {
                        return pred(&g);
                    }
                }
                true
            }
        }
    }
}

/// A value behind a lock with a wait queue on which every change wakes
/// every waiter: the kernel's `wait_event_lock_irq(wq, condition, lock)`
/// with `wake_up_all(wq)` after each change under the lock (a work queue,
/// a job queue, a completion's count).
///
/// # Contract
///
/// | operation | scheduling point | access of the object |
/// |---|---|---|
/// | [`update`](Self::update) | yes | a write; wakes every waiter |
/// | [`read`](Self::read) | yes | a read |
/// | [`wait_map`](Self::wait_map), `f` returns `Some` | yes | a write; wakes every other waiter |
/// | [`wait_map`](Self::wait_map), `f` returns `None` | yes, then blocks | none until an update wakes it |
/// | [`wait_until`](Self::wait_until), predicate true | yes | a read |
/// | [`wait_until`](Self::wait_until), predicate false | yes, then blocks | none until an update wakes it |
/// | the timeout of [`wait_map`](Self::wait_map) | no: returns `None` | none |
/// | the timeout of [`wait_until`](Self::wait_until) | yes | a read (the predicate, once more) |
///
/// The caller promises that a check that returns `None` (or a predicate)
/// changes nothing. Since every update wakes every waiter, a check that
/// finds nothing to do and blocks ends in the same state as the same check
/// made after the next update: it is no event, so the exploration never
/// permutes it with the updates (a mutex and condvar make every such check
/// an acquisition racing with every other one: a worker's idle re-checks
/// with every submission). A check that acts is an ordinary write, racing
/// with the updates and the other checks that act.
///
/// Lock rules: the value sits behind a plain `parking_lot` mutex held only
/// while a closure runs, never across a scheduling point; closures must
/// not call into the shim (no atomics, locks or waits inside).
#[derive(Default)]
pub struct Guarded<T> {
    v: parking_lot::Mutex<T>,
    cv: parking_lot::Condvar,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Guarded").field(&*self.v.lock()).finish()
    }
}

/// Forgotten by the scheduler's object numbering when dropped (see
/// [`sched::forget`]).
impl<T> Drop for Guarded<T> {
    #[inline]
    fn drop(&mut self) {
        sched::forget(self as *const Self as usize);
    }
}

impl<T> Guarded<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Self {
            v: parking_lot::Mutex::new(v),
            cv: parking_lot::Condvar::new(),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    /// Applies `f` and wakes every waiter.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        if sched::active() {
            sched::yield_point_on(self.addr(), sched::Access::Write);
            let r = f(&mut self.v.lock());
            sched::unblock_all(self.addr());
            return r;
        }
        let r = f(&mut self.v.lock());
        self.cv.notify_all();
        r
    }

    /// Reads the value.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        sched::point_on(self.addr(), sched::Access::Read);
        f(&self.v.lock())
    }

    /// Waits until `f` returns `Some`, and returns it. `f` may change the
    /// value only when it returns `Some` (see the type's contract).
    /// `timeout` gives, from the value at each check that found nothing,
    /// how long to wait for a change (`None`: no timeout); when it passes,
    /// the wait returns `None` without checking again: no change woke it,
    /// so a check would find nothing either (a caller that wants to look
    /// once more calls again). A timeout on a controlled task is virtual
    /// time: it passes only when no task can run, and the wait touches
    /// nothing after it.
    pub fn wait_map<R>(
        &self,
        f: impl FnMut(&mut T) -> Option<R>,
        timeout: impl Fn(&T) -> Option<Duration>,
    ) -> Option<R> {
        self.wait_with(sched::Access::Write, f, timeout, false)
    }

    /// Waits until `pred` holds (true) or, `timeout` after a check that
    /// found it false, returns whether it holds then. A check only reads.
    pub fn wait_until(&self, pred: impl Fn(&T) -> bool, timeout: Option<Duration>) -> bool {
        self.wait_with(
            sched::Access::Read,
            |v| pred(v).then_some(()),
            |_| timeout,
            true,
        )
        .is_some()
    }

    /// The wait loop. After a timeout, one more check (a read: only
    /// `wait_until` asks for it) if `recheck`, else `None`.
    fn wait_with<R>(
        &self,
        access: sched::Access,
        mut f: impl FnMut(&mut T) -> Option<R>,
        timeout: impl Fn(&T) -> Option<Duration>,
        recheck: bool,
    ) -> Option<R> {
        // A check that acted may have changed the value: it wakes the
        // other waiters as an update does.
        let writes = access.writes();
        if sched::active() {
            loop {
                sched::yield_point_on(self.addr(), access);
                let t = {
                    let mut g = self.v.lock();
                    if let Some(r) = f(&mut g) {
                        drop(g);
                        if writes {
                            sched::unblock_all(self.addr());
                        }
                        return Some(r);
                    }
                    timeout(&g)
                };
                match t {
                    None => sched::block_on(self.addr(), sched::WaitKind::WaitQueue),
                    Some(t) => {
                        let d = sched::now_ns().saturating_add(duration_ns(t));
                        if sched::block_on_until(self.addr(), sched::WaitKind::WaitQueue, d) {
                            if !recheck {
                                return None;
                            }
                            sched::yield_point_on(self.addr(), sched::Access::Read);
                            return f(&mut self.v.lock());
                        }
                    }
                }
            }
        }
        let mut g = self.v.lock();
        loop {
            if let Some(r) = f(&mut g) {
                if writes {
                    self.cv.notify_all();
                }
                return Some(r);
            }
            match timeout(&g) {
                None => self.cv.wait(&mut g),
                Some(t) => {
                    if self.cv.wait_for(&mut g, t).timed_out() {
                        return if recheck { f(&mut g) } else { None };
                    }
                }
            }
        }
    }
}
