//! Memory reuse with mappings outstanding (docs/hazards.md, `s-noreuse`):
//! every reset, power-down, decode-off, unplug, hot-plug and free is
//! recorded with the mappings of that memory still outstanding at that
//! moment, whether or not any access lands.

mod common;
use common::*;
use dmabuf_platform::*;

fn last(m: &Machine) -> ReuseEvent {
    m.p.monitor().reuse_events().pop().expect("an event")
}

#[test]
fn a_reset_under_a_declared_bus_mapping_is_recorded_and_after_the_unmap_is_clean() {
    let m = machine();
    let bar = m.bar();
    let t =
        m.p.monitor()
            .declare_mapping(MappingDecl {
                attachment: 1,
                importer: Accessor::new("gpu0"),
                exporter: None,
                ranges: vec![DeclaredRange::bus(bar, 2 * PAGE_SIZE)],
            })
            .unwrap();
    m.vfio.flr().unwrap();
    let ev = last(&m);
    assert_eq!((ev.kind, ev.who.as_str()), (ReuseKind::Reset, "vfio0"));
    assert_eq!(ev.outstanding.len(), 1, "{ev}");
    assert_eq!(ev.outstanding[0].kind, "sg");
    assert_eq!(ev.outstanding[0].mapping, Some(t.id()));
    assert!(ev.to_string().contains("sg mapping 1 by gpu0"), "{ev}");
    assert!(m.classes().is_empty(), "no access landed");
    m.p.monitor().mapping_unmapped(&t).unwrap();
    m.vfio.set_memory_decode(true).unwrap();
    m.vfio.set_memory_decode(false).unwrap();
    let ev = last(&m);
    assert_eq!(ev.kind, ReuseKind::DecodeOff);
    assert!(ev.outstanding.is_empty(), "{ev}");
}

#[test]
fn iommu_ptes_and_unflushed_iotlb_entries_are_outstanding() {
    let m = machine();
    let bar = m.bar();
    m.nic_dom
        .map(0x4000, bar, PAGE_SIZE, IommuPerm::RW)
        .unwrap();
    m.vfio.set_power_state(PowerState::D3hot).unwrap();
    let ev = last(&m);
    assert_eq!(ev.kind, ReuseKind::PowerDown);
    assert_eq!(ev.outstanding.len(), 1, "{ev}");
    assert_eq!(ev.outstanding[0].kind, "iommu");
    m.vfio.set_power_state(PowerState::D0).unwrap();
    // Warm the IOTLB, then unmap the PTE without flushing it.
    let mut b = [0u8; 4];
    m.nic_port.read(&iova(0x4000), &mut b).unwrap();
    m.nic_dom
        .unmap_fast(0x4000, PAGE_SIZE, UnmapReason::Unmap)
        .unwrap();
    m.vfio.set_memory_decode(false).unwrap();
    let ev = last(&m);
    assert_eq!(ev.outstanding.len(), 1, "{ev}");
    assert_eq!(ev.outstanding[0].kind, "iotlb");
    m.nic_dom.flush_iotlb_all();
    m.vfio.set_memory_decode(true).unwrap();
    m.vfio.set_memory_decode(false).unwrap();
    assert!(last(&m).outstanding.is_empty());
}

#[test]
fn freeing_mapped_frames_and_unplugging_a_mapped_bar_are_recorded() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap()[0];
    m.gpu_dom.map(0x10000, f, PAGE_SIZE, IommuPerm::RW).unwrap();
    m.p.memory().free_frames(&[f]).unwrap();
    let ev = last(&m);
    assert_eq!((ev.kind, ev.who.as_str()), (ReuseKind::Free, "heap"));
    assert_eq!(ev.outstanding.len(), 1, "{ev}");
    let bar = m.bar();
    m.gpu_dom
        .map(0x20000, bar, PAGE_SIZE, IommuPerm::RW)
        .unwrap();
    m.p.pci().unplug(m.vfio.id()).unwrap();
    let ev = last(&m);
    assert_eq!(ev.kind, ReuseKind::Unplug);
    assert_eq!(ev.outstanding.len(), 1, "{ev}");
    m.p.pci()
        .hotplug(DeviceConfig::new("new0").bar_at(0, BAR_SIZE, bar))
        .unwrap();
    let ev = last(&m);
    assert_eq!((ev.kind, ev.who.as_str()), (ReuseKind::Reassign, "new0"));
    assert_eq!(ev.outstanding.len(), 1, "{ev}");
}
