//! The global, ordered event log shared by the core, the platform and the
//! drivers.
//!
//! Event names follow the kernel's tracepoints where one exists
//! (`dma_fence_init`, `dma_fence_signaled`, `dma_fence_wait_start`,
//! `dma_buf_attach`, ...), so a trace reads like `trace-cmd report`.
//!
//! | state | cost of a trace point |
//! |---|---|
//! | off (default) | one relaxed load and a not-taken branch; arguments are not formatted |
//! | on, real threads | a global append under a short lock |
//! | on, controlled task | an append to the execution's own log (so parallel executions never mix) |
//!
//! Recording an event is never a scheduling point: turning tracing on must
//! not change which schedule a replay token selects.

use crate::sync::atomic::Ordering;
use crate::sync::atomic::global::AtomicU64;

/// Bit 63: switched on for the whole process; the bits below count live
/// [`TraceScope`]s, so concurrent scopes (parallel tests, nested replays)
/// never switch each other off.
static ENABLED: AtomicU64 = AtomicU64::new(0);
const GLOBAL_ON: u64 = 1 << 63;
static SEQ: AtomicU64 = AtomicU64::new(0);
static LOG: parking_lot::Mutex<Vec<Event>> = parking_lot::Mutex::new(Vec::new());

/// One trace record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the log's total order.
    pub seq: u64,
    /// Time of the event (virtual on controlled tasks).
    pub ts_ns: u64,
    /// Who emitted it: the thread or task name.
    pub who: String,
    /// Tracepoint name.
    pub name: &'static str,
    /// Arguments, formatted as the kernel's `TP_printk` would.
    pub args: String,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6} {:>12}.{:06} {:<16} {}: {}",
            self.seq,
            self.ts_ns / 1_000_000_000 % 1_000_000_000_000,
            (self.ts_ns / 1000) % 1_000_000,
            self.who,
            self.name,
            self.args
        )
    }
}

/// Whether trace points record anything.
#[inline(always)]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) != 0
}

/// Turns recording on or off for the whole process (scopes still in force
/// keep it on).
pub fn set_enabled(on: bool) {
    if on {
        ENABLED.fetch_or(GLOBAL_ON, Ordering::Relaxed);
    } else {
        ENABLED.fetch_and(!GLOBAL_ON, Ordering::Relaxed);
    }
}

/// Keeps recording on while it lives, whatever other scopes or
/// [`set_enabled`] do meanwhile.
#[must_use = "recording stops when the scope is dropped"]
#[derive(Debug)]
pub struct TraceScope(());

/// Turns recording on until the returned scope is dropped.
pub fn enable_scoped() -> TraceScope {
    ENABLED.fetch_add(1, Ordering::Relaxed);
    TraceScope(())
}

impl Drop for TraceScope {
    fn drop(&mut self) {
        ENABLED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records an event (prefer the [`trace_event!`](crate::trace_event) macro,
/// which skips formatting when tracing is off).
pub fn emit(name: &'static str, args: String) {
    // A controlled task's event goes to its execution's own log (an
    // extension slot of the engine), with the virtual time.
    #[cfg(not(loom))]
    if crate::sync::sched::active() {
        let mut args = Some(args);
        let stored =
            crate::sync::sched::with_extension(|log: &mut crate::sync::sched::TraceLog, here| {
                let seq = log.0.len() as u64;
                log.0.push(Event {
                    seq,
                    ts_ns: here.now_ns,
                    who: here.task_name.to_owned(),
                    name,
                    args: args.take().unwrap_or_default(),
                });
            });
        if stored.is_some() {
            return;
        }
        let Some(a) = args.take() else { return };
        return emit_real(name, a);
    }
    emit_real(name, args)
}

fn emit_real(name: &'static str, args: String) {
    let who = std::thread::current()
        .name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:?}", std::thread::current().id()));
    let mut log = LOG.lock();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    log.push(Event {
        seq,
        ts_ns: crate::sync::time::monotonic_ns(),
        who,
        name,
        args,
    });
}

/// Takes every event recorded on real threads so far.
pub fn take() -> Vec<Event> {
    std::mem::take(&mut *LOG.lock())
}

/// Records a tracepoint when tracing is on; formats nothing otherwise.
#[macro_export]
macro_rules! trace_event {
    ($name:expr, $($arg:tt)*) => {
        if $crate::trace::enabled() {
            $crate::trace::emit($name, format!($($arg)*));
        }
    };
}
