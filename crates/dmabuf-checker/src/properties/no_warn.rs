//! `no-warn`: the kernel printed no WARN. The exporter's live-mapping count
//! has `refcount_t` semantics (an underflow or an addition on zero WARNs
//! and saturates), and a timed-out wait for the importers' unmap WARNs as
//! v5 did; either is a finding even when no access goes wrong.

use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;

/// The property.
pub struct NoWarn;

impl Check for NoWarn {
    fn name(&self) -> &'static str {
        "no-warn"
    }
    fn code(&self) -> char {
        'W'
    }
    fn describe(&self) -> &'static str {
        "the kernel prints no WARN (refcount_t saturation, a timed-out unmap wait)"
    }
    fn judged_in(&self, _mode: RunMode) -> bool {
        true
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        let obs = run.obs.as_ref()?;
        obs.warnings.first().map(|w| Violation {
            hazard: None,
            detail: w.clone(),
        })
    }
}
