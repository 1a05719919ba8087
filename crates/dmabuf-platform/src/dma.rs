//! DMA: what a device's engines do on the bus. A [`DmaPort`] performs one
//! access synchronously (the device's bus-master interface); a [`DmaEngine`]
//! runs queued jobs asynchronously, each signalling the fence its driver
//! created, and may read ahead speculatively as GPU hardware does.
//!
//! # Addresses
//!
//! [`DmaAddr::Iova`] translates through the IOMMU domain the device is
//! attached to (`iommu_attach_device`); [`DmaAddr::Bus`] reaches memory
//! untranslated (passthrough, or peer-to-peer routed inside a switch). An
//! access may name the declared mapping it goes through ([`DmaRef`]); IOVA
//! accesses are also attributed to the token their IOMMU PTE carries.
//!
//! # A job's life
//!
//! | state | entered by | next |
//! |---|---|---|
//! | queued | [`DmaEngine::submit`] (refused with a typed error, and its fence signalled with that errno, if the engine is stopped or the device unplugged) | running, or cancelled by [`DmaEngine::stop`] (fence `-ECANCELED`) |
//! | running | the engine thread, or [`DmaEngine::step`] on a manual engine | done |
//! | done | every operation finished, or the first one faulted | the outcome is stored, then the fence is signalled (`-EIO` for an IOMMU fault or AER, `-ENODEV` when the device is gone) |
//!
//! The device must be able to master: unplugged is `-ENODEV`; in reset, in
//! D3hot or with bus mastering off is `-EIO` (no hazard: the device simply
//! issues nothing).
//!
//! # Speculative read-ahead
//!
//! With read-ahead on, the engine remembers the ranges its last jobs used
//! (a window of the most recent ones) and, after each job's fence has been
//! signalled, and up to `idle_passes` more times while idle, re-reads them
//! and throws the data away: reads only, never writes, covered by no fence.
//! That is the GPU behaviour of docs/hazards.md, hazard 5.
//! [`DmaEngine::stop_readahead`] is the driver telling its device to stop:
//! when it returns, no speculative read is running and none will start, and
//! the window is forgotten. Speculative faults are reported but never retried.
//!
//! # Threads and determinism
//!
//! A threaded engine runs on its own thread, spawned with
//! `sync::thread::spawn_named` (a schedulable task under the controlled
//! scheduler). A manual engine has no thread: jobs run only in
//! [`DmaEngine::step`] / [`DmaEngine::drain`], on the caller, for
//! deterministic tests. [`DmaEngine::stop`] joins the thread; the platform
//! stops every engine on shutdown.
//!
//! # Lock rules
//!
//! Per engine: queue lock (short, never held while executing); execution
//! lock (held while a job's operations or a read-ahead pass run) -> read-ahead
//! lock -> domain IOTLB lock -> page byte lock. Fences are signalled with no
//! engine lock held, so fence callbacks may submit, drain or stop the engine
//! (stop from the engine's own thread does not join itself). Running a job
//! is a fence signalling section (`dma_fence_begin_signalling`), so an IOMMU
//! fault handler that waits on a fence there shows up in lockdep; a job whose
//! fence is private to its driver ([`DmaJob::with_private_fence`]) opens none.

use crate::access::{Fabric, Io, OpState, Req, Target};
use crate::iommu::{FaultResponse, Iommu, IommuFaultCause, IommuFaultEvent};
use crate::memory::page_chunks;
use crate::monitor::{Accessor, AddrSpace, AerReason, MappingToken, Via};
use crate::pci::{DeviceId, F_D3HOT, F_MASTER, F_PRESENT, F_RESET, F_UNPLUGGED};
use crate::trace;
use dmabuf_core::SignalHandle;
use dmabuf_core::errno::{self, AsErrno, Errno};
use dmabuf_core::lockdep;
use dmabuf_core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use dmabuf_core::sync::thread::{self, JoinHandle};
use dmabuf_core::sync::{Arc, Guarded, Monotone, Mutex, SetOnce, sched};
use dmabuf_core::trace_event;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// The longest single operation (a job's buffers are allocated up front).
pub const MAX_OP_LEN: usize = 1 << 28;

/// A DMA address as the device issues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaAddr {
    /// Translated by the device's IOMMU domain.
    Iova(u64),
    /// Untranslated bus address.
    Bus(u64),
}

impl DmaAddr {
    /// The same address, attributed to a declared mapping.
    pub fn via(self, token: &MappingToken) -> DmaRef {
        DmaRef {
            addr: self,
            mapping: Some(token.clone()),
        }
    }

    fn raw(self) -> u64 {
        match self {
            DmaAddr::Iova(a) | DmaAddr::Bus(a) => a,
        }
    }
}

/// `iova:0x...` or `bus:0x...`, as trace rows print it.
impl std::fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DmaAddr::Iova(a) => write!(f, "iova:{a:#x}"),
            DmaAddr::Bus(a) => write!(f, "bus:{a:#x}"),
        }
    }
}

/// A DMA address and the declared mapping it goes through, if any.
#[derive(Clone, Debug)]
pub struct DmaRef {
    /// The address.
    pub addr: DmaAddr,
    /// The mapping.
    pub mapping: Option<MappingToken>,
}

impl From<DmaAddr> for DmaRef {
    fn from(addr: DmaAddr) -> Self {
        Self {
            addr,
            mapping: None,
        }
    }
}

/// One operation of a job.
#[derive(Clone, Debug)]
pub enum DmaOp {
    /// Read `len` bytes (the data lands in [`JobOutcome::reads`]).
    Read {
        /// Source.
        src: DmaRef,
        /// Length.
        len: usize,
    },
    /// Write bytes.
    Write {
        /// Destination.
        dst: DmaRef,
        /// Data.
        data: Vec<u8>,
    },
    /// Write `len` copies of a byte.
    Fill {
        /// Destination.
        dst: DmaRef,
        /// Length.
        len: usize,
        /// Byte.
        byte: u8,
    },
    /// Read `len` bytes from `src`, then write them to `dst`.
    Copy {
        /// Source.
        src: DmaRef,
        /// Destination.
        dst: DmaRef,
        /// Length.
        len: usize,
    },
}

impl DmaOp {
    /// A read.
    pub fn read(src: impl Into<DmaRef>, len: usize) -> Self {
        DmaOp::Read {
            src: src.into(),
            len,
        }
    }

    /// A write.
    pub fn write(dst: impl Into<DmaRef>, data: Vec<u8>) -> Self {
        DmaOp::Write {
            dst: dst.into(),
            data,
        }
    }

    /// A fill.
    pub fn fill(dst: impl Into<DmaRef>, len: usize, byte: u8) -> Self {
        DmaOp::Fill {
            dst: dst.into(),
            len,
            byte,
        }
    }

    /// A copy.
    pub fn copy(src: impl Into<DmaRef>, dst: impl Into<DmaRef>, len: usize) -> Self {
        DmaOp::Copy {
            src: src.into(),
            dst: dst.into(),
            len,
        }
    }
}

/// A job: operations run in order, then the fence is signalled.
#[derive(Debug, Default)]
pub struct DmaJob {
    /// The operations.
    pub ops: Vec<DmaOp>,
    /// The fence to signal on completion (the driver created it).
    pub fence: Option<SignalHandle>,
    /// Accessor identity for this job (default: the engine's).
    pub accessor: Option<Accessor>,
    /// A label for traces.
    pub label: String,
    /// The fence is the driver's own completion and is never published to
    /// other threads (an RDMA work request's completion): running the job
    /// is then not a fence signalling section.
    pub private_fence: bool,
}

impl DmaJob {
    /// A job of these operations, without a fence.
    pub fn new(ops: Vec<DmaOp>) -> Self {
        Self {
            ops,
            ..Self::default()
        }
    }

    /// Signals `fence` on completion.
    pub fn with_fence(mut self, fence: SignalHandle) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Accesses under another accessor identity.
    pub fn with_accessor(mut self, a: Accessor) -> Self {
        self.accessor = Some(a);
        self
    }

    /// A label for traces.
    pub fn with_label(mut self, l: impl Into<String>) -> Self {
        self.label = l.into();
        self
    }

    /// Marks the fence as private to the driver (see
    /// [`private_fence`](Self::private_fence)).
    pub fn with_private_fence(mut self) -> Self {
        self.private_fence = true;
        self
    }
}

/// Why an access or a job failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// No valid translation.
    #[error("IOMMU fault at iova {iova:#x}: {cause:?}")]
    Iommu {
        /// The IOVA.
        iova: u64,
        /// The cause.
        cause: IommuFaultCause,
    },
    /// The target did not answer (unsupported request).
    #[error("AER at {addr:#x}: {reason:?}")]
    Aer {
        /// The address as issued.
        addr: u64,
        /// Why.
        reason: AerReason,
    },
    /// The device was unplugged.
    #[error("device {device} is gone")]
    DeviceGone {
        /// The device.
        device: DeviceId,
    },
    /// The device cannot master now (reset, D3hot, bus master off).
    #[error("device {device} cannot master DMA: {why}")]
    NotMastering {
        /// The device.
        device: DeviceId,
        /// Why.
        why: &'static str,
    },
    /// The address range wraps around, or is longer than [`MAX_OP_LEN`].
    #[error("range {addr:#x}+{len:#x} wraps or is longer than MAX_OP_LEN")]
    BadRange {
        /// Start.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// The engine stopped before the job ran.
    #[error("job cancelled")]
    Cancelled,
}

impl AsErrno for DmaFault {
    fn errno(&self) -> Errno {
        match self {
            DmaFault::DeviceGone { .. } => errno::ENODEV,
            DmaFault::Cancelled => errno::ECANCELED,
            DmaFault::BadRange { .. } => errno::EFAULT,
            _ => errno::EIO,
        }
    }
}

/// Errors of engine calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// The engine was stopped.
    #[error("engine {0} is stopped")]
    Stopped(String),
    /// The device was unplugged.
    #[error("device {device} is gone")]
    DeviceGone {
        /// The device.
        device: DeviceId,
    },
    /// No such device.
    #[error("no device {0}")]
    NoSuchDevice(DeviceId),
    /// An operation longer than [`MAX_OP_LEN`].
    #[error("operation {index} of the job is {len:#x} bytes, more than {MAX_OP_LEN:#x}")]
    OpTooLong {
        /// Index of the operation in the job.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// `step` on an engine that has its own thread.
    #[error("engine {0} runs its own thread; step is for manual engines")]
    NotManual(String),
}

impl AsErrno for DmaError {
    fn errno(&self) -> Errno {
        match self {
            DmaError::Stopped(_) => errno::ECANCELED,
            DmaError::DeviceGone { .. } | DmaError::NoSuchDevice(_) => errno::ENODEV,
            DmaError::NotManual(_) | DmaError::OpTooLong { .. } => errno::EINVAL,
        }
    }
}

/// A device's bus-master interface: synchronous accesses (cheap to clone).
#[derive(Clone)]
pub struct DmaPort {
    fabric: Arc<Fabric>,
    iommu: Iommu,
    device: DeviceId,
    accessor: Accessor,
}

impl fmt::Debug for DmaPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaPort({} as {})", self.device, self.accessor)
    }
}

impl DmaPort {
    pub(crate) fn new(
        fabric: Arc<Fabric>,
        iommu: Iommu,
        device: DeviceId,
        accessor: Accessor,
    ) -> Self {
        Self {
            fabric,
            iommu,
            device,
            accessor,
        }
    }

    /// The mastering device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The default accessor identity.
    pub fn accessor(&self) -> &Accessor {
        &self.accessor
    }

    /// Reads `buf.len()` bytes.
    pub fn read(&self, src: &DmaRef, buf: &mut [u8]) -> Result<(), DmaFault> {
        self.access(&self.accessor, src, Io::Read(buf), false)
    }

    /// Writes `data`.
    pub fn write(&self, dst: &DmaRef, data: &[u8]) -> Result<(), DmaFault> {
        self.access(&self.accessor, dst, Io::Write(data), false)
    }

    /// Writes `len` copies of `byte`.
    pub fn fill(&self, dst: &DmaRef, len: usize, byte: u8) -> Result<(), DmaFault> {
        self.access(&self.accessor, dst, Io::Fill(byte, len), false)
    }

    /// A speculative read (data discarded): what read-ahead issues.
    pub fn read_speculative(&self, src: &DmaRef, len: usize) -> Result<(), DmaFault> {
        if len > MAX_OP_LEN {
            return Err(DmaFault::BadRange {
                addr: src.addr.raw(),
                len,
            });
        }
        let mut scratch = vec![0u8; len];
        self.access(&self.accessor, src, Io::Read(&mut scratch), true)
    }

    fn can_master(&self) -> Result<(), DmaFault> {
        let f = self.fabric.pci.flags(
            self.device.0,
            F_PRESENT | F_UNPLUGGED | F_RESET | F_D3HOT | F_MASTER,
        );
        let device = self.device;
        if f & F_PRESENT == 0 || f & F_UNPLUGGED != 0 {
            return Err(DmaFault::DeviceGone { device });
        }
        let why = if f & F_RESET != 0 {
            "in reset"
        } else if f & F_D3HOT != 0 {
            "in D3hot"
        } else if f & F_MASTER == 0 {
            "bus mastering off"
        } else {
            return Ok(());
        };
        Err(DmaFault::NotMastering { device, why })
    }

    fn access(
        &self,
        who: &Accessor,
        r: &DmaRef,
        mut io: Io<'_>,
        speculative: bool,
    ) -> Result<(), DmaFault> {
        let len = io.len();
        let kind = io.kind();
        let start = r.addr.raw();
        if start.checked_add(len as u64).is_none() {
            return Err(DmaFault::BadRange { addr: start, len });
        }
        // A DMA operation is a burst of transactions issued at once: the
        // master's state, the monitor switch and each page's checks are one
        // event of the model until something takes a lock (a page's bytes,
        // the IOMMU), see `Fabric::page`.
        let _one = sched::one_event();
        self.can_master()?;
        let fabric = &*self.fabric;
        let mut st = OpState::new(fabric);
        let via = Via::Dma {
            device: self.device,
        };
        trace_event!(
            trace::DMA_ACCESS,
            "dev={} accessor={} {}{} {} len={:#x} mapping={}",
            self.device,
            who,
            if speculative { "spec-" } else { "" },
            kind.letter(),
            r.addr,
            len,
            r.mapping
                .as_ref()
                .map_or_else(|| "-".into(), |t| t.id().0.to_string())
        );
        match r.addr {
            DmaAddr::Bus(addr) => {
                let req = Req {
                    accessor: who,
                    kind,
                    speculative,
                    via,
                    space: AddrSpace::Bus,
                    mapping: r.mapping.as_ref(),
                };
                for (pa, off, n, boff) in page_chunks(addr, len) {
                    let t = Target {
                        phys: pa + off as u64,
                        expected: r.mapping.as_ref().and_then(|m| m.expected_tag(pa)),
                        stale: false,
                        pte_token: None,
                    };
                    fabric
                        .page(&req, &mut st, pa + off as u64, t, io.chunk(boff, n))
                        .map_err(|reason| DmaFault::Aer {
                            addr: pa + off as u64,
                            reason,
                        })?;
                }
                Ok(())
            }
            DmaAddr::Iova(iova) => {
                let Some(dom) = self.iommu.device_domain(self.device) else {
                    let req = Req {
                        accessor: who,
                        kind,
                        speculative,
                        via,
                        space: AddrSpace::Bus,
                        mapping: r.mapping.as_ref(),
                    };
                    fabric.fault_hazard(&req, &mut st, iova, IommuFaultCause::NoDomain);
                    return Err(DmaFault::Iommu {
                        iova,
                        cause: IommuFaultCause::NoDomain,
                    });
                };
                let req = Req {
                    accessor: who,
                    kind,
                    speculative,
                    via,
                    space: AddrSpace::Iova(dom.id()),
                    mapping: r.mapping.as_ref(),
                };
                for (pa, off, n, boff) in page_chunks(iova, len) {
                    let issued = pa + off as u64;
                    let mut retried = false;
                    loop {
                        let mut tlb = dom.lock_iotlb();
                        match dom.translate_locked(&mut tlb, pa, kind) {
                            Ok((pte, _)) => {
                                let t = Target {
                                    phys: pte.phys + off as u64,
                                    expected: Some(pte.tag),
                                    stale: !pte.cell.live.load(Ordering::Acquire),
                                    pte_token: pte.cell.token.as_ref(),
                                };
                                let res = fabric.page(&req, &mut st, issued, t, io.chunk(boff, n));
                                drop(tlb);
                                res.map_err(|reason| DmaFault::Aer {
                                    addr: issued,
                                    reason,
                                })?;
                                break;
                            }
                            Err(cause) => {
                                drop(tlb);
                                let resp = dom.report_fault(IommuFaultEvent {
                                    domain: Some(dom.id()),
                                    device: Some(self.device),
                                    iova: issued,
                                    kind,
                                    cause,
                                    speculative,
                                    ts_ns: dmabuf_core::sync::time::now_ns(),
                                });
                                if resp == FaultResponse::Retry && !retried && !speculative {
                                    retried = true;
                                    continue;
                                }
                                fabric.fault_hazard(&req, &mut st, issued, cause);
                                return Err(DmaFault::Iommu {
                                    iova: issued,
                                    cause,
                                });
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Speculative read-ahead settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadaheadConfig {
    /// Whether the device reads ahead at all (it can be turned on later).
    pub enabled: bool,
    /// How many recently used ranges it remembers.
    pub window: usize,
    /// Passes while idle after the last job (each `interval` apart).
    pub idle_passes: u32,
    /// Time between idle passes (virtual under the controlled scheduler).
    pub interval: Duration,
}

impl Default for ReadaheadConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window: 4,
            idle_passes: 2,
            interval: Duration::from_micros(50),
        }
    }
}

/// An engine's configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Engine name (thread name, traces).
    pub name: String,
    /// Default accessor identity (default: the device name).
    pub accessor: Option<Accessor>,
    /// Run on its own thread (false: manual, jobs run in `step`/`drain`).
    pub threaded: bool,
    /// Read-ahead.
    pub readahead: ReadaheadConfig,
}

impl EngineConfig {
    /// A threaded engine without read-ahead.
    pub fn threaded(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            accessor: None,
            threaded: true,
            readahead: ReadaheadConfig::default(),
        }
    }

    /// A manual engine without read-ahead.
    pub fn manual(name: impl Into<String>) -> Self {
        Self {
            threaded: false,
            ..Self::threaded(name)
        }
    }

    /// With read-ahead on.
    pub fn with_readahead(mut self, window: usize) -> Self {
        self.readahead.enabled = true;
        self.readahead.window = window;
        self
    }

    /// With an accessor identity.
    pub fn with_accessor(mut self, a: Accessor) -> Self {
        self.accessor = Some(a);
        self
    }
}

/// Identifies a job within its engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// The job.
    pub id: JobId,
    /// Success, or the first fault.
    pub status: Result<(), DmaFault>,
    /// The data of each `Read` operation, in order (up to the fault).
    pub reads: Vec<Vec<u8>>,
}

/// Set once by the engine, awaited by the submitter: a `SetOnce`, so the
/// checker's partial-order reduction sees a wait that finds the outcome and
/// one that blocks until it as the same trace.
type OutcomeSlot = SetOnce<JobOutcome>;

/// A submitted job: its id and, once done, its outcome.
#[derive(Clone)]
pub struct JobTicket {
    id: JobId,
    slot: Arc<OutcomeSlot>,
}

impl fmt::Debug for JobTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobTicket({})", self.id.0)
    }
}

impl JobTicket {
    /// The job id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The outcome, if the job is done.
    pub fn outcome(&self) -> Option<JobOutcome> {
        self.slot.get()
    }

    /// Blocks until the job is done (for jobs without a fence).
    pub fn wait(&self) -> JobOutcome {
        self.slot.wait()
    }
}

struct Queued {
    id: JobId,
    job: DmaJob,
    slot: Arc<OutcomeSlot>,
}

struct Queue {
    jobs: VecDeque<Queued>,
    stopping: bool,
    /// Jobs queued so far.
    queued: u64,
}

/// What the engine has finished, for [`DmaEngine::drain`]: kept apart from
/// the queue, so that finishing a job is no write of the queue that every
/// submission would race with.
#[derive(Clone, Default)]
struct Finished {
    /// Jobs whose cycle (the job, then its read-ahead pass) is over; jobs
    /// run in queue order, so the first `jobs` queued are done.
    jobs: u64,
    stopped: bool,
}

/// What the engine thread does next.
enum Cycle {
    Stop,
    Job(Queued),
    /// A read-ahead pass while idle.
    IdlePass,
}

struct Readahead {
    enabled: bool,
    recent: VecDeque<(DmaRef, usize, Accessor)>,
}

pub(crate) struct EngineInner {
    name: String,
    port: DmaPort,
    threaded: bool,
    cfg: ReadaheadConfig,
    /// The queue and the engine's state; its thread, `drain` and `stop`
    /// wait on it (every change wakes them all).
    q: Guarded<Queue>,
    finished: Monotone<Finished>,
    exec: Mutex<()>,
    ra: Mutex<Readahead>,
    ra_on: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_job: AtomicU64,
    jobs_done: AtomicU64,
    spec_reads: AtomicUsize,
}

/// A DMA engine of one device (cheap to clone handle).
#[derive(Clone)]
pub struct DmaEngine {
    inner: Arc<EngineInner>,
}

impl fmt::Debug for DmaEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DmaEngine({} on {})",
            self.inner.name, self.inner.port.device
        )
    }
}

dmabuf_core::shim_thread_local! {
    /// The engine whose thread this is (its address), to avoid self-joins.
    static ENGINE_THREAD: Cell<usize> = const { Cell::new(0) };
}

fn signal(fence: Option<SignalHandle>, status: &Result<(), DmaFault>) {
    if let Some(h) = fence {
        // The handle is ours alone; a fence already signalled through its
        // driver's `signaled` hook is simply left as it is.
        let _ = match status {
            Ok(()) => h.signal(),
            Err(e) => h.signal_with_error(e.errno().to_negative()),
        };
    }
}

impl EngineInner {
    fn addr(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    fn remember(&self, r: &DmaRef, len: usize, who: &Accessor) {
        if !self.ra_on.load(Ordering::Acquire) || len == 0 {
            return;
        }
        let mut ra = self.ra.lock();
        if !ra.enabled {
            return;
        }
        ra.recent
            .retain(|(x, l, _)| !(x.addr == r.addr && *l == len));
        ra.recent.push_back((r.clone(), len, who.clone()));
        while ra.recent.len() > self.cfg.window.max(1) {
            ra.recent.pop_front();
        }
    }

    fn run(&self, q: Queued) {
        let Queued { id, job, slot } = q;
        let who = job
            .accessor
            .clone()
            .unwrap_or_else(|| self.port.accessor.clone());
        let mut reads = Vec::new();
        let mut status = Ok(());
        // From here until the fence is signalled this thread is on the
        // fence's signalling path (the kernel's scheduler `run_job`): a fault
        // handler that waits on a fence here is reported by lockdep. A fence
        // that is never published (RDMA work-request completions, whose
        // page faults the kernel resolves from a work item) opens no section.
        let cookie = (!job.private_fence).then(|| lockdep::begin_signalling_at("dma engine job"));
        {
            let _x = self.exec.lock();
            trace_event!(
                trace::DMA_JOB_START,
                "engine={} job={} label={} ops={}",
                self.name,
                id.0,
                job.label,
                job.ops.len()
            );
            for op in &job.ops {
                let r = match op {
                    DmaOp::Read { src, len } => {
                        let mut buf = vec![0u8; *len];
                        let r = self.port.access(&who, src, Io::Read(&mut buf), false);
                        reads.push(buf);
                        self.remember(src, *len, &who);
                        r
                    }
                    DmaOp::Write { dst, data } => {
                        let r = self.port.access(&who, dst, Io::Write(data), false);
                        self.remember(dst, data.len(), &who);
                        r
                    }
                    DmaOp::Fill { dst, len, byte } => {
                        let r = self.port.access(&who, dst, Io::Fill(*byte, *len), false);
                        self.remember(dst, *len, &who);
                        r
                    }
                    DmaOp::Copy { src, dst, len } => {
                        let mut buf = vec![0u8; *len];
                        let r = self
                            .port
                            .access(&who, src, Io::Read(&mut buf), false)
                            .and_then(|()| self.port.access(&who, dst, Io::Write(&buf), false));
                        self.remember(src, *len, &who);
                        self.remember(dst, *len, &who);
                        r
                    }
                };
                if r.is_err() {
                    status = r;
                    break;
                }
            }
        }
        self.complete(id, job.fence, &slot, status, reads, &job.label);
        if let Some(c) = cookie {
            lockdep::end_signalling(c);
        }
    }

    fn complete(
        &self,
        id: JobId,
        fence: Option<SignalHandle>,
        slot: &OutcomeSlot,
        status: Result<(), DmaFault>,
        reads: Vec<Vec<u8>>,
        label: &str,
    ) {
        trace_event!(
            trace::DMA_JOB_DONE,
            "engine={} job={} label={} status={}",
            self.name,
            id.0,
            label,
            match &status {
                Ok(()) => "0".to_string(),
                Err(e) => format!("-{} ({e})", e.errno()),
            }
        );
        slot.set(JobOutcome {
            id,
            status: status.clone(),
            reads,
        });
        self.jobs_done.fetch_add(1, Ordering::Relaxed);
        signal(fence, &status);
    }

    /// One read-ahead pass; returns the reads issued.
    fn speculate(&self) -> usize {
        let _x = self.exec.lock();
        let ra = self.ra.lock();
        if !ra.enabled {
            return 0;
        }
        let mut n = 0;
        for (r, len, who) in &ra.recent {
            trace_event!(
                trace::DMA_READAHEAD,
                "engine={} addr={} len={:#x}",
                self.name,
                r.addr,
                len
            );
            let mut scratch = vec![0u8; *len];
            // Through no IOMMU, a speculative read reads shared state and
            // writes only the monitor's records (no fault handler runs, no
            // lock is taken, no byte moves): with unordered speculation the
            // search does not order it against anything.
            let _unordered = (self.port.fabric.unordered_speculation
                && matches!(r.addr, DmaAddr::Bus(_)))
            .then(sched::unobserved);
            let _ = self.port.access(who, r, Io::Read(&mut scratch), true);
            n += 1;
        }
        self.spec_reads.fetch_add(n, Ordering::Relaxed);
        n
    }

    fn pop(&self) -> Option<Queued> {
        self.q.update(|q| q.jobs.pop_front())
    }

    /// A job's cycle is over (its read-ahead pass included).
    fn finish_job(&self) {
        self.finished.update(|f| f.jobs += 1);
    }

    fn thread_main(self: Arc<Self>) {
        ENGINE_THREAD.with(|c| c.set(self.addr()));
        // Read-ahead passes still to make while idle (only this thread
        // counts them).
        let mut idle_left = 0u32;
        loop {
            // Read before the wait (no shim call inside its closures): a
            // read-ahead turned on meanwhile counts from the next cycle.
            let ra = self.ra_on.load(Ordering::Acquire);
            let interval = self.cfg.interval;
            let next = self
                .q
                .wait_map(
                    |q| {
                        if q.stopping {
                            Some(Cycle::Stop)
                        } else {
                            q.jobs.pop_front().map(Cycle::Job)
                        }
                    },
                    |_| (idle_left > 0 && ra).then_some(interval),
                )
                // Timed out: idle for an interval, a read-ahead pass (the
                // queue is looked at again after it).
                .or((idle_left > 0).then_some(Cycle::IdlePass));
            let job = match next {
                Some(Cycle::Stop) => {
                    // Said by the thread itself, after its last job: no
                    // write for the jobs it finished to race with.
                    self.finished.update(|f| f.stopped = true);
                    return;
                }
                Some(Cycle::Job(j)) => Some(j),
                Some(Cycle::IdlePass) => {
                    idle_left -= 1;
                    None
                }
                None => continue,
            };
            let ran = job.is_some();
            if let Some(j) = job {
                self.run(j);
            }
            if self.ra_on.load(Ordering::Acquire) {
                self.speculate();
            }
            if ran {
                idle_left = self.cfg.idle_passes;
                self.finish_job();
            }
        }
    }
}

impl DmaEngine {
    pub(crate) fn start(port: DmaPort, cfg: EngineConfig) -> Self {
        let inner = Arc::new(EngineInner {
            name: cfg.name.clone(),
            port,
            threaded: cfg.threaded,
            q: Guarded::new(Queue {
                jobs: VecDeque::new(),
                stopping: false,
                queued: 0,
            }),
            finished: Monotone::new(Finished::default()),
            exec: Mutex::new(()),
            ra: Mutex::new(Readahead {
                enabled: cfg.readahead.enabled,
                recent: VecDeque::new(),
            }),
            ra_on: AtomicBool::new(cfg.readahead.enabled),
            cfg: cfg.readahead,
            thread: Mutex::new(None),
            next_job: AtomicU64::new(1),
            jobs_done: AtomicU64::new(0),
            spec_reads: AtomicUsize::new(0),
        });
        if cfg.threaded {
            let i2 = inner.clone();
            let h = thread::spawn_named(format!("dma:{}", cfg.name), move || i2.thread_main());
            *inner.thread.lock() = Some(h);
        }
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<EngineInner> {
        &self.inner
    }

    pub(crate) fn from_inner(inner: Arc<EngineInner>) -> Self {
        Self { inner }
    }

    /// The engine name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The engine's device.
    pub fn device(&self) -> DeviceId {
        self.inner.port.device
    }

    /// The synchronous port of the engine's device, with its accessor.
    pub fn port(&self) -> &DmaPort {
        &self.inner.port
    }

    /// Queues a job. On error the job's fence is signalled with the error's
    /// errno and the job is dropped.
    pub fn submit(&self, job: DmaJob) -> Result<JobTicket, DmaError> {
        let i = &self.inner;
        let too_long = job.ops.iter().enumerate().find_map(|(index, op)| {
            let len = match op {
                DmaOp::Read { len, .. } | DmaOp::Fill { len, .. } | DmaOp::Copy { len, .. } => *len,
                DmaOp::Write { data, .. } => data.len(),
            };
            (len > MAX_OP_LEN).then_some(DmaError::OpTooLong { index, len })
        });
        // A stopped engine is found when the job is queued (one access of
        // the queue per submission), unless the device is gone too: that
        // refusal names the stop first, as the queue would.
        let err = if too_long.is_some() {
            too_long
        } else if let Err(DmaFault::DeviceGone { device }) = i.port.can_master() {
            Some(if i.q.read(|q| q.stopping) {
                DmaError::Stopped(i.name.clone())
            } else {
                DmaError::DeviceGone { device }
            })
        } else {
            None
        };
        if let Some(e) = err {
            if let Some(h) = job.fence {
                let _ = h.signal_with_error(e.errno().to_negative());
            }
            return Err(e);
        }
        let id = JobId(i.next_job.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(OutcomeSlot::new());
        trace_event!(
            trace::DMA_JOB_SUBMIT,
            "engine={} job={} label={} ops={}",
            i.name,
            id.0,
            job.label,
            job.ops.len()
        );
        let queued = Queued {
            id,
            job,
            slot: slot.clone(),
        };
        let refused = i.q.update(|q| {
            if q.stopping {
                return Some(queued);
            }
            q.jobs.push_back(queued);
            q.queued += 1;
            None
        });
        if let Some(q) = refused {
            let e = DmaError::Stopped(i.name.clone());
            signal(q.job.fence, &Err(DmaFault::Cancelled));
            return Err(e);
        }
        Ok(JobTicket { id, slot })
    }

    /// Runs the next queued job on the caller (manual engines only).
    /// Returns its id, or `None` when the queue is empty.
    pub fn step(&self) -> Result<Option<JobId>, DmaError> {
        let i = &self.inner;
        if i.threaded {
            return Err(DmaError::NotManual(i.name.clone()));
        }
        let Some(j) = i.pop() else {
            return Ok(None);
        };
        let id = j.id;
        i.run(j);
        if i.ra_on.load(Ordering::Acquire) {
            i.speculate();
        }
        i.finish_job();
        Ok(Some(id))
    }

    /// Manual engine: runs every queued job. Threaded engine: waits until
    /// every job queued before the call has finished its cycle (its fence
    /// signalled, its read-ahead pass made), or the engine has stopped.
    pub fn drain(&self) {
        let i = &self.inner;
        if !i.threaded {
            while let Ok(Some(_)) = self.step() {}
            return;
        }
        let queued = i.q.read(|q| q.queued);
        i.finished
            .wait_until(|f| f.jobs >= queued || f.stopped, None);
    }

    /// Jobs queued and not started.
    pub fn pending(&self) -> usize {
        self.inner.q.read(|q| q.jobs.len())
    }

    /// Jobs completed so far.
    pub fn jobs_done(&self) -> u64 {
        self.inner.jobs_done.load(Ordering::Relaxed)
    }

    /// Speculative reads issued so far.
    pub fn speculative_reads(&self) -> usize {
        self.inner.spec_reads.load(Ordering::Relaxed)
    }

    /// Whether the engine thread is still running (false for manual engines
    /// and once stopped).
    pub fn is_running(&self) -> bool {
        self.inner.thread.lock().is_some()
    }

    /// Turns read-ahead on (from now on recent ranges are remembered) or off
    /// (as [`stop_readahead`](Self::stop_readahead)).
    pub fn set_readahead(&self, on: bool) {
        if !on {
            return self.stop_readahead();
        }
        if self.inner.ra_on.load(Ordering::Acquire) {
            // Already on: nothing to do (a driver turns it on at every
            // submission), and no write for the engine's reads to race with.
            return;
        }
        // Both under the lock, as `stop_readahead` clears them: `ra_on`
        // never says on while the window is off.
        let mut ra = self.inner.ra.lock();
        ra.enabled = true;
        self.inner.ra_on.store(true, Ordering::Release);
    }

    /// The driver tells the device to stop reading ahead: when this returns
    /// no speculative read is in progress, none will start, and the window
    /// of recent ranges is forgotten.
    pub fn stop_readahead(&self) {
        let mut ra = self.inner.ra.lock();
        ra.enabled = false;
        ra.recent.clear();
        self.inner.ra_on.store(false, Ordering::Release);
    }

    /// Forgets remembered ranges that go through `token` (the driver unmapped
    /// one mapping but keeps reading ahead from others).
    pub fn forget_mapping(&self, token: &MappingToken) {
        self.inner
            .ra
            .lock()
            .recent
            .retain(|(r, _, _)| r.mapping.as_ref().is_none_or(|t| t.id() != token.id()));
    }

    /// Runs one read-ahead pass now, on the caller; returns the reads issued.
    pub fn speculate(&self) -> usize {
        self.inner.speculate()
    }

    /// Stops the engine: the thread is joined (unless called from it), jobs
    /// still queued complete with `-ECANCELED`, later submits fail.
    /// Idempotent.
    pub fn stop(&self) {
        let i = &self.inner;
        i.q.update(|q| q.stopping = true);
        if !i.threaded {
            i.finished.update(|f| f.stopped = true);
        }
        let own = ENGINE_THREAD.with(Cell::get) == i.addr();
        let h = i.thread.lock().take();
        if let Some(h) = h
            && !own
        {
            let _ = h.join();
        }
        let rest: Vec<Queued> = i.q.update(|q| q.jobs.drain(..).collect());
        for q in rest {
            i.complete(
                q.id,
                q.job.fence,
                &q.slot,
                Err(DmaFault::Cancelled),
                Vec::new(),
                &q.job.label,
            );
        }
    }
}
