//! Revoke as data: the exporter's revoke, un-revoke and cleanup sequences
//! are lists of kernel steps ([`Step`]), checked once ([`Sequence::new`])
//! and carried out by one interpreter ([`Revocable::run`]). Every exporter
//! that can revoke calls it with its protocol's sequences; the unit tests,
//! the drivers and the checker's matrix therefore exercise the same code.
//!
//! The kernel leaves the sequence to each exporter, and VFIO got it wrong
//! after merge (a second `kref_put` on a buffer an earlier trigger had
//! already revoked, then a wait on a consumed completion: fixed upstream by
//! c64a647c84f3, "vfio: Fix kref underflow after revoke"). Writing the
//! sequence as data makes such orders something one can state, run and
//! compare (`docs/protocol-files.md` in the repository).
//!
//! # The vocabulary
//!
//! | step | kernel | rule |
//! |---|---|---|
//! | `dma_resv_lock` / `dma_resv_unlock` | `dma_resv_lock(resv, NULL)` / `dma_resv_unlock` | balanced; no nesting; a sequence ends unlocked |
//! | `set_revoked` / `clear_revoked` | `priv->revoked = true / false` | with the lock held (attach and map read it under the lock) |
//! | `dma_buf_invalidate_mappings` | `dma_buf_invalidate_mappings(dmabuf)` | with the lock held (`dma_resv_assert_held`) |
//! | `dma_resv_wait_timeout(usage, timeout)` | `dma_resv_wait_timeout(resv, usage, false, timeout)` | usage `kernel`, `write`, `read` or `bookkeep`; timeout `MAX_SCHEDULE_TIMEOUT` or a duration (`1s`, `500us`) |
//! | `kref_get` / `kref_put` / `kref_init` | on `priv->kref` | `refcount_t` semantics, see below |
//! | `wait_for_completion` / `wait_for_completion_timeout(t)` | on `priv->comp` | a counting completion, see below |
//! | `reinit_completion` | `reinit_completion(&priv->comp)` | |
//! | `unmap_mapping_range` | zap the CPU page tables of the buffer's mmaps (`unmap_mapping_range(dmabuf->file->f_mapping, ...)`; VFIO also zaps its device fd's BAR mmaps) | the exporter does it ([`SequenceHooks::unmap_mapping_range`]); legal anywhere in a sequence, with or without the lock |
//!
//! Any step may end in ` if COND`: `was_revoked` (the buffer was already
//! revoked when the sequence began), `timed_out` (the last timed wait of
//! this run gave up), or their negation with `!`.
//!
//! A sequence that is legal but wrong, such as `wait_for_completion` with the
//! reservation lock held (the importers' unmap needs that lock), is not
//! refused here: it runs, and the checker reports what happens (a deadlock).
//!
//! # The live-mapping count (`refcount_t`) and the completion
//!
//! | event | count | completion |
//! |---|---|---|
//! | a new buffer | 1 (the base reference) | 0 |
//! | `map_dma_buf` ([`Revocable::map_get`]) / `kref_get` | +1; from 0: WARN "addition on 0", saturated | |
//! | `unmap_dma_buf` ([`Revocable::map_put`]) / `kref_put` | -1; to 0: the release callback calls `complete`; at 0: WARN "underflow", saturated | +1 on release |
//! | `kref_init` | 1 (saturation cleared) | |
//! | `wait_for_completion` | | waits for > 0, then takes one |
//! | `reinit_completion` | | 0 |
//!
//! Each change of the count or of the completion is a trace row carrying
//! the new value (tracing adds no scheduling point: the row is written
//! under the count's lock, right after the change):
//!
//! | row | when | arguments |
//! |---|---|---|
//! | `kref_get` / `kref_put` | a map/unmap, or the step of that name | `kref=kref#N refcount=R` (`saturated=1` once misused); a step's row also has `ino=` and `step=` (and is its only row) |
//! | `kref_init` | the step | `ino= step= kref= refcount=1` |
//! | `complete` | the release callback, when a `kref_put` reaches 0 | `kref= done=D` (the completion's `done` after it) |
//! | `wait_for_completion` / `wait_for_completion_timeout` | the step starts waiting (the step's row) | `ino= step=` |
//! | `wait_for_completion_end` | the wait returns | `kref= done=D ret=completed` or `ret=timed-out` |
//! | `reinit_completion` | the step | `ino= step= kref= done=0` |
//!
//! `kref#N` names the count as [`crate::trace::object`] names objects (by
//! order of first appearance in the execution), the same name for its
//! completion. The kernel has no tracepoint in `kref_get`/`kref_put`; the
//! names are those of the functions (`include/linux/kref.h`,
//! `kernel/sched/completion.c`).
//!
//! A saturated count never reaches zero again: as in the kernel, the
//! buffer's memory is leaked rather than freed twice, and a later wait for
//! the last unmap never ends. Each WARN goes to the buffer's warning sink
//! ([`Revocable::with_warn_sink`]) and to the trace (`WARN`); the checker
//! judges them (`no-warn`).
//!
//! # Timed waits
//!
//! `wait_for_completion_timeout(t)` and `dma_resv_wait_timeout(usage, t)`
//! with a finite `t` end when their condition holds, when `t` has passed,
//! or, under the controlled scheduler, at *any* scheduling point while the
//! condition is still false: the wait arms an expiry task (named
//! `wait-expiry`, of the waiter's group) that, whenever the search
//! schedules it, makes the wait give up. Where the expiry falls is a
//! scheduling decision like any other, recorded in the schedule and
//! replayed by its token (DFS and DPOR explore both orders). So a 1 s
//! timeout can beat an importer that would unmap a microsecond later, as a
//! loaded machine or a stalled worker can make it in the kernel; on real
//! threads only the deadline ends the wait. A condition that already holds
//! when the expiry runs wins: the wait returns success. The expiry task is
//! joined before the wait returns. `MAX_SCHEDULE_TIMEOUT` waits never
//! expire. `wait_for_completion_timeout` arms its expiry only when its
//! first check finds the completion not done, with the count still locked,
//! so the expiry runs once the wait sleeps, as in the kernel
//! (`do_wait_for_common()` in `kernel/sched/completion.c` looks at
//! `x->done` first, and only `schedule_timeout()` arms a timer, as it
//! sleeps): a completion already done has
//! nothing to expire, and an expiry just before the first check would end
//! the wait as one just after the sleep does. Neither is an order worth a
//! search's executions (`matrix.v5-unmap-timeout.gpu.idle1.jobs1` does not
//! finish in 20,000 DPOR executions when every check races with its
//! expiry, and finishes in 5,804 with this rule).
//!
//! # States of one buffer
//!
//! | state | `revoked` | count | map | attach |
//! |---|---|---|---|---|
//! | usable | false | 1 + mappings | counts a mapping | allowed if the gate admits |
//! | revoking | true | draining | `ENODEV` | `ENODEV` |
//! | revoked | true | 0 after a drain (until `kref_init`), else unchanged | `ENODEV` | `ENODEV` |
//!
//! # Lock rules
//!
//! The interpreter takes the buffer's reservation lock only through
//! `dma_resv_lock` steps. The count has its own small lock (a leaf), never
//! held across a wait.

use crate::dma_buf::{self, Attachment, DmaBufError, DmaBufRef};
use crate::dma_fence::MAX_SCHEDULE_TIMEOUT;
use crate::dma_resv::{ResvGuard, Usage};
use crate::errno;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Condvar, Mutex};
use crate::trace_event;
use std::fmt;
use std::str::FromStr;

/// How long a wait step may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// `MAX_SCHEDULE_TIMEOUT`: no bound.
    Max,
    /// At most this many nanoseconds.
    Ns(u64),
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Timeout::Max => f.write_str("MAX_SCHEDULE_TIMEOUT"),
            Timeout::Ns(ns) if ns % 1_000_000_000 == 0 => write!(f, "{}s", ns / 1_000_000_000),
            Timeout::Ns(ns) if ns % 1_000_000 == 0 => write!(f, "{}ms", ns / 1_000_000),
            Timeout::Ns(ns) if ns % 1_000 == 0 => write!(f, "{}us", ns / 1_000),
            Timeout::Ns(ns) => write!(f, "{ns}ns"),
        }
    }
}

/// The largest timeout a file may state (one hour): anything longer is
/// `MAX_SCHEDULE_TIMEOUT` in all but name, and a typo.
pub const MAX_TIMEOUT_NS: u64 = 3_600_000_000_000;

impl FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "MAX_SCHEDULE_TIMEOUT" || s == "max" {
            return Ok(Timeout::Max);
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("timeout '{s}' needs a unit (ns, us, ms or s)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("expected a timeout such as 1s, 500us or MAX_SCHEDULE_TIMEOUT; got '{s}'")
        })?;
        let mul = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            _ => {
                return Err(format!(
                    "unknown time unit '{unit}' (expected ns, us, ms or s)"
                ));
            }
        };
        match n.checked_mul(mul) {
            Some(ns) if ns <= MAX_TIMEOUT_NS => Ok(Timeout::Ns(ns)),
            _ => Err(format!(
                "timeout '{s}' is longer than one hour; write MAX_SCHEDULE_TIMEOUT for no bound"
            )),
        }
    }
}

/// A condition on a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// The buffer was already revoked when the sequence began.
    WasRevoked,
    /// The last timed wait of this run gave up.
    TimedOut,
}

/// What one step does (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// `dma_resv_lock`.
    ResvLock,
    /// `dma_resv_unlock`.
    ResvUnlock,
    /// `priv->revoked = true`.
    SetRevoked,
    /// `priv->revoked = false`.
    ClearRevoked,
    /// `dma_buf_invalidate_mappings`.
    Invalidate,
    /// `dma_resv_wait_timeout(usage, timeout)`.
    WaitFences(Usage, Timeout),
    /// `kref_get`.
    KrefGet,
    /// `kref_put`.
    KrefPut,
    /// `kref_init`.
    KrefInit,
    /// `wait_for_completion` (`Max`) or `wait_for_completion_timeout`.
    WaitForCompletion(Timeout),
    /// `reinit_completion`.
    ReinitCompletion,
    /// `unmap_mapping_range`: the CPU page tables of the buffer's mmaps.
    UnmapMappingRange,
}

/// The step names, in the order of the module table (for error messages).
pub const STEP_NAMES: &[&str] = &[
    "dma_resv_lock",
    "dma_resv_unlock",
    "set_revoked",
    "clear_revoked",
    "dma_buf_invalidate_mappings",
    "dma_resv_wait_timeout(usage, timeout)",
    "kref_get",
    "kref_put",
    "kref_init",
    "wait_for_completion",
    "wait_for_completion_timeout(timeout)",
    "reinit_completion",
    "unmap_mapping_range",
];

impl StepKind {
    /// The kernel name (also the trace event's name).
    pub fn kernel_name(self) -> &'static str {
        match self {
            StepKind::ResvLock => "dma_resv_lock",
            StepKind::ResvUnlock => "dma_resv_unlock",
            StepKind::SetRevoked => "set_revoked",
            StepKind::ClearRevoked => "clear_revoked",
            StepKind::Invalidate => "dma_buf_invalidate_mappings",
            StepKind::WaitFences(..) => "dma_resv_wait_timeout",
            StepKind::KrefGet => "kref_get",
            StepKind::KrefPut => "kref_put",
            StepKind::KrefInit => "kref_init",
            StepKind::WaitForCompletion(Timeout::Max) => "wait_for_completion",
            StepKind::WaitForCompletion(_) => "wait_for_completion_timeout",
            StepKind::ReinitCompletion => "reinit_completion",
            StepKind::UnmapMappingRange => "unmap_mapping_range",
        }
    }
}

/// One step: what it does and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    /// What.
    pub kind: StepKind,
    /// Only when this holds (`Some((cond, wanted))`).
    pub when: Option<(Cond, bool)>,
}

impl Step {
    /// An unconditional step.
    pub const fn new(kind: StepKind) -> Self {
        Self { kind, when: None }
    }
}

fn usage_name(u: Usage) -> &'static str {
    match u {
        Usage::Kernel => "kernel",
        Usage::Write => "write",
        Usage::Read => "read",
        Usage::Bookkeep => "bookkeep",
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StepKind::WaitFences(u, t) => {
                write!(f, "dma_resv_wait_timeout({}, {t})", usage_name(u))?
            }
            StepKind::WaitForCompletion(t @ Timeout::Ns(_)) => {
                write!(f, "wait_for_completion_timeout({t})")?
            }
            k => f.write_str(k.kernel_name())?,
        }
        if let Some((c, want)) = self.when {
            let name = match c {
                Cond::WasRevoked => "was_revoked",
                Cond::TimedOut => "timed_out",
            };
            write!(f, " if {}{name}", if want { "" } else { "!" })?;
        }
        Ok(())
    }
}

/// A step's text that does not parse: where (a byte offset into the text)
/// and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepParseError {
    /// Byte offset into the step's text.
    pub offset: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

fn perr(offset: usize, message: impl Into<String>) -> StepParseError {
    StepParseError {
        offset,
        message: message.into(),
    }
}

fn parse_usage(s: &str, at: usize) -> Result<Usage, StepParseError> {
    match s
        .trim()
        .to_ascii_lowercase()
        .trim_start_matches("dma_resv_usage_")
    {
        "kernel" => Ok(Usage::Kernel),
        "write" => Ok(Usage::Write),
        "read" => Ok(Usage::Read),
        "bookkeep" => Ok(Usage::Bookkeep),
        other => Err(perr(
            at,
            format!("unknown usage '{other}' (expected kernel, write, read or bookkeep)"),
        )),
    }
}

impl FromStr for Step {
    type Err = StepParseError;
    fn from_str(text: &str) -> Result<Self, StepParseError> {
        let lead = text.len() - text.trim_start().len();
        let body = text.trim();
        let (call, when) = match body.find(" if ") {
            Some(i) => (&body[..i], Some((i + 4, body[i + 4..].trim()))),
            None => (body, None),
        };
        let call = call.trim_end();
        let (name, args) = match call.find('(') {
            Some(open) => {
                if !call.ends_with(')') {
                    return Err(perr(
                        lead + call.len(),
                        "expected ')' to close the arguments",
                    ));
                }
                let inner = &call[open + 1..call.len() - 1];
                let mut args = Vec::new();
                let mut off = lead + open + 1;
                for a in inner.split(',') {
                    args.push((off, a.trim()));
                    off += a.len() + 1;
                }
                (call[..open].trim(), args)
            }
            None => (call, Vec::new()),
        };
        let no_args = |kind: StepKind| -> Result<StepKind, StepParseError> {
            if args.is_empty() {
                Ok(kind)
            } else {
                Err(perr(
                    lead + name.len(),
                    format!("{name} takes no arguments"),
                ))
            }
        };
        let kind = match name {
            "dma_resv_lock" => no_args(StepKind::ResvLock)?,
            "dma_resv_unlock" => no_args(StepKind::ResvUnlock)?,
            "set_revoked" => no_args(StepKind::SetRevoked)?,
            "clear_revoked" => no_args(StepKind::ClearRevoked)?,
            "dma_buf_invalidate_mappings" => no_args(StepKind::Invalidate)?,
            "kref_get" => no_args(StepKind::KrefGet)?,
            "kref_put" => no_args(StepKind::KrefPut)?,
            "kref_init" => no_args(StepKind::KrefInit)?,
            "wait_for_completion" => no_args(StepKind::WaitForCompletion(Timeout::Max))?,
            "reinit_completion" => no_args(StepKind::ReinitCompletion)?,
            "unmap_mapping_range" => no_args(StepKind::UnmapMappingRange)?,
            "dma_resv_wait_timeout" => match args.as_slice() {
                [(uo, u), (to, t)] => StepKind::WaitFences(
                    parse_usage(u, *uo)?,
                    t.parse::<Timeout>().map_err(|m| perr(*to, m))?,
                ),
                _ => {
                    return Err(perr(
                        lead + name.len(),
                        "dma_resv_wait_timeout takes (usage, timeout), e.g. dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
                    ));
                }
            },
            "wait_for_completion_timeout" => match args.as_slice() {
                [(to, t)] => match t.parse::<Timeout>().map_err(|m| perr(*to, m))? {
                    Timeout::Max => StepKind::WaitForCompletion(Timeout::Max),
                    t => StepKind::WaitForCompletion(t),
                },
                _ => {
                    return Err(perr(
                        lead + name.len(),
                        "wait_for_completion_timeout takes (timeout), e.g. wait_for_completion_timeout(1s)",
                    ));
                }
            },
            "" => return Err(perr(lead, "empty step")),
            other => {
                return Err(perr(
                    lead,
                    format!(
                        "unknown step '{other}' (expected one of: {})",
                        STEP_NAMES.join(", ")
                    ),
                ));
            }
        };
        let when = match when {
            None => None,
            Some((at, c)) => {
                let (want, c) = match c.strip_prefix('!') {
                    Some(rest) => (false, rest.trim()),
                    None => (true, c),
                };
                let cond = match c {
                    "was_revoked" => Cond::WasRevoked,
                    "timed_out" => Cond::TimedOut,
                    other => {
                        return Err(perr(
                            lead + at,
                            format!(
                                "unknown condition '{other}' (expected was_revoked, timed_out, !was_revoked or !timed_out)"
                            ),
                        ));
                    }
                };
                Some((cond, want))
            }
        };
        Ok(Step { kind, when })
    }
}

/// A sequence that breaks a structural rule: which step and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("step {}: {message}", index + 1)]
pub struct SequenceError {
    /// Index of the offending step (the step count for "ends locked").
    pub index: usize,
    /// What is wrong.
    pub message: String,
}

/// The most steps one sequence may have.
pub const MAX_STEPS: usize = 256;

/// A checked list of steps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Sequence {
    steps: Vec<Step>,
    /// After which step the exporter's fence point lies
    /// ([`SequenceHooks::fences_done`]): the last fence wait, or without
    /// one the first unlock.
    fence_point: Option<usize>,
}

impl Sequence {
    /// Checks the structural rules: the lock is taken and released in
    /// balance, never twice, and is held for `set_revoked`,
    /// `clear_revoked` and `dma_buf_invalidate_mappings`; the sequence ends
    /// unlocked. Conditional lock steps are refused (their balance would
    /// depend on the run).
    pub fn new(steps: Vec<Step>) -> Result<Self, SequenceError> {
        if steps.len() > MAX_STEPS {
            return Err(SequenceError {
                index: MAX_STEPS,
                message: format!("more than {MAX_STEPS} steps"),
            });
        }
        let mut locked = false;
        let mut last_wait = None;
        let mut first_unlock = None;
        for (i, s) in steps.iter().enumerate() {
            let err = |m: &str| SequenceError {
                index: i,
                message: m.to_owned(),
            };
            match s.kind {
                StepKind::ResvLock | StepKind::ResvUnlock if s.when.is_some() => {
                    return Err(err(
                        "dma_resv_lock and dma_resv_unlock cannot be conditional",
                    ));
                }
                StepKind::ResvLock if locked => {
                    return Err(err(
                        "dma_resv_lock while the reservation lock is already held (it would deadlock on itself)",
                    ));
                }
                StepKind::ResvLock => locked = true,
                StepKind::ResvUnlock if !locked => {
                    return Err(err("dma_resv_unlock without a dma_resv_lock before it"));
                }
                StepKind::ResvUnlock => {
                    locked = false;
                    first_unlock.get_or_insert(i);
                }
                StepKind::SetRevoked | StepKind::ClearRevoked | StepKind::Invalidate if !locked => {
                    return Err(err(&format!(
                        "{} needs the reservation lock: put a dma_resv_lock before it",
                        s.kind.kernel_name()
                    )));
                }
                StepKind::WaitFences(..) => last_wait = Some(i),
                _ => {}
            }
        }
        if locked {
            return Err(SequenceError {
                index: steps.len().saturating_sub(1),
                message: "the sequence ends with the reservation lock held: add dma_resv_unlock"
                    .into(),
            });
        }
        Ok(Self {
            fence_point: last_wait.or(first_unlock),
            steps,
        })
    }

    /// Parses and checks a list of step texts.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, SequenceError> {
        let steps = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_ref().parse::<Step>().map_err(|e| SequenceError {
                    index: i,
                    message: e.message,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(steps)
    }

    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Whether the sequence is empty.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// The checks an exporter's `attach` (or `pin`) applies, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Gate {
    /// `!attach->peer2peer` → `EOPNOTSUPP`.
    pub peer2peer: bool,
    /// revoked → `ENODEV`.
    pub not_revoked: bool,
    /// `!dma_buf_attach_revocable()` → `EOPNOTSUPP`.
    pub revocable: bool,
    /// Refuse every caller with `EOPNOTSUPP` (the 6.19 `.pin` stub of
    /// 61ceaf236115, which kept pinned importers away from VFIO).
    pub refuse: bool,
}

impl Gate {
    /// The names a file uses.
    pub const NAMES: [&'static str; 4] = ["peer2peer", "not_revoked", "revocable", "refuse"];

    /// Parses a list of check names; `Err` names the unknown one.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, (usize, String)> {
        let mut g = Gate::default();
        for (i, n) in names.iter().enumerate() {
            match n.as_ref() {
                "peer2peer" => g.peer2peer = true,
                "not_revoked" => g.not_revoked = true,
                "revocable" => g.revocable = true,
                "refuse" => g.refuse = true,
                other => {
                    return Err((
                        i,
                        format!(
                            "unknown check '{other}' (expected peer2peer, not_revoked, revocable or refuse)"
                        ),
                    ));
                }
            }
        }
        Ok(g)
    }
}

/// Whether the exporter lets userspace `mmap` the dma-buf, and if so
/// which lock its CPU fault handler holds while it checks the revoked state
/// and inserts the PFN (`vm_ops->fault`). Matt Evans' VFIO series
/// ("vfio/pci: Support mmap() of a DMABUF", RFC 3/7, Feb 2026; v3 June
/// 2026) takes VFIO's `memory_lock`, which every revoking trigger holds for
/// write: no fault can run between a trigger's start and its end, wherever
/// the zap lies in the sequence. The other two are what a driver might
/// write instead, and what the checker catches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmapFault {
    /// `down_read(&vdev->memory_lock)` around the check and the insert
    /// (the series).
    MemoryLock,
    /// The buffer's reservation lock around them (as TTM's fault path
    /// reserves the BO): the flag's own lock, but not the trigger's, so a
    /// zap before `set_revoked` leaves a window.
    DmaResvLock,
    /// A lockless read of the flag (`READ_ONCE`), then the insert: a revoke
    /// can set the flag and zap between the two.
    Unlocked,
}

impl MmapFault {
    /// The names a file uses, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["memory_lock", "dma_resv_lock", "none"];

    /// The file name.
    pub fn name(self) -> &'static str {
        match self {
            MmapFault::MemoryLock => "memory_lock",
            MmapFault::DmaResvLock => "dma_resv_lock",
            MmapFault::Unlocked => "none",
        }
    }

    /// By file name.
    pub fn by_name(name: &str) -> Option<Self> {
        [
            MmapFault::MemoryLock,
            MmapFault::DmaResvLock,
            MmapFault::Unlocked,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// An exporter's revoke protocol: its gates and its three sequences.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Protocol {
    /// Name (`v6-final`, ...).
    pub name: String,
    /// `attach` checks.
    pub attach: Gate,
    /// `pin` checks, when the exporter has a `pin` op at all.
    pub pin: Option<Gate>,
    /// `dma_buf_move(revoked = true)` of one buffer.
    pub revoke: Sequence,
    /// `dma_buf_move(revoked = false)` of one buffer.
    pub unrevoke: Sequence,
    /// Cleanup of one buffer when the device closes (a permanent revoke).
    pub cleanup: Sequence,
    /// On close, the PCI function is disabled (bus master and memory decode
    /// off) *before* the buffers are cleaned up: the order d97708701434
    /// fixed. The default (false) cleans up first.
    pub disable_before_cleanup: bool,
    /// The permanent revoke of one buffer by userspace (the three-state
    /// exporter's `VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE`, Matt Evans' v3
    /// 8/9), when the exporter has it: afterwards no un-revoke brings the
    /// buffer back.
    pub permanent: Option<Sequence>,
    /// Userspace may `mmap` the dma-buf (`None`: the exporter has no
    /// `mmap` op, and `mmap` is `EINVAL`, as on 7.1 and 7.2); the lock the
    /// fault handler checks the revoked state under.
    pub mmap: Option<MmapFault>,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn seq(texts: &[&str]) -> Sequence {
    match Sequence::parse(texts) {
        Ok(s) => s,
        // The texts below are fixed and covered by the tests.
        Err(e) => unreachable!("built-in sequence: {e}"),
    }
}

impl Protocol {
    /// The sequence merged in Linux 7.1 (v6/v7 of the series, with the
    /// c64a647c84f3 cleanup fix): lock, mark revoked, invalidate, wait for
    /// every `Bookkeep` fence, unlock, drop the base reference and wait for
    /// the last unmap; un-revoke re-arms before it clears the flag.
    pub fn merged() -> Self {
        Self {
            name: "v6-final".into(),
            attach: Gate {
                peer2peer: true,
                not_revoked: true,
                revocable: true,
                refuse: false,
            },
            pin: None,
            revoke: seq(&[
                "dma_resv_lock",
                "set_revoked",
                "dma_buf_invalidate_mappings",
                "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
                "dma_resv_unlock",
                "kref_put",
                "wait_for_completion",
            ]),
            unrevoke: seq(&[
                "dma_resv_lock",
                "dma_buf_invalidate_mappings",
                "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
                "dma_resv_unlock",
                "kref_init",
                "reinit_completion",
                "dma_resv_lock",
                "clear_revoked",
                "dma_resv_unlock",
            ]),
            cleanup: seq(&[
                "dma_resv_lock",
                "set_revoked",
                "dma_buf_invalidate_mappings",
                "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
                "dma_resv_unlock",
                "kref_put if !was_revoked",
                "wait_for_completion if !was_revoked",
            ]),
            disable_before_cleanup: false,
            permanent: None,
            mmap: None,
        }
    }
}

/// What the exporter does at the points of a sequence that are its own.
pub trait SequenceHooks {
    /// The fence point passed: after the last fence wait of the sequence
    /// (or its first unlock when it has none). Called at most once.
    fn fences_done(&mut self) {}
    /// `unmap_mapping_range`: zap the CPU page tables of the buffer's
    /// mmaps (and whatever other CPU mappings of the memory the exporter
    /// zaps with them).
    fn unmap_mapping_range(&mut self) {}
    /// `clear_revoked` ran (lock held): from now on attach and map succeed
    /// again, so whatever the exporter tells observers about the buffer
    /// being usable belongs here, not after the sequence.
    fn revoked_cleared(&mut self) {}
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl SequenceHooks for NoHooks {}

/// What one run of a sequence did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqOutcome {
    /// The buffer was revoked when the sequence began.
    pub was_revoked: bool,
    /// Attachments notified by `dma_buf_invalidate_mappings` (all calls).
    pub notified: usize,
    /// Some timed wait gave up.
    pub timed_out: bool,
    /// Mappings live at the fence point.
    pub live_after_fences: i64,
    /// Steps skipped by their condition.
    pub skipped: usize,
}

/// A WARN sink: receives each `refcount_t` (or other) warning text.
pub type WarnSink = Arc<dyn Fn(&str) + Send + Sync>;

struct Count {
    /// `refcount_t` value.
    refs: u32,
    /// Saturated after a misuse: never reaches zero again.
    saturated: bool,
    /// `struct completion`'s `done`.
    done: u32,
    /// Mappings handed out and not yet returned (for observation).
    live: i64,
    /// The timed wait whose early expiry is armed (its epoch; 0: none).
    expiry_armed: u64,
    /// The epoch whose expiry fired.
    expiry_fired: u64,
    /// Epochs handed out.
    expiry_epoch: u64,
}

/// The count and its completion's wait queue, shared with the expiry task
/// of a timed wait.
struct Shared {
    count: Mutex<Count>,
    cv: Condvar,
}

/// Revoke state of one exported buffer: the `revoked` flag (read and
/// written under the buffer's reservation lock), the `kref` and the
/// completion.
pub struct Revocable {
    revoked: AtomicBool,
    shared: Arc<Shared>,
    warn: Option<WarnSink>,
}

/// Arms the early expiry of a timed wait (module docs, "Timed waits"):
/// under the controlled scheduler, a task of the caller's group that runs
/// `fire` whenever the search schedules it. `None` on real threads, where
/// only the deadline ends the wait.
fn arm_expiry(fire: impl FnOnce() + Send + 'static) -> Option<crate::sync::thread::JoinHandle<()>> {
    #[cfg(not(loom))]
    if crate::sync::sched::active() {
        return Some(crate::sync::thread::spawn_named("wait-expiry".into(), fire));
    }
    let _ = fire;
    None
}

impl fmt::Debug for Revocable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Revocable(revoked={}, live={})",
            self.is_revoked(),
            self.live_mappings()
        )
    }
}

impl Revocable {
    /// A new state; `revoked` is the initial state (VFIO exports a buffer
    /// revoked when memory decode is off).
    pub fn new(revoked: bool) -> Self {
        Self {
            revoked: AtomicBool::new(revoked),
            shared: Arc::new(Shared {
                count: Mutex::new(Count {
                    refs: 1,
                    saturated: false,
                    done: 0,
                    live: 0,
                    expiry_armed: 0,
                    expiry_fired: 0,
                    expiry_epoch: 0,
                }),
                cv: Condvar::new(),
            }),
            warn: None,
        }
    }

    /// As [`Revocable::new`], reporting WARNs to `sink`.
    pub fn with_warn_sink(revoked: bool, sink: WarnSink) -> Self {
        Self {
            warn: Some(sink),
            ..Self::new(revoked)
        }
    }

    fn warn(&self, msg: &str) {
        trace_event!("WARN", "{msg}");
        if let Some(w) = &self.warn {
            w(msg);
        }
    }

    /// Whether the buffer is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Mappings handed out and not yet returned.
    pub fn live_mappings(&self) -> usize {
        usize::try_from(self.shared.count.lock().live).unwrap_or(0)
    }

    /// The `refcount_t` value and whether it saturated (for tests).
    pub fn refcount(&self) -> (u32, bool) {
        let c = self.shared.count.lock();
        (c.refs, c.saturated)
    }

    /// The exporter's `attach` checks. Call from `DmaBufOps::attach`.
    pub fn check_attach(&self, attach: &Attachment, gate: Gate) -> Result<(), DmaBufError> {
        if gate.refuse {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("attach of {}: refused", attach.dev()),
            ));
        }
        if gate.peer2peer && !attach.peer2peer() {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("attach of {}: no peer-to-peer", attach.dev()),
            ));
        }
        if gate.not_revoked && self.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                format!("attach of {}: buffer revoked", attach.dev()),
            ));
        }
        if gate.revocable && !dma_buf::attach_revocable(attach) {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("attach of {}: importer cannot be revoked", attach.dev()),
            ));
        }
        Ok(())
    }

    /// The exporter's `pin` checks (a gate in `pin`, v2's idea).
    pub fn check_pin(&self, attach: &Attachment, gate: Gate) -> Result<(), DmaBufError> {
        if gate.refuse {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("pin by {}: VFIO refuses pinned importers", attach.dev()),
            ));
        }
        if gate.not_revoked && self.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                format!("pin by {}: buffer revoked", attach.dev()),
            ));
        }
        if gate.revocable && !dma_buf::attach_revocable(attach) {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("pin by {}: importer cannot be revoked", attach.dev()),
            ));
        }
        Ok(())
    }

    /// In `map_dma_buf`, with the lock held: `ENODEV` while revoked,
    /// otherwise `kref_get` for the new mapping.
    pub fn map_get(&self, _guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
        if self.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                "map_dma_buf: buffer revoked",
            ));
        }
        self.kref_get(None, 1);
        Ok(())
    }

    /// In `unmap_dma_buf`: `kref_put` for the mapping.
    pub fn map_put(&self) {
        self.kref_put(None, -1);
    }

    /// The count's name in the trace (`kref#N`, see [`crate::trace::object`]).
    fn kref_name(&self) -> String {
        crate::trace::object("kref", Arc::as_ptr(&self.shared) as usize)
    }

    /// The `refcount_t` misuse check shared by get and put: a saturated
    /// count stays as it is; a zero count saturates and WARNs (the row of
    /// the operation, `name`, is written then). Returns the locked count
    /// when the operation may go on. `live` is added to the mappings
    /// counted for observation in the same critical section, whatever the
    /// check finds: a map or unmap takes the count's lock once.
    fn kref_checked(
        &self,
        name: &'static str,
        step: Option<(u64, &Step)>,
        misuse: &str,
        live: i64,
    ) -> Option<crate::sync::MutexGuard<'_, Count>> {
        let mut c = self.shared.count.lock();
        c.live += live;
        if c.saturated {
            self.trace_count(name, &c, step);
            return None;
        }
        if c.refs == 0 {
            c.saturated = true;
            self.trace_count(name, &c, step);
            drop(c);
            self.warn(misuse);
            return None;
        }
        Some(c)
    }

    /// Writes the row of a count change (`name`, with the step's `ino=` and
    /// `step=` first when a sequence step made it), with the count locked.
    fn trace_count(&self, name: &'static str, c: &Count, step: Option<(u64, &Step)>) {
        if !crate::trace::enabled() {
            return;
        }
        let mut a = match step {
            Some((ino, s)) => format!("ino={ino} step={s} "),
            None => String::new(),
        };
        a.push_str(&format!("kref={} refcount={}", self.kref_name(), c.refs));
        if c.saturated {
            a.push_str(" saturated=1");
        }
        crate::trace::emit(name, a);
    }

    /// `kref_get`; `live`: see [`Self::kref_checked`].
    fn kref_get(&self, step: Option<(u64, &Step)>, live: i64) {
        if let Some(mut c) = self.kref_checked(
            "kref_get",
            step,
            "refcount_t: addition on 0; use-after-free (kref_get)",
            live,
        ) {
            c.refs += 1;
            self.trace_count("kref_get", &c, step);
        }
    }

    /// `kref_put`; `live`: see [`Self::kref_checked`].
    fn kref_put(&self, step: Option<(u64, &Step)>, live: i64) {
        let Some(mut c) = self.kref_checked(
            "kref_put",
            step,
            "refcount_t: underflow; use-after-free (kref_put)",
            live,
        ) else {
            return;
        };
        c.refs -= 1;
        self.trace_count("kref_put", &c, step);
        if c.refs == 0 {
            // The release callback completes the revoke's wait.
            c.done = c.done.saturating_add(1);
            trace_event!("complete", "kref={} done={}", self.kref_name(), c.done);
            // Woken under the lock, as complete() wakes under the wait
            // queue's lock: the wake-up is ordered with the waiter's check.
            self.shared.cv.notify_all();
            drop(c);
        }
    }

    /// Waits for the completion as `t` says; `true` if it was completed
    /// (and one completion taken), `false` on a timeout: the deadline, or
    /// the early expiry the search may fire at any scheduling point while
    /// the completion is not done.
    fn wait_for_completion(&self, t: Timeout) -> bool {
        let deadline = match t {
            Timeout::Max => None,
            Timeout::Ns(ns) => Some(crate::sync::time::now_ns().saturating_add(ns)),
        };
        let mut timer = None;
        let mut epoch = 0;
        let mut c = self.shared.count.lock();
        let done = loop {
            if c.done > 0 {
                c.done -= 1;
                break true;
            }
            if timer.is_some() && c.expiry_fired == epoch {
                trace_event!("wait_expired_early", "wait_for_completion_timeout");
                break false;
            }
            match deadline {
                None => c = self.shared.cv.wait(c),
                Some(d) => {
                    let now = crate::sync::time::now_ns();
                    if now >= d {
                        break false;
                    }
                    if epoch == 0 {
                        // Armed only once the completion is found not
                        // done (a done one leaves nothing to expire), and
                        // with the count still locked: the expiry can run
                        // only once this wait sleeps, and an expiry that
                        // ran before the first check would end it as one
                        // right after does.
                        c.expiry_epoch += 1;
                        c.expiry_armed = c.expiry_epoch;
                        epoch = c.expiry_epoch;
                        let sh = self.shared.clone();
                        timer = arm_expiry(move || {
                            let mut c = sh.count.lock();
                            if c.expiry_armed == epoch {
                                c.expiry_fired = epoch;
                                sh.cv.notify_all();
                                drop(c);
                            }
                        });
                    }
                    c = self
                        .shared
                        .cv
                        .wait_timeout(c, std::time::Duration::from_nanos(d - now))
                        .0;
                }
            }
        };
        c.expiry_armed = 0;
        trace_event!(
            "wait_for_completion_end",
            "kref={} done={} ret={}",
            self.kref_name(),
            c.done,
            if done { "completed" } else { "timed-out" }
        );
        drop(c);
        if let Some(h) = timer {
            let _ = h.join();
        }
        done
    }

    /// `dma_resv_wait_timeout(usage, false, ns)`: 0 when it gave up (the
    /// deadline, or the early expiry of a finite timeout), else the time
    /// left.
    fn wait_fences(
        resv: &crate::dma_resv::DmaResv,
        usage: Usage,
        t: Timeout,
    ) -> Result<u64, DmaBufError> {
        let ns = match t {
            Timeout::Max => return Ok(resv.wait_timeout(usage, None, MAX_SCHEDULE_TIMEOUT)?),
            Timeout::Ns(ns) => ns,
        };
        // The expiry interrupts the wait through a token; a wait whose
        // fences have signalled returns before it looks at the token.
        let token = crate::dma_fence::CancelToken::new();
        let t2 = token.clone();
        let timer = arm_expiry(move || t2.cancel());
        let r = match resv.wait_timeout(usage, timer.as_ref().map(|_| &token), ns) {
            Ok(left) => Ok(left),
            Err(_) if token.is_cancelled() => {
                trace_event!("wait_expired_early", "dma_resv_wait_timeout");
                Ok(0)
            }
            Err(e) => Err(e.into()),
        };
        // The expiry has nothing left to interrupt once the wait is over.
        if let Some(h) = timer {
            let _ = h.join();
        }
        r
    }

    /// Sets the flag (with the lock held).
    pub fn mark_revoked(&self, _guard: &ResvGuard<'_>) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Clears the flag (with the lock held).
    pub fn clear_revoked(&self, _guard: &ResvGuard<'_>) {
        self.revoked.store(false, Ordering::Release);
    }

    /// Carries out `seq` on `buf` (whose exporter owns this state). Errors
    /// only when the reservation lock cannot be taken or a fence wait is
    /// refused; the lock is released on every path.
    pub fn run(
        &self,
        seq: &Sequence,
        buf: &DmaBufRef,
        hooks: &mut dyn SequenceHooks,
    ) -> Result<SeqOutcome, DmaBufError> {
        let mut out = SeqOutcome {
            was_revoked: self.is_revoked(),
            ..SeqOutcome::default()
        };
        let mut guard: Option<ResvGuard<'_>> = None;
        let mut last_timed_out = false;
        let resv = buf.resv();
        for (i, step) in seq.steps.iter().enumerate() {
            let run = match step.when {
                None => true,
                Some((Cond::WasRevoked, want)) => out.was_revoked == want,
                Some((Cond::TimedOut, want)) => last_timed_out == want,
            };
            if !run {
                out.skipped += 1;
            } else {
                // The count's steps write their row themselves, after the
                // change and with the new value.
                if !matches!(
                    step.kind,
                    StepKind::KrefGet
                        | StepKind::KrefPut
                        | StepKind::KrefInit
                        | StepKind::ReinitCompletion
                ) {
                    trace_event!(step.kind.kernel_name(), "ino={} step={}", buf.ino(), step);
                }
                match step.kind {
                    StepKind::ResvLock => guard = Some(resv.lock(None)?),
                    StepKind::ResvUnlock => guard = None,
                    StepKind::SetRevoked => self.revoked.store(true, Ordering::Release),
                    StepKind::ClearRevoked => {
                        self.revoked.store(false, Ordering::Release);
                        hooks.revoked_cleared();
                    }
                    StepKind::Invalidate => {
                        // Sequence::new guarantees the lock here.
                        if let Some(g) = &guard {
                            out.notified += dma_buf::invalidate_mappings(buf, g)?;
                        }
                    }
                    StepKind::WaitFences(usage, t) => {
                        let left = Self::wait_fences(resv, usage, t)?;
                        last_timed_out = left == 0;
                        out.timed_out |= last_timed_out;
                    }
                    StepKind::KrefGet => self.kref_get(Some((buf.ino(), step)), 0),
                    StepKind::KrefPut => self.kref_put(Some((buf.ino(), step)), 0),
                    StepKind::KrefInit => {
                        let mut c = self.shared.count.lock();
                        c.refs = 1;
                        c.saturated = false;
                        self.trace_count("kref_init", &c, Some((buf.ino(), step)));
                    }
                    StepKind::WaitForCompletion(t) => {
                        last_timed_out = !self.wait_for_completion(t);
                        if last_timed_out {
                            self.warn("wait_for_completion_timeout expired: an importer did not unmap in time (its invalidate_mappings is broken)");
                        }
                        out.timed_out |= last_timed_out;
                    }
                    StepKind::ReinitCompletion => {
                        let mut c = self.shared.count.lock();
                        c.done = 0;
                        trace_event!(
                            "reinit_completion",
                            "ino={} step={} kref={} done=0",
                            buf.ino(),
                            step,
                            self.kref_name()
                        );
                    }
                    StepKind::UnmapMappingRange => hooks.unmap_mapping_range(),
                }
            }
            if seq.fence_point == Some(i) {
                out.live_after_fences = self.shared.count.lock().live;
                hooks.fences_done();
            }
        }
        drop(guard);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_print_and_parse_back() {
        for p in [Protocol::merged()] {
            for s in p
                .revoke
                .steps()
                .iter()
                .chain(p.unrevoke.steps())
                .chain(p.cleanup.steps())
            {
                assert_eq!(s.to_string().parse::<Step>().unwrap(), *s);
            }
        }
        let s: Step = "wait_for_completion_timeout(1s) if !timed_out"
            .parse()
            .unwrap();
        assert_eq!(
            s.kind,
            StepKind::WaitForCompletion(Timeout::Ns(1_000_000_000))
        );
        assert_eq!(s.when, Some((Cond::TimedOut, false)));
        assert_eq!(
            s.to_string(),
            "wait_for_completion_timeout(1s) if !timed_out"
        );
    }

    #[test]
    fn bad_steps_say_where_and_what_was_expected() {
        let e = "dma_resv_wiat".parse::<Step>().unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("unknown step 'dma_resv_wiat'"), "{e}");
        assert!(e.message.contains("dma_resv_lock"), "{e}");
        let e = "dma_resv_wait_timeout(bookeep, 1s)"
            .parse::<Step>()
            .unwrap_err();
        assert_eq!(e.offset, 22);
        assert!(e.message.contains("unknown usage 'bookeep'"), "{e}");
        let e = "dma_resv_wait_timeout(bookkeep, 5 s)"
            .parse::<Step>()
            .unwrap_err();
        assert!(e.message.contains("unit"), "{e}");
        let e = "wait_for_completion_timeout(99999999s)"
            .parse::<Step>()
            .unwrap_err();
        assert!(e.message.contains("one hour"), "{e}");
        let e = "kref_put if sometimes".parse::<Step>().unwrap_err();
        assert_eq!(e.offset, 12);
        assert!("kref_put(1)".parse::<Step>().is_err());
        assert!("dma_resv_wait_timeout(bookkeep".parse::<Step>().is_err());
    }

    #[test]
    fn sequences_refuse_unbalanced_locks_and_unlocked_invalidate() {
        let e = Sequence::parse(&["dma_resv_unlock"]).unwrap_err();
        assert_eq!(e.index, 0);
        assert!(e.message.contains("without a dma_resv_lock"));
        let e = Sequence::parse(&["dma_resv_lock", "dma_resv_lock"]).unwrap_err();
        assert_eq!(e.index, 1);
        let e = Sequence::parse(&["dma_buf_invalidate_mappings"]).unwrap_err();
        assert!(e.message.contains("needs the reservation lock"));
        let e = Sequence::parse(&["dma_resv_lock", "set_revoked"]).unwrap_err();
        assert!(e.message.contains("ends with the reservation lock held"));
        let e = Sequence::parse(&["dma_resv_lock if was_revoked"]).unwrap_err();
        assert!(e.message.contains("conditional"));
        // Legal but wrong is not refused: the checker finds it.
        Sequence::parse(&[
            "dma_resv_lock",
            "kref_put",
            "wait_for_completion",
            "dma_resv_unlock",
        ])
        .unwrap();
    }

    #[test]
    fn fence_point_is_the_last_wait_or_the_first_unlock() {
        let p = Protocol::merged();
        assert_eq!(p.revoke.fence_point, Some(3));
        let s = Sequence::parse(&["dma_resv_lock", "set_revoked", "dma_resv_unlock"]).unwrap();
        assert_eq!(s.fence_point, Some(2));
    }

    /// Under the controlled scheduler, a 1 s wait for a completion that
    /// another task completes after a few steps (no time passes): the
    /// search decides whether the expiry fires first. Returns (completed,
    /// timed out) counts over `seeds` schedules.
    fn timed_wait_outcomes(seeds: u64, replay_check: bool) -> (u32, u32) {
        use crate::sync::sched::{Random, RunConfig, Strategy, run};
        let (mut ok, mut expired) = (0, 0);
        for seed in 0..seeds {
            let mut s = Random::new(seed);
            assert!(s.next_execution());
            let out = Arc::new(Mutex::new(None));
            let o2 = out.clone();
            let r = run(&mut s, &RunConfig::default(), move || {
                let r = Arc::new(Revocable::new(false));
                let r2 = r.clone();
                let t = crate::sync::thread::spawn(move || {
                    for _ in 0..3 {
                        crate::sync::thread::yield_now();
                    }
                    r2.kref_put(None, 0);
                });
                let t0 = crate::sync::time::now_ns();
                let done = r.wait_for_completion(Timeout::Ns(1_000_000_000));
                let waited = crate::sync::time::now_ns() - t0;
                t.join().unwrap();
                *o2.lock() = Some((done, waited));
            });
            let (done, waited) = out.lock().take().expect("finished");
            assert_eq!(waited, 0, "no virtual time passes: an early expiry");
            if done {
                ok += 1;
            } else {
                expired += 1;
            }
            if replay_check {
                // The token's schedule replays the same answer.
                let mut rp = crate::sync::sched::Replay::new(r.schedule.clone());
                assert!(rp.next_execution());
                let out2 = Arc::new(Mutex::new(None));
                let o3 = out2.clone();
                run(&mut rp, &RunConfig::default(), move || {
                    let r = Arc::new(Revocable::new(false));
                    let r2 = r.clone();
                    let t = crate::sync::thread::spawn(move || {
                        for _ in 0..3 {
                            crate::sync::thread::yield_now();
                        }
                        r2.kref_put(None, 0);
                    });
                    let done = r.wait_for_completion(Timeout::Ns(1_000_000_000));
                    t.join().unwrap();
                    *o3.lock() = Some(done);
                });
                assert_eq!(out2.lock().take(), Some(done), "seed {seed}");
            }
        }
        (ok, expired)
    }

    #[test]
    fn a_timed_wait_may_expire_at_any_scheduling_point_while_not_done_and_replays() {
        let (ok, expired) = timed_wait_outcomes(40, true);
        assert!(ok > 0 && expired > 0, "ok {ok}, expired {expired}");
        // Untimed, it never gives up; on real threads only the deadline ends
        // a timed wait.
        let r = Revocable::new(false);
        r.kref_put(None, 0);
        assert!(r.wait_for_completion(Timeout::Ns(1)));
        assert!(!r.wait_for_completion(Timeout::Ns(1_000)));
    }

    /// Every execution of `body` under `s` (at most 100,000): the set of
    /// answers and the number of executions.
    fn explore_waits(
        s: &mut dyn crate::sync::sched::Strategy,
        body: fn() -> bool,
    ) -> (std::collections::BTreeSet<bool>, u32) {
        use crate::sync::sched::{RunConfig, run};
        let (mut seen, mut n) = (std::collections::BTreeSet::new(), 0);
        while n < 100_000 && s.next_execution() {
            let out = Arc::new(Mutex::new(None));
            let o2 = out.clone();
            let r = run(s, &RunConfig::default(), move || *o2.lock() = Some(body()));
            assert_eq!(r.divergence, None);
            seen.insert(out.lock().take().expect("finished"));
            n += 1;
        }
        assert!(n < 100_000, "{} did not finish: {seen:?}", s.name());
        (seen, n)
    }

    #[test]
    fn wait_for_completion_timeout_arms_its_expiry_only_when_not_done_and_asleep() {
        use crate::sync::sched::{Dfs, Dpor};
        // Done before the wait: nothing can expire, and the expiry (never
        // armed) adds no order to explore.
        fn done_first() -> bool {
            let r = Revocable::new(false);
            r.kref_put(None, 0);
            r.wait_for_completion(Timeout::Ns(1_000_000_000))
        }
        let (seen, n) = explore_waits(&mut Dpor::new(1000), done_first);
        assert_eq!((seen.into_iter().collect::<Vec<_>>(), n), (vec![true], 1));
        // Completed by another task: both answers, as DFS finds them.
        fn raced() -> bool {
            let r = Arc::new(Revocable::new(false));
            let r2 = r.clone();
            let t = crate::sync::thread::spawn(move || r2.kref_put(None, 0));
            let done = r.wait_for_completion(Timeout::Ns(1_000_000_000));
            t.join().unwrap();
            done
        }
        let (seen, n) = explore_waits(&mut Dpor::new(1000), raced);
        let (dfs_seen, dfs_n) = explore_waits(&mut Dfs::new(1000), raced);
        assert_eq!(seen, [false, true].into_iter().collect());
        assert_eq!(seen, dfs_seen);
        assert!(n <= dfs_n, "{n} > {dfs_n}");
        // One execution per order of the count's critical sections that
        // can matter: the put before the first check; after it, the put,
        // the expiry and the waiter's re-check in each order the expiry can
        // still take (it runs only once the wait sleeps). DFS runs 3,921.
        assert_eq!(n, 5, "dpor executions");
    }

    #[test]
    fn a_finite_fence_wait_may_expire_early_but_never_once_signalled() {
        use crate::dma_resv::DmaResv;
        use crate::sync::sched::{Random, RunConfig, Strategy, run};
        let (mut ok, mut expired) = (0, 0);
        for seed in 0..40 {
            let mut s = Random::new(seed);
            assert!(s.next_execution());
            let out = Arc::new(Mutex::new(None));
            let o2 = out.clone();
            run(&mut s, &RunConfig::default(), move || {
                let resv = Arc::new(DmaResv::new());
                let (f, h) = crate::FenceContext::named("test", "bookkeep").create();
                {
                    let g = resv.lock(None).unwrap();
                    g.reserve_fences(1).unwrap();
                    g.add_fence(&f, Usage::Bookkeep).unwrap();
                }
                let t = crate::sync::thread::spawn(move || {
                    for _ in 0..6 {
                        crate::sync::thread::yield_now();
                    }
                    let _ = h.signal();
                });
                let left =
                    Revocable::wait_fences(&resv, Usage::Bookkeep, Timeout::Ns(1_000_000_000))
                        .unwrap();
                t.join().unwrap();
                *o2.lock() = Some((left, f.is_signaled()));
            });
            match out.lock().take().unwrap() {
                (0, _) => expired += 1,
                (_, signalled) => {
                    assert!(signalled);
                    ok += 1;
                }
            }
        }
        assert!(ok > 0 && expired > 0, "ok {ok}, expired {expired}");
    }

    /// The count's rows carry the value after each change (a mapping's
    /// get, two puts, the release's `complete`, the wait's end), and
    /// recording them changes no schedule: each seed chooses the same
    /// schedule with tracing off and on.
    #[test]
    fn count_rows_carry_the_value_and_change_no_schedule() {
        use crate::sync::sched::{Random, RunConfig, Strategy, run};
        let body = || {
            let r = Arc::new(Revocable::new(false));
            let r2 = r.clone();
            r.kref_get(None, 0);
            let t = crate::sync::thread::spawn(move || {
                crate::sync::thread::yield_now();
                r2.kref_put(None, 0);
                r2.kref_put(None, 0);
            });
            r.wait_for_completion(Timeout::Ns(1_000_000_000));
            t.join().unwrap();
        };
        let (mut completed, mut expired) = (0, 0);
        for seed in 0..30 {
            let mut runs = Vec::new();
            for on in [false, true] {
                let scope = on.then(crate::trace::enable_scoped);
                let mut s = Random::new(seed);
                assert!(s.next_execution());
                runs.push(run(&mut s, &RunConfig::default(), body));
                drop(scope);
            }
            assert_eq!(runs[0].schedule, runs[1].schedule, "seed {seed}");
            assert_eq!(runs[0].decisions, runs[1].decisions, "seed {seed}");
            let rows: Vec<(&str, String)> = runs[1]
                .trace
                .iter()
                .filter(|e| e.field("kref").as_deref() == Some("kref#1"))
                .map(|e| (e.name, e.args.clone()))
                .collect();
            let refs: Vec<String> = rows
                .iter()
                .filter(|r| r.0.starts_with("kref_"))
                .map(|r| format!("{} {}", r.0, r.1))
                .collect();
            assert_eq!(
                refs,
                [
                    "kref_get kref=kref#1 refcount=2",
                    "kref_put kref=kref#1 refcount=1",
                    "kref_put kref=kref#1 refcount=0",
                ],
                "seed {seed}"
            );
            // The release completes right after the last put.
            let at0 = rows
                .iter()
                .position(|r| r.1.ends_with("refcount=0"))
                .unwrap();
            assert_eq!(rows[at0 + 1], ("complete", "kref=kref#1 done=1".into()));
            let end = rows
                .iter()
                .position(|r| r.0 == "wait_for_completion_end")
                .expect("the wait's end is a row");
            match rows[end].1.as_str() {
                "kref=kref#1 done=0 ret=completed" => {
                    assert!(end > at0 + 1, "completed only after complete");
                    completed += 1;
                }
                "kref=kref#1 done=0 ret=timed-out" => {
                    assert!(end < at0, "expired before the release");
                    expired += 1;
                }
                "kref=kref#1 done=1 ret=timed-out" => {
                    unreachable!("a wait whose completion is done returns success")
                }
                other => panic!("seed {seed}: {other}"),
            }
        }
        assert!(completed > 0 && expired > 0, "{completed} {expired}");
    }

    #[test]
    fn refcount_saturates_and_warns_on_underflow_and_addition_on_zero() {
        let warns = Arc::new(Mutex::new(Vec::<String>::new()));
        let w2 = warns.clone();
        let r = Revocable::with_warn_sink(false, Arc::new(move |m: &str| w2.lock().push(m.into())));
        r.kref_put(None, 0);
        assert_eq!(r.refcount(), (0, false));
        assert!(r.wait_for_completion(Timeout::Ns(1)), "release completes");
        assert!(
            !r.wait_for_completion(Timeout::Ns(1)),
            "one completion, taken once"
        );
        r.kref_put(None, 0);
        assert_eq!(r.refcount(), (0, true));
        assert!(warns.lock()[0].contains("underflow"));
        r.kref_get(None, 0);
        assert_eq!(r.refcount(), (0, true), "saturated stays saturated");
        let r2 = Revocable::with_warn_sink(false, {
            let w = warns.clone();
            Arc::new(move |m: &str| w.lock().push(m.into()))
        });
        r2.kref_put(None, 0);
        r2.kref_get(None, 0);
        assert!(warns.lock()[1].contains("addition on 0"));
    }
}
