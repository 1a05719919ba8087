//! The properties every explored schedule is checked against
//! (reference: revoke-thread.md §7).
//!
//! | name | holds when |
//! |---|---|
//! | `s-fence` | once revoke returns, no write reaches the exporter's memory |
//! | `s-final` | once revoke returns, no access of any kind (DMA or CPU, read or write) reaches the exporter's memory, and no mapping of it is outstanding |
//! | `s-noreuse` | the exporter never frees, powers down, resets or hands to another device memory that is still mapped: no use-after-free, AER or misdirected DMA at any time |
//! | `l-bounded` | revoke completes even when every userspace thread is stalled from the moment revoke begins (checked in dedicated runs) |
//! | `no-deadlock` | the run ends with every task finished |
//! | `no-leak` | every buffer is released and every attachment detached at the end |
//! | `lockdep` | the validator reported nothing |

use std::fmt;
use std::str::FromStr;

/// A checked property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// `s-fence`.
    SFence,
    /// `s-final`.
    SFinal,
    /// `s-noreuse`.
    SNoreuse,
    /// `l-bounded`.
    LBounded,
    /// `no-deadlock`.
    NoDeadlock,
    /// `no-leak`.
    NoLeak,
    /// `lockdep`.
    Lockdep,
}

impl Property {
    /// Every property, in report order.
    pub const ALL: [Property; 7] = [
        Property::SFence,
        Property::SFinal,
        Property::SNoreuse,
        Property::LBounded,
        Property::NoDeadlock,
        Property::NoLeak,
        Property::Lockdep,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Property::SFence => "s-fence",
            Property::SFinal => "s-final",
            Property::SNoreuse => "s-noreuse",
            Property::LBounded => "l-bounded",
            Property::NoDeadlock => "no-deadlock",
            Property::NoLeak => "no-leak",
            Property::Lockdep => "lockdep",
        }
    }

    /// One line on what it means.
    pub fn describe(self) -> &'static str {
        match self {
            Property::SFence => "after revoke returns, no write reaches the exporter's memory",
            Property::SFinal => {
                "after revoke returns, no access reaches the exporter's memory and no mapping is outstanding"
            }
            Property::SNoreuse => {
                "memory is never freed, powered down, reset or re-assigned while mapped"
            }
            Property::LBounded => {
                "revoke completes with userspace stalled from the moment it begins"
            }
            Property::NoDeadlock => "every task finishes",
            Property::NoLeak => "every buffer is released and every attachment detached at the end",
            Property::Lockdep => "the lock validator reports nothing",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown property name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown property '{0}' (known: s-fence, s-final, s-noreuse, l-bounded, no-deadlock, no-leak, lockdep)"
)]
pub struct UnknownProperty(pub String);

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
    fn names_round_trip_and_unknown_is_an_error() {
        for p in Property::ALL {
            assert_eq!(p.name().parse::<Property>(), Ok(p));
        }
        assert_eq!(
            "s-finale".parse::<Property>(),
            Err(UnknownProperty("s-finale".into()))
        );
    }
}
