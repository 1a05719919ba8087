//! [`run_world`]: builds the machine a [`WorldSpec`] describes, runs its
//! threads and the revoke trigger, and reports what the monitor and the
//! drivers saw.
//!
//! # The machine
//!
//! | part | how |
//! |---|---|
//! | exporter device | `vfio0` (VFIO: a 64 KiB BAR 0) or `vram0` (GPU VRAM: BAR 0 is VRAM), below switch `sw0` |
//! | importer devices | one per instance, named after it (`gpu0`, `iommufd0`, ...), below `sw0`, so peer-to-peer uses bus addresses |
//! | iommufd | each instance has a domain its guest device is attached to |
//! | RAM | 256 frames (system heap, VRAM eviction, GPU page tables) |
//! | buffer | [`BUF_PAGES`] pages: BAR 0 offset 0 (VFIO), a heap allocation, or a VRAM BO |
//!
//! # The timeline
//!
//! 1. The VMM (`userspace`) exports the buffer and sends an fd to every
//!    importer process. With `cpu_access` it also maps BAR 0 (VFIO) and
//!    touches it until the trigger is done.
//! 2. Each importer thread (`userspace`): `setup`; with several importers,
//!    waits until every importer's setup returned; then queues `jobs` DMA
//!    jobs behind the *gate* fence; then reports its setup done. Refusals
//!    (`EOPNOTSUPP`/`ENODEV` at attach, pin, map, register) are recorded
//!    and the thread ends. (Without that wait, a GPU whose mapping another
//!    importer's pin evicted could wait, under the reservation lock, for
//!    its unbind behind its own gated job, whose gate waits for the
//!    trigger, which waits for the setup that needs the lock.)
//! 3. The revoker (`revoker`) waits until every setup is done, stalls
//!    `userspace` in [`StallMode::StallUserspaceAtRevoke`] and runs the
//!    trigger. Where userspace stalls is a choice of the search
//!    ([`search_choice`], made before the world is built, so that its
//!    alternatives are whole subtrees of the search): when the revoke
//!    begins, when a cycle's second revoke begins, or at any scheduling
//!    point after the trigger began and before the virtual clock next
//!    moves (a `userspace-staller` task of group `hw` stalls it whenever
//!    the search runs it; a task that can run keeps the clock still, so it
//!    runs before the first timer or timeout after the trigger fires).
//!    With [`WorldSpec::stall_in_remap`], a fourth alternative: the same
//!    task, blocked (not holding the clock) until the first importer says
//!    its re-map began, then stalling userspace at any scheduling point
//!    until the clock next moves (`RemapAnnounce`). Other points later
//!    in the first cycle (between its first revoke's return and the second
//!    revoke) are not explored. The gate fence signals
//!    [`INFLIGHT_DELAY`] after the trigger began (a timer of group `hw`):
//!    the queued jobs are in flight across the revoke whatever the schedule.
//! 4. Importers wait for their queued jobs; then, [`POST_DELAY`] after the
//!    first revoke returned (or the trigger finished, or [`POST_WAIT`]
//!    passed), run `jobs` more jobs (with `map_during_invalidate`: as soon
//!    as the trigger began instead).
//! 5. In a cycle ([`Trigger::FlrCycle`], every matrix cell, and
//!    [`Trigger::UnrevokeCycle`]), before those jobs: once the un-revoke is
//!    done, `remap`, one job (counted in `jobs_after_unrevoke_ok` /
//!    `_failed`), then `jobs` jobs behind a second gate that signals
//!    [`INFLIGHT_DELAY`] after the second revoke began; the revoker waits
//!    (at most [`REMAP_WAIT`]) for every accepted importer to get there,
//!    turns decode off (the second revoke) and, [`OFF_WINDOW`] later,
//!    closes the device while the buffer is still revoked. The later jobs
//!    run [`POST_DELAY`] after the second revoke returned. An importer whose
//!    un-revoke does not come within [`POST_WAIT`] (a revoke stuck on it)
//!    skips the cycle.
//! 6. Importers keep the buffer until the trigger is done (at most
//!    [`POST_WAIT`]), then tear down. The root joins everything (not the stalled
//!    userspace threads in stall mode), shuts kernel workers and DMA engines
//!    down and fills the [`Observation`], with one
//!    [`RevokeRecord`] per revoke.
//!
//! # Turns
//!
//! With [`WorldSpec::importers_take_turns`] and several importers, the
//! stages of their programs that make system calls (setup; queueing the
//! first jobs; a cycle's re-map, job and queueing; the later jobs;
//! teardown) run one at a time, in slots: stage by stage, and within a
//! stage importer by importer in world order. A stage an importer skips
//! (it was refused, its cycle did not come) counts as done once it moves
//! past it or ends. Between its stages an importer still waits (for its
//! jobs, the revoke, the un-revoke) beside the others, and every stage
//! still races the revoker, the hardware and the importers' kernel work.
//! What it removes is the order of two importers' system calls, which is
//! most of a mix's orders: every acquisition of the reservation lock by
//! an importer's userspace thread is inside a stage, and those sections
//! were most of the races the search reversed. A waiting importer cannot
//! run, so the virtual clock may move while it waits where it could not
//! otherwise.
//!
//! # Syscalls and stalls
//!
//! A userspace thread runs each of its system calls (setup, job submission,
//! waits, teardown) in group `kernel` and returns to `userspace` after it:
//! a stall of `userspace` takes effect at the return to user mode, as a
//! stopped process finishes the system call it is in. So `l-bounded`
//! measures what it should: whether revoke needs userspace to *act*, not
//! whether a kernel path that happened to be running on a userspace thread
//! finishes.
//!
//! # Triggers
//!
//! | trigger | VFIO | system heap | GPU VRAM |
//! |---|---|---|---|
//! | `Flr`, `DeviceReset`, `HotReset` | [`VfioPciDevice::reset`] | unsupported | unsupported |
//! | `DecodeOff` | decode off, [`OFF_WINDOW`], decode on | unsupported | unsupported |
//! | `D3hot` | D3hot, [`OFF_WINDOW`], D0 | unsupported | unsupported |
//! | `Close` | [`VfioPciDevice::close`], optionally a new device at the BAR | the VMM closes its fd | the VMM closes its fd |
//! | `UnrevokeCycle` | decode off, on, wait for re-maps, off, close while revoked | unsupported | unsupported |
//! | `FlrCycle` | FLR (revoke, reset, un-revoke), wait for re-maps, decode off, close while revoked | unsupported | unsupported |
//! | `PermanentCycle` | decode off, the permanent revoke ioctl, decode on (no un-revoke of a permanently revoked buffer), wait for re-map attempts, off, close | unsupported | unsupported |
//! | `Eviction` | unsupported | unsupported | evict to system, wait, migrate back |
//!
//! An unsupported combination is reported in [`Observation::errors`]. Only
//! VFIO revokes: the other exporters never set `revoke_started`.
//!
//! # Counters
//!
//! | key | meaning |
//! |---|---|
//! | `jobs_ok`, `jobs_failed` | DMA jobs by outcome (refused submissions count as failed) |
//! | `data_mismatch` | a job read back other bytes than the last ones written (single-importer heap and VRAM worlds only: VFIO BARs lose their contents on reset) |
//! | `spec_reads` | speculative read-ahead accesses, all engines |
//! | `vfio_revokes`, `vfio_unrevokes`, `unrevoke_refused` | per buffer; a refused un-revoke leaves the buffer revoked |
//! | `vram_moves`, `evictions`, `migrations` | GPU VRAM exporter |
//! | `cpu_ok`, `cpu_sigbus`, `cpu_mmap_refused` | the VMM's CPU accesses to BAR 0 |
//! | `remap_failed` | an un-revoke cycle's re-map was refused |
//! | `jobs_after_unrevoke_ok`, `jobs_after_unrevoke_failed` | the job right after a cycle's re-map |
//! | `maps`, `unmaps`, `invalidates`, `faults`, `revoked`, ... | summed over the importer instances ([`Importer::counters`]) |

use crate::world::{
    ExporterKind, ImporterBase, ImporterSpec, Observation, OnInvalidate, Refusal, Restore,
    RevokeRecord, StallMode, Trigger, UnmapWhen, WorldSpec,
};
use dmabuf_core::dma_buf::DmaBufRef;
use dmabuf_core::dma_resv::Usage;
use dmabuf_core::errno::{AsErrno, Errno};
use dmabuf_core::sync::sched;
use dmabuf_core::sync::thread::{self, JoinHandle};
use dmabuf_core::sync::time::now_ns;
use dmabuf_core::sync::{Arc, Monotone, Mutex, SetOnce};
use dmabuf_core::uapi::Process;
use dmabuf_core::{Fence, FenceContext, SignalHandle};
use dmabuf_drivers::gpu_vram::GpuVram;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::importers::cpu_mmap::CpuMmapImporter;
use dmabuf_drivers::importers::gpu::{GpuConfig, GpuDevice, GpuImport};
use dmabuf_drivers::importers::iommufd::IommufdImporter;
use dmabuf_drivers::importers::nic::Nic;
use dmabuf_drivers::importers::rdma::RdmaImporter;
use dmabuf_drivers::importers::static_import::StaticImporter;
use dmabuf_drivers::importers::{ImportError, Importer, JOB_BYTES, Job, Stage, read_page};
use dmabuf_drivers::rdma_export::UverbsDevice;
use dmabuf_drivers::system_heap::SystemHeap;
use dmabuf_drivers::vfio::{
    ResetKind, RevokeEvent, RevokeObserver, TriggerReport, VfioError, VfioPciDevice,
};
use dmabuf_drivers::vfio_uapi::DmaRange;
use dmabuf_platform::{
    Accessor, DeviceConfig, Monitor, PAGE_SIZE, Platform, PlatformConfig, PowerState,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Pages of the world's buffer.
pub const BUF_PAGES: u64 = 2;
/// How long after the trigger begins the gated jobs start.
pub const INFLIGHT_DELAY: Duration = Duration::from_micros(30);
/// How long decode stays off (or the device in D3hot) before it comes back.
pub const OFF_WINDOW: Duration = Duration::from_micros(100);
/// The reset window of FLR and hot reset.
pub const RESET_WINDOW: Duration = Duration::from_micros(100);
/// How long after the revoke returned an application submits again (its
/// next frame, its next work request): long enough for a GPU's kernel
/// worker to unmap on its own first.
pub const POST_DELAY: Duration = Duration::from_micros(200);
/// The longest an importer waits for the revoke before its later jobs.
pub const POST_WAIT: Duration = Duration::from_millis(2);
/// The longest the revoker waits for re-maps in an un-revoke cycle.
pub const REMAP_WAIT: Duration = Duration::from_millis(2);
const VFIO_BAR_SIZE: u64 = 0x10000;
/// The MMIO window of a world: room for sixteen such BARs (one is used).
/// Its pages are built and dropped with every execution, so the default
/// window of 256 MiB (65,536 pages) cost more than most executions' work.
/// BARs are placed first-fit from the window's base, so no address moves.
const WORLD_MMIO_SIZE: u64 = 16 * VFIO_BAR_SIZE;
const CPU_TOUCHES: usize = 4;

/// The observation under construction, readable at any time: after a run
/// that never finished (a deadlocked controlled execution), [`snapshot`]
/// still tells what happened up to then.
///
/// [`snapshot`]: WorldProbe::snapshot
#[derive(Default)]
pub struct WorldProbe {
    // A plain lock, not the shim's: recording must never be a scheduling
    // point (it would change schedules), and the checker reads it after the
    // controlled execution ended.
    st: parking_lot::Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    obs: Observation,
    monitor: Option<Monitor>,
    t0: Option<u64>,
}

impl std::fmt::Debug for WorldProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorldProbe({:?})", self.st.lock().obs)
    }
}

impl WorldProbe {
    /// An empty probe.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The observation so far, with every hazard the monitor recorded.
    pub fn snapshot(&self) -> Observation {
        let (mut obs, mon) = {
            let st = self.st.lock();
            (st.obs.clone(), st.monitor.clone())
        };
        if let Some(m) = mon {
            obs.hazards = m.hazards();
            obs.reuse = m.reuse_events();
        }
        obs
    }

    fn with(&self, f: impl FnOnce(&mut Observation)) {
        f(&mut self.st.lock().obs);
    }

    fn error(&self, e: String) {
        self.with(|o| o.errors.push(e));
    }
}

#[derive(Clone, Default)]
struct Phase {
    fds_ready: bool,
    export_failed: bool,
    /// Importers whose setup returned (accepted or refused); counted only
    /// with more than one importer (see `spawn_importer`).
    set_up: usize,
    setups_done: usize,
    accepted: usize,
    trigger_begun: bool,
    /// Revokes returned so far (all buffers).
    revokes_returned: usize,
    unrevoke_begun: bool,
    unrevoked: bool,
    /// The buffers were revoked for good (the restore is not expected).
    permanent: bool,
    remapped: usize,
    /// A cycle's second revoke is about to begin.
    second_begun: bool,
    trigger_done: bool,
}

/// The stages of an importer's program that importers taking turns
/// ([`WorldSpec::importers_take_turns`]) run one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TurnStage {
    Setup = 0,
    Queue = 1,
    Remap = 2,
    Jobs = 3,
    Teardown = 4,
}

impl TurnStage {
    const COUNT: usize = 5;
}

/// One importer's place in the turns: the `order`-th importer starts stage
/// `k` once every importer before it finished stage `k` and every one
/// after it stage `k - 1` (slot `k * n + order`). Every stage it skips
/// (it was refused, its cycle did not come) counts as finished when it
/// moves past it or ends, so the others never wait for it.
///
/// Each importer's progress (the first stage it has not finished) is a
/// [`Monotone`] cell of its own, not a field of [`Coord`]: an update of
/// one importer's cell then never races with another importer's update,
/// only with the waits of the importers after it.
struct Turns {
    /// Every importer's progress, by order; `None`: no turns.
    progress: Option<Arc<Vec<Monotone<usize>>>>,
    order: usize,
    /// The first stage not yet counted as finished.
    next: usize,
}

impl Turns {
    /// Waits for this importer's turn at `stage`, counting the stages
    /// skipped before it as finished.
    fn start(&mut self, stage: TurnStage) {
        self.finish_before(stage as usize);
        if let Some(p) = &self.progress {
            let k = stage as usize;
            // Slot `k * n + order`: every importer before this one has
            // finished stage `k`, every one after it stage `k - 1`.
            for (j, other) in p.iter().enumerate().filter(|&(j, _)| j != self.order) {
                let need = if j < self.order { k + 1 } else { k };
                other.wait_until(|&n| n >= need, None);
            }
        }
    }

    /// Counts `stage` (and any skipped before it) as finished.
    fn done(&mut self, stage: TurnStage) {
        self.finish_before(stage as usize + 1);
    }

    fn finish_before(&mut self, end: usize) {
        if let Some(p) = &self.progress
            && self.next < end
        {
            p[self.order].update(|n| *n = end);
        }
        self.next = self.next.max(end);
    }
}

impl Drop for Turns {
    fn drop(&mut self) {
        self.finish_before(TurnStage::COUNT);
    }
}

/// The harness's coordination state. Every field only grows (flags are
/// set, counts go up), so every predicate waited on is monotone: a
/// [`Monotone`] cell, on which waiters never race with each other or with
/// the update they wait for (a mutex and condvar made every re-check of
/// every waiter an acquisition the exploration had to permute).
struct Coord {
    st: Monotone<Phase>,
}

impl Coord {
    fn update(&self, f: impl FnOnce(&mut Phase)) {
        self.st.update(f);
    }

    /// Waits until `pred` holds (true) or `timeout` passes (false).
    fn wait(&self, pred: impl Fn(&Phase) -> bool, timeout: Option<Duration>) -> bool {
        self.st.wait_until(pred, timeout)
    }

    /// Reads the state (races with updates).
    fn read<R>(&self, f: impl FnOnce(&Phase) -> R) -> R {
        self.st.read(f)
    }
}

/// Runs a system call of a userspace thread in group `kernel` (see the
/// module docs).
fn syscall<R>(f: impl FnOnce() -> R) -> R {
    sched::set_group("kernel");
    let r = f();
    sched::set_group("userspace");
    r
}

enum Exporter {
    Vfio(VfioPciDevice),
    Rdma(UverbsDevice),
    Heap(SystemHeap),
    Vram(GpuVram),
}

struct Instance {
    imp: Arc<dyn Importer>,
    proc: Arc<Process>,
    index: usize,
}

fn instance_name(spec: &ImporterSpec, i: usize) -> String {
    format!("{}{i}", spec.name)
}

fn build_platform(spec: &WorldSpec) -> Result<Platform, String> {
    let mut cfg = PlatformConfig::default().switch("sw0").ram_frames(256);
    cfg.mmio_size = WORLD_MMIO_SIZE;
    cfg.flr_delay = RESET_WINDOW;
    cfg.max_devices = 16 + spec.instances();
    cfg.unordered_speculation = spec.read_ahead_unordered;
    cfg = match spec.exporter {
        ExporterKind::Vfio => cfg.device(
            DeviceConfig::new("vfio0")
                .bar(0, VFIO_BAR_SIZE)
                .behind_switch("sw0"),
        ),
        ExporterKind::GpuVram => cfg.device(
            DeviceConfig::new("vram0")
                .bar(0, VFIO_BAR_SIZE)
                .behind_switch("sw0"),
        ),
        ExporterKind::RdmaDm => cfg.device(
            DeviceConfig::new("mlx0")
                .bar(0, VFIO_BAR_SIZE)
                .behind_switch("sw0"),
        ),
        ExporterKind::SystemHeap => cfg,
    };
    let mut index = 0;
    for s in &spec.importers {
        for _ in 0..s.count {
            cfg = cfg.device(DeviceConfig::new(instance_name(s, index)).behind_switch("sw0"));
            index += 1;
        }
    }
    Platform::new(cfg).map_err(|e| format!("platform: {e}"))
}

/// Builds the importer model an [`ImporterSpec`] describes, on the host's
/// device `name` (the one place a spec becomes a driver: the worlds here
/// and the soak's episodes both use it).
pub fn make_importer(
    host: &Host,
    s: &ImporterSpec,
    name: &str,
) -> Result<Arc<dyn Importer>, ImportError> {
    let dev = host
        .device_by_name(name)
        .ok_or_else(|| ImportError::NotSetUp(name.into()))?;
    Ok(match s.base {
        ImporterBase::Static => Arc::new(StaticImporter::new(host, name, dev)?),
        ImporterBase::Gpu => {
            let cfg = GpuConfig {
                kernel_fence: s.invalidate == OnInvalidate::Evict(Usage::Kernel),
                writes_after_fences: s.writes_after_fences,
                worker_latency: s.unmap_latency,
                unmap_on_free: s.unmap == UnmapWhen::OnFree,
                readahead: s.read_ahead,
                readahead_idle_passes: s.read_ahead_idle_passes,
                remap: s.remap,
            };
            let g = GpuDevice::new(host, dev, cfg)?;
            Arc::new(GpuImport::new(name, &g, true))
        }
        ImporterBase::Rdma => {
            let flavour = s.mr_flavour().ok_or_else(|| ImportError::Invalid {
                stage: Stage::Attach,
                what: format!("{name}: no RDMA model has this behaviour"),
            })?;
            let nic = Nic::new(host, dev)?;
            if s.autonomous_dma {
                Arc::new(RdmaImporter::with_autonomous_dma(
                    host, name, flavour, &nic, true,
                ))
            } else {
                Arc::new(RdmaImporter::new(host, name, flavour, &nic, true))
            }
        }
        ImporterBase::Kmod => {
            return Err(ImportError::Invalid {
                stage: Stage::Attach,
                what: format!("{name}: a kmod importer runs only in a script scenario"),
            });
        }
        ImporterBase::Iommufd => Arc::new(IommufdImporter::with_release_order(
            host,
            name,
            dev,
            s.destroy_before_detach,
        )?),
        ImporterBase::Cpu => Arc::new(CpuMmapImporter::new(host, name)),
    })
}

/// Runs the world once and returns what it showed. On real threads only
/// [`StallMode::Normal`] is possible (a stall request is reported as an
/// error and the run is normal).
pub fn run_world(spec: &WorldSpec, mode: StallMode) -> Observation {
    run_world_with(spec, mode, &WorldProbe::new())
}

/// [`run_world`], recording into `probe` as it goes.
pub fn run_world_with(spec: &WorldSpec, mode: StallMode, probe: &Arc<WorldProbe>) -> Observation {
    let mode = if mode == StallMode::StallUserspaceAtRevoke && !sched::active() {
        probe.error("stall mode needs a controlled execution; ran normally".into());
        StallMode::Normal
    } else {
        mode
    };
    // Where userspace stalls is a choice of the search (see the revoker),
    // made before anything else runs: it commutes with the whole world, so
    // made here its branches are the whole subtrees, where made later its
    // racers would be interleaved with the tasks already running.
    let stall_at = match (mode, spec.trigger.is_cycle()) {
        (StallMode::Normal, _) => StallAt::Never,
        (StallMode::StallUserspaceAtRevoke, true) => {
            let points = [
                StallAt::First,
                StallAt::Second,
                StallAt::Anywhere,
                StallAt::Remap,
            ];
            points[search_choice(if spec.stall_in_remap { 4 } else { 3 })]
        }
        (StallMode::StallUserspaceAtRevoke, false) => {
            [StallAt::First, StallAt::Anywhere][search_choice(2)]
        }
    };
    let platform = match build_platform(spec) {
        Ok(p) => p,
        Err(e) => {
            probe.error(e);
            return probe.snapshot();
        }
    };
    let host = Host::new(platform.clone());
    probe.st.lock().monitor = Some(platform.monitor().clone());
    {
        // Kernel splats of the drivers (KASAN reports) are WARNs too.
        let p2 = probe.clone();
        host.set_splat_sink(Some(Arc::new(move |m: &str| {
            p2.with(|o| o.warnings.push(m.to_owned()))
        })));
    }
    // Engines and the timer belong to the hardware.
    sched::set_group("hw");
    let built = build_world(spec, &host, probe);
    sched::set_group("main");
    let Some((exporter, instances)) = built else {
        platform.shutdown();
        return probe.snapshot();
    };
    let coord = Arc::new(Coord {
        st: Monotone::new(Phase::default()),
    });
    let gate_ctx = FenceContext::named("world", "gate");
    let (gate, gate_h) = gate_ctx.create();
    // A cycle's second gate: the jobs queued after the re-map are in
    // flight across the second revoke.
    let (gate2, gate2_h) = gate_ctx.create();
    let vmm = Process::new(1);
    let bufs = Arc::new(Mutex::new(Vec::<DmaBufRef>::new()));

    let timer = spawn_timer(&coord, gate_h, gate2_h);
    let vmm_thread = spawn_vmm(spec, &exporter, &instances, &vmm, &coord, probe, &bufs);
    // The moment the first importer begins to re-map, when userspace may
    // stall from there on (`StallAt::Remap`): set once, by that importer.
    let remap_begun = (stall_at == StallAt::Remap).then(|| Arc::new(SetOnce::<bool>::new()));
    let progress = (spec.importers_take_turns && instances.len() > 1).then(|| {
        Arc::new(
            instances
                .iter()
                .map(|_| Monotone::new(0))
                .collect::<Vec<_>>(),
        )
    });
    let user_threads: Vec<JoinHandle<()>> = instances
        .iter()
        .enumerate()
        .map(|(order, inst)| {
            let turns = Turns {
                progress: progress.clone(),
                order,
                next: 0,
            };
            let announce = RemapAnnounce(remap_begun.clone().filter(|_| order == 0));
            spawn_importer(
                spec,
                inst,
                (turns, announce),
                [&gate, &gate2],
                &coord,
                probe,
            )
        })
        .collect();
    let revoker = spawn_revoker(
        spec,
        (stall_at, remap_begun),
        &exporter,
        &vmm,
        &coord,
        probe,
        instances.len(),
    );

    let _ = revoker.join();
    if mode == StallMode::Normal {
        let _ = vmm_thread.join();
        for h in user_threads {
            let _ = h.join();
        }
    }
    let _ = timer.join();
    for inst in &instances {
        inst.imp.shutdown();
    }
    let spec_reads: usize = platform
        .engines()
        .iter()
        .map(|e| e.speculative_reads())
        .sum();
    bump(probe, "spec_reads", spec_reads as u64);
    platform.shutdown();
    if mode == StallMode::Normal {
        vmm.close_all();
        for inst in &instances {
            inst.proc.close_all();
        }
    }
    let bufs = bufs.lock().clone();
    finish(mode, &host, &exporter, &instances, &bufs, probe);
    let obs = probe.snapshot();
    if mode == StallMode::StallUserspaceAtRevoke {
        // The stalled processes never run again: once the observation is
        // taken, let them exit (their fds close), as a killed process
        // would, so the world they hold is freed instead of piling up over
        // thousands of runs.
        vmm.close_all();
        for inst in &instances {
            inst.proc.close_all();
        }
    }
    obs
}

fn build_world(
    spec: &WorldSpec,
    host: &Host,
    probe: &Arc<WorldProbe>,
) -> Option<(Arc<Exporter>, Vec<Instance>)> {
    let exporter = match spec.exporter {
        ExporterKind::Vfio => host
            .device_by_name("vfio0")
            .ok_or_else(|| "no vfio0".to_string())
            .and_then(|d| {
                VfioPciDevice::bind(host, d, spec.protocol.clone()).map_err(|e| e.to_string())
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
        ExporterKind::RdmaDm => host
            .device_by_name("mlx0")
            .ok_or_else(|| "no mlx0".to_string())
            .and_then(|d| {
                UverbsDevice::bind(host, d, spec.protocol.clone()).map_err(|e| e.to_string())
            })
            .map(Exporter::Rdma),
    };
    let exporter = match exporter {
        Ok(e) => Arc::new(e),
        Err(e) => {
            probe.error(format!("exporter: {e}"));
            return None;
        }
    };
    let mut instances = Vec::new();
    let mut index = 0;
    for s in &spec.importers {
        for _ in 0..s.count {
            let name = instance_name(s, index);
            match make_importer(host, s, &name) {
                Ok(imp) => instances.push(Instance {
                    imp,
                    proc: Process::new(100 + index as u32),
                    index,
                }),
                Err(e) => probe.error(format!("{name}: {e}")),
            }
            index += 1;
        }
    }
    Some((exporter, instances))
}

fn spawn_timer(coord: &Arc<Coord>, gate: SignalHandle, gate2: SignalHandle) -> JoinHandle<()> {
    let coord = coord.clone();
    thread::spawn_named("gate-timer".into(), move || {
        sched::set_group("hw");
        coord.wait(|p| p.trigger_begun || p.export_failed, None);
        thread::sleep(INFLIGHT_DELAY);
        let _ = gate.signal();
        coord.wait(
            |p| p.second_begun || p.trigger_done || p.export_failed,
            None,
        );
        thread::sleep(INFLIGHT_DELAY);
        let _ = gate2.signal();
    })
}

/// A choice among `n` alternatives made by the search: up to `n - 1`
/// races of two tasks claiming a slot, each a scheduling decision recorded
/// in the schedule and replayed by its token (DFS and DPOR explore every
/// alternative: the claims are conflicting writes to one atomic). DPOR runs
/// one execution per alternative when nothing else runs beside the racers
/// (`n` racers at once would give it `n!`), and splits a search into parts
/// below the choice ([`sched::before_split`]): made before anything else
/// runs, the racers race with nothing after it. Random sampling picks `k < n -
/// 1` with probability `2^-(k+1)`. On real threads, and for `n < 2`, the
/// answer is 0.
pub fn search_choice(n: usize) -> usize {
    if n < 2 || !sched::active() {
        return 0;
    }
    // A chain of two-way races: each has exactly two classes of schedules,
    // where n racers at once would have n! (the losers' failed claims
    // conflict with each other too). Above the split node of a DPOR search
    // split into parts: each part gets its share of every alternative.
    let _split = sched::before_split();
    let mut k = 0;
    while k + 1 < n && race_of_two() {
        k += 1;
    }
    k
}

/// Two tasks race to claim a slot; true when the second one won.
fn race_of_two() -> bool {
    use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
    let slot = Arc::new(AtomicUsize::new(usize::MAX));
    let racers: Vec<JoinHandle<()>> = (0..2)
        .map(|i| {
            let slot = slot.clone();
            thread::spawn_named(format!("choice{i}"), move || {
                sched::set_group("hw");
                let _ = slot.compare_exchange(usize::MAX, i, Ordering::AcqRel, Ordering::Acquire);
            })
        })
        .collect();
    for r in racers {
        let _ = r.join();
    }
    slot.load(Ordering::Acquire) == 1
}

fn spawn_vmm(
    spec: &WorldSpec,
    exporter: &Arc<Exporter>,
    instances: &[Instance],
    vmm: &Arc<Process>,
    coord: &Arc<Coord>,
    probe: &Arc<WorldProbe>,
    bufs: &Arc<Mutex<Vec<DmaBufRef>>>,
) -> JoinHandle<()> {
    let exporter = exporter.clone();
    let procs: Vec<Arc<Process>> = instances.iter().map(|i| i.proc.clone()).collect();
    let (vmm, coord, probe, bufs) = (vmm.clone(), coord.clone(), probe.clone(), bufs.clone());
    let cpu = spec.cpu_access;
    thread::spawn_named("vmm".into(), move || {
        sched::set_group("userspace");
        let fd = syscall(|| export(&exporter, &vmm));
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                probe.error(format!("export: {e}"));
                coord.update(|p| p.export_failed = true);
                return;
            }
        };
        if let Ok(b) = vmm.dma_buf_get(fd) {
            bufs.lock().push(b.downgrade());
        }
        for p in &procs {
            if let Err(e) = vmm.send_fd(fd, p) {
                probe.error(format!("send_fd: {e}"));
            }
        }
        coord.update(|p| p.fds_ready = true);
        if cpu && let Exporter::Vfio(v) = &*exporter {
            cpu_touches(v, &coord, &probe);
        }
    })
}

fn export(exporter: &Exporter, vmm: &Process) -> Result<i32, String> {
    let len = BUF_PAGES * PAGE_SIZE;
    match exporter {
        Exporter::Vfio(v) => v
            .export_dma_buf(
                vmm,
                0,
                &[DmaRange {
                    offset: 0,
                    length: len,
                }],
                2,
            )
            .map_err(|e| e.to_string()),
        Exporter::Rdma(r) => {
            let dm = r.alloc_dm(len).map_err(|e| e.to_string())?;
            r.export_dm(vmm, dm, 2).map_err(|e| e.to_string())
        }
        Exporter::Heap(h) => {
            let b = h.allocate(len, 2, 0).map_err(|e| e.to_string())?;
            vmm.dma_buf_fd(b, 0).map_err(|e| e.to_string())
        }
        Exporter::Vram(g) => {
            let b = g.create_bo(BUF_PAGES, 2).map_err(|e| e.to_string())?;
            vmm.dma_buf_fd(b, 0).map_err(|e| e.to_string())
        }
    }
}

fn cpu_touches(v: &VfioPciDevice, coord: &Coord, probe: &WorldProbe) {
    let m = match syscall(|| v.mmap_bar(0, Accessor::new("vmm"))) {
        Ok(m) => m,
        // The trigger may have closed the device before the VMM got here.
        Err(VfioError::Closed { .. }) => {
            bump(probe, "cpu_mmap_refused", 1);
            return;
        }
        Err(e) => {
            probe.error(format!("mmap of BAR 0: {e}"));
            return;
        }
    };
    for i in 0..CPU_TOUCHES {
        if coord.read(|p| p.trigger_done) {
            break;
        }
        let r = syscall(|| m.write(0, &[i as u8; 8]));
        probe.with(|o| {
            let k = if r.is_ok() { "cpu_ok" } else { "cpu_sigbus" };
            *o.counters.entry(k.into()).or_default() += 1;
        });
        thread::sleep(Duration::from_micros(40));
    }
    m.munmap();
}

/// The record of `ino`'s revoke in progress (the last one begun).
fn open_revoke(o: &mut Observation, ino: u64) -> Option<&mut RevokeRecord> {
    o.revokes
        .iter_mut()
        .rev()
        .find(|r| r.ino == ino && !r.returned)
}

fn bump(probe: &WorldProbe, k: &str, n: u64) {
    probe.with(|o| *o.counters.entry(k.into()).or_default() += n);
}

fn pattern(index: usize, job: usize) -> u8 {
    (index as u8).wrapping_mul(32).wrapping_add(job as u8 + 1)
}

/// Tracks what each page should read back (single-importer worlds of the
/// exporters whose memory survives).
struct Expect {
    on: bool,
    pages: Vec<Option<u8>>,
}

impl Expect {
    /// Counts a job's outcome and checks what it read.
    fn finish(
        &mut self,
        probe: &WorldProbe,
        name: &str,
        page: u64,
        pat: u8,
        r: &Result<Vec<u8>, Errno>,
    ) {
        record_job(probe, r);
        self.check(probe, name, page, pat, r);
    }

    /// Waits for queued jobs in order (each wait a system call) and
    /// finishes each.
    fn wait_queued(&mut self, probe: &WorldProbe, name: &str, queued: Queued) {
        for (page, pat, j) in queued {
            let r = match j {
                Ok(j) => syscall(|| j.wait()),
                Err(e) => Err(e.errno()),
            };
            self.finish(probe, name, page, pat, &r);
        }
    }

    /// A job wrote `pat` to `page` and read the next page.
    fn check(
        &mut self,
        probe: &WorldProbe,
        name: &str,
        page: u64,
        pat: u8,
        r: &Result<Vec<u8>, Errno>,
    ) {
        let from = read_page(page, BUF_PAGES);
        match r {
            Ok(data) => {
                if self.on
                    && let Some(want) = self.pages[from as usize]
                    && data.len() == JOB_BYTES
                    && data.iter().any(|b| *b != want)
                {
                    bump(probe, "data_mismatch", 1);
                    probe.error(format!(
                        "{name}: page {from} read {:#04x}, expected {want:#04x}",
                        data[0]
                    ));
                }
                self.pages[page as usize] = Some(pat);
            }
            // Whether the write landed is unknown.
            Err(_) => self.pages[page as usize] = None,
        }
    }
}

fn record_job(probe: &WorldProbe, r: &Result<Vec<u8>, Errno>) {
    match r {
        Ok(_) => bump(probe, "jobs_ok", 1),
        Err(_) => bump(probe, "jobs_failed", 1),
    }
}

/// DMA jobs queued behind `gate` (one system call each), jobs `ks` of
/// importer `index`: each with its page and pattern.
type Queued = Vec<(u64, u8, Result<Job, ImportError>)>;

fn queue_jobs(
    imp: &dyn Importer,
    index: usize,
    ks: std::ops::Range<usize>,
    gate: &Fence,
) -> Queued {
    ks.map(|k| {
        let page = k as u64 % BUF_PAGES;
        let pat = pattern(index, k);
        (
            page,
            pat,
            syscall(|| imp.submit(page, pat, Some(gate.clone()))),
        )
    })
    .collect()
}

/// Submits one ungated job and waits for it, in one system call.
fn run_job(imp: &dyn Importer, page: u64, pat: u8) -> Result<Vec<u8>, Errno> {
    syscall(|| match imp.submit(page, pat, None) {
        Ok(j) => j.wait(),
        Err(e) => Err(e.errno()),
    })
}

fn spawn_importer(
    spec: &WorldSpec,
    inst: &Instance,
    (mut turns, mut announce): (Turns, RemapAnnounce),
    gates: [&Fence; 2],
    coord: &Arc<Coord>,
    probe: &Arc<WorldProbe>,
) -> JoinHandle<()> {
    let imp = inst.imp.clone();
    let proc = inst.proc.clone();
    let index = inst.index;
    let (gate, gate2, coord, probe) = (
        gates[0].clone(),
        gates[1].clone(),
        coord.clone(),
        probe.clone(),
    );
    let jobs = spec.jobs;
    let cycle = spec.trigger.is_cycle();
    let teardown_race = spec.teardown_during_revoke;
    let remap_race = spec.remap_during_unrevoke;
    let early = spec.map_during_invalidate;
    let importers = spec.instances();
    let single = importers == 1;
    let check = single
        && matches!(
            spec.exporter,
            ExporterKind::SystemHeap | ExporterKind::GpuVram
        );
    thread::spawn_named(imp.name().to_owned(), move || {
        sched::set_group("userspace");
        let name = imp.name().to_owned();
        let mut expect = Expect {
            on: check,
            pages: vec![Some(0); BUF_PAGES as usize],
        };
        coord.wait(|p| p.fds_ready || p.export_failed, None);
        let fd = proc.fds().into_iter().next();
        turns.start(TurnStage::Setup);
        let setup = match fd {
            Some(fd) => syscall(|| imp.setup(&proc, fd)),
            None => Err(ImportError::NotSetUp(name.clone())),
        };
        turns.done(TurnStage::Setup);
        if let Err(e) = setup {
            if e.is_refusal() {
                probe.with(|o| {
                    o.refusals.push(Refusal {
                        importer: name.clone(),
                        stage: e.stage(),
                        errno: e.errno(),
                    })
                });
            } else {
                probe.error(format!("{name}: setup: {e}"));
            }
            proc.close_all();
            if !single {
                coord.update(|p| p.set_up += 1);
            }
            coord.update(|p| p.setups_done += 1);
            return;
        }
        if !single {
            // Every importer sets up before any queues DMA behind the gate.
            // A gated job's fence signals only after the trigger, which
            // waits for every setup: an importer that waited on such a
            // fence under the reservation lock (a GPU re-binding after an
            // eviction by another's pin) would otherwise hold up a setup
            // that needs that lock, and nothing would move again.
            coord.update(|p| p.set_up += 1);
            coord.wait(|p| p.set_up >= importers, None);
        }
        turns.start(TurnStage::Queue);
        let queued = queue_jobs(&*imp, index, 0..jobs, &gate);
        turns.done(TurnStage::Queue);
        coord.update(|p| {
            p.setups_done += 1;
            p.accepted += 1;
        });
        if teardown_race {
            // Userspace lets go of the buffer while the revoke runs (it
            // closes its fds, the kernel releases its mappings).
            coord.wait(|p| p.trigger_begun || p.trigger_done, None);
            turns.start(TurnStage::Teardown);
            if let Err(e) = syscall(|| imp.teardown()) {
                probe.error(format!("{name}: teardown: {e}"));
            }
            turns.done(TurnStage::Teardown);
            expect.wait_queued(&probe, &name, queued);
            return;
        }
        expect.wait_queued(&probe, &name, queued);
        if early {
            coord.wait(|p| p.trigger_begun, Some(POST_WAIT));
        } else if cycle && remap_race {
            // Straight on to the re-map, as soon as the un-revoke begins.
        } else {
            coord.wait(
                |p| p.revokes_returned >= 1 || p.trigger_done,
                Some(POST_WAIT),
            );
            thread::sleep(POST_DELAY);
        }
        let mut next = jobs;
        // Un-revoke, re-map, one job that must run, then new DMA in flight
        // across the second revoke; skipped when the un-revoke does not come
        // in time (a revoke stuck on this very importer).
        let ready = cycle
            && if remap_race {
                // Re-map while the un-revoke runs.
                coord.wait(|p| p.unrevoke_begun, Some(POST_WAIT))
            } else {
                coord.wait(|p| p.unrevoked, Some(POST_WAIT))
            };
        if ready && !coord.read(|p| p.trigger_done) {
            turns.start(TurnStage::Remap);
            announce.begun();
            let mut remap = syscall(|| imp.remap());
            if remap_race {
                // The racing attempt may legitimately fail (the buffer is
                // still revoked); what l-restore judges is the first job
                // once the un-revoke is over.
                let page = next as u64 % BUF_PAGES;
                let pat = pattern(index, next);
                let r = run_job(&*imp, page, pat);
                bump(
                    &probe,
                    if r.is_ok() {
                        "jobs_during_unrevoke_ok"
                    } else {
                        "jobs_during_unrevoke_failed"
                    },
                    1,
                );
                expect.finish(&probe, &name, page, pat, &r);
                next += 1;
                coord.wait(|p| p.unrevoked || p.trigger_done, Some(POST_WAIT));
                if remap.is_err() {
                    remap = syscall(|| imp.remap());
                }
            }
            if let Err(e) = &remap {
                bump(&probe, "remap_failed", 1);
                if !e.is_refusal() {
                    probe.error(format!("{name}: remap: {e}"));
                }
            }
            let page = next as u64 % BUF_PAGES;
            let pat = pattern(index, next);
            let r = run_job(&*imp, page, pat);
            bump(
                &probe,
                if r.is_ok() {
                    "jobs_after_unrevoke_ok"
                } else {
                    "jobs_after_unrevoke_failed"
                },
                1,
            );
            // The coordination lock is a shim lock (a scheduling point):
            // read it before taking the probe's plain lock, never under it.
            let expected = imp.restores() && !coord.read(|p| p.permanent);
            probe.with(|o| {
                o.restores.push(Restore {
                    importer: name.clone(),
                    expected,
                    remap_ok: remap.is_ok(),
                    job_ok: r.is_ok(),
                })
            });
            expect.finish(&probe, &name, page, pat, &r);
            next += 1;
            let queued = queue_jobs(&*imp, index, next..next + jobs, &gate2);
            next += jobs;
            coord.update(|p| p.remapped += 1);
            turns.done(TurnStage::Remap);
            expect.wait_queued(&probe, &name, queued);
            coord.wait(
                |p| p.revokes_returned >= 2 || p.trigger_done,
                Some(POST_WAIT),
            );
            thread::sleep(POST_DELAY);
        }
        // No re-map now if none began: the staller waiting for one is told.
        drop(announce);
        turns.start(TurnStage::Jobs);
        for k in next..next + jobs {
            let page = k as u64 % BUF_PAGES;
            let pat = pattern(index, k);
            let r = run_job(&*imp, page, pat);
            expect.finish(&probe, &name, page, pat, &r);
        }
        turns.done(TurnStage::Jobs);
        // The application keeps its buffer until the device event is over
        // (or it gives up waiting): an importer that needs userspace to
        // unmap is not let off by an early exit.
        coord.wait(|p| p.trigger_done, Some(POST_WAIT));
        turns.start(TurnStage::Teardown);
        if let Err(e) = syscall(|| imp.teardown()) {
            probe.error(format!("{name}: teardown: {e}"));
        }
        turns.done(TurnStage::Teardown);
    })
}

fn spawn_revoker(
    spec: &WorldSpec,
    (stall_at, remap_begun): (StallAt, Option<Arc<SetOnce<bool>>>),
    exporter: &Arc<Exporter>,
    vmm: &Arc<Process>,
    coord: &Arc<Coord>,
    probe: &Arc<WorldProbe>,
    n: usize,
) -> JoinHandle<()> {
    let (exporter, vmm, coord, probe) =
        (exporter.clone(), vmm.clone(), coord.clone(), probe.clone());
    let spec = spec.clone();
    let obs = || revoke_observer(&coord, &probe);
    match &*exporter {
        Exporter::Vfio(v) => v.set_revoke_observer(Some(obs())),
        Exporter::Rdma(r) => r.set_revoke_observer(Some(obs())),
        Exporter::Heap(_) | Exporter::Vram(_) => {}
    }
    thread::spawn_named("revoker".into(), move || {
        sched::set_group("revoker");
        coord.wait(
            |p| (p.fds_ready && p.setups_done >= n) || p.export_failed,
            None,
        );
        // Where userspace stalls (chosen by the search before the world
        // was built): when the (first) revoke begins, when a cycle's second
        // one begins, or at any scheduling point after the trigger began
        // and before the clock next moves (a task that stalls it whenever
        // the search runs it). Every revoke is judged for l-bounded.
        if stall_at == StallAt::First {
            sched::stall_group("userspace");
        }
        let staller = match (stall_at, remap_begun) {
            (StallAt::Anywhere, _) => Some(thread::spawn_named("userspace-staller".into(), || {
                sched::set_group("hw");
                sched::stall_group("userspace");
            })),
            // Blocked until the re-map begins (a task that cannot run does
            // not keep the clock still), then as above from that point.
            (StallAt::Remap, Some(begun)) => {
                Some(thread::spawn_named("userspace-staller".into(), move || {
                    sched::set_group("hw");
                    if begun.wait() {
                        sched::stall_group("userspace");
                    }
                }))
            }
            _ => None,
        };
        if matches!(&*exporter, Exporter::Vfio(_) | Exporter::Rdma(_)) {
            let t0 = now_ns();
            probe.with(|o| o.revoke_started = true);
            probe.st.lock().t0 = Some(t0);
        }
        coord.update(|p| p.trigger_begun = true);
        let stall_second = stall_at == StallAt::Second;
        run_trigger(&spec, &exporter, &vmm, &coord, &probe, stall_second);
        if let Some(h) = staller {
            let _ = h.join();
        }
        coord.update(|p| p.trigger_done = true);
    })
}

/// The observer of a revoking exporter: records every revoke of every
/// buffer in the probe and tells the timeline how far it got.
fn revoke_observer(coord: &Arc<Coord>, probe: &Arc<WorldProbe>) -> RevokeObserver {
    let (coord2, probe2) = (coord.clone(), probe.clone());
    Arc::new(move |ev: &RevokeEvent| match ev {
        RevokeEvent::Warn(w) => probe2.with(|o| o.warnings.push(w.clone())),
        RevokeEvent::Begin { ino, ns } => probe2.with(|o| {
            o.revokes.push(RevokeRecord {
                ino: *ino,
                began_ns: *ns,
                ..RevokeRecord::default()
            })
        }),
        RevokeEvent::FencesDone { ino, seq } => probe2.with(|o| {
            if let Some(r) = open_revoke(o, *ino) {
                r.fences_done_seq = Some(*seq);
            }
        }),
        RevokeEvent::UnrevokeBegin { .. } => coord2.update(|p| p.unrevoke_begun = true),
        RevokeEvent::Unrevoked { ino, seq } => probe2.with(|o| {
            if let Some(r) = o
                .revokes
                .iter_mut()
                .rev()
                .find(|r| r.ino == *ino && r.unrevoked_seq.is_none())
            {
                r.unrevoked_seq = Some(*seq);
            }
        }),
        RevokeEvent::Returned(r) => {
            {
                let mut st = probe2.st.lock();
                let first = !st.obs.revoke_returned;
                if first {
                    let t0 = st.t0.unwrap_or(r.began_ns);
                    st.obs.revoke_returned = true;
                    st.obs.revoke_latency_ns = Some(r.returned_ns.saturating_sub(t0));
                    st.obs.revoke_return_seq = Some(r.returned_seq);
                    st.obs.live_mappings_at_return = r.live_mappings_at_return;
                }
                if let Some(rec) = open_revoke(&mut st.obs, r.ino) {
                    rec.returned = true;
                    rec.returned_seq = Some(r.returned_seq);
                    rec.latency_ns = Some(r.returned_ns.saturating_sub(r.began_ns));
                    rec.live_mappings_at_return = r.live_mappings_at_return;
                    rec.already_revoked = r.already_revoked;
                }
            }
            coord2.update(|p| p.revokes_returned += 1);
        }
    })
}

/// Where a stalled run stalls userspace (see the revoker).
#[derive(Clone, Copy, PartialEq, Eq)]
enum StallAt {
    Never,
    First,
    Second,
    Anywhere,
    /// Anywhere from the first importer's re-map on, until the clock next
    /// moves.
    Remap,
}

/// The first importer's word to the staller of [`StallAt::Remap`]: `true`
/// when its re-map begins, `false` when it ends without one (refused, no
/// un-revoke in time, an early exit), so the staller never waits for
/// nothing. The other importers and the other stall points carry `None`.
struct RemapAnnounce(Option<Arc<SetOnce<bool>>>);

impl RemapAnnounce {
    fn begun(&mut self) {
        if let Some(s) = self.0.take() {
            s.set(true);
        }
    }
}

impl Drop for RemapAnnounce {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.set(false);
        }
    }
}

fn report<E: std::fmt::Display>(probe: &WorldProbe, r: Result<TriggerReport, E>) {
    match r {
        Ok(rep) => {
            bump(probe, "unrevoke_refused", rep.unrevoke_refused.len() as u64);
            for e in rep.errors {
                probe.error(format!("trigger: {e}"));
            }
        }
        Err(e) => probe.error(format!("trigger: {e}")),
    }
}

fn run_trigger(
    spec: &WorldSpec,
    exporter: &Exporter,
    vmm: &Process,
    coord: &Coord,
    probe: &WorldProbe,
    stall_second: bool,
) {
    match (exporter, spec.trigger) {
        (Exporter::Vfio(v), t) => vfio_trigger(spec, v, t, coord, probe, stall_second),
        (Exporter::Rdma(r), t) => rdma_trigger(r, t, probe),
        (_, Trigger::Close) => vmm.close_all(),
        (Exporter::Vram(g), Trigger::Eviction) => {
            for f in g.evict_all() {
                let _ = f.wait(None);
            }
            bump(probe, "evictions", 1);
            thread::sleep(OFF_WINDOW);
            for f in g.migrate_all_to_vram() {
                let _ = f.wait(None);
            }
            bump(probe, "migrations", 1);
        }
        (_, t) => probe.error(format!(
            "trigger {t:?} is not supported by {:?}",
            spec.exporter
        )),
    }
}

fn vfio_trigger(
    spec: &WorldSpec,
    v: &VfioPciDevice,
    t: Trigger,
    coord: &Coord,
    probe: &WorldProbe,
    stall_second: bool,
) {
    match t {
        Trigger::Flr => report(probe, v.reset(ResetKind::Flr)),
        Trigger::DeviceReset => report(probe, v.reset(ResetKind::DeviceReset)),
        Trigger::HotReset => report(probe, v.reset(ResetKind::HotReset)),
        Trigger::DecodeOff => {
            report(probe, v.set_memory_decode(false));
            thread::sleep(OFF_WINDOW);
            report(probe, v.set_memory_decode(true));
        }
        Trigger::D3hot => {
            report(probe, v.set_power_state(PowerState::D3hot));
            thread::sleep(OFF_WINDOW);
            report(probe, v.set_power_state(PowerState::D0));
        }
        Trigger::Close => {
            report(probe, v.close());
            if spec.hotplug_after_close
                && let Err(e) = v.hotplug_replacement("newdev0")
            {
                probe.error(format!("hotplug: {e}"));
            }
        }
        Trigger::UnrevokeCycle | Trigger::FlrCycle | Trigger::PermanentCycle => {
            if t == Trigger::FlrCycle {
                report(probe, v.reset(ResetKind::Flr));
            } else {
                report(probe, v.set_memory_decode(false));
                thread::sleep(OFF_WINDOW);
                if t == Trigger::PermanentCycle {
                    // The VMM revokes for good while the buffer is
                    // temporarily revoked (TEMP -> PERM).
                    coord.update(|p| p.permanent = true);
                    report(probe, v.revoke_permanently());
                }
                report(probe, v.set_memory_decode(true));
            }
            coord.update(|p| p.unrevoked = true);
            let accepted = coord.read(|p| p.accepted);
            coord.wait(|p| p.remapped >= accepted, Some(REMAP_WAIT));
            if stall_second {
                sched::stall_group("userspace");
            }
            coord.update(|p| p.second_begun = true);
            report(probe, v.set_memory_decode(false));
            thread::sleep(OFF_WINDOW);
            // Close while the buffer is still revoked: cleanup of a revoked
            // buffer (the c64a647c84f3 path).
            report(probe, v.close());
        }
        Trigger::Eviction | Trigger::DmFree | Trigger::Disassociate => {
            probe.error(format!("trigger {t:?} is not supported by VFIO"))
        }
    }
}

fn rdma_trigger(r: &UverbsDevice, t: Trigger, probe: &WorldProbe) {
    match t {
        Trigger::DmFree => {
            match r.dm_handles().first() {
                Some(&dm) => report(probe, r.free_dm(dm)),
                None => probe.error("dm-free: no device memory to free".into()),
            }
            // The process goes on for a while, then exits.
            thread::sleep(OFF_WINDOW);
            report(probe, r.close());
        }
        Trigger::Disassociate => {
            // The reset window is the FLR's own.
            report(probe, r.disassociate());
            report(probe, r.close());
        }
        Trigger::Close => report(probe, r.close()),
        t => probe.error(format!(
            "trigger {t:?} is not supported by the RDMA exporter"
        )),
    }
}

fn finish(
    mode: StallMode,
    host: &Host,
    exporter: &Exporter,
    instances: &[Instance],
    bufs: &[DmaBufRef],
    probe: &WorldProbe,
) {
    let platform = host.platform();
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    for inst in instances {
        for (k, v) in inst.imp.counters() {
            *counters.entry(k.to_owned()).or_default() += v;
        }
    }
    match exporter {
        Exporter::Vfio(v) => {
            let (r, u) = v.counts();
            counters.insert("vfio_revokes".into(), r);
            counters.insert("vfio_unrevokes".into(), u);
        }
        Exporter::Vram(g) => {
            counters.insert("vram_moves".into(), g.moves());
        }
        Exporter::Rdma(r) => {
            counters.insert("rdma_revokes".into(), r.revokes());
        }
        Exporter::Heap(_) => {}
    }
    let mut leaks = Vec::new();
    for b in bufs {
        // Per-buffer diagnostics: unlike the process-wide list (keyed by
        // inode, which is per execution under the scheduler) they cannot be
        // mixed up with another execution's.
        let diags = b.diagnostics();
        if mode != StallMode::Normal {
            continue;
        }
        if !b.is_released() {
            leaks.push(format!("dma-buf ino {} not released", b.ino()));
        }
        let attached = b.attachments().len();
        if attached != 0 {
            leaks.push(format!(
                "dma-buf ino {}: {attached} attachment(s) never detached",
                b.ino()
            ));
        }
        leaks.extend(
            diags
                .into_iter()
                .map(|d| format!("dma-buf ino {}: {d}", b.ino())),
        );
    }
    if mode == StallMode::Normal {
        let stats = platform.stats();
        if stats.live_mappings != 0 {
            leaks.push(format!(
                "{} declared mapping(s) never unmapped",
                stats.live_mappings
            ));
        }
        if stats.iommu_pages_mapped != 0 {
            leaks.push(format!(
                "{} IOVA page(s) still mapped",
                stats.iommu_pages_mapped
            ));
        }
        if stats.frames_allocated != 0 {
            leaks.push(format!(
                "{} RAM frame(s) still allocated",
                stats.frames_allocated
            ));
        }
    }
    probe.with(|o| {
        for (k, v) in counters {
            *o.counters.entry(k).or_default() += v;
        }
        o.leaks = leaks;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
    use dmabuf_core::sync::sched::{Dpor, Outcome, RunConfig, Strategy};

    /// Three importers' stages under every order the search finds: the
    /// second skips its re-map (its cycle did not come) and the third is
    /// refused at setup and ends, so the others must not wait for them.
    fn turns_program(log: Arc<parking_lot::Mutex<Vec<(usize, TurnStage)>>>) {
        let progress = Arc::new((0..3).map(|_| Monotone::new(0)).collect::<Vec<_>>());
        let between = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..3)
            .map(|order| {
                let (progress, log, between) = (progress.clone(), log.clone(), between.clone());
                thread::spawn(move || {
                    let mut turns = Turns {
                        progress: Some(progress),
                        order,
                        next: 0,
                    };
                    let stages: &[TurnStage] = match order {
                        0 => &[
                            TurnStage::Setup,
                            TurnStage::Queue,
                            TurnStage::Remap,
                            TurnStage::Jobs,
                            TurnStage::Teardown,
                        ],
                        1 => &[
                            TurnStage::Setup,
                            TurnStage::Queue,
                            TurnStage::Jobs,
                            TurnStage::Teardown,
                        ],
                        _ => &[TurnStage::Setup],
                    };
                    for &st in stages {
                        // Work between stages, racing the others'.
                        between.fetch_add(1, Ordering::Relaxed);
                        turns.start(st);
                        // Entering and leaving, with the turns' own
                        // scheduling points (the log is plain memory, not
                        // seen by the search) around them.
                        log.lock().push((order, st));
                        log.lock().push((order, st));
                        turns.done(st);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn importers_taking_turns_run_their_stages_one_at_a_time_and_skip_what_another_skipped() {
        use TurnStage::*;
        let mut dpor = Dpor::new(1000);
        let mut executions = 0;
        // One stage at a time, in slot order: stage by stage, importer by
        // importer, whatever the schedule of the work between stages.
        let expect: Vec<(usize, TurnStage)> = [
            (0, Setup),
            (1, Setup),
            (2, Setup),
            (0, Queue),
            (1, Queue),
            (0, Remap),
            (0, Jobs),
            (1, Jobs),
            (0, Teardown),
            (1, Teardown),
        ]
        .iter()
        .flat_map(|&e| [e, e])
        .collect();
        while dpor.next_execution() {
            let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let l2 = log.clone();
            let r = sched::run(&mut dpor, &RunConfig::default(), move || turns_program(l2));
            // Nobody waits for a stage another skipped or never reached.
            assert_eq!(r.outcome, Outcome::Completed, "{r:?}");
            assert_eq!(*log.lock(), expect);
            executions += 1;
        }
        assert!(dpor.bounds_hit().is_empty());
        // The work between the stages races: there was more than one
        // schedule to try.
        assert!(executions > 1, "{executions}");
    }

    #[test]
    fn a_search_choice_is_one_execution_per_alternative_each_seen_once() {
        for n in 1..=4 {
            let mut dpor = Dpor::new(1000);
            let mut seen = Vec::new();
            while dpor.next_execution() {
                let got = Arc::new(parking_lot::Mutex::new(None));
                let g2 = got.clone();
                let r = sched::run(&mut dpor, &RunConfig::default(), move || {
                    *g2.lock() = Some(search_choice(n));
                });
                assert_eq!(r.outcome, Outcome::Completed, "{r:?}");
                seen.push(got.lock().expect("the choice was made"));
            }
            assert!(dpor.bounds_hit().is_empty());
            seen.sort_unstable();
            // n racers at once would make n! executions (the losers'
            // claims race too); a chain of two-way races makes n.
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n}");
        }
        // Outside a controlled execution: the first alternative.
        assert_eq!(search_choice(3), 0);
    }
}
