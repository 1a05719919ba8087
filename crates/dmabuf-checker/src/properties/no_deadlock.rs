//! `no-deadlock`: the run ends with every task finished (normal runs).

use crate::explore::{RunOutcome, Violation, outcome_detail};
use crate::property::Check;
use crate::token::RunMode;
use dmabuf_core::sync::sched::Outcome;

/// The property.
pub struct NoDeadlock;

impl Check for NoDeadlock {
    fn name(&self) -> &'static str {
        "no-deadlock"
    }
    fn code(&self) -> char {
        'D'
    }
    fn describe(&self) -> &'static str {
        "every task finishes"
    }
    fn judged_in(&self, mode: RunMode) -> bool {
        mode == RunMode::Normal
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        match &run.report.outcome {
            Outcome::Completed => None,
            o => Some(Violation {
                hazard: None,
                detail: outcome_detail(o),
            }),
        }
    }
}
