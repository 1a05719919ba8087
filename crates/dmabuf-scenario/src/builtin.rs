//! The library of protocols: the built-in files (shipped inside the binary,
//! from the repository's `protocols/` folder) plus any files or folders a
//! user adds, and the resolution of names into runnable [`Scenario`]s.
//!
//! # Names
//!
//! | name | scenario |
//! |---|---|
//! | a `[scenario]`'s name | that scenario, its references resolved |
//! | `matrix.<exporter>.<importer>` | one matrix cell: the exporter with one importer; FLR with DMA in flight, un-revoke, re-map with DMA in flight, revoke again, close while revoked ([`Trigger::FlrCycle`]) |
//! | either, ending in `.jobs<N>` | the same with `N` DMA jobs per importer (a shrunk counterexample) |
//! | either, ending in `.idle<N>` (before or after `.jobs<N>`) | the same with at most `N` idle read-ahead passes for every importer that reads ahead (a proof attempt's smaller configuration) |
//! | a world of several importers, ending in `.turns` (before or after the others) | the same with the importers' userspace taking turns at each stage of its program ([`WorldSpec::importers_take_turns`]; a mix's smallest proof configuration) |
//! | a world whose importers read ahead, ending in `.ra-unordered` (before or after the others) | the same with the speculative reads of bus addresses left unordered by the search ([`WorldSpec::read_ahead_unordered`]; a proof attempt's world for the properties not judged from them) |
//! | a world with a cycle, ending in `.stall-remap` (before or after the others) | the same with a fourth point where stalled-userspace runs stall userspace: anywhere in the first importer's re-map, until the clock next moves ([`WorldSpec::stall_in_remap`]) |
//!
//! A script scenario (`script = [...]`) is not a world: [`Library::resolve`]
//! refuses it, and [`Library::resolve_script`] resolves it for
//! [`crate::script::run_script`].
//!
//! A name defined twice (a user file that redefines a built-in, or two user
//! files) is an error naming both files: a question must have one meaning.

use crate::file::{self, Expect, ExporterDef, FileError, ImporterDef, ProtocolFile, ScenarioDef};
use crate::script::ScriptStep;
use crate::world::{ExporterKind, ImporterBase, ImporterSpec, Trigger, WorldSpec};
use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::Arc;
use dmabuf_drivers::importers::gpu::DEFAULT_IDLE_PASSES;
use std::path::Path;

/// The built-in files, in matrix order (rows, then columns, then the named
/// scenarios).
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "protocols/exporters/v1-core-flag.toml",
        include_str!("../../../protocols/exporters/v1-core-flag.toml"),
    ),
    (
        "protocols/exporters/v2-invalidate-only.toml",
        include_str!("../../../protocols/exporters/v2-invalidate-only.toml"),
    ),
    (
        "protocols/exporters/v3-kernel-wait.toml",
        include_str!("../../../protocols/exporters/v3-kernel-wait.toml"),
    ),
    (
        "protocols/exporters/v4-bookkeep-wait.toml",
        include_str!("../../../protocols/exporters/v4-bookkeep-wait.toml"),
    ),
    (
        "protocols/exporters/v5-unmap-timeout.toml",
        include_str!("../../../protocols/exporters/v5-unmap-timeout.toml"),
    ),
    (
        "protocols/exporters/v6-final.toml",
        include_str!("../../../protocols/exporters/v6-final.toml"),
    ),
    (
        "protocols/exporters/v8b-final-no-gate.toml",
        include_str!("../../../protocols/exporters/v8b-final-no-gate.toml"),
    ),
    (
        "protocols/exporters/v9c-gate-in-pin.toml",
        include_str!("../../../protocols/exporters/v9c-gate-in-pin.toml"),
    ),
    (
        "protocols/exporters/v10-three-state.toml",
        include_str!("../../../protocols/exporters/v10-three-state.toml"),
    ),
    (
        "protocols/exporters/v10-unrevoke-no-invalidate.toml",
        include_str!("../../../protocols/exporters/v10-unrevoke-no-invalidate.toml"),
    ),
    (
        "protocols/exporters/v10-mmap.toml",
        include_str!("../../../protocols/exporters/v10-mmap.toml"),
    ),
    (
        "protocols/exporters/rdma-export.toml",
        include_str!("../../../protocols/exporters/rdma-export.toml"),
    ),
    (
        "protocols/exporters/gpu-vram.toml",
        include_str!("../../../protocols/exporters/gpu-vram.toml"),
    ),
    (
        "protocols/exporters/system-heap.toml",
        include_str!("../../../protocols/exporters/system-heap.toml"),
    ),
    (
        "protocols/importers/static.toml",
        include_str!("../../../protocols/importers/static.toml"),
    ),
    (
        "protocols/importers/gpu.toml",
        include_str!("../../../protocols/importers/gpu.toml"),
    ),
    (
        "protocols/importers/gpu-kernel-fence.toml",
        include_str!("../../../protocols/importers/gpu-kernel-fence.toml"),
    ),
    (
        "protocols/importers/gpu-lazy.toml",
        include_str!("../../../protocols/importers/gpu-lazy.toml"),
    ),
    (
        "protocols/importers/gpu-enodev.toml",
        include_str!("../../../protocols/importers/gpu-enodev.toml"),
    ),
    (
        "protocols/importers/gpu-enodev-revalidate.toml",
        include_str!("../../../protocols/importers/gpu-enodev-revalidate.toml"),
    ),
    (
        "protocols/importers/rdma-odp.toml",
        include_str!("../../../protocols/importers/rdma-odp.toml"),
    ),
    (
        "protocols/importers/rdma-pinned.toml",
        include_str!("../../../protocols/importers/rdma-pinned.toml"),
    ),
    (
        "protocols/importers/rdma-pinned-revocable.toml",
        include_str!("../../../protocols/importers/rdma-pinned-revocable.toml"),
    ),
    (
        "protocols/importers/iommufd.toml",
        include_str!("../../../protocols/importers/iommufd.toml"),
    ),
    (
        "protocols/importers/lying.toml",
        include_str!("../../../protocols/importers/lying.toml"),
    ),
    (
        "protocols/importers/cpu-mmap.toml",
        include_str!("../../../protocols/importers/cpu-mmap.toml"),
    ),
    (
        "protocols/importers/mixes.toml",
        include_str!("../../../protocols/importers/mixes.toml"),
    ),
    (
        "protocols/scenarios/vfio-iommufd-flr.toml",
        include_str!("../../../protocols/scenarios/vfio-iommufd-flr.toml"),
    ),
    (
        "protocols/scenarios/vfio-gpu-reset.toml",
        include_str!("../../../protocols/scenarios/vfio-gpu-reset.toml"),
    ),
    (
        "protocols/scenarios/two-importers.toml",
        include_str!("../../../protocols/scenarios/two-importers.toml"),
    ),
    (
        "protocols/scenarios/map-during-invalidate.toml",
        include_str!("../../../protocols/scenarios/map-during-invalidate.toml"),
    ),
    (
        "protocols/scenarios/unrevoke-cycle.toml",
        include_str!("../../../protocols/scenarios/unrevoke-cycle.toml"),
    ),
    (
        "protocols/scenarios/close-with-mappings.toml",
        include_str!("../../../protocols/scenarios/close-with-mappings.toml"),
    ),
    (
        "protocols/scenarios/runtime-pm.toml",
        include_str!("../../../protocols/scenarios/runtime-pm.toml"),
    ),
    (
        "protocols/scenarios/vram-eviction.toml",
        include_str!("../../../protocols/scenarios/vram-eviction.toml"),
    ),
    (
        "protocols/scenarios/permanent-revoke.toml",
        include_str!("../../../protocols/scenarios/permanent-revoke.toml"),
    ),
    (
        "protocols/scenarios/unrevoke-race-v6.toml",
        include_str!("../../../protocols/scenarios/unrevoke-race-v6.toml"),
    ),
    (
        "protocols/scenarios/unrevoke-race-no-invalidate.toml",
        include_str!("../../../protocols/scenarios/unrevoke-race-no-invalidate.toml"),
    ),
    (
        "protocols/scenarios/vfio-mmap-gpu.toml",
        include_str!("../../../protocols/scenarios/vfio-mmap-gpu.toml"),
    ),
    (
        "protocols/scenarios/rdma-export-dm-free.toml",
        include_str!("../../../protocols/scenarios/rdma-export-dm-free.toml"),
    ),
    (
        "protocols/scenarios/rdma-export-disassociate.toml",
        include_str!("../../../protocols/scenarios/rdma-export-disassociate.toml"),
    ),
];

/// A runnable scenario: a world and what its file expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Name (see the module table).
    pub name: String,
    /// What it exercises.
    pub description: String,
    /// The world.
    pub spec: WorldSpec,
    /// Its file's expectations.
    pub expect: Vec<Expect>,
    /// Properties to judge (all when `None`).
    pub properties: Option<Vec<(String, String)>>,
    /// The search strategy its file suggests (see
    /// [`crate::file::ScenarioDef::strategy`]).
    pub strategy: Option<String>,
    /// The schedules its file suggests (see
    /// [`crate::file::ScenarioDef::schedules`]).
    pub schedules: Option<u64>,
    /// The file(s) it came from.
    pub origin: String,
}

impl Scenario {
    /// A stable hash of what runs (protocol, importers, timeline): a replay
    /// token carries it, so a token is never replayed against a changed
    /// question.
    pub fn hash(&self) -> u64 {
        spec_hash(&self.spec)
    }
}

/// A stable hash of a world.
pub fn spec_hash(spec: &WorldSpec) -> u64 {
    // Debug output of these plain data types is deterministic and names
    // every field; the protocol's steps print as the file wrote them.
    let p = &spec.protocol;
    // Fields added later enter the text only when set (see below): the
    // GPU's idle read-ahead passes only when not the default.
    let importers = format!("{:?}", spec.importers).replace(
        &format!(" read_ahead_idle_passes: {DEFAULT_IDLE_PASSES},"),
        "",
    );
    let text = format!(
        "{:?}|{:?}|{:?}|{}|{}|{}|{}|{:?}|{}|{:?}|{}|{}|{}|{}|{}|{}",
        spec.exporter,
        p.attach,
        p.pin,
        p.revoke,
        p.unrevoke,
        p.cleanup,
        p.disable_before_cleanup,
        p.permanent.as_ref().map(ToString::to_string),
        importers,
        spec.trigger,
        spec.jobs,
        spec.cpu_access,
        spec.map_during_invalidate,
        spec.hotplug_after_close,
        spec.teardown_during_revoke,
        spec.remap_during_unrevoke
    );
    // Fields added later enter the text only when set, so that the worlds
    // that existed before them keep their hashes (and their tokens).
    let text = match p.mmap {
        None => text,
        Some(m) => format!("{text}|mmap={}", m.name()),
    };
    let text = if spec.importers_take_turns {
        format!("{text}|turns")
    } else {
        text
    };
    let text = if spec.stall_in_remap {
        format!("{text}|stall-remap")
    } else {
        text
    };
    let text = if spec.read_ahead_unordered {
        format!("{text}|ra-unordered")
    } else {
        text
    };
    file::fnv1a(text.as_bytes())
}

/// A resolved script scenario (see [`crate::script`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptScenario {
    /// Name.
    pub name: String,
    /// What it exercises.
    pub description: String,
    /// The exporter's name.
    pub exporter: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The one importer (base `kmod`).
    pub importer: ImporterSpec,
    /// The steps.
    pub steps: Vec<ScriptStep>,
    /// The file it came from.
    pub origin: String,
}

/// Exporters, importers and scenarios by name.
#[derive(Clone, Debug, Default)]
pub struct Library {
    /// Exporters, in the order they were added.
    pub exporters: Vec<ExporterDef>,
    /// Importers, in the order they were added.
    pub importers: Vec<ImporterDef>,
    /// Scenarios with their files' expectations.
    pub scenarios: Vec<(ScenarioDef, Vec<Expect>, ProtocolFile)>,
}

fn dup(kind: &str, name: &str, a: &str, b: &str) -> FileError {
    FileError {
        path: b.to_owned(),
        line: 0,
        col: 0,
        message: format!("{kind} '{name}' is already defined in {a}"),
    }
}

fn resolve_err(at: &str, message: String) -> FileError {
    // `at` is "path:line:col".
    let mut it = at.rsplitn(3, ':');
    let col = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let line = it.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    let path = it.next().unwrap_or(at).to_owned();
    FileError {
        path,
        line,
        col,
        message,
    }
}

impl Library {
    /// The built-in files. An error here is a defect of the shipped files
    /// (a test parses them all), reported rather than panicking.
    pub fn builtin() -> Result<Self, FileError> {
        let mut lib = Library::default();
        for (path, text) in BUILTIN {
            lib.add_text(path, text)?;
        }
        Ok(lib)
    }

    /// Adds one file's definitions.
    pub fn add_text(&mut self, path: &str, text: &str) -> Result<ProtocolFile, FileError> {
        let f = file::parse(path, text)?;
        self.add_parsed(f.clone())?;
        Ok(f)
    }

    fn add_parsed(&mut self, f: ProtocolFile) -> Result<(), FileError> {
        if let Some(e) = &f.exporter {
            if let Some(old) = self.exporters.iter().find(|x| x.name == e.name) {
                return Err(dup("exporter", &e.name, &old.path, &f.path));
            }
            self.exporters.push(e.clone());
        }
        for i in &f.importers {
            if let Some(old) = self.importers.iter().find(|x| x.spec.name == i.spec.name) {
                return Err(dup("importer", &i.spec.name, &old.path, &f.path));
            }
            self.importers.push(i.clone());
        }
        for m in &f.mixes {
            if let Some(old) = self.importers.iter().find(|x| x.spec.name == m.name) {
                return Err(dup("importer", &m.name, &old.path, &f.path));
            }
            let mut members = Vec::new();
            for (name, at) in &m.importers {
                let i = self.importer(name).ok_or_else(|| {
                    resolve_err(
                        at,
                        format!("unknown importer '{name}' in a mix (see `dmabuf scenarios`)"),
                    )
                })?;
                members.extend(i.instances());
            }
            let mut spec = members[0].clone();
            spec.name = m.name.clone();
            self.importers.push(ImporterDef {
                description: m.description.clone(),
                sources: Vec::new(),
                spec,
                members,
                path: m.path.clone(),
            });
        }
        if let Some(s) = &f.scenario {
            if let Some((old, ..)) = self.scenarios.iter().find(|(x, ..)| x.name == s.name) {
                return Err(dup("scenario", &s.name, &old.path, &f.path));
            }
            self.scenarios
                .push((s.clone(), f.expect.clone(), f.clone()));
        }
        Ok(())
    }

    /// Adds a file from disk.
    pub fn add_file(&mut self, path: &Path) -> Result<ProtocolFile, FileError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| FileError {
            path: shown.clone(),
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        })?;
        if meta.len() > file::MAX_FILE_BYTES as u64 {
            return Err(FileError {
                path: shown,
                line: 0,
                col: 0,
                message: format!("file larger than {} bytes", file::MAX_FILE_BYTES),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            path: shown.clone(),
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        })?;
        self.add_text(&shown, &text)
    }

    /// Adds every `*.toml` below `dir` (sorted, recursively); returns the
    /// files added.
    pub fn add_dir(&mut self, dir: &Path) -> Result<Vec<ProtocolFile>, FileError> {
        let mut paths = Vec::new();
        collect(dir, &mut paths, 0).map_err(|e| FileError {
            path: dir.display().to_string(),
            line: 0,
            col: 0,
            message: format!("cannot read the folder: {e}"),
        })?;
        paths.sort();
        paths.iter().map(|p| self.add_file(p)).collect()
    }

    /// An exporter by name.
    pub fn exporter(&self, name: &str) -> Option<&ExporterDef> {
        self.exporters.iter().find(|e| e.name == name)
    }

    /// An importer by name.
    pub fn importer(&self, name: &str) -> Option<&ImporterDef> {
        self.importers.iter().find(|i| i.spec.name == name)
    }

    /// The exporters that revoke with a protocol (matrix rows): VFIO's,
    /// then the RDMA exporter's.
    pub fn rows(&self) -> Vec<&ExporterDef> {
        self.exporters
            .iter()
            .filter(|e| e.kind == ExporterKind::Vfio)
            .chain(
                self.exporters
                    .iter()
                    .filter(|e| e.kind == ExporterKind::RdmaDm),
            )
            .collect()
    }

    /// One matrix cell: a VFIO row's cell runs an FLR cycle
    /// ([`Trigger::FlrCycle`]); an RDMA row's, the owner freeing the
    /// exported device memory with DMA in flight ([`Trigger::DmFree`]).
    pub fn cell(&self, e: &ExporterDef, i: &ImporterDef) -> Scenario {
        let mut imps = i.instances();
        for x in &mut imps {
            x.count = 1;
        }
        let mut spec = WorldSpec::vfio(Arc::new(e.protocol.clone()), imps[0].clone());
        spec.importers = imps;
        let (what, timeline) = if e.kind == ExporterKind::RdmaDm {
            spec.exporter = ExporterKind::RdmaDm;
            spec.trigger = Trigger::DmFree;
            (
                "device memory",
                "the owner frees the device memory with DMA in flight, then closes its context",
            )
        } else {
            (
                "a BAR",
                "FLR with DMA in flight, un-revoke, re-map with DMA in flight, revoke again (decode off), close while revoked",
            )
        };
        Scenario {
            name: format!("matrix.{}.{}", e.name, i.spec.name),
            description: format!(
                "{} exporting {what} to {} {} importer{}; {timeline}",
                e.name,
                if i.members.is_empty() { "one" } else { "the" },
                i.spec.name,
                if i.members.is_empty() { "" } else { "s" }
            ),
            spec,
            expect: Vec::new(),
            properties: None,
            strategy: None,
            schedules: None,
            origin: format!("{} x {}", e.path, i.path),
        }
    }

    /// The exporter and importer instances a scenario names.
    fn references(
        &self,
        s: &ScenarioDef,
        own: &ProtocolFile,
    ) -> Result<(ExporterDef, Vec<ImporterSpec>), FileError> {
        let exporter = match (&s.exporter, &own.exporter) {
            (Some((name, at)), _) => self.exporter(name).cloned().ok_or_else(|| {
                resolve_err(
                    at,
                    format!("unknown exporter '{name}' (see `dmabuf scenarios`)"),
                )
            })?,
            (None, Some(e)) => e.clone(),
            (None, None) => {
                return Err(FileError {
                    path: s.path.clone(),
                    line: 0,
                    col: 0,
                    message: format!(
                        "scenario '{}' names no exporter: add exporter = \"NAME\" or an [exporter] section",
                        s.name
                    ),
                });
            }
        };
        let mut importers: Vec<ImporterSpec> =
            own.importers.iter().flat_map(|i| i.instances()).collect();
        for (name, at) in &s.importers {
            let i = self.importer(name).ok_or_else(|| {
                resolve_err(
                    at,
                    format!("unknown importer '{name}' (see `dmabuf scenarios`)"),
                )
            })?;
            importers.extend(i.instances());
        }
        if importers.is_empty() {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "scenario '{}' has no importer: add importers = [\"NAME\"] or an [[importer]] section",
                    s.name
                ),
            });
        }
        Ok((exporter, importers))
    }

    /// Resolves a script scenario (a `[scenario]` with `script`): a
    /// vfio-bar exporter and exactly one importer instance of base `kmod`.
    pub fn resolve_script(
        &self,
        s: &ScenarioDef,
        own: &ProtocolFile,
    ) -> Result<ScriptScenario, FileError> {
        let fail = |message: String| FileError {
            path: s.path.clone(),
            line: 0,
            col: 0,
            message,
        };
        let Some(steps) = &s.script else {
            return Err(fail(format!("scenario '{}' has no script", s.name)));
        };
        let (exporter, importers) = self.references(s, own)?;
        if exporter.kind != ExporterKind::Vfio {
            return Err(fail(format!(
                "a script needs a vfio-bar exporter; '{}' is {}",
                exporter.name,
                file::exporter_kind_name(exporter.kind)
            )));
        }
        let [importer] = importers.as_slice() else {
            return Err(fail(format!(
                "a script has exactly one importer instance; scenario '{}' has {}",
                s.name,
                importers.len()
            )));
        };
        crate::script::KmodMode::of(importer).map_err(&fail)?;
        Ok(ScriptScenario {
            name: s.name.clone(),
            description: s.description.clone(),
            exporter: exporter.name.clone(),
            protocol: exporter.protocol.clone(),
            importer: importer.clone(),
            steps: steps.iter().map(|(x, _)| *x).collect(),
            origin: s.path.clone(),
        })
    }

    /// Resolves a scenario's references. `own` is the file that defined it
    /// (its own `[exporter]` and `[[importer]]`s come first).
    pub fn resolve(&self, s: &ScenarioDef, own: &ProtocolFile) -> Result<Scenario, FileError> {
        if s.script.is_some() {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "scenario '{}' is a script: it runs step by step in the real-kernel oracle's kmod part (dmabuf-oracle --part kmod), not as a world of the checker",
                    s.name
                ),
            });
        }
        let (exporter, importers) = self.references(s, own)?;
        if let Some(k) = importers.iter().find(|i| i.base == ImporterBase::Kmod) {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "importer '{}' has base kmod: a kmod importer runs only in a script scenario",
                    k.name
                ),
            });
        }
        let rdma = exporter.kind == ExporterKind::RdmaDm;
        let rdma_only = matches!(s.trigger, Trigger::DmFree | Trigger::Disassociate);
        if rdma != rdma_only && !(rdma && s.trigger == Trigger::Close) {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: if rdma {
                    format!(
                        "trigger '{}' is not one of the rdma-dm exporter '{}': dm-free, disassociate or close",
                        file::trigger_name(s.trigger),
                        exporter.name
                    )
                } else {
                    format!(
                        "trigger '{}' needs an rdma-dm exporter",
                        file::trigger_name(s.trigger)
                    )
                },
            });
        }
        let revokes = exporter.kind == ExporterKind::Vfio;
        if !rdma && !revokes && !matches!(s.trigger, Trigger::Close | Trigger::Eviction) {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "trigger '{}' needs a vfio-bar exporter; '{}' supports close{}",
                    file::trigger_name(s.trigger),
                    exporter.name,
                    if exporter.kind == ExporterKind::GpuVram {
                        " and eviction"
                    } else {
                        ""
                    }
                ),
            });
        }
        if s.trigger == Trigger::PermanentCycle && exporter.protocol.permanent.is_none() {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "trigger 'permanent-cycle' needs an exporter with a 'permanent' sequence; '{}' has none",
                    exporter.name
                ),
            });
        }
        if revokes && s.trigger == Trigger::Eviction {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: "trigger 'eviction' needs a gpu-vram exporter".into(),
            });
        }
        if s.stall_in_remap && !s.trigger.is_cycle() {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "scenario '{}': stall_in_remap needs a cycle's re-map (trigger 'flr-cycle', 'unrevoke-cycle' or 'permanent-cycle')",
                    s.name
                ),
            });
        }
        if s.importers_take_turns && importers.iter().map(|i| i.count).sum::<usize>() < 2 {
            return Err(FileError {
                path: s.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "scenario '{}': importers_take_turns needs two importers or more, to take turns",
                    s.name
                ),
            });
        }
        Ok(Scenario {
            name: s.name.clone(),
            description: s.description.clone(),
            spec: WorldSpec {
                exporter: exporter.kind,
                protocol: Arc::new(exporter.protocol.clone()),
                importers,
                trigger: s.trigger,
                jobs: s.jobs,
                cpu_access: s.cpu_access,
                map_during_invalidate: s.map_during_invalidate,
                hotplug_after_close: s.hotplug_after_close,
                teardown_during_revoke: s.teardown_during_revoke,
                remap_during_unrevoke: s.remap_during_unrevoke,
                importers_take_turns: s.importers_take_turns,
                stall_in_remap: s.stall_in_remap,
                read_ahead_unordered: false,
            },
            expect: own.expect.clone(),
            properties: s.properties.clone(),
            strategy: s.strategy.clone(),
            schedules: s.schedules,
            origin: s.path.clone(),
        })
    }

    /// The scenarios one file asks about: its `[scenario]`; else its
    /// exporter against every built-in importer and every importer it
    /// defines against every VFIO exporter of the library (the file's own
    /// definitions crossed with the others).
    pub fn questions(&self, f: &ProtocolFile) -> Result<Vec<Scenario>, FileError> {
        if let Some(s) = &f.scenario {
            return Ok(vec![self.resolve(s, f)?]);
        }
        if let Some(k) = f
            .importers
            .iter()
            .find(|i| i.spec.base == ImporterBase::Kmod)
        {
            return Err(FileError {
                path: f.path.clone(),
                line: 0,
                col: 0,
                message: format!(
                    "importer '{}' has base kmod: a kmod importer runs only in a script scenario, not in matrix cells",
                    k.spec.name
                ),
            });
        }
        let mut out = Vec::new();
        if let Some(e) = &f.exporter {
            let imps: Vec<&ImporterDef> = if f.importers.is_empty() {
                self.importers.iter().collect()
            } else {
                f.importers.iter().collect()
            };
            for i in imps {
                out.push((self.cell(e, i), i.spec.name.clone()));
            }
        } else {
            let mixes: Vec<&ImporterDef> = f
                .mixes
                .iter()
                .filter_map(|m| self.importer(&m.name))
                .collect();
            for i in f.importers.iter().chain(mixes) {
                for e in self.rows() {
                    out.push((self.cell(e, i), e.name.clone()));
                }
            }
        }
        // `with` names the other side of the cell: the column (an importer
        // or a mix) for an exporter file, the row for an importer file.
        Ok(out
            .into_iter()
            .map(|(mut s, other)| {
                // A cell's own expectation of a property replaces the
                // file-wide one.
                let own = |p: &str| {
                    f.expect
                        .iter()
                        .any(|e| e.with.as_deref() == Some(other.as_str()) && e.property == p)
                };
                s.expect = f
                    .expect
                    .iter()
                    .filter(|e| match &e.with {
                        None => !own(&e.property),
                        Some(w) => *w == other,
                    })
                    .cloned()
                    .collect();
                s
            })
            .collect())
    }

    /// Every named scenario (a world; script scenarios are not), resolved.
    pub fn named(&self) -> Result<Vec<Scenario>, FileError> {
        self.scenarios
            .iter()
            .filter(|(s, ..)| s.script.is_none())
            .map(|(s, _, f)| self.resolve(s, f))
            .collect()
    }

    /// Looks a scenario up by name (see the module table).
    pub fn find(&self, name: &str) -> Result<Scenario, FileError> {
        let unknown = || FileError {
            path: "<scenario name>".into(),
            line: 0,
            col: 0,
            message: format!("unknown scenario '{name}' (see `dmabuf scenarios`)"),
        };
        if let Some((base, jobs)) = name.rsplit_once(".jobs")
            && let Ok(j) = jobs.parse::<usize>()
            && (1..=file::MAX_JOBS as usize).contains(&j)
        {
            let mut s = self.find(base)?;
            s.spec.jobs = j;
            s.name = name.to_owned();
            return Ok(s);
        }
        if let Some((base, n)) = name.rsplit_once(".idle")
            && let Ok(n) = n.parse::<u32>()
            && n <= crate::world::MAX_IDLE_PASSES
        {
            let mut s = self.find(base)?;
            if !s.spec.cap_idle_passes(n) {
                return Err(FileError {
                    message: format!(
                        "'{name}': no importer of '{base}' reads ahead, so it has no idle passes to cap"
                    ),
                    ..unknown()
                });
            }
            s.name = name.to_owned();
            return Ok(s);
        }
        for (suffix, applies, why, switch_on) in SWITCHES {
            if let Some(base) = name.strip_suffix(suffix) {
                let mut s = self.find(base)?;
                if !applies(&s.spec) {
                    return Err(FileError {
                        message: format!("'{name}': '{base}' {why}"),
                        ..unknown()
                    });
                }
                switch_on(&mut s.spec);
                s.name = name.to_owned();
                return Ok(s);
            }
        }
        if let Some(rest) = name.strip_prefix("matrix.") {
            // Exporter names may contain dots only if a file says so; split
            // at the first dot that leaves a known exporter.
            for (i, _) in rest.match_indices('.') {
                if let (Some(e), Some(imp)) =
                    (self.exporter(&rest[..i]), self.importer(&rest[i + 1..]))
                {
                    return Ok(self.cell(e, imp));
                }
            }
            return Err(unknown());
        }
        let (s, _, f) = self
            .scenarios
            .iter()
            .find(|(s, ..)| s.name == name)
            .ok_or_else(unknown)?;
        self.resolve(s, f)
    }
}

/// A name suffix that switches one setting of a world on: the suffix,
/// whether the world has what the setting is about, why not when it has
/// not, and the switch.
type Switch = (
    &'static str,
    fn(&WorldSpec) -> bool,
    &'static str,
    fn(&mut WorldSpec),
);

/// The suffixes of the names table at the top, `.jobsN` and `.idleN` aside.
const SWITCHES: [Switch; 3] = [
    (
        ".turns",
        |w| w.instances() >= 2,
        "has one importer, so there are no turns to take",
        |w| w.importers_take_turns = true,
    ),
    (
        ".ra-unordered",
        |w| w.importers.iter().any(|i| i.read_ahead),
        "has no importer that reads ahead, so no speculative read to leave unordered",
        |w| w.read_ahead_unordered = true,
    ),
    (
        ".stall-remap",
        |w| w.trigger.is_cycle(),
        "has no cycle, so no re-map to stall in",
        |w| w.stall_in_remap = true,
    ),
];

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>, depth: usize) -> std::io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out, depth + 1)?;
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_file_parses_and_the_list_matches_the_folder() {
        let lib = Library::builtin().unwrap();
        assert_eq!(
            lib.rows().len(),
            12,
            "11 VFIO protocols and the RDMA exporter"
        );
        assert_eq!(lib.importers.len(), 15, "12 importers and 3 mixes");
        assert_eq!(lib.named().unwrap().len(), 14);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocols");
        let mut on_disk = Vec::new();
        collect(&root, &mut on_disk, 0).unwrap();
        // protocols/fixes/ holds replays of kernel fixes and
        // protocols/variants/ the buggy live variants, checked one file at
        // a time (`dmabuf check protocols/fixes/X.toml`), not part of the
        // library.
        // protocols/kmod/ holds the real-kernel oracle's script scenarios
        // (run by `dmabuf-oracle --part kmod`), not matrix rows or columns.
        on_disk.retain(|p| {
            !p.starts_with(root.join("fixes"))
                && !p.starts_with(root.join("variants"))
                && !p.starts_with(root.join("kmod"))
        });
        assert_eq!(
            on_disk.len(),
            BUILTIN.len(),
            "a file in protocols/ is missing from BUILTIN"
        );
        for p in on_disk {
            let rel = p.strip_prefix(root.parent().unwrap()).unwrap();
            assert!(
                BUILTIN.iter().any(|(n, _)| Path::new(n) == rel),
                "{} is not in BUILTIN",
                rel.display()
            );
        }
    }

    #[test]
    fn the_fix_replays_parse_and_each_asks_one_question() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocols/fixes");
        let mut files = Vec::new();
        collect(&root, &mut files, 0).unwrap();
        assert_eq!(files.len(), 10);
        for p in files {
            let mut lib = Library::builtin().unwrap();
            let f = lib.add_file(&p).unwrap();
            assert_eq!(lib.questions(&f).unwrap().len(), 1, "{}", p.display());
            assert!(!f.expect.is_empty(), "{}", p.display());
        }
    }

    #[test]
    fn the_variant_files_parse_and_each_asks_one_question() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocols/variants");
        let mut files = Vec::new();
        collect(&root, &mut files, 0).unwrap();
        assert_eq!(files.len(), 5);
        for p in files {
            let mut lib = Library::builtin().unwrap();
            let f = lib.add_file(&p).unwrap();
            let qs = lib.questions(&f).unwrap();
            assert_eq!(qs.len(), 1, "{}", p.display());
            assert!(!f.expect.is_empty(), "{}", p.display());
        }
    }

    #[test]
    fn an_rdma_row_runs_the_dm_free_timeline_and_keeps_the_vfio_hashes() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.rdma-export.gpu").unwrap();
        assert_eq!(c.spec.exporter, ExporterKind::RdmaDm);
        assert_eq!(c.spec.trigger, Trigger::DmFree);
        // A protocol without mmap hashes as before the field existed (the
        // hash MATRIX.md's token of this cell carries); one with it does
        // not hash like the same protocol without it.
        let v10 = lib.find("matrix.v10-three-state.gpu-lazy.jobs1").unwrap();
        assert_eq!(format!("{:016x}", v10.hash()), "922c04f64a29e81b");
        let mut m = v10.clone();
        let mut p = (*m.spec.protocol).clone();
        p.mmap = Some(dmabuf_core::revoke::MmapFault::MemoryLock);
        m.spec.protocol = Arc::new(p);
        assert_ne!(m.hash(), v10.hash());
        // So do the GPU's idle read-ahead passes: only a count other than
        // the default enters the hash.
        let mut m = v10.clone();
        m.spec.importers[0].read_ahead_idle_passes = 1;
        assert_ne!(m.hash(), v10.hash());
        // A trigger of one exporter kind is refused for the other.
        let mut lib2 = Library::builtin().unwrap();
        let f = lib2
            .add_text(
                "s.toml",
                "[scenario]\nname = \"s\"\nexporter = \"v6-final\"\nimporters = [\"gpu\"]\ntrigger = \"dm-free\"\n",
            )
            .unwrap();
        let e = lib2.questions(&f).unwrap_err();
        assert!(e.message.contains("needs an rdma-dm exporter"), "{e}");
        let f = lib2
            .add_text(
                "t.toml",
                "[scenario]\nname = \"t\"\nexporter = \"rdma-export\"\nimporters = [\"gpu\"]\ntrigger = \"flr\"\n",
            )
            .unwrap();
        let e = lib2.questions(&f).unwrap_err();
        assert!(e.message.contains("dm-free, disassociate or close"), "{e}");
    }

    #[test]
    fn names_resolve_including_cells_and_shrunk_workloads() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.v6-final.gpu").unwrap();
        assert_eq!(c.spec.protocol.name, "v6-final");
        assert_eq!(c.spec.importers[0].name, "gpu");
        let s = lib.find("matrix.v6-final.gpu.jobs1").unwrap();
        assert_eq!(s.spec.jobs, 1);
        assert_ne!(s.hash(), c.hash(), "the workload is part of the hash");
        assert!(lib.find("matrix.v6-final.nope").is_err());
        assert!(lib.find("vfio-iommufd-flr").is_ok());
        assert!(lib.find("vfio-iommufd-flr.jobs0").is_err());
    }

    #[test]
    fn an_idle_suffix_caps_the_read_ahead_passes_of_the_importers_that_read_ahead() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.v4-bookkeep-wait.gpu").unwrap();
        assert!(c.spec.importers[0].read_ahead_idle_passes > 1);
        let s = lib.find("matrix.v4-bookkeep-wait.gpu.idle1.jobs1").unwrap();
        assert_eq!(s.name, "matrix.v4-bookkeep-wait.gpu.idle1.jobs1");
        assert_eq!(s.spec.importers[0].read_ahead_idle_passes, 1);
        assert_eq!(s.spec.jobs, 1);
        assert_ne!(
            s.hash(),
            lib.find("matrix.v4-bookkeep-wait.gpu.jobs1")
                .unwrap()
                .hash()
        );
        // In a mix only the member that reads ahead changes.
        let m = lib.find("matrix.v6-final.iommufd+gpu.idle0").unwrap();
        assert_eq!(m.spec.importers[1].read_ahead_idle_passes, 0);
        assert!(!m.spec.importers[0].read_ahead);
        // Nothing reads ahead: refused, naming why; beyond the file
        // format's limit: unknown.
        let e = lib.find("matrix.v6-final.iommufd.idle1").unwrap_err();
        assert!(e.message.contains("reads ahead"), "{e}");
        assert!(lib.find("matrix.v6-final.gpu.idle17").is_err());
        // Either order is the same world.
        assert_eq!(
            lib.find("matrix.v4-bookkeep-wait.gpu.jobs1.idle1")
                .unwrap()
                .hash(),
            s.hash()
        );
    }

    #[test]
    fn an_ra_unordered_suffix_leaves_the_speculative_reads_of_a_world_unordered() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.v4-bookkeep-wait.gpu").unwrap();
        assert!(!c.spec.read_ahead_unordered);
        let u = lib
            .find("matrix.v4-bookkeep-wait.gpu.idle1.jobs1.ra-unordered")
            .unwrap();
        assert!(u.spec.read_ahead_unordered);
        assert_eq!(u.spec.jobs, 1);
        // Its own world: its tokens replay only in it.
        let o = lib.find("matrix.v4-bookkeep-wait.gpu.idle1.jobs1").unwrap();
        assert_ne!(u.hash(), o.hash());
        assert_eq!(
            lib.find("matrix.v4-bookkeep-wait.gpu.ra-unordered.jobs1.idle1")
                .unwrap()
                .hash(),
            u.hash()
        );
        // Nothing reads ahead: refused, naming why.
        let e = lib
            .find("matrix.v6-final.iommufd.ra-unordered")
            .unwrap_err();
        assert!(e.message.contains("reads ahead"), "{e}");
    }

    #[test]
    fn a_stall_remap_suffix_adds_the_re_map_stall_point_to_a_cycle_only() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.v6-final.gpu").unwrap();
        assert!(!c.spec.stall_in_remap);
        let s = lib.find("matrix.v6-final.gpu.stall-remap").unwrap();
        assert_eq!(s.name, "matrix.v6-final.gpu.stall-remap");
        assert!(s.spec.stall_in_remap);
        // A different question, so a different hash.
        assert_ne!(s.hash(), c.hash());
        // With the other suffixes, in either order.
        assert_eq!(
            lib.find("matrix.v6-final.gpu.stall-remap.jobs1")
                .unwrap()
                .hash(),
            lib.find("matrix.v6-final.gpu.jobs1.stall-remap")
                .unwrap()
                .hash()
        );
        // No cycle, no re-map: refused, naming why.
        let e = lib
            .find("matrix.rdma-export.rdma-odp.stall-remap")
            .unwrap_err();
        assert!(e.message.contains("no cycle"), "{e}");
        // The file key: the same world, and refused without a cycle.
        let mut l2 = Library::builtin().unwrap();
        let f = l2
            .add_text(
                "r.toml",
                "[scenario]\nname = \"r\"\nexporter = \"v6-final\"\nimporters = [\"gpu\"]\ntrigger = \"flr-cycle\"\nstall_in_remap = true\n",
            )
            .unwrap();
        let q = l2.questions(&f).unwrap();
        assert!(q[0].spec.stall_in_remap);
        let f = l2
            .add_text(
                "n.toml",
                "[scenario]\nname = \"n\"\nexporter = \"v6-final\"\nimporters = [\"gpu\"]\ntrigger = \"flr\"\nstall_in_remap = true\n",
            )
            .unwrap();
        let e = l2.questions(&f).unwrap_err();
        assert!(e.message.contains("stall_in_remap needs a cycle"), "{e}");
    }

    #[test]
    fn a_turns_suffix_makes_the_importers_of_a_mix_take_turns() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.v6-final.iommufd+gpu").unwrap();
        assert!(!c.spec.importers_take_turns);
        let t = lib
            .find("matrix.v6-final.iommufd+gpu.idle1.jobs1.turns")
            .unwrap();
        assert_eq!(t.name, "matrix.v6-final.iommufd+gpu.idle1.jobs1.turns");
        assert!(t.spec.importers_take_turns);
        assert_eq!(t.spec.jobs, 1);
        assert_eq!(t.spec.importers[1].read_ahead_idle_passes, 1);
        // A world of its own (its tokens must not replay in the cell), and
        // the suffixes in any order name the same one.
        let small = lib.find("matrix.v6-final.iommufd+gpu.idle1.jobs1").unwrap();
        assert_ne!(t.hash(), small.hash());
        assert_eq!(
            lib.find("matrix.v6-final.iommufd+gpu.turns.jobs1.idle1")
                .unwrap()
                .hash(),
            t.hash()
        );
        // One importer: nothing to take turns with.
        let e = lib.find("matrix.v6-final.gpu.turns").unwrap_err();
        assert!(e.message.contains("one importer"), "{e}");
        // A scenario file asks for it by name.
        let mut lib2 = Library::builtin().unwrap();
        let f = lib2
            .add_text(
                "t.toml",
                "[scenario]\nname = \"t\"\nexporter = \"v6-final\"\nimporters = [\"iommufd\", \"gpu\"]\ntrigger = \"flr\"\nimporters_take_turns = true\n",
            )
            .unwrap();
        let q = lib2.questions(&f).unwrap();
        assert!(q[0].spec.importers_take_turns);
        assert_eq!(q[0].spec.importers.len(), 2);
        // With one importer it would mean nothing: refused.
        let f = lib2
            .add_text(
                "u.toml",
                "[scenario]\nname = \"u\"\nexporter = \"v6-final\"\nimporters = [\"gpu\"]\ntrigger = \"flr\"\nimporters_take_turns = true\n",
            )
            .unwrap();
        let e = lib2.questions(&f).unwrap_err();
        assert!(e.message.contains("two importers or more"), "{e}");
    }

    #[test]
    fn a_mix_is_a_column_whose_cells_hold_each_member_once() {
        let lib = Library::builtin().unwrap();
        let c = lib.find("matrix.v6-final.iommufd+gpu").unwrap();
        let names: Vec<&str> = c.spec.importers.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["iommufd", "gpu"]);
        assert!(c.spec.importers.iter().all(|i| i.count == 1));
        let mut lib = Library::builtin().unwrap();
        let e = lib
            .add_text(
                "m.toml",
                "[[mix]]\nname = \"gpu+nope\"\nimporters = [\"gpu\", \"nope\"]\n",
            )
            .unwrap_err();
        assert_eq!((e.line, e.col), (3, 22), "{e}");
        assert!(
            e.message.contains("unknown importer 'nope' in a mix"),
            "{e}"
        );
        let f = lib
            .add_text(
                "m.toml",
                "[[mix]]\nname = \"gpu+lying\"\nimporters = [\"gpu\", \"lying\"]\n",
            )
            .unwrap();
        let qs = lib.questions(&f).unwrap();
        assert_eq!(
            qs.len(),
            12,
            "a mix file is crossed with every protocol that revokes"
        );
        assert_eq!(qs[0].spec.importers.len(), 2);
    }

    #[test]
    fn redefining_a_builtin_is_an_error_naming_both_files() {
        let mut lib = Library::builtin().unwrap();
        let e = lib
            .add_text(
                "mine.toml",
                "[[importer]]\nname = \"gpu\"\nbase = \"gpu\"\n",
            )
            .unwrap_err();
        assert!(
            e.message
                .contains("already defined in protocols/importers/gpu.toml"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_reference_points_at_it() {
        let lib = Library::builtin().unwrap();
        let f = file::parse(
            "s.toml",
            "[scenario]\nname = \"s\"\nexporter = \"v6-final\"\nimporters = [\"gpu\", \"gpuu\"]\n",
        )
        .unwrap();
        let e = lib.questions(&f).unwrap_err();
        assert_eq!((e.path.as_str(), e.line, e.col), ("s.toml", 4, 22), "{e}");
        assert!(e.message.contains("unknown importer 'gpuu'"));
    }
}
