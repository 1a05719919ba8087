//! The dma-buf core of Linux 7.1, in userspace Rust: fences (`dma_fence` and
//! its containers), reservation objects, dma-buf objects and attachments, the
//! userspace ABI, and revoke.
//!
//! Module names follow the kernel's files (`dma-fence.c` is [`dma_fence`],
//! `dma-fence-chain.c` is `dma_fence_chain`, and so on), so a reader who
//! knows the kernel finds each concept without searching. Every module opens
//! with the contract it implements: its states, its lock rules and what may
//! happen after what.
//!
//! All synchronisation goes through [`sync`], so the same code runs on real
//! threads, under the controlled scheduler of [`sync::sched`] and under loom.
#![warn(missing_docs)]

pub mod dma_buf;
pub mod dma_fence;
pub mod dma_fence_array;
pub mod dma_fence_chain;
pub mod dma_fence_unwrap;
pub mod dma_resv;
pub mod errno;
pub mod lockdep;
pub mod revoke;
pub mod sync;
/// Declares a thread-local through the shim (std's, or loom's under
/// `--cfg loom`).
pub use dmabuf_sync::shim_thread_local;
pub mod sync_file;
pub mod trace;
pub mod uapi;
pub mod ww_mutex;

#[cfg(test)]
mod kunit;
#[cfg(test)]
mod kunit_resv;

pub use dma_fence::{
    Callback, CancelToken, Fence, FenceContext, FenceError, FenceKind, FenceOps,
    MAX_SCHEDULE_TIMEOUT, NamedOps, SignalHandle,
};
pub use dma_fence_array::FenceArray;
pub use dma_fence_chain::FenceChain;
pub use dma_resv::{DmaResv, ResvError, ResvGuard, Usage};
pub use errno::Errno;
pub use sync_file::SyncFile;
pub use ww_mutex::{LockSet, RESERVATION_WW_CLASS, WwAcquireCtx, WwClass, WwError, WwMutex};

#[cfg(all(test, not(loom)))]
mod sched_tests;

#[cfg(test)]
mod dma_buf_tests;
#[cfg(test)]
mod uapi_tests;
