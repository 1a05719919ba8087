//! The soak run: validated configuration, worker threads running episodes,
//! the watchdog, RSS sampling, progress on stderr, and the summary (text and
//! JSON, docs/json.md).
//!
//! # Threads
//!
//! | thread | does |
//! |---|---|
//! | the caller | samples RSS every second, drains lockdep reports, prints progress every 5 s, stops the workers at the deadline or when `stop()` says so |
//! | `soak-w{k}` (k < workers) | runs episodes `k, k + W, k + 2W, ...` until told to stop |
//! | `soak-watchdog` | every 100 ms: revokes older than the revoke bound, tasks stuck in one step longer than the hung-task bound (the kernel's `khungtaskd`, `kernel/hung_task.c`, reduced to our threads) |
//!
//! # States of a run
//!
//! | state | entered when | leaves when |
//! |---|---|---|
//! | running | `run` starts | the deadline passes or `stop()` is true |
//! | stopping | `Shared::stopping` set | every worker finished its current episode (or the hung-task bound passed: then they are left running and reported) |
//! | done | the summary is built | |

use crate::check::{Census, Finding, FindingKind};
use crate::episode::{self, Ctx};
use crate::plan::{self, MAX_BUFFERS, MAX_IMPORTS, PlanConfig, exporter_name};
use crate::shared::{Op, Shared, injected_failures};
use dmabuf_core::lockdep;
use dmabuf_core::sync::atomic::Ordering;
use dmabuf_core::sync::thread;
use dmabuf_core::sync::time::now_ns;
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_scenario::builtin::Library;
use dmabuf_scenario::world::{ExporterKind, ImporterSpec};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest `--duration`: a week.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most worker threads.
pub const MAX_WORKERS: u32 = 16;

/// Importer kinds run by default: every built-in one but `lying`, which
/// breaks the contract on purpose (give it with `--importers` to see the
/// soak catch it).
pub const DEFAULT_IMPORTERS: &[&str] = &[
    "static",
    "gpu",
    "gpu-kernel-fence",
    "rdma-odp",
    "rdma-pinned",
    "rdma-pinned-revocable",
    "iommufd",
];

/// A soak's configuration.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// How long to run.
    pub duration: Duration,
    /// The seed.
    pub seed: u64,
    /// Exporters and importers and sizes of the workload.
    pub plan: PlanConfig,
    /// Worker threads (episodes run side by side).
    pub workers: u32,
    /// A revoke longer than this is a finding.
    pub revoke_bound: Duration,
    /// A thread in one step longer than this is a finding.
    pub hung_bound: Duration,
    /// Run only this episode (its index), over and over on every worker,
    /// until a finding or the end of the duration: a real-thread
    /// reproduction.
    pub only_episode: Option<u64>,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            duration: Duration::from_secs(600),
            seed: 1,
            plan: PlanConfig {
                exporters: vec![
                    ExporterKind::Vfio,
                    ExporterKind::SystemHeap,
                    ExporterKind::GpuVram,
                ],
                importers: DEFAULT_IMPORTERS.iter().map(|s| s.to_string()).collect(),
                max_buffers: 4,
                max_imports: 6,
                faults: true,
            },
            workers: 2,
            revoke_bound: Duration::from_secs(2),
            hung_bound: Duration::from_secs(10),
            only_episode: None,
            progress: true,
        }
    }
}

/// `10m`, `30s`, `1h`, `1h30m`, `90` (seconds), `500ms`: a positive
/// duration of at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("--duration: empty (give e.g. 10m, 30s, 1h)".into());
    }
    let bad =
        || format!("--duration {s:?}: expected a number with a unit, e.g. 10m, 30s, 1h30m, 500ms");
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms: u128 = match unit {
            "" if rest.is_empty() && total == 0 => 1000,
            "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total = total.saturating_add(n.saturating_mul(ms));
    }
    if total == 0 {
        return Err(format!("--duration {s:?}: must be longer than zero"));
    }
    if total > MAX_DURATION.as_millis() {
        return Err(format!("--duration {s:?}: longer than the limit of 7 days"));
    }
    Ok(Duration::from_millis(total as u64))
}

impl SoakConfig {
    /// Checks every count and name; the error says what is wrong.
    pub fn validate(&self) -> Result<Vec<ImporterSpec>, String> {
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err("--duration must be between 1 ms and 7 days".into());
        }
        if self.plan.exporters.is_empty() {
            return Err("--exporters: give at least one of vfio, system-heap, gpu-vram".into());
        }
        if self.plan.importers.is_empty() {
            return Err("--importers: give at least one importer kind".into());
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(format!(
                "--workers {}: give 1 to {MAX_WORKERS}",
                self.workers
            ));
        }
        if !(1..=MAX_BUFFERS).contains(&self.plan.max_buffers) {
            return Err(format!(
                "--max-buffers {}: give 1 to {MAX_BUFFERS}",
                self.plan.max_buffers
            ));
        }
        if !(1..=MAX_IMPORTS).contains(&self.plan.max_imports) {
            return Err(format!(
                "--max-imports {}: give 1 to {MAX_IMPORTS}",
                self.plan.max_imports
            ));
        }
        for (b, what) in [
            (self.revoke_bound, "--revoke-bound-ms"),
            (self.hung_bound, "--hung-bound-ms"),
        ] {
            if b.is_zero() || b > Duration::from_secs(3600) {
                return Err(format!("{what}: give 1 to 3,600,000"));
            }
        }
        let lib = Library::builtin().map_err(|e| format!("built-in library: {e}"))?;
        let mut specs = Vec::new();
        for name in &self.plan.importers {
            match lib.importer(name) {
                Some(d) => {
                    let mut s = d.spec.clone();
                    s.count = 1;
                    specs.push(s);
                }
                None => {
                    return Err(format!(
                        "--importers: unknown importer {name:?} (known: {}, lying)",
                        DEFAULT_IMPORTERS.join(", ")
                    ));
                }
            }
        }
        Ok(specs)
    }
}

/// The command line's words, before validation.
#[derive(Clone, Debug, Default)]
pub struct SoakArgs {
    /// `--duration`.
    pub duration: String,
    /// `--seed`.
    pub seed: u64,
    /// `--exporters` (empty: all).
    pub exporters: Vec<String>,
    /// `--importers` (empty: [`DEFAULT_IMPORTERS`]).
    pub importers: Vec<String>,
    /// `--workers`.
    pub workers: u32,
    /// `--max-buffers`.
    pub max_buffers: u32,
    /// `--max-imports`.
    pub max_imports: u32,
    /// `--revoke-bound-ms`.
    pub revoke_bound_ms: u64,
    /// `--hung-bound-ms`.
    pub hung_bound_ms: u64,
    /// `--episode`.
    pub episode: Option<u64>,
    /// `--no-faults`.
    pub no_faults: bool,
    /// `--quiet` or `--json`: no progress.
    pub quiet: bool,
}

impl SoakArgs {
    /// The configuration these words ask for, validated.
    pub fn config(&self) -> Result<SoakConfig, String> {
        let mut c = SoakConfig {
            duration: parse_duration(&self.duration)?,
            seed: self.seed,
            workers: self.workers,
            only_episode: self.episode,
            progress: !self.quiet,
            ..SoakConfig::default()
        };
        if !self.exporters.is_empty() {
            c.plan.exporters = Vec::new();
            for e in &self.exporters {
                let k = plan::exporter_by_name(e.trim()).ok_or_else(|| {
                    format!(
                        "--exporters: unknown exporter {e:?} (known: vfio, system-heap, gpu-vram)"
                    )
                })?;
                if !c.plan.exporters.contains(&k) {
                    c.plan.exporters.push(k);
                }
            }
        }
        if !self.importers.is_empty() {
            c.plan.importers = Vec::new();
            for i in &self.importers {
                let i = i.trim().to_string();
                if !c.plan.importers.contains(&i) {
                    c.plan.importers.push(i);
                }
            }
        }
        c.plan.max_buffers = self.max_buffers;
        c.plan.max_imports = self.max_imports;
        c.plan.faults = !self.no_faults;
        c.revoke_bound = Duration::from_millis(self.revoke_bound_ms);
        c.hung_bound = Duration::from_millis(self.hung_bound_ms);
        c.validate()?;
        Ok(c)
    }
}

/// One RSS sample.
#[derive(Clone, Copy, Debug)]
struct RssSample {
    t_ns: u64,
    kib: u64,
}

/// The resident set size of this process in KiB (`/proc/self/statm`), if
/// readable.
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some(pages * page / 1024)
}

/// RSS figures of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RssReport {
    /// At the start.
    pub start_kib: u64,
    /// Highest sample.
    pub peak_kib: u64,
    /// At the end.
    pub end_kib: u64,
    /// Highest sample at the end of the warm-up.
    pub warm_kib: u64,
    /// Least-squares slope of the samples after the warm-up, KiB per
    /// minute (`None` with fewer than 10 such samples).
    pub growth_kib_per_min: Option<f64>,
    /// Warm-up length, s.
    pub warmup_secs: f64,
}

/// The RSS judgement: the slope after warm-up, over at least 30 s of
/// samples, projected over the post-warm-up span, must stay under
/// `max(8 MiB, 10% of the warm RSS)`. Returns the finding's text if not.
pub fn rss_verdict(r: &RssReport, post_warmup_secs: f64) -> Option<String> {
    let slope = r.growth_kib_per_min?;
    if post_warmup_secs < 30.0 {
        return None;
    }
    let grown = slope * post_warmup_secs / 60.0;
    let allowed = (8.0 * 1024.0f64).max(r.warm_kib as f64 * 0.10);
    (grown > allowed).then(|| {
        format!(
            "RSS grew {:.0} KiB/min after the warm-up ({:.0} KiB over {:.0} s, allowed {:.0} KiB); warm {} KiB, end {} KiB",
            slope, grown, post_warmup_secs, allowed, r.warm_kib, r.end_kib
        )
    })
}

fn analyse_rss(samples: &[RssSample], warmup_ns: u64) -> (RssReport, f64) {
    let mut r = RssReport::default();
    let Some(first) = samples.first() else {
        return (r, 0.0);
    };
    r.start_kib = first.kib;
    r.end_kib = samples.last().map_or(0, |s| s.kib);
    r.peak_kib = samples.iter().map(|s| s.kib).max().unwrap_or(0);
    r.warmup_secs = warmup_ns as f64 / 1e9;
    let t0 = first.t_ns;
    let post: Vec<&RssSample> = samples
        .iter()
        .filter(|s| s.t_ns.saturating_sub(t0) >= warmup_ns)
        .collect();
    r.warm_kib = samples
        .iter()
        .filter(|s| s.t_ns.saturating_sub(t0) <= warmup_ns)
        .map(|s| s.kib)
        .max()
        .unwrap_or(r.start_kib);
    let span = match (post.first(), post.last()) {
        (Some(a), Some(b)) => (b.t_ns - a.t_ns) as f64 / 1e9,
        _ => 0.0,
    };
    if post.len() >= 10 {
        let n = post.len() as f64;
        let xs: Vec<f64> = post.iter().map(|s| (s.t_ns - t0) as f64 / 60e9).collect();
        let ys: Vec<f64> = post.iter().map(|s| s.kib as f64).collect();
        let mx = xs.iter().sum::<f64>() / n;
        let my = ys.iter().sum::<f64>() / n;
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        if sxx > 0.0 {
            r.growth_kib_per_min = Some(sxy / sxx);
        }
    }
    (r, span)
}

/// What a run showed.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Requested duration.
    pub duration: Duration,
    /// Wall time.
    pub elapsed: Duration,
    /// Stopped by `stop()` (Ctrl-C).
    pub interrupted: bool,
    /// Workers.
    pub workers: u32,
    /// Exporters.
    pub exporters: Vec<String>,
    /// Importer kinds.
    pub importers: Vec<String>,
    /// Operation counters.
    pub ops: BTreeMap<&'static str, u64>,
    /// Exporter events by name.
    pub events: BTreeMap<&'static str, u64>,
    /// Refusals by `exporter/importer/stage/errno`.
    pub refusals: BTreeMap<String, u64>,
    /// Operation errors by `what/errno` (expected under faults).
    pub errors: BTreeMap<String, u64>,
    /// Revoke latency p50, p99 (µs, bucket upper edges) and max (µs, exact).
    pub revoke_latency_us: Option<(u64, u64, u64)>,
    /// RSS.
    pub rss: RssReport,
    /// Findings kept (at most [`crate::shared::MAX_FINDINGS_PER_KIND`] of
    /// each kind).
    pub findings: Vec<Finding>,
    /// Findings by kind, and by `exporter/kind` where the exporter is known.
    pub finding_counts: BTreeMap<String, u64>,
    /// Findings in all.
    pub findings_total: u64,
    /// Workers still running when the summary was taken (hung).
    pub workers_hung: u32,
    /// The command that reruns the same workload.
    pub rerun: String,
}

impl Summary {
    /// Exit code: 130 interrupted, 1 any finding, 0 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            130
        } else if self.findings_total > 0 {
            1
        } else {
            0
        }
    }

    /// Operations per second by kind.
    pub fn ops_per_sec(&self) -> BTreeMap<&'static str, f64> {
        let s = self.elapsed.as_secs_f64().max(1e-9);
        self.ops.iter().map(|(k, v)| (*k, *v as f64 / s)).collect()
    }

    /// The summary as text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "soak seed={} {}: {:.1}s of {:.0}s, {} workers, exporters {}, importers {}\n",
            self.seed,
            if self.interrupted {
                "INTERRUPTED (partial)"
            } else {
                "complete"
            },
            self.elapsed.as_secs_f64(),
            self.duration.as_secs_f64(),
            self.workers,
            self.exporters.join(","),
            self.importers.join(",")
        ));
        let total: u64 = self
            .ops
            .iter()
            .filter(|(k, _)| **k != "episode")
            .map(|(_, v)| v)
            .sum();
        s.push_str(&format!(
            "  episodes {}  operations {} ({:.0}/s)\n  by kind (per second):",
            self.ops.get("episode").copied().unwrap_or(0),
            total,
            total as f64 / self.elapsed.as_secs_f64().max(1e-9)
        ));
        for (k, v) in self.ops_per_sec() {
            s.push_str(&format!(" {k} {v:.1}"));
        }
        s.push('\n');
        if !self.events.is_empty() {
            let ev: Vec<String> = self
                .events
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!("  exporter events: {}\n", ev.join(", ")));
        }
        match self.revoke_latency_us {
            Some((p50, p99, max)) => s.push_str(&format!(
                "  revokes {}: latency p50 {p50} us, p99 {p99} us, max {max} us\n",
                self.ops.get("revoke").copied().unwrap_or(0)
            )),
            None => s.push_str("  revokes 0\n"),
        }
        if !self.refusals.is_empty() {
            let r: Vec<String> = self
                .refusals
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!("  refusals: {}\n", r.join(", ")));
        }
        let errs: u64 = self.errors.values().sum();
        if errs > 0 {
            let mut top: Vec<(&String, &u64)> = self.errors.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1));
            let r: Vec<String> = top
                .iter()
                .take(8)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!(
                "  operation errors (expected under faults and events): {errs}: {}{}\n",
                r.join(", "),
                if top.len() > 8 { ", ..." } else { "" }
            ));
        }
        s.push_str(&format!(
            "  rss: start {} KiB, peak {} KiB, end {} KiB, growth after {:.0}s warm-up: {}\n",
            self.rss.start_kib,
            self.rss.peak_kib,
            self.rss.end_kib,
            self.rss.warmup_secs,
            self.rss
                .growth_kib_per_min
                .map_or("not measured (too short)".to_string(), |g| format!(
                    "{g:.0} KiB/min"
                ))
        ));
        if self.findings_total == 0 {
            s.push_str("  findings: none (no hazard, no leak, no slow revoke, no hung task, lockdep clean)\n");
        } else {
            let by: Vec<String> = self
                .finding_counts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!(
                "  findings: {} ({})\n",
                self.findings_total,
                by.join(", ")
            ));
            for f in &self.findings {
                s.push_str(&format!(
                    "    [{}]{} {}\n",
                    f.kind.name(),
                    f.episode
                        .map_or(String::new(), |e| format!(" episode {e}:")),
                    f.detail
                ));
                if let Some(e) = f.episode {
                    s.push_str(&format!("      reproduce: {} --episode {e}\n", self.rerun));
                }
            }
            if self.findings_total > self.findings.len() as u64 {
                s.push_str(&format!(
                    "    ... {} more not kept\n",
                    self.findings_total - self.findings.len() as u64
                ));
            }
        }
        s.push_str(&format!("  rerun: {}\n", self.rerun));
        s.push_str(&format!(
            "  verdict: {}\n",
            if self.findings_total > 0 {
                "FAIL"
            } else if self.interrupted {
                "no finding so far (partial)"
            } else {
                "PASS"
            }
        ));
        s
    }

    /// The summary as JSON (docs/json.md, kebab-case keys).
    pub fn json(&self) -> Value {
        let lat = self.revoke_latency_us.map_or(
            Value::Null,
            |(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max}),
        );
        let per_sec: serde_json::Map<String, Value> = self
            .ops_per_sec()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!((v * 100.0).round() / 100.0)))
            .collect();
        json!({
            "seed": self.seed,
            "duration-secs": self.duration.as_secs_f64(),
            "elapsed-secs": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "interrupted": self.interrupted,
            "workers": self.workers,
            "exporters": self.exporters,
            "importers": self.importers,
            "ops": self.ops,
            "ops-per-sec": per_sec,
            "exporter-events": self.events,
            "refusals": self.refusals,
            "errors": self.errors,
            "revoke-latency-us": lat,
            "rss": {
                "start-kib": self.rss.start_kib,
                "peak-kib": self.rss.peak_kib,
                "end-kib": self.rss.end_kib,
                "warm-kib": self.rss.warm_kib,
                "warmup-secs": self.rss.warmup_secs,
                "growth-kib-per-min": self.rss.growth_kib_per_min.map(|g| g.round()),
            },
            "findings": self.findings.iter().map(|f| json!({
                "kind": f.kind.name(),
                "episode": f.episode,
                "exporter": f.exporter,
                "detail": f.detail,
                "reproduce": f.episode.map(|e| format!("{} --episode {e}", self.rerun)),
            })).collect::<Vec<_>>(),
            "findings-total": self.findings_total,
            "finding-counts": self.finding_counts,
            "workers-hung": self.workers_hung,
            "rerun": self.rerun,
            "verdict": if self.findings_total > 0 { "fail" } else if self.interrupted { "partial" } else { "pass" },
        })
    }
}

fn rerun_command(cfg: &SoakConfig) -> String {
    let ex: Vec<&str> = cfg
        .plan
        .exporters
        .iter()
        .map(|e| exporter_name(*e))
        .collect();
    let mut s = format!(
        "dmabuf soak --seed {} --exporters {} --importers {} --max-buffers {} --max-imports {}",
        cfg.seed,
        ex.join(","),
        cfg.plan.importers.join(","),
        cfg.plan.max_buffers,
        cfg.plan.max_imports
    );
    if !cfg.plan.faults {
        s.push_str(" --no-faults");
    }
    s
}

fn describe_waiters(ino: u64) -> String {
    let Some(b) = dmabuf_core::dma_buf::list_buffers()
        .into_iter()
        .find(|b| b.ino() == ino)
    else {
        return "the buffer is already released".into();
    };
    let a: Vec<String> = b
        .attachments()
        .iter()
        .map(|a| {
            format!(
                "{} (attachment {}, {} mapping(s), pins {})",
                a.dev(),
                a.id(),
                a.map_count(),
                a.pin_count()
            )
        })
        .collect();
    if a.is_empty() {
        "no attachment left (waiting for the last unmap's completion)".into()
    } else {
        format!("attachments {}", a.join(", "))
    }
}

fn watchdog(sh: &Shared, revoke_bound: Duration, hung_bound: Duration) {
    for ((episode, ino), r) in sh.slow_revokes(revoke_bound.as_nanos() as u64) {
        let tasks: Vec<String> = sh
            .tasks_of(episode)
            .iter()
            .map(|t| {
                format!(
                    "{} in {} for {} ms",
                    t.thread,
                    t.step,
                    now_ns().saturating_sub(t.since_ns) / 1_000_000
                )
            })
            .collect();
        sh.finding_at(
            FindingKind::SlowRevoke,
            Some(episode),
            Some("vfio"),
            format!(
                "revoke of dma-buf ino {ino} on {} running for more than {} ms; waiting for {}; threads: {}",
                r.exporter,
                revoke_bound.as_millis(),
                describe_waiters(ino),
                tasks.join("; ")
            ),
        );
    }
    for (t, others) in sh.hung_tasks(hung_bound.as_nanos() as u64) {
        let o: Vec<String> = others
            .iter()
            .map(|x| {
                format!(
                    "{} in {} for {} ms",
                    x.thread,
                    x.step,
                    now_ns().saturating_sub(x.since_ns) / 1_000_000
                )
            })
            .collect();
        sh.finding(
            FindingKind::HungTask,
            Some(t.episode),
            format!(
                "task {} blocked in {} for more than {} s; the episode's other threads: {}",
                t.thread,
                t.step,
                hung_bound.as_secs(),
                if o.is_empty() {
                    "none".into()
                } else {
                    o.join("; ")
                }
            ),
        );
    }
}

fn drain_lockdep(sh: &Shared) {
    for r in lockdep::take_reports() {
        sh.finding(FindingKind::Lockdep, None, r.to_string());
    }
}

/// Runs the soak. `stop` is polled every 100 ms (Ctrl-C). Returns `Err`
/// on a configuration error (bad usage), the summary otherwise.
pub fn run(cfg: &SoakConfig, stop: &(dyn Fn() -> bool + Sync)) -> Result<Summary, String> {
    let specs = cfg.validate()?;
    let sh = Arc::new(Shared::new());
    sh.revoke_bound_ns
        .store(cfg.revoke_bound.as_nanos() as u64, Ordering::Relaxed);
    let prev_mode = lockdep::mode();
    lockdep::set_mode(lockdep::Mode::Collect);
    drop(lockdep::take_reports());
    let prev_hook = dmabuf_core::fault::set_hook(Some(Arc::new(crate::shared::alloc_hook)));
    let injected0 = injected_failures();
    // A stub fence may be created once and kept: make it exist before the
    // census.
    drop(dmabuf_core::Fence::stub());
    let census0 = Census::take();
    let t0 = now_ns();
    let deadline = t0.saturating_add(cfg.duration.as_nanos() as u64);
    let warmup_ns = (cfg.duration.as_nanos() as u64 / 5)
        .max(10_000_000_000)
        .min(cfg.duration.as_nanos() as u64 / 2);
    let next = Arc::new(Mutex::new(0u64));
    let specs = Arc::new(specs);
    let plan_cfg = Arc::new(cfg.plan.clone());
    let mut workers = Vec::new();
    let n_workers = cfg.workers;
    for w in 0..n_workers {
        let (sh, specs, plan_cfg, next) =
            (sh.clone(), specs.clone(), plan_cfg.clone(), next.clone());
        let (seed, only) = (cfg.seed, cfg.only_episode);
        workers.push(thread::spawn_named(format!("soak-w{w}"), move || {
            loop {
                if sh.stopping.load(Ordering::Acquire) {
                    return;
                }
                let index = match only {
                    Some(i) => i,
                    None => {
                        let mut g = next.lock();
                        let i = *g;
                        *g += 1;
                        i
                    }
                };
                let ep = plan::episode(&plan_cfg, seed, index);
                let ctx = Ctx {
                    sh: &sh,
                    plan: &plan_cfg,
                    specs: &specs,
                    seed,
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    episode::run(&ctx, &ep)
                }));
                if r.is_err() {
                    sh.finding(
                        FindingKind::Panic,
                        Some(index),
                        format!("the episode panicked ({})", ep.describe(&plan_cfg)),
                    );
                }
                // A reproduction repeats its episode until it shows a
                // finding (or the run ends).
                if only.is_some() && sh.findings_total() > 0 {
                    sh.stopping.store(true, Ordering::Release);
                    return;
                }
            }
        }));
    }
    let wd_done = Arc::new(dmabuf_core::sync::atomic::AtomicBool::new(false));
    let wd = {
        let (sh, done) = (sh.clone(), wd_done.clone());
        let (rb, hb) = (cfg.revoke_bound, cfg.hung_bound);
        thread::spawn_named("soak-watchdog".into(), move || {
            while !done.load(Ordering::Acquire) {
                watchdog(&sh, rb, hb);
                thread::sleep(Duration::from_millis(100));
            }
            watchdog(&sh, rb, hb);
        })
    };

    let mut samples: Vec<RssSample> = Vec::new();
    let mut last_sample = 0u64;
    let mut last_progress = t0;
    let mut interrupted = false;
    loop {
        let now = now_ns();
        if now.saturating_sub(last_sample) >= 1_000_000_000 || samples.is_empty() {
            if let Some(kib) = rss_kib() {
                // One sample a second, but never more than 4096 kept: a
                // week's run thins them (every other one dropped).
                samples.push(RssSample { t_ns: now, kib });
                if samples.len() > 4096 {
                    let mut k = 0;
                    samples.retain(|_| {
                        k += 1;
                        k % 2 == 0
                    });
                }
            }
            last_sample = now;
            drain_lockdep(&sh);
        }
        if cfg.progress && now.saturating_sub(last_progress) >= 5_000_000_000 {
            last_progress = now;
            let lat = sh.latency();
            let ops: u64 = sh
                .ops()
                .iter()
                .filter(|(k, _)| **k != "episode")
                .map(|(_, v)| v)
                .sum();
            let secs = (now - t0) as f64 / 1e9;
            eprintln!(
                "soak: {:.0}s/{:.0}s episodes {} ops {} ({:.0}/s) revokes {} p99 {} us rss {} KiB findings {}",
                secs,
                cfg.duration.as_secs_f64(),
                sh.op(Op::Episode),
                ops,
                ops as f64 / secs.max(1e-9),
                lat.count(),
                lat.quantile_us(0.99).unwrap_or(0),
                samples.last().map_or(0, |s| s.kib),
                sh.findings().1
            );
        }
        if stop() {
            interrupted = true;
            break;
        }
        if now >= deadline || sh.stopping.load(Ordering::Acquire) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    sh.stopping.store(true, Ordering::Release);
    if cfg.progress {
        eprintln!("soak: stopping: waiting for the episodes in progress");
    }
    // Wait for the workers, at most the hung-task bound plus a margin.
    let give_up =
        now_ns().saturating_add((cfg.hung_bound + Duration::from_secs(5)).as_nanos() as u64);
    let mut workers_hung = 0;
    let mut joined = Vec::new();
    for h in workers {
        while !h.is_finished() && now_ns() < give_up {
            thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() {
            if h.join().is_err() {
                sh.finding(FindingKind::Panic, None, "a worker thread panicked".into());
            }
            joined.push(());
        } else {
            workers_hung += 1;
        }
    }
    wd_done.store(true, Ordering::Release);
    let _ = wd.join();
    let elapsed = Duration::from_nanos(now_ns().saturating_sub(t0));
    if let Some(kib) = rss_kib() {
        samples.push(RssSample {
            t_ns: now_ns(),
            kib,
        });
    }
    drain_lockdep(&sh);
    if workers_hung == 0 {
        let end = Census::take();
        let leaks = census0.leaks_since(&end);
        if !leaks.is_empty() {
            sh.finding(FindingKind::Leak, None, leaks.join("; "));
        }
    } else {
        sh.finding(
            FindingKind::HungTask,
            None,
            format!("{workers_hung} worker(s) still inside an episode when the run ended"),
        );
    }
    let (rss, post_span) = analyse_rss(&samples, warmup_ns);
    if !interrupted && let Some(msg) = rss_verdict(&rss, post_span) {
        sh.finding(FindingKind::RssGrowth, None, msg);
    }
    dmabuf_core::fault::set_hook(prev_hook);
    lockdep::set_mode(prev_mode);
    sh.add(Op::AllocFail, injected_failures().saturating_sub(injected0));
    let lat = sh.latency();
    let revoke_latency_us = lat
        .quantile_us(0.5)
        .and_then(|p50| Some((p50, lat.quantile_us(0.99)?, lat.max_ns().div_ceil(1000))));
    let (findings, findings_total) = sh.findings();
    Ok(Summary {
        seed: cfg.seed,
        duration: cfg.duration,
        elapsed,
        interrupted,
        workers: n_workers,
        exporters: cfg
            .plan
            .exporters
            .iter()
            .map(|e| exporter_name(*e).to_string())
            .collect(),
        importers: cfg.plan.importers.clone(),
        ops: sh.ops(),
        events: sh.events(),
        refusals: sh.refusals(),
        errors: sh.errors(),
        revoke_latency_us,
        rss,
        findings,
        finding_counts: sh.finding_counts(),
        findings_total,
        workers_hung,
        rerun: rerun_command(cfg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in [
            "",
            "0",
            "0s",
            "-1m",
            "10x",
            "m",
            "1.5m",
            "8d",
            "200h",
            "99999999999999999999999h",
            "1h 2m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn args() -> SoakArgs {
        SoakArgs {
            duration: "1m".into(),
            seed: 3,
            workers: 2,
            max_buffers: 4,
            max_imports: 6,
            revoke_bound_ms: 2000,
            hung_bound_ms: 10_000,
            ..SoakArgs::default()
        }
    }

    #[test]
    fn command_line_words_become_a_checked_configuration() {
        let c = args().config().unwrap();
        assert_eq!(c.duration, Duration::from_secs(60));
        assert_eq!(c.plan.exporters.len(), 3);
        assert_eq!(c.plan.importers.len(), DEFAULT_IMPORTERS.len());
        let mut a = args();
        a.exporters = vec!["vfio".into(), "vfio".into()];
        a.importers = vec!["lying".into()];
        let c = a.config().unwrap();
        assert_eq!(c.plan.exporters, vec![ExporterKind::Vfio]);
        assert_eq!(c.plan.importers, vec!["lying".to_string()]);
        let mut a = args();
        a.exporters = vec!["nvme".into()];
        assert!(a.config().unwrap_err().contains("nvme"));
        let mut a = args();
        a.duration = "0s".into();
        assert!(a.config().is_err());
        let mut a = args();
        a.hung_bound_ms = 0;
        assert!(a.config().unwrap_err().contains("--hung-bound-ms"));
        let mut a = args();
        a.workers = 17;
        assert!(a.config().is_err());
    }

    #[test]
    fn configurations_are_validated() {
        let ok = SoakConfig::default();
        assert_eq!(ok.validate().unwrap().len(), DEFAULT_IMPORTERS.len());
        let mut c = ok.clone();
        c.workers = 0;
        assert!(c.validate().unwrap_err().contains("--workers"));
        let mut c = ok.clone();
        c.plan.max_imports = MAX_IMPORTS + 1;
        assert!(c.validate().unwrap_err().contains("--max-imports"));
        let mut c = ok.clone();
        c.plan.max_buffers = 0;
        assert!(c.validate().unwrap_err().contains("--max-buffers"));
        let mut c = ok.clone();
        c.plan.importers = vec!["gpu".into(), "nvme".into()];
        assert!(c.validate().unwrap_err().contains("nvme"));
        let mut c = ok.clone();
        c.plan.exporters.clear();
        assert!(c.validate().is_err());
        let mut c = ok;
        c.revoke_bound = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("--revoke-bound-ms"));
    }

    fn short(exporters: Vec<ExporterKind>, importers: &[&str]) -> SoakConfig {
        let mut c = SoakConfig {
            duration: Duration::from_millis(1500),
            seed: 11,
            workers: 1,
            progress: false,
            ..SoakConfig::default()
        };
        c.plan.exporters = exporters;
        c.plan.importers = importers.iter().map(|s| s.to_string()).collect();
        c.plan.max_imports = 3;
        c
    }

    #[test]
    fn a_short_soak_of_honest_importers_on_vfio_finds_nothing_and_does_work() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let s = run(&short(vec![ExporterKind::Vfio], DEFAULT_IMPORTERS), &|| {
            false
        })
        .unwrap();
        assert_eq!(s.findings_total, 0, "{}", s.text());
        assert!(!s.interrupted);
        assert_eq!(s.exit_code(), 0);
        assert!(
            s.ops["episode"] > 0 && s.ops["setup"] > 0 && s.ops["job-ok"] > 0,
            "{:?}",
            s.ops
        );
        assert!(s.ops["revoke"] > 0 && s.revoke_latency_us.is_some());
        let j = s.json();
        assert_eq!(j["verdict"], "pass");
        assert_eq!(j["findings-total"], 0);
    }

    #[test]
    fn the_watchdog_reports_a_stuck_task_and_a_running_revoke_with_what_they_wait_for() {
        let sh = Shared::new();
        let t = sh.task(5, "gpu0".into());
        t.step("dma_fence_wait(job)");
        let _other = sh.task(5, "revoker".into());
        sh.revoke_began(5, 77, "vfio0".into(), now_ns());
        watchdog(&sh, Duration::from_secs(3600), Duration::from_secs(3600));
        assert_eq!(sh.findings().1, 0, "nothing is late yet");
        watchdog(&sh, Duration::from_nanos(1), Duration::from_nanos(1));
        let (f, n) = sh.findings();
        assert_eq!(n, 3, "{f:?}");
        let revoke = f
            .iter()
            .find(|x| x.kind == FindingKind::SlowRevoke)
            .unwrap();
        assert!(
            revoke.detail.contains("ino 77 on vfio0"),
            "{}",
            revoke.detail
        );
        assert!(
            revoke.detail.contains("gpu0 in dma_fence_wait(job)"),
            "{}",
            revoke.detail
        );
        let hung: Vec<&Finding> = f
            .iter()
            .filter(|x| x.kind == FindingKind::HungTask)
            .collect();
        assert_eq!(hung.len(), 2);
        assert!(hung.iter().all(|h| h.episode == Some(5)));
        assert!(
            hung.iter().any(|h| h
                .detail
                .starts_with("task gpu0 blocked in dma_fence_wait(job)")
                && h.detail.contains("revoker in start")),
            "{hung:?}"
        );
        // Reported once.
        watchdog(&sh, Duration::from_nanos(1), Duration::from_nanos(1));
        assert_eq!(sh.findings().1, 3);
    }

    #[test]
    fn a_lockdep_report_on_any_thread_becomes_a_finding() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let prev = lockdep::mode();
        lockdep::set_mode(lockdep::Mode::Collect);
        drop(lockdep::take_reports());
        let sh = Shared::new();
        std::thread::spawn(|| {
            lockdep::report(
                lockdep::ReportKind::WaitInSignallingSection,
                "planted: dma_fence_wait inside dma_fence_begin_signalling".into(),
            )
        })
        .join()
        .unwrap();
        drain_lockdep(&sh);
        lockdep::set_mode(prev);
        let (f, n) = sh.findings();
        assert_eq!(n, 1);
        assert_eq!(f[0].kind, FindingKind::Lockdep);
        assert!(f[0].detail.contains("planted"), "{}", f[0].detail);
    }

    #[test]
    fn json_keys_are_kebab_case() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = short(
            vec![ExporterKind::Vfio, ExporterKind::SystemHeap],
            DEFAULT_IMPORTERS,
        );
        c.duration = Duration::from_millis(800);
        let s = run(&c, &|| false).unwrap();
        fn walk(v: &Value, bad: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        if !k.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '/'
                        }) {
                            bad.push(k.clone());
                        }
                        walk(x, bad);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, bad)),
                _ => {}
            }
        }
        let j = s.json();
        let mut bad = Vec::new();
        walk(&j, &mut bad);
        assert!(bad.is_empty(), "{bad:?}");
        assert!(!j["refusals"].as_object().unwrap().is_empty(), "{j}");
        for k in [
            "ops",
            "ops-per-sec",
            "rss",
            "revoke-latency-us",
            "findings-total",
            "verdict",
        ] {
            assert!(!j[k].is_null(), "{k} missing in {j}");
        }
    }

    #[test]
    fn one_episode_repeats_until_it_shows_its_finding() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Honest: the episode runs again and again for the whole duration.
        let mut c = short(vec![ExporterKind::Vfio], &["rdma-odp"]);
        c.only_episode = Some(4);
        c.duration = Duration::from_millis(600);
        let s = run(&c, &|| false).unwrap();
        assert_eq!(s.findings_total, 0, "{}", s.text());
        assert!(s.ops["episode"] > 1, "{:?}", s.ops);
        // Lying, with a tight revoke bound, on an episode with an event that
        // revokes: the first finding ends the run long before its duration.
        let mut c = short(vec![ExporterKind::Vfio], &["lying"]);
        c.revoke_bound = Duration::from_micros(500);
        c.plan.faults = false;
        c.duration = Duration::from_secs(120);
        let idx = (0..1000)
            .find(|i| {
                let e = plan::episode(&c.plan, c.seed, *i);
                e.event != plan::Event::None && e.gated
            })
            .unwrap();
        c.only_episode = Some(idx);
        let t = std::time::Instant::now();
        let s = run(&c, &|| false).unwrap();
        assert!(s.findings_total > 0, "{}", s.text());
        assert!(
            s.findings
                .iter()
                .all(|f| f.episode.is_none_or(|e| e == idx))
        );
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
        assert!(!s.interrupted);
    }

    #[test]
    fn the_lying_importer_is_caught_as_a_slow_revoke() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // It declares invalidate_mappings and ignores it: a v6-final revoke
        // then waits until userspace deregisters (a few ms here).
        let mut c = short(vec![ExporterKind::Vfio], &["lying"]);
        c.revoke_bound = Duration::from_micros(500);
        c.plan.faults = false;
        let s = run(&c, &|| false).unwrap();
        assert!(
            s.findings.iter().any(|f| f.kind == FindingKind::SlowRevoke),
            "{}",
            s.text()
        );
        assert_eq!(s.exit_code(), 1);
        assert_eq!(s.json()["verdict"], "fail");
    }

    #[test]
    fn a_stop_request_ends_the_run_with_a_partial_summary() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = short(vec![ExporterKind::SystemHeap], &["gpu"]);
        c.duration = Duration::from_secs(3600);
        let t = std::time::Instant::now();
        let s = run(&c, &|| t.elapsed() > Duration::from_millis(300)).unwrap();
        assert!(s.interrupted);
        assert_eq!(s.exit_code(), 130);
        assert!(t.elapsed() < Duration::from_secs(60));
        assert_eq!(s.json()["interrupted"], true);
    }

    fn samples(kib: impl Fn(u64) -> u64, secs: u64) -> Vec<RssSample> {
        (0..=secs)
            .map(|s| RssSample {
                t_ns: s * 1_000_000_000,
                kib: kib(s),
            })
            .collect()
    }

    #[test]
    fn rss_growth_after_warmup_is_caught_and_a_plateau_is_not() {
        // Grows for 10 s, then flat with noise: no finding.
        let flat = samples(|s| 50_000 + s.min(10) * 1000 + (s % 3) * 50, 120);
        let (r, span) = analyse_rss(&flat, 20_000_000_000);
        assert!(r.growth_kib_per_min.unwrap().abs() < 200.0, "{r:?}");
        assert_eq!(rss_verdict(&r, span), None);
        assert_eq!(r.peak_kib, 60_100);
        // 200 KiB every second, forever: 12 MiB a minute.
        let leak = samples(|s| 50_000 + s * 200, 120);
        let (r, span) = analyse_rss(&leak, 20_000_000_000);
        let g = r.growth_kib_per_min.unwrap();
        assert!((11_900.0..12_100.0).contains(&g), "{g}");
        assert!(rss_verdict(&r, span).is_some());
        // Too short to judge.
        let (r, span) = analyse_rss(&samples(|s| s * 10_000, 25), 10_000_000_000);
        assert_eq!(rss_verdict(&r, span), None);
    }
}
