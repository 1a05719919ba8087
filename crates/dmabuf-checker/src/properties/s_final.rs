//! `s-final`: once revoke returns, no access of any kind reaches the
//! exporter's memory and no mapping of it is outstanding; judged for every
//! revoke of the run (until the un-revoke that follows it).

use super::hazard;
use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;
use dmabuf_platform::HazardClass;

/// The property.
pub struct SFinal;

impl Check for SFinal {
    fn name(&self) -> &'static str {
        "s-final"
    }
    fn code(&self) -> char {
        'X'
    }
    fn describe(&self) -> &'static str {
        "after revoke returns, no access reaches the exporter's memory and no mapping is outstanding"
    }
    fn judged_in(&self, _mode: RunMode) -> bool {
        true
    }
    /// Judged from the monitor's hazards, among them an access after the revoke returned: a speculative read is one.
    fn judged_from_speculation(&self) -> bool {
        true
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        if let Some(v) = hazard(
            run,
            &|h| h.class == HazardClass::AccessAfterRevoke,
            "an access reached the exporter's memory after revoke returned",
        ) {
            return Some(v);
        }
        let obs = run.obs.as_ref()?;
        // Every revoke of the run (a cycle revokes several times).
        if let Some((i, r)) = obs
            .revokes
            .iter()
            .enumerate()
            .find(|(_, r)| r.returned && r.live_mappings_at_return > 0)
        {
            return Some(Violation {
                hazard: None,
                detail: format!(
                    "{} mapping(s) still outstanding when revoke {} of {} returned",
                    r.live_mappings_at_return,
                    i + 1,
                    obs.revokes.len()
                ),
            });
        }
        (obs.revoke_returned && obs.live_mappings_at_return > 0).then(|| Violation {
            hazard: None,
            detail: format!(
                "{} mapping(s) still outstanding when revoke returned",
                obs.live_mappings_at_return
            ),
        })
    }
}
