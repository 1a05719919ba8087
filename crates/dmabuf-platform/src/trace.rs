//! The platform's trace events, recorded with `dmabuf_core::trace_event!` into
//! the one global, ordered event log shared with the core and the drivers.
//!
//! There are no kernel tracepoints for most of these (the kernel does not
//! trace its own hardware), so the names say plainly what happened. Where a
//! kernel tracepoint exists its name is used (`iommu_map`, `iommu_unmap`,
//! `io_page_fault` is spelled `iommu_fault` to read with the others).
//!
//! | event | emitted by | when |
//! |---|---|---|
//! | `frame_alloc` / `frame_free` | [`memory`](crate::memory) | RAM frames handed out / returned (with their new generation) |
//! | `pci_decode_on` / `pci_decode_off` | [`pci`](crate::pci) | `PCI_COMMAND_MEMORY` set / cleared |
//! | `pci_bus_master` | [`pci`](crate::pci) | `PCI_COMMAND_MASTER` changed |
//! | `pci_d3hot` / `pci_d0` | [`pci`](crate::pci) | power state changed |
//! | `pci_flr` | [`pci`](crate::pci) | function-level reset begins (`phase=begin`) and ends (`phase=end`) |
//! | `pci_hot_reset` | [`pci`](crate::pci) | secondary bus reset of every device on a bus |
//! | `pci_unplug` / `pci_hotplug` | [`pci`](crate::pci) | a device leaves / a new one arrives, with its BAR ranges |
//! | `iommu_attach_device` / `iommu_detach_device` | [`iommu`](crate::iommu) | a device enters / leaves a domain |
//! | `iommu_map` / `iommu_unmap` | [`iommu`](crate::iommu) | page-table changes (unmap carries its reason: `unmap` or `revoke`) |
//! | `iotlb_flush` | [`iommu`](crate::iommu) | IOTLB invalidation of a range or of everything |
//! | `iommu_fault` | [`iommu`](crate::iommu) | a translation fault, with its cause |
//! | `dma_job_submit` / `dma_job_start` / `dma_job_done` | [`dma`](crate::dma) | a job's life on an engine |
//! | `dma_access` | [`dma`](crate::dma) | one operation of a job (or a synchronous port access) |
//! | `dma_readahead` | [`dma`](crate::dma) | one speculative read of a recently used range |
//! | `cpu_fault` / `cpu_insert_pfn` / `cpu_zap` | [`cpu`](crate::cpu) | CPU page faults, PTE installs, PTE zaps |
//! | `monitor_map` / `monitor_unmap` | [`monitor`](crate::monitor) | a driver declared a mapping / its unmap |
//! | `monitor_fences_done` / `monitor_revoke_returned` / `monitor_unrevoke` | [`monitor`](crate::monitor) | an exporter declared a revoke stage |
//! | `hazard` | [`monitor`](crate::monitor) | a hazard was recorded (its class, accessor, address, monitor sequence) |
//! | `mem_reuse` | [`platform`](crate::platform) | memory was reset, powered down, decode-disabled, unplugged, re-assigned or freed, with the count of mappings of it still outstanding ([`ReuseEvent`](crate::monitor::ReuseEvent)) |
//!
//! Every event costs one relaxed load when tracing is off.

/// RAM frames allocated.
pub const FRAME_ALLOC: &str = "frame_alloc";
/// RAM frames freed.
pub const FRAME_FREE: &str = "frame_free";
/// Memory decode enabled.
pub const PCI_DECODE_ON: &str = "pci_decode_on";
/// Memory decode disabled.
pub const PCI_DECODE_OFF: &str = "pci_decode_off";
/// Bus mastering changed.
pub const PCI_BUS_MASTER: &str = "pci_bus_master";
/// Device put into D3hot.
pub const PCI_D3HOT: &str = "pci_d3hot";
/// Device brought back to D0.
pub const PCI_D0: &str = "pci_d0";
/// Function-level reset.
pub const PCI_FLR: &str = "pci_flr";
/// Secondary bus reset.
pub const PCI_HOT_RESET: &str = "pci_hot_reset";
/// Hot-unplug.
pub const PCI_UNPLUG: &str = "pci_unplug";
/// Hot-plug.
pub const PCI_HOTPLUG: &str = "pci_hotplug";
/// Device attached to an IOMMU domain.
pub const IOMMU_ATTACH: &str = "iommu_attach_device";
/// Device detached from its IOMMU domain.
pub const IOMMU_DETACH: &str = "iommu_detach_device";
/// IOVA range mapped.
pub const IOMMU_MAP: &str = "iommu_map";
/// IOVA range unmapped.
pub const IOMMU_UNMAP: &str = "iommu_unmap";
/// IOTLB invalidation.
pub const IOTLB_FLUSH: &str = "iotlb_flush";
/// Translation fault.
pub const IOMMU_FAULT: &str = "iommu_fault";
/// Job queued on an engine.
pub const DMA_JOB_SUBMIT: &str = "dma_job_submit";
/// Job started executing.
pub const DMA_JOB_START: &str = "dma_job_start";
/// Job finished (status included).
pub const DMA_JOB_DONE: &str = "dma_job_done";
/// One DMA operation.
pub const DMA_ACCESS: &str = "dma_access";
/// One speculative read.
pub const DMA_READAHEAD: &str = "dma_readahead";
/// CPU page fault.
pub const CPU_FAULT: &str = "cpu_fault";
/// CPU PTE installed by a fault handler.
pub const CPU_INSERT_PFN: &str = "cpu_insert_pfn";
/// CPU PTEs zapped.
pub const CPU_ZAP: &str = "cpu_zap";
/// Mapping declared to the monitor.
pub const MONITOR_MAP: &str = "monitor_map";
/// Mapping unmap declared to the monitor.
pub const MONITOR_UNMAP: &str = "monitor_unmap";
/// Exporter's revoke fence wait finished.
pub const MONITOR_FENCES_DONE: &str = "monitor_fences_done";
/// Exporter's revoke returned.
pub const MONITOR_REVOKE_RETURNED: &str = "monitor_revoke_returned";
/// Exporter un-revoked.
pub const MONITOR_UNREVOKE: &str = "monitor_unrevoke";
/// A hazard was recorded.
pub const HAZARD: &str = "hazard";
/// Memory was reset, powered down, decode-disabled, freed or re-assigned
/// (`mem_reuse`), with the mappings of it still outstanding.
pub const MEM_REUSE: &str = "mem_reuse";
