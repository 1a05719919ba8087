//! The matrix: every revoke policy × every importer kind, each cell either
//! refused at attach or, per property, holds / violated, all computed by
//! running the cell's scenario.

use crate::explore::{CheckOptions, CheckReport, check};
use crate::property::Property;
use crate::scenario::matrix_cell;
use dmabuf_drivers::policy::RevokePolicy;
use dmabuf_drivers::world::ImporterKind;
use std::time::Instant;

/// One cell.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Policy (row).
    pub variant: RevokePolicy,
    /// Importer kind (column).
    pub importer: ImporterKind,
    /// `None` when accepted; else the refusal (`stage errno`).
    pub refused: Option<String>,
    /// The check (also present for refused cells: the runs that showed it).
    pub report: CheckReport,
}

/// The whole matrix.
#[derive(Clone, Debug)]
pub struct Matrix {
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

/// Runs the matrix with `opts` per accepted cell. A cell whose importer is
/// refused in its first run is not explored further.
pub fn run_matrix(opts: &CheckOptions, mut progress: impl FnMut(usize, usize, &str)) -> Matrix {
    let start = Instant::now();
    let total = RevokePolicy::ALL.len() * ImporterKind::ALL.len();
    let mut cells = Vec::with_capacity(total);
    let mut runs = 0;
    for variant in RevokePolicy::ALL {
        for importer in ImporterKind::ALL {
            let sc = matrix_cell(variant, importer);
            progress(cells.len(), total, &sc.name);
            let probe = check(
                &sc,
                &CheckOptions {
                    schedules: 1,
                    stalled_schedules: 0,
                    properties: vec![Property::NoDeadlock],
                    shrink: false,
                    ..opts.clone()
                },
                |_| {},
            );
            runs += probe.runs;
            if !probe.refusals.is_empty() {
                cells.push(Cell {
                    variant,
                    importer,
                    refused: Some(probe.refusals.join(", ")),
                    report: probe,
                });
                continue;
            }
            let report = check(&sc, opts, |_| {});
            runs += report.runs;
            cells.push(Cell {
                variant,
                importer,
                refused: None,
                report,
            });
        }
    }
    Matrix {
        cells,
        elapsed_s: start.elapsed().as_secs_f64(),
        runs,
    }
}

/// One-letter codes for the human table.
pub fn code(p: Property) -> char {
    match p {
        Property::SFence => 'F',
        Property::SFinal => 'X',
        Property::SNoreuse => 'N',
        Property::LBounded => 'L',
        Property::NoDeadlock => 'D',
        Property::NoLeak => 'K',
        Property::Lockdep => 'V',
    }
}

/// The human table: rows policies, columns importers.
pub fn render(m: &Matrix) -> String {
    let w = 12;
    let mut s = format!("{:<20}", "");
    for k in ImporterKind::ALL {
        let n = k.name();
        s.push_str(&format!(" {:<w$}", &n[..n.len().min(w)]));
    }
    s.push('\n');
    for v in RevokePolicy::ALL {
        s.push_str(&format!("{:<20}", v.name()));
        for k in ImporterKind::ALL {
            let c = m.cells.iter().find(|c| c.variant == v && c.importer == k);
            let text = match c {
                None => "?".to_owned(),
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
            };
            s.push_str(&format!(" {text:<w$}"));
        }
        s.push('\n');
    }
    s.push_str(
        "\nok: every property held; letters: violated s-fence (F), s-final (X), s-noreuse (N), \
         l-bounded (L), no-deadlock (D), no-leak (K), lockdep (V); !: runs reported errors; \
         refused: the exporter refused the importer\n",
    );
    s
}
