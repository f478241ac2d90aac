//! Process notifications for the agent's process scan (see `sonde_common::process_events`):
//! tracepoint programs that write each new process, exec and process exit to a ring buffer.
//! Process lifecycle events are rare next to syscalls, so they run unfiltered. Execs go to a ring of
//! their own that wakes the agent (once until it has drained it: the ring buffer's adaptive
//! wake-up), so that a process that just started is selected before it does much; new processes
//! and exits wait silently for the next rescan.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use sonde_common::process_events::{KIND_EXEC, KIND_EXIT, KIND_FORK, ProcessEvent, RING_BYTES};

#[path = "../formats.rs"]
mod formats;
use formats::{CLONE_THREAD, NEWTASK_CLONE_FLAGS, NEWTASK_PID};

#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static PROCESS_EXECS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static PROCESS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

fn notify(kind: u32, tgid: u32) {
    let event = ProcessEvent { kind, tgid };
    // Flags 0: the consumer is woken if it had drained the ring up to this record.
    let (ring, flags) = match kind {
        KIND_EXEC => (&PROCESS_EXECS, 0),
        _ => (&PROCESS_EVENTS, u64::from(BPF_RB_NO_WAKEUP)),
    };
    if ring.output::<ProcessEvent>(&event, flags).is_err()
        && let Some(lost) = PROCESS_LOST.get_ptr_mut(0)
    {
        // SAFETY: the pointer is this CPU's slot of the map's only entry. A racing increment could
        // lose a count, never the signal: user space only asks whether the sum moved.
        unsafe { *lost += 1 };
    }
}

#[tracepoint]
pub fn process_task_newtask(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint's record, at the offsets of its format.
    let (Ok(pid), Ok(flags)) = (unsafe { ctx.read_at::<i32>(NEWTASK_PID) }, unsafe {
        ctx.read_at::<u64>(NEWTASK_CLONE_FLAGS)
    }) else {
        return 0;
    };
    // A new thread joins a process the scan already knows; a new process's pid is its tgid.
    if flags & CLONE_THREAD == 0 {
        notify(KIND_FORK, pid as u32);
    }
    0
}

#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    // After exec the thread that called it leads its group: the tgid names the new image.
    notify(KIND_EXEC, (bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

#[tracepoint]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    // Runs in the exiting thread. Only the group leader's exit is announced: the scan then rereads
    // the pid, and finds it gone, a zombie or (leader gone before its threads) without an image,
    // as a full scan would.
    let id = bpf_get_current_pid_tgid();
    if id as u32 == (id >> 32) as u32 {
        notify(KIND_EXIT, (id >> 32) as u32);
    }
    0
}

#[path = "../runtime.rs"]
mod runtime;
