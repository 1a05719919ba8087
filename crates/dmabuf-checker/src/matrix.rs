//! The matrix: every revoke protocol (a VFIO exporter file) × every
//! importer file of a [`Library`], each cell either refused at attach or,
//! per property, Never / Sometimes / Always violated, all computed by
//! running the cell's scenario.
//!
//! | per accepted cell | what |
//! |---|---|
//! | sampled | `opts.schedules` PCT schedules (plus a quarter stalled) of the cell as defined |
//! | proof attempt (`opts.proof`) | DPOR of the cell with fewer DMA jobs, stalled mode first; a property is `proved` when its searches finished ([`crate::explore::ProofOptions`]) |
//!
//! Cells are independent: [`run_matrix_parallel`] explores several side by
//! side and [`Shard`] deals them to machines (`i % N == K` in row-major
//! order); either way a cell's report depends only on the cell and the
//! options, so the union of the shards is the whole matrix.

use crate::explore::{CheckOptions, CheckReport, PropertyResult, check};
use crate::property::Property;
use crate::scenario::Library;
use crate::token::RunMode;
use std::time::Instant;

/// One cell.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Protocol (row).
    pub policy: String,
    /// Importer (column).
    pub importer: String,
    /// `None` when accepted; else the refusal (`stage errno`).
    pub refused: Option<String>,
    /// The check (also present for refused cells: the runs that showed it).
    pub report: CheckReport,
}

/// The whole matrix.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Row names, in order.
    pub rows: Vec<String>,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Cells, row-major.
    pub cells: Vec<Cell>,
    /// Wall time.
    pub elapsed_s: f64,
    /// Controlled runs made.
    pub runs: u64,
}

impl Matrix {
    /// Runs per second of wall time.
    pub fn schedules_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.runs as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// Which part of a split exploration to run: `index` of `count` (the CLI's
/// `--shard K/N`, 0-based `K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Number of shards, at least 1.
    pub count: usize,
}

impl Shard {
    /// The whole exploration.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `K/N` (`0 <= K < N`, `1 <= N <= 100000`).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s}: expected K/N, e.g. 0/4"))?;
        let k: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s}: K is not a number"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s}: N is not a number"))?;
        if n == 0 || n > 100_000 {
            return Err(format!("--shard {s}: N must be between 1 and 100000"));
        }
        if k >= n {
            return Err(format!(
                "--shard {s}: K must be below N (shards are numbered 0 to {})",
                n - 1
            ));
        }
        Ok(Shard { index: k, count: n })
    }

    /// Whether item `i` (in the exploration's fixed order) is this shard's:
    /// round-robin, so that slow rows spread over every shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Runs the matrix of `lib` with `opts` per accepted cell. A cell whose
/// importer is refused in its first run is not explored further.
pub fn run_matrix(
    lib: &Library,
    opts: &CheckOptions,
    progress: impl FnMut(usize, usize, &str),
) -> Matrix {
    run_matrix_shard(lib, opts, Shard::ALL, progress)
}

/// [`run_matrix`] restricted to the cells `shard` owns (cell `i` of the
/// row-major order when `i % N == K`). Every cell's result depends only on
/// the cell and `opts`, so the union of the shards' cells is the unsharded
/// matrix (`dmabuf merge`).
pub fn run_matrix_shard(
    lib: &Library,
    opts: &CheckOptions,
    shard: Shard,
    progress: impl FnMut(usize, usize, &str),
) -> Matrix {
    run_matrix_parallel(lib, opts, shard, 1, progress)
}

/// [`run_matrix_shard`] on `threads` worker threads, each exploring whole
/// cells (the controlled engine runs independent executions side by side).
/// The result is the same for every number of threads: a cell's report
/// depends only on the cell and `opts`, and cells are put back in
/// row-major order. `progress(done, total, cell)` is called after each
/// cell.
pub fn run_matrix_parallel(
    lib: &Library,
    opts: &CheckOptions,
    shard: Shard,
    threads: usize,
    mut progress: impl FnMut(usize, usize, &str),
) -> Matrix {
    let start = Instant::now();
    let rows = lib.rows();
    let mut todo = Vec::new();
    for (r, e) in rows.iter().enumerate() {
        for (c, i) in lib.importers.iter().enumerate() {
            if shard.owns(r * lib.importers.len() + c) {
                todo.push((e, i));
            }
        }
    }
    let total = todo.len();
    let work = |k: usize| {
        // Ctrl-C: no cell after it; the cells run so far stay.
        if crate::progress::stop_requested() {
            return None;
        }
        let (e, i) = todo[k];
        let sc = lib.cell(e, i);
        let probe = check(
            &sc,
            &CheckOptions {
                schedules: 1,
                stalled_schedules: 0,
                properties: vec![Property::NoDeadlock],
                shrink: false,
                proof: None,
                ..opts.clone()
            },
            |_| {},
        );
        let cell = if !probe.refusals.is_empty() {
            let runs = probe.runs;
            (
                Cell {
                    policy: e.name.clone(),
                    importer: i.spec.name.clone(),
                    refused: Some(probe.refusals.join(", ")),
                    report: probe,
                },
                runs,
            )
        } else {
            let report = check(&sc, opts, |_| {});
            let runs = probe.runs + report.runs;
            (
                Cell {
                    policy: e.name.clone(),
                    importer: i.spec.name.clone(),
                    refused: None,
                    report,
                },
                runs,
            )
        };
        Some((cell, sc.name))
    };
    let mut finished = 0;
    let slots = crate::progress::side_by_side(
        total,
        threads,
        work,
        |_, r| {
            if let Some((_, name)) = r {
                finished += 1;
                progress(finished, total, name);
            }
        },
        || {},
    );
    let mut runs = 0;
    let mut cells = Vec::with_capacity(total);
    // The cells run, in order; after a Ctrl-C some are missing.
    for ((c, r), _) in slots.into_iter().flatten() {
        runs += r;
        cells.push(c);
    }
    Matrix {
        rows: rows.iter().map(|e| e.name.clone()).collect(),
        columns: lib.importers.iter().map(|i| i.spec.name.clone()).collect(),
        cells,
        elapsed_s: start.elapsed().as_secs_f64(),
        runs,
    }
}

/// A grid of the matrix: `corner` above the row names, one column per
/// importer, each cell's text from `text` (`None`: not run).
fn grid(m: &Matrix, corner: &str, text: impl Fn(Option<&Cell>) -> String) -> String {
    let rw = m.rows.iter().map(|r| r.len()).max().unwrap_or(0).max(8);
    let mut s = format!("{corner:<rw$}");
    let widths: Vec<usize> = m.columns.iter().map(|c| c.len().max(7)).collect();
    for (k, w) in m.columns.iter().zip(&widths) {
        s.push_str(&format!(" {k:<w$}"));
    }
    s.push('\n');
    for v in &m.rows {
        s.push_str(&format!("{v:<rw$}"));
        for (k, w) in m.columns.iter().zip(&widths) {
            let w = *w;
            let c = m.cells.iter().find(|c| &c.policy == v && &c.importer == k);
            let t = text(c);
            s.push_str(&format!(" {t:<w$}"));
        }
        s.push('\n');
    }
    s
}

/// The second table: per accepted cell, how many of its properties are
/// proved (`proved/judged`), followed by `+Nr` when N more are proved for
/// a smaller configuration only (`proved-reduced`); `-` for refused or not
/// run cells.
pub fn render_proofs(m: &Matrix) -> String {
    grid(m, "proved", |c| match c {
        Some(c) if c.refused.is_none() => {
            let ps = &c.report.properties;
            let own = ps.iter().filter(|p| p.proved()).count();
            let reduced = ps.iter().filter(|p| p.proved_reduced()).count();
            if reduced == 0 {
                format!("{own}/{}", ps.len())
            } else {
                format!("{own}/{}+{reduced}r", ps.len())
            }
        }
        _ => "-".to_owned(),
    })
}

/// Cells every property of which is proved, and accepted cells.
pub fn proved_cells(m: &Matrix) -> (usize, usize) {
    let acc: Vec<&Cell> = m.cells.iter().filter(|c| c.refused.is_none()).collect();
    let proved = acc
        .iter()
        .filter(|c| {
            !c.report.properties.is_empty() && c.report.properties.iter().all(|p| p.proved())
        })
        .count();
    (proved, acc.len())
}

/// Accepted cells that are *decided*: every property proved, or violated
/// (with a counterexample to replay).
pub fn decided_cells(m: &Matrix) -> usize {
    m.cells
        .iter()
        .filter(|c| c.refused.is_none())
        .filter(|c| {
            !c.report.properties.is_empty()
                && c.report.properties.iter().all(|p| p.proved() || !p.holds())
        })
        .count()
}

/// Accepted cells decided only with proofs of a smaller configuration:
/// every property proved (in the cell's or its smallest configuration)
/// or violated, at least one only `proved-reduced`. Not counted in
/// [`decided_cells`].
pub fn decided_reduced_cells(m: &Matrix) -> usize {
    m.cells
        .iter()
        .filter(|c| c.refused.is_none())
        .filter(|c| {
            let ps = &c.report.properties;
            ps.iter().any(|p| p.proved_reduced())
                && ps
                    .iter()
                    .all(|p| p.proved() || p.proved_reduced() || !p.holds())
        })
        .count()
}

/// Accepted cells left undecided (some property neither proved, in the
/// cell's or its smallest configuration, nor violated), each with what its
/// last proof attempt's searches would take in all: the largest, over its
/// undecided properties, of the executions of every mode searched, exact
/// for a mode that finished and estimated from the search's progress for
/// one that stopped at its budget ([`ProofResult::estimates`]), and whether
/// that covers only the stalled-userspace mode (the attempt skips the
/// normal-mode search when the stalled one does not finish). `None` when
/// the attempt made no DPOR search it could estimate.
///
/// [`ProofResult::estimates`]: crate::explore::ProofResult::estimates
pub fn undecided_estimates(m: &Matrix) -> Vec<(String, Option<(u64, bool)>)> {
    m.cells
        .iter()
        .filter(|c| c.refused.is_none())
        .filter_map(|c| {
            let open: Vec<&PropertyResult> = c
                .report
                .properties
                .iter()
                .filter(|p| p.holds() && !p.proved() && !p.proved_reduced())
                .collect();
            if open.is_empty() {
                return None;
            }
            let est = open
                .iter()
                .filter_map(|p| p.proof.as_ref())
                .filter(|q| !q.estimates.is_empty())
                .map(|q| {
                    let n = q.estimates.iter().fold(0u64, |a, e| a.saturating_add(e.1));
                    let stalled_only = q.estimates.iter().all(|e| e.0 == RunMode::Stalled);
                    (n, stalled_only)
                })
                .max();
            Some((format!("{}.{}", c.policy, c.importer), est))
        })
        .collect()
}

/// One-letter codes for the human table.
pub fn code(p: Property) -> char {
    p.code()
}

/// The human table: rows policies, columns importers.
pub fn render(m: &Matrix) -> String {
    let mut s = grid(m, "", |c| match c {
        None => "-".to_owned(),
        Some(c) if c.refused.is_some() => "refused".to_owned(),
        Some(c) => {
            let bad: String = c
                .report
                .properties
                .iter()
                .filter(|p| !p.holds())
                .map(|p| code(p.property))
                .collect();
            let err = if c.report.errors.is_empty() { "" } else { "!" };
            if bad.is_empty() {
                format!("ok{err}")
            } else {
                format!("{bad}{err}")
            }
        }
    });
    s.push_str(
        &format!(
            "\nok: no explored run violated any property; letters: violated {}; !: runs reported errors; \
             refused: the exporter refused the importer; -: not run (interrupted, or another shard's cell)\n",
            Property::ALL
                .iter()
                .map(|p| format!("{} ({})", p.name(), p.code()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    s
}
