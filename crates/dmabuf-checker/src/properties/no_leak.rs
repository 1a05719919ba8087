//! `no-leak`: every buffer released and every attachment detached at the
//! end of a normal run that completed.

use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;
use dmabuf_core::sync::sched::Outcome;

/// The property.
pub struct NoLeak;

impl Check for NoLeak {
    fn name(&self) -> &'static str {
        "no-leak"
    }
    fn code(&self) -> char {
        'K'
    }
    fn describe(&self) -> &'static str {
        "every buffer is released and every attachment detached at the end"
    }
    fn judged_in(&self, mode: RunMode) -> bool {
        mode == RunMode::Normal
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        if run.report.outcome != Outcome::Completed {
            return None;
        }
        let obs = run.obs.as_ref()?;
        (!obs.leaks.is_empty()).then(|| Violation {
            hazard: None,
            detail: obs.leaks.join("; "),
        })
    }
}
