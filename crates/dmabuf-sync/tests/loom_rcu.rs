//! Loom models of the real-thread read sections: the production module
//! `src/rcu.rs`, compiled over loom's atomics as `rcu_model` under
//! `--cfg loom` (`RUSTFLAGS="--cfg loom" cargo test -p dmabuf-sync --release
//! --test loom_rcu`).
//!
//! What is modelled, and how:
//!
//! | production | under loom |
//! |---|---|
//! | the record word, the epoch copy, the process epoch, the in-use count, the mode | loom atomics (per execution) |
//! | the registry lock (`parking_lot`) | loom's mutex: a scan is a series of steps other threads interleave with |
//! | the reader's compiler barrier + the reclaimer's `membarrier(2)` | a `SeqCst` fence on each side, which gives exactly the two outcomes `membarrier` promises |
//! | the thread-local record, removed from the registry at thread exit | a leaked record per thread, never removed (exit is not modelled) |
//! | the total order of `SeqCst` accesses that [`rcu::quiescent_alone`] relies on | a `SeqCst` fence at its start: loom treats `SeqCst` accesses as `AcqRel` (its README, "Unsupported features"), which without the fence is a false alarm |
//!
//! The property: an object unpublished by a reclaimer is freed only once
//! [`rcu::horizon`] has passed its [`rcu::retire_tag`] (or
//! [`rcu::quiescent_alone`] said nobody reads), and no reader that reached
//! it inside a section is still using it then. A "free" here writes a poison
//! value through loom's `UnsafeCell`, so a free that is not ordered after a
//! reader's use is a causality violation that loom reports, and a reader
//! that saw the poison fails its assertion.
//!
//! CI runs these with `LOOM_MAX_PREEMPTIONS=2` (0.13 s); without a preemption
//! bound, loom explores every interleaving of the models: 630 s on the
//! 2-core machine while other builds ran (2026-12-06), all passing.
#![cfg(loom)]

use dmabuf_sync::rcu_model as rcu;
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicPtr, Ordering};
use loom::thread;

const LIVE: u64 = 0x1111;
const POISON: u64 = 0xdead;

/// What readers reach through the published pointer.
struct Node {
    val: UnsafeCell<u64>,
}

impl Node {
    fn boxed() -> *mut Node {
        Box::into_raw(Box::new(Node {
            val: UnsafeCell::new(LIVE),
        }))
    }
}

struct Shared {
    ptr: AtomicPtr<Node>,
    /// Every node ever published, freed for real after the threads joined.
    all: Vec<*mut Node>,
}

// SAFETY: the raw pointers are only dereferenced under the protocol under
// test, and the nodes are freed after every thread joined.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(nodes: usize) -> Shared {
        let all: Vec<*mut Node> = (0..nodes).map(|_| Node::boxed()).collect();
        Shared {
            ptr: AtomicPtr::new(all[0]),
            all,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for &p in &self.all {
            // SAFETY: every thread has joined; each node was boxed once.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// The body of a read section: load the pointer, use what it points to.
fn use_published(s: &Shared) -> u64 {
    let p = s.ptr.load(Ordering::Acquire);
    // SAFETY: published nodes live until `Shared` drops; the protocol under
    // test is what keeps the poisoning away from this read.
    let v = unsafe { (*p).val.with(|v| *v) };
    assert_eq!(v, LIVE, "a reader used an object after it was freed");
    v
}

/// Unpublishes the current node in favour of `next` and frees it ("writes
/// the poison") once a grace period allows; returns whether it did.
fn replace_and_reclaim(s: &Shared, next: usize) -> bool {
    let old = s.ptr.swap(s.all[next], Ordering::SeqCst);
    let tag = rcu::retire_tag();
    if rcu::horizon() > tag {
        // SAFETY: the grace period says no reader can still use `old`.
        unsafe { (*old).val.with_mut(|v| *v = POISON) };
        true
    } else {
        false
    }
}

/// One reader thread running `reader` against a reclaimer on the model's
/// main thread running `reclaimer`.
fn model_pair(
    nodes: usize,
    reader: fn(&Shared),
    reclaimer: fn(&Shared),
) -> impl Fn() + Sync + Send + 'static {
    move || {
        let s = Arc::new(Shared::new(nodes));
        let s2 = s.clone();
        let t = thread::spawn(move || reader(&s2));
        reclaimer(&s);
        t.join().unwrap();
    }
}

/// A reader's first section (it registers: the slow path) against one
/// replacement and grace period.
fn first_section_against_one_grace_period() -> impl Fn() + Sync + Send + 'static {
    model_pair(
        2,
        |s| {
            rcu::read_section(|| use_published(s)).expect("loom threads are not controlled tasks");
        },
        |s| {
            replace_and_reclaim(s, 1);
        },
    )
}

/// The fast path: a registered reader's second section announces its copy
/// of the epoch, which the reclaimer's grace periods bring up to date with
/// `fetch_max` while it runs.
fn fast_path_against_two_grace_periods() -> impl Fn() + Sync + Send + 'static {
    model_pair(
        3,
        |s| {
            // Registers (slow path) and is done with the first node.
            drop(rcu::try_read_lock());
            rcu::read_section(|| use_published(s)).unwrap();
        },
        |s| {
            replace_and_reclaim(s, 1);
            replace_and_reclaim(s, 2);
        },
    )
}

/// A nested section's exit must not end the outer one.
fn nested_exit_keeps_the_outer_section() -> impl Fn() + Sync + Send + 'static {
    model_pair(
        2,
        |s| {
            let outer = rcu::try_read_lock().unwrap();
            let inner = rcu::try_read_lock().unwrap();
            assert!(outer.is_outermost() && !inner.is_outermost());
            drop(inner);
            use_published(s);
            drop(outer);
        },
        |s| {
            replace_and_reclaim(s, 1);
        },
    )
}

/// The shortcut without a grace period: free at once when nobody else has
/// ever registered, racing a reader that registers.
fn quiescent_alone_against_a_registering_reader() -> impl Fn() + Sync + Send + 'static {
    model_pair(
        2,
        |s| {
            rcu::read_section(|| use_published(s)).unwrap();
        },
        |s| {
            let old = s.ptr.swap(s.all[1], Ordering::SeqCst);
            if rcu::quiescent_alone() {
                // SAFETY: nobody else has a record, so nobody reads.
                unsafe { (*old).val.with_mut(|v| *v = POISON) };
            }
        },
    )
}

/// A grace period with no reader left must complete: the horizon passes a
/// tag once the reader's section is over (liveness of reclamation).
fn horizon_passes_after_the_reader_left() -> impl Fn() + Sync + Send + 'static {
    || {
        let s = Arc::new(Shared::new(2));
        let s2 = s.clone();
        thread::spawn(move || {
            rcu::read_section(|| use_published(&s2)).unwrap();
        })
        .join()
        .unwrap();
        assert!(
            replace_and_reclaim(&s, 1),
            "no reader is inside a section, yet the grace period held the object back"
        );
    }
}

fn all_models(mode: &str) {
    for (name, m) in [
        (
            "first section",
            Box::new(first_section_against_one_grace_period()) as Box<dyn Fn() + Sync + Send>,
        ),
        ("fast path", Box::new(fast_path_against_two_grace_periods())),
        ("nested", Box::new(nested_exit_keeps_the_outer_section())),
        (
            "quiescent_alone",
            Box::new(quiescent_alone_against_a_registering_reader()),
        ),
        (
            "horizon liveness",
            Box::new(horizon_passes_after_the_reader_left()),
        ),
    ] {
        eprintln!("loom_rcu: {mode} mode: {name}");
        loom::model(m);
    }
}

/// Every model in both modes, then the planted bug, in one test: the mode
/// and the planted bug are process-wide switches.
#[test]
fn rcu_sections_never_let_a_reader_use_a_freed_object() {
    rcu::model_config(false, false);
    all_models("asymmetric (membarrier)");
    rcu::model_config(true, false);
    all_models("symmetric (swap + SeqCst fence)");

    // The models can fail: with the grace period's scan of the records
    // skipped, a reader inside its section is overlooked and its object
    // freed under it.
    rcu::model_config(false, true);
    let caught = std::panic::catch_unwind(|| loom::model(first_section_against_one_grace_period()));
    rcu::model_config(false, false);
    assert!(
        caught.is_err(),
        "the models did not notice grace periods that skip the scan of the readers"
    );
}
