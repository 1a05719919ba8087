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
//! | driver lock classes ([`LockClass`], [`ClassMutex`]) | `struct lock_class_key` + `lock_acquire`/`lock_release` | drivers, at each lock | the lock validator ([`dmabuf_core::lockdep`]) |
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
//!
//! # Driver lock classes
//!
//! Every driver lock that stands for a kernel lock (VFIO's `memory_lock`,
//! iommufd's `pages->mutex`, an importer's BO or MR state, the VRAM
//! manager's lock) is a [`ClassMutex`]: each acquisition is announced to the
//! validator under the kernel's class name *before* it may block (as
//! `lock_acquire` precedes the real lock in the kernel, so an inversion is
//! reported even on the run that then deadlocks), and released after the
//! unlock. The class is registered on first use while the validator is on;
//! with the validator off an acquisition costs one relaxed load more than
//! the bare mutex. Annotations make no shim operation, so they never change
//! a schedule.

use dmabuf_core::lockdep::{self, ClassId};
use dmabuf_core::sync::OnceLock;
use dmabuf_core::sync::{Arc, Mutex, MutexGuard};
use dmabuf_platform::{DeviceId, ExporterId, IommuDomain, Monitor, PciDevice, Platform};
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

/// Receives kernel splats (WARN, KASAN reports) from drivers.
pub type SplatSink = Arc<dyn Fn(&str) + Send + Sync>;

struct HostInner {
    platform: Platform,
    dma_domains: Mutex<HashMap<DeviceId, IommuDomain>>,
    owners: Mutex<HashMap<u64, ExporterId>>,
    /// A plain lock: reporting is never a scheduling point.
    splats: parking_lot::Mutex<(Vec<String>, Option<SplatSink>)>,
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
            splats: parking_lot::Mutex::new((Vec::new(), None)),
        }))
    }

    /// A driver's kernel splat (a WARN, a KASAN report): traced, kept, and
    /// passed to the sink ([`Host::set_splat_sink`]); the checker judges
    /// them (`no-warn`).
    pub fn splat(&self, msg: &str) {
        dmabuf_core::trace_event!("WARN", "{msg}");
        let sink = {
            let mut s = self.0.splats.lock();
            s.0.push(msg.to_owned());
            s.1.clone()
        };
        if let Some(f) = sink {
            f(msg);
        }
    }

    /// Splats so far.
    pub fn splats(&self) -> Vec<String> {
        self.0.splats.lock().0.clone()
    }

    /// Sends every later splat to `sink` as well.
    pub fn set_splat_sink(&self, sink: Option<SplatSink>) {
        self.0.splats.lock().1 = sink;
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

/// A driver lock class (`struct lock_class_key`), named as the kernel names
/// the lock; registered with the validator on first use.
pub struct LockClass {
    name: &'static str,
    /// A process-wide registry entry, never a scheduling point: its one
    /// initialisation makes no shim operation (`register_class` takes the
    /// validator's own `parking_lot` lock), so no controlled task can be
    /// preempted inside it and no other task ever waits on it.
    id: OnceLock<ClassId>,
}

impl fmt::Debug for LockClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockClass({})", self.name)
    }
}

impl LockClass {
    /// A class named `name` (usable in a `static`).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            id: OnceLock::new(),
        }
    }

    /// The kernel name of the class.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The validator's id of the class (registers it on first call).
    pub fn id(&self) -> ClassId {
        *self.id.get_or_init(|| lockdep::register_class(self.name))
    }

    /// Announces an acquisition of a lock of this class at `site`; the
    /// returned guard announces the release when dropped. Nothing is
    /// recorded while the validator is off.
    #[inline]
    pub fn acquire(&self, site: &'static str) -> ClassGuard {
        if lockdep::mode() == lockdep::Mode::Off {
            return ClassGuard(None);
        }
        let c = self.id();
        lockdep::lock_acquired(c, site);
        ClassGuard(Some(c))
    }
}

/// A held lock of a [`LockClass`], as the validator sees it; dropping it
/// announces the release.
#[must_use = "dropping the guard announces the release at once"]
#[derive(Debug)]
pub struct ClassGuard(Option<ClassId>);

impl Drop for ClassGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            lockdep::lock_released(c);
        }
    }
}

/// A driver mutex whose acquisitions are announced to the validator under
/// its [`LockClass`].
pub struct ClassMutex<T> {
    class: &'static LockClass,
    inner: Mutex<T>,
}

impl<T: fmt::Debug> fmt::Debug for ClassMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClassMutex({}, {:?})", self.class.name, self.inner)
    }
}

impl<T> ClassMutex<T> {
    /// An unlocked mutex of `class`.
    pub const fn new(class: &'static LockClass, value: T) -> Self {
        Self {
            class,
            inner: Mutex::new(value),
        }
    }

    /// Its class.
    pub fn class(&self) -> &'static LockClass {
        self.class
    }

    /// Announces the acquisition at `site` (the kernel function taking the
    /// lock), then locks.
    #[inline]
    pub fn lock(&self, site: &'static str) -> ClassMutexGuard<'_, T> {
        let class = self.class.acquire(site);
        ClassMutexGuard {
            guard: self.inner.lock(),
            _class: class,
        }
    }
}

/// Guard of a [`ClassMutex`]: unlocks, then announces the release.
pub struct ClassMutexGuard<'a, T> {
    // Field order is drop order: the mutex is released first.
    guard: MutexGuard<'a, T>,
    _class: ClassGuard,
}

impl<T> Deref for ClassMutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for ClassMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}
