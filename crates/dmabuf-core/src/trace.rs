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
//! not change which schedule a replay token selects. Nor does it touch
//! anything the engine tracks for partial-order reduction: the execution's
//! log is an extension slot, which the engine does not count as an access.
//!
//! # The record
//!
//! Each [`Event`] is structured: tracepoint name, the task that emitted it
//! (name and, under the controlled scheduler, its id), virtual time and the
//! arguments. The arguments are written once, as the kernel's `TP_printk`
//! would (`key=value` words, hexadecimal for addresses); [`Event::fields`]
//! reads them back as pairs, so exports (JSON, Perfetto, ftrace, the HTML
//! report) take keys and values and never re-parse free text of their own.
//! A word without `=` belongs to the previous key; leading words without a
//! key are the field `detail`.
//!
//! # What a controlled execution's log adds
//!
//! | row | when |
//! |---|---|
//! | `sched_switch` (`prev_comm=A prev_pid=N prev_state=R+\|S ==> next_comm=B next_pid=M decisions=K`) | the task emitting an event is not the one that emitted the previous event: the scheduler switched in between (switches with no event between them are not shown). `prev_state=R+`: A was preempted (the scheduler chose another task while A could go on), `S`: A blocked, yielded or exited; `decisions`: scheduler choices since the previous row |
//!
//! Objects with no kernel id (a lock, a condvar) are named by [`object`]:
//! `resv#1`, `resv#2`, numbered in order of first appearance in the
//! execution, so the same schedule prints the same names in every process
//! (an address would differ from run to run).

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
    /// The controlled task's id (spawn order, the root being 0); `None` on
    /// real threads.
    pub task: Option<usize>,
    /// Tracepoint name.
    pub name: &'static str,
    /// Arguments, formatted as the kernel's `TP_printk` would.
    pub args: String,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6} {:>6}.{:06} {:<16} {}: {}",
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
        // Scheduler decisions and preemptions since the previous row.
        let (decided, preempted) =
            crate::sync::sched::with_extension(|seen: &mut SchedSeen, here| {
                let d = (
                    here.decisions.saturating_sub(seen.decisions),
                    here.preemptions.saturating_sub(seen.preemptions),
                );
                seen.decisions = here.decisions;
                seen.preemptions = here.preemptions;
                d
            })
            .unwrap_or((0, 0));
        let stored = crate::sync::sched::with_extension(
            |log: &mut crate::sync::sched::TraceLog, here| {
                let prev = log.0.last().map(|e| (e.task, e.who.clone()));
                if let Some((Some(pt), pname)) = prev
                    && pt != here.task
                {
                    // The scheduler switched tasks since the last event:
                    // `R+` when it preempted a task that could have gone
                    // on (as the kernel prints a preempted task), `S` when
                    // the previous task blocked, yielded or exited.
                    let seq = log.0.len() as u64;
                    log.0.push(Event {
                        seq,
                        ts_ns: here.now_ns,
                        who: here.task_name.to_owned(),
                        task: Some(here.task),
                        name: SCHED_SWITCH,
                        args: format!(
                            "prev_comm={pname} prev_pid={pt} prev_state={} ==> next_comm={} next_pid={} decisions={decided}",
                            if preempted > 0 { "R+" } else { "S" },
                            here.task_name,
                            here.task
                        ),
                    });
                }
                let seq = log.0.len() as u64;
                log.0.push(Event {
                    seq,
                    ts_ns: here.now_ns,
                    who: here.task_name.to_owned(),
                    task: Some(here.task),
                    name,
                    args: args.take().unwrap_or_default(),
                });
            },
        );
        if stored.is_some() {
            return;
        }
        let Some(a) = args.take() else { return };
        return emit_real(name, a);
    }
    emit_real(name, args)
}

/// The synthetic row marking a task switch in a controlled execution's log
/// (the kernel's `sched:sched_switch` tracepoint name).
pub const SCHED_SWITCH: &str = "sched_switch";

/// A stable name for the object at `addr` of kind `kind` (`resv`, `lock`,
/// ...): under the controlled scheduler `kind#N`, numbered per kind in order
/// of first appearance in the execution's log; on real threads the address
/// in hex. Not a scheduling point.
pub fn object(kind: &'static str, addr: usize) -> String {
    #[cfg(not(loom))]
    if crate::sync::sched::active() {
        let n = crate::sync::sched::with_extension(|ids: &mut ObjectIds, _| {
            let next = 1 + ids.0.iter().filter(|(k, _)| *k == kind).count();
            match ids.0.iter().position(|&(k, a)| k == kind && a == addr) {
                Some(i) => {
                    // Position among objects of the same kind.
                    1 + ids.0[..i].iter().filter(|(k, _)| *k == kind).count()
                }
                None => {
                    ids.0.push((kind, addr));
                    next
                }
            }
        });
        if let Some(n) = n {
            return format!("{kind}#{n}");
        }
    }
    format!("{kind}@{addr:#x}")
}

/// The scheduler's decision and preemption counts at the previous row (an
/// extension slot).
#[cfg(not(loom))]
#[derive(Default)]
struct SchedSeen {
    decisions: u64,
    preemptions: u64,
}

/// The per-execution names handed out by [`object`] (an extension slot).
#[cfg(not(loom))]
#[derive(Default)]
struct ObjectIds(Vec<(&'static str, usize)>);

impl Event {
    /// The arguments as `(key, value)` pairs, in order (see the module
    /// documentation for how free words are attached).
    pub fn fields(&self) -> Vec<(&str, String)> {
        parse_fields(&self.args)
    }

    /// The value of one argument.
    pub fn field(&self, key: &str) -> Option<String> {
        parse_fields(&self.args)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Splits `TP_printk`-style text into `key=value` pairs. Brackets keep
/// their spaces (`ranges=[a b]` is one value); `==>` is skipped.
pub fn parse_fields(text: &str) -> Vec<(&str, String)> {
    let mut words: Vec<&str> = Vec::new();
    let (mut depth, mut start) = (0i32, None::<usize>);
    for (i, c) in text.char_indices() {
        match c {
            '[' | '(' => {
                depth += 1;
                start.get_or_insert(i);
            }
            ']' | ')' => {
                depth -= 1;
                start.get_or_insert(i);
            }
            ' ' if depth <= 0 => {
                if let Some(s) = start.take() {
                    words.push(&text[s..i]);
                }
                depth = 0;
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        words.push(&text[s..]);
    }
    let mut out: Vec<(&str, String)> = Vec::new();
    for w in words {
        if w == "==>" {
            continue;
        }
        match w.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                out.push((k, v.to_owned()))
            }
            _ => match out.last_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(w);
                }
                None => out.push(("detail", w.to_owned())),
            },
        }
    }
    out
}

fn emit_real(name: &'static str, args: String) {
    let who = crate::sync::thread::current_name()
        .unwrap_or_else(|| format!("{:?}", std::thread::current().id()));
    let mut log = LOG.lock();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    log.push(Event {
        seq,
        ts_ns: crate::sync::time::monotonic_ns(),
        who,
        task: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_key_value_words() {
        let f = parse_fields("dev=dev1 accessor=gpu0 w bus:0xe0000000 len=0x40 mapping=1");
        assert_eq!(
            f,
            vec![
                ("dev", "dev1".to_owned()),
                ("accessor", "gpu0 w bus:0xe0000000".to_owned()),
                ("len", "0x40".to_owned()),
                ("mapping", "1".to_owned()),
            ]
        );
        let f =
            parse_fields("mapping=1 ranges=[bus:0xe0000000+0x2000 bus:0xf0000000+0x1000] mseq=0");
        assert_eq!(
            f[1],
            (
                "ranges",
                "[bus:0xe0000000+0x2000 bus:0xf0000000+0x1000]".to_owned()
            )
        );
        assert_eq!(f[2], ("mseq", "0".to_owned()));
        let f = parse_fields("wait_for_completion_timeout expired: an importer");
        assert_eq!(
            f,
            vec![(
                "detail",
                "wait_for_completion_timeout expired: an importer".to_owned()
            )]
        );
        let f = parse_fields("prev_comm=a prev_pid=1 ==> next_comm=b next_pid=2");
        assert_eq!(f.len(), 4);
        assert_eq!(f[2], ("next_comm", "b".to_owned()));
        assert!(parse_fields("").is_empty());
    }

    #[test]
    fn real_thread_objects_are_named_by_address() {
        assert_eq!(object("resv", 0x1000), "resv@0x1000");
    }
}
