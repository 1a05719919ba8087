//! Whole worlds, each a single deterministic schedule (a controlled
//! execution with a fixed Random seed, virtual time): the end-to-end
//! behaviours issue 6 asks for, per (policy, importer).

mod common;
use dmabuf_core::errno;
use dmabuf_core::sync::sched::{self, Outcome, Random, RunConfig, RunReport, Strategy};
use dmabuf_drivers::importers::Stage;
use dmabuf_platform::{AccessKind, Hazard, HazardClass, IommuFaultCause};
use dmabuf_scenario::world::{
    ExporterKind, ImporterSpec, Observation, StallMode, Trigger, WorldProbe, WorldSpec, run_world,
    run_world_with,
};

fn controlled_seed(spec: &WorldSpec, mode: StallMode, seed: u64) -> (Observation, RunReport) {
    let mut s = Random::new(seed);
    assert!(s.next_execution());
    let probe = WorldProbe::new();
    let (p2, spec) = (probe.clone(), spec.clone());
    let rep = sched::run(&mut s, &RunConfig::default(), move || {
        run_world_with(&spec, mode, &p2);
    });
    assert!(rep.panics.is_empty(), "task panics: {:?}", rep.panics);
    assert_eq!(rep.leaked_threads, 0);
    (probe.snapshot(), rep)
}

fn controlled(spec: &WorldSpec, mode: StallMode) -> (Observation, RunReport) {
    controlled_seed(spec, mode, 1)
}

fn spec(
    policy: std::sync::Arc<dmabuf_core::revoke::Protocol>,
    kind: ImporterSpec,
    trigger: Trigger,
) -> WorldSpec {
    WorldSpec {
        trigger,
        ..WorldSpec::vfio(policy, kind)
    }
}

fn classes(o: &Observation) -> Vec<HazardClass> {
    o.hazards.iter().map(|h| h.class).collect()
}

fn stopped_by_revoke(h: &Hazard) -> bool {
    h.class == HazardClass::IommuFault && h.iommu_fault == Some(IommuFaultCause::UnmappedByRevoke)
}

/// A completed, clean run: the revoke returned, nothing leaked, no error.
fn assert_clean(o: &Observation, r: &RunReport) {
    assert_eq!(r.outcome, Outcome::Completed, "{o:?}");
    assert!(o.errors.is_empty(), "errors: {:?}", o.errors);
    assert!(o.leaks.is_empty(), "leaks: {:?}", o.leaks);
}

fn counter(o: &Observation, k: &str) -> u64 {
    o.counters.get(k).copied().unwrap_or(0)
}

#[test]
fn vfio_iommufd_flr_with_dma_in_flight_is_stopped_at_the_iommu_under_v6() {
    let (o, r) = controlled(
        &spec(common::p("v6-final"), common::k("iommufd"), Trigger::Flr),
        StallMode::Normal,
    );
    assert_clean(&o, &r);
    assert!(o.revoke_started && o.revoke_returned);
    assert_eq!(o.live_mappings_at_return, 0);
    assert!(
        o.hazards.iter().all(stopped_by_revoke),
        "only DMA stopped by the revoke: {:?}",
        o.hazards
    );
    assert!(
        o.hazards
            .iter()
            .any(|h| h.seq > o.revoke_return_seq.unwrap()),
        "the guest device kept issuing DMA to the old IOVA after the revoke"
    );
    assert!(
        o.hazards.iter().all(|h| h.phys.is_none()),
        "nothing reached the BAR"
    );
    assert!(counter(&o, "jobs_failed") > 0);
}

#[test]
fn vfio_gpu_v6_final_has_no_hazard() {
    for trigger in [
        Trigger::Flr,
        Trigger::DecodeOff,
        Trigger::D3hot,
        Trigger::Close,
    ] {
        let (o, r) = controlled(
            &spec(common::p("v6-final"), common::k("gpu"), trigger),
            StallMode::Normal,
        );
        assert_clean(&o, &r);
        assert!(o.hazards.is_empty(), "{trigger:?}: {:?}", o.hazards);
        assert!(o.revoke_returned);
        assert_eq!(
            o.live_mappings_at_return, 0,
            "{trigger:?}: v6 drains every mapping"
        );
        assert!(counter(&o, "spec_reads") > 0, "the device did read ahead");
        assert_eq!(counter(&o, "unmaps"), counter(&o, "maps"));
    }
}

#[test]
fn vfio_gpu_v2_lets_writes_through_after_the_revoke() {
    let (o, r) = controlled(
        &spec(
            common::p("v2-invalidate-only"),
            common::k("gpu"),
            Trigger::Flr,
        ),
        StallMode::Normal,
    );
    assert_clean(&o, &r);
    let bad_write = o.hazards.iter().any(|h| {
        h.class == HazardClass::WriteAfterFences
            || h.class == HazardClass::Aer
            || (h.class == HazardClass::AccessAfterRevoke && h.kind == AccessKind::Write)
    });
    assert!(bad_write, "{:?}", o.hazards);
    assert!(classes(&o).contains(&HazardClass::WriteAfterFences));
    assert!(
        o.live_mappings_at_return > 0,
        "v2 does not wait for the unmap"
    );
}

#[test]
fn vfio_gpu_v4_misses_speculative_reads_after_the_fences() {
    let (o, r) = controlled(
        &spec(
            common::p("v4-bookkeep-wait"),
            common::k("gpu"),
            Trigger::Flr,
        ),
        StallMode::Normal,
    );
    assert_clean(&o, &r);
    let ret = o.revoke_return_seq.unwrap();
    let late_spec = o.hazards.iter().find(|h| {
        h.class == HazardClass::AccessAfterRevoke
            && h.kind == AccessKind::Read
            && h.speculative
            && h.seq > ret
    });
    assert!(late_spec.is_some(), "{:?}", o.hazards);
    assert!(
        !classes(&o).contains(&HazardClass::WriteAfterFences),
        "the Bookkeep wait covers every write"
    );
}

#[test]
fn writes_after_fences_is_caught_even_under_v6() {
    let mut s = spec(common::p("v6-final"), common::k("gpu"), Trigger::Flr);
    s.importers[0].writes_after_fences = true;
    let (o, r) = controlled(&s, StallMode::Normal);
    assert_clean(&o, &r);
    assert!(
        classes(&o).contains(&HazardClass::WriteAfterFences),
        "{:?}",
        o.hazards
    );
    assert!(
        o.hazards
            .iter()
            .all(|h| h.seq < o.revoke_return_seq.unwrap()),
        "v6 still drains before returning"
    );
}

#[test]
fn gpu_kernel_fence_is_covered_by_v3_only_through_the_engine_order() {
    let (o, r) = controlled(
        &spec(
            common::p("v3-kernel-wait"),
            common::k("gpu-kernel-fence"),
            Trigger::Flr,
        ),
        StallMode::Normal,
    );
    assert_clean(&o, &r);
    assert!(
        !classes(&o).contains(&HazardClass::WriteAfterFences),
        "{:?}",
        o.hazards
    );
    let (o, _) = controlled(
        &spec(common::p("v3-kernel-wait"), common::k("gpu"), Trigger::Flr),
        StallMode::Normal,
    );
    assert!(
        classes(&o).contains(&HazardClass::WriteAfterFences),
        "Bookkeep job fences are missed by a Kernel wait: {:?}",
        o.hazards
    );
}

#[test]
fn vfio_refuses_rdma_pinned_under_the_gated_policies() {
    let (o, r) = controlled(
        &spec(
            common::p("v6-final"),
            common::k("rdma-pinned"),
            Trigger::Flr,
        ),
        StallMode::Normal,
    );
    assert_clean(&o, &r);
    assert_eq!(o.refusals.len(), 1);
    assert_eq!(
        (o.refusals[0].stage, o.refusals[0].errno),
        (Stage::Attach, errno::EOPNOTSUPP)
    );
    let (o, _) = controlled(
        &spec(
            common::p("v9c-gate-in-pin"),
            common::k("rdma-pinned"),
            Trigger::Flr,
        ),
        StallMode::Normal,
    );
    assert_eq!(
        (o.refusals[0].stage, o.refusals[0].errno),
        (Stage::Pin, errno::EOPNOTSUPP)
    );
}

#[test]
fn v8b_accepts_rdma_pinned_and_its_revoke_waits_for_userspace() {
    let s = spec(
        common::p("v8b-final-no-gate"),
        common::k("rdma-pinned"),
        Trigger::Flr,
    );
    let (o, r) = controlled(&s, StallMode::Normal);
    assert_clean(&o, &r);
    assert!(o.refusals.is_empty());
    assert!(o.revoke_returned);
    assert!(
        o.revoke_latency_ns.unwrap() >= 2_000_000,
        "revoke returned only after userspace deregistered: {:?}",
        o.revoke_latency_ns
    );
    assert_eq!(o.live_mappings_at_return, 0);
    let (o, r) = controlled(&s, StallMode::StallUserspaceAtRevoke);
    assert!(
        matches!(r.outcome, Outcome::Deadlock { .. }),
        "{:?}",
        r.outcome
    );
    assert!(
        o.revoke_started && !o.revoke_returned,
        "userspace never deregisters"
    );
}

#[test]
fn the_final_sequence_is_bounded_for_every_revocable_importer() {
    for kind in [
        common::k("gpu"),
        common::k("gpu-kernel-fence"),
        common::k("rdma-odp"),
        common::k("rdma-pinned-revocable"),
        common::k("iommufd"),
    ] {
        let (o, r) = controlled(
            &spec(common::p("v6-final"), kind.clone(), Trigger::Flr),
            StallMode::StallUserspaceAtRevoke,
        );
        assert!(
            matches!(r.outcome, Outcome::CompletedWithStalled { .. }),
            "{kind}: {:?}",
            r.outcome
        );
        assert!(o.revoke_returned, "{kind}");
        assert_eq!(o.live_mappings_at_return, 0, "{kind}");
        assert!(
            o.hazards.iter().all(stopped_by_revoke),
            "{kind}: {:?}",
            o.hazards
        );
    }
    let (o, r) = controlled(
        &spec(common::p("v6-final"), common::k("lying"), Trigger::Flr),
        StallMode::StallUserspaceAtRevoke,
    );
    assert!(
        matches!(r.outcome, Outcome::Deadlock { .. }),
        "a lying importer hangs v6"
    );
    assert!(!o.revoke_returned);
    let (o, _) = controlled(
        &spec(
            common::p("v5-unmap-timeout"),
            common::k("lying"),
            Trigger::Flr,
        ),
        StallMode::StallUserspaceAtRevoke,
    );
    // The 1 s wait gives up at the latest after a second; the search may
    // make it expire earlier (a timed wait may time out at any point).
    assert!(o.revoke_returned, "v5 gives up");
    assert!(o.revoke_latency_ns.is_some_and(|l| l <= 1_000_000_000));
    assert_eq!(o.live_mappings_at_return, 1);
    // v5's un-revoke re-arms the count over the live mapping
    // (kref_init), so the buffer comes back although the importer never
    // unmapped; the timed-out wait WARNed.
    assert_eq!(
        counter(&o, "vfio_unrevokes"),
        1,
        "v5 un-revokes after the reset"
    );
    assert!(
        o.warnings
            .iter()
            .any(|w| w.contains("wait_for_completion_timeout expired")),
        "{:?}",
        o.warnings
    );
}

#[test]
fn vfio_refuses_static_importers_under_every_policy() {
    for policy in common::policies() {
        let (o, r) = controlled(
            &spec(policy.clone(), common::k("static"), Trigger::Flr),
            StallMode::Normal,
        );
        assert_clean(&o, &r);
        assert_eq!(o.refusals.len(), 1, "{policy}");
        assert_eq!(
            (o.refusals[0].stage, o.refusals[0].errno),
            (Stage::Attach, errno::EOPNOTSUPP)
        );
        assert!(o.hazards.is_empty());
    }
}

#[test]
fn the_system_heap_accepts_static_importers() {
    let mut s = spec(common::p("v6-final"), common::k("static"), Trigger::Close);
    s.exporter = ExporterKind::SystemHeap;
    let (o, r) = controlled(&s, StallMode::Normal);
    assert_clean(&o, &r);
    assert!(o.refusals.is_empty());
    assert!(o.hazards.is_empty(), "{:?}", o.hazards);
    assert_eq!(counter(&o, "jobs_ok"), 4);
    assert_eq!(counter(&o, "data_mismatch"), 0);
    assert!(!o.revoke_started, "the heap has nothing to revoke");
}

#[test]
fn unrevoke_remap_revoke_close_rearms_everything_and_leaks_nothing() {
    for kind in [
        common::k("gpu"),
        common::k("iommufd"),
        common::k("rdma-odp"),
    ] {
        let (o, r) = controlled(
            &spec(common::p("v6-final"), kind.clone(), Trigger::UnrevokeCycle),
            StallMode::Normal,
        );
        assert_clean(&o, &r);
        assert!(
            o.hazards.iter().all(stopped_by_revoke),
            "{kind}: {:?}",
            o.hazards
        );
        assert_eq!(counter(&o, "vfio_unrevokes"), 1, "{kind}");
        assert_eq!(
            counter(&o, "vfio_revokes"),
            3,
            "{kind}: off, off again, cleanup"
        );
        assert!(
            counter(&o, "maps") >= 2,
            "{kind}: mapped again after the un-revoke"
        );
        assert_eq!(counter(&o, "maps"), counter(&o, "unmaps"), "{kind}");
        assert_eq!(
            counter(&o, "jobs_after_unrevoke_ok"),
            1,
            "{kind}: the job right after the re-map ran"
        );
    }
}

#[test]
fn two_importers_on_one_buffer_are_both_drained_by_v6() {
    let mut s = spec(common::p("v6-final"), common::k("gpu"), Trigger::Flr);
    s.importers = vec![(common::k("iommufd")), (common::k("gpu"))];
    let (o, r) = controlled(&s, StallMode::Normal);
    assert_clean(&o, &r);
    assert!(o.hazards.iter().all(stopped_by_revoke), "{:?}", o.hazards);
    assert_eq!(o.live_mappings_at_return, 0);
}

#[test]
fn importers_taking_turns_both_go_through_the_whole_cycle() {
    // A mix's smallest proof world: the importers' system-call stages one
    // at a time. Neither may miss the cycle waiting for its turn (the
    // revoker waits only so long for the re-maps), nor hang.
    let mut s = WorldSpec::vfio(common::p("v6-final"), common::k("iommufd"));
    s.importers.push(common::k("gpu"));
    s.jobs = 1;
    s.importers_take_turns = true;
    for seed in 1..=12 {
        let (o, r) = controlled_seed(&s, StallMode::Normal, seed);
        assert_clean(&o, &r);
        assert!(o.hazards.iter().all(stopped_by_revoke), "{:?}", o.hazards);
        assert_eq!(o.restores.len(), 2, "seed {seed}: {:?}", o.restores);
        for x in &o.restores {
            assert!(x.remap_ok && x.job_ok, "seed {seed}: {x:?}");
        }
        assert_eq!(counter(&o, "jobs_after_unrevoke_ok"), 2, "seed {seed}");
        assert_eq!(counter(&o, "maps"), counter(&o, "unmaps"), "seed {seed}");
    }
}

#[test]
fn close_then_hotplug_misdirects_late_dma_unless_the_revoke_drained() {
    let mut s = spec(
        common::p("v2-invalidate-only"),
        common::k("gpu"),
        Trigger::Close,
    );
    s.hotplug_after_close = true;
    let (o, _) = controlled(&s, StallMode::Normal);
    assert!(
        classes(&o).contains(&HazardClass::MisdirectedDma),
        "{:?}",
        o.hazards
    );
    s.protocol = common::p("v6-final");
    let (o, r) = controlled(&s, StallMode::Normal);
    assert_clean(&o, &r);
    assert!(o.hazards.is_empty(), "{:?}", o.hazards);
}

#[test]
fn vram_eviction_under_a_gpu_importer_keeps_the_data() {
    let mut s = spec(common::p("v6-final"), common::k("gpu"), Trigger::Eviction);
    s.exporter = ExporterKind::GpuVram;
    let (o, r) = controlled(&s, StallMode::Normal);
    assert_clean(&o, &r);
    assert!(o.hazards.is_empty(), "{:?}", o.hazards);
    assert_eq!(counter(&o, "vram_moves"), 2, "evicted and migrated back");
    assert_eq!(counter(&o, "jobs_ok"), 4);
    assert_eq!(counter(&o, "data_mismatch"), 0);
    assert!(
        counter(&o, "maps") >= 2,
        "the importer mapped the new placement"
    );
    assert!(counter(&o, "invalidates") >= 2);
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    dmabuf_core::trace::set_enabled(true);
    let s = spec(
        common::p("v4-bookkeep-wait"),
        common::k("gpu"),
        Trigger::Flr,
    );
    let (o1, r1) = controlled_seed(&s, StallMode::Normal, 9);
    let (o2, r2) = controlled_seed(&s, StallMode::Normal, 9);
    let strip = |r: &RunReport| {
        r.trace
            .iter()
            .map(|e| (e.name, e.args.clone(), e.ts_ns))
            .collect::<Vec<_>>()
    };
    assert_eq!(r1.schedule, r2.schedule);
    assert!(!r1.trace.is_empty());
    assert_eq!(strip(&r1), strip(&r2));
    assert_eq!(o1.hazards, o2.hazards);
}

#[test]
fn worlds_run_on_real_threads_too() {
    let o = run_world(
        &spec(common::p("v6-final"), common::k("gpu"), Trigger::Flr),
        StallMode::Normal,
    );
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    assert!(o.leaks.is_empty(), "{:?}", o.leaks);
    assert!(o.revoke_returned);
    assert!(o.hazards.is_empty(), "{:?}", o.hazards);
    let o = run_world(
        &spec(common::p("v6-final"), common::k("iommufd"), Trigger::Flr),
        StallMode::StallUserspaceAtRevoke,
    );
    assert_eq!(o.errors.len(), 1, "stall mode is refused on real threads");
    assert!(o.revoke_returned);
}
