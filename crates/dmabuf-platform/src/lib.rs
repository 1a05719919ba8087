//! The simulated platform the drivers run on: physical memory with real
//! bytes, PCI devices and their BARs, an IOMMU with an IOTLB, DMA engines,
//! CPU mappings, and a hazard monitor that classifies every access.
//!
//! # The problem
//!
//! The revoke discussion (docs/hazards.md) names hazards that
//! only exist on real hardware: a use-after-free of exporter memory, a PCI
//! AER from DMA into a BAR that is disabled or asleep, an IOMMU fault on a
//! torn-down IOVA, DMA landing in a BAR that now belongs to another device,
//! speculative read-ahead that no fence covers. A checker can only judge a
//! revoke sequence if these hazards are *observable*: this crate makes each of
//! them a real access to real bytes, and classifies it when it happens.
//!
//! # Modules, one concept each
//!
//! | module | kernel concept | role |
//! |---|---|---|
//! | [`memory`] | physical address space, `struct page`, the page allocator | RAM frames and BAR pages with bytes; per-page generation tags |
//! | [`pci`] | `struct pci_dev`, `PCI_COMMAND`, `pci_set_power_state`, `pcie_flr`, `pci_reset_bus`, hot-plug, `pci_p2pdma_distance` | devices, BARs, topology |
//! | [`iommu`] | `iommu_domain`, `iommu_map`/`iommu_unmap_fast`/`iommu_iotlb_sync`, `report_iommu_fault` | IOVA page tables, IOTLB, translation faults |
//! | [`monitor`] | (no kernel counterpart: the oracle) | hazard classes, the protocol declarations, the hazard log |
//! | [`dma`] | a device's DMA engine and its ring | asynchronous jobs that signal fences; synchronous ports; speculative read-ahead |
//! | [`cpu`] | `vm_area_struct`, `vm_ops->fault`, `vmf_insert_pfn`, `unmap_mapping_range` | CPU mappings with fault-in and zap |
//! | [`trace`] | tracepoints | the names of the platform's trace events |
//! | [`platform`] | the machine | the [`Platform`] facade that owns everything above |
//!
//! Layering: this crate depends on `dmabuf-core` only (fences, errno, trace,
//! and the `sync` shim, through which every lock, atomic, thread and clock
//! read goes).
#![warn(missing_docs)]

mod access;
pub mod cpu;
pub mod dma;
pub mod iommu;
pub mod memory;
pub mod monitor;
pub mod pci;
pub mod platform;
pub mod trace;

pub use cpu::{CpuError, CpuFaultHandler, CpuMapping, FixedPages, VmFault};
pub use dma::{
    DmaAddr, DmaEngine, DmaError, DmaFault, DmaJob, DmaOp, DmaPort, DmaRef, EngineConfig, JobId,
    JobOutcome, JobTicket, MAX_OP_LEN, ReadaheadConfig,
};
pub use iommu::{
    DomainId, FaultResponse, Iommu, IommuDomain, IommuError, IommuFaultCause, IommuFaultEvent,
    IommuPerm, Translation, UnmapReason,
};
pub use memory::{MemoryError, PAGE_SHIFT, PAGE_SIZE, PhysMemory};
pub use monitor::{
    AccessKind, Accessor, AddrSpace, AerReason, DeclaredRange, ExporterId, Hazard, HazardClass,
    MappingDecl, MappingId, MappingToken, Monitor, MonitorError, Outstanding, PhysRange,
    ReuseEvent, ReuseKind, Via,
};
pub use pci::{
    Bar, BarConfig, DeviceConfig, DeviceId, DeviceState, P2pType, PciBus, PciDevice, PciError,
    PowerState,
};
pub use platform::{Platform, PlatformConfig, PlatformError, PlatformStats};
