//! The kernel's KUnit suites (docs/kernel-semantics.md, "KUnit suites
//! reproduced"), one module per suite, each test named as the kernel's:
//! `dma-buf-fence`, `dma-buf-fence-chain`, `dma-buf-fence-unwrap` and
//! `dma-buf-resv` (with the tests the kernel's resv suite lacks).
mod dma_fence;
mod dma_fence_chain;
mod dma_fence_unwrap;
mod dma_resv;
