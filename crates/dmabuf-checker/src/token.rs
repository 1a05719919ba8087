//! Replay tokens: everything needed to re-run one schedule exactly.
//!
//! Format (shell-safe, one word):
//! `dmabuf2,<scenario>,<hash>,<strategy>,<seed>,<mode>,<schedule>`
//!
//! | field | values |
//! |---|---|
//! | scenario | a scenario name (`vfio-iommufd-flr`, `matrix.v6-final.gpu`, a file's scenario, ...) |
//! | hash | 16 hex digits: the hash of the protocol, importers and timeline the schedule ran against; replaying against anything else is refused |
//! | strategy | `random`, `pct<depth>` (e.g. `pct3`), `dfs`, `dpor` |
//! | seed | decimal u64 |
//! | mode | `normal`, or `stalled` (userspace never runs again once revoke begins) |
//! | schedule | the scheduler's encoded decision list |
//!
//! Replaying uses only the schedule; the other fields name the run and let
//! `replay` rebuild the same scenario in the same mode.

use std::fmt;
use std::str::FromStr;

/// How schedules are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyKind {
    /// Uniformly random among runnable tasks.
    Random,
    /// Probabilistic concurrency testing with the given depth.
    Pct(u32),
    /// Bounded depth-first enumeration.
    Dfs,
    /// Source-set dynamic partial-order reduction with sleep sets.
    Dpor,
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrategyKind::Random => f.write_str("random"),
            StrategyKind::Pct(d) => write!(f, "pct{d}"),
            StrategyKind::Dfs => f.write_str("dfs"),
            StrategyKind::Dpor => f.write_str("dpor"),
        }
    }
}

/// Whether userspace is stalled once revoke begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Every task runs.
    Normal,
    /// The `userspace` group is never scheduled again once revoke begins.
    Stalled,
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunMode::Normal => "normal",
            RunMode::Stalled => "stalled",
        })
    }
}

/// A malformed token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not seven comma-separated fields starting with `dmabuf2`.
    #[error(
        "malformed replay token: expected dmabuf2,<scenario>,<hash>,<strategy>,<seed>,<mode>,<schedule>; got '{0}'"
    )]
    Shape(String),
    /// A token of an earlier version (its schedules do not replay here).
    #[error(
        "replay token of an earlier version (dmabuf1): its schedule does not replay on this version; re-run check for a new token"
    )]
    Version,
    /// A field that does not parse.
    #[error("malformed replay token: bad {field} '{value}'")]
    Field {
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
    },
}

/// A replay token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayToken {
    /// Scenario name.
    pub scenario: String,
    /// Hash of what ran ([`dmabuf_scenario::builtin::spec_hash`]).
    pub hash: u64,
    /// Strategy that found the schedule.
    pub strategy: StrategyKind,
    /// Seed of that strategy.
    pub seed: u64,
    /// Normal or stalled-userspace run.
    pub mode: RunMode,
    /// The encoded schedule.
    pub schedule: String,
}

impl fmt::Display for ReplayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dmabuf2,{},{:016x},{},{},{},{}",
            self.scenario, self.hash, self.strategy, self.seed, self.mode, self.schedule
        )
    }
}

impl FromStr for ReplayToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts: Vec<&str> = s.trim().split(',').collect();
        if parts.first() == Some(&"dmabuf1") {
            return Err(TokenError::Version);
        }
        if parts.len() != 7 || parts[0] != "dmabuf2" {
            return Err(TokenError::Shape(s.to_owned()));
        }
        let hash_text = parts.remove(2);
        let bad = |field: &'static str, value: &str| TokenError::Field {
            field,
            value: value.to_owned(),
        };
        let scenario = parts[1];
        if scenario.is_empty()
            || !scenario
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad("scenario", scenario));
        }
        let strategy = match parts[2] {
            "random" => StrategyKind::Random,
            "dfs" => StrategyKind::Dfs,
            "dpor" => StrategyKind::Dpor,
            p => match p.strip_prefix("pct").map(str::parse::<u32>) {
                Some(Ok(d)) if d >= 1 => StrategyKind::Pct(d),
                _ => return Err(bad("strategy", p)),
            },
        };
        if hash_text.len() != 16 || !hash_text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("hash", hash_text));
        }
        let hash = u64::from_str_radix(hash_text, 16).map_err(|_| bad("hash", hash_text))?;
        let seed = parts[3].parse().map_err(|_| bad("seed", parts[3]))?;
        let mode = match parts[4] {
            "normal" => RunMode::Normal,
            "stalled" => RunMode::Stalled,
            m => return Err(bad("mode", m)),
        };
        Ok(ReplayToken {
            scenario: scenario.to_owned(),
            hash,
            strategy,
            seed,
            mode,
            schedule: parts[5].to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let t = ReplayToken {
            scenario: "matrix.v6-final.gpu".into(),
            hash: 0x0123_4567_89ab_cdef,
            strategy: StrategyKind::Pct(3),
            seed: 42,
            mode: RunMode::Stalled,
            schedule: "0a1b".into(),
        };
        assert_eq!(t.to_string().parse::<ReplayToken>(), Ok(t));
        let d = "dmabuf2,vfio-iommufd-flr,0000000000000001,dpor,1,normal,1.ab"
            .parse::<ReplayToken>()
            .unwrap();
        assert_eq!(d.strategy, StrategyKind::Dpor);
        assert_eq!(
            d.to_string(),
            "dmabuf2,vfio-iommufd-flr,0000000000000001,dpor,1,normal,1.ab"
        );
    }

    #[test]
    fn malformed_tokens_are_errors_naming_the_field() {
        assert!(matches!(
            "x".parse::<ReplayToken>(),
            Err(TokenError::Shape(_))
        ));
        assert_eq!(
            "dmabuf1,a,dfs,1,normal,".parse::<ReplayToken>(),
            Err(TokenError::Version)
        );
        assert!(matches!(
            "dmabuf2,a,12345,dfs,1,normal,".parse::<ReplayToken>(),
            Err(TokenError::Field { field: "hash", .. })
        ));
        assert!(matches!(
            "dmabuf2,a,0000000000000000,pct0,1,normal,".parse::<ReplayToken>(),
            Err(TokenError::Field {
                field: "strategy",
                ..
            })
        ));
        assert!(matches!(
            "dmabuf2,a,0000000000000000,dfs,-1,normal,".parse::<ReplayToken>(),
            Err(TokenError::Field { field: "seed", .. })
        ));
        assert!(matches!(
            "dmabuf2,a b,0000000000000000,dfs,1,normal,".parse::<ReplayToken>(),
            Err(TokenError::Field {
                field: "scenario",
                ..
            })
        ));
        assert!(matches!(
            "dmabuf2,a,0000000000000000,dfs,1,sleepy,".parse::<ReplayToken>(),
            Err(TokenError::Field { field: "mode", .. })
        ));
    }
}
