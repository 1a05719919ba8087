//! Comparison of the two back ends and the agreement table.
//!
//! A case agrees when return value, errno and extra are equal after
//! [`normalise`], which masks only what differs between any two runs of the
//! same kernel: fence-context numbers inside sync_file names.

use crate::cases::{Part, area};
use crate::serial::{Outcome, PartRun};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Masks fence-context numbers: in `<timeline><context>-<seqno>`, the digit
/// run right before the last `-<digits>` of a `name=` value becomes `#`.
pub fn normalise(extra: &str) -> String {
    extra
        .split(',')
        .map(|kv| match kv.strip_prefix("name=") {
            Some(v) => format!("name={}", mask_context(v)),
            None => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn mask_context(v: &str) -> String {
    let Some((head, seq)) = v.rsplit_once('-') else {
        return v.to_owned();
    };
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return v.to_owned();
    }
    let digits = head.bytes().rev().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits == head.len() {
        return v.to_owned();
    }
    format!("{}#-{seq}", &head[..head.len() - digits])
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Case id.
    pub id: String,
    /// Its area.
    pub area: String,
    /// Its part.
    pub part: Part,
    /// The kernel's result.
    pub kernel: Outcome,
    /// Ours.
    pub model: Option<Outcome>,
    /// Whether they agree.
    pub agreed: bool,
}

/// The full comparison.
#[derive(Clone, Debug)]
pub struct Report {
    /// The kernel release (`uname -r`) of every part.
    pub releases: BTreeMap<Part, (String, String)>,
    /// Rows in case-list order.
    pub rows: Vec<Row>,
}

fn same(a: &Outcome, b: &Outcome) -> bool {
    a.ret == b.ret && a.errno == b.errno && normalise(&a.extra) == normalise(&b.extra)
}

impl Report {
    /// Builds the rows for the given runs; `model` holds our results per
    /// part (a missing case counts as a disagreement, never a skip).
    pub fn build(runs: &[PartRun], model: &BTreeMap<Part, BTreeMap<String, Outcome>>) -> Self {
        let mut rows = Vec::new();
        let mut releases = BTreeMap::new();
        for run in runs {
            releases.insert(run.part, (run.release.clone(), run.version.clone()));
            let ours = model.get(&run.part);
            for id in run.part.cases() {
                let Some(k) = run.results.get(*id) else {
                    continue;
                };
                let m = ours.and_then(|o| o.get(*id)).cloned();
                let agreed = m.as_ref().is_some_and(|m| same(k, m));
                rows.push(Row {
                    id: (*id).to_owned(),
                    area: area(id).to_owned(),
                    part: run.part,
                    kernel: k.clone(),
                    model: m,
                    agreed,
                });
            }
        }
        Report { releases, rows }
    }

    /// (agreed, total) over all rows.
    pub fn totals(&self) -> (usize, usize) {
        (
            self.rows.iter().filter(|r| r.agreed).count(),
            self.rows.len(),
        )
    }

    /// (area, agreed, total), areas in first-seen order.
    pub fn per_area(&self) -> Vec<(String, usize, usize)> {
        let mut v: Vec<(String, usize, usize)> = Vec::new();
        for r in &self.rows {
            let i = match v.iter().position(|(a, _, _)| *a == r.area) {
                Some(i) => i,
                None => {
                    v.push((r.area.clone(), 0, 0));
                    v.len() - 1
                }
            };
            v[i].2 += 1;
            if r.agreed {
                v[i].1 += 1;
            }
        }
        v
    }

    /// The human-readable table, ending with `agreed: N/M cases`.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for (part, (rel, ver)) in &self.releases {
            s.push_str(&format!("kernel ({}): {rel} {ver}\n", part.name()));
        }
        let fmt = |o: &Outcome| format!("{} {} {}", o.ret, o.errno, o.extra);
        let w = self
            .rows
            .iter()
            .map(|r| r.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        s.push_str(&format!("{:<w$}  {:<5}  kernel | ours\n", "case", "agree"));
        for r in &self.rows {
            let ours = r
                .model
                .as_ref()
                .map(fmt)
                .unwrap_or_else(|| "(no result)".into());
            if r.agreed {
                s.push_str(&format!("{:<w$}  yes    {}\n", r.id, fmt(&r.kernel)));
            } else {
                s.push_str(&format!(
                    "{:<w$}  NO     {} | {}\n",
                    r.id,
                    fmt(&r.kernel),
                    ours
                ));
            }
        }
        s.push_str("\nper area:\n");
        for (a, n, m) in self.per_area() {
            s.push_str(&format!("  {a:<22} {n}/{m}\n"));
        }
        let (n, m) = self.totals();
        s.push_str(&format!("agreed: {n}/{m} cases\n"));
        s
    }

    /// The same as JSON.
    pub fn json(&self) -> Value {
        let (n, m) = self.totals();
        let o = |o: &Outcome| json!({"ret": o.ret, "errno": o.errno, "extra": o.extra});
        json!({
            "status": "ran",
            "kernels": self.releases.iter().map(|(p, (r, v))| json!({"part": p.name(), "release": r, "version": v})).collect::<Vec<_>>(),
            "agreed": n,
            "total": m,
            "areas": self.per_area().into_iter().map(|(a, n, m)| json!({"area": a, "agreed": n, "total": m})).collect::<Vec<_>>(),
            "cases": self.rows.iter().map(|r| json!({
                "id": r.id, "area": r.area, "part": r.part.name(), "agreed": r.agreed,
                "kernel_release": self.releases.get(&r.part).map(|(rel, _)| rel.as_str()),
                "kernel": o(&r.kernel),
                "ours": r.model.as_ref().map(o),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_context_numbers_in_names_are_masked() {
        assert_eq!(
            normalise("name=vgem-unbound17-1,status=0,n=1"),
            "name=vgem-unbound#-1,status=0,n=1"
        );
        assert_eq!(normalise("name=stub-stub0-0"), "name=stub-stub#-0");
        assert_eq!(normalise("name=merged"), "name=merged");
        assert_eq!(
            normalise("name=detached-driver-signaled-timeli"),
            "name=detached-driver-signaled-timeli"
        );
        assert_eq!(normalise("size=16384,count=1"), "size=16384,count=1");
        assert_eq!(normalise("name=12-3"), "name=12-3");
    }

    #[test]
    fn a_missing_model_result_is_a_disagreement() {
        let mut results = BTreeMap::new();
        for id in Part::Vfio.cases() {
            results.insert((*id).to_owned(), Outcome::new(0, "0", ""));
        }
        let run = PartRun {
            part: Part::Vfio,
            release: "7.2.13+deb14-amd64".into(),
            version: "v".into(),
            results: results.clone(),
        };
        results.remove("vfio.probe");
        results.insert("vfio.null".into(), Outcome::new(-1, "EFAULT", ""));
        let model = BTreeMap::from([(Part::Vfio, results)]);
        let r = Report::build(&[run], &model);
        let (n, m) = r.totals();
        assert_eq!(m, Part::Vfio.cases().len());
        assert_eq!(n, m - 2);
        assert!(r.table().ends_with(&format!("agreed: {n}/{m} cases\n")));
        assert_eq!(r.json()["agreed"], n);
    }
}
