//! `s-fence`: once revoke returns, no write reaches the exporter's memory
//! (a write after the revoke, or a write that the monitor saw land after
//! the revoke's fence point).

use super::{after_return, hazard};
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
        "after revoke returns, no write reaches the exporter's memory"
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
                    && after_return(run, h.seq)
            },
            "a write reached the exporter's memory after revoke returned",
        )
    }
}
