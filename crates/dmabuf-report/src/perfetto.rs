//! A replayed run as Chrome trace-event JSON, the format ui.perfetto.dev and
//! chrome://tracing open ("Trace Event Format", the JSON object form:
//! `{"traceEvents": [...], "displayTimeUnit": "ns"}`).
//!
//! | trace event | phase | from |
//! |---|---|---|
//! | process name | `M` `process_name` | the scenario |
//! | a track per task | `M` `thread_name`, `thread_sort_index` | each task, `tid` = task id + 1 |
//! | every row | `X`, 1 ns long | each event, `args` = its fields plus `row` and `virtual-ns` |
//! | DMA job, fence wait | `X` spanning start → end | `dma_job_start`/`dma_job_done`, `dma_fence_wait_start`/`_end` (kept only where they nest) |
//! | invalidate → unmap, signal → wake | `s` / `f` (`bp: "e"`), one id per arrow | [`crate::links`] |
//! | hazard | `I` (instant; the older `i` is read too), thread scope | `hazard` rows |
//! | revoke start / return | `I`, process scope | [`crate::links::Analysis`] |
//! | the revoke's count | `C` counter `kref#N refcount` (`args.refcount`), category `kref` | each `kref_get`/`kref_put`/`kref_init` row (`dmabuf_core::revoke`) |
//! | its completion | `C` counter `kref#N done` (`args.done`), category `kref` | each `complete`/`wait_for_completion_end`/`reinit_completion` row |
//!
//! Time: the controlled scheduler's clock is virtual and many rows share
//! one instant, so row `n` is placed `n` ns after its virtual time (the
//! order shows; `args.virtual-ns` keeps the true value). Timestamps are in
//! microseconds, as the format wants.
//!
//! [`validate`] checks a document against the format's rules; no parser of
//! the format that runs without downloading a binary at run time is
//! packaged in the registries this project uses, so that check is ours.

use crate::links::{Analysis, LinkKind, analyse};
use dmabuf_core::trace::Event;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const PID: u64 = 1;

/// Controlled runs: virtual time plus the row number in ns (rows at one
/// instant keep their order); real threads: the monotonic time as it is.
fn ts_us(e: &Event) -> f64 {
    let ns = if e.task.is_some() {
        e.ts_ns + e.seq
    } else {
        e.ts_ns
    };
    ns as f64 / 1000.0
}

/// Track ids: task id + 1 (0 is no task in Chrome's model); tasks without
/// an id (real threads) get ids after the largest, in order of appearance.
fn tids(events: &[Event]) -> BTreeMap<String, u64> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = events
        .iter()
        .filter_map(|e| e.task)
        .max()
        .map_or(1, |t| t as u64 + 2);
    for e in events {
        if !m.contains_key(&e.who) {
            let id = match e.task {
                Some(t) => t as u64 + 1,
                None => {
                    next += 1;
                    next - 1
                }
            };
            m.insert(e.who.clone(), id);
        }
    }
    m
}

fn args_of(e: &Event) -> Value {
    let mut a: serde_json::Map<String, Value> = e
        .fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    a.insert("row".into(), json!(e.seq));
    a.insert("virtual-ns".into(), json!(e.ts_ns));
    Value::Object(a)
}

/// Builds the document. `title` names the process track (scenario and
/// token).
pub fn chrome_json(events: &[Event], title: &str) -> Value {
    let an: Analysis = analyse(events);
    let tid = tids(events);
    let mut out: Vec<Value> = Vec::new();
    out.push(
        json!({"ph": "M", "cat": "__metadata", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": title}}),
    );
    let mut order: Vec<(&String, &u64)> = tid.iter().collect();
    order.sort_by_key(|(_, t)| **t);
    for (i, (name, t)) in order.iter().enumerate() {
        out.push(
            json!({"ph": "M", "cat": "__metadata", "name": "thread_name", "pid": PID, "tid": t, "args": {"name": name}}),
        );
        out.push(json!({"ph": "M", "cat": "__metadata", "name": "thread_sort_index", "pid": PID, "tid": t, "args": {"sort_index": i}}));
    }
    // Spans: start row -> end row on one track.
    let mut spans: Vec<(usize, usize, String)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let (end_name, key): (&str, Vec<&str>) = match e.name {
            "dma_job_start" => ("dma_job_done", vec!["engine", "job"]),
            "dma_fence_wait_start" => ("dma_fence_wait_end", vec!["context", "seqno"]),
            _ => continue,
        };
        let want: Vec<Option<String>> = key.iter().map(|k| e.field(k)).collect();
        if let Some(j) = events[i + 1..].iter().position(|x| {
            x.who == e.who
                && x.name == end_name
                && key.iter().map(|k| x.field(k)).collect::<Vec<_>>() == want
        }) {
            let label = if e.name == "dma_job_start" {
                format!("dma job {}", e.field("label").unwrap_or_default())
            } else {
                format!(
                    "dma_fence_wait {}:{}",
                    want[0].clone().unwrap_or_default(),
                    want[1].clone().unwrap_or_default()
                )
            };
            spans.push((i, i + 1 + j, label));
        }
    }
    // Keep only spans that nest with the others of their track.
    spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
    let mut kept: Vec<(usize, usize, String)> = Vec::new();
    for s in spans {
        let ok = kept
            .iter()
            .filter(|k| events[k.0].who == events[s.0].who)
            .all(|k| {
                s.1 < k.0 || s.0 > k.1 || (s.0 >= k.0 && s.1 <= k.1) || (k.0 >= s.0 && k.1 <= s.1)
            });
        if ok {
            kept.push(s);
        }
    }
    for (a, b, label) in &kept {
        let (ea, eb) = (&events[*a], &events[*b]);
        out.push(json!({
            "ph": "X", "name": label, "cat": "span", "pid": PID, "tid": tid[&ea.who],
            "ts": ts_us(ea), "dur": ts_us(eb) - ts_us(ea) + 0.001,
            "args": {"from-row": ea.seq, "to-row": eb.seq},
        }));
    }
    for e in events {
        out.push(json!({
            "ph": "X", "name": e.name, "cat": if e.name == "hazard" { "hazard" } else { "event" },
            "pid": PID, "tid": tid[&e.who], "ts": ts_us(e), "dur": 0.001, "args": args_of(e),
        }));
        if e.name == "hazard" {
            out.push(json!({
                "ph": "I", "s": "t", "name": format!("HAZARD {}", e.field("class").unwrap_or_default()),
                "cat": "hazard", "pid": PID, "tid": tid[&e.who], "ts": ts_us(e), "args": args_of(e),
            }));
        }
    }
    // Counter tracks: the value after each change, on the emitting task's
    // track id (viewers key counters by process and name).
    for e in events {
        let (key, series) = match e.name {
            "kref_get" | "kref_put" | "kref_init" => ("refcount", "refcount"),
            "complete" | "wait_for_completion_end" | "reinit_completion" => ("done", "done"),
            _ => continue,
        };
        let (Some(obj), Some(v)) = (
            e.field("kref"),
            e.field(key).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        out.push(json!({
            "ph": "C", "name": format!("{obj} {series}"), "cat": "kref",
            "pid": PID, "tid": tid[&e.who], "ts": ts_us(e), "args": {key: v},
        }));
    }
    for (mark, name) in [
        (an.revoke_start, "revoke starts"),
        (an.revoke_return, "revoke returned"),
    ] {
        if let Some(i) = mark {
            out.push(json!({"ph": "I", "s": "p", "name": name, "cat": "revoke", "pid": PID, "tid": tid[&events[i].who], "ts": ts_us(&events[i])}));
        }
    }
    for (id, l) in an
        .links
        .iter()
        .filter(|l| l.kind != LinkKind::Notify)
        .enumerate()
    {
        let (a, b) = (&events[l.from], &events[l.to]);
        out.push(json!({"ph": "s", "id": id + 1, "name": l.kind.name(), "cat": "flow", "pid": PID, "tid": tid[&a.who], "ts": ts_us(a)}));
        out.push(json!({"ph": "f", "bp": "e", "id": id + 1, "name": l.kind.name(), "cat": "flow", "pid": PID, "tid": tid[&b.who], "ts": ts_us(b)}));
    }
    json!({"traceEvents": out, "displayTimeUnit": "ns", "otherData": {"title": title}})
}

/// Checks a document against the trace-event format's rules: the object
/// form with a `traceEvents` array; every event has `ph`, `pid`, `tid` and
/// (but metadata) a finite, non-negative `ts`; `X` has a non-negative
/// `dur`; `I` (or the older `i`) has scope `g`, `p` or `t`; `M` is a known metadata name with
/// `args`; every event has a `cat`; every flow id has exactly one `s` and one `f`, the `f` not
/// before its `s`, and each end lies inside an `X` slice of its own track
/// (where viewers bind it); `X` slices of a track nest (no partial
/// overlap); a `C` counter has `args` of numbers. Returns every broken
/// rule.
pub fn validate(doc: &Value) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let Some(evs) = doc.get("traceEvents").and_then(Value::as_array) else {
        return Err(vec!["no traceEvents array".into()]);
    };
    let mut slices: BTreeMap<(u64, u64), Vec<(f64, f64)>> = BTreeMap::new();
    // Flow id -> (starts, ends), each as (pid, tid, ts).
    type Ends = Vec<(u64, u64, f64)>;
    let mut flows: BTreeMap<u64, (Ends, Ends)> = BTreeMap::new();
    for (n, e) in evs.iter().enumerate() {
        let ph = e.get("ph").and_then(Value::as_str).unwrap_or("");
        let pid = e.get("pid").and_then(Value::as_u64);
        let tid = e.get("tid").and_then(Value::as_u64);
        let ts = e.get("ts").and_then(Value::as_f64);
        if pid.is_none() || tid.is_none() {
            errs.push(format!("event {n}: pid/tid missing or not integers"));
            continue;
        }
        let key = (pid.unwrap_or(0), tid.unwrap_or(0));
        if ph != "M" && !ts.is_some_and(|t| t.is_finite() && t >= 0.0) {
            errs.push(format!("event {n}: ts missing or negative"));
            continue;
        }
        let ts = ts.unwrap_or(0.0);
        match ph {
            "M" => {
                let name = e.get("name").and_then(Value::as_str).unwrap_or("");
                if ![
                    "process_name",
                    "thread_name",
                    "thread_sort_index",
                    "process_sort_index",
                    "process_labels",
                ]
                .contains(&name)
                    || e.get("args").is_none()
                {
                    errs.push(format!("event {n}: bad metadata '{name}'"));
                }
            }
            "X" => match e.get("dur").and_then(Value::as_f64) {
                Some(d) if d >= 0.0 => slices.entry(key).or_default().push((ts, ts + d)),
                _ => errs.push(format!("event {n}: X without a non-negative dur")),
            },
            "i" | "I" => {
                let s = e.get("s").and_then(Value::as_str).unwrap_or("t");
                if !["g", "p", "t"].contains(&s) {
                    errs.push(format!("event {n}: instant scope '{s}'"));
                }
            }
            "s" | "f" => {
                let Some(id) = e.get("id").and_then(Value::as_u64) else {
                    errs.push(format!("event {n}: flow without id"));
                    continue;
                };
                let ent = flows.entry(id).or_default();
                if ph == "s" { &mut ent.0 } else { &mut ent.1 }.push((key.0, key.1, ts));
            }
            "C" => {
                // A counter's values are numbers (one series per key).
                let ok = e
                    .get("args")
                    .and_then(Value::as_object)
                    .is_some_and(|a| !a.is_empty() && a.values().all(Value::is_number));
                if !ok {
                    errs.push(format!("event {n}: counter without numeric args"));
                }
            }
            "B" | "E" | "b" | "e" | "n" => {}
            other => errs.push(format!("event {n}: unknown phase '{other}'")),
        }
        if ph != "M" && e.get("name").and_then(Value::as_str).is_none() {
            errs.push(format!("event {n}: no name"));
        }
        // Viewers and parsers split `cat` on commas without checking that
        // it is there (a missing one crashes TracerBench's trace model).
        if e.get("cat").and_then(Value::as_str).is_none() {
            errs.push(format!("event {n}: no cat"));
        }
    }
    let inside = |p: u64, t: u64, ts: f64| {
        slices
            .get(&(p, t))
            .is_some_and(|v| v.iter().any(|&(a, b)| a <= ts && ts <= b))
    };
    for (id, (s, f)) in &flows {
        if s.len() != 1 || f.len() != 1 {
            errs.push(format!(
                "flow {id}: {} start(s), {} end(s)",
                s.len(),
                f.len()
            ));
            continue;
        }
        if f[0].2 < s[0].2 {
            errs.push(format!("flow {id}: ends before it starts"));
        }
        for (p, t, ts) in [s[0], f[0]] {
            if !inside(p, t, ts) {
                errs.push(format!(
                    "flow {id}: an end at {ts} is in no slice of track {p}/{t}"
                ));
            }
        }
    }
    for ((p, t), v) in &slices {
        let mut v = v.clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut stack: Vec<(f64, f64)> = Vec::new();
        for s in v {
            // Timestamps are decimal microseconds: compare to within a
            // picosecond so that a slice ending where the next begins
            // does not count as overlapping.
            while stack.last().is_some_and(|top| top.1 <= s.0 + 1e-6) {
                stack.pop();
            }
            if let Some(top) = stack.last()
                && s.1 > top.1 + 1e-6
            {
                errs.push(format!(
                    "track {p}/{t}: slices [{}, {}] and [{}, {}] overlap without nesting",
                    top.0, top.1, s.0, s.1
                ));
            }
            stack.push(s);
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::sample;

    #[test]
    fn the_sample_is_a_valid_trace_with_tracks_flows_and_a_hazard() {
        let doc = chrome_json(&sample(), "t");
        validate(&doc).unwrap();
        let evs = doc["traceEvents"].as_array().unwrap();
        let threads: Vec<&str> = evs
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(threads.len(), 4, "{threads:?}");
        let starts = evs.iter().filter(|e| e["ph"] == "s").count();
        assert_eq!(starts, 2, "invalidate->unmap and signal->wake");
        assert!(evs.iter().any(|e| e["ph"] == "I" && e["cat"] == "hazard"));
        assert!(
            evs.iter()
                .any(|e| e["name"] == "dma_fence_wait 1:2" && e["ph"] == "X")
        );
    }

    #[test]
    fn the_count_is_a_counter_track() {
        use crate::links::tests::ev;
        let e = vec![
            ev(0, "imp", "kref_get", "kref=kref#1 refcount=2"),
            ev(1, "rev", "set_revoked", "ino=1 step=set_revoked"),
            ev(
                2,
                "rev",
                "kref_put",
                "ino=1 step=kref_put kref=kref#1 refcount=1",
            ),
            ev(3, "imp", "kref_put", "kref=kref#1 refcount=0"),
            ev(4, "imp", "complete", "kref=kref#1 done=1"),
            ev(
                5,
                "rev",
                "wait_for_completion_end",
                "kref=kref#1 done=0 ret=completed",
            ),
            ev(6, "rev", "kref_put", "kref=kref#1 refcount=bogus"),
        ];
        let doc = chrome_json(&e, "t");
        validate(&doc).unwrap();
        let evs = doc["traceEvents"].as_array().unwrap();
        let series = |name: &str, key: &str| -> Vec<(u64, f64)> {
            evs.iter()
                .filter(|x| x["ph"] == "C" && x["name"] == name)
                .map(|x| (x["args"][key].as_u64().unwrap(), x["ts"].as_f64().unwrap()))
                .collect()
        };
        let refs = series("kref#1 refcount", "refcount");
        assert_eq!(
            refs.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![2, 1, 0],
            "one value per change; an unreadable value is left out"
        );
        assert!(refs.windows(2).all(|w| w[0].1 < w[1].1), "in row order");
        assert_eq!(
            series("kref#1 done", "done")
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            vec![1, 0]
        );
        assert!(
            evs.iter()
                .filter(|x| x["ph"] == "C")
                .all(|x| x["cat"] == "kref")
        );
    }

    #[test]
    fn the_validator_refuses_broken_documents() {
        assert!(validate(&json!({})).is_err());
        let bad = json!({"traceEvents": [
            {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 1.0},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "t"}},
            {"ph": "s", "id": 1, "name": "f", "pid": 1, "tid": 1, "ts": 5.0},
            {"ph": "X", "name": "b", "pid": 1, "tid": 2, "ts": 1.0, "dur": 5.0},
            {"ph": "X", "name": "c", "pid": 1, "tid": 2, "ts": 3.0, "dur": 5.0},
            {"ph": "i", "s": "x", "name": "h", "pid": 1, "tid": 1, "ts": 1.0},
            {"ph": "C", "name": "k", "cat": "kref", "pid": 1, "tid": 1, "ts": 1.0, "args": {"refcount": "2"}},
        ]});
        let e = validate(&bad).unwrap_err();
        assert!(
            e.iter().any(|m| m.contains("without a non-negative dur")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("1 start(s), 0 end(s)")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("overlap without nesting")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("instant scope")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("event 1: no cat")), "{e:?}");
        assert!(
            e.iter()
                .any(|m| m.contains("event 6: counter without numeric args")),
            "{e:?}"
        );
    }
}
