//! Exec notifications for the process scan: a `sched:sched_process_exec` program writes the tgid
//! of every process that replaces its image to a ring buffer the agent drains at each rescan, so
//! a rescan rereads only new pids and the ones that exec'd instead of every process of the node.

/// Bytes of the exec ring: 16 bytes per exec (an 8-byte record header, the tgid padded to 8),
/// so 16,384 execs between two rescans before one is lost (a loss makes the next scan a full one).
pub const RING_BYTES: u32 = 256 * 1024;

/// Names shared by the eBPF object and the loader, so a rename breaks the build, not the agent.
pub mod names {
    /// Ring buffer of exec'd tgids (`u32` each).
    pub const EVENTS_MAP: &str = "EXEC_EVENTS";
    /// Per-CPU `u64`: execs the ring had no room for.
    pub const LOST_MAP: &str = "EXEC_LOST";
    /// The tracepoint program.
    pub const PROGRAM: &str = "exec_sched_process_exec";
    /// Where it attaches.
    pub const CATEGORY: &str = "sched";
    pub const TRACEPOINT: &str = "sched_process_exec";
}
