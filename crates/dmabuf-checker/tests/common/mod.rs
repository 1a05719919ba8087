//! What the protocol-file suites (`fixes.rs`, `variants.rs`) share: a file
//! is judged as `dmabuf check FILE` decides its verdict.

use dmabuf_checker::explore::{CheckReport, expectations};
use dmabuf_checker::scenario::Scenario;

/// Asserts that `r` (a check of `sc`, from file `name`) ran without errors,
/// met every expectation of the file, and violated nothing the file does
/// not expect.
pub fn assert_judged(name: &str, sc: &Scenario, r: &CheckReport) {
    assert!(r.errors.is_empty(), "{name}: run errors {:?}", r.errors);
    let ex = expectations(sc, r).unwrap();
    for e in &ex {
        assert!(
            e.met,
            "{name}: {} expected {:?}, found {:?} ({})",
            e.property, e.expected, e.found, e.at
        );
    }
    for p in r.properties.iter().filter(|p| !p.holds()) {
        assert!(
            ex.iter().any(|e| e.property == p.property),
            "{name}: {} violated without an expectation saying so",
            p.property
        );
    }
}
