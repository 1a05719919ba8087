//! `dmabuf-oracle [--json] [--part abi|vfio|kmod|all] [--no-setup] [--timeout SECS]
//! [--cache DIR] [--log-abi FILE] [--log-vfio FILE] [--log-kmod FILE] [--min-agreed N]`
//!
//! Runs `setup.sh` (host packages, Debian sid's kernel, probe, initramfs),
//! boots each part under qemu, parses the serial console, runs the same
//! cases on the project's ABI layer and prints the agreement table, ending
//! with `agreed: N/M cases`.
//!
//! Exit status: 0 the run is complete (and at least `--min-agreed` cases
//! agree); 1 the run is incomplete (hang, panic, crash, cut log, model
//! failure) or fewer than `--min-agreed` agree; 2 bad usage; 3 SKIPPED (the
//! kernel package cannot be downloaded), never reported as passed.

use dmabuf_oracle::cases::Part;
use dmabuf_oracle::report::Report;
use dmabuf_oracle::serial::{self, BootEnd, PartRun};
use dmabuf_oracle::{kmod, model, qemu};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

struct Opts {
    json: bool,
    parts: Vec<Part>,
    setup: bool,
    timeout: u64,
    cache: PathBuf,
    logs: BTreeMap<Part, PathBuf>,
    min_agreed: Option<usize>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "dmabuf-oracle: {msg}\nusage: dmabuf-oracle [--json] [--part abi|vfio|kmod|all] [--no-setup] [--timeout SECS] [--cache DIR] [--log-abi FILE] [--log-vfio FILE] [--log-kmod FILE] [--min-agreed N]"
    );
    ExitCode::from(2)
}

fn default_cache() -> PathBuf {
    if let Some(c) = std::env::var_os("ORACLE_CACHE") {
        return PathBuf::from(c);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("oracle")
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        json: false,
        parts: Part::ALL.to_vec(),
        setup: true,
        timeout: 120,
        cache: default_cache(),
        logs: BTreeMap::new(),
        min_agreed: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--json" => o.json = true,
            "--no-setup" => o.setup = false,
            "--part" => {
                o.parts = match val("--part")?.as_str() {
                    "abi" => vec![Part::Abi],
                    "vfio" => vec![Part::Vfio],
                    "kmod" => vec![Part::Kmod],
                    "all" => Part::ALL.to_vec(),
                    p => return Err(format!("unknown part {p}")),
                }
            }
            "--timeout" => {
                o.timeout = val("--timeout")?
                    .parse()
                    .map_err(|_| "--timeout takes seconds".to_owned())?
            }
            "--cache" => o.cache = PathBuf::from(val("--cache")?),
            "--log-abi" => {
                o.logs.insert(Part::Abi, PathBuf::from(val("--log-abi")?));
            }
            "--log-vfio" => {
                o.logs.insert(Part::Vfio, PathBuf::from(val("--log-vfio")?));
            }
            "--log-kmod" => {
                o.logs.insert(Part::Kmod, PathBuf::from(val("--log-kmod")?));
            }
            "--min-agreed" => {
                o.min_agreed = Some(
                    val("--min-agreed")?
                        .parse()
                        .map_err(|_| "--min-agreed takes a number".to_owned())?,
                )
            }
            "-h" | "--help" => return Err("help".into()),
            x => return Err(format!("unknown argument {x}")),
        }
    }
    Ok(o)
}

fn say(json: bool, status: &str, msg: &str) {
    if json {
        println!("{}", serde_json::json!({"status": status, "reason": msg}));
    } else {
        println!("oracle {}: {msg}", status.to_uppercase());
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let need_boot = o.parts.iter().any(|p| !o.logs.contains_key(p));
    if o.setup && need_boot {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("setup.sh");
        let st = Command::new("bash")
            .arg(&script)
            .env("ORACLE_CACHE", &o.cache)
            .stdout(std::process::Stdio::null())
            .status();
        match st.map(|s| s.code()) {
            Ok(Some(0)) => {}
            Ok(Some(3)) => {
                let why = std::fs::read_to_string(o.cache.join("status"))
                    .unwrap_or_else(|_| "the kernel package could not be downloaded".into());
                say(o.json, "skipped", why.trim());
                return ExitCode::from(3);
            }
            Ok(c) => {
                let why = std::fs::read_to_string(o.cache.join("status")).unwrap_or_default();
                say(
                    o.json,
                    "failed",
                    &format!("setup.sh exited with {c:?}: {}", why.trim()),
                );
                return ExitCode::from(1);
            }
            Err(e) => {
                say(o.json, "failed", &format!("running setup.sh: {e}"));
                return ExitCode::from(1);
            }
        }
    }
    let mut runs: Vec<PartRun> = Vec::new();
    for &part in &o.parts {
        let (log, end) = match o.logs.get(&part) {
            Some(f) => match std::fs::read(f) {
                Ok(b) => (
                    String::from_utf8_lossy(&b).into_owned(),
                    BootEnd::Exited(Some(0)),
                ),
                Err(e) => {
                    say(o.json, "failed", &format!("{}: {e}", f.display()));
                    return ExitCode::from(1);
                }
            },
            None => match qemu::boot(part, &o.cache, Duration::from_secs(o.timeout)) {
                Ok(b) => {
                    eprintln!(
                        "oracle: part {} booted in {:.1} s ({:?})",
                        part.name(),
                        b.elapsed.as_secs_f64(),
                        b.end
                    );
                    (b.log, b.end)
                }
                Err(e) => {
                    say(o.json, "failed", &format!("part {}: {e}", part.name()));
                    return ExitCode::from(1);
                }
            },
        };
        match serial::parse(part, &log, &end) {
            Ok(r) => runs.push(r),
            Err(e) => {
                say(o.json, "incomplete", &format!("{e}; no table is printed"));
                return ExitCode::from(1);
            }
        }
    }
    let mut ours = BTreeMap::new();
    for &part in &o.parts {
        let r = match part {
            Part::Abi => model::run_abi(),
            Part::Vfio => model::run_vfio(),
            Part::Kmod => kmod::run_kmod(),
        };
        match r {
            Ok(m) => {
                ours.insert(part, m);
            }
            Err(e) => {
                say(
                    o.json,
                    "failed",
                    &format!("our back end could not run part {}: {e}", part.name()),
                );
                return ExitCode::from(1);
            }
        }
    }
    let rep = Report::build(&runs, &ours);
    // The kmod part's observations per mode, the kernel's beside ours.
    let kmod_pair = runs
        .iter()
        .find(|r| r.part == Part::Kmod)
        .zip(ours.get(&Part::Kmod));
    if o.json {
        let mut j = rep.json();
        if let (Some((k, m)), Some(obj)) = (kmod_pair, j.as_object_mut()) {
            obj.insert(
                "kmod-observations".into(),
                kmod::agreement_json(&k.results, m),
            );
        }
        println!("{j}");
    } else {
        print!("{}", rep.table());
        if let Some((k, m)) = kmod_pair {
            print!("{}", kmod::agreement_table(&k.results, m));
        }
    }
    let (n, m) = rep.totals();
    if let Some(min) = o.min_agreed
        && n < min
    {
        eprintln!("oracle: only {n}/{m} cases agree, fewer than --min-agreed {min}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
