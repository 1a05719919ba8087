//! The hazard monitor under the checker's partial-order reduction
//! (`monitor.rs`, "Order and time"): what a verdict rests on stays ordered
//! (a reuse event's scan of the live mappings against a declaration, a
//! read against the stamp that revokes its page), the monitor's own
//! bookkeeping (record numbers, logs) orders nothing.

mod common;
use common::*;
use dmabuf_core::sync::sched::{self, Dpor, Outcome, RunConfig, Strategy};
use dmabuf_core::sync::thread;
use dmabuf_platform::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Runs `body` (given a machine built inside the execution) in every
/// Mazurkiewicz trace; returns the executions and the outcomes it wrote.
fn every_trace(body: fn(Machine) -> String) -> (u64, BTreeSet<String>) {
    let mut dpor = Dpor::new(1000);
    let cfg = RunConfig {
        max_steps: 100_000,
        ..RunConfig::default()
    };
    let mut runs = 0;
    let mut seen = BTreeSet::new();
    while dpor.next_execution() {
        let out = Arc::new(Mutex::new(String::new()));
        let o = out.clone();
        let r = sched::run(&mut dpor, &cfg, move || {
            *o.lock().unwrap() = body(machine());
        });
        assert!(matches!(r.outcome, Outcome::Completed), "{:?}", r.outcome);
        assert_eq!(r.divergence, None);
        runs += 1;
        assert!(runs < 1000, "the search does not end");
        seen.insert(out.lock().unwrap().clone());
    }
    assert!(dpor.bounds_hit().is_empty(), "{:?}", dpor.bounds_hit());
    (runs, seen)
}

#[test]
fn a_reuse_event_sees_a_mapping_declared_concurrently_or_not() {
    let (runs, seen) = every_trace(|m| {
        let bar = m.bar();
        let mon = m.p.monitor().clone();
        let a = thread::spawn(move || {
            mon.declare_mapping(MappingDecl {
                attachment: 1,
                importer: Accessor::new("gpu0"),
                exporter: None,
                ranges: vec![DeclaredRange::bus(bar, PAGE_SIZE)],
            })
            .unwrap()
        });
        let p = m.p.clone();
        let b = thread::spawn(move || {
            p.note_reuse(ReuseKind::Reset, "vfio0", &[PhysRange::new(bar, PAGE_SIZE)]);
        });
        let _token = a.join().unwrap();
        b.join().unwrap();
        let ev = m.p.monitor().reuse_events();
        format!("outstanding {}", ev[0].outstanding.len())
    });
    assert_eq!(
        seen,
        BTreeSet::from(["outstanding 0".to_owned(), "outstanding 1".to_owned()])
    );
    assert_eq!(runs, 2, "the scan and the declaration, in either order");
}

#[test]
fn a_read_and_the_stamp_of_its_page_are_two_traces_whatever_the_record_numbers() {
    let (runs, seen) = every_trace(|m| {
        let bar = m.bar();
        let ex =
            m.p.monitor()
                .register_exporter("vfio0-dmabuf", &Accessor::new("vfio0"))
                .unwrap();
        let port = m.gpu_port.clone();
        let a = thread::spawn(move || {
            let mut b = [0u8; 4];
            let _ = port.read(&bus(bar), &mut b);
        });
        let mon = m.p.monitor().clone();
        let b = thread::spawn(move || {
            mon.revoke_returned(ex, &[PhysRange::new(bar, PAGE_SIZE)])
                .unwrap();
        });
        a.join().unwrap();
        b.join().unwrap();
        format!("{:?}", m.classes())
    });
    assert_eq!(
        seen,
        BTreeSet::from(["[]".to_owned(), "[AccessAfterRevoke]".to_owned()])
    );
    // Before or after the stamp: the hazard's number, taken after the
    // stamp's or before it, is not a third trace.
    assert_eq!(runs, 2);
}
