use dmabuf_drivers::policy::RevokePolicy;
use dmabuf_drivers::world::*;
use dmabuf_core::sync::sched::{self, Random, RunConfig, Strategy};
use std::sync::{Arc, Mutex};

fn controlled(spec: WorldSpec, mode: StallMode, seed: u64) -> (Observation, sched::RunReport) {
    let mut s = Random::new(seed);
    assert!(s.next_execution());
    let probe = WorldProbe::new();
    let p2 = probe.clone();
    let out = Arc::new(Mutex::new(None));
    let o2 = out.clone();
    let r = sched::run(&mut s, &RunConfig::default(), move || {
        let o = run_world_with(&spec, mode, &p2);
        *o2.lock().unwrap() = Some(o);
    });
    let o = out.lock().unwrap().take().unwrap_or_else(|| probe.snapshot());
    (o, r)
}

#[test]
fn scratch() {
    for kind in ImporterKind::ALL {
        for pol in [RevokePolicy::V6Final, RevokePolicy::V2InvalidateOnly, RevokePolicy::V4BookkeepWait] {
            let spec = WorldSpec::vfio(pol, kind);
            let t = std::time::Instant::now();
            let (o, r) = controlled(spec, StallMode::Normal, 1);
            println!("{kind} {pol}: outcome={:?} steps={} t={:?} refusals={:?} returned={} lat={:?} live={} errors={:?} leaks={:?}", r.outcome, r.steps, t.elapsed(), o.refusals, o.revoke_returned, o.revoke_latency_ns, o.live_mappings_at_return, o.errors, o.leaks);
            for h in &o.hazards { println!("   {h}"); }
            println!("   {:?}", o.counters);
            if !r.panics.is_empty() { println!("PANICS {:?}", r.panics); }
        }
    }
}

#[test]
fn trace_one() {
    let kind: ImporterKind = std::env::var("KIND").unwrap_or("gpu".into()).parse().unwrap();
    let pol: RevokePolicy = std::env::var("POL").unwrap_or("v4-bookkeep-wait".into()).parse().unwrap();
    dmabuf_core::trace::set_enabled(true);
    let spec = WorldSpec::vfio(pol, kind);
    let (o, r) = controlled(spec, StallMode::Normal, 1);
    for e in &r.trace { if !e.name.starts_with("dma_fence") { println!("{e}"); } }
    for h in &o.hazards { println!("   {h}"); }
}

#[test]
fn stall() {
    for kind in ImporterKind::ALL {
        for pol in [RevokePolicy::V6Final, RevokePolicy::V8bFinalNoGate, RevokePolicy::V5UnmapTimeout] {
            let spec = WorldSpec::vfio(pol, kind);
            let t = std::time::Instant::now();
            let (o, r) = controlled(spec, StallMode::StallUserspaceAtRevoke, 1);
            let oc = match &r.outcome { sched::Outcome::Deadlock{..} => "Deadlock".to_string(), x => format!("{x:?}").chars().take(40).collect() };
            println!("{kind} {pol}: outcome={oc} steps={} t={:?} refusals={} returned={} lat={:?} live={} hazards={} errors={:?} leaked={}", r.steps, t.elapsed(), o.refusals.len(), o.revoke_returned, o.revoke_latency_ns, o.live_mappings_at_return, o.hazards.len(), o.errors, r.leaked_threads);
        }
    }
}

#[test]
fn others() {
    let mut specs = vec![];
    for t in [Trigger::DecodeOff, Trigger::D3hot, Trigger::HotReset, Trigger::DeviceReset, Trigger::Close, Trigger::UnrevokeCycle] {
        for kind in [ImporterKind::Gpu, ImporterKind::Iommufd, ImporterKind::RdmaOdp] {
            let mut s = WorldSpec::vfio(RevokePolicy::V6Final, kind);
            s.trigger = t;
            specs.push(s);
        }
    }
    let mut s = WorldSpec::vfio(RevokePolicy::V6Final, ImporterKind::Gpu);
    s.trigger = Trigger::Close; s.hotplug_after_close = true; s.cpu_access = true;
    specs.push(s);
    let mut s = WorldSpec::vfio(RevokePolicy::V2InvalidateOnly, ImporterKind::Gpu);
    s.trigger = Trigger::Close; s.hotplug_after_close = true; s.cpu_access = true;
    specs.push(s);
    for kind in [ImporterKind::Static, ImporterKind::Gpu, ImporterKind::RdmaOdp, ImporterKind::Iommufd, ImporterKind::RdmaPinned] {
        let mut s = WorldSpec::vfio(RevokePolicy::V6Final, kind);
        s.exporter = ExporterKind::SystemHeap; s.trigger = Trigger::Close;
        specs.push(s);
        let mut s = WorldSpec::vfio(RevokePolicy::V6Final, kind);
        s.exporter = ExporterKind::GpuVram; s.trigger = Trigger::Eviction;
        specs.push(s);
    }
    let mut s = WorldSpec::vfio(RevokePolicy::V6Final, ImporterKind::Gpu);
    s.importers = vec![ImporterSpec::one(ImporterKind::Iommufd), ImporterSpec::one(ImporterKind::Gpu)];
    specs.push(s);
    for spec in specs {
        let t = std::time::Instant::now();
        let (o, r) = controlled(spec.clone(), StallMode::Normal, 1);
        println!("{:?} {:?} {:?}: outcome={:?} steps={} t={:?} refusals={:?} returned={} lat={:?} live={} errors={:?} leaks={:?}", spec.exporter, spec.trigger, spec.importers.iter().map(|i| i.kind.name()).collect::<Vec<_>>(), r.outcome, r.steps, t.elapsed(), o.refusals, o.revoke_returned, o.revoke_latency_ns, o.live_mappings_at_return, o.errors, o.leaks);
        for h in &o.hazards { println!("   {h}"); }
        println!("   {:?}", o.counters);
        if !r.panics.is_empty() { println!("PANICS {:?}", r.panics); }
    }
}
