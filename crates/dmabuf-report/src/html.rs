//! The report: one self-contained HTML file (inline CSS, SVG and a few
//! lines of script; nothing loaded from anywhere).
//!
//! | part | content |
//! |---|---|
//! | header | what ran (strategy, schedules, seed) and the command that made the report |
//! | grid | rows: protocols (or scenarios of a `check`); columns: importers; each cell: attach refused, or one chip per property: held (proved when the search was exhaustive, else sampled) or violated (a link to its counterexample) |
//! | counterexamples | one section per distinct replay token: the cells and properties it violates, the violation, the hazard with its trace row, the outcome (a deadlock in kernel terms), the command that replays it, and its message sequence chart ([`crate::msc`]) |
//!
//! Input: what `dmabuf matrix --json` or `dmabuf check --json` printed
//! ([`Grid::from_json`]); a property's `verdict` (`"proved"`, `"sampled"`
//! or `"violated"`, from the matrix's proof attempts) is read when the JSON
//! has it, else `exhaustive`.

use crate::msc::{self, esc};
use dmabuf_core::trace::Event;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Every schedule (or every trace class) was run.
    Proved,
    /// The same, but of a smaller configuration of the cell (fewer jobs,
    /// fewer idle read-ahead passes, in a mix the importers taking turns)
    /// only.
    ProvedReduced,
    /// Sampled schedules, or a bounded search.
    Sampled,
}

/// One property's verdict in one cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prop {
    /// Property name.
    pub name: String,
    /// Whether a run violated it.
    pub violated: bool,
    /// Proved or sampled.
    pub proof: Proof,
    /// Violating runs.
    pub violations: u64,
    /// Judged runs.
    pub schedules: u64,
    /// The violation in words.
    pub detail: Option<String>,
    /// The hazard record.
    pub hazard: Option<String>,
    /// The replay token of its counterexample.
    pub token: Option<String>,
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Row (protocol or scenario).
    pub row: String,
    /// Column (importer).
    pub col: String,
    /// Why the exporter refused the attachment.
    pub refused: Option<String>,
    /// Verdicts.
    pub props: Vec<Prop>,
    /// Run errors.
    pub errors: Vec<String>,
}

/// The result being reported.
#[derive(Clone, Debug, Default)]
pub struct Grid {
    /// Row names.
    pub rows: Vec<String>,
    /// Column names.
    pub cols: Vec<String>,
    /// Cells (at most one per row and column).
    pub cells: Vec<Cell>,
    /// What ran, as label/value pairs.
    pub meta: Vec<(String, String)>,
}

fn s_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn props_of(v: &Value) -> Result<Vec<Prop>, String> {
    let Some(m) = v.as_object() else {
        return Err("'properties' is not an object".into());
    };
    let mut out = Vec::new();
    for (name, p) in m {
        let result = s_of(p, "result").ok_or_else(|| format!("property {name}: no 'result'"))?;
        // The checker's `verdict` (`proved`, `proved-reduced`, `sampled` or
        // `violated`) when present; older JSON: an exhaustive search is a
        // proof.
        let proof = match s_of(p, "verdict") {
            Some(s) if s == "proved" => Proof::Proved,
            Some(s) if s == "proved-reduced" => Proof::ProvedReduced,
            Some(_) => Proof::Sampled,
            None if p.get("exhaustive").and_then(Value::as_bool) == Some(true) => Proof::Proved,
            None => Proof::Sampled,
        };
        out.push(Prop {
            name: name.clone(),
            violated: result == "violated",
            proof,
            violations: p.get("violations").and_then(Value::as_u64).unwrap_or(0),
            schedules: p.get("schedules").and_then(Value::as_u64).unwrap_or(0),
            detail: s_of(p, "detail"),
            hazard: s_of(p, "hazard"),
            token: s_of(p, "replay"),
        });
    }
    Ok(out)
}

impl Grid {
    /// Reads a `matrix --json` object, a `check --json` object or an array
    /// of `check` objects.
    pub fn from_json(v: &Value) -> Result<Grid, String> {
        let mut g = Grid::default();
        if let Some(cells) = v.get("cells").and_then(Value::as_array) {
            let names = |k: &str| -> Vec<String> {
                v.get(k)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            g.rows = names("policies");
            g.cols = names("importers");
            for c in cells {
                let row = s_of(c, "policy").ok_or("a cell without 'policy'")?;
                let col = s_of(c, "importer").ok_or("a cell without 'importer'")?;
                if !g.rows.contains(&row) {
                    g.rows.push(row.clone());
                }
                if !g.cols.contains(&col) {
                    g.cols.push(col.clone());
                }
                let refused = (s_of(c, "attach").as_deref() == Some("refused"))
                    .then(|| s_of(c, "refusal").unwrap_or_else(|| "refused".into()));
                let props = match c.get("properties") {
                    Some(p) => props_of(p)?,
                    None => Vec::new(),
                };
                let errors = c
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                g.cells.push(Cell {
                    row,
                    col,
                    refused,
                    props,
                    errors,
                });
            }
            for k in [
                "strategy",
                "schedules",
                "stalled-schedules",
                "seed",
                "runs",
                "elapsed-s",
                "partial",
                "proof-budget",
                "reduced-budget",
                "cells-decided",
                "cells-decided-reduced",
            ] {
                if let Some(x) = v.get(k) {
                    // Seconds to a tenth; everything else as written.
                    let text = match x.as_f64() {
                        Some(f) if x.is_f64() => format!("{f:.1}"),
                        _ => x.to_string().trim_matches('"').to_owned(),
                    };
                    g.meta.push((k.to_owned(), text));
                }
            }
            return Ok(g);
        }
        let list: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![v],
            _ => return Err("neither a matrix nor a check result".into()),
        };
        g.cols.push("result".into());
        for c in list {
            let row = s_of(c, "scenario").ok_or("a check result without 'scenario'")?;
            let props = props_of(
                c.get("properties")
                    .ok_or("a check result without 'properties'")?,
            )?;
            let errors = c
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            g.rows.push(row.clone());
            g.cells.push(Cell {
                row,
                col: "result".into(),
                refused: None,
                props,
                errors,
            });
        }
        Ok(g)
    }

    /// The distinct replay tokens of violated properties, in grid order.
    pub fn tokens(&self) -> Vec<String> {
        let mut t: Vec<String> = Vec::new();
        for r in &self.rows {
            for c in &self.cols {
                for cell in self.cells.iter().filter(|x| &x.row == r && &x.col == c) {
                    for p in cell.props.iter().filter(|p| p.violated) {
                        if let Some(k) = &p.token
                            && !t.contains(k)
                        {
                            t.push(k.clone());
                        }
                    }
                }
            }
        }
        t
    }
}

/// A replayed counterexample.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// Scenario name.
    pub scenario: String,
    /// `normal` or `stalled`.
    pub mode: String,
    /// How the run ended.
    pub outcome: String,
    /// The unfinished tasks in kernel terms.
    pub deadlock: Vec<String>,
    /// The trace.
    pub events: Vec<Event>,
}

/// Options of the page.
#[derive(Clone, Debug, Default)]
pub struct PageOptions {
    /// The command that made the report (shown in the header).
    pub command: String,
    /// What goes before `replay TOKEN` to reproduce (e.g. `dmabuf --lib f.toml`).
    pub replay_prefix: String,
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px} h3{font-size:15px;margin:0 0 6px}
.meta{color:#555;margin-bottom:12px} .meta code{background:#eee;padding:1px 4px;border-radius:3px}
table.grid{border-collapse:collapse;background:#fff}
table.grid th{font-weight:600;padding:6px 8px;border:1px solid #ccc;background:#f0f0f0;font-size:13px}
table.grid td{border:1px solid #ccc;padding:4px;vertical-align:top;min-width:118px}
td.refused{background:#ececec;color:#777;font-size:12px} td.holds{background:#e8f6ea} td.violated{background:#fdecea} td.erred{background:#fff4d6}
.chips{display:flex;flex-wrap:wrap;gap:2px}
.p{display:inline-block;font-size:10.5px;padding:1px 4px;border-radius:3px;text-decoration:none;border:1px solid transparent}
.p.h.proved{background:#2f9e44;color:#fff} .p.h.reduced{background:#8fd19e;color:#114b1f} .p.h.sampled{background:#fff;color:#2f9e44;border-color:#2f9e44}
.p.v{background:#d62728;color:#fff;font-weight:600} .p.v:hover{outline:2px solid #000}
.legend span{margin-right:12px;font-size:12px} .chart-legend{font-size:12px;color:#555;margin-bottom:8px}
section.cx{background:#fff;border:1px solid #ccc;border-radius:6px;padding:12px;margin:16px 0;overflow-x:auto;content-visibility:auto;contain-intrinsic-size:auto 3000px}
section.cx:target{border-color:#d62728;box-shadow:0 0 0 3px #f5b7b1}
.cmd{display:flex;gap:6px;align-items:center;margin:6px 0} .cmd code{background:#222;color:#eee;padding:4px 8px;border-radius:4px;font-size:12px;word-break:break-all}
button.copy{font-size:11px}
.viol{color:#b71c1c} .hz{color:#b71c1c;font-family:monospace;font-size:12px} .dl{font-family:monospace;font-size:12px;color:#6d4c00}
svg.msc{font:10.5px monospace;display:block;margin-top:8px}
.lane{stroke:#bbb;stroke-width:1} .lane.dev{stroke:#888;stroke-dasharray:4 3}
.lane-head{font:bold 11px system-ui,sans-serif;text-anchor:middle;stroke:none}
.state-head{font:bold 11px system-ui,sans-serif;stroke:none}
circle{r:3.5px;fill:#555}
text{fill:#222;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.n,.t{fill:#999;font-size:9.5px;stroke:none}
.hzd text{stroke:#fdecea;fill:#b71c1c;font-weight:bold} .hzd circle{fill:#d62728}
.pe circle{fill:#d9822b} .pe text{fill:#b35c00;font-style:italic}
.fo rect{fill:#ddd;stroke:#999;stroke-width:1;width:10px;height:10px} .fo text{fill:#777;font-style:italic}
.hzr{fill:#fdecea;width:100%;height:16px}
.band{stroke:#d9822b;stroke-width:1.5;stroke-dasharray:6 4} .band-label{fill:#d9822b;text-anchor:end;font:bold 10px system-ui,sans-serif;stroke:none}
.st{fill:#2f6f3e;stroke:none} .st.rv{fill:#b71c1c}
.arr{stroke-width:1.5;fill:none} .notify{stroke:#d9822b;marker-end:url(#ah-notify)} .flow{stroke:#999;stroke-dasharray:3 3;marker-end:url(#ah-flow)}
.unmap{stroke:#2b6cd9;marker-end:url(#ah-unmap)} .wake{stroke:#2f9e44;marker-end:url(#ah-wake)} .iommu{stroke:#8e44ad;marker-end:url(#ah-iommu)} .hazard{stroke:#d62728;stroke-width:2;marker-end:url(#ah-hazard)}
"#;

const JS: &str = r#"
document.querySelectorAll('button.copy').forEach(function(b){b.addEventListener('click',function(){
  var t=b.previousElementSibling.textContent; if(navigator.clipboard){navigator.clipboard.writeText(t);} b.textContent='copied';});});
document.body.setAttribute('data-charts',String(document.querySelectorAll('svg.msc').length));
"#;

/// Builds the page. `replayed[i]` is the replay of `grid.tokens()[i]` (or
/// why it could not be replayed).
pub fn page(grid: &Grid, replayed: &[Result<Replayed, String>], opts: &PageOptions) -> String {
    let tokens = grid.tokens();
    let cx_of: BTreeMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i + 1))
        .collect();
    let mut h = String::with_capacity(1 << 20);
    h.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dmabuf revoke report</title><style>");
    h.push_str(CSS);
    h.push_str("</style></head><body>");
    h.push_str(&msc::defs());
    h.push_str(
        "<h1>dma-buf revoke: which protocol is safe with which importer</h1><div class=\"meta\">",
    );
    for (k, v) in &grid.meta {
        let _ = write!(h, "{}: <b>{}</b> &nbsp; ", esc(k), esc(v));
    }
    if !opts.command.is_empty() {
        let _ = write!(h, "<br>made by <code>{}</code>", esc(&opts.command));
    }
    h.push_str("</div><div class=\"legend\"><span class=\"p h proved\">held, proved</span> <span>every schedule (or trace class) run</span><span class=\"p h reduced\">held, proved smaller</span> <span>every trace class of the cell with one job and one idle read-ahead pass (a mix's with its importers taking turns)</span><span class=\"p h sampled\">held, sampled</span> <span>no violation in the schedules run</span><span class=\"p v\">violated</span> <span>links to its counterexample</span></div>");
    // The grid.
    let _ = write!(
        h,
        "<h2>Matrix ({} × {})</h2><table class=\"grid\"><thead><tr><th></th>",
        grid.rows.len(),
        grid.cols.len()
    );
    for c in &grid.cols {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for r in &grid.rows {
        let _ = write!(h, "<tr><th>{}</th>", esc(r));
        for c in &grid.cols {
            let Some(cell) = grid.cells.iter().find(|x| &x.row == r && &x.col == c) else {
                let _ = write!(
                    h,
                    "<td class=\"cell notrun\" data-row=\"{}\" data-col=\"{}\">not run</td>",
                    esc(r),
                    esc(c)
                );
                continue;
            };
            if let Some(why) = &cell.refused {
                let _ = write!(
                    h,
                    "<td class=\"cell refused\" data-row=\"{}\" data-col=\"{}\" title=\"{}\">attach refused<br>{}</td>",
                    esc(r),
                    esc(c),
                    esc(why),
                    esc(why.rsplit(' ').next().unwrap_or(""))
                );
                continue;
            }
            let cls = if !cell.errors.is_empty() {
                "erred"
            } else if cell.props.iter().any(|p| p.violated) {
                "violated"
            } else {
                "holds"
            };
            let _ = write!(
                h,
                "<td class=\"cell {cls}\" data-row=\"{}\" data-col=\"{}\"><div class=\"chips\">",
                esc(r),
                esc(c)
            );
            for p in &cell.props {
                let how = match p.proof {
                    Proof::Proved => "proved",
                    Proof::ProvedReduced => "reduced",
                    Proof::Sampled => "sampled",
                };
                if p.violated {
                    let title = format!(
                        "{} violated in {} of {} runs: {}",
                        p.name,
                        p.violations,
                        p.schedules,
                        p.detail.clone().unwrap_or_default()
                    );
                    match p.token.as_deref().and_then(|t| cx_of.get(t)) {
                        Some(n) => {
                            let _ = write!(
                                h,
                                "<a class=\"p v\" href=\"#cx-{n}\" title=\"{}\">{}</a>",
                                esc(&title),
                                esc(&p.name)
                            );
                        }
                        None => {
                            let _ = write!(
                                h,
                                "<span class=\"p v\" title=\"{}\">{}</span>",
                                esc(&title),
                                esc(&p.name)
                            );
                        }
                    }
                } else {
                    let what = match p.proof {
                        Proof::ProvedReduced => "proved for a smaller configuration",
                        _ => how,
                    };
                    let _ = write!(
                        h,
                        "<span class=\"p h {how}\" title=\"{} held in {} runs ({what})\">{}</span>",
                        esc(&p.name),
                        p.schedules,
                        esc(&p.name)
                    );
                }
            }
            h.push_str("</div>");
            for e in &cell.errors {
                let _ = write!(h, "<div class=\"hz\">error: {}</div>", esc(e));
            }
            h.push_str("</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    // Counterexamples.
    let _ = write!(h, "<h2>Counterexamples ({})</h2>", tokens.len());
    h.push_str(
        "<div class=\"legend chart-legend\">charts: one row per trace row, top to bottom; \
         <span style=\"color:#d9822b\">&#8594; invalidate reaches the importer</span>\
         <span style=\"color:#999\">&#8674; invalidate &#8594; its unmap</span>\
         <span style=\"color:#2b6cd9\">&#8594; unmap reaches the exporter</span>\
         <span style=\"color:#2f9e44\">&#8594; fence signal wakes a waiter</span>\
         <span style=\"color:#8e44ad\">&#8594; IOMMU update</span>\
         <span style=\"color:#d62728\">&#9679; hazard</span>\
         <span style=\"color:#d9822b\">- - revoke starts / returns</span>\
         <span style=\"color:#b35c00\">&#8674; preempted</span>\
         <span style=\"color:#777\">&#9632; folded read-ahead</span></div>",
    );
    // The charts, drawn together so that rows they share are written once.
    let drawn: Vec<(&[Event], String)> = replayed
        .iter()
        .take(tokens.len())
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .ok()
                .map(|r| (r.events.as_slice(), format!("msc-{}", i + 1)))
        })
        .collect();
    let mut charts: BTreeMap<String, String> = drawn
        .iter()
        .map(|(_, id)| id.clone())
        .zip(msc::svgs(&drawn))
        .collect();
    for (i, tok) in tokens.iter().enumerate() {
        let n = i + 1;
        let _ = write!(
            h,
            "<section class=\"cx\" id=\"cx-{n}\" data-token=\"{}\">",
            esc(tok)
        );
        let mut uses: Vec<String> = Vec::new();
        let mut first: Option<&Prop> = None;
        for cell in &grid.cells {
            for p in cell
                .props
                .iter()
                .filter(|p| p.token.as_deref() == Some(tok.as_str()))
            {
                let c = if cell.col == "result" {
                    cell.row.clone()
                } else {
                    format!("{} × {}", cell.row, cell.col)
                };
                uses.push(format!("{c}: {}", p.name));
                first.get_or_insert(p);
            }
        }
        let _ = write!(h, "<h3>#{n} {}</h3>", esc(&uses.join(", ")));
        if let Some(d) = first.and_then(|p| p.detail.as_ref()) {
            let _ = write!(h, "<div class=\"viol\">{}</div>", esc(d));
        }
        let cmd = format!("{}replay {tok}", opts.replay_prefix);
        let _ = write!(
            h,
            "<div class=\"cmd\"><code>{}</code><button class=\"copy\">copy</button></div>",
            esc(&cmd)
        );
        match replayed.get(i) {
            Some(Ok(r)) => {
                let _ = write!(
                    h,
                    "<div>{} run, outcome: <b>{}</b></div>",
                    esc(&r.mode),
                    esc(&r.outcome)
                );
                for l in &r.deadlock {
                    let _ = write!(h, "<div class=\"dl\">{}</div>", esc(l));
                }
                if let Some(p) = first
                    && let Some(hz) = &p.hazard
                {
                    let row = dmabuf_checker::tracefmt::hazard_with_row(&r.events, hz);
                    let _ = write!(h, "<div class=\"hz\">hazard: {}</div>", esc(&row));
                }
                let chart = charts.remove(&format!("msc-{n}"));
                h.push_str(&chart.unwrap_or_else(|| msc::svg(&r.events, &format!("msc-{n}"))));
            }
            Some(Err(e)) => {
                let _ = write!(h, "<div class=\"hz\">not replayed: {}</div>", esc(e));
            }
            None => h.push_str("<div class=\"hz\">not replayed</div>"),
        }
        h.push_str("</section>");
    }
    h.push_str("<script>");
    h.push_str(JS);
    h.push_str("</script></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::sample;
    use serde_json::json;

    fn matrix() -> Value {
        json!({
            "policies": ["v1", "v6"], "importers": ["static", "gpu"], "strategy": "pct3", "schedules": 20,
            "cells": [
                {"policy": "v1", "importer": "static", "attach": "refused", "refusal": "static0: attach EOPNOTSUPP"},
                {"policy": "v1", "importer": "gpu", "attach": "accepted", "errors": [], "properties": {
                    "s-fence": {"result": "violated", "violations": 3, "schedules": 20, "exhaustive": false, "detail": "a write after revoke", "hazard": "mseq=4 AccessAfterRevoke", "replay": "T1"},
                    "s-final": {"result": "violated", "violations": 3, "schedules": 20, "exhaustive": false, "replay": "T1"},
                    "no-leak": {"result": "holds", "violations": 0, "schedules": 20, "exhaustive": true}}},
                {"policy": "v6", "importer": "static", "attach": "refused", "refusal": "static0: attach EOPNOTSUPP"},
                {"policy": "v6", "importer": "gpu", "attach": "accepted", "errors": [], "properties": {
                    "s-fence": {"result": "holds", "violations": 0, "schedules": 20, "exhaustive": false, "verdict": "proved"},
                    "no-leak": {"result": "holds", "violations": 0, "schedules": 20, "exhaustive": false, "verdict": "proved-reduced"},
                    "l-bounded": {"result": "violated", "violations": 1, "schedules": 5, "replay": "T2"}}}
            ]
        })
    }

    #[test]
    fn grid_reads_matrix_json_and_dedups_tokens() {
        let g = Grid::from_json(&matrix()).unwrap();
        assert_eq!(g.rows, vec!["v1", "v6"]);
        assert_eq!(g.cols, vec!["static", "gpu"]);
        assert_eq!(g.tokens(), vec!["T1", "T2"]);
        let c = g
            .cells
            .iter()
            .find(|c| c.row == "v1" && c.col == "gpu")
            .unwrap();
        assert_eq!(
            c.props.iter().find(|p| p.name == "no-leak").unwrap().proof,
            Proof::Proved
        );
        assert_eq!(
            c.props.iter().find(|p| p.name == "s-fence").unwrap().proof,
            Proof::Sampled
        );
        // The matrix's own verdict wins over `exhaustive` (a proof attempt
        // of the cell, not the sampled search, proved it).
        let v6 = g
            .cells
            .iter()
            .find(|c| c.row == "v6" && c.col == "gpu")
            .unwrap();
        assert_eq!(
            v6.props.iter().find(|p| p.name == "s-fence").unwrap().proof,
            Proof::Proved
        );
        // A proof of the smaller configuration only is told apart.
        assert_eq!(
            v6.props.iter().find(|p| p.name == "no-leak").unwrap().proof,
            Proof::ProvedReduced
        );
        assert!(Grid::from_json(&json!(3)).is_err());
        assert!(Grid::from_json(&json!({"cells": [{"importer": "x"}]})).is_err());
    }

    #[test]
    fn page_links_every_violation_to_one_chart_per_token() {
        let g = Grid::from_json(&matrix()).unwrap();
        let r = Replayed {
            scenario: "s".into(),
            mode: "normal".into(),
            outcome: "completed".into(),
            deadlock: vec![],
            events: sample(),
        };
        let page = page(
            &g,
            &[Ok(r), Err("scenario changed".into())],
            &PageOptions::default(),
        );
        assert_eq!(page.matches("<td class=\"cell").count(), 4);
        assert_eq!(page.matches("href=\"#cx-1\"").count(), 2);
        assert_eq!(page.matches("href=\"#cx-2\"").count(), 1);
        assert_eq!(page.matches("<svg class=\"msc\"").count(), 1);
        assert!(page.contains("id=\"cx-2\""));
        assert!(page.contains("not replayed: scenario changed"));
        assert!(page.contains("hazard: mseq=4 AccessAfterRevoke [trace row 5]"));
        assert!(
            !page.contains("http://")
                || page.matches("http://").count()
                    == page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        assert!(!page.contains("https://"));
    }

    #[test]
    fn the_header_rounds_seconds_and_shows_the_proof_budgets() {
        let mut m = matrix();
        m["elapsed-s"] = json!(304.323472863);
        m["runs"] = json!(217943);
        m["proof-budget"] = json!(2000);
        m["reduced-budget"] = json!(8000);
        m["cells-decided-reduced"] = json!(11);
        let g = Grid::from_json(&m).unwrap();
        let get = |k: &str| g.meta.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("elapsed-s"), Some("304.3"));
        assert_eq!(get("runs"), Some("217943"));
        assert_eq!(get("proof-budget"), Some("2000"));
        assert_eq!(get("reduced-budget"), Some("8000"));
        assert_eq!(get("cells-decided-reduced"), Some("11"));
    }

    #[test]
    fn check_json_is_one_column() {
        let v = json!([{"scenario": "a", "properties": {"s-fence": {"result": "holds", "schedules": 3}}, "errors": []}]);
        let g = Grid::from_json(&v).unwrap();
        assert_eq!(g.rows, vec!["a"]);
        assert_eq!(g.cols, vec!["result"]);
    }
}
