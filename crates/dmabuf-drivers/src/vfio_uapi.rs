//! The VFIO device-feature ABI for dma-buf export (`uapi/linux/vfio.h`,
//! 6.19+): parsing and validating `VFIO_DEVICE_FEATURE` with
//! `VFIO_DEVICE_FEATURE_DMA_BUF`, with the kernel's errnos.
//!
//! Payload layout (little endian):
//!
//! | offset | field |
//! |---|---|
//! | 0 | `argsz: u32` (the whole payload) |
//! | 4 | `flags: u32` = feature id (`DMA_BUF` = 11) \| `GET` \| `SET` \| `PROBE` |
//! | 8 | `region_index: u32` (a BAR, 0–5) |
//! | 12 | `open_flags: u32` |
//! | 16 | `flags: u32` (must be 0) |
//! | 20 | `nr_ranges: u32` (must be > 0) |
//! | 24 | `nr_ranges` × `{ offset: u64, length: u64 }` |
//!
//! Validation order follows the kernel: feature flags, then `nr_ranges` and
//! `flags`, then the BAR index (`ENODEV`), then each range (zero or
//! unaligned `EINVAL`, total overflow `EINVAL`), then each range against the
//! BAR (`EOVERFLOW` on arithmetic overflow, `EINVAL` past its end).

use dmabuf_core::errno::{EFAULT, EINVAL, ENODEV, ENOTTY, EOVERFLOW, Errno};

/// `VFIO_DEVICE_FEATURE` = `_IO(';', 117)`.
pub const VFIO_DEVICE_FEATURE: u32 = 0x3B75;
/// Mask of the feature id in `flags`.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
/// `VFIO_DEVICE_FEATURE_GET`.
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;
/// `VFIO_DEVICE_FEATURE_DMA_BUF`.
pub const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;
/// `VFIO_PCI_ROM_REGION_INDEX`: region indices below it are BARs.
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
/// `DMA_IOVA_USE_SWIOTLB`: a total length with this bit is refused.
pub const DMA_IOVA_USE_SWIOTLB: u64 = 1 << 63;
const PAGE: u64 = 4096;

/// One `struct vfio_region_dma_range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRange {
    /// Offset into the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// A validated export request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaBufRequest {
    /// The BAR.
    pub region_index: u32,
    /// File flags for the new fd.
    pub open_flags: u32,
    /// The ranges, in order.
    pub ranges: Vec<DmaRange>,
    /// Their total length.
    pub size: u64,
}

/// What the feature ioctl asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureCall {
    /// `PROBE`: the feature is supported (returns 0).
    Probe,
    /// `GET` of `DMA_BUF`: export these ranges.
    GetDmaBuf(DmaBufRequest),
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Builds a payload (for tests and callers that speak the ABI).
pub fn encode(
    flags: u32,
    region_index: u32,
    open_flags: u32,
    feature_flags: u32,
    ranges: &[DmaRange],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + 16 * ranges.len());
    let argsz = (24 + 16 * ranges.len()) as u32;
    v.extend_from_slice(&argsz.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&region_index.to_le_bytes());
    v.extend_from_slice(&open_flags.to_le_bytes());
    v.extend_from_slice(&feature_flags.to_le_bytes());
    v.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for r in ranges {
        v.extend_from_slice(&r.offset.to_le_bytes());
        v.extend_from_slice(&r.length.to_le_bytes());
    }
    v
}

/// Parses and validates a `VFIO_DEVICE_FEATURE` payload up to (not
/// including) the BAR bounds check, which needs the device. Errors are
/// positive errnos.
pub fn parse(payload: &[u8]) -> Result<FeatureCall, Errno> {
    let argsz = u32_at(payload, 0).ok_or(EFAULT)?;
    let flags = u32_at(payload, 4).ok_or(EFAULT)?;
    if argsz < 8 {
        return Err(EINVAL);
    }
    let known = VFIO_DEVICE_FEATURE_MASK
        | VFIO_DEVICE_FEATURE_GET
        | VFIO_DEVICE_FEATURE_SET
        | VFIO_DEVICE_FEATURE_PROBE;
    if flags & !known != 0 {
        return Err(EINVAL);
    }
    let get_set = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET);
    if flags & VFIO_DEVICE_FEATURE_PROBE == 0
        && get_set == (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)
    {
        return Err(EINVAL);
    }
    if flags & VFIO_DEVICE_FEATURE_MASK != VFIO_DEVICE_FEATURE_DMA_BUF {
        return Err(ENOTTY);
    }
    // vfio_check_feature(flags, argsz - 8, GET, sizeof(dma_buf) = 16)
    if get_set & !VFIO_DEVICE_FEATURE_GET != 0 {
        return Err(EINVAL);
    }
    if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
        return Ok(FeatureCall::Probe);
    }
    if get_set == 0 {
        return Err(EINVAL);
    }
    if (argsz as usize).saturating_sub(8) < 16 {
        return Err(EINVAL);
    }
    let region_index = u32_at(payload, 8).ok_or(EFAULT)?;
    let open_flags = u32_at(payload, 12).ok_or(EFAULT)?;
    let dflags = u32_at(payload, 16).ok_or(EFAULT)?;
    let nr = u32_at(payload, 20).ok_or(EFAULT)?;
    if nr == 0 || dflags != 0 {
        return Err(EINVAL);
    }
    if region_index >= VFIO_PCI_ROM_REGION_INDEX {
        return Err(ENODEV);
    }
    let mut ranges = Vec::with_capacity(nr.min(1024) as usize);
    let mut size: u64 = 0;
    for i in 0..nr as usize {
        let o = 24 + 16 * i;
        let offset = u64_at(payload, o).ok_or(EFAULT)?;
        let length = u64_at(payload, o + 8).ok_or(EFAULT)?;
        if length == 0 || offset % PAGE != 0 || length % PAGE != 0 {
            return Err(EINVAL);
        }
        size = size.checked_add(length).ok_or(EINVAL)?;
        ranges.push(DmaRange { offset, length });
    }
    if size & DMA_IOVA_USE_SWIOTLB != 0 {
        return Err(EINVAL);
    }
    Ok(FeatureCall::GetDmaBuf(DmaBufRequest {
        region_index,
        open_flags,
        ranges,
        size,
    }))
}

/// `vfio_pci_core_fill_phys_vec`: turns ranges into physical ranges inside
/// the BAR at `start` of `len` bytes.
pub fn fill_phys(ranges: &[DmaRange], start: u64, len: u64) -> Result<Vec<(u64, u64)>, Errno> {
    let max = start.checked_add(len).ok_or(EOVERFLOW)?;
    ranges
        .iter()
        .map(|r| {
            if r.length == 0 {
                return Err(EINVAL);
            }
            let paddr = start.checked_add(r.offset).ok_or(EOVERFLOW)?;
            let end = paddr.checked_add(r.length).ok_or(EOVERFLOW)?;
            if end > max {
                return Err(EINVAL);
            }
            Ok((paddr, r.length))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: u32 = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;

    fn r(offset: u64, length: u64) -> DmaRange {
        DmaRange { offset, length }
    }

    #[test]
    fn valid_request_parses() {
        let p = encode(GET, 0, 2, 0, &[r(0, 4096), r(8192, 8192)]);
        let FeatureCall::GetDmaBuf(req) = parse(&p).unwrap() else {
            panic!("not a get")
        };
        assert_eq!(req.size, 12288);
        assert_eq!(req.ranges.len(), 2);
        assert_eq!(req.open_flags, 2);
    }

    #[test]
    fn probe_succeeds_without_a_body() {
        let mut p = Vec::new();
        p.extend_from_slice(&8u32.to_le_bytes());
        p.extend_from_slice(&(VFIO_DEVICE_FEATURE_PROBE | GET).to_le_bytes());
        assert_eq!(parse(&p), Ok(FeatureCall::Probe));
    }

    #[test]
    fn each_validation_rule_has_its_errno() {
        assert_eq!(
            parse(&encode(GET, 0, 0, 0, &[])),
            Err(EINVAL),
            "nr_ranges == 0"
        );
        assert_eq!(
            parse(&encode(GET, 0, 0, 1, &[r(0, 4096)])),
            Err(EINVAL),
            "flags != 0"
        );
        assert_eq!(
            parse(&encode(GET, 6, 0, 0, &[r(0, 4096)])),
            Err(ENODEV),
            "ROM is not a BAR"
        );
        assert_eq!(
            parse(&encode(GET, 0, 0, 0, &[r(0, 0)])),
            Err(EINVAL),
            "zero length"
        );
        assert_eq!(
            parse(&encode(GET, 0, 0, 0, &[r(1, 4096)])),
            Err(EINVAL),
            "unaligned offset"
        );
        assert_eq!(
            parse(&encode(GET, 0, 0, 0, &[r(0, 100)])),
            Err(EINVAL),
            "unaligned length"
        );
        assert_eq!(
            parse(&encode(GET, 0, 0, 0, &[r(0, u64::MAX - 4095), r(0, 8192)])),
            Err(EINVAL),
            "total overflows"
        );
        assert_eq!(
            parse(&encode(GET, 0, 0, 0, &[r(0, 1 << 63)])),
            Err(EINVAL),
            "SWIOTLB bit"
        );
        assert_eq!(
            parse(&encode(
                VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_BUF,
                0,
                0,
                0,
                &[r(0, 4096)]
            )),
            Err(EINVAL),
            "SET is not supported"
        );
        assert_eq!(
            parse(&encode(
                VFIO_DEVICE_FEATURE_GET | 12,
                0,
                0,
                0,
                &[r(0, 4096)]
            )),
            Err(ENOTTY),
            "other feature"
        );
        assert_eq!(
            parse(&encode(GET | (1 << 20), 0, 0, 0, &[r(0, 4096)])),
            Err(EINVAL),
            "unknown flag bits"
        );
        let mut short = encode(GET, 0, 0, 0, &[r(0, 4096)]);
        short.truncate(30);
        assert_eq!(
            parse(&short),
            Err(EFAULT),
            "payload shorter than its ranges"
        );
    }

    #[test]
    fn ranges_must_stay_inside_the_bar() {
        assert_eq!(
            fill_phys(&[r(0, 4096)], 0xe000_0000, 0x10000),
            Ok(vec![(0xe000_0000, 4096)])
        );
        assert_eq!(
            fill_phys(&[r(0x10000, 4096)], 0xe000_0000, 0x10000),
            Err(EINVAL)
        );
        assert_eq!(
            fill_phys(&[r(u64::MAX - 4095, 8192)], 0x1000, 0x10000),
            Err(EOVERFLOW)
        );
    }
}
