//! The revoke sequences proposed on the list, as exporter policies
//! (reference: revoke-thread.md §3 and §7, DESIGN.md "Revoke sequences").
//!
//! | policy | attach gate | fence wait under the lock | unmap wait after unlock |
//! |---|---|---|---|
//! | `v1-core-flag` | p2p, revoked | none (flag set after notifying) | none |
//! | `v2-invalidate-only` | p2p, revoked | none | none |
//! | `v3-kernel-wait` | p2p, revoked, revocable | `Kernel` | none |
//! | `v4-bookkeep-wait` | p2p, revoked, revocable | `Bookkeep` | none |
//! | `v5-unmap-timeout` | p2p, revoked, revocable | `Bookkeep` | 1 s, then proceed |
//! | `v6-final` | p2p, revoked, revocable | `Bookkeep` | unbounded |
//! | `v8b-final-no-gate` | p2p, revoked | `Bookkeep` | unbounded |
//! | `v9c-gate-in-pin` | p2p, revoked (revocable checked in `pin`) | `Bookkeep` | unbounded |

use dmabuf_core::dma_resv::Usage;
use dmabuf_core::revoke::{AttachGate, UnmapWait};
use std::fmt;
use std::str::FromStr;

/// One second, v5's unmap timeout.
pub const V5_UNMAP_TIMEOUT_NS: u64 = 1_000_000_000;

/// A revoke-sequence policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RevokePolicy {
    /// v1: a core-level flag, notify only.
    V1CoreFlag,
    /// v2 / baseline VFIO: flag + invalidate, no wait.
    V2InvalidateOnly,
    /// v3: + wait for `Kernel` fences.
    V3KernelWait,
    /// v4: + wait for `Bookkeep` fences.
    V4BookkeepWait,
    /// v5: v4 + wait for unmaps with a 1 s timeout.
    V5UnmapTimeout,
    /// v6/v7 as merged: v4 + unbounded wait for unmaps.
    V6Final,
    /// v6 without refusing non-revocable importers at attach.
    V8bFinalNoGate,
    /// v6 with the revocable check in `pin` instead of `attach`.
    V9cGateInPin,
}

impl RevokePolicy {
    /// Every policy, in matrix order.
    pub const ALL: [RevokePolicy; 8] = [
        RevokePolicy::V1CoreFlag,
        RevokePolicy::V2InvalidateOnly,
        RevokePolicy::V3KernelWait,
        RevokePolicy::V4BookkeepWait,
        RevokePolicy::V5UnmapTimeout,
        RevokePolicy::V6Final,
        RevokePolicy::V8bFinalNoGate,
        RevokePolicy::V9cGateInPin,
    ];

    /// CLI name.
    pub fn name(self) -> &'static str {
        match self {
            RevokePolicy::V1CoreFlag => "v1-core-flag",
            RevokePolicy::V2InvalidateOnly => "v2-invalidate-only",
            RevokePolicy::V3KernelWait => "v3-kernel-wait",
            RevokePolicy::V4BookkeepWait => "v4-bookkeep-wait",
            RevokePolicy::V5UnmapTimeout => "v5-unmap-timeout",
            RevokePolicy::V6Final => "v6-final",
            RevokePolicy::V8bFinalNoGate => "v8b-final-no-gate",
            RevokePolicy::V9cGateInPin => "v9c-gate-in-pin",
        }
    }

    /// The attach-time checks.
    pub fn attach_gate(self) -> AttachGate {
        match self {
            RevokePolicy::V3KernelWait
            | RevokePolicy::V4BookkeepWait
            | RevokePolicy::V5UnmapTimeout
            | RevokePolicy::V6Final => AttachGate::Revocable,
            RevokePolicy::V1CoreFlag
            | RevokePolicy::V2InvalidateOnly
            | RevokePolicy::V8bFinalNoGate
            | RevokePolicy::V9cGateInPin => AttachGate::PeerToPeerOnly,
        }
    }

    /// Whether `pin` refuses non-revocable importers.
    pub fn gate_in_pin(self) -> bool {
        self == RevokePolicy::V9cGateInPin
    }

    /// The fence wait under the lock, if any.
    pub fn fence_wait(self) -> Option<Usage> {
        match self {
            RevokePolicy::V1CoreFlag | RevokePolicy::V2InvalidateOnly => None,
            RevokePolicy::V3KernelWait => Some(Usage::Kernel),
            _ => Some(Usage::Bookkeep),
        }
    }

    /// The wait for unmaps after unlocking.
    pub fn unmap_wait(self) -> UnmapWait {
        match self {
            RevokePolicy::V5UnmapTimeout => UnmapWait::Timeout(V5_UNMAP_TIMEOUT_NS),
            RevokePolicy::V6Final | RevokePolicy::V8bFinalNoGate | RevokePolicy::V9cGateInPin => {
                UnmapWait::Unbounded
            }
            _ => UnmapWait::None,
        }
    }

    /// v1 sets its flag after notifying instead of before.
    pub fn flag_after_notify(self) -> bool {
        self == RevokePolicy::V1CoreFlag
    }

    /// One line for `dmabuf scenarios`.
    pub fn describe(self) -> &'static str {
        match self {
            RevokePolicy::V1CoreFlag => "v1 (11 Jan): core revoked flag; notify only, no waits",
            RevokePolicy::V2InvalidateOnly => {
                "baseline VFIO / v2: flag + invalidate under the lock, no wait"
            }
            RevokePolicy::V3KernelWait => "v3 (20 Jan): + wait for Kernel-usage fences",
            RevokePolicy::V4BookkeepWait => {
                "v4 (21 Jan): + wait for Bookkeep fences ('hard barrier at fences')"
            }
            RevokePolicy::V5UnmapTimeout => {
                "v5 (24 Jan): + wait for unmaps, 1 s timeout then proceed"
            }
            RevokePolicy::V6Final => "v6/v7 (merged, 7.1): + unbounded wait for every unmap",
            RevokePolicy::V8bFinalNoGate => "v6 without refusing non-revocable importers at attach",
            RevokePolicy::V9cGateInPin => {
                "v6 with the revocability check in pin instead of attach (v2's idea)"
            }
        }
    }
}

impl fmt::Display for RevokePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revoke policy '{0}'")]
pub struct UnknownPolicy(pub String);

impl FromStr for RevokePolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RevokePolicy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_is_an_error() {
        for p in RevokePolicy::ALL {
            assert_eq!(p.name().parse::<RevokePolicy>(), Ok(p));
        }
        assert!("v7".parse::<RevokePolicy>().is_err());
    }

    #[test]
    fn only_the_final_family_waits_for_unmaps_without_bound() {
        let unbounded: Vec<_> = RevokePolicy::ALL
            .into_iter()
            .filter(|p| p.unmap_wait() == UnmapWait::Unbounded)
            .collect();
        assert_eq!(
            unbounded,
            vec![
                RevokePolicy::V6Final,
                RevokePolicy::V8bFinalNoGate,
                RevokePolicy::V9cGateInPin
            ]
        );
        assert_eq!(RevokePolicy::V3KernelWait.fence_wait(), Some(Usage::Kernel));
        assert_eq!(RevokePolicy::V2InvalidateOnly.fence_wait(), None);
    }
}
