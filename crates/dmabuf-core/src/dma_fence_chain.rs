//! `dma_fence_chain`: timeline points, a singly linked list of nodes each
//! carrying one payload fence (kernel `drivers/dma-buf/dma-fence-chain.c`).
//!
//! A node signals when its own payload and every payload reachable through
//! `prev` have signalled: a point on a timeline is reached when everything
//! up to it is.
//!
//! # Node contents
//!
//! | field | kernel | meaning |
//! |---|---|---|
//! | `prev` | `chain->prev` (RCU pointer) | previous node, or any fence, or none; shortened by [`walk`] |
//! | `prev_seqno` | `chain->prev_seqno` | seqno of `prev` when the context was reused, else 0 |
//! | `fence` | `chain->fence` | the payload ([`contained`]) |
//!
//! # Rules
//!
//! * Context reuse ([`FenceChain::create`]): if `prev` is a chain node and
//!   `seqno` is later than its seqno, the new node joins prev's context and
//!   records `prev_seqno`; otherwise it gets a fresh context, and its seqno
//!   is raised to prev's if prev is a chain. Chain nodes order their seqnos
//!   as 64-bit numbers (`dma_fence_init64`).
//! * [`walk`] moves to the previous node and unlinks, with a compare and
//!   swap on `prev`, every node whose payload has signalled: signalled
//!   history is garbage-collected by whoever walks.
//! * [`find_seqno`]: 0 is a no-op; a non-chain fence is
//!   [`FenceError::NotAChain`]; a seqno later than the node's is
//!   [`FenceError::FuturePoint`]; otherwise the node that will signal that
//!   point, or `None` when everything up to it has signalled.
//! * Release is iterative: dropping the last reference to a 4096-node chain
//!   frees the nodes one after the other, never recursively.
//!
//! # Signalling (differs from the kernel in mechanism, not in result)
//!
//! `enable_signaling` walks from the node and puts one callback on the first
//! thing still pending: the node's own payload if that is pending, else the
//! first earlier node whose payload is pending (the kernel puts it on that
//! node's *payload* instead). When the callback runs, the node walks again
//! and re-arms, or signals when nothing is pending. Waiting on the earlier
//! *node* is equivalent, since that node signals exactly when everything up
//! to it has, and it keeps arming linear: with the kernel's choice every
//! node of a chain signalled back to front re-arms at every step, which is
//! quadratic. Re-arming that a node's signal triggers on the same thread is
//! queued and run by the outermost re-arm (the kernel defers it to an
//! `irq_work`), so a long cascade runs in a loop, not on the stack; by the
//! time the outermost signal returns, the whole cascade is done.
//!
//! The callback a node puts on a payload holds only a weak reference to the
//! node, so a pending payload never keeps a node alive (see
//! [`dma_fence_array`](crate::dma_fence_array) for what that means for
//! abandoned callbacks).
//!
//! # Lock rules
//!
//! Each node has a lock on `prev` and one on its current callback
//! registration; neither is held while another lock is taken, while a fence
//! is dropped, or while driver code runs.

use crate::dma_fence::{
    Callback, Fence, FenceError, FenceImpl, FenceInner, FenceKind, SEQNO64, context_alloc,
    seqno_is_later,
};
use crate::sync::{Arc, Mutex, Weak};
use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;

/// A chain node (`struct dma_fence_chain`). Obtain it from a fence with
/// [`FenceChain::from_fence`] (`to_dma_fence_chain`).
pub struct FenceChain {
    prev: Mutex<Option<Fence>>,
    prev_seqno: u64,
    fence: Fence,
    /// The callback currently armed by `enable_signaling` (kept so that
    /// release can take it off and so that it holds what it waits on).
    reg: Mutex<Option<Callback>>,
}

impl fmt::Debug for FenceChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceChain")
            .field("prev_seqno", &self.prev_seqno)
            .field("fence", &self.fence)
            .finish()
    }
}

/// `dma_fence_chain_alloc` + `dma_fence_chain_init`: a node after `prev`
/// carrying `fence` at `seqno`. Same as [`FenceChain::create`].
pub fn chain(prev: Option<Fence>, fence: Fence, seqno: u64) -> Fence {
    FenceChain::create(prev, fence, seqno)
}

impl FenceChain {
    /// `dma_fence_chain_init`: a node after `prev` (any fence, or none)
    /// carrying `fence`. Applies the context-reuse rule described in the
    /// module documentation.
    pub fn create(prev: Option<Fence>, fence: Fence, seqno: u64) -> Fence {
        let prev_chain = prev.as_ref().filter(|p| p.kind() == FenceKind::Chain);
        let (context, seqno, prev_seqno) = match prev_chain {
            Some(p) if seqno_is_later(seqno, p.seqno(), p.is_seqno64()) => {
                (p.context(), seqno, p.seqno())
            }
            Some(p) => (fresh_context(), p.seqno().max(seqno), 0),
            None => (fresh_context(), seqno, 0),
        };
        let imp = FenceChain {
            prev: Mutex::new(prev),
            prev_seqno,
            fence,
            reg: Mutex::new(None),
        };
        Fence::from_impl(Box::new(imp), context, seqno, SEQNO64)
    }

    /// `to_dma_fence_chain`: the node behind `fence`, or `None`.
    pub fn from_fence(fence: &Fence) -> Option<&FenceChain> {
        fence.imp().as_any().downcast_ref::<FenceChain>()
    }

    /// The payload fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// `dma_fence_chain_get_prev`: the current previous link.
    pub fn prev(&self) -> Option<Fence> {
        self.prev.lock().clone()
    }

    /// The seqno of the previous node when the context was reused, else 0.
    pub fn prev_seqno(&self) -> u64 {
        self.prev_seqno
    }

    /// Moves the previous link and the armed callback's target out, for
    /// the iterative release.
    fn take_links(&self, out: &mut Vec<Fence>) {
        let reg = self.reg.lock().take();
        if let Some(r) = reg {
            out.push(r.fence().clone());
            r.remove();
        }
        let prev = self.prev.lock().take();
        out.extend(prev);
    }
}

fn fresh_context() -> u64 {
    // Allocating one context cannot fail.
    context_alloc(1).unwrap_or(u64::MAX)
}

impl Drop for FenceChain {
    /// `dma_fence_chain_release`: frees predecessors in a loop while this
    /// node held the last reference to them, so that a long chain does not
    /// recurse. `Arc::try_unwrap` makes "last reference" exact even against
    /// a concurrent upgrade of a weak reference from a payload callback.
    fn drop(&mut self) {
        let mut work = Vec::new();
        self.take_links(&mut work);
        while let Some(f) = work.pop() {
            if let Ok(inner) = Arc::try_unwrap(f.0) {
                if let Some(c) = inner.imp().as_any().downcast_ref::<FenceChain>() {
                    c.take_links(&mut work);
                }
                drop(inner);
            }
        }
    }
}

/// `dma_fence_chain_contained`: the payload of a chain node, otherwise the
/// fence itself.
pub fn contained(fence: &Fence) -> &Fence {
    match FenceChain::from_fence(fence) {
        Some(c) => &c.fence,
        None => fence,
    }
}

/// `dma_fence_chain_walk`: the previous node whose payload is still pending
/// (or a pending non-chain `prev`), unlinking on the way every node whose
/// payload has signalled. `None` when nothing pending is left, or when
/// `fence` is not a chain node.
pub fn walk(fence: &Fence) -> Option<Fence> {
    let chain = FenceChain::from_fence(fence)?;
    loop {
        let prev = chain.prev()?;
        let replacement = match FenceChain::from_fence(&prev) {
            Some(pc) => {
                if !pc.fence.is_signaled() {
                    return Some(prev);
                }
                pc.prev()
            }
            None => {
                if !prev.is_signaled() {
                    return Some(prev);
                }
                None
            }
        };
        // cmpxchg(&chain->prev, prev, replacement): somebody else may have
        // unlinked first; then their result stands and we look again. Both
        // the unlinked node and an unused replacement are dropped after the
        // lock is released (dropping a node may free a whole chain).
        let unlinked = {
            let mut g = chain.prev.lock();
            if g.as_ref().is_some_and(|p| p.ptr_eq(&prev)) {
                Ok(std::mem::replace(&mut *g, replacement))
            } else {
                Err(replacement)
            }
        };
        drop(unlinked);
    }
}

/// `dma_fence_chain_for_each`: the node itself, then every node [`walk`]
/// reaches (with its unlinking side effect).
pub fn iter(head: &Fence) -> ChainIter {
    ChainIter {
        next: Some(head.clone()),
    }
}

/// Iterator of [`iter`].
#[derive(Debug)]
pub struct ChainIter {
    next: Option<Fence>,
}

impl Iterator for ChainIter {
    type Item = Fence;
    fn next(&mut self) -> Option<Fence> {
        let cur = self.next.take()?;
        self.next = walk(&cur);
        Some(cur)
    }
}

/// `dma_fence_chain_find_seqno`: the node that signals when timeline point
/// `seqno` is reached. `Ok(None)` when everything up to that point has
/// signalled. A zero `seqno` returns `fence` itself, whatever it is.
pub fn find_seqno(fence: &Fence, seqno: u64) -> Result<Option<Fence>, FenceError> {
    if seqno == 0 {
        return Ok(Some(fence.clone()));
    }
    if FenceChain::from_fence(fence).is_none() {
        return Err(FenceError::NotAChain {
            context: fence.context(),
            seqno: fence.seqno(),
        });
    }
    if fence.seqno() < seqno {
        return Err(FenceError::FuturePoint {
            wanted: seqno,
            head: fence.seqno(),
        });
    }
    for it in iter(fence) {
        if it.context() != fence.context() {
            return Ok(Some(it));
        }
        match FenceChain::from_fence(&it) {
            Some(c) if c.prev_seqno >= seqno => {}
            _ => return Ok(Some(it)),
        }
    }
    Ok(None)
}

crate::shim_thread_local! {
    /// Re-arms queued by signals that happened inside an outer re-arm on
    /// this thread; `None` when no re-arm runs here.
    static REARM_QUEUE: RefCell<Option<VecDeque<Fence>>> = const { RefCell::new(None) };
}

/// The callback a node puts on the thing it waits for.
fn node_callback(node: Weak<FenceInner>) -> impl FnOnce(&Fence) + Send + 'static {
    move |_| {
        if let Some(inner) = node.upgrade() {
            rearm_or_queue(Fence(inner));
        }
    }
}

fn rearm_or_queue(node: Fence) {
    let first = REARM_QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        match q.as_mut() {
            Some(queue) => {
                queue.push_back(node);
                None
            }
            None => {
                *q = Some(VecDeque::new());
                Some(node)
            }
        }
    });
    let Some(mut node) = first else {
        return;
    };
    // Closes the queue even if a callback panics, so later signals on this
    // thread are not queued forever.
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            let left = REARM_QUEUE.with(|q| q.borrow_mut().take());
            drop(left);
        }
    }
    let _close = Close;
    loop {
        rearm(&node);
        drop(node);
        match REARM_QUEUE.with(|q| q.borrow_mut().as_mut().and_then(VecDeque::pop_front)) {
            Some(n) => node = n,
            None => break,
        }
    }
}

/// `dma_fence_chain_irq_work`: the thing the node waited for signalled;
/// wait for the next pending one, or signal.
fn rearm(node: &Fence) {
    let Some(c) = FenceChain::from_fence(node) else {
        return;
    };
    let fired = c.reg.lock().take();
    drop(fired);
    if !arm(node) {
        let _ = node.signal_timestamp_internal(crate::sync::time::timestamp_ns());
    }
}

/// Puts the node's callback on the first pending thing; false if nothing is
/// pending any more.
fn arm(head: &Fence) -> bool {
    let Some(chain) = FenceChain::from_fence(head) else {
        return false;
    };
    let weak = Arc::downgrade(&head.0);
    for it in iter(head) {
        let target = if it.ptr_eq(head) { &chain.fence } else { &it };
        if let Ok(r) = target.add_callback(node_callback(weak.clone())) {
            let replaced = chain.reg.lock().replace(r);
            drop(replaced);
            return true;
        }
    }
    false
}

impl FenceImpl for FenceChain {
    fn kind(&self) -> FenceKind {
        FenceKind::Chain
    }
    fn driver_name(&self) -> &str {
        "dma_fence_chain"
    }
    fn timeline_name(&self) -> &str {
        "unbound"
    }
    fn enable_signaling(&self, fence: &Fence) -> bool {
        arm(fence)
    }
    /// `dma_fence_chain_signaled`: every payload along the chain.
    fn signaled(&self, fence: &Fence) -> bool {
        iter(fence).all(|it| contained(&it).is_signaled())
    }
    /// Forwards the deadline to every pending payload along the chain.
    fn set_deadline(&self, fence: &Fence, deadline_ns: u64) {
        for it in iter(fence) {
            contained(&it).set_deadline(deadline_ns);
        }
    }
    fn release(&self, _context: u64, _seqno: u64) {}
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_fence::{FenceContext, SignalHandle};
    use crate::errno::{self, AsErrno};

    fn leaf() -> (Fence, SignalHandle) {
        FenceContext::named("test", "payload").create()
    }

    #[test]
    fn context_is_reused_only_for_a_later_seqno() {
        let a = chain(None, leaf().0, 5);
        let b = chain(Some(a.clone()), leaf().0, 6);
        assert_eq!(b.context(), a.context());
        assert_eq!(FenceChain::from_fence(&b).unwrap().prev_seqno(), 5);
        let c = chain(Some(b.clone()), leaf().0, 3);
        assert_ne!(c.context(), b.context());
        assert_eq!(c.seqno(), 6, "seqno raised to prev's");
        assert_eq!(FenceChain::from_fence(&c).unwrap().prev_seqno(), 0);
        let (plain, _h) = leaf();
        let d = chain(Some(plain.clone()), leaf().0, 1);
        assert_ne!(d.context(), plain.context());
        assert_eq!(d.seqno(), 1);
    }

    #[test]
    fn seqnos_compare_as_64_bit() {
        let a = chain(None, leaf().0, 1);
        assert!(a.is_seqno64());
        // 2^32 + 1 is "earlier" than 2 in 32-bit wrap-around; as 64-bit it
        // is later, so the context is reused.
        let b = chain(Some(a.clone()), leaf().0, (1 << 32) + 1);
        assert_eq!(b.context(), a.context());
        let c = chain(Some(b.clone()), leaf().0, (1 << 32) + 2);
        assert!(c.is_later(&b).unwrap());
    }

    #[test]
    fn find_seqno_rejects_non_chains_and_future_points() {
        let (plain, _h) = leaf();
        let e = find_seqno(&plain, 1).unwrap_err();
        assert!(matches!(e, FenceError::NotAChain { .. }));
        assert_eq!(e.errno(), errno::EINVAL);
        assert_eq!(find_seqno(&plain, 0).unwrap(), Some(plain.clone()));
        let c = chain(None, leaf().0, 4);
        assert_eq!(
            find_seqno(&c, 5).unwrap_err(),
            FenceError::FuturePoint { wanted: 5, head: 4 }
        );
    }

    #[test]
    fn walk_unlinks_signalled_nodes() {
        let (f0, h0) = leaf();
        let (f1, h1) = leaf();
        let (f2, _h2) = leaf();
        let c0 = chain(None, f0, 1);
        let c1 = chain(Some(c0.clone()), f1, 2);
        let c2 = chain(Some(c1.clone()), f2, 3);
        h1.signal().unwrap();
        assert_eq!(walk(&c2), Some(c0.clone()));
        assert_eq!(
            FenceChain::from_fence(&c2).unwrap().prev(),
            Some(c0.clone())
        );
        h0.signal().unwrap();
        assert_eq!(walk(&c2), None);
        assert_eq!(FenceChain::from_fence(&c2).unwrap().prev(), None);
        assert!(walk(&leaf().0).is_none());
    }

    #[test]
    fn contained_returns_payload_or_self() {
        let (f, _h) = leaf();
        let c = chain(None, f.clone(), 1);
        assert_eq!(contained(&c), &f);
        assert_eq!(contained(&f), &f);
    }

    #[test]
    fn node_signals_once_every_payload_has_even_if_armed_late() {
        let (f0, h0) = leaf();
        let (f1, h1) = leaf();
        let c0 = chain(None, f0, 1);
        let c1 = chain(Some(c0.clone()), f1, 2);
        h1.signal().unwrap();
        assert!(c1.enable_sw_signaling(), "payload 0 still pending");
        assert!(!c1.test_signaled_flag());
        h0.signal().unwrap();
        assert!(c1.test_signaled_flag());
        assert!(c0.test_signaled_flag(), "c1 armed c0 to wait for it");
    }

    #[test]
    fn chain_does_not_propagate_payload_errors() {
        let (f0, h0) = leaf();
        let c0 = chain(None, f0, 1);
        c0.enable_sw_signaling();
        h0.signal_with_error(errno::EIO.to_negative()).unwrap();
        assert_eq!(c0.get_status(), 1);
    }

    #[test]
    fn set_deadline_reaches_pending_payloads() {
        use crate::dma_fence::test_ops::DeadlineRecorder as D;
        use crate::sync::atomic::{AtomicU64, Ordering};
        let seen = Arc::new(AtomicU64::new(0));
        let (f0, _h0) = Fence::init(D(seen.clone()), 77, 1);
        let c0 = chain(None, f0, 1);
        let c1 = chain(Some(c0), leaf().0, 2);
        c1.set_deadline(99);
        assert_eq!(seen.load(Ordering::SeqCst), 99);
    }

    fn long_chain(n: usize, armed: bool) -> (Fence, Vec<SignalHandle>) {
        let mut head: Option<Fence> = None;
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (f, h) = leaf();
            handles.push(h);
            let c = chain(head.take(), f, i as u64 + 1);
            if armed {
                c.enable_sw_signaling();
            }
            head = Some(c);
        }
        (head.unwrap(), handles)
    }

    /// Runs `f` on a thread with a deliberately small stack, so that a
    /// recursive release would overflow. std's builder is used directly
    /// because the shim's `spawn` has no stack size; the thread is a plain
    /// real thread and uses only shim primitives itself.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn dropping_a_4096_node_chain_does_not_recurse() {
        on_small_stack(|| {
            let (tail, handles) = long_chain(4096, false);
            drop(tail);
            drop(handles);
        });
    }

    #[test]
    fn dropping_an_armed_4096_node_chain_does_not_recurse() {
        on_small_stack(|| {
            let (tail, handles) = long_chain(4096, true);
            // Back to front: every node ends up waiting on its predecessor
            // node, so the links form a second list through the callbacks.
            let mut handles = handles;
            while handles.len() > 1 {
                handles.pop().unwrap().signal().unwrap();
            }
            assert!(!tail.is_signaled());
            drop(tail);
            drop(handles);
        });
    }

    #[test]
    fn a_4096_node_cascade_signals_in_a_loop() {
        on_small_stack(|| {
            let (tail, mut handles) = long_chain(4096, true);
            let first = handles.remove(0);
            for h in handles.into_iter().rev() {
                h.signal().unwrap();
            }
            assert!(!tail.test_signaled_flag());
            first.signal().unwrap();
            assert!(tail.test_signaled_flag());
        });
    }
}
