//! What `check` tells a user beyond the verdicts: for a DPOR search that
//! stops at its budget, the smaller world the matrix's second proof
//! attempt searches instead, by a name that resolves.

use std::process::Command;

fn check(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "{args:?}: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const HINT: &str = "a smaller world, the one the matrix's second proof attempt searches: ";

fn dpor(scenario: &str) -> String {
    check(&[scenario, "--strategy", "dpor", "--schedules", "20"])
}

#[test]
fn a_search_that_stops_at_its_budget_names_the_smaller_world_the_matrix_searches() {
    // A mix: one job, one idle pass, the importers taking turns.
    let out = dpor("matrix.v6-final.iommufd+gpu");
    let want = format!("{HINT}matrix.v6-final.iommufd+gpu.idle1.jobs1.turns ");
    assert!(out.contains(&want), "{out}");
    // One importer: one job, one idle pass.
    let out = dpor("matrix.v4-bookkeep-wait.gpu");
    let want = format!("{HINT}matrix.v4-bookkeep-wait.gpu.idle1.jobs1 ");
    assert!(out.contains(&want), "{out}");
    // The world named is one `check` runs, and being the smallest, its
    // own search names none.
    let out = dpor("matrix.v6-final.iommufd+gpu.idle1.jobs1.turns");
    assert!(
        out.contains("scenario matrix.v6-final.iommufd+gpu.idle1.jobs1.turns"),
        "{out}"
    );
    assert!(!out.contains(HINT), "{out}");
    // Nor does a search that finished, or sampling.
    let out = check(&[
        "matrix.v6-final.iommufd",
        "--strategy",
        "dpor",
        "--schedules",
        "200",
    ]);
    assert!(out.contains("exhaustive") && !out.contains(HINT), "{out}");
    let out = check(&["matrix.v6-final.iommufd+gpu", "--schedules", "4"]);
    assert!(!out.contains(HINT), "{out}");
}
