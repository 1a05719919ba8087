//! A userspace lockdep for this subsystem (kernel `kernel/locking/lockdep.c`
//! reduced to what dma-buf needs): fence signalling sections, lock classes,
//! a process-wide lock-order graph, and the reservation-object rules.
//!
//! # Modes
//!
//! | mode | effect | cost |
//! |---|---|---|
//! | `Off` | nothing is tracked | one relaxed load per annotated call |
//! | `Collect` | violations are appended to a report list ([`take_reports`]) | a thread-local update per annotation, the graph lock when other classes are held |
//! | `Panic` | a violation panics with its report (unit tests of this crate) | as `Collect` |
//!
//! The default is `Panic` in this crate's own unit tests and `Off`
//! elsewhere; programs and the checker choose with [`set_mode`]. A thread
//! may override the process mode for itself ([`with_thread_mode`],
//! [`collect_reports`]); validator tests use that so that the reports they
//! provoke on purpose never reach tests running in parallel. The mode word
//! carries the number of live overrides, so with none the check stays one
//! relaxed load.
//!
//! # Classes and the order graph
//!
//! Every tracked lock belongs to a class ([`ClassId`]): the reservation
//! objects form one class ([`ClassId::DMA_RESV`]), drivers register theirs
//! by name ([`register_class`]). Each thread keeps the list of locks it holds.
//! Taking class B while holding class A records the edge A -> B in a graph
//! shared by the whole process, with where and by whom it was first seen.
//! An acquisition that would close a cycle (B ->* A already recorded) is
//! reported as an inversion with both histories, even if the two orders never
//! ran at the same time; the offending edge is then not recorded, so one bad
//! program does not poison later checks.
//!
//! The graph starts primed with the order `dma_resv_lockdep()` teaches the
//! kernel at boot:
//!
//! `mmap_lock` -> `dma_resv` -> `fs_reclaim` -> `i_mmap_rwsem` ->
//! `mmu_notifier` -> `dma_fence wait`
//!
//! # Fence signalling
//!
//! A signalling section (`dma_fence_begin_signalling` /
//! `dma_fence_end_signalling`) is, as in the kernel, a read-hold of the
//! `dma_fence wait` pseudo-class, and every blocking fence wait
//! ([`might_wait`]) is an acquire and release of it. So:
//!
//! | event | report |
//! |---|---|
//! | fence wait inside a signalling section | [`ReportKind::WaitInSignallingSection`] |
//! | reservation lock inside a signalling section | [`ReportKind::ResvLockInSignallingSection`] |
//! | another class inside a section, that is held elsewhere while waiting | [`ReportKind::LockOrderInversion`] |
//! | fence wait holding a class that some section takes | [`ReportKind::LockOrderInversion`] |
//! | a second lock of a ww class without one shared acquire context | [`ReportKind::NestedWwLockWithoutCtx`] |
//!
//! Trylocks are recorded as held but create no ordering, as in the kernel.
//!
//! # Lock rules
//!
//! The graph and the report list are process-wide registries behind
//! `parking_lot` mutexes: they must never be a scheduling point of the
//! controlled scheduler (recording an annotation must not change which
//! schedule runs), and no shim operation happens while they are held.

use crate::sync::atomic::Ordering;
use crate::sync::atomic::global::AtomicU32;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::Location;

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

impl Mode {
    fn from_bits(v: u32) -> Mode {
        match v & MODE_MASK {
            0 => Mode::Off,
            1 => Mode::Collect,
            _ => Mode::Panic,
        }
    }
}

/// Low bits: the process mode. Above `OVERRIDE_SHIFT`: how many threads
/// currently override it.
static MODE: AtomicU32 = AtomicU32::new(if cfg!(test) {
    Mode::Panic as u32
} else {
    Mode::Off as u32
});
const MODE_MASK: u32 = 0x3;
const OVERRIDE_SHIFT: u32 = 8;
static REPORTS: parking_lot::Mutex<Vec<Report>> = parking_lot::Mutex::new(Vec::new());

/// The current mode (the calling thread's override, else the process mode).
#[inline(always)]
pub fn mode() -> Mode {
    let w = MODE.load(Ordering::Relaxed);
    if w >> OVERRIDE_SHIFT == 0 {
        return Mode::from_bits(w);
    }
    mode_overridden(w)
}

#[cold]
fn mode_overridden(w: u32) -> Mode {
    match THREAD_MODE.try_with(Cell::get) {
        Ok(Some(m)) => m,
        _ => Mode::from_bits(w),
    }
}

/// Sets the mode for the whole process (threads with an override keep
/// theirs).
pub fn set_mode(m: Mode) {
    let _ = MODE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
        Some((w & !MODE_MASK) | m as u32)
    });
}

/// Runs `f` with the calling thread's mode set to `m`, whatever the process
/// mode. Threads spawned by `f` do not inherit the override.
pub fn with_thread_mode<R>(m: Mode, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Mode>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = THREAD_MODE.try_with(|c| c.set(self.0));
            MODE.fetch_sub(1 << OVERRIDE_SHIFT, Ordering::Relaxed);
        }
    }
    MODE.fetch_add(1 << OVERRIDE_SHIFT, Ordering::Relaxed);
    let prev = THREAD_MODE.with(|c| c.replace(Some(m)));
    let _restore = Restore(prev);
    f()
}

/// Runs `f` in `Collect` mode on the calling thread and returns the reports
/// it produced (and only those: they go to a thread-local list, not to
/// [`take_reports`]).
pub fn collect_reports<R>(f: impl FnOnce() -> R) -> (R, Vec<Report>) {
    struct Restore(Option<Vec<Report>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = LOCAL_REPORTS.try_with(|l| *l.borrow_mut() = prev);
        }
    }
    let prev = LOCAL_REPORTS.with(|l| l.borrow_mut().replace(Vec::new()));
    let restore = Restore(prev);
    let r = with_thread_mode(Mode::Collect, f);
    let mine = LOCAL_REPORTS.with(|l| l.borrow_mut().take());
    drop(restore);
    (r, mine.unwrap_or_default())
}

/// What kind of rule a report breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// A blocking fence wait inside a fence signalling section.
    WaitInSignallingSection,
    /// `end_signalling` with a cookie that does not match the section.
    UnbalancedSignallingSection,
    /// A reservation lock taken inside a fence signalling section (the
    /// kernel's rule 1: waiters may hold `dma_resv` locks).
    ResvLockInSignallingSection,
    /// Two classes taken in both orders somewhere in the process.
    LockOrderInversion,
    /// A second lock of a ww class (reservation objects) taken without a
    /// single acquire context covering all of them.
    NestedWwLockWithoutCtx,
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
    /// The histories that formed the violation, one entry each: for an
    /// inversion, the order being taken now and the order recorded earlier
    /// (each with its sites and thread).
    pub stacks: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lockdep: {:?} on {}: {}",
            self.kind, self.thread, self.detail
        )?;
        for (i, s) in self.stacks.iter().enumerate() {
            write!(f, "\n  #{i}: {s}")?;
        }
        Ok(())
    }
}

fn thread_name() -> String {
    crate::sync::thread::current_name().unwrap_or_else(|| "<unnamed>".to_owned())
}

/// Files a report according to the mode.
pub fn report(kind: ReportKind, detail: String) {
    report_with_stacks(kind, detail, Vec::new());
}

/// Files a report carrying the event histories that formed it.
pub fn report_with_stacks(kind: ReportKind, detail: String, stacks: Vec<String>) {
    let r = Report {
        kind,
        thread: thread_name(),
        detail,
        stacks,
    };
    match mode() {
        Mode::Off => {}
        Mode::Collect => {
            let local = LOCAL_REPORTS
                .try_with(|l| match l.borrow_mut().as_mut() {
                    Some(v) => {
                        v.push(r.clone());
                        true
                    }
                    None => false,
                })
                .unwrap_or(false);
            if !local {
                // A controlled task's report belongs to its execution, so
                // executions running side by side never see each other's.
                #[cfg(not(loom))]
                let r = {
                    let mut r = Some(r);
                    let filed = crate::sync::sched::with_extension(
                        |log: &mut crate::sync::sched::LockdepLog, _| log.0.extend(r.take()),
                    );
                    match (filed, r) {
                        (Some(()), _) | (None, None) => return,
                        (None, Some(r)) => r,
                    }
                };
                REPORTS.lock().push(r);
            }
        }
        Mode::Panic => panic!("{r}"),
    }
}

/// Takes the collected reports.
pub fn take_reports() -> Vec<Report> {
    std::mem::take(&mut *REPORTS.lock())
}

/// A lock class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(u32);

impl ClassId {
    /// `mmap_lock` (the address-space lock).
    pub const MMAP_LOCK: ClassId = ClassId(0);
    /// Every reservation object (`reservation_ww_class_mutex`).
    pub const DMA_RESV: ClassId = ClassId(1);
    /// Memory reclaim (`fs_reclaim`): allocating with reclaim allowed.
    pub const FS_RECLAIM: ClassId = ClassId(2);
    /// `i_mmap_rwsem` (the file mapping tree).
    pub const I_MMAP_RWSEM: ClassId = ClassId(3);
    /// `mmu_notifier_invalidate_range_start`.
    pub const MMU_NOTIFIER: ClassId = ClassId(4);
    /// The `dma_fence_map` pseudo-lock: fence waits and signalling sections.
    pub const DMA_FENCE_WAIT: ClassId = ClassId(5);

    /// The class's registered name.
    pub fn name(self) -> String {
        class_name(self)
    }

    /// The registry index (for caches of class ids in `static`s).
    pub(crate) fn raw(self) -> u32 {
        self.0
    }

    /// The inverse of [`raw`](Self::raw).
    pub(crate) fn from_raw(raw: u32) -> ClassId {
        ClassId(raw)
    }
}

const BUILTIN: [&str; 6] = [
    "mmap_lock",
    "dma_resv",
    "fs_reclaim",
    "i_mmap_rwsem",
    "mmu_notifier",
    "dma_fence wait",
];

/// Where a lock was taken: a fixed description or a caller location.
#[derive(Clone, Copy, Debug)]
pub enum Site {
    /// A description given by the caller.
    Str(&'static str),
    /// A source location (`#[track_caller]`).
    Loc(&'static Location<'static>),
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Str(s) => f.write_str(s),
            Site::Loc(l) => write!(f, "{}:{}", l.file(), l.line()),
        }
    }
}

struct EdgeInfo {
    from_site: String,
    to_site: String,
    thread: String,
}

struct Graph {
    names: Vec<String>,
    by_name: HashMap<String, u32>,
    succ: Vec<Vec<u32>>,
    edges: HashMap<(u32, u32), EdgeInfo>,
}

impl Graph {
    fn primed() -> Graph {
        let mut g = Graph {
            names: Vec::new(),
            by_name: HashMap::new(),
            succ: Vec::new(),
            edges: HashMap::new(),
        };
        for n in BUILTIN {
            g.register(n);
        }
        for w in (0..BUILTIN.len() as u32).collect::<Vec<_>>().windows(2) {
            g.add_edge(
                w[0],
                w[1],
                EdgeInfo {
                    from_site: "dma_resv_lockdep()".into(),
                    to_site: "dma_resv_lockdep()".into(),
                    thread: "boot".into(),
                },
            );
        }
        g
    }

    fn register(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.by_name.insert(name.to_owned(), id);
        self.succ.push(Vec::new());
        id
    }

    fn name(&self, c: u32) -> &str {
        self.names.get(c as usize).map_or("<unknown class>", |s| s)
    }

    fn add_edge(&mut self, a: u32, b: u32, info: EdgeInfo) {
        if let Some(s) = self.succ.get_mut(a as usize) {
            s.push(b);
            self.edges.insert((a, b), info);
        }
    }

    /// A path `from ->* to`, as the list of its edges.
    fn path(&self, from: u32, to: u32) -> Option<Vec<(u32, u32)>> {
        let mut prev: HashMap<u32, u32> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(c) = queue.pop_front() {
            if c == to {
                let mut edges = Vec::new();
                let mut cur = to;
                while cur != from {
                    let p = prev[&cur];
                    edges.push((p, cur));
                    cur = p;
                }
                edges.reverse();
                return Some(edges);
            }
            for &n in self.succ.get(c as usize).map_or(&[][..], |v| v) {
                if n != from && !prev.contains_key(&n) {
                    prev.insert(n, c);
                    queue.push_back(n);
                }
            }
        }
        None
    }

    fn describe_edge(&self, a: u32, b: u32) -> String {
        match self.edges.get(&(a, b)) {
            Some(i) => format!(
                "{} (at {}) -> {} (at {}) on {}",
                self.name(a),
                i.from_site,
                self.name(b),
                i.to_site,
                i.thread
            ),
            None => format!("{} -> {}", self.name(a), self.name(b)),
        }
    }
}

static GRAPH: parking_lot::Mutex<Option<Graph>> = parking_lot::Mutex::new(None);

fn with_graph<R>(f: impl FnOnce(&mut Graph) -> R) -> R {
    let mut g = GRAPH.lock();
    f(g.get_or_insert_with(Graph::primed))
}

/// Registers a lock class by name and returns its id; the same name always
/// gives the same id (the built-in classes included).
pub fn register_class(name: &str) -> ClassId {
    ClassId(with_graph(|g| g.register(name)))
}

/// The name a class was registered with.
pub fn class_name(c: ClassId) -> String {
    with_graph(|g| g.name(c.0).to_owned())
}

/// Whether the graph orders `a` before `b` (directly or through other
/// classes).
pub fn has_order(a: ClassId, b: ClassId) -> bool {
    with_graph(|g| g.path(a.0, b.0).is_some())
}

#[derive(Clone, Copy)]
struct Held {
    class: ClassId,
    instance: usize,
    site: Site,
    ctx: Option<u64>,
}

crate::shim_thread_local! {
    static SIGNALLING_DEPTH: Cell<u32> = const { Cell::new(0) };
    static SIGNALLING_WHERE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    static THREAD_MODE: Cell<Option<Mode>> = const { Cell::new(None) };
    static LOCAL_REPORTS: RefCell<Option<Vec<Report>>> = const { RefCell::new(None) };
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
    mode() != Mode::Off && SIGNALLING_DEPTH.try_with(|d| d.get()).unwrap_or(0) > 0
}

fn signalling_sections() -> String {
    SIGNALLING_WHERE
        .try_with(|w| w.borrow().join(" -> "))
        .unwrap_or_default()
}

/// `__dma_fence_might_wait`: called by every blocking fence wait. Reports a
/// wait inside a signalling section, and acquires and releases the
/// `dma_fence wait` pseudo-class so that every class held here is ordered
/// before fence waits.
#[inline]
pub fn might_wait(what: &str) {
    if mode() == Mode::Off {
        return;
    }
    might_wait_slow(what);
}

#[cold]
fn might_wait_slow(what: &str) {
    if SIGNALLING_DEPTH.try_with(|d| d.get()).unwrap_or(0) > 0 {
        let sections = signalling_sections();
        report_with_stacks(
            ReportKind::WaitInSignallingSection,
            format!("{what} inside a fence signalling section entered at: {sections}"),
            vec![
                format!("signalling section entered at {sections}"),
                format!("then {what} on {}", thread_name()),
            ],
        );
    }
    let held = held_snapshot();
    for h in held.iter().filter(|h| h.class != ClassId::DMA_FENCE_WAIT) {
        check_order(h.class, &h.site.to_string(), ClassId::DMA_FENCE_WAIT, what);
    }
}

fn held_snapshot() -> Vec<Held> {
    HELD.try_with(|h| h.borrow().clone()).unwrap_or_default()
}

/// Records `from -> to`, or reports the inversion if `to ->* from` is known.
/// Returns false when an inversion was found.
fn check_order(from: ClassId, from_site: &str, to: ClassId, to_site: &str) -> bool {
    if from == to {
        return true;
    }
    let inversion = with_graph(|g| {
        if g.edges.contains_key(&(from.0, to.0)) {
            return None;
        }
        if let Some(path) = g.path(to.0, from.0) {
            let earlier: Vec<String> = path.iter().map(|&(a, b)| g.describe_edge(a, b)).collect();
            return Some((
                g.name(from.0).to_owned(),
                g.name(to.0).to_owned(),
                earlier.join(", then "),
            ));
        }
        g.add_edge(
            from.0,
            to.0,
            EdgeInfo {
                from_site: from_site.to_owned(),
                to_site: to_site.to_owned(),
                thread: thread_name(),
            },
        );
        None
    });
    match inversion {
        None => true,
        Some((a, b, earlier)) => {
            report_with_stacks(
                ReportKind::LockOrderInversion,
                format!("taking {b} while holding {a}, but {b} -> {a} was recorded before"),
                vec![
                    format!(
                        "now: {a} (at {from_site}) -> {b} (at {to_site}) on {}",
                        thread_name()
                    ),
                    format!("before: {earlier}"),
                ],
            );
            false
        }
    }
}

/// Records that the calling thread took a lock of `class` at `site` (a
/// driver-registered class; see [`register_class`]). Checks the order
/// against every class the thread holds and against signalling sections.
#[inline]
pub fn lock_acquired(class: ClassId, site: &'static str) {
    if mode() == Mode::Off {
        return;
    }
    acquire(class, 0, Site::Str(site), None, false, false);
}

/// Records that the calling thread released its latest lock of `class`.
/// A release with no matching acquisition is ignored (the validator may
/// have been switched on while the lock was held).
#[inline]
pub fn lock_released(class: ClassId) {
    if mode() == Mode::Off {
        return;
    }
    release(class, 0);
}

/// Classes the calling thread holds, oldest first.
pub fn held_classes() -> Vec<ClassId> {
    held_snapshot().iter().map(|h| h.class).collect()
}

/// Acquisition of a lock instance. `ctx` is the acquire-context stamp for
/// ww classes; `trylock` acquisitions are recorded without ordering checks.
#[cold]
pub(crate) fn acquire(
    class: ClassId,
    instance: usize,
    site: Site,
    ctx: Option<u64>,
    ww: bool,
    trylock: bool,
) {
    let held = held_snapshot();
    let site_s = site.to_string();
    let in_section = SIGNALLING_DEPTH.try_with(|d| d.get()).unwrap_or(0) > 0;
    if !trylock {
        if in_section {
            let sections = signalling_sections();
            if class == ClassId::DMA_RESV {
                report_with_stacks(
                    ReportKind::ResvLockInSignallingSection,
                    format!(
                        "dma_resv lock taken at {site_s} inside a fence signalling section entered at: {sections}"
                    ),
                    vec![
                        format!("signalling section entered at {sections}"),
                        format!("then dma_resv lock at {site_s} on {}", thread_name()),
                    ],
                );
            } else {
                check_order(ClassId::DMA_FENCE_WAIT, &sections, class, &site_s);
            }
        }
        let mut seen = Vec::new();
        for h in &held {
            if h.class != class && !seen.contains(&h.class) {
                seen.push(h.class);
                check_order(h.class, &h.site.to_string(), class, &site_s);
            }
        }
        if ww {
            let same: Vec<&Held> = held.iter().filter(|h| h.class == class).collect();
            if let Some(first) = same.first()
                && (ctx.is_none() || same.iter().any(|h| h.ctx != ctx))
            {
                let name = class_name(class);
                report_with_stacks(
                    ReportKind::NestedWwLockWithoutCtx,
                    format!(
                        "second {name} lock taken at {site_s} without an acquire context shared with the one held"
                    ),
                    vec![
                        format!("first {name} lock at {} (ctx {:?})", first.site, first.ctx),
                        format!(
                            "then {name} lock at {site_s} (ctx {ctx:?}) on {}",
                            thread_name()
                        ),
                    ],
                );
            }
        }
    }
    let _ = HELD.try_with(|h| {
        h.borrow_mut().push(Held {
            class,
            instance,
            site,
            ctx,
        })
    });
}

/// Release of a lock instance (the latest record of that class and
/// instance).
#[cold]
pub(crate) fn release(class: ClassId, instance: usize) {
    let _ = HELD.try_with(|h| {
        let mut h = h.borrow_mut();
        if let Some(i) = h
            .iter()
            .rposition(|x| x.class == class && x.instance == instance)
        {
            h.remove(i);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_order_is_primed() {
        assert!(has_order(ClassId::MMAP_LOCK, ClassId::DMA_RESV));
        assert!(has_order(ClassId::DMA_RESV, ClassId::DMA_FENCE_WAIT));
        assert!(has_order(ClassId::MMAP_LOCK, ClassId::DMA_FENCE_WAIT));
        assert!(!has_order(ClassId::DMA_FENCE_WAIT, ClassId::DMA_RESV));
        assert_eq!(register_class("dma_resv"), ClassId::DMA_RESV);
        assert_eq!(class_name(ClassId::FS_RECLAIM), "fs_reclaim");
    }

    #[test]
    fn inversion_between_two_registered_classes_is_reported_with_both_histories() {
        let a = register_class("lockdep_test_inv_a");
        let b = register_class("lockdep_test_inv_b");
        let ((), reports) = collect_reports(|| {
            lock_acquired(a, "first_a");
            lock_acquired(b, "then_b");
            lock_released(b);
            lock_released(a);
        });
        assert!(reports.is_empty(), "{reports:?}");
        // The reverse order on another thread, which never races the first.
        let reports = std::thread::spawn(move || {
            collect_reports(|| {
                lock_acquired(b, "first_b");
                lock_acquired(a, "then_a");
                lock_released(a);
                lock_released(b);
            })
            .1
        })
        .join()
        .unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].kind, ReportKind::LockOrderInversion);
        assert_eq!(reports[0].stacks.len(), 2);
        assert!(reports[0].stacks[0].contains("then_a"));
        assert!(reports[0].stacks[1].contains("first_a"));
        assert!(reports[0].stacks[1].contains("then_b"));
        // The bad edge was not recorded.
        assert!(!has_order(b, a));
    }

    #[test]
    fn taking_the_address_space_lock_under_a_later_class_is_reported() {
        let ((), reports) = collect_reports(|| {
            lock_acquired(ClassId::FS_RECLAIM, "reclaim");
            lock_acquired(ClassId::MMAP_LOCK, "mmap_read_lock");
            lock_released(ClassId::MMAP_LOCK);
            lock_released(ClassId::FS_RECLAIM);
        });
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].kind, ReportKind::LockOrderInversion);
        // The recorded path from mmap_lock to fs_reclaim (primed, or a
        // shorter one other tests recorded).
        assert!(reports[0].stacks[1].starts_with("before: mmap_lock"));
        assert!(reports[0].stacks[1].contains("fs_reclaim"));
    }

    #[test]
    fn wait_holding_a_class_taken_in_a_signalling_section_is_an_inversion() {
        let c = register_class("lockdep_test_job_lock");
        let ((), reports) = collect_reports(|| {
            let cookie = begin_signalling_at("test section");
            lock_acquired(c, "job lock in section");
            lock_released(c);
            end_signalling(cookie);
            lock_acquired(c, "job lock");
            might_wait("dma_fence_wait");
            lock_released(c);
        });
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].kind, ReportKind::LockOrderInversion);
    }

    #[test]
    fn wait_in_signalling_section_is_reported() {
        let ((), reports) = collect_reports(|| {
            let cookie = begin_signalling();
            might_wait("dma_fence_wait");
            end_signalling(cookie);
        });
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].kind, ReportKind::WaitInSignallingSection);
    }

    #[test]
    fn thread_override_does_not_leak_and_off_records_nothing() {
        let c = register_class("lockdep_test_off");
        let before = mode();
        with_thread_mode(Mode::Off, || {
            assert_eq!(mode(), Mode::Off);
            lock_acquired(c, "off");
            assert!(held_classes().is_empty());
        });
        assert_eq!(mode(), before);
        let ((), nested) = collect_reports(|| {
            let ((), inner) =
                collect_reports(|| report(ReportKind::LockOrderInversion, "x".into()));
            assert_eq!(inner.len(), 1);
        });
        assert!(nested.is_empty());
    }
}
