//! `dma-fence-unwrap`: the leaf fences inside containers, and merging
//! fences into one (kernel `drivers/dma-buf/dma-fence-unwrap.c`).
//!
//! # Leaves
//!
//! A fence is a leaf unless it is an array or a chain node. Containers nest
//! as chain → array → leaf (arrays never hold containers). [`leaves`] walks
//! a chain with [`walk`], so nodes whose
//! payload has signalled may be unlinked (and skipped) on the way, exactly as
//! `dma_fence_unwrap_for_each` does. A chain payload that is itself a chain
//! is unwrapped too (the kernel would hand it out as a leaf); the walk uses
//! an explicit stack, never recursion.
//!
//! # Merge rules (`__dma_fence_unwrap_merge`)
//!
//! 1. Gather every unsignalled leaf of every input; of the signalled ones
//!    keep only the latest timestamp.
//! 2. None pending: a new private stub carrying that timestamp. Exactly one
//!    pending: that fence itself.
//! 3. Otherwise [`dedup_array`]: sort by context (ascending), keep only the
//!    latest point of each context. More than one left: a new
//!    [`FenceArray`] on a fresh context at seqno 1; one left: that fence.
//!
//! Inputs are borrowed, never consumed. The result's leaves are therefore
//! in ascending context order.

use crate::dma_fence::{Fence, FenceKind, context_alloc};
use crate::dma_fence_array::FenceArray;
use crate::dma_fence_chain::{contained, walk};

/// `dma_fence_unwrap_for_each`: the leaf fences of `head` (which may itself
/// be a leaf).
pub fn leaves(head: &Fence) -> Leaves {
    Leaves {
        stack: vec![Frame::Chain(Some(head.clone()))],
    }
}

enum Frame {
    /// The next chain node (or any fence reached through `prev`) to visit.
    Chain(Option<Fence>),
    /// An array and the index of its next child.
    Array(Fence, usize),
}

/// Iterator of [`leaves`]; yields references it holds itself.
pub struct Leaves {
    stack: Vec<Frame>,
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Leaves(depth {})", self.stack.len())
    }
}

impl Iterator for Leaves {
    type Item = Fence;
    fn next(&mut self) -> Option<Fence> {
        loop {
            let found = match self.stack.last_mut()? {
                Frame::Chain(cur) => match cur.take() {
                    None => {
                        self.stack.pop();
                        continue;
                    }
                    Some(node) => {
                        *cur = walk(&node);
                        contained(&node).clone()
                    }
                },
                Frame::Array(a, i) => {
                    let child = FenceArray::from_fence(a).and_then(|arr| arr.fences().get(*i));
                    match child {
                        None => {
                            self.stack.pop();
                            continue;
                        }
                        Some(c) => {
                            *i += 1;
                            c.clone()
                        }
                    }
                }
            };
            match found.kind() {
                FenceKind::Array => self.stack.push(Frame::Array(found, 0)),
                FenceKind::Chain => self.stack.push(Frame::Chain(Some(found))),
                FenceKind::Plain | FenceKind::Stub => return Some(found),
            }
        }
    }
}

/// `dma_fence_dedup_array`: sorts `fences` by context and keeps only the
/// latest fence of each context; returns the new length. An empty list
/// stays empty (0, as in the 2026 fix).
///
/// The kernel sorts with a comparator that uses 32-bit wrap-around within a
/// context. That is not a total order when points lie more than 2^31 apart,
/// which Rust's sort may reject by panicking; so this sorts by context only
/// (a stable sort) and picks the latest of each context by a scan, which
/// gives the kernel's result whenever the kernel's is well defined.
pub fn dedup_array(fences: &mut Vec<Fence>) -> usize {
    fences.sort_by_key(Fence::context);
    let mut out: Vec<Fence> = Vec::with_capacity(fences.len());
    for f in fences.drain(..) {
        match out.last_mut() {
            Some(last) if last.context() == f.context() => {
                if f.is_later(last).unwrap_or(false) {
                    *last = f;
                }
            }
            _ => out.push(f),
        }
    }
    *fences = out;
    fences.len()
}

/// `dma_fence_unwrap_merge`: one fence that signals when every input has,
/// following the rules in the module documentation.
pub fn merge(fences: &[&Fence]) -> Fence {
    let mut pending = Vec::new();
    let mut timestamp = 0u64;
    for f in fences {
        for leaf in leaves(f) {
            if !leaf.is_signaled() {
                pending.push(leaf);
            } else if let Some(t) = leaf.timestamp() {
                timestamp = timestamp.max(t);
            }
        }
    }
    if pending.len() > 1 {
        dedup_array(&mut pending);
    }
    match pending.len() {
        0 => Fence::private_stub(timestamp),
        1 => pending
            .pop()
            .unwrap_or_else(|| Fence::private_stub(timestamp)),
        _ => {
            let context = context_alloc(1).unwrap_or(u64::MAX);
            // Leaves are never containers and the list is not empty, so
            // creation cannot fail; the stub only keeps this total.
            FenceArray::create(pending, context, 1)
                .unwrap_or_else(|_| Fence::private_stub(timestamp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_fence::{FenceContext, SignalHandle};
    use crate::dma_fence_chain::chain;

    fn leaf() -> (Fence, SignalHandle) {
        FenceContext::named("test", "leaf").create()
    }

    #[test]
    fn merge_of_signalled_fences_is_a_stub_with_the_latest_timestamp() {
        let (f1, h1) = leaf();
        let (f2, h2) = leaf();
        h1.signal_timestamp(100).unwrap();
        h2.signal_timestamp(300).unwrap();
        let m = merge(&[&f1, &f2]);
        assert_eq!(m.kind(), FenceKind::Stub);
        assert!(m.is_signaled());
        assert_eq!(m.timestamp(), Some(300));
        assert_ne!(m, Fence::stub(), "a private stub, not the shared one");
    }

    #[test]
    fn merge_of_one_pending_fence_returns_it() {
        let (f1, _h1) = leaf();
        let (f2, h2) = leaf();
        h2.signal().unwrap();
        assert_eq!(merge(&[&f1]), f1);
        assert_eq!(merge(&[&f1, &f2]), f1);
    }

    #[test]
    fn merge_builds_an_array_on_a_fresh_context_at_seqno_1() {
        let (f1, _h1) = leaf();
        let (f2, _h2) = leaf();
        let m = merge(&[&f2, &f1]);
        assert_eq!(m.kind(), FenceKind::Array);
        assert_eq!(m.seqno(), 1);
        assert!(m.context() > f2.context());
        assert_eq!(FenceArray::children(&m).unwrap(), vec![f1, f2]);
    }

    #[test]
    fn dedup_keeps_latest_per_context_with_32_bit_wrap() {
        let ctx = FenceContext::named("t", "wrap");
        let (old, _h1) = ctx.create_with_seqno(0xffff_fff0);
        let (new, _h2) = ctx.create_with_seqno(5);
        let mut v = vec![old, new.clone()];
        assert_eq!(dedup_array(&mut v), 1);
        assert_eq!(v, vec![new]);
        let mut empty = Vec::new();
        assert_eq!(dedup_array(&mut empty), 0);
    }

    #[test]
    fn dedup_survives_a_non_transitive_order() {
        // Three points 2^30 apart on a 32-bit timeline form a cycle under
        // wrap-around comparison; the kernel's sort would be undefined and
        // Rust's may panic. Dedup still keeps exactly one.
        let ctx = FenceContext::named("t", "cycle");
        let mut v: Vec<Fence> = [0u64, 0x5555_5555, 0xaaaa_aaaa]
            .iter()
            .map(|s| ctx.create_with_seqno(*s).0)
            .collect();
        assert_eq!(dedup_array(&mut v), 1);
    }

    #[test]
    fn leaves_of_a_chain_of_chains_are_unwrapped() {
        let (f1, _h1) = leaf();
        let (f2, _h2) = leaf();
        let inner = chain(None, f1.clone(), 1);
        let outer = chain(None, inner, 1);
        let outer = chain(Some(outer), f2.clone(), 2);
        let got: Vec<Fence> = leaves(&outer).collect();
        assert_eq!(got, vec![f2, f1]);
    }

    #[test]
    fn leaves_of_a_leaf_is_the_leaf() {
        let (f1, _h1) = leaf();
        assert_eq!(leaves(&f1).collect::<Vec<_>>(), vec![f1]);
    }
}
