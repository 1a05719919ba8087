//! The checker: built-in scenarios, the properties every explored schedule is
//! judged against, exploration under the controlled scheduler (random, PCT,
//! bounded DFS), shrinking, replay tokens and the policy × importer matrix.
//!
//! Every verdict comes from running the real implementation: the scenarios
//! are data ([`scenario`]), the judge reads only what the platform's monitor
//! and the world observed ([`explore::judge`]).
#![warn(missing_docs)]

pub mod explore;
#[cfg(test)]
mod judge_tests;
pub mod matrix;
pub mod progress;
pub mod properties;
pub mod property;
pub mod scenario;
pub mod token;
pub mod tracefmt;
