//! The dma-buf core of Linux 7.1, in userspace Rust: fences (`dma_fence` and
//! its containers), reservation objects, dma-buf objects and attachments, the
//! userspace ABI, and revoke.
//!
//! Module names follow the kernel's files (`dma-fence.c` is [`dma_fence`],
//! `dma-fence-chain.c` is `dma_fence_chain`, and so on), so a reader who
//! knows the kernel finds each concept without searching. Every module opens
//! with the contract it implements: its states, its lock rules and what may
//! happen after what. The semantics, and where each came from, are in the
//! repository's `docs/kernel-semantics.md`.
//!
//! All synchronisation goes through [`sync`], so the same code runs on real
//! threads, under the controlled scheduler of [`sync::sched`] and under loom.
//!
//! # Quick start
//!
//! Every call returns a `Result` whose error maps to the kernel's errno
//! ([`Errno`], through [`AsErrno`]); none panics on bad input.
//!
//! ## Fences: create, wait, signal
//!
//! A [`FenceContext`] is one timeline; each [`FenceContext::create`] gives the
//! next fence on it and the [`SignalHandle`] that signals it (once).
//!
//! ```
//! use dmabuf_core::{FenceContext, sync::thread};
//!
//! let ring = FenceContext::named("my-gpu", "ring0");
//! let (fence, handle) = ring.create();
//! assert!(!fence.is_signaled());
//! let waiter = {
//!     let fence = fence.clone();
//!     thread::spawn(move || fence.wait(None))
//! };
//! handle.signal()?;
//! waiter.join().expect("waiter thread").expect("signalled, not interrupted");
//! assert!(fence.is_signaled());
//! // Linux 7.x detaches the driver once a fence has signalled.
//! assert_eq!(fence.driver_name(), "detached-driver");
//! # Ok::<(), dmabuf_core::FenceError>(())
//! ```
//!
//! A fence can also fail: [`SignalHandle::signal_with_error`] records a
//! negative errno that [`Fence::get_status`] reports.
//!
//! ## Reservation objects: reserve, add, test
//!
//! A [`DmaResv`] holds the fences of one buffer with their [`Usage`]. Adding
//! needs the lock (a [`ResvGuard`]) and a slot reserved first, as in the
//! kernel; reading needs neither.
//!
//! ```
//! use dmabuf_core::{DmaResv, FenceContext, Usage};
//!
//! let resv = DmaResv::new();
//! let (write, w) = FenceContext::named("gpu", "render").create();
//! let (read, r) = FenceContext::named("gpu", "display").create();
//! {
//!     let g = resv.lock(None)?;
//!     g.reserve_fences(2)?;
//!     g.add_fence(&write, Usage::Write)?;
//!     g.add_fence(&read, Usage::Read)?;
//! } // unlocked here
//! assert!(!resv.test_signaled(Usage::Write));
//! w.signal()?;
//! assert!(resv.test_signaled(Usage::Write), "writers done: readers may start");
//! assert!(!resv.test_signaled(Usage::Read), "a reader is still busy");
//! r.signal()?;
//! assert!(resv.test_signaled(Usage::Bookkeep));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## dma-buf: export, attach, map, invalidate
//!
//! [`dma_buf::examples::SimpleExporter`] is a ready exporter, so nothing
//! needs implementing to try the calls. A dynamic importer gives
//! `invalidate_mappings`; the exporter calls [`dma_buf::invalidate_mappings`]
//! (with the lock held) when the memory is about to move or be revoked, and
//! the importer then unmaps.
//!
//! ```
//! use dmabuf_core::dma_buf::{self, AttachOps, DmaDirection, examples::SimpleExporter};
//! use dmabuf_core::sync::Arc;
//! use dmabuf_core::sync::atomic::{AtomicBool, Ordering};
//!
//! // Export 16 KiB of device memory at DMA address 0x4000_0000.
//! let (buf, exporter) = SimpleExporter::export("my-exporter", 0x4000_0000, 16 << 10)?;
//!
//! // A dynamic importer that can be told to unmap.
//! let told = Arc::new(AtomicBool::new(false));
//! let t = told.clone();
//! let ops = AttachOps {
//!     allow_peer2peer: true,
//!     invalidate_mappings: Some(Arc::new(move |_attach, _guard| t.store(true, Ordering::SeqCst))),
//! };
//! let attach = dma_buf::dynamic_attach(&buf, "my-importer", Some(ops))?;
//! assert!(dma_buf::attach_revocable(&attach));
//!
//! // Map and unmap with the reservation lock held.
//! let g = buf.resv().lock(None)?;
//! let mapping = dma_buf::map_attachment(&attach, DmaDirection::Bidirectional, &g)?;
//! assert_eq!(mapping.sg_table().entries[0].dma_addr, 0x4000_0000);
//!
//! // The exporter invalidates: every dynamic importer with the op is told.
//! assert_eq!(dma_buf::invalidate_mappings(&buf, &g)?, 1);
//! assert!(told.load(Ordering::SeqCst));
//! dma_buf::unmap_attachment(&attach, mapping, &g)?;
//! drop(g);
//!
//! // Userspace may map it too (read and write; PROT_EXEC is EPERM on 7.2,
//! // see `uapi::Process::mmap_prot`).
//! dma_buf::mmap(&buf, dma_buf::MmapRequest { pgoff: 0, pages: 4 })?;
//!
//! dma_buf::detach(&buf, &attach)?;
//! drop(buf); // the last reference: the exporter's release runs
//! assert!(exporter.released());
//! # Ok::<(), dmabuf_core::dma_buf::DmaBufError>(())
//! ```
//!
//! The `examples/` folder has whole programs: `cargo run -p dmabuf-core
//! --example quickstart` runs all of the above and the userspace ABI.
#![warn(missing_docs)]

pub mod dma_buf;
pub mod dma_fence;
pub mod dma_fence_array;
pub mod dma_fence_chain;
pub mod dma_fence_unwrap;
pub mod dma_resv;
pub mod errno;
pub mod fault;
pub mod lockdep;
pub mod revoke;
pub mod sync;
/// One table of `Variant => "name"` for an enum's `ALL`, `name`, `Display`
/// and `FromStr` (defined in `dmabuf-sync`, the lowest crate).
pub use dmabuf_sync::named_enum;
pub use dmabuf_sync::named_enum::UnknownName;
/// Declares a thread-local through the shim (std's, or loom's under
/// `--cfg loom`).
pub use dmabuf_sync::shim_thread_local;
pub mod sync_file;
pub mod trace;
pub mod uapi;
pub mod ww_mutex;

// Tests, by one rule: a module's unit tests sit in its `mod tests`, or in
// `<module>_tests.rs` beside it once they outgrow the module; the kernel's
// KUnit suites sit in `kunit/`, one file per suite, each test named as the
// kernel's; tests through the public API only (loom models, scheduler
// stress) sit in `tests/`.
#[cfg(test)]
mod kunit;

pub use dma_fence::{
    Callback, CancelToken, Fence, FenceContext, FenceError, FenceKind, FenceOps,
    MAX_SCHEDULE_TIMEOUT, NamedOps, SignalHandle,
};
pub use dma_fence_array::FenceArray;
pub use dma_fence_chain::FenceChain;
pub use dma_resv::{DmaResv, ResvError, ResvGuard, Usage};
pub use errno::{AsErrno, Errno};
pub use sync_file::SyncFile;
pub use ww_mutex::{LockSet, RESERVATION_WW_CLASS, WwAcquireCtx, WwClass, WwError, WwMutex};

#[cfg(all(test, not(loom)))]
mod sched_tests;

#[cfg(test)]
mod dma_buf_tests;
#[cfg(test)]
mod uapi_tests;
