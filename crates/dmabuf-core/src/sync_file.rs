//! `sync_file`: a file-like object that holds one fence (kernel
//! `drivers/dma-buf/sync_file.c`). The fence may be a container; the
//! descriptor and ioctl byte layer live in the userspace-ABI module.
//!
//! # States
//!
//! | state | meaning | may go to |
//! |---|---|---|
//! | idle | nobody polled | armed |
//! | armed | the first [`SyncFile::poll`] enabled signalling and put a callback on the fence that wakes pollers (`POLL_ENABLED`) | (final until drop) |
//!
//! Readiness does not depend on the state: `EPOLLIN` iff the fence has
//! signalled. Dropping the file takes a still-pending poll callback off the
//! fence and puts the fence reference.
//!
//! # Rules
//!
//! * [`SyncFile::merge`] is `dma_fence_unwrap_merge(a, b)`: signalled leaves
//!   are dropped, the latest point of each context kept.
//! * [`SyncFile::get_name`] is the user name given at merge time, or
//!   `<driver>-<timeline><context>-<seqno>` of the fence (seqno printed
//!   signed, as the kernel's `%lld`).
//! * [`SyncFile::info`] walks the leaves (`SYNC_IOC_FILE_INFO`).
//!
//! # Lock rules
//!
//! The poll state has one lock, never held while the fence lock is taken by
//! anybody but the fence core itself, and never held across a wait.

use crate::dma_fence::{Callback, CancelToken, Fence, FenceError, MAX_SCHEDULE_TIMEOUT};
use crate::dma_fence_unwrap::{leaves, merge};
use crate::lockdep;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Condvar, Mutex};
use std::fmt;
use std::time::Duration;

/// `EPOLLIN`: the fence has signalled.
pub const EPOLLIN: u32 = libc::EPOLLIN as u32;

/// Most bytes of a sync_file name: `sync_file_info.name` and
/// `sync_merge_data.name` are 32 bytes with the NUL.
pub const SYNC_NAME_MAX: usize = 31;

/// Cuts `name` to at most [`SYNC_NAME_MAX`] bytes, at a character boundary.
fn cut_name(mut name: String) -> String {
    if name.len() > SYNC_NAME_MAX {
        let mut end = SYNC_NAME_MAX;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// Per-leaf information (`struct sync_fence_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncFenceInfo {
    /// The timeline name (`obj_name`).
    pub obj_name: String,
    /// The driver name.
    pub driver_name: String,
    /// 0 pending, 1 signalled, or the negative error.
    pub status: i32,
    /// Always 0: the kernel fills no flags.
    pub flags: u32,
    /// Signalling time in `CLOCK_MONOTONIC` ns, 0 while pending.
    pub timestamp_ns: u64,
}

/// What `SYNC_IOC_FILE_INFO` reports (`struct sync_file_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncFileInfo {
    /// [`SyncFile::get_name`].
    pub name: String,
    /// `dma_fence_get_status` of the whole fence (what the ioctl reports
    /// when asked for no per-leaf entries).
    pub status: i32,
    /// One entry per leaf, in unwrap order.
    pub fences: Vec<SyncFenceInfo>,
}

impl SyncFileInfo {
    /// The status the ioctl reports along with per-leaf entries: 1, or the
    /// first non-positive leaf status.
    pub fn leaf_status(&self) -> i32 {
        let mut status = 1;
        for f in &self.fences {
            if status > 0 {
                status = f.status;
            }
        }
        status
    }
}

/// The wait queue pollers sleep on: a generation counter bumped by the
/// armed callback.
#[derive(Default)]
struct PollQueue {
    generation: Mutex<u64>,
    cond: Condvar,
}

impl PollQueue {
    fn wake(&self) {
        *self.generation.lock() += 1;
        self.cond.notify_all();
    }
}

/// A sync_file: one fence plus an optional user name.
pub struct SyncFile {
    fence: Fence,
    name: Option<String>,
    queue: Arc<PollQueue>,
    /// Set once the first poll armed the callback (`POLL_ENABLED`).
    armed: AtomicBool,
    poll_cb: Mutex<Option<Callback>>,
}

impl fmt::Debug for SyncFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncFile({:?}, {:?})", self.get_name(), self.fence)
    }
}

impl SyncFile {
    /// `sync_file_create`: a sync_file holding a new reference to `fence`.
    pub fn create(fence: Fence) -> SyncFile {
        Self::with_name(fence, None)
    }

    fn with_name(fence: Fence, name: Option<String>) -> SyncFile {
        SyncFile {
            fence,
            name: name.filter(|n| !n.is_empty()),
            queue: Arc::new(PollQueue::default()),
            armed: AtomicBool::new(false),
            poll_cb: Mutex::new(None),
        }
    }

    /// `sync_file_merge`: a new sync_file named `name` whose fence is the
    /// unwrap-merge of both files' fences. The inputs are unchanged.
    pub fn merge(name: &str, a: &SyncFile, b: &SyncFile) -> SyncFile {
        Self::with_name(merge(&[&a.fence, &b.fence]), Some(name.to_owned()))
    }

    /// The fence held.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// `sync_file_get_fence`: a new reference to the fence.
    pub fn get_fence(&self) -> Fence {
        self.fence.clone()
    }

    /// `sync_file_get_name`: the merge name, or one made of the fence's
    /// driver, timeline, context and seqno, cut like the kernel's
    /// `snprintf` into the 32-byte `sync_file_info.name` to at most
    /// [`SYNC_NAME_MAX`] bytes (so an idle buffer's exported fence on 7.x
    /// reads `detached-driver-signaled-timeli`).
    pub fn get_name(&self) -> String {
        let full = match &self.name {
            Some(n) => n.clone(),
            None => format!(
                "{}-{}{}-{}",
                self.fence.driver_name(),
                self.fence.timeline_name(),
                self.fence.context(),
                self.fence.seqno() as i64
            ),
        };
        cut_name(full)
    }

    /// `SYNC_IOC_FILE_INFO` without the byte layout.
    pub fn info(&self) -> SyncFileInfo {
        let fences = leaves(&self.fence)
            .map(|f| {
                let status = f.get_status();
                SyncFenceInfo {
                    obj_name: f.timeline_name().to_owned(),
                    driver_name: f.driver_name().to_owned(),
                    status,
                    flags: 0,
                    timestamp_ns: if status != 0 {
                        f.timestamp().unwrap_or(0)
                    } else {
                        0
                    },
                }
            })
            .collect();
        SyncFileInfo {
            name: self.get_name(),
            status: self.fence.get_status(),
            fences,
        }
    }

    /// `sync_file_poll`: `EPOLLIN` iff the fence has signalled. The first
    /// call arms a callback on the fence (which enables signalling) that
    /// wakes [`poll_wait`](Self::poll_wait)ers.
    pub fn poll(&self) -> u32 {
        if !self.armed.swap(true, Ordering::AcqRel) {
            let q = self.queue.clone();
            match self.fence.add_callback(move |_| q.wake()) {
                Ok(r) => *self.poll_cb.lock() = Some(r),
                Err(_) => self.queue.wake(),
            }
        }
        if self.fence.is_signaled() { EPOLLIN } else { 0 }
    }

    /// `poll(2)` on this file alone: blocks until [`poll`](Self::poll)
    /// reports `EPOLLIN`, the timeout passes (returns 0) or `cancel` fires
    /// ([`FenceError::Interrupted`]). `timeout_ns` is
    /// [`MAX_SCHEDULE_TIMEOUT`] for none.
    pub fn poll_wait(
        &self,
        cancel: Option<&CancelToken>,
        timeout_ns: u64,
    ) -> Result<u32, FenceError> {
        lockdep::might_wait("sync_file_poll");
        let start = crate::sync::time::now_ns();
        loop {
            // Read the generation before polling: a wake between the poll
            // and the wait below then shows as a changed generation.
            let seen = *self.queue.generation.lock();
            let ready = self.poll();
            if ready != 0 || timeout_ns == 0 {
                return Ok(ready);
            }
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return Err(FenceError::Interrupted);
            }
            let elapsed = crate::sync::time::now_ns().saturating_sub(start);
            if timeout_ns != MAX_SCHEDULE_TIMEOUT && elapsed >= timeout_ns {
                return Ok(0);
            }
            // Short slices when a cancellation token is given: the token
            // does not know this queue.
            let slice = if cancel.is_some() {
                1_000_000
            } else {
                timeout_ns - elapsed.min(timeout_ns)
            };
            let mut g = self.queue.generation.lock();
            while *g == seen {
                let (ng, timed_out) = self
                    .queue
                    .cond
                    .wait_timeout(g, Duration::from_nanos(slice.max(1)));
                g = ng;
                if timed_out {
                    break;
                }
            }
        }
    }

    /// `SYNC_IOC_SET_DEADLINE`: forwards a deadline hint to the fence.
    pub fn set_deadline(&self, deadline_ns: u64) {
        self.fence.set_deadline(deadline_ns);
    }
}

impl Drop for SyncFile {
    fn drop(&mut self) {
        if let Some(r) = self.poll_cb.get_mut().take() {
            r.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_fence::{FenceContext, FenceOps, SignalHandle};
    use crate::errno;
    use crate::sync::atomic::{AtomicU32, AtomicU64};
    use crate::sync::thread;

    fn leaf(tl: &str) -> (Fence, SignalHandle) {
        FenceContext::named("drv", tl).create()
    }

    #[test]
    fn default_name_is_driver_timeline_context_seqno() {
        let (f, _h) = leaf("ring0");
        let sf = SyncFile::create(f.clone());
        assert_eq!(sf.get_name(), format!("drv-ring0{}-1", f.context()));
        let (big, _hb) = Fence::init(crate::NamedOps::new("d", "t"), 3, u64::MAX);
        assert_eq!(SyncFile::create(big).get_name(), "d-t3--1");
    }

    /// `sync_file_get_name` writes into the 32-byte `sync_file_info.name`:
    /// a merge name or a made-up name is cut to 31 bytes.
    #[test]
    fn sync_file_get_name_is_cut_to_31_bytes() {
        let (f, h) = leaf("a-very-long-timeline-name");
        let sf = SyncFile::create(f);
        assert_eq!(sf.get_name().len(), SYNC_NAME_MAX);
        assert!(sf.get_name().starts_with("drv-a-very-long-timeline-name"));
        h.signal().unwrap();
        assert_eq!(sf.get_name(), "detached-driver-signaled-timeli");
        let m = SyncFile::merge(&"n".repeat(40), &sf, &sf);
        assert_eq!(m.get_name(), "n".repeat(31));
        // Never inside a character.
        let m = SyncFile::merge(&"é".repeat(20), &sf, &sf);
        assert_eq!(m.get_name(), "é".repeat(15));
    }

    #[test]
    fn merge_names_the_result_and_unwraps() {
        let (f1, _h1) = leaf("a");
        let (f2, h2) = leaf("b");
        let (f3, _h3) = leaf("c");
        h2.signal().unwrap();
        let a = SyncFile::create(f1.clone());
        let b = SyncFile::create(crate::dma_fence_unwrap::merge(&[&f2, &f3]));
        let m = SyncFile::merge("merged", &a, &b);
        assert_eq!(m.get_name(), "merged");
        let leaves: Vec<Fence> = leaves(m.fence()).collect();
        assert_eq!(leaves, vec![f1, f3]);
        let unnamed = SyncFile::merge("", &a, &b);
        assert!(unnamed.get_name().starts_with("dma_fence_array-unbound"));
    }

    #[test]
    fn info_reports_each_leaf() {
        let (f1, h1) = leaf("a");
        let (f2, h2) = leaf("b");
        let sf = SyncFile::create(crate::dma_fence_unwrap::merge(&[&f1, &f2]));
        let i = sf.info();
        assert_eq!(i.status, 0);
        assert_eq!(i.fences.len(), 2);
        assert_eq!(i.fences[0].obj_name, "a");
        assert_eq!(i.fences[0].driver_name, "drv");
        assert_eq!(i.fences[0].timestamp_ns, 0);
        assert_eq!(i.leaf_status(), 0);
        h1.signal_timestamp(1234).unwrap();
        h2.signal_with_error(errno::EIO.to_negative()).unwrap();
        let i = sf.info();
        assert_eq!(i.status, errno::EIO.to_negative());
        assert_eq!(i.leaf_status(), errno::EIO.to_negative());
        assert_eq!(i.fences[0].status, 1);
        assert_eq!(i.fences[0].timestamp_ns, 1234);
        assert_eq!(i.fences[0].obj_name, "signaled-timeline");
        assert_eq!(i.fences[0].driver_name, "detached-driver");
        assert_eq!(i.fences[1].status, errno::EIO.to_negative());
        assert!(i.fences[1].timestamp_ns > 0);
    }

    #[test]
    fn leaf_status_takes_the_first_non_positive() {
        let mk = |status| SyncFenceInfo {
            obj_name: String::new(),
            driver_name: String::new(),
            status,
            flags: 0,
            timestamp_ns: 0,
        };
        let info = |v: Vec<i32>| SyncFileInfo {
            name: String::new(),
            status: 0,
            fences: v.into_iter().map(mk).collect(),
        };
        assert_eq!(info(vec![1, -5, 0]).leaf_status(), -5);
        assert_eq!(info(vec![1, 0, -5]).leaf_status(), 0);
        assert_eq!(info(vec![1, 1]).leaf_status(), 1);
    }

    struct Counting(Arc<AtomicU32>);
    impl FenceOps for Counting {
        fn driver_name(&self) -> &str {
            "count"
        }
        fn timeline_name(&self) -> &str {
            "t"
        }
        fn enable_signaling(&self, _: &Fence) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    #[test]
    fn first_poll_arms_signalling_once_and_readiness_follows_the_fence() {
        let n = Arc::new(AtomicU32::new(0));
        let (f, h) = Fence::init(Counting(n.clone()), 5, 1);
        let sf = SyncFile::create(f.clone());
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert_eq!(sf.poll(), 0);
        assert_eq!(sf.poll(), 0);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(f.pending_callbacks(), 1);
        h.signal().unwrap();
        assert_eq!(sf.poll(), EPOLLIN);
    }

    #[test]
    fn drop_removes_the_poll_callback() {
        let (f, _h) = leaf("a");
        let sf = SyncFile::create(f.clone());
        sf.poll();
        assert_eq!(f.pending_callbacks(), 1);
        drop(sf);
        assert_eq!(f.pending_callbacks(), 0);
    }

    #[test]
    fn poll_wait_wakes_on_signal_from_another_thread() {
        let (f, h) = leaf("a");
        let sf = SyncFile::create(f);
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            h.signal().unwrap();
        });
        assert_eq!(sf.poll_wait(None, MAX_SCHEDULE_TIMEOUT).unwrap(), EPOLLIN);
        t.join().unwrap();
    }

    #[test]
    fn poll_wait_times_out_and_can_be_cancelled() {
        let (f, _h) = leaf("a");
        let sf = SyncFile::create(f);
        assert_eq!(sf.poll_wait(None, 0).unwrap(), 0);
        assert_eq!(sf.poll_wait(None, 5_000_000).unwrap(), 0);
        let c = CancelToken::new();
        let c2 = c.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            c2.cancel();
        });
        assert_eq!(
            sf.poll_wait(Some(&c), MAX_SCHEDULE_TIMEOUT),
            Err(FenceError::Interrupted)
        );
        t.join().unwrap();
    }

    #[test]
    fn set_deadline_reaches_the_fence() {
        use crate::dma_fence::test_ops::DeadlineRecorder as D;
        let seen = Arc::new(AtomicU64::new(0));
        let (f, _h) = Fence::init(D(seen.clone()), 9, 1);
        SyncFile::create(f).set_deadline(42);
        assert_eq!(seen.load(Ordering::SeqCst), 42);
    }
}
