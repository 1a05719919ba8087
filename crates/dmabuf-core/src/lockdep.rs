//! A userspace lockdep for this subsystem: fence signalling sections now;
//! lock classes and order checking arrive with the reservation object.
//!
//! | mode | effect | cost |
//! |---|---|---|
//! | `Off` | nothing is tracked | one relaxed load per annotated call |
//! | `Collect` | violations are appended to a report list ([`take_reports`]) | a thread-local update per annotation |
//! | `Panic` | a violation panics with its report (unit tests of this crate) | as `Collect` |
//!
//! The default is `Panic` in this crate's own unit tests and `Off`
//! elsewhere; programs and the checker choose with [`set_mode`].
//!
//! Signalling sections (`dma_fence_begin_signalling` /
//! `dma_fence_end_signalling`) mark the code between publishing a fence and
//! signalling it. A blocking fence wait inside such a section is reported: the
//! fence being waited for may itself need this section to finish.

use crate::sync::atomic::global::AtomicU32;
use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;

/// Validator mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// No tracking.
    Off = 0,
    /// Record reports for later reading.
    Collect = 1,
    /// Panic on the first violation.
    Panic = 2,
}

static MODE: AtomicU32 = AtomicU32::new(if cfg!(test) {
    Mode::Panic as u32
} else {
    Mode::Off as u32
});
static REPORTS: parking_lot::Mutex<Vec<Report>> = parking_lot::Mutex::new(Vec::new());

/// The current mode.
#[inline(always)]
pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        0 => Mode::Off,
        1 => Mode::Collect,
        _ => Mode::Panic,
    }
}

/// Sets the mode for the whole process.
pub fn set_mode(m: Mode) {
    MODE.store(m as u32, Ordering::Relaxed);
}

/// What kind of rule a report breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// A blocking fence wait inside a fence signalling section.
    WaitInSignallingSection,
    /// `end_signalling` with a cookie that does not match the section.
    UnbalancedSignallingSection,
}

/// One violation, with the events that formed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The rule broken.
    pub kind: ReportKind,
    /// Thread that broke it.
    pub thread: String,
    /// Human-readable account, including where each involved section or
    /// lock was entered.
    pub detail: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lockdep: {:?} on {}: {}",
            self.kind, self.thread, self.detail
        )
    }
}

/// Files a report according to the mode.
pub fn report(kind: ReportKind, detail: String) {
    let r = Report {
        kind,
        thread: std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_owned(),
        detail,
    };
    match mode() {
        Mode::Off => {}
        Mode::Collect => REPORTS.lock().push(r),
        Mode::Panic => panic!("{r}"),
    }
}

/// Takes the collected reports.
pub fn take_reports() -> Vec<Report> {
    std::mem::take(&mut *REPORTS.lock())
}

crate::shim_thread_local! {
    static SIGNALLING_DEPTH: Cell<u32> = const { Cell::new(0) };
    static SIGNALLING_WHERE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// Cookie returned by [`begin_signalling`]; hand it back to
/// [`end_signalling`].
#[must_use = "pass the cookie to end_signalling"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignallingCookie(bool);

/// `dma_fence_begin_signalling`: enters a signalling section. Nested calls
/// return a no-op cookie (`true`), as the kernel's do.
#[inline]
pub fn begin_signalling() -> SignallingCookie {
    begin_signalling_at("dma_fence_begin_signalling")
}

/// As [`begin_signalling`], naming the place for reports.
#[inline]
pub fn begin_signalling_at(site: &'static str) -> SignallingCookie {
    if mode() == Mode::Off {
        return SignallingCookie(true);
    }
    let nested = SIGNALLING_DEPTH.with(|d| {
        let v = d.get();
        d.set(v + 1);
        v > 0
    });
    SIGNALLING_WHERE.with(|w| w.borrow_mut().push(site));
    SignallingCookie(nested)
}

/// `dma_fence_end_signalling`.
#[inline]
pub fn end_signalling(cookie: SignallingCookie) {
    if mode() == Mode::Off {
        return;
    }
    let depth = SIGNALLING_DEPTH.with(|d| d.get());
    if depth == 0 || (cookie.0 != (depth > 1)) {
        report(
            ReportKind::UnbalancedSignallingSection,
            format!("end_signalling with cookie {} at depth {depth}", cookie.0),
        );
        return;
    }
    SIGNALLING_DEPTH.with(|d| d.set(depth - 1));
    SIGNALLING_WHERE.with(|w| {
        w.borrow_mut().pop();
    });
}

/// Whether the calling thread is inside a signalling section (always false
/// when the validator is off).
pub fn in_signalling_section() -> bool {
    mode() != Mode::Off && SIGNALLING_DEPTH.with(|d| d.get()) > 0
}

/// `__dma_fence_might_wait`: called by every blocking fence wait.
#[inline]
pub fn might_wait(what: &str) {
    if mode() == Mode::Off {
        return;
    }
    if SIGNALLING_DEPTH.with(|d| d.get()) > 0 {
        let sections = SIGNALLING_WHERE.with(|w| w.borrow().join(" -> "));
        report(
            ReportKind::WaitInSignallingSection,
            format!("{what} inside a fence signalling section entered at: {sections}"),
        );
    }
}
