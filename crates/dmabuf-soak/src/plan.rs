//! The generated workload: a pure function of the seed and the episode
//! index, so a run's workload is reproducible (the interleaving on real
//! threads is not, and is not claimed to be).
//!
//! # Contract
//!
//! | input | output |
//! |---|---|
//! | `(config, seed, index)` | one [`Episode`]: exporter, buffers, imports, jobs, CPU access, fence polls, the exporter event and its moment, the faults |
//!
//! [`episode`] draws from a PCG stream seeded with `seed` mixed with
//! `index` (no shared generator: worker *w* of *W* runs the indexes
//! `w, w + W, ...`, and episode *n* is the same whichever worker runs it
//! and whatever ran before). Changing the configuration's lists changes the
//! draws; a given `(config, seed, index)` always yields the same episode.
//!
//! # Events per exporter (the kernel entry point each stands for)
//!
//! | event | VFIO (`vfio_pci_core`) | system heap | GPU VRAM |
//! |---|---|---|---|
//! | `flr`, `device-reset`, `hot-reset` | `vfio_pci_core_ioctl` resets: revoke, reset window, un-revoke | - | - |
//! | `decode-off`, `d3hot` | `vfio_pci_dma_buf_move` around a config/power write | - | - |
//! | `unrevoke-cycle` | decode off, on (un-revoke), importers re-map, off, close | - | - |
//! | `close` | `vfio_pci_dma_buf_cleanup` on the device fd's release | the exporting process closes its fds | the same |
//! | `close-hotplug` | close, then a new device plugged at the same BAR range | - | - |
//! | `evict` | - | - | `ttm_bo_evict` of every BO to system memory and back |
//! | `none` | | | |

use dmabuf_scenario::world::ExporterKind;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

dmabuf_core::named_enum! {
    /// The exporter's event in an episode.
    ///
    /// `name()`: kebab-case name.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Event {
        /// Nothing happens to the exporter.
        None => "none",
        /// Function-level reset.
        Flr => "flr",
        /// `VFIO_DEVICE_RESET`.
        DeviceReset => "device-reset",
        /// Secondary bus reset.
        HotReset => "hot-reset",
        /// `PCI_COMMAND_MEMORY` cleared, then set again.
        DecodeOff => "decode-off",
        /// D3hot and back to D0.
        D3hot => "d3hot",
        /// Revoke, un-revoke, re-maps, revoke, close.
        UnrevokeCycle => "unrevoke-cycle",
        /// Device (or exporting process) close.
        Close => "close",
        /// Close, then hot-plug of a new device at the same BAR range.
        CloseHotplug => "close-hotplug",
        /// VRAM eviction to system memory and migration back.
        Evict => "evict",
    }
}

impl Event {
    /// The events `exporter` has.
    pub fn of(exporter: ExporterKind) -> &'static [Event] {
        match exporter {
            ExporterKind::Vfio => &[
                Event::None,
                Event::Flr,
                Event::DeviceReset,
                Event::HotReset,
                Event::DecodeOff,
                Event::D3hot,
                Event::UnrevokeCycle,
                Event::Close,
                Event::CloseHotplug,
            ],
            ExporterKind::SystemHeap => &[Event::None, Event::Close],
            ExporterKind::GpuVram => &[Event::None, Event::Close, Event::Evict],
            // Not soaked: `exporter_by_name` never selects it.
            ExporterKind::RdmaDm => &[Event::None],
        }
    }
}

/// Exporter names on the command line and in JSON.
pub fn exporter_name(e: ExporterKind) -> &'static str {
    match e {
        ExporterKind::Vfio => "vfio",
        ExporterKind::SystemHeap => "system-heap",
        ExporterKind::GpuVram => "gpu-vram",
        ExporterKind::RdmaDm => "rdma-dm",
    }
}

/// The exporter called `name`, if any.
pub fn exporter_by_name(name: &str) -> Option<ExporterKind> {
    [
        ExporterKind::Vfio,
        ExporterKind::SystemHeap,
        ExporterKind::GpuVram,
    ]
    .into_iter()
    .find(|e| exporter_name(*e) == name)
}

/// The parts of the configuration the generator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Exporters to draw from (not empty).
    pub exporters: Vec<ExporterKind>,
    /// Importer kinds (library names) to draw from (not empty).
    pub importers: Vec<String>,
    /// Most buffers per episode (1 to [`MAX_BUFFERS`]).
    pub max_buffers: u32,
    /// Most imports per episode (1 to [`MAX_IMPORTS`]).
    pub max_imports: u32,
    /// Inject faults.
    pub faults: bool,
}

/// Most buffers in one episode (the VFIO BAR holds 8 two-page buffers).
pub const MAX_BUFFERS: u32 = 8;
/// Most imports in one episode (each has its own device and threads).
pub const MAX_IMPORTS: u32 = 32;

/// Who is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Victim {
    /// The process that exported the buffers (the VMM).
    Exporter,
    /// The process of import `i`.
    Import(u32),
}

/// One import: an importer kind on one of the episode's buffers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Import {
    /// Index into [`PlanConfig::importers`].
    pub kind: u32,
    /// Which buffer.
    pub buffer: u32,
    /// DMA jobs before and after the event (each).
    pub jobs: u32,
}

/// One episode of the workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Episode {
    /// Its index in the run.
    pub index: u64,
    /// The exporter.
    pub exporter: ExporterKind,
    /// Buffers exported.
    pub buffers: u32,
    /// Imports.
    pub imports: Vec<Import>,
    /// The first round of jobs waits behind a gate fence that signals just
    /// after the event began, so they are in flight across it.
    pub gated: bool,
    /// CPU access: VFIO BAR mmap and writes; dma-buf mmap and
    /// `DMA_BUF_IOCTL_SYNC` for the other exporters.
    pub cpu: bool,
    /// Fence polls and waits through the ioctl layer per import.
    pub polls: u32,
    /// The exporter's event.
    pub event: Event,
    /// When the event starts after the imports are set up (µs).
    pub event_delay_us: u32,
    /// Fault: GPU kernel workers run late (unmap latency of 5 ms).
    pub slow_worker: bool,
    /// Fault: allocations fail with this probability (per mille) on the
    /// episode's userspace threads.
    pub alloc_fail_per_mille: u32,
    /// Fault: this import's device is surprise-unplugged with jobs in
    /// flight.
    pub unplug: Option<u32>,
    /// Fault: this process is killed (its fds closed) after a delay (µs).
    pub kill: Option<(Victim, u32)>,
}

impl Episode {
    /// One line describing it (the summary's reproduction note).
    pub fn describe(&self, cfg: &PlanConfig) -> String {
        let imps: Vec<String> = self
            .imports
            .iter()
            .map(|i| {
                format!(
                    "{}@b{}x{}",
                    cfg.importers
                        .get(i.kind as usize)
                        .map_or("?", String::as_str),
                    i.buffer,
                    i.jobs
                )
            })
            .collect();
        let mut s = format!(
            "episode {}: {} buffers={} imports=[{}] gated={} cpu={} polls={} event={}@{}us",
            self.index,
            exporter_name(self.exporter),
            self.buffers,
            imps.join(","),
            self.gated,
            self.cpu,
            self.polls,
            self.event.name(),
            self.event_delay_us
        );
        if self.slow_worker {
            s.push_str(" slow-worker");
        }
        if self.alloc_fail_per_mille > 0 {
            s.push_str(&format!(" alloc-fail={}‰", self.alloc_fail_per_mille));
        }
        if let Some(u) = self.unplug {
            s.push_str(&format!(" unplug=import{u}"));
        }
        if let Some((v, d)) = self.kill {
            match v {
                Victim::Exporter => s.push_str(&format!(" kill=exporter@{d}us")),
                Victim::Import(i) => s.push_str(&format!(" kill=import{i}@{d}us")),
            }
        }
        s
    }
}

/// Mixes the seed and the index (SplitMix64's finaliser) into a stream seed.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Episode `index` of the run seeded with `seed`. The lists of `cfg` must
/// not be empty (the CLI validates them); an empty list yields an episode
/// without imports on the first exporter kind, VFIO if none.
pub fn episode(cfg: &PlanConfig, seed: u64, index: u64) -> Episode {
    let mut rng = Pcg64Mcg::seed_from_u64(mix(seed, index));
    let exporter = if cfg.exporters.is_empty() {
        ExporterKind::Vfio
    } else {
        cfg.exporters[rng.gen_range(0..cfg.exporters.len())]
    };
    let buffers = rng.gen_range(1..=cfg.max_buffers.clamp(1, MAX_BUFFERS));
    let n = if cfg.importers.is_empty() {
        0
    } else {
        rng.gen_range(1..=cfg.max_imports.clamp(1, MAX_IMPORTS))
    };
    let imports: Vec<Import> = (0..n)
        .map(|_| Import {
            kind: rng.gen_range(0..cfg.importers.len() as u32),
            buffer: rng.gen_range(0..buffers),
            jobs: rng.gen_range(1..=4),
        })
        .collect();
    let gated = rng.gen_bool(0.7);
    let cpu = rng.gen_bool(0.4);
    let polls = rng.gen_range(0..=3);
    let events = Event::of(exporter);
    let event = events[rng.gen_range(0..events.len())];
    let event_delay_us = rng.gen_range(0..=300);
    let (mut slow_worker, mut alloc_fail_per_mille, mut unplug, mut kill) = (false, 0, None, None);
    if cfg.faults {
        slow_worker = rng.gen_bool(0.15);
        if rng.gen_bool(0.2) {
            alloc_fail_per_mille = rng.gen_range(5..=100);
        }
        if n > 0 && rng.gen_bool(0.1) {
            unplug = Some(rng.gen_range(0..n));
        }
        if rng.gen_bool(0.15) {
            let victim = if n == 0 || rng.gen_bool(0.3) {
                Victim::Exporter
            } else {
                Victim::Import(rng.gen_range(0..n))
            };
            kill = Some((victim, rng.gen_range(0..=500)));
        }
    }
    Episode {
        index,
        exporter,
        buffers,
        imports,
        gated,
        cpu,
        polls,
        event,
        event_delay_us,
        slow_worker,
        alloc_fail_per_mille,
        unplug,
        kill,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PlanConfig {
        PlanConfig {
            exporters: vec![
                ExporterKind::Vfio,
                ExporterKind::SystemHeap,
                ExporterKind::GpuVram,
            ],
            importers: ["gpu", "rdma-odp", "iommufd", "static"]
                .map(String::from)
                .to_vec(),
            max_buffers: 4,
            max_imports: 6,
            faults: true,
        }
    }

    #[test]
    fn same_seed_same_workload() {
        let c = cfg();
        let a: Vec<Episode> = (0..200).map(|i| episode(&c, 42, i)).collect();
        let b: Vec<Episode> = (0..200).map(|i| episode(&c, 42, i)).collect();
        assert_eq!(a, b);
        // Order independence: episode 137 alone is the one in the sequence.
        assert_eq!(episode(&c, 42, 137), a[137]);
    }

    #[test]
    fn other_seed_other_workload() {
        let c = cfg();
        let a: Vec<Episode> = (0..50).map(|i| episode(&c, 1, i)).collect();
        let b: Vec<Episode> = (0..50).map(|i| episode(&c, 2, i)).collect();
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 5, "{same} of 50 episodes identical across seeds");
    }

    #[test]
    fn draws_respect_the_configuration() {
        let mut c = cfg();
        c.exporters = vec![ExporterKind::GpuVram];
        c.faults = false;
        let mut events = std::collections::BTreeSet::new();
        for i in 0..300 {
            let e = episode(&c, 7, i);
            assert_eq!(e.exporter, ExporterKind::GpuVram);
            assert!((1..=4).contains(&e.buffers));
            assert!((1..=6).contains(&(e.imports.len() as u32)));
            assert!(e.imports.iter().all(|i| i.buffer < e.buffers && i.kind < 4));
            assert!(Event::of(ExporterKind::GpuVram).contains(&e.event));
            assert!(!e.slow_worker && e.alloc_fail_per_mille == 0);
            assert!(e.unplug.is_none() && e.kill.is_none());
            events.insert(e.event);
        }
        // Every event of the exporter is drawn sometimes.
        assert_eq!(events.len(), Event::of(ExporterKind::GpuVram).len());
    }

    #[test]
    fn faults_are_drawn_when_enabled() {
        let c = cfg();
        let eps: Vec<Episode> = (0..400).map(|i| episode(&c, 3, i)).collect();
        assert!(eps.iter().any(|e| e.slow_worker));
        assert!(eps.iter().any(|e| e.alloc_fail_per_mille > 0));
        assert!(eps.iter().any(|e| e.unplug.is_some()));
        assert!(
            eps.iter()
                .any(|e| matches!(e.kill, Some((Victim::Exporter, _))))
        );
        assert!(
            eps.iter()
                .any(|e| matches!(e.kill, Some((Victim::Import(_), _))))
        );
    }

    #[test]
    fn names_round_trip() {
        for e in [
            ExporterKind::Vfio,
            ExporterKind::SystemHeap,
            ExporterKind::GpuVram,
        ] {
            assert_eq!(exporter_by_name(exporter_name(e)), Some(e));
        }
        assert_eq!(exporter_by_name("vfio-pci"), None);
    }
}
