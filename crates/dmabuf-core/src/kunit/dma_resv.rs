//! The kernel's `dma-buf-resv` KUnit suite (`st-dma-resv.c`; docs/kernel-semantics.md)
//! and the tests it lacks: usage filtering, the replacement rules, reserve
//! growth, concurrent restarts, wait-die, bad input and the validator.

use crate::dma_fence::{Fence, FenceContext, FenceKind, FenceOps, NamedOps, SignalHandle};
use crate::dma_fence_array::FenceArray;
use crate::dma_resv::{DmaResv, ResvError, ResvGuard, Usage, lock_all, usage_rw};
use crate::errno::{self, AsErrno};
use crate::lockdep::{self, ClassId, ReportKind};
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Arc, thread};
use crate::ww_mutex::{RESERVATION_WW_CLASS, WwAcquireCtx, WwError};
use crate::{CancelToken, MAX_SCHEDULE_TIMEOUT};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// The suite's fence: context 0, seqno 0, like `alloc_fence` in
/// st-dma-resv.c.
fn mock_fence() -> (Fence, SignalHandle) {
    Fence::init(NamedOps::new("dma-resv-test", "mock"), 0, 0)
}

/// Grace periods until nothing stays retired (other tests' threads may
/// be inside a section for a moment); returns what is still pending.
/// How long a liveness wait in these tests may take before it counts as
/// a failure: far beyond any scheduling delay on a loaded machine, so
/// reaching it means a reader is stuck, not that the machine is slow.
const LIVENESS: Duration = Duration::from_secs(60);

/// Runs grace periods until nothing retired is left. Other tests'
/// threads may be inside sections of their own (and preempted there on
/// a loaded machine), which only delays it: the bound is [`LIVENESS`],
/// not a count of attempts.
fn reclaim_until_empty(g: &ResvGuard<'_>) -> usize {
    let start = std::time::Instant::now();
    let mut pending = g.reclaim_retired().unwrap();
    while pending != 0 && start.elapsed() < LIVENESS {
        thread::sleep(Duration::from_micros(100));
        pending = g.reclaim_retired().unwrap();
    }
    pending
}

fn timeline() -> FenceContext {
    FenceContext::named("dma-resv-test", "timeline")
}

// ---- st-dma-resv.c ---------------------------------------------------

#[test]
fn test_sanitycheck() {
    let (f, h) = mock_fence();
    h.signal().unwrap();
    drop(f);
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.unlock().unwrap();
    assert!(!resv.is_locked());
}

fn test_signaling(usage: Usage) {
    let resv = DmaResv::new();
    let (f, h) = mock_fence();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, usage).unwrap();
    assert!(!resv.test_signaled(usage), "resv unexpectedly signaled");
    h.signal().unwrap();
    assert!(resv.test_signaled(usage), "resv not reporting signaled");
    g.unlock().unwrap();
}

fn test_for_each(usage: Usage) {
    let resv = DmaResv::new();
    let (f, _h) = mock_fence();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, usage).unwrap();
    let mut n = 0;
    for e in g.for_each_fence(usage) {
        n += 1;
        assert!(e.fence.ptr_eq(&f), "Unexpected fence");
        assert_eq!(e.usage, usage, "Unexpected usage");
        assert!(e.restarted);
    }
    assert_eq!(n, 1, "Didn't find exactly one fence");
}

fn test_for_each_unlocked(usage: Usage) {
    let resv = DmaResv::new();
    let (f, _h) = mock_fence();
    {
        let g = resv.lock(None).unwrap();
        g.reserve_fences(1).unwrap();
        g.add_fence(&f, usage).unwrap();
    }
    // The kernel test's state machine: -ENOENT, then -EINVAL after
    // corrupting the cursor, then 0.
    let mut state = errno::ENOENT.to_negative();
    let mut visits = 0;
    let mut it = resv.iter_unlocked(usage);
    while let Some(e) = it.next() {
        visits += 1;
        assert_ne!(state, 0, "More than one fence found");
        assert!(e.restarted, "No restart flag");
        assert!(e.fence.ptr_eq(&f), "Unexpected fence");
        assert_eq!(e.usage, usage, "Unexpected fence usage");
        if state == errno::ENOENT.to_negative() {
            state = errno::EINVAL.to_negative();
            it.force_restart();
        } else if state == errno::EINVAL.to_negative() {
            state = 0;
        }
    }
    assert_eq!(state, 0, "No fence found");
    assert_eq!(visits, 2);
}

fn test_get_fences(usage: Usage) {
    let resv = DmaResv::new();
    let (f, _h) = mock_fence();
    {
        let g = resv.lock(None).unwrap();
        g.reserve_fences(1).unwrap();
        g.add_fence(&f, usage).unwrap();
    }
    let fences = resv.get_fences(usage);
    assert_eq!(fences.len(), 1, "resv looks unexpectedly empty");
    assert!(fences[0].ptr_eq(&f), "get_fences returned unexpected fence");
}

macro_rules! per_usage {
    ($f:ident: $kernel:ident, $write:ident, $read:ident, $bookkeep:ident) => {
        #[test]
        fn $kernel() {
            $f(Usage::Kernel)
        }
        #[test]
        fn $write() {
            $f(Usage::Write)
        }
        #[test]
        fn $read() {
            $f(Usage::Read)
        }
        #[test]
        fn $bookkeep() {
            $f(Usage::Bookkeep)
        }
    };
}

per_usage!(test_signaling: test_signaling_kernel, test_signaling_write, test_signaling_read, test_signaling_bookkeep);
per_usage!(test_for_each: test_for_each_kernel, test_for_each_write, test_for_each_read, test_for_each_bookkeep);
per_usage!(test_for_each_unlocked: test_for_each_unlocked_kernel, test_for_each_unlocked_write, test_for_each_unlocked_read, test_for_each_unlocked_bookkeep);
per_usage!(test_get_fences: test_get_fences_kernel, test_get_fences_write, test_get_fences_read, test_get_fences_bookkeep);

// ---- usage filtering --------------------------------------------------

#[test]
fn query_at_x_sees_exactly_the_fences_with_usage_at_most_x() {
    for added in Usage::ALL {
        for queried in Usage::ALL {
            let resv = DmaResv::new();
            let (f, _h) = timeline().create();
            let g = resv.lock(None).unwrap();
            g.reserve_fences(1).unwrap();
            g.add_fence(&f, added).unwrap();
            let visible = added <= queried;
            let pair = format!("added {added}, queried {queried}");
            assert_eq!(
                g.for_each_fence(queried).count(),
                visible as usize,
                "{pair}"
            );
            g.unlock().unwrap();
            assert_eq!(resv.test_signaled(queried), !visible, "{pair}");
            assert_eq!(resv.get_fences(queried).len(), visible as usize, "{pair}");
            assert_eq!(
                resv.iter_unlocked(queried).count(),
                visible as usize,
                "{pair}"
            );
            assert_eq!(
                resv.get_singleton(queried).unwrap().is_some(),
                visible,
                "{pair}"
            );
            assert_eq!(
                resv.wait_timeout(queried, None, 0).unwrap(),
                if visible { 0 } else { 1 },
                "{pair}"
            );
        }
    }
}

#[test]
fn usage_rw_waits_for_readers_on_write_and_writers_on_read() {
    assert_eq!(usage_rw(true), Usage::Read);
    assert_eq!(usage_rw(false), Usage::Write);
    assert!(Usage::Kernel < Usage::Write && Usage::Write < Usage::Read);
    assert!(Usage::Read < Usage::Bookkeep);
}

// ---- replacement rules (docs/kernel-semantics.md) --------------------

fn entries(resv: &DmaResv) -> Vec<(Fence, Usage)> {
    let g = resv.held().unwrap();
    g.for_each_fence(Usage::Bookkeep)
        .map(|e| (e.fence, e.usage))
        .collect()
}

#[test]
fn adding_the_same_fence_twice_takes_no_slot() {
    let resv = DmaResv::new();
    let (f, _h) = timeline().create();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, Usage::Write).unwrap();
    g.add_fence(&f, Usage::Write).unwrap();
    assert_eq!(g.num_fences(), 1);
    let e = entries(&resv);
    assert!(e[0].0.ptr_eq(&f));
    assert_eq!(e[0].1, Usage::Write);
}

#[test]
fn promotion_replaces_the_weaker_entry() {
    let resv = DmaResv::new();
    let (f, _h) = timeline().create();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, Usage::Bookkeep).unwrap();
    g.add_fence(&f, Usage::Read).unwrap();
    let e = entries(&resv);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, Usage::Read);
    assert_eq!(resv.get_fences(Usage::Read).len(), 1);
}

#[test]
fn degradation_appends_and_keeps_the_stronger_entry() {
    let resv = DmaResv::new();
    let (f, _h) = timeline().create();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(2).unwrap();
    g.add_fence(&f, Usage::Write).unwrap();
    g.add_fence(&f, Usage::Read).unwrap();
    let e = entries(&resv);
    assert_eq!(e.len(), 2);
    assert_eq!((e[0].1, e[1].1), (Usage::Write, Usage::Read));
    assert!(e[0].0.ptr_eq(&f) && e[1].0.ptr_eq(&f));
}

#[test]
fn later_fence_with_weaker_usage_does_not_replace() {
    let tl = timeline();
    let (f1, _h1) = tl.create();
    let (f2, _h2) = tl.create();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(2).unwrap();
    g.add_fence(&f1, Usage::Write).unwrap();
    g.add_fence(&f2, Usage::Read).unwrap();
    let e = entries(&resv);
    assert_eq!(e.len(), 2);
    assert!(e[0].0.ptr_eq(&f1) && e[1].0.ptr_eq(&f2));
}

#[test]
fn later_fence_with_same_or_stronger_usage_replaces() {
    let tl = timeline();
    let (f1, _h1) = tl.create();
    let (f2, _h2) = tl.create();
    let (f3, _h3) = tl.create();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f1, Usage::Read).unwrap();
    g.add_fence(&f2, Usage::Read).unwrap();
    g.add_fence(&f3, Usage::Kernel).unwrap();
    let e = entries(&resv);
    assert_eq!(e.len(), 1);
    assert!(e[0].0.ptr_eq(&f3));
    assert_eq!(e[0].1, Usage::Kernel);
}

#[test]
fn earlier_fence_of_the_same_context_appends() {
    let tl = timeline();
    let (f1, _h1) = tl.create();
    let (f2, _h2) = tl.create();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(2).unwrap();
    g.add_fence(&f2, Usage::Write).unwrap();
    g.add_fence(&f1, Usage::Write).unwrap();
    assert_eq!(g.num_fences(), 2);
}

#[test]
fn later_or_same_is_pointer_identity_for_equal_seqnos() {
    let tl = timeline();
    let (a, _ha) = tl.create_with_seqno(7);
    let (b, _hb) = tl.create_with_seqno(7);
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(2).unwrap();
    g.add_fence(&a, Usage::Write).unwrap();
    // Same point, different fence: not "later or same".
    g.add_fence(&b, Usage::Write).unwrap();
    assert_eq!(g.num_fences(), 2);
    // The very same fence replaces its own entry.
    g.add_fence(&a, Usage::Write).unwrap();
    assert_eq!(g.num_fences(), 2);
}

#[test]
fn signalled_entries_are_recycled_by_any_fence() {
    let (f1, h1) = timeline().create();
    let (g1, _hg) = timeline().create();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f1, Usage::Kernel).unwrap();
    h1.signal().unwrap();
    // No slot left, but the signalled entry is reused.
    g.add_fence(&g1, Usage::Bookkeep).unwrap();
    let e = entries(&resv);
    assert_eq!(e.len(), 1);
    assert!(e[0].0.ptr_eq(&g1));
    assert_eq!(e[0].1, Usage::Bookkeep);
}

#[test]
fn replace_fences_swaps_every_entry_of_a_context() {
    let tl = timeline();
    let (a1, _h1) = tl.create();
    let (a2, _h2) = tl.create();
    let (b, _hb) = timeline().create();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(3).unwrap();
    g.add_fence(&a2, Usage::Read).unwrap();
    g.add_fence(&b, Usage::Write).unwrap();
    // Earlier point with a weaker usage: appended, not merged.
    g.add_fence(&a1, Usage::Bookkeep).unwrap();
    let stub = Fence::stub();
    g.replace_fences(tl.context(), &stub, Usage::Bookkeep)
        .unwrap();
    let e = entries(&resv);
    assert_eq!(e.len(), 3);
    assert!(e[0].0.ptr_eq(&stub) && e[2].0.ptr_eq(&stub));
    assert!(e[1].0.ptr_eq(&b));
    assert_eq!(
        e.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![Usage::Bookkeep, Usage::Write, Usage::Bookkeep]
    );
    drop(g);
    assert_eq!(resv.get_fences(Usage::Bookkeep).len(), 1);
}

#[test]
fn copy_fences_takes_the_unsignalled_fences_with_their_usage() {
    let (f1, _h1) = timeline().create();
    let (f2, h2) = timeline().create();
    let (f3, _h3) = timeline().create();
    let (old, _ho) = timeline().create();
    let src = DmaResv::new();
    {
        let g = src.lock(None).unwrap();
        g.reserve_fences(3).unwrap();
        g.add_fence(&f1, Usage::Write).unwrap();
        g.add_fence(&f2, Usage::Read).unwrap();
        g.add_fence(&f3, Usage::Bookkeep).unwrap();
    }
    h2.signal().unwrap();
    let dst = DmaResv::new();
    let g = dst.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&old, Usage::Kernel).unwrap();
    g.copy_fences(&src).unwrap();
    let e = entries(&dst);
    assert_eq!(e.len(), 2);
    assert!(e[0].0.ptr_eq(&f1) && e[1].0.ptr_eq(&f3));
    assert_eq!((e[0].1, e[1].1), (Usage::Write, Usage::Bookkeep));
    // Copying an empty object empties the destination.
    g.copy_fences(&DmaResv::new()).unwrap();
    assert_eq!(g.num_fences(), 0);
}

// ---- reservation -----------------------------------------------------

#[test]
fn reserve_growth_follows_the_kernel_rule() {
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    assert_eq!(g.max_fences(), 0);
    g.reserve_fences(1).unwrap();
    assert_eq!(g.max_fences(), 4, "first list: max(4, pow2(1))");
    let tls: Vec<FenceContext> = (0..12).map(|_| timeline()).collect();
    let mut handles = Vec::new();
    let mut add = |i: usize, u: Usage| {
        let (f, h) = tls[i].create();
        g.add_fence(&f, u).unwrap();
        handles.push(h);
    };
    g.reserve_fences(4).unwrap();
    assert_eq!(g.max_fences(), 4, "num + n fits: no reallocation");
    for (i, u) in Usage::ALL.into_iter().enumerate() {
        add(i, u);
    }
    g.reserve_fences(1).unwrap();
    assert_eq!(g.max_fences(), 8, "max(4 + 1, 2 * 4)");
    g.reserve_fences(4).unwrap();
    assert_eq!(g.max_fences(), 8, "4 + 4 fits");
    // Signal two entries; the next reallocation drops them and keeps
    // the usage of the others.
    let h0 = handles.remove(0);
    let h1 = handles.remove(0);
    h0.signal().unwrap();
    h1.signal().unwrap();
    g.reserve_fences(9).unwrap();
    assert_eq!(g.max_fences(), 16, "max(4 + 9, 2 * 8)");
    assert_eq!(g.num_fences(), 2);
    let usages: Vec<Usage> = g.for_each_fence(Usage::Bookkeep).map(|e| e.usage).collect();
    assert_eq!(usages, vec![Usage::Read, Usage::Bookkeep]);
    drop(g);
    let fresh = DmaResv::new();
    let g = fresh.lock(None).unwrap();
    g.reserve_fences(5).unwrap();
    assert_eq!(g.max_fences(), 8, "first list: max(4, pow2(5))");
}

/// Linux 7.x `dma_resv_reserve_fences(obj, 0)`: returns 0 and changes
/// nothing (no new list, no reserved slot).
#[test]
fn dma_resv_reserve_fences_zero_succeeds_and_changes_nothing() {
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    assert_eq!(g.reserve_fences(0), Ok(()));
    assert_eq!(g.max_fences(), 0, "no list allocated for zero fences");
    let (f, _h) = timeline().create();
    assert!(
        g.add_fence(&f, Usage::Write).is_err(),
        "zero reserved slots: the add is still refused"
    );
    g.reserve_fences(2).unwrap();
    assert_eq!(g.reserve_fences(0), Ok(()));
    assert_eq!(g.max_fences(), 4);
    g.add_fence(&f, Usage::Write).unwrap();
    assert_eq!(g.num_fences(), 1);
}

/// `dma_resv_reserve_fences` answers `-ENOMEM` when its list cannot be
/// allocated (`kmalloc` beyond `KMALLOC_MAX_SIZE`), and the object
/// keeps its old list and stays usable.
#[test]
fn dma_resv_reserve_fences_huge_is_enomem_not_abort() {
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    let (f, _h) = timeline().create();
    g.add_fence(&f, Usage::Read).unwrap();
    for n in [
        1 << 30,
        u32::MAX,
        (crate::dma_resv::KMALLOC_MAX_SIZE / 8) as u32,
    ] {
        let e = g.reserve_fences(n).unwrap_err();
        assert_eq!(e.errno(), errno::ENOMEM, "reserve_fences({n})");
    }
    assert_eq!(g.num_fences(), 1);
    assert_eq!(g.max_fences(), 4);
    g.reserve_fences(100).unwrap();
    assert!(g.max_fences() >= 101);
}

#[test]
fn add_without_reserved_slot_is_refused_and_object_stays_usable() {
    let resv = DmaResv::new();
    let (f, _h) = timeline().create();
    let (f2, _h2) = timeline().create();
    let (f3, _h3) = timeline().create();
    let g = resv.lock(None).unwrap();
    assert_eq!(
        g.add_fence(&f, Usage::Write),
        Err(ResvError::NoSlotReserved {
            num: 0,
            reserved: 0
        })
    );
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, Usage::Write).unwrap();
    let e = g.add_fence(&f2, Usage::Write).unwrap_err();
    assert!(matches!(e, ResvError::NoSlotReserved { num: 1, .. }));
    assert_eq!(e.errno(), errno::EINVAL);
    drop(g);
    // Slots are valid only until unlock, even with capacity left.
    let g = resv.lock(None).unwrap();
    assert!(g.max_fences() > g.num_fences());
    assert!(matches!(
        g.add_fence(&f2, Usage::Write),
        Err(ResvError::NoSlotReserved { .. })
    ));
    g.reserve_fences(2).unwrap();
    g.add_fence(&f2, Usage::Write).unwrap();
    g.add_fence(&f3, Usage::Write).unwrap();
    assert_eq!(g.num_fences(), 3);
}

#[test]
fn containers_are_refused_and_object_stays_usable() {
    let (a, _ha) = timeline().create();
    let (b, _hb) = timeline().create();
    let array = FenceArray::create(vec![a.clone(), b], 4242, 1).unwrap();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    let e = g.add_fence(&array, Usage::Read).unwrap_err();
    assert_eq!(
        e,
        ResvError::ContainerFence {
            context: 4242,
            seqno: 1
        }
    );
    assert_eq!(e.errno(), errno::EINVAL);
    assert!(g.replace_fences(0, &array, Usage::Read).is_err());
    assert_eq!(g.num_fences(), 0);
    g.add_fence(&a, Usage::Read).unwrap();
    assert_eq!(g.num_fences(), 1);
}

#[test]
fn lock_state_is_checked_and_wrong_holder_calls_fail() {
    let resv = Arc::new(DmaResv::new());
    assert_eq!(
        resv.assert_held(),
        Err(ResvError::NotHeld { locked: false })
    );
    assert!(resv.held().is_err());
    resv.assert_not_held().unwrap();
    let g = resv.lock(None).unwrap();
    resv.assert_held().unwrap();
    assert_eq!(resv.assert_not_held(), Err(ResvError::HeldByCaller));
    let borrowed = resv.held().unwrap();
    g.keep_locked();
    let r2 = resv.clone();
    let (held_elsewhere, unlock_elsewhere) = thread::spawn(move || (r2.assert_held(), r2.unlock()))
        .join()
        .unwrap();
    assert_eq!(held_elsewhere, Err(ResvError::NotHeld { locked: true }));
    let e = unlock_elsewhere.unwrap_err();
    assert!(matches!(e, ResvError::Ww(WwError::NotOwner { .. })));
    assert_eq!(e.errno(), errno::EPERM);
    assert!(resv.is_held_by_current_thread());
    resv.unlock().unwrap();
    // A borrowed guard outliving the unlock is refused, not trusted.
    assert_eq!(
        borrowed.reserve_fences(1),
        Err(ResvError::NotHeld { locked: false })
    );
    drop(borrowed);
    assert!(!resv.is_locked());
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
}

// ---- unlocked iteration and readers ----------------------------------

#[test]
fn unlocked_iteration_restarts_when_the_list_is_reallocated() {
    let tls: Vec<FenceContext> = (0..6).map(|_| timeline()).collect();
    let made: Vec<(Fence, SignalHandle)> = tls.iter().map(FenceContext::create).collect();
    let resv = DmaResv::new();
    {
        let g = resv.lock(None).unwrap();
        g.reserve_fences(2).unwrap();
        g.add_fence(&made[0].0, Usage::Write).unwrap();
        g.add_fence(&made[1].0, Usage::Write).unwrap();
    }
    let mut it = resv.iter_unlocked(Usage::Bookkeep);
    let first = it.next().unwrap();
    assert!(first.restarted && first.fence.ptr_eq(&made[0].0));
    {
        let g = resv.lock(None).unwrap();
        let before = g.max_fences();
        g.reserve_fences(before).unwrap();
        assert!(g.max_fences() > before, "must reallocate");
        g.add_fence(&made[2].0, Usage::Read).unwrap();
    }
    let again = it.next().unwrap();
    assert!(again.restarted, "a reallocation must restart the cursor");
    assert!(again.fence.ptr_eq(&made[0].0));
    let rest: Vec<_> = it.collect();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|e| !e.restarted));
    assert!(rest[1].fence.ptr_eq(&made[2].0));
}

/// Deterministic whatever the machine's load: the writer starts only
/// once the reader has made a pass, and after its 300 rounds keeps
/// going (each further round waits for the reader to make two more
/// passes, so the reader's sections all began after the round's first
/// grace period) until a grace period has freed something while the
/// reader ran. Only a reader that stops making progress, or grace
/// periods that never complete, can fail it ([`LIVENESS`]).
#[test]
fn unlocked_readers_restart_while_another_thread_reserves_and_adds() {
    let resv = Arc::new(DmaResv::new());
    let stop = Arc::new(AtomicUsize::new(0));
    let passes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (resv, stop, passes) = (resv.clone(), stop.clone(), passes.clone());
        thread::spawn(move || {
            let tl = timeline();
            let mut rounds = 0u32;
            let mut handles = Vec::new();
            // Grace periods that freed something while the reader kept
            // reading.
            let mut frees = 0;
            let start = std::time::Instant::now();
            while passes.load(Ordering::SeqCst) == 0 && start.elapsed() < LIVENESS {
                thread::yield_now();
            }
            while rounds < 300 || (frees == 0 && start.elapsed() < LIVENESS) {
                let g = resv.lock(None).unwrap();
                // Both calls publish a new list: readers must restart.
                g.copy_fences(&resv).unwrap();
                g.reserve_fences(4).unwrap();
                for _ in 0..3 {
                    let (f, h) = timeline().create();
                    g.add_fence(&f, Usage::Read).unwrap();
                    handles.push(h);
                }
                let (f, h) = tl.create();
                g.add_fence(&f, Usage::Write).unwrap();
                handles.push(h);
                if g.num_fences() > 64 {
                    for h in handles.drain(..) {
                        h.signal().unwrap();
                    }
                }
                assert!(g.max_fences() <= 256, "capacity stays bounded");
                // Counted around each grace period (the unlock's, then
                // an explicit one), not sampled once per round: every
                // round retires about as much as the one before, so a
                // per-round sample need not go down even when each
                // unlock frees what the round retired.
                let retired = g.resv().retired_pending().unwrap();
                drop(g);
                if rounds >= 300 {
                    // One grace period, then two full reader passes:
                    // every section the reader is in from then on
                    // began after that grace period's epoch.
                    let g = resv.lock(None).unwrap();
                    let _ = g.reclaim_retired().unwrap();
                    drop(g);
                    let seen = passes.load(Ordering::SeqCst);
                    while passes.load(Ordering::SeqCst) < seen + 2 && start.elapsed() < LIVENESS {
                        thread::yield_now();
                    }
                }
                let g = resv.lock(None).unwrap();
                let before = g.resv().retired_pending().unwrap();
                frees += usize::from(before < retired);
                frees += usize::from(g.reclaim_retired().unwrap() < before);
                drop(g);
                rounds += 1;
            }
            stop.store(1, Ordering::SeqCst);
            (handles, frees)
        })
    };
    while stop.load(Ordering::SeqCst) == 0 || passes.load(Ordering::SeqCst) == 0 {
        let mut seen: Vec<Fence> = Vec::new();
        for e in resv.iter_unlocked(Usage::Bookkeep) {
            if e.restarted {
                seen.clear();
            }
            assert!(e.usage == Usage::Read || e.usage == Usage::Write);
            assert!(
                !seen.iter().any(|s| s.ptr_eq(&e.fence)),
                "a fence twice without a restart"
            );
            seen.push(e.fence);
        }
        let _ = resv.test_signaled(Usage::Bookkeep);
        passes.fetch_add(1, Ordering::SeqCst);
    }
    let (handles, frees) = writer.join().unwrap();
    assert!(passes.load(Ordering::SeqCst) > 0);
    // The reader is almost always inside a section, yet grace periods
    // keep freeing what was retired before them: every round retires a
    // list, so each unlock starts one, and the explicit one follows.
    assert!(frees > 0, "nothing freed while the reader ran");
    drop(handles);
    let g = resv.lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    drop(g);
    // No reader is left: a grace period frees everything retired (other
    // tests' threads may be inside a section of their own for a moment,
    // which only delays it).
    let g = resv.lock(None).unwrap();
    let pending = reclaim_until_empty(&g);
    assert_eq!(pending, 0, "retired objects freed");
}

/// Real-thread readers (rcu sections) against a writer that keeps
/// replacing signalled fences, growing and copying lists, and dropping
/// its own references at once, so the reservation object's retired
/// reference is often the last. A freed fence is poisoned in unit-test
/// builds and the reader's flag check asserts on it; a freed list would
/// hand the reader garbage pointers.
///
/// Deterministic whatever the machine's load: each reader counts its
/// calls where the writer sees them, the writer starts only once every
/// reader has made a call and runs until it has done its 3000 rounds
/// and every reader has made calls during them (not a fixed number of
/// rounds that a descheduled reader might sleep through).
#[test]
fn rcu_readers_never_reach_freed_fences_or_lists() {
    const READERS: usize = 2;
    let resv = Arc::new(DmaResv::new());
    let stop = Arc::new(AtomicUsize::new(0));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (resv, stop, counts) = (resv.clone(), stop.clone(), counts.clone());
            thread::spawn(move || {
                let mut calls = 0u64;
                while stop.load(Ordering::SeqCst) == 0 {
                    for u in Usage::ALL {
                        let _ = resv.test_signaled(u);
                    }
                    calls += 1;
                    counts[i].store(calls, Ordering::SeqCst);
                }
                calls
            })
        })
        .collect();
    let min_calls = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while min_calls() == 0 && start.elapsed() < LIVENESS {
        thread::yield_now();
    }
    let at_start = counts
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect::<Vec<_>>();
    let during = || {
        counts
            .iter()
            .zip(&at_start)
            .all(|(c, &s)| c.load(Ordering::SeqCst) > s)
    };
    let tl = timeline();
    let mut round = 0u32;
    while round < 3000 || (!during() && start.elapsed() < LIVENESS) {
        round += 1;
        let g = resv.lock(None).unwrap();
        if round.is_multiple_of(97) {
            g.copy_fences(&resv).unwrap();
        }
        g.reserve_fences(2).unwrap();
        // A signalled fence on a fresh context: the next round's add
        // recycles its slot, retiring the last reference to it.
        let (f, h) = timeline().create();
        g.add_fence(&f, Usage::Read).unwrap();
        h.signal().unwrap();
        drop(f);
        // Same context, later seqno: replaces in place.
        let (f, h) = tl.create();
        g.add_fence(&f, Usage::Write).unwrap();
        h.signal().unwrap();
        drop(f);
        drop(g);
    }
    let overlapped = during();
    stop.store(1, Ordering::SeqCst);
    let calls: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(
        overlapped,
        "every reader made calls while the writer ran: {calls:?}"
    );
    let g = resv.lock(None).unwrap();
    let pending = reclaim_until_empty(&g);
    assert_eq!(pending, 0);
    assert!(g.num_fences() <= 4, "signalled entries are recycled");
}

#[test]
fn get_singleton_none_one_or_a_fresh_array() {
    let resv = DmaResv::new();
    assert!(resv.get_singleton(Usage::Bookkeep).unwrap().is_none());
    let (a, ha) = timeline().create();
    let (b, hb) = timeline().create();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(2).unwrap();
    g.add_fence(&a, Usage::Write).unwrap();
    let one = resv.get_singleton(Usage::Write).unwrap().unwrap();
    assert!(one.ptr_eq(&a));
    g.add_fence(&b, Usage::Read).unwrap();
    let arr = resv.get_singleton(Usage::Read).unwrap().unwrap();
    assert_eq!(arr.kind(), FenceKind::Array);
    assert_eq!(arr.seqno(), 1);
    assert_ne!(arr.context(), a.context());
    assert_ne!(arr.context(), b.context());
    let arr2 = resv.get_singleton(Usage::Read).unwrap().unwrap();
    assert_ne!(arr.context(), arr2.context(), "fresh context each time");
    assert!(matches!(
        g.add_fence(&arr, Usage::Read),
        Err(ResvError::ContainerFence { .. })
    ));
    drop(g);
    ha.signal().unwrap();
    assert!(!arr.is_signaled());
    hb.signal().unwrap();
    assert!(arr.is_signaled());
}

#[test]
fn wait_timeout_returns_the_kernel_values() {
    let resv = Arc::new(DmaResv::new());
    assert_eq!(resv.wait_timeout(Usage::Bookkeep, None, 0), Ok(1));
    assert_eq!(resv.wait_timeout(Usage::Bookkeep, None, 500), Ok(500));
    let (f, h) = timeline().create();
    {
        let g = resv.lock(None).unwrap();
        g.reserve_fences(1).unwrap();
        g.add_fence(&f, Usage::Write).unwrap();
    }
    assert_eq!(resv.wait_timeout(Usage::Kernel, None, 0), Ok(1));
    assert_eq!(resv.wait_timeout(Usage::Write, None, 0), Ok(0));
    assert_eq!(resv.wait_timeout(Usage::Write, None, 1_000_000), Ok(0));
    let token = CancelToken::new();
    let (r2, t2) = (resv.clone(), token.clone());
    let waiter =
        thread::spawn(move || r2.wait_timeout(Usage::Bookkeep, Some(&t2), MAX_SCHEDULE_TIMEOUT));
    thread::sleep(Duration::from_millis(10));
    token.cancel();
    let e = waiter.join().unwrap().unwrap_err();
    assert_eq!(e, ResvError::Interrupted);
    assert_eq!(e.errno(), errno::ERESTARTSYS);
    let r3 = resv.clone();
    let waiter = thread::spawn(move || r3.wait_timeout(Usage::Read, None, 10_000_000_000));
    thread::sleep(Duration::from_millis(10));
    h.signal().unwrap();
    let left = waiter.join().unwrap().unwrap();
    assert!(left > 0 && left <= 10_000_000_000);
    assert_eq!(resv.wait_timeout(Usage::Bookkeep, None, 0), Ok(1));
    assert!(resv.test_signaled(Usage::Bookkeep));
}

struct DeadlineOps(Arc<AtomicU64>);
impl FenceOps for DeadlineOps {
    fn driver_name(&self) -> &str {
        "deadline"
    }
    fn timeline_name(&self) -> &str {
        "deadline"
    }
    fn set_deadline(&self, _f: &Fence, ns: u64) {
        self.0.store(ns, Ordering::SeqCst);
    }
}

#[test]
fn set_deadline_reaches_the_fences_of_that_usage() {
    let hit_w = Arc::new(AtomicU64::new(0));
    let hit_b = Arc::new(AtomicU64::new(0));
    let (fw, _hw) = FenceContext::new(DeadlineOps(hit_w.clone())).create();
    let (fb, _hb) = FenceContext::new(DeadlineOps(hit_b.clone())).create();
    let resv = DmaResv::new();
    {
        let g = resv.lock(None).unwrap();
        g.reserve_fences(2).unwrap();
        g.add_fence(&fw, Usage::Write).unwrap();
        g.add_fence(&fb, Usage::Bookkeep).unwrap();
    }
    resv.set_deadline(Usage::Read, 1234);
    assert_eq!(hit_w.load(Ordering::SeqCst), 1234);
    assert_eq!(hit_b.load(Ordering::SeqCst), 0);
}

#[test]
fn describe_prints_read_and_below_in_the_kernel_format() {
    let tl = FenceContext::named("drv", "tl0");
    let (k, hk) = tl.create();
    let (r, _hr) = FenceContext::named("drv", "tl1").create();
    let (b, _hb) = FenceContext::named("drv", "tl2").create();
    let resv = DmaResv::new();
    let g = resv.lock(None).unwrap();
    g.reserve_fences(3).unwrap();
    g.add_fence(&k, Usage::Kernel).unwrap();
    g.add_fence(&r, Usage::Read).unwrap();
    g.add_fence(&b, Usage::Bookkeep).unwrap();
    hk.signal().unwrap();
    let text = g.describe();
    let expected = format!(
        "\tkernel fence:{}:{} signaled-timeline detached-driver signalled\n\tread fence:{}:{} tl1 drv unsignalled\n",
        k.context(),
        k.seqno(),
        r.context(),
        r.seqno()
    );
    assert_eq!(text, expected);
}

// ---- wait-die on reservation objects ---------------------------------

#[test]
fn older_ctx_waits_and_younger_ctx_dies_on_reservation_objects() {
    let a = Arc::new(DmaResv::new());
    let b = Arc::new(DmaResv::new());
    let mut old = WwAcquireCtx::new(&RESERVATION_WW_CLASS);
    // Young holds b; old holds a and wants b: old waits.
    let ga = a.lock(Some(&mut old)).unwrap();
    ga.keep_locked();
    let old_stamp = old.stamp();
    let (a2, b2) = (a.clone(), b.clone());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let younger = thread::spawn(move || {
        let mut young = WwAcquireCtx::new(&RESERVATION_WW_CLASS);
        assert!(old_stamp < young.stamp());
        b2.lock(Some(&mut young)).unwrap().keep_locked();
        tx.send(()).unwrap();
        // Young, holding b, wants a (held by old): dies.
        let e = a2.lock(Some(&mut young)).unwrap_err();
        assert_eq!(
            e,
            ResvError::Ww(WwError::Deadlock {
                stamp: young.stamp(),
                older: old_stamp
            })
        );
        assert_eq!(e.errno(), errno::EDEADLK);
        b2.unlock().unwrap();
        a2.lock_slow(&mut young).unwrap().keep_locked();
        b2.lock(Some(&mut young)).unwrap().keep_locked();
        a2.unlock().unwrap();
        b2.unlock().unwrap();
        young.fini().unwrap();
    });
    rx.recv().unwrap();
    // Old waits for the younger holder of b, which backs off.
    b.lock(Some(&mut old)).unwrap().keep_locked();
    assert!(b.is_held_by_ctx(&old));
    assert_eq!(b.locking_ctx(), Some(old.stamp()));
    a.unlock().unwrap();
    b.unlock().unwrap();
    younger.join().unwrap();
    old.fini().unwrap();
}

#[test]
fn lock_all_takes_every_object_and_releases_on_drop() {
    let objs: Vec<DmaResv> = (0..16).map(|_| DmaResv::new()).collect();
    let refs: Vec<&DmaResv> = objs.iter().collect();
    let set = lock_all(&refs).unwrap();
    assert_eq!(set.held().len(), 16);
    for o in &objs {
        let g = set.guard(o).unwrap();
        g.reserve_fences(1).unwrap();
        assert!(o.is_held_by_ctx(set.ctx()));
    }
    drop(set);
    assert!(objs.iter().all(|o| !o.is_locked()));
}

/// N threads lock random subsets of M objects in random order with
/// contexts and manual backoff; every transaction completes, mutual
/// exclusion holds, and a context only ever dies for an older one.
#[test]
fn stress_random_subsets_with_backoff_always_complete() {
    const THREADS: usize = 4;
    const OBJECTS: usize = 8;
    const ROUNDS: usize = 150;
    let objs: Arc<Vec<(DmaResv, AtomicUsize)>> = Arc::new(
        (0..OBJECTS)
            .map(|_| (DmaResv::new(), AtomicUsize::new(0)))
            .collect(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let (objs, done) = (objs.clone(), done.clone());
            thread::spawn_named(format!("resv-stress-{t}"), move || {
                let mut rng = rand_pcg::Pcg64::seed_from_u64(t as u64 + 1);
                let mut deaths = 0;
                for _ in 0..ROUNDS {
                    let mut order: Vec<usize> = (0..OBJECTS).collect();
                    order.shuffle(&mut rng);
                    order.truncate(rng.gen_range(1..=OBJECTS));
                    let mut ctx = WwAcquireCtx::new(&RESERVATION_WW_CLASS);
                    let mut held: Vec<usize> = Vec::new();
                    let mut slow: Option<usize> = None;
                    'retry: loop {
                        if let Some(i) = slow.take() {
                            objs[i].0.lock_slow(&mut ctx).unwrap().keep_locked();
                            held.push(i);
                        }
                        for &i in &order {
                            if held.contains(&i) {
                                continue;
                            }
                            match objs[i].0.lock(Some(&mut ctx)) {
                                Ok(g) => {
                                    g.keep_locked();
                                    held.push(i);
                                }
                                Err(ResvError::Ww(WwError::Deadlock { stamp, older })) => {
                                    assert!(older < stamp, "died for a younger ctx");
                                    deaths += 1;
                                    for &h in held.iter().rev() {
                                        objs[h].0.unlock().unwrap();
                                    }
                                    held.clear();
                                    slow = Some(i);
                                    continue 'retry;
                                }
                                Err(e) => panic!("unexpected {e}"),
                            }
                        }
                        break;
                    }
                    ctx.acquire_done().unwrap();
                    for &i in &held {
                        let prev = objs[i].1.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(prev, 0, "two holders of one object");
                    }
                    thread::yield_now();
                    for &i in &held {
                        objs[i].1.fetch_sub(1, Ordering::SeqCst);
                        objs[i].0.unlock().unwrap();
                    }
                    ctx.fini().unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
                deaths
            })
        })
        .collect();
    let deaths: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(done.load(Ordering::SeqCst), THREADS * ROUNDS);
    assert!(objs.iter().all(|(o, _)| !o.is_locked()));
    // Backoffs are timing-dependent (hundreds per run on two cores); the
    // properties are completion, exclusion and dying only for older.
    let _ = deaths;
}

/// The oldest context of a run never dies: two threads, the older one
/// created first and kept alive across the whole run.
#[test]
fn the_oldest_ctx_never_gets_deadlock() {
    let objs: Arc<Vec<DmaResv>> = Arc::new((0..4).map(|_| DmaResv::new()).collect());
    let mut oldest = WwAcquireCtx::new(&RESERVATION_WW_CLASS);
    let o2 = objs.clone();
    let young = thread::spawn(move || {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        for _ in 0..200 {
            let mut order: Vec<usize> = (0..4).collect();
            order.shuffle(&mut rng);
            let refs: Vec<&DmaResv> = order.iter().map(|&i| &o2[i]).collect();
            drop(lock_all(&refs).unwrap());
        }
    });
    let mut rng = rand_pcg::Pcg64::seed_from_u64(8);
    for _ in 0..200 {
        let mut order: Vec<usize> = (0..4).collect();
        order.shuffle(&mut rng);
        for &i in &order {
            objs[i].lock(Some(&mut oldest)).unwrap().keep_locked();
        }
        for &i in &order {
            objs[i].unlock().unwrap();
        }
    }
    young.join().unwrap();
    oldest.fini().unwrap();
}

// ---- the validator ---------------------------------------------------

#[test]
fn validator_reports_resv_lock_in_signalling_section() {
    let resv = DmaResv::new();
    let ((), reports) = lockdep::collect_reports(|| {
        let cookie = lockdep::begin_signalling();
        drop(resv.lock(None).unwrap());
        lockdep::end_signalling(cookie);
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].kind, ReportKind::ResvLockInSignallingSection);
    assert_eq!(reports[0].stacks.len(), 2);
    assert!(reports[0].stacks[1].contains("kunit/dma_resv.rs"));
}

#[test]
fn validator_reports_fence_wait_in_signalling_section() {
    let (f, _h) = timeline().create();
    let ((), reports) = lockdep::collect_reports(|| {
        let cookie = lockdep::begin_signalling();
        let _ = f.wait_timeout(None, 0);
        lockdep::end_signalling(cookie);
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].kind, ReportKind::WaitInSignallingSection);
}

#[test]
fn validator_reports_resv_taken_under_a_later_kernel_class() {
    let resv = DmaResv::new();
    let ((), reports) = lockdep::collect_reports(|| {
        lockdep::lock_acquired(ClassId::MMU_NOTIFIER, "invalidate_range_start");
        drop(resv.lock(None).unwrap());
        lockdep::lock_released(ClassId::MMU_NOTIFIER);
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].kind, ReportKind::LockOrderInversion);
    assert!(reports[0].stacks[0].contains("invalidate_range_start"));
    assert!(reports[0].stacks[1].starts_with("before: dma_resv"));
    assert!(reports[0].stacks[1].contains("mmu_notifier"));
}

#[test]
fn validator_reports_a_driver_lock_order_inversion_around_resv() {
    let drv = lockdep::register_class("kunit_resv_driver_lock");
    let resv = DmaResv::new();
    let ((), first) = lockdep::collect_reports(|| {
        let g = resv.lock(None).unwrap();
        lockdep::lock_acquired(drv, "driver lock under resv");
        lockdep::lock_released(drv);
        drop(g);
    });
    assert!(first.is_empty(), "{first:?}");
    let ((), second) = lockdep::collect_reports(|| {
        lockdep::lock_acquired(drv, "driver lock first");
        drop(resv.lock(None).unwrap());
        lockdep::lock_released(drv);
    });
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].kind, ReportKind::LockOrderInversion);
    assert!(second[0].stacks[1].contains("driver lock under resv"));
}

#[test]
fn validator_reports_second_resv_lock_without_ctx() {
    let a = DmaResv::new();
    let b = DmaResv::new();
    let ((), reports) = lockdep::collect_reports(|| {
        let ga = a.lock(None).unwrap();
        let gb = b.lock(None).unwrap();
        drop(gb);
        drop(ga);
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].kind, ReportKind::NestedWwLockWithoutCtx);
    // Trylock nesting is allowed, as in the kernel.
    let ((), reports) = lockdep::collect_reports(|| {
        let ga = a.lock(None).unwrap();
        let gb = b.trylock().unwrap();
        drop(gb);
        drop(ga);
    });
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn validator_is_silent_for_a_correct_program() {
    let objs: Vec<DmaResv> = (0..3).map(|_| DmaResv::new()).collect();
    let (f, h) = timeline().create();
    let ((), reports) = lockdep::collect_reports(|| {
        lockdep::lock_acquired(ClassId::MMAP_LOCK, "mmap_read_lock");
        let refs: Vec<&DmaResv> = objs.iter().collect();
        let set = lock_all(&refs).unwrap();
        for o in &objs {
            let g = set.guard(o).unwrap();
            g.reserve_fences(1).unwrap();
            g.add_fence(&f, Usage::Write).unwrap();
        }
        lockdep::lock_acquired(ClassId::FS_RECLAIM, "GFP_KERNEL allocation");
        lockdep::lock_released(ClassId::FS_RECLAIM);
        // Waiting for fences while holding reservations is allowed.
        assert_eq!(objs[0].wait_timeout(Usage::Write, None, 1000), Ok(0));
        drop(set);
        lockdep::lock_released(ClassId::MMAP_LOCK);
        let cookie = lockdep::begin_signalling();
        h.signal().unwrap();
        lockdep::end_signalling(cookie);
        assert!(objs.iter().all(|o| o.test_signaled(Usage::Bookkeep)));
    });
    assert!(reports.is_empty(), "{reports:?}");
    assert!(lockdep::held_classes().is_empty());
}
