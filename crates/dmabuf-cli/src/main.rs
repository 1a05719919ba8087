//! `dmabuf`: the command-line front end.
//!
//! | command | what |
//! |---|---|
//! | `scenarios` | list and describe the built-in scenarios |
//! | `run SCENARIO` | one run on real threads with real timing |
//! | `check SCENARIO` | explore schedules; exit 0 if every property holds, 1 on a violation, 2 on bad usage |
//! | `matrix` | every revoke policy × importer kind |
//! | `replay TOKEN` | re-run one schedule exactly and print its trace |
//! | `fences` | a small demonstration of the fence core on real threads |

use clap::{Parser, Subcommand};
use dmabuf_checker::explore::{self, CheckOptions, CheckReport, PropertyResult};
use dmabuf_checker::matrix::{self, Matrix};
use dmabuf_checker::progress::Progress;
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario;
use dmabuf_checker::token::{ReplayToken, StrategyKind};
use dmabuf_core::sync::{Arc, thread};
use dmabuf_core::{FenceContext, MAX_SCHEDULE_TIMEOUT};
use dmabuf_drivers::policy::RevokePolicy;
use dmabuf_drivers::world::{ImporterKind, StallMode, run_world};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dmabuf",
    version,
    about = "Linux 7.1 dma-buf revoke, in userspace Rust: which revoke sequence is safe with which importer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum StrategyArg {
    Pct,
    Random,
    Dfs,
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
        /// Scenario name (see `dmabuf scenarios`).
        scenario: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Print the event trace.
        #[arg(long)]
        trace: bool,
    },
    /// Explore schedules and judge every property.
    Check {
        /// Scenario name.
        scenario: String,
        /// Exploration strategy.
        #[arg(long, value_enum, default_value = "pct")]
        strategy: StrategyArg,
        /// Normal-mode schedules (DFS: at most this many executions).
        #[arg(long, default_value_t = 100)]
        schedules: u64,
        /// PCT depth, or the DFS decision bound.
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
    },
    /// Every revoke policy × importer kind.
    Matrix {
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
        /// Exit 1 if this policy violates any property for an accepted
        /// importer (other than those given with --allow-unsafe).
        #[arg(long)]
        require_safe: Option<String>,
        /// Importer kinds exempt from --require-safe (comma-separated).
        #[arg(long, value_delimiter = ',')]
        allow_unsafe: Vec<String>,
    },
    /// Re-run one schedule exactly and print its trace.
    Replay {
        /// A token printed by `check` or `matrix`.
        token: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Signal fences from one thread while others wait on them.
    Fences {
        /// Number of fences on the timeline.
        #[arg(long, default_value_t = 8)]
        count: u64,
        /// Number of waiting threads.
        #[arg(long, default_value_t = 2)]
        waiters: usize,
    },
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("dmabuf: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Scenarios { json } => scenarios(json),
        Cmd::Run {
            scenario,
            json,
            trace,
        } => run(&scenario, json, trace),
        Cmd::Check {
            scenario,
            strategy,
            schedules,
            depth,
            seed,
            properties,
            json,
            quiet,
        } => {
            let mut props = Vec::new();
            for p in &properties {
                match p.parse::<Property>() {
                    Ok(p) => props.push(p),
                    Err(e) => return usage_error(e),
                }
            }
            if props.is_empty() {
                props = Property::ALL.to_vec();
            }
            let strategy = match strategy {
                StrategyArg::Pct => StrategyKind::Pct(depth.unwrap_or(3).max(1)),
                StrategyArg::Random => StrategyKind::Random,
                StrategyArg::Dfs => StrategyKind::Dfs,
            };
            let opts = CheckOptions {
                strategy,
                schedules,
                stalled_schedules: (schedules / 4).max(1),
                seed,
                dfs_bound: depth.unwrap_or(12) as usize,
                properties: props,
                shrink: true,
            };
            check(&scenario, &opts, json, quiet)
        }
        Cmd::Matrix {
            schedules,
            seed,
            json,
            quiet,
            require_safe,
            allow_unsafe,
        } => {
            let require = match require_safe.map(|s| s.parse::<RevokePolicy>()).transpose() {
                Ok(r) => r,
                Err(e) => return usage_error(e),
            };
            let mut allow = Vec::new();
            for k in &allow_unsafe {
                match k.parse::<ImporterKind>() {
                    Ok(k) => allow.push(k),
                    Err(e) => return usage_error(e),
                }
            }
            let opts = CheckOptions {
                schedules,
                stalled_schedules: (schedules / 4).max(1),
                seed,
                ..CheckOptions::default()
            };
            run_matrix(&opts, json, quiet, require, &allow)
        }
        Cmd::Replay { token, json } => replay(&token, json),
        Cmd::Fences { count, waiters } => fences_demo(count, waiters),
    }
}

fn scenarios(json: bool) -> ExitCode {
    let all = scenario::builtins();
    if json {
        let v: Vec<Value> = all
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "description": s.description,
                    "exporter": format!("{:?}", s.spec.exporter),
                    "policy": s.spec.policy.name(),
                    "importers": s.spec.importers.iter().map(|i| json!({"kind": i.kind.name(), "count": i.count})).collect::<Vec<_>>(),
                    "trigger": format!("{:?}", s.spec.trigger),
                })
            })
            .collect();
        println!("{}", Value::Array(v));
    } else {
        for s in &all {
            println!("{:<40} {}", s.name, s.description);
        }
        println!("\nrevoke policies:");
        for p in RevokePolicy::ALL {
            println!("  {:<20} {}", p.name(), p.describe());
        }
        println!("\nproperties:");
        for p in Property::ALL {
            println!("  {:<12} {}", p.name(), p.describe());
        }
    }
    ExitCode::SUCCESS
}

fn run(name: &str, json: bool, trace: bool) -> ExitCode {
    let sc = match scenario::find(name) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    if trace {
        dmabuf_core::trace::set_enabled(true);
    }
    let t0 = std::time::Instant::now();
    let obs = run_world(&sc.spec, StallMode::Normal);
    let wall = t0.elapsed();
    let events = if trace {
        dmabuf_core::trace::take()
    } else {
        Vec::new()
    };
    let latency_us = obs.revoke_latency_ns.map(|n| n as f64 / 1000.0);
    if json {
        let v = json!({
            "scenario": sc.name,
            "revoke_latency_us": latency_us,
            "revoke_returned": obs.revoke_returned,
            "hazards": obs.hazards.iter().map(|h| json!({
                "class": h.class.name(), "accessor": h.accessor, "kind": format!("{:?}", h.kind),
                "addr": h.addr, "speculative": h.speculative, "seq": h.seq, "detail": h.detail,
                "text": h.to_string(),
            })).collect::<Vec<_>>(),
            "refusals": obs.refusals.iter().map(|r| json!({"importer": r.importer, "stage": r.stage, "errno": dmabuf_core::errno::name(r.errno)})).collect::<Vec<_>>(),
            "counters": obs.counters,
            "leaks": obs.leaks,
            "errors": obs.errors,
            "wall_ms": wall.as_secs_f64() * 1000.0,
            "trace": events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!("scenario {}: {}", sc.name, sc.description);
        match latency_us {
            Some(us) => println!("revoke latency: {us:.1} us (real threads)"),
            None => println!("revoke: did not return"),
        }
        for r in &obs.refusals {
            println!(
                "refused: {} at {} ({})",
                r.importer,
                r.stage,
                dmabuf_core::errno::name(r.errno)
            );
        }
        println!("hazards: {}", obs.hazards.len());
        for h in &obs.hazards {
            println!("  {h}");
        }
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
        println!("wall time: {:.1} ms", wall.as_secs_f64() * 1000.0);
    }
    if obs.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn prop_json(p: &PropertyResult) -> Value {
    let mut v = json!({
        "result": if p.holds() { "holds" } else { "violated" },
        "schedules": p.schedules,
        "violations": p.violations,
        "strategy": p.strategy,
        "exhaustive": p.exhaustive,
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
        v["trace_events"] = json!(c.trace_len);
    }
    v
}

fn report_json(r: &CheckReport) -> Value {
    let props: serde_json::Map<String, Value> = r
        .properties
        .iter()
        .map(|p| (p.property.name().to_owned(), prop_json(p)))
        .collect();
    json!({
        "scenario": r.scenario,
        "refusals": r.refusals,
        "properties": props,
        "runs": r.runs,
        "errors": r.errors,
        "elapsed_s": r.elapsed_s,
        "all_hold": r.all_hold(),
    })
}

fn print_report(r: &CheckReport) {
    println!(
        "scenario {}: {} runs in {:.1}s",
        r.scenario, r.runs, r.elapsed_s
    );
    for x in &r.refusals {
        println!("  refused: {x}");
    }
    for p in &r.properties {
        let how = if p.exhaustive {
            format!("exhaustive over {} schedules, {}", p.schedules, p.strategy)
        } else {
            format!("{} schedules, {}", p.schedules, p.strategy)
        };
        if p.holds() {
            println!("  {:<12} holds      ({how})", p.property.name());
        } else {
            println!(
                "  {:<12} VIOLATED   ({} of {how})",
                p.property.name(),
                p.violations
            );
            if let Some(c) = &p.counterexample {
                println!("      {}", c.violation.detail);
                if let Some(h) = &c.violation.hazard {
                    println!("      hazard: {h}");
                }
                println!("      replay: dmabuf replay {}", c.token);
                println!(
                    "      ({} trace events, {} decisions after shrinking)",
                    c.trace_len, c.decisions
                );
            }
        }
    }
    for e in &r.errors {
        println!("  error: {e}");
    }
}

fn check(name: &str, opts: &CheckOptions, json: bool, quiet: bool) -> ExitCode {
    let sc = match scenario::find(name) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let total = opts.schedules
        + if opts.properties.contains(&Property::LBounded) {
            opts.stalled_schedules
        } else {
            0
        };
    let mut bar = Progress::new("check", total, quiet || json);
    let r = explore::check(&sc, opts, |n| bar.inc(1, &format!("run {n}")));
    bar.finish();
    if json {
        println!("{}", report_json(&r));
    } else {
        print_report(&r);
    }
    if r.all_hold() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_matrix(
    opts: &CheckOptions,
    json: bool,
    quiet: bool,
    require: Option<RevokePolicy>,
    allow: &[ImporterKind],
) -> ExitCode {
    let total = (RevokePolicy::ALL.len() * ImporterKind::ALL.len()) as u64;
    let mut bar = Progress::new("matrix", total, quiet || json);
    let m: Matrix = matrix::run_matrix(opts, |_, _, name| bar.inc(1, name));
    bar.finish();
    let mut failed = Vec::new();
    if let Some(p) = require {
        for c in m
            .cells
            .iter()
            .filter(|c| c.variant == p && c.refused.is_none() && !allow.contains(&c.importer))
        {
            if !c.report.all_hold() {
                failed.push(format!("{}.{}", c.variant, c.importer));
            }
        }
    }
    if json {
        let cells: Vec<Value> = m
            .cells
            .iter()
            .map(|c| {
                let mut v = json!({
                    "variant": c.variant.name(),
                    "importer": c.importer.name(),
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
            .collect();
        println!(
            "{}",
            json!({
                "cells": cells,
                "elapsed_s": m.elapsed_s,
                "schedules_per_s": m.schedules_per_s(),
                "runs": m.runs,
                "require_safe_failed": failed,
            })
        );
    } else {
        print!("{}", matrix::render(&m));
        println!(
            "\n{} controlled runs in {:.1}s ({:.1} schedules/s); {} normal + {} stalled schedules per accepted cell, {}",
            m.runs,
            m.elapsed_s,
            m.schedules_per_s(),
            opts.schedules,
            opts.stalled_schedules,
            opts.strategy
        );
        for c in &m.cells {
            for p in c.report.properties.iter().filter(|p| !p.holds()) {
                if let Some(ce) = &p.counterexample {
                    println!(
                        "{}.{} {}: {}",
                        c.variant, c.importer, p.property, ce.violation.detail
                    );
                    println!("    dmabuf replay {}", ce.token);
                }
            }
        }
        if !failed.is_empty() {
            println!("\nrequired-safe policy violated for: {}", failed.join(", "));
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay(token: &str, json: bool) -> ExitCode {
    let t: ReplayToken = match token.parse() {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    let (run, verdicts) = match explore::replay(&t) {
        Ok(x) => x,
        Err(e) => return usage_error(e),
    };
    let violated = verdicts.iter().any(|(_, v)| v.is_some());
    if json {
        let v = json!({
            "token": t.to_string(),
            "outcome": format!("{:?}", run.report.outcome),
            "trace": run.report.trace.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "verdicts": verdicts.iter().map(|(p, v)| (p.name().to_owned(), json!(match v {
                None => json!({"result": "holds"}),
                Some(v) => json!({"result": "violated", "detail": v.detail, "hazard": v.hazard}),
            }))).collect::<serde_json::Map<String, Value>>(),
            "errors": explore::run_errors(&run),
        });
        println!("{v}");
    } else {
        for e in &run.report.trace {
            println!("{e}");
        }
        println!("\noutcome: {:?}", run.report.outcome);
        for (p, v) in &verdicts {
            match v {
                None => println!("  {:<12} holds on this schedule", p.name()),
                Some(v) => {
                    println!("  {:<12} VIOLATED: {}", p.name(), v.detail);
                    if let Some(h) = &v.hazard {
                        println!("      hazard: {h}");
                    }
                }
            }
        }
        for e in explore::run_errors(&run) {
            println!("  error: {e}");
        }
    }
    if violated {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fences_demo(count: u64, waiters: usize) -> ExitCode {
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
                let waited = dmabuf_core::sync::time::now_ns() - t0;
                seen.push((f.seqno(), r.is_ok(), f.get_status(), waited));
            }
            seen
        }));
    }
    let signaller = thread::spawn_named("signaller".into(), move || {
        for (i, h) in handles.into_iter().enumerate() {
            // Every third fence fails, to show error propagation.
            let r = if i % 3 == 2 {
                h.signal_with_error(-dmabuf_core::errno::EIO)
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
        return ExitCode::FAILURE;
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
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
