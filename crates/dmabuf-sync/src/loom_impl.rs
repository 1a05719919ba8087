//! `--cfg loom`: the same API over loom's primitives, for exhaustive models of
//! small primitives. There is no controlled scheduler and no real time here:
//! clocks read zero and timed waits behave as untimed waits that may also
//! return early (loom explores both).

use std::time::Duration;

/// Atomics from loom; `global` stays std so statics still work.
pub mod atomic {
    pub use loom::sync::atomic::{
        AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    /// Process-wide atomics that are never part of a model (always std).
    pub mod global {
        pub use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize};
    }

    /// A word of independent flag bits (see the std shim): every operation
    /// names the bits it reads and writes. Loom sees one atomic word.
    #[derive(Debug)]
    pub struct AtomicBits(AtomicU32);

    impl AtomicBits {
        /// Creates the word.
        pub fn new(v: u32) -> Self {
            Self(AtomicU32::new(v))
        }
        /// The bits of `mask` that are set.
        pub fn load(&self, mask: u32, o: Ordering) -> u32 {
            self.0.load(o) & mask
        }
        /// As [`load`](Self::load).
        pub fn load_direct(&self, mask: u32, o: Ordering) -> u32 {
            self.0.load(o) & mask
        }
        /// Sets `bits`, returns which bits of `observe` were set before.
        pub fn fetch_or(&self, bits: u32, observe: u32, o: Ordering) -> u32 {
            self.0.fetch_or(bits, o) & observe
        }
        /// Clears `bits`, returns which bits of `observe` were set before.
        pub fn fetch_clear(&self, bits: u32, observe: u32, o: Ordering) -> u32 {
            self.0.fetch_and(!bits, o) & observe
        }
        /// Sets `bits`: which bits of `observe` were set before, and
        /// whether the word changed (see the std shim).
        pub fn set_idempotent(&self, bits: u32, observe: u32, o: Ordering) -> (u32, bool) {
            let old = self.0.fetch_or(bits, o);
            (old & observe, old & bits != bits)
        }
    }

    /// A reference count (see the std shim). Loom sees one atomic.
    #[derive(Debug)]
    pub struct RefCount(AtomicUsize);

    impl RefCount {
        /// A count of `n`.
        pub fn new(n: usize) -> Self {
            Self(AtomicUsize::new(n))
        }
        /// Takes a reference; the caller holds one.
        pub fn get(&self) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
        /// Takes a reference unless the count reached zero.
        pub fn get_unless_zero(&self) -> bool {
            self.0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n != 0).then_some(n + 1)
                })
                .is_ok()
        }
        /// Drops a reference; true if it was the last.
        pub fn put(&self) -> bool {
            self.0.fetch_sub(1, Ordering::AcqRel) == 1
        }
        /// The count now.
        pub fn count(&self) -> usize {
            self.0.load(Ordering::Acquire)
        }
    }

    /// Reads a word that no one stores to after the allocation holding it
    /// was published to the caller: loom's unsynchronised load, which is no
    /// branch point and which loom checks happens after the last store.
    pub fn read_immutable(a: &AtomicUsize) -> usize {
        // SAFETY: per the contract, no store can race with this load.
        unsafe { a.unsync_load() }
    }
}

/// A mutex without poisoning, over loom's.
#[derive(Debug, Default)]
pub struct Mutex<T: ?Sized>(loom::sync::Mutex<T>);

/// Guard of [`Mutex`].
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    guard: loom::sync::MutexGuard<'a, T>,
}

impl<T> Mutex<T> {
    /// Creates an unlocked mutex.
    pub fn new(t: T) -> Self {
        Self(loom::sync::Mutex::new(t))
    }
    /// Consumes the mutex.
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Acquires the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            mutex: self,
            guard: self.0.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
    /// Acquires the lock if free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.0
            .try_lock()
            .ok()
            .map(|guard| MutexGuard { mutex: self, guard })
    }
    /// Not tracked under loom; always false.
    pub fn is_locked(&self) -> bool {
        false
    }
    /// Exclusive access.
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// The mutex this guard locks.
    pub fn mutex(this: &Self) -> &'a Mutex<T> {
        this.mutex
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

/// A condition variable over loom's.
#[derive(Debug, Default)]
pub struct Condvar(loom::sync::Condvar);

impl Condvar {
    /// Creates a condition variable.
    pub fn new() -> Self {
        Self(loom::sync::Condvar::new())
    }
    /// Waits for a notification (loom's condvar needs a sized `T`).
    pub fn wait<'a, T>(&self, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let MutexGuard { mutex, guard } = g;
        let guard = self.0.wait(guard).unwrap_or_else(|e| e.into_inner());
        MutexGuard { mutex, guard }
    }
    /// Waits for a notification; under loom this never reports a timeout.
    pub fn wait_timeout<'a, T>(
        &self,
        g: MutexGuard<'a, T>,
        _d: Duration,
    ) -> (MutexGuard<'a, T>, bool) {
        (self.wait(g), false)
    }
    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.0.notify_one()
    }
    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all()
    }
}

/// Saturating conversion of a duration to nanoseconds.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Threads over loom's.
pub mod thread {
    pub use loom::thread::{JoinHandle, Thread, current, park, yield_now};
    use std::time::Duration;

    /// Spawns a loom thread.
    pub fn spawn<F, T>(f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        loom::thread::spawn(f)
    }
    /// Spawns a loom thread (names are ignored).
    pub fn spawn_named<F, T>(_name: String, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        loom::thread::spawn(f)
    }
    /// The OS thread's name (loom names none of its threads).
    pub fn current_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }
    /// Parks (a timeout is an untimed park that may return spuriously).
    pub fn park_timeout(_d: Duration) {
        loom::thread::park()
    }
    /// Yields.
    pub fn sleep(_d: Duration) {
        loom::thread::yield_now()
    }
}

/// Clocks: always zero under loom.
pub mod time {
    /// Zero under loom.
    pub fn monotonic_ns() -> u64 {
        0
    }
    /// Zero under loom.
    pub fn now_ns() -> u64 {
        0
    }
    /// Zero under loom.
    pub fn timestamp_ns() -> u64 {
        0
    }
}

/// Declares a thread-local (loom's, so each model thread has its own).
/// Accepts std's `const { ... }` initialiser form, which loom's macro (an
/// edition-2018 `expr` matcher) does not parse, by unwrapping it.
#[macro_export]
macro_rules! shim_thread_local {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }; $($rest:tt)*) => {
        $crate::__loom::thread_local!($(#[$attr])* $vis static $name: $t = $init;);
        $crate::shim_thread_local!($($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
        $crate::__loom::thread_local!($(#[$attr])* $vis static $name: $t = $init;);
        $crate::shim_thread_local!($($rest)*);
    };
}

/// Under loom every reader uses the per-object count (as a controlled task
/// does); this module only answers that question.
pub mod rcu {
    /// Never: loom models use the counted read sections.
    pub fn available() -> bool {
        false
    }
    /// Retire tags are unused with counted sections.
    pub fn retire_tag() -> u64 {
        0
    }
}

/// A value set once and awaited (see the std version): a loom mutex and
/// condvar.
#[derive(Debug, Default)]
pub struct SetOnce<T> {
    v: loom::sync::Mutex<Option<T>>,
    cv: loom::sync::Condvar,
}

impl<T: Clone> SetOnce<T> {
    /// Empty.
    pub fn new() -> Self {
        Self {
            v: loom::sync::Mutex::new(None),
            cv: loom::sync::Condvar::new(),
        }
    }
    /// Sets the value and wakes every waiter.
    pub fn set(&self, v: T) {
        *self.v.lock().unwrap() = Some(v);
        self.cv.notify_all();
    }
    /// The value, if set.
    pub fn get(&self) -> Option<T> {
        self.v.lock().unwrap().clone()
    }
    /// Waits until the value is set and returns it.
    pub fn wait(&self) -> T {
        let mut g = self.v.lock().unwrap();
        loop {
            if let Some(v) = &*g {
                return v.clone();
            }
            g = self.cv.wait(g).unwrap();
        }
    }
}
