//! Offsets in tracepoint records that more than one eBPF object of Sonde reads, from the
//! tracepoints' format files (`/sys/kernel/tracing/events/<category>/<name>/format`). Each
//! object's crate root that needs them includes this file as `mod formats`.

/// `task:task_newtask`: the new task's pid (`pid_t`).
pub const NEWTASK_PID: usize = 8;
/// `task:task_newtask`: its clone flags (`u64`).
pub const NEWTASK_CLONE_FLAGS: usize = 32;
/// A clone flag: the new task is a thread of its creator's process.
pub const CLONE_THREAD: u64 = 0x0001_0000;
