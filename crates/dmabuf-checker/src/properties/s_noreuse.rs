//! `s-noreuse`: the exporter never resets, powers down, disables decode of,
//! frees or re-assigns memory while a mapping of it (an sg mapping, an
//! IOMMU or IOTLB translation, a CPU PTE) is outstanding, whether or not an
//! access lands.
//!
//! The evidence comes from the run: at each such moment the platform lists
//! the mappings of the memory still outstanding (a
//! [`ReuseEvent`](dmabuf_platform::ReuseEvent), docs/hazards.md). An access
//! that did land on reset, freed or re-assigned memory (`UseAfterFree`,
//! `Aer`, `MisdirectedDma`) is a violation as well.

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
        "memory is never reset, powered down, decode-disabled, freed or re-assigned while a mapping of it is outstanding"
    }
    fn judged_in(&self, _mode: RunMode) -> bool {
        true
    }
    /// Judged from the monitor's hazards, among them an access that reached reset, freed or re-assigned memory: a speculative read is one.
    fn judged_from_speculation(&self) -> bool {
        true
    }
    fn judge(&self, run: &RunOutcome) -> Option<Violation> {
        let obs = run.obs.as_ref()?;
        if let Some(ev) = obs.reuse.iter().find(|e| !e.outstanding.is_empty()) {
            return Some(Violation {
                hazard: None,
                detail: format!(
                    "{} of {} while {} mapping(s) of it were outstanding: {}",
                    ev.kind,
                    ev.who,
                    ev.outstanding.len(),
                    ev.outstanding
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        hazard(
            run,
            &|h| {
                matches!(
                    h.class,
                    HazardClass::UseAfterFree | HazardClass::Aer | HazardClass::MisdirectedDma
                )
            },
            "an access reached memory that was freed, powered down, reset or re-assigned",
        )
    }
}
