//! Replay of a recorded schedule.

use super::super::{Schedule, ScheduleError, Strategy, TaskId};

/// Follows a recorded [`Schedule`] for one execution. If the program does
/// not reach the same decisions (it changed, or it is nondeterministic), the
/// first mismatch is reported in `RunReport::divergence` and the run goes on
/// with the lowest runnable task.
#[derive(Clone, Debug)]
pub struct Replay {
    schedule: Schedule,
    pos: usize,
    started: bool,
    error: Option<ScheduleError>,
}

impl Replay {
    /// A replay of `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            pos: 0,
            started: false,
            error: None,
        }
    }
}

impl Strategy for Replay {
    fn name(&self) -> String {
        format!("replay({})", self.schedule.encode())
    }

    fn next_execution(&mut self) -> bool {
        if self.started {
            return false;
        }
        self.started = true;
        true
    }

    fn choose(&mut self, runnable: &[TaskId], _current: Option<TaskId>, _step: u64) -> TaskId {
        let decision = self.pos;
        self.pos += 1;
        match self.schedule.choices().get(decision) {
            Some(&t) if runnable.contains(&t) => t,
            Some(&t) => {
                self.error.get_or_insert(ScheduleError::Diverged {
                    decision,
                    expected: t,
                    runnable: runnable.to_vec(),
                });
                runnable[0]
            }
            None => {
                self.error.get_or_insert(ScheduleError::Exhausted {
                    decision,
                    recorded: self.schedule.len(),
                });
                runnable[0]
            }
        }
    }

    fn end_execution(&mut self, _steps: u64) -> Result<(), ScheduleError> {
        if self.error.is_none() && self.pos < self.schedule.len() {
            self.error = Some(ScheduleError::Unconsumed {
                used: self.pos,
                recorded: self.schedule.len(),
            });
        }
        self.error.take().map_or(Ok(()), Err)
    }
}
