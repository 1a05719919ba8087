//! The live variants of 2026 that the matrix rows do not carry
//! (`protocols/variants/`), and their correct counterparts in the library:
//!
//! * mmap of the VFIO dma-buf (Matt Evans' series): the correct exporter
//!   (`v10-mmap`: faults checked under `memory_lock`, zap after the unmap
//!   completion) holds with a process that maps the buffer and touches it
//!   across a whole cycle, alone and beside a GPU; without the zap, with
//!   the zap before the flag and a fault checked under the reservation
//!   lock, or with a fault that checks without a lock, a CPU PTE survives
//!   the revoke;
//! * the RDMA exporter (uverbs DMABUF object): with the 7.1 contract it
//!   revokes safely with revocable importers and refuses a pinned one;
//!   with the sequence 0ac6f4056c4a's message describes (no wait, no
//!   gate) the pinned MR's DMA outlives the revoke.
//!
//! Each file states the verdict it expects; as for the fix replays
//! (`tests/fixes.rs`), every expectation must be met, nothing may be
//! violated without one, and each buggy file must show its real symptom.

mod common;

use dmabuf_checker::explore::{self, CheckOptions, CheckReport};
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::{Library, Scenario};
use dmabuf_checker::token::{ReplayToken, StrategyKind};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocols/variants")
}

fn options(sc: &Scenario) -> CheckOptions {
    let strategy = match sc.strategy.as_deref() {
        Some("random") => StrategyKind::Random,
        _ => StrategyKind::Pct(3),
    };
    // The file's own budget when it names one (a narrow race), else a
    // small one.
    let schedules = sc.schedules.unwrap_or(30);
    CheckOptions {
        strategy,
        schedules,
        stalled_schedules: (schedules / 4).clamp(1, 8),
        seed: 1,
        shrink: false,
        ..CheckOptions::default()
    }
}

/// Checks `sc` against its expectations (what `dmabuf check` decides its
/// verdict by).
fn judged(name: &str, sc: &Scenario) -> CheckReport {
    let r = explore::check(sc, &options(sc), |_| {});
    common::assert_judged(name, sc, &r);
    r
}

/// Checks one variant file: its one scenario.
fn check(name: &str) -> (Library, Scenario, CheckReport) {
    let mut lib = Library::builtin().unwrap();
    let f = lib.add_file(&dir().join(name)).unwrap();
    let qs = lib.questions(&f).unwrap();
    assert_eq!(qs.len(), 1, "{name}: one scenario per file");
    let sc = qs.into_iter().next().unwrap();
    assert!(!sc.expect.is_empty(), "{name}: states its expected verdict");
    let r = judged(name, &sc);
    (lib, sc, r)
}

/// Checks a scenario of the library (a named one, or a matrix cell, which
/// must hold everything).
fn check_builtin(name: &str) -> CheckReport {
    let lib = Library::builtin().unwrap();
    let sc = lib.find(name).unwrap();
    judged(name, &sc)
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

fn token(r: &CheckReport, p: Property) -> ReplayToken {
    r.properties
        .iter()
        .find(|x| x.property == p)
        .unwrap()
        .counterexample
        .as_ref()
        .unwrap()
        .token
        .clone()
}

fn holds(r: &CheckReport) -> bool {
    r.properties.iter().all(|p| p.holds())
}

#[test]
fn the_variant_files_are_these() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "rdma-export-no-gate.toml",
            "v10-mmap-fault-unlocked.toml",
            "v10-mmap-no-zap.toml",
            "v10-mmap-zap-before-revoked-memory-lock.toml",
            "v10-mmap-zap-before-revoked.toml",
        ]
    );
}

#[test]
fn mmap_with_the_fault_under_memory_lock_and_the_zap_after_the_drain_holds() {
    // A process alone on the buffer: it maps it, faults while the FLR
    // revokes it (its faults wait for memory_lock), uses it again after
    // the un-revoke, and gets SIGBUS once decode is off.
    let r = check_builtin("matrix.v10-mmap.cpu-mmap");
    assert!(r.refusals.is_empty(), "{:?}", r.refusals);
    assert!(holds(&r));
    // Beside a GPU: the CPU keeps storing while the revoke waits for the
    // GPU's unmap, until the zap; no PTE survives.
    let r = check_builtin("vfio-mmap-gpu");
    assert!(holds(&r));
}

#[test]
fn without_an_mmap_op_the_cpu_user_is_refused() {
    // 7.1 and 7.2 VFIO (and the RDMA exporter) have no mmap op: EINVAL.
    for cell in ["matrix.v6-final.cpu-mmap", "matrix.rdma-export.cpu-mmap"] {
        let r = check_builtin(cell);
        assert_eq!(
            r.refusals,
            vec!["cpu-mmap0: mmap EINVAL".to_string()],
            "{cell}"
        );
    }
}

#[test]
fn mmap_without_the_zap_leaves_a_pte_to_the_reset_bar() {
    let (lib, _, r) = check("v10-mmap-no-zap.toml");
    let d = detail(&r, Property::SNoreuse);
    assert!(d.contains("of vfio0 while 1 mapping(s)"), "{d}");
    assert!(d.contains("cpu mapping by cpu-mmap0"), "{d}");
    let d = detail(&r, Property::SFinal);
    assert!(d.contains("AccessAfterRevoke by cpu-mmap0"), "{d}");
    // The token replays the stale PTE.
    assert_replays_violating(&lib, &r, Property::SNoreuse);
}

/// The token of `p`'s violation replays as a violation of `p`.
fn assert_replays_violating(lib: &Library, r: &CheckReport, p: Property) {
    let (_, verdicts) = explore::replay(lib, &token(r, p)).unwrap();
    assert!(verdicts.iter().any(|(q, v)| *q == p && v.is_some()), "{p}");
}

#[test]
fn mmap_zapping_before_the_flag_is_a_bug_under_the_reservation_lock_and_not_under_memory_lock() {
    let (lib, sc, r) = check("v10-mmap-zap-before-revoked.toml");
    assert_eq!(sc.strategy.as_deref(), Some("random"));
    let d = detail(&r, Property::SFinal);
    assert!(d.contains("AccessAfterRevoke by cpu-mmap0"), "{d}");
    assert_replays_violating(&lib, &r, Property::SFinal);
    // The same order with the series' fault handler: every trigger holds
    // memory_lock across the zap and the flag, no fault gets between.
    let (_, _, r) = check("v10-mmap-zap-before-revoked-memory-lock.toml");
    assert!(holds(&r));
}

#[test]
fn mmap_a_fault_checking_without_a_lock_inserts_after_the_zap() {
    let (lib, sc, r) = check("v10-mmap-fault-unlocked.toml");
    assert!(
        sc.schedules.is_some(),
        "a narrow race: the file sets its budget"
    );
    let d = detail(&r, Property::SFinal);
    assert!(d.contains("AccessAfterRevoke by cpu-mmap0"), "{d}");
    assert_replays_violating(&lib, &r, Property::SFinal);
}

#[test]
fn the_rdma_exporter_revokes_safely_with_revocable_importers() {
    for name in [
        "rdma-export-dm-free",
        "rdma-export-disassociate",
        "matrix.rdma-export.rdma-pinned-revocable",
        "matrix.rdma-export.rdma-odp",
        "matrix.rdma-export.gpu",
    ] {
        let r = check_builtin(name);
        assert!(r.refusals.is_empty(), "{name}: {:?}", r.refusals);
        assert!(holds(&r), "{name}");
    }
}

#[test]
fn the_rdma_exporter_refuses_a_pinned_importer_and_without_its_gate_the_mr_outlives_the_revoke() {
    let r = check_builtin("matrix.rdma-export.rdma-pinned");
    assert_eq!(
        r.refusals,
        vec!["rdma-pinned0: attach EOPNOTSUPP".to_string()]
    );
    assert!(holds(&r));
    let (_, _, r) = check("rdma-export-no-gate.toml");
    assert!(r.refusals.is_empty(), "admitted: {:?}", r.refusals);
    let d = detail(&r, Property::SFence);
    assert!(d.contains("rdma-pinned0"), "{d}");
    let d = detail(&r, Property::SNoreuse);
    assert!(d.contains("free of mlx0 dm 1 while 1 mapping(s)"), "{d}");
}
