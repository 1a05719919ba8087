//! Script scenarios: a `[scenario]` with `script = [...]` runs its steps in
//! order, one at a time, with one importer of base `kmod` against a VFIO
//! exporter, and records what each step returned and which importer events
//! it caused. This is the project's side of the real-kernel comparison with
//! the test importer module (`crates/dmabuf-oracle/kmod/`): the oracle's
//! `kmod` part runs the files of `protocols/kmod/` through
//! [`crate::builtin::Library::resolve_script`] and [`run_script`].
//!
//! # Contract
//!
//! * [`run_script`] returns one [`StepRecord`] per step, in order; an
//!   importer step's result is the module's ioctl result (`Ok(0)` or the
//!   positive errno), an exporter step's is the VFIO operation's, with
//!   `blocked` telling whether it had to be unblocked (below). The events
//!   of a record are those logged since the previous step returned up to
//!   the return of its own, in log order (the probe reads the module's log
//!   right after each call: a worker's event between two steps belongs to
//!   the later one).
//! * It never panics; a machine that cannot be built or an exporter
//!   operation that never returns is an `Err` naming the step.
//! * Scripts run on real threads only (they are not explored by the
//!   checker: the module's timing, a 2 s watchdog, is part of what is
//!   compared). Nothing here is reachable from a world, so worlds keep
//!   their schedules.
//!
//! # Steps
//!
//! | step | kernel (the probe's `kmod_part`) |
//! |---|---|
//! | `attach`, `map`, `unmap`, `pin`, `unpin`, `detach` | `DTI_ATTACH` (mode from the importer's fields, the exporter's own PCI device as importing device), `DTI_MAP`, ... |
//! | `release` | `close()` of the importer's file: detaches if attached, returns 0 |
//! | `device-reset` | `VFIO_DEVICE_RESET` |
//! | `decode-off`, `decode-on` | a `PCI_COMMAND` write through the config region clearing or setting the memory bit |
//! | `close` | `close()` of the VFIO device fd |
//!
//! An exporter step runs on a thread of its own beside a watchdog: if it has
//! not returned after [`BLOCK`] (the probe's `KMOD_BLOCK_MS`) the importer
//! is told to unmap (`DTI_UNMAP`, the event `unmap`) and the record says
//! `blocked`; if it still has not returned [`HANG`] later the run fails.
//!
//! # The importer (base `kmod`)
//!
//! The module's state machine: one attachment, at most one mapping, mapped
//! and unmapped when its userspace asks. The behaviour fields select the
//! module's mode ([`KmodMode::of`]):
//!
//! | fields | mode | `invalidate_mappings` |
//! |---|---|---|
//! | `invalidate = "none"` | `static` | none: `dma_buf_attach` |
//! | `invalidate = "none"`, `pin = true` | `pinned` | peer2peer ops without the op |
//! | `stop-and-unmap`, `in-callback` | `odp` | unmaps (`unmap-cb`) |
//! | ... with `remap = "cache-enodev"` | `cache_lazy` | unmaps; a map's error is cached until the next invalidate (`map-cached`) |
//! | ... with `remap = "cache-enodev-revalidate"` | `cache_revalidate` | unmaps and, if userspace wants a mapping, maps again (`remap-cb`), caching its error |
//! | `evict(bookkeep)`, `worker-after-fences` | `gpu` | (re-)arms one delayed worker (`mod_delayed_work`) that unmaps `unmap_latency` later (`unmap-worker`) |
//! | `evict(bookkeep)`, `on-free` | `lazy` | marks the mapping stale: unmapped at the next map (`unmap-stale`) or when told |
//! | `ignore`, `on-free` | `lying` | nothing |
//!
//! The module has no engine, so `evict` queues no fence here. The errnos of
//! bad calls are the module's: `ENOTCONN` without an attachment, `EINVAL`
//! for an unmap without a mapping or an unpin without a pin, `EBUSY` for a
//! second attach or pin.
//!
//! # Locks
//!
//! The mapping state is taken under the buffer's reservation lock, which
//! the exporter holds when it calls the op: reservation lock → state → log,
//! everywhere (shim mutexes). The attachment and buffer handles are cloned
//! out of the state before the reservation lock is taken.

use crate::world::{ImporterBase, ImporterSpec, OnInvalidate, UnmapWhen};
use dmabuf_core::dma_buf::{
    self, AttachOps, Attachment, DmaBuf, DmaDirection, InvalidateFn, Mapping,
};
use dmabuf_core::dma_resv::{ResvGuard, Usage};
use dmabuf_core::errno::{self, AsErrno};
use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::thread;
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::uapi::{O_CLOEXEC, Process};
use dmabuf_drivers::host::Host;
use dmabuf_drivers::importers::gpu::Remap;
use dmabuf_drivers::vfio::{ResetKind, VfioPciDevice};
use dmabuf_drivers::vfio_uapi::DmaRange;
use dmabuf_platform::{DeviceConfig, Platform, PlatformConfig};
use std::time::{Duration, Instant};

/// How long an exporter step may take before the importer is told to
/// unmap: the probe's 2 s, so that an exporter whose wait for the unmaps is
/// bounded by less (v5 of the series: 1 s) returns by itself on both sides.
pub const BLOCK: Duration = Duration::from_secs(2);
/// How long after that the run gives up.
pub const HANG: Duration = Duration::from_secs(10);
/// The exporting (and importing) PCI device: qemu's `edu` in the guest.
pub const DEVICE: &str = "edu";
/// Its BAR 0 (1 MiB, as `edu`).
pub const BAR0: u64 = 1 << 20;
/// `ENOTCONN`: a call that needs an attachment without one.
pub const ENOTCONN: i32 = 107;
const PAGE: u64 = 4096;
const O_RDWR: u32 = 0o2;

/// One step of a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScriptStep {
    /// `DTI_ATTACH`.
    Attach,
    /// `DTI_MAP`.
    Map,
    /// `DTI_UNMAP`.
    Unmap,
    /// `DTI_PIN`.
    Pin,
    /// `DTI_UNPIN`.
    Unpin,
    /// `DTI_DETACH`.
    Detach,
    /// `close()` of the importer's file.
    Release,
    /// `VFIO_DEVICE_RESET`.
    DeviceReset,
    /// Memory decode off.
    DecodeOff,
    /// Memory decode on.
    DecodeOn,
    /// `close()` of the VFIO device.
    Close,
}

/// The step names of a file.
pub const STEPS: &[(&str, ScriptStep)] = &[
    ("attach", ScriptStep::Attach),
    ("map", ScriptStep::Map),
    ("unmap", ScriptStep::Unmap),
    ("pin", ScriptStep::Pin),
    ("unpin", ScriptStep::Unpin),
    ("detach", ScriptStep::Detach),
    ("release", ScriptStep::Release),
    ("device-reset", ScriptStep::DeviceReset),
    ("decode-off", ScriptStep::DecodeOff),
    ("decode-on", ScriptStep::DecodeOn),
    ("close", ScriptStep::Close),
];

impl ScriptStep {
    /// The step of a file name.
    pub fn parse(s: &str) -> Option<ScriptStep> {
        STEPS.iter().find(|(n, _)| *n == s).map(|(_, x)| *x)
    }

    /// Its file name.
    pub fn name(self) -> &'static str {
        STEPS
            .iter()
            .find(|(_, x)| *x == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether the exporter runs it (beside the watchdog).
    pub fn is_exporter(self) -> bool {
        matches!(
            self,
            ScriptStep::DeviceReset
                | ScriptStep::DecodeOff
                | ScriptStep::DecodeOn
                | ScriptStep::Close
        )
    }
}

/// The test importer module's modes (`enum dti_mode`, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmodMode {
    /// 0: `dma_buf_attach`, no ops.
    Static,
    /// 1: unmaps inside the callback.
    Odp,
    /// 2: unmaps from a delayed worker.
    Gpu,
    /// 3: peer2peer ops without `invalidate_mappings`.
    Pinned,
    /// 4: declares the op and ignores it.
    Lying,
    /// 5: marks the mapping stale.
    Lazy,
    /// 6: unmaps in the callback; caches a map error until the next invalidate.
    CacheLazy,
    /// 7: unmaps and maps again in the callback, caching its error.
    CacheRevalidate,
}

impl KmodMode {
    /// The mode the behaviour fields of a `kmod` importer select (see the
    /// module table); `Err` says which combinations exist.
    pub fn of(spec: &ImporterSpec) -> Result<KmodMode, String> {
        if spec.base != ImporterBase::Kmod {
            return Err(format!(
                "importer '{}' has base {}; a script needs a kmod importer",
                spec.name,
                spec.base.name()
            ));
        }
        use OnInvalidate as I;
        use UnmapWhen as U;
        Ok(
            match (spec.invalidate, spec.unmap, spec.pin, spec.remap) {
                (I::NoOp, U::OnFree, false, Remap::Lazy) => KmodMode::Static,
                (I::NoOp, U::OnFree, true, Remap::Lazy) => KmodMode::Pinned,
                (I::StopAndUnmap, U::InCallback, false, Remap::Lazy) => KmodMode::Odp,
                (I::StopAndUnmap, U::InCallback, false, Remap::CacheEnodev) => KmodMode::CacheLazy,
                (I::StopAndUnmap, U::InCallback, false, Remap::CacheEnodevRevalidate) => {
                    KmodMode::CacheRevalidate
                }
                (I::Evict(Usage::Bookkeep), U::WorkerAfterFences, false, Remap::Lazy) => {
                    KmodMode::Gpu
                }
                (I::Evict(Usage::Bookkeep), U::OnFree, false, Remap::Lazy) => KmodMode::Lazy,
                (I::Ignore, U::OnFree, false, Remap::Lazy) => KmodMode::Lying,
                _ => return Err(
                    "a kmod importer is one of: none + on-free (static), none + on-free + pin (pinned), stop-and-unmap + in-callback with remap lazy (odp), cache-enodev (cache_lazy) or cache-enodev-revalidate (cache_revalidate), evict(bookkeep) + worker-after-fences (gpu), evict(bookkeep) + on-free (lazy), ignore + on-free (lying)"
                        .into(),
                ),
            },
        )
    }

    /// The module's mode number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The module's mode name.
    pub fn name(self) -> &'static str {
        match self {
            KmodMode::Static => "static",
            KmodMode::Odp => "odp",
            KmodMode::Gpu => "gpu",
            KmodMode::Pinned => "pinned",
            KmodMode::Lying => "lying",
            KmodMode::Lazy => "lazy",
            KmodMode::CacheLazy => "cache_lazy",
            KmodMode::CacheRevalidate => "cache_revalidate",
        }
    }

    fn caches(self) -> bool {
        matches!(self, KmodMode::CacheLazy | KmodMode::CacheRevalidate)
    }
}

/// One entry of the importer's event log (the module's `read()`, without
/// timestamps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `attach`, `map`, `inv`, `unmap-cb`, `unmap-worker`, `remap-cb`, ...
    pub name: &'static str,
    /// 0 or the positive errno of the operation the event records.
    pub errno: i32,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    /// The step.
    pub step: ScriptStep,
    /// `Ok(0)` or the positive errno.
    pub result: Result<i64, i32>,
    /// Exporter steps: whether the watchdog had to tell the importer to
    /// unmap before the operation returned; `None` for importer steps.
    pub blocked: Option<bool>,
    /// The events logged since the previous step returned, up to this
    /// one's return.
    pub events: Vec<Event>,
}

/// A whole script's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptRun {
    /// The importer's mode.
    pub mode: KmodMode,
    /// One record per step.
    pub steps: Vec<StepRecord>,
}

#[derive(Default)]
struct State {
    buf: Option<DmaBuf>,
    attach: Option<Attachment>,
    sgt: Option<Mapping>,
    stale: bool,
    want: bool,
    pinned: bool,
    cached_err: i32,
    /// The delayed work's generation: an invalidate re-arms it
    /// (`mod_delayed_work`), a detach cancels it; a worker whose generation
    /// is no longer current does nothing.
    work_gen: u64,
}

struct Inner {
    mode: KmodMode,
    latency: Duration,
    st: Mutex<State>,
    log: Mutex<Vec<Event>>,
}

/// One open file of the test importer, in one mode.
#[derive(Clone)]
pub struct TestImporter(Arc<Inner>);

fn err_of(e: &impl AsErrno) -> i32 {
    e.errno().get()
}

impl Inner {
    fn log(&self, name: &'static str, errno: i32) {
        self.log.lock().push(Event { name, errno });
    }

    /// Maps; `g` is the reservation lock for a dynamic attachment.
    fn do_map(
        &self,
        st: &mut State,
        a: &Attachment,
        g: Option<&ResvGuard<'_>>,
        ev: &'static str,
    ) -> i32 {
        let r = match g {
            Some(g) => dma_buf::map_attachment(a, DmaDirection::Bidirectional, g),
            None => dma_buf::map_attachment_unlocked(a, DmaDirection::Bidirectional),
        };
        match r {
            Ok(m) => {
                st.sgt = Some(m);
                st.stale = false;
                self.log(ev, 0);
                0
            }
            Err(e) => {
                self.log(ev, err_of(&e));
                err_of(&e)
            }
        }
    }

    fn do_unmap(
        &self,
        st: &mut State,
        a: &Attachment,
        g: Option<&ResvGuard<'_>>,
        ev: &'static str,
    ) {
        if let Some(m) = st.sgt.take() {
            let r = match g {
                Some(g) => dma_buf::unmap_attachment(a, m, g),
                None => dma_buf::unmap_attachment_unlocked(a, m),
            };
            st.stale = false;
            self.log(ev, r.err().map_or(0, |e| err_of(&e)));
        }
    }

    fn invalidate(self: &Arc<Self>, a: &Attachment, g: &ResvGuard<'_>) {
        self.log("inv", 0);
        let mut st = self.st.lock();
        match self.mode {
            KmodMode::Odp => self.do_unmap(&mut st, a, Some(g), "unmap-cb"),
            KmodMode::Gpu => {
                st.work_gen += 1;
                let mine = st.work_gen;
                let w = Arc::downgrade(self);
                let a = a.clone();
                let delay = self.latency;
                drop(st);
                thread::spawn(move || {
                    thread::sleep(delay);
                    if let Some(me) = w.upgrade() {
                        me.worker(&a, mine);
                    }
                });
            }
            KmodMode::Lazy => st.stale = st.sgt.is_some(),
            KmodMode::CacheLazy => {
                st.cached_err = 0;
                self.do_unmap(&mut st, a, Some(g), "unmap-cb");
            }
            KmodMode::CacheRevalidate => {
                st.cached_err = 0;
                self.do_unmap(&mut st, a, Some(g), "unmap-cb");
                if st.want {
                    let r = self.do_map(&mut st, a, Some(g), "remap-cb");
                    if r != 0 {
                        st.cached_err = r;
                    }
                }
            }
            KmodMode::Static | KmodMode::Pinned | KmodMode::Lying => {}
        }
    }

    fn worker(&self, a: &Attachment, generation: u64) {
        let buf = a.dmabuf().clone();
        let Ok(g) = buf.resv().lock(None) else {
            self.log("unmap-worker", errno::EINVAL.get());
            return;
        };
        let mut st = self.st.lock();
        // Re-armed since (a later invalidate owns the work) or cancelled.
        if st.work_gen != generation {
            return;
        }
        if st.attach.as_ref().is_some_and(|x| x.id() == a.id()) {
            self.do_unmap(&mut st, a, Some(&g), "unmap-worker");
        }
    }
}

impl TestImporter {
    /// `open("/dev/dmabuf_test_importer")`, to attach in `mode`; the gpu
    /// mode's worker runs `latency` after the last invalidate.
    pub fn open(mode: KmodMode, latency: Duration) -> Self {
        TestImporter(Arc::new(Inner {
            mode,
            latency,
            st: Mutex::new(State::default()),
            log: Mutex::new(Vec::new()),
        }))
    }

    /// `DTI_ATTACH` of the dma-buf behind `fd` from device `dev`.
    pub fn attach(&self, proc: &Process, fd: i32, dev: &str) -> Result<i64, i32> {
        if self.0.st.lock().attach.is_some() {
            return Err(errno::EBUSY.get());
        }
        let buf = proc.dma_buf_get(fd).map_err(|e| e.errno().get())?;
        let w: Weak<Inner> = Arc::downgrade(&self.0);
        let op: InvalidateFn = Arc::new(move |att: &Attachment, g: &ResvGuard<'_>| {
            if let Some(me) = w.upgrade() {
                me.invalidate(att, g);
            }
        });
        let r = match self.0.mode {
            KmodMode::Static => dma_buf::attach(&buf, dev),
            KmodMode::Pinned => dma_buf::dynamic_attach(
                &buf,
                dev,
                Some(AttachOps {
                    allow_peer2peer: true,
                    invalidate_mappings: None,
                }),
            ),
            _ => dma_buf::dynamic_attach(
                &buf,
                dev,
                Some(AttachOps {
                    allow_peer2peer: true,
                    invalidate_mappings: Some(op),
                }),
            ),
        };
        match r {
            Ok(att) => {
                let mut st = self.0.st.lock();
                let work_gen = st.work_gen;
                *st = State {
                    attach: Some(att),
                    buf: Some(buf),
                    work_gen,
                    ..State::default()
                };
                drop(st);
                self.0.log("attach", 0);
                Ok(0)
            }
            Err(e) => {
                self.0.log("attach", err_of(&e));
                Err(e.errno().get())
            }
        }
    }

    fn handles(&self) -> Result<(DmaBuf, Attachment), i32> {
        let st = self.0.st.lock();
        match (&st.buf, &st.attach) {
            (Some(b), Some(a)) => Ok((b.clone(), a.clone())),
            _ => Err(ENOTCONN),
        }
    }

    /// Runs `f` with the state, under the reservation lock for a dynamic
    /// attachment.
    fn locked<R>(
        &self,
        f: impl FnOnce(&Inner, &mut State, &Attachment, Option<&ResvGuard<'_>>) -> R,
    ) -> Result<R, i32> {
        let (buf, a) = self.handles()?;
        if self.0.mode == KmodMode::Static {
            let mut st = self.0.st.lock();
            return Ok(f(&self.0, &mut st, &a, None));
        }
        let g = buf.resv().lock(None).map_err(|e| e.errno().get())?;
        let mut st = self.0.st.lock();
        Ok(f(&self.0, &mut st, &a, Some(&g)))
    }

    /// `DTI_MAP`.
    pub fn map(&self) -> Result<i64, i32> {
        let caches = self.0.mode.caches();
        let r = self.locked(|me, st, a, g| {
            st.want = true;
            if st.cached_err != 0 {
                me.log("map-cached", st.cached_err);
                return st.cached_err;
            }
            if st.sgt.is_some() && !st.stale {
                me.log("map-kept", 0);
                return 0;
            }
            me.do_unmap(st, a, g, "unmap-stale");
            let r = me.do_map(st, a, g, "map");
            if r != 0 && caches {
                st.cached_err = r;
            }
            r
        })?;
        if r == 0 { Ok(0) } else { Err(r) }
    }

    /// `DTI_UNMAP` (what the watchdog calls).
    pub fn unmap(&self) -> Result<i64, i32> {
        let had = self.locked(|me, st, a, g| {
            st.want = false;
            let had = st.sgt.is_some();
            me.do_unmap(st, a, g, "unmap");
            had
        })?;
        if had { Ok(0) } else { Err(errno::EINVAL.get()) }
    }

    /// `DTI_PIN` / `DTI_UNPIN`.
    fn pin_or_unpin(&self, pin: bool) -> Result<i64, i32> {
        self.handles()?;
        if self.0.mode == KmodMode::Static {
            return Err(errno::EINVAL.get());
        }
        let r = self.locked(|me, st, a, g| {
            let Some(g) = g else {
                return errno::EINVAL.get();
            };
            let r = if pin {
                if st.pinned {
                    errno::EBUSY.get()
                } else {
                    let r = dma_buf::pin(a, g).err().map_or(0, |e| err_of(&e));
                    st.pinned = r == 0;
                    r
                }
            } else if !st.pinned {
                errno::EINVAL.get()
            } else {
                st.pinned = false;
                dma_buf::unpin(a, g).err().map_or(0, |e| err_of(&e))
            };
            me.log(if pin { "pin" } else { "unpin" }, r);
            r
        })?;
        if r == 0 { Ok(0) } else { Err(r) }
    }

    /// `DTI_DETACH` (also what closing the file does): unmaps, unpins,
    /// cancels the worker, detaches.
    pub fn detach(&self) -> Result<i64, i32> {
        self.locked(|me, st, a, g| {
            me.do_unmap(st, a, g, "unmap");
            if let (true, Some(g)) = (st.pinned, g) {
                st.pinned = false;
                let _ = dma_buf::unpin(a, g);
            }
        })?;
        let (buf, a) = {
            let mut st = self.0.st.lock();
            st.work_gen += 1;
            (st.buf.take(), st.attach.take())
        };
        if let (Some(b), Some(a)) = (buf, a) {
            let r = dma_buf::detach(&b, &a);
            self.0.log("detach", r.err().map_or(0, |e| err_of(&e)));
        }
        Ok(0)
    }

    /// The whole event log so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.log.lock().clone()
    }

    fn step(&self, proc: &Process, fd: i32, s: ScriptStep) -> Result<i64, i32> {
        match s {
            ScriptStep::Attach => self.attach(proc, fd, DEVICE),
            ScriptStep::Map => self.map(),
            ScriptStep::Unmap => self.unmap(),
            ScriptStep::Pin => self.pin_or_unpin(true),
            ScriptStep::Unpin => self.pin_or_unpin(false),
            ScriptStep::Detach => self.detach(),
            ScriptStep::Release => {
                let _ = self.detach();
                Ok(0)
            }
            _ => Err(errno::EINVAL.get()),
        }
    }
}

/// What an exporter operation did.
struct OpResult {
    result: Result<(), i32>,
    blocked: bool,
}

/// Runs `op` beside the watchdog (see the module documentation).
fn exporter_op(
    imp: &TestImporter,
    what: &str,
    op: impl FnOnce() -> Result<(), i32> + Send + 'static,
) -> Result<OpResult, String> {
    let slot: Arc<Mutex<Option<Result<(), i32>>>> = Arc::new(Mutex::new(None));
    let s2 = slot.clone();
    let _h = thread::spawn(move || {
        let r = op();
        *s2.lock() = Some(r);
    });
    let t0 = Instant::now();
    let mut blocked = false;
    loop {
        if let Some(r) = slot.lock().take() {
            return Ok(OpResult { result: r, blocked });
        }
        let el = t0.elapsed();
        if !blocked && el >= BLOCK {
            blocked = true;
            let _ = imp.unmap();
        }
        if el >= BLOCK + HANG {
            return Err(format!(
                "{what} did not return {} s after the importer unmapped",
                HANG.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `steps` with one `importer` (base `kmod`) of the buffer a VFIO
/// device under `protocol` exports (one page of BAR 0 of [`DEVICE`]).
pub fn run_script(
    protocol: &Protocol,
    importer: &ImporterSpec,
    steps: &[ScriptStep],
) -> Result<ScriptRun, String> {
    let mode = KmodMode::of(importer)?;
    let platform = Platform::new(
        PlatformConfig::default()
            .ram_frames(256)
            .device(DeviceConfig::new(DEVICE).bar(0, BAR0)),
    )
    .map_err(|e| format!("platform: {e}"))?;
    let host = Host::new(platform.clone());
    let pdev = platform
        .device(DEVICE)
        .map_err(|e| format!("{DEVICE}: {e}"))?;
    let vf = Arc::new(
        VfioPciDevice::bind(&host, pdev, Arc::new(protocol.clone()))
            .map_err(|e| format!("vfio bind: {e}"))?,
    );
    let proc = Process::new(1);
    let fd = vf
        .export_dma_buf(
            &proc,
            0,
            &[DmaRange {
                offset: 0,
                length: PAGE,
            }],
            O_RDWR | O_CLOEXEC,
        )
        .map_err(|e| format!("exporting BAR 0: {e}"))?;
    let imp = TestImporter::open(mode, importer.unmap_latency);
    let mut out: Vec<StepRecord> = Vec::with_capacity(steps.len());
    let mut cursor = 0;
    for (i, &s) in steps.iter().enumerate() {
        let (result, blocked) = if s.is_exporter() {
            let v = vf.clone();
            let op = move || -> Result<(), i32> {
                let r = match s {
                    ScriptStep::DeviceReset => v.reset(ResetKind::DeviceReset),
                    ScriptStep::DecodeOff => v.set_memory_decode(false),
                    ScriptStep::DecodeOn => v.set_memory_decode(true),
                    _ => v.close(),
                };
                r.map(|_| ()).map_err(|e| e.errno().get())
            };
            let r = exporter_op(&imp, &format!("step {} ({})", i + 1, s.name()), op)?;
            (r.result.map(|()| 0), Some(r.blocked))
        } else {
            (imp.step(&proc, fd, s), None)
        };
        // As the probe reads the log: right after each call returns.
        let log = imp.events();
        let events = log.get(cursor..).map(<[Event]>::to_vec).unwrap_or_default();
        cursor = log.len();
        out.push(StepRecord {
            step: s,
            result,
            blocked,
            events,
        });
    }
    let _ = imp.detach();
    let _ = proc.close(fd);
    Ok(ScriptRun { mode, steps: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::Library;

    const ODP: &str = r#"
[[importer]]
name = "k"
base = "kmod"
invalidate = "stop-and-unmap"
unmap = "in-callback"

[scenario]
name = "s"
exporter = "v6-final"
script = ["attach", "map", "device-reset", "map", "decode-off", "map", "decode-on", "map", "close", "map", "detach"]
"#;

    fn resolve(text: &str) -> Result<crate::builtin::ScriptScenario, crate::file::FileError> {
        let mut lib = Library::builtin().unwrap();
        let f = lib.add_text("t.toml", text)?;
        let s = f.scenario.clone().unwrap();
        lib.resolve_script(&s, &f)
    }

    fn text(r: &StepRecord) -> String {
        let ev: Vec<String> = r
            .events
            .iter()
            .map(|e| {
                if e.errno == 0 {
                    e.name.to_owned()
                } else {
                    format!("{}:{}", e.name, e.errno)
                }
            })
            .collect();
        format!("{:?} {:?} {}", r.result, r.blocked, ev.join("+"))
    }

    #[test]
    fn an_odp_script_records_each_steps_result_and_events_under_the_merged_protocol() {
        let s = resolve(ODP).unwrap();
        assert_eq!(s.exporter, "v6-final");
        let run = run_script(&s.protocol, &s.importer, &s.steps).unwrap();
        assert_eq!(run.mode, KmodMode::Odp);
        let got: Vec<String> = run.steps.iter().map(text).collect();
        let enodev = errno::ENODEV.get();
        assert_eq!(
            got,
            [
                "Ok(0) None attach".to_owned(),
                "Ok(0) None map".into(),
                "Ok(0) Some(false) inv+unmap-cb+inv".into(),
                "Ok(0) None map".into(),
                "Ok(0) Some(false) inv+unmap-cb".into(),
                format!("Err({enodev}) None map:{enodev}"),
                "Ok(0) Some(false) inv".into(),
                "Ok(0) None map".into(),
                "Ok(0) Some(false) inv+unmap-cb".into(),
                format!("Err({enodev}) None map:{enodev}"),
                "Ok(0) None detach".into(),
            ]
        );
    }

    #[test]
    fn state_errors_are_the_modules() {
        let text_ = ODP.replace(
            r#"script = ["attach", "map", "device-reset", "map", "decode-off", "map", "decode-on", "map", "close", "map", "detach"]"#,
            r#"script = ["map", "attach", "attach", "unmap", "map", "map", "unmap", "unpin", "pin", "pin", "unpin", "release", "detach"]"#,
        );
        let s = resolve(&text_).unwrap();
        let run = run_script(&s.protocol, &s.importer, &s.steps).unwrap();
        let r: Vec<Result<i64, i32>> = run.steps.iter().map(|x| x.result).collect();
        assert_eq!(
            r,
            [
                Err(ENOTCONN),
                Ok(0),
                Err(errno::EBUSY.get()),
                Err(errno::EINVAL.get()),
                Ok(0),
                Ok(0),
                Ok(0),
                Err(errno::EINVAL.get()),
                Ok(0),
                Err(errno::EBUSY.get()),
                Ok(0),
                Ok(0),
                Err(ENOTCONN),
            ]
        );
        assert_eq!(run.steps[5].events[0].name, "map-kept");
        assert_eq!(run.steps[11].events.last().unwrap().name, "detach");
    }

    #[test]
    fn each_field_combination_selects_one_mode_and_others_are_refused() {
        let mode = |fields: &str| {
            let t = format!("[[importer]]\nname = \"k\"\nbase = \"kmod\"\n{fields}\n");
            crate::file::parse("i.toml", &t).map(|f| KmodMode::of(&f.importers[0].spec).unwrap())
        };
        let cases = [
            (
                "invalidate = \"none\"\nunmap = \"on-free\"",
                KmodMode::Static,
            ),
            ("", KmodMode::Odp),
            (
                "invalidate = \"evict(bookkeep)\"\nunmap = \"worker-after-fences\"",
                KmodMode::Gpu,
            ),
            (
                "invalidate = \"none\"\nunmap = \"on-free\"\npin = true",
                KmodMode::Pinned,
            ),
            (
                "invalidate = \"ignore\"\nunmap = \"on-free\"",
                KmodMode::Lying,
            ),
            (
                "invalidate = \"evict(bookkeep)\"\nunmap = \"on-free\"",
                KmodMode::Lazy,
            ),
            ("remap = \"cache-enodev\"", KmodMode::CacheLazy),
            (
                "remap = \"cache-enodev-revalidate\"",
                KmodMode::CacheRevalidate,
            ),
        ];
        for (i, (f, m)) in cases.iter().enumerate() {
            assert_eq!(mode(f).unwrap(), *m, "{f}");
            assert_eq!(m.number(), i as u32, "the module's enum order");
        }
        let e = mode("invalidate = \"ignore\"\nunmap = \"in-callback\"").unwrap_err();
        assert!(e.message.contains("a kmod importer is one of"), "{e}");
        assert_eq!((e.line, e.col), (4, 14), "{e}");
        let e = mode("remap = \"revalidate\"").unwrap_err();
        assert!(e.message.contains("a kmod importer is one of"), "{e}");
    }

    #[test]
    fn scripts_and_worlds_do_not_mix() {
        // An unknown step points at it.
        let e = resolve(&ODP.replace("\"detach\"]", "\"detach\", \"flr\"]")).unwrap_err();
        assert!(e.message.contains("unknown script step 'flr'"), "{e}");
        assert_eq!(e.line, 11, "{e}");
        // A trigger beside a script.
        let e = resolve(&ODP.replace("exporter = ", "trigger = \"flr\"\nexporter = ")).unwrap_err();
        assert!(e.message.contains("has no trigger"), "{e}");
        let e = resolve(&ODP.replace("script = [\"attach\"", "script = [] #")).unwrap_err();
        assert!(e.message.contains("1 to 256 steps"), "{e}");
        // A script scenario is not a world, and a world has no kmod importer.
        let mut lib = Library::builtin().unwrap();
        let f = lib.add_text("t.toml", ODP).unwrap();
        let e = lib.resolve(f.scenario.as_ref().unwrap(), &f).unwrap_err();
        assert!(e.message.contains("is a script"), "{e}");
        let world = ODP.replace("script = [", "jobs = 1 # [");
        let mut lib = Library::builtin().unwrap();
        let f = lib.add_text("w.toml", &world).unwrap();
        let e = lib.resolve(f.scenario.as_ref().unwrap(), &f).unwrap_err();
        assert!(e.message.contains("runs only in a script scenario"), "{e}");
        let imp = ODP.split("[scenario]").next().unwrap();
        let mut lib = Library::builtin().unwrap();
        let f = lib.add_text("i.toml", imp).unwrap();
        let e = lib.questions(&f).unwrap_err();
        assert!(e.message.contains("not in matrix cells"), "{e}");
        // A script needs a kmod importer and a vfio-bar exporter.
        let e = resolve(
            "[scenario]\nname = \"s\"\nexporter = \"v6-final\"\nimporters = [\"gpu\"]\nscript = [\"attach\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("a script needs a kmod importer"), "{e}");
        let e = resolve(&ODP.replace("\"v6-final\"", "\"system-heap\"")).unwrap_err();
        assert!(e.message.contains("needs a vfio-bar exporter"), "{e}");
    }

    #[test]
    fn a_lying_importer_blocks_the_merged_revoke_until_the_watchdog_unmaps() {
        let t = ODP
            .replace(
                "invalidate = \"stop-and-unmap\"\nunmap = \"in-callback\"",
                "invalidate = \"ignore\"\nunmap = \"on-free\"",
            )
            .replace(
                r#"script = ["attach", "map", "device-reset", "map", "decode-off", "map", "decode-on", "map", "close", "map", "detach"]"#,
                r#"script = ["attach", "map", "decode-off", "decode-on"]"#,
            );
        let s = resolve(&t).unwrap();
        let run = run_script(&s.protocol, &s.importer, &s.steps).unwrap();
        assert_eq!(run.mode, KmodMode::Lying);
        assert_eq!(text(&run.steps[2]), "Ok(0) Some(true) inv+unmap");
        assert_eq!(text(&run.steps[3]), "Ok(0) Some(false) inv");
    }
}
