//! The [`Platform`] facade: one simulated machine owning its memory, PCI
//! bus, IOMMU, monitor, DMA engines and CPU mappings.
//!
//! # Life
//!
//! | state | entered by | what works |
//! |---|---|---|
//! | running | [`Platform::new`] | everything |
//! | shut down | [`Platform::shutdown`], or the last handle dropped | every engine thread joined; queued jobs cancelled (`-ECANCELED`); new engines refused |
//!
//! `Platform` is a cheap-to-clone handle (`Arc`). Engine threads hold the
//! parts they use, never the facade, so dropping the last facade handle
//! shuts the engines down instead of leaking them.
//!
//! # Lock rules
//!
//! The engine list lock is taken only to add engines, list them and shut
//! down; it is never held while an engine is stopped (stopping joins).

use crate::access::Fabric;
use crate::cpu::{CpuError, CpuFaultHandler, CpuMapping};
use crate::dma::{DmaEngine, DmaError, DmaPort, EngineConfig, EngineInner};
use crate::iommu::Iommu;
use crate::memory::{MemoryError, PhysMemory};
use crate::monitor::{Accessor, Hazard, MappingToken, Monitor, Outstanding, PhysRange, ReuseKind};
use crate::pci::{DeviceConfig, DeviceId, PciBus, PciDevice, PciError};
use dmabuf_core::errno::{AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use dmabuf_core::sync::{Arc, Mutex, Weak};
use std::fmt;
use std::time::Duration;

/// How to build a platform.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// RAM frames (4 KiB each).
    pub ram_frames: usize,
    /// First RAM address.
    pub ram_base: u64,
    /// First address of the MMIO window (BARs).
    pub mmio_base: u64,
    /// Size of the MMIO window.
    pub mmio_size: u64,
    /// PCIe switch names; devices name the one they sit below.
    pub switches: Vec<String>,
    /// Whether the host bridge forwards peer-to-peer traffic between root ports.
    pub host_bridge_p2p: bool,
    /// Devices present at boot.
    pub devices: Vec<DeviceConfig>,
    /// Device slots (boot devices plus every later hot-plug).
    pub max_devices: usize,
    /// IOTLB entries per domain (rounded up to a power of two).
    pub iotlb_entries: usize,
    /// Whether the monitor classifies accesses from the start.
    pub monitor: bool,
    /// Hazards kept before further ones are only counted.
    pub max_hazards: usize,
    /// Time a device spends in FLR or bus reset.
    pub flr_delay: Duration,
    /// Speculative reads of bus addresses are not ordered by the controlled
    /// scheduler's search ([`sched::unobserved`](dmabuf_core::sync::sched::unobserved)):
    /// they move no bytes and their result is discarded, so nothing but the
    /// monitor sees them, and the search then covers every order of
    /// everything else but not where they fall. For searches that judge
    /// nothing from their hazards (see the scenario crate's
    /// `read_ahead_unordered`).
    pub unordered_speculation: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            ram_frames: 1024,
            ram_base: 0x1_0000_0000,
            mmio_base: 0xe000_0000,
            mmio_size: 0x1000_0000,
            switches: Vec::new(),
            host_bridge_p2p: true,
            devices: Vec::new(),
            max_devices: 64,
            iotlb_entries: 4096,
            monitor: true,
            max_hazards: 100_000,
            flr_delay: Duration::ZERO,
            unordered_speculation: false,
        }
    }
}

impl PlatformConfig {
    /// Adds a boot device.
    pub fn device(mut self, d: DeviceConfig) -> Self {
        self.devices.push(d);
        self
    }

    /// Adds a switch.
    pub fn switch(mut self, name: impl Into<String>) -> Self {
        self.switches.push(name.into());
        self
    }

    /// Sets the RAM size in frames.
    pub fn ram_frames(mut self, n: usize) -> Self {
        self.ram_frames = n;
        self
    }

    /// Sets host-bridge peer-to-peer support.
    pub fn host_bridge_p2p(mut self, on: bool) -> Self {
        self.host_bridge_p2p = on;
        self
    }
}

/// Errors building a platform or creating its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Memory configuration.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A boot device.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The platform was shut down.
    #[error("platform is shut down")]
    ShutDown,
}

impl AsErrno for PlatformError {
    fn errno(&self) -> Errno {
        match self {
            PlatformError::Memory(e) => e.errno(),
            PlatformError::Pci(e) => e.errno(),
            PlatformError::ShutDown => dmabuf_core::errno::ENODEV,
        }
    }
}

/// Counters for leak checks and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformStats {
    /// RAM frames allocated.
    pub frames_allocated: usize,
    /// IOVA pages mapped, all domains.
    pub iommu_pages_mapped: u64,
    /// IOTLB entries held, all domains.
    pub iotlb_entries: usize,
    /// CPU PTEs present, all live CPU mappings.
    pub cpu_ptes: u64,
    /// Declared mappings not declared unmapped.
    pub live_mappings: i64,
    /// Engine threads running.
    pub engines_running: usize,
    /// Jobs queued on all engines.
    pub jobs_pending: usize,
    /// Hazards held by the monitor.
    pub hazards: usize,
}

struct PlatformInner {
    mem: Arc<PhysMemory>,
    pci: PciBus,
    iommu: Iommu,
    monitor: Monitor,
    fabric: Arc<Fabric>,
    engines: Mutex<Vec<Arc<EngineInner>>>,
    vmas: Mutex<Vec<Weak<crate::cpu::VmaInner>>>,
    next_vma: AtomicU64,
    shut_down: AtomicBool,
}

impl Drop for PlatformInner {
    fn drop(&mut self) {
        let engines = std::mem::take(&mut *self.engines.lock());
        for e in engines {
            DmaEngine::from_inner(e).stop();
        }
    }
}

/// One simulated machine (cheap to clone handle).
#[derive(Clone)]
pub struct Platform(Arc<PlatformInner>);

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("memory", &*self.0.mem)
            .field("pci", &self.0.pci)
            .field("iommu", &self.0.iommu)
            .field("monitor", &self.0.monitor)
            .finish()
    }
}

impl Platform {
    /// Builds the machine and plugs in the boot devices, in order.
    pub fn new(cfg: PlatformConfig) -> Result<Self, PlatformError> {
        let mem = Arc::new(PhysMemory::new(
            cfg.ram_base,
            cfg.ram_frames,
            cfg.mmio_base,
            cfg.mmio_size,
        )?);
        let pci = PciBus::new(
            mem.clone(),
            cfg.max_devices,
            cfg.switches.clone(),
            cfg.host_bridge_p2p,
            cfg.flr_delay,
        );
        for d in &cfg.devices {
            pci.hotplug(d.clone())?;
        }
        let iommu = Iommu::new(mem.clone(), cfg.max_devices, cfg.iotlb_entries);
        let monitor = Monitor::new(mem.clone(), cfg.monitor, cfg.max_hazards);
        let fabric = Arc::new(Fabric {
            mem: mem.clone(),
            pci: pci.inner().clone(),
            mon: monitor.inner().clone(),
            unordered_speculation: cfg.unordered_speculation,
        });
        let p = Self(Arc::new(PlatformInner {
            mem,
            pci,
            iommu,
            monitor,
            fabric,
            engines: Mutex::new(Vec::new()),
            vmas: Mutex::new(Vec::new()),
            next_vma: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
        }));
        // A weak reference: memory outlives nothing it would keep alive.
        let weak = Arc::downgrade(&p.0);
        p.0.mem.set_reuse_hook(Some(Arc::new(
            move |kind: ReuseKind, who: &str, ranges: &[PhysRange]| {
                if let Some(inner) = weak.upgrade() {
                    Platform(inner).note_reuse(kind, who, ranges);
                }
            },
        )));
        Ok(p)
    }

    /// Every mapping of `ranges` outstanding now: declared `sg` mappings,
    /// IOMMU PTEs and not yet flushed IOTLB entries, present CPU PTEs (the
    /// list a [`ReuseEvent`](crate::monitor::ReuseEvent) carries). A mapping
    /// seen as both a declared mapping and its IOMMU PTEs is listed once.
    pub fn outstanding(&self, ranges: &[PhysRange]) -> Vec<Outstanding> {
        let mut out = self.0.monitor.outstanding_sg(ranges);
        for d in self.0.iommu.domains() {
            for o in d.outstanding(ranges) {
                if o.mapping.is_none() || !out.iter().any(|x| x.mapping == o.mapping) {
                    out.push(o);
                }
            }
        }
        let vmas: Vec<_> = self
            .0
            .vmas
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for v in vmas {
            if let Some(o) = CpuMapping::from_inner(v).outstanding(ranges) {
                out.push(o);
            }
        }
        out
    }

    /// Declares that `ranges` stopped being what their mappings pointed at
    /// (`kind`, by `who`): records a
    /// [`ReuseEvent`](crate::monitor::ReuseEvent) listing the mappings still
    /// outstanding. The PCI layer and the frame allocator call it on every
    /// reset, power-down, decode-off, unplug, hot-plug and free; a driver
    /// calls it when it hands memory the platform does not track (a VRAM
    /// placement) to someone else. Returns the event's sequence number.
    pub fn note_reuse(&self, kind: ReuseKind, who: &str, ranges: &[PhysRange]) -> u64 {
        let out = self.outstanding(ranges);
        self.0.monitor.record_reuse(kind, who, ranges, out)
    }

    /// Physical memory and the frame allocator.
    pub fn memory(&self) -> &PhysMemory {
        &self.0.mem
    }

    /// The PCI bus.
    pub fn pci(&self) -> &PciBus {
        &self.0.pci
    }

    /// The IOMMU.
    pub fn iommu(&self) -> &Iommu {
        &self.0.iommu
    }

    /// The hazard monitor.
    pub fn monitor(&self) -> &Monitor {
        &self.0.monitor
    }

    /// The present device with this name.
    pub fn device(&self, name: &str) -> Result<PciDevice, PciError> {
        self.0.pci.by_name(name)
    }

    /// A synchronous bus-master port of `dev`, accessing as `accessor`.
    pub fn dma_port(&self, dev: DeviceId, accessor: Accessor) -> Result<DmaPort, DmaError> {
        self.0
            .pci
            .device(dev)
            .map_err(|_| DmaError::NoSuchDevice(dev))?;
        Ok(DmaPort::new(
            self.0.fabric.clone(),
            self.0.iommu.clone(),
            dev,
            accessor,
        ))
    }

    /// Creates a DMA engine of `dev` (threaded engines start their thread
    /// now). The accessor defaults to the device name.
    pub fn dma_engine(&self, dev: DeviceId, cfg: EngineConfig) -> Result<DmaEngine, DmaError> {
        if self.0.shut_down.load(Ordering::Acquire) {
            return Err(DmaError::Stopped(cfg.name));
        }
        let d = self
            .0
            .pci
            .device(dev)
            .map_err(|_| DmaError::NoSuchDevice(dev))?;
        if !d.is_present() {
            return Err(DmaError::DeviceGone { device: dev });
        }
        let accessor = cfg
            .accessor
            .clone()
            .unwrap_or_else(|| Accessor::new(d.name()));
        let port = DmaPort::new(self.0.fabric.clone(), self.0.iommu.clone(), dev, accessor);
        let e = DmaEngine::start(port, cfg);
        self.0.engines.lock().push(e.inner().clone());
        Ok(e)
    }

    /// Every engine created and not yet shut down.
    pub fn engines(&self) -> Vec<DmaEngine> {
        self.0
            .engines
            .lock()
            .iter()
            .cloned()
            .map(DmaEngine::from_inner)
            .collect()
    }

    /// Creates a CPU mapping of `pages` pages whose PTEs `handler` fills in
    /// on faults. `token` attributes its accesses to a declared mapping.
    pub fn mmap(
        &self,
        name: &str,
        accessor: Accessor,
        pages: u64,
        handler: Arc<dyn CpuFaultHandler>,
        token: Option<MappingToken>,
    ) -> Result<CpuMapping, CpuError> {
        let id = self.0.next_vma.fetch_add(1, Ordering::Relaxed);
        let m = CpuMapping::new(
            self.0.fabric.clone(),
            id,
            name,
            accessor,
            pages,
            handler,
            token,
        )?;
        let mut v = self.0.vmas.lock();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(m.inner()));
        Ok(m)
    }

    /// Takes every hazard recorded so far.
    pub fn take_hazards(&self) -> Vec<Hazard> {
        self.0.monitor.take_hazards()
    }

    /// Stops every engine (joining its thread, cancelling queued jobs) and
    /// refuses new ones. Idempotent.
    pub fn shutdown(&self) {
        self.0.shut_down.store(true, Ordering::Release);
        let engines = std::mem::take(&mut *self.0.engines.lock());
        for e in engines {
            DmaEngine::from_inner(e).stop();
        }
    }

    /// Counters for leak checks.
    pub fn stats(&self) -> PlatformStats {
        let engines = self.engines();
        let cpu_ptes = self
            .0
            .vmas
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|v| CpuMapping::from_inner(v).resident_pages())
            .sum();
        PlatformStats {
            frames_allocated: self.0.mem.frames_allocated(),
            iommu_pages_mapped: self.0.iommu.mapped_pages(),
            iotlb_entries: self
                .0
                .iommu
                .domains()
                .iter()
                .map(|d| d.iotlb_entries())
                .sum(),
            cpu_ptes,
            live_mappings: self.0.monitor.live_mappings(),
            engines_running: engines.iter().filter(|e| e.is_running()).count(),
            jobs_pending: engines.iter().map(DmaEngine::pending).sum(),
            hazards: self.0.monitor.hazard_count(),
        }
    }
}
