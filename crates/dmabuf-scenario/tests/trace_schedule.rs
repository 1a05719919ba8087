//! Tracing must not change which schedule a seed selects: the checker
//! replays tokens with `--trace`. (Its own test binary, because the trace
//! switch is process-wide and other tests turn it on.)

mod common;
use dmabuf_core::sync::sched::{self, Random, RunConfig, Strategy};
use dmabuf_scenario::world::{StallMode, Trigger, WorldProbe, WorldSpec, run_world_with};

fn run(spec: &WorldSpec) -> (sched::RunReport, Vec<dmabuf_platform::Hazard>) {
    let mut s = Random::new(5);
    assert!(s.next_execution());
    let probe = WorldProbe::new();
    let (p2, spec) = (probe.clone(), spec.clone());
    let r = sched::run(&mut s, &RunConfig::default(), move || {
        run_world_with(&spec, StallMode::Normal, &p2);
    });
    (r, probe.snapshot().hazards)
}

#[test]
fn tracing_does_not_change_the_schedule() {
    for (policy, kind) in [
        (common::p("v6-final"), common::k("gpu")),
        (common::p("v4-bookkeep-wait"), common::k("gpu")),
        (common::p("v6-final"), common::k("iommufd")),
        (common::p("v2-invalidate-only"), common::k("rdma-odp")),
    ] {
        let spec = WorldSpec {
            trigger: Trigger::UnrevokeCycle,
            ..WorldSpec::vfio(policy.clone(), kind.clone())
        };
        dmabuf_core::trace::set_enabled(false);
        let (r1, h1) = run(&spec);
        dmabuf_core::trace::set_enabled(true);
        let (r2, h2) = run(&spec);
        assert!(r1.trace.is_empty() && !r2.trace.is_empty());
        assert_eq!(r1.schedule, r2.schedule, "{policy} {kind}");
        assert_eq!(h1, h2);
    }
}
