//! `--shard K/N` and `dmabuf merge`: four shards of a matrix (and of a
//! protocol file's questions) run locally, merged, equal the unsharded run
//! in everything but wall time.

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
