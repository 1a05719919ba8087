//! The checker: scenarios, properties and exploration.
#![warn(missing_docs)]

pub mod progress;
pub mod property;
pub mod token;
