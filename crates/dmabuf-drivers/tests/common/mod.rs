//! A VFIO device on a small platform, shared by the driver tests.

use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::Arc;
use dmabuf_core::uapi::Process;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::vfio::VfioPciDevice;
use dmabuf_drivers::vfio_uapi::DmaRange;
use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};

/// A platform whose `vfio0` (64 KiB BAR 0) is bound to VFIO under v6-final,
/// plus the named peers behind the same switch, and one process.
pub struct Fx {
    pub p: Platform,
    pub host: Host,
    pub vfio: VfioPciDevice,
    pub proc: Arc<Process>,
}

pub fn fixture_with(peers: &[&str]) -> Fx {
    let mut cfg = PlatformConfig::default().switch("sw0").device(
        DeviceConfig::new("vfio0")
            .behind_switch("sw0")
            .bar(0, 0x10000),
    );
    for name in peers {
        cfg = cfg.device(DeviceConfig::new(*name).behind_switch("sw0"));
    }
    let p = Platform::new(cfg).unwrap();
    let host = Host::new(p.clone());
    let vfio = VfioPciDevice::bind(
        &host,
        p.device("vfio0").unwrap(),
        Arc::new(Protocol::merged()),
    )
    .unwrap();
    Fx {
        p,
        host,
        vfio,
        proc: Process::new(1),
    }
}

impl Fx {
    /// Exports the first two pages of BAR 0 into `proc`; returns the fd.
    pub fn export(&self) -> i32 {
        self.vfio
            .export_dma_buf(
                &self.proc,
                0,
                &[DmaRange {
                    offset: 0,
                    length: 8192,
                }],
                2,
            )
            .unwrap()
    }

    /// A second fd for the same buffer (what an importer's process gets).
    #[allow(dead_code)]
    pub fn fd(&self, fd: i32) -> i32 {
        self.proc.send_fd(fd, &self.proc).unwrap()
    }
}
