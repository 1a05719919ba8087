//! Each property caught on a scenario built to violate it, and holding on
//! its correct twin; and replay reproducing a counterexample's trace
//! exactly. Everything here runs the real implementation under the
//! controlled scheduler.

use dmabuf_checker::explore::{self, CheckOptions, judge, run_body};
use dmabuf_checker::property::Property;
use dmabuf_checker::scenario::find;
use dmabuf_checker::token::{ReplayToken, RunMode, StrategyKind};
use dmabuf_core::sync::sched::{Random, Strategy};
use dmabuf_core::sync::{Arc, Mutex, thread};
use dmabuf_scenario::world::Observation;

fn opts(schedules: u64) -> CheckOptions {
    CheckOptions {
        strategy: StrategyKind::Pct(3),
        schedules,
        stalled_schedules: 4,
        seed: 7,
        shrink: false,
        ..CheckOptions::default()
    }
}

fn verdict(scenario: &str, p: Property) -> bool {
    let r = explore::check(&find(scenario).unwrap(), &opts(12), |_| {});
    assert!(r.errors.is_empty(), "{scenario}: {:?}", r.errors);
    r.properties
        .iter()
        .find(|x| x.property == p)
        .unwrap()
        .holds()
}

#[test]
fn s_fence_violated_without_a_fence_wait_and_holds_on_v6() {
    assert!(!verdict("matrix.v2-invalidate-only.gpu", Property::SFence));
    assert!(verdict("matrix.v6-final.gpu", Property::SFence));
}

#[test]
fn s_fence_needs_bookkeep_not_kernel_for_gpu_fences() {
    // Matthew Brost's point: GPU page-table and TLB fences are Bookkeep.
    assert!(!verdict("matrix.v3-kernel-wait.gpu", Property::SFence));
    assert!(verdict(
        "matrix.v3-kernel-wait.gpu-kernel-fence",
        Property::SFence
    ));
}

#[test]
fn s_final_violated_by_speculative_reads_when_unmap_is_not_awaited() {
    // v4 is the "hard barrier at fences" model: fences hold, reads do not.
    assert!(verdict("matrix.v4-bookkeep-wait.gpu", Property::SFence));
    assert!(!verdict("matrix.v4-bookkeep-wait.gpu", Property::SFinal));
    assert!(verdict("matrix.v6-final.gpu", Property::SFinal));
}

#[test]
fn s_noreuse_violated_when_the_bar_resets_under_live_dma() {
    assert!(!verdict(
        "matrix.v2-invalidate-only.rdma-pinned",
        Property::SNoreuse
    ));
    assert!(verdict(
        "matrix.v2-invalidate-only.iommufd",
        Property::SNoreuse
    ));
}

#[test]
fn s_noreuse_judges_the_mappings_outstanding_at_the_reset_not_the_policy_name() {
    // v5 gives up waiting with the liar's mapping still live and lets the
    // FLR go ahead: the reset happens under a live mapping, which the
    // platform records whether or not the liar's DMA lands.
    // Stalled runs only (normal ones break it by an access as well).
    let r = explore::check(
        &find("matrix.v5-unmap-timeout.lying").unwrap(),
        &CheckOptions {
            schedules: 0,
            stalled_schedules: 6,
            ..opts(0)
        },
        |_| {},
    );
    let n = r
        .properties
        .iter()
        .find(|x| x.property == Property::SNoreuse)
        .unwrap();
    assert!(!n.holds(), "v5 x lying must violate s-noreuse");
    let token = &n.counterexample.as_ref().unwrap().token;
    assert_eq!(token.mode, RunMode::Stalled);
    let lib = dmabuf_checker::scenario::Library::builtin().unwrap();
    let (run, verdicts) = explore::replay(&lib, token).unwrap();
    let obs = run.obs.as_ref().unwrap();
    assert!(
        obs.reuse
            .iter()
            .any(|e| e.who == "vfio0" && !e.outstanding.is_empty()),
        "the platform recorded the outstanding mapping: {:?}",
        obs.reuse
    );
    let v = verdicts
        .iter()
        .find(|(p, _)| *p == Property::SNoreuse)
        .and_then(|(_, v)| v.clone())
        .expect("violated on replay");
    assert!(
        v.detail.contains("of vfio0 while") && v.detail.contains("lying0"),
        "the evidence is the platform's record: {}",
        v.detail
    );
    // v6 with the honest importers: every mapping is gone before the reset.
    for imp in [
        "gpu",
        "gpu-kernel-fence",
        "rdma-odp",
        "rdma-pinned-revocable",
        "iommufd",
    ] {
        assert!(
            verdict(&format!("matrix.v6-final.{imp}"), Property::SNoreuse),
            "v6 x {imp}"
        );
    }
}

#[test]
fn l_bounded_violated_by_an_importer_that_waits_for_userspace() {
    assert!(!verdict("matrix.v6-final.lying", Property::LBounded));
    assert!(verdict("matrix.v6-final.iommufd", Property::LBounded));
    assert!(!verdict(
        "matrix.v8b-final-no-gate.rdma-pinned",
        Property::LBounded
    ));
}

/// Runs a hand-written program under the scheduler, judged like a world.
fn program(body: impl FnOnce() -> Observation + Send + 'static) -> explore::RunOutcome {
    program_seeded(3, body)
}

fn program_seeded(
    seed: u64,
    body: impl FnOnce() -> Observation + Send + 'static,
) -> explore::RunOutcome {
    let mut r = Random::new(seed);
    r.next_execution();
    run_body(RunMode::Normal, &mut r, body, || None)
}

#[test]
fn no_deadlock_catches_an_abba_program_and_holds_on_its_ordered_twin() {
    let abba = |ordered: bool, seed: u64| {
        program_seeded(seed, move || {
            let a = Arc::new(Mutex::new(0));
            let b = Arc::new(Mutex::new(0));
            let (a2, b2) = (a.clone(), b.clone());
            let t = thread::spawn(move || {
                let (first, second) = if ordered { (&a2, &b2) } else { (&b2, &a2) };
                let _x = first.lock();
                thread::yield_now();
                let _y = second.lock();
            });
            {
                let _x = a.lock();
                thread::yield_now();
                let _y = b.lock();
            }
            t.join().unwrap();
            Observation::default()
        })
    };
    // Some schedule of the inverted program deadlocks; no schedule of the
    // ordered one does.
    assert!(
        (0..40).any(|seed| judge(&abba(false, seed), Property::NoDeadlock).is_some()),
        "no schedule of the ABBA program deadlocked"
    );
    assert!((0..40).all(|seed| judge(&abba(true, seed), Property::NoDeadlock).is_none()));
}

#[test]
fn no_leak_catches_an_unreleased_buffer_and_holds_when_released() {
    use dmabuf_core::dma_buf::*;
    use dmabuf_core::dma_resv::ResvGuard;
    struct Exp;
    impl DmaBufOps for Exp {
        fn map_dma_buf(
            &self,
            _: &Attachment,
            _: DmaDirection,
            _: &ResvGuard<'_>,
        ) -> Result<SgTable, DmaBufError> {
            Ok(SgTable::default())
        }
        fn unmap_dma_buf(&self, _: &Attachment, _: SgTable, _: DmaDirection, _: &ResvGuard<'_>) {}
        fn release(&self, _: &DmaBufRef) {}
    }
    let run = |release: bool| {
        program(move || {
            let b = export(ExportInfo {
                exp_name: "leaky".into(),
                size: 4096,
                flags: 0,
                resv: None,
                ops: Arc::new(Exp),
            })
            .unwrap();
            let r = b.downgrade();
            if release {
                drop(b);
            } else {
                std::mem::forget(b);
            }
            let mut obs = Observation::default();
            if !r.is_released() {
                obs.leaks
                    .push(format!("buffer ino {} not released", r.ino()));
            }
            obs
        })
    };
    assert!(judge(&run(false), Property::NoLeak).is_some());
    assert!(judge(&run(true), Property::NoLeak).is_none());
}

#[test]
fn lockdep_catches_a_resv_lock_in_a_signalling_section_and_holds_outside() {
    let run = |inside: bool| {
        program(move || {
            let resv = dmabuf_core::dma_resv::DmaResv::new();
            let cookie = inside.then(dmabuf_core::lockdep::begin_signalling);
            let g = resv.lock(None).unwrap();
            drop(g);
            if let Some(c) = cookie {
                dmabuf_core::lockdep::end_signalling(c);
            }
            Observation::default()
        })
    };
    dmabuf_core::lockdep::set_mode(dmabuf_core::lockdep::Mode::Collect);
    assert!(judge(&run(true), Property::Lockdep).is_some());
    assert!(judge(&run(false), Property::Lockdep).is_none());
}

#[test]
fn replaying_a_token_reproduces_the_identical_trace() {
    let r = explore::check(
        &find("matrix.v4-bookkeep-wait.gpu").unwrap(),
        &CheckOptions {
            shrink: true,
            ..opts(12)
        },
        |_| {},
    );
    let ce = r
        .properties
        .iter()
        .find(|p| p.property == Property::SFinal)
        .and_then(|p| p.counterexample.clone())
        .expect("v4 with a GPU importer violates s-final");
    let token: ReplayToken = ce.token.to_string().parse().unwrap();
    let lib = dmabuf_checker::scenario::Library::builtin().unwrap();
    let (a, va) = explore::replay(&lib, &token).unwrap();
    let (b, _) = explore::replay(&lib, &token).unwrap();
    assert!(!a.report.trace.is_empty());
    assert_eq!(a.report.trace, b.report.trace, "replays differ");
    assert_eq!(a.report.trace.len(), ce.trace_len);
    assert!(
        va.iter()
            .any(|(p, v)| *p == Property::SFinal && v.is_some()),
        "the replay shows the violation"
    );
    assert!(a.report.divergence.is_none());
}

#[test]
fn a_timed_unmap_wait_can_lose_to_a_slow_importer_and_an_unbounded_unmap_hangs_v6() {
    // v5's 1 s wait may expire at any scheduling point while the GPU's
    // worker has not unmapped yet: the revoke returns with the mapping live.
    assert!(!verdict("matrix.v5-unmap-timeout.gpu", Property::SFinal));
    assert!(!verdict("matrix.v5-unmap-timeout.gpu", Property::NoWarn));
    // Importers that unmap inside the callback leave nothing to wait for.
    assert!(verdict(
        "matrix.v5-unmap-timeout.rdma-odp",
        Property::SFinal
    ));
    // gpu-lazy keeps its fences right but unmaps only when userspace frees:
    // v6 waits for it, safely, but not in bounded time.
    assert!(verdict("matrix.v6-final.gpu-lazy", Property::SFence));
    assert!(verdict("matrix.v6-final.gpu-lazy", Property::SFinal));
    assert!(!verdict("matrix.v6-final.gpu-lazy", Property::LBounded));
}

#[test]
fn a_check_of_l_bounded_alone_makes_only_stalled_runs() {
    // l-bounded is judged on stalled-userspace runs only: normal runs
    // would answer nothing that was asked.
    let sc = find("matrix.v6-final.iommufd").unwrap();
    let o = CheckOptions {
        properties: vec![Property::LBounded],
        ..opts(12)
    };
    let r = explore::check(&sc, &o, |_| {});
    assert_eq!(r.runs, 4, "the stalled schedules only");
    assert_eq!(r.properties.len(), 1);
    assert_eq!(r.properties[0].schedules, 4);
    // With a property judged on normal runs too, both kinds are made.
    let o = CheckOptions {
        properties: vec![Property::LBounded, Property::NoDeadlock],
        ..opts(12)
    };
    assert_eq!(explore::check(&sc, &o, |_| {}).runs, 16);
}
