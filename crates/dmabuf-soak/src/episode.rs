//! One episode of the soak on real threads: a fresh machine, its exporter,
//! the buffers, the imports, the jobs, the CPU and fence traffic, the
//! exporter event and the faults; then teardown and the per-episode checks.
//!
//! # Threads of an episode
//!
//! | thread | does | fault it may suffer |
//! |---|---|---|
//! | the worker (`soak-wN`) | builds the machine, exports the buffers (the VMM), runs the exporter event, joins, tears down, checks | allocation failures while exporting |
//! | `imp{i}` per import | setup; jobs behind the gate; fence polls and waits through the ioctl layer; more jobs after the event (re-map after an un-revoke); dma-buf mmap and `DMA_BUF_IOCTL_SYNC`; teardown | allocation failures; its process killed; its device unplugged |
//! | `gate` | signals the gate fence just after the event began, so the gated jobs are in flight across it | |
//! | `cpu` (VFIO, when drawn) | mmaps BAR 0 and writes until the event is over | |
//! | `killer` | closes every fd of the victim process at its moment | |
//! | `unplug` | surprise-removes one import's device as soon as the gate opened | |
//!
//! Importers' kernel workers and DMA engines are the drivers' own threads.
//!
//! # A kill
//!
//! The victim's fds are all closed at once (`Process::close_all`, what
//! `do_exit` does through `exit_files`). A killed import's thread then does
//! no more userspace work and goes straight to the driver's release
//! (`Importer::teardown`, as the file release of the importing driver
//! would). A killed exporter process on VFIO also releases the device fd
//! (`vfio_pci_dma_buf_cleanup`: a revoke of every buffer).
//!
//! # Ordering
//!
//! Phase changes go through one shim mutex and condvar; every wait on them
//! is bounded, so an episode ends even when an event never comes. Job and
//! fence waits are not bounded: a job that never completes is what the
//! watchdog reports.

use crate::check::{self, FindingKind};
use crate::plan::{Episode, Event, PlanConfig, Victim, exporter_name};
use crate::shared::{Op, Shared, set_thread_alloc_failures};
use dmabuf_core::dma_buf::DmaBufRef;
use dmabuf_core::errno::{AsErrno, Errno};
use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::thread::{self, JoinHandle};
use dmabuf_core::sync::time::now_ns;
use dmabuf_core::sync::{Arc, Condvar, Mutex};
use dmabuf_core::uapi::{
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE, DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_END, DMA_BUF_SYNC_RW, EPOLLIN,
    EPOLLOUT, Process,
};
use dmabuf_core::{Fence, FenceContext};
use dmabuf_drivers::gpu_vram::GpuVram;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::importers::{ImportError, Importer, Job};
use dmabuf_drivers::system_heap::SystemHeap;
use dmabuf_drivers::vfio::{ResetKind, RevokeEvent, TriggerReport, VfioError, VfioPciDevice};
use dmabuf_drivers::vfio_uapi::DmaRange;
use dmabuf_platform::{Accessor, DeviceConfig, PAGE_SIZE, Platform, PlatformConfig, PowerState};
use dmabuf_scenario::runner::make_importer;
use dmabuf_scenario::world::{ExporterKind, ImporterBase, ImporterSpec};
use std::time::Duration;

/// Pages per buffer.
pub const BUF_PAGES: u64 = 2;
const BAR_SIZE: u64 = 0x10000;
/// Unmap latency of a slow GPU worker (the slow-worker fault).
pub const SLOW_WORKER: Duration = Duration::from_millis(5);
const GATE_DELAY: Duration = Duration::from_micros(30);
const WINDOW: Duration = Duration::from_micros(100);
const PHASE_WAIT: Duration = Duration::from_millis(5);
const CPU_WRITES: usize = 8;

#[derive(Default)]
struct Phase {
    setups_done: usize,
    event_begun: bool,
    unrevoked: bool,
    remapped: usize,
    event_done: bool,
    gate_open: bool,
}

struct Coord {
    st: Mutex<Phase>,
    cv: Condvar,
}

impl Coord {
    fn update(&self, f: impl FnOnce(&mut Phase)) {
        f(&mut self.st.lock());
        self.cv.notify_all();
    }

    fn wait(&self, pred: impl Fn(&Phase) -> bool, timeout: Duration) -> bool {
        let deadline = now_ns().saturating_add(timeout.as_nanos() as u64);
        let mut g = self.st.lock();
        loop {
            if pred(&g) {
                return true;
            }
            let now = now_ns();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_nanos(deadline - now))
                .0;
        }
    }
}

enum Exporter {
    Vfio(VfioPciDevice),
    Heap(SystemHeap),
    Vram(GpuVram),
}

struct Import {
    imp: Arc<dyn Importer>,
    proc: Arc<Process>,
    fd: Option<i32>,
    kind: String,
    dev: String,
    killed: Arc<dmabuf_core::sync::atomic::AtomicBool>,
}

fn errno_of(e: &ImportError) -> Errno {
    e.errno()
}

/// What the episode needs besides the plan.
pub struct Ctx<'a> {
    /// Shared state.
    pub sh: &'a Arc<Shared>,
    /// The plan's configuration (importer names).
    pub plan: &'a PlanConfig,
    /// Importer specs, by the plan's kind index.
    pub specs: &'a [ImporterSpec],
    /// The run's seed.
    pub seed: u64,
}

/// Runs one episode and records what it showed into `ctx.sh`.
pub fn run(ctx: &Ctx<'_>, ep: &Episode) {
    let sh = ctx.sh;
    let me = sh.task(ep.index, thread_name());
    me.step("build");
    let names: Vec<String> = ep
        .imports
        .iter()
        .enumerate()
        .map(|(i, imp)| format!("{}{i}", ctx.plan.importers[imp.kind as usize]))
        .collect();
    let mut cfg = PlatformConfig::default().switch("sw0").ram_frames(512);
    cfg.flr_delay = WINDOW;
    cfg.max_devices = 16 + names.len();
    cfg = match ep.exporter {
        ExporterKind::Vfio => cfg.device(
            DeviceConfig::new("vfio0")
                .bar(0, BAR_SIZE)
                .behind_switch("sw0"),
        ),
        ExporterKind::GpuVram => cfg.device(
            DeviceConfig::new("vram0")
                .bar(0, BAR_SIZE)
                .behind_switch("sw0"),
        ),
        // Not soaked (`plan::exporter_by_name` never selects it).
        ExporterKind::SystemHeap | ExporterKind::RdmaDm => cfg,
    };
    for n in &names {
        cfg = cfg.device(DeviceConfig::new(n.clone()).behind_switch("sw0"));
    }
    let platform = match Platform::new(cfg) {
        Ok(p) => p,
        Err(e) => {
            sh.error(format!("platform/{}", short(&e.to_string())));
            return;
        }
    };
    let host = Host::new(platform.clone());
    let exporter = match build_exporter(ep.exporter, &host) {
        Ok(x) => Arc::new(x),
        Err(e) => {
            sh.error(format!("exporter/{}", short(&e)));
            platform.shutdown();
            return;
        }
    };
    let first_return: Arc<Mutex<Option<u64>>> = Arc::new(Mutex::new(None));
    if let Exporter::Vfio(v) = &*exporter {
        let (sh2, epi, fr) = (sh.clone(), ep.index, first_return.clone());
        v.set_revoke_observer(Some(Arc::new(move |ev: &RevokeEvent| match ev {
            RevokeEvent::Begin { ino, ns } => sh2.revoke_began(epi, *ino, "vfio0".into(), *ns),
            RevokeEvent::Returned(r) => {
                {
                    let mut f = fr.lock();
                    *f = Some(f.map_or(r.returned_seq, |x| x.min(r.returned_seq)));
                }
                sh2.revoke_returned(epi, r.ino, r.returned_ns.saturating_sub(r.began_ns))
            }
            RevokeEvent::Unrevoked { .. } => sh2.add(Op::Unrevoke, 1),
            RevokeEvent::Warn(w) => {
                sh2.finding_at(FindingKind::Warning, Some(epi), Some("vfio"), w.clone())
            }
            RevokeEvent::FencesDone { .. } | RevokeEvent::UnrevokeBegin { .. } => {}
        })));
    }

    // The VMM exports its buffers.
    me.step("dma_buf_export");
    let vmm = Process::new(1);
    let ep_seed = ctx.seed ^ ep.index.wrapping_mul(0x2545_f491_4f6c_dd1d);
    set_thread_alloc_failures(ep.alloc_fail_per_mille, ep_seed);
    let mut fds: Vec<Option<i32>> = Vec::new();
    let mut bufs: Vec<DmaBufRef> = Vec::new();
    for b in 0..ep.buffers {
        match export(&exporter, &vmm, u64::from(b)) {
            Ok(fd) => {
                sh.add(Op::Export, 1);
                if let Ok(buf) = vmm.dma_buf_get(fd) {
                    bufs.push(buf.downgrade());
                }
                fds.push(Some(fd));
            }
            Err(e) => {
                sh.error(format!("export/{e}"));
                fds.push(None);
            }
        }
    }

    // Importers, each in its own process with the fd of its buffer.
    me.step("importer_probe");
    let mut imports = Vec::new();
    for (i, imp) in ep.imports.iter().enumerate() {
        let mut spec = ctx.specs[imp.kind as usize].clone();
        if ep.slow_worker && spec.base == ImporterBase::Gpu {
            spec.unmap_latency = SLOW_WORKER;
        }
        let made = make_importer(&host, &spec, &names[i]);
        let imp_obj = match made {
            Ok(x) => x,
            Err(e) => {
                sh.error(format!("probe/{}", errno_of(&e)));
                continue;
            }
        };
        let proc = Process::new(100 + i as u32);
        let fd = fds[imp.buffer as usize].and_then(|fd| vmm.send_fd(fd, &proc).ok());
        imports.push((
            i,
            Import {
                imp: imp_obj,
                proc,
                fd,
                kind: ctx.plan.importers[imp.kind as usize].clone(),
                dev: names[i].clone(),
                killed: Arc::new(dmabuf_core::sync::atomic::AtomicBool::new(false)),
            },
        ));
    }
    set_thread_alloc_failures(0, 0);

    let coord = Arc::new(Coord {
        st: Mutex::new(Phase::default()),
        cv: Condvar::new(),
    });
    // The VMM's address space: false once it was killed (`exit_mm` runs
    // before `exit_files`, so none of its threads touches its mappings
    // after the kill; each CPU write holds this lock).
    let vmm_mm = Arc::new(Mutex::new(true));
    let (gate, gate_h) = FenceContext::named("soak", "gate").create();
    let mut threads: Vec<(String, JoinHandle<()>)> = Vec::new();

    // Gate: opens just after the event began (or when the setups are done
    // and there is no event).
    {
        let (coord, sh) = (coord.clone(), sh.clone());
        let epi = ep.index;
        threads.push((
            "gate".into(),
            thread::spawn_named(format!("soak-gate-{epi}"), move || {
                let t = sh.task(epi, "gate".into());
                t.step("wait_event_begun");
                coord.wait(|p| p.event_begun, PHASE_WAIT * 4);
                thread::sleep(GATE_DELAY);
                t.step("dma_fence_signal");
                let _ = gate_h.signal();
                coord.update(|p| p.gate_open = true);
            }),
        ));
    }
    for (i, im) in &imports {
        threads.push((
            im.dev.clone(),
            spawn_import(ctx, ep, *i, im, &exporter, &gate, &coord, ep_seed),
        ));
    }
    if ep.cpu
        && let Exporter::Vfio(v) = &*exporter
    {
        let (v, coord, sh, mm) = (v.clone(), coord.clone(), sh.clone(), vmm_mm.clone());
        let epi = ep.index;
        threads.push((
            "cpu".into(),
            thread::spawn_named(format!("soak-cpu-{epi}"), move || {
                let t = sh.task(epi, "cpu".into());
                cpu_bar(&v, &coord, &sh, &t, &mm);
            }),
        ));
    }
    if let Some((victim, delay)) = ep.kill {
        let proc = match victim {
            Victim::Exporter => Some((vmm.clone(), None)),
            Victim::Import(i) => imports
                .iter()
                .find(|(j, _)| *j == i as usize)
                .map(|(_, im)| (im.proc.clone(), Some(im.killed.clone()))),
        };
        if let Some((proc, flag)) = proc {
            let (sh, exporter, mm) = (sh.clone(), exporter.clone(), vmm_mm.clone());
            let epi = ep.index;
            threads.push((
                "killer".into(),
                thread::spawn_named(format!("soak-kill-{epi}"), move || {
                    let t = sh.task(epi, "killer".into());
                    t.step("sleep");
                    thread::sleep(Duration::from_micros(u64::from(delay)));
                    t.step("exit_files");
                    match &flag {
                        Some(f) => f.store(true, dmabuf_core::sync::atomic::Ordering::Release),
                        None => *mm.lock() = false,
                    }
                    proc.close_all();
                    sh.add(Op::Kill, 1);
                    if flag.is_none()
                        && let Exporter::Vfio(v) = &*exporter
                    {
                        t.step("vfio_pci_dma_buf_cleanup");
                        // The VMM's device fd goes with its other fds.
                        match v.close() {
                            Ok(r) => trigger_errors(&sh, &r),
                            Err(VfioError::Closed { .. }) => {}
                            Err(e) => sh.error(format!("kill-close/{}", e.errno())),
                        }
                    }
                }),
            ));
        }
    }
    if let Some(u) = ep.unplug
        && let Some(dev) = host.device_by_name(&names[u as usize])
    {
        let (coord, sh, platform) = (coord.clone(), sh.clone(), platform.clone());
        let epi = ep.index;
        threads.push((
            "unplug".into(),
            thread::spawn_named(format!("soak-unplug-{epi}"), move || {
                let t = sh.task(epi, "unplug".into());
                t.step("wait_gate_open");
                coord.wait(|p| p.gate_open, PHASE_WAIT * 4);
                t.step("pci_stop_and_remove_bus_device");
                match platform.pci().unplug(dev.id()) {
                    Ok(()) => sh.add(Op::Unplug, 1),
                    Err(e) => sh.error(format!("unplug/{}", e.errno())),
                }
            }),
        ));
    }

    // The event.
    me.step("wait_setups");
    let n = imports.len();
    coord.wait(|p| p.setups_done >= n, PHASE_WAIT * 4);
    thread::sleep(Duration::from_micros(u64::from(ep.event_delay_us)));
    coord.update(|p| p.event_begun = true);
    me.step(event_step(ep.event));
    run_event(sh, ep, &exporter, &vmm, &coord);
    coord.update(|p| p.event_done = true);

    me.step("join");
    for (name, h) in threads {
        if h.join().is_err() {
            sh.finding_at(
                FindingKind::Panic,
                Some(ep.index),
                Some(exporter_name(ep.exporter)),
                format!("thread {name} panicked ({})", ep.describe(ctx.plan)),
            );
        }
    }
    // The VMM exits: its device fd closes (VFIO cleans up), then its other
    // fds.
    me.step("teardown");
    if let Exporter::Vfio(v) = &*exporter
        && !v.is_closed()
    {
        match v.close() {
            Ok(r) => trigger_errors(sh, &r),
            Err(VfioError::Closed { .. }) => {}
            Err(e) => sh.error(format!("final-close/{}", e.errno())),
        }
    }
    let mut maps = 0;
    let mut unmaps = 0;
    let mut invalidates = 0;
    for (_, im) in &imports {
        im.imp.shutdown();
        let c = im.imp.counters();
        maps += c.get("maps").copied().unwrap_or(0);
        unmaps += c.get("unmaps").copied().unwrap_or(0);
        invalidates += c.get("invalidates").copied().unwrap_or(0);
    }
    sh.add(Op::Map, maps);
    sh.add(Op::Unmap, unmaps);
    sh.add(Op::Invalidate, invalidates);
    platform.shutdown();
    vmm.close_all();
    for (_, im) in &imports {
        im.proc.close_all();
    }
    sh.forget_episode(ep.index);
    drop(imports);
    drop(exporter);

    me.step("check");
    let first = *first_return.lock();
    let all = platform.monitor().hazards();
    let stopped = all.len();
    let unplugged = ep.unplug.map(|u| names[u as usize].as_str());
    let hz: Vec<_> = all
        .into_iter()
        .filter(|h| check::is_violation(h, first, unplugged))
        .collect();
    sh.add(Op::Stopped, (stopped - hz.len()) as u64);
    for f in check::hazard_findings(ep.index, &hz, 4) {
        sh.finding_at(
            f.kind,
            f.episode,
            Some(exporter_name(ep.exporter)),
            format!("{} ({})", f.detail, ep.describe(ctx.plan)),
        );
    }
    let leaks = check::episode_leaks(&bufs, &platform.stats());
    if !leaks.is_empty() {
        sh.finding_at(
            FindingKind::Leak,
            Some(ep.index),
            Some(exporter_name(ep.exporter)),
            format!("{} ({})", leaks.join("; "), ep.describe(ctx.plan)),
        );
    }
    sh.add(Op::Episode, 1);
}

/// The first words of an error message, as a counter key (kebab-case, at
/// most 40 characters): messages carry addresses and numbers that would
/// make every key unique.
fn short(msg: &str) -> String {
    let mut k: String = msg
        .chars()
        .take_while(|c| *c != ':' && *c != '(')
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    k.truncate(40);
    k.trim_matches('-').to_string()
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("soak").to_owned()
}

fn build_exporter(kind: ExporterKind, host: &Host) -> Result<Exporter, String> {
    match kind {
        ExporterKind::Vfio => host
            .device_by_name("vfio0")
            .ok_or_else(|| "no vfio0".to_string())
            .and_then(|d| {
                VfioPciDevice::bind(host, d, Arc::new(Protocol::merged()))
                    .map_err(|e| e.to_string())
            })
            .map(Exporter::Vfio),
        ExporterKind::SystemHeap => SystemHeap::new(host)
            .map(Exporter::Heap)
            .map_err(|e| e.to_string()),
        ExporterKind::GpuVram => host
            .device_by_name("vram0")
            .ok_or_else(|| "no vram0".to_string())
            .and_then(|d| GpuVram::new(host, d).map_err(|e| e.to_string()))
            .map(Exporter::Vram),
        ExporterKind::RdmaDm => Err("the soak does not run the RDMA exporter".into()),
    }
}

fn export(exporter: &Exporter, vmm: &Process, b: u64) -> Result<i32, String> {
    let len = BUF_PAGES * PAGE_SIZE;
    match exporter {
        Exporter::Vfio(v) => v
            .export_dma_buf(
                vmm,
                0,
                &[DmaRange {
                    offset: b * len,
                    length: len,
                }],
                2,
            )
            .map_err(|e| e.errno().to_string()),
        Exporter::Heap(h) => {
            let buf = h.allocate(len, 2, 0).map_err(|e| e.errno().to_string())?;
            vmm.dma_buf_fd(buf, 0).map_err(|e| e.0.to_string())
        }
        Exporter::Vram(g) => {
            let buf = g
                .create_bo(BUF_PAGES, 2)
                .map_err(|e| e.errno().to_string())?;
            vmm.dma_buf_fd(buf, 0).map_err(|e| e.0.to_string())
        }
    }
}

fn event_step(e: Event) -> &'static str {
    match e {
        Event::None => "no_event",
        Event::Flr => "pci_reset_function(flr)",
        Event::DeviceReset => "VFIO_DEVICE_RESET",
        Event::HotReset => "VFIO_DEVICE_PCI_HOT_RESET",
        Event::DecodeOff => "vfio_pci_dma_buf_move(decode off/on)",
        Event::D3hot => "vfio_pci_set_power_state(D3hot/D0)",
        Event::UnrevokeCycle => "unrevoke_cycle",
        Event::Close => "release",
        Event::CloseHotplug => "release+hotplug",
        Event::Evict => "ttm_bo_evict",
    }
}

fn trigger_errors(sh: &Shared, r: &TriggerReport) {
    for e in &r.errors {
        sh.error(format!("trigger-step/{}", short(e)));
    }
}

fn report(sh: &Shared, r: Result<TriggerReport, VfioError>) {
    match r {
        Ok(r) => trigger_errors(sh, &r),
        // The VMM was killed first: its device fd is gone.
        Err(VfioError::Closed { .. }) => sh.error("trigger/closed".into()),
        Err(e) => sh.error(format!("trigger/{}", e.errno())),
    }
}

fn run_event(sh: &Shared, ep: &Episode, exporter: &Exporter, vmm: &Process, coord: &Coord) {
    if ep.event == Event::None {
        return;
    }
    sh.event(ep.event.name());
    match (exporter, ep.event) {
        (Exporter::Vfio(v), Event::Flr) => report(sh, v.reset(ResetKind::Flr)),
        (Exporter::Vfio(v), Event::DeviceReset) => report(sh, v.reset(ResetKind::DeviceReset)),
        (Exporter::Vfio(v), Event::HotReset) => report(sh, v.reset(ResetKind::HotReset)),
        (Exporter::Vfio(v), Event::DecodeOff) => {
            report(sh, v.set_memory_decode(false));
            thread::sleep(WINDOW);
            report(sh, v.set_memory_decode(true));
        }
        (Exporter::Vfio(v), Event::D3hot) => {
            report(sh, v.set_power_state(PowerState::D3hot));
            thread::sleep(WINDOW);
            report(sh, v.set_power_state(PowerState::D0));
        }
        (Exporter::Vfio(v), Event::UnrevokeCycle) => {
            report(sh, v.set_memory_decode(false));
            thread::sleep(WINDOW);
            report(sh, v.set_memory_decode(true));
            coord.update(|p| p.unrevoked = true);
            let n = ep.imports.len();
            coord.wait(|p| p.remapped >= n, PHASE_WAIT);
            report(sh, v.set_memory_decode(false));
            report(sh, v.close());
        }
        (Exporter::Vfio(v), Event::Close) => report(sh, v.close()),
        (Exporter::Vfio(v), Event::CloseHotplug) => {
            report(sh, v.close());
            if v.is_closed()
                && let Err(e) = v.hotplug_replacement("newdev0")
            {
                sh.error(format!("hotplug/{}", e.errno()));
            }
        }
        (_, Event::Close) => vmm.close_all(),
        (Exporter::Vram(g), Event::Evict) => {
            for f in g.evict_all() {
                let _ = f.wait(None);
            }
            thread::sleep(WINDOW);
            for f in g.migrate_all_to_vram() {
                let _ = f.wait(None);
            }
        }
        (_, e) => sh.error(format!("event-unsupported/{}", e.name())),
    }
}

fn cpu_bar(
    v: &VfioPciDevice,
    coord: &Coord,
    sh: &Shared,
    t: &crate::shared::TaskGuard<'_>,
    mm: &Mutex<bool>,
) {
    t.step("vfio_pci_mmap");
    let m = match v.mmap_bar(0, Accessor::new("vmm")) {
        Ok(m) => m,
        Err(e) => {
            sh.error(format!("cpu-mmap/{}", e.errno()));
            return;
        }
    };
    for i in 0..CPU_WRITES {
        if coord.st.lock().event_done && i > 0 {
            break;
        }
        t.step("cpu_write");
        {
            let alive = mm.lock();
            if !*alive {
                break;
            }
            match m.write(0, &[i as u8; 8]) {
                Ok(()) => sh.add(Op::Cpu, 1),
                Err(_) => sh.error("cpu-write/sigbus".into()),
            }
        }
        thread::sleep(Duration::from_micros(40));
    }
    m.munmap();
}

#[allow(clippy::too_many_arguments)]
fn spawn_import(
    ctx: &Ctx<'_>,
    ep: &Episode,
    i: usize,
    im: &Import,
    exporter: &Arc<Exporter>,
    gate: &Fence,
    coord: &Arc<Coord>,
    ep_seed: u64,
) -> JoinHandle<()> {
    let sh = ctx.sh.clone();
    let (imp, proc, fd, killed) = (im.imp.clone(), im.proc.clone(), im.fd, im.killed.clone());
    let (gate, coord) = (gate.clone(), coord.clone());
    let refusal_prefix = format!("{}/{}", exporter_name(ep.exporter), im.kind);
    let jobs = ep.imports[i].jobs;
    let (gated, polls, cpu, epi) = (ep.gated, ep.polls, ep.cpu, ep.index);
    let cycle = ep.event == Event::UnrevokeCycle;
    let cpu_dmabuf = cpu && !matches!(&**exporter, Exporter::Vfio(_));
    let per_mille = ep.alloc_fail_per_mille;
    let dev = im.dev.clone();
    thread::spawn_named(format!("soak-{dev}-{epi}"), move || {
        let t = sh.task(epi, dev.clone());
        set_thread_alloc_failures(
            per_mille,
            ep_seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9),
        );
        let alive = || !killed.load(dmabuf_core::sync::atomic::Ordering::Acquire);
        let set_up = match fd {
            None => {
                coord.update(|p| p.setups_done += 1);
                false
            }
            Some(fd) => {
                t.step("importer_setup");
                match imp.setup(&proc, fd) {
                    Ok(()) => {
                        sh.add(Op::Setup, 1);
                        true
                    }
                    Err(e) => {
                        if e.is_refusal() {
                            sh.refusal(format!(
                                "{refusal_prefix}/{}/{}",
                                e.stage().name(),
                                e.errno()
                            ));
                        } else {
                            sh.error(format!("setup/{}", e.errno()));
                        }
                        false
                    }
                }
            }
        };
        let mut queued: Vec<Job> = Vec::new();
        if set_up {
            for k in 0..jobs {
                t.step("submit");
                let g = gated.then(|| gate.clone());
                match imp.submit(u64::from(k) % BUF_PAGES, (i as u8) ^ (k as u8), g) {
                    Ok(j) => queued.push(j),
                    Err(e) => {
                        sh.add(Op::JobFailed, 1);
                        sh.error(format!("submit/{}", e.errno()));
                    }
                }
            }
        }
        coord.update(|p| p.setups_done += 1);
        if let Some(fd) = fd {
            for _ in 0..polls {
                if !alive() {
                    break;
                }
                fence_traffic(&sh, &proc, fd, &t);
            }
        }
        for j in queued {
            t.step("dma_fence_wait(job)");
            match j.wait() {
                Ok(_) => sh.add(Op::JobOk, 1),
                Err(_) => sh.add(Op::JobFailed, 1),
            }
        }
        if set_up && alive() {
            t.step("wait_event");
            coord.wait(|p| p.event_done || p.unrevoked, PHASE_WAIT);
            if cycle {
                coord.wait(|p| p.unrevoked || p.event_done, PHASE_WAIT);
                t.step("importer_remap");
                match imp.remap() {
                    Ok(()) => sh.add(Op::Remap, 1),
                    Err(e) => sh.error(format!("remap/{}", e.errno())),
                }
                coord.update(|p| p.remapped += 1);
            }
            for k in jobs..2 * jobs {
                if !alive() {
                    break;
                }
                t.step("submit+wait");
                let r = imp
                    .submit(u64::from(k) % BUF_PAGES, (i as u8) ^ (k as u8), None)
                    .map_err(|e| e.errno())
                    .and_then(|j| j.wait());
                match r {
                    Ok(_) => sh.add(Op::JobOk, 1),
                    Err(_) => sh.add(Op::JobFailed, 1),
                }
            }
        } else if cycle {
            coord.update(|p| p.remapped += 1);
        }
        if cpu_dmabuf
            && let Some(fd) = fd
            && alive()
        {
            t.step("dma_buf_mmap+sync");
            cpu_dmabuf_access(&sh, &proc, fd);
        }
        if set_up {
            t.step("wait_event_done");
            coord.wait(|p| p.event_done, PHASE_WAIT);
            t.step("importer_teardown");
            match imp.teardown() {
                Ok(()) => sh.add(Op::Teardown, 1),
                Err(e) => sh.error(format!("teardown/{}", e.errno())),
            }
        }
        proc.close_all();
        set_thread_alloc_failures(0, 0);
    })
}

/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, `poll` on both fds, a bounded wait on
/// the sync_file's fence, close.
fn fence_traffic(sh: &Shared, proc: &Process, fd: i32, t: &crate::shared::TaskGuard<'_>) {
    t.step("poll(dma-buf)");
    match proc.poll(fd, EPOLLIN | EPOLLOUT, Arc::new(|_| {})) {
        Ok(_) => sh.add(Op::Poll, 1),
        Err(e) => sh.error(format!("poll/{}", e.0)),
    }
    t.step("DMA_BUF_IOCTL_EXPORT_SYNC_FILE");
    let mut payload = [0u8; 8];
    payload[0..4].copy_from_slice(&(DMA_BUF_SYNC_RW as u32).to_le_bytes());
    match proc.ioctl_buf(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &mut payload) {
        Ok(_) => {
            sh.add(Op::SyncFile, 1);
            let sfd = i32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
            t.step("poll(sync_file)");
            if proc.poll(sfd, EPOLLIN, Arc::new(|_| {})).is_ok() {
                sh.add(Op::Poll, 1);
            }
            if let Some(f) = proc.sync_file_get_fence(sfd) {
                t.step("dma_fence_wait_timeout(sync_file)");
                let _ = f.wait_timeout(None, 2_000_000);
                sh.add(Op::FenceWait, 1);
            }
            let _ = proc.close(sfd);
        }
        Err(e) => sh.error(format!("export-sync-file/{}", e.0)),
    }
}

/// `mmap` of the dma-buf and a `DMA_BUF_IOCTL_SYNC` start/end pair.
fn cpu_dmabuf_access(sh: &Shared, proc: &Process, fd: i32) {
    match proc.mmap(fd, 0, 1) {
        Ok(()) => sh.add(Op::Cpu, 1),
        Err(e) => sh.error(format!("mmap/{}", e.0)),
    }
    for flags in [DMA_BUF_SYNC_RW, DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END] {
        let mut p = flags.to_le_bytes();
        match proc.ioctl_buf(fd, DMA_BUF_IOCTL_SYNC, &mut p) {
            Ok(_) => sh.add(Op::Cpu, 1),
            Err(e) => sh.error(format!("sync/{}", e.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the soak (a killed VMM closed its dma-buf fds while the
    /// device was in D3hot): once the revoked buffer is released and the
    /// device is back in D0, the VMM's own BAR mapping is plain device
    /// memory again, not memory of a revoked export.
    #[test]
    fn a_revoked_buffer_released_before_the_device_wakes_leaves_no_stale_revoke() {
        let _g = crate::SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = PlatformConfig::default()
            .switch("sw0")
            .ram_frames(16)
            .device(
                DeviceConfig::new("vfio0")
                    .bar(0, BAR_SIZE)
                    .behind_switch("sw0"),
            );
        let p = Platform::new(cfg).unwrap();
        let host = Host::new(p.clone());
        let dev = host.device_by_name("vfio0").unwrap();
        let v = VfioPciDevice::bind(&host, dev, Arc::new(Protocol::merged())).unwrap();
        let vmm = Process::new(1);
        let len = BUF_PAGES * PAGE_SIZE;
        let fd = v
            .export_dma_buf(
                &vmm,
                0,
                &[DmaRange {
                    offset: 0,
                    length: len,
                }],
                2,
            )
            .unwrap();
        let m = v.mmap_bar(0, Accessor::new("vmm")).unwrap();
        m.write(0, &[1; 8]).unwrap();
        let r = v.set_power_state(PowerState::D3hot).unwrap();
        assert_eq!(r.revoked.len(), 1);
        assert!(m.write(0, &[2; 8]).is_err(), "a revoked BAR must SIGBUS");
        vmm.close(fd).unwrap();
        v.set_power_state(PowerState::D0).unwrap();
        m.write(0, &[3; 8]).unwrap();
        let hz = p.monitor().hazards();
        m.munmap();
        let _ = v.close();
        p.shutdown();
        assert!(hz.is_empty(), "{hz:?}");
    }
}
