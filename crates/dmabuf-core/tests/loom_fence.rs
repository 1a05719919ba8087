//! Exhaustive loom models of the fence core's races (small and focused, one
//! property each).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom
//! cargo test -p dmabuf-core --release --test loom_fence`
//!
//! Fences here never use `Fence::stub()` (a process-wide static would leak
//! loom objects across model iterations) and take fixed context ids.
#![cfg(loom)]

use dmabuf_core::FenceArray;
use dmabuf_core::dma_fence::{Fence, NamedOps, SignalHandle};
use dmabuf_core::errno;
use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
use dmabuf_core::sync::{Arc, thread};

fn fence(seqno: u64) -> (Fence, SignalHandle) {
    Fence::init(NamedOps::new("loom", "model"), 1, seqno)
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// Signal racing `add_callback`: the callback runs exactly once if the
/// registration succeeded, never if it was refused.
#[test]
fn signal_races_add_callback() {
    loom::model(|| {
        let (f, h) = fence(1);
        let ran = counter();
        let signaller = thread::spawn(move || h.signal().unwrap());
        let r = ran.clone();
        let reg = f.add_callback(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        signaller.join().unwrap();
        let expected = usize::from(reg.is_ok());
        assert_eq!(ran.load(Ordering::SeqCst), expected);
        assert!(f.test_signaled_flag());
    });
}

/// Signal racing `remove_callback`: exactly one of "removed" and "ran".
#[test]
fn signal_races_remove_callback() {
    loom::model(|| {
        let (f, h) = fence(1);
        let ran = counter();
        let r = ran.clone();
        let reg = f
            .add_callback(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .ok()
            .expect("fence is pending");
        let signaller = thread::spawn(move || h.signal().unwrap());
        let removed = reg.remove();
        signaller.join().unwrap();
        // A callback that was running when `remove` looked may finish only
        // now; flushing makes "ran" final.
        f.flush_callbacks();
        assert_eq!(ran.load(Ordering::SeqCst), usize::from(!removed));
    });
}

/// A waiter and a signaller: the wait always returns (a lost wake-up would
/// leave the waiter parked forever, which loom reports as a deadlock).
#[test]
fn waiter_and_signaller_never_lose_the_wake_up() {
    loom::model(|| {
        let (f, h) = fence(1);
        let signaller = thread::spawn(move || {
            h.signal_with_error(errno::EIO.to_negative()).unwrap();
        });
        f.wait(None).unwrap();
        assert_eq!(f.get_status(), errno::EIO.to_negative());
        signaller.join().unwrap();
    });
}

/// An armed array whose two children signal concurrently: it signals
/// exactly once, after both, with the one child error.
#[test]
fn array_completes_once_when_children_signal_concurrently() {
    loom::model(|| {
        let (c1, h1) = fence(1);
        let (c2, h2) = fence(2);
        let array = FenceArray::create(vec![c1, c2], 2, 1).unwrap();
        let ran = counter();
        let r = ran.clone();
        let reg = array
            .add_callback(move |a: &Fence| {
                r.fetch_add(1, Ordering::SeqCst);
                assert_eq!(a.get_status(), errno::EIO.to_negative());
            })
            .ok()
            .expect("array is pending");
        let t1 = thread::spawn(move || h1.signal().unwrap());
        let t2 = thread::spawn(move || h2.signal_with_error(errno::EIO.to_negative()).unwrap());
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(array.test_signaled_flag());
        array.flush_callbacks();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!reg.remove());
    });
}

/// Arming an array (a wait) while both children signal: the arming path
/// counts children it finds already signalled, the callbacks count the
/// rest, and the waiter always wakes.
#[test]
fn array_armed_while_children_signal() {
    loom::model(|| {
        let (c1, h1) = fence(1);
        let (c2, h2) = fence(2);
        let array = FenceArray::create(vec![c1, c2], 2, 1).unwrap();
        let t1 = thread::spawn(move || h1.signal_with_error(errno::EIO.to_negative()).unwrap());
        let t2 = thread::spawn(move || h2.signal().unwrap());
        array.wait(None).unwrap();
        assert_eq!(array.get_status(), errno::EIO.to_negative());
        t1.join().unwrap();
        t2.join().unwrap();
    });
}
