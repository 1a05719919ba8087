//! Suite `dma-buf-fence-unwrap` (st-dma-fence-unwrap.c). Mock fences get a
//! fresh context each at seqno 1; arrays and chains take their inputs by
//! value, merge borrows.

use crate::dma_fence::{Fence, NamedOps, SignalHandle, context_alloc};
use crate::dma_fence_array::FenceArray;
use crate::dma_fence_chain::chain;
use crate::dma_fence_unwrap::{dedup_array, leaves, merge};
use crate::sync::Arc;

/// The suites' `mock_fence_ops`: names only.
fn mock_ops() -> NamedOps {
    NamedOps::new("mock", "mock")
}

fn mock_fence_at(context: u64, seqno: u64) -> (Fence, SignalHandle) {
    let (f, h) = Fence::init(mock_ops(), context, seqno);
    f.enable_sw_signaling();
    (f, h)
}

fn mock_fence() -> (Fence, SignalHandle) {
    mock_fence_at(context_alloc(1).unwrap(), 1)
}

fn mock_array(fences: Vec<Fence>) -> Fence {
    FenceArray::create(fences, context_alloc(1).unwrap(), 1).unwrap()
}

fn mock_chain(prev: Option<Fence>, fence: Fence) -> Fence {
    chain(prev, fence, 1)
}

/// Every expected fence appears exactly once and nothing else does.
fn assert_exactly(head: &Fence, expected: &[&Fence]) {
    let mut seen = vec![0usize; expected.len()];
    for f in leaves(head) {
        match expected.iter().position(|e| **e == f) {
            Some(i) => seen[i] += 1,
            None => panic!("Unexpected fence {f:?}!"),
        }
    }
    assert!(
        seen.iter().all(|n| *n == 1),
        "not all fences seen exactly once: {seen:?}"
    );
}

/// The leaves are exactly `expected`, in that order.
fn assert_in_order(head: &Fence, expected: &[&Fence]) {
    let got: Vec<Fence> = leaves(head).collect();
    let want: Vec<Fence> = expected.iter().map(|f| (*f).clone()).collect();
    assert_eq!(got, want, "unexpected fences or order");
}

#[test]
fn test_sanitycheck() {
    let (f, h) = mock_fence();
    let array = mock_array(vec![f]);
    let c = mock_chain(None, array);
    let weak = Arc::downgrade(&c.0);
    drop(c);
    assert!(
        weak.upgrade().is_none(),
        "putting the chain did not free it"
    );
    drop(h);
}

#[test]
fn test_unwrap_array() {
    let (f1, _h1) = mock_fence();
    let (f2, _h2) = mock_fence();
    let array = mock_array(vec![f1.clone(), f2.clone()]);
    assert_exactly(&array, &[&f1, &f2]);
}

#[test]
fn test_unwrap_chain() {
    let (f1, _h1) = mock_fence();
    let (f2, _h2) = mock_fence();
    let c = mock_chain(Some(f1.clone()), f2.clone());
    assert_exactly(&c, &[&f1, &f2]);
}

#[test]
fn test_unwrap_chain_array() {
    let (f1, _h1) = mock_fence();
    let (f2, _h2) = mock_fence();
    let array = mock_array(vec![f1.clone(), f2.clone()]);
    let c = mock_chain(None, array);
    assert_exactly(&c, &[&f1, &f2]);
}

#[test]
fn test_unwrap_merge() {
    let (f1, _h1) = mock_fence();
    let (f2, _h2) = mock_fence();
    let f3 = merge(&[&f1, &f2]);
    assert_exactly(&f3, &[&f1, &f2]);
}

#[test]
fn test_unwrap_merge_duplicate() {
    let (f1, _h1) = mock_fence();
    let f2 = merge(&[&f1, &f1]);
    assert_exactly(&f2, &[&f1]);
}

#[test]
fn test_unwrap_merge_seqno() {
    let ctx0 = context_alloc(2).unwrap();
    let ctx1 = ctx0 + 1;
    let (f1, _h1) = mock_fence_at(ctx1, 1);
    let (f2, _h2) = mock_fence_at(ctx1, 2);
    let (f3, _h3) = mock_fence_at(ctx0, 1);
    let f4 = merge(&[&f1, &f2, &f3]);
    assert_in_order(&f4, &[&f3, &f2]);
}

#[test]
fn test_unwrap_merge_order() {
    let (f1, _h1) = mock_fence();
    let (f2, _h2) = mock_fence();
    let a1 = mock_array(vec![f1.clone(), f2.clone()]);
    // The same fences in the opposite order.
    let c1 = mock_chain(None, f1.clone());
    let c2 = mock_chain(Some(c1), f2.clone());
    let a2 = merge(&[&a1, &c2]);
    assert_in_order(&a2, &[&f1, &f2]);
}

#[test]
fn test_unwrap_merge_complex() {
    let (f1, _h1) = mock_fence();
    let (f2, _h2) = mock_fence();
    let f3 = merge(&[&f1, &f2]);
    // The same fences as an array, in reverse order.
    let f4 = mock_array(vec![f2.clone(), f1.clone()]);
    // The signalled stub is filtered, duplicates removed.
    let f5 = merge(&[&f3, &f4, &Fence::stub()]);
    assert_exactly(&f5, &[&f1, &f2]);
}

#[test]
fn test_unwrap_merge_complex_seqno() {
    let ctx0 = context_alloc(2).unwrap();
    let ctx1 = ctx0 + 1;
    let (f1, _h1) = mock_fence_at(ctx0, 2);
    let (f2, _h2) = mock_fence_at(ctx1, 1);
    let (f3, _h3) = mock_fence_at(ctx0, 1);
    let (f4, _h4) = mock_fence_at(ctx1, 2);
    let f5 = mock_array(vec![f1.clone(), f2.clone()]);
    let f6 = mock_array(vec![f3.clone(), f4.clone()]);
    let f7 = merge(&[&f5, &f6]);
    assert_in_order(&f7, &[&f1, &f4]);
}

/// Proposed upstream in June 2026 (merge status unknown); included since
/// this implementation follows the fix.
#[test]
fn test_dedup_empty() {
    let mut fences: Vec<Fence> = Vec::new();
    assert_eq!(dedup_array(&mut fences), 0);
}
