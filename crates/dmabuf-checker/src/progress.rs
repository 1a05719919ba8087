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
//!
//! # Work side by side
//!
//! [`side_by_side`] runs independent pieces of work (matrix cells, a
//! file's questions, a check's two searches) on several threads while the
//! calling thread reports progress; the results come back in the order of
//! the pieces, so they do not depend on the number of threads.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
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

/// Runs `work(k)` for every `k` in `0..n` on up to `threads` threads, each
/// taking the next `k` in order. Meanwhile this thread calls `done(k, &r)`
/// as each result arrives (in the order they finish) and `tick()` every
/// 100 ms, and once more at the end. With one thread (or one piece) the
/// work runs here, one piece after the other, with `done` after each and
/// no `tick`. Returns the results by `k`. A panic in `work` is resumed
/// here once the other threads have ended.
pub fn side_by_side<R: Send>(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> R + Sync,
    mut done: impl FnMut(usize, &R),
    mut tick: impl FnMut(),
) -> Vec<R> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n)
            .map(|k| {
                let r = work(k);
                done(k, &r);
                r
            })
            .collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, work) = (&next, &work);
            s.spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        break;
                    }
                    if tx.send((k, work(k))).is_err() {
                        break;
                    }
                }
            });
        }
        // The workers hold the only senders: when they have all ended
        // (finished, or one panicked), the channel says so.
        drop(tx);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((k, r)) => {
                    done(k, &r);
                    slots[k] = Some(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        tick();
    });
    // Every piece ran: a worker that panicked has made the scope resume
    // its panic above.
    slots.into_iter().flatten().collect()
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

    #[test]
    fn work_side_by_side_comes_back_in_order_whatever_the_threads() {
        for threads in [1, 3, 16] {
            let mut seen = Vec::new();
            let r = side_by_side(
                10,
                threads,
                |k| {
                    // Later pieces finish first when run side by side.
                    std::thread::sleep(Duration::from_millis(10 - k as u64));
                    k * k
                },
                |k, r| seen.push((k, *r)),
                || {},
            );
            assert_eq!(r, (0..10).map(|k| k * k).collect::<Vec<_>>(), "{threads}");
            seen.sort_unstable();
            assert_eq!(seen, (0..10).map(|k| (k, k * k)).collect::<Vec<_>>());
        }
        let none: Vec<u8> = side_by_side(0, 4, |_| 0, |_, _| {}, || {});
        assert!(none.is_empty());
    }

    #[test]
    fn a_panic_in_work_side_by_side_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            side_by_side(4, 2, |k| assert_ne!(k, 2, "piece 2"), |_, _| {}, || {})
        });
        assert!(r.is_err());
    }
}
