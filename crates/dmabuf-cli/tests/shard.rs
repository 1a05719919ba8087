//! `--shard K/N` and `dmabuf merge`: four shards of a matrix (and of a
//! protocol file's questions) run locally, merged, equal the unsharded run
//! in everything but wall time. And `check --threads`: the two modes'
//! searches, or a file's questions, side by side give the same report as
//! one after the other.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dmabuf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dmabuf"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A folder with renamed copies of two exporters and three importers of
/// the built-in library: a 2 x 3 matrix of its own (6 cells, so 4 shards
/// hold 2, 2, 1 and 1).
fn small_library(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (file, old, new) in [
        ("exporters/v6-final.toml", "\"v6-final\"", "\"t-v6\""),
        (
            "exporters/v2-invalidate-only.toml",
            "\"v2-invalidate-only\"",
            "\"t-v2\"",
        ),
        ("importers/iommufd.toml", "\"iommufd\"", "\"t-iommufd\""),
        ("importers/static.toml", "\"static\"", "\"t-static\""),
        ("importers/rdma-odp.toml", "\"rdma-odp\"", "\"t-rdma-odp\""),
    ] {
        let text = std::fs::read_to_string(repo().join("protocols").join(file)).unwrap();
        assert!(text.contains(&format!("name = {old}")), "{file}");
        let text = text.replacen(&format!("name = {old}"), &format!("name = {new}"), 1);
        let name = Path::new(file).file_name().unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Removes the wall-time fields, which no two runs share.
fn without_times(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("elapsed-s");
            o.remove("schedules-per-s");
            o.values_mut().for_each(without_times);
        }
        Value::Array(a) => a.iter_mut().for_each(without_times),
        _ => {}
    }
}

fn run_json(args: &[&str]) -> (Value, i32) {
    let out = dmabuf().args(args).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, code)
}

#[test]
fn four_matrix_shards_merge_into_the_unsharded_matrix() {
    let tmp = std::env::temp_dir().join(format!("dmabuf-shard-test-{}", std::process::id()));
    let lib = tmp.join("lib");
    small_library(&lib);
    let lib_s = lib.to_str().unwrap();
    let common = [
        "matrix",
        lib_s,
        "--schedules",
        "3",
        "--proof-budget",
        "25",
        "--json",
        "--quiet",
    ];
    let (mut whole, whole_code) = run_json(&common);
    assert_eq!(whole["cells"].as_array().unwrap().len(), 6);
    let mut files = Vec::new();
    let mut held = 0;
    for k in 0..4 {
        let shard = format!("{k}/4");
        let mut args = common.to_vec();
        args.extend(["--shard", &shard]);
        let (part, _) = run_json(&args);
        assert_eq!(part["shard"], shard.as_str());
        held += part["cells"].as_array().unwrap().len();
        let f = tmp.join(format!("part{k}.json"));
        std::fs::write(&f, part.to_string()).unwrap();
        files.push(f);
    }
    assert_eq!(held, 6, "every cell in exactly one shard");
    // Given in any order.
    files.reverse();
    let mut args = vec!["merge", "--json"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let (mut merged, merged_code) = run_json(&args);
    assert_eq!(merged_code, whole_code, "same exit code");
    without_times(&mut whole);
    without_times(&mut merged);
    assert_eq!(merged, whole);

    // A missing shard is refused, naming it.
    let out = dmabuf()
        .args([
            "merge",
            files[0].to_str().unwrap(),
            files[1].to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing shard(s): 0/4, 1/4"), "{err}");
    // So is a shard given twice.
    let out = dmabuf()
        .args([
            "merge",
            files[0].to_str().unwrap(),
            files[0].to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("given twice"));
    // And parts of runs with other budgets: here a mix budget.
    let mix = whole["mix-budget"]
        .as_u64()
        .expect("the mix budget is reported");
    let mut other: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    other["mix-budget"] = (mix + 1).into();
    std::fs::write(&files[0], other.to_string()).unwrap();
    let mut args = vec!["merge"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = dmabuf().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"mix-budget\" differs"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn four_check_shards_of_a_file_merge_into_the_unsharded_check() {
    let tmp = std::env::temp_dir().join(format!("dmabuf-shard-check-{}", std::process::id()));
    let lib = tmp.join("lib");
    small_library(&lib);
    // An importer file alone is crossed with every exporter of the
    // library: one question per exporter row.
    let file = lib.join("iommufd.toml");
    let f = file.to_str().unwrap();
    let common = ["check", f, "--schedules", "3", "--json", "--quiet"];
    let (mut whole, whole_code) = run_json(&common);
    let n = whole.as_array().map_or(1, Vec::len);
    assert!(n >= 4, "{n} questions");
    let mut files = Vec::new();
    for k in 0..4 {
        let shard = format!("{k}/4");
        let mut args = common.to_vec();
        args.extend(["--shard", &shard]);
        let (part, _) = run_json(&args);
        assert_eq!(part["questions"], n);
        let p = tmp.join(format!("check{k}.json"));
        std::fs::write(&p, part.to_string()).unwrap();
        files.push(p);
    }
    let mut args = vec!["merge", "--json"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let (mut merged, merged_code) = run_json(&args);
    assert_eq!(merged_code, whole_code);
    without_times(&mut whole);
    without_times(&mut merged);
    assert_eq!(merged, whole);
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn budgets_beyond_the_limit_are_usage_errors() {
    for flag in ["--proof-budget", "--reduced-budget", "--mix-budget"] {
        let out = dmabuf()
            .args(["matrix", flag, "100000000000", "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{flag}"
        );
    }
}

#[test]
fn bad_shards_are_usage_errors() {
    for bad in ["4/4", "1", "a/2", "0/0", "1/x"] {
        let out = dmabuf()
            .args(["matrix", "--shard", bad, "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--shard"),
            "{bad}"
        );
    }
}

/// Runs `check SCENARIO args --json --quiet` whole and in `n` shards,
/// merges the parts; returns (whole, merged) without wall times, and both
/// exit codes.
fn whole_and_merged(
    scenario: &str,
    args: &[&str],
    n: usize,
    tag: &str,
) -> (Value, Value, i32, i32) {
    let tmp = std::env::temp_dir().join(format!("dmabuf-shard-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut common = vec!["check", scenario];
    common.extend(args);
    common.extend(["--json", "--quiet"]);
    let (mut whole, whole_code) = run_json(&common);
    let mut files = Vec::new();
    for k in 0..n {
        let shard = format!("{k}/{n}");
        let mut a = common.clone();
        a.extend(["--shard", &shard]);
        let (part, _) = run_json(&a);
        assert_eq!(part["shard"], shard.as_str());
        assert_eq!(part["questions"], 1);
        // Every shard holds a part of the one question's search.
        let r = &part["reports"][0];
        assert_eq!(r["index"], 0, "{part}");
        assert!(r["search-split"].is_array(), "{part}");
        let f = tmp.join(format!("part{k}.json"));
        std::fs::write(&f, part.to_string()).unwrap();
        files.push(f);
    }
    let mut m = vec!["merge", "--json"];
    m.extend(files.iter().rev().map(|f| f.to_str().unwrap()));
    let (mut merged, merged_code) = run_json(&m);
    std::fs::remove_dir_all(&tmp).ok();
    without_times(&mut whole);
    without_times(&mut merged);
    (whole, merged, whole_code, merged_code)
}

/// The fields a split DPOR search may count differently (docs/json.md):
/// the split node is fully expanded, so the parts may run executions the
/// whole search never needed (sleep-set blocked ones, mostly).
fn without_search_counts(v: &mut Value) -> Vec<(String, u64, u64)> {
    let mut counts = Vec::new();
    if let Some(o) = v.as_object_mut() {
        counts.push((
            "runs".into(),
            o.remove("runs").unwrap().as_u64().unwrap(),
            0,
        ));
    }
    if let Some(props) = v["properties"].as_object_mut() {
        for (name, p) in props.iter_mut() {
            let o = p.as_object_mut().unwrap();
            let s = o.remove("schedules").unwrap().as_u64().unwrap();
            let b = o.remove("sleep-blocked").unwrap().as_u64().unwrap();
            o.remove("max-depth");
            // A whole DPOR search that finished knows its size exactly (the
            // executions of its modes); a split one has no estimate.
            match o.remove("estimated-executions") {
                Some(Value::Object(e)) => {
                    let total: u64 = e.values().map(|n| n.as_u64().unwrap()).sum();
                    if p_exhaustive(o) {
                        assert_eq!(total, s, "{name}: the finished search's size");
                    }
                }
                Some(Value::Null) | None => {}
                Some(e) => panic!("{name}: estimated-executions {e}"),
            }
            counts.push((name.clone(), s, b));
        }
    }
    counts
}

fn p_exhaustive(o: &serde_json::Map<String, Value>) -> bool {
    o.get("exhaustive").and_then(Value::as_bool) == Some(true)
}

#[test]
fn four_shards_of_one_dpor_search_merge_into_the_whole_search() {
    let (mut whole, mut merged, wc, mc) = whole_and_merged(
        "matrix.v6-final.iommufd",
        &["--strategy", "dpor", "--schedules", "20000"],
        4,
        "dpor",
    );
    assert_eq!(wc, 0);
    assert_eq!(mc, wc, "same exit code");
    // The whole search is a proof, and so is the merged one.
    for (_, p) in whole["properties"].as_object().unwrap() {
        assert_eq!(p["verdict"], "proved", "{whole}");
    }
    // The whole search knows its size; the parts do not (their merge has
    // no estimate).
    assert!(whole["properties"]["s-fence"]["estimated-executions"].is_object());
    assert!(merged["properties"]["s-fence"]["estimated-executions"].is_null());
    let w = without_search_counts(&mut whole);
    let m = without_search_counts(&mut merged);
    // Never fewer executions than the whole search: every class it ran is
    // in some part.
    for ((name, ws, _), (name2, ms, _)) in w.iter().zip(&m) {
        assert_eq!(name, name2);
        assert!(ms >= ws, "{name}: {ms} < {ws}");
    }
    // Everything else is the whole search's: answers, exhaustiveness,
    // verdicts, expectations.
    assert_eq!(merged, whole);
}

#[test]
fn a_violation_in_a_split_search_is_a_violation_of_the_merged_result_and_replays() {
    let (whole, merged, wc, mc) = whole_and_merged(
        "matrix.v2-invalidate-only.gpu",
        &["--strategy", "dpor", "--schedules", "150"],
        4,
        "violation",
    );
    assert_eq!(wc, 1);
    assert_eq!(mc, 1, "the merged result fails as the whole one does");
    assert_eq!(merged["verdict"], "fail");
    assert_eq!(merged["all-hold"], false);
    let p = &merged["properties"]["s-fence"];
    assert_eq!(p["result"], "violated");
    assert_eq!(p["verdict"], "violated");
    assert_eq!(p["answer"], whole["properties"]["s-fence"]["answer"]);
    assert!(p["violations"].as_u64().unwrap() > 0);
    // The token is a schedule of the scenario, not of a shard: it replays
    // without any split, and shows the violation (exit 1).
    let token = p["replay"].as_str().unwrap();
    let out = dmabuf().args(["replay", token]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The lowest shard with a counterexample is shard 0, which searches
    // below the whole search's first choice exactly as it does: the same
    // counterexample.
    assert_eq!(p["replay"], whole["properties"]["s-fence"]["replay"]);
}

#[test]
fn random_schedules_split_by_index_merge_into_exactly_the_whole_check() {
    let (whole, merged, wc, mc) = whole_and_merged(
        "matrix.v6-final.iommufd",
        &["--strategy", "random", "--schedules", "24"],
        3,
        "random",
    );
    assert_eq!(mc, wc);
    assert_eq!(whole["runs"], 30);
    assert_eq!(merged, whole);
}

#[test]
fn a_pct_check_of_one_scenario_is_not_split_but_refused() {
    let out = dmabuf()
        .args([
            "check",
            "matrix.v6-final.iommufd",
            "--shard",
            "1/4",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shard") && err.contains("PCT"), "{err}");
}

#[test]
fn bad_check_shards_are_usage_errors() {
    for bad in ["5/4", "0/0", "4/4"] {
        let out = dmabuf()
            .args([
                "check",
                "matrix.v6-final.iommufd",
                "--strategy",
                "dpor",
                "--shard",
                bad,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--shard"),
            "{bad}"
        );
    }
}

#[test]
fn three_shards_of_one_dfs_search_merge_into_exactly_the_whole_search() {
    // The first decision's branches partition the tree: the same
    // executions, the same counts, the same depth bound hit.
    let (whole, merged, wc, mc) = whole_and_merged(
        "matrix.v6-final.iommufd",
        &["--strategy", "dfs", "--depth", "5", "--schedules", "2000"],
        3,
        "dfs",
    );
    assert_eq!(mc, wc);
    assert_eq!(whole["properties"]["s-fence"]["bounds-hit"][0], "depth");
    assert_eq!(merged, whole);
}

#[test]
fn a_check_on_two_threads_equals_the_check_on_one() {
    // Violations in both modes (the liar's device writes after the fence
    // wait; l-bounded with userspace stalled), a DPOR search per mode.
    let args = |t: &'static str| {
        [
            "check",
            "matrix.v6-final.lying",
            "--strategy",
            "dpor",
            "--schedules",
            "40",
            "--json",
            "--threads",
            t,
        ]
    };
    let (mut one, c1) = run_json(&args("1"));
    let (mut two, c2) = run_json(&args("2"));
    assert_eq!((c1, c2), (1, 1), "violations: exit 1");
    without_times(&mut one);
    without_times(&mut two);
    assert_eq!(one, two);
    // A file of several questions: the questions side by side.
    let tmp = std::env::temp_dir().join(format!("dmabuf-threads-check-{}", std::process::id()));
    let lib = tmp.join("lib");
    small_library(&lib);
    let file = lib.join("iommufd.toml");
    let f = file.to_str().unwrap();
    let args = |t: &'static str| {
        [
            "check",
            f,
            "--schedules",
            "6",
            "--json",
            "--quiet",
            "--threads",
            t,
        ]
    };
    let (mut one, c1) = run_json(&args("1"));
    let (mut two, c2) = run_json(&args("2"));
    assert!(one.as_array().is_some_and(|a| a.len() >= 4), "{one}");
    assert_eq!(c1, c2);
    without_times(&mut one);
    without_times(&mut two);
    assert_eq!(one, two);
    std::fs::remove_dir_all(&tmp).ok();
    for bad in ["0", "257", "x"] {
        let out = dmabuf()
            .args(["check", "matrix.v6-final.lying", "--threads", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--threads"),
            "{bad}"
        );
    }
}
