//! TEMPORARY minimal reservation object, replaced by the real `dma_resv`
//! when that branch merges. Only the calls the dma-buf layer uses.
use crate::dma_fence::{CancelToken, Fence, FenceError};
use crate::sync::{Condvar, Mutex};

/// Usage levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Usage {
    /// Kernel.
    Kernel,
    /// Write.
    Write,
    /// Read.
    Read,
    /// Bookkeep.
    Bookkeep,
}

impl Usage {
    /// dma_resv_usage_rw.
    pub fn usage_rw(write: bool) -> Usage {
        if write { Usage::Read } else { Usage::Write }
    }
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum ResvError {
    /// Interrupted.
    #[error("interrupted")]
    Interrupted,
}

struct St {
    owner: Option<std::thread::ThreadId>,
    fences: Vec<(Fence, Usage)>,
}

/// Reservation object.
pub struct DmaResv {
    st: Mutex<St>,
    cv: Condvar,
}

/// Lock guard.
pub struct ResvGuard<'a> {
    resv: &'a DmaResv,
}

impl Default for DmaResv {
    fn default() -> Self {
        Self::new()
    }
}

impl DmaResv {
    /// New.
    pub fn new() -> Self {
        Self {
            st: Mutex::new(St {
                owner: None,
                fences: vec![],
            }),
            cv: Condvar::new(),
        }
    }
    /// Lock.
    pub fn lock(&self) -> ResvGuard<'_> {
        let mut g = self.st.lock();
        while g.owner.is_some() {
            g = self.cv.wait(g);
        }
        g.owner = Some(std::thread::current().id());
        ResvGuard { resv: self }
    }
    /// Held by the calling thread.
    pub fn is_held_by_current(&self) -> bool {
        self.st.lock().owner == Some(std::thread::current().id())
    }
    /// Wait.
    pub fn wait_timeout(
        &self,
        usage: Usage,
        cancel: Option<&CancelToken>,
        timeout_ns: u64,
    ) -> Result<u64, FenceError> {
        let fs = self.get_fences(usage);
        let mut left = timeout_ns;
        for f in fs {
            left = f.wait_timeout(cancel, left)?;
            if left == 0 {
                return Ok(0);
            }
        }
        Ok(if timeout_ns == 0 { 1 } else { left })
    }
    /// Unsignalled fences of usage <= u.
    pub fn get_fences(&self, usage: Usage) -> Vec<Fence> {
        self.st
            .lock()
            .fences
            .iter()
            .filter(|(f, u)| *u <= usage && !f.is_signaled())
            .map(|(f, _)| f.clone())
            .collect()
    }
    /// Singleton.
    pub fn get_singleton(&self, usage: Usage) -> Result<Option<Fence>, FenceError> {
        Ok(self.get_fences(usage).into_iter().next())
    }
    /// Test signaled.
    pub fn test_signaled(&self, usage: Usage) -> bool {
        self.get_fences(usage).is_empty()
    }
    /// Describe.
    pub fn describe(&self) -> String {
        String::new()
    }
}

impl ResvGuard<'_> {
    /// The object.
    pub fn resv(&self) -> &DmaResv {
        self.resv
    }
    /// Reserve.
    pub fn reserve_fences(&self, _n: usize) -> Result<(), ResvError> {
        Ok(())
    }
    /// Add.
    pub fn add_fence(&self, f: &Fence, u: Usage) -> Result<(), ResvError> {
        self.resv.st.lock().fences.push((f.clone(), u));
        Ok(())
    }
}

impl Drop for ResvGuard<'_> {
    fn drop(&mut self) {
        self.resv.st.lock().owner = None;
        self.resv.cv.notify_all();
    }
}

impl crate::errno::Errno for ResvError {
    fn errno(&self) -> i32 {
        crate::errno::EINTR
    }
}
