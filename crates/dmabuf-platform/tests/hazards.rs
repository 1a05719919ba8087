//! One minimal deterministic scenario per hazard class, each with its
//! legitimate twin that records nothing (docs/hazards.md).

mod common;
use common::*;
use dmabuf_platform::*;

// ---- UseAfterFree (docs/hazards.md, hazard 1) ----

#[test]
fn dma_to_a_still_owned_frame_is_not_a_hazard() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap();
    m.gpu_dom
        .map(0x10000, f[0], PAGE_SIZE, IommuPerm::RW)
        .unwrap();
    m.gpu_port.write(&iova(0x10000), b"hello").unwrap();
    let mut b = [0u8; 5];
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    assert_eq!(&b, b"hello");
    assert!(m.classes().is_empty());
}

#[test]
fn dma_to_a_freed_and_reused_frame_is_use_after_free_and_reads_the_new_owners_data() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    m.gpu_dom.map(0x10000, f, PAGE_SIZE, IommuPerm::RW).unwrap();
    m.p.memory().free_frames(&[f]).unwrap();
    let g = m.p.memory().alloc_frames(1, "other").unwrap()[0];
    assert_eq!(f, g, "the allocator reuses the frame");
    m.p.memory().poke(g, b"secret").unwrap();
    let mut b = [0u8; 6];
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    assert_eq!(&b, b"secret", "a real access to someone else's data");
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1, "{hz:?}");
    assert_eq!(hz[0].class, HazardClass::UseAfterFree);
    assert_eq!(hz[0].phys, Some(f));
    assert_eq!(hz[0].accessor, "gpu0");
    assert!(hz[0].detail.contains("other"), "{}", hz[0].detail);
}

#[test]
fn dma_to_a_freed_frame_by_bus_address_is_use_after_free() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    m.p.memory().free_frames(&[f]).unwrap();
    m.gpu_port.write(&bus(f), b"x").unwrap();
    assert_eq!(m.classes(), vec![HazardClass::UseAfterFree]);
}

// ---- Aer (docs/hazards.md, hazard 2) ----

#[test]
fn dma_to_a_decoding_bar_is_fine_and_with_decode_off_is_aer() {
    let m = machine();
    let bar = m.bar();
    m.gpu_port.write(&bus(bar), b"mmio").unwrap();
    let mut b = [0u8; 4];
    m.gpu_port.read(&bus(bar), &mut b).unwrap();
    assert_eq!(&b, b"mmio");
    assert!(m.classes().is_empty());

    m.vfio.set_memory_decode(false).unwrap();
    let e = m.gpu_port.read(&bus(bar), &mut b).unwrap_err();
    assert_eq!(
        e,
        DmaFault::Aer {
            addr: bar,
            reason: AerReason::DecodeOff
        }
    );
    assert_eq!(dmabuf_core::AsErrno::errno(&e), dmabuf_core::errno::EIO);
    assert_eq!(b, [0xff; 4], "an unsupported request reads all ones");
    assert!(m.gpu_port.write(&bus(bar), b"lost").is_err());
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 2);
    assert!(
        hz.iter()
            .all(|h| h.class == HazardClass::Aer && h.aer == Some(AerReason::DecodeOff))
    );
    let mut raw = [0u8; 4];
    m.p.memory().peek(bar, &mut raw).unwrap();
    assert_eq!(&raw, b"mmio", "the write was dropped");
}

#[test]
fn dma_to_a_bar_in_d3hot_in_reset_or_unplugged_is_aer_with_its_reason() {
    let m = machine();
    let bar = m.bar();
    let tok =
        m.p.monitor()
            .declare_mapping(MappingDecl {
                attachment: 1,
                importer: Accessor::new("gpu0"),
                exporter: None,
                ranges: vec![DeclaredRange::bus(bar, BAR_SIZE)],
            })
            .unwrap();
    let mut b = [0u8; 8];
    m.vfio.set_power_state(PowerState::D3hot).unwrap();
    assert!(m.gpu_port.read(&bus(bar), &mut b).is_err());
    m.vfio.set_power_state(PowerState::D0).unwrap();
    m.gpu_port.read(&bus(bar), &mut b).unwrap();
    m.vfio.begin_reset().unwrap();
    assert!(m.gpu_port.read(&bus(bar), &mut b).is_err());
    m.vfio.end_reset().unwrap();
    m.vfio.set_memory_decode(true).unwrap();
    m.gpu_port.read(&bus(bar), &mut b).unwrap();
    m.p.pci().unplug(m.vfio.id()).unwrap();
    assert!(
        m.gpu_port
            .read(&DmaAddr::Bus(bar).via(&tok), &mut b)
            .is_err()
    );
    let reasons: Vec<_> = m.p.take_hazards().iter().map(|h| h.aer).collect();
    assert_eq!(
        reasons,
        vec![
            Some(AerReason::D3hot),
            Some(AerReason::InReset),
            Some(AerReason::Unplugged)
        ]
    );
}

#[test]
fn dma_to_an_unreachable_peer_is_aer_and_a_reachable_one_is_not() {
    let m = machine_with(false);
    let bar = m.bar();
    let mut b = [0u8; 4];
    m.gpu_port.read(&bus(bar), &mut b).unwrap();
    assert!(m.classes().is_empty(), "same switch: BusAddr");
    assert_eq!(
        m.nic_port.read(&bus(bar), &mut b),
        Err(DmaFault::Aer {
            addr: bar,
            reason: AerReason::P2pUnreachable
        })
    );
    assert_eq!(m.classes(), vec![HazardClass::Aer]);
}

#[test]
fn dma_outside_the_address_space_is_an_unsupported_request() {
    let m = machine();
    let mut b = [0u8; 4];
    assert_eq!(
        m.gpu_port.read(&bus(0x10), &mut b),
        Err(DmaFault::Aer {
            addr: 0x10,
            reason: AerReason::Unassigned
        })
    );
    assert!(matches!(
        m.gpu_port.read(&bus(u64::MAX - 1), &mut b),
        Err(DmaFault::BadRange { .. })
    ));
}

// ---- MisdirectedDma (docs/hazards.md, hazard 4) ----

#[test]
fn dma_after_hotplug_of_another_device_at_the_same_range_is_misdirected() {
    let m = machine();
    let bar = m.bar();
    m.gpu_dom
        .map(0x40000, bar, BAR_SIZE, IommuPerm::RW)
        .unwrap();
    m.gpu_port.write(&iova(0x40000), b"fine").unwrap();
    assert!(m.classes().is_empty(), "twin: same device still there");

    m.p.pci().unplug(m.vfio.id()).unwrap();
    let newdev =
        m.p.pci()
            .hotplug(
                DeviceConfig::new("newdev")
                    .behind_switch("sw0")
                    .bar(0, BAR_SIZE),
            )
            .unwrap();
    assert_eq!(
        newdev.bar(0).unwrap().addr,
        bar,
        "first fit reuses the range"
    );
    m.gpu_port.write(&iova(0x40000), b"oops").unwrap();
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1, "{hz:?}");
    assert_eq!(hz[0].class, HazardClass::MisdirectedDma);
    assert!(hz[0].detail.contains("vfio0") && hz[0].detail.contains("newdev"));
    let mut raw = [0u8; 4];
    m.p.memory().peek(bar, &mut raw).unwrap();
    assert_eq!(&raw, b"oops", "the write landed in the new device");
}

#[test]
fn unplugged_range_with_no_new_owner_is_aer_not_misdirected() {
    let m = machine();
    let bar = m.bar();
    m.gpu_dom
        .map(0x40000, bar, PAGE_SIZE, IommuPerm::RW)
        .unwrap();
    m.p.pci().unplug(m.vfio.id()).unwrap();
    assert!(m.gpu_port.write(&iova(0x40000), b"x").is_err());
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].aer, Some(AerReason::Unplugged));
}

// ---- IommuFault (docs/hazards.md, hazard 3) ----

#[test]
fn iommu_fault_records_never_mapped_versus_stopped_by_revoke() {
    let m = machine();
    let f = m.p.memory().alloc_frames(2, "heap").unwrap();
    let mut b = [0u8; 4];
    assert_eq!(
        m.gpu_port.read(&iova(0x7000), &mut b),
        Err(DmaFault::Iommu {
            iova: 0x7000,
            cause: IommuFaultCause::NeverMapped
        })
    );
    m.gpu_dom
        .map(0x10000, f[0], PAGE_SIZE, IommuPerm::RW)
        .unwrap();
    m.gpu_dom
        .map(0x20000, f[1], PAGE_SIZE, IommuPerm::RW)
        .unwrap();
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    m.gpu_dom
        .unmap(0x10000, PAGE_SIZE, UnmapReason::Revoke)
        .unwrap();
    m.gpu_dom
        .unmap(0x20000, PAGE_SIZE, UnmapReason::Unmap)
        .unwrap();
    assert!(m.gpu_port.read(&iova(0x10000), &mut b).is_err());
    assert!(m.gpu_port.read(&iova(0x20000), &mut b).is_err());
    let causes: Vec<_> =
        m.p.take_hazards()
            .iter()
            .map(|h| (h.class, h.iommu_fault))
            .collect();
    assert_eq!(
        causes,
        vec![
            (HazardClass::IommuFault, Some(IommuFaultCause::NeverMapped)),
            (
                HazardClass::IommuFault,
                Some(IommuFaultCause::UnmappedByRevoke)
            ),
            (HazardClass::IommuFault, Some(IommuFaultCause::Unmapped)),
        ]
    );
    let faults = m.gpu_dom.take_faults();
    assert_eq!(faults.len(), 3, "faults are events of the domain too");
    assert_eq!(faults[1].device, Some(m.gpu.id()));
}

#[test]
fn iova_dma_from_a_device_without_a_domain_faults() {
    let m = machine();
    let port = m.p.dma_port(m.vfio.id(), Accessor::new("vfio0")).unwrap();
    assert_eq!(
        port.read(&iova(0x1000), &mut [0u8; 4]),
        Err(DmaFault::Iommu {
            iova: 0x1000,
            cause: IommuFaultCause::NoDomain
        })
    );
}

// ---- IOTLB staleness ----

#[test]
fn stale_iotlb_translation_is_used_until_flushed_and_classified_by_what_it_reached() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    m.p.memory().poke(f, b"old!").unwrap();
    m.gpu_dom.map(0x10000, f, PAGE_SIZE, IommuPerm::RW).unwrap();
    let mut b = [0u8; 4];
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    assert!(m.classes().is_empty());

    // Unmap without the IOTLB sync: the entry is still used.
    m.gpu_dom
        .unmap_fast(0x10000, PAGE_SIZE, UnmapReason::Revoke)
        .unwrap();
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    assert_eq!(&b, b"old!");
    assert_eq!(m.classes(), vec![HazardClass::AccessAfterUnmap]);

    // The frame changes hands: the stale entry now reaches another owner.
    m.p.memory().free_frames(&[f]).unwrap();
    m.p.memory().alloc_frames(1, "victim").unwrap();
    m.p.memory().poke(f, b"new!").unwrap();
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    assert_eq!(&b, b"new!");
    let mut c = m.classes();
    c.sort();
    assert_eq!(
        c,
        vec![HazardClass::UseAfterFree, HazardClass::AccessAfterUnmap]
    );

    m.gpu_dom.iotlb_sync(0x10000, PAGE_SIZE);
    assert!(m.gpu_port.read(&iova(0x10000), &mut b).is_err());
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].iommu_fault, Some(IommuFaultCause::UnmappedByRevoke));
}

// ---- WriteAfterFences / AccessAfterRevoke (protocol) ----

fn exporter(m: &Machine) -> ExporterId {
    m.p.monitor()
        .register_exporter("vfio0-dmabuf", &Accessor::new("vfio0"))
        .unwrap()
}

#[test]
fn write_after_the_exporters_fence_wait_is_flagged_and_reads_are_allowed() {
    let m = machine();
    let ex = exporter(&m);
    let bar = m.bar();
    let r = [PhysRange::new(bar, BAR_SIZE)];
    m.gpu_port.write(&bus(bar), b"before").unwrap();
    m.p.monitor().fences_done(ex, &r).unwrap();
    let mut b = [0u8; 6];
    m.gpu_port.read(&bus(bar), &mut b).unwrap();
    assert!(
        m.classes().is_empty(),
        "read-and-discard is allowed until unmap"
    );
    let own = m.p.dma_port(m.vfio.id(), Accessor::new("vfio0")).unwrap();
    own.write(&bus(bar), b"own").unwrap();
    assert!(
        m.classes().is_empty(),
        "the exporter's own access is exempt"
    );
    m.gpu_port.write(&bus(bar + 8), b"late").unwrap();
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].class, HazardClass::WriteAfterFences);
    assert_eq!(hz[0].exporter.as_deref(), Some("vfio0-dmabuf"));
    assert_eq!(hz[0].kind, AccessKind::Write);
}

#[test]
fn any_access_after_revoke_returned_is_flagged_until_unrevoke() {
    let m = machine();
    let ex = exporter(&m);
    let bar = m.bar();
    let r = [PhysRange::new(bar, BAR_SIZE)];
    m.p.monitor().revoke_returned(ex, &r).unwrap();
    let mut b = [0u8; 4];
    m.gpu_port.read(&bus(bar), &mut b).unwrap();
    assert_eq!(m.classes(), vec![HazardClass::AccessAfterRevoke]);
    m.gpu_port.write(&bus(bar), b"w").unwrap();
    let mut c = m.classes();
    c.sort();
    assert_eq!(
        c,
        vec![
            HazardClass::WriteAfterFences,
            HazardClass::AccessAfterRevoke
        ]
    );
    m.p.monitor().unrevoke(ex, &r).unwrap();
    m.gpu_port.write(&bus(bar), b"w").unwrap();
    assert!(m.classes().is_empty());
}

#[test]
fn protocol_declarations_with_bad_input_are_typed_errors() {
    let m = machine();
    let ex = exporter(&m);
    assert_eq!(
        m.p.monitor().fences_done(ExporterId(9), &[]),
        Err(MonitorError::UnknownExporter(9))
    );
    assert!(matches!(
        m.p.monitor()
            .revoke_returned(ex, &[PhysRange::new(0x10, 0x1000)]),
        Err(MonitorError::BadRange { .. })
    ));
    assert!(matches!(
        m.p.monitor().declare_mapping(MappingDecl {
            attachment: 1,
            importer: Accessor::new("x"),
            exporter: None,
            ranges: vec![DeclaredRange::iova(m.gpu_dom.id(), u64::MAX, 2)],
        }),
        Err(MonitorError::BadRange { .. })
    ));
    let tok =
        m.p.monitor()
            .declare_mapping(MappingDecl {
                attachment: 1,
                importer: Accessor::new("x"),
                exporter: Some(ex),
                ranges: vec![DeclaredRange::bus(m.bar(), PAGE_SIZE)],
            })
            .unwrap();
    m.p.monitor().mapping_unmapped(&tok).unwrap();
    assert_eq!(
        m.p.monitor().mapping_unmapped(&tok),
        Err(MonitorError::AlreadyUnmapped(tok.id().0))
    );
    assert_eq!(m.p.monitor().live_mappings(), 0);
}

// ---- AccessAfterUnmap (protocol) ----

#[test]
fn access_through_a_mapping_after_its_unmap_is_flagged_with_its_ids() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    let tok =
        m.p.monitor()
            .declare_mapping(MappingDecl {
                attachment: 42,
                importer: Accessor::new("gpu0"),
                exporter: None,
                ranges: vec![DeclaredRange::iova(m.gpu_dom.id(), 0x10000, PAGE_SIZE)],
            })
            .unwrap();
    m.gpu_dom
        .map_tagged(0x10000, f, PAGE_SIZE, IommuPerm::RW, Some(tok.clone()))
        .unwrap();
    let mut b = [0u8; 4];
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    assert!(m.classes().is_empty());
    m.p.monitor().mapping_unmapped(&tok).unwrap();
    // The driver "forgot" to tear the IOVA down: the PTE's token names the
    // mapping even though the access does not.
    m.gpu_port.read(&iova(0x10000), &mut b).unwrap();
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].class, HazardClass::AccessAfterUnmap);
    assert_eq!(hz[0].mapping, Some(tok.id()));
    assert_eq!(hz[0].attachment, Some(42));
}

// ---- Order, monitor switch ----

#[test]
fn hazards_are_ordered_against_declarations() {
    let m = machine();
    let ex = exporter(&m);
    let bar = m.bar();
    let s1 =
        m.p.monitor()
            .revoke_returned(ex, &[PhysRange::new(bar, PAGE_SIZE)])
            .unwrap();
    m.gpu_port.read(&bus(bar), &mut [0u8; 1]).unwrap();
    let s2 =
        m.p.monitor()
            .unrevoke(ex, &[PhysRange::new(bar, PAGE_SIZE)])
            .unwrap();
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert!(s1 < hz[0].seq && hz[0].seq < s2);
    assert!(hz[0].ts_ns > 0);
}

#[test]
fn with_the_monitor_off_accesses_behave_the_same_and_record_nothing() {
    let m = machine();
    m.p.monitor().set_enabled(false);
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    m.gpu_dom.map(0x10000, f, PAGE_SIZE, IommuPerm::RW).unwrap();
    m.p.memory().free_frames(&[f]).unwrap();
    m.gpu_port.write(&iova(0x10000), b"uaf").unwrap();
    m.vfio.set_memory_decode(false).unwrap();
    let mut b = [0u8; 2];
    assert!(
        m.gpu_port.read(&bus(m.bar()), &mut b).is_err(),
        "AER still changes what the access does"
    );
    assert_eq!(b, [0xff, 0xff]);
    assert!(m.p.take_hazards().is_empty());
    m.p.monitor().set_enabled(true);
    m.gpu_port.write(&iova(0x10000), b"uaf").unwrap();
    assert_eq!(m.classes(), vec![HazardClass::UseAfterFree]);
}

#[test]
fn one_operation_records_each_class_once_even_over_many_pages() {
    let m = machine();
    let f = m.p.memory().alloc_frames(4, "heap").unwrap();
    for (i, &fr) in f.iter().enumerate() {
        m.gpu_dom
            .map(0x10000 + i as u64 * PAGE_SIZE, fr, PAGE_SIZE, IommuPerm::RW)
            .unwrap();
    }
    m.p.memory().free_frames(&f).unwrap();
    m.gpu_port
        .fill(&iova(0x10000), 4 * PAGE_SIZE as usize, 7)
        .unwrap();
    assert_eq!(m.classes(), vec![HazardClass::UseAfterFree]);
}
