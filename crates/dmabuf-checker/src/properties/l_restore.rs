//! `l-restore`: the exporter comes back. After an un-revoke, every
//! importer that by design uses the buffer again (not a pinned revocable
//! MR, revoked for good) can map again and its next job runs; and no
//! un-revoke is refused. Judged on normal runs of worlds with a cycle
//! (every matrix cell): a stalled userspace never gets to try.

use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;

/// The property.
pub struct LRestore;

impl Check for LRestore {
    fn name(&self) -> &'static str {
        "l-restore"
    }
    fn code(&self) -> char {
        'R'
    }
    fn describe(&self) -> &'static str {
        "after an un-revoke, every importer that maps again can, and its next job runs"
    }
    fn judged_in(&self, mode: RunMode) -> bool {
        mode == RunMode::Normal
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        let obs = run.obs.as_ref()?;
        let refused = obs.counters.get("unrevoke_refused").copied().unwrap_or(0);
        if refused > 0 {
            return Some(Violation {
                hazard: None,
                detail: format!("{refused} un-revoke(s) refused: the buffer stays revoked"),
            });
        }
        obs.restores
            .iter()
            .find(|r| r.expected && !r.job_ok)
            .map(|r| Violation {
                hazard: None,
                detail: format!(
                    "{} could not use the buffer again after the un-revoke ({})",
                    r.importer,
                    if r.remap_ok {
                        "its next job failed"
                    } else {
                        "its re-map was refused"
                    }
                ),
            })
    }
}
