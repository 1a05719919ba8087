//! Progress on stderr, and the stop request that Ctrl-C raises.
//!
//! | where stderr goes | what is printed |
//! |---|---|
//! | a terminal | one bar, redrawn at most ten times a second once the work has taken a second, cleared at the end |
//! | anything else (a CI log, a file) | one line every [`LINE_EVERY`] once the work has taken that long |
//! | `--quiet` | nothing |
//!
//! Both forms show done/total, the elapsed time and an estimate of the time
//! left (from the mean time per unit so far).
//!
//! # Stopping
//!
//! [`request_stop`] (called from the CLI's SIGINT handler: it only stores
//! to an atomic, which is async-signal-safe) asks every exploration loop to
//! end after the execution it is running; [`stop_requested`] is what the
//! loops read. Nothing is lost: the loops return what they judged so far,
//! and the caller prints it marked partial.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Interval of the plain progress lines when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

// A plain std atomic on purpose: it is written from a signal handler and
// read by the exploration loops outside any controlled execution, so it is
// not part of what the scheduler or loom explore.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks running explorations to stop after their current execution.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// `1m05s`, `3h12m`, `42s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The estimated time left after `done` of `total` units in `elapsed`.
pub fn eta(done: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if done == 0 || done >= total {
        return None;
    }
    let per = elapsed.as_secs_f64() / done as f64;
    Some(Duration::from_secs_f64(per * (total - done) as f64))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Off,
    Bar,
    Lines,
}

/// Progress over a known number of units.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last: Option<Instant>,
    style: Style,
}

impl Progress {
    /// Progress over `total` units: a bar if stderr is a terminal, periodic
    /// lines otherwise, nothing if `quiet`.
    pub fn new(label: &str, total: u64, quiet: bool) -> Self {
        let style = if quiet {
            Style::Off
        } else if std::io::stderr().is_terminal() {
            Style::Bar
        } else {
            Style::Lines
        };
        Self {
            label: label.to_owned(),
            total: total.max(1),
            done: 0,
            start: Instant::now(),
            last: None,
            style,
        }
    }

    /// The text after the label: `done/total elapsed, eta`.
    fn status(&self) -> String {
        let el = self.start.elapsed();
        let left = eta(self.done, self.total, el)
            .map(|d| format!(", about {} left", human_duration(d)))
            .unwrap_or_default();
        format!(
            "{}/{} in {}{left}",
            self.done,
            self.total,
            human_duration(el)
        )
    }

    /// Advances by `n` units.
    pub fn inc(&mut self, n: u64, detail: &str) {
        self.done = self.done.saturating_add(n).min(self.total);
        let mut e = std::io::stderr();
        match self.style {
            Style::Off => {}
            Style::Bar => {
                if self.start.elapsed() < Duration::from_secs(1)
                    || self
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
                let _ = write!(
                    e,
                    "\r\x1b[2K{} [{bar}] {} {detail:.40}",
                    self.label,
                    self.status()
                );
                let _ = e.flush();
            }
            Style::Lines => {
                let since = self.last.unwrap_or(self.start);
                if since.elapsed() < LINE_EVERY {
                    return;
                }
                self.last = Some(Instant::now());
                let _ = writeln!(e, "{}: {} ({detail})", self.label, self.status());
            }
        }
    }

    /// Clears the bar (a terminal) or prints nothing more (lines).
    pub fn finish(&mut self) {
        if self.style == Style::Bar && self.last.is_some() {
            let mut e = std::io::stderr();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
        self.last = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_proportional_and_absent_at_the_ends() {
        assert_eq!(eta(0, 10, Duration::from_secs(5)), None);
        assert_eq!(eta(10, 10, Duration::from_secs(5)), None);
        assert_eq!(
            eta(1, 4, Duration::from_secs(2)),
            Some(Duration::from_secs(6))
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
    }
}
