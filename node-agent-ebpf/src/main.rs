//! Sonde's eBPF programs, built for `bpfel-unknown-none` by aya-build from node-agent's build.rs and
//! embedded in the agent.
//!
//! For now: the capability self-test programs. The agent loads them at startup and tries each kind of
//! attachment (tracepoint, uprobe with cookie, perf event, kprobe, fentry); a program that fires
//! writes one [`SelfTestEvent`] to the ring buffer. Only the agent's own tgid (a global set at load
//! time) is reported, so every other process exits after one comparison.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::{fentry, kprobe, map, perf_event, tracepoint, uprobe},
    maps::RingBuf,
    programs::{FEntryContext, PerfEventContext, ProbeContext, TracePointContext},
};
use sonde_common::{
    SELFTEST_FENTRY, SELFTEST_KPROBE, SELFTEST_PERF_EVENT, SELFTEST_TRACEPOINT, SELFTEST_UPROBE,
    SelfTestEvent,
};

/// The only tgid the self-test programs report (0: none). Overridden by the loader
/// (`sonde_common::selftest::TARGET_TGID_GLOBAL`); read volatile so the compiler keeps the load.
#[unsafe(no_mangle)]
static SELFTEST_TARGET_TGID: u32 = 0;

/// Self-test events (`sonde_common::selftest::EVENTS_MAP`); a few pages is plenty for one test run.
#[map]
static SELFTEST_EVENTS: RingBuf = RingBuf::with_byte_size(4096 * 4, 0);

/// Writes one event if the current process is the target; drops it silently when the ring is full
/// (the user-space side then times out and reports that).
#[inline(always)]
fn report(kind: u32, cookie: u64) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: reading a plain u32 global; volatile because the loader rewrites its value in .rodata.
    let target = unsafe { core::ptr::read_volatile(&SELFTEST_TARGET_TGID) };
    if target == 0 || tgid != target {
        return 0;
    }
    let event = SelfTestEvent { kind, tgid, cookie };
    // A full ring only loses a self-test event; there is nothing better to do in the kernel.
    let _ = SELFTEST_EVENTS.output::<SelfTestEvent>(&event, 0);
    0
}

#[tracepoint]
pub fn selftest_tracepoint(_ctx: TracePointContext) -> u32 {
    report(SELFTEST_TRACEPOINT, 0)
}

#[uprobe]
pub fn selftest_uprobe(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the cookie the kernel stored for this attachment; the pointer is
    // the program's own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    report(SELFTEST_UPROBE, cookie)
}

#[perf_event]
pub fn selftest_perf_event(_ctx: PerfEventContext) -> u32 {
    report(SELFTEST_PERF_EVENT, 0)
}

#[kprobe]
pub fn selftest_kprobe(_ctx: ProbeContext) -> u32 {
    report(SELFTEST_KPROBE, 0)
}

// The section names a function only as a default; the loader passes the real one (per architecture)
// to `FEntry::load`.
#[fentry(function = "__x64_sys_getppid")]
pub fn selftest_fentry(_ctx: FEntryContext) -> u32 {
    report(SELFTEST_FENTRY, 0)
}

mod runtime;
