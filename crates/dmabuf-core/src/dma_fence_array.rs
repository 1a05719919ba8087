//! `dma_fence_array` (kernel `drivers/dma-buf/dma-fence-array.c`): a fence
//! that signals once every one of its children has signalled.
//!
//! PLACEHOLDER: the complete module is written under its own issue; this
//! minimal version exists so that `dma_resv::get_singleton` compiles and is
//! tested, and will be replaced at merge. It keeps the final signature of
//! [`FenceArray::create`].
//!
//! | state | meaning | may go to |
//! |---|---|---|
//! | pending | some child unsignalled, nobody asked to be told | armed, signalled |
//! | armed | a callback on every pending child; a counter of pending ones | signalled |
//! | signalled | all children signalled; the first child error is the array's | (final) |
//!
//! Lock rules: none of its own; the counter is atomic and callbacks run on
//! whatever thread signals the last child.

use crate::dma_fence::{Fence, FenceError, FenceImpl, FenceKind};
use crate::sync::atomic::{AtomicUsize, Ordering};
use std::any::Any;

/// Constructor of array fences.
#[derive(Debug)]
pub struct FenceArray;

struct ArrayImpl {
    children: Vec<Fence>,
    pending: AtomicUsize,
}

impl ArrayImpl {
    fn child_done(&self, array: &Fence, child: &Fence) {
        if let Some(e) = child.error() {
            let _ = array.set_error_internal(e);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = array.signal_timestamp_internal(crate::sync::time::now_ns());
        }
    }
}

impl FenceImpl for ArrayImpl {
    fn kind(&self) -> FenceKind {
        FenceKind::Array
    }
    fn driver_name(&self) -> &str {
        "dma_fence_array"
    }
    fn timeline_name(&self) -> &str {
        "unbound"
    }
    fn enable_signaling(&self, fence: &Fence) -> bool {
        // One extra count held by this call, so that children signalling
        // while callbacks are still being added cannot finish early.
        self.pending
            .store(self.children.len() + 1, Ordering::Release);
        for c in &self.children {
            let array = fence.clone();
            let r = c.add_callback(move |child| {
                if let FenceKind::Array = array.kind()
                    && let Some(imp) = array.imp().as_any().downcast_ref::<ArrayImpl>()
                {
                    imp.child_done(&array, child);
                }
            });
            if r.is_err() {
                self.child_done(fence, c);
            }
        }
        if let Some(e) = self.children.iter().find_map(Fence::error) {
            let _ = fence.set_error_internal(e);
        }
        self.pending.fetch_sub(1, Ordering::AcqRel) != 1
    }
    fn signaled(&self, _fence: &Fence) -> bool {
        self.children.iter().all(Fence::is_signaled)
    }
    fn set_deadline(&self, _fence: &Fence, deadline_ns: u64) {
        for c in &self.children {
            c.set_deadline(deadline_ns);
        }
    }
    fn release(&self, _context: u64, _seqno: u64) {}
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl FenceArray {
    /// `dma_fence_array_create`: an array over `fences` (taking their
    /// references) on `context` at `seqno`. Refuses an empty list and
    /// children that are themselves containers.
    pub fn create(fences: Vec<Fence>, context: u64, seqno: u64) -> Result<Fence, FenceError> {
        if fences.is_empty() {
            return Err(FenceError::Invalid("dma_fence_array of no fences"));
        }
        if let Some(c) = fences.iter().find(|f| f.is_container()) {
            return Err(FenceError::NestedContainer {
                context: c.context(),
                seqno: c.seqno(),
            });
        }
        let n = fences.len();
        Ok(Fence::from_impl(
            Box::new(ArrayImpl {
                children: fences,
                pending: AtomicUsize::new(n),
            }),
            context,
            seqno,
            0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_fence::FenceContext;

    #[test]
    fn array_signals_when_all_children_signal() {
        let tl = FenceContext::named("test", "array");
        let (f1, h1) = tl.create();
        let (f2, h2) = tl.create();
        let a = FenceArray::create(vec![f1, f2], 999, 1).unwrap();
        assert_eq!(a.kind(), FenceKind::Array);
        assert!(a.is_container());
        assert!(!a.is_signaled());
        assert_eq!(a.wait_timeout(None, 0), Ok(0));
        h1.signal().unwrap();
        assert!(!a.is_signaled());
        h2.signal().unwrap();
        assert!(a.test_signaled_flag());
    }

    #[test]
    fn empty_and_nested_arrays_are_refused() {
        assert!(FenceArray::create(vec![], 1, 1).is_err());
        let a = FenceArray::create(vec![Fence::stub()], 1, 1).unwrap();
        assert!(matches!(
            FenceArray::create(vec![a], 2, 1),
            Err(FenceError::NestedContainer { .. })
        ));
    }
}
