//! A static importer: any driver that uses plain `dma_buf_attach` (a
//! display engine, a video decoder).
//!
//! # Obligations and behaviour (docs/importers.md)
//!
//! 1. Attach without importer ops: not dynamic, never notified, not
//!    revocable, no `peer2peer`. VFIO refuses it (`EOPNOTSUPP`, MMIO has no
//!    struct pages); the system heap accepts it.
//! 2. Map once at setup, under the reservation lock: a dynamic exporter is
//!    pinned by the core on map, and the core waits for `Kernel` fences
//!    before returning the mapping.
//! 3. Its device uses the mapping until its user is done: unmap, then
//!    detach, only at teardown (unbounded from an exporter's point of view).
//!
//! | state | entered by |
//! |---|---|
//! | idle | construction |
//! | mapped | `setup` |
//! | torn down | `teardown` (unmapped, detached, fd closed) |
//!
//! # Lock rules
//!
//! Reservation lock → the importer's state lock.

use super::{
    Counters, Declared, ImportError, Importer, Job, Stage, job_ops, map_and_declare, read_page,
    unmap_declared,
};
use crate::host::Host;
use crate::job::submit_after;
use dmabuf_core::dma_buf::{self, Attachment, DmaBuf};
use dmabuf_core::sync::{Arc, Mutex};
use dmabuf_core::uapi::Process;
use dmabuf_core::{Fence, FenceContext};
use dmabuf_platform::{Accessor, DmaEngine, DmaJob, EngineConfig, PAGE_SIZE, PciDevice};
use std::collections::BTreeMap;

struct State {
    proc: Option<(Arc<Process>, i32)>,
    buf: Option<DmaBuf>,
    attach: Option<Attachment>,
    mapped: Option<Declared>,
}

/// A static importer on its own device.
pub struct StaticImporter {
    name: String,
    host: Host,
    pdev: PciDevice,
    accessor: Accessor,
    engine: DmaEngine,
    fctx: FenceContext,
    st: Mutex<State>,
    counters: Counters,
}

impl std::fmt::Debug for StaticImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticImporter({})", self.name)
    }
}

impl StaticImporter {
    /// An importer driving `pdev`; starts the device's DMA engine.
    pub fn new(host: &Host, name: &str, pdev: PciDevice) -> Result<Self, ImportError> {
        let accessor = Accessor::new(name);
        let engine = host
            .platform()
            .dma_engine(
                pdev.id(),
                EngineConfig::threaded(name).with_accessor(accessor.clone()),
            )
            .map_err(|e| ImportError::Device {
                stage: Stage::Register,
                errno: dmabuf_core::AsErrno::errno(&e),
                what: e.to_string(),
            })?;
        Ok(Self {
            name: name.to_owned(),
            host: host.clone(),
            pdev,
            accessor,
            engine,
            fctx: FenceContext::named("static", name),
            st: Mutex::new(State {
                proc: None,
                buf: None,
                attach: None,
                mapped: None,
            }),
            counters: Counters::new(&["maps", "unmaps", "jobs"]),
        })
    }
}

impl Importer for StaticImporter {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&self, proc: &Arc<Process>, fd: i32) -> Result<(), ImportError> {
        let buf = proc.dma_buf_get(fd).map_err(ImportError::sys(Stage::Fd))?;
        let attach =
            dma_buf::attach(&buf, self.pdev.name()).map_err(ImportError::dmabuf(Stage::Attach))?;
        let mapped = {
            let g = crate::host::lock_resv(buf.resv());
            map_and_declare(
                &self.host,
                &attach,
                Some(self.pdev.id()),
                &self.accessor,
                &g,
            )
        };
        let mapped = match mapped {
            Ok(m) => m,
            Err(e) => {
                let _ = dma_buf::detach(&buf, &attach);
                return Err(ImportError::DmaBuf {
                    stage: Stage::Map,
                    source: e,
                });
            }
        };
        self.counters.bump("maps");
        let mut st = self.st.lock();
        st.proc = Some((proc.clone(), fd));
        st.buf = Some(buf);
        st.attach = Some(attach);
        st.mapped = Some(mapped);
        Ok(())
    }

    fn submit(&self, page: u64, pattern: u8, gate: Option<Fence>) -> Result<Job, ImportError> {
        let (at, from) = {
            let st = self.st.lock();
            let m = st
                .mapped
                .as_ref()
                .ok_or_else(|| ImportError::NotSetUp(self.name.clone()))?;
            let pages = m.mapping().sg_table().len() / PAGE_SIZE;
            let r = read_page(page, pages);
            match (m.dma_ref(page * PAGE_SIZE), m.dma_ref(r * PAGE_SIZE)) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(ImportError::Invalid {
                        stage: Stage::Job,
                        what: format!("page {page} outside the buffer"),
                    });
                }
            }
        };
        let (f, h) = self.fctx.create();
        let job = DmaJob::new(job_ops(at, from, pattern)).with_label(format!("{} job", self.name));
        self.counters.bump("jobs");
        Ok(Job::new(submit_after(
            &self.engine,
            gate.into_iter().collect(),
            job,
            f,
            h,
        )))
    }

    fn teardown(&self) -> Result<(), ImportError> {
        let (proc, buf, attach, mapped) = {
            let mut st = self.st.lock();
            (
                st.proc.take(),
                st.buf.take(),
                st.attach.take(),
                st.mapped.take(),
            )
        };
        let (Some(buf), Some(attach)) = (buf, attach) else {
            return Ok(());
        };
        if let Some(m) = mapped {
            let g = crate::host::lock_resv(buf.resv());
            unmap_declared(&self.host, &attach, m, &g)
                .map_err(ImportError::dmabuf(Stage::Teardown))?;
            self.counters.bump("unmaps");
        }
        dma_buf::detach(&buf, &attach).map_err(ImportError::dmabuf(Stage::Teardown))?;
        drop(buf);
        if let Some((p, fd)) = proc {
            p.close(fd).map_err(ImportError::sys(Stage::Teardown))?;
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.engine.stop();
    }

    fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.counters.snapshot()
    }
}
