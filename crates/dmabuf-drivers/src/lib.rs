//! The drivers from the revoke thread, on the simulated platform: the VFIO,
//! RDMA (uverbs device memory), system-heap and GPU-VRAM exporters, the static, GPU, RDMA, iommufd and
//! misbehaving importers. The revoke sequence is data
//! ([`dmabuf_core::revoke::Protocol`]), chosen when an exporter is bound;
//! the drivers know nothing of scenarios or matrix columns (those live in
//! `dmabuf-scenario`).
//!
//! | module | kernel counterpart |
//! |---|---|
//! | [`vfio`], [`vfio_uapi`] | `drivers/vfio/pci/vfio_pci_dmabuf.c`, `uapi/linux/vfio.h` |
//! | [`phys_dmabuf`] | what VFIO and the RDMA exporter share: `dma_buf_phys_vec` ranges of a P2P provider (`drivers/dma-buf/dma-buf-mapping.c`), the revoke's reporting |
//! | [`rdma_export`] | the RDMA uverbs DMABUF object: device memory exported as a dma-buf, revoked when freed, on disassociate, on close (0ac6f4056c4a) |
//! | [`system_heap`] | `drivers/dma-buf/heaps/system_heap.c` |
//! | [`gpu_vram`] | amdgpu/xe as exporters (`amdgpu_dma_buf.c`, `xe_dma_buf.c`) |
//! | [`importers`] | amdgpu/xe importers, `umem_dmabuf.c` + mlx5, iommufd `pages.c`, plain `dma_buf_attach` users |
//! | [`dma_api`], [`job`], [`host`] | the DMA API, `drm_sched` dependencies, shared host state |
#![warn(missing_docs)]

pub mod dma_api;
pub mod gpu_vram;
pub mod host;
pub mod importers;
pub mod job;
pub mod phys_dmabuf;
pub mod rdma_export;

pub mod system_heap;
pub mod vfio;
pub mod vfio_uapi;
