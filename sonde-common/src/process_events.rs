//! Process notifications for the process scan: tracepoint programs write every new process
//! (`task:task_newtask` without `CLONE_THREAD`), exec (`sched:sched_process_exec`) and process
//! exit (`sched:sched_process_exit` of a group leader) to ring buffers the agent drains at each
//! rescan, so a rescan rereads only the processes named there instead of listing and reading every
//! process of the node. Execs have a ring of their own that wakes the agent: the first exec after a
//! drain wakes it (the ring buffer's adaptive wake-up), which a fork waiting ahead of it in a shared
//! ring would prevent.

/// Bytes of each ring: 16 bytes per notification (an 8-byte record header, a [`ProcessEvent`]),
/// so 16,384 between two rescans before one is lost (a loss makes the next scan a full one).
pub const RING_BYTES: u32 = 256 * 1024;

/// A process was created (by fork, vfork or clone without `CLONE_THREAD`).
pub const KIND_FORK: u32 = 0;
/// A process replaced its image.
pub const KIND_EXEC: u32 = 1;
/// A process's first thread exited.
pub const KIND_EXIT: u32 = 2;

/// One notification.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// `KIND_*`.
    pub kind: u32,
    pub tgid: u32,
}

const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 8);

/// Names shared by the eBPF object and the loader, so a rename breaks the build, not the agent.
pub mod names {
    /// Ring buffer of [`super::ProcessEvent`]s: new processes and exits; it never wakes the agent.
    pub const EVENTS_MAP: &str = "PROCESS_EVENTS";
    /// Ring buffer of [`super::ProcessEvent`]s: execs; it wakes the agent.
    pub const EXECS_MAP: &str = "PROCESS_EXECS";
    /// Per-CPU `u64`: notifications a ring had no room for.
    pub const LOST_MAP: &str = "PROCESS_LOST";
    /// (program, tracepoint category, tracepoint) of each notification.
    pub const PROGRAMS: [(&str, &str, &str); 3] = [
        ("process_task_newtask", "task", "task_newtask"),
        ("process_exec", "sched", "sched_process_exec"),
        ("process_exit", "sched", "sched_process_exit"),
    ];
}
