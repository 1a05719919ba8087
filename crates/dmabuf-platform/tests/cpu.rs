//! CPU mappings: fault-in, zap, SIGBUS after revoke, hazards through stale
//! PTEs (docs/hazards.md, hazard 13).

mod common;
use common::*;
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_platform::*;

fn user() -> Accessor {
    Accessor::new("userspace")
}

/// A VFIO-like fault handler: checks its revoke flag and inserts under the
/// same lock the revoke path takes.
struct Revocable {
    base: u64,
    revoked: Mutex<bool>,
}

impl CpuFaultHandler for Revocable {
    fn fault(&self, vma: &CpuMapping, pgoff: u64) -> Result<(), VmFault> {
        let r = self.revoked.lock();
        if *r {
            return Err(VmFault::Sigbus);
        }
        vma.insert_pfn(pgoff, self.base + pgoff * PAGE_SIZE)
            .map_err(|_| VmFault::Sigbus)
    }
}

#[test]
fn pages_fault_in_on_first_access_and_again_after_a_zap() {
    let m = machine();
    let f = m.p.memory().alloc_frames(2, "heap").unwrap();
    let v =
        m.p.mmap(
            "heap-mmap",
            user(),
            2,
            Arc::new(FixedPages(f.clone())),
            None,
        )
        .unwrap();
    assert_eq!(v.resident_pages(), 0);
    v.write(PAGE_SIZE - 2, b"abcd").unwrap();
    assert_eq!(v.resident_pages(), 2);
    let mut b = [0u8; 2];
    m.p.memory().peek(f[1], &mut b).unwrap();
    assert_eq!(&b, b"cd");
    assert_eq!(v.zap_all(), 2);
    assert_eq!(m.p.stats().cpu_ptes, 0);
    let mut r = [0u8; 4];
    v.read(PAGE_SIZE - 2, &mut r).unwrap();
    assert_eq!(&r, b"abcd");
    assert!(m.p.take_hazards().is_empty());
}

#[test]
fn access_after_revoke_and_zap_is_a_clean_sigbus_not_a_hazard() {
    let m = machine();
    let h = Arc::new(Revocable {
        base: m.bar(),
        revoked: Mutex::new(false),
    });
    let v = m.p.mmap("vfio-bar", user(), 4, h.clone(), None).unwrap();
    v.write(0, b"ok").unwrap();
    {
        let mut r = h.revoked.lock();
        *r = true;
        v.zap_all();
    }
    m.vfio.set_memory_decode(false).unwrap();
    let e = v.read(0, &mut [0u8; 2]).unwrap_err();
    assert_eq!(
        e,
        CpuError::Sigbus {
            vma: "vfio-bar".into(),
            offset: 0
        }
    );
    assert!(m.p.take_hazards().is_empty());
}

#[test]
fn a_pte_left_in_place_after_decode_off_is_aer_and_reads_all_ones() {
    let m = machine();
    let h = Arc::new(Revocable {
        base: m.bar(),
        revoked: Mutex::new(false),
    });
    let v = m.p.mmap("vfio-bar", user(), 1, h, None).unwrap();
    v.write(0, b"ok").unwrap();
    m.vfio.set_memory_decode(false).unwrap();
    let mut b = [0u8; 2];
    v.read(0, &mut b).unwrap();
    assert_eq!(b, [0xff, 0xff]);
    let hz = m.p.take_hazards();
    assert_eq!(hz.len(), 1);
    assert_eq!(hz[0].class, HazardClass::Aer);
    assert_eq!(hz[0].via, Via::Cpu { vma: v.id() });
}

#[test]
fn a_cpu_pte_to_a_freed_frame_is_use_after_free() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap();
    let v =
        m.p.mmap(
            "heap-mmap",
            user(),
            1,
            Arc::new(FixedPages(f.clone())),
            None,
        )
        .unwrap();
    v.write(0, b"x").unwrap();
    m.p.memory().free_frames(&f).unwrap();
    v.write(0, b"y").unwrap();
    assert_eq!(m.classes(), vec![HazardClass::UseAfterFree]);
}

#[test]
fn cpu_access_to_revoked_exporter_memory_is_access_after_revoke() {
    let m = machine();
    let ex =
        m.p.monitor()
            .register_exporter("vfio0-dmabuf", &Accessor::new("vfio0"))
            .unwrap();
    let h = Arc::new(Revocable {
        base: m.bar(),
        revoked: Mutex::new(false),
    });
    let v = m.p.mmap("vfio-bar", user(), 1, h, None).unwrap();
    v.read(0, &mut [0u8; 1]).unwrap();
    m.p.monitor()
        .revoke_returned(ex, &[PhysRange::new(m.bar(), BAR_SIZE)])
        .unwrap();
    v.read(0, &mut [0u8; 1]).unwrap();
    assert_eq!(m.classes(), vec![HazardClass::AccessAfterRevoke]);
}

#[test]
fn bad_cpu_accesses_and_inserts_are_typed_errors() {
    let m = machine();
    let f = m.p.memory().alloc_frames(1, "heap").unwrap();
    let v =
        m.p.mmap("m", user(), 1, Arc::new(FixedPages(f.clone())), None)
            .unwrap();
    assert!(matches!(
        v.read(PAGE_SIZE - 1, &mut [0u8; 2]),
        Err(CpuError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.read(u64::MAX, &mut [0u8; 2]),
        Err(CpuError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.insert_pfn(1, f[0]),
        Err(CpuError::BadInsert { .. })
    ));
    assert!(matches!(
        v.insert_pfn(0, f[0] + 1),
        Err(CpuError::BadInsert { .. })
    ));
    assert!(matches!(
        v.insert_pfn(0, 0x10),
        Err(CpuError::BadInsert { .. })
    ));
    assert!(matches!(
        m.p.mmap("e", user(), 0, Arc::new(FixedPages(vec![])), None),
        Err(CpuError::Empty(_))
    ));
    let lazy =
        m.p.mmap(
            "lazy",
            user(),
            1,
            Arc::new(|_: &CpuMapping, _| Ok(())),
            None,
        )
        .unwrap();
    assert!(matches!(
        lazy.read(0, &mut [0u8; 1]),
        Err(CpuError::FaultLoop { .. })
    ));
    v.munmap();
    assert!(matches!(
        v.read(0, &mut [0u8; 1]),
        Err(CpuError::Unmapped { .. })
    ));
}
