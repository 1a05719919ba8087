//! The system heap (`drivers/dma-buf/heaps/system_heap.c`): dma-bufs of
//! RAM pages, allocated through `DMA_HEAP_IOCTL_ALLOC`.
//!
//! # Contract
//!
//! * Static exporter: no `pin`/`unpin`, never moves, never invalidates, so
//!   static importers are fine and `invalidate_mappings` is never called.
//! * `map_dma_buf` maps every page for the importer's device through the DMA
//!   API (an IOVA when the device has a DMA-API domain, the physical address
//!   otherwise); `unmap_dma_buf` undoes it.
//! * `release` frees the frames. An importer that still reaches them
//!   afterwards (it unmapped late or never held a reference) touches freed or
//!   reused RAM: the monitor calls that a use-after-free.
//!
//! | buffer state | entered by | frames |
//! |---|---|---|
//! | live | [`SystemHeap::allocate`] | allocated, owned by the heap |
//! | released | the last file reference dropped | freed (a later access is `UseAfterFree`) |
//!
//! # Lock rules
//!
//! The buffer's state lock is a leaf; `map`/`unmap` run under the
//! reservation lock (the core holds it), `release` without.

use crate::dma_api::{self, DmaApiError};
use crate::host::Host;
use dmabuf_core::dma_buf::{
    self, Attachment, DmaBuf, DmaBufError, DmaBufOps, DmaBufRef, DmaDirection, ExportInfo,
    MmapRequest, SgEntry, SgTable,
};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_core::trace_event;
use dmabuf_core::uapi::O_CLOEXEC;
use dmabuf_platform::{Accessor, ExporterId, IommuPerm, MemoryError, MonitorError, PAGE_SIZE};

/// `O_ACCMODE`: with `O_CLOEXEC`, the only fd flags the heap accepts.
const O_ACCMODE: u32 = 0o3;

/// The exporter name of system-heap buffers.
pub const EXP_NAME: &str = "system";

/// Errors of the system heap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeapError {
    /// Zero length.
    #[error("DMA_HEAP_IOCTL_ALLOC: zero length")]
    ZeroLength,
    /// `fd_flags` other than `O_ACCMODE | O_CLOEXEC`, or heap flags set.
    #[error(
        "DMA_HEAP_IOCTL_ALLOC: invalid flags fd_flags={fd_flags:#o} heap_flags={heap_flags:#x}"
    )]
    BadFlags {
        /// The fd flags given.
        fd_flags: u32,
        /// The heap flags given.
        heap_flags: u64,
    },
    /// Not enough free frames.
    #[error("DMA_HEAP_IOCTL_ALLOC: {0}")]
    NoMemory(MemoryError),
    /// The dma-buf core refused.
    #[error(transparent)]
    DmaBuf(#[from] DmaBufError),
    /// The monitor refused a registration.
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
}

impl AsErrno for HeapError {
    fn errno(&self) -> Errno {
        match self {
            HeapError::ZeroLength | HeapError::BadFlags { .. } => errno::EINVAL,
            HeapError::NoMemory(_) => errno::ENOMEM,
            HeapError::DmaBuf(e) => e.errno(),
            HeapError::Monitor(e) => e.errno(),
        }
    }
}

/// The heap (cheap to clone handle).
#[derive(Clone, Debug)]
pub struct SystemHeap {
    host: Host,
    exporter: ExporterId,
}

impl SystemHeap {
    /// The heap of `host`, registered with the monitor.
    pub fn new(host: &Host) -> Result<Self, HeapError> {
        let exporter = host
            .monitor()
            .register_exporter("system-heap", &Accessor::new("system-heap"))?;
        Ok(Self {
            host: host.clone(),
            exporter,
        })
    }

    /// The monitor's id of this exporter.
    pub fn exporter_id(&self) -> ExporterId {
        self.exporter
    }

    /// `DMA_HEAP_IOCTL_ALLOC`: `len` is rounded up to pages.
    pub fn allocate(&self, len: u64, fd_flags: u32, heap_flags: u64) -> Result<DmaBuf, HeapError> {
        if fd_flags & !(O_ACCMODE | O_CLOEXEC) != 0 || heap_flags != 0 {
            return Err(HeapError::BadFlags {
                fd_flags,
                heap_flags,
            });
        }
        if len == 0 {
            return Err(HeapError::ZeroLength);
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let frames = self
            .host
            .platform()
            .memory()
            .alloc_frames(pages as usize, EXP_NAME)
            .map_err(HeapError::NoMemory)?;
        let ops = Arc::new(HeapBuffer {
            host: self.host.clone(),
            frames: Mutex::new(Some(frames.clone())),
        });
        let buf = match dma_buf::export(ExportInfo {
            exp_name: EXP_NAME.into(),
            size: pages * PAGE_SIZE,
            flags: fd_flags,
            resv: None,
            ops,
        }) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.host.platform().memory().free_frames(&frames);
                return Err(e.into());
            }
        };
        self.host.register_buffer(buf.ino(), self.exporter);
        Ok(buf)
    }
}

/// One buffer: its frames until release.
struct HeapBuffer {
    host: Host,
    frames: Mutex<Option<Vec<u64>>>,
}

fn dev_of(host: &Host, attach: &Attachment) -> Result<dmabuf_platform::DeviceId, DmaBufError> {
    host.device_by_name(attach.dev())
        .map(|d| d.id())
        .ok_or_else(|| {
            DmaBufError::errno(
                errno::EINVAL,
                format!("system heap: no device {}", attach.dev()),
            )
        })
}

fn api_err(e: DmaApiError) -> DmaBufError {
    DmaBufError::errno(e.errno(), e.to_string())
}

impl DmaBufOps for HeapBuffer {
    fn map_dma_buf(
        &self,
        attach: &Attachment,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        let dev = dev_of(&self.host, attach)?;
        let frames = self
            .frames
            .lock()
            .clone()
            .ok_or_else(|| DmaBufError::errno(errno::ENODEV, "system heap: buffer released"))?;
        let mut entries = Vec::with_capacity(frames.len());
        for f in frames {
            match dma_api::map_phys(&self.host, dev, f, PAGE_SIZE, IommuPerm::RW) {
                Ok(a) => entries.push(SgEntry {
                    dma_addr: a,
                    len: PAGE_SIZE,
                }),
                Err(e) => {
                    dma_api::unmap_entries(&self.host, dev, &entries);
                    return Err(api_err(e));
                }
            }
        }
        Ok(SgTable { entries })
    }

    fn unmap_dma_buf(
        &self,
        attach: &Attachment,
        sgt: SgTable,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) {
        if let Ok(dev) = dev_of(&self.host, attach) {
            dma_api::unmap_entries(&self.host, dev, &sgt.entries);
        }
    }

    /// `system_heap_mmap`: inserts the buffer's pages into the VMA from its
    /// page offset on (the core has checked the range). The ABI layer
    /// builds no CPU page tables for dma-buf mappings, so what is left to
    /// model is the answer: a buffer already released has no pages.
    fn has_mmap(&self) -> bool {
        true
    }

    fn mmap(&self, _buf: &DmaBufRef, _req: MmapRequest) -> Result<(), DmaBufError> {
        if self.frames.lock().is_none() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                "system heap: buffer released",
            ));
        }
        Ok(())
    }

    fn release(&self, buf: &DmaBufRef) {
        if let Some(frames) = self.frames.lock().take() {
            let _ = self.host.platform().memory().free_frames(&frames);
            trace_event!(
                "system_heap_free",
                "ino={} frames={}",
                buf.ino(),
                frames.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};

    fn heap() -> (Platform, SystemHeap) {
        let p = Platform::new(PlatformConfig::default().device(DeviceConfig::new("d0"))).unwrap();
        let h = SystemHeap::new(&Host::new(p.clone())).unwrap();
        (p, h)
    }

    #[test]
    fn allocation_misuse_answers_with_the_kernel_errno() {
        let (p, h) = heap();
        assert_eq!(h.allocate(0, 0, 0).unwrap_err().errno(), errno::EINVAL);
        assert_eq!(
            h.allocate(4096, 0o100, 0).unwrap_err().errno(),
            errno::EINVAL
        );
        assert_eq!(h.allocate(4096, 0, 1).unwrap_err().errno(), errno::EINVAL);
        assert_eq!(
            h.allocate(1 << 40, 0, 0).unwrap_err().errno(),
            errno::ENOMEM
        );
        assert_eq!(
            p.memory().frames_allocated(),
            0,
            "failures leave nothing allocated"
        );
        let b = h.allocate(5000, O_CLOEXEC | 2, 0).unwrap();
        assert_eq!(b.size(), 8192, "rounded up to pages");
        assert_eq!(p.memory().frames_allocated(), 2);
    }

    /// `system_heap_mmap`: a shared mapping of any range the core accepts
    /// succeeds (what Linux 7.2's system heap answers); the core still
    /// refuses private mappings and ranges past the end.
    #[test]
    fn system_heap_mmap_maps_shared_ranges_within_the_buffer() {
        use dmabuf_core::uapi::{MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE, Process};
        let (_p, h) = heap();
        let proc = Process::new(7);
        let fd = proc
            .dma_buf_fd(h.allocate(3 * PAGE_SIZE, 2, 0).unwrap(), O_CLOEXEC)
            .unwrap();
        let rw = PROT_READ | PROT_WRITE;
        assert_eq!(proc.mmap_flags(fd, 0, 3, rw, MAP_SHARED), Ok(()));
        assert_eq!(proc.mmap_flags(fd, 1, 2, PROT_READ, MAP_SHARED), Ok(()));
        let einval = |r: Result<(), dmabuf_core::uapi::SysError>| r.map_err(|e| e.0);
        assert_eq!(
            einval(proc.mmap_flags(fd, 1, 3, rw, MAP_SHARED)),
            Err(errno::EINVAL)
        );
        assert_eq!(
            einval(proc.mmap_flags(fd, 0, 3, rw, MAP_PRIVATE)),
            Err(errno::EINVAL)
        );
    }

    #[test]
    fn static_importers_map_and_release_frees_the_frames() {
        let (p, h) = heap();
        let b = h.allocate(8192, 2, 0).unwrap();
        let a = dma_buf::attach(&b, "d0").unwrap();
        let m = dma_buf::map_attachment_unlocked(&a, DmaDirection::Bidirectional).unwrap();
        assert_eq!(m.sg_table().len(), 8192);
        let first = m.sg_table().entries[0].dma_addr;
        assert!(
            p.memory().is_ram(first),
            "passthrough device sees physical addresses"
        );
        dma_buf::unmap_attachment_unlocked(&a, m).unwrap();
        dma_buf::detach(&b, &a).unwrap();
        drop(b);
        assert_eq!(p.memory().frames_allocated(), 0);
        assert!(p.memory().frame_owner(first).unwrap().is_none());
    }
}
