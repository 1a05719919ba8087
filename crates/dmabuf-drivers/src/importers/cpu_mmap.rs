//! A process that `mmap`s a dma-buf fd and touches the memory with the
//! CPU: the user of Matt Evans' "vfio/pci: Support mmap() of a DMABUF"
//! (RFC 3/7, Feb 2026; v3, June 2026), the "vending process" client that
//! gets a sub-range of a BAR over `SCM_RIGHTS` and maps it. It attaches
//! nothing: the exporter's revoke reaches it only through the zap of its
//! PTEs (`unmap_mapping_range`) and the fault handler's answer.
//!
//! # Obligations and behaviour (docs/importers.md)
//!
//! 1. `setup`: `mmap` of the whole buffer through the fd
//!    ([`crate::vfio::mmap_dma_buf`]): `EINVAL` from an exporter without an
//!    `mmap` op, `ENODEV` from a revoked buffer (both refusals). No page is
//!    touched yet: the first touches fault, and they race the first
//!    revoke.
//! 2. A job ([`Importer::submit`]) is CPU work of the process's thread:
//!    store the pattern at the start of the page, load the next page. It
//!    runs when the job is waited for; with a gate it runs once at once
//!    (racing whatever the exporter is doing) and once more after the gate
//!    signalled (the in-flight window of the runner's timeline). A missing
//!    PTE faults; the exporter's handler inserts it or answers SIGBUS
//!    (`EFAULT` here).
//! 3. After an un-revoke nothing needs redoing: the VMA stays, the next
//!    touch faults the page in again.
//! 4. `teardown`: `munmap`, then the fd and the file reference the VMA
//!    held are dropped.
//!
//! | state | entered by |
//! |---|---|
//! | idle | construction |
//! | mapped | `setup` (a VMA, no PTE yet) |
//! | torn down | `teardown` (unmapped, fd closed) |
//!
//! # Lock rules
//!
//! The importer's state lock is a leaf, never held across an access: an
//! access takes the mapping's PTE lock and, on a fault, whatever lock the
//! exporter's handler takes (`mmap_lock` → `memory_lock`).

use super::{Counters, ImportError, Importer, JOB_BYTES, Job, Stage, read_page};
use crate::host::Host;
use dmabuf_core::dma_buf::DmaBuf;
use dmabuf_core::errno::{AsErrno, Errno};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_core::uapi::Process;
use dmabuf_core::{Fence, FenceContext, SignalHandle};
use dmabuf_platform::{Accessor, CpuMapping, PAGE_SIZE};
use std::collections::BTreeMap;

struct State {
    proc: Option<(Arc<Process>, i32)>,
    /// The file reference the VMA holds (`vma->vm_file`).
    buf: Option<DmaBuf>,
    map: Option<CpuMapping>,
}

/// A process mapping a dma-buf with `mmap` and touching it.
pub struct CpuMmapImporter {
    name: String,
    accessor: Accessor,
    fctx: FenceContext,
    st: Mutex<State>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for CpuMmapImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuMmapImporter({})", self.name)
    }
}

impl CpuMmapImporter {
    /// A process called `name`. (`host` is where the exporter lives; a CPU
    /// user needs no device of its own.)
    pub fn new(_host: &Host, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            accessor: Accessor::new(name),
            fctx: FenceContext::named("cpu", name),
            st: Mutex::new(State {
                proc: None,
                buf: None,
                map: None,
            }),
            counters: Arc::new(Counters::new(&["touches", "sigbus"])),
        }
    }
}

/// One CPU job (see the module docs): made by [`Importer::submit`], run
/// by [`Job::wait`].
#[derive(Debug)]
pub(crate) struct CpuJob {
    map: CpuMapping,
    page: u64,
    pattern: u8,
    gate: Option<Fence>,
    fence: Fence,
    handle: Mutex<Option<SignalHandle>>,
    result: Mutex<Option<Result<Vec<u8>, Errno>>>,
    counters: Arc<Counters>,
}

impl CpuJob {
    pub(crate) fn fence(&self) -> &Fence {
        &self.fence
    }

    /// One touch: store the pattern in the job's page, load the next one.
    fn touch(&self) -> Result<Vec<u8>, Errno> {
        self.counters.bump("touches");
        let pages = self.map.pages();
        let r = self
            .map
            .write(self.page * PAGE_SIZE, &[self.pattern; JOB_BYTES])
            .and_then(|()| {
                let mut b = vec![0u8; JOB_BYTES];
                self.map
                    .read(read_page(self.page, pages) * PAGE_SIZE, &mut b)
                    .map(|()| b)
            });
        r.map_err(|e| {
            self.counters.bump("sigbus");
            e.errno()
        })
    }

    /// Runs the job once (later calls return its result).
    pub(crate) fn run(&self) -> Result<Vec<u8>, Errno> {
        let mut result = self.result.lock();
        if let Some(r) = &*result {
            return r.clone();
        }
        let r = match &self.gate {
            None => self.touch(),
            Some(g) => {
                let first = self.touch();
                let _ = g.wait(None);
                let second = self.touch();
                first.and(second)
            }
        };
        *result = Some(r.clone());
        drop(result);
        if let Some(h) = self.handle.lock().take() {
            let _ = h.signal();
        }
        r
    }
}

impl Importer for CpuMmapImporter {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&self, proc: &Arc<Process>, fd: i32) -> Result<(), ImportError> {
        let buf = proc.dma_buf_get(fd).map_err(ImportError::sys(Stage::Fd))?;
        let map = crate::vfio::mmap_dma_buf(proc, fd, self.accessor.clone()).map_err(|source| {
            ImportError::Vfio {
                stage: Stage::Mmap,
                source,
            }
        })?;
        let mut st = self.st.lock();
        st.proc = Some((proc.clone(), fd));
        st.buf = Some(buf);
        st.map = Some(map);
        Ok(())
    }

    fn submit(&self, page: u64, pattern: u8, gate: Option<Fence>) -> Result<Job, ImportError> {
        let map = self
            .st
            .lock()
            .map
            .clone()
            .ok_or_else(|| ImportError::NotSetUp(self.name.clone()))?;
        if page >= map.pages() {
            return Err(ImportError::Invalid {
                stage: Stage::Job,
                what: format!("page {page} outside the mapping"),
            });
        }
        let (fence, handle) = self.fctx.create();
        Ok(Job::cpu(CpuJob {
            map,
            page,
            pattern,
            gate,
            fence,
            handle: Mutex::new(Some(handle)),
            result: Mutex::new(None),
            counters: self.counters.clone(),
        }))
    }

    fn teardown(&self) -> Result<(), ImportError> {
        let (map, buf, proc) = {
            let mut st = self.st.lock();
            (st.map.take(), st.buf.take(), st.proc.take())
        };
        if let Some(m) = map {
            m.munmap();
        }
        drop(buf);
        if let Some((p, fd)) = proc {
            p.close(fd).map_err(ImportError::sys(Stage::Teardown))?;
        }
        Ok(())
    }

    fn shutdown(&self) {}

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.counters.snapshot()
    }
}
