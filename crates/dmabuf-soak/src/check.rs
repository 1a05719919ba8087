//! The checks of a soak: hazards, leaks and the end-of-run accounting. Pure
//! functions over what the platform, the core and the drivers report, so
//! the tests can plant a leak or a hazard and see it caught.
//!
//! # What is checked, and with which diagnostic
//!
//! | object | per episode (after its teardown) | at the end of the run |
//! |---|---|---|
//! | dma-bufs | `DmaBufRef::is_released`, attachments left, the core's release diagnostics (`dma_buf_release` WARNs) | `dma_buf::live_buffer_count` back to its value at the start |
//! | attachments | `DmaBufRef::attachments` empty | |
//! | mappings | the monitor's declared live mappings (`PlatformStats::live_mappings`) | |
//! | IOVAs | IOMMU pages still mapped (`iommu_pages_mapped`) | |
//! | frames | RAM frames still allocated (`frames_allocated`) | |
//! | CPU mappings | resident CPU PTEs (`cpu_ptes`) | |
//! | engines | engines running, jobs pending after shutdown | |
//! | fences | | `dma_fence::live_fences` back to its value at the start |
//! | hazards | every hazard the episode's monitor recorded that [`is_violation`] counts | |

use dmabuf_core::dma_buf::DmaBufRef;
use dmabuf_platform::{AccessKind, Hazard, HazardClass, PlatformStats};

dmabuf_core::named_enum! {
    /// What a finding is about.
    ///
    /// `name()`: kebab-case name.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum FindingKind {
        /// The monitor classified an access as a hazard.
        Hazard => "hazard",
        /// An object was not released.
        Leak => "leak",
        /// A thread stayed in one step longer than the hung-task bound.
        HungTask => "hung-task",
        /// A revoke ran longer than the revoke bound.
        SlowRevoke => "slow-revoke",
        /// Lockdep reported a rule broken.
        Lockdep => "lockdep",
        /// A kernel WARN (refcount misuse, a timed-out wait).
        Warning => "warning",
        /// A thread of the run panicked.
        Panic => "panic",
        /// RSS kept growing after the warm-up.
        RssGrowth => "rss-growth",
    }
}

/// One problem the soak found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// The episode it happened in, when it belongs to one.
    pub episode: Option<u64>,
    /// The exporter of that episode, when known.
    pub exporter: Option<&'static str>,
    /// Details.
    pub detail: String,
}

/// Whether a recorded hazard breaks the contract, by the rules of the
/// checker's safety properties (docs/hazards.md):
///
/// | class | counted | rule |
/// |---|---|---|
/// | `UseAfterFree`, `Aer`, `MisdirectedDma` | always | `s-noreuse` |
/// | `AccessAfterRevoke` | always | `s-final` |
/// | `WriteAfterFences` | a write after a revoke of the episode returned (`first_return_seq`) | `s-fence` |
/// | `IommuFault` | never: the IOMMU stopped the access, the intended outcome of a revoke | |
/// | `AccessAfterUnmap` | never: no property judges it (an importer declares its unmap before the exporter hears of it, so an access in that window is recorded yet harmless to the exporter); counted | |
///
/// An access by a device that the soak surprise-unplugged is never counted
/// (`unplugged`): a removed device cannot master the bus, and the platform's
/// engines still finish the operation they were in (counted apart, see
/// docs/soak.md).
pub fn is_violation(h: &Hazard, first_return_seq: Option<u64>, unplugged: Option<&str>) -> bool {
    if unplugged.is_some_and(|d| d == h.accessor) {
        return false;
    }
    match h.class {
        HazardClass::UseAfterFree
        | HazardClass::Aer
        | HazardClass::MisdirectedDma
        | HazardClass::AccessAfterRevoke => true,
        HazardClass::AccessAfterUnmap => false,
        HazardClass::WriteAfterFences => {
            h.kind == AccessKind::Write && first_return_seq.is_some_and(|r| h.seq > r)
        }
        HazardClass::IommuFault => false,
    }
}

/// The hazards of an episode as findings (one per hazard, at most `cap`
/// listed; the rest counted in the last one).
pub fn hazard_findings(episode: u64, hazards: &[Hazard], cap: usize) -> Vec<Finding> {
    let mut out: Vec<Finding> = hazards
        .iter()
        .take(cap)
        .map(|h| Finding {
            kind: FindingKind::Hazard,
            episode: Some(episode),
            exporter: None,
            detail: h.to_string(),
        })
        .collect();
    if hazards.len() > cap
        && let Some(last) = out.last_mut()
    {
        last.detail
            .push_str(&format!(" (and {} more hazards)", hazards.len() - cap));
    }
    out
}

/// Leaks of an episode once it was torn down: buffers, attachments and
/// release diagnostics, then the platform's counters (taken after the
/// platform shut down).
pub fn episode_leaks(bufs: &[DmaBufRef], stats: &PlatformStats) -> Vec<String> {
    let mut leaks = Vec::new();
    for b in bufs {
        if !b.is_released() {
            leaks.push(format!(
                "dma-buf ino {} ({}) not released: {} file reference(s)",
                b.ino(),
                b.exp_name(),
                b.file_count()
            ));
        }
        let attached = b.attachments();
        if !attached.is_empty() {
            let devs: Vec<String> = attached
                .iter()
                .map(|a| format!("{} (maps {})", a.dev(), a.map_count()))
                .collect();
            leaks.push(format!(
                "dma-buf ino {}: {} attachment(s) never detached: {}",
                b.ino(),
                attached.len(),
                devs.join(", ")
            ));
        }
        leaks.extend(
            b.diagnostics()
                .into_iter()
                .map(|d| format!("dma-buf ino {}: {d}", b.ino())),
        );
    }
    let counts = [
        (
            stats.live_mappings.max(0) as u64,
            "declared mapping(s) never unmapped",
        ),
        (stats.iommu_pages_mapped, "IOVA page(s) still mapped"),
        (
            stats.frames_allocated as u64,
            "RAM frame(s) still allocated",
        ),
        (stats.cpu_ptes, "CPU PTE(s) still resident"),
        (stats.engines_running as u64, "DMA engine(s) still running"),
        (stats.jobs_pending as u64, "DMA job(s) still pending"),
    ];
    for (n, what) in counts {
        if n != 0 {
            leaks.push(format!("{n} {what}"));
        }
    }
    leaks
}

/// Objects counted process-wide, compared between the start and the end of
/// a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// `dma_fence::live_fences`.
    pub fences: usize,
    /// `dma_buf::live_buffer_count`.
    pub buffers: usize,
}

impl Census {
    /// Now.
    pub fn take() -> Self {
        Census {
            fences: dmabuf_core::dma_fence::live_fences(),
            buffers: dmabuf_core::dma_buf::live_buffer_count(),
        }
    }

    /// What `end` holds beyond `self`.
    pub fn leaks_since(&self, end: &Census) -> Vec<String> {
        let mut out = Vec::new();
        if end.fences > self.fences {
            out.push(format!(
                "{} fence(s) never freed ({} at the start, {} at the end)",
                end.fences - self.fences,
                self.fences,
                end.fences
            ));
        }
        if end.buffers > self.buffers {
            out.push(format!(
                "{} dma-buf(s) never released ({} at the start, {} at the end)",
                end.buffers - self.buffers,
                self.buffers,
                end.buffers
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_core::dma_buf;
    use dmabuf_core::sync::Arc;
    use dmabuf_core::uapi::Process;
    use dmabuf_drivers::host::Host;
    use dmabuf_drivers::system_heap::SystemHeap;
    use dmabuf_platform::{Accessor, CpuMapping, PAGE_SIZE, Platform, PlatformConfig, VmFault};

    fn heap_buffer() -> (Platform, Arc<Process>, i32, DmaBufRef) {
        let p = Platform::new(PlatformConfig::default().ram_frames(16)).unwrap();
        let heap = SystemHeap::new(&Host::new(p.clone())).unwrap();
        let proc = Process::new(7);
        let b = heap.allocate(2 * PAGE_SIZE, 2, 0).unwrap();
        let r = b.downgrade();
        let fd = proc.dma_buf_fd(b, 0).unwrap();
        (p, proc, fd, r)
    }

    #[test]
    fn a_planted_leak_is_caught_and_a_clean_teardown_is_not() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Clean: attach, detach, close.
        let (p, proc, fd, r) = heap_buffer();
        let b = proc.dma_buf_get(fd).unwrap();
        let a = dma_buf::attach(&b, "dev0").unwrap();
        dma_buf::detach(&b, &a).unwrap();
        drop(b);
        proc.close_all();
        p.shutdown();
        assert_eq!(episode_leaks(&[r], &p.stats()), Vec::<String>::new());
        // Planted: an attachment never detached (and the reference it keeps).
        let (p, proc, fd, r) = heap_buffer();
        let b = proc.dma_buf_get(fd).unwrap();
        let a = dma_buf::attach(&b, "dev0").unwrap();
        proc.close_all();
        p.shutdown();
        let leaks = episode_leaks(std::slice::from_ref(&r), &p.stats());
        assert!(
            leaks
                .iter()
                .any(|l| l.contains("never detached") && l.contains("dev0")),
            "{leaks:?}"
        );
        // Released or not, the heap's frames must come back.
        let frames = leaks.iter().any(|l| l.contains("RAM frame"));
        assert_eq!(frames, !r.is_released(), "{leaks:?}");
        dma_buf::detach(&b, &a).unwrap();
        drop(b);
    }

    #[test]
    fn a_planted_fence_leak_shows_in_the_census() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = Census::take();
        let (f, h) = dmabuf_core::FenceContext::named("test", "leak").create();
        let during = Census::take();
        let leaks = before.leaks_since(&during);
        assert!(leaks.iter().any(|l| l.starts_with("1 fence")), "{leaks:?}");
        let _ = h.signal();
        drop(f);
        assert_eq!(before.leaks_since(&Census::take()), Vec::<String>::new());
    }

    fn planted_uaf() -> Hazard {
        let p = Platform::new(PlatformConfig::default().ram_frames(4)).unwrap();
        let f = p.memory().alloc_frames(1, "heap").unwrap();
        let frame = f[0];
        let handler = Arc::new(move |vma: &CpuMapping, pgoff: u64| {
            vma.insert_pfn(pgoff, frame).map_err(|_| VmFault::Sigbus)
        });
        let v = p
            .mmap("planted", Accessor::new("user"), 1, handler, None)
            .unwrap();
        v.write(0, b"x").unwrap();
        p.memory().free_frames(&f).unwrap();
        let _ = v.write(0, b"y");
        let hz = p.monitor().hazards();
        assert_eq!(hz.len(), 1, "{hz:?}");
        hz[0].clone()
    }

    #[test]
    fn a_planted_hazard_is_reported_with_its_episode() {
        let h = planted_uaf();
        assert_eq!(h.class, HazardClass::UseAfterFree);
        assert!(is_violation(&h, None, None));
        let f = hazard_findings(42, std::slice::from_ref(&h), 4);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FindingKind::Hazard);
        assert_eq!(f[0].episode, Some(42));
        assert!(f[0].detail.contains("UseAfterFree"), "{}", f[0].detail);
        // Capped, the rest counted.
        let many = vec![h.clone(); 7];
        let f = hazard_findings(1, &many, 4);
        assert_eq!(f.len(), 4);
        assert!(
            f[3].detail.ends_with("(and 3 more hazards)"),
            "{}",
            f[3].detail
        );
    }

    #[test]
    fn the_judgement_follows_the_safety_properties() {
        let mut h = planted_uaf();
        // By a device the soak unplugged: not counted.
        assert!(!is_violation(&h, None, Some("user")));
        assert!(is_violation(&h, None, Some("gpu0")));
        for (class, counted) in [
            (HazardClass::Aer, true),
            (HazardClass::MisdirectedDma, true),
            (HazardClass::AccessAfterRevoke, true),
            (HazardClass::IommuFault, false),
            (HazardClass::AccessAfterUnmap, false),
        ] {
            h.class = class;
            assert_eq!(is_violation(&h, None, None), counted, "{class:?}");
        }
        h.class = HazardClass::WriteAfterFences;
        h.kind = AccessKind::Write;
        h.seq = 10;
        assert!(!is_violation(&h, None, None), "no revoke returned");
        assert!(!is_violation(&h, Some(11), None), "before the return");
        assert!(is_violation(&h, Some(9), None));
        h.kind = AccessKind::Read;
        assert!(!is_violation(&h, Some(9), None), "a read is not s-fence");
    }
}
