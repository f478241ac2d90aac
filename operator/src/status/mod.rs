//! A resource's status from its NodeAssignments: per-node counts, failures and conditions.
pub mod aggregate;
pub mod conditions;

pub use aggregate::{NodeView, nodes_still_running, observe};
pub use conditions::{Transition, next_status, transitions};
