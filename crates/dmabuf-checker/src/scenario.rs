//! The checker's view of scenarios: a [`Scenario`] is a resolved world from
//! the protocol library (`dmabuf-scenario`): the built-in files plus any a
//! user adds. Its verdicts come only from running it.

pub use dmabuf_scenario::builtin::{Library, Scenario};
pub use dmabuf_scenario::file::FileError;

/// Every built-in scenario: the named ones first, then the matrix cells.
pub fn builtins() -> Result<Vec<Scenario>, FileError> {
    let lib = Library::builtin()?;
    let mut out = lib.named()?;
    for e in lib.rows() {
        for i in &lib.importers {
            out.push(lib.cell(e, i));
        }
    }
    Ok(out)
}

/// Looks a built-in scenario up by name.
pub fn find(name: &str) -> Result<Scenario, FileError> {
    Library::builtin()?.find(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_unique_names_and_cover_the_matrix() {
        let all = builtins().unwrap();
        let mut names: Vec<_> = all.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(
            all.iter().filter(|s| s.name.starts_with("matrix.")).count(),
            180,
            "12 rows (11 VFIO protocols and the RDMA exporter) x 15 columns"
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
            "vfio-mmap-gpu",
            "rdma-export-dm-free",
            "rdma-export-disassociate",
        ] {
            assert!(find(n).is_ok(), "{n}");
        }
        assert!(
            find("nope")
                .unwrap_err()
                .message
                .contains("unknown scenario 'nope'")
        );
    }
}
