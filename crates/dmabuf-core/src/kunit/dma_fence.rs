//! Suite `dma-buf-fence` (st-dma-fence.c), plus this crate's own tests of
//! the fence core that the kernel suite does not cover.

use crate::dma_fence::{
    CancelToken, Fence, FenceContext, FenceError, FenceOps, MAX_SCHEDULE_TIMEOUT, NamedOps,
    SignalHandle, wait_any_timeout,
};
use crate::dma_fence_array::FenceArray;
use crate::errno::{self, AsErrno};
use crate::lockdep;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, thread};
use std::time::Duration;

/// `HZ` of the kernel config the suite assumes (x86 default).
const HZ: u64 = 250;
const JIFFY_NS: u64 = 1_000_000_000 / HZ;

/// The suites' `mock_fence_ops`: names only.
fn mock_ops() -> NamedOps {
    NamedOps::new("mock", "mock")
}

/// `mock_fence()`: context 0, seqno 0, inline lock.
fn mock_fence() -> (Fence, SignalHandle) {
    Fence::init(mock_ops(), 0, 0)
}

/// `simple_callback`: sets `seen`.
fn simple_cb(seen: &Arc<AtomicBool>) -> impl FnOnce(&Fence) + Send + 'static {
    let seen = seen.clone();
    move |_| seen.store(true, Ordering::SeqCst)
}

#[test]
fn test_sanitycheck() {
    let (f, h) = mock_fence();
    f.enable_sw_signaling();
    h.signal().unwrap();
    assert!(f.is_signaled());
}

#[test]
fn test_signaling() {
    let (f, h) = mock_fence();
    f.enable_sw_signaling();
    assert!(!f.is_signaled(), "fence unexpectedly signaled on creation");
    assert!(
        !h.check_and_signal(),
        "fence reported being already signaled"
    );
    assert!(f.is_signaled(), "fence not reporting signaled");
    assert!(
        f.test_signaled_flag(),
        "fence reported not being already signaled"
    );
    assert!(f.ops_detached(), "fence ops not detached on signal");
}

#[test]
fn test_add_callback() {
    let (f, h) = mock_fence();
    let seen = Arc::new(AtomicBool::new(false));
    assert!(f.add_callback(simple_cb(&seen)).is_ok());
    h.signal().unwrap();
    assert!(seen.load(Ordering::SeqCst), "callback failed");
}

#[test]
fn test_late_add_callback() {
    let (f, h) = mock_fence();
    let seen = Arc::new(AtomicBool::new(false));
    f.enable_sw_signaling();
    h.signal().unwrap();
    assert!(
        f.add_callback(simple_cb(&seen)).is_err(),
        "added callback to signaled fence"
    );
    // The kernel signals again here; a consumed handle cannot, and no other
    // path runs a refused callback.
    assert!(
        !seen.load(Ordering::SeqCst),
        "callback called after failed attachment"
    );
}

#[test]
fn test_rm_callback() {
    let (f, h) = mock_fence();
    let seen = Arc::new(AtomicBool::new(false));
    let cb = f.add_callback(simple_cb(&seen)).ok().unwrap();
    assert!(cb.remove(), "failed to remove callback");
    h.signal().unwrap();
    assert!(
        !seen.load(Ordering::SeqCst),
        "callback still signaled after removal"
    );
}

#[test]
fn test_late_rm_callback() {
    let (f, h) = mock_fence();
    let seen = Arc::new(AtomicBool::new(false));
    let cb = f.add_callback(simple_cb(&seen)).ok().unwrap();
    h.signal().unwrap();
    assert!(seen.load(Ordering::SeqCst), "callback failed");
    assert!(
        !cb.remove(),
        "callback removal succeeded after being executed"
    );
}

#[test]
fn test_status() {
    let (f, h) = mock_fence();
    f.enable_sw_signaling();
    assert_eq!(f.get_status(), 0, "initial fence status");
    h.signal().unwrap();
    assert_eq!(f.get_status(), 1, "fence status not reflecting signaled");
}

#[test]
fn test_error() {
    let (f, h) = mock_fence();
    f.enable_sw_signaling();
    h.set_error(errno::EIO.to_negative()).unwrap();
    assert_eq!(f.get_status(), 0, "fence error not pending");
    h.signal().unwrap();
    assert_eq!(
        f.get_status(),
        errno::EIO.to_negative(),
        "fence error not reported"
    );
}

#[test]
fn test_wait() {
    let (f, h) = mock_fence();
    f.enable_sw_signaling();
    assert_eq!(
        f.wait_timeout(None, 0).unwrap(),
        0,
        "signaled status in wait"
    );
    h.signal().unwrap();
    assert_eq!(
        f.wait_timeout(None, 0).unwrap(),
        1,
        "fence not reported as signaled"
    );
}

#[test]
fn test_wait_timeout() {
    let (f, h) = mock_fence();
    f.enable_sw_signaling();
    assert_eq!(
        f.wait_timeout(None, JIFFY_NS).unwrap(),
        0,
        "wait reported complete before being signaled"
    );
    let timer = thread::spawn(move || {
        thread::sleep(Duration::from_nanos(JIFFY_NS));
        h.signal().unwrap();
    });
    assert!(
        f.wait_timeout(None, HZ * JIFFY_NS).unwrap() > 0,
        "wait timed out"
    );
    timer.join().unwrap();
}

#[test]
fn test_stub() {
    let stubs: Vec<Fence> = (0..64).map(|_| Fence::stub()).collect();
    for f in &stubs {
        assert!(f.is_signaled(), "stub fence not signaled");
        assert_eq!((f.context(), f.seqno()), (0, 0));
    }
}

/// One pass of `test_race_signal_callback`: two threads for 50 ms each.
fn race_pass(before: bool) {
    let slots: Arc<[Mutex<Option<Fence>>; 2]> = Arc::new([Mutex::new(None), Mutex::new(None)]);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2usize)
        .map(|id| {
            let slots = slots.clone();
            let stop = stop.clone();
            thread::spawn(move || -> Result<u64, String> {
                let mut pass = 0u64;
                let mut miss = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (f1, h1) = mock_fence();
                    f1.enable_sw_signaling();
                    *slots[id].lock() = Some(f1.clone());
                    let f2 = loop {
                        // dma_fence_get_rcu_safe on the other thread's slot.
                        if let Some(f) = slots[1 - id].lock().clone() {
                            break Some(f);
                        }
                        if stop.load(Ordering::Relaxed) {
                            break None;
                        }
                        thread::yield_now();
                    };
                    let mut h1 = Some(h1);
                    if before {
                        h1.take().map(SignalHandle::signal);
                    }
                    let seen = Arc::new(AtomicBool::new(false));
                    let added = f2.as_ref().map(|f2| f2.add_callback(simple_cb(&seen)));
                    if !matches!(added, Some(Ok(_))) {
                        miss += 1;
                        seen.store(true, Ordering::SeqCst);
                    }
                    if !before {
                        h1.take().map(SignalHandle::signal);
                    }
                    if !seen.load(Ordering::SeqCst)
                        && let Some(f2) = &f2
                    {
                        f2.wait(None).map_err(|e| e.to_string())?;
                        f2.flush_callbacks();
                    }
                    if !seen.load(Ordering::SeqCst) {
                        return Err(format!(
                            "callback not seen on thread {id}, pass {pass} ({miss} misses), \
                             signaling {} add_callback",
                            if before { "before" } else { "after" }
                        ));
                    }
                    drop(f2);
                    *slots[id].lock() = None;
                    drop(h1);
                    pass += 1;
                }
                Ok(pass)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let passes = t.join().expect("race thread panicked");
        assert!(passes.is_ok(), "{}", passes.unwrap_err());
    }
}

#[test]
fn test_race_signal_callback() {
    race_pass(false);
    race_pass(true);
}

// ---- Beyond the kernel suite -------------------------------------------

#[test]
fn seqno_wraps_at_32_bits_unless_64_bit() {
    let ctx = FenceContext::named("t", "wrap32");
    let (old, _h1) = ctx.create_with_seqno(0xffff_ffff);
    let (new, _h2) = ctx.create_with_seqno(0x1_0000_0001);
    assert!(new.is_later(&old).unwrap());
    let (low, _h3) = ctx.create_with_seqno(1);
    assert!(
        low.is_later(&old).unwrap(),
        "1 follows 0xffffffff after wrap"
    );
    assert!(!old.is_later(&low).unwrap());
    let ctx64 = FenceContext::new64(crate::NamedOps::new("t", "wrap64"));
    let (old, _h4) = ctx64.create_with_seqno(0xffff_ffff);
    let (low, _h5) = ctx64.create_with_seqno(1);
    assert!(!low.is_later(&old).unwrap(), "64-bit seqnos do not wrap");
    assert!(old.is_later(&low).unwrap());
    let (max, _h6) = ctx64.create_with_seqno(u64::MAX);
    assert!(max.is_later(&old).unwrap());
}

#[test]
fn is_later_or_same_and_later() {
    let ctx = FenceContext::named("t", "order");
    let (a, ha) = ctx.create();
    let (b, _hb) = ctx.create();
    assert!(a.is_later_or_same(&a).unwrap());
    assert!(!a.is_later_or_same(&b).unwrap());
    assert_eq!(a.later(&b).unwrap(), Some(b.clone()));
    ha.signal().unwrap();
    assert_eq!(b.later(&a).unwrap(), Some(b.clone()));
    let other = FenceContext::named("t", "other").create().0;
    let e = a.is_later(&other).unwrap_err();
    assert!(matches!(e, FenceError::DifferentContexts { .. }));
    assert_eq!(e.errno(), errno::EINVAL);
    assert!(a.later(&other).is_err());
}

#[test]
fn later_is_none_when_the_later_fence_signalled() {
    let ctx = FenceContext::named("t", "later");
    let (a, _ha) = ctx.create();
    let (b, hb) = ctx.create();
    hb.signal().unwrap();
    assert_eq!(a.later(&b).unwrap(), None);
}

#[test]
fn context_alloc_refuses_zero_and_starts_above_the_stub() {
    assert_eq!(
        crate::dma_fence::context_alloc(0),
        Err(FenceError::ZeroContexts)
    );
    let base = crate::dma_fence::context_alloc(3).unwrap();
    assert!(base >= 1);
    assert!(crate::dma_fence::context_alloc(1).unwrap() >= base + 3);
}

#[test]
fn set_error_after_signal_is_refused() {
    let (f, h) = mock_fence();
    let (g, hg) = mock_fence();
    h.signal().unwrap();
    // Only the core can reach a signalled fence's error; the handle is gone.
    let e = f.set_error_internal(errno::EIO.to_negative()).unwrap_err();
    assert!(matches!(e, FenceError::AlreadySignaled { .. }));
    assert_eq!(f.get_status(), 1, "a late error changed the status");
    hg.set_error(errno::EIO.to_negative()).unwrap();
    hg.set_error(errno::ETIMEDOUT.to_negative()).unwrap();
    hg.signal().unwrap();
    assert_eq!(
        g.get_status(),
        errno::ETIMEDOUT.to_negative(),
        "last error before signal wins"
    );
}

#[test]
fn error_codes_must_be_negative_errnos() {
    let (f, h) = mock_fence();
    for bad in [0, 1, errno::EIO.get(), -errno::MAX_ERRNO - 1, i32::MIN] {
        let e = h.set_error(bad).unwrap_err();
        assert_eq!(e, FenceError::InvalidErrorCode(bad));
        assert_eq!(e.errno(), errno::EINVAL);
    }
    h.set_error(-errno::MAX_ERRNO).unwrap();
    assert_eq!(f.get_status(), 0, "the fence is still usable");
    h.signal().unwrap();
    assert_eq!(f.get_status(), -errno::MAX_ERRNO);
}

#[test]
fn signal_via_driver_hook_makes_handle_report_already_signalled() {
    struct Passed;
    impl FenceOps for Passed {
        fn driver_name(&self) -> &str {
            "hw"
        }
        fn timeline_name(&self) -> &str {
            "t"
        }
        fn signaled(&self, _: &Fence) -> bool {
            true
        }
    }
    let (f, h) = Fence::init(Passed, 1, 1);
    assert!(f.is_signaled());
    let e = h.signal().unwrap_err();
    assert_eq!(
        e,
        FenceError::AlreadySignaled {
            context: 1,
            seqno: 1
        }
    );
}

#[test]
fn dropping_an_unsignalled_handle_signals_ecanceled() {
    let (f, h) = mock_fence();
    let seen = Arc::new(AtomicBool::new(false));
    let _cb = f.add_callback(simple_cb(&seen)).ok().unwrap();
    drop(h);
    assert!(f.is_signaled());
    assert!(seen.load(Ordering::SeqCst));
    assert_eq!(f.get_status(), errno::ECANCELED.to_negative());
}

#[test]
fn dropping_a_handle_keeps_an_error_already_set() {
    let (f, h) = mock_fence();
    h.set_error(errno::EIO.to_negative()).unwrap();
    drop(h);
    assert_eq!(
        f.get_status(),
        errno::ECANCELED.to_negative(),
        "drop overrides with ECANCELED"
    );
}

#[test]
fn callbacks_run_in_fifo_order() {
    let (f, h) = mock_fence();
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..16 {
        let o = order.clone();
        f.add_callback(move |_| o.lock().push(i)).ok().unwrap();
    }
    h.signal().unwrap();
    assert_eq!(*order.lock(), (0..16).collect::<Vec<_>>());
}

#[test]
fn callbacks_may_touch_their_own_fence_without_deadlock() {
    let (f, h) = mock_fence();
    let seen = Arc::new(AtomicBool::new(false));
    let s = seen.clone();
    f.add_callback(move |f: &Fence| {
        // The fence lock is not held while callbacks run.
        assert!(f.add_callback(|_| {}).is_err());
        s.store(true, Ordering::SeqCst);
    })
    .ok()
    .unwrap();
    h.signal().unwrap();
    assert!(seen.load(Ordering::SeqCst));
}

struct CountingOps {
    enabled: Arc<AtomicU32>,
    passed: bool,
}
impl FenceOps for CountingOps {
    fn driver_name(&self) -> &str {
        "count"
    }
    fn timeline_name(&self) -> &str {
        "t"
    }
    fn enable_signaling(&self, _: &Fence) -> bool {
        self.enabled.fetch_add(1, Ordering::SeqCst);
        !self.passed
    }
}

#[test]
fn is_signaled_does_not_enable_signalling() {
    let enabled = Arc::new(AtomicU32::new(0));
    let (f, _h) = Fence::init(
        CountingOps {
            enabled: enabled.clone(),
            passed: false,
        },
        1,
        1,
    );
    assert!(!f.is_signaled());
    assert_eq!(enabled.load(Ordering::SeqCst), 0);
    let _cb = f.add_callback(|_| {}).ok().unwrap();
    assert_eq!(enabled.load(Ordering::SeqCst), 1);
    assert_eq!(f.wait_timeout(None, 0).unwrap(), 0);
    assert!(f.enable_sw_signaling());
    assert_eq!(
        enabled.load(Ordering::SeqCst),
        1,
        "enable_signaling runs once"
    );
}

#[test]
fn enable_signaling_returning_false_signals_at_once() {
    let enabled = Arc::new(AtomicU32::new(0));
    let (f, h) = Fence::init(
        CountingOps {
            enabled: enabled.clone(),
            passed: true,
        },
        1,
        1,
    );
    h.set_error(errno::EIO.to_negative()).unwrap();
    let seen = Arc::new(AtomicBool::new(false));
    assert!(f.add_callback(simple_cb(&seen)).is_err());
    assert!(f.test_signaled_flag());
    assert!(!seen.load(Ordering::SeqCst));
    assert_eq!(f.get_status(), errno::EIO.to_negative());
    assert!(f.timestamp().is_some());
}

#[test]
fn timestamp_is_the_given_one_and_names_detach() {
    let (f, h) = FenceContext::named("drv", "tl").create();
    assert_eq!(f.timestamp(), None);
    assert_eq!((f.driver_name(), f.timeline_name()), ("drv", "tl"));
    h.signal_timestamp(42).unwrap();
    assert_eq!(f.timestamp(), Some(42));
    assert_eq!(
        (f.driver_name(), f.timeline_name()),
        ("detached-driver", "signaled-timeline")
    );
}

#[test]
fn private_stub_carries_its_timestamp() {
    let s = Fence::private_stub(777);
    assert!(s.is_signaled());
    assert_eq!(s.timestamp(), Some(777));
    assert_ne!(s, Fence::stub());
}

#[test]
fn wait_timeout_returns_remaining_time() {
    let (f, h) = mock_fence();
    h.signal().unwrap();
    assert_eq!(f.wait_timeout(None, 5_000).unwrap(), 5_000);
    assert_eq!(
        f.wait_timeout(None, MAX_SCHEDULE_TIMEOUT).unwrap(),
        MAX_SCHEDULE_TIMEOUT
    );
    let (g, hg) = mock_fence();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        hg.signal().unwrap();
    });
    let left = g.wait_timeout(None, 10_000_000_000).unwrap();
    assert!(left > 0 && left < 10_000_000_000);
    t.join().unwrap();
}

#[test]
fn wait_is_interrupted_by_a_cancel_from_another_thread() {
    let (f, _h) = mock_fence();
    let token = CancelToken::new();
    let t2 = token.clone();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(10));
        t2.cancel();
    });
    let e = f.wait(Some(&token)).unwrap_err();
    assert_eq!(e, FenceError::Interrupted);
    assert_eq!(e.errno(), errno::ERESTARTSYS);
    canceller.join().unwrap();
    assert_eq!(f.pending_callbacks(), 0, "the wait took its callback off");
    // A cancelled token interrupts later waits at once, but not a poll.
    assert_eq!(f.wait(Some(&token)), Err(FenceError::Interrupted));
    assert_eq!(
        f.wait_timeout(Some(&token), 0),
        Err(FenceError::Interrupted)
    );
}

#[test]
fn wait_any_reports_the_first_signalled() {
    let (a, _ha) = mock_fence();
    let (b, hb) = mock_fence();
    let fences = vec![a.clone(), b.clone()];
    let r = wait_any_timeout(&fences, None, 0).unwrap();
    assert_eq!((r.remaining_ns, r.index), (0, None));
    let r = wait_any_timeout(&fences, None, 2_000_000).unwrap();
    assert_eq!((r.remaining_ns, r.index), (0, None));
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        hb.signal().unwrap();
    });
    let r = wait_any_timeout(&fences, None, MAX_SCHEDULE_TIMEOUT).unwrap();
    assert_eq!(r.index, Some(1));
    assert!(r.remaining_ns > 0);
    t.join().unwrap();
    let r = wait_any_timeout(&fences, None, 0).unwrap();
    assert_eq!((r.remaining_ns, r.index), (1, Some(1)));
    assert!(matches!(
        wait_any_timeout(&[], None, 1),
        Err(FenceError::Invalid(_))
    ));
    assert_eq!(a.pending_callbacks(), 0, "wait_any took its callbacks off");
}

#[test]
fn wait_any_can_be_cancelled() {
    let (a, _ha) = mock_fence();
    let token = CancelToken::new();
    let t2 = token.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        t2.cancel();
    });
    assert_eq!(
        wait_any_timeout(std::slice::from_ref(&a), Some(&token), MAX_SCHEDULE_TIMEOUT),
        Err(FenceError::Interrupted)
    );
    t.join().unwrap();
}

/// Whether `f` panics with a lockdep report of a wait inside a signalling
/// section. Lockdep is in panic mode for this crate's tests; the mode is
/// process-wide, so these tests never change it.
fn lockdep_reports(f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            msg.contains("WaitInSignallingSection")
        }
    }
}

#[test]
fn wait_inside_a_signalling_section_is_reported() {
    assert_eq!(lockdep::mode(), lockdep::Mode::Panic);
    let (f, h) = mock_fence();
    h.signal().unwrap();
    assert!(lockdep_reports(move || {
        let c = lockdep::begin_signalling();
        // Even a wait that would not block is a potential deadlock.
        let _ = f.wait(None);
        lockdep::end_signalling(c);
    }));
}

#[test]
fn nested_signalling_sections_balance() {
    let outer = lockdep::begin_signalling();
    let inner = lockdep::begin_signalling();
    assert!(lockdep::in_signalling_section());
    lockdep::end_signalling(inner);
    assert!(lockdep::in_signalling_section());
    lockdep::end_signalling(outer);
    assert!(!lockdep::in_signalling_section());
    let (f, h) = mock_fence();
    h.signal().unwrap();
    f.wait(None).unwrap();
}

#[test]
fn wait_inside_a_callback_is_reported() {
    let (f, h) = mock_fence();
    let (g, _hg) = mock_fence();
    f.add_callback(move |_| {
        let _ = g.wait_timeout(None, 0);
    })
    .ok()
    .unwrap();
    let reported = lockdep_reports(move || {
        let _ = h.signal();
    });
    assert!(reported);
    // The signalling section was closed by the unwind: this thread may wait.
    assert!(!lockdep::in_signalling_section());
    f.flush_callbacks();
    f.wait(None).unwrap();
}

#[test]
fn flush_callbacks_waits_for_a_running_callback() {
    let (f, h) = mock_fence();
    let release = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (r, d) = (release.clone(), done.clone());
    f.add_callback(move |_| {
        while !r.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        d.store(true, Ordering::SeqCst);
    })
    .ok()
    .unwrap();
    let signaller = thread::spawn(move || h.signal().unwrap());
    while !f.test_signaled_flag() {
        thread::yield_now();
    }
    let releaser = {
        let r = release.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            r.store(true, Ordering::SeqCst);
        })
    };
    f.flush_callbacks();
    assert!(
        done.load(Ordering::SeqCst),
        "flush returned before the callback"
    );
    signaller.join().unwrap();
    releaser.join().unwrap();
}

#[test]
fn array_forwards_deadline_only_while_pending() {
    use crate::dma_fence::test_ops::DeadlineRecorder as D;
    let seen = Arc::new(AtomicU64::new(0));
    let (c, hc) = Fence::init(D(seen.clone()), 3, 1);
    let a = FenceArray::create(vec![c], 4, 1).unwrap();
    a.set_deadline(10);
    assert_eq!(seen.load(Ordering::SeqCst), 10);
    hc.signal().unwrap();
    assert!(a.is_signaled());
    a.set_deadline(20);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10,
        "a signalled array forwards nothing"
    );
}

/// Fence ops whose hardware has already passed every fence (`signaled`
/// always true) and that count the deadlines they are given.
struct DoneHw(Arc<AtomicU32>);
impl FenceOps for DoneHw {
    fn driver_name(&self) -> &str {
        "done"
    }
    fn timeline_name(&self) -> &str {
        "done"
    }
    fn signaled(&self, _: &Fence) -> bool {
        true
    }
    fn set_deadline(&self, _: &Fence, _: u64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `dma_fence_set_deadline` asks `dma_fence_is_signaled` first: when the
/// driver's `signaled` hook reports the fence done, the fence is signalled
/// and the driver's `set_deadline` is never called.
#[test]
fn dma_fence_set_deadline_skips_driver_once_signaled_hook_reports_done() {
    let calls = Arc::new(AtomicU32::new(0));
    let (f, _h) = Fence::init(DoneHw(calls.clone()), 9, 1);
    assert!(!f.test_signaled_flag(), "nobody has asked the driver yet");
    f.set_deadline(1_000);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "set_deadline was called");
    assert!(
        f.test_signaled_flag(),
        "the signaled hook's answer signalled the fence"
    );
    // A pending fence of a driver that is not done still gets the hint.
    use crate::dma_fence::test_ops::DeadlineRecorder as D;
    let seen = Arc::new(AtomicU64::new(0));
    let (g, _hg) = Fence::init(D(seen.clone()), 10, 1);
    g.set_deadline(77);
    assert_eq!(seen.load(Ordering::SeqCst), 77);
}

/// Linux 7.x `dma_fence_driver_name` / `dma_fence_timeline_name`: every
/// signalled fence reads `detached-driver` / `signaled-timeline`, whatever
/// its kind: leaves, the shared and private stubs, arrays and chains.
#[test]
fn dma_fence_names_of_every_signalled_fence_are_detached() {
    let check = |f: &Fence, what: &str| {
        assert!(f.is_signaled(), "{what} is signalled");
        assert_eq!(f.driver_name(), "detached-driver", "{what}");
        assert_eq!(f.timeline_name(), "signaled-timeline", "{what}");
    };
    check(&Fence::stub(), "dma_fence_get_stub");
    check(&Fence::private_stub(5), "dma_fence_allocate_private_stub");
    let (leaf, h) = mock_fence();
    assert_eq!(leaf.driver_name(), "mock", "pending: the driver's name");
    h.signal().unwrap();
    check(&leaf, "a leaf");
    let (c1, h1) = Fence::init(mock_ops(), 21, 1);
    let array = FenceArray::create(vec![c1.clone()], 22, 1).unwrap();
    assert_eq!(array.driver_name(), "dma_fence_array");
    h1.signal().unwrap();
    check(&array, "an array");
    let (c2, h2) = Fence::init(mock_ops(), 23, 1);
    let chain = crate::dma_fence_chain::FenceChain::create(None, c2, 1);
    assert_eq!(chain.driver_name(), "dma_fence_chain");
    h2.signal().unwrap();
    check(&chain, "a chain");
}
