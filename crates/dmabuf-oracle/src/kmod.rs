//! Our back end of the `kmod` part: the protocol files of `protocols/kmod/`
//! run by the scenario crate's script interpreter
//! (`dmabuf_scenario::script`), against the exporter the files name
//! (`v6-final`, the merged sequence), their records turned into the probe's
//! cases.
//!
//! # Contract
//!
//! [`run_kmod`] answers every case of [`Part::Kmod`](crate::cases::Part)
//! (a missing one is a disagreement in the report, never a skip) or fails
//! with a message naming the file or step. The importer behaviour of each
//! case comes from a file's `[[importer]]` fields, not from Rust: the case
//! prefix `kmod.<mode>` is the mode those fields select
//! (`KmodMode::of`), so a file that expresses another behaviour than its
//! name says answers under another prefix and its cases go missing.
//!
//! | kernel (probe.c) | here |
//! |---|---|
//! | `kmod_part`, one per mode | `kmod-<mode>.toml`: script `attach, map, device-reset, map, decode-off, map, decode-on, map, close, map, detach` = [`KMOD_STEPS`] |
//! | `kmod_bad`, state errors | `kmod-bad.toml`, `kmod-bad-close.toml` |
//! | `kmod_bad`, argument errors (NULL, unknown mode, not a dma-buf, closed fd, absent device, unknown ioctl, a marker above 255) | [`argument_checks`]: the module's ioctl decoding, which no protocol file can express (a file names behaviours, not pointers or fds) |
//!
//! An importer step's case is `ret errno events`; an exporter step's extra
//! is `blocked=B,ev=events` (the probe's format: `a+b:ERRNO`, `none`).
//!
//! [`observations`] reduces a part's cases, kernel's or ours, to the five
//! observations per mode that [`agreement_table`] sets side by side.

use crate::cases::{KMOD_MODES, KMOD_STEPS};
use crate::exporters::Exporters;
use crate::model::{errno_name, feat};
use crate::serial::Outcome;
use dmabuf_core::AsErrno;
use dmabuf_core::errno;
use dmabuf_core::revoke::Protocol;
use dmabuf_core::uapi::Process;
use dmabuf_scenario::builtin::{Library, ScriptScenario};
use dmabuf_scenario::script::{self, Event, ScriptRun, ScriptStep, StepRecord};
use std::collections::BTreeMap;

/// The protocol files of the `kmod` part (path, text), shipped in the
/// binary.
pub const FILES: &[(&str, &str)] = &[
    (
        "protocols/kmod/kmod-static.toml",
        include_str!("../../../protocols/kmod/kmod-static.toml"),
    ),
    (
        "protocols/kmod/kmod-odp.toml",
        include_str!("../../../protocols/kmod/kmod-odp.toml"),
    ),
    (
        "protocols/kmod/kmod-gpu.toml",
        include_str!("../../../protocols/kmod/kmod-gpu.toml"),
    ),
    (
        "protocols/kmod/kmod-pinned.toml",
        include_str!("../../../protocols/kmod/kmod-pinned.toml"),
    ),
    (
        "protocols/kmod/kmod-lying.toml",
        include_str!("../../../protocols/kmod/kmod-lying.toml"),
    ),
    (
        "protocols/kmod/kmod-lazy.toml",
        include_str!("../../../protocols/kmod/kmod-lazy.toml"),
    ),
    (
        "protocols/kmod/kmod-cache-lazy.toml",
        include_str!("../../../protocols/kmod/kmod-cache-lazy.toml"),
    ),
    (
        "protocols/kmod/kmod-cache-revalidate.toml",
        include_str!("../../../protocols/kmod/kmod-cache-revalidate.toml"),
    ),
    (
        "protocols/kmod/kmod-bad.toml",
        include_str!("../../../protocols/kmod/kmod-bad.toml"),
    ),
    (
        "protocols/kmod/kmod-bad-close.toml",
        include_str!("../../../protocols/kmod/kmod-bad-close.toml"),
    ),
];

/// The script of one mode's file, as the probe's `kmod_part`.
pub const MODE_SCRIPT: &[ScriptStep] = &[
    ScriptStep::Attach,
    ScriptStep::Map,
    ScriptStep::DeviceReset,
    ScriptStep::Map,
    ScriptStep::DecodeOff,
    ScriptStep::Map,
    ScriptStep::DecodeOn,
    ScriptStep::Map,
    ScriptStep::Close,
    ScriptStep::Map,
    ScriptStep::Detach,
];

/// The cases of `kmod-bad.toml`'s steps, in order.
pub const BAD_SCRIPT_CASES: &[&str] = &[
    "kmod.bad.map_unattached",
    "kmod.bad.unmap_unattached",
    "kmod.bad.detach_unattached",
    "kmod.bad.attach",
    "kmod.bad.attach_twice",
    "kmod.bad.unmap_unmapped",
    "kmod.bad.map",
    "kmod.bad.map_again",
    "kmod.bad.unmap",
    "kmod.bad.double_unmap",
    "kmod.bad.unpin_unpinned",
    "kmod.bad.pin",
    "kmod.bad.pin_twice",
    "kmod.bad.unpin",
    "kmod.bad.detach",
    "kmod.bad.map_after_detach",
];

/// The library: the built-in files (for `v6-final`) and [`FILES`].
pub fn library() -> Result<Library, String> {
    let mut lib = Library::builtin().map_err(|e| e.to_string())?;
    for (path, text) in FILES {
        lib.add_text(path, text).map_err(|e| e.to_string())?;
    }
    Ok(lib)
}

/// The resolved script scenario of each of [`FILES`], in order.
pub fn scripts() -> Result<Vec<ScriptScenario>, String> {
    let lib = library()?;
    lib.scenarios
        .iter()
        .filter(|(s, ..)| s.script.is_some())
        .map(|(s, _, own)| lib.resolve_script(s, own).map_err(|e| e.to_string()))
        .collect()
}

/// The probe's format of an event list.
pub fn events_text(ev: &[Event]) -> String {
    if ev.is_empty() {
        return "none".into();
    }
    ev.iter()
        .map(|e| {
            if e.errno == 0 {
                e.name.to_owned()
            } else {
                format!("{}:{}", e.name, errno_name(e.errno))
            }
        })
        .collect::<Vec<_>>()
        .join("+")
}

fn outcome(r: &StepRecord, extra: String) -> Outcome {
    match r.result {
        Ok(v) => Outcome::new(v, "0", extra),
        Err(e) => Outcome::new(-1, &errno_name(e), extra),
    }
}

/// A step's case as the probe prints it.
pub fn step_outcome(r: &StepRecord) -> Outcome {
    let ev = events_text(&r.events);
    let extra = match r.blocked {
        Some(b) => format!("blocked={},ev={ev}", u8::from(b)),
        None => ev,
    };
    outcome(r, extra)
}

/// The cases of one mode's run (`kmod.<mode>.<step>`).
pub fn mode_cases(run: &ScriptRun) -> Result<BTreeMap<String, Outcome>, String> {
    let got: Vec<ScriptStep> = run.steps.iter().map(|r| r.step).collect();
    if got != MODE_SCRIPT {
        return Err(format!(
            "mode {}: the script is not the probe's kmod_part ({} steps)",
            run.mode.name(),
            got.len()
        ));
    }
    Ok(KMOD_STEPS
        .iter()
        .zip(&run.steps)
        .map(|(id, r)| (format!("kmod.{}.{id}", run.mode.name()), step_outcome(r)))
        .collect())
}

const PAGE: u64 = 4096;
const GET_DMA_BUF: u32 = (1 << 16) | 11;
const O_RDWR_CLOEXEC: u32 = 0o2 | 0o2000000;
/// The module's mode numbers end here (`DTI_MODE_MAX`).
const MODES: u32 = 8;

/// `DTI_ATTACH`'s argument checks, in the module's order, before any
/// importer state: a NULL argument (`EFAULT`), a mode out of range
/// (`EINVAL`), an fd that is not a dma-buf (`dma_buf_get`: `EBADF`,
/// `EINVAL`), a PCI location with no device (`ENODEV`).
pub fn attach_arguments(
    proc: &Process,
    arg: Option<(i32, u32, &str)>,
    devices: &[&str],
) -> Result<(), i32> {
    let (fd, mode, dev) = arg.ok_or(errno::EFAULT.get())?;
    if mode >= MODES {
        return Err(errno::EINVAL.get());
    }
    proc.dma_buf_get(fd).map_err(|e| e.errno().get())?;
    if !devices.contains(&dev) {
        return Err(errno::ENODEV.get());
    }
    Ok(())
}

/// probe.c `kmod_bad`, the argument errors: the module's ioctl decoding.
pub fn argument_checks(protocol: &Protocol) -> Result<BTreeMap<String, Outcome>, String> {
    let ex = Exporters::new()?;
    let vf = ex.vfio_with(protocol.clone())?;
    let proc = Process::new(1);
    let p = &*proc;
    let b = vf
        .feature(
            p,
            &feat(GET_DMA_BUF, 0, O_RDWR_CLOEXEC, 0, 1, &[(0, PAGE)], 0),
        )
        .map_err(|e| format!("exporting BAR0: {}", errno_name(e.get())))?;
    // A sync_file of the buffer: an fd that is not a dma-buf.
    let mut sfa = [0u8; 8];
    sfa[..4].copy_from_slice(&3u32.to_le_bytes());
    p.ioctl_buf(
        b,
        dmabuf_core::uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
        &mut sfa,
    )
    .map_err(|e| format!("export sync_file: {}", errno_name(e.errno().get())))?;
    let sf = i32::from_le_bytes([sfa[4], sfa[5], sfa[6], sfa[7]]);
    let devs = [script::DEVICE, "vgem"];
    let dev = script::DEVICE;
    let mut o = BTreeMap::new();
    let mut put = |id: &str, r: Result<(), i32>| {
        let oc = match r {
            Ok(()) => Outcome::new(0, "0", "-"),
            Err(e) => Outcome::new(-1, &errno_name(e), "-"),
        };
        o.insert(id.to_owned(), oc);
    };
    put(
        "kmod.bad.unknown_mode",
        attach_arguments(p, Some((b, 99, dev)), &devs),
    );
    put(
        "kmod.bad.not_dmabuf",
        attach_arguments(p, Some((sf, 1, dev)), &devs),
    );
    put(
        "kmod.bad.closed_fd",
        attach_arguments(p, Some((-1, 1, dev)), &devs),
    );
    put(
        "kmod.bad.no_pci_device",
        attach_arguments(p, Some((b, 1, "absent")), &devs),
    );
    put("kmod.bad.null_argument", attach_arguments(p, None, &devs));
    // The switch's default; DTI_MARK takes a byte.
    put("kmod.bad.unknown_ioctl", Err(errno::ENOTTY.get()));
    put("kmod.bad.mark_256", Err(errno::EINVAL.get()));
    let _ = p.close(sf);
    let _ = p.close(b);
    Ok(o)
}

/// Runs the `kmod` part on our back end: the files with the exporter they
/// name.
pub fn run_kmod() -> Result<BTreeMap<String, Outcome>, String> {
    run_kmod_with(None)
}

/// Runs the `kmod` part, with the files' exporter replaced by `protocol`
/// when given (the tests show that the comparison tells protocols apart).
pub fn run_kmod_with(protocol: Option<&Protocol>) -> Result<BTreeMap<String, Outcome>, String> {
    let scripts = scripts()?;
    let merged = match (protocol, scripts.first()) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.protocol.clone(),
        (None, None) => return Err("no kmod protocol file".into()),
    };
    let mut o = BTreeMap::new();
    o.insert(
        "kmod.setup".to_owned(),
        Outcome::new(0, "0", "container=open,group=open,importer=open"),
    );
    o.extend(argument_checks(&merged)?);
    for s in &scripts {
        let p = protocol.unwrap_or(&s.protocol);
        let run = script::run_script(p, &s.importer, &s.steps)
            .map_err(|e| format!("{} ({}): {e}", s.name, s.origin))?;
        match s.name.as_str() {
            "kmod-bad" => {
                if run.steps.len() != BAD_SCRIPT_CASES.len() {
                    return Err(format!(
                        "{}: {} steps, the probe's kmod_bad has {}",
                        s.origin,
                        run.steps.len(),
                        BAD_SCRIPT_CASES.len()
                    ));
                }
                for (id, r) in BAD_SCRIPT_CASES.iter().zip(&run.steps) {
                    o.insert((*id).to_owned(), outcome(r, "-".into()));
                }
            }
            "kmod-bad-close" => {
                let r = run
                    .steps
                    .last()
                    .ok_or_else(|| format!("{}: no step", s.origin))?;
                o.insert("kmod.bad.close_mapped".to_owned(), outcome(r, "-".into()));
            }
            _ => o.extend(mode_cases(&run)?),
        }
    }
    Ok(o)
}

/// The five observations of one mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observations {
    /// `admitted` or the attach errno.
    pub attach: String,
    /// The map errnos while revoked (decode off, after close).
    pub map_while_revoked: String,
    /// Per revoking step (reset, decode off, close): `returned` or
    /// `blocked`.
    pub revoke: String,
    /// The invalidates and unmaps of the exporter steps, in order (reset,
    /// decode off, decode on, close).
    pub invalidates: String,
    /// The map errnos after each un-revoke (reset, decode on).
    pub remap: String,
}

fn obs_of(cases: &BTreeMap<String, Outcome>, mode: &str) -> Option<Observations> {
    let c = |step: &str| cases.get(&format!("kmod.{mode}.{step}"));
    let attach = c("attach")?;
    let errno = |o: &Outcome| {
        if o.ret == 0 {
            "0".to_owned()
        } else {
            o.errno.clone()
        }
    };
    let blocked = |step: &str| -> Option<&'static str> {
        Some(if c(step)?.extra.starts_with("blocked=1") {
            "blocked"
        } else {
            "returned"
        })
    };
    let ev = |step: &str| -> Option<String> {
        let e = c(step)?.extra.split_once(",ev=")?.1.to_owned();
        // Invalidates and unmaps only: the order the table is about.
        let kept: Vec<&str> = e
            .split('+')
            .filter(|x| x.starts_with("inv") || x.starts_with("unmap"))
            .collect();
        Some(if kept.is_empty() {
            "-".into()
        } else {
            kept.join("+")
        })
    };
    Some(Observations {
        attach: if attach.ret == 0 {
            "admitted".into()
        } else {
            attach.errno.clone()
        },
        map_while_revoked: format!(
            "{}/{}",
            errno(c("map_while_off")?),
            errno(c("map_after_close")?)
        ),
        revoke: format!(
            "{}/{}/{}",
            blocked("reset")?,
            blocked("memory_off")?,
            blocked("close")?
        ),
        invalidates: format!(
            "{} | {} | {} | {}",
            ev("reset")?,
            ev("memory_off")?,
            ev("memory_on")?,
            ev("close")?
        ),
        remap: format!(
            "{}/{}",
            errno(c("map_after_reset")?),
            errno(c("map_after_on")?)
        ),
    })
}

/// The observations per mode of a part's cases (a mode with a case
/// missing is left out).
pub fn observations(cases: &BTreeMap<String, Outcome>) -> BTreeMap<&'static str, Observations> {
    KMOD_MODES
        .iter()
        .filter_map(|m| obs_of(cases, m).map(|o| (*m, o)))
        .collect()
}

/// One cell of the agreement table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgreementRow {
    /// The mode.
    pub mode: &'static str,
    /// The observation (`attach`, `map while revoked`, `revoke`,
    /// `invalidates`, `re-map after un-revoke`).
    pub what: &'static str,
    /// The kernel's.
    pub kernel: String,
    /// Ours (`None`: a case of ours is missing).
    pub ours: Option<String>,
}

impl AgreementRow {
    /// Whether ours is the kernel's.
    pub fn agreed(&self) -> bool {
        self.ours.as_deref() == Some(self.kernel.as_str())
    }
}

/// The cells of the agreement table, for every mode the kernel's cases
/// Reads one of the five observations compared per mode.
type ObservationField = fn(&Observations) -> &String;

/// answer.
pub fn agreement_rows(
    kernel: &BTreeMap<String, Outcome>,
    ours: &BTreeMap<String, Outcome>,
) -> Vec<AgreementRow> {
    let k = observations(kernel);
    let o = observations(ours);
    let mut rows = Vec::new();
    for mode in KMOD_MODES {
        let Some(kk) = k.get(mode) else {
            continue;
        };
        let oo = o.get(mode);
        let cells: [(&'static str, ObservationField); 5] = [
            ("attach", |x| &x.attach),
            ("map while revoked", |x| &x.map_while_revoked),
            ("revoke", |x| &x.revoke),
            ("invalidates", |x| &x.invalidates),
            ("re-map after un-revoke", |x| &x.remap),
        ];
        for (what, f) in cells {
            rows.push(AgreementRow {
                mode,
                what,
                kernel: f(kk).clone(),
                ours: oo.map(|x| f(x).clone()),
            });
        }
    }
    rows
}

/// The agreement table as text: per mode and observation, the kernel's
/// beside ours, `=` when they agree and `≠` when not; the last line counts
/// the cells that agree.
pub fn agreement_table(
    kernel: &BTreeMap<String, Outcome>,
    ours: &BTreeMap<String, Outcome>,
) -> String {
    let rows = agreement_rows(kernel, ours);
    let mut out = format!(
        "kmod observations: the real kernel's beside ours (protocols/kmod/)\n{:<17} | {:<22} | {:<44} | ours\n",
        "mode", "observation", "kernel"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<17} | {:<22} | {:<44} | {} {}\n",
            r.mode,
            r.what,
            r.kernel,
            if r.agreed() { "=" } else { "≠" },
            r.ours.as_deref().unwrap_or("(missing)")
        ));
    }
    let n = rows.iter().filter(|r| r.agreed()).count();
    out.push_str(&format!("kmod observations agreed: {n}/{}\n", rows.len()));
    out
}

/// The agreement table as JSON (kebab-case keys).
pub fn agreement_json(
    kernel: &BTreeMap<String, Outcome>,
    ours: &BTreeMap<String, Outcome>,
) -> serde_json::Value {
    let rows = agreement_rows(kernel, ours);
    serde_json::json!({
        "agreed": rows.iter().filter(|r| r.agreed()).count(),
        "total": rows.len(),
        "rows": rows.iter().map(|r| serde_json::json!({
            "mode": r.mode,
            "observation": r.what,
            "kernel": r.kernel,
            "ours": r.ours,
            "agreed": r.agreed(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::Part;
    use crate::report::Report;
    use crate::serial::{self, BootEnd};
    use dmabuf_scenario::script::KmodMode;

    const KERNEL_LOG: &str = include_str!("../tests/fixtures/serial-kmod-7.2.13.log");
    const TWIN: &str = include_str!("../tests/fixtures/twin-kmod.txt");

    fn kernel() -> BTreeMap<String, Outcome> {
        serial::parse(Part::Kmod, KERNEL_LOG, &BootEnd::Exited(Some(0)))
            .unwrap()
            .results
    }

    /// `id ret errno extra` lines (extra may be empty: never here).
    fn twin() -> BTreeMap<String, Outcome> {
        TWIN.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let id = it.next().unwrap().to_owned();
                let ret: i64 = it.next().unwrap().parse().unwrap();
                let errno = it.next().unwrap();
                let extra = it.next().unwrap();
                (id, Outcome::new(ret, errno, extra))
            })
            .collect()
    }

    #[test]
    fn every_file_parses_and_selects_the_mode_its_name_says() {
        let s = scripts().unwrap();
        let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names.len(), FILES.len(), "{names:?}");
        let mut modes = Vec::new();
        for x in &s {
            assert_eq!(x.exporter, "v6-final", "{}", x.name);
            let m = KmodMode::of(&x.importer).unwrap();
            if x.name.starts_with("kmod-bad") {
                assert_eq!(m, KmodMode::Odp, "the probe's kmod_bad attaches mode 1");
                continue;
            }
            assert_eq!(x.name, format!("kmod-{}", m.name().replace('_', "-")));
            assert_eq!(x.steps, MODE_SCRIPT, "{}", x.name);
            modes.push(m.name());
        }
        assert_eq!(modes, KMOD_MODES, "one file per mode, in the probe's order");
    }

    #[test]
    fn the_files_answer_what_the_twin_answered_and_agree_with_the_kernel() {
        // One run (six exporter steps wait for the 2 s watchdog).
        let ours = run_kmod().unwrap();
        let twin = twin();
        let k = kernel();
        let mut want: Vec<&str> = Part::Kmod.cases().to_vec();
        want.sort_unstable();
        assert_eq!(ours.keys().map(String::as_str).collect::<Vec<_>>(), want);
        for (id, t) in &twin {
            if id == "kmod.gpu.close" {
                // The twin's capture lost the race between the worker's
                // delay and the probe's steps on a loaded host (see
                // kmod-gpu.toml); the kernel and the file say otherwise.
                assert_eq!(t.extra, "blocked=0,ev=unmap-worker+inv");
                assert_eq!(ours[id].extra, "blocked=0,ev=inv+unmap-worker");
                assert_eq!(ours[id], k[id]);
                continue;
            }
            assert_eq!(&ours[id], t, "{id}");
        }
        let mut models = BTreeMap::new();
        models.insert(Part::Kmod, ours.clone());
        let run = serial::parse(Part::Kmod, KERNEL_LOG, &BootEnd::Exited(Some(0))).unwrap();
        let rep = Report::build(&[run], &models);
        assert_eq!(rep.totals(), (113, 113));
        let table = agreement_table(&k, &ours);
        assert!(
            table.ends_with("kmod observations agreed: 40/40\n"),
            "{table}"
        );
        assert!(!table.contains('≠'), "{table}");
    }

    #[test]
    fn the_agreement_table_reads_the_five_observations_and_flags_a_difference() {
        let k = kernel();
        let o = observations(&k);
        assert_eq!(o["static"].attach, "EOPNOTSUPP");
        assert_eq!(o["pinned"].attach, "EOPNOTSUPP");
        assert_eq!(o["odp"].attach, "admitted");
        assert_eq!(o["odp"].map_while_revoked, "ENODEV/ENODEV");
        assert_eq!(o["lying"].revoke, "blocked/blocked/blocked");
        assert_eq!(o["gpu"].revoke, "returned/returned/returned");
        assert_eq!(
            o["odp"].invalidates,
            "inv+unmap-cb+inv | inv+unmap-cb | inv | inv+unmap-cb"
        );
        assert_eq!(o["cache_revalidate"].remap, "ENODEV/ENODEV");
        assert_eq!(o["cache_lazy"].remap, "0/0");
        // A side that returns where the kernel blocked disagrees on one
        // cell, and a missing case on all of that mode's.
        let mut ours = k.clone();
        ours.insert(
            "kmod.lying.reset".into(),
            Outcome::new(0, "0", "blocked=0,ev=inv+inv"),
        );
        ours.remove("kmod.gpu.attach");
        let rows = agreement_rows(&k, &ours);
        let bad: Vec<(&str, &str)> = rows
            .iter()
            .filter(|r| !r.agreed())
            .map(|r| (r.mode, r.what))
            .collect();
        assert_eq!(bad.len(), 7, "{bad:?}");
        assert!(bad.contains(&("lying", "revoke")));
        assert!(bad.contains(&("lying", "invalidates")));
        assert_eq!(bad.iter().filter(|(m, _)| *m == "gpu").count(), 5);
        assert!(agreement_table(&k, &ours).ends_with("agreed: 33/40\n"));
        let j = agreement_json(&k, &ours);
        assert_eq!(j["agreed"], 33);
        assert_eq!(j["rows"][0]["observation"], "attach");
    }

    #[test]
    fn a_script_that_is_not_the_probes_is_refused() {
        let lib = library().unwrap();
        let (s, _, own) = lib
            .scenarios
            .iter()
            .find(|(s, ..)| s.name == "kmod-odp")
            .unwrap();
        let mut sc = lib.resolve_script(s, own).unwrap();
        sc.steps.pop();
        let run = script::run_script(&sc.protocol, &sc.importer, &sc.steps).unwrap();
        let e = mode_cases(&run).unwrap_err();
        assert!(e.contains("not the probe's kmod_part"), "{e}");
    }

    #[test]
    fn v5_of_the_series_would_disagree_with_the_kernel() {
        // v5 (Message-ID <20260124-dmabuf-revoke-v5-4-f98fca917e96@nvidia.com>):
        // the unmap wait gives up after 1 s, and un-revoke clears the flag
        // before it invalidates. The comparison must tell it apart.
        let lib = dmabuf_scenario::builtin::Library::builtin().unwrap();
        let v5 = lib.exporter("v5-unmap-timeout").unwrap().protocol.clone();
        let m = run_kmod_with(Some(&v5)).unwrap();
        // The reset gives up waiting for the lying importer by itself.
        assert!(
            m["kmod.lying.reset"].extra.starts_with("blocked=0,"),
            "{:?}",
            m["kmod.lying.reset"]
        );
        // The un-revoke's invalidate comes after the flag is cleared: the
        // re-validating importer maps again (on 7.2.13 it never does).
        assert_eq!(m["kmod.cache_revalidate.map_after_on"].errno, "0");
        assert_eq!(
            m["kmod.cache_revalidate.memory_on"].extra,
            "blocked=0,ev=inv+remap-cb"
        );
        let k = kernel();
        let rows = agreement_rows(&k, &m);
        assert!(
            rows.iter()
                .any(|r| r.mode == "lying" && r.what == "revoke" && !r.agreed())
        );
        assert!(rows.iter().any(|r| r.mode == "cache_revalidate"
            && r.what == "re-map after un-revoke"
            && !r.agreed()));
    }

    #[test]
    fn the_argument_checks_are_the_modules() {
        let m = argument_checks(&Protocol::merged()).unwrap();
        for (id, e) in [
            ("kmod.bad.unknown_mode", "EINVAL"),
            ("kmod.bad.not_dmabuf", "EINVAL"),
            ("kmod.bad.closed_fd", "EBADF"),
            ("kmod.bad.no_pci_device", "ENODEV"),
            ("kmod.bad.null_argument", "EFAULT"),
            ("kmod.bad.unknown_ioctl", "ENOTTY"),
            ("kmod.bad.mark_256", "EINVAL"),
        ] {
            assert_eq!(m[id].errno, e, "{id}");
            assert_eq!(m[id].ret, -1, "{id}");
        }
        assert_eq!(m.len(), 7);
    }
}
