//! The kernel's KUnit fence suites (docs/kernel-semantics.md, "KUnit suites reproduced"), one
//! module per suite, each test named as the kernel's.
mod dma_fence;
mod dma_fence_chain;
mod dma_fence_unwrap;
