//! `--stall-in-remap`: the fourth point where a stalled-userspace run
//! stalls userspace, as `check` reports it.

use serde_json::Value;
use std::process::Command;

/// `dmabuf check <args> --json`, parsed; exit 0 or 1 (a verdict).
fn check(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dmabuf"))
        .arg("check")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "{args:?}: {out:?}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stalled_search(scenario: &str, flag: bool) -> Value {
    let mut args = vec![
        scenario,
        "--strategy",
        "dpor",
        "--properties",
        "l-bounded",
        "--schedules",
        "4000",
    ];
    if flag {
        args.push("--stall-in-remap");
    }
    check(&args)
}

#[test]
fn stall_in_remap_checks_the_stall_remap_world_whose_stalled_search_is_larger() {
    let without = stalled_search("matrix.v6-final.iommufd", false);
    let with = stalled_search("matrix.v6-final.iommufd", true);
    let by_name = stalled_search("matrix.v6-final.iommufd.stall-remap", false);
    assert_eq!(without["scenario"], "matrix.v6-final.iommufd");
    assert_eq!(with["scenario"], "matrix.v6-final.iommufd.stall-remap");
    assert_eq!(by_name["scenario"], with["scenario"]);
    for r in [&without, &with] {
        assert_eq!(r["properties"]["l-bounded"]["exhaustive"], true, "{r}");
    }
    // The option and the name are one question; the new point's executions
    // come on top of the other three's.
    assert_eq!(by_name["runs"], with["runs"]);
    let runs = |r: &Value| r["runs"].as_u64().unwrap();
    assert!(runs(&with) > runs(&without), "{with} {without}");
    // A world without a cycle has no re-map: the option changes nothing.
    let rdma = stalled_search("matrix.rdma-export.rdma-odp", true);
    assert_eq!(rdma["scenario"], "matrix.rdma-export.rdma-odp");
    assert_eq!(
        rdma["runs"],
        stalled_search("matrix.rdma-export.rdma-odp", false)["runs"]
    );
}
