//! The kernel's KUnit fence suites (reference/kernel-dmabuf.md §4), one
//! module per suite, each test named as the kernel's.
mod dma_fence;
mod dma_fence_chain;
mod dma_fence_unwrap;
