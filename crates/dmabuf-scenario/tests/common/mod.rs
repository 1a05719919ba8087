//! The drivers' VFIO fixture (shared, not copied) plus the built-in
//! protocols and importers by name, for the scenario tests.
#![allow(dead_code)]

#[path = "../../../dmabuf-drivers/tests/common/mod.rs"]
mod fixture;
#[allow(unused_imports)]
pub use fixture::*;

use dmabuf_core::sync::Arc;

/// A built-in protocol by name.
pub fn p(name: &str) -> Arc<dmabuf_core::revoke::Protocol> {
    let lib = dmabuf_scenario::builtin::Library::builtin().unwrap();
    Arc::new(lib.exporter(name).unwrap().protocol.clone())
}

/// A built-in importer by name.
pub fn k(name: &str) -> dmabuf_scenario::world::ImporterSpec {
    let lib = dmabuf_scenario::builtin::Library::builtin().unwrap();
    lib.importer(name).unwrap().spec.clone()
}

/// Every built-in VFIO protocol, in matrix order.
pub fn policies() -> Vec<Arc<dmabuf_core::revoke::Protocol>> {
    let lib = dmabuf_scenario::builtin::Library::builtin().unwrap();
    lib.rows()
        .into_iter()
        .filter(|e| e.kind == dmabuf_scenario::world::ExporterKind::Vfio)
        .map(|e| Arc::new(e.protocol.clone()))
        .collect()
}

/// Every built-in importer, in matrix order.
pub fn kinds() -> Vec<dmabuf_scenario::world::ImporterSpec> {
    let lib = dmabuf_scenario::builtin::Library::builtin().unwrap();
    lib.importers.iter().map(|i| i.spec.clone()).collect()
}
