//! Controlled execution: a deterministic scheduler for real OS threads.
//!
//! ENGINE NOT YET WRITTEN: this file currently only provides the inactive
//! path (no execution ever exists), so every shim operation takes its
//! real-thread branch.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Identifies a task inside one execution.
pub type TaskId = usize;

static LIVE_EXECUTIONS: AtomicUsize = AtomicUsize::new(0);

/// Whether the calling thread is a task of a live controlled execution.
#[inline(always)]
pub fn active() -> bool {
    LIVE_EXECUTIONS.load(Ordering::Relaxed) != 0 && active_slow()
}

#[cold]
fn active_slow() -> bool {
    false
}

/// A scheduling point if the caller is a controlled task; nothing otherwise.
#[inline(always)]
pub fn point() {
    if active() {
        yield_point();
    }
}

/// A scheduling point (the caller must be a controlled task).
pub fn yield_point() {}

/// Blocks the calling task until `unblock_one/all(resource)`.
pub fn block_on(_resource: usize, _kind: &'static str) {}

/// Like `block_on` with a virtual-time deadline; returns true on timeout.
pub fn block_on_until(_resource: usize, _kind: &'static str, _deadline_ns: u64) -> bool {
    true
}

/// Makes every task blocked on `resource` runnable.
pub fn unblock_all(_resource: usize) {}

/// Makes the lowest-numbered task blocked on `resource` runnable.
pub fn unblock_one(_resource: usize) {}

/// Virtual time of the caller's execution.
pub fn now_ns() -> u64 {
    0
}

/// The caller's task id, if it is a controlled task.
pub fn current_task() -> Option<TaskId> {
    None
}

/// Sets the task's park token; returns false if the caller is not a
/// controlled task (then the std unpark is used).
pub fn unpark(_task: TaskId) -> bool {
    false
}

/// Parks the caller until its token is set or the deadline passes.
pub fn park(_deadline_ns: Option<u64>) {}

/// Sleeps in virtual time.
pub fn sleep(_ns: u64) {}

/// Waits until the task has finished.
pub fn join(_task: TaskId) {}

/// Spawns a task of the caller's execution.
pub fn spawn<F, T>(name: String, f: F) -> (TaskId, std::thread::JoinHandle<T>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let h = std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("failed to spawn a thread");
    (0, h)
}

/// A per-execution counter (context ids, inode numbers) so that replays see
/// identical numbers; `None` on real threads.
pub fn local_counter(_key: &'static str, _n: u64) -> Option<u64> {
    None
}

/// Appends a trace event to the caller's execution log.
pub fn trace_emit(_name: &'static str, _args: String) {}
