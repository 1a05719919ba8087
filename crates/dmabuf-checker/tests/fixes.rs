//! The 2026 fixes as replays (`protocols/fixes/`): for each fix, a buggy and
//! a fixed protocol file named after the commit. Each file states the
//! verdict it expects; here every file is checked through the checker
//! library with a small budget, every expectation must be met and no
//! property may be violated without one (what `dmabuf check FILE` decides
//! its verdict by), and each buggy file must show its real symptom: a
//! refcount_t underflow and a hung close, a use of a destroyed lock, memory
//! disabled under a live mapping, a pinned importer admitted, an early
//! return with a live mapping.

mod common;

use dmabuf_checker::explore::{self, CheckOptions, CheckReport};
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::{Library, Scenario};
use dmabuf_checker::token::StrategyKind;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocols/fixes")
}

/// Checks one file: its one scenario, with the strategy it suggests.
fn check(name: &str) -> (Library, Scenario, CheckReport) {
    let mut lib = Library::builtin().unwrap();
    let f = lib.add_file(&dir().join(name)).unwrap();
    let qs = lib.questions(&f).unwrap();
    assert_eq!(qs.len(), 1, "{name}: one scenario per file");
    let sc = qs.into_iter().next().unwrap();
    assert!(!sc.expect.is_empty(), "{name}: states its expected verdict");
    let strategy = match sc.strategy.as_deref() {
        Some("random") => StrategyKind::Random,
        _ => StrategyKind::Pct(3),
    };
    let opts = CheckOptions {
        strategy,
        schedules: 30,
        stalled_schedules: 8,
        seed: 1,
        shrink: false,
        ..CheckOptions::default()
    };
    let r = explore::check(&sc, &opts, |_| {});
    common::assert_judged(name, &sc, &r);
    (lib, sc, r)
}

fn detail(r: &CheckReport, p: Property) -> String {
    let v = &r
        .properties
        .iter()
        .find(|x| x.property == p)
        .unwrap()
        .counterexample
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no counterexample for {p}", r.scenario))
        .violation;
    format!("{} {}", v.detail, v.hazard.clone().unwrap_or_default())
}

fn holds(r: &CheckReport) -> bool {
    r.properties.iter().all(|p| p.holds())
}

#[test]
fn every_fix_has_a_buggy_and_a_fixed_file_and_nothing_else_is_there() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = Vec::new();
    for fix in [
        "61ceaf236115",
        "c64a647c84f3",
        "d97708701434",
        "f2d70dbd3dce",
        "v5-unrevoke-order",
    ] {
        want.push(format!("{fix}-buggy.toml"));
        want.push(format!("{fix}-fixed.toml"));
    }
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn c64a647c84f3_the_close_of_a_revoked_buffer_underflows_and_hangs_until_fixed() {
    let (lib, _, r) = check("c64a647c84f3-buggy.toml");
    assert!(detail(&r, Property::NoWarn).contains("refcount_t: underflow"));
    assert!(detail(&r, Property::NoDeadlock).contains("deadlock"));
    assert!(detail(&r, Property::LBounded).contains("revoke 3 of 3 did not complete"));
    // The token replays the hang.
    let t = &r
        .properties
        .iter()
        .find(|p| p.property == Property::NoDeadlock)
        .unwrap()
        .counterexample
        .as_ref()
        .unwrap()
        .token;
    let (_, verdicts) = explore::replay(&lib, t).unwrap();
    assert!(
        verdicts
            .iter()
            .any(|(p, v)| *p == Property::NoDeadlock && v.is_some())
    );
    let (_, _, r) = check("c64a647c84f3-fixed.toml");
    assert!(holds(&r));
}

#[test]
fn f2d70dbd3dce_a_revoke_racing_the_release_uses_the_destroyed_mutex_until_fixed() {
    let (_, sc, r) = check("f2d70dbd3dce-buggy.toml");
    assert!(sc.spec.teardown_during_revoke);
    assert!(detail(&r, Property::NoWarn).contains("BUG: KASAN: use-after-free in mutex_lock"));
    let (_, _, r) = check("f2d70dbd3dce-fixed.toml");
    assert!(holds(&r));
}

#[test]
fn d97708701434_disabling_the_function_before_the_cleanup_disables_mapped_memory_until_fixed() {
    let (_, _, r) = check("d97708701434-buggy.toml");
    let d = detail(&r, Property::SNoreuse);
    assert!(d.contains("decode-off of vfio0"), "{d}");
    assert!(d.contains("sg mapping"), "{d}");
    let (_, _, r) = check("d97708701434-fixed.toml");
    assert!(holds(&r));
}

#[test]
fn _61ceaf236115_a_pinned_importer_is_admitted_until_the_pin_op_refuses_it() {
    let (_, _, r) = check("61ceaf236115-buggy.toml");
    assert!(r.refusals.is_empty(), "admitted: {:?}", r.refusals);
    assert!(detail(&r, Property::SFence).contains("rdma-pinned0"));
    let (_, _, r) = check("61ceaf236115-fixed.toml");
    assert_eq!(r.refusals, vec!["rdma-pinned0: pin EOPNOTSUPP".to_string()]);
    assert!(holds(&r));
}

#[test]
fn v5_unrevoke_order_a_map_before_the_rearm_makes_the_next_revoke_return_early_until_fixed() {
    let (_, _, r) = check("v5-unrevoke-order-buggy.toml");
    assert!(detail(&r, Property::NoWarn).contains("refcount_t: addition on 0"));
    let d = detail(&r, Property::SNoreuse);
    assert!(d.contains("decode-off of vfio0 while 1 mapping(s)"), "{d}");
    let (_, _, r) = check("v5-unrevoke-order-fixed.toml");
    assert!(holds(&r));
}
