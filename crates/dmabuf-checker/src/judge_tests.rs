//! The judge on synthetic runs: each property catches the violation it is
//! about and holds on the correct twin of that run.

use crate::explore::{RunOutcome, judge};
use crate::property::Property;
use crate::token::RunMode;
use dmabuf_core::sync::sched::{BlockedOn, Outcome, RunReport, Schedule, TaskInfo};
use dmabuf_platform::{
    AccessKind, AddrSpace, DeviceId, Hazard, HazardClass, MappingId, Outstanding, PhysRange,
    ReuseEvent, ReuseKind, Via,
};
use dmabuf_scenario::world::{Observation, Restore, RevokeRecord};

fn report(outcome: Outcome) -> RunReport {
    RunReport {
        outcome,
        schedule: Schedule::new(vec![]),
        steps: 10,
        decisions: 0,
        switches: 0,
        virtual_ns: 0,
        trace: vec![],
        panics: vec![],
        leaked_threads: 0,
        divergence: None,
        lockdep: vec![],
    }
}

fn hazard(class: HazardClass, kind: AccessKind, seq: u64) -> Hazard {
    Hazard {
        class,
        accessor: "gpu0".into(),
        via: Via::Dma {
            device: DeviceId(2),
        },
        space: AddrSpace::Bus,
        addr: 0xe000_0000,
        phys: Some(0xe000_0000),
        kind,
        speculative: false,
        mapping: None,
        attachment: None,
        exporter: Some("vfio".into()),
        iommu_fault: None,
        aer: None,
        detail: String::new(),
        seq,
        ts_ns: 0,
    }
}

fn returned_at(seq: u64, hazards: Vec<Hazard>) -> Observation {
    Observation {
        revoke_started: true,
        revoke_returned: true,
        revoke_return_seq: Some(seq),
        hazards,
        ..Observation::default()
    }
}

fn normal(obs: Observation) -> RunOutcome {
    RunOutcome {
        report: report(Outcome::Completed),
        obs: Some(obs),
        mode: RunMode::Normal,
        lockdep: vec![],
    }
}

#[test]
fn s_fence_catches_a_dma_write_after_the_fence_wait_and_not_a_read_or_another_class() {
    let with = |h: Hazard| normal(returned_at(10, vec![h]));
    // After the return: the write is both classes; either one is enough.
    for class in [
        HazardClass::AccessAfterRevoke,
        HazardClass::WriteAfterFences,
    ] {
        let v = judge(
            &with(hazard(class, AccessKind::Write, 11)),
            Property::SFence,
        );
        assert!(v.is_some(), "{class:?}");
    }
    // After the fence wait, while the exporter still waits for the unmaps
    // (the record's number is below the return's): the class decides.
    assert!(
        judge(
            &with(hazard(HazardClass::WriteAfterFences, AccessKind::Write, 7)),
            Property::SFence
        )
        .is_some()
    );
    // A read after the return is s-final's, not s-fence's.
    assert!(
        judge(
            &with(hazard(HazardClass::AccessAfterRevoke, AccessKind::Read, 11)),
            Property::SFence
        )
        .is_none()
    );
    // A write through an unmapped mapping, or one that faulted in the
    // IOMMU, did not reach memory the revoke had fenced.
    for class in [HazardClass::AccessAfterUnmap, HazardClass::IommuFault] {
        let v = judge(
            &with(hazard(class, AccessKind::Write, 11)),
            Property::SFence,
        );
        assert!(v.is_none(), "{class:?}");
    }
    // A CPU store is judged by s-final and s-noreuse, not here.
    let mut cpu = hazard(HazardClass::WriteAfterFences, AccessKind::Write, 7);
    cpu.via = Via::Cpu { vma: 1 };
    assert!(judge(&with(cpu), Property::SFence).is_none());
}

#[test]
fn s_final_catches_any_access_after_return_and_outstanding_mappings() {
    let read = normal(returned_at(
        10,
        vec![hazard(HazardClass::AccessAfterRevoke, AccessKind::Read, 11)],
    ));
    assert!(judge(&read, Property::SFinal).is_some());
    let mut mapped = returned_at(10, vec![]);
    mapped.live_mappings_at_return = 1;
    assert!(judge(&normal(mapped), Property::SFinal).is_some());
    // A fault on a revoked IOVA is the intended outcome.
    let stopped = normal(returned_at(
        10,
        vec![hazard(HazardClass::IommuFault, AccessKind::Write, 11)],
    ));
    assert!(judge(&stopped, Property::SFinal).is_none());
}

#[test]
fn s_noreuse_catches_uaf_aer_and_misdirected_at_any_time() {
    for c in [
        HazardClass::UseAfterFree,
        HazardClass::Aer,
        HazardClass::MisdirectedDma,
    ] {
        let r = normal(returned_at(10, vec![hazard(c, AccessKind::Read, 3)]));
        assert!(judge(&r, Property::SNoreuse).is_some(), "{c:?}");
    }
    let clean = normal(returned_at(
        10,
        vec![hazard(HazardClass::AccessAfterUnmap, AccessKind::Read, 3)],
    ));
    assert!(judge(&clean, Property::SNoreuse).is_none());
}

#[test]
fn s_noreuse_catches_a_reset_with_a_mapping_outstanding_without_any_access() {
    let event = |outstanding: Vec<Outstanding>| ReuseEvent {
        kind: ReuseKind::Reset,
        who: "vfio0".into(),
        ranges: vec![PhysRange::new(0xe000_0000, 0x10000)],
        outstanding,
        seq: 12,
        ts_ns: 0,
    };
    let mut obs = returned_at(10, vec![]);
    obs.reuse = vec![event(vec![Outstanding {
        kind: "sg",
        holder: "lying0".into(),
        mapping: Some(MappingId(1)),
        detail: "attachment 1 bus 0xe0000000+0x2000".into(),
    }])];
    let v = judge(&normal(obs), Property::SNoreuse).expect("violated");
    assert!(v.detail.contains("reset of vfio0"), "{}", v.detail);
    assert!(v.detail.contains("sg mapping 1 by lying0"), "{}", v.detail);
    // A reset with nothing mapped is what revoke is for.
    let mut obs = returned_at(10, vec![]);
    obs.reuse = vec![event(vec![])];
    assert!(judge(&normal(obs), Property::SNoreuse).is_none());
}

/// Two revokes: the first returned at 10 and was un-revoked at 20; the
/// second returned at 30 with `live` mappings and was never un-revoked.
fn two_revokes(live: i64, hazards: Vec<Hazard>) -> Observation {
    let mut o = returned_at(10, hazards);
    o.revokes = vec![
        RevokeRecord {
            ino: 1,
            fences_done_seq: Some(9),
            returned: true,
            returned_seq: Some(10),
            unrevoked_seq: Some(20),
            ..RevokeRecord::default()
        },
        RevokeRecord {
            ino: 1,
            fences_done_seq: Some(29),
            returned: true,
            returned_seq: Some(30),
            live_mappings_at_return: live,
            ..RevokeRecord::default()
        },
    ];
    o
}

#[test]
fn every_revoke_of_a_cycle_is_judged() {
    let w = |seq| hazard(HazardClass::AccessAfterRevoke, AccessKind::Write, seq);
    // A write after the second revoke returned.
    assert!(judge(&normal(two_revokes(0, vec![w(31)])), Property::SFence).is_some());
    // (A write between the un-revoke and the second revoke carries no
    // class: the un-revoke clears the page words, as the platform's
    // `any_access_after_revoke_returned_is_flagged_until_unrevoke` checks.)
    // The second revoke returning with a mapping live breaks s-final.
    let v = judge(&normal(two_revokes(1, vec![])), Property::SFinal).expect("violated");
    assert!(v.detail.contains("revoke 2 of 2"), "{}", v.detail);
    assert!(judge(&normal(two_revokes(0, vec![])), Property::SFinal).is_none());
    // A second revoke that never returns, with userspace stalled.
    let mut o = two_revokes(0, vec![]);
    o.revokes[1].returned = false;
    let stalled = RunOutcome {
        report: report(Outcome::Completed),
        obs: Some(o),
        mode: RunMode::Stalled,
        lockdep: vec![],
    };
    let v = judge(&stalled, Property::LBounded).expect("violated");
    assert!(v.detail.contains("revoke 2 of 2"), "{}", v.detail);
}

#[test]
fn l_restore_catches_an_importer_that_cannot_come_back_or_a_refused_unrevoke() {
    let restore = |expected, job_ok| Restore {
        importer: "gpu0".into(),
        expected,
        remap_ok: true,
        job_ok,
    };
    let mut o = Observation {
        restores: vec![restore(true, false)],
        ..Observation::default()
    };
    let v = judge(&normal(o.clone()), Property::LRestore).expect("violated");
    assert!(
        v.detail.contains("gpu0 could not use the buffer again"),
        "{}",
        v.detail
    );
    // Revoked for good by design (a pinned revocable MR): not judged.
    o.restores = vec![restore(false, false)];
    assert!(judge(&normal(o.clone()), Property::LRestore).is_none());
    o.counters.insert("unrevoke_refused".into(), 1);
    assert!(judge(&normal(o), Property::LRestore).is_some());
}

#[test]
fn l_bounded_is_judged_only_on_stalled_runs() {
    let stuck = RunOutcome {
        report: report(Outcome::Deadlock {
            tasks: vec![TaskInfo {
                id: 1,
                name: "revoker".into(),
                group: "revoker".into(),
                blocked_on: BlockedOn::Resource {
                    kind: "condvar",
                    resource: 1,
                },
                deadline_ns: None,
                stalled: false,
            }],
        }),
        obs: None,
        mode: RunMode::Stalled,
        lockdep: vec![],
    };
    let v = judge(&stuck, Property::LBounded).expect("violated");
    assert!(v.detail.contains("revoker"), "{}", v.detail);
    let done = RunOutcome {
        report: report(Outcome::CompletedWithStalled { stalled: vec![] }),
        obs: Some(returned_at(5, vec![])),
        mode: RunMode::Stalled,
        lockdep: vec![],
    };
    assert!(judge(&done, Property::LBounded).is_none());
    // Normal runs never judge it, stalled runs judge nothing else.
    assert!(judge(&normal(Observation::default()), Property::LBounded).is_none());
    assert!(judge(&stuck, Property::NoDeadlock).is_none());
}

#[test]
fn no_deadlock_no_leak_and_lockdep() {
    let dl = RunOutcome {
        report: report(Outcome::StepLimit),
        obs: None,
        mode: RunMode::Normal,
        lockdep: vec![],
    };
    assert!(judge(&dl, Property::NoDeadlock).is_some());
    assert!(judge(&normal(returned_at(1, vec![])), Property::NoDeadlock).is_none());
    let mut leaky = returned_at(1, vec![]);
    leaky.leaks.push("buffer ino 3 not released".into());
    assert!(judge(&normal(leaky), Property::NoLeak).is_some());
    assert!(judge(&normal(returned_at(1, vec![])), Property::NoLeak).is_none());
    let mut v = normal(returned_at(1, vec![]));
    v.lockdep.push("lockdep: inversion".into());
    assert!(judge(&v, Property::Lockdep).is_some());
    assert!(judge(&normal(returned_at(1, vec![])), Property::Lockdep).is_none());
}

#[test]
fn only_the_properties_that_say_so_are_judged_from_a_speculative_read() {
    // A speculative read of every class the monitor can give one (never
    // a write, never a fault through an IOMMU, which such reads do not
    // go through when they are left unordered), after the revoke
    // returned: the properties it violates are exactly those that declare
    // they are judged from speculation, which a search leaving those
    // reads unordered then does not claim.
    let mut judged = std::collections::BTreeSet::new();
    for class in [
        HazardClass::UseAfterFree,
        HazardClass::Aer,
        HazardClass::MisdirectedDma,
        HazardClass::AccessAfterUnmap,
        HazardClass::AccessAfterRevoke,
    ] {
        let mut h = hazard(class, AccessKind::Read, 11);
        h.speculative = true;
        let r = normal(returned_at(10, vec![h]));
        for p in Property::ALL {
            if judge(&r, p).is_some() {
                judged.insert(p.name());
            }
        }
    }
    let declared: std::collections::BTreeSet<_> = Property::ALL
        .iter()
        .filter(|p| p.judged_from_speculation())
        .map(|p| p.name())
        .collect();
    assert_eq!(judged, declared);
    assert_eq!(
        declared.into_iter().collect::<Vec<_>>(),
        ["s-final", "s-noreuse"]
    );
}
