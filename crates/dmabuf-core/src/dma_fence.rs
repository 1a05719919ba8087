//! `dma_fence`: a one-shot completion event from a timeline (kernel
//! `drivers/dma-buf/dma-fence.c`).
//!
//! # Types
//!
//! | Rust | kernel | role |
//! |---|---|---|
//! | [`FenceContext`] | `dma_fence_context_alloc` + a driver's seqno counter | issues fences of one timeline |
//! | [`SignalHandle`] | the driver's private pointer to the fence | the only way to signal; consumed by signalling; signals with `-ECANCELED` if dropped unsignalled |
//! | [`Fence`] | `struct dma_fence *` with a reference | shared, read-only view: wait, add callbacks, query |
//! | [`Callback`] | `struct dma_fence_cb` | a registration; [`Callback::remove`] is `dma_fence_remove_callback` |
//! | [`FenceOps`] | `struct dma_fence_ops` | driver hooks: names, `enable_signaling`, `signaled`, `set_deadline`, `release` |
//!
//! # States
//!
//! | state | flags | may go to |
//! |---|---|---|
//! | pending | none | enabled, signalled |
//! | enabled | `ENABLE_SIGNAL` (someone added a callback or waits; the driver's `enable_signaling` ran once) | signalled |
//! | signalled | `SIGNALED`, then `TIMESTAMP` | (final) |
//!
//! The error code can be set only while pending or enabled (before
//! `SIGNALED`). `get_status` is 0 (pending), 1 (signalled without error) or
//! the negative error.
//!
//! # Rules
//!
//! * Signalling happens once. It stores a `CLOCK_MONOTONIC` timestamp (read
//!   through [`timestamp_ns`](crate::sync::time::timestamp_ns), the TSC-based
//!   reading that keeps a signal with no listener cheaper than a
//!   `clock_gettime`), then runs every callback exactly once in the order
//!   they were added. Unlike the kernel, callbacks run *after* the fence's
//!   lock is released, so a callback may add callbacks to other fences, or
//!   signal them, without deadlock; [`Fence::flush_callbacks`] waits for
//!   them to return.
//! * Callbacks must not block: they run on whatever thread signals. A
//!   blocking wait inside one is a wait inside a signalling section and is
//!   reported by [`lockdep`].
//! * [`Fence::is_signaled`] consults the driver's `signaled` hook but does not
//!   enable signalling; adding a callback or waiting does.
//! * A driver whose `enable_signaling` returns false has its fence signalled
//!   at once ("already passed or failed").
//! * After signalling the driver's ops are detached: names read
//!   `detached-driver` / `signaled-timeline`, as in Linux 7.1.
//!
//! # Lock rules
//!
//! The fence lock protects only the callback list. It is never held while
//! driver code or callbacks run. Flags are a single atomic word, so
//! `is_signaled` on a signalled fence is one acquire load, and signalling a
//! fence nobody listens to takes no lock at all.

use crate::errno::{self, AsErrno, Errno};
use crate::lockdep;
use crate::sync::atomic::{AtomicBits, AtomicI32, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, thread};
use crate::trace_event;
use std::any::Any;
use std::fmt;
use std::time::Duration;

/// `MAX_SCHEDULE_TIMEOUT`: a wait without a deadline.
pub const MAX_SCHEDULE_TIMEOUT: u64 = u64::MAX;

const SIGNALED: u32 = 1 << 0;
/// Unit tests only: written into the flags of a fence being freed, so that a
/// reader that reaches a freed fence through a reservation object (before
/// the allocator reuses the memory) fails loudly instead of reading a
/// plausible flag.
#[cfg(all(test, not(loom)))]
const FREED_POISON: u32 = 0xdead_0000;
const TIMESTAMP: u32 = 1 << 1;
const ENABLE_SIGNAL: u32 = 1 << 2;
/// Seqnos compare as plain 64-bit numbers (`dma_fence_init64`).
pub(crate) const SEQNO64: u32 = 1 << 3;
/// Callbacks have been added at some point: signalling must take the lock.
const HAS_CB: u32 = 1 << 4;
/// Every callback has returned (set with `TIMESTAMP` when there were none).
/// Callbacks run outside the fence lock, so the kernel's "lock and unlock
/// the fence to flush callbacks" idiom becomes a wait for this bit
/// ([`Fence::flush_callbacks`]).
const CB_DONE: u32 = 1 << 5;

/// Errors of fence calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The fence was already signalled.
    #[error("fence {context}:{seqno} already signalled")]
    AlreadySignaled {
        /// Context of the fence.
        context: u64,
        /// Seqno of the fence.
        seqno: u64,
    },
    /// An error code outside `[-MAX_ERRNO, -1]`.
    #[error("fence error {0} is not a negative errno in [-4095, -1]")]
    InvalidErrorCode(i32),
    /// Fences of different contexts cannot be ordered.
    #[error("fences of different contexts ({a} and {b}) cannot be compared")]
    DifferentContexts {
        /// First context.
        a: u64,
        /// Second context.
        b: u64,
    },
    /// `dma_fence_context_alloc(0)`.
    #[error("zero fence contexts requested")]
    ZeroContexts,
    /// A wait was interrupted through its cancellation token.
    #[error("wait interrupted")]
    Interrupted,
    /// Invalid argument (empty fence list, and similar).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A container fence was given where only leaves are allowed.
    #[error("container fence {context}:{seqno} not allowed here")]
    NestedContainer {
        /// Context of the offending fence.
        context: u64,
        /// Seqno of the offending fence.
        seqno: u64,
    },
    /// A point on a timeline that has not been reached yet.
    #[error("seqno {wanted} is later than the chain's {head}")]
    FuturePoint {
        /// The requested seqno.
        wanted: u64,
        /// The newest seqno of the chain.
        head: u64,
    },
    /// A chain operation on a fence that is not a chain node.
    #[error("fence {context}:{seqno} is not a chain node")]
    NotAChain {
        /// Context of the fence.
        context: u64,
        /// Seqno of the fence.
        seqno: u64,
    },
}

impl AsErrno for FenceError {
    fn errno(&self) -> Errno {
        match self {
            FenceError::AlreadySignaled { .. } => errno::EINVAL,
            FenceError::InvalidErrorCode(_) => errno::EINVAL,
            FenceError::DifferentContexts { .. } => errno::EINVAL,
            FenceError::ZeroContexts => errno::EINVAL,
            FenceError::Interrupted => errno::ERESTARTSYS,
            FenceError::Invalid(_) => errno::EINVAL,
            FenceError::NestedContainer { .. } => errno::EINVAL,
            FenceError::FuturePoint { .. } => errno::EINVAL,
            FenceError::NotAChain { .. } => errno::EINVAL,
        }
    }
}

/// Driver hooks (`struct dma_fence_ops`). Every method has a default except
/// the names.
pub trait FenceOps: Send + Sync + 'static {
    /// `get_driver_name`.
    fn driver_name(&self) -> &str;
    /// `get_timeline_name`.
    fn timeline_name(&self) -> &str;
    /// Called once, the first time somebody needs to be told when the fence
    /// signals. Return false if the fence has already passed or failed (it is
    /// then signalled at once; set an error on the handle before if needed).
    fn enable_signaling(&self, _fence: &Fence) -> bool {
        true
    }
    /// True only when [`enable_signaling`](Self::enable_signaling) is the
    /// default (does nothing, returns true): who enables signalling first
    /// then changes nothing but the trace, and waiters that enable it are
    /// not ordered against each other by the search. The default is false.
    fn enable_signaling_is_noop(&self) -> bool {
        false
    }
    /// Polled by [`Fence::is_signaled`]: return true when the hardware has
    /// passed this point (the fence is then signalled).
    fn signaled(&self, _fence: &Fence) -> bool {
        false
    }
    /// A deadline hint (`CLOCK_MONOTONIC` ns) by which the fence should
    /// signal.
    fn set_deadline(&self, _fence: &Fence, _deadline_ns: u64) {}
    /// Called when the last reference to the fence goes away.
    fn release(&self, _context: u64, _seqno: u64) {}
}

/// What a fence is, for the containers that must tell (`to_dma_fence_array`,
/// `to_dma_fence_chain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    /// A leaf fence with driver ops.
    Plain,
    /// The shared, signalled stub (`dma_fence_get_stub`) or a private stub.
    Stub,
    /// A `dma_fence_array`.
    Array,
    /// A `dma_fence_chain` node.
    Chain,
}

/// Crate-internal behaviour behind a fence: driver ops for leaves, built-in
/// logic for containers and stubs.
pub(crate) trait FenceImpl: Send + Sync + 'static {
    fn kind(&self) -> FenceKind;
    fn driver_name(&self) -> &str;
    fn timeline_name(&self) -> &str;
    /// Returns false if the fence has already passed (then it is signalled).
    fn enable_signaling(&self, fence: &Fence) -> bool;
    /// See [`FenceOps::enable_signaling_is_noop`].
    fn enable_signaling_is_noop(&self) -> bool {
        false
    }
    fn signaled(&self, fence: &Fence) -> bool;
    fn set_deadline(&self, fence: &Fence, deadline_ns: u64);
    fn release(&self, context: u64, seqno: u64);
    fn as_any(&self) -> &dyn Any;
}

struct DriverImpl<O: FenceOps>(O);

impl<O: FenceOps> FenceImpl for DriverImpl<O> {
    fn kind(&self) -> FenceKind {
        FenceKind::Plain
    }
    fn driver_name(&self) -> &str {
        self.0.driver_name()
    }
    fn timeline_name(&self) -> &str {
        self.0.timeline_name()
    }
    fn enable_signaling(&self, fence: &Fence) -> bool {
        self.0.enable_signaling(fence)
    }
    fn enable_signaling_is_noop(&self) -> bool {
        self.0.enable_signaling_is_noop()
    }
    fn signaled(&self, fence: &Fence) -> bool {
        self.0.signaled(fence)
    }
    fn set_deadline(&self, fence: &Fence, deadline_ns: u64) {
        self.0.set_deadline(fence, deadline_ns)
    }
    fn release(&self, context: u64, seqno: u64) {
        self.0.release(context, seqno)
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

/// Ops for fences whose driver needs nothing but names.
#[derive(Debug, Clone)]
pub struct NamedOps {
    /// Driver name.
    pub driver: String,
    /// Timeline name.
    pub timeline: String,
}

impl NamedOps {
    /// Creates ops with the given names.
    pub fn new(driver: impl Into<String>, timeline: impl Into<String>) -> Self {
        Self {
            driver: driver.into(),
            timeline: timeline.into(),
        }
    }
}

impl FenceOps for NamedOps {
    fn driver_name(&self) -> &str {
        &self.driver
    }
    fn timeline_name(&self) -> &str {
        &self.timeline
    }
    fn enable_signaling_is_noop(&self) -> bool {
        true
    }
}

struct StubImpl;

impl FenceImpl for StubImpl {
    fn kind(&self) -> FenceKind {
        FenceKind::Stub
    }
    fn driver_name(&self) -> &str {
        "stub"
    }
    fn timeline_name(&self) -> &str {
        "stub"
    }
    fn enable_signaling(&self, _: &Fence) -> bool {
        false
    }
    fn signaled(&self, _: &Fence) -> bool {
        true
    }
    fn set_deadline(&self, _: &Fence, _: u64) {}
    fn release(&self, _: u64, _: u64) {}
    fn as_any(&self) -> &dyn Any {
        self
    }
}

type CbFn = Box<dyn FnOnce(&Fence) + Send + 'static>;

struct CbList {
    next_id: u64,
    list: Vec<(u64, CbFn)>,
}

/// Fences created and not yet freed, process-wide (a plain std atomic: never
/// a scheduling point). The leak check of long runs compares it before and
/// after, as `kmemleak` would find a `dma_fence` never put.
static LIVE_FENCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many fences exist now (every thread, every execution).
pub fn live_fences() -> usize {
    LIVE_FENCES.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) struct FenceInner {
    context: u64,
    seqno: u64,
    flags: AtomicBits,
    error: AtomicI32,
    timestamp: AtomicU64,
    cbs: Mutex<CbList>,
    imp: Box<dyn FenceImpl>,
}

impl FenceInner {
    /// The signalled flag alone, for a caller known to be a real thread
    /// (no scheduling-point check).
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn signaled_flag_direct(&self) -> bool {
        let f = self.flags.load_direct(u32::MAX, Ordering::Acquire);
        #[cfg(test)]
        assert_ne!(f, FREED_POISON, "a reader reached a freed fence");
        f & SIGNALED != 0
    }

    /// The behaviour behind the fence (containers look at each other's
    /// while releasing, when no `Fence` exists any more).
    pub(crate) fn imp(&self) -> &dyn FenceImpl {
        &*self.imp
    }
}

impl Drop for FenceInner {
    fn drop(&mut self) {
        LIVE_FENCES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        trace_event!(
            "dma_fence_destroy",
            "driver={} timeline={} context={} seqno={}",
            self.imp.driver_name(),
            self.imp.timeline_name(),
            self.context,
            self.seqno
        );
        self.imp.release(self.context, self.seqno);
        #[cfg(all(test, not(loom)))]
        {
            *self.flags.get_mut() = FREED_POISON;
        }
    }
}

/// A shared reference to a fence (`struct dma_fence *` plus a reference).
/// Cloning takes a reference; dropping puts it.
#[derive(Clone)]
pub struct Fence(pub(crate) Arc<FenceInner>);

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Fence({}:{} {:?} {})",
            self.context(),
            self.seqno(),
            self.kind(),
            if self.test_signaled_flag() {
                "signalled"
            } else {
                "unsignalled"
            }
        )
    }
}

impl PartialEq for Fence {
    /// Pointer equality: two references to the same fence.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Fence {}

/// `dma_fence_context_alloc(n)`: the first of `n` consecutive context ids.
/// Ids start at 1; 0 belongs to the stub. Inside a controlled execution the
/// ids come from the execution's own counter, so a replay sees the same ids.
pub fn context_alloc(n: u32) -> Result<u64, FenceError> {
    use crate::sync::atomic::global::AtomicU64 as GlobalU64;
    static NEXT: GlobalU64 = GlobalU64::new(1);
    if n == 0 {
        return Err(FenceError::ZeroContexts);
    }
    #[cfg(not(loom))]
    if let Some(base) = crate::sync::sched::local_counter("fence_context", n as u64) {
        return Ok(base);
    }
    Ok(NEXT.fetch_add(n as u64, crate::sync::atomic::Ordering::Relaxed))
}

/// A timeline: allocates one context and hands out fences with increasing
/// seqnos (`dma_fence_init` with a driver's counter).
pub struct FenceContext {
    context: u64,
    next_seqno: AtomicU64,
    seqno64: bool,
    ops: Arc<dyn FenceOps>,
}

impl fmt::Debug for FenceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceContext")
            .field("context", &self.context)
            .field("driver", &self.ops.driver_name())
            .field("timeline", &self.ops.timeline_name())
            .finish()
    }
}

/// Ops shared by several fences (a timeline's): every call goes to the
/// shared value. Written once here, so a driver that keeps its ops in an
/// `Arc` passes a clone of it wherever ops are wanted.
impl<T: FenceOps + ?Sized> FenceOps for Arc<T> {
    fn driver_name(&self) -> &str {
        (**self).driver_name()
    }
    fn timeline_name(&self) -> &str {
        (**self).timeline_name()
    }
    fn enable_signaling(&self, fence: &Fence) -> bool {
        (**self).enable_signaling(fence)
    }
    fn enable_signaling_is_noop(&self) -> bool {
        (**self).enable_signaling_is_noop()
    }
    fn signaled(&self, fence: &Fence) -> bool {
        (**self).signaled(fence)
    }
    fn set_deadline(&self, fence: &Fence, deadline_ns: u64) {
        (**self).set_deadline(fence, deadline_ns)
    }
    fn release(&self, context: u64, seqno: u64) {
        (**self).release(context, seqno)
    }
}

impl FenceContext {
    /// A new timeline with 32-bit wrap-around seqno ordering; the first fence
    /// gets seqno 1.
    pub fn new(ops: impl FenceOps) -> Self {
        Self::with_ops(Arc::new(ops), false)
    }

    /// A new timeline with plain 64-bit seqno ordering (`dma_fence_init64`).
    pub fn new64(ops: impl FenceOps) -> Self {
        Self::with_ops(Arc::new(ops), true)
    }

    /// A new timeline named by a driver and timeline name.
    pub fn named(driver: &str, timeline: &str) -> Self {
        Self::new(NamedOps::new(driver, timeline))
    }

    fn with_ops(ops: Arc<dyn FenceOps>, seqno64: bool) -> Self {
        Self {
            // One context never fails to allocate (n = 1).
            context: context_alloc(1).unwrap_or(1),
            next_seqno: AtomicU64::new(1),
            seqno64,
            ops,
        }
    }

    /// The context id.
    pub fn context(&self) -> u64 {
        self.context
    }

    /// Issues the next fence of the timeline.
    pub fn create(&self) -> (Fence, SignalHandle) {
        let seqno = self.next_seqno.fetch_add(1, Ordering::Relaxed);
        self.create_with_seqno(seqno)
    }

    /// Issues a fence with an explicit seqno (drivers that number points
    /// themselves, tests of wrap-around).
    pub fn create_with_seqno(&self, seqno: u64) -> (Fence, SignalHandle) {
        let ops = self.ops.clone();
        if self.seqno64 {
            Fence::init64(ops, self.context, seqno)
        } else {
            Fence::init(ops, self.context, seqno)
        }
    }
}

impl Fence {
    /// `dma_fence_init`: a fence with driver ops on `context` at `seqno`,
    /// ordered with 32-bit wrap-around.
    pub fn init(ops: impl FenceOps, context: u64, seqno: u64) -> (Fence, SignalHandle) {
        let f = Self::from_impl(Box::new(DriverImpl(ops)), context, seqno, 0);
        let h = SignalHandle {
            fence: Some(f.clone()),
        };
        (f, h)
    }

    /// `dma_fence_init64`: as [`init`](Self::init) with 64-bit ordering.
    pub fn init64(ops: impl FenceOps, context: u64, seqno: u64) -> (Fence, SignalHandle) {
        let f = Self::from_impl(Box::new(DriverImpl(ops)), context, seqno, SEQNO64);
        let h = SignalHandle {
            fence: Some(f.clone()),
        };
        (f, h)
    }

    pub(crate) fn from_impl(
        imp: Box<dyn FenceImpl>,
        context: u64,
        seqno: u64,
        flags: u32,
    ) -> Fence {
        LIVE_FENCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = Fence(Arc::new(FenceInner {
            context,
            seqno,
            flags: AtomicBits::new(flags),
            error: AtomicI32::new(0),
            timestamp: AtomicU64::new(0),
            cbs: Mutex::new(CbList {
                next_id: 0,
                list: Vec::new(),
            }),
            imp,
        }));
        // The ops' names directly: `Fence::driver_name` loads the signalled
        // flag, a scheduling point that would exist only with tracing on.
        trace_event!(
            "dma_fence_init",
            "driver={} timeline={} context={} seqno={}",
            f.0.imp.driver_name(),
            f.0.imp.timeline_name(),
            context,
            seqno
        );
        f
    }

    /// A fresh fence that is already signalled, with timestamp `ts_ns`
    /// (`dma_fence_allocate_private_stub`).
    pub fn private_stub(ts_ns: u64) -> Fence {
        let f = Self::from_impl(Box::new(StubImpl), 0, 0, SEQNO64);
        f.0.timestamp.store(ts_ns, Ordering::Relaxed);
        f.0.flags
            .fetch_or(SIGNALED | TIMESTAMP | CB_DONE, 0, Ordering::Release);
        f
    }

    /// The shared, signalled stub fence (context 0, seqno 0) with the
    /// process start time as timestamp (`dma_fence_get_stub`).
    pub fn stub() -> Fence {
        static STUB: crate::sync::OnceLock<Fence> = crate::sync::OnceLock::new();
        STUB.get_or_init(|| Fence::private_stub(crate::sync::time::monotonic_ns()))
            .clone()
    }

    /// Context id.
    pub fn context(&self) -> u64 {
        self.0.context
    }

    /// Sequence number within the context.
    pub fn seqno(&self) -> u64 {
        self.0.seqno
    }

    /// Whether seqnos compare as 64-bit numbers.
    pub fn is_seqno64(&self) -> bool {
        self.0.flags.load(SEQNO64, Ordering::Relaxed) != 0
    }

    /// Leaf, stub, array or chain.
    pub fn kind(&self) -> FenceKind {
        self.0.imp.kind()
    }

    /// Whether this is a container (array or chain).
    pub fn is_container(&self) -> bool {
        matches!(self.kind(), FenceKind::Array | FenceKind::Chain)
    }

    pub(crate) fn imp(&self) -> &dyn FenceImpl {
        &*self.0.imp
    }

    /// `dma_fence_driver_name`: `detached-driver` once signalled, for every
    /// kind of fence (leaves, stubs, arrays, chains: 7.x detaches the ops
    /// of any signalled fence).
    pub fn driver_name(&self) -> &str {
        if self.test_signaled_flag() {
            "detached-driver"
        } else {
            self.0.imp.driver_name()
        }
    }

    /// `dma_fence_timeline_name`: `signaled-timeline` once signalled, for
    /// every kind of fence.
    pub fn timeline_name(&self) -> &str {
        if self.test_signaled_flag() {
            "signaled-timeline"
        } else {
            self.0.imp.timeline_name()
        }
    }

    /// Whether the driver ops have been detached (true once signalled; the
    /// kernel test checks `f->ops == NULL`).
    pub fn ops_detached(&self) -> bool {
        self.test_signaled_flag()
    }

    /// Pointer identity (two references to one fence).
    pub fn ptr_eq(&self, other: &Fence) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A stable identity for maps and traces.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// `dma_fence_test_signaled_flag`: the flag only, no driver poll.
    #[inline]
    pub fn test_signaled_flag(&self) -> bool {
        self.0.flags.load(SIGNALED, Ordering::Acquire) != 0
    }

    /// `dma_fence_is_signaled`: the flag, else the driver's `signaled` hook
    /// (which signals the fence when it answers true). Does not enable
    /// signalling.
    #[inline]
    pub fn is_signaled(&self) -> bool {
        if self.test_signaled_flag() {
            return true;
        }
        self.is_signaled_slow()
    }

    #[cold]
    fn is_signaled_slow(&self) -> bool {
        if self.0.imp.signaled(self) {
            let _ = self.signal_timestamp_internal(crate::sync::time::timestamp_ns());
            return true;
        }
        false
    }

    /// `dma_fence_get_status`: 0 pending, 1 signalled, or the negative error.
    pub fn get_status(&self) -> i32 {
        if !self.is_signaled() {
            return 0;
        }
        self.error().unwrap_or(1)
    }

    /// The error set on the fence, if any (negative errno).
    pub fn error(&self) -> Option<i32> {
        match self.0.error.load(Ordering::Acquire) {
            0 => None,
            e => Some(e),
        }
    }

    /// `dma_fence_timestamp`: the signalling time, once the fence has
    /// signalled. Waits out the short window between `SIGNALED` and
    /// `TIMESTAMP`, as sync_file does.
    pub fn timestamp(&self) -> Option<u64> {
        loop {
            let f = self.0.flags.load(SIGNALED | TIMESTAMP, Ordering::Acquire);
            if f & SIGNALED == 0 {
                return None;
            }
            if f & TIMESTAMP != 0 {
                return Some(self.0.timestamp.load(Ordering::Acquire));
            }
            thread::yield_now();
        }
    }

    pub(crate) fn set_error_internal(&self, err: i32) -> Result<(), FenceError> {
        if !(-errno::MAX_ERRNO..=-1).contains(&err) {
            return Err(FenceError::InvalidErrorCode(err));
        }
        if self.test_signaled_flag() {
            return Err(self.already());
        }
        self.0.error.store(err, Ordering::Release);
        Ok(())
    }

    fn already(&self) -> FenceError {
        FenceError::AlreadySignaled {
            context: self.context(),
            seqno: self.seqno(),
        }
    }

    /// Signals with the given timestamp. Crate-internal: containers signal
    /// their own fences; everyone else goes through [`SignalHandle`].
    pub(crate) fn signal_timestamp_internal(&self, ts_ns: u64) -> Result<(), FenceError> {
        let flags = &self.0.flags;
        // One atomic step decides both "first signaller" and "callbacks
        // were added": `add_callback` sets `HAS_CB` and tests `SIGNALED` in
        // one step under the lock, so either it sees `SIGNALED` (and hands
        // its callback back) or this sees `HAS_CB` (and takes the list
        // under the lock, after the callback is on it).
        let old = flags.fetch_or(SIGNALED, SIGNALED | HAS_CB, Ordering::AcqRel);
        if old & SIGNALED != 0 {
            return Err(self.already());
        }
        if old & HAS_CB != 0 {
            return self.signal_slow(ts_ns);
        }
        self.0.timestamp.store(ts_ns, Ordering::Relaxed);
        flags.fetch_or(TIMESTAMP | CB_DONE, 0, Ordering::Release);
        self.trace_signaled();
        Ok(())
    }

    /// The rest of a signal whose `SIGNALED` bit the caller set, on a fence
    /// that had callbacks added: runs them.
    #[cold]
    fn signal_slow(&self, ts_ns: u64) -> Result<(), FenceError> {
        let list = std::mem::take(&mut self.0.cbs.lock().list);
        self.0.timestamp.store(ts_ns, Ordering::Relaxed);
        self.0.flags.fetch_or(TIMESTAMP, 0, Ordering::Release);
        self.trace_signaled();
        // Ends the section and publishes CB_DONE even if a callback panics
        // (lockdep in panic mode does that on purpose), so the thread's
        // section depth stays balanced and `flush_callbacks` cannot hang.
        struct Done<'a>(&'a Fence, lockdep::SignallingCookie);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                lockdep::end_signalling(self.1);
                self.0.0.flags.fetch_or(CB_DONE, 0, Ordering::Release);
            }
        }
        let _done = Done(self, lockdep::begin_signalling_at("dma_fence callbacks"));
        for (_, cb) in list {
            cb(self);
        }
        Ok(())
    }

    /// Callbacks registered and not yet run (tests of the containers).
    #[cfg(test)]
    pub(crate) fn pending_callbacks(&self) -> usize {
        self.0.cbs.lock().list.len()
    }

    /// Waits until every callback of a signalled fence has returned; returns
    /// at once on an unsignalled fence. Callbacks run outside the fence lock,
    /// so this replaces the kernel's idiom of locking and unlocking a
    /// signalled fence to flush its callbacks. A blocking wait: calling it
    /// from one of the fence's own callbacks would never return, and is
    /// reported by [`lockdep`] like any wait inside a
    /// signalling section.
    pub fn flush_callbacks(&self) {
        if !self.test_signaled_flag() {
            return;
        }
        lockdep::might_wait("dma_fence_flush_callbacks");
        while self.0.flags.load(CB_DONE, Ordering::Acquire) == 0 {
            thread::yield_now();
        }
    }

    fn trace_enable_signal(&self) {
        trace_event!(
            "dma_fence_enable_signal",
            "driver={} timeline={} context={} seqno={}",
            self.0.imp.driver_name(),
            self.0.imp.timeline_name(),
            self.context(),
            self.seqno()
        );
    }

    fn trace_signaled(&self) {
        trace_event!(
            "dma_fence_signaled",
            "driver={} timeline={} context={} seqno={}",
            self.0.imp.driver_name(),
            self.0.imp.timeline_name(),
            self.context(),
            self.seqno()
        );
    }

    /// `dma_fence_enable_sw_signaling`: makes sure the driver will signal the
    /// fence (runs its `enable_signaling` once). Returns true if the fence is
    /// still pending afterwards.
    pub fn enable_sw_signaling(&self) -> bool {
        if self.0.imp.enable_signaling_is_noop() {
            // Nothing runs on the first enable but its trace row: the flag
            // is set idempotently, so two waiters enabling one fence are
            // not ordered against each other.
            let (old, first) =
                self.0
                    .flags
                    .set_idempotent(ENABLE_SIGNAL, SIGNALED, Ordering::AcqRel);
            if old & SIGNALED != 0 {
                return false;
            }
            if first {
                self.trace_enable_signal();
            }
            return !self.test_signaled_flag();
        }
        let old = self
            .0
            .flags
            .fetch_or(ENABLE_SIGNAL, SIGNALED | ENABLE_SIGNAL, Ordering::AcqRel);
        if old & SIGNALED != 0 {
            return false;
        }
        if old & ENABLE_SIGNAL == 0 {
            self.trace_enable_signal();
            if !self.0.imp.enable_signaling(self) {
                let _ = self.signal_timestamp_internal(crate::sync::time::timestamp_ns());
                return false;
            }
        }
        !self.test_signaled_flag()
    }

    /// `dma_fence_add_callback`: runs `f` once when the fence signals.
    /// Enables signalling. On an already signalled fence the closure is
    /// handed back unrun (`-ENOENT` in the kernel).
    pub fn add_callback<F>(&self, f: F) -> Result<Callback, F>
    where
        F: FnOnce(&Fence) + Send + 'static,
    {
        if self.test_signaled_flag() || !self.enable_sw_signaling() {
            return Err(f);
        }
        self.add_callback_enabled(f)
    }

    /// [`add_callback`](Self::add_callback) once the caller has enabled
    /// signalling (as `dma_fence_default_wait` does, once).
    fn add_callback_enabled<F>(&self, f: F) -> Result<Callback, F>
    where
        F: FnOnce(&Fence) + Send + 'static,
    {
        let mut cbs = self.0.cbs.lock();
        let old = self.0.flags.fetch_or(HAS_CB, SIGNALED, Ordering::AcqRel);
        if old & SIGNALED != 0 {
            return Err(f);
        }
        let id = cbs.next_id;
        cbs.next_id += 1;
        cbs.list.push((id, Box::new(f)));
        Ok(Callback {
            fence: self.clone(),
            id,
        })
    }

    fn remove_callback_id(&self, id: u64) -> bool {
        // Once `SIGNALED` is set the signaller owns the list: the callback
        // has run or will run. Deciding that without the lock keeps two
        // waiters that both saw the fence signal from ordering each other.
        if self.test_signaled_flag() {
            return false;
        }
        let mut cbs = self.0.cbs.lock();
        match cbs.list.iter().position(|(i, _)| *i == id) {
            Some(pos) => {
                // Dropped after the lock is released: the closure may own
                // fences whose release runs driver code.
                let entry = cbs.list.remove(pos);
                drop(cbs);
                drop(entry);
                true
            }
            None => false,
        }
    }

    /// `dma_fence_wait_timeout`. `timeout_ns` is the kernel's `timeout`
    /// argument in nanoseconds ([`MAX_SCHEDULE_TIMEOUT`] for none). Returns
    /// the time left (at least 1) when the fence signalled, 0 on timeout, and
    /// with a zero timeout polls: 1 if signalled, else 0. `cancel` makes the
    /// wait interruptible (`-ERESTARTSYS`).
    pub fn wait_timeout(
        &self,
        cancel: Option<&CancelToken>,
        timeout_ns: u64,
    ) -> Result<u64, FenceError> {
        lockdep::might_wait("dma_fence_wait");
        let ret = if timeout_ns == 0 { 1 } else { timeout_ns };
        if self.is_signaled() {
            return Ok(ret);
        }
        trace_event!(
            "dma_fence_wait_start",
            "driver={} timeline={} context={} seqno={}",
            self.0.imp.driver_name(),
            self.0.imp.timeline_name(),
            self.context(),
            self.seqno()
        );
        let r = self.default_wait(cancel, timeout_ns);
        trace_event!(
            "dma_fence_wait_end",
            "driver={} timeline={} context={} seqno={}",
            self.0.imp.driver_name(),
            self.0.imp.timeline_name(),
            self.context(),
            self.seqno()
        );
        r
    }

    fn default_wait(
        &self,
        cancel: Option<&CancelToken>,
        timeout_ns: u64,
    ) -> Result<u64, FenceError> {
        if !self.enable_sw_signaling() {
            return Ok(if timeout_ns == 0 { 1 } else { timeout_ns });
        }
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(FenceError::Interrupted);
        }
        if timeout_ns == 0 {
            return Ok(0);
        }
        let waiter = Arc::new(Waiter::new());
        let w2 = waiter.clone();
        let reg = match self.add_callback_enabled(move |_| w2.wake()) {
            Ok(r) => r,
            Err(_) => return Ok(timeout_ns),
        };
        let _cancel_reg = cancel.map(|c| c.register(waiter.clone()));
        let r = waiter.wait_until(|| self.test_signaled_flag(), cancel, timeout_ns);
        reg.remove();
        r
    }

    /// `dma_fence_wait`: waits without a deadline. `Ok(())` once signalled.
    pub fn wait(&self, cancel: Option<&CancelToken>) -> Result<(), FenceError> {
        self.wait_timeout(cancel, MAX_SCHEDULE_TIMEOUT).map(|_| ())
    }

    /// `dma_fence_set_deadline`: forwards the hint to the driver while the
    /// fence is pending (arrays forward it to their children). Pending means
    /// `dma_fence_is_signaled` is false: the driver's `signaled` hook is
    /// asked first, and a fence it reports done is signalled instead of
    /// being given a deadline.
    pub fn set_deadline(&self, deadline_ns: u64) {
        if !self.is_signaled() {
            self.0.imp.set_deadline(self, deadline_ns);
        }
    }

    /// `dma_fence_describe`: `<ctx>:<seqno> <timeline> <driver> [un]signalled`.
    pub fn describe(&self) -> String {
        let signalled = self.is_signaled();
        format!(
            "{}:{} {} {} {}",
            self.context(),
            self.seqno(),
            self.timeline_name(),
            self.driver_name(),
            if signalled {
                "signalled"
            } else {
                "unsignalled"
            }
        )
    }
}

/// `__dma_fence_is_later` on raw seqnos.
pub fn seqno_is_later(f1: u64, f2: u64, seqno64: bool) -> bool {
    if seqno64 {
        f1 > f2
    } else {
        (f1 as u32).wrapping_sub(f2 as u32) as i32 > 0
    }
}

impl Fence {
    fn same_context(&self, other: &Fence) -> Result<(), FenceError> {
        if self.context() != other.context() {
            return Err(FenceError::DifferentContexts {
                a: self.context(),
                b: other.context(),
            });
        }
        Ok(())
    }

    /// `dma_fence_is_later`: whether `self` is a later point than `other` on
    /// the same timeline.
    pub fn is_later(&self, other: &Fence) -> Result<bool, FenceError> {
        self.same_context(other)?;
        Ok(seqno_is_later(
            self.seqno(),
            other.seqno(),
            self.is_seqno64(),
        ))
    }

    /// `dma_fence_is_later_or_same`: as `is_later`, but the same fence counts.
    pub fn is_later_or_same(&self, other: &Fence) -> Result<bool, FenceError> {
        if self.ptr_eq(other) {
            return Ok(true);
        }
        self.is_later(other)
    }

    /// `dma_fence_later`: the later of two fences of one context, or `None`
    /// if that one has already signalled.
    pub fn later(&self, other: &Fence) -> Result<Option<Fence>, FenceError> {
        let l = if self.is_later(other)? { self } else { other };
        Ok(if l.is_signaled() {
            None
        } else {
            Some(l.clone())
        })
    }
}

/// A callback registration (`struct dma_fence_cb` on a fence's list).
/// Dropping it leaves the callback in place; [`remove`](Self::remove) takes it
/// off.
pub struct Callback {
    fence: Fence,
    id: u64,
}

impl fmt::Debug for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Callback({:?}#{})", self.fence, self.id)
    }
}

impl Callback {
    /// `dma_fence_remove_callback`: true if the callback was still pending
    /// (it will now never run), false if it has run or is running.
    pub fn remove(self) -> bool {
        self.fence.remove_callback_id(self.id)
    }

    /// The fence the callback is registered on.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

/// The only way to signal a fence. Consumed by signalling; dropping it
/// unsignalled signals the fence with `-ECANCELED`, so no waiter is left
/// hanging by a driver that forgot its fence.
pub struct SignalHandle {
    fence: Option<Fence>,
}

impl fmt::Debug for SignalHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignalHandle({:?})", self.fence)
    }
}

impl SignalHandle {
    fn f(&self) -> &Fence {
        // Only `take_fence` clears it, and it consumes the handle.
        self.fence.as_ref().expect("SignalHandle without a fence")
    }

    fn take_fence(mut self) -> Fence {
        self.fence.take().expect("SignalHandle without a fence")
    }

    /// The fence this handle signals.
    pub fn fence(&self) -> &Fence {
        self.f()
    }

    /// `dma_fence_set_error`: must be a negative errno and must come before
    /// signalling.
    pub fn set_error(&self, err: i32) -> Result<(), FenceError> {
        self.f().set_error_internal(err)
    }

    /// `dma_fence_signal`: signals now. Fails if the fence already signalled
    /// (through its driver's `signaled` hook).
    pub fn signal(self) -> Result<(), FenceError> {
        self.signal_timestamp(crate::sync::time::timestamp_ns())
    }

    /// `dma_fence_signal_timestamp`.
    pub fn signal_timestamp(self, ts_ns: u64) -> Result<(), FenceError> {
        let f = self.take_fence();
        f.signal_timestamp_internal(ts_ns)
    }

    /// Sets the error, then signals.
    pub fn signal_with_error(self, err: i32) -> Result<(), FenceError> {
        self.set_error(err)?;
        self.signal()
    }

    /// `dma_fence_check_and_signal`: signals and returns whether the fence
    /// had already signalled.
    pub fn check_and_signal(self) -> bool {
        self.signal().is_err()
    }
}

impl Drop for SignalHandle {
    fn drop(&mut self) {
        if let Some(f) = self.fence.take()
            && !f.test_signaled_flag()
        {
            let _ = f.set_error_internal(errno::ECANCELED.to_negative());
            let _ = f.signal_timestamp_internal(crate::sync::time::timestamp_ns());
        }
    }
}

/// A thread waiting for an event: the thread to unpark. Whoever wakes it
/// has made the waited-for condition true first; the waiter re-checks the
/// condition after every wake-up (spurious ones included).
pub(crate) struct Waiter {
    thread: thread::Thread,
}

impl Waiter {
    pub(crate) fn new() -> Self {
        Self {
            thread: thread::current(),
        }
    }

    pub(crate) fn wake(&self) {
        self.thread.unpark();
    }

    /// Parks until `done()` holds, the waiter is woken with `done()` true,
    /// the token is cancelled, or the timeout passes. Returns the remaining
    /// time (at least 1) on success.
    pub(crate) fn wait_until(
        &self,
        mut done: impl FnMut() -> bool,
        cancel: Option<&CancelToken>,
        timeout_ns: u64,
    ) -> Result<u64, FenceError> {
        // No clock read for an untimed wait.
        let deadline = (timeout_ns != MAX_SCHEDULE_TIMEOUT)
            .then(|| crate::sync::time::now_ns().saturating_add(timeout_ns));
        loop {
            if done() {
                return Ok(match deadline {
                    None => MAX_SCHEDULE_TIMEOUT,
                    Some(d) => d.saturating_sub(crate::sync::time::now_ns()).max(1),
                });
            }
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return Err(FenceError::Interrupted);
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = crate::sync::time::now_ns();
                    if now >= d {
                        return Ok(0);
                    }
                    thread::park_timeout(Duration::from_nanos(d - now));
                }
            }
        }
    }
}

/// Interrupts waits, as a pending signal interrupts an interruptible wait in
/// the kernel (`-ERESTARTSYS`).
#[derive(Clone, Default)]
pub struct CancelToken(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    cancelled: crate::sync::atomic::AtomicBool,
    waiters: Mutex<Vec<(u64, Arc<Waiter>)>>,
    next: crate::sync::atomic::AtomicU64,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CancelToken(cancelled={})", self.is_cancelled())
    }
}

/// Deregisters a waiter from a token on drop.
pub(crate) struct CancelRegistration {
    token: CancelToken,
    id: u64,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.token.0.waiters.lock().retain(|(i, _)| *i != self.id);
    }
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: every current and future interruptible wait on this token
    /// returns [`FenceError::Interrupted`].
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        let ws: Vec<_> = self
            .0
            .waiters
            .lock()
            .iter()
            .map(|(_, w)| w.clone())
            .collect();
        for w in ws {
            w.wake();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn register(&self, w: Arc<Waiter>) -> CancelRegistration {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.0.waiters.lock().push((id, w));
        CancelRegistration {
            token: self.clone(),
            id,
        }
    }
}

/// Result of [`wait_any_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitAny {
    /// Time left (at least 1) if a fence signalled, 0 on timeout.
    pub remaining_ns: u64,
    /// Index of the first signalled fence, if any.
    pub index: Option<usize>,
}

/// `dma_fence_wait_any_timeout`: waits until any of `fences` signals.
/// An empty list is `-EINVAL`. A zero timeout polls.
pub fn wait_any_timeout(
    fences: &[Fence],
    cancel: Option<&CancelToken>,
    timeout_ns: u64,
) -> Result<WaitAny, FenceError> {
    if fences.is_empty() {
        return Err(FenceError::Invalid("wait_any on an empty fence list"));
    }
    lockdep::might_wait("dma_fence_wait_any_timeout");
    let first = || fences.iter().position(Fence::is_signaled);
    if timeout_ns == 0 {
        return Ok(match first() {
            Some(i) => WaitAny {
                remaining_ns: 1,
                index: Some(i),
            },
            None => WaitAny {
                remaining_ns: 0,
                index: None,
            },
        });
    }
    let waiter = Arc::new(Waiter::new());
    let mut regs = Vec::with_capacity(fences.len());
    for (i, f) in fences.iter().enumerate() {
        let w = waiter.clone();
        match f.add_callback(move |_| w.wake()) {
            Ok(r) => regs.push(r),
            Err(_) => {
                for r in regs {
                    r.remove();
                }
                return Ok(WaitAny {
                    remaining_ns: timeout_ns.max(1),
                    index: Some(i),
                });
            }
        }
    }
    let _c = cancel.map(|c| c.register(waiter.clone()));
    let r = waiter.wait_until(|| first().is_some(), cancel, timeout_ns);
    for r in regs {
        r.remove();
    }
    let remaining_ns = r?;
    Ok(WaitAny {
        remaining_ns,
        index: if remaining_ns > 0 { first() } else { None },
    })
}

/// Test doubles shared by the fence, container and sync_file tests.
#[cfg(test)]
pub(crate) mod test_ops {
    use super::{Fence, FenceOps};
    use crate::sync::Arc;
    use crate::sync::atomic::{AtomicU64, Ordering};

    /// Fence ops that record the last deadline they were given.
    pub(crate) struct DeadlineRecorder(pub(crate) Arc<AtomicU64>);

    impl FenceOps for DeadlineRecorder {
        fn driver_name(&self) -> &str {
            "d"
        }
        fn timeline_name(&self) -> &str {
            "t"
        }
        fn set_deadline(&self, _: &Fence, d: u64) {
            self.0.store(d, Ordering::SeqCst);
        }
    }
}
