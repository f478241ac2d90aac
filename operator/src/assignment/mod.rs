//! NodeAssignments: what every node must run, computed from all resources, pods and nodes
//! (`compute`, pure), and written only where it changed (`sync`).
pub mod compute;
pub mod pods;
pub mod sync;
