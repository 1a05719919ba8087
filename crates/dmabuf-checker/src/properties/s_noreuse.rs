//! `s-noreuse`: the exporter never frees, powers down, resets or hands to
//! another device memory that is still mapped.

use super::hazard;
use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;
use dmabuf_platform::HazardClass;

/// The property.
pub struct SNoreuse;

impl Check for SNoreuse {
    fn name(&self) -> &'static str {
        "s-noreuse"
    }
    fn code(&self) -> char {
        'N'
    }
    fn describe(&self) -> &'static str {
        "memory is never freed, powered down, reset or re-assigned while mapped"
    }
    fn judged_in(&self, _mode: RunMode) -> bool {
        true
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        hazard(
            run,
            &|h| {
                matches!(
                    h.class,
                    HazardClass::UseAfterFree | HazardClass::Aer | HazardClass::MisdirectedDma
                )
            },
            "memory was freed, powered down, reset or re-assigned while still mapped",
        )
    }
}
