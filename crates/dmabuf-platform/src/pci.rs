//! PCI devices: config-space state, BARs, resets, hot-plug and peer-to-peer
//! reachability (`struct pci_dev`, `PCI_COMMAND`, `pci_set_power_state`,
//! `pcie_flr`, `pci_reset_bus`, `pci_stop_and_remove_bus_device`,
//! `pci_p2pdma_distance`).
//!
//! # Device states
//!
//! | state | `PCI_COMMAND_MEMORY` | power | BAR access | DMA issued by the device |
//! |---|---|---|---|---|
//! | decoding | set | D0 | reaches the BAR bytes | allowed if bus master is set |
//! | decode off | clear | D0 | unsupported request: AER; reads return all ones, writes are dropped | allowed if bus master is set |
//! | D3hot | any | D3hot | AER | refused (`-EIO`) |
//! | in reset (FLR, hot reset) | cleared | D0 | AER | refused (`-EIO`) |
//! | unplugged | - | - | the range is unassigned: AER; after a hot-plug that reuses it, whatever the new device is | refused (`-ENODEV`) |
//!
//! Transitions and what they do:
//!
//! | call | kernel | effect |
//! |---|---|---|
//! | [`PciDevice::set_memory_decode`] | `pci_write_config_word(PCI_COMMAND)` | decode on/off |
//! | [`PciDevice::set_power_state`] | `pci_set_power_state` | D0 <-> D3hot (No_Soft_Reset: config survives) |
//! | [`PciDevice::flr`] | `pcie_flr` | in reset for `flr_delay`, device memory lost, command register cleared (decode and bus master off) |
//! | [`PciBus::hot_reset`] | `pci_reset_bus` | the same for every device on the bus |
//! | [`PciBus::unplug`] | surprise removal | the device is gone for good; its BAR ranges become unassigned |
//! | [`PciBus::hotplug`] | a new device arrives | a new [`DeviceId`]; BARs at the requested addresses or first fit (so it may get a just-freed range) |
//!
//! # Topology and peer-to-peer
//!
//! A device sits either directly on a root port or below a named switch.
//! [`PciBus::p2p_distance`] follows `pci_p2pdma_distance`: the same device
//! or the same switch is [`P2pType::BusAddr`]; otherwise the traffic goes
//! through the host bridge, which is [`P2pType::ThruHostBridge`] when the
//! configuration says the host bridge forwards peer traffic and
//! [`P2pType::NotSupported`] otherwise. DMA into a peer's BAR that is not
//! reachable is an unsupported request (AER).
//!
//! # Lock rules
//!
//! Device flags are one word of independent bits per device slot
//! (`AtomicBits`), read lock-free on every BAR access; each reader names the
//! bits it needs, so under the controlled scheduler a DMA engine's
//! reachability check (present, unplugged) is not ordered against another
//! device's decode being turned off. Multi-step transitions (reset, unplug) take the device's
//! config lock; plug/unplug and BAR assignment take the bus lock. Lock order:
//! bus lock -> device config lock. No lock is held while sleeping in a reset.

use crate::memory::{PAGE_SIZE, PhysMemory};
use crate::monitor::{PhysRange, ReuseKind};
use crate::trace;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::sync::atomic::{AtomicBits, AtomicU32, Ordering};
use dmabuf_core::sync::{Arc, Mutex, sched, thread};
use dmabuf_core::trace_event;
use std::time::Duration;

/// Index of a device slot. Never reused: a hot-plugged device gets a new id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dev{}", self.0)
    }
}

/// PCI power state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Asleep; config space answers, memory space does not.
    D3hot,
}

/// Peer-to-peer reachability (`enum pci_p2pdma_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pType {
    /// Same switch (or same device): bus addresses route directly.
    BusAddr,
    /// Through the host bridge, which forwards peer traffic.
    ThruHostBridge,
    /// Not reachable.
    NotSupported,
}

/// Errors of PCI operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// No device with that id or name.
    #[error("no PCI device {0}")]
    NoSuchDevice(String),
    /// The device was unplugged.
    #[error("device {name} ({id}) has been unplugged")]
    Unplugged {
        /// Its name.
        name: String,
        /// Its id.
        id: DeviceId,
    },
    /// A reset is already in progress.
    #[error("device {name} is in reset")]
    InReset {
        /// Its name.
        name: String,
    },
    /// BAR index outside 0..=5 or listed twice.
    #[error("bad BAR index {index} for {device}")]
    BarIndex {
        /// Device name.
        device: String,
        /// The index given.
        index: u8,
    },
    /// BAR size not a power of two of at least a page.
    #[error("BAR{index} of {device}: size {size:#x} is not a power of two >= {PAGE_SIZE:#x}")]
    BarSize {
        /// Device name.
        device: String,
        /// BAR index.
        index: u8,
        /// The size given.
        size: u64,
    },
    /// BAR address not naturally aligned.
    #[error("BAR{index} of {device}: address {addr:#x} not aligned to its size {size:#x}")]
    BarUnaligned {
        /// Device name.
        device: String,
        /// BAR index.
        index: u8,
        /// Address given.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// BAR outside the MMIO window.
    #[error("BAR{index} of {device} at {addr:#x}+{size:#x} is outside the MMIO window")]
    BarOutsideWindow {
        /// Device name.
        device: String,
        /// BAR index.
        index: u8,
        /// Address.
        addr: u64,
        /// Size.
        size: u64,
    },
    /// BAR overlaps a BAR of a present device.
    #[error("BAR{index} of {device} at {addr:#x}+{size:#x} overlaps {other}")]
    BarOverlap {
        /// Device name.
        device: String,
        /// BAR index.
        index: u8,
        /// Address.
        addr: u64,
        /// Size.
        size: u64,
        /// The device already there.
        other: String,
    },
    /// No free MMIO space for a BAR.
    #[error("no room in the MMIO window for BAR{index} ({size:#x}) of {device}")]
    NoMmioSpace {
        /// Device name.
        device: String,
        /// BAR index.
        index: u8,
        /// Size.
        size: u64,
    },
    /// All device slots are used.
    #[error("too many devices (max {max})")]
    TooManyDevices {
        /// The limit.
        max: usize,
    },
    /// A device name is already used by a present device.
    #[error("a present device is already named {0}")]
    DuplicateName(String),
    /// Unknown switch name.
    #[error("no switch named {0}")]
    NoSuchSwitch(String),
}

impl AsErrno for PciError {
    fn errno(&self) -> Errno {
        match self {
            PciError::NoSuchDevice(_) => errno::ENODEV,
            PciError::Unplugged { .. } => errno::ENODEV,
            PciError::InReset { .. } => errno::EBUSY,
            PciError::TooManyDevices { .. } | PciError::NoMmioSpace { .. } => errno::ENOMEM,
            PciError::BarOverlap { .. } | PciError::DuplicateName(_) => errno::EBUSY,
            _ => errno::EINVAL,
        }
    }
}

/// A BAR request in a device configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarConfig {
    /// BAR index, 0..=5.
    pub index: u8,
    /// Size in bytes: a power of two, at least a page.
    pub size: u64,
    /// Bus address, or `None` for first fit in the MMIO window.
    pub addr: Option<u64>,
}

/// A device to plug in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Name (unique among present devices), e.g. `vfio0`, `gpu0`, `mlx5_0`.
    pub name: String,
    /// Switch it sits below, or `None` for a root port of its own.
    pub switch: Option<String>,
    /// Its BARs.
    pub bars: Vec<BarConfig>,
}

impl DeviceConfig {
    /// A device with no BARs on a root port.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            switch: None,
            bars: Vec::new(),
        }
    }

    /// Adds a first-fit BAR.
    pub fn bar(mut self, index: u8, size: u64) -> Self {
        self.bars.push(BarConfig {
            index,
            size,
            addr: None,
        });
        self
    }

    /// Adds a BAR at a fixed bus address.
    pub fn bar_at(mut self, index: u8, size: u64, addr: u64) -> Self {
        self.bars.push(BarConfig {
            index,
            size,
            addr: Some(addr),
        });
        self
    }

    /// Places the device below a switch.
    pub fn behind_switch(mut self, switch: impl Into<String>) -> Self {
        self.switch = Some(switch.into());
        self
    }
}

/// An assigned BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Index 0..=5.
    pub index: u8,
    /// Bus (= physical) address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Bar {
    /// Whether `[addr, addr + len)` lies inside the BAR.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|e| e <= self.addr + self.size)
    }
}

/// A snapshot of a device's config-space state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// `PCI_COMMAND_MEMORY`.
    pub memory_decode: bool,
    /// `PCI_COMMAND_MASTER`.
    pub bus_master: bool,
    /// Power state.
    pub power: PowerState,
    /// A reset is in progress.
    pub in_reset: bool,
    /// Unplugged (final).
    pub unplugged: bool,
}

pub(crate) const F_DECODE: u32 = 1;
pub(crate) const F_MASTER: u32 = 2;
pub(crate) const F_D3HOT: u32 = 4;
pub(crate) const F_RESET: u32 = 8;
pub(crate) const F_UNPLUGGED: u32 = 16;
pub(crate) const F_PRESENT: u32 = 32;
/// Every flag.
pub(crate) const F_ALL: u32 = F_DECODE | F_MASTER | F_D3HOT | F_RESET | F_UNPLUGGED | F_PRESENT;

/// Hot-path state of a device slot, read without locks.
pub(crate) struct DeviceHot {
    pub(crate) flags: AtomicBits,
    /// 0 for a root port, switch index + 1 otherwise.
    pub(crate) switch: AtomicU32,
}

struct DeviceRecord {
    id: DeviceId,
    name: String,
    bdf: String,
    switch: Option<u32>,
    bars: Vec<Bar>,
    /// Serialises multi-step transitions of this device.
    cfg: Mutex<()>,
}

pub(crate) struct PciInner {
    mem: Arc<PhysMemory>,
    hot: Box<[DeviceHot]>,
    records: Mutex<Vec<Arc<DeviceRecord>>>,
    /// Device names by id, for the hazard monitor's reports: bookkeeping
    /// outside the model (a plain lock, never held across a scheduling
    /// point), so naming the device in a hazard record does not take the
    /// bus lock and race with every plug and unplug.
    names: parking_lot::RwLock<Vec<String>>,
    switches: Vec<String>,
    host_bridge_p2p: bool,
    flr_delay: Duration,
}

/// The PCI bus: every device ever plugged, the topology, plug and reset.
#[derive(Clone)]
pub struct PciBus {
    inner: Arc<PciInner>,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("devices", &self.inner.records.lock().len())
            .field("switches", &self.inner.switches)
            .finish()
    }
}

/// A handle to one device (cheap to clone). Operations on an unplugged
/// device return [`PciError::Unplugged`].
#[derive(Clone)]
pub struct PciDevice {
    bus: Arc<PciInner>,
    rec: Arc<DeviceRecord>,
}

impl std::fmt::Debug for PciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PciDevice({} {} {})",
            self.rec.id, self.rec.name, self.rec.bdf
        )
    }
}

impl PciInner {
    #[inline]
    pub(crate) fn hot(&self, id: u32) -> Option<&DeviceHot> {
        self.hot.get(id as usize)
    }

    #[inline]
    /// The flags of `mask` that device slot `id` has set.
    pub(crate) fn flags(&self, id: u32, mask: u32) -> u32 {
        self.hot(id)
            .map_or(0, |h| h.flags.load(mask, Ordering::Acquire))
    }

    pub(crate) fn p2p(&self, provider: u32, client: u32) -> P2pType {
        let (Some(p), Some(c)) = (self.hot(provider), self.hot(client)) else {
            return P2pType::NotSupported;
        };
        let usable =
            |h: &DeviceHot| h.flags.load(F_PRESENT | F_UNPLUGGED, Ordering::Acquire) == F_PRESENT;
        if !usable(p) || !usable(c) {
            return P2pType::NotSupported;
        }
        if provider == client {
            return P2pType::BusAddr;
        }
        let ps = p.switch.load(Ordering::Relaxed);
        let cs = c.switch.load(Ordering::Relaxed);
        if ps != 0 && ps == cs {
            P2pType::BusAddr
        } else if self.host_bridge_p2p {
            P2pType::ThruHostBridge
        } else {
            P2pType::NotSupported
        }
    }

    pub(crate) fn name_of(&self, id: u32) -> String {
        self.names
            .read()
            .get(id as usize)
            .map_or_else(|| format!("dev{id}"), Clone::clone)
    }
}

fn validate_bar(
    dev: &str,
    b: &BarConfig,
    mem: &PhysMemory,
    seen: &mut [bool; 6],
) -> Result<(), PciError> {
    if b.index > 5 || seen[b.index as usize] {
        return Err(PciError::BarIndex {
            device: dev.into(),
            index: b.index,
        });
    }
    seen[b.index as usize] = true;
    if !b.size.is_power_of_two() || b.size < PAGE_SIZE {
        return Err(PciError::BarSize {
            device: dev.into(),
            index: b.index,
            size: b.size,
        });
    }
    if let Some(addr) = b.addr {
        if !addr.is_multiple_of(b.size) {
            return Err(PciError::BarUnaligned {
                device: dev.into(),
                index: b.index,
                addr,
                size: b.size,
            });
        }
        let end = addr.checked_add(b.size);
        let wend = mem.mmio_base() + mem.mmio_size();
        if addr < mem.mmio_base() || end.is_none_or(|e| e > wend) {
            return Err(PciError::BarOutsideWindow {
                device: dev.into(),
                index: b.index,
                addr,
                size: b.size,
            });
        }
    }
    Ok(())
}

impl PciBus {
    pub(crate) fn new(
        mem: Arc<PhysMemory>,
        max_devices: usize,
        switches: Vec<String>,
        host_bridge_p2p: bool,
        flr_delay: Duration,
    ) -> Self {
        let hot = (0..max_devices)
            .map(|_| DeviceHot {
                flags: AtomicBits::new(0),
                switch: AtomicU32::new(0),
            })
            .collect();
        Self {
            inner: Arc::new(PciInner {
                mem,
                hot,
                records: Mutex::new(Vec::new()),
                names: parking_lot::RwLock::new(Vec::new()),
                switches,
                host_bridge_p2p,
                flr_delay,
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<PciInner> {
        &self.inner
    }

    /// Plugs in a new device (`pci_hotplug`): validates and assigns its BARs
    /// (first fit for those without an address), enables decode and bus
    /// mastering, and returns its handle. On error nothing changes.
    pub fn hotplug(&self, cfg: DeviceConfig) -> Result<PciDevice, PciError> {
        let inner = &self.inner;
        let switch = match &cfg.switch {
            None => None,
            Some(s) => Some(
                inner
                    .switches
                    .iter()
                    .position(|x| x == s)
                    .ok_or_else(|| PciError::NoSuchSwitch(s.clone()))? as u32,
            ),
        };
        let mut recs = inner.records.lock();
        if recs.len() >= inner.hot.len() {
            return Err(PciError::TooManyDevices {
                max: inner.hot.len(),
            });
        }
        let present = |r: &DeviceRecord| inner.flags(r.id.0, F_UNPLUGGED) == 0;
        if recs.iter().any(|r| r.name == cfg.name && present(r)) {
            return Err(PciError::DuplicateName(cfg.name));
        }
        let mut seen = [false; 6];
        for b in &cfg.bars {
            validate_bar(&cfg.name, b, &inner.mem, &mut seen)?;
        }
        // Every BAR of present devices, plus those placed so far for this one.
        let mut taken: Vec<(u64, u64, String)> = recs
            .iter()
            .filter(|r| present(r))
            .flat_map(|r| r.bars.iter().map(|b| (b.addr, b.size, r.name.clone())))
            .collect();
        let mut bars = Vec::new();
        let overlap = |taken: &[(u64, u64, String)], a: u64, s: u64| {
            taken
                .iter()
                .find(|(ta, ts, _)| a < ta + ts && *ta < a + s)
                .map(|t| t.2.clone())
        };
        // Fixed addresses first, so first fit does not steal them.
        let (fixed, fit): (Vec<_>, Vec<_>) = cfg.bars.iter().partition(|b| b.addr.is_some());
        for b in fixed.into_iter().chain(fit) {
            let addr = match b.addr {
                Some(a) => {
                    if let Some(other) = overlap(&taken, a, b.size) {
                        return Err(PciError::BarOverlap {
                            device: cfg.name.clone(),
                            index: b.index,
                            addr: a,
                            size: b.size,
                            other,
                        });
                    }
                    a
                }
                None => {
                    let base = inner.mem.mmio_base();
                    let end = base + inner.mem.mmio_size();
                    let no_room = || PciError::NoMmioSpace {
                        device: cfg.name.clone(),
                        index: b.index,
                        size: b.size,
                    };
                    let mut a = base
                        .div_ceil(b.size)
                        .checked_mul(b.size)
                        .ok_or_else(no_room)?;
                    loop {
                        if a.checked_add(b.size).is_none_or(|e| e > end) {
                            return Err(no_room());
                        }
                        if overlap(&taken, a, b.size).is_none() {
                            break a;
                        }
                        a += b.size;
                    }
                }
            };
            taken.push((addr, b.size, cfg.name.clone()));
            bars.push(Bar {
                index: b.index,
                addr,
                size: b.size,
            });
        }
        bars.sort_by_key(|b| b.index);
        let id = DeviceId(recs.len() as u32);
        let bus_no = switch.map_or(0, |s| s + 1);
        let rec = Arc::new(DeviceRecord {
            id,
            bdf: format!("0000:{:02x}:{:02x}.0", bus_no, id.0 & 0x1f),
            name: cfg.name,
            switch,
            bars,
            cfg: Mutex::new(()),
        });
        for b in &rec.bars {
            inner.mem.mmio_assign(b.addr, b.size, Some(id.0));
        }
        let hot = &inner.hot[id.0 as usize];
        hot.switch.store(bus_no, Ordering::Relaxed);
        // A slot is never reused: its flags are all clear until now.
        hot.flags
            .fetch_or(F_PRESENT | F_DECODE | F_MASTER, 0, Ordering::Release);
        recs.push(rec.clone());
        inner.names.write().push(rec.name.clone());
        drop(recs);
        let dev = PciDevice {
            bus: self.inner.clone(),
            rec: rec.clone(),
        };
        trace_event!(
            trace::PCI_HOTPLUG,
            "dev={} bdf={} id={} bars=[{}]",
            rec.name,
            rec.bdf,
            id.0,
            rec.bars
                .iter()
                .map(|b| format!("{}:{:#x}+{:#x}", b.index, b.addr, b.size))
                .collect::<Vec<_>>()
                .join(",")
        );
        dev.note_reuse(ReuseKind::Reassign);
        Ok(dev)
    }

    /// The device with this id (present or unplugged).
    pub fn device(&self, id: DeviceId) -> Result<PciDevice, PciError> {
        let rec = self
            .inner
            .records
            .lock()
            .get(id.0 as usize)
            .cloned()
            .ok_or_else(|| PciError::NoSuchDevice(id.to_string()))?;
        Ok(PciDevice {
            bus: self.inner.clone(),
            rec,
        })
    }

    /// The present device with this name.
    pub fn by_name(&self, name: &str) -> Result<PciDevice, PciError> {
        let recs = self.inner.records.lock();
        let rec = recs
            .iter()
            .rev()
            .find(|r| r.name == name && self.inner.flags(r.id.0, F_UNPLUGGED) == 0)
            .cloned()
            .ok_or_else(|| PciError::NoSuchDevice(name.into()))?;
        drop(recs);
        Ok(PciDevice {
            bus: self.inner.clone(),
            rec,
        })
    }

    /// Every device ever plugged, in id order.
    pub fn devices(&self) -> Vec<PciDevice> {
        self.inner
            .records
            .lock()
            .iter()
            .map(|r| PciDevice {
                bus: self.inner.clone(),
                rec: r.clone(),
            })
            .collect()
    }

    /// `pci_p2pdma_distance(provider, client)`: how `client` reaches
    /// `provider`'s BARs. Unplugged or unknown devices are `NotSupported`.
    pub fn p2p_distance(&self, provider: DeviceId, client: DeviceId) -> P2pType {
        self.inner.p2p(provider.0, client.0)
    }

    /// Removes the device for good (surprise hot-unplug): it stops decoding
    /// and mastering, its BAR ranges become unassigned (a new generation, so
    /// mappings of them see the change), and its slot is never reused.
    pub fn unplug(&self, id: DeviceId) -> Result<(), PciError> {
        let dev = self.device(id)?;
        let recs = self.inner.records.lock();
        let _cfg = dev.rec.cfg.lock();
        dev.check_present()?;
        let hot = &self.inner.hot[id.0 as usize];
        {
            // The device leaves the bus at one instant: its flags and its
            // BAR ranges change in one event of the model.
            let _one = sched::one_event();
            hot.flags.fetch_or(F_UNPLUGGED, 0, Ordering::AcqRel);
            hot.flags
                .fetch_clear(F_DECODE | F_MASTER, 0, Ordering::AcqRel);
            for b in &dev.rec.bars {
                self.inner.mem.mmio_assign(b.addr, b.size, None);
            }
        }
        drop(recs);
        trace_event!(
            trace::PCI_UNPLUG,
            "dev={} bdf={}",
            dev.rec.name,
            dev.rec.bdf
        );
        dev.note_reuse(ReuseKind::Unplug);
        Ok(())
    }

    /// `pci_reset_bus`: a secondary bus reset of the bus `id` sits on: every
    /// present device below the same switch (or `id` alone on a root port)
    /// is in reset for the FLR delay, loses its device memory and comes back
    /// with its command register cleared. Returns the devices reset.
    pub fn hot_reset(&self, id: DeviceId) -> Result<Vec<DeviceId>, PciError> {
        let dev = self.device(id)?;
        dev.check_present()?;
        let group: Vec<PciDevice> = match dev.rec.switch {
            None => vec![dev.clone()],
            Some(s) => self
                .devices()
                .into_iter()
                .filter(|d| d.rec.switch == Some(s) && d.check_present().is_ok())
                .collect(),
        };
        trace_event!(
            trace::PCI_HOT_RESET,
            "bus={} devs=[{}]",
            dev.rec.switch.map_or(0, |s| s + 1),
            group
                .iter()
                .map(|d| d.rec.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut begun = Vec::new();
        for d in &group {
            match d.begin_reset() {
                Ok(()) => begun.push(d.clone()),
                Err(e) => {
                    for b in &begun {
                        let _ = b.end_reset();
                    }
                    return Err(e);
                }
            }
        }
        if !self.inner.flr_delay.is_zero() {
            thread::sleep(self.inner.flr_delay);
        }
        // End every reset even if one device vanished meanwhile.
        let ends: Vec<_> = group.iter().map(PciDevice::end_reset).collect();
        ends.into_iter().collect::<Result<(), _>>()?;
        Ok(group.iter().map(|d| d.rec.id).collect())
    }
}

impl PciDevice {
    /// The device id.
    pub fn id(&self) -> DeviceId {
        self.rec.id
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.rec.name
    }

    /// `0000:bb:dd.f`.
    pub fn bdf(&self) -> &str {
        &self.rec.bdf
    }

    /// The switch the device sits below, if any.
    pub fn switch(&self) -> Option<&str> {
        self.rec
            .switch
            .map(|s| self.bus.switches[s as usize].as_str())
    }

    /// BAR `index`, if the device has it.
    pub fn bar(&self, index: u8) -> Option<Bar> {
        self.rec.bars.iter().find(|b| b.index == index).copied()
    }

    /// Every BAR.
    pub fn bars(&self) -> &[Bar] {
        &self.rec.bars
    }

    fn hot(&self) -> &DeviceHot {
        &self.bus.hot[self.rec.id.0 as usize]
    }

    fn check_present(&self) -> Result<(), PciError> {
        if self.hot().flags.load(F_UNPLUGGED, Ordering::Acquire) != 0 {
            return Err(PciError::Unplugged {
                name: self.rec.name.clone(),
                id: self.rec.id,
            });
        }
        Ok(())
    }

    /// The config-space state now.
    pub fn state(&self) -> DeviceState {
        let f = self.hot().flags.load(F_ALL, Ordering::Acquire);
        DeviceState {
            memory_decode: f & F_DECODE != 0,
            bus_master: f & F_MASTER != 0,
            power: if f & F_D3HOT != 0 {
                PowerState::D3hot
            } else {
                PowerState::D0
            },
            in_reset: f & F_RESET != 0,
            unplugged: f & F_UNPLUGGED != 0,
        }
    }

    /// Its BARs as physical ranges.
    fn bar_ranges(&self) -> Vec<PhysRange> {
        self.rec
            .bars
            .iter()
            .map(|b| PhysRange::new(b.addr, b.size))
            .collect()
    }

    /// Records a reuse of every BAR (see [`crate::monitor::ReuseEvent`]).
    fn note_reuse(&self, kind: ReuseKind) {
        self.bus
            .mem
            .note_reuse(kind, &self.rec.name, &self.bar_ranges());
    }

    /// Whether the device is still plugged in.
    pub fn is_present(&self) -> bool {
        self.check_present().is_ok()
    }

    /// Whether a BAR access would reach the bytes now (decode on, D0, not in
    /// reset, present).
    pub fn bar_accessible(&self) -> bool {
        let f = self.hot().flags.load(
            F_DECODE | F_D3HOT | F_RESET | F_UNPLUGGED,
            Ordering::Acquire,
        );
        f == F_DECODE
    }

    fn locked_change(&self) -> Result<dmabuf_core::sync::MutexGuard<'_, ()>, PciError> {
        let g = self.rec.cfg.lock();
        self.check_present()?;
        if self.hot().flags.load(F_RESET, Ordering::Acquire) != 0 {
            return Err(PciError::InReset {
                name: self.rec.name.clone(),
            });
        }
        Ok(g)
    }

    /// Sets or clears `PCI_COMMAND_MEMORY`.
    pub fn set_memory_decode(&self, on: bool) -> Result<(), PciError> {
        let _g = self.locked_change()?;
        if on {
            self.hot().flags.fetch_or(F_DECODE, 0, Ordering::AcqRel);
            trace_event!(trace::PCI_DECODE_ON, "dev={}", self.rec.name);
        } else {
            let was = self
                .hot()
                .flags
                .fetch_clear(F_DECODE, F_DECODE, Ordering::AcqRel);
            trace_event!(trace::PCI_DECODE_OFF, "dev={}", self.rec.name);
            if was != 0 {
                self.note_reuse(ReuseKind::DecodeOff);
            }
        }
        Ok(())
    }

    /// Sets or clears `PCI_COMMAND_MASTER` (the device may issue DMA only
    /// while set).
    pub fn set_bus_master(&self, on: bool) -> Result<(), PciError> {
        let _g = self.locked_change()?;
        if on {
            self.hot().flags.fetch_or(F_MASTER, 0, Ordering::AcqRel);
        } else {
            self.hot().flags.fetch_clear(F_MASTER, 0, Ordering::AcqRel);
        }
        trace_event!(trace::PCI_BUS_MASTER, "dev={} on={}", self.rec.name, on);
        Ok(())
    }

    /// `pci_set_power_state`: D0 or D3hot. The command register survives
    /// (No_Soft_Reset), so decode comes back with D0.
    pub fn set_power_state(&self, p: PowerState) -> Result<(), PciError> {
        let _g = self.locked_change()?;
        match p {
            PowerState::D3hot => {
                let was = self
                    .hot()
                    .flags
                    .fetch_or(F_D3HOT, F_D3HOT, Ordering::AcqRel);
                trace_event!(trace::PCI_D3HOT, "dev={}", self.rec.name);
                if was == 0 {
                    self.note_reuse(ReuseKind::PowerDown);
                }
            }
            PowerState::D0 => {
                self.hot().flags.fetch_clear(F_D3HOT, 0, Ordering::AcqRel);
                trace_event!(trace::PCI_D0, "dev={}", self.rec.name);
            }
        }
        Ok(())
    }

    /// First half of a reset: the device stops answering (BAR accesses are
    /// AER) and stops mastering. [`flr`](Self::flr) and
    /// [`PciBus::hot_reset`] call both halves; tests call them apart to hold
    /// the reset window open.
    pub fn begin_reset(&self) -> Result<(), PciError> {
        let _g = self.locked_change()?;
        // Entering reset is one change of the device's state (one event).
        let one = sched::one_event();
        self.hot().flags.fetch_or(F_RESET, 0, Ordering::AcqRel);
        self.hot()
            .flags
            .fetch_clear(F_DECODE | F_MASTER, 0, Ordering::AcqRel);
        drop(one);
        trace_event!(trace::PCI_FLR, "dev={} phase=begin", self.rec.name);
        self.note_reuse(ReuseKind::Reset);
        Ok(())
    }

    /// Second half of a reset: device memory is lost (BAR bytes read as
    /// zeroes), the device is in D0 with its command register cleared.
    pub fn end_reset(&self) -> Result<(), PciError> {
        let _g = self.rec.cfg.lock();
        self.check_present()?;
        for b in &self.rec.bars {
            self.bus.mem.mmio_clear(b.addr, b.size);
        }
        self.hot()
            .flags
            .fetch_clear(F_RESET | F_D3HOT | F_DECODE | F_MASTER, 0, Ordering::AcqRel);
        trace_event!(trace::PCI_FLR, "dev={} phase=end", self.rec.name);
        Ok(())
    }

    /// `pcie_flr`: a function-level reset, synchronous (sleeps the
    /// configured FLR delay inside the reset window).
    pub fn flr(&self) -> Result<(), PciError> {
        self.begin_reset()?;
        if !self.bus.flr_delay.is_zero() {
            thread::sleep(self.bus.flr_delay);
        }
        self.end_reset()
    }

    /// `pci_save_state`: the command register and power state.
    pub fn save_state(&self) -> DeviceState {
        self.state()
    }

    /// `pci_restore_state`: writes back decode, bus master and power state.
    pub fn restore_state(&self, s: &DeviceState) -> Result<(), PciError> {
        self.set_power_state(s.power)?;
        self.set_bus_master(s.bus_master)?;
        self.set_memory_decode(s.memory_decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMIO: u64 = 0xe000_0000;

    fn bus(p2p: bool) -> (Arc<PhysMemory>, PciBus) {
        let mem = Arc::new(PhysMemory::new(0x1_0000_0000, 4, MMIO, 0x10_0000).unwrap());
        let bus = PciBus::new(
            mem.clone(),
            8,
            vec!["sw0".into(), "sw1".into()],
            p2p,
            Duration::ZERO,
        );
        (mem, bus)
    }

    #[test]
    fn bars_are_validated_with_typed_errors() {
        let (_, bus) = bus(false);
        let bad = [
            (DeviceConfig::new("a").bar(6, 0x1000), "index"),
            (
                DeviceConfig::new("a").bar(0, 0x1000).bar(0, 0x1000),
                "index",
            ),
            (DeviceConfig::new("a").bar(0, 0x3000), "size"),
            (DeviceConfig::new("a").bar(0, 0x800), "size"),
            (
                DeviceConfig::new("a").bar_at(0, 0x2000, MMIO + 0x1000),
                "unaligned",
            ),
            (DeviceConfig::new("a").bar_at(0, 0x1000, 0x1000), "window"),
            (DeviceConfig::new("a").bar_at(0, 0x20_0000, MMIO), "window"),
            (DeviceConfig::new("a").bar(0, 1 << 63), "room"),
            (DeviceConfig::new("a").behind_switch("nope"), "switch"),
        ];
        for (cfg, what) in bad {
            let e = bus.hotplug(cfg).unwrap_err();
            let ok = match what {
                "index" => matches!(e, PciError::BarIndex { .. }),
                "size" => matches!(e, PciError::BarSize { .. }),
                "unaligned" => matches!(e, PciError::BarUnaligned { .. }),
                "window" => matches!(e, PciError::BarOutsideWindow { .. }),
                "room" => matches!(e, PciError::NoMmioSpace { .. }),
                _ => matches!(e, PciError::NoSuchSwitch(_)),
            };
            assert!(ok, "{what}: {e}");
        }
        assert!(bus.devices().is_empty(), "failed plugs leave no device");
    }

    #[test]
    fn overlapping_bar_is_refused_until_the_owner_is_unplugged() {
        let (_, bus) = bus(false);
        let a = bus
            .hotplug(DeviceConfig::new("a").bar_at(0, 0x4000, MMIO))
            .unwrap();
        let e = bus
            .hotplug(DeviceConfig::new("b").bar_at(2, 0x1000, MMIO + 0x1000))
            .unwrap_err();
        assert!(matches!(e, PciError::BarOverlap { ref other, .. } if other == "a"));
        bus.unplug(a.id()).unwrap();
        let b = bus
            .hotplug(DeviceConfig::new("b").bar_at(2, 0x1000, MMIO + 0x1000))
            .unwrap();
        assert_ne!(a.id(), b.id(), "slots are never reused");
    }

    #[test]
    fn first_fit_hotplug_reuses_the_unplugged_range() {
        let (_, bus) = bus(false);
        let a = bus.hotplug(DeviceConfig::new("a").bar(0, 0x4000)).unwrap();
        let old = a.bar(0).unwrap().addr;
        bus.unplug(a.id()).unwrap();
        let b = bus.hotplug(DeviceConfig::new("b").bar(0, 0x4000)).unwrap();
        assert_eq!(b.bar(0).unwrap().addr, old);
    }

    #[test]
    fn p2p_distance_follows_the_topology() {
        for hb in [false, true] {
            let (_, bus) = bus(hb);
            let a = bus
                .hotplug(DeviceConfig::new("a").behind_switch("sw0"))
                .unwrap();
            let b = bus
                .hotplug(DeviceConfig::new("b").behind_switch("sw0"))
                .unwrap();
            let c = bus
                .hotplug(DeviceConfig::new("c").behind_switch("sw1"))
                .unwrap();
            let d = bus.hotplug(DeviceConfig::new("d")).unwrap();
            assert_eq!(bus.p2p_distance(a.id(), b.id()), P2pType::BusAddr);
            assert_eq!(bus.p2p_distance(d.id(), d.id()), P2pType::BusAddr);
            let far = if hb {
                P2pType::ThruHostBridge
            } else {
                P2pType::NotSupported
            };
            assert_eq!(bus.p2p_distance(a.id(), c.id()), far);
            assert_eq!(bus.p2p_distance(d.id(), a.id()), far);
            bus.unplug(b.id()).unwrap();
            assert_eq!(bus.p2p_distance(a.id(), b.id()), P2pType::NotSupported);
            assert_eq!(
                bus.p2p_distance(a.id(), DeviceId(99)),
                P2pType::NotSupported
            );
        }
    }

    #[test]
    fn flr_loses_device_memory_and_clears_the_command_register() {
        let (mem, bus) = bus(false);
        let a = bus.hotplug(DeviceConfig::new("a").bar(0, 0x1000)).unwrap();
        let bar = a.bar(0).unwrap().addr;
        mem.poke(bar, b"data").unwrap();
        assert!(a.bar_accessible());
        a.begin_reset().unwrap();
        assert!(a.state().in_reset && !a.bar_accessible());
        assert!(matches!(
            a.set_memory_decode(true),
            Err(PciError::InReset { .. })
        ));
        a.end_reset().unwrap();
        let s = a.state();
        assert!(!s.in_reset && !s.memory_decode && !s.bus_master);
        let mut b = [1u8; 4];
        mem.peek(bar, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        a.set_memory_decode(true).unwrap();
        assert!(a.bar_accessible());
    }

    #[test]
    fn hot_reset_resets_every_device_below_the_switch_only() {
        let (_, bus) = bus(false);
        let a = bus
            .hotplug(DeviceConfig::new("a").behind_switch("sw0"))
            .unwrap();
        let b = bus
            .hotplug(DeviceConfig::new("b").behind_switch("sw0"))
            .unwrap();
        let c = bus.hotplug(DeviceConfig::new("c")).unwrap();
        let mut reset = bus.hot_reset(b.id()).unwrap();
        reset.sort();
        assert_eq!(reset, vec![a.id(), b.id()]);
        assert!(!a.state().memory_decode && !b.state().memory_decode);
        assert!(c.state().memory_decode);
    }

    #[test]
    fn d3hot_blocks_bar_access_and_d0_restores_it() {
        let (_, bus) = bus(false);
        let a = bus.hotplug(DeviceConfig::new("a").bar(0, 0x1000)).unwrap();
        let saved = a.save_state();
        a.set_power_state(PowerState::D3hot).unwrap();
        assert!(!a.bar_accessible());
        a.restore_state(&saved).unwrap();
        assert!(a.bar_accessible());
    }

    #[test]
    fn operations_on_an_unplugged_device_fail_cleanly() {
        let (_, bus) = bus(false);
        let a = bus.hotplug(DeviceConfig::new("a").bar(0, 0x1000)).unwrap();
        bus.unplug(a.id()).unwrap();
        assert!(matches!(a.flr(), Err(PciError::Unplugged { .. })));
        assert!(matches!(
            a.set_memory_decode(true),
            Err(PciError::Unplugged { .. })
        ));
        assert!(matches!(
            bus.unplug(a.id()),
            Err(PciError::Unplugged { .. })
        ));
        assert!(matches!(bus.by_name("a"), Err(PciError::NoSuchDevice(_))));
        assert!(a.state().unplugged);
    }

    #[test]
    fn too_many_devices_and_duplicate_names_are_refused() {
        let (_, bus) = bus(false);
        bus.hotplug(DeviceConfig::new("x")).unwrap();
        assert!(matches!(
            bus.hotplug(DeviceConfig::new("x")),
            Err(PciError::DuplicateName(_))
        ));
        for i in 1..8 {
            bus.hotplug(DeviceConfig::new(format!("d{i}"))).unwrap();
        }
        assert_eq!(
            bus.hotplug(DeviceConfig::new("z")).unwrap_err(),
            PciError::TooManyDevices { max: 8 }
        );
    }
}
