//! Exec notifications for the agent's process scan (see `sonde_common::execs`): one tracepoint
//! program on `sched:sched_process_exec` that writes the exec'd tgid to a ring buffer. Execs are
//! rare next to syscalls, so it runs unfiltered; it never wakes the agent, which drains the ring
//! when it rescans.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use sonde_common::execs::RING_BYTES;

#[map]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map]
static EXEC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn exec_sched_process_exec(_ctx: TracePointContext) -> u32 {
    // After exec the thread that called it leads its group: the tgid names the new image.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if EXEC_EVENTS
        .output::<u32>(&tgid, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
        && let Some(lost) = EXEC_LOST.get_ptr_mut(0)
    {
        // SAFETY: the pointer is this CPU's slot of the map's only entry. A racing increment could
        // lose a count, never the signal: user space only asks whether the sum moved.
        unsafe { *lost += 1 };
    }
    0
}

#[path = "../runtime.rs"]
mod runtime;
