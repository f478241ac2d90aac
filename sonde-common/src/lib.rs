//! Structs shared by Sonde's eBPF programs (`node-agent-ebpf`) and user space (`node-agent`).
//!
//! Each struct is defined once here, `#[repr(C)]` with explicit padding and a size assertion, so that
//! both sides agree on the layout without hand-copied definitions.
#![no_std]

pub mod conn;
pub mod dynlog;
pub mod process_events;
pub mod profiler;

/// Event the capability self-test programs write to their ring buffer when they fire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfTestEvent {
    /// Which probe kind fired (one of the `SELFTEST_*` constants).
    pub kind: u32,
    /// Thread group id of the process that triggered it.
    pub tgid: u32,
    /// Attach cookie, where the kind supports one (0 otherwise).
    pub cookie: u64,
}
const _: () = assert!(core::mem::size_of::<SelfTestEvent>() == 16);
const _: () = assert!(core::mem::align_of::<SelfTestEvent>() == 8);

/// The tracepoint self-test program fired.
pub const SELFTEST_TRACEPOINT: u32 = 1;
/// The uprobe self-test program fired.
pub const SELFTEST_UPROBE: u32 = 2;
/// The perf-event self-test program fired.
pub const SELFTEST_PERF_EVENT: u32 = 3;
/// The kprobe self-test program fired.
pub const SELFTEST_KPROBE: u32 = 4;
/// The fentry self-test program fired.
pub const SELFTEST_FENTRY: u32 = 5;

/// Names shared by the eBPF object and the loader, so a rename breaks the build, not the agent.
pub mod selftest {
    /// Ring buffer every self-test program writes [`super::SelfTestEvent`]s to.
    pub const EVENTS_MAP: &str = "SELFTEST_EVENTS";
    /// Global (`u32`) holding the only tgid the self-test programs report; 0 reports nothing.
    pub const TARGET_TGID_GLOBAL: &str = "SELFTEST_TARGET_TGID";
    /// Tracepoint program, attached to `syscalls:sys_enter_getppid`.
    pub const TRACEPOINT_PROGRAM: &str = "selftest_tracepoint";
    /// Uprobe program; reports its attach cookie.
    pub const UPROBE_PROGRAM: &str = "selftest_uprobe";
    /// Perf-event program, attached to the software cpu-clock.
    pub const PERF_EVENT_PROGRAM: &str = "selftest_perf_event";
    /// Kprobe program.
    pub const KPROBE_PROGRAM: &str = "selftest_kprobe";
    /// Fentry program.
    pub const FENTRY_PROGRAM: &str = "selftest_fentry";
}

#[cfg(feature = "user")]
// SAFETY: SelfTestEvent is repr(C), Copy, has no padding (asserted size: 4 + 4 + 8) and every bit
// pattern of its integer fields is valid.
unsafe impl aya::Pod for SelfTestEvent {}
