//! The properties every explored schedule is judged against: a trait
//! ([`Check`]) and a registry ([`REGISTRY`]). Adding a property is one file
//! in `properties/` and one line in the registry; the explorer, the matrix,
//! `check` and `replay` need no change.
//!
//! | name | holds when |
//! |---|---|
//! | `s-fence` | once a revoke's fence wait has completed, no write reaches the exporter's memory (while it waits for unmaps, and after it returned until the un-revoke) |
//! | `s-final` | once revoke returns, no access of any kind (DMA or CPU, read or write) reaches the exporter's memory, and no mapping of it is outstanding |
//! | `s-noreuse` | the exporter never resets, powers down, disables decode of, frees or re-assigns memory while any mapping of it (sg, IOMMU or IOTLB translation, CPU PTE) is outstanding, as the platform records at that moment, whether or not an access lands; and no use-after-free, AER or misdirected DMA lands at any time |
//! | `l-bounded` | every revoke completes even when every userspace thread is stalled (from a point the search chooses; checked in dedicated runs) |
//! | `l-restore` | after an un-revoke, every importer that uses the buffer again by design can map again and its next job runs; no un-revoke is refused (normal runs of worlds with a cycle) |
//! | `no-deadlock` | the run ends with every task finished |
//! | `no-leak` | every buffer is released and every attachment detached at the end |
//! | `lockdep` | the validator reported nothing |
//! | `no-warn` | the kernel printed no WARN: no `refcount_t` saturation, no timed-out unmap wait |

use crate::explore::{RunOutcome, Violation};
use crate::token::RunMode;
use std::fmt;
use std::str::FromStr;

/// One property: its name, meaning, where it is judged and the judge.
pub trait Check: Sync {
    /// The name used on the command line, in files and in JSON.
    fn name(&self) -> &'static str;
    /// One-letter code of the matrix table.
    fn code(&self) -> char;
    /// One line on what it means.
    fn describe(&self) -> &'static str;
    /// Whether runs of `mode` say anything about it.
    fn judged_in(&self, mode: RunMode) -> bool;
    /// `Some` when `run` contradicts it (only called for judged modes).
    fn judge(&self, run: &RunOutcome) -> Option<Violation>;
    /// Whether it is judged from the hazard monitor's records of devices'
    /// speculative reads, so that a search leaving those reads unordered
    /// (`WorldSpec::read_ahead_unordered`) does not decide it.
    fn judged_from_speculation(&self) -> bool {
        false
    }
}

/// Every property, in report order.
pub static REGISTRY: [&dyn Check; 9] = [
    &crate::properties::s_fence::SFence,
    &crate::properties::s_final::SFinal,
    &crate::properties::s_noreuse::SNoreuse,
    &crate::properties::l_bounded::LBounded,
    &crate::properties::no_deadlock::NoDeadlock,
    &crate::properties::no_leak::NoLeak,
    &crate::properties::lockdep::Lockdep,
    &crate::properties::no_warn::NoWarn,
    &crate::properties::l_restore::LRestore,
];

/// A handle on a registered property (its index in [`REGISTRY`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Property(u8);

#[allow(non_upper_case_globals)]
impl Property {
    /// `s-fence`.
    pub const SFence: Property = Property(0);
    /// `s-final`.
    pub const SFinal: Property = Property(1);
    /// `s-noreuse`.
    pub const SNoreuse: Property = Property(2);
    /// `l-bounded`.
    pub const LBounded: Property = Property(3);
    /// `no-deadlock`.
    pub const NoDeadlock: Property = Property(4);
    /// `no-leak`.
    pub const NoLeak: Property = Property(5);
    /// `lockdep`.
    pub const Lockdep: Property = Property(6);
    /// `no-warn`.
    pub const NoWarn: Property = Property(7);
    /// `l-restore`.
    pub const LRestore: Property = Property(8);

    /// Every property, in report order.
    pub const ALL: [Property; 9] = [
        Property(0),
        Property(1),
        Property(2),
        Property(3),
        Property(4),
        Property(5),
        Property(6),
        Property(7),
        Property(8),
    ];

    /// The registered check.
    pub fn check(self) -> &'static dyn Check {
        REGISTRY[usize::from(self.0)]
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        self.check().name()
    }

    /// One line on what it means.
    pub fn describe(self) -> &'static str {
        self.check().describe()
    }

    /// See [`Check::judged_from_speculation`].
    pub fn judged_from_speculation(self) -> bool {
        self.check().judged_from_speculation()
    }

    /// One-letter code.
    pub fn code(self) -> char {
        self.check().code()
    }
}

impl fmt::Debug for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown property name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown property '{0}' (known: {known})", known = known())]
pub struct UnknownProperty(pub String);

fn known() -> String {
    Property::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Property {
    type Err = UnknownProperty;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Property::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProperty(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_codes_are_unique_and_unknown_is_an_error() {
        for p in Property::ALL {
            assert_eq!(p.name().parse::<Property>(), Ok(p));
        }
        let mut codes: Vec<char> = Property::ALL.iter().map(|p| p.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Property::ALL.len());
        let e = "s-finale".parse::<Property>().unwrap_err();
        assert!(e.to_string().contains("no-warn"), "{e}");
    }
}
