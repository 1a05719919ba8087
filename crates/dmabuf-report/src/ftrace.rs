//! A replayed run in the layout of `trace-cmd report` (what KernelShark and
//! kernel engineers read):
//!
//! ```text
//! cpus=1
//!          revoker-5     [000]     1.000000: dma_buf_invalidate_attachment: ino=1 attach=1 dev=gpu0
//! ```
//!
//! | column | value |
//! |---|---|
//! | `comm-pid` | task name (cut to the kernel's 15 characters), task id (the root task `main` is 0; `sched_switch` rows use the same ids); real threads are numbered in order of appearance |
//! | `[cpu]` | `000`: the controlled scheduler runs one task at a time |
//! | timestamp | virtual seconds, six decimals |
//! | event | the tracepoint name (the kernel's where one exists: `dma_fence_signaled`, `sched_switch`, `iommu_map`, ...) |
//! | arguments | as the tracepoint's `TP_printk` (the revoke's count rows: `kref_put: ... kref=kref#1 refcount=1`) |

use dmabuf_core::trace::Event;
use std::fmt::Write as _;

/// The kernel's `TASK_COMM_LEN` less the terminating NUL.
const COMM_LEN: usize = 15;

/// Renders `events` as `trace-cmd report` text.
pub fn render(events: &[Event]) -> String {
    let mut s = String::from("cpus=1\n");
    // Real threads have no task id: numbered in order of appearance, after
    // the largest task id.
    let base = events
        .iter()
        .filter_map(|e| e.task)
        .max()
        .map_or(0, |t| t + 1);
    let mut threads: Vec<&str> = Vec::new();
    for e in events {
        let comm: String = e.who.chars().take(COMM_LEN).collect();
        let pid = e.task.unwrap_or_else(|| {
            let i = threads.iter().position(|t| *t == e.who).unwrap_or_else(|| {
                threads.push(&e.who);
                threads.len() - 1
            });
            base + i
        });
        let _ = writeln!(
            s,
            "{:>16}-{:<5} [000] {:>5}.{:06}: {:<20} {}",
            comm,
            pid,
            e.ts_ns / 1_000_000_000,
            (e.ts_ns / 1000) % 1_000_000,
            format!("{}:", e.name),
            e.args
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::sample;

    #[test]
    fn lines_follow_the_trace_cmd_layout() {
        let text = render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cpus=1");
        assert_eq!(lines.len(), 1 + sample().len());
        // "comm-pid [000] secs.usecs: name: args"
        let l = lines[3];
        assert!(
            l.starts_with(
                "         revoker-7     [000]     1.000000: dma_buf_invalidate_attachment: ino=1"
            ),
            "{l}"
        );
        let long = Event {
            who: "a-very-long-task-name".into(),
            ..sample()[0].clone()
        };
        assert!(
            render(&[long]).contains(" a-very-long-tas-"),
            "comm cut to 15"
        );
        // The count's rows keep the layout, the value in the arguments.
        let k = crate::links::tests::ev(
            9,
            "revoker",
            "kref_put",
            "ino=1 step=kref_put kref=kref#1 refcount=1",
        );
        assert_eq!(
            render(&[k]).lines().nth(1),
            Some(
                "         revoker-7     [000]     1.000000: kref_put:            ino=1 step=kref_put kref=kref#1 refcount=1"
            )
        );
    }
}
