//! The exports on real counterexamples: a cell of the matrix is checked, its
//! counterexample replayed, and the Perfetto document, the ftrace text and
//! the chart are checked against what the run contains.
//!
//! The Perfetto output is checked by `perfetto::validate` (the trace-event
//! format's rules): the registries' `perfetto` Python package parses traces
//! with a trace-processor binary it downloads at run time, which this
//! project's machines cannot do.

use dmabuf_checker::explore::{self, CheckOptions};
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::Library;
use dmabuf_report::{ftrace, msc, perfetto, replay_token};

fn token_of(policy: &str, importer: &str, p: Property) -> (Library, String) {
    let lib = Library::builtin().unwrap();
    let e = lib
        .rows()
        .into_iter()
        .find(|e| e.name == policy)
        .unwrap()
        .clone();
    let i = lib.importer(importer).unwrap().clone();
    let sc = lib.cell(&e, &i);
    let opts = CheckOptions {
        schedules: 20,
        stalled_schedules: 10,
        properties: vec![p],
        ..CheckOptions::default()
    };
    let r = explore::check(&sc, &opts, |_| {});
    let ce = r.properties[0]
        .counterexample
        .clone()
        .expect("the known violation is found");
    (lib, ce.token.to_string())
}

#[test]
fn perfetto_export_of_a_revoke_race_is_valid_and_has_its_arrows() {
    let (lib, tok) = token_of("v2-invalidate-only", "gpu", Property::SFence);
    let r = replay_token(&lib, &tok).unwrap();
    let doc = perfetto::chrome_json(&r.events, &tok);
    perfetto::validate(&doc).unwrap();
    let evs = doc["traceEvents"].as_array().unwrap();
    let flows = |name: &str| {
        evs.iter()
            .filter(|e| e["ph"] == "s" && e["name"] == name)
            .count()
    };
    assert!(flows("invalidate-unmap") >= 1, "invalidate -> unmap flow");
    assert!(flows("signal-wake") >= 1, "signal -> wake flow");
    assert!(evs.iter().any(|e| e["ph"] == "I" && e["cat"] == "hazard"));
    let tracks = evs.iter().filter(|e| e["name"] == "thread_name").count();
    let tasks: std::collections::BTreeSet<&str> = r.events.iter().map(|e| e.who.as_str()).collect();
    assert_eq!(tracks, tasks.len(), "a track per task");
    // Round trip through text: what the CLI prints parses back the same.
    let again: serde_json::Value = serde_json::from_str(&doc.to_string()).unwrap();
    assert_eq!(again, doc);
}

#[test]
fn replays_are_identical_and_deadlocks_name_no_address() {
    let (lib, tok) = token_of("v6-final", "lying", Property::LBounded);
    let a = replay_token(&lib, &tok).unwrap();
    let b = replay_token(&lib, &tok).unwrap();
    assert_eq!(a.events, b.events);
    assert_eq!(a.deadlock, b.deadlock);
    assert_eq!(a.outcome, "deadlock");
    let text = a.deadlock.join("\n");
    assert!(text.contains("wait_for_completion"), "{text}");
    assert!(!text.contains("0x7"), "{text}");
    // ftrace: one line per event after the header, kernel names kept.
    let f = ftrace::render(&a.events);
    assert_eq!(f.lines().count(), a.events.len() + 1);
    assert!(f.contains(" sched_switch:") && f.contains(" wait_for_completion:"));
    // The chart: the revoke's start is marked, its return is not (it never returns).
    let svg = msc::svg(&a.events, "x");
    assert!(svg.contains("revoke starts") && !svg.contains("revoke returned"));
}

#[test]
fn a_bad_token_is_an_error_not_a_panic() {
    let lib = Library::builtin().unwrap();
    assert!(replay_token(&lib, "nonsense").is_err());
    assert!(
        replay_token(
            &lib,
            "dmabuf3,matrix.v6-final.gpu,0000000000000000,pct3,1,normal,1.a,00000000"
        )
        .is_err()
    );
}

#[test]
fn the_chart_draws_the_count_of_a_known_counterexample() {
    // v6: the revoke puts the base reference and waits for the importers'
    // unmaps; the lying importer never unmaps, so the count stays at the
    // one reference of its mapping.
    let (lib, tok) = token_of("v6-final", "lying", Property::LBounded);
    let r = replay_token(&lib, &tok).unwrap();
    let svg = msc::svg(&r.events, "x");
    let shown: Vec<String> = svg
        .split(r#"<text class="st"#)
        .skip(1)
        .filter(|t| t.starts_with('"') || t.starts_with(" rv"))
        .filter_map(|t| {
            let t = &t[t.find('>')? + 1..];
            Some(t[..t.find('<')?].to_owned())
        })
        .collect();
    let kref = |l: &str| {
        l.split(" · ")
            .find_map(|p| p.strip_prefix("kref "))
            .map(str::to_owned)
    };
    let values: Vec<String> = shown.iter().filter_map(|l| kref(l)).collect();
    // The map takes a reference (2), the revoke's kref_put leaves 1.
    assert_eq!(values.first().map(String::as_str), Some("2"), "{shown:#?}");
    assert!(values.iter().any(|v| v == "1"), "{shown:#?}");
    let last = shown.last().unwrap();
    assert!(
        last.starts_with("revoked · 1 live mapping · kref 1 · "),
        "{shown:#?}"
    );
    // Each change of the count in the trace shows in the column.
    let mut changes: Vec<String> = Vec::new();
    for e in &r.events {
        if let Some(v) = e.field("refcount")
            && changes.last() != Some(&v)
        {
            changes.push(v);
        }
    }
    let mut drawn = values.clone();
    drawn.dedup();
    assert_eq!(drawn, changes);
    // The Perfetto export has the same values as a counter track.
    let doc = perfetto::chrome_json(&r.events, &tok);
    perfetto::validate(&doc).unwrap();
    let mut counter: Vec<String> = doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "kref#1 refcount")
        .map(|e| e["args"]["refcount"].to_string())
        .collect();
    counter.dedup();
    assert_eq!(counter, changes);
}
