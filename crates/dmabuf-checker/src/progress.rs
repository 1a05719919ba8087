//! A progress bar on stderr for anything longer than a second; silent with
//! `--quiet` or when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress over a known number of units.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` units; drawn only if `!quiet` and stderr is a tty.
    pub fn new(label: &str, total: u64, quiet: bool) -> Self {
        Self {
            label: label.to_owned(),
            total: total.max(1),
            done: 0,
            start: Instant::now(),
            last: None,
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// Advances by `n` units, redrawing at most ten times a second and only
    /// once the work has taken more than a second.
    pub fn inc(&mut self, n: u64, detail: &str) {
        self.done = (self.done + n).min(self.total);
        if !self.enabled || self.start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self
            .last
            .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30u64;
        let filled = width * self.done / self.total;
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mut e = std::io::stderr();
        let _ = write!(
            e,
            "\r{} [{bar}] {}/{} {:.0}s {detail:<40.40}",
            self.label,
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
        let _ = e.flush();
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let mut e = std::io::stderr();
            let _ = write!(e, "\r{:100}\r", "");
            let _ = e.flush();
        }
    }
}
