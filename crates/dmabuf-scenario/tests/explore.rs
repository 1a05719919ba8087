//! A smoke exploration for the checker's sake: every (policy, importer,
//! trigger) world under a random and a PCT schedule, in both stall modes,
//! must end without a task panic, a step-limit, a leaked thread, a driver
//! error, or (in normal mode) a deadlock or a leak. Verdicts about hazards
//! are the checker's business, not asserted here.

mod common;
use dmabuf_core::sync::sched::{self, Dpor, Outcome, Pct, Random, RunConfig, Strategy};
use dmabuf_scenario::world::{
    ExporterKind, StallMode, Trigger, WorldProbe, WorldSpec, run_world_with,
};

fn check(spec: &WorldSpec, mode: StallMode, s: &mut dyn Strategy, fails: &mut Vec<String>) -> u64 {
    assert!(s.next_execution());
    let probe = WorldProbe::new();
    let (p2, sp) = (probe.clone(), spec.clone());
    let r = sched::run(s, &RunConfig::default(), move || {
        run_world_with(&sp, mode, &p2);
    });
    let o = probe.snapshot();
    let dead = matches!(r.outcome, Outcome::Deadlock { .. });
    if !r.panics.is_empty()
        || r.outcome == Outcome::StepLimit
        || r.leaked_threads > 0
        || !o.errors.is_empty()
        || (mode == StallMode::Normal && (dead || !o.leaks.is_empty()))
    {
        fails.push(format!(
            "{:?} {} {:?} {mode:?} {}: {:?} panics={:?} leaks={:?} errors={:?}",
            spec.exporter,
            spec.protocol,
            spec.trigger,
            s.name(),
            r.outcome,
            r.panics,
            o.leaks,
            o.errors
        ));
    }
    r.steps
}

#[test]
fn every_vfio_world_ends_cleanly_under_random_and_pct_schedules() {
    let mut fails = Vec::new();
    let mut max_steps = 0;
    for (i, policy) in common::policies().into_iter().enumerate() {
        for kind in common::kinds() {
            for trigger in [
                Trigger::Flr,
                Trigger::Close,
                Trigger::UnrevokeCycle,
                Trigger::FlrCycle,
                Trigger::HotReset,
            ] {
                for mode in [StallMode::Normal, StallMode::StallUserspaceAtRevoke] {
                    let mut spec = WorldSpec {
                        trigger,
                        ..WorldSpec::vfio(policy.clone(), kind.clone())
                    };
                    spec.map_during_invalidate = i % 2 == 1;
                    spec.cpu_access = i % 3 == 1;
                    let seed = i as u64;
                    max_steps =
                        max_steps.max(check(&spec, mode, &mut Random::new(seed), &mut fails));
                    max_steps =
                        max_steps.max(check(&spec, mode, &mut Pct::new(seed, 3, 1500), &mut fails));
                }
            }
        }
    }
    assert!(fails.is_empty(), "{:#?}", fails);
    assert!(max_steps < 5000, "a world took {max_steps} steps");
}

#[test]
fn heap_and_vram_worlds_end_cleanly_with_mixed_importers() {
    let mut fails = Vec::new();
    for (exporter, trigger) in [
        (ExporterKind::SystemHeap, Trigger::Close),
        (ExporterKind::GpuVram, Trigger::Eviction),
        (ExporterKind::GpuVram, Trigger::Close),
    ] {
        for (i, kind) in common::kinds().into_iter().enumerate() {
            let mut spec = WorldSpec {
                exporter,
                trigger,
                ..WorldSpec::vfio(common::p("v6-final"), kind)
            };
            spec.importers.push(common::k("gpu"));
            check(
                &spec,
                StallMode::Normal,
                &mut Random::new(i as u64),
                &mut fails,
            );
        }
    }
    assert!(fails.is_empty(), "{:#?}", fails);
}

#[test]
fn a_matrix_cell_revokes_unrevokes_remaps_revokes_and_closes_and_records_every_revoke() {
    for (imp, remaps) in [
        ("gpu", true),
        ("rdma-odp", true),
        ("iommufd", true),
        // Pinned revocable MRs are revoked for good: the re-map is refused.
        ("rdma-pinned-revocable", false),
    ] {
        let spec = WorldSpec::vfio(common::p("v6-final"), common::k(imp));
        assert_eq!(spec.trigger, Trigger::FlrCycle);
        for seed in 0..3 {
            let mut s = Random::new(seed);
            assert!(s.next_execution());
            let probe = WorldProbe::new();
            let (p2, sp) = (probe.clone(), spec.clone());
            let r = sched::run(&mut s, &RunConfig::default(), move || {
                run_world_with(&sp, StallMode::Normal, &p2);
            });
            assert_eq!(r.outcome, Outcome::Completed, "{imp}");
            let o = probe.snapshot();
            assert!(o.errors.is_empty(), "{imp}: {:?}", o.errors);
            assert_eq!(
                o.counters["vfio_revokes"], 3,
                "{imp}: FLR, decode off, close"
            );
            assert_eq!(o.counters["vfio_unrevokes"], 1, "{imp}");
            let ok = o
                .counters
                .get("jobs_after_unrevoke_ok")
                .copied()
                .unwrap_or(0);
            assert_eq!(ok == 1, remaps, "{imp}: {:?}", o.counters);
            assert_eq!(o.revokes.len(), 3, "{imp}: {:?}", o.revokes);
            assert!(
                o.revokes
                    .iter()
                    .all(|r| r.returned && r.live_mappings_at_return == 0)
            );
            assert!(o.revokes[0].unrevoked_seq.is_some(), "the FLR un-revokes");
            assert!(o.revokes[1].unrevoked_seq.is_none(), "closed while revoked");
            assert!(o.revokes[2].already_revoked, "cleanup of a revoked buffer");
        }
    }
}

/// The executions of a complete stalled-userspace search of a one-importer
/// cycle (`v6-final` x `iommufd`, one job), and how many of them stalled
/// userspace in the middle of its re-map: the importer's second map done,
/// its first job after the un-revoke not finished (no restore recorded).
fn stalled_mid_remap(stall_in_remap: bool) -> (u64, u64) {
    let mut spec = WorldSpec::vfio(common::p("v6-final"), common::k("iommufd"));
    spec.jobs = 1;
    spec.stall_in_remap = stall_in_remap;
    let mut dpor = Dpor::new(10_000);
    let (mut executions, mut mid_remap) = (0, 0);
    while dpor.next_execution() {
        let probe = WorldProbe::new();
        let (p2, sp) = (probe.clone(), spec.clone());
        let r = sched::run(&mut dpor, &RunConfig::default(), move || {
            run_world_with(&sp, StallMode::StallUserspaceAtRevoke, &p2);
        });
        assert!(r.panics.is_empty(), "{r:?}");
        let o = probe.snapshot();
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        executions += 1;
        if o.counters.get("maps").copied().unwrap_or(0) >= 2 && o.restores.is_empty() {
            mid_remap += 1;
        }
    }
    assert!(dpor.bounds_hit().is_empty(), "{:?}", dpor.bounds_hit());
    (executions, mid_remap)
}

/// Stalled when a revoke begins, or before the clock first moves,
/// userspace never gets to the re-map; stalled when the second revoke
/// begins, it has finished it. Only `stall_in_remap` stalls it in between,
/// in executions of their own.
#[test]
fn stall_in_remap_stalls_userspace_in_the_middle_of_its_re_map() {
    let (without, none) = stalled_mid_remap(false);
    assert_eq!(none, 0, "of {without}");
    let (with, some) = stalled_mid_remap(true);
    assert!(some > 0, "none of {with} stalled mid-re-map");
    assert!(with >= without + some, "{with} < {without} + {some}");
}
