//! The matrix's proof attempts (`CheckOptions::proof`): a property is
//! `proved` only when the DPOR searches of its modes finished on the
//! scenario's own configuration, `proved-reduced` when they finished on a
//! smaller one only; over budget it stays `sampled` and names the bound; a
//! violation the search finds is a violation, with a token for the
//! configuration searched.

use dmabuf_checker::explore::{self, CheckOptions, CheckReport, ProofOptions};
use dmabuf_checker::matrix;
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::{Scenario, find};
use dmabuf_checker::token::{RunMode, StrategyKind};
use dmabuf_core::sync::sched::Bound;

fn opts(props: &[Property], budget: u64) -> CheckOptions {
    CheckOptions {
        strategy: StrategyKind::Pct(3),
        schedules: 3,
        stalled_schedules: 1,
        seed: 1,
        properties: props.to_vec(),
        shrink: false,
        proof: Some(ProofOptions {
            budget,
            jobs: 1,
            reduced_budget: 0,
            mix_budget: 0,
        }),
        ..CheckOptions::default()
    }
}

#[test]
fn a_whole_cycle_cell_is_proved_in_its_own_configuration() {
    // A matrix cell (FLR with DMA in flight, un-revoke, re-map, decode off,
    // close while revoked; stalls anywhere) with its own two jobs: every
    // property judged is proved within the default budget.
    let sc = find("matrix.v6-final.iommufd").unwrap();
    let mut o = opts(&Property::ALL, explore::DEFAULT_PROOF_BUDGET);
    o.proof = Some(ProofOptions::default());
    assert_eq!(sc.spec.jobs, explore::DEFAULT_PROOF_JOBS);
    let r = explore::check(&sc, &o, |_| {});
    for p in &r.properties {
        let proof = p.proof.as_ref().expect("a proof attempt was made");
        assert_eq!(proof.config, "matrix.v6-final.iommufd", "not reduced");
        assert!(proof.exhaustive && proof.bounds_hit.is_empty(), "{p:?}");
        assert!(proof.executions > 1);
        assert_eq!(proof.violations, 0, "{p:?}");
        assert_eq!(p.status(), "proved");
        // A finished search knows its size: the executions it ran, per
        // mode.
        let sized: u64 = proof.estimates.iter().map(|e| e.1).sum();
        assert_eq!(sized, proof.executions, "{p:?}");
        // The sampled part ran 3 + 1 schedules and claims nothing.
        assert!(!p.exhaustive);
    }
}

#[test]
fn a_gpu_cell_is_proved_in_its_own_configuration() {
    // The GPU importer brings a kernel worker, job fences, a read-ahead
    // engine and two waiters on one fence (its worker and the revoker):
    // still every property of the cell is proved within the default
    // budget, because the search is told what commutes (fence flag bits,
    // idempotent enables, the file count, the job slot).
    let sc = find("matrix.v6-final.gpu").unwrap();
    let mut o = opts(&Property::ALL, explore::DEFAULT_PROOF_BUDGET);
    o.proof = Some(ProofOptions::default());
    let r = explore::check(&sc, &o, |_| {});
    for p in &r.properties {
        let proof = p.proof.as_ref().expect("a proof attempt was made");
        assert_eq!(proof.config, "matrix.v6-final.gpu", "not reduced");
        assert!(proof.exhaustive && proof.bounds_hit.is_empty(), "{p:?}");
        assert_eq!(proof.violations, 0, "{p:?}");
        assert_eq!(p.status(), "proved");
    }
}

#[test]
fn a_finished_stalled_search_proves_l_bounded_for_the_one_job_configuration_only() {
    let sc = find("vfio-iommufd-flr").unwrap();
    assert!(
        sc.spec.jobs > 1,
        "the scenario's own configuration has more jobs"
    );
    let r = explore::check(&sc, &opts(&[Property::LBounded], 4_000), |_| {});
    let p = &r.properties[0];
    let proof = p.proof.as_ref().expect("a proof attempt was made");
    assert_eq!(proof.config, "vfio-iommufd-flr.jobs1");
    assert!(proof.exhaustive, "{proof:?}");
    assert!(proof.bounds_hit.is_empty());
    assert!(proof.executions > 1);
    assert_eq!(proof.violations, 0);
    assert!(proof.reduced);
    // A proof of the one-job configuration, not of the scenario's own.
    assert!(!p.proved());
    assert!(p.proved_reduced());
    assert_eq!(p.status(), "proved-reduced");
    // The sampled part ran on the cell's own configuration.
    assert_eq!(p.schedules, 1);
    assert!(!p.exhaustive);
}

#[test]
fn a_search_over_its_budget_is_sampled_and_names_the_bound() {
    let sc = find("matrix.v6-final.iommufd").unwrap();
    let r = explore::check(
        &sc,
        &opts(&[Property::LBounded, Property::SFence], 3),
        |_| {},
    );
    for p in &r.properties {
        let proof = p.proof.as_ref().unwrap();
        assert!(!proof.exhaustive, "{p:?}");
        assert!(proof.bounds_hit.contains(&Bound::Executions), "{p:?}");
        assert!(!p.proved());
        assert_eq!(p.status(), "sampled");
    }
    // The stalled search (the whole budget: 3) did not finish, so the
    // normal-mode one was not started: s-fence's proof counts only the 3
    // stalled executions.
    let sf = r
        .properties
        .iter()
        .find(|p| p.property == Property::SFence)
        .unwrap();
    assert_eq!(sf.proof.as_ref().unwrap().executions, 3);
    // What the stalled search would take in all, from its progress: more
    // than the 3 it ran; the normal-mode search, never started, has no
    // estimate.
    let est = &sf.proof.as_ref().unwrap().estimates;
    assert_eq!(est.len(), 1, "{est:?}");
    assert_eq!(est[0].0, RunMode::Stalled);
    assert!(est[0].1 > 3, "{est:?}");
}

#[test]
fn a_violation_the_search_finds_is_a_violation_with_a_token_for_its_configuration() {
    // The lying importer never unmaps: with userspace stalled, revoke's
    // unbounded wait for the last unmap never returns under v6-final.
    let sc = find("matrix.v6-final.lying").unwrap();
    let r = explore::check(&sc, &opts(&[Property::LBounded], 8_000), |_| {});
    let p = &r.properties[0];
    let proof = p.proof.as_ref().unwrap();
    assert!(proof.violations > 0, "{proof:?}");
    assert!(!p.holds());
    assert!(!p.proved());
    assert_eq!(p.status(), "violated");
    let c = p.counterexample.as_ref().expect("a counterexample");
    assert!(c.token.scenario.starts_with("matrix.v6-final.lying"));
}

/// Every property of `name` checked with a proof attempt of 20 executions
/// per mode (too few for the cell's own configuration) and the default
/// second attempt.
fn check_with_second_attempt(name: &str) -> (Scenario, CheckReport) {
    let sc = find(name).unwrap();
    let mut o = opts(&Property::ALL, 20);
    o.proof = Some(ProofOptions {
        budget: 20,
        jobs: explore::DEFAULT_PROOF_JOBS,
        reduced_budget: explore::DEFAULT_REDUCED_BUDGET,
        mix_budget: explore::DEFAULT_MIX_BUDGET,
    });
    let r = explore::check(&sc, &o, |_| {});
    (sc, r)
}

#[test]
fn a_cell_its_own_search_cannot_finish_is_proved_for_its_smallest_configuration() {
    // v4's GPU cell: each speculative read races with each step of the
    // revoker, and no search of the cell's own two jobs and four idle
    // passes finishes in 40,000 executions. The second attempt searches
    // one job and one idle pass, with the speculative reads unordered:
    // s-final and s-noreuse, which judge them, are already violated.
    let (sc, r) = check_with_second_attempt("matrix.v4-bookkeep-wait.gpu");
    let mut reduced = 0;
    for p in &r.properties {
        let proof = p.proof.as_ref().expect("a proof attempt was made");
        if p.holds() {
            assert_eq!(
                proof.config,
                "matrix.v4-bookkeep-wait.gpu.idle1.jobs1.ra-unordered"
            );
            assert!(proof.reduced && proof.exhaustive, "{p:?}");
            assert!(proof.executions > 20, "{p:?}");
            assert_eq!(p.status(), "proved-reduced");
            assert!(!p.proved());
            reduced += 1;
        } else {
            // v4 returns from revoke with the GPU's mapping outstanding.
            assert!(
                matches!(p.property, Property::SFinal | Property::SNoreuse),
                "{p:?}"
            );
            assert_eq!(p.status(), "violated");
        }
    }
    assert_eq!(reduced, r.properties.len() - 2);
    // The smaller configuration's name resolves to the world searched.
    let small = explore::smallest_proof_scenario(&sc).unwrap();
    assert_eq!(small.name, "matrix.v4-bookkeep-wait.gpu.idle1.jobs1");
    assert_eq!(find(&small.name).unwrap().hash(), small.hash());
}

#[test]
fn a_cell_whose_revoke_waits_with_a_timeout_is_proved_for_its_smallest_configuration() {
    // v5's revoke waits at most 1 s for the last unmap, and the wait may
    // expire at any scheduling point once it sleeps: an order the search
    // explores like any other, and which must not keep it from finishing.
    let (_, r) = check_with_second_attempt("matrix.v5-unmap-timeout.gpu-lazy");
    let mut reduced = Vec::new();
    let mut violated = Vec::new();
    for p in &r.properties {
        let proof = p.proof.as_ref().expect("a proof attempt was made");
        if p.holds() {
            assert_eq!(
                proof.config,
                "matrix.v5-unmap-timeout.gpu-lazy.idle1.jobs1.ra-unordered"
            );
            assert!(proof.reduced && proof.exhaustive, "{p:?}");
            assert_eq!(p.status(), "proved-reduced");
            reduced.push(p.property);
        } else {
            violated.push(p.property);
        }
    }
    // The lazy GPU unmaps only when its BO is freed: the 1 s wait gives up
    // with the mapping live, and the close of the revoked buffer
    // underflows the count.
    violated.sort_by_key(|p| p.name());
    assert_eq!(
        violated,
        [Property::NoWarn, Property::SFinal, Property::SNoreuse],
        "{r:?}"
    );
    assert_eq!(reduced.len(), 6);
}

#[test]
fn a_mix_is_proved_for_its_smallest_configuration_with_its_importers_taking_turns() {
    // RDMA's own exporter with a GPU and an ODP importer: the cell's own
    // searches do not finish within the matrix's first attempt, nor do
    // those of its one-job, one-idle-pass world with the importers free
    // to interleave their system calls (not in 5,000 + 1,250 executions;
    // estimated at 15,000 normal-mode ones). Taking turns, that world's
    // searches finish in 688 normal and 252 stalled-userspace executions.
    let sc = find("matrix.rdma-export.gpu+rdma-odp").unwrap();
    let mut o = opts(&Property::ALL, 8);
    let proof = |mix_budget| ProofOptions {
        budget: 8,
        jobs: explore::DEFAULT_PROOF_JOBS,
        reduced_budget: 0,
        mix_budget,
    };
    o.proof = Some(proof(5_000));
    let r = explore::check(&sc, &o, |_| {});
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    for p in &r.properties {
        assert!(p.holds(), "{p:?}");
        let pr = p.proof.as_ref().unwrap();
        assert_eq!(
            pr.config, "matrix.rdma-export.gpu+rdma-odp.idle1.jobs1.turns",
            "{p:?}"
        );
        assert!(
            pr.reduced && pr.exhaustive && pr.bounds_hit.is_empty(),
            "{p:?}"
        );
        assert_eq!(p.status(), "proved-reduced");
    }
    // The configuration's name resolves to the world searched.
    let small = explore::smallest_proof_scenario(&sc).unwrap();
    assert!(small.spec.importers_take_turns);
    assert_eq!(find(&small.name).unwrap().hash(), small.hash());
    // A mix budget too small to finish: sampled, and the attempt reported
    // is the one with turns, with its bound and its estimated size.
    let mut o = opts(&Property::ALL, 8);
    o.proof = Some(proof(5));
    let r = explore::check(&sc, &o, |_| {});
    for p in &r.properties {
        let pr = p.proof.as_ref().unwrap();
        assert_eq!(
            pr.config, "matrix.rdma-export.gpu+rdma-odp.idle1.jobs1.turns",
            "{p:?}"
        );
        assert!(
            !pr.exhaustive && pr.bounds_hit.contains(&Bound::Executions),
            "{p:?}"
        );
        assert_eq!(p.status(), "sampled");
    }
    // The stalled-userspace search stopped at its budget, so the normal one
    // was not made; those judged with userspace stalled carry its size.
    let lb = r
        .properties
        .iter()
        .find(|p| p.property == Property::LBounded);
    let lb = lb.and_then(|p| p.proof.as_ref()).unwrap();
    assert_eq!(lb.executions, 5);
    assert!(
        lb.estimates
            .iter()
            .any(|e| e.0 == RunMode::Stalled && e.1 > 5),
        "{lb:?}"
    );
    // The one-importer budget is not the mix's: with no mix budget the
    // mix keeps its own attempt's bound.
    let mut o = opts(&Property::ALL, 8);
    o.proof = Some(ProofOptions {
        reduced_budget: 5_000,
        ..proof(0)
    });
    let r = explore::check(&sc, &o, |_| {});
    for p in &r.properties {
        let pr = p.proof.as_ref().unwrap();
        assert_eq!(pr.config, "matrix.rdma-export.gpu+rdma-odp", "{p:?}");
        assert_eq!(p.status(), "sampled");
    }
}

#[test]
fn a_mix_gets_no_second_attempt_without_a_mix_budget_and_a_small_world_no_smaller_one() {
    let sc = find("matrix.v6-final.iommufd+gpu").unwrap();
    let mut o = opts(&[Property::SFence], 8);
    o.proof = Some(ProofOptions {
        budget: 8,
        jobs: explore::DEFAULT_PROOF_JOBS,
        reduced_budget: 100,
        mix_budget: 0,
    });
    let r = explore::check(&sc, &o, |_| {});
    let p = &r.properties[0];
    let proof = p.proof.as_ref().unwrap();
    // Only s-fence is asked, which no speculative read decides (one is
    // never a write): the GPU's are left unordered.
    assert_eq!(
        proof.config, "matrix.v6-final.iommufd+gpu.ra-unordered",
        "{p:?}"
    );
    assert!(!proof.reduced && !proof.exhaustive);
    assert_eq!(p.status(), "sampled");
    // One job and no read-ahead: nothing to make smaller.
    let one = find("matrix.v6-final.iommufd.jobs1").unwrap();
    assert!(explore::smallest_proof_scenario(&one).is_none());
    // Only what changes is named.
    let iommufd = find("matrix.v6-final.iommufd").unwrap();
    assert_eq!(
        explore::smallest_proof_scenario(&iommufd).unwrap().name,
        "matrix.v6-final.iommufd.jobs1"
    );
}

/// A property's result with the given verdict parts (what the matrix's
/// summaries read).
fn result(
    property: Property,
    violations: u64,
    exhaustive: bool,
    proof: Option<explore::ProofResult>,
) -> explore::PropertyResult {
    explore::PropertyResult {
        property,
        schedules: 10,
        violations,
        strategy: "pct3".into(),
        exhaustive,
        bounds_hit: Vec::new(),
        sleep_blocked: 0,
        max_depth: 0,
        estimates: Vec::new(),
        counterexample: None,
        proof,
    }
}

fn attempt(estimates: Vec<(RunMode, u64)>, exhaustive: bool) -> explore::ProofResult {
    explore::ProofResult {
        config: "c".into(),
        reduced: false,
        exhaustive,
        executions: 2_000,
        violations: 0,
        bounds_hit: if exhaustive {
            Vec::new()
        } else {
            vec![Bound::Executions]
        },
        estimates,
    }
}

fn cell(importer: &str, refused: bool, properties: Vec<explore::PropertyResult>) -> matrix::Cell {
    matrix::Cell {
        policy: "v6".into(),
        importer: importer.into(),
        refused: refused.then(|| "attach EOPNOTSUPP".into()),
        report: CheckReport {
            scenario: format!("matrix.v6.{importer}"),
            refusals: Vec::new(),
            properties,
            runs: 10,
            errors: Vec::new(),
            elapsed_s: 0.0,
            split: Vec::new(),
        },
    }
}

#[test]
fn the_undecided_cells_are_sized_by_their_largest_open_search() {
    const SFENCE: Property = Property::SFence;
    const LBOUNDED: Property = Property::LBounded;
    let big = vec![(RunMode::Stalled, 9_000), (RunMode::Normal, 40_000)];
    let m = matrix::Matrix {
        rows: vec!["v6".into()],
        columns: Vec::new(),
        cells: vec![
            // Proved: not listed.
            cell(
                "proved",
                false,
                vec![result(
                    SFENCE,
                    0,
                    false,
                    Some(attempt(vec![(RunMode::Normal, 5)], true)),
                )],
            ),
            // One property violated, the other proved: decided.
            cell(
                "decided",
                false,
                vec![
                    result(SFENCE, 3, false, Some(attempt(vec![], false))),
                    result(
                        LBOUNDED,
                        0,
                        false,
                        Some(attempt(vec![(RunMode::Stalled, 7)], true)),
                    ),
                ],
            ),
            // Two open properties: the larger total of modes (49,000) wins
            // over the stalled-only one.
            cell(
                "open",
                false,
                vec![
                    result(
                        LBOUNDED,
                        0,
                        false,
                        Some(attempt(vec![(RunMode::Stalled, 30_000)], false)),
                    ),
                    result(SFENCE, 0, false, Some(attempt(big, false))),
                ],
            ),
            // Open, its attempt stopped in the stalled search: that alone.
            cell(
                "stalled-only",
                false,
                vec![result(
                    SFENCE,
                    0,
                    false,
                    Some(attempt(vec![(RunMode::Stalled, 64_000)], false)),
                )],
            ),
            // Open without a proof attempt: listed, no size.
            cell("unsized", false, vec![result(SFENCE, 0, false, None)]),
            // Refused: not a cell of the question.
            cell("refused", true, vec![result(SFENCE, 0, false, None)]),
        ],
        elapsed_s: 0.0,
        runs: 0,
    };
    assert_eq!(
        matrix::undecided_estimates(&m),
        vec![
            ("v6.open".to_owned(), Some((49_000, false))),
            ("v6.stalled-only".to_owned(), Some((64_000, true))),
            ("v6.unsized".to_owned(), None),
        ]
    );
}

/// A report with its wall time removed, for comparing two runs.
fn timeless(mut r: CheckReport) -> String {
    r.elapsed_s = 0.0;
    format!("{r:?}")
}

#[test]
fn the_two_modes_searched_side_by_side_report_what_one_after_the_other_does() {
    // v6 with the lying importer violates properties in both modes (its
    // device writes after the fence wait; l-bounded, judged only with
    // userspace stalled), so the merge has counts, first violations and
    // tokens from both; DPOR over budget adds bounds and estimates.
    let sc = find("matrix.v6-final.lying").unwrap();
    for (strategy, schedules) in [(StrategyKind::Random, 24), (StrategyKind::Dpor, 40)] {
        let o = CheckOptions {
            strategy,
            schedules,
            stalled_schedules: schedules / 2,
            seed: 3,
            dfs_bound: 10_000,
            shrink: false,
            ..CheckOptions::default()
        };
        let apart = explore::check(&sc, &o, |_| {});
        let side = explore::check(
            &sc,
            &CheckOptions {
                parallel_modes: true,
                ..o.clone()
            },
            |_| {},
        );
        let lb = apart
            .properties
            .iter()
            .find(|p| p.property == Property::LBounded)
            .unwrap();
        assert!(lb.violations > 0, "{strategy:?}: l-bounded is violated");
        assert!(
            apart
                .properties
                .iter()
                .any(|p| p.property != Property::LBounded && p.violations > 0),
            "{strategy:?}: a normal-mode property is violated"
        );
        // s-fence is judged in both modes: its first violation (and token)
        // must be the normal mode's, as when the modes run in turn.
        let fence = apart
            .properties
            .iter()
            .find(|p| p.property == Property::SFence)
            .unwrap();
        assert!(fence.schedules > lb.schedules && fence.violations > 0);
        let token = &fence.counterexample.as_ref().unwrap().token;
        assert_eq!(token.mode, RunMode::Normal, "{strategy:?}");
        assert_eq!(timeless(apart), timeless(side), "{strategy:?}");
    }
}

#[test]
fn progress_carries_each_dpor_search_size_as_estimated_so_far() {
    // The liar's normal-mode search finishes in a few executions; its
    // stalled-userspace search stops at its budget.
    let sc = find("matrix.v6-final.lying").unwrap();
    for parallel_modes in [false, true] {
        let o = CheckOptions {
            strategy: StrategyKind::Dpor,
            schedules: 40,
            stalled_schedules: 5,
            dfs_bound: 10_000,
            shrink: false,
            parallel_modes,
            ..CheckOptions::default()
        };
        let mut ticks = Vec::new();
        let r = explore::check(&sc, &o, |t| ticks.push(t));
        let last = *ticks.last().unwrap();
        assert_eq!(last.runs, r.runs, "parallel {parallel_modes}");
        let lb = r
            .properties
            .iter()
            .find(|p| p.property == Property::LBounded)
            .unwrap();
        let stalled = lb
            .estimates
            .iter()
            .find(|(m, _)| *m == RunMode::Stalled)
            .map(|e| e.1);
        assert!(stalled.is_some_and(|e| e > 5), "{:?}", lb.estimates);
        // The last size shown is the one reported.
        assert_eq!(last.stalled, stalled, "parallel {parallel_modes}");
        let normal_runs = r.runs - 5;
        assert_eq!(last.normal, Some(normal_runs), "a finished search: exact");
    }
    // Sampling has no search size.
    let o = CheckOptions {
        strategy: StrategyKind::Random,
        schedules: 8,
        stalled_schedules: 2,
        shrink: false,
        ..CheckOptions::default()
    };
    let mut ticks = Vec::new();
    explore::check(&sc, &o, |t| ticks.push(t));
    assert_eq!(ticks.len(), 10);
    assert!(
        ticks
            .iter()
            .all(|t| t.normal.is_none() && t.stalled.is_none())
    );
}

/// Every property's (result, exhaustive, bounds) of a complete DPOR search
/// of `name`.
fn dpor_search(name: &str) -> Vec<(Property, bool, bool, Vec<Bound>)> {
    let sc = find(name).unwrap();
    let o = CheckOptions {
        strategy: StrategyKind::Dpor,
        schedules: 100_000,
        stalled_schedules: 100_000,
        dfs_bound: explore::DPOR_BOUND,
        shrink: false,
        ..CheckOptions::default()
    };
    explore::check(&sc, &o, |_| {})
        .properties
        .into_iter()
        .map(|p| (p.property, p.holds(), p.exhaustive, p.bounds_hit))
        .collect()
}

#[test]
fn speculative_reads_left_unordered_decide_every_property_not_judged_from_them() {
    // v1's GPU keeps reading ahead across the revoke. Ordered, its
    // speculative reads race with each step of the revoker; unordered, the
    // search is several times smaller and every property but s-final and
    // s-noreuse gets the same verdict, proved; those two are reported not
    // exhaustive, naming why.
    let ordered = dpor_search("matrix.v1-core-flag.gpu");
    let unordered = dpor_search("matrix.v1-core-flag.gpu.ra-unordered");
    assert_eq!(ordered.len(), unordered.len());
    for (o, u) in ordered.iter().zip(&unordered) {
        assert_eq!(o.0, u.0);
        assert!(o.2 && o.3.is_empty(), "{o:?}");
        if o.0.judged_from_speculation() {
            assert!(!u.2, "{u:?}");
            assert_eq!(u.3, vec![Bound::Unobserved], "{u:?}");
        } else {
            assert_eq!(o.1, u.1, "{o:?} {u:?}");
            assert!(u.2 && u.3.is_empty(), "{u:?}");
        }
    }
}

#[test]
fn a_cell_whose_read_ahead_outlives_the_revoke_is_proved_with_its_speculative_reads_unordered() {
    // s-final and s-noreuse are violated (sampling finds the GPU's reads
    // after the revoke), so nothing left to prove depends on where those
    // reads fall: the cell's own proof attempt searches its world with them
    // unordered, and what holds is proved for the cell itself.
    let sc = find("matrix.v1-core-flag.gpu").unwrap();
    let mut o = opts(&Property::ALL, explore::DEFAULT_PROOF_BUDGET);
    o.proof = Some(ProofOptions::default());
    let r = explore::check(&sc, &o, |_| {});
    let mut proved = 0;
    for p in &r.properties {
        let proof = p.proof.as_ref().expect("a proof attempt was made");
        assert_eq!(proof.config, "matrix.v1-core-flag.gpu.ra-unordered");
        assert!(!proof.reduced, "the cell's own configuration");
        if p.property.judged_from_speculation() {
            assert_eq!(p.status(), "violated", "{p:?}");
            assert!(proof.bounds_hit.contains(&Bound::Unobserved), "{p:?}");
        } else if p.holds() {
            assert_eq!(p.status(), "proved", "{p:?}");
            proved += 1;
        }
    }
    assert_eq!(proved, 6, "{r:?}");
    // Where s-final holds, its proof needs the reads ordered: v6's cell is
    // searched as it is (`a_gpu_cell_is_proved_in_its_own_configuration`).
    let v6 = find("matrix.v6-final.gpu").unwrap();
    let r6 = explore::check(&v6, &o, |_| {});
    assert!(
        r6.properties
            .iter()
            .all(|p| p.proof.as_ref().unwrap().config == "matrix.v6-final.gpu")
    );
}
