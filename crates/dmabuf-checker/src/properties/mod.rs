//! One file per property (see [`crate::property`] for the table and the
//! registry). Each judges only what the platform's monitor and the world
//! observed in one run.

pub mod l_bounded;
pub mod l_restore;
pub mod lockdep;
pub mod no_deadlock;
pub mod no_leak;
pub mod no_warn;
pub mod s_fence;
pub mod s_final;
pub mod s_noreuse;

use crate::explore::{RunOutcome, Violation};
use dmabuf_platform::Hazard;

/// The first hazard of `run` that `pred` selects, as a violation.
pub(crate) fn hazard(
    run: &RunOutcome,
    pred: &dyn Fn(&Hazard) -> bool,
    what: &str,
) -> Option<Violation> {
    let obs = run.obs.as_ref()?;
    obs.hazards.iter().find(|h| pred(h)).map(|h| Violation {
        hazard: Some(h.to_string()),
        detail: what.to_owned(),
    })
}
