//! Replay tokens: everything needed to re-run one schedule exactly.
//!
//! Format (shell-safe, one word; fields separated by commas):
//! `dmabuf3,<scenario>,<hash>,<strategy>,<seed>,<mode>,<schedule>,<check>`
//!
//! | field | values |
//! |---|---|
//! | scenario | a scenario name (`vfio-iommufd-flr`, `matrix.v6-final.gpu`, a file's scenario, ...), optionally `.jobsN` |
//! | hash | 16 hex digits: the hash of the protocol, importers and timeline the schedule ran against; replaying against anything else is refused |
//! | strategy | `random`, `pct<depth>` (e.g. `pct3`), `dfs`, `dpor` |
//! | seed | decimal u64, no sign, no leading zeros |
//! | mode | `normal`, or `stalled` (userspace never runs again once revoke begins) |
//! | schedule | the scheduler's encoded decision list, in canonical form |
//! | check | 8 lowercase hex digits: FNV-1a (32 bit) of everything before the last comma |
//!
//! Replaying uses only the schedule; the other fields name the run and let
//! `replay` rebuild the same scenario in the same mode. The check makes an
//! edited field (a changed seed, a schedule pasted from another token) an
//! error instead of a different run that looks like the recorded one.
//! `dmabuf2` tokens (the same fields without the check) are still read;
//! `dmabuf1` tokens (no hash) are refused: their schedules ran against
//! protocols that no longer exist in that form.
//!
//! Everything is validated here, before anything runs:
//! * characters: the scenario is `[A-Za-z0-9._-]`, the schedule
//!   `1.` then `[A-Za-z0-9_]`;
//! * the schedule decodes strictly: only the form the encoder writes
//!   (`z3`, never `zzz`; no count below 2; no leading zeros; `_N_` only for
//!   tasks 52 and above) and at most [`MAX_DECISIONS`] decisions, so that no
//!   token can make the checker allocate without bound.
//!
//! The fields are read in one place ([`FIELDS`] and `FromStr`): a new field
//! is one more entry there, one more struct field, and one more version.

use dmabuf_core::sync::sched::{Schedule, TaskId};
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

/// The most decisions a token's schedule may hold: one run never takes
/// more scheduling steps than the checker's step limit.
pub const MAX_DECISIONS: usize = crate::explore::MAX_STEPS as usize;

/// The current token version (first field).
pub const VERSION: &str = "dmabuf3";
/// The version without the check field, still accepted.
pub const VERSION_LEGACY: &str = "dmabuf2";

/// The fields of a current token, in order.
pub const FIELDS: [&str; 8] = [
    "version", "scenario", "hash", "strategy", "seed", "mode", "schedule", "check",
];

/// A malformed token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not the right number of comma-separated fields, or an unknown version.
    #[error(
        "malformed replay token: expected dmabuf3,<scenario>,<hash>,<strategy>,<seed>,<mode>,<schedule>,<check>; got '{0}'"
    )]
    Shape(String),
    /// A token of an earlier version (its schedules do not replay here).
    #[error(
        "replay token of an earlier version (dmabuf1): its schedule does not replay on this version; re-run check for a new token"
    )]
    Version,
    /// A field that does not parse.
    #[error("malformed replay token: bad {field} '{value}': {why}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The check field does not match the other fields: one was edited.
    #[error(
        "replay token check failed: its fields hash to {computed}, the token says {given} (a field was changed or the token was cut)"
    )]
    Check {
        /// Check computed from the fields.
        computed: String,
        /// Check in the token.
        given: String,
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
    /// The encoded schedule (canonical form).
    pub schedule: String,
}

impl ReplayToken {
    /// Everything before the check field.
    fn body(&self) -> String {
        format!(
            "{VERSION},{},{:016x},{},{},{},{}",
            self.scenario, self.hash, self.strategy, self.seed, self.mode, self.schedule
        )
    }

    /// The schedule, decoded (it was validated when the token was parsed;
    /// a token built by hand is checked here the same way).
    pub fn decode_schedule(&self) -> Result<Schedule, TokenError> {
        decode_strict(&self.schedule).map_err(|why| TokenError::Field {
            field: "schedule",
            value: self.schedule.clone(),
            why,
        })
    }
}

/// FNV-1a, 32 bit: a short check of a token's fields (not cryptographic:
/// it catches edits and truncation, not an adversary).
pub fn check_of(text: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

impl fmt::Display for ReplayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body();
        write!(f, "{body},{}", check_of(&body))
    }
}

/// Decodes a schedule accepting only what [`Schedule::encode`] writes.
fn decode_strict(s: &str) -> Result<Schedule, String> {
    let Some(body) = s.strip_prefix("1.") else {
        return Err("a schedule starts with '1.'".into());
    };
    let b = body.as_bytes();
    let mut choices: Vec<TaskId> = Vec::new();
    let mut last: Option<TaskId> = None;
    let mut i = 0;
    // Reads a decimal at `i`: (value, next index); no leading zeros.
    let number = |i: usize| -> Result<Option<(u64, usize)>, String> {
        let mut j = i;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == i {
            return Ok(None);
        }
        if b[i] == b'0' {
            return Err(format!("number with a leading zero at offset {}", i + 2));
        }
        let v = body[i..j]
            .parse::<u64>()
            .map_err(|_| format!("number too large at offset {}", i + 2))?;
        Ok(Some((v, j)))
    };
    while i < b.len() {
        let (id, next) = match b[i] {
            c @ b'a'..=b'z' => (TaskId::from(c - b'a'), i + 1),
            c @ b'A'..=b'Z' => (TaskId::from(c - b'A') + 26, i + 1),
            b'_' => {
                let Some((n, j)) = number(i + 1)? else {
                    return Err(format!("'_' without a task number at offset {}", i + 2));
                };
                if b.get(j) != Some(&b'_') {
                    return Err(format!("task number not closed by '_' at offset {}", j + 2));
                }
                let id = TaskId::try_from(n).map_err(|_| "task number too large".to_string())?;
                if id < 52 {
                    return Err(format!(
                        "task {id} written as _{id}_; the encoder writes it as a letter"
                    ));
                }
                (id, j + 1)
            }
            c => {
                return Err(format!(
                    "unexpected character {:?} at offset {}",
                    c as char,
                    i + 2
                ));
            }
        };
        if last == Some(id) {
            return Err(format!(
                "task {id} repeated at offset {}; the encoder writes a run as one letter and its count (e.g. z3, never zzz)",
                i + 2
            ));
        }
        let (count, next) = match number(next)? {
            None => (1, next),
            Some((c, _)) if c < 2 => {
                return Err(format!(
                    "repeat count {c} at offset {} (at least 2)",
                    next + 2
                ));
            }
            Some((c, j)) => (c, j),
        };
        let total = (choices.len() as u64).saturating_add(count);
        if total > MAX_DECISIONS as u64 {
            return Err(format!(
                "more than {MAX_DECISIONS} decisions (the checker's step limit)"
            ));
        }
        choices.extend(std::iter::repeat_n(id, count as usize));
        last = Some(id);
        i = next;
    }
    Ok(Schedule::new(choices))
}

impl FromStr for ReplayToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts: Vec<&str> = s.split(',').collect();
        if parts.first() == Some(&"dmabuf1") {
            return Err(TokenError::Version);
        }
        let legacy = match parts.first() {
            Some(&VERSION) if parts.len() == FIELDS.len() => false,
            Some(&VERSION_LEGACY) if parts.len() == FIELDS.len() - 1 => true,
            _ => return Err(TokenError::Shape(s.to_owned())),
        };
        let hash_text = parts.remove(2);
        let bad = |field: &'static str, value: &str, why: &str| TokenError::Field {
            field,
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let scenario = parts[1];
        if scenario.is_empty()
            || !scenario
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        {
            return Err(bad(
                "scenario",
                scenario,
                "a scenario name is letters, digits, '.', '-', '_' and '+' (a mix)",
            ));
        }
        let strategy = match parts[2] {
            "random" => StrategyKind::Random,
            "dfs" => StrategyKind::Dfs,
            "dpor" => StrategyKind::Dpor,
            p => match p.strip_prefix("pct").map(str::parse::<u32>) {
                Some(Ok(d)) if d >= 1 && !p[3..].starts_with('0') => StrategyKind::Pct(d),
                _ => {
                    return Err(bad(
                        "strategy",
                        p,
                        "random, dfs, dpor or pct<depth>, depth >= 1",
                    ));
                }
            },
        };
        if hash_text.len() != 16 || !hash_text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("hash", hash_text, "16 hex digits"));
        }
        let hash = u64::from_str_radix(hash_text, 16)
            .map_err(|_| bad("hash", hash_text, "16 hex digits"))?;
        let seed_text = parts[3];
        let seed = seed_text
            .parse::<u64>()
            .ok()
            .filter(|_| {
                seed_text.bytes().all(|c| c.is_ascii_digit())
                    && (seed_text == "0" || !seed_text.starts_with('0'))
            })
            .ok_or_else(|| {
                bad(
                    "seed",
                    seed_text,
                    "a decimal u64 without sign or leading zeros",
                )
            })?;
        let mode = match parts[4] {
            "normal" => RunMode::Normal,
            "stalled" => RunMode::Stalled,
            m => return Err(bad("mode", m, "normal or stalled")),
        };
        let schedule = parts[5];
        decode_strict(schedule).map_err(|why| bad("schedule", schedule, &why))?;
        let t = ReplayToken {
            scenario: scenario.to_owned(),
            hash,
            strategy,
            seed,
            mode,
            schedule: schedule.to_owned(),
        };
        if !legacy {
            let given = parts[6];
            let computed = check_of(&t.body());
            if given != computed {
                return Err(TokenError::Check {
                    computed,
                    given: given.to_owned(),
                });
            }
        }
        Ok(t)
    }
}

/// Whether `s` is a `dmabuf2` token (no check field).
pub fn is_legacy(s: &str) -> bool {
    s.trim().starts_with("dmabuf2,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReplayToken {
        ReplayToken {
            scenario: "matrix.v6-final.gpu".into(),
            hash: 0x0123_4567_89ab_cdef,
            strategy: StrategyKind::Pct(3),
            seed: 42,
            mode: RunMode::Stalled,
            schedule: "1.a16b2c".into(),
        }
    }

    #[test]
    fn token_round_trips_with_its_check() {
        let t = sample();
        let text = t.to_string();
        assert!(
            text.starts_with(
                "dmabuf3,matrix.v6-final.gpu,0123456789abcdef,pct3,42,stalled,1.a16b2c,"
            )
        );
        assert_eq!(text.parse::<ReplayToken>(), Ok(t));
    }

    #[test]
    fn an_edited_field_fails_the_check() {
        let text = sample().to_string();
        for (from, to) in [
            (",42,", ",43,"),
            (",stalled,", ",normal,"),
            ("1.a16b2c", "1.a16b2"),
            ("0123456789abcdef", "0123456789abcdee"),
        ] {
            let edited = text.replace(from, to);
            assert!(
                matches!(edited.parse::<ReplayToken>(), Err(TokenError::Check { .. })),
                "{edited}"
            );
        }
    }

    #[test]
    fn dmabuf2_tokens_without_check_are_read_and_dmabuf1_refused() {
        let t: ReplayToken =
            "dmabuf2,matrix.v6-final.gpu,0123456789abcdef,pct3,42,stalled,1.a16b2c"
                .parse()
                .unwrap();
        assert_eq!(t, sample());
        assert!(is_legacy("dmabuf2,a,0000000000000000,dfs,1,normal,1."));
        assert!(!is_legacy(&sample().to_string()));
        assert_eq!(
            "dmabuf1,a,dfs,1,normal,1.".parse::<ReplayToken>(),
            Err(TokenError::Version)
        );
    }

    #[test]
    fn schedules_decode_strictly() {
        let ok = |s: &str| decode_strict(s).map(|d| d.encode());
        assert_eq!(ok("1.a16b2c"), Ok("1.a16b2c".to_owned()));
        assert_eq!(ok("1.z3"), Ok("1.z3".to_owned()));
        assert_eq!(ok("1._52_2"), Ok("1._52_2".to_owned()));
        for bad in [
            "1.zzz",
            "1.aa",
            "1.a1",
            "1.a0",
            "1.a02",
            "1._3_",
            "1._52",
            "1.a-",
            "1.a b",
            "a16",
            "1.a4294967296",
            "1.a200001",
        ] {
            assert!(decode_strict(bad).is_err(), "{bad} must not decode");
        }
        for good in ["1.", "1.a", "1.ab", "1.a2b3a", "1.Z2_60_"] {
            assert_eq!(ok(good), Ok(good.to_owned()));
        }
    }

    #[test]
    fn malformed_tokens_are_errors_naming_the_field() {
        let field = |s: &str| match s.parse::<ReplayToken>() {
            Err(TokenError::Field { field, .. }) => field,
            other => panic!("{s}: {other:?}"),
        };
        let h = "0000000000000000";
        assert!(matches!(
            "x".parse::<ReplayToken>(),
            Err(TokenError::Shape(_))
        ));
        assert_eq!(field("dmabuf2,a,12345,dfs,1,normal,1."), "hash");
        assert_eq!(
            field(&format!("dmabuf2,a,{h},pct0,1,normal,1.")),
            "strategy"
        );
        assert_eq!(
            field(&format!("dmabuf2,a,{h},pct03,1,normal,1.")),
            "strategy"
        );
        assert_eq!(field(&format!("dmabuf2,a,{h},dfs,-1,normal,1.")), "seed");
        assert_eq!(field(&format!("dmabuf2,a,{h},dfs,+1,normal,1.")), "seed");
        assert_eq!(field(&format!("dmabuf2,a,{h},dfs,01,normal,1.")), "seed");
        assert_eq!(
            field(&format!("dmabuf2,a b,{h},dfs,1,normal,1.")),
            "scenario"
        );
        assert_eq!(field(&format!("dmabuf2,a,{h},dfs,1,sleepy,1.")), "mode");
        assert_eq!(
            field(&format!("dmabuf2,a,{h},dfs,1,normal,1.zzz")),
            "schedule"
        );
        assert_eq!(field(&format!("dmabuf2,a,{h},dfs,1,normal,")), "schedule");
    }
}
