//! How a replayed run is printed: the text trace with its header, the
//! structured JSON events, hazards tied to their trace rows, and deadlocks
//! in kernel terms.
//!
//! | piece | form |
//! |---|---|
//! | header | `# replay of <scenario> (<mode>)`, the token, the outcome, one line per blocked task of a deadlock |
//! | row | `seq  s.us  task  name: args` ([`dmabuf_core::trace::Event`]'s `Display`), addresses in hex |
//! | hazard | the monitor's record (`mseq=N ...`) followed by `[trace row R]`, the row of its `hazard` event |
//! | JSON event | `{"row", "time-ns", "task", "task-id", "name", "args": {key: value}}` |
//!
//! A deadlock's description uses only what the schedule determines: task
//! names, groups and what each task's last trace row says it started
//! waiting for (`dma_fence_wait_start` of fence `context:seqno`,
//! `wait_for_completion`, `lock_acquire` of `resv#N`, ...), never an
//! address, so two replays of one token print the same text. A wait for
//! the revoke's completion also says what the count was when the wait
//! began ([`count_at`]: the last `kref_*`, `complete`,
//! `wait_for_completion_end` or `reinit_completion` row before it, see
//! `dmabuf_core::revoke`): `(kref#1 refcount=1 done=0)`, the reference
//! that was never put.

use dmabuf_core::sync::sched::{BlockedOn, Outcome, TaskInfo};
use dmabuf_core::trace::Event;
use serde_json::{Value, json};

/// A task of an ended execution in words, without addresses.
pub fn task_words(t: &TaskInfo) -> String {
    let mut s = format!("task {} '{}' (group {})", t.id, t.name, t.group);
    match &t.blocked_on {
        BlockedOn::Nothing => s.push_str(" runnable"),
        BlockedOn::Resource { kind, .. } => s.push_str(&format!(" blocked on a {kind}")),
        BlockedOn::Park => s.push_str(" parked"),
        BlockedOn::Sleep => s.push_str(" sleeping"),
        BlockedOn::Join(j) => s.push_str(&format!(" joining task {j}")),
    }
    if t.deadline_ns.is_some() {
        s.push_str(" (with a timeout)");
    }
    if t.stalled {
        s.push_str(", stalled");
    }
    s
}

/// What the last trace row of task `id` says it waits for, in kernel
/// terms; `None` when its last row is no wait.
pub fn waits_for(events: &[Event], id: usize) -> Option<String> {
    let at = events
        .iter()
        .rposition(|e| e.task == Some(id) && e.name != dmabuf_core::trace::SCHED_SWITCH)?;
    let last = &events[at];
    let f = |k: &str| last.field(k).unwrap_or_else(|| "?".into());
    let what = match last.name {
        "dma_fence_wait_start" => format!(
            "dma_fence_wait on fence {}:{} ({} {})",
            f("context"),
            f("seqno"),
            f("driver"),
            f("timeline")
        ),
        "wait_for_completion" | "wait_for_completion_timeout" => format!(
            "{} on the revoke completion of dma-buf ino {}{}",
            last.name,
            f("ino"),
            count_at(&events[..at])
                .map(|c| format!(" ({} refcount={} done={})", c.kref, c.refcount, c.done))
                .unwrap_or_default()
        ),
        "dma_resv_wait_timeout" => format!(
            "dma_resv_wait_timeout on dma-buf ino {} ({})",
            f("ino"),
            f("step")
        ),
        "lock_acquire" => format!("the reservation lock {} (dma_resv_lock)", f("lock")),
        "ww_mutex_contended" => format!("the ww_mutex {} ({})", f("lock"), f("class")),
        "dma_resv_lock" => format!("the reservation lock of dma-buf ino {}", f("ino")),
        _ => return None,
    };
    Some(format!("{what} [trace row {}]", last.seq))
}

/// The revoke count as the trace last showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountState {
    /// Its name (`kref#N`).
    pub kref: String,
    /// The `refcount_t` value.
    pub refcount: u64,
    /// Whether it saturated (a misuse).
    pub saturated: bool,
    /// Its completion's `done` (0 until a `complete` row).
    pub done: u64,
}

/// The count of the last `kref_get`/`kref_put`/`kref_init` row in
/// `events`, with its completion's `done` from the last completion row of
/// the same count; `None` when no row shows the count.
pub fn count_at(events: &[Event]) -> Option<CountState> {
    let mut out: Option<CountState> = None;
    let mut done: Vec<(String, u64)> = Vec::new();
    for e in events {
        let (Some(k), num) = (e.field("kref"), |key: &str| {
            e.field(key).and_then(|v| v.parse::<u64>().ok())
        }) else {
            continue;
        };
        match e.name {
            "kref_get" | "kref_put" | "kref_init" => {
                if let Some(refcount) = num("refcount") {
                    out = Some(CountState {
                        kref: k,
                        refcount,
                        saturated: e.field("saturated").as_deref() == Some("1"),
                        done: 0,
                    });
                }
            }
            "complete" | "wait_for_completion_end" | "reinit_completion" => {
                if let Some(d) = num("done") {
                    done.retain(|(n, _)| *n != k);
                    done.push((k, d));
                }
            }
            _ => {}
        }
    }
    out.map(|mut c| {
        c.done = done
            .iter()
            .find(|(n, _)| *n == c.kref)
            .map_or(0, |(_, d)| *d);
        c
    })
}

/// One line per unfinished task of a deadlocked (or stalled) run: who, what
/// it is blocked on, and, from the trace, what that is in kernel terms.
pub fn deadlock_lines(outcome: &Outcome, events: &[Event]) -> Vec<String> {
    let tasks = match outcome {
        Outcome::Deadlock { tasks } => tasks,
        Outcome::CompletedWithStalled { stalled } => stalled,
        _ => return Vec::new(),
    };
    tasks
        .iter()
        .map(|t| {
            let mut s = task_words(t);
            if let BlockedOn::Resource { .. } = t.blocked_on
                && let Some(w) = waits_for(events, t.id)
            {
                s.push_str(&format!(": in {w}"));
            } else if let BlockedOn::Resource { .. } = t.blocked_on {
                let last = events
                    .iter()
                    .rev()
                    .find(|e| e.task == Some(t.id))
                    .map(|e| format!(" (its last trace row: {} {})", e.seq, e.name))
                    .unwrap_or_default();
                s.push_str(&last);
            }
            s
        })
        .collect()
}

/// The trace row of the `hazard` event with monitor sequence `mseq`.
pub fn hazard_row(events: &[Event], mseq: u64) -> Option<u64> {
    let want = mseq.to_string();
    events
        .iter()
        .find(|e| e.name == "hazard" && e.field("mseq").as_deref() == Some(want.as_str()))
        .map(|e| e.seq)
}

/// A hazard record (`mseq=N ...`) with the trace row of its event appended
/// when the trace has it.
pub fn hazard_with_row(events: &[Event], hazard: &str) -> String {
    let mseq = hazard
        .strip_prefix("mseq=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    match mseq.and_then(|m| hazard_row(events, m)) {
        Some(row) => format!("{hazard} [trace row {row}]"),
        None => hazard.to_owned(),
    }
}

/// An event as structured JSON (keys kebab-case, arguments as an object).
pub fn event_json(e: &Event) -> Value {
    let args: serde_json::Map<String, Value> = e
        .fields()
        .into_iter()
        .map(|(k, v)| (k.replace('_', "-"), Value::String(v)))
        .collect();
    json!({
        "row": e.seq,
        "time-ns": e.ts_ns,
        "task": e.who,
        "task-id": e.task,
        "name": e.name,
        "args": args,
    })
}

/// The header of a replay's text trace.
pub fn header(scenario: &str, mode: &str, token: &str, outcome: &str) -> Vec<String> {
    vec![
        format!("# replay of {scenario} ({mode} run)"),
        format!("# token: {token}"),
        format!("# outcome: {outcome}"),
        "#    row   time (s)  task             event: arguments".to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, task: usize, name: &'static str, args: &str) -> Event {
        Event {
            seq,
            ts_ns: 1_000_000_000,
            who: format!("t{task}"),
            task: Some(task),
            name,
            args: args.into(),
        }
    }

    #[test]
    fn deadlocks_name_the_wait_not_an_address() {
        let events = vec![
            ev(
                0,
                1,
                "lock_acquire",
                "lock=resv#1 name=reservation_ww_class_mutex",
            ),
            ev(0, 3, "kref_get", "kref=kref#1 refcount=2"),
            ev(
                1,
                2,
                "dma_fence_wait_start",
                "driver=gpu timeline=gpu0 context=1 seqno=2",
            ),
            ev(
                2,
                1,
                "wait_for_completion",
                "ino=1 step=wait_for_completion",
            ),
        ];
        let t = |id, kind| TaskInfo {
            id,
            name: format!("t{id}"),
            group: "kernel".into(),
            blocked_on: BlockedOn::Resource {
                kind,
                resource: 0x7f41cc0054d8,
            },
            deadline_ns: None,
            stalled: false,
        };
        let o = Outcome::Deadlock {
            tasks: vec![t(1, "condvar"), t(2, "condvar"), t(3, "mutex")],
        };
        let lines = deadlock_lines(&o, &events);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains(
                "wait_for_completion on the revoke completion of dma-buf ino 1 (kref#1 refcount=2 done=0) [trace row 2]"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("dma_fence_wait on fence 1:2 (gpu gpu0)"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("blocked on a mutex"), "{}", lines[2]);
        for l in &lines {
            assert!(!l.contains("0x7f41"), "{l}");
        }
    }

    #[test]
    fn the_count_is_read_from_the_last_rows() {
        assert_eq!(count_at(&[]), None);
        let e = [
            ev(0, 1, "kref_get", "kref=kref#1 refcount=2"),
            ev(
                1,
                2,
                "kref_put",
                "ino=1 step=kref_put kref=kref#1 refcount=1",
            ),
            ev(2, 1, "kref_put", "kref=kref#1 refcount=0"),
            ev(3, 1, "complete", "kref=kref#1 done=1"),
            ev(4, 2, "kref_put", "kref=kref#1 refcount=x"),
        ];
        let at = |n: usize| count_at(&e[..n]).map(|c| (c.refcount, c.done, c.saturated));
        assert_eq!(at(1), Some((2, 0, false)));
        assert_eq!(at(2), Some((1, 0, false)));
        assert_eq!(at(4), Some((0, 1, false)));
        assert_eq!(
            at(5),
            Some((0, 1, false)),
            "an unreadable value changes nothing"
        );
        let s = [ev(0, 1, "kref_put", "kref=kref#2 refcount=0 saturated=1")];
        assert!(count_at(&s).unwrap().saturated);
        assert_eq!(count_at(&s).unwrap().kref, "kref#2");
    }

    /// A known scenario, run by the checker and replayed with tracing: the
    /// v6 protocol (`kref_put`, then `wait_for_completion` for the
    /// importers' unmaps) with the importer that never unmaps. Every count
    /// row carries the value the operations imply, and the deadlock line
    /// says the mapping's reference is still held.
    #[test]
    fn count_rows_carry_the_count_in_a_known_scenario() {
        use crate::explore::{self, CheckOptions};
        use crate::property::Property;
        use crate::scenario::Library;
        let lib = Library::builtin().unwrap();
        let e = lib
            .rows()
            .into_iter()
            .find(|e| e.name == "v6-final")
            .unwrap()
            .clone();
        let sc = lib.cell(&e, lib.importer("lying").unwrap());
        let opts = CheckOptions {
            schedules: 20,
            stalled_schedules: 10,
            properties: vec![Property::LBounded],
            ..CheckOptions::default()
        };
        let r = explore::check(&sc, &opts, |_| {});
        let ce = r.properties[0]
            .counterexample
            .clone()
            .expect("the known hang is found");
        let (run, _) = explore::replay(&lib, &ce.token).unwrap();
        let ev = &run.report.trace;
        // Recompute the count from the operations and compare row by row.
        let (mut refs, mut done) = (1u64, 0u64);
        let mut seen = Vec::new();
        for e in ev {
            let val = |k: &str| e.field(k).and_then(|v| v.parse::<u64>().ok());
            match e.name {
                "kref_get" => refs += 1,
                "kref_put" => refs -= 1,
                "kref_init" => refs = 1,
                "complete" => done += 1,
                "wait_for_completion_end" if e.field("ret").as_deref() == Some("completed") => {
                    done -= 1
                }
                "reinit_completion" => done = 0,
                _ => continue,
            }
            if e.name.starts_with("kref_") {
                assert_eq!(val("refcount"), Some(refs), "row {}: {}", e.seq, e.args);
                seen.push((e.name, refs));
            } else {
                assert_eq!(val("done"), Some(done), "row {}: {}", e.seq, e.args);
            }
            assert_eq!(e.field("kref").as_deref(), Some("kref#1"));
        }
        // The importer's map takes a reference (2), the revoke puts the
        // base one (1) and waits: the lying importer never unmaps.
        assert_eq!(seen.first(), Some(&("kref_get", 2)), "{seen:?}");
        assert!(seen.contains(&("kref_put", 1)), "{seen:?}");
        assert_eq!(count_at(ev).map(|c| c.refcount), Some(1));
        let lines = deadlock_lines(&run.report.outcome, ev);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("wait_for_completion")
                    && l.contains("(kref#1 refcount=1 done=0)")),
            "{lines:#?}"
        );
    }

    #[test]
    fn hazards_point_at_their_rows() {
        let events = vec![
            ev(4, 0, "dma_buf_export", "exp_name=vfio_pci ino=1 size=8192"),
            ev(
                31,
                3,
                "hazard",
                "class=AccessAfterRevoke accessor=gpu0 w space=bus addr=0xe0000000 phys=0xe0000000 mapping=1 mseq=4",
            ),
        ];
        assert_eq!(hazard_row(&events, 4), Some(31));
        assert_eq!(
            hazard_with_row(&events, "mseq=4 AccessAfterRevoke by gpu0"),
            "mseq=4 AccessAfterRevoke by gpu0 [trace row 31]"
        );
        assert_eq!(hazard_with_row(&events, "mseq=9 X"), "mseq=9 X");
    }

    #[test]
    fn json_events_are_structured() {
        let e = ev(
            7,
            2,
            "dma_fence_signaled",
            "driver=gpu timeline=gpu0 context=1 seqno=3",
        );
        let v = event_json(&e);
        assert_eq!(v["row"], 7);
        assert_eq!(v["task-id"], 2);
        assert_eq!(v["name"], "dma_fence_signaled");
        assert_eq!(v["args"]["seqno"], "3");
        assert_eq!(v["time-ns"], 1_000_000_000u64);
    }
}
