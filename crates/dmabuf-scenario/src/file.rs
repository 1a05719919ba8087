//! Protocol files: the exporter's revoke protocol, importer behaviours and
//! whole scenarios, as TOML a kernel engineer writes without touching Rust.
//! The format, every field and worked examples are in
//! `docs/protocol-files.md`; this module is its parser.
//!
//! # Sections
//!
//! | section | what | required fields |
//! |---|---|---|
//! | `[exporter]` | an exporter and its revoke protocol (a matrix row) | `name`, `kind`; for `vfio-bar` also `attach`, `revoke`, `unrevoke` |
//! | `[[importer]]` | an importer: a base model and behaviour fields (a matrix column) | `name`, `base` |
//! | `[scenario]` | a timeline: which exporter and importers, the trigger, the workload | `name` |
//! | `[expect]` | herd7-style expectations: `never`, `sometimes`, `always` lists of properties | |
//!
//! A file holds any of them. A scenario names its exporter and importers
//! (`exporter = "v6-final"`, `importers = ["gpu"]`) or uses the ones the
//! file itself defines.
//!
//! # Errors
//!
//! Every error carries `path:line:column` and says what was expected:
//! unknown sections and fields (TOML's own errors, with `deny_unknown_fields`),
//! unknown steps and step arguments (a column inside the step's string),
//! structural mistakes in a sequence (an unlock without a lock), missing
//! sections and absurd numbers. Nothing here panics on any input.

use crate::script::{self, ScriptStep};
use crate::world::{
    ExporterKind, ImporterBase, ImporterSpec, MAX_IDLE_PASSES, OnInvalidate, Trigger, UnmapWhen,
};
use dmabuf_core::dma_resv::Usage;
use dmabuf_core::revoke::{Gate, MmapFault, Protocol, Sequence, Step, Timeout};
use dmabuf_drivers::importers::gpu::Remap;
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// The largest workload a file may ask for (DMA jobs per importer).
pub const MAX_JOBS: i64 = 64;
/// The most instances of one importer.
pub const MAX_COUNT: i64 = 8;
/// The most members of one `[[mix]]`.
pub const MAX_MIX: i64 = 4;
/// The most steps of a script.
pub const MAX_SCRIPT: usize = 256;
/// The largest file accepted.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// The most schedules a `[scenario]` may suggest.
pub const MAX_SCHEDULES_HINT: i64 = 100_000;

/// An error in a protocol file, with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    /// The file.
    pub path: String,
    /// 1-based line (0 when the error has no position).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path, self.line, self.col, self.message
            )
        }
    }
}

/// Where a byte offset is, as (line, column), both 1-based.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, col)
}

dmabuf_core::named_enum! {
    /// A herd7-style answer about a property's violation.
    ///
    /// `name()`: the word herd7 prints.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Answer {
        /// No explored execution violates it.
        Never => "Never",
        /// Some do, some do not.
        Sometimes => "Sometimes",
        /// Every judged execution violates it.
        Always => "Always",
    }
}

/// One expectation of a file: `property`'s violation is `answer`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Expect {
    /// Only for the cell whose other side has this name (`[[expect.cell]]`
    /// with `with = NAME`); `None` for every question of the file.
    pub with: Option<String>,
    /// Property name (the checker validates it).
    pub property: String,
    /// Expected answer.
    pub answer: Answer,
    /// Where it was written (`path:line:col`).
    pub at: String,
}

/// An exporter defined by a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterDef {
    /// Name (a matrix row).
    pub name: String,
    /// One line on it.
    pub description: String,
    /// Where it came from (Message-IDs, commits).
    pub sources: Vec<String>,
    /// Which exporter model.
    pub kind: ExporterKind,
    /// Its protocol.
    pub protocol: Protocol,
    /// The file.
    pub path: String,
}

/// An importer defined by a file: one importer, or a mix of several on
/// one buffer (a `[[mix]]`, a matrix column of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImporterDef {
    /// One line on it.
    pub description: String,
    /// Where it came from.
    pub sources: Vec<String>,
    /// The behaviour; for a mix, its first member's under the mix's name
    /// (the column's name).
    pub spec: ImporterSpec,
    /// A mix's members, each under its own name (empty for one importer).
    pub members: Vec<ImporterSpec>,
    /// The file.
    pub path: String,
}

impl ImporterDef {
    /// The importers a world of this column holds, one instance each.
    pub fn instances(&self) -> Vec<ImporterSpec> {
        if self.members.is_empty() {
            vec![self.spec.clone()]
        } else {
            self.members.clone()
        }
    }
}

/// A `[[mix]]`: several importers of the library on one buffer, as one
/// matrix column (references resolved by the library).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixDef {
    /// Name (a matrix column; may contain `+`).
    pub name: String,
    /// One line on it.
    pub description: String,
    /// The members by name, with where each was named.
    pub importers: Vec<(String, String)>,
    /// The file.
    pub path: String,
}

/// A scenario defined by a file (references not yet resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioDef {
    /// Name.
    pub name: String,
    /// One line on it.
    pub description: String,
    /// The exporter by name, or `None` for the file's own `[exporter]`.
    pub exporter: Option<(String, String)>,
    /// Importers by name (with where they were named), after the file's own.
    pub importers: Vec<(String, String)>,
    /// The trigger.
    pub trigger: Trigger,
    /// DMA jobs per importer.
    pub jobs: usize,
    /// The VMM maps the BAR and touches it.
    pub cpu_access: bool,
    /// An importer maps concurrently with the invalidation.
    pub map_during_invalidate: bool,
    /// A new device is plugged at the old BAR range after close.
    pub hotplug_after_close: bool,
    /// Importers tear down as soon as the trigger begins.
    pub teardown_during_revoke: bool,
    /// In a cycle, importers re-map as soon as the un-revoke begins.
    pub remap_during_unrevoke: bool,
    /// Several importers take turns at each stage of their programs.
    pub importers_take_turns: bool,
    /// Stalled-userspace runs also stall it during a cycle's re-map.
    pub stall_in_remap: bool,
    /// Properties to judge (all when `None`), with where they were named.
    pub properties: Option<Vec<(String, String)>>,
    /// The search strategy `check` uses when none is given on the command
    /// line (`pct` or `random`): a race whose window PCT
    /// rarely preempts in is found by `random` in a few schedules.
    pub strategy: Option<String>,
    /// A script scenario's steps, each with where it was written: run one
    /// at a time by [`crate::script::run_script`], not a world for the
    /// checker (`None` for a world).
    pub script: Option<Vec<(ScriptStep, String)>>,
    /// The normal-mode schedules `check` runs when the command line gives
    /// none (1 to [`MAX_SCHEDULES_HINT`]): a narrow race needs more than
    /// the default 100.
    pub schedules: Option<u64>,
    /// The file.
    pub path: String,
}

/// Everything one file defines.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProtocolFile {
    /// The file.
    pub path: String,
    /// Its `[exporter]`.
    pub exporter: Option<ExporterDef>,
    /// Its `[[importer]]`s.
    pub importers: Vec<ImporterDef>,
    /// Its `[[mix]]`es.
    pub mixes: Vec<MixDef>,
    /// Its `[scenario]`.
    pub scenario: Option<ScenarioDef>,
    /// Its `[expect]`.
    pub expect: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    exporter: Option<Spanned<ExporterDoc>>,
    importer: Option<Vec<Spanned<ImporterDoc>>>,
    mix: Option<Vec<Spanned<MixDoc>>>,
    scenario: Option<Spanned<ScenarioDoc>>,
    expect: Option<ExpectDoc>,
}

type S = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExporterDoc {
    name: S,
    description: Option<String>,
    sources: Option<Vec<String>>,
    kind: S,
    attach: Option<Spanned<Vec<S>>>,
    pin: Option<Spanned<Vec<S>>>,
    revoke: Option<Spanned<Vec<S>>>,
    unrevoke: Option<Spanned<Vec<S>>>,
    cleanup: Option<Spanned<Vec<S>>>,
    close: Option<Spanned<Vec<S>>>,
    permanent: Option<Spanned<Vec<S>>>,
    mmap: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImporterDoc {
    name: S,
    description: Option<String>,
    sources: Option<Vec<String>>,
    base: S,
    invalidate: Option<S>,
    unmap: Option<S>,
    unmap_latency: Option<S>,
    remap: Option<S>,
    pin: Option<bool>,
    writes_after_fences: Option<bool>,
    read_ahead: Option<bool>,
    read_ahead_idle_passes: Option<Spanned<i64>>,
    release: Option<S>,
    autonomous_dma: Option<bool>,
    count: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MixDoc {
    name: S,
    description: Option<String>,
    importers: Spanned<Vec<S>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioDoc {
    name: S,
    description: Option<String>,
    exporter: Option<S>,
    importers: Option<Vec<S>>,
    trigger: Option<S>,
    jobs: Option<Spanned<i64>>,
    cpu_access: Option<bool>,
    map_during_invalidate: Option<bool>,
    hotplug_after_close: Option<bool>,
    teardown_during_revoke: Option<bool>,
    remap_during_unrevoke: Option<bool>,
    importers_take_turns: Option<bool>,
    stall_in_remap: Option<bool>,
    properties: Option<Vec<S>>,
    strategy: Option<S>,
    script: Option<Spanned<Vec<S>>>,
    schedules: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDoc {
    never: Option<Vec<S>>,
    sometimes: Option<Vec<S>>,
    always: Option<Vec<S>>,
    cell: Option<Vec<CellExpectDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CellExpectDoc {
    with: S,
    never: Option<Vec<S>>,
    sometimes: Option<Vec<S>>,
    always: Option<Vec<S>>,
}

/// 64-bit FNV-1a: a stable hash (the same on every machine and release,
/// unlike `std`'s `DefaultHasher`), for replay tokens.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> FileError {
        let (line, col) = line_col(self.text, span.start);
        FileError {
            path: self.path.to_owned(),
            line,
            col,
            message: message.into(),
        }
    }

    /// `path:line:col` of a string value's content.
    fn at(&self, s: &S) -> String {
        let (l, c) = line_col(self.text, self.inner(s));
        format!("{}:{l}:{c}", self.path)
    }

    /// The byte offset of a string value's content (after its quote).
    fn inner(&self, s: &S) -> usize {
        let sp = s.span();
        match self.text.as_bytes().get(sp.start) {
            Some(b'"') | Some(b'\'') => sp.start + 1,
            _ => sp.start,
        }
    }

    fn name(&self, s: &S, what: &str) -> Result<String, FileError> {
        let n = s.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(self.err(
                s.span(),
                format!(
                    "{what} name '{n}' must be 1 to 64 characters of letters, digits, '-' or '_'"
                ),
            ));
        }
        Ok(n.clone())
    }

    fn sequence(&self, list: &Spanned<Vec<S>>, what: &str) -> Result<Sequence, FileError> {
        let mut steps = Vec::with_capacity(list.get_ref().len().min(256));
        for s in list.get_ref() {
            let step = s.get_ref().parse::<Step>().map_err(|e| {
                let at = self.inner(s) + e.offset;
                self.err(at..at, format!("in {what}: {}", e.message))
            })?;
            steps.push(step);
        }
        Sequence::new(steps).map_err(|e| {
            let span = list
                .get_ref()
                .get(e.index)
                .map_or(list.span(), |s| s.span());
            self.err(
                span,
                format!("in {what}: step {}: {}", e.index + 1, e.message),
            )
        })
    }

    fn gate(&self, list: &Spanned<Vec<S>>) -> Result<Gate, FileError> {
        let names: Vec<&str> = list
            .get_ref()
            .iter()
            .map(|s| s.get_ref().as_str())
            .collect();
        Gate::parse(&names).map_err(|(i, m)| self.err(list.get_ref()[i].span(), m))
    }
}

fn exporter_kind(s: &str) -> Option<ExporterKind> {
    match s {
        "vfio-bar" => Some(ExporterKind::Vfio),
        "system-heap" => Some(ExporterKind::SystemHeap),
        "gpu-vram" => Some(ExporterKind::GpuVram),
        "rdma-dm" => Some(ExporterKind::RdmaDm),
        _ => None,
    }
}

/// The file name of an exporter kind.
pub fn exporter_kind_name(k: ExporterKind) -> &'static str {
    match k {
        ExporterKind::Vfio => "vfio-bar",
        ExporterKind::SystemHeap => "system-heap",
        ExporterKind::GpuVram => "gpu-vram",
        ExporterKind::RdmaDm => "rdma-dm",
    }
}

/// The strategy names a `[scenario]` may suggest.
pub const STRATEGIES: &[&str] = &["pct", "random"];

/// The trigger names of a file.
pub const TRIGGERS: &[(&str, Trigger)] = &[
    ("flr", Trigger::Flr),
    ("device-reset", Trigger::DeviceReset),
    ("hot-reset", Trigger::HotReset),
    ("decode-off", Trigger::DecodeOff),
    ("d3hot", Trigger::D3hot),
    ("close", Trigger::Close),
    ("unrevoke-cycle", Trigger::UnrevokeCycle),
    ("flr-cycle", Trigger::FlrCycle),
    ("permanent-cycle", Trigger::PermanentCycle),
    ("eviction", Trigger::Eviction),
    ("dm-free", Trigger::DmFree),
    ("disassociate", Trigger::Disassociate),
];

/// The file name of a trigger.
pub fn trigger_name(t: Trigger) -> &'static str {
    TRIGGERS
        .iter()
        .find(|(_, x)| *x == t)
        .map_or("?", |(n, _)| n)
}

fn parse_usage(s: &str) -> Option<Usage> {
    match s.trim() {
        "kernel" => Some(Usage::Kernel),
        "bookkeep" => Some(Usage::Bookkeep),
        _ => None,
    }
}

fn exporter(c: &Ctx<'_>, d: &Spanned<ExporterDoc>) -> Result<ExporterDef, FileError> {
    let e = d.get_ref();
    let name = c.name(&e.name, "exporter")?;
    let kind = exporter_kind(e.kind.get_ref()).ok_or_else(|| {
        c.err(
            e.kind.span(),
            format!(
                "unknown exporter kind '{}' (expected vfio-bar, rdma-dm, system-heap or gpu-vram)",
                e.kind.get_ref()
            ),
        )
    })?;
    let missing = |field: &str| {
        c.err(
            d.span(),
            format!(
                "[exporter] '{name}' of kind {} needs '{field}'",
                exporter_kind_name(kind)
            ),
        )
    };
    let refuse = |fields: &[(&str, Option<Range<usize>>)], why: &str| -> Result<(), FileError> {
        match fields
            .iter()
            .find_map(|(f, sp)| sp.clone().map(|sp| (f, sp)))
        {
            Some((f, sp)) => Err(c.err(sp, format!("'{f}' {why}"))),
            None => Ok(()),
        }
    };
    let span = |v: &Option<Spanned<Vec<S>>>| v.as_ref().map(|x| x.span());
    let protocol = if kind == ExporterKind::RdmaDm {
        // The uverbs DMABUF object: a gate and a revoke; no pin op, no
        // un-revoke (a freed DM or a disassociated context never comes
        // back), no VFIO close order, no permanent ioctl, no mmap.
        refuse(
            &[
                ("pin", span(&e.pin)),
                ("unrevoke", span(&e.unrevoke)),
                ("close", span(&e.close)),
                ("permanent", span(&e.permanent)),
                ("mmap", e.mmap.as_ref().map(|x| x.span())),
            ],
            "is not for rdma-dm exporters: they revoke for good (when the device memory is freed, on disassociate and on close) and have no pin or mmap op",
        )?;
        let attach = c.gate(e.attach.as_ref().ok_or_else(|| missing("attach"))?)?;
        let revoke = c.sequence(
            e.revoke.as_ref().ok_or_else(|| missing("revoke"))?,
            "revoke",
        )?;
        let cleanup = match &e.cleanup {
            Some(l) => c.sequence(l, "cleanup")?,
            None => revoke.clone(),
        };
        Protocol {
            name: name.clone(),
            attach,
            pin: None,
            revoke,
            unrevoke: Sequence::default(),
            cleanup,
            disable_before_cleanup: false,
            permanent: None,
            mmap: None,
        }
    } else if kind == ExporterKind::Vfio {
        let attach = c.gate(e.attach.as_ref().ok_or_else(|| missing("attach"))?)?;
        let pin = e.pin.as_ref().map(|p| c.gate(p)).transpose()?;
        let revoke = c.sequence(
            e.revoke.as_ref().ok_or_else(|| missing("revoke"))?,
            "revoke",
        )?;
        let unrevoke = c.sequence(
            e.unrevoke.as_ref().ok_or_else(|| missing("unrevoke"))?,
            "unrevoke",
        )?;
        let cleanup = match &e.cleanup {
            Some(l) => c.sequence(l, "cleanup")?,
            None => revoke.clone(),
        };
        let disable_before_cleanup = match &e.close {
            None => false,
            Some(l) => {
                let names: Vec<&str> = l.get_ref().iter().map(|x| x.get_ref().as_str()).collect();
                match names.as_slice() {
                    ["dma_buf_cleanup", "pci_disable"] => false,
                    ["pci_disable", "dma_buf_cleanup"] => true,
                    _ => {
                        return Err(c.err(
                            l.span(),
                            "close is the order of \"dma_buf_cleanup\" and \"pci_disable\": [\"dma_buf_cleanup\", \"pci_disable\"] (since d97708701434) or [\"pci_disable\", \"dma_buf_cleanup\"] (before)",
                        ));
                    }
                }
            }
        };
        let permanent = e
            .permanent
            .as_ref()
            .map(|l| c.sequence(l, "permanent"))
            .transpose()?;
        let mmap = match &e.mmap {
            None => None,
            Some(v) => Some(MmapFault::by_name(v.get_ref()).ok_or_else(|| {
                c.err(
                    v.span(),
                    format!(
                        "unknown mmap fault lock '{}' (expected {})",
                        v.get_ref(),
                        MmapFault::NAMES.join(", ")
                    ),
                )
            })?),
        };
        Protocol {
            name: name.clone(),
            attach,
            pin,
            revoke,
            unrevoke,
            cleanup,
            disable_before_cleanup,
            permanent,
            mmap,
        }
    } else {
        for (f, v) in [
            ("attach", &e.attach),
            ("pin", &e.pin),
            ("revoke", &e.revoke),
            ("unrevoke", &e.unrevoke),
            ("cleanup", &e.cleanup),
            ("close", &e.close),
            ("permanent", &e.permanent),
        ] {
            if let Some(v) = v {
                return Err(c.err(
                    v.span(),
                    format!(
                        "'{f}' is for vfio-bar and rdma-dm exporters: only they revoke in this model"
                    ),
                ));
            }
        }
        if let Some(v) = &e.mmap {
            return Err(c.err(v.span(), "'mmap' is for vfio-bar exporters"));
        }
        Protocol {
            name: name.clone(),
            ..Protocol::merged()
        }
    };
    Ok(ExporterDef {
        name,
        description: e.description.clone().unwrap_or_default(),
        sources: e.sources.clone().unwrap_or_default(),
        kind,
        protocol,
        path: c.path.to_owned(),
    })
}

fn importer(c: &Ctx<'_>, d: &Spanned<ImporterDoc>) -> Result<ImporterDef, FileError> {
    let i = d.get_ref();
    let name = c.name(&i.name, "importer")?;
    let base = ImporterBase::ALL
        .into_iter()
        .find(|b| b.name() == i.base.get_ref())
        .ok_or_else(|| {
            c.err(
                i.base.span(),
                format!(
                    "unknown importer base '{}' (expected static, gpu, rdma, iommufd, cpu or kmod)",
                    i.base.get_ref()
                ),
            )
        })?;
    let mut spec = ImporterSpec::base(&name, base);
    let mut blame: Vec<(&str, Range<usize>)> = Vec::new();
    if let Some(v) = &i.invalidate {
        let t = v.get_ref().trim();
        spec.invalidate = match t {
            "none" => OnInvalidate::NoOp,
            "stop-and-unmap" => OnInvalidate::StopAndUnmap,
            "ignore" => OnInvalidate::Ignore,
            _ => match t
                .strip_prefix("evict(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(parse_usage)
            {
                Some(u) => OnInvalidate::Evict(u),
                None => {
                    return Err(c.err(
                        v.span(),
                        format!(
                            "unknown invalidate '{t}' (expected none, stop-and-unmap, ignore, evict(bookkeep) or evict(kernel))"
                        ),
                    ));
                }
            },
        };
        blame.push(("invalidate", v.span()));
    }
    if let Some(v) = &i.unmap {
        spec.unmap = match v.get_ref().as_str() {
            "in-callback" => UnmapWhen::InCallback,
            "worker-after-fences" => UnmapWhen::WorkerAfterFences,
            "on-free" => UnmapWhen::OnFree,
            other => {
                return Err(c.err(
                    v.span(),
                    format!(
                        "unknown unmap '{other}' (expected in-callback, worker-after-fences or on-free)"
                    ),
                ));
            }
        };
        blame.push(("unmap", v.span()));
    }
    if let Some(v) = &i.unmap_latency {
        let ns = match v.get_ref().parse::<Timeout>() {
            Ok(Timeout::Ns(ns)) if ns <= 1_000_000_000 => ns,
            Ok(_) => {
                return Err(c.err(v.span(), "unmap_latency must be at most 1s"));
            }
            Err(m) => return Err(c.err(v.span(), m)),
        };
        spec.unmap_latency = Duration::from_nanos(ns);
    }
    if let Some(v) = &i.remap {
        spec.remap = match v.get_ref().as_str() {
            "lazy" => Remap::Lazy,
            "cache-enodev" => Remap::CacheEnodev,
            "revalidate" => Remap::Revalidate,
            "cache-enodev-revalidate" => Remap::CacheEnodevRevalidate,
            other => {
                return Err(c.err(
                    v.span(),
                    format!(
                        "unknown remap '{other}' (expected lazy, cache-enodev, revalidate or cache-enodev-revalidate)"
                    ),
                ));
            }
        };
        blame.push(("remap", v.span()));
    }
    if let Some(p) = i.pin {
        spec.pin = p;
    }
    if let Some(w) = i.writes_after_fences {
        spec.writes_after_fences = w;
    }
    if let Some(r) = i.read_ahead {
        spec.read_ahead = r;
    }
    if let Some(n) = &i.read_ahead_idle_passes {
        let Some(v) = u32::try_from(*n.get_ref())
            .ok()
            .filter(|v| *v <= MAX_IDLE_PASSES)
        else {
            return Err(c.err(
                n.span(),
                format!("read_ahead_idle_passes must be 0 to {MAX_IDLE_PASSES}"),
            ));
        };
        spec.read_ahead_idle_passes = v;
        blame.push(("read_ahead_idle_passes", n.span()));
    }
    if let Some(a) = i.autonomous_dma {
        spec.autonomous_dma = a;
    }
    if let Some(v) = &i.release {
        spec.destroy_before_detach = match v.get_ref().as_str() {
            "detach-then-destroy" => false,
            "destroy-then-detach" => true,
            other => {
                return Err(c.err(
                    v.span(),
                    format!(
                        "unknown release '{other}' (expected detach-then-destroy or destroy-then-detach)"
                    ),
                ));
            }
        };
        blame.push(("release", v.span()));
    }
    if let Some(n) = &i.count {
        if !(1..=MAX_COUNT).contains(n.get_ref()) {
            return Err(c.err(n.span(), format!("count must be 1 to {MAX_COUNT}")));
        }
        spec.count = *n.get_ref() as usize;
    }
    if let Err((field, m)) = spec.validate() {
        let span = blame
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(i.base.span(), |(_, s)| s.clone());
        return Err(c.err(span, format!("importer '{name}': {m}")));
    }
    Ok(ImporterDef {
        description: i.description.clone().unwrap_or_default(),
        sources: i.sources.clone().unwrap_or_default(),
        spec,
        members: Vec::new(),
        path: c.path.to_owned(),
    })
}

fn scenario(c: &Ctx<'_>, d: &Spanned<ScenarioDoc>) -> Result<ScenarioDef, FileError> {
    let s = d.get_ref();
    let name = c.name(&s.name, "scenario")?;
    let trigger = match &s.trigger {
        None => Trigger::Flr,
        Some(t) => TRIGGERS
            .iter()
            .find(|(n, _)| n == t.get_ref())
            .map(|(_, x)| *x)
            .ok_or_else(|| {
                let names: Vec<&str> = TRIGGERS.iter().map(|(n, _)| *n).collect();
                c.err(
                    t.span(),
                    format!(
                        "unknown trigger '{}' (expected one of: {})",
                        t.get_ref(),
                        names.join(", ")
                    ),
                )
            })?,
    };
    let script = match &s.script {
        None => None,
        Some(list) => {
            if let Some(t) = &s.trigger {
                return Err(c.err(
                    t.span(),
                    "a scenario with a script has no trigger: its exporter steps (device-reset, decode-off, decode-on, close) are the triggers",
                ));
            }
            let steps = list.get_ref();
            if steps.is_empty() || steps.len() > MAX_SCRIPT {
                return Err(c.err(list.span(), format!("a script has 1 to {MAX_SCRIPT} steps")));
            }
            let mut out = Vec::with_capacity(steps.len());
            for x in steps {
                let step = ScriptStep::parse(x.get_ref()).ok_or_else(|| {
                    let names: Vec<&str> = script::STEPS.iter().map(|(n, _)| *n).collect();
                    c.err(
                        x.span(),
                        format!(
                            "unknown script step '{}' (expected one of: {})",
                            x.get_ref(),
                            names.join(", ")
                        ),
                    )
                })?;
                out.push((step, c.at(x)));
            }
            Some(out)
        }
    };
    let jobs = match &s.jobs {
        None => 2,
        Some(j) if (1..=MAX_JOBS).contains(j.get_ref()) => *j.get_ref() as usize,
        Some(j) => return Err(c.err(j.span(), format!("jobs must be 1 to {MAX_JOBS}"))),
    };
    let schedules = match &s.schedules {
        None => None,
        Some(n) if (1..=MAX_SCHEDULES_HINT).contains(n.get_ref()) => Some(*n.get_ref() as u64),
        Some(n) => {
            return Err(c.err(
                n.span(),
                format!("schedules must be 1 to {MAX_SCHEDULES_HINT}"),
            ));
        }
    };
    let refs = |v: &Option<Vec<S>>| -> Vec<(String, String)> {
        v.iter()
            .flatten()
            .map(|x| (x.get_ref().clone(), c.at(x)))
            .collect()
    };
    Ok(ScenarioDef {
        name,
        description: s.description.clone().unwrap_or_default(),
        exporter: s.exporter.as_ref().map(|e| (e.get_ref().clone(), c.at(e))),
        importers: refs(&s.importers),
        trigger,
        jobs,
        cpu_access: s.cpu_access.unwrap_or(false),
        map_during_invalidate: s.map_during_invalidate.unwrap_or(false),
        hotplug_after_close: s.hotplug_after_close.unwrap_or(false),
        teardown_during_revoke: s.teardown_during_revoke.unwrap_or(false),
        remap_during_unrevoke: s.remap_during_unrevoke.unwrap_or(false),
        importers_take_turns: s.importers_take_turns.unwrap_or(false),
        stall_in_remap: s.stall_in_remap.unwrap_or(false),
        properties: s.properties.as_ref().map(|_| refs(&s.properties)),
        strategy: match &s.strategy {
            None => None,
            Some(x) if STRATEGIES.contains(&x.get_ref().as_str()) => Some(x.get_ref().clone()),
            Some(x) => {
                return Err(c.err(
                    x.span(),
                    format!(
                        "unknown strategy '{}' (expected {})",
                        x.get_ref(),
                        STRATEGIES.join(", ")
                    ),
                ));
            }
        },
        script,
        schedules,
        path: c.path.to_owned(),
    })
}

/// Parses one file. `path` is only used in messages.
pub fn parse(path: &str, text: &str) -> Result<ProtocolFile, FileError> {
    let c = Ctx { path, text };
    if text.len() > MAX_FILE_BYTES {
        return Err(c.err(0..0, format!("file larger than {MAX_FILE_BYTES} bytes")));
    }
    let doc: Doc = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().replace('\n', " ");
        c.err(span, msg)
    })?;
    let mut out = ProtocolFile {
        path: path.to_owned(),
        ..ProtocolFile::default()
    };
    if let Some(e) = &doc.exporter {
        out.exporter = Some(exporter(&c, e)?);
    }
    for i in doc.importer.iter().flatten() {
        let def = importer(&c, i)?;
        if out.importers.iter().any(|x| x.spec.name == def.spec.name) {
            return Err(c.err(
                i.get_ref().name.span(),
                format!("importer '{}' is defined twice in this file", def.spec.name),
            ));
        }
        out.importers.push(def);
    }
    for m in doc.mix.iter().flatten() {
        let d = m.get_ref();
        let n = d.name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+'));
        if !ok {
            return Err(c.err(
                d.name.span(),
                format!(
                    "mix name '{n}' must be 1 to 64 characters of letters, digits, '-', '_' or '+'"
                ),
            ));
        }
        let list = d.importers.get_ref();
        if !(2..=MAX_MIX as usize).contains(&list.len()) {
            return Err(c.err(
                d.importers.span(),
                format!("a mix names 2 to {MAX_MIX} importers"),
            ));
        }
        if out.mixes.iter().any(|x| &x.name == n) {
            return Err(c.err(
                d.name.span(),
                format!("mix '{n}' is defined twice in this file"),
            ));
        }
        out.mixes.push(MixDef {
            name: n.clone(),
            description: d.description.clone().unwrap_or_default(),
            importers: list
                .iter()
                .map(|x| (x.get_ref().clone(), c.at(x)))
                .collect(),
            path: path.to_owned(),
        });
    }
    if let Some(s) = &doc.scenario {
        out.scenario = Some(scenario(&c, s)?);
    }
    if let Some(x) = &doc.expect {
        let mut groups = vec![(None, &x.never, &x.sometimes, &x.always)];
        for c in x.cell.iter().flatten() {
            groups.push((
                Some(c.with.get_ref().clone()),
                &c.never,
                &c.sometimes,
                &c.always,
            ));
        }
        for (with, never, sometimes, always) in groups {
            for (list, answer) in [
                (never, Answer::Never),
                (sometimes, Answer::Sometimes),
                (always, Answer::Always),
            ] {
                for p in list.iter().flatten() {
                    if out
                        .expect
                        .iter()
                        .any(|e| &e.property == p.get_ref() && e.with == with)
                    {
                        return Err(c.err(
                            p.span(),
                            format!("property '{}' has two expectations", p.get_ref()),
                        ));
                    }
                    out.expect.push(Expect {
                        with: with.clone(),
                        property: p.get_ref().clone(),
                        answer,
                        at: c.at(p),
                    });
                }
            }
        }
    }
    if out.exporter.is_none()
        && out.importers.is_empty()
        && out.mixes.is_empty()
        && out.scenario.is_none()
    {
        return Err(c.err(
            0..0,
            "the file defines nothing: expected an [exporter], [[importer]], [[mix]] or [scenario] section",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6: &str = r#"
[exporter]
name = "v6-test"
kind = "vfio-bar"
attach = ["peer2peer", "not_revoked", "revocable"]
revoke = [
  "dma_resv_lock",
  "set_revoked",
  "dma_buf_invalidate_mappings",
  "dma_resv_wait_timeout(bookkeep, MAX_SCHEDULE_TIMEOUT)",
  "dma_resv_unlock",
  "kref_put",
  "wait_for_completion",
]
unrevoke = ["dma_resv_lock", "clear_revoked", "dma_resv_unlock"]
"#;

    fn err(text: &str) -> FileError {
        parse("t.toml", text).unwrap_err()
    }

    #[test]
    fn a_vfio_exporter_parses_with_its_sequences() {
        let f = parse("t.toml", V6).unwrap();
        let e = f.exporter.unwrap();
        assert_eq!(e.name, "v6-test");
        assert_eq!(e.protocol.revoke.steps().len(), 7);
        assert_eq!(
            e.protocol.cleanup, e.protocol.revoke,
            "cleanup defaults to revoke"
        );
        assert!(e.protocol.attach.revocable);
    }

    #[test]
    fn an_unknown_step_points_into_the_string() {
        let e = err(&V6.replace("\"kref_put\"", "\"kref_putt\""));
        assert_eq!((e.line, e.col), (12, 4), "{e}");
        assert!(e.message.contains("unknown step 'kref_putt'"), "{e}");
        assert!(e.to_string().starts_with("t.toml:12:4: "), "{e}");
    }

    #[test]
    fn a_bad_argument_points_at_the_argument() {
        let e = err(&V6.replace("bookkeep, MAX", "bookeep, MAX"));
        assert_eq!((e.line, e.col), (10, 26), "{e}");
        assert!(e.message.contains("unknown usage"), "{e}");
    }

    #[test]
    fn an_unlock_without_a_lock_is_refused_with_its_step() {
        let e = err(&V6.replace(
            r#"unrevoke = ["dma_resv_lock", "clear_revoked", "dma_resv_unlock"]"#,
            r#"unrevoke = ["clear_revoked", "dma_resv_unlock"]"#,
        ));
        assert_eq!(e.line, 15);
        assert!(e.message.contains("in unrevoke: step 1"), "{e}");
        assert!(e.message.contains("needs the reservation lock"), "{e}");
    }

    #[test]
    fn unknown_fields_and_sections_and_missing_ones_are_errors() {
        let e = err(&V6.replace("kind = ", "knd = \"x\"\nkind = "));
        assert!(e.message.contains("unknown field `knd`"), "{e}");
        assert_eq!(e.line, 4);
        let e = err("[exporterr]\nname = \"x\"\n");
        assert!(e.message.contains("unknown field `exporterr`"), "{e}");
        let e = err(&V6.replace(
            r#"unrevoke = ["dma_resv_lock", "clear_revoked", "dma_resv_unlock"]"#,
            "",
        ));
        assert!(e.message.contains("needs 'unrevoke'"), "{e}");
        let e = err("# nothing\n");
        assert!(e.message.contains("defines nothing"), "{e}");
    }

    #[test]
    fn importers_are_checked_against_their_base() {
        let f = parse(
            "i.toml",
            "[[importer]]\nname = \"gpu-enodev\"\nbase = \"gpu\"\nremap = \"cache-enodev\"\n",
        )
        .unwrap();
        assert_eq!(f.importers[0].spec.remap, Remap::CacheEnodev);
        let e =
            err("[[importer]]\nname = \"x\"\nbase = \"rdma\"\ninvalidate = \"evict(bookkeep)\"\n");
        assert_eq!((e.line, e.col), (4, 14), "{e}");
        assert!(e.message.contains("an rdma importer is one of"), "{e}");
        let e = err("[[importer]]\nname = \"x\"\nbase = \"gpu\"\ncount = 100000\n");
        assert!(e.message.contains("count must be 1 to 8"), "{e}");
        let e = err("[[importer]]\nname = \"x y\"\nbase = \"gpu\"\n");
        assert!(e.message.contains("name 'x y'"), "{e}");
        let f = parse(
            "i.toml",
            "[[importer]]\nname = \"eager\"\nbase = \"gpu\"\nread_ahead_idle_passes = 4\n",
        )
        .unwrap();
        assert_eq!(f.importers[0].spec.read_ahead_idle_passes, 4);
        for bad in ["-1", "17", "4294967297"] {
            let e = err(&format!(
                "[[importer]]\nname = \"x\"\nbase = \"gpu\"\nread_ahead_idle_passes = {bad}\n"
            ));
            assert_eq!((e.line, e.col), (4, 26), "{e}");
            assert!(e.message.contains("must be 0 to 16"), "{e}");
        }
        let e = err("[[importer]]\nname = \"x\"\nbase = \"rdma\"\nread_ahead_idle_passes = 2\n");
        assert!(e.message.contains("is a gpu field"), "{e}");
    }

    #[test]
    fn scenarios_check_numbers_and_triggers() {
        let e = err("[scenario]\nname = \"s\"\njobs = 0\n");
        assert!(e.message.contains("jobs must be 1 to 64"), "{e}");
        let e = err("[scenario]\nname = \"s\"\ntrigger = \"flr2\"\n");
        assert!(e.message.contains("unknown trigger 'flr2'"), "{e}");
        let f = parse(
            "s.toml",
            "[scenario]\nname = \"s\"\nexporter = \"v6-final\"\nimporters = [\"gpu\"]\n[expect]\nnever = [\"s-final\"]\nsometimes = [\"l-bounded\"]\n",
        )
        .unwrap();
        assert_eq!(f.expect.len(), 2);
        assert_eq!(f.expect[1].answer, Answer::Sometimes);
        assert_eq!(f.expect[1].at, "s.toml:7:15");
    }

    #[test]
    fn mixes_name_two_to_four_importers() {
        let f = parse(
            "m.toml",
            "[[mix]]\nname = \"a+b\"\nimporters = [\"a\", \"b\"]\n",
        )
        .unwrap();
        assert_eq!(f.mixes[0].name, "a+b");
        assert_eq!(f.mixes[0].importers[1].1, "m.toml:3:20");
        let e = err("[[mix]]\nname = \"a\"\nimporters = [\"a\"]\n");
        assert!(e.message.contains("2 to 4 importers"), "{e}");
        let e = err("[[mix]]\nname = \"a b\"\nimporters = [\"a\", \"b\"]\n");
        assert!(e.message.contains("mix name 'a b'"), "{e}");
    }

    #[test]
    fn mmap_names_the_fault_lock_and_only_vfio_has_it() {
        let f = parse(
            "t.toml",
            &V6.replace("kind = ", "mmap = \"memory_lock\"\nkind = "),
        )
        .unwrap();
        assert_eq!(
            f.exporter.unwrap().protocol.mmap,
            Some(MmapFault::MemoryLock)
        );
        let f = parse("t.toml", V6).unwrap();
        assert_eq!(
            f.exporter.unwrap().protocol.mmap,
            None,
            "no mmap op by default"
        );
        let e = err(&V6.replace("kind = ", "mmap = \"spinlock\"\nkind = "));
        assert!(
            e.message.contains("unknown mmap fault lock 'spinlock'"),
            "{e}"
        );
        assert!(
            e.message.contains("memory_lock, dma_resv_lock, none"),
            "{e}"
        );
        let e = err("[exporter]\nname = \"h\"\nkind = \"system-heap\"\nmmap = \"none\"\n");
        assert!(
            e.message.contains("'mmap' is for vfio-bar exporters"),
            "{e}"
        );
    }

    #[test]
    fn an_rdma_dm_exporter_needs_a_gate_and_a_revoke_and_never_unrevokes() {
        let rdma = "[exporter]\nname = \"r\"\nkind = \"rdma-dm\"\nattach = [\"peer2peer\"]\nrevoke = [\"dma_resv_lock\", \"set_revoked\", \"dma_resv_unlock\"]\n";
        let f = parse("r.toml", rdma).unwrap();
        let e = f.exporter.unwrap();
        assert_eq!(e.kind, ExporterKind::RdmaDm);
        assert!(e.protocol.unrevoke.is_empty());
        assert_eq!(
            e.protocol.cleanup, e.protocol.revoke,
            "cleanup defaults to revoke"
        );
        let e = err(&format!(
            "{rdma}unrevoke = [\"dma_resv_lock\", \"clear_revoked\", \"dma_resv_unlock\"]\n"
        ));
        assert!(
            e.message
                .contains("'unrevoke' is not for rdma-dm exporters"),
            "{e}"
        );
        assert_eq!(e.line, 6);
        let e = err("[exporter]\nname = \"r\"\nkind = \"rdma-dm\"\nattach = [\"peer2peer\"]\n");
        assert!(e.message.contains("of kind rdma-dm needs 'revoke'"), "{e}");
    }

    #[test]
    fn a_cpu_importer_has_fixed_behaviour_and_triggers_and_schedules_parse() {
        let f = parse("i.toml", "[[importer]]\nname = \"c\"\nbase = \"cpu\"\n").unwrap();
        assert_eq!(f.importers[0].spec.base, ImporterBase::Cpu);
        let e =
            err("[[importer]]\nname = \"c\"\nbase = \"cpu\"\ninvalidate = \"stop-and-unmap\"\n");
        assert!(
            e.message.contains("a cpu importer's invalidate is fixed"),
            "{e}"
        );
        let f = parse(
            "s.toml",
            "[scenario]\nname = \"s\"\ntrigger = \"disassociate\"\nschedules = 2000\n",
        )
        .unwrap();
        let s = f.scenario.unwrap();
        assert_eq!(s.trigger, Trigger::Disassociate);
        assert_eq!(s.schedules, Some(2000));
        let e = err("[scenario]\nname = \"s\"\nschedules = 0\n");
        assert!(e.message.contains("schedules must be 1 to 100000"), "{e}");
        assert_eq!(trigger_name(Trigger::DmFree), "dm-free");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé\nd", 0), (1, 1));
        assert_eq!(line_col("ab\ncé\nd", 3), (2, 1));
        assert_eq!(line_col("ab\ncé\nd", 7), (3, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
