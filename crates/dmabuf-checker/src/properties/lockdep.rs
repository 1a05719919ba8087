//! `lockdep`: the lock validator reported nothing.

use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;

/// The property.
pub struct Lockdep;

impl Check for Lockdep {
    fn name(&self) -> &'static str {
        "lockdep"
    }
    fn code(&self) -> char {
        'V'
    }
    fn describe(&self) -> &'static str {
        "the lock validator reports nothing"
    }
    fn judged_in(&self, _mode: RunMode) -> bool {
        true
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        (!run.lockdep.is_empty()).then(|| Violation {
            hazard: None,
            detail: run.lockdep.join("; "),
        })
    }
}
