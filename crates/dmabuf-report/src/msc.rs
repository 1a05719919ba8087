//! One replayed run as a message sequence chart, in inline SVG.
//!
//! | element | drawn as |
//! |---|---|
//! | lane | a vertical line per task, in order of first appearance, then `IOMMU` (when the run maps through one) and the exporter's memory |
//! | row | one trace row: a dot on its task's lane and the tracepoint with its arguments (`title` holds the full text); `sched_switch` rows are not drawn (the lanes show who runs) except preemptions (`prev_state=R+`), drawn on the preempted task's lane |
//! | invalidate → callback | orange arrow from the revoker to the importer's lane |
//! | invalidate → unmap | grey dashed arrow to the importer's `dma_buf_unmap_attachment`, then a blue arrow from it to the exporter |
//! | fence signal → wake-up | green arrow from `dma_fence_signaled` to the waiter's `dma_fence_wait_end` |
//! | IOMMU | purple arrow from `iommu_map`/`iommu_unmap`/`iotlb_flush` to the IOMMU lane |
//! | hazard | red row, red dot, red arrow to the exporter's memory |
//! | revoke | dashed bands at its start and its return |
//! | exporter state | left column: revoked or not, live mappings, the revoke's count (`kref N`, from the `refcount=` of `kref_get`/`kref_put`/`kref_init` rows; `saturated` after a misuse; `done D` while its completion holds completions), hazards so far; printed where it changes |
//! | shared rows | rows several charts of a page draw alike at the same place ([`svgs`]): written once, drawn by `<use>` elsewhere |
//! | folded run | four or more consecutive rows of one task that are neither an arrow's end nor a hazard (DMA accesses, read-ahead, lock and fence bookkeeping): one row saying how many |

use crate::links::{Analysis, LinkKind, analyse};
use dmabuf_core::trace::{Event, SCHED_SWITCH};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

const ROW_H: f64 = 16.0;
const LANE_W: f64 = 112.0;
/// Row number and time.
const NUM_W: f64 = 86.0;
/// The exporter's state column, left of the lanes (labels run rightwards).
const STATE_W: f64 = 240.0;
const LEFT: f64 = NUM_W + STATE_W;
const TOP: f64 = 44.0;
/// Room right of the last lane for its labels.
const RIGHT_W: f64 = 330.0;
/// Shortest run of repetitive rows that is folded.
pub const FOLD_MIN: usize = 4;

/// Escapes text for SVG/HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A displayed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Row {
    /// One event (index into the events).
    One(usize),
    /// A folded run of events `from..=to` of one task.
    Folded {
        /// First index.
        from: usize,
        /// Last index.
        to: usize,
    },
}

/// A `sched_switch` row that says the scheduler preempted a task.
fn is_preemption(e: &Event) -> bool {
    e.name == SCHED_SWITCH && e.field("prev_state").as_deref() == Some("R+")
}

/// Rows that are never the end of an arrow nor a hazard: a run of them by
/// one task folds (DMA accesses and read-ahead, and the lock and fence
/// bookkeeping that a whole revoke cycle repeats).
fn repetitive(e: &Event) -> bool {
    matches!(
        e.name,
        "dma_readahead"
            | "dma_access"
            | "lock_acquire"
            | "lock_acquired"
            | "lock_release"
            | "dma_fence_init"
            | "dma_fence_enable_signal"
            | "dma_fence_destroy"
    )
}

/// The rows of a chart: every event but `sched_switch`, repetitive runs
/// folded.
pub fn rows(events: &[Event]) -> Vec<Row> {
    // A lock_acquire at once followed by its lock_acquired (no wait) is
    // drawn as the one row.
    let next_of_task = |i: usize| events[i + 1..].iter().find(|e| e.name != SCHED_SWITCH);
    let shown: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].name != SCHED_SWITCH || is_preemption(&events[i]))
        .filter(|&i| {
            !(events[i].name == "lock_acquire"
                && next_of_task(i).is_some_and(|n| {
                    n.name == "lock_acquired"
                        && n.who == events[i].who
                        && n.field("lock") == events[i].field("lock")
                }))
        })
        .collect();
    let mut out = Vec::new();
    let mut k = 0;
    while k < shown.len() {
        let i = shown[k];
        if repetitive(&events[i]) {
            let mut m = k;
            while m + 1 < shown.len()
                && repetitive(&events[shown[m + 1]])
                && events[shown[m + 1]].who == events[i].who
            {
                m += 1;
            }
            if m + 1 - k >= FOLD_MIN {
                out.push(Row::Folded {
                    from: i,
                    to: shown[m],
                });
                k = m + 1;
                continue;
            }
        }
        out.push(Row::One(i));
        k += 1;
    }
    out
}

/// The exporter's state after each event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExporterState {
    /// `set_revoked` ran (and no `clear_revoked` since).
    pub revoked: bool,
    /// Mappings declared to the monitor and not yet unmapped.
    pub live: i64,
    /// Hazards so far.
    pub hazards: u64,
    /// Each revoke count (`kref#N`): its `refcount_t` value and whether it
    /// saturated, from the last `kref_get`/`kref_put`/`kref_init` row.
    pub krefs: BTreeMap<String, (u64, bool)>,
    /// Each count's completion: `done`, from the last `complete`,
    /// `wait_for_completion_end` or `reinit_completion` row.
    pub done: BTreeMap<String, u64>,
}

impl ExporterState {
    /// The state column's text: `revoked · 1 live mapping · kref 2 · 0
    /// hazards`; the count only once the trace has shown it (a run of one
    /// count says `kref N`, of several `kref#1 N kref#2 M`), `saturated`
    /// after a misuse, `done D` while the completion holds completions.
    pub fn label(&self) -> String {
        let mut t = format!(
            "{} · {} live mapping{}",
            if self.revoked {
                "revoked"
            } else {
                "not revoked"
            },
            self.live,
            if self.live == 1 { "" } else { "s" }
        );
        let one = self.krefs.len() == 1;
        for (k, (v, sat)) in &self.krefs {
            if one {
                let _ = write!(t, " · kref {v}");
            } else {
                let _ = write!(t, " · {k} {v}");
            }
            if *sat {
                t.push_str(" saturated");
            }
            if let Some(d) = self.done.get(k).filter(|d| **d > 0) {
                let _ = write!(t, " · done {d}");
            }
        }
        let _ = write!(
            t,
            " · {} hazard{}",
            self.hazards,
            if self.hazards == 1 { "" } else { "s" }
        );
        t
    }
}

/// The exporter's state after every event.
pub fn states(events: &[Event]) -> Vec<ExporterState> {
    let mut s = ExporterState::default();
    events
        .iter()
        .map(|e| {
            match e.name {
                "set_revoked" => s.revoked = true,
                "clear_revoked" => s.revoked = false,
                "monitor_map" => s.live += 1,
                "monitor_unmap" => s.live -= 1,
                "hazard" => s.hazards += 1,
                "kref_get" | "kref_put" | "kref_init" => {
                    if let (Some(k), Some(v)) = (
                        e.field("kref"),
                        e.field("refcount").and_then(|v| v.parse::<u64>().ok()),
                    ) {
                        let sat = e.field("saturated").as_deref() == Some("1");
                        s.krefs.insert(k, (v, sat));
                    }
                }
                "complete" | "wait_for_completion_end" | "reinit_completion" => {
                    if let (Some(k), Some(d)) = (
                        e.field("kref"),
                        e.field("done").and_then(|v| v.parse::<u64>().ok()),
                    ) {
                        s.done.insert(k, d);
                    }
                }
                _ => {}
            }
            s.clone()
        })
        .collect()
}

fn short_args(e: &Event, max: usize) -> String {
    let a = &e.args;
    if a.chars().count() <= max {
        a.clone()
    } else {
        let cut: String = a.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// Draws the chart. `id` becomes the SVG's element id.
pub fn svg(events: &[Event], id: &str) -> String {
    svgs(&[(events, id.to_owned())]).pop().unwrap_or_default()
}

/// One chart before its rows are shared: everything but the rows, and the
/// markup of each row.
struct Drawn {
    head: String,
    rows: Vec<String>,
}

/// Rows shared by fewer bytes than this are written out in each chart (a
/// reference costs about 20 bytes, a definition's wrapper as much).
const SHARE_MIN: usize = 96;

/// Draws the charts of one page. A row's markup depends only on the rows
/// above it, so charts of runs that share rows (the same setup before the
/// schedules differ, the same cleanup after) often draw the same markup at
/// the same row. Each such row belongs to the first chart that draws it; a
/// later chart draws a run of rows that belong to an earlier one (when
/// they are [`SHARE_MIN`] bytes or more) by `<use href="#sC-K"/>`, the
/// earlier chart wrapping them in `<g id="sC-K">` (chart `C`, first row
/// `K`). Row styles therefore match the row's own classes, never an
/// ancestor outside it (a `use` clone has none).
pub fn svgs(charts: &[(&[Event], String)]) -> Vec<String> {
    let drawn: Vec<Drawn> = charts.iter().map(|(e, id)| draw(e, id)).collect();
    // Who first drew each (row, markup).
    let mut first: HashMap<(usize, &str), usize> = HashMap::new();
    let owner: Vec<Vec<usize>> = drawn
        .iter()
        .enumerate()
        .map(|(c, d)| {
            d.rows
                .iter()
                .enumerate()
                .map(|(k, r)| *first.entry((k, r.as_str())).or_insert(c))
                .collect()
        })
        .collect();
    // Each chart's runs of rows of one owner: (owner, first, last, drawn
    // by reference). An owner cuts its rows where a reference starts or
    // ends.
    let mut cuts: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); drawn.len()];
    let mut wanted: Vec<Vec<(usize, usize)>> = vec![Vec::new(); drawn.len()];
    let mut runs: Vec<Vec<(usize, usize, usize, bool)>> = Vec::with_capacity(drawn.len());
    for (c, d) in drawn.iter().enumerate() {
        let mut rs = Vec::new();
        let mut k = 0;
        while k < d.rows.len() {
            let o = owner[c][k];
            let mut m = k;
            while m + 1 < d.rows.len() && owner[c][m + 1] == o {
                m += 1;
            }
            let bytes: usize = d.rows[k..=m].iter().map(String::len).sum();
            let by_ref = o != c && bytes >= SHARE_MIN;
            if by_ref {
                cuts[o].insert(k);
                cuts[o].insert(m + 1);
                wanted[o].push((k, m));
            }
            rs.push((o, k, m, by_ref));
            k = m + 1;
        }
        runs.push(rs);
    }
    // Pieces of an owner's rows k0..=k1 between its cuts.
    let pieces = |o: usize, k0: usize, k1: usize| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut a = k0;
        if k1 > k0 {
            for &cut in cuts[o].range(k0 + 1..=k1) {
                out.push((a, cut - 1));
                a = cut;
            }
        }
        out.push((a, k1));
        out
    };
    let mut out = Vec::with_capacity(drawn.len());
    for (c, d) in drawn.iter().enumerate() {
        let mut s = d.head.clone();
        for &(o, k0, k1, by_ref) in &runs[c] {
            if by_ref {
                for (a, _) in pieces(o, k0, k1) {
                    let _ = write!(s, r##"<use href="#s{o}-{a}"/>"##);
                }
            } else if o == c {
                for (a, b) in pieces(c, k0, k1) {
                    let shared = wanted[c].iter().any(|&(x, y)| x <= a && b <= y);
                    if shared {
                        let _ = write!(s, r#"<g id="s{c}-{a}">"#);
                    }
                    d.rows[a..=b].iter().for_each(|r| s.push_str(r));
                    if shared {
                        s.push_str("</g>");
                    }
                }
            } else {
                d.rows[k0..=k1].iter().for_each(|r| s.push_str(r));
            }
        }
        s.push_str("</svg>");
        out.push(s);
    }
    out
}

fn draw(events: &[Event], id: &str) -> Drawn {
    let an: Analysis = analyse(events);
    let rows = rows(events);
    let st = states(events);
    // Lanes.
    let mut lanes: Vec<String> = Vec::new();
    for e in events {
        if e.name != SCHED_SWITCH && !lanes.contains(&e.who) {
            lanes.push(e.who.clone());
        }
    }
    let has_iommu = events
        .iter()
        .any(|e| e.name.starts_with("iommu_") || e.name == "iotlb_flush");
    let exporter = events
        .iter()
        .find(|e| e.name == "vfio_pci_dma_buf_export")
        .and_then(|e| e.field("dev"))
        .map_or_else(|| "exporter memory".to_owned(), |d| format!("{d} memory"));
    if has_iommu {
        lanes.push("IOMMU".into());
    }
    lanes.push(exporter.clone());
    let lane_x: BTreeMap<&str, f64> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), LEFT + LANE_W * (i as f64 + 0.5)))
        .collect();
    let ex_x = lane_x[exporter.as_str()];
    let iommu_x = lane_x.get("IOMMU").copied();
    let row_of: BTreeMap<usize, usize> = rows
        .iter()
        .enumerate()
        .flat_map(|(r, row)| match *row {
            Row::One(i) => vec![(i, r)],
            Row::Folded { from, to } => (from..=to).map(|i| (i, r)).collect(),
        })
        .collect();
    let y = |r: usize| TOP + ROW_H * (r as f64 + 0.5);
    let width = LEFT + LANE_W * lanes.len() as f64 + RIGHT_W;
    let height = TOP + ROW_H * (rows.len() as f64 + 1.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="msc" id="{id}" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" data-rows="{}" data-lanes="{}">"#,
        rows.len(),
        lanes.len()
    );
    // Hazard row backgrounds (the page's CSS gives their width and height).
    for (r, row) in rows.iter().enumerate() {
        if let Row::One(i) = row
            && events[*i].name == "hazard"
        {
            let _ = write!(s, r#"<rect class="hzr" y="{:.0}"/>"#, y(r) - ROW_H / 2.0);
        }
    }
    // Lanes and their heads.
    for (l, x) in lanes.iter().map(|l| (l, lane_x[l.as_str()])) {
        let cls = if *l == exporter || l == "IOMMU" {
            "lane dev"
        } else {
            "lane"
        };
        let _ = write!(
            s,
            r#"<line class="{cls}" x1="{x:.0}" y1="{:.0}" x2="{x:.0}" y2="{height:.0}"/><text class="lane-head" x="{x:.0}" y="{:.0}">{}</text>"#,
            TOP - 10.0,
            TOP - 18.0,
            esc(l)
        );
    }
    let _ = write!(
        s,
        r#"<text class="state-head" x="{:.0}" y="{:.0}">exporter state<title>revoked or not · mappings live (monitor) · the revoke's kref: refcount_t value (kref_get, kref_put, kref_init rows) and its completion's done while above 0 (complete, wait_for_completion_end) · hazards so far; printed where it changes</title></text>"#,
        NUM_W,
        TOP - 18.0
    );
    // Revoke bands.
    for (mark, label) in [
        (an.revoke_start, "revoke starts"),
        (an.revoke_return, "revoke returned"),
    ] {
        if let Some(&r) = mark.and_then(|i| row_of.get(&i)) {
            let yy = y(r) - ROW_H / 2.0;
            let _ = write!(
                s,
                r#"<line class="band" x1="0" y1="{yy:.0}" x2="{width:.0}" y2="{yy:.0}"/><text class="band-label" x="{:.0}" y="{:.0}">{label}</text>"#,
                LEFT + LANE_W * lanes.len() as f64 - 4.0,
                yy - 2.0
            );
        }
    }
    // Arrows (their heads come from the page's CSS, by class). A title
    // only where it says more than the class.
    let arrow = |s: &mut String, cls: &str, x1: f64, y1: f64, x2: f64, y2: f64, title: &str| {
        let _ = write!(
            s,
            r#"<line class="arr {cls}" x1="{x1:.0}" y1="{y1:.0}" x2="{x2:.0}" y2="{y2:.0}""#
        );
        if title.is_empty() {
            s.push_str("/>");
        } else {
            let _ = write!(s, "><title>{}</title></line>", esc(title));
        }
    };
    for l in &an.links {
        let (a, b) = (&events[l.from], &events[l.to]);
        let (Some(&ra), Some(&rb)) = (row_of.get(&l.from), row_of.get(&l.to)) else {
            continue;
        };
        let (Some(&xa), Some(&xb_task)) = (lane_x.get(a.who.as_str()), lane_x.get(b.who.as_str()))
        else {
            continue;
        };
        let ya = y(ra);
        match l.kind {
            LinkKind::Notify => {
                if let Some(&xb) = lane_x.get(l.to_lane.as_str()) {
                    arrow(&mut s, "notify", xa, ya, xb, ya, &l.label);
                }
            }
            LinkKind::Unmap => {
                let xb = xb_task;
                arrow(
                    &mut s,
                    "flow",
                    xa,
                    ya,
                    xb,
                    y(rb),
                    &format!("invalidate row {} → unmap row {}", a.seq, b.seq),
                );
                arrow(&mut s, "unmap", xb, y(rb), ex_x, y(rb), &l.label);
            }
            LinkKind::Wake => {
                let xb = xb_task;
                arrow(&mut s, "wake", xa, ya, xb, y(rb), &l.label);
            }
        }
    }
    for (r, row) in rows.iter().enumerate() {
        let Row::One(i) = *row else { continue };
        let e = &events[i];
        let Some(&x) = lane_x.get(e.who.as_str()) else {
            continue;
        };
        if let Some(ix) = iommu_x
            && (e.name.starts_with("iommu_") || e.name == "iotlb_flush")
        {
            arrow(&mut s, "iommu", x, y(r), ix, y(r), e.name);
        }
        if e.name == "hazard" {
            arrow(&mut s, "hazard", x, y(r), ex_x, y(r), "");
        }
    }
    // Rows: number, time, dot, label; the exporter's state where it
    // changes. Each row's markup depends on the rows above it only.
    let sx = NUM_W;
    let mut out_rows = Vec::with_capacity(rows.len());
    let mut last_state: Option<&ExporterState> = None;
    let mut last_secs: Option<String> = None;
    for (r, row) in rows.iter().enumerate() {
        let mut s = String::new();
        let yy = y(r);
        let (first, last) = match *row {
            Row::One(i) => (i, i),
            Row::Folded { from, to } => (from, to),
        };
        let e = &events[first];
        let lane = if is_preemption(e) {
            e.field("prev_comm")
                .filter(|p| lane_x.contains_key(p.as_str()))
                .unwrap_or_else(|| e.who.clone())
        } else {
            e.who.clone()
        };
        let Some(&x) = lane_x.get(lane.as_str()) else {
            out_rows.push(s);
            continue;
        };
        let secs = format!(
            "{}.{:06}",
            e.ts_ns / 1_000_000_000,
            (e.ts_ns / 1000) % 1_000_000
        );
        // The time only where it moved since the row above (virtual time
        // stands still for most rows).
        let _ = write!(
            s,
            r#"<text class="n" x="4" y="{:.0}">{}</text>"#,
            yy + 4.0,
            e.seq
        );
        if last_secs.as_deref() != Some(secs.as_str()) {
            let _ = write!(
                s,
                r#"<text class="t" x="28" y="{:.0}">{secs}</text>"#,
                yy + 4.0
            );
            last_secs = Some(secs);
        }
        match *row {
            Row::One(_) => {
                let hz = e.name == "hazard";
                let label = if is_preemption(e) {
                    format!("⇢ preempted: the scheduler runs {}", e.who)
                } else if hz {
                    format!(
                        "HAZARD {} by {} at {}",
                        e.field("class").unwrap_or_default(),
                        e.field("accessor").unwrap_or_default(),
                        e.field("addr").unwrap_or_default()
                    )
                } else {
                    format!("{} {}", e.name, short_args(e, 48))
                };
                // The whole row as a tooltip only where the label does not
                // already show it (a third of the page's size otherwise).
                let full = format!("{} {}", e.name, e.args);
                let title = if label == full {
                    String::new()
                } else {
                    format!("<title>{}</title>", esc(&e.args))
                };
                let dot_and_label = format!(
                    r#"<circle cx="{x:.0}" cy="{yy:.0}"/><text x="{:.0}" y="{:.0}">{}{title}</text>"#,
                    x + 6.0,
                    yy + 4.0,
                    esc(&label),
                );
                // Plain rows carry no class: the page styles `circle` and
                // `text`; hazards and preemptions are grouped under theirs.
                if hz {
                    let _ = write!(s, r#"<g class="hzd">{dot_and_label}</g>"#);
                } else if is_preemption(e) {
                    let _ = write!(s, r#"<g class="pe">{dot_and_label}</g>"#);
                } else {
                    s.push_str(&dot_and_label);
                }
            }
            Row::Folded { from, to } => {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for ev in &events[from..=to] {
                    if ev.name != SCHED_SWITCH {
                        *counts.entry(ev.name).or_default() += 1;
                    }
                }
                let what: Vec<String> = counts.iter().map(|(n, c)| format!("{n} ×{c}")).collect();
                let _ = write!(
                    s,
                    r#"<g class="fo"><rect x="{:.0}" y="{:.0}"/><text x="{:.0}" y="{:.0}">⋯ rows {}–{} folded: {}</text></g>"#,
                    x - 5.0,
                    yy - 5.0,
                    x + 8.0,
                    yy + 4.0,
                    events[from].seq,
                    events[to].seq,
                    esc(&what.join(", "))
                );
            }
        }
        let now = &st[last];
        if last_state != Some(now) {
            let _ = write!(
                s,
                r#"<text class="st{}" x="{sx:.0}" y="{:.0}">{}</text>"#,
                if now.revoked { " rv" } else { "" },
                yy + 4.0,
                esc(&now.label())
            );
            last_state = Some(now);
        }
        out_rows.push(s);
    }
    Drawn {
        head: s,
        rows: out_rows,
    }
}

/// The arrow-head markers the charts refer to (put once in the page).
pub fn defs() -> String {
    let mut s = String::from(r#"<svg width="0" height="0" style="position:absolute"><defs>"#);
    for (cls, colour) in [
        ("notify", "#d9822b"),
        ("flow", "#999"),
        ("unmap", "#2b6cd9"),
        ("wake", "#2f9e44"),
        ("iommu", "#8e44ad"),
        ("hazard", "#d62728"),
    ] {
        let _ = write!(
            s,
            r#"<marker id="ah-{cls}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>"#
        );
    }
    s.push_str("</defs></svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::tests::{ev, sample};

    #[test]
    fn runs_of_readahead_fold_but_hazards_do_not() {
        let mut e = vec![ev(0, "a", "dma_job_start", "engine=e job=1")];
        for k in 1..=6 {
            e.push(ev(
                k,
                "a",
                if k % 2 == 1 {
                    "dma_readahead"
                } else {
                    "dma_access"
                },
                "len=0x40",
            ));
        }
        e.push(ev(7, "a", "hazard", "class=Aer mseq=1"));
        e.push(ev(8, "a", "dma_access", "len=0x40"));
        let r = rows(&e);
        assert_eq!(
            r,
            vec![
                Row::One(0),
                Row::Folded { from: 1, to: 6 },
                Row::One(7),
                Row::One(8)
            ]
        );
        let svg = svg(&e, "x");
        assert!(
            svg.contains("rows 1–6 folded: dma_access ×3, dma_readahead ×3"),
            "{svg}"
        );
    }

    #[test]
    fn preemptions_are_drawn_on_the_preempted_lane() {
        let e = vec![
            ev(0, "a", "dma_buf_attach", "attach=1"),
            ev(
                1,
                "b",
                "sched_switch",
                "prev_comm=a prev_pid=1 prev_state=R+ ==> next_comm=b next_pid=2 decisions=1",
            ),
            ev(2, "b", "set_revoked", "ino=1 step=set_revoked"),
            ev(
                3,
                "a",
                "sched_switch",
                "prev_comm=b prev_pid=2 prev_state=S ==> next_comm=a next_pid=1 decisions=0",
            ),
            ev(4, "a", "dma_buf_detach", "attach=1"),
        ];
        assert_eq!(
            rows(&e),
            vec![Row::One(0), Row::One(1), Row::One(2), Row::One(4)]
        );
        let svg = svg(&e, "p");
        assert!(
            svg.contains(
                r#"<text class="n" x="4" y="{y}">1</text><g class="pe"><circle cx="{:.0}""#
                    .replace("{y}", &format!("{:.0}", TOP + ROW_H * 1.5 + 4.0))
                    .replace("{:.0}", &format!("{:.0}", LEFT + LANE_W * 0.5))
                    .as_str()
            ),
            "{svg}"
        );
        assert!(svg.contains("preempted: the scheduler runs b"));
    }

    #[test]
    fn odd_traces_draw_without_panicking() {
        assert!(svg(&[], "e").contains(r#"data-rows="0""#));
        let odd = vec![
            ev(
                0,
                "b",
                "sched_switch",
                "prev_comm=zz prev_pid=9 prev_state=R+ ==> next_comm=b",
            ),
            ev(1, "b", "dma_fence_wait_end", "context=1 seqno=1"),
            ev(2, "c", "dma_buf_unmap_attachment", "attach=7"),
            ev(
                3,
                "c",
                "dma_buf_invalidate_attachment",
                "attach=7 dev=nobody",
            ),
            ev(4, "c", "monitor_revoke_returned", ""),
            ev(5, "c", "hazard", ""),
        ];
        let s = svg(&odd, "o");
        assert!(s.ends_with("</svg>"));
        crate::perfetto::validate(&crate::perfetto::chrome_json(&odd, "o")).unwrap();
        crate::perfetto::validate(&crate::perfetto::chrome_json(&[], "e")).unwrap();
    }

    #[test]
    fn an_uncontended_lock_is_one_row() {
        let e = vec![
            ev(0, "a", "lock_acquire", "lock=resv#1"),
            ev(1, "a", "lock_acquired", "lock=resv#1"),
            ev(2, "a", "lock_acquire", "lock=resv#1"),
            ev(3, "b", "lock_release", "lock=resv#1"),
            ev(4, "a", "lock_acquired", "lock=resv#1"),
        ];
        assert_eq!(
            rows(&e),
            vec![Row::One(1), Row::One(2), Row::One(3), Row::One(4)]
        );
    }

    #[test]
    fn the_chart_has_lanes_arrows_bands_and_state() {
        let svg = svg(&sample(), "cx-1");
        assert!(svg.starts_with(r#"<svg class="msc" id="cx-1""#));
        // gpu0, revoker, gpu0-worker, dma:gpu0-gfx, exporter memory
        assert!(svg.contains(r#"data-lanes="5""#), "{svg}");
        for cls in [
            "arr notify",
            "arr unmap",
            "arr flow",
            "arr wake",
            "arr hazard",
        ] {
            assert!(svg.contains(cls), "{cls}");
        }
        assert!(svg.contains("revoke starts") && svg.contains("revoke returned"));
        assert!(svg.contains(r#"class="hzr""#));
        assert!(
            svg.contains("not revoked · 0 live mappings · 1 hazard"),
            "{svg}"
        );
    }

    #[test]
    fn the_count_is_drawn_where_it_changes() {
        let e = vec![
            ev(0, "imp", "kref_get", "kref=kref#1 refcount=2"),
            ev(1, "imp", "monitor_map", "mapping=1"),
            ev(2, "rev", "set_revoked", "ino=1 step=set_revoked"),
            ev(
                3,
                "rev",
                "kref_put",
                "ino=1 step=kref_put kref=kref#1 refcount=1",
            ),
            ev(
                4,
                "rev",
                "wait_for_completion",
                "ino=1 step=wait_for_completion",
            ),
            ev(5, "imp", "monitor_unmap", "mapping=1"),
            ev(6, "imp", "kref_put", "kref=kref#1 refcount=0"),
            ev(7, "imp", "complete", "kref=kref#1 done=1"),
            ev(
                8,
                "rev",
                "wait_for_completion_end",
                "kref=kref#1 done=0 ret=completed",
            ),
            ev(9, "rev", "kref_put", "kref=kref#1 refcount=0 saturated=1"),
        ];
        let st = states(&e);
        assert_eq!(st[0].krefs["kref#1"], (2, false));
        assert_eq!(st[3].krefs["kref#1"], (1, false));
        assert_eq!(st[7].done["kref#1"], 1);
        assert_eq!(st[8].done["kref#1"], 0);
        assert_eq!(st[9].krefs["kref#1"], (0, true));
        let svg = svg(&e, "k");
        // The state column, top to bottom, where it changes.
        let shown: Vec<&str> = svg
            .split(r#"<text class="st"#)
            .skip(1)
            .filter(|t| t.starts_with('"') || t.starts_with(" rv"))
            .map(|t| {
                let t = &t[t.find('>').map_or(0, |i| i + 1)..];
                &t[..t.find('<').unwrap_or(t.len())]
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                "not revoked · 0 live mappings · kref 2 · 0 hazards",
                "not revoked · 1 live mapping · kref 2 · 0 hazards",
                "revoked · 1 live mapping · kref 2 · 0 hazards",
                "revoked · 1 live mapping · kref 1 · 0 hazards",
                "revoked · 0 live mappings · kref 1 · 0 hazards",
                "revoked · 0 live mappings · kref 0 · 0 hazards",
                "revoked · 0 live mappings · kref 0 · done 1 · 0 hazards",
                "revoked · 0 live mappings · kref 0 · 0 hazards",
                "revoked · 0 live mappings · kref 0 saturated · 0 hazards",
            ]
        );
        assert!(svg.contains(r#"<text class="st rv" x="86""#));
        // Two counts are told apart by name.
        let two = vec![
            ev(0, "a", "kref_get", "kref=kref#1 refcount=2"),
            ev(1, "a", "kref_get", "kref=kref#2 refcount=3"),
        ];
        assert_eq!(
            states(&two)[1].label(),
            "not revoked · 0 live mappings · kref#1 2 · kref#2 3 · 0 hazards"
        );
        // No count row, no count shown.
        assert!(!super::svg(&sample(), "s").contains(" · kref"));
    }

    /// Each `<use href="#ID"/>` replaced by what `<g id="ID">` holds in
    /// any of `page`.
    fn expand(chart: &str, page: &[String]) -> String {
        let mut out = chart.to_owned();
        while let Some(u) = out.find(r##"<use href="#"##) {
            let end = u + out[u..].find("/>").unwrap() + 2;
            let id = &out[u + 12..end - 3];
            let open = format!(r#"<g id="{id}">"#);
            let body = page
                .iter()
                .find_map(|c| {
                    let at = c.find(&open)? + open.len();
                    let inner = &c[at..];
                    let mut depth = 0usize;
                    for (i, _) in inner.match_indices('<') {
                        if inner[i..].starts_with("<g") {
                            depth += 1;
                        } else if inner[i..].starts_with("</g>") {
                            if depth == 0 {
                                return Some(inner[..i].to_owned());
                            }
                            depth -= 1;
                        }
                    }
                    None
                })
                .unwrap_or_else(|| panic!("no definition of {id}"));
            out.replace_range(u..end, &body);
        }
        // The wrappers of definitions.
        while let Some(g) = out.find(r#"<g id="s"#) {
            let close = g + out[g..].find('>').unwrap() + 1;
            let inner = &out[close..];
            let mut depth = 0usize;
            let mut end = None;
            for (i, _) in inner.match_indices('<') {
                if inner[i..].starts_with("<g") {
                    depth += 1;
                } else if inner[i..].starts_with("</g>") {
                    if depth == 0 {
                        end = Some(close + i);
                        break;
                    }
                    depth -= 1;
                }
            }
            let end = end.unwrap();
            out.replace_range(end..end + 4, "");
            out.replace_range(g..close, "");
        }
        out
    }

    #[test]
    fn charts_drawing_the_same_rows_write_them_once() {
        let mut a = sample();
        let mut b = sample();
        // The same run up to its last row, then different.
        a.push(ev(90, "gpu0", "dma_buf_detach", "attach=1"));
        b.push(ev(90, "gpu0", "dma_buf_attach", "attach=2 dev=gpu0"));
        // Different in its first row only (the same lane, other words).
        let mut d = sample();
        d[0].args = "exp_name=vfio_pci ino=1 attach=1 dev=gpu0 x=1".into();
        let c: Vec<Event> = sample().into_iter().skip(1).collect();
        let all = [
            (a.as_slice(), "m1".to_owned()),
            (b.as_slice(), "m2".to_owned()),
            (c.as_slice(), "m3".to_owned()),
            (d.as_slice(), "m4".to_owned()),
        ];
        let out = svgs(&all);
        assert_eq!(out.len(), 4);
        assert!(out[0].contains(r#"<g id="s0-0">"#), "{}", out[0]);
        assert!(!out[0].contains("<use"));
        assert!(out[1].starts_with(&svg(&b, "m2")[..40]));
        assert!(out[1].contains(r##"<use href="#s0-0"/>"##), "{}", out[1]);
        assert!(!out[1].contains(r#"<g id="s"#));
        // The third starts differently: every row is elsewhere, nothing
        // shared.
        assert!(!out[2].contains("<use") && !out[2].contains(r#"<g id="s"#));
        assert_eq!(out[2], svg(&c, "m3"));
        // The fourth differs in its first row and shares the rest.
        assert!(out[3].contains(r##"<use href="#s0-1"/>"##), "{}", out[3]);
        assert!(
            out[0].contains(r#"<g id="s0-1">"#),
            "cut where m4 starts using"
        );
        // Each chart expanded is what it draws alone, and the page is
        // smaller.
        for (k, (e, id)) in all.iter().enumerate() {
            assert_eq!(expand(&out[k], &out), svg(e, id), "chart {id}");
        }
        let alone: usize = all.iter().map(|(e, id)| svg(e, id).len()).sum();
        assert!(out.iter().map(String::len).sum::<usize>() < alone);
    }

    #[test]
    fn state_follows_revoke_and_mappings() {
        let e = vec![
            ev(0, "a", "monitor_map", "mapping=1"),
            ev(1, "r", "set_revoked", "ino=1 step=set_revoked"),
            ev(2, "a", "monitor_unmap", "mapping=1"),
            ev(3, "r", "clear_revoked", "ino=1 step=clear_revoked"),
        ];
        let s = states(&e);
        assert_eq!((s[0].revoked, s[0].live), (false, 1));
        assert_eq!((s[1].revoked, s[1].live), (true, 1));
        assert_eq!((s[2].revoked, s[2].live), (true, 0));
        assert!(!s[3].revoked);
        assert_eq!(esc("<a&\"b'>"), "&lt;a&amp;&quot;b&#39;&gt;");
    }
}
