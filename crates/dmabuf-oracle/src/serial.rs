//! The serial-console protocol between the probe and the harness, and its
//! parser.
//!
//! # Lines (each may be preceded by console noise; only the text from the
//! first `@@` on counts)
//!
//! | line | meaning |
//! |---|---|
//! | `@@INIT part=P` | `/init` runs |
//! | `@@MODULE-FAILED M` | `insmod M` failed |
//! | `@@VFIO device=B group=G driver=D` | the test device is bound |
//! | `@@BEGIN part=P release=R version=V` | the probe starts; `R` is `uname -r` |
//! | `@@C ID RET ERRNO EXTRA #CRC` | one case; `CRC` is FNV-1a 32 of `ID RET ERRNO EXTRA` |
//! | `@@FATAL what` | the probe could not run its part (kmod: `@@FATAL hang mode=M op=O ...` when an exporter operation did not return after the importer unmapped) |
//! | `@@END part=P cases=N` | the probe finished after `N` cases |
//! | `@@PROBE-EXIT part=P status=S` | the shell saw the probe exit with `S` |
//! | `kmodlog ...` (no `@@`) | the test importer's event log with timestamps and the durations of exporter operations, for people; ignored like console noise |
//!
//! # What a complete log is
//!
//! `@@BEGIN` of the right part, every case of [`Part::cases`] exactly once
//! with a valid checksum, no unknown case, `@@END` with the right count, and
//! no kernel panic. Anything else is a [`LogError`] naming what is missing:
//! a partial table is never returned.

use crate::cases::Part;
use std::collections::BTreeMap;
use std::fmt;

/// One case's observable result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The call's return value (`-1` on failure; for calls returning an fd,
    /// `0` on success).
    pub ret: i64,
    /// `0` or the errno's name (`EINVAL`).
    pub errno: String,
    /// The observable extra (fdinfo fields, names, poll bits), escaped as on
    /// the wire; `-` when there is none.
    pub extra: String,
}

impl Outcome {
    /// An outcome from an unescaped extra (what the model back end builds).
    pub fn new(ret: i64, errno: &str, extra: impl AsRef<[u8]>) -> Self {
        Outcome {
            ret,
            errno: errno.to_owned(),
            extra: escape(extra.as_ref()),
        }
    }
}

/// Escapes an extra the way the probe does: space, `%`, `#` and bytes
/// outside printable ASCII become `%XX`; empty becomes `-`.
pub fn escape(raw: &[u8]) -> String {
    if raw.is_empty() {
        return "-".into();
    }
    let mut s = String::with_capacity(raw.len());
    for &b in raw {
        if b <= 0x20 || b >= 0x7f || b == b'%' || b == b'#' {
            s.push_str(&format!("%{b:02X}"));
        } else {
            s.push(b as char);
        }
    }
    s
}

/// FNV-1a, 32 bits.
pub fn fnv1a32(s: &str) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// How the guest ended, as the boot runner saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootEnd {
    /// qemu exited by itself (the guest powered off), with this status.
    Exited(Option<i32>),
    /// qemu was killed after the per-boot limit.
    TimedOut {
        /// The limit, in seconds.
        secs: u64,
    },
}

/// One part's complete results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRun {
    /// The part.
    pub part: Part,
    /// `uname -r` in the guest.
    pub release: String,
    /// `uname -v` in the guest.
    pub version: String,
    /// Every case of the part.
    pub results: BTreeMap<String, Outcome>,
}

/// Why a log is not a complete run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogError {
    /// The kernel panicked.
    Panic {
        /// The part.
        part: Part,
        /// The panic line.
        line: String,
        /// The last case reported before it.
        last_case: Option<String>,
        /// Cases never reported.
        missing: Vec<String>,
    },
    /// The guest was killed at the time limit.
    Hang {
        /// The part.
        part: Part,
        /// The limit.
        secs: u64,
        /// The last thing seen (`@@` line or case).
        last_seen: String,
        /// Cases never reported.
        missing: Vec<String>,
    },
    /// The probe never started (no `@@BEGIN`).
    NeverStarted {
        /// The part.
        part: Part,
        /// The last lines of the console, for the reader.
        tail: Vec<String>,
    },
    /// The probe or `/init` gave up (`@@FATAL` or a failed module).
    Fatal {
        /// The part.
        part: Part,
        /// The line.
        line: String,
    },
    /// The probe exited without `@@END` (a crash or a signal).
    ProbeCrashed {
        /// The part.
        part: Part,
        /// The exit status the shell printed.
        status: String,
        /// The last case reported.
        last_case: Option<String>,
        /// Cases never reported.
        missing: Vec<String>,
    },
    /// The log stops before `@@END` with no exit seen: a cut serial log.
    Cut {
        /// The part.
        part: Part,
        /// The last case reported.
        last_case: Option<String>,
        /// Cases never reported.
        missing: Vec<String>,
    },
    /// A case line whose checksum or shape is wrong.
    Garbled {
        /// The part.
        part: Part,
        /// The line.
        line: String,
    },
    /// The probe reported a case the list does not have, or one twice.
    UnknownCase {
        /// The part.
        part: Part,
        /// The id.
        id: String,
        /// `true` for a duplicate, `false` for an unknown id.
        duplicate: bool,
    },
    /// `@@END` came but cases are missing or the count disagrees.
    Incomplete {
        /// The part.
        part: Part,
        /// What `@@END` said.
        end_count: usize,
        /// Cases never reported.
        missing: Vec<String>,
    },
    /// The framing names another part.
    WrongPart {
        /// Expected.
        part: Part,
        /// The line.
        line: String,
    },
}

fn list(v: &[String]) -> String {
    const SHOW: usize = 8;
    if v.len() <= SHOW {
        v.join(", ")
    } else {
        format!("{}, ... ({} in all)", v[..SHOW].join(", "), v.len())
    }
}

fn last(l: &Option<String>) -> &str {
    l.as_deref().unwrap_or("none")
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Panic {
                part,
                line,
                last_case,
                missing,
            } => write!(
                f,
                "part {}: the guest kernel panicked ({line}); last case reported: {}; {} cases missing: {}",
                part.name(),
                last(last_case),
                missing.len(),
                list(missing)
            ),
            LogError::Hang {
                part,
                secs,
                last_seen,
                missing,
            } => write!(
                f,
                "part {}: the guest hung and was killed after {secs} s; last seen: {last_seen}; {} cases missing: {}",
                part.name(),
                missing.len(),
                list(missing)
            ),
            LogError::NeverStarted { part, tail } => write!(
                f,
                "part {}: the probe never started (no @@BEGIN on the serial console); last console lines: {}",
                part.name(),
                if tail.is_empty() {
                    "(none)".to_owned()
                } else {
                    tail.join(" | ")
                }
            ),
            LogError::Fatal { part, line } => {
                write!(f, "part {}: the guest gave up: {line}", part.name())
            }
            LogError::ProbeCrashed {
                part,
                status,
                last_case,
                missing,
            } => write!(
                f,
                "part {}: the probe exited with status {status} before @@END; last case reported: {}; {} cases missing: {}",
                part.name(),
                last(last_case),
                missing.len(),
                list(missing)
            ),
            LogError::Cut {
                part,
                last_case,
                missing,
            } => write!(
                f,
                "part {}: the serial log is cut (no @@END and no probe exit); last case reported: {}; {} cases missing: {}",
                part.name(),
                last(last_case),
                missing.len(),
                list(missing)
            ),
            LogError::Garbled { part, line } => write!(
                f,
                "part {}: a case line is garbled (bad checksum or shape): {line}",
                part.name()
            ),
            LogError::UnknownCase {
                part,
                id,
                duplicate,
            } => write!(
                f,
                "part {}: the probe reported {} case {id}: the probe and the case list disagree",
                part.name(),
                if *duplicate {
                    "a duplicate"
                } else {
                    "an unknown"
                }
            ),
            LogError::Incomplete {
                part,
                end_count,
                missing,
            } => write!(
                f,
                "part {}: @@END after {end_count} cases but {} listed cases are missing: {}",
                part.name(),
                missing.len(),
                list(missing)
            ),
            LogError::WrongPart { part, line } => write!(
                f,
                "part {}: the guest ran another part: {line}",
                part.name()
            ),
        }
    }
}

impl std::error::Error for LogError {}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    // `version=` runs to the end of the line (uname -v has spaces).
    if key == "version" {
        return Some(rest.trim_end());
    }
    Some(rest.split_whitespace().next().unwrap_or(""))
}

fn parse_case(line: &str) -> Option<(String, Outcome)> {
    let body = line.strip_prefix("@@C ")?;
    let (payload, crc) = body.rsplit_once(" #")?;
    let crc = u32::from_str_radix(crc.trim_end(), 16).ok()?;
    if fnv1a32(payload) != crc {
        return None;
    }
    let mut it = payload.split(' ');
    let id = it.next()?;
    let ret = it.next()?.parse().ok()?;
    let errno = it.next()?;
    let extra = it.next()?;
    if it.next().is_some() || id.is_empty() || errno.is_empty() || extra.is_empty() {
        return None;
    }
    Some((
        id.to_owned(),
        Outcome {
            ret,
            errno: errno.to_owned(),
            extra: extra.to_owned(),
        },
    ))
}

/// Parses one boot's console output for `part`. Returns the complete run or
/// the first reason it is not complete.
pub fn parse(part: Part, log: &str, end: &BootEnd) -> Result<PartRun, LogError> {
    let mut begin: Option<(String, String)> = None;
    let mut results: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut last_case: Option<String> = None;
    let mut last_seen = String::from("nothing (no @@ line)");
    let mut end_count: Option<usize> = None;
    let mut exit_status: Option<String> = None;
    let mut panic: Option<String> = None;
    let mut tail: Vec<String> = Vec::new();
    let want = part.cases();
    let missing = |r: &BTreeMap<String, Outcome>| -> Vec<String> {
        want.iter()
            .filter(|id| !r.contains_key(**id))
            .map(|s| (*s).to_owned())
            .collect()
    };

    // A last line without its newline was cut mid-way: it is not evidence
    // of anything (a cut log is then reported as cut, not as garbled).
    let whole = match log.rfind('\n') {
        Some(i) => &log[..=i],
        None => "",
    };
    for raw in whole.lines() {
        let raw = raw.trim_end_matches('\r');
        if !raw.trim().is_empty() {
            tail.push(raw.trim().chars().take(200).collect());
            if tail.len() > 6 {
                tail.remove(0);
            }
        }
        if panic.is_none() && raw.contains("Kernel panic") {
            panic = Some(raw.trim().chars().take(200).collect());
        }
        let Some(at) = raw.find("@@") else { continue };
        let line = &raw[at..];
        if line.starts_with("@@C ") || line == "@@C" {
            let Some((id, o)) = parse_case(line) else {
                return Err(LogError::Garbled {
                    part,
                    line: line.to_owned(),
                });
            };
            if begin.is_none() || end_count.is_some() {
                return Err(LogError::Garbled {
                    part,
                    line: format!("{line} (outside @@BEGIN..@@END)"),
                });
            }
            if !want.contains(&id.as_str()) {
                return Err(LogError::UnknownCase {
                    part,
                    id,
                    duplicate: false,
                });
            }
            if results.insert(id.clone(), o).is_some() {
                return Err(LogError::UnknownCase {
                    part,
                    id,
                    duplicate: true,
                });
            }
            last_seen = format!("case {id}");
            last_case = Some(id);
            continue;
        }
        last_seen = line.to_owned();
        let word = line.split_whitespace().next().unwrap_or("");
        let part_ok = |l: &str| field(l, "part").is_none_or(|p| p == part.name());
        match word {
            "@@INIT" | "@@BEGIN" | "@@END" | "@@PROBE-EXIT" if !part_ok(line) => {
                return Err(LogError::WrongPart {
                    part,
                    line: line.to_owned(),
                });
            }
            "@@BEGIN" => {
                begin = Some((
                    field(line, "release").unwrap_or("").to_owned(),
                    field(line, "version").unwrap_or("").to_owned(),
                ));
            }
            "@@END" => {
                end_count = Some(
                    field(line, "cases")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(usize::MAX),
                );
            }
            "@@PROBE-EXIT" => {
                exit_status = Some(field(line, "status").unwrap_or("?").to_owned());
            }
            "@@FATAL" | "@@MODULE-FAILED" => {
                return Err(LogError::Fatal {
                    part,
                    line: line.to_owned(),
                });
            }
            _ => {}
        }
    }

    if let Some(line) = panic {
        return Err(LogError::Panic {
            part,
            line,
            last_case,
            missing: missing(&results),
        });
    }
    let complete = end_count.is_some() && exit_status.as_deref() == Some("0");
    if let (false, BootEnd::TimedOut { secs }) = (complete, end) {
        return Err(LogError::Hang {
            part,
            secs: *secs,
            last_seen,
            missing: missing(&results),
        });
    }
    let Some((release, version)) = begin else {
        return Err(LogError::NeverStarted { part, tail });
    };
    let Some(n) = end_count else {
        return Err(match exit_status {
            Some(status) => LogError::ProbeCrashed {
                part,
                status,
                last_case,
                missing: missing(&results),
            },
            None => LogError::Cut {
                part,
                last_case,
                missing: missing(&results),
            },
        });
    };
    let miss = missing(&results);
    if !miss.is_empty() || n != results.len() {
        return Err(LogError::Incomplete {
            part,
            end_count: n,
            missing: miss,
        });
    }
    if let Some(s) = exit_status.filter(|s| s != "0") {
        return Err(LogError::ProbeCrashed {
            part,
            status: s,
            last_case,
            missing: Vec::new(),
        });
    }
    Ok(PartRun {
        part,
        release,
        version,
        results,
    })
}

/// Formats one case line as the probe prints it (for tests and for
/// replaying a model result through the parser).
pub fn case_line(id: &str, o: &Outcome) -> String {
    let payload = format!("{id} {} {} {}", o.ret, o.errno, o.extra);
    format!("@@C {payload} #{:08x}", fnv1a32(&payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: BootEnd = BootEnd::Exited(Some(0));

    fn full_log(part: Part, cut_after: Option<usize>) -> String {
        let mut s = String::from("SeaBIOS\r\n\x1bc\x1b[?7l@@INIT part=");
        s.push_str(part.name());
        s.push_str(&format!(
            "\n@@BEGIN part={} release=7.2.13+deb14-amd64 version=#1 SMP PREEMPT_DYNAMIC Debian 7.2.13-1 (2026-10-28)\n",
            part.name()
        ));
        for (i, id) in part.cases().iter().enumerate() {
            if cut_after == Some(i) {
                return s;
            }
            s.push_str(&case_line(id, &Outcome::new(-1, "EINVAL", "k=v x")));
            s.push_str("\r\n");
        }
        s.push_str(&format!(
            "@@END part={} cases={}\n@@PROBE-EXIT part={} status=0\n[ 4.8] reboot: Restarting system\n",
            part.name(),
            part.cases().len(),
            part.name()
        ));
        s
    }

    #[test]
    fn a_complete_log_parses_with_release_and_every_case() {
        let r = parse(Part::Abi, &full_log(Part::Abi, None), &OK).unwrap();
        assert_eq!(r.release, "7.2.13+deb14-amd64");
        assert!(r.version.contains("Debian 7.2.13-1"));
        assert_eq!(r.results.len(), Part::Abi.cases().len());
        assert_eq!(r.results["sync.null"].extra, "k=v%20x");
        assert_eq!(r.results["sync.null"].errno, "EINVAL");
    }

    #[test]
    fn a_cut_log_names_the_last_case_and_the_missing_ones() {
        let e = parse(Part::Abi, &full_log(Part::Abi, Some(3)), &OK).unwrap_err();
        let LogError::Cut {
            last_case, missing, ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(last_case.as_deref(), Some(Part::Abi.cases()[2]));
        assert_eq!(missing.len(), Part::Abi.cases().len() - 3);
        assert!(e.to_string().contains("cut"), "{e}");
    }

    #[test]
    fn a_log_cut_inside_a_line_is_cut_not_garbled() {
        let log = full_log(Part::Abi, None);
        let at = log.find("@@C sync.flags_3").unwrap() + 12;
        let e = parse(Part::Abi, &log[..at], &OK).unwrap_err();
        assert!(
            matches!(&e, LogError::Cut { last_case: Some(l), .. } if l == "sync.flags_2"),
            "{e}"
        );
    }

    #[test]
    fn a_crashed_probe_is_not_a_cut_log() {
        let mut log = full_log(Part::Vfio, Some(5));
        log.push_str("@@PROBE-EXIT part=vfio status=139\n");
        let e = parse(Part::Vfio, &log, &OK).unwrap_err();
        assert!(
            matches!(&e, LogError::ProbeCrashed { status, missing, .. } if status == "139" && missing.len() == Part::Vfio.cases().len() - 5),
            "{e}"
        );
    }

    #[test]
    fn a_panic_wins_over_everything_else() {
        let mut log = full_log(Part::Abi, Some(10));
        log.push_str("[ 5.1] Kernel panic - not syncing: Attempted to kill init!\n");
        let e = parse(Part::Abi, &log, &BootEnd::TimedOut { secs: 120 }).unwrap_err();
        assert!(matches!(e, LogError::Panic { .. }), "{e}");
        assert!(e.to_string().contains("Attempted to kill init"));
    }

    #[test]
    fn a_hang_is_reported_with_the_limit_even_if_every_case_came() {
        let mut log = full_log(Part::Abi, None);
        log = log.replace("@@PROBE-EXIT part=abi status=0\n", "");
        let e = parse(Part::Abi, &log, &BootEnd::TimedOut { secs: 120 }).unwrap_err();
        assert!(matches!(&e, LogError::Hang { secs: 120, .. }), "{e}");
    }

    #[test]
    fn a_boot_that_never_reached_the_probe_says_so() {
        let e = parse(Part::Abi, "SeaBIOS\nBooting from ROM...\n", &OK).unwrap_err();
        assert!(matches!(e, LogError::NeverStarted { .. }), "{e}");
        assert!(e.to_string().contains("Booting from ROM"));
    }

    #[test]
    fn a_garbled_line_is_refused() {
        let log = full_log(Part::Abi, None).replacen("EINVAL", "EINVAl", 1);
        let e = parse(Part::Abi, &log, &OK).unwrap_err();
        assert!(matches!(e, LogError::Garbled { .. }), "{e}");
        // kernel output interleaved inside a line
        let log = full_log(Part::Abi, None).replacen(" -1 ", " -1[ 3.2] oops ", 1);
        assert!(matches!(
            parse(Part::Abi, &log, &OK),
            Err(LogError::Garbled { .. })
        ));
    }

    #[test]
    fn unknown_duplicate_and_missing_cases_are_refused() {
        let extra = case_line("no.such_case", &Outcome::new(0, "0", ""));
        let log = full_log(Part::Abi, None).replacen("@@END", &format!("{extra}\n@@END"), 1);
        assert!(matches!(
            parse(Part::Abi, &log, &OK),
            Err(LogError::UnknownCase {
                duplicate: false,
                ..
            })
        ));
        let dup = case_line("sync.null", &Outcome::new(0, "0", ""));
        let log = full_log(Part::Abi, None).replacen("@@END", &format!("{dup}\n@@END"), 1);
        assert!(matches!(
            parse(Part::Abi, &log, &OK),
            Err(LogError::UnknownCase {
                duplicate: true,
                ..
            })
        ));
        let line = case_line("sync.null", &Outcome::new(-1, "EINVAL", "k=v x"));
        let log = full_log(Part::Abi, None).replacen(&format!("{line}\r\n"), "", 1);
        let e = parse(Part::Abi, &log, &OK).unwrap_err();
        assert!(
            matches!(&e, LogError::Incomplete { missing, .. } if missing == &["sync.null".to_owned()]),
            "{e}"
        );
    }

    #[test]
    fn fatal_lines_and_wrong_parts_stop_the_run() {
        let log = "@@INIT part=vfio\n@@FATAL no-edu-device\n";
        assert!(matches!(
            parse(Part::Vfio, log, &OK),
            Err(LogError::Fatal { .. })
        ));
        let log = full_log(Part::Abi, None);
        assert!(matches!(
            parse(Part::Vfio, &log, &OK),
            Err(LogError::WrongPart { .. })
        ));
    }

    #[test]
    fn a_kmod_hang_ends_the_run_with_its_mode_and_operation() {
        // The probe's watchdog line when an exporter operation outlives the
        // importer's unmap; the kmodlog lines beside the cases are ignored.
        let mut log = full_log(Part::Kmod, Some(40));
        log.push_str(
            "kmodlog lying reset blocked for 2000 ms: the importer is told to unmap (ret 0 0)\n",
        );
        log.push_str("@@FATAL hang mode=lying op=reset: the exporter did not return 15000 ms after the importer unmapped\n");
        match parse(Part::Kmod, &log, &OK) {
            Err(LogError::Fatal { part, line }) => {
                assert_eq!(part, Part::Kmod);
                assert!(line.contains("mode=lying op=reset"), "{line}");
            }
            other => panic!("{other:?}"),
        }
        let mut log = full_log(Part::Kmod, None);
        log = log.replace("@@END", "kmodlog odp 2327 inv 0\n@@END");
        let r = parse(Part::Kmod, &log, &OK).unwrap();
        assert_eq!(r.results.len(), Part::Kmod.cases().len());
    }

    #[test]
    fn escaping_matches_the_probe() {
        assert_eq!(escape(b""), "-");
        assert_eq!(escape(b"a b\t%#\xff"), "a%20b%09%25%23%FF");
        // FNV-1a test vector
        assert_eq!(fnv1a32("a"), 0xe40c292c);
    }
}
