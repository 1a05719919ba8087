//! State shared by the soak's threads: operation counters, findings, the
//! revoke-latency histogram, the in-flight revokes and the task table the
//! watchdog reads, and the fallible-allocation hook's per-thread settings.
//!
//! # Lock rules
//!
//! Every lock here is a leaf (nothing else is taken while one is held) and
//! goes through the shim (`dmabuf_core::sync`). The allocation hook runs
//! inside the core's and the platform's allocation paths, possibly under
//! their locks: it touches only thread-local state and one atomic.

use crate::check::{Finding, FindingKind};
use dmabuf_core::sync::Mutex;
use dmabuf_core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dmabuf_core::sync::time::now_ns;
use std::cell::Cell;
use std::collections::BTreeMap;

dmabuf_core::named_enum! {
    /// Operation kinds counted (the summary's `ops`).
    ///
    /// `name()`: kebab-case name.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Op {
        /// A buffer exported and its fd installed.
        Export => "export",
        /// An importer set up (attach, pin, map, register).
        Setup => "setup",
        /// An exporter turned an importer away (`EOPNOTSUPP`/`ENODEV`).
        Refusal => "refusal",
        /// `dma_buf_map_attachment` by an importer (its counter).
        Map => "map",
        /// `dma_buf_unmap_attachment` by an importer (its counter).
        Unmap => "unmap",
        /// `invalidate_mappings` callbacks run (importers' counter).
        Invalidate => "invalidate",
        /// A DMA job that completed.
        JobOk => "job-ok",
        /// A DMA job refused or failed.
        JobFailed => "job-failed",
        /// A CPU access (BAR write through the VFIO mmap; dma-buf mmap and
        /// `DMA_BUF_IOCTL_SYNC`).
        Cpu => "cpu-access",
        /// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`.
        SyncFile => "export-sync-file",
        /// `poll` on a dma-buf or sync_file fd.
        Poll => "poll",
        /// A wait on a sync_file's fence.
        FenceWait => "fence-wait",
        /// An exporter event.
        Event => "exporter-event",
        /// A revoke that returned (every buffer, every trigger).
        Revoke => "revoke",
        /// An un-revoke.
        Unrevoke => "unrevoke",
        /// An importer re-map after an un-revoke.
        Remap => "remap",
        /// An importer teardown.
        Teardown => "teardown",
        /// A process killed.
        Kill => "kill",
        /// A device surprise-unplugged.
        Unplug => "unplug",
        /// An allocation failed on purpose.
        AllocFail => "alloc-fail-injected",
        /// An episode completed.
        Episode => "episode",
        /// Accesses the monitor recorded that are no violation
        /// ([`crate::check::is_violation`]): IOMMU faults on revoked IOVAs (the
        /// access was stopped), accesses in an importer's unmap window,
        /// accesses by a device the soak unplugged.
        Stopped => "stopped-access",
    }
}

/// A latency histogram with fixed memory: buckets of 1/8 of a power of two
/// (12.5% resolution), from 1 µs to about 2^40 µs. Quantiles are the upper
/// edge of their bucket; the maximum is exact.
#[derive(Clone, Debug)]
pub struct Hist {
    buckets: Vec<u64>,
    count: u64,
    max_ns: u64,
}

const SUB: u32 = 8;

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: vec![0; (41 * SUB) as usize],
            count: 0,
            max_ns: 0,
        }
    }
}

impl Hist {
    fn index(us: u64) -> usize {
        if us < 1 {
            return 0;
        }
        let exp = 63 - us.leading_zeros();
        let frac = if exp >= 3 {
            ((us >> (exp - 3)) & 0x7) as u32
        } else {
            ((us << (3 - exp)) & 0x7) as u32
        };
        ((exp.min(40)) * SUB + frac) as usize
    }

    fn upper_us(i: usize) -> u64 {
        let exp = i as u32 / SUB;
        let frac = u64::from(i as u32 % SUB);
        // (8 + frac + 1) / 8 * 2^exp
        ((8 + frac + 1) << exp) / 8
    }

    /// Records one latency.
    pub fn record(&mut self, ns: u64) {
        let i = Self::index(ns / 1000).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest, exact (ns).
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The `q` quantile (0 to 1) in µs, at most the maximum; `None` when
    /// empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::upper_us(i).min(self.max_ns.div_ceil(1000)));
            }
        }
        Some(self.max_ns.div_ceil(1000))
    }
}

/// A thread's current step, for the watchdog.
#[derive(Clone, Debug)]
pub struct Task {
    /// Thread name.
    pub thread: String,
    /// Episode.
    pub episode: u64,
    /// What it is doing (a kernel-style call name).
    pub step: &'static str,
    /// Since when.
    pub since_ns: u64,
    /// Already reported as hung.
    pub reported: bool,
}

/// A revoke in flight.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Episode.
    pub episode: u64,
    /// The exporter device.
    pub exporter: String,
    /// Step 2 began.
    pub began_ns: u64,
    /// Already reported as slow.
    pub reported: bool,
}

/// Findings of one kind kept in memory at most (the rest are counted): a
/// run that finds a problem every episode must not grow without bound, and
/// a flood of one kind must not crowd out a rare one.
pub const MAX_FINDINGS_PER_KIND: usize = 50;

/// The soak's shared state.
#[derive(Default)]
pub struct Shared {
    ops: Vec<AtomicU64>,
    findings: Mutex<Vec<Finding>>,
    findings_total: AtomicU64,
    finding_counts: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Hist>,
    revokes: Mutex<BTreeMap<(u64, u64), InFlight>>,
    tasks: Mutex<BTreeMap<u64, Task>>,
    next_task: AtomicU64,
    refusals: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    events: Mutex<BTreeMap<&'static str, u64>>,
    /// Set when the run is ending: workers start no new episode.
    pub stopping: AtomicBool,
    /// A revoke that returns after longer than this (ns; 0: no bound) is a
    /// finding even if the watchdog never saw it running.
    pub revoke_bound_ns: AtomicU64,
}

impl Shared {
    /// Empty.
    pub fn new() -> Self {
        Shared {
            ops: Op::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    /// Adds `n` to `op`.
    pub fn add(&self, op: Op, n: u64) {
        if let Some(c) = self.ops.get(op as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn ops(&self) -> BTreeMap<&'static str, u64> {
        Op::ALL.iter().map(|o| (o.name(), self.op(*o))).collect()
    }

    /// One counter.
    pub fn op(&self, op: Op) -> u64 {
        self.ops
            .get(op as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Records a finding.
    pub fn finding(&self, kind: FindingKind, episode: Option<u64>, detail: String) {
        self.finding_at(kind, episode, None, detail);
    }

    /// Records a finding of an episode of `exporter`.
    pub fn finding_at(
        &self,
        kind: FindingKind,
        episode: Option<u64>,
        exporter: Option<&'static str>,
        detail: String,
    ) {
        self.findings_total.fetch_add(1, Ordering::Relaxed);
        {
            let mut c = self.finding_counts.lock();
            *c.entry(kind.name().to_string()).or_default() += 1;
            if let Some(e) = exporter {
                *c.entry(format!("{e}/{}", kind.name())).or_default() += 1;
            }
        }
        let mut f = self.findings.lock();
        if f.iter().filter(|x| x.kind == kind).count() < MAX_FINDINGS_PER_KIND {
            f.push(Finding {
                kind,
                episode,
                exporter,
                detail,
            });
        }
    }

    /// Findings so far (at most [`MAX_FINDINGS_PER_KIND`] of each kind)
    /// and their total count.
    pub fn findings(&self) -> (Vec<Finding>, u64) {
        (
            self.findings.lock().clone(),
            self.findings_total.load(Ordering::Relaxed),
        )
    }

    /// How many findings so far.
    pub fn findings_total(&self) -> u64 {
        self.findings_total.load(Ordering::Relaxed)
    }

    /// Findings by kind, and by `exporter/kind` where the exporter is known.
    pub fn finding_counts(&self) -> BTreeMap<String, u64> {
        self.finding_counts.lock().clone()
    }

    /// Counts a refusal under `key` (`exporter/importer/stage/errno`).
    pub fn refusal(&self, key: String) {
        self.add(Op::Refusal, 1);
        *self.refusals.lock().entry(key.to_lowercase()).or_default() += 1;
    }

    /// Refusals by key.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals.lock().clone()
    }

    /// Counts an operation error under `key` (`what/errno`): expected
    /// under faults, kills and events, so counted, not a finding.
    pub fn error(&self, key: String) {
        *self.errors.lock().entry(key.to_lowercase()).or_default() += 1;
    }

    /// Errors by key.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    /// Counts an exporter event.
    pub fn event(&self, name: &'static str) {
        self.add(Op::Event, 1);
        *self.events.lock().entry(name).or_default() += 1;
    }

    /// Events by name.
    pub fn events(&self) -> BTreeMap<&'static str, u64> {
        self.events.lock().clone()
    }

    /// A revoke began.
    pub fn revoke_began(&self, episode: u64, ino: u64, exporter: String, ns: u64) {
        self.revokes.lock().insert(
            (episode, ino),
            InFlight {
                episode,
                exporter,
                began_ns: ns,
                reported: false,
            },
        );
    }

    /// A revoke returned after `latency_ns`.
    pub fn revoke_returned(&self, episode: u64, ino: u64, latency_ns: u64) {
        let was = self.revokes.lock().remove(&(episode, ino));
        let bound = self.revoke_bound_ns.load(Ordering::Relaxed);
        if bound > 0 && latency_ns > bound && !was.is_some_and(|r| r.reported) {
            // Only VFIO buffers revoke.
            self.finding_at(
                FindingKind::SlowRevoke,
                Some(episode),
                Some("vfio"),
                format!(
                    "revoke of dma-buf ino {ino} returned after {} us, beyond the bound of {} us",
                    latency_ns / 1000,
                    bound / 1000
                ),
            );
        }
        self.latency.lock().record(latency_ns);
        self.add(Op::Revoke, 1);
    }

    /// Forgets the in-flight revokes of an episode (its exporter is gone).
    pub fn forget_episode(&self, episode: u64) {
        self.revokes.lock().retain(|(e, _), _| *e != episode);
    }

    /// The revoke-latency histogram.
    pub fn latency(&self) -> Hist {
        self.latency.lock().clone()
    }

    /// Revokes running longer than `bound_ns` and not reported yet (marked
    /// reported).
    pub fn slow_revokes(&self, bound_ns: u64) -> Vec<((u64, u64), InFlight)> {
        let now = now_ns();
        let mut out = Vec::new();
        for (k, r) in self.revokes.lock().iter_mut() {
            if !r.reported && now.saturating_sub(r.began_ns) > bound_ns {
                r.reported = true;
                out.push((*k, r.clone()));
            }
        }
        out
    }

    /// Registers the calling thread in the task table.
    pub fn task(&self, episode: u64, thread: String) -> TaskGuard<'_> {
        let id = self.next_task.fetch_add(1, Ordering::Relaxed);
        self.tasks.lock().insert(
            id,
            Task {
                thread,
                episode,
                step: "start",
                since_ns: now_ns(),
                reported: false,
            },
        );
        TaskGuard { sh: self, id }
    }

    /// Tasks in one step longer than `bound_ns` and not reported yet
    /// (marked reported), each with the other tasks of its episode.
    pub fn hung_tasks(&self, bound_ns: u64) -> Vec<(Task, Vec<Task>)> {
        let now = now_ns();
        let mut t = self.tasks.lock();
        let hung: Vec<u64> = t
            .iter()
            .filter(|(_, x)| !x.reported && now.saturating_sub(x.since_ns) > bound_ns)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in hung {
            if let Some(x) = t.get_mut(&k) {
                x.reported = true;
            }
            let Some(me) = t.get(&k).cloned() else {
                continue;
            };
            let others: Vec<Task> = t
                .iter()
                .filter(|(o, x)| **o != k && x.episode == me.episode)
                .map(|(_, x)| x.clone())
                .collect();
            out.push((me, others));
        }
        out
    }

    /// The tasks of an episode now.
    pub fn tasks_of(&self, episode: u64) -> Vec<Task> {
        self.tasks
            .lock()
            .values()
            .filter(|t| t.episode == episode)
            .cloned()
            .collect()
    }
}

/// A registered thread; dropping it unregisters.
pub struct TaskGuard<'a> {
    sh: &'a Shared,
    id: u64,
}

impl TaskGuard<'_> {
    /// Enters `step`.
    pub fn step(&self, step: &'static str) {
        if let Some(t) = self.sh.tasks.lock().get_mut(&self.id) {
            t.step = step;
            t.since_ns = now_ns();
            t.reported = false;
        }
    }
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.sh.tasks.lock().remove(&self.id);
    }
}

// ---- the fallible-allocation hook ----

thread_local! {
    /// (per mille, xorshift state) of the calling thread; `None`: never fail.
    static FAIL: Cell<Option<(u32, u64)>> = const { Cell::new(None) };
}

/// Allocation failures injected, process-wide.
static INJECTED: dmabuf_core::sync::atomic::global::AtomicU64 =
    dmabuf_core::sync::atomic::global::AtomicU64::new(0);

/// Makes allocations on the calling thread fail with probability
/// `per_mille`/1000, drawn from `seed` (0 per mille: never).
pub fn set_thread_alloc_failures(per_mille: u32, seed: u64) {
    let v = (per_mille > 0).then_some((per_mille.min(1000), seed | 1));
    let _ = FAIL.try_with(|c| c.set(v));
}

/// Failures injected so far.
pub fn injected_failures() -> u64 {
    INJECTED.load(Ordering::Relaxed)
}

/// The hook given to `dmabuf_core::fault::set_hook`.
pub fn alloc_hook(_site: &'static str) -> bool {
    FAIL.try_with(|c| {
        let Some((pm, mut x)) = c.get() else {
            return false;
        };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(Some((pm, x)));
        let fail = (x % 1000) < u64::from(pm);
        if fail {
            INJECTED.fetch_add(1, Ordering::Relaxed);
        }
        fail
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_and_max() {
        let mut h = Hist::default();
        assert_eq!(h.quantile_us(0.5), None);
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((500..=570).contains(&p50), "p50 {p50}");
        assert!((990..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.max_ns(), 1_000_000);
        assert_eq!(h.quantile_us(1.0), Some(1000));
        assert_eq!(h.count(), 1000);
    }

    #[test]
    fn hook_fails_only_on_threads_that_asked() {
        set_thread_alloc_failures(1000, 5);
        assert!(alloc_hook("x"));
        set_thread_alloc_failures(0, 5);
        assert!(!alloc_hook("x"));
        set_thread_alloc_failures(500, 9);
        let n = (0..2000).filter(|_| alloc_hook("x")).count();
        assert!((800..1200).contains(&n), "{n} of 2000 at 500 per mille");
        let other = std::thread::spawn(|| alloc_hook("x")).join().unwrap();
        assert!(!other);
        set_thread_alloc_failures(0, 0);
    }

    #[test]
    fn a_flood_of_one_kind_does_not_hide_a_rare_one() {
        let sh = Shared::new();
        for i in 0..(MAX_FINDINGS_PER_KIND as u64 + 10) {
            sh.finding_at(FindingKind::Hazard, Some(i), Some("gpu-vram"), "h".into());
        }
        sh.finding(FindingKind::Lockdep, None, "l".into());
        let (kept, total) = sh.findings();
        assert_eq!(total, MAX_FINDINGS_PER_KIND as u64 + 11);
        assert_eq!(kept.len(), MAX_FINDINGS_PER_KIND + 1);
        assert_eq!(kept.last().unwrap().kind, FindingKind::Lockdep);
        let c = sh.finding_counts();
        assert_eq!(c["hazard"], MAX_FINDINGS_PER_KIND as u64 + 10);
        assert_eq!(c["gpu-vram/hazard"], MAX_FINDINGS_PER_KIND as u64 + 10);
        assert_eq!(c["lockdep"], 1);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn watchdog_tables_report_once() {
        let sh = Shared::new();
        let g = sh.task(3, "t".into());
        g.step("dma_fence_wait");
        let _other = sh.task(3, "u".into());
        assert!(sh.hung_tasks(u64::MAX).is_empty());
        let hung = sh.hung_tasks(0);
        assert_eq!(hung.len(), 2);
        let (me, others) = hung.iter().find(|(t, _)| t.thread == "t").unwrap();
        assert_eq!(me.step, "dma_fence_wait");
        assert_eq!(others.len(), 1);
        assert!(sh.hung_tasks(0).is_empty(), "reported twice");
        drop(g);
        assert_eq!(sh.tasks_of(3).len(), 1);
        sh.revoke_began(3, 7, "vfio0".into(), 0);
        assert_eq!(sh.slow_revokes(0).len(), 1);
        assert!(sh.slow_revokes(0).is_empty());
        sh.revoke_returned(3, 7, 5_000);
        assert_eq!(sh.op(Op::Revoke), 1);
        assert_eq!(sh.latency().count(), 1);
    }
}
