//! `l-bounded`: revoke completes even when userspace is stalled from the
//! moment revoke begins (judged on the dedicated stalled runs only).

use crate::explore::{RunOutcome, Violation, outcome_detail};
use crate::property::Check;
use crate::token::RunMode;

/// The property.
pub struct LBounded;

impl Check for LBounded {
    fn name(&self) -> &'static str {
        "l-bounded"
    }
    fn code(&self) -> char {
        'L'
    }
    fn describe(&self) -> &'static str {
        "revoke completes with userspace stalled from the moment it begins"
    }
    fn judged_in(&self, mode: RunMode) -> bool {
        mode == RunMode::Stalled
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        // Only a revoke that began can fail to be bounded: worlds whose
        // exporter never revokes have nothing to judge here.
        let started = run.obs.as_ref().is_none_or(|o| o.revoke_started);
        let returned = run.obs.as_ref().is_some_and(|o| o.revoke_returned);
        // Every revoke that began must return (a cycle revokes several
        // times; the search chooses which one userspace stalls at).
        let stuck = run.obs.as_ref().and_then(|o| {
            o.revokes
                .iter()
                .position(|r| !r.returned)
                .map(|i| (i + 1, o.revokes.len()))
        });
        if let Some((i, n)) = stuck {
            return Some(Violation {
                hazard: None,
                detail: format!(
                    "revoke {i} of {n} did not complete with userspace stalled ({})",
                    outcome_detail(&run.report.outcome)
                ),
            });
        }
        (started && !returned).then(|| Violation {
            hazard: None,
            detail: format!(
                "revoke did not complete with userspace stalled ({})",
                outcome_detail(&run.report.outcome)
            ),
        })
    }
}
