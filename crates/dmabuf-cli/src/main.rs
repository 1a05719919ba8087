//! `dmabuf`: the command-line front end.
//!
//! | command | what |
//! |---|---|
//! | `scenarios` | list the protocols, importers, scenarios and properties of the library |
//! | `run SCENARIO\|FILE` | one run on real threads with real timing |
//! | `check SCENARIO\|FILE` | explore schedules; herd7-style answers; exit 0 if every property holds or meets the file's expectation, 1 otherwise, 2 on bad usage |
//! | `matrix [DIR...]` | every revoke protocol × importer |
//! | `replay TOKEN` | re-run one schedule exactly and print its trace (`--trace-format text\|perfetto\|ftrace`) |
//! | `report [--from FILE.json \| DIR...] -o FILE.html` | one self-contained HTML report: the matrix grid and a sequence chart per counterexample |
//! | `merge FILE...` | combine the `--json` results of `check`/`matrix` shards (`--shard K/N`) |
//! | `fences` | a small demonstration of the fence core on real threads |
//! | `soak` | a seeded soak with faults on real threads: hazards, leaks, slow revokes, lockdep, RSS |
//!
//! # Exit codes (the same for every command)
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every judged property holds (or meets the file's expectation), no run reported an error |
//! | 1 | a property was violated (its replay token is printed) or a run reported an error; for `matrix`, a `--require-safe` expectation failed or a cell's runs reported errors |
//! | 2 | bad usage (unknown name, malformed or edited token, refused budget), or a replay that diverged from its token (no verdicts are printed then) |
//! | 130 | interrupted (Ctrl-C): the partial result was printed, marked partial |
//!
//! Output never panics: a closed pipe (`dmabuf scenarios | head -1`) ends
//! the process quietly by `SIGPIPE`, as for any Unix filter.

use clap::{Parser, Subcommand};
use dmabuf_checker::explore::{
    self, CheckOptions, CheckReport, DEFAULT_MIX_BUDGET, DEFAULT_PROOF_BUDGET, DEFAULT_PROOF_JOBS,
    DEFAULT_REDUCED_BUDGET, ExpectationResult, ProofOptions, PropertyResult, RunOutcome, SplitPart,
};
use dmabuf_checker::matrix::{self, Matrix, Shard};
use dmabuf_checker::progress::{self, Progress};
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::{Library, Scenario};
use dmabuf_checker::token::{self, ReplayToken, RunMode, StrategyKind};
use dmabuf_core::lockdep;
use dmabuf_core::sync::sched::strategy::SearchShard;
use dmabuf_core::sync::sched::{Bound, Outcome, RunReport, Schedule};
use dmabuf_core::sync::{Arc, thread};
use dmabuf_core::{FenceContext, MAX_SCHEDULE_TIMEOUT};
use dmabuf_scenario::file::{self, Answer, ProtocolFile};
use dmabuf_scenario::world::{Observation, StallMode, run_world};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

#[derive(Parser)]
#[command(
    name = "dmabuf",
    version,
    about = "Linux 7.1 dma-buf revoke, in userspace Rust: which revoke sequence is safe with which importer"
)]
struct Cli {
    /// Protocol files or folders to add to the built-in library (repeatable).
    #[arg(long = "lib", short = 'L', global = true)]
    lib: Vec<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Every judged property holds.
const EXIT_OK: u8 = 0;
/// A violation (or a run error).
const EXIT_VIOLATION: u8 = 1;
/// Bad usage, or a replay that diverged.
const EXIT_USAGE: u8 = 2;
/// Interrupted by Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// Budgets above this are refused: at thousands of schedules per second
/// at best, they would run for days.
const MAX_SCHEDULES: u64 = 10_000_000;
/// Budgets above this run, with a warning that they take long.
const WARN_SCHEDULES: u64 = 100_000;
/// The largest PCT depth or DFS decision bound accepted.
const MAX_DEPTH: u32 = 1_000;
/// Most fences of the `fences` demonstration.
const MAX_FENCES: u64 = 1_000_000;
/// Most waiter threads of the `fences` demonstration.
const MAX_WAITERS: usize = 64;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StrategyArg {
    Pct,
    Random,
    Dfs,
    /// Dynamic partial-order reduction (source sets and sleep sets): one
    /// execution per class of equivalent schedules.
    Dpor,
}

/// The largest PCT depth `--depth` accepts (a bug of depth d needs d - 1
/// preemptions; the scenarios' bugs need two or three).
const MAX_PCT_DEPTH: u32 = 1024;

/// Checks `--schedules` and `--depth` for `check`; a message naming the
/// flag when they are out of range.
fn validate_bounds(
    strategy: &StrategyArg,
    schedules: u64,
    depth: Option<u32>,
) -> Result<(), String> {
    if schedules == 0 {
        return Err("--schedules must be at least 1".into());
    }
    match (strategy, depth) {
        (StrategyArg::Pct, Some(d)) if !(1..=MAX_PCT_DEPTH).contains(&d) => Err(format!(
            "--depth {d}: the PCT depth must be between 1 and {MAX_PCT_DEPTH}"
        )),
        (StrategyArg::Dfs | StrategyArg::Dpor, Some(0)) => {
            Err("--depth 0: the decision bound of dfs/dpor must be at least 1".into())
        }
        (StrategyArg::Random, Some(_)) => {
            Err("--depth has no meaning for --strategy random".into())
        }
        _ => Ok(()),
    }
}

/// How a trace is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TraceFormat {
    /// Rows with a header (the default).
    Text,
    /// Chrome trace-event JSON for ui.perfetto.dev / chrome://tracing
    /// (stdout; the verdicts go to stderr).
    Perfetto,
    /// `trace-cmd report` layout (stdout; the verdicts go to stderr).
    Ftrace,
}

#[derive(Subcommand)]
enum Cmd {
    /// List and describe the built-in scenarios.
    Scenarios {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One run on real threads with real timing.
    Run {
        /// Scenario name (see `dmabuf scenarios`) or a protocol file.
        scenario: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Print the event trace.
        #[arg(long)]
        trace: bool,
        /// Format of the trace (implies --trace).
        #[arg(long, value_enum)]
        trace_format: Option<TraceFormat>,
    },
    /// Explore schedules and judge every property.
    Check {
        /// Scenario name, or a protocol file (its scenario, or its exporter
        /// or importers crossed with the library).
        scenario: String,
        /// Exploration strategy (default: pct, or what the protocol file's
        /// [scenario] suggests).
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
        /// Normal-mode schedules, at least 1 (DFS: at most this many
        /// executions); a quarter as many stalled-userspace schedules are
        /// added for l-bounded, and made alone when l-bounded is the only
        /// property asked (default: 100, or what the protocol file's
        /// [scenario] suggests).
        #[arg(long)]
        schedules: Option<u64>,
        /// PCT depth (1..=1024, default 3), or the dfs/dpor decision bound
        /// (default 12 for dfs, 10000 for dpor); at most 1000 when given.
        #[arg(long)]
        depth: Option<u32>,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only these properties (comma-separated).
        #[arg(long, value_delimiter = ',')]
        properties: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Run only shard K of N (0-based): the questions of a protocol file
        /// are dealt round-robin; a single question's search is split (dfs,
        /// dpor: the first decision's choices; random: the schedules; pct
        /// is refused). Combine the `--json` outputs with `dmabuf merge`.
        #[arg(long)]
        shard: Option<String>,
        /// Threads (1 to 256; default: the CPUs available): with 2 or more,
        /// a protocol file's questions run side by side, and a single
        /// question's normal and stalled-userspace searches do. The result
        /// is the same for every number.
        #[arg(long)]
        threads: Option<usize>,
        /// In a world with a cycle, stalled-userspace runs may also stall
        /// userspace anywhere in the first importer's re-map, until the
        /// clock next moves (the scenario becomes `<name>.stall-remap`);
        /// several times the stalled runs' executions.
        #[arg(long)]
        stall_in_remap: bool,
    },
    /// Every revoke protocol × importer.
    Matrix {
        /// Folders (or files) whose exporters become the rows and whose
        /// importers become the columns (the built-in ones where a folder
        /// defines none). Without any: the built-in matrix.
        dirs: Vec<PathBuf>,
        /// Normal-mode schedules per accepted cell (a quarter as many
        /// stalled-userspace schedules are added for l-bounded).
        #[arg(long, default_value_t = 200)]
        schedules: u64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Exit 1 if this protocol violates any property for an accepted
        /// importer (other than those given with --allow-unsafe).
        #[arg(long)]
        require_safe: Option<String>,
        /// Importers exempt from --require-safe (comma-separated).
        #[arg(long, value_delimiter = ',')]
        allow_unsafe: Vec<String>,
        /// Executions per mode of each cell's proof attempt (an exhaustive
        /// DPOR search of the cell with --proof-jobs jobs); 0: sample only.
        #[arg(long, default_value_t = DEFAULT_PROOF_BUDGET)]
        proof_budget: u64,
        /// DMA jobs per importer in the proof configuration (1 to 8; the
        /// default is a cell's own workload, so proofs are of the cells).
        #[arg(long, default_value_t = DEFAULT_PROOF_JOBS)]
        proof_jobs: usize,
        /// Executions per mode of a second proof attempt, on a one-importer
        /// cell's smallest configuration (one job, one idle read-ahead
        /// pass), for the properties the first left sampled; what it
        /// proves is `proved-reduced`. 0: no second attempt.
        #[arg(long, default_value_t = DEFAULT_REDUCED_BUDGET)]
        reduced_budget: u64,
        /// The same for a cell of several importers (a mix), whose
        /// smallest configuration also has the importers' system-call
        /// stages run one at a time (`<cell>.idle1.jobs1.turns`); a
        /// violation found there is not reported. 0: no second attempt
        /// for a mix.
        #[arg(long, default_value_t = DEFAULT_MIX_BUDGET)]
        mix_budget: u64,
        /// Run only shard K of N (0-based): cell i of the row-major order
        /// when i % N == K. Combine the `--json` outputs with `dmabuf merge`.
        #[arg(long)]
        shard: Option<String>,
        /// Cells explored side by side (default: the CPUs this process may
        /// use; the result does not depend on it).
        #[arg(long)]
        threads: Option<usize>,
        /// Stalled-userspace runs may also stall userspace anywhere in the
        /// first importer's re-map, until the clock next moves (each cell
        /// becomes `<cell>.stall-remap`); several times the stalled runs'
        /// executions, and fewer mixes decided within --mix-budget.
        #[arg(long)]
        stall_in_remap: bool,
    },
    /// Combine the `--json` outputs of `check --shard` or `matrix --shard`
    /// runs (every shard of one run) into the unsharded result.
    Merge {
        /// The shards' JSON files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the merged JSON (else the matrix table, or a summary).
        #[arg(long)]
        json: bool,
    },
    /// Re-run one schedule exactly and print its trace.
    Replay {
        /// A token printed by `check` or `matrix`.
        token: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Format of the trace.
        #[arg(long, value_enum, default_value = "text")]
        trace_format: TraceFormat,
    },
    /// One self-contained HTML file: the matrix as a grid and a message
    /// sequence chart per counterexample (replayed from its token).
    Report {
        /// A `matrix --json` or `check --json` result; without it, the
        /// matrix is run first (over DIRS as for `matrix`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Folders or files, as for `matrix` (also added to the library so
        /// that the tokens of a `--from` result replay).
        dirs: Vec<PathBuf>,
        /// Where to write the HTML.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Normal-mode schedules per cell when the matrix is run here.
        #[arg(long, default_value_t = 200)]
        schedules: u64,
        /// Seed when the matrix is run here.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// A seeded soak of the real stack on real threads, with faults
    /// injected; checks hazards, leaks, revoke latency, lockdep, RSS
    /// (docs/soak.md).
    Soak {
        /// How long: 10m, 30s, 1h30m, 500ms (at most 7 days).
        #[arg(long, default_value = "10m")]
        duration: String,
        /// Seed of the workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Exporters: vfio, system-heap, gpu-vram (default: all).
        #[arg(long, value_delimiter = ',')]
        exporters: Vec<String>,
        /// Importer kinds (default: every built-in one but lying).
        #[arg(long, value_delimiter = ',')]
        importers: Vec<String>,
        /// Episodes run side by side (1 to 16).
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Most buffers per episode (1 to 8).
        #[arg(long, default_value_t = 4)]
        max_buffers: u32,
        /// Most imports per episode (1 to 32).
        #[arg(long, default_value_t = 6)]
        max_imports: u32,
        /// A revoke longer than this is a finding (1 to 3,600,000).
        #[arg(long, default_value_t = 2000)]
        revoke_bound_ms: u64,
        /// A thread stuck in one step longer than this is a finding.
        #[arg(long, default_value_t = 10_000)]
        hung_bound_ms: u64,
        /// Run only this episode of the seed's workload, again and again
        /// until a finding or the end of --duration (a reproduction).
        #[arg(long)]
        episode: Option<u64>,
        /// No fault injection.
        #[arg(long)]
        no_faults: bool,
        /// Machine-readable summary (docs/json.md); no progress.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Signal fences from one thread while others wait on them.
    Fences {
        /// Number of fences on the timeline (1 to 1,000,000).
        #[arg(long, default_value_t = 8)]
        count: u64,
        /// Number of waiting threads (0 to 64).
        #[arg(long, default_value_t = 2)]
        waiters: usize,
    },
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("dmabuf: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Restores the default `SIGPIPE` action (Rust ignores it, so a write to a
/// closed pipe would be an `EPIPE` error and `println!` would panic): a
/// closed reader ends the process quietly, like `cat` or `grep`.
fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default has no
    // preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ctrl-C asks the exploration to stop after the current execution (the
/// partial result is then printed); a second Ctrl-C exits at once.
fn stop_on_interrupt() {
    let r = ctrlc::set_handler(|| {
        if progress::stop_requested() {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        progress::request_stop();
    });
    if let Err(e) = r {
        eprintln!("dmabuf: warning: Ctrl-C will not print a partial result: {e}");
    }
}

/// Refuses budgets that mean nothing or could never finish, and warns
/// about long ones. `schedules` is the total over every cell.
fn check_budget(schedules: u64, depth: Option<u32>, strategy: StrategyArg) -> Result<(), String> {
    if schedules == 0 {
        return Err(
            "--schedules 0 explores nothing: no property could be judged (give at least 1)".into(),
        );
    }
    if schedules > MAX_SCHEDULES {
        return Err(format!(
            "--schedules {schedules} is beyond {MAX_SCHEDULES} schedules: at a few thousand \
             schedules per second at best it would run for days"
        ));
    }
    match (strategy, depth) {
        (StrategyArg::Random, Some(_)) => {
            return Err(
                "--depth has no meaning with --strategy random (it is the PCT depth or the DFS bound)"
                    .into(),
            );
        }
        (_, Some(0)) => {
            return Err("--depth 0 is neither a PCT depth nor a DFS bound (give 1 to 1000)".into());
        }
        (_, Some(d)) if d > MAX_DEPTH => {
            return Err(format!("--depth {d} is beyond {MAX_DEPTH}"));
        }
        _ => {}
    }
    if schedules > WARN_SCHEDULES {
        eprintln!(
            "dmabuf: warning: {schedules} schedules may take hours; progress and an estimate of \
             the time left go to stderr, and Ctrl-C stops after the current execution and prints \
             the partial result"
        );
    }
    Ok(())
}

/// `VramEviction` -> `vram-eviction`; `writes_after_fences` ->
/// `writes-after-fences`: the JSON's one naming style.
fn kebab(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else if c == '_' || c == ' ' {
            out.push('-');
        } else {
            out.push(c);
        }
    }
    out
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::CompletedWithStalled { .. } => "completed-with-stalled",
        Outcome::Deadlock { .. } => "deadlock",
        Outcome::StepLimit => "step-limit",
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let mut lib = match Library::builtin() {
        Ok(l) => l,
        Err(e) => return usage_error(format!("built-in protocol files: {e}")),
    };
    for p in &cli.lib {
        let r = if p.is_dir() {
            lib.add_dir(p).map(|_| ())
        } else {
            lib.add_file(p).map(|_| ())
        };
        if let Err(e) = r {
            return usage_error(e);
        }
    }
    match cli.cmd {
        Cmd::Scenarios { json } => scenarios(&lib, json),
        Cmd::Run {
            scenario,
            json,
            trace,
            trace_format,
        } => run(&mut lib, &scenario, json, trace, trace_format),
        Cmd::Check {
            scenario,
            strategy,
            schedules,
            depth,
            seed,
            properties,
            json,
            quiet,
            shard,
            threads,
            stall_in_remap,
        } => {
            let shard = match shard.as_deref().map(Shard::parse).transpose() {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            if threads == Some(0) || threads.is_some_and(|t| t > 256) {
                return usage_error("--threads: give 1 to 256");
            }
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            let mut props = Vec::new();
            for p in &properties {
                match p.parse::<Property>() {
                    Ok(p) => props.push(p),
                    Err(e) => return usage_error(e),
                }
            }
            let given = strategy.is_some();
            let schedules_given = schedules.is_some();
            let schedules = schedules.unwrap_or(DEFAULT_CHECK_SCHEDULES);
            let strategy = strategy.unwrap_or(StrategyArg::Pct);
            if let Err(e) = check_budget(schedules, depth, strategy) {
                return usage_error(e);
            }
            if let Err(e) = validate_bounds(&strategy, schedules, depth) {
                return usage_error(e);
            }
            let default_bound = if matches!(strategy, StrategyArg::Dpor) {
                10_000
            } else {
                12
            };
            let dfs_bound = depth.unwrap_or(default_bound) as usize;
            let strategy = match strategy {
                StrategyArg::Pct => StrategyKind::Pct(depth.unwrap_or(3)),
                StrategyArg::Random => StrategyKind::Random,
                StrategyArg::Dfs => StrategyKind::Dfs,
                StrategyArg::Dpor => StrategyKind::Dpor,
            };
            let opts = CheckOptions {
                strategy,
                schedules,
                stalled_schedules: (schedules / 4).max(1),
                seed,
                dfs_bound,
                properties: props,
                shrink: true,
                proof: None,
                stall_in_remap,
                parallel_modes: threads > 1,
            };
            let given = Given {
                strategy: given,
                schedules: schedules_given,
            };
            check(
                &mut lib, &scenario, &opts, given, json, quiet, shard, threads,
            )
        }
        Cmd::Matrix {
            dirs,
            schedules,
            seed,
            json,
            quiet,
            require_safe,
            allow_unsafe,
            proof_budget,
            proof_jobs,
            reduced_budget,
            mix_budget,
            shard,
            threads,
            stall_in_remap,
        } => {
            if threads == Some(0) || threads.is_some_and(|t| t > 256) {
                return usage_error("--threads: give 1 to 256");
            }
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            if schedules == 0 {
                return usage_error("--schedules must be at least 1");
            }
            let shard = match shard.as_deref().map(Shard::parse).transpose() {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            if proof_budget > MAX_SCHEDULES {
                return usage_error(format!(
                    "--proof-budget {proof_budget} is beyond {MAX_SCHEDULES} executions"
                ));
            }
            if reduced_budget > MAX_SCHEDULES {
                return usage_error(format!(
                    "--reduced-budget {reduced_budget} is beyond {MAX_SCHEDULES} executions"
                ));
            }
            if mix_budget > MAX_SCHEDULES {
                return usage_error(format!(
                    "--mix-budget {mix_budget} is beyond {MAX_SCHEDULES} executions"
                ));
            }
            if !(1..=8).contains(&proof_jobs) {
                return usage_error(format!(
                    "--proof-jobs {proof_jobs}: give 1 to 8 DMA jobs per importer"
                ));
            }
            let lib = match matrix_library(lib, &dirs) {
                Ok(l) => l,
                Err(e) => return usage_error(e),
            };
            if let Some(r) = &require_safe
                && !lib.rows().iter().any(|e| &e.name == r)
            {
                return usage_error(format!("unknown protocol '{r}' in --require-safe"));
            }
            for k in &allow_unsafe {
                if lib.importer(k).is_none() {
                    return usage_error(format!("unknown importer '{k}' in --allow-unsafe"));
                }
            }
            let cells = (lib.rows().len() * lib.importers.len()) as u64;
            if let Err(e) = check_budget(schedules.saturating_mul(cells), None, StrategyArg::Pct) {
                return usage_error(format!("{e} (the matrix runs {cells} cells)"));
            }
            let opts = CheckOptions {
                schedules,
                stalled_schedules: (schedules / 4).max(1),
                seed,
                proof: (proof_budget > 0).then_some(ProofOptions {
                    budget: proof_budget,
                    jobs: proof_jobs,
                    reduced_budget,
                    mix_budget,
                }),
                stall_in_remap,
                ..CheckOptions::default()
            };
            run_matrix(
                &lib,
                &opts,
                json,
                quiet,
                require_safe,
                &allow_unsafe,
                (shard.unwrap_or(Shard::ALL), threads),
            )
        }
        Cmd::Replay {
            token,
            json,
            trace_format,
        } => replay(&lib, &token, json, trace_format),
        Cmd::Report {
            from,
            dirs,
            output,
            schedules,
            seed,
            quiet,
        } => report(lib, &cli.lib, from, &dirs, &output, schedules, seed, quiet),
        Cmd::Merge { files, json } => merge(&files, json),
        Cmd::Fences { count, waiters } => fences_demo(count, waiters),
        Cmd::Soak {
            duration,
            seed,
            exporters,
            importers,
            workers,
            max_buffers,
            max_imports,
            revoke_bound_ms,
            hung_bound_ms,
            episode,
            no_faults,
            json,
            quiet,
        } => {
            let args = dmabuf_soak::SoakArgs {
                duration,
                seed,
                exporters,
                importers,
                workers,
                max_buffers,
                max_imports,
                revoke_bound_ms,
                hung_bound_ms,
                episode,
                no_faults,
                quiet: quiet || json,
            };
            let cfg = match args.config() {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            stop_on_interrupt();
            match dmabuf_soak::run(&cfg, &progress::stop_requested) {
                Ok(s) => {
                    if json {
                        println!("{}", s.json());
                    } else {
                        print!("{}", s.text());
                    }
                    ExitCode::from(s.exit_code())
                }
                Err(e) => usage_error(e),
            }
        }
    }
}

/// The strategy a protocol file's `[scenario]` suggests (its defaults).
fn suggested_strategy(name: &str) -> Option<StrategyKind> {
    match name {
        "pct" => Some(StrategyKind::Pct(3)),
        "random" => Some(StrategyKind::Random),
        _ => None,
    }
}

/// Whether a command-line word names a file rather than a scenario.
fn is_file_arg(a: &str) -> bool {
    a.ends_with(".toml") || a.contains('/') || Path::new(a).is_file()
}

/// The scenarios a command-line word asks about: a named scenario, or the
/// questions of a protocol file (added to the library first, so that its
/// names resolve and its tokens replay with `--lib FILE`).
fn questions(lib: &mut Library, arg: &str) -> Result<Vec<Scenario>, String> {
    if is_file_arg(arg) {
        let f: ProtocolFile = lib.add_file(Path::new(arg)).map_err(|e| e.to_string())?;
        let q = lib.questions(&f).map_err(|e| e.to_string())?;
        if q.is_empty() {
            return Err(format!(
                "{arg}: nothing to check (an exporter without importers to cross it with?)"
            ));
        }
        Ok(q)
    } else {
        lib.find(arg).map(|s| vec![s]).map_err(|e| e.message)
    }
}

/// The matrix's library: with no folders, the built-ins; else the built-ins
/// plus the folders, with rows and columns restricted to what the folders
/// define (each side falls back to the built-ins when they define none).
fn matrix_library(mut lib: Library, dirs: &[PathBuf]) -> Result<Library, String> {
    if dirs.is_empty() {
        return Ok(lib);
    }
    let mut files = Vec::new();
    for d in dirs {
        let added = if d.is_dir() {
            lib.add_dir(d).map_err(|e| e.to_string())?
        } else {
            vec![lib.add_file(d).map_err(|e| e.to_string())?]
        };
        files.extend(added);
    }
    let rows: Vec<String> = files
        .iter()
        .filter_map(|f| f.exporter.as_ref().map(|e| e.name.clone()))
        .collect();
    let cols: Vec<String> = files
        .iter()
        .flat_map(|f| f.importers.iter().map(|i| i.spec.name.clone()))
        .collect();
    if !rows.is_empty() {
        lib.exporters
            .retain(|e| rows.contains(&e.name) || !e.kind.revokes());
    }
    if !cols.is_empty() {
        lib.importers.retain(|i| cols.contains(&i.spec.name));
    }
    Ok(lib)
}

fn scenarios(lib: &Library, json: bool) -> ExitCode {
    let mut all = match lib.named() {
        Ok(n) => n,
        Err(e) => return usage_error(e),
    };
    for e in lib.rows() {
        for i in &lib.importers {
            all.push(lib.cell(e, i));
        }
    }
    if json {
        let v = json!({
            "scenarios": all.iter().map(|s| json!({
                "name": s.name,
                "description": s.description,
                "exporter": file::exporter_kind_name(s.spec.exporter),
                "policy": s.spec.protocol.name,
                "importers": s.spec.importers.iter().map(|i| json!({"name": i.name, "base": i.base.name(), "count": i.count})).collect::<Vec<_>>(),
                "trigger": file::trigger_name(s.spec.trigger),
                "hash": format!("{:016x}", s.hash()),
            })).collect::<Vec<_>>(),
            "policies": lib.exporters.iter().map(|e| json!({
                "name": e.name, "kind": file::exporter_kind_name(e.kind), "description": e.description,
                "file": e.path, "revoke": e.protocol.revoke.to_string(),
                "unrevoke": e.protocol.unrevoke.to_string(), "cleanup": e.protocol.cleanup.to_string(),
            })).collect::<Vec<_>>(),
            "importers": lib.importers.iter().map(|i| json!({
                "name": i.spec.name, "base": i.spec.base.name(), "description": i.description, "file": i.path,
            })).collect::<Vec<_>>(),
            "properties": Property::ALL.iter().map(|p| json!({"name": p.name(), "description": p.describe()})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        for s in &all {
            println!("{:<44} {}", s.name, s.description);
        }
        println!("\nrevoke protocols (matrix rows):");
        for e in lib.rows() {
            println!("  {:<22} {}  [{}]", e.name, e.description, e.path);
        }
        println!("\nimporters (matrix columns):");
        for i in &lib.importers {
            println!("  {:<22} {}  [{}]", i.spec.name, i.description, i.path);
        }
        println!("\nproperties:");
        for p in Property::ALL {
            println!("  {:<12} {}", p.name(), p.describe());
        }
    }
    ExitCode::from(EXIT_OK)
}

/// A real-thread run as the checker's judge sees runs: it returned, so it
/// completed; lockdep reports are those the run filed.
fn real_thread_outcome(obs: Observation, lockdep_reports: Vec<lockdep::Report>) -> RunOutcome {
    let lockdep: Vec<String> = lockdep_reports.iter().map(|r| r.to_string()).collect();
    RunOutcome {
        report: RunReport {
            outcome: Outcome::Completed,
            schedule: Schedule::default(),
            steps: 0,
            decisions: 0,
            switches: 0,
            virtual_ns: 0,
            trace: Vec::new(),
            lockdep: lockdep_reports,
            panics: Vec::new(),
            leaked_threads: 0,
            divergence: None,
        },
        obs: Some(obs),
        mode: RunMode::Normal,
        lockdep,
    }
}

fn verdict_json(v: Option<&explore::Violation>) -> Value {
    match v {
        None => json!({"result": "holds"}),
        Some(v) => json!({"result": "violated", "detail": v.detail, "hazard": v.hazard}),
    }
}

fn print_verdicts(verdicts: &[(Property, Option<explore::Violation>)], holds: &str) {
    for (p, v) in verdicts {
        match v {
            None => println!("  {:<12} holds {holds}", p.name()),
            Some(v) => {
                println!("  {:<12} VIOLATED: {}", p.name(), v.detail);
                if let Some(h) = &v.hazard {
                    println!("      hazard: {h}");
                }
            }
        }
    }
}

fn run(
    lib: &mut Library,
    name: &str,
    json: bool,
    trace: bool,
    trace_format: Option<TraceFormat>,
) -> ExitCode {
    let trace = trace || trace_format.is_some();
    let format = trace_format.unwrap_or(TraceFormat::Text);
    let sc = match questions(lib, name) {
        Ok(mut q) if q.len() == 1 => q.remove(0),
        Ok(q) => {
            return usage_error(format!(
                "{name} asks {} questions; `run` takes one scenario (e.g. {})",
                q.len(),
                q[0].name
            ));
        }
        Err(e) => return usage_error(e),
    };
    if trace {
        dmabuf_core::trace::set_enabled(true);
    }
    lockdep::set_mode(lockdep::Mode::Collect);
    let _ = lockdep::take_reports();
    let t0 = std::time::Instant::now();
    let obs = run_world(&sc.spec, StallMode::Normal);
    let wall = t0.elapsed();
    let events = if trace {
        dmabuf_core::trace::take()
    } else {
        Vec::new()
    };
    let outcome = real_thread_outcome(obs, lockdep::take_reports());
    let verdicts: Vec<(Property, Option<explore::Violation>)> = Property::ALL
        .iter()
        .filter(|&&p| explore::judged_in(p, RunMode::Normal))
        .map(|&p| (p, explore::judge(&outcome, p)))
        .collect();
    let Some(obs) = outcome.obs.as_ref() else {
        return usage_error("internal: the run left no observation");
    };
    let violated = verdicts.iter().any(|(_, v)| v.is_some());
    let latency_us = obs.revoke_latency_ns.map(|n| n as f64 / 1000.0);
    let revoke = if !obs.revoke_started {
        "not-started"
    } else if obs.revoke_returned {
        "returned"
    } else {
        "did-not-return"
    };
    if json {
        let v = json!({
            "scenario": sc.name,
            "revoke": revoke,
            "revoke-latency-us": latency_us,
            "hazards": obs.hazards.iter().map(|h| json!({
                "class": kebab(h.class.name()), "accessor": h.accessor, "kind": kebab(&format!("{:?}", h.kind)),
                "addr": h.addr, "speculative": h.speculative, "seq": h.seq, "detail": h.detail,
                "text": h.to_string(),
            })).collect::<Vec<_>>(),
            "refusals": obs.refusals.iter().map(|r| json!({"importer": r.importer, "stage": r.stage.name(), "errno": r.errno.name()})).collect::<Vec<_>>(),
            "warnings": obs.warnings,
            "counters": obs.counters.iter().map(|(k, v)| (kebab(k), json!(v))).collect::<serde_json::Map<String, Value>>(),
            "verdicts": verdicts.iter().map(|(p, v)| (p.name().to_owned(), verdict_json(v.as_ref()))).collect::<serde_json::Map<String, Value>>(),
            "not-judged": Property::ALL.iter().filter(|&&p| !explore::judged_in(p, RunMode::Normal)).map(|p| p.name()).collect::<Vec<_>>(),
            "leaks": obs.leaks,
            "errors": obs.errors,
            "wall-ms": wall.as_secs_f64() * 1000.0,
            "trace": events.iter().map(dmabuf_checker::tracefmt::event_json).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else if format != TraceFormat::Text {
        print_trace(&events, format, &format!("{} (real threads)", sc.name));
        for (p, v) in &verdicts {
            if let Some(v) = v {
                eprintln!("  {:<12} VIOLATED: {}", p.name(), v.detail);
            }
        }
    } else {
        println!("scenario {}: {}", sc.name, sc.description);
        match (obs.revoke_started, latency_us) {
            (_, Some(us)) => println!("revoke latency: {us:.1} us (real threads)"),
            (true, None) => println!("revoke: did not return"),
            (false, None) => {
                println!("revoke: not started (this scenario's exporter never revokes)")
            }
        }
        for r in &obs.refusals {
            println!(
                "refused: {} at {} ({})",
                r.importer,
                r.stage,
                r.errno.name()
            );
        }
        println!("hazards: {}", obs.hazards.len());
        for h in &obs.hazards {
            println!("  {h}");
        }
        for w in &obs.warnings {
            println!("  {w}");
        }
        println!("counters:");
        for (k, v) in &obs.counters {
            println!("  {k}: {v}");
        }
        for l in &obs.leaks {
            println!("leak: {l}");
        }
        for e in &obs.errors {
            println!("error: {e}");
        }
        for e in &events {
            println!("{e}");
        }
        println!("properties (one real-thread run, not an exploration):");
        print_verdicts(&verdicts, "on this run");
        for p in Property::ALL
            .iter()
            .filter(|&&p| !explore::judged_in(p, RunMode::Normal))
        {
            println!(
                "  {:<12} not judged (needs stalled runs: dmabuf check {})",
                p.name(),
                sc.name
            );
        }
        println!("wall time: {:.1} ms", wall.as_secs_f64() * 1000.0);
    }
    if violated || !obs.errors.is_empty() {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

/// A DPOR search's executions per mode (exact when it finished, estimated
/// when it stopped at its budget): `{"normal": n, "stalled": n}`, or null
/// when no whole DPOR search judged the property.
fn estimates_json(e: &[(RunMode, u64)]) -> Value {
    if e.is_empty() {
        return Value::Null;
    }
    Value::Object(e.iter().map(|(m, n)| (m.to_string(), json!(n))).collect())
}

/// `n` rounded to two significant digits, with thousands separated
/// (`2,100,000`): an estimate's precision.
fn about(n: u64) -> String {
    // Rounded once, half up, at the second digit (in u128: no overflow).
    let n = u128::from(n);
    let mut scale: u128 = 1;
    while n / scale >= 100 {
        scale *= 10;
    }
    let v = ((n + scale / 2) / scale * scale).to_string();
    let mut out = String::new();
    for (i, c) in v.chars().enumerate() {
        if i > 0 && (v.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A progress line's detail: the size of each DPOR search as estimated so
/// far (`search ≈ 12,000 normal, 3,900 stalled`), or else the run.
fn tick_detail(t: &explore::Tick) -> String {
    let sizes: Vec<String> = [(t.normal, "normal"), (t.stalled, "stalled")]
        .iter()
        .filter_map(|&(e, m)| e.map(|e| format!("{} {m}", about(e))))
        .collect();
    if sizes.is_empty() {
        format!("run {}", t.runs)
    } else {
        format!("search ≈ {}", sizes.join(", "))
    }
}

/// The lines saying what the DPOR searches that stopped at their budget
/// would take in all (once per search: every property judged in a mode
/// shares its search), from their progress.
fn estimate_lines(r: &CheckReport) -> Vec<String> {
    let mut searches: Vec<(String, Vec<(RunMode, u64)>)> = Vec::new();
    let mut add = |what: String, e: &[(RunMode, u64)], bounds: &[Bound]| {
        if e.is_empty() || !bounds.contains(&Bound::Executions) {
            return;
        }
        let l = match searches.iter_mut().find(|s| s.0 == what) {
            Some(l) => l,
            None => {
                searches.push((what, Vec::new()));
                searches.last_mut().expect("just pushed")
            }
        };
        for &(m, n) in e {
            if !l.1.iter().any(|x| x.0 == m) {
                l.1.push((m, n));
            }
        }
    };
    for p in &r.properties {
        add("the search".into(), &p.estimates, &p.bounds_hit);
        if let Some(q) = &p.proof {
            add(
                format!("the proof attempt's search of {}", q.config),
                &q.estimates,
                &q.bounds_hit,
            );
        }
    }
    searches
        .into_iter()
        .map(|(what, e)| {
            let parts: Vec<String> = e
                .iter()
                .map(|(m, n)| format!("{} ({m} runs)", about(*n)))
                .collect();
            format!(
                "{what} stopped at its budget; from its progress, the whole of it is about {} \
                 executions (a rough estimate, usually low early in a search)",
                parts.join(" + ")
            )
        })
        .collect()
}

fn prop_json(p: &PropertyResult) -> Value {
    let mut v = json!({
        "result": if p.holds() { "holds" } else { "violated" },
        "answer": p.answer().name(),
        "schedules": p.schedules,
        "violations": p.violations,
        "strategy": p.strategy,
        "exhaustive": p.exhaustive,
        "bounds-hit": p.bounds_hit.iter().map(|b| b.name()).collect::<Vec<_>>(),
        "max-depth": p.max_depth,
        "sleep-blocked": p.sleep_blocked,
        "estimated-executions": estimates_json(&p.estimates),
        "verdict": p.status(),
        "proof": p.proof.as_ref().map(|q| json!({
            "config": q.config,
            "reduced": q.reduced,
            "exhaustive": q.exhaustive,
            "executions": q.executions,
            "violations": q.violations,
            "bounds-hit": q.bounds_hit.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "estimated-executions": estimates_json(&q.estimates),
        })),
    });
    if let Some(c) = &p.counterexample {
        v["hazard"] = c
            .violation
            .hazard
            .clone()
            .map(Value::String)
            .unwrap_or(Value::Null);
        v["detail"] = Value::String(c.violation.detail.clone());
        v["replay"] = Value::String(c.token.to_string());
        v["trace-events"] = json!(c.trace_len);
        v["decisions"] = json!(c.decisions);
    }
    v
}

fn report_json(r: &CheckReport, ex: &[ExpectationResult], partial: bool) -> Value {
    let props: serde_json::Map<String, Value> = r
        .properties
        .iter()
        .map(|p| (p.property.name().to_owned(), prop_json(p)))
        .collect();
    json!({
        "scenario": r.scenario,
        "partial": partial,
        "refusals": r.refusals,
        "properties": props,
        "expectations": ex.iter().map(|e| json!({
            "property": e.property.name(), "expected": e.expected.name(),
            "found": e.found.name(), "met": e.met, "at": e.at,
        })).collect::<Vec<_>>(),
        "runs": r.runs,
        "errors": r.errors,
        "elapsed-s": r.elapsed_s,
        "all-hold": r.all_hold(),
        "verdict": if passes(r, ex) { "ok" } else { "fail" },
    })
}

/// A report passes when every property either held or was expected to be
/// violated (and was), every expectation was met, and no run erred.
fn passes(r: &CheckReport, ex: &[ExpectationResult]) -> bool {
    r.errors.is_empty()
        && ex.iter().all(|e| e.met)
        && r.properties.iter().all(|p| {
            p.holds()
                || ex
                    .iter()
                    .any(|e| e.property == p.property && e.expected != Answer::Never)
        })
}

fn print_report(r: &CheckReport, ex: &[ExpectationResult], partial: bool) {
    println!(
        "scenario {}: {} runs in {:.1}s{}",
        r.scenario,
        r.runs,
        r.elapsed_s,
        if partial {
            " (PARTIAL: interrupted; the verdicts cover only these runs)"
        } else {
            ""
        }
    );
    for x in &r.refusals {
        println!("  refused: {x}");
    }
    for p in &r.properties {
        let how = if p.exhaustive {
            format!("exhaustive, {}", p.strategy)
        } else if !p.bounds_hit.is_empty() {
            let b: Vec<&str> = p.bounds_hit.iter().map(|b| b.name()).collect();
            format!(
                "{}, not exhaustive: hit the {} bound",
                p.strategy,
                b.join(" and ")
            )
        } else {
            format!("sampled, {}", p.strategy)
        };
        let how = match &p.proof {
            Some(q) if q.exhaustive => format!(
                "{how}; PROVED for {}{} by dpor: exhaustive, {} executions",
                q.config,
                if q.reduced {
                    " (a smaller configuration)"
                } else {
                    ""
                },
                q.executions
            ),
            Some(q) => {
                let b: Vec<&str> = q.bounds_hit.iter().map(|b| b.name()).collect();
                format!(
                    "{how}; proof attempt on {} hit the {} bound after {} executions",
                    q.config,
                    b.join(" and "),
                    q.executions
                )
            }
            None => how,
        };
        let expect = ex
            .iter()
            .find(|e| e.property == p.property)
            .map(|e| {
                format!(
                    "  expected {}: {}",
                    e.expected.name(),
                    if e.met { "ok" } else { "NOT MET" }
                )
            })
            .unwrap_or_default();
        println!(
            "  {:<12} {:<9} violated in {} of {} runs ({how}){expect}",
            p.property.name(),
            p.answer().name(),
            p.violations,
            p.schedules
        );
        if let Some(c) = &p.counterexample {
            println!("      {}", c.violation.detail);
            if let Some(h) = &c.violation.hazard {
                println!("      hazard: {h}");
            }
            println!("      replay: dmabuf replay {}", c.token);
            if c.trace_len > 0 {
                println!(
                    "      ({} trace events, {} decisions after shrinking)",
                    c.trace_len, c.decisions
                );
            } else {
                println!("      ({} decisions, not shrunk: interrupted)", c.decisions);
            }
        }
    }
    for l in estimate_lines(r) {
        println!("  {l}");
    }
    for e in &r.errors {
        println!("  error: {e}");
    }
    println!(
        "  verdict: {}",
        if passes(r, ex) {
            "ok"
        } else {
            "FAIL (a property violated without an expectation saying so, an expectation not met, or a run error)"
        }
    );
}

/// For a DPOR search that stopped at its budget: the smaller world the
/// matrix's second proof attempt searches instead (one job, one idle
/// read-ahead pass and, in a mix, the importers taking turns;
/// docs/matrix.md), when there is one.
fn smaller_world_hint(sc: &Scenario, r: &CheckReport) -> Option<String> {
    let stopped = r.properties.iter().any(|p| {
        p.strategy.starts_with("dpor") && !p.exhaustive && p.bounds_hit.contains(&Bound::Executions)
    });
    let small = stopped
        .then(|| explore::smallest_proof_scenario(sc))
        .flatten()?;
    Some(format!(
        "a smaller world, the one the matrix's second proof attempt searches: {} \
         (docs/matrix.md)",
        small.name
    ))
}

/// What a part of a split search held in one mode, for `merge`.
fn split_json(p: &SplitPart) -> Value {
    json!({
        "mode": p.mode.to_string(),
        "choices": p.choices,
        "owned": p.owned,
        "probes": p.probes,
        "bounds-hit": p.bounds_hit.iter().map(|b| b.name()).collect::<Vec<_>>(),
    })
}

/// Says which part of the search a shard explored.
fn print_split(parts: &[SplitPart], sh: SearchShard, opts: &CheckOptions) {
    for p in parts {
        let what = match p.choices {
            None => {
                let n = match p.mode {
                    RunMode::Normal => opts.schedules,
                    RunMode::Stalled => opts.stalled_schedules,
                };
                format!(
                    "{} of the {n} schedules (schedule i is shard i % {}'s)",
                    p.owned, sh.count
                )
            }
            Some(c) if p.owned == 0 => format!(
                "nothing: the search's first decision has {c} choice(s), fewer than {} shards",
                sh.count
            ),
            Some(c) => format!(
                "{} of the {c} choices of the search's first decision{}",
                p.owned,
                if p.probes > 0 {
                    format!(
                        " ({} probe run(s) to learn the others, not counted)",
                        p.probes
                    )
                } else {
                    String::new()
                }
            ),
        };
        println!(
            "  shard {}/{} of the {} search: {what}",
            sh.index, sh.count, p.mode
        );
    }
}

/// The `check` budget when neither the command line nor the file names one.
const DEFAULT_CHECK_SCHEDULES: u64 = 100;

/// Which `check` options the command line gave (the others may come from
/// a protocol file's `[scenario]`).
#[derive(Clone, Copy)]
struct Given {
    strategy: bool,
    schedules: bool,
}

#[allow(clippy::too_many_arguments)]
fn check(
    lib: &mut Library,
    name: &str,
    opts: &CheckOptions,
    given: Given,
    json: bool,
    quiet: bool,
    shard: Option<Shard>,
    threads: usize,
) -> ExitCode {
    let qs = match questions(lib, name) {
        Ok(q) => q,
        Err(e) => return usage_error(e),
    };
    // One question: its search is split; several: they are dealt out.
    let split = shard
        .filter(|s| s.count > 1 && qs.len() == 1)
        .map(|s| SearchShard {
            index: s.index,
            count: s.count,
        });
    // Every question's options first, so that a bad one is refused before
    // anything runs: (question, options, runs it will make).
    let mut plan: Vec<(usize, CheckOptions, u64)> = Vec::new();
    for (index, sc) in qs.iter().enumerate() {
        if split.is_none()
            && let Some(sh) = shard
            && !sh.owns(index)
        {
            continue;
        }
        let mut opts = opts.clone();
        if !given.strategy
            && let Some(k) = sc.strategy.as_deref().and_then(suggested_strategy)
        {
            opts.strategy = k;
        }
        if !given.schedules
            && let Some(n) = sc.schedules
        {
            opts.schedules = n;
            opts.stalled_schedules = (n / 4).max(1);
        }
        if opts.properties.is_empty() {
            opts.properties = match &sc.properties {
                None => Property::ALL.to_vec(),
                Some(list) => {
                    let mut v = Vec::new();
                    for (n, at) in list {
                        match n.parse::<Property>() {
                            Ok(p) => v.push(p),
                            Err(e) => return usage_error(format!("{at}: {e}")),
                        }
                    }
                    v
                }
            };
        }
        let total = opts.schedules
            + if opts.properties.contains(&Property::LBounded) {
                opts.stalled_schedules
            } else {
                0
            };
        if split.is_some()
            && let Err(e) = explore::splittable(opts.strategy)
        {
            return usage_error(format!("--shard: {e}"));
        }
        plan.push((index, opts, total));
    }
    stop_on_interrupt();
    // Several questions and threads: the questions side by side, one
    // thread each (their two modes one after the other); otherwise one
    // question at a time, its modes side by side if the options say so.
    let side_by_side = threads > 1 && plan.len() > 1;
    // Per question of `plan`: its report and whether it was cut short.
    let mut done: Vec<Option<(CheckReport, bool)>> = Vec::new();
    if side_by_side {
        let all_runs: u64 = plan.iter().map(|p| p.2).sum();
        let mut bar = Progress::new("check", all_runs, quiet || json);
        let runs = AtomicU64::new(0);
        let mut seen = 0;
        done = progress::side_by_side(
            plan.len(),
            threads,
            |k| {
                // Ctrl-C: no question after it.
                if progress::stop_requested() {
                    return None;
                }
                let (index, o, _) = &plan[k];
                let o = CheckOptions {
                    parallel_modes: false,
                    ..o.clone()
                };
                let r = explore::check(&qs[*index], &o, |_| {
                    runs.fetch_add(1, AtomicOrdering::Relaxed);
                });
                Some((r, progress::stop_requested()))
            },
            |_, _| {},
            || {
                let n = runs.load(AtomicOrdering::Relaxed);
                bar.inc(n.saturating_sub(seen), &format!("run {n}"));
                seen = seen.max(n);
            },
        );
        bar.finish();
    }
    let mut all_pass = true;
    let mut out = Vec::new();
    for (k, (index, opts, total)) in plan.iter().enumerate() {
        let (index, sc) = (*index, &qs[*index]);
        let (r, partial) = if side_by_side {
            // Not run (Ctrl-C before its turn).
            let Some(x) = done[k].take() else {
                continue;
            };
            x
        } else {
            if progress::stop_requested() {
                break;
            }
            let mut bar = Progress::new("check", *total, quiet || json);
            // `t.runs` is the runs so far (both modes' searches, which may
            // run side by side and report together).
            let mut seen = 0;
            let mut tick = |t: explore::Tick| {
                bar.inc(t.runs.saturating_sub(seen), &tick_detail(&t));
                seen = seen.max(t.runs);
            };
            let r = match split {
                None => explore::check(sc, opts, &mut tick),
                Some(sh) => match explore::check_shard(sc, opts, sh, &mut tick) {
                    Ok(r) => r,
                    Err(e) => return usage_error(format!("--shard: {e}")),
                },
            };
            bar.finish();
            (r, progress::stop_requested())
        };
        let ex = match explore::expectations(sc, &r) {
            Ok(x) => x,
            Err(e) => return usage_error(e),
        };
        all_pass &= passes(&r, &ex);
        if json {
            let mut v = report_json(&r, &ex, partial);
            if shard.is_some() {
                v["index"] = json!(index);
            }
            if split.is_some() {
                v["search-split"] = Value::Array(r.split.iter().map(split_json).collect());
            }
            out.push(v);
        } else {
            print_report(&r, &ex, partial);
            if let Some(h) = smaller_world_hint(sc, &r) {
                println!("  {h}");
            }
            if let Some(sh) = split {
                print_split(&r.split, sh, opts);
            }
        }
    }
    if json && let Some(sh) = shard {
        // The shard's part, with what `merge` needs to put the parts back
        // in order and to see that none is missing.
        println!(
            "{}",
            json!({
                "shard": sh.to_string(),
                "questions": qs.len(),
                "partial": progress::stop_requested(),
                "reports": out,
            })
        );
    } else if json {
        if out.len() == 1 {
            println!("{}", out.remove(0));
        } else {
            println!("{}", Value::Array(out));
        }
    }
    if progress::stop_requested() {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if all_pass {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_VIOLATION)
    }
}

fn run_matrix(
    lib: &Library,
    opts: &CheckOptions,
    json: bool,
    quiet: bool,
    require: Option<String>,
    allow: &[String],
    (shard, threads): (Shard, usize),
) -> ExitCode {
    stop_on_interrupt();
    let total = (lib.rows().len() * lib.importers.len()) as u64;
    let mine = (0..total as usize).filter(|&i| shard.owns(i)).count() as u64;
    let mut bar = Progress::new("matrix", mine, quiet || json);
    let m: Matrix =
        matrix::run_matrix_parallel(lib, opts, shard, threads, |_, _, name| bar.inc(1, name));
    bar.finish();
    let partial = progress::stop_requested();
    // Runs that erred (a panic, a driver error) are defects whatever the
    // expectation: the cell reads `!` and the exit code is 1.
    let erred: Vec<String> = m
        .cells
        .iter()
        .filter(|c| c.refused.is_none() && !c.report.errors.is_empty())
        .map(|c| format!("{}.{}", c.policy, c.importer))
        .collect();
    let mut failed = Vec::new();
    if let Some(p) = &require {
        for c in m
            .cells
            .iter()
            .filter(|c| &c.policy == p && c.refused.is_none() && !allow.contains(&c.importer))
        {
            if !c.report.all_hold() {
                failed.push(format!("{}.{}", c.policy, c.importer));
            }
        }
    }
    let (proved_cells, accepted) = matrix::proved_cells(&m);
    let decided_cells = matrix::decided_cells(&m);
    let decided_reduced = matrix::decided_reduced_cells(&m);
    let props = m
        .cells
        .iter()
        .filter(|c| c.refused.is_none())
        .flat_map(|c| c.report.properties.iter());
    let (judged, proved_props, reduced_props) = props.fold((0, 0, 0), |(j, p, q), r| {
        (
            j + 1,
            p + usize::from(r.proved()),
            q + usize::from(r.proved_reduced()),
        )
    });
    if json {
        let cells = matrix_cells_json(&m);
        println!(
            "{}",
            json!({
                "partial": partial,
                "policies": m.rows,
                "importers": m.columns,
                "cells": cells,
                "cells-total": total,
                "elapsed-s": m.elapsed_s,
                "schedules-per-s": m.schedules_per_s(),
                "runs": m.runs,
                "schedules": opts.schedules,
                "stalled-schedules": opts.stalled_schedules,
                "strategy": opts.strategy.to_string(),
                "seed": opts.seed,
                "require-safe": require,
                "require-safe-failed": failed,
                "cells-with-errors": erred,
                "shard": shard.to_string(),
                "proof-budget": opts.proof.map_or(0, |p| p.budget),
                "proof-jobs": opts.proof.map(|p| p.jobs),
                "reduced-budget": opts.proof.map_or(0, |p| p.reduced_budget),
                "mix-budget": opts.proof.map_or(0, |p| p.mix_budget),
                "stall-in-remap": opts.stall_in_remap,
                "cells-accepted": accepted,
                "cells-proved": proved_cells,
                "cells-decided": decided_cells,
                "cells-decided-reduced": decided_reduced,
                "properties-judged": judged,
                "properties-proved": proved_props,
                "properties-proved-reduced": reduced_props,
            })
        );
    } else {
        if partial {
            println!(
                "PARTIAL: interrupted after {} of {total} cells; cells not run read '-'\n",
                m.cells.len()
            );
        }
        print!("{}", matrix::render(&m));
        if let Some(p) = opts.proof {
            println!();
            print!("{}", matrix::render_proofs(&m));
            println!(
                "\nproved: properties proved by an exhaustive DPOR search of the cell with {} DMA job(s) \
                 (at most {} executions per mode), of those judged; +Nr: N more proved only for the cell's \
                 smallest configuration (one job, one idle read-ahead pass, and in a mix the importers taking \
                 turns; at most {} executions per mode, {} in a mix); the others are sampled.\n\
                 {proved_cells} of {accepted} accepted cells proved in full, {decided_cells} decided (every property proved or violated), \
                 {decided_reduced} more decided with proofs of the smallest configuration; \
                 {proved_props} of {judged} property verdicts proved, {reduced_props} more for the smallest configuration",
                p.jobs, p.budget, p.reduced_budget, p.mix_budget
            );
            if opts.stall_in_remap {
                println!(
                    "stalled runs also stall userspace in a cycle's re-map (--stall-in-remap: the cells are `<cell>.stall-remap`)"
                );
            }
            let open = matrix::undecided_estimates(&m);
            let est: Vec<(u64, bool)> = open.iter().filter_map(|c| c.1).collect();
            let lo = est.iter().map(|e| e.0).min();
            let hi = est.iter().map(|e| e.0).max();
            if let (Some(lo), Some(hi)) = (lo, hi) {
                println!(
                    "undecided: {} cells; from the progress of their last proof attempts, \
                     completing {} would take about {} to {} executions \
                     (rough estimates, usually low early in a search; per cell and mode in --json)",
                    open.len(),
                    if est.iter().all(|e| e.1) {
                        "each one's stalled-userspace search alone"
                    } else {
                        "each one's searches"
                    },
                    about(lo),
                    about(hi)
                );
            }
        }
        println!(
            "\n{} controlled runs in {:.1}s ({:.1} schedules/s); {} normal + {} stalled schedules per accepted cell, {}{}",
            m.runs,
            m.elapsed_s,
            m.schedules_per_s(),
            opts.schedules,
            opts.stalled_schedules,
            opts.strategy,
            if shard == Shard::ALL {
                String::new()
            } else {
                format!("; shard {shard}")
            }
        );
        for c in &m.cells {
            for p in c.report.properties.iter().filter(|p| !p.holds()) {
                if let Some(ce) = &p.counterexample {
                    println!(
                        "{}.{} {} ({}, {} of {}): {}",
                        c.policy,
                        c.importer,
                        p.property,
                        p.answer().name(),
                        p.violations,
                        p.schedules,
                        ce.violation.detail
                    );
                    println!("    dmabuf replay {}", ce.token);
                }
            }
        }
        if !failed.is_empty() {
            println!(
                "\nrequired-safe protocol violated for: {}",
                failed.join(", ")
            );
        }
        if !erred.is_empty() {
            println!("\nruns reported errors in: {}", erred.join(", "));
        }
    }
    if partial {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if failed.is_empty() && erred.is_empty() {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_VIOLATION)
    }
}

/// The `cells` array of `matrix --json`.
fn matrix_cells_json(m: &Matrix) -> Vec<Value> {
    m.cells
        .iter()
        .map(|c| {
            let mut v = json!({
                "policy": c.policy,
                "importer": c.importer,
                "attach": if c.refused.is_some() { "refused" } else { "accepted" },
            });
            if let Some(r) = &c.refused {
                v["refusal"] = Value::String(r.clone());
            } else {
                let props: serde_json::Map<String, Value> = c
                    .report
                    .properties
                    .iter()
                    .map(|p| (p.property.name().to_owned(), prop_json(p)))
                    .collect();
                v["properties"] = Value::Object(props);
                v["errors"] = json!(c.report.errors);
            }
            v
        })
        .collect()
}

/// `dmabuf report`: the HTML report of a result read from `from`, or of a
/// matrix run here over `dirs`.
#[allow(clippy::too_many_arguments)]
fn report(
    lib: Library,
    libs: &[PathBuf],
    from: Option<PathBuf>,
    dirs: &[PathBuf],
    output: &Path,
    schedules: u64,
    seed: u64,
    quiet: bool,
) -> ExitCode {
    let mut prefix = String::from("dmabuf ");
    for p in libs.iter().chain(dirs) {
        prefix.push_str(&format!("--lib {} ", p.display()));
    }
    let lib = match matrix_library(lib, dirs) {
        Ok(l) => l,
        Err(e) => return usage_error(e),
    };
    let value = match &from {
        Some(f) => {
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => return usage_error(format!("{}: {e}", f.display())),
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => v,
                Err(e) => return usage_error(format!("{}: not JSON: {e}", f.display())),
            }
        }
        None => {
            if schedules == 0 {
                return usage_error("--schedules must be at least 1");
            }
            let cells = (lib.rows().len() * lib.importers.len()) as u64;
            if let Err(e) = check_budget(schedules.saturating_mul(cells), None, StrategyArg::Pct) {
                return usage_error(format!("{e} (the matrix runs {cells} cells)"));
            }
            let opts = CheckOptions {
                schedules,
                stalled_schedules: (schedules / 4).max(1),
                seed,
                ..CheckOptions::default()
            };
            stop_on_interrupt();
            let mut bar = Progress::new("matrix", cells, quiet);
            let m: Matrix = matrix::run_matrix(&lib, &opts, |done, _, name| {
                if done > 0 {
                    bar.inc(1, name)
                }
            });
            bar.finish();
            if progress::stop_requested() {
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            json!({
                "policies": m.rows, "importers": m.columns, "cells": matrix_cells_json(&m),
                "strategy": opts.strategy.to_string(), "schedules": opts.schedules,
                "stalled-schedules": opts.stalled_schedules, "seed": opts.seed, "runs": m.runs,
                "elapsed-s": m.elapsed_s, "partial": false,
            })
        }
    };
    let grid = match dmabuf_report::html::Grid::from_json(&value) {
        Ok(g) => g,
        Err(e) => return usage_error(format!("not a matrix or check result: {e}")),
    };
    let t0 = std::time::Instant::now();
    let replayed: Vec<Result<dmabuf_report::html::Replayed, String>> = grid
        .tokens()
        .iter()
        .map(|t| dmabuf_report::replay_token(&lib, t))
        .collect();
    let opts = dmabuf_report::html::PageOptions {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        replay_prefix: prefix,
    };
    let html = dmabuf_report::html::page(&grid, &replayed, &opts);
    if let Err(e) = std::fs::write(output, &html) {
        return usage_error(format!("{}: {e}", output.display()));
    }
    let failed = replayed.iter().filter(|r| r.is_err()).count();
    eprintln!(
        "dmabuf: wrote {} ({} bytes): {} cells, {} counterexamples replayed in {:.1}s{}",
        output.display(),
        html.len(),
        grid.cells.len(),
        replayed.len() - failed,
        t0.elapsed().as_secs_f64(),
        if failed > 0 {
            format!(", {failed} could not be replayed (see the report)")
        } else {
            String::new()
        }
    );
    let violated = grid
        .cells
        .iter()
        .any(|c| c.props.iter().any(|p| p.violated) || !c.errors.is_empty());
    if failed > 0 || violated {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

/// Reads one shard's JSON output.
fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// The shard field `K/N` of a part.
fn part_shard(path: &Path, v: &Value) -> Result<Shard, String> {
    let s = v
        .get("shard")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: no \"shard\" field", path.display()))?;
    Shard::parse(s).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks that the parts are the N distinct shards of one run: the same N,
/// every K once, and the same value of every field in `same`.
fn check_parts(parts: &[(PathBuf, Value)], same: &[&str]) -> Result<(), String> {
    let mut n = None;
    let mut seen = Vec::new();
    for (p, v) in parts {
        let sh = part_shard(p, v)?;
        if *n.get_or_insert(sh.count) != sh.count {
            return Err(format!(
                "{}: shard {sh} is not of the same split as the others ({} shards)",
                p.display(),
                n.unwrap_or(0)
            ));
        }
        if seen.contains(&sh.index) {
            return Err(format!("{}: shard {sh} given twice", p.display()));
        }
        seen.push(sh.index);
        for f in same {
            if v.get(*f) != parts[0].1.get(*f) {
                return Err(format!(
                    "{}: \"{f}\" differs from {} ({} vs {}): not parts of one run",
                    p.display(),
                    parts[0].0.display(),
                    v.get(*f).unwrap_or(&Value::Null),
                    parts[0].1.get(*f).unwrap_or(&Value::Null)
                ));
            }
        }
    }
    let n = n.unwrap_or(0);
    let missing: Vec<String> = (0..n)
        .filter(|k| !seen.contains(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing shard(s): {}", missing.join(", ")));
    }
    Ok(())
}

/// The merged matrix of its shards' JSON outputs (see `docs/json.md`).
fn merge_matrix(parts: &[(PathBuf, Value)]) -> Result<Value, String> {
    check_parts(
        parts,
        &[
            "policies",
            "importers",
            "cells-total",
            "schedules",
            "stalled-schedules",
            "strategy",
            "seed",
            "require-safe",
            "proof-budget",
            "proof-jobs",
            "reduced-budget",
            "mix-budget",
            "stall-in-remap",
        ],
    )?;
    let first = &parts[0].1;
    let names = |f: &str| -> Vec<String> {
        first
            .get(f)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (rows, cols) = (names("policies"), names("importers"));
    let order = |v: &Value| -> (usize, usize) {
        let pos = |list: &[String], f: &str| {
            let n = v.get(f).and_then(Value::as_str).unwrap_or("");
            list.iter().position(|x| x == n).unwrap_or(usize::MAX)
        };
        (pos(&rows, "policy"), pos(&cols, "importer"))
    };
    let cell_order = |name: &str| -> (usize, usize) {
        let (p, i) = name.split_once('.').unwrap_or((name, ""));
        let r = rows.iter().position(|x| x == p).unwrap_or(usize::MAX);
        let c = cols.iter().position(|x| x == i).unwrap_or(usize::MAX);
        (r, c)
    };
    let mut cells: Vec<Value> = Vec::new();
    let mut lists: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let (mut runs, mut elapsed, mut partial) = (0u64, 0f64, false);
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for (p, v) in parts {
        let c = v
            .get("cells")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{}: no \"cells\" array", p.display()))?;
        cells.extend(c.iter().cloned());
        for f in ["require-safe-failed", "cells-with-errors"] {
            let l = lists.entry(f).or_default();
            for x in v.get(f).and_then(Value::as_array).into_iter().flatten() {
                l.extend(x.as_str().map(str::to_owned));
            }
        }
        for f in [
            "cells-accepted",
            "cells-proved",
            "cells-decided",
            "cells-decided-reduced",
            "properties-judged",
            "properties-proved",
            "properties-proved-reduced",
        ] {
            *sums.entry(f).or_default() += v.get(f).and_then(Value::as_u64).unwrap_or(0);
        }
        runs += v.get("runs").and_then(Value::as_u64).unwrap_or(0);
        elapsed = elapsed.max(v.get("elapsed-s").and_then(Value::as_f64).unwrap_or(0.0));
        partial |= v.get("partial").and_then(Value::as_bool).unwrap_or(true);
    }
    cells.sort_by_key(order);
    let mut out = first.clone();
    out["cells"] = Value::Array(cells);
    for (f, mut l) in lists {
        l.sort_by_key(|n| cell_order(n));
        out[f] = json!(l);
    }
    for (f, n) in sums {
        out[f] = json!(n);
    }
    out["runs"] = json!(runs);
    // The shards ran side by side: the wall time is the slowest one's.
    out["elapsed-s"] = json!(elapsed);
    out["schedules-per-s"] = json!(if elapsed > 0.0 {
        runs as f64 / elapsed
    } else {
        0.0
    });
    out["partial"] = json!(partial);
    out["shard"] = json!(Shard::ALL.to_string());
    Ok(out)
}

/// The merged check of its shards' JSON outputs: the reports in question
/// order, as the unsharded `check --json` prints them. A question whose
/// search was split (its reports carry `search-split`) is in every part,
/// and its parts are merged into one report ([`merge_search`]).
fn merge_check(parts: &[(PathBuf, Value)]) -> Result<Value, String> {
    check_parts(parts, &["questions"])?;
    let mut reports: BTreeMap<u64, Vec<(usize, Value)>> = BTreeMap::new();
    for (p, v) in parts {
        let k = part_shard(p, v)?.index;
        let r = v
            .get("reports")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{}: no \"reports\" array", p.display()))?;
        for x in r {
            let i = x
                .get("index")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("{}: a report without \"index\"", p.display()))?;
            reports.entry(i).or_default().push((k, x.clone()));
        }
    }
    let questions = parts[0]
        .1
        .get("questions")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let partial = parts
        .iter()
        .any(|(_, v)| v.get("partial").and_then(Value::as_bool).unwrap_or(true));
    let mut r: Vec<Value> = Vec::new();
    for (i, mut group) in reports {
        group.sort_by_key(|g| g.0);
        let split = group.iter().any(|(_, x)| x.get("search-split").is_some());
        let mut x = if split {
            if !partial && group.len() != parts.len() {
                return Err(format!(
                    "question {i}: its search was split, but only {} of the {} parts hold it",
                    group.len(),
                    parts.len()
                ));
            }
            merge_search(&group)?
        } else if group.len() == 1 {
            group.remove(0).1
        } else {
            return Err(format!("question {i} is in {} parts", group.len()));
        };
        if let Some(o) = x.as_object_mut() {
            o.remove("index");
            o.remove("search-split");
        }
        r.push(x);
    }
    if !partial && r.len() as u64 != questions {
        return Err(format!(
            "the shards hold {} reports for {questions} questions",
            r.len()
        ));
    }
    Ok(if questions == 1 && r.len() == 1 {
        r.remove(0)
    } else {
        Value::Array(r)
    })
}

/// The order in which a search names the bounds it hit (the strategies'
/// `bounds_hit`, then `executions`), so that a merged list reads as the
/// unsharded one.
fn bound_rank(b: Bound) -> usize {
    match b {
        Bound::Depth => 0,
        Bound::Steps => 1,
        Bound::Nondeterminism => 2,
        Bound::Executions => 3,
        Bound::Unobserved => 4,
    }
}

/// One question's report from the parts of its split search, `(shard,
/// report)` by shard: counts added, the deepest execution the deepest
/// part's, exhaustive when every part is, the bounds of each mode joined,
/// the counterexample of the lowest shard that has one, and the answers,
/// expectations and verdict computed again from the merged counts, as
/// `check` computes them.
fn merge_search(group: &[(usize, Value)]) -> Result<Value, String> {
    let first = &group[0].1;
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    let num = |v: &Value, f: &str| v.get(f).and_then(Value::as_u64).unwrap_or(0);
    let strings = |v: &Value, f: &str| -> Vec<String> {
        v.get(f)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let scenario = text(first, "scenario");
    for (k, v) in group {
        if text(v, "scenario") != scenario {
            return Err(format!(
                "shard {k} searched '{}', shard {} '{scenario}': not parts of one run",
                text(v, "scenario"),
                group[0].0
            ));
        }
    }
    let partial = group
        .iter()
        .any(|(_, v)| v.get("partial").and_then(Value::as_bool).unwrap_or(true));
    // The bounds each part's search of each mode hit.
    let mut mode_bounds: BTreeMap<String, Vec<Bound>> = BTreeMap::new();
    for (_, v) in group {
        for sp in v
            .get("search-split")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let l = mode_bounds.entry(text(sp, "mode")).or_default();
            for b in strings(sp, "bounds-hit") {
                let b: Bound = b.parse().map_err(|e| format!("bounds-hit: {e}"))?;
                if !l.contains(&b) {
                    l.push(b);
                }
            }
        }
    }
    for l in mode_bounds.values_mut() {
        l.sort_by_key(|b| bound_rank(*b));
    }
    let props = first
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("a report without \"properties\"")?;
    let mut properties = Vec::new();
    // Per property: the part whose counterexample is kept.
    let mut examples: Vec<(String, Option<&Value>)> = Vec::new();
    for name in props.keys() {
        let property: Property = name.parse().map_err(|e| format!("{e}"))?;
        let mut r = PropertyResult {
            property,
            schedules: 0,
            violations: 0,
            strategy: String::new(),
            exhaustive: true,
            bounds_hit: Vec::new(),
            sleep_blocked: 0,
            max_depth: 0,
            // A split search has no estimate (each part knows only its own).
            estimates: Vec::new(),
            counterexample: None,
            proof: None,
        };
        let mut example = None;
        for (k, v) in group {
            let q = v
                .get("properties")
                .and_then(|p| p.get(name))
                .ok_or_else(|| format!("shard {k} has no result for {name}"))?;
            if !q.get("proof").is_none_or(Value::is_null) {
                return Err(format!("shard {k}: {name} has a proof attempt"));
            }
            r.schedules += num(q, "schedules");
            r.violations += num(q, "violations");
            if r.strategy.is_empty() {
                r.strategy = text(q, "strategy");
            }
            r.exhaustive &= q.get("exhaustive").and_then(Value::as_bool) == Some(true);
            r.sleep_blocked += num(q, "sleep-blocked");
            r.max_depth = r.max_depth.max(num(q, "max-depth") as usize);
            if example.is_none() && q.get("replay").is_some() {
                example = Some(q);
            }
        }
        // As `check` joins them: the normal mode's bounds, then the
        // stalled mode's that are new.
        for mode in [RunMode::Normal, RunMode::Stalled] {
            if explore::judged_in(property, mode)
                && let Some(l) = mode_bounds.get(&mode.to_string())
            {
                for &b in l {
                    if !r.bounds_hit.contains(&b) {
                        r.bounds_hit.push(b);
                    }
                }
            }
        }
        examples.push((name.clone(), example));
        properties.push(r);
    }
    let mut errors: Vec<String> = Vec::new();
    for (_, v) in group {
        for e in strings(v, "errors") {
            if errors.len() < 5 && !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    let report = CheckReport {
        scenario,
        refusals: strings(first, "refusals"),
        properties,
        runs: group.iter().map(|(_, v)| num(v, "runs")).sum(),
        errors,
        elapsed_s: group
            .iter()
            .filter_map(|(_, v)| v.get("elapsed-s").and_then(Value::as_f64))
            .fold(0.0, f64::max),
        split: Vec::new(),
    };
    let mut ex = Vec::new();
    for e in first
        .get("expectations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let property: Property = text(e, "property").parse().map_err(|e| format!("{e}"))?;
        let expected: Answer = text(e, "expected")
            .parse()
            .map_err(|e| format!("expectations: {e}"))?;
        let Some(r) = report.properties.iter().find(|r| r.property == property) else {
            continue;
        };
        let found = r.answer();
        ex.push(ExpectationResult {
            property,
            expected,
            found,
            at: text(e, "at"),
            met: explore::meets(expected, found),
        });
    }
    let mut out = report_json(&report, &ex, partial);
    for (name, example) in examples {
        if let Some(q) = example {
            for f in ["hazard", "detail", "replay", "trace-events", "decisions"] {
                out["properties"][&name][f] = q.get(f).cloned().unwrap_or(Value::Null);
            }
        }
    }
    Ok(out)
}

/// `dmabuf merge FILE...`.
fn merge(files: &[PathBuf], json: bool) -> ExitCode {
    let mut parts = Vec::new();
    for f in files {
        match read_json(f) {
            Ok(v) => parts.push((f.clone(), v)),
            Err(e) => return usage_error(e),
        }
    }
    let is_matrix = |v: &Value| v.get("cells").is_some();
    let is_check = |v: &Value| v.get("reports").is_some() && v.get("questions").is_some();
    let merged = if parts.iter().all(|(_, v)| is_matrix(v)) {
        merge_matrix(&parts)
    } else if parts.iter().all(|(_, v)| is_check(v)) {
        merge_check(&parts)
    } else {
        Err(
            "every file must be the --json output of one `matrix --shard` or `check --shard` run"
                .into(),
        )
    };
    let merged = match merged {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let list = |f: &str| -> Vec<String> {
        merged
            .get(f)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (partial, failed) = if is_matrix(&merged) {
        let bad: Vec<String> = list("require-safe-failed")
            .into_iter()
            .chain(list("cells-with-errors"))
            .collect();
        (
            merged
                .get("partial")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            !bad.is_empty(),
        )
    } else {
        let reports: Vec<&Value> = match &merged {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        (
            reports
                .iter()
                .any(|r| r.get("partial").and_then(Value::as_bool).unwrap_or(true)),
            reports
                .iter()
                .any(|r| r.get("verdict").and_then(Value::as_str) != Some("ok")),
        )
    };
    if json {
        println!("{merged}");
    } else if is_matrix(&merged) {
        let n = |f: &str| merged.get(f).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "merged {} shards: {} cells ({} accepted, {} proved in full, {} decided, {} more with proofs of the smallest configuration; {} of {} property verdicts proved, {} more for the smallest configuration), {} runs",
            parts.len(),
            merged
                .get("cells")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            n("cells-accepted"),
            n("cells-proved"),
            n("cells-decided"),
            n("cells-decided-reduced"),
            n("properties-proved"),
            n("properties-judged"),
            n("properties-proved-reduced"),
            n("runs"),
        );
        for c in merged
            .get("cells")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = format!(
                "{}.{}",
                c.get("policy").and_then(Value::as_str).unwrap_or(""),
                c.get("importer").and_then(Value::as_str).unwrap_or("")
            );
            let Some(props) = c.get("properties").and_then(Value::as_object) else {
                println!("  {name:<48} refused");
                continue;
            };
            let words: Vec<String> = props
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.get("verdict").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect();
            println!("  {name:<48} {}", words.join(" "));
        }
        for f in ["require-safe-failed", "cells-with-errors"] {
            let l = list(f);
            if !l.is_empty() {
                println!("{f}: {}", l.join(", "));
            }
        }
    } else {
        let reports: Vec<&Value> = match &merged {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        println!("merged {} shards: {} reports", parts.len(), reports.len());
        for r in reports {
            println!(
                "  {:<48} {}",
                r.get("scenario").and_then(Value::as_str).unwrap_or(""),
                r.get("verdict").and_then(Value::as_str).unwrap_or("?")
            );
        }
    }
    if partial {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if failed {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

/// Prints `events` in `format` (text: the rows only).
fn print_trace(events: &[dmabuf_core::trace::Event], format: TraceFormat, title: &str) {
    match format {
        TraceFormat::Text => {
            for e in events {
                println!("{e}");
            }
        }
        TraceFormat::Perfetto => {
            println!("{}", dmabuf_report::perfetto::chrome_json(events, title));
        }
        TraceFormat::Ftrace => print!("{}", dmabuf_report::ftrace::render(events)),
    }
}

fn replay(lib: &Library, text: &str, json: bool, format: TraceFormat) -> ExitCode {
    let t: ReplayToken = match text.parse() {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    if token::is_legacy(text) {
        eprintln!("dmabuf: note: a dmabuf2 token carries no check; its current form is {t}");
    }
    let (run, verdicts) = match explore::replay(lib, &t) {
        Ok(x) => x,
        Err(e) => return usage_error(e),
    };
    if let Some(d) = &run.report.divergence {
        // The run is not the recorded one: its verdicts would describe
        // some other schedule, so none is printed.
        return usage_error(format!(
            "replay diverged: the schedule does not fit scenario {} in {} mode ({d}); no verdicts",
            t.scenario, t.mode
        ));
    }
    let violated = verdicts.iter().any(|(_, v)| v.is_some());
    let errors = explore::run_errors(&run);
    let events = &run.report.trace;
    let deadlock = dmabuf_checker::tracefmt::deadlock_lines(&run.report.outcome, events);
    let with_rows = |v: &Option<explore::Violation>| {
        v.as_ref().map(|v| explore::Violation {
            hazard: v
                .hazard
                .as_ref()
                .map(|h| dmabuf_checker::tracefmt::hazard_with_row(events, h)),
            detail: v.detail.clone(),
        })
    };
    let verdicts: Vec<(Property, Option<explore::Violation>)> =
        verdicts.iter().map(|(p, v)| (*p, with_rows(v))).collect();
    if json {
        let v = json!({
            "token": t.to_string(),
            "scenario": t.scenario,
            "mode": t.mode.to_string(),
            "outcome": outcome_name(&run.report.outcome),
            "blocked": deadlock,
            "trace": events.iter().map(dmabuf_checker::tracefmt::event_json).collect::<Vec<_>>(),
            "verdicts": verdicts.iter().map(|(p, v)| (p.name().to_owned(), verdict_json(v.as_ref()))).collect::<serde_json::Map<String, Value>>(),
            "errors": errors,
        });
        println!("{v}");
    } else if format != TraceFormat::Text {
        print_trace(events, format, &format!("{} ({}) {t}", t.scenario, t.mode));
        eprintln!("outcome: {}", outcome_name(&run.report.outcome));
        for (p, v) in &verdicts {
            if let Some(v) = v {
                eprintln!("  {:<12} VIOLATED: {}", p.name(), v.detail);
            }
        }
    } else {
        let outcome = outcome_name(&run.report.outcome);
        for l in dmabuf_checker::tracefmt::header(
            &t.scenario,
            &t.mode.to_string(),
            &t.to_string(),
            outcome,
        ) {
            println!("{l}");
        }
        print_trace(events, format, "");
        println!("\noutcome: {outcome}");
        for l in &deadlock {
            println!("  {l}");
        }
        print_verdicts(&verdicts, "on this schedule");
        for e in &errors {
            println!("  error: {e}");
        }
    }
    if violated || !errors.is_empty() {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::from(EXIT_OK)
    }
}

fn fences_demo(count: u64, waiters: usize) -> ExitCode {
    if count == 0 || count > MAX_FENCES {
        return usage_error(format!("--count {count}: give 1 to {MAX_FENCES} fences"));
    }
    if waiters > MAX_WAITERS {
        return usage_error(format!(
            "--waiters {waiters}: give 0 to {MAX_WAITERS} waiters"
        ));
    }
    let ctx = FenceContext::named("demo-gpu", "ring0");
    let (fences, handles): (Vec<_>, Vec<_>) = (0..count).map(|_| ctx.create()).unzip();
    let fences = Arc::new(fences);
    println!(
        "timeline ring0 (context {}): {count} fences, {waiters} waiters",
        ctx.context()
    );
    let mut joins = Vec::new();
    for w in 0..waiters {
        let fences = fences.clone();
        joins.push(thread::spawn_named(format!("waiter{w}"), move || {
            let mut seen = Vec::new();
            for f in fences.iter() {
                let t0 = dmabuf_core::sync::time::now_ns();
                let r = f.wait_timeout(None, MAX_SCHEDULE_TIMEOUT);
                let waited = dmabuf_core::sync::time::now_ns().saturating_sub(t0);
                seen.push((f.seqno(), r.is_ok(), f.get_status(), waited));
            }
            seen
        }));
    }
    let signaller = thread::spawn_named("signaller".into(), move || {
        for (i, h) in handles.into_iter().enumerate() {
            // Every third fence fails, to show error propagation.
            let r = if i % 3 == 2 {
                h.signal_with_error(dmabuf_core::errno::EIO.to_negative())
            } else {
                h.signal()
            };
            if let Err(e) = r {
                eprintln!("signal failed: {e}");
            }
            thread::sleep(std::time::Duration::from_micros(200));
        }
    });
    if signaller.join().is_err() {
        eprintln!("signaller panicked");
        return ExitCode::from(EXIT_VIOLATION);
    }
    let mut ok = true;
    for (w, j) in joins.into_iter().enumerate() {
        match j.join() {
            Ok(seen) => {
                for (seqno, waited_ok, status, ns) in seen {
                    println!(
                        "waiter{w}: fence {}:{seqno} signalled (wait ok={waited_ok}) status={status} after {:.1} us",
                        ctx.context(),
                        ns as f64 / 1000.0
                    );
                    ok &= waited_ok;
                }
            }
            Err(_) => {
                eprintln!("waiter{w} panicked");
                ok = false;
            }
        }
    }
    for f in fences.iter() {
        println!("{}", f.describe());
    }
    if ok {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_VIOLATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_names_are_the_cli_words() {
        assert_eq!(kebab("VramEviction"), "vram-eviction");
        assert_eq!(kebab("Flr"), "flr");
        assert_eq!(kebab("writes_after_fences"), "writes-after-fences");
        assert_eq!(kebab("already-kebab"), "already-kebab");
    }

    #[test]
    fn estimates_are_shown_to_two_significant_digits() {
        assert_eq!(about(0), "0");
        assert_eq!(about(95), "95");
        assert_eq!(about(1_909), "1,900");
        assert_eq!(about(999), "1,000");
        assert_eq!(about(6_249_999), "6,200,000");
        assert_eq!(about(6_250_000), "6,300,000");
        assert_eq!(about(u64::MAX), "18,000,000,000,000,000,000");
    }

    #[test]
    fn progress_shows_each_search_size_or_else_the_run() {
        let t = |normal, stalled| explore::Tick {
            runs: 1_234,
            normal,
            stalled,
        };
        assert_eq!(tick_detail(&t(None, None)), "run 1234");
        assert_eq!(
            tick_detail(&t(Some(4_123_456), Some(239_000))),
            "search ≈ 4,100,000 normal, 240,000 stalled"
        );
        assert_eq!(tick_detail(&t(None, Some(20))), "search ≈ 20 stalled");
    }

    #[test]
    fn budgets_that_mean_nothing_are_refused() {
        assert!(check_budget(0, None, StrategyArg::Pct).is_err());
        assert!(check_budget(10, Some(0), StrategyArg::Pct).is_err());
        assert!(check_budget(10, Some(0), StrategyArg::Dfs).is_err());
        assert!(check_budget(10, Some(u32::MAX), StrategyArg::Dfs).is_err());
        assert!(check_budget(10, Some(3), StrategyArg::Random).is_err());
        assert!(check_budget(MAX_SCHEDULES + 1, None, StrategyArg::Pct).is_err());
        assert!(check_budget(10, Some(3), StrategyArg::Pct).is_ok());
        assert!(check_budget(1, None, StrategyArg::Random).is_ok());
    }
}
