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

impl ProcessEvent {
    /// The event a ring record holds (None when the record is too short for one).
    pub fn from_bytes(bytes: &[u8]) -> Option<ProcessEvent> {
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_ne_bytes)
        };
        Some(ProcessEvent {
            kind: word(0)?,
            tgid: word(4)?,
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_its_event_and_a_short_one_as_none() {
        let mut record = [0u8; 8];
        record[..4].copy_from_slice(&KIND_EXEC.to_ne_bytes());
        record[4..].copy_from_slice(&4242u32.to_ne_bytes());
        assert_eq!(
            ProcessEvent::from_bytes(&record),
            Some(ProcessEvent {
                kind: KIND_EXEC,
                tgid: 4242
            })
        );
        assert_eq!(ProcessEvent::from_bytes(&record[..7]), None);
    }
}
