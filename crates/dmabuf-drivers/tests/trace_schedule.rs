//! Tracing must not change which schedule a seed selects: the checker
//! replays tokens with `--trace`. (Its own test binary, because the trace
//! switch is process-wide and other tests turn it on.)

use dmabuf_core::sync::sched::{self, Random, RunConfig, Strategy};
use dmabuf_drivers::policy::RevokePolicy;
use dmabuf_drivers::world::{
    ImporterKind, StallMode, Trigger, WorldProbe, WorldSpec, run_world_with,
};

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
        (RevokePolicy::V6Final, ImporterKind::Gpu),
        (RevokePolicy::V4BookkeepWait, ImporterKind::Gpu),
        (RevokePolicy::V6Final, ImporterKind::Iommufd),
        (RevokePolicy::V2InvalidateOnly, ImporterKind::RdmaOdp),
    ] {
        let spec = WorldSpec {
            trigger: Trigger::UnrevokeCycle,
            ..WorldSpec::vfio(policy, kind)
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
