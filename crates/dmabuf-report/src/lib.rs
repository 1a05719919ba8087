//! Counterexamples people look at.
//!
//! | module | what it makes | from |
//! |---|---|---|
//! | [`links`] | the causal arrows of a trace: invalidate → importer callback, invalidate → unmap, fence signal → waiter wake-up; the revoke's start and return; hazards | a replayed run's [`Event`](dmabuf_core::trace::Event)s |
//! | [`perfetto`] | Chrome trace-event JSON (a track per task, flow events, instant events for hazards) that ui.perfetto.dev and chrome://tracing open | events + [`links`] |
//! | [`ftrace`] | text in the `trace-cmd report` layout, kernel tracepoint names | events |
//! | [`msc`] | one message sequence chart as inline SVG | events + [`links`] |
//! | [`html`] | one self-contained HTML file: the matrix grid and a chart per counterexample | a `matrix --json` or `check --json` result and replays of its tokens |
//!
//! Nothing here schedules anything: the events come from
//! `dmabuf_checker::explore::replay`, which replays a token exactly;
//! formatting reads the finished log.

pub mod ftrace;
pub mod html;
pub mod links;
pub mod msc;
pub mod perfetto;

use dmabuf_checker::explore;
use dmabuf_checker::scenario::Library;
use dmabuf_checker::token::ReplayToken;
use dmabuf_core::sync::sched::Outcome;

/// The outcome's name, as `replay` prints it.
pub fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::CompletedWithStalled { .. } => "completed-with-stalled",
        Outcome::Deadlock { .. } => "deadlock",
        Outcome::StepLimit => "step-limit",
    }
}

/// Replays `token` against `lib` (tracing on) for the report.
pub fn replay_token(lib: &Library, token: &str) -> Result<html::Replayed, String> {
    let t: ReplayToken = token.parse().map_err(|e| format!("{e}"))?;
    let (run, _) = explore::replay(lib, &t).map_err(|e| e.to_string())?;
    if let Some(d) = &run.report.divergence {
        return Err(format!("replay diverged: {d}"));
    }
    let events = run.report.trace;
    Ok(html::Replayed {
        scenario: t.scenario.clone(),
        mode: t.mode.to_string(),
        outcome: outcome_name(&run.report.outcome).to_owned(),
        deadlock: dmabuf_checker::tracefmt::deadlock_lines(&run.report.outcome, &events),
        events,
    })
}
