//! Recorded schedules and their text form.
//!
//! A schedule is the list of tasks chosen at the decision points of one
//! execution (the scheduling points where more than one task could run).
//! Together with the program it selects exactly one interleaving.
//!
//! # Text form
//!
//! `1.` (format version) followed by runs. A run is a task id and an
//! optional decimal repeat count (absent means 1, never 0 or 1 when
//! written). Ids 0..=25 are `a`..`z`, ids 26..=51 are `A`..`Z`, larger ids
//! are written `_<decimal>_`. Every character is in `[0-9A-Za-z._]`, so a
//! token survives URLs, shells and file names unquoted.
//!
//! | schedule | token |
//! |---|---|
//! | (empty) | `1.` |
//! | 0 0 0 1 | `1.a3b` |
//! | 2 60 60 | `1.c_60_2` |

use super::TaskId;

/// The version prefix of the text form.
const VERSION: &str = "1.";

/// Why a schedule token could not be decoded, or why a replayed execution
/// did not follow its schedule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The token does not start with a known format version.
    #[error("schedule token {token:?} does not start with version prefix {VERSION:?}")]
    BadVersion {
        /// The token as given.
        token: String,
    },
    /// A character outside the alphabet, or a misplaced one.
    #[error("unexpected character {ch:?} at offset {offset} of schedule token")]
    BadChar {
        /// The character.
        ch: char,
        /// Its byte offset in the token.
        offset: usize,
    },
    /// A repeat count of 0 or 1 (1 is never written; 0 is meaningless).
    #[error("repeat count {count} at offset {offset} of schedule token (must be at least 2)")]
    BadCount {
        /// The count as written.
        count: u64,
        /// Its byte offset in the token.
        offset: usize,
    },
    /// A number that does not fit (task id or count).
    #[error("number at offset {offset} of schedule token is too large")]
    Overflow {
        /// Byte offset of the number.
        offset: usize,
    },
    /// Replay: the recorded task was not runnable at that decision.
    #[error(
        "replay diverged at decision {decision}: recorded task {expected} is not runnable (runnable: {runnable:?})"
    )]
    Diverged {
        /// Index of the decision.
        decision: usize,
        /// The task the schedule names.
        expected: TaskId,
        /// The tasks that were runnable.
        runnable: Vec<TaskId>,
    },
    /// Replay: the execution needed more decisions than were recorded.
    #[error("replay needed decision {decision} but the schedule has only {recorded}")]
    Exhausted {
        /// Index of the first missing decision.
        decision: usize,
        /// Length of the recorded schedule.
        recorded: usize,
    },
    /// Replay: the execution ended before using every recorded decision.
    #[error("execution ended after {used} of {recorded} recorded decisions")]
    Unconsumed {
        /// Decisions the execution made.
        used: usize,
        /// Length of the recorded schedule.
        recorded: usize,
    },
    /// DFS: replaying a prefix met a different set of runnable tasks, so the
    /// program is not deterministic under the scheduler.
    #[error(
        "nondeterministic program: at decision {decision} the runnable tasks were {found:?}, previously {expected:?}"
    )]
    Nondeterministic {
        /// Index of the decision.
        decision: usize,
        /// Runnable tasks seen by the earlier execution.
        expected: Vec<TaskId>,
        /// Runnable tasks seen now (empty: the execution ended before).
        found: Vec<TaskId>,
    },
}

/// The tasks chosen at each decision point of one execution.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Schedule {
    choices: Vec<TaskId>,
}

impl Schedule {
    /// A schedule from its choices.
    pub fn new(choices: Vec<TaskId>) -> Self {
        Self { choices }
    }

    /// The chosen task at each decision.
    pub fn choices(&self) -> &[TaskId] {
        &self.choices
    }

    /// Number of decisions.
    pub fn len(&self) -> usize {
        self.choices.len()
    }

    /// Whether no decision was made (a single-task run).
    pub fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    pub(super) fn push(&mut self, t: TaskId) {
        self.choices.push(t);
    }

    /// The compact text form (see the module documentation).
    pub fn encode(&self) -> String {
        let mut out = String::from(VERSION);
        let mut i = 0;
        while i < self.choices.len() {
            let id = self.choices[i];
            let run = self.choices[i..].iter().take_while(|&&c| c == id).count();
            match id {
                0..=25 => out.push((b'a' + id as u8) as char),
                26..=51 => out.push((b'A' + (id - 26) as u8) as char),
                _ => {
                    out.push('_');
                    out.push_str(&id.to_string());
                    out.push('_');
                }
            }
            if run > 1 {
                out.push_str(&run.to_string());
            }
            i += run;
        }
        out
    }

    /// Parses the text form produced by [`encode`](Self::encode).
    pub fn decode(token: &str) -> Result<Self, ScheduleError> {
        let Some(body) = token.strip_prefix(VERSION) else {
            return Err(ScheduleError::BadVersion {
                token: token.to_owned(),
            });
        };
        let base = VERSION.len();
        let bytes = body.as_bytes();
        let mut choices = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let id = match bytes[i] {
                c @ b'a'..=b'z' => {
                    i += 1;
                    (c - b'a') as TaskId
                }
                c @ b'A'..=b'Z' => {
                    i += 1;
                    (c - b'A') as TaskId + 26
                }
                b'_' => {
                    let (n, next) = number(bytes, i + 1, base)?;
                    let Some(n) = n else {
                        return Err(bad_char(body, i + 1, base));
                    };
                    if bytes.get(next) != Some(&b'_') {
                        return Err(bad_char(body, next, base));
                    }
                    i = next + 1;
                    TaskId::try_from(n).map_err(|_| ScheduleError::Overflow { offset: base + i })?
                }
                _ => return Err(bad_char(body, i, base)),
            };
            let (count, next) = number(bytes, i, base)?;
            let count = match count {
                None => 1,
                Some(c) if c < 2 => {
                    return Err(ScheduleError::BadCount {
                        count: c,
                        offset: base + i,
                    });
                }
                Some(c) => c,
            };
            if count > (1 << 32) {
                return Err(ScheduleError::Overflow { offset: base + i });
            }
            i = next;
            choices.extend(std::iter::repeat_n(id, count as usize));
        }
        Ok(Self { choices })
    }
}

/// Reads a decimal number at `i`; `None` when there is no digit there.
fn number(bytes: &[u8], mut i: usize, base: usize) -> Result<(Option<u64>, usize), ScheduleError> {
    let start = i;
    let mut v: u64 = 0;
    while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(ScheduleError::Overflow {
                offset: base + start,
            })?;
        i += 1;
    }
    Ok(((i > start).then_some(v), i))
}

fn bad_char(body: &str, i: usize, base: usize) -> ScheduleError {
    ScheduleError::BadChar {
        ch: body[i..].chars().next().unwrap_or('$'),
        offset: base + i,
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

impl std::str::FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_documented_examples() {
        assert_eq!(Schedule::new(vec![]).encode(), "1.");
        assert_eq!(Schedule::new(vec![0, 0, 0, 1]).encode(), "1.a3b");
        assert_eq!(Schedule::new(vec![2, 60, 60]).encode(), "1.c_60_2");
        assert_eq!(Schedule::new(vec![26, 51, 52]).encode(), "1.AZ_52_");
    }

    #[test]
    fn decode_inverts_encode() {
        let cases = [
            vec![],
            vec![0],
            vec![1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2],
            vec![25, 26, 51, 52, 1000, 1000, 3],
            (0..300).map(|i| i % 7).collect(),
        ];
        for c in cases {
            let s = Schedule::new(c.clone());
            let tok = s.encode();
            assert!(
                tok.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'),
                "{tok}"
            );
            assert_eq!(Schedule::decode(&tok).unwrap().choices(), &c[..]);
        }
    }

    #[test]
    fn decode_rejects_malformed_tokens_with_typed_errors() {
        assert!(matches!(
            Schedule::decode("a3b"),
            Err(ScheduleError::BadVersion { .. })
        ));
        assert!(matches!(
            Schedule::decode("1.a-b"),
            Err(ScheduleError::BadChar { ch: '-', offset: 3 })
        ));
        assert!(matches!(
            Schedule::decode("1.3"),
            Err(ScheduleError::BadChar { ch: '3', offset: 2 })
        ));
        assert!(matches!(
            Schedule::decode("1.a1"),
            Err(ScheduleError::BadCount { count: 1, .. })
        ));
        assert!(matches!(
            Schedule::decode("1.a0"),
            Err(ScheduleError::BadCount { count: 0, .. })
        ));
        assert!(matches!(
            Schedule::decode("1._12"),
            Err(ScheduleError::BadChar { .. })
        ));
        assert!(matches!(
            Schedule::decode("1.__"),
            Err(ScheduleError::BadChar { .. })
        ));
        assert!(matches!(
            Schedule::decode("1.a99999999999999999999999"),
            Err(ScheduleError::Overflow { .. })
        ));
        assert!(matches!(
            Schedule::decode("1.a99999999999"),
            Err(ScheduleError::Overflow { .. })
        ));
        assert_eq!(Schedule::decode("1.a9").unwrap().len(), 9);
    }
}
