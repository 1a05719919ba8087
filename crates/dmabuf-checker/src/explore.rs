//! Exploration: run a scenario's world under the controlled scheduler, many
//! schedules, judge every property on every run, shrink the first
//! counterexample of each violated property, and replay tokens.
//!
//! # What a verdict means
//!
//! | verdict | meaning |
//! |---|---|
//! | `holds` (random / pct) | no violation in the stated number of explored schedules; not a proof |
//! | `holds` (dfs / dpor, exhaustive) | the search finished without hitting any bound (decisions, steps, executions): every schedule (dfs) or every Mazurkiewicz trace class (dpor) was run |
//! | `holds` (dfs / dpor, not exhaustive) | the search stopped at the bound named in `bounds_hit` |
//! | `violated` | a schedule was found, with a replay token that reproduces it exactly |
//! | `proved` (with a proof attempt, [`ProofOptions`]) | it held, and the DPOR searches of the scenario's own configuration finished in every mode it is judged in ([`PropertyResult::status`]) |
//! | `proved-reduced` | the same for a smaller configuration only (fewer DMA jobs, fewer idle read-ahead passes), named in the proof: a proof of that configuration, not of the scenario |
//!
//! `l-bounded` is judged on dedicated runs in which the `userspace` group is
//! stalled from the moment revoke begins; every other property on normal runs.
//!
//! # One check split over several machines
//!
//! [`check_shard`] runs part `K` of `N` of a check: a DFS or DPOR search
//! explores only its shard's branches of the first decision
//! ([`SearchShard`]), a random one only the schedules `i` with
//! `i % N == K` (schedule `i` of a seed is the same in every process). PCT
//! cannot be split: its step estimate grows with the executions before, so
//! schedule `i` depends on all earlier ones. The parts' counts add up, a
//! part's search is exhaustive when it finished without hitting a bound
//! (a part that owns no branch is, with no run), and counterexample tokens
//! are schedules of the whole scenario (shrinking searches the whole
//! scenario, not the part), so they replay without the split.

use crate::property::Property;
use crate::scenario::Scenario;
use crate::token::{ReplayToken, RunMode, StrategyKind};
use dmabuf_core::lockdep;
use dmabuf_core::sync::sched::strategy::SearchShard;
use dmabuf_core::sync::sched::{
    self, Bound, Dfs, Dpor, Outcome, Pct, Random, Replay, RunConfig, RunReport, Schedule, Strategy,
};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_scenario::builtin::Library;
use dmabuf_scenario::file::Answer;
use dmabuf_scenario::world::{Observation, StallMode, WorldProbe, WorldSpec, run_world_with};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Steps after which a run counts as a livelock.
pub const MAX_STEPS: u64 = 200_000;

/// One controlled execution of a world.
#[derive(Debug)]
pub struct RunOutcome {
    /// The scheduler's report.
    pub report: RunReport,
    /// What the world observed (from the probe when the run never returned
    /// from `run_world`: a deadlock, or a stall before it returned).
    pub obs: Option<Observation>,
    /// Normal or stalled.
    pub mode: RunMode,
    /// Validator reports filed during the run.
    pub lockdep: Vec<String>,
}

fn stall_mode(m: RunMode) -> StallMode {
    match m {
        RunMode::Normal => StallMode::Normal,
        RunMode::Stalled => StallMode::StallUserspaceAtRevoke,
    }
}

/// Runs `body` once under `strategy` (whose `next_execution` the caller has
/// already called). `body` runs as the execution's root task and returns
/// what it observed; if it never returns (a deadlock, a stall), `fallback`
/// supplies the observation afterwards.
pub fn run_body<F, G>(
    mode: RunMode,
    strategy: &mut dyn Strategy,
    body: F,
    fallback: G,
) -> RunOutcome
where
    F: FnOnce() -> Observation + Send + 'static,
    G: FnOnce() -> Option<Observation>,
{
    let slot: Arc<Mutex<Option<Observation>>> = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    let cfg = RunConfig {
        max_steps: MAX_STEPS,
        ..RunConfig::default()
    };
    let report = sched::run(strategy, &cfg, move || {
        let obs = body();
        *s2.lock() = Some(obs);
    });
    // The execution's own reports: other executions running at the same
    // time (parallel tests) file theirs in their own reports.
    let lockdep = report.lockdep.iter().map(|r| r.to_string()).collect();
    let obs = slot.lock().take().or_else(fallback);
    RunOutcome {
        report,
        obs,
        mode,
        lockdep,
    }
}

/// Runs `spec` once under `strategy` (whose `next_execution` the caller has
/// already called).
pub fn run_controlled(spec: &WorldSpec, mode: RunMode, strategy: &mut dyn Strategy) -> RunOutcome {
    let probe = WorldProbe::new();
    let (p2, spec2) = (probe.clone(), spec.clone());
    // A run that never finished building its observation (a deadlock, a
    // stall before run_world returned) still has what the probe saw.
    run_body(
        mode,
        strategy,
        move || run_world_with(&spec2, stall_mode(mode), &p2),
        || Some(probe.snapshot()),
    )
}

/// Why one run violates one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The hazard record, when a hazard is the evidence.
    pub hazard: Option<String>,
    /// What happened.
    pub detail: String,
}

/// The scheduler's outcome in words.
pub fn outcome_detail(o: &Outcome) -> String {
    match o {
        Outcome::Completed => "completed".into(),
        Outcome::CompletedWithStalled { stalled } => {
            format!("completed with {} stalled task(s)", stalled.len())
        }
        Outcome::Deadlock { tasks } => {
            // No addresses: the same schedule must read the same in every
            // process (`crate::tracefmt` names the objects from the trace).
            let t: Vec<String> = tasks.iter().map(crate::tracefmt::task_words).collect();
            format!("deadlock: {}", t.join("; "))
        }
        Outcome::StepLimit => format!("no progress within {MAX_STEPS} scheduling steps"),
    }
}

/// Whether `p` is judged on runs of `mode`. Safety properties must hold on
/// every schedule, a stalled userspace included; `l-bounded` is about
/// stalled runs only; a stalled run never finishes, so it says nothing
/// about deadlocks or leaks.
pub fn judged_in(p: Property, mode: RunMode) -> bool {
    p.check().judged_in(mode)
}

/// Judges one run against one property. `None` means the run does not
/// contradict it (or the property is not judged on this kind of run).
pub fn judge(run: &RunOutcome, p: Property) -> Option<Violation> {
    if !judged_in(p, run.mode) {
        return None;
    }
    p.check().judge(run)
}

/// Errors of a run that are not property verdicts: panics, driver errors,
/// replay divergence, leaked threads.
pub fn run_errors(run: &RunOutcome) -> Vec<String> {
    let mut e: Vec<String> = run
        .report
        .panics
        .iter()
        .map(|p| format!("task {} panicked: {}", p.task, p.message))
        .collect();
    if let Some(o) = &run.obs {
        e.extend(o.errors.iter().cloned());
    }
    if let Some(d) = &run.report.divergence {
        e.push(format!("schedule divergence: {d}"));
    }
    if run.report.leaked_threads > 0 {
        e.push(format!(
            "{} thread(s) did not unwind",
            run.report.leaked_threads
        ));
    }
    e
}

/// Exploration options.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Strategy.
    pub strategy: StrategyKind,
    /// Normal-mode schedules (for DFS: the most executions to run).
    pub schedules: u64,
    /// Stalled-mode schedules for `l-bounded` (0: skip).
    pub stalled_schedules: u64,
    /// Seed.
    pub seed: u64,
    /// DFS decision bound.
    pub dfs_bound: usize,
    /// Properties to judge.
    pub properties: Vec<Property>,
    /// Shrink counterexamples.
    pub shrink: bool,
    /// Also try to prove every property by an exhaustive DPOR search of
    /// the scenario's proof configuration (see [`ProofOptions`]).
    pub proof: Option<ProofOptions>,
    /// Stall userspace during a cycle's re-map too, in the stalled runs of
    /// every world with a cycle ([`WorldSpec::stall_in_remap`]; the
    /// scenario is renamed `<name>.stall-remap`, so its tokens replay).
    pub stall_in_remap: bool,
    /// Run the normal and the stalled-userspace searches on two threads
    /// at once (the report is the same as one after the other). Off where
    /// the caller already runs checks side by side (the matrix's workers).
    pub parallel_modes: bool,
}

/// A proof attempt: an exhaustive DPOR search of a smaller configuration
/// of the scenario, within a budget.
///
/// The proof configuration is the scenario with at most `jobs` DMA jobs per
/// importer. The default, [`DEFAULT_PROOF_JOBS`], is a matrix cell's own
/// workload, so a proved cell is proved for exactly the configuration the
/// table shows; fewer jobs (one job in flight is what a revoke races
/// against) prove a smaller configuration, named `<cell>.jobsN`.
/// Everything else (protocol, importer, trigger, read-ahead, timers) is the
/// scenario's own. A property is *proved* for that
/// configuration when the search finished in every mode the property is
/// judged in without hitting any bound; otherwise the verdict stays a
/// sampled one, and says which bound the proof attempt hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProofOptions {
    /// Most executions of each mode's search (normal, and stalled
    /// userspace: [`ProofOptions::stalled_budget`]).
    pub budget: u64,
    /// Most DMA jobs per importer in the proof configuration.
    pub jobs: usize,
    /// Executions per mode of a second attempt, on the scenario's smallest
    /// configuration ([`smallest_proof_scenario`]: one job, one idle
    /// read-ahead pass), for the properties the first attempt left
    /// sampled, in a world of one importer; 0: no second attempt. A
    /// property it proves is `proved-reduced`, not `proved`
    /// ([`PropertyResult::status`]).
    pub reduced_budget: u64,
    /// The same for a world of several importers (a mix), whose smallest
    /// configuration also has the importers take turns
    /// (`WorldSpec::importers_take_turns`: their system-call stages run one
    /// at a time). A mix's own searches are bound by the orders of its
    /// importers' critical sections on the reservation lock: the normal
    /// search of `matrix.v6-final.iommufd+gpu` with one job and one idle
    /// pass does not finish in 100,000 executions. Taking turns, that
    /// world's searches finish in 1,401 stalled-userspace and 1,053 normal
    /// executions. A violation found there is not reported: while one
    /// importer waits for its turn the virtual clock may move where the
    /// unrestricted world could not (it moves only when no task can run),
    /// so it need not be one of the cell. A search it does not finish is
    /// reported instead of the cell's own (its bound and its estimated
    /// size: how far the world within reach is from a proof).
    pub mix_budget: u64,
}

impl Default for ProofOptions {
    fn default() -> Self {
        Self {
            budget: DEFAULT_PROOF_BUDGET,
            jobs: DEFAULT_PROOF_JOBS,
            reduced_budget: DEFAULT_REDUCED_BUDGET,
            mix_budget: DEFAULT_MIX_BUDGET,
        }
    }
}

impl ProofOptions {
    /// Executions of the stalled-userspace search: the same budget. (Not a
    /// quarter, as for sampling: with three places to stall userspace, the
    /// stalled search of a cell is often the larger one, e.g. 257
    /// executions against 241 for `matrix.v6-final.gpu`.)
    pub fn stalled_budget(&self) -> u64 {
        self.budget.max(1)
    }
}

/// DMA jobs per importer in a proof configuration by default: a matrix
/// cell's own workload (`WorldSpec::vfio`), so the proof is of the cell.
pub const DEFAULT_PROOF_JOBS: usize = 2;

/// Executions a matrix cell's proof attempt may use by default
/// (per mode: normal and stalled userspace). The largest search that
/// finishes in the default matrix needs 1,154 normal and 588
/// stalled-userspace executions (the `gpu-lazy` cells of v1 to v3); the
/// cells no budget within reach finishes (the mixes, the v4 and v5 GPU
/// cells) spend it all. With the second attempts
/// ([`DEFAULT_REDUCED_BUDGET`], [`DEFAULT_MIX_BUDGET`]) the default matrix
/// took 2 min 18 s on two cores.
pub const DEFAULT_PROOF_BUDGET: u64 = 2_000;

/// Executions per mode of the second attempt on the smallest
/// configuration by default ([`ProofOptions::reduced_budget`]). The
/// largest such search in the default matrix needs 1,949
/// stalled-userspace and 1,909 normal executions
/// (`matrix.v4-bookkeep-wait.gpu-enodev-revalidate.idle1.jobs1`, and the
/// other GPU cells of v4 and v5 about as many); every one of them
/// finishes, so the budget is a bound, not a cost.
pub const DEFAULT_REDUCED_BUDGET: u64 = 8_000;

/// Executions per mode of a mix's second attempt by default
/// ([`ProofOptions::mix_budget`]). The largest such search that finishes
/// in the default matrix needs 3,849 stalled-userspace executions (the
/// `gpu+gpu-lazy` mixes from v6 on) and 1,620 normal ones
/// (`v1-core-flag × gpu+rdma-odp`). The nine mixes it leaves sampled (the
/// GPU mixes of v4 and v5, `gpu+gpu-lazy` under v1 to v3) need ten times
/// more: `matrix.v1-core-flag.gpu+gpu-lazy.idle1.jobs1.turns` 124,782
/// stalled-userspace executions, and
/// `matrix.v4-bookkeep-wait.iommufd+gpu.idle1.jobs1.turns` 149,109 and
/// 136,089 normal.
pub const DEFAULT_MIX_BUDGET: u64 = 15_000;

/// What the proof attempt found for one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofResult {
    /// The configuration searched: the scenario name (with `.idleN` and
    /// `.jobsN` when the workload was reduced).
    pub config: String,
    /// The configuration is smaller than the scenario judged: a proof is of
    /// that configuration only.
    pub reduced: bool,
    /// The search finished without hitting any bound in every mode the
    /// property is judged in.
    pub exhaustive: bool,
    /// Executions on which the property was judged.
    pub executions: u64,
    /// Those that violated it.
    pub violations: u64,
    /// The bounds the attempt hit (`executions` when over budget).
    pub bounds_hit: Vec<Bound>,
    /// Per mode searched, the executions its complete search takes (exact
    /// when finished, estimated otherwise; see
    /// [`PropertyResult::estimates`]). A mode the attempt skipped (the
    /// normal one, when the stalled search did not finish) has none.
    pub estimates: Vec<(RunMode, u64)>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::Pct(3),
            schedules: 100,
            stalled_schedules: 20,
            seed: 1,
            dfs_bound: 12,
            properties: Property::ALL.to_vec(),
            shrink: true,
            proof: None,
            stall_in_remap: false,
            parallel_modes: false,
        }
    }
}

/// A counterexample: one schedule that violates a property.
#[derive(Clone, Debug)]
pub struct Counterexample {
    /// Why.
    pub violation: Violation,
    /// Replays it.
    pub token: ReplayToken,
    /// Trace events of the (shrunk) run.
    pub trace_len: usize,
    /// Scheduling decisions of the (shrunk) run.
    pub decisions: u64,
}

/// The verdict on one property.
#[derive(Clone, Debug)]
pub struct PropertyResult {
    /// Which.
    pub property: Property,
    /// Runs on which it was judged.
    pub schedules: u64,
    /// Runs that violated it.
    pub violations: u64,
    /// Strategy description.
    pub strategy: String,
    /// True only for a systematic search (dfs, dpor) that finished without
    /// hitting any bound, in every mode the property is judged in.
    pub exhaustive: bool,
    /// The bounds that cut the search (`depth`, `steps`, `executions`,
    /// `nondeterminism`); empty for an exhaustive search and for sampling
    /// strategies.
    pub bounds_hit: Vec<Bound>,
    /// DPOR: executions whose useful part was cut by sleep sets.
    pub sleep_blocked: u64,
    /// Systematic searches: the most decisions an execution made.
    pub max_depth: usize,
    /// A whole (unsharded) DPOR search: per mode the property is judged in,
    /// the executions that mode's complete search takes: exact when it
    /// finished, estimated from its progress when it stopped at its budget
    /// ([`Dpor::estimate`]: usually low early in a search).
    pub estimates: Vec<(RunMode, u64)>,
    /// The first violation found, shrunk.
    pub counterexample: Option<Counterexample>,
    /// The proof attempt, when one was made ([`CheckOptions::proof`]).
    pub proof: Option<ProofResult>,
}

impl PropertyResult {
    /// Whether it held on every judged run (the proof attempt's included).
    pub fn holds(&self) -> bool {
        self.violations == 0 && self.proof.as_ref().is_none_or(|p| p.violations == 0)
    }

    /// Whether the verdict is a proof for the scenario judged: it holds,
    /// and either this search was exhaustive or the proof attempt was, on
    /// the scenario's own configuration.
    pub fn proved(&self) -> bool {
        self.holds()
            && (self.exhaustive
                || self
                    .proof
                    .as_ref()
                    .is_some_and(|p| p.exhaustive && !p.reduced))
    }

    /// Whether it holds and is proved only for a smaller configuration of
    /// the scenario ([`ProofResult::config`]).
    pub fn proved_reduced(&self) -> bool {
        self.holds()
            && !self.proved()
            && self
                .proof
                .as_ref()
                .is_some_and(|p| p.exhaustive && p.reduced)
    }

    /// `proved`, `proved-reduced` (for the smaller configuration the proof
    /// names), `sampled` or `violated`.
    pub fn status(&self) -> &'static str {
        if !self.holds() {
            "violated"
        } else if self.proved() {
            "proved"
        } else if self.proved_reduced() {
            "proved-reduced"
        } else {
            "sampled"
        }
    }

    /// herd7's answer about the violation: `Never` (no judged run violated
    /// it), `Always` (every judged run did) or `Sometimes`.
    pub fn answer(&self) -> Answer {
        let (pv, pn) = self
            .proof
            .as_ref()
            .map_or((0, 0), |p| (p.violations, p.executions));
        if self.violations == 0 && pv == 0 {
            Answer::Never
        } else if self.violations >= self.schedules && pv >= pn {
            Answer::Always
        } else {
            Answer::Sometimes
        }
    }
}

/// A file's expectation and whether the run met it.
#[derive(Clone, Debug)]
pub struct ExpectationResult {
    /// The property.
    pub property: Property,
    /// What the file expected.
    pub expected: Answer,
    /// What the exploration found.
    pub found: Answer,
    /// Where the file said it.
    pub at: String,
    /// Whether the answer meets the expectation. `Sometimes` is met by an
    /// `Always` as well (a violation was found); `Never` and `Always` need
    /// exactly that answer.
    pub met: bool,
}

/// Whether the answer `found` meets the expectation `expected`
/// ([`ExpectationResult::met`]).
pub fn meets(expected: Answer, found: Answer) -> bool {
    match expected {
        Answer::Sometimes => found != Answer::Never,
        a => found == a,
    }
}

/// Compares a report with a scenario's expectations. Unknown property
/// names are errors naming where they were written.
pub fn expectations(
    scenario: &Scenario,
    report: &CheckReport,
) -> Result<Vec<ExpectationResult>, String> {
    let mut out = Vec::new();
    for e in &scenario.expect {
        let p: Property = e
            .property
            .parse()
            .map_err(|u: crate::property::UnknownProperty| format!("{}: {u}", e.at))?;
        let Some(r) = report.properties.iter().find(|r| r.property == p) else {
            continue;
        };
        let found = r.answer();
        let met = meets(e.answer, found);
        out.push(ExpectationResult {
            property: p,
            expected: e.answer,
            found,
            at: e.at.clone(),
            met,
        });
    }
    Ok(out)
}

/// The result of checking one scenario.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Scenario name.
    pub scenario: String,
    /// Importers the exporter refused, as `importer: stage errno`.
    pub refusals: Vec<String>,
    /// Per property.
    pub properties: Vec<PropertyResult>,
    /// Runs made (all modes).
    pub runs: u64,
    /// Non-verdict errors (first few).
    pub errors: Vec<String>,
    /// Wall time.
    pub elapsed_s: f64,
    /// A part of a split check ([`check_shard`]): what it held, per mode
    /// searched; empty for a whole check.
    pub split: Vec<SplitPart>,
}

/// What one part of a split check held in one mode ([`check_shard`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitPart {
    /// The mode searched.
    pub mode: RunMode,
    /// DFS, DPOR: the choices at the split node (the first decision; 1
    /// for a program without one). `None` for random sampling, which
    /// splits the schedules instead.
    pub choices: Option<usize>,
    /// Of those choices (or of the mode's schedules), how many are this
    /// part's.
    pub owned: u64,
    /// DPOR: executions run only to learn the first segment of a choice
    /// another part explores (not counted as runs, not judged).
    pub probes: u64,
    /// The bounds this part's search of the mode hit (as in
    /// [`PropertyResult::bounds_hit`], for every property judged in it).
    pub bounds_hit: Vec<Bound>,
}

impl CheckReport {
    /// Whether every judged property held and no run erred.
    pub fn all_hold(&self) -> bool {
        self.properties.iter().all(PropertyResult::holds) && self.errors.is_empty()
    }
}

/// What one mode's search did.
#[derive(Clone, Debug, Default)]
struct Explored {
    exhaustive: bool,
    bounds_hit: Vec<Bound>,
    sleep_blocked: u64,
    max_depth: usize,
    /// A whole DPOR search: the executions it takes, exact when it finished
    /// and estimated from its progress when it stopped at its budget
    /// ([`Dpor::estimate`]).
    estimate: Option<u64>,
    /// A part of a split search: what it held.
    split: Option<SplitPart>,
}

/// Whether a check with strategy `kind` can be split over shards
/// ([`check_shard`]); the reason when not.
pub fn splittable(kind: StrategyKind) -> Result<(), String> {
    match kind {
        StrategyKind::Pct(_) => Err(
            "a PCT check of one scenario cannot be split over shards: PCT's estimate of an \
             execution's length grows with the executions before, so schedule i depends on \
             every earlier one (use --strategy random, dfs or dpor, or shard a protocol file's \
             questions or a matrix)"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// Runs up to `n` executions of `spec` in `mode`, keeping only what the
/// judge needs (the outcome of each run is judged as it completes so the
/// reports do not pile up).
#[allow(clippy::too_many_arguments)]
fn explore_mode(
    spec: &WorldSpec,
    mode: RunMode,
    kind: StrategyKind,
    seed: u64,
    dfs_bound: usize,
    n: u64,
    shard: Option<SearchShard>,
    live: Option<&AtomicU64>,
    mut on_run: impl FnMut(&RunOutcome),
) -> Explored {
    // Systematic searches are kept concrete: their completeness is part of
    // the verdict.
    let whole = SearchShard { index: 0, count: 1 };
    let mut dfs = Dfs::new(dfs_bound).shard(shard.unwrap_or(whole));
    let mut dpor = Dpor::new(dfs_bound).shard(shard.unwrap_or(whole));
    // Random sampling is split by schedule index.
    let sampled_shard = shard.filter(|_| kind == StrategyKind::Random);
    let mut other: Box<dyn Strategy> = match kind {
        StrategyKind::Random | StrategyKind::Dfs | StrategyKind::Dpor => {
            Box::new(Random::new(seed))
        }
        StrategyKind::Pct(d) => Box::new(Pct::new(seed, d as usize, 2_000)),
    };
    // The strategy in use, borrowed anew each time (the concrete searches
    // are asked about probes between executions).
    macro_rules! strat {
        () => {
            match kind {
                StrategyKind::Dfs => &mut dfs as &mut dyn Strategy,
                StrategyKind::Dpor => &mut dpor,
                _ => other.as_mut(),
            }
        };
    }
    let mut count = 0;
    let mut index: u64 = 0;
    let mut finished = false;
    // Sampling: schedule indices up to n (some another shard's); search:
    // up to n executions of this part.
    while if sampled_shard.is_some() {
        index < n
    } else {
        count < n
    } {
        // A stop request (Ctrl-C) ends the loop after the current execution.
        if crate::progress::stop_requested() {
            break;
        }
        if !strat!().next_execution() {
            finished = true;
            break;
        }
        let i = index;
        index += 1;
        if sampled_shard.is_some_and(|s| !s.owns(i as usize)) {
            // Schedule i is another shard's: its generator was drawn
            // (that is all `next_execution` does) and is dropped unused.
            continue;
        }
        let run = run_controlled(spec, mode, strat!());
        let probe = match kind {
            StrategyKind::Dfs => dfs.is_probe(),
            StrategyKind::Dpor => dpor.is_probe(),
            _ => false,
        };
        if probe {
            continue;
        }
        count += 1;
        // A whole DPOR search: its size as estimated so far, for progress.
        if let Some(l) = live
            && kind == StrategyKind::Dpor
            && shard.is_none_or(|s| s.count == 1)
        {
            l.store(dpor.estimate().max(1), Ordering::Relaxed);
        }
        on_run(&run);
    }
    // Read before asking for a further branch (which moves the search on).
    let estimate =
        (kind == StrategyKind::Dpor && shard.is_none_or(|s| s.count == 1)).then(|| dpor.estimate());
    // At the budget: finished only if there is no further branch (asking
    // runs nothing).
    if !finished && count == n {
        finished = !strat!().next_execution();
    }
    let estimate = estimate.map(|e| if finished { count } else { e.max(count) });
    let (mut bounds_hit, sleep_blocked, max_depth) = match kind {
        StrategyKind::Dfs => (dfs.bounds_hit(), 0, dfs.max_depth()),
        StrategyKind::Dpor => {
            let st = dpor.stats();
            (dpor.bounds_hit(), st.sleep_blocked, st.max_depth)
        }
        _ => {
            return Explored {
                split: sampled_shard.map(|_| SplitPart {
                    mode,
                    choices: None,
                    owned: count,
                    probes: 0,
                    bounds_hit: Vec::new(),
                }),
                ..Explored::default()
            };
        }
    };
    if !finished {
        bounds_hit.push(Bound::Executions);
    }
    let split = shard.filter(|s| s.count > 1).map(|s| {
        let choices = match kind {
            StrategyKind::Dfs => dfs.split_choices(),
            _ => dpor.split_choices(),
        };
        SplitPart {
            mode,
            choices,
            owned: choices.map_or(0, |c| s.owned_of(c) as u64),
            probes: dpor.stats().probes,
            bounds_hit: bounds_hit.clone(),
        }
    });
    Explored {
        // A part that owns no branch finished without a run: its (empty)
        // part of the search is complete.
        exhaustive: bounds_hit.is_empty() && (count > 0 || (split.is_some() && finished)),
        bounds_hit,
        sleep_blocked,
        max_depth,
        estimate,
        split,
    }
}

/// Re-runs a schedule exactly (tracing on) and returns the run.
pub fn replay_schedule(spec: &WorldSpec, mode: RunMode, schedule: Schedule) -> RunOutcome {
    let _tracing = dmabuf_core::trace::enable_scoped();
    let mut r = Replay::new(schedule);
    r.next_execution();
    run_controlled(spec, mode, &mut r)
}

/// Shrinks a counterexample: first the workload (fewer DMA jobs), then the
/// schedule (the shortest prefix of decisions that, completed with the
/// scheduler's default choices, still violates). Returns the spec and the
/// full schedule of the shortest run found.
fn shrink(
    spec: &WorldSpec,
    mode: RunMode,
    p: Property,
    schedule: &Schedule,
    opts: &CheckOptions,
) -> (WorldSpec, Schedule) {
    let mut best_spec = spec.clone();
    let mut best = schedule.clone();
    // Workload: fewer jobs, found again by a short search with the same seed.
    for jobs in 1..spec.jobs {
        let cand = WorldSpec {
            jobs,
            ..spec.clone()
        };
        let mut found = None;
        explore_mode(
            &cand,
            mode,
            opts.strategy,
            opts.seed,
            opts.dfs_bound,
            20,
            None,
            None,
            |run| {
                if found.is_none() && judge(run, p).is_some() {
                    found = Some(run.report.schedule.clone());
                }
            },
        );
        if let Some(s) = found {
            best_spec = cand;
            best = s;
            break;
        }
    }
    // Schedule: try prefixes, shortest first.
    let choices = best.choices().to_vec();
    let len = choices.len();
    let mut cuts: Vec<usize> = vec![0, len / 8, len / 4, len / 2, 3 * len / 4];
    cuts.dedup();
    for cut in cuts {
        if cut >= len {
            continue;
        }
        let prefix = Schedule::new(choices[..cut].to_vec());
        let mut r = Replay::new(prefix);
        r.next_execution();
        let run = run_controlled(&best_spec, mode, &mut r);
        if judge(&run, p).is_some() {
            best = run.report.schedule.clone();
            break;
        }
    }
    (best_spec, best)
}

/// Where a check is ([`check`]'s progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// Runs made so far (both modes).
    pub runs: u64,
    /// A whole DPOR search per mode: the executions it takes, estimated
    /// from its progress so far ([`Dpor::estimate`]: usually low early);
    /// `None` before its first run and for other strategies.
    pub normal: Option<u64>,
    /// The same for the stalled-userspace search.
    pub stalled: Option<u64>,
}

/// Checks a scenario: explores, judges every property, shrinks.
/// `progress` gets where the check is: after each run, or, when the two
/// modes' searches run side by side ([`CheckOptions::parallel_modes`]),
/// every 100 ms and as each search ends (so `runs` may skip numbers and
/// repeat one).
pub fn check(
    scenario: &Scenario,
    opts: &CheckOptions,
    mut progress: impl FnMut(Tick),
) -> CheckReport {
    check_dyn(scenario, opts, None, &mut progress)
}

/// Checks part `shard` of a scenario (see the module documentation): the
/// same report as [`check`], over this part's runs, with
/// [`CheckReport::split`] saying what the part held. Refused for PCT
/// ([`splittable`]) and with a proof attempt (which is a search of its
/// own: split the matrix by cells instead).
pub fn check_shard(
    scenario: &Scenario,
    opts: &CheckOptions,
    shard: SearchShard,
    mut progress: impl FnMut(Tick),
) -> Result<CheckReport, String> {
    splittable(opts.strategy)?;
    if opts.proof.is_some() {
        return Err("a check with a proof attempt cannot be split over shards".into());
    }
    Ok(check_dyn(scenario, opts, Some(shard), &mut progress))
}

/// One property in one mode's search: runs judged, violations, the first
/// violation and its schedule.
type ModeTally = (u64, u64, Option<(Violation, Schedule)>);

/// What one mode's search of a check found, before it is merged with the
/// other mode's ([`check_dyn`]).
struct ModeSearch {
    mode: RunMode,
    explored: Explored,
    /// The first non-empty list of refusals of its runs.
    refusals: Vec<String>,
    /// Its first distinct errors, in order.
    errors: Vec<String>,
    /// Per property judged: runs, violations, the first violation and its
    /// schedule.
    props: BTreeMap<Property, ModeTally>,
    runs: u64,
}

/// Runs `n` schedules of `mode` of `scenario` and judges the properties of
/// `opts` judged in that mode; `done` counts the runs (shared with the
/// other mode's search), `live` holds the search's size as estimated so far
/// (DPOR), `tick` is called after each run.
fn search_mode(
    scenario: &Scenario,
    opts: &CheckOptions,
    (mode, n): (RunMode, u64),
    shard: Option<SearchShard>,
    done: &AtomicU64,
    live: &AtomicU64,
    tick: &mut dyn FnMut(),
) -> ModeSearch {
    let seed = if mode == RunMode::Normal {
        opts.seed
    } else {
        opts.seed.wrapping_add(0x9e37_79b9)
    };
    let mut refusals: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let mut props: BTreeMap<Property, ModeTally> = BTreeMap::new();
    let mut runs = 0;
    let explored = explore_mode(
        &scenario.spec,
        mode,
        opts.strategy,
        seed,
        opts.dfs_bound,
        n,
        shard,
        Some(live),
        |run| {
            runs += 1;
            done.fetch_add(1, Ordering::Relaxed);
            tick();
            if refusals.is_empty()
                && let Some(o) = &run.obs
            {
                refusals = o
                    .refusals
                    .iter()
                    .map(|r| format!("{}: {} {}", r.importer, r.stage, r.errno))
                    .collect();
            }
            for e in run_errors(run) {
                keep_error(&mut errors, &e);
            }
            for &p in &opts.properties {
                if !judged_in(p, mode) {
                    continue;
                }
                let r = props.entry(p).or_insert((0, 0, None));
                r.0 += 1;
                if let Some(v) = judge(run, p) {
                    r.1 += 1;
                    if r.2.is_none() {
                        r.2 = Some((v, run.report.schedule.clone()));
                    }
                }
            }
        },
    );
    ModeSearch {
        mode,
        explored,
        refusals,
        errors,
        props,
        runs,
    }
}

fn check_dyn(
    scenario: &Scenario,
    opts: &CheckOptions,
    shard: Option<SearchShard>,
    progress: &mut dyn FnMut(Tick),
) -> CheckReport {
    let renamed;
    let scenario = match with_stall_in_remap(scenario, opts) {
        Some(s) => {
            renamed = s;
            &renamed
        }
        None => scenario,
    };
    let start = Instant::now();
    lockdep::set_mode(lockdep::Mode::Collect);
    let mut results: BTreeMap<Property, PropertyResult> = BTreeMap::new();
    let mut first: BTreeMap<Property, (Violation, Schedule, RunMode)> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut refusals = Vec::new();
    let mut runs = 0;
    let mut split = Vec::new();
    let mut plan = Vec::new();
    for mode in [RunMode::Normal, RunMode::Stalled] {
        let n = match mode {
            // Normal runs only when they judge something asked for: with
            // `l-bounded` alone they would answer nothing.
            RunMode::Normal => {
                if opts.properties.iter().any(|&p| judged_in(p, mode)) {
                    opts.schedules
                } else {
                    0
                }
            }
            RunMode::Stalled => {
                if opts.properties.contains(&Property::LBounded) {
                    opts.stalled_schedules
                } else {
                    0
                }
            }
        };
        if n > 0 {
            plan.push((mode, n));
        }
    }
    let done = AtomicU64::new(0);
    // Per mode (normal, stalled): its DPOR search's size so far (0: none).
    let live = [AtomicU64::new(0), AtomicU64::new(0)];
    let slot = |m: RunMode| usize::from(m == RunMode::Stalled);
    let tick = || {
        let est = |m: RunMode| Some(live[slot(m)].load(Ordering::Relaxed)).filter(|&e| e > 0);
        Tick {
            runs: done.load(Ordering::Relaxed),
            normal: est(RunMode::Normal),
            stalled: est(RunMode::Stalled),
        }
    };
    let search = |(mode, n): (RunMode, u64), tick: &mut dyn FnMut()| {
        search_mode(
            scenario,
            opts,
            (mode, n),
            shard,
            &done,
            &live[slot(mode)],
            tick,
        )
    };
    let searched: Vec<ModeSearch> = if opts.parallel_modes && plan.len() > 1 {
        // Each mode's search on a thread of its own; this thread only
        // reports progress. The results are merged in mode order below,
        // exactly as if the searches had run one after the other.
        crate::progress::side_by_side(
            plan.len(),
            plan.len(),
            |k| search(plan[k], &mut || {}),
            |_, _| {},
            || progress(tick()),
        )
    } else {
        plan.iter()
            .map(|&mn| search(mn, &mut || progress(tick())))
            .collect()
    };
    for ms in searched {
        let ModeSearch {
            mode,
            explored,
            refusals: mode_refusals,
            errors: mode_errors,
            props,
            runs: mode_runs,
        } = ms;
        runs += mode_runs;
        if refusals.is_empty() {
            refusals = mode_refusals;
        }
        for e in &mode_errors {
            keep_error(&mut errors, e);
        }
        for (p, (schedules, violations, found)) in props {
            let r = results.entry(p).or_insert_with(|| empty_result(p));
            r.schedules += schedules;
            r.violations += violations;
            if let Some((v, sched)) = found {
                first.entry(p).or_insert((v, sched, mode));
            }
        }
        if let Some(sp) = explored.split.clone() {
            // A part may hold no run at all: its properties still have a
            // (zero) result for the merge to add up.
            for &p in &opts.properties {
                if judged_in(p, mode) {
                    results.entry(p).or_insert_with(|| empty_result(p));
                }
            }
            split.push(sp);
        }
        let strategy_name = match opts.strategy {
            StrategyKind::Dfs => format!("dfs(bound={})", opts.dfs_bound),
            StrategyKind::Dpor => format!("dpor(bound={})", opts.dfs_bound),
            k => format!("{k}(seed={})", opts.seed),
        };
        for r in results.values_mut() {
            if judged_in(r.property, mode) {
                r.strategy = strategy_name.clone();
                // Exhaustive only if every mode it was judged in was.
                let ex = explored.exhaustive;
                let both = mode == RunMode::Stalled
                    && judged_in(r.property, RunMode::Normal)
                    && opts.schedules > 0;
                r.exhaustive = if both { r.exhaustive && ex } else { ex };
                for &b in &explored.bounds_hit {
                    if !r.bounds_hit.contains(&b) {
                        r.bounds_hit.push(b);
                    }
                }
                r.sleep_blocked += explored.sleep_blocked;
                r.max_depth = r.max_depth.max(explored.max_depth);
                if let Some(e) = explored.estimate {
                    r.estimates.push((mode, e));
                }
            }
        }
    }
    for (p, (v, sched, mode)) in first {
        if crate::progress::stop_requested() {
            // Interrupted: no shrinking and no re-run, the schedule as found.
            if let Some(r) = results.get_mut(&p) {
                r.counterexample = Some(Counterexample {
                    violation: v,
                    token: ReplayToken {
                        scenario: scenario.name.clone(),
                        hash: dmabuf_scenario::builtin::spec_hash(&scenario.spec),
                        strategy: opts.strategy,
                        seed: opts.seed,
                        mode,
                        schedule: sched.encode(),
                    },
                    trace_len: 0,
                    decisions: sched.len() as u64,
                });
            }
            continue;
        }
        let (spec, sched) = if opts.shrink {
            shrink(&scenario.spec, mode, p, &sched, opts)
        } else {
            (scenario.spec.clone(), sched)
        };
        let rerun = replay_schedule(&spec, mode, sched.clone());
        let violation = judge(&rerun, p).unwrap_or(v);
        let shrunk_name = if spec == scenario.spec {
            scenario.name.clone()
        } else {
            format!("{}.jobs{}", scenario.name, spec.jobs)
        };
        let token = ReplayToken {
            scenario: shrunk_name,
            hash: dmabuf_scenario::builtin::spec_hash(&spec),
            strategy: opts.strategy,
            seed: opts.seed,
            mode,
            schedule: rerun.report.schedule.encode(),
        };
        if let Some(r) = results.get_mut(&p) {
            r.counterexample = Some(Counterexample {
                violation,
                token,
                trace_len: rerun.report.trace.len(),
                decisions: rerun.report.decisions,
            });
        }
    }
    if scenario.spec.read_ahead_unordered {
        // What the monitor recorded of the speculative reads depends on
        // where the schedules put them, which the search did not vary.
        for r in results
            .values_mut()
            .filter(|r| r.property.judged_from_speculation())
        {
            r.exhaustive = false;
            if !r.bounds_hit.contains(&Bound::Unobserved) {
                r.bounds_hit.push(Bound::Unobserved);
            }
        }
    }
    if let Some(proof) = opts.proof
        && !crate::progress::stop_requested()
        && proof.budget > 0
    {
        let own = proof_scenario(scenario, proof.jobs);
        let reduced = own.name != scenario.name;
        let pc = unordered_read_ahead(&own, &results).unwrap_or(own);
        let a = proof_attempt(&pc, reduced, opts, proof.budget, progress);
        runs += a.runs;
        for e in &a.errors {
            keep_error(&mut errors, e);
        }
        for r in results.values_mut() {
            r.proof = Some(a.result(r));
        }
        // The smallest configuration, for what the first attempt left
        // sampled (see `ProofOptions::reduced_budget` and `mix_budget`).
        let mix = is_mix(scenario);
        let budget = if mix {
            proof.mix_budget
        } else {
            proof.reduced_budget
        };
        if budget > 0
            && !crate::progress::stop_requested()
            && results.values().any(|r| r.holds() && !r.proved())
            && let Some(small) = smallest_proof_scenario(scenario).filter(|s| s.name != pc.name)
        {
            let small = unordered_read_ahead(&small, &results).unwrap_or(small);
            let b = proof_attempt(&small, true, opts, budget, progress);
            runs += b.runs;
            for e in &b.errors {
                keep_error(&mut errors, e);
            }
            for r in results.values_mut().filter(|r| r.holds() && !r.proved()) {
                let pr = b.result(r);
                // One importer: kept only when it decides the property (a
                // proof of the smaller configuration, or a violation in it,
                // with its token); otherwise the bounds the cell's own
                // attempt hit are the better report. A mix: kept unless it
                // found a violation (see `ProofOptions::mix_budget`), so
                // that a search it did not finish tells how far the world
                // with turns, the one within reach, is from a proof.
                let keep = if mix {
                    pr.violations == 0
                } else {
                    pr.exhaustive || pr.violations > 0
                };
                if keep {
                    r.proof = Some(pr);
                }
            }
        }
    }
    CheckReport {
        scenario: scenario.name.clone(),
        refusals,
        properties: opts
            .properties
            .iter()
            .filter_map(|p| results.remove(p))
            .collect(),
        runs,
        errors,
        elapsed_s: start.elapsed().as_secs_f64(),
        split,
    }
}

/// A property's result before any run.
fn empty_result(p: Property) -> PropertyResult {
    PropertyResult {
        property: p,
        schedules: 0,
        violations: 0,
        strategy: String::new(),
        exhaustive: false,
        bounds_hit: Vec::new(),
        sleep_blocked: 0,
        max_depth: 0,
        estimates: Vec::new(),
        counterexample: None,
        proof: None,
    }
}

/// The decision bound of a proof attempt: beyond any execution of the
/// built-in scenarios, so that the budget of executions is the only bound
/// a finished search can have hit.
pub const DPOR_BOUND: usize = 10_000;

/// The proof configuration of `scenario`: at most `jobs` DMA jobs per
/// importer, named `<scenario>.jobs<N>` when that is fewer (the name
/// resolves, so its replay tokens replay).
pub fn proof_scenario(scenario: &Scenario, jobs: usize) -> Scenario {
    let jobs = jobs.max(1);
    if scenario.spec.jobs <= jobs {
        return scenario.clone();
    }
    let mut s = scenario.clone();
    s.spec.jobs = jobs;
    s.name = format!("{}.jobs{jobs}", scenario.name);
    s
}

/// Keeps `e` among a report's errors: the first five distinct ones.
fn keep_error(errors: &mut Vec<String>, e: &str) {
    if errors.len() < 5 && !errors.iter().any(|x| x == e) {
        errors.push(e.to_owned());
    }
}

/// Idle read-ahead passes of the smallest proof configuration: one, so
/// that a GPU still reads ahead after its job and once more while idle
/// (the behaviour of its hazard), but not four times.
pub const SMALLEST_IDLE_PASSES: u32 = 1;

/// The smallest proof configuration of `scenario`: one DMA job per
/// importer, at most [`SMALLEST_IDLE_PASSES`] idle read-ahead passes and,
/// with several importers, the importers taking turns, named
/// `<scenario>.idle1.jobs1.turns` (each suffix only when it changes
/// something; the name resolves, so its tokens replay). `None` when the
/// scenario is already that small.
pub fn smallest_proof_scenario(scenario: &Scenario) -> Option<Scenario> {
    let mut s = scenario.clone();
    let capped = s
        .spec
        .importers
        .iter()
        .any(|i| i.read_ahead && i.read_ahead_idle_passes > SMALLEST_IDLE_PASSES);
    if capped {
        s.spec.cap_idle_passes(SMALLEST_IDLE_PASSES);
        s.name = format!("{}.idle{SMALLEST_IDLE_PASSES}", s.name);
    }
    let mut s = proof_scenario(&s, 1);
    let turns = is_mix(scenario) && !s.spec.importers_take_turns;
    if turns {
        s.spec.importers_take_turns = true;
        s.name = format!("{}.turns", s.name);
    }
    (capped || turns || s.spec.jobs != scenario.spec.jobs).then_some(s)
}

/// `scenario` with [`CheckOptions::stall_in_remap`] applied, named
/// `<name>.stall-remap` (a name that resolves to it); `None` when the
/// option is off, the world has no cycle, or it stalls there already.
pub fn with_stall_in_remap(scenario: &Scenario, opts: &CheckOptions) -> Option<Scenario> {
    if !opts.stall_in_remap || !scenario.spec.trigger.is_cycle() || scenario.spec.stall_in_remap {
        return None;
    }
    let mut s = scenario.clone();
    s.spec.stall_in_remap = true;
    s.name = format!("{}.stall-remap", s.name);
    Some(s)
}

/// `scenario`'s world with its speculative reads left unordered by the
/// search (`WorldSpec::read_ahead_unordered`, named
/// `<scenario>.ra-unordered`), when that decides as much as the world
/// itself: some importer reads ahead, and every property in `results`
/// still to be proved (it holds, unproved) is one that no speculative read
/// decides. A speculative read moves no bytes, takes no lock, runs no
/// fault handler (through no IOMMU) and its result is thrown away, so the
/// world without it ordered has every order of everything else; only
/// `s-final` and `s-noreuse` judge the monitor's records of it, and a
/// search of that world reports them not exhaustive (`unobserved`). The
/// search is much smaller where read-ahead overlaps the revoke: 6,270
/// executions against 228,966 for
/// `matrix.v1-core-flag.gpu+gpu-lazy.idle1.jobs1.turns`.
pub fn unordered_read_ahead(
    scenario: &Scenario,
    results: &BTreeMap<Property, PropertyResult>,
) -> Option<Scenario> {
    let reads_ahead = scenario.spec.importers.iter().any(|i| i.read_ahead);
    let to_prove = |r: &PropertyResult| r.holds() && !r.proved();
    let decides = !results
        .values()
        .any(|r| to_prove(r) && r.property.judged_from_speculation());
    if !reads_ahead || !decides || scenario.spec.read_ahead_unordered {
        return None;
    }
    let mut s = scenario.clone();
    s.spec.read_ahead_unordered = true;
    s.name = format!("{}.ra-unordered", s.name);
    Some(s)
}

/// Whether `scenario`'s world has several importers.
fn is_mix(scenario: &Scenario) -> bool {
    scenario.spec.instances() > 1
}

/// One proof attempt's searches (see [`ProofOptions`]).
struct Attempt {
    config: String,
    reduced: bool,
    /// Whether `l-bounded` was asked for (stalled runs are made only then).
    stalled_wanted: bool,
    stalled: Option<CheckReport>,
    normal: Option<CheckReport>,
    runs: u64,
    errors: Vec<String>,
}

/// Runs the DPOR searches of a proof attempt on `pc` (`reduced`: a smaller
/// configuration than the scenario judged), each mode within `budget`
/// executions.
fn proof_attempt(
    pc: &Scenario,
    reduced: bool,
    opts: &CheckOptions,
    budget: u64,
    progress: &mut dyn FnMut(Tick),
) -> Attempt {
    let base = CheckOptions {
        strategy: StrategyKind::Dpor,
        schedules: 0,
        stalled_schedules: 0,
        dfs_bound: DPOR_BOUND,
        proof: None,
        ..opts.clone()
    };
    let wants = |m: RunMode| opts.properties.iter().any(|&p| judged_in(p, m));
    // The stalled-userspace search first: it is the smaller one (the
    // userspace tasks stop at revoke). If it does not finish within its
    // budget, the normal-mode search would not either, and is skipped.
    // As for sampling, stalled runs are made only when `l-bounded` is
    // asked for.
    let stalled_wanted = wants(RunMode::Stalled) && opts.properties.contains(&Property::LBounded);
    let stalled = stalled_wanted.then(|| {
        let o = CheckOptions {
            stalled_schedules: budget.max(1),
            ..base.clone()
        };
        check_dyn(pc, &o, None, progress)
    });
    // Finished: no property's search was cut (a verdict from unordered
    // reads is not exhaustive, but the search went to its end).
    let stalled_done = stalled.as_ref().is_none_or(|r| {
        r.properties
            .iter()
            .all(|p| p.exhaustive || p.bounds_hit == [Bound::Unobserved])
    });
    let normal = (stalled_done && wants(RunMode::Normal)).then(|| {
        let o = CheckOptions {
            schedules: budget,
            ..base.clone()
        };
        check_dyn(pc, &o, None, progress)
    });
    let mut runs = 0;
    let mut errors = Vec::new();
    for part in stalled.iter().chain(normal.iter()) {
        runs += part.runs;
        // A replayed prefix that met other runnable tasks is the
        // search's `nondeterminism` bound (in each property's
        // `bounds_hit`): the proof is not claimed, the sampled verdict
        // stands.
        for e in &part.errors {
            if !e.starts_with("schedule divergence") && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    Attempt {
        config: pc.name.clone(),
        reduced,
        stalled_wanted,
        stalled,
        normal,
        runs,
        errors,
    }
}

impl Attempt {
    /// What the attempt found for `r`'s property; takes the attempt's
    /// counterexample when `r` has none.
    fn result(&self, r: &mut PropertyResult) -> ProofResult {
        let mut pr = ProofResult {
            config: self.config.clone(),
            reduced: self.reduced,
            exhaustive: true,
            executions: 0,
            violations: 0,
            bounds_hit: Vec::new(),
            estimates: Vec::new(),
        };
        for (mode, part) in [
            (RunMode::Stalled, &self.stalled),
            (RunMode::Normal, &self.normal),
        ] {
            if !judged_in(r.property, mode) || (mode == RunMode::Stalled && !self.stalled_wanted) {
                continue;
            }
            let q = part
                .as_ref()
                .and_then(|x| x.properties.iter().find(|q| q.property == r.property));
            let Some(q) = q else {
                // Not run: the stalled search hit its budget first.
                pr.exhaustive = false;
                if !pr.bounds_hit.contains(&Bound::Executions) {
                    pr.bounds_hit.push(Bound::Executions);
                }
                continue;
            };
            pr.exhaustive &= q.exhaustive;
            pr.executions += q.schedules;
            pr.estimates
                .extend(q.estimates.iter().filter(|e| e.0 == mode));
            pr.violations += q.violations;
            for &b in &q.bounds_hit {
                if !pr.bounds_hit.contains(&b) {
                    pr.bounds_hit.push(b);
                }
            }
            if r.counterexample.is_none() {
                r.counterexample = q.counterexample.clone();
            }
        }
        pr
    }
}

/// Resolves a token's scenario in `lib` and checks that it is the question
/// the token was made for (the hash of the protocol, importers and
/// timeline).
pub fn token_spec(lib: &Library, token: &ReplayToken) -> Result<(String, WorldSpec), ReplayError> {
    let s = lib.find(&token.scenario).map_err(ReplayError::Scenario)?;
    let now = s.hash();
    if now != token.hash {
        return Err(ReplayError::Changed {
            scenario: token.scenario.clone(),
            token: token.hash,
            now,
        });
    }
    Ok((s.name, s.spec))
}

/// Every property's verdict on one run.
pub type Verdicts = Vec<(Property, Option<Violation>)>;

/// Errors of `replay`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The token names an unknown scenario.
    #[error("{0}")]
    Scenario(dmabuf_scenario::file::FileError),
    /// The scenario's protocol, importers or timeline changed since the
    /// token was made: replaying it would answer another question.
    #[error(
        "the scenario '{scenario}' changed since this token was made (token hash {token:016x}, now {now:016x}): re-run check to get a new token"
    )]
    Changed {
        /// Scenario name.
        scenario: String,
        /// The token's hash.
        token: u64,
        /// The scenario's hash now.
        now: u64,
    },
    /// The schedule field does not decode.
    #[error("malformed replay token: schedule: {0}")]
    Schedule(#[from] dmabuf_core::sync::sched::ScheduleError),
}

/// Replays a token: the run and the verdict of every property on it.
pub fn replay(lib: &Library, token: &ReplayToken) -> Result<(RunOutcome, Verdicts), ReplayError> {
    let (_, spec) = token_spec(lib, token)?;
    let schedule = Schedule::decode(&token.schedule)?;
    lockdep::set_mode(lockdep::Mode::Collect);
    let run = replay_schedule(&spec, token.mode, schedule);
    let verdicts = Property::ALL.iter().map(|&p| (p, judge(&run, p))).collect();
    Ok((run, verdicts))
}
