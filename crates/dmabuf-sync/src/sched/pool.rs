//! Task threads, reused from one execution to the next.
//!
//! Every task of an execution runs on an OS thread of its own (the baton
//! protocol in `engine.rs` needs one stack per task). Creating and ending
//! a thread costs about 40 µs on the 2-core machines this runs on, several
//! times the rest of a short task, so a task's thread goes back to this
//! pool when the task's body is left and the next task started for the
//! same CPU takes it.
//!
//! | worker state | meaning | leaves it by |
//! |---|---|---|
//! | running | runs one task's body | the body returning (task finished or unwound) |
//! | idle | waits in the pool for a body | [`start`] handing it one; never, past [`MAX_IDLE`] (it exits instead) |
//!
//! What a reused thread must not carry from one task to the next: its
//! [`TaskLocal`](crate::TaskLocal)s start afresh for each task (the worker
//! starts a new incarnation before each body), the engine's own
//! thread-locals are set and cleared by the task's body, and its CPU
//! binding is the pool's (one pool per CPU the executions are bound to,
//! see `RunConfig::pin_to_one_cpu`). A body that never returns (a task
//! left blocked on a real primitive after its execution ended) keeps its
//! thread; it is lost to the pool, as the OS thread was lost before.
//!
//! Lock rules: the idle list and each worker's slot are `parking_lot`
//! mutexes held only to move a body or a worker in or out; a body never
//! runs with either held.

use parking_lot::{Condvar, Mutex};
use std::sync::{Arc, OnceLock};

/// A task's body.
pub(super) type Body = Box<dyn FnOnce() + Send>;

/// Idle workers kept at most (over every CPU); more exit when their body
/// ends. The matrix runs two executions at a time of about ten tasks each.
const MAX_IDLE: usize = 64;

struct Worker {
    cpu: Option<usize>,
    body: Mutex<Option<Body>>,
    wake: Condvar,
    thread: OnceLock<std::thread::Thread>,
}

static IDLE: Mutex<Vec<Arc<Worker>>> = Mutex::new(Vec::new());

/// Runs `body` on an idle thread of `cpu`'s pool, or on a new one. Returns
/// the thread (for the baton's unpark).
pub(super) fn start(cpu: Option<usize>, body: Body) -> std::io::Result<std::thread::Thread> {
    let idle = {
        let mut idle = IDLE.lock();
        idle.iter()
            .rposition(|w| w.cpu == cpu)
            .map(|i| idle.swap_remove(i))
    };
    if let Some(w) = idle {
        let thread = w
            .thread
            .get()
            .cloned()
            .expect("an idle worker has named its thread");
        *w.body.lock() = Some(body);
        w.wake.notify_one();
        return Ok(thread);
    }
    let w = Arc::new(Worker {
        cpu,
        body: Mutex::new(Some(body)),
        wake: Condvar::new(),
        thread: OnceLock::new(),
    });
    let w2 = w.clone();
    let h = std::thread::Builder::new()
        .name("dmabuf-task".to_owned())
        .spawn(move || worker_main(w2))?;
    let thread = h.thread().clone();
    let _ = w.thread.set(thread.clone());
    Ok(thread)
}

fn worker_main(w: Arc<Worker>) {
    let _ = w.thread.set(std::thread::current());
    if let Some(cpu) = w.cpu {
        super::engine::pin_current_thread(cpu);
    }
    loop {
        let body = {
            let mut slot = w.body.lock();
            loop {
                if let Some(b) = slot.take() {
                    break b;
                }
                w.wake.wait(&mut slot);
            }
        };
        crate::std_impl::new_incarnation();
        body();
        let mut idle = IDLE.lock();
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(w.clone());
    }
}
