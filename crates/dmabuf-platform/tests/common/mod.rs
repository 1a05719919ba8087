//! A small machine shared by the integration tests: `vfio0` (a 64 KiB BAR0)
//! and `gpu0` below switch `sw0`, `nic0` on a root port; `gpu0` and `nic0`
//! each attached to an IOMMU domain of their own.
#![allow(dead_code)]

use dmabuf_platform::*;

pub const BAR_SIZE: u64 = 0x10000;

pub struct Machine {
    pub p: Platform,
    pub vfio: PciDevice,
    pub gpu: PciDevice,
    pub nic: PciDevice,
    pub gpu_dom: IommuDomain,
    pub nic_dom: IommuDomain,
    pub gpu_port: DmaPort,
    pub nic_port: DmaPort,
}

pub fn machine_with(host_bridge_p2p: bool) -> Machine {
    let cfg = PlatformConfig::default()
        .ram_frames(64)
        .switch("sw0")
        .host_bridge_p2p(host_bridge_p2p)
        .device(
            DeviceConfig::new("vfio0")
                .behind_switch("sw0")
                .bar(0, BAR_SIZE),
        )
        .device(
            DeviceConfig::new("gpu0")
                .behind_switch("sw0")
                .bar(2, 0x100000),
        )
        .device(DeviceConfig::new("nic0"));
    let p = Platform::new(cfg).unwrap();
    let vfio = p.device("vfio0").unwrap();
    let gpu = p.device("gpu0").unwrap();
    let nic = p.device("nic0").unwrap();
    let gpu_dom = p.iommu().domain_alloc("gpu0");
    let nic_dom = p.iommu().domain_alloc("nic0");
    p.iommu().attach_device(&gpu_dom, gpu.id()).unwrap();
    p.iommu().attach_device(&nic_dom, nic.id()).unwrap();
    let gpu_port = p.dma_port(gpu.id(), Accessor::new("gpu0")).unwrap();
    let nic_port = p.dma_port(nic.id(), Accessor::new("nic0")).unwrap();
    Machine {
        p,
        vfio,
        gpu,
        nic,
        gpu_dom,
        nic_dom,
        gpu_port,
        nic_port,
    }
}

pub fn machine() -> Machine {
    machine_with(true)
}

impl Machine {
    pub fn bar(&self) -> u64 {
        self.vfio.bar(0).unwrap().addr
    }

    pub fn classes(&self) -> Vec<HazardClass> {
        self.p.take_hazards().iter().map(|h| h.class).collect()
    }
}

pub fn bus(a: u64) -> DmaRef {
    DmaAddr::Bus(a).into()
}

pub fn iova(a: u64) -> DmaRef {
    DmaAddr::Iova(a).into()
}
