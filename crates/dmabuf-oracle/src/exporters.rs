//! The project's exporters as the model back end sees them: the only module
//! of this crate that names `dmabuf-drivers` (the system heap and the VFIO
//! exporter) and `dmabuf-platform` (the simulated machine they run on).
//!
//! | kernel (in the guest) | here |
//! |---|---|
//! | `/dev/dma_heap/system`, `DMA_HEAP_IOCTL_ALLOC` | [`Exporters::heap_alloc`] → `SystemHeap::allocate` + `dma_buf_fd` |
//! | qemu's `edu` device (BAR0, 1 MiB) bound to vfio-pci | a platform device `edu` with BAR0 of 1 MiB, [`VfioPciDevice`] with the merged 7.1 protocol |
//! | `VFIO_DEVICE_FEATURE` | [`Vfio::feature`] → `VfioPciDevice::device_feature` |
//! | `PCI_COMMAND` memory bit written through the config region | [`Vfio::memory`] → `set_memory_decode` |
//! | `VFIO_DEVICE_RESET`, `close(device fd)` | [`Vfio::reset`], [`Vfio::close`] |
//! | vgem importing a dma-buf (`DRM_IOCTL_PRIME_FD_TO_HANDLE`) | [`Vfio::static_import`]: `dma_buf_attach` from a device `vgem` (a static importer) |

use dmabuf_core::dma_buf;
use dmabuf_core::errno::{AsErrno, Errno};
use dmabuf_core::revoke::Protocol;
use dmabuf_core::uapi::Process;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::system_heap::SystemHeap;
use dmabuf_drivers::vfio::{ResetKind, VfioPciDevice};
use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};
use std::sync::Arc;

/// The size of the test device's BAR0 (qemu's `edu`: 1 MiB).
pub const EDU_BAR0: u64 = 1 << 20;

/// The simulated machine with its exporters.
pub struct Exporters {
    platform: Platform,
    host: Host,
    heap: SystemHeap,
}

impl Exporters {
    /// A machine with RAM for the heap, a `vgem` device (a plain importer)
    /// and the `edu` device.
    pub fn new() -> Result<Self, String> {
        let platform = Platform::new(
            PlatformConfig::default()
                .ram_frames(4096)
                .device(DeviceConfig::new("vgem"))
                .device(DeviceConfig::new("edu").bar(0, EDU_BAR0)),
        )
        .map_err(|e| format!("platform: {e}"))?;
        let host = Host::new(platform.clone());
        let heap = SystemHeap::new(&host).map_err(|e| format!("system heap: {e}"))?;
        Ok(Self {
            platform,
            host,
            heap,
        })
    }

    /// `DMA_HEAP_IOCTL_ALLOC`: the new fd, or the errno.
    pub fn heap_alloc(
        &self,
        proc: &Process,
        len: u64,
        fd_flags: u32,
        heap_flags: u64,
    ) -> Result<i32, Errno> {
        let buf = self
            .heap
            .allocate(len, fd_flags, heap_flags)
            .map_err(|e| e.errno())?;
        proc.dma_buf_fd(buf, fd_flags).map_err(|e| e.errno())
    }

    /// The `edu` device bound to vfio-pci with the merged 7.1 revoke
    /// protocol (`Protocol::merged`).
    pub fn vfio(&self) -> Result<Vfio, String> {
        self.vfio_with(Protocol::merged())
    }

    /// The `edu` device bound to vfio-pci with another revoke protocol (the
    /// kmod part's tests show that the comparison tells protocols apart).
    pub fn vfio_with(&self, protocol: Protocol) -> Result<Vfio, String> {
        let pdev = self
            .platform
            .device("edu")
            .map_err(|e| format!("edu: {e}"))?;
        let dev = VfioPciDevice::bind(&self.host, pdev, Arc::new(protocol))
            .map_err(|e| format!("vfio bind: {e}"))?;
        Ok(Vfio { dev })
    }
}

/// The VFIO device as userspace sees it through its device fd.
pub struct Vfio {
    dev: VfioPciDevice,
}

impl Vfio {
    /// `ioctl(device, VFIO_DEVICE_FEATURE, payload)`: the returned fd (or 0
    /// for a probe), or the errno.
    pub fn feature(&self, proc: &Process, payload: &[u8]) -> Result<i32, Errno> {
        self.dev
            .device_feature(proc, payload)
            .map_err(|e| e.errno())
    }

    /// A write of `PCI_COMMAND` through the config region that clears or
    /// sets the memory-space bit.
    pub fn memory(&self, on: bool) -> Result<(), Errno> {
        self.dev
            .set_memory_decode(on)
            .map(|_| ())
            .map_err(|e| e.errno())
    }

    /// `VFIO_DEVICE_RESET`.
    pub fn reset(&self) -> Result<(), Errno> {
        self.dev
            .reset(ResetKind::DeviceReset)
            .map(|_| ())
            .map_err(|e| e.errno())
    }

    /// `close(device fd)`.
    pub fn close(&self) -> Result<(), Errno> {
        self.dev.close().map(|_| ()).map_err(|e| e.errno())
    }

    /// vgem importing the dma-buf behind `fd`: a static attachment from the
    /// `vgem` device (detached again at once when it succeeds).
    pub fn static_import(proc: &Process, fd: i32) -> Result<(), Errno> {
        let buf = proc.dma_buf_get(fd).map_err(|e| e.errno())?;
        let a = dma_buf::attach(&buf, "vgem").map_err(|e| e.errno())?;
        dma_buf::detach(&buf, &a).map_err(|e| e.errno())
    }
}
