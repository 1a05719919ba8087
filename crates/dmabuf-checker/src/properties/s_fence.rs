//! `s-fence`: once a revoke's fence wait has completed, no write reaches the
//! exporter's memory: not while the exporter then waits for the unmaps,
//! not after the revoke returned (until the un-revoke that follows). The
//! monitor records such a write as `WriteAfterFences` (and, after the
//! return, `AccessAfterRevoke` too).
//!
//! The class alone decides: the monitor gives it from the page words the
//! access read, which the revoke's fences-done stamp set and the un-revoke
//! cleared, so it says where the write fell in the revoke's life at the
//! moment it happened. (The records' sequence numbers only order reports;
//! the search does not order them.)
//!
//! Only DMA is judged here. The fence wait is the point at which the
//! importers' *device* writes must have stopped; no fence covers a CPU
//! store through an mmap of the exporter's memory. The CPU is cut off by
//! the exporter's own zap (`unmap_mapping_range`), which Matt Evans' VFIO
//! series does after the unmap completion, i.e. after the fence wait: CPU
//! stores in between are by design. A CPU access after the revoke
//! returned is `s-final`'s (and a PTE left at a reset `s-noreuse`'s).

use super::hazard;
use crate::explore::{RunOutcome, Violation};
use crate::property::Check;
use crate::token::RunMode;
use dmabuf_platform::{AccessKind, HazardClass, Via};

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
                    && matches!(h.via, Via::Dma { .. })
                    && matches!(
                        h.class,
                        HazardClass::AccessAfterRevoke | HazardClass::WriteAfterFences
                    )
            },
            "a write reached the exporter's memory after the revoke's fence wait completed",
        )
    }
}
