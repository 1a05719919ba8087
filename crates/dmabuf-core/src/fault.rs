//! Fault injection for allocations that can fail: the userspace counterpart
//! of the kernel's `failslab` / `fail_page_alloc` (`lib/fault-inject.c`,
//! `should_failslab()`), reduced to one process-wide hook.
//!
//! # Contract
//!
//! | state | [`should_fail`] |
//! |---|---|
//! | no hook installed (the default) | `false`, after one relaxed load |
//! | a hook installed ([`set_hook`]) | whatever the hook answers for the site |
//!
//! Each allocation that the kernel may fail with `-ENOMEM` calls
//! [`should_fail`] with its kernel name just before it would allocate; on
//! `true` it returns its layer's `ENOMEM` error *without side effects*, as the
//! kernel's error path does. The sites:
//!
//! | site | layer | kernel counterpart |
//! |---|---|---|
//! | `dma_buf_export` | `dma_buf::export` | `kzalloc` of `struct dma_buf` in `dma_buf_export()` |
//! | `dma_buf_attach` | `dma_buf::dynamic_attach` | `kzalloc` of the attachment in `dma_buf_dynamic_attach()` |
//! | `sg_alloc_table` | `dma_buf::map_attachment`, before the exporter's `map_dma_buf` | `sg_alloc_table()` inside each exporter's `map_dma_buf` (checked once in the core for every exporter) |
//! | `dma_resv_reserve_fences` | `DmaResv` reserve | `dma_resv_list_alloc()` in `dma_resv_reserve_fences()` |
//! | `alloc_pages` | platform `PhysMemory::alloc_frames` | `alloc_pages()` (system heap pages, GPU page tables, VRAM eviction) |
//!
//! # Lock rules
//!
//! The hook lives behind a `parking_lot` lock, never the shim's: asking
//! must not be a scheduling point of the controlled scheduler. The hook is
//! called without that lock held (it is cloned out first), so a hook may
//! take its own locks; it must not call back into dma-buf.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Decides, per allocation site, whether this allocation fails.
pub type Hook = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static HOOK: parking_lot::Mutex<Option<Hook>> = parking_lot::Mutex::new(None);

/// Installs (or with `None` removes) the process-wide hook. Returns the
/// previous one.
pub fn set_hook(hook: Option<Hook>) -> Option<Hook> {
    let mut g = HOOK.lock();
    INSTALLED.store(hook.is_some(), Ordering::Release);
    std::mem::replace(&mut *g, hook)
}

/// Whether the allocation at `site` must fail (see the module docs).
#[inline]
pub fn should_fail(site: &'static str) -> bool {
    if !INSTALLED.load(Ordering::Relaxed) {
        return false;
    }
    let hook = HOOK.lock().clone();
    hook.is_some_and(|h| h(site))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process-wide hook, so tests running in parallel
    // never see each other's hook.
    #[test]
    fn hook_decides_per_site_and_can_be_removed() {
        assert!(!should_fail("dma_buf_attach"));
        let prev = set_hook(Some(Arc::new(|site| site == "dma_buf_attach")));
        assert!(prev.is_none());
        assert!(should_fail("dma_buf_attach"));
        assert!(!should_fail("dma_buf_export"));
        let prev = set_hook(None);
        assert!(prev.is_some());
        assert!(!should_fail("dma_buf_attach"));
    }
}
