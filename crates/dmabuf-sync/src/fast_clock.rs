//! `CLOCK_MONOTONIC` for hot paths: fence signal timestamps.
//!
//! `clock_gettime` costs about 25 ns on the project's machines (a vDSO call
//! that reads the TSC and converts it under a seqlock), more than the rest
//! of signalling a fence. This clock reads the TSC (about 10 ns) and
//! extrapolates from a per-thread pair (TSC, `CLOCK_MONOTONIC`) refreshed
//! with a real `clock_gettime` at least every millisecond.
//!
//! # Guarantees
//!
//! | property | holds |
//! |---|---|
//! | monotonic on one thread | always (clamped) |
//! | distance to `CLOCK_MONOTONIC` read at the same instant | within a few tens of ns: the pair's own read skew plus one millisecond of rate error (the rate is calibrated against `CLOCK_MONOTONIC` over the whole process life) |
//!
//! # States (process-wide)
//!
//! | state | reads | may go to |
//! |---|---|---|
//! | unknown | `clock_gettime` | starting, unsupported |
//! | starting (one thread writes the base pair) | `clock_gettime` | calibrating |
//! | unsupported (no invariant TSC, or not x86-64) | `clock_gettime` | (final) |
//! | calibrating (< 10 ms since the base pair) | `clock_gettime` | ready |
//! | ready | TSC extrapolation | (final) |

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

    use crate::time::monotonic_ns;

    /// Longest extrapolation from one pair.
    const REFRESH_NS: u64 = 1_000_000;
    /// Shortest interval the rate is first measured over.
    const CALIBRATE_NS: u64 = 10_000_000;

    const UNKNOWN: u8 = 0;
    const UNSUPPORTED: u8 = 1;
    /// One thread is writing the base pair.
    const STARTING: u8 = 2;
    /// The base pair is published; measuring the rate.
    const CALIBRATING: u8 = 3;
    const READY: u8 = 4;

    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
    static BASE_TSC: AtomicU64 = AtomicU64::new(0);
    static BASE_NS: AtomicU64 = AtomicU64::new(0);
    /// Nanoseconds per tick, 32.32 fixed point.
    static SCALE: AtomicU64 = AtomicU64::new(0);
    /// Ticks in `REFRESH_NS`.
    static REFRESH_TICKS: AtomicU64 = AtomicU64::new(0);

    #[derive(Clone, Copy)]
    struct Pair {
        tsc: u64,
        ns: u64,
        last: u64,
    }

    std::thread_local! {
        static PAIR: Cell<Pair> = const { Cell::new(Pair { tsc: 0, ns: 0, last: 0 }) };
    }

    #[inline]
    fn rdtsc() -> u64 {
        // SAFETY: `rdtsc` has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// A (TSC, ns) pair read as close together as possible: the TSC value
    /// is the midpoint of two reads around `clock_gettime`.
    fn sample() -> (u64, u64) {
        let t1 = rdtsc();
        let ns = monotonic_ns();
        let t2 = rdtsc();
        (t1 / 2 + t2 / 2, ns)
    }

    /// The 32.32 rate from the base pair to `(tsc, ns)`, if measurable.
    fn rate_since_base(tsc: u64, ns: u64) -> Option<u64> {
        let dt = tsc.checked_sub(BASE_TSC.load(Ordering::Relaxed))?;
        let dn = ns.checked_sub(BASE_NS.load(Ordering::Relaxed))?;
        if dt == 0 {
            return None;
        }
        u64::try_from((u128::from(dn) << 32) / u128::from(dt))
            .ok()
            .filter(|s| *s > 0)
    }

    fn invariant_tsc() -> bool {
        // CPUID 0x80000007, EDX bit 8: the TSC runs at a constant rate in
        // every P-, C- and T-state.
        let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        max_ext >= 0x8000_0007 && core::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0
    }

    #[cold]
    fn slow() -> u64 {
        match STATE.load(Ordering::Acquire) {
            UNKNOWN => {
                if !invariant_tsc() {
                    STATE.store(UNSUPPORTED, Ordering::Release);
                } else if STATE
                    .compare_exchange(UNKNOWN, STARTING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let (tsc, ns) = sample();
                    BASE_TSC.store(tsc, Ordering::Relaxed);
                    BASE_NS.store(ns, Ordering::Relaxed);
                    // Publishes the base (read after an Acquire of READY).
                    STATE.store(CALIBRATING, Ordering::Release);
                }
                monotonic_ns()
            }
            CALIBRATING => {
                let (tsc, ns) = sample();
                if ns.saturating_sub(BASE_NS.load(Ordering::Relaxed)) >= CALIBRATE_NS
                    && let Some(scale) = rate_since_base(tsc, ns)
                {
                    publish_rate(scale);
                    let _ = STATE.compare_exchange(
                        CALIBRATING,
                        READY,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                ns
            }
            _ => monotonic_ns(),
        }
    }

    fn publish_rate(scale: u64) {
        SCALE.store(scale, Ordering::Relaxed);
        let ticks = (u128::from(REFRESH_NS) << 32) / u128::from(scale);
        REFRESH_TICKS.store(u64::try_from(ticks).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    #[cold]
    fn refresh(p: &mut Pair) -> u64 {
        let (tsc, ns) = sample();
        if let Some(scale) = rate_since_base(tsc, ns) {
            publish_rate(scale);
        }
        p.tsc = tsc;
        p.ns = ns;
        ns
    }

    /// See the module documentation.
    #[inline]
    pub fn now_ns() -> u64 {
        if STATE.load(Ordering::Acquire) != READY {
            return slow();
        }
        let tsc = rdtsc();
        PAIR.with(|c| {
            let mut p = c.get();
            // A TSC behind the pair (the thread moved to a CPU whose TSC
            // lags) wraps to a huge distance and forces a refresh.
            let d = tsc.wrapping_sub(p.tsc);
            let ns = if p.ns != 0 && d < REFRESH_TICKS.load(Ordering::Relaxed) {
                let scale = SCALE.load(Ordering::Relaxed);
                p.ns + ((u128::from(d) * u128::from(scale)) >> 32) as u64
            } else {
                refresh(&mut p)
            };
            let ns = ns.max(p.last);
            p.last = ns;
            c.set(p);
            ns
        })
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    /// No cheap counter known here: the real clock.
    #[inline]
    pub fn now_ns() -> u64 {
        crate::time::monotonic_ns()
    }
}

pub use imp::now_ns;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::monotonic_ns;
    use std::time::Duration;

    #[test]
    fn tracks_clock_monotonic_and_never_goes_back() {
        let mut last = 0;
        let start = monotonic_ns();
        // Long enough to get through calibration and several refreshes.
        while monotonic_ns() - start < 40_000_000 {
            let before = monotonic_ns();
            let t = now_ns();
            let after = monotonic_ns();
            assert!(t >= last, "went back: {t} < {last}");
            last = t;
            // Generous bound: scheduling may stretch the window.
            assert!(
                t + 20_000 >= before && t <= after + 20_000,
                "{before} <= {t} <= {after} off by more than 20 us"
            );
            crate::thread::sleep(Duration::from_micros(300));
        }
    }
}
