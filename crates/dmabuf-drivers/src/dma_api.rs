//! The DMA API, as far as exporters need it (`dma_map_phys`,
//! `dma_unmap_phys`, `dma_iova_try_alloc` + `dma_iova_link`): turns a
//! physical range into a DMA address a given device can use.
//!
//! # Address spaces
//!
//! | the device | `map_phys` returns | the device issues |
//! |---|---|---|
//! | has a DMA-API domain ([`Host::set_dma_domain`]) | a fresh IOVA at or above [`IOVA_BASE`], mapped in that domain | [`DmaAddr::Iova`] |
//! | has none (passthrough) | the physical address itself | [`DmaAddr::Bus`] |
//!
//! Every physical address of the simulated machine lies below
//! [`IOVA_BASE`], and every IOVA this module hands out lies above it, so a
//! `dma_addr_t` alone says which space it is in ([`to_platform`]). That is
//! what lets an importer turn an sg entry into an access without asking the
//! exporter how it was made. IOVAs are never reused within a host (a bump
//! allocator over a 2^47-byte window), so a late access through a stale
//! IOVA can never reach a later mapping.
//!
//! # Lock rules
//!
//! None of its own: the IOMMU's locks only.

use crate::host::Host;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::Ordering;
use dmabuf_core::sync::atomic::global::AtomicU64;
use dmabuf_platform::{DeviceId, DmaAddr, IommuError, IommuPerm, PAGE_SIZE, UnmapReason};

/// The lowest IOVA the DMA API hands out; above every physical address.
pub const IOVA_BASE: u64 = 1 << 40;
/// The end of the IOVA window (the IOMMU's aperture).
pub const IOVA_END: u64 = 1 << 47;

/// Errors of DMA-API calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaApiError {
    /// Address or length not page aligned, or zero length.
    #[error("dma_map_phys: unaligned or empty range {paddr:#x}+{len:#x}")]
    BadRange {
        /// Physical address.
        paddr: u64,
        /// Length.
        len: u64,
    },
    /// The IOVA window is used up.
    #[error("dma_map_phys: IOVA space exhausted mapping {len:#x} bytes")]
    NoIova {
        /// Length asked for.
        len: u64,
    },
    /// The IOMMU refused.
    #[error("dma_map_phys for device {device}: {source}")]
    Iommu {
        /// The device.
        device: DeviceId,
        /// What the IOMMU said.
        source: IommuError,
    },
}

impl AsErrno for DmaApiError {
    fn errno(&self) -> Errno {
        match self {
            DmaApiError::BadRange { .. } => errno::EINVAL,
            DmaApiError::NoIova { .. } => errno::ENOMEM,
            DmaApiError::Iommu { source, .. } => source.errno(),
        }
    }
}

static NEXT_IOVA: AtomicU64 = AtomicU64::new(IOVA_BASE);

fn alloc_iova(len: u64) -> Result<u64, DmaApiError> {
    // A bump allocator: IOVAs only need to be unique per domain, and never
    // reusing one keeps stale accesses distinguishable. Inside a controlled
    // execution the execution's own counter is used, so replays map the
    // same IOVAs and print identical traces.
    let pages = len / PAGE_SIZE;
    let a = match dmabuf_core::sync::sched::local_counter("dma_api_iova_page", pages) {
        Some(first) => IOVA_BASE + (first - 1) * PAGE_SIZE,
        None => NEXT_IOVA.fetch_add(len, Ordering::Relaxed),
    };
    if a.checked_add(len).is_none_or(|e| e > IOVA_END) {
        return Err(DmaApiError::NoIova { len });
    }
    Ok(a)
}

/// Whether a `dma_addr_t` is an IOVA this module handed out.
pub fn is_iova(dma_addr: u64) -> bool {
    dma_addr >= IOVA_BASE
}

/// How the device issues a `dma_addr_t`.
pub fn to_platform(dma_addr: u64) -> DmaAddr {
    if is_iova(dma_addr) {
        DmaAddr::Iova(dma_addr)
    } else {
        DmaAddr::Bus(dma_addr)
    }
}

/// `dma_map_phys`: a DMA address for `[paddr, paddr + len)` usable by `dev`.
pub fn map_phys(
    host: &Host,
    dev: DeviceId,
    paddr: u64,
    len: u64,
    perm: IommuPerm,
) -> Result<u64, DmaApiError> {
    if len == 0 || (paddr | len) & (PAGE_SIZE - 1) != 0 {
        return Err(DmaApiError::BadRange { paddr, len });
    }
    let Some(dom) = host.dma_domain(dev) else {
        return Ok(paddr);
    };
    let iova = alloc_iova(len)?;
    dom.map(iova, paddr, len, perm)
        .map_err(|source| DmaApiError::Iommu {
            device: dev,
            source,
        })?;
    Ok(iova)
}

/// `dma_unmap_phys`: undoes [`map_phys`] (a no-op for passthrough
/// addresses). Unmaps with an IOTLB sync, so once it returns the device can
/// no longer reach the page through this address.
pub fn unmap_phys(host: &Host, dev: DeviceId, dma_addr: u64, len: u64) -> Result<(), DmaApiError> {
    if !is_iova(dma_addr) {
        return Ok(());
    }
    let Some(dom) = host.dma_domain(dev) else {
        return Err(DmaApiError::Iommu {
            device: dev,
            source: IommuError::NotAttached { device: dev.0 },
        });
    };
    dom.unmap(dma_addr, len, UnmapReason::Unmap)
        .map(|_| ())
        .map_err(|source| DmaApiError::Iommu {
            device: dev,
            source,
        })
}

/// `dma_unmap_sgtable`: releases every entry of a table mapped for `dev`
/// (the IOVAs a map built, or nothing for bus addresses). Used both by
/// `unmap_dma_buf` and to roll back a map that failed part way; an entry
/// that is already gone is not an error at this point.
pub fn unmap_entries(host: &Host, dev: DeviceId, entries: &[dmabuf_core::dma_buf::SgEntry]) {
    for e in entries {
        let _ = unmap_phys(host, dev, e.dma_addr, e.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};

    #[test]
    fn passthrough_devices_get_physical_addresses_and_translated_ones_iovas() {
        let p = Platform::new(
            PlatformConfig::default()
                .device(DeviceConfig::new("a"))
                .device(DeviceConfig::new("b")),
        )
        .unwrap();
        let host = Host::new(p.clone());
        let a = p.device("a").unwrap().id();
        let b = p.device("b").unwrap().id();
        let dom = p.iommu().domain_alloc("dma-b");
        host.set_dma_domain(b, &dom).unwrap();
        let ram = p.memory().ram_base();
        assert_eq!(map_phys(&host, a, ram, 4096, IommuPerm::RW), Ok(ram));
        let iova = map_phys(&host, b, ram, 4096, IommuPerm::RW).unwrap();
        assert!(is_iova(iova));
        assert_eq!(to_platform(iova), DmaAddr::Iova(iova));
        assert_eq!(to_platform(ram), DmaAddr::Bus(ram));
        assert_eq!(dom.iova_to_phys(iova), Some(ram));
        unmap_phys(&host, b, iova, 4096).unwrap();
        assert_eq!(dom.iova_to_phys(iova), None);
        assert_eq!(
            map_phys(&host, a, ram + 1, 4096, IommuPerm::RW)
                .unwrap_err()
                .errno(),
            errno::EINVAL
        );
    }
}
