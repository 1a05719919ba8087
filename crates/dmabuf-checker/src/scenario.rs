//! Built-in scenarios: every cell of the policy × importer matrix, plus the
//! named situations from the thread. A scenario is data (a [`WorldSpec`]);
//! its verdicts come only from running it.

use dmabuf_drivers::policy::RevokePolicy;
use dmabuf_drivers::world::{ExporterKind, ImporterKind, ImporterSpec, Trigger, WorldSpec};

/// A named, described world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Name (`vfio-iommufd-flr`, `matrix.v6-final.gpu`, ...).
    pub name: String,
    /// What it exercises.
    pub description: String,
    /// The world.
    pub spec: WorldSpec,
}

/// A scenario name that is not built in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario '{0}' (see `dmabuf scenarios`)")]
pub struct UnknownScenario(pub String);

fn named(name: &str, description: &str, spec: WorldSpec) -> Scenario {
    Scenario {
        name: name.to_owned(),
        description: description.to_owned(),
        spec,
    }
}

/// The scenario of one matrix cell: VFIO under `policy`, one importer of
/// `kind`, revoked by an FLR while DMA is in flight.
pub fn matrix_cell(policy: RevokePolicy, kind: ImporterKind) -> Scenario {
    named(
        &format!("matrix.{}.{}", policy.name(), kind.name()),
        &format!(
            "VFIO ({}) exporting a BAR to one {} importer; FLR with DMA in flight",
            policy.name(),
            kind.name()
        ),
        WorldSpec::vfio(policy, kind),
    )
}

/// Every built-in scenario: the named ones first, then the matrix cells.
pub fn builtins() -> Vec<Scenario> {
    let v6 = RevokePolicy::V6Final;
    let mut out = vec![
        named(
            "vfio-iommufd-flr",
            "the thread's main use case: VFIO exports a BAR, iommufd maps it for a VM, FLR with DMA in flight",
            WorldSpec {
                jobs: 3,
                ..WorldSpec::vfio(v6, ImporterKind::Iommufd)
            },
        ),
        named(
            "vfio-gpu-reset",
            "VFIO BAR imported by a GPU; VFIO_DEVICE_RESET while GPU jobs run",
            WorldSpec {
                trigger: Trigger::DeviceReset,
                ..WorldSpec::vfio(v6, ImporterKind::Gpu)
            },
        ),
        named(
            "two-importers",
            "iommufd and a GPU on the same buffer; FLR",
            WorldSpec {
                importers: vec![
                    ImporterSpec::one(ImporterKind::Iommufd),
                    ImporterSpec::one(ImporterKind::Gpu),
                ],
                ..WorldSpec::vfio(v6, ImporterKind::Iommufd)
            },
        ),
        named(
            "map-during-invalidate",
            "a GPU importer maps concurrently with the invalidation",
            WorldSpec {
                map_during_invalidate: true,
                ..WorldSpec::vfio(v6, ImporterKind::Gpu)
            },
        ),
        named(
            "unrevoke-cycle",
            "revoke, un-revoke, re-map, revoke again, then close",
            WorldSpec {
                trigger: Trigger::UnrevokeCycle,
                ..WorldSpec::vfio(v6, ImporterKind::Gpu)
            },
        ),
        named(
            "close-with-mappings",
            "the VFIO device is closed while iommufd and a GPU still map the BAR; a new device is then plugged at the same range",
            WorldSpec {
                importers: vec![
                    ImporterSpec::one(ImporterKind::Iommufd),
                    ImporterSpec::one(ImporterKind::Gpu),
                ],
                trigger: Trigger::Close,
                hotplug_after_close: true,
                ..WorldSpec::vfio(v6, ImporterKind::Iommufd)
            },
        ),
        named(
            "runtime-pm",
            "the exporter powers the device down (D3hot): it must not while mappings exist",
            WorldSpec {
                trigger: Trigger::D3hot,
                ..WorldSpec::vfio(v6, ImporterKind::Gpu)
            },
        ),
        named(
            "vram-eviction",
            "GPU VRAM exporter, GPU importer, DMA running while the buffer is evicted to system memory",
            WorldSpec {
                exporter: ExporterKind::GpuVram,
                trigger: Trigger::Eviction,
                ..WorldSpec::vfio(v6, ImporterKind::Gpu)
            },
        ),
    ];
    for p in RevokePolicy::ALL {
        for k in ImporterKind::ALL {
            out.push(matrix_cell(p, k));
        }
    }
    out
}

/// Looks a scenario up by name.
pub fn find(name: &str) -> Result<Scenario, UnknownScenario> {
    builtins()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| UnknownScenario(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_unique_names_and_cover_the_matrix() {
        let all = builtins();
        let mut names: Vec<_> = all.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(
            all.iter().filter(|s| s.name.starts_with("matrix.")).count(),
            64
        );
        for n in [
            "vfio-iommufd-flr",
            "vfio-gpu-reset",
            "two-importers",
            "map-during-invalidate",
            "unrevoke-cycle",
            "close-with-mappings",
            "runtime-pm",
            "vram-eviction",
        ] {
            assert!(find(n).is_ok(), "{n}");
        }
        assert_eq!(find("nope"), Err(UnknownScenario("nope".into())));
    }
}
