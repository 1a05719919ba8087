//! `s-fence`: once a revoke's fence wait has completed, no write reaches the
//! exporter's memory: not while the exporter then waits for the unmaps,
//! not after the revoke returned (until the un-revoke that follows). The
//! monitor records such a write as `WriteAfterFences` (and, after the
//! return, `AccessAfterRevoke` too).

use super::{after_fences, hazard};
use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;
use dmabuf_platform::{AccessKind, HazardClass};

/// The property.
pub struct SFence;

impl Check for SFence {
    fn name(&self) -> &'static str {
        "s-fence"
    }
    fn code(&self) -> char {
        'F'
    }
    fn describe(&self) -> &'static str {
        "once the revoke's fence wait completed, no write reaches the exporter's memory"
    }
    fn judged_in(&self, _mode: RunMode) -> bool {
        true
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        hazard(
            run,
            &|h| {
                h.kind == AccessKind::Write
                    && matches!(
                        h.class,
                        HazardClass::AccessAfterRevoke | HazardClass::WriteAfterFences
                    )
                    && after_fences(run, h.seq)
            },
            "a write reached the exporter's memory after the revoke's fence wait completed",
        )
    }
}
