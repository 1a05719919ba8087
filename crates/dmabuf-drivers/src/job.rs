//! Jobs behind dependencies, what `drm_sched` does for a GPU driver: a DMA
//! job is pushed to its engine only once every fence it depends on has
//! signalled, and its own fence (published in a reservation object before
//! that) signals when it has run.
//!
//! # A pending job's life
//!
//! | state | entered by | next |
//! |---|---|---|
//! | waiting | [`submit_after`] | submitted, when the last dependency signals (on the signalling thread, from a fence callback) |
//! | submitted | the engine accepted the job | done: the engine signals the job's fence |
//! | failed | the engine refused it (stopped, device gone); the engine signalled the fence with the errno | (final) |
//!
//! Dependencies that signal with an error still release the job (the
//! hardware ran; what it did is the job's own business), as `drm_sched`
//! does for most drivers.
//!
//! # Lock rules
//!
//! The slot is a [`SetOnce`]: set once by whoever releases the job, awaited
//! by its submitter (so the search does not order a wait that finds it set
//! against one that blocks until it is). The job lock is a leaf; the engine
//! is called without it held.

use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
use dmabuf_core::sync::{Arc, Mutex, SetOnce};
use dmabuf_core::{Fence, SignalHandle};
use dmabuf_platform::{DmaEngine, DmaJob, JobOutcome, JobTicket};

/// Empty while waiting; then the engine's ticket or the errno it refused
/// the job with.
type Slot = SetOnce<Result<JobTicket, Errno>>;

struct Shared {
    slot: Slot,
    job: Mutex<Option<DmaJob>>,
    remaining: AtomicUsize,
    engine: DmaEngine,
}

impl Shared {
    fn release_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(job) = self.job.lock().take() else {
            return;
        };
        self.slot
            .set(self.engine.submit(job).map_err(|e| e.errno()));
    }
}

/// A job handed to [`submit_after`] (cheap to clone handle).
#[derive(Clone)]
pub struct PendingJob {
    fence: Fence,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PendingJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingJob({})", self.fence.describe())
    }
}

impl PendingJob {
    /// The job's fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Waits until the job has run and returns its outcome, or the errno
    /// the engine refused it with.
    pub fn wait(&self) -> Result<JobOutcome, Errno> {
        // The fence may signal before the submitter stored the ticket (the
        // engine can run the job first), so the slot is what we wait on.
        Ok(self.shared.slot.wait()?.wait())
    }

    /// Whether the job has finished (run or refused).
    pub fn is_done(&self) -> bool {
        self.fence.is_signaled()
    }
}

/// Queues `job` on `engine` once every fence of `deps` has signalled.
/// `fence`/`handle` are the job's fence and the handle the engine signals.
pub fn submit_after(
    engine: &DmaEngine,
    deps: Vec<Fence>,
    mut job: DmaJob,
    fence: Fence,
    handle: SignalHandle,
) -> PendingJob {
    job.fence = Some(handle);
    let shared = Arc::new(Shared {
        slot: SetOnce::new(),
        job: Mutex::new(Some(job)),
        // One extra count, released below, so the job cannot be pushed
        // while dependencies are still being registered.
        remaining: AtomicUsize::new(deps.len() + 1),
        engine: engine.clone(),
    });
    for d in deps {
        let s = shared.clone();
        if let Err(cb) = d.add_callback(move |_| s.release_one()) {
            cb(&d);
        }
    }
    shared.release_one();
    PendingJob { fence, shared }
}

/// The errno a job outcome failed with, if it failed.
pub fn outcome_errno(o: &JobOutcome) -> Option<Errno> {
    o.status.as_ref().err().map(|e| e.errno())
}

/// `EIO`, for importers reporting a failed job without a better errno.
pub const JOB_EIO: Errno = errno::EIO;

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_core::FenceContext;
    use dmabuf_platform::{DeviceConfig, DmaAddr, DmaOp, EngineConfig, Platform, PlatformConfig};

    #[test]
    fn a_job_runs_only_after_its_dependencies() {
        let p = Platform::new(PlatformConfig::default().device(DeviceConfig::new("d"))).unwrap();
        let dev = p.device("d").unwrap().id();
        let e = p.dma_engine(dev, EngineConfig::threaded("e")).unwrap();
        let frame = p.memory().alloc_frames(1, "d").unwrap()[0];
        let ctx = FenceContext::named("test", "deps");
        let (gate, gate_h) = ctx.create();
        let (f, h) = ctx.create();
        let job = DmaJob::new(vec![DmaOp::fill(DmaAddr::Bus(frame), 8, 0xab)]);
        let pj = submit_after(&e, vec![gate.clone()], job, f, h);
        e.drain();
        let mut b = [0u8; 8];
        p.memory().peek(frame, &mut b).unwrap();
        assert_eq!(b, [0; 8], "ran before its dependency signalled");
        assert!(!pj.is_done());
        gate_h.signal().unwrap();
        let out = pj.wait().unwrap();
        assert!(out.status.is_ok());
        p.memory().peek(frame, &mut b).unwrap();
        assert_eq!(b, [0xab; 8]);
        p.shutdown();
    }

    #[test]
    fn a_refused_job_reports_the_engine_errno() {
        let p = Platform::new(PlatformConfig::default().device(DeviceConfig::new("d"))).unwrap();
        let dev = p.device("d").unwrap().id();
        let e = p.dma_engine(dev, EngineConfig::threaded("e")).unwrap();
        e.stop();
        let ctx = FenceContext::named("test", "deps");
        let (f, h) = ctx.create();
        let pj = submit_after(&e, vec![], DmaJob::new(vec![]), f.clone(), h);
        assert_eq!(pj.wait().unwrap_err(), errno::ECANCELED);
        assert!(f.is_signaled() && f.error().is_some());
        p.shutdown();
    }
}
