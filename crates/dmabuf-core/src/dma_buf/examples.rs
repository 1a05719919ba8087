//! A small, ready exporter for examples, doctests and first experiments:
//! implementing [`DmaBufOps`] is not needed to try the dma-buf calls.
//!
//! [`SimpleExporter`] exports one physically contiguous range of "device
//! memory" at a fixed DMA address. It is a dynamic exporter (it has
//! `pin`/`unpin`, so dynamic importers may attach without pinning and are
//! told to unmap through `invalidate_mappings`), supports `mmap`, and
//! counts every op so a caller can see what the core called.
//!
//! | op | what it does |
//! |---|---|
//! | `attach` | accepts every importer, or refuses every one with [`SimpleExporter::refuse_attach`]'s errno |
//! | `pin` / `unpin` | count (the memory never moves) |
//! | `map_dma_buf` | one scatter-gather entry: `[dma_addr, dma_addr + size)` |
//! | `unmap_dma_buf` | counts |
//! | `mmap` | accepted (the core checked the range) |
//! | `release` | counts; [`SimpleExporter::released`] becomes true |
//!
//! ```
//! use dmabuf_core::dma_buf::{self, DmaDirection, examples::SimpleExporter};
//!
//! let (buf, exp) = SimpleExporter::export("my-exporter", 0x1000_0000, 2 * 4096)?;
//! let attach = dma_buf::attach(&buf, "my-importer")?;
//! let g = buf.resv().lock(None)?;
//! let m = dma_buf::map_attachment(&attach, DmaDirection::Bidirectional, &g)?;
//! assert_eq!(m.sg_table().entries[0].dma_addr, 0x1000_0000);
//! dma_buf::unmap_attachment(&attach, m, &g)?;
//! drop(g);
//! dma_buf::detach(&buf, &attach)?;
//! assert_eq!((exp.maps(), exp.unmaps()), (1, 1));
//! drop(buf);
//! assert!(exp.released());
//! # Ok::<(), dmabuf_core::dma_buf::DmaBufError>(())
//! ```

use super::{
    Attachment, DmaBuf, DmaBufError, DmaBufOps, DmaBufRef, DmaDirection, ExportInfo, MmapRequest,
    PAGE_SIZE, PinOps, SgEntry, SgTable, export,
};
use crate::dma_resv::ResvGuard;
use crate::errno::Errno;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The ready exporter; see the [module documentation](self).
#[derive(Debug)]
pub struct SimpleExporter {
    dma_addr: u64,
    size: u64,
    refuse: AtomicI32,
    attaches: AtomicU64,
    maps: AtomicU64,
    unmaps: AtomicU64,
    pins: AtomicU64,
    unpins: AtomicU64,
    releases: AtomicU64,
}

impl SimpleExporter {
    /// An exporter of `size` bytes at `dma_addr` (not yet exported). Both
    /// must be multiples of [`PAGE_SIZE`] and `size` not zero; the range
    /// must not wrap.
    pub fn new(dma_addr: u64, size: u64) -> Result<Arc<Self>, DmaBufError> {
        if size == 0
            || !size.is_multiple_of(PAGE_SIZE)
            || !dma_addr.is_multiple_of(PAGE_SIZE)
            || dma_addr.checked_add(size).is_none()
        {
            return Err(DmaBufError::Invalid(format!(
                "SimpleExporter: {size:#x} bytes at {dma_addr:#x} is not a page-aligned, non-empty range"
            )));
        }
        Ok(Arc::new(Self {
            dma_addr,
            size,
            refuse: AtomicI32::new(0),
            attaches: AtomicU64::new(0),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            pins: AtomicU64::new(0),
            unpins: AtomicU64::new(0),
            releases: AtomicU64::new(0),
        }))
    }

    /// Creates the exporter and exports it (`dma_buf_export`) under
    /// `exp_name`, read-write, with a reservation object of its own.
    pub fn export(
        exp_name: &str,
        dma_addr: u64,
        size: u64,
    ) -> Result<(DmaBuf, Arc<Self>), DmaBufError> {
        let exp = Self::new(dma_addr, size)?;
        let buf = export(ExportInfo {
            exp_name: exp_name.to_owned(),
            size,
            flags: 0o2,
            resv: None,
            ops: exp.clone(),
        })?;
        Ok((buf, exp))
    }

    /// From now on, refuse every attach with `errno` (`None`: accept
    /// again).
    pub fn refuse_attach(&self, errno: Option<Errno>) {
        self.refuse
            .store(errno.map_or(0, Errno::get), Ordering::SeqCst);
    }

    /// Attachments accepted by `attach`.
    pub fn attaches(&self) -> u64 {
        self.attaches.load(Ordering::SeqCst)
    }
    /// `map_dma_buf` calls that returned a table.
    pub fn maps(&self) -> u64 {
        self.maps.load(Ordering::SeqCst)
    }
    /// `unmap_dma_buf` calls.
    pub fn unmaps(&self) -> u64 {
        self.unmaps.load(Ordering::SeqCst)
    }
    /// `pin` calls.
    pub fn pins(&self) -> u64 {
        self.pins.load(Ordering::SeqCst)
    }
    /// `unpin` calls.
    pub fn unpins(&self) -> u64 {
        self.unpins.load(Ordering::SeqCst)
    }
    /// Whether `release` ran (the last reference to the buffer went).
    pub fn released(&self) -> bool {
        self.releases.load(Ordering::SeqCst) > 0
    }
}

impl PinOps for SimpleExporter {
    fn pin(&self, _attach: &Attachment, _guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
        self.pins.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn unpin(&self, _attach: &Attachment, _guard: &ResvGuard<'_>) {
        self.unpins.fetch_add(1, Ordering::SeqCst);
    }
}

impl DmaBufOps for SimpleExporter {
    fn attach(&self, _buf: &DmaBufRef, _attach: &Attachment) -> Result<(), DmaBufError> {
        match self.refuse.load(Ordering::SeqCst) {
            0 => {
                self.attaches.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            e => Err(DmaBufError::errno(Errno::new(e), "SimpleExporter attach")),
        }
    }
    fn pin_ops(&self) -> Option<&dyn PinOps> {
        Some(self)
    }
    fn map_dma_buf(
        &self,
        _attach: &Attachment,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        self.maps.fetch_add(1, Ordering::SeqCst);
        Ok(SgTable {
            entries: vec![SgEntry {
                dma_addr: self.dma_addr,
                len: self.size,
            }],
        })
    }
    fn unmap_dma_buf(
        &self,
        _attach: &Attachment,
        _sgt: SgTable,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) {
        self.unmaps.fetch_add(1, Ordering::SeqCst);
    }
    fn release(&self, _buf: &DmaBufRef) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
    fn has_mmap(&self) -> bool {
        true
    }
    fn mmap(&self, _buf: &DmaBufRef, _req: MmapRequest) -> Result<(), DmaBufError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_buf::{self, AttachOps};
    use crate::errno::{self, AsErrno, Errno};

    #[test]
    fn ranges_that_are_not_page_aligned_are_refused() {
        assert!(SimpleExporter::new(0, 0).is_err());
        assert!(SimpleExporter::new(0, 100).is_err());
        assert!(SimpleExporter::new(1, PAGE_SIZE).is_err());
        assert!(SimpleExporter::new(u64::MAX - 4095, 2 * PAGE_SIZE).is_err());
        assert!(SimpleExporter::new(PAGE_SIZE, PAGE_SIZE).is_ok());
    }

    #[test]
    fn a_dynamic_importer_is_told_to_unmap_and_the_ops_are_counted() {
        let (buf, exp) = SimpleExporter::export("simple", 0x8000, 4 * PAGE_SIZE).unwrap();
        let told = Arc::new(AtomicU64::new(0));
        let t2 = told.clone();
        let ops = AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(move |_, _| {
                t2.fetch_add(1, Ordering::SeqCst);
            })),
        };
        let a = dma_buf::dynamic_attach(&buf, "importer", Some(ops)).unwrap();
        let g = buf.resv().lock(None).unwrap();
        let m = dma_buf::map_attachment(&a, DmaDirection::ToDevice, &g).unwrap();
        assert_eq!(m.sg_table().len(), 4 * PAGE_SIZE);
        assert_eq!(exp.pins(), 0, "a dynamic importer is not pinned on map");
        assert_eq!(dma_buf::invalidate_mappings(&buf, &g).unwrap(), 1);
        assert_eq!(told.load(Ordering::SeqCst), 1);
        dma_buf::unmap_attachment(&a, m, &g).unwrap();
        drop(g);
        dma_buf::detach(&buf, &a).unwrap();
        assert_eq!((exp.attaches(), exp.maps(), exp.unmaps()), (1, 1, 1));
        drop(buf);
        assert!(exp.released());
    }

    #[test]
    fn refused_attach_carries_the_errno() {
        let (buf, exp) = SimpleExporter::export("simple", 0, PAGE_SIZE).unwrap();
        exp.refuse_attach(Some(Errno::new(errno::EOPNOTSUPP.to_negative())));
        let e = dma_buf::attach(&buf, "x").unwrap_err();
        assert_eq!(e.errno(), errno::EOPNOTSUPP);
        exp.refuse_attach(None);
        assert!(dma_buf::attach(&buf, "x").is_ok());
        assert_eq!(exp.attaches(), 1);
    }
}
