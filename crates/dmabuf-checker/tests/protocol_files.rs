//! The acceptance of the protocol files: a new revoke sequence and a new
//! importer behaviour are each one file, with no Rust, and get verdicts
//! with replay tokens; a legal but wrong sequence is a deadlock finding; a
//! token is refused once its file changed.

use dmabuf_checker::explore::{self, CheckOptions, ReplayError, expectations};
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::{Library, Scenario};
use dmabuf_checker::token::StrategyKind;
use dmabuf_scenario::file::Answer;
use std::path::Path;

fn example(name: &str) -> (String, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/protocols")
        .join(name);
    (
        p.display().to_string(),
        std::fs::read_to_string(&p).unwrap(),
    )
}

fn opts() -> CheckOptions {
    CheckOptions {
        strategy: StrategyKind::Pct(3),
        schedules: 24,
        stalled_schedules: 8,
        seed: 1,
        ..CheckOptions::default()
    }
}

fn questions(lib: &mut Library, path: &str, text: &str) -> Vec<Scenario> {
    let f = lib.add_text(path, text).unwrap();
    lib.questions(&f).unwrap()
}

#[test]
fn a_new_sequence_file_gets_a_verdict_per_importer_with_a_token() {
    let (path, text) = example("v6-wait-after-unlock.toml");
    let mut lib = Library::builtin().unwrap();
    let qs = questions(&mut lib, &path, &text);
    assert_eq!(qs.len(), 15, "crossed with every built-in importer and mix");
    for sc in &qs {
        let r = explore::check(sc, &opts(), |_| {});
        let ex = expectations(sc, &r).unwrap();
        assert!(!ex.is_empty(), "{}: the file states expectations", sc.name);
        for e in &ex {
            assert!(
                e.met,
                "{}: {} expected {:?}, found {:?}",
                sc.name, e.property, e.expected, e.found
            );
        }
        if sc.name.ends_with(".lying") {
            let lb = r
                .properties
                .iter()
                .find(|p| p.property == Property::LBounded)
                .unwrap();
            let ce = lb
                .counterexample
                .as_ref()
                .expect("a token for the violation");
            let (_, verdicts) = explore::replay(&lib, &ce.token).unwrap();
            assert!(
                verdicts
                    .iter()
                    .any(|(p, v)| *p == Property::LBounded && v.is_some()),
                "the token replays the violation"
            );
        }
    }
}

#[test]
fn expectations_that_do_not_match_fail() {
    let (path, text) = example("v6-wait-after-unlock.toml");
    // Claim that the lying importer never hangs the revoke.
    let wrong = text.replace(
        "with = \"lying\"\nsometimes = [\"l-bounded\"]",
        "with = \"lying\"\nnever = [\"l-bounded\"]",
    );
    assert_ne!(wrong, text);
    let mut lib = Library::builtin().unwrap();
    let qs = questions(&mut lib, &path, &wrong);
    let sc = qs.iter().find(|s| s.name.ends_with(".lying")).unwrap();
    let r = explore::check(sc, &opts(), |_| {});
    let ex = expectations(sc, &r).unwrap();
    let lb = ex
        .iter()
        .find(|e| e.property == Property::LBounded)
        .unwrap();
    assert_eq!(lb.expected, Answer::Never);
    assert!(!lb.met, "a violated property does not meet 'never'");
}

#[test]
fn a_new_importer_file_gets_a_verdict_per_protocol_with_tokens() {
    let (path, text) = example("gpu-cache-enodev.toml");
    let mut lib = Library::builtin().unwrap();
    let qs = questions(&mut lib, &path, &text);
    assert_eq!(qs.len(), 12, "crossed with every built-in revoke protocol");
    assert!(
        qs.iter()
            .all(|s| s.spec.importers[0].name == "gpu-cache-enodev")
    );
    for sc in &qs {
        let r = explore::check(sc, &opts(), |_| {});
        for e in expectations(sc, &r).unwrap() {
            assert!(
                e.met,
                "{}: {} expected {:?}, found {:?}",
                sc.name, e.property, e.expected, e.found
            );
        }
        if sc.name.contains("v2-invalidate-only") {
            let f = r
                .properties
                .iter()
                .find(|p| p.property == Property::SFence)
                .unwrap();
            let ce = f.counterexample.as_ref().unwrap();
            assert!(
                ce.token
                    .scenario
                    .starts_with("matrix.v2-invalidate-only.gpu-cache-enodev")
            );
            explore::replay(&lib, &ce.token).unwrap();
        }
    }
}

#[test]
fn a_wait_under_the_lock_is_a_deadlock_finding_with_a_token() {
    let (path, text) = example("wait-under-lock.toml");
    let mut lib = Library::builtin().unwrap();
    let qs = questions(&mut lib, &path, &text);
    assert_eq!(qs.len(), 1);
    let r = explore::check(&qs[0], &opts(), |_| {});
    let d = r
        .properties
        .iter()
        .find(|p| p.property == Property::NoDeadlock)
        .unwrap();
    assert_eq!(d.answer(), Answer::Always);
    let ce = d.counterexample.as_ref().unwrap();
    assert!(
        ce.violation.detail.starts_with("deadlock"),
        "{}",
        ce.violation.detail
    );
    let (run, _) = explore::replay(&lib, &ce.token).unwrap();
    assert!(matches!(
        run.report.outcome,
        dmabuf_core::sync::sched::Outcome::Deadlock { .. }
    ));
}

#[test]
fn a_token_is_refused_once_its_file_changed() {
    let (path, text) = example("wait-under-lock.toml");
    let mut lib = Library::builtin().unwrap();
    let qs = questions(&mut lib, &path, &text);
    let r = explore::check(&qs[0], &opts(), |_| {});
    let token = r
        .properties
        .iter()
        .find_map(|p| p.counterexample.as_ref())
        .unwrap()
        .token
        .clone();
    // The same scenario name, another sequence: unlock before the wait.
    let changed = text.replacen(
        "  \"kref_put\",\n  \"wait_for_completion\",\n  \"dma_resv_unlock\",",
        "  \"dma_resv_unlock\",\n  \"kref_put\",\n  \"wait_for_completion\",",
        1,
    );
    assert_ne!(changed, text);
    let mut lib2 = Library::builtin().unwrap();
    lib2.add_text(&path, &changed).unwrap();
    match explore::replay(&lib2, &token) {
        Err(ReplayError::Changed { scenario, .. }) => {
            assert!(scenario.starts_with("unmap-wait-under-lock"), "{scenario}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}
