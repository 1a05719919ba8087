//! Per-execution extension slots: state that a higher layer keeps for one
//! execution (the trace log and the validator reports of `dmabuf-core`)
//! without the engine naming its type.
//!
//! A slot is created on first use ([`super::with_extension`]) with the
//! type's `Default`, lives as long as the execution, and is handed back in
//! [`super::RunReport::extensions`]. At most one slot per type.

use super::TaskId;
use std::any::{Any, TypeId};

/// The slots of one execution, by type.
#[derive(Default)]
pub struct Extensions {
    slots: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} slot(s))", self.slots.len())
    }
}

impl Extensions {
    /// The slot of type `T`, created empty if missing.
    pub(super) fn get_or_default<T: Default + Send + 'static>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let i = match self.slots.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.slots.push((id, Box::new(T::default())));
                self.slots.len() - 1
            }
        };
        self.slots[i]
            .1
            .downcast_mut::<T>()
            .expect("slot is stored under its own TypeId")
    }

    /// Takes the slot of type `T` out (`None` if the execution never used it).
    pub fn take<T: 'static>(&mut self) -> Option<T> {
        let id = TypeId::of::<T>();
        let i = self.slots.iter().position(|(t, _)| *t == id)?;
        let (_, b) = self.slots.swap_remove(i);
        b.downcast::<T>().ok().map(|b| *b)
    }

    /// Whether no slot was used.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Where an extension callback runs: the calling task and the execution's
/// clock.
#[derive(Clone, Copy, Debug)]
pub struct Here<'a> {
    /// The calling task.
    pub task: TaskId,
    /// Its name.
    pub task_name: &'a str,
    /// The execution's virtual clock, in nanoseconds.
    pub now_ns: u64,
    /// Decisions taken so far (choices among two or more runnable tasks).
    pub decisions: u64,
    /// Decisions so far at which the task that was running could have
    /// gone on but another was chosen.
    pub preemptions: u64,
}
