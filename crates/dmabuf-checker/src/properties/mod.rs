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

/// Whether monitor sequence `seq` lies after some revoke's fence wait had
/// completed and before the un-revoke that followed it (every revoke of
/// the run).
pub(crate) fn after_fences(run: &RunOutcome, seq: u64) -> bool {
    let Some(o) = run.obs.as_ref() else {
        return false;
    };
    if o.revokes.is_empty() {
        // Observations built without revoke records (synthetic runs).
        return o.revoke_return_seq.is_some_and(|r| seq > r);
    }
    o.revokes.iter().any(|r| r.after_fences(seq))
}
