//! Revoke, as the Linux 7.1 kdoc of `dma_buf_invalidate_mappings` and the
//! VFIO exporter define it, packaged so any exporter can carry it out
//! correctly. The kernel leaves this to each exporter; VFIO got it wrong
//! twice after merge (a kref underflow after revoke, fixed by c64a647c84f3,
//! and a cleanup that put the base reference twice and then waited on a
//! consumed completion).
//!
//! # The sequence (revoke)
//!
//! 1. Lock the reservation object.
//! 2. Mark the buffer revoked: from now on the exporter's `attach` fails with
//!    `ENODEV` and its `map_dma_buf` fails with `ENODEV` (they call
//!    [`Revocable::check_attach`] / [`Revocable::map_get`] under the lock).
//! 3. `dma_buf_invalidate_mappings`.
//! 4. `dma_resv_wait_timeout(Bookkeep, non-interruptible, MAX)`: every fence
//!    retires; after this no importer accesses the memory under fenced work
//!    (it may still read speculatively until it unmaps).
//! 5. Unlock (so importers that unmap later, taking the lock, can finish).
//! 6. Drop the base reference of the live-mapping count and wait for its
//!    completion: every mapping handed out has been unmapped.
//! 7. Re-arm the count and the completion while still revoked (nothing can
//!    map while revoked, so the count stays at its base).
//!
//! After step 4 no fenced access remains; after step 6 no access at all.
//!
//! # Un-revoke
//!
//! Lock; invalidate (dynamic importers learn they may map again); wait
//! Bookkeep; unlock; check the count is re-armed; lock; clear the flag;
//! unlock. The count is re-armed *before* the flag is cleared (the v6 race
//! fix), so a concurrent attach or map can never see a cleared flag with a
//! stale count.
//!
//! # States
//!
//! | state | `revoked` | live count | map | attach |
//! |---|---|---|---|---|
//! | usable | false | 1 + mappings | counts a mapping | allowed (if the gate admits) |
//! | revoking (steps 2–6) | true | draining to 0 | `ENODEV` | `ENODEV` |
//! | revoked | true | 1 (re-armed) | `ENODEV` | `ENODEV` |
//! | gone (device closed) | true, for good | 1 | `ENODEV` | `ENODEV` |
//!
//! Revoking an already revoked buffer (cleanup after a decode-off revoke) is
//! safe: the base reference goes to zero at once and nothing hangs.

use crate::dma_buf::{self, Attachment, DmaBufError, DmaBufRef};
use crate::dma_fence::MAX_SCHEDULE_TIMEOUT;
use crate::dma_resv::{ResvGuard, Usage};
use crate::errno;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Condvar, Mutex};
use crate::trace_event;

/// Which attach-time checks the exporter applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachGate {
    /// `!peer2peer` → `EOPNOTSUPP`; revoked → `ENODEV`; not
    /// `dma_buf_attach_revocable` → `EOPNOTSUPP` (7.1 VFIO).
    Revocable,
    /// Peer-to-peer and revoked checks only (VFIO before the series).
    PeerToPeerOnly,
}

/// How long step 6 may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapWait {
    /// Do not wait for unmaps at all.
    None,
    /// Wait at most this many nanoseconds, then proceed (v5; NAK'd).
    Timeout(u64),
    /// Wait for every unmap, however long it takes (v6, merged).
    Unbounded,
}

/// What a revoke did, for tests and the checker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Whether the buffer was already revoked.
    pub already_revoked: bool,
    /// Attachments notified by `invalidate_mappings`.
    pub notified: usize,
    /// Mappings still live after the fence wait.
    pub live_after_fences: usize,
    /// Whether every mapping was unmapped before returning.
    pub drained: bool,
}

struct Count {
    /// kref: the base reference plus one per live mapping.
    refs: usize,
    /// The completion.
    done: bool,
}

/// Revoke state of one exported buffer: the `revoked` flag (read and written
/// under the buffer's reservation lock) and the live-mapping count with its
/// completion.
pub struct Revocable {
    revoked: AtomicBool,
    count: Mutex<Count>,
    cv: Condvar,
}

impl std::fmt::Debug for Revocable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Revocable(revoked={}, live={})",
            self.is_revoked(),
            self.live_mappings()
        )
    }
}

impl Revocable {
    /// A new state; `revoked` is the initial state (VFIO starts revoked when
    /// memory decode is off).
    pub fn new(revoked: bool) -> Self {
        Self {
            revoked: AtomicBool::new(revoked),
            count: Mutex::new(Count {
                refs: 1,
                done: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Whether the buffer is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Mappings currently counted (the base reference excluded).
    pub fn live_mappings(&self) -> usize {
        self.count.lock().refs.saturating_sub(1)
    }

    /// The exporter's `attach` checks. Call from `DmaBufOps::attach`.
    pub fn check_attach(&self, attach: &Attachment, gate: AttachGate) -> Result<(), DmaBufError> {
        if !attach.peer2peer() {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("attach of {}: no peer-to-peer", attach.dev()),
            ));
        }
        if self.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                format!("attach of {}: buffer revoked", attach.dev()),
            ));
        }
        if gate == AttachGate::Revocable && !dma_buf::attach_revocable(attach) {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("attach of {}: importer cannot be revoked", attach.dev()),
            ));
        }
        Ok(())
    }

    /// The check that pin-time gating (v2's `.pin`) applies.
    pub fn check_revocable_at_pin(&self, attach: &Attachment) -> Result<(), DmaBufError> {
        if !dma_buf::attach_revocable(attach) {
            return Err(DmaBufError::errno(
                errno::EOPNOTSUPP,
                format!("pin by {}: importer cannot be revoked", attach.dev()),
            ));
        }
        Ok(())
    }

    /// In `map_dma_buf`, with the lock held: `ENODEV` while revoked,
    /// otherwise counts one more live mapping.
    pub fn map_get(&self, _guard: &ResvGuard<'_>) -> Result<(), DmaBufError> {
        if self.is_revoked() {
            return Err(DmaBufError::errno(
                errno::ENODEV,
                "map_dma_buf: buffer revoked",
            ));
        }
        let mut c = self.count.lock();
        c.refs += 1;
        Ok(())
    }

    /// In `unmap_dma_buf`: one live mapping fewer; the last completes.
    pub fn map_put(&self) {
        self.put();
    }

    fn put(&self) {
        let mut c = self.count.lock();
        if c.refs == 0 {
            // An unbalanced put is a caller bug; never underflow.
            return;
        }
        c.refs -= 1;
        if c.refs == 0 {
            c.done = true;
            drop(c);
            self.cv.notify_all();
        }
    }

    /// Step 2 alone (for sequences that compose the steps themselves).
    pub fn mark_revoked(&self, _guard: &ResvGuard<'_>) {
        self.revoked.store(true, Ordering::Release);
    }

    /// Clears the flag (un-revoke's last step), with the lock held.
    pub fn clear_revoked(&self, _guard: &ResvGuard<'_>) {
        self.revoked.store(false, Ordering::Release);
    }

    /// Step 6: drops the base reference and waits as told. Returns whether
    /// every mapping was unmapped. Step 7 (re-arm) follows when drained; when
    /// a timed wait gives up, the count is left as it is, so the late unmaps
    /// still balance it, and the next drain waits for them.
    pub fn put_base_and_wait(&self, wait: UnmapWait) -> bool {
        self.put();
        let drained = match wait {
            UnmapWait::None => self.count.lock().done,
            UnmapWait::Unbounded => {
                let mut c = self.count.lock();
                while !c.done {
                    c = self.cv.wait(c);
                }
                true
            }
            UnmapWait::Timeout(ns) => {
                let deadline = crate::sync::time::now_ns().saturating_add(ns);
                let mut c = self.count.lock();
                while !c.done {
                    let now = crate::sync::time::now_ns();
                    if now >= deadline {
                        break;
                    }
                    let (g, _) = self
                        .cv
                        .wait_timeout(c, std::time::Duration::from_nanos(deadline - now));
                    c = g;
                }
                c.done
            }
        };
        let mut c = self.count.lock();
        if c.done {
            c.refs = 1;
            c.done = false;
        } else {
            // Give the base reference back so late unmaps cannot reach zero
            // while nobody waits, and a later revoke can drain again.
            c.refs += 1;
        }
        drained
    }

    /// The merged 7.1 sequence (steps 1–7) with the given unmap wait.
    pub fn revoke(&self, buf: &DmaBufRef, wait: UnmapWait) -> Result<RevokeOutcome, DmaBufError> {
        trace_event!(
            "dma_buf_revoke_begin",
            "exp_name={} ino={}",
            buf.exp_name(),
            buf.ino()
        );
        let mut out = RevokeOutcome::default();
        {
            let g = buf.resv().lock(None)?;
            out.already_revoked = self.is_revoked();
            self.mark_revoked(&g);
            out.notified = dma_buf::invalidate_mappings(buf, &g)?;
            buf.resv()
                .wait_timeout(Usage::Bookkeep, None, MAX_SCHEDULE_TIMEOUT)?;
            trace_event!(
                "dma_buf_revoke_fences_done",
                "exp_name={} ino={}",
                buf.exp_name(),
                buf.ino()
            );
        }
        out.live_after_fences = self.live_mappings();
        out.drained = self.put_base_and_wait(wait);
        trace_event!(
            "dma_buf_revoke_end",
            "exp_name={} ino={} drained={}",
            buf.exp_name(),
            buf.ino(),
            out.drained
        );
        Ok(out)
    }

    /// Un-revoke in the safe order: invalidate and wait, re-armed count
    /// checked, then the flag cleared under the lock.
    pub fn unrevoke(&self, buf: &DmaBufRef) -> Result<(), DmaBufError> {
        if !self.is_revoked() {
            return Ok(());
        }
        {
            let g = buf.resv().lock(None)?;
            dma_buf::invalidate_mappings(buf, &g)?;
            buf.resv()
                .wait_timeout(Usage::Bookkeep, None, MAX_SCHEDULE_TIMEOUT)?;
        }
        {
            let c = self.count.lock();
            if c.refs != 1 || c.done {
                return Err(DmaBufError::Invalid(format!(
                    "unrevoke with the live-mapping count not re-armed (refs={}, done={})",
                    c.refs, c.done
                )));
            }
        }
        let g = buf.resv().lock(None)?;
        self.clear_revoked(&g);
        trace_event!(
            "dma_buf_unrevoke",
            "exp_name={} ino={}",
            buf.exp_name(),
            buf.ino()
        );
        Ok(())
    }
}
