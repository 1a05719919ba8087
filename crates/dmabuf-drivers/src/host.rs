//! The host kernel's state that several drivers share: the simulated
//! machine, the DMA API's view of which devices translate through an IOMMU
//! domain it owns, and which exporter made which buffer (so importers can
//! name it when they declare mappings to the monitor).
//!
//! | piece | kernel counterpart | who writes it | who reads it |
//! |---|---|---|---|
//! | [`Host::platform`] | the machine | built once | everyone |
//! | DMA-API domains ([`Host::set_dma_domain`]) | `iommu_get_dma_domain(dev)` | the world builder, tests | [`crate::dma_api`] |
//! | buffer owners ([`Host::register_buffer`]) | `dmabuf->ops` identifies the exporter | exporters, at export | importers, when declaring a mapping |
//!
//! A device may be attached to a domain that its own driver manages (an
//! RDMA NIC's translation table, the domain iommufd fills for a guest): the
//! DMA API does not use those, so such a device is "passthrough" for
//! `dma_map_*` even though its DMA by IOVA translates.
//!
//! # Lock rules
//!
//! Both tables are leaf locks taken for a lookup or an insert, never while
//! calling out.

use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_platform::{DeviceId, ExporterId, IommuDomain, Monitor, PciDevice, Platform};
use std::collections::HashMap;
use std::fmt;

struct HostInner {
    platform: Platform,
    dma_domains: Mutex<HashMap<DeviceId, IommuDomain>>,
    owners: Mutex<HashMap<u64, ExporterId>>,
}

/// Shared host state (cheap to clone handle).
#[derive(Clone)]
pub struct Host(Arc<HostInner>);

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({:?})", self.0.platform)
    }
}

impl Host {
    /// Wraps a platform.
    pub fn new(platform: Platform) -> Self {
        Self(Arc::new(HostInner {
            platform,
            dma_domains: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
        }))
    }

    /// The machine.
    pub fn platform(&self) -> &Platform {
        &self.0.platform
    }

    /// Its hazard monitor.
    pub fn monitor(&self) -> &Monitor {
        self.0.platform.monitor()
    }

    /// The present device named `name` (an attachment's `dev`).
    pub fn device_by_name(&self, name: &str) -> Option<PciDevice> {
        self.0.platform.device(name).ok()
    }

    /// Makes `domain` the DMA-API domain of `dev` (and attaches the device
    /// to it): `dma_map_*` for `dev` then allocates IOVAs in it.
    pub fn set_dma_domain(
        &self,
        dev: DeviceId,
        domain: &IommuDomain,
    ) -> Result<(), dmabuf_platform::IommuError> {
        self.0.platform.iommu().attach_device(domain, dev)?;
        self.0.dma_domains.lock().insert(dev, domain.clone());
        Ok(())
    }

    /// The DMA-API domain of `dev`, if it has one.
    pub fn dma_domain(&self, dev: DeviceId) -> Option<IommuDomain> {
        self.0.dma_domains.lock().get(&dev).cloned()
    }

    /// Records that exporter `ex` made the buffer with inode `ino`.
    pub fn register_buffer(&self, ino: u64, ex: ExporterId) {
        self.0.owners.lock().insert(ino, ex);
    }

    /// The exporter of the buffer with inode `ino`, if registered.
    pub fn exporter_of(&self, ino: u64) -> Option<ExporterId> {
        self.0.owners.lock().get(&ino).copied()
    }
}

/// Takes a reservation lock without an acquire context. No driver path
/// takes a buffer's lock while already holding it, so the only error the
/// reservation object can return here (`Recursive`) is a driver bug; it
/// panics the task, which the checker records as a run error rather than a
/// verdict.
pub(crate) fn lock_resv(
    resv: &dmabuf_core::dma_resv::DmaResv,
) -> dmabuf_core::dma_resv::ResvGuard<'_> {
    match resv.lock(None) {
        Ok(g) => g,
        Err(e) => panic!("driver bug: reservation lock failed: {e}"),
    }
}
