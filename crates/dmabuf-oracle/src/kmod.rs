//! Our back end of the `kmod` part: a twin of the test importer module
//! (`kmod/dmabuf_test_importer.c`) written against the project's dma-buf
//! core, attached to the project's VFIO exporter with the merged 7.1
//! protocol, and driven through the same scenario as the probe's
//! `kmod_part`.
//!
//! # The twin (kernel name → here)
//!
//! | kernel | here |
//! |---|---|
//! | `/dev/dmabuf_test_importer`, one open file | [`TestImporter`] |
//! | `DTI_ATTACH` with `struct dti_attach` | [`TestImporter::attach`] with [`AttachArgs`] (`None`: a NULL argument) |
//! | `DTI_MAP`, `DTI_UNMAP`, `DTI_PIN`, `DTI_UNPIN`, `DTI_DETACH`, `DTI_MARK` | the methods of the same name |
//! | `dma_buf_attach` / `dma_buf_dynamic_attach` | `dma_buf::attach` / `dma_buf::dynamic_attach` |
//! | `invalidate_mappings` op | an [`InvalidateFn`] holding a weak reference to the importer |
//! | the gpu mode's delayed work | a thread that sleeps [`GPU_DELAY`] and unmaps under the reservation lock |
//! | `read()` of the event log | [`TestImporter::take_events`] (timestamps left out: they are not compared) |
//!
//! # Modes and states
//!
//! As the module's table: `static` (no ops), `odp` (unmaps in the callback),
//! `gpu` (unmaps from a worker), `pinned` (peer2peer ops without the
//! invalidate op), `lying` (ignores the callback), `lazy` (marks the mapping
//! stale; unmaps when told or at the next map), `cache_lazy` (unmaps in the
//! callback, caches a map's ENODEV until the next invalidate),
//! `cache_revalidate` (unmaps and maps again inside the callback, caching
//! its error). The attachment goes Detached → Attached ⇄ Mapped → Detached;
//! the errnos of bad input are the module's (ENOTCONN without an
//! attachment, EINVAL for a double unmap, an unknown mode or a marker above
//! 255, EBUSY for a second attach, ENODEV for an absent device, EFAULT for
//! a NULL argument, ENOTTY for an unknown command).
//!
//! # Locks
//!
//! The mapping state is taken under the buffer's reservation lock, which
//! the exporter holds when it calls the op: order reservation lock → state
//! → log, everywhere (shim mutexes). The attachment and buffer handles are
//! cloned out of the state before the reservation lock is taken.
//!
//! # Exporter operations
//!
//! [`exporter_op`] runs `VFIO_DEVICE_RESET`, the memory-decode writes and
//! the close on a thread of their own, as the probe does beside its
//! watchdog: if the operation has not returned after [`BLOCK`] the importer
//! is told to unmap and the outcome says `blocked=1`; if it still has not
//! returned [`HANG`] later the run fails with a message naming the mode and
//! the operation.

use crate::cases::{KMOD_MODES, KMOD_STEPS};
use crate::exporters::{Exporters, Vfio};
use crate::model::{errno_name, feat};
use crate::serial::Outcome;
use dmabuf_core::dma_buf::{
    self, AttachOps, Attachment, DmaBuf, DmaDirection, InvalidateFn, Mapping,
};
use dmabuf_core::dma_resv::ResvGuard;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::thread;
use dmabuf_core::sync::{Arc, Mutex, Weak};
use dmabuf_core::uapi::Process;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The gpu mode's worker delay (the probe passes `delay_ms = 50`).
pub const GPU_DELAY: Duration = Duration::from_millis(50);
/// How long an exporter operation may take before the importer is told to
/// unmap: the probe's 2 s (`KMOD_BLOCK_MS`), so that an exporter whose wait
/// for the unmaps is bounded by less (v5 of the series: 1 s) returns by
/// itself on both sides and shows `blocked=0`.
pub const BLOCK: Duration = Duration::from_secs(2);
/// How long after that the run gives up.
pub const HANG: Duration = Duration::from_secs(10);
/// `ENOTCONN`.
pub const ENOTCONN: Errno = Errno::new(107);
/// The importing device: the exporter's own PCI device, as in the guest.
pub const IMPORT_DEV: &str = "edu";

/// The importer kinds (enum dti_mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `dma_buf_attach`, no ops.
    Static,
    /// Unmaps inside the callback.
    Odp,
    /// Unmaps from a worker after [`GPU_DELAY`].
    Gpu,
    /// peer2peer ops without `invalidate_mappings`.
    Pinned,
    /// Declares the op and ignores it.
    Lying,
    /// Marks the mapping stale.
    Lazy,
    /// Unmaps in the callback; caches a map error until the next invalidate.
    CacheLazy,
    /// Unmaps and maps again in the callback, caching its error.
    CacheRevalidate,
}

impl Mode {
    /// The mode of number `n` (the module's `mode` field).
    pub fn from_number(n: u32) -> Option<Mode> {
        Some(match n {
            0 => Mode::Static,
            1 => Mode::Odp,
            2 => Mode::Gpu,
            3 => Mode::Pinned,
            4 => Mode::Lying,
            5 => Mode::Lazy,
            6 => Mode::CacheLazy,
            7 => Mode::CacheRevalidate,
            _ => return None,
        })
    }

    fn caches(self) -> bool {
        matches!(self, Mode::CacheLazy | Mode::CacheRevalidate)
    }
}

/// `struct dti_attach`.
#[derive(Clone, Debug)]
pub struct AttachArgs {
    /// The dma-buf fd.
    pub fd: i32,
    /// The mode number.
    pub mode: u32,
    /// The importing device's name (the module takes a PCI location).
    pub dev: String,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    buf: Option<DmaBuf>,
    attach: Option<Attachment>,
    sgt: Option<Mapping>,
    stale: bool,
    want: bool,
    pinned: bool,
    cached_err: i32,
}

struct Inner {
    st: Mutex<State>,
    log: Mutex<Vec<(&'static str, i32)>>,
    cursor: Mutex<usize>,
    devices: Vec<String>,
}

/// One open file of the test importer.
#[derive(Clone)]
pub struct TestImporter(Arc<Inner>);

fn err_of(e: &impl AsErrno) -> i32 {
    e.errno().to_negative()
}

impl Inner {
    fn log(&self, ev: &'static str, ret: i32) {
        self.log.lock().push((ev, ret));
    }

    /// Maps; the caller holds `g` for a dynamic attachment.
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
        let mode = st.mode;
        match mode {
            Some(Mode::Odp) => self.do_unmap(&mut st, a, Some(g), "unmap-cb"),
            Some(Mode::Gpu) => {
                let w = Arc::downgrade(self);
                let a = a.clone();
                drop(st);
                thread::spawn(move || {
                    thread::sleep(GPU_DELAY);
                    if let Some(me) = w.upgrade() {
                        me.worker(&a);
                    }
                });
            }
            Some(Mode::Lazy) => st.stale = st.sgt.is_some(),
            Some(Mode::CacheLazy) => {
                st.cached_err = 0;
                self.do_unmap(&mut st, a, Some(g), "unmap-cb");
            }
            Some(Mode::CacheRevalidate) => {
                st.cached_err = 0;
                self.do_unmap(&mut st, a, Some(g), "unmap-cb");
                if st.want {
                    let r = self.do_map(&mut st, a, Some(g), "remap-cb");
                    if r != 0 {
                        st.cached_err = r;
                    }
                }
            }
            _ => {}
        }
    }

    fn worker(&self, a: &Attachment) {
        let buf = a.dmabuf().clone();
        let Ok(g) = buf.resv().lock(None) else {
            self.log("unmap-worker", errno::EINVAL.to_negative());
            return;
        };
        let mut st = self.st.lock();
        // The attachment may have been detached meanwhile: only its own mapping.
        if st.attach.as_ref().is_some_and(|x| x.id() == a.id()) {
            self.do_unmap(&mut st, a, Some(&g), "unmap-worker");
        }
    }
}

impl TestImporter {
    /// `open("/dev/dmabuf_test_importer")` on a machine with `devices`.
    pub fn open(devices: &[&str]) -> Self {
        TestImporter(Arc::new(Inner {
            st: Mutex::new(State::default()),
            log: Mutex::new(Vec::new()),
            cursor: Mutex::new(0),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        }))
    }

    /// `DTI_ATTACH`; `None` is a NULL argument.
    pub fn attach(&self, proc: &Process, args: Option<&AttachArgs>) -> Result<i64, Errno> {
        let a = args.ok_or(errno::EFAULT)?;
        let mode = Mode::from_number(a.mode).ok_or(errno::EINVAL)?;
        if self.0.st.lock().attach.is_some() {
            return Err(errno::EBUSY);
        }
        let buf = proc.dma_buf_get(a.fd).map_err(|e| e.errno())?;
        if !self.0.devices.contains(&a.dev) {
            return Err(errno::ENODEV);
        }
        let w: Weak<Inner> = Arc::downgrade(&self.0);
        let op: InvalidateFn = Arc::new(move |att: &Attachment, g: &ResvGuard<'_>| {
            if let Some(me) = w.upgrade() {
                me.invalidate(att, g);
            }
        });
        {
            let mut st = self.0.st.lock();
            *st = State {
                mode: Some(mode),
                ..State::default()
            };
        }
        let r = match mode {
            Mode::Static => dma_buf::attach(&buf, &a.dev),
            Mode::Pinned => dma_buf::dynamic_attach(
                &buf,
                &a.dev,
                Some(AttachOps {
                    allow_peer2peer: true,
                    invalidate_mappings: None,
                }),
            ),
            _ => dma_buf::dynamic_attach(
                &buf,
                &a.dev,
                Some(AttachOps {
                    allow_peer2peer: true,
                    invalidate_mappings: Some(op),
                }),
            ),
        };
        match r {
            Ok(att) => {
                let mut st = self.0.st.lock();
                st.attach = Some(att);
                st.buf = Some(buf);
                self.0.log("attach", 0);
                Ok(0)
            }
            Err(e) => {
                self.0.log("attach", err_of(&e));
                self.0.st.lock().mode = None;
                Err(e.errno())
            }
        }
    }

    fn handles(&self) -> Result<(Mode, DmaBuf, Attachment), Errno> {
        let st = self.0.st.lock();
        match (st.mode, &st.buf, &st.attach) {
            (Some(m), Some(b), Some(a)) => Ok((m, b.clone(), a.clone())),
            _ => Err(ENOTCONN),
        }
    }

    /// Runs `f` with the state, under the reservation lock for a dynamic
    /// attachment.
    fn locked<R>(
        &self,
        f: impl FnOnce(&Inner, &mut State, &Attachment, Option<&ResvGuard<'_>>) -> R,
    ) -> Result<R, Errno> {
        let (mode, buf, a) = self.handles()?;
        if mode == Mode::Static {
            let mut st = self.0.st.lock();
            return Ok(f(&self.0, &mut st, &a, None));
        }
        let g = buf.resv().lock(None).map_err(|e| e.errno())?;
        let mut st = self.0.st.lock();
        Ok(f(&self.0, &mut st, &a, Some(&g)))
    }

    /// `DTI_MAP`.
    pub fn map(&self) -> Result<i64, Errno> {
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
            if r != 0 && st.mode.is_some_and(Mode::caches) {
                st.cached_err = r;
            }
            r
        })?;
        if r == 0 { Ok(0) } else { Err(Errno::new(r)) }
    }

    /// `DTI_UNMAP` (the lying and lazy importers' "told to unmap").
    pub fn unmap(&self) -> Result<i64, Errno> {
        let had = self.locked(|me, st, a, g| {
            st.want = false;
            let had = st.sgt.is_some();
            me.do_unmap(st, a, g, "unmap");
            had
        })?;
        if had { Ok(0) } else { Err(errno::EINVAL) }
    }

    /// `DTI_PIN` (`dma_buf_pin`; VFIO has no pin op, so it is a no-op
    /// answering 0 on both sides; the scenario pins nothing).
    pub fn pin(&self) -> Result<i64, Errno> {
        self.pin_or_unpin(true)
    }

    /// `DTI_UNPIN`.
    pub fn unpin(&self) -> Result<i64, Errno> {
        self.pin_or_unpin(false)
    }

    fn pin_or_unpin(&self, pin: bool) -> Result<i64, Errno> {
        let (mode, _, _) = self.handles()?;
        if mode == Mode::Static {
            return Err(errno::EINVAL);
        }
        let r = self.locked(|me, st, a, g| {
            let Some(g) = g else {
                return errno::EINVAL.to_negative();
            };
            let r = if pin {
                if st.pinned {
                    errno::EBUSY.to_negative()
                } else {
                    let r = dma_buf::pin(a, g).err().map_or(0, |e| err_of(&e));
                    st.pinned = r == 0;
                    r
                }
            } else if !st.pinned {
                errno::EINVAL.to_negative()
            } else {
                st.pinned = false;
                dma_buf::unpin(a, g).err().map_or(0, |e| err_of(&e))
            };
            me.log(if pin { "pin" } else { "unpin" }, r);
            r
        })?;
        if r == 0 { Ok(0) } else { Err(Errno::new(r)) }
    }

    /// The commands without an argument by their number (`_IO('D', nr)`):
    /// 2 map, 3 unmap, 4 pin, 5 unpin, 6 detach, 8 clear; anything else ENOTTY, as
    /// the module's switch.
    pub fn command(&self, nr: u32) -> Result<i64, Errno> {
        match nr {
            2 => self.map(),
            3 => self.unmap(),
            4 => self.pin(),
            5 => self.unpin(),
            6 => self.detach(),
            8 => {
                self.0.log.lock().clear();
                *self.0.cursor.lock() = 0;
                Ok(0)
            }
            _ => Err(errno::ENOTTY),
        }
    }

    /// `DTI_MARK`.
    pub fn mark(&self, v: u64) -> Result<i64, Errno> {
        if v > 255 {
            return Err(errno::EINVAL);
        }
        Ok(0)
    }

    /// `DTI_DETACH` (also what closing the file does).
    pub fn detach(&self) -> Result<i64, Errno> {
        self.locked(|me, st, a, g| {
            me.do_unmap(st, a, g, "unmap");
            if let (true, Some(g)) = (st.pinned, g) {
                st.pinned = false;
                let _ = dma_buf::unpin(a, g);
            }
        })?;
        let (buf, a) = {
            let mut st = self.0.st.lock();
            st.mode = None;
            (st.buf.take(), st.attach.take())
        };
        if let (Some(b), Some(a)) = (buf, a) {
            let r = dma_buf::detach(&b, &a);
            self.0.log("detach", r.err().map_or(0, |e| err_of(&e)));
        }
        Ok(0)
    }

    /// The events since the last call, as the probe formats them: `a+b:ERR`
    /// (the errno only when nonzero), `none` when there is none.
    pub fn take_events(&self) -> String {
        let log = self.0.log.lock();
        let mut cur = self.0.cursor.lock();
        let s: Vec<String> = log[*cur..]
            .iter()
            .map(|&(ev, r)| {
                if r == 0 {
                    ev.to_owned()
                } else {
                    format!("{ev}:{}", errno_name(-r))
                }
            })
            .collect();
        *cur = log.len();
        if s.is_empty() {
            "none".into()
        } else {
            s.join("+")
        }
    }
}

/// What an exporter operation did: its result and whether the importer had
/// to be told to unmap before it returned.
pub struct OpResult {
    /// The operation's result (the errno on failure).
    pub result: Result<(), Errno>,
    /// The operation had not returned after [`BLOCK`].
    pub blocked: bool,
}

/// Runs `op` beside a watchdog (see the module documentation).
pub fn exporter_op(
    imp: &TestImporter,
    what: &str,
    op: impl FnOnce() -> Result<(), Errno> + Send + 'static,
) -> Result<OpResult, String> {
    let slot: Arc<Mutex<Option<Result<(), Errno>>>> = Arc::new(Mutex::new(None));
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
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Out(BTreeMap<String, Outcome>);

impl Out {
    fn res(&mut self, id: &str, r: Result<i64, Errno>, extra: &str) {
        let o = match r {
            Ok(v) => Outcome::new(v, "0", extra),
            Err(e) => Outcome::new(-1, &errno_name(e.get()), extra),
        };
        self.0.insert(id.to_owned(), o);
    }
}

const DEVICES: &[&str] = &[IMPORT_DEV, "vgem"];
const PAGE: u64 = 4096;
const GET_DMA_BUF: u32 = (1 << 16) | 11;
const O_RDWR_CLOEXEC: u32 = 0o2 | 0o2000000;

fn export(vf: &Vfio, p: &Process) -> Result<i32, String> {
    vf.feature(
        p,
        &feat(GET_DMA_BUF, 0, O_RDWR_CLOEXEC, 0, 1, &[(0, PAGE)], 0),
    )
    .map_err(|e| format!("exporting BAR0: {}", errno_name(e.get())))
}

fn args(fd: i32, mode: u32, dev: &str) -> AttachArgs {
    AttachArgs {
        fd,
        mode,
        dev: dev.to_owned(),
    }
}

/// probe.c `kmod_bad`.
fn bad_input(o: &mut Out, protocol: &Protocol) -> Result<(), String> {
    let ex = Exporters::new()?;
    let vf = ex.vfio_with(protocol.clone())?;
    let proc = Process::new(1);
    let p = &*proc;
    let b = export(&vf, p)?;
    // A sync_file of the buffer: an fd that is not a dma-buf.
    let mut sfa = [0u8; 8];
    sfa[..4].copy_from_slice(&3u32.to_le_bytes());
    p.ioctl_buf(
        b,
        dmabuf_core::uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
        &mut sfa,
    )
    .map_err(|e| format!("export sync_file: {}", errno_name(e.errno().get())))?;
    let sf = i32::from_le_bytes([sfa[4], sfa[5], sfa[6], sfa[7]]);
    let s = TestImporter::open(DEVICES);
    o.res(
        "kmod.bad.unknown_mode",
        s.attach(p, Some(&args(b, 99, IMPORT_DEV))),
        "-",
    );
    o.res(
        "kmod.bad.not_dmabuf",
        s.attach(p, Some(&args(sf, 1, IMPORT_DEV))),
        "-",
    );
    o.res(
        "kmod.bad.closed_fd",
        s.attach(p, Some(&args(-1, 1, IMPORT_DEV))),
        "-",
    );
    o.res(
        "kmod.bad.no_pci_device",
        s.attach(p, Some(&args(b, 1, "absent"))),
        "-",
    );
    o.res("kmod.bad.null_argument", s.attach(p, None), "-");
    o.res("kmod.bad.map_unattached", s.map(), "-");
    o.res("kmod.bad.unmap_unattached", s.unmap(), "-");
    o.res("kmod.bad.detach_unattached", s.detach(), "-");
    o.res("kmod.bad.unknown_ioctl", s.command(99), "-");
    o.res("kmod.bad.mark_256", s.mark(256), "-");
    o.res(
        "kmod.bad.attach",
        s.attach(p, Some(&args(b, 1, IMPORT_DEV))),
        "-",
    );
    o.res(
        "kmod.bad.attach_twice",
        s.attach(p, Some(&args(b, 1, IMPORT_DEV))),
        "-",
    );
    o.res("kmod.bad.unmap_unmapped", s.unmap(), "-");
    o.res("kmod.bad.map", s.map(), "-");
    o.res("kmod.bad.map_again", s.map(), "-");
    o.res("kmod.bad.unmap", s.unmap(), "-");
    o.res("kmod.bad.double_unmap", s.unmap(), "-");
    o.res("kmod.bad.unpin_unpinned", s.unpin(), "-");
    o.res("kmod.bad.pin", s.pin(), "-");
    o.res("kmod.bad.pin_twice", s.pin(), "-");
    o.res("kmod.bad.unpin", s.unpin(), "-");
    o.res("kmod.bad.detach", s.detach(), "-");
    o.res("kmod.bad.map_after_detach", s.map(), "-");
    let s2 = TestImporter::open(DEVICES);
    let _ = s2.attach(p, Some(&args(b, 1, IMPORT_DEV)));
    let _ = s2.map();
    // close() of the importer's file: release detaches (close returns 0).
    o.res("kmod.bad.close_mapped", s2.detach().map(|_| 0), "-");
    let _ = p.close(sf);
    let _ = p.close(b);
    Ok(())
}

/// probe.c `kmod_part`, one importer kind.
fn scenario(o: &mut Out, m: u32, mode: &str, protocol: &Protocol) -> Result<(), String> {
    let ex = Exporters::new()?;
    let vf = Arc::new(ex.vfio_with(protocol.clone())?);
    let proc = Process::new(1);
    let p = &*proc;
    let b = export(&vf, p)?;
    let s = TestImporter::open(DEVICES);
    let id = |step: &str| format!("kmod.{mode}.{step}");
    let r = s.attach(p, Some(&args(b, m, IMPORT_DEV)));
    o.res(&id("attach"), r, &s.take_events());
    let call = |o: &mut Out, step: &str, r: Result<i64, Errno>| {
        o.res(&id(step), r, &s.take_events());
    };
    let op = |o: &mut Out, step: &str, f: Box<dyn FnOnce() -> Result<(), Errno> + Send>| {
        let r = exporter_op(&s, &format!("{mode} {step}"), f)?;
        let x = format!("blocked={},ev={}", u8::from(r.blocked), s.take_events());
        o.res(&id(step), r.result.map(|_| 0), &x);
        Ok::<(), String>(())
    };
    call(o, "map", s.map());
    let v = vf.clone();
    op(o, "reset", Box::new(move || v.reset()))?;
    call(o, "map_after_reset", s.map());
    let v = vf.clone();
    op(o, "memory_off", Box::new(move || v.memory(false)))?;
    call(o, "map_while_off", s.map());
    let v = vf.clone();
    op(o, "memory_on", Box::new(move || v.memory(true)))?;
    call(o, "map_after_on", s.map());
    let v = vf.clone();
    op(o, "close", Box::new(move || v.close()))?;
    call(o, "map_after_close", s.map());
    call(o, "detach", s.detach());
    let _ = p.close(b);
    Ok(())
}

/// Runs the `kmod` part on our back end: the VFIO exporter with the merged
/// 7.1 protocol.
pub fn run_kmod() -> Result<BTreeMap<String, Outcome>, String> {
    run_kmod_with(&Protocol::merged())
}

/// Runs the `kmod` part with the VFIO exporter under `protocol`.
pub fn run_kmod_with(protocol: &Protocol) -> Result<BTreeMap<String, Outcome>, String> {
    let mut o = Out(BTreeMap::new());
    o.res(
        "kmod.setup",
        Ok(0),
        "container=open,group=open,importer=open",
    );
    bad_input(&mut o, protocol)?;
    for (m, mode) in KMOD_MODES.iter().enumerate() {
        scenario(&mut o, m as u32, mode, protocol)?;
    }
    debug_assert_eq!(KMOD_STEPS.len(), 11);
    Ok(o.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::Part;

    #[test]
    fn the_twin_answers_the_case_list_and_the_merged_protocol_blocks_on_a_lying_importer() {
        // One run (six operations wait for the 2 s watchdog).
        let m = run_kmod().unwrap();
        let mut want: Vec<&str> = Part::Kmod.cases().to_vec();
        want.sort_unstable();
        let got: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(got, want);
        // The merged revoke waits for every unmap without a bound.
        assert_eq!(m["kmod.lying.reset"].extra, "blocked=1,ev=inv+unmap+inv");
        assert_eq!(m["kmod.lazy.close"].extra, "blocked=1,ev=inv+unmap");
        // An importer that unmaps in the callback lets it return at once.
        assert_eq!(m["kmod.odp.reset"].extra, "blocked=0,ev=inv+unmap-cb+inv");
        assert_eq!(
            m["kmod.gpu.reset"].extra,
            "blocked=0,ev=inv+unmap-worker+inv"
        );
        // VFIO refuses importers that cannot be revoked.
        assert_eq!(m["kmod.static.attach"].errno, "EOPNOTSUPP");
        assert_eq!(m["kmod.pinned.attach"].errno, "EOPNOTSUPP");
        // The un-revoke invalidates while the buffer is still revoked: a
        // re-validating importer caches ENODEV for good.
        assert_eq!(m["kmod.cache_revalidate.map_after_on"].errno, "ENODEV");
        assert_eq!(m["kmod.cache_lazy.map_after_on"].errno, "0");
        for (id, e) in [
            ("kmod.bad.unknown_mode", "EINVAL"),
            ("kmod.bad.double_unmap", "EINVAL"),
            ("kmod.bad.not_dmabuf", "EINVAL"),
            ("kmod.bad.closed_fd", "EBADF"),
            ("kmod.bad.map_unattached", "ENOTCONN"),
            ("kmod.bad.unknown_ioctl", "ENOTTY"),
            ("kmod.bad.null_argument", "EFAULT"),
            ("kmod.bad.attach_twice", "EBUSY"),
            ("kmod.bad.pin_twice", "EBUSY"),
        ] {
            assert_eq!(m[id].errno, e, "{id}");
            assert_eq!(m[id].ret, -1, "{id}");
        }
    }

    #[test]
    fn v5_of_the_series_would_disagree_with_the_kernel() {
        // v5 (Message-ID <20260124-dmabuf-revoke-v5-4-f98fca917e96@nvidia.com>):
        // the unmap wait gives up after 1 s, and un-revoke clears the flag
        // before it invalidates. The comparison must tell it apart.
        let mut v5 = Protocol::merged();
        v5.name = "v5-unmap-timeout".into();
        v5.revoke = dmabuf_core::revoke::Sequence::parse(&[
            "dma_resv_lock",
            "set_revoked",
            "dma_buf_invalidate_mappings",
            "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
            "dma_resv_unlock",
            "kref_put",
            "wait_for_completion_timeout(1s)",
        ])
        .unwrap();
        v5.unrevoke = dmabuf_core::revoke::Sequence::parse(&[
            "dma_resv_lock",
            "clear_revoked",
            "dma_buf_invalidate_mappings",
            "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
            "dma_resv_unlock",
            "kref_init",
            "reinit_completion",
        ])
        .unwrap();
        let m = run_kmod_with(&v5).unwrap();
        // The reset gives up waiting for the lying importer by itself.
        assert!(
            m["kmod.lying.reset"].extra.starts_with("blocked=0,"),
            "{:?}",
            m["kmod.lying.reset"]
        );
        // The un-revoke's invalidate comes after the flag is cleared: the
        // re-validating importer maps again (on 7.2.13 it never does).
        assert_eq!(m["kmod.cache_revalidate.map_after_on"].errno, "0");
        assert_eq!(
            m["kmod.cache_revalidate.memory_on"].extra,
            "blocked=0,ev=inv+remap-cb"
        );
    }

    #[test]
    fn the_watchdog_reports_only_an_operation_that_outlives_it() {
        // The watchdog itself: an operation that never returns until the
        // importer unmaps is reported blocked, one that returns is not.
        let s = TestImporter::open(DEVICES);
        let quick = exporter_op(&s, "quick", || Ok(())).unwrap();
        assert!(!quick.blocked);
        let slow = exporter_op(&s, "slow", || {
            thread::sleep(BLOCK + Duration::from_millis(100));
            Err(errno::EIO)
        })
        .unwrap();
        assert!(slow.blocked);
        assert_eq!(slow.result, Err(errno::EIO));
    }
}
