//! A GPU importer, modelled on amdgpu and xe (`amdgpu_dma_buf_move_notify`,
//! `xe_dma_buf_move_notify`, TTM eviction of an sg BO): a dynamic importer
//! with `invalidate_mappings`, whose hardware works asynchronously behind
//! fences and reads ahead speculatively.
//!
//! # Objects
//!
//! | Rust | kernel |
//! |---|---|
//! | [`GpuDevice`] | the GPU: its DMA engine (ring), VM page table, kernel worker |
//! | [`GpuImport`] | an imported BO (`ttm_bo_type_sg`) sharing the dma-buf's reservation object |
//!
//! # The importer's obligations, as this model honours them
//! (docs/importers.md; docs/revoke-sequences.md, `v6-final`)
//!
//! 1. Jobs: under the reservation lock, (re)map if needed, then publish the
//!    job's fence as `Bookkeep` (VM-bound work, explicit sync) and queue the
//!    job behind every `Kernel` fence of the object (a dynamic importer waits
//!    for an exporter's move itself). While the buffer is revoked the map
//!    fails with `ENODEV` and the job fails.
//! 2. `invalidate_mappings` (lock held): if the BO's setup has not finished
//!    (`importer_priv` unset: the xe 2026 fix) do nothing. Otherwise the
//!    page tables are no longer valid for new work, and an *unbind* job (a
//!    page-table update plus a TLB flush) is queued on the engine after
//!    every job in flight; its fence is published as `Bookkeep`
//!    (`Kernel` with the `gpu-kernel-fence` flag) and handed to the
//!    kernel worker.
//! 3. Until its unmap, the device may read ahead speculatively from the
//!    ranges its recent jobs used (read and discard; no fence covers it).
//! 4. The kernel worker (group `kernel`) waits for the unbind fence, runs
//!    after its latency (a bounded delay: the worker is a work item), tells
//!    the device to stop reading ahead from the mapping, then takes the lock
//!    and unmaps. So the unmap comes in bounded time after the invalidate.
//!    With `unmap_on_free` (`gpu-lazy`) there is no such unmap: the
//!    fences are the same, but the mapping stays (and the device may read
//!    ahead through it) until userspace frees the BO or its next job
//!    re-validates it: an unbounded unmap.
//! 5. The next job maps again (lazily). With [`Remap::Revalidate`] (and
//!    [`Remap::CacheEnodevRevalidate`]) an invalidate that finds the BO
//!    already unmapped (the buffer came back: an un-revoke notifies) maps
//!    again at once, inside the callback, under the lock.
//!
//! With the `writes-after-fences` flag the device keeps writing through the
//! stale mapping after the unbind fence signalled (a broken importer: after
//! its fences, at most speculative reads are allowed).
//!
//! # BO states
//!
//! | state | `mapping` | `bound` | a job |
//! |---|---|---|---|
//! | unmapped | none | false | maps (may fail with `ENODEV`) |
//! | bound | some | true | uses the mapping |
//! | evicting | some (stale) | false | waits for the unbind, unmaps the stale mapping, maps again |
//!
//! # Lock rules
//!
//! Reservation lock → BO state lock → the worker queue lock (a leaf). The
//! BO state lock is never held across `dma_buf_map_attachment`: an
//! exporter may move the buffer inside `map` and invalidate this very
//! importer. The BO state lock is announced to the lock validator as class
//! [`BO_STATE_CLASS`]; it may be held across a fence wait (the invalidate
//! that could not publish its unbind fence), so it must never be taken
//! inside a fence signalling section.

use super::{
    Counters, Declared, ImportError, Importer, Job, Stage, job_ops, map_and_declare, read_page,
    unmap_declared,
};
use crate::host::{ClassMutex, Host, LockClass};
use crate::job::submit_after;
use dmabuf_core::dma_buf::{self, AttachOps, Attachment, DmaBuf, InvalidateFn};
use dmabuf_core::dma_resv::{ResvGuard, Usage};
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::sync::thread::{self, JoinHandle};
use dmabuf_core::sync::{Arc, Guarded, Mutex, Weak};
use dmabuf_core::uapi::Process;
use dmabuf_core::{Fence, FenceContext, trace_event};
use dmabuf_platform::{
    Accessor, DmaAddr, DmaEngine, DmaJob, DmaOp, EngineConfig, PAGE_SIZE, PciDevice,
};
use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Read-ahead passes while idle after each job, by default (50 µs apart).
/// Fewer passes make a smaller search, but under the controlled
/// scheduler's virtual clock they also change which timer orders are
/// possible: with one pass, `unrevoke-race-v6`'s l-restore violation
/// cannot happen (an exhaustive search says so), with four it can.
pub const DEFAULT_IDLE_PASSES: u32 = 4;

/// How a GPU behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    /// The unbind fence is `Kernel`-usage instead of `Bookkeep`
    /// (`gpu-kernel-fence`).
    pub kernel_fence: bool,
    /// The device keeps writing after its fences signalled
    /// (`writes-after-fences`).
    pub writes_after_fences: bool,
    /// How long after the unbind fence the kernel worker runs.
    pub worker_latency: Duration,
    /// Speculative read-ahead.
    pub readahead: bool,
    /// Read-ahead passes while idle after each job, each 50 µs (virtual
    /// under the controlled scheduler) after the last.
    pub readahead_idle_passes: u32,
    /// What a job does after a map failed with `ENODEV`.
    pub remap: Remap,
    /// The kernel worker does not unmap after the unbind: the mapping goes
    /// only when userspace frees the BO (or its next job re-validates it).
    /// Fences stay correct (`gpu-lazy`).
    pub unmap_on_free: bool,
}

/// When the importer maps again after an invalidate or a refused map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Remap {
    /// Every job that finds the BO unbound tries to map (amdgpu, xe).
    #[default]
    Lazy,
    /// A map refused with `ENODEV` is remembered: later jobs fail at once,
    /// without asking the exporter, until the next `invalidate_mappings`
    /// clears the note (a driver that treats ENODEV as "gone until told
    /// otherwise").
    CacheEnodev,
    /// An `invalidate_mappings` that finds the BO unmapped (the buffer
    /// came back: an un-revoke's notification) re-validates at once, inside
    /// the callback, under the reservation lock; a refusal there is not
    /// remembered (the next job maps lazily).
    Revalidate,
    /// [`Remap::CacheEnodev`] and [`Remap::Revalidate`]: a refused map is
    /// remembered; an invalidate clears the note and re-validates inside
    /// the callback, and a refusal there is remembered again.
    CacheEnodevRevalidate,
}

impl Remap {
    /// Whether a refused map is remembered until the next invalidate.
    pub fn caches_enodev(self) -> bool {
        matches!(self, Remap::CacheEnodev | Remap::CacheEnodevRevalidate)
    }

    /// Whether an invalidate of an unmapped BO re-validates in the callback.
    pub fn revalidates(self) -> bool {
        matches!(self, Remap::Revalidate | Remap::CacheEnodevRevalidate)
    }
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            kernel_fence: false,
            writes_after_fences: false,
            worker_latency: Duration::from_micros(120),
            readahead: true,
            readahead_idle_passes: DEFAULT_IDLE_PASSES,
            remap: Remap::Lazy,
            unmap_on_free: false,
        }
    }
}

/// The lock class of an imported BO's VM state (what amdgpu keeps under
/// `vm->status_lock` and xe under the VM lock: bound or evicted, the
/// mapping, the unbind in flight). It nests inside the reservation lock.
pub static BO_STATE_CLASS: LockClass = LockClass::new("gpu vm->status_lock");

struct Unbind {
    import: Weak<ImportInner>,
    generation: u64,
    fence: Fence,
}

struct WorkQueue {
    items: VecDeque<Unbind>,
    shutdown: bool,
}

struct DevInner {
    host: Host,
    pdev: PciDevice,
    cfg: GpuConfig,
    engine: DmaEngine,
    fctx: FenceContext,
    /// The VM page table (a RAM frame the GPU owns): unbind jobs write it.
    pt_frame: u64,
    /// The worker's queue (every change wakes the worker).
    work: Guarded<WorkQueue>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A GPU device with its engine and kernel worker (cheap to clone handle).
#[derive(Clone)]
pub struct GpuDevice(Arc<DevInner>);

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuDevice({})", self.0.pdev.name())
    }
}

fn device_err(stage: Stage, e: &impl AsErrno, what: String) -> ImportError {
    ImportError::Device {
        stage,
        errno: e.errno(),
        what,
    }
}

impl GpuDevice {
    /// Brings up the GPU `pdev`: its engine (a thread of the caller's group)
    /// and its kernel worker (group `kernel`).
    pub fn new(host: &Host, pdev: PciDevice, cfg: GpuConfig) -> Result<Self, ImportError> {
        let name = pdev.name().to_owned();
        let mut ec =
            EngineConfig::threaded(format!("{name}-gfx")).with_accessor(Accessor::new(&name));
        if cfg.readahead {
            ec = ec.with_readahead(4);
            ec.readahead.idle_passes = cfg.readahead_idle_passes;
            ec.readahead.interval = Duration::from_micros(50);
        }
        let engine = host
            .platform()
            .dma_engine(pdev.id(), ec)
            .map_err(|e| device_err(Stage::Register, &e, e.to_string()))?;
        let pt_frame = match host.platform().memory().alloc_frames(1, &name) {
            Ok(f) => f[0],
            Err(e) => {
                engine.stop();
                return Err(device_err(Stage::Register, &e, e.to_string()));
            }
        };
        let dev = GpuDevice(Arc::new(DevInner {
            host: host.clone(),
            pdev,
            cfg,
            engine,
            fctx: FenceContext::named("gpu", &name),
            pt_frame,
            work: Guarded::new(WorkQueue {
                items: VecDeque::new(),
                shutdown: false,
            }),
            worker: Mutex::new(None),
        }));
        let weak = Arc::downgrade(&dev.0);
        let h = thread::spawn_named(format!("{name}-worker"), move || {
            dmabuf_core::sync::sched::set_group("kernel");
            worker_main(weak);
        });
        *dev.0.worker.lock() = Some(h);
        Ok(dev)
    }

    /// The PCI device.
    pub fn pci_device(&self) -> &PciDevice {
        &self.0.pdev
    }

    /// The engine.
    pub fn engine(&self) -> &DmaEngine {
        &self.0.engine
    }

    /// Stops the worker (after its queued unbinds) and the engine, and frees
    /// the page-table frame. Idempotent.
    pub fn shutdown(&self) {
        self.0.work.update(|w| w.shutdown = true);
        let h = self.0.worker.lock().take();
        if let Some(h) = h {
            let _ = h.join();
            self.0.engine.stop();
            let _ = self
                .0
                .host
                .platform()
                .memory()
                .free_frames(&[self.0.pt_frame]);
        }
    }

    fn queue(&self, u: Unbind) {
        self.0.work.update(|w| w.items.push_back(u));
    }
}

fn worker_main(dev: Weak<DevInner>) {
    loop {
        let Some(d) = dev.upgrade() else {
            return;
        };
        // An unbind, or `None` at shutdown (after the queued ones).
        let item = d.work.wait_map(
            |w| match w.items.pop_front() {
                Some(i) => Some(Some(i)),
                None => w.shutdown.then_some(None),
            },
            |_| None,
        );
        let Some(Some(item)) = item else {
            return;
        };
        let _ = item.fence.wait(None);
        if !d.cfg.worker_latency.is_zero() {
            thread::sleep(d.cfg.worker_latency);
        }
        if let Some(imp) = item.import.upgrade() {
            let imp = GpuImport(imp);
            if d.cfg.writes_after_fences {
                imp.write_after_fences();
            }
            imp.finish_unbind(item.generation);
        }
    }
}

struct BoState {
    proc: Option<(Arc<Process>, i32)>,
    mapping: Option<Declared>,
    bound: bool,
    generation: u64,
    /// Fences of jobs not known to be done.
    jobs: Vec<Fence>,
    /// The unbind of the current generation, once queued.
    unbind: Option<(u64, Fence)>,
    /// [`Remap::CacheEnodev`]: the last map was refused with `ENODEV`.
    enodev_cached: bool,
    /// Teardown began: no re-validation any more.
    closing: bool,
}

struct ImportInner {
    name: String,
    dev: GpuDevice,
    accessor: Accessor,
    owns_device: bool,
    buf: Mutex<Option<DmaBuf>>,
    attach: Mutex<Option<Attachment>>,
    /// The BO's VM state, class [`BO_STATE_CLASS`].
    st: ClassMutex<BoState>,
    counters: Counters,
}

/// An imported BO on a [`GpuDevice`] (cheap to clone handle).
#[derive(Clone)]
pub struct GpuImport(Arc<ImportInner>);

impl std::fmt::Debug for GpuImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuImport({})", self.0.name)
    }
}

const COUNTERS: &[&str] = &[
    "maps",
    "unmaps",
    "invalidates",
    "invalidates_before_setup",
    "unbinds",
    "jobs",
    "map_enodev",
    "map_enodev_cached",
    "writes_after_fences",
    "revalidates",
];

impl GpuImport {
    /// A BO import named `name` on `dev`. `owns_device`: [`Importer::shutdown`]
    /// also shuts the device down.
    pub fn new(name: &str, dev: &GpuDevice, owns_device: bool) -> Self {
        Self(Arc::new(ImportInner {
            name: name.to_owned(),
            dev: dev.clone(),
            accessor: Accessor::new(dev.0.pdev.name()),
            owns_device,
            buf: Mutex::new(None),
            attach: Mutex::new(None),
            st: ClassMutex::new(
                &BO_STATE_CLASS,
                BoState {
                    proc: None,
                    mapping: None,
                    bound: false,
                    generation: 0,
                    jobs: Vec::new(),
                    unbind: None,
                    enodev_cached: false,
                    closing: false,
                },
            ),
            counters: Counters::new(COUNTERS),
        }))
    }

    fn handles(&self) -> Result<(DmaBuf, Attachment), ImportError> {
        let buf = self.0.buf.lock().clone();
        let attach = self.0.attach.lock().clone();
        match (buf, attach) {
            (Some(b), Some(a)) => Ok((b, a)),
            _ => Err(ImportError::NotSetUp(self.0.name.clone())),
        }
    }

    /// Whether the BO currently holds a mapping (stale or not).
    pub fn is_mapped(&self) -> bool {
        self.0.st.lock("gpu bo is_mapped").mapping.is_some()
    }

    /// Step 2: the `invalidate_mappings` callback.
    fn invalidate(me: &Weak<ImportInner>, attach: &Attachment, guard: &ResvGuard<'_>) {
        let Some(imp) = attach
            .importer_priv()
            .and_then(|p| p.downcast::<ImportInner>().ok())
        else {
            // The attachment is listed before the BO exists (xe 2026 fix).
            if let Some(m) = me.upgrade() {
                m.counters.bump("invalidates_before_setup");
            }
            trace_event!("gpu_invalidate_before_setup", "attach={}", attach.id());
            return;
        };
        let imp = GpuImport(imp);
        imp.0.counters.bump("invalidates");
        let mut st = imp.0.st.lock("amdgpu_dma_buf_move_notify");
        st.bound = false;
        st.enodev_cached = false;
        if st.mapping.is_none() {
            if imp.0.dev.0.cfg.remap.revalidates() && st.proc.is_some() && !st.closing {
                drop(st);
                imp.0.counters.bump("revalidates");
                trace_event!("gpu_revalidate_in_callback", "bo={}", imp.0.name);
                let _ = imp.ensure_bound(attach, guard);
            }
            return;
        }
        if st.unbind.as_ref().is_some_and(|(g, _)| *g == st.generation) {
            return;
        }
        st.jobs.retain(|f| !f.is_signaled());
        let deps = st.jobs.clone();
        let dev = &imp.0.dev.0;
        let (fence, handle) = dev.fctx.create();
        let usage = if dev.cfg.kernel_fence {
            Usage::Kernel
        } else {
            Usage::Bookkeep
        };
        if guard
            .reserve_fences(1)
            .and_then(|()| guard.add_fence(&fence, usage))
            .is_err()
        {
            // Without a published fence the exporter could not wait for
            // the unbind: do it synchronously instead.
            for f in &deps {
                let _ = f.wait(None);
            }
        }
        let job = DmaJob::new(vec![
            DmaOp::write(DmaAddr::Bus(dev.pt_frame), vec![0; 8]),
            DmaOp::write(DmaAddr::Bus(dev.pt_frame + 64), vec![1; 8]),
        ])
        .with_label(format!("{} unbind+tlb-flush", imp.0.name));
        submit_after(&dev.engine, deps, job, fence.clone(), handle);
        let generation = st.generation;
        st.unbind = Some((generation, fence.clone()));
        drop(st);
        imp.0.counters.bump("unbinds");
        if dev.cfg.unmap_on_free {
            // Fences are published as for `gpu`; nobody unmaps until
            // userspace frees the BO (an unbounded unmap).
            trace_event!(
                "gpu_evict",
                "bo={} gen={} fence={}:{} usage={:?} unmap=on-free",
                imp.0.name,
                generation,
                fence.context(),
                fence.seqno(),
                usage
            );
            return;
        }
        trace_event!(
            "gpu_evict",
            "bo={} gen={} fence={}:{} usage={:?}",
            imp.0.name,
            generation,
            fence.context(),
            fence.seqno(),
            usage
        );
        imp.0.dev.queue(Unbind {
            import: Arc::downgrade(&imp.0),
            generation,
            fence,
        });
    }

    /// The misbehaviour of `writes-after-fences`: a write through the
    /// stale mapping after the unbind fence signalled.
    fn write_after_fences(&self) {
        let at = {
            let st = self.0.st.lock("gpu worker writes-after-fences");
            st.mapping.as_ref().and_then(|m| m.dma_ref(0))
        };
        if let Some(at) = at {
            self.0.counters.bump("writes_after_fences");
            let _ = self.0.dev.0.engine.port().write(&at, &[0xee; 8]);
        }
    }

    /// Step 4: the worker's unmap of generation `generation`.
    fn finish_unbind(&self, generation: u64) {
        let Ok((buf, attach)) = self.handles() else {
            return;
        };
        let g = crate::host::lock_resv(buf.resv());
        let stale = {
            let mut st = self.0.st.lock("gpu worker unbind");
            if st.generation != generation || st.bound {
                return;
            }
            st.mapping.take()
        };
        if let Some(m) = stale {
            self.0.dev.0.engine.forget_mapping(m.token());
            if unmap_declared(&self.0.dev.0.host, &attach, m, &g).is_ok() {
                self.0.counters.bump("unmaps");
            }
            trace_event!("gpu_unmap", "bo={} gen={}", self.0.name, generation);
        }
    }

    /// Maps (again) under the lock if the BO is not bound. The state lock
    /// is released across the map (see the lock rules).
    fn ensure_bound(&self, attach: &Attachment, g: &ResvGuard<'_>) -> Result<(), ImportError> {
        let stale = {
            let mut st = self.0.st.lock("amdgpu_bo_validate");
            if st.bound && st.mapping.is_some() {
                return Ok(());
            }
            if st.enodev_cached {
                drop(st);
                self.0.counters.bump("map_enodev_cached");
                return Err(ImportError::DmaBuf {
                    stage: Stage::Map,
                    source: dmabuf_core::dma_buf::DmaBufError::errno(
                        errno::ENODEV,
                        "cached ENODEV from an earlier map (no invalidate since)",
                    ),
                });
            }
            let unbind = st.unbind.clone().filter(|(gen_, _)| *gen_ == st.generation);
            st.generation += 1;
            (st.mapping.take(), unbind)
        };
        if let (Some(old), unbind) = stale {
            // The device must be done with the old mapping before it goes:
            // its unbind (behind every job) has run.
            if let Some((_, f)) = unbind {
                let _ = f.wait(None);
            }
            self.0.dev.0.engine.forget_mapping(old.token());
            if unmap_declared(&self.0.dev.0.host, attach, old, g).is_ok() {
                self.0.counters.bump("unmaps");
            }
        }
        let dev = &self.0.dev.0;
        match map_and_declare(&dev.host, attach, Some(dev.pdev.id()), &self.0.accessor, g) {
            Ok(m) => {
                self.0.counters.bump("maps");
                let mut st = self.0.st.lock("amdgpu_bo_validate mapped");
                st.mapping = Some(m);
                st.bound = true;
                Ok(())
            }
            Err(e) => {
                if e.errno() == errno::ENODEV {
                    self.0.counters.bump("map_enodev");
                    if dev.cfg.remap.caches_enodev() {
                        self.0.st.lock("amdgpu_bo_validate enodev").enodev_cached = true;
                    }
                }
                Err(ImportError::DmaBuf {
                    stage: Stage::Map,
                    source: e,
                })
            }
        }
    }
}

impl Importer for GpuImport {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn setup(&self, proc: &Arc<Process>, fd: i32) -> Result<(), ImportError> {
        let buf = proc.dma_buf_get(fd).map_err(ImportError::sys(Stage::Fd))?;
        let me = Arc::downgrade(&self.0);
        let cb: InvalidateFn = Arc::new(move |a, g| GpuImport::invalidate(&me, a, g));
        let attach = dma_buf::dynamic_attach(
            &buf,
            self.0.dev.0.pdev.name(),
            Some(AttachOps {
                allow_peer2peer: true,
                invalidate_mappings: Some(cb),
            }),
        )
        .map_err(ImportError::dmabuf(Stage::Attach))?;
        *self.0.buf.lock() = Some(buf.clone());
        *self.0.attach.lock() = Some(attach.clone());
        // Only now does the BO exist; an invalidate before this was a no-op.
        let p: Arc<dyn Any + Send + Sync> = self.0.clone();
        attach.set_importer_priv(Some(&p));
        let r = {
            let g = crate::host::lock_resv(buf.resv());
            self.ensure_bound(&attach, &g)
        };
        if let Err(e) = r {
            attach.set_importer_priv(None);
            let _ = dma_buf::detach(&buf, &attach);
            *self.0.buf.lock() = None;
            *self.0.attach.lock() = None;
            return Err(e);
        }
        self.0.st.lock("gpu setup").proc = Some((proc.clone(), fd));
        Ok(())
    }

    fn submit(&self, page: u64, pattern: u8, gate: Option<Fence>) -> Result<Job, ImportError> {
        let (buf, attach) = self.handles()?;
        let g = crate::host::lock_resv(buf.resv());
        self.ensure_bound(&attach, &g)?;
        let dev = &self.0.dev.0;
        let mut st = self.0.st.lock("amdgpu_cs_submit");
        let refs = st.mapping.as_ref().and_then(|m| {
            let pages = m.mapping().sg_table().len() / PAGE_SIZE;
            Some((
                m.dma_ref(page * PAGE_SIZE)?,
                m.dma_ref(read_page(page, pages) * PAGE_SIZE)?,
            ))
        });
        let (at, from) = refs.ok_or_else(|| ImportError::Invalid {
            stage: Stage::Job,
            what: format!("page {page} outside the buffer"),
        })?;
        let mut deps = buf.resv().get_fences(Usage::Kernel);
        deps.extend(gate);
        let (fence, handle) = dev.fctx.create();
        g.reserve_fences(1)
            .and_then(|()| g.add_fence(&fence, Usage::Bookkeep))
            .map_err(|e| device_err(Stage::Job, &e, e.to_string()))?;
        if dev.cfg.readahead {
            dev.engine.set_readahead(true);
        }
        let job =
            DmaJob::new(job_ops(at, from, pattern)).with_label(format!("{} job", self.0.name));
        let pj = submit_after(&dev.engine, deps, job, fence.clone(), handle);
        st.jobs.retain(|f| !f.is_signaled());
        st.jobs.push(fence);
        self.0.counters.bump("jobs");
        Ok(Job::new(pj))
    }

    fn teardown(&self) -> Result<(), ImportError> {
        let Ok((buf, attach)) = self.handles() else {
            return Ok(());
        };
        let jobs = self.0.st.lock("gpu teardown jobs").jobs.clone();
        for f in jobs {
            let _ = f.wait(None);
        }
        {
            let g = crate::host::lock_resv(buf.resv());
            let (m, unbind) = {
                let mut st = self.0.st.lock("gpu teardown unmap");
                st.closing = true;
                st.bound = false;
                st.generation += 1;
                (st.mapping.take(), st.unbind.take())
            };
            if let Some(m) = m {
                if let Some((_, f)) = unbind {
                    let _ = f.wait(None);
                }
                self.0.dev.0.engine.forget_mapping(m.token());
                unmap_declared(&self.0.dev.0.host, &attach, m, &g)
                    .map_err(ImportError::dmabuf(Stage::Teardown))?;
                self.0.counters.bump("unmaps");
            }
        }
        dma_buf::detach(&buf, &attach).map_err(ImportError::dmabuf(Stage::Teardown))?;
        attach.set_importer_priv(None);
        *self.0.attach.lock() = None;
        *self.0.buf.lock() = None;
        drop(buf);
        let proc = self.0.st.lock("gpu teardown fd").proc.take();
        if let Some((p, fd)) = proc {
            p.close(fd).map_err(ImportError::sys(Stage::Teardown))?;
        }
        Ok(())
    }

    fn shutdown(&self) {
        if self.0.owns_device {
            self.0.dev.shutdown();
        }
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.0.counters.snapshot()
    }
}
