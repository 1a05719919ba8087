//! `dma_fence_array`: one fence that signals once every fence of a fixed set
//! has (kernel `drivers/dma-buf/dma-fence-array.c`).
//!
//! # States
//!
//! | state | `num_pending` | may go to |
//! |---|---|---|
//! | idle | `n` (nobody listens; [`Fence::is_signaled`] polls the children) | armed, signalled |
//! | armed | `n - (children seen signalled)`: `enable_signaling` put one callback on every child | signalled |
//! | signalled | 0 (or anything, if a poll saw every child signalled first) | (final) |
//!
//! The first child error to be seen wins and becomes the array's error, set
//! just before the array signals (the kernel's `PENDING_ERROR` dance, with a
//! separate word instead of a sentinel in `base.error`). When signalling is
//! not enabled and a poll finds every child signalled, the first error in
//! child order is used.
//!
//! # Rules
//!
//! * Arrays do not nest: a child that is itself an array or a chain is
//!   refused with [`FenceError::NestedContainer`] (the kernel WARNs and asks
//!   callers to flatten, since nesting recurses on the kernel stack).
//! * An empty array is refused with [`FenceError::Invalid`]: the kernel
//!   WARNs on `num_fences == 0`, and such an array would report signalled to
//!   a poll but never wake a waiter.
//! * [`Fence::set_deadline`] on an array forwards the deadline to every
//!   child.
//! * Driver name `dma_fence_array`, timeline `unbound`.
//!
//! # Lifetime (a deliberate difference from the kernel)
//!
//! The callbacks an armed array puts on its children hold only a weak
//! reference to it, so a pending child never keeps an array alive and no
//! reference cycle exists. An array therefore lives exactly as long as
//! somebody holds a [`Fence`] to it (a waiter, a [`Callback`] registration,
//! a sync_file, a reservation object). Dropping the last one frees it, takes
//! its callbacks off the children, and drops unrun any callback that was
//! added to the array and then abandoned together with every reference.
//! Keep the registration when the notification matters.
//!
//! # Lock rules
//!
//! The array has no lock of its own besides the list of its registrations
//! on the children, which is only touched when arming and on release. The
//! completion path is two atomics: a `cmpxchg` for the error and a
//! decrement of `num_pending`; the child whose callback brings it to zero
//! signals the array on its own signalling thread.

use crate::dma_fence::{Callback, Fence, FenceError, FenceImpl, FenceInner, FenceKind};
use crate::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use crate::sync::{Mutex, Weak};
use std::any::Any;
use std::fmt;

/// The container behind an array fence (`struct dma_fence_array`). Obtain it
/// from a fence with [`FenceArray::from_fence`] (`to_dma_fence_array`).
pub struct FenceArray {
    fences: Vec<Fence>,
    num_pending: AtomicUsize,
    first_error: AtomicI32,
    regs: Mutex<Vec<Callback>>,
}

impl fmt::Debug for FenceArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceArray")
            .field("fences", &self.fences)
            .field("num_pending", &self.num_pending.load(Ordering::Relaxed))
            .finish()
    }
}

impl FenceArray {
    /// `dma_fence_array_create`: an array fence on `context` at `seqno` over
    /// `fences` (taken by value, as the kernel takes the references).
    /// Refuses an empty list and container children.
    pub fn create(fences: Vec<Fence>, context: u64, seqno: u64) -> Result<Fence, FenceError> {
        if fences.is_empty() {
            return Err(FenceError::Invalid("dma_fence_array with no fences"));
        }
        if let Some(c) = fences.iter().find(|f| f.is_container()) {
            return Err(FenceError::NestedContainer {
                context: c.context(),
                seqno: c.seqno(),
            });
        }
        let n = fences.len();
        let imp = FenceArray {
            fences,
            num_pending: AtomicUsize::new(n),
            first_error: AtomicI32::new(0),
            regs: Mutex::new(Vec::new()),
        };
        Ok(Fence::from_impl(Box::new(imp), context, seqno, 0))
    }

    /// `to_dma_fence_array`: the array behind `fence`, or `None` if it is not
    /// an array.
    pub fn from_fence(fence: &Fence) -> Option<&FenceArray> {
        fence.imp().as_any().downcast_ref::<FenceArray>()
    }

    /// The children of an array fence (cloned references), or `None` if
    /// `fence` is not an array.
    pub fn children(fence: &Fence) -> Option<Vec<Fence>> {
        Self::from_fence(fence).map(|a| a.fences.clone())
    }

    /// The children, in creation order.
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }

    /// `num_fences`.
    pub fn num_fences(&self) -> usize {
        self.fences.len()
    }

    /// Children whose completion the array has not yet counted (only
    /// decreases once signalling is enabled).
    pub fn num_pending(&self) -> usize {
        self.num_pending.load(Ordering::Acquire)
    }

    /// Records a child's error if it is the first one seen.
    fn note_error(&self, child: &Fence) {
        if let Some(e) = child.error() {
            let _ = self
                .first_error
                .compare_exchange(0, e, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Copies the winning child error onto the array; must precede the
    /// array's signal. Losing a race with another completer only means the
    /// same value is offered twice, or the array has already signalled.
    fn publish_error(&self, array: &Fence) {
        let e = self.first_error.load(Ordering::Acquire);
        if e != 0 {
            let _ = array.set_error_internal(e);
        }
    }

    /// A child has signalled (its callback ran, or it was found signalled
    /// while arming). Returns true if it was the last one.
    fn child_done(&self, child: &Fence) -> bool {
        self.note_error(child);
        self.num_pending.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

impl Drop for FenceArray {
    fn drop(&mut self) {
        // The callbacks on still-pending children would find the weak
        // reference dead and do nothing; taking them off now frees them
        // instead of leaving them until the children signal.
        for r in std::mem::take(self.regs.get_mut()) {
            r.remove();
        }
    }
}

/// The callback an armed array puts on each child.
fn child_callback(array: Weak<FenceInner>) -> impl FnOnce(&Fence) + Send + 'static {
    move |child| {
        let Some(inner) = array.upgrade() else {
            return;
        };
        let fence = Fence(inner);
        let Some(a) = FenceArray::from_fence(&fence) else {
            return;
        };
        if a.child_done(child) {
            a.publish_error(&fence);
            let _ = fence.signal_timestamp_internal(crate::sync::time::timestamp_ns());
        }
    }
}

impl FenceImpl for FenceArray {
    fn kind(&self) -> FenceKind {
        FenceKind::Array
    }
    fn driver_name(&self) -> &str {
        "dma_fence_array"
    }
    fn timeline_name(&self) -> &str {
        "unbound"
    }

    /// `dma_fence_array_enable_signaling`: one callback per child; a child
    /// already signalled is counted at once. Returns false (the core then
    /// signals the array) when every child was already signalled.
    fn enable_signaling(&self, fence: &Fence) -> bool {
        let weak = crate::sync::Arc::downgrade(&fence.0);
        let mut regs = Vec::with_capacity(self.fences.len());
        for child in &self.fences {
            match child.add_callback(child_callback(weak.clone())) {
                Ok(r) => regs.push(r),
                Err(_) => {
                    if self.child_done(child) {
                        self.publish_error(fence);
                        *self.regs.lock() = regs;
                        return false;
                    }
                }
            }
        }
        *self.regs.lock() = regs;
        true
    }

    /// `dma_fence_array_signaled`: every child counted, or (when nobody
    /// armed the array, or the callbacks are still running) every child
    /// found signalled by a poll.
    fn signaled(&self, fence: &Fence) -> bool {
        if self.num_pending.load(Ordering::Acquire) == 0 {
            self.publish_error(fence);
            return true;
        }
        if !self.fences.iter().all(Fence::is_signaled) {
            return false;
        }
        if let Some(c) = self.fences.iter().find(|c| c.error().is_some()) {
            self.note_error(c);
        }
        self.publish_error(fence);
        true
    }

    /// Arrays forward a deadline to every child.
    fn set_deadline(&self, _fence: &Fence, deadline_ns: u64) {
        for c in &self.fences {
            c.set_deadline(deadline_ns);
        }
    }

    fn release(&self, _context: u64, _seqno: u64) {}

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `dma_fence_array_first`: the first child of an array, the fence itself
/// for any other fence.
pub fn first(head: &Fence) -> Option<Fence> {
    match FenceArray::from_fence(head) {
        Some(a) => a.fences.first().cloned(),
        None => Some(head.clone()),
    }
}

/// `dma_fence_array_next`: child `index` of an array; `None` past the end or
/// for a fence that is not an array.
pub fn next(head: &Fence, index: usize) -> Option<Fence> {
    FenceArray::from_fence(head).and_then(|a| a.fences.get(index).cloned())
}

/// `dma_fence_match_context`: whether `fence` belongs to `context`; for an
/// array, whether every child does.
pub fn match_context(fence: &Fence, context: u64) -> bool {
    match FenceArray::from_fence(fence) {
        Some(a) => a.fences.iter().all(|f| f.context() == context),
        None => fence.context() == context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_fence::{FenceContext, FenceOps, context_alloc};
    use crate::errno::{self, AsErrno};
    use crate::sync::Arc;
    use crate::sync::atomic::AtomicU64;

    fn leaf() -> (Fence, crate::dma_fence::SignalHandle) {
        FenceContext::named("test", "leaf").create()
    }

    #[test]
    fn array_signals_only_after_every_child() {
        let (f1, h1) = leaf();
        let (f2, h2) = leaf();
        let a = FenceArray::create(vec![f1, f2], context_alloc(1).unwrap(), 1).unwrap();
        assert!(a.enable_sw_signaling());
        h1.signal().unwrap();
        assert!(!a.is_signaled());
        h2.signal().unwrap();
        assert!(a.test_signaled_flag());
        assert_eq!(a.get_status(), 1);
    }

    #[test]
    fn array_polls_children_when_not_armed() {
        let (f1, h1) = leaf();
        let a = FenceArray::create(vec![f1], 7, 1).unwrap();
        h1.signal_with_error(errno::EIO.to_negative()).unwrap();
        assert!(a.is_signaled());
        assert_eq!(a.get_status(), errno::EIO.to_negative());
    }

    #[test]
    fn first_child_error_wins() {
        let (f1, h1) = leaf();
        let (f2, h2) = leaf();
        let (f3, h3) = leaf();
        let a = FenceArray::create(vec![f1, f2, f3], 9, 1).unwrap();
        a.enable_sw_signaling();
        h2.signal_with_error(errno::ETIMEDOUT.to_negative())
            .unwrap();
        h1.signal_with_error(errno::EIO.to_negative()).unwrap();
        assert_eq!(a.get_status(), 0);
        h3.signal().unwrap();
        assert_eq!(a.get_status(), errno::ETIMEDOUT.to_negative());
    }

    #[test]
    fn arming_with_every_child_signalled_signals_at_once() {
        let (f1, h1) = leaf();
        h1.signal_with_error(errno::EIO.to_negative()).unwrap();
        let a = FenceArray::create(vec![f1], 9, 1).unwrap();
        assert!(!a.enable_sw_signaling());
        assert!(a.test_signaled_flag());
        assert_eq!(a.error(), Some(errno::EIO.to_negative()));
    }

    #[test]
    fn nested_containers_are_refused() {
        let (f1, _h1) = leaf();
        let inner = FenceArray::create(vec![f1.clone()], 11, 1).unwrap();
        let e = FenceArray::create(vec![f1, inner], 12, 1).unwrap_err();
        assert_eq!(
            e,
            FenceError::NestedContainer {
                context: 11,
                seqno: 1
            }
        );
        assert_eq!(e.errno(), errno::EINVAL);
        let chain = crate::dma_fence_chain::chain(None, leaf().0, 1);
        assert!(matches!(
            FenceArray::create(vec![chain], 12, 1),
            Err(FenceError::NestedContainer { .. })
        ));
    }

    #[test]
    fn empty_array_is_refused() {
        assert!(matches!(
            FenceArray::create(Vec::new(), 1, 1),
            Err(FenceError::Invalid(_))
        ));
    }

    #[test]
    fn names_and_accessors() {
        let (f1, _h1) = leaf();
        let (f2, _h2) = leaf();
        let a = FenceArray::create(vec![f1.clone(), f2.clone()], 33, 4).unwrap();
        assert_eq!(a.driver_name(), "dma_fence_array");
        assert_eq!(a.timeline_name(), "unbound");
        assert_eq!(a.kind(), FenceKind::Array);
        assert_eq!((a.context(), a.seqno()), (33, 4));
        assert_eq!(
            FenceArray::children(&a).unwrap(),
            vec![f1.clone(), f2.clone()]
        );
        assert!(FenceArray::children(&f1).is_none());
        assert_eq!(first(&a), Some(f1.clone()));
        assert_eq!(next(&a, 1), Some(f2.clone()));
        assert_eq!(next(&a, 2), None);
        assert_eq!(first(&f1), Some(f1.clone()));
        assert_eq!(next(&f1, 0), None);
        assert!(!match_context(&a, f1.context()));
        let same = FenceArray::create(vec![f1.clone()], 34, 1).unwrap();
        assert!(match_context(&same, f1.context()));
        assert!(match_context(&f1, f1.context()));
    }

    struct DeadlineOps(Arc<AtomicU64>);
    impl FenceOps for DeadlineOps {
        fn driver_name(&self) -> &str {
            "deadline"
        }
        fn timeline_name(&self) -> &str {
            "t"
        }
        fn set_deadline(&self, _f: &Fence, d: u64) {
            self.0.store(d, Ordering::SeqCst);
        }
    }

    #[test]
    fn set_deadline_is_forwarded_to_every_pending_child() {
        let d1 = Arc::new(AtomicU64::new(0));
        let d2 = Arc::new(AtomicU64::new(0));
        let (f1, _h1) = Fence::init(DeadlineOps(d1.clone()), 40, 1);
        let (f2, h2) = Fence::init(DeadlineOps(d2.clone()), 41, 1);
        h2.signal().unwrap();
        let a = FenceArray::create(vec![f1, f2], 42, 1).unwrap();
        a.set_deadline(1234);
        assert_eq!(d1.load(Ordering::SeqCst), 1234);
        // A signalled child has detached its ops and gets no hint.
        assert_eq!(d2.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dropping_an_armed_array_frees_it_and_its_child_callbacks() {
        let (f1, h1) = leaf();
        let a = FenceArray::create(vec![f1.clone()], 50, 1).unwrap();
        a.enable_sw_signaling();
        assert_eq!(f1.pending_callbacks(), 1);
        let weak = Arc::downgrade(&a.0);
        drop(a);
        assert!(weak.upgrade().is_none(), "a pending child kept the array");
        assert_eq!(f1.pending_callbacks(), 0);
        h1.signal().unwrap();
    }
}
